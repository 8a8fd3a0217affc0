/* fedprof-bench-transport: how fast a model moves over common/wire, against a raw TCP socket.
 *
 * In one process: a wire server on 127.0.0.1:0 with PullModel (server streaming: fp_ts_writer over
 * the model) and PushUpdate (client streaming: fp_ts_reader into a reused buffer, digest checked),
 * once over plaintext and once over mutual TLS; and, as baselines, the same bytes over a raw TCP
 * socket pair on 127.0.0.1 (a thread write()s the buffer, this thread read()s it into another)
 * and over raw TLS on such a pair (OpenSSL SSL_write/SSL_read, the same certificates and mutual
 * authentication), one row per TLS 1.3 cipher suite. The raw TLS rows separate "what TLS costs"
 * from "what gRPC costs". For the same reason each gRPC mode also moves the bytes without
 * tensor_stream ("bytes" rows: the same chunks sent as opaque messages, no protobuf, no SHA-256,
 * no finiteness check), and SHA-256 and memcpy of the buffer are timed alone on one thread.
 *
 * After an untimed warm-up of every path at every size, every repetition runs every path for
 * every size, in an order rotated by one each repetition, so that on a shared machine all paths
 * see the same load; the table shows medians, the range, ratios to raw TCP (and, for mTLS, to raw
 * TLS) of the same size, and the CPU time the whole process (all threads: both ends, gRPC's own)
 * spent per GB. Sizes are MiB of float32 payload; MB/s is 10^6 payload bytes per second, end to
 * end (call start to verified data); what is delivered is compared with what was sent after the
 * clock stops.
 *
 *   fedprof-bench-transport [--sizes-mib 64,256] [--reps 5] [--chunk-bytes 0] [--certs DIR]
 *                           [--tls-suites S1:S2] [--no-bytes] [--only TEXT] [--json] [--rotate N]
 * --certs DIR: ca.pem, server.pem/.key and bench.pem/.key, e.g. from scripts/make-certs.sh DIR bench
 * (without it, the TLS rows are skipped). --tls-suites: put first the suite gRPC negotiates (gRPC
 * 1.51 over OpenSSL 3 offers OpenSSL's default TLS 1.3 order and gets TLS_AES_256_GCM_SHA384), as
 * the "vs raw TLS" column compares with the first. --json: one line per measurement (bench/
 * transport.sh runs one repetition per process and tables them). A benchmark, not a test: it never
 * fails because the machine is slow, only when a transfer is wrong. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/cli.h"
#include "common/log.h"
#include "common/params.h"
#include "common/tensor_stream.h"
#include "common/wire.h"

#define MiB ((size_t)1 << 20)
#define MAX_SIZES 8
#define MAX_REPS 101
#define MAX_SUITES 4
#define DEADLINE_MS ((int64_t)600 * 1000)
#define RAW_IO_BYTES MiB /* bytes per write()/read() call on the raw paths */
#define BENCH_LAYOUT 0x62656e6368747370ull
#define M_PULL_BYTES "/fedprof.bench.Transport/PullBytes"
#define M_PUSH_BYTES "/fedprof.bench.Transport/PushBytes"

/* ---- rows of the table -------------------------------------------------------------------------- */

enum {
    P_RAW = 0,
    P_RAWTLS0, /* one per suite: P_RAWTLS0 + i */
    P_PLAIN_PULL = P_RAWTLS0 + MAX_SUITES,
    P_PLAIN_PUSH,
    P_PLAIN_BPULL,
    P_PLAIN_BPUSH,
    P_TLS_PULL,
    P_TLS_PUSH,
    P_TLS_BPULL,
    P_TLS_BPUSH,
    P_SHA,
    P_COPY,
    P_COUNT
};

typedef struct {
    int on;
    char name[160];
    double sec[MAX_SIZES][MAX_REPS];
    double cpu[MAX_SIZES][MAX_REPS]; /* process CPU seconds (user + system, all threads) */
} path_t;

/* ---- small helpers ------------------------------------------------------------------------------ */

static int bench_fail(const char *what)
{
    fprintf(stderr, "fedprof-bench-transport: %s: %s\n", what, fp_error_message());
    return -1;
}

static int ssl_fail(const char *what)
{
    char buf[256];
    unsigned long e = ERR_get_error();
    ERR_error_string_n(e, buf, sizeof buf);
    fprintf(stderr, "fedprof-bench-transport: %s: %s\n", what, e ? buf : "(no OpenSSL error)");
    ERR_clear_error();
    return -1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, int n)
{
    double t[MAX_REPS];
    memcpy(t, v, (size_t)n * sizeof *t);
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* Share of all CPUs busy (any process) over ms milliseconds, from /proc/stat; -1 if unknown. */
static int busy_pct(int ms)
{
    unsigned long long a[8], b[8];
    for (int pass = 0; pass < 2; pass++) {
        unsigned long long *x = pass ? b : a;
        FILE *f = fopen("/proc/stat", "r");
        if (!f)
            return -1;
        int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &x[0], &x[1], &x[2], &x[3], &x[4], &x[5],
                       &x[6], &x[7]);
        fclose(f);
        if (n != 8)
            return -1;
        if (!pass) {
            struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    unsigned long long tot = 0, idle = (b[3] - a[3]) + (b[4] - a[4]);
    for (int i = 0; i < 8; i++)
        tot += b[i] - a[i];
    return tot ? (int)(100 * (tot - idle) / tot) : -1;
}

/* CPU seconds this process used so far (all threads, user + system). */
static double cpu_now(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

/* cpu_now() at the end of the last timed region (the checks after it are not counted). */
static double g_cpu_end;

static double loadavg1(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

/* ---- raw TCP and raw TLS ------------------------------------------------------------------------- */

/* A connected TCP pair over 127.0.0.1 (port chosen by the kernel). */
static int tcp_pair(int *snd, int *rcv)
{
    *snd = *rcv = -1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    int rc = -1;
    if (bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 1) == 0 &&
        getsockname(l, (struct sockaddr *)&a, &al) == 0 && (*snd = socket(AF_INET, SOCK_STREAM, 0)) >= 0 &&
        connect(*snd, (struct sockaddr *)&a, sizeof a) == 0 && (*rcv = accept(l, NULL, NULL)) >= 0)
        rc = 0;
    if (rc != 0) {
        fprintf(stderr, "fedprof-bench-transport: loopback TCP pair: %s\n", strerror(errno));
        if (*snd >= 0)
            close(*snd);
        *snd = *rcv = -1;
    }
    close(l);
    return rc;
}

typedef struct {
    int fd;
    SSL *ssl; /* NULL: plain write() */
    const uint8_t *src;
    size_t n;
    int ok;
} raw_sender_t;

static void *raw_send_main(void *p)
{
    raw_sender_t *s = p;
    size_t off = 0;
    while (off < s->n) {
        size_t k = s->n - off < RAW_IO_BYTES ? s->n - off : RAW_IO_BYTES;
        if (s->ssl) {
            int w = SSL_write(s->ssl, s->src + off, (int)k);
            if (w <= 0)
                return NULL;
            off += (size_t)w;
        } else {
            ssize_t w = send(s->fd, s->src + off, k, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return NULL;
            off += (size_t)w;
        }
    }
    s->ok = 1;
    return NULL;
}

/* Move n bytes from src (a sender thread) to dst (this thread). Seconds, or -1. */
static double raw_transfer(int sfd, int rfd, SSL *sssl, SSL *rssl, const uint8_t *src, uint8_t *dst, size_t n)
{
    raw_sender_t s = {sfd, sssl, src, n, 0};
    pthread_t t;
    double t0 = fp_now();
    if (pthread_create(&t, NULL, raw_send_main, &s) != 0)
        return -1;
    size_t got = 0;
    int ok = 1;
    while (got < n) {
        size_t k = n - got < RAW_IO_BYTES ? n - got : RAW_IO_BYTES;
        if (rssl) {
            int r = SSL_read(rssl, dst + got, (int)k);
            if (r <= 0) {
                ok = 0;
                break;
            }
            got += (size_t)r;
        } else {
            ssize_t r = recv(rfd, dst + got, k, 0);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                ok = 0;
                break;
            }
            got += (size_t)r;
        }
    }
    double dt = fp_now() - t0;
    g_cpu_end = cpu_now();
    pthread_join(t, NULL);
    if (!ok || !s.ok) {
        if (rssl || sssl)
            ssl_fail("raw TLS transfer");
        else
            fprintf(stderr, "fedprof-bench-transport: raw TCP transfer failed: %s\n", strerror(errno));
        return -1;
    }
    if (memcmp(src, dst, n) != 0) {
        fprintf(stderr, "fedprof-bench-transport: raw transfer delivered wrong bytes\n");
        return -1;
    }
    return dt;
}

/* A mutually authenticated TLS connection over a fresh TCP pair: the "server" end sends (like
 * PullModel), the client end receives. suite: a TLS 1.3 ciphersuite name. */
typedef struct {
    SSL_CTX *sctx, *cctx;
    SSL *s, *c;
    int sfd, cfd;
    char cipher[64], version[16];
} tls_pair_t;

static void tls_pair_close(tls_pair_t *p)
{
    SSL_free(p->s);
    SSL_free(p->c);
    SSL_CTX_free(p->sctx);
    SSL_CTX_free(p->cctx);
    if (p->sfd >= 0)
        close(p->sfd);
    if (p->cfd >= 0)
        close(p->cfd);
    memset(p, 0, sizeof *p);
    p->sfd = p->cfd = -1;
}

static void *tls_accept_main(void *p)
{
    SSL *s = p;
    return SSL_accept(s) == 1 ? s : NULL;
}

static int tls_ctx(SSL_CTX *ctx, const char *dir, const char *who, const char *suite)
{
    char ca[4096], cert[4096], key[4096];
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    snprintf(cert, sizeof cert, "%s/%s.pem", dir, who);
    snprintf(key, sizeof key, "%s/%s.key", dir, who);
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 || SSL_CTX_set_ciphersuites(ctx, suite) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1 ||
        SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        return ssl_fail(who);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    /* Read ahead into a 256 KiB buffer: without it SSL_read makes two read() calls per 16 KiB record,
     * and a baseline should not be handicapped by syscalls gRPC (which reads in bulk) does not make. */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, 256 * 1024);
    return 0;
}

static int tls_pair_open(tls_pair_t *p, const char *dir, const char *suite)
{
    memset(p, 0, sizeof *p);
    p->sfd = p->cfd = -1;
    /* The pair's "sender" fd accepts the TLS connection (server role), the receiver connects. */
    if (tcp_pair(&p->sfd, &p->cfd) != 0)
        return -1;
    p->sctx = SSL_CTX_new(TLS_server_method());
    p->cctx = SSL_CTX_new(TLS_client_method());
    if (!p->sctx || !p->cctx) {
        ssl_fail("SSL_CTX_new");
        goto fail;
    }
    if (tls_ctx(p->sctx, dir, "server", suite) != 0 || tls_ctx(p->cctx, dir, "bench", suite) != 0)
        goto fail;
    p->s = SSL_new(p->sctx);
    p->c = SSL_new(p->cctx);
    if (!p->s || !p->c || SSL_set_fd(p->s, p->sfd) != 1 || SSL_set_fd(p->c, p->cfd) != 1 ||
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(p->c), "127.0.0.1") != 1) {
        ssl_fail("SSL_new");
        goto fail;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, tls_accept_main, p->s) != 0)
        goto fail;
    int crc = SSL_connect(p->c);
    void *acc = NULL;
    pthread_join(t, &acc);
    if (crc != 1 || !acc) {
        ssl_fail("TLS handshake");
        goto fail;
    }
    snprintf(p->cipher, sizeof p->cipher, "%s", SSL_get_cipher_name(p->c));
    snprintf(p->version, sizeof p->version, "%s", SSL_get_version(p->c));
    return 0;
fail:
    tls_pair_close(p);
    return -1;
}

/* ---- gRPC server -------------------------------------------------------------------------------- */

/* Calls are made one at a time, so handlers never run concurrently and may share these. */
typedef struct {
    const float *model;       /* served by PullModel: the first n floats, n from the request */
    size_t cap;               /* floats in model, push_dst */
    uint32_t chunk_bytes;
    /* The model's stream digest per transfer size, computed before any run: PullModel sends it as
     * the coordinator does (once per model version), without hashing on every call. */
    int n_digests;
    uint64_t digest_n[MAX_SIZES];
    uint8_t digest[MAX_SIZES][FP_TS_DIGEST_LEN];
    fp_ts_reader_t *push_rd;  /* PushUpdate's reader, writes into push_dst */
    uint8_t *push_dst;        /* PushBytes' destination (same buffer) */
    char err[256];            /* last handler failure (for the report) */
} srv_ctx_t;

static int read_request_n(fp_wire_call_t *c, srv_ctx_t *s, uint64_t *n)
{
    const uint8_t *d;
    size_t len;
    int more;
    if (fp_wire_call_read(c, &d, &len, &more) != FP_OK || !more || len != 8) {
        fp_wire_call_finish(c, FP_WIRE_INVALID_ARGUMENT, "request: 8-byte parameter count", NULL, 0);
        return -1;
    }
    memcpy(n, d, 8);
    if (*n == 0 || *n > s->cap) {
        fp_wire_call_finish(c, FP_WIRE_OUT_OF_RANGE, "parameter count out of range", NULL, 0);
        return -1;
    }
    return 0;
}

static void h_pull_model(fp_wire_call_t *c, void *user)
{
    srv_ctx_t *s = user;
    uint64_t n;
    if (read_request_n(c, s, &n) != 0)
        return;
    fp_ts_header_t h;
    memset(&h, 0, sizeof h);
    h.kind = FP_TS_MODEL;
    h.round_id = 1;
    h.model_version = 1;
    h.param_count = n;
    h.layout_hash = BENCH_LAYOUT;
    h.chunk_bytes = s->chunk_bytes;
    const uint8_t *digest = NULL;
    for (int i = 0; i < s->n_digests && !digest; i++)
        if (s->digest_n[i] == n)
            digest = s->digest[i];
    fp_ts_writer_t *w = NULL;
    if ((digest ? fp_ts_writer_create_digested(&h, s->model, digest, &w) : fp_ts_writer_create(&h, s->model, &w)) !=
        FP_OK) {
        snprintf(s->err, sizeof s->err, "PullModel writer: %s", fp_error_message());
        fp_wire_call_finish(c, FP_WIRE_INTERNAL, s->err, NULL, 0);
        return;
    }
    for (;;) {
        const uint8_t *msg;
        size_t len;
        if (fp_ts_writer_next(w, &msg, &len) != FP_OK) {
            snprintf(s->err, sizeof s->err, "PullModel next: %s", fp_error_message());
            fp_wire_call_finish(c, FP_WIRE_INTERNAL, s->err, NULL, 0);
            break;
        }
        if (!msg) {
            fp_wire_call_finish(c, FP_WIRE_OK, NULL, NULL, 0);
            break;
        }
        if (fp_wire_call_write(c, msg, len) != FP_OK)
            break; /* the client went away: wire finishes the call */
    }
    fp_ts_writer_destroy(w);
}

static void h_push_update(fp_wire_call_t *c, void *user)
{
    srv_ctx_t *s = user;
    fp_ts_reader_reset(s->push_rd);
    for (;;) {
        const uint8_t *d;
        size_t len;
        int more;
        if (fp_wire_call_read(c, &d, &len, &more) != FP_OK)
            return;
        if (!more)
            break;
        if (fp_ts_reader_feed(s->push_rd, d, len) != FP_OK) {
            snprintf(s->err, sizeof s->err, "PushUpdate refused: %s", fp_error_message());
            fp_wire_call_finish(c, FP_WIRE_INVALID_ARGUMENT, s->err, NULL, 0);
            return;
        }
    }
    if (fp_ts_reader_finish(s->push_rd) != FP_OK) {
        snprintf(s->err, sizeof s->err, "PushUpdate incomplete: %s", fp_error_message());
        fp_wire_call_finish(c, FP_WIRE_INVALID_ARGUMENT, s->err, NULL, 0);
        return;
    }
    fp_wire_call_finish(c, FP_WIRE_OK, NULL, (const uint8_t *)"ok", 2);
}

/* The same chunks as opaque messages: what gRPC alone costs. */
static void h_pull_bytes(fp_wire_call_t *c, void *user)
{
    srv_ctx_t *s = user;
    uint64_t n;
    if (read_request_n(c, s, &n) != 0)
        return;
    const uint8_t *src = (const uint8_t *)s->model;
    size_t total = (size_t)n * 4, cb = s->chunk_bytes ? s->chunk_bytes : FP_TS_CHUNK_BYTES_DEFAULT;
    for (size_t off = 0; off < total; off += cb)
        if (fp_wire_call_write(c, src + off, total - off < cb ? total - off : cb) != FP_OK)
            return;
    fp_wire_call_finish(c, FP_WIRE_OK, NULL, NULL, 0);
}

static void h_push_bytes(fp_wire_call_t *c, void *user)
{
    srv_ctx_t *s = user;
    size_t got = 0, cap = s->cap * 4;
    for (;;) {
        const uint8_t *d;
        size_t len;
        int more;
        if (fp_wire_call_read(c, &d, &len, &more) != FP_OK)
            return;
        if (!more)
            break;
        if (len > cap - got) {
            fp_wire_call_finish(c, FP_WIRE_OUT_OF_RANGE, "too many bytes", NULL, 0);
            return;
        }
        memcpy(s->push_dst + got, d, len);
        got += len;
    }
    uint64_t g = got;
    fp_wire_call_finish(c, FP_WIRE_OK, NULL, (const uint8_t *)&g, 8);
}

/* ---- gRPC client side ---------------------------------------------------------------------------- */

static int on_pull_model(const uint8_t *d, size_t n, void *user)
{
    return fp_ts_reader_feed(user, d, n) != FP_OK;
}

typedef struct {
    uint8_t *dst;
    size_t got, cap;
} bytes_sink_t;

static int on_pull_bytes(const uint8_t *d, size_t n, void *user)
{
    bytes_sink_t *b = user;
    if (n > b->cap - b->got)
        return 1;
    memcpy(b->dst + b->got, d, n);
    b->got += n;
    return 0;
}

/* One PullModel of n floats into rd's destination; seconds or -1. */
static double grpc_pull(fp_wire_channel_t *ch, fp_ts_reader_t *rd, const float *model, uint64_t n)
{
    int code = -1;
    char msg[FP_WIRE_STATUS_MSG_MAX] = "";
    fp_ts_reader_reset(rd);
    double t0 = fp_now();
    fp_status st = fp_wire_call_server_stream(ch, FP_WIRE_METHOD_PULL_MODEL, (const uint8_t *)&n, 8, DEADLINE_MS,
                                              on_pull_model, rd, &code, msg);
    if (st == FP_OK)
        st = fp_ts_reader_finish(rd);
    double dt = fp_now() - t0;
    g_cpu_end = cpu_now();
    if (st != FP_OK)
        return bench_fail("PullModel"), -1;
    size_t got = 0;
    const float *data = fp_ts_reader_data(rd, &got);
    if (!data || got != n || memcmp(data, model, (size_t)n * 4) != 0) {
        fprintf(stderr, "fedprof-bench-transport: PullModel delivered a different model\n");
        return -1;
    }
    return dt;
}

/* One PushUpdate of update[n]; the server verifies the digest. Seconds or -1. */
static double grpc_push(fp_wire_channel_t *ch, const float *update, uint64_t n, uint32_t chunk_bytes,
                        const srv_ctx_t *srv)
{
    fp_ts_header_t h;
    memset(&h, 0, sizeof h);
    h.kind = FP_TS_UPDATE;
    h.round_id = 1;
    h.model_version = 1;
    h.param_count = n;
    h.layout_hash = BENCH_LAYOUT;
    h.chunk_bytes = chunk_bytes ? chunk_bytes : FP_TS_PUSH_CHUNK_BYTES; /* 0: as fedprof-client join */
    h.example_count_bucket = 1;
    h.local_steps = 1;
    snprintf(h.session, sizeof h.session, "bench");
    fp_ts_writer_t *w = NULL;
    fp_wire_stream_t *st = NULL;
    uint8_t *resp = NULL;
    size_t rlen = 0;
    int code = -1, ok = 0;
    char msg[FP_WIRE_STATUS_MSG_MAX] = "";
    double t0 = fp_now(), dt = -1;
    if (fp_ts_writer_create(&h, update, &w) != FP_OK || fp_wire_stream_open(ch, FP_WIRE_METHOD_PUSH_UPDATE,
                                                                             DEADLINE_MS, &st) != FP_OK) {
        bench_fail("PushUpdate start");
        goto out;
    }
    for (;;) {
        const uint8_t *m;
        size_t len;
        if (fp_ts_writer_next(w, &m, &len) != FP_OK) {
            bench_fail("PushUpdate writer");
            goto out;
        }
        if (!m)
            break;
        if (fp_wire_stream_write(st, m, len) != FP_OK)
            break; /* the status says why */
    }
    if (fp_wire_stream_finish(st, &resp, &rlen, &code, msg) != FP_OK) {
        fprintf(stderr, "fedprof-bench-transport: PushUpdate: %s (%s)\n", fp_error_message(), srv->err);
        goto out;
    }
    dt = fp_now() - t0;
    g_cpu_end = cpu_now();
    ok = rlen == 2 && memcmp(resp, "ok", 2) == 0 && memcmp(srv->push_dst, update, (size_t)n * 4) == 0;
    if (!ok)
        fprintf(stderr, "fedprof-bench-transport: PushUpdate delivered a different update\n");
out:
    free(resp);
    fp_wire_stream_destroy(st);
    fp_ts_writer_destroy(w);
    return ok ? dt : -1;
}

static double grpc_pull_bytes(fp_wire_channel_t *ch, const uint8_t *src, uint8_t *dst, size_t bytes)
{
    uint64_t n = bytes / 4;
    bytes_sink_t b = {dst, 0, bytes};
    int code = -1;
    char msg[FP_WIRE_STATUS_MSG_MAX] = "";
    double t0 = fp_now();
    fp_status st = fp_wire_call_server_stream(ch, M_PULL_BYTES, (const uint8_t *)&n, 8, DEADLINE_MS, on_pull_bytes,
                                              &b, &code, msg);
    double dt = fp_now() - t0;
    g_cpu_end = cpu_now();
    if (st != FP_OK)
        return bench_fail("PullBytes"), -1;
    if (b.got != bytes || memcmp(src, dst, bytes) != 0) {
        fprintf(stderr, "fedprof-bench-transport: PullBytes delivered other bytes\n");
        return -1;
    }
    return dt;
}

static double grpc_push_bytes(fp_wire_channel_t *ch, const uint8_t *src, size_t bytes, uint32_t chunk_bytes,
                              const srv_ctx_t *srv)
{
    size_t cb = chunk_bytes ? chunk_bytes : FP_TS_CHUNK_BYTES_DEFAULT;
    fp_wire_stream_t *st = NULL;
    uint8_t *resp = NULL;
    size_t rlen = 0;
    int code = -1, ok = 0;
    char msg[FP_WIRE_STATUS_MSG_MAX] = "";
    double t0 = fp_now(), dt = -1;
    if (fp_wire_stream_open(ch, M_PUSH_BYTES, DEADLINE_MS, &st) != FP_OK) {
        bench_fail("PushBytes open");
        goto out;
    }
    for (size_t off = 0; off < bytes; off += cb)
        if (fp_wire_stream_write(st, src + off, bytes - off < cb ? bytes - off : cb) != FP_OK)
            break;
    if (fp_wire_stream_finish(st, &resp, &rlen, &code, msg) != FP_OK) {
        bench_fail("PushBytes");
        goto out;
    }
    dt = fp_now() - t0;
    g_cpu_end = cpu_now();
    uint64_t g = 0;
    if (rlen == 8)
        memcpy(&g, resp, 8);
    ok = g == bytes && memcmp(srv->push_dst, src, bytes) == 0;
    if (!ok)
        fprintf(stderr, "fedprof-bench-transport: PushBytes delivered other bytes\n");
out:
    free(resp);
    fp_wire_stream_destroy(st);
    return ok ? dt : -1;
}

/* ---- main --------------------------------------------------------------------------------------- */

typedef struct {
    /* options */
    int reps, no_bytes, json;
    uint32_t chunk_bytes;
    const char *certs;
    size_t sizes[MAX_SIZES]; /* bytes */
    int n_sizes;
    char suites[MAX_SUITES][64];
    int n_suites;
    /* buffers (floats) */
    float *model, *update, *pull_dst, *push_dst;
    size_t cap;
    /* transports */
    int raw_s, raw_r;
    tls_pair_t tls[MAX_SUITES];
    fp_wire_server_t *srv_plain, *srv_tls;
    fp_wire_channel_t *ch_plain, *ch_tls;
    fp_ts_reader_t *pull_rd;
    srv_ctx_t srv;
    path_t path[P_COUNT];
    int busy[MAX_REPS];
    double load[MAX_REPS];
} bench_t;

static int parse_sizes(bench_t *b, const char *s)
{
    b->n_sizes = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(p, &end, 10);
        if (errno || end == p || v == 0 || v > 4096 || b->n_sizes == MAX_SIZES || (*end && *end != ','))
            return -1;
        b->sizes[b->n_sizes++] = (size_t)v * MiB;
        p = *end ? end + 1 : end;
    }
    return b->n_sizes ? 0 : -1;
}

static int parse_suites(bench_t *b, const char *s)
{
    b->n_suites = 0;
    const char *p = s;
    while (*p) {
        size_t n = strcspn(p, ":");
        if (n == 0 || n >= sizeof b->suites[0] || b->n_suites == MAX_SUITES)
            return -1;
        memcpy(b->suites[b->n_suites], p, n);
        b->suites[b->n_suites++][n] = '\0';
        p += n;
        if (*p)
            p++;
    }
    return 0;
}

/* Touch every page of p[0..n) (rewriting what is there). On this VM, memory left alone for a
 * while can be slow to touch again; doing it before each run keeps that out of the timings. */
static void touch_pages(void *p, size_t n)
{
    volatile uint8_t *q = p;
    for (size_t i = 0; i < n; i += 4096)
        q[i] = q[i];
}

/* Run path p once at size index si, rep r (-1: warm-up, not recorded); 0 or -1. */
static int run_one(bench_t *b, int p, int si, int r)
{
    size_t bytes = b->sizes[si];
    uint64_t n = bytes / 4;
    touch_pages(b->model, bytes);
    touch_pages(b->update, bytes);
    touch_pages(b->pull_dst, bytes);
    touch_pages(b->push_dst, bytes);
    double dt = -1, c0 = cpu_now();
    if (p == P_RAW) {
        dt = raw_transfer(b->raw_s, b->raw_r, NULL, NULL, (const uint8_t *)b->model, (uint8_t *)b->pull_dst, bytes);
    } else if (p >= P_RAWTLS0 && p < P_RAWTLS0 + MAX_SUITES) {
        tls_pair_t *t = &b->tls[p - P_RAWTLS0];
        dt = raw_transfer(t->sfd, t->cfd, t->s, t->c, (const uint8_t *)b->model, (uint8_t *)b->pull_dst, bytes);
    } else if (p == P_PLAIN_PULL || p == P_TLS_PULL) {
        dt = grpc_pull(p == P_PLAIN_PULL ? b->ch_plain : b->ch_tls, b->pull_rd, b->model, n);
    } else if (p == P_PLAIN_PUSH || p == P_TLS_PUSH) {
        dt = grpc_push(p == P_PLAIN_PUSH ? b->ch_plain : b->ch_tls, b->update, n, b->chunk_bytes, &b->srv);
    } else if (p == P_PLAIN_BPULL || p == P_TLS_BPULL) {
        dt = grpc_pull_bytes(p == P_PLAIN_BPULL ? b->ch_plain : b->ch_tls, (const uint8_t *)b->model,
                             (uint8_t *)b->pull_dst, bytes);
    } else if (p == P_PLAIN_BPUSH || p == P_TLS_BPUSH) {
        dt = grpc_push_bytes(p == P_PLAIN_BPUSH ? b->ch_plain : b->ch_tls, (const uint8_t *)b->update, bytes,
                             b->chunk_bytes, &b->srv);
    } else if (p == P_SHA) {
        uint8_t d[EVP_MAX_MD_SIZE];
        unsigned int dl = 0;
        double t0 = fp_now();
        int ok = EVP_Digest(b->model, bytes, d, &dl, EVP_sha256(), NULL) == 1;
        dt = ok ? fp_now() - t0 : (ssl_fail("SHA-256"), -1);
        g_cpu_end = cpu_now();
    } else if (p == P_COPY) {
        double t0 = fp_now();
        memcpy(b->pull_dst, b->model, bytes);
        dt = fp_now() - t0;
        g_cpu_end = cpu_now();
        if (memcmp(b->pull_dst, b->model, bytes) != 0)
            dt = -1;
    }
    double cpu = g_cpu_end - c0;
    if (dt <= 0)
        return -1;
    if (r < 0)
        return 0; /* warm-up */
    b->path[p].sec[si][r] = dt;
    b->path[p].cpu[si][r] = cpu;
    if (!b->json)
        fprintf(stderr, "  rep %d  %4zu MiB  %-50s %8.1f MB/s  %6.2f CPU s/GB\n", r + 1, bytes / MiB,
                b->path[p].name, (double)bytes / dt / 1e6, cpu / ((double)bytes / 1e9));
    return 0;
}

static fp_status setup_grpc(bench_t *b)
{
    fp_wire_method_t methods[] = {
        {FP_WIRE_METHOD_PULL_MODEL, h_pull_model, &b->srv},
        {FP_WIRE_METHOD_PUSH_UPDATE, h_push_update, &b->srv},
        {M_PULL_BYTES, h_pull_bytes, &b->srv},
        {M_PUSH_BYTES, h_push_bytes, &b->srv},
    };
    size_t nm = sizeof methods / sizeof methods[0];
    fp_wire_creds_t *ins = NULL, *sc = NULL, *cc = NULL;
    char target[64];
    fp_status st = fp_wire_creds_insecure(&ins);
    if (st == FP_OK)
        st = fp_wire_server_create("127.0.0.1:0", ins, 0, methods, nm, &b->srv_plain);
    if (st == FP_OK) {
        snprintf(target, sizeof target, "127.0.0.1:%d", fp_wire_server_port(b->srv_plain));
        st = fp_wire_channel_create(target, ins, 0, &b->ch_plain);
    }
    if (st == FP_OK && b->certs) {
        char ca[4096], scert[4096], skey[4096], ccert[4096], ckey[4096];
        snprintf(ca, sizeof ca, "%s/ca.pem", b->certs);
        snprintf(scert, sizeof scert, "%s/server.pem", b->certs);
        snprintf(skey, sizeof skey, "%s/server.key", b->certs);
        snprintf(ccert, sizeof ccert, "%s/bench.pem", b->certs);
        snprintf(ckey, sizeof ckey, "%s/bench.key", b->certs);
        st = fp_wire_server_creds_tls(ca, scert, skey, &sc);
        if (st == FP_OK)
            st = fp_wire_server_create("127.0.0.1:0", sc, 0, methods, nm, &b->srv_tls);
        if (st == FP_OK)
            st = fp_wire_channel_creds_tls(ca, ccert, ckey, NULL, &cc);
        if (st == FP_OK) {
            snprintf(target, sizeof target, "127.0.0.1:%d", fp_wire_server_port(b->srv_tls));
            st = fp_wire_channel_create(target, cc, 0, &b->ch_tls);
        }
    }
    fp_wire_creds_destroy(ins);
    fp_wire_creds_destroy(sc);
    fp_wire_creds_destroy(cc);
    return st;
}

static void print_table(const bench_t *b, const char *cipher_note)
{
    printf("| size | path | median MB/s | range MB/s | vs raw TCP | vs raw TLS | CPU s/GB |\n");
    printf("|---:|---|---:|---:|---:|---:|---:|\n");
    for (int si = 0; si < b->n_sizes; si++) {
        double mb = (double)b->sizes[si] / 1e6;
        double raw = mb / median(b->path[P_RAW].sec[si], b->reps);
        double rawtls = b->path[P_RAWTLS0].on ? mb / median(b->path[P_RAWTLS0].sec[si], b->reps) : 0;
        for (int p = 0; p < P_COUNT; p++) {
            if (!b->path[p].on)
                continue;
            double lo = 1e300, hi = 0;
            for (int r = 0; r < b->reps; r++) {
                double v = mb / b->path[p].sec[si][r];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            double med = mb / median(b->path[p].sec[si], b->reps);
            double cpu = median(b->path[p].cpu[si], b->reps) / (mb / 1e3);
            int tls = p >= P_TLS_PULL && p <= P_TLS_BPUSH;
            char vt[32] = "";
            if (tls && rawtls > 0)
                snprintf(vt, sizeof vt, "%.2f", med / rawtls);
            int bold = p == P_PLAIN_PULL || p == P_PLAIN_PUSH || p == P_TLS_PULL || p == P_TLS_PUSH;
            printf("| %zu MiB | %s | %s%.0f%s | %.0f–%.0f | %s%.2f%s | %s | %.2f |\n", b->sizes[si] / MiB,
                   b->path[p].name, bold ? "**" : "", med, bold ? "**" : "", lo, hi, bold ? "**" : "", med / raw,
                   bold ? "**" : "", vt, cpu);
        }
    }
    printf("\n%s\n\nGoals (median MB/s over raw TCP's, same size):\n", cipher_note);
    static const struct {
        int p;
        double goal;
    } goals[] = {{P_PLAIN_PULL, 0.80}, {P_PLAIN_PUSH, 0.80}, {P_TLS_PULL, 0.50}, {P_TLS_PUSH, 0.50}};
    for (int si = 0; si < b->n_sizes; si++)
        for (size_t g = 0; g < sizeof goals / sizeof goals[0]; g++) {
            const path_t *pp = &b->path[goals[g].p];
            if (!pp->on)
                continue;
            double ratio = median(b->path[P_RAW].sec[si], b->reps) / median(pp->sec[si], b->reps);
            printf("- %zu MiB %s: %.2f of raw TCP (goal >= %.2f): %s\n", b->sizes[si] / MiB, pp->name, ratio,
                   goals[g].goal, ratio >= goals[g].goal ? "met" : "NOT met");
        }
}

int main(int argc, char **argv)
{
    const char *sizes_s = "64,256";
    const char *suites_s = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";
    int reps = 5, help = 0, no_bytes = 0, json = 0, rotate = 0;
    uint64_t chunk = 0;
    const char *certs = NULL, *only = NULL;
    fp_opt_t opts[] = {
        {"sizes-mib", FP_OPT_STR, &sizes_s, 0, 0, NULL, "payload sizes in MiB, comma-separated"},
        {"reps", FP_OPT_INT, &reps, 1, MAX_REPS, NULL, "repetitions of every path (median shown)"},
        {"chunk-bytes", FP_OPT_U64, &chunk, 0, FP_TS_CHUNK_BYTES_MAX, NULL,
         "tensor chunk (0: as fedprof: 1 MiB pulls, 512 KiB pushes)"},
        {"certs", FP_OPT_STR, &certs, 0, 0, NULL, "dir of make-certs.sh DIR bench (omit: no TLS rows)"},
        {"tls-suites", FP_OPT_STR, &suites_s, 0, 0, NULL, "TLS 1.3 suites for the raw TLS rows, ':'-separated"},
        {"no-bytes", FP_OPT_FLAG, &no_bytes, 0, 0, NULL, "skip the gRPC rows without tensor_stream"},
        {"only", FP_OPT_STR, &only, 0, 0, NULL, "only the rows whose name contains this (raw TCP always runs)"},
        {"json", FP_OPT_FLAG, &json, 0, 0, NULL, "one JSON line per measurement instead of the table"},
        {"rotate", FP_OPT_INT, &rotate, 0, 1000, NULL, "start the order of paths this many places later"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    if (fp_cli_parse(argc - 1, argv + 1, opts) != FP_OK) {
        fprintf(stderr, "fedprof-bench-transport: %s\n", fp_error_message());
        return 2;
    }
    if (help) {
        fp_cli_print_help(opts);
        return 0;
    }
    static bench_t b; /* large (the timings table): not on the stack */
    b.reps = reps;
    b.no_bytes = no_bytes;
    b.json = json;
    b.chunk_bytes = (uint32_t)chunk;
    b.certs = certs;
    b.raw_s = b.raw_r = -1;
    for (int i = 0; i < MAX_SUITES; i++)
        b.tls[i].sfd = b.tls[i].cfd = -1;
    if (parse_sizes(&b, sizes_s) != 0 || parse_suites(&b, suites_s) != 0 ||
        (chunk && (chunk < FP_TS_CHUNK_BYTES_MIN || chunk % 4))) {
        fprintf(stderr, "fedprof-bench-transport: bad --sizes-mib, --tls-suites or --chunk-bytes\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int rc = 1;
    for (int i = 0; i < b.n_sizes; i++)
        if (b.sizes[i] / 4 > b.cap)
            b.cap = b.sizes[i] / 4;

    /* Rows. */
    snprintf(b.path[P_RAW].name, sizeof b.path[P_RAW].name, "raw TCP (write/read, 1 MiB calls)");
    b.path[P_RAW].on = 1;
    const char *names[] = {[P_PLAIN_PULL] = "gRPC plain PullModel", [P_PLAIN_PUSH] = "gRPC plain PushUpdate",
                           [P_PLAIN_BPULL] = "gRPC plain, bytes only, server stream",
                           [P_PLAIN_BPUSH] = "gRPC plain, bytes only, client stream",
                           [P_TLS_PULL] = "gRPC mTLS PullModel", [P_TLS_PUSH] = "gRPC mTLS PushUpdate",
                           [P_TLS_BPULL] = "gRPC mTLS, bytes only, server stream",
                           [P_TLS_BPUSH] = "gRPC mTLS, bytes only, client stream",
                           [P_SHA] = "SHA-256 alone (1 thread)", [P_COPY] = "memcpy alone (1 thread)"};
    for (int p = P_PLAIN_PULL; p < P_COUNT; p++) {
        snprintf(b.path[p].name, sizeof b.path[p].name, "%s", names[p]);
        int tls = p >= P_TLS_PULL && p <= P_TLS_BPUSH;
        int bytes_only = p == P_PLAIN_BPULL || p == P_PLAIN_BPUSH || p == P_TLS_BPULL || p == P_TLS_BPUSH;
        b.path[p].on = (!tls || certs) && (!bytes_only || !no_bytes) && (!only || strstr(b.path[p].name, only));
    }

    /* Buffers, touched now so that no run pays for page faults. */
    b.model = fp_buffer_alloc(b.cap);
    b.update = fp_buffer_alloc(b.cap);
    b.pull_dst = fp_buffer_alloc(b.cap);
    b.push_dst = fp_buffer_alloc(b.cap);
    if (!b.model || !b.update || !b.pull_dst || !b.push_dst) {
        bench_fail("buffers");
        goto out;
    }
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < b.cap; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        b.model[i] = (float)((int64_t)(x >> 40) - (1 << 23)) * 1e-7f;
        b.update[i] = -0.5f * b.model[i] + 1e-3f;
        b.pull_dst[i] = 1.0f;
        b.push_dst[i] = 1.0f;
    }

    /* Raw baselines. */
    if (tcp_pair(&b.raw_s, &b.raw_r) != 0)
        goto out;
    char cipher_note[1024] = "";
    if (certs) {
        for (int i = 0; i < b.n_suites; i++) {
            if (tls_pair_open(&b.tls[i], certs, b.suites[i]) != 0)
                goto out;
            int p = P_RAWTLS0 + i;
            snprintf(b.path[p].name, sizeof b.path[p].name, "raw TLS (OpenSSL, %s, %s)", b.tls[i].version,
                     b.tls[i].cipher);
            b.path[p].on = !only || strstr(b.path[p].name, only);
        }
        snprintf(cipher_note, sizeof cipher_note,
                 "Raw TLS: mutual authentication with the same certificates, OpenSSL %s, 16 KiB records (the "
                 "TLS maximum), read-ahead. \"vs raw TLS\" is against the first raw TLS row (%s).",
                 OpenSSL_version(OPENSSL_VERSION_STRING), b.tls[0].cipher);
    }

    /* gRPC. */
    b.srv.model = b.model;
    b.srv.cap = b.cap;
    b.srv.chunk_bytes = b.chunk_bytes;
    b.srv.push_dst = (uint8_t *)b.push_dst;
    for (int i = 0; i < b.n_sizes; i++) {
        b.srv.digest_n[i] = b.sizes[i] / 4;
        if (fp_ts_digest(b.model, b.srv.digest_n[i], b.srv.digest[i]) != FP_OK) {
            bench_fail("model digest");
            goto out;
        }
    }
    b.srv.n_digests = b.n_sizes;
    fp_ts_reader_opts_t ro;
    memset(&ro, 0, sizeof ro);
    ro.kind = FP_TS_UPDATE;
    ro.max_params = b.cap;
    ro.check_layout_hash = 1;
    ro.layout_hash = BENCH_LAYOUT;
    ro.dst = b.push_dst;
    ro.dst_cap = b.cap;
    if (fp_ts_reader_create(&ro, &b.srv.push_rd) != FP_OK) {
        bench_fail("push reader");
        goto out;
    }
    ro.kind = FP_TS_MODEL;
    ro.dst = b.pull_dst;
    if (fp_ts_reader_create(&ro, &b.pull_rd) != FP_OK) {
        bench_fail("pull reader");
        goto out;
    }
    if (setup_grpc(&b) != FP_OK) {
        bench_fail("gRPC setup");
        goto out;
    }

    /* Warm-up (untimed), every path at every size: connections, TLS handshakes, HTTP/2 windows, the
     * allocators, and the kernel's socket memory (on this VM the first transfer of a new size runs
     * several times slower: the guest pages it needs are touched for the first time). */
    for (int si = 0; si < b.n_sizes; si++)
        for (int p = 0; p < P_COUNT; p++)
            if (b.path[p].on && run_one(&b, p, si, -1) != 0) {
                fprintf(stderr, "fedprof-bench-transport: warm-up of %s failed\n", b.path[p].name);
                goto out;
            }

    int on[P_COUNT], n_on = 0;
    for (int p = 0; p < P_COUNT; p++)
        if (b.path[p].on)
            on[n_on++] = p;
    double t_start = fp_now();
    for (int r = 0; r < b.reps; r++) {
        b.busy[r] = busy_pct(500);
        b.load[r] = loadavg1();
        if (!json)
            fprintf(stderr, "rep %d/%d: CPUs %d%% busy with other work, load %.2f\n", r + 1, b.reps, b.busy[r],
                    b.load[r]);
        for (int si = 0; si < b.n_sizes; si++)
            for (int k = 0; k < n_on; k++) {
                int p = on[(k + r + rotate) % n_on];
                if (run_one(&b, p, si, r) != 0) {
                    fprintf(stderr, "fedprof-bench-transport: %s failed\n", b.path[p].name);
                    goto out;
                }
                if (json)
                    printf("{\"rep\": %d, \"mib\": %zu, \"path\": \"%s\", \"seconds\": %.6f, \"mb_per_s\": %.1f, "
                           "\"cpu_seconds\": %.6f, \"busy_before_pct\": %d}\n",
                           r + 1, b.sizes[si] / MiB, b.path[p].name, b.path[p].sec[si][r],
                           (double)b.sizes[si] / b.path[p].sec[si][r] / 1e6, b.path[p].cpu[si][r], b.busy[r]);
            }
    }
    double wall = fp_now() - t_start;

    if (!json) {
        int bmax = 0;
        double lmax = 0;
        for (int r = 0; r < b.reps; r++) {
            bmax = b.busy[r] > bmax ? b.busy[r] : bmax;
            lmax = b.load[r] > lmax ? b.load[r] : lmax;
        }
        printf("%d repetitions, paths interleaved (order rotated each repetition), %.0f s; chunk %u bytes; "
               "CPUs busy with other work before a repetition: max %d%%, load average up to %.2f\n\n",
               b.reps, wall, b.chunk_bytes ? b.chunk_bytes : FP_TS_CHUNK_BYTES_DEFAULT, bmax, lmax);
        print_table(&b, cipher_note);
    }
    rc = 0;
out:
    fp_wire_channel_destroy(b.ch_plain);
    fp_wire_channel_destroy(b.ch_tls);
    fp_wire_server_destroy(b.srv_plain);
    fp_wire_server_destroy(b.srv_tls);
    fp_ts_reader_destroy(b.pull_rd);
    fp_ts_reader_destroy(b.srv.push_rd);
    for (int i = 0; i < MAX_SUITES; i++)
        if (b.tls[i].sfd >= 0 || b.tls[i].s)
            tls_pair_close(&b.tls[i]);
    if (b.raw_s >= 0)
        close(b.raw_s);
    if (b.raw_r >= 0)
        close(b.raw_r);
    fp_buffer_free(b.model);
    fp_buffer_free(b.update);
    fp_buffer_free(b.pull_dst);
    fp_buffer_free(b.push_dst);
    return rc;
}
