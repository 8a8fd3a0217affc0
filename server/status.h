/* status: the operator's view of a running coordinator (`fedprof-server status`), fetched with
 * the Status RPC and rendered as text or one JSON line. */
#ifndef FEDPROF_SERVER_STATUS_H
#define FEDPROF_SERVER_STATUS_H

#include <stdio.h>

#include "common/errors.h"
#include "common/wire.h"

/* Ask the coordinator at target ("host:port") for its status within timeout_ms and print it to
 * out: a human-readable block, or (json != 0) one JSON object on one line with the keys
 * federation_id, round, phase, model_version, committed_rounds, total_rounds, members, selected,
 * received, participants, exhausted, bytes_in, bytes_out, failed_rounds, strategy,
 * round_deadline_unix_ms and rejections (an object: reason name -> count).
 * Errors: FP_ERR_IO naming the gRPC status when the call fails, FP_ERR_PARSE for an answer that
 * is not a StatusResponse. */
fp_status fp_server_status_print(const char *target, const fp_wire_creds_t *creds, int timeout_ms, int json,
                                 FILE *out);

#endif
