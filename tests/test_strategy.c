/* test_strategy: round aggregation and server optimizers (server/strategy).
 *
 * Every strategy is compared with a straightforward reference written here, on small random
 * inputs from fixed seeds. Tolerances and why:
 *   weighted / trimmed means: the reference is exact (long double over sorted or given values);
 *     the library sums in double and rounds once to float, so
 *     |out − ref| ≤ 2^-24·|ref| (the final rounding) + n·2^-50·max|x| (n double additions,
 *     each ≤ 2^-53 relative to a partial sum ≤ n·max|x|, with 4× headroom).
 *   median: exact equality (the same float values are picked; the mean of the two middle ones
 *     is formed the same way).
 *   optimizers: the reference evaluates each rule in double and stores w, m, v as float, as the
 *     contract says; the same operations in the same order, so the results should be equal and
 *     are checked to 2^-21 of the largest |value| of the vector (a few float ulps, for a
 *     compiler that orders an expression differently).
 *   hand-checked coordinates: 1e-6 relative (a few float roundings of values near 1).
 * Bad inputs are refused with the documented code and change nothing (results, counts, bytes,
 * w, m, v and steps compared before and after). OpenMP results are compared bit for bit at 1
 * and 4 threads. */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/rng.h"
#include "server/strategy.h"

#define N_KINDS 7
#define BIG_P 20000 /* above the library's one-thread threshold for every loop */

static void fill(float *x, size_t n, fp_rng_t *r, double scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(fp_rng_normal(r) * scale);
}

static float *fmalloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double mean_tol(double ref, double maxabs, size_t n)
{
    return ldexp(fabs(ref), -24) + (double)n * ldexp(maxabs, -50) + 1e-300;
}

static fp_agg_t *agg_new(fp_strategy_kind k, double trim, size_t P, size_t max_updates)
{
    fp_strategy_opts_t o;
    fp_strategy_defaults(&o, k);
    o.trim_fraction = trim;
    fp_agg_t *a = NULL;
    assert_int_equal(fp_agg_create(&o, P, max_updates, &a), FP_OK);
    assert_non_null(a);
    return a;
}

/* ---- Names and options ------------------------------------------------------------------------- */

static void test_names_and_options(void **state)
{
    (void)state;
    const char *names[N_KINDS] = {"fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "median", "trimmed_mean"};
    for (int k = 0; k < N_KINDS; k++) {
        assert_string_equal(fp_strategy_name((fp_strategy_kind)k), names[k]);
        fp_strategy_kind got = (fp_strategy_kind)-1;
        assert_int_equal(fp_strategy_parse(names[k], &got), FP_OK);
        assert_int_equal(got, k);
        fp_strategy_opts_t o;
        fp_strategy_defaults(&o, (fp_strategy_kind)k);
        assert_int_equal(o.kind, k);
        assert_int_equal(fp_strategy_validate(&o), FP_OK);
        assert_true(o.server_lr == (k >= 2 && k <= 4 ? 0.01 : 1.0));
        assert_true(o.momentum == 0.9 && o.beta1 == 0.9 && o.beta2 == 0.99 && o.tau == 1e-3 && o.trim_fraction == 0.1);
        assert_int_equal(fp_strategy_buffers((fp_strategy_kind)k), k >= 5);
    }
    assert_string_equal(fp_strategy_name((fp_strategy_kind)7), "unknown");
    assert_string_equal(fp_strategy_name((fp_strategy_kind)-1), "unknown");

    const char *bad[] = {"FedAvg", "FEDAVG", "fedavg ", " fedavg", "", "fedprox", "trimmed-mean", "median\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fp_strategy_kind got = FP_STRAT_FEDYOGI;
        assert_int_equal(fp_strategy_parse(bad[i], &got), FP_ERR_INVALID);
        assert_int_equal(got, FP_STRAT_FEDYOGI);
        assert_non_null(strstr(fp_error_message(), "trimmed_mean")); /* lists the accepted names */
    }
    fp_strategy_kind got = FP_STRAT_MEDIAN;
    assert_int_equal(fp_strategy_parse(NULL, &got), FP_ERR_INVALID);
    assert_int_equal(got, FP_STRAT_MEDIAN);
    assert_int_equal(fp_strategy_parse("fedavg", NULL), FP_ERR_INVALID);
    assert_int_equal(fp_strategy_validate(NULL), FP_ERR_INVALID);
}

static void test_invalid_options(void **state)
{
    (void)state;
    const double nan = NAN, inf = INFINITY;
    struct {
        fp_strategy_kind kind;
        int field; /* 0 lr, 1 momentum, 2 beta1, 3 beta2, 4 tau, 5 trim */
        double value;
        const char *name;
    } cases[] = {
        {FP_STRAT_FEDAVG, 0, 0.0, "server_lr"},       {FP_STRAT_FEDAVG, 0, -1.0, "server_lr"},
        {FP_STRAT_MEDIAN, 0, nan, "server_lr"},       {FP_STRAT_FEDADAM, 0, inf, "server_lr"},
        {FP_STRAT_FEDAVGM, 1, 1.0, "momentum"},       {FP_STRAT_FEDAVGM, 1, -0.1, "momentum"},
        {FP_STRAT_FEDAVGM, 1, nan, "momentum"},       {FP_STRAT_FEDADAM, 2, 1.0, "beta1"},
        {FP_STRAT_FEDYOGI, 2, nan, "beta1"},          {FP_STRAT_FEDADAGRAD, 3, -0.5, "beta2"},
        {FP_STRAT_FEDADAM, 3, 1.0, "beta2"},          {FP_STRAT_FEDYOGI, 4, 0.0, "tau"},
        {FP_STRAT_FEDADAM, 4, -1e-3, "tau"},          {FP_STRAT_FEDADAGRAD, 4, nan, "tau"},
        {FP_STRAT_FEDADAM, 4, 1e30, "tau"},           {FP_STRAT_TRIMMED_MEAN, 5, 0.5, "trim_fraction"},
        {FP_STRAT_TRIMMED_MEAN, 5, -0.01, "trim_fraction"}, {FP_STRAT_TRIMMED_MEAN, 5, nan, "trim_fraction"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fp_strategy_opts_t o;
        fp_strategy_defaults(&o, cases[i].kind);
        double *f[] = {&o.server_lr, &o.momentum, &o.beta1, &o.beta2, &o.tau, &o.trim_fraction};
        *f[cases[i].field] = cases[i].value;
        assert_int_equal(fp_strategy_validate(&o), FP_ERR_RANGE);
        assert_non_null(strstr(fp_error_message(), cases[i].name));
        fp_agg_t *a = (fp_agg_t *)&o; /* a sentinel: must stay untouched */
        fp_sopt_t *s = (fp_sopt_t *)&o;
        assert_int_equal(fp_agg_create(&o, 10, 3, &a), FP_ERR_RANGE);
        assert_int_equal(fp_sopt_create(&o, 10, &s), FP_ERR_RANGE);
        assert_ptr_equal(a, (fp_agg_t *)&o);
        assert_ptr_equal(s, (fp_sopt_t *)&o);
    }
    /* Fields a kind does not use are not checked. */
    fp_strategy_opts_t o;
    fp_strategy_defaults(&o, FP_STRAT_FEDAVG);
    o.momentum = o.beta1 = o.beta2 = o.tau = o.trim_fraction = nan;
    assert_int_equal(fp_strategy_validate(&o), FP_OK);
    /* Unknown kinds, zero and overflowing sizes, NULL. */
    fp_strategy_defaults(&o, FP_STRAT_FEDAVG);
    o.kind = (fp_strategy_kind)7;
    assert_int_equal(fp_strategy_validate(&o), FP_ERR_INVALID);
    o.kind = (fp_strategy_kind)-1;
    assert_int_equal(fp_strategy_validate(&o), FP_ERR_INVALID);
    fp_agg_t *a = NULL;
    fp_sopt_t *s = NULL;
    assert_int_equal(fp_agg_create(&o, 10, 3, &a), FP_ERR_INVALID);
    fp_strategy_defaults(&o, FP_STRAT_MEDIAN);
    assert_int_equal(fp_agg_create(&o, 0, 3, &a), FP_ERR_INVALID);
    assert_int_equal(fp_agg_create(&o, 10, 0, &a), FP_ERR_INVALID);
    assert_int_equal(fp_agg_create(&o, SIZE_MAX / 8, SIZE_MAX / 8, &a), FP_ERR_RANGE);
    assert_int_equal(fp_agg_create(NULL, 10, 3, &a), FP_ERR_INVALID);
    assert_int_equal(fp_agg_create(&o, 10, 3, NULL), FP_ERR_INVALID);
    assert_null(a);
    assert_int_equal(fp_sopt_create(&o, 0, &s), FP_ERR_INVALID);
    assert_int_equal(fp_sopt_create(&o, SIZE_MAX, &s), FP_ERR_RANGE);
    assert_int_equal(fp_sopt_create(NULL, 3, &s), FP_ERR_INVALID);
    assert_null(s);
    /* NULL handles. */
    fp_agg_destroy(NULL);
    fp_sopt_destroy(NULL);
    fp_agg_reset(NULL);
    assert_int_equal(fp_agg_count(NULL), 0);
    assert_int_equal(fp_agg_bytes(NULL), 0);
    assert_int_equal(fp_sopt_n_state(NULL), 0);
    assert_null(fp_sopt_state(NULL, 0));
    assert_int_equal(fp_sopt_steps(NULL), 0);
    fp_sopt_set_steps(NULL, 3);
}

/* ---- Means ------------------------------------------------------------------------------------- */

static void test_weighted_and_uniform_mean(void **state)
{
    (void)state;
    fp_rng_t r;
    fp_rng_seed(&r, 11);
    const size_t P = 333, sizes[] = {1, 2, 5, 9};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        float *x = fmalloc(n * P), *out = fmalloc(P), *out1 = fmalloc(P), *out4 = fmalloc(P);
        double w[9];
        for (size_t i = 0; i < n; i++) {
            fill(x + i * P, P, &r, i == 0 ? 100.0 : 1.0); /* mixed scales */
            w[i] = 1.0 + floor(fp_rng_uniform_d(&r) * 1000.0); /* example counts */
        }
        fp_agg_t *wa = agg_new(FP_STRAT_FEDAVG, 0, P, n), *ua = agg_new(FP_STRAT_FEDAVG, 0, P, n),
                 *fa = agg_new(FP_STRAT_FEDAVGM, 0, P, n);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(fp_agg_add(wa, x + i * P, w[i]), FP_OK);
            assert_int_equal(fp_agg_add(ua, x + i * P, 1.0), FP_OK);
            assert_int_equal(fp_agg_add(fa, x + i * P, 4.0), FP_OK); /* uniform, a power of two */
            assert_int_equal(fp_agg_count(wa), i + 1);
        }
        for (int pass = 0; pass < 2; pass++) {
            assert_int_equal(fp_agg_result(wa, out), FP_OK);
            assert_int_equal(fp_agg_result(ua, out1), FP_OK);
            for (size_t j = 0; j < P; j++) {
                long double sw = 0, s = 0, su = 0;
                double maxabs = 0;
                for (size_t i = 0; i < n; i++) {
                    sw += w[i];
                    s += (long double)w[i] * x[i * P + j];
                    su += x[i * P + j];
                    maxabs = fmax(maxabs, fabs(x[i * P + j]));
                }
                double ref = (double)(s / sw), refu = (double)(su / n);
                assert_true(fabs(out[j] - ref) <= mean_tol(ref, maxabs, n));
                assert_true(fabs(out1[j] - refu) <= mean_tol(refu, maxabs, n));
            }
        }
        /* Any common weight gives the uniform mean (bit for bit when it is a power of two). */
        assert_int_equal(fp_agg_result(fa, out4), FP_OK);
        assert_memory_equal(out1, out4, P * sizeof *out1);
        fp_agg_destroy(wa);
        fp_agg_destroy(ua);
        fp_agg_destroy(fa);
        free(x);
        free(out);
        free(out1);
        free(out4);
    }
    /* By hand: weights 3 and 1 on values 1 and 5 → (3 + 5) / 4 = 2; uniform → 3. */
    float a = 1.0f, b = 5.0f, o = 0.0f;
    fp_agg_t *g = agg_new(FP_STRAT_FEDADAM, 0, 1, 2);
    assert_int_equal(fp_agg_add(g, &a, 3.0), FP_OK);
    assert_int_equal(fp_agg_add(g, &b, 1.0), FP_OK);
    assert_int_equal(fp_agg_result(g, &o), FP_OK);
    assert_true(o == 2.0f);
    fp_agg_reset(g);
    assert_int_equal(fp_agg_add(g, &a, 1.0), FP_OK);
    assert_int_equal(fp_agg_add(g, &b, 1.0), FP_OK);
    assert_int_equal(fp_agg_result(g, &o), FP_OK);
    assert_true(o == 3.0f);
    fp_agg_destroy(g);
}

/* ---- Robust statistics ------------------------------------------------------------------------- */

static float ref_median(const float *v, size_t n)
{
    float *s = fmalloc(n);
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_float);
    float m = n & 1 ? s[n / 2] : (float)(0.5 * ((double)s[n / 2 - 1] + (double)s[n / 2]));
    free(s);
    return m;
}

static double ref_trimmed(const float *v, size_t n, double beta, double *maxabs)
{
    float *s = fmalloc(n);
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_float);
    size_t t = (size_t)floor(beta * (double)n);
    long double sum = 0;
    *maxabs = 0;
    for (size_t i = t; i < n - t; i++) {
        sum += s[i];
        *maxabs = fmax(*maxabs, fabs(s[i]));
    }
    free(s);
    return (double)(sum / (long double)(n - 2 * t));
}

/* Adds n updates (column-major in x: update i is x + i·P) and checks the result per coordinate. */
static void check_robust(fp_strategy_kind kind, double beta, const float *x, size_t n, size_t P)
{
    fp_agg_t *a = agg_new(kind, beta, P, n + 2);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(fp_agg_add(a, x + i * P, 1.0 + (double)i), FP_OK); /* weights are ignored */
    float *out = fmalloc(P), *again = fmalloc(P), *col = fmalloc(n);
    assert_int_equal(fp_agg_result(a, out), FP_OK);
    assert_int_equal(fp_agg_result(a, again), FP_OK); /* not consumed, same bits */
    assert_memory_equal(out, again, P * sizeof *out);
    for (size_t j = 0; j < P; j++) {
        for (size_t i = 0; i < n; i++)
            col[i] = x[i * P + j];
        if (kind == FP_STRAT_MEDIAN) {
            assert_true(out[j] == ref_median(col, n));
        } else {
            double maxabs, ref = ref_trimmed(col, n, beta, &maxabs);
            assert_true(fabs(out[j] - ref) <= mean_tol(ref, maxabs, n));
        }
    }
    fp_agg_destroy(a);
    free(out);
    free(again);
    free(col);
}

static void test_median_and_trimmed_random(void **state)
{
    (void)state;
    fp_rng_t r;
    fp_rng_seed(&r, 22);
    const size_t P = 61;
    const size_t sizes[] = {1, 2, 3, 4, 5, 6, 7, 8, 16, 17, 40, 101};
    const double betas[] = {0.0, 0.1, 0.2, 0.25, 0.49};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        float *x = fmalloc(n * P);
        for (int pattern = 0; pattern < 4; pattern++) {
            for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < P; j++) {
                    float v;
                    switch (pattern) {
                    case 0: v = (float)fp_rng_normal(&r); break;
                    case 1: v = (float)fp_rng_below(&r, 3) - 1.0f; break; /* many ties */
                    case 2: v = (float)i * (j & 1 ? 1.0f : -1.0f); break;  /* sorted / reversed */
                    default: v = (float)((i * 7919 + j * 31) % 13) - 6.0f; /* organ pipes, repeats */
                    }
                    x[i * P + j] = v;
                }
            check_robust(FP_STRAT_MEDIAN, 0, x, n, P);
            for (size_t b = 0; b < sizeof betas / sizeof betas[0]; b++)
                check_robust(FP_STRAT_TRIMMED_MEAN, betas[b], x, n, P);
        }
        free(x);
    }
    /* By hand: median of {3, 1, 2} is 2, of {4, 1, 3, 2} is 2.5; trimmed mean (β = 0.25) of
     * {10, 1, 2, 3} drops 1 and 10 → 2.5. */
    const float odd[] = {3, 1, 2}, even[] = {4, 1, 3, 2}, tr[] = {10, 1, 2, 3};
    float o = 0;
    fp_agg_t *a = agg_new(FP_STRAT_MEDIAN, 0, 1, 4);
    for (int i = 0; i < 3; i++)
        assert_int_equal(fp_agg_add(a, &odd[i], 1.0), FP_OK);
    assert_int_equal(fp_agg_result(a, &o), FP_OK);
    assert_true(o == 2.0f);
    fp_agg_reset(a);
    for (int i = 0; i < 4; i++)
        assert_int_equal(fp_agg_add(a, &even[i], 1.0), FP_OK);
    assert_int_equal(fp_agg_result(a, &o), FP_OK);
    assert_true(o == 2.5f);
    fp_agg_destroy(a);
    a = agg_new(FP_STRAT_TRIMMED_MEAN, 0.25, 1, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(fp_agg_add(a, &tr[i], 1.0), FP_OK);
    assert_int_equal(fp_agg_result(a, &o), FP_OK);
    assert_true(o == 2.5f);
    fp_agg_destroy(a);
}

static void test_trimmed_zero_is_mean(void **state)
{
    (void)state;
    fp_rng_t r;
    fp_rng_seed(&r, 33);
    const size_t P = 501, n = 7;
    float *x = fmalloc(n * P), *m = fmalloc(P), *t = fmalloc(P);
    fill(x, n * P, &r, 3.0);
    fp_agg_t *avg = agg_new(FP_STRAT_FEDAVG, 0, P, n), *tm = agg_new(FP_STRAT_TRIMMED_MEAN, 0.0, P, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(fp_agg_add(avg, x + i * P, 1.0), FP_OK);
        assert_int_equal(fp_agg_add(tm, x + i * P, 1.0), FP_OK);
    }
    assert_int_equal(fp_agg_result(avg, m), FP_OK);
    assert_int_equal(fp_agg_result(tm, t), FP_OK);
    assert_memory_equal(m, t, P * sizeof *m); /* same double sums in the same order */
    fp_agg_destroy(avg);
    fp_agg_destroy(tm);
    free(x);
    free(m);
    free(t);
}

static void test_poisoned_update(void **state)
{
    (void)state;
    fp_rng_t r;
    fp_rng_seed(&r, 44);
    const size_t P = 97;
    for (int variant = 0; variant < 4; variant++) {
        /* 0: six honest + 1e30; 1: six honest + −1e30; 2: seven honest + 1e30 and −1e30;
         * 3: five honest + 1e30 (an even count). */
        size_t honest = variant == 2 ? 7 : variant == 3 ? 5 : 6, n = honest + (variant == 2 ? 2 : 1);
        float *x = fmalloc(n * P), *out = fmalloc(P), *lo = fmalloc(P), *hi = fmalloc(P);
        fill(x, honest * P, &r, 1.0);
        for (size_t j = 0; j < P; j++) {
            lo[j] = hi[j] = x[j];
            for (size_t i = 1; i < honest; i++) {
                lo[j] = fminf(lo[j], x[i * P + j]);
                hi[j] = fmaxf(hi[j], x[i * P + j]);
            }
            x[honest * P + j] = variant == 1 ? -1e30f : 1e30f;
            if (variant == 2)
                x[(honest + 1) * P + j] = -1e30f;
        }
        const fp_strategy_kind kinds[] = {FP_STRAT_MEDIAN, FP_STRAT_TRIMMED_MEAN, FP_STRAT_FEDAVG};
        for (int k = 0; k < 3; k++) {
            /* β = 0.2: ⌊0.2·n⌋ = 1 for n = 6, 7, 9 drops one value at each end. */
            fp_agg_t *a = agg_new(kinds[k], 0.2, P, n);
            for (size_t i = 0; i < n; i++)
                assert_int_equal(fp_agg_add(a, x + i * P, 1.0), FP_OK);
            assert_int_equal(fp_agg_result(a, out), FP_OK);
            for (size_t j = 0; j < P; j++) {
                if (kinds[k] == FP_STRAT_FEDAVG) {
                    if (variant != 2) /* the mean is not robust: one client moves it by ~1e29 */
                        assert_true(fabs(out[j]) > 1e28);
                } else {
                    assert_true(out[j] >= lo[j] && out[j] <= hi[j]);
                }
            }
            fp_agg_destroy(a);
        }
        free(x);
        free(out);
        free(lo);
        free(hi);
    }
}

/* Results independent of the thread count (every loop above its parallel threshold). */
static void test_thread_count_independence(void **state)
{
    (void)state;
#ifdef _OPENMP
    fp_rng_t r;
    fp_rng_seed(&r, 55);
    const size_t P = BIG_P, n = 5;
    float *x = fmalloc(n * P), *o1 = fmalloc(P), *o4 = fmalloc(P), *w1 = fmalloc(P), *w4 = fmalloc(P);
    fill(x, n * P, &r, 1.0);
    int saved = omp_get_max_threads();
    for (int k = 0; k < N_KINDS; k++) {
        fp_strategy_opts_t o;
        fp_strategy_defaults(&o, (fp_strategy_kind)k);
        float *outs[2] = {o1, o4}, *ws[2] = {w1, w4};
        const int threads[2] = {1, 4};
        for (int t = 0; t < 2; t++) {
            omp_set_num_threads(threads[t]);
            fp_agg_t *a = NULL;
            fp_sopt_t *s = NULL;
            assert_int_equal(fp_agg_create(&o, P, n, &a), FP_OK);
            assert_int_equal(fp_sopt_create(&o, P, &s), FP_OK);
            for (size_t i = 0; i < n; i++)
                assert_int_equal(fp_agg_add(a, x + i * P, (double)(i + 1)), FP_OK);
            assert_int_equal(fp_agg_result(a, outs[t]), FP_OK);
            memcpy(ws[t], x, P * sizeof *x);
            for (int step = 0; step < 2; step++)
                assert_int_equal(fp_sopt_apply(s, ws[t], outs[t]), FP_OK);
            fp_agg_destroy(a);
            fp_sopt_destroy(s);
        }
        assert_memory_equal(o1, o4, P * sizeof *o1);
        assert_memory_equal(w1, w4, P * sizeof *w1);
    }
    omp_set_num_threads(saved);
    free(x);
    free(o1);
    free(o4);
    free(w1);
    free(w4);
#else
    skip();
#endif
}

/* ---- Bad inputs, reset, bytes ------------------------------------------------------------------ */

static void test_agg_bad_inputs(void **state)
{
    (void)state;
    fp_rng_t r;
    fp_rng_seed(&r, 66);
    const size_t P = 50, maxu = 3;
    float *x = fmalloc(maxu * P), *bad = fmalloc(P), *before = fmalloc(P), *after = fmalloc(P);
    fill(x, maxu * P, &r, 1.0);
    for (int k = 0; k < N_KINDS; k++) {
        fp_agg_t *a = agg_new((fp_strategy_kind)k, 0.2, P, maxu);
        /* Nothing added: no result, out untouched. */
        for (size_t j = 0; j < P; j++)
            after[j] = 42.0f;
        assert_int_equal(fp_agg_result(a, after), FP_ERR_INVALID);
        for (size_t j = 0; j < P; j++)
            assert_true(after[j] == 42.0f);
        assert_int_equal(fp_agg_add(a, x, 1.0), FP_OK);
        assert_int_equal(fp_agg_add(a, x + P, 2.0), FP_OK);
        assert_int_equal(fp_agg_result(a, before), FP_OK);
        size_t bytes = fp_agg_bytes(a);
        /* Non-finite deltas: NaN first, last, Inf and −Inf in the middle. */
        const float poison[] = {NAN, INFINITY, -INFINITY, NAN};
        const size_t where[] = {0, P / 2, P / 3, P - 1};
        for (int c = 0; c < 4; c++) {
            memcpy(bad, x + 2 * P, P * sizeof *bad);
            bad[where[c]] = poison[c];
            assert_int_equal(fp_agg_add(a, bad, 1.0), FP_ERR_NUMERIC);
        }
        /* Weights that are not > 0 and finite (or outside [1e-30, 1e30]). */
        const double wbad[] = {0.0, -1.0, -0.0, NAN, INFINITY, -INFINITY, 1e-300, 1e300};
        for (size_t c = 0; c < sizeof wbad / sizeof wbad[0]; c++)
            assert_int_equal(fp_agg_add(a, x + 2 * P, wbad[c]), FP_ERR_RANGE);
        assert_int_equal(fp_agg_add(a, NULL, 1.0), FP_ERR_INVALID);
        assert_int_equal(fp_agg_add(NULL, x, 1.0), FP_ERR_INVALID);
        assert_int_equal(fp_agg_result(a, NULL), FP_ERR_INVALID);
        assert_int_equal(fp_agg_result(NULL, after), FP_ERR_INVALID);
        /* Nothing changed. */
        assert_int_equal(fp_agg_count(a), 2);
        assert_int_equal(fp_agg_bytes(a), bytes);
        assert_int_equal(fp_agg_result(a, after), FP_OK);
        assert_memory_equal(before, after, P * sizeof *before);
        /* Too many updates. */
        assert_int_equal(fp_agg_add(a, x + 2 * P, 1.0), FP_OK);
        assert_int_equal(fp_agg_result(a, before), FP_OK);
        assert_int_equal(fp_agg_add(a, x, 1.0), FP_ERR_RANGE);
        assert_int_equal(fp_agg_count(a), maxu);
        assert_int_equal(fp_agg_result(a, after), FP_OK);
        assert_memory_equal(before, after, P * sizeof *before);
        fp_agg_destroy(a);
    }
    free(x);
    free(bad);
    free(before);
    free(after);
}

/* fp_agg_add_range + fp_agg_commit_update (the coordinator's spilled updates) give exactly what
 * fp_agg_add gives; their checks; the buffering strategies refuse them. */
static void test_agg_ranged_add(void **state)
{
    (void)state;
    enum { P = 1000, STEP = 300 };
    float d1[P], d2[P], r1[P], r2[P];
    for (int j = 0; j < P; j++) {
        d1[j] = (float)(0.001 * (j % 17) - 0.008);
        d2[j] = (float)(0.003 * (j % 5) + 0.5);
    }
    fp_agg_t *a = agg_new(FP_STRAT_FEDAVG, 0, P, 2), *b = agg_new(FP_STRAT_FEDAVG, 0, P, 2);
    assert_int_equal(fp_agg_add(a, d1, 3.0), FP_OK);
    assert_int_equal(fp_agg_add(a, d2, 1.0), FP_OK);
    const float *d[2] = {d1, d2};
    const double w[2] = {3.0, 1.0};
    for (int u = 0; u < 2; u++) {
        for (size_t o = 0; o < P; o += STEP)
            assert_int_equal(fp_agg_add_range(b, o, d[u] + o, P - o < STEP ? P - o : STEP, w[u]), FP_OK);
        assert_int_equal(fp_agg_commit_update(b, w[u]), FP_OK);
    }
    assert_int_equal(fp_agg_count(b), 2);
    assert_int_equal(fp_agg_result(a, r1), FP_OK);
    assert_int_equal(fp_agg_result(b, r2), FP_OK);
    assert_memory_equal(r1, r2, sizeof r1);
    /* Full, out of range, bad weight, non-finite. */
    assert_int_equal(fp_agg_add_check(b, 1.0), FP_ERR_RANGE);
    fp_agg_reset(b);
    assert_int_equal(fp_agg_add_check(b, 1.0), FP_OK);
    assert_int_equal(fp_agg_add_check(b, 0.0), FP_ERR_RANGE);
    assert_int_equal(fp_agg_add_range(b, P - 1, d1, 2, 1.0), FP_ERR_RANGE);
    float bad[2] = {0.0f, NAN};
    assert_int_equal(fp_agg_add_range(b, 0, bad, 2, 1.0), FP_ERR_NUMERIC);
    assert_int_equal(fp_agg_count(b), 0);
    fp_agg_destroy(a);
    fp_agg_destroy(b);
    fp_agg_t *m = agg_new(FP_STRAT_MEDIAN, 0, P, 2);
    assert_int_equal(fp_agg_add_check(m, 1.0), FP_ERR_INVALID);
    assert_int_equal(fp_agg_add_range(m, 0, d1, P, 1.0), FP_ERR_INVALID);
    assert_int_equal(fp_agg_commit_update(m, 1.0), FP_ERR_INVALID);
    fp_agg_destroy(m);
}

static void test_reset_and_bytes(void **state)
{
    (void)state;
    fp_rng_t r;
    fp_rng_seed(&r, 77);
    const size_t P = 1000, maxu = 6;
    float *x = fmalloc(maxu * P), *y = fmalloc(maxu * P), *o1 = fmalloc(P), *o2 = fmalloc(P);
    fill(x, maxu * P, &r, 1.0);
    fill(y, maxu * P, &r, 5.0);
    const size_t upd_bytes = (P * sizeof(float) + 63) / 64 * 64;
    for (int k = 0; k < N_KINDS; k++) {
        int robust = fp_strategy_buffers((fp_strategy_kind)k);
        fp_agg_t *a = agg_new((fp_strategy_kind)k, 0.2, P, maxu);
        size_t b0 = fp_agg_bytes(a), prev = b0;
        if (robust) {
            assert_true(b0 < P * sizeof(float)); /* lazily: no update buffer yet */
        } else {
            assert_true(b0 >= 8 * P && b0 <= 8 * P + 4096); /* 8·P plus a constant */
        }
        /* Round 1: x with 4 updates. */
        for (size_t i = 0; i < 4; i++) {
            assert_int_equal(fp_agg_add(a, x + i * P, 1.0), FP_OK);
            size_t b = fp_agg_bytes(a);
            if (robust)
                assert_int_equal(b - prev, upd_bytes); /* one buffer per update */
            else
                assert_int_equal(b, b0); /* O(P), whatever the count */
            prev = b;
        }
        assert_int_equal(fp_agg_result(a, o1), FP_OK);
        size_t after_round1 = fp_agg_bytes(a);
        /* Reset: buffers kept, count 0; a new round gives exactly the fresh-aggregator result. */
        fp_agg_reset(a);
        assert_int_equal(fp_agg_count(a), 0);
        assert_int_equal(fp_agg_bytes(a), after_round1);
        assert_int_equal(fp_agg_result(a, o2), FP_ERR_INVALID);
        for (size_t i = 0; i < 3; i++)
            assert_int_equal(fp_agg_add(a, y + i * P, 2.0), FP_OK);
        assert_int_equal(fp_agg_bytes(a), after_round1); /* reused: nothing new */
        assert_int_equal(fp_agg_result(a, o1), FP_OK);
        fp_agg_t *fresh = agg_new((fp_strategy_kind)k, 0.2, P, maxu);
        for (size_t i = 0; i < 3; i++)
            assert_int_equal(fp_agg_add(fresh, y + i * P, 2.0), FP_OK);
        assert_int_equal(fp_agg_result(fresh, o2), FP_OK);
        assert_memory_equal(o1, o2, P * sizeof *o1);
        fp_agg_destroy(fresh);
        /* Fill up: never more than max_updates buffers of P floats (plus the table and scratch). */
        fp_agg_reset(a);
        for (size_t i = 0; i < maxu; i++)
            assert_int_equal(fp_agg_add(a, x + i * P, 1.0), FP_OK);
        size_t full = fp_agg_bytes(a);
        if (robust) {
            assert_true(full >= maxu * upd_bytes);
            assert_true(full <= maxu * upd_bytes + (size_t)64 * maxu * sizeof(float) + 64 + 4096);
        } else {
            assert_int_equal(full, b0);
        }
        fp_agg_destroy(a);
    }
    free(x);
    free(y);
    free(o1);
    free(o2);
}

/* ---- Server optimizers ------------------------------------------------------------------------- */

/* The reference: each rule in double, w, m, v stored as float. */
static void ref_step(const fp_strategy_opts_t *o, size_t P, float *w, float *m, float *v, const float *d)
{
    for (size_t j = 0; j < P; j++) {
        double dj = d[j], wj = w[j];
        switch (o->kind) {
        case FP_STRAT_FEDAVGM: {
            double mm = o->momentum * m[j] + dj;
            m[j] = (float)mm;
            w[j] = (float)(wj + o->server_lr * mm);
            break;
        }
        case FP_STRAT_FEDADAGRAD:
        case FP_STRAT_FEDADAM:
        case FP_STRAT_FEDYOGI: {
            double mm = o->beta1 * m[j] + (1 - o->beta1) * dj, vv = v[j], d2 = dj * dj;
            if (o->kind == FP_STRAT_FEDADAGRAD)
                vv = vv + d2;
            else if (o->kind == FP_STRAT_FEDADAM)
                vv = o->beta2 * vv + (1 - o->beta2) * d2;
            else
                vv = vv - (1 - o->beta2) * d2 * (vv > d2 ? 1.0 : vv < d2 ? -1.0 : 0.0);
            m[j] = (float)mm;
            v[j] = (float)vv;
            w[j] = (float)(wj + o->server_lr * mm / (sqrt(vv) + o->tau));
            break;
        }
        default:
            w[j] = (float)(wj + o->server_lr * dj);
        }
    }
}

static void assert_close_vec(const float *got, const float *ref, size_t P)
{
    double scale = 0;
    for (size_t j = 0; j < P; j++)
        scale = fmax(scale, fabs(ref[j]));
    double tol = ldexp(scale, -21) + 1e-30;
    for (size_t j = 0; j < P; j++)
        assert_true(fabs((double)got[j] - ref[j]) <= tol);
}

static void test_sopt_against_reference(void **state)
{
    (void)state;
    fp_rng_t r;
    fp_rng_seed(&r, 88);
    const size_t P = 257;
    float *w = fmalloc(P), *wr = fmalloc(P), *mr = fmalloc(P), *vr = fmalloc(P), *d = fmalloc(P);
    for (int k = 0; k < N_KINDS; k++) {
        fp_strategy_opts_t o;
        fp_strategy_defaults(&o, (fp_strategy_kind)k);
        if (k >= 2 && k <= 4)
            o.server_lr = 0.05;
        if (k == FP_STRAT_FEDAVG)
            o.server_lr = 0.7;
        fp_sopt_t *s = NULL;
        assert_int_equal(fp_sopt_create(&o, P, &s), FP_OK);
        int ns = fp_sopt_n_state(s);
        assert_int_equal(ns, k == 1 ? 1 : (k >= 2 && k <= 4 ? 2 : 0));
        assert_null(fp_sopt_state(s, ns));
        assert_null(fp_sopt_state(s, -1));
        fill(w, P, &r, 1.0);
        memcpy(wr, w, P * sizeof *w);
        const float v0 = (float)(o.tau * o.tau);
        for (size_t j = 0; j < P; j++) {
            mr[j] = 0.0f;
            vr[j] = v0;
            if (ns >= 1)
                assert_true(fp_sopt_state(s, 0)[j] == 0.0f);
            if (ns >= 2)
                assert_true(fp_sopt_state(s, 1)[j] == v0);
        }
        for (int round = 0; round < 8; round++) {
            /* Shrinking then growing steps, so Yogi's sign takes both values. */
            fill(d, P, &r, round < 4 ? 1.0 / (1 << round) : 0.1 * (round - 3));
            if (round == 2)
                d[0] = 0.0f;
            assert_int_equal(fp_sopt_apply(s, w, d), FP_OK);
            ref_step(&o, P, wr, mr, vr, d);
            assert_close_vec(w, wr, P);
            if (ns >= 1)
                assert_close_vec(fp_sopt_state(s, 0), mr, P);
            if (ns >= 2)
                assert_close_vec(fp_sopt_state(s, 1), vr, P);
            assert_int_equal(fp_sopt_steps(s), (uint64_t)round + 1);
        }
        fp_sopt_destroy(s);
    }
    free(w);
    free(wr);
    free(mr);
    free(vr);
    free(d);
}

/* fp_sopt_apply_agg (Δ̄ from the running sum, the coordinator's commit for the mean strategies)
 * is fp_agg_result + fp_sopt_apply bit for bit, over rounds, for every mean strategy; and its refusals. */
static void test_sopt_apply_agg(void **state)
{
    (void)state;
    fp_rng_t r;
    fp_rng_seed(&r, 91);
    const size_t P = 1031;
    float *w1 = fmalloc(P), *w2 = fmalloc(P), *d = fmalloc(P), *mean = fmalloc(P);
    for (int k = 0; k < N_KINDS; k++) {
        fp_strategy_opts_t o;
        fp_strategy_defaults(&o, (fp_strategy_kind)k);
        if (fp_strategy_buffers(o.kind))
            continue;
        fp_agg_t *a = agg_new(o.kind, 0, P, 3);
        fp_sopt_t *s1 = NULL, *s2 = NULL;
        assert_int_equal(fp_sopt_create(&o, P, &s1), FP_OK);
        assert_int_equal(fp_sopt_create(&o, P, &s2), FP_OK);
        assert_int_equal(fp_sopt_apply_agg(s2, w2, a), FP_ERR_INVALID); /* nothing added yet */
        fill(w1, P, &r, 1.0);
        memcpy(w2, w1, P * sizeof *w1);
        for (int round = 0; round < 4; round++) {
            fp_agg_reset(a);
            for (int u = 0; u < 3; u++) {
                fill(d, P, &r, 0.1 * (u + 1));
                assert_int_equal(fp_agg_add(a, d, 1.0 + 7.0 * u), FP_OK);
            }
            assert_int_equal(fp_agg_result(a, mean), FP_OK);
            assert_int_equal(fp_sopt_apply(s1, w1, mean), FP_OK);
            assert_int_equal(fp_sopt_apply_agg(s2, w2, a), FP_OK);
            assert_memory_equal(w1, w2, P * sizeof *w1);
            for (int i = 0; i < fp_sopt_n_state(s1); i++)
                assert_memory_equal(fp_sopt_state(s1, i), fp_sopt_state(s2, i), P * sizeof(float));
            assert_int_equal(fp_sopt_steps(s1), fp_sopt_steps(s2));
        }
        /* A mean that would make the model overflow: refused, model and state untouched. */
        fp_agg_reset(a);
        for (size_t j = 0; j < P; j++)
            d[j] = j == 5 ? 3e38f : 0.0f;
        assert_int_equal(fp_agg_add(a, d, 1.0), FP_OK);
        w2[5] = 3e38f;
        memcpy(w1, w2, P * sizeof *w1);
        if (o.kind == FP_STRAT_FEDAVG) {
            assert_int_equal(fp_sopt_apply_agg(s2, w2, a), FP_ERR_NUMERIC);
            assert_memory_equal(w1, w2, P * sizeof *w1);
            assert_int_equal(fp_sopt_steps(s2), 4);
        }
        fp_sopt_t *small = NULL;
        assert_int_equal(fp_sopt_create(&o, P - 1, &small), FP_OK);
        assert_int_equal(fp_sopt_apply_agg(small, w2, a), FP_ERR_INVALID);
        assert_int_equal(fp_sopt_apply_agg(NULL, w2, a), FP_ERR_INVALID);
        fp_sopt_destroy(small);
        fp_sopt_destroy(s1);
        fp_sopt_destroy(s2);
        fp_agg_destroy(a);
    }
    fp_agg_t *m = agg_new(FP_STRAT_MEDIAN, 0, P, 2);
    fp_strategy_opts_t o;
    fp_strategy_defaults(&o, FP_STRAT_MEDIAN);
    fp_sopt_t *s = NULL;
    assert_int_equal(fp_sopt_create(&o, P, &s), FP_OK);
    fill(d, P, &r, 1.0);
    assert_int_equal(fp_agg_add(m, d, 1.0), FP_OK);
    assert_int_equal(fp_sopt_apply_agg(s, w1, m), FP_ERR_INVALID); /* median has no running sum */
    fp_sopt_destroy(s);
    fp_agg_destroy(m);
    free(w1);
    free(w2);
    free(d);
    free(mean);
}

/* One coordinate of each rule, worked by hand. */
static void test_sopt_hand_values(void **state)
{
    (void)state;
    struct {
        fp_strategy_kind kind;
        double lr, mom, b1, b2, tau;
        float d[2];
        float w[2], m[2], v[2]; /* after each step; v < 0: not checked */
    } c[] = {
        /* w = 1 + 0.5·3 = 2.5; then 2.5 + 0.5·(−1) = 2. */
        {FP_STRAT_FEDAVG, 0.5, 0, 0, 0, 0, {3, -1}, {2.5f, 2.0f}, {0, 0}, {-1, -1}},
        /* m = 2, w = 1 + 0.1·2 = 1.2; m = 0.5·2 + 1 = 2, w = 1.4. */
        {FP_STRAT_FEDAVGM, 0.1, 0.5, 0, 0, 0, {2, 1}, {1.2f, 1.4f}, {2, 2}, {-1, -1}},
        /* m = 0.5·0.4 = 0.2, v = 0.09 + 0.16 = 0.25, w = 1 + 0.1·0.2/(0.5 + 0.3) = 1.025;
         * then Δ = 0: m = 0.1, v = 0.25, w = 1.025 + 0.01/0.8 = 1.0375. */
        {FP_STRAT_FEDADAGRAD, 0.1, 0, 0.5, 0.99, 0.3, {0.4f, 0}, {1.025f, 1.0375f}, {0.2f, 0.1f}, {0.25f, 0.25f}},
        /* m = 0.1, v = 0.5·0.04 + 0.5·0.04 = 0.04, w = 1 + 0.1·0.1/(0.2 + 0.2) = 1.025;
         * then Δ = −0.2: m = 0.05 − 0.1 = −0.05, v = 0.04, w = 1.025 − 0.005/0.4 = 1.0125. */
        {FP_STRAT_FEDADAM, 0.1, 0, 0.5, 0.5, 0.2, {0.2f, -0.2f}, {1.025f, 1.0125f}, {0.1f, -0.05f}, {0.04f, 0.04f}},
        /* v0 = 0.09 < Δ² = 0.64: v = 0.09 + 0.25·0.64 = 0.25, m = 0.4, w = 1 + 0.1·0.4/0.8 = 1.05;
         * then Δ² = 0.04 < v: v = 0.25 − 0.25·0.04 = 0.24, m = 0.2 + 0.1 = 0.3,
         * w = 1.05 + 0.03/(√0.24 + 0.3) = 1.0879795897. */
        {FP_STRAT_FEDYOGI, 0.1, 0, 0.5, 0.75, 0.3, {0.8f, 0.2f}, {1.05f, 1.0879795897f}, {0.4f, 0.3f}, {0.25f, 0.24f}},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        fp_strategy_opts_t o;
        fp_strategy_defaults(&o, c[i].kind);
        o.server_lr = c[i].lr;
        o.momentum = c[i].mom;
        o.beta1 = c[i].b1;
        o.beta2 = c[i].b2;
        o.tau = c[i].tau ? c[i].tau : o.tau;
        fp_sopt_t *s = NULL;
        assert_int_equal(fp_sopt_create(&o, 1, &s), FP_OK);
        float w = 1.0f;
        for (int step = 0; step < 2; step++) {
            assert_int_equal(fp_sopt_apply(s, &w, &c[i].d[step]), FP_OK);
            assert_true(fabs(w - c[i].w[step]) <= 1e-6 * fabs(c[i].w[step]));
            if (fp_sopt_n_state(s) >= 1)
                assert_true(fabs(fp_sopt_state(s, 0)[0] - c[i].m[step]) <= 1e-6 * fabs(c[i].m[step]));
            if (fp_sopt_n_state(s) >= 2)
                assert_true(fabs(fp_sopt_state(s, 1)[0] - c[i].v[step]) <= 1e-6 * fabs(c[i].v[step]));
        }
        fp_sopt_destroy(s);
    }
}

static void test_sopt_refuses_non_finite(void **state)
{
    (void)state;
    const size_t P = 8;
    float w[8], w0[8], d[8], m0[8], v0[8];
    for (int k = 0; k < N_KINDS; k++) {
        fp_strategy_opts_t o;
        fp_strategy_defaults(&o, (fp_strategy_kind)k);
        fp_sopt_t *s = NULL;
        assert_int_equal(fp_sopt_create(&o, P, &s), FP_OK);
        int ns = fp_sopt_n_state(s);
        for (size_t j = 0; j < P; j++) {
            w[j] = 0.5f * (float)j;
            d[j] = 0.25f;
        }
        assert_int_equal(fp_sopt_apply(s, w, d), FP_OK); /* some state to protect */
        for (int c = 0; c < 5; c++) {
            for (size_t j = 0; j < P; j++)
                d[j] = 0.125f;
            switch (c) {
            case 0: d[3] = NAN; break;
            case 1: d[P - 1] = INFINITY; break;
            case 2: d[0] = -INFINITY; break;
            case 3: /* overflow: of w for FedAvg(M), of v (Δ̄² beyond the float range) for the adaptive ones */
                w[5] = FLT_MAX;
                d[5] = FLT_MAX;
                break;
            default: /* a corrupt loaded state: v < 0 (adaptive), m = Inf (FedAvgM); no-op otherwise */
                if (ns >= 2)
                    fp_sopt_state(s, 1)[2] = -1.0f;
                else if (ns == 1)
                    fp_sopt_state(s, 0)[2] = INFINITY;
                else
                    d[2] = NAN;
            }
            memcpy(w0, w, sizeof w);
            if (ns >= 1)
                memcpy(m0, fp_sopt_state(s, 0), sizeof m0);
            if (ns >= 2)
                memcpy(v0, fp_sopt_state(s, 1), sizeof v0);
            assert_int_equal(fp_sopt_apply(s, w, d), FP_ERR_NUMERIC);
            assert_memory_equal(w, w0, sizeof w);
            if (ns >= 1)
                assert_memory_equal(fp_sopt_state(s, 0), m0, sizeof m0);
            if (ns >= 2)
                assert_memory_equal(fp_sopt_state(s, 1), v0, sizeof v0);
            assert_int_equal(fp_sopt_steps(s), 1);
            /* Undo the case's damage for the next one. */
            w[5] = 2.5f;
            if (c == 4 && ns >= 2)
                fp_sopt_state(s, 1)[2] = 0.0625f;
            if (c == 4 && ns == 1)
                fp_sopt_state(s, 0)[2] = 0.0f;
        }
        assert_int_equal(fp_sopt_apply(s, w, NULL), FP_ERR_INVALID);
        assert_int_equal(fp_sopt_apply(s, NULL, d), FP_ERR_INVALID);
        assert_int_equal(fp_sopt_apply(NULL, w, d), FP_ERR_INVALID);
        for (size_t j = 0; j < P; j++)
            d[j] = 0.125f;
        assert_int_equal(fp_sopt_apply(s, w, d), FP_OK); /* still usable */
        assert_int_equal(fp_sopt_steps(s), 2);
        fp_sopt_destroy(s);
    }
}

static void test_sopt_state_roundtrip(void **state)
{
    (void)state;
    fp_rng_t r;
    fp_rng_seed(&r, 99);
    assert_string_equal(fp_sopt_state_name(0), "m");
    assert_string_equal(fp_sopt_state_name(1), "v");
    assert_null(fp_sopt_state_name(2));
    assert_null(fp_sopt_state_name(-1));
    const size_t P = 123;
    float *w = fmalloc(P), *d = fmalloc(P), *wa = fmalloc(P), *wb = fmalloc(P);
    for (int k = 0; k < N_KINDS; k++) {
        fp_strategy_opts_t o;
        fp_strategy_defaults(&o, (fp_strategy_kind)k);
        fp_sopt_t *a = NULL, *b = NULL;
        assert_int_equal(fp_sopt_create(&o, P, &a), FP_OK);
        fill(w, P, &r, 1.0);
        for (int i = 0; i < 3; i++) {
            fill(d, P, &r, 0.3);
            assert_int_equal(fp_sopt_apply(a, w, d), FP_OK);
        }
        /* Save (read a's state), load into a fresh optimizer. */
        assert_int_equal(fp_sopt_create(&o, P, &b), FP_OK);
        assert_int_equal(fp_sopt_n_state(a), fp_sopt_n_state(b));
        for (int i = 0; i < fp_sopt_n_state(a); i++)
            memcpy(fp_sopt_state(b, i), fp_sopt_state(a, i), P * sizeof(float));
        fp_sopt_set_steps(b, fp_sopt_steps(a));
        assert_int_equal(fp_sopt_steps(b), 3);
        /* Both take identical next steps. */
        memcpy(wa, w, P * sizeof *w);
        memcpy(wb, w, P * sizeof *w);
        for (int i = 0; i < 2; i++) {
            fill(d, P, &r, 0.3);
            assert_int_equal(fp_sopt_apply(a, wa, d), FP_OK);
            assert_int_equal(fp_sopt_apply(b, wb, d), FP_OK);
            assert_memory_equal(wa, wb, P * sizeof *wa);
            for (int s = 0; s < fp_sopt_n_state(a); s++)
                assert_memory_equal(fp_sopt_state(a, s), fp_sopt_state(b, s), P * sizeof(float));
        }
        assert_int_equal(fp_sopt_steps(a), 5);
        assert_int_equal(fp_sopt_steps(b), 5);
        fp_sopt_destroy(a);
        fp_sopt_destroy(b);
    }
    free(w);
    free(d);
    free(wa);
    free(wb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_options),
        cmocka_unit_test(test_invalid_options),
        cmocka_unit_test(test_weighted_and_uniform_mean),
        cmocka_unit_test(test_median_and_trimmed_random),
        cmocka_unit_test(test_trimmed_zero_is_mean),
        cmocka_unit_test(test_poisoned_update),
        cmocka_unit_test(test_thread_count_independence),
        cmocka_unit_test(test_agg_bad_inputs),
        cmocka_unit_test(test_agg_ranged_add),
        cmocka_unit_test(test_reset_and_bytes),
        cmocka_unit_test(test_sopt_against_reference),
        cmocka_unit_test(test_sopt_apply_agg),
        cmocka_unit_test(test_sopt_hand_values),
        cmocka_unit_test(test_sopt_refuses_non_finite),
        cmocka_unit_test(test_sopt_state_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
