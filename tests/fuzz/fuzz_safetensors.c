/* fuzz_safetensors: common/checkpoint's fp_safetensors_load on a file holding the input bytes.
 *
 * Invariants: no crash or leak; a file that loads has tensors whose shapes multiply to sizes whose
 * data can be read in full (every float is touched) and metadata lookups that do not crash. */
#define _GNU_SOURCE /* memfd_create */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/checkpoint.h"
#include "common/errors.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_path(data, size);
    if (!path)
        return 0;
    fp_st_file_t *f = NULL;
    fp_status st = fp_safetensors_load(path, &f);
    if (st == FP_OK) {
        FUZZ_CHECK(f != NULL);
        volatile float sink = 0;
        for (size_t i = 0; i < fp_st_n_tensors(f); i++) {
            const char *name;
            int ndim;
            const size_t *shape;
            const float *x;
            fp_st_tensor(f, i, &name, &ndim, &shape, &x);
            FUZZ_CHECK(name != NULL && ndim >= 0 && ndim <= 4);
            size_t n = 1;
            for (int k = 0; k < ndim; k++)
                n *= shape[k];
            FUZZ_CHECK(n <= size / 4 + 1);
            for (size_t j = 0; j < n; j++)
                sink += x[j];
            (void)strlen(name);
        }
        (void)fp_st_meta(f, "format");
        (void)fp_st_meta(f, "");
        (void)sink;
    } else {
        FUZZ_CHECK(f == NULL);
    }
    fp_safetensors_close(f);
    fp_error_clear();
    return 0;
}
