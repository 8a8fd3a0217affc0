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
 *
 * Thread-safety: the thread count is a setting of the calling thread (fp_k_set_threads). The
 * functions are re-entrant on disjoint buffers; each call spawns its own OpenMP team of that
 * many threads, so callers running several models at once should divide the cores between
 * them. No function allocates memory. */
#ifndef FEDPROF_COMMON_KERNELS_H
#define FEDPROF_COMMON_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Threads used by the following kernels called from this thread (clamped to [1, 256]). Also
 * forces OpenBLAS to one thread (a process-wide setting) so that its pool never competes with
 * ours. */
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

/* Inverted dropout mask[n]: each element is 0 with probability p, else 1/(1-p). Element i is a
 * pure function of (seed, i) (SplitMix64 of seed + (i+1)*golden ratio, top 24 bits compared
 * with p), so a mask does not depend on the thread count. p must be in [0, 1). */
void fp_k_dropout_mask(float *mask, size_t n, float p, uint64_t seed);
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
/* Causal multi-head self-attention of packed users. q, k, v, out are [N x C] with head h in
 * columns [h*C/H, (h+1)*C/H); scores scaled by 1/sqrt(C/H); att [att_off[U]] receives the
 * softmax probabilities (row i of a user attends to its rows 0..i; the upper triangle is 0).
 * scratch: N * C floats. */
void fp_k_attention_fwd(float *out, float *att, const float *q, const float *k, const float *v, const int32_t *off,
                        const size_t *att_off, int U, int C, int H, float *scratch);
/* dq, dk, dv [N x C] = (overwrite, for the rows of the U users) gradients given dout [N x C]
 * and the saved att. datt: att_off[U] floats of scratch; scratch: N * C floats. */
void fp_k_attention_bwd(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *att,
                        const float *q, const float *k, const float *v, const int32_t *off, const size_t *att_off,
                        int U, int C, int H, float *scratch);

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

#endif
