/* clip: L2 clipping of a flat vector and of matrix rows (see clip.h for the error argument).
 *
 * Why the margin: clipping with exactly bound/norm can leave the float result a few ulps above
 * the bound (each product rounds, and the computed norm itself is approximate). Multiplying by
 * (1 − 2^−20) more than covers both (products: 2^−24 relative; norm: below 2^−40 with blocked
 * double sums: about n·2^-61), at a cost of one part in a million of signal. */
#include "dp/clip.h"

#include <math.h>
#include <stdint.h>

/* Sum of squares in double, in blocks of 256 so rounding error grows with log(n), not n. Returns
 * NaN or Inf if any element is NaN or Inf (float squares cannot overflow a double). */
static double sumsq(const float *x, size_t n)
{
    double total = 0.0;
    for (size_t i = 0; i < n; i += 256) {
        size_t m = n - i < 256 ? n - i : 256;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t j = 0;
        for (; j + 4 <= m; j += 4) {
            double a = x[i + j], b = x[i + j + 1], c = x[i + j + 2], d = x[i + j + 3];
            s0 += a * a;
            s1 += b * b;
            s2 += c * c;
            s3 += d * d;
        }
        for (; j < m; j++) {
            double a = x[i + j];
            s0 += a * a;
        }
        total += (s0 + s1) + (s2 + s3);
    }
    return total;
}

/* First index of a NaN/Inf element, or n. Explicit because a sum of squares hides −Inf + ... */
static size_t first_nonfinite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return n;
}

fp_status fp_dp_l2_norm(const float *x, size_t n, double *norm)
{
    if (!norm || (!x && n))
        return FP_FAIL(FP_ERR_INVALID, "l2_norm: NULL argument");
    *norm = 0.0;
    double s = sumsq(x, n);
    if (!isfinite(s)) {
        size_t i = first_nonfinite(x, n);
        return FP_FAIL(FP_ERR_NUMERIC, "l2_norm: x[%zu] is %g", i, i < n ? (double)x[i] : NAN);
    }
    *norm = sqrt(s);
    return FP_OK;
}

fp_status fp_dp_clip_factor(double norm, double bound, double *factor)
{
    if (!factor)
        return FP_FAIL(FP_ERR_INVALID, "clip_factor: factor is NULL");
    *factor = 1.0;
    if (!(bound > 0) || !isfinite(bound))
        return FP_FAIL(FP_ERR_INVALID, "clip: bound %g must be finite and > 0", bound);
    if (!(norm >= 0))
        return FP_FAIL(FP_ERR_INVALID, "clip: norm %g must be >= 0", norm);
    if (norm > bound)
        *factor = isfinite(norm) ? bound / norm * FP_DP_CLIP_MARGIN : 0.0;
    return FP_OK;
}

static void scale_vec(float *x, size_t n, double f)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((double)x[i] * f);
}

fp_status fp_dp_clip_l2(float *x, size_t n, double bound, double *norm_before, double *scale)
{
    if (norm_before)
        *norm_before = 0.0;
    if (scale)
        *scale = 1.0;
    if (!x && n)
        return FP_FAIL(FP_ERR_INVALID, "clip_l2: x is NULL");
    if (!(bound > 0) || !isfinite(bound))
        return FP_FAIL(FP_ERR_INVALID, "clip_l2: bound %g must be finite and > 0", bound);
    double norm, f;
    fp_status st = fp_dp_l2_norm(x, n, &norm);
    if (st != FP_OK)
        return st;
    if ((st = fp_dp_clip_factor(norm, bound, &f)) != FP_OK)
        return st;
    if (f != 1.0)
        scale_vec(x, n, f);
    if (norm_before)
        *norm_before = norm;
    if (scale)
        *scale = f;
    return FP_OK;
}

fp_status fp_dp_row_norms(const float *x, size_t rows, size_t cols, double *norms)
{
    if ((!x && rows && cols) || (!norms && rows))
        return FP_FAIL(FP_ERR_INVALID, "row_norms: NULL argument");
    if (cols && rows > SIZE_MAX / cols)
        return FP_FAIL(FP_ERR_RANGE, "row_norms: %zu x %zu overflows", rows, cols);
    for (size_t r = 0; r < rows; r++) {
        fp_status st = fp_dp_l2_norm(x + r * cols, cols, &norms[r]);
        if (st != FP_OK)
            return FP_FAIL(st, "row_norms: row %zu: %s", r, fp_error_message());
    }
    return FP_OK;
}

fp_status fp_dp_clip_rows(float *x, size_t rows, size_t cols, double bound, double *norms, double *scales)
{
    if (!x && rows && cols)
        return FP_FAIL(FP_ERR_INVALID, "clip_rows: x is NULL");
    if (!(bound > 0) || !isfinite(bound))
        return FP_FAIL(FP_ERR_INVALID, "clip_rows: bound %g must be finite and > 0", bound);
    if (cols && rows > SIZE_MAX / cols)
        return FP_FAIL(FP_ERR_RANGE, "clip_rows: %zu x %zu overflows", rows, cols);
    size_t bad = first_nonfinite(x, rows * cols);
    if (bad < rows * cols)
        return FP_FAIL(FP_ERR_NUMERIC, "clip_rows: row %zu column %zu is %g", bad / cols, bad % cols,
                       (double)x[bad]);
    for (size_t r = 0; r < rows; r++) {
        float *row = x + r * cols;
        double norm = sqrt(sumsq(row, cols)), f;
        fp_status st = fp_dp_clip_factor(norm, bound, &f);
        if (st != FP_OK)
            return st;
        if (f != 1.0)
            scale_vec(row, cols, f);
        if (norms)
            norms[r] = norm;
        if (scales)
            scales[r] = f;
    }
    return FP_OK;
}
