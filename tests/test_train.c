/* test_train: the centralised trainer end to end through its library API: it learns the
 * synthetic data far better than popularity, the same seed on one thread gives the same model
 * bit for bit, and training interrupted then resumed equals training straight through. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/train.h"
#include "common/config.h"
#include "common/data.h"
#include "common/log.h"
#include "common/model_io.h"

static char tmpdir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fedprof-test-train-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    fp_log_set_quiet(1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static fp_dataset_t *small_data(void)
{
    fp_synth_params_t p;
    fp_synth_defaults(&p);
    p.n_users = 400;
    p.n_items = 200;
    p.n_interests = 8;
    p.mean_len = 12;
    p.seed = 7;
    fp_dataset_t *d = NULL;
    assert_int_equal(fp_data_synthetic(&p, &d), FP_OK);
    return d;
}

static void small_config(fp_config_t *c, int epochs)
{
    fp_config_defaults(c);
    c->model.dim = 16;
    c->model.blocks = 1;
    c->model.heads = 2;
    c->model.maxlen = 20;
    c->model.dropout = 0.2f;
    c->train.epochs = epochs;
    c->train.batch = 64;
    c->train.lr = 0.005f;
    c->train.eval_every = 0;
    c->train.threads = 1;
    c->eval.full = 1;
}

/* Reads a saved model's parameters into a fresh malloc'd buffer. */
static float *load_params(const char *dir, size_t *n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fp_model_t *m = NULL;
    fp_config_t cfg;
    char **items = NULL;
    assert_int_equal(fp_model_load(path, 4, 1, &m, &cfg, &items), FP_OK);
    *n = fp_model_layout(m)->total;
    float *p = malloc(*n * sizeof *p);
    assert_non_null(p);
    memcpy(p, fp_model_params(m), *n * sizeof *p);
    fp_model_items_free(items, cfg.model.n_items);
    fp_model_destroy(m);
    return p;
}

static void test_learns_beyond_popularity(void **state)
{
    (void)state;
    fp_dataset_t *d = small_data();
    fp_config_t c;
    small_config(&c, 25);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/learn", tmpdir);
    fp_train_opts_t o = {dir, 0, 0};
    fp_train_report_t r;
    assert_int_equal(fp_train_run(&c, d, &o, &r), FP_OK);
    assert_int_equal(r.last_epoch, 25);
    assert_true(r.test.users > 300);
    /* The synthetic data is sequential: a sequence model must clearly beat popularity. */
    assert_true(r.test.hr > r.test.pop_hr + 0.15);
    assert_true(r.test.ndcg > r.test.pop_ndcg + 0.10);
    assert_true(r.test.full_hr > r.test.pop_full_hr);
    assert_true(r.final_loss > 0 && r.final_loss < 1.3);
    fp_dataset_free(d);
}

static void test_same_seed_same_model(void **state)
{
    (void)state;
    float *p[2];
    size_t n[2];
    double loss[2];
    for (int run = 0; run < 2; run++) {
        fp_dataset_t *d = small_data();
        fp_config_t c;
        small_config(&c, 3);
        char dir[512];
        snprintf(dir, sizeof dir, "%s/det%d", tmpdir, run);
        fp_train_opts_t o = {dir, 0, 1};
        fp_train_report_t r;
        assert_int_equal(fp_train_run(&c, d, &o, &r), FP_OK);
        loss[run] = r.final_loss;
        p[run] = load_params(dir, &n[run]);
        fp_dataset_free(d);
    }
    assert_int_equal(n[0], n[1]);
    assert_true(loss[0] == loss[1]);
    assert_memory_equal(p[0], p[1], n[0] * sizeof(float));
    free(p[0]);
    free(p[1]);
}

static void test_resume_equals_straight_run(void **state)
{
    (void)state;
    char straight[512], resumed[512];
    snprintf(straight, sizeof straight, "%s/straight", tmpdir);
    snprintf(resumed, sizeof resumed, "%s/resumed", tmpdir);
    fp_train_report_t r;
    fp_config_t c;

    fp_dataset_t *d = small_data();
    small_config(&c, 4);
    fp_train_opts_t o1 = {straight, 0, 1};
    assert_int_equal(fp_train_run(&c, d, &o1, &r), FP_OK);
    fp_dataset_free(d);

    d = small_data();
    small_config(&c, 2);
    fp_train_opts_t o2 = {resumed, 0, 1};
    assert_int_equal(fp_train_run(&c, d, &o2, &r), FP_OK);
    fp_dataset_free(d);

    d = small_data();
    small_config(&c, 4);
    c.model.dim = 99; /* ignored on resume: the architecture comes from the checkpoint */
    fp_train_opts_t o3 = {resumed, 1, 1};
    assert_int_equal(fp_train_run(&c, d, &o3, &r), FP_OK);
    assert_int_equal(r.epochs_run, 2);
    assert_int_equal(r.last_epoch, 4);
    assert_int_equal(c.model.dim, 16);
    fp_dataset_free(d);

    size_t na, nb;
    float *a = load_params(straight, &na), *b = load_params(resumed, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof(float));
    free(a);
    free(b);
}

static void test_resume_refuses_other_data(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/other", tmpdir);
    fp_config_t c;
    fp_train_report_t r;
    fp_dataset_t *d = small_data();
    small_config(&c, 1);
    fp_train_opts_t o = {dir, 0, 1};
    assert_int_equal(fp_train_run(&c, d, &o, &r), FP_OK);
    fp_dataset_free(d);

    fp_synth_params_t p;
    fp_synth_defaults(&p);
    p.n_users = 100;
    p.n_items = 300; /* a different catalogue */
    assert_int_equal(fp_data_synthetic(&p, &d), FP_OK);
    small_config(&c, 2);
    fp_train_opts_t o2 = {dir, 1, 1};
    assert_int_not_equal(fp_train_run(&c, d, &o2, &r), FP_OK);
    assert_non_null(strstr(fp_error_message(), "items"));
    fp_dataset_free(d);
}

static void test_resume_without_checkpoint_fails(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/empty", tmpdir);
    fp_config_t c;
    fp_train_report_t r;
    fp_dataset_t *d = small_data();
    small_config(&c, 1);
    fp_train_opts_t o = {dir, 1, 1};
    assert_int_not_equal(fp_train_run(&c, d, &o, &r), FP_OK);
    fp_dataset_free(d);
}

static void test_out_is_a_file(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/afile", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    fp_config_t c;
    fp_train_report_t r;
    fp_dataset_t *d = small_data();
    small_config(&c, 1);
    fp_train_opts_t o = {path, 0, 1};
    assert_int_equal(fp_train_run(&c, d, &o, &r), FP_ERR_IO);
    fp_dataset_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_learns_beyond_popularity),
        cmocka_unit_test(test_same_seed_same_model),
        cmocka_unit_test(test_resume_equals_straight_run),
        cmocka_unit_test(test_resume_refuses_other_data),
        cmocka_unit_test(test_resume_without_checkpoint_fails),
        cmocka_unit_test(test_out_is_a_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
