/* gen_corpus: writes the seed corpora of the fuzz targets into DIR/<target>/ (DIR: tests/fuzz/corpus).
 *
 * Built with the fuzz targets (FEDPROF_FUZZ=ON) but not a fuzzer itself; run it by hand after a
 * format changes: build-fuzz/tests/fuzz/fuzz_gen_corpus tests/fuzz/corpus. Every seed is small
 * (under 2 KiB) and valid, so the fuzzer starts from inputs that reach deep into each decoder. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/checkpoint.h"
#include "common/params.h"
#include "common/tensor_stream.h"
#include "fedprof.pb-c.h"

static const char *root;

static void die(const char *what)
{
    fprintf(stderr, "gen_corpus: %s\n", what);
    exit(1);
}

static void put(const char *target, const char *name, const void *p, size_t n)
{
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/%s", root, target);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        die(dir);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        die(path);
}

/* ---- tensor_stream: [flags][u16 len][message]... ---------------------------------------------- */

static void stream_seed(const char *name, uint8_t flags, fp_ts_kind kind, size_t n, uint32_t chunk_bytes)
{
    float x[512];
    for (size_t i = 0; i < n; i++)
        x[i] = (float)i * 0.25f - 3.0f;
    fp_ts_header_t h;
    memset(&h, 0, sizeof h);
    h.kind = kind;
    h.round_id = 2;
    h.model_version = 1;
    h.param_count = n;
    h.layout_hash = 0x1234abcd5678ef90ull;
    h.chunk_bytes = chunk_bytes;
    if (kind == FP_TS_UPDATE) {
        h.clip_bound = 1.0;
        h.noise.present = 1;
        h.noise.mechanism = 2;
        h.noise.unit = 2;
        h.noise.noise_multiplier = 1.0;
        h.noise.stddev = 1.0;
        h.example_count_bucket = 5;
        h.local_steps = 10;
    }
    fp_ts_writer_t *w = NULL;
    if (fp_ts_writer_create(&h, x, &w) != FP_OK)
        die("writer");
    uint8_t out[4096];
    size_t len = 0;
    out[len++] = flags;
    for (;;) {
        const uint8_t *m;
        size_t mn;
        if (fp_ts_writer_next(w, &m, &mn) != FP_OK)
            die("writer next");
        if (!m)
            break;
        if (len + 2 + mn > sizeof out)
            die("stream seed too large");
        out[len++] = (uint8_t)(mn & 0xff);
        out[len++] = (uint8_t)(mn >> 8);
        memcpy(out + len, m, mn);
        len += mn;
    }
    fp_ts_writer_destroy(w);
    put("fuzz_tensor_stream", name, out, len);
}

/* ---- proto ------------------------------------------------------------------------------------ */

static void proto_seed(const char *name, const ProtobufCMessage *m)
{
    uint8_t buf[2048];
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > sizeof buf)
        die("proto seed too large");
    protobuf_c_message_pack(m, buf);
    put("fuzz_proto", name, buf, n);
}

static void proto_seeds(void)
{
    Fedprof__V1__Capabilities cap = FEDPROF__V1__CAPABILITIES__INIT;
    cap.max_message_bytes = 4u << 20;
    cap.max_parameters = 1000000;
    cap.discrete_gaussian = 1;
    cap.client_version = (char *)"0.1.0";
    Fedprof__V1__JoinRequest jr = FEDPROF__V1__JOIN_REQUEST__INIT;
    jr.protocol_version = 1;
    jr.capabilities = &cap;
    jr.num_examples_bucket = 1024;
    proto_seed("join_request", &jr.base);

    Fedprof__V1__NoiseParams np = FEDPROF__V1__NOISE_PARAMS__INIT;
    np.mechanism = FEDPROF__V1__NOISE_MECHANISM__NOISE_MECHANISM_GAUSSIAN;
    np.unit = FEDPROF__V1__PRIVACY_UNIT__PRIVACY_UNIT_CLIENT;
    np.noise_multiplier = 1.1;
    np.stddev = 1.1;
    np.delta = 1e-5;
    Fedprof__V1__TrainingPlan plan = FEDPROF__V1__TRAINING_PLAN__INIT;
    plan.local_epochs = 1;
    plan.batch_size = 64;
    plan.learning_rate = 0.001f;
    plan.seed = 7;
    plan.clip_bound = 1.0;
    plan.noise = &np;
    plan.epsilon_budget = 8.0;
    Fedprof__V1__ModelHeader mh = FEDPROF__V1__MODEL_HEADER__INIT;
    mh.round_id = 3;
    mh.model_version = 2;
    mh.parameter_count = 1000;
    mh.layout_hash = 0x1234abcd5678ef90ull;
    mh.dtype = FEDPROF__V1__DTYPE__DTYPE_F32_LE;
    mh.chunk_bytes = 1u << 20;
    mh.chunk_count = 1;
    Fedprof__V1__GetTaskResponse gt = FEDPROF__V1__GET_TASK_RESPONSE__INIT;
    gt.protocol_version = 1;
    gt.action = FEDPROF__V1__TASK_ACTION__TASK_ACTION_TRAIN;
    gt.round_id = 3;
    gt.model_version = 2;
    gt.model = &mh;
    gt.plan = &plan;
    gt.round_deadline_unix_ms = 1700000000000ull;
    proto_seed("get_task_response", &gt.base);

    Fedprof__V1__UpdateHeader uh = FEDPROF__V1__UPDATE_HEADER__INIT;
    uh.protocol_version = 1;
    uh.round_id = 3;
    uh.base_model_version = 2;
    uh.parameter_count = 1000;
    uh.layout_hash = 0x1234abcd5678ef90ull;
    uh.dtype = FEDPROF__V1__DTYPE__DTYPE_F32_LE;
    uh.clip_bound = 1.0;
    uh.noise = &np;
    uh.chunk_bytes = 1024;
    uh.chunk_count = 4;
    Fedprof__V1__UpdateStreamMessage us = FEDPROF__V1__UPDATE_STREAM_MESSAGE__INIT;
    us.body_case = FEDPROF__V1__UPDATE_STREAM_MESSAGE__BODY_HEADER;
    us.header = &uh;
    proto_seed("update_stream_header", &us.base);

    uint8_t bytes[64];
    for (int i = 0; i < 64; i++)
        bytes[i] = (uint8_t)(i * 37);
    Fedprof__V1__TensorChunk ch = FEDPROF__V1__TENSOR_CHUNK__INIT;
    ch.index = 1;
    ch.offset = 64;
    ch.data.data = bytes;
    ch.data.len = 64;
    Fedprof__V1__ModelStreamMessage ms = FEDPROF__V1__MODEL_STREAM_MESSAGE__INIT;
    ms.body_case = FEDPROF__V1__MODEL_STREAM_MESSAGE__BODY_CHUNK;
    ms.chunk = &ch;
    proto_seed("model_stream_chunk", &ms.base);

    Fedprof__V1__RejectionCount rc1 = FEDPROF__V1__REJECTION_COUNT__INIT, rc2 = FEDPROF__V1__REJECTION_COUNT__INIT;
    rc1.reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_DIGEST;
    rc1.count = 2;
    rc2.reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_STALE;
    rc2.count = 5;
    Fedprof__V1__RejectionCount *rcs[] = {&rc1, &rc2};
    char *parts[] = {(char *)"partner-a", (char *)"partner-b", (char *)"partner-c"};
    Fedprof__V1__StatusResponse sr = FEDPROF__V1__STATUS_RESPONSE__INIT;
    sr.protocol_version = 1;
    sr.round_id = 3;
    sr.phase = FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_TRAIN;
    sr.members = 3;
    sr.selected = 3;
    sr.bytes_in = 123456;
    sr.n_rejections = 2;
    sr.rejections = rcs;
    sr.n_participants = 3;
    sr.participants = parts;
    proto_seed("status_response", &sr.base);

    Fedprof__V1__PushUpdateResponse pr = FEDPROF__V1__PUSH_UPDATE_RESPONSE__INIT;
    pr.protocol_version = 1;
    pr.accepted = 0;
    pr.reason = FEDPROF__V1__REJECT_REASON__REJECT_REASON_CLIP_BOUND;
    pr.detail = (char *)"L2 norm 3.2 above clip bound 1";
    pr.round_id = 3;
    proto_seed("push_update_response", &pr.base);
}

/* ---- safetensors ------------------------------------------------------------------------------ */

static void safetensors_seed(const char *name, int two)
{
    fp_layout_t l;
    fp_layout_init(&l);
    size_t s1[2] = {3, 4}, s2[1] = {5};
    if (fp_layout_add(&l, "emb.weight", 2, s1) != FP_OK || (two && fp_layout_add(&l, "ln.bias", 1, s2) != FP_OK))
        die("layout");
    float *x = fp_buffer_alloc(l.total);
    if (!x)
        die("buffer");
    for (size_t i = 0; i < l.total; i++)
        x[i] = (float)i - 7.5f;
    fp_kv_t meta[] = {{"format", "pt"}, {"round", "3"}};
    char path[1200], dir[1024];
    snprintf(dir, sizeof dir, "%s/fuzz_safetensors", root);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        die(dir);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (fp_safetensors_save(path, &l, x, two ? "model." : NULL, meta, two ? 2 : 0) != FP_OK)
        die("safetensors save");
    fp_buffer_free(x);
    fp_layout_free(&l);
}

/* ---- data and config ---------------------------------------------------------------------------- */

static void text_seeds(void)
{
    const char *t1 = "1 1\n1 2\n1 3\n2 2\n2 4\n2 5\n3 1\n3 5\n3 2\n";
    const char *t2 = "\xef\xbb\xbf" "10 7 1700000000\r\n10 8 1700000001\r\n20 7 1700000002\r\n20 9 1700000003\r\n"
                     "20 8 1700000004\r\n";
    const char *c1 = "user_id,item_id,timestamp\nalice,apple,3\nalice,pear,1\nbob,\"kiwi, green\",2\n"
                     "bob,apple,5\nalice,fig,2\n";
    const char *c2 = "rating,item_id,user_id\n5,i1,u1\n4,i2,u1\n3,i3,u2\n1,i1,u2\n";
    put("fuzz_data", "text_plain", t1, strlen(t1));
    put("fuzz_data", "text_bom_crlf_ts", t2, strlen(t2));
    put("fuzz_data", "csv_quoted", c1, strlen(c1));
    put("fuzz_data", "csv_reordered", c2, strlen(c2));
}

static void config_seeds(void)
{
    const char *y1 = "model:\n  dim: 32\n  blocks: 2\n  heads: 1\n  maxlen: 50\n  dropout: 0.2\n"
                     "train:\n  epochs: 3\n  batch: 128\n  lr: 0.002\n  eval_every: 1\n  seed: 42\n"
                     "eval:\n  negatives: 100\n  k: 10\n  full: true\ndata:\n  format: csv\n";
    const char *y2 = "train: {epochs: 5, lr: 1.0e-3, beta1: 0.9, beta2: 0.98, threads: 2}\n";
    const char *y3 = "# empty apart from a comment\n";
    put("fuzz_config", "full", y1, strlen(y1));
    put("fuzz_config", "flow", y2, strlen(y2));
    put("fuzz_config", "comment", y3, strlen(y3));
    const char *y4 = "server:\n  listen: \"0.0.0.0:7070\"\n  n_items: 500\n  rounds: 3\n  clients_per_round: 2\n"
                     "  min_clients: 2\n  min_updates: 1\n  strategy: fedadam\n  server_lr: 0.01\n"
                     "federation:\n  local_epochs: 2\n  unit: record\n  clip: 1.0\n  noise_multiplier: 1.1\n"
                     "  delta: 1.0e-5\nclient:\n  server: \"coord:7070\"\n  budget_epsilon: 8\n"
                     "  ledger_dir: \"ledger\"\n";
    put("fuzz_config", "federation", y4, strlen(y4));
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz/corpus)\n", argv[0]);
        return 2;
    }
    root = argv[1];
    if (mkdir(root, 0755) != 0 && errno != EEXIST)
        die(root);
    stream_seed("model_1", 0x00, FP_TS_MODEL, 1, 64);
    stream_seed("model_40_own", 0x08, FP_TS_MODEL, 40, 64);
    stream_seed("model_16_dst_hash", 0x06, FP_TS_MODEL, 16, 64);
    stream_seed("update_100", 0x01, FP_TS_UPDATE, 100, 128);
    stream_seed("update_33_dst_hash", 0x07, FP_TS_UPDATE, 33, 64);
    proto_seeds();
    safetensors_seed("one_tensor.safetensors", 0);
    safetensors_seed("two_tensors_meta.safetensors", 1);
    text_seeds();
    config_seeds();
    return 0;
}
