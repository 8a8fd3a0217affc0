/* ledger_internal: helpers shared by dp/ledger.c (the format) and dp/ledger_report.c (its text,
 * JSON and SVG renderings). Not part of the public API.
 *
 * fp_ledger_buf_t is a growable text buffer with a hard maximum and a sticky error (SQLite's
 * StrAccum pattern): appends after a failure do nothing, and fp_ledger_buf_status reports the
 * first failure once at the end, so building a line needs no check per append. */
#ifndef FEDPROF_DP_LEDGER_INTERNAL_H
#define FEDPROF_DP_LEDGER_INTERNAL_H

#include <stddef.h>

#include "common/errors.h"

typedef struct {
    char *p;    /* NUL-terminated text (NULL until the first append) */
    size_t n;   /* length without the NUL */
    size_t cap; /* allocated bytes */
    size_t max; /* most bytes the text may hold */
    int err;    /* 0, or 1 (allocation failed) or 2 (max exceeded) */
} fp_ledger_buf_t;

void fp_ledger_buf_init(fp_ledger_buf_t *b, size_t max);
void fp_ledger_buf_free(fp_ledger_buf_t *b);
/* Hands the text over (the caller frees it with free()) and resets b; NULL after an error. */
char *fp_ledger_buf_take(fp_ledger_buf_t *b, size_t *len);
void fp_ledger_buf_put(fp_ledger_buf_t *b, const char *s, size_t n);
void fp_ledger_buf_puts(fp_ledger_buf_t *b, const char *s);
void fp_ledger_buf_printf(fp_ledger_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The shortest decimal text that reads back (strtod, C locale) as exactly v; whole numbers below
 * 1e15 without exponent or point; -0 as 0; "null" for a non-finite v. */
void fp_ledger_buf_num(fp_ledger_buf_t *b, double v);
/* A JSON string: '"', '\\' and control characters escaped (\u00XX), other bytes as they are. */
void fp_ledger_buf_json_str(fp_ledger_buf_t *b, const char *s, size_t n);
/* FP_OK, or FP_ERR_NOMEM / FP_ERR_RANGE naming `what`. */
fp_status fp_ledger_buf_status(const fp_ledger_buf_t *b, const char *what);

#endif
