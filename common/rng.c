/* rng: xoshiro256** (Blackman & Vigna) seeded through SplitMix64. */
#include "common/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void fp_rng_seed(fp_rng_t *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

uint64_t fp_rng_u64(fp_rng_t *r)
{
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t fp_rng_below(fp_rng_t *r, uint64_t n)
{
    /* Lemire's multiply-shift with rejection: unbiased. */
    uint64_t x = fp_rng_u64(r);
    __uint128_t m = (__uint128_t)x * n;
    uint64_t l = (uint64_t)m;
    if (l < n) {
        uint64_t t = -n % n;
        while (l < t) {
            x = fp_rng_u64(r);
            m = (__uint128_t)x * n;
            l = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

float fp_rng_uniform(fp_rng_t *r) { return (float)(fp_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

double fp_rng_uniform_d(fp_rng_t *r) { return (double)(fp_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

double fp_rng_normal(fp_rng_t *r)
{
    double u1;
    do {
        u1 = fp_rng_uniform_d(r);
    } while (u1 <= 0.0);
    double u2 = fp_rng_uniform_d(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

fp_rng_t fp_rng_split(fp_rng_t *r, uint64_t stream)
{
    fp_rng_t out;
    fp_rng_seed(&out, fp_rng_u64(r) ^ (stream * 0xd1342543de82ef95ULL));
    return out;
}
