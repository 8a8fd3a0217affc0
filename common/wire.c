/* wire: gRPC C core wrapper (see wire.h for the model).
 *
 * Invariants that keep us clear of the core's traps:
 *  - Every grpc_call_start_batch we start is followed by a pluck of its tag on the call's own
 *    completion queue before anything else happens on that call, except RECV_CLOSE_ON_SERVER, whose
 *    tag is plucked before the server call is released. So at most one op of each kind is ever in
 *    flight, and no tag outlives the context that holds it.
 *  - SEND_STATUS_FROM_SERVER goes in a batch of send ops only.
 *  - Received byte buffers are copied out and freed with grpc_byte_buffer_destroy.
 *  - A completion queue is shut down only after the last batch on it completed and is drained to
 *    GRPC_QUEUE_SHUTDOWN before grpc_completion_queue_destroy.
 *  - Server shutdown: shutdown_and_notify, cancel_all_calls, the loop drains the notification queue
 *    until the shutdown tag, handler threads are joined, then grpc_server_destroy, then the queue is
 *    shut down and drained. */
#include "common/wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#define WIRE_PEM_MAX ((size_t)1 << 20)
#define WIRE_METHOD_MAX 256
/* Call requests kept posted on the server; gRPC queues calls that arrive while none is posted. */
#define WIRE_POSTED_REQUESTS 4
/* How often the server loop wakes up to free finished calls and join exited workers (ms). */
#define WIRE_REAP_MS 200
/* Calls served at once (one worker thread each); more are refused with RESOURCE_EXHAUSTED so that
 * peers cannot make the server start threads without bound. */
#define WIRE_MAX_ACTIVE_CALLS 1024
/* A worker whose call ended waits this long for the next call before it exits (ms): steady traffic
 * reuses threads instead of paying a thread's creation, first-touch faults and teardown per call. */
#define WIRE_WORKER_IDLE_MS 30000
/* Concurrent streams one connection may open (HTTP/2 SETTINGS); further calls wait client-side. */
#define WIRE_MAX_STREAMS_PER_CONN 64

/* glibc malloc settings made by the first server or channel (see wire_tune_malloc). */
#define WIRE_MALLOC_MMAP_THRESHOLD ((int)32 << 20)
#define WIRE_MALLOC_TRIM_THRESHOLD ((int)64 << 20)

static const uint8_t wire_empty[1] = {0};

const char *fp_wire_code_name(int code)
{
    static const char *names[] = {"OK",
                                  "CANCELLED",
                                  "UNKNOWN",
                                  "INVALID_ARGUMENT",
                                  "DEADLINE_EXCEEDED",
                                  "NOT_FOUND",
                                  "ALREADY_EXISTS",
                                  "PERMISSION_DENIED",
                                  "RESOURCE_EXHAUSTED",
                                  "FAILED_PRECONDITION",
                                  "ABORTED",
                                  "OUT_OF_RANGE",
                                  "UNIMPLEMENTED",
                                  "INTERNAL",
                                  "UNAVAILABLE",
                                  "DATA_LOSS",
                                  "UNAUTHENTICATED"};
    if (code < 0 || code >= (int)(sizeof names / sizeof names[0]))
        return "INVALID_CODE";
    return names[code];
}

/* ---- small helpers ------------------------------------------------------------------------------ */

static gpr_timespec wire_forever(void) { return gpr_inf_future(GPR_CLOCK_REALTIME); }

static void wire_set_msg(char *dst, const char *src, size_t srclen)
{
    if (!dst)
        return;
    size_t n = srclen < FP_WIRE_STATUS_MSG_MAX - 1 ? srclen : FP_WIRE_STATUS_MSG_MAX - 1;
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Growable receive buffer: reused across messages so a stream of 1 MiB chunks does not fault in
 * fresh pages for every message. Bounded by the message limit gRPC already enforced. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} wire_buf;

static int wire_buf_reserve(wire_buf *b, size_t n)
{
    if (n <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < n)
        cap = cap > SIZE_MAX / 2 ? n : cap * 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Copy a received message out of gRPC's slices. Does not free bb. */
static fp_status wire_bb_copy(grpc_byte_buffer *bb, wire_buf *out)
{
    grpc_byte_buffer_reader rd;
    out->len = 0;
    if (wire_buf_reserve(out, grpc_byte_buffer_length(bb)) != 0)
        return FP_FAIL(FP_ERR_NOMEM, "wire: message of %zu bytes", grpc_byte_buffer_length(bb));
    if (!grpc_byte_buffer_reader_init(&rd, bb))
        return FP_FAIL(FP_ERR_PARSE, "wire: unreadable message (bad compression?)");
    grpc_slice s;
    fp_status st = FP_OK;
    while (grpc_byte_buffer_reader_next(&rd, &s)) {
        size_t n = GRPC_SLICE_LENGTH(s);
        if (st == FP_OK && wire_buf_reserve(out, out->len + n) != 0)
            st = FP_FAIL(FP_ERR_NOMEM, "wire: message of %zu bytes", out->len + n);
        if (st == FP_OK) {
            memcpy(out->p + out->len, GRPC_SLICE_START_PTR(s), n);
            out->len += n;
        }
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&rd);
    return st;
}

/* A byte buffer holding a copy of data (gRPC may keep it after the send op completes). */
static grpc_byte_buffer *wire_bb_make(const uint8_t *data, size_t len)
{
    grpc_slice s = len ? grpc_slice_from_copied_buffer((const char *)data, len) : grpc_empty_slice();
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* Run one batch on call and wait for it (pluck on the call's own queue). 0: completed with success. */
static int wire_batch(grpc_call *call, grpc_completion_queue *cq, const grpc_op *ops, size_t n, void *tag)
{
    grpc_call_error e = grpc_call_start_batch(call, ops, n, tag, NULL);
    if (e != GRPC_CALL_OK)
        return -2; /* not started: no tag will arrive */
    grpc_event ev = grpc_completion_queue_pluck(cq, tag, wire_forever(), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success ? 0 : -1;
}

/* Shut down a pluck queue whose tags were all plucked, drain it and destroy it. */
static void wire_cq_close(grpc_completion_queue *cq)
{
    if (!cq)
        return;
    grpc_completion_queue_shutdown(cq);
    for (;;) {
        grpc_event ev = grpc_completion_queue_pluck(cq, NULL, wire_forever(), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
    }
    grpc_completion_queue_destroy(cq);
}

/* Why this exists: gRPC core reads every connection into malloc'd 8-64 KiB slices that it frees as
 * soon as a message is delivered, and sends every message from a malloc'd copy. With glibc's
 * defaults (an arena gives back any free top above 128 KiB; the mmap threshold moves on its own),
 * that memory goes back to the kernel after each message, so each received byte lands in a freshly
 * faulted, zeroed page. On the development VM, where a page fault is expensive, that was about half
 * of the CPU a streamed model cost (docs/BENCHMARKS.md, Transport). Serving blocks up to 32 MiB from
 * the arenas and keeping up to 64 MiB of free top per arena ends it; memory in use is unchanged,
 * freed memory is kept for reuse. Process-wide and done once; skipped when the user tuned malloc
 * through its environment variables (theirs win). A failure leaves glibc's defaults: slower only. */
static void wire_tune_malloc(void)
{
#ifdef __GLIBC__
    static const char *vars[] = {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                                 "MALLOC_MMAP_MAX_"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i]))
            return;
    const char *tun = getenv("GLIBC_TUNABLES");
    if (tun && strstr(tun, "glibc.malloc."))
        return;
    if (mallopt(M_MMAP_THRESHOLD, WIRE_MALLOC_MMAP_THRESHOLD) == 1)
        (void)mallopt(M_TRIM_THRESHOLD, WIRE_MALLOC_TRIM_THRESHOLD);
#endif
}

static pthread_once_t wire_malloc_once = PTHREAD_ONCE_INIT;

/* grpc_init() for a new server or channel, after the one-time malloc settings. */
static void wire_grpc_init(void)
{
    pthread_once(&wire_malloc_once, wire_tune_malloc);
    grpc_init();
}

static fp_status wire_read_pem(const char *path, char **out)
{
    *out = NULL;
    if (!path)
        return FP_FAIL(FP_ERR_INVALID, "wire: missing PEM file path");
    FILE *f = fopen(path, "rb");
    if (!f)
        return FP_FAIL(FP_ERR_IO, "wire: cannot open %s: %s", path, strerror(errno));
    char *buf = malloc(WIRE_PEM_MAX + 1);
    if (!buf) {
        fclose(f);
        return FP_FAIL(FP_ERR_NOMEM, "wire: PEM buffer");
    }
    size_t n = fread(buf, 1, WIRE_PEM_MAX + 1, f);
    int err = ferror(f);
    fclose(f);
    if (err || n == 0 || n > WIRE_PEM_MAX) {
        free(buf);
        return FP_FAIL(err ? FP_ERR_IO : FP_ERR_FORMAT, "wire: %s is %s", path,
                       err ? "unreadable" : (n == 0 ? "empty" : "larger than 1 MiB"));
    }
    buf[n] = '\0';
    if (!strstr(buf, "-----BEGIN ")) {
        free(buf);
        return FP_FAIL(FP_ERR_FORMAT, "wire: %s is not PEM", path);
    }
    *out = buf;
    return FP_OK;
}

/* ---- credentials -------------------------------------------------------------------------------- */

enum { CREDS_INSECURE = 1, CREDS_TLS_SERVER = 2, CREDS_TLS_CHANNEL = 3 };

struct fp_wire_creds {
    int kind;
    char *ca, *cert, *key; /* PEM text */
    char *override_name;
};

void fp_wire_creds_destroy(fp_wire_creds_t *c)
{
    if (!c)
        return;
    free(c->ca);
    free(c->cert);
    if (c->key) {
        /* The private key should not linger in freed heap memory. */
        volatile char *k = c->key;
        for (size_t i = 0; k[i]; i++)
            k[i] = 0;
        free(c->key);
    }
    free(c->override_name);
    free(c);
}

fp_status fp_wire_creds_insecure(fp_wire_creds_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "wire: NULL out");
    *out = calloc(1, sizeof **out);
    if (!*out)
        return FP_FAIL(FP_ERR_NOMEM, "wire: creds");
    (*out)->kind = CREDS_INSECURE;
    return FP_OK;
}

static fp_status creds_tls(int kind, const char *ca, const char *cert, const char *key, const char *override_name,
                           fp_wire_creds_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "wire: NULL out");
    *out = NULL;
    if ((cert == NULL) != (key == NULL))
        return FP_FAIL(FP_ERR_INVALID, "wire: a certificate needs its key and a key its certificate");
    if (kind == CREDS_TLS_SERVER && (!cert || !ca))
        return FP_FAIL(FP_ERR_INVALID, "wire: server TLS needs a CA, a certificate and a key");
    fp_wire_creds_t *c = calloc(1, sizeof *c);
    if (!c)
        return FP_FAIL(FP_ERR_NOMEM, "wire: creds");
    c->kind = kind;
    fp_status st = wire_read_pem(ca, &c->ca);
    if (st == FP_OK && cert)
        st = wire_read_pem(cert, &c->cert);
    if (st == FP_OK && key)
        st = wire_read_pem(key, &c->key);
    if (st == FP_OK && override_name && !(c->override_name = strdup(override_name)))
        st = FP_FAIL(FP_ERR_NOMEM, "wire: creds");
    if (st != FP_OK) {
        fp_wire_creds_destroy(c);
        return st;
    }
    *out = c;
    return FP_OK;
}

fp_status fp_wire_server_creds_tls(const char *ca_pem_path, const char *cert_path, const char *key_path,
                                   fp_wire_creds_t **out)
{
    return creds_tls(CREDS_TLS_SERVER, ca_pem_path, cert_path, key_path, NULL, out);
}

fp_status fp_wire_channel_creds_tls(const char *ca_pem_path, const char *cert_path, const char *key_path,
                                    const char *override_server_name, fp_wire_creds_t **out)
{
    return creds_tls(CREDS_TLS_CHANNEL, ca_pem_path, cert_path, key_path, override_server_name, out);
}

int fp_wire_addr_is_loopback(const char *addr)
{
    if (!addr)
        return 0;
    static const char *prefixes[] = {"dns:///", "dns:", "ipv4:", "ipv6:"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        size_t n = strlen(prefixes[i]);
        if (strncmp(addr, prefixes[i], n) == 0) {
            addr += n;
            break;
        }
    }
    char host[256];
    size_t hl;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end)
            return 0;
        hl = (size_t)(end - addr - 1);
        addr++;
    } else {
        const char *colon = strrchr(addr, ':');
        hl = (colon && strchr(addr, ':') == colon) ? (size_t)(colon - addr) : strlen(addr);
    }
    if (hl == 0 || hl >= sizeof host)
        return 0;
    memcpy(host, addr, hl);
    host[hl] = '\0';
    if (strcasecmp(host, "localhost") == 0)
        return 1;
    struct in_addr v4;
    if (inet_pton(AF_INET, host, &v4) == 1)
        return (ntohl(v4.s_addr) >> 24) == 127;
    struct in6_addr v6;
    if (inet_pton(AF_INET6, host, &v6) == 1) {
        static const uint8_t lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(v6.s6_addr, lo, 16) == 0)
            return 1;
        return memcmp(v6.s6_addr, mapped, 12) == 0 && v6.s6_addr[12] == 127;
    }
    return 0;
}

static fp_status wire_check_limit(size_t *max_msg)
{
    if (*max_msg == 0)
        *max_msg = FP_WIRE_DEFAULT_MAX_MSG;
    if (*max_msg > (size_t)INT32_MAX)
        return FP_FAIL(FP_ERR_RANGE, "wire: message limit %zu above %d", *max_msg, INT32_MAX);
    return FP_OK;
}

/* ---- server ------------------------------------------------------------------------------------- */

struct fp_wire_call {
    fp_wire_server_t *srv;
    /* Filled by grpc_server_request_call. */
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    grpc_completion_queue *cq; /* pluck queue bound to this call only */
    /* Set at dispatch. */
    char method[WIRE_METHOD_MAX];
    char identity[FP_WIRE_IDENTITY_MAX];
    char *peer; /* gpr_malloc'd by gRPC */
    fp_wire_handler_fn fn;
    void *user;
    /* State of the ops (handler thread only). */
    int sent_initial_md, finished;
    int close_started, close_done, close_cancelled;
    wire_buf rbuf;
    /* Tags: distinct addresses inside this context. */
    char tag_op, tag_close;
    /* Served by a worker thread; done is guarded by srv->mu. */
    int done;
    fp_wire_call_t *next;         /* in srv->calls */
    fp_wire_call_t *next_pending; /* in srv->pending */
};

struct fp_wire_server {
    grpc_server *server;
    grpc_completion_queue *cq; /* notification queue, drained by the loop thread */
    int port;
    size_t max_msg;
    fp_wire_method_t *methods;
    size_t n_methods;
    pthread_t loop;
    int loop_started;
    pthread_mutex_t mu;
    int shutting_down;     /* guarded by mu */
    fp_wire_call_t *calls; /* calls handed to a worker and not yet freed, guarded by mu */
    size_t n_calls;        /* length of calls, guarded by mu */
    /* Worker threads (guarded by mu): each runs calls one after another and exits after
     * WIRE_WORKER_IDLE_MS without one, or at shutdown. pending holds calls handed to idle workers;
     * n_idle is the idle workers not yet promised a pending call (so n_idle > 0 means a call put in
     * pending is taken without a new thread). */
    struct wire_worker *workers;
    size_t n_workers;
    fp_wire_call_t *pending, **pending_tail;
    size_t n_idle;
    int workers_stop;
    pthread_cond_t work_cv;
    char shutdown_tag;
};

typedef struct wire_worker {
    pthread_t thread;
    fp_wire_server_t *srv;
    fp_wire_call_t *first; /* the call it was started for */
    int exited;            /* guarded by srv->mu */
    struct wire_worker *next;
} wire_worker_t;

static void call_free(fp_wire_call_t *c)
{
    if (!c)
        return;
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    if (c->peer)
        gpr_free(c->peer);
    free(c->rbuf.p);
    free(c);
}

/* Post one request for a new call. Caller holds s->mu. */
static void server_post_request(fp_wire_server_t *s)
{
    fp_wire_call_t *c = calloc(1, sizeof *c);
    if (!c)
        return; /* gRPC keeps the call pending until a later request */
    c->srv = s;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    c->cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_call_error e = grpc_server_request_call(s->server, &c->call, &c->details, &c->md, c->cq, s->cq, c);
    if (e != GRPC_CALL_OK) {
        wire_cq_close(c->cq);
        call_free(c);
    }
}

static void handler_unimplemented(fp_wire_call_t *c, void *user)
{
    (void)user;
    fp_wire_call_finish(c, FP_WIRE_UNIMPLEMENTED, "method not implemented", NULL, 0);
}

static void call_read_identity(fp_wire_call_t *c)
{
    grpc_auth_context *ac = grpc_call_auth_context(c->call);
    if (!ac)
        return;
    if (grpc_auth_context_peer_is_authenticated(ac)) {
        grpc_auth_property_iterator it = grpc_auth_context_find_properties_by_name(ac, GRPC_X509_CN_PROPERTY_NAME);
        const grpc_auth_property *p = grpc_auth_property_iterator_next(&it);
        if (!p) {
            it = grpc_auth_context_peer_identity(ac);
            p = grpc_auth_property_iterator_next(&it);
        }
        if (p && p->value) {
            size_t n = p->value_length < sizeof c->identity - 1 ? p->value_length : sizeof c->identity - 1;
            memcpy(c->identity, p->value, n);
            c->identity[n] = '\0';
        }
    }
    grpc_auth_context_release(ac);
}

/* Serve one call on the current worker thread. */
static void call_serve(fp_wire_call_t *c)
{
    /* RECV_CLOSE_ON_SERVER first, alone: it completes when the call ends (or is cancelled), which is
     * how fp_wire_call_cancelled learns about it. Its tag is plucked before the call is released. */
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    if (grpc_call_start_batch(c->call, &op, 1, &c->tag_close, NULL) == GRPC_CALL_OK)
        c->close_started = 1;

    c->fn(c, c->user);
    if (!c->finished)
        fp_wire_call_finish(c, FP_WIRE_INTERNAL, "handler returned without a status", NULL, 0);
    if (c->close_started && !c->close_done) {
        grpc_completion_queue_pluck(c->cq, &c->tag_close, wire_forever(), NULL);
        c->close_done = 1;
    }
    grpc_call_unref(c->call);
    c->call = NULL;
    wire_cq_close(c->cq);
    c->cq = NULL;

    pthread_mutex_lock(&c->srv->mu);
    c->done = 1;
    pthread_mutex_unlock(&c->srv->mu);
}

static void *worker_main(void *arg)
{
    wire_worker_t *w = arg;
    fp_wire_server_t *s = w->srv;
    fp_wire_call_t *c = w->first;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        pthread_mutex_unlock(&s->mu);
        call_serve(c);
        pthread_mutex_lock(&s->mu);
        s->n_idle++;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += WIRE_WORKER_IDLE_MS / 1000;
        until.tv_nsec += (long)(WIRE_WORKER_IDLE_MS % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        int timed_out = 0;
        while (!s->pending && !s->workers_stop && !timed_out)
            timed_out = pthread_cond_timedwait(&s->work_cv, &s->mu, &until) == ETIMEDOUT;
        if (!s->pending) { /* stopping, or idle too long: this worker's idle slot goes with it */
            s->n_idle--;
            break;
        }
        c = s->pending; /* promised to an idle worker: the dispatcher already took one off n_idle */
        if (!(s->pending = c->next_pending))
            s->pending_tail = &s->pending;
    }
    w->exited = 1;
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Hand an accepted call to a worker: an idle one, else a new one. The loop thread owns c until then. */
static void server_dispatch(fp_wire_server_t *s, fp_wire_call_t *c)
{
    size_t ml = GRPC_SLICE_LENGTH(c->details.method);
    if (ml >= sizeof c->method)
        ml = sizeof c->method - 1; /* cannot match a registered name: answered UNIMPLEMENTED */
    memcpy(c->method, GRPC_SLICE_START_PTR(c->details.method), ml);
    c->method[ml] = '\0';
    c->fn = handler_unimplemented;
    for (size_t i = 0; i < s->n_methods; i++)
        if (strcmp(s->methods[i].method, c->method) == 0) {
            c->fn = s->methods[i].fn;
            c->user = s->methods[i].user;
            break;
        }
    c->peer = grpc_call_get_peer(c->call);
    call_read_identity(c);

    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (s->n_calls >= WIRE_MAX_ACTIVE_CALLS) {
        rc = -1;
    } else if (s->n_idle > 0) {
        s->n_idle--;
        c->next_pending = NULL;
        *s->pending_tail = c;
        s->pending_tail = &c->next_pending;
        pthread_cond_signal(&s->work_cv);
    } else {
        wire_worker_t *w = calloc(1, sizeof *w);
        if (!w) {
            rc = 1;
        } else {
            w->srv = s;
            w->first = c;
            if ((rc = pthread_create(&w->thread, NULL, worker_main, w)) != 0) {
                free(w);
            } else {
                w->next = s->workers;
                s->workers = w;
                s->n_workers++;
            }
        }
    }
    if (rc == 0) {
        c->next = s->calls;
        s->calls = c;
        s->n_calls++;
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != 0) {
        /* No batch was started on this call: cancelling and releasing it leaves no tag behind. */
        grpc_call_cancel_with_status(c->call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                     rc < 0 ? "server busy: too many calls" : "server out of threads", NULL);
        grpc_call_unref(c->call);
        wire_cq_close(c->cq);
        call_free(c);
    }
}

/* Free the calls that finished and join the workers that exited (at shutdown, wait_all: stop
 * every worker, wait for its calls, then free everything). */
static void server_reap(fp_wire_server_t *s, int wait_all)
{
    wire_worker_t *gone = NULL;
    pthread_mutex_lock(&s->mu);
    if (wait_all) {
        s->workers_stop = 1;
        pthread_cond_broadcast(&s->work_cv);
    }
    for (wire_worker_t **wp = &s->workers; *wp;) {
        wire_worker_t *w = *wp;
        if (wait_all || w->exited) {
            *wp = w->next;
            s->n_workers--;
            w->next = gone;
            gone = w;
        } else {
            wp = &w->next;
        }
    }
    pthread_mutex_unlock(&s->mu);
    while (gone) { /* outside the lock: a worker finishing its call takes it */
        wire_worker_t *w = gone;
        gone = w->next;
        pthread_join(w->thread, NULL);
        free(w);
    }
    fp_wire_call_t *reap = NULL;
    pthread_mutex_lock(&s->mu);
    fp_wire_call_t **pp = &s->calls;
    while (*pp) {
        fp_wire_call_t *c = *pp;
        if (wait_all || c->done) {
            *pp = c->next;
            s->n_calls--;
            c->next = reap;
            reap = c;
        } else {
            pp = &c->next;
        }
    }
    pthread_mutex_unlock(&s->mu);
    while (reap) { /* done, or (wait_all) every worker was joined above */
        fp_wire_call_t *c = reap;
        reap = c->next;
        call_free(c);
    }
}

/* The notification loop: accepts calls until the shutdown tag arrives. */
static void *server_loop(void *arg)
{
    fp_wire_server_t *s = arg;
    for (;;) {
        gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(WIRE_REAP_MS, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(s->cq, dl, NULL);
        if (ev.type == GRPC_QUEUE_TIMEOUT) {
            server_reap(s, 0);
            continue;
        }
        if (ev.type == GRPC_QUEUE_SHUTDOWN || ev.tag == &s->shutdown_tag)
            break;
        fp_wire_call_t *c = ev.tag;
        if (!ev.success) {
            /* A request that will never get a call (the server is shutting down). */
            wire_cq_close(c->cq);
            call_free(c);
            continue;
        }
        pthread_mutex_lock(&s->mu);
        if (!s->shutting_down)
            server_post_request(s);
        pthread_mutex_unlock(&s->mu);
        server_dispatch(s, c);
        server_reap(s, 0);
    }
    return NULL;
}

int fp_wire_server_port(const fp_wire_server_t *s) { return s ? s->port : 0; }

void fp_wire_server_destroy(fp_wire_server_t *s)
{
    if (!s)
        return;
    if (s->server) {
        pthread_mutex_lock(&s->mu);
        s->shutting_down = 1;
        pthread_mutex_unlock(&s->mu);
        grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
        grpc_server_cancel_all_calls(s->server);
        if (s->loop_started)
            pthread_join(s->loop, NULL);
        else
            server_loop(s);
        server_reap(s, 1);
        grpc_server_destroy(s->server);
    }
    if (s->cq) {
        grpc_completion_queue_shutdown(s->cq);
        for (;;) {
            grpc_event ev = grpc_completion_queue_next(s->cq, wire_forever(), NULL);
            if (ev.type == GRPC_QUEUE_SHUTDOWN)
                break;
            if (ev.type == GRPC_OP_COMPLETE && ev.tag != &s->shutdown_tag) {
                fp_wire_call_t *c = ev.tag;
                if (c->call) /* cannot happen after shutdown, but never leak a call */
                    grpc_call_unref(c->call);
                wire_cq_close(c->cq);
                call_free(c);
            }
        }
        grpc_completion_queue_destroy(s->cq);
    }
    for (size_t i = 0; i < s->n_methods; i++)
        free((char *)s->methods[i].method);
    free(s->methods);
    pthread_cond_destroy(&s->work_cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
    grpc_shutdown();
}

fp_status fp_wire_server_create(const char *listen_addr, const fp_wire_creds_t *creds, size_t max_msg_bytes,
                                const fp_wire_method_t *methods, size_t n_methods, fp_wire_server_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "wire: NULL out");
    *out = NULL;
    if (!listen_addr || !creds || (n_methods && !methods))
        return FP_FAIL(FP_ERR_INVALID, "wire: server needs an address, credentials and methods");
    if (creds->kind == CREDS_TLS_CHANNEL)
        return FP_FAIL(FP_ERR_INVALID, "wire: channel credentials given to a server");
    if (creds->kind == CREDS_INSECURE && !fp_wire_addr_is_loopback(listen_addr))
        return FP_FAIL(FP_ERR_INVALID, "wire: plaintext refused on non-loopback address %s (use TLS)", listen_addr);
    fp_status st = wire_check_limit(&max_msg_bytes);
    if (st != FP_OK)
        return st;
    for (size_t i = 0; i < n_methods; i++)
        if (!methods[i].method || !methods[i].fn || strlen(methods[i].method) >= WIRE_METHOD_MAX)
            return FP_FAIL(FP_ERR_INVALID, "wire: method %zu has no name, a too long name or no handler", i);

    fp_wire_server_t *s = calloc(1, sizeof *s);
    if (!s)
        return FP_FAIL(FP_ERR_NOMEM, "wire: server");
    pthread_mutex_init(&s->mu, NULL);
    s->pending_tail = &s->pending;
    pthread_condattr_t ca; /* the workers' idle timeout is on the monotonic clock */
    int cv_ok = pthread_condattr_init(&ca) == 0;
    if (cv_ok) {
        cv_ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&s->work_cv, &ca) == 0;
        pthread_condattr_destroy(&ca);
    }
    if (!cv_ok) {
        pthread_mutex_destroy(&s->mu);
        free(s);
        return FP_FAIL(FP_ERR_INTERNAL, "wire: worker condition variable");
    }
    wire_grpc_init(); /* released by fp_wire_server_destroy, also on the failure paths below */
    s->max_msg = max_msg_bytes;
    if (n_methods) {
        s->methods = calloc(n_methods, sizeof *s->methods);
        if (!s->methods) {
            fp_wire_server_destroy(s);
            return FP_FAIL(FP_ERR_NOMEM, "wire: methods");
        }
        for (size_t i = 0; i < n_methods; i++) {
            s->methods[i] = methods[i];
            s->methods[i].method = strdup(methods[i].method);
            s->n_methods = i + 1;
            if (!s->methods[i].method) {
                fp_wire_server_destroy(s);
                return FP_FAIL(FP_ERR_NOMEM, "wire: methods");
            }
        }
    }

    grpc_arg args[4];
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = (int)max_msg_bytes;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = (int)max_msg_bytes;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_MAX_CONCURRENT_STREAMS;
    args[2].value.integer = WIRE_MAX_STREAMS_PER_CONN;
    /* No BDP probing on the server: on loopback it grows each stream's window to tens of MB, which
     * gRPC fills and holds for every push waiting for a receive buffer (docs/BENCHMARKS.md,
     * "Coordinator memory": 1,474 -> 799 MB peak with 50 clients pushing 100 MB, no slower). */
    args[3].type = GRPC_ARG_INTEGER;
    args[3].key = (char *)GRPC_ARG_HTTP2_BDP_PROBE;
    args[3].value.integer = 0;
    grpc_channel_args cargs = {4, args};

    grpc_server *server = grpc_server_create(&cargs, NULL);
    s->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(server, s->cq, NULL);

    grpc_server_credentials *sc;
    if (creds->kind == CREDS_INSECURE) {
        sc = grpc_insecure_server_credentials_create();
    } else {
        grpc_ssl_pem_key_cert_pair pair = {creds->key, creds->cert};
        sc = grpc_ssl_server_credentials_create_ex(creds->ca, &pair, 1,
                                                   GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY, NULL);
    }
    int port = sc ? grpc_server_add_http2_port(server, listen_addr, sc) : 0;
    if (sc)
        grpc_server_credentials_release(sc);
    if (port <= 0) {
        /* Never started and no listener: destroying it needs no shutdown. */
        grpc_server_destroy(server);
        fp_wire_server_destroy(s);
        return FP_FAIL(sc ? FP_ERR_IO : FP_ERR_INVALID, "wire: cannot %s %s", sc ? "listen on" : "use TLS files for",
                       listen_addr);
    }
    s->port = port;
    grpc_server_start(server);
    s->server = server;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < WIRE_POSTED_REQUESTS; i++)
        server_post_request(s);
    pthread_mutex_unlock(&s->mu);
    if (pthread_create(&s->loop, NULL, server_loop, s) != 0) {
        fp_wire_server_destroy(s); /* runs the loop inline to drain */
        return FP_FAIL(FP_ERR_NOMEM, "wire: cannot start the server thread");
    }
    s->loop_started = 1;
    *out = s;
    return FP_OK;
}

const char *fp_wire_call_method(const fp_wire_call_t *c) { return c->method; }
const char *fp_wire_call_identity(const fp_wire_call_t *c) { return c->identity; }
const char *fp_wire_call_peer(const fp_wire_call_t *c) { return c->peer ? c->peer : ""; }

int64_t fp_wire_call_deadline_left_ms(const fp_wire_call_t *c)
{
    gpr_timespec dl = c->details.deadline;
    if (gpr_time_cmp(dl, gpr_inf_future(dl.clock_type)) == 0)
        return INT64_MAX;
    gpr_timespec left = gpr_time_sub(dl, gpr_now(dl.clock_type));
    if (left.tv_sec < 0)
        return 0;
    return (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
}

int fp_wire_call_cancelled(fp_wire_call_t *c)
{
    if (c->close_started && !c->close_done) {
        grpc_event ev = grpc_completion_queue_pluck(c->cq, &c->tag_close, gpr_inf_past(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_OP_COMPLETE)
            c->close_done = 1;
    }
    return c->close_done && c->close_cancelled;
}

fp_status fp_wire_call_read(fp_wire_call_t *c, const uint8_t **data, size_t *len, int *more)
{
    *data = NULL;
    *len = 0;
    *more = 0;
    if (c->finished)
        return FP_FAIL(FP_ERR_INVALID, "wire: read after finish");
    grpc_byte_buffer *bb = NULL;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &bb;
    int rc = wire_batch(c->call, c->cq, &op, 1, &c->tag_op);
    if (rc != 0) {
        if (bb)
            grpc_byte_buffer_destroy(bb);
        return FP_FAIL(FP_ERR_IO, "wire: %s: receive failed (call cancelled or broken)", c->method);
    }
    if (!bb) {
        if (fp_wire_call_cancelled(c))
            return FP_FAIL(FP_ERR_IO, "wire: %s: call cancelled", c->method);
        return FP_OK; /* half-close */
    }
    fp_status st = wire_bb_copy(bb, &c->rbuf);
    grpc_byte_buffer_destroy(bb);
    if (st != FP_OK)
        return st;
    *data = c->rbuf.len ? c->rbuf.p : wire_empty;
    *len = c->rbuf.len;
    *more = 1;
    return FP_OK;
}

fp_status fp_wire_call_write(fp_wire_call_t *c, const uint8_t *data, size_t len)
{
    if (c->finished)
        return FP_FAIL(FP_ERR_INVALID, "wire: write after finish");
    if (!data && len)
        return FP_FAIL(FP_ERR_INVALID, "wire: NULL data");
    if (len > c->srv->max_msg)
        return FP_FAIL(FP_ERR_RANGE, "wire: message of %zu bytes above the limit %zu", len, c->srv->max_msg);
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->sent_initial_md) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        c->sent_initial_md = 1;
    }
    grpc_byte_buffer *bb = wire_bb_make(data, len);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = bb;
    int rc = wire_batch(c->call, c->cq, ops, n, &c->tag_op);
    grpc_byte_buffer_destroy(bb);
    if (rc != 0)
        return FP_FAIL(FP_ERR_IO, "wire: %s: send failed (call cancelled or broken)", c->method);
    return FP_OK;
}

fp_status fp_wire_call_finish(fp_wire_call_t *c, int code, const char *msg, const uint8_t *resp, size_t resp_len)
{
    if (c->finished)
        return FP_FAIL(FP_ERR_INVALID, "wire: call finished twice");
    c->finished = 1;
    if (code < 0 || code > FP_WIRE_UNAUTHENTICATED)
        code = FP_WIRE_UNKNOWN;
    if (resp && resp_len > c->srv->max_msg) {
        /* Say why instead of letting gRPC fail the send. */
        code = FP_WIRE_RESOURCE_EXHAUSTED;
        msg = "response above the server's message limit";
        resp = NULL;
    }
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->sent_initial_md) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        c->sent_initial_md = 1;
    }
    grpc_byte_buffer *bb = NULL;
    if (resp) {
        bb = wire_bb_make(resp, resp_len);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
    }
    grpc_slice details = grpc_slice_from_copied_string(msg ? msg : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.trailing_metadata_count = 0;
    ops[n].data.send_status_from_server.status = (grpc_status_code)code;
    ops[n++].data.send_status_from_server.status_details = &details;
    int rc = wire_batch(c->call, c->cq, ops, n, &c->tag_op);
    grpc_slice_unref(details);
    if (bb)
        grpc_byte_buffer_destroy(bb);
    if (rc != 0)
        return FP_FAIL(FP_ERR_IO, "wire: %s: status not delivered (client gone)", c->method);
    return FP_OK;
}

/* ---- client ------------------------------------------------------------------------------------- */

struct fp_wire_channel {
    grpc_channel *ch;
    size_t max_msg;
};

fp_status fp_wire_channel_create(const char *target, const fp_wire_creds_t *creds, size_t max_msg_bytes,
                                 fp_wire_channel_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "wire: NULL out");
    *out = NULL;
    if (!target || !creds)
        return FP_FAIL(FP_ERR_INVALID, "wire: channel needs a target and credentials");
    if (creds->kind == CREDS_TLS_SERVER)
        return FP_FAIL(FP_ERR_INVALID, "wire: server credentials given to a channel");
    if (creds->kind == CREDS_INSECURE && !fp_wire_addr_is_loopback(target))
        return FP_FAIL(FP_ERR_INVALID, "wire: plaintext refused to non-loopback target %s (use TLS)", target);
    fp_status st = wire_check_limit(&max_msg_bytes);
    if (st != FP_OK)
        return st;
    fp_wire_channel_t *ch = calloc(1, sizeof *ch);
    if (!ch)
        return FP_FAIL(FP_ERR_NOMEM, "wire: channel");
    ch->max_msg = max_msg_bytes;
    wire_grpc_init();

    grpc_arg args[4];
    memset(args, 0, sizeof args);
    size_t n = 0;
    args[n].type = GRPC_ARG_INTEGER;
    args[n].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[n++].value.integer = (int)max_msg_bytes;
    args[n].type = GRPC_ARG_INTEGER;
    args[n].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[n++].value.integer = (int)max_msg_bytes;
    /* Retries would buffer streamed messages; the client retries whole exchanges itself. */
    args[n].type = GRPC_ARG_INTEGER;
    args[n].key = (char *)GRPC_ARG_ENABLE_RETRIES;
    args[n++].value.integer = 0;
    if (creds->override_name) {
        args[n].type = GRPC_ARG_STRING;
        args[n].key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
        args[n++].value.string = creds->override_name;
    }
    grpc_channel_args cargs = {n, args};

    grpc_channel_credentials *cc;
    if (creds->kind == CREDS_INSECURE) {
        cc = grpc_insecure_credentials_create();
    } else {
        grpc_ssl_pem_key_cert_pair pair = {creds->key, creds->cert};
        cc = grpc_ssl_credentials_create_ex(creds->ca, creds->cert ? &pair : NULL, NULL, NULL);
    }
    if (!cc) {
        free(ch);
        grpc_shutdown();
        return FP_FAIL(FP_ERR_INVALID, "wire: bad TLS files for %s", target);
    }
    ch->ch = grpc_channel_create(target, cc, &cargs);
    grpc_channel_credentials_release(cc);
    if (!ch->ch) {
        free(ch);
        grpc_shutdown();
        return FP_FAIL(FP_ERR_IO, "wire: cannot create a channel to %s", target);
    }
    *out = ch;
    return FP_OK;
}

void fp_wire_channel_destroy(fp_wire_channel_t *ch)
{
    if (!ch)
        return;
    grpc_channel_destroy(ch->ch);
    free(ch);
    grpc_shutdown();
}

/* One client call: its own pluck queue, and what the ops write into. */
typedef struct {
    grpc_call *call;
    grpc_completion_queue *cq;
    grpc_metadata_array md_initial, md_trailing;
    grpc_status_code status;
    grpc_slice details;
    const char *error_string; /* gpr_malloc'd by gRPC, may stay NULL */
    char tag;
} wire_ccall;

static fp_status ccall_start(fp_wire_channel_t *ch, const char *method, int64_t deadline_ms, wire_ccall *cc)
{
    memset(cc, 0, sizeof *cc);
    cc->details = grpc_empty_slice();
    grpc_metadata_array_init(&cc->md_initial);
    grpc_metadata_array_init(&cc->md_trailing);
    if (!ch || !method || method[0] != '/')
        return FP_FAIL(FP_ERR_INVALID, "wire: call needs a channel and a method \"/pkg.Service/Method\"");
    if (deadline_ms <= 0 || deadline_ms > FP_WIRE_MAX_DEADLINE_MS)
        return FP_FAIL(FP_ERR_INVALID, "wire: deadline %lld ms outside (0, %lld]", (long long)deadline_ms,
                       (long long)FP_WIRE_MAX_DEADLINE_MS);
    cc->cq = grpc_completion_queue_create_for_pluck(NULL);
    gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(deadline_ms, GPR_TIMESPAN));
    grpc_slice m = grpc_slice_from_copied_string(method);
    cc->call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cc->cq, m, NULL, dl, NULL);
    grpc_slice_unref(m);
    if (!cc->call)
        return FP_FAIL(FP_ERR_IO, "wire: cannot create a call to %s", method);
    return FP_OK;
}

static void ccall_end(wire_ccall *cc)
{
    if (cc->call)
        grpc_call_unref(cc->call);
    cc->call = NULL;
    wire_cq_close(cc->cq);
    cc->cq = NULL;
    grpc_metadata_array_destroy(&cc->md_initial);
    grpc_metadata_array_destroy(&cc->md_trailing);
    grpc_slice_unref(cc->details);
    cc->details = grpc_empty_slice();
    if (cc->error_string)
        gpr_free((void *)cc->error_string);
    cc->error_string = NULL;
}

static void op_send_initial_md(grpc_op *op)
{
    op->op = GRPC_OP_SEND_INITIAL_METADATA;
    op->flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY | GRPC_INITIAL_METADATA_WAIT_FOR_READY_EXPLICITLY_SET;
}

static void op_recv_status(grpc_op *op, wire_ccall *cc)
{
    op->op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op->data.recv_status_on_client.trailing_metadata = &cc->md_trailing;
    op->data.recv_status_on_client.status = &cc->status;
    op->data.recv_status_on_client.status_details = &cc->details;
    op->data.recv_status_on_client.error_string = &cc->error_string;
}

/* Turn the received status into our result. */
static fp_status ccall_result(wire_ccall *cc, const char *method, int *grpc_status_out, char *status_msg)
{
    if (grpc_status_out)
        *grpc_status_out = (int)cc->status;
    wire_set_msg(status_msg, (const char *)GRPC_SLICE_START_PTR(cc->details), GRPC_SLICE_LENGTH(cc->details));
    if (cc->status == GRPC_STATUS_OK)
        return FP_OK;
    return FP_FAIL(FP_ERR_IO, "wire: %s: %s: %.*s", method, fp_wire_code_name((int)cc->status),
                   (int)(GRPC_SLICE_LENGTH(cc->details) < 200 ? GRPC_SLICE_LENGTH(cc->details) : 200),
                   (const char *)GRPC_SLICE_START_PTR(cc->details));
}

static fp_status wire_local_fail(fp_status st, int code, int *grpc_status_out, char *status_msg)
{
    if (grpc_status_out)
        *grpc_status_out = code;
    const char *m = fp_error_message();
    wire_set_msg(status_msg, m, strlen(m));
    return st;
}

/* Copy a received response into a malloc'd buffer for the caller. */
static fp_status wire_bb_to_malloc(grpc_byte_buffer *bb, uint8_t **resp, size_t *resp_len)
{
    wire_buf b = {0};
    fp_status st = wire_bb_copy(bb, &b);
    if (st != FP_OK) {
        free(b.p);
        return st;
    }
    if (!b.p && !(b.p = malloc(1)))
        return FP_FAIL(FP_ERR_NOMEM, "wire: response");
    *resp = b.p;
    *resp_len = b.len;
    return FP_OK;
}

fp_status fp_wire_call_unary(fp_wire_channel_t *ch, const char *method, const uint8_t *req, size_t req_len,
                             int64_t deadline_ms, uint8_t **resp, size_t *resp_len, int *grpc_status_out,
                             char *status_msg)
{
    if (!resp || !resp_len || (!req && req_len))
        return wire_local_fail(FP_FAIL(FP_ERR_INVALID, "wire: unary call needs resp, resp_len and req"),
                               FP_WIRE_INVALID_ARGUMENT, grpc_status_out, status_msg);
    *resp = NULL;
    *resp_len = 0;
    if (ch && req_len > ch->max_msg)
        return wire_local_fail(FP_FAIL(FP_ERR_RANGE, "wire: request of %zu bytes above the limit %zu", req_len,
                                       ch->max_msg),
                               FP_WIRE_RESOURCE_EXHAUSTED, grpc_status_out, status_msg);
    wire_ccall cc;
    fp_status st = ccall_start(ch, method, deadline_ms, &cc);
    if (st != FP_OK) {
        ccall_end(&cc);
        return wire_local_fail(st, FP_WIRE_INVALID_ARGUMENT, grpc_status_out, status_msg);
    }
    grpc_byte_buffer *send = wire_bb_make(req, req_len), *recv = NULL;
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    op_send_initial_md(&ops[0]);
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &cc.md_initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv;
    op_recv_status(&ops[5], &cc);
    int rc = wire_batch(cc.call, cc.cq, ops, 6, &cc.tag);
    grpc_byte_buffer_destroy(send);
    if (rc == -2) {
        ccall_end(&cc);
        return wire_local_fail(FP_FAIL(FP_ERR_INTERNAL, "wire: %s: batch refused", method), FP_WIRE_INTERNAL,
                               grpc_status_out, status_msg);
    }
    st = ccall_result(&cc, method, grpc_status_out, status_msg);
    if (st == FP_OK) {
        if (!recv) {
            st = wire_local_fail(FP_FAIL(FP_ERR_IO, "wire: %s: OK without a response message", method),
                                 FP_WIRE_INTERNAL, grpc_status_out, status_msg);
        } else if ((st = wire_bb_to_malloc(recv, resp, resp_len)) != FP_OK) {
            st = wire_local_fail(st, FP_WIRE_RESOURCE_EXHAUSTED, grpc_status_out, status_msg);
        }
    }
    if (recv)
        grpc_byte_buffer_destroy(recv);
    ccall_end(&cc);
    return st;
}

fp_status fp_wire_call_server_stream(fp_wire_channel_t *ch, const char *method, const uint8_t *req,
                                     size_t req_len, int64_t deadline_ms, fp_wire_msg_fn on_msg, void *user,
                                     int *grpc_status_out, char *status_msg)
{
    if (!on_msg || (!req && req_len))
        return wire_local_fail(FP_FAIL(FP_ERR_INVALID, "wire: server stream needs on_msg and req"),
                               FP_WIRE_INVALID_ARGUMENT, grpc_status_out, status_msg);
    if (ch && req_len > ch->max_msg)
        return wire_local_fail(FP_FAIL(FP_ERR_RANGE, "wire: request of %zu bytes above the limit %zu", req_len,
                                       ch->max_msg),
                               FP_WIRE_RESOURCE_EXHAUSTED, grpc_status_out, status_msg);
    wire_ccall cc;
    fp_status st = ccall_start(ch, method, deadline_ms, &cc);
    if (st != FP_OK) {
        ccall_end(&cc);
        return wire_local_fail(st, FP_WIRE_INVALID_ARGUMENT, grpc_status_out, status_msg);
    }
    grpc_byte_buffer *send = wire_bb_make(req, req_len);
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    op_send_initial_md(&ops[0]);
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &cc.md_initial;
    int rc = wire_batch(cc.call, cc.cq, ops, 4, &cc.tag);
    grpc_byte_buffer_destroy(send);
    int cancelled_by_us = 0;
    if (rc == 0) {
        wire_buf buf = {0};
        for (;;) {
            grpc_byte_buffer *recv = NULL;
            grpc_op op;
            memset(&op, 0, sizeof op);
            op.op = GRPC_OP_RECV_MESSAGE;
            op.data.recv_message.recv_message = &recv;
            rc = wire_batch(cc.call, cc.cq, &op, 1, &cc.tag);
            if (rc != 0 || !recv) {
                if (recv)
                    grpc_byte_buffer_destroy(recv);
                break;
            }
            fp_status cs = wire_bb_copy(recv, &buf);
            grpc_byte_buffer_destroy(recv);
            if (cs != FP_OK || on_msg(buf.len ? buf.p : wire_empty, buf.len, user) != 0) {
                grpc_call_cancel(cc.call, NULL);
                cancelled_by_us = 1;
                break;
            }
        }
        free(buf.p);
    }
    memset(ops, 0, sizeof ops);
    op_recv_status(&ops[0], &cc);
    rc = wire_batch(cc.call, cc.cq, ops, 1, &cc.tag);
    if (rc == -2) {
        ccall_end(&cc);
        return wire_local_fail(FP_FAIL(FP_ERR_INTERNAL, "wire: %s: batch refused", method), FP_WIRE_INTERNAL,
                               grpc_status_out, status_msg);
    }
    st = ccall_result(&cc, method, grpc_status_out, status_msg);
    if (st == FP_OK && cancelled_by_us) /* the server finished before our cancel landed */
        st = wire_local_fail(FP_FAIL(FP_ERR_IO, "wire: %s: stopped by the receiver", method), FP_WIRE_CANCELLED,
                             grpc_status_out, status_msg);
    ccall_end(&cc);
    return st;
}

struct fp_wire_stream {
    fp_wire_channel_t *ch;
    char method[WIRE_METHOD_MAX];
    wire_ccall cc;
    int sent_initial_md, finished, broken;
};

fp_status fp_wire_stream_open(fp_wire_channel_t *ch, const char *method, int64_t deadline_ms, fp_wire_stream_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "wire: NULL out");
    *out = NULL;
    if (method && strlen(method) >= WIRE_METHOD_MAX)
        return FP_FAIL(FP_ERR_INVALID, "wire: method name too long");
    fp_wire_stream_t *st = calloc(1, sizeof *st);
    if (!st)
        return FP_FAIL(FP_ERR_NOMEM, "wire: stream");
    fp_status rc = ccall_start(ch, method, deadline_ms, &st->cc);
    if (rc != FP_OK) {
        ccall_end(&st->cc);
        free(st);
        return rc;
    }
    st->ch = ch;
    snprintf(st->method, sizeof st->method, "%s", method);
    *out = st;
    return FP_OK;
}

fp_status fp_wire_stream_write(fp_wire_stream_t *st, const uint8_t *data, size_t len)
{
    if (!st || (!data && len))
        return FP_FAIL(FP_ERR_INVALID, "wire: NULL stream or data");
    if (st->finished)
        return FP_FAIL(FP_ERR_INVALID, "wire: write after finish");
    if (st->broken)
        return FP_FAIL(FP_ERR_IO, "wire: %s: stream already failed", st->method);
    if (len > st->ch->max_msg) {
        /* Fail the whole call so the server does not take a truncated stream for a complete one. */
        grpc_call_cancel_with_status(st->cc.call, GRPC_STATUS_RESOURCE_EXHAUSTED, "message above the client's limit",
                                     NULL);
        st->broken = 1;
        return FP_FAIL(FP_ERR_RANGE, "wire: message of %zu bytes above the limit %zu", len, st->ch->max_msg);
    }
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!st->sent_initial_md) {
        op_send_initial_md(&ops[n++]);
        st->sent_initial_md = 1;
    }
    grpc_byte_buffer *bb = wire_bb_make(data, len);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = bb;
    int rc = wire_batch(st->cc.call, st->cc.cq, ops, n, &st->cc.tag);
    grpc_byte_buffer_destroy(bb);
    if (rc != 0) {
        st->broken = 1;
        return FP_FAIL(FP_ERR_IO, "wire: %s: send failed (call ended; finish the stream for its status)",
                       st->method);
    }
    return FP_OK;
}

fp_status fp_wire_stream_finish(fp_wire_stream_t *st, uint8_t **resp, size_t *resp_len, int *grpc_status_out,
                                char *status_msg)
{
    if (!st || !resp || !resp_len)
        return wire_local_fail(FP_FAIL(FP_ERR_INVALID, "wire: finish needs a stream, resp and resp_len"),
                               FP_WIRE_INVALID_ARGUMENT, grpc_status_out, status_msg);
    *resp = NULL;
    *resp_len = 0;
    if (st->finished)
        return wire_local_fail(FP_FAIL(FP_ERR_INVALID, "wire: stream finished twice"), FP_WIRE_INVALID_ARGUMENT,
                               grpc_status_out, status_msg);
    st->finished = 1;
    wire_ccall *cc = &st->cc;
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!st->broken) {
        if (!st->sent_initial_md) {
            op_send_initial_md(&ops[n++]);
            st->sent_initial_md = 1;
        }
        ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        (void)wire_batch(cc->call, cc->cq, ops, n, &cc->tag); /* a failure shows in the status */
    }
    grpc_byte_buffer *recv = NULL;
    memset(ops, 0, sizeof ops);
    n = 0;
    if (st->sent_initial_md) {
        /* Initial metadata can only arrive on a call that sent its own. */
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &cc->md_initial;
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n++].data.recv_message.recv_message = &recv;
    }
    op_recv_status(&ops[n++], cc);
    int rc = wire_batch(cc->call, cc->cq, ops, n, &cc->tag);
    if (rc == -2) {
        if (recv)
            grpc_byte_buffer_destroy(recv);
        return wire_local_fail(FP_FAIL(FP_ERR_INTERNAL, "wire: %s: batch refused", st->method), FP_WIRE_INTERNAL,
                               grpc_status_out, status_msg);
    }
    fp_status s = ccall_result(cc, st->method, grpc_status_out, status_msg);
    if (s == FP_OK) {
        if (!recv)
            s = wire_local_fail(FP_FAIL(FP_ERR_IO, "wire: %s: OK without a response message", st->method),
                                FP_WIRE_INTERNAL, grpc_status_out, status_msg);
        else if ((s = wire_bb_to_malloc(recv, resp, resp_len)) != FP_OK)
            s = wire_local_fail(s, FP_WIRE_RESOURCE_EXHAUSTED, grpc_status_out, status_msg);
    }
    if (recv)
        grpc_byte_buffer_destroy(recv);
    return s;
}

void fp_wire_stream_destroy(fp_wire_stream_t *st)
{
    if (!st)
        return;
    if (!st->finished && st->cc.call)
        grpc_call_cancel(st->cc.call, NULL);
    ccall_end(&st->cc);
    free(st);
}
