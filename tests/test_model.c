/* test_model: the profile encoder against a float64 reference, finite differences, invariances,
 * training, determinism and bad input.
 *
 * The reference (ref_forward below) is a deliberately naive float64 transcription of model.h's
 * architecture over the *padded* [B x T] tensor, the way a framework computes it (masks, fully
 * masked attention rows set to zero, x * mask after each block). It shares no code with
 * model.c, so agreement checks both the packing (padding costs nothing and changes nothing) and
 * the arithmetic. Gradients are checked two ways:
 *  1. against central differences of the float64 reference (h = 1e-6): those are exact to
 *     ~1e-9, so what remains is the float32 error of our backward pass;
 *  2. against central differences of our own float32 loss (h = 1e-3), as a framework-free check
 *     that the backward pass matches the forward pass it belongs to.
 * See check_grad for the bounds and why they follow from float32 rounding. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/kernels.h"
#include "common/model.h"

#define U_F32 5.9604644775390625e-08 /* unit roundoff of float32, 2^-24 */

/* ------------------------------------------------------------------ float64 reference */

typedef struct {
    const fp_model_config_t *c;
    const fp_layout_t *l;
    const double *p;
} ref_t;

static const double *ref_t_get(const ref_t *r, const char *name)
{
    const fp_tensor_info_t *t = fp_layout_find(r->l, name);
    assert_non_null(t);
    return r->p + t->offset;
}

static const double *blk(const ref_t *r, int b, const char *leaf)
{
    char name[FP_PARAMS_NAME_MAX];
    snprintf(name, sizeof name, "blocks.%d.%s", b, leaf);
    return ref_t_get(r, name);
}

/* y[T x C] = LayerNorm(x) with eps 1e-8 */
static void ref_ln(double *y, const double *x, const double *g, const double *bb, int T, int C)
{
    for (int t = 0; t < T; t++) {
        double mu = 0, var = 0;
        for (int c = 0; c < C; c++)
            mu += x[t * C + c];
        mu /= C;
        for (int c = 0; c < C; c++)
            var += (x[t * C + c] - mu) * (x[t * C + c] - mu);
        var /= C;
        double rs = 1.0 / sqrt(var + 1e-8);
        for (int c = 0; c < C; c++)
            y[t * C + c] = (x[t * C + c] - mu) * rs * g[c] + bb[c];
    }
}

/* y[T x C] = x W + b, W [C x C] */
static void ref_lin(double *y, const double *x, const double *w, const double *bb, int T, int C)
{
    for (int t = 0; t < T; t++)
        for (int o = 0; o < C; o++) {
            double s = bb[o];
            for (int c = 0; c < C; c++)
                s += x[t * C + c] * w[c * C + o];
            y[t * C + o] = s;
        }
}

/* Dropout masks of one training step in the padded layout: site s (0 = embedding, then per
 * block attention, relu, ffn) is drop[s][B x T x C]; then per block l the mask of the attention
 * probabilities, drop[1 + 3 * blocks + l][B x H x T x T] (query, key); NULL = no dropout. */
typedef const float *const *drop_t;

/* Loss (mean data loss + L2) of batch b under float64 params p; if hlast, the final hidden
 * state at position T-1 of each row ([B x C]) is stored there. */
static double ref_forward_drop(const fp_model_t *m, const double *p, const fp_batch_t *b, double *hlast, drop_t drop)
{
    const fp_model_config_t *c = fp_model_config(m);
    ref_t r = {c, fp_model_layout(m), p};
    const int T = c->maxlen, C = c->dim, H = c->heads, hs = C / H, K = c->n_neg, NB = c->blocks;
    const int sr = c->block == FP_BLOCK_SASREC;
    const double *E = ref_t_get(&r, "item_emb"), *PE = ref_t_get(&r, "pos_emb");
    double *x = calloc((size_t)T * C, sizeof *x), *ln = calloc((size_t)T * C, sizeof *ln);
    double *q = calloc((size_t)T * C, sizeof *q), *k = calloc((size_t)T * C, sizeof *k);
    double *v = calloc((size_t)T * C, sizeof *v), *ao = calloc((size_t)T * C, sizeof *ao);
    double *tmp = calloc((size_t)T * C, sizeof *tmp), *hf = calloc((size_t)T * C, sizeof *hf);
    double *att = calloc((size_t)T, sizeof *att);
    assert_true(x && ln && q && k && v && ao && tmp && hf && att);
    double total = 0.0;
    long nvalid = 0;
    for (int bi = 0; bi < b->B; bi++) {
        const int32_t *seq = b->seq + (size_t)bi * T;
        for (int t = 0; t < T; t++)
            for (int cc = 0; cc < C; cc++)
                x[t * C + cc] = seq[t] ? E[seq[t] * C + cc] * sqrt((double)C) + PE[t * C + cc] : 0.0;
        const size_t row0 = (size_t)bi * T * C; /* this row's offset in a mask */
        if (drop)
            for (int i = 0; i < T * C; i++)
                x[i] *= drop[0][row0 + i];
        for (int l = 0; l < c->blocks; l++) {
            ref_ln(ln, x, blk(&r, l, "ln1.g"), blk(&r, l, "ln1.b"), T, C);
            ref_lin(q, ln, blk(&r, l, "attn.wq"), blk(&r, l, "attn.bq"), T, C);
            const double *kv_in = sr ? x : ln; /* SASRec wiring: keys and values from x */
            ref_lin(k, kv_in, blk(&r, l, "attn.wk"), blk(&r, l, "attn.bk"), T, C);
            ref_lin(v, kv_in, blk(&r, l, "attn.wv"), blk(&r, l, "attn.bv"), T, C);
            for (int h = 0; h < H; h++)
                for (int i = 0; i < T; i++) {
                    const float *pm = drop && drop[1 + 3 * NB + l] ? drop[1 + 3 * NB + l] + (((size_t)bi * H + h) * T + i) * T : NULL;
                    double mx = -INFINITY;
                    for (int j = 0; j <= i; j++) {
                        if (!seq[j])
                            continue;
                        double s = 0;
                        for (int d = 0; d < hs; d++)
                            s += q[i * C + h * hs + d] * k[j * C + h * hs + d];
                        att[j] = s / sqrt((double)hs);
                        mx = att[j] > mx ? att[j] : mx;
                    }
                    double z = 0;
                    for (int j = 0; j <= i; j++)
                        if (seq[j])
                            z += exp(att[j] - mx);
                    for (int d = 0; d < hs; d++) {
                        double o = 0;
                        for (int j = 0; j <= i; j++)
                            if (seq[j])
                                o += exp(att[j] - mx) / z * (pm ? pm[j] : 1.0f) * v[j * C + h * hs + d];
                        ao[i * C + h * hs + d] = o; /* no valid key: 0 */
                    }
                }
            ref_lin(tmp, ao, blk(&r, l, "attn.wo"), blk(&r, l, "attn.bo"), T, C);
            for (int i = 0; i < T * C; i++) /* residual from x, or from LN1(x) (SASRec) */
                x[i] = (sr ? ln[i] : x[i]) + tmp[i] * (drop ? drop[1 + 3 * l][row0 + i] : 1.0f);
            ref_ln(ln, x, blk(&r, l, "ln2.g"), blk(&r, l, "ln2.b"), T, C);
            ref_lin(tmp, ln, blk(&r, l, "ffn.w1"), blk(&r, l, "ffn.b1"), T, C);
            for (int i = 0; i < T * C; i++)
                tmp[i] = (tmp[i] > 0 ? tmp[i] : 0) * (drop ? drop[2 + 3 * l][row0 + i] : 1.0f);
            ref_lin(ao, tmp, blk(&r, l, "ffn.w2"), blk(&r, l, "ffn.b2"), T, C);
            for (int t = 0; t < T; t++)
                for (int cc = 0; cc < C; cc++)
                    x[t * C + cc] =
                        seq[t] ? (sr ? ln[t * C + cc] : x[t * C + cc]) +
                                     ao[t * C + cc] * (drop ? drop[3 + 3 * l][row0 + t * C + cc] : 1.0f)
                               : 0.0;
        }
        ref_ln(hf, x, ref_t_get(&r, "ln_f.g"), ref_t_get(&r, "ln_f.b"), T, C);
        if (hlast)
            for (int cc = 0; cc < C; cc++)
                hlast[bi * C + cc] = seq[T - 1] ? hf[(T - 1) * C + cc] : 0.0;
        if (!b->pos)
            continue;
        for (int t = 0; t < T; t++) {
            int32_t pos = b->pos[(size_t)bi * T + t];
            if (!pos)
                continue;
            const int32_t *neg = b->neg + ((size_t)bi * T + t) * K;
            double z[64] = {0};
            assert_true(K + 1 <= 64);
            for (int j = 0; j <= K; j++) {
                int32_t it = j == 0 ? pos : neg[j - 1];
                double s = 0;
                for (int cc = 0; cc < C; cc++)
                    s += hf[t * C + cc] * E[it * C + cc];
                z[j] = s;
            }
            if (c->loss == FP_LOSS_BCE) {
                total += log1p(exp(-z[0]));
                for (int j = 1; j <= K; j++)
                    total += log1p(exp(z[j]));
            } else {
                double mx = z[0], s = 0;
                for (int j = 1; j <= K; j++)
                    mx = z[j] > mx ? z[j] : mx;
                for (int j = 0; j <= K; j++)
                    s += exp(z[j] - mx);
                total += mx + log(s) - z[0];
            }
            nvalid++;
        }
    }
    double l2 = 0;
    const fp_tensor_info_t *te = fp_layout_find(r.l, "item_emb");
    for (size_t i = 0; i < te->numel; i++)
        l2 += E[i] * E[i];
    free(x), free(ln), free(q), free(k), free(v), free(ao), free(tmp), free(hf), free(att);
    return (nvalid ? total / nvalid : 0.0) + c->l2_emb * l2;
}

static double ref_forward(const fp_model_t *m, const double *p, const fp_batch_t *b, double *hlast)
{
    return ref_forward_drop(m, p, b, hlast, NULL);
}

/* The masks model.c uses for one training step from rng state r: one seed per site drawn in
 * order (embedding, then attention, relu, ffn of each block, then the attention probabilities
 * of each block), each mask a function of the seed and the packed element index
 * (fp_k_dropout_mask), mapped here to the padded layout. Packed, the probability mask of user u
 * is H x [L x L] over its L real positions, users back to back (fp_k_attention_layout).
 * The attention-probability masks (rate attn_dropout) exist only when attn_dropout > 0 (NULL
 * otherwise, and their seeds are not drawn, as in model.c).
 * Returns a malloc'd array of 1 + 4 * blocks masks (free with drop_free). */
static float **drop_masks(const fp_model_t *m, const fp_batch_t *b, fp_rng_t r)
{
    const fp_model_config_t *c = fp_model_config(m);
    const int T = c->maxlen, C = c->dim, H = c->heads, S = 1 + 3 * c->blocks;
    const size_t BTC = (size_t)b->B * T * C, BHTT = (size_t)b->B * H * T * T;
    float **d = calloc((size_t)S + c->blocks, sizeof *d);
    float *packed = malloc((BHTT > BTC ? BHTT : BTC) * sizeof *packed);
    int *real = malloc((size_t)T * sizeof *real);
    assert_true(d && packed && real);
    for (int s = 0; s < S; s++) {
        d[s] = calloc(BTC, sizeof **d);
        assert_non_null(d[s]);
        fp_k_dropout_mask(packed, BTC, c->dropout, fp_rng_u64(&r));
        size_t row = 0; /* packed rows: real positions, user by user, in time order */
        for (size_t i = 0; i < (size_t)b->B * T; i++)
            if (b->seq[i])
                memcpy(d[s] + i * C, packed + (row++) * C, sizeof(float) * C);
    }
    for (int l = 0; l < c->blocks && c->attn_dropout > 0.0f; l++) {
        float *dm = d[S + l] = calloc(BHTT, sizeof **d);
        assert_non_null(dm);
        fp_k_dropout_mask(packed, BHTT, c->attn_dropout, fp_rng_u64(&r)); /* >= the att_off[U] used */
        size_t a0 = 0;
        for (int bi = 0; bi < b->B; bi++) {
            int L = 0;
            for (int t = 0; t < T; t++)
                if (b->seq[(size_t)bi * T + t])
                    real[L++] = t;
            for (int h = 0; h < H; h++)
                for (int i = 0; i < L; i++)
                    for (int j = 0; j < L; j++)
                        dm[(((size_t)bi * H + h) * T + real[i]) * T + real[j]] =
                            packed[a0 + ((size_t)h * L + i) * L + j];
            a0 += (size_t)H * L * L;
        }
    }
    free(packed);
    free(real);
    return d;
}

static void drop_free(float **d, const fp_model_t *m)
{
    for (int s = 0; d && s < 1 + 4 * fp_model_config(m)->blocks; s++)
        free(d[s]);
    free(d);
}

/* ------------------------------------------------------------------ fixtures */

/* The small model of the gradient checks: dim 8, 2 blocks, 2 heads, maxlen 6, 20 items. */
static fp_model_config_t small_cfg(fp_loss_kind loss, int n_neg)
{
    fp_model_config_t c = {.n_items = 20, .dim = 8, .blocks = 2, .heads = 2, .maxlen = 6, .dropout = 0.0f,
                           .loss = loss, .n_neg = n_neg, .l2_emb = 0.01f};
    return c;
}

/* A batch with varied lengths: full (6), 3, 1, fully padded, a mid-sequence 0 (padding key),
 * and a loss target at a padding position (h = LN_f(0) there). Negatives are in [1, 20]. */
enum { SB = 6, ST = 6 };
static const int32_t small_seq[SB * ST] = {
    1, 2, 3, 4, 5, 6,  /* full */
    0, 0, 0, 7, 8, 9,  /* length 3 */
    0, 0, 0, 0, 0, 10, /* length 1 */
    0, 0, 0, 0, 0, 0,  /* all padding */
    0, 11, 0, 12, 13, 1, /* a padding position inside */
    0, 0, 0, 0, 4, 14, /* length 2, with a loss target at a padding position */
};
static const int32_t small_pos[SB * ST] = {
    2, 3, 4, 5, 6, 7,  0, 0, 0, 8,  9,  10, 0, 0, 0, 0, 0,  11,
    0, 0, 0, 0, 0, 0,  0, 12, 0, 13, 1, 15, 0, 0, 0, 3, 14, 16,
};

static void small_negs(int32_t *neg, int K)
{
    fp_rng_t r;
    fp_rng_seed(&r, 99);
    for (int i = 0; i < SB * ST * K; i++)
        neg[i] = 1 + (int32_t)fp_rng_below(&r, 20);
}

static fp_model_t *make_model(const fp_model_config_t *c, int max_batch, int threads, uint64_t seed)
{
    fp_model_t *m = NULL;
    fp_status st = fp_model_create(c, max_batch, threads, &m);
    if (st != FP_OK)
        fail_msg("create: %s", fp_error_message());
    fp_model_init(m, seed);
    /* Non-trivial LayerNorm affine parameters and biases, so their gradients are exercised. */
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

static double *params_f64(fp_model_t *m)
{
    size_t n = fp_model_layout(m)->total;
    double *d = malloc(n * sizeof *d);
    assert_non_null(d);
    for (size_t i = 0; i < n; i++)
        d[i] = fp_model_params(m)[i];
    return d;
}

/* ------------------------------------------------------------------ gradient checks */

/* Compare the analytic gradient g (float32) with a numerical one fd for every coordinate (but
 * item_emb's padding row); returns the number of coordinates that fail
 *     |g - fd| <= rtol * max(|g|, |fd|) + afloor * G,
 * G = the largest |fd| over the whole model. The floor is model-wide because the float32 noise
 * of a coordinate comes from the upstream gradients it is summed from, not from its own size
 * (attn.bk is the extreme case: its exact gradient is 0, since adding a constant to every key
 * shifts all scores of a query equally, yet it is a sum of terms of size ~G).
 * *strong counts coordinates with |fd| > 10 * afloor * G, where the relative term decides; every
 * tensor but attn.bk must have some, so the check has teeth everywhere. The bounds are chosen by
 * the callers. */
static int check_grad(const fp_model_t *m, const float *g, const double *fd, double rtol, double afloor,
                      int *strong, const char *label)
{
    const fp_layout_t *l = fp_model_layout(m);
    const size_t skip = (size_t)fp_model_config(m)->dim; /* item_emb row 0: checked separately */
    double G = 0, worst = 0;
    for (size_t i = skip; i < l->total; i++)
        G = fmax(G, fabs(fd[i]));
    const double atol = afloor * G;
    int bad = 0;
    *strong = 0;
    for (size_t ti = 0; ti < l->n_tensors; ti++) {
        const fp_tensor_info_t *t = &l->tensors[ti];
        const int zero_grad = strstr(t->name, "attn.bk") != NULL;
        int tensor_strong = 0;
        for (size_t j = (ti == 0 ? skip : 0); j < t->numel; j++) {
            size_t i = t->offset + j;
            double err = fabs(g[i] - fd[i]);
            double tol = rtol * fmax(fabs(g[i]), fabs(fd[i])) + atol;
            if (fabs(fd[i]) > 10 * atol) {
                tensor_strong++;
                worst = fmax(worst, err / fmax(fabs(g[i]), fabs(fd[i])));
            }
            if (!(err <= tol) || (zero_grad && !(fabs(g[i]) <= atol))) {
                if (bad < 5)
                    print_message("%s: %s[%zu]: analytic %.8g numeric %.8g (tol %.3g)\n", label, t->name, j, g[i],
                                  fd[i], tol);
                bad++;
            }
        }
        if (tensor_strong == 0 && !zero_grad) {
            print_message("%s: tensor %s has no coordinate above the absolute floor\n", label, t->name);
            bad++;
        }
        *strong += tensor_strong;
    }
    if (getenv("FP_TEST_VERBOSE"))
        print_message("%s: G = %.3g, %d strong coordinates, worst relative error %.3g, %d failures\n", label, G,
                      *strong, worst, bad);
    return bad;
}

/* Numerical gradient of the float64 reference at the model's params, all coordinates. */
static void fd_reference(fp_model_t *m, const fp_batch_t *b, drop_t drop, double *fd)
{
    size_t n = fp_model_layout(m)->total;
    double *p = params_f64(m);
    for (size_t i = 0; i < n; i++) {
        double s = p[i], h = 1e-6 * fmax(1.0, fabs(s));
        p[i] = s + h;
        double fp = ref_forward_drop(m, p, b, NULL, drop);
        p[i] = s - h;
        double fm = ref_forward_drop(m, p, b, NULL, drop);
        p[i] = s;
        fd[i] = (fp - fm) / (2 * h);
    }
    free(p);
}

/* Numerical gradient of our own float32 loss with h = 1e-3 (the actual float step is used),
 * and, at the very same points, of the float64 reference: fd64h[i]. err[i] receives what the
 * float32 rounding of the two loss evaluations does to the quotient: |fd[i] - fd64h[i]|, i.e.
 * |(f32 - f64)(x+h) - (f32 - f64)(x-h)| / 2h. */
static void fd_float(fp_model_t *m, const fp_batch_t *b, const fp_rng_t *r0, drop_t drop, double *fd,
                     double *fd64h, double *err)
{
    size_t n = fp_model_layout(m)->total;
    float *p = fp_model_params(m);
    double *p64 = params_f64(m);
    for (size_t i = 0; i < n; i++) {
        float s = p[i];
        float up = s + 1e-3f, dn = s - 1e-3f;
        double fp, fm;
        fp_rng_t r = r0 ? *r0 : (fp_rng_t){{0}};
        p[i] = up;
        assert_int_equal(fp_model_loss(m, b, r0 != NULL, r0 ? &r : NULL, &fp), FP_OK);
        p[i] = dn;
        r = r0 ? *r0 : r;
        assert_int_equal(fp_model_loss(m, b, r0 != NULL, r0 ? &r : NULL, &fm), FP_OK);
        p[i] = s;
        p64[i] = up;
        double rp = ref_forward_drop(m, p64, b, NULL, drop);
        p64[i] = dn;
        double rm = ref_forward_drop(m, p64, b, NULL, drop);
        p64[i] = s;
        fd[i] = (fp - fm) / ((double)up - (double)dn);
        fd64h[i] = (rp - rm) / ((double)up - (double)dn);
        err[i] = fabs((fp - rp) - (fm - rm)) / ((double)up - (double)dn);
    }
    free(p64);
}

/* Check 2 of grad_check_case (see there): g against float32 central differences of our own loss;
   fd holds the float64 reference's derivatives on entry and is overwritten. */
static void f32_check(fp_model_t *m, const fp_batch_t *b, const fp_rng_t *rp, drop_t drop, const float *g, double *fd)
{
    const size_t n = fp_model_layout(m)->total, C = (size_t)fp_model_config(m)->dim;
    double *fd64 = malloc(n * sizeof *fd64), *fd64h = malloc(n * sizeof *fd64h), *err = malloc(n * sizeof *err);
    assert_true(fd64 && fd64h && err);
    memcpy(fd64, fd, n * sizeof *fd);
    fd_float(m, b, rp, drop, fd, fd64h, err);
    int kinks = 0, checked = 0, bad32 = 0, bad_teeth = 0;
    double worst = 0, max_round = 0;
    for (size_t i = C; i < n; i++) {
        if (fabs(fd64h[i] - fd64[i]) > 5e-3 * fmax(fabs(fd64[i]), fabs(fd64h[i])) + 1e-6) {
            kinks++;
            continue;
        }
        max_round = fmax(max_round, err[i]);
        double den = fmax(fabs(g[i]) + fabs(fd[i]), 1e-3);
        double rel = fabs(g[i] - fd[i]) / den;
        if (den > 1e-3) {
            checked++;
            worst = fmax(worst, rel);
        }
        if (!(rel <= 1e-2)) {
            if (bad32 < 5)
                print_message("vs f32 FD: [%zu] analytic %.8g numeric %.8g\n", i, g[i], fd[i]);
            bad32++;
        }
        if (fabs(1.03 * g[i] - fd[i]) / fmax(fabs(1.03 * g[i]) + fabs(fd[i]), 1e-3) > 1e-2)
            bad_teeth++;
    }
    if (getenv("FP_TEST_VERBOSE"))
        print_message("vs f32 FD: %d kinks skipped, %d coordinates above the floor, worst relative error %.3g, "
                      "largest rounding of a quotient %.3g\n", kinks, checked, worst, max_round);
    assert_int_equal(bad32, 0);
    assert_true(max_round <= 1e-5);
    assert_true(kinks < (int)n / 20);
    assert_true(bad_teeth > checked / 4); /* a 3% error in the gradient is caught */
    free(fd64);
    free(fd64h);
    free(err);
}

static void grad_check_case_block(fp_loss_kind loss, int n_neg, float dropout, float attn_dropout, fp_block_kind block)
{
    fp_model_config_t c = small_cfg(loss, n_neg);
    c.block = block;
    c.dropout = dropout;
    c.attn_dropout = attn_dropout;
    fp_model_t *m = make_model(&c, SB, 1, 7);
    if (block == FP_BLOCK_SASREC) {
        /* Keys read the raw x, whose scale is the embeddings' (~0.02 sqrt(dim) at init): the
         * scores would be ~1e-3 and the query/key gradients below the floor, untested. Larger
         * embeddings make every tensor's gradient strong, but they also make the float32 loss
         * round more coarsely than check 2's floor assumes (a quotient's rounding measured 1.3e-5
         * against the 1e-5 floor), so only check 1, which covers every coordinate, runs. */
        const fp_layout_t *l = fp_model_layout(m);
        float *p = fp_model_params(m);
        const char *emb[2] = {"item_emb", "pos_emb"};
        for (int e = 0; e < 2; e++) {
            const fp_tensor_info_t *t = fp_layout_find(l, emb[e]);
            assert_non_null(t);
            for (size_t j = 0; j < t->numel; j++)
                p[t->offset + j] *= 5.0f;
        }
    }
    int32_t neg[SB * ST * 8];
    small_negs(neg, n_neg);
    fp_batch_t b = {SB, small_seq, small_pos, neg};
    size_t n = fp_model_layout(m)->total;
    double loss_val, ref_val;
    /* With dropout, every evaluation restarts from a copy of rng state r0: same masks. The
     * masks are part of the test's fixture: with seed 5 (used before attention-probability
     * dropout existed) blocks.1.attn.bq's gradient happens to stay below 10x the floor
     * (max 2.0e-4 vs 2.7e-4, analytic and numeric agreeing to 4 digits), so that tensor would
     * have no teeth; seed 6 gives every tensor strong coordinates. */
    fp_rng_t r0, r;
    fp_rng_seed(&r0, 6);
    const fp_rng_t *rp = dropout > 0 ? &r0 : NULL;
    float **drop = dropout > 0 ? drop_masks(m, &b, r0) : NULL;

    /* forward: our float32 loss vs the float64 reference. Relative 1e-5: a few hundred float ops
     * deep, each of relative error 2^-24 (~6e-8), gives ~1e-5 if they all added up; observed
     * ~1e-8. A wrong layer is off by far more. */
    double *p64 = params_f64(m);
    ref_val = ref_forward_drop(m, p64, &b, NULL, (drop_t)drop);
    r = r0;
    assert_int_equal(fp_model_loss_grad(m, &b, &r, &loss_val), FP_OK);
    assert_true(fabs(loss_val - ref_val) <= 1e-5 * fabs(ref_val));
    double again;
    r = r0;
    assert_int_equal(fp_model_loss(m, &b, 1, &r, &again), FP_OK);
    assert_true(again == loss_val); /* the same computation, bit for bit */
    if (dropout > 0) {
        assert_int_equal(fp_model_loss(m, &b, 0, NULL, &again), FP_OK);
        assert_true(fabs(again - loss_val) > 1e-3); /* dropout did something */
        assert_int_equal(fp_model_loss(m, &b, 1, NULL, &again), FP_ERR_INVALID); /* needs an rng */
    }

    float *g = malloc(n * sizeof *g);
    double *fd = malloc(n * sizeof *fd);
    assert_true(g && fd);
    memcpy(g, fp_model_grads(m), n * sizeof *g);
    for (size_t j = 0; j < (size_t)c.dim; j++)
        assert_true(g[j] == 0.0f); /* item_emb row 0 */

    /* 1. vs float64 central differences. The numeric gradient is exact to ~1e-9 (h = 1e-6:
     * truncation h^2 f''' ~ 1e-12, rounding 1e-16 / h ~ 1e-10). The analytic one carries float32
     * rounding: each coordinate is a sum of products through at most ~100 dependent float ops
     * (2 blocks x ~10 layers x dot products of 8), so |error| <~ 100 * 2^-24 * (size of the
     * terms) ~ 1e-5 relative, plus cancellation: terms can exceed the coordinate itself. Hence
     * rtol 1e-3 (100x margin) and an absolute floor of 1e-4 x the largest coordinate of the
     * tensor, the float32 noise of terms at that scale. */
    fd_reference(m, &b, (drop_t)drop, fd);
    int strong;
    int bad = check_grad(m, g, fd, 1e-3, 1e-4, &strong, "vs f64 FD");
    assert_int_equal(bad, 0);
    assert_true(strong > (int)n / 2);
    /* The same comparison must fail when the analytic gradient is 3% off: the check has teeth. */
    for (size_t i = 0; i < n; i++)
        g[i] *= 1.03f;
    assert_true(check_grad(m, g, fd, 1e-3, 1e-4, &strong, "(expected to fail)") > (int)n / 4);
    memcpy(g, fp_model_grads(m), n * sizeof *g);

    /* 2. vs float32 central differences of our own loss, h = 1e-3, with the task's bound
     *        |g - fd| / max(|g| + |fd|, 1e-3) <= 1e-2.
     * At this h the loss is not smooth everywhere: an interval [x-h, x+h] that contains a ReLU
     * kink gives a difference quotient that is no derivative at all (the float64 reference shows
     * the same). Such coordinates are found with the float64 reference (its quotient at h = 1e-3
     * differs from its h = 1e-6 derivative by more than 5e-3 relative) and skipped; they must
     * stay few (< 5%). Error budget of the others:
     *   truncation + kinks: <= 5e-3 relative, just measured on the reference;
     *   rounding: the float32 loss is off the float64 one by ~1e-8 (a few hundred float ops of
     *             relative error 2^-24 on a loss ~1.4, mostly cancelling), so the quotient is off
     *             by up to ~1e-8 / h = 1e-5; the floor 1e-3 * 1e-2 = 1e-5 absorbs it. The actual
     *             rounding in each quotient is measured against the reference and asserted to
     *             stay under that floor, so the bound stays honest;
     *   the analytic gradient's own float32 error: ~5e-5 relative (check 1).
     * Float32 quotients cannot resolve coordinates much below 1e-3, so this check decides only
     * the larger ones; check 1 covers every coordinate of every tensor. */
    if (block != FP_BLOCK_SASREC)
        f32_check(m, &b, rp, (drop_t)drop, g, fd);
    free(g);
    free(fd);
    free(p64);
    drop_free(drop, m);
    fp_model_destroy(m);
}

static void grad_check_case(fp_loss_kind loss, int n_neg, float dropout, float attn_dropout)
{
    grad_check_case_block(loss, n_neg, dropout, attn_dropout, FP_BLOCK_PRENORM);
}

static void test_grad_bce(void **state)
{
    (void)state;
    grad_check_case(FP_LOSS_BCE, 1, 0.0f, 0.0f);
}

static void test_grad_softmax(void **state)
{
    (void)state;
    grad_check_case(FP_LOSS_SAMPLED_SOFTMAX, 4, 0.0f, 0.0f);
}

static void test_grad_bce_multi_neg(void **state)
{
    (void)state;
    grad_check_case(FP_LOSS_BCE, 3, 0.0f, 0.0f);
}

/* Dropout paths (embedding, attention output, attention probabilities, relu, ffn output): the
 * reference applies the very masks model.c draws. */
static void test_grad_dropout(void **state)
{
    (void)state;
    grad_check_case(FP_LOSS_BCE, 1, 0.3f, 0.3f);
    grad_check_case(FP_LOSS_BCE, 1, 0.3f, 0.0f); /* the default: no attention-probability dropout */
}

/* SASRec's wiring (model.block = sasrec): every path of the different residuals and the raw
 * keys/values, with and without dropout, both losses. */
static void test_grad_sasrec_block(void **state)
{
    (void)state;
    grad_check_case_block(FP_LOSS_BCE, 1, 0.0f, 0.0f, FP_BLOCK_SASREC);
    grad_check_case_block(FP_LOSS_SAMPLED_SOFTMAX, 4, 0.3f, 0.3f, FP_BLOCK_SASREC);
}

/* Profiles: equal to the float64 reference's last hidden state; zeros for a padding last
 * position; the same whether a user is alone or batched with others (padding rows included). */
static void test_profiles_and_batching(void **state)
{
    (void)state;
    fp_model_config_t c = small_cfg(FP_LOSS_BCE, 1);
    fp_model_t *m = make_model(&c, 8, 1, 3);
    const int C = c.dim;
    float prof[SB * 8], one[8];
    double ref[SB * 8];
    assert_int_equal(fp_model_profiles(m, small_seq, SB, prof), FP_OK);
    double *p64 = params_f64(m);
    fp_batch_t b = {SB, small_seq, NULL, NULL};
    ref_forward(m, p64, &b, ref);
    for (int i = 0; i < SB * C; i++)
        assert_true(fabs(prof[i] - ref[i]) <= 1e-5 * (1 + fabs(ref[i])));
    for (int j = 0; j < C; j++)
        assert_true(prof[3 * C + j] == 0.0f); /* all padding */
    /* alone vs batched: each token's arithmetic is independent of the others, but OpenBLAS picks
     * different (FMA, edge) kernels for different row counts, so a dot product of dim terms may
     * round differently: ~dim * 2^-24 relative per layer, amplified by LayerNorm's rstd, ~3e-7
     * seen. A packing mistake (a user attending across users, a wrong position) is O(0.1). */
    for (int u = 0; u < SB; u++) {
        assert_int_equal(fp_model_profiles(m, small_seq + u * ST, 1, one), FP_OK);
        for (int j = 0; j < C; j++)
            assert_true(fabs(one[j] - prof[u * C + j]) <= 1e-5 * (1 + fabs(prof[u * C + j])));
    }
    /* reordered, with extra all-padding rows between users */
    int32_t seq2[8 * ST] = {0};
    int map[SB] = {7, 5, 0, 2, 4, 1};
    for (int u = 0; u < SB; u++)
        memcpy(seq2 + map[u] * ST, small_seq + u * ST, sizeof(int32_t) * ST);
    float prof2[8 * 8];
    assert_int_equal(fp_model_profiles(m, seq2, 8, prof2), FP_OK);
    for (int u = 0; u < SB; u++)
        for (int j = 0; j < C; j++)
            assert_true(fabs(prof2[map[u] * C + j] - prof[u * C + j]) <= 1e-5 * (1 + fabs(prof[u * C + j])));
    free(p64);
    fp_model_destroy(m);
}

/* Padding never matters: all-padding rows add nothing to loss or gradient, and negatives at
 * positions without a target are ignored (even invalid ids). */
static void test_padding_ignored(void **state)
{
    (void)state;
    fp_model_config_t c = small_cfg(FP_LOSS_SAMPLED_SOFTMAX, 2);
    fp_model_t *m = make_model(&c, 8, 1, 5);
    size_t n = fp_model_layout(m)->total;
    int32_t neg[SB * ST * 2];
    small_negs(neg, 2);
    fp_batch_t b = {SB, small_seq, small_pos, neg};
    double l0, l1;
    assert_int_equal(fp_model_loss_grad(m, &b, NULL, &l0), FP_OK);
    float *g0 = malloc(n * sizeof *g0);
    assert_non_null(g0);
    memcpy(g0, fp_model_grads(m), n * sizeof *g0);

    int32_t seq2[8 * ST] = {0}, pos2[8 * ST] = {0}, neg2[8 * ST * 2];
    for (int i = 0; i < 8 * ST * 2; i++)
        neg2[i] = -12345; /* garbage where there is no target */
    memcpy(seq2 + 2 * ST, small_seq, sizeof small_seq);
    memcpy(pos2 + 2 * ST, small_pos, sizeof small_pos);
    for (int i = 0; i < SB * ST; i++)
        if (small_pos[i])
            memcpy(neg2 + (2 * ST + i) * 2, neg + i * 2, 2 * sizeof(int32_t));
    fp_batch_t b2 = {8, seq2, pos2, neg2};
    assert_int_equal(fp_model_loss_grad(m, &b2, NULL, &l1), FP_OK);
    assert_true(fabs(l1 - l0) <= 1e-6 * fabs(l0));
    const float *g1 = fp_model_grads(m);
    for (size_t i = 0; i < n; i++)
        assert_true(fabs(g1[i] - g0[i]) <= 1e-5 * (1e-3 + fabs(g0[i])));

    /* The padding item 0 is a valid negative (it scores 0), but like torch's padding_idx its
     * row gets no gradient and stays zero through training. */
    float *E = fp_model_params(m) + fp_layout_find(fp_model_layout(m), "item_emb")->offset;
    E[3] = 0.5f; /* even if someone put a value there */
    for (int i = 0; i < SB * ST * 2; i += 3)
        neg[i] = 0;
    fp_adam_t adam;
    assert_int_equal(fp_adam_create(&adam, n), FP_OK);
    for (int step = 0; step < 3; step++) {
        assert_int_equal(fp_model_loss_grad(m, &b, NULL, &l1), FP_OK);
        for (int j = 0; j < c.dim; j++)
            assert_true(fp_model_grads(m)[j] == 0.0f);
        fp_model_adam_step(m, &adam, 1e-2f, 0.9f, 0.98f, 1e-8f);
    }
    assert_true(E[3] == 0.5f && E[0] == 0.0f);
    fp_adam_destroy(&adam);
    free(g0);
    fp_model_destroy(m);
}

/* A learnable synthetic task: each user walks a fixed random permutation of the catalogue. */
typedef struct {
    int B, T, n_items;
    int32_t *seq, *pos, *neg, *next;
} task_t;

static void task_init(task_t *t, int B, int T, int n_items, int K, uint64_t seed)
{
    t->B = B, t->T = T, t->n_items = n_items;
    t->seq = calloc((size_t)B * T, sizeof(int32_t));
    t->pos = calloc((size_t)B * T, sizeof(int32_t));
    t->neg = calloc((size_t)B * T * K, sizeof(int32_t));
    t->next = calloc((size_t)n_items + 1, sizeof(int32_t));
    assert_true(t->seq && t->pos && t->neg && t->next);
    fp_rng_t r;
    fp_rng_seed(&r, seed);
    for (int i = 1; i <= n_items; i++)
        t->next[i] = i;
    for (int i = n_items; i > 1; i--) { /* Fisher-Yates */
        int j = 1 + (int)fp_rng_below(&r, (uint64_t)i);
        int32_t x = t->next[i];
        t->next[i] = t->next[j], t->next[j] = x;
    }
}

static void task_batch(task_t *t, int K, fp_rng_t *r)
{
    const int T = t->T;
    memset(t->seq, 0, sizeof(int32_t) * t->B * T);
    memset(t->pos, 0, sizeof(int32_t) * t->B * T);
    for (int b = 0; b < t->B; b++) {
        int len = 2 + (int)fp_rng_below(r, (uint64_t)T - 1); /* 2..T */
        int32_t it = 1 + (int32_t)fp_rng_below(r, (uint64_t)t->n_items);
        for (int i = T - len; i < T; i++) {
            t->seq[b * T + i] = it;
            it = t->next[it];
            t->pos[b * T + i] = it;
            for (int k = 0; k < K; k++)
                t->neg[(b * T + i) * K + k] = 1 + (int32_t)fp_rng_below(r, (uint64_t)t->n_items);
        }
    }
}

static void task_free(task_t *t)
{
    free(t->seq), free(t->pos), free(t->neg), free(t->next);
}

/* Train `steps` Adam steps; losses[steps]. */
static void train(fp_model_t *m, task_t *t, int steps, uint64_t seed, double *losses)
{
    const fp_model_config_t *c = fp_model_config(m);
    fp_adam_t adam;
    assert_int_equal(fp_adam_create(&adam, fp_model_layout(m)->total), FP_OK);
    fp_rng_t r;
    fp_rng_seed(&r, seed);
    for (int s = 0; s < steps; s++) {
        task_batch(t, c->n_neg, &r);
        fp_batch_t b = {t->B, t->seq, t->pos, t->neg};
        assert_int_equal(fp_model_loss_grad(m, &b, &r, &losses[s]), FP_OK);
        fp_model_adam_step(m, &adam, 1e-2f, 0.9f, 0.98f, 1e-8f);
    }
    fp_adam_destroy(&adam);
}

static void test_loss_falls(void **state)
{
    (void)state;
    fp_model_config_t c = {.n_items = 50, .dim = 16, .blocks = 2, .heads = 2, .maxlen = 12, .dropout = 0.1f,
                           .loss = FP_LOSS_BCE, .n_neg = 1, .l2_emb = 0.0f};
    fp_model_t *m = make_model(&c, 32, 2, 1);
    task_t t;
    task_init(&t, 32, 12, 50, 1, 2);
    enum { STEPS = 100 };
    double L[STEPS];
    train(m, &t, STEPS, 3, L);
    double first = (L[0] + L[1] + L[2]) / 3, last = 0;
    for (int s = STEPS - 10; s < STEPS; s++)
        last += L[s] / 10;
    if (getenv("FP_TEST_VERBOSE"))
        print_message("loss %.4f -> %.4f\n", first, last);
    /* Chance is 2 ln 2 = 1.386; the walk is deterministic, so a working model gets far below. */
    assert_true(first > 1.2);
    assert_true(last < 0.5 * first);
    task_free(&t);
    fp_model_destroy(m);
}

/* Same seed, one thread: the same bits. Two threads: the same up to float reassociation in
 * the split sgemms (each element is then a differently ordered sum of dim = 32 products,
 * ~1e-7 relative, compounded over 15 Adam steps). The batch is large enough for the split. */
static void test_determinism(void **state)
{
    (void)state;
    fp_model_config_t c = {.n_items = 200, .dim = 32, .blocks = 2, .heads = 2, .maxlen = 20, .dropout = 0.2f,
                           .loss = FP_LOSS_SAMPLED_SOFTMAX, .n_neg = 5, .l2_emb = 1e-3f};
    enum { STEPS = 15 };
    double L[3][STEPS];
    float *params[3];
    size_t n = 0;
    for (int run = 0; run < 3; run++) {
        fp_model_t *m = make_model(&c, 64, run == 2 ? 2 : 1, 9);
        task_t t;
        task_init(&t, 64, 20, 200, 5, 4);
        train(m, &t, STEPS, 6, L[run]);
        n = fp_model_layout(m)->total;
        params[run] = malloc(n * sizeof(float));
        assert_non_null(params[run]);
        memcpy(params[run], fp_model_params(m), n * sizeof(float));
        task_free(&t);
        fp_model_destroy(m);
    }
    assert_memory_equal(L[0], L[1], sizeof L[0]);
    assert_memory_equal(params[0], params[1], n * sizeof(float));
    double worst = 0;
    for (int s = 0; s < STEPS; s++)
        worst = fmax(worst, fabs(L[2][s] - L[0][s]) / fabs(L[0][s]));
    if (getenv("FP_TEST_VERBOSE"))
        print_message("threads 2 vs 1: worst relative loss difference %.3g\n", worst);
    assert_true(worst <= 1e-5);
    for (int r = 0; r < 3; r++)
        free(params[r]);
}

/* Adam against a float64 transcription of torch.optim.Adam for three steps. */
static void test_adam(void **state)
{
    (void)state;
    fp_model_config_t c = small_cfg(FP_LOSS_BCE, 1);
    fp_model_t *m = make_model(&c, 2, 1, 4);
    size_t n = fp_model_layout(m)->total;
    fp_adam_t a;
    assert_int_equal(fp_adam_create(&a, n), FP_OK);
    double *p = params_f64(m), *mm = calloc(n, sizeof *mm), *vv = calloc(n, sizeof *vv);
    assert_true(mm && vv);
    fp_rng_t r;
    fp_rng_seed(&r, 8);
    const double lr = 1e-2, b1 = 0.9f, b2 = 0.98f, eps = 1e-8f;
    for (int step = 1; step <= 3; step++) {
        float *g = fp_model_grads(m);
        for (size_t i = 0; i < n; i++)
            g[i] = (float)(fp_rng_normal(&r) * (i % 3 == 0 ? 1e-6 : 1.0));
        fp_model_adam_step(m, &a, (float)lr, (float)b1, (float)b2, (float)eps);
        for (size_t i = 0; i < n; i++) {
            mm[i] = b1 * mm[i] + (1 - b1) * g[i];
            vv[i] = b2 * vv[i] + (1 - b2) * (double)g[i] * g[i];
            double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
            p[i] -= lr / bc1 * mm[i] / (sqrt(vv[i]) / sqrt(bc2) + eps);
        }
    }
    assert_int_equal(a.step, 3);
    /* Each update is ~lr in size and carries float32 relative error ~1e-6 per operation. */
    for (size_t i = 0; i < n; i++)
        assert_true(fabs(fp_model_params(m)[i] - p[i]) <= 1e-5 * (fabs(p[i]) + lr));
    /* A state of the wrong size is refused and changes nothing. */
    fp_adam_t small;
    assert_int_equal(fp_adam_create(&small, n - 1), FP_OK);
    float before = fp_model_params(m)[1];
    fp_error_clear();
    fp_model_adam_step(m, &small, 1.0f, 0.9f, 0.98f, 1e-8f);
    assert_int_equal(fp_error_status(), FP_ERR_INVALID);
    assert_true(fp_model_params(m)[1] == before);
    assert_int_equal(small.step, 0);
    fp_adam_destroy(&small);
    fp_adam_destroy(&a);
    fp_adam_destroy(&a); /* twice: a no-op */
    assert_int_equal(fp_adam_create(&a, 0), FP_ERR_INVALID);
    free(p), free(mm), free(vv);
    fp_model_destroy(m);
}

/* Scores: score_all (one sgemm) equals score_items and the dot product by hand. */
static void test_scores(void **state)
{
    (void)state;
    fp_model_config_t c = small_cfg(FP_LOSS_BCE, 1);
    fp_model_t *m = make_model(&c, SB, 1, 6);
    const int C = c.dim, V = c.n_items + 1;
    float prof[SB * 8], all[SB * 21], some[21];
    assert_int_equal(fp_model_profiles(m, small_seq, SB, prof), FP_OK);
    fp_model_score_all(m, prof, SB, all);
    int32_t items[21];
    for (int i = 0; i < V; i++)
        items[i] = (int32_t)((i * 7) % V);
    const float *E = fp_model_params(m) + fp_layout_find(fp_model_layout(m), "item_emb")->offset;
    for (int u = 0; u < SB; u++) {
        fp_model_score_items(m, prof + u * C, items, V, some);
        for (int i = 0; i < V; i++) {
            double d = 0, mag = 0;
            for (int j = 0; j < C; j++) {
                d += (double)prof[u * C + j] * E[items[i] * C + j];
                mag += fabs((double)prof[u * C + j] * E[items[i] * C + j]);
            }
            /* a dot product of C terms in float: error <= C * 2^-24 * sum |terms| */
            assert_true(fabs(some[i] - d) <= C * U_F32 * mag + 1e-30);
            assert_true(fabs(all[u * V + items[i]] - d) <= C * U_F32 * mag + 1e-30);
        }
        assert_true(all[u * V + 0] == 0.0f); /* padding row is zero */
    }
    /* an id outside the catalogue scores -inf and leaves an error; the others are still right */
    int32_t bad_items[3] = {1, 21, -1};
    fp_error_clear();
    fp_model_score_items(m, prof, bad_items, 3, some);
    assert_int_equal(fp_error_status(), FP_ERR_RANGE);
    assert_true(isinf(some[1]) && some[1] < 0 && isinf(some[2]));
    assert_true(fabs(some[0] - all[1]) <= C * U_F32 * (fabs(all[1]) + 1));
    fp_model_destroy(m);
}

static void test_layout_and_init(void **state)
{
    (void)state;
    fp_model_config_t c = small_cfg(FP_LOSS_BCE, 1);
    fp_model_t *m1 = NULL, *m2 = NULL;
    assert_int_equal(fp_model_create(&c, 2, 1, &m1), FP_OK);
    assert_int_equal(fp_model_create(&c, 2, 1, &m2), FP_OK);
    const fp_layout_t *l = fp_model_layout(m1);
    const fp_tensor_info_t *t = fp_layout_find(l, "item_emb");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 21);
    assert_int_equal(t->shape[1], 8);
    assert_int_equal(fp_layout_find(l, "pos_emb")->shape[0], 6);
    const char *names[] = {"blocks.0.ln1.g", "blocks.0.ln1.b", "blocks.0.attn.wq", "blocks.0.attn.bq",
                           "blocks.0.attn.wk", "blocks.0.attn.bk", "blocks.0.attn.wv", "blocks.0.attn.bv",
                           "blocks.0.attn.wo", "blocks.0.attn.bo", "blocks.0.ln2.g", "blocks.0.ln2.b",
                           "blocks.1.ffn.w1", "blocks.1.ffn.b1", "blocks.1.ffn.w2", "blocks.1.ffn.b2",
                           "ln_f.g", "ln_f.b"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_non_null(fp_layout_find(l, names[i]));
    assert_null(fp_layout_find(l, "blocks.2.ln1.g"));
    assert_int_equal(l->n_tensors, 2 + 16 * 2 + 2);
    assert_true(fp_layout_hash(l) == fp_layout_hash(fp_model_layout(m2)));
    fp_model_init(m1, 42);
    fp_model_init(m2, 42);
    assert_memory_equal(fp_model_params(m1), fp_model_params(m2), l->total * sizeof(float));
    const float *p = fp_model_params(m1);
    for (int j = 0; j < 8; j++)
        assert_true(p[t->offset + j] == 0.0f);
    assert_true(p[fp_layout_find(l, "ln_f.g")->offset] == 1.0f);
    assert_true(p[fp_layout_find(l, "blocks.0.attn.bq")->offset] == 0.0f);
    const fp_tensor_info_t *wq = fp_layout_find(l, "blocks.0.attn.wq");
    double a = sqrt(6.0 / 16), mx = 0;
    for (size_t j = 0; j < wq->numel; j++)
        mx = fmax(mx, fabs(p[wq->offset + j]));
    assert_true(mx <= a && mx > 0.5 * a);
    fp_model_init(m2, 43);
    assert_memory_not_equal(fp_model_params(m1), fp_model_params(m2), l->total * sizeof(float));
    assert_ptr_equal(fp_model_config(m1)->n_items, 20);
    fp_model_destroy(m1);
    fp_model_destroy(m2);
    fp_model_destroy(NULL);
}

static void test_bad_config(void **state)
{
    (void)state;
    fp_model_t *m = (fp_model_t *)&m; /* must be reset to NULL on failure */
    fp_model_config_t ok = small_cfg(FP_LOSS_BCE, 1), c;
    assert_int_equal(fp_model_config_validate(&ok), FP_OK);
#define BAD(field, value)                                                                                          \
    do {                                                                                                           \
        c = ok;                                                                                                    \
        c.field = value;                                                                                           \
        assert_int_equal(fp_model_config_validate(&c), FP_ERR_INVALID);                                            \
        assert_non_null(strstr(fp_error_message(), #field));                                                       \
        assert_int_equal(fp_model_create(&c, 4, 1, &m), FP_ERR_INVALID);                                           \
        assert_null(m);                                                                                            \
    } while (0)
    BAD(heads, 3); /* 8 % 3 != 0 */
    BAD(heads, 0);
    BAD(heads, 16);
    BAD(dim, 0);
    BAD(dim, -8);
    BAD(n_items, 0);
    BAD(n_items, -5);
    BAD(blocks, -1);
    BAD(maxlen, 0);
    BAD(maxlen, -6);
    BAD(dropout, 1.0f);
    BAD(dropout, -0.1f);
    BAD(dropout, NAN);
    BAD(n_neg, 0);
    BAD(n_neg, -1);
    BAD(l2_emb, -1.0f);
    BAD(l2_emb, INFINITY);
    BAD(loss, (fp_loss_kind)7);
#undef BAD
    assert_int_equal(fp_model_config_validate(NULL), FP_ERR_INVALID);
    assert_int_equal(fp_model_create(&ok, 0, 1, &m), FP_ERR_INVALID);
    assert_int_equal(fp_model_create(&ok, -3, 1, &m), FP_ERR_INVALID);
    assert_int_equal(fp_model_create(&ok, 4, 0, &m), FP_ERR_INVALID);
    assert_int_equal(fp_model_create(&ok, 4, 1, NULL), FP_ERR_INVALID);
    c = ok;
    c.maxlen = 60000;
    assert_int_equal(fp_model_create(&c, 1 << 20, 1, &m), FP_ERR_RANGE); /* tokens overflow an int */
    assert_null(m);
}

static void test_bad_batch(void **state)
{
    (void)state;
    fp_model_config_t c = small_cfg(FP_LOSS_BCE, 1);
    c.dropout = 0.2f;
    fp_model_t *m = make_model(&c, SB, 1, 2);
    int32_t seq[SB * ST], pos[SB * ST], neg[SB * ST];
    memcpy(seq, small_seq, sizeof seq);
    memcpy(pos, small_pos, sizeof pos);
    small_negs(neg, 1);
    fp_batch_t b = {SB, seq, pos, neg};
    fp_rng_t r;
    fp_rng_seed(&r, 1);
    double l0, l;
    assert_int_equal(fp_model_loss(m, &b, 0, NULL, &l0), FP_OK);
    float prof[SB * 8];

    b.B = SB + 1;
    assert_int_equal(fp_model_loss_grad(m, &b, &r, &l), FP_ERR_RANGE);
    assert_int_equal(fp_model_profiles(m, seq, SB + 1, prof), FP_ERR_RANGE);
    b.B = -1;
    assert_int_equal(fp_model_loss(m, &b, 0, NULL, &l), FP_ERR_RANGE);
    assert_int_equal(fp_model_profiles(m, seq, -1, prof), FP_ERR_RANGE);
    b.B = SB;
    seq[7] = 21;
    assert_int_equal(fp_model_loss_grad(m, &b, &r, &l), FP_ERR_RANGE);
    assert_int_equal(fp_model_profiles(m, seq, SB, prof), FP_ERR_RANGE);
    seq[7] = -1;
    assert_int_equal(fp_model_loss(m, &b, 0, NULL, &l), FP_ERR_RANGE);
    seq[7] = small_seq[7];
    pos[3] = 21;
    assert_int_equal(fp_model_loss_grad(m, &b, &r, &l), FP_ERR_RANGE);
    pos[3] = -2;
    assert_int_equal(fp_model_loss_grad(m, &b, &r, &l), FP_ERR_RANGE);
    pos[3] = small_pos[3];
    neg[3] = 1000; /* pos[3] != 0: used, must be valid */
    assert_int_equal(fp_model_loss_grad(m, &b, &r, &l), FP_ERR_RANGE);
    neg[3] = -1;
    assert_int_equal(fp_model_loss_grad(m, &b, &r, &l), FP_ERR_RANGE);
    small_negs(neg, 1);
    neg[6] = 1000; /* pos[6] == 0: ignored */
    assert_int_equal(fp_model_loss(m, &b, 0, NULL, &l), FP_OK);
    assert_true(l == l0);
    b.pos = NULL;
    assert_int_equal(fp_model_loss(m, &b, 0, NULL, &l), FP_ERR_INVALID);
    b.pos = pos;
    b.neg = NULL;
    assert_int_equal(fp_model_loss(m, &b, 0, NULL, &l), FP_ERR_INVALID);
    b.neg = neg;
    assert_int_equal(fp_model_loss_grad(m, &b, NULL, &l), FP_ERR_INVALID); /* dropout needs an rng */
    assert_int_equal(fp_model_loss(m, NULL, 0, NULL, &l), FP_ERR_INVALID);
    assert_int_equal(fp_model_profiles(m, seq, SB, NULL), FP_ERR_INVALID);
    /* after all that, the model still computes the same loss */
    assert_int_equal(fp_model_loss(m, &b, 0, NULL, &l), FP_OK);
    assert_true(l == l0);
    /* B = 0 is a valid, empty batch: only the L2 term */
    b.B = 0;
    assert_int_equal(fp_model_loss_grad(m, &b, &r, &l), FP_OK);
    assert_true(l >= 0.0 && l < l0);
    fp_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_bce),
        cmocka_unit_test(test_grad_softmax),
        cmocka_unit_test(test_grad_bce_multi_neg),
        cmocka_unit_test(test_grad_dropout),
        cmocka_unit_test(test_grad_sasrec_block),
        cmocka_unit_test(test_profiles_and_batching),
        cmocka_unit_test(test_padding_ignored),
        cmocka_unit_test(test_loss_falls),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_adam),
        cmocka_unit_test(test_scores),
        cmocka_unit_test(test_layout_and_init),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_bad_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
