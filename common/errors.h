/* errors: the one status enum of fedprof and a thread-local "last error" message.
 *
 * Every function that can fail returns fp_status and, on failure, leaves a message
 * (with the source file and line that detected it) readable by fp_error_message().
 * Values never change meaning; new codes are appended. */
#ifndef FEDPROF_COMMON_ERRORS_H
#define FEDPROF_COMMON_ERRORS_H

typedef enum {
    FP_OK = 0,
    FP_ERR_NOMEM = -1,       /* an allocation failed */
    FP_ERR_IO = -2,          /* open/read/write/rename failed */
    FP_ERR_PARSE = -3,       /* input text or bytes are malformed */
    FP_ERR_INVALID = -4,     /* an argument or option is invalid */
    FP_ERR_RANGE = -5,       /* a value is outside its allowed range */
    FP_ERR_FORMAT = -6,      /* a file has the wrong format/layout/version */
    FP_ERR_UNSUPPORTED = -7, /* valid request this build cannot serve */
    FP_ERR_INTERNAL = -8,    /* a broken invariant of our own */
    FP_ERR_NOT_FOUND = -9,   /* a named thing does not exist */
    FP_ERR_NUMERIC = -10,    /* NaN/Inf or other numeric failure */
} fp_status;

/* Static English name of a status; never NULL. Thread-safe. */
const char *fp_strerror(fp_status s);

/* Record the last error of this thread. Returns nothing; use FP_FAIL to also yield the code. */
void fp_error_set(fp_status s, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The last error message of this thread ("" if none). Valid until the next fp_error_set
 * on this thread. Thread-safe (thread-local storage). */
const char *fp_error_message(void);

/* The status of the last recorded error on this thread (FP_OK if none). */
fp_status fp_error_status(void);

/* Clear the last error of this thread. */
void fp_error_clear(void);

/* Record an error and return its code (what FP_FAIL expands to). */
fp_status fp_error_fail(fp_status s, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Record an error and evaluate to its code: `return FP_FAIL(FP_ERR_IO, "open %s", p);` */
#define FP_FAIL(code, ...) fp_error_fail((code), __FILE__, __LINE__, __VA_ARGS__)

#endif
