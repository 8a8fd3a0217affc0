/* test_clip: L2 clipping of a vector and of matrix rows (dp/clip).
 *
 * The promise tested: after clipping, the exact L2 norm of the float vector (computed here in
 * long double) is ≤ bound; in-bound vectors are bit-for-bit unchanged; the clipped vector keeps its
 * direction and loses at most 2^-20 relative beyond the bound; NaN/Inf is refused untouched. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/rng.h"
#include "dp/clip.h"

static long double exact_norm(const float *x, size_t n)
{
    long double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (long double)x[i] * x[i];
    return sqrtl(s);
}

static void fill(float *x, size_t n, uint64_t seed, double scale)
{
    fp_rng_t r;
    fp_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(fp_rng_normal(&r) * scale);
}

static void test_clip_bound_holds(void **state)
{
    (void)state;
    /* Many sizes, scales and bounds, including norms just above the bound. */
    const size_t sizes[] = {1, 3, 255, 256, 257, 10007, 1000000};
    const double bounds[] = {1e-3, 0.1, 1.0, 7.5, 1e4};
    for (size_t a = 0; a < sizeof sizes / sizeof sizes[0]; a++) {
        size_t n = sizes[a];
        float *x = malloc(n * sizeof *x), *orig = malloc(n * sizeof *x);
        assert_non_null(x);
        assert_non_null(orig);
        for (size_t b = 0; b < sizeof bounds / sizeof bounds[0]; b++) {
            for (int s = 0; s < 3; s++) {
                fill(orig, n, 1000 * a + 10 * b + s, 1.0);
                long double n0 = exact_norm(orig, n);
                /* s = 0: far above; s = 1: a hair above; s = 2: a hair below. */
                double target = s == 0 ? bounds[b] * 100 : bounds[b] * (s == 1 ? 1 + 1e-7 : 1 - 1e-7);
                for (size_t i = 0; i < n; i++)
                    orig[i] = (float)(orig[i] * (target / (double)n0));
                memcpy(x, orig, n * sizeof *x);
                double before = -1, scale = -1;
                assert_int_equal(fp_dp_clip_l2(x, n, bounds[b], &before, &scale), FP_OK);
                long double nb = exact_norm(orig, n), na = exact_norm(x, n);
                assert_true(fabsl((long double)before - nb) <= 1e-12L * nb);
                assert_true(na <= (long double)bounds[b]); /* strictly within, no (1 + tiny) */
                if (before <= bounds[b]) {
                    assert_true(scale == 1.0);
                    assert_memory_equal(x, orig, n * sizeof *x);
                } else {
                    assert_true(scale < 1.0);
                    assert_true(na >= (long double)bounds[b] * (1 - 0x1p-19L));
                    /* Same direction: every coordinate scaled by the reported factor (to float). */
                    for (size_t i = 0; i < n; i += 1 + n / 100)
                        assert_true(x[i] == (float)((double)orig[i] * scale));
                }
            }
        }
        free(x);
        free(orig);
    }
}

static void test_clip_edge_vectors(void **state)
{
    (void)state;
    double before, scale;
    /* Zero vector: norm 0, unchanged. */
    float z[5] = {0};
    assert_int_equal(fp_dp_clip_l2(z, 5, 1.0, &before, &scale), FP_OK);
    assert_true(before == 0.0 && scale == 1.0);
    for (int i = 0; i < 5; i++)
        assert_true(z[i] == 0.0f);
    /* Empty vector. */
    assert_int_equal(fp_dp_clip_l2(NULL, 0, 1.0, &before, &scale), FP_OK);
    assert_true(before == 0.0);
    /* Exactly on the bound: unchanged. */
    float e[2] = {3.0f, 4.0f};
    assert_int_equal(fp_dp_clip_l2(e, 2, 5.0, &before, NULL), FP_OK);
    assert_true(before == 5.0 && e[0] == 3.0f && e[1] == 4.0f);
    /* Huge floats: squares overflow float but not double. */
    float h[3] = {3e38f, -3e38f, 1e38f};
    assert_int_equal(fp_dp_clip_l2(h, 3, 2.0, &before, &scale), FP_OK);
    assert_true(isfinite(before) && exact_norm(h, 3) <= 2.0L);
    /* Subnormals stay finite and within bound. */
    float s[2] = {1e-40f, -1e-40f};
    assert_int_equal(fp_dp_clip_l2(s, 2, 1.0, &before, &scale), FP_OK);
    assert_true(scale == 1.0 && s[0] == 1e-40f);
    /* NULL out-parameters are allowed. */
    float o[2] = {30.0f, 40.0f};
    assert_int_equal(fp_dp_clip_l2(o, 2, 5.0, NULL, NULL), FP_OK);
    assert_true(exact_norm(o, 2) <= 5.0L);
}

static void test_clip_refuses_bad_input(void **state)
{
    (void)state;
    float x[4] = {1, 2, 3, 4};
    double before = 7, scale = 7;
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (int b = 0; b < 3; b++) {
        float y[4] = {10, 20, 30, 40};
        y[1 + b % 3] = bad[b];
        assert_int_equal(fp_dp_clip_l2(y, 4, 1.0, &before, &scale), FP_ERR_NUMERIC);
        assert_true(y[0] == 10.0f); /* untouched */
        float rows[6] = {10, 20, 30, 40, 50, 60};
        rows[4] = bad[b];
        assert_int_equal(fp_dp_clip_rows(rows, 3, 2, 1.0, NULL, NULL), FP_ERR_NUMERIC);
        assert_true(rows[0] == 10.0f && rows[1] == 20.0f); /* no row clipped before the check */
        double nrm;
        assert_int_equal(fp_dp_l2_norm(y, 4, &nrm), FP_ERR_NUMERIC);
    }
    const double bad_bounds[] = {0.0, -1.0, NAN, INFINITY};
    for (int b = 0; b < 4; b++) {
        assert_int_equal(fp_dp_clip_l2(x, 4, bad_bounds[b], &before, &scale), FP_ERR_INVALID);
        assert_int_equal(fp_dp_clip_rows(x, 2, 2, bad_bounds[b], NULL, NULL), FP_ERR_INVALID);
        double f;
        assert_int_equal(fp_dp_clip_factor(1.0, bad_bounds[b], &f), FP_ERR_INVALID);
    }
    assert_true(x[0] == 1 && x[3] == 4);
    assert_int_equal(fp_dp_clip_l2(NULL, 4, 1.0, NULL, NULL), FP_ERR_INVALID);
    double f;
    assert_int_equal(fp_dp_clip_factor(NAN, 1.0, &f), FP_ERR_INVALID);
    assert_int_equal(fp_dp_clip_factor(-1.0, 1.0, &f), FP_ERR_INVALID);
    assert_int_equal(fp_dp_clip_factor(1.0, 1.0, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_dp_clip_factor(0.5, 1.0, &f), FP_OK);
    assert_true(f == 1.0);
    assert_int_equal(fp_dp_clip_factor(4.0, 1.0, &f), FP_OK);
    assert_true(f == 0.25 * FP_DP_CLIP_MARGIN);
    assert_int_equal(fp_dp_clip_factor(INFINITY, 1.0, &f), FP_OK);
    assert_true(f == 0.0);
    assert_int_equal(fp_dp_row_norms(NULL, 2, 2, &f), FP_ERR_INVALID);
    assert_int_equal(fp_dp_clip_rows(x, SIZE_MAX / 2, 4, 1.0, NULL, NULL), FP_ERR_RANGE);
}

static void test_clip_rows(void **state)
{
    (void)state;
    /* [rows x cols] with rows far above, near and below the bound, and an all-zero row: each row
     * is clipped independently and the reported norms/scales match a per-row fp_dp_clip_l2. */
    const size_t rows = 64, cols = 333;
    const double bound = 0.5;
    float *x = malloc(rows * cols * sizeof *x), *ref = malloc(rows * cols * sizeof *x);
    double norms[64], scales[64], rn[64];
    assert_non_null(x);
    assert_non_null(ref);
    fill(x, rows * cols, 7, 0.05);
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            x[r * cols + c] *= (float)(r % 4 == 3 ? 0.0 : (double)(r + 1) / 16);
    memcpy(ref, x, rows * cols * sizeof *x);
    assert_int_equal(fp_dp_row_norms(x, rows, cols, rn), FP_OK);
    assert_int_equal(fp_dp_clip_rows(x, rows, cols, bound, norms, scales), FP_OK);
    size_t clipped = 0, kept = 0;
    for (size_t r = 0; r < rows; r++) {
        double nb, sc;
        assert_int_equal(fp_dp_clip_l2(ref + r * cols, cols, bound, &nb, &sc), FP_OK);
        assert_true(norms[r] == nb && rn[r] == nb && scales[r] == sc);
        assert_memory_equal(x + r * cols, ref + r * cols, cols * sizeof *x);
        assert_true(exact_norm(x + r * cols, cols) <= (long double)bound);
        clipped += sc < 1.0;
        kept += sc == 1.0;
    }
    assert_true(clipped > 10 && kept > 10);
    /* NULL outputs are fine; zero rows or columns are a no-op. */
    assert_int_equal(fp_dp_clip_rows(x, rows, cols, bound, NULL, NULL), FP_OK);
    assert_int_equal(fp_dp_clip_rows(NULL, 0, cols, bound, NULL, NULL), FP_OK);
    assert_int_equal(fp_dp_clip_rows(x, rows, 0, bound, norms, NULL), FP_OK);
    assert_true(norms[0] == 0.0);
    free(x);
    free(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clip_bound_holds),
        cmocka_unit_test(test_clip_edge_vectors),
        cmocka_unit_test(test_clip_refuses_bad_input),
        cmocka_unit_test(test_clip_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
