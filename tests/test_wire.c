/* test_wire: common/wire over real gRPC on 127.0.0.1 (ports chosen at run time).
 *
 * Unary echo, the loopback-only rule for plaintext, server- and client-streaming of 20 x 1 MiB
 * verified by SHA-256, message limits on both sides (RESOURCE_EXHAUSTED), deadlines (the server keeps
 * serving), mutual TLS with certificates made by scripts/make-certs.sh (the handler sees the CN; a
 * client from another CA and a client without a certificate are refused) and a shutdown while a
 * call is in flight. Every server and channel started is destroyed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "common/wire.h"

#ifndef FEDPROF_SOURCE_DIR
#define FEDPROF_SOURCE_DIR "."
#endif

#define MiB ((size_t)1 << 20)
#define N_CHUNKS 20

#define M_ECHO "/fedprof.test.T/Echo"
#define M_WAIT "/fedprof.test.T/Wait"
#define M_DOWN "/fedprof.test.T/Download"
#define M_UP "/fedprof.test.T/Upload"
#define M_WHO "/fedprof.test.T/Who"
#define M_BIG "/fedprof.test.T/Big"
#define M_TID "/fedprof.test.T/Tid"

static atomic_int wait_entered, wait_saw_cancel, who_calls;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Deterministic content of byte `off` of the streamed tensor. */
static void fill(uint8_t *p, size_t off, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t x = (uint64_t)(off + i) * 0x9E3779B97F4A7C15ull;
        p[i] = (uint8_t)(x >> 56);
    }
}

static void sha256(const uint8_t *p, size_t n, uint8_t out[32])
{
    unsigned int len = 0;
    assert_int_equal(EVP_Digest(p, n, out, &len, EVP_sha256(), NULL), 1);
    assert_int_equal(len, 32);
}

/* ---- handlers ---- */

/* The threads that served M_TID calls, in call order, each named by a number it takes the first time
 * it serves one (thread-local storage starts zeroed in every new thread, whereas a pthread_t can be
 * reused by the next thread once the last was joined). */
#define TID_MAX 64
static int tid_seen[TID_MAX];
static atomic_int tid_calls, tid_threads;
static _Thread_local int tid_self;

static void h_tid(fp_wire_call_t *c, void *user)
{
    (void)user;
    if (!tid_self)
        tid_self = atomic_fetch_add(&tid_threads, 1) + 1;
    int k = atomic_fetch_add(&tid_calls, 1);
    if (k < TID_MAX)
        tid_seen[k] = tid_self;
    fp_wire_call_finish(c, FP_WIRE_OK, NULL, (const uint8_t *)"t", 1);
}

static void h_echo(fp_wire_call_t *c, void *user)
{
    (void)user;
    const uint8_t *d;
    size_t n;
    int more;
    if (fp_wire_call_read(c, &d, &n, &more) != FP_OK || !more) {
        fp_wire_call_finish(c, FP_WIRE_INVALID_ARGUMENT, "no request", NULL, 0);
        return;
    }
    fp_wire_call_finish(c, FP_WIRE_OK, NULL, d, n);
}

static void h_wait(fp_wire_call_t *c, void *user)
{
    (void)user;
    const uint8_t *d;
    size_t n;
    int more;
    fp_wire_call_read(c, &d, &n, &more);
    atomic_store(&wait_entered, 1);
    for (int i = 0; i < 3000 && !fp_wire_call_cancelled(c); i++)
        sleep_ms(5);
    if (fp_wire_call_cancelled(c))
        atomic_store(&wait_saw_cancel, 1);
    fp_wire_call_finish(c, FP_WIRE_OK, NULL, (const uint8_t *)"late", 4);
}

/* Request: uint32 chunk count. Response stream: that many 1 MiB chunks, then the 32-byte digest. */
static void h_download(fp_wire_call_t *c, void *user)
{
    (void)user;
    const uint8_t *d;
    size_t n;
    int more;
    uint32_t count = 0;
    if (fp_wire_call_read(c, &d, &n, &more) != FP_OK || !more || n != 4) {
        fp_wire_call_finish(c, FP_WIRE_INVALID_ARGUMENT, "bad request", NULL, 0);
        return;
    }
    memcpy(&count, d, 4);
    uint8_t *chunk = malloc(MiB);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    for (uint32_t k = 0; k < count; k++) {
        fill(chunk, (size_t)k * MiB, MiB);
        EVP_DigestUpdate(md, chunk, MiB);
        if (fp_wire_call_write(c, chunk, MiB) != FP_OK)
            break;
    }
    uint8_t dg[32];
    unsigned int dl = 0;
    EVP_DigestFinal_ex(md, dg, &dl);
    EVP_MD_CTX_free(md);
    free(chunk);
    if (fp_wire_call_write(c, dg, sizeof dg) == FP_OK)
        fp_wire_call_finish(c, FP_WIRE_OK, NULL, NULL, 0);
}

/* Client stream of messages; response: SHA-256 (32 bytes) + uint64 total bytes + uint64 messages. */
static void h_upload(fp_wire_call_t *c, void *user)
{
    (void)user;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    uint64_t total = 0, msgs = 0;
    for (;;) {
        const uint8_t *d;
        size_t n;
        int more;
        if (fp_wire_call_read(c, &d, &n, &more) != FP_OK) {
            EVP_MD_CTX_free(md);
            fp_wire_call_finish(c, FP_WIRE_ABORTED, "stream broke", NULL, 0);
            return;
        }
        if (!more)
            break;
        EVP_DigestUpdate(md, d, n);
        total += n;
        msgs++;
    }
    uint8_t resp[48];
    unsigned int dl = 0;
    EVP_DigestFinal_ex(md, resp, &dl);
    EVP_MD_CTX_free(md);
    memcpy(resp + 32, &total, 8);
    memcpy(resp + 40, &msgs, 8);
    fp_wire_call_finish(c, FP_WIRE_OK, NULL, resp, sizeof resp);
}

static void h_who(fp_wire_call_t *c, void *user)
{
    (void)user;
    atomic_fetch_add(&who_calls, 1);
    const char *id = fp_wire_call_identity(c);
    fp_wire_call_finish(c, FP_WIRE_OK, NULL, (const uint8_t *)id, strlen(id));
}

/* Responds with 2 MiB whatever the request. */
static void h_big(fp_wire_call_t *c, void *user)
{
    (void)user;
    uint8_t *b = calloc(1, 2 * MiB);
    fp_wire_call_finish(c, FP_WIRE_OK, NULL, b, 2 * MiB);
    free(b);
}

static const fp_wire_method_t methods[] = {
    {M_ECHO, h_echo, NULL}, {M_WAIT, h_wait, NULL}, {M_DOWN, h_download, NULL},
    {M_UP, h_upload, NULL}, {M_WHO, h_who, NULL},   {M_BIG, h_big, NULL},
    {M_TID, h_tid, NULL},
};
#define N_METHODS (sizeof methods / sizeof methods[0])

typedef struct {
    fp_wire_creds_t *screds, *ccreds;
    fp_wire_server_t *srv;
    fp_wire_channel_t *ch;
    char target[64];
} rig_t;

static void rig_insecure(rig_t *r, size_t server_max, size_t client_max)
{
    memset(r, 0, sizeof *r);
    assert_int_equal(fp_wire_creds_insecure(&r->screds), FP_OK);
    assert_int_equal(fp_wire_creds_insecure(&r->ccreds), FP_OK);
    assert_int_equal(fp_wire_server_create("127.0.0.1:0", r->screds, server_max, methods, N_METHODS, &r->srv),
                     FP_OK);
    assert_true(fp_wire_server_port(r->srv) > 0);
    snprintf(r->target, sizeof r->target, "127.0.0.1:%d", fp_wire_server_port(r->srv));
    assert_int_equal(fp_wire_channel_create(r->target, r->ccreds, client_max, &r->ch), FP_OK);
}

static void rig_free(rig_t *r)
{
    fp_wire_channel_destroy(r->ch);
    fp_wire_server_destroy(r->srv);
    fp_wire_creds_destroy(r->screds);
    fp_wire_creds_destroy(r->ccreds);
    memset(r, 0, sizeof *r);
}

static int echo(fp_wire_channel_t *ch, const uint8_t *req, size_t n, int64_t deadline_ms, int *code)
{
    uint8_t *resp = NULL;
    size_t rn = 0;
    char msg[FP_WIRE_STATUS_MSG_MAX];
    fp_status st = fp_wire_call_unary(ch, M_ECHO, req, n, deadline_ms, &resp, &rn, code, msg);
    int ok = st == FP_OK && rn == n && (n == 0 || memcmp(resp, req, n) == 0);
    if (st == FP_OK)
        assert_non_null(resp);
    else
        assert_null(resp);
    free(resp);
    return ok;
}

/* ---- tests ---- */

static void test_unary_echo(void **state)
{
    (void)state;
    rig_t r;
    rig_insecure(&r, 0, 0);
    uint8_t req[1000];
    fill(req, 7, sizeof req);
    int code = -1;
    assert_true(echo(r.ch, req, sizeof req, 5000, &code));
    assert_int_equal(code, FP_WIRE_OK);
    assert_true(echo(r.ch, NULL, 0, 5000, &code)); /* empty message (an all-default protobuf) */
    assert_int_equal(code, FP_WIRE_OK);

    uint8_t *resp = NULL;
    size_t rn = 0;
    char msg[FP_WIRE_STATUS_MSG_MAX];
    assert_int_equal(fp_wire_call_unary(r.ch, "/fedprof.test.T/Nope", req, 4, 5000, &resp, &rn, &code, msg),
                     FP_ERR_IO);
    assert_int_equal(code, FP_WIRE_UNIMPLEMENTED);
    assert_null(resp);
    /* Calls without a deadline or a method are refused locally. */
    assert_int_equal(fp_wire_call_unary(r.ch, M_ECHO, req, 4, 0, &resp, &rn, &code, msg), FP_ERR_INVALID);
    assert_int_equal(code, FP_WIRE_INVALID_ARGUMENT);
    assert_int_equal(fp_wire_call_unary(r.ch, "Echo", req, 4, 1000, &resp, &rn, &code, msg), FP_ERR_INVALID);
    rig_free(&r);
}

static void test_insecure_loopback_only(void **state)
{
    (void)state;
    static const char *yes[] = {"127.0.0.1:0", "127.8.9.10:5", "localhost:1", "LOCALHOST:1", "[::1]:0",
                                "ipv4:127.0.0.1:5", "ipv6:[::1]:7", "dns:///localhost:9", "127.0.0.1", "::1"};
    static const char *no[] = {"0.0.0.0:0", "10.1.2.3:0", "[::]:0", "example.com:443", "128.0.0.1:1",
                               "localhost.evil.com:1", "", "[::1", "[::ffff:10.0.0.1]:1", ":5"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        assert_true(fp_wire_addr_is_loopback(yes[i]));
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        assert_false(fp_wire_addr_is_loopback(no[i]));
    assert_false(fp_wire_addr_is_loopback(NULL));

    fp_wire_creds_t *cr = NULL;
    assert_int_equal(fp_wire_creds_insecure(&cr), FP_OK);
    fp_wire_server_t *s = (fp_wire_server_t *)1;
    assert_int_equal(fp_wire_server_create("0.0.0.0:0", cr, 0, methods, N_METHODS, &s), FP_ERR_INVALID);
    assert_null(s);
    assert_int_equal(fp_wire_server_create("10.1.2.3:0", cr, 0, methods, N_METHODS, &s), FP_ERR_INVALID);
    fp_wire_channel_t *ch = (fp_wire_channel_t *)1;
    assert_int_equal(fp_wire_channel_create("example.com:443", cr, 0, &ch), FP_ERR_INVALID);
    assert_null(ch);
    /* Limits beyond gRPC's int are refused, not truncated. */
    assert_int_equal(fp_wire_channel_create("127.0.0.1:1", cr, (size_t)1 << 40, &ch), FP_ERR_RANGE);
    fp_wire_creds_destroy(cr);
    fp_wire_creds_destroy(NULL);
    fp_wire_server_destroy(NULL);
    fp_wire_channel_destroy(NULL);
    fp_wire_stream_destroy(NULL);
}

typedef struct {
    uint8_t *buf;
    size_t len, msgs;
    uint8_t digest[32];
    int got_digest;
} collect_t;

static int on_chunk(const uint8_t *d, size_t n, void *user)
{
    collect_t *c = user;
    if (n == 32 && c->msgs == N_CHUNKS) {
        memcpy(c->digest, d, 32);
        c->got_digest = 1;
        return 0;
    }
    if (n != MiB || c->len + n > (size_t)N_CHUNKS * MiB)
        return 1;
    memcpy(c->buf + c->len, d, n);
    c->len += n;
    c->msgs++;
    return 0;
}

static void test_server_stream(void **state)
{
    (void)state;
    rig_t r;
    size_t lim = MiB + 64 * 1024; /* a chunk and its framing fit; 4 MiB default is not relied on */
    rig_insecure(&r, lim, lim);
    collect_t c = {0};
    c.buf = malloc((size_t)N_CHUNKS * MiB);
    assert_non_null(c.buf);
    uint32_t count = N_CHUNKS;
    int code = -1;
    char msg[FP_WIRE_STATUS_MSG_MAX];
    double t0 = now_s();
    assert_int_equal(fp_wire_call_server_stream(r.ch, M_DOWN, (const uint8_t *)&count, 4, 20000, on_chunk, &c,
                                                &code, msg),
                     FP_OK);
    double dt = now_s() - t0;
    assert_int_equal(code, FP_WIRE_OK);
    assert_int_equal(c.msgs, N_CHUNKS);
    assert_true(c.got_digest);
    uint8_t dg[32];
    sha256(c.buf, c.len, dg);
    assert_memory_equal(dg, c.digest, 32);
    uint8_t *want = malloc((size_t)N_CHUNKS * MiB);
    fill(want, 0, (size_t)N_CHUNKS * MiB);
    assert_memory_equal(want, c.buf, (size_t)N_CHUNKS * MiB);
    print_message("server stream: %d MiB in %.3f s\n", N_CHUNKS, dt);

    /* A receiver that stops early cancels the call. */
    collect_t c2 = {0};
    c2.buf = want;
    count = N_CHUNKS + 5; /* more chunks than on_chunk accepts */
    assert_int_equal(fp_wire_call_server_stream(r.ch, M_DOWN, (const uint8_t *)&count, 4, 20000, on_chunk, &c2,
                                                &code, msg),
                     FP_ERR_IO);
    assert_int_equal(code, FP_WIRE_CANCELLED);
    /* And the server still serves. */
    assert_true(echo(r.ch, (const uint8_t *)"x", 1, 5000, &code));
    free(want);
    free(c.buf);
    rig_free(&r);
}

static void test_client_stream(void **state)
{
    (void)state;
    rig_t r;
    size_t lim = MiB + 64 * 1024;
    rig_insecure(&r, lim, lim);
    uint8_t *data = malloc((size_t)N_CHUNKS * MiB);
    assert_non_null(data);
    fill(data, 12345, (size_t)N_CHUNKS * MiB);
    fp_wire_stream_t *st = NULL;
    double t0 = now_s();
    assert_int_equal(fp_wire_stream_open(r.ch, M_UP, 20000, &st), FP_OK);
    for (int k = 0; k < N_CHUNKS; k++)
        assert_int_equal(fp_wire_stream_write(st, data + (size_t)k * MiB, MiB), FP_OK);
    uint8_t *resp = NULL;
    size_t rn = 0;
    int code = -1;
    char msg[FP_WIRE_STATUS_MSG_MAX];
    assert_int_equal(fp_wire_stream_finish(st, &resp, &rn, &code, msg), FP_OK);
    double dt = now_s() - t0;
    fp_wire_stream_destroy(st);
    assert_int_equal(code, FP_WIRE_OK);
    assert_int_equal(rn, 48);
    uint8_t dg[32];
    sha256(data, (size_t)N_CHUNKS * MiB, dg);
    assert_memory_equal(resp, dg, 32);
    uint64_t total, msgs;
    memcpy(&total, resp + 32, 8);
    memcpy(&msgs, resp + 40, 8);
    assert_int_equal(total, (uint64_t)N_CHUNKS * MiB);
    assert_int_equal(msgs, N_CHUNKS);
    free(resp);
    print_message("client stream: %d MiB in %.3f s\n", N_CHUNKS, dt);

    /* An empty stream (finish without writes) works too. */
    assert_int_equal(fp_wire_stream_open(r.ch, M_UP, 5000, &st), FP_OK);
    assert_int_equal(fp_wire_stream_finish(st, &resp, &rn, &code, msg), FP_OK);
    assert_int_equal(rn, 48);
    memcpy(&msgs, resp + 40, 8);
    assert_int_equal(msgs, 0);
    free(resp);
    fp_wire_stream_destroy(st);

    /* A stream abandoned half-way is cancelled by destroy; the handler sees a broken stream. */
    assert_int_equal(fp_wire_stream_open(r.ch, M_UP, 5000, &st), FP_OK);
    assert_int_equal(fp_wire_stream_write(st, data, MiB), FP_OK);
    fp_wire_stream_destroy(st);

    /* A message above the client's limit fails the stream instead of sending a truncated one. */
    assert_int_equal(fp_wire_stream_open(r.ch, M_UP, 5000, &st), FP_OK);
    assert_int_equal(fp_wire_stream_write(st, data, MiB), FP_OK);
    assert_int_equal(fp_wire_stream_write(st, data, 2 * MiB), FP_ERR_RANGE);
    assert_int_equal(fp_wire_stream_write(st, data, 10), FP_ERR_IO);
    assert_int_equal(fp_wire_stream_finish(st, &resp, &rn, &code, msg), FP_ERR_IO);
    assert_int_equal(code, FP_WIRE_RESOURCE_EXHAUSTED);
    assert_null(resp);
    fp_wire_stream_destroy(st);

    assert_true(echo(r.ch, (const uint8_t *)"y", 1, 5000, &code));
    free(data);
    rig_free(&r);
}

static void test_message_limits(void **state)
{
    (void)state;
    rig_t r;
    /* Server accepts 1 MiB, client would send 8 MiB: the server refuses. */
    rig_insecure(&r, MiB, 8 * MiB);
    uint8_t *big = calloc(1, 2 * MiB);
    assert_non_null(big);
    int code = -1;
    assert_false(echo(r.ch, big, 2 * MiB, 10000, &code));
    assert_int_equal(code, FP_WIRE_RESOURCE_EXHAUSTED);
    assert_true(echo(r.ch, big, 1000, 5000, &code)); /* still serving */
    /* Server-side send limit: the 2 MiB response is refused by the server itself. */
    uint8_t *resp = NULL;
    size_t rn = 0;
    char msg[FP_WIRE_STATUS_MSG_MAX];
    assert_int_equal(fp_wire_call_unary(r.ch, M_BIG, big, 1, 5000, &resp, &rn, &code, msg), FP_ERR_IO);
    assert_int_equal(code, FP_WIRE_RESOURCE_EXHAUSTED);
    rig_free(&r);

    /* Client accepts 1 MiB: a 2 MiB request is refused before sending, a 2 MiB response on receipt. */
    rig_insecure(&r, 8 * MiB, MiB);
    assert_int_equal(fp_wire_call_unary(r.ch, M_ECHO, big, 2 * MiB, 5000, &resp, &rn, &code, msg), FP_ERR_RANGE);
    assert_int_equal(code, FP_WIRE_RESOURCE_EXHAUSTED);
    assert_int_equal(fp_wire_call_unary(r.ch, M_BIG, big, 1, 5000, &resp, &rn, &code, msg), FP_ERR_IO);
    assert_int_equal(code, FP_WIRE_RESOURCE_EXHAUSTED);
    assert_null(resp);
    assert_true(echo(r.ch, big, 1000, 5000, &code));
    free(big);
    rig_free(&r);
}

static void test_deadline(void **state)
{
    (void)state;
    rig_t r;
    rig_insecure(&r, 0, 0);
    atomic_store(&wait_entered, 0);
    atomic_store(&wait_saw_cancel, 0);
    uint8_t *resp = NULL;
    size_t rn = 0;
    int code = -1;
    char msg[FP_WIRE_STATUS_MSG_MAX];
    double t0 = now_s();
    assert_int_equal(fp_wire_call_unary(r.ch, M_WAIT, (const uint8_t *)"w", 1, 300, &resp, &rn, &code, msg),
                     FP_ERR_IO);
    double dt = now_s() - t0;
    assert_int_equal(code, FP_WIRE_DEADLINE_EXCEEDED);
    assert_true(dt >= 0.25 && dt < 5.0);
    /* The server keeps serving, and its handler learnt of the cancellation. */
    assert_true(echo(r.ch, (const uint8_t *)"after", 5, 5000, &code));
    for (int i = 0; i < 400 && !atomic_load(&wait_saw_cancel); i++)
        sleep_ms(5);
    assert_true(atomic_load(&wait_saw_cancel));
    rig_free(&r);
}

/* ---- mTLS ---- */

typedef struct {
    char dir[64], other[64];
    int ok;
} certs_t;

static int make_certs(certs_t *c)
{
    if (system("command -v openssl >/dev/null 2>&1") != 0)
        return 0;
    snprintf(c->dir, sizeof c->dir, "/tmp/fp_wire_certs_XXXXXX");
    snprintf(c->other, sizeof c->other, "/tmp/fp_wire_other_XXXXXX");
    if (!mkdtemp(c->dir) || !mkdtemp(c->other))
        return 0;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s/scripts/make-certs.sh %s alice bob >/dev/null", FEDPROF_SOURCE_DIR, c->dir);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/scripts/make-certs.sh %s mallory >/dev/null", FEDPROF_SOURCE_DIR, c->other);
    assert_int_equal(system(cmd), 0);
    c->ok = 1;
    return 1;
}

static void rm_certs(certs_t *c)
{
    char cmd[256];
    if (c->dir[0] && strstr(c->dir, "/tmp/fp_wire_certs_") == c->dir) {
        snprintf(cmd, sizeof cmd, "rm -rf %s", c->dir);
        assert_int_equal(system(cmd), 0);
    }
    if (c->other[0] && strstr(c->other, "/tmp/fp_wire_other_") == c->other) {
        snprintf(cmd, sizeof cmd, "rm -rf %s", c->other);
        assert_int_equal(system(cmd), 0);
    }
}

static void pathf(char *out, size_t n, const char *dir, const char *file)
{
    snprintf(out, n, "%s/%s", dir, file);
}

/* Call Who with the given client files; returns the status code, fills id. */
static int who(const char *target, const char *ca, const char *cert, const char *key, char *id, size_t idn)
{
    fp_wire_creds_t *cc = NULL;
    assert_int_equal(fp_wire_channel_creds_tls(ca, cert, key, NULL, &cc), FP_OK);
    fp_wire_channel_t *ch = NULL;
    assert_int_equal(fp_wire_channel_create(target, cc, 0, &ch), FP_OK);
    fp_wire_creds_destroy(cc); /* the channel keeps what it needs */
    uint8_t *resp = NULL;
    size_t rn = 0;
    int code = -1;
    char msg[FP_WIRE_STATUS_MSG_MAX];
    fp_status st = fp_wire_call_unary(ch, M_WHO, (const uint8_t *)"?", 1, 1500, &resp, &rn, &code, msg);
    if (st == FP_OK) {
        snprintf(id, idn, "%.*s", (int)rn, (const char *)resp);
        free(resp);
    }
    fp_wire_channel_destroy(ch);
    return code;
}

static void test_mtls(void **state)
{
    (void)state;
    certs_t c = {0};
    if (!make_certs(&c)) {
        rm_certs(&c);
        skip();
    }
    char ca[128], scert[128], skey[128], acert[128], akey[128], oca[128], mcert[128], mkey[128];
    pathf(ca, sizeof ca, c.dir, "ca.pem");
    pathf(scert, sizeof scert, c.dir, "server.pem");
    pathf(skey, sizeof skey, c.dir, "server.key");
    pathf(acert, sizeof acert, c.dir, "alice.pem");
    pathf(akey, sizeof akey, c.dir, "alice.key");
    pathf(oca, sizeof oca, c.other, "ca.pem");
    pathf(mcert, sizeof mcert, c.other, "mallory.pem");
    pathf(mkey, sizeof mkey, c.other, "mallory.key");

    fp_wire_creds_t *sc = NULL;
    assert_int_equal(fp_wire_server_creds_tls(ca, scert, skey, &sc), FP_OK);
    fp_wire_server_t *srv = NULL;
    assert_int_equal(fp_wire_server_create("127.0.0.1:0", sc, 0, methods, N_METHODS, &srv), FP_OK);
    fp_wire_creds_destroy(sc);
    char target[64], id[FP_WIRE_IDENTITY_MAX];
    /* 127.0.0.1 is in the server certificate's SAN (IP entry; so is DNS:localhost). An IP target
     * also keeps c-ares out: its /etc/hosts lookup of "localhost" leaks (see tests/lsan.supp). */
    snprintf(target, sizeof target, "127.0.0.1:%d", fp_wire_server_port(srv));
    atomic_store(&who_calls, 0);

    id[0] = '\0';
    assert_int_equal(who(target, ca, acert, akey, id, sizeof id), FP_WIRE_OK);
    assert_string_equal(id, "alice");
    assert_int_equal(atomic_load(&who_calls), 1);

    /* A client whose certificate another CA signed: refused (the handshake fails, so with
     * wait-for-ready the call ends at its deadline or as unavailable). */
    assert_int_not_equal(who(target, ca, mcert, mkey, id, sizeof id), FP_WIRE_OK);
    /* A client with no certificate at all: refused. */
    assert_int_not_equal(who(target, ca, NULL, NULL, id, sizeof id), FP_WIRE_OK);
    /* A client that trusts another CA does not accept the server. */
    assert_int_not_equal(who(target, oca, acert, akey, id, sizeof id), FP_WIRE_OK);
    assert_int_equal(atomic_load(&who_calls), 1); /* no refused client reached a handler */

    /* Plaintext against a TLS server fails too. */
    fp_wire_creds_t *ins = NULL;
    assert_int_equal(fp_wire_creds_insecure(&ins), FP_OK);
    fp_wire_channel_t *ch = NULL;
    assert_int_equal(fp_wire_channel_create(target, ins, 0, &ch), FP_OK);
    int code = -1;
    assert_false(echo(ch, (const uint8_t *)"p", 1, 1000, &code));
    assert_int_not_equal(code, FP_WIRE_OK);
    fp_wire_channel_destroy(ch);
    fp_wire_creds_destroy(ins);

    /* Bad files and misuse. */
    assert_int_equal(fp_wire_server_creds_tls(ca, scert, NULL, &sc), FP_ERR_INVALID);
    assert_null(sc);
    assert_int_equal(fp_wire_server_creds_tls("/nonexistent/ca.pem", scert, skey, &sc), FP_ERR_IO);
    assert_int_equal(fp_wire_server_creds_tls(ca, scert, "/dev/null", &sc), FP_ERR_FORMAT);
    fp_wire_creds_t *cc = NULL;
    assert_int_equal(fp_wire_channel_creds_tls(ca, acert, akey, NULL, &cc), FP_OK);
    fp_wire_server_t *bad = NULL;
    assert_int_equal(fp_wire_server_create("127.0.0.1:0", cc, 0, methods, N_METHODS, &bad), FP_ERR_INVALID);
    fp_wire_creds_destroy(cc);

    /* TLS is fine on any address (here: all interfaces, port chosen). */
    assert_int_equal(fp_wire_server_creds_tls(ca, scert, skey, &sc), FP_OK);
    assert_int_equal(fp_wire_server_create("0.0.0.0:0", sc, 0, methods, N_METHODS, &bad), FP_OK);
    fp_wire_server_destroy(bad);
    fp_wire_creds_destroy(sc);

    fp_wire_server_destroy(srv);
    rm_certs(&c);
}

/* ---- shutdown with a call in flight ---- */

typedef struct {
    fp_wire_channel_t *ch;
    int code;
    double dt;
} inflight_t;

static void *inflight_call(void *arg)
{
    inflight_t *a = arg;
    uint8_t *resp = NULL;
    size_t rn = 0;
    char msg[FP_WIRE_STATUS_MSG_MAX];
    double t0 = now_s();
    fp_wire_call_unary(a->ch, M_WAIT, (const uint8_t *)"w", 1, 20000, &resp, &rn, &a->code, msg);
    a->dt = now_s() - t0;
    free(resp);
    return NULL;
}

static void test_shutdown_inflight(void **state)
{
    (void)state;
    rig_t r;
    rig_insecure(&r, 0, 0);
    atomic_store(&wait_entered, 0);
    atomic_store(&wait_saw_cancel, 0);
    inflight_t a = {r.ch, -1, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, inflight_call, &a), 0);
    for (int i = 0; i < 1000 && !atomic_load(&wait_entered); i++)
        sleep_ms(5);
    assert_true(atomic_load(&wait_entered));
    /* Also a client stream left open, and a pending upload. */
    fp_wire_stream_t *st = NULL;
    assert_int_equal(fp_wire_stream_open(r.ch, M_UP, 20000, &st), FP_OK);
    assert_int_equal(fp_wire_stream_write(st, (const uint8_t *)"abc", 3), FP_OK);

    double t0 = now_s();
    fp_wire_server_destroy(r.srv);
    r.srv = NULL;
    double dt = now_s() - t0;
    pthread_join(t, NULL);
    assert_true(atomic_load(&wait_saw_cancel));
    assert_int_not_equal(a.code, FP_WIRE_OK);
    assert_true(dt < 5.0 && a.dt < 5.0);

    uint8_t *resp = NULL;
    size_t rn = 0;
    int code = -1;
    char msg[FP_WIRE_STATUS_MSG_MAX];
    assert_int_equal(fp_wire_stream_finish(st, &resp, &rn, &code, msg), FP_ERR_IO);
    assert_int_not_equal(code, FP_WIRE_OK);
    fp_wire_stream_destroy(st);
    /* With the server gone, a call ends at its deadline (wait-for-ready) with an error. */
    assert_false(echo(r.ch, (const uint8_t *)"z", 1, 300, &code));
    assert_int_not_equal(code, FP_WIRE_OK);
    rig_free(&r);
}

/* Many concurrent calls on one channel from several threads. */
typedef struct {
    fp_wire_channel_t *ch;
    int seed, ok;
} conc_t;

static void *conc_thread(void *arg)
{
    conc_t *a = arg;
    a->ok = 1;
    for (int i = 0; i < 25; i++) {
        uint8_t req[256];
        fill(req, (size_t)(a->seed * 1000 + i), sizeof req);
        int code = -1;
        if (!echo(a->ch, req, (size_t)(a->seed + i) % sizeof req, 5000, &code))
            a->ok = 0;
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    (void)state;
    rig_t r;
    rig_insecure(&r, 0, 0);
    enum { T = 6 };
    pthread_t th[T];
    conc_t a[T];
    for (int i = 0; i < T; i++) {
        a[i].ch = r.ch;
        a[i].seed = i;
        assert_int_equal(pthread_create(&th[i], NULL, conc_thread, &a[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_true(a[i].ok);
    }
    rig_free(&r);
}

/* Calls one after another are served by the same worker thread (no thread per call). */
static void test_worker_reuse(void **state)
{
    (void)state;
    rig_t r;
    rig_insecure(&r, 0, 0);
    atomic_store(&tid_calls, 0);
    enum { N = 20 };
    for (int i = 0; i < N; i++) {
        uint8_t *resp = NULL;
        size_t rn = 0;
        int code = -1;
        char msg[FP_WIRE_STATUS_MSG_MAX];
        assert_int_equal(fp_wire_call_unary(r.ch, M_TID, (const uint8_t *)"?", 1, 5000, &resp, &rn, &code, msg), FP_OK);
        assert_int_equal(rn, 1);
        free(resp);
        sleep_ms(20); /* the worker has long gone idle by the next call */
    }
    assert_int_equal(atomic_load(&tid_calls), N);
    int distinct = 0;
    for (int i = 0; i < N; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = tid_seen[i] == tid_seen[j];
        distinct += !seen;
    }
    if (distinct > 2)
        print_error("%d distinct threads served %d sequential calls\n", distinct, N);
    assert_true(distinct <= 2);
    rig_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unary_echo),       cmocka_unit_test(test_insecure_loopback_only),
        cmocka_unit_test(test_server_stream),    cmocka_unit_test(test_client_stream),
        cmocka_unit_test(test_message_limits),   cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_mtls),             cmocka_unit_test(test_shutdown_inflight),
        cmocka_unit_test(test_concurrent),       cmocka_unit_test(test_worker_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
