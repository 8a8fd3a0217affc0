/* config: fedprof's YAML configuration, its validation, and its JSON form (stored in checkpoints).
 *
 * One table lists every key: its section, name, type, place in fp_config_t and allowed range.
 * The YAML loader, the validator and both JSON directions all walk that table, so a key added
 * there is parsed, checked and serialised everywhere at once.
 *
 * The loader treats its input as hostile (it is fuzzed): the size is bounded, NUL bytes and
 * invalid UTF-8 are refused before libfyaml sees them, aliases, tags and multiple documents are
 * refused, scalars are typed by the YAML 1.2 core schema with quoted scalars always strings,
 * and every error names "file:line: section.key". Work happens on a copy of the config, so on
 * failure the caller's config is untouched. Two inputs are kept away from libfyaml 0.7.12
 * because it mishandles them (see tab_trap and scalar_text). */
#include "common/config.h"
#include "common/utf8.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <libfyaml.h>

/* ------------------------------------------------------------------------------------------ */
/* The table of keys                                                                           */

typedef enum { CF_INT, CF_U64, CF_FLOAT, CF_BOOL, CF_LOSS, CF_BLOCK, CF_FORMAT, CF_UNIT, CF_FUNIT, CF_STR } cf_type;

typedef struct {
    const char *section;
    const char *key;
    cf_type type;
    size_t off;      /* offsetof in fp_config_t (CF_STR: a char[FP_CONFIG_STR_MAX + 1]) */
    double lo, hi;   /* allowed range for CF_INT / CF_FLOAT */
    int lo_excl;     /* 1: lo itself is not allowed */
    int hi_excl;     /* 1: hi itself is not allowed */
} cf_field;

#define F_(sec, key, type, member, lo, hi, lx, hx) {sec, key, type, offsetof(fp_config_t, member), lo, hi, lx, hx}

static const cf_field g_fields[] = {
    F_("model", "dim", CF_INT, model.dim, 1, 4096, 0, 0),
    F_("model", "blocks", CF_INT, model.blocks, 0, 64, 0, 0),
    F_("model", "heads", CF_INT, model.heads, 1, 4096, 0, 0),
    F_("model", "maxlen", CF_INT, model.maxlen, 1, 4096, 0, 0),
    F_("model", "dropout", CF_FLOAT, model.dropout, 0, 1, 0, 1),
    F_("model", "attn_dropout", CF_FLOAT, model.attn_dropout, 0, 1, 0, 1),
    F_("model", "block", CF_BLOCK, model.block, 0, 0, 0, 0),
    F_("model", "loss", CF_LOSS, model.loss, 0, 0, 0, 0),
    F_("model", "negatives", CF_INT, model.n_neg, 1, 100000, 0, 0),
    F_("model", "l2_emb", CF_FLOAT, model.l2_emb, 0, FLT_MAX, 0, 0),
    F_("train", "epochs", CF_INT, train.epochs, 0, 10000000, 0, 0),
    F_("train", "batch", CF_INT, train.batch, 1, 65536, 0, 0),
    F_("train", "lr", CF_FLOAT, train.lr, 0, FLT_MAX, 1, 0),
    F_("train", "beta1", CF_FLOAT, train.beta1, 0, 1, 0, 1),
    F_("train", "beta2", CF_FLOAT, train.beta2, 0, 1, 0, 1),
    F_("train", "eps", CF_FLOAT, train.eps, 0, FLT_MAX, 1, 0),
    F_("train", "eval_every", CF_INT, train.eval_every, 0, INT_MAX, 0, 0),
    F_("train", "patience", CF_INT, train.patience, 0, INT_MAX, 0, 0),
    F_("train", "seed", CF_U64, train.seed, 0, 0, 0, 0),
    F_("train", "threads", CF_INT, train.threads, 0, 1024, 0, 0),
    F_("eval", "negatives", CF_INT, eval.negatives, 1, FP_DATA_MAX_ITEMS, 0, 0),
    F_("eval", "max_users", CF_INT, eval.max_users, 0, INT_MAX, 0, 0),
    F_("eval", "k", CF_INT, eval.k, 1, 100000, 0, 0),
    F_("eval", "full", CF_BOOL, eval.full, 0, 0, 0, 0),
    F_("eval", "seed", CF_U64, eval.seed, 0, 0, 0, 0),
    F_("data", "format", CF_FORMAT, data.format, 0, 0, 0, 0),
    F_("dp", "unit", CF_UNIT, dp.unit, 0, 0, 0, 0),
    F_("dp", "noise_multiplier", CF_FLOAT, dp.noise_multiplier, 0, 1e4, 0, 0),
    F_("dp", "clip", CF_FLOAT, dp.clip, 0, FLT_MAX, 1, 0),
    F_("dp", "delta", CF_FLOAT, dp.delta, 0, 1, 1, 1),
    F_("dp", "target_epsilon", CF_FLOAT, dp.target_epsilon, 0, 1e6, 0, 0),
    F_("dp", "seed", CF_U64, dp.seed, 0, 0, 0, 0),
    F_("server", "listen", CF_STR, server.listen, 0, 0, 0, 0),
    F_("server", "checkpoint_dir", CF_STR, server.checkpoint_dir, 0, 0, 0, 0),
    F_("server", "ca", CF_STR, server.ca, 0, 0, 0, 0),
    F_("server", "cert", CF_STR, server.cert, 0, 0, 0, 0),
    F_("server", "key", CF_STR, server.key, 0, 0, 0, 0),
    F_("server", "insecure", CF_BOOL, server.insecure, 0, 0, 0, 0),
    F_("server", "federation_id", CF_STR, server.federation_id, 0, 0, 0, 0),
    F_("server", "n_items", CF_INT, server.n_items, 0, FP_DATA_MAX_ITEMS, 0, 0),
    F_("server", "rounds", CF_INT, server.rounds, 1, 100000000, 0, 0),
    F_("server", "clients_per_round", CF_INT, server.clients_per_round, 1, 100000, 0, 0),
    F_("server", "min_clients", CF_INT, server.min_clients, 1, 100000, 0, 0),
    F_("server", "min_updates", CF_INT, server.min_updates, 0, 100000, 0, 0), /* and <= clients_per_round */
    F_("server", "over_selection", CF_FLOAT, server.over_selection, 1, 100, 0, 0),
    F_("server", "round_timeout_s", CF_FLOAT, server.round_timeout_s, 0, 1e7, 1, 0),
    F_("server", "member_timeout_s", CF_FLOAT, server.member_timeout_s, 0, 1e7, 1, 0),
    F_("server", "uniform_weights", CF_BOOL, server.uniform_weights, 0, 0, 0, 0),
    F_("server", "strategy", CF_STR, server.strategy, 0, 0, 0, 0), /* one of g_strategy_names */
    F_("server", "server_lr", CF_FLOAT, server.server_lr, 0, 1e6, 0, 0),
    F_("server", "momentum", CF_FLOAT, server.momentum, 0, 1, 0, 1),
    F_("server", "beta1", CF_FLOAT, server.beta1, 0, 1, 0, 1),
    F_("server", "beta2", CF_FLOAT, server.beta2, 0, 1, 0, 1),
    F_("server", "tau", CF_FLOAT, server.tau, 1e-18, 1e18, 0, 0),
    F_("server", "trim_fraction", CF_FLOAT, server.trim_fraction, 0, 0.5, 0, 1),
    F_("server", "init_seed", CF_U64, server.init_seed, 0, 0, 0, 0),
    F_("server", "select_seed", CF_U64, server.select_seed, 0, 0, 0, 0),
    F_("server", "max_concurrent_pushes", CF_INT, server.max_concurrent_pushes, 1, 1024, 0, 0),
    F_("server", "max_concurrent_pulls", CF_INT, server.max_concurrent_pulls, 1, 1024, 0, 0),
    F_("server", "spill_updates", CF_INT, server.spill_updates, -1, 1, 0, 0),
    F_("federation", "local_epochs", CF_INT, federation.local_epochs, 1, 1000000, 0, 0),
    F_("federation", "max_steps", CF_INT, federation.max_steps, 0, INT_MAX, 0, 0),
    F_("federation", "fedprox_mu", CF_FLOAT, federation.fedprox_mu, 0, 1e6, 0, 0),
    F_("federation", "unit", CF_FUNIT, federation.unit, 0, 0, 0, 0),
    F_("federation", "clip", CF_FLOAT, federation.clip, 0, FLT_MAX, 0, 0),
    F_("federation", "noise_multiplier", CF_FLOAT, federation.noise_multiplier, 0, 1e4, 0, 0),
    F_("federation", "delta", CF_FLOAT, federation.delta, 0, 1, 1, 1),
    F_("client", "server", CF_STR, client.server, 0, 0, 0, 0),
    F_("client", "ca", CF_STR, client.ca, 0, 0, 0, 0),
    F_("client", "cert", CF_STR, client.cert, 0, 0, 0, 0),
    F_("client", "key", CF_STR, client.key, 0, 0, 0, 0),
    F_("client", "insecure", CF_BOOL, client.insecure, 0, 0, 0, 0),
    F_("client", "name", CF_STR, client.name, 0, 0, 0, 0),
    F_("client", "out", CF_STR, client.out, 0, 0, 0, 0),
    F_("client", "ledger_dir", CF_STR, client.ledger_dir, 0, 0, 0, 0),
    F_("client", "budget_epsilon", CF_FLOAT, client.budget_epsilon, 0, 1e6, 0, 0),
    F_("client", "give_up_s", CF_FLOAT, client.give_up_s, 0, 1e9, 0, 0),
};
#undef F_

#define N_FIELDS (sizeof g_fields / sizeof g_fields[0])

/* travels = 0: the section holds this machine's settings (local file paths, addresses, keys).
 * It is read from YAML only: never written to JSON, and refused in JSON, so that a config that
 * came from elsewhere (a checkpoint, the coordinator) cannot point us at local files. */
typedef struct {
    const char *name;
    int travels;
} cf_section;

static const cf_section g_sections[] = {
    {"model", 1}, {"train", 1}, {"eval", 1}, {"data", 1}, {"dp", 1}, {"federation", 1}, {"server", 0}, {"client", 0},
};
#define N_SECTIONS (sizeof g_sections / sizeof g_sections[0])
#define SECTION_LIST "model, train, eval, data, dp, federation, server or client"

static const char *const g_loss_names[] = {"bce", "sampled_softmax"};         /* by fp_loss_kind */
static const char *const g_block_names[] = {"prenorm", "sasrec"};              /* by fp_block_kind */
static const char *const g_format_names[] = {"auto", "text", "csv"};          /* by fp_data_format */
static const char *const g_unit_names[] = {"none", "record"};                 /* by fp_dp_unit */
static const char *const g_funit_names[] = {"none", "record", "client"};      /* by fp_fed_unit */
/* server.strategy: the names server/strategy.c maps (checked here so that a typo is reported
 * with its file and line). */
static const char *const g_strategy_names[] = {"fedavg", "fedavgm", "fedadagrad", "fedadam",
                                               "fedyogi", "median", "trimmed_mean"};
#define STRATEGY_LIST "fedavg, fedavgm, fedadagrad, fedadam, fedyogi, median or trimmed_mean"

/* The names of an enum-typed field's values (index = value) and their count. */
static const char *const *enum_names(cf_type t, int *count)
{
    switch (t) {
    case CF_LOSS:
        *count = 2;
        return g_loss_names;
    case CF_BLOCK:
        *count = 2;
        return g_block_names;
    case CF_FORMAT:
        *count = 3;
        return g_format_names;
    case CF_FUNIT:
        *count = 3;
        return g_funit_names;
    default:
        *count = 2;
        return g_unit_names;
    }
}

/* The named-choice types (enum_names serves them). */
static int is_enum(cf_type t)
{
    return t == CF_LOSS || t == CF_BLOCK || t == CF_FORMAT || t == CF_UNIT || t == CF_FUNIT;
}

/* The value of name s (n bytes, not necessarily terminated) for named-choice type t; -1 if none. */
static int enum_index(cf_type t, const char *s, size_t n)
{
    int count;
    const char *const *names = enum_names(t, &count);
    for (int k = 0; k < count; k++)
        if (strlen(names[k]) == n && memcmp(names[k], s, n) == 0)
            return k;
    return -1;
}

static int field_index(const char *section, const char *key, size_t key_len)
{
    for (size_t i = 0; i < N_FIELDS; i++)
        if (strcmp(g_fields[i].section, section) == 0 && strlen(g_fields[i].key) == key_len &&
            memcmp(g_fields[i].key, key, key_len) == 0)
            return (int)i;
    return -1;
}

static int section_index(const char *name, size_t len)
{
    for (size_t i = 0; i < N_SECTIONS; i++)
        if (strlen(g_sections[i].name) == len && memcmp(g_sections[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

static int *f_int(fp_config_t *c, const cf_field *f) { return (int *)(void *)((char *)c + f->off); }
static uint64_t *f_u64(fp_config_t *c, const cf_field *f) { return (uint64_t *)(void *)((char *)c + f->off); }
static float *f_float(fp_config_t *c, const cf_field *f) { return (float *)(void *)((char *)c + f->off); }
static int f_get_int(const fp_config_t *c, const cf_field *f) { return *(const int *)(const void *)((const char *)c + f->off); }
static uint64_t f_get_u64(const fp_config_t *c, const cf_field *f)
{
    return *(const uint64_t *)(const void *)((const char *)c + f->off);
}
static float f_get_float(const fp_config_t *c, const cf_field *f)
{
    return *(const float *)(const void *)((const char *)c + f->off);
}
static char *f_str(fp_config_t *c, const cf_field *f) { return (char *)c + f->off; }
static const char *f_get_str(const fp_config_t *c, const cf_field *f) { return (const char *)c + f->off; }
/* Enums are stored through their own types, never through an int pointer. */
static int f_get_enum(const fp_config_t *c, const cf_field *f)
{
    switch (f->type) {
    case CF_LOSS:
        return (int)c->model.loss;
    case CF_BLOCK:
        return (int)c->model.block;
    case CF_FORMAT:
        return (int)c->data.format;
    case CF_FUNIT:
        return (int)c->federation.unit;
    default:
        return (int)c->dp.unit;
    }
}
static void f_set_enum(fp_config_t *c, const cf_field *f, int v)
{
    switch (f->type) {
    case CF_LOSS:
        c->model.loss = (fp_loss_kind)v;
        break;
    case CF_BLOCK:
        c->model.block = (fp_block_kind)v;
        break;
    case CF_FORMAT:
        c->data.format = (fp_data_format)v;
        break;
    case CF_FUNIT:
        c->federation.unit = (fp_fed_unit)v;
        break;
    default:
        c->dp.unit = (fp_dp_unit)v;
        break;
    }
}

/* A printable, bounded copy of untrusted text for messages. */
static const char *printable(const char *s, size_t len, char *buf, size_t n)
{
    size_t at = 0, i = 0;
    for (; i < len && at + 4 < n && i < 40; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[at++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (i < len && at + 3 < n) {
        memcpy(buf + at, "...", 3);
        at += 3;
    }
    buf[at] = '\0';
    return buf;
}

/* ------------------------------------------------------------------------------------------ */
/* Defaults and validation                                                                     */

void fp_config_defaults(fp_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->model.n_items = 0; /* from the data */
    c->model.dim = 50;
    c->model.blocks = 2;
    c->model.heads = 1;
    c->model.maxlen = 50;
    c->model.dropout = 0.5f;
    c->model.loss = FP_LOSS_BCE;
    c->model.n_neg = 1;
    c->model.l2_emb = 0.0f;
    c->train.epochs = 200;
    c->train.batch = 128;
    c->train.lr = 1e-3f;
    c->train.beta1 = 0.9f;
    c->train.beta2 = 0.98f;
    c->train.eps = 1e-8f;
    c->train.eval_every = 20;
    c->train.patience = 0;
    c->train.seed = 42;
    c->train.threads = 0;
    c->eval.negatives = 100;
    c->eval.max_users = 10000;
    c->eval.k = 10;
    c->eval.full = 1;
    c->eval.seed = 2018;
    c->data.format = FP_FORMAT_AUTO;
    c->dp.unit = FP_DP_UNIT_NONE;
    c->dp.noise_multiplier = 1.0f;
    c->dp.clip = 1.0f;
    c->dp.delta = 1e-5f;
    c->dp.target_epsilon = 0.0f;
    c->dp.seed = 0;
    snprintf(c->server.listen, sizeof c->server.listen, "%s", "0.0.0.0:7070");
    snprintf(c->server.checkpoint_dir, sizeof c->server.checkpoint_dir, "%s", "runs/federation");
    snprintf(c->server.federation_id, sizeof c->server.federation_id, "%s", "fedprof");
    c->server.insecure = 0;
    c->server.n_items = 0; /* required by fedprof-server, so no default */
    c->server.rounds = 10;
    c->server.clients_per_round = 2;
    c->server.min_clients = 2;
    c->server.min_updates = 0;
    c->server.over_selection = 1.0f;
    c->server.round_timeout_s = 600.0f;
    c->server.member_timeout_s = 60.0f;
    c->server.uniform_weights = 0;
    snprintf(c->server.strategy, sizeof c->server.strategy, "%s", "fedavg");
    c->server.server_lr = 0.0f;
    c->server.momentum = 0.9f;
    c->server.beta1 = 0.9f;
    c->server.beta2 = 0.99f;
    c->server.tau = 1e-3f;
    c->server.trim_fraction = 0.1f;
    c->server.init_seed = 42;
    c->server.select_seed = 0;
    c->server.max_concurrent_pushes = 1;
    c->server.max_concurrent_pulls = 8;
    c->server.spill_updates = -1;
    c->federation.local_epochs = 1;
    c->federation.max_steps = 0;
    c->federation.fedprox_mu = 0.0f;
    c->federation.unit = FP_FED_UNIT_NONE;
    c->federation.clip = 0.0f;
    c->federation.noise_multiplier = 1.0f;
    c->federation.delta = 1e-5f;
    snprintf(c->client.out, sizeof c->client.out, "%s", "runs/joined");
    c->client.insecure = 0;
    c->client.budget_epsilon = 0.0f;
    c->client.give_up_s = 0.0f; /* the other client strings stay "" */
}

static void range_text(const cf_field *f, char *buf, size_t n)
{
    if (f->type == CF_FLOAT && f->hi == FLT_MAX)
        snprintf(buf, n, "must be finite and %s %g", f->lo_excl ? ">" : ">=", f->lo);
    else if (f->type == CF_INT && f->hi == INT_MAX)
        snprintf(buf, n, "must be >= %.0f", f->lo);
    else if (f->type == CF_INT)
        snprintf(buf, n, "must be in [%.0f, %.0f]", f->lo, f->hi);
    else
        snprintf(buf, n, "must be in %s%g, %g%s", f->lo_excl ? "(" : "[", f->lo, f->hi, f->hi_excl ? ")" : "]");
}

static int strategy_known(const char *s)
{
    for (size_t k = 0; k < sizeof g_strategy_names / sizeof g_strategy_names[0]; k++)
        if (strcmp(s, g_strategy_names[k]) == 0)
            return 1;
    return 0;
}

/* A string field: terminated within its array, no control characters, a known strategy name. */
static int str_ok(const fp_config_t *c, const cf_field *f, char *why, size_t n)
{
    const char *s = f_get_str(c, f);
    const char *end = memchr(s, '\0', FP_CONFIG_STR_MAX + 1);
    if (!end) {
        snprintf(why, n, "longer than %d bytes or not terminated", FP_CONFIG_STR_MAX);
        return 0;
    }
    size_t len = (size_t)(end - s);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f) {
            snprintf(why, n, "control character 0x%02x at byte %zu (strings are one line of text)", ch, i);
            return 0;
        }
    }
    if (f->off == offsetof(fp_config_t, server.strategy) && !strategy_known(s)) {
        char pb[64];
        snprintf(why, n, "expected %s, got '%s'", STRATEGY_LIST, printable(s, len, pb, sizeof pb));
        return 0;
    }
    return 1;
}

/* Check field i of c; on failure write the reason into why and return 0. */
static int field_ok(const fp_config_t *c, size_t i, char *why, size_t n)
{
    const cf_field *f = &g_fields[i];
    char r[96];
    switch (f->type) {
    case CF_INT: {
        int v = f_get_int(c, f);
        if ((double)v < f->lo || (double)v > f->hi) {
            range_text(f, r, sizeof r);
            snprintf(why, n, "%s, got %d", r, v);
            return 0;
        }
        if (f->off == offsetof(fp_config_t, model.heads) && c->model.dim > 0 && c->model.dim % v != 0) {
            snprintf(why, n, "%d does not divide model.dim = %d", v, c->model.dim);
            return 0;
        }
        if (f->off == offsetof(fp_config_t, server.min_updates) && v > c->server.clients_per_round) {
            snprintf(why, n, "must be in [0, server.clients_per_round = %d], got %d", c->server.clients_per_round, v);
            return 0;
        }
        return 1;
    }
    case CF_FLOAT: {
        double v = f_get_float(c, f);
        int ok = isfinite(v) && (f->lo_excl ? v > f->lo : v >= f->lo) && (f->hi_excl ? v < f->hi : v <= f->hi);
        if (!ok) {
            range_text(f, r, sizeof r);
            snprintf(why, n, "%s, got %g", r, v);
        }
        return ok;
    }
    case CF_BOOL: {
        int v = f_get_int(c, f);
        if (v != 0 && v != 1) {
            snprintf(why, n, "must be true or false, got %d", v);
            return 0;
        }
        return 1;
    }
    case CF_LOSS:
    case CF_BLOCK:
    case CF_FORMAT:
    case CF_UNIT:
    case CF_FUNIT: {
        int v = f_get_enum(c, f), count;
        (void)enum_names(f->type, &count);
        if (v < 0 || v >= count) {
            snprintf(why, n, "unknown value %d", v);
            return 0;
        }
        return 1;
    }
    case CF_STR:
        return str_ok(c, f, why, n);
    case CF_U64:
        return 1;
    }
    return 1;
}

/* Validate every field; lines[i] (when lines is given and > 0) is where field i was set in the
 * document called name. */
static fp_status validate_fields(const fp_config_t *c, const char *name, const int *lines)
{
    char why[256];
    if (c->model.n_items < 0)
        return FP_FAIL(FP_ERR_RANGE, "%s: model.n_items must be >= 0, got %d", name ? name : "config",
                       c->model.n_items);
    for (size_t i = 0; i < N_FIELDS; i++) {
        if (field_ok(c, i, why, sizeof why))
            continue;
        const cf_field *f = &g_fields[i];
        if (lines && lines[i] > 0)
            return FP_FAIL(FP_ERR_RANGE, "%s:%d: %s.%s: %s", name, lines[i], f->section, f->key, why);
        return FP_FAIL(FP_ERR_RANGE, "%s: %s.%s: %s", name ? name : "config", f->section, f->key, why);
    }
    return FP_OK;
}

fp_status fp_config_validate(const fp_config_t *c)
{
    if (!c)
        return FP_FAIL(FP_ERR_INVALID, "fp_config_validate: NULL config");
    return validate_fields(c, NULL, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Scalars (YAML 1.2 core schema)                                                              */

static int is_null_text(const char *s, size_t n)
{
    return n == 0 || (n == 1 && s[0] == '~') || (n == 4 && (!memcmp(s, "null", 4) || !memcmp(s, "Null", 4) ||
                                                            !memcmp(s, "NULL", 4)));
}

/* [-+]?[0-9]+ */
static int is_int_text(const char *s, size_t n)
{
    size_t i = (n > 0 && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
    if (i == n)
        return 0;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )? */
static int is_float_text(const char *s, size_t n)
{
    size_t i = 0, digits = 0;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        i++;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++, digits++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, digits++;
    }
    if (digits == 0)
        return 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+'))
            i++;
        size_t ed = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, ed++;
        if (ed == 0)
            return 0;
    }
    return i == n;
}

/* [-+]?(\.inf|\.Inf|\.INF) | \.nan|\.NaN|\.NAN */
static int is_special_float_text(const char *s, size_t n)
{
    if (n > 0 && (s[0] == '-' || s[0] == '+'))
        s++, n--;
    return n == 4 && (!memcmp(s, ".inf", 4) || !memcmp(s, ".Inf", 4) || !memcmp(s, ".INF", 4) ||
                      !memcmp(s, ".nan", 4) || !memcmp(s, ".NaN", 4) || !memcmp(s, ".NAN", 4));
}

static int is_bool_text(const char *s, size_t n, int *v)
{
    if ((n == 4 && (!memcmp(s, "true", 4) || !memcmp(s, "True", 4) || !memcmp(s, "TRUE", 4)))) {
        *v = 1;
        return 1;
    }
    if ((n == 5 && (!memcmp(s, "false", 5) || !memcmp(s, "False", 5) || !memcmp(s, "FALSE", 5)))) {
        *v = 0;
        return 1;
    }
    return 0;
}

/* What a plain scalar looks like, for "expected X, got Y" messages. */
static const char *plain_kind(const char *s, size_t n)
{
    int b;
    if (is_null_text(s, n))
        return "null";
    if (is_int_text(s, n))
        return "an integer";
    if (is_float_text(s, n) || is_special_float_text(s, n))
        return "a float";
    if (is_bool_text(s, n, &b))
        return "a boolean";
    return "a string";
}

/* ------------------------------------------------------------------------------------------ */
/* YAML                                                                                        */

typedef struct {
    const char *name;            /* document name for messages */
    const char *src;             /* the document's bytes, for raw views of quoted scalars */
    size_t src_len;
    fp_config_t cfg;             /* working copy */
    int lines[N_FIELDS];         /* 1-based line where each field was set, 0 = not set */
    int section_lines[N_SECTIONS];
} cf_ctx;

typedef struct {
    int have;
    int line;
    char msg[200];
} cf_diag_capture;

/* libfyaml reports "<input>:LINE:COL: error: MESSAGE" followed by the source line and a caret;
 * keep the first error's line and message instead of printing them. */
static void diag_capture(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag;
    cf_diag_capture *cap = user;
    if (cap->have || !buf)
        return;
    size_t at = len;
    for (size_t i = 0; i + 9 <= len; i++)
        if (memcmp(buf + i, ": error: ", 9) == 0) {
            at = i;
            break;
        }
    if (at == len)
        return;
    /* Walk back over ":COL" to the digits of LINE. */
    size_t q = at;
    while (q > 0 && isdigit((unsigned char)buf[q - 1]))
        q--;
    int line = 0;
    if (q < at && q > 0 && buf[q - 1] == ':') {
        size_t e = q - 1, b = e;
        while (b > 0 && isdigit((unsigned char)buf[b - 1]))
            b--;
        if (b < e && e - b < 9)
            for (size_t d = b; d < e; d++)
                line = line * 10 + (buf[d] - '0');
    }
    size_t k = 0;
    for (size_t i = at + 9; i < len && buf[i] != '\n' && k + 1 < sizeof cap->msg; i++) {
        unsigned char ch = (unsigned char)buf[i];
        cap->msg[k++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    cap->msg[k] = '\0';
    cap->line = line;
    cap->have = 1;
}

/* 1-based line of a node, or 0 when it carries no token (mappings, sequences). */
static int node_line(struct fy_node *n)
{
    if (!n)
        return 0;
    struct fy_token *t = fy_node_get_scalar_token(n);
    if (!t)
        return 0;
    const struct fy_mark *m = fy_token_start_mark(t);
    return m ? m->line + 1 : 0;
}

/* The text of a scalar. A quoted scalar whose source holds an escape (a quote or a backslash)
 * or a line break is never a valid key or value here, and libfyaml 0.7.12 leaks memory
 * unescaping long runs of '' (found by fuzzing), so for those we do not ask libfyaml: *escaped
 * is set and the raw source between the quotes is returned instead. It matches no name, so it
 * ends as an "unknown key" or "expected ..." error that quotes the raw text. */
static const char *scalar_text(const cf_ctx *x, struct fy_node *n, size_t *len, int *escaped)
{
    *escaped = 0;
    *len = 0;
    enum fy_node_style style = fy_node_get_style(n);
    if (style == FYNS_SINGLE_QUOTED || style == FYNS_DOUBLE_QUOTED) {
        struct fy_token *t = fy_node_get_scalar_token(n);
        const struct fy_mark *a = t ? fy_token_start_mark(t) : NULL, *b = t ? fy_token_end_mark(t) : NULL;
        if (!a || !b || a->input_pos > b->input_pos || b->input_pos > x->src_len)
            return NULL;
        const char *raw = x->src + a->input_pos;
        size_t n_raw = b->input_pos - a->input_pos;
        for (size_t i = 0; i < n_raw; i++)
            if (raw[i] == '\'' || raw[i] == '\\' || raw[i] == '\n' || raw[i] == '\r') {
                *escaped = 1;
                *len = n_raw;
                return raw;
            }
    }
    return fy_node_get_scalar(n, len);
}

static int node_has_tag(struct fy_node *n)
{
    size_t len = 0;
    return fy_node_get_tag(n, &len) != NULL;
}

static int is_null_node(struct fy_node *n)
{
    if (!n)
        return 1;
    if (fy_node_get_type(n) != FYNT_SCALAR || fy_node_get_style(n) != FYNS_PLAIN || node_has_tag(n))
        return 0;
    size_t len = 0;
    const char *s = fy_node_get_scalar(n, &len);
    return !s || is_null_text(s, len);
}

static const char *node_kind(struct fy_node *n)
{
    if (!n)
        return "null";
    switch (fy_node_get_type(n)) {
    case FYNT_MAPPING:
        return "a mapping";
    case FYNT_SEQUENCE:
        return "a sequence";
    case FYNT_SCALAR:
        break;
    }
    if (fy_node_get_style(n) != FYNS_PLAIN)
        return "a string";
    size_t len = 0;
    const char *s = fy_node_get_scalar(n, &len);
    return s ? plain_kind(s, len) : "null";
}

static const char *type_name(cf_type t)
{
    switch (t) {
    case CF_INT:
        return "an integer";
    case CF_U64:
        return "a non-negative integer";
    case CF_FLOAT:
        return "a number";
    case CF_BOOL:
        return "true or false";
    case CF_LOSS:
        return "bce or sampled_softmax";
    case CF_BLOCK:
        return "prenorm or sasrec";
    case CF_FORMAT:
        return "auto, text or csv";
    case CF_UNIT:
        return "none or record";
    case CF_FUNIT:
        return "none, record or client";
    case CF_STR:
        return "a string";
    }
    return "?";
}

/* The field of a named-choice key, or an error naming it. */
static fp_status enum_field(const char *section, const char *key, const cf_field **out)
{
    int i = field_index(section, key, strlen(key));
    if (i < 0)
        return FP_FAIL(FP_ERR_INVALID, "%.40s.%.40s: no such key", section, key);
    const cf_field *f = &g_fields[i];
    if (!is_enum(f->type))
        return FP_FAIL(FP_ERR_INVALID, "%s.%s is not a named choice", f->section, f->key);
    *out = f;
    return FP_OK;
}

static fp_status enum_lookup(const cf_field *f, const char *name, int *value)
{
    const int k = enum_index(f->type, name, strlen(name));
    if (k >= 0) {
        *value = k;
        return FP_OK;
    }
    char buf[64];
    return FP_FAIL(FP_ERR_INVALID, "%s.%s: '%s' is not %s", f->section, f->key, printable(name, strlen(name), buf,
                   sizeof buf), type_name(f->type));
}

fp_status fp_config_enum_value(const char *section, const char *key, const char *name, int *value)
{
    if (!section || !key || !name || !value)
        return FP_FAIL(FP_ERR_INVALID, "fp_config_enum_value: NULL argument");
    const cf_field *f;
    fp_status st = enum_field(section, key, &f);
    return st != FP_OK ? st : enum_lookup(f, name, value);
}

fp_status fp_config_set_enum(fp_config_t *c, const char *section, const char *key, const char *name)
{
    if (!c || !section || !key || !name)
        return FP_FAIL(FP_ERR_INVALID, "fp_config_set_enum: NULL argument");
    const cf_field *f;
    int v;
    fp_status st = enum_field(section, key, &f);
    if (st == FP_OK && (st = enum_lookup(f, name, &v)) == FP_OK)
        f_set_enum(c, f, v);
    return st;
}

/* Refuse what we never accept anywhere: aliases (and so alias bombs) and explicit tags. */
static fp_status check_plain_node(cf_ctx *x, struct fy_node *n, int line, const char *what)
{
    if (n && fy_node_get_style(n) == FYNS_ALIAS)
        return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: aliases are not supported", x->name, line, what);
    if (n && node_has_tag(n))
        return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: tags are not supported", x->name, line, what);
    return FP_OK;
}

/* Parse an integer in [lo, hi] from plain text; RANGE on overflow. */
static fp_status parse_int_text(cf_ctx *x, const cf_field *f, int line, const char *s, size_t n, long long lo,
                                long long hi, long long *out)
{
    int neg = s[0] == '-';
    size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
    unsigned long long v = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (ULLONG_MAX - d) / 10) {
            v = ULLONG_MAX;
            break;
        }
        v = v * 10 + d;
    }
    char pb[64];
    if (neg) {
        if (v == 0) {
            *out = 0;
            return FP_OK;
        }
        if (lo >= 0 || v > (unsigned long long)LLONG_MAX || -(long long)v < lo)
            return FP_FAIL(FP_ERR_RANGE, "%s:%d: %s.%s: %s is out of range (integer overflow or negative)",
                           x->name, line, f->section, f->key, printable(s, n, pb, sizeof pb));
        *out = -(long long)v;
        return FP_OK;
    }
    if (v > (unsigned long long)hi)
        return FP_FAIL(FP_ERR_RANGE, "%s:%d: %s.%s: %s is out of range (integer overflow)", x->name, line,
                       f->section, f->key, printable(s, n, pb, sizeof pb));
    *out = (long long)v;
    return FP_OK;
}

/* A string value: any scalar's text, so `listen: 7070` is "7070" and `ca:` or `ca: ~` is "".
 * A quoted scalar with escapes is decoded here, not by libfyaml (see scalar_text): '' in single
 * quotes, and \\ \" \/ in double quotes; other escapes and line breaks inside quotes are
 * refused (they could only yield control characters, or text better written as itself). */
static fp_status set_str(cf_ctx *x, const cf_field *f, struct fy_node *v, int line, const char *what)
{
    if (!v || is_null_node(v)) {
        if (f->off == offsetof(fp_config_t, server.strategy))
            return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: expected %s, got null", x->name, line, what, STRATEGY_LIST);
        f_str(&x->cfg, f)[0] = '\0';
        return FP_OK;
    }
    if (fy_node_get_type(v) != FYNT_SCALAR)
        return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: expected a string, got %s", x->name, line, what, node_kind(v));
    size_t n = 0;
    int escaped;
    const char *s = scalar_text(x, v, &n, &escaped);
    if (!s)
        return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: unreadable value", x->name, line, what);
    char out[FP_CONFIG_STR_MAX + 1];
    size_t len = 0;
    int dq = fy_node_get_style(v) == FYNS_DOUBLE_QUOTED;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (escaped && (ch == '\n' || ch == '\r'))
            return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: a quoted string must be on one line", x->name, line, what);
        if (escaped && !dq && ch == '\'' && i + 1 < n && s[i + 1] == '\'')
            i++; /* '' is one quote */
        else if (escaped && dq && ch == '\\') {
            char e = i + 1 < n ? s[i + 1] : '\0';
            if (e != '\\' && e != '"' && e != '/')
                return FP_FAIL(FP_ERR_INVALID,
                               "%s:%d: %s: escape '\\%c' is not supported in strings (only \\\\, \\\" and \\/)",
                               x->name, line, what, (e >= 0x20 && e < 0x7f) ? e : '?');
            ch = e;
            i++;
        }
        unsigned char u = (unsigned char)ch;
        if (u < 0x20 || u == 0x7f)
            return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: control character 0x%02x in a string (strings are one line "
                           "of text)", x->name, line, what, u);
        if (len == FP_CONFIG_STR_MAX)
            return FP_FAIL(FP_ERR_RANGE, "%s:%d: %s: string too long (more than %d bytes)", x->name, line, what,
                           FP_CONFIG_STR_MAX);
        out[len++] = ch;
    }
    out[len] = '\0';
    char pb[64];
    if (f->off == offsetof(fp_config_t, server.strategy) && !strategy_known(out))
        return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: expected %s, got '%s'", x->name, line, what, STRATEGY_LIST,
                       printable(out, len, pb, sizeof pb));
    char *dst = f_str(&x->cfg, f);
    memcpy(dst, out, len + 1);
    return FP_OK;
}

static fp_status set_field(cf_ctx *x, size_t fi, struct fy_node *v, int line)
{
    const cf_field *f = &g_fields[fi];
    char what[64], pb[64];
    snprintf(what, sizeof what, "%s.%s", f->section, f->key);
    fp_status st = check_plain_node(x, v, line, what);
    if (st != FP_OK)
        return st;
    if (f->type == CF_STR)
        return set_str(x, f, v, line, what);
    if (!v || fy_node_get_type(v) != FYNT_SCALAR || is_null_node(v))
        return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: expected %s, got %s", x->name, line, what, type_name(f->type),
                       node_kind(v));
    size_t n = 0;
    int escaped; /* raw text with escapes never equals a valid value, so it needs no special case */
    const char *s = scalar_text(x, v, &n, &escaped);
    if (!s)
        return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: unreadable value", x->name, line, what);
    int plain = fy_node_get_style(v) == FYNS_PLAIN;
    switch (f->type) {
    case CF_INT:
    case CF_U64: {
        if (!plain || !is_int_text(s, n))
            return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: expected %s, got %s", x->name, line, what,
                           type_name(f->type), plain ? plain_kind(s, n) : "a string");
        if (f->type == CF_U64) {
            if (s[0] == '-' && !(n == 2 && s[1] == '0'))
                return FP_FAIL(FP_ERR_RANGE, "%s:%d: %s: must be >= 0, got %s", x->name, line, what,
                               printable(s, n, pb, sizeof pb));
            size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
            uint64_t u = 0;
            for (; i < n; i++) {
                unsigned d = (unsigned)(s[i] - '0');
                if (u > (UINT64_MAX - d) / 10)
                    return FP_FAIL(FP_ERR_RANGE, "%s:%d: %s: %s is out of range (integer overflow)", x->name, line,
                                   what, printable(s, n, pb, sizeof pb));
                u = u * 10 + d;
            }
            *f_u64(&x->cfg, f) = u;
            return FP_OK;
        }
        long long ll = 0;
        if ((st = parse_int_text(x, f, line, s, n, INT_MIN, INT_MAX, &ll)) != FP_OK)
            return st;
        *f_int(&x->cfg, f) = (int)ll;
        return FP_OK;
    }
    case CF_FLOAT: {
        if (plain && is_special_float_text(s, n))
            return FP_FAIL(FP_ERR_RANGE, "%s:%d: %s: must be finite, got %s", x->name, line, what,
                           printable(s, n, pb, sizeof pb));
        if (!plain || !is_float_text(s, n))
            return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: expected %s, got %s", x->name, line, what,
                           type_name(f->type), plain ? plain_kind(s, n) : "a string");
        char buf[128];
        if (n >= sizeof buf)
            return FP_FAIL(FP_ERR_RANGE, "%s:%d: %s: number too long (%zu characters)", x->name, line, what, n);
        memcpy(buf, s, n);
        buf[n] = '\0';
        double d = strtod(buf, NULL);
        if (!isfinite(d) || fabs(d) > FLT_MAX)
            return FP_FAIL(FP_ERR_RANGE, "%s:%d: %s: %s is out of range for a float", x->name, line, what, buf);
        *f_float(&x->cfg, f) = (float)d;
        return FP_OK;
    }
    case CF_BOOL: {
        int b = 0;
        if (!plain || !is_bool_text(s, n, &b))
            return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: expected true or false, got %s", x->name, line, what,
                           plain ? plain_kind(s, n) : "a string");
        *f_int(&x->cfg, f) = b;
        return FP_OK;
    }
    case CF_LOSS:
    case CF_BLOCK:
    case CF_FORMAT:
    case CF_UNIT:
    case CF_FUNIT: {
        const int k = enum_index(f->type, s, n);
        if (k >= 0) {
            f_set_enum(&x->cfg, f, k);
            return FP_OK;
        }
        return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: expected %s, got '%s'", x->name, line, what, type_name(f->type),
                       printable(s, n, pb, sizeof pb));
    }
    case CF_STR:
        break; /* handled above */
    }
    return FP_FAIL(FP_ERR_INTERNAL, "config field type");
}

/* The key of a pair as text, with its line (falling back to the value's line, then parent_line). */
static fp_status pair_key(cf_ctx *x, struct fy_node_pair *p, int parent_line, const char *where, const char **key,
                          size_t *key_len, int *line)
{
    struct fy_node *k = fy_node_pair_key(p), *v = fy_node_pair_value(p);
    int l = node_line(k);
    if (l == 0)
        l = node_line(v);
    if (l == 0)
        l = parent_line;
    *line = l;
    fp_status st = check_plain_node(x, k, l, where);
    if (st != FP_OK)
        return st;
    if (!k || fy_node_get_type(k) != FYNT_SCALAR)
        return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: keys must be plain strings, got %s", x->name, l, where,
                       node_kind(k));
    int escaped; /* raw text with escapes never equals a valid name: it ends as "unknown key" */
    *key = scalar_text(x, k, key_len, &escaped);
    if (!*key)
        return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: unreadable key", x->name, l, where);
    return FP_OK;
}

static fp_status walk_section(cf_ctx *x, int sec, struct fy_node *map, int sec_line)
{
    const char *sname = g_sections[sec].name;
    void *it = NULL;
    struct fy_node_pair *p;
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        const char *key;
        size_t klen;
        int line;
        fp_status st = pair_key(x, p, sec_line, sname, &key, &klen, &line);
        if (st != FP_OK)
            return st;
        int fi = field_index(sname, key, klen);
        char pb[64];
        if (fi < 0)
            return FP_FAIL(FP_ERR_INVALID, "%s:%d: unknown key '%s.%s'", x->name, line, sname,
                           printable(key, klen, pb, sizeof pb));
        if (x->lines[fi] > 0)
            return FP_FAIL(FP_ERR_INVALID, "%s:%d: duplicate key '%s.%s' (first on line %d)", x->name, line, sname,
                           g_fields[fi].key, x->lines[fi]);
        x->lines[fi] = line > 0 ? line : 1;
        if ((st = set_field(x, (size_t)fi, fy_node_pair_value(p), line)) != FP_OK)
            return st;
    }
    return FP_OK;
}

static fp_status walk_root(cf_ctx *x, struct fy_node *root)
{
    if (is_null_node(root))
        return FP_OK; /* an empty document: all defaults */
    fp_status st = check_plain_node(x, root, node_line(root) ? node_line(root) : 1, "top level");
    if (st != FP_OK)
        return st;
    if (fy_node_get_type(root) != FYNT_MAPPING)
        return FP_FAIL(FP_ERR_INVALID, "%s:%d: the top level must be a mapping of sections (" SECTION_LIST
                       "), got %s", x->name, node_line(root) ? node_line(root) : 1, node_kind(root));
    void *it = NULL;
    struct fy_node_pair *p;
    while ((p = fy_node_mapping_iterate(root, &it)) != NULL) {
        const char *key;
        size_t klen;
        int line;
        if ((st = pair_key(x, p, 1, "top level", &key, &klen, &line)) != FP_OK)
            return st;
        int sec = section_index(key, klen);
        char pb[64];
        if (sec < 0)
            return FP_FAIL(FP_ERR_INVALID, "%s:%d: unknown section '%s' (expected " SECTION_LIST ")", x->name, line,
                           printable(key, klen, pb, sizeof pb));
        if (x->section_lines[sec] > 0)
            return FP_FAIL(FP_ERR_INVALID, "%s:%d: duplicate key '%s' (first on line %d)", x->name, line,
                           g_sections[sec].name, x->section_lines[sec]);
        x->section_lines[sec] = line > 0 ? line : 1;
        struct fy_node *v = fy_node_pair_value(p);
        if ((st = check_plain_node(x, v, line, g_sections[sec].name)) != FP_OK)
            return st;
        if (is_null_node(v))
            continue; /* "model:" with every key commented out */
        if (fy_node_get_type(v) != FYNT_MAPPING)
            return FP_FAIL(FP_ERR_INVALID, "%s:%d: %s: expected a mapping of keys, got %s", x->name, line,
                           g_sections[sec].name, node_kind(v));
        if ((st = walk_section(x, sec, v, line)) != FP_OK)
            return st;
    }
    return FP_OK;
}

/* libfyaml 0.7.12 frees parser state twice after its "cannot use tab for indentation of block
 * entry" error (pantoniou/libfyaml#57): a tab in a run of blanks followed by one of ?:|> or by
 * "- " crashes the process when the parser is destroyed. Refuse that pattern ourselves, before
 * libfyaml sees it (a superset: we do not know whether it is inside a flow collection or a
 * quoted scalar). Returns the offset of the offending tab, or len. */
static size_t tab_trap(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '\t')
            continue;
        size_t j = i;
        while (j < len && (s[j] == ' ' || s[j] == '\t'))
            j++;
        if (j == len)
            break;
        char c = s[j];
        int blank_after = j + 1 >= len || s[j + 1] == ' ' || s[j + 1] == '\t' || s[j + 1] == '\n' || s[j + 1] == '\r';
        if (c == '?' || c == ':' || c == '|' || c == '>' || (c == '-' && blank_after))
            return i;
        i = j - 1;
    }
    return len;
}

static int line_at(const char *s, size_t off)
{
    int line = 1;
    for (size_t i = 0; i < off; i++)
        line += s[i] == '\n';
    return line;
}

fp_status fp_config_load_string(const char *name, const char *yaml, size_t len, fp_config_t *c)
{
    if (!name)
        name = "<string>";
    if (!c || (!yaml && len > 0))
        return FP_FAIL(FP_ERR_INVALID, "fp_config_load_string: NULL argument");
    if (len > FP_CONFIG_MAX_BYTES)
        return FP_FAIL(FP_ERR_RANGE, "%s: %zu bytes is too large for a config (at most %u)", name, len,
                       (unsigned)FP_CONFIG_MAX_BYTES);
    if (!yaml)
        yaml = "";
    const char *nul = memchr(yaml, '\0', len);
    if (nul)
        return FP_FAIL(FP_ERR_PARSE, "%s:%d: NUL byte in the file", name, line_at(yaml, (size_t)(nul - yaml)));
    size_t bad = fp_utf8_prefix((const unsigned char *)yaml, len);
    if (bad < len)
        return FP_FAIL(FP_ERR_PARSE, "%s:%d: the file is not valid UTF-8", name, line_at(yaml, bad));
    size_t tab = tab_trap(yaml, len);
    if (tab < len)
        return FP_FAIL(FP_ERR_PARSE, "%s:%d: a tab before an indicator (- ? : | >) is not allowed; use spaces",
                       name, line_at(yaml, tab));

    cf_ctx *x = calloc(1, sizeof *x);
    if (!x)
        return FP_FAIL(FP_ERR_NOMEM, "%s: config", name);
    x->name = name;
    x->src = yaml;
    x->src_len = len;
    x->cfg = *c;

    fp_status st = FP_OK;
    cf_diag_capture cap = {0, 0, ""};
    struct fy_diag *diag = NULL;
    struct fy_parser *fyp = NULL;
    struct fy_document *doc = NULL, *doc2 = NULL;

    struct fy_diag_cfg dc;
    fy_diag_cfg_default(&dc);
    dc.fp = NULL;
    dc.output_fn = diag_capture;
    dc.user = &cap;
    dc.colorize = false;
    diag = fy_diag_create(&dc);
    struct fy_parse_cfg pc;
    memset(&pc, 0, sizeof pc);
    /* Duplicates are allowed here only so that we can report them with the key's name. */
    pc.flags = FYPCF_QUIET | FYPCF_ALLOW_DUPLICATE_KEYS;
    pc.diag = diag;
    if (!diag || !(fyp = fy_parser_create(&pc))) {
        st = FP_FAIL(FP_ERR_NOMEM, "%s: YAML parser", name);
        goto done;
    }
    if (fy_parser_set_string(fyp, yaml, len) != 0) {
        st = FP_FAIL(FP_ERR_NOMEM, "%s: YAML parser input", name);
        goto done;
    }
    doc = fy_parse_load_document(fyp);
    if (!doc || fy_parser_get_stream_error(fyp)) {
        if (fy_parser_get_stream_error(fyp) || cap.have) {
            if (cap.have && cap.line > 0)
                st = FP_FAIL(FP_ERR_PARSE, "%s:%d: YAML syntax error: %s", name, cap.line, cap.msg);
            else
                st = FP_FAIL(FP_ERR_PARSE, "%s: YAML syntax error%s%s", name, cap.have ? ": " : "", cap.msg);
        }
        goto done; /* no document and no error: an empty file, all defaults */
    }
    doc2 = fy_parse_load_document(fyp);
    if (doc2 || fy_parser_get_stream_error(fyp)) {
        if (cap.have && cap.line > 0)
            st = FP_FAIL(FP_ERR_PARSE, "%s:%d: YAML syntax error: %s", name, cap.line, cap.msg);
        else
            st = FP_FAIL(FP_ERR_PARSE, "%s: more than one YAML document", name);
        goto done;
    }
    if ((st = walk_root(x, fy_document_root(doc))) != FP_OK)
        goto done;
    st = validate_fields(&x->cfg, name, x->lines);
done:
    if (doc2)
        fy_parse_document_destroy(fyp, doc2);
    if (doc)
        fy_parse_document_destroy(fyp, doc);
    if (fyp)
        fy_parser_destroy(fyp);
    if (diag)
        fy_diag_destroy(diag);
    if (st == FP_OK)
        *c = x->cfg;
    free(x);
    return st;
}

fp_status fp_config_load(const char *path, fp_config_t *c)
{
    if (!path || !c)
        return FP_FAIL(FP_ERR_INVALID, "fp_config_load: NULL argument");
    FILE *f = fopen(path, "rb");
    if (!f)
        return FP_FAIL(errno == ENOENT ? FP_ERR_NOT_FOUND : FP_ERR_IO, "open %s: %s", path,
                       errno == ENOENT ? "no such file" : "cannot open");
    /* Read at most one byte past the limit, so that an endless or huge file is refused cheaply. */
    char *buf = malloc((size_t)FP_CONFIG_MAX_BYTES + 1);
    if (!buf) {
        fclose(f);
        return FP_FAIL(FP_ERR_NOMEM, "%s: read buffer", path);
    }
    size_t n = fread(buf, 1, (size_t)FP_CONFIG_MAX_BYTES + 1, f);
    int err = ferror(f);
    fclose(f);
    fp_status st;
    if (err)
        st = FP_FAIL(FP_ERR_IO, "%s: read error", path);
    else if (n > FP_CONFIG_MAX_BYTES)
        st = FP_FAIL(FP_ERR_RANGE, "%s: larger than %u bytes", path, (unsigned)FP_CONFIG_MAX_BYTES);
    else
        st = fp_config_load_string(path, buf, n, c);
    free(buf);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* JSON                                                                                        */

/* The shortest decimal text that reads back as exactly the same float. */
static json_object *float_json(float v)
{
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
    /* Keep it a JSON double even when it prints like an integer ("1" -> "1.0"). */
    if (!strpbrk(buf, ".eEn"))
        strncat(buf, ".0", sizeof buf - strlen(buf) - 1);
    return json_object_new_double_s((double)v, buf);
}

static int add(json_object *o, const char *key, json_object *v)
{
    if (!v || json_object_object_add(o, key, v) != 0) {
        json_object_put(v);
        return -1;
    }
    return 0;
}

/* 1 when every field of the section holds the same value in c and d. */
static int section_is_default(const fp_config_t *c, const fp_config_t *d, const char *section)
{
    for (size_t i = 0; i < N_FIELDS; i++) {
        const cf_field *f = &g_fields[i];
        if (strcmp(f->section, section) != 0)
            continue;
        int same;
        switch (f->type) {
        case CF_U64:
            same = f_get_u64(c, f) == f_get_u64(d, f);
            break;
        case CF_FLOAT: {
            float a = f_get_float(c, f), b = f_get_float(d, f);
            same = memcmp(&a, &b, sizeof a) == 0;
            break;
        }
        case CF_LOSS:
        case CF_BLOCK:
        case CF_FORMAT:
        case CF_UNIT:
        case CF_FUNIT:
            same = f_get_enum(c, f) == f_get_enum(d, f);
            break;
        case CF_STR:
            same = strncmp(f_get_str(c, f), f_get_str(d, f), FP_CONFIG_STR_MAX + 1) == 0;
            break;
        default:
            same = f_get_int(c, f) == f_get_int(d, f);
            break;
        }
        if (!same)
            return 0;
    }
    return 1;
}

fp_status fp_config_to_json(const fp_config_t *c, char **out)
{
    if (!c || !out)
        return FP_FAIL(FP_ERR_INVALID, "fp_config_to_json: NULL argument");
    *out = NULL;
    for (size_t i = 0; i < N_FIELDS; i++) {
        int sec = section_index(g_fields[i].section, strlen(g_fields[i].section));
        if (g_sections[sec].travels && g_fields[i].type == CF_FLOAT && !isfinite(f_get_float(c, &g_fields[i])))
            return FP_FAIL(FP_ERR_RANGE, "config: %s.%s is not finite", g_fields[i].section, g_fields[i].key);
    }
    json_object *root = json_object_new_object();
    if (!root)
        return FP_FAIL(FP_ERR_NOMEM, "config JSON");
    fp_status st = FP_OK;
    fp_config_t defaults;
    fp_config_defaults(&defaults);
    for (size_t s = 0; s < N_SECTIONS && st == FP_OK; s++) {
        const char *sname = g_sections[s].name;
        if (!g_sections[s].travels)
            continue; /* server, client: this machine's own paths and addresses */
        /* dp and federation: left out while they hold the defaults (no DP; centralised training),
         * so that such files stay what they were before the sections existed, and readable by
         * builds that predate them */
        if ((strcmp(sname, "dp") == 0 || strcmp(sname, "federation") == 0) && section_is_default(c, &defaults, sname))
            continue;
        json_object *sec = json_object_new_object();
        if (add(root, sname, sec) != 0) {
            st = FP_FAIL(FP_ERR_NOMEM, "config JSON");
            break;
        }
        for (size_t i = 0; i < N_FIELDS; i++) {
            const cf_field *f = &g_fields[i];
            if (strcmp(f->section, sname) != 0)
                continue;
            json_object *v = NULL;
            switch (f->type) {
            case CF_INT:
                v = json_object_new_int(f_get_int(c, f));
                break;
            case CF_U64:
                v = json_object_new_uint64(f_get_u64(c, f));
                break;
            case CF_FLOAT:
                v = float_json(f_get_float(c, f));
                break;
            case CF_BOOL:
                v = json_object_new_boolean(f_get_int(c, f) != 0);
                break;
            case CF_STR: /* no travelling section has one yet */
                v = json_object_new_string_len(f_get_str(c, f),
                                               (int)strnlen(f_get_str(c, f), FP_CONFIG_STR_MAX));
                break;
            case CF_LOSS:
            case CF_BLOCK:
            case CF_FORMAT:
            case CF_UNIT:
            case CF_FUNIT: {
                int e = f_get_enum(c, f), count;
                const char *const *names = enum_names(f->type, &count);
                if (e < 0 || e >= count) {
                    st = FP_FAIL(FP_ERR_RANGE, "config: %s.%s has unknown value %d", f->section, f->key, e);
                    break;
                }
                v = json_object_new_string(names[e]);
                break;
            }
            }
            if (st != FP_OK)
                break;
            if (add(sec, f->key, v) != 0) {
                st = FP_FAIL(FP_ERR_NOMEM, "config JSON");
                break;
            }
        }
    }
    if (st == FP_OK) {
        const char *s = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        *out = s ? strdup(s) : NULL;
        if (!*out)
            st = FP_FAIL(FP_ERR_NOMEM, "config JSON");
    }
    json_object_put(root);
    return st;
}

static fp_status json_field(fp_config_t *c, const cf_field *f, json_object *v)
{
    switch (f->type) {
    case CF_INT: {
        if (!json_object_is_type(v, json_type_int))
            break;
        int64_t i = json_object_get_int64(v);
        if (i < INT_MIN || i > INT_MAX)
            return FP_FAIL(FP_ERR_RANGE, "config JSON: %s.%s: integer out of range", f->section, f->key);
        *f_int(c, f) = (int)i;
        return FP_OK;
    }
    case CF_U64:
        if (!json_object_is_type(v, json_type_int))
            break;
        if (json_object_get_int64(v) < 0)
            return FP_FAIL(FP_ERR_RANGE, "config JSON: %s.%s: must be >= 0", f->section, f->key);
        *f_u64(c, f) = json_object_get_uint64(v);
        return FP_OK;
    case CF_FLOAT: {
        if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
            break;
        double d = json_object_get_double(v);
        if (!isfinite(d) || fabs(d) > FLT_MAX)
            return FP_FAIL(FP_ERR_RANGE, "config JSON: %s.%s: not a finite float", f->section, f->key);
        *f_float(c, f) = (float)d;
        return FP_OK;
    }
    case CF_BOOL:
        if (!json_object_is_type(v, json_type_boolean))
            break;
        *f_int(c, f) = json_object_get_boolean(v) ? 1 : 0;
        return FP_OK;
    case CF_STR: { /* no travelling section has one yet; checked by validate_fields */
        if (!json_object_is_type(v, json_type_string))
            break;
        int n = json_object_get_string_len(v);
        if (n < 0 || n > FP_CONFIG_STR_MAX)
            return FP_FAIL(FP_ERR_RANGE, "config JSON: %s.%s: string too long (more than %d bytes)", f->section,
                           f->key, FP_CONFIG_STR_MAX);
        const char *s = json_object_get_string(v);
        if (memchr(s, '\0', (size_t)n))
            return FP_FAIL(FP_ERR_INVALID, "config JSON: %s.%s: NUL in a string", f->section, f->key);
        memcpy(f_str(c, f), s, (size_t)n);
        f_str(c, f)[n] = '\0';
        return FP_OK;
    }
    case CF_LOSS:
    case CF_BLOCK:
    case CF_FORMAT:
    case CF_UNIT:
    case CF_FUNIT: {
        if (!json_object_is_type(v, json_type_string))
            break;
        const char *s = json_object_get_string(v);
        int count;
        const char *const *names = enum_names(f->type, &count);
        for (int k = 0; k < count; k++)
            if (strcmp(names[k], s) == 0 && strlen(s) == (size_t)json_object_get_string_len(v)) {
                f_set_enum(c, f, k);
                return FP_OK;
            }
        char pb[64];
        return FP_FAIL(FP_ERR_INVALID, "config JSON: %s.%s: expected %s, got '%s'", f->section, f->key,
                       type_name(f->type), printable(s, strlen(s), pb, sizeof pb));
    }
    }
    return FP_FAIL(FP_ERR_INVALID, "config JSON: %s.%s: expected %s", f->section, f->key, type_name(f->type));
}

fp_status fp_config_from_json(const char *json, fp_config_t *c)
{
    if (!json || !c)
        return FP_FAIL(FP_ERR_INVALID, "fp_config_from_json: NULL argument");
    size_t len = strlen(json);
    if (len > FP_CONFIG_MAX_BYTES)
        return FP_FAIL(FP_ERR_RANGE, "config JSON: %zu bytes is too large", len);
    struct json_tokener *tok = json_tokener_new_ex(4);
    if (!tok)
        return FP_FAIL(FP_ERR_NOMEM, "config JSON tokener");
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8 | JSON_TOKENER_ALLOW_TRAILING_CHARS);
    json_object *root = json_tokener_parse_ex(tok, json, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    fp_status st = FP_OK;
    if (!root || jerr != json_tokener_success) {
        st = FP_FAIL(FP_ERR_PARSE, "config JSON: %s",
                     jerr == json_tokener_continue ? "truncated" : json_tokener_error_desc(jerr));
        goto done;
    }
    for (size_t i = end; i < len; i++)
        if (!isspace((unsigned char)json[i])) {
            st = FP_FAIL(FP_ERR_PARSE, "config JSON: text after the object");
            goto done;
        }
    if (!json_object_is_type(root, json_type_object)) {
        st = FP_FAIL(FP_ERR_INVALID, "config JSON: not an object");
        goto done;
    }
    fp_config_t tmp = *c;
    char pb[64];
    json_object_object_foreach(root, sk, sv)
    {
        int sec = section_index(sk, strlen(sk));
        if (sec < 0 || !g_sections[sec].travels) { /* server, client: never set from elsewhere */
            st = FP_FAIL(FP_ERR_INVALID, "config JSON: unknown section '%s'%s",
                         printable(sk, strlen(sk), pb, sizeof pb),
                         sec >= 0 ? " (local settings are read only from this machine's YAML)" : "");
            goto done;
        }
        const char *sname = g_sections[sec].name;
        if (!json_object_is_type(sv, json_type_object)) {
            st = FP_FAIL(FP_ERR_INVALID, "config JSON: %s: expected an object", sname);
            goto done;
        }
        json_object_object_foreach(sv, k, v)
        {
            int fi = field_index(sname, k, strlen(k));
            if (fi < 0) {
                st = FP_FAIL(FP_ERR_INVALID, "config JSON: unknown key '%s.%s'", sname,
                             printable(k, strlen(k), pb, sizeof pb));
                goto done;
            }
            if ((st = json_field(&tmp, &g_fields[fi], v)) != FP_OK)
                goto done;
        }
    }
    if ((st = validate_fields(&tmp, "config JSON", NULL)) == FP_OK)
        *c = tmp;
done:
    json_object_put(root);
    return st;
}
