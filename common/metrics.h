/* metrics: ranking metrics for next-item prediction.
 *
 * Rank convention (pessimistic on ties): rank = #{others > target} + #{others == target}
 * (0 = the target is first). A NaN target score ranks last. This keeps a degenerate model
 * (all scores equal) from looking good. */
#ifndef FEDPROF_COMMON_METRICS_H
#define FEDPROF_COMMON_METRICS_H

#include <stdint.h>

/* Rank of `target` among n other scores (0 when n <= 0). NaN others never beat the target.
 * Pure; thread-safe. */
int64_t fp_metrics_rank(float target, const float *others, int64_t n);

/* Rank of scores[target_idx] among all of scores[0..n) except itself and except the
 * indices listed in exclude[0..n_exclude) (e.g. padding and the user's history).
 * Duplicates in exclude, the target itself and indices outside [0, n) are ignored there.
 * A NaN target ranks last among the remaining candidates. Returns -1 when scores is NULL,
 * n <= 0 or target_idx is outside [0, n) (a caller bug). Thread-safe; may allocate a
 * temporary n-bit bitmap when n_exclude is large. */
int64_t fp_metrics_rank_excluding(const float *scores, int64_t n, int64_t target_idx,
                                  const int32_t *exclude, int64_t n_exclude);

/* Accumulates HR@K and NDCG@K (NDCG = 1 / log2(rank + 2) when rank < K) over users. */
typedef struct {
    int k;
    int64_t n;
    double hr_sum, ndcg_sum;
} fp_metrics_t;

void fp_metrics_init(fp_metrics_t *m, int k);
/* Count one user; a negative rank (see fp_metrics_rank_excluding) counts as a miss. */
void fp_metrics_add(fp_metrics_t *m, int64_t rank);
double fp_metrics_hr(const fp_metrics_t *m);   /* 0 when n == 0 */
double fp_metrics_ndcg(const fp_metrics_t *m); /* 0 when n == 0 */

#endif
