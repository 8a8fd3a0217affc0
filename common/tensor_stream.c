/* tensor_stream: header -> chunks -> digest codecs over the protobuf-c types of fedprof.proto.
 *
 * Why an arena: protobuf-c copies every bytes field out of the packed message with the allocator it
 * is given, so unpacking a 1 MiB chunk with the default allocator is a fresh 1 MiB malloc per
 * message (above glibc's mmap threshold that faults fresh pages every time). The reader hands
 * protobuf-c a bump allocator over one buffer it reuses, sized for the largest message the current
 * state accepts; anything that does not fit (only hostile messages with thousands of fields) falls
 * back to malloc/free, bounded by the message length, which is itself bounded before unpacking. */
#include "common/tensor_stream.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "fedprof.pb-c.h"

#include "common/params.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tensor_stream sends float32 little-endian bytes as they lie in memory: a big-endian host needs swapping"
#endif

#define SHA256_LEN FP_TS_DIGEST_LEN
#define ARENA_SLACK 4096 /* message structs protobuf-c allocates besides the bytes field */
#define ERR_KEEP 256     /* bytes of the first refusal's message kept for later feeds */

const char *fp_ts_reject_name(fp_ts_reject r)
{
    switch (r) {
    case FP_TS_REJECT_NONE: return "NONE";
    case FP_TS_REJECT_MALFORMED: return "MALFORMED";
    case FP_TS_REJECT_OVERSIZED: return "OVERSIZED";
    case FP_TS_REJECT_SHAPE: return "SHAPE";
    case FP_TS_REJECT_NON_FINITE: return "NON_FINITE";
    case FP_TS_REJECT_DIGEST: return "DIGEST";
    case FP_TS_REJECT_VERSION: return "VERSION";
    }
    return "UNKNOWN";
}

uint64_t fp_ts_chunk_count(uint64_t n, uint32_t chunk_bytes)
{
    if (n == 0 || chunk_bytes == 0)
        return 0;
    uint64_t bytes = n * 4; /* callers bound n by FP_TS_MAX_PARAMS, so no overflow */
    return (bytes + chunk_bytes - 1) / chunk_bytes;
}

/* Index of the first non-finite value of x[0..n), or n. */
static size_t first_non_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return n;
}

static const char *nonfinite_name(float v)
{
    return isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf");
}

/* ---- message building (writer) and reading (reader), both kinds --------------------------------- */

typedef struct {
    Fedprof__V1__ModelStreamMessage mm;
    Fedprof__V1__UpdateStreamMessage um;
    Fedprof__V1__ModelHeader mh;
    Fedprof__V1__UpdateHeader uh;
    Fedprof__V1__NoiseParams np;
    Fedprof__V1__TensorChunk ch;
    Fedprof__V1__Digest dg;
} msgs_t;

static void msgs_init(msgs_t *m)
{
    Fedprof__V1__ModelStreamMessage mm = FEDPROF__V1__MODEL_STREAM_MESSAGE__INIT;
    Fedprof__V1__UpdateStreamMessage um = FEDPROF__V1__UPDATE_STREAM_MESSAGE__INIT;
    Fedprof__V1__ModelHeader mh = FEDPROF__V1__MODEL_HEADER__INIT;
    Fedprof__V1__UpdateHeader uh = FEDPROF__V1__UPDATE_HEADER__INIT;
    Fedprof__V1__NoiseParams np = FEDPROF__V1__NOISE_PARAMS__INIT;
    Fedprof__V1__TensorChunk ch = FEDPROF__V1__TENSOR_CHUNK__INIT;
    Fedprof__V1__Digest dg = FEDPROF__V1__DIGEST__INIT;
    m->mm = mm;
    m->um = um;
    m->mh = mh;
    m->uh = uh;
    m->np = np;
    m->ch = ch;
    m->dg = dg;
}

enum { BODY_NONE = 0, BODY_HEADER = 1, BODY_CHUNK = 2, BODY_DIGEST = 3 };

/* The stream message of kind with the given body (the body struct in m already filled). */
static ProtobufCMessage *msgs_wrap(msgs_t *m, fp_ts_kind kind, int body)
{
    if (kind == FP_TS_MODEL) {
        m->mm.body_case = (Fedprof__V1__ModelStreamMessage__BodyCase)body;
        if (body == BODY_HEADER)
            m->mm.header = &m->mh;
        else if (body == BODY_CHUNK)
            m->mm.chunk = &m->ch;
        else
            m->mm.digest = &m->dg;
        return &m->mm.base;
    }
    m->um.body_case = (Fedprof__V1__UpdateStreamMessage__BodyCase)body;
    if (body == BODY_HEADER)
        m->um.header = &m->uh;
    else if (body == BODY_CHUNK)
        m->um.chunk = &m->ch;
    else
        m->um.digest = &m->dg;
    return &m->um.base;
}

static void msgs_set_header(msgs_t *m, const fp_ts_header_t *h)
{
    if (h->kind == FP_TS_MODEL) {
        m->mh.round_id = h->round_id;
        m->mh.model_version = h->model_version;
        m->mh.parameter_count = h->param_count;
        m->mh.layout_hash = h->layout_hash;
        m->mh.dtype = FEDPROF__V1__DTYPE__DTYPE_F32_LE;
        m->mh.chunk_bytes = h->chunk_bytes;
        m->mh.chunk_count = h->chunk_count;
        return;
    }
    m->uh.protocol_version = h->protocol_version;
    m->uh.round_id = h->round_id;
    m->uh.base_model_version = h->model_version;
    m->uh.parameter_count = h->param_count;
    m->uh.layout_hash = h->layout_hash;
    m->uh.dtype = FEDPROF__V1__DTYPE__DTYPE_F32_LE;
    m->uh.clip_bound = h->clip_bound;
    m->uh.example_count_bucket = h->example_count_bucket;
    m->uh.local_steps = h->local_steps;
    m->uh.chunk_bytes = h->chunk_bytes;
    m->uh.chunk_count = h->chunk_count;
    /* protobuf-c packs "" as absent; the writer never modifies the strings. */
    m->uh.session = (char *)(uintptr_t)h->session;
    m->uh.ledger_entry = (char *)(uintptr_t)h->ledger_entry;
    if (h->noise.present) {
        m->np.mechanism = (Fedprof__V1__NoiseMechanism)h->noise.mechanism;
        m->np.unit = (Fedprof__V1__PrivacyUnit)h->noise.unit;
        m->np.noise_multiplier = h->noise.noise_multiplier;
        m->np.stddev = h->noise.stddev;
        m->np.granularity = h->noise.granularity;
        m->np.sampling_rate = h->noise.sampling_rate;
        m->np.steps = h->noise.steps;
        m->np.delta = h->noise.delta;
        m->uh.noise = &m->np;
    } else {
        m->uh.noise = NULL;
    }
}

/* Name of the first non-finite header number of an update header, or NULL. */
static const char *header_nonfinite(const fp_ts_header_t *h)
{
    if (h->kind != FP_TS_UPDATE)
        return NULL;
    if (!isfinite(h->clip_bound))
        return "clip_bound";
    if (!h->noise.present)
        return NULL;
    if (!isfinite(h->noise.noise_multiplier))
        return "noise.noise_multiplier";
    if (!isfinite(h->noise.stddev))
        return "noise.stddev";
    if (!isfinite(h->noise.granularity))
        return "noise.granularity";
    if (!isfinite(h->noise.sampling_rate))
        return "noise.sampling_rate";
    if (!isfinite(h->noise.delta))
        return "noise.delta";
    return NULL;
}

/* ---- Writer ------------------------------------------------------------------------------------ */

struct fp_ts_writer {
    fp_ts_header_t h;
    const uint8_t *bytes; /* the vector as bytes, h.param_count * 4 */
    uint64_t total;       /* bytes */
    uint64_t pos;         /* next message: 0 header, 1..chunk_count chunks, chunk_count+1 digest */
    msgs_t m;
    EVP_MD_CTX *sha;      /* NULL when the digest is known */
    int known;            /* sha256 given by the caller (fp_ts_writer_create_digested) */
    uint8_t sha256[SHA256_LEN];
    uint8_t *buf; /* packed message, reused */
    size_t cap;
};

fp_status fp_ts_digest(const float *data, uint64_t n, uint8_t sha256[FP_TS_DIGEST_LEN])
{
    if ((!data && n > 0) || !sha256)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_digest: NULL argument");
    if (n > FP_TS_MAX_PARAMS || n > SIZE_MAX / 4)
        return FP_FAIL(FP_ERR_RANGE, "fp_ts_digest: %llu parameters exceed the limit %llu", (unsigned long long)n,
                       (unsigned long long)FP_TS_MAX_PARAMS);
    size_t bad_i = first_non_finite(data, (size_t)n);
    if (bad_i < n)
        return FP_FAIL(FP_ERR_NUMERIC, "fp_ts_digest: element %zu is %s", bad_i, nonfinite_name(data[bad_i]));
    unsigned int dl = 0;
    if (EVP_Digest(data, (size_t)n * 4, sha256, &dl, EVP_sha256(), NULL) != 1 || dl != SHA256_LEN)
        return FP_FAIL(FP_ERR_INTERNAL, "fp_ts_digest: SHA-256 failed");
    return FP_OK;
}

static fp_status writer_create(const fp_ts_header_t *h, const float *data, const uint8_t *known_sha256,
                               fp_ts_writer_t **out);

fp_status fp_ts_writer_create(const fp_ts_header_t *h, const float *data, fp_ts_writer_t **out)
{
    return writer_create(h, data, NULL, out);
}

fp_status fp_ts_writer_create_digested(const fp_ts_header_t *h, const float *data,
                                       const uint8_t sha256[FP_TS_DIGEST_LEN], fp_ts_writer_t **out)
{
    if (!sha256) {
        if (out)
            *out = NULL;
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_writer_create_digested: NULL digest");
    }
    return writer_create(h, data, sha256, out);
}

static fp_status writer_create(const fp_ts_header_t *h, const float *data, const uint8_t *known_sha256,
                               fp_ts_writer_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_writer_create: NULL out");
    *out = NULL;
    if (!h || (!data && h->param_count > 0))
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_writer_create: NULL argument");
    if (h->kind != FP_TS_MODEL && h->kind != FP_TS_UPDATE)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_writer_create: kind %d is neither model nor update", (int)h->kind);
    if (h->param_count == 0)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_writer_create: an empty vector is never streamed");
    if (h->param_count > FP_TS_MAX_PARAMS || h->param_count > SIZE_MAX / 4)
        return FP_FAIL(FP_ERR_RANGE, "fp_ts_writer_create: %llu parameters exceed the limit %llu",
                       (unsigned long long)h->param_count, (unsigned long long)FP_TS_MAX_PARAMS);
    uint32_t cb = h->chunk_bytes ? h->chunk_bytes : FP_TS_CHUNK_BYTES_DEFAULT;
    if (cb < FP_TS_CHUNK_BYTES_MIN || cb > FP_TS_CHUNK_BYTES_MAX || cb % 4 != 0)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_writer_create: chunk_bytes %u is not a multiple of 4 in [%u, %u]", cb,
                       FP_TS_CHUNK_BYTES_MIN, FP_TS_CHUNK_BYTES_MAX);
    uint64_t cc = fp_ts_chunk_count(h->param_count, cb);
    if (cc > UINT32_MAX)
        return FP_FAIL(FP_ERR_RANGE, "fp_ts_writer_create: %llu chunks of %u bytes do not fit a uint32 count",
                       (unsigned long long)cc, cb);
    if (h->kind == FP_TS_UPDATE) {
        const char *bad = header_nonfinite(h);
        if (bad)
            return FP_FAIL(FP_ERR_NUMERIC, "fp_ts_writer_create: header %s is not finite", bad);
        if (h->clip_bound < 0)
            return FP_FAIL(FP_ERR_INVALID, "fp_ts_writer_create: clip_bound %g is negative", h->clip_bound);
    }
    if (!known_sha256) { /* with a known digest the caller vouches for the values (fp_ts_digest checked them) */
        size_t bad_i = first_non_finite(data, (size_t)h->param_count);
        if (bad_i < h->param_count)
            return FP_FAIL(FP_ERR_NUMERIC, "fp_ts_writer_create: element %zu is %s", bad_i,
                           nonfinite_name(data[bad_i]));
    }

    fp_status st = FP_OK;
    fp_ts_writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return FP_FAIL(FP_ERR_NOMEM, "fp_ts_writer_create: writer");
    w->h = *h;
    w->h.chunk_bytes = cb;
    w->h.chunk_count = (uint32_t)cc;
    if (w->h.kind == FP_TS_UPDATE && w->h.protocol_version == 0)
        w->h.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    if (w->h.kind == FP_TS_MODEL) { /* fields a ModelHeader does not carry */
        w->h.protocol_version = 0;
        w->h.clip_bound = 0;
        memset(&w->h.noise, 0, sizeof w->h.noise);
        w->h.example_count_bucket = 0;
        w->h.local_steps = 0;
    }
    w->bytes = (const uint8_t *)data;
    w->total = h->param_count * 4;
    if (known_sha256) {
        w->known = 1;
        memcpy(w->sha256, known_sha256, SHA256_LEN);
    }
    msgs_init(&w->m);
    msgs_set_header(&w->m, &w->h);

    /* One buffer for the largest message: the header, the first (longest) chunk or the digest. */
    size_t need = protobuf_c_message_get_packed_size(msgs_wrap(&w->m, w->h.kind, BODY_HEADER));
    w->m.ch.index = 0;
    w->m.ch.offset = 0;
    w->m.ch.data.len = (size_t)(w->total < cb ? w->total : cb);
    w->m.ch.data.data = (uint8_t *)w->bytes;
    size_t n2 = protobuf_c_message_get_packed_size(msgs_wrap(&w->m, w->h.kind, BODY_CHUNK));
    /* index and offset of later chunks take more varint bytes than chunk 0's zeros */
    n2 += 16;
    if (n2 > need)
        need = n2;
    if (need < 64)
        need = 64; /* the digest: 32 bytes + total_bytes + tags */
    w->cap = need;
    w->buf = malloc(w->cap);
    if (!w->buf) {
        st = FP_FAIL(FP_ERR_NOMEM, "fp_ts_writer_create: %zu-byte message buffer", w->cap);
        goto fail;
    }
    if (w->known) {
        *out = w;
        return FP_OK;
    }
    if (!(w->sha = EVP_MD_CTX_new())) {
        st = FP_FAIL(FP_ERR_NOMEM, "fp_ts_writer_create: SHA-256 context");
        goto fail;
    }
    if (EVP_DigestInit_ex(w->sha, EVP_sha256(), NULL) != 1) {
        st = FP_FAIL(FP_ERR_INTERNAL, "fp_ts_writer_create: SHA-256 init failed");
        goto fail;
    }
    *out = w;
    return FP_OK;
fail:
    fp_ts_writer_destroy(w);
    return st;
}

fp_status fp_ts_writer_next(fp_ts_writer_t *w, const uint8_t **msg, size_t *len)
{
    if (!w || !msg || !len)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_writer_next: NULL argument");
    *msg = NULL;
    *len = 0;
    uint64_t cc = w->h.chunk_count;
    ProtobufCMessage *m;
    if (w->pos == 0) {
        m = msgs_wrap(&w->m, w->h.kind, BODY_HEADER);
    } else if (w->pos <= cc) {
        uint64_t i = w->pos - 1, off = i * w->h.chunk_bytes;
        uint64_t n = w->total - off < w->h.chunk_bytes ? w->total - off : w->h.chunk_bytes;
        w->m.ch.index = (uint32_t)i;
        w->m.ch.offset = off;
        w->m.ch.data.len = (size_t)n;
        w->m.ch.data.data = (uint8_t *)(w->bytes + off); /* protobuf-c's field is not const; pack only reads */
        if (!w->known && EVP_DigestUpdate(w->sha, w->bytes + off, (size_t)n) != 1)
            return FP_FAIL(FP_ERR_INTERNAL, "fp_ts_writer_next: SHA-256 update failed");
        m = msgs_wrap(&w->m, w->h.kind, BODY_CHUNK);
    } else if (w->pos == cc + 1) {
        uint8_t d[SHA256_LEN];
        unsigned int dl = 0;
        if (w->known)
            memcpy(d, w->sha256, SHA256_LEN);
        else if (EVP_DigestFinal_ex(w->sha, d, &dl) != 1 || dl != SHA256_LEN)
            return FP_FAIL(FP_ERR_INTERNAL, "fp_ts_writer_next: SHA-256 final failed");
        w->m.dg.sha256.data = d;
        w->m.dg.sha256.len = SHA256_LEN;
        w->m.dg.total_bytes = w->total;
        m = msgs_wrap(&w->m, w->h.kind, BODY_DIGEST);
        size_t sz = protobuf_c_message_get_packed_size(m);
        if (sz > w->cap)
            return FP_FAIL(FP_ERR_INTERNAL, "fp_ts_writer_next: digest of %zu bytes over the buffer", sz);
        *len = protobuf_c_message_pack(m, w->buf);
        w->m.dg.sha256.data = NULL; /* d goes out of scope */
        w->pos++;
        *msg = w->buf;
        return FP_OK;
    } else {
        return FP_OK; /* done */
    }
    size_t sz = protobuf_c_message_get_packed_size(m);
    if (sz > w->cap)
        return FP_FAIL(FP_ERR_INTERNAL, "fp_ts_writer_next: message of %zu bytes over the %zu-byte buffer", sz,
                       w->cap);
    *len = protobuf_c_message_pack(m, w->buf);
    w->pos++;
    *msg = w->buf;
    return FP_OK;
}

uint64_t fp_ts_writer_message_count(const fp_ts_writer_t *w)
{
    return w ? (uint64_t)w->h.chunk_count + 2 : 0;
}

const fp_ts_header_t *fp_ts_writer_header(const fp_ts_writer_t *w)
{
    return w ? &w->h : NULL;
}

void fp_ts_writer_destroy(fp_ts_writer_t *w)
{
    if (!w)
        return;
    EVP_MD_CTX_free(w->sha);
    free(w->buf);
    free(w);
}

/* ---- Reader ------------------------------------------------------------------------------------ */

typedef struct {
    uint8_t *base;
    size_t cap, used;
} arena_t;

static void *arena_alloc(void *ad, size_t size)
{
    arena_t *a = ad;
    size_t need = (size + 15) & ~(size_t)15;
    if (need >= size && a->base && need <= a->cap - a->used) {
        void *p = a->base + a->used;
        a->used += need;
        return p;
    }
    return malloc(size ? size : 1);
}

static void arena_free(void *ad, void *p)
{
    arena_t *a = ad;
    if (!p)
        return;
    if (a->base && (uint8_t *)p >= a->base && (uint8_t *)p < a->base + a->cap)
        return; /* reclaimed wholesale at the next message */
    free(p);
}

enum { ST_HEADER = 0, ST_CHUNKS, ST_DIGEST, ST_COMPLETE, ST_FAILED };

struct fp_ts_reader {
    fp_ts_reader_opts_t o;
    uint64_t max_params; /* effective */
    int state;
    fp_ts_header_t h;
    uint64_t total;      /* bytes expected */
    uint64_t got;        /* bytes accepted */
    uint32_t next_index;
    float *dst;          /* o.dst or own */
    float *own;
    size_t own_cap;      /* floats */
    arena_t arena;
    ProtobufCAllocator alloc;
    EVP_MD_CTX *sha;
    fp_status fail_status;
    fp_ts_reject fail_reason;
    char fail_msg[ERR_KEEP];
};

/* Refuse the stream: record status, reason and message (sticky), and return the status. */
#define REFUSE(r, reason, code, ...) refuse((r), (reason), (code), __FILE__, __LINE__, __VA_ARGS__)

static fp_status refuse(fp_ts_reader_t *r, fp_ts_reject reason, fp_status code, const char *file, int line,
                        const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static fp_status refuse(fp_ts_reader_t *r, fp_ts_reject reason, fp_status code, const char *file, int line,
                        const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->fail_msg, sizeof r->fail_msg, fmt, ap);
    va_end(ap);
    r->state = ST_FAILED;
    r->fail_status = code;
    r->fail_reason = reason;
    fp_error_set(code, file, line, "%s stream refused (%s): %s", r->o.kind == FP_TS_MODEL ? "model" : "update",
                 fp_ts_reject_name(reason), r->fail_msg);
    return code;
}

static fp_status arena_reserve(fp_ts_reader_t *r, size_t bytes)
{
    if (r->arena.cap >= bytes)
        return FP_OK;
    uint8_t *p = malloc(bytes);
    if (!p)
        return FP_FAIL(FP_ERR_NOMEM, "tensor_stream: %zu-byte message arena", bytes);
    free(r->arena.base);
    r->arena.base = p;
    r->arena.cap = bytes;
    r->arena.used = 0;
    return FP_OK;
}

fp_status fp_ts_reader_create(const fp_ts_reader_opts_t *o, fp_ts_reader_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_reader_create: NULL out");
    *out = NULL;
    if (!o)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_reader_create: NULL options");
    if (o->kind != FP_TS_MODEL && o->kind != FP_TS_UPDATE)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_reader_create: kind %d is neither model nor update", (int)o->kind);
    uint64_t maxp = o->max_params;
    if (o->dst) {
        if (o->dst_cap == 0)
            return FP_FAIL(FP_ERR_INVALID, "fp_ts_reader_create: dst given with dst_cap 0");
        if (maxp == 0 || maxp > o->dst_cap)
            maxp = o->dst_cap;
    }
    if (maxp == 0)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_reader_create: max_params 0 and no dst");
    if (maxp > FP_TS_MAX_PARAMS)
        maxp = FP_TS_MAX_PARAMS;
    if (maxp > SIZE_MAX / 4)
        maxp = SIZE_MAX / 4;
    fp_ts_reader_t *r = calloc(1, sizeof *r);
    if (!r)
        return FP_FAIL(FP_ERR_NOMEM, "fp_ts_reader_create: reader");
    r->o = *o;
    r->max_params = maxp;
    r->alloc.alloc = arena_alloc;
    r->alloc.free = arena_free;
    r->alloc.allocator_data = &r->arena;
    r->sha = EVP_MD_CTX_new();
    fp_status st = r->sha ? arena_reserve(r, FP_TS_SMALL_MSG_MAX + ARENA_SLACK)
                          : FP_FAIL(FP_ERR_NOMEM, "fp_ts_reader_create: SHA-256 context");
    if (st != FP_OK) {
        fp_ts_reader_destroy(r);
        return st;
    }
    fp_ts_reader_reset(r);
    *out = r;
    return FP_OK;
}

void fp_ts_reader_reset(fp_ts_reader_t *r)
{
    if (!r)
        return;
    r->state = ST_HEADER;
    memset(&r->h, 0, sizeof r->h);
    r->h.kind = r->o.kind;
    r->total = r->got = 0;
    r->next_index = 0;
    r->dst = NULL;
    r->fail_status = FP_OK;
    r->fail_reason = FP_TS_REJECT_NONE;
    r->fail_msg[0] = '\0';
}

void fp_ts_reader_destroy(fp_ts_reader_t *r)
{
    if (!r)
        return;
    EVP_MD_CTX_free(r->sha);
    free(r->arena.base);
    fp_buffer_free(r->own);
    free(r);
}

/* Copy the received header into r->h (kind-independent form). */
static void header_from_model(fp_ts_header_t *h, const Fedprof__V1__ModelHeader *m)
{
    h->round_id = m->round_id;
    h->model_version = m->model_version;
    h->param_count = m->parameter_count;
    h->layout_hash = m->layout_hash;
    h->chunk_bytes = m->chunk_bytes;
    h->chunk_count = m->chunk_count;
}

/* Returns the name of a string field that was too long (then cut), else NULL. */
static const char *header_from_update(fp_ts_header_t *h, const Fedprof__V1__UpdateHeader *u)
{
    const char *too_long = NULL;
    h->protocol_version = u->protocol_version;
    h->round_id = u->round_id;
    h->model_version = u->base_model_version;
    h->param_count = u->parameter_count;
    h->layout_hash = u->layout_hash;
    h->clip_bound = u->clip_bound;
    h->example_count_bucket = u->example_count_bucket;
    h->local_steps = u->local_steps;
    h->chunk_bytes = u->chunk_bytes;
    h->chunk_count = u->chunk_count;
    /* Strings longer than their field are refused (the caller refuses the header); here they are
     * cut so the header stays a valid C string either way. */
    h->session[0] = h->ledger_entry[0] = '\0';
    if (u->session) {
        size_t n = strlen(u->session);
        if (n > FP_TS_SESSION_MAX) {
            too_long = "session";
            n = FP_TS_SESSION_MAX;
        }
        memcpy(h->session, u->session, n);
        h->session[n] = '\0';
    }
    if (u->ledger_entry) {
        size_t n = strlen(u->ledger_entry);
        if (n > FP_TS_LEDGER_MAX) {
            too_long = "ledger_entry";
            n = FP_TS_LEDGER_MAX;
        }
        memcpy(h->ledger_entry, u->ledger_entry, n);
        h->ledger_entry[n] = '\0';
    }
    if (u->noise) {
        h->noise.present = 1;
        h->noise.mechanism = (int)u->noise->mechanism;
        h->noise.unit = (int)u->noise->unit;
        h->noise.noise_multiplier = u->noise->noise_multiplier;
        h->noise.stddev = u->noise->stddev;
        h->noise.granularity = u->noise->granularity;
        h->noise.sampling_rate = u->noise->sampling_rate;
        h->noise.steps = u->noise->steps;
        h->noise.delta = u->noise->delta;
    }
    return too_long;
}

static fp_status on_header(fp_ts_reader_t *r, int dtype)
{
    fp_ts_header_t *h = &r->h;
    if (r->o.kind == FP_TS_UPDATE && h->protocol_version != FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1)
        return REFUSE(r, FP_TS_REJECT_VERSION, FP_ERR_UNSUPPORTED, "protocol_version %u is not spoken (only 1)",
                      h->protocol_version);
    if (dtype != FEDPROF__V1__DTYPE__DTYPE_F32_LE)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "dtype %d is not DTYPE_F32_LE", dtype);
    if (h->param_count == 0)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "parameter_count 0: an empty tensor is never sent");
    if (h->param_count > r->max_params)
        return REFUSE(r, FP_TS_REJECT_OVERSIZED, FP_ERR_RANGE, "parameter_count %llu exceeds the maximum %llu",
                      (unsigned long long)h->param_count, (unsigned long long)r->max_params);
    if (r->o.expect_params && h->param_count != r->o.expect_params)
        return REFUSE(r, FP_TS_REJECT_SHAPE, FP_ERR_FORMAT, "parameter_count %llu, expected %llu",
                      (unsigned long long)h->param_count, (unsigned long long)r->o.expect_params);
    if (r->o.check_layout_hash && h->layout_hash != r->o.layout_hash)
        return REFUSE(r, FP_TS_REJECT_SHAPE, FP_ERR_FORMAT, "layout_hash %016llx, expected %016llx",
                      (unsigned long long)h->layout_hash, (unsigned long long)r->o.layout_hash);
    uint32_t cb = h->chunk_bytes;
    if (cb < FP_TS_CHUNK_BYTES_MIN || cb > FP_TS_CHUNK_BYTES_MAX || cb % 4 != 0)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "chunk_bytes %u is not a multiple of 4 in [%u, %u]",
                      cb, FP_TS_CHUNK_BYTES_MIN, FP_TS_CHUNK_BYTES_MAX);
    uint64_t cc = fp_ts_chunk_count(h->param_count, cb);
    if (h->chunk_count != cc)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE,
                      "chunk_count %u, but %llu parameters in %u-byte chunks take %llu", h->chunk_count,
                      (unsigned long long)h->param_count, cb, (unsigned long long)cc);
    const char *bad = header_nonfinite(h);
    if (bad)
        return REFUSE(r, FP_TS_REJECT_NON_FINITE, FP_ERR_NUMERIC, "header %s is not finite", bad);
    if (h->kind == FP_TS_UPDATE && h->clip_bound < 0)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "clip_bound %g is negative", h->clip_bound);

    /* Everything checked: now memory may be committed, bounded by max_params and chunk_bytes. */
    if (r->o.dst) {
        r->dst = r->o.dst;
    } else {
        if (r->own_cap < h->param_count) {
            fp_buffer_free(r->own);
            r->own_cap = 0;
            r->own = fp_buffer_alloc((size_t)h->param_count);
            if (!r->own)
                return REFUSE(r, FP_TS_REJECT_OVERSIZED, FP_ERR_NOMEM, "cannot allocate %llu floats",
                              (unsigned long long)h->param_count);
            r->own_cap = (size_t)h->param_count;
        }
        r->dst = r->own;
    }
    if (EVP_DigestInit_ex(r->sha, EVP_sha256(), NULL) != 1)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_INTERNAL, "SHA-256 init failed");
    r->total = h->param_count * 4;
    r->got = 0;
    r->next_index = 0;
    r->state = ST_CHUNKS;
    return FP_OK;
}

static fp_status on_chunk(fp_ts_reader_t *r, const Fedprof__V1__TensorChunk *c)
{
    if (r->state == ST_HEADER)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "chunk index %u before the header", c->index);
    if (r->state == ST_DIGEST)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE,
                      "chunk index %u after the last chunk (chunk_count %u): expected the digest", c->index,
                      r->h.chunk_count);
    uint32_t want = r->next_index;
    if (c->index < want)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE,
                      "chunk index %u again (duplicate or out of order): expected %u", c->index, want);
    if (c->index > want)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "chunk index %u where %u was expected (a gap)",
                      c->index, want);
    uint64_t off = (uint64_t)want * r->h.chunk_bytes;
    if (c->offset != off)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "chunk %u at byte offset %llu, expected %llu", want,
                      (unsigned long long)c->offset, (unsigned long long)off);
    uint64_t left = r->total - off;
    uint64_t n = left < r->h.chunk_bytes ? left : r->h.chunk_bytes;
    if (c->data.len != n) {
        if ((uint64_t)c->data.len > left)
            return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE,
                          "chunk %u: %zu bytes at offset %llu run past the tensor's %llu bytes", want, c->data.len,
                          (unsigned long long)off, (unsigned long long)r->total);
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "chunk %u holds %zu bytes, expected %llu", want,
                      c->data.len, (unsigned long long)n);
    }
    float *to = r->dst + off / 4;
    size_t nf = (size_t)(n / 4);
    memcpy(to, c->data.data, (size_t)n);
    size_t bad = first_non_finite(to, nf);
    if (bad < nf)
        return REFUSE(r, FP_TS_REJECT_NON_FINITE, FP_ERR_NUMERIC, "chunk %u: element %llu is %s", want,
                      (unsigned long long)(off / 4 + bad), nonfinite_name(to[bad]));
    if (EVP_DigestUpdate(r->sha, c->data.data, (size_t)n) != 1)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_INTERNAL, "SHA-256 update failed");
    r->got += n;
    r->next_index++;
    if (r->next_index == r->h.chunk_count)
        r->state = ST_DIGEST;
    return FP_OK;
}

static fp_status on_digest(fp_ts_reader_t *r, const Fedprof__V1__Digest *d)
{
    if (r->state == ST_HEADER)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "digest before the header");
    if (r->state == ST_CHUNKS)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "digest after %u of %u chunks", r->next_index,
                      r->h.chunk_count);
    if (d->sha256.len != SHA256_LEN)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "digest holds %zu bytes, not a 32-byte SHA-256",
                      d->sha256.len);
    if (d->total_bytes != r->total)
        return REFUSE(r, FP_TS_REJECT_DIGEST, FP_ERR_PARSE, "digest total_bytes %llu, but %llu bytes were received",
                      (unsigned long long)d->total_bytes, (unsigned long long)r->total);
    uint8_t got[SHA256_LEN];
    unsigned int gl = 0;
    if (EVP_DigestFinal_ex(r->sha, got, &gl) != 1 || gl != SHA256_LEN)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_INTERNAL, "SHA-256 final failed");
    if (memcmp(got, d->sha256.data, SHA256_LEN) != 0)
        return REFUSE(r, FP_TS_REJECT_DIGEST, FP_ERR_PARSE,
                      "SHA-256 of the %llu received bytes does not match the digest",
                      (unsigned long long)r->total);
    r->state = ST_COMPLETE;
    return FP_OK;
}

fp_status fp_ts_reader_feed(fp_ts_reader_t *r, const uint8_t *msg, size_t len)
{
    if (!r)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_reader_feed: NULL reader");
    if (r->state == ST_FAILED)
        return FP_FAIL(r->fail_status, "stream already refused (%s): %s", fp_ts_reject_name(r->fail_reason),
                       r->fail_msg);
    if (!msg && len > 0)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "NULL message of %zu bytes", len);
    if (r->state == ST_COMPLETE)
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "message of %zu bytes after the digest", len);
    /* Bound the message before protobuf-c allocates anything for it. */
    size_t limit = r->state == ST_HEADER ? FP_TS_SMALL_MSG_MAX
                                          : (size_t)r->h.chunk_bytes + FP_TS_CHUNK_OVERHEAD;
    if (len > limit) {
        if (r->state == ST_HEADER)
            return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE,
                          "first message is %zu bytes: a header (at most %u bytes) was expected", len,
                          (unsigned)FP_TS_SMALL_MSG_MAX);
        return REFUSE(r, FP_TS_REJECT_OVERSIZED, FP_ERR_RANGE,
                      "message of %zu bytes exceeds %zu (chunk_bytes %u + envelope)", len, limit,
                      r->h.chunk_bytes);
    }
    static const uint8_t empty[1];
    if (!msg)
        msg = empty;
    r->arena.used = 0;
    int body = BODY_NONE, dtype = 0;
    const char *too_long = NULL;
    const Fedprof__V1__TensorChunk *chunk = NULL;
    const Fedprof__V1__Digest *digest = NULL;
    Fedprof__V1__ModelStreamMessage *mm = NULL;
    Fedprof__V1__UpdateStreamMessage *um = NULL;
    if (r->o.kind == FP_TS_MODEL) {
        mm = fedprof__v1__model_stream_message__unpack(&r->alloc, len, msg);
        if (!mm)
            return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "%zu bytes are not a ModelStreamMessage", len);
        body = (int)mm->body_case;
        if (body == BODY_HEADER && mm->header) {
            if (r->state == ST_HEADER)
                header_from_model(&r->h, mm->header);
            dtype = (int)mm->header->dtype;
        } else if (body == BODY_CHUNK) {
            chunk = mm->chunk;
        } else if (body == BODY_DIGEST) {
            digest = mm->digest;
        }
    } else {
        um = fedprof__v1__update_stream_message__unpack(&r->alloc, len, msg);
        if (!um)
            return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "%zu bytes are not an UpdateStreamMessage", len);
        body = (int)um->body_case;
        if (body == BODY_HEADER && um->header) {
            if (r->state == ST_HEADER)
                too_long = header_from_update(&r->h, um->header);
            dtype = (int)um->header->dtype;
        } else if (body == BODY_CHUNK) {
            chunk = um->chunk;
        } else if (body == BODY_DIGEST) {
            digest = um->digest;
        }
    }
    fp_status st;
    if (body == BODY_HEADER) {
        if (r->state != ST_HEADER)
            st = REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "a second header after %u chunks", r->next_index);
        else if (too_long)
            st = REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "header %s is too long", too_long);
        else
            st = on_header(r, dtype);
    } else if (body == BODY_CHUNK && chunk) {
        st = on_chunk(r, chunk);
    } else if (body == BODY_DIGEST && digest) {
        st = on_digest(r, digest);
    } else {
        st = REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "message of %zu bytes has no header, chunk or digest",
                    len);
    }
    if (mm)
        fedprof__v1__model_stream_message__free_unpacked(mm, &r->alloc);
    if (um)
        fedprof__v1__update_stream_message__free_unpacked(um, &r->alloc);
    r->arena.used = 0;
    /* Grow the arena for chunks only now: the header was unpacked into the old one. */
    if (st == FP_OK && body == BODY_HEADER &&
        arena_reserve(r, (size_t)r->h.chunk_bytes + FP_TS_CHUNK_OVERHEAD + ARENA_SLACK) != FP_OK)
        st = REFUSE(r, FP_TS_REJECT_OVERSIZED, FP_ERR_NOMEM, "cannot allocate a %u-byte chunk arena",
                    r->h.chunk_bytes);
    return st;
}

int fp_ts_reader_complete(const fp_ts_reader_t *r)
{
    return r && r->state == ST_COMPLETE;
}

fp_status fp_ts_reader_finish(fp_ts_reader_t *r)
{
    if (!r)
        return FP_FAIL(FP_ERR_INVALID, "fp_ts_reader_finish: NULL reader");
    switch (r->state) {
    case ST_COMPLETE: return FP_OK;
    case ST_FAILED:
        return FP_FAIL(r->fail_status, "stream refused (%s): %s", fp_ts_reject_name(r->fail_reason), r->fail_msg);
    case ST_HEADER: return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "stream ended before its header");
    case ST_CHUNKS:
        return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "stream ended after %u of %u chunks (no digest)",
                      r->next_index, r->h.chunk_count);
    default: return REFUSE(r, FP_TS_REJECT_MALFORMED, FP_ERR_PARSE, "stream ended without its digest");
    }
}

const fp_ts_header_t *fp_ts_reader_header(const fp_ts_reader_t *r)
{
    if (!r || r->state == ST_HEADER || (r->state == ST_FAILED && r->dst == NULL))
        return NULL;
    return &r->h;
}

const float *fp_ts_reader_data(const fp_ts_reader_t *r, size_t *n)
{
    if (n)
        *n = 0;
    if (!r || r->state != ST_COMPLETE)
        return NULL;
    if (n)
        *n = (size_t)r->h.param_count;
    return r->dst;
}

fp_ts_reject fp_ts_reader_reject(const fp_ts_reader_t *r)
{
    return r ? r->fail_reason : FP_TS_REJECT_NONE;
}

uint64_t fp_ts_reader_bytes(const fp_ts_reader_t *r)
{
    return r ? r->got : 0;
}
