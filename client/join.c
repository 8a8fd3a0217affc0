/* join: the client side of the federation protocol (see join.h). */
#include "client/join.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/rand.h>

#include "client/dpsgd.h"
#include "client/local.h"
#include "common/config.h"
#include "common/log.h"
#include "common/model.h"
#include "common/model_io.h"
#include "common/params.h"
#include "common/rng.h"
#include "common/tensor_stream.h"
#include "dp/clip.h"
#include "dp/csprng.h"
#include "dp/ledger.h"
#include "dp/noise.h"
#include "fedprof.pb-c.h"

#define JOIN_RPC_DEADLINE_MS 30000
#define JOIN_POLL_WAIT_MS 10000
#define JOIN_STREAM_DEADLINE_MS (30 * 60 * 1000)
#define JOIN_SESSION_MAX 64

void fp_join_opts_defaults(fp_join_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->threads = 1;
    o->eval_final = 1;
    o->max_backoff_s = 10.0;
}

uint32_t fp_join_example_bucket(uint64_t n)
{
    uint32_t b = 0;
    while (n) {
        b++;
        n >>= 1;
    }
    return b;
}

typedef struct {
    const fp_join_opts_t *o;
    fp_join_report_t *rep;
    fp_wire_channel_t *ch;
    char session[JOIN_SESSION_MAX + 1];
    int joined;
    /* from Join */
    fp_config_t cfg;
    int32_t n_items;
    int cfg_known;
    /* training state, created at the first task */
    fp_split_t split;
    int split_ready;
    int64_t *pop;
    fp_model_t *model;
    int model_batch;
    fp_adam_t adam;
    float *w_global, *delta;
    size_t P;
    uint64_t layout_hash;
    /* the last computed update, kept until its round is answered */
    int have_update;
    uint64_t upd_round, upd_version;
    fp_ts_header_t upd_h;
    fp_rng_t jitter;
    double last_progress;
    /* privacy ledger */
    char federation_id[128];
    fp_ledger_key_t *lkey;      /* loaded at start when ledger_dir is set */
    char *lkey_pem;             /* its public half, sent in Join */
    fp_ledger_t *ledger;        /* opened at the first DP task */
    int64_t fed_next_seq;       /* the entry the coordinator's federation ledger expects next */
    int exhausted;              /* budget spent: say so in GetTask, train no more */
    uint64_t skipped_round;     /* a spent round seen again (logged once) */
} join_t;

/* ---- retry ------------------------------------------------------------------------------------------ */

static int transient(int code)
{
    return code == FP_WIRE_UNAVAILABLE || code == FP_WIRE_DEADLINE_EXCEEDED || code == FP_WIRE_CANCELLED ||
           code == FP_WIRE_UNKNOWN || code == FP_WIRE_INTERNAL || code == FP_WIRE_RESOURCE_EXHAUSTED;
}

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* Exponential backoff with full jitter: uniform in [0, min(cap, 0.2·2^attempt)]. Fails when no
 * progress was made for give_up_s. */
static fp_status backoff(join_t *j, int attempt, const char *what)
{
    j->rep->retries++;
    if (j->o->give_up_s > 0 && fp_now() - j->last_progress > j->o->give_up_s)
        return FP_FAIL(FP_ERR_IO, "%s: no progress for %.0f s, giving up", what, j->o->give_up_s);
    double cap = j->o->max_backoff_s > 0 ? j->o->max_backoff_s : 10.0;
    double d = 0.2 * ldexp(1.0, attempt > 20 ? 20 : attempt);
    if (d > cap)
        d = cap;
    sleep_s(d * fp_rng_uniform_d(&j->jitter) + 0.01);
    return FP_OK;
}

/* An RPC deadline: `ms`, but never past the moment give_up_s would end the run (a Join whose TLS
 * handshake keeps failing waits for its whole deadline: wait-for-ready). */
static int64_t rpc_deadline(const join_t *j, int64_t ms)
{
    if (j->o->give_up_s > 0) {
        double left = j->o->give_up_s - (fp_now() - j->last_progress);
        int64_t lms = left > 0 ? (int64_t)(left * 1000.0) + 100 : 100;
        if (lms < ms)
            return lms;
    }
    return ms;
}

/* mkdir -p: 0 or -1 with errno. */
static int mkdir_parents(const char *dir)
{
    char p[4096];
    if ((size_t)snprintf(p, sizeof p, "%s", dir) >= sizeof p) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *q = p + 1; *q; q++) {
        if (*q != '/')
            continue;
        *q = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return -1;
        *q = '/';
    }
    return mkdir(p, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* ---- Join ------------------------------------------------------------------------------------------- */

static fp_status rpc_join(join_t *j, int *code)
{
    Fedprof__V1__JoinRequest req = FEDPROF__V1__JOIN_REQUEST__INIT;
    Fedprof__V1__Capabilities cap = FEDPROF__V1__CAPABILITIES__INIT;
    req.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    cap.max_message_bytes = j->o->max_message_bytes ? j->o->max_message_bytes : FP_WIRE_DEFAULT_MAX_MSG;
    cap.max_parameters = FP_TS_MAX_PARAMS;
    cap.discrete_gaussian = 1;
    cap.client_version = (char *)"fedprof-client 0.1";
    req.capabilities = &cap;
    req.num_examples_bucket = fp_join_example_bucket((uint64_t)j->o->data->n_users);
    req.insecure_name = (char *)(uintptr_t)(j->o->insecure_name ? j->o->insecure_name : "");
    req.ledger_public_key_pem = j->lkey_pem ? j->lkey_pem : (char *)(uintptr_t)"";
    size_t n = fedprof__v1__join_request__get_packed_size(&req);
    uint8_t buf[2048];
    if (n > sizeof buf)
        return FP_FAIL(FP_ERR_RANGE, "JoinRequest too large");
    fedprof__v1__join_request__pack(&req, buf);
    uint8_t *resp = NULL;
    size_t resp_len = 0;
    char smsg[FP_WIRE_STATUS_MSG_MAX] = "";
    *code = FP_WIRE_OK;
    fp_status st = fp_wire_call_unary(j->ch, FP_WIRE_METHOD_JOIN, buf, n, rpc_deadline(j, JOIN_RPC_DEADLINE_MS), &resp,
                                      &resp_len, code, smsg);
    if (st != FP_OK)
        return FP_FAIL(FP_ERR_IO, "Join: %s: %s", fp_wire_code_name(*code), smsg[0] ? smsg : fp_error_message());
    Fedprof__V1__JoinResponse *r = fedprof__v1__join_response__unpack(NULL, resp_len, resp);
    free(resp);
    if (!r) {
        *code = FP_WIRE_INVALID_ARGUMENT;
        return FP_FAIL(FP_ERR_PARSE, "Join: the coordinator's answer is not a JoinResponse");
    }
    st = FP_OK;
    if (r->protocol_version != FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1 || !r->session ||
        !r->session[0] || strlen(r->session) > JOIN_SESSION_MAX || r->n_items < 1 ||
        r->n_items > FP_DATA_MAX_ITEMS || !r->model_config_json) {
        *code = FP_WIRE_FAILED_PRECONDITION;
        st = FP_FAIL(FP_ERR_PARSE, "Join: the coordinator's answer is incomplete or speaks another protocol version");
        goto out;
    }
    fp_config_t cfg;
    fp_config_defaults(&cfg);
    if ((st = fp_config_from_json(r->model_config_json, &cfg)) != FP_OK) {
        *code = FP_WIRE_FAILED_PRECONDITION;
        goto out;
    }
    cfg.model.n_items = (int)r->n_items;
    if ((st = fp_model_config_validate(&cfg.model)) != FP_OK) {
        *code = FP_WIRE_FAILED_PRECONDITION;
        goto out;
    }
    if (j->cfg_known && (memcmp(&cfg.model, &j->cfg.model, sizeof cfg.model) != 0)) {
        *code = FP_WIRE_FAILED_PRECONDITION;
        st = FP_FAIL(FP_ERR_FORMAT, "Join: the coordinator now trains another model architecture than before");
        goto out;
    }
    j->cfg = cfg;
    j->n_items = (int32_t)r->n_items;
    j->cfg_known = 1;
    snprintf(j->session, sizeof j->session, "%s", r->session);
    snprintf(j->rep->identity, sizeof j->rep->identity, "%s", r->identity ? r->identity : "");
    snprintf(j->federation_id, sizeof j->federation_id, "%s", r->federation_id ? r->federation_id : "");
    j->fed_next_seq = r->ledger_next_seq > 0 ? r->ledger_next_seq : 1;
    j->joined = 1;
out:
    fedprof__v1__join_response__free_unpacked(r, NULL);
    return st;
}

/* Join, retrying transient failures. */
static fp_status join_retry(join_t *j)
{
    for (int attempt = 0;; attempt++) {
        int code = 0;
        fp_status st = rpc_join(j, &code);
        if (st == FP_OK) {
            j->last_progress = fp_now();
            if (!j->o->quiet)
                fp_log_info("joined %s as %s", j->o->server, j->rep->identity);
            return FP_OK;
        }
        if (!transient(code))
            return st;
        if (!j->o->quiet && attempt == 0)
            fp_log_warn("%s; retrying%s", fp_error_message(),
                        code == FP_WIRE_DEADLINE_EXCEEDED || code == FP_WIRE_UNAVAILABLE
                            ? " (no connection: is the coordinator up, and do --ca/--cert/--key match the "
                              "federation's CA?)"
                            : "");
        if ((st = backoff(j, attempt, "join")) != FP_OK)
            return st;
    }
}

/* ---- local data and model --------------------------------------------------------------------------- */

/* Remap the partner's items onto the federation's catalogue (ids "1".."n_items") and split. */
static fp_status prepare_data(join_t *j)
{
    if (j->split_ready)
        return FP_OK;
    fp_dataset_t *d = j->o->data;
    char **names = calloc((size_t)j->n_items + 1, sizeof *names);
    if (!names)
        return FP_FAIL(FP_ERR_NOMEM, "catalogue names");
    fp_status st = FP_OK;
    for (int32_t i = 1; i <= j->n_items && st == FP_OK; i++) {
        char tmp[16];
        snprintf(tmp, sizeof tmp, "%" PRId32, i);
        if (!(names[i] = malloc(strlen(tmp) + 1)))
            st = FP_FAIL(FP_ERR_NOMEM, "catalogue names");
        else
            strcpy(names[i], tmp);
    }
    int64_t dropped = 0;
    if (st == FP_OK)
        st = fp_data_remap_items(d, names, j->n_items, &dropped);
    for (int32_t i = 1; i <= j->n_items; i++)
        free(names[i]);
    free(names);
    if (st != FP_OK)
        return st;
    if (dropped > 0 && !j->o->quiet)
        fp_log_warn("%" PRId64 " interactions name items outside the federation's catalogue 1..%d and are ignored",
                    dropped, j->n_items);
    if ((st = fp_split_loo(d, &j->split)) != FP_OK)
        return st;
    j->split_ready = 1;
    return fp_split_popularity(&j->split, &j->pop);
}

static fp_status prepare_model(join_t *j, int batch)
{
    if (j->model && j->model_batch >= batch)
        return FP_OK;
    fp_model_destroy(j->model);
    j->model = NULL;
    fp_status st = fp_model_create(&j->cfg.model, batch, j->o->threads, &j->model);
    if (st != FP_OK)
        return st;
    j->model_batch = batch;
    const fp_layout_t *l = fp_model_layout(j->model);
    if (!j->w_global) {
        j->P = l->total;
        j->layout_hash = fp_layout_hash(l);
        j->w_global = fp_buffer_alloc(j->P);
        j->delta = fp_buffer_alloc(j->P);
        if (!j->w_global || !j->delta)
            return FP_FAIL(FP_ERR_NOMEM, "model buffers of %zu floats", j->P);
        if ((st = fp_adam_create(&j->adam, j->P)) != FP_OK)
            return st;
    }
    return FP_OK;
}

/* ---- PullModel -------------------------------------------------------------------------------------- */

typedef struct {
    fp_ts_reader_t *r;
    fp_status st;
    char msg[256];
} pull_ctx;

static int on_model_msg(const uint8_t *data, size_t len, void *user)
{
    pull_ctx *p = user;
    p->st = fp_ts_reader_feed(p->r, data, len);
    if (p->st != FP_OK) {
        snprintf(p->msg, sizeof p->msg, "%s", fp_error_message());
        return 1;
    }
    return 0;
}

/* Pull model `version` (0: current) into j->w_global; *code is the gRPC status. */
static fp_status rpc_pull(join_t *j, uint64_t round_id, uint64_t version, uint64_t *got_version, int *code)
{
    Fedprof__V1__PullModelRequest req = FEDPROF__V1__PULL_MODEL_REQUEST__INIT;
    req.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    req.round_id = round_id;
    req.model_version = version;
    req.session = j->session;
    uint8_t buf[256];
    size_t n = fedprof__v1__pull_model_request__get_packed_size(&req);
    if (n > sizeof buf)
        return FP_FAIL(FP_ERR_RANGE, "PullModelRequest too large");
    fedprof__v1__pull_model_request__pack(&req, buf);
    fp_ts_reader_opts_t ro = {FP_TS_MODEL, j->P, j->P, 1, j->layout_hash, j->w_global, j->P};
    pull_ctx pc = {NULL, FP_OK, ""};
    fp_status st = fp_ts_reader_create(&ro, &pc.r);
    if (st != FP_OK)
        return st;
    char smsg[FP_WIRE_STATUS_MSG_MAX] = "";
    *code = FP_WIRE_OK;
    st = fp_wire_call_server_stream(j->ch, FP_WIRE_METHOD_PULL_MODEL, buf, n, JOIN_STREAM_DEADLINE_MS, on_model_msg,
                                    &pc, code, smsg);
    if (pc.st != FP_OK) {
        *code = FP_WIRE_DATA_LOSS;
        st = FP_FAIL(FP_ERR_PARSE, "PullModel: refused the coordinator's model stream: %s", pc.msg);
    } else if (st != FP_OK) {
        st = FP_FAIL(FP_ERR_IO, "PullModel: %s: %s", fp_wire_code_name(*code), smsg[0] ? smsg : fp_error_message());
    } else if ((st = fp_ts_reader_finish(pc.r)) != FP_OK) {
        *code = FP_WIRE_DATA_LOSS;
    } else {
        *got_version = fp_ts_reader_header(pc.r)->model_version;
    }
    fp_ts_reader_destroy(pc.r);
    return st;
}

/* ---- PushUpdate ------------------------------------------------------------------------------------- */

/* Push j->delta with header j->upd_h. *accepted = 1 when the coordinator took it; otherwise
 * *code says why (the status message is logged). */
static fp_status rpc_push(join_t *j, int *code)
{
    snprintf(j->upd_h.session, sizeof j->upd_h.session, "%s", j->session);
    fp_ts_writer_t *w = NULL;
    fp_status st = fp_ts_writer_create(&j->upd_h, j->delta, &w);
    if (st != FP_OK) {
        *code = FP_WIRE_INVALID_ARGUMENT;
        return st;
    }
    fp_wire_stream_t *s = NULL;
    *code = FP_WIRE_OK;
    if ((st = fp_wire_stream_open(j->ch, FP_WIRE_METHOD_PUSH_UPDATE, JOIN_STREAM_DEADLINE_MS, &s)) != FP_OK) {
        *code = FP_WIRE_UNAVAILABLE;
        fp_ts_writer_destroy(w);
        return st;
    }
    for (;;) {
        const uint8_t *msg = NULL;
        size_t n = 0;
        if ((st = fp_ts_writer_next(w, &msg, &n)) != FP_OK || !msg)
            break;
        if (fp_wire_stream_write(s, msg, n) != FP_OK)
            break; /* the call ended early: finish tells why */
    }
    fp_ts_writer_destroy(w);
    uint8_t *resp = NULL;
    size_t resp_len = 0;
    char smsg[FP_WIRE_STATUS_MSG_MAX] = "";
    fp_status fst = fp_wire_stream_finish(s, &resp, &resp_len, code, smsg);
    fp_wire_stream_destroy(s);
    if (st != FP_OK) {
        free(resp);
        *code = FP_WIRE_INTERNAL;
        return st;
    }
    if (fst != FP_OK) {
        free(resp);
        return FP_FAIL(FP_ERR_IO, "PushUpdate: %s: %s", fp_wire_code_name(*code), smsg[0] ? smsg : fp_error_message());
    }
    Fedprof__V1__PushUpdateResponse *r = fedprof__v1__push_update_response__unpack(NULL, resp_len, resp);
    free(resp);
    if (!r || !r->accepted) {
        if (r)
            fedprof__v1__push_update_response__free_unpacked(r, NULL);
        *code = FP_WIRE_INVALID_ARGUMENT;
        return FP_FAIL(FP_ERR_PARSE, "PushUpdate: the coordinator did not confirm the update");
    }
    fedprof__v1__push_update_response__free_unpacked(r, NULL);
    return FP_OK;
}

/* ---- one round ------------------------------------------------------------------------------------- */

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Grid of the discrete Gaussian: a power of two small enough that rounding Δ to it adds at most
 * 1e-3·clip to the L2 sensitivity (γ·√P ≤ 1e-3·C). */
static double noise_grid(double clip, size_t P)
{
    double g = 1e-3 * clip / sqrt((double)P);
    return ldexp(1.0, (int)floor(log2(g)));
}

/* ---- privacy: the round's spend and the ledger --------------------------------------------------- */

typedef enum { PRIV_TRAIN = 0, PRIV_SPENT = 1, PRIV_EXHAUSTED = 2 } priv_decision;

typedef struct {
    int unit;                /* proto PrivacyUnit: 0 none, RECORD, CLIENT */
    fp_dpsgd_plan_t dp;      /* record level */
    fp_ledger_spend_t spend; /* what the ledger is asked to admit (steps: the most this round takes) */
    double grid;             /* client level: rounding grid of the noise */
} priv_plan_t;

/* The federation id as a file name: [A-Za-z0-9._-], no leading dot, at most 64 characters. */
static void ledger_file_name(const char *fed_id, char *out, size_t n)
{
    char id[65];
    size_t k = 0;
    for (const char *p = fed_id; *p && k < 64; p++) {
        char ch = *p;
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                 ch == '_' || (ch == '.' && k > 0);
        id[k++] = ok ? ch : '_';
    }
    id[k] = '\0';
    snprintf(out, n, "%s.ledger.jsonl", k ? id : "federation");
}

static fp_status open_ledger(join_t *j)
{
    if (j->ledger)
        return FP_OK;
    if (!j->lkey)
        return FP_FAIL(FP_ERR_INVALID, "the federation trains with differential privacy, and this client keeps no "
                       "privacy ledger: give --ledger-dir (client.ledger_dir)");
    if (!(j->o->budget_epsilon > 0) || !isfinite(j->o->budget_epsilon))
        return FP_FAIL(FP_ERR_INVALID, "the federation trains with differential privacy: set your privacy budget "
                       "with --budget-epsilon E (client.budget_epsilon); rounds past it will be refused");
    char name[96], path[4096];
    ledger_file_name(j->federation_id, name, sizeof name);
    if ((size_t)snprintf(path, sizeof path, "%s/%s", j->o->ledger_dir, name) >= sizeof path)
        return FP_FAIL(FP_ERR_RANGE, "ledger path too long: %s", j->o->ledger_dir);
    fp_ledger_options_t lo = {j->rep->identity, j->o->budget_epsilon, NULL, 0};
    fp_status st = fp_ledger_open(path, j->lkey, &lo, &j->ledger);
    if (st != FP_OK)
        return st;
    j->rep->epsilon = fp_ledger_epsilon(j->ledger);
    if (!j->o->quiet)
        fp_log_info("privacy ledger %s: %" PRId64 " rounds recorded, epsilon %.4g of a budget of %g", path,
                    fp_ledger_entries(j->ledger), fp_ledger_epsilon(j->ledger), j->o->budget_epsilon);
    return FP_OK;
}

/* The round's local plan (seeded per client and round). */
static fp_local_plan_t local_plan(const join_t *j, const Fedprof__V1__GetTaskResponse *t)
{
    const Fedprof__V1__TrainingPlan *plan = t->plan;
    fp_local_plan_t lp;
    memset(&lp, 0, sizeof lp);
    lp.epochs = (int)plan->local_epochs;
    lp.max_steps = (int)plan->max_steps;
    lp.batch = (int)plan->batch_size;
    lp.lr = plan->learning_rate;
    lp.beta1 = j->cfg.train.beta1;
    lp.beta2 = j->cfg.train.beta2;
    lp.eps = j->cfg.train.eps;
    lp.fedprox_mu = plan->fedprox_mu;
    lp.seed = plan->seed ^ fnv1a(j->rep->identity) ^ (t->round_id * 0x9e3779b97f4a7c15ULL);
    return lp;
}

/* Decide whether round t may be trained under this client's privacy budget, before anything is
 * pulled: PRIV_SPENT when the ledger already holds the round (a crash after the spend: the
 * round is never trained twice), PRIV_EXHAUSTED when its projected ε passes the budget. */
static fp_status plan_privacy(join_t *j, const Fedprof__V1__GetTaskResponse *t, priv_plan_t *pp,
                              priv_decision *decision)
{
    memset(pp, 0, sizeof *pp);
    *decision = PRIV_TRAIN;
    const Fedprof__V1__TrainingPlan *plan = t->plan;
    const Fedprof__V1__NoiseParams *np = plan->noise;
    pp->unit = np ? (int)np->unit : 0;
    if (pp->unit == 0)
        return FP_OK;
    if (pp->unit != FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_RECORD &&
        pp->unit != FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_CLIENT)
        return FP_FAIL(FP_ERR_UNSUPPORTED, "the federation asks for privacy unit %d, which this client does not know",
                       pp->unit);
    double clip = plan->clip_bound, sigma = np->noise_multiplier, delta = np->delta;
    if (!(clip > 0) || !(sigma > 0) || !isfinite(sigma) || !(delta > 0 && delta < 1))
        return FP_FAIL(FP_ERR_PARSE, "the federation's privacy plan is invalid (clip %g, noise multiplier %g, "
                       "delta %g)", clip, sigma, delta);
    fp_status st = open_ledger(j);
    if (st != FP_OK)
        return st;
    fp_ledger_spend_t *sp = &pp->spend;
    sp->round = (int64_t)t->round_id;
    sp->model_version = (int64_t)t->model_version;
    sp->clip = clip;
    sp->delta = delta;
    sp->conversion = FP_DP_CONVERSION_IMPROVED;
    if (pp->unit == FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_RECORD) {
        /* The users DP-SGD samples from: those with 2+ training items (a batcher's list). */
        fp_batcher_t *bat = NULL;
        const fp_model_config_t *mc = &j->cfg.model;
        if ((st = fp_batcher_create(&j->split, mc->maxlen, 1, mc->n_neg, 1, &bat)) != FP_OK)
            return st;
        int32_t users = fp_batcher_n_users(bat);
        fp_batcher_destroy(bat);
        if (users < 1)
            return FP_FAIL(FP_ERR_INVALID, "no local user has 2 or more training items: nothing to train on");
        fp_local_plan_t lp = local_plan(j, t);
        int64_t spe = ((int64_t)users + lp.batch - 1) / lp.batch;
        if ((st = fp_dpsgd_plan(sigma, 0, clip, delta, users, lp.batch, j->P, (int64_t)lp.epochs * spe, &pp->dp)) !=
            FP_OK)
            return st;
        lp.dp = &pp->dp;
        sp->unit = FP_LEDGER_UNIT_RECORD;
        sp->q = pp->dp.q;
        sp->sigma = pp->dp.noise_accounted;
        sp->steps = fp_local_dp_steps(&lp);
    } else {
        /* One Gaussian release of the clipped Δ per round; the client knows it was selected, so
         * no sampling amplification is claimed (q = 1). Rounding to the grid widens the
         * sensitivity to clip + grid·√P, which the accounted σ reflects. */
        pp->grid = noise_grid(clip, j->P);
        sp->unit = FP_LEDGER_UNIT_CLIENT;
        sp->q = 1.0;
        sp->sigma = sigma * clip / (clip + pp->grid * sqrt((double)j->P));
        sp->steps = 1;
    }
    if (fp_ledger_has_round(j->ledger, sp->round)) {
        *decision = PRIV_SPENT;
        return FP_OK;
    }
    double eps_after = 0;
    st = fp_ledger_admit(j->ledger, sp, &eps_after);
    if (st == FP_ERR_RANGE) {
        *decision = PRIV_EXHAUSTED;
        if (!j->o->quiet)
            fp_log_info("privacy budget: round %" PRId64 " would bring epsilon from %.4g to %.4g, past the budget of "
                        "%g: this client trains no more rounds and waits for the federation to end",
                        sp->round, fp_ledger_epsilon(j->ledger), eps_after, j->o->budget_epsilon);
        return FP_OK;
    }
    return st;
}

/* The ledger text of the update: the entries the coordinator has not recorded yet (from
 * fed_next_seq), then this round's line, '\n'-separated. */
static fp_status ledger_text(join_t *j, const char *line, char *out, size_t cap)
{
    size_t used = 0;
    int64_t last = fp_ledger_entries(j->ledger);
    for (int64_t seq = j->fed_next_seq > 0 ? j->fed_next_seq : 1; seq <= last; seq++) {
        char *l = NULL;
        size_t len = 0;
        fp_status st;
        if (seq == last) {
            l = (char *)(uintptr_t)line;
            len = strlen(line);
        } else if ((st = fp_ledger_read_line(j->ledger, seq, &l, &len)) != FP_OK) {
            return st;
        }
        size_t need = len + (used ? 1 : 0);
        if (used + need > cap) {
            if (seq != last)
                free(l);
            return FP_FAIL(FP_ERR_RANGE, "%" PRId64 " ledger entries the coordinator has not recorded yet do not fit "
                           "in one update (%zu bytes at most)", last - j->fed_next_seq + 1, cap);
        }
        if (used)
            out[used++] = '\n';
        memcpy(out + used, l, len);
        used += len;
        if (seq != last)
            free(l);
    }
    out[used] = '\0';
    return FP_OK;
}

/* Train round `round_id` from the pulled global model (j->w_global) and prepare the update. */
static fp_status train_round(join_t *j, const Fedprof__V1__GetTaskResponse *t, uint64_t version, priv_plan_t *pp)
{
    const Fedprof__V1__TrainingPlan *plan = t->plan;
    const Fedprof__V1__NoiseParams *np = plan->noise;
    const int record = pp->unit == FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_RECORD;
    const int client = pp->unit == FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_CLIENT;
    fp_status st;
    float *w = fp_model_params(j->model);
    memcpy(w, j->w_global, j->P * sizeof(float));
    fp_local_plan_t lp = local_plan(j, t);
    if (record) {
        lp.dp = &pp->dp;
        lp.dp_seed = j->o->noise_seed ? j->o->noise_seed ^ t->round_id ^ fnv1a(j->rep->identity) : 0;
    }
    fp_local_report_t lr;
    if ((st = fp_local_train(j->model, &j->adam, &j->split, &lp, j->w_global, &lr)) != FP_OK)
        return st;
    for (size_t i = 0; i < j->P; i++)
        j->delta[i] = w[i] - j->w_global[i];
    memset(&j->upd_h, 0, sizeof j->upd_h);
    fp_ts_header_t *h = &j->upd_h;
    h->kind = FP_TS_UPDATE;
    h->protocol_version = 1;
    h->round_id = t->round_id;
    h->model_version = version;
    h->param_count = j->P;
    h->layout_hash = j->layout_hash;
    h->chunk_bytes = FP_TS_PUSH_CHUNK_BYTES;
    h->example_count_bucket = fp_join_example_bucket((uint64_t)lr.sequences / (uint64_t)(lp.epochs ? lp.epochs : 1));
    h->local_steps = (uint64_t)lr.steps;
    double clip = plan->clip_bound;
    double norm = 0.0, scale = 1.0;
    /* Record level: Δ is already private (DP-SGD); clipping it again would only lose signal. */
    if (clip > 0 && !record && (st = fp_dp_clip_l2(j->delta, j->P, clip, &norm, &scale)) != FP_OK)
        return st;
    h->clip_bound = clip;
    if (client && np->noise_multiplier > 0) {
        double sigma = np->noise_multiplier * clip;
        fp_csprng_t *g = NULL;
        if (j->o->noise_seed) {
            uint8_t seed[FP_CSPRNG_SEED_BYTES] = {0};
            uint64_t s = j->o->noise_seed ^ t->round_id ^ fnv1a(j->rep->identity);
            memcpy(seed, &s, sizeof s);
            st = fp_csprng_create_seeded(seed, &g);
        } else {
            st = fp_csprng_create_secure(&g);
        }
        if (st == FP_OK)
            st = fp_dp_add_noise(j->delta, j->P, sigma, pp->grid, g);
        fp_csprng_destroy(g);
        if (st != FP_OK)
            return st;
    }
    if (record || client) {
        h->noise.present = 1;
        h->noise.mechanism = FEDPROF__V1__NOISE_MECHANISM__NOISE_MECHANISM_DISCRETE_GAUSSIAN;
        h->noise.unit = pp->unit;
        h->noise.noise_multiplier = np->noise_multiplier;
        h->noise.stddev = np->noise_multiplier * clip;
        h->noise.granularity = record ? pp->dp.grid : pp->grid;
        h->noise.delta = np->delta;
        /* The spend is recorded (signed, fsync'd) before Δ can leave this process. */
        fp_ledger_spend_t sp = pp->spend;
        sp.model_version = (int64_t)version;
        if (record)
            sp.steps = lr.steps;
        double eps = 0;
        char *line = NULL;
        if ((st = fp_ledger_append(j->ledger, &sp, &eps, &line)) != FP_OK)
            return st;
        st = ledger_text(j, line, h->ledger_entry, sizeof h->ledger_entry - 1);
        free(line);
        if (st != FP_OK)
            return st;
        j->rep->epsilon = eps;
    }
    if (!j->o->quiet) {
        char privacy[96] = "";
        if (record)
            snprintf(privacy, sizeof privacy, ", DP-SGD %" PRId64 "/%" PRId64 " users clipped, epsilon %.4g",
                     lr.clipped, lr.sequences, j->rep->epsilon);
        else if (client)
            snprintf(privacy, sizeof privacy, ", noised, epsilon %.4g", j->rep->epsilon);
        fp_log_info("round %" PRIu64 ": %" PRId64 " local steps on %" PRId64 " sequences, loss %.4f, |Δ| %.4g%s%s "
                    "(%.1fs)",
                    t->round_id, lr.steps, lr.sequences, lr.mean_loss, clip > 0 && !record ? norm : fp_vec_l2(j->delta, j->P),
                    scale < 1.0 ? " (clipped)" : "", privacy, lr.seconds);
    }
    j->have_update = 1;
    j->upd_round = t->round_id;
    j->upd_version = version;
    j->rep->rounds_trained++;
    if (j->o->on_update)
        j->o->on_update(j->o->hook_user, t->round_id, version, j->w_global, j->delta, j->P, h->example_count_bucket);
    return FP_OK;
}

/* Push the kept update, retrying transient failures while its round may still be open. */
static fp_status push_kept(join_t *j, uint64_t deadline_unix_ms)
{
    for (int attempt = 0;; attempt++) {
        int code = 0;
        fp_status st = rpc_push(j, &code);
        if (st == FP_OK) {
            j->rep->updates_accepted++;
            j->have_update = 0;
            if (j->ledger)
                j->fed_next_seq = fp_ledger_entries(j->ledger) + 1; /* all recorded there now */
            j->last_progress = fp_now();
            if (!j->o->quiet)
                fp_log_info("round %" PRIu64 ": update accepted", j->upd_round);
            return FP_OK;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t now_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
        if (transient(code) && (deadline_unix_ms == 0 || now_ms < deadline_unix_ms)) {
            if (!j->o->quiet && attempt == 0)
                fp_log_warn("%s; retrying", fp_error_message());
            if ((st = backoff(j, attempt, "push")) != FP_OK)
                return st;
            continue;
        }
        if (code == FP_WIRE_UNAUTHENTICATED) {
            /* The coordinator restarted and forgot the session: join again; the task loop asks
             * again and the kept update is pushed if its round is still open. */
            j->joined = 0;
            return FP_OK;
        }
        /* Refused (stale, duplicate, not selected, bad update...): the update is dropped. */
        j->rep->updates_refused++;
        j->have_update = 0;
        if (!j->o->quiet)
            fp_log_warn("round %" PRIu64 ": update refused: %s", j->upd_round, fp_error_message());
        if (code == FP_WIRE_INVALID_ARGUMENT || code == FP_WIRE_FAILED_PRECONDITION || code == FP_WIRE_DATA_LOSS)
            return FP_FAIL(FP_ERR_INVALID, "the coordinator refused this client's update as invalid: %s",
                           fp_error_message());
        return FP_OK;
    }
}

/* ---- the end ---------------------------------------------------------------------------------------- */

static fp_status finish_federation(join_t *j, uint64_t version)
{
    fp_status st;
    int code = 0;
    uint64_t got = 0;
    if ((st = prepare_data(j)) != FP_OK || (st = prepare_model(j, j->cfg.train.batch > 0 ? 1 : 1)) != FP_OK)
        return st;
    for (int attempt = 0;; attempt++) {
        if ((st = rpc_pull(j, 0, 0, &got, &code)) == FP_OK)
            break;
        if (!transient(code))
            return st;
        if ((st = backoff(j, attempt, "final pull")) != FP_OK)
            return st;
    }
    (void)version;
    j->rep->final_version = got;
    memcpy(fp_model_params(j->model), j->w_global, j->P * sizeof(float));
    if (j->o->out_dir) {
        if (mkdir(j->o->out_dir, 0755) != 0 && errno != EEXIST)
            return FP_FAIL(FP_ERR_IO, "cannot create %s: %s", j->o->out_dir, strerror(errno));
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/model.safetensors", j->o->out_dir) >= sizeof path)
            return FP_FAIL(FP_ERR_RANGE, "path too long: %s", j->o->out_dir);
        if ((st = fp_model_save(path, j->model, &j->cfg, j->o->data->item_names)) != FP_OK)
            return st;
        if (!j->o->quiet)
            fp_log_info("final global model (version %" PRIu64 ") saved to %s", got, path);
    }
    if (j->o->eval_final) {
        fp_eval_opts_t eo = {j->cfg.eval.k, j->cfg.eval.negatives, j->cfg.eval.max_users, j->cfg.eval.full, 1,
                             j->cfg.eval.seed};
        if ((st = fp_eval_run(j->model, &j->split, j->pop, &eo, &j->rep->final_eval)) != FP_OK)
            return st;
        j->rep->evaluated = 1;
        const fp_eval_result_t *r = &j->rep->final_eval;
        if (!j->o->quiet)
            fp_log_info("final model on local test items: HR@%d %.4f NDCG@%d %.4f | popularity HR@%d %.4f (%" PRId64
                        " users)",
                        eo.k, r->hr, eo.k, r->ndcg, eo.k, r->pop_hr, r->users);
    }
    return FP_OK;
}

/* ---- main loop -------------------------------------------------------------------------------------- */

static fp_status rpc_get_task(join_t *j, Fedprof__V1__GetTaskResponse **out, int *code)
{
    *out = NULL;
    Fedprof__V1__GetTaskRequest req = FEDPROF__V1__GET_TASK_REQUEST__INIT;
    req.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    req.max_wait_ms = JOIN_POLL_WAIT_MS;
    req.session = j->session;
    req.budget_exhausted = j->exhausted;
    uint8_t buf[256];
    size_t n = fedprof__v1__get_task_request__get_packed_size(&req);
    if (n > sizeof buf)
        return FP_FAIL(FP_ERR_RANGE, "GetTaskRequest too large");
    fedprof__v1__get_task_request__pack(&req, buf);
    uint8_t *resp = NULL;
    size_t resp_len = 0;
    char smsg[FP_WIRE_STATUS_MSG_MAX] = "";
    *code = FP_WIRE_OK;
    fp_status st = fp_wire_call_unary(j->ch, FP_WIRE_METHOD_GET_TASK, buf, n, JOIN_POLL_WAIT_MS + JOIN_RPC_DEADLINE_MS,
                                      &resp, &resp_len, code, smsg);
    if (st != FP_OK)
        return FP_FAIL(FP_ERR_IO, "GetTask: %s: %s", fp_wire_code_name(*code), smsg[0] ? smsg : fp_error_message());
    *out = fedprof__v1__get_task_response__unpack(NULL, resp_len, resp);
    free(resp);
    if (!*out) {
        *code = FP_WIRE_INVALID_ARGUMENT;
        return FP_FAIL(FP_ERR_PARSE, "GetTask: the coordinator's answer is not a GetTaskResponse");
    }
    return FP_OK;
}

static fp_status task_loop(join_t *j)
{
    int attempt = 0;
    for (;;) {
        fp_status st;
        if (!j->joined) {
            if ((st = join_retry(j)) != FP_OK)
                return st;
            attempt = 0;
        }
        Fedprof__V1__GetTaskResponse *t = NULL;
        int code = 0;
        if ((st = rpc_get_task(j, &t, &code)) != FP_OK) {
            if (code == FP_WIRE_UNAUTHENTICATED) {
                j->joined = 0; /* the coordinator restarted: join again */
                continue;
            }
            if (!transient(code))
                return st;
            if (!j->o->quiet && attempt == 0)
                fp_log_warn("%s; retrying", fp_error_message());
            if ((st = backoff(j, attempt++, "poll")) != FP_OK)
                return st;
            continue;
        }
        attempt = 0;
        j->last_progress = fp_now();
        if (t->action == FEDPROF__V1__TASK_ACTION__TASK_ACTION_DONE) {
            uint64_t v = t->model_version;
            fedprof__v1__get_task_response__free_unpacked(t, NULL);
            if (!j->o->quiet)
                fp_log_info("the federation is done");
            return finish_federation(j, v);
        }
        if (t->action != FEDPROF__V1__TASK_ACTION__TASK_ACTION_TRAIN) {
            fedprof__v1__get_task_response__free_unpacked(t, NULL);
            continue; /* WAIT: the long poll already waited */
        }
        if (!t->plan || !t->model || t->plan->batch_size < 1 || t->plan->batch_size > 65536 ||
            t->plan->local_epochs < 1 || !(t->plan->learning_rate > 0) || !(t->plan->fedprox_mu >= 0) ||
            !(t->plan->clip_bound >= 0) || !isfinite(t->plan->clip_bound)) {
            fedprof__v1__get_task_response__free_unpacked(t, NULL);
            return FP_FAIL(FP_ERR_PARSE, "GetTask: the coordinator sent an invalid training plan");
        }
        uint64_t round = t->round_id, version = t->model_version, deadline = t->round_deadline_unix_ms;
        const Fedprof__V1__NoiseParams *np = t->plan->noise;
        const int record = np && np->unit == FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_RECORD;
        /* Under DP-SGD the model holds a Poisson sample's sub-batch of rows. */
        const int rows = record ? fp_dpsgd_max_batch((int)t->plan->batch_size) : (int)t->plan->batch_size;
        if (j->have_update && j->upd_round == round && j->upd_version == version) {
            /* Already trained for this round (the push failed in transit): push it again. */
            st = push_kept(j, deadline);
        } else if (j->exhausted) {
            st = FP_OK; /* this request already said so: the coordinator stops selecting us */
        } else {
            j->have_update = 0;
            uint64_t got = 0;
            priv_plan_t pp;
            priv_decision dec = PRIV_TRAIN;
            if ((st = prepare_data(j)) == FP_OK && (st = prepare_model(j, rows)) == FP_OK) {
                if (t->model->parameter_count != j->P || t->model->layout_hash != j->layout_hash) {
                    st = FP_FAIL(FP_ERR_FORMAT, "the coordinator's model (%" PRIu64 " parameters) is not the model "
                                 "this client built from its config (%zu)", t->model->parameter_count, j->P);
                } else if ((st = plan_privacy(j, t, &pp, &dec)) != FP_OK) {
                    /* a client without a ledger or a budget, or a plan it cannot follow */
                } else if (dec == PRIV_EXHAUSTED) {
                    j->exhausted = 1;
                    j->rep->budget_exhausted = 1;
                } else if (dec == PRIV_SPENT) {
                    /* Spent before a restart, and the update is gone: never trained twice. Ask
                     * again after a short pause: the round ends at its deadline. */
                    if (j->skipped_round != round) {
                        j->skipped_round = round;
                        j->rep->rounds_skipped++;
                        if (!j->o->quiet)
                            fp_log_warn("round %" PRIu64 " is already in the privacy ledger (spent before a "
                                        "restart): not training it again", round);
                    }
                    sleep_s(0.5);
                } else if ((st = rpc_pull(j, round, version, &got, &code)) != FP_OK) {
                    if (transient(code) || code == FP_WIRE_ABORTED || code == FP_WIRE_UNAUTHENTICATED) {
                        if (code == FP_WIRE_UNAUTHENTICATED)
                            j->joined = 0;
                        if (!j->o->quiet)
                            fp_log_warn("%s; asking again", fp_error_message());
                        st = backoff(j, 0, "pull");
                    }
                } else if ((st = train_round(j, t, got, &pp)) == FP_OK) {
                    st = push_kept(j, deadline);
                }
            }
        }
        fedprof__v1__get_task_response__free_unpacked(t, NULL);
        if (st != FP_OK)
            return st;
        if (j->o->stop_after_rounds > 0 && j->rep->rounds_trained >= j->o->stop_after_rounds)
            return FP_OK;
    }
}

fp_status fp_join_run(const fp_join_opts_t *o, fp_join_report_t *rep)
{
    if (!o || !rep || !o->server || !o->creds || !o->data)
        return FP_FAIL(FP_ERR_INVALID, "fp_join_run: missing server, credentials or data");
    memset(rep, 0, sizeof *rep);
    double t0 = fp_now();
    join_t j;
    memset(&j, 0, sizeof j);
    j.o = o;
    j.rep = rep;
    j.last_progress = t0;
    uint64_t js = 0;
    if (RAND_bytes((unsigned char *)&js, sizeof js) != 1)
        js = (uint64_t)time(NULL);
    fp_rng_seed(&j.jitter, js);
    fp_status st = FP_OK;
    if (o->ledger_dir && o->ledger_dir[0]) {
        int created = 0;
        if (mkdir_parents(o->ledger_dir) != 0)
            st = FP_FAIL(FP_ERR_IO, "cannot create the ledger directory %s: %s", o->ledger_dir, strerror(errno));
        else if ((st = fp_ledger_key_load_or_create(o->ledger_dir, &j.lkey, &created)) == FP_OK &&
                 (st = fp_ledger_key_public_pem(j.lkey, &j.lkey_pem)) == FP_OK && created && !o->quiet)
            fp_log_info("created the ledger signing key %s/%s (keep it: it signs this partner's privacy ledger)",
                        o->ledger_dir, FP_LEDGER_KEY_FILE);
    }
    if (st == FP_OK)
        st = fp_wire_channel_create(o->server, o->creds, o->max_message_bytes, &j.ch);
    if (st == FP_OK)
        st = task_loop(&j);
    rep->seconds = fp_now() - t0;
    fp_wire_channel_destroy(j.ch);
    fp_model_destroy(j.model);
    fp_adam_destroy(&j.adam);
    fp_buffer_free(j.w_global);
    fp_buffer_free(j.delta);
    free(j.pop);
    if (j.split_ready)
        fp_split_free(&j.split);
    fp_ledger_close(j.ledger);
    fp_ledger_key_free(j.lkey);
    free(j.lkey_pem);
    return st;
}
