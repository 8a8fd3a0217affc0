/* test_noise: the CSPRNG (dp/csprng) and the noise samplers (dp/noise), statistically.
 *
 * Every statistical check uses a fixed seed (so a run is reproducible) and a stated bound:
 *   mean:      |mean − 0| ≤ 5·sd/√n
 *   variance:  |s² − Var| ≤ 5·√((μ4 − Var²)/n)   (Var, μ4 exact from the pmf for the discrete one)
 *   tails:     |#(|Z| > 3σ)/n − p| ≤ 5·√(p(1−p)/n), p exact from the pmf (or 2Φ(−3))
 *   KS:        D = sup|F_n − F| ≤ c(α)/√n with α = 1e-4, c = √(−ln(α/2)/2) = 2.2253 (asymptotic
 *              Kolmogorov; for a discrete F the test is conservative). F of the discrete
 *              Gaussian is computed by summing its normalised pmf; the continuous one uses Φ.
 *   pmf ratio: |ln(#(Z=k)/#(Z=0)) + k²/(2σ²)| ≤ 5·√(1/#(Z=k) + 1/#(Z=0)) (delta method).
 * With a few dozen such checks at 5 standard errors a correct sampler fails by chance with
 * probability < 1e-4; a wrong variance of 1% fails the σ = 1.5 variance check surely. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <quadmath.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "dp/csprng.h"
#include "dp/noise.h"

#define KS_C_1E4 2.2253 /* √(−ln(1e-4 / 2) / 2) */

static void seed_of(uint8_t seed[32], uint8_t v)
{
    for (int i = 0; i < 32; i++)
        seed[i] = (uint8_t)(v + i * 7);
}

static fp_csprng_t *seeded(uint8_t v)
{
    uint8_t seed[32];
    seed_of(seed, v);
    fp_csprng_t *g = NULL;
    assert_int_equal(fp_csprng_create_seeded(seed, &g), FP_OK);
    assert_non_null(g);
    return g;
}

/* ---- CSPRNG ---- */

/* ChaCha20 keystream blocks [first, first + nblocks) under key, nonce 0, straight from OpenSSL. */
static void chacha_blocks(const uint8_t key[32], uint32_t first, size_t nblocks, uint8_t *out)
{
    uint8_t iv[16] = {0}; /* EVP_chacha20: 4-byte little-endian counter, then the nonce */
    for (int i = 0; i < 4; i++)
        iv[i] = (uint8_t)(first >> (8 * i));
    uint8_t *zero = calloc(nblocks, 64);
    assert_non_null(zero);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    assert_non_null(c);
    int len = 0;
    assert_int_equal(EVP_EncryptInit_ex(c, EVP_chacha20(), NULL, key, iv), 1);
    assert_int_equal(EVP_EncryptUpdate(c, out, &len, zero, (int)(nblocks * 64)), 1);
    assert_int_equal(len, (int)(nblocks * 64));
    EVP_CIPHER_CTX_free(c);
    free(zero);
}

static void test_csprng_known_answer(void **state)
{
    (void)state;
    /* RFC 8439 A.1 test vector #2: ChaCha20, zero key, zero nonce, block counter 1. Each refill
     * takes the key from block 0 (bytes 0..31; 32..63 discarded) and hands out blocks 1.. */
    static const uint8_t expect[64] = {
        0x9f, 0x07, 0xe7, 0xbe, 0x55, 0x51, 0x38, 0x7a, 0x98, 0xba, 0x97, 0x7c, 0x73, 0x2d, 0x08, 0x0d,
        0xcb, 0x0f, 0x29, 0xa0, 0x48, 0xe3, 0x65, 0x69, 0x12, 0xc6, 0x53, 0x3e, 0x32, 0xee, 0x7a, 0xed,
        0x29, 0xb7, 0x21, 0x76, 0x9c, 0xe6, 0x4e, 0x43, 0xd5, 0x71, 0x33, 0xb0, 0x74, 0xd8, 0x39, 0xd5,
        0x31, 0xed, 0x1f, 0x28, 0x51, 0x0a, 0xfb, 0x45, 0xac, 0xe1, 0x0a, 0x1f, 0x4b, 0x79, 0x4d, 0x6f};
    uint8_t zero[32] = {0}, out[64];
    fp_csprng_t *g = NULL;
    assert_int_equal(fp_csprng_create_seeded(zero, &g), FP_OK);
    assert_false(fp_csprng_is_secure(g));
    assert_int_equal(fp_csprng_bytes(g, out, sizeof out), FP_OK);
    assert_memory_equal(out, expect, 64);
    assert_int_equal((int)fp_csprng_bytes_out(g), 64);
    fp_csprng_destroy(g);

    /* Two refills against OpenSSL's ChaCha20 directly: key_{i+1} = block 0 of key_i's stream,
     * output = its blocks 1 .. FP_CSPRNG_BLOCK/64. */
    enum { NB = FP_CSPRNG_BLOCK / 64 };
    uint8_t key[32] = {0}, b0[64];
    uint8_t *got = malloc(2 * FP_CSPRNG_BLOCK), *want = malloc(2 * FP_CSPRNG_BLOCK);
    assert_non_null(got);
    assert_non_null(want);
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)(7 * i + 1);
    assert_int_equal(fp_csprng_create_seeded(key, &g), FP_OK);
    assert_int_equal(fp_csprng_bytes(g, got, 2 * FP_CSPRNG_BLOCK), FP_OK);
    fp_csprng_destroy(g);
    for (int r = 0; r < 2; r++) {
        chacha_blocks(key, 0, 1, b0);
        chacha_blocks(key, 1, NB, want + (size_t)r * FP_CSPRNG_BLOCK);
        memcpy(key, b0, 32);
    }
    assert_memory_equal(got, want, 2 * FP_CSPRNG_BLOCK);
    free(got);
    free(want);
}

static void test_csprng_determinism_and_layout(void **state)
{
    (void)state;
    fp_csprng_t *a = seeded(1), *b = seeded(1), *c = seeded(2);
    /* One big read equals odd-sized reads crossing many refills, and u64/u32 are little-endian
     * views of the same stream. */
    const size_t N = 3 * FP_CSPRNG_BLOCK + 1000;
    uint8_t *big = malloc(N), *pieces = malloc(N), *other = malloc(N);
    assert_non_null(big);
    assert_non_null(pieces);
    assert_non_null(other);
    assert_int_equal(fp_csprng_bytes(a, big, N), FP_OK);
    size_t off = 0, step = 1;
    while (off < N) {
        size_t take = step < N - off ? step : N - off;
        assert_int_equal(fp_csprng_bytes(b, pieces + off, take), FP_OK);
        off += take;
        step = step * 3 % 997 + 1;
    }
    assert_memory_equal(big, pieces, N);
    assert_int_equal(fp_csprng_bytes(c, other, N), FP_OK);
    assert_true(memcmp(big, other, N) != 0);

    uint64_t u64;
    uint32_t u32;
    uint8_t raw[12];
    fp_csprng_t *d = seeded(3), *e = seeded(3);
    assert_int_equal(fp_csprng_u64(d, &u64), FP_OK);
    assert_int_equal(fp_csprng_u32(d, &u32), FP_OK);
    assert_int_equal(fp_csprng_bytes(e, raw, 12), FP_OK);
    uint64_t want64 = 0;
    for (int i = 7; i >= 0; i--)
        want64 = want64 << 8 | raw[i];
    uint32_t want32 = (uint32_t)raw[8] | (uint32_t)raw[9] << 8 | (uint32_t)raw[10] << 16 | (uint32_t)raw[11] << 24;
    assert_true(u64 == want64);
    assert_true(u32 == want32);

    /* Forks are deterministic for a seeded parent, differ from each other, and stay seeded. */
    fp_csprng_t *p1 = seeded(9), *p2 = seeded(9), *f1 = NULL, *f2 = NULL, *f3 = NULL;
    assert_int_equal(fp_csprng_fork(p1, &f1), FP_OK);
    assert_int_equal(fp_csprng_fork(p2, &f2), FP_OK);
    assert_int_equal(fp_csprng_fork(p2, &f3), FP_OK);
    assert_false(fp_csprng_is_secure(f1));
    uint64_t x1, x2, x3;
    assert_int_equal(fp_csprng_u64(f1, &x1), FP_OK);
    assert_int_equal(fp_csprng_u64(f2, &x2), FP_OK);
    assert_int_equal(fp_csprng_u64(f3, &x3), FP_OK);
    assert_true(x1 == x2);
    assert_true(x1 != x3);

    fp_csprng_t *all[] = {a, b, c, d, e, p1, p2, f1, f2, f3};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        fp_csprng_destroy(all[i]);
    fp_csprng_destroy(NULL);
    free(big);
    free(pieces);
    free(other);
}

static void test_csprng_secure(void **state)
{
    (void)state;
    fp_csprng_t *a = NULL, *b = NULL, *s = seeded(4), *f = NULL;
    assert_int_equal(fp_csprng_create_secure(&a), FP_OK);
    assert_int_equal(fp_csprng_create_secure(&b), FP_OK);
    assert_true(fp_csprng_is_secure(a));
    uint8_t x[32], y[32];
    assert_int_equal(fp_csprng_bytes(a, x, 32), FP_OK);
    assert_int_equal(fp_csprng_bytes(b, y, 32), FP_OK);
    assert_true(memcmp(x, y, 32) != 0);
    /* Reseeding mixes in RAND_bytes; a seeded generator refuses (it must stay reproducible). */
    assert_int_equal(fp_csprng_reseed(a), FP_OK);
    assert_int_equal(fp_csprng_bytes(a, y, 32), FP_OK);
    assert_true(memcmp(x, y, 32) != 0);
    assert_int_equal(fp_csprng_reseed(s), FP_ERR_INVALID);
    assert_int_equal(fp_csprng_fork(a, &f), FP_OK);
    assert_true(fp_csprng_is_secure(f));
    /* Bad arguments. */
    assert_int_equal(fp_csprng_create_secure(NULL), FP_ERR_INVALID);
    fp_csprng_t *n = (fp_csprng_t *)&x;
    assert_int_equal(fp_csprng_create_seeded(NULL, &n), FP_ERR_INVALID);
    assert_null(n);
    assert_int_equal(fp_csprng_bytes(NULL, x, 1), FP_ERR_INVALID);
    assert_int_equal(fp_csprng_bytes(a, NULL, 1), FP_ERR_INVALID);
    assert_int_equal(fp_csprng_bytes(a, NULL, 0), FP_OK);
    uint64_t u;
    assert_int_equal(fp_csprng_below(a, 0, &u), FP_ERR_INVALID);
    assert_int_equal(fp_csprng_u64(NULL, &u), FP_ERR_INVALID);
    assert_int_equal(fp_csprng_u64(a, NULL), FP_ERR_INVALID);
    fp_csprng_destroy(a);
    fp_csprng_destroy(b);
    fp_csprng_destroy(s);
    fp_csprng_destroy(f);
}

static void test_csprng_below_uniform(void **state)
{
    (void)state;
    fp_csprng_t *g = seeded(5);
    uint64_t u;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(fp_csprng_below(g, 1, &u), FP_OK);
        assert_true(u == 0);
    }
    /* n = 3 (u32 path) and n = 3·2^40 (u64 path): each third within 5 SE, and no value ≥ n. */
    const uint64_t ns[2] = {3, (uint64_t)3 << 40};
    for (int t = 0; t < 2; t++) {
        const int N = 300000;
        long cnt[3] = {0, 0, 0};
        for (int i = 0; i < N; i++) {
            assert_int_equal(fp_csprng_below(g, ns[t], &u), FP_OK);
            assert_true(u < ns[t]);
            cnt[u / (ns[t] / 3)]++;
        }
        double p = 1.0 / 3, se = sqrt(p * (1 - p) / N);
        for (int k = 0; k < 3; k++)
            assert_true(fabs((double)cnt[k] / N - p) <= 5 * se);
    }
    /* A power of two and 2^32 exactly (its own Lemire edge). */
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(fp_csprng_below(g, (uint64_t)1 << 32, &u), FP_OK);
        assert_true(u < ((uint64_t)1 << 32));
        assert_int_equal(fp_csprng_below(g, UINT64_MAX, &u), FP_OK);
        assert_true(u < UINT64_MAX);
    }
    /* uniform_double: in [0,1), mean 1/2 within 5 SE (sd = 1/√12). */
    const int N = 200000;
    double sum = 0, d;
    for (int i = 0; i < N; i++) {
        assert_int_equal(fp_csprng_uniform_double(g, &d), FP_OK);
        assert_true(d >= 0.0 && d < 1.0);
        sum += d;
    }
    assert_true(fabs(sum / N - 0.5) <= 5 / sqrt(12.0 * N));
    fp_csprng_destroy(g);
}

/* ---- exact Bernoulli(exp(−γ)) ---- */

static void test_bernoulli_exp(void **state)
{
    (void)state;
    fp_csprng_t *g = seeded(6);
    int b;
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(fp_dp_bernoulli_exp(g, 0, 7, &b), FP_OK);
        assert_int_equal(b, 1);
    }
    const uint64_t num[] = {1, 1, 3, 5, 7, UINT64_MAX / 3};
    const uint64_t den[] = {2, 1, 2, 2, 10, UINT64_MAX / 2};
    for (size_t t = 0; t < sizeof num / sizeof num[0]; t++) {
        const int N = 200000;
        long ones = 0;
        for (int i = 0; i < N; i++) {
            assert_int_equal(fp_dp_bernoulli_exp(g, num[t], den[t], &b), FP_OK);
            ones += b;
        }
        double p = exp(-(double)num[t] / (double)den[t]), se = sqrt(p * (1 - p) / N);
        assert_true(fabs((double)ones / N - p) <= 5 * se);
    }
    assert_int_equal(fp_dp_bernoulli_exp(g, 1, 0, &b), FP_ERR_INVALID);
    assert_int_equal(fp_dp_bernoulli_exp(NULL, 1, 1, &b), FP_ERR_INVALID);
    fp_csprng_destroy(g);
}

/* ---- discrete Gaussian ---- */

/* Exact reference of N_Z(0, σ²) on [−L, L] (beyond it the mass is below exp(−L²/2σ²)). */
typedef struct {
    double sigma2, norm;
    int64_t L;
} dref_t;

static double dref_weight(const dref_t *r, int64_t k) { return exp(-(double)k * (double)k / (2 * r->sigma2)); }

static dref_t dref_make(double sigma2)
{
    dref_t r = {sigma2, 0, (int64_t)ceil(12 * sqrt(sigma2)) + 10}; /* exp(−72) tails */
    double s = 0;
    for (int64_t k = -r.L; k <= r.L; k++)
        s += dref_weight(&r, k);
    r.norm = s;
    return r;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Moments, tails and KS of n samples z against the exact pmf of σ² (sorts z). */
static void check_dgauss_samples(int64_t *z, size_t n, double sigma2)
{
    dref_t r = dref_make(sigma2);
    double sigma = sqrt(sigma2);
    /* Exact moments and 3σ-tail from the pmf. */
    double var = 0, m4 = 0, p3 = 0;
    for (int64_t k = -r.L; k <= r.L; k++) {
        double p = dref_weight(&r, k) / r.norm, kk = (double)k * (double)k;
        var += p * kk;
        m4 += p * kk * kk;
        if (fabs((double)k) > 3 * sigma)
            p3 += p;
    }
    double sum = 0, sumsq = 0;
    size_t tail = 0;
    for (size_t i = 0; i < n; i++) {
        double v = (double)z[i];
        sum += v;
        sumsq += v * v;
        tail += fabs(v) > 3 * sigma;
    }
    double mean = sum / n, s2 = sumsq / n - mean * mean;
    print_message("  sigma^2 %.6g: mean %.3e (bound %.3e), var %.6g vs %.6g (bound %.3e), P(|Z|>3s) %.5f vs %.5f\n",
                  sigma2, mean, 5 * sqrt(var / n), s2, var, 5 * sqrt((m4 - var * var) / n), (double)tail / n, p3);
    assert_true(fabs(mean) <= 5 * sqrt(var / n));
    assert_true(fabs(s2 - var) <= 5 * sqrt((m4 - var * var) / n));
    assert_true(fabs((double)tail / n - p3) <= 5 * sqrt(p3 * (1 - p3) / n));
    /* KS: both CDFs are step functions jumping at integers, so the sup is over integer k. Walk k
     * upward summing the pmf, and compare at each distinct sample value and just below it. */
    qsort(z, n, sizeof *z, cmp_i64);
    assert_true(z[0] >= -r.L && z[n - 1] <= r.L);
    double F = 0, D = 0;
    int64_t k = -r.L;
    size_t i = 0;
    while (i < n) {
        int64_t v = z[i];
        for (; k < v; k++)
            F += dref_weight(&r, k) / r.norm; /* F = P(Z ≤ v − 1) after the loop */
        double below = fabs((double)i / n - F);
        size_t j = i;
        while (j < n && z[j] == v)
            j++;
        F += dref_weight(&r, k) / r.norm; /* P(Z ≤ v) */
        k++;
        double at = fabs((double)j / n - F);
        if (below > D)
            D = below;
        if (at > D)
            D = at;
        i = j;
    }
    print_message("  KS D = %.5f, critical %.5f (alpha 1e-4, n %zu)\n", D, KS_C_1E4 / sqrt((double)n), n);
    assert_true(D <= KS_C_1E4 / sqrt((double)n));
}

static void test_dgauss_small_sigma_exact(void **state)
{
    (void)state;
    /* σ = 1.5 given exactly as σ² = 9/4: moments, tails, KS and the pmf ratio. */
    fp_dp_dgauss_t p;
    assert_int_equal(fp_dp_dgauss_init_rational(&p, 9, 4), FP_OK);
    assert_true(fp_dp_dgauss_sigma2(&p) == 2.25);
    const size_t N = 1000000;
    int64_t *z = malloc(N * sizeof *z);
    assert_non_null(z);
    fp_csprng_t *g = seeded(10);
    assert_int_equal(fp_dp_dgauss_sample_n(&p, g, z, N), FP_OK);
    long cnt[9] = {0};
    for (size_t i = 0; i < N; i++)
        if (z[i] >= -4 && z[i] <= 4)
            cnt[z[i] + 4]++;
    for (int k = 1; k <= 4; k++) {
        for (int sgn = -1; sgn <= 1; sgn += 2) {
            double ck = (double)cnt[4 + sgn * k], c0 = (double)cnt[4];
            double lr = log(ck / c0), want = -(double)(k * k) / (2 * 2.25);
            double bound = 5 * sqrt(1 / ck + 1 / c0);
            print_message("  P(Z=%+d)/P(Z=0): ln %.5f vs %.5f (bound %.4f)\n", sgn * k, lr, want, bound);
            assert_true(fabs(lr - want) <= bound);
        }
    }
    check_dgauss_samples(z, N, 2.25);
    free(z);
    fp_csprng_destroy(g);
}

static void test_dgauss_sigma_below_one(void **state)
{
    (void)state;
    /* σ = 0.7 (the DLap(1) proposal path), via the double conversion. */
    fp_dp_dgauss_t p;
    assert_int_equal(fp_dp_dgauss_init(&p, 0.7), FP_OK);
    assert_true(p.small);
    double s2 = fp_dp_dgauss_sigma2(&p);
    assert_true(s2 >= 0.49 && s2 <= 0.49 + 2 * 0x1p-24);
    const size_t N = 500000;
    int64_t *z = malloc(N * sizeof *z);
    assert_non_null(z);
    fp_csprng_t *g = seeded(11);
    assert_int_equal(fp_dp_dgauss_sample_n(&p, g, z, N), FP_OK);
    check_dgauss_samples(z, N, s2);
    free(z);
    fp_csprng_destroy(g);
}

static void test_dgauss_large_sigma(void **state)
{
    (void)state;
    /* σ = 1000 (typical of σ/grid for small updates) and σ = 2^20 + 0.37 (a big one). */
    const double sigmas[2] = {1000.0, 1048576.37};
    const size_t ns[2] = {1000000, 200000};
    for (int t = 0; t < 2; t++) {
        fp_dp_dgauss_t p;
        assert_int_equal(fp_dp_dgauss_init(&p, sigmas[t]), FP_OK);
        double s2 = fp_dp_dgauss_sigma2(&p), want = sigmas[t] * sigmas[t];
        assert_true(s2 >= want && s2 <= want * (1 + 1e-14));
        int64_t *z = malloc(ns[t] * sizeof *z);
        assert_non_null(z);
        fp_csprng_t *g = seeded((uint8_t)(12 + t));
        assert_int_equal(fp_dp_dgauss_sample_n(&p, g, z, ns[t]), FP_OK);
        check_dgauss_samples(z, ns[t], s2);
        free(z);
        fp_csprng_destroy(g);
    }
}

/* The table sampler's departure from the exact distribution (noise.h): the bin probabilities its
 * alias table implies, reconstructed from the integer thresholds, against exp(−(bW)²/(2σ²))
 * normalised, both in 113-bit floating point. Their total-variation distance must stay below
 * 2^−96, the bound noise.h states; a Vose bug (a lost or doubled top-up) moves it by 1/2048. */
static void test_dgauss_table_accuracy(void **state)
{
    (void)state;
    const double sigmas[] = {4096.0, 5000.5, 1048576.37, 2097152.0, 1073741000.0};
    enum { NB = FP_DP_DGAUSS_BINS };
    static __float128 got[NB], want[NB];
    for (size_t t = 0; t < sizeof sigmas / sizeof sigmas[0]; t++) {
        static fp_dp_dgauss_t p; /* 37 KB: not on the stack */
        assert_int_equal(fp_dp_dgauss_init(&p, sigmas[t]), FP_OK);
        assert_int_equal(p.table_on, 1);
        const fp_dp_dgauss_table_t *tb = &p.table;
        const __float128 s2 = (__float128)p.num / (__float128)p.den, W = (__float128)((uint64_t)1 << tb->log2w);
        assert_true(NB * W >= 32 * sqrtq(s2) && W <= sqrtq(s2) / 32); /* covers 32σ, bins ≤ σ/32 wide */
        __float128 sum = 0;
        for (int b = 0; b < NB; b++) {
            want[b] = expq(-(b * W) * (b * W) / (2 * s2));
            sum += want[b];
            got[b] = 0;
        }
        for (int c = 0; c < NB; c++) {
            assert_true(tb->alias[c] < NB);
            __float128 keep = (__float128)tb->thr_hi[c] * 0x1p-64Q + (__float128)tb->thr_lo[c] * 0x1p-128Q;
            got[c] += keep / NB;
            got[tb->alias[c]] += (1 - keep) / NB;
        }
        __float128 tv = 0, tot = 0;
        for (int b = 0; b < NB; b++) {
            tv += fabsq(got[b] - want[b] / sum);
            tot += got[b];
        }
        tv /= 2;
        print_message("  sigma %.10g: W = 2^%u, table total-variation distance %.3g (bound 2^-96 = %.3g)\n",
                      sigmas[t], tb->log2w, (double)tv, 0x1p-96);
        assert_true(fabsq(tot - 1) < 0x1p-100Q);
        assert_true(tv <= 0x1p-96Q);
    }
    /* the thread's cached table is reused only for the same σ² */
    static fp_dp_dgauss_t a, b, c;
    assert_int_equal(fp_dp_dgauss_init(&a, 5000.5), FP_OK);
    assert_int_equal(fp_dp_dgauss_init(&b, 6000.0), FP_OK);
    assert_int_equal(fp_dp_dgauss_init(&c, 5000.5), FP_OK);
    assert_memory_equal(&a.table, &c.table, sizeof a.table);
    assert_true(memcmp(&a.table, &b.table, sizeof a.table) != 0);
    /* below the threshold: no table (CKS) */
    static fp_dp_dgauss_t q;
    assert_int_equal(fp_dp_dgauss_init(&q, 4095.0), FP_OK);
    assert_int_equal(q.table_on, 0);
}

/* The table sampler's fast path against its exact path on the same words (noise.c): wherever the
 * fast one decides a proposal, the whole algorithm must decide it identically, including the pairs
 * placed on either side of the first in-bin trial's boundary; over the σ range of the table, and
 * with a non-dyadic σ² (den ≠ 2^k). */
static void test_dgauss_table_fast_path(void **state)
{
    (void)state;
    const double sigmas[] = {4096.0, 5000.5, 2097152.0, 1073741000.0};
    static fp_dp_dgauss_t p;
    fp_csprng_t *g = seeded(40);
    for (size_t t = 0; t <= sizeof sigmas / sizeof sigmas[0]; t++) {
        if (t < sizeof sigmas / sizeof sigmas[0])
            assert_int_equal(fp_dp_dgauss_init(&p, sigmas[t]), FP_OK);
        else
            assert_int_equal(fp_dp_dgauss_init_rational(&p, 100000000001ULL, 3), FP_OK); /* σ ≈ 182574 */
        assert_int_equal(p.table_on, 1);
        size_t fast = 0;
        const size_t n = 300000;
        if (fp_dp_dgauss_table_selfcheck(&p, g, n, &fast) != FP_OK)
            fail_msg("%s", fp_error_message());
        print_message("  table %zu: fast path decided %zu of %zu proposals\n", t, fast, n);
        /* groups in six modes (noise.c, selfcheck_word): random words are decided there about
         * 99% of the time, words just past a boundary always, the one lane on a tie or before the
         * boundary in three modes never: about 1 − 3/48 − 1% */
        assert_true(fast > n * 88 / 100 && fast < n * 95 / 100);
    }
    size_t fast = 0;
    static fp_dp_dgauss_t q;
    assert_int_equal(fp_dp_dgauss_init(&q, 100.0), FP_OK);
    assert_int_equal(fp_dp_dgauss_table_selfcheck(&q, g, 10, &fast), FP_ERR_INVALID);
    fp_csprng_destroy(g);
}

/* Every vector path this CPU has (AVX-512, AVX2) gives the same samples as the portable one from
 * the same seed (elsewhere all runs take the portable path), for a dyadic σ² (the vector paths'
 * case) and a non-dyadic one (always portable), through fp_dp_dgauss_sample_n and
 * fp_dp_add_noise. */
static void test_dgauss_table_simd_equals_portable(void **state)
{
    (void)state;
    static fp_dp_dgauss_t p;
    enum { N = 200003 };
    static int64_t a[N], b[N];
    static float va[N], vb[N];
    static const char *names[] = {"portable", "AVX2", "AVX-512"};
    for (int level = FP_DP_SIMD_AVX2; level <= FP_DP_SIMD_AVX512; level++) {
        const int got = fp_dp_noise_set_simd(level);
        print_message("  %s path requested: %s in use\n", names[level], names[got]);
        for (int t = 0; t < 2; t++) {
            if (t == 0)
                assert_int_equal(fp_dp_dgauss_init(&p, 2097152.0), FP_OK);
            else
                assert_int_equal(fp_dp_dgauss_init_rational(&p, 100000000001ULL, 3), FP_OK);
            fp_csprng_t *g1 = seeded(50), *g2 = seeded(50);
            assert_int_equal(fp_dp_noise_set_simd(level), got);
            assert_int_equal(fp_dp_dgauss_sample_n(&p, g1, a, N), FP_OK);
            assert_int_equal(fp_dp_noise_set_simd(FP_DP_SIMD_PORTABLE), FP_DP_SIMD_PORTABLE);
            assert_int_equal(fp_dp_dgauss_sample_n(&p, g2, b, N), FP_OK);
            assert_memory_equal(a, b, sizeof a);
            fp_csprng_destroy(g1);
            fp_csprng_destroy(g2);
        }
        fp_csprng_t *g1 = seeded(51), *g2 = seeded(51);
        for (int i = 0; i < N; i++)
            va[i] = vb[i] = (float)(i % 97) * 0.25f - 10.0f;
        fp_dp_noise_set_simd(level);
        assert_int_equal(fp_dp_add_noise(va, N, 1.0, 0x1p-21, g1), FP_OK);
        fp_dp_noise_set_simd(FP_DP_SIMD_PORTABLE);
        assert_int_equal(fp_dp_add_noise(vb, N, 1.0, 0x1p-21, g2), FP_OK);
        assert_memory_equal(va, vb, sizeof va);
        fp_csprng_destroy(g1);
        fp_csprng_destroy(g2);
    }
    fp_dp_noise_set_simd(FP_DP_SIMD_AVX512); /* back to the best this CPU has */
}

/* The table sampler's output against the exact pmf where a fault in it would show: the offsets
 * within a bin (z mod W, chi-square over the W residues: a wrong offset range or acceptance shows
 * as a slope), the bins (chi-square over |z| / W), the sign, and the moments, tails and KS of
 * check_dgauss_samples; and CKS (table_on = 0) at the same σ passes the same checks. */
static void test_dgauss_table_vs_exact(void **state)
{
    (void)state;
    static fp_dp_dgauss_t p;
    assert_int_equal(fp_dp_dgauss_init(&p, 5000.5), FP_OK);
    assert_int_equal(p.table_on, 1);
    const double s2 = fp_dp_dgauss_sigma2(&p);
    const int W = 1 << p.table.log2w; /* 128 */
    const size_t N = 2000000;
    int64_t *z = malloc(N * sizeof *z);
    assert_non_null(z);
    fp_csprng_t *g = seeded(30);
    assert_int_equal(fp_dp_dgauss_sample_n(&p, g, z, N), FP_OK);
    /* exact probabilities of |z| classes from the pmf (|z| ≤ 12σ carries all but e^-72) */
    const int64_t L = (int64_t)(12 * sqrt(s2));
    double norm = 0;
    for (int64_t k = -L; k <= L; k++)
        norm += exp(-(double)k * (double)k / (2 * s2));
    double *pres = calloc((size_t)W, sizeof *pres), *pbin = calloc((size_t)(L / W + 2), sizeof *pbin);
    long *cres = calloc((size_t)W, sizeof *cres), *cbin = calloc((size_t)(L / W + 2), sizeof *cbin);
    assert_true(pres && pbin && cres && cbin);
    for (int64_t k = -L; k <= L; k++) {
        double pk = exp(-(double)k * (double)k / (2 * s2)) / norm;
        int64_t a = k < 0 ? -k : k;
        pres[a % W] += pk;
        pbin[a / W] += pk;
    }
    long neg = 0;
    for (size_t i = 0; i < N; i++) {
        int64_t a = z[i] < 0 ? -z[i] : z[i];
        neg += z[i] < 0;
        assert_true(a <= L);
        cres[a % W]++;
        cbin[a / W]++;
    }
    /* chi-square against its degrees of freedom: mean df, sd sqrt(2 df); refuse beyond 6 sd */
    double x2 = 0;
    for (int r = 0; r < W; r++)
        x2 += (cres[r] - N * pres[r]) * (cres[r] - N * pres[r]) / (N * pres[r]);
    print_message("  residues mod %d: chi2 %.1f, df %d\n", W, x2, W - 1);
    assert_true(x2 < (W - 1) + 6 * sqrt(2.0 * (W - 1)));
    /* The in-bin acceptance tilts each bin's density towards its low end (by ~2% across a bin
     * here): the residues' mean sits about 0.2 below (W-1)/2. Skipping the acceptance would put
     * it 8 standard errors off. */
    double m_want = 0, m_got = 0, v_want = 0;
    for (int r = 0; r < W; r++)
        m_want += r * pres[r];
    for (int r = 0; r < W; r++) {
        v_want += (r - m_want) * (r - m_want) * pres[r];
        m_got += (double)r * cres[r];
    }
    m_got /= N;
    print_message("  residue mean %.4f vs %.4f (uniform %.1f, se %.4f)\n", m_got, m_want, (W - 1) / 2.0,
                  sqrt(v_want / N));
    assert_true(fabs(m_got - m_want) <= 5 * sqrt(v_want / N));
    double xb = 0;
    int df = -1;
    for (int64_t b = 0; b <= L / W; b++)
        if (N * pbin[b] >= 20) {
            xb += (cbin[b] - N * pbin[b]) * (cbin[b] - N * pbin[b]) / (N * pbin[b]);
            df++;
        }
    print_message("  bins of %d: chi2 %.1f, df %d\n", W, xb, df);
    assert_true(xb < df + 6 * sqrt(2.0 * df));
    assert_true(fabs((double)neg / N - 0.5) < 6 * 0.5 / sqrt((double)N));
    check_dgauss_samples(z, N, s2);
    /* CKS at the same σ */
    p.table_on = 0;
    assert_int_equal(fp_dp_dgauss_sample_n(&p, g, z, N / 4), FP_OK);
    check_dgauss_samples(z, N / 4, s2);
    free(pres), free(pbin), free(cres), free(cbin), free(z);
    fp_csprng_destroy(g);
}

static void test_dgauss_determinism(void **state)
{
    (void)state;
    fp_dp_dgauss_t p;
    assert_int_equal(fp_dp_dgauss_init(&p, 3.7), FP_OK);
    int64_t a[1000], b[1000], c[1000];
    fp_csprng_t *g1 = seeded(20), *g2 = seeded(20), *g3 = seeded(21);
    assert_int_equal(fp_dp_dgauss_sample_n(&p, g1, a, 1000), FP_OK);
    assert_int_equal(fp_dp_dgauss_sample_n(&p, g2, b, 1000), FP_OK);
    assert_int_equal(fp_dp_dgauss_sample_n(&p, g3, c, 1000), FP_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_true(memcmp(a, c, sizeof a) != 0);
    fp_csprng_destroy(g1);
    fp_csprng_destroy(g2);
    fp_csprng_destroy(g3);
}

static void test_dgauss_conversion(void **state)
{
    (void)state;
    fp_dp_dgauss_t p;
    /* Exact when σ² is a dyadic rational. */
    assert_int_equal(fp_dp_dgauss_init(&p, 1.5), FP_OK);
    assert_true(p.num == 9 && p.den == 4);
    assert_int_equal(fp_dp_dgauss_init_grid(&p, 1.0, 0x1p-10), FP_OK);
    assert_true(p.num == ((uint64_t)1 << 20) && p.den == 1);
    assert_int_equal(fp_dp_dgauss_init(&p, 0x1p30), FP_OK);
    assert_true(p.num == ((uint64_t)1 << 60) && p.den == 1);
    /* Otherwise never below the true σ², and within 2^-50 relative plus one unit. */
    const double sig[] = {0.1, 0.3, 2.0 / 3, 1.1, 3.7, 12345.678, 1e6 + 0.1, 9.9e8};
    const double grid[] = {1.0, 0.001, 1.0, 1.0 / 3, 1.0, 0.5, 1.0, 1.0};
    for (size_t i = 0; i < sizeof sig / sizeof sig[0]; i++) {
        assert_int_equal(fp_dp_dgauss_init_grid(&p, sig[i], grid[i]), FP_OK);
        long double truth = (long double)sig[i] / (long double)grid[i];
        truth *= truth;
        long double got = (long double)p.num / (long double)p.den;
        assert_true(got >= truth * (1 - 1e-18L));
        assert_true(got <= truth * (1 + 0x1p-49L) + 1.0L / p.den);
    }
}

static void test_dgauss_bad_args(void **state)
{
    (void)state;
    fp_dp_dgauss_t p;
    assert_int_equal(fp_dp_dgauss_init(&p, -1.0), FP_ERR_INVALID);
    assert_int_equal(fp_dp_dgauss_init(&p, 0.0), FP_ERR_INVALID);
    assert_int_equal(fp_dp_dgauss_init(&p, NAN), FP_ERR_INVALID);
    assert_int_equal(fp_dp_dgauss_init(&p, INFINITY), FP_ERR_INVALID);
    assert_int_equal(fp_dp_dgauss_init(NULL, 1.0), FP_ERR_INVALID);
    assert_int_equal(fp_dp_dgauss_init(&p, 0x1p31), FP_ERR_RANGE);
    assert_int_equal(fp_dp_dgauss_init(&p, 0x1p-13), FP_ERR_RANGE);
    assert_int_equal(fp_dp_dgauss_init_grid(&p, 1.0, 0.0), FP_ERR_INVALID);
    assert_int_equal(fp_dp_dgauss_init_grid(&p, 1.0, -0.5), FP_ERR_INVALID);
    assert_int_equal(fp_dp_dgauss_init_grid(&p, 1.0, NAN), FP_ERR_INVALID);
    assert_int_equal(fp_dp_dgauss_init_grid(&p, 1.0, 0x1p-40), FP_ERR_RANGE);
    assert_int_equal(fp_dp_dgauss_init_rational(&p, 0, 1), FP_ERR_INVALID);
    assert_int_equal(fp_dp_dgauss_init_rational(&p, 1, 0), FP_ERR_INVALID);
    assert_int_equal(fp_dp_dgauss_init_rational(&p, ((uint64_t)1 << 60) + 1, 1), FP_ERR_RANGE);
    assert_int_equal(fp_dp_dgauss_init_rational(&p, 1, ((uint64_t)1 << 31) + 1), FP_ERR_RANGE);
    /* Reduction by the gcd brings an apparently out-of-range pair in range. */
    assert_int_equal(fp_dp_dgauss_init_rational(&p, (uint64_t)9 << 40, (uint64_t)4 << 40), FP_OK);
    assert_true(p.num == 9 && p.den == 4);
    fp_dp_dgauss_t zero;
    memset(&zero, 0, sizeof zero);
    int64_t z;
    fp_csprng_t *g = seeded(30);
    assert_int_equal(fp_dp_dgauss_sample(&zero, g, &z), FP_ERR_INVALID);
    assert_int_equal(fp_dp_dgauss_sample(&p, NULL, &z), FP_ERR_INVALID);
    double d;
    assert_int_equal(fp_dp_gauss_sample_n(g, -1.0, &d, 1), FP_ERR_INVALID);
    assert_int_equal(fp_dp_gauss_sample_n(g, NAN, &d, 1), FP_ERR_INVALID);
    fp_csprng_destroy(g);
}

/* ---- continuous Gaussian ---- */

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void test_gauss_continuous(void **state)
{
    (void)state;
    const size_t N = 1000000;
    const double sigma = 2.5;
    double *x = malloc(N * sizeof *x);
    assert_non_null(x);
    fp_csprng_t *g = seeded(40);
    assert_int_equal(fp_dp_gauss_sample_n(g, sigma, x, N), FP_OK);
    double sum = 0, sumsq = 0;
    size_t tail = 0;
    for (size_t i = 0; i < N; i++) {
        sum += x[i];
        sumsq += x[i] * x[i];
        tail += fabs(x[i]) > 3 * sigma;
    }
    double mean = sum / N, var = sumsq / N - mean * mean, s2 = sigma * sigma;
    double p3 = erfc(3 / sqrt(2.0)); /* P(|X| > 3σ) */
    print_message("  continuous: mean %.3e, var %.5f vs %.5f, P(|X|>3s) %.5f vs %.5f\n", mean, var, s2,
                  (double)tail / N, p3);
    assert_true(fabs(mean) <= 5 * sigma / sqrt((double)N));
    assert_true(fabs(var - s2) <= 5 * s2 * sqrt(2.0 / N)); /* μ4 − σ⁴ = 2σ⁴ */
    assert_true(fabs((double)tail / N - p3) <= 5 * sqrt(p3 * (1 - p3) / N));
    qsort(x, N, sizeof *x, cmp_d);
    double D = 0;
    for (size_t i = 0; i < N; i++) {
        double F = 0.5 * erfc(-x[i] / (sigma * sqrt(2.0)));
        double a = fabs((double)(i + 1) / N - F), b = fabs(F - (double)i / N);
        D = a > D ? a : D;
        D = b > D ? b : D;
    }
    print_message("  continuous KS D = %.5f, critical %.5f\n", D, KS_C_1E4 / sqrt((double)N));
    assert_true(D <= KS_C_1E4 / sqrt((double)N));
    free(x);
    fp_csprng_destroy(g);
}

/* ---- noise on a vector ---- */

static void test_add_noise_vector(void **state)
{
    (void)state;
    /* 2.5 chunks of a zero vector: every output is on the grid, the noise has σ², and the result
     * for a seed does not depend on the number of threads. */
    const size_t N = 2 * FP_DP_NOISE_CHUNK + FP_DP_NOISE_CHUNK / 2;
    const double sigma = 0.75, grid = 0x1p-8;
    float *a = calloc(N, sizeof *a), *b = calloc(N, sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    fp_csprng_t *g1 = seeded(50), *g2 = seeded(50);
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    assert_int_equal(fp_dp_add_noise(a, N, sigma, grid, g1), FP_OK);
#ifdef _OPENMP
    omp_set_num_threads(2);
#endif
    assert_int_equal(fp_dp_add_noise(b, N, sigma, grid, g2), FP_OK);
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
    assert_memory_equal(a, b, N * sizeof *a);
    double sum = 0, sumsq = 0;
    for (size_t i = 0; i < N; i++) {
        double v = a[i] / grid;
        assert_true(v == floor(v)); /* on the grid */
        sum += a[i];
        sumsq += (double)a[i] * a[i];
    }
    double mean = sum / N, var = sumsq / N - mean * mean, s2 = sigma * sigma;
    assert_true(fabs(mean) <= 5 * sigma / sqrt((double)N));
    assert_true(fabs(var - s2) <= 5 * s2 * sqrt(2.0 / N));
    /* A non-zero vector: each coordinate moves by rounding (≤ grid/2) plus grid·Z. */
    for (size_t i = 0; i < N; i++)
        a[i] = b[i] = (float)(0.001 * (double)(i % 1000) - 0.5);
    assert_int_equal(fp_dp_add_noise(a, N, sigma, grid, g1), FP_OK);
    double diff = 0;
    for (size_t i = 0; i < N; i++)
        diff += (double)a[i] - b[i];
    assert_true(fabs(diff / N) <= 5 * sigma / sqrt((double)N) + grid / 2);
    /* sigma = 0: unchanged. */
    memcpy(b, a, N * sizeof *a);
    assert_int_equal(fp_dp_add_noise(a, N, 0.0, grid, g1), FP_OK);
    assert_memory_equal(a, b, N * sizeof *a);
    free(a);
    free(b);
    fp_csprng_destroy(g1);
    fp_csprng_destroy(g2);
}

/* The fused scale is the two steps one after the other, bit for bit, on a vector of several
 * chunks (threads and generators forked per chunk), for a power-of-two grid and another. */
static void test_add_noise_scaled(void **state)
{
    (void)state;
    const size_t n = 3 * FP_DP_NOISE_CHUNK + 777;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    const double grids[2] = {0x1p-12, 3e-4};
    const float scale = 1.0f / 1024.0f * 3.0f;
    for (int gi = 0; gi < 2; gi++) {
        for (size_t i = 0; i < n; i++)
            a[i] = b[i] = (float)sin((double)i * 0.37) * 0.8f;
        fp_csprng_t *g1 = seeded(70), *g2 = seeded(70);
        assert_int_equal(fp_dp_add_noise(a, n, 0.03, grids[gi], g1), FP_OK);
        for (size_t i = 0; i < n; i++)
            a[i] *= scale;
        assert_int_equal(fp_dp_add_noise_scaled(b, n, 0.03, grids[gi], scale, g2), FP_OK);
        assert_memory_equal(a, b, n * sizeof *a);
        fp_csprng_destroy(g1);
        fp_csprng_destroy(g2);
    }
    /* sigma 0: the scale alone; a non-finite scale refused, x untouched */
    fp_csprng_t *g = seeded(71);
    float x[3] = {1.5f, -2.0f, 0.25f};
    assert_int_equal(fp_dp_add_noise_scaled(x, 3, 0.0, 0.01, 0.5f, g), FP_OK);
    assert_true(x[0] == 0.75f && x[1] == -1.0f && x[2] == 0.125f);
    assert_int_equal(fp_dp_add_noise_scaled(x, 3, 1.0, 0.01, NAN, g), FP_ERR_INVALID);
    assert_int_equal(fp_dp_add_noise_scaled(x, 3, 0.0, 0.01, INFINITY, g), FP_ERR_INVALID);
    assert_true(x[0] == 0.75f && x[1] == -1.0f && x[2] == 0.125f);
    fp_csprng_destroy(g);
    free(a);
    free(b);
}

static void test_add_noise_bad_args(void **state)
{
    (void)state;
    fp_csprng_t *g = seeded(60);
    float x[4] = {1, 2, 3, 4}, keep[4];
    memcpy(keep, x, sizeof x);
    assert_int_equal(fp_dp_add_noise(x, 4, -1.0, 0.01, g), FP_ERR_INVALID);
    assert_int_equal(fp_dp_add_noise(x, 4, NAN, 0.01, g), FP_ERR_INVALID);
    assert_int_equal(fp_dp_add_noise(x, 4, INFINITY, 0.01, g), FP_ERR_INVALID);
    assert_int_equal(fp_dp_add_noise(x, 4, 1.0, 0.0, g), FP_ERR_INVALID);
    assert_int_equal(fp_dp_add_noise(x, 4, 1.0, -0.01, g), FP_ERR_INVALID);
    assert_int_equal(fp_dp_add_noise(x, 4, 1.0, NAN, g), FP_ERR_INVALID);
    assert_int_equal(fp_dp_add_noise(x, 4, 1.0, INFINITY, g), FP_ERR_INVALID);
    assert_int_equal(fp_dp_add_noise(x, 4, 1.0, 0.01, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_dp_add_noise(NULL, 4, 1.0, 0.01, g), FP_ERR_INVALID);
    assert_int_equal(fp_dp_add_noise(x, 4, 1e12, 1e-3, g), FP_ERR_RANGE); /* σ/grid > 2^30 */
    assert_memory_equal(x, keep, sizeof x);
    x[2] = NAN;
    assert_int_equal(fp_dp_add_noise(x, 4, 1.0, 0.01, g), FP_ERR_NUMERIC);
    assert_true(x[0] == 1 && x[1] == 2 && isnan(x[2]) && x[3] == 4); /* untouched */
    x[2] = 1e30f;
    assert_int_equal(fp_dp_add_noise(x, 4, 1.0, 0x1p-40, g), FP_ERR_RANGE); /* |x|/grid > 2^52 */
    assert_int_equal(fp_dp_add_noise(NULL, 0, 1.0, 0.01, g), FP_OK);
    assert_true(fabs(fp_dp_grid_sensitivity(1.0, 10000, 0x1p-10) - (1.0 + 100 * 0x1p-10)) < 1e-15);
    fp_csprng_destroy(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_csprng_known_answer),
        cmocka_unit_test(test_csprng_determinism_and_layout),
        cmocka_unit_test(test_csprng_secure),
        cmocka_unit_test(test_csprng_below_uniform),
        cmocka_unit_test(test_bernoulli_exp),
        cmocka_unit_test(test_dgauss_small_sigma_exact),
        cmocka_unit_test(test_dgauss_sigma_below_one),
        cmocka_unit_test(test_dgauss_large_sigma),
        cmocka_unit_test(test_dgauss_table_accuracy),
        cmocka_unit_test(test_dgauss_table_fast_path),
        cmocka_unit_test(test_dgauss_table_simd_equals_portable),
        cmocka_unit_test(test_dgauss_table_vs_exact),
        cmocka_unit_test(test_dgauss_determinism),
        cmocka_unit_test(test_dgauss_conversion),
        cmocka_unit_test(test_dgauss_bad_args),
        cmocka_unit_test(test_gauss_continuous),
        cmocka_unit_test(test_add_noise_vector),
        cmocka_unit_test(test_add_noise_scaled),
        cmocka_unit_test(test_add_noise_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
