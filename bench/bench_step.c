/* fedprof-bench-step: where a training step's time goes and how far it is from the sgemm limit.
 *
 * Prints (1) the sgemm rate of this machine through fp_k_sgemm on a large square product and on
 * the model's own shapes, (2) the time of a forward pass, a forward+backward pass and an Adam
 * step for a synthetic batch, (3) the model's useful matmul FLOPs per step divided by the
 * step time, as a fraction of the large-sgemm rate, and (4) with --dp-steps > 0, DP-SGD against
 * that: the clipped gradient (per-user norms + clipped backward) on the same batch, and whole
 * DP-SGD steps (Poisson sample of the same expected batch, clipping, discrete Gaussian noise on
 * every parameter, Adam) with their noise time apart.
 *   fedprof-bench-step [--dim 50] [--blocks 2] [--heads 1] [--maxlen 200] [--batch 128]
 *                      [--items 3416] [--mean-len 50] [--threads 2] [--steps 50] [--dp-steps 10]
 *   fedprof-bench-step --noise N [--reps 5] [--threads 2]: only fp_dp_add_noise's samples/s on N
 *                      coordinates, at the grid and sigma DP-SGD uses for N parameters (clip 1,
 *                      sigma 1) (bench/dp.sh compares it with numpy)
 * A benchmark, not a test: it never fails because the machine is slow. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "client/dpsgd.h"
#include "common/data.h"
#include "common/kernels.h"
#include "common/log.h"
#include "common/model.h"
#include "common/params.h"
#include "common/threads_env.h"
#include "dp/csprng.h"
#include "dp/noise.h"

static double gemm_rate(int M, int N, int K, int reps)
{
    float *A = fp_buffer_alloc((size_t)M * K), *B = fp_buffer_alloc((size_t)K * N), *C = fp_buffer_alloc((size_t)M * N);
    if (!A || !B || !C)
        return 0;
    for (size_t i = 0; i < (size_t)M * K; i++)
        A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)K * N; i++)
        B[i] = (float)(i % 5) * 0.1f;
    fp_k_sgemm(0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    double t0 = fp_now();
    for (int r = 0; r < reps; r++)
        fp_k_sgemm(0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    double dt = fp_now() - t0;
    fp_buffer_free(A);
    fp_buffer_free(B);
    fp_buffer_free(C);
    return 2.0 * M * N * K * reps / dt / 1e9;
}

int main(int argc, char **argv)
{
    if (fp_threads_env_init(argv) != FP_OK) /* harmless: libgomp's default wait policy stays */
        fprintf(stderr, "fedprof-bench-step: note: %s\n", fp_error_message());
    int dim = 50, blocks = 2, heads = 1, maxlen = 200, batch = 128, items = 3416, threads = 2, steps = 50, help = 0;
    int dp_steps = 10, noise_n = 0, reps = 5, simd = FP_DP_SIMD_AVX512;
    float mean_len = 50;
    const char *device = "cpu";
    fp_opt_t opts[] = {
        {"dim", FP_OPT_INT, &dim, 1, 4096, NULL, "hidden size"},
        {"blocks", FP_OPT_INT, &blocks, 1, 64, NULL, "blocks"},
        {"heads", FP_OPT_INT, &heads, 1, 64, NULL, "heads"},
        {"maxlen", FP_OPT_INT, &maxlen, 1, 4096, NULL, "sequence length"},
        {"batch", FP_OPT_INT, &batch, 1, 65536, NULL, "batch"},
        {"items", FP_OPT_INT, &items, 2, 1e8, NULL, "catalogue size"},
        {"mean-len", FP_OPT_FLOAT, &mean_len, 3, 200, NULL, "mean history length of the synthetic users"},
        {"threads", FP_OPT_INT, &threads, 1, 256, NULL, "threads"},
        {"steps", FP_OPT_INT, &steps, 1, 100000, NULL, "timed steps"},
        {"dp-steps", FP_OPT_INT, &dp_steps, 0, 100000, NULL, "timed DP-SGD steps (0: skip the DP section)"},
        {"noise", FP_OPT_INT, &noise_n, 0, 1 << 30, NULL, "only time fp_dp_add_noise on this many coordinates"},
        {"reps", FP_OPT_INT, &reps, 1, 1000, NULL, "repetitions of --noise (the best is reported)"},
        {"device", FP_OPT_STR, &device, 0, 0, NULL, "cpu | cuda | auto: where the model runs (default cpu)"},
        {"simd", FP_OPT_INT, &simd, 0, 2, NULL,
         "the noise sampler's best path: 0 portable, 1 AVX2, 2 AVX-512 (default)"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    if (fp_cli_parse(argc - 1, argv + 1, opts) != FP_OK) {
        fprintf(stderr, "fedprof-bench-step: %s\n", fp_error_message());
        return 2;
    }
    if (help) {
        fp_cli_print_help(opts);
        return 0;
    }
    fp_k_device want, got;
    char dinfo[320];
    if (fp_k_device_parse(device, &want) != FP_OK || fp_k_device_select(want, &got, dinfo, sizeof dinfo) != FP_OK) {
        fprintf(stderr, "fedprof-bench-step: %s\n", fp_error_message());
        return 2;
    }
    printf("device: %s\nidle threads: %s\n", dinfo, fp_threads_env_describe());
    static const char *simd_names[] = {"portable", "AVX2", "AVX-512"};
    printf("noise sampler: %s path\n", simd_names[fp_dp_noise_set_simd(simd)]);
    fp_k_set_threads(threads);
    if (noise_n > 0) {
        fp_dpsgd_plan_t plan;
        float *x = fp_buffer_alloc((size_t)noise_n);
        fp_csprng_t *cr = NULL;
        uint8_t key[FP_CSPRNG_SEED_BYTES] = {3};
        if (!x || fp_dpsgd_plan(1.0, 0, 1.0, 1e-5, 1000, 10, (size_t)noise_n, 1, &plan) ||
            fp_csprng_create_seeded(key, &cr)) {
            fprintf(stderr, "fedprof-bench-step: %s\n", fp_error_message());
            return 1;
        }
        memset(x, 0, (size_t)noise_n * sizeof *x);
        double best = 1e30;
        for (int r = 0; r < reps; r++) {
            double t = fp_now();
            if (fp_dp_add_noise(x, (size_t)noise_n, plan.noise_multiplier * plan.clip, plan.grid, cr) != FP_OK) {
                fprintf(stderr, "fedprof-bench-step: %s\n", fp_error_message());
                return 1;
            }
            t = fp_now() - t;
            best = t < best ? t : best;
        }
        printf("fp_dp_add_noise: %d coordinates, sigma/grid = 2^%.1f: best of %d %.1f ms = %.0f samples/s\n",
               noise_n, log2(plan.noise_multiplier / plan.grid), reps, best * 1e3, noise_n / best);
        fp_csprng_destroy(cr);
        fp_buffer_free(x);
        return 0;
    }
    double peak = gemm_rate(1024, 1024, 1024, 5);
    printf("sgemm 1024^3 (%d threads): %.1f GFLOP/s\n", threads, peak);

    fp_synth_params_t sp;
    fp_synth_defaults(&sp);
    sp.n_users = batch * 8;
    sp.n_items = items;
    sp.mean_len = mean_len;
    fp_dataset_t *d = NULL;
    fp_split_t split = {0};
    fp_batcher_t *bat = NULL;
    fp_model_t *m = NULL;
    fp_adam_t adam = {0};
    fp_model_config_t mc = {.n_items = items, .dim = dim, .blocks = blocks, .heads = heads, .maxlen = maxlen,
                            .dropout = 0.2f, .loss = FP_LOSS_BCE, .n_neg = 1};
    if (fp_data_synthetic(&sp, &d) || fp_split_loo(d, &split) || fp_batcher_create(&split, maxlen, batch, 1, 1, &bat) ||
        fp_model_create(&mc, batch, threads, &m) || fp_adam_create(&adam, fp_model_layout(m)->total)) {
        fprintf(stderr, "fedprof-bench-step: %s\n", fp_error_message());
        return 1;
    }
    fp_model_init(m, 1);
    int32_t *seq = malloc((size_t)batch * maxlen * sizeof *seq), *pos = malloc((size_t)batch * maxlen * sizeof *pos),
            *neg = malloc((size_t)batch * maxlen * sizeof *neg);
    int rows = 0, eoe = 0;
    if (!seq || !pos || !neg || fp_batcher_next(bat, seq, pos, neg, &rows, &eoe)) {
        fprintf(stderr, "fedprof-bench-step: batch\n");
        return 1;
    }
    /* Useful matmul FLOPs of one forward pass over this batch's real tokens. */
    double tokens = 0, att = 0, valid = 0;
    for (int b = 0; b < rows; b++) {
        int len = 0;
        for (int t = 0; t < maxlen; t++) {
            len += seq[(size_t)b * maxlen + t] != 0;
            valid += pos[(size_t)b * maxlen + t] != 0;
        }
        tokens += len;
        att += (double)len * len;
    }
    double fwd = blocks * (12.0 * dim * dim * tokens + 4.0 * att * dim) + 2.0 * 2 * dim * valid;
    double step_flops = 3.0 * fwd;
    printf("batch: %d users, %.0f real tokens of %d slots (%.1f%%)\n", rows, tokens, rows * maxlen,
           100.0 * tokens / (rows * maxlen));
    printf("sgemm at the linear layers' shape [%.0f x %d] x [%d x %d]: %.1f GFLOP/s\n", tokens, dim, dim, dim,
           gemm_rate((int)tokens, dim, dim, 200));

    fp_rng_t rng;
    fp_rng_seed(&rng, 3);
    fp_batch_t b = {rows, seq, pos, neg};
    double loss;
    for (int i = 0; i < 3; i++)
        fp_model_loss_grad(m, &b, &rng, &loss);
    double t0 = fp_now();
    for (int i = 0; i < steps; i++)
        fp_model_loss(m, &b, 1, &rng, &loss);
    double t_fwd = (fp_now() - t0) / steps;
    t0 = fp_now();
    for (int i = 0; i < steps; i++)
        fp_model_loss_grad(m, &b, &rng, &loss);
    double t_fb = (fp_now() - t0) / steps;
    t0 = fp_now();
    for (int i = 0; i < steps; i++)
        fp_model_adam_step(m, &adam, 1e-3f, 0.9f, 0.98f, 1e-8f);
    double t_adam = (fp_now() - t0) / steps;
    double t_step = t_fb + t_adam;
    printf("forward %.2f ms | forward+backward %.2f ms (backward %.2f ms) | Adam %.2f ms (%zu params) | step %.2f ms\n",
           t_fwd * 1e3, t_fb * 1e3, (t_fb - t_fwd) * 1e3, t_adam * 1e3, fp_model_layout(m)->total, t_step * 1e3);
    printf("model matmul work: %.2f GFLOP/step -> %.1f GFLOP/s = %.0f%% of the large-sgemm rate\n", step_flops / 1e9,
           step_flops / t_step / 1e9, 100.0 * step_flops / t_step / 1e9 / peak);
    printf("throughput: %.0f sequences/s\n", rows / t_step);

    if (dp_steps > 0) {
        /* (a) the clipped gradient on the very same batch (norm pass + clipped pass) against one
         * forward+backward, interleaved */
        for (int i = 0; i < 2; i++)
            fp_model_loss_grad_clipped(m, &b, &rng, 1.0, 0, NULL, &loss);
        double t_clip = 0, t_fb2 = 0;
        for (int i = 0; i < steps; i++) {
            t0 = fp_now();
            fp_model_loss_grad(m, &b, &rng, &loss);
            t_fb2 += fp_now() - t0;
            t0 = fp_now();
            if (fp_model_loss_grad_clipped(m, &b, &rng, 1.0, 0, NULL, &loss) != FP_OK) {
                fprintf(stderr, "fedprof-bench-step: %s\n", fp_error_message());
                return 1;
            }
            t_clip += fp_now() - t0;
        }
        t_clip /= steps, t_fb2 /= steps;
        printf("DP clipped gradient, same %d users: %.2f ms = %.2fx forward+backward (%.2f ms, interleaved)\n", rows,
               t_clip * 1e3, t_clip / t_fb2, t_fb2 * 1e3);
        /* (b) whole DP-SGD steps: Poisson sample of expected `batch` over the batch * 8 users,
         * sub-batches of fp_dpsgd_max_batch rows, clipping, / batch, Adam; timed without noise
         * (a sigma = 0 plan: everything else identical), the noise alone, as fp_dpsgd_grads
         * adds it at sigma = 1 (fp_dp_add_noise on every parameter), and the whole sigma = 1
         * step as training runs it (noise and / batch in one pass) */
        const int rmax = fp_dpsgd_max_batch(batch);
        fp_model_t *md = NULL;
        fp_batcher_t *bd = NULL;
        fp_dpsgd_t *dps = NULL, *dps1 = NULL;
        fp_dpsgd_plan_t plan, plan1;
        const size_t P = fp_model_layout(m)->total;
        int32_t *sq = malloc((size_t)rmax * maxlen * sizeof *sq), *ps = malloc((size_t)rmax * maxlen * sizeof *ps),
                *ng = malloc((size_t)rmax * maxlen * sizeof *ng);
        fp_csprng_t *cr = NULL;
        uint8_t key[FP_CSPRNG_SEED_BYTES] = {1};
        if (!sq || !ps || !ng || fp_model_create(&mc, rmax, threads, &md) ||
            fp_batcher_create(&split, maxlen, rmax, 1, 2, &bd) ||
            fp_dpsgd_plan(0.0, 0, 1.0, 1e-5, fp_batcher_n_users(bd), batch, P, 1000, &plan) ||
            fp_dpsgd_plan(1.0, 0, 1.0, 1e-5, fp_batcher_n_users(bd), batch, P, 1000, &plan1) ||
            fp_dpsgd_create(&plan, 7, &dps) || fp_dpsgd_create(&plan1, 8, &dps1) ||
            fp_csprng_create_seeded(key, &cr)) {
            fprintf(stderr, "fedprof-bench-step: %s\n", fp_error_message());
            return 1;
        }
        memcpy(fp_model_params(md), fp_model_params(m), P * sizeof(float));
        fp_dpsgd_step_t info;
        double sampled = 0, t_dp = 0, t_noise = 0, t_norm = 0, normal_rows = 0, t_whole = 0;
        fp_dpsgd_grads(dps, md, bd, sq, ps, ng, &rng, &info); /* warm-up */
        fp_dpsgd_grads(dps1, md, bd, sq, ps, ng, &rng, &info);
        for (int i = 0; i < dp_steps; i++) {
            /* interleaved, so that a change in the machine's load hits both alike */
            /* a normal training step as fedprof-client runs one: the next batch from the batcher
             * (negatives sampled), forward+backward, Adam; the DP step builds its batches too */
            t0 = fp_now();
            int nrows = 0, eoe2 = 0;
            if (fp_batcher_next(bat, seq, pos, neg, &nrows, &eoe2) != FP_OK) {
                fprintf(stderr, "fedprof-bench-step: %s\n", fp_error_message());
                return 1;
            }
            const fp_batch_t bn = {nrows, seq, pos, neg};
            fp_model_loss_grad(m, &bn, &rng, &loss);
            fp_model_adam_step(m, &adam, 1e-3f, 0.9f, 0.98f, 1e-8f);
            t_norm += fp_now() - t0;
            normal_rows += nrows;
            t0 = fp_now();
            if (fp_dpsgd_grads(dps, md, bd, sq, ps, ng, &rng, &info) != FP_OK) {
                fprintf(stderr, "fedprof-bench-step: %s\n", fp_error_message());
                return 1;
            }
            fp_model_adam_step(md, &adam, 1e-3f, 0.9f, 0.98f, 1e-8f);
            t_dp += fp_now() - t0;
            t0 = fp_now();
            fp_dp_add_noise(fp_model_grads(md), P, plan1.noise_multiplier * plan1.clip, plan1.grid, cr);
            t_noise += fp_now() - t0;
            sampled += info.sampled;
            t0 = fp_now();
            if (fp_dpsgd_grads(dps1, md, bd, sq, ps, ng, &rng, &info) != FP_OK) {
                fprintf(stderr, "fedprof-bench-step: %s\n", fp_error_message());
                return 1;
            }
            fp_model_adam_step(md, &adam, 1e-3f, 0.9f, 0.98f, 1e-8f);
            t_whole += fp_now() - t0;
        }
        t_dp /= dp_steps, t_noise /= dp_steps, t_norm /= dp_steps, t_whole /= dp_steps;
        printf("DP-SGD step without noise (expected batch %d, mean sample %.1f, sub-batches of %d): %.2f ms = "
               "%.2fx a normal step (%.2f ms for %.1f rows: batching, forward+backward, Adam; interleaved)\n",
               batch, sampled / dp_steps, rmax, t_dp * 1e3, t_dp / t_norm, t_norm * 1e3, normal_rows / dp_steps);
        printf("  noise on %zu parameters (sigma 1, sigma/grid 2^%.0f): %.2f ms (%.2f M samples/s); sum %.2f ms = "
               "%.2fx a normal step\n",
               P, log2(plan1.noise_multiplier / plan1.grid), t_noise * 1e3, P / t_noise / 1e6, (t_dp + t_noise) * 1e3,
               (t_dp + t_noise) / t_norm);
        printf("whole DP-SGD step as training runs it (sigma 1, noise and / batch in one pass): %.2f ms = %.2fx a "
               "normal step\n",
               t_whole * 1e3, t_whole / t_norm);
        fp_csprng_destroy(cr);
        free(sq), free(ps), free(ng);
        fp_dpsgd_destroy(dps);
        fp_dpsgd_destroy(dps1);
        fp_batcher_destroy(bd);
        fp_model_destroy(md);
    }
    free(seq);
    free(pos);
    free(neg);
    fp_adam_destroy(&adam);
    fp_model_destroy(m);
    fp_batcher_destroy(bat);
    fp_split_free(&split);
    fp_dataset_free(d);
    return 0;
}
