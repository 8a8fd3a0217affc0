/* dpsgd: Poisson sampling, clipped sums over sub-batches, grid noise and the plan's accounting
 * (see dpsgd.h). */
#include "client/dpsgd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dp/accountant.h"
#include "dp/csprng.h"
#include "dp/noise.h"

struct fp_dpsgd {
    fp_dpsgd_plan_t p;
    fp_csprng_t *r;    /* sampling and noise */
    uint32_t thr;      /* a user is sampled iff a uniform u32 < thr (q = 1: everyone) */
    int all;
    int32_t *idx;      /* [users] this step's sample, ascending */
    uint32_t *draw;    /* [FP_DPSGD_DRAW] random words */
    double *norms;     /* [model max batch], grown on demand */
    int norms_cap;
};

#define FP_DPSGD_DRAW 1024

int fp_dpsgd_max_batch(int expected_batch)
{
    if (expected_batch < 1)
        expected_batch = 1;
    double m = expected_batch + 4.0 * sqrt((double)expected_batch) + 8.0;
    return m > 1 << 20 ? 1 << 20 : (int)m;
}

/* The grid for noise std sigma * clip on P coordinates: the largest power of two with
 * grid sqrt(P) <= clip / 1024, doubled while sigma clip / grid exceeds 2^29 (the discrete
 * Gaussian sampler takes sigma / grid up to 2^30). */
static double pick_grid(double sigma, double clip, size_t P)
{
    double g = exp2(floor(log2(clip / (1024.0 * sqrt((double)(P > 0 ? P : 1))))));
    while (sigma > 0 && sigma * clip / g > 0x1p29)
        g *= 2.0;
    return g;
}

fp_status fp_dpsgd_plan(double noise_multiplier, double target_epsilon, double clip, double delta, int32_t users,
                        int expected_batch, size_t P, int64_t planned_steps, fp_dpsgd_plan_t *out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "fp_dpsgd_plan: NULL output");
    memset(out, 0, sizeof *out);
    if (!(clip > 0) || !isfinite(clip))
        return FP_FAIL(FP_ERR_INVALID, "dp.clip = %g must be finite and > 0", clip);
    if (!(delta > 0 && delta < 1))
        return FP_FAIL(FP_ERR_INVALID, "dp.delta = %g must be in (0, 1)", delta);
    if (!(noise_multiplier >= 0) || !isfinite(noise_multiplier))
        return FP_FAIL(FP_ERR_INVALID, "dp.noise_multiplier = %g must be finite and >= 0", noise_multiplier);
    if (!(target_epsilon >= 0) || !isfinite(target_epsilon))
        return FP_FAIL(FP_ERR_INVALID, "dp.target_epsilon = %g must be finite and >= 0", target_epsilon);
    if (users < 1 || expected_batch < 1 || P < 1 || planned_steps < 0)
        return FP_FAIL(FP_ERR_INVALID, "fp_dpsgd_plan: %d users, expected batch %d, %zu parameters, %lld steps",
                       users, expected_batch, P, (long long)planned_steps);
    fp_dpsgd_plan_t p = {0};
    p.expected_batch = expected_batch;
    p.users = users;
    p.q = expected_batch >= users ? 1.0 : (double)expected_batch / (double)users;
    p.steps_per_epoch = ((int64_t)users + expected_batch - 1) / expected_batch;
    p.clip = clip;
    p.delta = delta;
    p.target_epsilon = target_epsilon;
    if (target_epsilon > 0) {
        double acc = 0;
        fp_status st = fp_dp_calibrate(target_epsilon, p.q, planned_steps, delta, FP_DP_CONVERSION_IMPROVED, &acc);
        if (st != FP_OK)
            return st;
        /* the noise as added must make up for the grid's widening of the sensitivity; the grid
         * depends on the noise only for huge noise, so this settles at once */
        double sigma = acc;
        for (int it = 0; it < 4; it++) {
            double g = pick_grid(sigma, clip, P);
            sigma = acc * fp_dp_grid_sensitivity(clip, P, g) / clip * (1.0 + 1e-12);
        }
        p.noise_multiplier = sigma;
    } else {
        p.noise_multiplier = noise_multiplier;
    }
    p.grid = pick_grid(p.noise_multiplier, clip, P);
    p.noise_accounted = p.noise_multiplier * clip / fp_dp_grid_sensitivity(clip, P, p.grid);
    if (p.noise_accounted > 0 && !(p.noise_accounted >= FP_DP_SIGMA_MIN && p.noise_accounted <= FP_DP_SIGMA_MAX))
        return FP_FAIL(FP_ERR_RANGE, "DP noise multiplier %g outside the accountant's [%g, %g]", p.noise_accounted,
                       FP_DP_SIGMA_MIN, FP_DP_SIGMA_MAX);
    *out = p;
    return FP_OK;
}

fp_status fp_dpsgd_epsilon(const fp_dpsgd_plan_t *p, int64_t steps, double *eps)
{
    if (!p || !eps)
        return FP_FAIL(FP_ERR_INVALID, "fp_dpsgd_epsilon: NULL argument");
    if (steps > 0 && p->noise_accounted == 0) {
        *eps = INFINITY;
        return FP_OK;
    }
    return fp_dp_epsilon(p->q, p->noise_accounted, steps, p->delta, FP_DP_CONVERSION_IMPROVED, eps, NULL);
}

fp_status fp_dpsgd_create(const fp_dpsgd_plan_t *p, uint64_t seed, fp_dpsgd_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "fp_dpsgd_create: NULL output");
    *out = NULL;
    if (!p || p->users < 1 || !(p->q > 0 && p->q <= 1) || !(p->clip > 0) || !(p->grid > 0))
        return FP_FAIL(FP_ERR_INVALID, "fp_dpsgd_create: plan not filled by fp_dpsgd_plan");
    fp_dpsgd_t *d = calloc(1, sizeof *d);
    if (!d)
        return FP_FAIL(FP_ERR_NOMEM, "DP-SGD state");
    d->p = *p;
    d->idx = malloc((size_t)p->users * sizeof *d->idx);
    d->draw = malloc(FP_DPSGD_DRAW * sizeof *d->draw);
    fp_status st = FP_OK;
    if (!d->idx || !d->draw) {
        st = FP_FAIL(FP_ERR_NOMEM, "DP-SGD sample of %d users", p->users);
    } else if (seed == 0) {
        st = fp_csprng_create_secure(&d->r);
    } else {
        uint8_t key[FP_CSPRNG_SEED_BYTES] = {0};
        for (int i = 0; i < 8; i++)
            key[i] = (uint8_t)(seed >> (8 * i));
        memcpy(key + 8, "fedprof-dpsgd-test-only", 23); /* never a production key: seed != 0 */
        st = fp_csprng_create_seeded(key, &d->r);
    }
    if (st != FP_OK) {
        fp_dpsgd_destroy(d);
        return st;
    }
    /* P(sampled) = thr / 2^32 <= q: rounding down only lowers the true rate, so accounting with
     * q stays an upper bound */
    d->all = p->q >= 1.0;
    d->thr = d->all ? 0 : (uint32_t)floor(ldexp(p->q, 32));
    *out = d;
    return FP_OK;
}

void fp_dpsgd_destroy(fp_dpsgd_t *d)
{
    if (!d)
        return;
    fp_csprng_destroy(d->r);
    free(d->idx);
    free(d->draw);
    free(d->norms);
    free(d);
}

/* This step's Poisson sample into d->idx; returns its size in *k. */
static fp_status poisson(fp_dpsgd_t *d, int *k)
{
    const int32_t n = d->p.users;
    int c = 0;
    if (d->all) {
        for (int32_t u = 0; u < n; u++)
            d->idx[c++] = u;
        *k = c;
        return FP_OK;
    }
    for (int32_t u0 = 0; u0 < n; u0 += FP_DPSGD_DRAW) {
        int32_t w = n - u0 < FP_DPSGD_DRAW ? n - u0 : FP_DPSGD_DRAW;
        fp_status st = fp_csprng_bytes(d->r, d->draw, (size_t)w * sizeof *d->draw);
        if (st != FP_OK)
            return st;
        for (int32_t i = 0; i < w; i++)
            if (d->draw[i] < d->thr)
                d->idx[c++] = u0 + i;
    }
    *k = c;
    return FP_OK;
}

fp_status fp_dpsgd_grads(fp_dpsgd_t *d, fp_model_t *m, fp_batcher_t *bat, int32_t *seq, int32_t *pos, int32_t *neg,
                         fp_rng_t *drng, fp_dpsgd_step_t *info)
{
    if (!d || !m || !bat || !seq || !pos || !info)
        return FP_FAIL(FP_ERR_INVALID, "fp_dpsgd_grads: NULL argument");
    memset(info, 0, sizeof *info);
    if (fp_batcher_n_users(bat) != d->p.users)
        return FP_FAIL(FP_ERR_INVALID, "fp_dpsgd_grads: the batcher has %d users, the plan %d",
                       fp_batcher_n_users(bat), d->p.users);
    const int rows_max = fp_model_max_batch(m), T = fp_model_config(m)->maxlen;
    if (d->norms_cap < rows_max) {
        double *nn = realloc(d->norms, (size_t)rows_max * sizeof *nn);
        if (!nn)
            return FP_FAIL(FP_ERR_NOMEM, "DP-SGD norms");
        d->norms = nn;
        d->norms_cap = rows_max;
    }
    int k = 0;
    fp_status st = poisson(d, &k);
    if (st != FP_OK)
        return st;
    const size_t P = fp_model_layout(m)->total;
    float *G = fp_model_grads(m);
    double loss_sum = 0.0;
    if (k == 0)
        memset(G, 0, P * sizeof *G); /* an empty sample: the step is noise alone */
    for (int s = 0; s < k; s += rows_max) {
        int rows = k - s < rows_max ? k - s : rows_max;
        if ((st = fp_batcher_fill(bat, d->idx + s, rows, seq, pos, neg)) != FP_OK)
            return st;
        fp_batch_t b = {rows, seq, pos, neg};
        double loss = 0.0;
        if ((st = fp_model_loss_grad_clipped(m, &b, drng, d->p.clip, s > 0, d->norms, &loss)) != FP_OK)
            return st;
        int npos = 0;
        for (size_t i = 0; i < (size_t)rows * T; i++)
            npos += pos[i] != 0;
        loss_sum += loss * npos;
        info->positions += npos;
        for (int r = 0; r < rows; r++)
            info->clipped += d->norms[r] > d->p.clip * FP_MODEL_CLIP_MARGIN;
    }
    info->sampled = k;
    info->loss = info->positions ? loss_sum / info->positions : 0.0;
    /* noise, then ÷ the expected batch, in one pass over G */
    const float inv = (float)(1.0 / d->p.expected_batch);
    if ((st = fp_dp_add_noise_scaled(G, P, d->p.noise_multiplier * d->p.clip, d->p.grid, inv, d->r)) != FP_OK)
        return st;
    fp_model_add_l2_grad(m);
    return FP_OK;
}
