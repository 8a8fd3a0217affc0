/* params: one flat float buffer for all parameters of a model, with a table of named views.
 *
 * Gradients and Adam moments are separate buffers with the same layout, so clipping, noise,
 * (de)serialisation, aggregation and checkpoints are one pass over one vector.
 * The layout (names, shapes, order) has a 64-bit hash; anything crossing a boundary carries it. */
#ifndef FEDPROF_COMMON_PARAMS_H
#define FEDPROF_COMMON_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"

#define FP_PARAMS_NAME_MAX 64
#define FP_PARAMS_MAX_DIMS 4

typedef struct {
    char name[FP_PARAMS_NAME_MAX]; /* e.g. "blocks.0.attn.wq" */
    size_t offset;                 /* in floats, from the start of the buffer */
    size_t numel;
    int ndim;
    size_t shape[FP_PARAMS_MAX_DIMS];
} fp_tensor_info_t;

typedef struct {
    fp_tensor_info_t *tensors; /* n_tensors entries, in layout order */
    size_t n_tensors;
    size_t cap_tensors;
    size_t total; /* floats in the whole buffer */
} fp_layout_t;

/* Initialise an empty layout. */
void fp_layout_init(fp_layout_t *l);
/* Append a tensor; its offset is the current total (each tensor aligned to 16 floats so
 * that every view is 64-byte aligned). Fails on bad shape, duplicate name, or overflow. */
fp_status fp_layout_add(fp_layout_t *l, const char *name, int ndim, const size_t *shape);
/* Find a tensor by name; NULL if absent. */
const fp_tensor_info_t *fp_layout_find(const fp_layout_t *l, const char *name);
/* FNV-1a 64 over names, shapes and offsets: equal layouts hash equal. */
uint64_t fp_layout_hash(const fp_layout_t *l);
/* Free the table (not the layout struct itself). Safe on an initialised empty layout. */
void fp_layout_free(fp_layout_t *l);

/* A 64-byte aligned, zeroed float buffer of n floats; free with fp_buffer_free. NULL on failure
 * (and a message is left). */
float *fp_buffer_alloc(size_t n);
void fp_buffer_free(float *p);

/* L2 norm of a vector, accumulated in double. */
double fp_vec_l2(const float *x, size_t n);
/* 1 if every element is finite, 0 otherwise. */
int fp_vec_all_finite(const float *x, size_t n);

#endif
