/* coordinator: the federation's server side. It serves the Federation RPCs of
 * proto/fedprof.proto over common/wire and drives the rounds.
 *
 * Round state machine (fp_coord_run, on the caller's thread):
 *   WAITING   until min_clients members are live (a member is live while it polls: its last
 *             request is younger than member_timeout_s)
 *   SELECT    a new round id; clients_per_round × over_selection live members are chosen at random
 *             (members whose privacy budget is spent are never chosen)
 *   TRAIN     selected members get TRAIN from GetTask, pull the model, push their update; each
 *             accepted update is added to the strategy's running aggregate as it arrives. The
 *             phase ends when clients_per_round updates arrived, when every selected member has
 *             answered, or at the round deadline (round_timeout_s): later pushes are STALE.
 *   AGGREGATE with at least min_updates updates (default: min(min_clients, clients_per_round)): Δ̄ from the strategy, the server optimizer step;
 *             with fewer the round failed and is retried with a new selection (failed_rounds)
 *   COMMIT    the new model version is checkpointed atomically (model, optimizer state, round
 *             counters, membership, rejection counters) and then published
 *   DONE      after `rounds` committed rounds: DIR/model.safetensors is written, GetTask answers
 *             DONE for done_linger_s so clients exit cleanly, then fp_coord_run returns.
 *
 * Every update is checked before it is aggregated, and refused with a precise gRPC status and a
 * counted reason (RejectReason) otherwise: malformed stream, oversized (bounded before any
 * allocation), wrong shape/layout, non-finite value, L2 norm above the declared clip bound (plus
 * a 1 − 1e-22 bound on the declared noise), stale round or base version, a duplicate, an
 * identity not selected, an unknown session/identity, a bad digest, an unknown protocol version.
 * The coordinator keeps serving after any refusal.
 *
 * Identity: under TLS, the common name of the client certificate signed by the federation's CA
 * (common/wire); a session token from Join binds later calls to it (a call whose certificate
 * names another identity than its session's is refused). With --insecure (loopback only) the
 * client names itself in JoinRequest.insecure_name.
 *
 * Memory: the global model (4·P bytes), the running sum (8·P, double), and one receive buffer
 * (4·P) per concurrent push (max_concurrent_pushes, default 1: later pushes wait their turn);
 * the mean strategies commit Δ̄ = Σ/W straight from the running sum (fp_sopt_apply_agg, no
 * result buffer); FedAvgM adds 4·P, the adaptive ones 8·P; median and trimmed mean buffer every
 * update (4·P each) and their result (4·P). For a large model (4·P >= 32 MiB, or spill_updates
 * 1) with a mean strategy the receive buffer is a shared mapping of an unlinked file in
 * checkpoint_dir instead: its pages are dropped from the process every 4 MiB received and after
 * each 4 MiB range is checked and added to the running sum, so it costs the process ~4 MiB
 * instead of 4·P; the price is page cache and disk writes (4·P per push, overwritten in place by
 * the next push: the file stays 4·P per receive buffer) and re-reading the update from the page
 * cache (or disk, under memory pressure) to aggregate it. So a large model with FedAvg costs
 * 12·P plus the process (~20 MB), transfers in flight and freed transfer memory kept for reuse
 * (~60-100 MB, mostly gRPC's read buffers: up to one push chunk per client sending, hence the
 * clients' 512 KiB push chunks): 3.8-4.0 × 4·P measured with 50 clients and 25M parameters
 * (docs/BENCHMARKS.md).
 * Pulls: ≈ 2.4 MB of stream and transport buffers each, max_concurrent_pulls (default 8) at once.
 *
 * Crash safety: kill -9 at any moment and a restart with the same checkpoint_dir resumes from the
 * last committed round; an uncommitted round is run again from the start and nothing is counted
 * twice. Clients reconnect by themselves (their sessions are re-established by Join). */
#ifndef FEDPROF_SERVER_COORDINATOR_H
#define FEDPROF_SERVER_COORDINATOR_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/errors.h"
#include "common/wire.h"
#include "server/strategy.h"

/* Privacy unit a federation asks its clients for (proto PrivacyUnit numbering + none). */
typedef enum { FP_UNIT_NONE = 0, FP_UNIT_RECORD = 1, FP_UNIT_CLIENT = 2 } fp_privacy_unit;

/* What every selected client is told to do in a round (proto TrainingPlan). */
typedef struct {
    int local_epochs;         /* passes over the client's users per round, >= 1 (default 1) */
    int max_steps;            /* 0: no cap */
    int batch;                /* users per local step (default 128) */
    double lr;                /* local Adam learning rate (default 1e-3) */
    double fedprox_mu;        /* 0: plain local training; > 0 FedProx proximal term */
    uint64_t seed;            /* base seed; each client and round derive their own */
    double clip;              /* L2 clip: of the update (client unit) or per user (record unit); 0: none */
    fp_privacy_unit unit;     /* none, record (DP-SGD), client (clip + noise the update) */
    double noise_multiplier;  /* σ: noise stddev = σ·clip */
    double delta;             /* δ of the (ε, δ) the clients account */
    double budget_epsilon;    /* advisory: a client refuses rounds beyond its own budget */
} fp_coord_plan_t;

typedef struct {
    const char *listen;             /* "0.0.0.0:7070"; "127.0.0.1:0" picks a free port */
    const fp_wire_creds_t *creds;   /* TLS (fp_wire_server_creds_tls) or insecure (loopback only) */
    int insecure;                   /* 1 with insecure creds: identities come from insecure_name */
    size_t max_message_bytes;       /* 0: FP_WIRE_DEFAULT_MAX_MSG */
    fp_config_t model_cfg;          /* the model section is the architecture; model.n_items >= 1 */
    uint64_t init_seed;             /* seed of the initial global model */
    int rounds;                     /* committed rounds to run, >= 1 */
    int clients_per_round;          /* updates wanted per round, >= 1 */
    int min_clients;                /* live members needed to start a round, >= 1 */
    int min_updates;                /* updates needed to commit a round, in [0, clients_per_round];
                                       0: min(min_clients, clients_per_round) */
    double over_selection;          /* select ceil(clients_per_round × this) members, >= 1 */
    double round_timeout_s;         /* round deadline, > 0 */
    double member_timeout_s;        /* a member silent for longer is not live, > 0 */
    double done_linger_s;           /* how long DONE is served before fp_coord_run returns */
    int uniform_weights;            /* 0: weight updates by examples (example_count_bucket), 1: uniform */
    int max_concurrent_pushes;      /* receive buffers, >= 1 */
    int spill_updates;              /* receive buffers in unlinked files of checkpoint_dir instead of RAM:
                                     * -1 (default) when 4·P >= 32 MiB, 0 never, 1 always; mean
                                     * strategies only (median and trimmed mean keep every update) */
    int max_concurrent_pulls;       /* models streamed at once (≈ 2.4 MB of buffers each), >= 1; later
                                     * pulls wait their turn (default 8) */
    fp_strategy_opts_t strategy;
    fp_coord_plan_t plan;
    const char *checkpoint_dir;     /* required: state + final model */
    const char *federation_id;      /* informative; default "fedprof" */
    uint64_t select_seed;           /* 0: selection seeded from the OS (tests pass a fixed one) */
    int quiet;                      /* no per-round log lines */
} fp_coord_opts_t;

/* Defaults for everything but listen, creds, model_cfg.model.n_items and checkpoint_dir. */
void fp_coord_opts_defaults(fp_coord_opts_t *o);
/* Range checks of every option; FP_ERR_RANGE / FP_ERR_INVALID naming it. */
fp_status fp_coord_opts_validate(const fp_coord_opts_t *o);

typedef struct fp_coord fp_coord_t;

/* Create the coordinator: validate options, resume from checkpoint_dir when it holds a state
 * (its model must match model_cfg: layout hash), else initialise the model from init_seed; bind
 * and start serving. Free with fp_coord_destroy. */
fp_status fp_coord_create(const fp_coord_opts_t *o, fp_coord_t **out);

/* The bound port. */
int fp_coord_port(const fp_coord_t *c);

/* Drive rounds until done (FP_OK after DONE was served) or until fp_coord_stop (FP_OK too, with
 * the last committed round checkpointed). Errors: checkpoint I/O failures (FP_ERR_IO): the
 * coordinator stops rather than lose a committed round. */
fp_status fp_coord_run(fp_coord_t *c);

/* Ask fp_coord_run to return soon. Async-signal-safe (sets a flag). */
void fp_coord_stop(fp_coord_t *c);

/* Stop serving and free. NULL is a no-op. */
void fp_coord_destroy(fp_coord_t *c);

/* Snapshot counters (for tests and the final log). */
typedef struct {
    uint64_t round_id, model_version, committed, failed_rounds;
    uint64_t rejections[16];  /* by RejectReason */
    uint64_t bytes_in, bytes_out, accepted;
    int members;
} fp_coord_stats_t;
void fp_coord_stats(fp_coord_t *c, fp_coord_stats_t *s);

/* The current global model (P floats) copied into out[cap]; *n = P. */
fp_status fp_coord_model(fp_coord_t *c, float *out, size_t cap, size_t *n);

#endif
