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

#include "client/dpsgd.h"
#include "client/train.h"
#include "common/config.h"
#include "common/data.h"
#include "common/log.h"
#include "common/model_io.h"
#include "dp/accountant.h"

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

/* ---- record-level DP-SGD through the trainer ---- */

static void dp_config(fp_config_t *c, int epochs)
{
    small_config(c, epochs);
    c->dp.unit = FP_DP_UNIT_RECORD;
    c->dp.noise_multiplier = 0.5f;
    c->dp.clip = 1.0f;
    c->dp.delta = 1e-5f;
    c->dp.seed = 5; /* tests only */
}

/* DP-SGD learns the synthetic data beyond popularity at a (loose) epsilon, and the report holds
 * the accountant's epsilon for exactly the steps taken: epochs x ceil(users / batch). */
static void test_dp_learns_and_accounts(void **state)
{
    (void)state;
    fp_dataset_t *d = small_data();
    fp_config_t c;
    dp_config(&c, 25);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/dp-learn", tmpdir);
    fp_train_opts_t o = {dir, 0, 0};
    fp_train_report_t r;
    assert_int_equal(fp_train_run(&c, d, &o, &r), FP_OK);
    fp_split_t sp;
    assert_int_equal(fp_split_loo(d, &sp), FP_OK);
    int32_t users = 0;
    for (int32_t u = 0; u < d->n_users; u++)
        users += sp.train_len[u] >= 2;
    fp_split_free(&sp);
    const int64_t spe = (users + 63) / 64;
    assert_int_equal(r.dp, 1);
    assert_int_equal(r.steps, 25 * spe);
    assert_int_equal(r.dp_steps, 25 * spe);
    assert_true(r.sampling_rate == 64.0 / users && r.clip == 1.0 && r.noise_multiplier == 0.5f);
    double eps;
    assert_int_equal(fp_dp_epsilon(r.sampling_rate, r.noise_accounted, r.dp_steps, (double)1e-5f,
                                   FP_DP_CONVERSION_IMPROVED, &eps, NULL), FP_OK);
    assert_true(r.epsilon == eps && r.delta == (double)1e-5f);
    assert_true(r.users_per_step > 40 && r.users_per_step < 90 && r.clipped_fraction > 0);
    /* observed: HR@10 0.63 against popularity's 0.25 */
    assert_true(r.test.hr > r.test.pop_hr + 0.15);
    fp_dataset_free(d);
}

/* A target epsilon calibrates the noise; the same dp.seed (and train.seed, one thread) gives the
 * same model bit for bit; another dp.seed another one. */
static void test_dp_calibrated_reproducible(void **state)
{
    (void)state;
    float *p[3];
    size_t n[3];
    for (int run = 0; run < 3; run++) {
        fp_dataset_t *d = small_data();
        fp_config_t c;
        dp_config(&c, 3);
        c.dp.target_epsilon = 4.0f;
        c.dp.seed = run == 2 ? 6 : 5;
        char dir[512];
        snprintf(dir, sizeof dir, "%s/dp-cal%d", tmpdir, run);
        fp_train_opts_t o = {dir, 0, 1};
        fp_train_report_t r;
        assert_int_equal(fp_train_run(&c, d, &o, &r), FP_OK);
        assert_true(r.epsilon <= 4.0 && r.epsilon > 3.99);
        assert_true(r.noise_multiplier > 0.5);
        p[run] = load_params(dir, &n[run]);
        fp_dataset_free(d);
    }
    assert_memory_equal(p[0], p[1], n[0] * sizeof(float));
    assert_memory_not_equal(p[0], p[2], n[0] * sizeof(float));
    for (int run = 0; run < 3; run++)
        free(p[run]);
}

/* Resume continues the accountant's count; resuming a non-DP checkpoint with DP, or with other
 * DP parameters, is refused; early stopping on validation is refused under DP. */
static void test_dp_resume_and_refusals(void **state)
{
    (void)state;
    char straight[512], resumed[512], plain[512];
    snprintf(straight, sizeof straight, "%s/dp-straight", tmpdir);
    snprintf(resumed, sizeof resumed, "%s/dp-resumed", tmpdir);
    snprintf(plain, sizeof plain, "%s/dp-plain", tmpdir);
    fp_train_report_t r1, r2;
    fp_config_t c;
    fp_dataset_t *d = small_data();
    dp_config(&c, 4);
    fp_train_opts_t o1 = {straight, 0, 1};
    assert_int_equal(fp_train_run(&c, d, &o1, &r1), FP_OK);
    dp_config(&c, 2);
    fp_train_opts_t o2 = {resumed, 0, 1};
    assert_int_equal(fp_train_run(&c, d, &o2, &r2), FP_OK);
    assert_int_equal(r2.dp_steps, r1.dp_steps / 2);
    dp_config(&c, 4);
    fp_train_opts_t o3 = {resumed, 1, 1};
    assert_int_equal(fp_train_run(&c, d, &o3, &r2), FP_OK);
    assert_int_equal(r2.epochs_run, 2);
    assert_int_equal(r2.dp_steps, r1.dp_steps);
    assert_true(r2.epsilon == r1.epsilon);

    /* other DP parameters on resume */
    dp_config(&c, 6);
    c.dp.noise_multiplier = 0.7f;
    assert_int_equal(fp_train_run(&c, d, &o3, &r2), FP_ERR_INVALID);
    assert_non_null(strstr(fp_error_message(), "resume"));
    /* a checkpoint trained without DP */
    small_config(&c, 1);
    fp_train_opts_t p1 = {plain, 0, 1};
    assert_int_equal(fp_train_run(&c, d, &p1, &r2), FP_OK);
    dp_config(&c, 2);
    fp_train_opts_t p2 = {plain, 1, 1};
    assert_int_equal(fp_train_run(&c, d, &p2, &r2), FP_ERR_INVALID);
    assert_non_null(strstr(fp_error_message(), "without DP"));
    /* patience: data-dependent early stopping */
    dp_config(&c, 2);
    c.train.patience = 2;
    assert_int_equal(fp_train_run(&c, d, &o1, &r2), FP_ERR_INVALID);
    assert_non_null(strstr(fp_error_message(), "patience"));
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
        cmocka_unit_test(test_dp_learns_and_accounts),
        cmocka_unit_test(test_dp_calibrated_reproducible),
        cmocka_unit_test(test_dp_resume_and_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
