/* kernels_cuda: the CUDA back-end of common/kernels.h (cuBLAS for the matrix products, small
 * CUDA kernels for the rest), compiled when CMake finds the CUDA toolkit (FEDPROF_CUDA=AUTO/ON).
 *
 * It is built as a shared module (libfedprof_cuda.so) that common/kernels_device.c loads with
 * dlopen when the CUDA device is selected, so that a CPU run never loads the CUDA libraries; its
 * only exported symbol is the table fp_kcuda_api (kernels_cuda.h).
 *
 * How it plugs in: with the CUDA device selected, the model's buffers are
 * CUDA managed memory (fp_k_alloc), so the host code of the model (packing a batch, the DP-SGD
 * clip factors, its memsets) keeps working on them, and each fp_k_* function in kernels_cpu.c
 * first offers its call to the fp_kcuda_* function of the same name here. That function runs it
 * on the GPU when every array it is given is device-accessible (returns 1), or declines (returns
 * 0: a caller's plain host array, e.g. fp_model_profiles' output) and the CPU code runs instead.
 * On the GPU: sgemm, linear, LayerNorm, dropout masks, the elementwise ops, embeddings, gathers
 * and scatters, attention (forward and backward), the sampled losses, Adam, sums of squares.
 * and DP-SGD's per-user norms (fp_k_user_*, the ghost norms, the tied embedding's norms). Not yet
 * (it runs on the CPU, on the same managed memory): fp_k_gather_dot (scoring into callers' host
 * arrays). Every GPU call ends with a device synchronisation, so the host may
 * touch any buffer between two calls; the price is one synchronisation per kernel call, and a
 * page migration whenever the host touches managed memory the GPU wrote.
 *
 * Errors: a failed CUDA or cuBLAS call is recorded with its statement, file and line
 * (fp_error_set) in a process-wide sticky slot that fp_k_take_error returns; the model checks it
 * after every pass and fails the step. The call still returns 1 (handled): after a device error
 * its outputs are undefined, and running the CPU code on possibly half-written inputs would hide
 * the error.
 *
 * Numerics: the same formulas as kernels_cpu.c in float, with different summation orders
 * (parallel reductions, atomics in the scatter-adds), so results agree with the CPU back-end to
 * float rounding, not bit for bit; dropout masks are bit-identical (the same SplitMix64 of the
 * element index). tests/test_cuda.c states and checks the tolerances. */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

extern "C" {
#include "common/errors.h"
#include "common/kernels_cuda.h"
}
#include "common/kernels_rows.h" /* C++ here: static inline host/device functions, no linkage */

/* ------------------------------------------------------------------ state and errors */

static int g_ready;              /* fp_kcuda_init succeeded */
static cublasHandle_t g_blas;
static int g_failed;             /* sticky: a device call failed since the last fp_kcuda_take_error */
static char g_msg[512];

static void record(const char *what, const char *detail, const char *file, int line)
{
    if (!g_failed) {
        g_failed = 1;
        snprintf(g_msg, sizeof g_msg, "CUDA: %s failed: %s (%s:%d)", what, detail, file, line);
    }
}

#define CK(stmt)                                                                                                     \
    do {                                                                                                             \
        cudaError_t e_ = (stmt);                                                                                     \
        if (e_ != cudaSuccess)                                                                                       \
            record(#stmt, cudaGetErrorString(e_), __FILE__, __LINE__);                                               \
    } while (0)

#define CKB(stmt)                                                                                                    \
    do {                                                                                                             \
        cublasStatus_t s_ = (stmt);                                                                                  \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                                             \
            record(#stmt, cublasGetStatusString(s_), __FILE__, __LINE__);                                            \
    } while (0)

/* Right after a kernel launch: a launch error (bad configuration, no kernel image) named after
 * the kernel, so that an entry with several launches says which one failed. */
#define LAUNCHED(kernel)                                                                                             \
    do {                                                                                                             \
        cudaError_t e_ = cudaGetLastError();                                                                         \
        if (e_ != cudaSuccess)                                                                                       \
            record("launching " #kernel, cudaGetErrorString(e_), __FILE__, __LINE__);                                \
    } while (0)

/* After an entry's launches: any launch error left, then the kernels' own (the synchronisation:
 * a fault inside a kernel is reported here, at the entry's DONE line). */
#define DONE()                         \
    do {                               \
        CK(cudaGetLastError());        \
        CK(cudaDeviceSynchronize());   \
    } while (0)

static int fp_kcuda_take_error(char *msg, size_t n)
{
    if (!g_failed)
        return 0;
    if (msg && n) {
        strncpy(msg, g_msg, n - 1);
        msg[n - 1] = '\0';
    }
    g_failed = 0;
    return 1;
}

static int fp_kcuda_init(char *why, size_t n)
{
    if (g_ready)
        return 1;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        snprintf(why, n, "cudaGetDeviceCount: %s", e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device");
        (void)cudaGetLastError(); /* clear it */
        return 0;
    }
    int managed = 0;
    if (cudaDeviceGetAttribute(&managed, cudaDevAttrManagedMemory, 0) != cudaSuccess || !managed) {
        snprintf(why, n, "device 0 has no managed memory");
        return 0;
    }
    cublasStatus_t s = cublasCreate(&g_blas);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, n, "cublasCreate: %s", cublasGetStatusString(s));
        return 0;
    }
    /* FP32 products stay FP32 (no TF32): parity with the CPU back-end is stated for float. */
    if (cublasSetMathMode(g_blas, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, n, "cublasSetMathMode failed");
        cublasDestroy(g_blas);
        return 0;
    }
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) == cudaSuccess)
        snprintf(why, n, "%s, %.1f GiB, compute capability %d.%d", p.name, p.totalGlobalMem / 1073741824.0, p.major,
                 p.minor);
    else
        snprintf(why, n, "device 0");
    g_ready = 1;
    return 1;
}

static void *fp_kcuda_alloc(size_t bytes)
{
    void *p = NULL;
    if (!g_ready)
        return NULL;
    if (cudaMallocManaged(&p, bytes ? bytes : 1, cudaMemAttachGlobal) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return p;
}

#if CUDART_VERSION < 11000
#error "common/kernels_cuda.cu needs CUDA 11 or later (cudaPointerGetAttributes answers for host memory)"
#endif

/* 1 if p is CUDA memory (then freed), 0 if it is not (the caller frees it). Since CUDA 11 a host
 * pointer gets cudaSuccess (type Unregistered) from cudaPointerGetAttributes, so a failure there is
 * the device's own (a sticky error after a fault): it is recorded and p is left alone (leaked)
 * rather than handed to libc's free(). */
static int fp_kcuda_free(void *p)
{
    if (!g_ready || !p)
        return 0;
    cudaPointerAttributes a;
    const cudaError_t e = cudaPointerGetAttributes(&a, p);
    if (e != cudaSuccess) {
        record("cudaPointerGetAttributes(p) in fp_kcuda_free", cudaGetErrorString(e), __FILE__, __LINE__);
        return 1;
    }
    if (a.type != cudaMemoryTypeManaged && a.type != cudaMemoryTypeDevice)
        return 0;
    CK(cudaDeviceSynchronize());
    CK(cudaFree(p));
    return 1;
}

/* Every non-NULL pointer is device-accessible (managed or device memory). A failed query is the
 * device's (see fp_kcuda_free): recorded, and the pointer taken as the device's, so that the entry
 * runs (its launches fail and are recorded too) instead of running the CPU code on memory the
 * faulted device may own, which would hide the error. */
static int dev_ok(const void *p)
{
    if (!p)
        return 1;
    cudaPointerAttributes a;
    const cudaError_t e = cudaPointerGetAttributes(&a, p);
    if (e != cudaSuccess) {
        record("cudaPointerGetAttributes", cudaGetErrorString(e), __FILE__, __LINE__);
        return 1;
    }
    return a.type == cudaMemoryTypeManaged || a.type == cudaMemoryTypeDevice;
}

static int all_ok(std::initializer_list<const void *> ps)
{
    if (!g_ready)
        return 0;
    for (const void *p : ps)
        if (!dev_ok(p))
            return 0;
    return 1;
}

static unsigned blocks_for(size_t n, unsigned t)
{
    size_t b = (n + t - 1) / t;
    return (unsigned)(b < 65535u * 32u ? b : 65535u * 32u); /* grid-stride loops cover the rest */
}

#define GRID_STRIDE(i, n)                                                                                            \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* One grid-stride launch over `work` elements (nothing when 0), then the launch's and the kernel's
 * errors (DONE): the body of every elementwise entry below. */
#define LAUNCH_ALL(kernel, work, ...)                                                                                \
    do {                                                                                                             \
        const long long w_ = (long long)(work); /* a negative row count launches nothing */                          \
        if (w_ > 0) {                                                                                                \
            kernel<<<blocks_for((size_t)w_, 256), 256>>>(__VA_ARGS__);                                               \
            LAUNCHED(kernel);                                                                                        \
        }                                                                                                            \
        DONE();                                                                                                      \
    } while (0)

/* ------------------------------------------------------------------ sgemm and linear */

static void sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T; a row-major X is the
     * column-major X^T, so the operations are passed as they are, with A and B swapped. */
    CKB(cublasSgemm(g_blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb,
                    A, lda, &beta, C, ldc));
}

static int fp_kcuda_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                              const float *B, int ldb, float beta, float *C, int ldc)
{
    if (!all_ok({A, B, C}))
        return 0;
    sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    DONE();
    return 1;
}

__global__ void k_bias_rows(float *out, const float *b, int N, int OC)
{
    GRID_STRIDE(i, (size_t)N * OC) out[i] = b[i % OC];
}

/* acc[c] += sum over rows of x[., c] (and dgx[c] += sum of x * xhat when in != NULL), one thread
 * per column summing the rows in order: deterministic. */
__global__ void k_colsums(float *acc, float *dgx, const float *x, const float *in, const float *mean, const float *rstd,
                          int N, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    float s1 = 0.0f, s2 = 0.0f;
    for (int i = 0; i < N; i++) {
        float v = x[(size_t)i * C + c];
        s1 += v;
        if (dgx)
            s2 += v * ((in[(size_t)i * C + c] - mean[i]) * rstd[i]);
    }
    acc[c] += s1;
    if (dgx)
        dgx[c] += s2;
}

static int fp_kcuda_linear_fwd(float *out, const float *in, const float *w, const float *b, int N, int C, int OC)
{
    if (!all_ok({out, in, w, b}))
        return 0;
    if (N <= 0)
        return 1;
    if (b && OC > 0) {
        k_bias_rows<<<blocks_for((size_t)N * OC, 256), 256>>>(out, b, N, OC);
        LAUNCHED(k_bias_rows);
    }
    sgemm(0, 0, N, OC, C, 1.0f, in, C, w, OC, b ? 1.0f : 0.0f, out, OC);
    DONE();
    return 1;
}

static int fp_kcuda_linear_bwd(float *din, float *dw, float *db, const float *dout, const float *in,
                                   const float *w, int N, int C, int OC, int din_accumulate)
{
    if (!all_ok({din, dw, db, dout, in, w}))
        return 0;
    if (N <= 0)
        return 1;
    sgemm(1, 0, C, OC, N, 1.0f, in, C, dout, OC, 1.0f, dw, OC);
    if (din)
        sgemm(0, 1, N, C, OC, 1.0f, dout, OC, w, OC, din_accumulate ? 1.0f : 0.0f, din, C);
    if (db && OC > 0) {
        k_colsums<<<(OC + 127) / 128, 128>>>(db, NULL, dout, NULL, NULL, NULL, N, OC);
        LAUNCHED(k_colsums);
    }
    DONE();
    return 1;
}

/* ------------------------------------------------------------------ layernorm */

__device__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* One warp per row. */
__global__ void k_ln_fwd(float *out, float *mean, float *rstd, const float *in, const float *g, const float *b, int N,
                         int C, float eps)
{
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N)
        return;
    const float *x = in + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32)
        s += x[c];
    const float mu = warp_sum(s) / (float)C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32)
        v += (x[c] - mu) * (x[c] - mu);
    const float rs = 1.0f / sqrtf(warp_sum(v) / (float)C + eps);
    float *y = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32)
        y[c] = (x[c] - mu) * rs * g[c] + b[c];
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

__global__ void k_ln_bwd(float *din, const float *dout, const float *in, const float *g, const float *mean,
                         const float *rstd, int N, int C)
{
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N)
        return;
    const float *x = in + (size_t)row * C, *dy = dout + (size_t)row * C;
    const float mu = mean[row], rs = rstd[row];
    float m1 = 0.0f, m2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float t = dy[c] * g[c];
        m1 += t;
        m2 += t * ((x[c] - mu) * rs);
    }
    m1 = warp_sum(m1) / (float)C;
    m2 = warp_sum(m2) / (float)C;
    float *dx = din + (size_t)row * C;
    for (int c = lane; c < C; c += 32)
        dx[c] += (dy[c] * g[c] - m1 - ((x[c] - mu) * rs) * m2) * rs;
}

static int fp_kcuda_layernorm_fwd(float *out, float *mean, float *rstd, const float *in, const float *g,
                                      const float *b, int N, int C, float eps)
{
    if (!all_ok({out, mean, rstd, in, g, b}))
        return 0;
    if (N <= 0)
        return 1;
    k_ln_fwd<<<(N + 3) / 4, 128>>>(out, mean, rstd, in, g, b, N, C, eps);
    LAUNCHED(k_ln_fwd);
    DONE();
    return 1;
}

static int fp_kcuda_layernorm_bwd(float *din, float *dg, float *db, const float *dout, const float *in,
                                      const float *g, const float *mean, const float *rstd, int N, int C)
{
    if (!all_ok({din, dg, db, dout, in, g, mean, rstd}))
        return 0;
    if (N <= 0)
        return 1;
    k_ln_bwd<<<(N + 3) / 4, 128>>>(din, dout, in, g, mean, rstd, N, C);
    LAUNCHED(k_ln_bwd);
    if (C > 0) {
        k_colsums<<<(C + 127) / 128, 128>>>(db, dg, dout, in, mean, rstd, N, C);
        LAUNCHED(k_colsums);
    }
    DONE();
    return 1;
}

static int fp_kcuda_layernorm_params_bwd(float *dg, float *db, const float *dout, const float *in,
                                             const float *mean, const float *rstd, int N, int C)
{
    if (!all_ok({dg, db, dout, in, mean, rstd}))
        return 0;
    if (N > 0 && C > 0) {
        k_colsums<<<(C + 127) / 128, 128>>>(db, dg, dout, in, mean, rstd, N, C);
        LAUNCHED(k_colsums);
    }
    DONE();
    return 1;
}

/* ------------------------------------------------------------------ elementwise */

__device__ uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

__global__ void k_dropout(float *mask, size_t n, uint32_t thr, float keep, uint64_t seed)
{
    GRID_STRIDE(i, n)
    {
        uint32_t bits = (uint32_t)(mix64(seed + (i + 1) * 0x9e3779b97f4a7c15ULL) >> 40);
        mask[i] = bits >= thr ? keep : 0.0f;
    }
}

static int fp_kcuda_dropout_mask(float *mask, size_t n, float p, uint64_t seed)
{
    if (!all_ok({mask}))
        return 0;
    if (n == 0)
        return 1;
    const uint32_t thr = (uint32_t)ceil((double)p * 16777216.0); /* as kernels_cpu.c */
    k_dropout<<<blocks_for(n, 256), 256>>>(mask, n, thr, 1.0f / (1.0f - p), seed);
    LAUNCHED(k_dropout);
    DONE();
    return 1;
}

__global__ void k_add_mul(float *out, const float *x, const float *y, const float *mask, size_t n)
{
    GRID_STRIDE(i, n) out[i] = x[i] + (mask ? y[i] * mask[i] : y[i]);
}

__global__ void k_mul(float *out, const float *a, const float *mask, size_t n)
{
    GRID_STRIDE(i, n) out[i] = a[i] * mask[i];
}

/* kernels_cpu.c's keep_if_pos: y where x's bits, read as int32, are > 0, else +0. */
__device__ float keep_if_pos(float y, float x) { return __float_as_int(x) > 0 ? y : 0.0f; }

__global__ void k_relu_fwd(float *out, const float *in, const float *mask, size_t n)
{
    GRID_STRIDE(i, n) out[i] = keep_if_pos(mask ? in[i] * mask[i] : in[i], in[i]);
}

__global__ void k_relu_bwd(float *din, const float *dout, const float *in, const float *mask, size_t n)
{
    GRID_STRIDE(i, n) din[i] = keep_if_pos(mask ? dout[i] * mask[i] : dout[i], in[i]);
}

static int fp_kcuda_zero(float *x, size_t n)
{
    if (!all_ok({x}))
        return 0;
    if (n)
        CK(cudaMemset(x, 0, n * sizeof *x));
    DONE();
    return 1;
}

static int fp_kcuda_copy(float *dst, const float *src, size_t n)
{
    if (!all_ok({dst, src}))
        return 0;
    if (n)
        CK(cudaMemcpy(dst, src, n * sizeof *dst, cudaMemcpyDefault));
    DONE();
    return 1;
}

static int fp_kcuda_add_mul(float *out, const float *x, const float *y, const float *mask, size_t n)
{
    if (!all_ok({out, x, y, mask}))
        return 0;
    LAUNCH_ALL(k_add_mul, n, out, x, y, mask, n);
    return 1;
}

static int fp_kcuda_mul(float *out, const float *a, const float *mask, size_t n)
{
    if (!all_ok({out, a, mask}))
        return 0;
    LAUNCH_ALL(k_mul, n, out, a, mask, n);
    return 1;
}

static int fp_kcuda_relu_fwd(float *out, const float *in, const float *mask, size_t n)
{
    if (!all_ok({out, in, mask}))
        return 0;
    LAUNCH_ALL(k_relu_fwd, n, out, in, mask, n);
    return 1;
}

static int fp_kcuda_relu_bwd(float *din, const float *dout, const float *in, const float *mask, size_t n)
{
    if (!all_ok({din, dout, in, mask}))
        return 0;
    LAUNCH_ALL(k_relu_bwd, n, din, dout, in, mask, n);
    return 1;
}

/* ------------------------------------------------------------------ embeddings, gathers */

__global__ void k_embed_fwd(float *out, const int32_t *ids, const int32_t *tpos, const float *wte, const float *wpe,
                            float scale, int N, int C)
{
    GRID_STRIDE(k, (size_t)N * C)
    {
        size_t i = k / C, c = k % C;
        out[k] = wte[(size_t)ids[i] * C + c] * scale + wpe[(size_t)tpos[i] * C + c];
    }
}

__global__ void k_embed_bwd(float *dwte, float *dwpe, const float *dout, const int32_t *ids, const int32_t *tpos,
                            float scale, int N, int C)
{
    GRID_STRIDE(k, (size_t)N * C)
    {
        size_t i = k / C, c = k % C;
        atomicAdd(&dwte[(size_t)ids[i] * C + c], scale * dout[k]);
        if (dwpe)
            atomicAdd(&dwpe[(size_t)tpos[i] * C + c], dout[k]);
    }
}

static int fp_kcuda_embed_fwd(float *out, const int32_t *ids, const int32_t *tpos, const float *wte,
                                  const float *wpe, float scale, int N, int C)
{
    if (!all_ok({out, ids, tpos, wte, wpe}))
        return 0;
    LAUNCH_ALL(k_embed_fwd, (long long)N * C, out, ids, tpos, wte, wpe, scale, N, C);
    return 1;
}

static int fp_kcuda_embed_bwd(float *dwte, float *dwpe, const float *dout, const int32_t *ids, const int32_t *tpos,
                                  float scale, int N, int C)
{
    if (!all_ok({dwte, dwpe, dout, ids, tpos}))
        return 0;
    LAUNCH_ALL(k_embed_bwd, (long long)N * C, dwte, dwpe, dout, ids, tpos, scale, N, C);
    return 1;
}

__global__ void k_gather_rows(float *out, const float *src, const int32_t *rows, const float *fill, int n, int C)
{
    GRID_STRIDE(k, (size_t)n * C)
    {
        size_t i = k / C, c = k % C;
        out[k] = rows[i] >= 0 ? src[(size_t)rows[i] * C + c] : (fill ? fill[c] : 0.0f);
    }
}

__global__ void k_scatter_rows_add(float *dsrc, float *dfill, const float *dout, const int32_t *rows, int n, int C)
{
    GRID_STRIDE(k, (size_t)n * C)
    {
        size_t i = k / C, c = k % C;
        if (rows[i] >= 0)
            dsrc[(size_t)rows[i] * C + c] += dout[k]; /* rows are distinct */
        else if (dfill)
            atomicAdd(&dfill[c], dout[k]);
    }
}

static int fp_kcuda_gather_rows(float *out, const float *src, const int32_t *rows, const float *fill, int n, int C)
{
    if (!all_ok({out, src, rows, fill}))
        return 0;
    LAUNCH_ALL(k_gather_rows, (long long)n * C, out, src, rows, fill, n, C);
    return 1;
}

static int fp_kcuda_scatter_rows_add(float *dsrc, float *dfill, const float *dout, const int32_t *rows, int n,
                                         int C)
{
    if (!all_ok({dsrc, dfill, dout, rows}))
        return 0;
    LAUNCH_ALL(k_scatter_rows_add, (long long)n * C, dsrc, dfill, dout, rows, n, C);
    return 1;
}

/* ------------------------------------------------------------------ reductions, Adam, scaling */

/* Partial sums of squares in double, one per block, then added on the host in block order. */
__global__ void k_sumsq(double *part, float *g, const float *x, size_t n, float coef)
{
    __shared__ double sh[256];
    double s = 0.0;
    GRID_STRIDE(i, n)
    {
        float v = x[i];
        s += (double)v * (double)v;
        if (g)
            g[i] = coef * v;
    }
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o)
            sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        part[blockIdx.x] = sh[0];
}

#define SUMSQ_BLOCKS 1024
static double *g_part; /* SUMSQ_BLOCKS doubles of managed memory, allocated on first use */

static int fp_kcuda_sumsq(double *out, float *g, const float *x, size_t n, float coef)
{
    if (!all_ok({g, x}))
        return 0;
    *out = 0.0;
    if (n == 0)
        return 1;
    if (!g_part && cudaMallocManaged(&g_part, SUMSQ_BLOCKS * sizeof(double), cudaMemAttachGlobal) != cudaSuccess) {
        g_part = NULL;
        CK(cudaGetLastError());
        return 1;
    }
    unsigned nb = blocks_for(n, 256);
    if (nb > SUMSQ_BLOCKS)
        nb = SUMSQ_BLOCKS;
    k_sumsq<<<nb, 256>>>(g_part, g, x, n, coef);
    LAUNCHED(k_sumsq);
    DONE();
    if (g_failed) /* the partial sums are undefined, and the host may not touch them after a fault */
        return 1;
    double s = 0.0;
    for (unsigned b = 0; b < nb; b++)
        s += g_part[b];
    *out = s;
    return 1;
}

__global__ void k_adam(float *p, const float *g, float *m, float *v, size_t n, float b1, float b2, float step,
                       float bc2_sqrt, float eps)
{
    const float w1 = 1.0f - b1, w2 = 1.0f - b2;
    GRID_STRIDE(i, n)
    {
        const float gi = g[i];
        const float mi = m[i] + w1 * (gi - m[i]);
        const float vi = v[i] * b2 + w2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= step * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

static int fp_kcuda_adam(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                             float eps, double bc1, double bc2)
{
    if (!all_ok({p, g, m, v}))
        return 0;
    LAUNCH_ALL(k_adam, n, p, g, m, v, n, b1, b2, (float)(lr / bc1), (float)sqrt(bc2), eps);
    return 1;
}

__global__ void k_scale_rows(float *x, const float *s, int n, int C)
{
    GRID_STRIDE(k, (size_t)n * C) x[k] *= s[k / C];
}

static int fp_kcuda_scale_rows(float *x, const float *s, int n, int C)
{
    if (!all_ok({x, s}))
        return 0;
    LAUNCH_ALL(k_scale_rows, (long long)n * C, x, s, n, C);
    return 1;
}

/* ------------------------------------------------------------------ attention */

/* The user owning packed row i: off[u] <= i < off[u+1] (binary search over U+1 offsets). */
__device__ int user_of(const int32_t *off, int U, int i)
{
    int lo = 0, hi = U - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (off[mid] <= i)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

__device__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* One warp per (packed row i, head h): row li of the user's [L x L] probabilities, then out_i. */
__global__ void k_att_fwd(float *out, float *att, float *attd, const float *mask, const float *q, const float *k,
                          const float *v, const int32_t *off, const size_t *att_off, int U, int N, int C, int H,
                          float scale)
{
    const long long w = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (w >= (long long)N * H)
        return;
    const int i = (int)(w / H), h = (int)(w % H), hs = C / H;
    const int u = user_of(off, U, i), L = off[u + 1] - off[u], li = i - off[u], r0 = off[u];
    const size_t a0 = att_off[u] + (size_t)h * L * L + (size_t)li * L;
    float *a = att + a0;
    const float *qi = q + (size_t)i * C + (size_t)h * hs;
    float mx = -INFINITY;
    for (int j = lane; j <= li; j += 32) {
        const float *kj = k + (size_t)(r0 + j) * C + (size_t)h * hs;
        float s = 0.0f;
        for (int d = 0; d < hs; d++)
            s += (qi[d] * scale) * kj[d];
        a[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j <= li; j += 32) {
        float e = expf(a[j] - mx);
        a[j] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum(sum);
    for (int j = lane; j < L; j += 32)
        a[j] = j <= li ? a[j] * inv : 0.0f;
    __syncwarp();
    const float *wt = a;
    if (mask) {
        float *ad = attd + a0;
        const float *mk = mask + a0;
        for (int j = lane; j < L; j += 32)
            ad[j] = a[j] * mk[j];
        __syncwarp();
        wt = ad;
    }
    float *o = out + (size_t)i * C + (size_t)h * hs;
    for (int d = lane; d < hs; d += 32) {
        float s = 0.0f;
        for (int j = 0; j <= li; j++)
            s += wt[j] * v[(size_t)(r0 + j) * C + (size_t)h * hs + d];
        o[d] = s;
    }
}

/* Backward, pass 1, one warp per (row i, head h): dS row li (into datt) and dQ_i. */
__global__ void k_att_bwd_rows(float *dq, float *datt, const float *dout, const float *att, const float *attd,
                               const float *k, const float *v, const int32_t *off, const size_t *att_off, int U, int N,
                               int C, int H, float scale)
{
    const long long w = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (w >= (long long)N * H)
        return;
    const int i = (int)(w / H), h = (int)(w % H), hs = C / H;
    const int u = user_of(off, U, i), L = off[u + 1] - off[u], li = i - off[u], r0 = off[u];
    const size_t a0 = att_off[u] + (size_t)h * L * L + (size_t)li * L;
    const float *a = att + a0, *ad = attd + a0;
    float *ds = datt + a0;
    const float *go = dout + (size_t)i * C + (size_t)h * hs;
    float dot = 0.0f;
    for (int j = lane; j <= li; j += 32) {
        const float *vj = v + (size_t)(r0 + j) * C + (size_t)h * hs;
        float s = 0.0f;
        for (int d = 0; d < hs; d++)
            s += go[d] * vj[d];
        ds[j] = s;
        dot += ad[j] * s;
    }
    dot = warp_sum(dot);
    for (int j = lane; j < L; j += 32) {
        if (j > li)
            ds[j] = 0.0f;
        else if (ad == a)
            ds[j] = a[j] * (ds[j] - dot);
        else
            ds[j] = ad[j] * ds[j] - a[j] * dot;
    }
    __syncwarp();
    float *gq = dq + (size_t)i * C + (size_t)h * hs;
    for (int d = lane; d < hs; d += 32) {
        float s = 0.0f;
        for (int j = 0; j <= li; j++)
            s += ds[j] * k[(size_t)(r0 + j) * C + (size_t)h * hs + d];
        gq[d] = s * scale;
    }
}

/* Pass 2, one warp per (row j, head h): dK_j = scale sum_{i >= j} dS_ij Q_i, dV_j = sum_i Ad_ij dO_i. */
__global__ void k_att_bwd_cols(float *dk, float *dv, const float *datt, const float *attd, const float *q,
                               const float *dout, const int32_t *off, const size_t *att_off, int U, int N, int C, int H,
                               float scale)
{
    const long long w = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (w >= (long long)N * H)
        return;
    const int jr = (int)(w / H), h = (int)(w % H), hs = C / H;
    const int u = user_of(off, U, jr), L = off[u + 1] - off[u], lj = jr - off[u], r0 = off[u];
    const size_t base = att_off[u] + (size_t)h * L * L;
    for (int d = lane; d < hs; d += 32) {
        float sk = 0.0f, sv = 0.0f;
        for (int i = lj; i < L; i++) {
            const size_t at = base + (size_t)i * L + lj, row = (size_t)(r0 + i) * C + (size_t)h * hs + d;
            sk += datt[at] * q[row];
            sv += attd[at] * dout[row];
        }
        dk[(size_t)jr * C + (size_t)h * hs + d] = sk * scale;
        dv[(size_t)jr * C + (size_t)h * hs + d] = sv;
    }
}

static int fp_kcuda_attention_fwd(float *out, float *att, float *attd, const float *mask, const float *q,
                                      const float *k, const float *v, const int32_t *off, const size_t *att_off, int U,
                                      int C, int H)
{
    if (!all_ok({out, att, attd, mask, q, k, v, off, att_off}))
        return 0;
    if (U <= 0)
        return 1;
    const int N = off[U]; /* managed: readable here; rows start at 0 (packed) */
    const long long warps = (long long)N * H;
    if (warps > 0) {
        k_att_fwd<<<(unsigned)((warps + 3) / 4), 128>>>(out, att, attd, mask, q, k, v, off, att_off, U, N, C, H,
                                                        1.0f / sqrtf((float)(C / H)));
        LAUNCHED(k_att_fwd);
    }
    DONE();
    return 1;
}

static int fp_kcuda_attention_bwd(float *dq, float *dk, float *dv, float *datt, const float *dout,
                                      const float *att, const float *attd, const float *q, const float *k,
                                      const float *v, const int32_t *off, const size_t *att_off, int U, int C, int H)
{
    if (!attd)
        attd = att;
    if (!all_ok({dq, dk, dv, datt, dout, att, attd, q, k, v, off, att_off}))
        return 0;
    if (U <= 0)
        return 1;
    const int N = off[U];
    const long long warps = (long long)N * H;
    const float scale = 1.0f / sqrtf((float)(C / H));
    if (warps > 0) {
        const unsigned nb = (unsigned)((warps + 3) / 4);
        k_att_bwd_rows<<<nb, 128>>>(dq, datt, dout, att, attd, k, v, off, att_off, U, N, C, H, scale);
        LAUNCHED(k_att_bwd_rows);
        k_att_bwd_cols<<<nb, 128>>>(dk, dv, datt, attd, q, dout, off, att_off, U, N, C, H, scale);
        LAUNCHED(k_att_bwd_cols);
    }
    DONE();
    return 1;
}

/* ------------------------------------------------------------------ sampled losses */



/* One warp per row: the S logits, then the row's loss (double) into rowloss[i]. */
__global__ void k_loss_fwd(double *rowloss, float *logits, const float *h, const int32_t *items, const float *emb,
                           int n, int S, int C, int kind)
{
    const long long i = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (i >= n)
        return;
    const float *hi = h + (size_t)i * C;
    float *z = logits + (size_t)i * S;
    for (int j = 0; j < S; j++) {
        const float *e = emb + (size_t)items[(size_t)i * S + j] * C;
        float s = 0.0f;
        for (int c = lane; c < C; c += 32)
            s += hi[c] * e[c];
        s = warp_sum(s);
        if (lane == 0)
            z[j] = s;
    }
    if (lane != 0)
        return;
    rowloss[i] = fp_row_loss(z, S, kind);
}

__global__ void k_dlogits(float *logits, int n, int S, int kind, float scale)
{
    GRID_STRIDE(i, (size_t)n)
    fp_row_dlogits(logits + i * S, S, kind, scale);
}

__global__ void k_scores_dh(float *dh, const float *dz, const int32_t *items, const float *emb, int n, int S, int C)
{
    GRID_STRIDE(k, (size_t)n * C)
    {
        size_t i = k / C, c = k % C;
        float g = 0.0f;
        for (int j = 0; j < S; j++)
            g += dz[i * S + j] * emb[(size_t)items[i * S + j] * C + c];
        dh[k] = g;
    }
}

__global__ void k_scores_demb(float *demb, const float *dz, const float *h, const int32_t *items, int n, int S, int C)
{
    GRID_STRIDE(k, (size_t)n * S * C)
    {
        size_t c = k % C, r = k / C; /* r = i * S + j */
        atomicAdd(&demb[(size_t)items[r] * C + c], dz[r] * h[(r / S) * C + c]);
    }
}

static double *g_rowloss; /* per-row losses of k_loss_fwd (managed), grown as needed */
static size_t g_rowloss_n;

static int fp_kcuda_sampled_loss_fwd(double *total, float *logits, const float *h, const int32_t *items,
                                         const float *emb, int n, int S, int C, int kind)
{
    if (!all_ok({logits, h, items, emb}))
        return 0;
    *total = 0.0;
    if (n <= 0)
        return 1;
    if ((size_t)n > g_rowloss_n) {
        if (g_rowloss)
            CK(cudaFree(g_rowloss));
        g_rowloss = NULL;
        g_rowloss_n = 0;
        if (cudaMallocManaged(&g_rowloss, (size_t)n * sizeof(double), cudaMemAttachGlobal) != cudaSuccess) {
            g_rowloss = NULL;
            CK(cudaGetLastError());
            return 1;
        }
        g_rowloss_n = (size_t)n;
    }
    k_loss_fwd<<<(unsigned)((n + 3) / 4), 128>>>(g_rowloss, logits, h, items, emb, n, S, C, kind);
    LAUNCHED(k_loss_fwd);
    DONE();
    if (g_failed)
        return 1;
    double s = 0.0;
    for (int i = 0; i < n; i++) /* in row order */
        s += g_rowloss[i];
    *total = s;
    return 1;
}

static int fp_kcuda_sampled_loss_dlogits(float *logits, int n, int S, int kind, float scale)
{
    if (!all_ok({logits}))
        return 0;
    if (n > 0) {
        k_dlogits<<<blocks_for((size_t)n, 128), 128>>>(logits, n, S, kind, scale);
        LAUNCHED(k_dlogits);
    }
    DONE();
    return 1;
}

static int fp_kcuda_sampled_scores_bwd(float *dh, float *demb, const float *dz, const float *h,
                                           const int32_t *items, const float *emb, int n, int S, int C)
{
    if (!all_ok({dh, demb, dz, h, items, emb}))
        return 0;
    if (n > 0 && C > 0) {
        k_scores_dh<<<blocks_for((size_t)n * C, 256), 256>>>(dh, dz, items, emb, n, S, C);
        LAUNCHED(k_scores_dh);
        if (demb && S > 0) {
            k_scores_demb<<<blocks_for((size_t)n * S * C, 256), 256>>>(demb, dz, h, items, n, S, C);
            LAUNCHED(k_scores_demb);
        }
    }
    DONE();
    return 1;
}

/* ------------------------------------------------------------------ DP-SGD: per-user norms */

/* Block sum of a double (blockDim.x = 256), returned to thread 0. */
__device__ double block_sum_d(double v)
{
    __shared__ double sh[256];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o)
            sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    return sh[0];
}

/* One block per user: acc[u] += sum of squares of its rows. */
__global__ void k_user_sqnorms(double *acc, const float *x, const int32_t *off, int C)
{
    const int u = blockIdx.x;
    const size_t a = (size_t)off[u] * C, b = (size_t)off[u + 1] * C;
    double s = 0.0;
    for (size_t i = a + threadIdx.x; i < b; i += blockDim.x)
        s += (double)x[i] * (double)x[i];
    s = block_sum_d(s);
    if (threadIdx.x == 0)
        acc[u] += s;
}

/* One thread per (user, column): the user's column sums, in row order (overwrite). */
__global__ void k_user_colsums(float *sum, float *sumx, const float *x, const float *in, const float *mean,
                               const float *rstd, const int32_t *off, int U, int C)
{
    const int u = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x; /* users on x: gridDim.y ≤ 65535 */
    if (u >= U || c >= C)
        return;
    float s1 = 0.0f, s2 = 0.0f;
    for (int i = off[u]; i < off[u + 1]; i++) {
        const float v = x[(size_t)i * C + c];
        s1 += v;
        if (sumx)
            s2 += v * ((in[(size_t)i * C + c] - mean[i]) * rstd[i]);
    }
    sum[(size_t)u * C + c] = s1;
    if (sumx)
        sumx[(size_t)u * C + c] = s2;
}

typedef struct {
    const float *d[4];
} douts_t;

/* One block per user, the ghost norm: acc[u] += sum_k sum_{t,t'} (<x_t, x_t'> + bias) <g_kt, g_kt'>
 * over the user's rows (each unordered pair twice, the diagonal once), which is sum_k ||X^T G_k||_F^2
 * plus, with bias = 1, the biases' squared norms. */
__global__ void k_linear_user_sqnorms(double *acc, const float *in, douts_t g, int n_out, const int32_t *off, int C,
                                      int OC, float bias)
{
    const int u = blockIdx.x, r0 = off[u], L = off[u + 1] - off[u];
    double s = 0.0;
    for (int t = 0; t < L; t++)
        for (int tp = threadIdx.x; tp <= t; tp += blockDim.x) {
            const float *xa = in + (size_t)(r0 + t) * C, *xb = in + (size_t)(r0 + tp) * C;
            /* in double: over long windows of correlated rows (LayerNorm outputs) and cancelling
             * gradients, float Gram entries lost up to 6e-5 of the squared norm */
            double xx = bias; /* 1 with the biases: a weight on a constant input 1 */
            for (int c = 0; c < C; c++)
                xx += (double)xa[c] * xb[c];
            double gg = 0.0;
            for (int k = 0; k < n_out; k++) {
                const float *ga = g.d[k] + (size_t)(r0 + t) * OC, *gb = g.d[k] + (size_t)(r0 + tp) * OC;
                double d = 0.0;
                for (int c = 0; c < OC; c++)
                    d += (double)ga[c] * gb[c];
                gg += d;
            }
            s += (t == tp ? 1.0 : 2.0) * xx * gg;
        }
    s = block_sum_d(s);
    if (threadIdx.x == 0)
        acc[u] += s;
}

/* One block per user: its tied-embedding gradient has one row per occurrence (its tokens: scale *
 * dx[t] at ids[t]; its loss rows' scores: dz[v][j] * h[v] at items[v][j]; item 0 none); rows of
 * the same item add up, so ||.||^2 = sum over pairs of occurrences of the same item of
 * coef_a coef_b <vec_a, vec_b> (each unordered pair twice, the diagonal once). */
__global__ void k_embed_user_sqnorms(double *acc, const float *dx, const int32_t *ids, float scale,
                                     const int32_t *off, const float *dz, const float *h, const int32_t *items,
                                     const int32_t *loff, int S, int C)
{
    const int u = blockIdx.x;
    const int L = off[u + 1] - off[u], E = L + (loff[u + 1] - loff[u]) * S;
    double s = 0.0;
    for (int a = threadIdx.x; a < E; a += blockDim.x) {
        int32_t ia;
        float ca;
        const float *va;
        if (a < L) {
            ia = ids[off[u] + a], ca = scale, va = dx + (size_t)(off[u] + a) * C;
        } else {
            const int v = loff[u] + (a - L) / S, j = (a - L) % S;
            ia = items[(size_t)v * S + j], ca = dz[(size_t)v * S + j], va = h + (size_t)v * C;
        }
        if (ia == 0)
            continue;
        for (int b = a; b < E; b++) {
            int32_t ib;
            float cb;
            const float *vb;
            if (b < L) {
                ib = ids[off[u] + b], cb = scale, vb = dx + (size_t)(off[u] + b) * C;
            } else {
                const int v = loff[u] + (b - L) / S, j = (b - L) % S;
                ib = items[(size_t)v * S + j], cb = dz[(size_t)v * S + j], vb = h + (size_t)v * C;
            }
            if (ib != ia)
                continue;
            double d = 0.0;
            for (int c = 0; c < C; c++)
                d += (double)(ca * va[c]) * (double)(cb * vb[c]);
            s += (a == b ? 1.0 : 2.0) * d;
        }
    }
    s = block_sum_d(s);
    if (threadIdx.x == 0)
        acc[u] += s;
}

static int fp_kcuda_user_sqnorms(double *acc, const float *x, const int32_t *off, int U, int C)
{
    if (!all_ok({acc, x, off}))
        return 0;
    if (U > 0) {
        k_user_sqnorms<<<U, 256>>>(acc, x, off, C);
        LAUNCHED(k_user_sqnorms);
    }
    DONE();
    return 1;
}

static int fp_kcuda_user_colsums(float *sum, float *sumx, const float *x, const float *in, const float *mean,
                                 const float *rstd, const int32_t *off, int U, int C)
{
    if (!all_ok({sum, sumx, x, sumx ? in : NULL, sumx ? mean : NULL, sumx ? rstd : NULL, off}))
        return 0;
    if (U > 0 && C > 0) {
        k_user_colsums<<<dim3((unsigned)U, (unsigned)((C + 127) / 128)), 128>>>(sum, sumx, x, in, mean, rstd, off, U,
                                                                               C);
        LAUNCHED(k_user_colsums);
    }
    DONE();
    return 1;
}

static int fp_kcuda_linear_user_sqnorms(double *acc, const float *in, const float *const *dout, int n_out,
                                        const int32_t *off, int U, int C, int OC, int with_bias)
{
    if (n_out < 1 || n_out > 4 || !all_ok({acc, in, off}))
        return 0;
    douts_t g = {{NULL, NULL, NULL, NULL}};
    for (int k = 0; k < n_out; k++) {
        if (!dev_ok(dout[k]))
            return 0;
        g.d[k] = dout[k];
    }
    if (U > 0) {
        k_linear_user_sqnorms<<<U, 256>>>(acc, in, g, n_out, off, C, OC, with_bias ? 1.0f : 0.0f);
        LAUNCHED(k_linear_user_sqnorms);
    }
    DONE();
    return 1;
}

static int fp_kcuda_embed_user_sqnorms(double *acc, const float *dx, const int32_t *ids, float scale,
                                       const int32_t *off, const float *dz, const float *h, const int32_t *items,
                                       const int32_t *loff, int U, int S, int C)
{
    if (!all_ok({acc, dx, ids, off, dz, h, items, loff}))
        return 0;
    if (U > 0) {
        k_embed_user_sqnorms<<<U, 256>>>(acc, dx, ids, scale, off, dz, h, items, loff, S, C);
        LAUNCHED(k_embed_user_sqnorms);
    }
    DONE();
    return 1;
}

/* ------------------------------------------------------------------ the module's table */

/* The one exported symbol (kernels_cuda.h). C++20 designated initialisers: in member order, checked. */
extern "C" __attribute__((visibility("default"))) const fp_kcuda_api_t *fp_kcuda_api(int version)
{
    static const fp_kcuda_api_t api = {
        .init = fp_kcuda_init,
        .alloc = fp_kcuda_alloc,
        .release = fp_kcuda_free,
        .take_error = fp_kcuda_take_error,
        .sgemm = fp_kcuda_sgemm,
        .linear_fwd = fp_kcuda_linear_fwd,
        .linear_bwd = fp_kcuda_linear_bwd,
        .layernorm_fwd = fp_kcuda_layernorm_fwd,
        .layernorm_bwd = fp_kcuda_layernorm_bwd,
        .dropout_mask = fp_kcuda_dropout_mask,
        .zero = fp_kcuda_zero,
        .copy = fp_kcuda_copy,
        .layernorm_params_bwd = fp_kcuda_layernorm_params_bwd,
        .add_mul = fp_kcuda_add_mul,
        .mul = fp_kcuda_mul,
        .relu_fwd = fp_kcuda_relu_fwd,
        .relu_bwd = fp_kcuda_relu_bwd,
        .embed_fwd = fp_kcuda_embed_fwd,
        .embed_bwd = fp_kcuda_embed_bwd,
        .gather_rows = fp_kcuda_gather_rows,
        .scatter_rows_add = fp_kcuda_scatter_rows_add,
        .sumsq = fp_kcuda_sumsq,
        .attention_fwd = fp_kcuda_attention_fwd,
        .attention_bwd = fp_kcuda_attention_bwd,
        .sampled_loss_fwd = fp_kcuda_sampled_loss_fwd,
        .sampled_loss_dlogits = fp_kcuda_sampled_loss_dlogits,
        .sampled_scores_bwd = fp_kcuda_sampled_scores_bwd,
        .adam = fp_kcuda_adam,
        .scale_rows = fp_kcuda_scale_rows,
        .user_sqnorms = fp_kcuda_user_sqnorms,
        .user_colsums = fp_kcuda_user_colsums,
        .linear_user_sqnorms = fp_kcuda_linear_user_sqnorms,
        .embed_user_sqnorms = fp_kcuda_embed_user_sqnorms
    };
    return version == FP_KCUDA_API_VERSION ? &api : NULL;
}
