/* noise: exact discrete Gaussian (CKS 2020), its table sampler for large σ, continuous Gaussian,
 * and the grid noise the client adds to a clipped update (see noise.h for the model, the
 * supported ranges and the table sampler's stated departures from exactness).
 *
 * Why integer arithmetic: a sampler that computes exp() or log() in floating point outputs values
 * whose low bits depend on the secret (Mironov 2012). Every decision below is a comparison of a
 * uniform integer with a rational's numerator, so the output distribution is exactly the stated
 * one. The only floating point is in fp_dp_dgauss_init (choosing the rational, rounded up and
 * corrected with integers), in building the table sampler's bin probabilities (113-bit, once per
 * σ, rounded to 128-bit integer thresholds: the stated TV bound) and in the final conversion
 * grid·k to float, a deterministic post-processing of the integer result. */
#include "dp/noise.h"

#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <quadmath.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* The table sampler's vector fast paths (dgauss_table_n) on x86-64: 8 lanes with AVX-512F/DQ, 4
 * with AVX2, chosen at run time; the portable path computes the same outputs from the same words. */
#if defined(__x86_64__) && defined(__GNUC__)
#define NOISE_X86 1
#include <immintrin.h>
#else
#define NOISE_X86 0
#endif
/* Plain loops over the vector compiled also for x86-64-v4 (AVX-512: 8 doubles and int64→double
 * conversions per instruction), chosen at load time; every operation in them is exact or
 * correctly rounded IEEE arithmetic, so each clone computes the same bits. */
#if NOISE_X86 && !defined(__clang__)
#define NOISE_VEC __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define NOISE_VEC
#endif

#if !defined(__SIZEOF_INT128__)
#error "dp/noise.c needs a compiler with unsigned __int128 (GCC or Clang on a 64-bit target)"
#endif
typedef unsigned __int128 u128;

#define TRY(expr)                          \
    do {                                   \
        fp_status st_ = (expr);            \
        if (st_ != FP_OK)                  \
            return st_;                    \
    } while (0)

/* The sampler's view of the generator: 512 keystream bytes fetched at once and consumed inline
 * (one fp_csprng_u64 call per word cost more than the ChaCha20 keystream itself), plus a cache of
 * single bits (the sign of a CKS sample costs 1 bit, not 64). Each word is zeroed as it is read
 * and src_done erases the rest, so no used randomness stays behind. */
#define SRC_BYTES 512
typedef struct {
    fp_csprng_t *r;
    unsigned pos; /* next unread byte of buf; SRC_BYTES: empty */
    unsigned nbits;
    uint64_t bits;
    uint8_t buf[SRC_BYTES];
} src_t;

static void src_init(src_t *s, fp_csprng_t *r)
{
    s->r = r;
    s->pos = SRC_BYTES;
    s->nbits = 0;
    s->bits = 0;
}

static void src_done(src_t *s) { OPENSSL_cleanse(s, sizeof *s); }

static inline fp_status src_u64(src_t *s, uint64_t *x)
{
    if (s->pos == SRC_BYTES) {
        TRY(fp_csprng_bytes(s->r, s->buf, SRC_BYTES));
        s->pos = 0;
    }
    uint64_t v;
    memcpy(&v, s->buf + s->pos, 8); /* one load; read as little-endian, as fp_csprng_u64, on every host */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memset(s->buf + s->pos, 0, 8);
    s->pos += 8;
    *x = v;
    return FP_OK;
}

/* Uniform on [0, n), n ≥ 1 (Lemire's multiply-and-reject: exact). */
static inline fp_status src_below(src_t *s, uint64_t n, uint64_t *out)
{
    uint64_t x;
    TRY(src_u64(s, &x));
    u128 m = (u128)x * n;
    uint64_t l = (uint64_t)m;
    if (l < n) {
        uint64_t t = (0 - n) % n; /* 2^64 mod n: the biased low region */
        while (l < t) {
            TRY(src_u64(s, &x));
            m = (u128)x * n;
            l = (uint64_t)m;
        }
    }
    *out = (uint64_t)(m >> 64);
    return FP_OK;
}

static inline fp_status src_bit(src_t *s, int *b)
{
    if (s->nbits == 0) {
        TRY(src_u64(s, &s->bits));
        s->nbits = 64;
    }
    *b = (int)(s->bits & 1);
    s->bits >>= 1;
    s->nbits--;
    return FP_OK;
}

/* Bernoulli(1/k), k ≥ 1. */
static inline fp_status bern_inv(src_t *s, uint64_t k, int *b)
{
    if (k == 1) {
        *b = 1;
        return FP_OK;
    }
    if (k == 2)
        return src_bit(s, b);
    uint64_t u;
    TRY(src_below(s, k, &u));
    *b = u == 0;
    return FP_OK;
}

/* Bernoulli(num / (den·k)), num ≤ den, k ≥ 1. When den·k would overflow it is drawn as the AND
 * of the independent Bernoulli(1/k) and Bernoulli(num/den): the same probability, no product. */
static inline fp_status bern_frac_k(src_t *s, uint64_t num, uint64_t den, uint64_t k, int *b)
{
    uint64_t u;
    if (num == 0) {
        *b = 0;
        return FP_OK;
    }
    uint64_t dk;
    if (!__builtin_mul_overflow(den, k, &dk)) {
        TRY(src_below(s, dk, &u));
        *b = u < num;
        return FP_OK;
    }
    TRY(bern_inv(s, k, b));
    if (!*b)
        return FP_OK;
    TRY(src_below(s, den, &u));
    *b = u < num;
    return FP_OK;
}

/* Bernoulli(exp(−num/den)) for 0 ≤ num ≤ den (CKS Algorithm 1, γ ∈ [0,1]): draw A_k ~
 * Bernoulli(γ/k) for k = 1, 2, ... until the first 0; P(first 0 at an odd k) = exp(−γ). */
static fp_status bern_exp_le1_from(src_t *s, uint64_t num, uint64_t den, uint64_t k, int *out)
{
    for (;;) {
        int a;
        TRY(bern_frac_k(s, num, den, k, &a));
        if (!a)
            break;
        k++;
    }
    *out = (int)(k & 1);
    return FP_OK;
}

/* The same from k = 1; bern_exp_le1_from(k) continues after trials 1..k−1 all came out 1. */
static fp_status bern_exp_le1(src_t *s, uint64_t num, uint64_t den, int *out)
{
    return bern_exp_le1_from(s, num, den, 1, out);
}

/* Bernoulli(exp(−1)): the γ = 1 case with Bernoulli(1/k) draws. */
static fp_status bern_exp1(src_t *s, int *out)
{
    uint64_t k = 2; /* A_1 ~ Bernoulli(1) is always 1 */
    for (;;) {
        int a;
        TRY(bern_inv(s, k, &a));
        if (!a)
            break;
        k++;
    }
    *out = (int)(k & 1);
    return FP_OK;
}

/* Bernoulli(exp(−N/den)) for any N (128-bit) and den ≥ 1: ⌊γ⌋ Bernoulli(exp(−1)) trials that must
 * all succeed, then the fractional part (CKS Algorithm 1, γ > 1). */
static fp_status bern_exp_wide(src_t *s, u128 N, uint64_t den, int *out)
{
    if (N < den) /* γ < 1, the table sampler's every case: no division */
        return bern_exp_le1(s, (uint64_t)N, den, out);
    u128 q;
    uint64_t rem;
    if ((N >> 64) == 0) { /* the common case: 64-bit division */
        q = (uint64_t)N / den;
        rem = (uint64_t)N % den;
    } else {
        q = N / den;
        rem = (uint64_t)(N % den);
    }
    for (; q > 0; q--) {
        int b;
        TRY(bern_exp1(s, &b));
        if (!b) {
            *out = 0;
            return FP_OK;
        }
    }
    return bern_exp_le1(s, rem, den, out);
}

fp_status fp_dp_bernoulli_exp(fp_csprng_t *r, uint64_t num, uint64_t den, int *out)
{
    if (!r || !out || den == 0)
        return FP_FAIL(FP_ERR_INVALID, "bernoulli_exp: NULL argument or den = 0");
    src_t s;
    src_init(&s, r);
    fp_status st = bern_exp_wide(&s, num, den, out);
    src_done(&s);
    return st;
}

/* ---- parameters ---- */

static uint64_t gcd64(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* ⌊√x⌋ exactly: a floating estimate corrected with integer comparisons (init only). */
static uint64_t isqrt64(uint64_t x)
{
    uint64_t r = (uint64_t)sqrt((double)x);
    while (r > 0 && (u128)r * r > x)
        r--;
    while ((u128)(r + 1) * (r + 1) <= x)
        r++;
    return r;
}

#define NUM_MAX ((uint64_t)1 << 60)       /* σ ≥ 1: num ≤ 2^60, so σ ≤ 2^30 */
#define SMALL_DEN_MAX ((uint64_t)1 << 31) /* σ < 1: den ≤ 2^31, so 2·num·den < 2^63 */
#define TRUNC_FACTOR 1024u                /* T = 1024·(⌊σ⌋ + 1) */

/* The table sampler's bins (see noise.h), for σ² = num/den ≥ FP_DP_DGAUSS_TABLE_MIN². Bin b
 * (b < FP_DP_DGAUSS_BINS) holds |z| in [bW, (b+1)W) and is proposed with probability
 * ∝ exp(−(bW)²/(2σ²)), computed in 113-bit floating point (every input is exact there: bW is an
 * integer below 2^36 and num/den has a power-of-two den). The alias table (Vose) is built in the
 * same precision and its thresholds rounded to 128-bit integers. */
static void table_build(fp_dp_dgauss_t *p)
{
    fp_dp_dgauss_table_t *t = &p->table;
    const __float128 s2 = (__float128)p->num / (__float128)p->den, sigma = sqrtq(s2);
    /* W: the smallest power of two with FP_DP_DGAUSS_BINS·W ≥ 32σ (so W < σ/32, ≥ σ/64) */
    unsigned lw = 0;
    while ((__float128)FP_DP_DGAUSS_BINS * (__float128)((uint64_t)1 << lw) < 32 * sigma)
        lw++;
    t->log2w = lw;
    enum { NB = FP_DP_DGAUSS_BINS };
    __float128 q[NB]; /* 40 KB of stack, once per σ */
    uint16_t small[NB], large[NB];
    __float128 sum = 0;
    for (int b = 0; b < NB; b++) {
        __float128 z = (__float128)((uint64_t)b << lw);
        q[b] = expq(-(z * z) / (2 * s2));
        sum += q[b];
    }
    int ns = 0, nl = 0;
    for (int b = 0; b < NB; b++) {
        q[b] = q[b] * NB / sum;
        if (q[b] < 1)
            small[ns++] = (uint16_t)b;
        else
            large[nl++] = (uint16_t)b;
    }
    /* Vose: each small column is topped up from a large one */
    while (ns > 0 && nl > 0) {
        uint16_t a = small[--ns], g = large[nl - 1];
        t->alias[a] = g;
        __float128 v = q[a] * 0x1p64Q;
        uint64_t hi = v >= 0x1p64Q ? UINT64_MAX : (uint64_t)v;
        t->thr_hi[a] = hi;
        t->thr_lo[a] = (uint64_t)((v - (__float128)hi) * 0x1p64Q);
        q[g] = (q[g] + q[a]) - 1;
        if (q[g] < 1) {
            nl--;
            small[ns++] = g;
        }
    }
    /* what remains is 1 up to rounding: always keep the column */
    while (nl > 0) {
        uint16_t g = large[--nl];
        t->alias[g] = g;
        t->thr_hi[g] = UINT64_MAX, t->thr_lo[g] = UINT64_MAX;
    }
    while (ns > 0) {
        uint16_t a = small[--ns];
        t->alias[a] = a;
        t->thr_hi[a] = UINT64_MAX, t->thr_lo[a] = UINT64_MAX;
    }
    p->table_on = 1;
}

fp_status fp_dp_dgauss_init_rational(fp_dp_dgauss_t *g, uint64_t num, uint64_t den)
{
    if (!g)
        return FP_FAIL(FP_ERR_INVALID, "dgauss: NULL parameters");
    if (num == 0 || den == 0)
        return FP_FAIL(FP_ERR_INVALID, "dgauss: sigma^2 = %llu/%llu must be positive",
                       (unsigned long long)num, (unsigned long long)den);
    uint64_t d = gcd64(num, den);
    num /= d;
    den /= d;
    if (num >= den && num > NUM_MAX)
        return FP_FAIL(FP_ERR_RANGE, "dgauss: sigma^2 = %llu/%llu: numerator above 2^60 (sigma <= 2^30)",
                       (unsigned long long)num, (unsigned long long)den);
    if (num < den && den > SMALL_DEN_MAX)
        return FP_FAIL(FP_ERR_RANGE, "dgauss: sigma^2 = %llu/%llu < 1 needs a denominator <= 2^31",
                       (unsigned long long)num, (unsigned long long)den);
    /* Written in place (the table makes the struct 37 KB: no copy on the stack); the table
     * itself only when σ is large enough to use it. */
    fp_dp_dgauss_t *p = g;
    memset(p, 0, offsetof(fp_dp_dgauss_t, table));
    p->num = num;
    p->den = den;
    if (num >= den) {
        p->small = 0;
        p->m = isqrt64(num / den); /* ⌊σ⌋ = ⌊√⌊σ²⌋⌋ */
        /* Proposal DLap(σ²/m): then σ²/scale = m and the acceptance exponent has denominator 2·num.
         * den·m ≤ den·σ = √(num·den) ≤ num ≤ 2^60. */
        p->lap_t = num;
        p->lap_s = den * p->m;
        p->tmax = TRUNC_FACTOR * (p->m + 1);
        p->acc_den = 2 * num;
    } else {
        p->small = 1; /* CKS's t = ⌊σ⌋ + 1 = 1: proposal DLap(1), centre σ²/t = σ² */
        p->m = 0;
        p->lap_t = 1;
        p->lap_s = 1;
        p->tmax = TRUNC_FACTOR;
        p->acc_den = 2 * num * den;
    }
    /* V > vmax ⇒ lap_t·V / lap_s > tmax + 1 ⇒ Y > tmax: stop the geometric loop early. */
    u128 vm = (u128)(p->tmax + 1) * p->lap_s / p->lap_t + 1;
    p->vmax = vm > UINT64_MAX / 2 ? UINT64_MAX / 2 : (uint64_t)vm;
    p->vfit = (UINT64_MAX - p->lap_t) / p->lap_t;
    if (num >= den && num / den >= (uint64_t)(FP_DP_DGAUSS_TABLE_MIN * FP_DP_DGAUSS_TABLE_MIN)) {
        /* Building costs ~1.6 ms (2048 expq), a tenth of a DP-SGD step's noise, for a table that
         * depends only on σ (nothing secret): the last one built is reused for the same σ². One
         * process-wide copy under a mutex (a thread-local one would give every thread of the
         * process, gRPC's included, 37 KB of TLS). */
        static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
        static struct {
            uint64_t num, den;
            fp_dp_dgauss_table_t table;
        } last;
        pthread_mutex_lock(&mu);
        int hit = last.den != 0 && last.num == num && last.den == den;
        if (hit)
            g->table = last.table;
        pthread_mutex_unlock(&mu);
        if (hit) {
            g->table_on = 1;
        } else {
            table_build(g);
            pthread_mutex_lock(&mu);
            last.table = g->table;
            last.num = num;
            last.den = den;
            pthread_mutex_unlock(&mu);
        }
    }
    return FP_OK;
}

/* Round the double v (an approximation of the true σ² within 3 ulps, or exact when `exact`) to
 * num/2^k ≥ true σ². */
static fp_status init_from_square(fp_dp_dgauss_t *g, double s, double v, int exact)
{
    if (!(s <= FP_DP_DGAUSS_SIGMA_MAX))
        return FP_FAIL(FP_ERR_RANGE, "dgauss: sigma %.17g above 2^30 (in grid units)", s);
    if (!(s >= 0x1p-12))
        return FP_FAIL(FP_ERR_RANGE, "dgauss: sigma %.17g below 2^-12 (in grid units): the grid is too coarse", s);
    int k;
    if (s >= 1.0) {
        int e;
        (void)frexp(v, &e); /* v < 2^e */
        k = e <= 52 ? 52 - e : 0;
    } else {
        k = 24;
    }
    double w = ldexp(v, k); /* exact scaling; w < 2^52 or an integer ≤ 2^60 */
    double n;
    if (exact && w == floor(w))
        n = w;
    else
        n = ceil(w * (1.0 + 0x1p-50)); /* covers the ≤ 3 ulp error of v and this product's */
    if (!(n <= (double)NUM_MAX))
        return FP_FAIL(FP_ERR_RANGE, "dgauss: sigma %.17g above 2^30 (in grid units)", s);
    return fp_dp_dgauss_init_rational(g, (uint64_t)n, (uint64_t)1 << k);
}

fp_status fp_dp_dgauss_init(fp_dp_dgauss_t *g, double sigma)
{
    if (!g)
        return FP_FAIL(FP_ERR_INVALID, "dgauss: NULL parameters");
    if (!(sigma > 0) || !isfinite(sigma))
        return FP_FAIL(FP_ERR_INVALID, "dgauss: sigma %g must be finite and > 0", sigma);
    double v = sigma * sigma;
    int exact = fma(sigma, sigma, -v) == 0.0;
    return init_from_square(g, sigma, v, exact);
}

fp_status fp_dp_dgauss_init_grid(fp_dp_dgauss_t *g, double sigma, double grid)
{
    if (!g)
        return FP_FAIL(FP_ERR_INVALID, "dgauss: NULL parameters");
    if (!(sigma > 0) || !isfinite(sigma))
        return FP_FAIL(FP_ERR_INVALID, "dgauss: sigma %g must be finite and > 0", sigma);
    if (!(grid > 0) || !isfinite(grid))
        return FP_FAIL(FP_ERR_INVALID, "dgauss: grid %g must be finite and > 0", grid);
    double s = sigma / grid;
    if (!isfinite(s))
        return FP_FAIL(FP_ERR_RANGE, "dgauss: sigma/grid = %g/%g overflows", sigma, grid);
    double v = s * s;
    int exact = fma(s, grid, -sigma) == 0.0 && fma(s, s, -v) == 0.0;
    return init_from_square(g, s, v, exact);
}

double fp_dp_dgauss_sigma2(const fp_dp_dgauss_t *g)
{
    return g && g->den ? (double)g->num / (double)g->den : 0.0;
}

/* ---- sampling (CKS Algorithms 2 and 3) ---- */

/* The table sampler (noise.h). A proposal takes one keystream word x: its column (top 11 bits),
 * its sign (bit 52), its offset in the bin (the low log2w ≤ 25 bits) and, in between, the top bits
 * of two uniforms: U, 128 bits, that decides the column against its 128-bit threshold, and V, that
 * decides the first in-bin Bernoulli trial. Those prefixes decide unless they meet their threshold
 * exactly (a tie, probability about 2^−ka and 2^−kb); then the rest of U, or V's trial, is drawn.
 * Then the exact in-bin acceptance. Two paths decide a proposal: table_fast, branch-light, for
 * the usual case, and table_proposal, the whole algorithm, which table_fast hands everything else
 * to with the same word; fp_dp_dgauss_table_selfcheck tests that they agree wherever table_fast
 * decides (and that the AVX-512 path agrees with table_fast). */
enum { TABLE_ACCEPT, TABLE_REJECT, TABLE_SLOW };

/* The widths of x's two prefixes: k = 52 − log2w ≥ 27 bits between the sign and the offset, the
 * upper ka for U, the lower kb for V (both ≥ 13). */
static inline unsigned table_kb(unsigned lw) { return (52 - lw) / 2; }
static inline unsigned table_ka(unsigned lw) { return 52 - lw - table_kb(lw); }

/* x's fields. b, lo, y are those of the column's own bin unless U's prefix says otherwise
 * (b = alias[c]); after a tie table_proposal decides b itself. */
typedef struct {
    unsigned c;             /* column, the top 11 bits (FP_DP_DGAUSS_BINS = 2048) */
    int tie;                /* U's prefix equals the threshold's */
    int neg;                /* sign, bit 52 */
    uint64_t vb;            /* V's prefix, kb bits */
    uint64_t off, b, lo, y; /* offset in the bin, bin, its low end, |z| = lo + off */
} table_word_t;

static inline void table_decode(const fp_dp_dgauss_t *p, uint64_t x, table_word_t *d)
{
    const fp_dp_dgauss_table_t *t = &p->table;
    const unsigned lw = t->log2w, ka = table_ka(lw), kb = table_kb(lw);
    d->c = (unsigned)(x >> 53);
    const uint64_t ua = (x >> (lw + kb)) & (((uint64_t)1 << ka) - 1), t_top = t->thr_hi[d->c] >> (64 - ka);
    d->tie = ua == t_top;
    d->b = ua < t_top ? d->c : t->alias[d->c];
    d->neg = (int)((x >> 52) & 1);
    d->vb = (x >> lw) & (((uint64_t)1 << kb) - 1);
    d->off = x & (((uint64_t)1 << lw) - 1);
    d->lo = d->b << lw;
    d->y = d->lo + d->off;
}

/* γ's numerator for the proposal: exp(−(y² − lo²)/(2σ²)) = exp(−off·(2lo + off)·den / (2·num));
 * off < 2^lw and 2lo + off < 2^(lw+12) with lw ≤ 25: the first product fits in 64 bits. */
static inline u128 table_gamma_num(const fp_dp_dgauss_t *p, const table_word_t *d)
{
    return (u128)(d->off * (2 * d->lo + d->off)) * p->den;
}

/* The first trial, Bernoulli(N/n) with N < n = acc_den, is V < N/n for V uniform on [0, 1): its
 * prefix vb (kb bits) decides it unless vb = ⌊N·2^kb / n⌋. vb·n > N·2^kb: V > N/n, the trial is 0;
 * (vb + 1)·n ≤ N·2^kb: 1. N·2^kb < 2^85, vb·n < 2^86. */
static inline int table_first_trial_0(uint64_t vb, u128 N, unsigned kb, uint64_t n)
{
    return (u128)vb * n > N << kb;
}

/* The usual case without a struct: this runs for every lane of a group the vector path hands
 * back, and decoding through table_word_t measured 3% slower overall. */
static inline int table_fast(const fp_dp_dgauss_t *p, uint64_t x, int64_t *z)
{
    const fp_dp_dgauss_table_t *t = &p->table;
    const unsigned lw = t->log2w, ka = table_ka(lw), kb = table_kb(lw);
    const unsigned c = (unsigned)(x >> 53);
    const uint64_t ua = (x >> (lw + kb)) & (((uint64_t)1 << ka) - 1), t_top = t->thr_hi[c] >> (64 - ka);
    const uint64_t b = ua < t_top ? c : t->alias[c];
    const uint64_t neg = (x >> 52) & 1, off = x & (((uint64_t)1 << lw) - 1), lo = b << lw, y = lo + off;
    const uint64_t vb = (x >> lw) & (((uint64_t)1 << kb) - 1);
    const u128 N = (u128)(off * (2 * lo + off)) * p->den; /* as table_gamma_num */
    /* slow: a threshold tie; γ ≥ 1; the first trial not surely 0 */
    if (__builtin_expect(ua == t_top || N >= p->acc_den || !table_first_trial_0(vb, N, kb, p->acc_den), 0))
        return TABLE_SLOW;
    *z = neg ? -(int64_t)y : (int64_t)y;
    return neg && y == 0 ? TABLE_REJECT : TABLE_ACCEPT;
}

/* One proposal from x, exactly; further words from s. *acc = 1 with *z: accepted. */
static fp_status table_proposal(const fp_dp_dgauss_t *p, src_t *s, uint64_t x, int64_t *z, int *acc)
{
    const fp_dp_dgauss_table_t *t = &p->table;
    const unsigned ka = table_ka(t->log2w), kb = table_kb(t->log2w);
    *acc = 0;
    table_word_t d;
    table_decode(p, x, &d);
    if (d.tie) {
        uint64_t h, l;
        TRY(src_u64(s, &h));
        TRY(src_u64(s, &l));
        const u128 t_rest = (((u128)t->thr_hi[d.c] << 64 | t->thr_lo[d.c]) << ka) >> ka; /* T's low 128 − ka */
        const u128 u_rest = ((u128)h << 64 | l) >> ka;                                   /* 128 − ka uniform bits */
        d.b = u_rest < t_rest ? d.c : t->alias[d.c];
        d.lo = d.b << t->log2w;
        d.y = d.lo + d.off;
    }
    if (d.neg && d.y == 0)
        return FP_OK;
    const u128 N = table_gamma_num(p, &d);
    int a = 1;
    if (N >= p->acc_den) { /* γ ≥ 1: the last bins' far ends only */
        TRY(bern_exp_wide(s, N, p->acc_den, &a));
    } else if (N) {
        /* Algorithm 1's first trial, Bernoulli(γ) with γ = N/n, from V's prefix (see
         * table_first_trial_0); on its tie, vb = ⌊N·2^kb / n⌋, the trial is 1 with probability
         * r/n, r = N·2^kb − vb·n < n: P(1) = (vb + r/n) / 2^kb = N/n exactly. A 0 (the usual case,
         * γ < 0.05 on average) accepts at once, a 1 continues the trials from k = 2. */
        const uint64_t n = p->acc_den;
        const u128 L = N << kb, Vn = (u128)d.vb * n;
        int trial = 0;
        if (Vn > L) {
            trial = 0;
        } else if (Vn + n <= L) {
            trial = 1;
        } else {
            uint64_t u;
            TRY(src_below(s, n, &u));
            trial = (u128)u < L - Vn;
        }
        if (trial)
            TRY(bern_exp_le1_from(s, (uint64_t)N, n, 2, &a));
    }
    if (a) {
        *z = d.neg ? -(int64_t)d.y : (int64_t)d.y;
        *acc = 1;
    }
    return FP_OK;
}

#define TABLE_BLOCK 64 /* proposals per block: 64 keystream words (512 bytes) fetched at once */

#define TABLE_GROUP 8 /* proposals decided together (one AVX-512 vector of 64-bit lanes) */

/* One group of proposals, in order, on the portable path. Returns the samples written to z (at
 * most `room`: proposals past it are left unused). */
static fp_status table_group(const fp_dp_dgauss_t *p, src_t *s, const uint64_t *x, int64_t *z, size_t room,
                             size_t *written)
{
    size_t i = 0;
    for (int j = 0; j < TABLE_GROUP && i < room; j++) {
        const int r = table_fast(p, x[j], &z[i]);
        if (__builtin_expect(r == TABLE_SLOW, 0)) {
            int acc;
            TRY(table_proposal(p, s, x[j], &z[i], &acc));
            i += (size_t)acc;
        } else {
            i += r == TABLE_ACCEPT;
        }
    }
    *written = i;
    return FP_OK;
}

#if NOISE_X86
static int simd_level = -1; /* -1: not decided yet; fp_dp_noise_set_simd */

/* The best vector path this CPU runs (FP_DP_SIMD_*). */
static int simd_best(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
        return FP_DP_SIMD_AVX512;
    return __builtin_cpu_supports("avx2") ? FP_DP_SIMD_AVX2 : FP_DP_SIMD_PORTABLE;
}

/* table_fast on 8 proposals at once, for σ² with a power-of-two denominator 2^e (then
 * N = off·(2lo + off)·2^e, and N ≥ acc_den exactly when the product reaches ad_shr =
 * ⌈acc_den / 2^e⌉). Returns -1, writing nothing, when any lane needs the exact path (the group
 * then goes through table_group, in order, for the same outputs); else the accepted samples,
 * written to z in lane order. */
__attribute__((target("avx512f,avx512dq"))) static int table_group8_avx512(const fp_dp_dgauss_t *p, const uint64_t *xs,
                                                                           unsigned e, uint64_t ad_shr, int64_t *z)
{
    const fp_dp_dgauss_table_t *t = &p->table;
    const unsigned lw = t->log2w, ka = table_ka(lw), kb = table_kb(lw);
    const __m512i x = _mm512_loadu_si512((const void *)xs);
    const __m512i c = _mm512_srli_epi64(x, 53);
    const __m512i ua = _mm512_and_si512(_mm512_srl_epi64(x, _mm_cvtsi32_si128((int)(lw + kb))),
                                        _mm512_set1_epi64((long long)(((uint64_t)1 << ka) - 1)));
    const __m512i t_top = _mm512_srl_epi64(_mm512_i64gather_epi64(c, (const void *)t->thr_hi, 8),
                                           _mm_cvtsi32_si128((int)(64 - ka)));
    const __mmask8 tie = _mm512_cmpeq_epu64_mask(ua, t_top), keep = _mm512_cmplt_epu64_mask(ua, t_top);
    /* alias[c]: 32-bit loads at alias + 2c (the last one reads 2 bytes of log2w, inside the struct) */
    _Static_assert(offsetof(fp_dp_dgauss_table_t, log2w) >= offsetof(fp_dp_dgauss_table_t, alias) + sizeof t->alias,
                   "log2w must follow alias[] in the table");
    const __m512i al = _mm512_and_si512(_mm512_cvtepu32_epi64(_mm512_i64gather_epi32(c, (const void *)t->alias, 2)),
                                        _mm512_set1_epi64(0xffff));
    const __m512i b = _mm512_mask_blend_epi64(keep, al, c);
    const __m512i off = _mm512_and_si512(x, _mm512_set1_epi64((long long)(((uint64_t)1 << lw) - 1)));
    const __m512i lo = _mm512_sll_epi64(b, _mm_cvtsi32_si128((int)lw)), y = _mm512_add_epi64(lo, off);
    const __m512i prod = _mm512_mullo_epi64(off, _mm512_add_epi64(_mm512_add_epi64(lo, lo), off));
    const __mmask8 big = _mm512_cmpge_epu64_mask(prod, _mm512_set1_epi64((long long)ad_shr));
    const __m512i N = _mm512_sll_epi64(prod, _mm_cvtsi32_si128((int)e)); /* exact where !big: < acc_den */
    /* the first trial surely 0: vb·n > N·2^kb (n = acc_den), in 64-bit lanes without carries:
     * with n = q·2^kb + r, vb·n = (vb·q + f)·2^kb + ρ where vb·r = f·2^kb + ρ, ρ < 2^kb, so the
     * test is S = vb·q + f > N, or S = N and ρ > 0. vb·q < n < 2^62, vb·r < 2^(2kb) ≤ 2^46. */
    const __m512i vb = _mm512_and_si512(_mm512_srl_epi64(x, _mm_cvtsi32_si128((int)lw)),
                                        _mm512_set1_epi64((long long)(((uint64_t)1 << kb) - 1)));
    const __m512i vq = _mm512_mullo_epi64(vb, _mm512_set1_epi64((long long)(p->acc_den >> kb)));
    const __m512i vr = _mm512_mullo_epi64(vb, _mm512_set1_epi64((long long)(p->acc_den & (((uint64_t)1 << kb) - 1))));
    const __m512i S = _mm512_add_epi64(vq, _mm512_srl_epi64(vr, _mm_cvtsi32_si128((int)kb)));
    const __m512i rho = _mm512_and_si512(vr, _mm512_set1_epi64((long long)(((uint64_t)1 << kb) - 1)));
    const __mmask8 trial0 = _mm512_cmpgt_epu64_mask(S, N) |
                            (_mm512_cmpeq_epu64_mask(S, N) & _mm512_test_epi64_mask(rho, rho));
    const __mmask8 slow = tie | big | (__mmask8)~trial0;
    if (slow)
        return -1;
    const __m512i zero = _mm512_setzero_si512();
    const __mmask8 neg = _mm512_test_epi64_mask(x, _mm512_set1_epi64((long long)((uint64_t)1 << 52)));
    const __mmask8 acc = (__mmask8)~(neg & _mm512_cmpeq_epu64_mask(y, zero));
    _mm512_mask_compressstoreu_epi64((void *)z, acc, _mm512_mask_sub_epi64(y, neg, zero, y));
    return __builtin_popcount(acc);
}

/* table_fast on 4 proposals at once with AVX2 (no 64-bit multiply, unsigned compare or compress
 * there): the same decisions as table_group8_avx512, from 32-bit products, with signed compares
 * where every operand is below 2^63; a group with a refused −0 also goes to the portable path.
 * Returns -1, writing nothing, or 4 with the 4 samples in z. */
__attribute__((target("avx2"))) static int table_group4_avx2(const fp_dp_dgauss_t *p, const uint64_t *xs, unsigned e,
                                                             uint64_t ad_shr, int64_t *z)
{
    const fp_dp_dgauss_table_t *t = &p->table;
    const unsigned lw = t->log2w, ka = table_ka(lw), kb = table_kb(lw);
    const __m128i s_lw = _mm_cvtsi32_si128((int)lw), s_kb = _mm_cvtsi32_si128((int)kb);
    const __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)xs);
    const __m256i c = _mm256_srli_epi64(x, 53);
    const __m256i ua = _mm256_and_si256(_mm256_srl_epi64(x, _mm_cvtsi32_si128((int)(lw + kb))),
                                        _mm256_set1_epi64x((long long)(((uint64_t)1 << ka) - 1)));
    const __m256i t_top = _mm256_srl_epi64(_mm256_i64gather_epi64((const long long *)(const void *)t->thr_hi, c, 8),
                                           _mm_cvtsi32_si128((int)(64 - ka)));
    /* ua, t_top < 2^ka ≤ 2^33: signed compares are exact */
    const __m256i tie = _mm256_cmpeq_epi64(ua, t_top), keep = _mm256_cmpgt_epi64(t_top, ua);
    const __m256i al = _mm256_and_si256(
        _mm256_cvtepu32_epi64(_mm256_i64gather_epi32((const int *)(const void *)t->alias, c, 2)),
        _mm256_set1_epi64x(0xffff));
    const __m256i b = _mm256_blendv_epi8(al, c, keep);
    const __m256i off = _mm256_and_si256(x, _mm256_set1_epi64x((long long)(((uint64_t)1 << lw) - 1)));
    const __m256i lo = _mm256_sll_epi64(b, s_lw), y = _mm256_add_epi64(lo, off);
    /* prod = off·(2lo + off): off < 2^25 fits 32 bits, a = 2lo + off < 2^37 in two halves */
    const __m256i a = _mm256_add_epi64(_mm256_add_epi64(lo, lo), off);
    const __m256i prod = _mm256_add_epi64(_mm256_mul_epu32(off, a),
                                          _mm256_slli_epi64(_mm256_mul_epu32(off, _mm256_srli_epi64(a, 32)), 32));
    /* prod, ad_shr < 2^62 */
    const __m256i big = _mm256_cmpgt_epi64(prod, _mm256_set1_epi64x((long long)ad_shr - 1));
    const __m256i N = _mm256_sll_epi64(prod, _mm_cvtsi32_si128((int)e)); /* exact where !big: < acc_den */
    /* the first trial surely 0, as in table_group8_avx512: S = vb·q + f > N, or = N with ρ > 0;
     * vb < 2^23 and r < 2^23 fit 32 bits, q < 2^55 in two halves */
    const uint64_t q = p->acc_den >> kb, r = p->acc_den & (((uint64_t)1 << kb) - 1);
    const __m256i vb = _mm256_and_si256(_mm256_srl_epi64(x, s_lw),
                                        _mm256_set1_epi64x((long long)(((uint64_t)1 << kb) - 1)));
    const __m256i vq = _mm256_add_epi64(
        _mm256_mul_epu32(vb, _mm256_set1_epi64x((long long)(q & 0xffffffffu))),
        _mm256_slli_epi64(_mm256_mul_epu32(vb, _mm256_set1_epi64x((long long)(q >> 32))), 32));
    const __m256i vr = _mm256_mul_epu32(vb, _mm256_set1_epi64x((long long)r));
    const __m256i S = _mm256_add_epi64(vq, _mm256_srl_epi64(vr, s_kb));
    const __m256i rho = _mm256_and_si256(vr, _mm256_set1_epi64x((long long)(((uint64_t)1 << kb) - 1)));
    const __m256i zero = _mm256_setzero_si256();
    const __m256i trial0 = _mm256_or_si256(
        _mm256_cmpgt_epi64(S, N), _mm256_andnot_si256(_mm256_cmpeq_epi64(rho, zero), _mm256_cmpeq_epi64(S, N)));
    const __m256i neg = _mm256_cmpeq_epi64(_mm256_and_si256(x, _mm256_set1_epi64x((long long)((uint64_t)1 << 52))),
                                           _mm256_set1_epi64x((long long)((uint64_t)1 << 52)));
    const __m256i rej = _mm256_and_si256(neg, _mm256_cmpeq_epi64(y, zero));
    const __m256i slow = _mm256_or_si256(_mm256_or_si256(tie, big),
                                         _mm256_or_si256(rej, _mm256_xor_si256(trial0, _mm256_set1_epi64x(-1))));
    if (!_mm256_testz_si256(slow, slow))
        return -1;
    _mm256_storeu_si256((__m256i *)(void *)z, _mm256_sub_epi64(_mm256_xor_si256(y, neg), neg));
    return 4;
}
#endif

/* Whether σ² is dyadic (den = 2^e), which the vector paths need, and their e and ad_shr. */
static int table_dyadic(const fp_dp_dgauss_t *p, unsigned *e_out, uint64_t *ad_shr)
{
    unsigned e = 0;
    while (e < 63 && ((p->den >> e) & 1) == 0)
        e++;
    *e_out = e;
    *ad_shr = (uint64_t)(((u128)p->acc_den + ((u128)1 << e) - 1) >> e);
    return p->den == (uint64_t)1 << e;
}

/* The path that serves p (FP_DP_SIMD_*): the one set, where σ² is dyadic; else the portable one. */
static int table_vec_params(const fp_dp_dgauss_t *p, unsigned *e_out, uint64_t *ad_shr)
{
    const int dyadic = table_dyadic(p, e_out, ad_shr);
#if NOISE_X86
    int level = __atomic_load_n(&simd_level, __ATOMIC_RELAXED);
    if (level < 0) { /* every thread computes the same value */
        level = simd_best();
        __atomic_store_n(&simd_level, level, __ATOMIC_RELAXED);
    }
    return dyadic ? level : FP_DP_SIMD_PORTABLE;
#else
    (void)dyadic;
    return FP_DP_SIMD_PORTABLE;
#endif
}

int fp_dp_noise_set_simd(int level)
{
#if NOISE_X86
    const int best = simd_best();
    const int v = level <= FP_DP_SIMD_PORTABLE ? FP_DP_SIMD_PORTABLE : level < best ? level : best;
    __atomic_store_n(&simd_level, v, __ATOMIC_RELAXED);
    return v;
#else
    (void)level;
    return FP_DP_SIMD_PORTABLE;
#endif
}

/* n samples: blocks of proposals whose words are fetched at once, decided in order by groups of
 * 8 (AVX-512) or one by one; a proposal that the fast path cannot decide goes to table_proposal
 * with the same word (further words drawn after the block). Unused proposals of the last block
 * are erased with it. */
static fp_status dgauss_table_n(const fp_dp_dgauss_t *p, src_t *s, int64_t *z, size_t n)
{
    uint64_t w[TABLE_BLOCK];
    fp_status st = FP_OK;
    size_t i = 0;
    unsigned e;
    uint64_t ad_shr;
    const int vec = table_vec_params(p, &e, &ad_shr);
    while (i < n && st == FP_OK) {
        /* straight from the generator: s's buffer serves only the exact path's further draws */
        if ((st = fp_csprng_bytes(s->r, w, sizeof w)) != FP_OK)
            break;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (int j = 0; j < TABLE_BLOCK; j++)
            w[j] = __builtin_bswap64(w[j]); /* little-endian words, as src_u64 reads them */
#endif
        for (int g = 0; g < TABLE_BLOCK && i < n && st == FP_OK; g += TABLE_GROUP) {
            const uint64_t *x = w + g;
#if NOISE_X86
            if (vec == FP_DP_SIMD_AVX512 && n - i >= TABLE_GROUP) {
                const int r = table_group8_avx512(p, x, e, ad_shr, z + i);
                if (r >= 0) {
                    i += (size_t)r;
                    continue;
                }
            } else if (vec == FP_DP_SIMD_AVX2 && n - i >= TABLE_GROUP) {
                /* both halves or neither: a failed second half leaves the group to the portable
                 * path, which rewrites the first half's samples identically */
                if (table_group4_avx2(p, x, e, ad_shr, z + i) == 4 &&
                    table_group4_avx2(p, x + 4, e, ad_shr, z + i + 4) == 4) {
                    i += TABLE_GROUP;
                    continue;
                }
            }
#else
            (void)vec;
#endif
            size_t got = 0;
            st = table_group(p, s, x, z + i, n - i, &got);
            i += got;
        }
    }
    OPENSSL_cleanse(w, sizeof w);
    return st;
}

/* x with `width` bits at `shift` replaced by v. */
static uint64_t set_field(uint64_t x, unsigned shift, unsigned width, uint64_t v)
{
    const uint64_t mask = (((uint64_t)1 << width) - 1) << shift;
    return (x & ~mask) | ((v << shift) & mask);
}

/* The selfcheck's word for lane j of a group in `mode` (0: random; 1: V's prefix just past the
 * first trial's boundary on every lane; 2, 3: so, but lane `special` on the tie, or just before;
 * 4: lane `special` on U's tie; 5: U's prefix just either side of the column's threshold). */
static uint64_t selfcheck_word(const fp_dp_dgauss_t *g, uint64_t x, int mode, int special)
{
    const fp_dp_dgauss_table_t *t = &g->table;
    const unsigned lw = t->log2w, ka = table_ka(lw), kb = table_kb(lw);
    const unsigned c = (unsigned)(x >> 53);
    const uint64_t t_top = t->thr_hi[c] >> (64 - ka), amax = ((uint64_t)1 << ka) - 1;
    if (mode == 4 && special)
        x = set_field(x, lw + kb, ka, t_top);
    if (mode == 5) {
        const uint64_t ua = (x & 1) ? (t_top < amax ? t_top + 1 : t_top - 1) : (t_top > 0 ? t_top - 1 : t_top + 1);
        x = set_field(x, lw + kb, ka, ua);
    }
    if (mode == 1 || mode == 2 || mode == 3 || mode == 5) {
        table_word_t d;
        table_decode(g, x, &d);
        const u128 N = table_gamma_num(g, &d);
        if (!d.tie && N > 0 && N < g->acc_den) {
            const uint64_t G = (uint64_t)((N << kb) / g->acc_den); /* < 2^kb: the tie's prefix */
            uint64_t v = G + 1;
            if (special && mode == 2)
                v = G;
            else if (special && mode == 3 && G > 0)
                v = G - 1;
            if (v < ((uint64_t)1 << kb))
                x = set_field(x, lw, kb, v);
        }
    }
    return x;
}

fp_status fp_dp_dgauss_table_selfcheck(const fp_dp_dgauss_t *g, fp_csprng_t *r, size_t n, size_t *n_fast)
{
    if (!g || !r || !g->table_on)
        return FP_FAIL(FP_ERR_INVALID, "table_selfcheck: NULL argument or no table");
    src_t s;
    src_init(&s, r);
    fp_status st = FP_OK;
    size_t fast = 0;
    unsigned e;
    uint64_t ad_shr;
    /* every vector path the CPU has, whichever is set */
#if NOISE_X86
    const int vec = table_dyadic(g, &e, &ad_shr) ? simd_best() : FP_DP_SIMD_PORTABLE;
#else
    const int vec = FP_DP_SIMD_PORTABLE;
    (void)table_dyadic(g, &e, &ad_shr);
#endif
    for (size_t i0 = 0, grp = 0; i0 < n && st == FP_OK; i0 += TABLE_GROUP, grp++) {
        const int mode = (int)(grp % 6), special = (int)(grp / 6 % TABLE_GROUP);
        uint64_t xs[TABLE_GROUP];
        int64_t zf[TABLE_GROUP], zacc[TABLE_GROUP];
        int rf[TABLE_GROUP], any_slow = 0, nacc = 0;
        for (int j = 0; j < TABLE_GROUP && st == FP_OK; j++) {
            st = src_u64(&s, &xs[j]);
            xs[j] = selfcheck_word(g, xs[j], mode, j == special);
        }
        for (int j = 0; j < TABLE_GROUP && st == FP_OK; j++) {
            const uint64_t x = xs[j];
            rf[j] = table_fast(g, x, &zf[j]);
            if (rf[j] == TABLE_SLOW) {
                any_slow = 1;
                continue;
            }
            if (rf[j] == TABLE_ACCEPT)
                zacc[nacc++] = zf[j];
            if (i0 + (size_t)j < n)
                fast++;
            const unsigned pos = s.pos, nbits = s.nbits;
            int acc;
            int64_t zs = 0;
            if ((st = table_proposal(g, &s, x, &zs, &acc)) != FP_OK)
                break;
            if (s.pos != pos || s.nbits != nbits)
                st = FP_FAIL(FP_ERR_INTERNAL, "table_selfcheck: word %zu (%016llx): the exact path drew words "
                             "where the fast one decided", i0 + (size_t)j, (unsigned long long)x);
            else if (acc != (rf[j] == TABLE_ACCEPT) || (acc && zs != zf[j]))
                st = FP_FAIL(FP_ERR_INTERNAL, "table_selfcheck: word %zu (%016llx): fast %s %lld, exact %s %lld",
                             i0 + (size_t)j, (unsigned long long)x, rf[j] == TABLE_ACCEPT ? "accepts" : "rejects",
                             (long long)zf[j], acc ? "accepts" : "rejects", (long long)zs);
        }
#if NOISE_X86
        if (st == FP_OK && vec >= FP_DP_SIMD_AVX512) { /* the 8 lanes decide as table_fast does, lane by lane */
            int64_t zv[TABLE_GROUP];
            const int rv = table_group8_avx512(g, xs, e, ad_shr, zv);
            if (any_slow ? rv != -1 : rv != nacc || memcmp(zv, zacc, (size_t)nacc * sizeof *zv) != 0)
                st = FP_FAIL(FP_ERR_INTERNAL, "table_selfcheck: group at word %zu (mode %d): the AVX-512 path "
                             "returned %d, the portable one %s %d samples", i0, mode, rv,
                             any_slow ? "needs the exact path, not" : "decided", any_slow ? -1 : nacc);
        }
        for (int h = 0; st == FP_OK && vec >= FP_DP_SIMD_AVX2 && h < TABLE_GROUP; h += 4) {
            /* each 4-lane half: all 4 accepted by table_fast, or handed back */
            int all = 1;
            for (int j = h; j < h + 4; j++)
                all &= rf[j] == TABLE_ACCEPT;
            int64_t zv[4];
            const int rv = table_group4_avx2(g, xs + h, e, ad_shr, zv);
            if (all ? rv != 4 || memcmp(zv, zf + h, sizeof zv) != 0 : rv != -1)
                st = FP_FAIL(FP_ERR_INTERNAL, "table_selfcheck: half group at word %zu (mode %d): the AVX2 path "
                             "returned %d, the portable one %s", i0 + (size_t)h, mode, rv,
                             all ? "accepts all 4" : "does not accept all 4");
        }
#else
        (void)vec, (void)e, (void)ad_shr, (void)any_slow, (void)nacc, (void)zacc;
#endif
    }
    src_done(&s);
    if (n_fast)
        *n_fast = fast;
    return st;
}

/* One sample by CKS (the table sampler, when on, goes through dgauss_table_n instead). */
static fp_status dgauss_one(const fp_dp_dgauss_t *p, src_t *s, int64_t *z)
{
    for (;;) {
        /* Discrete Laplace proposal of scale t/sc (CKS Algorithm 2). */
        const uint64_t t = p->lap_t, sc = p->lap_s;
        uint64_t u = 0;
        if (t > 1) {
            TRY(src_below(s, t, &u));
            int d;
            TRY(bern_exp_le1(s, u, t, &d));
            if (!d)
                continue;
        }
        uint64_t v = 0;
        int a, restart = 0;
        for (;;) {
            TRY(bern_exp1(s, &a));
            if (!a)
                break;
            if (++v > p->vmax) {
                restart = 1;
                break;
            }
        }
        if (restart)
            continue; /* |Y| would exceed tmax: truncation */
        uint64_t y;
        if (v <= p->vfit) {
            uint64_t x = u + t * v;
            y = sc == 1 ? x : x / sc;
        } else {
            y = (uint64_t)(((u128)t * v + u) / sc);
        }
        if (y > p->tmax)
            continue;
        int neg;
        TRY(src_bit(s, &neg));
        if (neg && y == 0)
            continue;
        /* Acceptance with probability exp(−(|y| − c)²/(2σ²)), c the proposal's centre. */
        u128 N;
        if (!p->small) {
            /* c = m: γ = (y − m)²·den / (2·num). y ≤ tmax ≤ 2^41, den ≤ 2^60 / σ²: N ≤ 2^24·num. */
            uint64_t w = y >= p->m ? y - p->m : p->m - y;
            if (w < ((uint64_t)1 << 32) && w * w <= UINT64_MAX / p->den)
                N = (u128)(w * w * p->den);
            else
                N = (u128)w * w * p->den;
        } else {
            /* c = σ² = num/den: γ = (y·den − num)² / (2·num·den). y·den ≤ 2^41. */
            uint64_t yd = y * p->den;
            uint64_t a2 = yd >= p->num ? yd - p->num : p->num - yd;
            N = (u128)a2 * a2;
        }
        int c;
        TRY(bern_exp_wide(s, N, p->acc_den, &c));
        if (!c)
            continue;
        *z = neg ? -(int64_t)y : (int64_t)y;
        return FP_OK;
    }
}

static fp_status check_params(const fp_dp_dgauss_t *g)
{
    if (!g || g->den == 0 || g->lap_t == 0 || g->lap_s == 0 || g->acc_den == 0)
        return FP_FAIL(FP_ERR_INVALID, "dgauss: parameters not initialised");
    return FP_OK;
}

fp_status fp_dp_dgauss_sample_n(const fp_dp_dgauss_t *g, fp_csprng_t *r, int64_t *z, size_t n)
{
    TRY(check_params(g));
    if (!r || (!z && n))
        return FP_FAIL(FP_ERR_INVALID, "dgauss: NULL generator or output");
    src_t s;
    src_init(&s, r);
    fp_status st = FP_OK;
    if (g->table_on)
        st = dgauss_table_n(g, &s, z, n);
    else
        for (size_t i = 0; i < n && st == FP_OK; i++)
            st = dgauss_one(g, &s, &z[i]);
    src_done(&s);
    return st;
}

fp_status fp_dp_dgauss_sample(const fp_dp_dgauss_t *g, fp_csprng_t *r, int64_t *z)
{
    return fp_dp_dgauss_sample_n(g, r, z, 1);
}

/* ---- continuous Gaussian (comparison only) ---- */

static const double TWO_PI = 6.283185307179586476925286766559;

fp_status fp_dp_gauss_sample_n(fp_csprng_t *r, double sigma, double *out, size_t n)
{
    if (!r || (!out && n))
        return FP_FAIL(FP_ERR_INVALID, "gauss: NULL generator or output");
    if (!(sigma >= 0) || !isfinite(sigma))
        return FP_FAIL(FP_ERR_INVALID, "gauss: sigma %g must be finite and >= 0", sigma);
    for (size_t i = 0; i < n; i += 2) {
        uint64_t b[2];
        TRY(fp_csprng_bytes(r, b, sizeof b));
        double u1 = (double)((b[0] >> 11) + 1) * 0x1.0p-53; /* (0, 1]: log never sees 0 */
        double u2 = (double)(b[1] >> 11) * 0x1.0p-53;
        double rad = sigma * sqrt(-2.0 * log(u1));
        out[i] = rad * cos(TWO_PI * u2);
        if (i + 1 < n)
            out[i + 1] = rad * sin(TWO_PI * u2);
    }
    return FP_OK;
}

fp_status fp_dp_add_noise_continuous(float *x, size_t n, double sigma, fp_csprng_t *r)
{
    if (!x && n)
        return FP_FAIL(FP_ERR_INVALID, "add_noise_continuous: x is NULL");
    double buf[512];
    for (size_t i = 0; i < n; i += 512) {
        size_t m = n - i < 512 ? n - i : 512;
        TRY(fp_dp_gauss_sample_n(r, sigma, buf, m));
        for (size_t j = 0; j < m; j++)
            x[i + j] = (float)((double)x[i + j] + buf[j]);
    }
    return FP_OK;
}

/* ---- grid noise on a vector ---- */

double fp_dp_grid_sensitivity(double l2_bound, size_t n, double grid)
{
    return l2_bound + grid * sqrt((double)n);
}

/* xs[j] ← grid·(round(xs[j]/grid) + z[j]), round half away from zero. The caller has checked
 * |xs[j]/grid| ≤ 2^52, so the int64 conversion is trunc(v) exactly, v − t is exact, and
 * |k + z| < 2^53 converts to double exactly. In integers, and with the half-step a select, the
 * loop vectorises (trunc() would not, under GCC's default -ftrapping-math). round_add_pow2: grid
 * a power of two, so x / grid is the exact x·(1/grid). */
NOISE_VEC static void round_add_pow2(float *restrict xs, const int64_t *restrict z, size_t m, double grid, double inv,
                                     float scale)
{
    for (size_t j = 0; j < m; j++) {
        const double v = (double)xs[j] * inv;
        const int64_t t = (int64_t)v;
        const int64_t h = fabs(v - (double)t) >= 0.5 ? (v < 0 ? -1 : 1) : 0;
        xs[j] = (float)(grid * (double)(t + h + z[j])) * scale;
    }
}

NOISE_VEC static void round_add(float *restrict xs, const int64_t *restrict z, size_t m, double grid, float scale)
{
    for (size_t j = 0; j < m; j++) {
        const double v = (double)xs[j] / grid;
        const int64_t t = (int64_t)v;
        const int64_t h = fabs(v - (double)t) >= 0.5 ? (v < 0 ? -1 : 1) : 0;
        xs[j] = (float)(grid * (double)(t + h + z[j])) * scale;
    }
}

/* The index of the first x[i] that is not finite or has |x[i]| > xmax; n if none. Decided a
 * block at a time without early exits (so the compiler vectorises it), then located. */
NOISE_VEC static size_t first_out_of_range(const float *x, size_t n, double xmax)
{
    enum { BLK = 4096 };
    for (size_t i0 = 0; i0 < n; i0 += BLK) {
        const size_t m = n - i0 < BLK ? n - i0 : BLK;
        int bad = 0;
        for (size_t j = 0; j < m; j++)
            bad |= !(fabs((double)x[i0 + j]) <= xmax); /* NaN compares false */
        if (bad)
            for (size_t j = 0; j < m; j++)
                if (!(fabs((double)x[i0 + j]) <= xmax))
                    return i0 + j;
    }
    return n;
}

/* One chunk: x ← grid·(round(x/grid) + Z). |round(x/grid)| ≤ 2^52 and |Z| ≤ 2^41, so the integer
 * sum is exact in int64 and in double. */
static fp_status noise_chunk(float *x, size_t n, double grid, float scale, const fp_dp_dgauss_t *p, fp_csprng_t *r)
{
    enum { BATCH = 1024 }; /* samples first, then a loop the compiler can vectorise */
    int e;
    const int pow2 = frexp(grid, &e) == 0.5; /* then x / grid is the exact x * (1 / grid) */
    const double inv = 1.0 / grid;
    int64_t z[BATCH];
    src_t s;
    src_init(&s, r);
    fp_status st = FP_OK;
    for (size_t i0 = 0; i0 < n && st == FP_OK; i0 += BATCH) {
        const size_t m = n - i0 < BATCH ? n - i0 : BATCH;
        if (p->table_on)
            st = dgauss_table_n(p, &s, z, m);
        else
            for (size_t j = 0; j < m && st == FP_OK; j++)
                st = dgauss_one(p, &s, &z[j]);
        if (st != FP_OK)
            break;
        if (pow2)
            round_add_pow2(x + i0, z, m, grid, inv, scale);
        else
            round_add(x + i0, z, m, grid, scale);
    }
    OPENSSL_cleanse(z, sizeof z);
    src_done(&s);
    return st;
}

#define WAVE 64 /* chunks forked at a time: bounds the generators alive at once */

fp_status fp_dp_add_noise(float *x, size_t n, double sigma, double grid, fp_csprng_t *r)
{
    return fp_dp_add_noise_scaled(x, n, sigma, grid, 1.0f, r); /* x·1 is x exactly */
}

fp_status fp_dp_add_noise_scaled(float *x, size_t n, double sigma, double grid, float scale, fp_csprng_t *r)
{
    if ((!x && n) || !r)
        return FP_FAIL(FP_ERR_INVALID, "add_noise: NULL vector or generator");
    if (!(sigma >= 0) || !isfinite(sigma))
        return FP_FAIL(FP_ERR_INVALID, "add_noise: sigma %g must be finite and >= 0", sigma);
    if (!(grid > 0) || !isfinite(grid))
        return FP_FAIL(FP_ERR_INVALID, "add_noise: grid %g must be finite and > 0", grid);
    if (!isfinite(scale))
        return FP_FAIL(FP_ERR_INVALID, "add_noise: scale %g must be finite", (double)scale);
    if (sigma == 0) {
        if (scale != 1.0f) {
#pragma omp parallel for schedule(static) if (n > 65536)
            for (size_t i = 0; i < n; i++)
                x[i] *= scale;
        }
        return FP_OK;
    }
    fp_dp_dgauss_t p;
    TRY(fp_dp_dgauss_init_grid(&p, sigma, grid));
    const double xmax = ldexp(grid, 52);
    const size_t i = first_out_of_range(x, n, xmax);
    if (i < n && !isfinite(x[i]))
        return FP_FAIL(FP_ERR_NUMERIC, "add_noise: x[%zu] is %g", i, (double)x[i]);
    if (i < n)
        return FP_FAIL(FP_ERR_RANGE, "add_noise: |x[%zu]| = %g exceeds grid*2^52", i, fabs((double)x[i]));
    size_t nchunks = (n + FP_DP_NOISE_CHUNK - 1) / FP_DP_NOISE_CHUNK;
    fp_status result = FP_OK;
    for (size_t c0 = 0; c0 < nchunks && result == FP_OK; c0 += WAVE) {
        size_t w = nchunks - c0 < WAVE ? nchunks - c0 : WAVE;
        fp_csprng_t *gens[WAVE] = {0};
        fp_status sts[WAVE];
        for (size_t j = 0; j < w && result == FP_OK; j++)
            result = fp_csprng_fork(r, &gens[j]);
        if (result == FP_OK) {
#pragma omp parallel for schedule(dynamic, 1) if (w > 1)
            for (size_t j = 0; j < w; j++) {
                size_t lo = (c0 + j) * FP_DP_NOISE_CHUNK;
                size_t len = n - lo < FP_DP_NOISE_CHUNK ? n - lo : FP_DP_NOISE_CHUNK;
                sts[j] = noise_chunk(x + lo, len, grid, scale, &p, gens[j]);
            }
            for (size_t j = 0; j < w && result == FP_OK; j++)
                if (sts[j] != FP_OK)
                    result = FP_FAIL(sts[j], "add_noise: sampling chunk %zu failed (%s); x is partly noised: discard it",
                                     c0 + j, fp_strerror(sts[j]));
        }
        for (size_t j = 0; j < w; j++)
            fp_csprng_destroy(gens[j]);
    }
    OPENSSL_cleanse(&p, sizeof p);
    return result;
}
