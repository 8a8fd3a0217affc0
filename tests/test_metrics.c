/* test_metrics: ranks and HR/NDCG on hand-made rankings, with ties, NaN and exclusion lists. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "common/metrics.h"

static void test_rank_basic(void **state)
{
    (void)state;
    const float others[] = {0.1f, 0.9f, 0.5f, -3.0f};
    assert_int_equal(fp_metrics_rank(1.0f, others, 4), 0);
    assert_int_equal(fp_metrics_rank(0.6f, others, 4), 1);
    assert_int_equal(fp_metrics_rank(0.0f, others, 4), 3);
    assert_int_equal(fp_metrics_rank(-5.0f, others, 4), 4);
    assert_int_equal(fp_metrics_rank(1.0f, others, 0), 0);
    assert_int_equal(fp_metrics_rank(1.0f, NULL, 0), 0);
}

static void test_rank_ties_pessimistic(void **state)
{
    (void)state;
    const float equal[] = {2.0f, 2.0f, 2.0f, 2.0f, 2.0f};
    /* A model that scores everything equally must rank the target last, not first. */
    assert_int_equal(fp_metrics_rank(2.0f, equal, 5), 5);
    const float some[] = {3.0f, 2.0f, 1.0f, 2.0f};
    assert_int_equal(fp_metrics_rank(2.0f, some, 4), 3); /* one above, two ties */
    /* -0.0 == 0.0 is a tie. */
    const float zero[] = {-0.0f};
    assert_int_equal(fp_metrics_rank(0.0f, zero, 1), 1);
}

static void test_rank_nan(void **state)
{
    (void)state;
    const float others[] = {0.1f, 0.2f, 0.3f};
    assert_int_equal(fp_metrics_rank(NAN, others, 3), 3);
    const float with_nan[] = {NAN, 0.2f, NAN};
    assert_int_equal(fp_metrics_rank(0.1f, with_nan, 3), 1); /* NaN others never beat it */
    assert_int_equal(fp_metrics_rank(NAN, with_nan, 3), 3);
    const float inf[] = {INFINITY, -INFINITY};
    assert_int_equal(fp_metrics_rank(INFINITY, inf, 2), 1); /* +inf ties +inf */
}

static void test_rank_excluding(void **state)
{
    (void)state;
    /* index:            0     1     2     3     4     5 */
    const float s[] = {9.0f, 0.5f, 0.7f, 0.6f, 0.8f, 0.1f};
    /* target 3 (0.6): beaten by 0, 2, 4 -> 3; excluding padding 0 -> 2. */
    assert_int_equal(fp_metrics_rank_excluding(s, 6, 3, NULL, 0), 3);
    const int32_t pad[] = {0};
    assert_int_equal(fp_metrics_rank_excluding(s, 6, 3, pad, 1), 2);
    /* Duplicates, the target itself and out-of-range entries change nothing more. */
    const int32_t messy[] = {0, 4, 0, 3, 4, 3, -1, 6, 1000, 1, 1};
    assert_int_equal(fp_metrics_rank_excluding(s, 6, 3, messy, 11), 1); /* only 2 remains above */
    /* Excluding every other item: rank 0. */
    const int32_t all[] = {0, 1, 2, 4, 5};
    assert_int_equal(fp_metrics_rank_excluding(s, 6, 3, all, 5), 0);
    /* Ties are pessimistic here too, and an excluded tie no longer counts. */
    const float t[] = {0.0f, 1.0f, 1.0f, 1.0f, 2.0f};
    assert_int_equal(fp_metrics_rank_excluding(t, 5, 1, NULL, 0), 3);
    const int32_t ex2[] = {2, 2, 2};
    assert_int_equal(fp_metrics_rank_excluding(t, 5, 1, ex2, 3), 2);
    /* NaN target: last among what remains after exclusion. */
    const float n[] = {0.0f, NAN, 1.0f, NAN, 2.0f};
    assert_int_equal(fp_metrics_rank_excluding(n, 5, 1, NULL, 0), 4);
    const int32_t ex3[] = {0, 3, 3, 1};
    assert_int_equal(fp_metrics_rank_excluding(n, 5, 1, ex3, 4), 2);
    /* NaN others never beat a real target. */
    assert_int_equal(fp_metrics_rank_excluding(n, 5, 2, NULL, 0), 1);
}

static void test_rank_excluding_bad_args(void **state)
{
    (void)state;
    const float s[] = {1.0f, 2.0f};
    assert_int_equal(fp_metrics_rank_excluding(s, 2, 2, NULL, 0), -1);
    assert_int_equal(fp_metrics_rank_excluding(s, 2, -1, NULL, 0), -1);
    assert_int_equal(fp_metrics_rank_excluding(s, 0, 0, NULL, 0), -1);
    assert_int_equal(fp_metrics_rank_excluding(NULL, 2, 0, NULL, 0), -1);
    const int32_t ex[] = {1};
    assert_int_equal(fp_metrics_rank_excluding(s, 2, 0, ex, -5), 1); /* negative count = none */
    assert_int_equal(fp_metrics_rank_excluding(s, 2, 0, NULL, 7), 1);
    /* A single candidate ranks first. */
    assert_int_equal(fp_metrics_rank_excluding(s, 1, 0, NULL, 0), 0);
}

/* The bitmap path (long exclusion lists) agrees with a brute-force count. */
static void test_rank_excluding_long_list(void **state)
{
    (void)state;
    enum { N = 5000, E = 3000 };
    float *s = malloc(N * sizeof *s);
    int32_t *ex = malloc(E * sizeof *ex);
    char *excluded = calloc(N, 1);
    assert_non_null(s);
    assert_non_null(ex);
    assert_non_null(excluded);
    uint32_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 1664525u + 1013904223u;
        s[i] = (float)(x >> 24) / 16.0f; /* many ties */
    }
    for (int i = 0; i < E; i++) {
        x = x * 1664525u + 1013904223u;
        ex[i] = (int32_t)(x % (N + 100)) - 50; /* duplicates and out-of-range values */
    }
    for (int tgt = 0; tgt < N; tgt += 499) {
        for (int i = 0; i < N; i++)
            excluded[i] = 0;
        for (int i = 0; i < E; i++)
            if (ex[i] >= 0 && ex[i] < N)
                excluded[ex[i]] = 1;
        int64_t want = 0;
        for (int i = 0; i < N; i++)
            if (i != tgt && !excluded[i] && s[i] >= s[tgt])
                want++;
        assert_int_equal(fp_metrics_rank_excluding(s, N, tgt, ex, E), want);
    }
    free(s);
    free(ex);
    free(excluded);
}

static void test_hr_ndcg_known(void **state)
{
    (void)state;
    fp_metrics_t m;
    fp_metrics_init(&m, 10);
    fp_metrics_add(&m, 0);
    fp_metrics_add(&m, 1);
    fp_metrics_add(&m, 9);
    fp_metrics_add(&m, 10);
    assert_int_equal(m.n, 4);
    assert_true(fabs(fp_metrics_hr(&m) - 0.75) < 1e-12);
    double want = (1.0 + 1.0 / log2(3.0) + 1.0 / log2(11.0)) / 4.0;
    assert_true(fabs(fp_metrics_ndcg(&m) - want) < 1e-12);
}

static void test_hr_ndcg_edge(void **state)
{
    (void)state;
    fp_metrics_t m;
    fp_metrics_init(&m, 10);
    assert_true(fp_metrics_hr(&m) == 0.0);
    assert_true(fp_metrics_ndcg(&m) == 0.0);
    /* A negative rank (bad call) counts as a miss, never as a hit. */
    fp_metrics_add(&m, -1);
    fp_metrics_add(&m, 0);
    assert_true(fabs(fp_metrics_hr(&m) - 0.5) < 1e-12);
    assert_true(fabs(fp_metrics_ndcg(&m) - 0.5) < 1e-12);
    /* K = 1: only rank 0 counts. */
    fp_metrics_init(&m, 1);
    fp_metrics_add(&m, 0);
    fp_metrics_add(&m, 1);
    assert_true(fabs(fp_metrics_hr(&m) - 0.5) < 1e-12);
    /* K = 0: nothing is a hit. */
    fp_metrics_init(&m, 0);
    fp_metrics_add(&m, 0);
    assert_true(fp_metrics_hr(&m) == 0.0);
    assert_true(fp_metrics_ndcg(&m) == 0.0);
}

/* A degenerate model (all scores equal) scores HR = 0 with 100 negatives and K = 10. */
static void test_degenerate_model(void **state)
{
    (void)state;
    float s[101];
    for (int i = 0; i < 101; i++)
        s[i] = 0.25f;
    fp_metrics_t m;
    fp_metrics_init(&m, 10);
    for (int u = 0; u < 50; u++)
        fp_metrics_add(&m, fp_metrics_rank(s[0], s + 1, 100));
    assert_true(fp_metrics_hr(&m) == 0.0);
    assert_true(fp_metrics_ndcg(&m) == 0.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rank_basic),
        cmocka_unit_test(test_rank_ties_pessimistic),
        cmocka_unit_test(test_rank_nan),
        cmocka_unit_test(test_rank_excluding),
        cmocka_unit_test(test_rank_excluding_bad_args),
        cmocka_unit_test(test_rank_excluding_long_list),
        cmocka_unit_test(test_hr_ndcg_known),
        cmocka_unit_test(test_hr_ndcg_edge),
        cmocka_unit_test(test_degenerate_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
