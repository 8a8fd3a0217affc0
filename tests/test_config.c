/* test_config: defaults, the shipped configs, overrides, every kind of error (each message must
 * name the line and the key), JSON round trips, and mutated inputs that must never crash. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/config.h"

#ifndef FEDPROF_SOURCE_DIR
#define FEDPROF_SOURCE_DIR "."
#endif

static int feq(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }
static int seq(const char *a, const char *b) { return strncmp(a, b, FP_CONFIG_STR_MAX + 1) == 0; }

/* Same value of one member in a and b: strings (SS_), floats by bits (SF_), the rest (SI_). */
#define SS_(m) seq(a->m, b->m)
#define SF_(m) feq(a->m, b->m)
#define SI_(m) (a->m == b->m)

static int server_equal(const fp_config_t *a, const fp_config_t *b)
{
    return SS_(server.listen) && SS_(server.checkpoint_dir) && SS_(server.ca) && SS_(server.cert) &&
           SS_(server.key) && SI_(server.insecure) && SS_(server.federation_id) && SI_(server.n_items) &&
           SI_(server.rounds) && SI_(server.clients_per_round) && SI_(server.min_clients) &&
           SI_(server.min_updates) && SF_(server.over_selection) && SF_(server.round_timeout_s) &&
           SF_(server.member_timeout_s) && SI_(server.uniform_weights) && SS_(server.strategy) &&
           SF_(server.server_lr) && SF_(server.momentum) && SF_(server.beta1) && SF_(server.beta2) &&
           SF_(server.tau) && SF_(server.trim_fraction) && SI_(server.init_seed) && SI_(server.select_seed) &&
           SI_(server.max_concurrent_pushes) && SI_(server.max_concurrent_pulls) && SI_(server.spill_updates);
}

static int federation_equal(const fp_config_t *a, const fp_config_t *b)
{
    return SI_(federation.local_epochs) && SI_(federation.max_steps) && SF_(federation.fedprox_mu) &&
           SI_(federation.unit) && SF_(federation.clip) && SF_(federation.noise_multiplier) &&
           SF_(federation.delta);
}

static int client_equal(const fp_config_t *a, const fp_config_t *b)
{
    return SS_(client.server) && SS_(client.ca) && SS_(client.cert) && SS_(client.key) && SI_(client.insecure) &&
           SS_(client.name) && SS_(client.out) && SS_(client.ledger_dir) && SF_(client.budget_epsilon) &&
           SF_(client.give_up_s);
}

/* The sections that travel in JSON (model, train, eval, data, dp, federation). */
static int travel_equal(const fp_config_t *a, const fp_config_t *b)
{
    return federation_equal(a, b) && a->model.n_items == b->model.n_items && a->model.dim == b->model.dim &&
           a->model.blocks == b->model.blocks && a->model.heads == b->model.heads &&
           a->model.maxlen == b->model.maxlen && feq(a->model.dropout, b->model.dropout) &&
           a->model.loss == b->model.loss && a->model.n_neg == b->model.n_neg &&
           feq(a->model.l2_emb, b->model.l2_emb) && a->train.epochs == b->train.epochs &&
           a->train.batch == b->train.batch && feq(a->train.lr, b->train.lr) && feq(a->train.beta1, b->train.beta1) &&
           feq(a->train.beta2, b->train.beta2) && feq(a->train.eps, b->train.eps) &&
           a->train.eval_every == b->train.eval_every && a->train.patience == b->train.patience &&
           a->train.seed == b->train.seed && a->train.threads == b->train.threads &&
           a->eval.negatives == b->eval.negatives && a->eval.max_users == b->eval.max_users &&
           a->eval.k == b->eval.k && a->eval.full == b->eval.full && a->eval.seed == b->eval.seed &&
           a->data.format == b->data.format && a->dp.unit == b->dp.unit &&
           feq(a->dp.noise_multiplier, b->dp.noise_multiplier) && feq(a->dp.clip, b->dp.clip) &&
           feq(a->dp.delta, b->dp.delta) && feq(a->dp.target_epsilon, b->dp.target_epsilon) &&
           a->dp.seed == b->dp.seed && feq(a->model.attn_dropout, b->model.attn_dropout) &&
           a->model.block == b->model.block;
}

/* Field-by-field equality (no memcmp over padding). */
static int cfg_equal(const fp_config_t *a, const fp_config_t *b)
{
    return travel_equal(a, b) && server_equal(a, b) && client_equal(a, b);
}

static fp_status load(const char *yaml, fp_config_t *c)
{
    return fp_config_load_string("test.yaml", yaml, strlen(yaml), c);
}

static void test_defaults(void **state)
{
    (void)state;
    fp_config_t c;
    fp_config_defaults(&c);
    assert_int_equal(c.model.n_items, 0);
    assert_int_equal(c.model.dim, 50);
    assert_int_equal(c.model.blocks, 2);
    assert_int_equal(c.model.heads, 1);
    assert_int_equal(c.model.maxlen, 50);
    assert_true(c.model.dropout == 0.5f);
    assert_int_equal(c.model.loss, FP_LOSS_BCE);
    assert_int_equal(c.model.n_neg, 1);
    assert_true(c.model.l2_emb == 0.0f);
    assert_int_equal(c.train.epochs, 200);
    assert_int_equal(c.train.batch, 128);
    assert_true(c.train.lr == 1e-3f);
    assert_true(c.train.beta1 == 0.9f);
    assert_true(c.train.beta2 == 0.98f);
    assert_true(c.train.eps == 1e-8f);
    assert_int_equal(c.train.eval_every, 20);
    assert_int_equal(c.train.patience, 0);
    assert_true(c.train.seed == 42);
    assert_int_equal(c.train.threads, 0);
    assert_int_equal(c.eval.negatives, 100);
    assert_int_equal(c.eval.max_users, 10000);
    assert_int_equal(c.eval.k, 10);
    assert_int_equal(c.eval.full, 1);
    assert_true(c.eval.seed == 2018);
    assert_int_equal(c.data.format, FP_FORMAT_AUTO);
    assert_int_equal(c.dp.unit, FP_DP_UNIT_NONE);
    assert_true(c.dp.noise_multiplier == 1.0f);
    assert_true(c.dp.clip == 1.0f);
    assert_true(c.dp.delta == 1e-5f);
    assert_true(c.dp.target_epsilon == 0.0f);
    assert_true(c.dp.seed == 0);
    assert_string_equal(c.server.listen, "0.0.0.0:7070");
    assert_string_equal(c.server.checkpoint_dir, "runs/federation");
    assert_string_equal(c.server.ca, "");
    assert_string_equal(c.server.cert, "");
    assert_string_equal(c.server.key, "");
    assert_int_equal(c.server.insecure, 0);
    assert_string_equal(c.server.federation_id, "fedprof");
    assert_int_equal(c.server.n_items, 0);
    assert_int_equal(c.server.rounds, 10);
    assert_int_equal(c.server.clients_per_round, 2);
    assert_int_equal(c.server.min_clients, 2);
    assert_int_equal(c.server.min_updates, 0);
    assert_true(c.server.over_selection == 1.0f);
    assert_true(c.server.round_timeout_s == 600.0f);
    assert_true(c.server.member_timeout_s == 60.0f);
    assert_int_equal(c.server.uniform_weights, 0);
    assert_string_equal(c.server.strategy, "fedavg");
    assert_true(c.server.server_lr == 0.0f);
    assert_true(c.server.momentum == 0.9f);
    assert_true(c.server.beta1 == 0.9f);
    assert_true(c.server.beta2 == 0.99f);
    assert_true(c.server.tau == 1e-3f);
    assert_true(c.server.trim_fraction == 0.1f);
    assert_true(c.server.init_seed == 42);
    assert_true(c.server.select_seed == 0);
    assert_int_equal(c.server.max_concurrent_pushes, 1);
    assert_int_equal(c.server.max_concurrent_pulls, 8);
    assert_int_equal(c.server.spill_updates, -1);
    assert_int_equal(c.federation.local_epochs, 1);
    assert_int_equal(c.federation.max_steps, 0);
    assert_true(c.federation.fedprox_mu == 0.0f);
    assert_int_equal(c.federation.unit, FP_FED_UNIT_NONE);
    assert_true(c.federation.clip == 0.0f);
    assert_true(c.federation.noise_multiplier == 1.0f);
    assert_true(c.federation.delta == 1e-5f);
    assert_string_equal(c.client.server, "");
    assert_string_equal(c.client.ca, "");
    assert_string_equal(c.client.cert, "");
    assert_string_equal(c.client.key, "");
    assert_int_equal(c.client.insecure, 0);
    assert_string_equal(c.client.name, "");
    assert_string_equal(c.client.out, "runs/joined");
    assert_string_equal(c.client.ledger_dir, "");
    assert_true(c.client.budget_epsilon == 0.0f);
    assert_true(c.client.give_up_s == 0.0f);
    assert_int_equal(fp_config_validate(&c), FP_OK);
}

static void test_shipped_configs(void **state)
{
    (void)state;
    fp_config_t c, d;
    fp_config_defaults(&d);
    /* centralized.yaml spells out every default (the SASRec Games settings), but for the one key
     * it sets on purpose: 400 epochs (Games' validation NDCG still rises past the default 200). */
    d.train.epochs = 400;
    fp_config_defaults(&c);
    c.model.dim = 7; /* overwritten by the file */
    fp_status st = fp_config_load(FEDPROF_SOURCE_DIR "/configs/centralized.yaml", &c);
    if (st != FP_OK)
        print_error("%s\n", fp_error_message());
    assert_int_equal(st, FP_OK);
    assert_true(cfg_equal(&c, &d));
    /* Every key of the schema appears in it (so the file documents all of them). */
    fp_config_t probe;
    memset(&probe, 0, sizeof probe);
    fp_config_defaults(&probe);
    probe.model.dim = 64;
    probe.model.heads = 64;
    probe.model.blocks = 9;
    probe.model.maxlen = 9;
    probe.model.dropout = 0.25f;
    probe.model.loss = FP_LOSS_SAMPLED_SOFTMAX;
    probe.model.n_neg = 9;
    probe.model.l2_emb = 0.25f;
    probe.train.epochs = 9;
    probe.train.batch = 9;
    probe.train.lr = 0.25f;
    probe.train.beta1 = 0.25f;
    probe.train.beta2 = 0.25f;
    probe.train.eps = 0.25f;
    probe.train.eval_every = 9;
    probe.train.patience = 9;
    probe.train.seed = 9;
    probe.train.threads = 9;
    probe.eval.negatives = 9;
    probe.eval.max_users = 9;
    probe.eval.k = 9;
    probe.eval.full = 0;
    probe.eval.seed = 9;
    probe.data.format = FP_FORMAT_CSV;
    probe.dp.unit = FP_DP_UNIT_RECORD;
    probe.dp.noise_multiplier = 0.25f;
    probe.dp.clip = 0.25f;
    probe.dp.delta = 0.25f;
    probe.dp.target_epsilon = 0.25f;
    probe.dp.seed = 9;
    assert_int_equal(fp_config_load(FEDPROF_SOURCE_DIR "/configs/centralized.yaml", &probe), FP_OK);
    assert_true(cfg_equal(&probe, &d));

    /* server.yaml spells out every server: and federation: default (n_items 0 included: the
     * loader allows it, fedprof-server asks for it) and the Games model, which are the defaults
     * too; client.yaml every client: default. A probe with every such key changed must come
     * back as the defaults, so no key is missing from the files. */
    fp_config_defaults(&d);
    fp_config_defaults(&c);
    st = fp_config_load(FEDPROF_SOURCE_DIR "/configs/server.yaml", &c);
    if (st != FP_OK)
        print_error("%s\n", fp_error_message());
    assert_int_equal(st, FP_OK);
    assert_true(cfg_equal(&c, &d));
    fp_config_defaults(&probe);
    snprintf(probe.server.listen, sizeof probe.server.listen, "x");
    snprintf(probe.server.checkpoint_dir, sizeof probe.server.checkpoint_dir, "x");
    snprintf(probe.server.ca, sizeof probe.server.ca, "x");
    snprintf(probe.server.cert, sizeof probe.server.cert, "x");
    snprintf(probe.server.key, sizeof probe.server.key, "x");
    probe.server.insecure = 1;
    snprintf(probe.server.federation_id, sizeof probe.server.federation_id, "x");
    probe.server.n_items = 9;
    probe.server.rounds = 9;
    probe.server.clients_per_round = 9;
    probe.server.min_clients = 9;
    probe.server.min_updates = 9;
    probe.server.over_selection = 9;
    probe.server.round_timeout_s = 9;
    probe.server.member_timeout_s = 9;
    probe.server.uniform_weights = 1;
    snprintf(probe.server.strategy, sizeof probe.server.strategy, "median");
    probe.server.server_lr = 9;
    probe.server.momentum = 0.25f;
    probe.server.beta1 = 0.25f;
    probe.server.beta2 = 0.25f;
    probe.server.tau = 9;
    probe.server.trim_fraction = 0.25f;
    probe.server.init_seed = 9;
    probe.server.select_seed = 9;
    probe.federation.local_epochs = 9;
    probe.federation.max_steps = 9;
    probe.federation.fedprox_mu = 9;
    probe.federation.unit = FP_FED_UNIT_CLIENT;
    probe.federation.clip = 9;
    probe.federation.noise_multiplier = 9;
    probe.federation.delta = 0.25f;
    probe.model.dim = 64;
    probe.model.heads = 64;
    probe.model.blocks = 9;
    probe.model.maxlen = 9;
    probe.model.dropout = 0.25f;
    probe.train.batch = 9;
    probe.train.lr = 0.25f;
    probe.eval.negatives = 9;
    probe.eval.max_users = 9;
    probe.eval.k = 9;
    probe.eval.full = 0;
    probe.eval.seed = 9;
    st = fp_config_load(FEDPROF_SOURCE_DIR "/configs/server.yaml", &probe);
    if (st != FP_OK)
        print_error("%s\n", fp_error_message());
    assert_int_equal(st, FP_OK);
    assert_true(cfg_equal(&probe, &d));

    fp_config_defaults(&c);
    st = fp_config_load(FEDPROF_SOURCE_DIR "/configs/client.yaml", &c);
    if (st != FP_OK)
        print_error("%s\n", fp_error_message());
    assert_int_equal(st, FP_OK);
    assert_true(cfg_equal(&c, &d));
    fp_config_defaults(&probe);
    snprintf(probe.client.server, sizeof probe.client.server, "x");
    snprintf(probe.client.ca, sizeof probe.client.ca, "x");
    snprintf(probe.client.cert, sizeof probe.client.cert, "x");
    snprintf(probe.client.key, sizeof probe.client.key, "x");
    probe.client.insecure = 1;
    snprintf(probe.client.name, sizeof probe.client.name, "x");
    snprintf(probe.client.out, sizeof probe.client.out, "x");
    snprintf(probe.client.ledger_dir, sizeof probe.client.ledger_dir, "x");
    probe.client.budget_epsilon = 9;
    probe.client.give_up_s = 9;
    assert_int_equal(fp_config_load(FEDPROF_SOURCE_DIR "/configs/client.yaml", &probe), FP_OK);
    assert_true(cfg_equal(&probe, &d));

    /* Any other shipped config loads too. */
    const char *others[] = {"/configs/demo.yaml", "/configs/dp-record.yaml"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        char p[1024];
        snprintf(p, sizeof p, "%s%s", FEDPROF_SOURCE_DIR, others[i]);
        if (access(p, R_OK) != 0)
            continue;
        fp_config_defaults(&c);
        st = fp_config_load(p, &c);
        if (st != FP_OK)
            print_error("%s\n", fp_error_message());
        assert_int_equal(st, FP_OK);
    }
}

static void test_overrides(void **state)
{
    (void)state;
    fp_config_t c, d;
    fp_config_defaults(&c);
    const char *y = "# comment\n"
                    "model:\n"
                    "  dim: 64        # trailing comment\n"
                    "  heads: 4\n"
                    "  loss: sampled_softmax\n"
                    "  block: sasrec\n"
                    "  negatives: +16\n"
                    "  dropout: .25\n"
                    "train:\n"
                    "  lr: 1e-3\n"
                    "  eps: 1.0E-6\n"
                    "  seed: 18446744073709551615\n"
                    "  epochs: 0\n"
                    "  threads: 8\n"
                    "eval: {k: 20, full: false, max_users: 0}\n"
                    "data:\n"
                    "  format: \"csv\"\n"
                    "dp: {unit: record, target_epsilon: 8, clip: 0.5, delta: 1e-6, seed: 3}\n";
    fp_status st = load(y, &c);
    if (st != FP_OK)
        print_error("%s\n", fp_error_message());
    assert_int_equal(st, FP_OK);
    assert_int_equal(c.model.dim, 64);
    assert_int_equal(c.model.heads, 4);
    assert_int_equal(c.model.loss, FP_LOSS_SAMPLED_SOFTMAX);
    assert_int_equal(c.model.block, FP_BLOCK_SASREC);
    assert_int_equal(c.model.n_neg, 16);
    assert_true(c.model.dropout == 0.25f);
    assert_true(c.train.lr == 1e-3f);
    assert_true(c.train.eps == 1e-6f);
    assert_true(c.train.seed == UINT64_MAX);
    assert_int_equal(c.train.epochs, 0);
    assert_int_equal(c.train.threads, 8);
    assert_int_equal(c.eval.k, 20);
    assert_int_equal(c.eval.full, 0);
    assert_int_equal(c.eval.max_users, 0);
    assert_int_equal(c.data.format, FP_FORMAT_CSV);
    assert_int_equal(c.dp.unit, FP_DP_UNIT_RECORD);
    assert_true(c.dp.target_epsilon == 8.0f && c.dp.clip == 0.5f && c.dp.delta == 1e-6f && c.dp.seed == 3);
    assert_true(c.dp.noise_multiplier == 1.0f);
    /* Untouched keys keep their values. */
    fp_config_defaults(&d);
    assert_int_equal(c.model.blocks, d.model.blocks);
    assert_int_equal(c.train.batch, d.train.batch);
    assert_true(c.eval.seed == d.eval.seed);

    /* A file applies over what is already there, not over the defaults. */
    c.model.n_items = 77;
    assert_int_equal(load("train:\n  batch: 32\n", &c), FP_OK);
    assert_int_equal(c.train.batch, 32);
    assert_int_equal(c.model.dim, 64);
    assert_int_equal(c.model.n_items, 77);

    /* Booleans and integer spellings of the core schema. */
    assert_int_equal(load("eval:\n  full: True\n", &c), FP_OK);
    assert_int_equal(c.eval.full, 1);
    assert_int_equal(load("eval:\n  full: FALSE\n", &c), FP_OK);
    assert_int_equal(c.eval.full, 0);
    assert_int_equal(load("model:\n  l2_emb: 1\n", &c), FP_OK); /* an integer is a fine float */
    assert_true(c.model.l2_emb == 1.0f);
    assert_int_equal(load("model:\n  loss: 'bce'\n  negatives: 1\n", &c), FP_OK);
    assert_int_equal(c.model.loss, FP_LOSS_BCE);
    assert_int_equal(load("model:\n  blocks: 0\n", &c), FP_OK);
    assert_int_equal(c.model.blocks, 0);
    assert_int_equal(load("train:\n  seed: -0\n", &c), FP_OK);
    assert_true(c.train.seed == 0);
    /* Tabs as separators (not before an indicator) are fine; quoted names too. */
    assert_int_equal(load("model:\n  dim: 32\t# a tab before a comment\n  \"heads\": 2\n", &c), FP_OK);
    assert_int_equal(c.model.dim, 32);
    assert_int_equal(c.model.heads, 2);
    assert_int_equal(load("'data': {'format': 'text'}\n", &c), FP_OK);
    assert_int_equal(c.data.format, FP_FORMAT_TEXT);
}

static void test_federation_sections(void **state)
{
    (void)state;
    fp_config_t c, d;
    fp_config_defaults(&c);
    const char *y = "server:\n"
                    "  listen: 127.0.0.1:9000\n"
                    "  checkpoint_dir: '/srv/fed runs/ckpt'\n"
                    "  ca: \"certs/ca.pem\"\n"
                    "  cert: certs/server.pem\n"
                    "  key: certs/server.key\n"
                    "  insecure: true\n"
                    "  federation_id: games-2024\n"
                    "  n_items: 17517\n"
                    "  rounds: 50\n"
                    "  clients_per_round: 8\n"
                    "  min_clients: 4\n"
                    "  min_updates: 6\n"
                    "  over_selection: 1.5\n"
                    "  round_timeout_s: 120\n"
                    "  member_timeout_s: 30.5\n"
                    "  uniform_weights: true\n"
                    "  strategy: trimmed_mean\n"
                    "  server_lr: 0.5\n"
                    "  momentum: 0\n"
                    "  beta1: 0.8\n"
                    "  beta2: 0.999\n"
                    "  tau: 1e-9\n"
                    "  trim_fraction: 0.2\n"
                    "  init_seed: 7\n"
                    "  select_seed: 18446744073709551615\n"
                    "  max_concurrent_pushes: 4\n"
                    "  max_concurrent_pulls: 1\n"
                    "  spill_updates: 1\n"
                    "federation: {local_epochs: 2, max_steps: 500, fedprox_mu: 0.01, unit: client, clip: 2.5,\n"
                    "             noise_multiplier: 0.8, delta: 1e-6}\n"
                    "client:\n"
                    "  server: coordinator.example.org:7070\n"
                    "  ca: C:\\certs\\ca.pem\n"
                    "  cert: 'it''s.pem'\n"
                    "  key: \"a\\\\b\\\"c\\/d.key\"\n"
                    "  insecure: false\n"
                    "  name: 7070\n"
                    "  out: ~\n"
                    "  ledger_dir:\n"
                    "  budget_epsilon: 8\n"
                    "  give_up_s: 3600\n";
    fp_status st = load(y, &c);
    if (st != FP_OK)
        print_error("%s\n", fp_error_message());
    assert_int_equal(st, FP_OK);
    assert_string_equal(c.server.listen, "127.0.0.1:9000");
    assert_string_equal(c.server.checkpoint_dir, "/srv/fed runs/ckpt");
    assert_string_equal(c.server.ca, "certs/ca.pem");
    assert_string_equal(c.server.cert, "certs/server.pem");
    assert_string_equal(c.server.key, "certs/server.key");
    assert_int_equal(c.server.insecure, 1);
    assert_string_equal(c.server.federation_id, "games-2024");
    assert_int_equal(c.server.n_items, 17517);
    assert_int_equal(c.server.rounds, 50);
    assert_int_equal(c.server.clients_per_round, 8);
    assert_int_equal(c.server.min_clients, 4);
    assert_int_equal(c.server.min_updates, 6);
    assert_true(c.server.over_selection == 1.5f);
    assert_true(c.server.round_timeout_s == 120.0f);
    assert_true(c.server.member_timeout_s == 30.5f);
    assert_int_equal(c.server.uniform_weights, 1);
    assert_string_equal(c.server.strategy, "trimmed_mean");
    assert_true(c.server.server_lr == 0.5f);
    assert_true(c.server.momentum == 0.0f);
    assert_true(c.server.beta1 == 0.8f);
    assert_true(c.server.beta2 == 0.999f);
    assert_true(c.server.tau == 1e-9f);
    assert_true(c.server.trim_fraction == 0.2f);
    assert_true(c.server.init_seed == 7);
    assert_true(c.server.select_seed == UINT64_MAX);
    assert_int_equal(c.server.max_concurrent_pushes, 4);
    assert_int_equal(c.server.max_concurrent_pulls, 1);
    assert_int_equal(c.server.spill_updates, 1);
    assert_int_equal(c.federation.local_epochs, 2);
    assert_int_equal(c.federation.max_steps, 500);
    assert_true(c.federation.fedprox_mu == 0.01f);
    assert_int_equal(c.federation.unit, FP_FED_UNIT_CLIENT);
    assert_true(c.federation.clip == 2.5f);
    assert_true(c.federation.noise_multiplier == 0.8f);
    assert_true(c.federation.delta == 1e-6f);
    assert_string_equal(c.client.server, "coordinator.example.org:7070");
    assert_string_equal(c.client.ca, "C:\\certs\\ca.pem"); /* plain: backslashes are text */
    assert_string_equal(c.client.cert, "it's.pem");
    assert_string_equal(c.client.key, "a\\b\"c/d.key");
    assert_int_equal(c.client.insecure, 0);
    assert_string_equal(c.client.name, "7070"); /* any scalar's text */
    assert_string_equal(c.client.out, "");      /* null: unset */
    assert_string_equal(c.client.ledger_dir, "");
    assert_true(c.client.budget_epsilon == 8.0f);
    assert_true(c.client.give_up_s == 3600.0f);
    /* Other sections untouched. */
    fp_config_defaults(&d);
    assert_int_equal(c.model.dim, d.model.dim);
    assert_int_equal(c.train.batch, d.train.batch);
    assert_int_equal(fp_config_validate(&c), FP_OK);

    /* Every strategy name; a string of exactly FP_CONFIG_STR_MAX bytes; unit record. */
    const char *strategies[] = {"fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "median", "trimmed_mean"};
    for (size_t i = 0; i < sizeof strategies / sizeof strategies[0]; i++) {
        char buf[128];
        snprintf(buf, sizeof buf, "server:\n  strategy: '%s'\n", strategies[i]);
        assert_int_equal(load(buf, &c), FP_OK);
        assert_string_equal(c.server.strategy, strategies[i]);
    }
    char *big = malloc(FP_CONFIG_STR_MAX + 64);
    assert_non_null(big);
    int at = snprintf(big, 64, "client:\n  name: ");
    memset(big + at, 'n', FP_CONFIG_STR_MAX);
    memcpy(big + at + FP_CONFIG_STR_MAX, "\n", 2);
    assert_int_equal(fp_config_load_string("t", big, (size_t)at + FP_CONFIG_STR_MAX + 1, &c), FP_OK);
    assert_int_equal((int)strlen(c.client.name), FP_CONFIG_STR_MAX);
    free(big);
    assert_int_equal(load("federation:\n  unit: record\n  clip: 1\n", &c), FP_OK);
    assert_int_equal(c.federation.unit, FP_FED_UNIT_RECORD);
    /* UTF-8 text is fine. */
    assert_int_equal(load("client:\n  name: \"partner-\xc3\xa9\"\n", &c), FP_OK);
    assert_string_equal(c.client.name, "partner-\xc3\xa9");
}

static void test_empty_documents(void **state)
{
    (void)state;
    fp_config_t c, d;
    fp_config_defaults(&d);
    const char *empties[] = {"", "\n\n", "# only a comment\n", "---\n", "---\n...\n", "~\n", "null\n",
                             "model:\n", "model:\n  # dim: 5\ntrain: ~\n", "%YAML 1.2\n---\n", "\xef\xbb\xbf"};
    for (size_t i = 0; i < sizeof empties / sizeof empties[0]; i++) {
        fp_config_defaults(&c);
        fp_status st = load(empties[i], &c);
        if (st != FP_OK)
            print_error("case %zu: %s\n", i, fp_error_message());
        assert_int_equal(st, FP_OK);
        assert_true(cfg_equal(&c, &d));
    }
    assert_int_equal(fp_config_load_string(NULL, NULL, 0, &c), FP_OK);
    assert_int_equal(fp_config_load_string("x", NULL, 3, &c), FP_ERR_INVALID);
    assert_int_equal(fp_config_load_string("x", "", 0, NULL), FP_ERR_INVALID);
}

typedef struct {
    const char *yaml;
    fp_status want;
    int line;        /* expected in the message as "test.yaml:<line>:"; 0 = only "test.yaml" */
    const char *key; /* expected in the message; NULL = nothing more */
} err_case;

static const err_case g_errors[] = {
    /* Unknown names. */
    {"foo:\n  a: 1\n", FP_ERR_INVALID, 1, "foo"},
    {"model:\n  dim: 5\n  dimm: 3\n", FP_ERR_INVALID, 3, "model.dimm"},
    {"train:\n  batch: 5\neval:\n  lr: 0.1\n", FP_ERR_INVALID, 4, "eval.lr"},
    {"model:\n  Dim: 5\n", FP_ERR_INVALID, 2, "model.Dim"},
    {"model:\n  <<: {dim: 5}\n", FP_ERR_INVALID, 2, "model.<<"},
    /* Wrong types. */
    {"model:\n  dim: abc\n", FP_ERR_INVALID, 2, "model.dim"},
    {"model:\n  dim: \"50\"\n", FP_ERR_INVALID, 2, "model.dim"},
    {"model:\n  dim: 0x10\n", FP_ERR_INVALID, 2, "model.dim"},
    {"model:\n  dim: true\n", FP_ERR_INVALID, 2, "model.dim"},
    {"train:\n  epochs: 1.5\n", FP_ERR_INVALID, 2, "train.epochs"},
    {"train:\n  epochs: 1e3\n", FP_ERR_INVALID, 2, "train.epochs"},
    {"train:\n  lr: [1, 2]\n", FP_ERR_INVALID, 2, "train.lr"},
    {"train:\n  lr: {a: 1}\n", FP_ERR_INVALID, 2, "train.lr"},
    {"train:\n  lr:\n", FP_ERR_INVALID, 2, "train.lr"},
    {"train:\n  lr: ~\n", FP_ERR_INVALID, 2, "train.lr"},
    {"train:\n  lr: '0.1'\n", FP_ERR_INVALID, 2, "train.lr"},
    {"train:\n  lr: 1,5\n", FP_ERR_INVALID, 2, "train.lr"},
    {"train:\n  seed: abc\n", FP_ERR_INVALID, 2, "train.seed"},
    {"eval:\n  full: 1\n", FP_ERR_INVALID, 2, "eval.full"},
    {"eval:\n  full: yes\n", FP_ERR_INVALID, 2, "eval.full"},
    {"model:\n  loss: hinge\n", FP_ERR_INVALID, 2, "model.loss"},
    {"model:\n  block: postnorm\n", FP_ERR_INVALID, 2, "model.block"},
    {"model:\n  block: 1\n", FP_ERR_INVALID, 2, "model.block"},
    {"model:\n  loss: [bce]\n", FP_ERR_INVALID, 2, "model.loss"},
    {"data:\n  format: parquet\n", FP_ERR_INVALID, 2, "data.format"},
    {"dp:\n  unit: client\n", FP_ERR_INVALID, 2, "dp.unit"},
    {"dp:\n  unit: true\n", FP_ERR_INVALID, 2, "dp.unit"},
    {"dp:\n  clip: 0\n", FP_ERR_RANGE, 2, "dp.clip"},
    {"dp:\n  clip: -1\n", FP_ERR_RANGE, 2, "dp.clip"},
    {"dp:\n  delta: 1\n", FP_ERR_RANGE, 2, "dp.delta"},
    {"dp:\n  delta: 0\n", FP_ERR_RANGE, 2, "dp.delta"},
    {"dp:\n  noise_multiplier: -0.5\n", FP_ERR_RANGE, 2, "dp.noise_multiplier"},
    {"dp:\n  target_epsilon: -1\n", FP_ERR_RANGE, 2, "dp.target_epsilon"},
    {"dp:\n  seed: -1\n", FP_ERR_RANGE, 2, "dp.seed"},
    {"dp:\n  epsilon: 8\n", FP_ERR_INVALID, 2, "dp.epsilon"},
    {"model: 5\n", FP_ERR_INVALID, 1, "model"},
    {"model:\n  - dim\n", FP_ERR_INVALID, 1, "model"},
    {"- a\n- b\n", FP_ERR_INVALID, 1, "top level"},
    {"42\n", FP_ERR_INVALID, 1, "top level"},
    {"hello\n", FP_ERR_INVALID, 1, "top level"},
    {"model:\n  ? [a]\n  : 1\n", FP_ERR_INVALID, 3, "model"},
    /* Integer overflow. */
    {"model:\n  dim: 99999999999999999999\n", FP_ERR_RANGE, 2, "model.dim"},
    {"train:\n  epochs: 2147483648\n", FP_ERR_RANGE, 2, "train.epochs"},
    {"train:\n  patience: -2147483649\n", FP_ERR_RANGE, 2, "train.patience"},
    {"train:\n  seed: 18446744073709551616\n", FP_ERR_RANGE, 2, "train.seed"},
    {"train:\n  seed: -1\n", FP_ERR_RANGE, 2, "train.seed"},
    {"train:\n  lr: 1e39\n", FP_ERR_RANGE, 2, "train.lr"},
    {"train:\n  lr: 1e99999\n", FP_ERR_RANGE, 2, "train.lr"},
    /* Out of range. */
    {"model:\n  dim: 0\n", FP_ERR_RANGE, 2, "model.dim"},
    {"model:\n  dim: 4097\n", FP_ERR_RANGE, 2, "model.dim"},
    {"model:\n  dim: -5\n", FP_ERR_RANGE, 2, "model.dim"},
    {"model:\n  dim: 50\n  heads: 3\n", FP_ERR_RANGE, 3, "model.heads"},
    {"model:\n  heads: 0\n", FP_ERR_RANGE, 2, "model.heads"},
    {"model:\n  blocks: -1\n", FP_ERR_RANGE, 2, "model.blocks"},
    {"model:\n  blocks: 65\n", FP_ERR_RANGE, 2, "model.blocks"},
    {"model:\n  maxlen: 0\n", FP_ERR_RANGE, 2, "model.maxlen"},
    {"model:\n  maxlen: 4097\n", FP_ERR_RANGE, 2, "model.maxlen"},
    {"model:\n  dropout: 1.0\n", FP_ERR_RANGE, 2, "model.dropout"},
    {"model:\n  dropout: -0.1\n", FP_ERR_RANGE, 2, "model.dropout"},
    {"model:\n  negatives: 0\n", FP_ERR_RANGE, 2, "model.negatives"},
    {"model:\n  l2_emb: -1\n", FP_ERR_RANGE, 2, "model.l2_emb"},
    {"train:\n  lr: 0\n", FP_ERR_RANGE, 2, "train.lr"},
    {"train:\n  lr: -0.001\n", FP_ERR_RANGE, 2, "train.lr"},
    {"train:\n  lr: 1e-50\n", FP_ERR_RANGE, 2, "train.lr"},
    {"train:\n  lr: .nan\n", FP_ERR_RANGE, 2, "train.lr"},
    {"train:\n  lr: .inf\n", FP_ERR_RANGE, 2, "train.lr"},
    {"train:\n  lr: -.Inf\n", FP_ERR_RANGE, 2, "train.lr"},
    {"train:\n  batch: 0\n", FP_ERR_RANGE, 2, "train.batch"},
    {"train:\n  batch: 65537\n", FP_ERR_RANGE, 2, "train.batch"},
    {"train:\n  epochs: -1\n", FP_ERR_RANGE, 2, "train.epochs"},
    {"train:\n  beta1: 1\n", FP_ERR_RANGE, 2, "train.beta1"},
    {"train:\n  beta2: 1.0\n", FP_ERR_RANGE, 2, "train.beta2"},
    {"train:\n  eps: 0\n", FP_ERR_RANGE, 2, "train.eps"},
    {"train:\n  eval_every: -1\n", FP_ERR_RANGE, 2, "train.eval_every"},
    {"train:\n  patience: -3\n", FP_ERR_RANGE, 2, "train.patience"},
    {"train:\n  threads: -1\n", FP_ERR_RANGE, 2, "train.threads"},
    {"eval:\n  k: 0\n", FP_ERR_RANGE, 2, "eval.k"},
    {"eval:\n  negatives: 0\n", FP_ERR_RANGE, 2, "eval.negatives"},
    {"eval:\n  max_users: -1\n", FP_ERR_RANGE, 2, "eval.max_users"},
    /* Duplicates. */
    {"model:\n  dim: 5\n  dim: 6\n", FP_ERR_INVALID, 3, "model.dim"},
    {"model:\n  dim: 5\ntrain:\n  lr: 0.1\nmodel:\n  heads: 1\n", FP_ERR_INVALID, 5, "model"},
    {"model: {dim: 5, dim: 5}\n", FP_ERR_INVALID, 1, "model.dim"},
    /* YAML features we refuse. */
    {"model:\n  dim: &a 5\n  maxlen: *a\n", FP_ERR_INVALID, 3, "model.maxlen"},
    {"model:\n  dim: !!int 5\n", FP_ERR_INVALID, 2, "model.dim"},
    {"model: &m\n  dim: 5\ntrain: *m\n", FP_ERR_INVALID, 3, "train"},
    {"model:\n  dim: 5\n---\nmodel:\n  dim: 6\n", FP_ERR_PARSE, 0, NULL},
    /* Syntax errors, bad bytes. */
    {"model:\n  dim: 5\n heads: 2\n", FP_ERR_PARSE, 3, NULL},
    {"model:\n  loss: 'bce\n", FP_ERR_PARSE, 2, NULL},
    {"model:\n  dim: [1\n", FP_ERR_PARSE, -1, NULL},
    {"model: {dim: 5\n", FP_ERR_PARSE, -1, NULL},
    {"model:\n\tdim: 5\n", FP_ERR_PARSE, -1, NULL},
    {"model:\n  dim: \xff\n", FP_ERR_PARSE, 2, NULL},
    {"model:\n  dim: \xc0\x80\n", FP_ERR_PARSE, 2, NULL},
    {"\xff\xfe" "m\0o\0", FP_ERR_PARSE, 1, NULL},
    /* Tabs before block indicators: refused before libfyaml 0.7.12 sees them (it crashes). */
    {"? r:\t-", FP_ERR_PARSE, 1, "tab"},
    {"model:\n  dim: 5\n  ? a\n  :\t- b\n", FP_ERR_PARSE, 4, "tab"},
    /* Quoted scalars with escapes never match a name (and are not unescaped by libfyaml). */
    {"model:\n  loss: 'bc''e'\n", FP_ERR_INVALID, 2, "model.loss"},
    {"model:\n  loss: \"bc\\x65\"\n", FP_ERR_INVALID, 2, "model.loss"},
    {"model:\n  \"di\\u006d\": 5\n", FP_ERR_INVALID, 2, "unknown key"},
    {"'''''''''''''''''''''''''''''''''''''''''''''''': 1\n", FP_ERR_INVALID, 1, "unknown section"},
    {"model:\n  loss: 'bce\n    '\n", FP_ERR_INVALID, 2, "model.loss"},
    /* server, federation, client. */
    {"server:\n  listen: [a, b]\n", FP_ERR_INVALID, 2, "server.listen: expected a string, got a sequence"},
    {"server:\n  ca: {path: x}\n", FP_ERR_INVALID, 2, "server.ca: expected a string, got a mapping"},
    {"client:\n  out:\n    dir: x\n", FP_ERR_INVALID, 2, "client.out: expected a string"},
    {"client:\n  name: \"a\\tb\"\n", FP_ERR_INVALID, 2, "client.name: escape"},
    {"client:\n  name: a\tb\n", FP_ERR_INVALID, 2, "client.name: control character 0x09"},
    {"client:\n  name: \"a\x7f\"\n", FP_ERR_INVALID, 2, "client.name: control character 0x7f"},
    {"client:\n  name: |\n    two\n    lines\n", FP_ERR_INVALID, 2, "client.name: control character 0x0a"},
    {"client:\n  name: 'two\n    lines'\n", FP_ERR_INVALID, 2, "client.name: a quoted string must be on one line"},
    {"client:\n  ca: &a x\n  key: *a\n", FP_ERR_INVALID, 3, "client.key: aliases"},
    {"client:\n  ca: !!str x\n", FP_ERR_INVALID, 2, "client.ca: tags"},
    {"client:\n  nmae: x\n", FP_ERR_INVALID, 2, "client.nmae"},
    {"client:\n  name: a\n  name: b\n", FP_ERR_INVALID, 3, "client.name"},
    {"server:\n  strategy: fedsgd\n", FP_ERR_INVALID, 2, "server.strategy: expected fedavg"},
    {"server:\n  strategy: FedAvg\n", FP_ERR_INVALID, 2, "server.strategy"},
    {"server:\n  strategy: ''\n", FP_ERR_INVALID, 2, "server.strategy"},
    {"server:\n  strategy:\n", FP_ERR_INVALID, 2, "server.strategy"},
    {"server:\n  strategy: \"fed\\\"avg\"\n", FP_ERR_INVALID, 2, "server.strategy"},
    {"federation:\n  unit: user\n", FP_ERR_INVALID, 2, "federation.unit: expected none, record or client"},
    {"federation:\n  unit: 2\n", FP_ERR_INVALID, 2, "federation.unit"},
    {"server:\n  clients_per_round: 3\n  min_updates: 4\n", FP_ERR_RANGE, 3,
     "server.min_updates: must be in [0, server.clients_per_round = 3], got 4"},
    {"server:\n  min_updates: 3\n", FP_ERR_RANGE, 2, "server.min_updates"},
    {"server:\n  min_updates: -1\n", FP_ERR_RANGE, 2, "server.min_updates"},
    {"server:\n  n_items: -1\n", FP_ERR_RANGE, 2, "server.n_items"},
    {"server:\n  n_items: 100000001\n", FP_ERR_RANGE, 2, "server.n_items"},
    {"server:\n  rounds: 0\n", FP_ERR_RANGE, 2, "server.rounds"},
    {"server:\n  spill_updates: 2\n", FP_ERR_RANGE, 2, "server.spill_updates"},
    {"server:\n  spill_updates: auto\n", FP_ERR_INVALID, 2, "server.spill_updates"},
    {"server:\n  max_concurrent_pulls: 0\n", FP_ERR_RANGE, 2, "server.max_concurrent_pulls"},
    {"server:\n  max_concurrent_pushes: 1025\n", FP_ERR_RANGE, 2, "server.max_concurrent_pushes"},
    {"server:\n  clients_per_round: 100001\n", FP_ERR_RANGE, 2, "server.clients_per_round"},
    {"server:\n  min_clients: 0\n", FP_ERR_RANGE, 2, "server.min_clients"},
    {"server:\n  over_selection: 0.5\n", FP_ERR_RANGE, 2, "server.over_selection: must be in [1, 100]"},
    {"server:\n  round_timeout_s: 0\n", FP_ERR_RANGE, 2, "server.round_timeout_s: must be in (0, 1e+07]"},
    {"server:\n  member_timeout_s: 1e8\n", FP_ERR_RANGE, 2, "server.member_timeout_s"},
    {"server:\n  server_lr: -0.1\n", FP_ERR_RANGE, 2, "server.server_lr"},
    {"server:\n  momentum: 1\n", FP_ERR_RANGE, 2, "server.momentum"},
    {"server:\n  beta1: 1.0\n", FP_ERR_RANGE, 2, "server.beta1"},
    {"server:\n  beta2: -0.5\n", FP_ERR_RANGE, 2, "server.beta2"},
    {"server:\n  tau: 0\n", FP_ERR_RANGE, 2, "server.tau"},
    {"server:\n  trim_fraction: 0.5\n", FP_ERR_RANGE, 2, "server.trim_fraction"},
    {"server:\n  insecure: 1\n", FP_ERR_INVALID, 2, "server.insecure"},
    {"server:\n  init_seed: -1\n", FP_ERR_RANGE, 2, "server.init_seed"},
    {"federation:\n  local_epochs: 0\n", FP_ERR_RANGE, 2, "federation.local_epochs"},
    {"federation:\n  max_steps: -1\n", FP_ERR_RANGE, 2, "federation.max_steps"},
    {"federation:\n  fedprox_mu: 1e7\n", FP_ERR_RANGE, 2, "federation.fedprox_mu"},
    {"federation:\n  clip: -1\n", FP_ERR_RANGE, 2, "federation.clip"},
    {"federation:\n  noise_multiplier: 10001\n", FP_ERR_RANGE, 2, "federation.noise_multiplier"},
    {"federation:\n  delta: 1\n", FP_ERR_RANGE, 2, "federation.delta"},
    {"federation:\n  delta: .nan\n", FP_ERR_RANGE, 2, "federation.delta"},
    {"client:\n  budget_epsilon: -1\n", FP_ERR_RANGE, 2, "client.budget_epsilon"},
    {"client:\n  give_up_s: 2e9\n", FP_ERR_RANGE, 2, "client.give_up_s"},
    {"client:\n  give_up_s: soon\n", FP_ERR_INVALID, 2, "client.give_up_s"},
    {"clients:\n  name: x\n", FP_ERR_INVALID, 1, "federation, server or client"},
};

static void check_error(size_t i, const char *yaml, size_t len, fp_status want, int line, const char *key)
{
    fp_config_t c, before;
    fp_config_defaults(&c);
    c.model.n_items = 3;
    c.train.batch = 99;
    before = c;
    fp_error_clear();
    fp_status st = fp_config_load_string("test.yaml", yaml, len, &c);
    const char *msg = fp_error_message();
    char want_line[64];
    if (line > 0)
        snprintf(want_line, sizeof want_line, "test.yaml:%d: ", line);
    else if (line < 0)
        snprintf(want_line, sizeof want_line, "test.yaml:"); /* some line, libfyaml's choice */
    else
        snprintf(want_line, sizeof want_line, "test.yaml");
    int ok = st == want && strstr(msg, want_line) == msg && (!key || strstr(msg, key));
    if (!ok)
        print_error("case %zu: got %d '%s', want %d '%s' ... '%s'\n", i, (int)st, msg, (int)want, want_line,
                    key ? key : "");
    assert_true(ok);
    /* On error the caller's config is untouched. */
    assert_true(cfg_equal(&c, &before));
}

static void test_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof g_errors / sizeof g_errors[0]; i++) {
        const err_case *e = &g_errors[i];
        check_error(i, e->yaml, strlen(e->yaml), e->want, e->line, e->key);
    }
    /* A NUL byte inside the text, which strlen would hide. */
    const char nul[] = "model:\n  dim: 5\0\n";
    check_error(100, nul, sizeof nul - 1, FP_ERR_PARSE, 2, NULL);
    /* Nesting deep enough to exhaust a recursive parser. */
    size_t n = 100000;
    char *deep = malloc(n + 16);
    assert_non_null(deep);
    memcpy(deep, "model: ", 7);
    memset(deep + 7, '[', n);
    check_error(101, deep, n + 7, FP_ERR_PARSE, -1, NULL);
    memset(deep + 7, '{', n);
    check_error(102, deep, n + 7, FP_ERR_PARSE, -1, NULL);
    free(deep);
    /* A string one byte too long (plain and quoted). */
    char *s = malloc(FP_CONFIG_STR_MAX + 64);
    assert_non_null(s);
    int at = snprintf(s, 64, "server:\n  listen: ");
    memset(s + at, 'a', FP_CONFIG_STR_MAX + 1);
    memcpy(s + at + FP_CONFIG_STR_MAX + 1, "\n", 2);
    check_error(104, s, strlen(s), FP_ERR_RANGE, 2, "server.listen: string too long");
    at = snprintf(s, 64, "client:\n  key: '");
    memset(s + at, 'b', FP_CONFIG_STR_MAX + 1);
    memcpy(s + at + FP_CONFIG_STR_MAX + 1, "'\n", 3);
    check_error(105, s, strlen(s), FP_ERR_RANGE, 2, "client.key: string too long");
    free(s);
    /* Too large. */
    size_t big = FP_CONFIG_MAX_BYTES + 1;
    char *b = malloc(big);
    assert_non_null(b);
    memset(b, '\n', big);
    check_error(103, b, big, FP_ERR_RANGE, 0, NULL);
    free(b);
}

static void test_error_files(void **state)
{
    (void)state;
    fp_config_t c;
    fp_config_defaults(&c);
    assert_int_equal(fp_config_load("/nonexistent-fedprof/config.yaml", &c), FP_ERR_NOT_FOUND);
    assert_non_null(strstr(fp_error_message(), "/nonexistent-fedprof/config.yaml"));
    assert_int_equal(fp_config_load(NULL, &c), FP_ERR_INVALID);

    char dir[] = "/tmp/fp_cfg_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char p[128];
    snprintf(p, sizeof p, "%s/bad.yaml", dir);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs("model:\n  dim: 64\n  heads: 4\ntrain:\n  batch: 0\n", f);
    fclose(f);
    assert_int_equal(fp_config_load(p, &c), FP_ERR_RANGE);
    char want[192];
    snprintf(want, sizeof want, "%s:5: train.batch", p);
    assert_non_null(strstr(fp_error_message(), want));
    assert_int_equal(c.model.dim, 50);

    /* Larger than the limit. */
    f = fopen(p, "wb");
    assert_non_null(f);
    for (size_t written = 0; written <= FP_CONFIG_MAX_BYTES; written += 32)
        fputs("# padding padding padding paddi\n", f); /* 32 bytes */
    fclose(f);
    assert_int_equal(fp_config_load(p, &c), FP_ERR_RANGE);
    unlink(p);

    /* A directory is not a config. */
    assert_int_not_equal(fp_config_load(dir, &c), FP_OK);
    rmdir(dir);
}

static void test_validate(void **state)
{
    (void)state;
    fp_config_t c;
    fp_config_defaults(&c);
    c.model.n_items = 1000;
    assert_int_equal(fp_config_validate(&c), FP_OK);
    c.model.dim = 64;
    c.model.heads = 3;
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    assert_non_null(strstr(fp_error_message(), "model.heads"));
    fp_config_defaults(&c);
    c.train.lr = NAN;
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    assert_non_null(strstr(fp_error_message(), "train.lr"));
    fp_config_defaults(&c);
    c.eval.full = 2;
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    fp_config_defaults(&c);
    c.model.loss = (fp_loss_kind)7;
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    assert_non_null(strstr(fp_error_message(), "model.loss"));
    fp_config_defaults(&c);
    c.data.format = (fp_data_format)-1;
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    fp_config_defaults(&c);
    c.model.n_items = -1;
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    assert_int_equal(fp_config_validate(NULL), FP_ERR_INVALID);
    /* Strings set by flags are checked too. */
    fp_config_defaults(&c);
    memset(c.client.name, 'x', sizeof c.client.name); /* not terminated */
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    assert_non_null(strstr(fp_error_message(), "client.name"));
    fp_config_defaults(&c);
    snprintf(c.server.cert, sizeof c.server.cert, "a\nb");
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    assert_non_null(strstr(fp_error_message(), "server.cert: control character"));
    fp_config_defaults(&c);
    snprintf(c.server.strategy, sizeof c.server.strategy, "scaffold");
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    assert_non_null(strstr(fp_error_message(), "server.strategy"));
    fp_config_defaults(&c);
    c.server.min_updates = 3; /* > clients_per_round = 2 */
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    assert_non_null(strstr(fp_error_message(), "server.min_updates"));
    c.server.clients_per_round = 3;
    assert_int_equal(fp_config_validate(&c), FP_OK);
    fp_config_defaults(&c);
    c.federation.unit = (fp_fed_unit)3;
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    assert_non_null(strstr(fp_error_message(), "federation.unit"));
    fp_config_defaults(&c);
    c.server.n_items = FP_DATA_MAX_ITEMS;
    c.federation.max_steps = INT_MAX;
    c.federation.clip = FLT_MAX;
    assert_int_equal(fp_config_validate(&c), FP_OK);
    c.client.give_up_s = INFINITY;
    assert_int_equal(fp_config_validate(&c), FP_ERR_RANGE);
    assert_non_null(strstr(fp_error_message(), "client.give_up_s"));
}

static void test_json_roundtrip(void **state)
{
    (void)state;
    fp_config_t a, b, d;
    char *js = NULL;
    fp_config_defaults(&a);
    assert_int_equal(fp_config_to_json(&a, &js), FP_OK);
    assert_non_null(strstr(js, "\"dim\":50"));
    assert_non_null(strstr(js, "\"lr\":0.001"));
    assert_non_null(strstr(js, "\"loss\":\"bce\""));
    assert_non_null(strstr(js, "\"full\":true"));
    assert_null(strstr(js, "\"dp\"")); /* no DP: the section is left out (files as before it existed) */
    fp_config_defaults(&b);
    b.model.dim = 8;
    b.train.lr = 0.5f;
    assert_int_equal(fp_config_from_json(js, &b), FP_OK);
    assert_true(cfg_equal(&a, &b));
    free(js);

    /* Every field changed, awkward floats included. */
    fp_config_defaults(&a);
    a.model.dim = 96;
    a.model.blocks = 3;
    a.model.heads = 6;
    a.model.maxlen = 200;
    a.model.dropout = 0.1f;
    a.model.loss = FP_LOSS_SAMPLED_SOFTMAX;
    a.model.block = FP_BLOCK_SASREC;
    a.model.n_neg = 64;
    a.model.l2_emb = 3.0e-7f;
    a.train.epochs = 7;
    a.train.batch = 256;
    a.train.lr = 0.0003f;
    a.train.beta1 = 0.85f;
    a.train.beta2 = 0.999f;
    a.train.eps = 1.17549435e-38f; /* FLT_MIN */
    a.train.eval_every = 0;
    a.train.patience = 5;
    a.train.seed = UINT64_MAX;
    a.train.threads = 3;
    a.eval.negatives = 999;
    a.eval.max_users = 0;
    a.eval.k = 20;
    a.eval.full = 0;
    a.eval.seed = (uint64_t)1 << 63;
    a.data.format = FP_FORMAT_TEXT;
    a.dp.unit = FP_DP_UNIT_RECORD;
    a.dp.noise_multiplier = 0.7f;
    a.dp.clip = 3.0e-3f;
    a.dp.delta = 1.0e-7f;
    a.dp.target_epsilon = 2.5f;
    a.dp.seed = 12345;
    assert_int_equal(fp_config_to_json(&a, &js), FP_OK);
    assert_non_null(strstr(js, "\"dp\":{\"unit\":\"record\""));
    fp_config_defaults(&b);
    fp_status st = fp_config_from_json(js, &b);
    if (st != FP_OK)
        print_error("%s\n%s\n", js, fp_error_message());
    assert_int_equal(st, FP_OK);
    assert_true(cfg_equal(&a, &b));
    free(js);

    /* Federation travels; server and client never do (local paths), and JSON leaves them alone. */
    fp_config_defaults(&a);
    a.federation.local_epochs = 3;
    a.federation.max_steps = 1000;
    a.federation.fedprox_mu = 0.01f;
    a.federation.unit = FP_FED_UNIT_CLIENT;
    a.federation.clip = 0.3f;
    a.federation.noise_multiplier = 1.1f;
    a.federation.delta = 1e-7f;
    snprintf(a.server.listen, sizeof a.server.listen, "10.0.0.1:1");
    snprintf(a.server.key, sizeof a.server.key, "/etc/secret/server.key");
    a.server.n_items = 123;
    snprintf(a.client.key, sizeof a.client.key, "/home/me/partner.key");
    snprintf(a.client.server, sizeof a.client.server, "host:1");
    assert_int_equal(fp_config_to_json(&a, &js), FP_OK);
    assert_null(strstr(js, "\"server\""));
    assert_null(strstr(js, "\"client\":{"));
    assert_null(strstr(js, "secret"));
    assert_null(strstr(js, "partner.key"));
    assert_null(strstr(js, "listen"));
    assert_non_null(strstr(js, "\"federation\":{\"local_epochs\":3"));
    assert_non_null(strstr(js, "\"unit\":\"client\""));
    fp_config_defaults(&b);
    st = fp_config_from_json(js, &b);
    if (st != FP_OK)
        print_error("%s\n%s\n", js, fp_error_message());
    assert_int_equal(st, FP_OK);
    assert_true(travel_equal(&a, &b));
    assert_true(federation_equal(&a, &b));
    fp_config_defaults(&d);
    assert_true(server_equal(&b, &d) && client_equal(&b, &d)); /* b's own, untouched */
    free(js);
    /* At its defaults the federation section is left out, like dp. */
    fp_config_defaults(&a);
    assert_int_equal(fp_config_to_json(&a, &js), FP_OK);
    assert_null(strstr(js, "\"federation\""));
    free(js);
    /* A non-finite local float does not stop the JSON (it is not in it). */
    a.client.give_up_s = NAN;
    assert_int_equal(fp_config_to_json(&a, &js), FP_OK);
    free(js);

    /* A float that prints like an integer stays a float in JSON. */
    fp_config_defaults(&a);
    a.model.l2_emb = 2.0f;
    assert_int_equal(fp_config_to_json(&a, &js), FP_OK);
    assert_non_null(strstr(js, "\"l2_emb\":2.0"));
    free(js);

    /* Non-finite values cannot be written. */
    a.train.lr = INFINITY;
    js = (char *)1;
    assert_int_equal(fp_config_to_json(&a, &js), FP_ERR_RANGE);
    assert_null(js);
    assert_int_equal(fp_config_to_json(NULL, &js), FP_ERR_INVALID);
}

static void test_json_errors(void **state)
{
    (void)state;
    const struct {
        const char *json;
        fp_status want;
        const char *key;
    } cases[] = {
        {"", FP_ERR_PARSE, NULL},
        {"{", FP_ERR_PARSE, NULL},
        {"{} x", FP_ERR_PARSE, NULL},
        {"[]", FP_ERR_INVALID, NULL},
        {"{\"modle\":{}}", FP_ERR_INVALID, "modle"},
        {"{\"model\":5}", FP_ERR_INVALID, "model"},
        {"{\"model\":{\"dimm\":5}}", FP_ERR_INVALID, "model.dimm"},
        {"{\"model\":{\"dim\":\"5\"}}", FP_ERR_INVALID, "model.dim"},
        {"{\"model\":{\"dim\":5.0}}", FP_ERR_INVALID, "model.dim"},
        {"{\"model\":{\"dim\":4294967296}}", FP_ERR_RANGE, "model.dim"},
        {"{\"model\":{\"dim\":0}}", FP_ERR_RANGE, "model.dim"},
        {"{\"model\":{\"loss\":\"hinge\"}}", FP_ERR_INVALID, "model.loss"},
        {"{\"model\":{\"loss\":1}}", FP_ERR_INVALID, "model.loss"},
        {"{\"model\":{\"block\":\"post\"}}", FP_ERR_INVALID, "model.block"},
        {"{\"model\":{\"dropout\":NaN}}", FP_ERR_RANGE, "model.dropout"},
        {"{\"train\":{\"lr\":1e300}}", FP_ERR_RANGE, "train.lr"},
        {"{\"train\":{\"lr\":\"0.1\"}}", FP_ERR_INVALID, "train.lr"},
        {"{\"train\":{\"seed\":-1}}", FP_ERR_RANGE, "train.seed"},
        {"{\"train\":{\"seed\":1.5}}", FP_ERR_INVALID, "train.seed"},
        {"{\"eval\":{\"full\":1}}", FP_ERR_INVALID, "eval.full"},
        {"{\"data\":{\"format\":null}}", FP_ERR_INVALID, "data.format"},
        {"{\"model\":{\"dim\":{\"a\":{\"b\":{}}}}}", FP_ERR_PARSE, NULL},
        /* Local sections are never read from JSON. */
        {"{\"server\":{\"listen\":\"0.0.0.0:1\"}}", FP_ERR_INVALID, "unknown section 'server'"},
        {"{\"client\":{\"key\":\"/tmp/k\"}}", FP_ERR_INVALID, "unknown section 'client'"},
        {"{\"client\":{}}", FP_ERR_INVALID, "unknown section 'client'"},
        {"{\"federation\":{\"unit\":\"user\"}}", FP_ERR_INVALID, "federation.unit"},
        {"{\"federation\":{\"unit\":2}}", FP_ERR_INVALID, "federation.unit"},
        {"{\"federation\":{\"delta\":0}}", FP_ERR_RANGE, "federation.delta"},
        {"{\"federation\":{\"local_epochs\":0}}", FP_ERR_RANGE, "federation.local_epochs"},
        {"{\"federation\":{\"listen\":\"x\"}}", FP_ERR_INVALID, "federation.listen"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fp_config_t c, before;
        fp_config_defaults(&c);
        c.train.batch = 7;
        before = c;
        fp_status st = fp_config_from_json(cases[i].json, &c);
        int ok = st == cases[i].want && (!cases[i].key || strstr(fp_error_message(), cases[i].key));
        if (!ok)
            print_error("case %zu (%s): got %d '%s'\n", i, cases[i].json, (int)st, fp_error_message());
        assert_true(ok);
        assert_true(cfg_equal(&c, &before));
    }
    /* A partial object changes only what it names. */
    fp_config_t c;
    fp_config_defaults(&c);
    assert_int_equal(fp_config_from_json("{\"model\":{\"dim\":64,\"heads\":2}} \n", &c), FP_OK);
    assert_int_equal(c.model.dim, 64);
    assert_int_equal(c.model.heads, 2);
    assert_int_equal(c.train.batch, 128);
    assert_int_equal(fp_config_from_json("{}", &c), FP_OK);
    assert_int_equal(fp_config_from_json(NULL, &c), FP_ERR_INVALID);
}

/* Mutations of a real config: every outcome is OK or an error with a message; never a crash
 * (ASan/UBSan runs make "never" meaningful). */
static void test_mutations(void **state)
{
    (void)state;
    const char *bases[] = {
        "model:\n  dim: 64   # c\n  heads: 2\n  loss: sampled_softmax\n"
        "train: {lr: 0.001, seed: 7, epochs: 3}\neval:\n  full: true\n  k: 10\ndata:\n  format: csv\n",
        "server:\n  listen: \"0.0.0.0:7070\"\n  ca: 'c''a.pem'\n  strategy: fedadam\n  min_updates: 2\n"
        "federation: {unit: client, clip: 1.5, delta: 1e-6}\nclient:\n  key: \"k\\\\e\\\"y\"\n  name: p1 # c\n",
    };
    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
        fp_config_t c;
        fp_config_defaults(&c);
        assert_int_equal(fp_config_load_string("m.yaml", bases[i], strlen(bases[i]), &c), FP_OK);
    }
    const char alphabet[] = ":-{}[],#&*!|>'\"%@` \n\t?~.0123456789eE+\\\xff\x80\xc3";
    char buf[512];
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    int oks = 0, errs = 0;
    for (int it = 0; it < 6000; it++) {
        const char *base = bases[it % 2];
        size_t n = strlen(base);
        memcpy(buf, base, n);
        size_t len = n;
        int edits = 1 + (int)(x % 4);
        for (int e = 0; e < edits; e++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t pos = (size_t)(x % len);
            char ch = alphabet[(x >> 20) % (sizeof alphabet - 1)];
            switch ((x >> 40) % 4) {
            case 0: /* replace */
                buf[pos] = ch;
                break;
            case 1: /* insert */
                if (len + 1 < sizeof buf) {
                    memmove(buf + pos + 1, buf + pos, len - pos);
                    buf[pos] = ch;
                    len++;
                }
                break;
            case 2: /* delete */
                memmove(buf + pos, buf + pos + 1, len - pos - 1);
                len--;
                break;
            default: /* truncate */
                len = pos;
                break;
            }
            if (len == 0)
                break;
        }
        fp_config_t c;
        fp_config_defaults(&c);
        fp_error_clear();
        if (fp_config_load_string("m.yaml", buf, len, &c) == FP_OK) {
            oks++;
            assert_int_equal(fp_config_validate(&c), FP_OK);
        } else {
            errs++;
            assert_true(strncmp(fp_error_message(), "m.yaml", 6) == 0);
        }
    }
    assert_true(oks > 0 && errs > 0);
}

/* Named choices from a flag: the config's own names, an error naming the key otherwise. */
static void test_set_enum(void **state)
{
    (void)state;
    fp_config_t c;
    fp_config_defaults(&c);
    assert_int_equal(fp_config_set_enum(&c, "model", "block", "sasrec"), FP_OK);
    assert_int_equal(c.model.block, FP_BLOCK_SASREC);
    assert_int_equal(fp_config_set_enum(&c, "model", "loss", "sampled_softmax"), FP_OK);
    assert_int_equal(c.model.loss, FP_LOSS_SAMPLED_SOFTMAX);
    assert_int_equal(fp_config_set_enum(&c, "data", "format", "csv"), FP_OK);
    assert_int_equal(c.data.format, FP_FORMAT_CSV);
    fp_config_t before = c;
    assert_int_equal(fp_config_set_enum(&c, "model", "block", "postnorm"), FP_ERR_INVALID);
    assert_non_null(strstr(fp_error_message(), "model.block: 'postnorm' is not prenorm or sasrec"));
    assert_int_equal(fp_config_set_enum(&c, "model", "dim", "50"), FP_ERR_INVALID); /* not a choice */
    assert_int_equal(fp_config_set_enum(&c, "model", "nope", "x"), FP_ERR_INVALID);
    assert_int_equal(fp_config_set_enum(NULL, "model", "loss", "bce"), FP_ERR_INVALID);
    assert_int_equal(c.model.block, before.model.block); /* unchanged by a refusal */
    /* the lookup alone */
    int v = -1;
    assert_int_equal(fp_config_enum_value("data", "format", "text", &v), FP_OK);
    assert_int_equal(v, FP_FORMAT_TEXT);
    assert_int_equal(fp_config_enum_value("federation", "unit", "client", &v), FP_OK);
    assert_int_equal(v, FP_FED_UNIT_CLIENT);
    assert_int_equal(fp_config_enum_value("data", "format", "xml", &v), FP_ERR_INVALID);
    assert_non_null(strstr(fp_error_message(), "data.format: 'xml' is not auto, text or csv"));
    assert_int_equal(fp_config_enum_value("model", "dim", "50", &v), FP_ERR_INVALID);
    assert_int_equal(fp_config_enum_value("data", "format", "csv", NULL), FP_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_enum),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_shipped_configs),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_federation_sections),
        cmocka_unit_test(test_empty_documents),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_error_files),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_json_roundtrip),
        cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
