/* fuzz_tensor_stream: common/tensor_stream's reader fed hostile message sequences.
 *
 * Input: one flag byte, then messages as [u16 little-endian length][bytes] (the last one takes
 * what is left if shorter). Flags: bit 0 update (else model) stream; bit 1 the caller's buffer
 * (else the reader's own); bit 2 check the layout hash of the seeds; bit 3 feed the stream twice
 * through one reader with a reset in between. Invariants: the reader never crashes or leaks; a
 * completed stream has finite data of parameter_count floats; its header and data re-encoded by
 * the writer are read back identically. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/errors.h"
#include "common/tensor_stream.h"
#include "fuzz_common.h"

#define FUZZ_MAX_PARAMS 4096
#define FUZZ_LAYOUT_HASH 0x1234abcd5678ef90ull /* what tests/fuzz/gen_corpus.c writes */

static float dst_buf[FUZZ_MAX_PARAMS];

static void reencode(const fp_ts_header_t *h, const float *x, size_t n)
{
    fp_ts_writer_t *w = NULL;
    FUZZ_CHECK(fp_ts_writer_create(h, x, &w) == FP_OK);
    fp_ts_reader_opts_t o = {.kind = h->kind, .max_params = n, .expect_params = n, .check_layout_hash = 1,
                             .layout_hash = h->layout_hash};
    fp_ts_reader_t *r = NULL;
    FUZZ_CHECK(fp_ts_reader_create(&o, &r) == FP_OK);
    for (;;) {
        const uint8_t *m;
        size_t len;
        FUZZ_CHECK(fp_ts_writer_next(w, &m, &len) == FP_OK);
        if (!m)
            break;
        FUZZ_CHECK(fp_ts_reader_feed(r, m, len) == FP_OK);
    }
    FUZZ_CHECK(fp_ts_reader_finish(r) == FP_OK);
    size_t got_n = 0;
    const float *got = fp_ts_reader_data(r, &got_n);
    FUZZ_CHECK(got && got_n == n && memcmp(got, x, n * sizeof *x) == 0);
    const fp_ts_header_t *g = fp_ts_reader_header(r);
    FUZZ_CHECK(g && g->round_id == h->round_id && g->model_version == h->model_version &&
               g->chunk_bytes == h->chunk_bytes && g->chunk_count == h->chunk_count);
    fp_ts_reader_destroy(r);
    fp_ts_writer_destroy(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    fp_ts_reader_opts_t o;
    memset(&o, 0, sizeof o);
    o.kind = (flags & 1) ? FP_TS_UPDATE : FP_TS_MODEL;
    o.max_params = FUZZ_MAX_PARAMS;
    if (flags & 2) {
        o.dst = dst_buf;
        o.dst_cap = FUZZ_MAX_PARAMS;
    }
    if (flags & 4) {
        o.check_layout_hash = 1;
        o.layout_hash = FUZZ_LAYOUT_HASH;
    }
    fp_ts_reader_t *r = NULL;
    FUZZ_CHECK(fp_ts_reader_create(&o, &r) == FP_OK);
    int passes = (flags & 8) ? 2 : 1;
    for (int pass = 0; pass < passes; pass++) {
        fp_ts_reader_reset(r);
        size_t pos = 1;
        int refused = 0;
        while (pos < size) {
            size_t len = data[pos];
            if (pos + 1 < size)
                len |= (size_t)data[pos + 1] << 8;
            pos += 2;
            if (pos > size)
                pos = size;
            if (len > size - pos)
                len = size - pos;
            fp_status st = fp_ts_reader_feed(r, data + pos, len);
            pos += len;
            if (st != FP_OK) {
                refused = 1;
                FUZZ_CHECK(fp_ts_reader_reject(r) != FP_TS_REJECT_NONE);
                FUZZ_CHECK(!fp_ts_reader_complete(r));
                break;
            }
        }
        fp_status fin = fp_ts_reader_finish(r);
        FUZZ_CHECK((fin == FP_OK) == fp_ts_reader_complete(r));
        FUZZ_CHECK(!(refused && fin == FP_OK));
        if (fin != FP_OK)
            continue;
        size_t n = 0;
        const float *x = fp_ts_reader_data(r, &n);
        const fp_ts_header_t *h = fp_ts_reader_header(r);
        FUZZ_CHECK(x && h && n == h->param_count && n >= 1 && n <= FUZZ_MAX_PARAMS);
        FUZZ_CHECK(fp_ts_reader_bytes(r) == (uint64_t)n * 4);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(isfinite(x[i]));
        if (flags & 4)
            FUZZ_CHECK(h->layout_hash == FUZZ_LAYOUT_HASH);
        reencode(h, x, n);
    }
    fp_ts_reader_destroy(r);
    fp_error_clear();
    return 0;
}
