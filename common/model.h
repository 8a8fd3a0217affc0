/* model: the profile encoder (SASRec-style causal Transformer) as plain forward/backward
 * functions over one flat parameter buffer.
 *
 * Architecture (pre-LayerNorm):
 *   x_t   = item_emb[seq_t] * sqrt(dim) + pos_emb[t]          t = 0..T-1 of the left-padded row
 *   x     = dropout(x) * mask                                 mask_t = (seq_t != 0)
 *   for each block:
 *     x = x + dropout(Wo * MHA(LN1(x)) + bo)                  causal, padding keys masked
 *     x = x + dropout(W2 * relu(W1 * LN2(x) + b1) + b2)       (dropout also after relu)
 *     x = x * mask
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

typedef struct {
    int n_items;   /* catalogue size; item_emb has n_items + 1 rows, row 0 = padding */
    int dim;       /* hidden size, divisible by heads */
    int blocks;
    int heads;
    int maxlen;    /* T: positions */
    float dropout; /* probability, [0, 1) */
    fp_loss_kind loss;
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

/* Forward + loss (+ backward when grads are wanted). Grads are overwritten (not accumulated).
 * training != 0 enables dropout drawn from rng (rng may be NULL when dropout is 0 or not
 * training). loss_out = mean loss over positions with pos != 0 (plus the L2 term).
 * Fails on ids outside [0, n_items], B > max_batch. */
fp_status fp_model_loss(fp_model_t *m, const fp_batch_t *b, int training, fp_rng_t *rng, double *loss_out);
fp_status fp_model_loss_grad(fp_model_t *m, const fp_batch_t *b, fp_rng_t *rng, double *loss_out);

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
