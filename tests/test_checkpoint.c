/* test_checkpoint: safetensors round trips, every corruption the reader must refuse, truncated
 * and bit-flipped files (an error, never a crash), a pure-Python reader as an outside check,
 * and atomic writes that leave nothing behind when they fail. */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/checkpoint.h"
#include "common/params.h"

static char g_dir[64];

static const char *tpath(const char *name)
{
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            remove_tree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/fp_ckpt_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    remove_tree(g_dir);
    return 0;
}

/* Number of directory entries whose name contains ".tmp." (leftover temporary files). */
static int count_tmp_files(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n)
        assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *read_bytes(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    assert_true(sz >= 0);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return b;
}

/* A safetensors file from a header text of hlen bytes (declared length decl) and data_len zero
 * bytes of data. */
static void write_st(const char *path, const char *hdr, size_t hlen, uint64_t decl, size_t data_len)
{
    size_t n = 8 + hlen + data_len;
    unsigned char *b = calloc(1, n);
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(decl >> (8 * i));
    memcpy(b + 8, hdr, hlen);
    write_bytes(path, b, n);
    free(b);
}

/* A small model-like layout and deterministic data. */
static void make_layout(fp_layout_t *l)
{
    fp_layout_init(l);
    const size_t emb[] = {7, 4}, pos[] = {5, 4}, g[] = {4}, w4[] = {2, 3, 1, 2};
    assert_int_equal(fp_layout_add(l, "item_emb", 2, emb), FP_OK);
    assert_int_equal(fp_layout_add(l, "pos_emb", 2, pos), FP_OK);
    assert_int_equal(fp_layout_add(l, "ln.gamma", 1, g), FP_OK);
    assert_int_equal(fp_layout_add(l, "w4", 4, w4), FP_OK);
}

static float *make_data(const fp_layout_t *l)
{
    float *d = fp_buffer_alloc(l->total);
    assert_non_null(d);
    for (size_t i = 0; i < l->n_tensors; i++) {
        const fp_tensor_info_t *t = &l->tensors[i];
        for (size_t j = 0; j < t->numel; j++)
            d[t->offset + j] = (float)((double)(i + 1) * 0.37 - (double)j * 0.011 + sin((double)j));
    }
    return d;
}

static void test_roundtrip(void **state)
{
    (void)state;
    fp_layout_t l;
    make_layout(&l);
    float *d = make_data(&l);
    /* Non-finite values must survive bit for bit. */
    d[l.tensors[0].offset + 1] = NAN;
    d[l.tensors[1].offset + 2] = -INFINITY;
    const fp_kv_t meta[] = {{"step", "12"}, {"config", "{\"model\": {\"dim\": 4}}"}, {"note", "h\xc3\xa9llo \"q\"\n"}};
    const char *p = tpath("rt.safetensors");
    assert_int_equal(fp_safetensors_save(p, &l, d, "model.", meta, 3), FP_OK);
    assert_int_equal(count_tmp_files(g_dir), 0);

    /* Layout on disk: 8-byte length, header padded to a multiple of 8, tightly packed data. */
    size_t n = 0;
    unsigned char *raw = read_bytes(p, &n);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)raw[i] << (8 * i);
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(raw[8], '{');
    size_t numel = 0;
    for (size_t i = 0; i < l.n_tensors; i++)
        numel += l.tensors[i].numel;
    assert_int_equal(n, 8 + hlen + numel * 4);
    free(raw);

    fp_st_file_t *f = NULL;
    assert_int_equal(fp_safetensors_load(p, &f), FP_OK);
    assert_int_equal(fp_st_n_tensors(f), l.n_tensors);
    for (size_t i = 0; i < l.n_tensors; i++) {
        const char *name;
        int ndim;
        const size_t *shape;
        const float *td;
        fp_st_tensor(f, i, &name, &ndim, &shape, &td);
        char want[128];
        snprintf(want, sizeof want, "model.%s", l.tensors[i].name); /* written in layout order */
        assert_string_equal(name, want);
        assert_int_equal(ndim, l.tensors[i].ndim);
        for (int k = 0; k < ndim; k++)
            assert_int_equal(shape[k], l.tensors[i].shape[k]);
        assert_memory_equal(td, d + l.tensors[i].offset, l.tensors[i].numel * sizeof(float));
        if (i == 0)
            assert_int_equal((uintptr_t)td % 64, 0);
    }
    assert_string_equal(fp_st_meta(f, "step"), "12");
    assert_string_equal(fp_st_meta(f, "config"), "{\"model\": {\"dim\": 4}}");
    assert_string_equal(fp_st_meta(f, "note"), "h\xc3\xa9llo \"q\"\n");
    assert_null(fp_st_meta(f, "absent"));
    assert_null(fp_st_meta(f, "__metadata__"));

    /* Out-of-range index: NULL outputs, no crash. */
    const char *nm = "x";
    const float *td = (const float *)1;
    fp_st_tensor(f, 99, &nm, NULL, NULL, &td);
    assert_null(nm);
    assert_null(td);

    float *back = fp_buffer_alloc(l.total);
    assert_non_null(back);
    assert_int_equal(fp_safetensors_read_layout(f, &l, "model.", back), FP_OK);
    for (size_t i = 0; i < l.n_tensors; i++)
        assert_memory_equal(back + l.tensors[i].offset, d + l.tensors[i].offset,
                            l.tensors[i].numel * sizeof(float));
    fp_safetensors_close(f);
    fp_safetensors_close(NULL);
    fp_buffer_free(back);
    fp_buffer_free(d);
    fp_layout_free(&l);
}

static void test_roundtrip_plain(void **state)
{
    (void)state;
    fp_layout_t l;
    make_layout(&l);
    float *d = make_data(&l);
    const char *p = tpath("plain.safetensors");
    assert_int_equal(fp_safetensors_save(p, &l, d, NULL, NULL, 0), FP_OK);
    fp_st_file_t *f = NULL;
    assert_int_equal(fp_safetensors_load(p, &f), FP_OK);
    assert_null(fp_st_meta(f, "step"));
    float *back = fp_buffer_alloc(l.total);
    assert_int_equal(fp_safetensors_read_layout(f, &l, NULL, back), FP_OK);
    assert_int_equal(fp_safetensors_read_layout(f, &l, "", back), FP_OK);
    assert_memory_equal(back, d, l.total * sizeof(float));
    fp_safetensors_close(f);

    /* An empty layout is a valid (empty) file. Overwriting keeps the path valid. */
    fp_layout_t empty;
    fp_layout_init(&empty);
    assert_int_equal(fp_safetensors_save(p, &empty, NULL, NULL, NULL, 0), FP_OK);
    assert_int_equal(fp_safetensors_load(p, &f), FP_OK);
    assert_int_equal(fp_st_n_tensors(f), 0);
    fp_safetensors_close(f);
    fp_buffer_free(back);
    fp_buffer_free(d);
    fp_layout_free(&l);
}

static void test_read_layout_errors(void **state)
{
    (void)state;
    fp_layout_t l;
    make_layout(&l);
    float *d = make_data(&l);
    const char *p = tpath("rl.safetensors");
    assert_int_equal(fp_safetensors_save(p, &l, d, "m.", NULL, 0), FP_OK);
    fp_st_file_t *f = NULL;
    assert_int_equal(fp_safetensors_load(p, &f), FP_OK);

    /* Same names, one different shape. */
    fp_layout_t other;
    fp_layout_init(&other);
    const size_t emb[] = {7, 4}, pos[] = {6, 4};
    assert_int_equal(fp_layout_add(&other, "item_emb", 2, emb), FP_OK);
    assert_int_equal(fp_layout_add(&other, "pos_emb", 2, pos), FP_OK);
    float *back = fp_buffer_alloc(other.total);
    assert_int_equal(fp_safetensors_read_layout(f, &other, "m.", back), FP_ERR_FORMAT);
    assert_non_null(strstr(fp_error_message(), "m.pos_emb"));
    assert_non_null(strstr(fp_error_message(), "[5, 4]"));
    assert_non_null(strstr(fp_error_message(), "[6, 4]"));
    fp_buffer_free(back);
    fp_layout_free(&other);

    /* Same size, different rank. */
    fp_layout_init(&other);
    const size_t flat[] = {28};
    assert_int_equal(fp_layout_add(&other, "item_emb", 1, flat), FP_OK);
    back = fp_buffer_alloc(other.total);
    assert_int_equal(fp_safetensors_read_layout(f, &other, "m.", back), FP_ERR_FORMAT);
    fp_buffer_free(back);
    fp_layout_free(&other);

    /* A tensor the file lacks. */
    fp_layout_init(&other);
    const size_t g[] = {4};
    assert_int_equal(fp_layout_add(&other, "ln.gamma", 1, g), FP_OK);
    assert_int_equal(fp_layout_add(&other, "ln.beta", 1, g), FP_OK);
    back = fp_buffer_alloc(other.total);
    assert_int_equal(fp_safetensors_read_layout(f, &other, "m.", back), FP_ERR_FORMAT);
    assert_non_null(strstr(fp_error_message(), "m.ln.beta"));
    /* Wrong prefix: nothing matches. */
    assert_int_equal(fp_safetensors_read_layout(f, &l, "model.", d), FP_ERR_FORMAT);
    assert_non_null(strstr(fp_error_message(), "model.item_emb"));
    assert_int_equal(fp_safetensors_read_layout(f, &l, NULL, d), FP_ERR_FORMAT);
    fp_buffer_free(back);
    fp_layout_free(&other);

    fp_safetensors_close(f);
    fp_buffer_free(d);
    fp_layout_free(&l);
}

typedef struct {
    const char *json;
    size_t len; /* 0: strlen(json) */
    size_t data_len;
    fp_status want;
} st_case;

#define T1(shape, offs) "{\"a\":{\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":" offs "}}"

static const st_case g_cases[] = {
    /* Valid ones, to show the checks are not simply refusing everything. */
    {"{}", 0, 0, FP_OK},
    {"{}   \n\t ", 0, 0, FP_OK},
    {T1("[1]", "[0,4]"), 0, 4, FP_OK},
    {T1("[]", "[0,4]"), 0, 4, FP_OK},
    {T1("[0,3]", "[0,0]"), 0, 0, FP_OK},
    {"{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
     0, 12, FP_OK},
    {"{\"__metadata__\":{\"k\":\"v\"}}", 0, 0, FP_OK},
    /* Not a JSON object. */
    {"", 0, 0, FP_ERR_FORMAT},
    {"[]", 0, 0, FP_ERR_FORMAT},
    {"\"x\"", 0, 0, FP_ERR_FORMAT},
    {"5 ", 0, 0, FP_ERR_FORMAT},
    {"null", 0, 0, FP_ERR_FORMAT},
    {"{", 0, 0, FP_ERR_FORMAT},
    {"{\"a\":", 0, 0, FP_ERR_FORMAT},
    {"{}x", 0, 0, FP_ERR_FORMAT},
    {"{}\0 ", 4, 0, FP_ERR_FORMAT},
    {"{\"a\":1,}", 0, 0, FP_ERR_FORMAT},
    {"{'a':1}", 0, 0, FP_ERR_FORMAT},
    {"{\"\xff\":{}}", 0, 0, FP_ERR_FORMAT},
    {"{\"__metadata__\":{\"k\":[[[[[[[[[[[[1]]]]]]]]]]]]}}", 0, 0, FP_ERR_FORMAT},
    /* Data not covered by any tensor. */
    {"{}", 0, 4, FP_ERR_FORMAT},
    /* Duplicate names: json-c would silently keep the last one. */
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
     0, 4, FP_ERR_FORMAT},
    {"{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, 0, FP_ERR_FORMAT},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, 0, FP_ERR_FORMAT},
    {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, FP_ERR_FORMAT},
    /* Tensor entries of the wrong shape or type. */
    {"{\"a\":5}", 0, 0, FP_ERR_FORMAT},
    {"{\"a\":null}", 0, 0, FP_ERR_FORMAT},
    {"{\"a\":[]}", 0, 0, FP_ERR_FORMAT},
    {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, FP_ERR_FORMAT},
    {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 0, 4, FP_ERR_FORMAT},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, 4, FP_ERR_FORMAT},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 0, 4, FP_ERR_FORMAT},
    {"{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, FP_ERR_FORMAT},
    {"{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 0, 4, FP_ERR_UNSUPPORTED},
    {"{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, FP_ERR_UNSUPPORTED},
    {"{\"a\":{\"dtype\":\"F32\\u0000\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, FP_ERR_UNSUPPORTED},
    {T1("3", "[0,4]"), 0, 4, FP_ERR_FORMAT},
    {T1("[-1]", "[0,4]"), 0, 4, FP_ERR_FORMAT},
    {T1("[1.0]", "[0,4]"), 0, 4, FP_ERR_FORMAT},
    {T1("[\"1\"]", "[0,4]"), 0, 4, FP_ERR_FORMAT},
    {T1("[null]", "[0,4]"), 0, 4, FP_ERR_FORMAT},
    {T1("[NaN]", "[0,4]"), 0, 4, FP_ERR_FORMAT},
    {T1("[1,1,1,1,1]", "[0,4]"), 0, 4, FP_ERR_UNSUPPORTED},
    /* Shape products that overflow. */
    {T1("[4294967296,4294967296]", "[0,0]"), 0, 0, FP_ERR_FORMAT},
    {T1("[4611686018427387904]", "[0,0]"), 0, 0, FP_ERR_FORMAT},
    {T1("[18446744073709551615]", "[0,0]"), 0, 0, FP_ERR_FORMAT},
    {T1("[4294967296,4294967296,0]", "[0,0]"), 0, 0, FP_ERR_FORMAT},
    /* data_offsets that do not match the shape, or are malformed. */
    {T1("[1]", "[0,8]"), 0, 8, FP_ERR_FORMAT},
    {T1("[2]", "[0,4]"), 0, 4, FP_ERR_FORMAT},
    {T1("[1]", "[4,0]"), 0, 4, FP_ERR_FORMAT},
    {T1("[1]", "[0]"), 0, 4, FP_ERR_FORMAT},
    {T1("[1]", "[0,4,8]"), 0, 4, FP_ERR_FORMAT},
    {T1("[1]", "[\"0\",\"4\"]"), 0, 4, FP_ERR_FORMAT},
    {T1("[1]", "[0,4.0]"), 0, 4, FP_ERR_FORMAT},
    {T1("[1]", "[-4,0]"), 0, 4, FP_ERR_FORMAT},
    {T1("[1]", "{\"b\":0}"), 0, 4, FP_ERR_FORMAT},
    {T1("[1]", "[18446744073709551612,18446744073709551616]"), 0, 4, FP_ERR_FORMAT},
    /* Offsets past the end of the file, not starting at 0, gaps, overlaps, leftovers. */
    {T1("[2]", "[0,8]"), 0, 4, FP_ERR_FORMAT},
    {T1("[1]", "[4,8]"), 0, 8, FP_ERR_FORMAT},
    {T1("[1]", "[0,4]"), 0, 8, FP_ERR_FORMAT},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
     0, 12, FP_ERR_FORMAT},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     0, 12, FP_ERR_FORMAT},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
     0, 4, FP_ERR_FORMAT},
    /* Metadata that is not a map of strings. */
    {"{\"__metadata__\":\"x\"}", 0, 0, FP_ERR_FORMAT},
    {"{\"__metadata__\":[]}", 0, 0, FP_ERR_FORMAT},
    {"{\"__metadata__\":{\"k\":1}}", 0, 0, FP_ERR_FORMAT},
    {"{\"__metadata__\":{\"k\":null}}", 0, 0, FP_ERR_FORMAT},
    {"{\"__metadata__\":{\"k\":true}}", 0, 0, FP_ERR_FORMAT},
    {"{\"__metadata__\":{\"k\":{}}}", 0, 0, FP_ERR_FORMAT},
    {"{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", 0, 0, FP_ERR_FORMAT},
};

static void test_corrupt_headers(void **state)
{
    (void)state;
    const char *p = tpath("case.safetensors");
    for (size_t i = 0; i < sizeof g_cases / sizeof g_cases[0]; i++) {
        const st_case *c = &g_cases[i];
        size_t len = c->len ? c->len : strlen(c->json);
        write_st(p, c->json, len, len, c->data_len);
        fp_st_file_t *f = NULL;
        fp_status st = fp_safetensors_load(p, &f);
        if (st != c->want)
            print_error("case %zu (%s): got %d (%s), want %d\n", i, c->json, (int)st, fp_error_message(),
                        (int)c->want);
        assert_int_equal(st, c->want);
        if (st == FP_OK) {
            assert_non_null(f);
            fp_safetensors_close(f);
        } else {
            assert_null(f);
            assert_true(strlen(fp_error_message()) > 0);
        }
    }
}

static void test_valid_details(void **state)
{
    (void)state;
    /* Tensors listed out of data order come back in data order; zero-size and scalar tensors. */
    const char *h = "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                    "\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[16,16]},"
                    "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[4,8]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t hl = strlen(h);
    unsigned char buf[512];
    assert_true(8 + hl + 16 <= sizeof buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, h, hl);
    const float vals[4] = {1.5f, -2.0f, 3.25f, 4.0f};
    memcpy(buf + 8 + hl, vals, sizeof vals);
    const char *p = tpath("valid.safetensors");
    write_bytes(p, buf, 8 + hl + 16);
    fp_st_file_t *f = NULL;
    assert_int_equal(fp_safetensors_load(p, &f), FP_OK);
    assert_int_equal(fp_st_n_tensors(f), 4);
    const char *want[] = {"a", "s", "b", "z"};
    for (size_t i = 0; i < 4; i++) {
        const char *name;
        int ndim;
        const size_t *shape;
        const float *d;
        fp_st_tensor(f, i, &name, &ndim, &shape, &d);
        assert_string_equal(name, want[i]);
        if (i == 0)
            assert_true(d[0] == 1.5f);
        if (i == 1) {
            assert_int_equal(ndim, 0);
            assert_true(d[0] == -2.0f);
        }
        if (i == 2) {
            assert_int_equal(ndim, 1);
            assert_int_equal(shape[0], 2);
            assert_true(d[0] == 3.25f && d[1] == 4.0f);
        }
        if (i == 3) {
            assert_int_equal(ndim, 2);
            assert_int_equal(shape[0], 0);
            assert_int_equal(shape[1], 3);
        }
    }
    fp_safetensors_close(f);
}

static void test_header_length(void **state)
{
    (void)state;
    const char *p = tpath("hl.safetensors");
    const char *h = "{}      ";
    fp_st_file_t *f = NULL;
    write_st(p, h, 8, 8, 0);
    assert_int_equal(fp_safetensors_load(p, &f), FP_OK);
    fp_safetensors_close(f);
    f = NULL;
    /* Longer than what follows, longer than the limit, absurd. */
    write_st(p, h, 8, 9, 0);
    assert_int_equal(fp_safetensors_load(p, &f), FP_ERR_FORMAT);
    write_st(p, h, 8, (uint64_t)FP_ST_MAX_HEADER + 1, 0);
    assert_int_equal(fp_safetensors_load(p, &f), FP_ERR_FORMAT);
    write_st(p, h, 8, UINT64_MAX, 0);
    assert_int_equal(fp_safetensors_load(p, &f), FP_ERR_FORMAT);
    write_st(p, h, 8, UINT64_MAX - 7, 0);
    assert_int_equal(fp_safetensors_load(p, &f), FP_ERR_FORMAT);
    /* Shorter than the text: the rest is data that no tensor claims. */
    write_st(p, h, 8, 2, 0);
    assert_int_equal(fp_safetensors_load(p, &f), FP_ERR_FORMAT);
    /* Files shorter than the length prefix. */
    write_bytes(p, "\x02\0\0\0", 4);
    assert_int_equal(fp_safetensors_load(p, &f), FP_ERR_FORMAT);
    write_bytes(p, "", 0);
    assert_int_equal(fp_safetensors_load(p, &f), FP_ERR_FORMAT);
    assert_null(f);
    /* Not a file at all. */
    assert_int_equal(fp_safetensors_load(tpath("does-not-exist"), &f), FP_ERR_NOT_FOUND);
    assert_int_equal(fp_safetensors_load(g_dir, &f), FP_ERR_IO);
    assert_int_equal(fp_safetensors_load(NULL, &f), FP_ERR_INVALID);
    assert_int_equal(fp_safetensors_load(p, NULL), FP_ERR_INVALID);
    assert_null(f);
}

/* A header with n zero-size tensors. */
static void write_many(const char *path, size_t n)
{
    size_t cap = n * 64 + 16, at = 0;
    char *h = malloc(cap);
    assert_non_null(h);
    h[at++] = '{';
    for (size_t i = 0; i < n; i++)
        at += (size_t)snprintf(h + at, cap - at, "%s\"t%zu\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}",
                               i ? "," : "", i);
    h[at++] = '}';
    write_st(path, h, at, at, 0);
    free(h);
}

static void test_too_many_tensors(void **state)
{
    (void)state;
    const char *p = tpath("many.safetensors");
    fp_st_file_t *f = NULL;
    write_many(p, FP_ST_MAX_TENSORS);
    assert_int_equal(fp_safetensors_load(p, &f), FP_OK);
    assert_int_equal(fp_st_n_tensors(f), FP_ST_MAX_TENSORS);
    fp_safetensors_close(f);
    f = NULL;
    write_many(p, FP_ST_MAX_TENSORS + 1);
    assert_int_equal(fp_safetensors_load(p, &f), FP_ERR_FORMAT);
    assert_null(f);
}

/* A header dense with tiny values (millions of array elements) is refused before it is parsed:
 * json-c would spend ~100 bytes of memory per value. */
static void test_dense_header(void **state)
{
    (void)state;
    const size_t n = 2000000;
    const char *head = "{\"a\":{\"dtype\":\"F32\",\"shape\":[";
    const char *tail = "],\"data_offsets\":[0,0]}}";
    size_t len = strlen(head) + 2 * n + strlen(tail);
    char *h = malloc(len + 1);
    assert_non_null(h);
    char *q = h;
    memcpy(q, head, strlen(head));
    q += strlen(head);
    for (size_t i = 0; i < n; i++) {
        *q++ = '0';
        *q++ = ',';
    }
    q--; /* no trailing comma */
    memcpy(q, tail, strlen(tail) + 1);
    len = strlen(h);
    const char *p = tpath("dense.safetensors");
    write_st(p, h, len, len, 0);
    free(h);
    fp_st_file_t *f = NULL;
    assert_int_equal(fp_safetensors_load(p, &f), FP_ERR_FORMAT);
    assert_non_null(strstr(fp_error_message(), "too many"));
    assert_null(f);
}

/* Every proper prefix of a valid file is refused; bit flips never crash. */
static void test_truncated_and_flipped(void **state)
{
    (void)state;
    fp_layout_t l;
    fp_layout_init(&l);
    const size_t a[] = {3, 2}, b[] = {5};
    assert_int_equal(fp_layout_add(&l, "a", 2, a), FP_OK);
    assert_int_equal(fp_layout_add(&l, "b", 1, b), FP_OK);
    float *d = make_data(&l);
    const fp_kv_t meta[] = {{"k", "v"}};
    const char *src = tpath("small.safetensors");
    assert_int_equal(fp_safetensors_save(src, &l, d, NULL, meta, 1), FP_OK);
    size_t n = 0;
    unsigned char *full = read_bytes(src, &n);
    assert_true(n > 100);
    const char *p = tpath("cut.safetensors");
    fp_st_file_t *f = NULL;
    for (size_t len = 0; len < n; len++) {
        write_bytes(p, full, len);
        fp_status st = fp_safetensors_load(p, &f);
        if (st == FP_OK)
            print_error("prefix of %zu bytes loaded\n", len);
        assert_int_not_equal(st, FP_OK);
        assert_null(f);
    }
    write_bytes(p, full, n);
    assert_int_equal(fp_safetensors_load(p, &f), FP_OK);
    fp_safetensors_close(f);

    /* One extra byte is data no tensor claims. */
    static unsigned char m[4096];
    if (n >= sizeof m) {
        fail_msg("test file of %zu bytes is larger than expected", n);
        return;
    }
    memcpy(m, full, n);
    m[n] = 0;
    write_bytes(p, m, n + 1);
    assert_int_equal(fp_safetensors_load(p, &f), FP_ERR_FORMAT);

    const unsigned char flips[] = {0x00, 0xff, '{', '"', '9', ' ', ',', 0x80};
    for (size_t pos = 0; pos < n; pos++) {
        for (size_t k = 0; k < sizeof flips; k++) {
            memcpy(m, full, n);
            m[pos] = flips[k];
            write_bytes(p, m, n);
            f = NULL;
            if (fp_safetensors_load(p, &f) == FP_OK) {
                assert_non_null(f);
                /* Whatever loaded must be internally consistent. */
                for (size_t i = 0; i < fp_st_n_tensors(f); i++) {
                    const char *name;
                    int ndim;
                    const size_t *shape;
                    const float *td;
                    fp_st_tensor(f, i, &name, &ndim, &shape, &td);
                    assert_non_null(name);
                    assert_non_null(td);
                    size_t ne = 1;
                    for (int q = 0; q < ndim; q++)
                        ne *= shape[q];
                    volatile float sink = 0.0f;
                    for (size_t q = 0; q < ne; q++)
                        sink += td[q];
                    (void)sink;
                }
                fp_safetensors_close(f);
            } else {
                assert_null(f);
            }
        }
    }
    free(full);
    fp_buffer_free(d);
    fp_layout_free(&l);
}

static void test_save_bad_args(void **state)
{
    (void)state;
    fp_layout_t l;
    make_layout(&l);
    float *d = make_data(&l);
    const char *p = tpath("bad.safetensors");
    const fp_kv_t dup[] = {{"k", "1"}, {"k", "2"}};
    assert_int_equal(fp_safetensors_save(p, &l, d, NULL, dup, 2), FP_ERR_INVALID);
    const fp_kv_t nul[] = {{"k", NULL}};
    assert_int_equal(fp_safetensors_save(p, &l, d, NULL, nul, 1), FP_ERR_INVALID);
    const fp_kv_t bad_utf8[] = {{"k", "\xc3\x28"}};
    assert_int_equal(fp_safetensors_save(p, &l, d, NULL, bad_utf8, 1), FP_ERR_INVALID);
    assert_int_equal(fp_safetensors_save(p, &l, NULL, NULL, NULL, 0), FP_ERR_INVALID);
    assert_int_equal(fp_safetensors_save(p, &l, d, NULL, NULL, 1), FP_ERR_INVALID);
    assert_int_equal(fp_safetensors_save(NULL, &l, d, NULL, NULL, 0), FP_ERR_INVALID);
    assert_int_equal(fp_safetensors_save(p, &l, d, "\xff", NULL, 0), FP_ERR_INVALID);
    /* A tensor that would collide with the metadata key. */
    fp_layout_t m;
    fp_layout_init(&m);
    const size_t one[] = {1};
    assert_int_equal(fp_layout_add(&m, "__metadata__", 1, one), FP_OK);
    float *md = fp_buffer_alloc(m.total);
    assert_int_equal(fp_safetensors_save(p, &m, md, NULL, NULL, 0), FP_ERR_INVALID);
    assert_int_equal(fp_safetensors_save(p, &m, md, "x.", NULL, 0), FP_OK);
    fp_buffer_free(md);
    fp_layout_free(&m);
    /* Nothing was left half-written. */
    assert_int_equal(count_tmp_files(g_dir), 0);
    fp_buffer_free(d);
    fp_layout_free(&l);
}

static void test_atomic_write(void **state)
{
    (void)state;
    const char *p = tpath("atomic.txt");
    size_t n = 0;
    assert_int_equal(fp_file_write_atomic(p, "hello", 5), FP_OK);
    unsigned char *b = read_bytes(p, &n);
    assert_int_equal(n, 5);
    assert_memory_equal(b, "hello", 5);
    free(b);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0644);
    /* Replacing keeps the old file's mode. */
    assert_int_equal(chmod(p, 0600), 0);
    assert_int_equal(fp_file_write_atomic(p, "world!!", 7), FP_OK);
    b = read_bytes(p, &n);
    assert_int_equal(n, 7);
    assert_memory_equal(b, "world!!", 7);
    free(b);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    /* Empty contents. */
    assert_int_equal(fp_file_write_atomic(p, NULL, 0), FP_OK);
    b = read_bytes(p, &n);
    assert_int_equal(n, 0);
    free(b);
    assert_int_equal(fp_file_write_atomic(p, NULL, 3), FP_ERR_INVALID);
    assert_int_equal(fp_file_write_atomic(NULL, "x", 1), FP_ERR_INVALID);
    assert_int_equal(fp_file_write_atomic("", "x", 1), FP_ERR_INVALID);

    /* A directory that does not exist: nothing is created. */
    assert_int_equal(fp_file_write_atomic("/nonexistent-fedprof-dir/x.bin", "x", 1), FP_ERR_IO);
    assert_true(strlen(fp_error_message()) > 0);

    /* The rename fails (the target is a directory): the temp file is removed and the target
     * is untouched. */
    const char *dir = tpath("target-dir");
    assert_int_equal(mkdir(dir, 0755), 0);
    const char *inner = tpath("target-dir/keep.txt");
    assert_int_equal(fp_file_write_atomic(inner, "old", 3), FP_OK);
    assert_int_equal(fp_file_write_atomic(dir, "new", 3), FP_ERR_IO);
    assert_int_equal(count_tmp_files(g_dir), 0);
    assert_int_equal(stat(dir, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    b = read_bytes(inner, &n);
    assert_int_equal(n, 3);
    assert_memory_equal(b, "old", 3);
    free(b);

    /* Saving a checkpoint over a directory fails the same way. */
    fp_layout_t l;
    make_layout(&l);
    float *d = make_data(&l);
    assert_int_equal(fp_safetensors_save(dir, &l, d, NULL, NULL, 0), FP_ERR_IO);
    assert_int_equal(count_tmp_files(g_dir), 0);
    /* A path in a missing directory. */
    assert_int_equal(fp_safetensors_save("/nonexistent-fedprof-dir/m.safetensors", &l, d, NULL, NULL, 0),
                     FP_ERR_IO);
    fp_buffer_free(d);
    fp_layout_free(&l);
}

/* An outside reader: a pure-Python safetensors parser (json + struct + numpy) must accept the
 * file, find the invariants of the format, and compute the same sums. Skipped without
 * /usr/bin/python3 and numpy. */
static const char *g_py =
    "import json, struct, sys\n"
    "import numpy as np\n"
    "b = open(sys.argv[1], 'rb').read()\n"
    "n = struct.unpack('<Q', b[:8])[0]\n"
    "assert n % 8 == 0 and 8 + n <= len(b)\n"
    "h = json.loads(b[8:8 + n].decode('utf-8'))\n"
    "meta = h.pop('__metadata__', {})\n"
    "data = b[8 + n:]\n"
    "pos = 0\n"
    "for s, e, k in sorted((v['data_offsets'][0], v['data_offsets'][1], k) for k, v in h.items()):\n"
    "    assert s == pos, (k, s, pos)\n"
    "    pos = e\n"
    "assert pos == len(data)\n"
    "for k in sorted(h):\n"
    "    v = h[k]\n"
    "    assert v['dtype'] == 'F32'\n"
    "    s, e = v['data_offsets']\n"
    "    a = np.frombuffer(data[s:e], dtype='<f4').reshape(v['shape'])\n"
    "    print('T', k, repr(float(a.astype(np.float64).sum())), 'x'.join(map(str, a.shape)))\n"
    "for k in sorted(meta):\n"
    "    print('M', k, meta[k])\n"
    "print('END')\n";

static void test_python_reader(void **state)
{
    (void)state;
    if (access("/usr/bin/python3", X_OK) != 0 ||
        system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0) {
        print_message("python3 with numpy not available: skipping\n");
        skip();
    }
    fp_layout_t l;
    make_layout(&l);
    float *d = make_data(&l);
    const fp_kv_t meta[] = {{"step", "3"}, {"kind", "sasrec"}};
    const char *p = tpath("py.safetensors");
    assert_int_equal(fp_safetensors_save(p, &l, d, "model.", meta, 2), FP_OK);
    const char *script = tpath("reader.py");
    write_bytes(script, g_py, strlen(g_py));
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s 2>&1", script, p);
    FILE *pp = popen(cmd, "r");
    assert_non_null(pp);
    char line[512];
    size_t seen = 0;
    int meta_seen = 0, end = 0;
    while (fgets(line, sizeof line, pp)) {
        char name[256], dims[64];
        double sum;
        if (sscanf(line, "T %255s %lf %63s", name, &sum, dims) == 3) {
            assert_true(strncmp(name, "model.", 6) == 0);
            const fp_tensor_info_t *t = fp_layout_find(&l, name + 6);
            assert_non_null(t);
            double want = 0.0, mag = 0.0;
            for (size_t j = 0; j < t->numel; j++) {
                want += d[t->offset + j];
                mag += fabs(d[t->offset + j]);
            }
            /* Same float32 values summed in float64 in a different order: error bounded by
             * n * eps64 * sum|x|. */
            assert_true(fabs(sum - want) <= 1e-12 * (mag + 1.0));
            char wdims[64] = "";
            for (int k = 0; k < t->ndim; k++)
                snprintf(wdims + strlen(wdims), sizeof wdims - strlen(wdims), k ? "x%zu" : "%zu", t->shape[k]);
            assert_string_equal(dims, wdims);
            seen++;
        } else if (strncmp(line, "M step 3", 8) == 0 || strncmp(line, "M kind sasrec", 13) == 0) {
            meta_seen++;
        } else if (strncmp(line, "END", 3) == 0) {
            end = 1;
        } else {
            print_error("python: %s", line);
        }
    }
    assert_int_equal(pclose(pp), 0);
    assert_int_equal(seen, l.n_tensors);
    assert_int_equal(meta_seen, 2);
    assert_true(end);
    fp_buffer_free(d);
    fp_layout_free(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_roundtrip_plain),
        cmocka_unit_test(test_read_layout_errors),
        cmocka_unit_test(test_corrupt_headers),
        cmocka_unit_test(test_valid_details),
        cmocka_unit_test(test_header_length),
        cmocka_unit_test(test_too_many_tensors),
        cmocka_unit_test(test_dense_header),
        cmocka_unit_test(test_truncated_and_flipped),
        cmocka_unit_test(test_save_bad_args),
        cmocka_unit_test(test_atomic_write),
        cmocka_unit_test(test_python_reader),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
