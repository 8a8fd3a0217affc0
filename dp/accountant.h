/* accountant: Rényi DP of the Poisson-subsampled Gaussian mechanism, its composition and its
 * conversion to (ε, δ), and the noise multiplier that reaches a target ε.
 *
 * The mechanism: each record is included with probability q (Poisson sampling), the sum of
 * clipped contributions (L2 sensitivity 1 after dividing by the clip bound) gets N(0, σ²) noise.
 * Its RDP at order α is log(A_α)/(α−1) (Mironov, Talwar, Zhang 2019), A_α computed in log space:
 * the binomial expansion at integer α, the two erfc series at fractional α, as TensorFlow
 * Privacy's rdp_accountant.py does (bench/rdp_reference.py is a Python port that the tests compare
 * against to 1e-6 relative). RDP composes by adding per order; (ε, δ) is the minimum over orders of
 *   classic:   rdp + log(1/δ)/(α−1)                                  (Mironov 2017, Prop. 3)
 *   improved:  rdp + log1p(−1/α) − (log δ + log α)/(α−1)             (Balle et al. 2020 Thm. 21;
 *              Canonne, Kamath, Steinke 2020 Prop. 12; TF Privacy / Opacus default)
 * ε is never negative. All functions are pure and thread-safe unless said otherwise; errors come
 * back as fp_status with the message in fp_error_message(). */
#ifndef FEDPROF_DP_ACCOUNTANT_H
#define FEDPROF_DP_ACCOUNTANT_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"

/* How RDP becomes (ε, δ). Values are stored in ledgers: never renumber. */
typedef enum {
    FP_DP_CONVERSION_IMPROVED = 0, /* the default */
    FP_DP_CONVERSION_CLASSIC = 1,
} fp_dp_conversion;

/* Orders must lie in (1, FP_DP_MAX_ORDER]: the integer-order sum has α+1 terms. */
#define FP_DP_MAX_ORDER 10000.0
/* A noise multiplier is 0 (no noise) or in [FP_DP_SIGMA_MIN, FP_DP_SIGMA_MAX]: beyond, σ² or the
 * series' exponents overflow double (σ below 1e-6 means ε in the trillions anyway). */
#define FP_DP_SIGMA_MIN 1e-6
#define FP_DP_SIGMA_MAX 1e6
/* Calibration searches σ in [FP_DP_SIGMA_MIN, FP_DP_CALIBRATE_MAX_SIGMA]. */
#define FP_DP_CALIBRATE_MAX_SIGMA 1e4
/* The number of default orders: 1 + x/10 for x = 1..99, then the integers 12..63. */
#define FP_DP_DEFAULT_ORDER_COUNT 151

/* The default orders (a static table; never freed). Returns their count. Thread-safe. */
size_t fp_dp_default_orders(const double **orders);

/* "improved" / "classic" <-> enum. parse: FP_ERR_INVALID naming the text for anything else. */
fp_status fp_dp_conversion_parse(const char *text, fp_dp_conversion *out);
const char *fp_dp_conversion_name(fp_dp_conversion c); /* static; "?" for an unknown value */

/* RDP of ONE step of the sampled Gaussian mechanism at one order.
 * q ∈ [0, 1], σ = 0 or σ ∈ [FP_DP_SIGMA_MIN, FP_DP_SIGMA_MAX], order ∈ (1, FP_DP_MAX_ORDER];
 * otherwise FP_ERR_RANGE. q = 0 gives 0 (whatever σ), q = 1 gives exactly α/(2σ²), σ = 0 (with
 * q > 0) gives +inf. Integer orders take the binomial sum, others the erfc series. */
fp_status fp_dp_rdp_step(double q, double sigma, double order, double *rdp);

/* RDP of `steps` steps at each of n orders (orders NULL and n 0: the default orders, and rdp must
 * hold FP_DP_DEFAULT_ORDER_COUNT values). rdp[k] = steps × fp_dp_rdp_step(q, σ, orders[k]);
 * steps = 0 gives 0 even where one step is +inf. */
fp_status fp_dp_rdp(double q, double sigma, int64_t steps, const double *orders, size_t n, double *rdp);

/* (ε, best order) from RDP values at n orders for δ ∈ (0, 1). rdp values must be ≥ 0 (+inf allowed:
 * that order is useless; if every order is +inf, ε is +inf). Ties go to the first order.
 * best_order may be NULL. */
fp_status fp_dp_eps_from_rdp(const double *orders, const double *rdp, size_t n, double delta,
                             fp_dp_conversion conv, double *eps, double *best_order);

/* ε (and the best order, may be NULL) of `steps` steps at the default orders. */
fp_status fp_dp_epsilon(double q, double sigma, int64_t steps, double delta, fp_dp_conversion conv, double *eps,
                        double *best_order);

/* The smallest noise multiplier σ with fp_dp_epsilon(q, σ, steps, δ) ≤ target_eps, by bisection on
 * log σ to 1e-6 relative; the σ returned always meets the target. q = 0 or steps = 0 spend nothing:
 * σ = 0. FP_ERR_RANGE if even σ = FP_DP_CALIBRATE_MAX_SIGMA does not reach the target; if σ =
 * FP_DP_SIGMA_MIN already does, that is the answer. */
fp_status fp_dp_calibrate(double target_eps, double q, int64_t steps, double delta, fp_dp_conversion conv,
                          double *sigma);

/* An accountant: RDP per order, summed over events (q, σ, steps) whose parameters may change from
 * one event to the next (local steps within a round, rounds within a run). Not thread-safe: one
 * owner at a time. */
typedef struct fp_dp_accountant fp_dp_accountant_t;

/* orders NULL and n 0: the default orders (copied either way). Free with fp_dp_accountant_destroy. */
fp_status fp_dp_accountant_create(const double *orders, size_t n, fp_dp_accountant_t **out);
/* NULL is a no-op. */
void fp_dp_accountant_destroy(fp_dp_accountant_t *a);
/* Compose `steps` steps of the sampled Gaussian mechanism. On error the accountant is unchanged. */
fp_status fp_dp_accountant_add(fp_dp_accountant_t *a, double q, double sigma, int64_t steps);
/* ε and best order (may be NULL) of everything added so far. */
fp_status fp_dp_accountant_epsilon(const fp_dp_accountant_t *a, double delta, fp_dp_conversion conv, double *eps,
                                   double *best_order);
/* ε if (q, σ, steps) were added now, without adding it (budget admission control). */
fp_status fp_dp_accountant_project(const fp_dp_accountant_t *a, double q, double sigma, int64_t steps, double delta,
                                   fp_dp_conversion conv, double *eps, double *best_order);
/* The orders and accumulated RDP (views into the accountant, valid until it is destroyed); either
 * pointer may be NULL. Returns the number of orders. */
size_t fp_dp_accountant_rdp(const fp_dp_accountant_t *a, const double **orders, const double **rdp);
/* Number of events and total steps added so far. */
int64_t fp_dp_accountant_events(const fp_dp_accountant_t *a);
int64_t fp_dp_accountant_steps(const fp_dp_accountant_t *a);

#endif
