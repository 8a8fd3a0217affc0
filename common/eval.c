/* eval: sampled and full-catalogue HR@K / NDCG@K for the encoder and the popularity baseline. */
#include "common/eval.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/metrics.h"
#include "common/params.h"
#include "common/rng.h"

/* The users to evaluate: those with a target, sampled down to max_users (partial Fisher-Yates). */
static fp_status pick_users(const fp_split_t *s, const fp_eval_opts_t *o, int32_t **out, int64_t *n_out)
{
    const int32_t *target = o->for_test ? s->test : s->valid;
    int32_t n_users = s->d->n_users;
    int32_t *u = malloc((size_t)(n_users > 0 ? n_users : 1) * sizeof *u);
    if (!u)
        return FP_FAIL(FP_ERR_NOMEM, "eval user list");
    int64_t n = 0;
    for (int32_t i = 0; i < n_users; i++)
        if (target[i] > 0)
            u[n++] = i;
    if (o->max_users > 0 && n > o->max_users) {
        fp_rng_t r;
        fp_rng_seed(&r, o->seed ^ 0x5eed0f05e75ULL);
        for (int64_t i = 0; i < o->max_users; i++) {
            int64_t j = i + (int64_t)fp_rng_below(&r, (uint64_t)(n - i));
            int32_t t = u[i];
            u[i] = u[j];
            u[j] = t;
        }
        n = o->max_users;
    }
    *out = u;
    *n_out = n;
    return FP_OK;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

fp_status fp_eval_run(fp_model_t *m, const fp_split_t *s, const int64_t *popularity, const fp_eval_opts_t *o,
                      fp_eval_result_t *r)
{
    const fp_model_config_t *mc = fp_model_config(m);
    const fp_dataset_t *d = s->d;
    if (mc->n_items != d->n_items)
        return FP_FAIL(FP_ERR_INVALID, "model has %d items, data has %d", mc->n_items, d->n_items);
    if (o->k < 1 || o->negatives < 1 || o->negatives >= d->n_items)
        return FP_FAIL(FP_ERR_INVALID, "eval: k=%d negatives=%d with %d items", o->k, o->negatives, d->n_items);
    memset(r, 0, sizeof *r);
    double t0 = fp_now();
    const int T = mc->maxlen, D = mc->dim, C = o->negatives + 1;
    const int64_t NI = (int64_t)d->n_items + 1;
    const int BMAX = fp_model_max_batch(m) < 256 ? fp_model_max_batch(m) : 256;
    const int32_t *target = o->for_test ? s->test : s->valid;

    int32_t *users = NULL, *seq = NULL, *cand = NULL, *stamp = NULL;
    float *prof = NULL, *scores = NULL, *full = NULL, *popf = NULL;
    int64_t n_users = 0;
    fp_status st = pick_users(s, o, &users, &n_users);
    if (st != FP_OK)
        return st;
    qsort(users, (size_t)n_users, sizeof *users, cmp_i32);

    seq = malloc((size_t)BMAX * T * sizeof *seq);
    cand = malloc((size_t)BMAX * C * sizeof *cand);
    stamp = calloc((size_t)NI, sizeof *stamp);
    prof = fp_buffer_alloc((size_t)BMAX * D);
    scores = fp_buffer_alloc((size_t)C);
    popf = fp_buffer_alloc((size_t)NI);
    if (o->full)
        full = fp_buffer_alloc((size_t)BMAX * NI);
    if (!seq || !cand || !stamp || !prof || !scores || !popf || (o->full && !full)) {
        st = FP_FAIL(FP_ERR_NOMEM, "eval buffers");
        goto done;
    }
    for (int64_t i = 0; i < NI; i++)
        popf[i] = (float)popularity[i];

    fp_metrics_t hr, pop, fhr, fpop;
    fp_metrics_init(&hr, o->k);
    fp_metrics_init(&pop, o->k);
    fp_metrics_init(&fhr, o->k);
    fp_metrics_init(&fpop, o->k);
    fp_rng_t rng;
    fp_rng_seed(&rng, o->seed);
    int32_t stamp_id = 0;
    /* hist_items[0] = 0: the padding row is never a candidate in the full ranking. */
    int32_t *hist_items = malloc((size_t)(T + 1) * sizeof *hist_items);
    if (!hist_items) {
        st = FP_FAIL(FP_ERR_NOMEM, "eval buffers");
        goto done;
    }
    fp_progress_t prog;
    fp_progress_begin(&prog, "evaluating", n_users);
    for (int64_t b0 = 0; b0 < n_users; b0 += BMAX) {
        int B = (int)((n_users - b0) < BMAX ? (n_users - b0) : BMAX);
        for (int i = 0; i < B; i++)
            fp_split_history(s, users[b0 + i], o->for_test, T, seq + (size_t)i * T);
        st = fp_model_profiles(m, seq, B, prof);
        if (st != FP_OK)
            break;
        if (o->full)
            fp_model_score_all(m, prof, B, full);
        for (int i = 0; i < B; i++) {
            int32_t u = users[b0 + i];
            int32_t tgt = target[u];
            const int32_t *row = seq + (size_t)i * T;
            /* Mark the input history (the last maxlen items) as excluded. */
            if (++stamp_id == 0) { /* wrapped: reset stamps */
                memset(stamp, 0, (size_t)NI * sizeof *stamp);
                stamp_id = 1;
            }
            int nh = 1;
            hist_items[0] = 0;
            for (int t = 0; t < T; t++)
                if (row[t] > 0) {
                    if (stamp[row[t]] != stamp_id)
                        hist_items[nh++] = row[t];
                    stamp[row[t]] = stamp_id;
                }
            /* Sampled candidates: target first, then negatives (distinct from target and history;
             * duplicates among negatives are allowed, as in SASRec). */
            int32_t *c = cand + (size_t)i * C;
            c[0] = tgt;
            int64_t avail = d->n_items - (nh - 1) - (stamp[tgt] == stamp_id ? 0 : 1);
            if (avail <= 0) {
                st = FP_FAIL(FP_ERR_INVALID, "user %d has interacted with every item: no negatives", u);
                break;
            }
            for (int k = 1; k < C; k++) {
                int32_t it;
                do {
                    it = 1 + (int32_t)fp_rng_below(&rng, (uint64_t)d->n_items);
                } while (it == tgt || stamp[it] == stamp_id);
                c[k] = it;
            }
            fp_model_score_items(m, prof + (size_t)i * D, c, C, scores);
            fp_metrics_add(&hr, fp_metrics_rank(scores[0], scores + 1, C - 1));
            for (int k = 0; k < C; k++)
                scores[k] = popf[c[k]];
            fp_metrics_add(&pop, fp_metrics_rank(scores[0], scores + 1, C - 1));
            if (o->full) {
                const float *fs = full + (size_t)i * NI;
                fp_metrics_add(&fhr, fp_metrics_rank_excluding(fs, NI, tgt, hist_items, nh));
                fp_metrics_add(&fpop, fp_metrics_rank_excluding(popf, NI, tgt, hist_items, nh));
            }
        }
        if (st != FP_OK)
            break;
        char extra[64];
        snprintf(extra, sizeof extra, "HR@%d %.4f", o->k, fp_metrics_hr(&hr));
        fp_progress_update(&prog, b0 + B, extra);
    }
    fp_progress_end(&prog);
    free(hist_items);
    if (st == FP_OK) {
        r->users = n_users;
        r->hr = fp_metrics_hr(&hr);
        r->ndcg = fp_metrics_ndcg(&hr);
        r->pop_hr = fp_metrics_hr(&pop);
        r->pop_ndcg = fp_metrics_ndcg(&pop);
        if (o->full) {
            r->full_hr = fp_metrics_hr(&fhr);
            r->full_ndcg = fp_metrics_ndcg(&fhr);
            r->pop_full_hr = fp_metrics_hr(&fpop);
            r->pop_full_ndcg = fp_metrics_ndcg(&fpop);
        }
        r->seconds = fp_now() - t0;
    }
done:
    free(users);
    free(seq);
    free(cand);
    free(stamp);
    fp_buffer_free(prof);
    fp_buffer_free(scores);
    fp_buffer_free(full);
    fp_buffer_free(popf);
    return st;
}
