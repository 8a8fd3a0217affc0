/* npy: write a float32 matrix as a NumPy .npy file (format version 1.0), atomically. */
#ifndef FEDPROF_COMMON_NPY_H
#define FEDPROF_COMMON_NPY_H

#include <stddef.h>

#include "common/errors.h"

/* rows x cols row-major float32 (little-endian, as on every platform we build for). */
fp_status fp_npy_save_f32(const char *path, const float *data, size_t rows, size_t cols);

#endif
