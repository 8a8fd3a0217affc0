/* fuzz_proto: every message type of proto/fedprof.proto unpacked (protobuf-c) from the same bytes.
 *
 * Invariants: no crash or leak; a message that unpacks packs again (to get_packed_size bytes), and
 * when those bytes unpack again they pack to the same bytes (packing is canonical).
 *
 * Not an invariant: that the re-packed bytes always unpack. libprotobuf-c 1.4 accepts a field
 * number 0 written as an over-long varint tag ("81 00") as an unknown field, then re-packs it as
 * "01", which its own parser refuses (fuzz finding, seed "81 00 00 00 00 00 00 00 1a 00"). Harmless
 * to fedprof: unknown fields are ignored and received messages are never re-sent. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fedprof.pb-c.h"
#include "fuzz_common.h"

static const ProtobufCMessageDescriptor *const descriptors[] = {
    &fedprof__v1__capabilities__descriptor,         &fedprof__v1__join_request__descriptor,
    &fedprof__v1__join_response__descriptor,        &fedprof__v1__noise_params__descriptor,
    &fedprof__v1__training_plan__descriptor,        &fedprof__v1__model_header__descriptor,
    &fedprof__v1__get_task_request__descriptor,     &fedprof__v1__get_task_response__descriptor,
    &fedprof__v1__tensor_chunk__descriptor,         &fedprof__v1__digest__descriptor,
    &fedprof__v1__pull_model_request__descriptor,   &fedprof__v1__model_stream_message__descriptor,
    &fedprof__v1__update_header__descriptor,        &fedprof__v1__update_stream_message__descriptor,
    &fedprof__v1__push_update_response__descriptor, &fedprof__v1__status_request__descriptor,
    &fedprof__v1__rejection_count__descriptor,      &fedprof__v1__status_response__descriptor,
};

static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *p = malloc(n ? n : 1);
    FUZZ_CHECK(p != NULL);
    FUZZ_CHECK(protobuf_c_message_pack(m, p) == n);
    *len = n;
    return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (size_t d = 0; d < sizeof descriptors / sizeof descriptors[0]; d++) {
        ProtobufCMessage *m = protobuf_c_message_unpack(descriptors[d], NULL, size, data);
        if (!m)
            continue;
        FUZZ_CHECK(protobuf_c_message_check(m));
        size_t n1, n2;
        uint8_t *p1 = pack(m, &n1);
        ProtobufCMessage *m2 = protobuf_c_message_unpack(descriptors[d], NULL, n1, p1);
        if (m2) {
            uint8_t *p2 = pack(m2, &n2);
            FUZZ_CHECK(n1 == n2 && memcmp(p1, p2, n1) == 0);
            free(p2);
            protobuf_c_message_free_unpacked(m2, NULL);
        }
        free(p1);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    return 0;
}
