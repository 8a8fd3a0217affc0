/* join: a partner's side of a federation (`fedprof-client join`).
 *
 * Join the coordinator (identity from the client certificate; the plaintext mode is loopback
 * only), then loop: long-poll GetTask; on TRAIN pull the global model (SHA-256 digest verified),
 * train locally on the partner's own users (client/local), compute Δ = w_local − w_global, clip
 * and noise it when the federation's plan says so (client-level privacy: dp/clip + dp/noise,
 * discrete Gaussian from the CSPRNG), and push it; on DONE pull the final global model, save it
 * (out_dir) and evaluate it on the local held-out items, then return.
 *
 * Failures of the coordinator or the network (UNAVAILABLE, DEADLINE_EXCEEDED, a restart that
 * forgot the session) are retried with exponential backoff and full jitter, forever unless
 * give_up_s is set; a computed update is kept and pushed again while its round is open, so a
 * round is never trained twice. Refusals that retrying cannot fix (a certificate the federation
 * refuses, a catalogue that does not fit, a protocol mismatch) end the run with an error.
 * The raw data never leaves the process: only Δ (clipped and noised when configured) is sent.
 *
 * Privacy (when the plan asks for a unit): record level trains with DP-SGD (client/dpsgd: Poisson
 * sampling of users, per-user clipping, discrete Gaussian noise), client level clips Δ and noises
 * it. Before training, the round's spend (q, σ, steps) is admitted by the ledger against
 * budget_epsilon: a round that would pass the budget is not trained and the coordinator is told
 * (budget_exhausted) so it selects this client no more; the client then waits for the end. After
 * the noise and before Δ leaves, the signed entry is appended (fsync'd) to the ledger and sent in
 * the update header with any earlier entries the coordinator has not recorded yet. A round already
 * in the ledger (spent, then a crash) is never trained again. */
#ifndef FEDPROF_CLIENT_JOIN_H
#define FEDPROF_CLIENT_JOIN_H

#include <stddef.h>
#include <stdint.h>

#include "common/data.h"
#include "common/errors.h"
#include "common/eval.h"
#include "common/wire.h"

typedef struct {
    const char *server;             /* "host:port" */
    const fp_wire_creds_t *creds;   /* channel TLS with the partner's certificate, or insecure */
    const char *insecure_name;      /* identity on a plaintext (loopback) coordinator */
    size_t max_message_bytes;       /* 0: FP_WIRE_DEFAULT_MAX_MSG */
    fp_dataset_t *data;             /* the partner's behaviour log (remapped onto the catalogue here) */
    int threads;                    /* compute threads (>= 1) */
    const char *out_dir;            /* NULL: do not save the final model */
    int eval_final;                 /* evaluate the final model on the local held-out items */
    double give_up_s;               /* 0: retry forever; else fail after this long without progress */
    double max_backoff_s;           /* cap of the retry delay (default 10) */
    int quiet;
    /* Privacy ledger (dp/ledger): the directory holding this partner's Ed25519 key
     * (ledger-key.pem, created on first use) and one ledger per federation,
     * FEDERATION_ID.ledger.jsonl. NULL: no ledger, and a federation that asks for DP is refused. */
    const char *ledger_dir;
    double budget_epsilon;          /* > 0: rounds whose projected ε passes it are refused; a DP
                                       federation needs it */
    uint64_t noise_seed;            /* 0: noise (and DP-SGD's sampling) from a RAND_bytes-keyed CSPRNG
                                       (production); tests only */
    int stop_after_rounds;          /* tests: return after training this many rounds (0: never) */
    /* Tests: called with each update just before it is pushed (after clip + noise). */
    void (*on_update)(void *user, uint64_t round_id, uint64_t base_version, const float *w_global,
                      const float *delta, size_t n, uint32_t example_bucket);
    void *hook_user;
} fp_join_opts_t;

typedef struct {
    char identity[FP_WIRE_IDENTITY_MAX];
    int rounds_trained;
    int updates_accepted;
    int updates_refused;
    int rounds_skipped;             /* spent rounds not trained again after a restart */
    int budget_exhausted;           /* 1 when the privacy budget stopped this client */
    double epsilon;                 /* cumulative ε in the ledger (0 without DP) */
    int retries;
    uint64_t final_version;
    int evaluated;
    fp_eval_result_t final_eval;
    double seconds;
} fp_join_report_t;

void fp_join_opts_defaults(fp_join_opts_t *o);

/* Run until the federation is done (FP_OK), a permanent refusal, or give_up_s without progress
 * (FP_ERR_IO with the last transport error). */
fp_status fp_join_run(const fp_join_opts_t *o, fp_join_report_t *rep);

/* The log2 bucket of an example count, as sent in UpdateHeader.example_count_bucket:
 * 0 for 0, else floor(log2(n)) + 1 (n in [2^(b-1), 2^b)). */
uint32_t fp_join_example_bucket(uint64_t n);

#endif
