/* fedprof-client: the partner-side command line.
 *   train      centralised training on one partner's data (also the local trainer of a federation)
 *   eval       leave-one-out evaluation of a saved model on a data file
 *   embed      profile vectors for every user of a data file (.npy + ids beside)
 *   recommend  top-K items for one user
 *   synth      write the embedded default (synthetic) behaviour data set
 *   join       take part in a federation (client/join) */
#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/cli.h"
#include "client/join.h"
#include "client/train.h"
#include "common/config.h"
#include "common/data.h"
#include "common/eval.h"
#include "common/kernels.h"
#include "common/log.h"
#include "common/model_io.h"
#include "common/npy.h"
#include "common/params.h"
#include "common/threads_env.h"

static int fail(const char *what)
{
    fprintf(stderr, "fedprof-client %s: error: %s\n", what, fp_error_message());
    return 1;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0.0;
    return (double)ru.ru_maxrss / 1024.0;
}

static int resolve_threads(int t)
{
    if (t > 0)
        return t;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)(n > 64 ? 64 : n) : 1;
}

static void print_json(json_object *o)
{
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

static void add_eval_json(json_object *o, int k, const fp_eval_result_t *r, int full)
{
    char key[48];
#define ADD(fmt, v)                                                                                                   \
    do {                                                                                                              \
        snprintf(key, sizeof key, fmt, k);                                                                            \
        json_object_object_add(o, key, json_object_new_double(v));                                                    \
    } while (0)
    ADD("hr@%d", r->hr);
    ADD("ndcg@%d", r->ndcg);
    ADD("popularity_hr@%d", r->pop_hr);
    ADD("popularity_ndcg@%d", r->pop_ndcg);
    if (full) {
        ADD("full_hr@%d", r->full_hr);
        ADD("full_ndcg@%d", r->full_ndcg);
        ADD("popularity_full_hr@%d", r->pop_full_hr);
        ADD("popularity_full_ndcg@%d", r->pop_full_ndcg);
    }
#undef ADD
    json_object_object_add(o, "eval_users", json_object_new_int64(r->users));
}

/* --format NAME, checked against the config's own names for data.format (config.c). */
static fp_status parse_format(const char *s, fp_data_format *f)
{
    if (!s)
        return FP_OK;
    int v;
    if (fp_config_enum_value("data", "format", s, &v) != FP_OK)
        return FP_FAIL(FP_ERR_INVALID, "--format: %s", fp_error_message());
    *f = (fp_data_format)v;
    return FP_OK;
}

/* Parses a command's flags, prints its help, and checks its required flags (space-separated names
 * of string options). Returns -1 to go on, else the exit code to return. */
static int cmd_begin(const char *cmd, int argc, char **argv, const fp_opt_t *opts, const char *usage,
                     const char *required)
{
    if (fp_cli_parse(argc, argv, opts) != FP_OK)
        return fail(cmd);
    for (const fp_opt_t *o = opts; o->name; o++)
        if (!strcmp(o->name, "help") && *(int *)o->dest) {
            fputs(usage, stdout);
            fp_cli_print_help(opts);
            return 0;
        }
    for (const fp_opt_t *o = opts; o->name; o++) {
        size_t n = strlen(o->name);
        const char *r = strstr(required, o->name);
        int is_required = r && (r == required || r[-1] == ' ') && (r[n] == ' ' || r[n] == '\0');
        if (is_required && o->kind == FP_OPT_STR && !*(const char **)o->dest) {
            fprintf(stderr, "fedprof-client %s: error: --%s is required (see --help)\n", cmd, o->name);
            return 2;
        }
    }
    return -1;
}

/* --device: choose the compute back-end before any model exists (kernels.h). One log line says
 * which, and why the CPU when auto found no GPU. Returns 0, or the exit code. */
static int select_device(const char *cmd, const char *dev)
{
    fp_k_device want = FP_K_DEVICE_AUTO, got;
    if (dev && fp_k_device_parse(dev, &want) != FP_OK) {
        fprintf(stderr, "fedprof-client %s: error: --device: %s\n", cmd, fp_error_message());
        return 2;
    }
    char info[320];
    if (fp_k_device_select(want, &got, info, sizeof info) != FP_OK) {
        fprintf(stderr, "fedprof-client %s: error: %s\n", cmd, fp_error_message());
        return 1;
    }
    fp_log_info("device: %s", info);
    return 0;
}

/* train's --FLAG NAME for a named-choice config key (config.c holds the names); 0, or 2 after
 * saying what is wrong (a usage error). */
static int set_choice(fp_config_t *cfg, const char *flag, const char *section, const char *key, const char *name)
{
    if (name && fp_config_set_enum(cfg, section, key, name) != FP_OK) {
        fprintf(stderr, "fedprof-client train: error: --%s: %s\n", flag, fp_error_message());
        return 2;
    }
    return 0;
}

/* ---- train ---- */
static int cmd_train(int argc, char **argv)
{
    const char *data = NULL, *config = NULL, *out = NULL, *loss = NULL, *format = NULL, *block = NULL,
               *device = NULL;
    int resume = 0, json = 0, quiet = 0, help = 0;
    int epochs = -1, threads = -1, dim = -1, blocks = -1, heads = -1, maxlen = -1, batch = -1, eval_every = -1,
        negatives = -1, eval_users = -1, patience = -1, no_full = 0;
    float dropout = -1, attn_dropout = -1, lr = -1, l2 = -1, dp_eps = -1, dp_noise = -1, dp_clip = -1, dp_delta = -1;
    int no_dp = 0;
    uint64_t seed = 0;
    int seed_set = 0;
    fp_opt_t opts[] = {
        {"data", FP_OPT_STR, &data, 0, 0, NULL, "behaviour log: 'user item' text or CSV with a header (required)"},
        {"config", FP_OPT_STR, &config, 0, 0, NULL, "YAML config (default: built-in defaults = configs/centralized.yaml)"},
        {"out", FP_OPT_STR, &out, 0, 0, NULL, "output directory for model.safetensors (required)"},
        {"resume", FP_OPT_FLAG, &resume, 0, 0, NULL, "continue from the checkpoint in --out"},
        {"epochs", FP_OPT_INT, &epochs, 0, 1e7, NULL, "total epochs (train.epochs)"},
        {"threads", FP_OPT_INT, &threads, 1, 256, NULL, "compute threads (train.threads; default all cores)"},
        {"device", FP_OPT_STR, &device, 0, 0, NULL,
         "auto | cpu | cuda: where to train (default auto: the GPU when there is one)"},
        {"dim", FP_OPT_INT, &dim, 1, 4096, NULL, "hidden size (model.dim)"},
        {"blocks", FP_OPT_INT, &blocks, 1, 64, NULL, "Transformer blocks (model.blocks)"},
        {"heads", FP_OPT_INT, &heads, 1, 64, NULL, "attention heads (model.heads)"},
        {"maxlen", FP_OPT_INT, &maxlen, 1, 4096, NULL, "sequence length (model.maxlen)"},
        {"dropout", FP_OPT_FLOAT, &dropout, 0, 0.99, NULL, "dropout rate (model.dropout)"},
        {"attn-dropout", FP_OPT_FLOAT, &attn_dropout, 0, 0.99, NULL,
         "dropout on attention probabilities (model.attn_dropout)"},
        {"block", FP_OPT_STR, &block, 0, 0, NULL, "prenorm | sasrec: block wiring (model.block)"},
        {"loss", FP_OPT_STR, &loss, 0, 0, NULL, "bce | sampled_softmax (model.loss)"},
        {"negatives", FP_OPT_INT, &negatives, 1, 100000, NULL, "negatives per position (model.negatives)"},
        {"l2-emb", FP_OPT_FLOAT, &l2, 0, 1e3, NULL, "L2 on item embeddings (model.l2_emb)"},
        {"dp-epsilon", FP_OPT_FLOAT, &dp_eps, 1e-6, 1e6, NULL,
         "DP-SGD: calibrate the noise to this epsilon for the planned epochs (dp.unit = record, dp.target_epsilon)"},
        {"dp-noise", FP_OPT_FLOAT, &dp_noise, 0, 1e4, NULL,
         "DP-SGD with this noise multiplier, not calibrated (dp.unit = record, dp.noise_multiplier)"},
        {"dp-clip", FP_OPT_FLOAT, &dp_clip, 1e-30, 1e30, NULL, "DP-SGD per-user L2 clip (dp.clip)"},
        {"dp-delta", FP_OPT_FLOAT, &dp_delta, 1e-30, 0.5, NULL, "DP-SGD delta (dp.delta)"},
        {"no-dp", FP_OPT_FLAG, &no_dp, 0, 0, NULL, "train without DP whatever the config says (dp.unit = none)"},
        {"batch", FP_OPT_INT, &batch, 1, 65536, NULL, "batch size (train.batch)"},
        {"lr", FP_OPT_FLOAT, &lr, 1e-12, 10, NULL, "Adam learning rate (train.lr)"},
        {"eval-every", FP_OPT_INT, &eval_every, 0, 1e7, NULL, "validate every N epochs, 0 = never (train.eval_every)"},
        {"patience", FP_OPT_INT, &patience, 0, 1e7, NULL, "early stop after N evaluations without gain (train.patience)"},
        {"seed", FP_OPT_U64, &seed, 0, 0, &seed_set, "random seed (train.seed)"},
        {"eval-users", FP_OPT_INT, &eval_users, 0, 1e9, NULL, "users sampled for evaluation, 0 = all (eval.max_users)"},
        {"no-full", FP_OPT_FLAG, &no_full, 0, 0, NULL, "skip full-catalogue metrics (eval.full = false)"},
        {"format", FP_OPT_STR, &format, 0, 0, NULL, "auto | text | csv (data.format)"},
        {"json", FP_OPT_FLAG, &json, 0, 0, NULL, "end with one JSON line of results on stdout"},
        {"quiet", FP_OPT_FLAG, &quiet, 0, 0, NULL, "no progress, only warnings and errors"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    int rc0 = cmd_begin("train", argc, argv, opts,
                        "usage: fedprof-client train --data FILE --out DIR [--config FILE] [options]\n\n"
               "Trains the profile encoder on one partner's data, evaluates it (leave-one-out, SASRec protocol)\n"
               "and writes DIR/model.safetensors (+ DIR/train_state.safetensors for --resume).\n\n",
                        "data out");
    if (rc0 >= 0)
        return rc0;
    fp_log_set_quiet(quiet);
    fp_config_t cfg;
    fp_config_defaults(&cfg);
    if (config && fp_config_load(config, &cfg) != FP_OK)
        return fail("train");
    if (epochs >= 0) cfg.train.epochs = epochs;
    if (threads > 0) cfg.train.threads = threads;
    if (dim > 0) cfg.model.dim = dim;
    if (blocks > 0) cfg.model.blocks = blocks;
    if (heads > 0) cfg.model.heads = heads;
    if (maxlen > 0) cfg.model.maxlen = maxlen;
    if (dropout >= 0) cfg.model.dropout = dropout;
    if (attn_dropout >= 0) cfg.model.attn_dropout = attn_dropout;
    if (negatives > 0) cfg.model.n_neg = negatives;
    if (l2 >= 0) cfg.model.l2_emb = l2;
    if (batch > 0) cfg.train.batch = batch;
    if (lr > 0) cfg.train.lr = lr;
    if (eval_every >= 0) cfg.train.eval_every = eval_every;
    if (patience >= 0) cfg.train.patience = patience;
    if (seed_set) cfg.train.seed = seed;
    if (eval_users >= 0) cfg.eval.max_users = eval_users;
    if (no_full) cfg.eval.full = 0;
    if (dp_eps > 0) {
        cfg.dp.unit = FP_DP_UNIT_RECORD;
        cfg.dp.target_epsilon = dp_eps;
    }
    if (dp_noise >= 0) {
        if (dp_eps > 0) {
            fprintf(stderr, "fedprof-client train: error: --dp-epsilon and --dp-noise exclude each other\n");
            return 2;
        }
        cfg.dp.unit = FP_DP_UNIT_RECORD;
        cfg.dp.noise_multiplier = dp_noise;
        cfg.dp.target_epsilon = 0.0f;
    }
    if (dp_clip > 0) cfg.dp.clip = dp_clip;
    if (dp_delta > 0) cfg.dp.delta = dp_delta;
    if (no_dp) cfg.dp.unit = FP_DP_UNIT_NONE;
    if (set_choice(&cfg, "loss", "model", "loss", loss) || set_choice(&cfg, "block", "model", "block", block))
        return 2;
    if (cfg.model.loss == FP_LOSS_BCE && negatives <= 0)
        cfg.model.n_neg = 1;
    if (parse_format(format, &cfg.data.format) != FP_OK)
        return fail("train");
    cfg.train.threads = resolve_threads(cfg.train.threads);
    cfg.model.n_items = 1; /* placeholder until the data is read; validated again then */
    if (fp_config_validate(&cfg) != FP_OK)
        return fail("train");

    int drc = select_device("train", device);
    if (drc)
        return drc;
    fp_dataset_t *d = NULL;
    double t0 = fp_now();
    if (fp_data_load(data, cfg.data.format, &d) != FP_OK)
        return fail("train");
    fp_log_info("read %s: %d users, %d items, %" PRId64 " interactions (%.2fs)", data, d->n_users, d->n_items,
                d->n_interactions, fp_now() - t0);
    fp_train_opts_t to = {out, resume, 0};
    fp_train_report_t rep;
    fp_status st = fp_train_run(&cfg, d, &to, &rep);
    fp_dataset_free(d);
    if (st != FP_OK)
        return fail("train");
    char path[4096];
    fp_train_model_path(out, path, sizeof path);
    fp_log_info("wrote %s (%d epochs, %.1fs, %.0f sequences/s)", path, rep.last_epoch, rep.seconds, rep.seqs_per_s);
    if (json) {
        json_object *o = json_object_new_object();
        add_eval_json(o, cfg.eval.k, &rep.test, cfg.eval.full);
        json_object_object_add(o, "epochs", json_object_new_int(rep.last_epoch));
        json_object_object_add(o, "epochs_run", json_object_new_int(rep.epochs_run));
        json_object_object_add(o, "steps", json_object_new_int64(rep.steps));
        json_object_object_add(o, "final_loss", json_object_new_double(rep.final_loss));
        json_object_object_add(o, "seconds", json_object_new_double(rep.seconds));
        json_object_object_add(o, "train_seconds", json_object_new_double(rep.train_seconds));
        json_object_object_add(o, "seqs_per_s", json_object_new_double(rep.seqs_per_s));
        json_object_object_add(o, "threads", json_object_new_int(cfg.train.threads));
        json_object_object_add(o, "omp_wait", json_object_new_string(fp_threads_env_describe()));
        json_object_object_add(o, "peak_rss_mb", json_object_new_double(peak_rss_mb()));
        json_object_object_add(o, "model", json_object_new_string(path));
        if (rep.dp) {
            /* epsilon is +inf without noise: JSON has no infinity, so null */
            json_object_object_add(o, "dp", json_object_new_string("record"));
            json_object_object_add(o, "epsilon", isfinite(rep.epsilon) ? json_object_new_double(rep.epsilon) : NULL);
            json_object_object_add(o, "delta", json_object_new_double(rep.delta));
            json_object_object_add(o, "noise_multiplier", json_object_new_double(rep.noise_multiplier));
            json_object_object_add(o, "noise_multiplier_accounted", json_object_new_double(rep.noise_accounted));
            json_object_object_add(o, "sampling_rate", json_object_new_double(rep.sampling_rate));
            json_object_object_add(o, "clip", json_object_new_double(rep.clip));
            json_object_object_add(o, "dp_steps", json_object_new_int64(rep.dp_steps));
            json_object_object_add(o, "users_per_step", json_object_new_double(rep.users_per_step));
            json_object_object_add(o, "clipped_fraction", json_object_new_double(rep.clipped_fraction));
        }
        print_json(o);
    }
    return 0;
}

/* Load a model and a data file mapped onto the model's item vocabulary. */
static int load_model_and_data(const char *cmd, const char *model, const char *data, const char *format, int threads,
                               int max_batch, fp_model_t **m, fp_config_t *cfg, char ***items, fp_dataset_t **d)
{
    fp_data_format fmt = FP_FORMAT_AUTO;
    if (parse_format(format, &fmt) != FP_OK || fp_model_load(model, max_batch, threads, m, cfg, items) != FP_OK)
        return fail(cmd);
    if (fp_data_load(data, fmt, d) != FP_OK) {
        fp_model_destroy(*m);
        fp_model_items_free(*items, cfg->model.n_items);
        return fail(cmd);
    }
    int64_t dropped = 0;
    if (fp_data_remap_items(*d, *items, cfg->model.n_items, &dropped) != FP_OK) {
        fp_model_destroy(*m);
        fp_model_items_free(*items, cfg->model.n_items);
        fp_dataset_free(*d);
        return fail(cmd);
    }
    if (dropped > 0)
        fp_log_warn("%s: %" PRId64 " interactions name items the model does not know; they are ignored", data, dropped);
    return 0;
}

/* ---- eval ---- */
static int cmd_eval(int argc, char **argv)
{
    const char *model = NULL, *data = NULL, *format = NULL;
    int json = 0, quiet = 0, help = 0, threads = 0, eval_users = -1, negatives = -1, valid = 0, no_full = 0;
    fp_opt_t opts[] = {
        {"model", FP_OPT_STR, &model, 0, 0, NULL, "model.safetensors (required)"},
        {"data", FP_OPT_STR, &data, 0, 0, NULL, "behaviour log to evaluate on (required)"},
        {"format", FP_OPT_STR, &format, 0, 0, NULL, "auto | text | csv"},
        {"valid", FP_OPT_FLAG, &valid, 0, 0, NULL, "predict the validation item instead of the test item"},
        {"eval-users", FP_OPT_INT, &eval_users, 0, 1e9, NULL, "users sampled, 0 = all (default from the model's config)"},
        {"negatives", FP_OPT_INT, &negatives, 1, 1e6, NULL, "sampled negatives per user (default 100)"},
        {"no-full", FP_OPT_FLAG, &no_full, 0, 0, NULL, "skip full-catalogue metrics"},
        {"threads", FP_OPT_INT, &threads, 1, 256, NULL, "compute threads (default all cores)"},
        {"json", FP_OPT_FLAG, &json, 0, 0, NULL, "print one JSON line of results"},
        {"quiet", FP_OPT_FLAG, &quiet, 0, 0, NULL, "no progress"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    int rc0 = cmd_begin("eval", argc, argv, opts,
                        "usage: fedprof-client eval --model FILE --data FILE [options]\n\n"
               "Leave-one-out HR@K / NDCG@K with sampled negatives and over the full catalogue, beside the\n"
               "most-popular baseline.\n\n",
                        "model data");
    if (rc0 >= 0)
        return rc0;
    fp_log_set_quiet(quiet);
    fp_model_t *m = NULL;
    fp_config_t cfg;
    char **items = NULL;
    fp_dataset_t *d = NULL;
    if (load_model_and_data("eval", model, data, format, resolve_threads(threads), 128, &m, &cfg, &items, &d))
        return 1;
    fp_split_t split = {0};
    int64_t *pop = NULL;
    fp_eval_result_t r;
    fp_eval_opts_t eo = {cfg.eval.k, negatives > 0 ? negatives : cfg.eval.negatives,
                         eval_users >= 0 ? eval_users : cfg.eval.max_users, !no_full, !valid, cfg.eval.seed};
    int rc = 0;
    if (fp_split_loo(d, &split) != FP_OK || fp_split_popularity(&split, &pop) != FP_OK ||
        fp_eval_run(m, &split, pop, &eo, &r) != FP_OK)
        rc = fail("eval");
    if (rc == 0) {
        const int k = eo.k;
        printf("%s on %" PRId64 " users: HR@%d %.4f NDCG@%d %.4f", valid ? "valid" : "test", r.users, k, r.hr, k,
               r.ndcg);
        if (eo.full)
            printf(" | full HR@%d %.4f NDCG@%d %.4f", k, r.full_hr, k, r.full_ndcg);
        printf(" | popularity HR@%d %.4f NDCG@%d %.4f\n", k, r.pop_hr, k, r.pop_ndcg);
        if (json) {
            json_object *o = json_object_new_object();
            add_eval_json(o, k, &r, eo.full);
            json_object_object_add(o, "seconds", json_object_new_double(r.seconds));
            print_json(o);
        }
    }
    free(pop);
    fp_split_free(&split);
    fp_dataset_free(d);
    fp_model_items_free(items, cfg.model.n_items);
    fp_model_destroy(m);
    return rc;
}

/* The user's whole history (every item), right-aligned, for serving profiles. */
static void full_history(const fp_dataset_t *d, int32_t u, int T, int32_t *row)
{
    int64_t b = d->offsets[u], e = d->offsets[u + 1];
    for (int t = 0; t < T; t++)
        row[t] = 0;
    int64_t n = e - b < T ? e - b : T;
    for (int64_t i = 0; i < n; i++)
        row[T - n + i] = d->items[e - n + i];
}

static fp_status write_ids(const char *path, const fp_dataset_t *d)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return FP_FAIL(FP_ERR_IO, "cannot write %s", path);
    for (int32_t u = 0; u < d->n_users; u++) {
        if (d->user_names)
            fprintf(f, "%s\n", d->user_names[u]);
        else
            fprintf(f, "u%d\n", u);
    }
    if (fflush(f) != 0 || ferror(f)) {
        fclose(f);
        return FP_FAIL(FP_ERR_IO, "write %s failed", path);
    }
    if (fclose(f) != 0)
        return FP_FAIL(FP_ERR_IO, "close %s failed", path);
    return FP_OK;
}

/* ---- embed ---- */
static int cmd_embed(int argc, char **argv)
{
    const char *model = NULL, *data = NULL, *out = NULL, *format = NULL;
    int json = 0, quiet = 0, help = 0, threads = 0, batch = 256;
    fp_opt_t opts[] = {
        {"model", FP_OPT_STR, &model, 0, 0, NULL, "model.safetensors (required)"},
        {"data", FP_OPT_STR, &data, 0, 0, NULL, "behaviour log of the users to profile (required)"},
        {"out", FP_OPT_STR, &out, 0, 0, NULL, "profiles .npy [users x dim]; ids go to OUT.ids.txt (required)"},
        {"format", FP_OPT_STR, &format, 0, 0, NULL, "auto | text | csv"},
        {"batch", FP_OPT_INT, &batch, 1, 65536, NULL, "users per batch (default 256)"},
        {"threads", FP_OPT_INT, &threads, 1, 256, NULL, "compute threads (default all cores)"},
        {"json", FP_OPT_FLAG, &json, 0, 0, NULL, "print one JSON line (users, seconds, profiles_per_s)"},
        {"quiet", FP_OPT_FLAG, &quiet, 0, 0, NULL, "no progress"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    int rc0 = cmd_begin("embed", argc, argv, opts,
                        "usage: fedprof-client embed --model FILE --data FILE --out profiles.npy [options]\n\n"
               "One profile vector per user (the encoder's output after the user's whole history, last maxlen\n"
               "items), as float32 .npy; user ids in the same order in OUT.ids.txt.\n\n",
                        "model data out");
    if (rc0 >= 0)
        return rc0;
    fp_log_set_quiet(quiet);
    fp_model_t *m = NULL;
    fp_config_t cfg;
    char **items = NULL;
    fp_dataset_t *d = NULL;
    if (load_model_and_data("embed", model, data, format, resolve_threads(threads), batch, &m, &cfg, &items, &d))
        return 1;
    const int T = cfg.model.maxlen, D = cfg.model.dim;
    int rc = 0;
    float *prof = fp_buffer_alloc((size_t)(d->n_users > 0 ? d->n_users : 1) * D);
    int32_t *seq = malloc((size_t)batch * T * sizeof *seq);
    double t0 = fp_now(), t_compute = 0;
    if (!prof || !seq) {
        FP_FAIL(FP_ERR_NOMEM, "profile buffers for %d users", d->n_users);
        rc = fail("embed");
    }
    fp_progress_t prog;
    fp_progress_begin(&prog, "profiles", d->n_users);
    for (int32_t u0 = 0; rc == 0 && u0 < d->n_users; u0 += batch) {
        int B = d->n_users - u0 < batch ? d->n_users - u0 : batch;
        for (int i = 0; i < B; i++)
            full_history(d, u0 + i, T, seq + (size_t)i * T);
        double tc = fp_now();
        if (fp_model_profiles(m, seq, B, prof + (size_t)u0 * D) != FP_OK)
            rc = fail("embed");
        t_compute += fp_now() - tc;
        fp_progress_update(&prog, u0 + B, NULL);
    }
    fp_progress_end(&prog);
    double seconds = fp_now() - t0;
    char ids[4096];
    if (rc == 0 && (size_t)snprintf(ids, sizeof ids, "%s.ids.txt", out) >= sizeof ids) {
        FP_FAIL(FP_ERR_RANGE, "--out path too long");
        rc = fail("embed");
    }
    if (rc == 0 && (fp_npy_save_f32(out, prof, (size_t)d->n_users, (size_t)D) != FP_OK || write_ids(ids, d) != FP_OK))
        rc = fail("embed");
    if (rc == 0) {
        fp_log_info("wrote %d profiles of dim %d to %s (ids: %s) in %.2fs", d->n_users, D, out, ids, seconds);
        if (json) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "users", json_object_new_int(d->n_users));
            json_object_object_add(o, "dim", json_object_new_int(D));
            json_object_object_add(o, "seconds", json_object_new_double(seconds));
            json_object_object_add(o, "compute_seconds", json_object_new_double(t_compute));
            json_object_object_add(o, "profiles_per_s",
                                   json_object_new_double(seconds > 0 ? d->n_users / seconds : 0.0));
            json_object_object_add(o, "peak_rss_mb", json_object_new_double(peak_rss_mb()));
            print_json(o);
        }
    }
    free(seq);
    fp_buffer_free(prof);
    fp_dataset_free(d);
    fp_model_items_free(items, cfg.model.n_items);
    fp_model_destroy(m);
    return rc;
}

/* ---- recommend ---- */
typedef struct {
    float score;
    int32_t item;
} scored_t;

static int cmp_scored(const void *a, const void *b)
{
    const scored_t *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return (x->item > y->item) - (x->item < y->item);
}

static int cmd_recommend(int argc, char **argv)
{
    const char *model = NULL, *data = NULL, *user = NULL, *format = NULL;
    int json = 0, help = 0, k = 10, include_seen = 0, threads = 1;
    fp_opt_t opts[] = {
        {"model", FP_OPT_STR, &model, 0, 0, NULL, "model.safetensors (required)"},
        {"data", FP_OPT_STR, &data, 0, 0, NULL, "behaviour log holding the user's history (required)"},
        {"user", FP_OPT_STR, &user, 0, 0, NULL, "the user's id as written in the data (required)"},
        {"k", FP_OPT_INT, &k, 1, 100000, NULL, "how many items (default 10)"},
        {"include-seen", FP_OPT_FLAG, &include_seen, 0, 0, NULL, "also recommend items already in the history"},
        {"format", FP_OPT_STR, &format, 0, 0, NULL, "auto | text | csv"},
        {"threads", FP_OPT_INT, &threads, 1, 256, NULL, "compute threads (default 1)"},
        {"json", FP_OPT_FLAG, &json, 0, 0, NULL, "print JSON instead of a table"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    int rc0 = cmd_begin("recommend", argc, argv, opts,
                        "usage: fedprof-client recommend --model FILE --data FILE --user ID [--k 10]\n\n"
               "Ranks every item by the dot product of the user's profile with the item embeddings.\n\n",
                        "model data user");
    if (rc0 >= 0)
        return rc0;
    fp_log_set_quiet(1);
    fp_model_t *m = NULL;
    fp_config_t cfg;
    char **items = NULL;
    fp_dataset_t *d = NULL;
    if (load_model_and_data("recommend", model, data, format, threads, 1, &m, &cfg, &items, &d))
        return 1;
    int rc = 0;
    const int T = cfg.model.maxlen, D = cfg.model.dim, NI = cfg.model.n_items;
    int32_t u = fp_data_find_user(d, user);
    int32_t *seq = malloc((size_t)T * sizeof *seq);
    float *prof = fp_buffer_alloc((size_t)D), *scores = fp_buffer_alloc((size_t)NI + 1);
    scored_t *sc = malloc((size_t)NI * sizeof *sc);
    if (u < 0) {
        FP_FAIL(FP_ERR_NOT_FOUND, "user '%s' is not in %s", user, data);
        rc = fail("recommend");
    } else if (!seq || !prof || !scores || !sc) {
        FP_FAIL(FP_ERR_NOMEM, "recommend buffers");
        rc = fail("recommend");
    }
    if (rc == 0) {
        full_history(d, u, T, seq);
        if (fp_model_profiles(m, seq, 1, prof) != FP_OK)
            rc = fail("recommend");
    }
    if (rc == 0) {
        fp_model_score_all(m, prof, 1, scores);
        /* Exclude the user's own items unless asked: mark them with -inf. */
        if (!include_seen)
            for (int64_t i = d->offsets[u]; i < d->offsets[u + 1]; i++)
                scores[d->items[i]] = -INFINITY;
        int n = 0;
        for (int32_t i = 1; i <= NI; i++)
            if (scores[i] != -INFINITY)
                sc[n++] = (scored_t){scores[i], i};
        qsort(sc, (size_t)n, sizeof *sc, cmp_scored);
        if (k > n)
            k = n;
        if (json) {
            json_object *o = json_object_new_object(), *arr = json_object_new_array();
            json_object_object_add(o, "user", json_object_new_string(user));
            for (int i = 0; i < k; i++) {
                json_object *e = json_object_new_object();
                json_object_object_add(e, "item", json_object_new_string(items[sc[i].item]));
                json_object_object_add(e, "score", json_object_new_double(sc[i].score));
                json_object_array_add(arr, e);
            }
            json_object_object_add(o, "items", arr);
            print_json(o);
        } else {
            printf("rank  item                      score\n");
            for (int i = 0; i < k; i++)
                printf("%4d  %-24s %8.4f\n", i + 1, items[sc[i].item], sc[i].score);
        }
    }
    free(sc);
    free(seq);
    fp_buffer_free(prof);
    fp_buffer_free(scores);
    fp_dataset_free(d);
    fp_model_items_free(items, cfg.model.n_items);
    fp_model_destroy(m);
    return rc;
}

/* ---- synth ---- */
static int cmd_synth(int argc, char **argv)
{
    const char *out = NULL;
    int help = 0, users = -1, items = -1, interests = -1;
    float mean_len = -1, zipf = -1, ptrans = -1;
    uint64_t seed = 0;
    int seed_set = 0;
    fp_synth_params_t p;
    fp_synth_defaults(&p);
    fp_opt_t opts[] = {
        {"out", FP_OPT_STR, &out, 0, 0, NULL, "output file, 'user item' text (required)"},
        {"users", FP_OPT_INT, &users, 1, 1e8, NULL, "users (default 2000)"},
        {"items", FP_OPT_INT, &items, 2, 1e8, NULL, "items (default 1000)"},
        {"interests", FP_OPT_INT, &interests, 1, 1e6, NULL, "latent interest clusters (default 20)"},
        {"mean-len", FP_OPT_FLOAT, &mean_len, 3, 200, NULL, "mean sequence length (default 20)"},
        {"zipf", FP_OPT_FLOAT, &zipf, 0, 5, NULL, "popularity exponent (default 1.0)"},
        {"transition", FP_OPT_FLOAT, &ptrans, 0, 1, NULL, "probability of a sequential transition (default 0.6)"},
        {"seed", FP_OPT_U64, &seed, 0, 0, &seed_set, "seed (default 1)"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    int rc0 = cmd_begin("synth", argc, argv, opts,
                        "usage: fedprof-client synth --out FILE [options]\n\n"
               "Writes fedprof's deterministic synthetic behaviour data (the embedded default data set).\n\n",
                        "out");
    if (rc0 >= 0)
        return rc0;
    if (users > 0) p.n_users = users;
    if (items > 0) p.n_items = items;
    if (interests > 0) p.n_interests = interests;
    if (mean_len > 0) p.mean_len = mean_len;
    if (zipf >= 0) p.zipf_s = zipf;
    if (ptrans >= 0) p.p_transition = ptrans;
    if (seed_set) p.seed = seed;
    fp_dataset_t *d = NULL;
    if (fp_data_synthetic(&p, &d) != FP_OK || fp_data_save_text(d, out) != FP_OK) {
        fp_dataset_free(d);
        return fail("synth");
    }
    fprintf(stderr, "wrote %s: %d users, %d items, %" PRId64 " interactions\n", out, d->n_users, d->n_items,
            d->n_interactions);
    fp_dataset_free(d);
    return 0;
}

/* ---- join ---- */

/* A flag's string into a config field (every config string holds FP_CONFIG_STR_MAX bytes). */
static int set_cfg_str(char *dst, const char *src, const char *flag)
{
    return fp_cli_set_str(dst, FP_CONFIG_STR_MAX + 1, src, "fedprof-client join", flag);
}

static int cmd_join(int argc, char **argv)
{
    const char *config = NULL, *server = NULL, *data = NULL, *format = NULL, *ca = NULL, *cert = NULL, *key = NULL,
               *name = NULL, *out = NULL, *ledger_dir = NULL, *device = NULL;
    int help = 0, insecure = 0, quiet = 0, json = 0, threads = 0, no_eval = 0;
    float give_up = -1, budget = -1;
    fp_opt_t opts[] = {
        {"server", FP_OPT_STR, &server, 0, 0, NULL, "coordinator HOST:PORT (client.server; required)"},
        {"data", FP_OPT_STR, &data, 0, 0, NULL, "your behaviour log; item ids must be the federation's 1..N (required)"},
        {"config", FP_OPT_STR, &config, 0, 0, NULL, "YAML config, its client: section (see configs/client.yaml)"},
        {"format", FP_OPT_STR, &format, 0, 0, NULL, "auto | text | csv"},
        {"ca", FP_OPT_STR, &ca, 0, 0, NULL, "the federation CA certificate (PEM)"},
        {"cert", FP_OPT_STR, &cert, 0, 0, NULL, "your partner certificate (PEM); its CN is your identity"},
        {"key", FP_OPT_STR, &key, 0, 0, NULL, "its private key (PEM)"},
        {"insecure", FP_OPT_FLAG, &insecure, 0, 0, NULL, "plaintext to a loopback coordinator (tests, demos)"},
        {"name", FP_OPT_STR, &name, 0, 0, NULL, "your identity with --insecure"},
        {"out", FP_OPT_STR, &out, 0, 0, NULL, "where the final global model is written (client.out)"},
        {"ledger-dir", FP_OPT_STR, &ledger_dir, 0, 0, NULL,
         "your privacy ledger and its signing key (client.ledger_dir; default: --out)"},
        {"budget-epsilon", FP_OPT_FLOAT, &budget, 0, 1e6, NULL,
         "your privacy budget: rounds that would pass it are refused (client.budget_epsilon)"},
        {"threads", FP_OPT_INT, &threads, 1, 256, NULL, "compute threads (default all cores)"},
        {"device", FP_OPT_STR, &device, 0, 0, NULL, "auto | cpu | cuda: where to train (default auto)"},
        {"give-up", FP_OPT_FLOAT, &give_up, 0, 1e9, NULL, "fail after this many seconds without progress (0: never)"},
        {"no-eval", FP_OPT_FLAG, &no_eval, 0, 0, NULL, "do not evaluate the final model on your held-out items"},
        {"json", FP_OPT_FLAG, &json, 0, 0, NULL, "end with one JSON line of results"},
        {"quiet", FP_OPT_FLAG, &quiet, 0, 0, NULL, "warnings and errors only"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    int rc0 = cmd_begin("join", argc, argv, opts,
                        "usage: fedprof-client join --server HOST:PORT --data FILE [--config configs/client.yaml]\n"
                        "                           [--ca F --cert F --key F | --insecure --name NAME] [options]\n\n"
                        "Takes part in a federation: waits for tasks, trains the shared encoder on your data,\n"
                        "sends only the (clipped, noised when the federation asks) model update, and at the end\n"
                        "saves the final global model to OUT/model.safetensors and evaluates it on your users.\n"
                        "Your raw data never leaves this process.\n\n",
                        "data");
    if (rc0 >= 0)
        return rc0;
    fp_config_t cfg;
    fp_config_defaults(&cfg);
    if (config && fp_config_load(config, &cfg) != FP_OK)
        return fail("join");
    if (set_cfg_str(cfg.client.server, server, "server") || set_cfg_str(cfg.client.ca, ca, "ca") ||
        set_cfg_str(cfg.client.cert, cert, "cert") || set_cfg_str(cfg.client.key, key, "key") ||
        set_cfg_str(cfg.client.name, name, "name") || set_cfg_str(cfg.client.out, out, "out") ||
        set_cfg_str(cfg.client.ledger_dir, ledger_dir, "ledger-dir"))
        return 2;
    if (insecure)
        cfg.client.insecure = 1;
    if (budget >= 0)
        cfg.client.budget_epsilon = budget;
    if (give_up >= 0)
        cfg.client.give_up_s = give_up;
    if (!cfg.client.server[0]) {
        fprintf(stderr, "fedprof-client join: error: --server (or client.server) is required\n");
        return 2;
    }
    fp_data_format fmt = FP_FORMAT_AUTO;
    if (parse_format(format, &fmt) != FP_OK)
        return fail("join") + 1;
    fp_wire_creds_t *creds = NULL;
    if (cfg.client.insecure) {
        if (cfg.client.ca[0] || cfg.client.cert[0] || cfg.client.key[0]) {
            fprintf(stderr, "fedprof-client join: error: --insecure excludes --ca/--cert/--key\n");
            return 2;
        }
        if (!cfg.client.name[0]) {
            fprintf(stderr, "fedprof-client join: error: --insecure needs --name (your identity)\n");
            return 2;
        }
        if (fp_wire_creds_insecure(&creds) != FP_OK)
            return fail("join");
    } else {
        if (!cfg.client.ca[0] || !cfg.client.cert[0] || !cfg.client.key[0]) {
            fprintf(stderr, "fedprof-client join: error: mutual TLS needs --ca, --cert and --key (from the "
                            "federation's operator: scripts/make-certs.sh); --insecure only for a loopback coordinator\n");
            return 2;
        }
        if (fp_wire_channel_creds_tls(cfg.client.ca, cfg.client.cert, cfg.client.key, NULL, &creds) != FP_OK)
            return fail("join");
    }
    fp_log_set_quiet(quiet);
    int drc = select_device("join", device);
    if (drc) {
        fp_wire_creds_destroy(creds);
        return drc;
    }
    fp_dataset_t *d = NULL;
    if (fp_data_load(data, fmt, &d) != FP_OK) {
        fp_wire_creds_destroy(creds);
        return fail("join");
    }
    fp_join_opts_t o;
    fp_join_opts_defaults(&o);
    o.server = cfg.client.server;
    o.creds = creds;
    o.insecure_name = cfg.client.insecure ? cfg.client.name : NULL;
    o.data = d;
    o.threads = resolve_threads(threads);
    o.out_dir = cfg.client.out[0] ? cfg.client.out : NULL;
    o.ledger_dir = cfg.client.ledger_dir[0] ? cfg.client.ledger_dir : o.out_dir;
    o.budget_epsilon = cfg.client.budget_epsilon;
    o.eval_final = !no_eval;
    o.give_up_s = cfg.client.give_up_s;
    o.quiet = quiet;
    fp_join_report_t rep;
    fp_status st = fp_join_run(&o, &rep);
    int rc = st == FP_OK ? 0 : fail("join");
    if (rc == 0 && !quiet)
    {
        fprintf(stderr, "joined as %s: %d rounds trained, %d updates accepted, %d refused, %d retries, %.1f s\n",
                rep.identity, rep.rounds_trained, rep.updates_accepted, rep.updates_refused, rep.retries,
                rep.seconds);
        if (rep.epsilon > 0 || rep.budget_exhausted)
            fprintf(stderr, "privacy: epsilon %.4g spent of a budget of %g (delta as the federation set)%s; the "
                            "ledger is in %s (check it with fedprof-audit verify)\n",
                    rep.epsilon, o.budget_epsilon, rep.budget_exhausted ? ", budget reached" : "", o.ledger_dir);
    }
    if (rc == 0 && json) {
        json_object *j = json_object_new_object();
        json_object_object_add(j, "identity", json_object_new_string(rep.identity));
        json_object_object_add(j, "rounds_trained", json_object_new_int(rep.rounds_trained));
        json_object_object_add(j, "updates_accepted", json_object_new_int(rep.updates_accepted));
        json_object_object_add(j, "updates_refused", json_object_new_int(rep.updates_refused));
        json_object_object_add(j, "retries", json_object_new_int(rep.retries));
        json_object_object_add(j, "epsilon", json_object_new_double(rep.epsilon));
        json_object_object_add(j, "budget_exhausted", json_object_new_boolean(rep.budget_exhausted));
        json_object_object_add(j, "rounds_skipped", json_object_new_int(rep.rounds_skipped));
        json_object_object_add(j, "final_model_version", json_object_new_int64((int64_t)rep.final_version));
        if (rep.evaluated)
            add_eval_json(j, cfg.eval.k, &rep.final_eval, 0);
        if (o.out_dir) {
            char path[FP_CONFIG_STR_MAX + 32];
            snprintf(path, sizeof path, "%s/model.safetensors", o.out_dir);
            json_object_object_add(j, "model", json_object_new_string(path));
        }
        json_object_object_add(j, "seconds", json_object_new_double(rep.seconds));
        print_json(j);
    }
    fp_dataset_free(d);
    fp_wire_creds_destroy(creds);
    return rc;
}

static void usage(void)
{
    printf("usage: fedprof-client COMMAND [options]   (COMMAND --help for its options)\n\n"
           "commands:\n"
           "  train      train the profile encoder on your data and evaluate it\n"
           "  eval       evaluate a saved model (HR@K / NDCG@K, sampled and full catalogue)\n"
           "  embed      write a profile vector for every user (.npy)\n"
           "  recommend  top-K items for one user\n"
           "  synth      write the synthetic default data set\n"
           "  join       take part in a federation (fedprof-server) with your data\n");
}

int main(int argc, char **argv)
{
    if (fp_threads_env_init(argv) != FP_OK) /* harmless: libgomp's default wait policy stays */
        fprintf(stderr, "fedprof-client: note: %s\n", fp_error_message());
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "train"))
        return cmd_train(argc - 2, argv + 2);
    if (!strcmp(cmd, "eval"))
        return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(cmd, "embed"))
        return cmd_embed(argc - 2, argv + 2);
    if (!strcmp(cmd, "recommend"))
        return cmd_recommend(argc - 2, argv + 2);
    if (!strcmp(cmd, "synth"))
        return cmd_synth(argc - 2, argv + 2);
    if (!strcmp(cmd, "join"))
        return cmd_join(argc - 2, argv + 2);
    fprintf(stderr, "fedprof-client: unknown command '%s'\n", cmd);
    usage();
    return 2;
}
