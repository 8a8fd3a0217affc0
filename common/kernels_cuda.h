/* kernels_cuda: the CUDA back-end's entry points, for common/kernels_cpu.c and
 * common/kernels_device.c only (the rest of fedprof uses common/kernels.h).
 *
 * Each fp_kcuda_X mirrors fp_k_X of kernels.h with the same arguments and returns 1 when it ran
 * the call on the GPU (or recorded a device error doing so), 0 when it declined because some
 * array is not device-accessible (the CPU code then runs). Only compiled with the CUDA
 * back-end (FEDPROF_HAVE_CUDA); see kernels_cuda.cu for how it plugs in. */
#ifndef FEDPROF_COMMON_KERNELS_CUDA_H
#define FEDPROF_COMMON_KERNELS_CUDA_H

#include <stddef.h>
#include <stdint.h>

/* 1 when a GPU is usable (then why receives its description), 0 with the reason in why. */
int fp_kcuda_init(char *why, size_t n);
/* Managed memory (NULL on failure or before a successful init); fp_kcuda_free returns 1 if p
 * was CUDA memory and is now freed, 0 if it is not CUDA memory. */
void *fp_kcuda_alloc(size_t bytes);
int fp_kcuda_free(void *p);
/* 1 and the message of the first device error since the last call, or 0. */
int fp_kcuda_take_error(char *msg, size_t n);

int fp_kcuda_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc);
int fp_kcuda_linear_fwd(float *out, const float *in, const float *w, const float *b, int N, int C, int OC);
int fp_kcuda_linear_bwd(float *din, float *dw, float *db, const float *dout, const float *in, const float *w, int N,
                        int C, int OC, int din_accumulate);
int fp_kcuda_layernorm_fwd(float *out, float *mean, float *rstd, const float *in, const float *g, const float *b, int N,
                           int C, float eps);
int fp_kcuda_layernorm_bwd(float *din, float *dg, float *db, const float *dout, const float *in, const float *g,
                           const float *mean, const float *rstd, int N, int C);
int fp_kcuda_dropout_mask(float *mask, size_t n, float p, uint64_t seed);
int fp_kcuda_zero(float *x, size_t n);
int fp_kcuda_add_mul(float *out, const float *x, const float *y, const float *mask, size_t n);
int fp_kcuda_mul(float *out, const float *a, const float *mask, size_t n);
int fp_kcuda_relu_fwd(float *out, const float *in, const float *mask, size_t n);
int fp_kcuda_relu_bwd(float *din, const float *dout, const float *in, const float *mask, size_t n);
int fp_kcuda_embed_fwd(float *out, const int32_t *ids, const int32_t *tpos, const float *wte, const float *wpe,
                       float scale, int N, int C);
int fp_kcuda_embed_bwd(float *dwte, float *dwpe, const float *dout, const int32_t *ids, const int32_t *tpos,
                       float scale, int N, int C);
int fp_kcuda_gather_rows(float *out, const float *src, const int32_t *rows, const float *fill, int n, int C);
int fp_kcuda_scatter_rows_add(float *dsrc, float *dfill, const float *dout, const int32_t *rows, int n, int C);
/* *out = sum of x^2 (double); g = coef * x when g is not NULL. */
int fp_kcuda_sumsq(double *out, float *g, const float *x, size_t n, float coef);
int fp_kcuda_attention_fwd(float *out, float *att, float *attd, const float *mask, const float *q, const float *k,
                           const float *v, const int32_t *off, const size_t *att_off, int U, int C, int H);
int fp_kcuda_attention_bwd(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *att,
                           const float *attd, const float *q, const float *k, const float *v, const int32_t *off,
                           const size_t *att_off, int U, int C, int H);
/* *total = the summed loss (double). */
int fp_kcuda_sampled_loss_fwd(double *total, float *logits, const float *h, const int32_t *items, const float *emb,
                              int n, int S, int C, int kind);
int fp_kcuda_sampled_loss_bwd(float *dh, float *demb, float *logits, const float *h, const int32_t *items,
                              const float *emb, int n, int S, int C, int kind, float scale);
int fp_kcuda_sampled_loss_dlogits(float *logits, int n, int S, int kind, float scale);
int fp_kcuda_sampled_scores_bwd(float *dh, float *demb, const float *dz, const float *h, const int32_t *items,
                                const float *emb, int n, int S, int C);
int fp_kcuda_adam(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2, float eps,
                  double bc1, double bc2);
int fp_kcuda_scale_rows(float *x, const float *s, int n, int C);

#endif
