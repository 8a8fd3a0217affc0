/* checkpoint: safetensors files written atomically and read defensively.
 *
 * Writing streams the header and then each tensor straight from the flat parameter buffer into
 * a temporary file next to the target, so a crash leaves either the old file or the new one,
 * never a torn one. Reading trusts nothing in the file: the header length is bounded before it
 * is allocated, the JSON is parsed with a depth limit and UTF-8 validation, every field's type
 * is checked, and the tensors must tile the data section exactly (as the reference validator
 * requires) before one aligned buffer of the data section's size is allocated and filled. */
#include "common/checkpoint.h"
#include "common/utf8.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint.c stores tensors in host order; safetensors is little-endian"
#endif

#define ST_TMP_SUFFIX ".tmp.XXXXXX"
#define ST_JSON_DEPTH 8 /* root -> tensor -> shape is 3 deep; anything deeper is not ours */
#define ST_META_KEY "__metadata__"
#define ST_ALIGN 64
/* json-c spends ~100 bytes per value, so a 100 MB header of tiny values would cost gigabytes.
 * A valid header has at most ~11 separators (',' ':') per tensor; allow that for every tensor
 * plus 65536 metadata entries, and refuse anything denser before json-c sees it. */
#define ST_MAX_SEPARATORS (16u * FP_ST_MAX_TENSORS + 2u * 65536u)

/* ------------------------------------------------------------------------------------------ */
/* Atomic file writes                                                                          */

typedef struct {
    int fd;
    char *tmp;        /* "<path>.tmp.XXXXXX", malloc'd */
    const char *path; /* borrowed */
} atomic_file;

static const char *errno_text(int e, char *buf, size_t n)
{
    if (strerror_r(e, buf, n) != 0)
        snprintf(buf, n, "errno %d", e);
    return buf;
}

static fp_status atomic_open(atomic_file *a, const char *path)
{
    char eb[128];
    a->fd = -1;
    a->tmp = NULL;
    a->path = path;
    if (!path || !*path)
        return FP_FAIL(FP_ERR_INVALID, "empty path");
    size_t n = strlen(path);
    if (n >= PATH_MAX)
        return FP_FAIL(FP_ERR_INVALID, "path too long (%zu bytes)", n);
    a->tmp = malloc(n + sizeof ST_TMP_SUFFIX);
    if (!a->tmp)
        return FP_FAIL(FP_ERR_NOMEM, "temporary name for %s", path);
    memcpy(a->tmp, path, n);
    memcpy(a->tmp + n, ST_TMP_SUFFIX, sizeof ST_TMP_SUFFIX);
    a->fd = mkstemp(a->tmp);
    if (a->fd < 0) {
        int e = errno;
        free(a->tmp);
        a->tmp = NULL;
        return FP_FAIL(FP_ERR_IO, "create temporary file for %s: %s", path, errno_text(e, eb, sizeof eb));
    }
    return FP_OK;
}

/* Remove the temporary file; used on every failure path. */
static void atomic_abort(atomic_file *a)
{
    if (a->fd >= 0)
        close(a->fd);
    if (a->tmp) {
        unlink(a->tmp);
        free(a->tmp);
    }
    a->fd = -1;
    a->tmp = NULL;
}

static fp_status atomic_write(atomic_file *a, const void *data, size_t n)
{
    char eb[128];
    const unsigned char *p = data;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : n;
        ssize_t w = write(a->fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return FP_FAIL(FP_ERR_IO, "write %s: %s", a->tmp, errno_text(errno, eb, sizeof eb));
        }
        if (w == 0)
            return FP_FAIL(FP_ERR_IO, "write %s: no progress", a->tmp);
        p += w;
        n -= (size_t)w;
    }
    return FP_OK;
}

/* fsync the directory holding path, so the rename itself survives a crash. */
static fp_status fsync_parent(const char *path)
{
    char eb[128];
    const char *slash = strrchr(path, '/');
    char *dir;
    if (!slash)
        dir = strdup(".");
    else if (slash == path)
        dir = strdup("/");
    else
        dir = strndup(path, (size_t)(slash - path));
    if (!dir)
        return FP_FAIL(FP_ERR_NOMEM, "directory name of %s", path);
    fp_status st = FP_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
        st = FP_FAIL(FP_ERR_IO, "open directory %s: %s", dir, errno_text(errno, eb, sizeof eb));
    } else {
        /* Some file systems cannot fsync a directory; that is not a failure of ours. */
        if (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP && errno != EROFS)
            st = FP_FAIL(FP_ERR_IO, "fsync directory %s: %s", dir, errno_text(errno, eb, sizeof eb));
        close(fd);
    }
    free(dir);
    return st;
}

/* fsync, close, give the file the old file's mode (0644 when new), rename over path. On failure
 * the temporary file is removed and path is untouched. */
static fp_status atomic_commit(atomic_file *a)
{
    char eb[128];
    struct stat old;
    mode_t mode = 0644;
    if (stat(a->path, &old) == 0 && S_ISREG(old.st_mode))
        mode = old.st_mode & 07777;
    if (fchmod(a->fd, mode) != 0) {
        fp_status st = FP_FAIL(FP_ERR_IO, "chmod %s: %s", a->tmp, errno_text(errno, eb, sizeof eb));
        atomic_abort(a);
        return st;
    }
    if (fsync(a->fd) != 0) {
        fp_status st = FP_FAIL(FP_ERR_IO, "fsync %s: %s", a->tmp, errno_text(errno, eb, sizeof eb));
        atomic_abort(a);
        return st;
    }
    int fd = a->fd;
    a->fd = -1;
    if (close(fd) != 0) {
        fp_status st = FP_FAIL(FP_ERR_IO, "close %s: %s", a->tmp, errno_text(errno, eb, sizeof eb));
        atomic_abort(a);
        return st;
    }
    if (rename(a->tmp, a->path) != 0) {
        fp_status st = FP_FAIL(FP_ERR_IO, "rename %s to %s: %s", a->tmp, a->path, errno_text(errno, eb, sizeof eb));
        atomic_abort(a);
        return st;
    }
    free(a->tmp);
    a->tmp = NULL;
    return fsync_parent(a->path);
}

fp_status fp_file_write_atomic(const char *path, const void *data, size_t n)
{
    if (!data && n > 0)
        return FP_FAIL(FP_ERR_INVALID, "NULL data for %s", path ? path : "(null)");
    atomic_file a;
    fp_status st = atomic_open(&a, path);
    if (st != FP_OK)
        return st;
    st = atomic_write(&a, data, n);
    if (st != FP_OK) {
        atomic_abort(&a);
        return st;
    }
    return atomic_commit(&a);
}

/* ------------------------------------------------------------------------------------------ */
/* Shared helpers                                                                              */

/* 1 if s[0..n) is well-formed UTF-8. */
static int utf8_valid(const unsigned char *s, size_t n) { return fp_utf8_prefix(s, n) == n; }

static void put_u64_le(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64_le(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ------------------------------------------------------------------------------------------ */
/* Saving                                                                                      */

/* "<prefix><name>" in a malloc'd string; NULL on allocation failure (message left). */
static char *full_name(const char *prefix, const char *name)
{
    size_t a = prefix ? strlen(prefix) : 0, b = strlen(name);
    char *s = malloc(a + b + 1);
    if (!s) {
        FP_FAIL(FP_ERR_NOMEM, "tensor name");
        return NULL;
    }
    if (a)
        memcpy(s, prefix, a);
    memcpy(s + a, name, b + 1);
    return s;
}

/* Add val to an object / array, taking ownership of val even on failure. 0 on success. */
static int obj_add(json_object *o, const char *key, json_object *val)
{
    if (!val || json_object_object_add(o, key, val) != 0) {
        json_object_put(val);
        return -1;
    }
    return 0;
}

static int arr_add(json_object *a, json_object *val)
{
    if (!val || json_object_array_add(a, val) != 0) {
        json_object_put(val);
        return -1;
    }
    return 0;
}

/* Build the header object: metadata first, then the tensors in layout order with contiguous,
 * increasing data_offsets. */
static fp_status build_header(const fp_st_group_t *g, size_t n_groups, const fp_kv_t *meta, size_t n_meta,
                              json_object **out)
{
    fp_status st = FP_OK;
    char *name = NULL;
    json_object *root = json_object_new_object();
    if (!root)
        return FP_FAIL(FP_ERR_NOMEM, "safetensors header");
    if (n_meta > 0) {
        json_object *m = json_object_new_object();
        if (obj_add(root, ST_META_KEY, m) != 0) {
            st = FP_FAIL(FP_ERR_NOMEM, "safetensors metadata");
            goto done;
        }
        for (size_t i = 0; i < n_meta; i++) {
            const char *k = meta[i].key, *v = meta[i].value;
            if (!k || !v) {
                st = FP_FAIL(FP_ERR_INVALID, "metadata entry %zu has a NULL key or value", i);
                goto done;
            }
            if (!utf8_valid((const unsigned char *)k, strlen(k)) ||
                !utf8_valid((const unsigned char *)v, strlen(v))) {
                st = FP_FAIL(FP_ERR_INVALID, "metadata entry %zu is not UTF-8", i);
                goto done;
            }
            if (json_object_object_get_ex(m, k, NULL)) {
                st = FP_FAIL(FP_ERR_INVALID, "duplicate metadata key '%s'", k);
                goto done;
            }
            if (obj_add(m, k, json_object_new_string(v)) != 0) {
                st = FP_FAIL(FP_ERR_NOMEM, "safetensors metadata");
                goto done;
            }
        }
    }
    uint64_t off = 0;
    for (size_t gi = 0; gi < n_groups; gi++)
    for (size_t i = 0; i < g[gi].layout->n_tensors; i++) {
        const fp_tensor_info_t *t = &g[gi].layout->tensors[i];
        name = full_name(g[gi].prefix, t->name);
        if (!name) {
            st = FP_ERR_NOMEM;
            goto done;
        }
        if (strcmp(name, ST_META_KEY) == 0 || !utf8_valid((const unsigned char *)name, strlen(name))) {
            st = FP_FAIL(FP_ERR_INVALID, "tensor name '%s' cannot be stored", name);
            goto done;
        }
        if (json_object_object_get_ex(root, name, NULL)) {
            st = FP_FAIL(FP_ERR_INVALID, "duplicate tensor name '%s'", name);
            goto done;
        }
        json_object *ti = json_object_new_object();
        if (obj_add(root, name, ti) != 0 || obj_add(ti, "dtype", json_object_new_string("F32")) != 0) {
            st = FP_FAIL(FP_ERR_NOMEM, "safetensors header");
            goto done;
        }
        json_object *shape = json_object_new_array();
        if (obj_add(ti, "shape", shape) != 0) {
            st = FP_FAIL(FP_ERR_NOMEM, "safetensors header");
            goto done;
        }
        for (int d = 0; d < t->ndim; d++)
            if (arr_add(shape, json_object_new_uint64(t->shape[d])) != 0) {
                st = FP_FAIL(FP_ERR_NOMEM, "safetensors header");
                goto done;
            }
        uint64_t end = off + (uint64_t)t->numel * sizeof(float);
        json_object *offs = json_object_new_array();
        if (obj_add(ti, "data_offsets", offs) != 0 || arr_add(offs, json_object_new_uint64(off)) != 0 ||
            arr_add(offs, json_object_new_uint64(end)) != 0) {
            st = FP_FAIL(FP_ERR_NOMEM, "safetensors header");
            goto done;
        }
        off = end;
        free(name);
        name = NULL;
    }
done:
    free(name);
    if (st != FP_OK) {
        json_object_put(root);
        return st;
    }
    *out = root;
    return FP_OK;
}

fp_status fp_safetensors_save(const char *path, const fp_layout_t *l, const float *data, const char *prefix,
                              const fp_kv_t *meta, size_t n_meta)
{
    if (!l)
        return FP_FAIL(FP_ERR_INVALID, "fp_safetensors_save: NULL argument");
    fp_st_group_t g = {l, data, prefix};
    return fp_safetensors_save_groups(path, &g, 1, meta, n_meta);
}

fp_status fp_safetensors_save_groups(const char *path, const fp_st_group_t *g, size_t n_groups, const fp_kv_t *meta,
                                     size_t n_meta)
{
    if (!path || (!g && n_groups > 0) || (!meta && n_meta > 0))
        return FP_FAIL(FP_ERR_INVALID, "fp_safetensors_save: NULL argument");
    size_t n_tensors = 0;
    for (size_t gi = 0; gi < n_groups; gi++) {
        if (!g[gi].layout || (!g[gi].data && g[gi].layout->n_tensors > 0))
            return FP_FAIL(FP_ERR_INVALID, "fp_safetensors_save: NULL layout or data in group %zu", gi);
        n_tensors += g[gi].layout->n_tensors;
    }
    if (n_tensors > FP_ST_MAX_TENSORS)
        return FP_FAIL(FP_ERR_RANGE, "%zu tensors (at most %d)", n_tensors, FP_ST_MAX_TENSORS);
    json_object *root = NULL;
    fp_status st = build_header(g, n_groups, meta, n_meta, &root);
    if (st != FP_OK)
        return st;
    size_t js_len = 0;
    const char *js =
        json_object_to_json_string_length(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &js_len);
    if (!js) {
        json_object_put(root);
        return FP_FAIL(FP_ERR_NOMEM, "safetensors header text");
    }
    /* Pad with spaces so the data section starts 8-byte aligned, as the reference writer does. */
    size_t padded = (js_len + 7) / 8 * 8;
    if (padded > FP_ST_MAX_HEADER) {
        json_object_put(root);
        return FP_FAIL(FP_ERR_RANGE, "safetensors header of %zu bytes is too large", padded);
    }
    unsigned char *hdr = malloc(8 + padded);
    if (!hdr) {
        json_object_put(root);
        return FP_FAIL(FP_ERR_NOMEM, "safetensors header");
    }
    put_u64_le(hdr, padded);
    memcpy(hdr + 8, js, js_len);
    memset(hdr + 8 + js_len, ' ', padded - js_len);
    json_object_put(root);

    atomic_file a;
    st = atomic_open(&a, path);
    if (st != FP_OK) {
        free(hdr);
        return st;
    }
    st = atomic_write(&a, hdr, 8 + padded);
    free(hdr);
    for (size_t gi = 0; gi < n_groups; gi++)
        for (size_t i = 0; st == FP_OK && i < g[gi].layout->n_tensors; i++) {
            const fp_tensor_info_t *t = &g[gi].layout->tensors[i];
            st = atomic_write(&a, g[gi].data + t->offset, t->numel * sizeof(float));
        }
    if (st != FP_OK) {
        atomic_abort(&a);
        return st;
    }
    return atomic_commit(&a);
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                     */

typedef struct {
    char *name;
    int ndim;
    size_t shape[FP_PARAMS_MAX_DIMS];
    uint64_t begin, end; /* byte offsets in the data section */
    const float *data;   /* into fp_st_file.buf */
} st_tensor;

struct fp_st_file {
    st_tensor *t; /* n_tensors, in data order */
    size_t n_tensors;
    char **meta_k, **meta_v;
    size_t n_meta;
    unsigned char *buf; /* the data section, ST_ALIGN-aligned */
    size_t buf_len;
};

void fp_safetensors_close(fp_st_file_t *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_tensors; i++)
        free(f->t[i].name);
    free(f->t);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta_k[i]);
        free(f->meta_v[i]);
    }
    free(f->meta_k);
    free(f->meta_v);
    free(f->buf);
    free(f);
}

/* Keys as written in the text (a string followed by ':'); the text already parsed as JSON. */
static size_t raw_key_count(const char *s, size_t n)
{
    size_t keys = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '"')
            continue;
        for (i++; i < n && s[i] != '"'; i++)
            if (s[i] == '\\')
                i++;
        size_t j = i + 1;
        while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r'))
            j++;
        if (j < n && s[j] == ':')
            keys++;
    }
    return keys;
}

/* Separators (',' and ':') outside strings: a bound on the number of JSON values. */
static size_t separator_count(const char *s, size_t n)
{
    size_t seps = 0;
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == ',' || c == ':') {
            seps++;
        }
    }
    return seps;
}

/* Keys held by the parsed objects; fewer than raw_key_count means json-c merged duplicates. */
static size_t tree_key_count(json_object *o)
{
    size_t keys = 0;
    if (json_object_is_type(o, json_type_object)) {
        keys += (size_t)json_object_object_length(o);
        json_object_object_foreach(o, k, v)
        {
            (void)k;
            keys += tree_key_count(v);
        }
    } else if (json_object_is_type(o, json_type_array)) {
        size_t n = json_object_array_length(o);
        for (size_t i = 0; i < n; i++)
            keys += tree_key_count(json_object_array_get_idx(o, i));
    }
    return keys;
}

/* A non-negative JSON integer, or -1 (not an integer, negative, or above INT64_MAX). */
static int64_t json_nonneg_int(json_object *o)
{
    if (!json_object_is_type(o, json_type_int))
        return -1;
    int64_t v = json_object_get_int64(o);
    if (v < 0 || (v == INT64_MAX && json_object_get_uint64(o) != (uint64_t)INT64_MAX))
        return -1;
    return v;
}

static fp_status parse_meta(const char *path, json_object *m, fp_st_file_t *f)
{
    if (!json_object_is_type(m, json_type_object))
        return FP_FAIL(FP_ERR_FORMAT, "%s: __metadata__ is not an object", path);
    size_t n = (size_t)json_object_object_length(m);
    if (n == 0)
        return FP_OK;
    f->meta_k = calloc(n, sizeof *f->meta_k);
    f->meta_v = calloc(n, sizeof *f->meta_v);
    if (!f->meta_k || !f->meta_v)
        return FP_FAIL(FP_ERR_NOMEM, "%s: metadata", path);
    json_object_object_foreach(m, k, v)
    {
        if (!json_object_is_type(v, json_type_string))
            return FP_FAIL(FP_ERR_FORMAT, "%s: metadata value of '%.64s' is not a string", path, k);
        const char *s = json_object_get_string(v);
        size_t len = (size_t)json_object_get_string_len(v);
        if (strlen(s) != len)
            return FP_FAIL(FP_ERR_FORMAT, "%s: metadata value of '%.64s' holds a NUL", path, k);
        f->meta_k[f->n_meta] = strdup(k);
        f->meta_v[f->n_meta] = strdup(s);
        f->n_meta++;
        if (!f->meta_k[f->n_meta - 1] || !f->meta_v[f->n_meta - 1])
            return FP_FAIL(FP_ERR_NOMEM, "%s: metadata", path);
    }
    return FP_OK;
}

/* Validate one tensor entry into t (name not yet set). data_len bounds the offsets. */
static fp_status parse_tensor(const char *path, const char *name, json_object *o, uint64_t data_len,
                              st_tensor *t)
{
    if (!json_object_is_type(o, json_type_object))
        return FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s' is not an object", path, name);
    json_object *dtype = NULL, *shape = NULL, *offs = NULL;
    json_object_object_foreach(o, k, v)
    {
        if (strcmp(k, "dtype") == 0)
            dtype = v;
        else if (strcmp(k, "shape") == 0)
            shape = v;
        else if (strcmp(k, "data_offsets") == 0)
            offs = v;
        else
            return FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s' has an unknown field '%.64s'", path, name, k);
    }
    if (!dtype || !shape || !offs)
        return FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s' lacks dtype, shape or data_offsets", path, name);
    if (!json_object_is_type(dtype, json_type_string))
        return FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s': dtype is not a string", path, name);
    if (strcmp(json_object_get_string(dtype), "F32") != 0 || json_object_get_string_len(dtype) != 3)
        return FP_FAIL(FP_ERR_UNSUPPORTED, "%s: tensor '%.64s': dtype %.16s (only F32 is read)", path, name,
                       json_object_get_string(dtype));
    if (!json_object_is_type(shape, json_type_array))
        return FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s': shape is not an array", path, name);
    size_t nd = json_object_array_length(shape);
    if (nd > FP_PARAMS_MAX_DIMS)
        return FP_FAIL(FP_ERR_UNSUPPORTED, "%s: tensor '%.64s' has %zu dimensions (at most %d)", path, name, nd,
                       FP_PARAMS_MAX_DIMS);
    uint64_t bytes = sizeof(float);
    int overflow = 0;
    t->ndim = (int)nd;
    for (size_t d = 0; d < nd; d++) {
        int64_t dim = json_nonneg_int(json_object_array_get_idx(shape, d));
        if (dim < 0)
            return FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s': shape[%zu] is not a non-negative integer", path,
                           name, d);
        t->shape[d] = (size_t)dim;
        if (dim != 0 && bytes > UINT64_MAX / (uint64_t)dim)
            overflow = 1; /* a later zero dimension does not make this header sane */
        else
            bytes *= (uint64_t)dim;
    }
    if (overflow)
        return FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s': shape product overflows", path, name);
    if (!json_object_is_type(offs, json_type_array) || json_object_array_length(offs) != 2)
        return FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s': data_offsets is not [begin, end]", path, name);
    int64_t b = json_nonneg_int(json_object_array_get_idx(offs, 0));
    int64_t e = json_nonneg_int(json_object_array_get_idx(offs, 1));
    if (b < 0 || e < 0)
        return FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s': data_offsets are not non-negative integers", path,
                       name);
    if ((uint64_t)b > data_len || (uint64_t)e > data_len)
        return FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s': data_offsets [%lld, %lld] past the end (%llu bytes)",
                       path, name, (long long)b, (long long)e, (unsigned long long)data_len);
    if (e < b || (uint64_t)(e - b) != bytes)
        return FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s': data_offsets [%lld, %lld] do not hold its shape",
                       path, name, (long long)b, (long long)e);
    t->begin = (uint64_t)b;
    t->end = (uint64_t)e;
    return FP_OK;
}

static int cmp_offsets(const void *pa, const void *pb)
{
    const st_tensor *a = pa, *b = pb;
    if (a->begin != b->begin)
        return a->begin < b->begin ? -1 : 1;
    if (a->end != b->end)
        return a->end < b->end ? -1 : 1;
    return 0;
}

/* Parse and check the header text hdr[0..n) against a data section of data_len bytes. */
static fp_status parse_header(const char *path, const char *hdr, size_t n, uint64_t data_len, fp_st_file_t *f)
{
    fp_status st = FP_OK;
    if (!utf8_valid((const unsigned char *)hdr, n))
        return FP_FAIL(FP_ERR_FORMAT, "%s: header is not UTF-8", path);
    if (n > INT_MAX)
        return FP_FAIL(FP_ERR_FORMAT, "%s: header too large", path);
    if (separator_count(hdr, n) > ST_MAX_SEPARATORS)
        return FP_FAIL(FP_ERR_FORMAT, "%s: header has too many entries", path);
    struct json_tokener *tok = json_tokener_new_ex(ST_JSON_DEPTH);
    if (!tok)
        return FP_FAIL(FP_ERR_NOMEM, "%s: JSON tokener", path);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8 | JSON_TOKENER_ALLOW_TRAILING_CHARS);
    json_object *root = json_tokener_parse_ex(tok, hdr, (int)n);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!root || jerr != json_tokener_success) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: header is not valid JSON (%s)", path,
                     jerr == json_tokener_continue ? "truncated" : json_tokener_error_desc(jerr));
        goto done;
    }
    for (size_t i = end; i < n; i++)
        if (hdr[i] != ' ' && hdr[i] != '\t' && hdr[i] != '\n' && hdr[i] != '\r') {
            st = FP_FAIL(FP_ERR_FORMAT, "%s: bytes after the header JSON", path);
            goto done;
        }
    if (!json_object_is_type(root, json_type_object)) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    if (raw_key_count(hdr, end) != tree_key_count(root)) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: header has duplicate names", path);
        goto done;
    }
    json_object *meta = NULL;
    int has_meta = json_object_object_get_ex(root, ST_META_KEY, &meta);
    size_t nt = (size_t)json_object_object_length(root) - (has_meta ? 1 : 0);
    if (nt > FP_ST_MAX_TENSORS) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: %zu tensors (at most %d)", path, nt, FP_ST_MAX_TENSORS);
        goto done;
    }
    if (has_meta && (st = parse_meta(path, meta, f)) != FP_OK)
        goto done;
    if (nt > 0) {
        f->t = calloc(nt, sizeof *f->t);
        if (!f->t) {
            st = FP_FAIL(FP_ERR_NOMEM, "%s: tensor table", path);
            goto done;
        }
    }
    json_object_object_foreach(root, k, v)
    {
        if (strcmp(k, ST_META_KEY) == 0)
            continue;
        st_tensor *t = &f->t[f->n_tensors];
        if ((st = parse_tensor(path, k, v, data_len, t)) != FP_OK)
            goto done;
        if (!(t->name = strdup(k))) {
            st = FP_FAIL(FP_ERR_NOMEM, "%s: tensor name", path);
            goto done;
        }
        f->n_tensors++;
    }
    /* The tensors must tile [0, data_len) exactly: no gaps, no overlaps, nothing left over. */
    if (f->n_tensors > 1)
        qsort(f->t, f->n_tensors, sizeof *f->t, cmp_offsets);
    uint64_t at = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        if (f->t[i].begin != at) {
            st = FP_FAIL(FP_ERR_FORMAT, "%s: tensor '%.64s' starts at %llu, expected %llu (gap or overlap)", path,
                         f->t[i].name, (unsigned long long)f->t[i].begin, (unsigned long long)at);
            goto done;
        }
        at = f->t[i].end;
    }
    if (at != data_len)
        st = FP_FAIL(FP_ERR_FORMAT, "%s: tensors cover %llu of %llu data bytes", path, (unsigned long long)at,
                     (unsigned long long)data_len);
done:
    json_object_put(root);
    return st;
}

/* Read exactly n bytes or fail. */
static fp_status read_exact(FILE *fp, const char *path, void *dst, size_t n)
{
    if (n > 0 && fread(dst, 1, n, fp) != n)
        return FP_FAIL(ferror(fp) ? FP_ERR_IO : FP_ERR_FORMAT, "%s: %s", path,
                       ferror(fp) ? "read error" : "file shorter than its header says");
    return FP_OK;
}

fp_status fp_safetensors_load(const char *path, fp_st_file_t **out)
{
    char eb[128];
    if (!path || !out)
        return FP_FAIL(FP_ERR_INVALID, "fp_safetensors_load: NULL argument");
    *out = NULL;
    fp_status st = FP_OK;
    char *hdr = NULL;
    fp_st_file_t *f = NULL;
    /* O_NONBLOCK so that a FIFO given as a path cannot hang us before the regular-file check. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return FP_FAIL(errno == ENOENT ? FP_ERR_NOT_FOUND : FP_ERR_IO, "open %s: %s", path,
                       errno_text(errno, eb, sizeof eb));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return FP_FAIL(FP_ERR_IO, "%s: not a regular file", path);
    }
    FILE *fp = fdopen(fd, "rb");
    if (!fp) {
        close(fd);
        return FP_FAIL(FP_ERR_NOMEM, "%s: stream", path);
    }
    uint64_t size = (uint64_t)sb.st_size;
    unsigned char len8[8];
    if (size < 8) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: %llu bytes is too short for a safetensors file", path,
                     (unsigned long long)size);
        goto done;
    }
    if ((st = read_exact(fp, path, len8, 8)) != FP_OK)
        goto done;
    uint64_t hlen = get_u64_le(len8);
    if (hlen > FP_ST_MAX_HEADER || hlen > size - 8) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: header length %llu is impossible (file %llu bytes, limit %u)", path,
                     (unsigned long long)hlen, (unsigned long long)size, (unsigned)FP_ST_MAX_HEADER);
        goto done;
    }
    uint64_t data_len = size - 8 - hlen;
    if (data_len > SIZE_MAX - ST_ALIGN) {
        st = FP_FAIL(FP_ERR_RANGE, "%s: data section too large", path);
        goto done;
    }
    hdr = malloc((size_t)hlen + 1);
    f = calloc(1, sizeof *f);
    if (!hdr || !f) {
        st = FP_FAIL(FP_ERR_NOMEM, "%s: header of %llu bytes", path, (unsigned long long)hlen);
        goto done;
    }
    if ((st = read_exact(fp, path, hdr, (size_t)hlen)) != FP_OK)
        goto done;
    hdr[hlen] = '\0';
    if ((st = parse_header(path, hdr, (size_t)hlen, data_len, f)) != FP_OK)
        goto done;
    /* Only now, with the header proven consistent with the file size, allocate the data. */
    size_t alloc = data_len == 0 ? ST_ALIGN : ((size_t)data_len + ST_ALIGN - 1) / ST_ALIGN * ST_ALIGN;
    f->buf = aligned_alloc(ST_ALIGN, alloc);
    if (!f->buf) {
        st = FP_FAIL(FP_ERR_NOMEM, "%s: %llu data bytes", path, (unsigned long long)data_len);
        goto done;
    }
    f->buf_len = (size_t)data_len;
    if ((st = read_exact(fp, path, f->buf, f->buf_len)) != FP_OK)
        goto done;
    for (size_t i = 0; i < f->n_tensors; i++)
        f->t[i].data = (const float *)(const void *)(f->buf + f->t[i].begin);
done:
    fclose(fp);
    free(hdr);
    if (st != FP_OK) {
        fp_safetensors_close(f);
        return st;
    }
    *out = f;
    return FP_OK;
}

const char *fp_st_meta(const fp_st_file_t *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_k[i], key) == 0)
            return f->meta_v[i];
    return NULL;
}

size_t fp_st_n_tensors(const fp_st_file_t *f) { return f ? f->n_tensors : 0; }

void fp_st_tensor(const fp_st_file_t *f, size_t i, const char **name, int *ndim, const size_t **shape,
                  const float **data)
{
    const st_tensor *t = (f && i < f->n_tensors) ? &f->t[i] : NULL;
    if (name)
        *name = t ? t->name : NULL;
    if (ndim)
        *ndim = t ? t->ndim : 0;
    if (shape)
        *shape = t ? t->shape : NULL;
    if (data)
        *data = t ? t->data : NULL;
}

static void shape_text(char *buf, size_t n, int ndim, const size_t *shape)
{
    size_t at = 0;
    at += (size_t)snprintf(buf + at, n - at, "[");
    for (int d = 0; d < ndim && at < n; d++)
        at += (size_t)snprintf(buf + at, n - at, d ? ", %zu" : "%zu", shape[d]);
    if (at < n)
        snprintf(buf + at, n - at, "]");
}

fp_status fp_safetensors_read_layout(const fp_st_file_t *f, const fp_layout_t *l, const char *prefix, float *data)
{
    if (!f || !l || (!data && l->n_tensors > 0))
        return FP_FAIL(FP_ERR_INVALID, "fp_safetensors_read_layout: NULL argument");
    for (size_t i = 0; i < l->n_tensors; i++) {
        const fp_tensor_info_t *want = &l->tensors[i];
        char *name = full_name(prefix, want->name);
        if (!name)
            return FP_ERR_NOMEM;
        const st_tensor *t = NULL;
        for (size_t j = 0; j < f->n_tensors && !t; j++)
            if (strcmp(f->t[j].name, name) == 0)
                t = &f->t[j];
        if (!t) {
            fp_status st = FP_FAIL(FP_ERR_FORMAT, "checkpoint has no tensor '%s'", name);
            free(name);
            return st;
        }
        int same = t->ndim == want->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = t->shape[d] == want->shape[d];
        if (!same) {
            char a[128], b[128];
            shape_text(a, sizeof a, t->ndim, t->shape);
            shape_text(b, sizeof b, want->ndim, want->shape);
            fp_status st = FP_FAIL(FP_ERR_FORMAT, "tensor '%s' has shape %s in the checkpoint, %s in the model",
                                   name, a, b);
            free(name);
            return st;
        }
        free(name);
        memcpy(data + want->offset, t->data, want->numel * sizeof(float));
    }
    return FP_OK;
}
