/* audit_bound: the statistics of one-run privacy auditing (Steinke, Nasr, Jagielski 2023, "Privacy
 * Auditing with One (1) Training Run", arXiv:2305.08846, NeurIPS 2023).
 *
 * The audit: m canaries, each put into the training data independently with probability 1/2; after
 * training, the auditor makes r guesses (canary in / out; abstaining on the rest) of which v are
 * right. If the training algorithm is (ε, δ)-DP, the paper's bound (Section 5, approximate DP;
 * the appendix algorithm computing its p-value) is
 *
 *   P[V ≥ v] ≤ p(ε, δ) = F(v) + 2 m δ · max_{i = 1..v} (F(v − i) − F(v)) / i,
 *   F(u) = P[Binomial(r, e^ε / (1 + e^ε)) ≥ u],
 *
 * (δ = 0: the pure-DP statement, V is dominated by Binomial(r, e^ε / (1 + e^ε))). An observed v is
 * evidence against (ε, δ)-DP at confidence 1 − β when p(ε, δ) < β. Rejecting ε rejects every smaller
 * ε too (ε'-DP implies ε-DP for ε' < ε), so ANY ε with p(ε, δ) < β is a valid lower bound; the
 * bisection keeps p(lo) < β, and finds the largest such ε where p increases with ε (always for δ = 0,
 * where F does; the δ term is not monotone in general, and the paper's own code bisects too).
 * Binomial terms are computed in log space with lgamma, the upper tail by log-sum-exp, so tails far
 * below 1e-308 neither overflow nor turn into NaN. Pure functions; thread-safe but for lgamma(3)'s
 * write of signgam (glibc: MT-Unsafe race:signgam; every argument here is positive, so the value
 * is always +1). Errors come back as fp_status with fp_error_message(). */
#ifndef FEDPROF_DP_AUDIT_BOUND_H
#define FEDPROF_DP_AUDIT_BOUND_H

#include <stdint.h>

#include "common/errors.h"

/* r, v and m are at most this (each p-value is O(r)). */
#define FP_DP_AUDIT_MAX_GUESSES 100000000
/* The bisection searches ε in [0, FP_DP_AUDIT_MAX_EPS]; a bound at the cap means "at least this". */
#define FP_DP_AUDIT_MAX_EPS 100.0
/* Width of the final bisection interval: the bound returned is exact to this (from below). */
#define FP_DP_AUDIT_EPS_TOL 1e-9

/* p(ε, δ) above for m canaries, r guesses, v correct: 0 ≤ v ≤ r ≤ m, 1 ≤ r, m ≤
 * FP_DP_AUDIT_MAX_GUESSES, ε finite and ≥ 0, δ ∈ [0, 1). Capped at 1. FP_ERR_INVALID (NULL p) or
 * FP_ERR_RANGE (anything else out of range); *p is untouched on error. */
fp_status fp_dp_audit_p_value(int64_t m, int64_t r, int64_t v, double eps, double delta, double *p);

/* The largest ε (to FP_DP_AUDIT_EPS_TOL, rounded down) with p(ε, δ) < β: at confidence 1 − β the
 * algorithm is not (ε', δ)-DP for any ε' < *eps. 0 when even ε = 0 is not rejected (no evidence);
 * FP_DP_AUDIT_MAX_EPS when every ε up to the cap is rejected. β ∈ (0, 1); the rest as
 * fp_dp_audit_p_value. *eps is untouched on error. */
fp_status fp_dp_audit_eps_lower_bound(int64_t m, int64_t r, int64_t v, double beta, double delta, double *eps);

#endif
