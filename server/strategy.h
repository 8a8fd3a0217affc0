/* strategy: how the coordinator turns the round's client updates into the next global model.
 *
 * Two halves, used in this order every round:
 *  1. Aggregation (fp_agg_*): each accepted update Δ_i = w_local,i − w_global (P floats) is added
 *     as it arrives. The mean strategies keep one running double-precision weighted sum, so memory
 *     is O(P) whatever the number of clients (8·P bytes). The robust strategies (coordinate-wise
 *     median, trimmed mean) must see every value of a coordinate at once: they buffer each update
 *     (4·P bytes per update, up to max_updates) and compute the statistic at the end.
 *     The result is the aggregated update Δ̄ (P floats).
 *  2. Server optimizer (fp_sopt_*): applies Δ̄ to the global model w, treating −Δ̄ as a
 *     pseudo-gradient (Reddi et al. 2021, "Adaptive Federated Optimization"):
 *       FedAvg     w ← w + η·Δ̄                                  (η = server_lr, 1 by default)
 *       FedAvgM    m ← β·m + Δ̄;  w ← w + η·m                     (β = momentum)
 *       FedAdagrad m ← β1·m + (1−β1)·Δ̄;  v ← v + Δ̄²;                     w ← w + η·m/(√v + τ)
 *       FedAdam    same m;                v ← β2·v + (1−β2)·Δ̄²;           same w update
 *       FedYogi    same m;                v ← v − (1−β2)·Δ̄²·sign(v − Δ̄²);  same w update
 *     in that order: the w update uses the new m and v (Algorithm 2 of the paper; sign(0) = 0).
 *     No bias correction, as in the paper; v starts at τ², m at 0. Median and trimmed mean use
 *     the FedAvg rule on their robust Δ̄.
 *     Each coordinate's rule is evaluated in double and its new w, m, v rounded to float once.
 * FedProx is client-side (a proximal term in local training) and uses any of these.
 *
 * Weights: the mean strategies weight update i by weight_i > 0 (example-weighted FedAvg passes
 * the client's example count, uniform FedAvg passes 1); Δ̄ = Σ w_i Δ_i / Σ w_i. Median and
 * trimmed mean ignore weights (unweighted, as in Yin et al. 2018). Sums are accumulated in double.
 * Trimmed mean with fraction β ∈ [0, 0.5): per coordinate, drop the ⌊β·n⌋ smallest and largest
 * of the n values and average the rest (n − 2⌊β·n⌋ ≥ 1 always holds). Median of an even count:
 * the mean of the two middle values. Both use a selection per coordinate, not a sort (O(n)
 * on average, O(n log n) at worst).
 *
 * Thread-safety: an aggregator or optimizer is used by one thread at a time (the coordinator
 * serialises adds under its lock). Inside one call the work over coordinates may be spread over
 * OpenMP threads (up to omp_get_max_threads()); every coordinate is computed on its own, so the
 * results are bit-identical whatever the thread count. Every function that can fail returns
 * fp_status and leaves a message (common/errors.h); on failure nothing is changed and *out (for
 * the _create functions) is left untouched. */
#ifndef FEDPROF_SERVER_STRATEGY_H
#define FEDPROF_SERVER_STRATEGY_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"

typedef enum {
    FP_STRAT_FEDAVG = 0,
    FP_STRAT_FEDAVGM = 1,
    FP_STRAT_FEDADAGRAD = 2,
    FP_STRAT_FEDADAM = 3,
    FP_STRAT_FEDYOGI = 4,
    FP_STRAT_MEDIAN = 5,
    FP_STRAT_TRIMMED_MEAN = 6,
} fp_strategy_kind;

/* "fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "median", "trimmed_mean"
 * ("unknown" for a value outside the enum; never NULL). */
const char *fp_strategy_name(fp_strategy_kind k);
/* Parse a name above (case-sensitive, exact); FP_ERR_INVALID listing the accepted names
 * otherwise (also for NULL), *out untouched. */
fp_status fp_strategy_parse(const char *name, fp_strategy_kind *out);

typedef struct {
    fp_strategy_kind kind;
    double server_lr;       /* η > 0; default 1, but 0.01 for the adaptive ones (each of their steps
                               moves a coordinate by about η whatever the scale of Δ̄) */
    double momentum;        /* β of FedAvgM, [0, 1); default 0.9 */
    double beta1, beta2;    /* adaptive: [0, 1); defaults 0.9, 0.99 */
    double tau;             /* adaptive: in [1e-18, 1e18] (τ² is stored as a float); default 1e-3 */
    double trim_fraction;   /* trimmed mean: [0, 0.5); default 0.1 */
} fp_strategy_opts_t;

/* Defaults above for kind (every field is set, used by kind or not). */
void fp_strategy_defaults(fp_strategy_opts_t *o, fp_strategy_kind kind);
/* Range checks of the fields kind uses (server_lr always; momentum for FedAvgM; beta1, beta2,
 * tau for the adaptive ones; trim_fraction for trimmed mean; the others are ignored);
 * FP_ERR_RANGE naming the option, FP_ERR_INVALID for an unknown kind. */
fp_status fp_strategy_validate(const fp_strategy_opts_t *o);

/* 1 if kind buffers every update (median, trimmed mean), else 0. */
int fp_strategy_buffers(fp_strategy_kind k);

/* ---- Aggregation of one round ---------------------------------------------------------------- */

typedef struct fp_agg fp_agg_t;

/* An aggregator for updates of n_params floats. max_updates bounds how many updates one round
 * may add (>= 1); the buffering strategies allocate their buffers lazily, one update at a time,
 * up to that many. Free with fp_agg_destroy. Errors: invalid options (as fp_strategy_validate),
 * FP_ERR_INVALID for n_params or max_updates 0, FP_ERR_RANGE when the sizes overflow, NOMEM. */
fp_status fp_agg_create(const fp_strategy_opts_t *o, size_t n_params, size_t max_updates, fp_agg_t **out);
void fp_agg_destroy(fp_agg_t *a); /* NULL is a no-op */

/* Add one update with its weight (ignored by median/trimmed mean, but checked for all). delta
 * must be finite (the coordinator checked it; checked again here: FP_ERR_NUMERIC and nothing is
 * added). FP_ERR_RANGE when max_updates were already added, or when the weight is not in
 * [1e-30, 1e30] (NaN included): within that range the double sums can neither overflow nor
 * lose precision to subnormals, so the weighted mean is always finite. May return
 * FP_ERR_NOMEM (buffering strategies: the next update's buffer); nothing is added then. */
fp_status fp_agg_add(fp_agg_t *a, const float *delta, double weight);

/* The same in pieces, for an update that is never whole in memory (the coordinator's spilled
 * receive buffers), mean strategies only (FP_ERR_INVALID for median and trimmed mean, which
 * buffer the update). fp_agg_add_check: the checks of fp_agg_add for one more update of this
 * weight (nothing changes). fp_agg_add_range: sum[offset .. offset+n) += weight × delta[0..n);
 * the same checks, plus the range (FP_ERR_RANGE) and delta finite (FP_ERR_NUMERIC), nothing
 * added on an error. fp_agg_commit_update: counts the update (its weight into Σw). The caller
 * adds ranges covering [0, n_params) once each, under its own lock, after validating the whole
 * update (a range already added cannot be taken back), then commits. */
fp_status fp_agg_add_check(const fp_agg_t *a, double weight);
fp_status fp_agg_add_range(fp_agg_t *a, size_t offset, const float *delta, size_t n, double weight);
fp_status fp_agg_commit_update(fp_agg_t *a, double weight);

/* Updates added since the last reset. */
size_t fp_agg_count(const fp_agg_t *a);

/* The aggregated update into out[n_params]. FP_ERR_INVALID when nothing was added (out
 * untouched). Does not consume the updates: calling it again gives the same result. The
 * buffering strategies allocate their selection scratch (threads × max_updates floats) on the
 * first call, so FP_ERR_NOMEM is possible there (out untouched). */
fp_status fp_agg_result(fp_agg_t *a, float *out);

/* Forget every update (buffers are kept for the next round). */
void fp_agg_reset(fp_agg_t *a);

/* Bytes the aggregator holds now (for status and the memory benchmark): the mean strategies
 * 8·P plus a small constant, fixed from create on; the buffering strategies a small constant,
 * 8 bytes per possible update (pointer table), 4·P (rounded up to 64) per update buffer ever
 * allocated (kept across resets: so at most max_updates of them), and the selection scratch
 * once a result was computed. 0 for NULL. */
size_t fp_agg_bytes(const fp_agg_t *a);

/* ---- Server optimizer ------------------------------------------------------------------------ */

typedef struct fp_sopt fp_sopt_t;

/* An optimizer over n_params parameters; state is zero (v = τ² for the adaptive ones). Errors as
 * fp_agg_create. */
fp_status fp_sopt_create(const fp_strategy_opts_t *o, size_t n_params, fp_sopt_t **out);
void fp_sopt_destroy(fp_sopt_t *s); /* NULL is a no-op */

/* w[n_params] ← the rule above applied with delta_bar, steps + 1. Refuses (FP_ERR_NUMERIC) if the
 * new w, m or v would hold NaN/Inf or exceed the float range (a non-finite delta_bar, an overflow,
 * a corrupt loaded state): then w, the state and steps are all untouched. */
fp_status fp_sopt_apply(fp_sopt_t *s, float *w, const float *delta_bar);

/* The same with delta_bar = fp_agg_result(a) (bit for bit) computed on the fly from a mean
 * aggregator's running sum: no P-float result buffer. FP_ERR_INVALID for a buffering strategy's
 * aggregator, a size mismatch or no update added; a refusal as fp_sopt_apply. */
fp_status fp_sopt_apply_agg(fp_sopt_t *s, float *w, const fp_agg_t *a);

/* Optimizer state for checkpoints: n_state() float vectors of n_params each (0 for FedAvg and
 * the robust ones, 1 for FedAvgM (m), 2 for the adaptive ones (m, v)), named "m" and "v";
 * fp_sopt_state returns a pointer into the optimizer that may be read (save) or written (load),
 * owned by the optimizer (NULL for i outside [0, n_state)); fp_sopt_state_name returns NULL for
 * i outside [0, 2). A loaded v must be ≥ 0 (a negative one makes the next apply refuse). */
int fp_sopt_n_state(const fp_sopt_t *s);
float *fp_sopt_state(fp_sopt_t *s, int i);
const char *fp_sopt_state_name(int i);
/* Number of apply() calls so far (saved with the checkpoint). */
uint64_t fp_sopt_steps(const fp_sopt_t *s);
void fp_sopt_set_steps(fp_sopt_t *s, uint64_t steps);

#endif
