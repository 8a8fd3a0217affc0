/* kernels_device: which back-end runs common/kernels.h (CPU always; CUDA when built with it and
 * a GPU is present), and the memory the model's buffers live in. */
#include "common/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef FEDPROF_HAVE_CUDA
#include <dlfcn.h>
#include <unistd.h>

#include "common/kernels_cuda.h"
#endif

/* Process-wide: set once at start-up (fp_k_device_select), read by every kernel call. */
static fp_k_device g_device = FP_K_DEVICE_CPU;

const char *fp_k_device_name(fp_k_device d)
{
    switch (d) {
    case FP_K_DEVICE_AUTO:
        return "auto";
    case FP_K_DEVICE_CPU:
        return "cpu";
    case FP_K_DEVICE_CUDA:
        return "cuda";
    }
    return "?";
}

fp_status fp_k_device_parse(const char *s, fp_k_device *out)
{
    if (!s || !out)
        return FP_FAIL(FP_ERR_INVALID, "device: NULL argument");
    for (int d = FP_K_DEVICE_AUTO; d <= FP_K_DEVICE_CUDA; d++)
        if (strcmp(s, fp_k_device_name((fp_k_device)d)) == 0) {
            *out = (fp_k_device)d;
            return FP_OK;
        }
    return FP_FAIL(FP_ERR_INVALID, "device '%.40s' is not auto, cpu or cuda", s);
}

int fp_k_cuda_built(void)
{
#ifdef FEDPROF_HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

#ifdef FEDPROF_HAVE_CUDA
/* The CUDA module (kernels_cuda.h), loaded once and never unloaded (its memory may be in use). */
static const fp_kcuda_api_t *g_api;

const fp_kcuda_api_t *fp_kcuda(void) { return g_api; }

/* dlopen the module: $FEDPROF_CUDA_MODULE, else next to the running program, else where the build
 * put it. 1, or 0 with the reason in why. */
static int cuda_load(char *why, size_t n)
{
    if (g_api)
        return 1;
    char here[4096] = "";
    ssize_t len = readlink("/proc/self/exe", here, sizeof here - 64);
    if (len > 0) {
        here[len] = '\0';
        char *slash = strrchr(here, '/');
        if (slash)
            strcpy(slash + 1, "libfedprof_cuda.so");
        else
            here[0] = '\0';
    } else {
        here[0] = '\0';
    }
    const char *env = getenv("FEDPROF_CUDA_MODULE");
    const char *paths[3] = {env && env[0] ? env : NULL, here[0] ? here : NULL, FEDPROF_CUDA_MODULE_PATH};
    const char *err = "not found";
    for (int i = 0; i < 3; i++) {
        if (!paths[i] || access(paths[i], R_OK) != 0)
            continue;
        void *h = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            err = dlerror();
            continue;
        }
        fp_kcuda_api_fn f;
        void *sym = dlsym(h, FP_KCUDA_API_SYMBOL);
        memcpy(&f, &sym, sizeof f); /* object to function pointer, as POSIX dlsym intends */
        const fp_kcuda_api_t *api = sym ? f(FP_KCUDA_API_VERSION) : NULL;
        if (!api) {
            snprintf(why, n, "%s: no %s of version %d", paths[i], FP_KCUDA_API_SYMBOL, FP_KCUDA_API_VERSION);
            dlclose(h);
            return 0;
        }
        g_api = api; /* h stays open for the life of the process */
        return 1;
    }
    snprintf(why, n, "the CUDA back-end module libfedprof_cuda.so could not be loaded (%s; set FEDPROF_CUDA_MODULE)",
             err ? err : "?");
    return 0;
}

int fp_k_cuda_module_check(char *why, size_t n) { return cuda_load(why, n); }
#else
int fp_k_cuda_module_check(char *why, size_t n)
{
    snprintf(why, n, "this build has no CUDA back-end");
    return 0;
}
#endif

fp_status fp_k_device_select(fp_k_device want, fp_k_device *got, char *info, size_t n)
{
    char why[256] = "";
    if (want != FP_K_DEVICE_AUTO && want != FP_K_DEVICE_CPU && want != FP_K_DEVICE_CUDA)
        return FP_FAIL(FP_ERR_INVALID, "device: unknown kind %d", (int)want);
    fp_k_device d = FP_K_DEVICE_CPU;
    if (want != FP_K_DEVICE_CPU) {
#ifdef FEDPROF_HAVE_CUDA
        /* No NVIDIA device node, no GPU: say so without loading ~220 MB of CUDA libraries. */
        if (access("/dev/nvidiactl", F_OK) != 0 && !getenv("FEDPROF_CUDA_MODULE"))
            snprintf(why, sizeof why, "no NVIDIA driver device (/dev/nvidiactl)");
        else if (cuda_load(why, sizeof why) && g_api->init(why, sizeof why))
            d = FP_K_DEVICE_CUDA;
#else
        snprintf(why, sizeof why,
                 "this build has no CUDA back-end (configured with FEDPROF_CUDA=OFF or without the CUDA toolkit)");
#endif
        if (d != FP_K_DEVICE_CUDA && want == FP_K_DEVICE_CUDA)
            return FP_FAIL(FP_ERR_UNSUPPORTED, "device cuda: %s", why);
    }
    g_device = d;
    if (got)
        *got = d;
    if (info && n) {
        if (d == FP_K_DEVICE_CUDA)
            snprintf(info, n, "cuda (%s)", why);
        else if (want == FP_K_DEVICE_AUTO)
            snprintf(info, n, "cpu (no GPU: %s)", why);
        else
            snprintf(info, n, "cpu");
    }
    return FP_OK;
}

fp_k_device fp_k_device_current(void) { return g_device; }

void *fp_k_alloc(size_t bytes)
{
    if (bytes > SIZE_MAX - 64)
        return NULL;
#ifdef FEDPROF_HAVE_CUDA
    if (g_device == FP_K_DEVICE_CUDA && g_api)
        return g_api->alloc(bytes);
#endif
    return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

void fp_k_free(void *p)
{
    if (!p)
        return;
#ifdef FEDPROF_HAVE_CUDA
    if (g_api && g_api->release(p))
        return;
#endif
    free(p);
}

fp_status fp_k_take_error(void)
{
#ifdef FEDPROF_HAVE_CUDA
    char msg[512];
    if (g_api && g_api->take_error(msg, sizeof msg))
        return FP_FAIL(FP_ERR_INTERNAL, "%s", msg);
#endif
    return FP_OK;
}
