/* npy: the .npy header (magic, version, padded dict) followed by raw float32 rows. */
#include "common/npy.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/checkpoint.h"

fp_status fp_npy_save_f32(const char *path, const float *data, size_t rows, size_t cols)
{
    char dict[128];
    int dl = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }", rows, cols);
    if (dl < 0 || (size_t)dl >= sizeof dict)
        return FP_FAIL(FP_ERR_RANGE, "npy header too long");
    /* 10 bytes of preamble + dict + spaces + '\n', total a multiple of 64. */
    size_t hlen = ((10 + (size_t)dl + 1 + 63) / 64) * 64;
    if (cols && rows > (SIZE_MAX - hlen) / sizeof(float) / cols)
        return FP_FAIL(FP_ERR_RANGE, "npy array too large");
    size_t total = hlen + rows * cols * sizeof(float);
    unsigned char *buf = malloc(total);
    if (!buf)
        return FP_FAIL(FP_ERR_NOMEM, "npy buffer of %zu bytes", total);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    uint16_t hl = (uint16_t)(hlen - 10);
    buf[8] = (unsigned char)(hl & 0xff);
    buf[9] = (unsigned char)(hl >> 8);
    memset(buf + 10, ' ', hlen - 10);
    memcpy(buf + 10, dict, (size_t)dl);
    buf[hlen - 1] = '\n';
    if (rows != 0 && cols != 0)
        memcpy(buf + hlen, data, rows * cols * sizeof(float));
    fp_status st = fp_file_write_atomic(path, buf, total);
    free(buf);
    return st;
}
