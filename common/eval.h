/* eval: leave-one-out evaluation of a trained encoder (SASRec protocol) and of the
 * most-popular baseline, on the same users and the same sampled candidates.
 *
 * Sampled: users with a held-out item are evaluated (max_users sampled uniformly without
 * replacement when there are more); the target is ranked among `negatives` items drawn
 * uniformly from the catalogue, never the target nor an item in the user's input history.
 * Full: the target is ranked among all items except the padding row and the user's input
 * history. The input is the training items (validation) or training items + the validation
 * item (test), the last maxlen of them. Deterministic in seed. */
#ifndef FEDPROF_COMMON_EVAL_H
#define FEDPROF_COMMON_EVAL_H

#include <stdint.h>

#include "common/data.h"
#include "common/errors.h"
#include "common/model.h"

typedef struct {
    int k;          /* cut-off K of HR@K and NDCG@K */
    int negatives;  /* sampled negatives per user */
    int max_users;  /* 0 = all */
    int full;       /* also rank over the full catalogue */
    int for_test;   /* 1: predict the test item; 0: the validation item */
    uint64_t seed;
} fp_eval_opts_t;

typedef struct {
    int64_t users;
    double hr, ndcg;           /* sampled */
    double full_hr, full_ndcg; /* full catalogue (0 when not asked) */
    double pop_hr, pop_ndcg, pop_full_hr, pop_full_ndcg; /* most-popular baseline, same candidates */
    double seconds;
} fp_eval_result_t;

/* Evaluate. popularity: [n_items + 1] training counts (fp_split_popularity). The model's
 * n_items must equal the split's dataset n_items. */
fp_status fp_eval_run(fp_model_t *m, const fp_split_t *s, const int64_t *popularity, const fp_eval_opts_t *o,
                      fp_eval_result_t *r);

#endif
