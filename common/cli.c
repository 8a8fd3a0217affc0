/* cli: flag parsing with strict value checks. */
#include "common/cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static fp_status parse_value(const fp_opt_t *o, const char *v)
{
    char *end = NULL;
    errno = 0;
    switch (o->kind) {
    case FP_OPT_STR:
        if (!*v)
            return FP_FAIL(FP_ERR_INVALID, "--%s: empty value", o->name);
        *(const char **)o->dest = v;
        return FP_OK;
    case FP_OPT_INT: {
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end || x < o->min || x > o->max)
            return FP_FAIL(FP_ERR_INVALID, "--%s: '%s' is not an integer in [%.0f, %.0f]", o->name, v, o->min, o->max);
        *(int *)o->dest = (int)x;
        return FP_OK;
    }
    case FP_OPT_U64: {
        if (v[0] == '-')
            return FP_FAIL(FP_ERR_INVALID, "--%s: '%s' is negative", o->name, v);
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || end == v || *end)
            return FP_FAIL(FP_ERR_INVALID, "--%s: '%s' is not a non-negative integer", o->name, v);
        *(uint64_t *)o->dest = x;
        return FP_OK;
    }
    case FP_OPT_FLOAT: {
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x) || x < o->min || x > o->max)
            return FP_FAIL(FP_ERR_INVALID, "--%s: '%s' is not a number in [%g, %g]", o->name, v, o->min, o->max);
        *(float *)o->dest = (float)x;
        return FP_OK;
    }
    case FP_OPT_FLAG:
        break;
    }
    return FP_FAIL(FP_ERR_INTERNAL, "--%s: bad option kind", o->name);
}

fp_status fp_cli_parse(int argc, char **argv, const fp_opt_t *opts)
{
    size_t n_opts = 0;
    while (opts[n_opts].name)
        n_opts++;
    char given[256] = {0};
    if (n_opts > sizeof given)
        return FP_FAIL(FP_ERR_INTERNAL, "too many options");
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0')
            return FP_FAIL(FP_ERR_INVALID, "unexpected argument '%s' (see --help)", a);
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        size_t k;
        for (k = 0; k < n_opts; k++)
            if (strlen(opts[k].name) == nlen && strncmp(opts[k].name, name, nlen) == 0)
                break;
        if (k == n_opts)
            return FP_FAIL(FP_ERR_INVALID, "unknown option '--%.*s' (see --help)", (int)nlen, name);
        const fp_opt_t *o = &opts[k];
        if (given[k])
            return FP_FAIL(FP_ERR_INVALID, "--%s given twice", o->name);
        given[k] = 1;
        if (o->seen)
            *o->seen = 1;
        if (o->kind == FP_OPT_FLAG) {
            if (eq)
                return FP_FAIL(FP_ERR_INVALID, "--%s takes no value", o->name);
            *(int *)o->dest = 1;
            continue;
        }
        const char *v;
        if (eq)
            v = eq + 1;
        else if (i + 1 < argc)
            v = argv[++i];
        else
            return FP_FAIL(FP_ERR_INVALID, "--%s needs a value", o->name);
        fp_status st = parse_value(o, v);
        if (st != FP_OK)
            return st;
    }
    return FP_OK;
}

void fp_cli_print_help(const fp_opt_t *opts)
{
    for (const fp_opt_t *o = opts; o->name; o++) {
        char lhs[64];
        const char *arg = o->kind == FP_OPT_FLAG ? "" : o->kind == FP_OPT_STR ? " STR" : o->kind == FP_OPT_FLOAT ? " X" : " N";
        snprintf(lhs, sizeof lhs, "--%s%s", o->name, arg);
        printf("  %-24s %s\n", lhs, o->help ? o->help : "");
    }
}

int fp_cli_set_str(char *dst, size_t cap, const char *src, const char *prog, const char *flag)
{
    if (!src)
        return 0;
    size_t n = strlen(src);
    if (cap == 0 || n >= cap) {
        fprintf(stderr, "%s: error: --%s is longer than %zu bytes\n", prog, flag, cap ? cap - 1 : 0);
        return -1;
    }
    memcpy(dst, src, n + 1);
    return 0;
}
