/* ledger: the signed, hash-chained privacy ledger of a client, the coordinator's countersigned
 * federation ledger, budget admission control, and the offline verification behind
 * `fedprof-audit verify`.
 *
 * A client ledger is a file of JSON lines, one per round the client trained. Each entry records
 * the round, the model version, the privacy unit, the accountant's inputs (q, σ, clip, local
 * steps, δ, conversion, RDP orders), ε of the round alone, the cumulative ε after it (RDP of all
 * entries so far composed per order, then converted with this entry's δ and conversion), the
 * budget it was admitted under, a UTC time, the SHA-256 of the previous line (64 zeros for the
 * first), the client's Ed25519 public key and the client's signature. A federation ledger line
 * wraps one client line verbatim and adds the coordinator's own chain and countersignature.
 * The byte-exact format, what is hashed and what is signed are in dp/README.md ("Ledger format"),
 * so a partner can check a ledger with other tools.
 *
 * Crash safety: fp_ledger_append writes the whole line and fsyncs before it returns, so a caller
 * that releases an update only after FP_OK never releases an unrecorded spend; a round already in
 * the ledger (or older than its last round) is refused, so nothing is spent twice. On open, an
 * incomplete final line without a newline (a crash while appending; it was never acknowledged) is
 * truncated with a warning; every other defect is an error.
 *
 * Errors come back as fp_status with the message in fp_error_message(); messages name the file,
 * the line and, when known, the round. Handles are not thread-safe: one owner at a time. A ledger
 * file is locked (flock) while open, so a second handle on it, in any process, is refused. */
#ifndef FEDPROF_DP_LEDGER_H
#define FEDPROF_DP_LEDGER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/errors.h"
#include "dp/accountant.h"

/* The format version written in every line ("v"). */
#define FP_LEDGER_VERSION 1
/* Longest client entry line, bytes without the newline (bounds every read and allocation). */
#define FP_LEDGER_MAX_LINE (64u << 10)
/* Longest federation line (a client line, escaped, plus the coordinator's fields). */
#define FP_LEDGER_MAX_FED_LINE (256u << 10)
/* Most RDP orders an entry may record, and most entries one file may hold. */
#define FP_LEDGER_MAX_ORDERS 1024u
#define FP_LEDGER_MAX_ENTRIES (1u << 22)
/* A client id: 1..128 printable ASCII characters other than '"' and '\\'. */
#define FP_LEDGER_MAX_CLIENT_ID 128u
/* Rounds and model versions lie in [0, 2^53 − 1] (exact in any JSON reader); steps in [0, 1e15]. */
#define FP_LEDGER_MAX_INT 9007199254740991LL
#define FP_LEDGER_MAX_STEPS 1000000000000000LL
/* Verification recomputes ε and accepts |recorded − recomputed| ≤ max(RTOL·max(|a|, |b|), ATOL). */
#define FP_LEDGER_EPS_RTOL 1e-9
#define FP_LEDGER_EPS_ATOL 1e-12
/* File names written by fp_ledger_key_save / `fedprof-audit keygen` in a key directory. */
#define FP_LEDGER_KEY_FILE "ledger-key.pem"
#define FP_LEDGER_PUBKEY_FILE "ledger-key.pub.pem"

/* ------------------------------------------------------------------------------------------------
 * Keys: Ed25519 (OpenSSL EVP_PKEY_ED25519). A key holds a private key (can sign) or only a
 * public one (can verify). */
typedef struct fp_ledger_key fp_ledger_key_t;

/* A fresh key pair from OpenSSL's generator. Free with fp_ledger_key_free. */
fp_status fp_ledger_key_generate(fp_ledger_key_t **out);
/* A key from a PEM file: a PKCS#8 private key ("PRIVATE KEY") or a public key ("PUBLIC KEY").
 * Encrypted keys are refused (no passphrase prompt). FP_ERR_NOT_FOUND (no file), FP_ERR_IO,
 * FP_ERR_FORMAT (not PEM, not Ed25519). Free with fp_ledger_key_free. */
fp_status fp_ledger_key_load(const char *pem_path, fp_ledger_key_t **out);
/* A public-only key from the PEM text of a public key (pem[n]; what a client sends in Join).
 * FP_ERR_FORMAT for anything else, a private key included. */
fp_status fp_ledger_key_from_public_pem(const char *pem, size_t n, fp_ledger_key_t **out);
/* The public key as PEM text ("-----BEGIN PUBLIC KEY-----..."), malloc'd, NUL-terminated; free(). */
fp_status fp_ledger_key_public_pem(const fp_ledger_key_t *key, char **pem);
/* A public-only key from 64 lowercase hex digits (the raw 32-byte key, as entries record it). */
fp_status fp_ledger_key_from_hex(const char *hex, fp_ledger_key_t **out);
/* Write dir/ledger-key.pem (private, mode 0600) and dir/ledger-key.pub.pem (0644); dir must
 * exist. Refuses (FP_ERR_INVALID) to overwrite either file or to save a public-only key. */
fp_status fp_ledger_key_save(const fp_ledger_key_t *key, const char *dir);
/* Load dir/ledger-key.pem, or generate and save a new pair when it does not exist (then
 * *created = 1; created may be NULL). What a client calls at start-up. */
fp_status fp_ledger_key_load_or_create(const char *dir, fp_ledger_key_t **out, int *created);
/* The raw public key as 64 lowercase hex digits and a NUL. */
void fp_ledger_key_public_hex(const fp_ledger_key_t *key, char hex[65]);
/* 1 if the key can sign. */
int fp_ledger_key_has_private(const fp_ledger_key_t *key);
/* 1 if both keys have the same public key. */
int fp_ledger_key_equal(const fp_ledger_key_t *a, const fp_ledger_key_t *b);
/* NULL is a no-op. */
void fp_ledger_key_free(fp_ledger_key_t *key);

/* ------------------------------------------------------------------------------------------------
 * Entries. */

/* The privacy unit. Values are stored in ledgers (as names): never renumber. */
typedef enum {
    FP_LEDGER_UNIT_RECORD = 0, /* one user's sequence (DP-SGD on the partner's users) */
    FP_LEDGER_UNIT_CLIENT = 1, /* the whole client update */
} fp_ledger_unit;
/* "record" / "client" <-> enum. parse: FP_ERR_INVALID naming the text for anything else. */
fp_status fp_ledger_unit_parse(const char *text, fp_ledger_unit *out);
const char *fp_ledger_unit_name(fp_ledger_unit u); /* static; "?" for an unknown value */

/* What one round spends: the accountant composes `steps` steps of the sampled Gaussian with
 * sampling rate q and noise multiplier sigma. */
typedef struct {
    int64_t round;         /* the coordinator's round id, [0, FP_LEDGER_MAX_INT] */
    int64_t model_version; /* the global model version trained from, [0, FP_LEDGER_MAX_INT] */
    fp_ledger_unit unit;
    double q;      /* sampling rate of a step, [0, 1] */
    double sigma;  /* noise multiplier (noise std / clip): 0 or [FP_DP_SIGMA_MIN, FP_DP_SIGMA_MAX] */
    double clip;   /* L2 clip bound, finite > 0 (recorded, not used by the accountant) */
    int64_t steps; /* accountant steps this round (local steps), [0, FP_LEDGER_MAX_STEPS] */
    double delta;  /* δ of the (ε, δ) statement, (0, 1) */
    fp_dp_conversion conversion;
} fp_ledger_spend_t;

/* One entry as recorded. */
typedef struct {
    char client[FP_LEDGER_MAX_CLIENT_ID + 1];
    int64_t seq; /* 1-based position in the client's ledger */
    fp_ledger_spend_t spend;
    double *orders; /* n_orders RDP orders; owned, freed by fp_ledger_entry_clear */
    size_t n_orders;
    double eps_round; /* ε of this round alone (its RDP converted with its δ) */
    double eps;       /* cumulative ε after this round */
    double order;     /* the order that gave eps */
    double budget;    /* the budget_epsilon the round was admitted under */
    char time[21];    /* UTC, "YYYY-MM-DDThh:mm:ssZ" */
    char prev[65];    /* SHA-256 of the previous line, lowercase hex (64 zeros for seq 1) */
    char pubkey[65];  /* the signer's raw Ed25519 public key, lowercase hex */
    char sig[129];    /* Ed25519 signature, lowercase hex */
} fp_ledger_entry_t;

/* Parse one client entry line (len bytes, no newline): shape, types, ranges, canonical form, and
 * the signature against the entry's own embedded key. It does NOT check the chain, the key's
 * identity or ε: that is fp_ledger_verify_file's (or a ledger handle's) work. On success e owns
 * its orders (fp_ledger_entry_clear); on failure e holds nothing. FP_ERR_PARSE / FP_ERR_FORMAT. */
fp_status fp_ledger_entry_parse(const char *line, size_t len, fp_ledger_entry_t *e);
/* Serialise e (every field but pubkey and sig, which come from key) and sign it with key:
 * *line is a malloc'd canonical line without the newline (free()), *len its length (may be NULL).
 * Nothing is recomputed: a low-level tool for tests and tools that must write arbitrary (even
 * wrong) entries; fp_ledger_append is the normal path. e->pubkey and e->sig are filled in. */
fp_status fp_ledger_entry_sign(fp_ledger_entry_t *e, const fp_ledger_key_t *key, char **line, size_t *len);
/* Frees e's orders and zeroes e. NULL is a no-op. */
void fp_ledger_entry_clear(fp_ledger_entry_t *e);

/* ------------------------------------------------------------------------------------------------
 * A client's ledger. */
typedef struct {
    const char *client_id; /* required; see FP_LEDGER_MAX_CLIENT_ID */
    double budget_epsilon; /* finite > 0: no round may bring the cumulative ε past it */
    /* RDP orders (copied). NULL and 0: the ledger's recorded orders when it has entries, else the
     * accountant's default orders. Given orders must equal the recorded ones. */
    const double *orders;
    size_t n_orders;
} fp_ledger_options_t;

typedef struct fp_ledger fp_ledger_t;

/* Open (creating it, mode 0644, when missing) the ledger at path for the client signing with key
 * (which must hold a private key; it is referenced, not copied, and the caller may free it after
 * this call). Every existing line is verified as fp_ledger_verify_file does, pinned to key and to
 * opt->client_id; an incomplete final line is truncated (see above; fp_ledger_recovered_bytes).
 * Errors: FP_ERR_INVALID (arguments, another handle holds the file), FP_ERR_IO, and the
 * verification errors. Close with fp_ledger_close. */
fp_status fp_ledger_open(const char *path, const fp_ledger_key_t *key, const fp_ledger_options_t *opt,
                         fp_ledger_t **out);
/* NULL is a no-op. */
void fp_ledger_close(fp_ledger_t *l);

/* 1 if an entry for round is in the ledger (the round was spent: never train it again). */
int fp_ledger_has_round(const fp_ledger_t *l, int64_t round);
/* What the cumulative ε would be after spend (nothing is checked against the budget or the
 * rounds, nothing is written). eps_round (may be NULL): ε of the round alone. */
fp_status fp_ledger_project(const fp_ledger_t *l, const fp_ledger_spend_t *spend, double *eps_after,
                            double *eps_round);
/* Admission control before training: FP_OK when spend may be trained; FP_ERR_RANGE when its
 * projected ε passes the budget; FP_ERR_INVALID when its round is already in the ledger or older
 * than the last one, or spend is invalid. *eps_after (may be NULL) gets the projection whenever
 * it could be computed. */
fp_status fp_ledger_admit(const fp_ledger_t *l, const fp_ledger_spend_t *spend, double *eps_after);
/* Admit, then append the signed entry and fsync. Call after the noisy update is computed and
 * before it is released. On any error nothing is written (a failed write is truncated away;
 * if even that fails the handle refuses further appends). *eps_after (may be NULL) as in admit;
 * *line (may be NULL): the entry line, malloc'd, no newline, free() it; it is what the client
 * sends to the coordinator for fp_ledger_fed_append. */
fp_status fp_ledger_append(fp_ledger_t *l, const fp_ledger_spend_t *spend, double *eps_after, char **line);
/* The line of entry seq (1-based), malloc'd, no newline (free()); for resending entries the
 * coordinator has not seen (fp_ledger_fed_next_seq). FP_ERR_NOT_FOUND past the end. */
fp_status fp_ledger_read_line(const fp_ledger_t *l, int64_t seq, char **line, size_t *len);

double fp_ledger_epsilon(const fp_ledger_t *l);        /* cumulative ε (0 when empty) */
double fp_ledger_budget(const fp_ledger_t *l);         /* the options' budget_epsilon */
int64_t fp_ledger_entries(const fp_ledger_t *l);       /* entries recorded */
int fp_ledger_last_round(const fp_ledger_t *l, int64_t *round); /* 0 when empty */
size_t fp_ledger_recovered_bytes(const fp_ledger_t *l); /* bytes of a torn line truncated at open */

/* ------------------------------------------------------------------------------------------------
 * The coordinator's federation ledger: every client entry it accepted, in arrival order, each
 * wrapped in a line carrying the federation sequence number, the SHA-256 of the previous
 * federation line, the coordinator's public key and its Ed25519 countersignature. */
typedef struct fp_ledger_fed fp_ledger_fed_t;

/* Open (creating when missing) the federation ledger at path for the coordinator signing with key.
 * Existing lines are verified (pinned to key); a torn final line is truncated as above. */
fp_status fp_ledger_fed_open(const char *path, const fp_ledger_key_t *coordinator, fp_ledger_fed_t **out);
/* NULL is a no-op. */
void fp_ledger_fed_close(fp_ledger_fed_t *f);
/* Check a client line as fp_ledger_verify_file would in context (signature; the client's key:
 * client_key when given, else the key of the client's first entry here, trusted on first use;
 * the client's chain and seq continue its previous entry here; round after its last; ε recomputed;
 * within its budget), then countersign, append and fsync. *fed_line (may be NULL): the federation
 * line, malloc'd, free(). *entry (may be NULL): the parsed client entry (fp_ledger_entry_clear).
 * Resending the client's last accepted line again is FP_OK with *fed_line NULL (idempotent retry).
 * An entry ahead of the client's next seq is FP_ERR_NOT_FOUND: the client must send the entries
 * from fp_ledger_fed_next_seq on first. Other failures: FP_ERR_FORMAT, FP_ERR_PARSE,
 * FP_ERR_NUMERIC (ε mismatch), FP_ERR_RANGE (over budget), FP_ERR_IO. Nothing is written then. */
fp_status fp_ledger_fed_append(fp_ledger_fed_t *f, const char *client_line, size_t len,
                               const fp_ledger_key_t *client_key, fp_ledger_entry_t *entry, char **fed_line);
/* The seq the federation ledger expects next from client_id (1 for a client not seen yet). */
int64_t fp_ledger_fed_next_seq(const fp_ledger_fed_t *f, const char *client_id);
/* The cumulative ε and entry count of client_id as recorded here (0 and 0 when unknown). */
fp_status fp_ledger_fed_client_epsilon(const fp_ledger_fed_t *f, const char *client_id, double *eps,
                                       int64_t *entries);
int64_t fp_ledger_fed_entries(const fp_ledger_fed_t *f);
size_t fp_ledger_fed_recovered_bytes(const fp_ledger_fed_t *f);

/* ------------------------------------------------------------------------------------------------
 * Verification (what `fedprof-audit verify` runs). */
typedef enum {
    FP_LEDGER_KIND_CLIENT = 0,
    FP_LEDGER_KIND_FEDERATION = 1,
} fp_ledger_kind;

/* One verified entry. */
typedef struct {
    int64_t line;  /* 1-based line of the file */
    size_t client; /* index into the report's clients */
    int64_t seq;   /* the entry's position in its client's chain */
    fp_ledger_spend_t spend;
    double eps_round, eps, order, budget; /* as recorded */
    double eps_round_check, eps_check;    /* recomputed from the recorded parameters */
    char time[21];
} fp_ledger_row_t;

/* One signer of client entries. */
typedef struct {
    char id[FP_LEDGER_MAX_CLIENT_ID + 1];
    char pubkey[65]; /* hex */
    int pinned;      /* 1: the key given to verify (--pubkey); 0: trusted on first use */
    int64_t first_line, entries; /* entries verified = the seq of its last one */
    int64_t last_round;
    char last_hash[65];        /* SHA-256 of its last verified entry line, hex: compare with another copy */
    double eps, budget, delta; /* as of its last verified entry */
    size_t n_orders;
} fp_ledger_signer_t;

typedef struct {
    char *path;
    fp_ledger_kind kind;
    int64_t lines;           /* complete lines read */
    fp_ledger_row_t *rows;   /* the entries verified, in file order (up to a failure) */
    size_t n_rows;
    fp_ledger_signer_t *clients;
    size_t n_clients;
    char coordinator[65];    /* federation: the coordinator's key, hex ("" for a client ledger) */
    int coordinator_pinned;
    int pin_given;           /* a key was given to verify against */
    fp_status status;        /* FP_OK: everything verified */
    int64_t fail_line;       /* the line that failed (0: none, or the file as a whole) */
    int64_t fail_round;      /* its round, -1 when unknown */
    char message[1024];      /* the failure, as fp_error_message() gave it */
    int64_t torn_line;       /* an incomplete final line (not an entry; a crash residue): its number, */
    size_t torn_bytes;       /* and length; 0 when none */
} fp_ledger_report_t;

/* Verify the ledger at path, a client or a federation ledger (told apart by its first line):
 * every line's form and signature, every chain, seq and round order, the signers' keys, every ε
 * recomputed from the recorded parameters (FP_LEDGER_EPS_RTOL), and every cumulative ε within its
 * recorded budget. pin (may be NULL): the expected key: a client ledger's client; for a
 * federation ledger, the coordinator's or one client's (then that client must have entries).
 * Without pin each chain trusts the key of its first entry (report says which).
 * Returns FP_OK when all verify. Otherwise the error (message naming line and round) and, when
 * the file could be read at all, *report still describes what was verified before the failure.
 * Always free *report (may be NULL) with fp_ledger_report_free. An incomplete final line is
 * reported (torn_line) but is not a failure: it was never acknowledged. */
fp_status fp_ledger_verify_file(const char *path, const fp_ledger_key_t *pin, fp_ledger_report_t **report);
/* NULL is a no-op. */
void fp_ledger_report_free(fp_ledger_report_t *r);

/* The report as text for people: a summary, one table row per entry, the verdict. */
fp_status fp_ledger_report_print(const fp_ledger_report_t *r, FILE *out);
/* The report as one JSON object (and a newline): malloc'd, free(). */
fp_status fp_ledger_report_json(const fp_ledger_report_t *r, char **json);
/* Cumulative ε per round, one line per client, as a self-contained SVG document: malloc'd, free(). */
fp_status fp_ledger_report_svg(const fp_ledger_report_t *r, char **svg);

#endif
