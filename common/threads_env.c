/* threads_env: OpenMP's wait policy, chosen before libgomp reads it (see threads_env.h). */
#define _GNU_SOURCE /* setenv, execv */
#include "common/threads_env.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

fp_status fp_threads_env_init(char **argv)
{
    if (!argv || !argv[0])
        return FP_FAIL(FP_ERR_INVALID, "threads_env: argv is NULL");
    if (nonempty("OMP_WAIT_POLICY") || nonempty("GOMP_SPINCOUNT") || getenv(FP_THREADS_ENV_MARK))
        return FP_OK;
    /* the mark stops the new image (and any child) from re-executing again */
    if (setenv(FP_THREADS_ENV_MARK, "1", 1) != 0 || setenv("GOMP_SPINCOUNT", FP_THREADS_SPINCOUNT, 1) != 0)
        return FP_FAIL(FP_ERR_IO, "threads_env: setenv: %s", strerror(errno));
    fflush(NULL);
    execv("/proc/self/exe", argv);
    int e = errno;
    /* still the old image: libgomp keeps its default; say so in describe() */
    unsetenv("GOMP_SPINCOUNT");
    return FP_FAIL(FP_ERR_IO, "threads_env: re-executing /proc/self/exe to set GOMP_SPINCOUNT=%s: %s",
                   FP_THREADS_SPINCOUNT, strerror(e));
}

const char *fp_threads_env_describe(void)
{
    static char buf[160];
    const char *pol = nonempty("OMP_WAIT_POLICY"), *spin = nonempty("GOMP_SPINCOUNT");
    const int ours = getenv(FP_THREADS_ENV_MARK) != NULL;
    if (spin && ours && !pol && !strcmp(spin, FP_THREADS_SPINCOUNT))
        snprintf(buf, sizeof buf, "GOMP_SPINCOUNT=%s (fedprof's default)", spin);
    else if (pol && spin)
        snprintf(buf, sizeof buf, "OMP_WAIT_POLICY=%.40s GOMP_SPINCOUNT=%.40s (environment)", pol, spin);
    else if (pol)
        snprintf(buf, sizeof buf, "OMP_WAIT_POLICY=%.40s (environment)", pol);
    else if (spin)
        snprintf(buf, sizeof buf, "GOMP_SPINCOUNT=%.40s (environment)", spin);
    else
        snprintf(buf, sizeof buf, "libgomp default");
    return buf;
}
