/* checkpoint: safetensors files (https://huggingface.co/docs/safetensors) for models and
 * training state, written atomically, read with every size bounded before allocation.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header
 *   {"__metadata__": {"k": "v", ...}, "name": {"dtype": "F32", "shape": [..],
 *    "data_offsets": [begin, end]}, ...}
 * then the raw little-endian tensor bytes. Loadable by Python's safetensors / torch.
 * Only F32 tensors are written; F32 is the only dtype read. */
#ifndef FEDPROF_COMMON_CHECKPOINT_H
#define FEDPROF_COMMON_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"
#include "common/params.h"

#define FP_ST_MAX_HEADER (100u << 20) /* as Python's safetensors */
#define FP_ST_MAX_TENSORS 100000

typedef struct {
    const char *key;
    const char *value;
} fp_kv_t;

/* Write bytes to path atomically: temp file "<path>.tmp.XXXXXX" in the same directory, fsync,
 * rename, fsync dir. On failure (FP_ERR_IO) the temp file is removed and an existing file at
 * path is untouched. A replaced file keeps its mode; a new one gets 0644. Thread-safe. */
fp_status fp_file_write_atomic(const char *path, const void *data, size_t n);

/* Save every tensor of layout l (data is the flat buffer) as "<prefix><name>" (prefix may be
 * NULL), plus string metadata, atomically. */
fp_status fp_safetensors_save(const char *path, const fp_layout_t *l, const float *data, const char *prefix,
                              const fp_kv_t *meta, size_t n_meta);

/* One group of tensors for fp_safetensors_save_groups: every tensor of layout (data is its flat
 * buffer) stored as "<prefix><name>" (prefix may be NULL). */
typedef struct {
    const fp_layout_t *layout;
    const float *data;
    const char *prefix;
} fp_st_group_t;

/* Several groups (e.g. a model and its optimizer moments) in one atomic file, in group order,
 * without copying them into one buffer. Names must be unique across groups. */
fp_status fp_safetensors_save_groups(const char *path, const fp_st_group_t *g, size_t n_groups, const fp_kv_t *meta,
                                     size_t n_meta);

typedef struct fp_st_file fp_st_file_t;

/* Load and validate a whole safetensors file (header JSON, dtypes, shapes vs offsets,
 * offsets contiguous and inside the file). Free with fp_safetensors_close.
 * Errors: FP_ERR_NOT_FOUND (no such file), FP_ERR_IO, FP_ERR_FORMAT (anything malformed:
 * truncation, bad JSON, duplicate names, gaps/overlaps, wrong types, ...), FP_ERR_UNSUPPORTED
 * (a dtype other than F32, more than FP_PARAMS_MAX_DIMS dimensions). Tensors are listed in
 * data order. The data section is read into one 64-byte aligned buffer. */
fp_status fp_safetensors_load(const char *path, fp_st_file_t **out);
void fp_safetensors_close(fp_st_file_t *f); /* NULL is a no-op */

/* Metadata value for key, NULL if absent. Owned by f. */
const char *fp_st_meta(const fp_st_file_t *f, const char *key);
size_t fp_st_n_tensors(const fp_st_file_t *f);
/* Tensor i: name, ndim, shape (up to FP_PARAMS_MAX_DIMS), data (owned by f, aligned). */
void fp_st_tensor(const fp_st_file_t *f, size_t i, const char **name, int *ndim, const size_t **shape,
                  const float **data);
/* Fill data (layout l) from the tensors named "<prefix><name>": each must exist with exactly the
 * layout's shape; otherwise FP_ERR_FORMAT naming the tensor. */
fp_status fp_safetensors_read_layout(const fp_st_file_t *f, const fp_layout_t *l, const char *prefix, float *data);

#endif
