/* threads_env: how OpenMP's idle worker threads wait, settled before libgomp reads it.
 *
 * fedprof's kernels open many short parallel regions per training step (dozens for the Games
 * model). Between them libgomp's workers either spin or sleep, and both of libgomp's stock
 * choices are bad on some machine (docs/BENCHMARKS.md, "How idle threads wait"):
 *   - default (spin ~300,000 iterations, then sleep): fastest on a quiet machine, but when other
 *     processes keep the cores busy the spinning steals their time slices (erratic: a Games step
 *     took 82-96 ms instead of 13 ms in one probe with two busy processes on two cores);
 *   - OMP_WAIT_POLICY=passive (sleep at once): robust, but every region then waits for a futex
 *     wake-up, which costs 30-80 us on a VM: 2.6x slower Games steps on a quiet machine.
 * A short spin, GOMP_SPINCOUNT=1000, kept the quiet machine's speed (within 3% of the best) and
 * avoided the long spin's worst cases under load (where passive is sometimes better still), so
 * fedprof's programs use it unless the user chose a policy.
 *
 * libgomp reads its environment once, when it is loaded, before main() runs; a program can only
 * change it for itself by re-executing. fp_threads_env_init does that, once, at the top of main:
 * if neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set, it sets GOMP_SPINCOUNT and
 * FP_THREADS_ENV_MARK and execs /proc/self/exe with the same arguments. Children inherit both,
 * so a program started by another fedprof program does not re-execute again. */
#ifndef FEDPROF_COMMON_THREADS_ENV_H
#define FEDPROF_COMMON_THREADS_ENV_H

#include "common/errors.h"

/* The spin count fedprof chooses (iterations before a worker sleeps). */
#define FP_THREADS_SPINCOUNT "1000"
/* Set (to "1") in the environment by fp_threads_env_init when it chose the spin count. */
#define FP_THREADS_ENV_MARK "FEDPROF_THREADS_ENV"

/* Call first in main, before any thread starts, with main's argv. Returns FP_OK without doing
 * anything when the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT, or when FP_THREADS_ENV_MARK is
 * set (already done); otherwise does not return on success (the process image is replaced).
 * Errors (the process keeps libgomp's default policy; safe to go on): FP_ERR_INVALID (argv NULL),
 * FP_ERR_IO (setenv or exec failed, e.g. no /proc). */
fp_status fp_threads_env_init(char **argv);

/* What is in effect, for logs and JSON output, e.g. "GOMP_SPINCOUNT=1000 (fedprof's default)",
 * "OMP_WAIT_POLICY=passive (environment)", "libgomp default". Never NULL; static storage,
 * rewritten by each call (call from one thread). */
const char *fp_threads_env_describe(void);

#endif
