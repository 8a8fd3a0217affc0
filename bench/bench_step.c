/* fedprof-bench-step: where a training step's time goes and how far it is from the sgemm limit.
 *
 * Prints (1) the sgemm rate of this machine through fp_k_sgemm on a large square product and on
 * the model's own shapes, (2) the time of a forward pass, a forward+backward pass and an Adam
 * step for a synthetic batch, and (3) the model's useful matmul FLOPs per step divided by the
 * step time, as a fraction of the large-sgemm rate.
 *   fedprof-bench-step [--dim 50] [--blocks 2] [--heads 1] [--maxlen 200] [--batch 128]
 *                      [--items 3416] [--mean-len 50] [--threads 2] [--steps 50]
 * A benchmark, not a test: it never fails because the machine is slow. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cli.h"
#include "common/data.h"
#include "common/kernels.h"
#include "common/log.h"
#include "common/model.h"
#include "common/params.h"

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
    int dim = 50, blocks = 2, heads = 1, maxlen = 200, batch = 128, items = 3416, threads = 2, steps = 50, help = 0;
    float mean_len = 50;
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
    fp_k_set_threads(threads);
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
    fp_model_config_t mc = {items, dim, blocks, heads, maxlen, 0.2f, FP_LOSS_BCE, 1, 0.0f};
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
