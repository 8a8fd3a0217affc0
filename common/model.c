/* model: the SASRec-style profile encoder of model.h, as plain forward/backward passes over one
 * flat parameter buffer, computing only the real (non-padding) positions of a batch.
 *
 * Packing. A batch [B x T] is first turned into N "tokens", the positions with seq != 0, user by
 * user in time order (user u owns rows [off[u], off[u+1])). Every linear layer is then one
 * sgemm over N rows, and attention runs per user over its own causal window, so a batch of
 * short histories in a long maxlen costs what its real tokens cost. Padding rows never need
 * computing: their keys are masked, their outputs are multiplied by the mask after each block,
 * and nothing else reads them. The one place a padding position can still matter is a loss
 * target (pos != 0 where seq == 0): there h = LN_final(0) = ln_f.b exactly, which the loss uses
 * (a row index of -1 below).
 *
 * Parameters (layout order, weights stored [in x out] so that y = x W + b):
 *   item_emb [(n_items+1) x dim]   row 0 = padding: kept zero, its gradient is always zero
 *   pos_emb  [maxlen x dim]
 *   blocks.L.ln1.g, .ln1.b [dim]; blocks.L.attn.wq, .wk, .wv, .wo [dim x dim] with biases
 *   .bq, .bk, .bv, .bo [dim]; blocks.L.ln2.g, .ln2.b [dim]; blocks.L.ffn.w1, .w2 [dim x dim],
 *   .b1, .b2 [dim] (FFN hidden size = dim, as SASRec); ln_f.g, ln_f.b [dim].
 * LayerNorm eps is 1e-8 (SASRec.pytorch's torch.nn.LayerNorm(hidden, eps=1e-8)).
 *
 * Loss, over the V positions with pos != 0 (V may be 0: the data term is then 0):
 *   BCE:     mean_v [ -log s(h_v.E[pos_v]) - sum_k log(1 - s(h_v.E[neg_vk])) ]   (k < n_neg;
 *            n_neg = 1 is SASRec)
 *   softmax: mean_v [ -log softmax(h_v.E[pos_v], h_v.E[neg_v1], ..., h_v.E[neg_vK])_0 ]
 *   plus l2_emb * (sum of squares of the whole item_emb table). Note SASRec.pytorch adds
 *   l2_emb * ||item_emb|| (not squared); ours is the usual squared L2 penalty.
 * Gradients reach item_emb from both the input lookup and the output scoring.
 *
 * Dropout is inverted (kept values scaled by 1/(1-p)); each of its 1 + 4*blocks sites draws
 * one 64-bit seed from the caller's fp_rng_t, and the mask is a pure function of that seed
 * (fp_k_dropout_mask), so results do not depend on the thread count. Seed order: embedding,
 * then (attention output, relu, ffn output) per block, then the attention probabilities of
 * each block (appended last, so the first 1 + 3*blocks seeds keep their meaning). The
 * attention-probability mask has the packed layout of att (fp_k_attention_layout) and only its
 * att_off[U] used floats are drawn.
 *
 * Memory: every activation is allocated at create time for max_batch * maxlen tokens and never
 * during a step; activation buffers are not zero-filled, so only the pages a batch touches
 * become resident. The DP-SGD scratch is the exception: allocated at the first
 * fp_model_loss_grad_clipped call (see model.h), whose norm pass (dp_norm_pass) mirrors backward()
 * layer by layer and keeps its output gradients, from which bk_grads forms the clipped gradient. */
#include "common/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kernels.h"

#define FP_LN_EPS 1e-8f
#define FP_MAX_DIM 65536
#define FP_MAX_LEN 65536
#define FP_MAX_BLOCKS 1024
#define FP_MAX_NEG (1 << 20)
#define FP_MAX_THREADS 256
#define DP_SLOTS(blocks) (2 + 8 * (blocks)) /* the book-keeping slots of the DP-SGD pass (bk_slot) */

typedef struct { /* offsets (in floats) of one block's tensors in the flat buffers */
    size_t ln1g, ln1b, wq, bq, wk, bk, wv, bv, wo, bo, ln2g, ln2b, w1, b1, w2, b2;
} blk_off_t;

typedef struct {               /* one block's saved activations; rows are packed tokens */
    float *ln1, *ln1_mu, *ln1_rs; /* [N x C], [N], [N] */
    float *q, *k, *v;          /* [N x C] each */
    float *att;                /* [att_cap]: per user, H x [L x L] probabilities */
    float *attd;               /* [att_cap]: dropout mask of att, then att * mask (NULL when dropout == 0) */
    float *atty;               /* [N x C] attention output before Wo */
    float *res1;               /* [N x C] x + dropout(atty Wo + bo) */
    float *ln2, *ln2_mu, *ln2_rs;
    float *fch;                /* [N x C] ln2 W1 + b1 (pre-ReLU) */
    float *fa;                 /* [N x C] dropout(relu(fch)) */
    float *out;                /* [N x C] block output: res1 + dropout(fa W2 + b2) */
    float *m_att, *m_relu, *m_ffn; /* [N x C] dropout masks (NULL when dropout == 0) */
} blk_act_t;

struct fp_model {
    fp_model_config_t cfg;
    int max_batch, threads;
    size_t max_tok;  /* max_batch * maxlen */
    size_t att_cap;  /* heads * max_batch * maxlen^2 */
    int S;           /* items scored per loss row: 1 + n_neg */

    fp_layout_t layout;
    float *params, *grads;
    size_t o_wte, o_wpe, o_lnfg, o_lnfb;
    blk_off_t *boff; /* [blocks] */

    /* packing of the current batch */
    int32_t *tok_id, *tok_t; /* [max_tok] item id and position of each packed token */
    int32_t *off;            /* [max_batch + 1] */
    size_t *att_off;         /* [max_batch + 1] */
    int32_t *loss_row;       /* [max_tok] token row of each loss position, -1 = padding */
    int32_t *items;          /* [max_tok x S] positive then negatives of each loss position */
    int32_t *prof_row;       /* [max_batch] token row of each user's last position, -1 = padding */
    int32_t *loff;           /* [max_batch + 1] user u's loss positions are [loff[u], loff[u+1]) */
    int N, U, NL;            /* tokens, users, loss positions of the current batch */

    /* forward */
    float *x0, *m_emb;    /* [N x C] embedding output, its dropout mask */
    blk_act_t *act;       /* [blocks] */
    float *lnf, *lnf_mu, *lnf_rs;
    float *hl, *logits;   /* [NL x C] hidden states at loss positions, [NL x S] logits */
    uint64_t *seeds;      /* [1 + 4 * blocks] dropout seeds of this step */
    int dropout_on;       /* training with dropout > 0 */
    int att_drop_on;      /* training with attn_dropout > 0 */

    /* backward scratch */
    float *tmp, *dres, *s1, *s2, *dq, *dk, *dv, *dhl; /* [N x C] each */
    float *datt;                                     /* [att_cap] */

    /* DP-SGD scratch (fp_model_loss_grad_clipped), allocated at its first call */
    int dp_ready;
    double *dp_n2;      /* [max_batch] per-user squared gradient norms */
    float *dp_rs;       /* [max_tok] clip factor of each loss position's user */
    int32_t *dp_ident;  /* [max_batch + 1] 0, 1, 2, ...: one "user" per row of dp_ub / dp_ug */
    float *dp_ub, *dp_ug; /* [max_batch x C] per-user bias / LayerNorm gain gradients */
    float *dp_junk;     /* [2 x C] parameter gradients the norm pass does not want */
    float *dp_lin;      /* per thread: fp_k_linear_user_sqnorms scratch */
    void *dp_emb;       /* per thread: fp_k_embed_user_sqnorms scratch */
    float *dp_bk;       /* [DP_SLOTS(blocks) x max_tok x C] the norm pass's output gradients (bk_slot) */
    float *dp_tokc;     /* [max_tok] clip factor of each token's user */
};

static void dp_free(fp_model_t *m); /* DP-SGD scratch (below) */

/* ------------------------------------------------------------------ config, layout */

fp_status fp_model_config_validate(const fp_model_config_t *c)
{
    if (!c)
        return FP_FAIL(FP_ERR_INVALID, "model config: NULL");
    if (c->n_items < 1 || c->n_items > INT32_MAX - 1)
        return FP_FAIL(FP_ERR_INVALID, "model config: n_items = %d must be in [1, %d]", c->n_items, INT32_MAX - 1);
    if (c->dim < 1 || c->dim > FP_MAX_DIM)
        return FP_FAIL(FP_ERR_INVALID, "model config: dim = %d must be in [1, %d]", c->dim, FP_MAX_DIM);
    if (c->heads < 1 || c->heads > c->dim || c->dim % c->heads != 0)
        return FP_FAIL(FP_ERR_INVALID, "model config: heads = %d must be >= 1 and divide dim = %d", c->heads,
                       c->dim);
    if (c->blocks < 0 || c->blocks > FP_MAX_BLOCKS)
        return FP_FAIL(FP_ERR_INVALID, "model config: blocks = %d must be in [0, %d]", c->blocks, FP_MAX_BLOCKS);
    if (c->maxlen < 1 || c->maxlen > FP_MAX_LEN)
        return FP_FAIL(FP_ERR_INVALID, "model config: maxlen = %d must be in [1, %d]", c->maxlen, FP_MAX_LEN);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return FP_FAIL(FP_ERR_INVALID, "model config: dropout = %g must be in [0, 1)", (double)c->dropout);
    if (!(c->attn_dropout >= 0.0f && c->attn_dropout < 1.0f))
        return FP_FAIL(FP_ERR_INVALID, "model config: attn_dropout = %g must be in [0, 1)",
                       (double)c->attn_dropout);
    if (c->loss != FP_LOSS_BCE && c->loss != FP_LOSS_SAMPLED_SOFTMAX)
        return FP_FAIL(FP_ERR_INVALID, "model config: unknown loss %d", (int)c->loss);
    if (c->block != FP_BLOCK_PRENORM && c->block != FP_BLOCK_SASREC)
        return FP_FAIL(FP_ERR_INVALID, "model config: unknown block %d", (int)c->block);
    if (c->n_neg < 1 || c->n_neg > FP_MAX_NEG)
        return FP_FAIL(FP_ERR_INVALID, "model config: n_neg = %d must be in [1, %d]", c->n_neg, FP_MAX_NEG);
    if (!(c->l2_emb >= 0.0f && isfinite(c->l2_emb)))
        return FP_FAIL(FP_ERR_INVALID, "model config: l2_emb = %g must be finite and >= 0", (double)c->l2_emb);
    return FP_OK;
}

static fp_status add_tensor(fp_layout_t *l, const char *name, size_t rows, size_t cols, size_t *off)
{
    size_t shape[2] = {rows, cols};
    fp_status st = fp_layout_add(l, name, cols ? 2 : 1, shape);
    if (st == FP_OK)
        *off = l->tensors[l->n_tensors - 1].offset;
    return st;
}

static fp_status build_layout(fp_model_t *m)
{
    const fp_model_config_t *c = &m->cfg;
    const size_t C = (size_t)c->dim;
    fp_layout_t *l = &m->layout;
    fp_status st;
    if ((st = add_tensor(l, "item_emb", (size_t)c->n_items + 1, C, &m->o_wte)) != FP_OK ||
        (st = add_tensor(l, "pos_emb", (size_t)c->maxlen, C, &m->o_wpe)) != FP_OK)
        return st;
    for (int b = 0; b < c->blocks; b++) {
        blk_off_t *o = &m->boff[b];
        struct {
            const char *name;
            size_t rows, cols, *off;
        } t[] = {
            {"ln1.g", C, 0, &o->ln1g},     {"ln1.b", C, 0, &o->ln1b},     {"attn.wq", C, C, &o->wq},
            {"attn.bq", C, 0, &o->bq},     {"attn.wk", C, C, &o->wk},     {"attn.bk", C, 0, &o->bk},
            {"attn.wv", C, C, &o->wv},     {"attn.bv", C, 0, &o->bv},     {"attn.wo", C, C, &o->wo},
            {"attn.bo", C, 0, &o->bo},     {"ln2.g", C, 0, &o->ln2g},     {"ln2.b", C, 0, &o->ln2b},
            {"ffn.w1", C, C, &o->w1},      {"ffn.b1", C, 0, &o->b1},      {"ffn.w2", C, C, &o->w2},
            {"ffn.b2", C, 0, &o->b2},
        };
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
            char name[FP_PARAMS_NAME_MAX];
            snprintf(name, sizeof name, "blocks.%d.%s", b, t[i].name);
            if ((st = add_tensor(l, name, t[i].rows, t[i].cols, t[i].off)) != FP_OK)
                return st;
        }
    }
    if ((st = add_tensor(l, "ln_f.g", C, 0, &m->o_lnfg)) != FP_OK ||
        (st = add_tensor(l, "ln_f.b", C, 0, &m->o_lnfb)) != FP_OK)
        return st;
    return FP_OK;
}

/* ------------------------------------------------------------------ create / destroy */

/* Activation buffers: 64-byte aligned, NOT zero-filled (always written before read), so pages
 * that a batch never reaches never become resident. Freed with free(). */
static float *act_alloc(size_t n, fp_status *st)
{
    if (*st != FP_OK)
        return NULL;
    if (n == 0)
        n = 1;
    if (n > (SIZE_MAX - 64) / sizeof(float)) {
        *st = FP_FAIL(FP_ERR_RANGE, "activation buffer of %zu floats too large", n);
        return NULL;
    }
    float *p = fp_k_alloc(n * sizeof(float)); /* the device's memory (kernels.h) */
    if (!p)
        *st = FP_FAIL(FP_ERR_NOMEM, "activation buffer of %zu floats (%s)", n,
                      fp_k_device_name(fp_k_device_current()));
    return p;
}

static void *mem_alloc(size_t n, size_t size, fp_status *st)
{
    if (*st != FP_OK)
        return NULL;
    if (n == 0)
        n = 1;
    void *p = n > SIZE_MAX / size ? NULL : fp_k_alloc(n * size);
    if (!p)
        *st = FP_FAIL(FP_ERR_NOMEM, "model index buffer of %zu x %zu bytes", n, size);
    else
        memset(p, 0, n * size);
    return p;
}

fp_status fp_model_create(const fp_model_config_t *cfg, int max_batch, int threads, fp_model_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "fp_model_create: out is NULL");
    *out = NULL;
    fp_status st = fp_model_config_validate(cfg);
    if (st != FP_OK)
        return st;
    if (max_batch < 1)
        return FP_FAIL(FP_ERR_INVALID, "fp_model_create: max_batch = %d must be >= 1", max_batch);
    if (threads < 1 || threads > FP_MAX_THREADS)
        return FP_FAIL(FP_ERR_INVALID, "fp_model_create: threads = %d must be in [1, %d]", threads,
                       FP_MAX_THREADS);
    const size_t T = (size_t)cfg->maxlen, C = (size_t)cfg->dim, H = (size_t)cfg->heads;
    const size_t S = 1 + (size_t)cfg->n_neg;
    /* Every product below must fit: tokens in an int (BLAS dimensions), sizes in bytes. */
    size_t max_tok = (size_t)max_batch * T;
    if (max_tok > INT32_MAX || max_tok > SIZE_MAX / 16 / C || max_tok > SIZE_MAX / 16 / S ||
        max_tok > SIZE_MAX / 16 / H / T)
        return FP_FAIL(FP_ERR_RANGE, "fp_model_create: max_batch %d x maxlen %zu is too large", max_batch, T);

    fp_model_t *m = calloc(1, sizeof *m);
    if (!m)
        return FP_FAIL(FP_ERR_NOMEM, "model");
    m->cfg = *cfg;
    m->max_batch = max_batch;
    m->threads = threads;
    m->max_tok = max_tok;
    m->att_cap = H * max_tok * T;
    m->S = (int)S;
    fp_layout_init(&m->layout);
    const int L = cfg->blocks;
    m->boff = calloc(L > 0 ? (size_t)L : 1, sizeof *m->boff); /* host-side book-keeping */
    m->act = calloc(L > 0 ? (size_t)L : 1, sizeof *m->act);
    if (!m->boff || !m->act)
        st = FP_FAIL(FP_ERR_NOMEM, "model block tables");
    if (st != FP_OK || (st = build_layout(m)) != FP_OK)
        goto fail;
    m->params = act_alloc(m->layout.total, &st);
    m->grads = act_alloc(m->layout.total, &st);
    if (st != FP_OK)
        goto fail;
    memset(m->params, 0, m->layout.total * sizeof *m->params);
    memset(m->grads, 0, m->layout.total * sizeof *m->grads);

    const size_t NC = max_tok * C;
    const int drop = cfg->dropout > 0.0f, drop_att = cfg->attn_dropout > 0.0f;
    m->tok_id = mem_alloc(max_tok, sizeof(int32_t), &st);
    m->tok_t = mem_alloc(max_tok, sizeof(int32_t), &st);
    m->off = mem_alloc((size_t)max_batch + 1, sizeof(int32_t), &st);
    m->att_off = mem_alloc((size_t)max_batch + 1, sizeof(size_t), &st);
    m->loss_row = mem_alloc(max_tok, sizeof(int32_t), &st);
    m->items = mem_alloc(max_tok * S, sizeof(int32_t), &st);
    m->prof_row = mem_alloc((size_t)max_batch, sizeof(int32_t), &st);
    m->loff = mem_alloc((size_t)max_batch + 1, sizeof(int32_t), &st);
    m->seeds = mem_alloc(1 + 4 * (size_t)L, sizeof(uint64_t), &st);
    m->x0 = act_alloc(NC, &st);
    if (drop)
        m->m_emb = act_alloc(NC, &st);
    for (int b = 0; b < L; b++) {
        blk_act_t *a = &m->act[b];
        a->ln1 = act_alloc(NC, &st);
        a->ln1_mu = act_alloc(max_tok, &st);
        a->ln1_rs = act_alloc(max_tok, &st);
        a->q = act_alloc(NC, &st);
        a->k = act_alloc(NC, &st);
        a->v = act_alloc(NC, &st);
        a->att = act_alloc(m->att_cap, &st);
        a->atty = act_alloc(NC, &st);
        a->res1 = act_alloc(NC, &st);
        a->ln2 = act_alloc(NC, &st);
        a->ln2_mu = act_alloc(max_tok, &st);
        a->ln2_rs = act_alloc(max_tok, &st);
        a->fch = act_alloc(NC, &st);
        a->fa = act_alloc(NC, &st);
        a->out = act_alloc(NC, &st);
        if (drop) {
            a->m_att = act_alloc(NC, &st);
            a->m_relu = act_alloc(NC, &st);
            a->m_ffn = act_alloc(NC, &st);
        }
        if (drop_att)
            a->attd = act_alloc(m->att_cap, &st);
    }
    m->lnf = act_alloc(NC, &st);
    m->lnf_mu = act_alloc(max_tok, &st);
    m->lnf_rs = act_alloc(max_tok, &st);
    m->hl = act_alloc(NC, &st);
    m->logits = act_alloc(max_tok * S, &st);
    m->tmp = act_alloc(NC, &st);
    m->dres = act_alloc(NC, &st);
    m->s1 = act_alloc(NC, &st);
    m->s2 = act_alloc(NC, &st);
    m->dq = act_alloc(NC, &st);
    m->dk = act_alloc(NC, &st);
    m->dv = act_alloc(NC, &st);
    m->dhl = act_alloc(NC, &st);
    if (L > 0)
        m->datt = act_alloc(m->att_cap, &st);
    if (st != FP_OK)
        goto fail;
    fp_k_set_threads(threads);
    *out = m;
    return FP_OK;
fail:
    fp_model_destroy(m);
    return st;
}

void fp_model_destroy(fp_model_t *m)
{
    if (!m)
        return;
    if (m->act) {
        for (int b = 0; b < m->cfg.blocks; b++) {
            blk_act_t *a = &m->act[b];
            float *bufs[] = {a->ln1, a->ln1_mu, a->ln1_rs, a->q,   a->k,      a->v,      a->att,    a->atty,
                             a->res1, a->ln2, a->ln2_mu, a->ln2_rs, a->fch, a->fa, a->out, a->m_att, a->m_relu,
                             a->m_ffn, a->attd};
            for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
                fp_k_free(bufs[i]);
        }
        free(m->act);
    }
    float *bufs[] = {m->x0,  m->m_emb, m->lnf, m->lnf_mu, m->lnf_rs, m->hl, m->logits, m->tmp,
                     m->dres, m->s1,   m->s2,  m->dq,     m->dk,     m->dv, m->dhl,    m->datt};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        fp_k_free(bufs[i]);
    fp_k_free(m->tok_id);
    fp_k_free(m->tok_t);
    fp_k_free(m->off);
    fp_k_free(m->att_off);
    fp_k_free(m->loss_row);
    fp_k_free(m->items);
    fp_k_free(m->prof_row);
    fp_k_free(m->loff);
    dp_free(m);
    fp_k_free(m->seeds);
    free(m->boff);
    fp_k_free(m->params);
    fp_k_free(m->grads);
    fp_layout_free(&m->layout);
    free(m);
}

const fp_model_config_t *fp_model_config(const fp_model_t *m) { return &m->cfg; }
const fp_layout_t *fp_model_layout(const fp_model_t *m) { return &m->layout; }
int fp_model_max_batch(const fp_model_t *m) { return m->max_batch; }
float *fp_model_params(fp_model_t *m) { return m->params; }
float *fp_model_grads(fp_model_t *m) { return m->grads; }

/* ------------------------------------------------------------------ init */

fp_status fp_model_layout_build(const fp_model_config_t *cfg, fp_layout_t *out)
{
    if (!cfg || !out)
        return FP_FAIL(FP_ERR_INVALID, "fp_model_layout_build: NULL argument");
    fp_status st = fp_model_config_validate(cfg);
    if (st != FP_OK)
        return st;
    /* A model with its layout only (no parameters, no buffers): fp_model_destroy frees it. */
    fp_model_t *m = calloc(1, sizeof *m);
    if (!m)
        return FP_FAIL(FP_ERR_NOMEM, "model layout");
    m->cfg = *cfg;
    fp_layout_init(&m->layout);
    m->boff = mem_alloc((size_t)cfg->blocks, sizeof *m->boff, &st);
    if (st == FP_OK)
        st = build_layout(m);
    for (size_t i = 0; st == FP_OK && i < m->layout.n_tensors; i++)
        st = fp_layout_add(out, m->layout.tensors[i].name, m->layout.tensors[i].ndim, m->layout.tensors[i].shape);
    fp_model_destroy(m);
    return st;
}

void fp_model_init(fp_model_t *m, uint64_t seed)
{
    fp_model_init_params(&m->layout, m->params, seed);
}

void fp_model_init_params(const fp_layout_t *l, float *params, uint64_t seed)
{
    fp_rng_t r;
    fp_rng_seed(&r, seed);
    memset(params, 0, l->total * sizeof *params);
    for (size_t i = 0; i < l->n_tensors; i++) {
        const fp_tensor_info_t *t = &l->tensors[i];
        float *p = params + t->offset;
        const char *dot = strrchr(t->name, '.');
        const char *leaf = dot ? dot + 1 : t->name;
        if (strcmp(t->name, "item_emb") == 0 || strcmp(t->name, "pos_emb") == 0) {
            for (size_t j = 0; j < t->numel; j++)
                p[j] = (float)(0.02 * fp_rng_normal(&r));
            if (strcmp(t->name, "item_emb") == 0)
                memset(p, 0, t->shape[1] * sizeof *p); /* padding row */
        } else if (t->ndim == 2) { /* Xavier-uniform weight [in x out] */
            double a = sqrt(6.0 / (double)(t->shape[0] + t->shape[1]));
            for (size_t j = 0; j < t->numel; j++)
                p[j] = (float)(a * (2.0 * fp_rng_uniform_d(&r) - 1.0));
        } else if (strcmp(leaf, "g") == 0) { /* LayerNorm gamma */
            for (size_t j = 0; j < t->numel; j++)
                p[j] = 1.0f;
        } /* biases and LayerNorm beta stay 0 */
    }
}

/* ------------------------------------------------------------------ packing */

/* Validate a [B x T] batch and pack its real tokens (and, when pos is given, its loss
 * positions). Nothing is computed when this fails. */
static fp_status pack(fp_model_t *m, const int32_t *seq, const int32_t *pos, const int32_t *neg, int B)
{
    const fp_model_config_t *c = &m->cfg;
    const int T = c->maxlen, K = c->n_neg, S = m->S;
    if (B < 0 || B > m->max_batch)
        return FP_FAIL(FP_ERR_RANGE, "batch of %d rows: must be in [0, max_batch = %d]", B, m->max_batch);
    if (B > 0 && (!seq || (pos && !neg)))
        return FP_FAIL(FP_ERR_INVALID, "batch: NULL seq/pos/neg array");
    const size_t BT = (size_t)B * T;
    for (size_t i = 0; i < BT; i++) {
        if (seq[i] < 0 || seq[i] > c->n_items)
            return FP_FAIL(FP_ERR_RANGE, "seq[%zu][%zu] = %d outside [0, %d]", i / T, i % T, seq[i], c->n_items);
        if (!pos)
            continue;
        if (pos[i] < 0 || pos[i] > c->n_items)
            return FP_FAIL(FP_ERR_RANGE, "pos[%zu][%zu] = %d outside [0, %d]", i / T, i % T, pos[i], c->n_items);
        if (pos[i] != 0)
            for (int k = 0; k < K; k++) {
                int32_t id = neg[i * K + k];
                if (id < 0 || id > c->n_items)
                    return FP_FAIL(FP_ERR_RANGE, "neg[%zu][%zu][%d] = %d outside [0, %d]", i / T, i % T, k, id,
                                   c->n_items);
            }
    }
    int n = 0, nl = 0;
    for (int b = 0; b < B; b++) {
        m->off[b] = n;
        m->loff[b] = nl;
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            int row = -1;
            if (seq[i] != 0) {
                m->tok_id[n] = seq[i];
                m->tok_t[n] = t;
                row = n++;
            }
            if (pos && pos[i] != 0) {
                m->loss_row[nl] = row;
                int32_t *it = m->items + (size_t)nl * S;
                it[0] = pos[i];
                memcpy(it + 1, neg + i * K, (size_t)K * sizeof *it);
                nl++;
            }
            if (t == T - 1)
                m->prof_row[b] = row;
        }
    }
    m->off[B] = n;
    m->loff[B] = nl;
    m->N = n;
    m->U = B;
    m->NL = nl;
    return FP_OK;
}

/* ------------------------------------------------------------------ forward / backward */

/* Forward over the packed tokens: x0 -> blocks -> lnf [N x C]. Dropout when m->dropout_on. */
static void forward(fp_model_t *m)
{
    const fp_model_config_t *c = &m->cfg;
    const int N = m->N, C = c->dim, H = c->heads;
    const size_t NC = (size_t)N * C;
    const float p = c->dropout;
    const int drop = m->dropout_on, drop_att = m->att_drop_on;
    const float *P = m->params;
    const int sr = c->block == FP_BLOCK_SASREC;

    /* x0[N x C] = item_emb[id] * sqrt(dim) + pos_emb[t]; dropout (the padding mask is implicit) */
    fp_k_embed_fwd(m->x0, m->tok_id, m->tok_t, P + m->o_wte, P + m->o_wpe, sqrtf((float)C), N, C);
    if (drop) {
        fp_k_dropout_mask(m->m_emb, NC, p, m->seeds[0]);
        fp_k_mul(m->x0, m->x0, m->m_emb, NC);
    }
    fp_k_attention_layout(m->off, m->U, H, m->att_off);
    const float *x = m->x0;
    for (int l = 0; l < c->blocks; l++) {
        blk_act_t *a = &m->act[l];
        const blk_off_t *o = &m->boff[l];
        /* attention sub-layer: res1 = x + dropout(MHA(LN1(x)) Wo + bo); sasrec wiring:
         * res1 = LN1(x) + dropout(MHA(Q = LN1(x), K = V = x) Wo + bo) */
        fp_k_layernorm_fwd(a->ln1, a->ln1_mu, a->ln1_rs, x, P + o->ln1g, P + o->ln1b, N, C, FP_LN_EPS);
        fp_k_linear_fwd(a->q, a->ln1, P + o->wq, P + o->bq, N, C, C);
        const float *kv_in = sr ? x : a->ln1; /* SASRec: keys and values from the raw input */
        fp_k_linear_fwd(a->k, kv_in, P + o->wk, P + o->bk, N, C, C);
        fp_k_linear_fwd(a->v, kv_in, P + o->wv, P + o->bv, N, C, C);
        /* dropout on the attention probabilities (SASRec's): attd holds the mask, then att * mask */
        if (drop_att)
            fp_k_dropout_mask(a->attd, m->att_off[m->U], c->attn_dropout, m->seeds[1 + 3 * c->blocks + l]);
        fp_k_attention_fwd(a->atty, a->att, drop_att ? a->attd : NULL, drop_att ? a->attd : NULL, a->q, a->k, a->v, m->off,
                           m->att_off, m->U, C, H, m->tmp);
        fp_k_linear_fwd(m->tmp, a->atty, P + o->wo, P + o->bo, N, C, C);
        if (drop)
            fp_k_dropout_mask(a->m_att, NC, p, m->seeds[1 + 3 * l]);
        fp_k_add_mul(a->res1, sr ? a->ln1 : x, m->tmp, drop ? a->m_att : NULL, NC);
        /* feed-forward sub-layer: out = res1 + dropout(dropout(relu(LN2(res1) W1 + b1)) W2 + b2);
         * sasrec wiring: LN2(res1) + the same */
        fp_k_layernorm_fwd(a->ln2, a->ln2_mu, a->ln2_rs, a->res1, P + o->ln2g, P + o->ln2b, N, C, FP_LN_EPS);
        fp_k_linear_fwd(a->fch, a->ln2, P + o->w1, P + o->b1, N, C, C);
        if (drop)
            fp_k_dropout_mask(a->m_relu, NC, p, m->seeds[2 + 3 * l]);
        fp_k_relu_fwd(a->fa, a->fch, drop ? a->m_relu : NULL, NC);
        fp_k_linear_fwd(m->tmp, a->fa, P + o->w2, P + o->b2, N, C, C);
        if (drop)
            fp_k_dropout_mask(a->m_ffn, NC, p, m->seeds[3 + 3 * l]);
        fp_k_add_mul(a->out, sr ? a->ln2 : a->res1, m->tmp, drop ? a->m_ffn : NULL, NC);
        x = a->out; /* x * mask is the identity on packed rows */
    }
    fp_k_layernorm_fwd(m->lnf, m->lnf_mu, m->lnf_rs, x, P + m->o_lnfg, P + m->o_lnfb, N, C, FP_LN_EPS);
}

/* Data loss summed over the NL loss positions (logits kept for the backward pass). */
static double loss_forward(fp_model_t *m)
{
    const int C = m->cfg.dim;
    fp_k_gather_rows(m->hl, m->lnf, m->loss_row, m->params + m->o_lnfb, m->NL, C);
    return fp_k_sampled_loss_fwd(m->logits, m->hl, m->items, m->params + m->o_wte, m->NL, m->S, C,
                                 m->cfg.loss == FP_LOSS_BCE ? FP_K_LOSS_BCE : FP_K_LOSS_SOFTMAX);
}

/* Backward from m->dhl [NL x C], the gradient at the loss positions' hidden states (whose
 * item_emb part, the output scores, the caller has already added), into m->grads (+=). */
static void backward_from_dhl(fp_model_t *m)
{
    const fp_model_config_t *c = &m->cfg;
    const int N = m->N, C = c->dim, H = c->heads;
    const size_t NC = (size_t)N * C;
    const int drop = m->dropout_on, drop_att = m->att_drop_on;
    const float *P = m->params;
    float *G = m->grads;
    const int sr = c->block == FP_BLOCK_SASREC;
    if (m->NL == 0)
        return;

    /* dlnf [N x C] (in s1): scatter of dhl; padding loss rows feed ln_f.b directly */
    fp_k_zero(m->s1, NC);
    fp_k_scatter_rows_add(m->s1, G + m->o_lnfb, m->dhl, m->loss_row, m->NL, C);
    const float *xL = c->blocks > 0 ? m->act[c->blocks - 1].out : m->x0;
    fp_k_zero(m->dres, NC);
    fp_k_layernorm_bwd(m->dres, G + m->o_lnfg, G + m->o_lnfb, m->s1, xL, P + m->o_lnfg, m->lnf_mu, m->lnf_rs, N, C);

    for (int l = c->blocks - 1; l >= 0; l--) {
        blk_act_t *a = &m->act[l];
        const blk_off_t *o = &m->boff[l];
        const float *x = l > 0 ? m->act[l - 1].out : m->x0;
        /* dres = d out; feed-forward: out = res1 (sasrec: ln2) + dropout(fa W2 + b2) */
        const float *dfo = m->dres;
        if (drop) {
            fp_k_mul(m->s1, m->dres, a->m_ffn, NC);
            dfo = m->s1;
        }
        fp_k_linear_bwd(m->s2, G + o->w2, G + o->b2, dfo, a->fa, P + o->w2, N, C, C, 0);
        fp_k_relu_bwd(m->s2, m->s2, a->fch, drop ? a->m_relu : NULL, NC);
        fp_k_linear_bwd(m->s1, G + o->w1, G + o->b1, m->s2, a->ln2, P + o->w1, N, C, C, 0);
        if (sr) { /* out = ln2 + ...: the residual reaches res1 through LN2 only */
            fp_k_add_mul(m->s1, m->s1, m->dres, NULL, NC);
            fp_k_zero(m->dres, NC);
        }
        fp_k_layernorm_bwd(m->dres, G + o->ln2g, G + o->ln2b, m->s1, a->res1, P + o->ln2g, a->ln2_mu, a->ln2_rs, N,
                           C); /* dres is now d res1 */
        /* attention: res1 = x (sasrec: ln1) + dropout(atty Wo + bo) */
        const float *dao = m->dres;
        if (drop) {
            fp_k_mul(m->s1, m->dres, a->m_att, NC);
            dao = m->s1;
        }
        fp_k_linear_bwd(m->s2, G + o->wo, G + o->bo, dao, a->atty, P + o->wo, N, C, C, 0);
        fp_k_attention_bwd(m->dq, m->dk, m->dv, m->datt, m->s2, a->att, drop_att ? a->attd : NULL, a->q, a->k, a->v,
                           m->off, m->att_off, m->U, C, H, m->tmp);
        fp_k_linear_bwd(m->s1, G + o->wq, G + o->bq, m->dq, a->ln1, P + o->wq, N, C, C, 0);
        if (!sr) {
            fp_k_linear_bwd(m->s1, G + o->wk, G + o->bk, m->dk, a->ln1, P + o->wk, N, C, C, 1);
            fp_k_linear_bwd(m->s1, G + o->wv, G + o->bv, m->dv, a->ln1, P + o->wv, N, C, C, 1);
        } else { /* res1 = ln1 + ...; keys and values read x directly */
            fp_k_linear_bwd(m->s2, G + o->wk, G + o->bk, m->dk, x, P + o->wk, N, C, C, 0);
            fp_k_linear_bwd(m->s2, G + o->wv, G + o->bv, m->dv, x, P + o->wv, N, C, C, 1);
            fp_k_add_mul(m->s1, m->s1, m->dres, NULL, NC);
            fp_k_copy(m->dres, m->s2, NC);
        }
        fp_k_layernorm_bwd(m->dres, G + o->ln1g, G + o->ln1b, m->s1, x, P + o->ln1g, a->ln1_mu, a->ln1_rs, N,
                           C); /* dres is now d x */
    }
    /* embedding: x0 = dropout(item_emb[id] * sqrt(dim) + pos_emb[t]) */
    const float *dx = m->dres;
    if (drop) {
        fp_k_mul(m->s1, m->dres, m->m_emb, NC);
        dx = m->s1;
    }
    fp_k_embed_bwd(G + m->o_wte, G + m->o_wpe, dx, m->tok_id, m->tok_t, sqrtf((float)C), N, C);
}

/* Backward of (data loss / NL) into m->grads, which the caller has prepared (zero, except the
 * item_emb L2 term). */
static void backward(fp_model_t *m)
{
    if (m->NL == 0)
        return;
    /* loss -> dhl [NL x C], item_emb rows (+=) */
    fp_k_sampled_loss_bwd(m->dhl, m->grads + m->o_wte, m->logits, m->hl, m->items, m->params + m->o_wte, m->NL,
                          m->S, m->cfg.dim, m->cfg.loss == FP_LOSS_BCE ? FP_K_LOSS_BCE : FP_K_LOSS_SOFTMAX,
                          1.0f / (float)m->NL);
    backward_from_dhl(m);
}

/* Common entry of the loss functions: validate, pack, draw dropout seeds. */
static fp_status begin_step(fp_model_t *m, const fp_batch_t *b, int training, fp_rng_t *rng)
{
    if (!m || !b)
        return FP_FAIL(FP_ERR_INVALID, "fp_model_loss: NULL model or batch");
    if (b->B > 0 && !b->pos)
        return FP_FAIL(FP_ERR_INVALID, "batch: NULL pos array");
    fp_status st = pack(m, b->seq, b->pos, b->neg, b->B);
    if (st != FP_OK)
        return st;
    m->dropout_on = training && m->cfg.dropout > 0.0f;
    m->att_drop_on = training && m->cfg.attn_dropout > 0.0f;
    if (m->dropout_on || m->att_drop_on) {
        if (!rng)
            return FP_FAIL(FP_ERR_INVALID, "training with dropout %g / attn_dropout %g needs an rng",
                           (double)m->cfg.dropout, (double)m->cfg.attn_dropout);
        /* the attention seeds come last and are drawn only when used, so a model without
         * attention dropout consumes exactly 1 + 3 * blocks seeds per step */
        int n = 1 + (m->att_drop_on ? 4 : 3) * m->cfg.blocks;
        for (int i = 0; i < n; i++)
            m->seeds[i] = fp_rng_u64(rng);
    }
    fp_k_set_threads(m->threads);
    return FP_OK;
}

fp_status fp_model_loss(fp_model_t *m, const fp_batch_t *b, int training, fp_rng_t *rng, double *loss_out)
{
    fp_status st = begin_step(m, b, training, rng);
    if (st != FP_OK)
        return st;
    forward(m);
    double data = loss_forward(m);
    const fp_tensor_info_t *e = &m->layout.tensors[0];
    double l2 = m->cfg.l2_emb > 0.0f ? (double)m->cfg.l2_emb * fp_k_sumsq(m->params + m->o_wte, e->numel) : 0.0;
    if (loss_out)
        *loss_out = (m->NL > 0 ? data / m->NL : 0.0) + l2;
    return fp_k_take_error(); /* a device error during the pass (FP_OK on the CPU) */
}

fp_status fp_model_loss_grad(fp_model_t *m, const fp_batch_t *b, fp_rng_t *rng, double *loss_out)
{
    fp_status st = begin_step(m, b, 1, rng);
    if (st != FP_OK)
        return st;
    forward(m);
    double data = loss_forward(m);
    /* grads: zero everywhere but item_emb, which starts as the L2 term's gradient */
    const size_t n_emb = m->layout.tensors[0].numel;
    const size_t C = (size_t)m->cfg.dim;
    float *G = m->grads;
    fp_k_zero(G + n_emb, m->layout.total - n_emb); /* item_emb is at offset 0 */
    double l2 = 0.0;
    if (m->cfg.l2_emb > 0.0f)
        l2 = (double)m->cfg.l2_emb * fp_k_sumsq_scaled_copy(G + m->o_wte, m->params + m->o_wte, n_emb,
                                                            2.0f * m->cfg.l2_emb);
    else
        fp_k_zero(G + m->o_wte, n_emb);
    backward(m);
    fp_k_zero(G + m->o_wte, C); /* padding row: no gradient (torch's padding_idx) */
    if (loss_out)
        *loss_out = (m->NL > 0 ? data / m->NL : 0.0) + l2;
    return fp_k_take_error();
}

/* ------------------------------------------------------------------ DP-SGD */

static void dp_free(fp_model_t *m)
{
    fp_k_free(m->dp_n2);
    fp_k_free(m->dp_rs);
    fp_k_free(m->dp_ident);
    fp_k_free(m->dp_ub);
    fp_k_free(m->dp_ug);
    fp_k_free(m->dp_junk);
    fp_k_free(m->dp_lin);
    fp_k_free(m->dp_bk);
    fp_k_free(m->dp_tokc);
    free(m->dp_emb);
    m->dp_n2 = NULL, m->dp_rs = NULL, m->dp_ident = NULL, m->dp_ub = NULL, m->dp_ug = NULL, m->dp_junk = NULL;
    m->dp_lin = NULL, m->dp_emb = NULL, m->dp_bk = NULL, m->dp_tokc = NULL;
    m->dp_ready = 0;
}

/* The scratch of fp_model_loss_grad_clipped, allocated once at its first call (a model that never
 * trains with DP never pays for it). After a failure nothing stays allocated, so a retry starts
 * clean. */
static fp_status dp_alloc(fp_model_t *m)
{
    if (m->dp_ready)
        return FP_OK;
    const fp_model_config_t *c = &m->cfg;
    const size_t C = (size_t)c->dim, B = (size_t)m->max_batch, nth = (size_t)m->threads;
    fp_status st = FP_OK;
    m->dp_n2 = mem_alloc(B, sizeof(double), &st);
    m->dp_rs = act_alloc(m->max_tok, &st);
    m->dp_ident = mem_alloc(B + 1, sizeof(int32_t), &st);
    m->dp_ub = act_alloc(B * C, &st);
    m->dp_ug = act_alloc(B * C, &st);
    m->dp_junk = act_alloc(2 * C, &st);
    const size_t lin = fp_k_linear_user_sqnorms_scratch(c->maxlen, c->dim, c->dim);
    const size_t emb = fp_k_embed_user_sqnorms_scratch(c->n_items, c->maxlen, c->maxlen, m->S, c->dim);
    if (st == FP_OK && (lin > SIZE_MAX / 2 / nth || emb > SIZE_MAX / 2 / nth))
        st = FP_FAIL(FP_ERR_RANGE, "DP-SGD scratch too large");
    m->dp_lin = act_alloc(nth * lin, &st);
    if (st == FP_OK && m->max_tok * C > SIZE_MAX / sizeof(float) / DP_SLOTS((size_t)c->blocks))
        st = FP_FAIL(FP_ERR_RANGE, "DP-SGD gradient slots too large");
    m->dp_bk = act_alloc(DP_SLOTS((size_t)c->blocks) * m->max_tok * C, &st);
    m->dp_tokc = act_alloc(m->max_tok, &st);
    if (st == FP_OK) {
        size_t bytes = (nth * emb + 63) / 64 * 64;
        m->dp_emb = aligned_alloc(64, bytes);
        if (!m->dp_emb)
            st = FP_FAIL(FP_ERR_NOMEM, "DP-SGD embedding-norm scratch (%zu bytes)", bytes);
        else
            memset(m->dp_emb, 0xff, bytes); /* every item slot -1: not seen */
    }
    if (st != FP_OK) {
        dp_free(m);
        return st;
    }
    for (size_t i = 0; i <= B; i++)
        m->dp_ident[i] = (int32_t)i;
    m->dp_ready = 1;
    return FP_OK;
}

/* acc += squared norms of the per-user gradients of a linear layer's weights (n_out layers sharing
 * the input in) and of their biases (column sums of each dout). */
static void dp_linear_norms(fp_model_t *m, const float *in, const float *const *dout, int n_out)
{
    const int C = m->cfg.dim;
    fp_k_linear_user_sqnorms(m->dp_n2, in, dout, n_out, m->off, m->U, C, C, 1, m->dp_lin); /* weights + biases */
}

/* acc += squared norms of the per-user gradients of a LayerNorm's gain and bias, given its output
 * gradient dout and its input in (with the saved mean and rstd). */
static void dp_layernorm_norms(fp_model_t *m, const float *dout, const float *in, const float *mu, const float *rs)
{
    const int C = m->cfg.dim;
    fp_k_user_colsums(m->dp_ub, m->dp_ug, dout, in, mu, rs, m->off, m->U, C);
    fp_k_user_sqnorms(m->dp_n2, m->dp_ub, m->dp_ident, m->U, C);
    fp_k_user_sqnorms(m->dp_n2, m->dp_ug, m->dp_ident, m->U, C);
}

/* Book-keeping (Bu et al. 2023): the norm pass keeps every layer's output gradient, of the
 * unscaled per-user losses, in a slot; the clipped gradient is then formed from them, each row
 * scaled by its user's clip factor, without a second backward pass (bk_grads). Slots: 0 the final
 * LayerNorm's output gradient; per block l, 1 + 8l + (0 FFN output, 1 FFN hidden (after the ReLU),
 * 2 LN2 output, 3 attention output, 4 q, 5 k, 6 v, 7 LN1 output); last, the embeddings' output. */
enum { BK_FO, BK_FC, BK_LN2, BK_AO, BK_Q, BK_K, BK_V, BK_LN1, BK_PER_BLOCK };

static float *bk_slot(fp_model_t *m, size_t slot) { return m->dp_bk + slot * m->max_tok * (size_t)m->cfg.dim; }
static float *bk_blk(fp_model_t *m, int l, int which) { return bk_slot(m, 1 + (size_t)BK_PER_BLOCK * l + which); }
static float *bk_emb(fp_model_t *m) { return bk_slot(m, 1 + (size_t)BK_PER_BLOCK * m->cfg.blocks); }
static void bk_keep(fp_model_t *m, float *slot, const float *g) { fp_k_copy(slot, g, (size_t)m->N * m->cfg.dim); }
/* slot = g * mask (a dropout's backward), or a copy of g without dropout (mask NULL). */
static void bk_masked(fp_model_t *m, float *slot, const float *g, const float *mask)
{
    if (mask)
        fp_k_mul(slot, g, mask, (size_t)m->N * m->cfg.dim);
    else
        bk_keep(m, slot, g);
}

/* The norm pass: a backward of the SUMMED data loss (each user's loss is the sum over its
 * positions) that computes input gradients only, and at every parameter adds the squared norm of
 * each user's gradient to dp_n2[u]. Users never interact in the forward pass (attention is per
 * user, everything else per token), so the rows of user u in every intermediate gradient are the
 * gradient of user u's own loss: the per-user norms come from the batch's one backward pass.
 * Leaves logits = dloss/dlogits and dhl = its hidden-state gradient (unscaled) for the clipped
 * pass. Mirrors backward() layer by layer. */
static void dp_norm_pass(fp_model_t *m)
{
    const fp_model_config_t *c = &m->cfg;
    const int N = m->N, C = c->dim, H = c->heads, U = m->U;
    const size_t NC = (size_t)N * C;
    const int drop = m->dropout_on, drop_att = m->att_drop_on;
    const float *P = m->params;
    float *junk_g = m->dp_junk, *junk_b = m->dp_junk + C;
    const int sr = c->block == FP_BLOCK_SASREC;
    memset(m->dp_junk, 0, 2 * (size_t)C * sizeof *m->dp_junk);

    /* loss: dz (in logits) and dhl, no parameter gradient yet */
    fp_k_sampled_loss_dlogits(m->logits, m->NL, m->S, c->loss == FP_LOSS_BCE ? FP_K_LOSS_BCE : FP_K_LOSS_SOFTMAX,
                              1.0f);
    fp_k_sampled_scores_bwd(m->dhl, NULL, m->logits, m->hl, m->items, P + m->o_wte, m->NL, m->S, C);
    /* final LayerNorm; a loss target at a padding position feeds ln_f.b directly (h = ln_f.b) */
    float *dlnf = bk_slot(m, 0); /* every kept gradient is written into its slot directly */
    fp_k_zero(dlnf, NC);
    fp_k_scatter_rows_add(dlnf, NULL, m->dhl, m->loss_row, m->NL, C);
    const float *xL = c->blocks > 0 ? m->act[c->blocks - 1].out : m->x0;
    fp_k_user_colsums(m->dp_ub, m->dp_ug, dlnf, xL, m->lnf_mu, m->lnf_rs, m->off, U, C);
    for (int u = 0; u < U; u++) /* rare (hand-made batches only): a plain loop */
        for (int v = m->loff[u]; v < m->loff[u + 1]; v++)
            if (m->loss_row[v] < 0)
                for (int j = 0; j < C; j++)
                    m->dp_ub[(size_t)u * C + j] += m->dhl[(size_t)v * C + j];
    fp_k_user_sqnorms(m->dp_n2, m->dp_ub, m->dp_ident, U, C);
    fp_k_user_sqnorms(m->dp_n2, m->dp_ug, m->dp_ident, U, C);
    fp_k_zero(m->dres, NC);
    fp_k_layernorm_bwd(m->dres, junk_g, junk_b, dlnf, xL, P + m->o_lnfg, m->lnf_mu, m->lnf_rs, N, C);

    for (int l = c->blocks - 1; l >= 0; l--) {
        blk_act_t *a = &m->act[l];
        const blk_off_t *o = &m->boff[l];
        const float *x = l > 0 ? m->act[l - 1].out : m->x0;
        /* feed-forward: out = res1 + dropout(fa W2 + b2), fa = dropout(relu(ln2 W1 + b1)) */
        float *dfo = bk_blk(m, l, BK_FO);
        bk_masked(m, dfo, m->dres, drop ? a->m_ffn : NULL);
        const float *dfo_in[1] = {dfo};
        dp_linear_norms(m, a->fa, dfo_in, 1);
        fp_k_sgemm(0, 1, N, C, C, 1.0f, dfo, C, P + o->w2, C, 0.0f, m->s2, C);
        float *dfc = bk_blk(m, l, BK_FC);
        fp_k_relu_bwd(dfc, m->s2, a->fch, drop ? a->m_relu : NULL, NC);
        const float *dfc_in[1] = {dfc};
        dp_linear_norms(m, a->ln2, dfc_in, 1);
        float *dln2 = bk_blk(m, l, BK_LN2);
        fp_k_sgemm(0, 1, N, C, C, 1.0f, dfc, C, P + o->w1, C, 0.0f, dln2, C);
        if (sr) {
            fp_k_add_mul(dln2, dln2, m->dres, NULL, NC);
            fp_k_zero(m->dres, NC);
        }
        dp_layernorm_norms(m, dln2, a->res1, a->ln2_mu, a->ln2_rs);
        fp_k_layernorm_bwd(m->dres, junk_g, junk_b, dln2, a->res1, P + o->ln2g, a->ln2_mu, a->ln2_rs, N, C);
        /* attention: res1 = x + dropout(atty Wo + bo) */
        float *dao = bk_blk(m, l, BK_AO);
        bk_masked(m, dao, m->dres, drop ? a->m_att : NULL);
        const float *dao_in[1] = {dao};
        dp_linear_norms(m, a->atty, dao_in, 1);
        fp_k_sgemm(0, 1, N, C, C, 1.0f, dao, C, P + o->wo, C, 0.0f, m->s2, C);
        float *dq = bk_blk(m, l, BK_Q), *dk = bk_blk(m, l, BK_K), *dv = bk_blk(m, l, BK_V);
        fp_k_attention_bwd(dq, dk, dv, m->datt, m->s2, a->att, drop_att ? a->attd : NULL, a->q, a->k, a->v, m->off,
                           m->att_off, U, C, H, m->tmp);
        const float *dqkv[3] = {dq, dk, dv};
        float *dln1 = bk_blk(m, l, BK_LN1);
        if (!sr) {
            dp_linear_norms(m, a->ln1, dqkv, 3);
            fp_k_sgemm(0, 1, N, C, C, 1.0f, dq, C, P + o->wq, C, 0.0f, dln1, C);
            fp_k_sgemm(0, 1, N, C, C, 1.0f, dk, C, P + o->wk, C, 1.0f, dln1, C);
            fp_k_sgemm(0, 1, N, C, C, 1.0f, dv, C, P + o->wv, C, 1.0f, dln1, C);
        } else { /* q from ln1, k and v from x; res1 = ln1 + ... */
            dp_linear_norms(m, a->ln1, dqkv, 1);
            dp_linear_norms(m, x, dqkv + 1, 2);
            fp_k_sgemm(0, 1, N, C, C, 1.0f, dq, C, P + o->wq, C, 0.0f, dln1, C);
            fp_k_add_mul(dln1, dln1, m->dres, NULL, NC);
            fp_k_sgemm(0, 1, N, C, C, 1.0f, dk, C, P + o->wk, C, 0.0f, m->dres, C);
            fp_k_sgemm(0, 1, N, C, C, 1.0f, dv, C, P + o->wv, C, 1.0f, m->dres, C);
        }
        dp_layernorm_norms(m, dln1, x, a->ln1_mu, a->ln1_rs);
        fp_k_layernorm_bwd(m->dres, junk_g, junk_b, dln1, x, P + o->ln1g, a->ln1_mu, a->ln1_rs, N, C);
    }
    /* embeddings: x0 = dropout(item_emb[id] * sqrt(dim) + pos_emb[t]); a user's positions are
     * distinct rows of pos_emb, so its pos_emb norm is the sum of its rows' squares */
    float *dx = bk_emb(m);
    bk_masked(m, dx, m->dres, drop ? m->m_emb : NULL);
    fp_k_user_sqnorms(m->dp_n2, dx, m->off, U, C);
    fp_k_embed_user_sqnorms(m->dp_n2, dx, m->tok_id, sqrtf((float)C), m->off, m->logits, m->hl, m->items, m->loff, U,
                            c->n_items, c->maxlen, c->maxlen, m->S, C, m->dp_emb);
}

/* The clipped gradient sum_u c_u g_u into m->grads (+=) from the slots of the norm pass: every
 * token row of every slot is scaled by its user's factor c_u (dp_tokc), then each parameter's
 * gradient is the one product or column sum it takes from its layer's input and output gradient.
 * Exact up to rounding, because a token's output gradient belongs to its own user's loss alone
 * (users never interact); tests/test_dpsgd.c checks it against per-user gradients. The loss side
 * (item_emb as output embeddings, ln_f.b for a loss target at a padding position) uses the loss
 * rows' factors (dp_rs) with the norm pass's unscaled dhl. */
static void bk_grads(fp_model_t *m)
{
    const fp_model_config_t *c = &m->cfg;
    const int N = m->N, C = c->dim;
    const float *P = m->params;
    float *G = m->grads;
    const int sr = c->block == FP_BLOCK_SASREC;
    for (int v = 0; v < m->NL; v++) /* rare (hand-made batches only): a plain loop */
        if (m->loss_row[v] < 0)
            for (int j = 0; j < C; j++)
                G[m->o_lnfb + j] += m->dp_rs[v] * m->dhl[(size_t)v * C + j];
    fp_k_scale_rows(m->logits, m->dp_rs, m->NL, m->S);
    fp_k_sampled_scores_bwd(m->dhl, G + m->o_wte, m->logits, m->hl, m->items, P + m->o_wte, m->NL, m->S, C);
    for (size_t k = 0; k < (size_t)DP_SLOTS(c->blocks); k++)
        fp_k_scale_rows(bk_slot(m, k), m->dp_tokc, N, C);
    const float *xL = c->blocks > 0 ? m->act[c->blocks - 1].out : m->x0;
    fp_k_layernorm_params_bwd(G + m->o_lnfg, G + m->o_lnfb, bk_slot(m, 0), xL, m->lnf_mu, m->lnf_rs, N, C);
    for (int l = 0; l < c->blocks; l++) {
        const blk_act_t *a = &m->act[l];
        const blk_off_t *o = &m->boff[l];
        const float *x = l > 0 ? m->act[l - 1].out : m->x0;
        fp_k_linear_bwd(NULL, G + o->w2, G + o->b2, bk_blk(m, l, BK_FO), a->fa, P + o->w2, N, C, C, 0);
        fp_k_linear_bwd(NULL, G + o->w1, G + o->b1, bk_blk(m, l, BK_FC), a->ln2, P + o->w1, N, C, C, 0);
        fp_k_layernorm_params_bwd(G + o->ln2g, G + o->ln2b, bk_blk(m, l, BK_LN2), a->res1, a->ln2_mu, a->ln2_rs, N, C);
        fp_k_linear_bwd(NULL, G + o->wo, G + o->bo, bk_blk(m, l, BK_AO), a->atty, P + o->wo, N, C, C, 0);
        const float *kv_in = sr ? x : a->ln1;
        fp_k_linear_bwd(NULL, G + o->wq, G + o->bq, bk_blk(m, l, BK_Q), a->ln1, P + o->wq, N, C, C, 0);
        fp_k_linear_bwd(NULL, G + o->wk, G + o->bk, bk_blk(m, l, BK_K), kv_in, P + o->wk, N, C, C, 0);
        fp_k_linear_bwd(NULL, G + o->wv, G + o->bv, bk_blk(m, l, BK_V), kv_in, P + o->wv, N, C, C, 0);
        fp_k_layernorm_params_bwd(G + o->ln1g, G + o->ln1b, bk_blk(m, l, BK_LN1), x, a->ln1_mu, a->ln1_rs, N, C);
    }
    fp_k_embed_bwd(G + m->o_wte, G + m->o_wpe, bk_emb(m), m->tok_id, m->tok_t, sqrtf((float)C), N, C);
}

fp_status fp_model_loss_grad_clipped(fp_model_t *m, const fp_batch_t *b, fp_rng_t *rng, double clip, int accumulate,
                                     double *norms, double *loss_out)
{
    if (!m)
        return FP_FAIL(FP_ERR_INVALID, "fp_model_loss_grad_clipped: NULL model");
    if (!(clip > 0.0) || !isfinite(clip))
        return FP_FAIL(FP_ERR_INVALID, "fp_model_loss_grad_clipped: clip %g must be finite and > 0", clip);
    fp_status st = dp_alloc(m);
    if (st != FP_OK || (st = begin_step(m, b, 1, rng)) != FP_OK)
        return st;
    forward(m);
    double data = loss_forward(m);
    const fp_model_config_t *c = &m->cfg;
    const int U = m->U, C = c->dim;
    memset(m->dp_n2, 0, (size_t)(U > 0 ? U : 1) * sizeof *m->dp_n2);
    if (m->NL > 0)
        dp_norm_pass(m);
    /* a device error first: after a fault the norms are undefined (and not to be read) */
    if ((st = fp_k_take_error()) != FP_OK)
        return st;
    /* clip factors, checked before the grads are touched */
    const double bound = clip * FP_MODEL_CLIP_MARGIN;
    for (int u = 0; u < U; u++) {
        double n = sqrt(m->dp_n2[u]);
        if (!isfinite(n))
            return FP_FAIL(FP_ERR_NUMERIC, "fp_model_loss_grad_clipped: user %d's gradient norm is %g", u, n);
        float f = n > bound ? (float)(bound / n) : 1.0f;
        if (norms)
            norms[u] = n;
        for (int v = m->loff[u]; v < m->loff[u + 1]; v++)
            m->dp_rs[v] = f;
        for (int t = m->off[u]; t < m->off[u + 1]; t++)
            m->dp_tokc[t] = f;
    }
    float *G = m->grads;
    if (!accumulate)
        fp_k_zero(G, m->layout.total);
    if (m->NL > 0)
        bk_grads(m); /* sum_u c_u g_u, from the norm pass's slots */
    fp_k_zero(G + m->o_wte, (size_t)C); /* padding row: no gradient */
    if (loss_out)
        *loss_out = m->NL > 0 ? data / m->NL : 0.0;
    return fp_k_take_error();
}

void fp_model_add_l2_grad(fp_model_t *m)
{
    if (!m || !(m->cfg.l2_emb > 0.0f))
        return;
    const size_t C = (size_t)m->cfg.dim, n = m->layout.tensors[0].numel;
    const float coef = 2.0f * m->cfg.l2_emb;
    float *G = m->grads + m->o_wte;
    const float *P = m->params + m->o_wte;
    for (size_t i = C; i < n; i++) /* row 0 (padding) has no gradient */
        G[i] += coef * P[i];
}

/* ------------------------------------------------------------------ Adam */

fp_status fp_adam_create(fp_adam_t *a, size_t n)
{
    if (!a)
        return FP_FAIL(FP_ERR_INVALID, "fp_adam_create: NULL");
    memset(a, 0, sizeof *a);
    if (n == 0)
        return FP_FAIL(FP_ERR_INVALID, "fp_adam_create: n = 0");
    fp_status st = FP_OK;
    a->m = act_alloc(n, &st); /* the device's memory, like the model's */
    a->v = act_alloc(n, &st);
    if (st != FP_OK) {
        fp_adam_destroy(a);
        return FP_FAIL(FP_ERR_NOMEM, "Adam state of %zu floats", n);
    }
    memset(a->m, 0, n * sizeof *a->m);
    memset(a->v, 0, n * sizeof *a->v);
    a->n = n;
    return FP_OK;
}

void fp_adam_destroy(fp_adam_t *a)
{
    if (!a)
        return;
    fp_k_free(a->m);
    fp_k_free(a->v);
    memset(a, 0, sizeof *a);
}

void fp_model_adam_step(fp_model_t *m, fp_adam_t *a, float lr, float beta1, float beta2, float eps)
{
    if (!m || !a || !a->m || !a->v || a->n != m->layout.total) {
        fp_error_set(FP_ERR_INVALID, __FILE__, __LINE__, "fp_model_adam_step: Adam state does not match the model");
        return;
    }
    a->step++;
    double bc1 = 1.0 - pow((double)beta1, (double)a->step);
    double bc2 = 1.0 - pow((double)beta2, (double)a->step);
    fp_k_set_threads(m->threads);
    fp_k_adam(m->params, m->grads, a->m, a->v, a->n, lr, beta1, beta2, eps, bc1, bc2);
}

/* ------------------------------------------------------------------ inference */

fp_status fp_model_profiles(fp_model_t *m, const int32_t *seq, int B, float *out)
{
    if (!m || (B > 0 && !out))
        return FP_FAIL(FP_ERR_INVALID, "fp_model_profiles: NULL argument");
    fp_status st = pack(m, seq, NULL, NULL, B);
    if (st != FP_OK)
        return st;
    m->dropout_on = 0;
    m->att_drop_on = 0;
    fp_k_set_threads(m->threads);
    forward(m);
    fp_k_gather_rows(out, m->lnf, m->prof_row, NULL, B, m->cfg.dim);
    return fp_k_take_error();
}

void fp_model_score_items(const fp_model_t *m, const float *profile, const int32_t *items, int n, float *out)
{
    if (!m || n <= 0)
        return;
    const int C = m->cfg.dim;
    int bad = 0;
    for (int i = 0; i < n; i++)
        if (items[i] < 0 || items[i] > m->cfg.n_items)
            bad++;
    fp_k_set_threads(m->threads);
    if (!bad) {
        fp_k_gather_dot(out, profile, items, m->params + m->o_wte, n, C);
        return;
    }
    /* An id outside the catalogue scores -inf (ranked last) and leaves an error message. */
    for (int i = 0; i < n; i++) {
        if (items[i] < 0 || items[i] > m->cfg.n_items)
            out[i] = -INFINITY;
        else
            fp_k_gather_dot(out + i, profile, items + i, m->params + m->o_wte, 1, C);
    }
    fp_error_set(FP_ERR_RANGE, __FILE__, __LINE__, "fp_model_score_items: %d item ids outside [0, %d]", bad,
                 m->cfg.n_items);
}

void fp_model_score_all(const fp_model_t *m, const float *profiles, int B, float *out)
{
    if (!m || B <= 0)
        return;
    const int C = m->cfg.dim, V = m->cfg.n_items + 1;
    fp_k_set_threads(m->threads);
    /* out[B x V] = profiles[B x C] item_emb^T[C x V] */
    fp_k_sgemm(0, 1, B, V, C, 1.0f, profiles, C, m->params + m->o_wte, C, 0.0f, out, V);
}
