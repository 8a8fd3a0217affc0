/* fedprof-bench-canary: an empirical check that DP-SGD's noise is really applied, by one-run privacy
 * auditing (Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run").
 *
 *   fedprof-bench-canary plant --data IN --out OUT --truth TRUTH [--canaries 1000] [--len 20] [--seed 1]
 *   fedprof-bench-canary score --model DIR/model.safetensors --truth TRUTH [--k-plus K] [--k-minus K]
 *                              [--beta 0.05] [--delta 1e-5] [--threads N] [--json]
 *
 * plant: M canary users with ids after IN's largest user id, each a sequence of L DISTINCT items drawn
 * uniformly from IN's catalogue (real users follow Zipf popularity and sequential transitions inside
 * a few interests, so a canary's transitions are unlike anything else in the data and can only be
 * predicted by remembering it). A fair coin per canary (fp_rng seeded with --seed: the auditor's
 * randomness, public by design; what it must be independent of is the training run, which it is)
 * decides whether it goes into OUT = IN's bytes verbatim + the included canaries' lines. TRUTH has one
 * line per canary: "id included item_1 .. item_L".
 *
 * score: for every canary, in or out, the membership score is the mean log-softmax of each next item
 * against the FULL catalogue, at exactly the positions training used: the canary's leave-one-out
 * training part (its first L - 2 items; the last two are the validation and test items and never
 * enter a gradient), truncated to the last maxlen + 1 and right-aligned as fp_batcher does, seq =
 * x[0..n-2], pos = x[1..n-1]. It is computed with fp_model_loss (training = 0: no dropout) on a copy
 * of the model configured for sampled softmax with every other item as a negative, which is the exact
 * full softmax: deterministic (no sampled negatives), and the same input positions as in training
 * (a prefix right-aligned by fp_model_profiles would sit at other positions). Score = -loss.
 *
 * Guesses (the paper's Algorithm 1): "included" for the K+ highest scores, "excluded" for the K-
 * lowest, abstain on the rest; v right out of r = K+ + K-. The ε lower bound at confidence 1 - β is
 * dp/audit_bound.h's (the paper's (ε, δ) bound with m = M canaries). K+ and K- are fixed before
 * looking at the scores (default M / 10 each); the bounds for K = 10, 25, 50, 100, 250 each side
 * are printed for information only: the maximum over them would need a correction for the choice.
 * Also printed: the audit's ceiling (the bound if all r guesses were right: no ε above it can be
 * refuted by this many canaries and guesses at this δ and β, whatever the model leaks), and the ROC
 * AUC of the score (in vs out), for information; the AUC carries no guarantee. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common/cli.h"
#include "common/config.h"
#include "common/data.h"
#include "common/errors.h"
#include "common/model.h"
#include "common/model_io.h"
#include "common/rng.h"
#include "common/threads_env.h"
#include "dp/audit_bound.h"

#define CANARY_MAX_LEN 10000
#define CANARY_MAX_M 1000000
#define TRUTH_MAGIC "# fedprof-canary-truth v1"

static const int canary_info_k[] = {10, 25, 50, 100, 250};

/* ---- small helpers -------------------------------------------------------------------------------- */

static fp_status canary_copy_file(FILE *out, const char *in_path, int *ends_in_newline)
{
    FILE *in = fopen(in_path, "rb");
    if (!in)
        return FP_FAIL(FP_ERR_IO, "%s: %s", in_path, strerror(errno));
    char buf[1 << 16];
    size_t n;
    int last = '\n';
    fp_status st = FP_OK;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) {
        if (fwrite(buf, 1, n, out) != n) {
            st = FP_FAIL(FP_ERR_IO, "write: %s", strerror(errno));
            break;
        }
        last = (unsigned char)buf[n - 1];
    }
    if (st == FP_OK && ferror(in))
        st = FP_FAIL(FP_ERR_IO, "%s: read error", in_path);
    if (fclose(in) != 0 && st == FP_OK)
        st = FP_FAIL(FP_ERR_IO, "%s: %s", in_path, strerror(errno));
    *ends_in_newline = last == '\n';
    return st;
}

/* Close a temporary file and rename it into place (or remove it when st is already an error). */
static fp_status canary_commit(FILE *f, const char *tmp, const char *path, fp_status st)
{
    if (fflush(f) != 0 && st == FP_OK)
        st = FP_FAIL(FP_ERR_IO, "%s: %s", tmp, strerror(errno));
    if (ferror(f) && st == FP_OK)
        st = FP_FAIL(FP_ERR_IO, "%s: write error", tmp);
    if (fclose(f) != 0 && st == FP_OK)
        st = FP_FAIL(FP_ERR_IO, "%s: %s", tmp, strerror(errno));
    if (st == FP_OK && rename(tmp, path) != 0)
        st = FP_FAIL(FP_ERR_IO, "rename %s -> %s: %s", tmp, path, strerror(errno));
    if (st != FP_OK)
        (void)remove(tmp);
    return st;
}

static const char *canary_item_name(const fp_dataset_t *d, int32_t i, char *buf, size_t n)
{
    if (d->item_names && d->item_names[i])
        return d->item_names[i];
    snprintf(buf, n, "%" PRId32, i);
    return buf;
}

/* ---- plant ---------------------------------------------------------------------------------------- */

static int canary_plant(int argc, char **argv)
{
    const char *data = NULL, *out = NULL, *truth = NULL;
    int m = 1000, len = 20, help = 0;
    uint64_t seed = 1;
    const fp_opt_t opts[] = {
        {"data", FP_OPT_STR, &data, 0, 0, NULL, "behaviour log, 'user item' text (required)"},
        {"out", FP_OPT_STR, &out, 0, 0, NULL, "training data to write: IN + the included canaries (required)"},
        {"truth", FP_OPT_STR, &truth, 0, 0, NULL, "canary list to write: id, included 0/1, items (required)"},
        {"canaries", FP_OPT_INT, &m, 1, CANARY_MAX_M, NULL, "canary users M (default 1000)"},
        {"len", FP_OPT_INT, &len, 4, CANARY_MAX_LEN, NULL, "items per canary L, distinct (default 20)"},
        {"seed", FP_OPT_U64, &seed, 0, 0, NULL, "the auditor's coin and item draws (default 1)"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    if (fp_cli_parse(argc, argv, opts) != FP_OK) {
        fprintf(stderr, "fedprof-bench-canary plant: error: %s\n", fp_error_message());
        return 2;
    }
    if (help) {
        printf("usage: fedprof-bench-canary plant --data IN --out OUT --truth TRUTH [options]\n\n");
        fp_cli_print_help(opts);
        return 0;
    }
    if (!data || !out || !truth) {
        fprintf(stderr, "fedprof-bench-canary plant: error: --data, --out and --truth are required\n");
        return 2;
    }
    fp_dataset_t *d = NULL;
    fp_status st = fp_data_load(data, FP_FORMAT_TEXT, &d);
    if (st != FP_OK) {
        fprintf(stderr, "fedprof-bench-canary plant: error: %s\n", fp_error_message());
        return 1;
    }
    int rc = 1;
    int32_t *perm = NULL;
    FILE *fo = NULL, *ft = NULL;
    char tmp_out[4096], tmp_truth[4096];
    if (len > d->n_items) {
        fprintf(stderr, "fedprof-bench-canary plant: error: --len %d > %" PRId32 " items in %s\n", len, d->n_items,
                data);
        goto done;
    }
    /* the largest user id: text-format names are decimal integers */
    int64_t max_user = 0;
    for (int32_t u = 0; u < d->n_users; u++) {
        int64_t id = u + 1;
        if (d->user_names && d->user_names[u]) {
            char *end = NULL;
            errno = 0;
            long long x = strtoll(d->user_names[u], &end, 10);
            if (errno != 0 || end == d->user_names[u] || *end != '\0') {
                fprintf(stderr, "fedprof-bench-canary plant: error: user id '%s' is not a decimal integer\n",
                        d->user_names[u]);
                goto done;
            }
            id = x;
        }
        if (id > max_user)
            max_user = id;
    }
    if (max_user + m > INT32_MAX) {
        fprintf(stderr, "fedprof-bench-canary plant: error: canary ids would pass 2^31 - 1\n");
        goto done;
    }
    if (snprintf(tmp_out, sizeof tmp_out, "%s.tmp", out) >= (int)sizeof tmp_out ||
        snprintf(tmp_truth, sizeof tmp_truth, "%s.tmp", truth) >= (int)sizeof tmp_truth) {
        fprintf(stderr, "fedprof-bench-canary plant: error: path too long\n");
        goto done;
    }
    perm = malloc((size_t)d->n_items * sizeof *perm);
    if (!perm) {
        fprintf(stderr, "fedprof-bench-canary plant: error: out of memory\n");
        goto done;
    }
    for (int32_t i = 0; i < d->n_items; i++)
        perm[i] = i + 1;
    fo = fopen(tmp_out, "wb");
    if (!fo) {
        fprintf(stderr, "fedprof-bench-canary plant: error: %s: %s\n", tmp_out, strerror(errno));
        goto done;
    }
    ft = fopen(tmp_truth, "wb");
    if (!ft) {
        fprintf(stderr, "fedprof-bench-canary plant: error: %s: %s\n", tmp_truth, strerror(errno));
        goto done;
    }
    int nl = 1;
    st = canary_copy_file(fo, data, &nl);
    if (st == FP_OK && !nl && fputc('\n', fo) == EOF)
        st = FP_FAIL(FP_ERR_IO, "%s: write error", tmp_out);
    if (st == FP_OK && fprintf(ft, "%s canaries %d len %d seed %" PRIu64 " items %" PRId32 "\n", TRUTH_MAGIC, m, len,
                               seed, d->n_items) < 0)
        st = FP_FAIL(FP_ERR_IO, "%s: write error", tmp_truth);
    fp_rng_t rng;
    fp_rng_seed(&rng, seed);
    int included = 0;
    char nb[32];
    for (int c = 0; c < m && st == FP_OK; c++) {
        const int64_t id = max_user + 1 + c;
        const int in = (int)(fp_rng_u64(&rng) >> 63);
        /* L distinct items: a partial Fisher-Yates shuffle of the catalogue */
        for (int k = 0; k < len; k++) {
            int32_t j = k + (int32_t)fp_rng_below(&rng, (uint64_t)(d->n_items - k));
            int32_t t = perm[k];
            perm[k] = perm[j];
            perm[j] = t;
        }
        included += in;
        if (fprintf(ft, "%" PRId64 " %d", id, in) < 0)
            st = FP_FAIL(FP_ERR_IO, "%s: write error", tmp_truth);
        for (int k = 0; k < len && st == FP_OK; k++) {
            const char *name = canary_item_name(d, perm[k], nb, sizeof nb);
            if (fprintf(ft, " %s", name) < 0 || (in && fprintf(fo, "%" PRId64 " %s\n", id, name) < 0))
                st = FP_FAIL(FP_ERR_IO, "write error");
        }
        if (st == FP_OK && fputc('\n', ft) == EOF)
            st = FP_FAIL(FP_ERR_IO, "%s: write error", tmp_truth);
    }
    st = canary_commit(fo, tmp_out, out, st);
    fo = NULL;
    st = canary_commit(ft, tmp_truth, truth, st);
    ft = NULL;
    if (st != FP_OK) {
        fprintf(stderr, "fedprof-bench-canary plant: error: %s\n", fp_error_message());
        goto done;
    }
    fprintf(stderr, "planted %d canaries of %d items (ids %" PRId64 "..%" PRId64 "): %d included in %s, %d left out\n",
            m, len, max_user + 1, max_user + m, included, out, m - included);
    rc = 0;
done:
    if (fo) {
        (void)fclose(fo);
        (void)remove(tmp_out);
    }
    if (ft) {
        (void)fclose(ft);
        (void)remove(tmp_truth);
    }
    free(perm);
    fp_dataset_free(d);
    return rc;
}

/* ---- score ---------------------------------------------------------------------------------------- */

typedef struct {
    int64_t id;
    int in;
    int32_t *items; /* dense ids of the scored model, [len] */
    double score;
} canary_t;

typedef struct {
    const char *name;
    int32_t id;
} canary_name_t;

static int canary_name_cmp(const void *a, const void *b)
{
    return strcmp(((const canary_name_t *)a)->name, ((const canary_name_t *)b)->name);
}

/* Read TRUTH, mapping item names to the model's dense ids. */
static fp_status canary_read_truth(const char *path, char **items, int32_t n_items, canary_t **out, int *n_out,
                                   int *len_out)
{
    *out = NULL;
    *n_out = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return FP_FAIL(FP_ERR_IO, "%s: %s", path, strerror(errno));
    fp_status st = FP_OK;
    canary_name_t *names = calloc((size_t)n_items, sizeof *names);
    canary_t *cs = NULL;
    char *line = malloc(FP_DATA_MAX_LINE);
    int m = 0, len = 0, n = 0;
    char nb[32];
    if (!names || !line) {
        st = FP_FAIL(FP_ERR_NOMEM, "truth");
        goto out;
    }
    for (int32_t i = 1; i <= n_items; i++) {
        if (items[i]) {
            names[i - 1].name = items[i];
        } else {
            snprintf(nb, sizeof nb, "%" PRId32, i);
            names[i - 1].name = strdup(nb); /* freed below: only when the model has unnamed items */
            if (!names[i - 1].name) {
                st = FP_FAIL(FP_ERR_NOMEM, "truth");
                goto out;
            }
        }
        names[i - 1].id = i;
    }
    qsort(names, (size_t)n_items, sizeof *names, canary_name_cmp);
    if (!fgets(line, FP_DATA_MAX_LINE, f) ||
        sscanf(line, TRUTH_MAGIC " canaries %d len %d", &m, &len) != 2 || m < 1 || m > CANARY_MAX_M || len < 4 ||
        len > CANARY_MAX_LEN) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: not a canary truth file (first line)", path);
        goto out;
    }
    cs = calloc((size_t)m, sizeof *cs);
    if (!cs) {
        st = FP_FAIL(FP_ERR_NOMEM, "truth");
        goto out;
    }
    for (int lineno = 2; n < m; lineno++) {
        if (!fgets(line, FP_DATA_MAX_LINE, f)) {
            st = FP_FAIL(FP_ERR_FORMAT, "%s: %d canaries, expected %d", path, n, m);
            goto out;
        }
        canary_t *c = &cs[n];
        c->items = malloc((size_t)len * sizeof *c->items);
        if (!c->items) {
            st = FP_FAIL(FP_ERR_NOMEM, "truth");
            goto out;
        }
        n++;
        char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save);
        char *end = NULL;
        errno = 0;
        c->id = tok ? strtoll(tok, &end, 10) : 0;
        if (!tok || errno || *end) {
            st = FP_FAIL(FP_ERR_PARSE, "%s:%d: bad canary id", path, lineno);
            goto out;
        }
        tok = strtok_r(NULL, " \t\r\n", &save);
        if (!tok || (strcmp(tok, "0") != 0 && strcmp(tok, "1") != 0)) {
            st = FP_FAIL(FP_ERR_PARSE, "%s:%d: included must be 0 or 1", path, lineno);
            goto out;
        }
        c->in = tok[0] == '1';
        for (int k = 0; k < len; k++) {
            tok = strtok_r(NULL, " \t\r\n", &save);
            if (!tok) {
                st = FP_FAIL(FP_ERR_PARSE, "%s:%d: %d items, expected %d", path, lineno, k, len);
                goto out;
            }
            canary_name_t key = {tok, 0};
            const canary_name_t *hit = bsearch(&key, names, (size_t)n_items, sizeof *names, canary_name_cmp);
            if (!hit) {
                st = FP_FAIL(FP_ERR_NOT_FOUND, "%s:%d: item '%s' is not in the model's catalogue", path, lineno, tok);
                goto out;
            }
            c->items[k] = hit->id;
        }
        if (strtok_r(NULL, " \t\r\n", &save)) {
            st = FP_FAIL(FP_ERR_PARSE, "%s:%d: more than %d items", path, lineno, len);
            goto out;
        }
    }
out:
    if (names) /* calloc'd: unfilled entries have id 0 (items[0] is NULL) and name NULL */
        for (int32_t i = 0; i < n_items; i++)
            if (names[i].name && !items[names[i].id])
                free((void *)names[i].name);
    free(names);
    free(line);
    if (fclose(f) != 0 && st == FP_OK)
        st = FP_FAIL(FP_ERR_IO, "%s: %s", path, strerror(errno));
    if (st != FP_OK) {
        for (int i = 0; i < n; i++)
            free(cs[i].items);
        free(cs);
        return st;
    }
    *out = cs;
    *n_out = m;
    *len_out = len;
    return FP_OK;
}

/* Mean full-catalogue log-softmax of the next item over the canary's training positions. */
static fp_status canary_score_one(fp_model_t *sm, const int32_t *x, int len, int32_t *seq, int32_t *pos, int32_t *neg,
                                  double *score)
{
    const fp_model_config_t *c = fp_model_config(sm);
    const int T = c->maxlen, K = c->n_neg;
    /* leave-one-out (fp_split_loo): n >= 3 items train on the first n - 2 */
    int n = len >= 3 ? len - 2 : len;
    const int32_t *tr = x;
    if (n > T + 1) { /* the batcher keeps the last maxlen + 1 */
        tr += n - (T + 1);
        n = T + 1;
    }
    memset(seq, 0, (size_t)T * sizeof *seq);
    memset(pos, 0, (size_t)T * sizeof *pos);
    memset(neg, 0, (size_t)T * K * sizeof *neg);
    const int off = T - (n - 1);
    for (int t = 0; t < n - 1; t++) {
        seq[off + t] = tr[t];
        pos[off + t] = tr[t + 1];
        int32_t *ng = neg + (size_t)(off + t) * K;
        int k = 0;
        for (int32_t i = 1; i <= c->n_items; i++)
            if (i != tr[t + 1])
                ng[k++] = i;
    }
    fp_batch_t b = {1, seq, pos, neg};
    double loss = 0.0;
    fp_status st = fp_model_loss(sm, &b, 0, NULL, &loss);
    if (st != FP_OK)
        return st;
    if (!isfinite(loss))
        return FP_FAIL(FP_ERR_NUMERIC, "canary loss is %g", loss);
    *score = -loss;
    return FP_OK;
}

static int canary_idx_cmp_desc(const void *a, const void *b, const canary_t *cs)
{
    double x = cs[*(const int *)a].score, y = cs[*(const int *)b].score;
    if (x > y)
        return -1;
    if (x < y)
        return 1;
    return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

static const canary_t *canary_sort_base; /* qsort has no context argument in C11 */
static int canary_qsort_cmp(const void *a, const void *b) { return canary_idx_cmp_desc(a, b, canary_sort_base); }

/* v right out of K+ top ("in") and K- bottom ("out") guesses over the score order. */
static int canary_correct(const canary_t *cs, const int *order, int m, int kp, int km)
{
    int v = 0;
    for (int i = 0; i < kp; i++)
        v += cs[order[i]].in;
    for (int i = 0; i < km; i++)
        v += !cs[order[m - 1 - i]].in;
    return v;
}

/* ROC AUC of the score for in vs out (ties count 1/2); NAN when a class is empty. */
static double canary_auc(const canary_t *cs, const int *order, int m)
{
    /* walk from the lowest score up; within a tie group, pairs count 1/2 */
    double pairs = 0.0;
    int64_t n_in = 0, n_out = 0, out_below = 0;
    int i = m - 1;
    while (i >= 0) {
        int j = i;
        int64_t gi = 0, go = 0;
        while (j >= 0 && cs[order[j]].score == cs[order[i]].score) {
            if (cs[order[j]].in)
                gi++;
            else
                go++;
            j--;
        }
        pairs += (double)gi * ((double)out_below + 0.5 * (double)go);
        out_below += go;
        n_in += gi;
        n_out += go;
        i = j;
    }
    return n_in && n_out ? pairs / ((double)n_in * (double)n_out) : NAN;
}

/* A whole-string finite double; 0 on success. */
static int canary_parse_prob(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double x = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(x))
        return -1;
    *out = x;
    return 0;
}

static int canary_score(int argc, char **argv)
{
    const char *model = NULL, *truth = NULL;
    int kp = -1, km = -1, threads = 1, json = 0, help = 0;
    const char *beta_s = "0.05", *delta_s = "1e-5";
    const fp_opt_t opts[] = {
        {"model", FP_OPT_STR, &model, 0, 0, NULL, "trained model.safetensors (required)"},
        {"truth", FP_OPT_STR, &truth, 0, 0, NULL, "canary list written by plant (required)"},
        {"k-plus", FP_OPT_INT, &kp, 0, CANARY_MAX_M, NULL, "guess 'included' for this many highest scores (default M/10)"},
        {"k-minus", FP_OPT_INT, &km, 0, CANARY_MAX_M, NULL, "guess 'excluded' for this many lowest scores (default M/10)"},
        {"beta", FP_OPT_STR, &beta_s, 0, 0, NULL, "1 - confidence of the bound, in (0, 1) (default 0.05)"},
        {"delta", FP_OPT_STR, &delta_s, 0, 0, NULL, "delta of the (epsilon, delta) tested, in [0, 1) (default 1e-5)"},
        {"threads", FP_OPT_INT, &threads, 1, 256, NULL, "model threads (default 1)"},
        {"json", FP_OPT_FLAG, &json, 0, 0, NULL, "one JSON line instead of the text report"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    if (fp_cli_parse(argc, argv, opts) != FP_OK) {
        fprintf(stderr, "fedprof-bench-canary score: error: %s\n", fp_error_message());
        return 2;
    }
    if (help) {
        printf("usage: fedprof-bench-canary score --model FILE --truth TRUTH [options]\n\n");
        fp_cli_print_help(opts);
        return 0;
    }
    if (!model || !truth) {
        fprintf(stderr, "fedprof-bench-canary score: error: --model and --truth are required\n");
        return 2;
    }
    double beta = 0.0, delta = 0.0;
    if (canary_parse_prob(beta_s, &beta) != 0 || !(beta > 0.0 && beta < 1.0) ||
        canary_parse_prob(delta_s, &delta) != 0 || !(delta >= 0.0 && delta < 1.0)) {
        fprintf(stderr, "fedprof-bench-canary score: error: --beta must be in (0, 1), --delta in [0, 1)\n");
        return 2;
    }
    int rc = 1, m = 0, len = 0;
    fp_model_t *lm = NULL, *sm = NULL;
    fp_config_t cfg;
    char **items = NULL;
    canary_t *cs = NULL;
    int *order = NULL;
    int32_t *seq = NULL, *pos = NULL, *neg = NULL;
    fp_status st = fp_model_load(model, 1, threads, &lm, &cfg, &items);
    if (st != FP_OK)
        goto fail;
    const int32_t n_items = cfg.model.n_items;
    if (n_items < 2) {
        st = FP_FAIL(FP_ERR_INVALID, "%s: %d items: nothing to rank", model, n_items);
        goto fail;
    }
    if ((st = canary_read_truth(truth, items, n_items, &cs, &m, &len)) != FP_OK)
        goto fail;
    if (kp < 0)
        kp = m / 10;
    if (km < 0)
        km = m / 10;
    if (kp + km < 1 || kp + km > m) {
        st = FP_FAIL(FP_ERR_INVALID, "--k-plus %d + --k-minus %d must be in [1, %d canaries]", kp, km, m);
        goto fail;
    }
    /* The scoring copy: the full softmax as sampled softmax over every other item. */
    fp_model_config_t sc = cfg.model;
    sc.loss = FP_LOSS_SAMPLED_SOFTMAX;
    sc.n_neg = n_items - 1;
    sc.l2_emb = 0.0f;
    if ((st = fp_model_create(&sc, 1, threads, &sm)) != FP_OK)
        goto fail;
    if (fp_model_layout(sm)->total != fp_model_layout(lm)->total) {
        st = FP_FAIL(FP_ERR_INTERNAL, "scoring model layout differs from the trained model's");
        goto fail;
    }
    memcpy(fp_model_params(sm), fp_model_params(lm), fp_model_layout(lm)->total * sizeof(float));
    fp_model_destroy(lm);
    lm = NULL;
    const int T = sc.maxlen;
    seq = malloc((size_t)T * sizeof *seq);
    pos = malloc((size_t)T * sizeof *pos);
    neg = malloc((size_t)T * (size_t)sc.n_neg * sizeof *neg);
    order = malloc((size_t)m * sizeof *order);
    if (!seq || !pos || !neg || !order) {
        st = FP_FAIL(FP_ERR_NOMEM, "score buffers");
        goto fail;
    }
    int n_in = 0;
    double sum_in = 0.0, sum_out = 0.0;
    for (int i = 0; i < m; i++) {
        if ((st = canary_score_one(sm, cs[i].items, len, seq, pos, neg, &cs[i].score)) != FP_OK)
            goto fail;
        order[i] = i;
        n_in += cs[i].in;
        if (cs[i].in)
            sum_in += cs[i].score;
        else
            sum_out += cs[i].score;
    }
    canary_sort_base = cs;
    qsort(order, (size_t)m, sizeof *order, canary_qsort_cmp);
    const double auc = canary_auc(cs, order, m);
    const int v = canary_correct(cs, order, m, kp, km);
    double eps = 0.0;
    if ((st = fp_dp_audit_eps_lower_bound(m, kp + km, v, beta, delta, &eps)) != FP_OK)
        goto fail;
    /* the most this audit could ever show (every guess right): above it, an ε cannot be refuted */
    double ceiling = 0.0;
    if ((st = fp_dp_audit_eps_lower_bound(m, kp + km, kp + km, beta, delta, &ceiling)) != FP_OK)
        goto fail;
    const double chance = -log((double)n_items); /* an untrained model's mean log-softmax */
    json_object *o = json ? json_object_new_object() : NULL;
    json_object *info = json ? json_object_new_array() : NULL;
    if (json && (!o || !info)) {
        json_object_put(o);
        json_object_put(info);
        st = FP_FAIL(FP_ERR_NOMEM, "json");
        goto fail;
    }
    if (!json) {
        printf("canaries %d (%d included, %d left out), %d items each, model %s\n", m, n_in, m - n_in, len, model);
        printf("score = mean full-catalogue log-softmax of the next item over the training positions (chance %.3f)\n",
               chance);
        printf("mean score: included %.4f, left out %.4f; AUC %.4f\n", n_in ? sum_in / n_in : NAN,
               m > n_in ? sum_out / (m - n_in) : NAN, auc);
        printf("fixed in advance: K+ %d, K- %d: %d of %d right -> epsilon >= %.4f (confidence %.0f%%, delta %g)\n", kp,
               km, v, kp + km, eps, 100.0 * (1.0 - beta), delta);
        printf("the largest bound this audit can show (all %d right): %.4f\n", kp + km, ceiling);
        printf("for information (K+ = K- = K; not a bound when the best is picked afterwards):\n");
    }
    for (size_t k = 0; k < sizeof canary_info_k / sizeof canary_info_k[0]; k++) {
        int kk = canary_info_k[k];
        if (2 * kk > m)
            break;
        int vk = canary_correct(cs, order, m, kk, kk);
        double ek = 0.0;
        if ((st = fp_dp_audit_eps_lower_bound(m, 2 * kk, vk, beta, delta, &ek)) != FP_OK) {
            json_object_put(o);
            json_object_put(info);
            goto fail;
        }
        if (json) {
            json_object *e = json_object_new_object();
            if (!e || json_object_array_add(info, e) != 0) {
                json_object_put(e);
                json_object_put(o);
                json_object_put(info);
                st = FP_FAIL(FP_ERR_NOMEM, "json");
                goto fail;
            }
            json_object_object_add(e, "k", json_object_new_int(kk));
            json_object_object_add(e, "correct", json_object_new_int(vk));
            json_object_object_add(e, "guesses", json_object_new_int(2 * kk));
            json_object_object_add(e, "eps_lower", json_object_new_double(ek));
        } else {
            printf("  K = %3d: %3d of %3d right -> epsilon >= %.4f\n", kk, vk, 2 * kk, ek);
        }
    }
    if (json) {
        json_object_object_add(o, "canaries", json_object_new_int(m));
        json_object_object_add(o, "included", json_object_new_int(n_in));
        json_object_object_add(o, "len", json_object_new_int(len));
        json_object_object_add(o, "k_plus", json_object_new_int(kp));
        json_object_object_add(o, "k_minus", json_object_new_int(km));
        json_object_object_add(o, "guesses", json_object_new_int(kp + km));
        json_object_object_add(o, "correct", json_object_new_int(v));
        json_object_object_add(o, "beta", json_object_new_double(beta));
        json_object_object_add(o, "delta", json_object_new_double(delta));
        json_object_object_add(o, "eps_lower", json_object_new_double(eps));
        json_object_object_add(o, "eps_ceiling", json_object_new_double(ceiling));
        json_object_object_add(o, "auc", isfinite(auc) ? json_object_new_double(auc) : NULL);
        json_object_object_add(o, "mean_score_in", n_in ? json_object_new_double(sum_in / n_in) : NULL);
        json_object_object_add(o, "mean_score_out", m > n_in ? json_object_new_double(sum_out / (m - n_in)) : NULL);
        json_object_object_add(o, "chance_score", json_object_new_double(chance));
        json_object_object_add(o, "info", info);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
    }
    if (fflush(stdout) != 0) {
        st = FP_FAIL(FP_ERR_IO, "stdout: %s", strerror(errno));
        goto fail;
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "fedprof-bench-canary score: error: %s\n", fp_error_message());
done:
    if (cs)
        for (int i = 0; i < m; i++)
            free(cs[i].items);
    free(cs);
    free(order);
    free(seq);
    free(pos);
    free(neg);
    if (items)
        fp_model_items_free(items, cfg.model.n_items);
    fp_model_destroy(sm);
    fp_model_destroy(lm);
    return rc;
}

int main(int argc, char **argv)
{
    if (fp_threads_env_init(argv) != FP_OK) /* harmless: libgomp's default wait policy stays */
        fprintf(stderr, "fedprof-bench-canary: note: %s\n", fp_error_message());
    if (argc >= 2 && strcmp(argv[1], "plant") == 0)
        return canary_plant(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "score") == 0)
        return canary_score(argc - 2, argv + 2);
    FILE *f = argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) ? stdout : stderr;
    fprintf(f, "usage: fedprof-bench-canary plant|score [options]   (each takes --help)\n"
               "  plant: add canary users to a behaviour log, each in or out by a fair coin\n"
               "  score: membership scores of the canaries under a trained model, and the one-run\n"
               "         audit's epsilon lower bound (Steinke, Nasr, Jagielski 2023)\n");
    return f == stdout ? 0 : 2;
}
