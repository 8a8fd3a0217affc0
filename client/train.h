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
} fp_train_report_t;

typedef struct {
    const char *out_dir;  /* writes out_dir/model.safetensors and out_dir/train_state.safetensors */
    int resume;           /* continue from out_dir's checkpoint */
    int skip_final_eval;  /* benchmarks: no final test evaluation */
} fp_train_opts_t;

/* Train on dataset d (which is modified only by remapping its items onto a resumed model's
 * vocabulary). Writes the checkpoint after evaluations, at least every 60 s, and at the end. */
fp_status fp_train_run(fp_config_t *cfg, fp_dataset_t *d, const fp_train_opts_t *o, fp_train_report_t *rep);

/* Paths inside an output directory (static buffer rules: the caller gives buf and its size). */
fp_status fp_train_model_path(const char *dir, char *buf, size_t n);

#endif
