/* params: flat parameter layouts and aligned buffers. */
#include "common/params.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FP_ALIGN_FLOATS 16

void fp_layout_init(fp_layout_t *l) { memset(l, 0, sizeof *l); }

fp_status fp_layout_add(fp_layout_t *l, const char *name, int ndim, const size_t *shape)
{
    if (!name || strlen(name) >= FP_PARAMS_NAME_MAX || ndim < 1 || ndim > FP_PARAMS_MAX_DIMS)
        return FP_FAIL(FP_ERR_INVALID, "bad tensor declaration '%s'", name ? name : "(null)");
    if (fp_layout_find(l, name))
        return FP_FAIL(FP_ERR_INVALID, "duplicate tensor name '%s'", name);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0 || numel > SIZE_MAX / 4 / shape[i])
            return FP_FAIL(FP_ERR_RANGE, "tensor '%s': bad dimension %d", name, i);
        numel *= shape[i];
    }
    if (l->n_tensors == l->cap_tensors) {
        size_t cap = l->cap_tensors ? l->cap_tensors * 2 : 16;
        fp_tensor_info_t *t = realloc(l->tensors, cap * sizeof *t);
        if (!t)
            return FP_FAIL(FP_ERR_NOMEM, "layout table");
        l->tensors = t;
        l->cap_tensors = cap;
    }
    size_t off = (l->total + FP_ALIGN_FLOATS - 1) / FP_ALIGN_FLOATS * FP_ALIGN_FLOATS;
    if (off > SIZE_MAX / 4 - numel)
        return FP_FAIL(FP_ERR_RANGE, "layout too large");
    fp_tensor_info_t *t = &l->tensors[l->n_tensors++];
    memset(t, 0, sizeof *t);
    strcpy(t->name, name);
    t->offset = off;
    t->numel = numel;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    l->total = off + numel;
    return FP_OK;
}

const fp_tensor_info_t *fp_layout_find(const fp_layout_t *l, const char *name)
{
    for (size_t i = 0; i < l->n_tensors; i++)
        if (strcmp(l->tensors[i].name, name) == 0)
            return &l->tensors[i];
    return NULL;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

uint64_t fp_layout_hash(const fp_layout_t *l)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < l->n_tensors; i++) {
        const fp_tensor_info_t *t = &l->tensors[i];
        h = fnv1a(h, t->name, strlen(t->name) + 1);
        uint64_t v[2 + FP_PARAMS_MAX_DIMS] = {t->offset, (uint64_t)t->ndim};
        for (int d = 0; d < t->ndim; d++)
            v[2 + d] = t->shape[d];
        h = fnv1a(h, v, sizeof v);
    }
    uint64_t total = l->total;
    return fnv1a(h, &total, sizeof total);
}

void fp_layout_free(fp_layout_t *l)
{
    if (!l)
        return;
    free(l->tensors);
    memset(l, 0, sizeof *l);
}

float *fp_buffer_alloc(size_t n)
{
    if (n == 0)
        n = 1;
    if (n > SIZE_MAX / sizeof(float) - 64) {
        FP_FAIL(FP_ERR_RANGE, "buffer of %zu floats too large", n);
        return NULL;
    }
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    float *p = aligned_alloc(64, bytes);
    if (!p) {
        FP_FAIL(FP_ERR_NOMEM, "buffer of %zu floats", n);
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

void fp_buffer_free(float *p) { free(p); }

double fp_vec_l2(const float *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return sqrt(s);
}

int fp_vec_all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}
