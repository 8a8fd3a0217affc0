/* csprng: the cryptographically secure generator behind every privacy noise sample.
 *
 * A ChaCha20 keystream (OpenSSL EVP_chacha20) with "fast key erasure" (Bernstein 2017): each
 * refill encrypts zeros under the current key with nonce 0 and counter 0, keeps the first 32
 * bytes of block 0 as the next key (the rest of block 0 is discarded) and hands out the
 * FP_CSPRNG_BLOCK bytes of blocks 1 .. FP_CSPRNG_BLOCK/64. A key therefore produces at most 257
 * ChaCha blocks, so the 32-bit block counter can never wrap, and a memory
 * snapshot reveals no output produced before the last refill (backtracking resistance).
 *
 * Production generators are keyed from OpenSSL's RAND_bytes (fp_csprng_create_secure) and mix
 * fresh RAND_bytes into the key every FP_CSPRNG_RESEED_BYTES of output and on
 * fp_csprng_reseed. Test generators are keyed from a fixed 32-byte seed
 * (fp_csprng_create_seeded) and are fully reproducible; they are never reseeded automatically.
 *
 * Output layout: with a seeded generator, byte i of the output stream is a pure function of the
 * seed, whatever mix of fp_csprng_bytes / _u64 / _u32 calls consumed it (u64 and u32 read
 * little-endian, 8 and 4 bytes). fp_csprng_below and fp_csprng_uniform_double consume u64s.
 *
 * Thread-safety: a generator is not thread-safe; give each thread its own (fp_csprng_fork).
 * Every function that can fail returns fp_status and leaves a message (common/errors.h). */
#ifndef FEDPROF_DP_CSPRNG_H
#define FEDPROF_DP_CSPRNG_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"

/* Bytes handed out per refill (one EVP call); the key is replaced at every refill. */
#define FP_CSPRNG_BLOCK 16384
/* A secure generator mixes fresh RAND_bytes into its key after this many output bytes. */
#define FP_CSPRNG_RESEED_BYTES ((uint64_t)1 << 30)
/* Seed length of fp_csprng_create_seeded (a ChaCha20 key). */
#define FP_CSPRNG_SEED_BYTES 32

typedef struct fp_csprng fp_csprng_t;

/* A generator keyed from RAND_bytes. *out is freed with fp_csprng_destroy.
 * Errors: FP_ERR_INVALID (out NULL), FP_ERR_NOMEM, FP_ERR_INTERNAL (OpenSSL failed). */
fp_status fp_csprng_create_secure(fp_csprng_t **out);

/* A reproducible generator keyed from seed[0..31]. For tests and benchmarks only: noise from
 * a known seed gives no privacy. *out is freed with fp_csprng_destroy. */
fp_status fp_csprng_create_seeded(const uint8_t seed[FP_CSPRNG_SEED_BYTES], fp_csprng_t **out);

/* A new independent generator keyed from 32 bytes of parent's output (parent advances); it
 * inherits parent's mode (secure children reseed from RAND_bytes too). Used to give threads
 * or chunks their own stream deterministically. *out is freed with fp_csprng_destroy. */
fp_status fp_csprng_fork(fp_csprng_t *parent, fp_csprng_t **out);

/* Cleanses all key and buffered material and frees g. NULL is a no-op. */
void fp_csprng_destroy(fp_csprng_t *g);

/* 1 if g is keyed from RAND_bytes (directly or through fork), 0 if from a fixed seed. */
int fp_csprng_is_secure(const fp_csprng_t *g);

/* Mixes 32 fresh RAND_bytes into the key of a secure generator (XOR with 32 keystream bytes)
 * and discards the buffered output. FP_ERR_INVALID on a seeded generator: its stream must stay
 * reproducible. */
fp_status fp_csprng_reseed(fp_csprng_t *g);

/* n random bytes into buf (n may be 0; buf may then be NULL). */
fp_status fp_csprng_bytes(fp_csprng_t *g, void *buf, size_t n);

/* 64 / 32 uniform random bits. */
fp_status fp_csprng_u64(fp_csprng_t *g, uint64_t *out);
fp_status fp_csprng_u32(fp_csprng_t *g, uint32_t *out);

/* Uniform integer in [0, n), exactly unbiased (Lemire 2019, multiply and reject); n ≥ 1,
 * else FP_ERR_INVALID. n ≤ 2^32 draws u32s, larger n u64s. */
fp_status fp_csprng_below(fp_csprng_t *g, uint64_t n, uint64_t *out);

/* Uniform double in [0, 1): k / 2^53 with k uniform in [0, 2^53) (the top 53 bits of a u64). */
fp_status fp_csprng_uniform_double(fp_csprng_t *g, double *out);

/* Total output bytes produced so far (for tests and the benchmark). */
uint64_t fp_csprng_bytes_out(const fp_csprng_t *g);

#endif
