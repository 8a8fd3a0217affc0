/* audit_bound: the one-run audit's p-value and ε lower bound (see audit_bound.h). */
#include "dp/audit_bound.h"

#include <math.h>

/* log P[Binomial(r, q) = k] with log q = lq, log(1 - q) = l1q. */
static double binom_log_pmf(int64_t r, int64_t k, double lq, double l1q)
{
    double lc = lgamma((double)r + 1.0) - lgamma((double)k + 1.0) - lgamma((double)(r - k) + 1.0);
    /* 0 * -inf would be NaN: a zero count contributes nothing whatever its probability */
    double a = k > 0 ? (double)k * lq : 0.0;
    double b = r - k > 0 ? (double)(r - k) * l1q : 0.0;
    return lc + a + b;
}

/* P[Binomial(r, q) >= v], by log-sum-exp over k = v..r (two passes: the largest term, then the
 * scaled sum). */
static double binom_upper_tail(int64_t r, int64_t v, double lq, double l1q)
{
    if (v <= 0)
        return 1.0;
    double mx = -INFINITY;
    for (int64_t k = v; k <= r; k++) {
        double l = binom_log_pmf(r, k, lq, l1q);
        if (l > mx)
            mx = l;
    }
    if (mx == -INFINITY)
        return 0.0;
    double s = 0.0;
    for (int64_t k = v; k <= r; k++)
        s += exp(binom_log_pmf(r, k, lq, l1q) - mx);
    double t = exp(mx + log(s));
    return t > 1.0 ? 1.0 : t;
}

static fp_status check_counts(int64_t m, int64_t r, int64_t v)
{
    if (r < 1 || m < r || m > FP_DP_AUDIT_MAX_GUESSES)
        return FP_FAIL(FP_ERR_RANGE, "audit bound: need 1 <= r <= m <= %d guesses/canaries (r = %lld, m = %lld)",
                       FP_DP_AUDIT_MAX_GUESSES, (long long)r, (long long)m);
    if (v < 0 || v > r)
        return FP_FAIL(FP_ERR_RANGE, "audit bound: correct guesses v = %lld outside [0, r = %lld]", (long long)v,
                       (long long)r);
    return FP_OK;
}

/* p(ε, δ) for arguments already checked. */
static double p_value(int64_t m, int64_t r, int64_t v, double eps, double delta)
{
    /* q = e^ε / (1 + e^ε): log q = -log1p(e^-ε), log(1 - q) = -ε - log1p(e^-ε) */
    const double lq = -log1p(exp(-eps)), l1q = -eps - log1p(exp(-eps));
    double p = binom_upper_tail(r, v, lq, l1q);
    if (delta > 0.0 && v > 0) {
        /* alpha = max_{i=1..v} P[v - i <= B < v] / i, the window growing downwards from v - 1 */
        double alpha = 0.0, sum = 0.0;
        for (int64_t i = 1; i <= v; i++) {
            sum += exp(binom_log_pmf(r, v - i, lq, l1q));
            double a = sum / (double)i;
            if (a > alpha)
                alpha = a;
        }
        p += 2.0 * (double)m * delta * alpha;
    }
    return p > 1.0 ? 1.0 : p;
}

fp_status fp_dp_audit_p_value(int64_t m, int64_t r, int64_t v, double eps, double delta, double *p)
{
    if (!p)
        return FP_FAIL(FP_ERR_INVALID, "fp_dp_audit_p_value: NULL output");
    fp_status st = check_counts(m, r, v);
    if (st != FP_OK)
        return st;
    if (!(isfinite(eps) && eps >= 0.0))
        return FP_FAIL(FP_ERR_RANGE, "audit bound: epsilon = %g must be finite and >= 0", eps);
    if (!(delta >= 0.0 && delta < 1.0))
        return FP_FAIL(FP_ERR_RANGE, "audit bound: delta = %g must be in [0, 1)", delta);
    *p = p_value(m, r, v, eps, delta);
    return FP_OK;
}

fp_status fp_dp_audit_eps_lower_bound(int64_t m, int64_t r, int64_t v, double beta, double delta, double *eps)
{
    if (!eps)
        return FP_FAIL(FP_ERR_INVALID, "fp_dp_audit_eps_lower_bound: NULL output");
    fp_status st = check_counts(m, r, v);
    if (st != FP_OK)
        return st;
    if (!(beta > 0.0 && beta < 1.0))
        return FP_FAIL(FP_ERR_RANGE, "audit bound: beta = %g must be in (0, 1)", beta);
    if (!(delta >= 0.0 && delta < 1.0))
        return FP_FAIL(FP_ERR_RANGE, "audit bound: delta = %g must be in [0, 1)", delta);
    if (!(p_value(m, r, v, 0.0, delta) < beta)) {
        *eps = 0.0; /* not even ε = 0 is rejected: no evidence of leakage */
        return FP_OK;
    }
    /* invariant: p(lo) < beta <= p(hi) */
    double lo = 0.0, hi = 1.0;
    while (p_value(m, r, v, hi, delta) < beta) {
        lo = hi;
        if (hi >= FP_DP_AUDIT_MAX_EPS) {
            *eps = FP_DP_AUDIT_MAX_EPS;
            return FP_OK;
        }
        hi = fmin(2.0 * hi, FP_DP_AUDIT_MAX_EPS);
    }
    while (hi - lo > FP_DP_AUDIT_EPS_TOL) {
        double mid = 0.5 * (lo + hi);
        if (p_value(m, r, v, mid, delta) < beta)
            lo = mid;
        else
            hi = mid;
    }
    *eps = lo;
    return FP_OK;
}
