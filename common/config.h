/* config: fedprof's YAML configuration (the files in configs/) read with libfyaml.
 *
 * Every key has a default (fp_config_defaults); a file overrides what it names; command-line
 * flags override the file. Unknown keys, wrong types and out-of-range values are errors that
 * name the file, the line and the key. See configs/centralized.yaml for every key. */
#ifndef FEDPROF_COMMON_CONFIG_H
#define FEDPROF_COMMON_CONFIG_H

#include <stdint.h>

#include "common/data.h"
#include "common/errors.h"
#include "common/model.h"

#define FP_CONFIG_MAX_BYTES (256u << 10) /* a larger config file is an error (FP_ERR_RANGE) */

/* What one privacy guarantee protects (the dp: section). Values are stored: never renumber; they
 * match proto PrivacyUnit and server/coordinator.h's fp_privacy_unit (client = 2 is the server's). */
typedef enum {
    FP_DP_UNIT_NONE = 0,   /* no differential privacy */
    FP_DP_UNIT_RECORD = 1, /* DP-SGD: one user's whole sequence is the unit */
} fp_dp_unit;

typedef struct {
    fp_model_config_t model; /* model.n_items is taken from the data, not the file */
    struct {
        int epochs;        /* default 200 */
        int batch;         /* default 128 */
        float lr;          /* default 1e-3 */
        float beta1;       /* default 0.9 */
        float beta2;       /* default 0.98 */
        float eps;         /* default 1e-8 */
        int eval_every;    /* epochs between evaluations on the validation item, 0 = never; default 20 */
        int patience;      /* stop after this many evaluations without a better valid NDCG, 0 = never; default 0 */
        uint64_t seed;     /* default 42 */
        int threads;       /* 0 = all cores; default 0 */
    } train;
    struct {
        int negatives;     /* sampled negatives per user, default 100 */
        int max_users;     /* users sampled when there are more, default 10000 */
        int k;             /* cut-off, default 10 */
        int full;          /* also full-catalogue metrics, default 1 */
        uint64_t seed;     /* default 2018 */
    } eval;
    struct {
        fp_data_format format; /* auto | text | csv, default auto */
    } data;
    struct {
        fp_dp_unit unit;   /* none | record, default none */
        float noise_multiplier; /* noise std / clip, default 1.0 (ignored when target_epsilon > 0) */
        float clip;             /* per-user L2 bound of the summed-loss gradient, default 1.0 */
        float delta;            /* of (epsilon, delta), default 1e-5 */
        float target_epsilon;   /* > 0: calibrate noise_multiplier for the planned steps; default 0 */
        uint64_t seed;          /* 0 (default): noise and sampling from OpenSSL; else a fixed seed,
                                   for tests only: no privacy */
    } dp;
} fp_config_t;

void fp_config_defaults(fp_config_t *c);
/* Apply a YAML file over *c, then validate the result. On any error *c is unchanged and the
 * message names "file:line: section.key". Errors: FP_ERR_NOT_FOUND / FP_ERR_IO (file),
 * FP_ERR_PARSE (YAML syntax, NUL bytes, invalid UTF-8, several documents), FP_ERR_INVALID
 * (unknown section or key, duplicate key, wrong type, aliases, tags), FP_ERR_RANGE (integer
 * overflow, value out of range, file over FP_CONFIG_MAX_BYTES). An empty file changes nothing.
 * Thread-safe (no shared state). */
fp_status fp_config_load(const char *path, fp_config_t *c);
/* Apply a YAML document held in memory (name is used in messages; may be NULL). yaml need not
 * be NUL-terminated; any bytes are safe. Same errors as fp_config_load. */
fp_status fp_config_load_string(const char *name, const char *yaml, size_t len, fp_config_t *c);
/* Check ranges of every field (also used after flags were applied); FP_ERR_RANGE naming the
 * key. model.n_items is only checked to be >= 0 (it comes from the data). */
fp_status fp_config_validate(const fp_config_t *c);
/* The config as one JSON object (malloc'd; the caller frees), and back. The JSON has the
 * sections and keys of the YAML file (model.n_items is not included). from_json applies the
 * keys it finds over *c, refuses unknown keys and wrong types, validates, and leaves *c
 * unchanged on error. */
fp_status fp_config_to_json(const fp_config_t *c, char **out);
fp_status fp_config_from_json(const char *json, fp_config_t *c);

#endif
