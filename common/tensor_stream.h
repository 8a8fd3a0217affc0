/* tensor_stream: a flat float vector (a model or an update) as a stream of protobuf messages,
 * and back, for PullModel (ModelStreamMessage) and PushUpdate (UpdateStreamMessage) of
 * proto/fedprof.proto.
 *
 * A stream is: one header, then chunk_count chunks of float32 little-endian bytes in order (each
 * chunk_bytes long but the last, which may be shorter, each saying its index and byte offset),
 * then one Digest (SHA-256 of all chunk bytes in order, and their total). Nothing follows.
 *
 * The writer turns (header fields, float vector) into the packed bytes of each message in turn;
 * the caller hands each to fp_wire_call_write / fp_wire_stream_write. The reader is fed one packed
 * message at a time and checks everything before it allocates or copies anything: the header
 * first (kind, dtype, parameter count against the caller's maximum and expected count, layout
 * hash, chunk geometry, finite header numbers), then each chunk's index, offset and length (no
 * duplicate, gap, reordering or byte past parameter_count * 4), the values as they land (NaN or
 * Inf is refused naming the element), then the digest; any message after the digest is refused.
 * A refusal is an fp_status with a message (fp_error_message) saying what was wrong, and a
 * reason (fp_ts_reject, numbered as the proto's RejectReason) the coordinator maps to a gRPC
 * status; the first refusal is sticky. No byte sequence can crash the reader.
 *
 * An empty vector (parameter_count 0) is never streamed: the writer refuses it (FP_ERR_INVALID)
 * and the reader refuses such a header (malformed). No model has zero parameters, and refusing it
 * keeps "a header, at least one chunk, a digest" the only shape of a valid stream.
 *
 * Memory: the reader copies chunk bytes straight into the destination (the caller's buffer, or
 * one the reader allocates after the header was validated and keeps across fp_ts_reader_reset);
 * protobuf-c unpacks into an arena the reader reuses for every message, so a stream costs no
 * allocation per chunk. The writer packs every message into one buffer it reuses.
 *
 * Thread-safety: a writer or reader is used by one thread at a time; distinct ones are
 * independent. Host byte order must be little-endian (checked at compile time). */
#ifndef FEDPROF_COMMON_TENSOR_STREAM_H
#define FEDPROF_COMMON_TENSOR_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"

/* Chunk size when the header says 0 (the proto's CHUNK_BYTES_DEFAULT): 1 MiB. */
#define FP_TS_CHUNK_BYTES_DEFAULT ((uint32_t)1 << 20)
/* Chunk size of the updates clients push: 512 KiB. For every connection that is sending it a message,
 * the coordinator's gRPC holds a read buffer for the rest of that message, so the chunk size, times
 * the clients pushing, is coordinator memory: 50 clients pushing a 25M-parameter model peaked at
 * 425 MB with 1 MiB chunks, 396 MB with 512 KiB, 384 MB with 256 KiB (but 256 KiB cost 10-15% in
 * round time; docs/BENCHMARKS.md, "Coordinator memory"). */
#define FP_TS_PUSH_CHUNK_BYTES ((uint32_t)512 << 10)
/* Accepted chunk sizes (bytes, a multiple of 4). The maximum keeps a packed chunk message under
 * the wire's default 4 MiB message limit with room for the envelope. */
#define FP_TS_CHUNK_BYTES_MIN ((uint32_t)64)
#define FP_TS_CHUNK_BYTES_MAX (((uint32_t)4 << 20) - 4096)
/* Largest parameter count either side ever accepts (16 GiB of float32). */
#define FP_TS_MAX_PARAMS ((uint64_t)1 << 32)
/* Largest packed header or digest message the reader accepts (bytes). */
#define FP_TS_SMALL_MSG_MAX 65536
/* Bytes a packed chunk message may hold beyond its data (tags, index, offset, lengths). */
#define FP_TS_CHUNK_OVERHEAD 256
/* Longest session token of an update header (bytes, without the NUL). */
#define FP_TS_SESSION_MAX 64
/* Longest ledger text of an update header (bytes, without the NUL): room for ~30 entries of about
 * 1.5 KiB (a backlog of rounds whose updates never reached the coordinator, then this round's). */
#define FP_TS_LEDGER_MAX 49152

/* Which stream: ModelStreamMessage (PullModel) or UpdateStreamMessage (PushUpdate). */
typedef enum { FP_TS_MODEL = 1, FP_TS_UPDATE = 2 } fp_ts_kind;

/* Why a stream was refused; the numbers are the proto's RejectReason. */
typedef enum {
    FP_TS_REJECT_NONE = 0,
    FP_TS_REJECT_MALFORMED = 1,  /* FP_ERR_PARSE: not a message, wrong order, bad index/offset/length */
    FP_TS_REJECT_OVERSIZED = 2,  /* FP_ERR_RANGE: parameter_count above the maximum, message too big */
    FP_TS_REJECT_SHAPE = 3,      /* FP_ERR_FORMAT: parameter_count or layout_hash not the expected one */
    FP_TS_REJECT_NON_FINITE = 4, /* FP_ERR_NUMERIC: NaN/Inf in the data or a header number */
    FP_TS_REJECT_DIGEST = 9,     /* FP_ERR_PARSE: SHA-256 or total_bytes does not match */
    FP_TS_REJECT_VERSION = 10,   /* FP_ERR_UNSUPPORTED: protocol_version not 1 (updates) */
} fp_ts_reject;

/* Static name of a reason ("DIGEST"); never NULL. Thread-safe. */
const char *fp_ts_reject_name(fp_ts_reject r);

/* NoiseParams of an update header (proto numbering for mechanism and unit). */
typedef struct {
    int present;               /* 0: the header carried no NoiseParams (the rest is zero) */
    int mechanism;             /* NoiseMechanism */
    int unit;                  /* PrivacyUnit */
    double noise_multiplier;
    double stddev;
    double granularity;
    double sampling_rate;
    uint64_t steps;
    double delta;
} fp_ts_noise_t;

/* The header fields of either kind. Fields marked (update) are carried by UpdateHeader only
 * (a model stream writes nothing for them and the reader leaves them zero). */
typedef struct {
    fp_ts_kind kind;
    uint64_t round_id;
    uint64_t model_version;        /* ModelHeader.model_version / UpdateHeader.base_model_version */
    uint64_t param_count;          /* number of float32 values, >= 1 */
    uint64_t layout_hash;          /* fp_layout_hash of the model's layout */
    uint32_t chunk_bytes;          /* writer: 0 means FP_TS_CHUNK_BYTES_DEFAULT */
    uint32_t chunk_count;          /* writer: computed (input ignored); reader: as received */
    uint32_t protocol_version;     /* (update) writer: 0 means 1; the reader refuses any but 1 */
    double clip_bound;             /* (update) 0: no clipping declared; finite, >= 0 */
    fp_ts_noise_t noise;           /* (update) doubles finite */
    uint32_t example_count_bucket; /* (update) */
    uint64_t local_steps;          /* (update) */
    char session[FP_TS_SESSION_MAX + 1];        /* (update) "" when absent; longer is MALFORMED */
    char ledger_entry[FP_TS_LEDGER_MAX + 1];    /* (update) "" when absent; longer is MALFORMED */
} fp_ts_header_t;

/* Chunks needed for n floats at chunk_bytes each (0 if n is 0). */
uint64_t fp_ts_chunk_count(uint64_t n, uint32_t chunk_bytes);

/* ---- Writer ------------------------------------------------------------------------------------ */

typedef struct fp_ts_writer fp_ts_writer_t;

/* A writer of the stream for h (kind, counts, passthrough fields) and data[h->param_count].
 * data is read while messages are produced and must stay unchanged until the last one (the
 * digest covers what was sent). Checks now: kind, param_count in [1, FP_TS_MAX_PARAMS], chunk
 * size in bounds and a multiple of 4, every value finite (FP_ERR_NUMERIC naming the element),
 * finite clip/noise numbers. Free with fp_ts_writer_destroy. */
fp_status fp_ts_writer_create(const fp_ts_header_t *h, const float *data, fp_ts_writer_t **out);

/* Bytes of a stream's SHA-256 digest. */
#define FP_TS_DIGEST_LEN 32
/* The digest a writer sends for data[0..n): SHA-256 of its float32 bytes, after checking every
 * value is finite (FP_ERR_NUMERIC naming the element). For data served many times unchanged (the
 * coordinator's global model, once per version). */
fp_status fp_ts_digest(const float *data, uint64_t n, uint8_t sha256[FP_TS_DIGEST_LEN]);
/* fp_ts_writer_create for data whose digest is known: sha256 is what fp_ts_digest gave for
 * data[0..h->param_count), and data has not changed since. The writer sends it without hashing
 * or checking the values again (the stream is byte for byte the one fp_ts_writer_create makes);
 * a wrong digest makes every reader refuse the stream (DIGEST). */
fp_status fp_ts_writer_create_digested(const fp_ts_header_t *h, const float *data,
                                       const uint8_t sha256[FP_TS_DIGEST_LEN], fp_ts_writer_t **out);
/* The next packed message: (*msg, *len) is valid until the next call or destroy (the writer owns
 * it). After the digest, returns FP_OK with *msg = NULL and *len = 0. */
fp_status fp_ts_writer_next(fp_ts_writer_t *w, const uint8_t **msg, size_t *len);

/* Messages the whole stream has: chunk_count + 2. */
uint64_t fp_ts_writer_message_count(const fp_ts_writer_t *w);

/* The header as it is sent (chunk_bytes and chunk_count filled in). Owned by w. */
const fp_ts_header_t *fp_ts_writer_header(const fp_ts_writer_t *w);

/* NULL is a no-op. */
void fp_ts_writer_destroy(fp_ts_writer_t *w);

/* ---- Reader ------------------------------------------------------------------------------------ */

typedef struct {
    fp_ts_kind kind;
    /* Largest parameter_count accepted (> 0 and <= FP_TS_MAX_PARAMS; 0: dst_cap when dst is
     * given, else invalid). A larger header is refused (OVERSIZED) before anything is allocated. */
    uint64_t max_params;
    /* Exact parameter_count required (0: any up to the maximum). A mismatch is SHAPE. */
    uint64_t expect_params;
    /* When check_layout_hash, the header's layout_hash must equal layout_hash (SHAPE). */
    int check_layout_hash;
    uint64_t layout_hash;
    /* Destination: dst[dst_cap] floats, owned by the caller and written in place (parameter
     * counts above dst_cap are OVERSIZED). NULL: the reader allocates parameter_count floats after
     * the header passed its checks and keeps the buffer for the next streams (fp_ts_reader_reset). */
    float *dst;
    size_t dst_cap;
} fp_ts_reader_opts_t;

typedef struct fp_ts_reader fp_ts_reader_t;

/* A reader ready for the first message of a stream. FP_ERR_INVALID for bad options. Free with
 * fp_ts_reader_destroy. */
fp_status fp_ts_reader_create(const fp_ts_reader_opts_t *o, fp_ts_reader_t **out);

/* Feed the next packed message (any bytes; len may be 0). FP_OK: accepted. Otherwise the stream is
 * refused: the status and fp_error_message say why, fp_ts_reader_reject says the reason, and every
 * later feed fails the same way until fp_ts_reader_reset. Errors: FP_ERR_PARSE (malformed,
 * digest), FP_ERR_RANGE (oversized), FP_ERR_FORMAT (shape), FP_ERR_NUMERIC (non-finite),
 * FP_ERR_UNSUPPORTED (protocol version), FP_ERR_NOMEM (the destination could not be allocated). */
fp_status fp_ts_reader_feed(fp_ts_reader_t *r, const uint8_t *msg, size_t len);

/* 1 once the digest was accepted: the data is whole and verified. */
int fp_ts_reader_complete(const fp_ts_reader_t *r);

/* Call when the transport says the stream ended: FP_OK if complete, else FP_ERR_PARSE saying what
 * is missing (header, chunks, digest), or the earlier refusal. */
fp_status fp_ts_reader_finish(fp_ts_reader_t *r);

/* The received header once one was accepted (so the caller can check round and versions before
 * the chunks arrive), else NULL. Owned by r, valid until reset or destroy. */
const fp_ts_header_t *fp_ts_reader_header(const fp_ts_reader_t *r);

/* The data (*n = parameter_count floats) once complete, else NULL. Points into dst or the
 * reader's own buffer (valid until reset or destroy). */
const float *fp_ts_reader_data(const fp_ts_reader_t *r, size_t *n);

/* Why the stream was refused (FP_TS_REJECT_NONE while it was not). */
fp_ts_reject fp_ts_reader_reject(const fp_ts_reader_t *r);

/* Bytes of tensor data accepted so far. */
uint64_t fp_ts_reader_bytes(const fp_ts_reader_t *r);

/* Forget the stream (and any refusal) and wait for a new header with the same options; buffers
 * are kept. */
void fp_ts_reader_reset(fp_ts_reader_t *r);

/* NULL is a no-op. Never frees the caller's dst. */
void fp_ts_reader_destroy(fp_ts_reader_t *r);

#endif
