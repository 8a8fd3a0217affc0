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
    size_t n = fedprof__v1__join_request__get_packed_size(&req);
    uint8_t buf[1024];
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

/* Train round `round_id` from the pulled global model (j->w_global) and prepare the update. */
static fp_status train_round(join_t *j, const Fedprof__V1__GetTaskResponse *t, uint64_t version)
{
    const Fedprof__V1__TrainingPlan *plan = t->plan;
    fp_status st;
    float *w = fp_model_params(j->model);
    memcpy(w, j->w_global, j->P * sizeof(float));
    fp_local_plan_t lp = {(int)plan->local_epochs,
                          (int)plan->max_steps,
                          (int)plan->batch_size,
                          plan->learning_rate,
                          j->cfg.train.beta1,
                          j->cfg.train.beta2,
                          j->cfg.train.eps,
                          plan->fedprox_mu,
                          plan->seed ^ fnv1a(j->rep->identity) ^ (t->round_id * 0x9e3779b97f4a7c15ULL)};
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
    h->example_count_bucket = fp_join_example_bucket((uint64_t)lr.sequences / (uint64_t)(lp.epochs ? lp.epochs : 1));
    h->local_steps = (uint64_t)lr.steps;
    const Fedprof__V1__NoiseParams *np = plan->noise;
    int unit = np ? (int)np->unit : 0;
    double clip = plan->clip_bound;
    if (unit == FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_RECORD)
        return FP_FAIL(FP_ERR_UNSUPPORTED, "the federation asks for record-level DP-SGD, which this client does not "
                       "run in federated mode yet");
    double norm = 0.0, scale = 1.0;
    if (clip > 0 && (st = fp_dp_clip_l2(j->delta, j->P, clip, &norm, &scale)) != FP_OK)
        return st;
    h->clip_bound = clip;
    if (unit == FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_CLIENT && np->noise_multiplier > 0) {
        double sigma = np->noise_multiplier * clip, grid = noise_grid(clip, j->P);
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
            st = fp_dp_add_noise(j->delta, j->P, sigma, grid, g);
        fp_csprng_destroy(g);
        if (st != FP_OK)
            return st;
        h->noise.present = 1;
        h->noise.mechanism = FEDPROF__V1__NOISE_MECHANISM__NOISE_MECHANISM_DISCRETE_GAUSSIAN;
        h->noise.unit = FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_CLIENT;
        h->noise.noise_multiplier = np->noise_multiplier;
        h->noise.stddev = sigma;
        h->noise.granularity = grid;
        h->noise.delta = np->delta;
    }
    if (!j->o->quiet)
        fp_log_info("round %" PRIu64 ": %" PRId64 " local steps on %" PRId64 " sequences, loss %.4f, |Δ| %.4g%s (%.1fs)",
                    t->round_id, lr.steps, lr.sequences, lr.mean_loss, clip > 0 ? norm : fp_vec_l2(j->delta, j->P),
                    scale < 1.0 ? " (clipped)" : "", lr.seconds);
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
        if (j->have_update && j->upd_round == round && j->upd_version == version) {
            /* Already trained for this round (the push failed in transit): push it again. */
            st = push_kept(j, deadline);
        } else {
            j->have_update = 0;
            uint64_t got = 0;
            if ((st = prepare_data(j)) == FP_OK && (st = prepare_model(j, (int)t->plan->batch_size)) == FP_OK) {
                if (t->model->parameter_count != j->P || t->model->layout_hash != j->layout_hash) {
                    st = FP_FAIL(FP_ERR_FORMAT, "the coordinator's model (%" PRIu64 " parameters) is not the model "
                                 "this client built from its config (%zu)", t->model->parameter_count, j->P);
                } else if ((st = rpc_pull(j, round, version, &got, &code)) != FP_OK) {
                    if (transient(code) || code == FP_WIRE_ABORTED || code == FP_WIRE_UNAUTHENTICATED) {
                        if (code == FP_WIRE_UNAUTHENTICATED)
                            j->joined = 0;
                        if (!j->o->quiet)
                            fp_log_warn("%s; asking again", fp_error_message());
                        st = backoff(j, 0, "pull");
                    }
                } else if ((st = train_round(j, t, got)) == FP_OK) {
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
    fp_status st = fp_wire_channel_create(o->server, o->creds, o->max_message_bytes, &j.ch);
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
    return st;
}
