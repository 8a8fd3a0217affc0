/* test_dpsgd: DP-SGD's clipped gradient (fp_model_loss_grad_clipped, ghost clipping) against a
 * naive implementation, and the pieces around it.
 *
 * The naive reference runs the ordinary backward pass (fp_model_loss_grad) for each user alone
 * (B = 1), turns its mean loss into the sum over the user's positions (x its number of loss
 * positions), drops the l2_emb term, computes the explicit L2 norm of that full per-user gradient
 * in double, clips it with the same factor min(1, clip * FP_MODEL_CLIP_MARGIN / norm), and sums
 * the clipped gradients in double. It shares no norm code with the model: the per-user norms of
 * the model come from Gram matrices, per-user weight-gradient products, per-user column sums and
 * sparse embedding rows over a packed batch.
 *
 * Tolerance: both sides are float32 computations of the same quantities through different
 * summation orders (a batch of users vs one user; ghost Gram matrices vs explicit squares), each
 * coordinate a sum of products a few hundred float operations deep. With unit roundoff 2^-24
 * (6e-8), the relative error of a norm or of a gradient coordinate is bounded by ~300 x 6e-8 =
 * 2e-5 if every rounding added up (they mostly cancel: ~1e-7 is typical). Norms must agree to
 * 2e-5 relative; gradients coordinate-wise to 2e-5 relative plus a floor of 2e-5 x the largest
 * coordinate (float noise of a coordinate comes from the terms it is summed from, not from its
 * own size: see test_model.c's check_grad), and in L2 to 2e-5 relative. A clipping mistake (a
 * user's item rows not summed before squaring, a missing parameter in the norm, a wrong factor)
 * moves them by far more: the test checks that too. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/dpsgd.h"
#include "common/data.h"
#include "common/model.h"
#include "common/params.h"
#include "dp/accountant.h"

#define TOL 2e-5

/* dim 8, 2 blocks, 2 heads, maxlen 6, 20 items: every kind of parameter, fast. */
static fp_model_config_t cfg(fp_loss_kind loss, int n_neg, float dropout, float l2)
{
    fp_model_config_t c = {.n_items = 20, .dim = 8, .blocks = 2, .heads = 2, .maxlen = 6, .dropout = dropout,
                           .loss = loss, .n_neg = n_neg, .l2_emb = l2};
    return c;
}

/* Users: full (6), with repeated items (item 3 as input twice, as a positive and, via the
 * negatives below, as its own negative), length 1, all padding (no loss: norm 0), a padding
 * position inside, a loss target at a padding position, another long one, length 2. */
enum { NB = 8, T = 6 };
static const int32_t seq0[NB * T] = {
    1, 2, 3, 4, 5, 6,     /* full */
    3, 7, 3, 8, 3, 9,     /* item 3 three times as input */
    0, 0, 0, 0, 0, 10,    /* length 1 */
    0, 0, 0, 0, 0, 0,     /* all padding */
    0, 11, 0, 12, 13, 1,  /* padding position inside */
    0, 0, 0, 0, 4, 14,    /* loss target at a padding position */
    15, 16, 17, 18, 19, 20, /* full */
    0, 0, 0, 0, 20, 2,    /* length 2 */
};
static const int32_t pos0[NB * T] = {
    2, 3, 4, 5, 6, 7,       /* */
    7, 3, 8, 3, 9, 3,       /* item 3 also a positive */
    0, 0, 0, 0, 0, 11,      /* */
    0, 0, 0, 0, 0, 0,       /* */
    0, 12, 0, 13, 1, 15,    /* */
    0, 0, 0, 3, 14, 16,     /* */
    16, 17, 18, 19, 20, 1,  /* */
    0, 0, 0, 0, 2, 5,       /* */
};

/* Negatives in [0, 20] (0, the padding item, is a valid negative with no gradient); user 1's
 * negatives are all item 3, which is also its input and positive. */
static void negs(int32_t *neg, int K, uint64_t seed)
{
    fp_rng_t r;
    fp_rng_seed(&r, seed);
    for (int i = 0; i < NB * T * K; i++)
        neg[i] = (int32_t)fp_rng_below(&r, 21);
    for (int i = 1 * T * K; i < 2 * T * K; i++)
        neg[i] = 3;
}

static fp_model_t *make(const fp_model_config_t *c, int max_batch, uint64_t seed)
{
    fp_model_t *m = NULL;
    assert_int_equal(fp_model_create(c, max_batch, 1, &m), FP_OK);
    fp_model_init(m, seed);
    /* non-trivial LayerNorm affine parameters and biases, so their gradients are exercised */
    const fp_layout_t *l = fp_model_layout(m);
    float *p = fp_model_params(m);
    fp_rng_t r;
    fp_rng_seed(&r, seed + 1);
    for (size_t i = 0; i < l->n_tensors; i++)
        if (l->tensors[i].ndim == 1)
            for (size_t j = 0; j < l->tensors[i].numel; j++)
                p[l->tensors[i].offset + j] += (float)(0.3 * fp_rng_normal(&r));
    return m;
}

static int loss_positions(const int32_t *pos)
{
    int n = 0;
    for (int t = 0; t < T; t++)
        n += pos[t] != 0;
    return n;
}

/* The naive per-user gradients of the summed loss: g[u][P] (double), norms[u]. m_ref has
 * l2_emb = 0; dropout off. */
static void naive_grads(fp_model_t *m_ref, const int32_t *seq, const int32_t *pos, const int32_t *neg, int B, int K,
                        double *g, double *norms)
{
    const size_t P = fp_model_layout(m_ref)->total;
    for (int u = 0; u < B; u++) {
        fp_batch_t b1 = {1, seq + (size_t)u * T, pos + (size_t)u * T, neg + (size_t)u * T * K};
        double loss;
        assert_int_equal(fp_model_loss_grad(m_ref, &b1, NULL, &loss), FP_OK);
        const int nl = loss_positions(pos + (size_t)u * T);
        const float *gr = fp_model_grads(m_ref);
        double s = 0;
        for (size_t i = 0; i < P; i++) {
            g[(size_t)u * P + i] = (double)gr[i] * nl;
            s += g[(size_t)u * P + i] * g[(size_t)u * P + i];
        }
        norms[u] = sqrt(s);
    }
}

/* |a - b| <= TOL |b| + TOL max|b| per coordinate, and ||a - b|| <= TOL ||b||; returns failures. */
static int compare(const float *a, const double *b, size_t n, const char *what)
{
    double mx = 0, d2 = 0, b2 = 0;
    for (size_t i = 0; i < n; i++)
        mx = fmax(mx, fabs(b[i]));
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]);
        d2 += e * e;
        b2 += b[i] * b[i];
        if (!(e <= TOL * fabs(b[i]) + TOL * mx)) {
            if (bad < 5 && what[0] != '(')
                print_message("%s[%zu]: %.9g vs %.9g\n", what, i, (double)a[i], b[i]);
            bad++;
        }
    }
    if (!(sqrt(d2) <= TOL * sqrt(b2))) {
        if (what[0] != '(')
            print_message("%s: relative L2 error %.3g\n", what, sqrt(d2 / b2));
        bad++;
    }
    if (getenv("FP_TEST_VERBOSE"))
        print_message("%s: relative L2 error %.3g over %zu coordinates\n", what, sqrt(d2 / fmax(b2, 1e-300)), n);
    return bad;
}

static void clipped_vs_naive(fp_loss_kind loss, int K, fp_block_kind block)
{
    fp_model_config_t c = cfg(loss, K, 0.0f, 0.01f), c0;
    c.block = block;
    c0 = c;
    c0.l2_emb = 0.0f;
    fp_model_t *m = make(&c, NB, 11), *ref = make(&c0, 1, 11);
    const size_t P = fp_model_layout(m)->total;
    memcpy(fp_model_params(ref), fp_model_params(m), P * sizeof(float));
    int32_t neg[NB * T * 8];
    negs(neg, K, 5);
    double *g = malloc((size_t)NB * P * sizeof *g), *sum = calloc(P, sizeof *sum), nn[NB], mn[NB];
    assert_true(g && sum);
    naive_grads(ref, seq0, pos0, neg, NB, K, g, nn);

    /* a clip between the users' norms: some are clipped, some are not */
    double lo = INFINITY, hi = 0;
    for (int u = 0; u < NB; u++)
        if (nn[u] > 0)
            lo = fmin(lo, nn[u]), hi = fmax(hi, nn[u]);
    assert_true(nn[3] == 0.0 && hi > 1.5 * lo);
    const double clip = sqrt(lo * hi);
    int above = 0, below = 0;
    for (int u = 0; u < NB; u++) {
        double f = nn[u] > clip * FP_MODEL_CLIP_MARGIN ? clip * FP_MODEL_CLIP_MARGIN / nn[u] : 1.0;
        above += f < 1.0, below += nn[u] > 0 && f == 1.0;
        assert_true(fabs(nn[u] - clip) > 1e-3 * clip); /* no user near the boundary */
        for (size_t i = 0; i < P; i++)
            sum[i] += f * g[(size_t)u * P + i];
    }
    assert_true(above >= 2 && below >= 2);

    fp_batch_t b = {NB, seq0, pos0, neg};
    double l;
    assert_int_equal(fp_model_loss_grad_clipped(m, &b, NULL, clip, 0, mn, &l), FP_OK);
    for (int u = 0; u < NB; u++) {
        if (getenv("FP_TEST_VERBOSE"))
            print_message("user %d: norm %.9g naive %.9g\n", u, mn[u], nn[u]);
        assert_true(fabs(mn[u] - nn[u]) <= TOL * nn[u]);
    }
    assert_int_equal(compare(fp_model_grads(m), sum, P, "clipped sum"), 0);

    /* teeth: user 1's item 3 (input three times, positive, every negative) carries a sizable
     * share of its gradient, so its rows must be summed before squaring for the norms above to
     * agree; and a clipped sum 1% off fails the comparison */
    {
        const fp_tensor_info_t *te = fp_layout_find(fp_model_layout(m), "item_emb");
        const size_t C = (size_t)c.dim, r3 = te->offset + 3 * C;
        double row = 0, rest;
        for (size_t j = 0; j < C; j++)
            row += g[1 * P + r3 + j] * g[1 * P + r3 + j];
        rest = nn[1] * nn[1] - row;
        assert_true(row > 1e-3 * nn[1] * nn[1] && rest >= 0);
        float *G = fp_model_grads(m);
        for (size_t i = 0; i < P; i++)
            G[i] *= 1.01f;
        assert_true(compare(G, sum, P, "(expected to fail)") > 0);
    }

    /* accumulate: two sub-batches (rows 0-2, 3-7) add up to the whole batch */
    fp_batch_t b1 = {3, seq0, pos0, neg}, b2 = {NB - 3, seq0 + 3 * T, pos0 + 3 * T, neg + 3 * T * K};
    assert_int_equal(fp_model_loss_grad_clipped(m, &b1, NULL, clip, 0, NULL, NULL), FP_OK);
    assert_int_equal(fp_model_loss_grad_clipped(m, &b2, NULL, clip, 1, mn + 3, NULL), FP_OK);
    for (int u = 3; u < NB; u++)
        assert_true(fabs(mn[u] - nn[u]) <= TOL * nn[u]);
    assert_int_equal(compare(fp_model_grads(m), sum, P, "two sub-batches"), 0);

    free(g);
    free(sum);
    fp_model_destroy(m);
    fp_model_destroy(ref);
}

static void test_clipped_vs_naive_bce(void **state)
{
    (void)state;
    clipped_vs_naive(FP_LOSS_BCE, 1, FP_BLOCK_PRENORM);
}

static void test_clipped_vs_naive_softmax(void **state)
{
    (void)state;
    clipped_vs_naive(FP_LOSS_SAMPLED_SOFTMAX, 4, FP_BLOCK_PRENORM);
}

/* SASRec's wiring: keys and values read the block input, queries and the residual LN1(x). */
static void test_clipped_vs_naive_sasrec(void **state)
{
    (void)state;
    clipped_vs_naive(FP_LOSS_BCE, 1, FP_BLOCK_SASREC);
    clipped_vs_naive(FP_LOSS_SAMPLED_SOFTMAX, 4, FP_BLOCK_SASREC);
}

/* A long window (maxlen 40 > dim 16) makes the linear layers take the materialised per-user
 * product for long users and the ghost norm for short ones: both against the naive norms. */
static void test_ghost_and_materialised(void **state)
{
    (void)state;
    fp_model_config_t c = {.n_items = 60, .dim = 16, .blocks = 1, .heads = 2, .maxlen = 40, .dropout = 0.0f,
                           .loss = FP_LOSS_BCE, .n_neg = 1, .l2_emb = 0.0f};
    enum { B = 4, TL = 40 };
    fp_model_t *m = make(&c, B, 3), *ref = make(&c, 1, 3);
    const size_t P = fp_model_layout(m)->total;
    memcpy(fp_model_params(ref), fp_model_params(m), P * sizeof(float));
    int32_t seq[B * TL] = {0}, pos[B * TL] = {0}, neg[B * TL] = {0};
    /* dim 16: ghost when L (16 + 16 n_out) < 256 n_out, i.e. L < 8 for one layer, L < 12 for
     * Wq/Wk/Wv together: 3 is ghost everywhere, 9 mixed, 17 and 40 materialised */
    const int lens[B] = {40, 3, 17, 9};
    fp_rng_t r;
    fp_rng_seed(&r, 4);
    for (int u = 0; u < B; u++)
        for (int t = TL - lens[u]; t < TL; t++) {
            seq[u * TL + t] = 1 + (int32_t)fp_rng_below(&r, 60);
            pos[u * TL + t] = 1 + (int32_t)fp_rng_below(&r, 60);
            neg[u * TL + t] = 1 + (int32_t)fp_rng_below(&r, 60);
        }
    double *g = malloc((size_t)B * P * sizeof *g), *sum = calloc(P, sizeof *sum), nn[B], mn[B];
    assert_true(g && sum);
    for (int u = 0; u < B; u++) {
        fp_batch_t b1 = {1, seq + u * TL, pos + u * TL, neg + u * TL};
        double l;
        assert_int_equal(fp_model_loss_grad(ref, &b1, NULL, &l), FP_OK);
        double s = 0;
        for (size_t i = 0; i < P; i++) {
            g[u * P + i] = (double)fp_model_grads(ref)[i] * lens[u];
            s += g[u * P + i] * g[u * P + i];
        }
        nn[u] = sqrt(s);
    }
    const double clip = 1e30; /* nobody clipped: the sum of the users' gradients */
    for (int u = 0; u < B; u++)
        for (size_t i = 0; i < P; i++)
            sum[i] += g[u * P + i];
    fp_batch_t b = {B, seq, pos, neg};
    double l;
    assert_int_equal(fp_model_loss_grad_clipped(m, &b, NULL, clip, 0, mn, &l), FP_OK);
    for (int u = 0; u < B; u++)
        assert_true(fabs(mn[u] - nn[u]) <= TOL * nn[u]);
    assert_int_equal(compare(fp_model_grads(m), sum, P, "unclipped sum"), 0);
    free(g);
    free(sum);
    fp_model_destroy(m);
    fp_model_destroy(ref);
}

/* DP off vs on, same seed (dropout on, attention-probability dropout included): with a clip no
 * user reaches (and no noise), DP-SGD's summed gradient is the non-private one times the number
 * of loss positions, plus the l2_emb term added after (fp_model_add_l2_grad). */
static void test_huge_clip_equals_nonprivate(void **state)
{
    (void)state;
    fp_model_config_t c = cfg(FP_LOSS_BCE, 1, 0.3f, 0.02f);
    fp_model_t *m = make(&c, NB, 21);
    const size_t P = fp_model_layout(m)->total;
    int32_t neg[NB * T];
    negs(neg, 1, 8);
    fp_batch_t b = {NB, seq0, pos0, neg};
    int NL = 0;
    for (int i = 0; i < NB * T; i++)
        NL += pos0[i] != 0;
    fp_rng_t r0, r;
    fp_rng_seed(&r0, 77);
    double l_np, l_dp;
    r = r0;
    assert_int_equal(fp_model_loss_grad(m, &b, &r, &l_np), FP_OK);
    double *want = malloc(P * sizeof *want);
    assert_non_null(want);
    for (size_t i = 0; i < P; i++)
        want[i] = fp_model_grads(m)[i];
    r = r0;
    assert_int_equal(fp_model_loss_grad_clipped(m, &b, &r, 1e30, 0, NULL, &l_dp), FP_OK);
    float *G = fp_model_grads(m);
    for (size_t i = 0; i < P; i++)
        G[i] /= (float)NL;
    fp_model_add_l2_grad(m);
    assert_int_equal(compare(G, want, P, "huge clip vs non-private"), 0);
    /* the loss reported is the data loss (no L2 term): the non-private one minus l2 * ||E||^2 */
    assert_true(l_dp < l_np);
    free(want);
    fp_model_destroy(m);
}

/* With dropout on, each user alone: its reported norm is the norm of its full gradient under the
 * same masks, and a clip below it leaves a gradient of norm clip * FP_MODEL_CLIP_MARGIN. */
static void test_dropout_norms(void **state)
{
    (void)state;
    fp_model_config_t c = cfg(FP_LOSS_BCE, 1, 0.3f, 0.0f);
    fp_model_t *m = make(&c, 1, 31);
    const size_t P = fp_model_layout(m)->total;
    int32_t neg[NB * T];
    negs(neg, 1, 9);
    int checked = 0;
    for (int u = 0; u < NB; u++) {
        fp_batch_t b = {1, seq0 + u * T, pos0 + u * T, neg + u * T};
        const int nl = loss_positions(pos0 + u * T);
        fp_rng_t r0, r;
        fp_rng_seed(&r0, 100 + (uint64_t)u);
        double l, norm;
        r = r0;
        assert_int_equal(fp_model_loss_grad(m, &b, &r, &l), FP_OK);
        double s = 0;
        for (size_t i = 0; i < P; i++)
            s += (double)fp_model_grads(m)[i] * nl * ((double)fp_model_grads(m)[i] * nl);
        r = r0;
        assert_int_equal(fp_model_loss_grad_clipped(m, &b, &r, 1e-3, 0, &norm, &l), FP_OK);
        assert_true(fabs(norm - sqrt(s)) <= TOL * sqrt(s));
        double s2 = 0;
        for (size_t i = 0; i < P; i++)
            s2 += (double)fp_model_grads(m)[i] * fp_model_grads(m)[i];
        if (nl == 0) {
            assert_true(norm == 0.0 && s2 == 0.0);
            continue;
        }
        assert_true(norm > 1e-3);
        assert_true(fabs(sqrt(s2) - 1e-3 * FP_MODEL_CLIP_MARGIN) <= TOL * 1e-3);
        assert_true(sqrt(s2) <= 1e-3); /* the margin covers the float error */
        checked++;
    }
    assert_int_equal(checked, NB - 1);
    fp_model_destroy(m);
}

/* Two threads (per-user work split across threads, each with its own scratch slice) against
 * one, on a batch large enough for the kernels to use both: the same norms and sums up to the
 * sgemm splits' rounding (the only thread-dependent arithmetic, see kernels.h). */
static void test_threads(void **state)
{
    (void)state;
    fp_model_config_t c = {.n_items = 300, .dim = 32, .blocks = 1, .heads = 2, .maxlen = 20, .dropout = 0.1f,
                           .loss = FP_LOSS_SAMPLED_SOFTMAX, .n_neg = 3, .l2_emb = 0.0f};
    enum { B = 96, TL = 20, K = 3 };
    int32_t *seq = calloc(B * TL, sizeof *seq), *pos = calloc(B * TL, sizeof *pos),
            *neg = calloc(B * TL * K, sizeof *neg);
    assert_true(seq && pos && neg);
    fp_rng_t r;
    fp_rng_seed(&r, 12);
    for (int u = 0; u < B; u++) {
        int len = 1 + (int)fp_rng_below(&r, TL);
        for (int t = TL - len; t < TL; t++) {
            seq[u * TL + t] = 1 + (int32_t)fp_rng_below(&r, 300);
            pos[u * TL + t] = 1 + (int32_t)fp_rng_below(&r, 300);
            for (int k = 0; k < K; k++)
                neg[(u * TL + t) * K + k] = 1 + (int32_t)fp_rng_below(&r, 300);
        }
    }
    double norms[2][B];
    float *g[2];
    size_t P = 0;
    for (int th = 0; th < 2; th++) {
        fp_model_t *m = NULL;
        assert_int_equal(fp_model_create(&c, B, th + 1, &m), FP_OK);
        fp_model_init(m, 5);
        P = fp_model_layout(m)->total;
        fp_batch_t b = {B, seq, pos, neg};
        fp_rng_seed(&r, 13);
        double l;
        assert_int_equal(fp_model_loss_grad_clipped(m, &b, &r, 0.5, 0, norms[th], &l), FP_OK);
        g[th] = malloc(P * sizeof(float));
        assert_non_null(g[th]);
        memcpy(g[th], fp_model_grads(m), P * sizeof(float));
        fp_model_destroy(m);
    }
    double *ref = malloc(P * sizeof *ref);
    assert_non_null(ref);
    for (size_t i = 0; i < P; i++)
        ref[i] = g[0][i];
    for (int u = 0; u < B; u++)
        assert_true(fabs(norms[1][u] - norms[0][u]) <= TOL * norms[0][u]);
    assert_int_equal(compare(g[1], ref, P, "2 threads vs 1"), 0);
    free(ref);
    free(g[0]);
    free(g[1]);
    free(seq);
    free(pos);
    free(neg);
}

static void test_bad_input(void **state)
{
    (void)state;
    fp_model_config_t c = cfg(FP_LOSS_BCE, 1, 0.2f, 0.0f);
    fp_model_t *m = make(&c, 4, 1);
    int32_t neg[NB * T];
    negs(neg, 1, 1);
    fp_batch_t b = {4, seq0, pos0, neg};
    fp_rng_t r;
    fp_rng_seed(&r, 1);
    double l, norms[4];
    assert_int_equal(fp_model_loss_grad_clipped(NULL, &b, &r, 1.0, 0, norms, &l), FP_ERR_INVALID);
    assert_int_equal(fp_model_loss_grad_clipped(m, &b, &r, 0.0, 0, norms, &l), FP_ERR_INVALID);
    assert_int_equal(fp_model_loss_grad_clipped(m, &b, &r, -1.0, 0, norms, &l), FP_ERR_INVALID);
    assert_int_equal(fp_model_loss_grad_clipped(m, &b, &r, NAN, 0, norms, &l), FP_ERR_INVALID);
    assert_int_equal(fp_model_loss_grad_clipped(m, &b, &r, INFINITY, 0, norms, &l), FP_ERR_INVALID);
    assert_int_equal(fp_model_loss_grad_clipped(m, &b, NULL, 1.0, 0, norms, &l), FP_ERR_INVALID); /* dropout */
    b.B = 5;
    assert_int_equal(fp_model_loss_grad_clipped(m, &b, &r, 1.0, 0, norms, &l), FP_ERR_RANGE);
    b.B = 0; /* an empty Poisson sample: zero gradient */
    assert_int_equal(fp_model_loss_grad_clipped(m, &b, &r, 1.0, 0, NULL, &l), FP_OK);
    const size_t P = fp_model_layout(m)->total;
    for (size_t i = 0; i < P; i++)
        assert_true(fp_model_grads(m)[i] == 0.0f);
    assert_true(l == 0.0);
    /* a parameter that makes the loss non-finite: refused before the grads are touched */
    b.B = 4;
    fp_model_params(m)[fp_layout_find(fp_model_layout(m), "ln_f.g")->offset] = INFINITY;
    fp_model_grads(m)[5] = 42.0f;
    assert_int_equal(fp_model_loss_grad_clipped(m, &b, &r, 1.0, 1, NULL, &l), FP_ERR_NUMERIC);
    assert_true(fp_model_grads(m)[5] == 42.0f);
    fp_model_add_l2_grad(NULL); /* no-op */
    fp_model_destroy(m);
}

/* ------------------------------------------------------------------ the DP-SGD step (client/dpsgd) */

static void test_plan(void **state)
{
    (void)state;
    const size_t P = 1220000;
    fp_dpsgd_plan_t p;
    /* calibrated: spends at most the target, and not much less */
    assert_int_equal(fp_dpsgd_plan(0, 8.0, 1.0, 1e-5, 31013, 128, P, 200 * 243, &p), FP_OK);
    assert_true(p.q == 128.0 / 31013 && p.steps_per_epoch == 243);
    double eps;
    assert_int_equal(fp_dpsgd_epsilon(&p, 200 * 243, &eps), FP_OK);
    assert_true(eps <= 8.0 && eps > 7.99);
    /* the grid is a power of two that widens the sensitivity by at most 1/1024 of the clip, and
     * the noise as added makes up for it */
    assert_true(p.grid == exp2(round(log2(p.grid))));
    assert_true(p.grid * sqrt((double)P) <= p.clip / 1024);
    assert_true(p.noise_accounted < p.noise_multiplier && p.noise_accounted > p.noise_multiplier * (1 - 1.0 / 1024));
    double direct;
    assert_int_equal(fp_dp_epsilon(p.q, p.noise_accounted, 1000, 1e-5, FP_DP_CONVERSION_IMPROVED, &direct, NULL),
                     FP_OK);
    assert_int_equal(fp_dpsgd_epsilon(&p, 1000, &eps), FP_OK);
    assert_true(eps == direct);
    /* a stricter target needs more noise */
    fp_dpsgd_plan_t p2;
    assert_int_equal(fp_dpsgd_plan(0, 2.0, 1.0, 1e-5, 31013, 128, P, 200 * 243, &p2), FP_OK);
    assert_true(p2.noise_multiplier > p.noise_multiplier);
    /* given noise: used as is; none: epsilon is infinite */
    assert_int_equal(fp_dpsgd_plan(1.1, 0, 0.5, 1e-6, 1000, 1000, P, 10, &p), FP_OK);
    assert_true(p.noise_multiplier == 1.1 && p.q == 1.0 && p.steps_per_epoch == 1 && p.clip == 0.5);
    assert_int_equal(fp_dpsgd_plan(0, 0, 1.0, 1e-5, 1000, 10, P, 10, &p), FP_OK);
    assert_int_equal(fp_dpsgd_epsilon(&p, 1, &eps), FP_OK);
    assert_true(isinf(eps));
    assert_int_equal(fp_dpsgd_epsilon(&p, 0, &eps), FP_OK);
    assert_true(eps == 0.0);
    /* bad input */
    assert_int_equal(fp_dpsgd_plan(1, 0, 0, 1e-5, 10, 1, P, 1, &p), FP_ERR_INVALID);
    assert_int_equal(fp_dpsgd_plan(1, 0, NAN, 1e-5, 10, 1, P, 1, &p), FP_ERR_INVALID);
    assert_int_equal(fp_dpsgd_plan(1, 0, 1, 1, 10, 1, P, 1, &p), FP_ERR_INVALID);
    assert_int_equal(fp_dpsgd_plan(1, 0, 1, 0, 10, 1, P, 1, &p), FP_ERR_INVALID);
    assert_int_equal(fp_dpsgd_plan(-1, 0, 1, 1e-5, 10, 1, P, 1, &p), FP_ERR_INVALID);
    assert_int_equal(fp_dpsgd_plan(1, -1, 1, 1e-5, 10, 1, P, 1, &p), FP_ERR_INVALID);
    assert_int_equal(fp_dpsgd_plan(1, 0, 1, 1e-5, 0, 1, P, 1, &p), FP_ERR_INVALID);
    assert_int_equal(fp_dpsgd_plan(1e-9, 0, 1, 1e-5, 10, 1, P, 1, &p), FP_ERR_RANGE);
    assert_int_equal(fp_dpsgd_plan(1, 1e-9, 1, 1e-5, 10, 1, P, 100000, &p), FP_ERR_RANGE); /* unreachable */
    assert_int_equal(fp_dpsgd_plan(1, 0, 1, 1e-5, 10, 1, P, 1, NULL), FP_ERR_INVALID);
    assert_true(fp_dpsgd_max_batch(128) >= 128 + 4 * 11 && fp_dpsgd_max_batch(1) >= 1);
}

typedef struct {
    fp_dataset_t *d;
    fp_split_t split;
    fp_model_config_t mc;
} dp_fixture_t;

static void fixture(dp_fixture_t *f)
{
    fp_synth_params_t sp;
    fp_synth_defaults(&sp);
    sp.n_users = 300;
    sp.n_items = 120;
    sp.mean_len = 8;
    sp.seed = 3;
    memset(f, 0, sizeof *f);
    assert_int_equal(fp_data_synthetic(&sp, &f->d), FP_OK);
    assert_int_equal(fp_split_loo(f->d, &f->split), FP_OK);
    fp_model_config_t c = {.n_items = f->d->n_items, .dim = 8, .blocks = 1, .heads = 2, .maxlen = 10,
                           .dropout = 0.0f, .loss = FP_LOSS_BCE, .n_neg = 1, .l2_emb = 0.001f};
    f->mc = c;
}

static void fixture_free(dp_fixture_t *f)
{
    fp_split_free(&f->split);
    fp_dataset_free(f->d);
}

/* One DP-SGD step's gradient with sub-batches of `rows` rows (model max_batch = rows). */
static float *dp_step_grads(dp_fixture_t *f, const fp_dpsgd_plan_t *plan, int rows, fp_dpsgd_step_t *info)
{
    fp_model_t *m = NULL;
    assert_int_equal(fp_model_create(&f->mc, rows, 1, &m), FP_OK);
    fp_model_init(m, 9);
    fp_batcher_t *bat = NULL;
    assert_int_equal(fp_batcher_create(&f->split, f->mc.maxlen, rows, 1, 17, &bat), FP_OK);
    assert_int_equal(fp_batcher_n_users(bat), plan->users);
    fp_dpsgd_t *d = NULL;
    assert_int_equal(fp_dpsgd_create(plan, 1234, &d), FP_OK);
    int32_t *seq = calloc((size_t)rows * f->mc.maxlen, sizeof *seq), *pos = calloc((size_t)rows * f->mc.maxlen, sizeof *pos),
            *neg = calloc((size_t)rows * f->mc.maxlen, sizeof *neg);
    assert_true(seq && pos && neg);
    assert_int_equal(fp_dpsgd_grads(d, m, bat, seq, pos, neg, NULL, info), FP_OK);
    const size_t P = fp_model_layout(m)->total;
    float *g = malloc(P * sizeof *g);
    assert_non_null(g);
    memcpy(g, fp_model_grads(m), P * sizeof *g);
    free(seq), free(pos), free(neg);
    fp_dpsgd_destroy(d);
    fp_batcher_destroy(bat);
    fp_model_destroy(m);
    return g;
}

/* A Poisson sample larger than the model's rows is split into sub-batches whose clipped sums add
 * up: the same step with sub-batches of 4 rows and of 120 rows (one) gives the same gradient
 * (same sample, same negatives, same noise: the generators are seeded alike). Without noise the
 * difference is float rounding; with noise, also at most one grid step where the two sums round
 * to different grid points (divided by the expected batch). */
static void test_subbatches(void **state)
{
    (void)state;
    dp_fixture_t f;
    fixture(&f);
    int32_t users = 0;
    for (int32_t u = 0; u < f.d->n_users; u++)
        users += f.split.train_len[u] >= 2;
    fp_model_t *probe = NULL;
    assert_int_equal(fp_model_create(&f.mc, 1, 1, &probe), FP_OK);
    const size_t P = fp_model_layout(probe)->total;
    fp_model_destroy(probe);
    for (int noisy = 0; noisy < 2; noisy++) {
        fp_dpsgd_plan_t plan;
        assert_int_equal(fp_dpsgd_plan(noisy ? 0.8 : 0.0, 0, 0.3, 1e-5, users, 40, P, 10, &plan), FP_OK);
        fp_dpsgd_step_t i1, i2;
        float *a = dp_step_grads(&f, &plan, 4, &i1), *b = dp_step_grads(&f, &plan, 120, &i2);
        assert_int_equal(i1.sampled, i2.sampled);
        assert_int_equal(i1.positions, i2.positions);
        assert_int_equal(i1.clipped, i2.clipped);
        assert_true(i1.sampled > 10 && i1.sampled < 120); /* split into several sub-batches */
        assert_true(i1.clipped > 0);
        double *ref = malloc(P * sizeof *ref), mx = 0;
        assert_non_null(ref);
        for (size_t i = 0; i < P; i++)
            ref[i] = b[i], mx = fmax(mx, fabs(b[i]));
        if (!noisy) {
            assert_int_equal(compare(a, ref, P, "4-row sub-batches vs one batch"), 0);
        } else {
            const double step = plan.grid / plan.expected_batch;
            int bad = 0;
            for (size_t i = 0; i < P; i++)
                bad += !(fabs(a[i] - ref[i]) <= 1.01 * step + TOL * mx);
            assert_int_equal(bad, 0);
        }
        free(ref), free(a), free(b);
    }
    fixture_free(&f);
}

/* The Poisson sample has the planned rate: over 200 steps the mean size is q x users within 4
 * standard errors, and the sizes vary (not a fixed batch). */
static void test_sampling_rate(void **state)
{
    (void)state;
    dp_fixture_t f;
    fixture(&f);
    fp_model_t *m = NULL;
    assert_int_equal(fp_model_create(&f.mc, 64, 1, &m), FP_OK);
    fp_model_init(m, 1);
    fp_batcher_t *bat = NULL;
    assert_int_equal(fp_batcher_create(&f.split, f.mc.maxlen, 64, 1, 1, &bat), FP_OK);
    const int32_t users = fp_batcher_n_users(bat);
    fp_dpsgd_plan_t plan;
    assert_int_equal(fp_dpsgd_plan(1.0, 0, 1.0, 1e-5, users, 12, fp_model_layout(m)->total, 200, &plan), FP_OK);
    fp_dpsgd_t *d = NULL;
    assert_int_equal(fp_dpsgd_create(&plan, 99, &d), FP_OK);
    int32_t *seq = calloc(64 * 10, sizeof *seq), *pos = calloc(64 * 10, sizeof *pos), *neg = calloc(64 * 10, sizeof *neg);
    assert_true(seq && pos && neg);
    double sum = 0;
    int mn = 1 << 30, mx = 0;
    enum { STEPS = 200 };
    for (int s = 0; s < STEPS; s++) {
        fp_dpsgd_step_t info;
        assert_int_equal(fp_dpsgd_grads(d, m, bat, seq, pos, neg, NULL, &info), FP_OK);
        sum += info.sampled;
        mn = info.sampled < mn ? info.sampled : mn;
        mx = info.sampled > mx ? info.sampled : mx;
    }
    const double mean = sum / STEPS, want = plan.q * users, se = sqrt(want * (1 - plan.q) / STEPS);
    if (getenv("FP_TEST_VERBOSE"))
        print_message("sample size: mean %.2f (want %.2f, se %.2f), min %d, max %d\n", mean, want, se, mn, mx);
    assert_true(fabs(mean - want) <= 4 * se);
    assert_true(mx - mn >= 5);
    /* the wrong batcher is refused */
    fp_batcher_t *other = NULL;
    fp_split_t s2 = f.split;
    assert_int_equal(fp_batcher_create(&s2, f.mc.maxlen, 64, 1, 1, &other), FP_OK);
    fp_dpsgd_plan_t p2 = plan;
    p2.users = users - 1;
    fp_dpsgd_t *d2 = NULL;
    assert_int_equal(fp_dpsgd_create(&p2, 1, &d2), FP_OK);
    fp_dpsgd_step_t info;
    assert_int_equal(fp_dpsgd_grads(d2, m, other, seq, pos, neg, NULL, &info), FP_ERR_INVALID);
    fp_dpsgd_destroy(d2);
    assert_int_equal(fp_dpsgd_create(NULL, 1, &d2), FP_ERR_INVALID);
    assert_null(d2);
    fp_dpsgd_destroy(NULL);
    fp_batcher_destroy(other);
    free(seq), free(pos), free(neg);
    fp_dpsgd_destroy(d);
    fp_batcher_destroy(bat);
    fp_model_destroy(m);
    fixture_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clipped_vs_naive_bce),
        cmocka_unit_test(test_clipped_vs_naive_softmax),
        cmocka_unit_test(test_clipped_vs_naive_sasrec),
        cmocka_unit_test(test_ghost_and_materialised),
        cmocka_unit_test(test_huge_clip_equals_nonprivate),
        cmocka_unit_test(test_dropout_norms),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_plan),
        cmocka_unit_test(test_subbatches),
        cmocka_unit_test(test_sampling_rate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
