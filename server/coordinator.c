/* coordinator: membership, the round state machine, update validation and streaming aggregation,
 * checkpoints, and the Federation RPC handlers (see coordinator.h). */
#define _DEFAULT_SOURCE /* madvise */
#include "server/coordinator.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "common/checkpoint.h"
#include "common/log.h"
#include "common/model.h"
#include "common/model_io.h"
#include "common/params.h"
#include "common/rng.h"
#include "common/tensor_stream.h"
#include "dp/ledger.h"
#include "fedprof.pb-c.h"

#define COORD_MAX_MEMBERS 100000
#define COORD_SESSION_HEX 32
#define COORD_SMALL_REQ_MAX (64u << 10)  /* unary requests are small; larger is refused */
#define COORD_PUBKEY_MAX 4096
#define COORD_MAX_LONG_POLL_MS 30000
#define COORD_POLL_INTERVAL_MS 200
#define COORD_STATE_FILE "coordinator.safetensors"
#define COORD_MODEL_FILE "model.safetensors"
#define COORD_LEDGER_FILE "federation-ledger.jsonl"
#define COORD_N_REASONS 16

typedef struct {
    char identity[FP_WIRE_IDENTITY_MAX];
    char session[COORD_SESSION_HEX + 1];
    fp_ledger_key_t *lkey;   /* its ledger key, from the PEM in Join (NULL: none given) */
    double last_seen;        /* fp_now() of its last request; 0: not seen since (re)start */
    uint64_t selected_round; /* round id it was selected for (0: none) */
    uint64_t pushed_round;   /* round id whose update was accepted */
    int pushing;             /* a push of the current round is being received */
    int exhausted;           /* privacy budget spent: never selected again */
    uint32_t examples_bucket;
} member_t;

/* A published global model; pulls hold a reference while they stream it. */
typedef struct {
    float *w;
    uint64_t version;
    int refs;                           /* pulls streaming it */
    uint8_t sha256[FP_TS_DIGEST_LEN];   /* the stream digest of w (fp_ts_digest), set whenever w changes:
                                         * every pull sends it instead of hashing 4·P bytes again */
} snap_t;

typedef struct {
    float *buf;
    size_t map_bytes; /* > 0: buf is a shared mapping of an unlinked file (spill_updates) */
    fp_ts_reader_t *reader;
    int busy;
} slot_t;

/* Spilled receive buffers: at least this model size by default, pages dropped every this many bytes. */
#define COORD_SPILL_MIN_BYTES ((size_t)32 << 20)
#define COORD_SPILL_STEP_BYTES ((size_t)4 << 20)

struct fp_coord {
    fp_coord_opts_t o;
    char *listen, *ckpt_dir, *federation_id, *config_json;
    fp_layout_t layout;
    uint64_t layout_hash;
    size_t P;
    fp_wire_server_t *server;

    pthread_mutex_t mu; /* everything below */
    pthread_cond_t cv;  /* any state change */
    int committing;     /* commit_round is replacing the model outside c->mu (phase COMMIT) */
    pthread_cond_t task_cv; /* what a waiting GetTask looks at changed (wake_all): the phase, the
                             * selection, a member's session or state, stopping; not every pull or
                             * push, which would wake every long-polling member each time */
    atomic_int stop;
    int phase;          /* Fedprof__V1__RoundPhase */
    uint64_t round_id, committed, failed_rounds;
    double round_deadline;          /* fp_now() time */
    uint64_t round_deadline_unix_ms;
    int selected, received, adding;
    snap_t model;                   /* w and its version */
    member_t **members; /* each its own allocation: handlers keep pointers across a realloc */
    int n_members, cap_members;
    slot_t *slots;
    int spill; /* receive buffers are spilled to files */
    int n_slots;
    uint64_t rejections[COORD_N_REASONS];
    uint64_t bytes_in, bytes_out, accepted;
    fp_rng_t select_rng;

    pthread_mutex_t agg_mu; /* the aggregator */
    fp_agg_t *agg;
    fp_sopt_t *sopt;

    pthread_mutex_t ledger_mu; /* the federation ledger (a DP federation; NULL otherwise) */
    fp_ledger_fed_t *fed;
    fp_ledger_key_t *fed_key;
};

/* ---- helpers ------------------------------------------------------------------------------------ */

static char *dup_str(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static uint64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A change every waiter may care about: c->cv's and the long-polling GetTasks' (c->task_cv). */
static void wake_all(fp_coord_t *c)
{
    pthread_cond_broadcast(&c->cv);
    pthread_cond_broadcast(&c->task_cv);
}

static void timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(cv, mu, &ts);
}

static const char *reason_name(int r)
{
    switch (r) {
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_MALFORMED: return "MALFORMED";
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_OVERSIZED: return "OVERSIZED";
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_SHAPE: return "SHAPE";
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_NON_FINITE: return "NON_FINITE";
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_CLIP_BOUND: return "CLIP_BOUND";
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_STALE: return "STALE";
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_DUPLICATE: return "DUPLICATE";
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_NOT_SELECTED: return "NOT_SELECTED";
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_DIGEST: return "DIGEST";
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_VERSION: return "VERSION";
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_UNKNOWN_IDENTITY: return "UNKNOWN_IDENTITY";
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_LEDGER: return "LEDGER";
    default: return "UNSPECIFIED";
    }
}

/* The gRPC status each refusal is answered with. */
static int reason_code(int r)
{
    switch (r) {
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_OVERSIZED: return FP_WIRE_RESOURCE_EXHAUSTED;
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_SHAPE: return FP_WIRE_FAILED_PRECONDITION;
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_STALE: return FP_WIRE_ABORTED;
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_DUPLICATE: return FP_WIRE_ALREADY_EXISTS;
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_NOT_SELECTED: return FP_WIRE_PERMISSION_DENIED;
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_DIGEST: return FP_WIRE_DATA_LOSS;
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_VERSION: return FP_WIRE_FAILED_PRECONDITION;
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_UNKNOWN_IDENTITY: return FP_WIRE_UNAUTHENTICATED;
    case FEDPROF__V1__REJECT_REASON__REJECT_REASON_LEDGER: return FP_WIRE_FAILED_PRECONDITION;
    default: return FP_WIRE_INVALID_ARGUMENT; /* malformed, non-finite, clip bound */
    }
}

static void count_reject(fp_coord_t *c, int reason)
{
    pthread_mutex_lock(&c->mu);
    if (reason >= 0 && reason < COORD_N_REASONS)
        c->rejections[reason]++;
    pthread_mutex_unlock(&c->mu);
}

static member_t *find_session(fp_coord_t *c, const char *session)
{
    if (!session || !session[0])
        return NULL;
    for (int i = 0; i < c->n_members; i++)
        if (c->members[i]->session[0] && strcmp(c->members[i]->session, session) == 0)
            return c->members[i];
    return NULL;
}

static member_t *find_identity(fp_coord_t *c, const char *id)
{
    for (int i = 0; i < c->n_members; i++)
        if (strcmp(c->members[i]->identity, id) == 0)
            return c->members[i];
    return NULL;
}

/* Add a member (c->mu held). NULL when the table is full or out of memory. */
static member_t *add_member(fp_coord_t *c, const char *id)
{
    if (c->n_members == c->cap_members) {
        if (c->cap_members >= COORD_MAX_MEMBERS)
            return NULL;
        int cap = c->cap_members ? c->cap_members * 2 : 16;
        if (cap > COORD_MAX_MEMBERS)
            cap = COORD_MAX_MEMBERS;
        member_t **t = realloc(c->members, (size_t)cap * sizeof *t);
        if (!t)
            return NULL;
        c->members = t;
        c->cap_members = cap;
    }
    member_t *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    c->members[c->n_members++] = m;
    snprintf(m->identity, sizeof m->identity, "%s", id);
    return m;
}

static int member_live(const fp_coord_t *c, const member_t *m, double now)
{
    return m->last_seen > 0 && now - m->last_seen <= c->o.member_timeout_s;
}

/* The identity a call speaks for: its certificate (TLS) or nothing (insecure: the session says). */
static int identity_matches(const fp_coord_t *c, fp_wire_call_t *call, const member_t *m)
{
    if (c->o.insecure)
        return 1;
    return strcmp(fp_wire_call_identity(call), m->identity) == 0;
}

static void finish_packed(fp_wire_call_t *call, const ProtobufCMessage *msg)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        fp_wire_call_finish(call, FP_WIRE_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return;
    }
    protobuf_c_message_pack(msg, buf);
    fp_wire_call_finish(call, FP_WIRE_OK, NULL, buf, n);
    free(buf);
}

/* Read the single request message of a unary call (bounded). NULL after finishing the call with
 * an error. */
static const uint8_t *read_unary(fp_wire_call_t *call, size_t *len)
{
    const uint8_t *data = NULL;
    int more = 0;
    if (fp_wire_call_read(call, &data, len, &more) != FP_OK)
        return NULL;
    if (!more) {
        fp_wire_call_finish(call, FP_WIRE_INVALID_ARGUMENT, "no request message", NULL, 0);
        return NULL;
    }
    if (*len > COORD_SMALL_REQ_MAX) {
        fp_wire_call_finish(call, FP_WIRE_RESOURCE_EXHAUSTED, "request too large", NULL, 0);
        return NULL;
    }
    return data ? data : (const uint8_t *)"";
}

/* ---- Join ----------------------------------------------------------------------------------------- */

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
              ch == '_' || ch == '-' || ch == '@'))
            return 0;
    }
    return 1;
}

static void on_join(fp_wire_call_t *call, void *user)
{
    fp_coord_t *c = user;
    size_t len = 0;
    const uint8_t *data = read_unary(call, &len);
    if (!data)
        return;
    Fedprof__V1__JoinRequest *req = fedprof__v1__join_request__unpack(NULL, len, data);
    if (!req) {
        fp_wire_call_finish(call, FP_WIRE_INVALID_ARGUMENT, "not a JoinRequest", NULL, 0);
        return;
    }
    char id[FP_WIRE_IDENTITY_MAX];
    int code = FP_WIRE_OK;
    const char *msg = NULL;
    if (req->protocol_version != FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1) {
        code = FP_WIRE_FAILED_PRECONDITION;
        msg = "protocol_version not spoken (only 1)";
    } else if (c->o.insecure) {
        if (!req->insecure_name || !name_ok(req->insecure_name)) {
            code = FP_WIRE_INVALID_ARGUMENT;
            msg = "insecure_name must be 1-64 characters of [A-Za-z0-9._@-] on a plaintext coordinator";
        } else {
            snprintf(id, sizeof id, "%s", req->insecure_name);
        }
    } else {
        const char *cert_id = fp_wire_call_identity(call);
        int ctl = 0;
        for (const char *q = cert_id; *q; q++)
            ctl |= (unsigned char)*q < 0x20 || *q == 0x7f;
        if (!cert_id[0]) {
            code = FP_WIRE_UNAUTHENTICATED;
            msg = "no client certificate identity";
        } else if (ctl) {
            code = FP_WIRE_PERMISSION_DENIED;
            msg = "the certificate identity holds control characters";
        } else {
            snprintf(id, sizeof id, "%s", cert_id);
        }
    }
    fp_ledger_key_t *lkey = NULL;
    if (code == FP_WIRE_OK && req->ledger_public_key_pem && strlen(req->ledger_public_key_pem) > COORD_PUBKEY_MAX) {
        code = FP_WIRE_INVALID_ARGUMENT;
        msg = "ledger_public_key_pem too long";
    } else if (code == FP_WIRE_OK && req->ledger_public_key_pem && req->ledger_public_key_pem[0] &&
               fp_ledger_key_from_public_pem(req->ledger_public_key_pem, strlen(req->ledger_public_key_pem), &lkey) !=
                   FP_OK) {
        code = FP_WIRE_INVALID_ARGUMENT;
        msg = "ledger_public_key_pem is not an Ed25519 public key in PEM";
    }
    unsigned char raw[COORD_SESSION_HEX / 2];
    char session[COORD_SESSION_HEX + 1];
    if (code == FP_WIRE_OK) {
        if (RAND_bytes(raw, sizeof raw) != 1) {
            code = FP_WIRE_INTERNAL;
            msg = "RAND_bytes failed";
        } else {
            for (size_t i = 0; i < sizeof raw; i++)
                snprintf(session + 2 * i, 3, "%02x", raw[i]);
        }
    }
    if (code == FP_WIRE_OK) {
        pthread_mutex_lock(&c->mu);
        member_t *m = find_identity(c, id);
        if (!m)
            m = add_member(c, id);
        if (!m) {
            code = FP_WIRE_RESOURCE_EXHAUSTED;
            msg = "membership is full";
        } else {
            double now = fp_now();
            if (m->session[0] && member_live(c, m, now) && !c->o.quiet)
                fp_log_warn("%s joined again while its previous session was live (a restart, or two clients "
                            "sharing one identity?): the previous session is replaced", id);
            memcpy(m->session, session, sizeof session);
            m->last_seen = now;
            m->examples_bucket = (uint32_t)(req->num_examples_bucket > 64 ? 64 : req->num_examples_bucket);
            if (lkey) {
                pthread_mutex_lock(&c->ledger_mu); /* a push may be checking with the old key */
                fp_ledger_key_free(m->lkey);
                m->lkey = lkey;
                lkey = NULL;
                pthread_mutex_unlock(&c->ledger_mu);
            }
            /* m->pushing stays: a push still in flight ends by itself and clears it, so a
             * re-joined client cannot have two updates of one round in the aggregate */
            wake_all(c);
        }
        pthread_mutex_unlock(&c->mu);
    }
    fedprof__v1__join_request__free_unpacked(req, NULL);
    fp_ledger_key_free(lkey);
    if (code != FP_WIRE_OK) {
        fp_wire_call_finish(call, code, msg, NULL, 0);
        return;
    }
    Fedprof__V1__JoinResponse resp = FEDPROF__V1__JOIN_RESPONSE__INIT;
    resp.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    resp.identity = id;
    resp.federation_id = c->federation_id;
    resp.poll_interval_ms = COORD_POLL_INTERVAL_MS;
    resp.max_message_bytes = c->o.max_message_bytes ? c->o.max_message_bytes : FP_WIRE_DEFAULT_MAX_MSG;
    resp.session = session;
    resp.model_config_json = c->config_json;
    resp.n_items = (uint64_t)c->o.model_cfg.model.n_items;
    resp.total_rounds = (uint64_t)c->o.rounds;
    resp.ledger_next_seq = 1;
    if (c->fed) {
        pthread_mutex_lock(&c->ledger_mu);
        resp.ledger_next_seq = fp_ledger_fed_next_seq(c->fed, id);
        pthread_mutex_unlock(&c->ledger_mu);
    }
    finish_packed(call, &resp.base);
}

/* ---- GetTask (long poll) ---------------------------------------------------------------------------- */

static void fill_plan(const fp_coord_t *c, Fedprof__V1__TrainingPlan *plan, Fedprof__V1__NoiseParams *np)
{
    const fp_coord_plan_t *p = &c->o.plan;
    plan->local_epochs = (uint32_t)p->local_epochs;
    plan->max_steps = (uint32_t)p->max_steps;
    plan->batch_size = (uint32_t)p->batch;
    plan->learning_rate = (float)p->lr;
    plan->fedprox_mu = (float)p->fedprox_mu;
    plan->seed = p->seed;
    plan->clip_bound = p->clip;
    plan->epsilon_budget = p->budget_epsilon;
    np->unit = p->unit == FP_UNIT_RECORD   ? FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_RECORD
               : p->unit == FP_UNIT_CLIENT ? FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_CLIENT
                                           : FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_UNSPECIFIED;
    np->mechanism = p->unit == FP_UNIT_NONE ? FEDPROF__V1__NOISE_MECHANISM__NOISE_MECHANISM_NONE
                                            : FEDPROF__V1__NOISE_MECHANISM__NOISE_MECHANISM_DISCRETE_GAUSSIAN;
    np->noise_multiplier = p->noise_multiplier;
    np->stddev = p->noise_multiplier * p->clip;
    np->delta = p->delta;
    plan->noise = np;
}

static void on_get_task(fp_wire_call_t *call, void *user)
{
    fp_coord_t *c = user;
    size_t len = 0;
    const uint8_t *data = read_unary(call, &len);
    if (!data)
        return;
    Fedprof__V1__GetTaskRequest *req = fedprof__v1__get_task_request__unpack(NULL, len, data);
    if (!req) {
        fp_wire_call_finish(call, FP_WIRE_INVALID_ARGUMENT, "not a GetTaskRequest", NULL, 0);
        return;
    }
    if (req->protocol_version != FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1) {
        fedprof__v1__get_task_request__free_unpacked(req, NULL);
        fp_wire_call_finish(call, FP_WIRE_FAILED_PRECONDITION, "protocol_version not spoken (only 1)", NULL, 0);
        return;
    }
    char session[COORD_SESSION_HEX + 1];
    snprintf(session, sizeof session, "%s", req->session ? req->session : "");
    int exhausted = req->budget_exhausted;
    int64_t max_wait = req->max_wait_ms ? (int64_t)req->max_wait_ms : 10000;
    fedprof__v1__get_task_request__free_unpacked(req, NULL);
    if (max_wait > COORD_MAX_LONG_POLL_MS)
        max_wait = COORD_MAX_LONG_POLL_MS;
    int64_t left = fp_wire_call_deadline_left_ms(call);
    if (left != INT64_MAX && max_wait > left - 500)
        max_wait = left - 500 > 0 ? left - 500 : 0;

    Fedprof__V1__GetTaskResponse resp = FEDPROF__V1__GET_TASK_RESPONSE__INIT;
    Fedprof__V1__ModelHeader mh = FEDPROF__V1__MODEL_HEADER__INIT;
    Fedprof__V1__TrainingPlan plan = FEDPROF__V1__TRAINING_PLAN__INIT;
    Fedprof__V1__NoiseParams np = FEDPROF__V1__NOISE_PARAMS__INIT;
    resp.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    double t0 = fp_now();
    int code = FP_WIRE_OK;
    const char *msg = NULL;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        member_t *m = find_session(c, session);
        if (!m) {
            code = FP_WIRE_UNAUTHENTICATED;
            msg = "unknown session: join again";
            break;
        }
        if (!identity_matches(c, call, m)) {
            code = FP_WIRE_PERMISSION_DENIED;
            msg = "the session belongs to another identity";
            break;
        }
        m->last_seen = fp_now();
        if (exhausted && !m->exhausted) {
            m->exhausted = 1;
            wake_all(c);
        }
        if (c->phase == FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_DONE) {
            resp.action = FEDPROF__V1__TASK_ACTION__TASK_ACTION_DONE;
            resp.model_version = c->model.version;
            break;
        }
        if (c->phase == FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_TRAIN && m->selected_round == c->round_id &&
            m->pushed_round != c->round_id && !m->pushing && !m->exhausted) {
            resp.action = FEDPROF__V1__TASK_ACTION__TASK_ACTION_TRAIN;
            resp.round_id = c->round_id;
            resp.model_version = c->model.version;
            mh.round_id = c->round_id;
            mh.model_version = c->model.version;
            mh.parameter_count = c->P;
            mh.layout_hash = c->layout_hash;
            mh.dtype = FEDPROF__V1__DTYPE__DTYPE_F32_LE;
            mh.chunk_bytes = FP_TS_CHUNK_BYTES_DEFAULT;
            mh.chunk_count = (uint32_t)fp_ts_chunk_count(c->P, FP_TS_CHUNK_BYTES_DEFAULT);
            resp.model = &mh;
            fill_plan(c, &plan, &np);
            resp.plan = &plan;
            resp.round_deadline_unix_ms = c->round_deadline_unix_ms;
            break;
        }
        if ((fp_now() - t0) * 1000.0 >= (double)max_wait || atomic_load(&c->stop) || fp_wire_call_cancelled(call)) {
            resp.action = FEDPROF__V1__TASK_ACTION__TASK_ACTION_WAIT;
            resp.retry_after_ms = COORD_POLL_INTERVAL_MS;
            resp.round_id = c->round_id;
            resp.model_version = c->model.version;
            break;
        }
        timed_wait(&c->task_cv, &c->mu, 200); /* the timeout also notices the call's cancellation */
    }
    pthread_mutex_unlock(&c->mu);
    if (code != FP_WIRE_OK) {
        fp_wire_call_finish(call, code, msg, NULL, 0);
        return;
    }
    finish_packed(call, &resp.base);
}

/* ---- PullModel (server streaming) -------------------------------------------------------------------- */

static void on_pull(fp_wire_call_t *call, void *user)
{
    fp_coord_t *c = user;
    size_t len = 0;
    const uint8_t *data = read_unary(call, &len);
    if (!data)
        return;
    Fedprof__V1__PullModelRequest *req = fedprof__v1__pull_model_request__unpack(NULL, len, data);
    if (!req) {
        fp_wire_call_finish(call, FP_WIRE_INVALID_ARGUMENT, "not a PullModelRequest", NULL, 0);
        return;
    }
    int code = FP_WIRE_OK;
    const char *msg = NULL;
    snap_t *s = &c->model;
    fp_ts_header_t h;
    memset(&h, 0, sizeof h);
    pthread_mutex_lock(&c->mu);
    /* While the model is being replaced, wait to stream the new one; while max_concurrent_pulls are
     * streaming, wait for one to end (each holds ≈ 2.4 MB of stream and transport buffers). A pull
     * ending broadcasts c->cv; the call's cancellation (client gone, its deadline) ends the wait. */
    while ((c->phase == FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_COMMIT || s->refs >= c->o.max_concurrent_pulls) &&
           !atomic_load(&c->stop) && !fp_wire_call_cancelled(call))
        timed_wait(&c->cv, &c->mu, 50);
    member_t *m = find_session(c, req->session);
    if (req->protocol_version != FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1) {
        code = FP_WIRE_FAILED_PRECONDITION;
        msg = "protocol_version not spoken (only 1)";
    } else if (!m) {
        code = FP_WIRE_UNAUTHENTICATED;
        msg = "unknown session: join again";
    } else if (!identity_matches(c, call, m)) {
        code = FP_WIRE_PERMISSION_DENIED;
        msg = "the session belongs to another identity";
    } else if (req->model_version != 0 && req->model_version != s->version) {
        code = FP_WIRE_ABORTED;
        msg = "model_version is not the current global model (stale)";
    } else if (fp_wire_call_cancelled(call)) {
        code = FP_WIRE_CANCELLED;
        msg = "the call ended while waiting its turn";
    } else {
        m->last_seen = fp_now();
        s->refs++;
        h.kind = FP_TS_MODEL;
        h.round_id = c->round_id;
        h.model_version = s->version;
        h.param_count = c->P;
        h.layout_hash = c->layout_hash;
    }
    pthread_mutex_unlock(&c->mu);
    fedprof__v1__pull_model_request__free_unpacked(req, NULL);
    if (code != FP_WIRE_OK) {
        fp_wire_call_finish(call, code, msg, NULL, 0);
        return;
    }
    fp_ts_writer_t *w = NULL;
    uint64_t sent = 0;
    fp_status st = fp_ts_writer_create_digested(&h, s->w, s->sha256, &w); /* w is fixed while refs > 0 */
    if (st != FP_OK) {
        code = FP_WIRE_INTERNAL;
        msg = "cannot stream the model";
    }
    while (st == FP_OK) {
        const uint8_t *out = NULL;
        size_t n = 0;
        if ((st = fp_ts_writer_next(w, &out, &n)) != FP_OK || !out)
            break;
        if ((st = fp_wire_call_write(call, out, n)) != FP_OK)
            break; /* the client went away */
        sent += n;
    }
    fp_ts_writer_destroy(w);
    pthread_mutex_lock(&c->mu);
    s->refs--;
    c->bytes_out += sent;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (code != FP_WIRE_OK)
        fp_wire_call_finish(call, code, msg, NULL, 0);
    else if (st == FP_OK)
        fp_wire_call_finish(call, FP_WIRE_OK, NULL, NULL, 0);
    else
        fp_wire_call_finish(call, FP_WIRE_CANCELLED, "stream broken", NULL, 0);
}

/* ---- PushUpdate (client streaming) ------------------------------------------------------------------- */

static void push_refuse(fp_coord_t *c, fp_wire_call_t *call, int reason, const char *detail)
{
    count_reject(c, reason);
    char msg[FP_WIRE_STATUS_MSG_MAX];
    snprintf(msg, sizeof msg, "%s: %s", reason_name(reason), detail);
    fp_wire_call_finish(call, reason_code(reason), msg, NULL, 0);
}

static int ts_reason(fp_ts_reject r)
{
    return r == FP_TS_REJECT_NONE ? FEDPROF__V1__REJECT_REASON__REJECT_REASON_MALFORMED : (int)r;
}

/* Take a free receive slot (c->mu held), waiting while all are busy. NULL when the call or the
 * round ended meanwhile. */
static slot_t *take_slot(fp_coord_t *c, fp_wire_call_t *call, uint64_t round_id)
{
    for (;;) {
        for (int i = 0; i < c->n_slots; i++)
            if (!c->slots[i].busy) {
                c->slots[i].busy = 1;
                return &c->slots[i];
            }
        if (fp_wire_call_cancelled(call) || atomic_load(&c->stop) || c->round_id != round_id ||
            c->phase != FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_TRAIN)
            return NULL;
        timed_wait(&c->cv, &c->mu, 100);
    }
}

static void release_slot(fp_coord_t *c, slot_t *s)
{
    pthread_mutex_lock(&c->mu);
    s->busy = 0;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* A spilled receive buffer: a shared mapping of an unlinked file in the checkpoint directory. */
static fp_status slot_map(fp_coord_t *c, slot_t *s)
{
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/.receive-XXXXXX", c->ckpt_dir);
    if (n < 0 || (size_t)n >= sizeof path)
        return FP_FAIL(FP_ERR_RANGE, "checkpoint directory path too long");
    int fd = mkstemp(path);
    if (fd < 0)
        return FP_FAIL(FP_ERR_IO, "%s: cannot create a receive file: %s", path, strerror(errno));
    size_t bytes = c->P * sizeof(float);
    fp_status st = FP_OK;
    void *p = MAP_FAILED;
    if (unlink(path) != 0)
        st = FP_FAIL(FP_ERR_IO, "%s: cannot unlink: %s", path, strerror(errno));
    else if (ftruncate(fd, (off_t)bytes) != 0)
        st = FP_FAIL(FP_ERR_IO, "%s: cannot size to %zu bytes: %s", path, bytes, strerror(errno));
    else if ((p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)
        st = FP_FAIL(FP_ERR_NOMEM, "%s: cannot map %zu bytes: %s", path, bytes, strerror(errno));
    if (close(fd) != 0 && st == FP_OK) {
        munmap(p, bytes);
        return FP_FAIL(FP_ERR_IO, "%s: close: %s", path, strerror(errno));
    }
    if (st != FP_OK)
        return st;
    s->buf = p;
    s->map_bytes = bytes;
    return FP_OK;
}

/* Drop the pages of bytes [from, to) of a spilled slot from the process (their data stays in the
 * file's page cache; a later access maps them again). The range is widened to whole pages and
 * clipped to the mapping; a no-op for a slot in RAM. */
static fp_status slot_drop(slot_t *s, size_t from, size_t to)
{
    if (!s->map_bytes)
        return FP_OK;
    long ps = sysconf(_SC_PAGESIZE);
    const size_t page = ps > 0 ? (size_t)ps : 4096;
    if (to > s->map_bytes)
        to = s->map_bytes;
    from -= from % page;
    if (from >= to)
        return FP_OK;
    if (madvise((char *)s->buf + from, to - from, MADV_DONTNEED) != 0)
        return FP_FAIL(FP_ERR_INTERNAL, "madvise of the receive file: %s", strerror(errno));
    return FP_OK;
}

/* Make sure the slot's buffer and reader exist (outside the lock: allocation of 4·P bytes). */
static fp_status slot_ready(fp_coord_t *c, slot_t *s)
{
    if (!s->buf && c->spill) {
        fp_status st = slot_map(c, s);
        if (st != FP_OK)
            return st;
    }
    if (!s->buf && !(s->buf = fp_buffer_alloc(c->P)))
        return FP_FAIL(FP_ERR_NOMEM, "receive buffer of %zu floats", c->P);
    if (!s->reader) {
        fp_ts_reader_opts_t ro = {FP_TS_UPDATE, c->P, c->P, 1, c->layout_hash, s->buf, c->P};
        return fp_ts_reader_create(&ro, &s->reader);
    }
    fp_ts_reader_reset(s->reader);
    return FP_OK;
}

/* High-probability bound on the L2 norm the declared noise can add: ‖N(0, s²I_P)‖ ≤ s(√P + t)
 * with probability ≥ 1 − exp(−t²/2) (Gaussian concentration of a 1-Lipschitz function), t = 10;
 * plus the grid rounding of the discrete Gaussian (≤ granularity/2 per coordinate). */
static double noise_allowance(const fp_ts_header_t *h, size_t P)
{
    if (!h->noise.present)
        return 0.0;
    double s = h->noise.stddev > 0 ? h->noise.stddev : h->noise.noise_multiplier * h->clip_bound;
    if (!(s > 0))
        return 0.0;
    return s * (sqrt((double)P) + 10.0) + 0.5 * fabs(h->noise.granularity) * sqrt((double)P);
}

/* A DP federation: record the update's ledger entries (h->ledger_entry: '\n'-separated lines, the
 * client's entries from what this ledger has of it, the last one for this round) in the federation
 * ledger before the update may be aggregated: each is verified (signature by the key the client
 * joined with, its chain, ε recomputed, within its budget) and countersigned; lines already
 * recorded are skipped. The last must be this round's, from this model version, with this
 * federation's unit, noise (σ accounted ≥ the plan's less the grid's 0.2 % widening), clip and δ.
 * Returns 0, or -1 with detail set; *over_budget = 1 when the client passed its own budget. */
static int record_ledger(fp_coord_t *c, const member_t *m, const fp_ts_header_t *h, uint64_t round_id,
                         char *detail, size_t dn, int *over_budget)
{
    *over_budget = 0;
    const fp_coord_plan_t *p = &c->o.plan;
    const char *text = h->ledger_entry;
    if (!text[0]) {
        snprintf(detail, dn, "this federation trains with differential privacy: the update must carry the "
                 "client's signed privacy-ledger entry for round %" PRIu64, round_id);
        return -1;
    }
    int rc = 0;
    pthread_mutex_lock(&c->ledger_mu);
    if (!m->lkey) {
        snprintf(detail, dn, "%s joined without a ledger public key: its entries cannot be verified", m->identity);
        rc = -1;
    }
    int64_t next = rc ? 0 : fp_ledger_fed_next_seq(c->fed, m->identity);
    const char *line = text;
    int last = 0;
    while (!rc && !last) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        last = !nl;
        fp_ledger_entry_t e;
        if (fp_ledger_entry_parse(line, len, &e) != FP_OK) {
            snprintf(detail, dn, "ledger entry: %s", fp_error_message());
            rc = -1;
            break;
        }
        const fp_ledger_spend_t *sp = &e.spend;
        int unit_ok = (p->unit == FP_UNIT_RECORD && sp->unit == FP_LEDGER_UNIT_RECORD) ||
                      (p->unit == FP_UNIT_CLIENT && sp->unit == FP_LEDGER_UNIT_CLIENT);
        if (strcmp(e.client, m->identity) != 0) {
            snprintf(detail, dn, "ledger entry of '%s' sent by '%s'", e.client, m->identity);
            rc = -1;
        } else if (!unit_ok || !(sp->sigma >= p->noise_multiplier * (1.0 - 2e-3)) ||
                   !(sp->clip <= p->clip * (1 + 1e-6)) || !(fabs(sp->delta - p->delta) <= 1e-6 * p->delta)) {
            snprintf(detail, dn, "ledger entry %" PRId64 " (unit %s, sigma %g, clip %g, delta %g) does not follow "
                     "this federation's plan (unit %s, noise multiplier %g, clip %g, delta %g)", e.seq,
                     fp_ledger_unit_name(sp->unit), sp->sigma, sp->clip, sp->delta,
                     p->unit == FP_UNIT_RECORD ? "record" : "client", p->noise_multiplier, p->clip, p->delta);
            rc = -1;
        } else if (last && (sp->round != (int64_t)round_id || sp->model_version != (int64_t)h->model_version)) {
            snprintf(detail, dn, "the last ledger entry is for round %" PRId64 " (model version %" PRId64 "), not "
                     "for this update's round %" PRIu64 " (version %" PRIu64 ")", sp->round, sp->model_version,
                     round_id, h->model_version);
            rc = -1;
        } else if (e.seq >= next - 1) { /* older lines are recorded already; next - 1 may be a retry */
            fp_status st = fp_ledger_fed_append(c->fed, line, len, m->lkey, NULL, NULL);
            if (st != FP_OK) {
                *over_budget = st == FP_ERR_RANGE;
                snprintf(detail, dn, "ledger entry %" PRId64 " (round %" PRId64 ") refused: %s", e.seq, sp->round,
                         fp_error_message());
                rc = -1;
            }
        }
        fp_ledger_entry_clear(&e);
        line = nl ? nl + 1 : line;
    }
    pthread_mutex_unlock(&c->ledger_mu);
    return rc;
}

static void on_push(fp_wire_call_t *call, void *user)
{
    fp_coord_t *c = user;
    const uint8_t *data = NULL;
    size_t len = 0;
    int more = 0;
    if (fp_wire_call_read(call, &data, &len, &more) != FP_OK)
        return;
    if (!more) {
        push_refuse(c, call, FEDPROF__V1__REJECT_REASON__REJECT_REASON_MALFORMED, "empty stream");
        return;
    }
    if (len > FP_TS_SMALL_MSG_MAX) {
        push_refuse(c, call, FEDPROF__V1__REJECT_REASON__REJECT_REASON_OVERSIZED, "header message too large");
        return;
    }
    /* Peek at the header: who, which round, what size, before any buffer is committed. */
    Fedprof__V1__UpdateStreamMessage *um = fedprof__v1__update_stream_message__unpack(NULL, len, data);
    if (!um || um->body_case != FEDPROF__V1__UPDATE_STREAM_MESSAGE__BODY_HEADER || !um->header) {
        if (um)
            fedprof__v1__update_stream_message__free_unpacked(um, NULL);
        push_refuse(c, call, FEDPROF__V1__REJECT_REASON__REJECT_REASON_MALFORMED,
                    "the first message must be an UpdateHeader");
        return;
    }
    const Fedprof__V1__UpdateHeader *uh = um->header;
    int reason = 0;
    char detail[FP_WIRE_STATUS_MSG_MAX + FP_WIRE_IDENTITY_MAX] = "";
    member_t *m = NULL;
    uint64_t round_id = 0;
    double plan_clip = c->o.plan.clip;
    pthread_mutex_lock(&c->mu);
    if (uh->protocol_version != FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1) {
        reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_VERSION;
        snprintf(detail, sizeof detail, "protocol_version %u is not spoken (only 1)", uh->protocol_version);
    } else if (!(m = find_session(c, uh->session)) || !identity_matches(c, call, m)) {
        reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_UNKNOWN_IDENTITY;
        snprintf(detail, sizeof detail, "%s", m ? "the session belongs to another identity" : "unknown session");
        m = NULL;
    } else if (c->phase != FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_TRAIN || uh->round_id != c->round_id) {
        reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_STALE;
        snprintf(detail, sizeof detail, "round %" PRIu64 " is not open (current round %" PRIu64 ", %s)", uh->round_id,
                 c->round_id, c->phase == FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_TRAIN ? "training" : "closed");
    } else if (uh->base_model_version != c->model.version) {
        reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_STALE;
        snprintf(detail, sizeof detail, "base model version %" PRIu64 ", current %" PRIu64, uh->base_model_version,
                 c->model.version);
    } else if (m->selected_round != c->round_id || m->exhausted) {
        reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_NOT_SELECTED;
        snprintf(detail, sizeof detail, "%s is not selected for round %" PRIu64, m->identity, c->round_id);
    } else if (m->pushed_round == c->round_id || m->pushing) {
        reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_DUPLICATE;
        snprintf(detail, sizeof detail, "%s already %s an update for round %" PRIu64, m->identity,
                 m->pushing ? "is sending" : "sent", c->round_id);
    } else if (uh->parameter_count > c->P) {
        reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_OVERSIZED;
        snprintf(detail, sizeof detail, "parameter_count %" PRIu64 " > %zu", uh->parameter_count, c->P);
    } else if (plan_clip > 0 && c->o.plan.unit != FP_UNIT_RECORD &&
               (!(uh->clip_bound > 0) || uh->clip_bound > plan_clip * (1 + 1e-12))) {
        reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_CLIP_BOUND;
        snprintf(detail, sizeof detail, "declared clip bound %g, the federation requires <= %g", uh->clip_bound,
                 plan_clip);
    } else {
        m->pushing = 1;
        round_id = c->round_id;
    }
    pthread_mutex_unlock(&c->mu);
    fedprof__v1__update_stream_message__free_unpacked(um, NULL);
    if (reason) {
        push_refuse(c, call, reason, detail);
        return;
    }

    /* Receive into a slot: header (again, through the checking reader), chunks, digest. */
    pthread_mutex_lock(&c->mu);
    slot_t *slot = take_slot(c, call, round_id);
    pthread_mutex_unlock(&c->mu);
    fp_status st = FP_OK;
    uint64_t got_bytes = len, dropped_at = 0;
    if (!slot) {
        reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_STALE;
        snprintf(detail, sizeof detail, "round %" PRIu64 " closed while waiting for a receive slot", round_id);
        goto refuse;
    }
    if ((st = slot_ready(c, slot)) != FP_OK) {
        release_slot(c, slot);
        slot = NULL;
        pthread_mutex_lock(&c->mu);
        m->pushing = 0;
        pthread_mutex_unlock(&c->mu);
        fp_wire_call_finish(call, FP_WIRE_RESOURCE_EXHAUSTED, fp_error_message(), NULL, 0);
        return;
    }
    st = fp_ts_reader_feed(slot->reader, data, len);
    while (st == FP_OK) {
        if (fp_wire_call_read(call, &data, &len, &more) != FP_OK) {
            /* The client went away mid-stream: nothing to answer, nothing counted as accepted. */
            release_slot(c, slot);
            pthread_mutex_lock(&c->mu);
            m->pushing = 0;
            pthread_mutex_unlock(&c->mu);
            return;
        }
        if (!more)
            break;
        got_bytes += len;
        st = fp_ts_reader_feed(slot->reader, data, len);
        /* The data written so far lies below got_bytes (which also counts the messages' framing). */
        if (st == FP_OK && slot->map_bytes && got_bytes - dropped_at >= COORD_SPILL_STEP_BYTES) {
            if ((st = slot_drop(slot, (size_t)dropped_at, (size_t)got_bytes)) != FP_OK)
                break;
            dropped_at = got_bytes;
        }
    }
    if (st == FP_OK)
        st = fp_ts_reader_finish(slot->reader);
    if (st == FP_OK)
        st = slot_drop(slot, 0, slot->map_bytes);
    if (st != FP_OK) {
        reason = ts_reason(fp_ts_reader_reject(slot->reader));
        snprintf(detail, sizeof detail, "%s", fp_error_message());
        goto refuse;
    }
    const fp_ts_header_t *h = fp_ts_reader_header(slot->reader);
    size_t n = 0;
    const float *delta = fp_ts_reader_data(slot->reader, &n);
    if (h->clip_bound > 0 && c->o.plan.unit != FP_UNIT_RECORD) {
        double norm = 0.0;
        if (!slot->map_bytes) {
            norm = fp_vec_l2(delta, n);
        } else { /* in steps, dropping the pages read */
            const size_t step = COORD_SPILL_STEP_BYTES / sizeof(float);
            double ss = 0.0;
            for (size_t o = 0; o < n && st == FP_OK; o += step) {
                const size_t k = n - o < step ? n - o : step;
                double l = fp_vec_l2(delta + o, k);
                ss += l * l;
                st = slot_drop(slot, o * sizeof(float), (o + k) * sizeof(float));
            }
            norm = sqrt(ss);
            if (st != FP_OK) {
                reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_MALFORMED;
                snprintf(detail, sizeof detail, "%s", fp_error_message());
                goto refuse;
            }
        }
        double bound = h->clip_bound * (1 + 1e-6) + noise_allowance(h, n);
        if (!(norm <= bound)) {
            reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_CLIP_BOUND;
            snprintf(detail, sizeof detail, "L2 norm %.6g above the declared clip bound %g (allowing %.6g for noise)",
                     norm, h->clip_bound, bound - h->clip_bound * (1 + 1e-6));
            goto refuse;
        }
    }
    if (c->fed) {
        int over_budget = 0;
        if (record_ledger(c, m, h, round_id, detail, sizeof detail, &over_budget) != 0) {
            reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_LEDGER;
            if (over_budget) {
                pthread_mutex_lock(&c->mu);
                m->exhausted = 1;
                pthread_mutex_unlock(&c->mu);
            }
            goto refuse;
        }
    }
    double weight = 1.0;
    if (!c->o.uniform_weights) {
        uint32_t b = h->example_count_bucket;
        weight = b == 0 ? 1.0 : ldexp(1.0, (int)(b > 60 ? 60 : b) - 1); /* lower edge of [2^(b-1), 2^b) */
    }
    /* Aggregate if the round is still open. */
    pthread_mutex_lock(&c->mu);
    if (c->phase != FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_TRAIN || c->round_id != round_id) {
        pthread_mutex_unlock(&c->mu);
        reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_STALE;
        snprintf(detail, sizeof detail, "round %" PRIu64 " closed before the update was complete", round_id);
        goto refuse;
    }
    c->adding++;
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_lock(&c->agg_mu);
    if (!slot->map_bytes) {
        st = fp_agg_add(c->agg, delta, weight);
    } else if ((st = fp_agg_add_check(c->agg, weight)) == FP_OK) {
        /* The update was checked whole (finite, digest, norm): add it in steps, dropping the pages
         * read. A failed drop costs only memory, so it does not stop the adding: a range already
         * added cannot be taken back, and a half-added update would corrupt the running sum. */
        const size_t step = COORD_SPILL_STEP_BYTES / sizeof(float);
        for (size_t o = 0; o < n && st == FP_OK; o += step) {
            const size_t k = n - o < step ? n - o : step;
            st = fp_agg_add_range(c->agg, o, delta + o, k, weight);
            if (slot_drop(slot, o * sizeof(float), (o + k) * sizeof(float)) != FP_OK)
                fp_log_warn("coordinator: %s", fp_error_message());
        }
        if (st == FP_OK)
            st = fp_agg_commit_update(c->agg, weight);
    }
    pthread_mutex_unlock(&c->agg_mu);
    pthread_mutex_lock(&c->mu);
    c->adding--;
    m->pushing = 0;
    if (st == FP_OK) {
        m->pushed_round = round_id;
        c->received++;
        c->accepted++;
        c->bytes_in += got_bytes;
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    release_slot(c, slot);
    if (st != FP_OK) {
        reason = st == FP_ERR_NUMERIC ? FEDPROF__V1__REJECT_REASON__REJECT_REASON_NON_FINITE
                                      : FEDPROF__V1__REJECT_REASON__REJECT_REASON_OVERSIZED;
        count_reject(c, reason);
        fp_wire_call_finish(call, reason_code(reason), fp_error_message(), NULL, 0);
        return;
    }
    Fedprof__V1__PushUpdateResponse resp = FEDPROF__V1__PUSH_UPDATE_RESPONSE__INIT;
    resp.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    resp.accepted = 1;
    resp.round_id = round_id;
    finish_packed(call, &resp.base);
    return;

refuse:
    if (slot)
        release_slot(c, slot);
    pthread_mutex_lock(&c->mu);
    m->pushing = 0;
    wake_all(c);
    pthread_mutex_unlock(&c->mu);
    push_refuse(c, call, reason, detail);
}

/* ---- Status ----------------------------------------------------------------------------------------- */

static void on_status(fp_wire_call_t *call, void *user)
{
    fp_coord_t *c = user;
    size_t len = 0;
    const uint8_t *data = read_unary(call, &len);
    if (!data)
        return;
    Fedprof__V1__StatusRequest *req = fedprof__v1__status_request__unpack(NULL, len, data);
    if (!req) {
        fp_wire_call_finish(call, FP_WIRE_INVALID_ARGUMENT, "not a StatusRequest", NULL, 0);
        return;
    }
    uint32_t ver = req->protocol_version;
    fedprof__v1__status_request__free_unpacked(req, NULL);
    if (ver != FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1) {
        fp_wire_call_finish(call, FP_WIRE_FAILED_PRECONDITION, "protocol_version not spoken (only 1)", NULL, 0);
        return;
    }
    if (!c->o.insecure && !fp_wire_call_identity(call)[0]) {
        fp_wire_call_finish(call, FP_WIRE_UNAUTHENTICATED, "no client certificate identity", NULL, 0);
        return;
    }
    Fedprof__V1__StatusResponse resp = FEDPROF__V1__STATUS_RESPONSE__INIT;
    Fedprof__V1__RejectionCount rc[COORD_N_REASONS], *rcp[COORD_N_REASONS];
    char **parts = NULL, **exh = NULL;
    pthread_mutex_lock(&c->mu);
    resp.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    resp.round_id = c->round_id;
    resp.phase = (Fedprof__V1__RoundPhase)c->phase;
    resp.model_version = c->model.version;
    resp.committed_rounds = c->committed;
    resp.total_rounds = (uint64_t)c->o.rounds;
    resp.selected = (uint32_t)c->selected;
    resp.received = (uint32_t)c->received;
    resp.bytes_in = c->bytes_in;
    resp.bytes_out = c->bytes_out;
    resp.federation_id = c->federation_id;
    resp.round_deadline_unix_ms = c->round_deadline_unix_ms;
    resp.strategy = (char *)(uintptr_t)fp_strategy_name(c->o.strategy.kind);
    resp.failed_rounds = c->failed_rounds;
    double now = fp_now();
    int live = 0;
    for (int i = 0; i < c->n_members; i++)
        live += member_live(c, c->members[i], now);
    resp.members = (uint32_t)live;
    size_t nr = 0;
    for (int r = 1; r < COORD_N_REASONS; r++)
        if (c->rejections[r]) {
            Fedprof__V1__RejectionCount x = FEDPROF__V1__REJECTION_COUNT__INIT;
            x.reason = (Fedprof__V1__RejectReason)r;
            x.count = c->rejections[r];
            rc[nr] = x;
            rcp[nr] = &rc[nr];
            nr++;
        }
    resp.n_rejections = nr;
    resp.rejections = rcp;
    parts = calloc((size_t)c->n_members + 1, sizeof *parts);
    exh = calloc((size_t)c->n_members + 1, sizeof *exh);
    if (parts && exh) {
        for (int i = 0; i < c->n_members; i++) {
            member_t *m = c->members[i];
            if (m->selected_round == c->round_id && c->round_id)
                parts[resp.n_participants++] = m->identity;
            if (m->exhausted)
                exh[resp.n_exhausted++] = m->identity;
        }
        resp.participants = parts;
        resp.exhausted = exh;
    }
    /* Pack while holding the lock: the strings point into the member table. */
    size_t n = protobuf_c_message_get_packed_size(&resp.base);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf)
        protobuf_c_message_pack(&resp.base, buf);
    pthread_mutex_unlock(&c->mu);
    free(parts);
    free(exh);
    if (!buf) {
        fp_wire_call_finish(call, FP_WIRE_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return;
    }
    fp_wire_call_finish(call, FP_WIRE_OK, NULL, buf, n);
    free(buf);
}

/* ---- checkpoint ------------------------------------------------------------------------------------- */

static fp_status path_in(const fp_coord_t *c, const char *file, char *buf, size_t n)
{
    if ((size_t)snprintf(buf, n, "%s/%s", c->ckpt_dir, file) >= n)
        return FP_FAIL(FP_ERR_RANGE, "checkpoint path too long: %s", c->ckpt_dir);
    return FP_OK;
}

/* Membership as text: one line per member, "identity\texhausted". Identities hold no tabs or
 * newlines (certificate CNs with them are refused at Join... and names are checked). */
static char *members_text(const fp_coord_t *c)
{
    size_t n = 1;
    for (int i = 0; i < c->n_members; i++)
        n += strlen(c->members[i]->identity) + 4;
    char *s = malloc(n), *p = s;
    if (!s)
        return NULL;
    *p = '\0';
    for (int i = 0; i < c->n_members; i++)
        p += sprintf(p, "%s\t%d\n", c->members[i]->identity, c->members[i]->exhausted);
    return s;
}

/* The checkpoint's counters and membership, taken under c->mu; the file is written from it without
 * the lock (save_state_write). */
typedef struct {
    char round[32], version[32], committed[32], failed[32], steps[32], hash[32], rej[COORD_N_REASONS * 24], bytes[64],
        accepted[32];
    char *members;
} state_text_t;

/* Called with c->mu held. */
static fp_status save_state_prepare(fp_coord_t *c, state_text_t *t)
{
    snprintf(t->round, sizeof t->round, "%" PRIu64, c->round_id);
    snprintf(t->version, sizeof t->version, "%" PRIu64, c->model.version);
    snprintf(t->committed, sizeof t->committed, "%" PRIu64, c->committed);
    snprintf(t->failed, sizeof t->failed, "%" PRIu64, c->failed_rounds);
    snprintf(t->steps, sizeof t->steps, "%" PRIu64, fp_sopt_steps(c->sopt));
    snprintf(t->hash, sizeof t->hash, "%016" PRIx64, c->layout_hash);
    snprintf(t->bytes, sizeof t->bytes, "%" PRIu64 " %" PRIu64, c->bytes_in, c->bytes_out);
    snprintf(t->accepted, sizeof t->accepted, "%" PRIu64, c->accepted);
    size_t o = 0;
    for (int r = 0; r < COORD_N_REASONS; r++)
        o += (size_t)snprintf(t->rej + o, sizeof t->rej - o, "%s%" PRIu64, r ? " " : "", c->rejections[r]);
    if (!(t->members = members_text(c)))
        return FP_FAIL(FP_ERR_NOMEM, "membership text");
    return FP_OK;
}

/* Write the state file (atomic: temp file, fsync, rename, fsync of the directory) from t, the global
 * model and the optimizer state; frees t's membership text. Needs no lock as long as only the caller
 * changes the model and the optimizer state (the run thread, in COMMIT). */
static fp_status save_state_write(fp_coord_t *c, state_text_t *t)
{
    char path[4096];
    fp_status st = path_in(c, COORD_STATE_FILE, path, sizeof path);
    if (st != FP_OK) {
        free(t->members);
        t->members = NULL;
        return st;
    }
    fp_kv_t meta[] = {{"format", "fedprof-coordinator-state"},
                      {"round_id", t->round},
                      {"model_version", t->version},
                      {"committed", t->committed},
                      {"failed_rounds", t->failed},
                      {"opt_steps", t->steps},
                      {"layout_hash", t->hash},
                      {"rejections", t->rej},
                      {"bytes", t->bytes},
                      {"accepted", t->accepted},
                      {"members", t->members},
                      {"strategy", fp_strategy_name(c->o.strategy.kind)},
                      {"config", c->config_json}};
    fp_st_group_t g[3];
    size_t ng = 0;
    g[ng++] = (fp_st_group_t){&c->layout, c->model.w, "model."};
    for (int i = 0; i < fp_sopt_n_state(c->sopt); i++)
        g[ng++] = (fp_st_group_t){&c->layout, fp_sopt_state(c->sopt, i), i == 0 ? "opt.m." : "opt.v."};
    st = fp_safetensors_save_groups(path, g, ng, meta, sizeof meta / sizeof meta[0]);
    free(t->members);
    t->members = NULL;
    return st;
}

static fp_status parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s)
        return FP_ERR_PARSE;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-')
        return FP_ERR_PARSE;
    *out = v;
    return FP_OK;
}

/* Resume from the checkpoint directory when it holds a state; *found = 0 when it does not. */
static fp_status load_state(fp_coord_t *c, int *found)
{
    char path[4096];
    fp_status st = path_in(c, COORD_STATE_FILE, path, sizeof path);
    if (st != FP_OK)
        return st;
    *found = 0;
    fp_st_file_t *f = NULL;
    st = fp_safetensors_load(path, &f);
    if (st == FP_ERR_NOT_FOUND) {
        fp_error_clear();
        return FP_OK;
    }
    if (st != FP_OK)
        return st;
    const char *fmt = fp_st_meta(f, "format"), *hash = fp_st_meta(f, "layout_hash"),
               *strat = fp_st_meta(f, "strategy"), *members = fp_st_meta(f, "members"), *rej = fp_st_meta(f, "rejections"),
               *bytes = fp_st_meta(f, "bytes");
    uint64_t round = 0, version = 0, committed = 0, failed = 0, steps = 0, accepted = 0;
    char want[32];
    snprintf(want, sizeof want, "%016" PRIx64, c->layout_hash);
    if (!fmt || strcmp(fmt, "fedprof-coordinator-state") != 0 || !hash || !members || !rej || !bytes || !strat ||
        parse_u64(fp_st_meta(f, "round_id"), &round) || parse_u64(fp_st_meta(f, "model_version"), &version) ||
        parse_u64(fp_st_meta(f, "committed"), &committed) || parse_u64(fp_st_meta(f, "failed_rounds"), &failed) ||
        parse_u64(fp_st_meta(f, "opt_steps"), &steps) || parse_u64(fp_st_meta(f, "accepted"), &accepted)) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: not a fedprof coordinator state", path);
        goto out;
    }
    if (strcmp(hash, want) != 0) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s holds a model of another architecture (layout %s, configured %s): use another "
                     "--checkpoint-dir or the same model config", path, hash, want);
        goto out;
    }
    if (strcmp(strat, fp_strategy_name(c->o.strategy.kind)) != 0) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s was written by strategy %s, configured %s", path, strat,
                     fp_strategy_name(c->o.strategy.kind));
        goto out;
    }
    if ((st = fp_safetensors_read_layout(f, &c->layout, "model.", c->model.w)) != FP_OK)
        goto out;
    for (int i = 0; i < fp_sopt_n_state(c->sopt); i++)
        if ((st = fp_safetensors_read_layout(f, &c->layout, i == 0 ? "opt.m." : "opt.v.", fp_sopt_state(c->sopt, i))) !=
            FP_OK)
            goto out;
    if (!fp_vec_all_finite(c->model.w, c->P)) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: the model holds NaN/Inf", path);
        goto out;
    }
    const char *p = rej;
    for (int r = 0; r < COORD_N_REASONS; r++) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno || end == p) {
            st = FP_FAIL(FP_ERR_FORMAT, "%s: bad rejection counters", path);
            goto out;
        }
        c->rejections[r] = v;
        p = end;
    }
    unsigned long long bi = 0, bo = 0;
    if (sscanf(bytes, "%llu %llu", &bi, &bo) != 2) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: bad byte counters", path);
        goto out;
    }
    /* Members: "identity\texhausted\n" lines. */
    for (const char *line = members; *line;) {
        const char *tab = strchr(line, '\t'), *nl = strchr(line, '\n');
        if (!tab || !nl || tab > nl || tab == line || (size_t)(tab - line) >= FP_WIRE_IDENTITY_MAX) {
            st = FP_FAIL(FP_ERR_FORMAT, "%s: bad membership record", path);
            goto out;
        }
        char id[FP_WIRE_IDENTITY_MAX];
        memcpy(id, line, (size_t)(tab - line));
        id[tab - line] = '\0';
        member_t *m = find_identity(c, id);
        if (!m && !(m = add_member(c, id))) {
            st = FP_FAIL(FP_ERR_NOMEM, "membership");
            goto out;
        }
        m->exhausted = tab[1] == '1';
        line = nl + 1;
    }
    c->round_id = round;
    c->model.version = version;
    c->committed = committed;
    c->failed_rounds = failed;
    c->accepted = accepted;
    c->bytes_in = bi;
    c->bytes_out = bo;
    fp_sopt_set_steps(c->sopt, steps);
    *found = 1;
out:
    fp_safetensors_close(f);
    return st;
}

static fp_status write_final_model(fp_coord_t *c)
{
    char path[4096];
    fp_status st = path_in(c, COORD_MODEL_FILE, path, sizeof path);
    if (st != FP_OK)
        return st;
    /* From c->model.w directly: no training model (params + grads, 8·P) next to the running sum. */
    return fp_model_save_params(path, &c->layout, c->model.w, c->o.model_cfg.model.n_items, &c->o.model_cfg, NULL);
}

/* ---- options ---------------------------------------------------------------------------------------- */

void fp_coord_opts_defaults(fp_coord_opts_t *o)
{
    memset(o, 0, sizeof *o);
    fp_config_defaults(&o->model_cfg);
    o->init_seed = 42;
    o->rounds = 10;
    o->clients_per_round = 2;
    o->min_clients = 2;
    o->over_selection = 1.0;
    o->round_timeout_s = 600;
    o->member_timeout_s = 60;
    o->done_linger_s = 3;
    o->max_concurrent_pushes = 1;
    o->max_concurrent_pulls = 8;
    o->spill_updates = -1;
    fp_strategy_defaults(&o->strategy, FP_STRAT_FEDAVG);
    o->plan.local_epochs = 1;
    o->plan.batch = 128;
    o->plan.lr = 1e-3;
    o->plan.seed = 42;
    o->plan.delta = 1e-5;
    o->federation_id = "fedprof";
}

fp_status fp_coord_opts_validate(const fp_coord_opts_t *o)
{
    if (!o->listen || !o->listen[0])
        return FP_FAIL(FP_ERR_INVALID, "listen address missing");
    if (!o->creds)
        return FP_FAIL(FP_ERR_INVALID, "credentials missing");
    if (!o->checkpoint_dir || !o->checkpoint_dir[0])
        return FP_FAIL(FP_ERR_INVALID, "checkpoint_dir missing");
    if (o->model_cfg.model.n_items < 1)
        return FP_FAIL(FP_ERR_RANGE, "federation.n_items must be >= 1 (the shared item catalogue size)");
    fp_status st = fp_model_config_validate(&o->model_cfg.model);
    if (st != FP_OK)
        return st;
    if (o->rounds < 1 || o->rounds > 100000000)
        return FP_FAIL(FP_ERR_RANGE, "rounds must be in [1, 1e8]");
    if (o->clients_per_round < 1 || o->clients_per_round > COORD_MAX_MEMBERS)
        return FP_FAIL(FP_ERR_RANGE, "clients_per_round must be in [1, %d]", COORD_MAX_MEMBERS);
    if (o->min_clients < 1 || o->min_clients > COORD_MAX_MEMBERS)
        return FP_FAIL(FP_ERR_RANGE, "min_clients must be in [1, %d]", COORD_MAX_MEMBERS);
    if (o->min_updates < 0 || o->min_updates > o->clients_per_round)
        return FP_FAIL(FP_ERR_RANGE, "min_updates must be in [0, clients_per_round = %d] (0: min_clients)",
                       o->clients_per_round);
    if (!(o->over_selection >= 1.0 && o->over_selection <= 10.0))
        return FP_FAIL(FP_ERR_RANGE, "over_selection must be in [1, 10]");
    if (!(o->round_timeout_s > 0 && o->round_timeout_s <= 86400))
        return FP_FAIL(FP_ERR_RANGE, "round_timeout_s must be in (0, 86400]");
    if (!(o->member_timeout_s > 0 && o->member_timeout_s <= 86400))
        return FP_FAIL(FP_ERR_RANGE, "member_timeout_s must be in (0, 86400]");
    if (!(o->done_linger_s >= 0 && o->done_linger_s <= 3600))
        return FP_FAIL(FP_ERR_RANGE, "done_linger_s must be in [0, 3600]");
    if (o->max_concurrent_pushes < 1 || o->max_concurrent_pushes > 1024)
        return FP_FAIL(FP_ERR_RANGE, "max_concurrent_pushes must be in [1, 1024]");
    if (o->max_concurrent_pulls < 1 || o->max_concurrent_pulls > 1024)
        return FP_FAIL(FP_ERR_RANGE, "max_concurrent_pulls must be in [1, 1024]");
    if (o->spill_updates < -1 || o->spill_updates > 1)
        return FP_FAIL(FP_ERR_RANGE, "spill_updates must be -1 (by model size), 0 or 1");
    if ((st = fp_strategy_validate(&o->strategy)) != FP_OK)
        return st;
    const fp_coord_plan_t *p = &o->plan;
    if (p->local_epochs < 1 || p->local_epochs > 100000 || p->max_steps < 0 || p->batch < 1 || p->batch > 65536)
        return FP_FAIL(FP_ERR_RANGE, "plan: local_epochs >= 1, max_steps >= 0, batch in [1, 65536]");
    if (!(p->lr > 0 && isfinite(p->lr)) || !(p->fedprox_mu >= 0 && isfinite(p->fedprox_mu)))
        return FP_FAIL(FP_ERR_RANGE, "plan: lr > 0 and fedprox_mu >= 0");
    if (!(p->clip >= 0 && isfinite(p->clip)) || !(p->noise_multiplier >= 0 && isfinite(p->noise_multiplier)))
        return FP_FAIL(FP_ERR_RANGE, "plan: clip >= 0 and noise_multiplier >= 0");
    if (p->unit != FP_UNIT_NONE && !(p->clip > 0))
        return FP_FAIL(FP_ERR_RANGE, "privacy unit %s needs clip > 0", p->unit == FP_UNIT_RECORD ? "record" : "client");
    if (p->unit != FP_UNIT_NONE && !(p->delta > 0 && p->delta < 1))
        return FP_FAIL(FP_ERR_RANGE, "plan: delta must be in (0, 1)");
    if (!(p->budget_epsilon >= 0 && isfinite(p->budget_epsilon)))
        return FP_FAIL(FP_ERR_RANGE, "plan: budget_epsilon >= 0");
    return FP_OK;
}

/* ---- lifecycle -------------------------------------------------------------------------------------- */

static fp_status ensure_dir(const char *dir)
{
    if (mkdir(dir, 0755) == 0 || errno == EEXIST) {
        struct stat sb;
        if (stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode))
            return FP_OK;
        return FP_FAIL(FP_ERR_IO, "%s exists and is not a directory", dir);
    }
    return FP_FAIL(FP_ERR_IO, "cannot create directory %s: %s", dir, strerror(errno));
}

/* A DP federation keeps DIR/federation-ledger.jsonl, countersigned with DIR/ledger-key.pem
 * (created on first use). */
static fp_status open_fed_ledger(fp_coord_t *c)
{
    int created = 0;
    fp_status st = fp_ledger_key_load_or_create(c->ckpt_dir, &c->fed_key, &created);
    if (st != FP_OK)
        return st;
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", c->ckpt_dir, COORD_LEDGER_FILE) >= sizeof path)
        return FP_FAIL(FP_ERR_RANGE, "path too long: %s", c->ckpt_dir);
    if ((st = fp_ledger_fed_open(path, c->fed_key, &c->fed)) != FP_OK)
        return st;
    if (!c->o.quiet)
        fp_log_info("federation privacy ledger %s: %" PRId64 " entries; countersigned with %s/%s%s", path,
                    fp_ledger_fed_entries(c->fed), c->ckpt_dir, FP_LEDGER_PUBKEY_FILE, created ? " (new key)" : "");
    return FP_OK;
}

fp_status fp_coord_create(const fp_coord_opts_t *o, fp_coord_t **out)
{
    if (!o || !out)
        return FP_FAIL(FP_ERR_INVALID, "fp_coord_create: NULL argument");
    *out = NULL;
    fp_status st = fp_coord_opts_validate(o);
    if (st != FP_OK)
        return st;
    fp_coord_t *c = calloc(1, sizeof *c);
    if (!c)
        return FP_FAIL(FP_ERR_NOMEM, "coordinator");
    c->o = *o;
    fp_layout_init(&c->layout);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    pthread_cond_init(&c->task_cv, NULL);
    pthread_mutex_init(&c->agg_mu, NULL);
    pthread_mutex_init(&c->ledger_mu, NULL);
    c->phase = FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_WAITING;
    c->listen = dup_str(o->listen);
    c->ckpt_dir = dup_str(o->checkpoint_dir);
    c->federation_id = dup_str(o->federation_id ? o->federation_id : "fedprof");
    if (!c->listen || !c->ckpt_dir || !c->federation_id) {
        st = FP_FAIL(FP_ERR_NOMEM, "coordinator");
        goto fail;
    }
    c->o.listen = c->listen;
    c->o.checkpoint_dir = c->ckpt_dir;
    c->o.federation_id = c->federation_id;
    if ((st = ensure_dir(c->ckpt_dir)) != FP_OK || (st = fp_config_to_json(&c->o.model_cfg, &c->config_json)) != FP_OK)
        goto fail;
    /* The model's layout and its initial parameters (from init_seed), written straight into the
     * global model: no training model (params + grads) is built. */
    if ((st = fp_model_layout_build(&c->o.model_cfg.model, &c->layout)) != FP_OK)
        goto fail;
    c->P = c->layout.total;
    c->layout_hash = fp_layout_hash(&c->layout);
    if (!(c->model.w = fp_buffer_alloc(c->P))) {
        st = FP_FAIL(FP_ERR_NOMEM, "global model of %zu floats", c->P);
        goto fail;
    }
    fp_model_init_params(&c->layout, c->model.w, o->init_seed);
    c->model.version = 1;
    size_t max_updates = (size_t)ceil(o->clients_per_round * o->over_selection) + 1;
    if ((st = fp_agg_create(&o->strategy, c->P, max_updates, &c->agg)) != FP_OK ||
        (st = fp_sopt_create(&o->strategy, c->P, &c->sopt)) != FP_OK)
        goto fail;
    c->n_slots = o->max_concurrent_pushes;
    c->spill = !fp_strategy_buffers(o->strategy.kind) &&
               (o->spill_updates == 1 || (o->spill_updates == -1 && c->P * sizeof(float) >= COORD_SPILL_MIN_BYTES));
    if (!(c->slots = calloc((size_t)c->n_slots, sizeof *c->slots))) {
        st = FP_FAIL(FP_ERR_NOMEM, "receive slots");
        goto fail;
    }
    if (o->plan.unit != FP_UNIT_NONE && (st = open_fed_ledger(c)) != FP_OK)
        goto fail;
    int found = 0;
    if ((st = load_state(c, &found)) != FP_OK)
        goto fail;
    if ((st = fp_ts_digest(c->model.w, c->P, c->model.sha256)) != FP_OK)
        goto fail;
    if (found && !o->quiet)
        fp_log_info("resuming from %s/%s: %" PRIu64 " of %d rounds committed, model version %" PRIu64, c->ckpt_dir,
                    COORD_STATE_FILE, c->committed, o->rounds, c->model.version);
    uint64_t seed = o->select_seed;
    if (!seed && RAND_bytes((unsigned char *)&seed, sizeof seed) != 1) {
        st = FP_FAIL(FP_ERR_INTERNAL, "RAND_bytes failed");
        goto fail;
    }
    fp_rng_seed(&c->select_rng, seed);
    fp_wire_method_t methods[] = {
        {FP_WIRE_METHOD_JOIN, on_join, c},     {FP_WIRE_METHOD_GET_TASK, on_get_task, c},
        {FP_WIRE_METHOD_PULL_MODEL, on_pull, c}, {FP_WIRE_METHOD_PUSH_UPDATE, on_push, c},
        {FP_WIRE_METHOD_STATUS, on_status, c},
    };
    if ((st = fp_wire_server_create(c->listen, o->creds, o->max_message_bytes, methods,
                                    sizeof methods / sizeof methods[0], &c->server)) != FP_OK)
        goto fail;
    *out = c;
    return FP_OK;
fail:
    fp_coord_destroy(c);
    return st;
}

int fp_coord_port(const fp_coord_t *c)
{
    return c && c->server ? fp_wire_server_port(c->server) : 0;
}

void fp_coord_stop(fp_coord_t *c)
{
    if (c)
        atomic_store(&c->stop, 1);
}

void fp_coord_destroy(fp_coord_t *c)
{
    if (!c)
        return;
    atomic_store(&c->stop, 1);
    pthread_mutex_lock(&c->mu);
    wake_all(c);
    pthread_mutex_unlock(&c->mu);
    fp_wire_server_destroy(c->server); /* waits for every handler */
    for (int i = 0; i < c->n_slots && c->slots; i++) {
        fp_ts_reader_destroy(c->slots[i].reader);
        if (c->slots[i].map_bytes)
            munmap(c->slots[i].buf, c->slots[i].map_bytes);
        else
            fp_buffer_free(c->slots[i].buf);
    }
    free(c->slots);
    for (int i = 0; i < c->n_members; i++) {
        fp_ledger_key_free(c->members[i]->lkey);
        free(c->members[i]);
    }
    free(c->members);
    fp_agg_destroy(c->agg);
    fp_sopt_destroy(c->sopt);
    fp_buffer_free(c->model.w);
    fp_layout_free(&c->layout);
    free(c->config_json);
    free(c->listen);
    free(c->ckpt_dir);
    free(c->federation_id);
    fp_ledger_fed_close(c->fed);
    fp_ledger_key_free(c->fed_key);
    pthread_mutex_destroy(&c->ledger_mu);
    pthread_mutex_destroy(&c->agg_mu);
    pthread_cond_destroy(&c->cv);
    pthread_cond_destroy(&c->task_cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void fp_coord_stats(fp_coord_t *c, fp_coord_stats_t *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_lock(&c->mu);
    s->round_id = c->round_id;
    s->model_version = c->model.version;
    s->committed = c->committed;
    s->failed_rounds = c->failed_rounds;
    for (int r = 0; r < COORD_N_REASONS && r < 16; r++)
        s->rejections[r] = c->rejections[r];
    s->bytes_in = c->bytes_in;
    s->bytes_out = c->bytes_out;
    s->accepted = c->accepted;
    s->members = c->n_members;
    pthread_mutex_unlock(&c->mu);
}

fp_status fp_coord_model(fp_coord_t *c, float *out, size_t cap, size_t *n)
{
    if (!c || !out || !n)
        return FP_FAIL(FP_ERR_INVALID, "fp_coord_model: NULL argument");
    if (cap < c->P)
        return FP_FAIL(FP_ERR_RANGE, "fp_coord_model: buffer of %zu floats, need %zu", cap, c->P);
    pthread_mutex_lock(&c->mu);
    while (c->committing) /* the model is being replaced */
        timed_wait(&c->cv, &c->mu, 20);
    memcpy(out, c->model.w, c->P * sizeof(float));
    pthread_mutex_unlock(&c->mu);
    *n = c->P;
    return FP_OK;
}

/* ---- the round driver ------------------------------------------------------------------------------- */

/* Choose the round's members (c->mu held). Returns how many were selected. */
static int select_members(fp_coord_t *c, double now)
{
    int *live = malloc((size_t)(c->n_members ? c->n_members : 1) * sizeof *live), n_live = 0;
    if (!live)
        return 0;
    for (int i = 0; i < c->n_members; i++)
        if (member_live(c, c->members[i], now) && !c->members[i]->exhausted)
            live[n_live++] = i;
    int want = (int)ceil(c->o.clients_per_round * c->o.over_selection);
    if (want > n_live)
        want = n_live;
    /* Partial Fisher-Yates: the first `want` of a random permutation. */
    for (int i = 0; i < want; i++) {
        int j = i + (int)fp_rng_below(&c->select_rng, (uint64_t)(n_live - i));
        int t = live[i];
        live[i] = live[j];
        live[j] = t;
        c->members[live[i]]->selected_round = c->round_id;
    }
    free(live);
    return want;
}

static int live_count(const fp_coord_t *c, double now)
{
    int n = 0;
    for (int i = 0; i < c->n_members; i++)
        n += member_live(c, c->members[i], now) && !c->members[i]->exhausted;
    return n;
}

/* 1 when every selected member has answered (accepted) or gone silent. */
static int all_selected_done(const fp_coord_t *c, double now)
{
    for (int i = 0; i < c->n_members; i++) {
        const member_t *m = c->members[i];
        if (m->selected_round == c->round_id && m->pushed_round != c->round_id && !m->exhausted &&
            (member_live(c, m, now) || m->pushing))
            return 0;
    }
    return 1;
}

/* Aggregate and commit the round (called with c->mu NOT held; phase is AGGREGATE, no push is
 * adding). */
static fp_status commit_round(fp_coord_t *c)
{
    fp_status st = FP_OK;
    /* The mean strategies apply Δ̄ = Σ/W straight from the running sum (no P-float buffer); the
     * buffering ones put it into the first receive slot's buffer: no push uses it now. */
    const int from_sum = !fp_strategy_buffers(c->o.strategy.kind);
    slot_t *s0 = &c->slots[0];
    if (!from_sum) {
        if (!s0->buf && !(s0->buf = fp_buffer_alloc(c->P)))
            return FP_FAIL(FP_ERR_NOMEM, "aggregate buffer");
        pthread_mutex_lock(&c->agg_mu);
        st = fp_agg_result(c->agg, s0->buf);
        pthread_mutex_unlock(&c->agg_mu);
        if (st != FP_OK)
            return st;
    }
    /* Wait until no pull streams the old model, then update it in place. */
    pthread_mutex_lock(&c->mu);
    c->phase = FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_COMMIT;
    while (c->model.refs > 0 && !atomic_load(&c->stop))
        timed_wait(&c->cv, &c->mu, 50);
    if (atomic_load(&c->stop) && c->model.refs > 0) {
        pthread_mutex_unlock(&c->mu);
        return FP_OK; /* stopping: the round is simply not committed */
    }
    c->committing = 1;
    pthread_mutex_unlock(&c->mu);
    /* In COMMIT with no pull streaming, nothing but this thread reads or writes the model, its digest
     * and the optimizer state (pulls wait for the phase to change, fp_coord_model for committing; pushes are
     * refused outside TRAIN), so the update, the digest and the checkpoint's write and fsyncs run
     * without c->mu: Join, GetTask and Status go on meanwhile. */
    if (from_sum) {
        pthread_mutex_lock(&c->agg_mu);
        st = fp_sopt_apply_agg(c->sopt, c->model.w, c->agg);
        pthread_mutex_unlock(&c->agg_mu);
    } else {
        st = fp_sopt_apply(c->sopt, c->model.w, s0->buf);
    }
    if (st == FP_OK) /* the new model's stream digest, before any pull can see it */
        st = fp_ts_digest(c->model.w, c->P, c->model.sha256);
    state_text_t t;
    memset(&t, 0, sizeof t);
    if (st == FP_OK) {
        pthread_mutex_lock(&c->mu);
        c->model.version++;
        c->committed++;
        st = save_state_prepare(c, &t);
        pthread_mutex_unlock(&c->mu);
        if (st == FP_OK)
            st = save_state_write(c, &t);
        if (st != FP_OK) {
            pthread_mutex_lock(&c->mu);
            c->model.version--;
            c->committed--;
            pthread_mutex_unlock(&c->mu);
        }
    }
    pthread_mutex_lock(&c->mu);
    c->committing = 0;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return st;
}

fp_status fp_coord_run(fp_coord_t *c)
{
    if (!c)
        return FP_FAIL(FP_ERR_INVALID, "fp_coord_run: NULL argument");
    fp_status st = FP_OK;
    const fp_coord_opts_t *o = &c->o;
    pthread_mutex_lock(&c->mu);
    while (c->committed < (uint64_t)o->rounds && !atomic_load(&c->stop)) {
        /* WAITING */
        c->phase = FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_WAITING;
        wake_all(c);
        int warned = 0;
        while (!atomic_load(&c->stop) && live_count(c, fp_now()) < o->min_clients) {
            int exhausted = 0;
            for (int i = 0; i < c->n_members; i++)
                exhausted += c->members[i]->exhausted;
            if (exhausted && !warned && !o->quiet) {
                fp_log_warn("waiting for members: %d can train, %d have spent their privacy budget, %d needed "
                            "(min_clients)", live_count(c, fp_now()), exhausted, o->min_clients);
                warned = 1;
            }
            timed_wait(&c->cv, &c->mu, 100);
        }
        if (atomic_load(&c->stop))
            break;
        /* SELECT */
        c->phase = FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_SELECT;
        c->round_id++;
        c->received = 0;
        /* Zero the running sum (8·P bytes: ~1 s at 25M parameters) without c->mu, so that Join, GetTask,
         * PullModel and Status go on meanwhile: no push adds outside TRAIN (c->adding is 0 since the
         * last AGGREGATE and a push checks the phase under c->mu before adding). */
        pthread_mutex_unlock(&c->mu);
        pthread_mutex_lock(&c->agg_mu);
        fp_agg_reset(c->agg);
        pthread_mutex_unlock(&c->agg_mu);
        pthread_mutex_lock(&c->mu);
        double t0 = fp_now();
        c->selected = select_members(c, t0);
        c->round_deadline = t0 + o->round_timeout_s;
        c->round_deadline_unix_ms = unix_ms() + (uint64_t)(o->round_timeout_s * 1000.0);
        /* TRAIN */
        c->phase = FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_TRAIN;
        wake_all(c);
        if (!o->quiet)
            fp_log_info("round %" PRIu64 " (%" PRIu64 "/%d committed): %d members selected, waiting for %d updates",
                        c->round_id, c->committed, o->rounds, c->selected, o->clients_per_round);
        while (!atomic_load(&c->stop) && c->received < o->clients_per_round && fp_now() < c->round_deadline &&
               !(c->received > 0 && all_selected_done(c, fp_now())) && !(c->selected == 0))
            timed_wait(&c->cv, &c->mu, 100);
        if (atomic_load(&c->stop))
            break;
        /* AGGREGATE: close the round, let in-flight adds finish. */
        c->phase = FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_AGGREGATE;
        wake_all(c);
        while (c->adding > 0)
            timed_wait(&c->cv, &c->mu, 20);
        int got = c->received;
        int need = o->min_updates > 0 ? o->min_updates
                                      : (o->min_clients < o->clients_per_round ? o->min_clients : o->clients_per_round);
        if (got < need) {
            c->failed_rounds++;
            if (!o->quiet)
                fp_log_warn("round %" PRIu64 " failed: %d update(s) by the deadline, %d needed; selecting again",
                            c->round_id, got, need);
            continue;
        }
        pthread_mutex_unlock(&c->mu);
        st = commit_round(c);
        pthread_mutex_lock(&c->mu);
        if (st != FP_OK)
            break;
        if (!o->quiet)
            fp_log_info("round %" PRIu64 " committed: model version %" PRIu64 " from %d updates in %.1fs (%" PRIu64
                        "/%d)",
                        c->round_id, c->model.version, got, fp_now() - t0, c->committed, o->rounds);
    }
    int finished = c->committed >= (uint64_t)o->rounds;
    pthread_mutex_unlock(&c->mu);
    if (st != FP_OK || !finished)
        return st;
    if ((st = write_final_model(c)) != FP_OK)
        return st;
    pthread_mutex_lock(&c->mu);
    c->phase = FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_DONE;
    wake_all(c);
    pthread_mutex_unlock(&c->mu);
    if (!o->quiet)
        fp_log_info("federation done: %d rounds, final model in %s/%s", o->rounds, c->ckpt_dir, COORD_MODEL_FILE);
    /* Serve DONE for a while so polling clients learn it and exit cleanly. */
    double t_end = fp_now() + o->done_linger_s;
    while (fp_now() < t_end && !atomic_load(&c->stop)) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return FP_OK;
}
