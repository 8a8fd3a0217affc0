/* errors: status names and the thread-local last-error message. */
#include "common/errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char fp_last_msg[1024];
static _Thread_local fp_status fp_last_status = FP_OK;

const char *fp_strerror(fp_status s)
{
    switch (s) {
    case FP_OK: return "ok";
    case FP_ERR_NOMEM: return "out of memory";
    case FP_ERR_IO: return "I/O error";
    case FP_ERR_PARSE: return "parse error";
    case FP_ERR_INVALID: return "invalid argument";
    case FP_ERR_RANGE: return "value out of range";
    case FP_ERR_FORMAT: return "bad format";
    case FP_ERR_UNSUPPORTED: return "unsupported";
    case FP_ERR_INTERNAL: return "internal error";
    case FP_ERR_NOT_FOUND: return "not found";
    case FP_ERR_NUMERIC: return "numeric error";
    }
    return "unknown error";
}

static void error_setv(fp_status s, const char *file, int line, const char *fmt, va_list ap)
{
    char msg[sizeof fp_last_msg];
    vsnprintf(msg, sizeof msg, fmt, ap);
    const char *base = file ? strrchr(file, '/') : NULL;
    base = base ? base + 1 : (file ? file : "?");
    /* Truncation of an over-long message is fine; the result is checked to silence the warning. */
    int n = snprintf(fp_last_msg, sizeof fp_last_msg, "%.900s (%.60s:%d)", msg, base, line);
    (void)n;
    fp_last_status = s;
}

void fp_error_set(fp_status s, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_setv(s, file, line, fmt, ap);
    va_end(ap);
}

fp_status fp_error_fail(fp_status s, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_setv(s, file, line, fmt, ap);
    va_end(ap);
    return s;
}

const char *fp_error_message(void) { return fp_last_msg; }

fp_status fp_error_status(void) { return fp_last_status; }

void fp_error_clear(void)
{
    fp_last_msg[0] = '\0';
    fp_last_status = FP_OK;
}
