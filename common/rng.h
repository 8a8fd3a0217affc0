/* rng: a small, fast, seeded, reproducible generator (xoshiro256**) for training:
 * initialisation, shuffling, negative sampling, dropout, synthetic data.
 *
 * NOT for privacy noise: dp/ uses a cryptographically secure generator.
 * A generator is a plain value; it is not thread-safe (give each thread its own,
 * e.g. with fp_rng_split). */
#ifndef FEDPROF_COMMON_RNG_H
#define FEDPROF_COMMON_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} fp_rng_t;

/* Seed deterministically from a 64-bit seed (SplitMix64 expansion). */
void fp_rng_seed(fp_rng_t *r, uint64_t seed);
/* Next 64 random bits. */
uint64_t fp_rng_u64(fp_rng_t *r);
/* Uniform integer in [0, n), unbiased; n must be > 0. */
uint64_t fp_rng_below(fp_rng_t *r, uint64_t n);
/* Uniform float in [0, 1) with 24 random bits. */
float fp_rng_uniform(fp_rng_t *r);
/* Uniform double in [0, 1) with 53 random bits. */
double fp_rng_uniform_d(fp_rng_t *r);
/* Standard normal (Box-Muller, double precision). */
double fp_rng_normal(fp_rng_t *r);
/* A new independent generator derived from r and a stream id (r advances). */
fp_rng_t fp_rng_split(fp_rng_t *r, uint64_t stream);

#endif
