/* test_cli: fedprof-client as a user runs it: every command's happy path on synthetic data,
 * and bad flags, files and ids rejected with a clear message and a non-zero exit, never a crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/kernels.h"

static char tmpdir[256];
static const char *bin;
static char out_buf[1 << 16], err_buf[1 << 16];

static void slurp(const char *path, char *buf, size_t n)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    size_t k = fread(buf, 1, n - 1, f);
    buf[k] = '\0';
    fclose(f);
}

/* Runs `prog ARGS`, captures stdout/stderr, returns the exit status (128+sig if killed). */
static int vrun(const char *prog, const char *fmt, va_list ap)
{
    char args[2048], cmd[4096], o[300], e[300];
    vsnprintf(args, sizeof args, fmt, ap);
    snprintf(o, sizeof o, "%s/stdout", tmpdir);
    snprintf(e, sizeof e, "%s/stderr", tmpdir);
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s >'%s' 2>'%s' </dev/null", tmpdir, prog, args, o, e);
    int st = system(cmd);
    slurp(o, out_buf, sizeof out_buf);
    slurp(e, err_buf, sizeof err_buf);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return WEXITSTATUS(st);
}

/* `bin ARGS` */
static int run(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vrun(bin, fmt, ap);
    va_end(ap);
    return r;
}

/* `/bin/sh ARGS` (to run bin in a changed environment) */
static int run_sh(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vrun("/bin/sh", fmt, ap);
    va_end(ap);
    return r;
}

static void write_file(const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    bin = getenv("FEDPROF_CLIENT");
    if (!bin)
        bin = FEDPROF_BINARY_DIR "/fedprof-client";
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fedprof-test-cli-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    /* One small trained model shared by the tests below. */
    if (run("synth --out data.txt --users 300 --items 150 --mean-len 10 --seed 3") != 0)
        return -1;
    if (run("train --data data.txt --out model --epochs 3 --dim 16 --blocks 1 --maxlen 16 --batch 64 "
            "--threads 1 --quiet --json") != 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_train_json(void **state)
{
    (void)state;
    assert_int_equal(run("train --data data.txt --out m2 --epochs 2 --dim 16 --blocks 1 --maxlen 16 --batch 64 "
                         "--threads 1 --quiet --json --eval-users 100"),
                     0);
    const char *keys[] = {"\"hr@10\"", "\"ndcg@10\"", "\"full_hr@10\"", "\"full_ndcg@10\"", "\"popularity_hr@10\"",
                          "\"epochs\":2", "\"seconds\"", "\"seqs_per_s\"", "\"peak_rss_mb\"", "\"eval_users\":100"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (!strstr(out_buf, keys[i]))
            fail_msg("missing %s in: %s", keys[i], out_buf);
    }
    /* Quiet: nothing on stderr. */
    assert_string_equal(err_buf, "");
}

/* Idle OpenMP threads (common/threads_env.h): with no policy in the environment the client
 * re-executes itself with GOMP_SPINCOUNT=1000 and says so; a user's policy is kept as given. The
 * flags after the re-exec still apply (same argv: --epochs 1 shows as "epochs":1). */
static void test_train_thread_wait_policy(void **state)
{
    (void)state;
    const char *base = "train --data data.txt --out mw --epochs 1 --dim 16 --blocks 1 --maxlen 16 --threads 1 "
                       "--quiet --json --eval-users 50";
    /* OMP_DISPLAY_ENV: libgomp itself prints the spin count it read when it was loaded */
    assert_int_equal(run_sh("-c \"exec env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u FEDPROF_THREADS_ENV "
                            "OMP_DISPLAY_ENV=verbose '%s' %s\"",
                            bin, base),
                     0);
    if (!strstr(out_buf, "\"omp_wait\":\"GOMP_SPINCOUNT=1000 (fedprof's default)\"") || !strstr(out_buf, "\"epochs\":1"))
        fail_msg("no default policy in: %s / %s", out_buf, err_buf);
    if (!strstr(err_buf, "GOMP_SPINCOUNT = '1000'"))
        fail_msg("libgomp did not read the spin count: %s", err_buf);
    assert_int_equal(run_sh("-c \"OMP_WAIT_POLICY=passive GOMP_SPINCOUNT= exec '%s' %s\"", bin, base), 0);
    if (!strstr(out_buf, "\"omp_wait\":\"OMP_WAIT_POLICY=passive (environment)\""))
        fail_msg("the user's policy not kept: %s / %s", out_buf, err_buf);
    assert_int_equal(run_sh("-c \"exec env -u OMP_WAIT_POLICY GOMP_SPINCOUNT=20 '%s' %s\"", bin, base), 0);
    if (!strstr(out_buf, "\"omp_wait\":\"GOMP_SPINCOUNT=20 (environment)\""))
        fail_msg("the user's spin count not kept: %s / %s", out_buf, err_buf);
}

/* --device: a bad name is a usage error; auto says in one line where it trains (the CPU here
 * when no GPU is usable); cuda without a usable GPU fails with the reason, before reading data. */
static void test_train_device(void **state)
{
    (void)state;
    assert_int_equal(run("train --data data.txt --out x --device gpu"), 2);
    assert_non_null(strstr(err_buf, "not auto, cpu or cuda"));
    assert_int_equal(run("train --data data.txt --out md --epochs 1 --dim 16 --blocks 1 --maxlen 16 --threads 1 "
                         "--eval-users 50 --device auto"),
                     0);
    assert_non_null(strstr(err_buf, "device: "));
    assert_int_equal(run("train --data data.txt --out md --epochs 1 --dim 16 --blocks 1 --maxlen 16 --threads 1 "
                         "--eval-users 50 --device cpu --quiet"),
                     0);
    fp_k_device got;
    if (fp_k_device_select(FP_K_DEVICE_AUTO, &got, NULL, 0) == FP_OK && got == FP_K_DEVICE_CPU) {
        assert_int_equal(run("train --data data.txt --out md --epochs 1 --device cuda"), 1);
        assert_non_null(strstr(err_buf, "device cuda: "));
        assert_null(strstr(err_buf, "read data.txt")); /* refused before any work */
        assert_int_equal(run("join --server 127.0.0.1:1 --data data.txt --insecure --name a --device cuda"), 1);
        assert_non_null(strstr(err_buf, "device cuda: "));
    }
    fp_k_device_select(FP_K_DEVICE_CPU, NULL, NULL, 0);
}

/* DP-SGD from the flags and from configs/dp-record.yaml: the JSON line carries the privacy
 * report; contradictory flags are refused. */
static void test_train_dp_json(void **state)
{
    (void)state;
    assert_int_equal(run("train --data data.txt --out mdp --epochs 2 --dim 8 --blocks 1 --maxlen 16 --batch 64 "
                         "--threads 1 --quiet --json --eval-users 50 --no-full --dp-epsilon 5 --dp-clip 2"),
                     0);
    const char *keys[] = {"\"dp\":\"record\"", "\"epsilon\":", "\"delta\":", "\"noise_multiplier\":",
                          "\"sampling_rate\":", "\"dp_steps\":", "\"clip\":2.0", "\"clipped_fraction\":"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strstr(out_buf, keys[i]))
            fail_msg("missing %s in: %s", keys[i], out_buf);
    double eps = atof(strstr(out_buf, "\"epsilon\":") + 10);
    assert_true(eps > 4.9 && eps <= 5.0);
    /* without noise epsilon is infinite: null in JSON */
    assert_int_equal(run("train --data data.txt --out mdp0 --epochs 1 --dim 8 --blocks 1 --maxlen 16 --batch 64 "
                         "--threads 1 --quiet --json --eval-users 50 --no-full --dp-noise 0"),
                     0);
    assert_non_null(strstr(out_buf, "\"epsilon\":null"));
    /* not DP: no privacy keys */
    assert_int_equal(run("train --data data.txt --out mdp1 --epochs 1 --dim 8 --blocks 1 --maxlen 16 --batch 64 "
                         "--threads 1 --quiet --json --eval-users 50 --no-full --config '%s' --no-dp",
                         FEDPROF_SOURCE_DIR "/configs/dp-record.yaml"),
                     0);
    assert_null(strstr(out_buf, "\"epsilon\""));
    /* the shipped example config */
    assert_int_equal(run("train --data data.txt --out mdp2 --epochs 1 --dim 8 --blocks 1 --maxlen 16 --batch 64 "
                         "--threads 1 --json --eval-users 50 --no-full --config '%s'",
                         FEDPROF_SOURCE_DIR "/configs/dp-record.yaml"),
                     0);
    assert_non_null(strstr(out_buf, "\"dp\":\"record\""));
    assert_non_null(strstr(err_buf, "DP-SGD (record level)"));
    assert_int_equal(run("train --data data.txt --out x --dp-epsilon 1 --dp-noise 1"), 2);
    assert_int_equal(run("train --data data.txt --out x --dp-epsilon 0"), 1);
    assert_int_equal(run("train --data data.txt --out x --dp-delta 0.9"), 1);
    assert_int_equal(run("train --data data.txt --out x --dp-epsilon 3 --patience 2 --epochs 1"), 1);
    assert_non_null(strstr(err_buf, "patience"));
}

static void test_train_progress_without_tty_is_one_line_per_epoch(void **state)
{
    (void)state;
    assert_int_equal(run("train --data data.txt --out m3 --epochs 2 --dim 8 --blocks 1 --maxlen 8 --threads 1 "
                         "--eval-users 50 --no-full"),
                     0);
    assert_non_null(strstr(err_buf, "epoch 1/2"));
    assert_non_null(strstr(err_buf, "epoch 2/2"));
    assert_null(strstr(err_buf, "\r")); /* no progress bar when stderr is not a TTY */
}

static void test_eval_json(void **state)
{
    (void)state;
    assert_int_equal(run("eval --model model/model.safetensors --data data.txt --json --quiet --threads 1"), 0);
    assert_non_null(strstr(out_buf, "\"ndcg@10\""));
    assert_non_null(strstr(out_buf, "\"popularity_full_hr@10\""));
}

static void test_embed_npy(void **state)
{
    (void)state;
    assert_int_equal(run("embed --model model/model.safetensors --data data.txt --out prof.npy --json --threads 1"), 0);
    assert_non_null(strstr(out_buf, "\"users\":300"));
    char p[512];
    snprintf(p, sizeof p, "%s/prof.npy", tmpdir);
    FILE *f = fopen(p, "rb");
    assert_non_null(f);
    unsigned char h[128];
    assert_int_equal(fread(h, 1, 128, f), 128);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    assert_memory_equal(h, "\x93NUMPY\x01\x00", 8);
    size_t hl = h[8] | (h[9] << 8);
    assert_int_equal((10 + hl) % 64, 0);
    assert_non_null(strstr((char *)h + 10, "'shape': (300, 16)"));
    assert_int_equal(size, (long)(10 + hl + 300 * 16 * 4));
    snprintf(p, sizeof p, "%s/prof.npy.ids.txt", tmpdir);
    slurp(p, out_buf, sizeof out_buf);
    int lines = 0;
    for (char *c = out_buf; *c; c++)
        lines += *c == '\n';
    assert_int_equal(lines, 300);
}

static void test_recommend(void **state)
{
    (void)state;
    assert_int_equal(run("recommend --model model/model.safetensors --data data.txt --user 1 --k 5 --json"), 0);
    int n = 0;
    for (char *c = strstr(out_buf, "\"item\""); c; c = strstr(c + 1, "\"item\""))
        n++;
    assert_int_equal(n, 5);
    assert_int_equal(run("recommend --model model/model.safetensors --data data.txt --user nobody"), 1);
    assert_non_null(strstr(err_buf, "nobody"));
}

static void test_bad_flags(void **state)
{
    (void)state;
    assert_int_equal(run(""), 2);
    assert_int_equal(run("frobnicate"), 2);
    assert_int_equal(run("train --help"), 0);
    assert_non_null(strstr(out_buf, "--resume"));
    assert_int_equal(run("train --data data.txt"), 2);
    assert_int_equal(run("train --data data.txt --out x --epochs abc"), 1);
    assert_non_null(strstr(err_buf, "--epochs"));
    assert_int_equal(run("train --data data.txt --out x --epochs 5x"), 1);
    assert_int_equal(run("train --data data.txt --out x --dropout 1.5"), 1);
    assert_int_equal(run("train --data data.txt --out x --threads 0"), 1);
    assert_int_equal(run("train --data data.txt --out x --bogus 1"), 1);
    assert_non_null(strstr(err_buf, "--bogus"));
    assert_int_equal(run("train --data data.txt --out x --epochs 1 --epochs 2"), 1);
    assert_int_equal(run("train --data data.txt --out x --dim"), 1);
    assert_int_equal(run("train --data data.txt --out x --dim 10 --heads 3"), 1);
    assert_int_equal(run("train --data data.txt --out x --loss hinge"), 2);
    assert_int_equal(run("train --data data.txt --out x --block postnorm"), 2);
    assert_int_equal(run("train --data data.txt --out x --seed -1"), 1);
    assert_int_equal(run("embed --model model/model.safetensors --data data.txt"), 2);
    /* --format: the config's names, on every command that reads data */
    assert_int_equal(run("train --data data.txt --out x --format xml"), 1);
    assert_non_null(strstr(err_buf, "--format: data.format: 'xml' is not auto, text or csv"));
    assert_int_equal(run("eval --model model/model.safetensors --data data.txt --format CSV"), 1);
    assert_non_null(strstr(err_buf, "'CSV' is not auto, text or csv"));
    assert_int_equal(run("eval --model model/model.safetensors --data data.txt --format text --eval-users 20 --quiet"), 0);
}

static void test_bad_files(void **state)
{
    (void)state;
    assert_int_equal(run("train --data missing.txt --out x --epochs 1"), 1);
    assert_non_null(strstr(err_buf, "missing.txt"));
    write_file("bad.txt", "1 2\n1 x\n");
    assert_int_equal(run("train --data bad.txt --out x --epochs 1"), 1);
    assert_non_null(strstr(err_buf, "bad.txt"));
    write_file("bad.yaml", "model:\n  dim: fifty\n");
    assert_int_equal(run("train --data data.txt --config bad.yaml --out x --epochs 1"), 1);
    assert_non_null(strstr(err_buf, "bad.yaml"));
    write_file("notamodel.safetensors", "this is not a safetensors file at all");
    assert_int_equal(run("eval --model notamodel.safetensors --data data.txt"), 1);
    assert_int_equal(run("embed --model notamodel.safetensors --data data.txt --out p.npy"), 1);
    assert_int_equal(run("eval --model nothere.safetensors --data data.txt"), 1);
    /* Data whose items the model has never seen: nothing to evaluate, a clear error or zero users. */
    write_file("strangers.txt", "a 9991\na 9992\na 9993\n");
    int rc = run("eval --model model/model.safetensors --data strangers.txt");
    assert_true(rc == 0 || rc == 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_json),
        cmocka_unit_test(test_train_device),
        cmocka_unit_test(test_train_thread_wait_policy),
        cmocka_unit_test(test_train_dp_json),
        cmocka_unit_test(test_train_progress_without_tty_is_one_line_per_epoch),
        cmocka_unit_test(test_eval_json),
        cmocka_unit_test(test_embed_npy),
        cmocka_unit_test(test_recommend),
        cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_bad_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
