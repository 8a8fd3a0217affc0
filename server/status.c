/* status: fetch and render the coordinator's Status (see status.h). */
#include "server/status.h"

#include <inttypes.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fedprof.pb-c.h"

static const char *phase_name(int p)
{
    switch (p) {
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_WAITING: return "waiting";
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_SELECT: return "select";
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_TRAIN: return "train";
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_AGGREGATE: return "aggregate";
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_COMMIT: return "commit";
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_DONE: return "done";
    default: return "unknown";
    }
}

static const char *reason_name(int r)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&fedprof__v1__reject_reason__descriptor, r);
    if (!v)
        return "UNKNOWN";
    const char *n = v->name; /* REJECT_REASON_MALFORMED */
    return strncmp(n, "REJECT_REASON_", 14) == 0 ? n + 14 : n;
}

static void print_text(const Fedprof__V1__StatusResponse *r, FILE *out)
{
    fprintf(out, "federation   %s (strategy %s)\n", r->federation_id ? r->federation_id : "",
            r->strategy ? r->strategy : "");
    fprintf(out, "round        %" PRIu64 ", phase %s; %" PRIu64 "/%" PRIu64 " rounds committed, %" PRIu64
                 " failed and retried\n",
            r->round_id, phase_name(r->phase), r->committed_rounds, r->total_rounds, r->failed_rounds);
    fprintf(out, "model        version %" PRIu64 "\n", r->model_version);
    fprintf(out, "members      %u live; this round %u selected, %u updates received\n", r->members, r->selected,
            r->received);
    if (r->round_deadline_unix_ms && r->phase == FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_TRAIN) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double left = ((double)r->round_deadline_unix_ms - ((double)ts.tv_sec * 1e3 + ts.tv_nsec / 1e6)) / 1e3;
        fprintf(out, "deadline     in %.0f s\n", left > 0 ? left : 0.0);
    }
    fprintf(out, "participants");
    for (size_t i = 0; i < r->n_participants; i++)
        fprintf(out, "%s%s", i ? ", " : " ", r->participants[i]);
    fprintf(out, "%s\n", r->n_participants ? "" : " (none)");
    if (r->n_exhausted) {
        fprintf(out, "exhausted   ");
        for (size_t i = 0; i < r->n_exhausted; i++)
            fprintf(out, "%s%s", i ? ", " : " ", r->exhausted[i]);
        fprintf(out, " (privacy budget spent: never selected again)\n");
    }
    fprintf(out, "traffic      %.1f MB in, %.1f MB out\n", (double)r->bytes_in / 1e6, (double)r->bytes_out / 1e6);
    fprintf(out, "rejections  ");
    uint64_t total = 0;
    for (size_t i = 0; i < r->n_rejections; i++) {
        fprintf(out, " %s %" PRIu64, reason_name(r->rejections[i]->reason), r->rejections[i]->count);
        total += r->rejections[i]->count;
    }
    fprintf(out, "%s\n", total ? "" : " none");
}

static void print_json(const Fedprof__V1__StatusResponse *r, FILE *out)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "federation_id", json_object_new_string(r->federation_id ? r->federation_id : ""));
    json_object_object_add(o, "round", json_object_new_int64((int64_t)r->round_id));
    json_object_object_add(o, "phase", json_object_new_string(phase_name(r->phase)));
    json_object_object_add(o, "model_version", json_object_new_int64((int64_t)r->model_version));
    json_object_object_add(o, "committed_rounds", json_object_new_int64((int64_t)r->committed_rounds));
    json_object_object_add(o, "total_rounds", json_object_new_int64((int64_t)r->total_rounds));
    json_object_object_add(o, "failed_rounds", json_object_new_int64((int64_t)r->failed_rounds));
    json_object_object_add(o, "members", json_object_new_int64(r->members));
    json_object_object_add(o, "selected", json_object_new_int64(r->selected));
    json_object_object_add(o, "received", json_object_new_int64(r->received));
    json_object *p = json_object_new_array();
    for (size_t i = 0; i < r->n_participants; i++)
        json_object_array_add(p, json_object_new_string(r->participants[i]));
    json_object_object_add(o, "participants", p);
    json_object *e = json_object_new_array();
    for (size_t i = 0; i < r->n_exhausted; i++)
        json_object_array_add(e, json_object_new_string(r->exhausted[i]));
    json_object_object_add(o, "exhausted", e);
    json_object_object_add(o, "bytes_in", json_object_new_int64((int64_t)r->bytes_in));
    json_object_object_add(o, "bytes_out", json_object_new_int64((int64_t)r->bytes_out));
    json_object_object_add(o, "strategy", json_object_new_string(r->strategy ? r->strategy : ""));
    json_object_object_add(o, "round_deadline_unix_ms", json_object_new_int64((int64_t)r->round_deadline_unix_ms));
    json_object *rj = json_object_new_object();
    for (size_t i = 0; i < r->n_rejections; i++)
        json_object_object_add(rj, reason_name(r->rejections[i]->reason),
                               json_object_new_int64((int64_t)r->rejections[i]->count));
    json_object_object_add(o, "rejections", rj);
    fprintf(out, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

fp_status fp_server_status_print(const char *target, const fp_wire_creds_t *creds, int timeout_ms, int json,
                                 FILE *out)
{
    if (!target || !creds || !out)
        return FP_FAIL(FP_ERR_INVALID, "status: missing server address or credentials");
    fp_wire_channel_t *ch = NULL;
    fp_status st = fp_wire_channel_create(target, creds, 0, &ch);
    if (st != FP_OK)
        return st;
    Fedprof__V1__StatusRequest req = FEDPROF__V1__STATUS_REQUEST__INIT;
    req.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    uint8_t buf[16];
    size_t n = fedprof__v1__status_request__pack(&req, buf);
    uint8_t *resp = NULL;
    size_t rn = 0;
    int code = 0;
    char msg[FP_WIRE_STATUS_MSG_MAX] = "";
    st = fp_wire_call_unary(ch, FP_WIRE_METHOD_STATUS, buf, n, timeout_ms, &resp, &rn, &code, msg);
    fp_wire_channel_destroy(ch);
    if (st != FP_OK && (code == FP_WIRE_UNAVAILABLE || code == FP_WIRE_DEADLINE_EXCEEDED))
        return FP_FAIL(FP_ERR_IO, "no coordinator answered at %s within %.1f s (%s): is it running there, and "
                       "is it plaintext (--insecure) or TLS like this command?", target, timeout_ms / 1000.0,
                       fp_wire_code_name(code));
    if (st != FP_OK)
        return FP_FAIL(FP_ERR_IO, "Status from %s: %s%s%s", target, fp_wire_code_name(code), msg[0] ? ": " : "",
                       msg[0] ? msg : "");
    Fedprof__V1__StatusResponse *r = fedprof__v1__status_response__unpack(NULL, rn, resp);
    free(resp);
    if (!r)
        return FP_FAIL(FP_ERR_PARSE, "Status from %s: the answer is not a StatusResponse", target);
    if (json)
        print_json(r, out);
    else
        print_text(r, out);
    fedprof__v1__status_response__free_unpacked(r, NULL);
    return FP_OK;
}
