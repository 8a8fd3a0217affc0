/* utf8: strict UTF-8 validation for text that comes from outside. */
#ifndef FEDPROF_COMMON_UTF8_H
#define FEDPROF_COMMON_UTF8_H

#include <stddef.h>

/* Length of the longest well-formed UTF-8 prefix of s[0..n) (no overlongs, surrogates or code
 * points past U+10FFFF): n when all of it is valid, else the offset of the first bad byte. */
size_t fp_utf8_prefix(const unsigned char *s, size_t n);

#endif
