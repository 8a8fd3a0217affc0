/* kernels_cpu: the reference back-end of kernels.h, on OpenBLAS and OpenMP.
 *
 * OpenBLAS always runs single-threaded (set in fp_k_set_threads); parallelism is ours: large
 * sgemms are split into one block per thread, row-wise kernels split rows, and reductions over
 * rows (bias, gamma, embedding gradients) give each thread a disjoint set of output columns or
 * rows and walk the input in order, so they need no atomics and do not depend on the thread
 * count. On this kind of machine (two cores) running two pools at once halves the speed.
 * How idle workers wait between the many short regions (libgomp's long spin, or sleeping at
 * once) is settled before main by common/threads_env (a short spin, GOMP_SPINCOUNT=1000).
 *
 * Vector width: the build targets baseline x86-64-v2 (SSE4), so the hot loops written by hand
 * (attention, LayerNorm rows, dropout masks, sums of squares, Adam) are compiled in AVX-512
 * (x86-64-v4) / AVX2 / default clones chosen at load time (FP_VEC). Clones differ only in
 * vector width: sums use a fixed pattern of 8 partial sums (never a reduction the compiler
 * may reorder), and ISO C mode keeps floating-point contraction off, so every clone computes
 * the same bits. Selects are written so that they vectorise under the default
 * -ftrapping-math (see keep_if_pos).
 *
 * Attention per (user, head): windows of 1-3 tokens use hand loops over the lower triangle;
 * longer ones two (forward) and five (backward) small sgemms over the full [L x L] square. Half
 * of that square is wasted, yet OpenBLAS's AVX2 kernels still win from L = 4 up: measured with
 * dim 50, one head, on the 2-core development machine (fwd+bwd per token: L=1 0.31 us by hand
 * vs 0.61 us by sgemm; L=4 0.34 vs 0.24; L=16 0.46 vs 0.26; L=32 0.65 vs 0.41; L=200: 3.0 vs
 * 2.3). FP_ATT_GEMM_MIN is that cross-over. */
#include "common/kernels.h"
#include "common/kernels_rows.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#ifdef FEDPROF_HAVE_CUDA
#include "common/kernels_cuda.h"
/* Offer the call to the CUDA back-end first (kernels_cuda.h): done there, or declined. */
#define ON_GPU(fn, ...)                                                                                              \
    do {                                                                                                             \
        const fp_kcuda_api_t *api_ = fp_kcuda();                                                                     \
        if (api_ && fp_k_device_current() == FP_K_DEVICE_CUDA && api_->fn(__VA_ARGS__))                              \
            return;                                                                                                  \
    } while (0)
/* The same for a kernel that returns a double: the module's entry writes it through its first
 * argument. */
#define ON_GPU_RET(fn, ...)                                                                                          \
    do {                                                                                                             \
        const fp_kcuda_api_t *api_ = fp_kcuda();                                                                     \
        double r_;                                                                                                   \
        if (api_ && fp_k_device_current() == FP_K_DEVICE_CUDA && api_->fn(&r_, __VA_ARGS__))                         \
            return r_;                                                                                               \
    } while (0)
#else
#define ON_GPU(fn, ...) \
    do {                \
    } while (0)
#define ON_GPU_RET(fn, ...) \
    do {                    \
    } while (0)
#endif

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FP_NO_CLONES)
#define FP_VEC __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define FP_VEC
#endif

/* Window length from which attention uses sgemm instead of hand loops. */
#ifndef FP_ATT_GEMM_MIN
#define FP_ATT_GEMM_MIN 4
#endif

/* Below this many elements an elementwise kernel stays on one thread (fork/join costs more). */
#define FP_PAR_MIN 16384

/* Per calling thread: two models driven from two threads each keep their own setting. */
static _Thread_local int fp_k_nthreads = 1;

void fp_k_set_threads(int n)
{
    if (n < 1)
        n = 1;
    if (n > 256)
        n = 256;
    fp_k_nthreads = n;
    openblas_set_num_threads(1);
#ifdef _OPENMP
    omp_set_num_threads(n); /* OpenMP regions outside the kernels (the DP noise) follow it too */
#endif
}

int fp_k_threads(void) { return fp_k_nthreads; }

/* ---------------------------------------------------------------- sgemm */

static void sgemm1(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                   int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
}

void fp_k_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                float beta, float *C, int ldc)
{
    ON_GPU(sgemm, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (M <= 0 || N <= 0)
        return;
    int nt = fp_k_nthreads;
    double work = (double)M * N * (K > 0 ? K : 1);
    if (nt <= 1 || work < 262144.0 || (M < 2 * 16 && N < 2 * 16)) {
        sgemm1(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int split_m = M >= N;
    int len = split_m ? M : N;
    if (nt > len / 16)
        nt = len / 16 > 0 ? len / 16 : 1;
    /* Large blocks are rounded to 16 rows/columns (whole micro-kernel tiles); small ones are
     * not, or the split of, e.g., a weight gradient's 50 rows would be 32 + 18. */
    int chunk = (len + nt - 1) / nt;
    if (chunk >= 256)
        chunk = (chunk + 15) / 16 * 16;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; t++) {
        int s = t * chunk;
        int e = s + chunk < len ? s + chunk : len;
        if (s >= e)
            continue;
        if (split_m) {
            const float *a = ta ? A + s : A + (size_t)s * lda;
            sgemm1(ta, tb, e - s, N, K, alpha, a, lda, B, ldb, beta, C + (size_t)s * ldc, ldc);
        } else {
            const float *b = tb ? B + (size_t)s * ldb : B + s;
            sgemm1(ta, tb, M, e - s, K, alpha, A, lda, b, ldb, beta, C + s, ldc);
        }
    }
}

/* ---------------------------------------------------------------- column-partitioned sums */

/* Column range [c0, c1) of C owned by thread t of nt. */
static void col_range(int t, int nt, int C, int *c0, int *c1)
{
    *c0 = (int)((long)C * t / nt);
    *c1 = (int)((long)C * (t + 1) / nt);
}

static int team_for(size_t work, int cap)
{
    int nt = fp_k_nthreads;
    if (work < FP_PAR_MIN)
        nt = 1;
    if (nt > cap)
        nt = cap;
    return nt < 1 ? 1 : nt;
}

#define FP_COL_TILE 128 /* columns a thread sums at once, in a local buffer */

/* Column sums of x[N x C] (and, when dgx is wanted, of x * xhat, xhat = (in - mean) * rstd
 * row-wise: the LayerNorm gamma gradient), added to acc[C] (and dgx[C]). Each thread owns a
 * range of columns and sums them over the rows in order, in a local buffer added to acc once
 * at the end: results do not depend on the thread count, and no cache line of acc is written
 * by two threads per row (which, measured, made two threads slower than one). */
static void colsums_add(float *acc, float *dgx, const float *x, const float *in, const float *mean,
                        const float *rstd, int N, int C)
{
    int nt = team_for((size_t)N * C, C);
#pragma omp parallel num_threads(nt)
    {
        int c0, c1;
        col_range(omp_get_thread_num(), omp_get_num_threads(), C, &c0, &c1);
        float s1[FP_COL_TILE], s2[FP_COL_TILE];
        for (int t0 = c0; t0 < c1; t0 += FP_COL_TILE) {
            const int w = c1 - t0 < FP_COL_TILE ? c1 - t0 : FP_COL_TILE;
            for (int c = 0; c < w; c++)
                s1[c] = s2[c] = 0.0f;
            for (int i = 0; i < N; i++) {
                const float *r = x + (size_t)i * C + t0;
                for (int c = 0; c < w; c++)
                    s1[c] += r[c];
                if (dgx) {
                    const float *xi = in + (size_t)i * C + t0;
                    const float mu = mean[i], rs = rstd[i];
                    for (int c = 0; c < w; c++)
                        s2[c] += r[c] * ((xi[c] - mu) * rs);
                }
            }
            for (int c = 0; c < w; c++) {
                acc[t0 + c] += s1[c];
                if (dgx)
                    dgx[t0 + c] += s2[c];
            }
        }
    }
}

static void colsum_add(float *acc, const float *x, int N, int C) { colsums_add(acc, NULL, x, NULL, NULL, NULL, N, C); }

/* ---------------------------------------------------------------- linear */

void fp_k_linear_fwd(float *out, const float *in, const float *w, const float *b, int N, int C, int OC)
{
    ON_GPU(linear_fwd, out, in, w, b, N, C, OC);
    if (N <= 0)
        return;
    if (b) { /* out starts as the bias; the sgemm then adds in W (beta = 1) */
        int nt = team_for((size_t)N * OC, N);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int i = 0; i < N; i++) {
            float *o = out + (size_t)i * OC;
            for (int c = 0; c < OC; c++)
                o[c] = b[c];
        }
    }
    fp_k_sgemm(0, 0, N, OC, C, 1.0f, in, C, w, OC, b ? 1.0f : 0.0f, out, OC);
}

void fp_k_linear_bwd(float *din, float *dw, float *db, const float *dout, const float *in, const float *w, int N,
                     int C, int OC, int din_accumulate)
{
    ON_GPU(linear_bwd, din, dw, db, dout, in, w, N, C, OC, din_accumulate);
    if (N <= 0)
        return;
    /* dw[C x OC] += in^T[C x N] dout[N x OC] */
    fp_k_sgemm(1, 0, C, OC, N, 1.0f, in, C, dout, OC, 1.0f, dw, OC);
    /* din[N x C] (+)= dout[N x OC] w^T[OC x C] */
    if (din)
        fp_k_sgemm(0, 1, N, C, OC, 1.0f, dout, OC, w, OC, din_accumulate ? 1.0f : 0.0f, din, C);
    if (db)
        colsum_add(db, dout, N, OC);
}

/* ---------------------------------------------------------------- layernorm */

/* Row sums in 8 float partial sums, combined in a fixed order: vectorisable without letting
 * the compiler reassociate, so every clone gives the same bits. */
static inline float sum8(const float *restrict x, int C)
{
    float acc[8] = {0};
    int c = 0;
    for (; c + 8 <= C; c += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += x[c + l];
    for (int l = 0; c < C; c++, l++)
        acc[l] += x[c];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

#define FP_LN_ROWS 64 /* rows per call of the vectorised row functions */

FP_VEC static void ln_fwd_rows(float *restrict out, float *restrict mean, float *restrict rstd,
                               const float *restrict in, const float *restrict g, const float *restrict b, int n,
                               int C, float eps, float *restrict tmp)
{
    for (int i = 0; i < n; i++) {
        const float *x = in + (size_t)i * C;
        float *y = out + (size_t)i * C;
        const float mu = sum8(x, C) / (float)C;
        for (int c = 0; c < C; c++) {
            const float d = x[c] - mu;
            tmp[c] = d * d;
        }
        const float rs = 1.0f / sqrtf(sum8(tmp, C) / (float)C + eps);
        for (int c = 0; c < C; c++)
            y[c] = (x[c] - mu) * rs * g[c] + b[c];
        mean[i] = mu;
        rstd[i] = rs;
    }
}

void fp_k_layernorm_fwd(float *out, float *mean, float *rstd, const float *in, const float *g, const float *b, int N,
                        int C, float eps)
{
    ON_GPU(layernorm_fwd, out, mean, rstd, in, g, b, N, C, eps);
    const int nblk = (N + FP_LN_ROWS - 1) / FP_LN_ROWS;
    int nt = team_for((size_t)N * C, nblk);
#pragma omp parallel num_threads(nt)
    {
        float tmp[256]; /* one row of squares; wider rows go through the heap-free loop below */
#pragma omp for schedule(static)
        for (int k = 0; k < nblk; k++) {
            int r0 = k * FP_LN_ROWS, n = N - r0 < FP_LN_ROWS ? N - r0 : FP_LN_ROWS;
            if (C <= 256) {
                ln_fwd_rows(out + (size_t)r0 * C, mean + r0, rstd + r0, in + (size_t)r0 * C, g, b, n, C, eps, tmp);
                continue;
            }
            for (int i = r0; i < r0 + n; i++) { /* wide rows: plain loops, sequential sums */
                const float *x = in + (size_t)i * C;
                float *y = out + (size_t)i * C;
                float s = 0.0f, v = 0.0f;
                for (int c = 0; c < C; c++)
                    s += x[c];
                const float mu = s / (float)C;
                for (int c = 0; c < C; c++)
                    v += (x[c] - mu) * (x[c] - mu);
                const float rs = 1.0f / sqrtf(v / (float)C + eps);
                for (int c = 0; c < C; c++)
                    y[c] = (x[c] - mu) * rs * g[c] + b[c];
                mean[i] = mu;
                rstd[i] = rs;
            }
        }
    }
}

/* din += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * g */
FP_VEC static void ln_bwd_rows(float *restrict din, const float *restrict dout, const float *restrict in,
                               const float *restrict g, const float *restrict mean, const float *restrict rstd, int n,
                               int C, float *restrict t1, float *restrict t2)
{
    for (int i = 0; i < n; i++) {
        const float *x = in + (size_t)i * C, *dy = dout + (size_t)i * C;
        float *dx = din + (size_t)i * C;
        const float mu = mean[i], rs = rstd[i];
        for (int c = 0; c < C; c++) {
            t1[c] = dy[c] * g[c];
            t2[c] = t1[c] * ((x[c] - mu) * rs);
        }
        const float m1 = sum8(t1, C) / (float)C, m2 = sum8(t2, C) / (float)C;
        for (int c = 0; c < C; c++)
            dx[c] += (t1[c] - m1 - ((x[c] - mu) * rs) * m2) * rs;
    }
}

void fp_k_layernorm_bwd(float *din, float *dg, float *db, const float *dout, const float *in, const float *g,
                        const float *mean, const float *rstd, int N, int C)
{
    ON_GPU(layernorm_bwd, din, dg, db, dout, in, g, mean, rstd, N, C);
    const int nblk = (N + FP_LN_ROWS - 1) / FP_LN_ROWS;
    int nt = team_for((size_t)N * C, nblk);
#pragma omp parallel num_threads(nt)
    {
        float t1[256], t2[256];
#pragma omp for schedule(static)
        for (int k = 0; k < nblk; k++) {
            int r0 = k * FP_LN_ROWS, n = N - r0 < FP_LN_ROWS ? N - r0 : FP_LN_ROWS;
            if (C <= 256) {
                ln_bwd_rows(din + (size_t)r0 * C, dout + (size_t)r0 * C, in + (size_t)r0 * C, g, mean + r0,
                            rstd + r0, n, C, t1, t2);
                continue;
            }
            for (int i = r0; i < r0 + n; i++) { /* wide rows: plain loops, sequential sums */
                const float *x = in + (size_t)i * C, *dy = dout + (size_t)i * C;
                float *dx = din + (size_t)i * C;
                const float mu = mean[i], rs = rstd[i];
                float m1 = 0.0f, m2 = 0.0f;
                for (int c = 0; c < C; c++) {
                    m1 += dy[c] * g[c];
                    m2 += dy[c] * g[c] * ((x[c] - mu) * rs);
                }
                m1 /= (float)C;
                m2 /= (float)C;
                for (int c = 0; c < C; c++)
                    dx[c] += (dy[c] * g[c] - m1 - ((x[c] - mu) * rs) * m2) * rs;
            }
        }
    }
    /* db = column sums of dout, dg = column sums of dout * xhat */
    colsums_add(db, dg, dout, in, mean, rstd, N, C);
}

void fp_k_layernorm_params_bwd(float *dg, float *db, const float *dout, const float *in, const float *mean,
                               const float *rstd, int N, int C)
{
    ON_GPU(layernorm_params_bwd, dg, db, dout, in, mean, rstd, N, C);
    colsums_add(db, dg, dout, in, mean, rstd, N, C);
}

/* ---------------------------------------------------------------- elementwise */

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

#define FP_DROP_CHUNK 4096

/* mask[i] for i in [i0, i0 + n): SplitMix64 output number i0 + i + 1 of stream `seed`. */
FP_VEC static void dropout_chunk(float *restrict mask, size_t i0, size_t n, uint32_t thr, float keep, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)(mix64(seed + (i0 + i + 1) * 0x9e3779b97f4a7c15ULL) >> 40);
        mask[i] = bits >= thr ? keep : 0.0f;
    }
}

void fp_k_dropout_mask(float *mask, size_t n, float p, uint64_t seed)
{
    ON_GPU(dropout_mask, mask, n, p, seed);
    /* Keep iff u >= p with u = (24 random bits) / 2^24, i.e. iff bits >= ceil(p * 2^24). */
    const uint32_t thr = (uint32_t)ceil((double)p * 16777216.0);
    const float keep = 1.0f / (1.0f - p);
    const size_t nchunks = (n + FP_DROP_CHUNK - 1) / FP_DROP_CHUNK;
    int nt = team_for(n, (int)(nchunks < 256 ? nchunks : 256));
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        size_t s = c * FP_DROP_CHUNK, e = s + FP_DROP_CHUNK < n ? s + FP_DROP_CHUNK : n;
        dropout_chunk(mask + s, s, e - s, thr, keep, seed);
    }
}

void fp_k_zero(float *x, size_t n)
{
    ON_GPU(zero, x, n);
    memset(x, 0, n * sizeof *x);
}

void fp_k_copy(float *dst, const float *src, size_t n)
{
    ON_GPU(copy, dst, src, n);
    memcpy(dst, src, n * sizeof *dst);
}

void fp_k_add_mul(float *out, const float *x, const float *y, const float *mask, size_t n)
{
    ON_GPU(add_mul, out, x, y, mask, n);
    int nt = team_for(n, 1 << 30);
    if (mask) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t i = 0; i < n; i++)
            out[i] = x[i] + y[i] * mask[i];
    } else {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t i = 0; i < n; i++)
            out[i] = x[i] + y[i];
    }
}

void fp_k_mul(float *out, const float *a, const float *mask, size_t n)
{
    ON_GPU(mul, out, a, mask, n);
    int nt = team_for(n, 1 << 30);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] * mask[i];
}

/* ReLU as bit operations: x > 0 (as a float) iff its bits, read as an int32, are > 0 (for NaN
 * too: +NaN passes, -NaN is dropped). Written this way because GCC, under the default
 * -ftrapping-math, will not turn a float compare-and-select into vector code (and a branch on
 * random signs mispredicts half the time); the integer form vectorises. The result is exactly
 * y where x > 0 and +0 elsewhere. */
static inline int32_t fbits(float x)
{
    int32_t b;
    memcpy(&b, &x, sizeof b);
    return b;
}

static inline float bitsf(int32_t b)
{
    float x;
    memcpy(&x, &b, sizeof x);
    return x;
}

static inline float keep_if_pos(float y, float x) { return bitsf(fbits(y) & -(int32_t)(fbits(x) > 0)); }

void fp_k_relu_fwd(float *out, const float *in, const float *mask, size_t n)
{
    ON_GPU(relu_fwd, out, in, mask, n);
    int nt = team_for(n, 1 << 30);
    if (mask) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t i = 0; i < n; i++)
            out[i] = keep_if_pos(in[i] * mask[i], in[i]);
    } else {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t i = 0; i < n; i++)
            out[i] = keep_if_pos(in[i], in[i]);
    }
}

void fp_k_relu_bwd(float *din, const float *dout, const float *in, const float *mask, size_t n)
{
    ON_GPU(relu_bwd, din, dout, in, mask, n);
    int nt = team_for(n, 1 << 30);
    if (mask) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t i = 0; i < n; i++)
            din[i] = keep_if_pos(dout[i] * mask[i], in[i]);
    } else {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t i = 0; i < n; i++)
            din[i] = keep_if_pos(dout[i], in[i]);
    }
}

/* ---------------------------------------------------------------- embeddings, gathers */

void fp_k_embed_fwd(float *out, const int32_t *ids, const int32_t *tpos, const float *wte, const float *wpe,
                    float scale, int N, int C)
{
    ON_GPU(embed_fwd, out, ids, tpos, wte, wpe, scale, N, C);
    int nt = team_for((size_t)N * C, N);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < N; i++) {
        const float *e = wte + (size_t)ids[i] * C, *p = wpe + (size_t)tpos[i] * C;
        float *o = out + (size_t)i * C;
        for (int c = 0; c < C; c++)
            o[c] = e[c] * scale + p[c];
    }
}

void fp_k_embed_bwd(float *dwte, float *dwpe, const float *dout, const int32_t *ids, const int32_t *tpos, float scale,
                    int N, int C)
{
    ON_GPU(embed_bwd, dwte, dwpe, dout, ids, tpos, scale, N, C);
    int nt = team_for((size_t)N * C, 1 << 30);
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        for (int i = 0; i < N; i++) {
            const float *d = dout + (size_t)i * C;
            if (ids[i] % n == t) {
                float *e = dwte + (size_t)ids[i] * C;
                for (int c = 0; c < C; c++)
                    e[c] += scale * d[c];
            }
            if (dwpe && tpos[i] % n == t) {
                float *p = dwpe + (size_t)tpos[i] * C;
                for (int c = 0; c < C; c++)
                    p[c] += d[c];
            }
        }
    }
}

void fp_k_gather_rows(float *out, const float *src, const int32_t *rows, const float *fill, int n, int C)
{
    ON_GPU(gather_rows, out, src, rows, fill, n, C);
    int nt = team_for((size_t)n * C, n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < n; i++) {
        float *o = out + (size_t)i * C;
        if (rows[i] >= 0)
            memcpy(o, src + (size_t)rows[i] * C, (size_t)C * sizeof *o);
        else if (fill)
            memcpy(o, fill, (size_t)C * sizeof *o);
        else
            memset(o, 0, (size_t)C * sizeof *o);
    }
}

void fp_k_scatter_rows_add(float *dsrc, float *dfill, const float *dout, const int32_t *rows, int n, int C)
{
    ON_GPU(scatter_rows_add, dsrc, dfill, dout, rows, n, C);
    int nt = team_for((size_t)n * C, n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < n; i++) {
        if (rows[i] < 0)
            continue;
        float *s = dsrc + (size_t)rows[i] * C;
        const float *d = dout + (size_t)i * C;
        for (int c = 0; c < C; c++)
            s[c] += d[c];
    }
    if (dfill) /* rows < 0 share one vector: summed in row order */
        for (int i = 0; i < n; i++)
            if (rows[i] < 0)
                for (int c = 0; c < C; c++)
                    dfill[c] += dout[(size_t)i * C + c];
}

/* ---------------------------------------------------------------- attention */

size_t fp_k_attention_layout(const int32_t *off, int U, int H, size_t *att_off)
{
    size_t tot = 0;
    for (int u = 0; u < U; u++) {
        att_off[u] = tot;
        size_t L = (size_t)(off[u + 1] - off[u]);
        tot += (size_t)H * L * L;
    }
    att_off[U] = tot;
    return tot;
}

/* Causal softmax of row a[0..i] in place; a[i+1..L-1] = 0. */
static void softmax_causal_row(float *a, int i, int L)
{
    float mx = a[0];
    for (int j = 1; j <= i; j++)
        mx = a[j] > mx ? a[j] : mx;
    float s = 0.0f;
    for (int j = 0; j <= i; j++) {
        a[j] = expf(a[j] - mx);
        s += a[j];
    }
    float inv = 1.0f / s;
    for (int j = 0; j <= i; j++)
        a[j] *= inv;
    for (int j = i + 1; j < L; j++)
        a[j] = 0.0f;
}

/* One (user, head), hand loops over the lower triangle. Q, K, V, O point at the user's first
 * row and the head's first column (row stride C); A is [L x L]; KT is [hs x L] scratch. With a
 * dropout mask M [L x L], Ad [L x L] = A * M (Ad may alias M, hence no restrict) weighs V. */
FP_VEC static void att_fwd_loops(float *restrict O, float *restrict A, float *Ad, const float *M,
                                 const float *restrict Q, const float *restrict K, const float *restrict V,
                                 float *restrict KT, int L, int hs, int C, float scale)
{
    for (int j = 0; j < L; j++)
        for (int d = 0; d < hs; d++)
            KT[(size_t)d * L + j] = K[(size_t)j * C + d];
    for (int i = 0; i < L; i++) {
        float *a = A + (size_t)i * L;
        const float *q = Q + (size_t)i * C;
        for (int j = 0; j <= i; j++)
            a[j] = 0.0f;
        /* a[j] = sum_d (q_d * scale) * k_jd, accumulated over d in order (vector over j) */
        for (int d = 0; d < hs; d++) {
            const float qd = q[d] * scale;
            const float *kt = KT + (size_t)d * L;
            for (int j = 0; j <= i; j++)
                a[j] += qd * kt[j];
        }
        softmax_causal_row(a, i, L);
        const float *w = a; /* the weights of V */
        if (M) {
            float *ad = Ad + (size_t)i * L;
            const float *mk = M + (size_t)i * L;
            for (int j = 0; j < L; j++)
                ad[j] = a[j] * mk[j];
            w = ad;
        }
        float *o = O + (size_t)i * C;
        for (int d = 0; d < hs; d++)
            o[d] = 0.0f;
        for (int j = 0; j <= i; j++) {
            const float p = w[j];
            const float *v = V + (size_t)j * C;
            for (int d = 0; d < hs; d++)
                o[d] += p * v[d];
        }
    }
}

/* Ad[n] = A * M (Ad may alias M). */
FP_VEC static void att_mul_mask(float *Ad, const float *restrict A, const float *M, size_t n)
{
    for (size_t i = 0; i < n; i++)
        Ad[i] = A[i] * M[i];
}

static void att_fwd_gemm(float *O, float *A, float *Ad, const float *M, const float *Q, const float *K,
                         const float *V, int L, int hs, int C, float scale)
{
    /* A[L x L] = scale * Q K^T; causal softmax; with a mask Ad = A * M (the upper triangle stays
     * 0); O[L x hs] = Ad V (or A V) */
    sgemm1(0, 1, L, L, hs, scale, Q, C, K, C, 0.0f, A, L);
    for (int i = 0; i < L; i++)
        softmax_causal_row(A + (size_t)i * L, i, L);
    const float *W = A;
    if (M) {
        att_mul_mask(Ad, A, M, (size_t)L * L);
        W = Ad;
    }
    sgemm1(0, 0, L, hs, L, 1.0f, W, L, V, C, 0.0f, O, C);
}

/* Work items (user, head) in a parallel loop: dynamic, since windows differ in length. */
void fp_k_attention_fwd(float *out, float *att, float *attd, const float *mask, const float *q, const float *k,
                        const float *v, const int32_t *off, const size_t *att_off, int U, int C, int H,
                        float *scratch)
{
    ON_GPU(attention_fwd, out, att, attd, mask, q, k, v, off, att_off, U, C, H);
    const int hs = C / H;
    const float scale = 1.0f / sqrtf((float)hs);
    const int W = U * H;
    int nt = fp_k_nthreads < W ? fp_k_nthreads : (W > 0 ? W : 1);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int w = 0; w < W; w++) {
        int u = w / H, h = w % H;
        int L = off[u + 1] - off[u];
        if (L == 0)
            continue;
        size_t r0 = (size_t)off[u] * C + (size_t)h * hs;
        size_t a0 = att_off[u] + (size_t)h * L * L;
        float *A = att + a0, *Ad = mask ? attd + a0 : NULL;
        const float *M = mask ? mask + a0 : NULL;
        if (L >= FP_ATT_GEMM_MIN)
            att_fwd_gemm(out + r0, A, Ad, M, q + r0, k + r0, v + r0, L, hs, C, scale);
        else
            att_fwd_loops(out + r0, A, Ad, M, q + r0, k + r0, v + r0,
                          scratch + (size_t)off[u] * C + (size_t)h * hs * L, L, hs, C, scale);
    }
}

/* Softmax backward on the lower triangle of row i, in place on ds (upper set to 0). Without
 * dropout (ad == a) ds holds dP and dS = A * (dP - rowsum(A * dP)). With it ds holds dPd, the
 * gradient of Ad = A * M, so dP = M * dPd and A * dP = Ad * dPd: dS = Ad * dPd - A * rowsum(Ad *
 * dPd), which needs no mask. */
static void softmax_bwd_row(float *ds, const float *a, const float *ad, int i, int L)
{
    float dot = 0.0f;
    for (int j = 0; j <= i; j++)
        dot += ad[j] * ds[j];
    if (ad == a)
        for (int j = 0; j <= i; j++)
            ds[j] = a[j] * (ds[j] - dot);
    else
        for (int j = 0; j <= i; j++)
            ds[j] = ad[j] * ds[j] - a[j] * dot;
    for (int j = i + 1; j < L; j++)
        ds[j] = 0.0f;
}

/* Ad: A * mask as the forward saved it, or A itself without dropout. */
FP_VEC static void att_bwd_loops(float *restrict dQ, float *restrict dK, float *restrict dV, float *restrict dA,
                                 const float *restrict dO, const float *restrict A, const float *Ad,
                                 const float *restrict Q, const float *restrict K, const float *restrict V,
                                 float *restrict VT, int L, int hs, int C, float scale)
{
    for (int j = 0; j < L; j++) {
        for (int d = 0; d < hs; d++) {
            VT[(size_t)d * L + j] = V[(size_t)j * C + d];
            dK[(size_t)j * C + d] = 0.0f;
            dV[(size_t)j * C + d] = 0.0f;
        }
    }
    for (int i = 0; i < L; i++) {
        const float *a = A + (size_t)i * L, *ad = Ad + (size_t)i * L;
        float *ds = dA + (size_t)i * L;
        const float *go = dO + (size_t)i * C;
        /* dP[j] (or dPd[j]) = <dO_i, V_j> */
        for (int j = 0; j <= i; j++)
            ds[j] = 0.0f;
        for (int d = 0; d < hs; d++) {
            const float g = go[d];
            const float *vt = VT + (size_t)d * L;
            for (int j = 0; j <= i; j++)
                ds[j] += g * vt[j];
        }
        softmax_bwd_row(ds, a, ad, i, L);
        /* dQ_i = scale sum_j dS_ij K_j; dK_j += scale dS_ij Q_i; dV_j += Ad_ij dO_i */
        float *gq = dQ + (size_t)i * C;
        const float *qi = Q + (size_t)i * C;
        for (int d = 0; d < hs; d++)
            gq[d] = 0.0f;
        for (int j = 0; j <= i; j++) {
            const float s = ds[j] * scale, p = ad[j];
            const float *kj = K + (size_t)j * C;
            float *gk = dK + (size_t)j * C, *gv = dV + (size_t)j * C;
            for (int d = 0; d < hs; d++) {
                gq[d] += s * kj[d];
                gk[d] += s * qi[d];
                gv[d] += p * go[d];
            }
        }
    }
}

static void att_bwd_gemm(float *dQ, float *dK, float *dV, float *dA, const float *dO, const float *A, const float *Ad,
                         const float *Q, const float *K, const float *V, int L, int hs, int C, float scale)
{
    sgemm1(0, 1, L, L, hs, 1.0f, dO, C, V, C, 0.0f, dA, L); /* dP (dPd) = dO V^T */
    for (int i = 0; i < L; i++)
        softmax_bwd_row(dA + (size_t)i * L, A + (size_t)i * L, Ad + (size_t)i * L, i, L);
    sgemm1(0, 0, L, hs, L, scale, dA, L, K, C, 0.0f, dQ, C); /* dQ = scale dS K */
    sgemm1(1, 0, L, hs, L, scale, dA, L, Q, C, 0.0f, dK, C); /* dK = scale dS^T Q */
    sgemm1(1, 0, L, hs, L, 1.0f, Ad, L, dO, C, 0.0f, dV, C); /* dV = Ad^T dO */
}

void fp_k_attention_bwd(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *att,
                        const float *attd, const float *q, const float *k, const float *v, const int32_t *off,
                        const size_t *att_off, int U, int C, int H, float *scratch)
{
    ON_GPU(attention_bwd, dq, dk, dv, datt, dout, att, attd, q, k, v, off, att_off, U, C, H);
    if (!attd)
        attd = att; /* no dropout: the probabilities weighed V themselves */
    const int hs = C / H;
    const float scale = 1.0f / sqrtf((float)hs);
    const int W = U * H;
    int nt = fp_k_nthreads < W ? fp_k_nthreads : (W > 0 ? W : 1);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int w = 0; w < W; w++) {
        int u = w / H, h = w % H;
        int L = off[u + 1] - off[u];
        if (L == 0)
            continue;
        size_t r0 = (size_t)off[u] * C + (size_t)h * hs;
        size_t a0 = att_off[u] + (size_t)h * L * L;
        if (L >= FP_ATT_GEMM_MIN)
            att_bwd_gemm(dq + r0, dk + r0, dv + r0, datt + a0, dout + r0, att + a0, attd + a0, q + r0, k + r0, v + r0,
                         L, hs, C, scale);
        else
            att_bwd_loops(dq + r0, dk + r0, dv + r0, datt + a0, dout + r0, att + a0, attd + a0, q + r0, k + r0,
                          v + r0, scratch + (size_t)off[u] * C + (size_t)h * hs * L, L, hs, C, scale);
    }
}

/* ---------------------------------------------------------------- sampled losses */

static inline float dotf(const float *a, const float *b, int C)
{
    float s = 0.0f;
    for (int c = 0; c < C; c++)
        s += a[c] * b[c];
    return s;
}

double fp_k_sampled_loss_fwd(float *logits, const float *h, const int32_t *items, const float *emb, int n, int S,
                             int C, int kind)
{
    ON_GPU_RET(sampled_loss_fwd, logits, h, items, emb, n, S, C, kind);
    double total = 0.0;
    int nt = team_for((size_t)n * S * C / 4, n);
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : total)
    for (int i = 0; i < n; i++) {
        const float *hi = h + (size_t)i * C;
        float *z = logits + (size_t)i * S;
        const int32_t *it = items + (size_t)i * S;
        for (int j = 0; j < S; j++)
            z[j] = dotf(hi, emb + (size_t)it[j] * C, C);
        total += fp_row_loss(z, S, kind);
    }
    return total;
}

void fp_k_sampled_loss_bwd(float *dh, float *demb, float *logits, const float *h, const int32_t *items,
                           const float *emb, int n, int S, int C, int kind, float scale)
{
    /* the same operations in the same order as the two halves (kernels.h), so one copy of each */
    fp_k_sampled_loss_dlogits(logits, n, S, kind, scale);
    fp_k_sampled_scores_bwd(dh, demb, logits, h, items, emb, n, S, C);
}

void fp_k_gather_dot(float *out, const float *x, const int32_t *items, const float *emb, int n, int C)
{
    int nt = team_for((size_t)n * C, n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < n; i++)
        out[i] = dotf(x, emb + (size_t)items[i] * C, C);
}

/* ---------------------------------------------------------------- L2, Adam */

#define FP_SUM_CHUNK 16384
#define FP_SUM_GROUP 64

/* Sum of squares of one chunk in 8 double partial sums (a fixed pattern, so every vector clone
 * adds in the same order); g[i] = coef * x[i] too when g is not NULL. */
FP_VEC static double sumsq_chunk(float *restrict g, const float *restrict x, size_t n, float coef)
{
    double acc[8] = {0};
    size_t n8 = n / 8 * 8;
    for (size_t i = 0; i < n8; i += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += (double)x[i + l] * (double)x[i + l];
    for (size_t i = n8; i < n; i++)
        acc[i - n8] += (double)x[i] * (double)x[i];
    if (g)
        for (size_t i = 0; i < n; i++)
            g[i] = coef * x[i];
    double s = 0.0;
    for (int l = 0; l < 8; l++)
        s += acc[l];
    return s;
}

static double sumsq_impl(float *g, const float *x, size_t n, float coef)
{
    double total = 0.0;
    size_t nchunks = (n + FP_SUM_CHUNK - 1) / FP_SUM_CHUNK;
    for (size_t g0 = 0; g0 < nchunks; g0 += FP_SUM_GROUP) {
        double part[FP_SUM_GROUP];
        int ng = (int)(nchunks - g0 < FP_SUM_GROUP ? nchunks - g0 : FP_SUM_GROUP);
        int nt = team_for((size_t)ng * FP_SUM_CHUNK, ng);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int c = 0; c < ng; c++) {
            size_t s = (g0 + (size_t)c) * FP_SUM_CHUNK;
            size_t e = s + FP_SUM_CHUNK < n ? s + FP_SUM_CHUNK : n;
            part[c] = sumsq_chunk(g ? g + s : NULL, x + s, e - s, coef);
        }
        for (int c = 0; c < ng; c++)
            total += part[c];
    }
    return total;
}

double fp_k_sumsq_scaled_copy(float *g, const float *x, size_t n, float coef)
{
    ON_GPU_RET(sumsq, g, x, n, coef);
    return sumsq_impl(g, x, n, coef);
}

double fp_k_sumsq(const float *x, size_t n)
{
    ON_GPU_RET(sumsq, NULL, x, n, 0.0f);
    return sumsq_impl(NULL, x, n, 0.0f);
}

FP_VEC static void adam_chunk(float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                              size_t n, float b1, float b2, float step, float bc2_sqrt, float eps)
{
    const float w1 = 1.0f - b1, w2 = 1.0f - b2;
    for (size_t i = 0; i < n; i++) {
        const float gi = g[i];
        const float mi = m[i] + w1 * (gi - m[i]); /* torch: exp_avg.lerp_(grad, 1 - beta1) */
        const float vi = v[i] * b2 + w2 * gi * gi; /* exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2) */
        m[i] = mi;
        v[i] = vi;
        p[i] -= step * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

void fp_k_adam(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2, float eps,
               double bc1, double bc2)
{
    ON_GPU(adam, p, g, m, v, n, lr, b1, b2, eps, bc1, bc2);
    const float step = (float)(lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    size_t nchunks = (n + FP_SUM_CHUNK - 1) / FP_SUM_CHUNK;
    int nt = team_for(n, (int)(nchunks < 256 ? nchunks : 256));
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        size_t s = c * FP_SUM_CHUNK;
        size_t e = s + FP_SUM_CHUNK < n ? s + FP_SUM_CHUNK : n;
        adam_chunk(p + s, g + s, m + s, v + s, e - s, b1, b2, step, bc2_sqrt, eps);
    }
}

/* ---------------------------------------------------------------- DP-SGD: per-user norms */

void fp_k_sampled_loss_dlogits(float *logits, int n, int S, int kind, float scale)
{
    ON_GPU(sampled_loss_dlogits, logits, n, S, kind, scale);
    int nt = team_for((size_t)n * S * 8, n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < n; i++)
        fp_row_dlogits(logits + (size_t)i * S, S, kind, scale);
}

void fp_k_sampled_scores_bwd(float *dh, float *demb, const float *dz, const float *h, const int32_t *items,
                             const float *emb, int n, int S, int C)
{
    ON_GPU(sampled_scores_bwd, dh, demb, dz, h, items, emb, n, S, C);
    int nt = team_for((size_t)n * S * C / 4, n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < n; i++) {
        const float *z = dz + (size_t)i * S;
        const int32_t *it = items + (size_t)i * S;
        float *g = dh + (size_t)i * C;
        for (int c = 0; c < C; c++)
            g[c] = 0.0f;
        for (int j = 0; j < S; j++) {
            const float d = z[j];
            const float *e = emb + (size_t)it[j] * C;
            for (int c = 0; c < C; c++)
                g[c] += d * e[c];
        }
    }
    if (!demb)
        return;
    /* demb rows: item id modulo the team size picks the one thread that owns a row. */
    nt = team_for((size_t)n * S * C, 1 << 30);
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), nth = omp_get_num_threads();
        for (int i = 0; i < n; i++) {
            const float *hi = h + (size_t)i * C;
            const float *z = dz + (size_t)i * S;
            const int32_t *it = items + (size_t)i * S;
            for (int j = 0; j < S; j++) {
                if (it[j] % nth != t)
                    continue;
                float *e = demb + (size_t)it[j] * C;
                const float d = z[j];
                for (int c = 0; c < C; c++)
                    e[c] += d * hi[c];
            }
        }
    }
}

void fp_k_scale_rows(float *x, const float *s, int n, int C)
{
    ON_GPU(scale_rows, x, s, n, C);
    int nt = team_for((size_t)n * C, n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < n; i++) {
        float *r = x + (size_t)i * C;
        const float f = s[i];
        for (int c = 0; c < C; c++)
            r[c] *= f;
    }
}

/* Sum of squares of n floats in double, 8 partial sums in a fixed pattern. */
FP_VEC static double sumsq_d(const float *restrict x, size_t n)
{
    double acc[8] = {0};
    size_t n8 = n / 8 * 8;
    for (size_t i = 0; i < n8; i += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += (double)x[i + l] * (double)x[i + l];
    for (size_t i = n8; i < n; i++)
        acc[i - n8] += (double)x[i] * (double)x[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Threads for a loop over U users of ~work multiply-adds in all. */
static int user_team(int U, double work)
{
    int nt = fp_k_nthreads;
    if (work < FP_PAR_MIN)
        nt = 1;
    if (nt > U)
        nt = U;
    return nt < 1 ? 1 : nt;
}

void fp_k_user_sqnorms(double *acc, const float *x, const int32_t *off, int U, int C)
{
    ON_GPU(user_sqnorms, acc, x, off, U, C);
    int nt = user_team(U, (double)(off[U] - off[0]) * C);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int u = 0; u < U; u++)
        acc[u] += sumsq_d(x + (size_t)off[u] * C, (size_t)(off[u + 1] - off[u]) * C);
}

void fp_k_user_colsums(float *sum, float *sumx, const float *x, const float *in, const float *mean,
                       const float *rstd, const int32_t *off, int U, int C)
{
    ON_GPU(user_colsums, sum, sumx, x, in, mean, rstd, off, U, C);
    int nt = user_team(U, (double)(off[U] - off[0]) * C * (sumx ? 2 : 1));
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int u = 0; u < U; u++) {
        float *s = sum + (size_t)u * C, *sx = sumx ? sumx + (size_t)u * C : NULL;
        for (int c = 0; c < C; c++)
            s[c] = 0.0f;
        if (sx)
            for (int c = 0; c < C; c++)
                sx[c] = 0.0f;
        for (int i = off[u]; i < off[u + 1]; i++) {
            const float *r = x + (size_t)i * C;
            for (int c = 0; c < C; c++)
                s[c] += r[c];
            if (sx) {
                const float *xi = in + (size_t)i * C;
                const float mu = mean[i], rs = rstd[i];
                for (int c = 0; c < C; c++)
                    sx[c] += r[c] * ((xi[c] - mu) * rs);
            }
        }
    }
}

/* <a, b> of n floats in 8 float partial sums, combined in a fixed order (as sum8). */
static inline float dot8(const float *restrict a, const float *restrict b, int n)
{
    float acc[8] = {0};
    int c = 0;
    for (; c + 8 <= n; c += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += a[c + l] * b[c + l];
    for (int l = 0; c < n; c++, l++)
        acc[l] += a[c] * b[c];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Lower triangle (with the diagonal) of the Gram matrix of L rows of X (row stride ld, width n):
 * A[t * (t + 1) / 2 + t'] = <x_t, x_t'> for t' <= t. By hand: at the lengths where the ghost norm
 * is chosen (L < C), a library sgemm call costs more in overhead than the arithmetic. */
FP_VEC static void gram_lower(float *restrict A, const float *restrict X, int L, int n, int ld)
{
    for (int t = 0, k = 0; t < L; t++)
        for (int u = 0; u <= t; u++)
            A[k++] = dot8(X + (size_t)t * ld, X + (size_t)u * ld, n);
}

/* sum_{t,t'} A_tt' B_tt' from two lower triangles (off-diagonal terms twice), in double. */
static double gram_dot(const float *A, const float *B, int L)
{
    double s = 0.0;
    for (int t = 0, k = 0; t < L; t++) {
        for (int u = 0; u < t; u++, k++)
            s += 2.0 * (double)A[k] * (double)B[k];
        s += (double)A[k] * (double)B[k];
        k++;
    }
    return s;
}

size_t fp_k_linear_user_sqnorms_scratch(int max_len, int C, int OC)
{
    /* The ghost norm is chosen only when L (C + n OC) < n C OC, which implies L < C: its two
     * [L x L] Gram matrices never need more than 2 C^2 floats, whatever maxlen is. */
    size_t L = (size_t)(max_len < C ? max_len : C);
    size_t ghost = 2 * L * L, mat = (size_t)C * (size_t)OC;
    return (ghost > mat ? ghost : mat) + (size_t)OC; /* + the bias's column sums */
}

void fp_k_linear_user_sqnorms(double *acc, const float *in, const float *const *dout, int n_out, const int32_t *off,
                              int U, int C, int OC, int with_bias, float *scratch)
{
    ON_GPU(linear_user_sqnorms, acc, in, dout, n_out, off, U, C, OC, with_bias);
    int max_len = 0;
    for (int u = 0; u < U; u++)
        max_len = off[u + 1] - off[u] > max_len ? off[u + 1] - off[u] : max_len;
    const size_t stride = fp_k_linear_user_sqnorms_scratch(max_len, C, OC);
    int nt = user_team(U, (double)(off[U] - off[0]) * C * OC * n_out);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int u = 0; u < U; u++) {
        const int L = off[u + 1] - off[u];
        if (L == 0)
            continue;
        float *sc = scratch + (size_t)omp_get_thread_num() * stride;
        const float *X = in + (size_t)off[u] * C;
        double s = 0.0;
        /* ghost: L^2 C for X X^T once, L^2 OC per G G^T; materialised: L C OC per product */
        if ((double)L * (C + (double)n_out * OC) < (double)n_out * C * OC) {
            float *A = sc, *B = sc + (size_t)L * L; /* lower triangles: L (L + 1) / 2 each */
            gram_lower(A, X, L, C, C);
            if (with_bias) /* the bias is a weight on a constant input 1: <x_t, x_t'> + 1 */
                for (int i = 0; i < L * (L + 1) / 2; i++)
                    A[i] += 1.0f;
            for (int k = 0; k < n_out; k++) {
                gram_lower(B, dout[k] + (size_t)off[u] * OC, L, OC, OC);
                s += gram_dot(A, B, L);
            }
        } else {
            for (int k = 0; k < n_out; k++) {
                const float *G = dout[k] + (size_t)off[u] * OC;
                sgemm1(1, 0, C, OC, L, 1.0f, X, C, G, OC, 0.0f, sc, OC);
                s += sumsq_d(sc, (size_t)C * OC);
                if (with_bias) { /* the bias's gradient: the column sums of G */
                    float *cs = sc + (size_t)C * OC;
                    for (int c = 0; c < OC; c++)
                        cs[c] = 0.0f;
                    for (int t = 0; t < L; t++)
                        for (int c = 0; c < OC; c++)
                            cs[c] += G[(size_t)t * OC + c];
                    s += sumsq_d(cs, (size_t)OC);
                }
            }
        }
        acc[u] += s;
    }
}

/* Per-thread scratch of fp_k_embed_user_sqnorms: slot[n_items + 1] (int32, -1 = item not seen
 * by this user), touched[E] (int32: the items seen, to reset slot), then vec[E x C] (double:
 * one summed gradient row per distinct item), E = max_tok + max_loss * S entries at most. */
static size_t embed_entries(int max_tok, int max_loss, int S) { return (size_t)max_tok + (size_t)max_loss * S; }

static size_t embed_ints(int n_items, int max_tok, int max_loss, int S)
{
    size_t n = (size_t)n_items + 1 + embed_entries(max_tok, max_loss, S);
    return (n + 1) / 2 * 2; /* keep the doubles 8-byte aligned */
}

size_t fp_k_embed_user_sqnorms_scratch(int n_items, int max_tok, int max_loss, int S, int C)
{
    return embed_ints(n_items, max_tok, max_loss, S) * sizeof(int32_t) +
           embed_entries(max_tok, max_loss, S) * (size_t)C * sizeof(double);
}

/* vec[slot of id] += coef * x, creating the slot (zeroed) on the item's first row. */
static inline void embed_add(int32_t *slot, int32_t *touched, double *vec, int *ns, int32_t id, float coef,
                             const float *x, int C)
{
    int s = slot[id];
    double *v;
    if (s < 0) {
        s = slot[id] = (*ns)++;
        touched[s] = id;
        v = vec + (size_t)s * C;
        for (int c = 0; c < C; c++)
            v[c] = 0.0;
    } else {
        v = vec + (size_t)s * C;
    }
    for (int c = 0; c < C; c++)
        v[c] += (double)(coef * x[c]);
}

void fp_k_embed_user_sqnorms(double *acc, const float *dx, const int32_t *ids, float scale, const int32_t *off,
                             const float *dz, const float *h, const int32_t *items, const int32_t *loff, int U,
                             int n_items, int max_tok, int max_loss, int S, int C, void *scratch)
{
    ON_GPU(embed_user_sqnorms, acc, dx, ids, scale, off, dz, h, items, loff, U, S, C);
    const size_t stride = fp_k_embed_user_sqnorms_scratch(n_items, max_tok, max_loss, S, C);
    const size_t ints = embed_ints(n_items, max_tok, max_loss, S);
    int nt = user_team(U, ((double)(off[U] - off[0]) + (double)(loff[U] - loff[0]) * S) * C);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
    for (int u = 0; u < U; u++) {
        char *base = (char *)scratch + (size_t)omp_get_thread_num() * stride;
        int32_t *slot = (int32_t *)(void *)base, *touched = slot + n_items + 1;
        double *vec = (double *)(void *)(base + ints * sizeof(int32_t));
        int ns = 0;
        for (int t = off[u]; t < off[u + 1]; t++)
            if (ids[t] != 0)
                embed_add(slot, touched, vec, &ns, ids[t], scale, dx + (size_t)t * C, C);
        for (int r = loff[u]; r < loff[u + 1]; r++)
            for (int j = 0; j < S; j++) {
                const int32_t id = items[(size_t)r * S + j];
                if (id != 0)
                    embed_add(slot, touched, vec, &ns, id, dz[(size_t)r * S + j], h + (size_t)r * C, C);
            }
        double s = 0.0;
        for (int k = 0; k < ns; k++) {
            const double *v = vec + (size_t)k * C;
            for (int c = 0; c < C; c++)
                s += v[c] * v[c];
            slot[touched[k]] = -1;
        }
        acc[u] += s;
    }
}
