/* kernels_device: which back-end runs common/kernels.h (CPU always; CUDA when built with it and
 * a GPU is present), and the memory the model's buffers live in. */
#include "common/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef FEDPROF_HAVE_CUDA
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

fp_status fp_k_device_select(fp_k_device want, fp_k_device *got, char *info, size_t n)
{
    char why[256] = "";
    if (want != FP_K_DEVICE_AUTO && want != FP_K_DEVICE_CPU && want != FP_K_DEVICE_CUDA)
        return FP_FAIL(FP_ERR_INVALID, "device: unknown kind %d", (int)want);
    fp_k_device d = FP_K_DEVICE_CPU;
    if (want != FP_K_DEVICE_CPU) {
#ifdef FEDPROF_HAVE_CUDA
        if (fp_kcuda_init(why, sizeof why))
            d = FP_K_DEVICE_CUDA;
#else
        snprintf(why, sizeof why, "this build has no CUDA back-end (configured with FEDPROF_CUDA=OFF or without the CUDA toolkit)");
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
    if (g_device == FP_K_DEVICE_CUDA)
        return fp_kcuda_alloc(bytes);
#endif
    return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

void fp_k_free(void *p)
{
    if (!p)
        return;
#ifdef FEDPROF_HAVE_CUDA
    if (fp_kcuda_free(p))
        return;
#endif
    free(p);
}

fp_status fp_k_take_error(void)
{
#ifdef FEDPROF_HAVE_CUDA
    char msg[512];
    if (fp_kcuda_take_error(msg, sizeof msg))
        return FP_FAIL(FP_ERR_INTERNAL, "%s", msg);
#endif
    return FP_OK;
}
