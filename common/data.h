/* data: behaviour logs as per-user item sequences, their leave-one-out split, training
 * batches with sampled negatives, partitioning across partners, and the deterministic
 * synthetic generator that is fedprof's embedded default data set.
 *
 * Readers:
 *   text: "user item" per line (whitespace-separated, SASRec format; a third timestamp column
 *         is allowed); each user's lines in time order (lines of a user need not be contiguous;
 *         order of appearance is kept).
 *   csv : a header naming user_id,item_id[,timestamp] (any column order, extra columns ignored);
 *         any string ids; rows sorted per user by timestamp (stable) when the column exists.
 * Ids are remapped to dense ids: users 0..n_users-1, items 1..n_items (0 = padding).
 * When every original item id is a positive integer they are ordered numerically, so SASRec
 * files whose ids are already 1..N keep their ids. Names (original ids) are kept.
 * Errors name the file and line ("FILE:LINE: message"). Lines are at most FP_DATA_MAX_LINE bytes.
 * Both readers: a UTF-8 BOM, CRLF line ends, trailing blanks and blank lines are accepted; '#'
 * is data (no comments); a NUL byte is an error. Text ids are decimal integers in
 * [1, 2^31-1] (leading zeros ignored: "007" is 7); CSV ids are non-empty strings of at most
 * FP_DATA_MAX_ID_LEN bytes; unquoted CSV fields are trimmed of surrounding blanks, and fields may
 * be RFC 4180 double-quoted ("a ""b"", c", kept verbatim), but a quoted line break is an error. Text-format timestamps are checked to be numbers but the line order
 * stands. Users get dense ids in order of first appearance.
 *
 * Ownership: every array and every name string of an fp_dataset_t is its own malloc block,
 * all freed by fp_dataset_free. Thread-safety: no global state; one object per thread. */
#ifndef FEDPROF_COMMON_DATA_H
#define FEDPROF_COMMON_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"
#include "common/rng.h"

#define FP_DATA_MAX_LINE (1 << 20)   /* 1 MiB: a longer line is an error, never a crash */
#define FP_DATA_MAX_ID_LEN 256       /* bytes in one id */
#define FP_DATA_MAX_ITEMS 100000000  /* dense ids must fit in int32 with room */

typedef enum { FP_FORMAT_AUTO = 0, FP_FORMAT_TEXT = 1, FP_FORMAT_CSV = 2 } fp_data_format;

typedef struct {
    int32_t n_users;
    int32_t n_items;          /* dense item ids are 1..n_items */
    int64_t n_interactions;
    int64_t *offsets;         /* [n_users + 1]: user u's items are items[offsets[u] .. offsets[u+1]) */
    int32_t *items;           /* [n_interactions], in time order per user */
    char **user_names;        /* [n_users] original user ids; NULL when users are unnamed (synthetic):
                                 user u is then called by the decimal u + 1 (what save_text writes
                                 and find_user accepts) */
    char **item_names;        /* [n_items + 1], [0] = NULL; original item ids (NULL: item i is
                                 called by the decimal i); synthetic items are "1".."n_items" */
} fp_dataset_t;

/* Load a behaviour log. fmt AUTO picks CSV when the file name ends in .csv or the first line
 * contains a comma and a header naming user_id and item_id. *out is freed with fp_dataset_free.
 * Errors: FP_ERR_IO (cannot open/read), FP_ERR_PARSE (any malformed content, including an
 * over-long line and a file without interactions), FP_ERR_RANGE (more than FP_DATA_MAX_ITEMS
 * distinct items), FP_ERR_NOMEM, FP_ERR_INVALID (NULL argument). *out is NULL on failure. */
fp_status fp_data_load(const char *path, fp_data_format fmt, fp_dataset_t **out);
void fp_dataset_free(fp_dataset_t *d); /* NULL is a no-op */

/* Write a dataset in the text format ("user item" per line, original names), through a
 * temporary file renamed into place. Every name written must itself be a text-format id (a
 * decimal integer in [1, 2^31-1]), else FP_ERR_INVALID and nothing is written (CSV string ids
 * cannot be expressed in the text format). FP_ERR_IO on a write failure. */
fp_status fp_data_save_text(const fp_dataset_t *d, const char *path);

/* Re-map a dataset's item ids onto an existing item vocabulary (names[1..n], e.g. a trained
 * model's; names[0] is ignored). Interactions with unknown items are dropped and counted in
 * *n_dropped (may be NULL). The dataset's n_items becomes n and its item_names a copy of names.
 * A NULL or duplicate vocabulary name is FP_ERR_INVALID. On failure d is unchanged. */
fp_status fp_data_remap_items(fp_dataset_t *d, char *const *names, int32_t n, int64_t *n_dropped);

/* Find a user by original id; -1 if absent (or d/name NULL). O(n_users). */
int32_t fp_data_find_user(const fp_dataset_t *d, const char *name);

/* Synthetic behaviour (deterministic in seed): users with latent interests over item
 * clusters, Zipf item popularity, and sequential (Markov) transitions inside interests. */
typedef struct {
    int32_t n_users;     /* default 2000 */
    int32_t n_items;     /* default 1000 */
    int32_t n_interests; /* clusters of items, default 20 */
    double mean_len;     /* mean sequence length, default 20 (min 3) */
    double zipf_s;       /* popularity exponent, default 1.0 */
    double p_transition; /* prob. next item follows the current item's successor, default 0.6 */
    uint64_t seed;       /* default 1 */
} fp_synth_params_t;
void fp_synth_defaults(fp_synth_params_t *p);
/* Every user has 1-3 interests (distinct clusters, Dirichlet weights) and a length of
 * 3 + Geometric(mean mean_len - 3), capped at 200. Items are split into n_interests clusters
 * with Zipf(zipf_s) popularity inside each; each item has one fixed successor in its cluster
 * (a random cycle). Step t > 0 follows the successor with prob. p_transition, else draws a fresh
 * item from one of the user's interests. Accepted ranges: n_users [1, 1e7], n_items
 * [2, FP_DATA_MAX_ITEMS], n_interests [1, n_items], mean_len [3, 200], zipf_s [0, 10],
 * p_transition [0, 1]; else FP_ERR_INVALID. user_names is NULL. Freed with fp_dataset_free. */
fp_status fp_data_synthetic(const fp_synth_params_t *p, fp_dataset_t **out);

/* Leave-one-out split (SASRec): for a user with n >= 3 items, train = items[0..n-3],
 * valid = items[n-2], test = items[n-1]; users with n < 3 keep all items as training and
 * have valid = test = 0. Views into the dataset (no copies): d must outlive the split.
 * The three arrays are freed by fp_split_free (which zeroes *s; NULL is a no-op). */
typedef struct {
    const fp_dataset_t *d;
    int32_t *train_len;  /* [n_users] */
    int32_t *valid;      /* [n_users], 0 = none */
    int32_t *test;       /* [n_users], 0 = none */
} fp_split_t;
fp_status fp_split_loo(const fp_dataset_t *d, fp_split_t *out);
void fp_split_free(fp_split_t *s);

/* Item popularity: counts[i] = occurrences of item i in the training part, [n_items + 1].
 * *counts_out is freed by the caller with free(). */
fp_status fp_split_popularity(const fp_split_t *s, int64_t **counts_out);

/* Training batches. An epoch visits every user with train_len >= 2 once in a shuffled order.
 * Row r of a batch: the user's training items x[0..L-1] truncated to the last maxlen + 1;
 * seq = x[0..L-2], pos = x[1..L-1], right-aligned in T = maxlen (left padding 0);
 * neg[t][k] uniform over items the user never interacted with in training (rejection sampling;
 * when the training set covers more than 15/16 of the catalogue, drawn from the explicit list of
 * the other items; when it covers every item, no true negative exists and neg is uniform over
 * the items != pos[t]). Padding positions have seq = pos = neg = 0.
 * The batcher keeps a pointer to s (and s->d): both must outlive it. n_neg may be 0 (no
 * negatives; neg may then be NULL). FP_ERR_INVALID for maxlen outside [1, 65536], batch outside
 * [1, 2^20], n_neg outside [0, 1024], or n_neg > 0 with fewer than 2 items. With no trainable
 * user, every call of fp_batcher_next yields 0 rows and epoch_end = 1. Not thread-safe. */
typedef struct fp_batcher fp_batcher_t;
fp_status fp_batcher_create(const fp_split_t *s, int maxlen, int batch, int n_neg, uint64_t seed,
                            fp_batcher_t **out);
void fp_batcher_destroy(fp_batcher_t *b);
/* Number of trainable users and batches per epoch. */
int32_t fp_batcher_n_users(const fp_batcher_t *b);
int32_t fp_batcher_batches_per_epoch(const fp_batcher_t *b);
/* Fill the next batch into caller buffers seq/pos [batch x maxlen], neg [batch x maxlen x n_neg].
 * *rows = rows filled (the last batch of an epoch may be short); *epoch_end = 1 when this batch
 * finished the epoch (the next call starts a new shuffled epoch). Rows >= *rows are zeroed. */
fp_status fp_batcher_next(fp_batcher_t *b, int32_t *seq, int32_t *pos, int32_t *neg, int *rows,
                          int *epoch_end);
/* Fill rows for chosen trainable users instead of the next shuffled batch: DP-SGD's Poisson
 * sample. idx[0..n) are indices into the batcher's canonical user list (0..fp_batcher_n_users-1,
 * ascending user ids); row r is user idx[r], built as above with negatives from the batcher's
 * generator; rows >= n are zeroed. The epoch order and cursor of fp_batcher_next are not touched.
 * FP_ERR_INVALID for NULL buffers, n outside [0, batch] or an index out of range. */
fp_status fp_batcher_fill(fp_batcher_t *b, const int32_t *idx, int n, int32_t *seq, int32_t *pos, int32_t *neg);
/* Generator state for resume. It is the batcher's only state between epochs: restoring it into
 * a batcher created with the same arguments after epoch_end reproduces the following batches. */
fp_rng_t fp_batcher_rng(const fp_batcher_t *b);
void fp_batcher_set_rng(fp_batcher_t *b, fp_rng_t r);

/* Evaluation input: the user's history for predicting `target` (valid: train items;
 * test: train items + valid item), right-aligned in maxlen, left-padded. seq_out[maxlen].
 * A bad user or split gives all zeros; maxlen <= 0 or seq_out NULL does nothing. */
void fp_split_history(const fp_split_t *s, int32_t user, int for_test, int maxlen, int32_t *seq_out);

/* Partition users across n_parts partners (deterministic in seed): each user goes to one part.
 * part_of[u] in [0, n_parts). Freed by the caller with free(). Balanced: part sizes differ by at
 * most one (users shuffled, then dealt round-robin). n_parts must be in [1, n_users]. */
fp_status fp_data_partition(const fp_dataset_t *d, int n_parts, uint64_t seed, int32_t **part_of);
/* A new dataset holding only the users with part_of[u] == part (same item vocabulary), in their
 * original order. Users keep their names (unnamed users get the decimal u + 1 of the parent).
 * part_of has d->n_users entries. An empty part is FP_ERR_INVALID. Freed with fp_dataset_free. */
fp_status fp_data_subset(const fp_dataset_t *d, const int32_t *part_of, int part, fp_dataset_t **out);

#endif
