/* local: a federated client's local training for one round (see local.h). */
#include "client/local.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

int64_t fp_local_dp_steps(const fp_local_plan_t *p)
{
    if (!p || !p->dp)
        return 0;
    int64_t n = (int64_t)p->epochs * p->dp->steps_per_epoch;
    return p->max_steps > 0 && n > p->max_steps ? p->max_steps : n;
}

fp_status fp_local_train(fp_model_t *m, fp_adam_t *adam, const fp_split_t *s, const fp_local_plan_t *p,
                         const float *w_global, fp_local_report_t *rep)
{
    if (!m || !adam || !s || !p || !rep || (p->fedprox_mu > 0 && !w_global))
        return FP_FAIL(FP_ERR_INVALID, "fp_local_train: NULL argument");
    memset(rep, 0, sizeof *rep);
    if (p->epochs < 1 || p->max_steps < 0 || p->batch < 1 || p->batch > fp_model_max_batch(m) || !(p->lr > 0) ||
        !(p->fedprox_mu >= 0) ||
        (p->dp && fp_dpsgd_max_batch(p->dp->expected_batch) > fp_model_max_batch(m)))
        return FP_FAIL(FP_ERR_INVALID, "local plan: epochs %d, max_steps %d, batch %d (model max %d), lr %g, mu %g",
                       p->epochs, p->max_steps, p->batch, fp_model_max_batch(m), p->lr, p->fedprox_mu);
    const fp_model_config_t *mc = fp_model_config(m);
    /* Under DP the batcher fills the model's rows (a Poisson sample is cut into sub-batches). */
    const int T = mc->maxlen, B = p->dp ? fp_model_max_batch(m) : p->batch, K = mc->n_neg;
    const size_t P = fp_model_layout(m)->total;
    double t0 = fp_now();
    fp_batcher_t *bat = NULL;
    fp_dpsgd_t *dps = NULL;
    int32_t *seq = NULL, *pos = NULL, *neg = NULL;
    fp_status st = fp_batcher_create(s, T, B, K, p->seed, &bat);
    if (st != FP_OK)
        return st;
    if (fp_batcher_n_users(bat) == 0) {
        st = FP_FAIL(FP_ERR_INVALID, "no local user has 2 or more training items: nothing to train on");
        goto out;
    }
    if (p->dp) {
        if (p->dp->users != fp_batcher_n_users(bat)) {
            st = FP_FAIL(FP_ERR_INVALID, "DP plan for %d users, the data has %d trainable users", p->dp->users,
                         fp_batcher_n_users(bat));
            goto out;
        }
        if ((st = fp_dpsgd_create(p->dp, p->dp_seed, &dps)) != FP_OK)
            goto out;
    }
    const int64_t dp_steps = fp_local_dp_steps(p);
    seq = malloc((size_t)B * T * sizeof *seq);
    pos = malloc((size_t)B * T * sizeof *pos);
    neg = malloc((size_t)B * T * K * sizeof *neg);
    if (!seq || !pos || !neg) {
        st = FP_FAIL(FP_ERR_NOMEM, "batch buffers");
        goto out;
    }
    memset(adam->m, 0, P * sizeof(float));
    memset(adam->v, 0, P * sizeof(float));
    adam->step = 0;
    fp_rng_t drng;
    fp_rng_seed(&drng, p->seed ^ 0x10ca1d0ULL);
    float *w = fp_model_params(m), *g = fp_model_grads(m);
    double loss_sum = 0.0;
    for (int e = 0; e < p->epochs; e++) {
        int epoch_end = 0;
        while (!epoch_end) {
            if (p->max_steps > 0 && rep->steps >= p->max_steps)
                goto done;
            int rows = 0;
            double loss = 0.0;
            if (dps) {
                if (rep->steps >= dp_steps)
                    goto done;
                /* one DP-SGD step: Poisson sample, per-user clipped sum, noise, / expected batch */
                fp_dpsgd_step_t si;
                if ((st = fp_dpsgd_grads(dps, m, bat, seq, pos, neg, &drng, &si)) != FP_OK)
                    goto out;
                rows = si.sampled;
                loss = si.loss;
                rep->clipped += si.clipped;
                epoch_end = (rep->steps + 1) % p->dp->steps_per_epoch == 0;
            } else {
                if ((st = fp_batcher_next(bat, seq, pos, neg, &rows, &epoch_end)) != FP_OK)
                    goto out;
                if (rows == 0)
                    break;
                fp_batch_t b = {rows, seq, pos, neg};
                if ((st = fp_model_loss_grad(m, &b, &drng, &loss)) != FP_OK)
                    goto out;
            }
            if (!isfinite(loss)) {
                st = FP_FAIL(FP_ERR_NUMERIC, "local loss became %f at step %lld (lower the learning rate?)", loss,
                             (long long)rep->steps);
                goto out;
            }
            if (p->fedprox_mu > 0) {
                /* ∇ (μ/2)‖w − w_global‖² = μ (w − w_global) */
                const float mu = p->fedprox_mu;
#pragma omp parallel for schedule(static) if (P > 65536)
                for (size_t i = 0; i < P; i++)
                    g[i] += mu * (w[i] - w_global[i]);
            }
            fp_model_adam_step(m, adam, p->lr, p->beta1, p->beta2, p->eps);
            loss_sum += loss;
            rep->steps++;
            rep->sequences += rows;
        }
    }
done:
    rep->mean_loss = rep->steps ? loss_sum / (double)rep->steps : 0.0;
    rep->seconds = fp_now() - t0;
    if (!fp_vec_all_finite(w, P))
        st = FP_FAIL(FP_ERR_NUMERIC, "local training produced NaN/Inf parameters");
out:
    free(seq);
    free(pos);
    free(neg);
    fp_batcher_destroy(bat);
    fp_dpsgd_destroy(dps);
    return st;
}
