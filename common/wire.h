/* wire: the one wrapper over the gRPC C core API. Nothing else in fedprof calls grpc_*.
 *
 * Bytes in, bytes out: protobuf packing stays with the caller (protobuf-c pack/unpack of the
 * messages in proto/fedprof.proto); wire moves opaque messages with deadlines, size limits on both
 * sides, wait-for-ready on clients, TLS with client certificates, and a clean shutdown.
 *
 * Threading model.
 *  - Server: one thread runs the completion-queue loop and accepts calls; each accepted call runs its
 *    handler on a worker thread of its own for the call's life, with blocking read/write/finish
 *    operations on a completion queue private to that call. Workers are reused: one whose call ended
 *    waits up to 30 s for the next before it exits (thread-local state therefore outlives a call). A handler may block (a long poll) but must return soon after a read or
 *    write fails or fp_wire_call_cancelled() turns true: fp_wire_server_destroy() cancels every call
 *    and waits for every handler to return. At most 1024 calls are served at once (more are
 *    answered RESOURCE_EXHAUSTED) and one connection opens at most 64 streams at a time.
 *  - Client: a channel is thread-safe; each call uses its own completion queue, so many threads may
 *    call on one channel at once. Every client call has a deadline (milliseconds, > 0).
 *
 * gRPC initialisation is reference-counted here: each server and channel holds one grpc_init()
 * reference, released by its destroy. Credentials hold PEM text only and need no gRPC.
 *
 * Process-wide effect: the first server or channel sets glibc malloc's mmap threshold to 32 MiB and
 * its trim threshold to 64 MiB (freed memory is kept for reuse instead of being returned to the
 * kernel after every message), unless MALLOC_*_ variables or GLIBC_TUNABLES already tune malloc.
 * Without it a streamed model costs about twice the CPU (wire.c says why). */
#ifndef FEDPROF_COMMON_WIRE_H
#define FEDPROF_COMMON_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"

/* Full method names of service fedprof.v1.Federation (proto/fedprof.proto). */
#define FP_WIRE_METHOD_JOIN "/fedprof.v1.Federation/Join"
#define FP_WIRE_METHOD_GET_TASK "/fedprof.v1.Federation/GetTask"
#define FP_WIRE_METHOD_PULL_MODEL "/fedprof.v1.Federation/PullModel"
#define FP_WIRE_METHOD_PUSH_UPDATE "/fedprof.v1.Federation/PushUpdate"
#define FP_WIRE_METHOD_STATUS "/fedprof.v1.Federation/Status"

/* Message-size limit used when 0 is passed (gRPC's own default receive limit is 4 MiB). */
#define FP_WIRE_DEFAULT_MAX_MSG ((size_t)4 << 20)
/* Longest status message kept (bytes, including the terminating NUL); longer ones are truncated. */
#define FP_WIRE_STATUS_MSG_MAX 256
/* Longest peer identity kept (bytes, including NUL). */
#define FP_WIRE_IDENTITY_MAX 256
/* Largest deadline accepted (one day), in milliseconds. */
#define FP_WIRE_MAX_DEADLINE_MS ((int64_t)24 * 3600 * 1000)

/* gRPC status codes, same numbers as grpc_status_code (so wire.h needs no gRPC header). */
typedef enum {
    FP_WIRE_OK = 0,
    FP_WIRE_CANCELLED = 1,
    FP_WIRE_UNKNOWN = 2,
    FP_WIRE_INVALID_ARGUMENT = 3,
    FP_WIRE_DEADLINE_EXCEEDED = 4,
    FP_WIRE_NOT_FOUND = 5,
    FP_WIRE_ALREADY_EXISTS = 6,
    FP_WIRE_PERMISSION_DENIED = 7,
    FP_WIRE_RESOURCE_EXHAUSTED = 8,
    FP_WIRE_FAILED_PRECONDITION = 9,
    FP_WIRE_ABORTED = 10,
    FP_WIRE_OUT_OF_RANGE = 11,
    FP_WIRE_UNIMPLEMENTED = 12,
    FP_WIRE_INTERNAL = 13,
    FP_WIRE_UNAVAILABLE = 14,
    FP_WIRE_DATA_LOSS = 15,
    FP_WIRE_UNAUTHENTICATED = 16,
} fp_wire_code;

/* Static name of a code ("DEADLINE_EXCEEDED"); never NULL. Thread-safe. */
const char *fp_wire_code_name(int code);

/* ---- Credentials -------------------------------------------------------------------------------- */

typedef struct fp_wire_creds fp_wire_creds_t;

/* Plaintext. A server or channel given these refuses (FP_ERR_INVALID) any address that is not
 * loopback: 127.0.0.0/8, ::1 or localhost. Free with fp_wire_creds_destroy. */
fp_status fp_wire_creds_insecure(fp_wire_creds_t **out);

/* Server TLS that requires and verifies a client certificate signed by the CA in ca_pem_path.
 * Files are read now (each at most 1 MiB). Free with fp_wire_creds_destroy. */
fp_status fp_wire_server_creds_tls(const char *ca_pem_path, const char *cert_path, const char *key_path,
                                   fp_wire_creds_t **out);

/* Channel TLS trusting only the CA in ca_pem_path. cert_path/key_path: the client certificate
 * (both NULL: none, which a fedprof server refuses). override_server_name: the name checked against
 * the server certificate instead of the target's host (NULL: the host). Free with fp_wire_creds_destroy. */
fp_status fp_wire_channel_creds_tls(const char *ca_pem_path, const char *cert_path, const char *key_path,
                                    const char *override_server_name, fp_wire_creds_t **out);

/* NULL is a no-op. Credentials may be destroyed once the servers/channels built from them exist. */
void fp_wire_creds_destroy(fp_wire_creds_t *c);

/* 1 if the host of addr ("host:port", "[v6]:port", optional "ipv4:"/"ipv6:"/"dns:///" prefix) is a
 * loopback address or "localhost", else 0. Thread-safe. */
int fp_wire_addr_is_loopback(const char *addr);

/* ---- Server ------------------------------------------------------------------------------------- */

typedef struct fp_wire_server fp_wire_server_t;
/* One accepted call, valid only inside its handler and only on the handler's thread. */
typedef struct fp_wire_call fp_wire_call_t;

/* A handler serves one call: read request message(s), write response message(s), finish.
 * If it returns without fp_wire_call_finish, the call is finished with INTERNAL. */
typedef void (*fp_wire_handler_fn)(fp_wire_call_t *call, void *user);

typedef struct {
    const char *method;     /* full name, e.g. FP_WIRE_METHOD_JOIN; copied */
    fp_wire_handler_fn fn;
    void *user;             /* passed to fn; must outlive the server */
} fp_wire_method_t;

/* Bind listen_addr ("127.0.0.1:0" picks a free port), register the methods (others answer
 * UNIMPLEMENTED) and start serving on a thread of its own. max_msg_bytes bounds every message
 * received and sent (0: FP_WIRE_DEFAULT_MAX_MSG; at most INT32_MAX). Free with fp_wire_server_destroy. */
fp_status fp_wire_server_create(const char *listen_addr, const fp_wire_creds_t *creds, size_t max_msg_bytes,
                                const fp_wire_method_t *methods, size_t n_methods, fp_wire_server_t **out);

/* The bound port. Thread-safe. */
int fp_wire_server_port(const fp_wire_server_t *s);

/* Stop admitting calls, cancel those in flight, wait for every handler to return and for gRPC to
 * release every tag, then free. NULL is a no-op. Must not be called from a handler. */
void fp_wire_server_destroy(fp_wire_server_t *s);

/* -- inside a handler (the handler's thread only) -- */

/* Full method name of the call. */
const char *fp_wire_call_method(const fp_wire_call_t *c);

/* The authenticated peer's identity: the client certificate's common name (else its first peer
 * identity property, e.g. a SAN). "" on a plaintext call. Valid until the handler returns. */
const char *fp_wire_call_identity(const fp_wire_call_t *c);

/* The peer's address as gRPC reports it ("ipv4:127.0.0.1:5555"). */
const char *fp_wire_call_peer(const fp_wire_call_t *c);

/* Milliseconds left before the client's deadline (INT64_MAX if none). */
int64_t fp_wire_call_deadline_left_ms(const fp_wire_call_t *c);

/* Read the next message. On success *more = 1 and (*data, *len) hold it, valid until the next read
 * on this call or the handler's return (wire owns the buffer, reused across reads). *more = 0: the
 * client half-closed, no message. FP_ERR_IO: the call was cancelled or broke. */
fp_status fp_wire_call_read(fp_wire_call_t *c, const uint8_t **data, size_t *len, int *more);

/* Send one message (a server-streaming response). Blocks until gRPC took it. FP_ERR_IO: the call is
 * gone (cancelled, deadline, peer away); the handler should finish and return. */
fp_status fp_wire_call_write(fp_wire_call_t *c, const uint8_t *data, size_t len);

/* Finish the call with a status (FP_WIRE_OK or an error code) and message (may be NULL), sending
 * the response message (resp, resp_len) first when resp is not NULL (unary and client-streaming
 * calls). Only once per call. FP_ERR_IO: the client was already gone (nothing to do about it). */
fp_status fp_wire_call_finish(fp_wire_call_t *c, int code, const char *msg, const uint8_t *resp,
                              size_t resp_len);

/* 1 once the call is cancelled (client gone, deadline passed, server shutting down). Non-blocking. */
int fp_wire_call_cancelled(fp_wire_call_t *c);

/* ---- Client ------------------------------------------------------------------------------------- */

typedef struct fp_wire_channel fp_wire_channel_t;

/* A channel to target ("127.0.0.1:5555", "localhost:5555"). Connects lazily; calls wait for the
 * channel to be ready (wait-for-ready) until their deadline. max_msg_bytes bounds messages both ways
 * (0: FP_WIRE_DEFAULT_MAX_MSG). Thread-safe. Free with fp_wire_channel_destroy. */
fp_status fp_wire_channel_create(const char *target, const fp_wire_creds_t *creds, size_t max_msg_bytes,
                                 fp_wire_channel_t **out);

/* NULL is a no-op. Every call on the channel must have returned (streams destroyed) before. */
void fp_wire_channel_destroy(fp_wire_channel_t *ch);

/* Client-call results common to all call kinds: FP_OK iff the RPC ended with FP_WIRE_OK.
 * An RPC that ended with another status returns FP_ERR_IO with *grpc_status_out and status_msg
 * (FP_WIRE_STATUS_MSG_MAX bytes, may be NULL) set; bad arguments return FP_ERR_INVALID with
 * *grpc_status_out = FP_WIRE_INVALID_ARGUMENT (nothing was sent). grpc_status_out may be NULL. */

/* Unary call. On FP_OK, *resp (malloc'd, free() it; never NULL, even when *resp_len is 0) holds the
 * response. On failure *resp is NULL. */
fp_status fp_wire_call_unary(fp_wire_channel_t *ch, const char *method, const uint8_t *req, size_t req_len,
                             int64_t deadline_ms, uint8_t **resp, size_t *resp_len, int *grpc_status_out,
                             char *status_msg);

/* Called for each message of a server stream; data is valid during the call only. Return 0 to go
 * on, non-zero to cancel the call (which then ends with FP_WIRE_CANCELLED). */
typedef int (*fp_wire_msg_fn)(const uint8_t *data, size_t len, void *user);

/* Server-streaming call: send req, then hand every response message to on_msg until the status. */
fp_status fp_wire_call_server_stream(fp_wire_channel_t *ch, const char *method, const uint8_t *req,
                                     size_t req_len, int64_t deadline_ms, fp_wire_msg_fn on_msg, void *user,
                                     int *grpc_status_out, char *status_msg);

/* Client-streaming call: open, write messages one by one, then finish (half-close, receive the
 * response and status). A stream is used by one thread at a time. */
typedef struct fp_wire_stream fp_wire_stream_t;

fp_status fp_wire_stream_open(fp_wire_channel_t *ch, const char *method, int64_t deadline_ms,
                              fp_wire_stream_t **out);

/* Blocks until gRPC took the message (flow control). FP_ERR_IO: the call ended early; call
 * fp_wire_stream_finish to learn its status. */
fp_status fp_wire_stream_write(fp_wire_stream_t *st, const uint8_t *data, size_t len);

/* Half-close and wait for the response and status. Same results as fp_wire_call_unary (the
 * response buffer is malloc'd, free() it). Only once per stream. */
fp_status fp_wire_stream_finish(fp_wire_stream_t *st, uint8_t **resp, size_t *resp_len, int *grpc_status_out,
                                char *status_msg);

/* Cancel the call if it is not finished, wait for gRPC to release it, free. NULL is a no-op. */
void fp_wire_stream_destroy(fp_wire_stream_t *st);

#endif
