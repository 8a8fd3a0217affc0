/* accountant: RDP of the Poisson-subsampled Gaussian mechanism (Mironov, Talwar, Zhang 2019),
 * composition, conversion to (ε, δ) and noise calibration. See accountant.h.
 *
 * The numerics follow TensorFlow Privacy's rdp_accountant.py term for term (its _log_add, _log_sub,
 * _log_erfc, _compute_log_a_int, _compute_log_a_frac with the "both terms below e^-30" stopping
 * rule, _compute_eps), because that is the accountant partners already trust: a ledger audited with
 * TF Privacy or Opacus must give the same ε. bench/rdp_reference.py is a Python port of it and
 * tests/test_accountant.c holds its numbers. Where we differ it is only to be more exact:
 * log1p(-q) for log(1-q), a log-binomial kept as a running sum instead of lgamma (lgamma writes
 * the global signgam, so it is not thread-safe), and log(e^x - e^y) as x + log(-expm1(y-x)), which
 * needs no overflow handler. */
#include "dp/accountant.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The fractional-order series converges polynomially when q is near 1/2 (terms ~ i^-(α+2));
 * at α = 1.1 that is ~2·10^4 terms. A cap turns a pathological input into an error, not a hang. */
#define MAX_SERIES_TERMS 10000000L
/* Most orders an accountant holds (bounds the allocation from a caller-given list). */
#define MAX_ORDERS 100000u
/* log(√π); M_PI is not C11. */
#define LOG_SQRT_PI 0.57236494292470008707

static const double *default_orders_table(void);

/* ---------------------------------------------------------------- log-space arithmetic */

/* log(e^x + e^y). */
static double log_add(double x, double y)
{
    double a = x < y ? x : y, b = x < y ? y : x;
    if (a == -INFINITY || b == INFINITY)
        return b;
    return log1p(exp(a - b)) + b;
}

/* log(e^x - e^y) into *out; -1 when y > x (the result would be negative). */
static int log_sub(double x, double y, double *out)
{
    if (x < y)
        return -1;
    if (y == -INFINITY) {
        *out = x;
        return 0;
    }
    if (x == y) {
        *out = -INFINITY;
        return 0;
    }
    *out = x + log(-expm1(y - x));
    return 0;
}

/* log(erfc(x)), accurate far into the right tail where erfc underflows. */
static double log_erfc(double x)
{
    if (x <= 26.0) /* erfc(26) ≈ 5.7e-296 is still a normal double */
        return log(erfc(x));
    /* Laurent series at infinity: log erfc(x) = -x² - log(x√π) - 1/(2x²) + 5/(8x⁴) - 37/(24x⁶)
     * + 353/(64x⁸) + O(x⁻¹⁰); at x > 26 the remainder is below 1e-13. */
    double x2 = x * x, r = 1.0 / x2;
    return -LOG_SQRT_PI - log(x) - x2 + r * (-0.5 + r * (0.625 + r * (-37.0 / 24.0 + r * (353.0 / 64.0))));
}

/* ---------------------------------------------------------------- log A_α */

/* Integer α = n ≥ 2, 0 < q < 1: A = Σ_i C(n,i) q^i (1-q)^(n-i) exp((i²-i)/(2σ²)). */
static double log_a_int(double q, double sigma, long n)
{
    double lq = log(q), l1q = log1p(-q), two_s2 = 2.0 * sigma * sigma;
    double log_a = -INFINITY, log_coef = 0.0; /* log C(n, 0) */
    for (long i = 0; i <= n; i++) {
        if (i > 0)
            log_coef += log((double)(n - i + 1) / (double)i);
        double di = (double)i;
        double s = log_coef + di * lq + (double)(n - i) * l1q + (di * di - di) / two_s2;
        log_a = log_add(log_a, s);
    }
    return log_a;
}

/* Fractional α, 0 < q < 1: the integrals of the density ratio over (-inf, z0] and [z0, inf), each an
 * alternating binomial series with erfc tails. */
static fp_status log_a_frac(double q, double sigma, double alpha, double *out)
{
    double lq = log(q), l1q = log1p(-q), two_s2 = 2.0 * sigma * sigma;
    double inv = 1.0 / (sqrt(2.0) * sigma), log_half = log(0.5);
    double z0 = sigma * sigma * (l1q - lq) + 0.5; /* σ² log(1/q - 1) + 1/2 */
    double log_a0 = -INFINITY, log_a1 = -INFINITY;
    double log_coef = 0.0; /* log |C(α, i)| */
    int sign = 1;          /* sign of C(α, i) */
    for (long i = 0;; i++) {
        if (i >= MAX_SERIES_TERMS)
            return FP_FAIL(FP_ERR_NUMERIC, "RDP series for q=%g sigma=%g order=%g did not converge in %ld terms", q,
                           sigma, alpha, MAX_SERIES_TERMS);
        double di = (double)i;
        if (i > 0) {
            double r = (alpha - di + 1.0) / di;
            if (r < 0)
                sign = -sign;
            log_coef += log(fabs(r));
        }
        double j = alpha - di;
        double log_t0 = log_coef + di * lq + j * l1q;
        double log_t1 = log_coef + j * lq + di * l1q;
        double log_e0 = log_half + log_erfc((di - z0) * inv);
        double log_e1 = log_half + log_erfc((z0 - j) * inv);
        double log_s0 = log_t0 + (di * di - di) / two_s2 + log_e0;
        double log_s1 = log_t1 + (j * j - j) / two_s2 + log_e1;
        if (isnan(log_s0) || isnan(log_s1))
            return FP_FAIL(FP_ERR_NUMERIC, "RDP series for q=%g sigma=%g order=%g is not finite", q, sigma, alpha);
        if (sign > 0) {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else if (log_sub(log_a0, log_s0, &log_a0) != 0 || log_sub(log_a1, log_s1, &log_a1) != 0) {
            return FP_FAIL(FP_ERR_NUMERIC, "RDP series for q=%g sigma=%g order=%g lost its sign at term %ld", q,
                           sigma, alpha, i);
        }
        if ((log_s0 > log_s1 ? log_s0 : log_s1) < -30.0)
            break;
    }
    *out = log_add(log_a0, log_a1);
    return FP_OK;
}

/* ---------------------------------------------------------------- checks */

static fp_status check_q(double q)
{
    if (!(q >= 0.0 && q <= 1.0))
        return FP_FAIL(FP_ERR_RANGE, "sampling rate q = %g is not in [0, 1]", q);
    return FP_OK;
}

static fp_status check_sigma(double sigma)
{
    if (!(sigma == 0.0 || (sigma >= FP_DP_SIGMA_MIN && sigma <= FP_DP_SIGMA_MAX)))
        return FP_FAIL(FP_ERR_RANGE, "noise multiplier sigma = %g is neither 0 nor in [%g, %g]", sigma,
                       FP_DP_SIGMA_MIN, FP_DP_SIGMA_MAX);
    return FP_OK;
}

static fp_status check_order(double order)
{
    if (!(order > 1.0 && order <= FP_DP_MAX_ORDER))
        return FP_FAIL(FP_ERR_RANGE, "RDP order %g is not in (1, %g]", order, FP_DP_MAX_ORDER);
    return FP_OK;
}

static fp_status check_steps(int64_t steps)
{
    if (steps < 0)
        return FP_FAIL(FP_ERR_RANGE, "steps = %lld is negative", (long long)steps);
    return FP_OK;
}

static fp_status check_delta(double delta)
{
    if (!(delta > 0.0 && delta < 1.0))
        return FP_FAIL(FP_ERR_RANGE, "delta = %g is not in (0, 1)", delta);
    return FP_OK;
}

/* ---------------------------------------------------------------- public: RDP */

size_t fp_dp_default_orders(const double **orders)
{
    if (orders)
        *orders = default_orders_table();
    return FP_DP_DEFAULT_ORDER_COUNT;
}

fp_status fp_dp_conversion_parse(const char *text, fp_dp_conversion *out)
{
    if (!text || !out)
        return FP_FAIL(FP_ERR_INVALID, "conversion: NULL argument");
    if (strcmp(text, "improved") == 0)
        *out = FP_DP_CONVERSION_IMPROVED;
    else if (strcmp(text, "classic") == 0)
        *out = FP_DP_CONVERSION_CLASSIC;
    else
        return FP_FAIL(FP_ERR_INVALID, "conversion '%s' is neither 'improved' nor 'classic'", text);
    return FP_OK;
}

const char *fp_dp_conversion_name(fp_dp_conversion c)
{
    switch (c) {
    case FP_DP_CONVERSION_IMPROVED:
        return "improved";
    case FP_DP_CONVERSION_CLASSIC:
        return "classic";
    }
    return "?";
}

fp_status fp_dp_rdp_step(double q, double sigma, double order, double *rdp)
{
    fp_status st;
    if (!rdp)
        return FP_FAIL(FP_ERR_INVALID, "rdp_step: NULL output");
    if ((st = check_q(q)) != FP_OK || (st = check_sigma(sigma)) != FP_OK || (st = check_order(order)) != FP_OK)
        return st;
    if (q == 0.0) {
        *rdp = 0.0;
        return FP_OK;
    }
    if (sigma == 0.0) {
        *rdp = INFINITY;
        return FP_OK;
    }
    if (q == 1.0) {
        *rdp = order / (2.0 * sigma * sigma);
        return FP_OK;
    }
    double log_a = 0.0;
    if (order == floor(order)) {
        log_a = log_a_int(q, sigma, (long)order);
    } else if ((st = log_a_frac(q, sigma, order, &log_a)) != FP_OK) {
        return st;
    }
    double r = log_a / (order - 1.0);
    if (isnan(r))
        return FP_FAIL(FP_ERR_NUMERIC, "RDP for q=%g sigma=%g order=%g is NaN", q, sigma, order);
    /* A_α ≥ 1, so a negative value is rounding in a sum that is 1 + O(q²). */
    *rdp = r < 0.0 ? 0.0 : r;
    return FP_OK;
}

fp_status fp_dp_rdp(double q, double sigma, int64_t steps, const double *orders, size_t n, double *rdp)
{
    fp_status st;
    if (!rdp || (!orders && n != 0) || (orders && n == 0))
        return FP_FAIL(FP_ERR_INVALID, "rdp: NULL output or an empty order list");
    if (!orders)
        n = fp_dp_default_orders(&orders);
    if ((st = check_q(q)) != FP_OK || (st = check_sigma(sigma)) != FP_OK || (st = check_steps(steps)) != FP_OK)
        return st;
    for (size_t k = 0; k < n; k++) {
        double one;
        if ((st = fp_dp_rdp_step(q, sigma, orders[k], &one)) != FP_OK)
            return st;
        rdp[k] = steps == 0 ? 0.0 : one * (double)steps; /* 0 steps spend nothing, even at σ = 0 */
    }
    return FP_OK;
}

/* ---------------------------------------------------------------- public: (ε, δ) */

fp_status fp_dp_eps_from_rdp(const double *orders, const double *rdp, size_t n, double delta,
                             fp_dp_conversion conv, double *eps, double *best_order)
{
    fp_status st;
    if (!orders || !rdp || !eps || n == 0)
        return FP_FAIL(FP_ERR_INVALID, "eps_from_rdp: NULL argument or no orders");
    if ((st = check_delta(delta)) != FP_OK)
        return st;
    if (conv != FP_DP_CONVERSION_IMPROVED && conv != FP_DP_CONVERSION_CLASSIC)
        return FP_FAIL(FP_ERR_INVALID, "unknown conversion %d", (int)conv);
    double log_delta = log(delta), best = INFINITY;
    size_t best_k = 0;
    for (size_t k = 0; k < n; k++) {
        double a = orders[k], r = rdp[k], e;
        if ((st = check_order(a)) != FP_OK)
            return st;
        if (!(r >= 0.0))
            return FP_FAIL(FP_ERR_RANGE, "RDP %g at order %g is not >= 0", r, a);
        if (conv == FP_DP_CONVERSION_CLASSIC) {
            e = r - log_delta / (a - 1.0);
        } else if (delta * delta + expm1(-r) >= 0.0) {
            e = 0.0; /* the KL bound δ ≤ sqrt(1 - exp(-rdp)) already gives ε = 0 */
        } else if (a > 1.01) {
            /* Unstable as α -> 1 (and useless there), hence TF's floor on α. */
            e = r + log1p(-1.0 / a) - (log_delta + log(a)) / (a - 1.0);
        } else {
            e = INFINITY;
        }
        if (e < best) {
            best = e;
            best_k = k;
        }
    }
    *eps = best > 0.0 ? best : 0.0;
    if (best_order)
        *best_order = orders[best_k];
    return FP_OK;
}

fp_status fp_dp_epsilon(double q, double sigma, int64_t steps, double delta, fp_dp_conversion conv, double *eps,
                        double *best_order)
{
    double rdp[FP_DP_DEFAULT_ORDER_COUNT];
    const double *orders;
    size_t n = fp_dp_default_orders(&orders);
    fp_status st;
    if (!eps)
        return FP_FAIL(FP_ERR_INVALID, "epsilon: NULL output");
    if ((st = check_delta(delta)) != FP_OK)
        return st;
    if ((st = fp_dp_rdp(q, sigma, steps, orders, n, rdp)) != FP_OK)
        return st;
    return fp_dp_eps_from_rdp(orders, rdp, n, delta, conv, eps, best_order);
}

/* ε(σ) ≤ target? Every order's RDP falls as σ grows, so this is monotone in σ. */
static fp_status meets(double target, double q, double sigma, int64_t steps, double delta, fp_dp_conversion conv,
                       int *ok)
{
    double eps;
    fp_status st = fp_dp_epsilon(q, sigma, steps, delta, conv, &eps, NULL);
    if (st == FP_OK)
        *ok = eps <= target;
    return st;
}

fp_status fp_dp_calibrate(double target_eps, double q, int64_t steps, double delta, fp_dp_conversion conv,
                          double *sigma)
{
    fp_status st;
    int ok;
    if (!sigma)
        return FP_FAIL(FP_ERR_INVALID, "calibrate: NULL output");
    if (!(target_eps >= 0.0 && target_eps <= DBL_MAX))
        return FP_FAIL(FP_ERR_RANGE, "target epsilon %g is not a finite number >= 0", target_eps);
    if ((st = check_q(q)) != FP_OK || (st = check_steps(steps)) != FP_OK || (st = check_delta(delta)) != FP_OK)
        return st;
    if (conv != FP_DP_CONVERSION_IMPROVED && conv != FP_DP_CONVERSION_CLASSIC)
        return FP_FAIL(FP_ERR_INVALID, "unknown conversion %d", (int)conv);
    if (q == 0.0 || steps == 0) {
        *sigma = 0.0; /* nothing is spent, whatever the noise */
        return FP_OK;
    }
    /* Bracket [lo, hi] with ε(lo) > target ≥ ε(hi), by doubling or halving from σ = 1. */
    double lo, hi = 1.0;
    if ((st = meets(target_eps, q, hi, steps, delta, conv, &ok)) != FP_OK)
        return st;
    if (!ok) {
        do {
            lo = hi;
            if (hi >= FP_DP_CALIBRATE_MAX_SIGMA)
                return FP_FAIL(FP_ERR_RANGE,
                               "target epsilon %g is out of reach: even noise multiplier %g gives more "
                               "(q=%g, steps=%lld, delta=%g)",
                               target_eps, FP_DP_CALIBRATE_MAX_SIGMA, q, (long long)steps, delta);
            hi = fmin(2.0 * hi, FP_DP_CALIBRATE_MAX_SIGMA);
            if ((st = meets(target_eps, q, hi, steps, delta, conv, &ok)) != FP_OK)
                return st;
        } while (!ok);
    } else {
        for (;;) {
            lo = fmax(hi / 2.0, FP_DP_SIGMA_MIN);
            if ((st = meets(target_eps, q, lo, steps, delta, conv, &ok)) != FP_OK)
                return st;
            if (!ok)
                break;
            if (lo == FP_DP_SIGMA_MIN) {
                *sigma = lo; /* the floor of the accountant's range already meets the target */
                return FP_OK;
            }
            hi = lo;
        }
    }
    /* Bisect on log σ; hi always holds a σ that was checked to meet the target. */
    double llo = log(lo), lhi = log(hi), tol = log1p(1e-6);
    while (lhi - llo > tol) {
        double lmid = 0.5 * (llo + lhi), mid = exp(lmid);
        if ((st = meets(target_eps, q, mid, steps, delta, conv, &ok)) != FP_OK)
            return st;
        if (ok) {
            lhi = lmid;
            hi = mid;
        } else {
            llo = lmid;
        }
    }
    *sigma = hi;
    return FP_OK;
}

/* ---------------------------------------------------------------- accountant object */

struct fp_dp_accountant {
    size_t n;
    double *orders; /* [n] */
    double *rdp;    /* [n] accumulated RDP */
    double *tmp;    /* [n] one event, so that a failed add changes nothing */
    int64_t events, steps;
};

fp_status fp_dp_accountant_create(const double *orders, size_t n, fp_dp_accountant_t **out)
{
    fp_status st;
    if (!out || (!orders && n != 0) || (orders && n == 0))
        return FP_FAIL(FP_ERR_INVALID, "accountant_create: NULL output or an empty order list");
    *out = NULL;
    if (!orders)
        n = fp_dp_default_orders(&orders);
    if (n > MAX_ORDERS)
        return FP_FAIL(FP_ERR_RANGE, "%zu orders is more than the %u an accountant holds", n, MAX_ORDERS);
    for (size_t k = 0; k < n; k++)
        if ((st = check_order(orders[k])) != FP_OK)
            return st;
    fp_dp_accountant_t *a = calloc(1, sizeof *a);
    double *buf = calloc(3 * n, sizeof *buf);
    if (!a || !buf) {
        free(a);
        free(buf);
        return FP_FAIL(FP_ERR_NOMEM, "accountant of %zu orders", n);
    }
    a->n = n;
    a->orders = buf;
    a->rdp = buf + n;
    a->tmp = buf + 2 * n;
    memcpy(a->orders, orders, n * sizeof *orders);
    *out = a;
    return FP_OK;
}

void fp_dp_accountant_destroy(fp_dp_accountant_t *a)
{
    if (!a)
        return;
    free(a->orders); /* the one buffer holding orders, rdp and tmp */
    free(a);
}

fp_status fp_dp_accountant_add(fp_dp_accountant_t *a, double q, double sigma, int64_t steps)
{
    fp_status st;
    if (!a)
        return FP_FAIL(FP_ERR_INVALID, "accountant_add: NULL accountant");
    if ((st = check_steps(steps)) != FP_OK)
        return st;
    if (a->steps > INT64_MAX - steps)
        return FP_FAIL(FP_ERR_RANGE, "accountant step count overflows");
    if ((st = fp_dp_rdp(q, sigma, steps, a->orders, a->n, a->tmp)) != FP_OK)
        return st;
    for (size_t k = 0; k < a->n; k++)
        a->rdp[k] += a->tmp[k];
    a->events++;
    a->steps += steps;
    return FP_OK;
}

fp_status fp_dp_accountant_epsilon(const fp_dp_accountant_t *a, double delta, fp_dp_conversion conv, double *eps,
                                   double *best_order)
{
    if (!a)
        return FP_FAIL(FP_ERR_INVALID, "accountant_epsilon: NULL accountant");
    return fp_dp_eps_from_rdp(a->orders, a->rdp, a->n, delta, conv, eps, best_order);
}

fp_status fp_dp_accountant_project(const fp_dp_accountant_t *a, double q, double sigma, int64_t steps, double delta,
                                   fp_dp_conversion conv, double *eps, double *best_order)
{
    if (!a)
        return FP_FAIL(FP_ERR_INVALID, "accountant_project: NULL accountant");
    double *sum = malloc(a->n * sizeof *sum);
    if (!sum)
        return FP_FAIL(FP_ERR_NOMEM, "accountant projection of %zu orders", a->n);
    fp_status st = fp_dp_rdp(q, sigma, steps, a->orders, a->n, sum);
    if (st == FP_OK) {
        for (size_t k = 0; k < a->n; k++)
            sum[k] += a->rdp[k];
        st = fp_dp_eps_from_rdp(a->orders, sum, a->n, delta, conv, eps, best_order);
    }
    free(sum);
    return st;
}

size_t fp_dp_accountant_rdp(const fp_dp_accountant_t *a, const double **orders, const double **rdp)
{
    if (orders)
        *orders = a ? a->orders : NULL;
    if (rdp)
        *rdp = a ? a->rdp : NULL;
    return a ? a->n : 0;
}

int64_t fp_dp_accountant_events(const fp_dp_accountant_t *a)
{
    return a ? a->events : 0;
}

int64_t fp_dp_accountant_steps(const fp_dp_accountant_t *a)
{
    return a ? a->steps : 0;
}

/* ---------------------------------------------------------------- default orders */

/* 1 + x/10 for x = 1..99, then 12..63. Each literal is the double nearest to 1 + x/10 and equals
 * Python's `1 + x / 10.` (checked by the test against the reference table), so x = 10, 20, ... give
 * exactly 2.0, 3.0, ... and take the integer series, as in TF Privacy. */
static const double *default_orders_table(void)
{
    static const double table[FP_DP_DEFAULT_ORDER_COUNT] = {
        1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2,
        2.3, 2.4, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0, 3.1, 3.2, 3.3, 3.4,
        3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 4.1, 4.2, 4.3, 4.4, 4.5, 4.6,
        4.7, 4.8, 4.9, 5.0, 5.1, 5.2, 5.3, 5.4, 5.5, 5.6, 5.7, 5.8,
        5.9, 6.0, 6.1, 6.2, 6.3, 6.4, 6.5, 6.6, 6.7, 6.8, 6.9, 7.0,
        7.1, 7.2, 7.3, 7.4, 7.5, 7.6, 7.7, 7.8, 7.9, 8.0, 8.1, 8.2,
        8.3, 8.4, 8.5, 8.6, 8.7, 8.8, 8.9, 9.0, 9.1, 9.2, 9.3, 9.4,
        9.5, 9.6, 9.7, 9.8, 9.9, 10.0, 10.1, 10.2, 10.3, 10.4, 10.5, 10.6,
        10.7, 10.8, 10.9,
        12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
        30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47,
        48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    };
    return table;
}
