/* dpsgd: one step of DP-SGD at record level (the privacy unit is one user's whole sequence), for
 * the centralised trainer (client/train.c) and a federated client's local training.
 *
 * A step: every trainable user is included independently with probability q = expected_batch /
 * users (Poisson sampling, from the CSPRNG: the sample is part of the mechanism); the sample is
 * cut into sub-batches of the model's max_batch rows (never truncated: every sampled user
 * counts), and fp_model_loss_grad_clipped accumulates sum_u c_u g_u over them (per-user clipping
 * to `clip` of the gradient of the user's summed loss); then dp/noise's fp_dp_add_noise rounds the
 * sum to a fixed grid and adds grid x discrete Gaussian noise of std noise_multiplier x clip; the
 * result is divided by the EXPECTED batch (a fixed number, so the division is post-processing)
 * and the data-independent l2_emb weight decay is added. The caller then steps Adam.
 *
 * Accounting: rounding to the grid widens the L2 sensitivity from clip to clip + grid sqrt(P)
 * (fp_dp_grid_sensitivity); the grid is the power of two that keeps that widening under
 * clip / 1024 (and sigma / grid within the sampler's range), and the accountant uses
 * noise_accounted = noise_multiplier x clip / (clip + grid sqrt(P)). q is computed from the
 * number of trainable users, which (as in Opacus) is treated as public.
 *
 * Not thread-safe; one object per training run. */
#ifndef FEDPROF_CLIENT_DPSGD_H
#define FEDPROF_CLIENT_DPSGD_H

#include <stddef.h>
#include <stdint.h>

#include "common/data.h"
#include "common/errors.h"
#include "common/model.h"
#include "common/rng.h"

typedef struct {
    int expected_batch;        /* E[sample size] */
    int32_t users;             /* trainable users sampled from */
    double q;                  /* expected_batch / users, at most 1 */
    int64_t steps_per_epoch;   /* ceil(users / expected_batch) = ceil(1 / q) */
    double clip;               /* per-user L2 bound */
    double noise_multiplier;   /* noise std / clip, as added (0: no noise, epsilon infinite) */
    double noise_accounted;    /* the multiplier the accountant uses (see above) */
    double grid;               /* rounding grid of the noised sum (a power of two) */
    double delta;
    double target_epsilon;     /* 0: noise_multiplier was given, not calibrated */
} fp_dpsgd_plan_t;

/* Rows to create the model with for an expected Poisson batch: expected + 4 sqrt(expected) + 8
 * (a larger sample is split into sub-batches, so this is only about speed). */
int fp_dpsgd_max_batch(int expected_batch);

/* Fill a plan. target_epsilon > 0: the noise is calibrated (dp/accountant) so that planned_steps
 * steps spend at most target_epsilon at delta; else noise_multiplier is used as given. P is the
 * number of parameters. Errors: FP_ERR_INVALID (a parameter out of range), FP_ERR_RANGE (the
 * target cannot be met, or a noise level outside the accountant's range). */
fp_status fp_dpsgd_plan(double noise_multiplier, double target_epsilon, double clip, double delta, int32_t users,
                        int expected_batch, size_t P, int64_t planned_steps, fp_dpsgd_plan_t *out);

/* epsilon after `steps` steps of the plan (improved RDP conversion); +inf without noise. */
fp_status fp_dpsgd_epsilon(const fp_dpsgd_plan_t *p, int64_t steps, double *eps);

typedef struct fp_dpsgd fp_dpsgd_t;

/* A stepper for the plan. seed 0: Poisson sampling and noise from fp_csprng_create_secure
 * (production); else from a generator seeded with it (tests and benchmarks: no privacy).
 * Free with fp_dpsgd_destroy (NULL is a no-op). */
fp_status fp_dpsgd_create(const fp_dpsgd_plan_t *p, uint64_t seed, fp_dpsgd_t **out);
void fp_dpsgd_destroy(fp_dpsgd_t *d);

typedef struct {
    int sampled;   /* users in this step's Poisson sample */
    int clipped;   /* of which had their gradient scaled down */
    int positions; /* loss positions of the sample */
    double loss;   /* mean data loss per position of the sample (before clipping), 0 if none */
} fp_dpsgd_step_t;

/* One step's gradient into the model's grads (ready for fp_model_adam_step). bat is the batcher
 * of the plan's users (fp_batcher_n_users(bat) == p->users) whose batch holds at least the
 * model's max_batch rows, and seq/pos/neg are row buffers of that size; drng draws dropout.
 * Errors: those of the model and of dp/noise (the grads are then garbage: do not step). */
fp_status fp_dpsgd_grads(fp_dpsgd_t *d, fp_model_t *m, fp_batcher_t *bat, int32_t *seq, int32_t *pos, int32_t *neg,
                         fp_rng_t *drng, fp_dpsgd_step_t *info);

#endif
