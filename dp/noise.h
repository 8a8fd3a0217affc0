/* noise: privacy noise samplers over the CSPRNG (dp/csprng.h).
 *
 * (1) The exact discrete Gaussian N_Z(0, σ²) of Canonne, Kamath and Steinke 2020 ("The Discrete
 *     Gaussian for Differential Privacy", Algorithms 1-3): P(Z = z) ∝ exp(−z²/(2σ²)) on the
 *     integers, by rejection from a discrete Laplace proposal, with every Bernoulli(exp(−γ)) drawn
 *     exactly from integer arithmetic (no floating point anywhere in the accept/reject path).
 *     σ² is held as an exact rational num/den.
 * (2) A continuous Gaussian (Box-Muller over 53-bit CSPRNG doubles) for comparison and speed.
 *     It is NOT resistant to floating-point attacks (Mironov 2012: the set of doubles a
 *     floating-point sampler can output, and their rounding, depend on the secret); do not use it
 *     to release anything private.
 * (3) fp_dp_add_noise: what the client applies to a clipped sum: the vector is rounded to a
 *     fixed grid, then grid × Z is added with Z discrete Gaussian of σ/grid.
 *
 * Supported σ (in grid units, i.e. of Z): 0 < σ ≤ 2^30. For σ ≥ 1, σ² = num/den needs
 * den ≤ num ≤ 2^60; for σ < 1, num < den ≤ 2^31. Every intermediate product is bounded by these
 * limits to fit 64 bits (128 bits in two places, where noted), so nothing can overflow.
 *
 * For σ ≥ FP_DP_DGAUSS_TABLE_MIN a table sampler replaces (1), about 24× faster with AVX-512 (22×
 * with AVX2, 15× portable), with the two stated departures from exactness described at
 * fp_dp_dgauss_table_t below (TV ≤ 2^−96 per sample, truncation at 32σ).
 *
 * Truncation (CKS's one departure from exactness, stated so the accountant can include it): a
 * proposal with |Z| > T, T = 1024·(⌊σ⌋ + 1) (T = 1024 when σ < 1), is refused. The output is
 * the discrete Gaussian conditioned on |Z| ≤ T ≥ 1024σ: its total-variation distance from the
 * exact one is below 2·exp(−1024²/2) < 10^−227000. For a query of L2 sensitivity Δ ≤ 512σ (noise
 * multiplier ≥ 1/512) the truncation adds at most exp(−(T−Δ)²/(2σ²)) < 10^−56000 to δ.
 *
 * Thread-safety: a fp_dp_dgauss_t is read-only once initialised and may be shared; each thread
 * needs its own generator. Functions return fp_status and leave a message (common/errors.h). */
#ifndef FEDPROF_DP_NOISE_H
#define FEDPROF_DP_NOISE_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"
#include "dp/csprng.h"

/* Largest supported σ of the integer-valued discrete Gaussian (σ/grid in fp_dp_add_noise). */
#define FP_DP_DGAUSS_SIGMA_MAX 1073741824.0 /* 2^30 */
/* fp_dp_add_noise: each chunk of this many coordinates uses its own generator forked from the
 * caller's, in order, so the output for a seed is the same with any number of threads. */
#define FP_DP_NOISE_CHUNK 65536

/* The table sampler for large σ (σ ≥ FP_DP_DGAUSS_TABLE_MIN, which includes the σ/grid ≈ 2^21 of
 * DP-SGD's noise). |Z| is proposed from FP_DP_DGAUSS_BINS bins of width W (a power of two, about
 * σ/64, covering [0, 32σ) at least): a bin b with probability ∝ exp(−(bW)²/(2σ²)) from an alias
 * table, an offset uniform in [0, W), then the proposal z = bW + offset is accepted with the
 * exact Bernoulli(exp(−(z² − (bW)²)/(2σ²))) of CKS Algorithm 1 (an exponent below 0.05: usually
 * one trial), and a random sign (−0 refused). About one random word (bin, sign, offset and the
 * leading bits of the two uniforms that decide the alias column and the first trial, with further
 * words only on a tie of those bits) and a few predictable branches per sample instead of CKS's
 * ~20 coin-flip decisions: about 24× faster with AVX-512 (docs/BENCHMARKS.md).
 * Its departures from the exact N_Z(0, σ²), both stated for the accountant: (1) the bin
 * probabilities are computed in 113-bit floating point (libquadmath) and held as 128-bit integer
 * thresholds, which puts the output within total-variation distance 2^−96 of the exact
 * distribution per sample (tests/test_noise.c measures the table's error); (2) |Z| < 32σ: for a
 * sensitivity Δ ≤ 16σ the truncation adds at most exp(−128) < 10^−55 to δ per sample. Both are
 * outputs on the integer grid, so the floating-point attacks of Mironov 2012 do not apply. */
#define FP_DP_DGAUSS_TABLE_MIN 4096.0
#define FP_DP_DGAUSS_BINS 2048
typedef struct {
    uint64_t thr_hi[FP_DP_DGAUSS_BINS], thr_lo[FP_DP_DGAUSS_BINS]; /* keep column c iff U128 < thr */
    uint16_t alias[FP_DP_DGAUSS_BINS];                             /* else take bin alias[c] */
    unsigned log2w;                                                /* bin width W = 2^log2w */
} fp_dp_dgauss_table_t;

/* Precomputed parameters of one discrete Gaussian; a plain value, set by an _init function. */
typedef struct {
    uint64_t num, den;     /* σ² = num / den exactly (reduced) */
    int small;             /* σ < 1: proposal DLap(1), acceptance centre σ² */
    uint64_t m;            /* σ ≥ 1: ⌊σ⌋, the acceptance centre (proposal scale σ²/m) */
    uint64_t lap_t, lap_s; /* discrete Laplace proposal of scale lap_t / lap_s */
    uint64_t tmax;         /* proposals with |Z| > tmax are refused (see Truncation) */
    uint64_t vmax;         /* a geometric count V > vmax surely gives |Y| > tmax */
    uint64_t vfit;         /* V ≤ vfit: U + lap_t·V fits in 64 bits */
    uint64_t acc_den;      /* denominator of γ in the acceptance test */
    int table_on;          /* σ ≥ FP_DP_DGAUSS_TABLE_MIN: sample with `table` (set 0 to force CKS) */
    fp_dp_dgauss_table_t table;
} fp_dp_dgauss_t;

/* σ² = num/den exactly (e.g. 9/4 for σ = 1.5). Errors: FP_ERR_INVALID (NULL, num or den 0),
 * FP_ERR_RANGE (outside the supported range above). */
fp_status fp_dp_dgauss_init_rational(fp_dp_dgauss_t *g, uint64_t num, uint64_t den);

/* σ given as a double, converted to a rational σ² = num/2^k that is never below σ²: exact when
 * σ² is a dyadic rational that fits (checked with fma), otherwise rounded up by less than
 * 2^−50 relative plus one unit of 2^−k, with k as large as the range allows (num ≈ 2^52 for
 * σ ≥ 1, k = 24 for σ < 1). Never less noise than asked. Errors: FP_ERR_INVALID (NULL, NaN,
 * σ ≤ 0), FP_ERR_RANGE (σ > 2^30 or σ < 2^−12). */
fp_status fp_dp_dgauss_init(fp_dp_dgauss_t *g, double sigma);

/* σ = sigma / grid, converted with the same care (the quotient's rounding is covered too). */
fp_status fp_dp_dgauss_init_grid(fp_dp_dgauss_t *g, double sigma, double grid);

/* The σ² actually sampled (num/den, rounded to double for display). */
double fp_dp_dgauss_sigma2(const fp_dp_dgauss_t *g);

/* n samples of the discrete Gaussian into z[0..n). */
fp_status fp_dp_dgauss_sample_n(const fp_dp_dgauss_t *g, fp_csprng_t *r, int64_t *z, size_t n);

/* Testing: draws n proposal words from r in groups of 8 (in five of every six groups, fields of
 * the words placed on, just before or just past the boundaries of the column's and the first
 * in-bin trial's decisions) and checks that wherever the table sampler's fast path decides a
 * proposal, its exact path (the whole algorithm, given the same word) decides it the same way
 * without drawing more, and, where σ² is dyadic, that each vector path the CPU has (AVX-512's 8
 * lanes, AVX2's 4) decides each group as the fast path does lane by lane. *n_fast (may be NULL):
 * proposals the fast path decided. Errors: FP_ERR_INVALID (NULL, or g has no table), FP_ERR_INTERNAL naming the
 * first disagreeing word or group. */
fp_status fp_dp_dgauss_table_selfcheck(const fp_dp_dgauss_t *g, fp_csprng_t *r, size_t n, size_t *n_fast);

/* The table sampler's vector paths: FP_DP_SIMD_AVX512 decides proposals 8 at a time with
 * AVX-512F/DQ, FP_DP_SIMD_AVX2 4 at a time with AVX2; by default the best the CPU has is used. */
enum { FP_DP_SIMD_PORTABLE = 0, FP_DP_SIMD_AVX2 = 1, FP_DP_SIMD_AVX512 = 2 };
/* Testing and benchmarks: use at most path `level` (FP_DP_SIMD_*; lower is always possible).
 * Every path gives the same samples from the same generator (tested). Returns the path now in
 * use. Call while no thread is sampling. */
int fp_dp_noise_set_simd(int level);
fp_status fp_dp_dgauss_sample(const fp_dp_dgauss_t *g, fp_csprng_t *r, int64_t *z);

/* Exact Bernoulli(exp(−num/den)) (CKS 2020 Algorithm 1) into *out (0 or 1); den ≥ 1.
 * Integer arithmetic only. Exposed for tests. */
fp_status fp_dp_bernoulli_exp(fp_csprng_t *r, uint64_t num, uint64_t den, int *out);

/* n samples of the continuous N(0, sigma²) (Box-Muller) into out[0..n); sigma finite ≥ 0.
 * Not floating-point-attack resistant: for comparison and non-private use only. */
fp_status fp_dp_gauss_sample_n(fp_csprng_t *r, double sigma, double *out, size_t n);

/* x[0..n) (one flat vector, e.g. a clipped update) ← grid · (round(x/grid) + Z), Z_i i.i.d.
 * discrete Gaussian of σ = sigma/grid (rounded up, fp_dp_dgauss_init_grid), in float.
 * sigma = 0 leaves x unchanged (no noise). grid should be a power of two, so that x/grid and
 * grid·k are exact; rounding to the grid moves each coordinate by at most grid/2, so the L2
 * sensitivity of the rounded vector is at most Δ + grid·√n (fp_dp_grid_sensitivity): account
 * with noise multiplier sigma / that. Requires |x_i| / grid ≤ 2^52.
 * Chunks of FP_DP_NOISE_CHUNK coordinates run in parallel (OpenMP) on generators forked in order
 * from r, so a seeded r gives the same output with any thread count.
 * Errors: FP_ERR_INVALID (NULL, sigma < 0 or NaN, grid ≤ 0 or not finite), FP_ERR_RANGE (σ/grid
 * or |x|/grid out of range), FP_ERR_NUMERIC (x holds NaN/Inf; x untouched), FP_ERR_NOMEM,
 * FP_ERR_INTERNAL (OpenSSL). After an error past validation x is partly noised: discard it,
 * never release it. */
fp_status fp_dp_add_noise(float *x, size_t n, double sigma, double grid, fp_csprng_t *r);

/* fp_dp_add_noise, then x[i] *= scale in float, in the same pass over x (DP-SGD's division by
 * the expected batch): bit for bit the two steps one after the other, one pass over memory
 * fewer. sigma = 0: x[i] *= scale only. scale must be finite (FP_ERR_INVALID otherwise). */
fp_status fp_dp_add_noise_scaled(float *x, size_t n, double sigma, double grid, float scale, fp_csprng_t *r);

/* x[i] += N(0, sigma²) continuous (Box-Muller), for comparison only (see above). */
fp_status fp_dp_add_noise_continuous(float *x, size_t n, double sigma, fp_csprng_t *r);

/* Δ + grid·√n: the L2 sensitivity after fp_dp_add_noise's rounding of a vector whose L2
 * sensitivity was Δ (l2_bound). Pure. */
double fp_dp_grid_sensitivity(double l2_bound, size_t n, double grid);

#endif
