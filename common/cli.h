/* cli: strict parsing of command-line flags shared by the fedprof binaries.
 * "--name value" and "--name=value"; every value is checked (type, range, trailing junk);
 * an unknown flag, a missing value or a repeated flag is an error naming the flag. */
#ifndef FEDPROF_COMMON_CLI_H
#define FEDPROF_COMMON_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "common/errors.h"

typedef enum { FP_OPT_FLAG, FP_OPT_STR, FP_OPT_INT, FP_OPT_U64, FP_OPT_FLOAT } fp_opt_kind;

typedef struct {
    const char *name;  /* without leading dashes */
    fp_opt_kind kind;
    void *dest;        /* int* (FLAG, INT), const char** (STR), uint64_t* (U64), float* (FLOAT) */
    double min, max;   /* inclusive range for INT/U64/FLOAT */
    int *seen;         /* optional: set to 1 when the flag was given */
    const char *help;
} fp_opt_t;

/* Parse argv[0..argc) against opts (terminated by name == NULL). */
fp_status fp_cli_parse(int argc, char **argv, const fp_opt_t *opts);
/* Print "  --name VALUE  help" lines. */
void fp_cli_print_help(const fp_opt_t *opts);
/* Copy a flag's string value src (NULL: nothing given, nothing done) into dst[cap]. Returns 0, or
 * -1 after printing "PROG: error: --FLAG is longer than cap-1 bytes" to stderr. */
int fp_cli_set_str(char *dst, size_t cap, const char *src, const char *prog, const char *flag);

#endif
