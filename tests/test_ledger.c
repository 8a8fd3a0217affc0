/* test_ledger: the signed privacy ledger (dp/ledger.h) and `fedprof-audit verify | keygen`.
 *
 * Round trips (append → verify, reopen), every tampering the issue names, each detected and named by
 * line and round (an edited ε, σ or round; a deleted, inserted or reordered entry; a signature by
 * another key; a torn last line, which is recovered instead), an ε that does not match its
 * recorded parameters, budget refusal with the file unchanged, no double spend after a reopen,
 * the coordinator's countersigned federation ledger, bad input of every kind (an error, never a
 * crash), keys, and the command line's exit codes ($FEDPROF_AUDIT, set by CTest).
 *
 * ε is compared with an accountant fed the same events: the ledger computes with the very same
 * functions, so the match is exact (asserted to 1e-12 relative). Files live in a mkdtemp
 * directory that the group teardown removes. */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "common/errors.h"
#include "dp/accountant.h"
#include "dp/ledger.h"

static char g_dir[64];
static fp_ledger_key_t *g_key_a, *g_key_b, *g_key_c; /* client A, client B, coordinator */

static const char *tpath(const char *name)
{
    static char buf[8][256];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            remove_tree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/fp_ledger_XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    if (fp_ledger_key_generate(&g_key_a) != FP_OK || fp_ledger_key_generate(&g_key_b) != FP_OK ||
        fp_ledger_key_generate(&g_key_c) != FP_OK)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    fp_ledger_key_free(g_key_a);
    fp_ledger_key_free(g_key_b);
    fp_ledger_key_free(g_key_c);
    remove_tree(g_dir);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ helpers */

static fp_ledger_spend_t spend_of(int64_t round)
{
    fp_ledger_spend_t s = {
        .round = round,
        .model_version = round,
        .unit = FP_LEDGER_UNIT_RECORD,
        .q = 0.01,
        .sigma = 1.1,
        .clip = 1.0,
        .steps = 100,
        .delta = 1e-5,
        .conversion = FP_DP_CONVERSION_IMPROVED,
    };
    return s;
}

static fp_ledger_t *open_ledger(const char *path, const fp_ledger_key_t *key, const char *id, double budget)
{
    fp_ledger_options_t opt = {.client_id = id, .budget_epsilon = budget};
    fp_ledger_t *l = NULL;
    fp_status st = fp_ledger_open(path, key, &opt, &l);
    if (st != FP_OK)
        print_error("open %s: %s\n", path, fp_error_message());
    assert_int_equal(st, FP_OK);
    assert_non_null(l);
    return l;
}

/* A fresh ledger of client "alice" at path with rounds 1..n (round r spends spend_of(r)). */
static void make_ledger(const char *path, const fp_ledger_key_t *key, int n)
{
    unlink(path);
    fp_ledger_t *l = open_ledger(path, key, "alice", 100.0);
    for (int r = 1; r <= n; r++) {
        fp_ledger_spend_t s = spend_of(r);
        assert_int_equal(fp_ledger_append(l, &s, NULL, NULL), FP_OK);
    }
    fp_ledger_close(l);
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    assert_true(len >= 0);
    rewind(f);
    char *buf = malloc((size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    buf[len] = '\0';
    fclose(f);
    if (n)
        *n = (size_t)len;
    return buf;
}

static void spit(const char *path, const char *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* The lines of a file (without newlines), at most 64. */
typedef struct {
    char *line[64];
    size_t n;
} lines_t;

static void read_lines(const char *path, lines_t *ls)
{
    size_t n;
    char *all = slurp(path, &n);
    ls->n = 0;
    char *p = all;
    while (*p) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        *nl = '\0';
        assert_true(ls->n < 64);
        ls->line[ls->n++] = strdup(p);
        p = nl + 1;
    }
    free(all);
}

static void write_lines(const char *path, const lines_t *ls)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (size_t k = 0; k < ls->n; k++)
        fprintf(f, "%s\n", ls->line[k]);
    assert_int_equal(fclose(f), 0);
}

static void free_lines(lines_t *ls)
{
    for (size_t k = 0; k < ls->n; k++)
        free(ls->line[k]);
    ls->n = 0;
}

/* Replace the first occurrence of `from` in *s by `to` (which must exist). */
static void edit(char **s, const char *from, const char *to)
{
    char *p = strstr(*s, from);
    if (!p)
        print_error("'%s' not in %s\n", from, *s);
    assert_non_null(p);
    size_t n = strlen(*s) - strlen(from) + strlen(to) + 1;
    char *out = malloc(n);
    assert_non_null(out);
    snprintf(out, n, "%.*s%s%s", (int)(p - *s), *s, to, p + strlen(from));
    free(*s);
    *s = out;
}

/* Verify path and expect failure at `line` (0: the file as a whole) with each of the words. */
static void expect_fail(const char *path, const fp_ledger_key_t *pin, fp_status want, int64_t line,
                        int64_t round, const char *w1, const char *w2)
{
    fp_ledger_report_t *r = NULL;
    fp_status st = fp_ledger_verify_file(path, pin, &r);
    assert_non_null(r);
    if (st == FP_OK || r->fail_line != line || (w1 && !strstr(r->message, w1)) || (w2 && !strstr(r->message, w2)) ||
        (want != FP_OK && st != want) || (round != -2 && r->fail_round != round))
        print_error("verify %s: status %d line %lld round %lld: %s\n", path, st, (long long)r->fail_line,
                    (long long)r->fail_round, r->message);
    assert_int_not_equal(st, FP_OK);
    if (want != FP_OK)
        assert_int_equal(st, want);
    assert_int_equal(r->status, st);
    assert_int_equal(r->fail_line, line);
    if (round != -2)
        assert_int_equal(r->fail_round, round);
    if (w1)
        assert_non_null(strstr(r->message, w1));
    if (w2)
        assert_non_null(strstr(r->message, w2));
    assert_string_equal(r->message, fp_error_message());
    /* Every rendering works on a failed report too. */
    char *text = NULL;
    assert_int_equal(fp_ledger_report_json(r, &text), FP_OK);
    assert_non_null(strstr(text, "\"ok\":false"));
    free(text);
    assert_int_equal(fp_ledger_report_svg(r, &text), FP_OK);
    free(text);
    fp_ledger_report_free(r);
}

static void expect_ok(const char *path, const fp_ledger_key_t *pin, size_t rows)
{
    fp_ledger_report_t *r = NULL;
    fp_status st = fp_ledger_verify_file(path, pin, &r);
    if (st != FP_OK)
        print_error("verify %s: %s\n", path, fp_error_message());
    assert_int_equal(st, FP_OK);
    assert_non_null(r);
    assert_int_equal(r->status, FP_OK);
    assert_int_equal(r->n_rows, rows);
    fp_ledger_report_free(r);
}

static double rel(double a, double b)
{
    return fabs(a - b) / fmax(fabs(a), fabs(b));
}

/* ------------------------------------------------------------------------------------------------ tests */
static void test_roundtrip(void **state)
{
    (void)state;
    const char *path = tpath("rt.jsonl");
    unlink(path);
    fp_ledger_t *l = open_ledger(path, g_key_a, "alice", 50.0);
    assert_int_equal(fp_ledger_entries(l), 0);
    assert_true(fp_ledger_epsilon(l) == 0.0);
    assert_int_equal(fp_ledger_last_round(l, NULL), 0);
    fp_dp_accountant_t *acc = NULL;
    assert_int_equal(fp_dp_accountant_create(NULL, 0, &acc), FP_OK);
    double prev_eps = 0;
    char *lines[5];
    for (int r = 1; r <= 5; r++) {
        fp_ledger_spend_t s = spend_of(10 * r); /* rounds need not be consecutive, only increasing */
        double proj = 0, proj_round = 0, after = 0, ref = 0;
        assert_int_equal(fp_ledger_project(l, &s, &proj, &proj_round), FP_OK);
        assert_int_equal(fp_ledger_admit(l, &s, NULL), FP_OK);
        assert_false(fp_ledger_has_round(l, s.round));
        assert_int_equal(fp_ledger_append(l, &s, &after, &lines[r - 1]), FP_OK);
        assert_non_null(lines[r - 1]);
        assert_true(after == proj); /* admission and the entry use the same computation */
        assert_true(after > prev_eps);
        prev_eps = after;
        assert_int_equal(fp_dp_accountant_add(acc, s.q, s.sigma, s.steps), FP_OK);
        assert_int_equal(fp_dp_accountant_epsilon(acc, s.delta, s.conversion, &ref, NULL), FP_OK);
        assert_true(rel(after, ref) < 1e-12);
        assert_true(fp_ledger_has_round(l, s.round));
        int64_t last = -1;
        assert_int_equal(fp_ledger_last_round(l, &last), 1);
        assert_int_equal(last, s.round);
        /* The entry parses back, with its signature, and names everything it recorded. */
        fp_ledger_entry_t e;
        assert_int_equal(fp_ledger_entry_parse(lines[r - 1], strlen(lines[r - 1]), &e), FP_OK);
        assert_string_equal(e.client, "alice");
        assert_int_equal(e.seq, r);
        assert_int_equal(e.spend.round, s.round);
        assert_true(e.spend.q == s.q && e.spend.sigma == s.sigma && e.spend.delta == s.delta);
        assert_true(e.eps == after && e.eps_round == proj_round && e.budget == 50.0);
        assert_int_equal(e.n_orders, FP_DP_DEFAULT_ORDER_COUNT);
        char hex[65];
        fp_ledger_key_public_hex(g_key_a, hex);
        assert_string_equal(e.pubkey, hex);
        if (r == 1)
            assert_string_equal(e.prev, "0000000000000000000000000000000000000000000000000000000000000000");
        fp_ledger_entry_clear(&e);
    }
    assert_int_equal(fp_ledger_entries(l), 5);
    assert_true(fp_ledger_epsilon(l) == prev_eps);
    assert_true(fp_ledger_budget(l) == 50.0);
    assert_int_equal(fp_ledger_recovered_bytes(l), 0);
    for (int r = 1; r <= 5; r++) {
        char *back = NULL;
        size_t n = 0;
        assert_int_equal(fp_ledger_read_line(l, r, &back, &n), FP_OK);
        assert_string_equal(back, lines[r - 1]);
        assert_int_equal(n, strlen(lines[r - 1]));
        free(back);
    }
    fp_ledger_close(l);

    /* The file is exactly the lines, each with a newline. */
    lines_t ls;
    read_lines(path, &ls);
    assert_int_equal(ls.n, 5);
    for (int r = 0; r < 5; r++) {
        assert_string_equal(ls.line[r], lines[r]);
        free(lines[r]);
    }
    free_lines(&ls);

    /* Verification: trust on first use, then pinned. */
    fp_ledger_report_t *rep = NULL;
    assert_int_equal(fp_ledger_verify_file(path, NULL, &rep), FP_OK);
    assert_int_equal(rep->kind, FP_LEDGER_KIND_CLIENT);
    assert_int_equal(rep->n_rows, 5);
    assert_int_equal(rep->n_clients, 1);
    assert_int_equal(rep->clients[0].pinned, 0);
    assert_int_equal(rep->clients[0].entries, 5);
    assert_true(rep->clients[0].eps == prev_eps);
    assert_string_equal(rep->clients[0].id, "alice");
    for (size_t i = 0; i < rep->n_rows; i++) {
        assert_int_equal(rep->rows[i].line, (int64_t)i + 1);
        assert_int_equal(rep->rows[i].spend.round, 10 * ((int64_t)i + 1));
        assert_true(rep->rows[i].eps == rep->rows[i].eps_check);
        assert_true(rep->rows[i].eps_round == rep->rows[i].eps_round_check);
    }
    char *json = NULL, *svg = NULL;
    assert_int_equal(fp_ledger_report_json(rep, &json), FP_OK);
    json_object *root = json_tokener_parse(json);
    assert_non_null(root);
    json_object *v = NULL;
    assert_true(json_object_object_get_ex(root, "ok", &v) && json_object_get_boolean(v));
    assert_true(json_object_object_get_ex(root, "entries", &v) && json_object_array_length(v) == 5);
    json_object *e0 = json_object_array_get_idx(v, 4);
    assert_true(json_object_object_get_ex(e0, "eps_recomputed", &v));
    assert_true(json_object_get_double(v) == prev_eps);
    json_object_put(root);
    free(json);
    assert_int_equal(fp_ledger_report_svg(rep, &svg), FP_OK);
    assert_non_null(strstr(svg, "<svg"));
    assert_non_null(strstr(svg, "<polyline"));
    assert_non_null(strstr(svg, "alice"));
    assert_non_null(strstr(svg, "</svg>"));
    free(svg);
    FILE *devnull = fopen("/dev/null", "w");
    assert_non_null(devnull);
    assert_int_equal(fp_ledger_report_print(rep, devnull), FP_OK);
    fclose(devnull);
    fp_ledger_report_free(rep);
    assert_int_equal(fp_ledger_verify_file(path, g_key_a, &rep), FP_OK);
    assert_int_equal(rep->clients[0].pinned, 1);
    fp_ledger_report_free(rep);

    /* Reopen: the state comes back from the file. */
    l = open_ledger(path, g_key_a, "alice", 50.0);
    assert_int_equal(fp_ledger_entries(l), 5);
    assert_true(fp_ledger_epsilon(l) == prev_eps);
    fp_ledger_spend_t s = spend_of(60);
    double after = 0, ref = 0;
    assert_int_equal(fp_ledger_append(l, &s, &after, NULL), FP_OK);
    assert_int_equal(fp_dp_accountant_add(acc, s.q, s.sigma, s.steps), FP_OK);
    assert_int_equal(fp_dp_accountant_epsilon(acc, s.delta, s.conversion, &ref, NULL), FP_OK);
    assert_true(rel(after, ref) < 1e-12);
    fp_ledger_close(l);
    fp_dp_accountant_destroy(acc);
    expect_ok(path, g_key_a, 6);

    /* An empty ledger verifies (nothing spent). */
    const char *empty = tpath("empty.jsonl");
    spit(empty, "", 0);
    expect_ok(empty, NULL, 0);
}

/* Entries may change δ and the conversion from round to round; custom orders are recorded. */
static void test_parameters_recorded(void **state)
{
    (void)state;
    const char *path = tpath("params.jsonl");
    unlink(path);
    static const double orders[] = {1.5, 2, 3, 4, 8, 16, 32, 64};
    fp_ledger_options_t opt = {.client_id = "carol@partner-3", .budget_epsilon = 1000, .orders = orders,
                               .n_orders = 8};
    fp_ledger_t *l = NULL;
    assert_int_equal(fp_ledger_open(path, g_key_a, &opt, &l), FP_OK);
    fp_dp_accountant_t *acc = NULL;
    assert_int_equal(fp_dp_accountant_create(orders, 8, &acc), FP_OK);
    fp_ledger_spend_t s1 = spend_of(1), s2 = spend_of(2), s3 = spend_of(3);
    s2.conversion = FP_DP_CONVERSION_CLASSIC;
    s2.delta = 1e-6;
    s2.q = 1.0; /* q = 1 and σ = 0.7: the closed form */
    s2.sigma = 0.7;
    s3.steps = 0; /* a round that trained nothing private still gets its entry */
    s3.q = 0;
    const fp_ledger_spend_t *sp[] = {&s1, &s2, &s3};
    for (int k = 0; k < 3; k++) {
        double after = 0, ref = 0;
        assert_int_equal(fp_ledger_append(l, sp[k], &after, NULL), FP_OK);
        assert_int_equal(fp_dp_accountant_add(acc, sp[k]->q, sp[k]->sigma, sp[k]->steps), FP_OK);
        assert_int_equal(fp_dp_accountant_epsilon(acc, sp[k]->delta, sp[k]->conversion, &ref, NULL), FP_OK);
        assert_true(rel(after, ref) < 1e-12);
    }
    /* Another privacy unit does not compose with this ledger's. */
    fp_ledger_spend_t s4 = spend_of(4);
    s4.unit = FP_LEDGER_UNIT_CLIENT;
    assert_int_equal(fp_ledger_admit(l, &s4, NULL), FP_ERR_INVALID);
    assert_non_null(strstr(fp_error_message(), "privacy unit"));
    fp_ledger_close(l);
    expect_ok(path, NULL, 3);
    lines_t ls;
    read_lines(path, &ls);
    assert_non_null(strstr(ls.line[0], "\"orders\":[1.5,2,3,4,8,16,32,64]"));
    assert_non_null(strstr(ls.line[0], "\"client\":\"carol@partner-3\""));
    assert_non_null(strstr(ls.line[1], "\"conversion\":\"classic\""));
    assert_non_null(strstr(ls.line[1], "\"delta\":1e-06"));
    free_lines(&ls);
    /* Reopening with the orders left out adopts the recorded ones; other orders are refused. */
    opt.orders = NULL;
    opt.n_orders = 0;
    assert_int_equal(fp_ledger_open(path, g_key_a, &opt, &l), FP_OK);
    fp_ledger_close(l);
    static const double other[] = {2, 4, 8};
    opt.orders = other;
    opt.n_orders = 3;
    assert_int_equal(fp_ledger_open(path, g_key_a, &opt, &l), FP_ERR_FORMAT);
    assert_null(l);
    assert_non_null(strstr(fp_error_message(), "orders"));
    /* Another client's id or key is refused. */
    opt.orders = NULL;
    opt.n_orders = 0;
    opt.client_id = "mallory";
    assert_int_equal(fp_ledger_open(path, g_key_a, &opt, &l), FP_ERR_FORMAT);
    assert_non_null(strstr(fp_error_message(), "line 1"));
    opt.client_id = "carol@partner-3";
    assert_int_equal(fp_ledger_open(path, g_key_b, &opt, &l), FP_ERR_FORMAT);
    assert_non_null(strstr(fp_error_message(), "not the expected key"));
    fp_dp_accountant_destroy(acc);
}

/* Someone without the key edits a field: the signature no longer verifies. */
static void test_tamper_field(void **state)
{
    (void)state;
    const char *good = tpath("tamper-good.jsonl"), *bad = tpath("tamper-bad.jsonl");
    make_ledger(good, g_key_a, 5);
    static const struct {
        const char *from, *to;
    } edits[] = {
        {"\"sigma\":1.1,", "\"sigma\":1.7,"},
        {"\"round\":3,", "\"round\":33,"},
        {"\"q\":0.01,", "\"q\":0.001,"},
        {"\"steps\":100,", "\"steps\":10,"},
        {"\"budget\":100,", "\"budget\":1000,"},
        {"\"model_version\":3,", "\"model_version\":4,"},
    };
    for (size_t k = 0; k < sizeof edits / sizeof edits[0]; k++) {
        lines_t ls;
        read_lines(good, &ls);
        edit(&ls.line[2], edits[k].from, edits[k].to);
        write_lines(bad, &ls);
        free_lines(&ls);
        expect_fail(bad, NULL, FP_ERR_FORMAT, 3, -2, "line 3", "signature does not verify");
        expect_fail(bad, g_key_a, FP_ERR_FORMAT, 3, -2, "line 3", "signature does not verify");
    }
    /* ε edited: named by line and round. */
    lines_t ls;
    read_lines(good, &ls);
    char *p = strstr(ls.line[3], "\"eps\":");
    assert_non_null(p);
    assert_int_equal(p[7], '.');
    p[8] = p[8] == '1' ? '2' : '1'; /* the first decimal of the cumulative ε */
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 4, 4, "line 4 (round 4)", "signature does not verify");
    /* A client never appends to a ledger that does not verify. */
    size_t n0, n1;
    char *before = slurp(bad, &n0);
    fp_ledger_options_t opt = {.client_id = "alice", .budget_epsilon = 100};
    fp_ledger_t *l = NULL;
    assert_int_equal(fp_ledger_open(bad, g_key_a, &opt, &l), FP_ERR_FORMAT);
    assert_null(l);
    assert_non_null(strstr(fp_error_message(), "line 4 (round 4)"));
    char *after = slurp(bad, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0);
    free(before);
    free(after);
}

static void test_deleted_and_reordered(void **state)
{
    (void)state;
    const char *good = tpath("del-good.jsonl"), *bad = tpath("del-bad.jsonl");
    make_ledger(good, g_key_a, 5);
    lines_t ls;

    /* A middle entry deleted: the next one no longer continues the chain. */
    read_lines(good, &ls);
    free(ls.line[2]);
    memmove(&ls.line[2], &ls.line[3], 2 * sizeof ls.line[0]);
    ls.n--;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 3, 4, "line 3 (round 4)", "deleted");

    /* The first entry deleted. */
    read_lines(good, &ls);
    free(ls.line[0]);
    memmove(&ls.line[0], &ls.line[1], 4 * sizeof ls.line[0]);
    ls.n--;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 1, 2, "line 1 (round 2)", "deleted");

    /* Two entries swapped. */
    read_lines(good, &ls);
    char *t = ls.line[1];
    ls.line[1] = ls.line[2];
    ls.line[2] = t;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 2, 3, "line 2 (round 3)", "reordered");

    /* An entry duplicated (a replayed round). */
    read_lines(good, &ls);
    ls.line[ls.n] = strdup(ls.line[ls.n - 1]);
    ls.n++;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 6, 5, "line 6 (round 5)", "inserted");
}

/* A forger with another key; and the honest key holder lying about the chain or ε. */
static void test_forged(void **state)
{
    (void)state;
    const char *good = tpath("forge-good.jsonl"), *bad = tpath("forge-bad.jsonl");
    make_ledger(good, g_key_a, 4);
    lines_t ls;
    fp_ledger_entry_t e;
    char *line = NULL;

    /* Line 3 re-signed by key B (its embedded key is then B's). */
    read_lines(good, &ls);
    assert_int_equal(fp_ledger_entry_parse(ls.line[2], strlen(ls.line[2]), &e), FP_OK);
    assert_int_equal(fp_ledger_entry_sign(&e, g_key_b, &line, NULL), FP_OK);
    fp_ledger_entry_clear(&e);
    free(ls.line[2]);
    ls.line[2] = line;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 3, 3, "line 3 (round 3)", "earlier entries by");
    expect_fail(bad, g_key_a, FP_ERR_FORMAT, 3, 3, "line 3 (round 3)", "not the expected key");

    /* Line 2 keeps A's key in "pubkey" but carries B's signature. */
    read_lines(good, &ls);
    assert_int_equal(fp_ledger_entry_parse(ls.line[1], strlen(ls.line[1]), &e), FP_OK);
    assert_int_equal(fp_ledger_entry_sign(&e, g_key_b, &line, NULL), FP_OK);
    char *sig_b = strstr(line, "\"sig\":\"");
    char *sig_a = strstr(ls.line[1], "\"sig\":\"");
    assert_non_null(sig_a);
    assert_non_null(sig_b);
    memcpy(sig_a, sig_b, 7 + 128);
    free(line);
    fp_ledger_entry_clear(&e);
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 2, 2, "line 2 (round 2)", "signature does not verify");

    /* The whole ledger written by B: pinned to A, line 1 is refused. */
    make_ledger(bad, g_key_b, 2);
    expect_fail(bad, g_key_a, FP_ERR_FORMAT, 1, 1, "line 1 (round 1)", "not the expected key");
    expect_ok(bad, NULL, 2);

    /* The key holder signs an entry whose ε is not what its parameters give. */
    read_lines(good, &ls);
    assert_int_equal(fp_ledger_entry_parse(ls.line[2], strlen(ls.line[2]), &e), FP_OK);
    e.eps *= 0.999;
    assert_int_equal(fp_ledger_entry_sign(&e, g_key_a, &line, NULL), FP_OK);
    fp_ledger_entry_clear(&e);
    free(ls.line[2]);
    ls.line[2] = line;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_NUMERIC, 3, 3, "line 3 (round 3)", "cumulative ε recorded as");

    /* ... or a σ larger than the one its ε was computed for. */
    read_lines(good, &ls);
    assert_int_equal(fp_ledger_entry_parse(ls.line[1], strlen(ls.line[1]), &e), FP_OK);
    e.spend.sigma = 2.0;
    assert_int_equal(fp_ledger_entry_sign(&e, g_key_a, &line, NULL), FP_OK);
    fp_ledger_entry_clear(&e);
    free(ls.line[1]);
    ls.line[1] = line;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_NUMERIC, 2, 2, "line 2 (round 2)", "recorded as");

    /* ... or a best order that is not one. */
    read_lines(good, &ls);
    assert_int_equal(fp_ledger_entry_parse(ls.line[3], strlen(ls.line[3]), &e), FP_OK);
    e.order = 63;
    assert_int_equal(fp_ledger_entry_sign(&e, g_key_a, &line, NULL), FP_OK);
    fp_ledger_entry_clear(&e);
    free(ls.line[3]);
    ls.line[3] = line;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_NUMERIC, 4, 4, "line 4 (round 4)", "order");

    /* ... or ε past the budget it claims. */
    read_lines(good, &ls);
    assert_int_equal(fp_ledger_entry_parse(ls.line[3], strlen(ls.line[3]), &e), FP_OK);
    e.budget = e.eps / 2;
    assert_int_equal(fp_ledger_entry_sign(&e, g_key_a, &line, NULL), FP_OK);
    fp_ledger_entry_clear(&e);
    free(ls.line[3]);
    ls.line[3] = line;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_RANGE, 4, 4, "line 4 (round 4)", "budget");

    /* ... or a replayed round re-signed into the chain. */
    read_lines(good, &ls);
    assert_int_equal(fp_ledger_entry_parse(ls.line[3], strlen(ls.line[3]), &e), FP_OK);
    e.spend.round = 2;
    assert_int_equal(fp_ledger_entry_sign(&e, g_key_a, &line, NULL), FP_OK);
    fp_ledger_entry_clear(&e);
    free(ls.line[3]);
    ls.line[3] = line;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 4, 2, "line 4 (round 2)", "does not come after round 3");

    /* Within tolerance (1e-12 relative on the last entry): accepted. */
    read_lines(good, &ls);
    assert_int_equal(fp_ledger_entry_parse(ls.line[3], strlen(ls.line[3]), &e), FP_OK);
    e.eps *= 1 + 1e-12;
    assert_int_equal(fp_ledger_entry_sign(&e, g_key_a, &line, NULL), FP_OK);
    fp_ledger_entry_clear(&e);
    free(ls.line[3]);
    ls.line[3] = line;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_ok(bad, NULL, 4);
}

static void test_torn_tail(void **state)
{
    (void)state;
    const char *path = tpath("torn.jsonl"), *spare = tpath("torn-spare.jsonl");
    make_ledger(path, g_key_a, 3);
    make_ledger(spare, g_key_a, 4);
    size_t n0, n_spare;
    char *clean = slurp(path, &n0), *four = slurp(spare, &n_spare);
    /* A crash while appending entry 4: its first 57 bytes, no newline. */
    char *torn = malloc(n0 + 57);
    assert_non_null(torn);
    memcpy(torn, clean, n0);
    memcpy(torn + n0, four + n0, 57);
    spit(path, torn, n0 + 57);
    fp_ledger_report_t *r = NULL;
    assert_int_equal(fp_ledger_verify_file(path, NULL, &r), FP_OK);
    assert_int_equal(r->n_rows, 3);
    assert_int_equal(r->torn_line, 4);
    assert_int_equal(r->torn_bytes, 57);
    char *json = NULL;
    assert_int_equal(fp_ledger_report_json(r, &json), FP_OK);
    assert_non_null(strstr(json, "\"torn_line\":{\"line\":4,\"bytes\":57}"));
    free(json);
    fp_ledger_report_free(r);
    /* Opening recovers: the fragment is cut off and appending continues the chain. */
    fp_ledger_t *l = open_ledger(path, g_key_a, "alice", 100);
    assert_int_equal(fp_ledger_recovered_bytes(l), 57);
    assert_int_equal(fp_ledger_entries(l), 3);
    size_t n1;
    char *now = slurp(path, &n1);
    assert_int_equal(n1, n0);
    assert_memory_equal(now, clean, n0);
    free(now);
    fp_ledger_spend_t s = spend_of(4);
    assert_int_equal(fp_ledger_append(l, &s, NULL, NULL), FP_OK);
    fp_ledger_close(l);
    expect_ok(path, g_key_a, 4);

    /* A torn write may leave zeros (the size grew, the data did not land). */
    memset(torn + n0, 0, 57);
    spit(path, torn, n0 + 57);
    l = open_ledger(path, g_key_a, "alice", 100);
    assert_int_equal(fp_ledger_recovered_bytes(l), 57);
    fp_ledger_close(l);

    /* Anything else is an error and the file stays as it is: a garbage line with its newline, */
    memcpy(torn + n0, "{\"v\":1,\"kind\":\"client\"\n", 24);
    spit(path, torn, n0 + 24);
    fp_ledger_options_t opt = {.client_id = "alice", .budget_epsilon = 100};
    l = NULL;
    assert_int_not_equal(fp_ledger_open(path, g_key_a, &opt, &l), FP_OK);
    assert_null(l);
    assert_non_null(strstr(fp_error_message(), "line 4"));
    now = slurp(path, &n1);
    assert_int_equal(n1, n0 + 24);
    free(now);
    /* or an unterminated tail longer than any entry. */
    char *big = malloc(n0 + FP_LEDGER_MAX_LINE + 100);
    assert_non_null(big);
    memcpy(big, clean, n0);
    memset(big + n0, 'x', FP_LEDGER_MAX_LINE + 100);
    spit(path, big, n0 + FP_LEDGER_MAX_LINE + 100);
    assert_int_equal(fp_ledger_open(path, g_key_a, &opt, &l), FP_ERR_FORMAT);
    assert_non_null(strstr(fp_error_message(), "not a torn entry"));
    now = slurp(path, &n1);
    assert_int_equal(n1, n0 + FP_LEDGER_MAX_LINE + 100);
    free(now);
    free(big);
    free(torn);
    free(clean);
    free(four);
}

static void test_budget_refusal(void **state)
{
    (void)state;
    const char *path = tpath("budget.jsonl");
    unlink(path);
    /* The budget lies between ε after two rounds and ε after three. */
    double e2 = 0, e3 = 0;
    assert_int_equal(fp_dp_epsilon(0.01, 1.1, 200, 1e-5, FP_DP_CONVERSION_IMPROVED, &e2, NULL), FP_OK);
    assert_int_equal(fp_dp_epsilon(0.01, 1.1, 300, 1e-5, FP_DP_CONVERSION_IMPROVED, &e3, NULL), FP_OK);
    double budget = (e2 + e3) / 2;
    fp_ledger_t *l = open_ledger(path, g_key_a, "alice", budget);
    for (int r = 1; r <= 2; r++) {
        fp_ledger_spend_t s = spend_of(r);
        assert_int_equal(fp_ledger_append(l, &s, NULL, NULL), FP_OK);
    }
    size_t n0, n1;
    char *before = slurp(path, &n0);
    fp_ledger_spend_t s = spend_of(3);
    double proj = 0, after = 0;
    assert_int_equal(fp_ledger_project(l, &s, &proj, NULL), FP_OK);
    assert_true(rel(proj, e3) < 1e-12);
    assert_int_equal(fp_ledger_admit(l, &s, &after), FP_ERR_RANGE);
    assert_true(after == proj);
    char *line = (char *)1;
    assert_int_equal(fp_ledger_append(l, &s, &after, &line), FP_ERR_RANGE);
    assert_null(line);
    assert_true(after == proj);
    assert_non_null(strstr(fp_error_message(), "past the budget"));
    assert_non_null(strstr(fp_error_message(), "round 3"));
    assert_int_equal(fp_ledger_entries(l), 2);
    char *now = slurp(path, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, now, n0);
    free(now);
    /* A cheaper round still fits; σ = 0 (ε = ∞) never does. */
    s.steps = 1;
    assert_int_equal(fp_ledger_append(l, &s, &after, NULL), FP_OK);
    assert_true(after <= budget);
    fp_ledger_spend_t s0 = spend_of(4);
    s0.sigma = 0;
    assert_int_equal(fp_ledger_append(l, &s0, &after, NULL), FP_ERR_RANGE);
    assert_true(isinf(after));
    fp_ledger_close(l);
    free(before);
    expect_ok(path, NULL, 3);
}

static void test_no_double_spend(void **state)
{
    (void)state;
    const char *path = tpath("twice.jsonl");
    make_ledger(path, g_key_a, 3);
    size_t n0, n1;
    char *before = slurp(path, &n0);
    /* After a "crash" (the process ended after the fsync, before or after releasing the update),
     * the reopened ledger knows every spent round. */
    fp_ledger_t *l = open_ledger(path, g_key_a, "alice", 100);
    double eps = fp_ledger_epsilon(l);
    for (int r = 1; r <= 3; r++) {
        assert_true(fp_ledger_has_round(l, r));
        fp_ledger_spend_t s = spend_of(r);
        assert_int_equal(fp_ledger_admit(l, &s, NULL), FP_ERR_INVALID);
        assert_non_null(strstr(fp_error_message(), "already in the ledger"));
        assert_int_equal(fp_ledger_append(l, &s, NULL, NULL), FP_ERR_INVALID);
    }
    assert_false(fp_ledger_has_round(l, 0));
    assert_false(fp_ledger_has_round(l, 4));
    fp_ledger_spend_t old = spend_of(0); /* older than the last round: stale */
    assert_int_equal(fp_ledger_append(l, &old, NULL, NULL), FP_ERR_INVALID);
    assert_non_null(strstr(fp_error_message(), "older"));
    assert_true(fp_ledger_epsilon(l) == eps);
    char *now = slurp(path, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, now, n0);
    free(now);
    free(before);
    /* One writer per ledger: a second handle is refused while the first is open. */
    fp_ledger_options_t opt = {.client_id = "alice", .budget_epsilon = 100};
    fp_ledger_t *l2 = NULL;
    assert_int_equal(fp_ledger_open(path, g_key_a, &opt, &l2), FP_ERR_INVALID);
    assert_null(l2);
    assert_non_null(strstr(fp_error_message(), "another handle"));
    /* Verification (read-only) works meanwhile. */
    expect_ok(path, NULL, 3);
    fp_ledger_spend_t s = spend_of(4);
    assert_int_equal(fp_ledger_append(l, &s, NULL, NULL), FP_OK);
    fp_ledger_close(l);
    l = open_ledger(path, g_key_a, "alice", 100);
    assert_int_equal(fp_ledger_entries(l), 4);
    fp_ledger_close(l);
}

static void test_federation(void **state)
{
    (void)state;
    const char *pa = tpath("fa.jsonl"), *pb = tpath("fb.jsonl"), *pf = tpath("fed.jsonl"),
               *bad = tpath("fed-bad.jsonl");
    unlink(pa);
    unlink(pb);
    unlink(pf);
    fp_ledger_t *la = open_ledger(pa, g_key_a, "alice", 100), *lb = open_ledger(pb, g_key_b, "bob", 100);
    fp_ledger_fed_t *f = NULL;
    assert_int_equal(fp_ledger_fed_open(pf, g_key_c, &f), FP_OK);
    char *line = NULL, *fed = NULL;
    fp_ledger_entry_t e;
    for (int r = 1; r <= 3; r++) {
        fp_ledger_spend_t s = spend_of(r);
        assert_int_equal(fp_ledger_append(la, &s, NULL, &line), FP_OK);
        assert_int_equal(fp_ledger_fed_append(f, line, strlen(line), NULL, &e, &fed), FP_OK);
        assert_string_equal(e.client, "alice");
        assert_int_equal(e.spend.round, r);
        fp_ledger_entry_clear(&e);
        assert_non_null(fed);
        assert_non_null(strstr(fed, "\"kind\":\"federation\""));
        free(fed);
        free(line);
        s.sigma = 2.0;
        assert_int_equal(fp_ledger_append(lb, &s, NULL, &line), FP_OK);
        assert_int_equal(fp_ledger_fed_append(f, line, strlen(line), g_key_b, NULL, &fed), FP_OK);
        free(fed);
        if (r < 3)
            free(line);
    }
    /* A retry of the last accepted line is a no-op. */
    assert_int_equal(fp_ledger_fed_append(f, line, strlen(line), NULL, NULL, &fed), FP_OK);
    assert_null(fed);
    /* A line from bob presented as signed by alice's key is refused. */
    assert_int_equal(fp_ledger_fed_append(f, line, strlen(line), g_key_a, NULL, NULL), FP_ERR_FORMAT);
    free(line);
    assert_int_equal(fp_ledger_fed_entries(f), 6);

    /* A gap: the coordinator never saw alice's entry 4 (a lost push); it asks for it first. */
    char *l4 = NULL, *l5 = NULL;
    fp_ledger_spend_t s4 = spend_of(4), s5 = spend_of(5);
    assert_int_equal(fp_ledger_append(la, &s4, NULL, &l4), FP_OK);
    assert_int_equal(fp_ledger_append(la, &s5, NULL, &l5), FP_OK);
    assert_int_equal(fp_ledger_fed_append(f, l5, strlen(l5), NULL, NULL, NULL), FP_ERR_NOT_FOUND);
    assert_non_null(strstr(fp_error_message(), "send entries 4 to 4 first"));
    assert_int_equal(fp_ledger_fed_next_seq(f, "alice"), 4);
    assert_int_equal(fp_ledger_fed_next_seq(f, "nobody"), 1);
    char *resend = NULL;
    assert_int_equal(fp_ledger_read_line(la, 4, &resend, NULL), FP_OK);
    assert_string_equal(resend, l4);
    assert_int_equal(fp_ledger_fed_append(f, resend, strlen(resend), NULL, NULL, NULL), FP_OK);
    assert_int_equal(fp_ledger_fed_append(f, l5, strlen(l5), NULL, NULL, NULL), FP_OK);
    /* An older entry again (not the last one) is refused. */
    assert_int_equal(fp_ledger_fed_append(f, l4, strlen(l4), NULL, NULL, NULL), FP_ERR_INVALID);
    assert_non_null(strstr(fp_error_message(), "already recorded"));
    free(resend);
    free(l4);
    free(l5);

    /* Bob signing an entry in alice's name, and alice lying about her ε, are refused. */
    char *l6 = NULL, *forged = NULL;
    fp_ledger_spend_t s6 = spend_of(6);
    assert_int_equal(fp_ledger_append(la, &s6, NULL, &l6), FP_OK);
    assert_int_equal(fp_ledger_entry_parse(l6, strlen(l6), &e), FP_OK);
    assert_int_equal(fp_ledger_entry_sign(&e, g_key_b, &forged, NULL), FP_OK);
    assert_int_equal(fp_ledger_fed_append(f, forged, strlen(forged), NULL, NULL, NULL), FP_ERR_FORMAT);
    assert_non_null(strstr(fp_error_message(), "client alice, round 6"));
    free(forged);
    e.eps *= 0.9;
    assert_int_equal(fp_ledger_entry_sign(&e, g_key_a, &forged, NULL), FP_OK);
    fp_ledger_entry_clear(&e);
    assert_int_equal(fp_ledger_fed_append(f, forged, strlen(forged), NULL, NULL, NULL), FP_ERR_NUMERIC);
    free(forged);
    assert_int_equal(fp_ledger_fed_append(f, l6, strlen(l6), NULL, NULL, NULL), FP_OK);
    free(l6);
    /* Garbage from a client is an error, never a crash. */
    assert_int_equal(fp_ledger_fed_append(f, "{", 1, NULL, NULL, NULL), FP_ERR_PARSE);
    assert_int_equal(fp_ledger_fed_append(f, "", 0, NULL, NULL, NULL), FP_ERR_PARSE);

    double ea = 0, eb = 0;
    int64_t na = 0;
    assert_int_equal(fp_ledger_fed_client_epsilon(f, "alice", &ea, &na), FP_OK);
    assert_true(ea == fp_ledger_epsilon(la));
    assert_int_equal(na, 6);
    assert_int_equal(fp_ledger_fed_client_epsilon(f, "bob", &eb, NULL), FP_OK);
    assert_true(eb == fp_ledger_epsilon(lb));
    assert_int_equal(fp_ledger_fed_entries(f), 9);
    fp_ledger_fed_close(f);
    fp_ledger_close(la);
    fp_ledger_close(lb);

    /* Offline verification: trust on first use, or pinned to the coordinator or one client. */
    fp_ledger_report_t *r = NULL;
    assert_int_equal(fp_ledger_verify_file(pf, NULL, &r), FP_OK);
    assert_int_equal(r->kind, FP_LEDGER_KIND_FEDERATION);
    assert_int_equal(r->n_rows, 9);
    assert_int_equal(r->n_clients, 2);
    assert_int_equal(r->coordinator_pinned, 0);
    assert_string_equal(r->clients[0].id, "alice");
    assert_string_equal(r->clients[1].id, "bob");
    assert_true(r->clients[0].eps == ea);
    assert_true(r->clients[1].eps == eb);
    assert_int_equal(r->clients[0].entries, 6);
    assert_int_equal(r->rows[1].client, 1);
    assert_int_equal(r->rows[1].seq, 1);
    char *svg = NULL;
    assert_int_equal(fp_ledger_report_svg(r, &svg), FP_OK);
    assert_non_null(strstr(svg, "bob"));
    free(svg);
    fp_ledger_report_free(r);
    assert_int_equal(fp_ledger_verify_file(pf, g_key_c, &r), FP_OK);
    assert_int_equal(r->coordinator_pinned, 1);
    assert_int_equal(r->clients[0].pinned + r->clients[1].pinned, 0);
    fp_ledger_report_free(r);
    assert_int_equal(fp_ledger_verify_file(pf, g_key_b, &r), FP_OK);
    assert_int_equal(r->coordinator_pinned, 0);
    assert_int_equal(r->clients[1].pinned, 1);
    assert_int_equal(r->clients[0].pinned, 0);
    fp_ledger_report_free(r);
    fp_ledger_key_t *stranger = NULL;
    assert_int_equal(fp_ledger_key_generate(&stranger), FP_OK);
    expect_fail(pf, stranger, FP_ERR_FORMAT, 0, -1, "neither the coordinator's", NULL);
    fp_ledger_key_free(stranger);

    /* Reopening restores the state; another coordinator key is refused. */
    assert_int_equal(fp_ledger_fed_open(pf, g_key_c, &f), FP_OK);
    assert_int_equal(fp_ledger_fed_entries(f), 9);
    assert_int_equal(fp_ledger_fed_next_seq(f, "alice"), 7);
    fp_ledger_fed_close(f);
    f = NULL;
    assert_int_equal(fp_ledger_fed_open(pf, g_key_a, &f), FP_ERR_FORMAT);
    assert_null(f);
    assert_non_null(strstr(fp_error_message(), "not this coordinator's key"));

    /* Tampering: a countersignature, an embedded entry, a deleted line, a client line alone. */
    lines_t ls;
    read_lines(pf, &ls);
    char *cs = strstr(ls.line[1], "\"cosig\":\"");
    assert_non_null(cs);
    cs[12] = cs[12] == 'a' ? 'b' : 'a';
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 2, 1, "line 2", "countersignature does not verify");

    read_lines(pf, &ls);
    edit(&ls.line[2], "\\\"sigma\\\":1.1,", "\\\"sigma\\\":1.3,");
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 3, 2, "line 3", "countersignature does not verify");

    read_lines(pf, &ls);
    free(ls.line[3]);
    memmove(&ls.line[3], &ls.line[4], (ls.n - 4) * sizeof ls.line[0]);
    ls.n--;
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 4, -2, "line 4", "federation seq 5 where 4 was expected");

    read_lines(pf, &ls);
    lines_t cl;
    read_lines(pa, &cl);
    free(ls.line[2]);
    ls.line[2] = strdup(cl.line[0]);
    free_lines(&cl);
    write_lines(bad, &ls);
    free_lines(&ls);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 3, -1, "line 3", "client entry where a federation line was expected");
    /* A client ledger is verified as one (kind from its first line); its last entry is the one the
     * federation ledger holds for it (how a truncated copy would show). */
    expect_ok(pa, g_key_a, 6);
    fp_ledger_report_t *rc = NULL, *rf = NULL;
    assert_int_equal(fp_ledger_verify_file(pa, NULL, &rc), FP_OK);
    assert_int_equal(fp_ledger_verify_file(pf, NULL, &rf), FP_OK);
    assert_string_equal(rc->clients[0].last_hash, rf->clients[0].last_hash);
    assert_int_equal(rc->clients[0].last_round, 6);
    assert_int_equal(rf->clients[0].last_round, 6);
    assert_string_not_equal(rf->clients[0].last_hash, rf->clients[1].last_hash);
    fp_ledger_report_free(rc);
    fp_ledger_report_free(rf);
}

static void test_bad_lines(void **state)
{
    (void)state;
    const char *good = tpath("bad-good.jsonl"), *bad = tpath("bad-bad.jsonl");
    make_ledger(good, g_key_a, 2);
    static const struct {
        const char *from, *to, *word;
    } edits[] = {
        {"\"sigma\":1.1,", "", "missing field 'sigma'"},
        {"\"round\":2,", "\"round\":\"2\",", "field 'round' must be an integer, not a string"},
        {"\"q\":0.01,", "\"q\":\"0.01\",", "field 'q' must be a number"},
        {"\"q\":0.01,", "\"q\":null,", "field 'q' must be a number, not null"},
        {"\"steps\":100,", "\"steps\":100.5,", "field 'steps' must be an integer, not a fraction"},
        {"\"orders\":[", "\"orders\":{\"a\":[", "not a JSON object"},
        {"{\"v\":1,", "{\"v\":1,\"extra\":0,", "unknown field 'extra'"},
        {"\"q\":0.01,", "\"q\":NaN,", "field 'q' is not a finite number"},
        {"\"q\":0.01,", "\"q\":0.01,\"q\":0.01,", "canonical"},
        {"\"q\":0.01,", "\"q\": 0.01,", "canonical"},
        {"\"q\":0.01,", "\"q\":1e-2,", "canonical"},
        {"\"q\":0.01,", "\"q\":1.5,", "q = 1.5 is not a sampling rate"},
        {"\"delta\":1e-05,", "\"delta\":2,", "delta = 2 is not in (0, 1)"},
        {"\"sigma\":1.1,", "\"sigma\":1e-9,", "sigma = 1e-09 is neither 0 nor"},
        {"\"round\":2,", "\"round\":-2,", "field 'round' is not in"},
        {"\"round\":2,", "\"round\":99999999999999999999,", "field 'round' is not in"},
        {"\"seq\":2,", "\"seq\":0,", "field 'seq' is not a positive integer"},
        {"\"unit\":\"record\"", "\"unit\":\"user\"", "field 'unit' is 'user'"},
        {"\"conversion\":\"improved\"", "\"conversion\":\"exact\"", "field 'conversion' is 'exact'"},
        {"\"orders\":[1.1,", "\"orders\":[0.5,", "RDP order 0.5 is not in"},
        {"\"orders\":[1.1,", "\"orders\":[\"x\",", "field 'orders' holds a string"},
        {"\"kind\":\"client\"", "\"kind\":\"ledger\"", "kind 'ledger' is neither"},
        {"{\"v\":1,", "{\"v\":2,", "format version 2"},
        {"\"client\":\"alice\"", "\"client\":\"al\\\"ice\"", "field 'client' must be"},
        {"\"client\":\"alice\"", "\"client\":\"al\\u0000ice\"", "field 'client' must be"},
        {"\"client\":\"alice\"", "\"client\":\"\"", "field 'client' must be"},
        {"\"time\":\"", "\"time\":\"x", "field 'time' is not a UTC time"},
        {"\"prev\":\"", "\"prev\":\"A", "field 'prev' must be 64 lowercase hex digits"},
        {"\"eps\":", "\"eps\":-", "negative epsilon"},
        {"\"budget\":100,", "\"budget\":0,", "field 'budget' must be > 0"},
        {"\"budget\":100,", "\"budget\":1e999,", "field 'budget' is not a finite number"},
    };
    for (size_t k = 0; k < sizeof edits / sizeof edits[0]; k++) {
        lines_t ls;
        read_lines(good, &ls);
        edit(&ls.line[1], edits[k].from, edits[k].to);
        fp_ledger_entry_t e;
        fp_status st = fp_ledger_entry_parse(ls.line[1], strlen(ls.line[1]), &e);
        if (st == FP_OK || !strstr(fp_error_message(), edits[k].word))
            print_error("edit %zu: %s\n", k, fp_error_message());
        assert_int_not_equal(st, FP_OK);
        assert_non_null(strstr(fp_error_message(), edits[k].word));
        assert_null(e.orders);
        write_lines(bad, &ls);
        free_lines(&ls);
        expect_fail(bad, NULL, FP_OK, 2, -2, "line 2", edits[k].word);
        fp_ledger_options_t opt = {.client_id = "alice", .budget_epsilon = 100};
        fp_ledger_t *l = NULL;
        assert_int_not_equal(fp_ledger_open(bad, g_key_a, &opt, &l), FP_OK);
        assert_null(l);
    }
    /* Whole-line garbage. */
    static const struct {
        const char *text, *word;
    } lines[] = {
        {"hello", "not a JSON object"},
        {"[1,2]", "not a JSON object"},
        {"{}", "missing field 'v'"},
        {"{\"v\":1}", "missing field 'kind'"},
        {"{\"v\":\"1\",\"kind\":\"client\"}", "field 'v' must be an integer"},
        {"{\"v\":1,\"kind\":\"client\"}", "missing field"},
        {"{\"v\":1,\"kind\":\"federation\"}", "a federation line"},
        {"{\"v\":1,\"kind\":\"client\"} x", "text after the JSON object"},
        {"[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]", "not a JSON object"},
        {"{\"a\":\"\xff\xfe\"}", "not a JSON object"},
        {"\r", "not a JSON object"},
    };
    for (size_t k = 0; k < sizeof lines / sizeof lines[0]; k++) {
        lines_t ls;
        read_lines(good, &ls);
        free(ls.line[1]);
        ls.line[1] = strdup(lines[k].text);
        write_lines(bad, &ls);
        free_lines(&ls);
        expect_fail(bad, NULL, FP_OK, 2, -1, "line 2", lines[k].word);
    }
    /* An empty line, a NUL byte, an over-long line (client and federation limits). */
    size_t n;
    char *all = slurp(good, &n);
    char *buf = malloc(n + 300000);
    assert_non_null(buf);
    char *l2 = strchr(all, '\n') + 1;
    size_t n1 = (size_t)(l2 - all);
    memcpy(buf, all, n1);
    memcpy(buf + n1, "\n", 1);
    spit(bad, buf, n1 + 1);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 2, -1, "line 2", "empty line");
    memcpy(buf + n1, l2, n - n1);
    buf[n1 + 10] = '\0';
    spit(bad, buf, n);
    expect_fail(bad, NULL, FP_ERR_PARSE, 2, -1, "line 2", "NUL byte");
    memset(buf + n1, 'x', 100000);
    buf[n1 + 100000] = '\n';
    spit(bad, buf, n1 + 100001);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 2, -1, "line 2", "longer than 65536 bytes");
    memset(buf + n1, 'x', 299999);
    buf[n1 + 299999] = '\n';
    spit(bad, buf, n1 + 300000);
    expect_fail(bad, NULL, FP_ERR_FORMAT, 2, -1, "line 2", "longer than 262144 bytes");
    /* Bytes flipped anywhere in the first entry: always an error. */
    uint64_t x = 88172645463325252ull;
    for (int it = 0; it < 120; it++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(buf, all, n);
        size_t at = (size_t)(x % (n1 - 1));
        buf[at] = (char)(buf[at] ^ (1u << (x >> 32) % 8));
        spit(bad, buf, n);
        fp_ledger_report_t *r = NULL;
        fp_status st = fp_ledger_verify_file(bad, NULL, &r);
        if (st == FP_OK)
            print_error("flip at %zu not detected\n", at);
        assert_int_not_equal(st, FP_OK);
        assert_non_null(r);
        assert_true(r->fail_line == 1 || r->fail_line == 2);
        fp_ledger_report_free(r);
    }
    free(buf);
    free(all);
}

static void test_bad_api(void **state)
{
    (void)state;
    const char *path = tpath("api.jsonl");
    unlink(path);
    fp_ledger_t *l = (fp_ledger_t *)1;
    fp_ledger_options_t opt = {.client_id = "alice", .budget_epsilon = 10};
    assert_int_equal(fp_ledger_open(NULL, g_key_a, &opt, &l), FP_ERR_INVALID);
    assert_null(l);
    assert_int_equal(fp_ledger_open(path, NULL, &opt, &l), FP_ERR_INVALID);
    assert_int_equal(fp_ledger_open(path, g_key_a, NULL, &l), FP_ERR_INVALID);
    assert_int_equal(fp_ledger_open(path, g_key_a, &opt, NULL), FP_ERR_INVALID);
    static const char *bad_ids[] = {"", "a\"b", "back\\slash", "tab\there", "\xc3\xa9t\xc3\xa9", NULL};
    for (int k = 0; bad_ids[k]; k++) {
        fp_ledger_options_t o = {.client_id = bad_ids[k], .budget_epsilon = 10};
        assert_int_equal(fp_ledger_open(path, g_key_a, &o, &l), FP_ERR_INVALID);
    }
    char long_id[200];
    memset(long_id, 'a', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    opt.client_id = long_id;
    assert_int_equal(fp_ledger_open(path, g_key_a, &opt, &l), FP_ERR_INVALID);
    opt.client_id = "alice";
    static const double budgets[] = {0, -1, NAN, INFINITY};
    for (int k = 0; k < 4; k++) {
        fp_ledger_options_t o = {.client_id = "alice", .budget_epsilon = budgets[k]};
        assert_int_equal(fp_ledger_open(path, g_key_a, &o, &l), FP_ERR_INVALID);
    }
    static const double bad_orders[] = {2, 0.5};
    fp_ledger_options_t o = {.client_id = "alice", .budget_epsilon = 10, .orders = bad_orders, .n_orders = 2};
    assert_int_equal(fp_ledger_open(path, g_key_a, &o, &l), FP_ERR_INVALID);
    o.n_orders = 0;
    assert_int_equal(fp_ledger_open(path, g_key_a, &o, &l), FP_ERR_INVALID);
    char hex[65];
    fp_ledger_key_public_hex(g_key_a, hex);
    fp_ledger_key_t *pub = NULL;
    assert_int_equal(fp_ledger_key_from_hex(hex, &pub), FP_OK);
    assert_false(fp_ledger_key_has_private(pub));
    assert_true(fp_ledger_key_equal(pub, g_key_a));
    assert_false(fp_ledger_key_equal(pub, g_key_b));
    assert_int_equal(fp_ledger_open(path, pub, &opt, &l), FP_ERR_INVALID);
    assert_non_null(strstr(fp_error_message(), "private"));
    assert_int_equal(fp_ledger_fed_open(path, pub, (fp_ledger_fed_t **)&l), FP_ERR_INVALID);
    fp_ledger_key_free(pub);
    assert_int_equal(fp_ledger_key_from_hex("zz", &pub), FP_ERR_FORMAT);
    assert_int_equal(fp_ledger_open(tpath("no/such/dir/l.jsonl"), g_key_a, &opt, &l), FP_ERR_NOT_FOUND);

    /* Bad spends are refused and write nothing. */
    l = open_ledger(path, g_key_a, "alice", 10);
    fp_ledger_spend_t s = spend_of(1);
    assert_int_equal(fp_ledger_append(l, &s, NULL, NULL), FP_OK);
    size_t n0, n1;
    char *before = slurp(path, &n0);
    fp_ledger_spend_t bad[12];
    for (int k = 0; k < 12; k++)
        bad[k] = spend_of(2);
    bad[0].q = 1.5;
    bad[1].q = NAN;
    bad[2].sigma = 1e-9;
    bad[3].sigma = -1;
    bad[4].steps = -1;
    bad[5].delta = 0;
    bad[6].delta = 1;
    bad[7].clip = 0;
    bad[8].clip = INFINITY;
    bad[9].round = -1;
    bad[10].conversion = (fp_dp_conversion)7;
    bad[11].unit = (fp_ledger_unit)5;
    for (int k = 0; k < 12; k++) {
        double eps = 0;
        assert_int_equal(fp_ledger_append(l, &bad[k], NULL, NULL), FP_ERR_INVALID);
        assert_int_equal(fp_ledger_project(l, &bad[k], &eps, NULL), FP_ERR_INVALID);
    }
    assert_int_equal(fp_ledger_append(NULL, &s, NULL, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_ledger_append(l, NULL, NULL, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_ledger_project(l, &s, NULL, NULL), FP_ERR_INVALID);
    char *line = NULL;
    assert_int_equal(fp_ledger_read_line(l, 0, &line, NULL), FP_ERR_NOT_FOUND);
    assert_int_equal(fp_ledger_read_line(l, 2, &line, NULL), FP_ERR_NOT_FOUND);
    assert_null(line);
    char *now = slurp(path, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, now, n0);
    free(now);
    free(before);
    fp_ledger_close(l);

    /* Entry signing and parsing. */
    fp_ledger_entry_t e;
    memset(&e, 0, sizeof e);
    assert_int_equal(fp_ledger_entry_sign(&e, g_key_a, &line, NULL), FP_ERR_INVALID); /* empty client id */
    assert_int_equal(fp_ledger_entry_parse(NULL, 0, &e), FP_ERR_INVALID);
    assert_int_equal(fp_ledger_entry_parse("{}", 2, NULL), FP_ERR_INVALID);

    /* Verification of what is not a ledger file. */
    fp_ledger_report_t *r = (fp_ledger_report_t *)1;
    assert_int_equal(fp_ledger_verify_file(tpath("missing.jsonl"), NULL, &r), FP_ERR_NOT_FOUND);
    assert_null(r);
    assert_int_equal(fp_ledger_verify_file(g_dir, NULL, &r), FP_ERR_IO);
    assert_null(r);
    assert_int_equal(fp_ledger_verify_file(NULL, NULL, &r), FP_ERR_INVALID);
    assert_int_equal(fp_ledger_verify_file(path, NULL, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_ledger_report_print(NULL, stdout), FP_ERR_INVALID);
    assert_int_equal(fp_ledger_report_json(NULL, &line), FP_ERR_INVALID);
    assert_int_equal(fp_ledger_report_svg(NULL, &line), FP_ERR_INVALID);

    /* Names. */
    fp_ledger_unit u;
    assert_int_equal(fp_ledger_unit_parse("client", &u), FP_OK);
    assert_int_equal(u, FP_LEDGER_UNIT_CLIENT);
    assert_int_equal(fp_ledger_unit_parse("record", &u), FP_OK);
    assert_int_equal(u, FP_LEDGER_UNIT_RECORD);
    assert_int_equal(fp_ledger_unit_parse("user", &u), FP_ERR_INVALID);
    assert_int_equal(fp_ledger_unit_parse(NULL, &u), FP_ERR_INVALID);
    assert_string_equal(fp_ledger_unit_name((fp_ledger_unit)9), "?");

    /* NULL is a no-op for every destructor. */
    fp_ledger_close(NULL);
    fp_ledger_fed_close(NULL);
    fp_ledger_report_free(NULL);
    fp_ledger_key_free(NULL);
    fp_ledger_entry_clear(NULL);
    assert_int_equal(fp_ledger_entries(NULL), 0);
    assert_false(fp_ledger_has_round(NULL, 1));
}

static void test_keys(void **state)
{
    (void)state;
    char dir[300];
    snprintf(dir, sizeof dir, "%s/keys", g_dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(fp_ledger_key_save(g_key_a, dir), FP_OK);
    char priv[400], pubp[400];
    snprintf(priv, sizeof priv, "%s/%s", dir, FP_LEDGER_KEY_FILE);
    snprintf(pubp, sizeof pubp, "%s/%s", dir, FP_LEDGER_PUBKEY_FILE);
    struct stat sb;
    assert_int_equal(stat(priv, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(stat(pubp, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0644);
    fp_ledger_key_t *k = NULL;
    assert_int_equal(fp_ledger_key_load(priv, &k), FP_OK);
    assert_true(fp_ledger_key_has_private(k));
    assert_true(fp_ledger_key_equal(k, g_key_a));
    fp_ledger_key_free(k);
    assert_int_equal(fp_ledger_key_load(pubp, &k), FP_OK);
    assert_false(fp_ledger_key_has_private(k));
    assert_true(fp_ledger_key_equal(k, g_key_a));
    /* A public key cannot be saved as a pair; an existing pair is never overwritten. */
    assert_int_equal(fp_ledger_key_save(k, dir), FP_ERR_INVALID);
    fp_ledger_key_free(k);
    assert_int_equal(fp_ledger_key_save(g_key_b, dir), FP_ERR_INVALID);
    assert_non_null(strstr(fp_error_message(), "refusing to overwrite"));
    assert_int_equal(fp_ledger_key_load(priv, &k), FP_OK);
    assert_true(fp_ledger_key_equal(k, g_key_a));
    fp_ledger_key_free(k);
    /* load_or_create: loads an existing key, creates a missing one. */
    int created = -1;
    assert_int_equal(fp_ledger_key_load_or_create(dir, &k, &created), FP_OK);
    assert_int_equal(created, 0);
    assert_true(fp_ledger_key_equal(k, g_key_a));
    fp_ledger_key_free(k);
    char dir2[300];
    snprintf(dir2, sizeof dir2, "%s/keys2", g_dir);
    assert_int_equal(mkdir(dir2, 0700), 0);
    assert_int_equal(fp_ledger_key_load_or_create(dir2, &k, &created), FP_OK);
    assert_int_equal(created, 1);
    fp_ledger_key_t *again = NULL;
    assert_int_equal(fp_ledger_key_load_or_create(dir2, &again, &created), FP_OK);
    assert_int_equal(created, 0);
    assert_true(fp_ledger_key_equal(k, again));
    fp_ledger_key_free(again);
    fp_ledger_key_free(k);
    /* Bad key files. */
    assert_int_equal(fp_ledger_key_load(tpath("nokey.pem"), &k), FP_ERR_NOT_FOUND);
    assert_null(k);
    const char *junk = tpath("junk.pem");
    spit(junk, "hello\n", 6);
    assert_int_equal(fp_ledger_key_load(junk, &k), FP_ERR_FORMAT);
    spit(junk, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", 56);
    assert_int_equal(fp_ledger_key_load(junk, &k), FP_ERR_FORMAT);
    /* An X25519 key is not an Ed25519 one; an encrypted key is refused without a prompt. */
    EVP_PKEY *x = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
    assert_non_null(x);
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, x, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    assert_int_equal(fp_ledger_key_load(junk, &k), FP_ERR_FORMAT);
    assert_non_null(strstr(fp_error_message(), "not an Ed25519 key"));
    EVP_PKEY_free(x);
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    f = fopen(junk, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PKCS8PrivateKey(f, ed, EVP_aes_256_cbc(), "secret", 6, NULL, NULL), 1);
    fclose(f);
    EVP_PKEY_free(ed);
    assert_int_equal(fp_ledger_key_load(junk, &k), FP_ERR_FORMAT);
    assert_null(k);
    assert_int_equal(fp_ledger_key_load(NULL, &k), FP_ERR_INVALID);
    assert_int_equal(fp_ledger_key_generate(NULL), FP_ERR_INVALID);
}

/* ------------------------------------------------------------------------------------------------ CLI */

typedef struct {
    int status; /* exit status, or -1 if it did not exit normally */
    char out[65536];
} run_t;

static int have_audit(void)
{
    const char *bin = getenv("FEDPROF_AUDIT");
    return bin && bin[0] != '\0';
}

/* Run fedprof-audit with `args` (shell words), stdout and stderr together into r->out. */
static void audit(run_t *r, const char *args)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", getenv("FEDPROF_AUDIT"), args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(r->out, 1, sizeof r->out - 1, p);
    r->out[n] = '\0';
    int st = pclose(p);
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void expect_run(const char *args, int status, const char *w1, const char *w2)
{
    static run_t r;
    audit(&r, args);
    if (r.status != status || (w1 && !strstr(r.out, w1)) || (w2 && !strstr(r.out, w2)))
        print_error("fedprof-audit %s -> status %d, output:\n%s\n", args, r.status, r.out);
    assert_int_equal(r.status, status);
    if (w1)
        assert_non_null(strstr(r.out, w1));
    if (w2)
        assert_non_null(strstr(r.out, w2));
}

static void test_cli(void **state)
{
    (void)state;
    if (!have_audit())
        skip();
    /* Each run costs ~0.3 s under the sanitizers: one run per behaviour. */
    char args[1600];
    const char *kd = tpath("cli-keys"), *kd2 = tpath("cli-keys2");
    snprintf(args, sizeof args, "keygen --out '%s'", kd);
    expect_run(args, 0, "ledger-key.pem", "raw key");
    expect_run(args, 1, "refusing to overwrite", NULL);
    assert_int_equal(mkdir(kd2, 0700), 0);
    assert_int_equal(fp_ledger_key_save(g_key_b, kd2), FP_OK);
    char priv[400];
    snprintf(priv, sizeof priv, "%s/%s", kd, FP_LEDGER_KEY_FILE);
    fp_ledger_key_t *key = NULL;
    assert_int_equal(fp_ledger_key_load(priv, &key), FP_OK);
    const char *path = tpath("cli.jsonl"), *bad = tpath("cli-bad.jsonl"), *svg = tpath("cli.svg");
    make_ledger(path, key, 3);
    fp_ledger_key_free(key);

    snprintf(args, sizeof args, "verify '%s'", path);
    expect_run(args, 0, "verdict      OK: 3 entries", "trusted on first use");
    snprintf(args, sizeof args, "verify '%s' --pubkey '%s/%s'", path, kd, FP_LEDGER_PUBKEY_FILE);
    expect_run(args, 0, "pinned", "eps_round");
    snprintf(args, sizeof args, "verify --pubkey='%s/%s' '%s'", kd2, FP_LEDGER_PUBKEY_FILE, path);
    expect_run(args, 1, "FAILED at line 1 (round 1)", "not the expected key");
    snprintf(args, sizeof args, "verify '%s' --json --plot '%s'", path, svg);
    static run_t r;
    audit(&r, args);
    assert_int_equal(r.status, 0);
    json_object *root = json_tokener_parse(r.out);
    assert_non_null(root);
    json_object *v = NULL, *c = NULL;
    assert_true(json_object_object_get_ex(root, "ok", &v) && json_object_get_boolean(v));
    assert_true(json_object_object_get_ex(root, "entries", &v) && json_object_array_length(v) == 3);
    assert_true(json_object_object_get_ex(root, "clients", &v) && json_object_array_length(v) == 1);
    assert_true(json_object_object_get_ex(json_object_array_get_idx(v, 0), "key_source", &c));
    assert_string_equal(json_object_get_string(c), "first-entry");
    json_object_put(root);
    char *text = slurp(svg, NULL);
    assert_true(strncmp(text, "<?xml", 5) == 0);
    assert_non_null(strstr(text, "<svg"));
    assert_non_null(strstr(text, "</svg>"));
    assert_non_null(strstr(text, "alice"));
    free(text);

    /* A tampered ledger: exit 1, naming line and round. */
    lines_t ls;
    read_lines(path, &ls);
    edit(&ls.line[1], "\"steps\":100,", "\"steps\":1,");
    write_lines(bad, &ls);
    free_lines(&ls);
    snprintf(args, sizeof args, "verify '%s' --json", bad);
    audit(&r, args);
    assert_int_equal(r.status, 1);
    root = json_tokener_parse(r.out);
    assert_non_null(root);
    assert_true(json_object_object_get_ex(root, "ok", &v) && !json_object_get_boolean(v));
    assert_true(json_object_object_get_ex(root, "error", &v));
    assert_true(json_object_object_get_ex(v, "line", &c) && json_object_get_int(c) == 2);
    assert_true(json_object_object_get_ex(v, "round", &c) && json_object_get_int(c) == 2);
    assert_true(json_object_object_get_ex(v, "message", &c));
    assert_non_null(strstr(json_object_get_string(c), "signature does not verify"));
    json_object_put(root);

    /* A federation ledger. */
    const char *pf = tpath("cli-fed.jsonl");
    fp_ledger_fed_t *f = NULL;
    assert_int_equal(fp_ledger_fed_open(pf, g_key_c, &f), FP_OK);
    read_lines(path, &ls);
    for (size_t k = 0; k < ls.n; k++)
        assert_int_equal(fp_ledger_fed_append(f, ls.line[k], strlen(ls.line[k]), NULL, NULL, NULL), FP_OK);
    free_lines(&ls);
    fp_ledger_fed_close(f);
    snprintf(args, sizeof args, "verify '%s'", pf);
    expect_run(args, 0, "federation ledger (countersigned), 3 verified entries", "coordinator  key");

    /* Usage errors and unreadable files: exit 2. */
    expect_run("verify", 2, "LEDGER", NULL);
    snprintf(args, sizeof args, "verify '%s'", tpath("missing.jsonl"));
    expect_run(args, 2, "missing.jsonl", NULL);
    snprintf(args, sizeof args, "verify '%s' --pubkey '%s'", path, tpath("nokey.pem"));
    expect_run(args, 2, "--pubkey", NULL);
    expect_run("verify --help", 0, "LEDGER", "--plot");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),     cmocka_unit_test(test_parameters_recorded),
        cmocka_unit_test(test_tamper_field),  cmocka_unit_test(test_deleted_and_reordered),
        cmocka_unit_test(test_forged),        cmocka_unit_test(test_torn_tail),
        cmocka_unit_test(test_budget_refusal), cmocka_unit_test(test_no_double_spend),
        cmocka_unit_test(test_federation),    cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_bad_api),       cmocka_unit_test(test_keys),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
