/* train: centralised (single-partner) training of the profile encoder with checkpoints and
 * resume, and the evaluation report that ends it. Federated local training reuses it.
 * Not thread-safe; uses cfg->train.threads threads. */
#ifndef FEDPROF_CLIENT_TRAIN_H
#define FEDPROF_CLIENT_TRAIN_H

#include <stdint.h>

#include "common/config.h"
#include "common/data.h"
#include "common/errors.h"
#include "common/eval.h"

typedef struct {
    int epochs_run;       /* epochs finished in this call */
    int last_epoch;       /* epoch number reached (counting resumed ones) */
    int64_t steps;
    int64_t sequences;    /* training rows processed in this call */
    double train_seconds; /* training steps only (no evaluation, no checkpoint I/O) */
    double seconds;       /* the whole call */
    double final_loss;    /* mean loss of the last epoch */
    double seqs_per_s;
    fp_eval_result_t test; /* on the test item (zeroed when skip_final_eval) */
    /* record-level DP-SGD (cfg->dp.unit == record; all zero otherwise) */
    int dp;
    double epsilon;          /* spent by the dp_steps steps at delta (+inf without noise) */
    double delta;
    double noise_multiplier; /* noise std / clip as added */
    double noise_accounted;  /* the multiplier the accountant uses (the grid widens the sensitivity) */
    double sampling_rate;    /* q = train.batch / trainable users */
    double clip;
    int64_t dp_steps;        /* DP steps composed, resumed ones included */
    double users_per_step;   /* mean Poisson sample size in the last epoch */
    double clipped_fraction; /* of the users sampled in the last epoch, those whose gradient was scaled */
} fp_train_report_t;

typedef struct {
    const char *out_dir;  /* writes out_dir/model.safetensors and out_dir/train_state.safetensors */
    int resume;           /* continue from out_dir's checkpoint */
    int skip_final_eval;  /* benchmarks: no final test evaluation */
} fp_train_opts_t;

/* Train on dataset d (which is modified only by remapping its items onto a resumed model's
 * vocabulary). Writes the checkpoint after evaluations, at least every 60 s, and at the end.
 * With cfg->dp.unit == record, every step is a DP-SGD step (client/dpsgd.h) and an epoch is
 * ceil(users / train.batch) steps; the accountant composes the steps actually taken (a resumed
 * run continues the count; resuming a non-DP checkpoint with DP, or with other DP parameters, is
 * refused). train.patience must then be 0: early stopping on validation data is a data-dependent
 * choice outside the guarantee. Validation and test metrics are computed on held-out items and
 * are not covered by the guarantee (they are for the data owner). */
fp_status fp_train_run(fp_config_t *cfg, fp_dataset_t *d, const fp_train_opts_t *o, fp_train_report_t *rep);

/* Paths inside an output directory (static buffer rules: the caller gives buf and its size). */
fp_status fp_train_model_path(const char *dir, char *buf, size_t n);

#endif
