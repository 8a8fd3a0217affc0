/* kernels_rows: a sampled loss's per-row value and gradient, the one formula both back-ends use
 * (kernels_cpu.c on the host; kernels_cuda.cu compiles the same functions for the device), so the
 * CPU and the GPU cannot drift apart. Internal to the kernels: not part of kernels.h's API.
 *
 * A row is the S logits z of one position: z[0] the target's, z[1..S-1] the sampled negatives'.
 * kind: FP_K_LOSS_BCE (0) or FP_K_LOSS_SOFTMAX (1), as in kernels.h. */
#ifndef FEDPROF_COMMON_KERNELS_ROWS_H
#define FEDPROF_COMMON_KERNELS_ROWS_H

#include <math.h>

#ifdef __CUDACC__
#define FP_ROW_FN __host__ __device__ static inline
#else
#define FP_ROW_FN static inline
#endif

FP_ROW_FN double fp_row_softplus(double x) { return (x > 0.0 ? x : 0.0) + log1p(exp(-fabs(x))); }

/* The logistic function without overflow for either sign. */
FP_ROW_FN float fp_row_sigmoid(float x)
{
    if (x >= 0.0f)
        return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

/* The row's loss, in double: BCE −log s(z0) − Σ_{j>0} log(1 − s(z_j)), or softmax −log softmax(z)_0. */
FP_ROW_FN double fp_row_loss(const float *z, int S, int kind)
{
    if (kind == 0) {
        double l = fp_row_softplus(-(double)z[0]);
        for (int j = 1; j < S; j++)
            l += fp_row_softplus((double)z[j]);
        return l;
    }
    double mx = z[0];
    for (int j = 1; j < S; j++)
        mx = z[j] > mx ? z[j] : mx;
    double s = 0.0;
    for (int j = 0; j < S; j++)
        s += exp((double)z[j] - mx);
    return mx + log(s) - (double)z[0];
}

/* z ← scale · d loss / d z, in place. */
FP_ROW_FN void fp_row_dlogits(float *z, int S, int kind, float scale)
{
    if (kind == 0) {
        z[0] = -fp_row_sigmoid(-z[0]) * scale; /* d softplus(-z)/dz = s(z) - 1 */
        for (int j = 1; j < S; j++)
            z[j] = fp_row_sigmoid(z[j]) * scale;
        return;
    }
    float mx = z[0];
    for (int j = 1; j < S; j++)
        mx = z[j] > mx ? z[j] : mx;
    float s = 0.0f;
    for (int j = 0; j < S; j++) {
        z[j] = expf(z[j] - mx);
        s += z[j];
    }
    for (int j = 0; j < S; j++)
        z[j] = z[j] / s * scale;
    z[0] -= scale;
}

#endif
