/* config: fedprof's YAML configuration (the files in configs/) read with libfyaml.
 *
 * Every key has a default (fp_config_defaults); a file overrides what it names; command-line
 * flags override the file. Unknown keys, wrong types and out-of-range values are errors that
 * name the file, the line and the key. See configs/centralized.yaml for every training key,
 * configs/server.yaml for server: and federation:, configs/client.yaml for client:. */
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

/* Privacy unit a federation asks its clients for (the federation: section); proto PrivacyUnit
 * numbering. Values are stored: never renumber. */
typedef enum {
    FP_FED_UNIT_NONE = 0,   /* no differential privacy */
    FP_FED_UNIT_RECORD = 1, /* DP-SGD inside each client: one user's sequence is the unit */
    FP_FED_UNIT_CLIENT = 2, /* each client clips its whole update and adds noise: a partner is the unit */
} fp_fed_unit;

/* Longest string value (bytes, without the NUL). A string key takes any YAML scalar as its text
 * (`listen: 7070` is "7070"; `ca:` or `ca: ~` is ""); it must be one line without control
 * characters. Sequences and mappings are refused. In quotes, only the escapes '' (single) and
 * \\ \" \/ (double) are understood. */
#define FP_CONFIG_STR_MAX 1024

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
    /* The coordinator (fedprof-server; configs/server.yaml). Strings are "" when unset. */
    struct {
        char listen[FP_CONFIG_STR_MAX + 1];         /* default "0.0.0.0:7070" */
        char checkpoint_dir[FP_CONFIG_STR_MAX + 1]; /* default "runs/federation" */
        char ca[FP_CONFIG_STR_MAX + 1];             /* the federation CA (PEM); TLS needs ca, cert, key */
        char cert[FP_CONFIG_STR_MAX + 1];           /* the coordinator's certificate (PEM) */
        char key[FP_CONFIG_STR_MAX + 1];            /* its private key (PEM) */
        int insecure;                               /* plaintext, loopback only; default 0 */
        char federation_id[FP_CONFIG_STR_MAX + 1];  /* default "fedprof" */
        int n_items;                 /* the shared item catalogue size (ids 1..n_items), default 0 = required */
        int rounds;                  /* committed rounds, default 10 */
        int clients_per_round;       /* updates wanted per round, default 2 */
        int min_clients;             /* live members needed to start a round, default 2 */
        int min_updates;             /* updates needed to commit a round; 0 (default) = min_clients */
        float over_selection;        /* select clients_per_round x this members, >= 1, default 1 */
        float round_timeout_s;       /* round deadline, default 600 */
        float member_timeout_s;      /* a member silent longer is not live, default 60 */
        int uniform_weights;         /* 0 (default): weight updates by their example counts */
        char strategy[FP_CONFIG_STR_MAX + 1]; /* fedavg (default) | fedavgm | fedadagrad | fedadam |
                                                 fedyogi | median | trimmed_mean */
        float server_lr;             /* 0 (default): the strategy's own (1, adaptive ones 0.01) */
        float momentum;              /* FedAvgM, default 0.9 */
        float beta1, beta2;          /* adaptive, defaults 0.9 / 0.99 */
        float tau;                   /* adaptive, default 1e-3 */
        float trim_fraction;         /* trimmed mean, default 0.1 */
        uint64_t init_seed;          /* seed of the initial global model, default 42 */
        uint64_t select_seed;        /* 0 (default): client selection seeded from the OS */
        int max_concurrent_pushes;   /* updates received at once (a receive buffer each), default 1 */
        int max_concurrent_pulls;    /* models streamed at once (~2.4 MB of buffers each), default 8 */
        int spill_updates;           /* receive buffers in unlinked files of checkpoint_dir: -1 (default)
                                      * when the model is >= 32 MiB, 0 never, 1 always (mean strategies) */
    } server;
    /* What every selected client is told to do each round (the federation: section). */
    struct {
        int local_epochs;            /* passes over the client's users per round, default 1 */
        int max_steps;               /* cap on local steps per round, 0 (default) = none */
        float fedprox_mu;            /* FedProx proximal coefficient, default 0 */
        fp_fed_unit unit;            /* none (default) | record | client */
        float clip;                  /* L2 clip of the update (client) or of each user (record); 0 = none */
        float noise_multiplier;      /* noise std / clip, default 1.0 (unit record or client) */
        float delta;                 /* of (epsilon, delta), default 1e-5 */
    } federation;
    /* A partner (fedprof-client join; configs/client.yaml). */
    struct {
        char server[FP_CONFIG_STR_MAX + 1];     /* coordinator "host:port", default "" (required) */
        char ca[FP_CONFIG_STR_MAX + 1];         /* the federation CA (PEM) */
        char cert[FP_CONFIG_STR_MAX + 1];       /* this partner's certificate (PEM) */
        char key[FP_CONFIG_STR_MAX + 1];        /* its private key (PEM) */
        int insecure;                           /* plaintext to a loopback coordinator; default 0 */
        char name[FP_CONFIG_STR_MAX + 1];       /* identity when insecure, default "" */
        char out[FP_CONFIG_STR_MAX + 1];        /* where the final model goes, default "runs/joined" */
        char ledger_dir[FP_CONFIG_STR_MAX + 1]; /* privacy ledger and key, default "" = out */
        float budget_epsilon;                   /* refuse rounds past this epsilon; 0 (default) = not set: a
                                                   private federation is then refused */
        float give_up_s;                        /* 0 (default): retry forever */
    } client;
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
 * key. model.n_items is only checked to be >= 0 (it comes from the data); server.n_items may be
 * 0 (unset: fedprof-server requires it). Strings must be terminated within their array and free
 * of control characters; server.strategy must be one of the names listed above. */
fp_status fp_config_validate(const fp_config_t *c);

/* Set a named-choice key (model.loss, model.block, data.format, dp.unit, federation.unit) from its
 * name, as a config file would (for command-line flags). Errors: FP_ERR_INVALID naming the key and
 * the names it takes. */
fp_status fp_config_set_enum(fp_config_t *c, const char *section, const char *key, const char *name);
/* The same lookup without a config: *value = the key's enum value for name (e.g. FP_FORMAT_CSV
 * for data.format "csv"). Same errors. */
fp_status fp_config_enum_value(const char *section, const char *key, const char *name, int *value);
/* The config as one JSON object (malloc'd; the caller frees), and back. The JSON holds only the
 * sections that travel between machines (in checkpoints, from the coordinator to its clients):
 * model, train, eval, data, dp and federation, with the keys of the YAML file (model.n_items is
 * not included); dp and federation are left out while they hold their defaults. server and
 * client are never written: they hold this machine's file paths, addresses and keys. from_json
 * applies the keys it finds over *c (sections it does not find keep *c's values), refuses
 * unknown keys and wrong types, and refuses server and client as unknown sections, so that a
 * config from elsewhere cannot set local paths; it validates, and leaves *c unchanged on error. */
fp_status fp_config_to_json(const fp_config_t *c, char **out);
fp_status fp_config_from_json(const char *json, fp_config_t *c);

#endif
