/* test_cuda: the CUDA back-end against the CPU back-end, and device selection.
 *
 * Device selection runs everywhere: `cpu` always works, `cuda` fails with a clear reason where
 * there is no CUDA back-end or no GPU, `auto` falls back to the CPU, bad names are refused.
 *
 * Parity runs only where a GPU is (otherwise those tests report themselves skipped): every
 * kernel the CUDA back-end implements, on the same random inputs, against the CPU back-end; then
 * whole training steps (forward, backward, Adam; the DP-SGD clipped gradient) of one model on
 * the GPU against a copy on the CPU. With CUDA selected, a model created then lives in managed
 * memory and runs on the GPU, while a model created with the CPU selected lives in host memory,
 * whose kernels the CUDA back-end declines (kernels_cuda.h): so both run side by side here.
 *
 * Tolerances (the stated relative error). Both back-ends compute the same float formulas; they
 * differ in summation order (cuBLAS's tiling, parallel reductions, atomics in scatter-adds) and
 * in nvcc contracting a*b+c into one fused multiply-add. A float sum of K products carries at
 * most ~K * 2^-24 relative error of the sum of |terms|; the checks allow
 *   elementwise kernels:          |gpu - cpu| <= 4 * 2^-24 * (|cpu| + max|cpu|) (one rounding
 *                                 apart; the floor covers x + y * m computed as one fused
 *                                 multiply-add when x and y * m nearly cancel);
 *   dropout masks:                bit for bit (the same SplitMix64 of the element index);
 *   products and reductions:      |gpu - cpu| <= 1e-5 * |cpu| + 1e-5 * max|cpu| (K <= a few
 *                                 hundred: K * 2^-24 ~ 1e-5 at worst);
 *   whole steps: gradients with rtol 1e-3 and a floor of 1e-4 x the largest value of each
 *                                 tensor, as tests/test_model.c bounds float32 gradients against
 *                                 float64 ones; the first loss to 1e-5 relative, later ones 1e-4;
 *                                 parameters after 10 Adam steps to the same per-tensor bound,
 *                                 except that up to 0.1% of them may differ by up to 2 lr per
 *                                 step: Adam's first steps move every coordinate by about lr
 *                                 whatever its gradient's size, so a gradient that is zero up to
 *                                 rounding can step the two copies in opposite directions.
 * A broken kernel (wrong index, missing term, wrong transpose) is off by O(1), far outside them. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/kernels.h"
#include "common/model.h"
#include "common/rng.h"

#define U_F32 5.9604644775390625e-08

static int g_gpu;                /* a GPU is usable in this process */
static char g_info[320];
static fp_rng_t g_rng;

static void use(fp_k_device d) { assert_int_equal(fp_k_device_select(d, NULL, NULL, 0), FP_OK); }

static int group_setup(void **state)
{
    (void)state;
    fp_k_device got;
    if (fp_k_device_select(FP_K_DEVICE_AUTO, &got, g_info, sizeof g_info) == FP_OK && got == FP_K_DEVICE_CUDA)
        g_gpu = 1;
    print_message("device auto: %s\n", g_info);
    fp_k_device_select(FP_K_DEVICE_CPU, NULL, NULL, 0);
    fp_rng_seed(&g_rng, 2026);
    return 0;
}

#define NEED_GPU()                                                                                  \
    do {                                                                                            \
        if (!g_gpu) {                                                                               \
            print_message("no usable GPU (%s): skipped\n", g_info);                                 \
            skip();                                                                                 \
        }                                                                                           \
    } while (0)

/* n random floats of the given scale, in host memory (malloc). */
static float *hrand(size_t n, double scale)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(scale * fp_rng_normal(&g_rng));
    return p;
}

/* A copy of h in the current device's memory (managed memory with CUDA selected). */
static void *dcopy(const void *h, size_t bytes)
{
    void *p = fp_k_alloc(bytes ? bytes : 1);
    assert_non_null(p);
    memcpy(p, h, bytes);
    return p;
}

static float *hcopy(const float *h, size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    assert_non_null(p);
    memcpy(p, h, n * sizeof *p);
    return p;
}

/* Count of i with |g - c| > rtol |c| + atol * max|c| (+ 1e-30), printing the first few. */
static int cmp(const char *what, const float *g, const float *c, size_t n, double rtol, double atol)
{
    double mx = 0;
    for (size_t i = 0; i < n; i++)
        mx = fmax(mx, fabs((double)c[i]));
    int bad = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)g[i] - (double)c[i]), tol = rtol * fabs((double)c[i]) + atol * mx + 1e-30;
        worst = fmax(worst, d / (fabs((double)c[i]) + mx * 1e-6 + 1e-30));
        if (!(d <= tol)) {
            if (bad < 4)
                print_message("%s[%zu]: gpu %.9g cpu %.9g\n", what, i, (double)g[i], (double)c[i]);
            bad++;
        }
    }
    if (getenv("FP_TEST_VERBOSE"))
        print_message("%s: %zu values, worst relative difference %.3g, %d outside\n", what, n, worst, bad);
    return bad;
}

#define EW 4 * U_F32, 4 * U_F32 /* one rounding of a term no larger than the largest value */
#define RED 1e-5, 1e-5

/* ------------------------------------------------------------------ device selection */

static void test_device_select(void **state)
{
    (void)state;
    fp_k_device d, got;
    assert_int_equal(fp_k_device_parse("auto", &d), FP_OK);
    assert_int_equal(d, FP_K_DEVICE_AUTO);
    assert_int_equal(fp_k_device_parse("cpu", &d), FP_OK);
    assert_int_equal(d, FP_K_DEVICE_CPU);
    assert_int_equal(fp_k_device_parse("cuda", &d), FP_OK);
    assert_int_equal(d, FP_K_DEVICE_CUDA);
    assert_int_equal(fp_k_device_parse("gpu", &d), FP_ERR_INVALID);
    assert_int_equal(fp_k_device_parse("", &d), FP_ERR_INVALID);
    assert_int_equal(fp_k_device_parse(NULL, &d), FP_ERR_INVALID);
    assert_int_equal(fp_k_device_select((fp_k_device)7, &got, NULL, 0), FP_ERR_INVALID);

    char info[320];
    assert_int_equal(fp_k_device_select(FP_K_DEVICE_CPU, &got, info, sizeof info), FP_OK);
    assert_int_equal(got, FP_K_DEVICE_CPU);
    assert_int_equal(fp_k_device_current(), FP_K_DEVICE_CPU);
    assert_string_equal(info, "cpu");

    fp_status st = fp_k_device_select(FP_K_DEVICE_CUDA, &got, info, sizeof info);
    if (g_gpu) {
        assert_int_equal(st, FP_OK);
        assert_int_equal(got, FP_K_DEVICE_CUDA);
        assert_non_null(strstr(info, "cuda ("));
    } else {
        /* refused with the reason, and the device left as it was */
        assert_int_equal(st, FP_ERR_UNSUPPORTED);
        assert_non_null(strstr(fp_error_message(), "device cuda: "));
        if (!fp_k_cuda_built())
            assert_non_null(strstr(fp_error_message(), "no CUDA back-end"));
        assert_int_equal(fp_k_device_current(), FP_K_DEVICE_CPU);
        assert_int_equal(fp_k_device_select(FP_K_DEVICE_AUTO, &got, info, sizeof info), FP_OK);
        assert_int_equal(got, FP_K_DEVICE_CPU);
        assert_non_null(strstr(info, "cpu (no GPU: "));
    }
    use(FP_K_DEVICE_CPU);
    /* the CUDA back-end is a module loaded on demand (kernels_cuda.h): a build with it must be able
     * to load it (and the CUDA runtime and cuBLAS it links), GPU or not */
    char why[320];
    int loaded = fp_k_cuda_module_check(why, sizeof why);
    print_message("CUDA module: %s\n", loaded ? "loaded" : why);
    assert_int_equal(loaded, fp_k_cuda_built());
    /* memory of the CPU device: usable, freed by fp_k_free; NULL is a no-op */
    float *p = fp_k_alloc(1000 * sizeof *p);
    assert_non_null(p);
    p[999] = 1.0f;
    fp_k_free(p);
    fp_k_free(NULL);
    assert_null(fp_k_alloc(SIZE_MAX - 10));
    assert_int_equal(fp_k_take_error(), FP_OK);
}

/* ------------------------------------------------------------------ kernels */

static void test_sgemm_linear(void **state)
{
    (void)state;
    NEED_GPU();
    const int M = 37, N = 53, K = 29, pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
            float *A = hrand(na, 1), *B = hrand(nb, 1), *C = hrand(nc, 1);
            use(FP_K_DEVICE_CUDA);
            float *dA = dcopy(A, na * 4), *dB = dcopy(B, nb * 4), *dC = dcopy(C, nc * 4);
            fp_k_sgemm(ta, tb, M, N, K, 0.7f, dA, lda, dB, ldb, 0.3f, dC, ldc);
            use(FP_K_DEVICE_CPU);
            fp_k_sgemm(ta, tb, M, N, K, 0.7f, A, lda, B, ldb, 0.3f, C, ldc);
            for (int i = 0; i < M; i++) /* the padding columns must be untouched: compare all */
                assert_int_equal(cmp("sgemm", dC + (size_t)i * ldc, C + (size_t)i * ldc, (size_t)ldc, RED), 0);
            fp_k_free(dA), fp_k_free(dB), fp_k_free(dC);
            free(A), free(B), free(C);
        }
    /* linear fwd (bias) and bwd (accumulating dw, db; din overwritten and accumulated) */
    const int Nr = 301, Ci = 48, O = 40;
    float *in = hrand((size_t)Nr * Ci, 1), *w = hrand((size_t)Ci * O, 0.2), *b = hrand(O, 1);
    float *out = hrand((size_t)Nr * O, 1), *dout = hrand((size_t)Nr * O, 1), *din = hrand((size_t)Nr * Ci, 1);
    float *dw = hrand((size_t)Ci * O, 1), *db = hrand(O, 1);
    use(FP_K_DEVICE_CUDA);
    float *d_in = dcopy(in, (size_t)Nr * Ci * 4), *d_w = dcopy(w, (size_t)Ci * O * 4), *d_b = dcopy(b, O * 4);
    float *d_out = dcopy(out, (size_t)Nr * O * 4), *d_dout = dcopy(dout, (size_t)Nr * O * 4);
    float *d_din = dcopy(din, (size_t)Nr * Ci * 4), *d_dw = dcopy(dw, (size_t)Ci * O * 4), *d_db = dcopy(db, O * 4);
    fp_k_linear_fwd(d_out, d_in, d_w, d_b, Nr, Ci, O);
    for (int acc = 0; acc < 2; acc++)
        fp_k_linear_bwd(d_din, d_dw, d_db, d_dout, d_in, d_w, Nr, Ci, O, acc);
    assert_int_equal(fp_k_take_error(), FP_OK);
    use(FP_K_DEVICE_CPU);
    fp_k_linear_fwd(out, in, w, b, Nr, Ci, O);
    for (int acc = 0; acc < 2; acc++)
        fp_k_linear_bwd(din, dw, db, dout, in, w, Nr, Ci, O, acc);
    assert_int_equal(cmp("linear out", d_out, out, (size_t)Nr * O, RED), 0);
    assert_int_equal(cmp("linear din", d_din, din, (size_t)Nr * Ci, RED), 0);
    assert_int_equal(cmp("linear dw", d_dw, dw, (size_t)Ci * O, RED), 0);
    assert_int_equal(cmp("linear db", d_db, db, O, RED), 0);
    /* teeth: the comparison sees a transposed weight */
    use(FP_K_DEVICE_CUDA);
    fp_k_linear_fwd(d_out, d_in, d_w, d_b, Nr, O, Ci);
    use(FP_K_DEVICE_CPU);
    assert_true(cmp("(expected to differ)", d_out, out, (size_t)Nr * O, RED) > 0);
    float *dev[] = {d_in, d_w, d_b, d_out, d_dout, d_din, d_dw, d_db};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        fp_k_free(dev[i]);
    free(in), free(w), free(b), free(out), free(dout), free(din), free(dw), free(db);
}

static void test_layernorm(void **state)
{
    (void)state;
    NEED_GPU();
    const int widths[] = {50, 300};
    for (int k = 0; k < 2; k++) {
        const int N = 257, C = widths[k];
        const size_t NC = (size_t)N * C;
        float *x = hrand(NC, 2), *g = hrand(C, 1), *b = hrand(C, 1), *dy = hrand(NC, 1), *dx = hrand(NC, 1);
        float *dg = hrand(C, 1), *db = hrand(C, 1), *y = hrand(NC, 1), *mu = hrand(N, 1), *rs = hrand(N, 1);
        use(FP_K_DEVICE_CUDA);
        float *d_x = dcopy(x, NC * 4), *d_g = dcopy(g, C * 4), *d_b = dcopy(b, C * 4), *d_dy = dcopy(dy, NC * 4);
        float *d_dx = dcopy(dx, NC * 4), *d_dg = dcopy(dg, C * 4), *d_db = dcopy(db, C * 4), *d_y = dcopy(y, NC * 4);
        float *d_mu = dcopy(mu, N * 4), *d_rs = dcopy(rs, N * 4);
        fp_k_layernorm_fwd(d_y, d_mu, d_rs, d_x, d_g, d_b, N, C, 1e-8f);
        fp_k_layernorm_bwd(d_dx, d_dg, d_db, d_dy, d_x, d_g, d_mu, d_rs, N, C);
        assert_int_equal(fp_k_take_error(), FP_OK);
        use(FP_K_DEVICE_CPU);
        fp_k_layernorm_fwd(y, mu, rs, x, g, b, N, C, 1e-8f);
        fp_k_layernorm_bwd(dx, dg, db, dy, x, g, mu, rs, N, C);
        assert_int_equal(cmp("ln y", d_y, y, NC, RED), 0);
        assert_int_equal(cmp("ln mean", d_mu, mu, N, RED), 0);
        assert_int_equal(cmp("ln rstd", d_rs, rs, N, RED), 0);
        assert_int_equal(cmp("ln dx", d_dx, dx, NC, RED), 0);
        assert_int_equal(cmp("ln dg", d_dg, dg, C, RED), 0);
        assert_int_equal(cmp("ln db", d_db, db, C, RED), 0);
        float *dev[] = {d_x, d_g, d_b, d_dy, d_dx, d_dg, d_db, d_y, d_mu, d_rs};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
            fp_k_free(dev[i]);
        float *host[] = {x, g, b, dy, dx, dg, db, y, mu, rs};
        for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
            free(host[i]);
    }
}

static void test_elementwise(void **state)
{
    (void)state;
    NEED_GPU();
    const size_t n = 100003;
    float *x = hrand(n, 1), *y = hrand(n, 1), *mk = hrand(n, 1), *o = hrand(n, 1);
    float *hm = malloc(n * sizeof *hm);
    assert_non_null(hm);
    use(FP_K_DEVICE_CUDA);
    float *d_x = dcopy(x, n * 4), *d_y = dcopy(y, n * 4), *d_m = dcopy(mk, n * 4), *d_o = dcopy(o, n * 4);
    /* dropout: bit for bit, and about the right rate */
    fp_k_dropout_mask(d_m, n, 0.3f, 12345);
    use(FP_K_DEVICE_CPU);
    fp_k_dropout_mask(hm, n, 0.3f, 12345);
    assert_memory_equal(d_m, hm, n * sizeof *hm);
    size_t zeros = 0;
    for (size_t i = 0; i < n; i++)
        zeros += hm[i] == 0.0f;
    assert_true(fabs((double)zeros / n - 0.3) < 0.01);
    memcpy(mk, hm, n * sizeof *mk);
/* one elementwise kernel on the GPU (device arrays) and on the CPU (host arrays), outputs d_o, o */
#define EW_PARITY(name, gpu_call, cpu_call)                     \
    do {                                                        \
        use(FP_K_DEVICE_CUDA);                                  \
        gpu_call;                                               \
        use(FP_K_DEVICE_CPU);                                   \
        cpu_call;                                               \
        assert_int_equal(cmp(name, d_o, o, n, EW), 0);          \
    } while (0)
    for (int with = 0; with < 2; with++) {
        const float *dm = with ? d_m : NULL, *hmk = with ? mk : NULL;
        EW_PARITY("add_mul", fp_k_add_mul(d_o, d_x, d_y, dm, n), fp_k_add_mul(o, x, y, hmk, n));
        EW_PARITY("relu_fwd", fp_k_relu_fwd(d_o, d_x, dm, n), fp_k_relu_fwd(o, x, hmk, n));
        EW_PARITY("relu_bwd", fp_k_relu_bwd(d_o, d_y, d_x, dm, n), fp_k_relu_bwd(o, y, x, hmk, n));
    }
    EW_PARITY("mul", fp_k_mul(d_o, d_x, d_m, n), fp_k_mul(o, x, mk, n));
#undef EW_PARITY
    /* Adam and row scaling */
    float *p = hrand(n, 1), *m1 = hrand(n, 0.1), *v1 = hrand(n, 0.1);
    for (size_t i = 0; i < n; i++)
        v1[i] = fabsf(v1[i]);
    use(FP_K_DEVICE_CUDA);
    float *d_p = dcopy(p, n * 4), *d_m1 = dcopy(m1, n * 4), *d_v1 = dcopy(v1, n * 4);
    fp_k_adam(d_p, d_y, d_m1, d_v1, n, 1e-3f, 0.9f, 0.98f, 1e-8f, 0.1, 0.02);
    fp_k_scale_rows(d_x, d_y, 1000, 100);
    use(FP_K_DEVICE_CPU);
    fp_k_adam(p, y, m1, v1, n, 1e-3f, 0.9f, 0.98f, 1e-8f, 0.1, 0.02);
    fp_k_scale_rows(x, y, 1000, 100);
    assert_int_equal(cmp("adam p", d_p, p, n, RED), 0);
    assert_int_equal(cmp("adam m", d_m1, m1, n, RED), 0);
    assert_int_equal(cmp("adam v", d_v1, v1, n, RED), 0);
    assert_int_equal(cmp("scale_rows", d_x, x, n, EW), 0);
    /* sum of squares (and its scaled copy): a reduction */
    use(FP_K_DEVICE_CUDA);
    double sg = fp_k_sumsq(d_y, n), sg2 = fp_k_sumsq_scaled_copy(d_o, d_y, n, 0.5f);
    use(FP_K_DEVICE_CPU);
    double sc = fp_k_sumsq(y, n), sc2 = fp_k_sumsq_scaled_copy(o, y, n, 0.5f);
    assert_true(fabs(sg - sc) <= 1e-9 * sc && sg == sg2 && sc == sc2);
    assert_int_equal(cmp("scaled copy", d_o, o, n, EW), 0);
    /* a host array given with CUDA selected: the call runs on the CPU, correctly */
    use(FP_K_DEVICE_CUDA);
    float *h2 = hcopy(x, n);
    fp_k_add_mul(h2, h2, y, mk, n);
    use(FP_K_DEVICE_CPU);
    fp_k_add_mul(x, x, y, mk, n);
    assert_memory_equal(h2, x, n * sizeof *x);
    assert_int_equal(fp_k_take_error(), FP_OK);
    float *dev[] = {d_x, d_y, d_m, d_o, d_p, d_m1, d_v1};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        fp_k_free(dev[i]);
    float *host[] = {x, y, mk, o, hm, p, m1, v1, h2};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        free(host[i]);
}

static void test_embed_gather(void **state)
{
    (void)state;
    NEED_GPU();
    const int V = 500, T = 30, N = 2000, C = 48, n = 300;
    float *wte = hrand((size_t)V * C, 1), *wpe = hrand((size_t)T * C, 1), *dout = hrand((size_t)N * C, 1);
    float *out = hrand((size_t)N * C, 1), *dwte = hrand((size_t)V * C, 1), *dwpe = hrand((size_t)T * C, 1);
    float *fill = hrand(C, 1), *dfill = hrand(C, 1), *g = hrand((size_t)n * C, 1);
    int32_t *ids = malloc(N * sizeof *ids), *tp = malloc(N * sizeof *tp), *rows = malloc(n * sizeof *rows);
    assert_true(ids && tp && rows);
    for (int i = 0; i < N; i++) {
        ids[i] = (int32_t)fp_rng_below(&g_rng, V);
        tp[i] = (int32_t)fp_rng_below(&g_rng, T);
    }
    for (int i = 0; i < n; i++) /* distinct rows of the N, or -1 (the fill) */
        rows[i] = i % 7 == 3 ? -1 : (int32_t)(i * 5 + 1);
    use(FP_K_DEVICE_CUDA);
    float *d_wte = dcopy(wte, (size_t)V * C * 4), *d_wpe = dcopy(wpe, (size_t)T * C * 4);
    float *d_dout = dcopy(dout, (size_t)N * C * 4), *d_out = dcopy(out, (size_t)N * C * 4);
    float *d_dwte = dcopy(dwte, (size_t)V * C * 4), *d_dwpe = dcopy(dwpe, (size_t)T * C * 4);
    float *d_fill = dcopy(fill, C * 4), *d_dfill = dcopy(dfill, C * 4), *d_g = dcopy(g, (size_t)n * C * 4);
    int32_t *d_ids = dcopy(ids, N * 4), *d_tp = dcopy(tp, N * 4), *d_rows = dcopy(rows, n * 4);
    fp_k_embed_fwd(d_out, d_ids, d_tp, d_wte, d_wpe, 7.0f, N, C);
    fp_k_embed_bwd(d_dwte, d_dwpe, d_dout, d_ids, d_tp, 7.0f, N, C);
    fp_k_gather_rows(d_g, d_out, d_rows, d_fill, n, C);
    fp_k_scatter_rows_add(d_out, d_dfill, d_g, d_rows, n, C);
    assert_int_equal(fp_k_take_error(), FP_OK);
    use(FP_K_DEVICE_CPU);
    fp_k_embed_fwd(out, ids, tp, wte, wpe, 7.0f, N, C);
    fp_k_embed_bwd(dwte, dwpe, dout, ids, tp, 7.0f, N, C);
    fp_k_gather_rows(g, out, rows, fill, n, C);
    fp_k_scatter_rows_add(out, dfill, g, rows, n, C);
    assert_int_equal(cmp("embed out", d_out, out, (size_t)N * C, EW), 0);
    assert_int_equal(cmp("embed dwte", d_dwte, dwte, (size_t)V * C, RED), 0);
    assert_int_equal(cmp("embed dwpe", d_dwpe, dwpe, (size_t)T * C, RED), 0);
    assert_int_equal(cmp("gather", d_g, g, (size_t)n * C, EW), 0);
    assert_int_equal(cmp("scatter dfill", d_dfill, dfill, C, RED), 0);
    void *dev[] = {d_wte, d_wpe, d_dout, d_out, d_dwte, d_dwpe, d_fill, d_dfill, d_g, d_ids, d_tp, d_rows};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        fp_k_free(dev[i]);
    void *host[] = {wte, wpe, dout, out, dwte, dwpe, fill, dfill, g, ids, tp, rows};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        free(host[i]);
}

static void test_attention(void **state)
{
    (void)state;
    NEED_GPU();
    /* head sizes 16, 50 (the Games model: dim 50, 1 head) and 64: the kernels' lane loops over a
     * head's dimensions run once, twice and twice with a partial second pass */
    enum { U = 40 };
    static const int Cs[] = {32, 50, 128}, Hs[] = {2, 1, 2};
    int32_t off[U + 1];
    off[0] = 0;
    for (int u = 0; u < U; u++) /* lengths 1..45, some long (> 32: more than a warp's lanes) */
        off[u + 1] = off[u] + 1 + (int32_t)fp_rng_below(&g_rng, u % 5 == 0 ? 45 : 12);
    const int N = off[U];
    for (int shape = 0; shape < 3; shape++) {
        const int C = Cs[shape], H = Hs[shape];
        print_message("  attention: dim %d, %d heads\n", C, H);
        size_t aoff[U + 1];
        const size_t A = fp_k_attention_layout(off, U, H, aoff);
        const size_t NC = (size_t)N * C;
        float *q = hrand(NC, 1), *k = hrand(NC, 1), *v = hrand(NC, 1), *dout = hrand(NC, 1);
        float *mk = malloc(A * sizeof *mk);
        assert_non_null(mk);
        fp_k_dropout_mask(mk, A, 0.2f, 99);
        for (int with = 0; with < 2; with++) {
            float *out = hrand(NC, 1), *att = hrand(A, 1), *attd = hcopy(mk, A), *datt = hrand(A, 1);
            float *dq = hrand(NC, 1), *dk = hrand(NC, 1), *dv = hrand(NC, 1), *scr = hrand(NC, 1);
            use(FP_K_DEVICE_CUDA);
            float *d_q = dcopy(q, NC * 4), *d_k = dcopy(k, NC * 4), *d_v = dcopy(v, NC * 4);
            float *d_do = dcopy(dout, NC * 4);
            float *d_out = dcopy(out, NC * 4), *d_att = dcopy(att, A * 4), *d_attd = dcopy(attd, A * 4);
            float *d_datt = dcopy(datt, A * 4), *d_dq = dcopy(dq, NC * 4), *d_dk = dcopy(dk, NC * 4);
            float *d_dv = dcopy(dv, NC * 4), *d_scr = dcopy(scr, NC * 4);
            int32_t *d_off = dcopy(off, sizeof off);
            size_t *d_aoff = dcopy(aoff, sizeof aoff);
            /* with the mask: attd aliases it, as the model calls it */
            fp_k_attention_fwd(d_out, d_att, with ? d_attd : NULL, with ? d_attd : NULL, d_q, d_k, d_v, d_off, d_aoff,
                               U, C, H, d_scr);
            fp_k_attention_bwd(d_dq, d_dk, d_dv, d_datt, d_do, d_att, with ? d_attd : NULL, d_q, d_k, d_v, d_off,
                               d_aoff, U, C, H, d_scr);
            assert_int_equal(fp_k_take_error(), FP_OK);
            use(FP_K_DEVICE_CPU);
            fp_k_attention_fwd(out, att, with ? attd : NULL, with ? attd : NULL, q, k, v, off, aoff, U, C, H, scr);
            fp_k_attention_bwd(dq, dk, dv, datt, dout, att, with ? attd : NULL, q, k, v, off, aoff, U, C, H, scr);
            assert_int_equal(cmp("att out", d_out, out, NC, RED), 0);
            assert_int_equal(cmp("att probabilities", d_att, att, A, RED), 0);
            if (with)
                assert_int_equal(cmp("att dropped probabilities", d_attd, attd, A, RED), 0);
            assert_int_equal(cmp("att dq", d_dq, dq, NC, RED), 0);
            assert_int_equal(cmp("att dk", d_dk, dk, NC, RED), 0);
            assert_int_equal(cmp("att dv", d_dv, dv, NC, RED), 0);
            void *dev[] = {d_q, d_k, d_v, d_do, d_out, d_att, d_attd, d_datt, d_dq, d_dk, d_dv, d_scr, d_off, d_aoff};
            for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
                fp_k_free(dev[i]);
            float *host[] = {out, att, attd, datt, dq, dk, dv, scr};
            for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
                free(host[i]);
        }
        free(q), free(k), free(v), free(dout), free(mk);
    }
}

static void test_sampled_loss(void **state)
{
    (void)state;
    NEED_GPU();
    enum { n = 300, S = 5, C = 40, V = 1000 };
    float *h = hrand((size_t)n * C, 1), *emb = hrand((size_t)V * C, 0.3);
    int32_t *items = malloc((size_t)n * S * sizeof *items);
    assert_non_null(items);
    for (int i = 0; i < n * S; i++)
        items[i] = (int32_t)fp_rng_below(&g_rng, V); /* repeats: the scatter-add must sum them */
    for (int kind = 0; kind < 2; kind++) {
        float *z = hrand((size_t)n * S, 1), *dh = hrand((size_t)n * C, 1), *demb = hrand((size_t)V * C, 1);
        use(FP_K_DEVICE_CUDA);
        float *d_h = dcopy(h, (size_t)n * C * 4), *d_emb = dcopy(emb, (size_t)V * C * 4);
        float *d_z = dcopy(z, (size_t)n * S * 4), *d_dh = dcopy(dh, (size_t)n * C * 4);
        float *d_demb = dcopy(demb, (size_t)V * C * 4);
        int32_t *d_items = dcopy(items, (size_t)n * S * 4);
        double lg = fp_k_sampled_loss_fwd(d_z, d_h, d_items, d_emb, n, S, C, kind);
        float *zg = hcopy(d_z, (size_t)n * S);
        fp_k_sampled_loss_bwd(d_dh, d_demb, d_z, d_h, d_items, d_emb, n, S, C, kind, 0.25f);
        assert_int_equal(fp_k_take_error(), FP_OK);
        use(FP_K_DEVICE_CPU);
        double lc = fp_k_sampled_loss_fwd(z, h, items, emb, n, S, C, kind);
        assert_int_equal(cmp("logits", zg, z, (size_t)n * S, RED), 0);
        fp_k_sampled_loss_bwd(dh, demb, z, h, items, emb, n, S, C, kind, 0.25f);
        print_message("loss kind %d: gpu %.12g cpu %.12g\n", kind, lg, lc);
        assert_true(fabs(lg - lc) <= 1e-5 * fabs(lc));
        assert_int_equal(cmp("dlogits", d_z, z, (size_t)n * S, RED), 0);
        assert_int_equal(cmp("loss dh", d_dh, dh, (size_t)n * C, RED), 0);
        assert_int_equal(cmp("loss demb", d_demb, demb, (size_t)V * C, RED), 0);
        /* the halves DP-SGD uses separately */
        use(FP_K_DEVICE_CUDA);
        fp_k_sampled_loss_dlogits(d_z, n, S, kind, 1.0f);
        fp_k_sampled_scores_bwd(d_dh, d_demb, d_z, d_h, d_items, d_emb, n, S, C);
        use(FP_K_DEVICE_CPU);
        fp_k_sampled_loss_dlogits(z, n, S, kind, 1.0f);
        fp_k_sampled_scores_bwd(dh, demb, z, h, items, emb, n, S, C);
        assert_int_equal(cmp("dlogits (2)", d_z, z, (size_t)n * S, RED), 0);
        assert_int_equal(cmp("scores dh", d_dh, dh, (size_t)n * C, RED), 0);
        assert_int_equal(cmp("scores demb", d_demb, demb, (size_t)V * C, RED), 0);
        void *dev[] = {d_h, d_emb, d_z, d_dh, d_demb, d_items};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
            fp_k_free(dev[i]);
        free(z), free(dh), free(demb), free(zg);
    }
    free(h), free(emb), free(items);
}

/* DP-SGD's per-user norms: the GPU's ghost norms (always the Gram form) and pairwise tied-embedding
 * norms against the CPU's (ghost or materialised per user; per-item summed rows). */
static void test_user_norms(void **state)
{
    (void)state;
    NEED_GPU();
    enum { U = 30, C = 24, OC = 20, S = 3, V = 15 };
    int32_t off[U + 1], loff[U + 1];
    off[0] = loff[0] = 0;
    for (int u = 0; u < U; u++) {
        off[u + 1] = off[u] + (int32_t)fp_rng_below(&g_rng, u % 4 == 0 ? 41 : 9); /* some empty, some > C */
        loff[u + 1] = loff[u] + (off[u + 1] - off[u]);
    }
    const int N = off[U], NL = loff[U];
    float *x = hrand((size_t)N * C, 1), *in = hrand((size_t)N * C, 1), *mean = hrand(N, 0.1), *rstd = hrand(N, 1);
    float *g[3] = {hrand((size_t)N * OC, 1), hrand((size_t)N * OC, 1), hrand((size_t)N * OC, 1)};
    float *dz = hrand((size_t)NL * S, 1), *h = hrand((size_t)NL * C, 1);
    int32_t *ids = malloc((N + 1) * sizeof *ids), *items = malloc(((size_t)NL * S + 1) * sizeof *items);
    assert_true(ids && items);
    for (int i = 0; i < N; i++) /* few items: many repeats within a user; 0 = padding */
        ids[i] = (int32_t)fp_rng_below(&g_rng, V);
    for (int i = 0; i < NL * S; i++)
        items[i] = (int32_t)fp_rng_below(&g_rng, V);
    double accc[U], accg[U];
    for (int u = 0; u < U; u++)
        accc[u] = accg[u] = 0.5 * u; /* they add */
    float *sc = calloc((size_t)U * C, sizeof *sc), *sxc = calloc((size_t)U * C, sizeof *sxc);
    const int nt = fp_k_threads();
    const size_t lin = fp_k_linear_user_sqnorms_scratch(45, C, OC);
    const size_t emb = fp_k_embed_user_sqnorms_scratch(V, 45, 45, S, C);
    float *lsc = malloc((size_t)nt * lin * sizeof *lsc);
    char *esc = malloc((size_t)nt * emb);
    assert_true(sc && sxc && lsc && esc);
    memset(esc, 0xff, (size_t)nt * emb);
    use(FP_K_DEVICE_CUDA);
    float *d_x = dcopy(x, (size_t)N * C * 4), *d_in = dcopy(in, (size_t)N * C * 4), *d_mean = dcopy(mean, N * 4);
    float *d_rstd = dcopy(rstd, N * 4), *d_dz = dcopy(dz, (size_t)NL * S * 4), *d_h = dcopy(h, (size_t)NL * C * 4);
    float *d_g[3];
    for (int k = 0; k < 3; k++)
        d_g[k] = dcopy(g[k], (size_t)N * OC * 4);
    int32_t *d_off = dcopy(off, sizeof off), *d_loff = dcopy(loff, sizeof loff);
    int32_t *d_ids = dcopy(ids, (size_t)N * 4), *d_items = dcopy(items, (size_t)NL * S * 4);
    double *d_acc = dcopy(accg, sizeof accg);
    float *d_s = dcopy(sc, (size_t)U * C * 4), *d_sx = dcopy(sxc, (size_t)U * C * 4);
    const float *dg[3] = {d_g[0], d_g[1], d_g[2]}, *hg[3] = {g[0], g[1], g[2]};
    fp_k_user_sqnorms(d_acc, d_x, d_off, U, C);
    fp_k_user_colsums(d_s, d_sx, d_x, d_in, d_mean, d_rstd, d_off, U, C);
    fp_k_linear_user_sqnorms(d_acc, d_in, dg, 3, d_off, U, C, OC, 1, NULL);
    fp_k_embed_user_sqnorms(d_acc, d_x, d_ids, 3.0f, d_off, d_dz, d_h, d_items, d_loff, U, V, 45, 45, S, C, NULL);
    assert_int_equal(fp_k_take_error(), FP_OK);
    use(FP_K_DEVICE_CPU);
    fp_k_user_sqnorms(accc, x, off, U, C);
    fp_k_user_colsums(sc, sxc, x, in, mean, rstd, off, U, C);
    fp_k_linear_user_sqnorms(accc, in, hg, 3, off, U, C, OC, 1, lsc);
    fp_k_embed_user_sqnorms(accc, x, ids, 3.0f, off, dz, h, items, loff, U, V, 45, 45, S, C, esc);
    for (int u = 0; u < U; u++) {
        if (getenv("FP_TEST_VERBOSE"))
            print_message("user %d (%d rows): gpu %.12g cpu %.12g\n", u, off[u + 1] - off[u], d_acc[u], accc[u]);
        assert_true(fabs(d_acc[u] - accc[u]) <= 1e-5 * fabs(accc[u]));
    }
    assert_int_equal(cmp("user colsums", d_s, sc, (size_t)U * C, RED), 0);
    assert_int_equal(cmp("user colsums x xhat", d_sx, sxc, (size_t)U * C, RED), 0);
    void *dev[] = {d_x, d_in, d_mean, d_rstd, d_dz, d_h, d_g[0], d_g[1], d_g[2], d_off, d_loff, d_ids, d_items,
                   d_acc, d_s, d_sx};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        fp_k_free(dev[i]);
    void *host[] = {x, in, mean, rstd, g[0], g[1], g[2], dz, h, ids, items, sc, sxc, lsc, esc};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        free(host[i]);
}

/* More users than a grid's y dimension holds (65,535: a DP-SGD batch of --batch 65536 has ~66,500),
 * one row each: the per-user column sums on the device against the CPU. */
static void test_user_colsums_many_users(void **state)
{
    (void)state;
    NEED_GPU();
    enum { U = 70001, C = 3 };
    int32_t *off = malloc((U + 1) * sizeof *off);
    assert_non_null(off);
    for (int u = 0; u <= U; u++)
        off[u] = u;
    float *x = hrand((size_t)U * C, 1), *sc = calloc((size_t)U * C, sizeof *sc);
    assert_non_null(sc);
    use(FP_K_DEVICE_CUDA);
    float *d_x = dcopy(x, (size_t)U * C * 4), *d_s = dcopy(sc, (size_t)U * C * 4);
    int32_t *d_off = dcopy(off, (U + 1) * sizeof *off);
    fp_k_user_colsums(d_s, NULL, d_x, NULL, NULL, NULL, d_off, U, C);
    assert_int_equal(fp_k_take_error(), FP_OK);
    use(FP_K_DEVICE_CPU);
    fp_k_user_colsums(sc, NULL, x, NULL, NULL, NULL, off, U, C);
    assert_int_equal(cmp("user colsums, 70001 users", d_s, sc, (size_t)U * C, 0, 0), 0); /* one row: exact */
    fp_k_free(d_x), fp_k_free(d_s), fp_k_free(d_off);
    free(off), free(x), free(sc);
}

/* Long windows of strongly correlated rows (LayerNorm-like: a common row plus small noise) and
 * gradients that cancel across rows: the ghost norm's Gram entries are large and the result
 * small. Both back-ends against the squared norms computed directly in double. */
static void test_linear_user_sqnorms_long_correlated(void **state)
{
    (void)state;
    enum { U = 3, L = 200, C = 50, OC = 50 };
    const int N = U * L;
    int32_t off[U + 1];
    for (int u = 0; u <= U; u++)
        off[u] = u * L;
    float *base = hrand(C, 1), *in = hrand((size_t)N * C, 0.05), *g = hrand((size_t)N * OC, 1);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++)
            in[(size_t)i * C + c] += base[c];
    for (int i = 1; i < N; i += 2) /* row pairs that nearly cancel */
        for (int c = 0; c < OC; c++)
            g[(size_t)i * OC + c] = -g[(size_t)(i - 1) * OC + c] * 0.999f + 0.01f * (float)fp_rng_normal(&g_rng);
    double ref[U];
    for (int u = 0; u < U; u++) { /* ||X^T G||_F^2 + ||column sums of G||^2, directly */
        double s = 0;
        for (int o = 0; o < OC; o++) {
            double b = 0;
            for (int t = off[u]; t < off[u + 1]; t++)
                b += (double)g[(size_t)t * OC + o];
            s += b * b;
            for (int c = 0; c < C; c++) {
                double w = 0;
                for (int t = off[u]; t < off[u + 1]; t++)
                    w += (double)in[(size_t)t * C + c] * g[(size_t)t * OC + o];
                s += w * w;
            }
        }
        ref[u] = s;
    }
    const float *hg[1] = {g};
    double acc[U] = {0};
    float *lsc = malloc((size_t)fp_k_threads() * fp_k_linear_user_sqnorms_scratch(L, C, OC) * sizeof *lsc);
    assert_non_null(lsc);
    use(FP_K_DEVICE_CPU);
    fp_k_linear_user_sqnorms(acc, in, hg, 1, off, U, C, OC, 1, lsc);
    for (int u = 0; u < U; u++) {
        print_message("  user %d: cpu %.12g, reference %.12g\n", u, acc[u], ref[u]);
        assert_true(fabs(acc[u] - ref[u]) <= 1e-6 * ref[u]);
    }
    free(lsc);
    if (g_gpu) {
        use(FP_K_DEVICE_CUDA);
        float *d_in = dcopy(in, (size_t)N * C * 4), *d_g = dcopy(g, (size_t)N * OC * 4);
        int32_t *d_off = dcopy(off, sizeof off);
        double zero[U] = {0}, *d_acc = dcopy(zero, sizeof zero);
        const float *dg[1] = {d_g};
        fp_k_linear_user_sqnorms(d_acc, d_in, dg, 1, d_off, U, C, OC, 1, NULL);
        assert_int_equal(fp_k_take_error(), FP_OK);
        for (int u = 0; u < U; u++) {
            print_message("  user %d: gpu %.12g, reference %.12g\n", u, d_acc[u], ref[u]);
            assert_true(fabs(d_acc[u] - ref[u]) <= 1e-6 * ref[u]);
        }
        fp_k_free(d_in), fp_k_free(d_g), fp_k_free(d_off), fp_k_free(d_acc);
        use(FP_K_DEVICE_CPU);
    }
    free(base), free(in), free(g);
    if (!g_gpu)
        NEED_GPU(); /* the CPU half ran; the device half needs a GPU */
}

/* ------------------------------------------------------------------ whole steps */

enum { SB = 24, ST = 20, SI = 100 };

static void make_batch(int32_t *seq, int32_t *pos, int32_t *neg)
{
    memset(seq, 0, sizeof(int32_t) * SB * ST);
    memset(pos, 0, sizeof(int32_t) * SB * ST);
    for (int b = 0; b < SB; b++) {
        int len = 1 + (int)fp_rng_below(&g_rng, ST); /* varied lengths, left-padded */
        for (int t = ST - len; t < ST; t++)
            seq[b * ST + t] = 1 + (int32_t)fp_rng_below(&g_rng, SI);
        for (int t = ST - len; t < ST; t++)
            pos[b * ST + t] = t + 1 < ST ? seq[b * ST + t + 1] : 1 + (int32_t)fp_rng_below(&g_rng, SI);
    }
    for (int i = 0; i < SB * ST; i++)
        neg[i] = 1 + (int32_t)fp_rng_below(&g_rng, SI);
}

/* Per tensor: rtol 1e-3, floor 1e-4 x the tensor's largest |value| (see the header). */
static int cmp_tensors(const char *what, const fp_model_t *m, const float *g, const float *c)
{
    const fp_layout_t *l = fp_model_layout(m);
    int bad = 0;
    for (size_t t = 0; t < l->n_tensors; t++) {
        char name[160];
        snprintf(name, sizeof name, "%s %s", what, l->tensors[t].name);
        bad += cmp(name, g + l->tensors[t].offset, c + l->tensors[t].offset, l->tensors[t].numel, 1e-3, 1e-4);
    }
    return bad;
}

static void step_parity(fp_block_kind block)
{
    fp_model_config_t c = {.n_items = SI, .dim = 32, .blocks = 2, .heads = 2, .maxlen = ST, .dropout = 0.2f,
                           .attn_dropout = 0.1f, .loss = FP_LOSS_BCE, .block = block, .n_neg = 1, .l2_emb = 0.01f};
    fp_model_t *mc = NULL, *mg = NULL;
    use(FP_K_DEVICE_CPU);
    assert_int_equal(fp_model_create(&c, SB, 2, &mc), FP_OK);
    use(FP_K_DEVICE_CUDA);
    assert_int_equal(fp_model_create(&c, SB, 2, &mg), FP_OK);
    fp_model_init(mc, 5);
    const size_t P = fp_model_layout(mc)->total;
    memcpy(fp_model_params(mg), fp_model_params(mc), P * sizeof(float));
    fp_adam_t ac, ag;
    assert_int_equal(fp_adam_create(&ac, P), FP_OK);
    assert_int_equal(fp_adam_create(&ag, P), FP_OK);
    int32_t seq[SB * ST], pos[SB * ST], neg[SB * ST];
    fp_batch_t b = {SB, seq, pos, neg};
    for (int step = 0; step < 10; step++) {
        make_batch(seq, pos, neg);
        fp_rng_t r0, r;
        fp_rng_seed(&r0, 100 + (uint64_t)step);
        double lg, lc;
        r = r0;
        assert_int_equal(fp_model_loss_grad(mg, &b, &r, &lg), FP_OK);
        r = r0;
        assert_int_equal(fp_model_loss_grad(mc, &b, &r, &lc), FP_OK);
        assert_true(fabs(lg - lc) <= (step == 0 ? 1e-5 : 1e-4) * fabs(lc));
        if (step == 0) {
            assert_int_equal(cmp_tensors("grad", mc, fp_model_grads(mg), fp_model_grads(mc)), 0);
            /* teeth: 1% off fails */
            float *G = fp_model_grads(mg);
            for (size_t i = 0; i < P; i++)
                G[i] *= 1.01f;
            assert_true(cmp_tensors("(expected to fail)", mc, G, fp_model_grads(mc)) > 0);
            for (size_t i = 0; i < P; i++)
                G[i] /= 1.01f;
        }
        fp_model_adam_step(mg, &ag, 1e-3f, 0.9f, 0.98f, 1e-8f);
        fp_model_adam_step(mc, &ac, 1e-3f, 0.9f, 0.98f, 1e-8f);
    }
    {
        const float *pg = fp_model_params(mg), *pc = fp_model_params(mc);
        int far = cmp_tensors("params after 10 steps", mc, pg, pc);
        double worst = 0;
        for (size_t i = 0; i < P; i++)
            worst = fmax(worst, fabs((double)pg[i] - (double)pc[i]));
        print_message("params after 10 steps: %d of %zu outside the bound, largest difference %.3g\n", far, P, worst);
        assert_true(far <= (int)(P / 1000) && worst <= 2 * 1e-3 * 10);
    }
    /* DP-SGD's clipped gradient (its per-user norms run on the device too: the user-norm kernels) */
    double ng[SB], nc[SB], l;
    make_batch(seq, pos, neg);
    fp_rng_t r0, r;
    fp_rng_seed(&r0, 77);
    r = r0;
    assert_int_equal(fp_model_loss_grad_clipped(mg, &b, &r, 0.5, 0, ng, &l), FP_OK);
    r = r0;
    assert_int_equal(fp_model_loss_grad_clipped(mc, &b, &r, 0.5, 0, nc, &l), FP_OK);
    for (int u = 0; u < SB; u++)
        assert_true(fabs(ng[u] - nc[u]) <= 1e-4 * nc[u] + 1e-12);
    assert_int_equal(cmp_tensors("clipped grad", mc, fp_model_grads(mg), fp_model_grads(mc)), 0);
    /* profiles into a plain host array (the CPU gather) */
    float pg[SB * 32], pc[SB * 32];
    assert_int_equal(fp_model_profiles(mg, seq, SB, pg), FP_OK);
    assert_int_equal(fp_model_profiles(mc, seq, SB, pc), FP_OK);
    assert_int_equal(cmp("profiles", pg, pc, SB * 32, 1e-3, 1e-4), 0);
    assert_int_equal(fp_k_take_error(), FP_OK);
    fp_adam_destroy(&ac);
    fp_adam_destroy(&ag);
    fp_model_destroy(mg);
    use(FP_K_DEVICE_CPU);
    fp_model_destroy(mc);
}

static void test_step_parity(void **state)
{
    (void)state;
    NEED_GPU();
    step_parity(FP_BLOCK_PRENORM);
    step_parity(FP_BLOCK_SASREC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_select), cmocka_unit_test(test_sgemm_linear), cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_elementwise),   cmocka_unit_test(test_embed_gather), cmocka_unit_test(test_attention),
        cmocka_unit_test(test_sampled_loss),  cmocka_unit_test(test_user_norms),
        cmocka_unit_test(test_user_colsums_many_users), cmocka_unit_test(test_linear_user_sqnorms_long_correlated),
        cmocka_unit_test(test_step_parity),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
