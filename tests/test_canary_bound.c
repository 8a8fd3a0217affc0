/* test_canary_bound: the ε lower bound of one-run auditing (dp/audit_bound.h; Steinke, Nasr, Jagielski
 * 2023) against closed forms and hand-computed binomials, its monotonicity, and bad arguments. The
 * audit itself (canaries, training, scoring) is bench/canary_audit.sh. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/errors.h"
#include "dp/audit_bound.h"

#define BETA 0.05

static double lb(int64_t m, int64_t r, int64_t v, double beta, double delta)
{
    double eps = -1.0;
    assert_int_equal(fp_dp_audit_eps_lower_bound(m, r, v, beta, delta, &eps), FP_OK);
    assert_true(eps >= 0.0 && eps <= FP_DP_AUDIT_MAX_EPS);
    return eps;
}

static double pv(int64_t m, int64_t r, int64_t v, double eps, double delta)
{
    double p = -1.0;
    assert_int_equal(fp_dp_audit_p_value(m, r, v, eps, delta, &p), FP_OK);
    assert_true(p >= 0.0 && p <= 1.0);
    return p;
}

/* All r guesses right, δ = 0: P[Bin(r, q) >= r] = q^r <= β  <=>  q <= β^(1/r), so the bound is
 * ε = log(b / (1 - b)) with b = β^(1/r); r = 100, β = 0.05: b = 0.970487..., ε = 3.49301... */
static void test_all_correct_closed_form(void **state)
{
    (void)state;
    const int64_t rs[] = {1, 10, 100, 1000};
    for (size_t k = 0; k < sizeof rs / sizeof rs[0]; k++) {
        int64_t r = rs[k];
        double b = pow(BETA, 1.0 / (double)r);
        double want = log(b / (1.0 - b));
        if (want < 0.0)
            want = 0.0; /* r = 1: one right guess is no evidence at 95% (b = 0.05) */
        double got = lb(r, r, r, BETA, 0.0);
        assert_true(fabs(got - want) < 1e-7);
    }
    double e100 = lb(100, 100, 100, BETA, 0.0);
    assert_true(fabs(e100 - 3.4930) < 5e-4);
    /* m does not matter when δ = 0 */
    assert_true(fabs(lb(100000, 100, 100, BETA, 0.0) - e100) < 1e-12);
}

/* Half right is what a coin achieves: no evidence, ε = 0 exactly; so is anything below half. */
static void test_chance_gives_zero(void **state)
{
    (void)state;
    assert_true(lb(1000, 100, 50, BETA, 0.0) == 0.0);
    assert_true(lb(1000, 100, 50, BETA, 1e-5) == 0.0);
    assert_true(lb(1000, 200, 100, BETA, 0.0) == 0.0);
    assert_true(lb(1000, 100, 10, BETA, 0.0) == 0.0);
    assert_true(lb(1000, 100, 0, BETA, 0.0) == 0.0);
    /* 60 of 100 is not significant at 95% even for ε = 0 (P[Bin(100, .5) >= 60] = 0.028 < .05 is,
     * 58 is not: P = 0.067) */
    assert_true(lb(1000, 100, 58, BETA, 0.0) == 0.0);
    assert_true(lb(1000, 100, 60, BETA, 0.0) > 0.0);
}

/* p-values against binomials computed by hand. */
static void test_p_value_by_hand(void **state)
{
    (void)state;
    /* ε = 0: q = 1/2; P[Bin(10, .5) >= 9] = 11 / 1024 */
    assert_true(fabs(pv(10, 10, 9, 0.0, 0.0) - 11.0 / 1024.0) < 1e-14);
    /* ε = 1: q = e / (1 + e); P[Bin(10, q) >= 9] = 10 q^9 (1 - q) + q^10 */
    double q = exp(1.0) / (1.0 + exp(1.0));
    double want = 10.0 * pow(q, 9) * (1.0 - q) + pow(q, 10);
    assert_true(fabs(pv(10, 10, 9, 1.0, 0.0) - want) < 1e-13);
    /* δ > 0, r = 2, v = 2, m = 5, ε = 0: F(2) = 1/4, P[B = 1] = 1/2, P[B = 0] = 1/4;
     * alpha = max(1/2 / 1, (1/2 + 1/4) / 2) = 1/2; p = 1/4 + 2 * 5 * δ * 1/2 */
    assert_true(fabs(pv(5, 2, 2, 0.0, 0.01) - (0.25 + 0.05)) < 1e-14);
    /* capped at 1 */
    assert_true(pv(5, 2, 2, 0.0, 0.5) == 1.0);
    /* v = 0 is certain */
    assert_true(pv(10, 10, 0, 3.0, 0.0) == 1.0);
    /* a tail far below double's range is 0, not NaN */
    assert_true(pv(5000, 5000, 5000, 0.0, 0.0) == 0.0);
}

/* Against an independent implementation (Python, math.comb binomials, the loop of the paper's
 * p-value algorithm for (ε, δ), bisection to 2^-60), run once by hand: agreement to 1e-6. */
static void test_reference_values(void **state)
{
    (void)state;
    static const struct {
        int64_t m, r, v;
        double delta, eps;
    } ref[] = {
        {1000, 200, 199, 0.0, 3.727041},  {1000, 200, 199, 1e-5, 3.710960}, {1000, 200, 150, 0.0, 0.821396},
        {1000, 200, 150, 1e-5, 0.819973}, {1000, 600, 600, 0.0, 5.297243}, {1000, 600, 600, 1e-5, 5.270399},
        {100, 100, 100, 1e-5, 3.490216},  {1000, 500, 482, 1e-5, 2.882087}, {2000, 400, 300, 1e-5, 0.902779},
    };
    for (size_t k = 0; k < sizeof ref / sizeof ref[0]; k++)
        assert_true(fabs(lb(ref[k].m, ref[k].r, ref[k].v, BETA, ref[k].delta) - ref[k].eps) < 2e-6);
}

/* The bound is a crossing of β: p(ε) < β just below it, p >= β just above it. */
static void test_bound_is_a_crossing(void **state)
{
    (void)state;
    const int64_t cases[][3] = {{1000, 200, 150}, {1000, 200, 190}, {1000, 500, 300}, {200, 20, 18}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int64_t m = cases[k][0], r = cases[k][1], v = cases[k][2];
        for (int d = 0; d < 2; d++) {
            double delta = d ? 1e-5 : 0.0;
            double e = lb(m, r, v, BETA, delta);
            assert_true(e > 0.0);
            assert_true(pv(m, r, v, e, delta) < BETA);
            assert_true(pv(m, r, v, e + 1e-6, delta) >= BETA);
        }
    }
}

/* More right guesses, a larger β (less confidence) or a smaller δ never lower the bound. */
static void test_monotone(void **state)
{
    (void)state;
    const int64_t m = 1000, r = 200;
    double prev = 0.0;
    for (int64_t v = 0; v <= r; v++) {
        double e = lb(m, r, v, BETA, 1e-5);
        assert_true(e >= prev - 1e-9);
        assert_true(e <= lb(m, r, v, BETA, 0.0) + 1e-9);
        assert_true(e <= lb(m, r, v, 0.2, 1e-5) + 1e-9);
        prev = e;
    }
    assert_true(prev > 3.0); /* 200 of 200 */
    /* for a fixed accuracy, more guesses give more evidence */
    assert_true(lb(m, 100, 90, BETA, 0.0) < lb(m, 1000, 900, BETA, 0.0));
    /* δ matters: with 2 m δ near β the δ term alone nearly exhausts the budget */
    assert_true(lb(m, r, r, BETA, 2e-5) < lb(m, r, r, BETA, 0.0));
}

static void test_bad_arguments(void **state)
{
    (void)state;
    double e = 42.0, p = 42.0;
    assert_int_equal(fp_dp_audit_eps_lower_bound(100, 10, 11, BETA, 0.0, &e), FP_ERR_RANGE); /* v > r */
    assert_int_equal(fp_dp_audit_eps_lower_bound(100, 0, 0, BETA, 0.0, &e), FP_ERR_RANGE);   /* r = 0 */
    assert_int_equal(fp_dp_audit_eps_lower_bound(100, 10, -1, BETA, 0.0, &e), FP_ERR_RANGE); /* v < 0 */
    assert_int_equal(fp_dp_audit_eps_lower_bound(5, 10, 5, BETA, 0.0, &e), FP_ERR_RANGE);    /* r > m */
    assert_int_equal(fp_dp_audit_eps_lower_bound(100, -3, 0, BETA, 0.0, &e), FP_ERR_RANGE);
    assert_int_equal(fp_dp_audit_eps_lower_bound((int64_t)FP_DP_AUDIT_MAX_GUESSES + 1, 10, 5, BETA, 0.0, &e),
                     FP_ERR_RANGE);
    const double bad_beta[] = {0.0, 1.0, -0.1, 1.5, NAN, INFINITY};
    for (size_t k = 0; k < sizeof bad_beta / sizeof bad_beta[0]; k++)
        assert_int_equal(fp_dp_audit_eps_lower_bound(100, 10, 5, bad_beta[k], 0.0, &e), FP_ERR_RANGE);
    const double bad_delta[] = {-1e-9, 1.0, NAN, INFINITY};
    for (size_t k = 0; k < sizeof bad_delta / sizeof bad_delta[0]; k++) {
        assert_int_equal(fp_dp_audit_eps_lower_bound(100, 10, 5, BETA, bad_delta[k], &e), FP_ERR_RANGE);
        assert_int_equal(fp_dp_audit_p_value(100, 10, 5, 1.0, bad_delta[k], &p), FP_ERR_RANGE);
    }
    assert_true(e == 42.0); /* untouched on error */
    assert_int_equal(fp_dp_audit_eps_lower_bound(100, 10, 5, BETA, 0.0, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_dp_audit_p_value(100, 10, 5, 1.0, 0.0, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_dp_audit_p_value(100, 10, 5, -1.0, 0.0, &p), FP_ERR_RANGE);
    assert_int_equal(fp_dp_audit_p_value(100, 10, 5, NAN, 0.0, &p), FP_ERR_RANGE);
    assert_int_equal(fp_dp_audit_p_value(100, 10, 5, INFINITY, 0.0, &p), FP_ERR_RANGE);
    assert_int_equal(fp_dp_audit_p_value(100, 10, 11, 1.0, 0.0, &p), FP_ERR_RANGE);
    assert_true(p == 42.0);
    assert_true(fp_error_message()[0] != '\0');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_correct_closed_form), cmocka_unit_test(test_chance_gives_zero),
        cmocka_unit_test(test_p_value_by_hand),         cmocka_unit_test(test_reference_values),
        cmocka_unit_test(test_bound_is_a_crossing),
        cmocka_unit_test(test_monotone),                cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
