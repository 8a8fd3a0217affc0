/* fedprof-audit: what a partner runs offline to check a privacy claim.
 *   epsilon    ε (and the best RDP order) of DP-SGD with Poisson sampling rate q, noise multiplier σ,
 *              T steps, at δ
 *   calibrate  the smallest noise multiplier that keeps ε at or below a target
 *   verify     check a signed client or federation ledger (dp/ledger.h) and recompute every ε
 *   keygen     write an Ed25519 ledger key pair
 *
 * Flags are parsed strictly: "--name value" or "--name=value"; an unknown, repeated or value-less
 * flag, a number with trailing junk, a non-finite number or one out of range is an error naming
 * the flag, with exit status 2. A computation that fails (a target ε out of reach, a ledger that
 * does not verify, a key that exists already) exits 1; a file that cannot be read at all exits 2.
 * The flag parser is a small static one on purpose: dp/ may depend on common/ only. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>

#include "common/checkpoint.h"
#include "common/errors.h"
#include "dp/accountant.h"
#include "dp/ledger.h"

#define EXIT_USAGE 2
#define MAX_FLAGS 8
#define MAX_STEPS 1000000000000000LL /* 1e15: exact as a double, far beyond any training run */

typedef struct {
    const char *name;    /* without the leading "--" */
    const char *metavar; /* NULL: a switch without a value */
    const char *help;
} flag_t;

typedef struct {
    const char *name;
    const char *summary;
    const flag_t *flags;    /* terminated by name == NULL */
    const char *positional; /* metavar of the one positional argument (required), or NULL */
    int (*run)(const char *const *values, const char *arg);
} command_t;

/* ---------------------------------------------------------------- flags */

static size_t count_flags(const flag_t *flags)
{
    size_t n = 0;
    while (flags[n].name)
        n++;
    return n;
}

static void print_command_help(const command_t *c)
{
    printf("usage: fedprof-audit %s%s%s [flags]\n%s\n\nflags:\n", c->name, c->positional ? " " : "",
           c->positional ? c->positional : "", c->summary);
    for (const flag_t *f = c->flags; f->name; f++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", f->name, f->metavar ? " " : "", f->metavar ? f->metavar : "");
        printf("  %-32s %s\n", left, f->help);
    }
    printf("  %-32s %s\n", "--help", "this text");
}

/* values[k] receives the text of flags[k] ("" for a given switch, NULL when absent); *positional
 * the command's positional argument (NULL when absent).
 * Returns 0, or EXIT_USAGE after printing why; *help is set when --help/-h was given. */
static int parse_flags(const command_t *c, int argc, char **argv, const char **values, const char **positional,
                       int *help)
{
    size_t nflags = count_flags(c->flags);
    for (size_t k = 0; k < nflags; k++)
        values[k] = NULL;
    *positional = NULL;
    *help = 0;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            *help = 1;
            return 0;
        }
        if (c->positional && !*positional && strncmp(arg, "--", 2) != 0 && arg[0] != '\0') {
            *positional = arg;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            fprintf(stderr, "fedprof-audit %s: unexpected argument '%s' (see --help)\n", c->name, arg);
            return EXIT_USAGE;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        size_t k = 0;
        while (k < nflags && !(strlen(c->flags[k].name) == len && strncmp(c->flags[k].name, name, len) == 0))
            k++;
        if (k == nflags) {
            fprintf(stderr, "fedprof-audit %s: unknown flag '--%.*s' (see --help)\n", c->name, (int)len, name);
            return EXIT_USAGE;
        }
        const flag_t *f = &c->flags[k];
        if (values[k]) {
            fprintf(stderr, "fedprof-audit %s: flag --%s given twice\n", c->name, f->name);
            return EXIT_USAGE;
        }
        if (!f->metavar) {
            if (eq) {
                fprintf(stderr, "fedprof-audit %s: flag --%s takes no value\n", c->name, f->name);
                return EXIT_USAGE;
            }
            values[k] = "";
            continue;
        }
        if (eq) {
            values[k] = eq + 1;
        } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
            values[k] = argv[++i];
        } else {
            fprintf(stderr, "fedprof-audit %s: flag --%s needs a value (%s)\n", c->name, f->name, f->metavar);
            return EXIT_USAGE;
        }
        if (values[k][0] == '\0') {
            fprintf(stderr, "fedprof-audit %s: flag --%s has an empty value\n", c->name, f->name);
            return EXIT_USAGE;
        }
    }
    return 0;
}

/* A finite number in [lo, hi] (an open end when the matching *_open is set). */
static int get_double(const char *cmd, const char *flag, const char *text, double lo, int lo_open, double hi,
                      int hi_open, double *out)
{
    if (!text)
        return 0; /* absent: require() reports it once every given flag has been checked */
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || !isfinite(v) || (errno == ERANGE && fabs(v) > 1.0)) {
        fprintf(stderr, "fedprof-audit %s: flag --%s: '%s' is not a finite number\n", cmd, flag, text);
        return EXIT_USAGE;
    }
    if ((lo_open ? v <= lo : v < lo) || (hi_open ? v >= hi : v > hi)) {
        if (isinf(hi))
            fprintf(stderr, "fedprof-audit %s: flag --%s: %s must be %s %g\n", cmd, flag, text, lo_open ? ">" : ">=",
                    lo);
        else
            fprintf(stderr, "fedprof-audit %s: flag --%s: %s is not in %c%g, %g%c\n", cmd, flag, text,
                    lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
        return EXIT_USAGE;
    }
    *out = v;
    return 0;
}

static int get_steps(const char *cmd, const char *flag, const char *text, int64_t *out)
{
    if (!text)
        return 0;
    const char *p = text;
    if (*p == '-' || *p == '+')
        p++;
    int digits = *p != '\0';
    for (const char *d = p; *d; d++)
        digits &= *d >= '0' && *d <= '9';
    errno = 0;
    long long v = digits ? strtoll(text, NULL, 10) : 0;
    if (!digits) {
        fprintf(stderr, "fedprof-audit %s: flag --%s: '%s' is not a whole number\n", cmd, flag, text);
        return EXIT_USAGE;
    }
    if (errno == ERANGE || v < 0 || v > MAX_STEPS) {
        fprintf(stderr, "fedprof-audit %s: flag --%s: %s is not in [0, %lld]\n", cmd, flag, text, MAX_STEPS);
        return EXIT_USAGE;
    }
    *out = (int64_t)v;
    return 0;
}

static int get_conversion(const char *cmd, const char *flag, const char *text, fp_dp_conversion *out)
{
    if (!text) {
        *out = FP_DP_CONVERSION_IMPROVED;
        return 0;
    }
    if (fp_dp_conversion_parse(text, out) != FP_OK) {
        fprintf(stderr, "fedprof-audit %s: flag --%s: '%s' is neither 'improved' nor 'classic'\n", cmd, flag, text);
        return EXIT_USAGE;
    }
    return 0;
}

/* σ = 0 (no noise) or in the accountant's range. */
static int check_sigma(const char *cmd, const char *flag, double sigma)
{
    if (sigma != 0.0 && sigma < FP_DP_SIGMA_MIN) {
        fprintf(stderr, "fedprof-audit %s: flag --%s: %g is neither 0 nor in [%g, %g]\n", cmd, flag, sigma,
                FP_DP_SIGMA_MIN, FP_DP_SIGMA_MAX);
        return EXIT_USAGE;
    }
    return 0;
}

/* After the given flags were checked: the first of the required ones (indices, -1 ends) missing. */
static int require(const char *cmd, const flag_t *flags, const char *const *values, const int *required)
{
    for (; *required >= 0; required++) {
        if (!values[*required]) {
            fprintf(stderr, "fedprof-audit %s: flag --%s is required (see --help)\n", cmd, flags[*required].name);
            return EXIT_USAGE;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- output */

/* The shortest "%g" text that reads back as v; JSON null for a non-finite v. */
static const char *num(char *buf, size_t n, double v)
{
    if (!isfinite(v)) {
        snprintf(buf, n, "null");
        return buf;
    }
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, n, "%.0f", v);
        return buf;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return buf;
}

static int fail(const char *cmd)
{
    fprintf(stderr, "fedprof-audit %s: error: %s\n", cmd, fp_error_message());
    return 1;
}

/* ---------------------------------------------------------------- epsilon */

enum { E_Q, E_SIGMA, E_STEPS, E_DELTA, E_CONV, E_JSON };
static const flag_t epsilon_flags[] = {
    [E_Q] = {"sampling-rate", "Q", "Poisson sampling rate of a step, in [0, 1] (required)"},
    [E_SIGMA] = {"noise-multiplier", "S", "noise std / clip bound: 0, or in [1e-6, 1e6] (required)"},
    [E_STEPS] = {"steps", "T", "number of steps, a whole number >= 0 (required)"},
    [E_DELTA] = {"delta", "D", "target delta, in (0, 1) (required)"},
    [E_CONV] = {"conversion", "improved|classic", "RDP to (eps, delta): improved (default) or classic"},
    [E_JSON] = {"json", NULL, "print one JSON line"},
    {NULL, NULL, NULL},
};

static int run_epsilon(const char *const *v, const char *arg)
{
    (void)arg;
    const char *cmd = "epsilon";
    double q = 0, sigma = 0, delta = 0, eps = 0, order = 0;
    int64_t steps = 0;
    fp_dp_conversion conv;
    int rc;
    if ((rc = get_double(cmd, "sampling-rate", v[E_Q], 0.0, 0, 1.0, 0, &q)) ||
        (rc = get_double(cmd, "noise-multiplier", v[E_SIGMA], 0.0, 0, FP_DP_SIGMA_MAX, 0, &sigma)) ||
        (rc = check_sigma(cmd, "noise-multiplier", sigma)) ||
        (rc = get_steps(cmd, "steps", v[E_STEPS], &steps)) ||
        (rc = get_double(cmd, "delta", v[E_DELTA], 0.0, 1, 1.0, 1, &delta)) ||
        (rc = get_conversion(cmd, "conversion", v[E_CONV], &conv)) ||
        (rc = require(cmd, epsilon_flags, v, (const int[]){E_Q, E_SIGMA, E_STEPS, E_DELTA, -1})))
        return rc;
    if (fp_dp_epsilon(q, sigma, steps, delta, conv, &eps, &order) != FP_OK)
        return fail(cmd);
    char b[6][40];
    if (v[E_JSON]) {
        printf("{\"epsilon\":%s,\"order\":%s,\"delta\":%s,\"sampling_rate\":%s,\"noise_multiplier\":%s,"
               "\"steps\":%lld,\"conversion\":\"%s\"}\n",
               num(b[0], 40, eps), num(b[1], 40, order), num(b[2], 40, delta), num(b[3], 40, q),
               num(b[4], 40, sigma), (long long)steps, fp_dp_conversion_name(conv));
    } else {
        printf("epsilon     %s\n", isfinite(eps) ? num(b[0], 40, eps) : "inf (no privacy)");
        printf("order       %s\n", num(b[1], 40, order));
        printf("delta       %s\n", num(b[2], 40, delta));
        printf("conversion  %s\n", fp_dp_conversion_name(conv));
    }
    return 0;
}

/* ---------------------------------------------------------------- calibrate */

enum { C_TARGET, C_Q, C_STEPS, C_DELTA, C_CONV, C_JSON };
static const flag_t calibrate_flags[] = {
    [C_TARGET] = {"target-epsilon", "E", "the epsilon not to exceed, > 0 (required)"},
    [C_Q] = {"sampling-rate", "Q", "Poisson sampling rate of a step, in [0, 1] (required)"},
    [C_STEPS] = {"steps", "T", "number of steps, a whole number >= 0 (required)"},
    [C_DELTA] = {"delta", "D", "target delta, in (0, 1) (required)"},
    [C_CONV] = {"conversion", "improved|classic", "RDP to (eps, delta): improved (default) or classic"},
    [C_JSON] = {"json", NULL, "print one JSON line"},
    {NULL, NULL, NULL},
};

static int run_calibrate(const char *const *v, const char *arg)
{
    (void)arg;
    const char *cmd = "calibrate";
    double target = 0, q = 0, delta = 0, sigma = 0, eps = 0, order = 0;
    int64_t steps = 0;
    fp_dp_conversion conv;
    int rc;
    if ((rc = get_double(cmd, "target-epsilon", v[C_TARGET], 0.0, 1, INFINITY, 0, &target)) ||
        (rc = get_double(cmd, "sampling-rate", v[C_Q], 0.0, 0, 1.0, 0, &q)) ||
        (rc = get_steps(cmd, "steps", v[C_STEPS], &steps)) ||
        (rc = get_double(cmd, "delta", v[C_DELTA], 0.0, 1, 1.0, 1, &delta)) ||
        (rc = get_conversion(cmd, "conversion", v[C_CONV], &conv)) ||
        (rc = require(cmd, calibrate_flags, v, (const int[]){C_TARGET, C_Q, C_STEPS, C_DELTA, -1})))
        return rc;
    if (fp_dp_calibrate(target, q, steps, delta, conv, &sigma) != FP_OK ||
        fp_dp_epsilon(q, sigma, steps, delta, conv, &eps, &order) != FP_OK)
        return fail(cmd);
    char b[6][40];
    if (v[C_JSON]) {
        printf("{\"noise_multiplier\":%s,\"epsilon\":%s,\"order\":%s,\"target_epsilon\":%s,\"sampling_rate\":%s,"
               "\"steps\":%lld,\"delta\":%s,\"conversion\":\"%s\"}\n",
               num(b[0], 40, sigma), num(b[1], 40, eps), num(b[2], 40, order), num(b[3], 40, target),
               num(b[4], 40, q), (long long)steps, num(b[5], 40, delta), fp_dp_conversion_name(conv));
    } else {
        printf("noise_multiplier  %s\n", num(b[0], 40, sigma));
        printf("epsilon           %s (target %s)\n", num(b[1], 40, eps), num(b[3], 40, target));
        printf("order             %s\n", num(b[2], 40, order));
        printf("conversion        %s\n", fp_dp_conversion_name(conv));
    }
    return 0;
}

/* ---------------------------------------------------------------- verify */

enum { V_PUBKEY, V_JSON, V_PLOT };
static const flag_t verify_flags[] = {
    [V_PUBKEY] = {"pubkey", "FILE", "expected public key (PEM): the client's, or the coordinator's or one "
                                    "client's for a federation ledger (default: trust the first entry's key)"},
    [V_JSON] = {"json", NULL, "print the report as one JSON object"},
    [V_PLOT] = {"plot", "FILE.svg", "also draw cumulative epsilon per round, one line per client, as SVG"},
    {NULL, NULL, NULL},
};

static int run_verify(const char *const *v, const char *ledger)
{
    const char *cmd = "verify";
    if (!ledger) {
        fprintf(stderr, "fedprof-audit verify: the LEDGER file is required (see --help)\n");
        return EXIT_USAGE;
    }
    fp_ledger_key_t *pin = NULL;
    if (v[V_PUBKEY] && fp_ledger_key_load(v[V_PUBKEY], &pin) != FP_OK) {
        fprintf(stderr, "fedprof-audit %s: flag --pubkey: %s\n", cmd, fp_error_message());
        return EXIT_USAGE;
    }
    fp_ledger_report_t *r = NULL;
    fp_status st = fp_ledger_verify_file(ledger, pin, &r);
    fp_ledger_key_free(pin);
    if (!r) {
        fprintf(stderr, "fedprof-audit %s: error: %s\n", cmd, fp_error_message());
        return EXIT_USAGE;
    }
    int rc = st == FP_OK ? 0 : 1;
    if (v[V_JSON]) {
        char *json = NULL;
        if (fp_ledger_report_json(r, &json) != FP_OK) {
            fp_ledger_report_free(r);
            return fail(cmd);
        }
        fputs(json, stdout);
        free(json);
    } else if (fp_ledger_report_print(r, stdout) != FP_OK) {
        rc = fail(cmd);
    }
    if (v[V_PLOT]) {
        char *svg = NULL;
        if (fp_ledger_report_svg(r, &svg) != FP_OK || fp_file_write_atomic(v[V_PLOT], svg, strlen(svg)) != FP_OK) {
            fprintf(stderr, "fedprof-audit %s: flag --plot: %s\n", cmd, fp_error_message());
            rc = EXIT_USAGE;
        }
        free(svg);
    }
    fp_ledger_report_free(r);
    fflush(stdout);
    return rc;
}

/* ---------------------------------------------------------------- keygen */

enum { K_OUT };
static const flag_t keygen_flags[] = {
    [K_OUT] = {"out", "DIR", "directory for " FP_LEDGER_KEY_FILE " (private, 0600) and " FP_LEDGER_PUBKEY_FILE
                             "; created (0700) if missing (required)"},
    {NULL, NULL, NULL},
};

static int run_keygen(const char *const *v, const char *arg)
{
    (void)arg;
    const char *cmd = "keygen";
    int rc;
    if ((rc = require(cmd, keygen_flags, v, (const int[]){K_OUT, -1})))
        return rc;
    const char *dir = v[K_OUT];
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "fedprof-audit %s: flag --out: cannot create %s: %s\n", cmd, dir, strerror(errno));
        return 1;
    }
    fp_ledger_key_t *key = NULL;
    if (fp_ledger_key_generate(&key) != FP_OK || fp_ledger_key_save(key, dir) != FP_OK) {
        fp_ledger_key_free(key);
        return fail(cmd);
    }
    char hex[65];
    fp_ledger_key_public_hex(key, hex);
    fp_ledger_key_free(key);
    printf("private key  %s/%s (mode 0600: keep it secret, back it up)\n", dir, FP_LEDGER_KEY_FILE);
    printf("public key   %s/%s (give it to your partners: fedprof-audit verify --pubkey)\n", dir,
           FP_LEDGER_PUBKEY_FILE);
    printf("raw key      %s (as ledger entries record it)\n", hex);
    return 0;
}

/* ---------------------------------------------------------------- main */

static const command_t commands[] = {
    {"epsilon", "Privacy spent by DP-SGD with Poisson sampling: epsilon and the best RDP order.", epsilon_flags,
     NULL, run_epsilon},
    {"calibrate", "The smallest noise multiplier whose epsilon does not exceed the target.", calibrate_flags, NULL,
     run_calibrate},
    {"verify", "Check a signed privacy ledger (client or federation): chain, signatures, every epsilon recomputed.",
     verify_flags, "LEDGER", run_verify},
    {"keygen", "Write a new Ed25519 ledger key pair (ledger-key.pem, ledger-key.pub.pem).", keygen_flags, NULL,
     run_keygen},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])
_Static_assert(sizeof epsilon_flags / sizeof epsilon_flags[0] - 1 <= MAX_FLAGS, "raise MAX_FLAGS");
_Static_assert(sizeof calibrate_flags / sizeof calibrate_flags[0] - 1 <= MAX_FLAGS, "raise MAX_FLAGS");
_Static_assert(sizeof verify_flags / sizeof verify_flags[0] - 1 <= MAX_FLAGS, "raise MAX_FLAGS");
_Static_assert(sizeof keygen_flags / sizeof keygen_flags[0] - 1 <= MAX_FLAGS, "raise MAX_FLAGS");

static void print_usage(FILE *out)
{
    fprintf(out, "usage: fedprof-audit COMMAND [flags]   (COMMAND --help for its flags)\n\ncommands:\n");
    for (size_t k = 0; k < NCOMMANDS; k++)
        fprintf(out, "  %-10s %s\n", commands[k].name, commands[k].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        print_usage(stdout);
        return 0;
    }
    for (size_t k = 0; k < NCOMMANDS; k++) {
        const command_t *c = &commands[k];
        if (strcmp(argv[1], c->name) != 0)
            continue;
        const char *values[MAX_FLAGS], *positional;
        int help, rc;
        if ((rc = parse_flags(c, argc - 2, argv + 2, values, &positional, &help)) != 0)
            return rc;
        if (help) {
            print_command_help(c);
            return 0;
        }
        return c->run(values, positional);
    }
    fprintf(stderr, "fedprof-audit: unknown command '%s'\n", argv[1]);
    print_usage(stderr);
    return EXIT_USAGE;
}
