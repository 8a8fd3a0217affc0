/* test_data: readers (happy paths and every bad input), leave-one-out split, batcher,
 * synthetic generator, partitioning, save/remap, and the real SASRec Games file when present.
 * Test files live in a mkdtemp directory under /tmp that the group teardown removes. */
#include <setjmp.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/data.h"

static char g_dir[64];

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void tpath(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

/* Write `len` bytes (or strlen when len == (size_t)-1) into g_dir/name; the path goes to out. */
static void write_file_n(char *out, size_t cap, const char *name, const char *content, size_t len)
{
    tpath(out, cap, name);
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    if (len == (size_t)-1)
        len = strlen(content);
    if (len)
        assert_int_equal(fwrite(content, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void write_file(char *out, size_t cap, const char *name, const char *content)
{
    write_file_n(out, cap, name, content, (size_t)-1);
}

static fp_dataset_t *load_ok(const char *name, const char *content, fp_data_format fmt)
{
    char path[256];
    write_file(path, sizeof path, name, content);
    fp_dataset_t *d = NULL;
    fp_status st = fp_data_load(path, fmt, &d);
    if (st != FP_OK)
        print_error("unexpected failure: %s\n", fp_error_message());
    assert_int_equal(st, FP_OK);
    assert_non_null(d);
    unlink(path);
    return d;
}

/* Load must fail with `code` and a message containing "PATH:LINE:". */
static void expect_fail_n(const char *name, const char *content, size_t len, fp_data_format fmt, fp_status code,
                          long line)
{
    char path[256], want[320];
    write_file_n(path, sizeof path, name, content, len);
    fp_dataset_t *d = (fp_dataset_t *)0x1;
    fp_error_clear();
    fp_status st = fp_data_load(path, fmt, &d);
    if (st != code || !strstr(fp_error_message(), path))
        print_error("file %s: status %d, message '%s'\n", name, st, fp_error_message());
    assert_int_equal(st, code);
    assert_null(d);
    snprintf(want, sizeof want, "%s:%ld:", path, line);
    if (!strstr(fp_error_message(), want))
        print_error("expected '%s' in '%s'\n", want, fp_error_message());
    assert_non_null(strstr(fp_error_message(), want));
    unlink(path);
}

static void expect_fail(const char *name, const char *content, fp_data_format fmt, fp_status code, long line)
{
    expect_fail_n(name, content, (size_t)-1, fmt, code, line);
}

static void assert_user_items(const fp_dataset_t *d, int32_t u, const int32_t *want, int64_t n)
{
    assert_true(u >= 0 && u < d->n_users);
    assert_int_equal(d->offsets[u + 1] - d->offsets[u], n);
    for (int64_t k = 0; k < n; k++)
        assert_int_equal(d->items[d->offsets[u] + k], want[k]);
}

/* A hand-built dataset (NULL names) from per-user item lists, to test fp_dataset_free on
 * caller-made data too. */
static fp_dataset_t *make_dataset(int32_t n_users, int32_t n_items, const int32_t *lens, const int32_t *items)
{
    fp_dataset_t *d = calloc(1, sizeof *d);
    assert_non_null(d);
    d->n_users = n_users;
    d->n_items = n_items;
    d->offsets = calloc((size_t)n_users + 1, sizeof *d->offsets);
    assert_non_null(d->offsets);
    for (int32_t u = 0; u < n_users; u++)
        d->offsets[u + 1] = d->offsets[u] + lens[u];
    d->n_interactions = d->offsets[n_users];
    d->items = malloc((size_t)(d->n_interactions ? d->n_interactions : 1) * sizeof *d->items);
    assert_non_null(d->items);
    memcpy(d->items, items, (size_t)d->n_interactions * sizeof *d->items);
    return d;
}

static int group_setup(void **state)
{
    (void)state;
    strcpy(g_dir, "/tmp/fedprof_test_data_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    DIR *dir = opendir(g_dir);
    if (dir) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(dir)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
            unlink(p);
        }
        closedir(dir);
    }
    return rmdir(g_dir);
}

/* ------------------------------------------------------------------------------------------ */
/* Readers: happy paths                                                                        */
/* ------------------------------------------------------------------------------------------ */

static void test_text_basic(void **state)
{
    (void)state;
    /* Non-contiguous users, numeric item order, leading zeros, first-appearance user order. */
    fp_dataset_t *d = load_ok("basic.txt", "5 300\n3 20\n5 020\n5 100\n3 300\n", FP_FORMAT_TEXT);
    assert_int_equal(d->n_users, 2);
    assert_int_equal(d->n_items, 3);
    assert_int_equal(d->n_interactions, 5);
    assert_string_equal(d->user_names[0], "5");
    assert_string_equal(d->user_names[1], "3");
    assert_null(d->item_names[0]);
    assert_string_equal(d->item_names[1], "20");
    assert_string_equal(d->item_names[2], "100");
    assert_string_equal(d->item_names[3], "300");
    assert_user_items(d, 0, (const int32_t[]){3, 1, 2}, 3);
    assert_user_items(d, 1, (const int32_t[]){1, 3}, 2);
    assert_int_equal(fp_data_find_user(d, "3"), 1);
    assert_int_equal(fp_data_find_user(d, "5"), 0);
    assert_int_equal(fp_data_find_user(d, "4"), -1);
    assert_int_equal(fp_data_find_user(d, NULL), -1);
    assert_int_equal(fp_data_find_user(NULL, "5"), -1);
    fp_dataset_free(d);

    /* Ids already 1..N keep their ids; a third (timestamp) column is validated, order kept. */
    d = load_ok("ids.txt", "1 3 300\n1 1 100.5\n2 2 -7\n2 3 1e3\n", FP_FORMAT_AUTO);
    assert_int_equal(d->n_items, 3);
    assert_user_items(d, 0, (const int32_t[]){3, 1}, 2);
    assert_user_items(d, 1, (const int32_t[]){2, 3}, 2);
    for (int i = 1; i <= 3; i++) {
        char b[8];
        snprintf(b, sizeof b, "%d", i);
        assert_string_equal(d->item_names[i], b);
    }
    fp_dataset_free(d);

    /* '#' is data, so an all-digit line after it... is never reached: it is an error. */
    expect_fail("hash.txt", "# comment\n1 2\n", FP_FORMAT_TEXT, FP_ERR_PARSE, 1);
    fp_dataset_free(NULL);
}

static void test_text_whitespace_bom_crlf(void **state)
{
    (void)state;
    fp_dataset_t *d = load_ok("ws.txt", "\xEF\xBB\xBF" "1 10\r\n\r\n   \n\t1\t20  \r\n\n2   10", FP_FORMAT_AUTO);
    assert_int_equal(d->n_users, 2);
    assert_int_equal(d->n_items, 2);
    assert_user_items(d, 0, (const int32_t[]){1, 2}, 2);
    assert_user_items(d, 1, (const int32_t[]){1}, 1);
    assert_string_equal(d->user_names[0], "1");
    fp_dataset_free(d);

    /* Blank lines before the first content line, CRLF only. */
    d = load_ok("ws2.txt", "\r\n\r\n7 7\r\n", FP_FORMAT_TEXT);
    assert_int_equal(d->n_users, 1);
    assert_string_equal(d->item_names[1], "7");
    fp_dataset_free(d);
}

static void test_csv_basic(void **state)
{
    (void)state;
    /* String ids, first-appearance item order, timestamps reorder per user (stable for ties),
     * float timestamps. */
    fp_dataset_t *d = load_ok("ts.csv",
                              "user_id,item_id,timestamp\n"
                              "a,x,30\n"
                              "a,y,10\n"
                              "b,x,5\n"
                              "a,z,2e1\n"
                              "a,w,10.0\n"
                              "b,y,4.5\n",
                              FP_FORMAT_AUTO);
    assert_int_equal(d->n_users, 2);
    assert_int_equal(d->n_items, 4);
    assert_string_equal(d->item_names[1], "x");
    assert_string_equal(d->item_names[2], "y");
    assert_string_equal(d->item_names[3], "z");
    assert_string_equal(d->item_names[4], "w");
    assert_user_items(d, 0, (const int32_t[]){2, 4, 3, 1}, 4);
    assert_user_items(d, 1, (const int32_t[]){2, 1}, 2);
    assert_int_equal(fp_data_find_user(d, "b"), 1);
    fp_dataset_free(d);
}

static void test_csv_columns_quotes(void **state)
{
    (void)state;
    fp_dataset_t *d = load_ok("cols.csv",
                              "\xEF\xBB\xBF" "rating,ITEM_ID,extra,Timestamp,user_id\r\n"
                              "5,\"item \"\"q\"\"\",foo,1700000000000000001,\"u,1\"\r\n"
                              "4, plain ,\"bar, baz\",1700000000000000000,\"u,1\"\r\n"
                              "\r\n"
                              "3,#x,,3, u2 \r\n",
                              FP_FORMAT_AUTO);
    assert_int_equal(d->n_users, 2);
    assert_int_equal(d->n_items, 3);
    assert_string_equal(d->user_names[0], "u,1");
    assert_string_equal(d->user_names[1], "u2");
    assert_string_equal(d->item_names[1], "item \"q\"");
    assert_string_equal(d->item_names[2], "plain");
    assert_string_equal(d->item_names[3], "#x");
    /* ...000 sorts before ...001 */
    assert_user_items(d, 0, (const int32_t[]){2, 1}, 2);
    assert_user_items(d, 1, (const int32_t[]){3}, 1);
    fp_dataset_free(d);

    /* Numeric CSV item ids are ordered numerically; no timestamp column keeps file order.
     * AUTO detects CSV from the header even without a .csv name. */
    d = load_ok("num.txt", "user_id,item_id\nu1,30\nu1,5\nu2,100\nu2,5\n", FP_FORMAT_AUTO);
    assert_int_equal(d->n_items, 3);
    assert_string_equal(d->item_names[1], "5");
    assert_string_equal(d->item_names[2], "30");
    assert_string_equal(d->item_names[3], "100");
    assert_user_items(d, 0, (const int32_t[]){2, 1}, 2);
    assert_user_items(d, 1, (const int32_t[]){3, 1}, 2);
    fp_dataset_free(d);

    /* An id of exactly FP_DATA_MAX_ID_LEN bytes is fine. */
    char buf[FP_DATA_MAX_ID_LEN + 64];
    int n = snprintf(buf, sizeof buf, "user_id,item_id\nu,");
    memset(buf + n, 'i', FP_DATA_MAX_ID_LEN);
    strcpy(buf + n + FP_DATA_MAX_ID_LEN, "\n");
    d = load_ok("longid.csv", buf, FP_FORMAT_CSV);
    assert_int_equal(strlen(d->item_names[1]), FP_DATA_MAX_ID_LEN);
    fp_dataset_free(d);
}

static void test_single_item_user(void **state)
{
    (void)state;
    fp_dataset_t *d = load_ok("single.txt", "1 5\n2 6\n2 7\n", FP_FORMAT_TEXT);
    assert_int_equal(d->n_users, 2);
    fp_split_t s;
    assert_int_equal(fp_split_loo(d, &s), FP_OK);
    assert_int_equal(s.train_len[0], 1);
    assert_int_equal(s.valid[0], 0);
    assert_int_equal(s.test[0], 0);
    fp_batcher_t *b = NULL;
    assert_int_equal(fp_batcher_create(&s, 4, 8, 1, 1, &b), FP_OK);
    assert_int_equal(fp_batcher_n_users(b), 1);
    int32_t seq[32], pos[32], neg[32];
    int rows, end;
    assert_int_equal(fp_batcher_next(b, seq, pos, neg, &rows, &end), FP_OK);
    assert_int_equal(rows, 1);
    assert_int_equal(end, 1);
    assert_int_equal(seq[3], 2);
    assert_int_equal(pos[3], 3);
    assert_int_equal(neg[3], 1); /* the only item outside {2, 3} */
    fp_batcher_destroy(b);
    fp_split_free(&s);
    fp_dataset_free(d);
}

/* ------------------------------------------------------------------------------------------ */
/* Readers: bad input                                                                          */
/* ------------------------------------------------------------------------------------------ */

static void test_text_bad(void **state)
{
    (void)state;
    const fp_data_format T = FP_FORMAT_TEXT;
    expect_fail("empty.txt", "", T, FP_ERR_PARSE, 1);
    expect_fail("blank.txt", "\n  \n\r\n", T, FP_ERR_PARSE, 3);
    expect_fail("cols1.txt", "1 2\n3\n", T, FP_ERR_PARSE, 2);
    expect_fail("cols4.txt", "1 2\n1 3\n1 2 3 4\n", T, FP_ERR_PARSE, 3);
    expect_fail("alpha.txt", "a 1\n", T, FP_ERR_PARSE, 1);
    expect_fail("alpha2.txt", "1 2\n1 b\n", T, FP_ERR_PARSE, 2);
    expect_fail("neg.txt", "-1 2\n", T, FP_ERR_PARSE, 1);
    expect_fail("plus.txt", "+1 2\n", T, FP_ERR_PARSE, 1);
    expect_fail("zero_u.txt", "0 2\n", T, FP_ERR_PARSE, 1);
    expect_fail("zero_i.txt", "1 000\n", T, FP_ERR_PARSE, 1);
    expect_fail("huge.txt", "2147483648 1\n", T, FP_ERR_PARSE, 1);
    expect_fail("huge2.txt", "1 99999999999999999999999\n", T, FP_ERR_PARSE, 1);
    expect_fail("float.txt", "1.5 2\n", T, FP_ERR_PARSE, 1);
    expect_fail("suffix.txt", "1 2x\n", T, FP_ERR_PARSE, 1);
    expect_fail("ts.txt", "1 2 10\n1 3 abc\n", T, FP_ERR_PARSE, 2);
    expect_fail("tsnan.txt", "1 2 nan\n", T, FP_ERR_PARSE, 1);
    expect_fail("tsinf.txt", "1 2 inf\n", T, FP_ERR_PARSE, 1);
    expect_fail("tsbig.txt", "1 2 1e999999\n", T, FP_ERR_PARSE, 1);
    fp_dataset_t *tiny = load_ok("tstiny.txt", "1 2 1e-999999\n", T); /* underflow is a number */
    fp_dataset_free(tiny);
    expect_fail("comma.txt", "1,2\n", T, FP_ERR_PARSE, 1);
    expect_fail_n("nul.txt", "1 2\n1\0 3\n", 9, T, FP_ERR_PARSE, 2);
    /* AUTO: a comma on the first line without a user_id/item_id header. */
    expect_fail("autocomma.txt", "1,2\n", FP_FORMAT_AUTO, FP_ERR_PARSE, 1);
    assert_non_null(strstr(fp_error_message(), "user_id"));

    /* Arguments and files. */
    fp_dataset_t *d = (fp_dataset_t *)0x1;
    char path[256];
    tpath(path, sizeof path, "does-not-exist.txt");
    assert_int_equal(fp_data_load(path, FP_FORMAT_AUTO, &d), FP_ERR_IO);
    assert_null(d);
    assert_non_null(strstr(fp_error_message(), path));
    assert_int_equal(fp_data_load(g_dir, FP_FORMAT_TEXT, &d), FP_ERR_IO); /* a directory */
    assert_non_null(strstr(fp_error_message(), g_dir));
    assert_int_equal(fp_data_load(NULL, FP_FORMAT_TEXT, &d), FP_ERR_INVALID);
    assert_int_equal(fp_data_load(path, FP_FORMAT_TEXT, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_data_load(path, (fp_data_format)7, &d), FP_ERR_INVALID);
}

static void test_csv_bad(void **state)
{
    (void)state;
    const fp_data_format A = FP_FORMAT_AUTO;
    expect_fail("nohdr1.csv", "user_id\n1\n", A, FP_ERR_PARSE, 1);
    expect_fail("nohdr2.csv", "user,item\n1,2\n", A, FP_ERR_PARSE, 1);
    expect_fail("nohdr3.txt", "1,2\n3,4\n", FP_FORMAT_CSV, FP_ERR_PARSE, 1);
    expect_fail("duphdr.csv", "user_id,item_id,USER_ID\n1,2,3\n", A, FP_ERR_PARSE, 1);
    expect_fail("hdronly.csv", "user_id,item_id\n\n", A, FP_ERR_PARSE, 2);
    expect_fail("empty.csv", "", A, FP_ERR_PARSE, 1);
    expect_fail("few.csv", "user_id,item_id\n1,2\n1\n", A, FP_ERR_PARSE, 3);
    expect_fail("many.csv", "user_id,item_id\n1,2,3\n", A, FP_ERR_PARSE, 2);
    expect_fail("emptyu.csv", "user_id,item_id\n,2\n", A, FP_ERR_PARSE, 2);
    expect_fail("emptyi.csv", "user_id,item_id\n1,  \n", A, FP_ERR_PARSE, 2);
    expect_fail("emptyq.csv", "user_id,item_id\n1,\"\"\n", A, FP_ERR_PARSE, 2);
    expect_fail("unterminated.csv", "user_id,item_id\n1,2\n\"1,2\n", A, FP_ERR_PARSE, 3);
    expect_fail("stray.csv", "user_id,item_id\n1,a\"b\n", A, FP_ERR_PARSE, 2);
    expect_fail("afterq.csv", "user_id,item_id\n\"1\"x,2\n", A, FP_ERR_PARSE, 2);
    expect_fail("badts.csv", "user_id,item_id,timestamp\n1,2,3\n1,2,abc\n", A, FP_ERR_PARSE, 3);
    expect_fail("emptyts.csv", "user_id,item_id,timestamp\n1,2,\n", A, FP_ERR_PARSE, 2);
    expect_fail("tsjunk.csv", "user_id,item_id,timestamp\n1,2,12 3\n", A, FP_ERR_PARSE, 2);
    expect_fail("bomcrlf.csv", "\xEF\xBB\xBFuser_id,item_id\r\n1,2\r\n3\r\n", A, FP_ERR_PARSE, 3);
    expect_fail_n("nul.csv", "user_id,item_id\n1,\0\n", 19, A, FP_ERR_PARSE, 2);

    char buf[FP_DATA_MAX_ID_LEN + 64];
    int n = snprintf(buf, sizeof buf, "user_id,item_id\nu,");
    memset(buf + n, 'i', FP_DATA_MAX_ID_LEN + 1);
    strcpy(buf + n + FP_DATA_MAX_ID_LEN + 1, "\n");
    expect_fail("longid.csv", buf, A, FP_ERR_PARSE, 2);
}

static void test_long_lines(void **state)
{
    (void)state;
    /* A line of exactly FP_DATA_MAX_LINE bytes is fine; one more byte is an error. */
    size_t n = (size_t)FP_DATA_MAX_LINE + 16;
    char *buf = malloc(n);
    assert_non_null(buf);
    memcpy(buf, "1 1\n1 2", 7);
    memset(buf + 7, ' ', (size_t)FP_DATA_MAX_LINE - 3);
    buf[4 + FP_DATA_MAX_LINE] = '\n';
    memcpy(buf + 5 + FP_DATA_MAX_LINE, "2 2\n", 5);
    char path[256];
    write_file(path, sizeof path, "maxline.txt", buf);
    fp_dataset_t *d = NULL;
    assert_int_equal(fp_data_load(path, FP_FORMAT_TEXT, &d), FP_OK);
    assert_int_equal(d->n_interactions, 3);
    fp_dataset_free(d);
    unlink(path);

    memset(buf + 7, ' ', (size_t)FP_DATA_MAX_LINE - 2);
    buf[5 + FP_DATA_MAX_LINE] = '\n';
    memcpy(buf + 6 + FP_DATA_MAX_LINE, "2 2\n", 5);
    expect_fail("maxline1.txt", buf, FP_FORMAT_TEXT, FP_ERR_PARSE, 2);
    assert_non_null(strstr(fp_error_message(), "longer than"));
    free(buf);

    /* A 100 MB line, written in 1 MiB pieces; the reader stops at the limit. */
    tpath(path, sizeof path, "huge_line.txt");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    char *chunk = malloc(1 << 20);
    assert_non_null(chunk);
    memset(chunk, '7', 1 << 20);
    assert_true(fputs("3 4\n3 5\n3 ", f) >= 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(fwrite(chunk, 1, 1 << 20, f), 1 << 20);
    assert_true(fputs("\n3 6\n", f) >= 0);
    assert_int_equal(fclose(f), 0);
    free(chunk);
    double t0 = now_s();
    d = (fp_dataset_t *)0x1;
    assert_int_equal(fp_data_load(path, FP_FORMAT_AUTO, &d), FP_ERR_PARSE);
    double dt = now_s() - t0;
    assert_null(d);
    char want[320];
    snprintf(want, sizeof want, "%s:3:", path);
    assert_non_null(strstr(fp_error_message(), want));
    assert_true(dt < 2.0);
    unlink(path);
}

/* ------------------------------------------------------------------------------------------ */
/* Split                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Users with n = 1, 2, 3, 5 items; items 10..50 become 1..5. */
static const char *LOO_TEXT = "1 10\n"
                              "2 20\n2 30\n"
                              "3 10\n3 20\n3 30\n"
                              "4 40\n4 50\n4 10\n4 20\n4 30\n";

static void test_split_loo(void **state)
{
    (void)state;
    fp_dataset_t *d = load_ok("loo.txt", LOO_TEXT, FP_FORMAT_TEXT);
    assert_int_equal(d->n_users, 4);
    assert_int_equal(d->n_items, 5);
    fp_split_t s;
    assert_int_equal(fp_split_loo(d, &s), FP_OK);
    assert_ptr_equal(s.d, d);
    const int32_t tl[4] = {1, 2, 1, 3}, va[4] = {0, 0, 2, 2}, te[4] = {0, 0, 3, 3};
    for (int u = 0; u < 4; u++) {
        assert_int_equal(s.train_len[u], tl[u]);
        assert_int_equal(s.valid[u], va[u]);
        assert_int_equal(s.test[u], te[u]);
    }

    int64_t *pop = NULL;
    assert_int_equal(fp_split_popularity(&s, &pop), FP_OK);
    const int64_t want_pop[6] = {0, 3, 1, 1, 1, 1};
    for (int i = 0; i <= 5; i++)
        assert_int_equal(pop[i], want_pop[i]);
    free(pop);

    int32_t h[5];
    fp_split_history(&s, 3, 0, 5, h);
    assert_memory_equal(h, ((const int32_t[]){0, 0, 4, 5, 1}), sizeof h);
    fp_split_history(&s, 3, 1, 5, h);
    assert_memory_equal(h, ((const int32_t[]){0, 4, 5, 1, 2}), sizeof h);
    fp_split_history(&s, 3, 1, 2, h);
    assert_int_equal(h[0], 1);
    assert_int_equal(h[1], 2);
    fp_split_history(&s, 0, 1, 5, h);
    assert_memory_equal(h, ((const int32_t[]){0, 0, 0, 0, 1}), sizeof h);
    fp_split_history(&s, 1, 1, 5, h); /* n = 2: no validation item to append */
    assert_memory_equal(h, ((const int32_t[]){0, 0, 0, 2, 3}), sizeof h);
    fp_split_history(&s, 2, 1, 3, h);
    assert_memory_equal(h, ((const int32_t[]){0, 1, 2}), 3 * sizeof *h);
    h[0] = 9;
    fp_split_history(&s, 4, 1, 5, h); /* bad user: zeros */
    assert_memory_equal(h, ((const int32_t[]){0, 0, 0, 0, 0}), sizeof h);
    fp_split_history(NULL, 0, 0, 5, h);
    fp_split_history(&s, 0, 0, 0, NULL);

    fp_split_free(&s);
    fp_split_free(&s);
    fp_split_free(NULL);
    assert_int_equal(fp_split_loo(NULL, &s), FP_ERR_INVALID);
    assert_int_equal(fp_split_loo(d, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_split_popularity(&s, &pop), FP_ERR_INVALID); /* freed split */

    /* A malformed caller-made dataset is refused, not read out of bounds. */
    d->items[2] = 99;
    assert_int_equal(fp_split_loo(d, &s), FP_ERR_INVALID);
    d->items[2] = 1;
    d->offsets[2] = 100;
    assert_int_equal(fp_split_loo(d, &s), FP_ERR_INVALID);
    d->offsets[2] = 3;
    fp_dataset_free(d);
}

/* ------------------------------------------------------------------------------------------ */
/* Batcher                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static void test_batcher_hand(void **state)
{
    (void)state;
    fp_dataset_t *d = load_ok("loo2.txt", LOO_TEXT, FP_FORMAT_TEXT);
    fp_split_t s;
    assert_int_equal(fp_split_loo(d, &s), FP_OK);
    fp_batcher_t *b = NULL;
    enum { T = 4, B = 3, K = 2 };
    assert_int_equal(fp_batcher_create(&s, T, B, K, 5, &b), FP_OK);
    assert_int_equal(fp_batcher_n_users(b), 2); /* users 1 (train 2) and 3 (train 3) */
    assert_int_equal(fp_batcher_batches_per_epoch(b), 1);
    int32_t seq[B * T], pos[B * T], neg[B * T * K];
    for (int epoch = 0; epoch < 20; epoch++) {
        int rows, end, seen1 = 0, seen3 = 0;
        memset(seq, 0x55, sizeof seq);
        assert_int_equal(fp_batcher_next(b, seq, pos, neg, &rows, &end), FP_OK);
        assert_int_equal(rows, 2);
        assert_int_equal(end, 1);
        for (int r = 0; r < rows; r++) {
            const int32_t *sq = seq + r * T, *ps = pos + r * T, *ng = neg + r * T * K;
            if (ps[T - 1] == 3) { /* user 1: x = [2, 3] */
                seen1++;
                assert_memory_equal(sq, ((const int32_t[]){0, 0, 0, 2}), T * sizeof *sq);
                assert_memory_equal(ps, ((const int32_t[]){0, 0, 0, 3}), T * sizeof *ps);
                for (int k = 0; k < K; k++) {
                    int32_t v = ng[(T - 1) * K + k];
                    assert_true(v == 1 || v == 4 || v == 5);
                }
            } else { /* user 3: x = [4, 5, 1] */
                seen3++;
                assert_memory_equal(sq, ((const int32_t[]){0, 0, 4, 5}), T * sizeof *sq);
                assert_memory_equal(ps, ((const int32_t[]){0, 0, 5, 1}), T * sizeof *ps);
                for (int t = 2; t < T; t++)
                    for (int k = 0; k < K; k++) {
                        int32_t v = ng[t * K + k];
                        assert_true(v == 2 || v == 3);
                    }
            }
            for (int t = 0; t < T - 2; t++)
                for (int k = 0; k < K; k++)
                    assert_int_equal(ng[t * K + k], 0);
        }
        assert_int_equal(seen1, 1);
        assert_int_equal(seen3, 1);
        for (int i = rows * T; i < B * T; i++) /* rows past *rows are zeroed */
            assert_int_equal(seq[i], 0);
    }
    fp_batcher_destroy(b);

    /* Truncation to the last maxlen + 1 training items. */
    assert_int_equal(fp_batcher_create(&s, 1, 4, 1, 5, &b), FP_OK);
    int rows, end;
    assert_int_equal(fp_batcher_next(b, seq, pos, neg, &rows, &end), FP_OK);
    assert_int_equal(rows, 2);
    for (int r = 0; r < 2; r++) {
        if (pos[r] == 3)
            assert_int_equal(seq[r], 2);
        else {
            assert_int_equal(seq[r], 5);
            assert_int_equal(pos[r], 1);
        }
    }
    fp_batcher_destroy(b);

    /* Bad arguments. */
    b = (fp_batcher_t *)0x1;
    assert_int_equal(fp_batcher_create(&s, 0, 4, 1, 5, &b), FP_ERR_INVALID);
    assert_null(b);
    assert_int_equal(fp_batcher_create(&s, 4, 0, 1, 5, &b), FP_ERR_INVALID);
    assert_int_equal(fp_batcher_create(&s, 4, 4, -1, 5, &b), FP_ERR_INVALID);
    assert_int_equal(fp_batcher_create(&s, 70000, 4, 1, 5, &b), FP_ERR_INVALID);
    assert_int_equal(fp_batcher_create(NULL, 4, 4, 1, 5, &b), FP_ERR_INVALID);
    assert_int_equal(fp_batcher_create(&s, 4, 4, 1, 5, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_batcher_create(&s, 4, 3, 0, 5, &b), FP_OK); /* no negatives: neg may be NULL */
    assert_int_equal(fp_batcher_next(b, seq, pos, NULL, &rows, &end), FP_OK);
    assert_int_equal(rows, 2);
    assert_int_equal(fp_batcher_next(b, NULL, pos, NULL, &rows, &end), FP_ERR_INVALID);
    fp_batcher_destroy(b);
    fp_batcher_destroy(NULL);
    assert_int_equal(fp_batcher_n_users(NULL), 0);
    assert_int_equal(fp_batcher_batches_per_epoch(NULL), 0);
    fp_split_free(&s);
    fp_dataset_free(d);

    /* No trainable user: an epoch of zero rows, never a hang. */
    d = load_ok("notrain.txt", "1 1\n2 2\n2 3\n2 1\n", FP_FORMAT_TEXT);
    assert_int_equal(fp_split_loo(d, &s), FP_OK);
    assert_int_equal(fp_batcher_create(&s, 4, 3, 1, 5, &b), FP_OK);
    assert_int_equal(fp_batcher_n_users(b), 0);
    assert_int_equal(fp_batcher_batches_per_epoch(b), 0);
    assert_int_equal(fp_batcher_next(b, seq, pos, neg, &rows, &end), FP_OK);
    assert_int_equal(rows, 0);
    assert_int_equal(end, 1);
    fp_batcher_destroy(b);
    fp_split_free(&s);
    fp_dataset_free(d);
}

/* 300 users of lengths 1..8; the last training item of user u is u + 1 (its identity), the
 * others are drawn from 301..400. */
static fp_dataset_t *make_epoch_dataset(void)
{
    enum { NU = 300 };
    int32_t lens[NU], *items = malloc(NU * 8 * sizeof *items);
    assert_non_null(items);
    fp_rng_t r;
    fp_rng_seed(&r, 42);
    int64_t k = 0;
    for (int u = 0; u < NU; u++) {
        int n = 1 + u % 8;
        lens[u] = n;
        int last_train = n >= 3 ? n - 3 : n - 1;
        for (int j = 0; j < n; j++)
            items[k++] = j == last_train ? u + 1 : 301 + (int32_t)fp_rng_below(&r, 100);
    }
    fp_dataset_t *d = make_dataset(NU, 400, lens, items);
    free(items);
    return d;
}

static void test_batcher_epochs(void **state)
{
    (void)state;
    fp_dataset_t *d = make_epoch_dataset();
    fp_split_t s;
    assert_int_equal(fp_split_loo(d, &s), FP_OK);
    int32_t expect_users = 0;
    for (int u = 0; u < d->n_users; u++)
        expect_users += s.train_len[u] >= 2;
    enum { T = 4, B = 32, K = 3 };
    fp_batcher_t *b = NULL;
    assert_int_equal(fp_batcher_create(&s, T, B, K, 11, &b), FP_OK);
    assert_int_equal(fp_batcher_n_users(b), expect_users);
    int32_t nb = fp_batcher_batches_per_epoch(b);
    assert_int_equal(nb, (expect_users + B - 1) / B);
    int32_t seq[B * T], pos[B * T], neg[B * T * K];
    int seen[300];
    int32_t order[2][300];
    for (int epoch = 0; epoch < 3; epoch++) {
        memset(seen, 0, sizeof seen);
        int total = 0;
        for (int bi = 0; bi < nb; bi++) {
            int rows, end;
            assert_int_equal(fp_batcher_next(b, seq, pos, neg, &rows, &end), FP_OK);
            assert_int_equal(end, bi == nb - 1);
            assert_int_equal(rows, bi < nb - 1 ? B : expect_users - (nb - 1) * B);
            for (int r = 0; r < rows; r++) {
                int32_t id = pos[r * T + T - 1];
                assert_true(id >= 1 && id <= 300);
                int u = id - 1;
                if (epoch < 2)
                    order[epoch][total] = u;
                seen[u]++;
                total++;
                const int32_t *x = d->items + d->offsets[u];
                int L = s.train_len[u], start = L > T + 1 ? L - (T + 1) : 0, m = L - start - 1, pad = T - m;
                for (int t = 0; t < T; t++) {
                    int32_t es = t < pad ? 0 : x[start + t - pad], ep = t < pad ? 0 : x[start + t - pad + 1];
                    assert_int_equal(seq[r * T + t], es);
                    assert_int_equal(pos[r * T + t], ep);
                    for (int kk = 0; kk < K; kk++) {
                        int32_t v = neg[(r * T + t) * K + kk];
                        if (t < pad) {
                            assert_int_equal(v, 0);
                            continue;
                        }
                        assert_true(v >= 1 && v <= d->n_items);
                        for (int j = 0; j < L; j++)
                            assert_true(v != x[j]);
                    }
                }
            }
        }
        assert_int_equal(total, expect_users);
        for (int u = 0; u < d->n_users; u++)
            assert_int_equal(seen[u], s.train_len[u] >= 2 ? 1 : 0);
    }
    /* Epochs are reshuffled. */
    assert_true(memcmp(order[0], order[1], (size_t)expect_users * sizeof order[0][0]) != 0);
    fp_batcher_destroy(b);

    /* Same seed, same stream; resume from the generator at an epoch boundary. */
    fp_batcher_t *a = NULL, *c = NULL;
    assert_int_equal(fp_batcher_create(&s, T, B, K, 3, &a), FP_OK);
    int rows, end = 0;
    while (!end)
        assert_int_equal(fp_batcher_next(a, seq, pos, neg, &rows, &end), FP_OK);
    fp_rng_t snap = fp_batcher_rng(a);
    assert_int_equal(fp_batcher_create(&s, T, B, K, 999, &c), FP_OK);
    fp_batcher_set_rng(c, snap);
    int32_t seq2[B * T], pos2[B * T], neg2[B * T * K];
    int rows2, end2;
    for (int i = 0; i < 2 * nb; i++) {
        assert_int_equal(fp_batcher_next(a, seq, pos, neg, &rows, &end), FP_OK);
        assert_int_equal(fp_batcher_next(c, seq2, pos2, neg2, &rows2, &end2), FP_OK);
        assert_int_equal(rows, rows2);
        assert_int_equal(end, end2);
        assert_memory_equal(seq, seq2, sizeof seq);
        assert_memory_equal(pos, pos2, sizeof pos);
        assert_memory_equal(neg, neg2, sizeof neg);
    }
    fp_batcher_destroy(a);
    fp_batcher_destroy(c);
    fp_split_free(&s);
    fp_dataset_free(d);
}

static void test_batcher_saturated(void **state)
{
    (void)state;
    /* User 0's training set {1, 2, 3} is the whole catalogue: negatives fall back to != pos. */
    const int32_t lens1[1] = {7}, items1[7] = {1, 2, 3, 1, 2, 3, 1};
    fp_dataset_t *d = make_dataset(1, 3, lens1, items1);
    fp_split_t s;
    assert_int_equal(fp_split_loo(d, &s), FP_OK);
    fp_batcher_t *b = NULL;
    enum { T = 8, K = 4 };
    assert_int_equal(fp_batcher_create(&s, T, 1, K, 1, &b), FP_OK);
    int32_t seq[T], pos[T], neg[T * K];
    for (int rep = 0; rep < 50; rep++) {
        int rows, end;
        assert_int_equal(fp_batcher_next(b, seq, pos, neg, &rows, &end), FP_OK);
        assert_int_equal(rows, 1);
        for (int t = T - 4; t < T; t++)
            for (int k = 0; k < K; k++) {
                int32_t v = neg[t * K + k];
                assert_true(v >= 1 && v <= 3 && v != pos[t]);
            }
    }
    fp_batcher_destroy(b);
    fp_split_free(&s);
    fp_dataset_free(d);

    /* 38 of 40 items in training: negatives come from the two others. */
    int32_t items2[40], lens2[1] = {40};
    for (int i = 0; i < 38; i++)
        items2[i] = i + 1;
    items2[38] = 1;
    items2[39] = 2;
    d = make_dataset(1, 40, lens2, items2);
    assert_int_equal(fp_split_loo(d, &s), FP_OK);
    assert_int_equal(fp_batcher_create(&s, T, 1, K, 1, &b), FP_OK);
    int hit39 = 0, hit40 = 0;
    for (int rep = 0; rep < 20; rep++) {
        int rows, end;
        assert_int_equal(fp_batcher_next(b, seq, pos, neg, &rows, &end), FP_OK);
        for (int i = 0; i < T * K; i++) {
            assert_true(neg[i] == 39 || neg[i] == 40);
            hit39 += neg[i] == 39;
            hit40 += neg[i] == 40;
        }
    }
    assert_true(hit39 > 0 && hit40 > 0);
    fp_batcher_destroy(b);
    fp_split_free(&s);
    fp_dataset_free(d);

    /* A one-item catalogue has no negatives at all. */
    const int32_t lens3[1] = {3}, items3[3] = {1, 1, 1};
    d = make_dataset(1, 1, lens3, items3);
    assert_int_equal(fp_split_loo(d, &s), FP_OK);
    assert_int_equal(fp_batcher_create(&s, T, 1, 1, 1, &b), FP_ERR_INVALID);
    assert_int_equal(fp_batcher_create(&s, T, 1, 0, 1, &b), FP_OK);
    fp_batcher_destroy(b);
    fp_split_free(&s);
    fp_dataset_free(d);
}

static void test_batcher_speed(void **state)
{
    (void)state;
    enum { NU = 128, LEN = 300, T = 200 };
    int32_t lens[NU];
    int32_t *items = malloc(NU * LEN * sizeof *items);
    assert_non_null(items);
    fp_rng_t r;
    fp_rng_seed(&r, 5);
    for (int i = 0; i < NU * LEN; i++)
        items[i] = 1 + (int32_t)fp_rng_below(&r, 20000);
    for (int u = 0; u < NU; u++)
        lens[u] = LEN;
    fp_dataset_t *d = make_dataset(NU, 20000, lens, items);
    free(items);
    fp_split_t s;
    assert_int_equal(fp_split_loo(d, &s), FP_OK);
    fp_batcher_t *b = NULL;
    assert_int_equal(fp_batcher_create(&s, T, NU, 1, 1, &b), FP_OK);
    int32_t *seq = malloc(NU * T * sizeof *seq), *pos = malloc(NU * T * sizeof *pos),
            *neg = malloc(NU * T * sizeof *neg);
    assert_true(seq && pos && neg);
    int rows, end;
    const int reps = 50;
    double t0 = now_s();
    for (int i = 0; i < reps; i++) {
        assert_int_equal(fp_batcher_next(b, seq, pos, neg, &rows, &end), FP_OK);
        assert_int_equal(rows, NU);
    }
    double per = (now_s() - t0) / reps;
    print_message("batcher: %.3f ms per batch of %d x %d\n", per * 1e3, NU, T);
    assert_true(per < 0.05); /* generous: sanitizer builds too; ~0.2 ms optimised */
    for (int i = 0; i < NU * T; i++)
        assert_true(pos[i] != 0 && neg[i] != 0);
    free(seq);
    free(pos);
    free(neg);
    fp_batcher_destroy(b);
    fp_split_free(&s);
    fp_dataset_free(d);
}

/* ------------------------------------------------------------------------------------------ */
/* Synthetic                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static void test_synthetic(void **state)
{
    (void)state;
    fp_synth_params_t p;
    fp_synth_defaults(&p);
    fp_synth_defaults(NULL);
    assert_int_equal(p.n_users, 2000);
    assert_int_equal(p.n_items, 1000);
    assert_int_equal(p.n_interests, 20);
    fp_dataset_t *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(fp_data_synthetic(&p, &a), FP_OK);
    assert_int_equal(fp_data_synthetic(&p, &b), FP_OK);
    assert_int_equal(a->n_users, 2000);
    assert_int_equal(a->n_items, 1000);
    assert_null(a->user_names);
    assert_null(a->item_names[0]);
    assert_string_equal(a->item_names[1], "1");
    assert_string_equal(a->item_names[1000], "1000");
    assert_int_equal(a->n_interactions, b->n_interactions);
    assert_memory_equal(a->offsets, b->offsets, (size_t)(a->n_users + 1) * sizeof *a->offsets);
    assert_memory_equal(a->items, b->items, (size_t)a->n_interactions * sizeof *a->items);
    double mean = (double)a->n_interactions / a->n_users;
    assert_true(mean > 17.0 && mean < 23.0);
    for (int u = 0; u < a->n_users; u++) {
        int64_t n = a->offsets[u + 1] - a->offsets[u];
        assert_true(n >= 3 && n <= 200);
    }
    for (int64_t k = 0; k < a->n_interactions; k++)
        assert_true(a->items[k] >= 1 && a->items[k] <= 1000);

    /* Learnable: the most frequent successor of each item explains far more next items than
     * the single most popular item does. */
    int32_t *next = calloc((size_t)1001 * 1001, sizeof *next);
    int64_t *pop = calloc(1001, sizeof *pop);
    assert_true(next && pop);
    int64_t trans = 0;
    for (int u = 0; u < a->n_users; u++)
        for (int64_t k = a->offsets[u]; k < a->offsets[u + 1]; k++) {
            pop[a->items[k]]++;
            if (k > a->offsets[u]) {
                next[(size_t)a->items[k - 1] * 1001 + (size_t)a->items[k]]++;
                trans++;
            }
        }
    int64_t best_next = 0, top = 0;
    for (int i = 1; i <= 1000; i++) {
        int32_t mx = 0;
        for (int j = 1; j <= 1000; j++)
            if (next[(size_t)i * 1001 + (size_t)j] > mx)
                mx = next[(size_t)i * 1001 + (size_t)j];
        best_next += mx;
        if (pop[i] > top)
            top = pop[i];
    }
    double seq_share = (double)best_next / (double)trans, pop_share = (double)top / (double)a->n_interactions;
    print_message("synthetic: %lld interactions, successor share %.3f, top item share %.3f\n",
                  (long long)a->n_interactions, seq_share, pop_share);
    assert_true(seq_share > 0.5);
    assert_true(pop_share < 0.05);
    free(next);
    free(pop);

    /* Different seed: different data. */
    p.seed = 2;
    assert_int_equal(fp_data_synthetic(&p, &c), FP_OK);
    assert_true(c->n_interactions != a->n_interactions ||
                memcmp(c->items, a->items, (size_t)a->n_interactions * sizeof *a->items) != 0);
    fp_dataset_free(c);

    /* Requested sizes, minimal lengths. */
    p.n_users = 17;
    p.n_items = 2;
    p.n_interests = 2;
    p.mean_len = 3.0;
    assert_int_equal(fp_data_synthetic(&p, &c), FP_OK);
    assert_int_equal(c->n_users, 17);
    assert_int_equal(c->n_items, 2);
    assert_int_equal(c->n_interactions, 17 * 3);
    assert_int_equal(fp_data_find_user(c, "1"), 0);
    assert_int_equal(fp_data_find_user(c, "17"), 16);
    assert_int_equal(fp_data_find_user(c, "18"), -1);
    assert_int_equal(fp_data_find_user(c, "u1"), -1);
    fp_dataset_free(c);

    /* Invalid parameters. */
    fp_synth_params_t q;
    c = (fp_dataset_t *)0x1;
#define BAD(field, value)                                                                             \
    do {                                                                                              \
        fp_synth_defaults(&q);                                                                        \
        q.field = value;                                                                              \
        assert_int_equal(fp_data_synthetic(&q, &c), FP_ERR_INVALID);                                  \
        assert_null(c);                                                                               \
    } while (0)
    BAD(n_users, 0);
    BAD(n_users, -5);
    BAD(n_items, 1);
    BAD(n_items, FP_DATA_MAX_ITEMS + 1);
    BAD(n_interests, 0);
    BAD(n_interests, 1001);
    BAD(mean_len, 2.5);
    BAD(mean_len, 201.0);
    BAD(mean_len, NAN);
    BAD(zipf_s, -1.0);
    BAD(zipf_s, NAN);
    BAD(p_transition, 1.5);
    BAD(p_transition, NAN);
#undef BAD
    assert_int_equal(fp_data_synthetic(NULL, &c), FP_ERR_INVALID);
    assert_int_equal(fp_data_synthetic(&p, NULL), FP_ERR_INVALID);

    fp_dataset_free(a);
    fp_dataset_free(b);
}

/* ------------------------------------------------------------------------------------------ */
/* Partition, subset, save, remap                                                              */
/* ------------------------------------------------------------------------------------------ */

static void test_partition_subset(void **state)
{
    (void)state;
    fp_synth_params_t p;
    fp_synth_defaults(&p);
    p.n_users = 503;
    fp_dataset_t *d = NULL;
    assert_int_equal(fp_data_synthetic(&p, &d), FP_OK);
    enum { P = 7 };
    int32_t *po = NULL, *po2 = NULL, *po3 = NULL;
    assert_int_equal(fp_data_partition(d, P, 9, &po), FP_OK);
    assert_int_equal(fp_data_partition(d, P, 9, &po2), FP_OK);
    assert_int_equal(fp_data_partition(d, P, 10, &po3), FP_OK);
    assert_memory_equal(po, po2, (size_t)d->n_users * sizeof *po);
    assert_true(memcmp(po, po3, (size_t)d->n_users * sizeof *po) != 0);
    int count[P] = {0};
    for (int u = 0; u < d->n_users; u++) {
        assert_true(po[u] >= 0 && po[u] < P);
        count[po[u]]++;
    }
    for (int k = 0; k < P; k++)
        assert_true(count[k] == 503 / P || count[k] == 503 / P + 1);

    int32_t total_users = 0;
    int64_t total_inter = 0;
    for (int k = 0; k < P; k++) {
        fp_dataset_t *sd = NULL;
        assert_int_equal(fp_data_subset(d, po, k, &sd), FP_OK);
        assert_int_equal(sd->n_users, count[k]);
        assert_int_equal(sd->n_items, d->n_items);
        assert_string_equal(sd->item_names[5], "5");
        for (int32_t v = 0; v < sd->n_users; v++) {
            int32_t u = fp_data_find_user(d, sd->user_names[v]);
            assert_true(u >= 0);
            assert_int_equal(po[u], k);
            int64_t n = d->offsets[u + 1] - d->offsets[u];
            assert_int_equal(sd->offsets[v + 1] - sd->offsets[v], n);
            assert_memory_equal(sd->items + sd->offsets[v], d->items + d->offsets[u], (size_t)n * sizeof *d->items);
        }
        total_users += sd->n_users;
        total_inter += sd->n_interactions;
        /* A subset partitioned again keeps the names. */
        if (k == 0) {
            int32_t *po4 = NULL;
            assert_int_equal(fp_data_partition(sd, 1, 1, &po4), FP_OK);
            fp_dataset_t *sd2 = NULL;
            assert_int_equal(fp_data_subset(sd, po4, 0, &sd2), FP_OK);
            assert_string_equal(sd2->user_names[0], sd->user_names[0]);
            fp_dataset_free(sd2);
            free(po4);
        }
        fp_dataset_free(sd);
    }
    assert_int_equal(total_users, d->n_users);
    assert_int_equal(total_inter, d->n_interactions);

    fp_dataset_t *sd = (fp_dataset_t *)0x1;
    assert_int_equal(fp_data_subset(d, po, P, &sd), FP_ERR_INVALID); /* empty part */
    assert_null(sd);
    assert_int_equal(fp_data_subset(d, NULL, 0, &sd), FP_ERR_INVALID);
    int32_t *bad = (int32_t *)0x1;
    assert_int_equal(fp_data_partition(d, 0, 1, &bad), FP_ERR_INVALID);
    assert_null(bad);
    assert_int_equal(fp_data_partition(d, 504, 1, &bad), FP_ERR_INVALID);
    assert_int_equal(fp_data_partition(NULL, 2, 1, &bad), FP_ERR_INVALID);
    assert_int_equal(fp_data_partition(d, 503, 1, &bad), FP_OK);
    free(bad);
    free(po);
    free(po2);
    free(po3);
    fp_dataset_free(d);
}

static void assert_same_dataset(const fp_dataset_t *a, const fp_dataset_t *b)
{
    assert_int_equal(a->n_users, b->n_users);
    assert_int_equal(a->n_items, b->n_items);
    assert_int_equal(a->n_interactions, b->n_interactions);
    assert_memory_equal(a->offsets, b->offsets, (size_t)(a->n_users + 1) * sizeof *a->offsets);
    assert_memory_equal(a->items, b->items, (size_t)a->n_interactions * sizeof *a->items);
    for (int i = 1; i <= a->n_items; i++)
        assert_string_equal(a->item_names[i], b->item_names[i]);
}

static void test_save_roundtrip(void **state)
{
    (void)state;
    char path[256];
    tpath(path, sizeof path, "saved.txt");
    fp_dataset_t *a = load_ok("rt.txt", "9 300\n4 20\n9 20\n9 100\n4 300\n4 7\n", FP_FORMAT_TEXT);
    assert_int_equal(fp_data_save_text(a, path), FP_OK);
    fp_dataset_t *b = NULL;
    assert_int_equal(fp_data_load(path, FP_FORMAT_AUTO, &b), FP_OK);
    assert_same_dataset(a, b);
    for (int u = 0; u < a->n_users; u++)
        assert_string_equal(a->user_names[u], b->user_names[u]);
    fp_dataset_free(a);
    fp_dataset_free(b);

    /* Synthetic: unnamed users are written as 1..n_users and come back identical. */
    fp_synth_params_t p;
    fp_synth_defaults(&p);
    p.n_users = 300;
    assert_int_equal(fp_data_synthetic(&p, &a), FP_OK);
    assert_int_equal(fp_data_save_text(a, path), FP_OK);
    assert_int_equal(fp_data_load(path, FP_FORMAT_TEXT, &b), FP_OK);
    /* Some of the 1000 items may never occur; compare through names. */
    assert_int_equal(b->n_users, a->n_users);
    assert_int_equal(b->n_interactions, a->n_interactions);
    for (int64_t k = 0; k < a->n_interactions; k++)
        assert_string_equal(a->item_names[a->items[k]], b->item_names[b->items[k]]);
    assert_memory_equal(a->offsets, b->offsets, (size_t)(a->n_users + 1) * sizeof *a->offsets);
    assert_string_equal(b->user_names[299], "300");
    fp_dataset_free(a);
    fp_dataset_free(b);

    /* CSV string ids cannot be written as text; nothing is left behind. */
    unlink(path);
    a = load_ok("str.csv", "user_id,item_id\nalice,book\n", FP_FORMAT_AUTO);
    assert_int_equal(fp_data_save_text(a, path), FP_ERR_INVALID);
    assert_int_equal(access(path, F_OK), -1);
    DIR *dir = opendir(g_dir);
    assert_non_null(dir);
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        assert_null(strstr(e->d_name, ".tmp."));
    closedir(dir);
    assert_int_equal(fp_data_save_text(a, "/nonexistent-dir-fedprof/x.txt"), FP_ERR_IO);
    assert_int_equal(fp_data_save_text(a, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_data_save_text(NULL, path), FP_ERR_INVALID);
    fp_dataset_free(a);
}

static void test_remap_items(void **state)
{
    (void)state;
    fp_dataset_t *d = load_ok("remap.txt", LOO_TEXT, FP_FORMAT_TEXT); /* items 10..50 -> 1..5 */
    char *vocab[4] = {NULL, "50", "10", "99"};
    int64_t dropped = -1;
    assert_int_equal(fp_data_remap_items(d, vocab, 3, &dropped), FP_OK);
    assert_int_equal(d->n_items, 3);
    assert_int_equal(dropped, 11 - 4); /* kept: 10 (x3) and 50 (x1) */
    assert_int_equal(d->n_interactions, 4);
    assert_int_equal(d->n_users, 4);
    assert_user_items(d, 0, (const int32_t[]){2}, 1);
    assert_user_items(d, 1, NULL, 0);
    assert_user_items(d, 2, (const int32_t[]){2}, 1);
    assert_user_items(d, 3, (const int32_t[]){1, 2}, 2);
    assert_null(d->item_names[0]);
    assert_string_equal(d->item_names[1], "50");
    assert_string_equal(d->item_names[3], "99");
    assert_true(d->item_names[1] != vocab[1]);

    /* Bad vocabularies leave the dataset unchanged. */
    char *dup[3] = {NULL, "10", "10"};
    assert_int_equal(fp_data_remap_items(d, dup, 2, NULL), FP_ERR_INVALID);
    char *hole[3] = {NULL, "10", NULL};
    assert_int_equal(fp_data_remap_items(d, hole, 2, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_data_remap_items(d, vocab, 0, NULL), FP_ERR_INVALID);
    assert_int_equal(fp_data_remap_items(d, NULL, 3, NULL), FP_ERR_INVALID);
    assert_int_equal(d->n_items, 3);
    assert_int_equal(d->n_interactions, 4);
    assert_string_equal(d->item_names[2], "10");
    fp_dataset_free(d);

    /* A dataset without item names uses decimal ids. */
    const int32_t lens[2] = {2, 1}, items[3] = {1, 2, 3};
    d = make_dataset(2, 3, lens, items);
    char *v2[3] = {NULL, "3", "1"};
    assert_int_equal(fp_data_remap_items(d, v2, 2, &dropped), FP_OK);
    assert_int_equal(dropped, 1);
    assert_user_items(d, 0, (const int32_t[]){2}, 1);
    assert_user_items(d, 1, (const int32_t[]){1}, 1);
    fp_dataset_free(d);
}

/* ------------------------------------------------------------------------------------------ */
/* Real data                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static void test_amazon_games(void **state)
{
    (void)state;
    const char *path = FEDPROF_SOURCE_DIR "/../shared/data/amazon-games.txt";
    if (access(path, R_OK) != 0) {
        print_message("%s absent: skipped\n", path);
        skip();
    }
    fp_dataset_t *d = NULL;
    double t0 = now_s();
    fp_status st = fp_data_load(path, FP_FORMAT_AUTO, &d);
    double dt = now_s() - t0;
    if (st)
        print_error("%s\n", fp_error_message());
    assert_int_equal(st, FP_OK);
    print_message("amazon-games: loaded in %.3f s\n", dt);
    assert_int_equal(d->n_users, 31013);
    assert_int_equal(d->n_items, 23715);
    assert_int_equal(d->n_interactions, 287107);
    for (int i = 1; i <= d->n_items; i += 997) { /* ids 1..N are kept */
        char b[16];
        snprintf(b, sizeof b, "%d", i);
        assert_string_equal(d->item_names[i], b);
    }
    assert_string_equal(d->user_names[0], "1");
    fp_split_t s;
    assert_int_equal(fp_split_loo(d, &s), FP_OK);
    int64_t with_test = 0;
    for (int u = 0; u < d->n_users; u++)
        with_test += s.test[u] != 0;
    assert_true(with_test > 0);
    fp_split_free(&s);
    fp_dataset_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_basic),
        cmocka_unit_test(test_text_whitespace_bom_crlf),
        cmocka_unit_test(test_csv_basic),
        cmocka_unit_test(test_csv_columns_quotes),
        cmocka_unit_test(test_single_item_user),
        cmocka_unit_test(test_text_bad),
        cmocka_unit_test(test_csv_bad),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_split_loo),
        cmocka_unit_test(test_batcher_hand),
        cmocka_unit_test(test_batcher_epochs),
        cmocka_unit_test(test_batcher_saturated),
        cmocka_unit_test(test_batcher_speed),
        cmocka_unit_test(test_synthetic),
        cmocka_unit_test(test_partition_subset),
        cmocka_unit_test(test_save_roundtrip),
        cmocka_unit_test(test_remap_items),
        cmocka_unit_test(test_amazon_games),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
