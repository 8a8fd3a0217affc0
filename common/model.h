/* model: the profile encoder (SASRec-style causal Transformer) as plain forward/backward
 * functions over one flat parameter buffer.
 *
 * Architecture (pre-LayerNorm):
 *   x_t   = item_emb[seq_t] * sqrt(dim) + pos_emb[t]          t = 0..T-1 of the left-padded row
 *   x     = dropout(x) * mask                                 mask_t = (seq_t != 0)
 *   for each block:
 *     x = x + dropout(Wo * MHA(LN1(x)) + bo)                  causal, padding keys masked
 *       MHA, per head: dropout_a(softmax(Q K^T / sqrt(dim/heads))) V   (SASRec's dropout on the
 *       attention probabilities, at rate attn_dropout; off when 0; training only)
 *     x = x + dropout(W2 * relu(W1 * LN2(x) + b1) + b2)       (dropout also after relu)
 *     x = x * mask
 *   (block = FP_BLOCK_SASREC, SASRec's own code: q = LN1(x); x = q + dropout(Wo * MHA(Q = q,
 *    K = V = x) + bo); f = LN2(x); x = f + dropout(W2 * relu(W1 * f + b1) + b2).)
 *   h     = LN_final(x)
 *   profile(user) = h at the last position (T-1); score(item) = <profile, item_emb[item]>.
 * Only real (non-padding) positions are computed: rows are packed, attention is per user over
 * its own [len x len] causal window, so padding costs nothing.
 *
 * A model is not thread-safe; it uses `threads` threads internally (set at creation). */
#ifndef FEDPROF_COMMON_MODEL_H
#define FEDPROF_COMMON_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"
#include "common/params.h"
#include "common/rng.h"

typedef enum {
    FP_LOSS_BCE = 0,             /* SASRec: BCE with one sampled negative per position */
    FP_LOSS_SAMPLED_SOFTMAX = 1, /* softmax over the positive and n_neg sampled negatives */
} fp_loss_kind;

typedef enum {
    FP_BLOCK_PRENORM = 0, /* x = x + Attn(LN1(x)); x = x + FFN(LN2(x)) (pre-LayerNorm Transformer) */
    FP_BLOCK_SASREC = 1,  /* SASRec's published code: q = LN1(x), x = q + Attn(Q = q, K = V = x);
                           * f = LN2(x), x = f + FFN(f) (queries normalised, keys/values raw,
                           * residuals from the normalised inputs) */
} fp_block_kind;

typedef struct {
    int n_items;   /* catalogue size; item_emb has n_items + 1 rows, row 0 = padding */
    int dim;       /* hidden size, divisible by heads */
    int blocks;
    int heads;
    int maxlen;    /* T: positions */
    float dropout; /* probability, [0, 1) */
    float attn_dropout; /* dropout on the attention probabilities, [0, 1); 0 = off (default: it
                         * measured worse on Games, see docs/BENCHMARKS.md) */
    fp_loss_kind loss;
    fp_block_kind block; /* block wiring (default FP_BLOCK_PRENORM) */
    int n_neg;     /* negatives per position: 1 for BCE, K for sampled softmax */
    float l2_emb;  /* L2 coefficient on item embeddings (SASRec's l2_emb), >= 0 */
} fp_model_config_t;

/* One training batch, left-padded to T = maxlen. Owned by the caller. */
typedef struct {
    int B;               /* rows (users) */
    const int32_t *seq;  /* [B x T] input item ids, 0 = padding (left) */
    const int32_t *pos;  /* [B x T] next-item targets, 0 = no loss at this position */
    const int32_t *neg;  /* [B x T x n_neg] sampled negative ids (ignored where pos == 0) */
} fp_batch_t;

typedef struct fp_model fp_model_t;

/* Check a config; returns FP_ERR_INVALID with a message naming the field. */
fp_status fp_model_config_validate(const fp_model_config_t *cfg);

/* Create a model for batches of at most max_batch rows, using `threads` threads (>= 1).
 * Parameters are zero until fp_model_init or fp_model_params is filled. Free with
 * fp_model_destroy. */
fp_status fp_model_create(const fp_model_config_t *cfg, int max_batch, int threads, fp_model_t **out);
void fp_model_destroy(fp_model_t *m); /* NULL is a no-op */

const fp_model_config_t *fp_model_config(const fp_model_t *m);
const fp_layout_t *fp_model_layout(const fp_model_t *m);
/* The largest batch (rows) the model was created for. */
int fp_model_max_batch(const fp_model_t *m);
/* The flat buffers (layout-sized, owned by the model). */
float *fp_model_params(fp_model_t *m);
float *fp_model_grads(fp_model_t *m);

/* Random initialisation, deterministic in seed (Xavier-uniform matrices, N(0, 0.02)-like
 * embeddings, LayerNorm gamma = 1, beta = 0, biases 0; padding row 0 stays zero). */
void fp_model_init(fp_model_t *m, uint64_t seed);

/* The same without a model, for holders of parameters that never train (the coordinator): *out
 * (fp_layout_init'ed by the caller, freed with fp_layout_free) receives the layout fp_model_create
 * builds for cfg; fp_model_init_params writes what fp_model_init would into params (layout-sized,
 * the layout of fp_model_layout_build). */
fp_status fp_model_layout_build(const fp_model_config_t *cfg, fp_layout_t *out);
void fp_model_init_params(const fp_layout_t *l, float *params, uint64_t seed);

/* Forward + loss (+ backward when grads are wanted). Grads are overwritten (not accumulated).
 * training != 0 enables dropout drawn from rng (rng may be NULL when dropout is 0 or not
 * training). loss_out = mean loss over positions with pos != 0 (plus the L2 term).
 * Fails on ids outside [0, n_items], B > max_batch. */
fp_status fp_model_loss(fp_model_t *m, const fp_batch_t *b, int training, fp_rng_t *rng, double *loss_out);
fp_status fp_model_loss_grad(fp_model_t *m, const fp_batch_t *b, fp_rng_t *rng, double *loss_out);

/* DP-SGD at record level (the privacy unit is one row of the batch: one user's sequence).
 *
 * Each user's loss L_u is the SUM of its positions' losses (not a batch mean), so that what is
 * clipped is one user's whole contribution. Its gradient g_u over ALL parameters is never
 * materialised: one backward pass yields every user's ||g_u|| (users never interact in the
 * forward pass, so user u's rows of each intermediate gradient are its own): per linear layer the
 * ghost norm <X X^T, G G^T> or the small [in x out] per-user product, whichever costs less; the
 * tied item embedding as sparse per-user rows, an item's input, positive and negative rows summed
 * before squaring; position embeddings, LayerNorm gains/biases and biases directly. That pass
 * keeps each layer's output gradient ("book-keeping", Bu et al. 2023), so sum_u c_u g_u, with
 * c_u = min(1, clip * FP_MODEL_CLIP_MARGIN / ||g_u||), is then formed without a second backward
 * pass: each layer's parameter gradient from its input and its output gradient with user u's rows
 * scaled by c_u. It lands in the grads (accumulate = 0: overwritten; != 0: added, for a Poisson
 * sample split into several sub-batches). Dropout (training, from rng) is drawn once in the
 * forward pass and the backward pass uses its masks: per user and independent of the others.
 *
 * Not included: the l2_emb term. Here it is over the WHOLE item table (not the batch's items, as
 * SASRec.pytorch does), hence data independent: under DP it is plain weight decay, added after
 * the noise with fp_model_add_l2_grad (never clipped, never noised). Not included either: noise
 * and the division by the expected batch size (dp/ and the trainer do those).
 *
 * norms (may be NULL) [b->B] receive each user's ||g_u|| (0 for a row without loss positions);
 * loss_out (may be NULL) the mean data loss per position, before clipping. The norm is computed
 * in float32 arithmetic accumulated in double, so it matches the clipped gradient's own terms to
 * float32 rounding (~1e-6 relative); FP_MODEL_CLIP_MARGIN covers that with room.
 * Errors: those of fp_model_loss_grad; FP_ERR_INVALID (clip not finite and > 0); FP_ERR_NUMERIC
 * (a non-finite norm; the grads are then untouched by this call); FP_ERR_NOMEM (the DP scratch,
 * allocated at the first call: about threads x (max(2 dim^2, dim^2) floats + (n_items + 1) x 4 +
 * maxlen x (2 + n_neg) x dim x 8 bytes) plus max_batch x dim x 2 floats, plus (2 + 8 blocks) x
 * max_batch x maxlen x dim floats for the kept gradients, of which only the rows of a batch's real
 * tokens become resident: +20 MB for Amazon Games at an expected batch of 1024, +94 MB at 4096). */
#define FP_MODEL_CLIP_MARGIN (1.0 - 0x1.0p-12)
fp_status fp_model_loss_grad_clipped(fp_model_t *m, const fp_batch_t *b, fp_rng_t *rng, double clip, int accumulate,
                                     double *norms, double *loss_out);
/* grads[item_emb] += 2 * l2_emb * item_emb (the l2_emb term's gradient; its padding row stays 0).
 * Data independent: DP-SGD adds it after the noise. No-op when l2_emb is 0. */
void fp_model_add_l2_grad(fp_model_t *m);

/* Adam state with the parameter layout (two layout-sized buffers) and its step counter. */
typedef struct {
    float *m, *v;
    int64_t step;
    size_t n;
} fp_adam_t;
fp_status fp_adam_create(fp_adam_t *a, size_t n);
void fp_adam_destroy(fp_adam_t *a);
/* One Adam step on the model's params with its grads (bias-corrected, as torch.optim.Adam). */
void fp_model_adam_step(fp_model_t *m, fp_adam_t *a, float lr, float beta1, float beta2, float eps);

/* Profiles: seq is [B x T] left-padded (B <= max_batch); out is [B x dim], the final
 * hidden state at position T-1 (eval mode, no dropout). A row of all padding gives zeros. */
fp_status fp_model_profiles(fp_model_t *m, const int32_t *seq, int B, float *out);

/* Scores: out[i] = <profile, item_emb[items[i]]> for n items. */
void fp_model_score_items(const fp_model_t *m, const float *profile, const int32_t *items, int n, float *out);
/* All items for B profiles ([B x dim]): out is [B x (n_items + 1)] (column 0 = padding row). */
void fp_model_score_all(const fp_model_t *m, const float *profiles, int B, float *out);

#endif
