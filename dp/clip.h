/* clip: L2 clipping of one flat vector (a client update) and of the rows of a matrix (per-user
 * gradients), the step that bounds each privacy unit's contribution before noise.
 *
 * Norms are accumulated in double (blocked sums of float squares; relative error far below
 * 2^-30 for any n we meet). A vector whose norm exceeds the bound is multiplied by
 * scale = (bound / norm)·(1 − 2^−20): the margin absorbs the float rounding of every product and
 * the error of the computed norm, so the exact L2 norm of the float result is ≤ bound (not merely
 * bound·(1 + tiny)), which is what the accountant assumes. Vectors within the bound are untouched.
 *
 * All functions are pure (no hidden state) and thread-safe on distinct buffers. NaN or Inf input
 * is refused with FP_ERR_NUMERIC before anything is modified. */
#ifndef FEDPROF_DP_CLIP_H
#define FEDPROF_DP_CLIP_H

#include <stddef.h>

#include "common/errors.h"

/* Safety factor applied to bound/norm when clipping (see above). */
#define FP_DP_CLIP_MARGIN (1.0 - 0x1.0p-20)

/* L2 norm of x[0..n) in double. Errors: FP_ERR_INVALID (x NULL with n > 0), FP_ERR_NUMERIC
 * (NaN/Inf element). n = 0 gives 0. */
fp_status fp_dp_l2_norm(const float *x, size_t n, double *norm);

/* The factor a vector of L2 norm `norm` is multiplied by to clip it to `bound`: 1 when
 * norm ≤ bound, else (bound / norm)·FP_DP_CLIP_MARGIN. Errors: FP_ERR_INVALID (bound not finite
 * or ≤ 0, norm NaN or < 0, factor NULL). Used directly by ghost clipping (norms computed without
 * materialising the rows). */
fp_status fp_dp_clip_factor(double norm, double bound, double *factor);

/* Clip x[0..n) in place to L2 norm ≤ bound. norm_before and scale (may be NULL) receive the norm
 * before clipping and the factor applied (1 when untouched). Errors: FP_ERR_INVALID (x NULL with
 * n > 0, bound not finite or ≤ 0), FP_ERR_NUMERIC (NaN/Inf in x; x untouched). */
fp_status fp_dp_clip_l2(float *x, size_t n, double bound, double *norm_before, double *scale);

/* Per-row L2 norms of the row-major matrix x [rows x cols] into norms[rows]. */
fp_status fp_dp_row_norms(const float *x, size_t rows, size_t cols, double *norms);

/* Clip every row of x [rows x cols] (row-major) to L2 norm ≤ bound in place. norms[rows] and
 * scales[rows] (each may be NULL) receive each row's norm before clipping and the factor applied.
 * Checks every element first: on FP_ERR_NUMERIC no row is modified. */
fp_status fp_dp_clip_rows(float *x, size_t rows, size_t cols, double bound, double *norms, double *scales);

#endif
