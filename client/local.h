/* local: one round of a federated client's local training: start from the global model, run the
 * plan's local epochs (or max_steps) of Adam on the partner's own users, optionally with the
 * FedProx proximal term (μ/2)·‖w − w_global‖², and leave the trained parameters in the model.
 * Adam's moments start from zero every round (the global model changed under them).
 * Not thread-safe; the model's thread count is used. */
#ifndef FEDPROF_CLIENT_LOCAL_H
#define FEDPROF_CLIENT_LOCAL_H

#include <stdint.h>

#include "client/dpsgd.h"
#include "common/data.h"
#include "common/errors.h"
#include "common/model.h"

typedef struct {
    int epochs;          /* >= 1 */
    int max_steps;       /* 0: no cap */
    int batch;           /* <= the model's max batch */
    float lr, beta1, beta2, eps;
    float fedprox_mu;    /* >= 0 */
    uint64_t seed;       /* batches, negatives and dropout of this round */
    /* Record-level DP-SGD (client/dpsgd.h): NULL for plain training. With it every step is a
     * Poisson-sampled, per-user clipped, noised step of dp->expected_batch users on average
     * (batch is not used); an epoch is dp->steps_per_epoch steps; the model must hold at least
     * fp_dpsgd_max_batch(dp->expected_batch) rows. FedProx's term is data-independent, so it
     * is added after the noise (post-processing). */
    const fp_dpsgd_plan_t *dp;
    uint64_t dp_seed;    /* with dp: 0 = sampling and noise from the CSPRNG (production); tests only */
} fp_local_plan_t;

/* Steps fp_local_train takes under DP (what the ledger must admit before training):
 * epochs x dp->steps_per_epoch, capped by max_steps. */
int64_t fp_local_dp_steps(const fp_local_plan_t *p);

typedef struct {
    int64_t steps;
    int64_t sequences;   /* rows trained (under DP: users sampled) */
    int64_t clipped;     /* DP: sampled users whose gradient was scaled down */
    double mean_loss;    /* over the round's steps */
    double seconds;
} fp_local_report_t;

/* Train m (whose params hold the global model, equal to w_global[] when fedprox_mu > 0; w_global
 * may be NULL otherwise) on split s. adam is the caller's scratch state (reset here). */
fp_status fp_local_train(fp_model_t *m, fp_adam_t *adam, const fp_split_t *s, const fp_local_plan_t *p,
                         const float *w_global, fp_local_report_t *rep);

#endif
