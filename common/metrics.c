/* metrics: ranks of a target item among scored candidates, and HR@K / NDCG@K accumulators.
 *
 * Ties count against the target (see metrics.h) and NaN scores are never "better" than the
 * target, while a NaN target ranks last: a broken model can only look worse, never better. */
#include "common/metrics.h"

#include <math.h>
#include <stdlib.h>

/* Exclusion lists longer than this are de-duplicated with a bitmap instead of a quadratic scan. */
#define FP_METRICS_QUADRATIC_MAX 256

/* Does `x` beat or tie target t? NaN compares false, so a NaN "other" never counts. */
static int beats_or_ties(float x, float t) { return x >= t; }

int64_t fp_metrics_rank(float target, const float *others, int64_t n)
{
    if (n <= 0 || !others)
        return 0;
    if (isnan(target))
        return n;
    int64_t r = 0;
    for (int64_t i = 0; i < n; i++)
        r += beats_or_ties(others[i], target);
    return r;
}

/* Number of distinct valid indices j in exclude[] (j != target, 0 <= j < n) whose score beats or
 * ties the target (or all of them when `all`): exactly the ones counted by the full scan that
 * must be taken back. */
static int64_t excluded_hits(const float *scores, int64_t n, int64_t target_idx, float t, int all,
                             const int32_t *exclude, int64_t n_exclude)
{
    unsigned char *seen = NULL;
    if (n_exclude > FP_METRICS_QUADRATIC_MAX)
        seen = calloc((size_t)n / 8 + 1, 1); /* on failure we fall back to the quadratic scan */
    int64_t hits = 0;
    for (int64_t p = 0; p < n_exclude; p++) {
        int64_t j = exclude[p];
        if (j < 0 || j >= n || j == target_idx || (!all && !beats_or_ties(scores[j], t)))
            continue;
        if (seen) {
            unsigned char bit = (unsigned char)(1u << (j & 7));
            if (seen[j >> 3] & bit)
                continue;
            seen[j >> 3] |= bit;
        } else {
            int dup = 0;
            for (int64_t q = 0; q < p && !dup; q++)
                dup = exclude[q] == exclude[p];
            if (dup)
                continue;
        }
        hits++;
    }
    free(seen);
    return hits;
}

int64_t fp_metrics_rank_excluding(const float *scores, int64_t n, int64_t target_idx, const int32_t *exclude,
                                  int64_t n_exclude)
{
    if (!scores || n <= 0 || target_idx < 0 || target_idx >= n)
        return -1;
    if (!exclude || n_exclude < 0)
        n_exclude = 0;
    float t = scores[target_idx];
    if (isnan(t)) /* last among the candidates that remain */
        return n - 1 - (n_exclude ? excluded_hits(scores, n, target_idx, t, 1, exclude, n_exclude) : 0);
    int64_t r = 0;
    for (int64_t i = 0; i < n; i++)
        r += beats_or_ties(scores[i], t);
    r -= 1; /* the target ties itself */
    if (n_exclude)
        r -= excluded_hits(scores, n, target_idx, t, 0, exclude, n_exclude);
    return r;
}

void fp_metrics_init(fp_metrics_t *m, int k)
{
    m->k = k;
    m->n = 0;
    m->hr_sum = 0.0;
    m->ndcg_sum = 0.0;
}

void fp_metrics_add(fp_metrics_t *m, int64_t rank)
{
    m->n++;
    if (rank >= 0 && rank < m->k) {
        m->hr_sum += 1.0;
        m->ndcg_sum += 1.0 / log2((double)rank + 2.0);
    }
}

double fp_metrics_hr(const fp_metrics_t *m) { return m->n ? m->hr_sum / (double)m->n : 0.0; }

double fp_metrics_ndcg(const fp_metrics_t *m) { return m->n ? m->ndcg_sum / (double)m->n : 0.0; }
