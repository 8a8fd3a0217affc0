/* train: the epoch loop (batch → forward/backward → Adam), periodic validation, atomic
 * checkpoints of model + optimizer state, resume, and the final test evaluation. */
#include "client/train.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "client/dpsgd.h"
#include "common/checkpoint.h"
#include "common/log.h"
#include "common/model.h"
#include "common/model_io.h"
#include "common/params.h"
#include "common/threads_env.h"

#define FP_CHECKPOINT_EVERY_S 60.0

fp_status fp_train_model_path(const char *dir, char *buf, size_t n)
{
    if ((size_t)snprintf(buf, n, "%s/model.safetensors", dir) >= n)
        return FP_FAIL(FP_ERR_RANGE, "path too long: %s", dir);
    return FP_OK;
}

static fp_status state_path(const char *dir, char *buf, size_t n)
{
    if ((size_t)snprintf(buf, n, "%s/train_state.safetensors", dir) >= n)
        return FP_FAIL(FP_ERR_RANGE, "path too long: %s", dir);
    return FP_OK;
}

static fp_status ensure_dir(const char *dir)
{
    if (mkdir(dir, 0755) == 0 || errno == EEXIST) {
        struct stat sb;
        if (stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode))
            return FP_OK;
        return FP_FAIL(FP_ERR_IO, "%s exists and is not a directory", dir);
    }
    return FP_FAIL(FP_ERR_IO, "cannot create directory %s: %s", dir, strerror(errno));
}

/* FNV-1a over the parameter bytes: ties a training state to the exact model file it belongs to. */
static uint64_t params_fingerprint(fp_model_t *m)
{
    const unsigned char *b = (const unsigned char *)fp_model_params(m);
    size_t n = fp_model_layout(m)->total * sizeof(float);
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* DP-SGD history kept in the training state: the steps composed so far and the parameters they
 * were composed with ("dp_plan" = q, accounted noise multiplier, delta as %.17g). */
typedef struct {
    int present;
    int64_t steps;
    double q, noise, delta;
} dp_hist_t;

/* Training state: Adam moments as tensors "adam.m.<name>"/"adam.v.<name>", counters, generator
 * states and the fingerprint of the parameters as metadata (and the DP history when DP is on). The model and the state are two
 * atomic files; a crash between the two writes leaves them from different epochs, which resume
 * detects through the fingerprint and refuses instead of silently mixing them. */
static fp_status save_state(const char *dir, fp_model_t *m, const fp_adam_t *adam, int epoch, fp_rng_t brng,
                            fp_rng_t drng, const dp_hist_t *dp)
{
    char path[4096], m_epoch[32], m_step[32], m_rng[160], m_fp[32], m_dps[32], m_dpp[96];
    fp_status st = state_path(dir, path, sizeof path);
    if (st != FP_OK)
        return st;
    snprintf(m_epoch, sizeof m_epoch, "%d", epoch);
    snprintf(m_step, sizeof m_step, "%" PRId64, adam->step);
    snprintf(m_rng, sizeof m_rng, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64
             "%016" PRIx64 "%016" PRIx64 "%016" PRIx64,
             brng.s[0], brng.s[1], brng.s[2], brng.s[3], drng.s[0], drng.s[1], drng.s[2], drng.s[3]);
    snprintf(m_fp, sizeof m_fp, "%016" PRIx64, params_fingerprint(m));
    fp_kv_t meta[] = {{"format", "fedprof-train-state"}, {"epoch", m_epoch}, {"adam_step", m_step}, {"rng", m_rng},
                      {"params_fnv", m_fp}, {"dp_steps", m_dps}, {"dp_plan", m_dpp}};
    size_t n_meta = sizeof meta / sizeof meta[0] - 2;
    if (dp && dp->present) {
        snprintf(m_dps, sizeof m_dps, "%" PRId64, dp->steps);
        snprintf(m_dpp, sizeof m_dpp, "%.17g %.17g %.17g", dp->q, dp->noise, dp->delta);
        n_meta += 2;
    }
    /* m and v in one file: a layout holding both sets of names. */
    const fp_layout_t *l = fp_model_layout(m);
    fp_layout_t both;
    fp_layout_init(&both);
    float *buf = NULL;
    for (int pass = 0; pass < 2 && st == FP_OK; pass++)
        for (size_t i = 0; i < l->n_tensors && st == FP_OK; i++) {
            char name[FP_PARAMS_NAME_MAX + 8];
            snprintf(name, sizeof name, "adam.%c.%s", pass ? 'v' : 'm', l->tensors[i].name);
            st = fp_layout_add(&both, name, l->tensors[i].ndim, l->tensors[i].shape); /* fails if > name max */
        }
    if (st == FP_OK && !(buf = fp_buffer_alloc(both.total)))
        st = FP_ERR_NOMEM;
    if (st == FP_OK) {
        for (int pass = 0; pass < 2; pass++)
            for (size_t i = 0; i < l->n_tensors; i++) {
                const fp_tensor_info_t *src = &l->tensors[i];
                const fp_tensor_info_t *dst = &both.tensors[pass * l->n_tensors + i];
                memcpy(buf + dst->offset, (pass ? adam->v : adam->m) + src->offset, src->numel * sizeof(float));
            }
        st = fp_safetensors_save(path, &both, buf, NULL, meta, n_meta);
    }
    fp_buffer_free(buf);
    fp_layout_free(&both);
    return st;
}

static fp_status parse_u64_hex(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (d < 0)
            return FP_ERR_PARSE;
        v = (v << 4) | (uint64_t)d;
    }
    *out = v;
    return FP_OK;
}

static fp_status load_state(const char *dir, fp_model_t *m, fp_adam_t *adam, int *epoch, fp_rng_t *brng,
                            fp_rng_t *drng, dp_hist_t *dp)
{
    memset(dp, 0, sizeof *dp);
    char path[4096];
    fp_status st = state_path(dir, path, sizeof path);
    if (st != FP_OK)
        return st;
    fp_st_file_t *f = NULL;
    if ((st = fp_safetensors_load(path, &f)) != FP_OK)
        return st;
    const char *fmt = fp_st_meta(f, "format"), *ep = fp_st_meta(f, "epoch"), *sp = fp_st_meta(f, "adam_step"),
               *rg = fp_st_meta(f, "rng"), *fpr = fp_st_meta(f, "params_fnv");
    char *end = NULL;
    uint64_t want_fp = 0;
    if (!fmt || strcmp(fmt, "fedprof-train-state") != 0 || !ep || !sp || !rg || strlen(rg) != 128 || !fpr ||
        strlen(fpr) != 16 || parse_u64_hex(fpr, &want_fp) != FP_OK) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: not a fedprof training state", path);
        goto out;
    }
    if (want_fp != params_fingerprint(m)) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s does not belong to the model beside it (a checkpoint was interrupted); "
                     "train again without --resume", path);
        goto out;
    }
    errno = 0;
    long e = strtol(ep, &end, 10);
    long long s = strtoll(sp, NULL, 10);
    if (errno || *end || e < 0 || e > 1000000000L || s < 0) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: bad epoch/step", path);
        goto out;
    }
    uint64_t r[8];
    for (int i = 0; i < 8; i++)
        if (parse_u64_hex(rg + 16 * i, &r[i]) != FP_OK) {
            st = FP_FAIL(FP_ERR_FORMAT, "%s: bad generator state", path);
            goto out;
        }
    if ((st = fp_safetensors_read_layout(f, fp_model_layout(m), "adam.m.", adam->m)) != FP_OK ||
        (st = fp_safetensors_read_layout(f, fp_model_layout(m), "adam.v.", adam->v)) != FP_OK)
        goto out;
    const char *dps = fp_st_meta(f, "dp_steps"), *dpp = fp_st_meta(f, "dp_plan");
    if (dps || dpp) {
        char *e1 = NULL;
        errno = 0;
        long long n = dps ? strtoll(dps, &e1, 10) : -1;
        int ok = dps && dpp && !errno && e1 && !*e1 && n >= 0 &&
                 sscanf(dpp, "%lf %lf %lf", &dp->q, &dp->noise, &dp->delta) == 3;
        if (!ok) {
            st = FP_FAIL(FP_ERR_FORMAT, "%s: bad DP history (dp_steps / dp_plan)", path);
            goto out;
        }
        dp->present = 1;
        dp->steps = n;
    }
    *epoch = (int)e;
    adam->step = s;
    for (int i = 0; i < 4; i++) {
        brng->s[i] = r[i];
        drng->s[i] = r[4 + i];
    }
out:
    fp_safetensors_close(f);
    return st;
}

static void log_eval(const char *what, int k, const fp_eval_result_t *r, int full)
{
    if (full)
        fp_log_info("%s: HR@%d %.4f NDCG@%d %.4f | full HR@%d %.4f NDCG@%d %.4f | popularity HR@%d %.4f (%" PRId64
                    " users, %.1fs)",
                    what, k, r->hr, k, r->ndcg, k, r->full_hr, k, r->full_ndcg, k, r->pop_hr, r->users, r->seconds);
    else
        fp_log_info("%s: HR@%d %.4f NDCG@%d %.4f | popularity HR@%d %.4f (%" PRId64 " users, %.1fs)", what, k, r->hr,
                    k, r->ndcg, k, r->pop_hr, r->users, r->seconds);
}

fp_status fp_train_run(fp_config_t *cfg, fp_dataset_t *d, const fp_train_opts_t *o, fp_train_report_t *rep)
{
    double t_start = fp_now();
    memset(rep, 0, sizeof *rep);
    fp_status st = FP_OK;
    fp_model_t *m = NULL;
    fp_batcher_t *bat = NULL;
    fp_adam_t adam = {0};
    fp_split_t split = {0};
    int64_t *pop = NULL;
    int32_t *seq = NULL, *pos = NULL, *neg = NULL;
    int start_epoch = 0;
    char model_path[4096];
    fp_rng_t drng;
    fp_dpsgd_t *dps = NULL;
    fp_dpsgd_plan_t plan = {0};
    dp_hist_t hist = {0};
    const int dp = cfg->dp.unit == FP_DP_UNIT_RECORD;

    if (dp && cfg->train.patience > 0)
        return FP_FAIL(FP_ERR_INVALID, "train.patience = %d with DP: early stopping on validation data is outside the "
                       "privacy guarantee; set it to 0", cfg->train.patience);
    if ((st = ensure_dir(o->out_dir)) != FP_OK || (st = fp_train_model_path(o->out_dir, model_path, sizeof model_path)))
        return st;
    int threads = cfg->train.threads;
    /* Under DP train.batch is the EXPECTED Poisson batch; the model holds a sub-batch of rows. */
    const int rows_max = dp ? fp_dpsgd_max_batch(cfg->train.batch) : cfg->train.batch;
    if (o->resume) {
        fp_config_t saved;
        char **items = NULL;
        if ((st = fp_model_load(model_path, rows_max, threads, &m, &saved, &items)) != FP_OK)
            goto out;
        int64_t dropped = 0;
        int32_t n_before = d->n_items;
        st = fp_data_remap_items(d, items, saved.model.n_items, &dropped);
        fp_model_items_free(items, saved.model.n_items);
        if (st != FP_OK)
            goto out;
        if (dropped > 0 || n_before != saved.model.n_items) {
            st = FP_FAIL(FP_ERR_INVALID, "--resume: the data's items differ from the checkpoint's (%d vs %d items, %" PRId64
                         " interactions with unknown items)", n_before, saved.model.n_items, dropped);
            goto out;
        }
        /* The architecture comes from the checkpoint; training settings from this run. */
        cfg->model = saved.model;
    } else {
        cfg->model.n_items = d->n_items;
        if ((st = fp_model_config_validate(&cfg->model)) != FP_OK ||
            (st = fp_model_create(&cfg->model, rows_max, threads, &m)) != FP_OK)
            goto out;
        fp_model_init(m, cfg->train.seed);
    }
    const fp_model_config_t *mc = fp_model_config(m);
    const int T = mc->maxlen, B = cfg->train.batch, K = mc->n_neg;
    if ((st = fp_adam_create(&adam, fp_model_layout(m)->total)) != FP_OK || (st = fp_split_loo(d, &split)) != FP_OK ||
        (st = fp_split_popularity(&split, &pop)) != FP_OK ||
        (st = fp_batcher_create(&split, T, rows_max, K, cfg->train.seed, &bat)) != FP_OK)
        goto out;
    fp_rng_seed(&drng, cfg->train.seed ^ 0xd20d0f7ULL);
    if (o->resume) {
        fp_rng_t brng;
        if ((st = load_state(o->out_dir, m, &adam, &start_epoch, &brng, &drng, &hist)) != FP_OK)
            goto out;
        fp_batcher_set_rng(bat, brng);
        fp_log_info("resuming from %s at epoch %d (step %" PRId64 ")", o->out_dir, start_epoch, adam.step);
    }
    if (fp_batcher_n_users(bat) == 0) {
        st = FP_FAIL(FP_ERR_INVALID, "no user has 2 or more training items: nothing to train on");
        goto out;
    }
    if (dp) {
        const int32_t users = fp_batcher_n_users(bat);
        const int64_t spe = ((int64_t)users + B - 1) / B;
        if ((st = fp_dpsgd_plan(cfg->dp.noise_multiplier, cfg->dp.target_epsilon, cfg->dp.clip, cfg->dp.delta, users,
                                B, fp_model_layout(m)->total, (int64_t)cfg->train.epochs * spe, &plan)) != FP_OK)
            goto out;
        if (o->resume && adam.step > 0 && !hist.present) {
            st = FP_FAIL(FP_ERR_INVALID, "--resume with DP: the checkpoint in %s was trained without DP, so no "
                         "guarantee covers it; train from scratch", o->out_dir);
            goto out;
        }
        if (hist.present && (hist.q != plan.q || hist.noise != plan.noise_accounted || hist.delta != plan.delta)) {
            st = FP_FAIL(FP_ERR_INVALID, "--resume with DP: the checkpoint was trained with q %.6g, noise %.6g, "
                         "delta %g, this run would use q %.6g, noise %.6g, delta %g; keep the DP settings (and "
                         "epochs, when target_epsilon calibrates the noise)", hist.q, hist.noise, hist.delta, plan.q,
                         plan.noise_accounted, plan.delta);
            goto out;
        }
        hist.present = 1;
        hist.q = plan.q;
        hist.noise = plan.noise_accounted;
        hist.delta = plan.delta;
        if ((st = fp_dpsgd_create(&plan, cfg->dp.seed, &dps)) != FP_OK)
            goto out;
        double eps_plan = 0;
        if ((st = fp_dpsgd_epsilon(&plan, (int64_t)cfg->train.epochs * plan.steps_per_epoch, &eps_plan)) != FP_OK)
            goto out;
        fp_log_info("DP-SGD (record level): q %.6f (%d expected of %d users, sub-batches of %d), noise multiplier "
                    "%.4f (accounted %.4f), clip %g, grid 2^%d; %d epochs x %" PRId64 " steps -> epsilon %.4f at "
                    "delta %g%s",
                    plan.q, B, users, rows_max, plan.noise_multiplier, plan.noise_accounted, plan.clip,
                    (int)log2(plan.grid), cfg->train.epochs, plan.steps_per_epoch, eps_plan, plan.delta,
                    cfg->dp.seed ? " [fixed dp.seed: NO PRIVACY, tests only]" : "");
    } else if (hist.present) {
        fp_log_warn("--resume without DP: the checkpoint was trained with DP; the result carries no guarantee");
        hist.present = 0;
    }
    seq = malloc((size_t)rows_max * T * sizeof *seq);
    pos = malloc((size_t)rows_max * T * sizeof *pos);
    neg = malloc((size_t)rows_max * T * K * sizeof *neg);
    if (!seq || !pos || !neg) {
        st = FP_FAIL(FP_ERR_NOMEM, "batch buffers");
        goto out;
    }
    fp_log_info("training on %d users, %d items, %" PRId64 " interactions: dim %d, %d blocks, %d heads, maxlen %d, "
                "batch %d, %d threads (idle threads: %s)",
                d->n_users, d->n_items, d->n_interactions, mc->dim, mc->blocks, mc->heads, T, B, threads,
                fp_threads_env_describe());

    fp_eval_opts_t vo = {cfg->eval.k, cfg->eval.negatives, cfg->eval.max_users, 0, 0, cfg->eval.seed};
    double best_ndcg = -1.0, last_ckpt = fp_now();
    int evals_without_gain = 0;
    int32_t nb = dp ? (int32_t)plan.steps_per_epoch : fp_batcher_batches_per_epoch(bat);
    int epoch = start_epoch;
    while (epoch < cfg->train.epochs) {
        epoch++;
        char label[64];
        snprintf(label, sizeof label, "epoch %d/%d", epoch, cfg->train.epochs);
        fp_progress_t prog;
        fp_progress_begin(&prog, label, nb);
        double loss_sum = 0.0;
        int64_t nbatch = 0, dp_sampled = 0, dp_clipped = 0;
        int epoch_end = 0;
        double t0 = fp_now();
        while (!epoch_end) {
            int rows = 0;
            double loss = 0.0;
            if (dp) {
                /* one DP-SGD step: Poisson sample, clipped sum, noise, / expected batch */
                fp_dpsgd_step_t si;
                if ((st = fp_dpsgd_grads(dps, m, bat, seq, pos, neg, &drng, &si)) != FP_OK)
                    goto out;
                rows = si.sampled;
                loss = si.loss;
                dp_sampled += si.sampled;
                dp_clipped += si.clipped;
                epoch_end = nbatch + 1 >= nb;
            } else {
                if ((st = fp_batcher_next(bat, seq, pos, neg, &rows, &epoch_end)) != FP_OK)
                    goto out;
                if (rows == 0)
                    break;
                fp_batch_t b = {rows, seq, pos, neg};
                if ((st = fp_model_loss_grad(m, &b, &drng, &loss)) != FP_OK)
                    goto out;
            }
            if (!isfinite(loss)) {
                st = FP_FAIL(FP_ERR_NUMERIC, "loss became %f at epoch %d step %" PRId64 " (lower the learning rate?)",
                             loss, epoch, adam.step);
                goto out;
            }
            fp_model_adam_step(m, &adam, cfg->train.lr, cfg->train.beta1, cfg->train.beta2, cfg->train.eps);
            if (dp)
                hist.steps++; /* composed by the accountant: counted once the step is taken */
            loss_sum += loss;
            nbatch++;
            rep->sequences += rows;
            /* Whole-run ETA from the pace so far (epochs of this call, training time only). */
            char extra[96];
            double done_epochs = rep->epochs_run + (double)nbatch / (nb > 0 ? nb : 1);
            double per_epoch = (rep->train_seconds + fp_now() - t0) / done_epochs;
            snprintf(extra, sizeof extra, "loss %.4f  run ETA %.0fs", loss_sum / (double)nbatch,
                     per_epoch * (cfg->train.epochs - epoch + 1 - (double)nbatch / (nb > 0 ? nb : 1)));
            fp_progress_update(&prog, nbatch, extra);
        }
        rep->train_seconds += fp_now() - t0;
        rep->steps += nbatch;
        fp_progress_end(&prog);
        rep->final_loss = nbatch ? loss_sum / (double)nbatch : 0.0;
        rep->epochs_run++;
        rep->last_epoch = epoch;
        if (dp) {
            double eps = 0;
            if ((st = fp_dpsgd_epsilon(&plan, hist.steps, &eps)) != FP_OK)
                goto out;
            rep->users_per_step = nbatch ? (double)dp_sampled / (double)nbatch : 0.0;
            rep->clipped_fraction = dp_sampled ? (double)dp_clipped / (double)dp_sampled : 0.0;
            fp_log_info("epoch %d/%d: DP epsilon %.4f at delta %g after %" PRId64 " steps (%.1f users/step, %.1f%% "
                        "clipped)", epoch, cfg->train.epochs, eps, plan.delta, hist.steps, rep->users_per_step,
                        100.0 * rep->clipped_fraction);
        }

        int do_eval = cfg->train.eval_every > 0 && (epoch % cfg->train.eval_every == 0);
        int stop = 0;
        if (do_eval) {
            fp_eval_result_t vr;
            if ((st = fp_eval_run(m, &split, pop, &vo, &vr)) != FP_OK)
                goto out;
            char what[96];
            snprintf(what, sizeof what, "epoch %d loss %.4f valid", epoch, rep->final_loss);
            log_eval(what, cfg->eval.k, &vr, 0);
            if (vr.ndcg > best_ndcg) {
                best_ndcg = vr.ndcg;
                evals_without_gain = 0;
            } else if (cfg->train.patience > 0 && ++evals_without_gain >= cfg->train.patience) {
                fp_log_info("no validation gain in %d evaluations: stopping early", evals_without_gain);
                stop = 1;
            }
        } else if (!fp_log_quiet() && !prog.enabled) {
            /* Without a TTY, one line per epoch is the progress. */
            fp_log_info("epoch %d/%d loss %.4f (%.1fs)", epoch, cfg->train.epochs, rep->final_loss, fp_now() - t0);
        }
        if (do_eval || stop || epoch == cfg->train.epochs || fp_now() - last_ckpt > FP_CHECKPOINT_EVERY_S) {
            if ((st = fp_model_save(model_path, m, cfg, d->item_names)) != FP_OK ||
                (st = save_state(o->out_dir, m, &adam, epoch, fp_batcher_rng(bat), drng, &hist)) != FP_OK)
                goto out;
            last_ckpt = fp_now();
        }
        if (stop)
            break;
    }
    /* Always leave a model behind, also when no epoch ran (e.g. --resume at the last epoch). */
    if (rep->epochs_run == 0 && (st = fp_model_save(model_path, m, cfg, d->item_names)) != FP_OK)
        goto out;
    if (!o->skip_final_eval) {
        fp_eval_opts_t to = {cfg->eval.k, cfg->eval.negatives, cfg->eval.max_users, cfg->eval.full, 1, cfg->eval.seed};
        if ((st = fp_eval_run(m, &split, pop, &to, &rep->test)) != FP_OK)
            goto out;
        log_eval("test", cfg->eval.k, &rep->test, cfg->eval.full);
    }
    if (dp) {
        rep->dp = 1;
        if ((st = fp_dpsgd_epsilon(&plan, hist.steps, &rep->epsilon)) != FP_OK)
            goto out;
        rep->delta = plan.delta;
        rep->noise_multiplier = plan.noise_multiplier;
        rep->noise_accounted = plan.noise_accounted;
        rep->sampling_rate = plan.q;
        rep->clip = plan.clip;
        rep->dp_steps = hist.steps;
        fp_log_info("DP-SGD: (epsilon %.4f, delta %g) for each user's whole sequence, after %" PRId64 " steps",
                    rep->epsilon, rep->delta, rep->dp_steps);
    }
    rep->seqs_per_s = rep->train_seconds > 0 ? (double)rep->sequences / rep->train_seconds : 0.0;
    rep->seconds = fp_now() - t_start;
out:
    fp_dpsgd_destroy(dps);
    free(seq);
    free(pos);
    free(neg);
    free(pop);
    fp_batcher_destroy(bat);
    fp_split_free(&split);
    fp_adam_destroy(&adam);
    fp_model_destroy(m);
    return st;
}
