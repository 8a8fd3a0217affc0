/* kernels_cuda: the interface between the CUDA back-end module and
 * common/kernels_cpu.c and common/kernels_device.c (the rest of fedprof uses
 * common/kernels.h).
 *
 * The back-end is a shared module, libfedprof_cuda.so (common/kernels_cuda.cu),
 * that kernels_device.c loads with dlopen only when the CUDA device is
 * selected: the CUDA runtime and cuBLAS cost ~220 MB of resident memory just to
 * load, which a CPU run or the coordinator must not pay. Only compiled with the
 * CUDA back-end (FEDPROF_HAVE_CUDA); see kernels_cuda.cu for how it plugs in.
 */
#ifndef FEDPROF_COMMON_KERNELS_CUDA_H
#define FEDPROF_COMMON_KERNELS_CUDA_H

#include <stddef.h>
#include <stdint.h>

/* The module's functions, one per fp_k_* of kernels.h it implements plus its
 * own set-up. Each kernel entry has the arguments of its fp_k_ namesake and
 * returns 1 when it ran the call on the GPU (or recorded a device error doing
 * so), 0 when it declined because some array is not device-accessible (the CPU
 * code then runs). init returns 1 when a GPU is usable (why receives its
 * description) or 0 with the reason; alloc returns managed memory (NULL on
 * failure); release returns 1 if p was CUDA memory and is now freed, 0 if it is
 * not CUDA memory; take_error returns 1 and the message of the first device
 * error since the last call, or 0. */
typedef struct {
    int (*init)(char *why, size_t n);
    void *(*alloc)(size_t bytes);
    int (*release)(void *p);
    int (*take_error)(char *msg, size_t n);
    int (*sgemm)(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);
    int (*linear_fwd)(float *out, const float *in, const float *w, const float *b, int N, int C, int OC);
    int (*linear_bwd)(float *din, float *dw, float *db, const float *dout, const float *in, const float *w, int N,
                      int C, int OC, int din_accumulate);
    int (*layernorm_fwd)(float *out, float *mean, float *rstd, const float *in, const float *g, const float *b, int N,
                         int C, float eps);
    int (*layernorm_bwd)(float *din, float *dg, float *db, const float *dout, const float *in, const float *g,
                         const float *mean, const float *rstd, int N, int C);
    int (*dropout_mask)(float *mask, size_t n, float p, uint64_t seed);
    int (*zero)(float *x, size_t n);
    int (*copy)(float *dst, const float *src, size_t n);
    int (*layernorm_params_bwd)(float *dg, float *db, const float *dout, const float *in, const float *mean,
                                const float *rstd, int N, int C);
    int (*add_mul)(float *out, const float *x, const float *y, const float *mask, size_t n);
    int (*mul)(float *out, const float *a, const float *mask, size_t n);
    int (*relu_fwd)(float *out, const float *in, const float *mask, size_t n);
    int (*relu_bwd)(float *din, const float *dout, const float *in, const float *mask, size_t n);
    int (*embed_fwd)(float *out, const int32_t *ids, const int32_t *tpos, const float *wte, const float *wpe,
                     float scale, int N, int C);
    int (*embed_bwd)(float *dwte, float *dwpe, const float *dout, const int32_t *ids, const int32_t *tpos, float scale,
                     int N, int C);
    int (*gather_rows)(float *out, const float *src, const int32_t *rows, const float *fill, int n, int C);
    int (*scatter_rows_add)(float *dsrc, float *dfill, const float *dout, const int32_t *rows, int n, int C);
    int (*sumsq)(double *out, float *g, const float *x, size_t n, float coef);
    int (*attention_fwd)(float *out, float *att, float *attd, const float *mask, const float *q, const float *k,
                         const float *v, const int32_t *off, const size_t *att_off, int U, int C, int H);
    int (*attention_bwd)(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *att,
                         const float *attd, const float *q, const float *k, const float *v, const int32_t *off,
                         const size_t *att_off, int U, int C, int H);
    int (*sampled_loss_fwd)(double *total, float *logits, const float *h, const int32_t *items, const float *emb, int n,
                            int S, int C, int kind);
    int (*sampled_loss_dlogits)(float *logits, int n, int S, int kind, float scale);
    int (*sampled_scores_bwd)(float *dh, float *demb, const float *dz, const float *h, const int32_t *items,
                              const float *emb, int n, int S, int C);
    int (*adam)(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2, float eps,
                double bc1, double bc2);
    int (*scale_rows)(float *x, const float *s, int n, int C);
    int (*user_sqnorms)(double *acc, const float *x, const int32_t *off, int U, int C);
    int (*user_colsums)(float *sum, float *sumx, const float *x, const float *in, const float *mean, const float *rstd,
                        const int32_t *off, int U, int C);
    /* no scratch on the GPU; n_out <= 4 */
    int (*linear_user_sqnorms)(double *acc, const float *in, const float *const *dout, int n_out, const int32_t *off,
                               int U, int C, int OC, int with_bias);
    int (*embed_user_sqnorms)(double *acc, const float *dx, const int32_t *ids, float scale, const int32_t *off,
                              const float *dz, const float *h, const int32_t *items, const int32_t *loff, int U, int S,
                              int C);
} fp_kcuda_api_t;

#define FP_KCUDA_API_VERSION 4
/* The module's one exported symbol: its table, or NULL when built for another
 * API version. */
typedef const fp_kcuda_api_t *(*fp_kcuda_api_fn)(int version);
#define FP_KCUDA_API_SYMBOL "fp_kcuda_api"

/* The loaded module's table, or NULL (kernels_device.c; no module loaded, or a
 * CPU-only build). */
const fp_kcuda_api_t *fp_kcuda(void);

#endif
