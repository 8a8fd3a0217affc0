/* Federation end to end: a real coordinator (server/coordinator) and real clients (client/join)
 * over gRPC on 127.0.0.1, ports chosen at run time, mutual TLS with certificates made by
 * scripts/make-certs.sh in a temporary directory.
 *
 *  - three partners, three rounds: the global model after every round equals the FedAvg of the
 *    updates the clients computed (captured by join's on_update hook, recomputed here
 *    independently in double precision) within 1e-6; the final model is written and loadable;
 *  - a client whose certificate another CA signed never becomes a member;
 *  - hostile pushes (malformed, oversized, wrong shape / layout, non-finite, above the clip,
 *    stale round, duplicate, not selected, unknown session) are each refused with their gRPC
 *    status and counted, and the round still completes;
 *  - a selected client that disappears mid-round: the round completes with the others after the
 *    deadline;
 *  - a private federation (record-level DP-SGD): every spend is in the partners' signed ledgers and
 *    the coordinator's countersigned one, both verify offline; a partner whose budget cannot pay
 *    for a round never trains and still gets the final model; updates without a valid ledger entry
 *    are refused (LEDGER).
 * The coordinator process killed with SIGKILL and restarted is tests/test_federation_proc.c.
 * Everything started here is stopped here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/join.h"
#include "common/checkpoint.h"
#include "common/log.h"
#include "common/data.h"
#include "common/model.h"
#include "common/model_io.h"
#include "common/params.h"
#include "common/tensor_stream.h"
#include "common/wire.h"
#include "dp/ledger.h"
#include "fedprof.pb-c.h"
#include "server/coordinator.h"

#define N_CLIENTS 3
#define N_ROUNDS 3
#define MAX_ROUNDS 8

/* ---- temporary directories and certificates ---- */

static void rm_rf(const char *dir)
{
    if (!dir[0] || strncmp(dir, "/tmp/fp_fed_", 12) != 0)
        return;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void mktmp(char *out, size_t n, const char *tag)
{
    snprintf(out, n, "/tmp/fp_fed_%s_XXXXXX", tag);
    assert_non_null(mkdtemp(out));
}

typedef struct {
    char dir[128], other[128];
} certs_t;

static int make_certs(certs_t *c)
{
    if (system("command -v openssl >/dev/null 2>&1") != 0)
        return 0;
    mktmp(c->dir, sizeof c->dir, "certs");
    mktmp(c->other, sizeof c->other, "other");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/scripts/make-certs.sh %s p0 p1 p2 p3 >/dev/null", FEDPROF_SOURCE_DIR, c->dir);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/scripts/make-certs.sh %s mallory >/dev/null", FEDPROF_SOURCE_DIR, c->other);
    assert_int_equal(system(cmd), 0);
    return 1;
}

static void cpath(char *out, size_t n, const char *dir, const char *name, const char *ext)
{
    snprintf(out, n, "%s/%s.%s", dir, name, ext);
}

/* ---- the federation's data: one synthetic log split across partners ---- */

static fp_dataset_t *g_full;
static fp_dataset_t *g_part[N_CLIENTS + 1];

static void data_setup(void)
{
    if (g_full)
        return;
    fp_synth_params_t sp;
    fp_synth_defaults(&sp);
    sp.n_users = 240;
    sp.n_items = 60;
    sp.n_interests = 6;
    sp.mean_len = 8;
    sp.seed = 11;
    assert_int_equal(fp_data_synthetic(&sp, &g_full), FP_OK);
    int32_t *part = NULL;
    assert_int_equal(fp_data_partition(g_full, N_CLIENTS + 1, 5, &part), FP_OK);
    for (int p = 0; p <= N_CLIENTS; p++)
        assert_int_equal(fp_data_subset(g_full, part, p, &g_part[p]), FP_OK);
    free(part);
}

/* A fresh copy of partner p's data (join remaps it in place). */
static fp_dataset_t *partner_data(int p)
{
    char path[256];
    snprintf(path, sizeof path, "/tmp/fp_fed_data_%d_%d.txt", (int)getpid(), p);
    assert_int_equal(fp_data_save_text(g_part[p], path), FP_OK);
    fp_dataset_t *d = NULL;
    assert_int_equal(fp_data_load(path, FP_FORMAT_TEXT, &d), FP_OK);
    unlink(path);
    return d;
}

/* ---- coordinator in a thread ---- */

static void coord_defaults(fp_coord_opts_t *o, const char *ckpt)
{
    fp_coord_opts_defaults(o);
    o->listen = "127.0.0.1:0";
    o->model_cfg.model.n_items = 60;
    o->model_cfg.model.dim = 8;
    o->model_cfg.model.blocks = 1;
    o->model_cfg.model.heads = 2;
    o->model_cfg.model.maxlen = 10;
    o->model_cfg.model.dropout = 0.1f;
    o->model_cfg.eval.max_users = 0;
    o->model_cfg.eval.negatives = 20;
    o->rounds = N_ROUNDS;
    o->clients_per_round = N_CLIENTS;
    o->min_clients = N_CLIENTS;
    o->round_timeout_s = 60;
    o->member_timeout_s = 30;
    o->done_linger_s = 2;
    o->plan.batch = 16;
    o->plan.local_epochs = 1;
    o->plan.lr = 5e-3;
    o->checkpoint_dir = ckpt;
    o->select_seed = 3;
    o->quiet = getenv("FP_TEST_VERBOSE") ? 0 : 1;
}

typedef struct {
    fp_coord_t *c;
    pthread_t th;
    fp_status st;
} coord_run_t;

static void *coord_thread(void *arg)
{
    coord_run_t *r = arg;
    r->st = fp_coord_run(r->c);
    return NULL;
}

static void coord_start(coord_run_t *r, const fp_coord_opts_t *o)
{
    memset(r, 0, sizeof *r);
    assert_int_equal(fp_coord_create(o, &r->c), FP_OK);
    assert_int_equal(pthread_create(&r->th, NULL, coord_thread, r), 0);
}

static void coord_join(coord_run_t *r)
{
    pthread_join(r->th, NULL);
}

/* ---- clients in threads, updates captured by the hook ---- */

typedef struct {
    int have;
    uint64_t base_version;
    float *w_global, *delta;
    uint32_t bucket;
} captured_t;

typedef struct {
    int idx;
    fp_join_opts_t o;
    fp_join_report_t rep;
    fp_status st;
    char err[512];
    pthread_t th;
    fp_dataset_t *data;
    fp_wire_creds_t *creds;
    pthread_mutex_t mu;
    size_t P;
    captured_t cap[MAX_ROUNDS + 1]; /* by round id */
    char out_dir[128];
} client_t;

static void on_update(void *user, uint64_t round_id, uint64_t base_version, const float *w_global,
                      const float *delta, size_t n, uint32_t bucket)
{
    client_t *c = user;
    pthread_mutex_lock(&c->mu);
    if (round_id <= MAX_ROUNDS) {
        captured_t *k = &c->cap[round_id];
        free(k->w_global);
        free(k->delta);
        k->w_global = malloc(n * sizeof(float));
        k->delta = malloc(n * sizeof(float));
        if (k->w_global && k->delta) {
            memcpy(k->w_global, w_global, n * sizeof(float));
            memcpy(k->delta, delta, n * sizeof(float));
            k->have = 1;
            k->base_version = base_version;
            k->bucket = bucket;
        }
        c->P = n;
    }
    pthread_mutex_unlock(&c->mu);
}

static void *client_thread(void *arg)
{
    client_t *c = arg;
    c->st = fp_join_run(&c->o, &c->rep);
    if (c->st != FP_OK)
        snprintf(c->err, sizeof c->err, "%s", fp_error_message());
    return NULL;
}

static void client_init(client_t *c, int idx, int port, const certs_t *certs, const char *name)
{
    memset(c, 0, sizeof *c);
    c->idx = idx;
    pthread_mutex_init(&c->mu, NULL);
    c->data = partner_data(idx);
    static char targets[8][64];
    snprintf(targets[idx], sizeof targets[idx], "127.0.0.1:%d", port);
    if (certs) {
        char ca[256], cert[256], key[256];
        cpath(ca, sizeof ca, certs->dir, "ca", "pem");
        cpath(cert, sizeof cert, certs->dir, name, "pem");
        cpath(key, sizeof key, certs->dir, name, "key");
        assert_int_equal(fp_wire_channel_creds_tls(ca, cert, key, NULL, &c->creds), FP_OK);
    } else {
        assert_int_equal(fp_wire_creds_insecure(&c->creds), FP_OK);
    }
    fp_join_opts_defaults(&c->o);
    c->o.server = targets[idx];
    c->o.creds = c->creds;
    c->o.insecure_name = certs ? NULL : name;
    c->o.data = c->data;
    c->o.threads = 1;
    c->o.quiet = getenv("FP_TEST_VERBOSE") ? 0 : 1;
    c->o.max_backoff_s = 0.5;
    c->o.give_up_s = 60;
    c->o.eval_final = 1;
    c->o.on_update = on_update;
    c->o.hook_user = c;
}

static void client_start(client_t *c)
{
    assert_int_equal(pthread_create(&c->th, NULL, client_thread, c), 0);
}

static void client_free(client_t *c)
{
    for (int r = 0; r <= MAX_ROUNDS; r++) {
        free(c->cap[r].w_global);
        free(c->cap[r].delta);
    }
    fp_wire_creds_destroy(c->creds);
    fp_dataset_free(c->data);
    pthread_mutex_destroy(&c->mu);
}

/* |a - b| <= tol * max(1, |b|) everywhere; returns the worst ratio. */
static double max_rel(const float *a, const double *b, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / fmax(1.0, fabs(b[i]));
        if (d > worst)
            worst = d;
    }
    return worst;
}

/* FedAvg of round r over the clients that trained it, from their captured updates:
 * w_global + Σ weight_i Δ_i / Σ weight_i, weight = lower edge of the example bucket. */
static void fedavg(client_t *cl, int n, int r, size_t P, double *out)
{
    const float *w = NULL;
    double wsum = 0;
    for (size_t i = 0; i < P; i++)
        out[i] = 0;
    for (int k = 0; k < n; k++) {
        captured_t *c = &cl[k].cap[r];
        if (!c->have)
            continue;
        if (w)
            assert_memory_equal(w, c->w_global, P * sizeof(float)); /* everyone trained the same model */
        w = c->w_global;
        double wt = c->bucket == 0 ? 1.0 : ldexp(1.0, (int)c->bucket - 1);
        wsum += wt;
        for (size_t i = 0; i < P; i++)
            out[i] += wt * c->delta[i];
    }
    assert_non_null(w);
    for (size_t i = 0; i < P; i++)
        out[i] = (double)w[i] + out[i] / wsum;
}

/* ---- three partners over mTLS, FedAvg exact; a foreign CA refused ---- */

static void test_mtls_fedavg(void **state)
{
    (void)state;
    data_setup();
    certs_t certs = {{0}, {0}};
    if (!make_certs(&certs))
        skip();
    char ckpt[128];
    mktmp(ckpt, sizeof ckpt, "ckpt");
    char ca[256], scert[256], skey[256];
    cpath(ca, sizeof ca, certs.dir, "ca", "pem");
    cpath(scert, sizeof scert, certs.dir, "server", "pem");
    cpath(skey, sizeof skey, certs.dir, "server", "key");
    fp_wire_creds_t *sc = NULL;
    assert_int_equal(fp_wire_server_creds_tls(ca, scert, skey, &sc), FP_OK);
    fp_coord_opts_t o;
    coord_defaults(&o, ckpt);
    o.spill_updates = 1; /* the spilled receive path (by default only for models of 32 MiB and more) */
    o.creds = sc;
    coord_run_t cr;
    coord_start(&cr, &o);
    int port = fp_coord_port(cr.c);

    /* mallory: a certificate from another CA, never a member */
    client_t evil;
    client_init(&evil, N_CLIENTS, port, NULL, "mallory");
    fp_wire_creds_destroy(evil.creds);
    {
        char oca[256], mc[256], mk[256];
        cpath(oca, sizeof oca, certs.other, "ca", "pem");
        cpath(mc, sizeof mc, certs.other, "mallory", "pem");
        cpath(mk, sizeof mk, certs.other, "mallory", "key");
        /* trusts the real CA for the server, presents the foreign client certificate */
        assert_int_equal(fp_wire_channel_creds_tls(ca, mc, mk, NULL, &evil.creds), FP_OK);
        (void)oca;
    }
    evil.o.creds = evil.creds;
    evil.o.insecure_name = NULL;
    evil.o.give_up_s = 2;
    client_start(&evil);

    client_t cl[N_CLIENTS];
    char names[N_CLIENTS][8];
    for (int i = 0; i < N_CLIENTS; i++) {
        snprintf(names[i], sizeof names[i], "p%d", i);
        client_init(&cl[i], i, port, &certs, names[i]);
        mktmp(cl[i].out_dir, sizeof cl[i].out_dir, "out");
        cl[i].o.out_dir = cl[i].out_dir;
        client_start(&cl[i]);
    }
    for (int i = 0; i < N_CLIENTS; i++) {
        pthread_join(cl[i].th, NULL);
        if (cl[i].st != FP_OK)
            print_error("client %d: %s\n", i, cl[i].err);
        assert_int_equal(cl[i].st, FP_OK);
        assert_int_equal(cl[i].rep.rounds_trained, N_ROUNDS);
        assert_int_equal(cl[i].rep.updates_accepted, N_ROUNDS);
        assert_string_equal(cl[i].rep.identity, names[i]);
        assert_true(cl[i].rep.evaluated);
    }
    pthread_join(evil.th, NULL);
    assert_int_not_equal(evil.st, FP_OK);
    assert_int_equal(evil.rep.rounds_trained, 0);
    coord_join(&cr);
    assert_int_equal(cr.st, FP_OK);

    fp_coord_stats_t s;
    fp_coord_stats(cr.c, &s);
    assert_int_equal((int)s.committed, N_ROUNDS);
    assert_int_equal(s.members, N_CLIENTS);
    assert_int_equal((int)s.accepted, N_CLIENTS * N_ROUNDS);

    size_t P = cl[0].P;
    assert_true(P > 0);
    float *final = malloc(P * sizeof *final);
    double *expect = malloc(P * sizeof *expect);
    assert_true(final && expect);
    size_t n = 0;
    assert_int_equal(fp_coord_model(cr.c, final, P, &n), FP_OK);
    assert_int_equal(n, P);
    /* rounds are numbered from 1; round r's result is the model round r + 1 trained from */
    for (int r = 1; r <= N_ROUNDS; r++) {
        fedavg(cl, N_CLIENTS, r, P, expect);
        const float *got = r < N_ROUNDS ? cl[0].cap[r + 1].w_global : final;
        assert_non_null(got);
        double e = max_rel(got, expect, P);
        if (e > 1e-6)
            print_error("round %d: global model differs from the FedAvg of the updates by %.3g\n", r, e);
        assert_true(e <= 1e-6);
        assert_int_equal((int)cl[0].cap[r].base_version, (int)cl[0].cap[1].base_version + r - 1);
    }

    /* the final model the coordinator wrote and the one each client saved are that model */
    char path[300];
    snprintf(path, sizeof path, "%s/model.safetensors", ckpt);
    fp_model_t *m = NULL;
    fp_config_t mcfg;
    char **names_out = NULL;
    assert_int_equal(fp_model_load(path, 1, 1, &m, &mcfg, &names_out), FP_OK);
    assert_memory_equal(fp_model_params(m), final, P * sizeof(float));
    fp_model_destroy(m);
    fp_model_items_free(names_out, mcfg.model.n_items);
    for (int i = 0; i < N_CLIENTS; i++) {
        snprintf(path, sizeof path, "%s/model.safetensors", cl[i].out_dir);
        assert_int_equal(fp_model_load(path, 1, 1, &m, &mcfg, &names_out), FP_OK);
        assert_memory_equal(fp_model_params(m), final, P * sizeof(float));
        fp_model_destroy(m);
        fp_model_items_free(names_out, mcfg.model.n_items);
    }

    free(final);
    free(expect);
    fp_coord_destroy(cr.c);
    fp_wire_creds_destroy(sc);
    for (int i = 0; i < N_CLIENTS; i++) {
        rm_rf(cl[i].out_dir);
        client_free(&cl[i]);
    }
    client_free(&evil);
    rm_rf(ckpt);
    rm_rf(certs.dir);
    rm_rf(certs.other);
}

/* ---- a hand-driven member: raw Join / GetTask / PushUpdate ---- */

typedef struct {
    fp_wire_channel_t *ch;
    char session[FP_TS_SESSION_MAX + 1];
} raw_t;

static void raw_open(raw_t *r, int port)
{
    memset(r, 0, sizeof *r);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    fp_wire_creds_t *cc = NULL;
    assert_int_equal(fp_wire_creds_insecure(&cc), FP_OK);
    assert_int_equal(fp_wire_channel_create(target, cc, 0, &r->ch), FP_OK);
    fp_wire_creds_destroy(cc);
}

static void raw_join(raw_t *r, const char *name)
{
    Fedprof__V1__JoinRequest req = FEDPROF__V1__JOIN_REQUEST__INIT;
    Fedprof__V1__Capabilities cap = FEDPROF__V1__CAPABILITIES__INIT;
    req.protocol_version = 1;
    cap.max_message_bytes = FP_WIRE_DEFAULT_MAX_MSG;
    cap.max_parameters = FP_TS_MAX_PARAMS;
    cap.discrete_gaussian = 1;
    req.capabilities = &cap;
    req.num_examples_bucket = 5;
    req.insecure_name = (char *)(uintptr_t)name;
    uint8_t buf[512];
    size_t n = fedprof__v1__join_request__pack(&req, buf);
    uint8_t *resp = NULL;
    size_t rn = 0;
    int code = -1;
    char msg[FP_WIRE_STATUS_MSG_MAX];
    assert_int_equal(fp_wire_call_unary(r->ch, FP_WIRE_METHOD_JOIN, buf, n, 5000, &resp, &rn, &code, msg), FP_OK);
    Fedprof__V1__JoinResponse *jr = fedprof__v1__join_response__unpack(NULL, rn, resp);
    free(resp);
    assert_non_null(jr);
    assert_non_null(jr->session);
    snprintf(r->session, sizeof r->session, "%s", jr->session);
    fedprof__v1__join_response__free_unpacked(jr, NULL);
}

/* Poll until TRAIN (or DONE: returns 0). */
static int raw_wait_train(raw_t *r, uint64_t *round_id, uint64_t *version, size_t *P, uint64_t *layout)
{
    for (int i = 0; i < 200; i++) {
        Fedprof__V1__GetTaskRequest req = FEDPROF__V1__GET_TASK_REQUEST__INIT;
        req.protocol_version = 1;
        req.max_wait_ms = 200;
        req.session = r->session;
        uint8_t buf[256];
        size_t n = fedprof__v1__get_task_request__pack(&req, buf);
        uint8_t *resp = NULL;
        size_t rn = 0;
        int code = -1;
        char msg[FP_WIRE_STATUS_MSG_MAX];
        assert_int_equal(fp_wire_call_unary(r->ch, FP_WIRE_METHOD_GET_TASK, buf, n, 5000, &resp, &rn, &code, msg),
                         FP_OK);
        Fedprof__V1__GetTaskResponse *t = fedprof__v1__get_task_response__unpack(NULL, rn, resp);
        free(resp);
        assert_non_null(t);
        int action = t->action;
        if (action == FEDPROF__V1__TASK_ACTION__TASK_ACTION_TRAIN) {
            assert_non_null(t->model);
            *round_id = t->round_id;
            *version = t->model_version;
            *P = (size_t)t->model->parameter_count;
            *layout = t->model->layout_hash;
        }
        fedprof__v1__get_task_response__free_unpacked(t, NULL);
        if (action == FEDPROF__V1__TASK_ACTION__TASK_ACTION_TRAIN)
            return 1;
        if (action == FEDPROF__V1__TASK_ACTION__TASK_ACTION_DONE)
            return 0;
    }
    fail_msg("no task after 200 polls");
    return 0;
}

/* The packed messages of an update stream (header, chunks, digest), owned by the caller. */
typedef struct {
    uint8_t *m[64];
    size_t len[64];
    int n;
} msgs_t;

static void msgs_make(msgs_t *s, const fp_ts_header_t *h, const float *data)
{
    memset(s, 0, sizeof *s);
    fp_ts_writer_t *w = NULL;
    assert_int_equal(fp_ts_writer_create(h, data, &w), FP_OK);
    for (;;) {
        const uint8_t *m = NULL;
        size_t n = 0;
        assert_int_equal(fp_ts_writer_next(w, &m, &n), FP_OK);
        if (!m)
            break;
        assert_true(s->n < 64);
        s->m[s->n] = malloc(n ? n : 1);
        assert_non_null(s->m[s->n]);
        memcpy(s->m[s->n], m, n);
        s->len[s->n++] = n;
    }
    fp_ts_writer_destroy(w);
}

static void msgs_free(msgs_t *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->m[i]);
}

/* Push the messages; returns the gRPC status. */
static int raw_push(raw_t *r, const msgs_t *s)
{
    fp_wire_stream_t *st = NULL;
    assert_int_equal(fp_wire_stream_open(r->ch, FP_WIRE_METHOD_PUSH_UPDATE, 10000, &st), FP_OK);
    for (int i = 0; i < s->n; i++)
        if (fp_wire_stream_write(st, s->m[i], s->len[i]) != FP_OK)
            break;
    uint8_t *resp = NULL;
    size_t rn = 0;
    int code = -1;
    char msg[FP_WIRE_STATUS_MSG_MAX] = "";
    (void)fp_wire_stream_finish(st, &resp, &rn, &code, msg);
    free(resp);
    fp_wire_stream_destroy(st);
    return code;
}

static void raw_close(raw_t *r)
{
    fp_wire_channel_destroy(r->ch);
}

/* An update header for the current round. */
static void upd_header(fp_ts_header_t *h, const raw_t *r, uint64_t round_id, uint64_t version, size_t P,
                       uint64_t layout, double clip)
{
    memset(h, 0, sizeof *h);
    h->kind = FP_TS_UPDATE;
    h->protocol_version = 1;
    h->round_id = round_id;
    h->model_version = version;
    h->param_count = P;
    h->layout_hash = layout;
    h->chunk_bytes = 4096;
    h->clip_bound = clip;
    h->example_count_bucket = 5;
    snprintf(h->session, sizeof h->session, "%s", r->session);
}

#define REJ(s, name) ((s).rejections[FEDPROF__V1__REJECT_REASON__REJECT_REASON_##name])

/* ---- every kind of bad update refused with its status; the round still completes ---- */

static void test_hostile_updates(void **state)
{
    (void)state;
    data_setup();
    char ckpt[128];
    mktmp(ckpt, sizeof ckpt, "ckpt");
    fp_wire_creds_t *sc = NULL;
    assert_int_equal(fp_wire_creds_insecure(&sc), FP_OK);
    fp_coord_opts_t o;
    coord_defaults(&o, ckpt);
    o.spill_updates = 1; /* the spilled receive path (by default only for models of 32 MiB and more) */
    o.creds = sc;
    o.insecure = 1;
    o.rounds = 1;
    o.plan.clip = 10.0; /* clipping declared: updates above it are refused */
    coord_run_t cr;
    coord_start(&cr, &o);
    int port = fp_coord_port(cr.c);

    raw_t h, g, z, bogus;
    raw_open(&h, port);
    raw_open(&g, port);
    raw_open(&z, port);
    raw_open(&bogus, port);
    raw_join(&h, "h");
    raw_join(&g, "g");
    client_t p0;
    client_init(&p0, 0, port, NULL, "p0");
    client_start(&p0);

    uint64_t round_id = 0, version = 0, layout = 0;
    size_t P = 0;
    assert_true(raw_wait_train(&h, &round_id, &version, &P, &layout));
    raw_join(&z, "z"); /* a member that joined after the selection */
    float *zero = calloc(P + 1, sizeof *zero), *big = malloc((P + 1) * sizeof *big);
    assert_true(zero && big);
    for (size_t i = 0; i <= P; i++)
        big[i] = 1.0f; /* L2 norm sqrt(P) >> 10 */

    fp_ts_header_t hd;
    msgs_t s;
    fp_coord_stats_t st0, st1;
    fp_coord_stats(cr.c, &st0);

    /* malformed: the first message is not an UpdateHeader */
    upd_header(&hd, &h, round_id, version, P, layout, 10.0);
    msgs_make(&s, &hd, zero);
    s.m[0][0] ^= 0xff;
    s.m[0][1] ^= 0xff;
    assert_int_equal(raw_push(&h, &s), FP_WIRE_INVALID_ARGUMENT);
    msgs_free(&s);
    /* malformed: chunks out of order */
    msgs_make(&s, &hd, zero);
    assert_true(s.n >= 4);
    uint8_t *t = s.m[1];
    size_t tl = s.len[1];
    s.m[1] = s.m[2];
    s.len[1] = s.len[2];
    s.m[2] = t;
    s.len[2] = tl;
    assert_int_equal(raw_push(&h, &s), FP_WIRE_INVALID_ARGUMENT);
    msgs_free(&s);
    /* oversized: more parameters than the model, refused from the header */
    upd_header(&hd, &h, round_id, version, P + 1, layout, 10.0);
    msgs_make(&s, &hd, zero);
    assert_int_equal(raw_push(&h, &s), FP_WIRE_RESOURCE_EXHAUSTED);
    msgs_free(&s);
    /* wrong shape: fewer parameters; wrong layout */
    upd_header(&hd, &h, round_id, version, P - 1, layout, 10.0);
    msgs_make(&s, &hd, zero);
    assert_int_equal(raw_push(&h, &s), FP_WIRE_FAILED_PRECONDITION);
    msgs_free(&s);
    upd_header(&hd, &h, round_id, version, P, layout ^ 1, 10.0);
    msgs_make(&s, &hd, zero);
    assert_int_equal(raw_push(&h, &s), FP_WIRE_FAILED_PRECONDITION);
    msgs_free(&s);
    /* non-finite: a NaN in the last value of the last chunk */
    upd_header(&hd, &h, round_id, version, P, layout, 10.0);
    msgs_make(&s, &hd, zero);
    {
        int last = s.n - 2; /* the last chunk */
        const uint8_t nan_le[4] = {0x00, 0x00, 0xc0, 0x7f};
        memcpy(s.m[last] + s.len[last] - 4, nan_le, 4);
    }
    assert_int_equal(raw_push(&h, &s), FP_WIRE_INVALID_ARGUMENT);
    msgs_free(&s);
    /* bad digest: one bit of the data flipped */
    msgs_make(&s, &hd, zero);
    s.m[1][s.len[1] - 1] ^= 0x01;
    assert_int_equal(raw_push(&h, &s), FP_WIRE_DATA_LOSS);
    msgs_free(&s);
    /* above the declared clip; no clip declared although the federation requires it */
    msgs_make(&s, &hd, big);
    assert_int_equal(raw_push(&h, &s), FP_WIRE_INVALID_ARGUMENT);
    msgs_free(&s);
    upd_header(&hd, &h, round_id, version, P, layout, 0.0);
    msgs_make(&s, &hd, zero);
    assert_int_equal(raw_push(&h, &s), FP_WIRE_INVALID_ARGUMENT);
    msgs_free(&s);
    /* stale: another round, an old base model */
    upd_header(&hd, &h, round_id + 1, version, P, layout, 10.0);
    msgs_make(&s, &hd, zero);
    assert_int_equal(raw_push(&h, &s), FP_WIRE_ABORTED);
    msgs_free(&s);
    upd_header(&hd, &h, round_id, version - 1, P, layout, 10.0);
    msgs_make(&s, &hd, zero);
    assert_int_equal(raw_push(&h, &s), FP_WIRE_ABORTED);
    msgs_free(&s);
    /* protocol version 2 */
    upd_header(&hd, &h, round_id, version, P, layout, 10.0);
    hd.protocol_version = 2;
    msgs_make(&s, &hd, zero);
    assert_int_equal(raw_push(&h, &s), FP_WIRE_FAILED_PRECONDITION);
    msgs_free(&s);
    /* unknown session */
    snprintf(bogus.session, sizeof bogus.session, "not-a-session");
    upd_header(&hd, &bogus, round_id, version, P, layout, 10.0);
    msgs_make(&s, &hd, zero);
    assert_int_equal(raw_push(&bogus, &s), FP_WIRE_UNAUTHENTICATED);
    msgs_free(&s);
    /* not selected */
    upd_header(&hd, &z, round_id, version, P, layout, 10.0);
    msgs_make(&s, &hd, zero);
    assert_int_equal(raw_push(&z, &s), FP_WIRE_PERMISSION_DENIED);
    msgs_free(&s);

    /* nothing above was aggregated; each was counted under its reason */
    fp_coord_stats(cr.c, &st1);
    assert_int_equal((int)(REJ(st1, MALFORMED) - REJ(st0, MALFORMED)), 2);
    assert_int_equal((int)(REJ(st1, OVERSIZED) - REJ(st0, OVERSIZED)), 1);
    assert_int_equal((int)(REJ(st1, SHAPE) - REJ(st0, SHAPE)), 2);
    assert_int_equal((int)(REJ(st1, NON_FINITE) - REJ(st0, NON_FINITE)), 1);
    assert_int_equal((int)(REJ(st1, DIGEST) - REJ(st0, DIGEST)), 1);
    assert_int_equal((int)(REJ(st1, CLIP_BOUND) - REJ(st0, CLIP_BOUND)), 2);
    assert_int_equal((int)(REJ(st1, STALE) - REJ(st0, STALE)), 2);
    assert_int_equal((int)(REJ(st1, VERSION) - REJ(st0, VERSION)), 1);
    assert_int_equal((int)(REJ(st1, UNKNOWN_IDENTITY) - REJ(st0, UNKNOWN_IDENTITY)), 1);
    assert_int_equal((int)(REJ(st1, NOT_SELECTED) - REJ(st0, NOT_SELECTED)), 1);
    assert_true(st1.accepted <= 1); /* at most p0's honest update */

    /* h's valid update is taken; the same again is a duplicate */
    upd_header(&hd, &h, round_id, version, P, layout, 10.0);
    msgs_make(&s, &hd, zero);
    assert_int_equal(raw_push(&h, &s), FP_WIRE_OK);
    assert_int_equal(raw_push(&h, &s), FP_WIRE_ALREADY_EXISTS);
    msgs_free(&s);
    fp_coord_stats(cr.c, &st1);
    assert_int_equal((int)(REJ(st1, DUPLICATE) - REJ(st0, DUPLICATE)), 1);
    /* g completes the round (with p0) */
    uint64_t r2, v2, l2;
    size_t P2;
    assert_true(raw_wait_train(&g, &r2, &v2, &P2, &l2));
    upd_header(&hd, &g, r2, v2, P2, l2, 10.0);
    msgs_make(&s, &hd, zero);
    assert_int_equal(raw_push(&g, &s), FP_WIRE_OK);
    msgs_free(&s);

    pthread_join(p0.th, NULL);
    if (p0.st != FP_OK)
        print_error("p0: %s\n", p0.err);
    assert_int_equal(p0.st, FP_OK);
    coord_join(&cr);
    assert_int_equal(cr.st, FP_OK);
    fp_coord_stats(cr.c, &st1);
    assert_int_equal((int)st1.committed, 1);
    assert_int_equal((int)st1.accepted, 3);
    /* the committed model is the initial one plus p0's update / 3 (h and g sent zeros), weights
     * equal (all three declared bucket 5... p0's own bucket may differ: recompute) */
    {
        float *final = malloc(P * sizeof *final);
        double *expect = malloc(P * sizeof *expect);
        assert_true(final && expect);
        size_t n = 0;
        assert_int_equal(fp_coord_model(cr.c, final, P, &n), FP_OK);
        captured_t *c0 = &p0.cap[round_id];
        assert_true(c0->have);
        double w0 = c0->bucket == 0 ? 1.0 : ldexp(1.0, (int)c0->bucket - 1), wz = ldexp(1.0, 4);
        for (size_t i = 0; i < P; i++)
            expect[i] = (double)c0->w_global[i] + w0 * c0->delta[i] / (w0 + 2 * wz);
        assert_true(max_rel(final, expect, P) <= 1e-6);
        free(final);
        free(expect);
    }

    free(zero);
    free(big);
    raw_close(&h);
    raw_close(&g);
    raw_close(&z);
    raw_close(&bogus);
    fp_coord_destroy(cr.c);
    fp_wire_creds_destroy(sc);
    client_free(&p0);
    rm_rf(ckpt);
}

/* ---- a selected client vanishes mid-round: the round completes after the deadline ---- */

static void test_dropout_deadline(void **state)
{
    (void)state;
    data_setup();
    char ckpt[128];
    mktmp(ckpt, sizeof ckpt, "ckpt");
    fp_wire_creds_t *sc = NULL;
    assert_int_equal(fp_wire_creds_insecure(&sc), FP_OK);
    fp_coord_opts_t o;
    coord_defaults(&o, ckpt);
    o.creds = sc;
    o.insecure = 1;
    o.rounds = 1;
    o.clients_per_round = 3;
    o.min_clients = 3;  /* all three are members before round 1 starts */
    o.min_updates = 2;  /* and two updates commit it */
    o.round_timeout_s = 2.0;
    o.member_timeout_s = 1.5;
    coord_run_t cr;
    coord_start(&cr, &o);
    int port = fp_coord_port(cr.c);

    raw_t k;
    raw_open(&k, port);
    raw_join(&k, "k");
    client_t cl[2];
    static const char *const names[2] = {"p0", "p1"}; /* join keeps the pointer */
    for (int i = 0; i < 2; i++) {
        client_init(&cl[i], i, port, NULL, names[i]);
        client_start(&cl[i]);
    }
    uint64_t round_id, version, layout;
    size_t P;
    assert_true(raw_wait_train(&k, &round_id, &version, &P, &layout));
    double t0 = fp_now();
    raw_close(&k); /* k got its task and is never heard of again */
    for (int i = 0; i < 2; i++) {
        pthread_join(cl[i].th, NULL);
        if (cl[i].st != FP_OK)
            print_error("p%d: %s\n", i, cl[i].err);
        assert_int_equal(cl[i].st, FP_OK);
        assert_int_equal(cl[i].rep.rounds_trained, 1);
    }
    coord_join(&cr);
    assert_int_equal(cr.st, FP_OK);
    fp_coord_stats_t s;
    fp_coord_stats(cr.c, &s);
    assert_int_equal((int)s.committed, 1);
    assert_int_equal((int)s.accepted, 2);
    assert_int_equal((int)s.failed_rounds, 0);
    assert_true(fp_now() - t0 >= 1.5); /* round 1 waited for its deadline */
    fp_coord_destroy(cr.c);
    fp_wire_creds_destroy(sc);
    for (int i = 0; i < 2; i++)
        client_free(&cl[i]);
    rm_rf(ckpt);
}

/* ---- differential privacy: record-level DP-SGD, ledgers, budget admission ---- */

static void ledger_dir_of(char *out, size_t n, const char *base, int i)
{
    snprintf(out, n, "%s/ledger-p%d", base, i);
}

static void test_dp_ledger(void **state)
{
    (void)state;
    data_setup();
    char ckpt[128], tmp[128];
    mktmp(ckpt, sizeof ckpt, "ckpt");
    mktmp(tmp, sizeof tmp, "ledgers");
    fp_wire_creds_t *sc = NULL;
    assert_int_equal(fp_wire_creds_insecure(&sc), FP_OK);
    fp_coord_opts_t o;
    coord_defaults(&o, ckpt);
    o.creds = sc;
    o.insecure = 1;
    o.rounds = 3;
    o.clients_per_round = 3;
    o.min_clients = 2;
    o.min_updates = 2;
    o.round_timeout_s = 30;
    o.plan.unit = FP_UNIT_RECORD;
    o.plan.clip = 1.0;
    o.plan.noise_multiplier = 1.0;
    o.plan.delta = 1e-5;
    coord_run_t cr;
    coord_start(&cr, &o);
    int port = fp_coord_port(cr.c);
    client_t cl[3];
    static const char *const names[3] = {"p0", "p1", "p2"};
    static char dirs[3][200];
    const double budgets[3] = {1000.0, 1000.0, 0.5}; /* p2 cannot afford a single round */
    for (int i = 0; i < 3; i++) {
        client_init(&cl[i], i, port, NULL, names[i]);
        ledger_dir_of(dirs[i], sizeof dirs[i], tmp, i);
        cl[i].o.ledger_dir = dirs[i];
        cl[i].o.budget_epsilon = budgets[i];
    }
    for (int i = 2; i >= 0; i--) /* p2 first: it is a member when round 1 or 2 selects */
        client_start(&cl[i]);
    for (int i = 0; i < 3; i++) {
        pthread_join(cl[i].th, NULL);
        if (cl[i].st != FP_OK)
            print_error("p%d: %s\n", i, cl[i].err);
        assert_int_equal(cl[i].st, FP_OK);
    }
    coord_join(&cr);
    assert_int_equal(cr.st, FP_OK);
    fp_coord_stats_t s;
    fp_coord_stats(cr.c, &s);
    assert_int_equal((int)s.committed, 3);
    assert_int_equal((int)REJ(s, LEDGER), 0);
    /* p2 refused to train: its budget could not pay for a round; it still got the final model */
    assert_int_equal(cl[2].rep.rounds_trained, 0);
    assert_int_equal(cl[2].rep.budget_exhausted, 1);
    assert_int_equal(cl[2].rep.final_version, 4);
    int trained = 0;
    for (int i = 0; i < 2; i++) {
        assert_true(cl[i].rep.rounds_trained >= 3);
        assert_int_equal(cl[i].rep.budget_exhausted, 0);
        assert_true(cl[i].rep.epsilon > 0 && cl[i].rep.epsilon < budgets[i]);
        trained += cl[i].rep.rounds_trained;
        /* the client's own ledger verifies and holds one entry per trained round */
        char path[700];
        snprintf(path, sizeof path, "%s/fedprof.ledger.jsonl", dirs[i]);
        fp_ledger_report_t *rep = NULL;
        assert_int_equal(fp_ledger_verify_file(path, NULL, &rep), FP_OK);
        assert_int_equal((int)rep->n_rows, cl[i].rep.rounds_trained);
        assert_true(fabs(rep->clients[0].eps - cl[i].rep.epsilon) <= 1e-9 * cl[i].rep.epsilon);
        assert_int_equal(rep->rows[0].spend.unit, FP_LEDGER_UNIT_RECORD);
        assert_true(rep->rows[0].spend.q > 0 && rep->rows[0].spend.q < 1); /* Poisson sampling of users */
        fp_ledger_report_free(rep);
    }
    /* the federation ledger holds every spend, countersigned, and verifies offline */
    char fpath[300];
    snprintf(fpath, sizeof fpath, "%s/federation-ledger.jsonl", ckpt);
    fp_ledger_report_t *fr = NULL;
    assert_int_equal(fp_ledger_verify_file(fpath, NULL, &fr), FP_OK);
    assert_int_equal(fr->kind, FP_LEDGER_KIND_FEDERATION);
    assert_int_equal((int)fr->n_rows, trained);
    assert_int_equal((int)fr->n_clients, 2);
    fp_ledger_report_free(fr);
    fp_coord_destroy(cr.c);
    fp_wire_creds_destroy(sc);
    for (int i = 0; i < 3; i++)
        client_free(&cl[i]);
    rm_rf(ckpt);
    rm_rf(tmp);
}

/* A DP federation refuses updates without a valid ledger entry (LEDGER, FAILED_PRECONDITION). */
static void test_dp_ledger_refusals(void **state)
{
    (void)state;
    data_setup();
    char ckpt[128];
    mktmp(ckpt, sizeof ckpt, "ckpt");
    fp_wire_creds_t *sc = NULL;
    assert_int_equal(fp_wire_creds_insecure(&sc), FP_OK);
    fp_coord_opts_t o;
    coord_defaults(&o, ckpt);
    o.creds = sc;
    o.insecure = 1;
    o.rounds = 1;
    o.clients_per_round = 1;
    o.min_clients = 1;
    o.plan.unit = FP_UNIT_CLIENT;
    o.plan.clip = 1.0;
    o.plan.noise_multiplier = 1.0;
    coord_run_t cr;
    coord_start(&cr, &o);
    int port = fp_coord_port(cr.c);
    raw_t k;
    raw_open(&k, port);
    raw_join(&k, "k");
    uint64_t round_id, version, layout;
    size_t P;
    assert_true(raw_wait_train(&k, &round_id, &version, &P, &layout));
    float *zero = calloc(P, sizeof *zero);
    assert_non_null(zero);
    fp_ts_header_t *h = malloc(sizeof *h);
    assert_non_null(h);
    msgs_t m;
    /* no ledger entry at all */
    upd_header(h, &k, round_id, version, P, layout, 1.0);
    msgs_make(&m, h, zero);
    assert_int_equal(raw_push(&k, &m), FP_WIRE_FAILED_PRECONDITION);
    msgs_free(&m);
    /* not a ledger entry */
    upd_header(h, &k, round_id, version, P, layout, 1.0);
    snprintf(h->ledger_entry, sizeof h->ledger_entry, "{\"v\":1,\"client\":\"k\"}");
    msgs_make(&m, h, zero);
    assert_int_equal(raw_push(&k, &m), FP_WIRE_FAILED_PRECONDITION);
    msgs_free(&m);
    fp_coord_stats_t s;
    fp_coord_stats(cr.c, &s);
    assert_int_equal((int)REJ(s, LEDGER), 2);
    assert_int_equal((int)s.accepted, 0);
    fp_coord_stop(cr.c);
    coord_join(&cr);
    raw_close(&k);
    fp_coord_destroy(cr.c);
    fp_wire_creds_destroy(sc);
    free(zero);
    free(h);
    rm_rf(ckpt);
}

/* A partner that crashed after recording round 1's spend but before its update left: restarted, it
 * does not train round 1 again (the spend stands, nothing is spent twice); it trains the next
 * round and sends the unsent entry with it, so the federation ledger has both, in order. */
static void test_dp_spent_round_not_retrained(void **state)
{
    (void)state;
    data_setup();
    char ckpt[128], tmp[128];
    mktmp(ckpt, sizeof ckpt, "ckpt");
    mktmp(tmp, sizeof tmp, "ledger");
    /* the ledger as the crash left it: round 1 spent at model version 1 */
    fp_ledger_key_t *key = NULL;
    assert_int_equal(fp_ledger_key_load_or_create(tmp, &key, NULL), FP_OK);
    char lpath[300];
    snprintf(lpath, sizeof lpath, "%s/fedprof.ledger.jsonl", tmp);
    fp_ledger_options_t lo = {"p0", 100.0, NULL, 0};
    fp_ledger_t *l = NULL;
    assert_int_equal(fp_ledger_open(lpath, key, &lo, &l), FP_OK);
    fp_ledger_spend_t sp = {1, 1, FP_LEDGER_UNIT_RECORD, 0.25, 1.0, 1.0, 4, 1e-5, FP_DP_CONVERSION_IMPROVED};
    assert_int_equal(fp_ledger_append(l, &sp, NULL, NULL), FP_OK);
    fp_ledger_close(l);
    fp_ledger_key_free(key);

    fp_wire_creds_t *sc = NULL;
    assert_int_equal(fp_wire_creds_insecure(&sc), FP_OK);
    fp_coord_opts_t o;
    coord_defaults(&o, ckpt);
    o.creds = sc;
    o.insecure = 1;
    o.rounds = 1;
    o.clients_per_round = 1;
    o.min_clients = 1;
    o.round_timeout_s = 1.5; /* round 1 is never answered: it fails at its deadline */
    o.plan.unit = FP_UNIT_RECORD;
    o.plan.clip = 1.0;
    o.plan.noise_multiplier = 1.0;
    o.plan.delta = 1e-5;
    coord_run_t cr;
    coord_start(&cr, &o);
    client_t c;
    client_init(&c, 0, fp_coord_port(cr.c), NULL, "p0");
    c.o.ledger_dir = tmp;
    c.o.budget_epsilon = 100.0;
    client_start(&c);
    pthread_join(c.th, NULL);
    if (c.st != FP_OK)
        print_error("p0: %s\n", c.err);
    assert_int_equal(c.st, FP_OK);
    coord_join(&cr);
    assert_int_equal(cr.st, FP_OK);
    fp_coord_stats_t s;
    fp_coord_stats(cr.c, &s);
    assert_int_equal((int)s.committed, 1);
    assert_int_equal((int)s.failed_rounds, 1);
    assert_int_equal(c.rep.rounds_skipped, 1);
    assert_int_equal(c.rep.rounds_trained, 1);
    assert_false(c.cap[1].have); /* round 1 was never trained */
    assert_true(c.cap[2].have);
    fp_ledger_report_t *r = NULL;
    assert_int_equal(fp_ledger_verify_file(lpath, NULL, &r), FP_OK);
    assert_int_equal((int)r->n_rows, 2);
    assert_int_equal((int)r->rows[1].spend.round, 2);
    fp_ledger_report_free(r);
    char fpath[300];
    snprintf(fpath, sizeof fpath, "%s/federation-ledger.jsonl", ckpt);
    assert_int_equal(fp_ledger_verify_file(fpath, NULL, &r), FP_OK);
    assert_int_equal((int)r->n_rows, 2); /* the backlog entry, then round 2's */
    assert_int_equal((int)r->rows[0].spend.round, 1);
    assert_int_equal((int)r->rows[1].spend.round, 2);
    fp_ledger_report_free(r);
    fp_coord_destroy(cr.c);
    fp_wire_creds_destroy(sc);
    client_free(&c);
    rm_rf(ckpt);
    rm_rf(tmp);
}

static int teardown_all(void **state)
{
    (void)state;
    fp_dataset_free(g_full);
    for (int p = 0; p <= N_CLIENTS; p++)
        fp_dataset_free(g_part[p]);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mtls_fedavg),
        cmocka_unit_test(test_hostile_updates),
        cmocka_unit_test(test_dropout_deadline),
        cmocka_unit_test(test_dp_ledger),
        cmocka_unit_test(test_dp_ledger_refusals),
        cmocka_unit_test(test_dp_spent_round_not_retrained),
    };
    return cmocka_run_group_tests(tests, NULL, teardown_all);
}
