/* kernels: the compute back-end of the model, as a small set of plain functions.
 *
 * The model (common/model.c) calls only these; kernels_cpu.c implements them with OpenBLAS
 * (single-threaded) plus loops parallelised with OpenMP; a CUDA back-end can implement the same
 * header. Every tensor is a dense row-major float array; its shape is given in brackets on the
 * argument. N is a number of rows ("tokens"), C the width of a row.
 *
 * Packed attention: the real (non-padding) tokens of U users are stored back to back; user u
 * owns rows [off[u], off[u+1]) in time order, so attention runs over each user's own
 * [L x L] causal window (L = off[u+1] - off[u]) and padding costs nothing.
 *
 * Conventions that make results reproducible:
 *  - backward functions say, per argument, whether they overwrite (=) or accumulate (+=);
 *  - every reduction over rows (bias / gamma / embedding gradients) is summed in row order by
 *    one thread, so those results do not depend on the thread count; only the sgemm splits
 *    may round differently with a different thread count;
 *  - dropout masks are a pure function of (seed, element index), not of the thread schedule.
 * On the CUDA back-end the same formulas run with other summation orders (cuBLAS, parallel
 * reductions, atomic scatter-adds) and fused multiply-adds: results equal the CPU's to float
 * rounding, not bit for bit, and may vary between runs; dropout masks are bit-identical. The
 * tolerances are stated and checked in tests/test_cuda.c.
 *
 * Thread-safety: the thread count is a setting of the calling thread (fp_k_set_threads). The
 * CPU functions are re-entrant on disjoint buffers; each call spawns its own OpenMP team of that
 * many threads, so callers running several models at once should divide the cores between
 * them. The CUDA back-end is not: one cuBLAS handle, its scratch buffers and its sticky error are
 * process-wide, so with CUDA selected only one thread at a time may call these functions (every
 * fedprof program trains one model at a time). No function allocates memory (but fp_k_alloc,
 * which is for the caller). */
#ifndef FEDPROF_COMMON_KERNELS_H
#define FEDPROF_COMMON_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"

/* ---- the device behind these functions (kernels_device.c) ----
 * CPU: OpenBLAS and OpenMP (kernels_cpu.c), always. CUDA: cuBLAS and CUDA kernels
 * (kernels_cuda.cu), in builds made with the CUDA toolkit (FEDPROF_CUDA=AUTO finds it) and only
 * where a GPU is present. With CUDA selected, buffers from fp_k_alloc are CUDA managed memory and
 * every kernel whose arrays all live there runs on the GPU; a call given a plain host array
 * runs on the CPU instead, so results never depend on where a caller's buffer came from. */
typedef enum { FP_K_DEVICE_AUTO = 0, FP_K_DEVICE_CPU = 1, FP_K_DEVICE_CUDA = 2 } fp_k_device;
/* "auto", "cpu", "cuda". */
const char *fp_k_device_name(fp_k_device d);
fp_status fp_k_device_parse(const char *s, fp_k_device *out);
/* 1 if this build has the CUDA back-end. */
int fp_k_cuda_built(void);
/* Load the CUDA back-end module (libfedprof_cuda.so, with the CUDA runtime and cuBLAS) without
 * selecting the device: 1, or 0 with the reason in why. fp_k_device_select does this itself, only
 * where an NVIDIA device node exists; this is for checking a build (tests). */
int fp_k_cuda_module_check(char *why, size_t n);
/* Choose the device for the whole process, before any model is created. AUTO takes CUDA when it
 * is usable and the CPU otherwise; CUDA fails with FP_ERR_UNSUPPORTED and the reason (no CUDA
 * back-end in this build, no GPU, no driver) when it is not. *got (may be NULL) receives the
 * device chosen and info (may be NULL) one line for the log, e.g. "cpu (no GPU: ...)". */
fp_status fp_k_device_select(fp_k_device want, fp_k_device *got, char *info, size_t n);
fp_k_device fp_k_device_current(void);
/* Memory for the kernels' arrays on the current device: 64-byte aligned host memory on the CPU,
 * managed memory (also host-accessible) with CUDA. Not zeroed. NULL on failure. Free with
 * fp_k_free (which frees either kind). */
void *fp_k_alloc(size_t bytes);
void fp_k_free(void *p);
/* FP_OK, or the first device error since the last call (its statement, file and line left as
 * the error message), which it clears. The kernels themselves return nothing: callers check this
 * after a pass (the model does, after every forward and backward). */
fp_status fp_k_take_error(void);

/* Threads used by the following kernels called from this thread (clamped to [1, 256]), and by
 * this thread's other OpenMP regions (omp_set_num_threads: the DP noise's). Also forces OpenBLAS
 * to one thread (a process-wide setting) so that its pool never competes with ours. */
void fp_k_set_threads(int n);
int fp_k_threads(void);

/* Row-major C[M x N] = alpha * op(A) op(B) + beta * C, op(X) = X^T when trans_x != 0.
 * A is [M x K] (or [K x M] transposed) with row stride lda; B is [K x N] (or [N x K]) with
 * stride ldb. Split over threads along the larger of M and N. */
void fp_k_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc);

/* Linear layer with weights stored [in x out], so that y = x W + b.
 * out[N x OC] = in[N x C] w[C x OC] + b[OC] (b may be NULL). */
void fp_k_linear_fwd(float *out, const float *in, const float *w, const float *b, int N, int C, int OC);
/* dw[C x OC] += in^T dout; db[OC] += column sums of dout (db may be NULL);
 * din[N x C] = dout w^T, or += when din_accumulate (din may be NULL: not wanted). */
void fp_k_linear_bwd(float *din, float *dw, float *db, const float *dout, const float *in, const float *w, int N,
                     int C, int OC, int din_accumulate);

/* LayerNorm over the last axis (biased variance, as torch.nn.LayerNorm):
 * out[N x C] = (in - mean) * rstd * g[C] + b[C]; mean[N], rstd[N] = 1/sqrt(var + eps) saved. */
void fp_k_layernorm_fwd(float *out, float *mean, float *rstd, const float *in, const float *g, const float *b, int N,
                        int C, float eps);
/* din[N x C] +=, dg[C] +=, db[C] += (LayerNorm backward with the saved mean and rstd). */
void fp_k_layernorm_bwd(float *din, float *dg, float *db, const float *dout, const float *in, const float *g,
                        const float *mean, const float *rstd, int N, int C);
/* The parameter half alone: dg[C] += column sums of dout * xhat, db[C] += column sums of dout. */
void fp_k_layernorm_params_bwd(float *dg, float *db, const float *dout, const float *in, const float *mean,
                               const float *rstd, int N, int C);

/* Inverted dropout mask[n]: each element is 0 with probability p, else 1/(1-p). Element i is a
 * pure function of (seed, i) (SplitMix64 of seed + (i+1)*golden ratio, top 24 bits compared
 * with p), so a mask does not depend on the thread count. p must be in [0, 1). */
void fp_k_dropout_mask(float *mask, size_t n, float p, uint64_t seed);
/* x[n] = 0 (on the device the array lives on: the model zeroes its device buffers this way). */
void fp_k_zero(float *x, size_t n);
/* dst[n] = src[n] (no overlap). */
void fp_k_copy(float *dst, const float *src, size_t n);
/* out[n] = x + y * mask (mask NULL: 1). out may alias x or y. */
void fp_k_add_mul(float *out, const float *x, const float *y, const float *mask, size_t n);
/* out[n] = a * mask. out may alias a. */
void fp_k_mul(float *out, const float *a, const float *mask, size_t n);
/* out[n] = relu(in) * mask (mask NULL: 1). */
void fp_k_relu_fwd(float *out, const float *in, const float *mask, size_t n);
/* din[n] = dout * mask * (in > 0) (overwrite). */
void fp_k_relu_bwd(float *din, const float *dout, const float *in, const float *mask, size_t n);

/* out[N x C] row i = wte[ids[i]] * scale + wpe[tpos[i]]; wte is [V x C], wpe [T x C]
 * (ids and tpos are trusted: the caller validated them). */
void fp_k_embed_fwd(float *out, const int32_t *ids, const int32_t *tpos, const float *wte, const float *wpe,
                    float scale, int N, int C);
/* dwte[V x C] += scale * dout rows at ids; dwpe[T x C] += dout rows at tpos (dwpe may be
 * NULL). Rows are owned by one thread each (id modulo threads): no atomics, fixed order. */
void fp_k_embed_bwd(float *dwte, float *dwpe, const float *dout, const int32_t *ids, const int32_t *tpos, float scale,
                    int N, int C);

/* out[n x C] row i = src[rows[i]], or fill[C] where rows[i] < 0 (fill NULL: zeros). */
void fp_k_gather_rows(float *out, const float *src, const int32_t *rows, const float *fill, int n, int C);
/* dsrc[rows[i]] += dout[i] (rows are distinct), or dfill[C] += dout[i] where rows[i] < 0. */
void fp_k_scatter_rows_add(float *dsrc, float *dfill, const float *dout, const int32_t *rows, int n, int C);

/* Attention storage for U packed users with H heads: att_off[u] (U+1 entries) is where user
 * u's H probability matrices [H x L x L] start; returns the total (= att_off[U]) in floats. */
size_t fp_k_attention_layout(const int32_t *off, int U, int H, size_t *att_off);
/* Causal multi-head self-attention of packed users (user u's rows are off[u] .. off[u+1] − 1, with
 * off[0] = 0 and N = off[U]: the CUDA kernels rely on it). q, k, v, out are [N x C] with head h in
 * columns [h*C/H, (h+1)*C/H); scores scaled by 1/sqrt(C/H); att [att_off[U]] receives the
 * softmax probabilities P (row i of a user attends to its rows 0..i; the upper triangle is 0).
 * Dropout on the probabilities (SASRec's): mask [att_off[U]] (same layout as att, e.g. from
 * fp_k_dropout_mask; NULL = none) multiplies P before it meets v, and attd [att_off[U]]
 * receives Pd = P * mask, what out = Pd v uses; attd may alias mask (the mask is then
 * overwritten), and is not written when mask is NULL. scratch: N * C floats. */
void fp_k_attention_fwd(float *out, float *att, float *attd, const float *mask, const float *q, const float *k,
                        const float *v, const int32_t *off, const size_t *att_off, int U, int C, int H,
                        float *scratch);
/* dq, dk, dv [N x C] = (overwrite, for the rows of the U users) gradients given dout [N x C],
 * the saved att and, when the forward used a dropout mask, its attd (NULL: no dropout). The
 * mask itself is not needed: with dPd = dout v^T, dscores = Pd * dPd - P * rowsum(Pd * dPd).
 * datt: att_off[U] floats of scratch; scratch: N * C floats. */
void fp_k_attention_bwd(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *att,
                        const float *attd, const float *q, const float *k, const float *v, const int32_t *off,
                        const size_t *att_off, int U, int C, int H, float *scratch);

/* Sampled losses over n rows of hidden states h[n x C], each scored against S items
 * items[n x S] (item 0 of a row = the positive, 1..S-1 = negatives) of the table emb[V x C]. */
#define FP_K_LOSS_BCE 0     /* -log s(z0) - sum_j>0 log(1 - s(z_j)), s = logistic */
#define FP_K_LOSS_SOFTMAX 1 /* -log softmax(z)_0 over the S logits */
/* logits[n x S] = <h_i, emb[items_ij]>; returns the loss summed over rows (double). */
double fp_k_sampled_loss_fwd(float *logits, const float *h, const int32_t *items, const float *emb, int n, int S,
                             int C, int kind);
/* Gradient of scale * (summed loss): logits [n x S] (from the fwd) is overwritten with
 * dloss/dlogits; dh[n x C] = (overwrite); demb[V x C] += (rows owned by one thread each). */
void fp_k_sampled_loss_bwd(float *dh, float *demb, float *logits, const float *h, const int32_t *items,
                           const float *emb, int n, int S, int C, int kind, float scale);
/* out[n] = <x[C], emb[items[i]]>. */
void fp_k_gather_dot(float *out, const float *x, const int32_t *items, const float *emb, int n, int C);

/* g[n] = coef * x (overwrite); returns sum of x^2 in double, summed in fixed-size chunks in a
 * fixed order (independent of the thread count). */
double fp_k_sumsq_scaled_copy(float *g, const float *x, size_t n, float coef);
/* Sum of x[n]^2, the same value fp_k_sumsq_scaled_copy returns (same chunks, same order). */
double fp_k_sumsq(const float *x, size_t n);

/* One Adam step over n floats, as torch.optim.Adam (no weight decay):
 * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
 * with bc1 = 1 - b1^t, bc2 = 1 - b2^t supplied by the caller. */
void fp_k_adam(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2, float eps,
               double bc1, double bc2);

/* ---- DP-SGD: per-user gradient norms without per-user gradients, and the pieces of the clipped
 * backward pass (common/model.c's fp_model_loss_grad_clipped). Users are packed as for attention:
 * user u owns token rows [off[u], off[u+1]) (and, where said, loss rows [loff[u], loff[u+1])).
 * Each user's result is computed by one thread in a fixed order, so it does not depend on the
 * thread count. Squared norms are accumulated in double. */

/* First half of fp_k_sampled_loss_bwd: logits [n x S] (from the fwd) is overwritten with
 * d(scale * summed loss)/dlogits. */
void fp_k_sampled_loss_dlogits(float *logits, int n, int S, int kind, float scale);
/* Second half: dh[n x C] = (overwrite) sum_j dz_ij emb[items_ij]; demb[V x C] += dz_ij h_i (rows
 * owned by one thread each); demb may be NULL (not wanted). Together the two do the same
 * operations in the same order as fp_k_sampled_loss_bwd. */
void fp_k_sampled_scores_bwd(float *dh, float *demb, const float *dz, const float *h, const int32_t *items,
                             const float *emb, int n, int S, int C);
/* x[n x C]: row i *= s[i]. */
void fp_k_scale_rows(float *x, const float *s, int n, int C);
/* acc[u] += sum of squares of x's rows [off[u], off[u+1]) (x [* x C]). */
void fp_k_user_sqnorms(double *acc, const float *x, const int32_t *off, int U, int C);
/* Per-user column sums (overwrite): sum[u] = sum of x's rows of user u, and, when sumx is not
 * NULL, sumx[u] = sum of x * xhat, xhat = (in - mean) * rstd row-wise (LayerNorm's gamma
 * gradient; in, mean, rstd are unused when sumx is NULL). sum, sumx: [U x C]. */
void fp_k_user_colsums(float *sum, float *sumx, const float *x, const float *in, const float *mean,
                       const float *rstd, const int32_t *off, int U, int C);
/* Squared Frobenius norms of per-user weight gradients of n_out linear layers that share their
 * input in [N x C] (y_k = in W_k, W_k [C x OC]; Wq, Wk, Wv share one): with X = user u's rows of
 * in and G_k its rows of dout[k] [N x OC], acc[u] += sum_k ||X^T G_k||_F^2, plus, when with_bias,
 * the biases' sum_k ||column sums of G_k||^2 (a bias is a weight on a constant input 1). Per user, whichever
 * is cheaper: the ghost norm <X X^T, G_k G_k^T> (two [L x L] Gram matrices, L^2 (C + n_out OC)
 * multiply-adds) or the materialised [C x OC] product (n_out L C OC). scratch: fp_k_threads() x
 * fp_k_linear_user_sqnorms_scratch(longest user, C, OC) floats (at most max(2 C^2, C OC) + OC). */
size_t fp_k_linear_user_sqnorms_scratch(int max_len, int C, int OC);
void fp_k_linear_user_sqnorms(double *acc, const float *in, const float *const *dout, int n_out, const int32_t *off,
                              int U, int C, int OC, int with_bias, float *scratch);
/* The tied item embedding's per-user gradient norm. User u's gradient has rows scale * dx[t] at
 * ids[t] for its tokens t in [off[u], off[u+1]) (the input lookup) and dz[v][j] * h[v] at
 * items[v][j] for its loss rows v in [loff[u], loff[u+1]), j < S (the output scores); rows of
 * the same item are summed before squaring (an item can be input, positive and negative of one
 * user), and item 0 (padding) has no gradient. acc[u] += the squared norm. scratch: fp_k_threads()
 * x fp_k_embed_user_sqnorms_scratch(...) bytes, 8-byte aligned, whose first (n_items + 1) int32 of
 * each thread's part must be -1 before the first call (they are left so on return). */
size_t fp_k_embed_user_sqnorms_scratch(int n_items, int max_tok, int max_loss, int S, int C);
void fp_k_embed_user_sqnorms(double *acc, const float *dx, const int32_t *ids, float scale, const int32_t *off,
                             const float *dz, const float *h, const int32_t *items, const int32_t *loff, int U,
                             int n_items, int max_tok, int max_loss, int S, int C, void *scratch);

#endif
