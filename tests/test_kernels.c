/* test_kernels: every kernel of kernels.h against a float64 transcription, layer by layer.
 *
 * For each layer: the float32 forward is compared with the float64 reference, and the float32
 * backward (with upstream gradient r) with central differences of the float64 objective
 * sum(r * out), h = 1e-6 (exact to ~1e-9, so what is measured is the float32 error of the
 * backward). Bounds, shared by all layers (see cmp_grad and cmp_fwd):
 *  - forward: |y - y64| <= 8 * K * 2^-24 * (sum of |terms| of y) + tiny, K = terms per output: the
 *    classical bound of a float sum of K products (each rounding at most 2^-24 relative), with
 *    a factor 8 for the few operations around the sum (bias, scale, softmax, normalisation);
 *  - backward: rtol 1e-3 and an absolute floor of 1e-4 x the largest gradient of that input:
 *    a float32 gradient is a sum of a few dozen products, ~1e-6 relative, plus cancellation
 *    among terms of the size of the largest gradient.
 * Kernels that promise results independent of the thread count are run with 1 and 2 threads
 * and compared bit for bit. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#include "common/kernels.h"
#include "common/rng.h"

#define U_F32 5.9604644775390625e-08

static fp_rng_t g_rng;

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    assert_non_null(p);
    return p;
}

static float *frand(size_t n, double scale)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * fp_rng_normal(&g_rng));
    return x;
}

static double *to64(const float *x, size_t n)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    assert_non_null(d);
    for (size_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

/* Forward check: |y - y64| <= 8 * K * u * mag + 1e-30 per element (mag = sum of |terms|). */
static void cmp_fwd(const char *what, const float *y, const double *y64, const double *mag, size_t n, int K)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double tol = 8.0 * K * U_F32 * mag[i] + 1e-30;
        if (!(fabs(y[i] - y64[i]) <= tol)) {
            if (bad < 5)
                print_message("%s fwd [%zu]: %.9g vs %.9g (tol %.3g)\n", what, i, y[i], y64[i], tol);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

/* Backward check of one input: analytic g vs numeric fd (NaN = not sampled). */
static void cmp_grad(const char *what, const float *g, const double *fd, size_t n)
{
    double G = 0;
    for (size_t i = 0; i < n; i++)
        if (!isnan(fd[i]))
            G = fmax(G, fabs(fd[i]));
    assert_true(G > 0); /* an input whose gradient is all zero would test nothing */
    int bad = 0, strong = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(fd[i]))
            continue;
        double tol = 1e-3 * fmax(fabs(g[i]), fabs(fd[i])) + 1e-4 * G;
        strong += fabs(fd[i]) > 1e-3 * G;
        if (!(fabs(g[i] - fd[i]) <= tol)) {
            if (bad < 5)
                print_message("%s grad [%zu]: analytic %.9g numeric %.9g\n", what, i, g[i], fd[i]);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
    assert_true(strong > 0);
}

/* Central differences of obj over x[n] (every `stride`-th coordinate; others NaN). */
typedef double (*obj_fn)(void *ctx);
static void fd_grad(obj_fn f, void *ctx, double *x, size_t n, size_t stride, double *fd)
{
    for (size_t i = 0; i < n; i++) {
        fd[i] = NAN;
        if (i % stride)
            continue;
        double s = x[i], h = 1e-6 * fmax(1.0, fabs(s));
        x[i] = s + h;
        double fp = f(ctx);
        x[i] = s - h;
        double fm = f(ctx);
        x[i] = s;
        fd[i] = (fp - fm) / (2 * h);
    }
}

static double dot64(const double *r, const double *y, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += r[i] * y[i];
    return s;
}

/* ------------------------------------------------------------------ sgemm */

static void test_sgemm(void **state)
{
    (void)state;
    const int shapes[][3] = {{37, 50, 29}, {200, 50, 50}, {50, 3417, 50}, {1, 1, 1}, {5, 7, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int threads = 1; threads <= 2; threads++) {
                    const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                    fp_k_set_threads(threads);
                    float *A = frand((size_t)M * K, 1), *B = frand((size_t)K * N, 1), *Cm = frand((size_t)M * N, 1);
                    double *C0 = to64(Cm, (size_t)M * N), *ref = xmalloc(sizeof(double) * M * N),
                           *mag = xmalloc(sizeof(double) * M * N);
                    assert_true(ref && mag);
                    const int lda = ta ? M : K, ldb = tb ? K : N;
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++) {
                            double acc = 0.5 * C0[i * N + j], m = fabs(acc);
                            for (int k = 0; k < K; k++) {
                                double a = ta ? A[k * lda + i] : A[i * lda + k];
                                double b = tb ? B[j * ldb + k] : B[k * ldb + j];
                                acc += 2.0 * a * b;
                                m += fabs(2.0 * a * b);
                            }
                            ref[i * N + j] = acc;
                            mag[i * N + j] = m;
                        }
                    fp_k_sgemm(ta, tb, M, N, K, 2.0f, A, lda, B, ldb, 0.5f, Cm, N);
                    cmp_fwd("sgemm", Cm, ref, mag, (size_t)M * N, K + 2);
                    free(A), free(B), free(Cm), free(C0), free(ref), free(mag);
                }
    fp_k_set_threads(1);
    assert_int_equal(fp_k_threads(), 1);
    fp_k_set_threads(0);
    assert_int_equal(fp_k_threads(), 1);
    fp_k_set_threads(1000);
    assert_int_equal(fp_k_threads(), 256);
#ifdef _OPENMP
    /* the calling thread's other OpenMP regions (the DP noise) follow the setting too */
    fp_k_set_threads(3);
    assert_int_equal(omp_get_max_threads(), 3);
#endif
    fp_k_set_threads(1);
}

/* ------------------------------------------------------------------ linear */

typedef struct {
    int N, C, OC;
    double *in, *w, *b, *r;
} lin_ctx;

static void ref_linear(double *out, double *mag, const lin_ctx *c)
{
    for (int i = 0; i < c->N; i++)
        for (int o = 0; o < c->OC; o++) {
            double s = c->b[o], m = fabs(s);
            for (int k = 0; k < c->C; k++) {
                s += c->in[i * c->C + k] * c->w[k * c->OC + o];
                m += fabs(c->in[i * c->C + k] * c->w[k * c->OC + o]);
            }
            out[i * c->OC + o] = s;
            if (mag)
                mag[i * c->OC + o] = m;
        }
}

static double lin_obj(void *p)
{
    lin_ctx *c = p;
    double *out = xmalloc(sizeof(double) * c->N * c->OC);
    ref_linear(out, NULL, c);
    double v = dot64(c->r, out, (size_t)c->N * c->OC);
    free(out);
    return v;
}

static void test_linear(void **state)
{
    (void)state;
    const int N = 40, C = 12, OC = 9;
    fp_k_set_threads(2);
    float *in = frand(N * C, 1), *w = frand(C * OC, 0.5), *b = frand(OC, 0.5), *r = frand(N * OC, 1);
    float *out = xmalloc(sizeof(float) * N * OC), *din = xmalloc(sizeof(float) * N * C);
    float *dw = calloc(C * OC, sizeof(float)), *db = calloc(OC, sizeof(float));
    lin_ctx c = {N, C, OC, to64(in, N * C), to64(w, C * OC), to64(b, OC), to64(r, N * OC)};
    double *ref = xmalloc(sizeof(double) * N * OC), *mag = xmalloc(sizeof(double) * N * OC);
    ref_linear(ref, mag, &c);
    fp_k_linear_fwd(out, in, w, b, N, C, OC);
    cmp_fwd("linear", out, ref, mag, N * OC, C + 1);
    fp_k_linear_bwd(din, dw, db, r, in, w, N, C, OC, 0);
    double *fd = xmalloc(sizeof(double) * N * C);
    fd_grad(lin_obj, &c, c.in, N * C, 1, fd);
    cmp_grad("linear din", din, fd, N * C);
    fd_grad(lin_obj, &c, c.w, C * OC, 1, fd);
    cmp_grad("linear dw", dw, fd, C * OC);
    fd_grad(lin_obj, &c, c.b, OC, 1, fd);
    cmp_grad("linear db", db, fd, OC);
    /* accumulation: dw, db and (when asked) din add */
    float *din2 = xmalloc(sizeof(float) * N * C);
    memcpy(din2, din, sizeof(float) * N * C);
    float dw0 = dw[3], db0 = db[2];
    fp_k_linear_bwd(din2, dw, db, r, in, w, N, C, OC, 1);
    assert_true(fabsf(din2[5] - 2 * din[5]) <= 1e-6f * fabsf(din[5]) + 1e-30f);
    assert_true(fabsf(dw[3] - 2 * dw0) <= 1e-6f * fabsf(dw0) + 1e-30f);
    assert_true(fabsf(db[2] - 2 * db0) <= N * (float)U_F32 * 2 * fabsf(db0) + 1e-30f);
    free(in), free(w), free(b), free(r), free(out), free(din), free(din2), free(dw), free(db);
    free(c.in), free(c.w), free(c.b), free(c.r), free(ref), free(mag), free(fd);
}

/* ------------------------------------------------------------------ layernorm */

typedef struct {
    int N, C;
    double *in, *g, *b, *r;
} ln_ctx;

static void ref_layernorm(double *out, const ln_ctx *c)
{
    for (int i = 0; i < c->N; i++) {
        const double *x = c->in + i * c->C;
        double mu = 0, var = 0;
        for (int k = 0; k < c->C; k++)
            mu += x[k];
        mu /= c->C;
        for (int k = 0; k < c->C; k++)
            var += (x[k] - mu) * (x[k] - mu);
        var /= c->C;
        for (int k = 0; k < c->C; k++)
            out[i * c->C + k] = (x[k] - mu) / sqrt(var + 1e-8) * c->g[k] + c->b[k];
    }
}

static double ln_obj(void *p)
{
    ln_ctx *c = p;
    double *out = xmalloc(sizeof(double) * c->N * c->C);
    ref_layernorm(out, c);
    double v = dot64(c->r, out, (size_t)c->N * c->C);
    free(out);
    return v;
}

/* C = 50: the vectorised row functions; C = 300: the plain loops for rows wider than 256. */
static void layernorm_case(int N, int C)
{
    float *in = frand(N * C, 2), *g = frand(C, 1), *b = frand(C, 1), *r = frand(N * C, 1);
    for (int k = 0; k < C; k++)
        in[3 * C + k] += 100.0f; /* a large mean: the centred formula must cope */
    ln_ctx c = {N, C, to64(in, N * C), to64(g, C), to64(b, C), to64(r, N * C)};
    double *ref = xmalloc(sizeof(double) * N * C), *mag = xmalloc(sizeof(double) * N * C);
    ref_layernorm(ref, &c);
    for (int i = 0; i < N * C; i++) /* terms of y: |xhat * g| and |b|; xhat is O(sqrt(C)) at most */
        mag[i] = fabs(ref[i]) + fabs(c.b[i % C]) + 2 * fabs(c.g[i % C]) * sqrt((double)C);
    float *out = xmalloc(sizeof(float) * N * C), *mu = xmalloc(sizeof(float) * N), *rs = xmalloc(sizeof(float) * N);
    double *fd = xmalloc(sizeof(double) * N * C);
    float *din[2], *dg[2], *db[2];
    for (int t = 0; t < 2; t++) {
        fp_k_set_threads(t + 1);
        fp_k_layernorm_fwd(out, mu, rs, in, g, b, N, C, 1e-8f);
        cmp_fwd("layernorm", out, ref, mag, N * C, C);
        din[t] = calloc(N * C, sizeof(float)), dg[t] = calloc(C, sizeof(float)), db[t] = calloc(C, sizeof(float));
        fp_k_layernorm_bwd(din[t], dg[t], db[t], r, in, g, mu, rs, N, C);
    }
    /* row-wise din and column sums in row order: independent of the thread count */
    assert_memory_equal(din[0], din[1], sizeof(float) * N * C);
    assert_memory_equal(dg[0], dg[1], sizeof(float) * C);
    assert_memory_equal(db[0], db[1], sizeof(float) * C);
    fd_grad(ln_obj, &c, c.in, N * C, 1, fd);
    cmp_grad("layernorm din", din[0], fd, N * C);
    fd_grad(ln_obj, &c, c.g, C, 1, fd);
    cmp_grad("layernorm dg", dg[0], fd, C);
    fd_grad(ln_obj, &c, c.b, C, 1, fd);
    cmp_grad("layernorm db", db[0], fd, C);
    for (int t = 0; t < 2; t++)
        free(din[t]), free(dg[t]), free(db[t]);
    free(in), free(g), free(b), free(r), free(out), free(mu), free(rs), free(fd), free(ref), free(mag);
    free(c.in), free(c.g), free(c.b), free(c.r);
}

static void test_layernorm(void **state)
{
    (void)state;
    layernorm_case(30, 50);
    layernorm_case(5, 300);
}

/* ------------------------------------------------------------------ attention */

typedef struct {
    int N, C, H, U;
    const int32_t *off;
    double *q, *k, *v, *r;
    const size_t *att_off; /* layout of mask */
    const float *mask;     /* dropout on the probabilities, packed as att; NULL = none */
} att_ctx;

/* Causal attention per user over the packed rows, float64; mag = sum |p_ij m_ij v_jd|. */
static void ref_attention(double *out, double *mag, const att_ctx *c)
{
    const int hs = c->C / c->H;
    for (int u = 0; u < c->U; u++) {
        const int o = c->off[u], L = c->off[u + 1] - o;
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < L; i++) {
                double s[128], mx = -INFINITY, z = 0;
                for (int j = 0; j <= i; j++) {
                    double d = 0;
                    for (int e = 0; e < hs; e++)
                        d += c->q[(o + i) * c->C + h * hs + e] * c->k[(o + j) * c->C + h * hs + e];
                    s[j] = d / sqrt((double)hs);
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j <= i; j++)
                    z += exp(s[j] - mx);
                const float *mk = c->mask ? c->mask + c->att_off[u] + (size_t)h * L * L + (size_t)i * L : NULL;
                for (int e = 0; e < hs; e++) {
                    double acc = 0, m = 0;
                    for (int j = 0; j <= i; j++) {
                        double t = exp(s[j] - mx) / z * (mk ? mk[j] : 1.0) * c->v[(o + j) * c->C + h * hs + e];
                        acc += t;
                        m += fabs(t);
                    }
                    out[(o + i) * c->C + h * hs + e] = acc;
                    if (mag)
                        mag[(o + i) * c->C + h * hs + e] = m;
                }
            }
    }
}

static double att_obj(void *p)
{
    att_ctx *c = p;
    double *out = xmalloc(sizeof(double) * c->N * c->C);
    ref_attention(out, NULL, c);
    double v = dot64(c->r, out, (size_t)c->N * c->C);
    free(out);
    return v;
}

/* Users of lengths 0, 1, 3 (hand loops) and 17, 50, 61 (the sgemm path, FP_ATT_GEMM_MIN = 4),
 * 2 heads of 4. With p > 0, dropout on the probabilities with one fixed mask (a seeded
 * fp_k_dropout_mask, as the model draws it), which the float64 reference applies too: forward
 * and gradients are held to the same bounds as without dropout (the mask adds at most one
 * rounding per weight, none at p = 0.5 where kept weights are doubled exactly: well inside the
 * forward bound's factor 8, and the backward is the same sums). The first thread count
 * writes attd to its own buffer, the second over the mask itself (the aliasing model.c uses). */
static void attention_case(float p)
{
    const int32_t lens[] = {3, 0, 1, 50, 17, 61};
    const int U = 6, C = 8, H = 2;
    int32_t off[7] = {0};
    for (int u = 0; u < U; u++)
        off[u + 1] = off[u] + lens[u];
    const int N = off[U];
    size_t att_off[7];
    size_t na = fp_k_attention_layout(off, U, H, att_off);
    assert_int_equal(na, (size_t)H * (9 + 0 + 1 + 2500 + 289 + 3721));
    float *q = frand(N * C, 1), *k = frand(N * C, 1), *v = frand(N * C, 1), *r = frand(N * C, 1);
    float *att = xmalloc(sizeof(float) * na), *datt = xmalloc(sizeof(float) * na),
          *scratch = xmalloc(sizeof(float) * N * C);
    float *mask = NULL, *attd = NULL, *work = NULL;
    if (p > 0) {
        mask = xmalloc(sizeof(float) * na), attd = xmalloc(sizeof(float) * na), work = xmalloc(sizeof(float) * na);
        fp_k_dropout_mask(mask, na, p, 4242);
        size_t zeros = 0;
        for (size_t i = 0; i < na; i++)
            zeros += mask[i] == 0.0f;
        assert_true(zeros > 0 && zeros < na);
    }
    att_ctx c = {N, C, H, U, off, to64(q, N * C), to64(k, N * C), to64(v, N * C), to64(r, N * C), att_off, mask};
    double *ref = xmalloc(sizeof(double) * N * C), *mag = xmalloc(sizeof(double) * N * C);
    ref_attention(ref, mag, &c);
    float *out[2], *dq[2], *dk[2], *dv[2];
    for (int t = 0; t < 2; t++) {
        fp_k_set_threads(t + 1);
        out[t] = xmalloc(sizeof(float) * N * C), dq[t] = xmalloc(sizeof(float) * N * C);
        dk[t] = xmalloc(sizeof(float) * N * C), dv[t] = xmalloc(sizeof(float) * N * C);
        float *ad = NULL;
        const float *mk = mask;
        if (mask && t == 0)
            ad = attd;
        else if (mask) {
            memcpy(work, mask, sizeof(float) * na);
            ad = work, mk = work; /* mask and attd in one buffer */
        }
        fp_k_attention_fwd(out[t], att, ad, mk, q, k, v, off, att_off, U, C, H, scratch);
        /* each output: a softmax over <= 61 scores of 4-term dot products, then 61 products */
        cmp_fwd("attention", out[t], ref, mag, N * C, 61 + 4);
        if (mask) /* attd = att * mask, exactly, on every stored element */
            for (size_t i = 0; i < na; i++)
                assert_true(ad[i] == att[i] * mask[i]);
        fp_k_attention_bwd(dq[t], dk[t], dv[t], datt, r, att, ad, q, k, v, off, att_off, U, C, H, scratch);
    }
    /* one thread per (user, head), fixed loops: independent of the thread count */
    assert_memory_equal(out[0], out[1], sizeof(float) * N * C);
    assert_memory_equal(dq[0], dq[1], sizeof(float) * N * C);
    assert_memory_equal(dk[0], dk[1], sizeof(float) * N * C);
    assert_memory_equal(dv[0], dv[1], sizeof(float) * N * C);
    /* probabilities (before dropout): rows sum to 1, the upper triangle is 0 */
    for (int u = 0; u < U; u++) {
        const int L = lens[u];
        for (int h = 0; h < H; h++)
            for (int i = 0; i < L; i++) {
                const float *a = att + att_off[u] + (size_t)h * L * L + (size_t)i * L;
                double s = 0;
                for (int j = 0; j < L; j++) {
                    if (j > i)
                        assert_true(a[j] == 0.0f);
                    s += a[j];
                }
                assert_true(fabs(s - 1) <= L * U_F32 * 4);
            }
    }
    double *fd = xmalloc(sizeof(double) * N * C);
    fd_grad(att_obj, &c, c.q, N * C, 3, fd);
    cmp_grad("attention dq", dq[0], fd, N * C);
    fd_grad(att_obj, &c, c.k, N * C, 3, fd);
    cmp_grad("attention dk", dk[0], fd, N * C);
    fd_grad(att_obj, &c, c.v, N * C, 3, fd);
    cmp_grad("attention dv", dv[0], fd, N * C);
    /* the first query of a user attends only to itself: out = v (times its mask element) */
    const float m00 = mask ? mask[att_off[2]] : 1.0f, m10 = mask ? mask[att_off[2] + 1] : 1.0f;
    for (int e = 0; e < C; e++) {
        assert_true(out[0][off[2] * C + e] == v[off[2] * C + e] * (e < C / H ? m00 : m10));
    }
    for (int t = 0; t < 2; t++)
        free(out[t]), free(dq[t]), free(dk[t]), free(dv[t]);
    free(q), free(k), free(v), free(r), free(att), free(datt), free(scratch), free(ref), free(mag), free(fd);
    free(c.q), free(c.k), free(c.v), free(c.r), free(mask), free(attd), free(work);
}

static void test_attention(void **state)
{
    (void)state;
    attention_case(0.0f);
}

/* Attention with dropout on the probabilities (rate 0.5, the Games config's), fixed mask. */
static void test_attention_dropout(void **state)
{
    (void)state;
    attention_case(0.5f);
}

/* ------------------------------------------------------------------ feed-forward: linear, relu, linear */

typedef struct {
    int N, C;
    double *x, *w1, *b1, *w2, *b2, *r, *m;
} ffn_ctx;

static double ffn_obj(void *p)
{
    ffn_ctx *c = p;
    const int N = c->N, C = c->C;
    double *hid = xmalloc(sizeof(double) * N * C), v = 0;
    for (int i = 0; i < N; i++)
        for (int o = 0; o < C; o++) {
            double s = c->b1[o];
            for (int k = 0; k < C; k++)
                s += c->x[i * C + k] * c->w1[k * C + o];
            hid[i * C + o] = (s > 0 ? s : 0) * c->m[i * C + o];
        }
    for (int i = 0; i < N; i++)
        for (int o = 0; o < C; o++) {
            double s = c->b2[o];
            for (int k = 0; k < C; k++)
                s += hid[i * C + k] * c->w2[k * C + o];
            v += c->r[i * C + o] * s;
        }
    free(hid);
    return v;
}

/* The FFN sub-layer as the model chains it, with a dropout mask after the ReLU. Units closer
 * than 1e-2 to the kink are masked, so that h = 1e-6 differences never cross one. */
static void test_ffn(void **state)
{
    (void)state;
    const int N = 25, C = 10;
    fp_k_set_threads(1);
    float *x = frand(N * C, 1), *w1 = frand(C * C, 0.4), *b1 = frand(C, 0.3), *w2 = frand(C * C, 0.4),
          *b2 = frand(C, 0.3), *r = frand(N * C, 1), *mask = xmalloc(sizeof(float) * N * C);
    fp_k_dropout_mask(mask, N * C, 0.25f, 77);
    float *fch = xmalloc(sizeof(float) * N * C), *fa = xmalloc(sizeof(float) * N * C);
    fp_k_linear_fwd(fch, x, w1, b1, N, C, C);
    for (int i = 0; i < N * C; i++)
        if (fabsf(fch[i]) < 1e-2f)
            mask[i] = 0.0f; /* a unit near its kink is dropped instead */
    fp_k_relu_fwd(fa, fch, mask, N * C);
    float *out = xmalloc(sizeof(float) * N * C), *dfa = xmalloc(sizeof(float) * N * C),
          *dx = xmalloc(sizeof(float) * N * C);
    fp_k_linear_fwd(out, fa, w2, b2, N, C, C);
    float *dw1 = calloc(C * C, sizeof(float)), *db1 = calloc(C, sizeof(float)), *dw2 = calloc(C * C, sizeof(float)),
          *db2 = calloc(C, sizeof(float));
    fp_k_linear_bwd(dfa, dw2, db2, r, fa, w2, N, C, C, 0);
    fp_k_relu_bwd(dfa, dfa, fch, mask, N * C); /* in place, as the model does */
    fp_k_linear_bwd(dx, dw1, db1, dfa, x, w1, N, C, C, 0);
    ffn_ctx c = {N, C, to64(x, N * C), to64(w1, C * C), to64(b1, C), to64(w2, C * C), to64(b2, C), to64(r, N * C),
                 to64(mask, N * C)};
    double *fd = xmalloc(sizeof(double) * N * C);
    fd_grad(ffn_obj, &c, c.x, N * C, 1, fd);
    cmp_grad("ffn dx", dx, fd, N * C);
    fd_grad(ffn_obj, &c, c.w1, C * C, 1, fd);
    cmp_grad("ffn dw1", dw1, fd, C * C);
    fd_grad(ffn_obj, &c, c.b1, C, 1, fd);
    cmp_grad("ffn db1", db1, fd, C);
    fd_grad(ffn_obj, &c, c.w2, C * C, 1, fd);
    cmp_grad("ffn dw2", dw2, fd, C * C);
    fd_grad(ffn_obj, &c, c.b2, C, 1, fd);
    cmp_grad("ffn db2", db2, fd, C);
    free(x), free(w1), free(b1), free(w2), free(b2), free(r), free(mask), free(fch), free(fa), free(out), free(dfa);
    free(dx), free(dw1), free(db1), free(dw2), free(db2), free(fd);
    free(c.x), free(c.w1), free(c.b1), free(c.w2), free(c.b2), free(c.r), free(c.m);
}

/* ------------------------------------------------------------------ dropout, elementwise */

static void test_dropout_and_elementwise(void **state)
{
    (void)state;
    const size_t n = 200003;
    float *m1 = xmalloc(n * sizeof *m1), *m2 = xmalloc(n * sizeof *m2);
    fp_k_set_threads(1);
    fp_k_dropout_mask(m1, n, 0.3f, 12345);
    fp_k_set_threads(2);
    fp_k_dropout_mask(m2, n, 0.3f, 12345);
    assert_memory_equal(m1, m2, n * sizeof *m1); /* a function of (seed, index) only */
    size_t zeros = 0;
    const float keep = 1.0f / 0.7f;
    for (size_t i = 0; i < n; i++) {
        assert_true(m1[i] == 0.0f || m1[i] == keep);
        zeros += m1[i] == 0.0f;
    }
    /* Binomial(n, 0.3): mean 60001, sd 205; 5 sd */
    assert_true(fabs((double)zeros - 0.3 * n) <= 5 * sqrt(n * 0.3 * 0.7));
    fp_k_dropout_mask(m2, n, 0.3f, 12346);
    assert_memory_not_equal(m1, m2, n * sizeof *m1);
    fp_k_dropout_mask(m2, n, 0.0f, 1);
    for (size_t i = 0; i < n; i++)
        assert_true(m2[i] == 1.0f);

    float a[6] = {-1, 0, 2, -3, 4, 0.5f}, b[6] = {1, 2, 3, 4, 5, 6}, mk[6] = {0, 2, 2, 0, 2, 2}, o[6];
    fp_k_add_mul(o, a, b, mk, 6);
    for (int i = 0; i < 6; i++)
        assert_true(o[i] == a[i] + b[i] * mk[i]);
    fp_k_add_mul(o, a, b, NULL, 6);
    for (int i = 0; i < 6; i++)
        assert_true(o[i] == a[i] + b[i]);
    fp_k_mul(o, b, mk, 6);
    for (int i = 0; i < 6; i++)
        assert_true(o[i] == b[i] * mk[i]);
    fp_k_relu_fwd(o, a, mk, 6);
    for (int i = 0; i < 6; i++)
        assert_true(o[i] == (a[i] > 0 ? a[i] * mk[i] : 0.0f));
    fp_k_relu_bwd(o, b, a, NULL, 6);
    for (int i = 0; i < 6; i++)
        assert_true(o[i] == (a[i] > 0 ? b[i] : 0.0f));
    free(m1), free(m2);
}

/* ------------------------------------------------------------------ embedding, gathers */

static void test_embedding(void **state)
{
    (void)state;
    const int V = 13, T = 7, C = 6, N = 40;
    int32_t ids[40], tpos[40];
    for (int i = 0; i < N; i++) {
        ids[i] = 1 + (int32_t)fp_rng_below(&g_rng, 5); /* many repeats: scatter collisions */
        tpos[i] = (int32_t)fp_rng_below(&g_rng, T);
    }
    float *wte = frand(V * C, 1), *wpe = frand(T * C, 1), *r = frand(N * C, 1), *out = xmalloc(sizeof(float) * N * C);
    const float sc = sqrtf((float)C);
    fp_k_set_threads(2);
    fp_k_embed_fwd(out, ids, tpos, wte, wpe, sc, N, C);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++)
            assert_true(out[i * C + c] == wte[ids[i] * C + c] * sc + wpe[tpos[i] * C + c]);
    float *dte[2], *dpe[2];
    for (int t = 0; t < 2; t++) {
        fp_k_set_threads(t + 1);
        dte[t] = calloc(V * C, sizeof(float)), dpe[t] = calloc(T * C, sizeof(float));
        fp_k_embed_bwd(dte[t], dpe[t], r, ids, tpos, sc, N, C);
    }
    assert_memory_equal(dte[0], dte[1], sizeof(float) * V * C);
    assert_memory_equal(dpe[0], dpe[1], sizeof(float) * T * C);
    /* The objective is linear in the tables: its exact gradient is the scatter-sum, computed
     * here in float64; the float32 one sums at most N terms in the same order. */
    for (int v = 0; v < V; v++)
        for (int c = 0; c < C; c++) {
            double s = 0, m = 0;
            for (int i = 0; i < N; i++)
                if (ids[i] == v) {
                    s += (double)sc * r[i * C + c];
                    m += fabs((double)sc * r[i * C + c]);
                }
            assert_true(fabs(dte[0][v * C + c] - s) <= 2 * N * U_F32 * m + 1e-30);
        }
    for (int p = 0; p < T; p++)
        for (int c = 0; c < C; c++) {
            double s = 0, m = 0;
            for (int i = 0; i < N; i++)
                if (tpos[i] == p) {
                    s += r[i * C + c];
                    m += fabs(r[i * C + c]);
                }
            assert_true(fabs(dpe[0][p * C + c] - s) <= 2 * N * U_F32 * m + 1e-30);
        }
    /* rows 0 and 6..12 were never used: untouched */
    for (int c = 0; c < C; c++)
        assert_true(dte[0][c] == 0.0f && dte[0][12 * C + c] == 0.0f);

    /* gather / scatter of rows with a fill row */
    int32_t rows[4] = {2, -1, 0, 5};
    float fill[6] = {9, 9, 9, 9, 9, 9}, g[24], dfill[6] = {0}, dsrc[13 * 6] = {0};
    fp_k_gather_rows(g, wte, rows, fill, 4, C);
    fp_k_scatter_rows_add(dsrc, dfill, r, rows, 4, C);
    for (int c = 0; c < C; c++) {
        assert_true(g[c] == wte[2 * C + c] && g[C + c] == 9.0f && g[3 * C + c] == wte[5 * C + c]);
        assert_true(dsrc[2 * C + c] == r[c] && dfill[c] == r[C + c] && dsrc[5 * C + c] == r[3 * C + c]);
    }
    fp_k_gather_rows(g, wte, rows, NULL, 4, C);
    for (int c = 0; c < C; c++)
        assert_true(g[C + c] == 0.0f);
    for (int t = 0; t < 2; t++)
        free(dte[t]), free(dpe[t]);
    free(wte), free(wpe), free(r), free(out);
}

/* ------------------------------------------------------------------ sampled losses */

typedef struct {
    int n, S, C, kind;
    const int32_t *items;
    double *h, *emb;
} loss_ctx;

static double ref_loss(void *p)
{
    loss_ctx *c = p;
    double total = 0;
    for (int i = 0; i < c->n; i++) {
        double z[16] = {0};
        assert_true(c->S <= 16);
        for (int j = 0; j < c->S; j++) {
            z[j] = 0;
            for (int k = 0; k < c->C; k++)
                z[j] += c->h[i * c->C + k] * c->emb[c->items[i * c->S + j] * c->C + k];
        }
        if (c->kind == FP_K_LOSS_BCE) {
            total += log(1 + exp(-z[0]));
            for (int j = 1; j < c->S; j++)
                total += log(1 + exp(z[j]));
        } else {
            double s = 0;
            for (int j = 0; j < c->S; j++)
                s += exp(z[j]);
            total += log(s) - z[0];
        }
    }
    return total * 0.25; /* the scale passed to the backward */
}

static void loss_case(int kind, int S)
{
    const int n = 12, C = 6, V = 9;
    int32_t items[12 * 16];
    for (int i = 0; i < n * S; i++)
        items[i] = (int32_t)fp_rng_below(&g_rng, V); /* repeats, row 0 included */
    float *h = frand(n * C, 1), *emb = frand(V * C, 1), *logits = xmalloc(sizeof(float) * n * S);
    loss_ctx c = {n, S, C, kind, items, to64(h, n * C), to64(emb, V * C)};
    float *dh[2], *demb[2];
    double val[2];
    for (int t = 0; t < 2; t++) {
        fp_k_set_threads(t + 1);
        val[t] = fp_k_sampled_loss_fwd(logits, h, items, emb, n, S, C, kind);
        dh[t] = xmalloc(sizeof(float) * n * C), demb[t] = calloc(V * C, sizeof(float));
        fp_k_sampled_loss_bwd(dh[t], demb[t], logits, h, items, emb, n, S, C, kind, 0.25f);
    }
    /* the loss: sums of C products in float, then float64: relative ~C * 2^-24 */
    assert_true(fabs(0.25 * val[0] - ref_loss(&c)) <= 1e-5 * fabs(ref_loss(&c)));
    assert_true(fabs(val[1] - val[0]) <= 1e-12 * fabs(val[0])); /* only the row-sum order can differ */
    assert_memory_equal(dh[0], dh[1], sizeof(float) * n * C);
    assert_memory_equal(demb[0], demb[1], sizeof(float) * V * C);
    double *fd = xmalloc(sizeof(double) * (n * C > V * C ? n * C : V * C));
    fd_grad(ref_loss, &c, c.h, n * C, 1, fd);
    cmp_grad("loss dh", dh[0], fd, n * C);
    fd_grad(ref_loss, &c, c.emb, V * C, 1, fd);
    cmp_grad("loss demb", demb[0], fd, V * C);
    /* extreme logits stay finite (stable log-sigmoid / log-sum-exp) */
    for (int i = 0; i < n * C; i++)
        h[i] *= 1000.0f;
    double big = fp_k_sampled_loss_fwd(logits, h, items, emb, n, S, C, kind);
    assert_true(isfinite(big) && big >= 0);
    fp_k_sampled_loss_bwd(dh[0], demb[0], logits, h, items, emb, n, S, C, kind, 0.25f);
    for (int i = 0; i < n * C; i++)
        assert_true(isfinite(dh[0][i]));
    for (int t = 0; t < 2; t++)
        free(dh[t]), free(demb[t]);
    free(h), free(emb), free(logits), free(fd), free(c.h), free(c.emb);
}

static void test_loss_bce(void **state)
{
    (void)state;
    loss_case(FP_K_LOSS_BCE, 2);
    loss_case(FP_K_LOSS_BCE, 4);
}

static void test_loss_softmax(void **state)
{
    (void)state;
    loss_case(FP_K_LOSS_SOFTMAX, 6);
}

/* ------------------------------------------------------------------ sums, Adam */

static void test_sumsq_and_adam(void **state)
{
    (void)state;
    const size_t n = 3 * 16384 * 65 + 5; /* more than one group of chunks, and a tail */
    float *x = frand(n, 1), *g1 = xmalloc(n * sizeof *g1), *g2 = xmalloc(n * sizeof *g2);
    long double ref = 0;
    for (size_t i = 0; i < n; i++)
        ref += (long double)x[i] * x[i];
    fp_k_set_threads(1);
    double s1 = fp_k_sumsq_scaled_copy(g1, x, n, 0.5f);
    fp_k_set_threads(2);
    double s2 = fp_k_sumsq_scaled_copy(g2, x, n, 0.5f);
    assert_true(s1 == s2 && s1 == fp_k_sumsq(x, n)); /* fixed chunks, fixed order */
    assert_true(fabsl(s1 - ref) <= 1e-12L * ref);   /* float squares are exact in double */
    for (size_t i = 0; i < n; i += 997)
        assert_true(g1[i] == 0.5f * x[i]);
    assert_memory_equal(g1, g2, n * sizeof *g1);

    /* Adam: elementwise, so identical for any thread count; one step against float64 */
    const size_t m = 100000;
    float *p1 = frand(m, 1), *p2 = xmalloc(m * sizeof *p2), *g = frand(m, 1);
    float *ma = calloc(m, sizeof *ma), *va = calloc(m, sizeof *va), *mb = calloc(m, sizeof *mb),
          *vb = calloc(m, sizeof *vb);
    memcpy(p2, p1, m * sizeof *p1);
    double *p64 = to64(p1, m);
    fp_k_set_threads(1);
    fp_k_adam(p1, g, ma, va, m, 1e-3f, 0.9f, 0.999f, 1e-8f, 1 - 0.9, 1 - 0.999);
    fp_k_set_threads(2);
    fp_k_adam(p2, g, mb, vb, m, 1e-3f, 0.9f, 0.999f, 1e-8f, 1 - 0.9, 1 - 0.999);
    assert_memory_equal(p1, p2, m * sizeof *p1);
    for (size_t i = 0; i < m; i++) {
        double mm = (1 - 0.9f) * (double)g[i], vv = (1 - 0.999f) * (double)g[i] * g[i];
        double upd = 1e-3f / (1 - 0.9) * mm / (sqrt(vv) / sqrt(1 - 0.999) + 1e-8f);
        assert_true(fabs(p1[i] - (p64[i] - upd)) <= 1e-5 * 1e-3 + 2 * U_F32 * fabs(p64[i]));
    }
    free(x), free(g1), free(g2), free(p1), free(p2), free(g), free(ma), free(va), free(mb), free(vb), free(p64);
}

static int setup(void **state)
{
    (void)state;
    fp_rng_seed(&g_rng, 2024);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sgemm),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_dropout),
        cmocka_unit_test(test_ffn),
        cmocka_unit_test(test_dropout_and_elementwise),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_loss_bce),
        cmocka_unit_test(test_loss_softmax),
        cmocka_unit_test(test_sumsq_and_adam),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
