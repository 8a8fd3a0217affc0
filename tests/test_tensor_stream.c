/* test_tensor_stream: common/tensor_stream, writer -> reader round trips and every refusal.
 *
 * Round trips of 1 float, exactly one 1 MiB chunk, one chunk + 1 float and 3.5 MiB, for model and
 * update streams, into the caller's buffer and into the reader's own (reused after a reset), and
 * with small chunks. An empty vector (parameter_count 0) is refused by both sides by design (see
 * tensor_stream.h). Refusals, each checked for its status, reason and message: chunk before the
 * header, digest before the chunks, duplicate chunk, gap, wrong offset, a chunk too long, one past
 * the end, a short chunk, a second header, wrong layout hash or parameter count, parameter count
 * above the maximum, oversized message, bad digest bytes and total, a message after the digest,
 * a truncated stream (no digest: not complete), garbage bytes (fixed seeds), NaN and Inf in the
 * data and in header numbers, protocol version, dtype, chunk geometry; the refusal is sticky. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "fedprof.pb-c.h"

#include "common/tensor_stream.h"

#define MiB ((size_t)1 << 20)
#define ONE_CHUNK_FLOATS (MiB / 4)

/* ---- helpers -------------------------------------------------------------------------------- */

static uint64_t sm_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float *make_data(size_t n, uint64_t seed)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((double)(sm_next(&seed) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    return x;
}

/* A whole stream as owned packed messages. */
typedef struct {
    uint8_t **p;
    size_t *n;
    size_t count, cap;
} stream_t;

static void stream_push(stream_t *s, const uint8_t *m, size_t n)
{
    if (s->count == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 8;
        s->p = realloc(s->p, s->cap * sizeof *s->p);
        s->n = realloc(s->n, s->cap * sizeof *s->n);
        assert_non_null(s->p);
        assert_non_null(s->n);
    }
    s->p[s->count] = malloc(n ? n : 1);
    assert_non_null(s->p[s->count]);
    if (n)
        memcpy(s->p[s->count], m, n);
    s->n[s->count++] = n;
}

/* Replace message i (takes ownership of m). */
static void stream_set(stream_t *s, size_t i, uint8_t *m, size_t n)
{
    free(s->p[i]);
    s->p[i] = m;
    s->n[i] = n;
}

static void stream_remove(stream_t *s, size_t i)
{
    free(s->p[i]);
    memmove(s->p + i, s->p + i + 1, (s->count - i - 1) * sizeof *s->p);
    memmove(s->n + i, s->n + i + 1, (s->count - i - 1) * sizeof *s->n);
    s->count--;
}

static void stream_free(stream_t *s)
{
    for (size_t i = 0; i < s->count; i++)
        free(s->p[i]);
    free(s->p);
    free(s->n);
    memset(s, 0, sizeof *s);
}

static fp_ts_header_t hdr(fp_ts_kind kind, uint64_t n, uint32_t chunk_bytes)
{
    fp_ts_header_t h;
    memset(&h, 0, sizeof h);
    h.kind = kind;
    h.round_id = 7;
    h.model_version = 3;
    h.param_count = n;
    h.layout_hash = 0x1234abcd5678ef90ull;
    h.chunk_bytes = chunk_bytes;
    if (kind == FP_TS_UPDATE) {
        h.clip_bound = 1.5;
        h.noise.present = 1;
        h.noise.mechanism = 2;
        h.noise.unit = 2;
        h.noise.noise_multiplier = 1.1;
        h.noise.stddev = 1.65;
        h.noise.sampling_rate = 0.01;
        h.noise.steps = 100;
        h.noise.delta = 1e-5;
        h.example_count_bucket = 9;
        h.local_steps = 50;
    }
    return h;
}

/* sha: NULL, or the known digest (fp_ts_writer_create_digested). */
static void write_stream_with(const fp_ts_header_t *h, const float *x, const uint8_t *sha, stream_t *s)
{
    fp_ts_writer_t *w = NULL;
    assert_int_equal(sha ? fp_ts_writer_create_digested(h, x, sha, &w) : fp_ts_writer_create(h, x, &w), FP_OK);
    uint64_t want = fp_ts_writer_message_count(w);
    for (;;) {
        const uint8_t *m;
        size_t n;
        assert_int_equal(fp_ts_writer_next(w, &m, &n), FP_OK);
        if (!m)
            break;
        stream_push(s, m, n);
    }
    assert_int_equal(s->count, want);
    /* a finished writer keeps saying so */
    const uint8_t *m = (const uint8_t *)1;
    size_t n = 1;
    assert_int_equal(fp_ts_writer_next(w, &m, &n), FP_OK);
    assert_null(m);
    assert_int_equal(n, 0);
    fp_ts_writer_destroy(w);
}

static void write_stream(const fp_ts_header_t *h, const float *x, stream_t *s) { write_stream_with(h, x, NULL, s); }

static fp_ts_reader_opts_t opts(fp_ts_kind kind, uint64_t max_params)
{
    fp_ts_reader_opts_t o;
    memset(&o, 0, sizeof o);
    o.kind = kind;
    o.max_params = max_params;
    return o;
}

/* Feed every message; return the first failure's status (FP_OK if none) and its index. */
static fp_status feed_all(fp_ts_reader_t *r, const stream_t *s, size_t *at)
{
    for (size_t i = 0; i < s->count; i++) {
        fp_status st = fp_ts_reader_feed(r, s->p[i], s->n[i]);
        if (st != FP_OK) {
            if (at)
                *at = i;
            return st;
        }
    }
    if (at)
        *at = s->count;
    return FP_OK;
}

/* Expect the stream to be refused at message `at` with code, reason and a message containing `what`. */
static void expect_refused(const fp_ts_reader_opts_t *o, const stream_t *s, size_t at, fp_status code,
                           fp_ts_reject reason, const char *what)
{
    fp_ts_reader_t *r = NULL;
    assert_int_equal(fp_ts_reader_create(o, &r), FP_OK);
    size_t got_at = 0;
    fp_status st = feed_all(r, s, &got_at);
    if (st != code || got_at != at || fp_ts_reader_reject(r) != reason || !strstr(fp_error_message(), what))
        print_error("refusal: status %d at %zu, reason %s, message '%s'; wanted %d at %zu, %s, '%s'\n", (int)st,
                    got_at, fp_ts_reject_name(fp_ts_reader_reject(r)), fp_error_message(), (int)code, at,
                    fp_ts_reject_name(reason), what);
    assert_int_equal(st, code);
    assert_int_equal(got_at, at);
    assert_int_equal(fp_ts_reader_reject(r), reason);
    assert_non_null(strstr(fp_error_message(), what));
    assert_false(fp_ts_reader_complete(r));
    size_t n = 1;
    assert_null(fp_ts_reader_data(r, &n));
    assert_int_equal(n, 0);
    /* sticky: the next message (even a valid one) and finish fail the same way */
    assert_int_equal(fp_ts_reader_feed(r, s->p[0], s->n[0]), code);
    assert_non_null(strstr(fp_error_message(), "already refused"));
    assert_int_equal(fp_ts_reader_finish(r), code);
    fp_ts_reader_destroy(r);
}

/* Packed stream messages crafted by hand (what a broken or hostile peer could send). */
static uint8_t *pack_body(fp_ts_kind kind, Fedprof__V1__TensorChunk *c, Fedprof__V1__Digest *d,
                          Fedprof__V1__ModelHeader *mh, Fedprof__V1__UpdateHeader *uh, size_t *len)
{
    ProtobufCMessage *m;
    Fedprof__V1__ModelStreamMessage mm = FEDPROF__V1__MODEL_STREAM_MESSAGE__INIT;
    Fedprof__V1__UpdateStreamMessage um = FEDPROF__V1__UPDATE_STREAM_MESSAGE__INIT;
    if (kind == FP_TS_MODEL) {
        if (c) {
            mm.body_case = FEDPROF__V1__MODEL_STREAM_MESSAGE__BODY_CHUNK;
            mm.chunk = c;
        } else if (d) {
            mm.body_case = FEDPROF__V1__MODEL_STREAM_MESSAGE__BODY_DIGEST;
            mm.digest = d;
        } else if (mh) {
            mm.body_case = FEDPROF__V1__MODEL_STREAM_MESSAGE__BODY_HEADER;
            mm.header = mh;
        }
        m = &mm.base;
    } else {
        if (c) {
            um.body_case = FEDPROF__V1__UPDATE_STREAM_MESSAGE__BODY_CHUNK;
            um.chunk = c;
        } else if (d) {
            um.body_case = FEDPROF__V1__UPDATE_STREAM_MESSAGE__BODY_DIGEST;
            um.digest = d;
        } else if (uh) {
            um.body_case = FEDPROF__V1__UPDATE_STREAM_MESSAGE__BODY_HEADER;
            um.header = uh;
        }
        m = &um.base;
    }
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *p = malloc(n ? n : 1);
    assert_non_null(p);
    assert_int_equal(protobuf_c_message_pack(m, p), n);
    *len = n;
    return p;
}

static uint8_t *pack_chunk(fp_ts_kind kind, uint32_t index, uint64_t offset, const void *data, size_t n,
                           size_t *len)
{
    Fedprof__V1__TensorChunk c = FEDPROF__V1__TENSOR_CHUNK__INIT;
    c.index = index;
    c.offset = offset;
    c.data.data = (uint8_t *)data;
    c.data.len = n;
    return pack_body(kind, &c, NULL, NULL, NULL, len);
}

static uint8_t *pack_digest(fp_ts_kind kind, const uint8_t *sha, size_t sha_len, uint64_t total, size_t *len)
{
    Fedprof__V1__Digest d = FEDPROF__V1__DIGEST__INIT;
    d.sha256.data = (uint8_t *)sha;
    d.sha256.len = sha_len;
    d.total_bytes = total;
    return pack_body(kind, NULL, &d, NULL, NULL, len);
}

/* Unpack message i's header of an update stream, let `edit` change it, pack it back. */
static void edit_update_header(stream_t *s, void (*edit)(Fedprof__V1__UpdateHeader *))
{
    Fedprof__V1__UpdateStreamMessage *um = fedprof__v1__update_stream_message__unpack(NULL, s->n[0], s->p[0]);
    assert_non_null(um);
    assert_int_equal(um->body_case, FEDPROF__V1__UPDATE_STREAM_MESSAGE__BODY_HEADER);
    edit(um->header);
    size_t n;
    uint8_t *p = pack_body(FP_TS_UPDATE, NULL, NULL, NULL, um->header, &n);
    fedprof__v1__update_stream_message__free_unpacked(um, NULL);
    stream_set(s, 0, p, n);
}

static void edit_model_header(stream_t *s, void (*edit)(Fedprof__V1__ModelHeader *))
{
    Fedprof__V1__ModelStreamMessage *mm = fedprof__v1__model_stream_message__unpack(NULL, s->n[0], s->p[0]);
    assert_non_null(mm);
    assert_int_equal(mm->body_case, FEDPROF__V1__MODEL_STREAM_MESSAGE__BODY_HEADER);
    edit(mm->header);
    size_t n;
    uint8_t *p = pack_body(FP_TS_MODEL, NULL, NULL, mm->header, NULL, &n);
    fedprof__v1__model_stream_message__free_unpacked(mm, NULL);
    stream_set(s, 0, p, n);
}

static void sha256(const void *p, size_t n, uint8_t out[32])
{
    unsigned int l = 0;
    assert_int_equal(EVP_Digest(p, n, out, &l, EVP_sha256(), NULL), 1);
    assert_int_equal(l, 32);
}

/* ---- round trips ---------------------------------------------------------------------------- */

static void check_header_equal(const fp_ts_header_t *a, const fp_ts_header_t *b)
{
    assert_int_equal(a->kind, b->kind);
    assert_int_equal(a->round_id, b->round_id);
    assert_int_equal(a->model_version, b->model_version);
    assert_int_equal(a->param_count, b->param_count);
    assert_int_equal(a->layout_hash, b->layout_hash);
    assert_int_equal(a->chunk_bytes, b->chunk_bytes);
    assert_int_equal(a->chunk_count, b->chunk_count);
    assert_int_equal(a->protocol_version, b->protocol_version);
    assert_true(a->clip_bound == b->clip_bound);
    assert_int_equal(a->noise.present, b->noise.present);
    assert_int_equal(a->noise.mechanism, b->noise.mechanism);
    assert_int_equal(a->noise.unit, b->noise.unit);
    assert_true(a->noise.noise_multiplier == b->noise.noise_multiplier);
    assert_true(a->noise.stddev == b->noise.stddev);
    assert_true(a->noise.granularity == b->noise.granularity);
    assert_true(a->noise.sampling_rate == b->noise.sampling_rate);
    assert_int_equal(a->noise.steps, b->noise.steps);
    assert_true(a->noise.delta == b->noise.delta);
    assert_int_equal(a->example_count_bucket, b->example_count_bucket);
    assert_int_equal(a->local_steps, b->local_steps);
}

static void round_trip(fp_ts_kind kind, size_t n, uint32_t chunk_bytes, uint64_t seed)
{
    float *x = make_data(n, seed);
    fp_ts_header_t h = hdr(kind, n, chunk_bytes);
    stream_t s = {0};
    write_stream(&h, x, &s);
    uint32_t cb = chunk_bytes ? chunk_bytes : FP_TS_CHUNK_BYTES_DEFAULT;
    uint64_t cc = fp_ts_chunk_count(n, cb);
    assert_int_equal(s.count, cc + 2);
    /* every chunk message fits the wire's default limit */
    for (size_t i = 0; i < s.count; i++)
        assert_true(s.n[i] <= cb + FP_TS_CHUNK_OVERHEAD);

    /* 1) into the caller's buffer, with every check on */
    float *dst = malloc((n + 5) * sizeof *dst);
    assert_non_null(dst);
    fp_ts_reader_opts_t o = opts(kind, 0);
    o.dst = dst;
    o.dst_cap = n + 5;
    o.expect_params = n;
    o.check_layout_hash = 1;
    o.layout_hash = h.layout_hash;
    fp_ts_reader_t *r = NULL;
    assert_int_equal(fp_ts_reader_create(&o, &r), FP_OK);
    assert_null(fp_ts_reader_header(r));
    for (size_t i = 0; i < s.count; i++) {
        assert_false(fp_ts_reader_complete(r));
        assert_null(fp_ts_reader_data(r, NULL));
        assert_int_equal(fp_ts_reader_feed(r, s.p[i], s.n[i]), FP_OK);
        if (i == 0) { /* the header is readable before any chunk */
            const fp_ts_header_t *rh = fp_ts_reader_header(r);
            assert_non_null(rh);
            fp_ts_header_t want = h;
            want.chunk_bytes = cb;
            want.chunk_count = (uint32_t)cc;
            if (kind == FP_TS_UPDATE)
                want.protocol_version = 1;
            check_header_equal(rh, &want);
        }
    }
    assert_true(fp_ts_reader_complete(r));
    assert_int_equal(fp_ts_reader_finish(r), FP_OK);
    assert_int_equal(fp_ts_reader_reject(r), FP_TS_REJECT_NONE);
    assert_int_equal(fp_ts_reader_bytes(r), (uint64_t)n * 4);
    size_t got_n = 0;
    const float *got = fp_ts_reader_data(r, &got_n);
    assert_ptr_equal(got, dst);
    assert_int_equal(got_n, n);
    assert_memory_equal(got, x, n * sizeof *x);
    fp_ts_reader_destroy(r);

    /* 2) into the reader's own buffer, twice through one reader (reset keeps the buffer) */
    o = opts(kind, n);
    assert_int_equal(fp_ts_reader_create(&o, &r), FP_OK);
    const float *first = NULL;
    for (int pass = 0; pass < 2; pass++) {
        assert_int_equal(feed_all(r, &s, NULL), FP_OK);
        got = fp_ts_reader_data(r, &got_n);
        assert_non_null(got);
        assert_int_equal(got_n, n);
        assert_memory_equal(got, x, n * sizeof *x);
        if (pass == 0)
            first = got;
        else
            assert_ptr_equal(got, first);
        fp_ts_reader_reset(r);
        assert_null(fp_ts_reader_header(r));
        assert_false(fp_ts_reader_complete(r));
    }
    fp_ts_reader_destroy(r);
    stream_free(&s);
    free(dst);
    free(x);
}

static void test_round_trip_sizes(void **state)
{
    (void)state;
    const fp_ts_kind kinds[] = {FP_TS_MODEL, FP_TS_UPDATE};
    for (int k = 0; k < 2; k++) {
        round_trip(kinds[k], 1, 0, 11);
        round_trip(kinds[k], ONE_CHUNK_FLOATS, 0, 12);     /* exactly one chunk */
        round_trip(kinds[k], ONE_CHUNK_FLOATS + 1, 0, 13); /* one chunk + 1 float */
        round_trip(kinds[k], 7 * MiB / 8, 0, 14);          /* 3.5 MiB: 4 chunks, the last half full */
        round_trip(kinds[k], 1000, 64, 15);                /* small chunks: 63 of them */
        round_trip(kinds[k], 16, 64, 16);                  /* one small chunk exactly */
    }
}

static void test_empty_refused(void **state)
{
    (void)state;
    fp_ts_header_t h = hdr(FP_TS_MODEL, 0, 0);
    float one = 1.0f;
    fp_ts_writer_t *w = (fp_ts_writer_t *)1;
    assert_int_equal(fp_ts_writer_create(&h, &one, &w), FP_ERR_INVALID);
    assert_null(w);
    assert_non_null(strstr(fp_error_message(), "empty"));
    /* a header saying 0 is refused by the reader: test_header_refusals (mh_zero_params) */
}

/* (edit functions for headers) */
static void mh_zero_params(Fedprof__V1__ModelHeader *h)
{
    h->parameter_count = 0;
    h->chunk_count = 0;
}
static void mh_dtype_unspecified(Fedprof__V1__ModelHeader *h) { h->dtype = FEDPROF__V1__DTYPE__DTYPE_UNSPECIFIED; }
static void mh_chunk_count_wrong(Fedprof__V1__ModelHeader *h) { h->chunk_count += 1; }
static void mh_chunk_bytes_odd(Fedprof__V1__ModelHeader *h) { h->chunk_bytes = 1022; }
static void mh_chunk_bytes_tiny(Fedprof__V1__ModelHeader *h) { h->chunk_bytes = 4; }
static void mh_chunk_bytes_huge(Fedprof__V1__ModelHeader *h) { h->chunk_bytes = 64u << 20; }
static void uh_version2(Fedprof__V1__UpdateHeader *h) { h->protocol_version = 2; }
static void uh_version0(Fedprof__V1__UpdateHeader *h) { h->protocol_version = 0; }
static void uh_clip_nan(Fedprof__V1__UpdateHeader *h) { h->clip_bound = NAN; }
static void uh_clip_negative(Fedprof__V1__UpdateHeader *h) { h->clip_bound = -1; }
static void uh_noise_inf(Fedprof__V1__UpdateHeader *h) { h->noise->stddev = INFINITY; }

static void test_header_refusals(void **state)
{
    (void)state;
    size_t n = 1000;
    float *x = make_data(n, 21);
    fp_ts_header_t hm = hdr(FP_TS_MODEL, n, 1024), hu = hdr(FP_TS_UPDATE, n, 1024);
    fp_ts_reader_opts_t om = opts(FP_TS_MODEL, 1 << 20), ou = opts(FP_TS_UPDATE, 1 << 20);
    stream_t s = {0};

#define CASE_M(edit, code, reason, what)                                                                       \
    do {                                                                                                       \
        write_stream(&hm, x, &s);                                                                              \
        edit_model_header(&s, edit);                                                                           \
        expect_refused(&om, &s, 0, code, reason, what);                                                        \
        stream_free(&s);                                                                                       \
    } while (0)
#define CASE_U(edit, code, reason, what)                                                                       \
    do {                                                                                                       \
        write_stream(&hu, x, &s);                                                                              \
        edit_update_header(&s, edit);                                                                          \
        expect_refused(&ou, &s, 0, code, reason, what);                                                        \
        stream_free(&s);                                                                                       \
    } while (0)

    CASE_M(mh_zero_params, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "parameter_count 0");
    CASE_M(mh_dtype_unspecified, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "dtype 0");
    CASE_M(mh_chunk_count_wrong, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "chunk_count 5");
    CASE_M(mh_chunk_bytes_odd, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "chunk_bytes 1022");
    CASE_M(mh_chunk_bytes_tiny, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "chunk_bytes 4 ");
    CASE_M(mh_chunk_bytes_huge, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "chunk_bytes 67108864");
    CASE_U(uh_version2, FP_ERR_UNSUPPORTED, FP_TS_REJECT_VERSION, "protocol_version 2");
    CASE_U(uh_version0, FP_ERR_UNSUPPORTED, FP_TS_REJECT_VERSION, "protocol_version 0");
    CASE_U(uh_clip_nan, FP_ERR_NUMERIC, FP_TS_REJECT_NON_FINITE, "clip_bound is not finite");
    CASE_U(uh_clip_negative, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "clip_bound -1");
    CASE_U(uh_noise_inf, FP_ERR_NUMERIC, FP_TS_REJECT_NON_FINITE, "noise.stddev is not finite");

    /* parameter count above the maximum: refused at the header, nothing allocated */
    write_stream(&hm, x, &s);
    fp_ts_reader_opts_t small = opts(FP_TS_MODEL, n - 1);
    expect_refused(&small, &s, 0, FP_ERR_RANGE, FP_TS_REJECT_OVERSIZED, "parameter_count 1000 exceeds the maximum 999");
    /* ... and above the caller's buffer */
    float dst[999];
    small = opts(FP_TS_MODEL, 0);
    small.dst = dst;
    small.dst_cap = 999;
    expect_refused(&small, &s, 0, FP_ERR_RANGE, FP_TS_REJECT_OVERSIZED, "exceeds the maximum 999");
    /* wrong layout hash, wrong parameter count */
    fp_ts_reader_opts_t shape = om;
    shape.check_layout_hash = 1;
    shape.layout_hash = hm.layout_hash ^ 1;
    expect_refused(&shape, &s, 0, FP_ERR_FORMAT, FP_TS_REJECT_SHAPE, "layout_hash 1234abcd5678ef90, expected");
    shape = om;
    shape.expect_params = n + 1;
    expect_refused(&shape, &s, 0, FP_ERR_FORMAT, FP_TS_REJECT_SHAPE, "parameter_count 1000, expected 1001");
    /* a model reader given an update stream (or the reverse) does not accept it */
    {
        fp_ts_reader_t *r = NULL;
        assert_int_equal(fp_ts_reader_create(&ou, &r), FP_OK);
        assert_int_not_equal(feed_all(r, &s, NULL), FP_OK);
        assert_false(fp_ts_reader_complete(r));
        fp_ts_reader_destroy(r);
    }
    stream_free(&s);
    free(x);
#undef CASE_M
#undef CASE_U
}

/* ---- chunk order, length, digest, truncation -------------------------------------------------- */

static void test_order_refusals(void **state)
{
    (void)state;
    const fp_ts_kind kinds[] = {FP_TS_MODEL, FP_TS_UPDATE};
    for (int k = 0; k < 2; k++) {
        fp_ts_kind kind = kinds[k];
        size_t n = 1000; /* 4000 bytes in 1024-byte chunks: 4 chunks, the last 928 bytes */
        uint32_t cb = 1024;
        float *x = make_data(n, 31 + (uint64_t)k);
        fp_ts_header_t h = hdr(kind, n, cb);
        fp_ts_reader_opts_t o = opts(kind, n);
        stream_t s = {0};
        size_t len;

        /* chunk before the header */
        write_stream(&h, x, &s);
        stream_remove(&s, 0);
        expect_refused(&o, &s, 0, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "chunk index 0 before the header");
        stream_free(&s);

        /* digest before the header */
        write_stream(&h, x, &s);
        stream_set(&s, 0, s.p[5], s.n[5]);
        s.count = 5;
        expect_refused(&o, &s, 0, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "digest before the header");
        stream_free(&s);

        /* an empty message and a second header */
        write_stream(&h, x, &s);
        stream_set(&s, 1, malloc(1), 0);
        expect_refused(&o, &s, 1, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "has no header, chunk or digest");
        stream_free(&s);
        write_stream(&h, x, &s);
        {
            uint8_t *dup = malloc(s.n[0]);
            memcpy(dup, s.p[0], s.n[0]);
            stream_set(&s, 2, dup, s.n[0]);
        }
        expect_refused(&o, &s, 2, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "a second header after 1 chunks");
        stream_free(&s);

        /* chunks swapped (wrong order) */
        write_stream(&h, x, &s);
        {
            uint8_t *p = s.p[1];
            size_t pn = s.n[1];
            s.p[1] = s.p[2];
            s.n[1] = s.n[2];
            s.p[2] = p;
            s.n[2] = pn;
        }
        expect_refused(&o, &s, 1, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "chunk index 1 where 0 was expected (a gap)");
        stream_free(&s);

        /* duplicate chunk */
        write_stream(&h, x, &s);
        {
            uint8_t *dup = malloc(s.n[1]);
            memcpy(dup, s.p[1], s.n[1]);
            stream_set(&s, 2, dup, s.n[1]);
        }
        expect_refused(&o, &s, 2, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "chunk index 0 again (duplicate");
        stream_free(&s);

        /* gap: chunk 1 missing */
        write_stream(&h, x, &s);
        stream_remove(&s, 2);
        expect_refused(&o, &s, 2, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "chunk index 2 where 1 was expected (a gap)");
        stream_free(&s);

        /* right index, wrong offset */
        write_stream(&h, x, &s);
        {
            uint8_t *m_ = pack_chunk(kind, 1, 1028, (const uint8_t *)x + 1024, 1024, &len);
            stream_set(&s, 2, m_, len);
        }
        expect_refused(&o, &s, 2, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "chunk 1 at byte offset 1028, expected 1024");
        stream_free(&s);

        /* too long: chunk 0 with 4 bytes more than chunk_bytes */
        write_stream(&h, x, &s);
        {
            uint8_t *m_ = pack_chunk(kind, 0, 0, x, 1028, &len);
            stream_set(&s, 1, m_, len);
        }
        expect_refused(&o, &s, 1, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "chunk 0 holds 1028 bytes, expected 1024");
        stream_free(&s);

        /* too long: the last chunk full-size, running past the tensor's end */
        write_stream(&h, x, &s);
        {
            uint8_t big[1024] = {0};
            memcpy(big, (const uint8_t *)x + 3072, 928);
            {
                uint8_t *m_ = pack_chunk(kind, 3, 3072, big, 1024, &len);
                stream_set(&s, 4, m_, len);
            }
        }
        expect_refused(&o, &s, 4, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED,
                       "chunk 3: 1024 bytes at offset 3072 run past the tensor's 4000 bytes");
        stream_free(&s);

        /* too short: a middle chunk of 1020 bytes */
        write_stream(&h, x, &s);
        {
            uint8_t *m_ = pack_chunk(kind, 1, 1024, (const uint8_t *)x + 1024, 1020, &len);
            stream_set(&s, 2, m_, len);
        }
        expect_refused(&o, &s, 2, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "chunk 1 holds 1020 bytes, expected 1024");
        stream_free(&s);

        /* a chunk after the last one */
        write_stream(&h, x, &s);
        {
            uint8_t *extra = pack_chunk(kind, 4, 4000, x, 64, &len);
            uint8_t *dg = s.p[5];
            size_t dgn = s.n[5];
            s.p[5] = extra;
            s.n[5] = len;
            stream_push(&s, dg, dgn);
            free(dg);
        }
        expect_refused(&o, &s, 5, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED,
                       "chunk index 4 after the last chunk (chunk_count 4)");
        stream_free(&s);

        /* a message far above chunk_bytes + envelope: refused before it is unpacked */
        write_stream(&h, x, &s);
        {
            uint8_t *huge = calloc(1, 64 * 1024);
            stream_set(&s, 2, huge, 64 * 1024);
        }
        expect_refused(&o, &s, 2, FP_ERR_RANGE, FP_TS_REJECT_OVERSIZED, "message of 65536 bytes exceeds");
        stream_free(&s);
        /* and a big first message */
        write_stream(&h, x, &s);
        stream_set(&s, 0, calloc(1, 100000), 100000);
        expect_refused(&o, &s, 0, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "a header (at most 65536 bytes) was expected");
        stream_free(&s);

        /* digest after 2 of 4 chunks */
        write_stream(&h, x, &s);
        stream_remove(&s, 3);
        stream_remove(&s, 3);
        expect_refused(&o, &s, 3, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "digest after 2 of 4 chunks");
        stream_free(&s);

        /* bad digest: one bit of the SHA-256 flipped */
        uint8_t good[32];
        sha256(x, n * 4, good);
        write_stream(&h, x, &s);
        {
            uint8_t bad[32];
            memcpy(bad, good, 32);
            bad[17] ^= 0x10;
            {
                uint8_t *m_ = pack_digest(kind, bad, 32, 4000, &len);
                stream_set(&s, 5, m_, len);
            }
        }
        expect_refused(&o, &s, 5, FP_ERR_PARSE, FP_TS_REJECT_DIGEST,
                       "SHA-256 of the 4000 received bytes does not match the digest");
        stream_free(&s);
        /* bad digest: one data bit flipped in transit (the chunk stays finite) */
        write_stream(&h, x, &s);
        {
            float y[256];
            memcpy(y, (const uint8_t *)x + 1024, 1024);
            y[10] = nextafterf(y[10], 2.0f);
            {
                uint8_t *m_ = pack_chunk(kind, 1, 1024, y, 1024, &len);
                stream_set(&s, 2, m_, len);
            }
        }
        expect_refused(&o, &s, 5, FP_ERR_PARSE, FP_TS_REJECT_DIGEST, "does not match the digest");
        stream_free(&s);
        /* digest total_bytes wrong, digest of 31 bytes */
        write_stream(&h, x, &s);
        {
            uint8_t *m_ = pack_digest(kind, good, 32, 4004, &len);
            stream_set(&s, 5, m_, len);
        }
        expect_refused(&o, &s, 5, FP_ERR_PARSE, FP_TS_REJECT_DIGEST, "total_bytes 4004, but 4000 bytes were received");
        stream_free(&s);
        write_stream(&h, x, &s);
        {
            uint8_t *m_ = pack_digest(kind, good, 31, 4000, &len);
            stream_set(&s, 5, m_, len);
        }
        expect_refused(&o, &s, 5, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "digest holds 31 bytes");
        stream_free(&s);

        /* trailing message after the digest (a copy of the digest, and a chunk) */
        write_stream(&h, x, &s);
        stream_push(&s, s.p[5], s.n[5]);
        expect_refused(&o, &s, 6, FP_ERR_PARSE, FP_TS_REJECT_MALFORMED, "after the digest");
        stream_free(&s);

        /* truncated: no digest -> not complete, finish says what is missing */
        write_stream(&h, x, &s);
        {
            fp_ts_reader_t *r = NULL;
            assert_int_equal(fp_ts_reader_create(&o, &r), FP_OK);
            for (size_t i = 0; i < 5; i++)
                assert_int_equal(fp_ts_reader_feed(r, s.p[i], s.n[i]), FP_OK);
            assert_false(fp_ts_reader_complete(r));
            assert_null(fp_ts_reader_data(r, NULL));
            assert_int_equal(fp_ts_reader_bytes(r), 4000);
            assert_int_equal(fp_ts_reader_finish(r), FP_ERR_PARSE);
            assert_non_null(strstr(fp_error_message(), "stream ended without its digest"));
            assert_int_equal(fp_ts_reader_reject(r), FP_TS_REJECT_MALFORMED);
            /* the reader is usable again after a reset */
            fp_ts_reader_reset(r);
            assert_int_equal(feed_all(r, &s, NULL), FP_OK);
            assert_true(fp_ts_reader_complete(r));
            fp_ts_reader_reset(r);
            for (size_t i = 0; i < 3; i++)
                assert_int_equal(fp_ts_reader_feed(r, s.p[i], s.n[i]), FP_OK);
            assert_int_equal(fp_ts_reader_finish(r), FP_ERR_PARSE);
            assert_non_null(strstr(fp_error_message(), "stream ended after 2 of 4 chunks (no digest)"));
            fp_ts_reader_reset(r);
            assert_int_equal(fp_ts_reader_finish(r), FP_ERR_PARSE);
            assert_non_null(strstr(fp_error_message(), "stream ended before its header"));
            fp_ts_reader_destroy(r);
        }
        stream_free(&s);
        free(x);
    }
}

/* ---- non-finite data ------------------------------------------------------------------------ */

static void test_non_finite(void **state)
{
    (void)state;
    size_t n = 1000;
    float *x = make_data(n, 41);
    /* the writer refuses to send them */
    fp_ts_header_t h = hdr(FP_TS_UPDATE, n, 1024);
    fp_ts_writer_t *w = NULL;
    x[300] = NAN;
    assert_int_equal(fp_ts_writer_create(&h, x, &w), FP_ERR_NUMERIC);
    assert_non_null(strstr(fp_error_message(), "element 300 is NaN"));
    x[300] = 0.5f;
    h.clip_bound = INFINITY;
    assert_int_equal(fp_ts_writer_create(&h, x, &w), FP_ERR_NUMERIC);
    assert_null(w);

    /* the reader refuses them naming the element (a peer that does not use our writer) */
    const struct {
        float v;
        size_t at;
        const char *what;
    } cases[] = {
        {NAN, 300, "chunk 1: element 300 is NaN"},
        {INFINITY, 0, "chunk 0: element 0 is +Inf"},
        {-INFINITY, 999, "chunk 3: element 999 is -Inf"},
    };
    h = hdr(FP_TS_UPDATE, n, 1024);
    fp_ts_reader_opts_t o = opts(FP_TS_UPDATE, n);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        stream_t s = {0};
        write_stream(&h, x, &s);
        float *y = malloc(n * sizeof *y);
        memcpy(y, x, n * sizeof *y);
        y[cases[c].at] = cases[c].v;
        size_t ci = cases[c].at * 4 / 1024, off = ci * 1024, bytes = n * 4 - off < 1024 ? n * 4 - off : 1024;
        size_t len;
        uint8_t *m_ = pack_chunk(FP_TS_UPDATE, (uint32_t)ci, off, (const uint8_t *)y + off, bytes, &len);
        stream_set(&s, 1 + ci, m_, len);
        expect_refused(&o, &s, 1 + ci, FP_ERR_NUMERIC, FP_TS_REJECT_NON_FINITE, cases[c].what);
        free(y);
        stream_free(&s);
    }
    free(x);
}

/* ---- garbage -------------------------------------------------------------------------------- */

static void test_garbage(void **state)
{
    (void)state;
    size_t n = 100;
    float *x = make_data(n, 51);
    uint8_t buf[2048];
    const fp_ts_kind kinds[] = {FP_TS_MODEL, FP_TS_UPDATE};
    for (int k = 0; k < 2; k++) {
        fp_ts_header_t h = hdr(kinds[k], n, 64);
        stream_t s = {0};
        write_stream(&h, x, &s);
        fp_ts_reader_opts_t o = opts(kinds[k], 1000);
        fp_ts_reader_t *r = NULL;
        assert_int_equal(fp_ts_reader_create(&o, &r), FP_OK);
        uint64_t seed = 0xfeed0000u + (uint64_t)k;
        int refused = 0;
        for (int trial = 0; trial < 3000; trial++) {
            fp_ts_reader_reset(r);
            /* random bytes, or a valid stream with random bytes overwritten, truncated or inserted */
            int mode = (int)(sm_next(&seed) % 3);
            if (mode == 0) {
                size_t len = (size_t)(sm_next(&seed) % sizeof buf);
                for (size_t i = 0; i < len; i++)
                    buf[i] = (uint8_t)sm_next(&seed);
                if (fp_ts_reader_feed(r, buf, len) != FP_OK)
                    refused++;
                else
                    assert_false(fp_ts_reader_complete(r));
                continue;
            }
            size_t victim = (size_t)(sm_next(&seed) % s.count);
            fp_status st = FP_OK;
            for (size_t i = 0; i < s.count && st == FP_OK; i++) {
                if (i != victim) {
                    st = fp_ts_reader_feed(r, s.p[i], s.n[i]);
                    continue;
                }
                size_t len = s.n[i] < sizeof buf ? s.n[i] : sizeof buf;
                memcpy(buf, s.p[i], len);
                if (mode == 1) {
                    int flips = 1 + (int)(sm_next(&seed) % 4);
                    for (int f = 0; f < flips; f++)
                        buf[sm_next(&seed) % len] ^= (uint8_t)(1u << (sm_next(&seed) % 8));
                } else {
                    len = (size_t)(sm_next(&seed) % len);
                }
                st = fp_ts_reader_feed(r, buf, len);
            }
            if (st == FP_OK)
                st = fp_ts_reader_finish(r);
            if (st != FP_OK) {
                refused++;
                assert_int_not_equal(fp_ts_reader_reject(r), FP_TS_REJECT_NONE);
            } else {
                /* a change the stream survived can only be one protobuf ignores: the data is intact */
                size_t got_n;
                const float *got = fp_ts_reader_data(r, &got_n);
                assert_int_equal(got_n, n);
                assert_memory_equal(got, x, n * sizeof *x);
            }
        }
        assert_true(refused > 2500);
        fp_ts_reader_destroy(r);
        stream_free(&s);
    }
    free(x);
}

/* ---- a known digest (the coordinator's model, hashed once per version) -------------------------- */

static void test_known_digest(void **state)
{
    (void)state;
    const size_t ns[] = {1, 16, 17, 1000};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        const size_t n = ns[k];
        float *x = make_data(n, 40 + k);
        uint8_t d[FP_TS_DIGEST_LEN], want[32];
        assert_int_equal(fp_ts_digest(x, n, d), FP_OK);
        sha256(x, n * sizeof *x, want);
        assert_memory_equal(d, want, 32);
        /* the same stream, byte for byte, as the hashing writer's */
        fp_ts_header_t h = hdr(FP_TS_MODEL, n, 64);
        stream_t a = {0}, b = {0};
        write_stream(&h, x, &a);
        write_stream_with(&h, x, d, &b);
        assert_int_equal(a.count, b.count);
        for (size_t i = 0; i < a.count; i++) {
            assert_int_equal(a.n[i], b.n[i]);
            assert_memory_equal(a.p[i], b.p[i], a.n[i]);
        }
        /* and it reads back */
        fp_ts_reader_opts_t o = opts(FP_TS_MODEL, n);
        fp_ts_reader_t *r = NULL;
        assert_int_equal(fp_ts_reader_create(&o, &r), FP_OK);
        assert_int_equal(feed_all(r, &b, NULL), FP_OK);
        assert_int_equal(fp_ts_reader_finish(r), FP_OK);
        size_t got = 0;
        const float *y = fp_ts_reader_data(r, &got);
        assert_int_equal(got, n);
        assert_memory_equal(y, x, n * sizeof *x);
        fp_ts_reader_destroy(r);
        stream_free(&b);
        /* a digest that is not the data's: the writer sends it as given and every reader refuses */
        d[k % 32] ^= 0x40;
        memset(&b, 0, sizeof b);
        write_stream_with(&h, x, d, &b);
        expect_refused(&o, &b, b.count - 1, FP_ERR_PARSE, FP_TS_REJECT_DIGEST, "does not match the digest");
        stream_free(&a);
        stream_free(&b);
        free(x);
    }
    /* fp_ts_digest checks the values and its arguments */
    float bad[3] = {1.0f, NAN, 2.0f};
    uint8_t d[FP_TS_DIGEST_LEN];
    assert_int_equal(fp_ts_digest(bad, 3, d), FP_ERR_NUMERIC);
    assert_non_null(strstr(fp_error_message(), "element 1"));
    bad[1] = -INFINITY;
    assert_int_equal(fp_ts_digest(bad, 3, d), FP_ERR_NUMERIC);
    assert_int_equal(fp_ts_digest(NULL, 3, d), FP_ERR_INVALID);
    assert_int_equal(fp_ts_digest(bad, 1, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_ts_digest(bad, FP_TS_MAX_PARAMS + 1, d), FP_ERR_RANGE);
    fp_ts_writer_t *w = (fp_ts_writer_t *)1;
    fp_ts_header_t h = hdr(FP_TS_MODEL, 3, 0);
    assert_int_equal(fp_ts_writer_create_digested(&h, bad, NULL, &w), FP_ERR_INVALID);
    assert_null(w);
    w = (fp_ts_writer_t *)1;
    h.chunk_bytes = 62; /* the header is still checked */
    assert_int_equal(fp_ts_writer_create_digested(&h, bad, d, &w), FP_ERR_INVALID);
    assert_null(w);
}

/* ---- arguments ------------------------------------------------------------------------------ */

static void test_bad_arguments(void **state)
{
    (void)state;
    fp_ts_reader_t *r = (fp_ts_reader_t *)1;
    fp_ts_reader_opts_t o = opts(FP_TS_MODEL, 0);
    assert_int_equal(fp_ts_reader_create(&o, &r), FP_ERR_INVALID); /* no max, no dst */
    assert_null(r);
    o = opts((fp_ts_kind)3, 10);
    assert_int_equal(fp_ts_reader_create(&o, &r), FP_ERR_INVALID);
    assert_int_equal(fp_ts_reader_create(NULL, &r), FP_ERR_INVALID);
    assert_int_equal(fp_ts_reader_feed(NULL, NULL, 0), FP_ERR_INVALID);
    assert_int_equal(fp_ts_reader_finish(NULL), FP_ERR_INVALID);
    assert_false(fp_ts_reader_complete(NULL));
    assert_null(fp_ts_reader_header(NULL));
    fp_ts_reader_destroy(NULL);
    fp_ts_reader_reset(NULL);

    float x[4] = {1, 2, 3, 4};
    fp_ts_writer_t *w = (fp_ts_writer_t *)1;
    fp_ts_header_t h = hdr(FP_TS_MODEL, 4, 62);
    assert_int_equal(fp_ts_writer_create(&h, x, &w), FP_ERR_INVALID); /* not a multiple of 4 */
    assert_null(w);
    h.chunk_bytes = 32;
    assert_int_equal(fp_ts_writer_create(&h, x, &w), FP_ERR_INVALID); /* below the minimum */
    h.chunk_bytes = FP_TS_CHUNK_BYTES_MAX + 4;
    assert_int_equal(fp_ts_writer_create(&h, x, &w), FP_ERR_INVALID);
    h = hdr(FP_TS_MODEL, FP_TS_MAX_PARAMS + 1, 0);
    assert_int_equal(fp_ts_writer_create(&h, x, &w), FP_ERR_RANGE);
    h = hdr(FP_TS_UPDATE, 4, 0);
    h.clip_bound = -2;
    assert_int_equal(fp_ts_writer_create(&h, x, &w), FP_ERR_INVALID);
    assert_int_equal(fp_ts_writer_create(NULL, x, &w), FP_ERR_INVALID);
    assert_int_equal(fp_ts_writer_next(NULL, NULL, NULL), FP_ERR_INVALID);
    fp_ts_writer_destroy(NULL);
    assert_int_equal(fp_ts_chunk_count(0, 64), 0);
    assert_int_equal(fp_ts_chunk_count(16, 64), 1);
    assert_int_equal(fp_ts_chunk_count(17, 64), 2);
    assert_string_equal(fp_ts_reject_name(FP_TS_REJECT_DIGEST), "DIGEST");
    /* the reasons are the proto's RejectReason numbers */
    assert_int_equal(FP_TS_REJECT_MALFORMED, FEDPROF__V1__REJECT_REASON__REJECT_REASON_MALFORMED);
    assert_int_equal(FP_TS_REJECT_OVERSIZED, FEDPROF__V1__REJECT_REASON__REJECT_REASON_OVERSIZED);
    assert_int_equal(FP_TS_REJECT_SHAPE, FEDPROF__V1__REJECT_REASON__REJECT_REASON_SHAPE);
    assert_int_equal(FP_TS_REJECT_NON_FINITE, FEDPROF__V1__REJECT_REASON__REJECT_REASON_NON_FINITE);
    assert_int_equal(FP_TS_REJECT_DIGEST, FEDPROF__V1__REJECT_REASON__REJECT_REASON_DIGEST);
    assert_int_equal(FP_TS_REJECT_VERSION, FEDPROF__V1__REJECT_REASON__REJECT_REASON_VERSION);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_sizes), cmocka_unit_test(test_empty_refused),
        cmocka_unit_test(test_header_refusals),  cmocka_unit_test(test_order_refusals),
        cmocka_unit_test(test_non_finite),       cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_bad_arguments),    cmocka_unit_test(test_known_digest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
