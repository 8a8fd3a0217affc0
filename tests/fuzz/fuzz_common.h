/* fuzz_common: helpers shared by the libFuzzer targets of tests/fuzz (header-only, static).
 *
 * fuzz_path() (for targets defining _GNU_SOURCE) gives a path whose contents are exactly the input
 * bytes, through one memfd reused for every input (no file system writes, nothing left behind):
 * the loaders under test take a path.
 * FUZZ_CHECK traps on a broken invariant so libFuzzer records it as a crash with a stack. */
#ifndef FEDPROF_TESTS_FUZZ_COMMON_H
#define FEDPROF_TESTS_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#ifdef _GNU_SOURCE
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>
#endif

#define FUZZ_CHECK(cond)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);                     \
            abort();                                                                                         \
        }                                                                                                    \
    } while (0)

#ifdef _GNU_SOURCE /* memfd_create: a target that loads from a path defines _GNU_SOURCE first */
/* "/proc/self/fd/N" of a memfd holding data[0..size); NULL if the memfd cannot be written. */
static const char *fuzz_path(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fedprof-fuzz", MFD_CLOEXEC);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0)
        return NULL;
    size_t off = 0;
    while (off < size) {
        ssize_t w = pwrite(fd, data + off, size - off, (off_t)off);
        if (w <= 0)
            return NULL;
        off += (size_t)w;
    }
    return path;
}
#endif

#endif
