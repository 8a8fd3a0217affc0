/* fedprof-server: the federation's coordinator.
 *   fedprof-server [run] [--config configs/server.yaml] [flags]   serve rounds until done
 *   fedprof-server status --server HOST:PORT [--ca F --cert F --key F | --insecure] [--json]
 * Flags override the config file; the file overrides the defaults (common/config.h). */
#include <signal.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/config.h"
#include "common/log.h"
#include "common/wire.h"
#include "common/threads_env.h"
#include "server/coordinator.h"
#include "server/status.h"
#include "server/strategy.h"

static fp_coord_t *volatile g_coord;

static void on_signal(int sig)
{
    (void)sig;
    fp_coord_t *c = g_coord;
    if (c)
        fp_coord_stop(c);
}

static int fail(const char *what)
{
    fprintf(stderr, "fedprof-server %s: error: %s\n", what, fp_error_message());
    return 1;
}

/* Copy a flag's string into a config field; refuses what does not fit. */
static int set_str(char *dst, const char *src, const char *flag)
{
    return fp_cli_set_str(dst, FP_CONFIG_STR_MAX + 1, src, "fedprof-server", flag);
}

static int wants_help(const fp_opt_t *opts)
{
    for (const fp_opt_t *o = opts; o->name; o++)
        if (!strcmp(o->name, "help"))
            return *(int *)o->dest;
    return 0;
}

/* TLS credentials from ca/cert/key, or insecure ones; NULL with a message on error. */
static fp_wire_creds_t *make_creds(int server_side, int insecure, const char *ca, const char *cert, const char *key,
                                   const char *what)
{
    fp_wire_creds_t *cr = NULL;
    if (insecure) {
        if (ca[0] || cert[0] || key[0]) {
            fprintf(stderr, "fedprof-server %s: error: --insecure excludes --ca/--cert/--key\n", what);
            return NULL;
        }
        if (fp_wire_creds_insecure(&cr) != FP_OK) {
            fail(what);
            return NULL;
        }
        return cr;
    }
    if (!ca[0] || !cert[0] || !key[0]) {
        fprintf(stderr,
                "fedprof-server %s: error: TLS needs --ca, --cert and --key (scripts/make-certs.sh makes them); "
                "plaintext only with --insecure on a loopback address\n",
                what);
        return NULL;
    }
    fp_status st = server_side ? fp_wire_server_creds_tls(ca, cert, key, &cr)
                               : fp_wire_channel_creds_tls(ca, cert, key, NULL, &cr);
    if (st != FP_OK) {
        fail(what);
        return NULL;
    }
    return cr;
}

/* ---- run ---- */

static int cmd_run(int argc, char **argv)
{
    const char *config = NULL, *listen = NULL, *ckpt = NULL, *ca = NULL, *cert = NULL, *key = NULL,
               *strategy = NULL, *unit = NULL, *fed_id = NULL;
    int help = 0, insecure = 0, quiet = 0, rounds = -1, cpr = -1, minc = -1, minu = -1, n_items = -1,
        local_epochs = -1, max_steps = -1;
    float round_timeout = -1, clip = -1, noise = -1, server_lr = -1, mu = -1;
    fp_opt_t opts[] = {
        {"config", FP_OPT_STR, &config, 0, 0, NULL, "YAML config (see configs/server.yaml)"},
        {"listen", FP_OPT_STR, &listen, 0, 0, NULL, "address to serve, e.g. 0.0.0.0:7070 (server.listen)"},
        {"rounds", FP_OPT_INT, &rounds, 1, 1e8, NULL, "rounds to commit (server.rounds)"},
        {"clients-per-round", FP_OPT_INT, &cpr, 1, 100000, NULL, "updates wanted per round"},
        {"min-clients", FP_OPT_INT, &minc, 1, 100000, NULL, "live members needed to start a round"},
        {"min-updates", FP_OPT_INT, &minu, 0, 100000, NULL, "updates needed to commit a round (0: min-clients)"},
        {"n-items", FP_OPT_INT, &n_items, 1, FP_DATA_MAX_ITEMS, NULL,
         "size of the shared item catalogue: partners' item ids are 1..N (server.n_items)"},
        {"checkpoint-dir", FP_OPT_STR, &ckpt, 0, 0, NULL, "state, checkpoints and the final model (server.checkpoint_dir)"},
        {"strategy", FP_OPT_STR, &strategy, 0, 0, NULL,
         "fedavg | fedavgm | fedadagrad | fedadam | fedyogi | median | trimmed_mean (server.strategy)"},
        {"server-lr", FP_OPT_FLOAT, &server_lr, 0, 1e6, NULL, "server learning rate (0: the strategy's default)"},
        {"round-timeout", FP_OPT_FLOAT, &round_timeout, 1e-3, 1e7, NULL, "round deadline in seconds"},
        {"local-epochs", FP_OPT_INT, &local_epochs, 1, 1e6, NULL, "client passes over its data per round"},
        {"max-steps", FP_OPT_INT, &max_steps, 0, 2e9, NULL, "cap on local steps per round (0: none)"},
        {"fedprox-mu", FP_OPT_FLOAT, &mu, 0, 1e6, NULL, "FedProx proximal coefficient (federation.fedprox_mu)"},
        {"privacy-unit", FP_OPT_STR, &unit, 0, 0, NULL, "none | record | client (federation.unit)"},
        {"clip", FP_OPT_FLOAT, &clip, 0, 1e30, NULL, "L2 clip of updates (client) or of each user (record)"},
        {"noise-multiplier", FP_OPT_FLOAT, &noise, 0, 1e4, NULL, "noise std / clip (federation.noise_multiplier)"},
        {"federation-id", FP_OPT_STR, &fed_id, 0, 0, NULL, "a name for this federation"},
        {"ca", FP_OPT_STR, &ca, 0, 0, NULL, "the federation CA certificate (PEM)"},
        {"cert", FP_OPT_STR, &cert, 0, 0, NULL, "this coordinator's certificate (PEM)"},
        {"key", FP_OPT_STR, &key, 0, 0, NULL, "its private key (PEM)"},
        {"insecure", FP_OPT_FLAG, &insecure, 0, 0, NULL, "plaintext, loopback addresses only (tests, demos)"},
        {"quiet", FP_OPT_FLAG, &quiet, 0, 0, NULL, "warnings and errors only"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    if (fp_cli_parse(argc, argv, opts) != FP_OK)
        return fail("run") + 1;
    if (wants_help(opts)) {
        printf("usage: fedprof-server [run] [--config configs/server.yaml] [options]\n\n"
               "Coordinates a federation: partners run `fedprof-client join`; after the last round the\n"
               "global model is written to CHECKPOINT_DIR/model.safetensors and the server exits 0.\n"
               "SIGINT/SIGTERM stop it after the last committed round; a restart with the same\n"
               "checkpoint dir resumes from there.\n\n");
        fp_cli_print_help(opts);
        return 0;
    }
    fp_config_t cfg;
    fp_config_defaults(&cfg);
    if (config && fp_config_load(config, &cfg) != FP_OK)
        return fail("run");
    if (set_str(cfg.server.listen, listen, "listen") || set_str(cfg.server.checkpoint_dir, ckpt, "checkpoint-dir") ||
        set_str(cfg.server.ca, ca, "ca") || set_str(cfg.server.cert, cert, "cert") ||
        set_str(cfg.server.key, key, "key") || set_str(cfg.server.strategy, strategy, "strategy") ||
        set_str(cfg.server.federation_id, fed_id, "federation-id"))
        return 2;
    if (insecure) cfg.server.insecure = 1;
    if (rounds > 0) cfg.server.rounds = rounds;
    if (cpr > 0) cfg.server.clients_per_round = cpr;
    if (minc > 0) cfg.server.min_clients = minc;
    if (minu >= 0) cfg.server.min_updates = minu;
    if (n_items > 0) cfg.server.n_items = n_items;
    if (server_lr >= 0) cfg.server.server_lr = server_lr;
    if (round_timeout > 0) cfg.server.round_timeout_s = round_timeout;
    if (local_epochs > 0) cfg.federation.local_epochs = local_epochs;
    if (max_steps >= 0) cfg.federation.max_steps = max_steps;
    if (mu >= 0) cfg.federation.fedprox_mu = mu;
    if (clip >= 0) cfg.federation.clip = clip;
    if (noise >= 0) cfg.federation.noise_multiplier = noise;
    if (unit) {
        if (!strcmp(unit, "none"))
            cfg.federation.unit = FP_FED_UNIT_NONE;
        else if (!strcmp(unit, "record"))
            cfg.federation.unit = FP_FED_UNIT_RECORD;
        else if (!strcmp(unit, "client"))
            cfg.federation.unit = FP_FED_UNIT_CLIENT;
        else {
            fprintf(stderr, "fedprof-server: error: --privacy-unit '%s' is not none, record or client\n", unit);
            return 2;
        }
    }
    if (fp_config_validate(&cfg) != FP_OK)
        return fail("run");
    if (cfg.server.n_items < 1) {
        fprintf(stderr, "fedprof-server: error: the item catalogue size is required: --n-items N or server.n_items "
                        "(partners' item ids are 1..N)\n");
        return 2;
    }
    /* Partners rank each held-out item against eval.negatives sampled ones at the very end; a
     * catalogue that small would fail every partner after the last round, so refuse it now. */
    if (cfg.eval.negatives >= cfg.server.n_items) {
        fprintf(stderr, "fedprof-server: error: eval.negatives (%d) must be smaller than the item catalogue "
                        "(--n-items %d): partners evaluate the final model against that many sampled items; "
                        "lower eval.negatives in --config\n", cfg.eval.negatives, cfg.server.n_items);
        return 2;
    }
    /* Plaintext is refused off loopback by common/wire too, but only after the checkpoint dir was
     * made and the model built: say it before touching anything. */
    if (cfg.server.insecure && !fp_wire_addr_is_loopback(cfg.server.listen)) {
        fprintf(stderr, "fedprof-server: error: --insecure (plaintext) is only allowed on a loopback address "
                        "(127.0.0.1:PORT, [::1]:PORT, localhost:PORT), not %s: use --ca/--cert/--key for TLS\n",
                cfg.server.listen);
        return 2;
    }
    fp_strategy_kind kind;
    if (fp_strategy_parse(cfg.server.strategy, &kind) != FP_OK)
        return fail("run");
    if (cfg.federation.unit != FP_FED_UNIT_NONE && !(cfg.federation.clip > 0)) {
        fprintf(stderr, "fedprof-server: error: a privacy unit needs a clip bound > 0 (--clip or federation.clip)\n");
        return 2;
    }
    fp_log_set_quiet(quiet);

    fp_wire_creds_t *creds =
        make_creds(1, cfg.server.insecure, cfg.server.ca, cfg.server.cert, cfg.server.key, "run");
    if (!creds)
        return 2;
    fp_coord_opts_t o;
    fp_coord_opts_defaults(&o);
    o.listen = cfg.server.listen;
    o.creds = creds;
    o.insecure = cfg.server.insecure;
    o.model_cfg = cfg;
    o.model_cfg.model.n_items = cfg.server.n_items;
    o.init_seed = cfg.server.init_seed;
    o.rounds = cfg.server.rounds;
    o.clients_per_round = cfg.server.clients_per_round;
    o.min_clients = cfg.server.min_clients;
    o.min_updates = cfg.server.min_updates;
    o.over_selection = cfg.server.over_selection;
    o.round_timeout_s = cfg.server.round_timeout_s;
    o.member_timeout_s = cfg.server.member_timeout_s;
    o.uniform_weights = cfg.server.uniform_weights;
    fp_strategy_defaults(&o.strategy, kind);
    if (cfg.server.server_lr > 0)
        o.strategy.server_lr = cfg.server.server_lr;
    o.strategy.momentum = cfg.server.momentum;
    o.strategy.beta1 = cfg.server.beta1;
    o.strategy.beta2 = cfg.server.beta2;
    o.strategy.tau = cfg.server.tau;
    o.strategy.trim_fraction = cfg.server.trim_fraction;
    o.plan.local_epochs = cfg.federation.local_epochs;
    o.plan.max_steps = cfg.federation.max_steps;
    o.plan.batch = cfg.train.batch;
    o.plan.lr = cfg.train.lr;
    o.plan.fedprox_mu = cfg.federation.fedprox_mu;
    o.plan.seed = cfg.train.seed;
    o.plan.clip = cfg.federation.clip;
    o.plan.unit = (fp_privacy_unit)cfg.federation.unit;
    o.plan.noise_multiplier = cfg.federation.unit != FP_FED_UNIT_NONE ? cfg.federation.noise_multiplier : 0.0;
    o.plan.delta = cfg.federation.delta;
    o.checkpoint_dir = cfg.server.checkpoint_dir;
    o.federation_id = cfg.server.federation_id;
    o.select_seed = cfg.server.select_seed;
    o.max_concurrent_pushes = cfg.server.max_concurrent_pushes;
    o.max_concurrent_pulls = cfg.server.max_concurrent_pulls;
    o.spill_updates = cfg.server.spill_updates;
    o.quiet = quiet;

    fp_coord_t *c = NULL;
    if (fp_coord_create(&o, &c) != FP_OK) {
        fp_wire_creds_destroy(creds);
        return fail("run");
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    g_coord = c;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (!quiet)
        fp_log_info("fedprof-server: serving %s on port %d (%s), %d rounds of %d clients, strategy %s, "
                    "checkpoints in %s",
                    o.federation_id, fp_coord_port(c), o.insecure ? "plaintext" : "mutual TLS", o.rounds,
                    o.clients_per_round, fp_strategy_name(kind), o.checkpoint_dir);
    fp_status st = fp_coord_run(c);
    fp_coord_stats_t s;
    fp_coord_stats(c, &s);
    g_coord = NULL;
    fp_coord_destroy(c);
    fp_wire_creds_destroy(creds);
    if (st != FP_OK)
        return fail("run");
    if (s.committed < (uint64_t)o.rounds) {
        if (!quiet)
            fp_log_info("stopped after %llu/%d committed rounds; restart with the same --checkpoint-dir to resume",
                        (unsigned long long)s.committed, o.rounds);
        return 130;
    }
    return 0;
}

/* ---- status ---- */

static int cmd_status(int argc, char **argv)
{
    const char *server = NULL, *config = NULL, *ca = NULL, *cert = NULL, *key = NULL;
    int help = 0, insecure = 0, json = 0;
    float timeout = 10;
    fp_opt_t opts[] = {
        {"server", FP_OPT_STR, &server, 0, 0, NULL, "coordinator HOST:PORT (required)"},
        {"config", FP_OPT_STR, &config, 0, 0, NULL, "take --ca/--cert/--key from this config's client: section"},
        {"ca", FP_OPT_STR, &ca, 0, 0, NULL, "the federation CA certificate (PEM)"},
        {"cert", FP_OPT_STR, &cert, 0, 0, NULL, "a certificate the CA signed (a partner's or an operator's)"},
        {"key", FP_OPT_STR, &key, 0, 0, NULL, "its private key"},
        {"insecure", FP_OPT_FLAG, &insecure, 0, 0, NULL, "plaintext (a loopback coordinator started --insecure)"},
        {"json", FP_OPT_FLAG, &json, 0, 0, NULL, "one JSON line"},
        {"timeout", FP_OPT_FLOAT, &timeout, 0.1, 3600, NULL, "seconds to wait (default 10)"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    if (fp_cli_parse(argc, argv, opts) != FP_OK)
        return fail("status") + 1;
    if (help) {
        printf("usage: fedprof-server status --server HOST:PORT [--ca F --cert F --key F | --insecure] [--json]\n\n"
               "Round, phase, participants, traffic and rejected updates of a running coordinator.\n\n");
        fp_cli_print_help(opts);
        return 0;
    }
    if (!server) {
        fprintf(stderr, "fedprof-server status: error: --server is required (see --help)\n");
        return 2;
    }
    fp_config_t cfg;
    fp_config_defaults(&cfg);
    if (config && fp_config_load(config, &cfg) != FP_OK)
        return fail("status");
    if (set_str(cfg.client.ca, ca, "ca") || set_str(cfg.client.cert, cert, "cert") || set_str(cfg.client.key, key, "key"))
        return 2;
    if (insecure)
        cfg.client.insecure = 1;
    fp_wire_creds_t *creds = make_creds(0, cfg.client.insecure, cfg.client.ca, cfg.client.cert, cfg.client.key,
                                        "status");
    if (!creds)
        return 2;
    fp_status st = fp_server_status_print(server, creds, (int)(timeout * 1000), json, stdout);
    fp_wire_creds_destroy(creds);
    return st == FP_OK ? 0 : fail("status");
}

static void usage(void)
{
    printf("usage: fedprof-server [run] [--config configs/server.yaml] [options]\n"
           "       fedprof-server status --server HOST:PORT [--ca F --cert F --key F | --insecure] [--json]\n"
           "(COMMAND --help for its options)\n");
}

/* At most two malloc arenas (glibc's default: 8 per core). common/wire runs every call on its own
 * thread and keeps freed transfer memory for reuse (its malloc tuning); with an arena per thread
 * that memory piles up in each arena: 479 -> 398-412 MB peak for a 100 MB model and 50 clients
 * (docs/BENCHMARKS.md, "Coordinator memory"), no slower. MALLOC_ARENA_MAX or a glibc.malloc
 * tunable in the environment wins. */
static void server_tune_malloc(void)
{
#ifdef __GLIBC__
    const char *tun = getenv("GLIBC_TUNABLES");
    if (!getenv("MALLOC_ARENA_MAX") && !(tun && strstr(tun, "glibc.malloc.arena_max")))
        (void)mallopt(M_ARENA_MAX, 2);
#endif
}

int main(int argc, char **argv)
{
    if (fp_threads_env_init(argv) != FP_OK) /* harmless: libgomp's default wait policy stays */
        fprintf(stderr, "fedprof-server: note: %s\n", fp_error_message());
    server_tune_malloc();
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))) {
        usage();
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "status"))
        return cmd_status(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "run"))
        return cmd_run(argc - 2, argv + 2);
    if (argc >= 2 && argv[1][0] != '-') {
        fprintf(stderr, "fedprof-server: unknown command '%s'\n", argv[1]);
        usage();
        return 2;
    }
    return cmd_run(argc - 1, argv + 1);
}
