/* model_io: saving and loading a trained encoder with its config and item vocabulary. */
#include "common/model_io.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/checkpoint.h"

fp_status fp_model_save(const char *path, fp_model_t *m, const fp_config_t *c, char *const *item_names)
{
    return fp_model_save_params(path, fp_model_layout(m), fp_model_params(m), fp_model_config(m)->n_items, c,
                                item_names);
}

fp_status fp_model_save_params(const char *path, const fp_layout_t *l, const float *params, int n_items,
                               const fp_config_t *c, char *const *item_names)
{
    char *cfg_json = NULL, *items = NULL;
    fp_status st = fp_config_to_json(c, &cfg_json);
    if (st != FP_OK)
        return st;
    /* Unnamed items (synthetic data) are called by their decimal dense id. */
    char num[16];
#define ITEM_NAME(i) (item_names ? item_names[i] : (snprintf(num, sizeof num, "%d", (i)), num))
    size_t len = 1;
    for (int i = 1; i <= n_items; i++)
        len += strlen(ITEM_NAME(i)) + 1;
    items = malloc(len);
    if (!items) {
        free(cfg_json);
        return FP_FAIL(FP_ERR_NOMEM, "item list");
    }
    char *p = items;
    for (int i = 1; i <= n_items; i++) {
        const char *name = ITEM_NAME(i);
        size_t n = strlen(name);
        memcpy(p, name, n);
        p += n;
        *p++ = i < n_items ? '\n' : '\0';
    }
#undef ITEM_NAME
    if (n_items == 0)
        *p = '\0';
    char hash[32];
    snprintf(hash, sizeof hash, "%016" PRIx64, fp_layout_hash(l));
    fp_kv_t meta[] = {
        {"format", "fedprof-model"}, {"format_version", "1"}, {"config", cfg_json},
        {"layout_hash", hash},       {"items", items},
    };
    st = fp_safetensors_save(path, l, params, NULL, meta, sizeof meta / sizeof meta[0]);
    free(cfg_json);
    free(items);
    return st;
}

void fp_model_items_free(char **items, int n_items)
{
    if (!items)
        return;
    for (int i = 0; i <= n_items; i++)
        free(items[i]);
    free(items);
}

static fp_status split_items(const char *path, const char *s, int n_items, char ***out)
{
    char **items = calloc((size_t)n_items + 1, sizeof *items);
    if (!items)
        return FP_FAIL(FP_ERR_NOMEM, "item list");
    const char *p = s;
    for (int i = 1; i <= n_items; i++) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 0 || (i < n_items && !e) || (i == n_items && e)) {
            fp_model_items_free(items, n_items);
            return FP_FAIL(FP_ERR_FORMAT, "%s: item list does not hold %d ids", path, n_items);
        }
        items[i] = strndup(p, n);
        if (!items[i]) {
            fp_model_items_free(items, n_items);
            return FP_FAIL(FP_ERR_NOMEM, "item list");
        }
        p = e ? e + 1 : p + n;
    }
    *out = items;
    return FP_OK;
}

fp_status fp_model_load(const char *path, int max_batch, int threads, fp_model_t **m_out, fp_config_t *cfg_out,
                        char ***items_out)
{
    fp_st_file_t *f = NULL;
    fp_model_t *m = NULL;
    char **items = NULL;
    fp_status st = fp_safetensors_load(path, &f);
    if (st != FP_OK)
        return st;
    const char *fmt = fp_st_meta(f, "format");
    const char *cfg_json = fp_st_meta(f, "config");
    const char *item_list = fp_st_meta(f, "items");
    const char *ver = fp_st_meta(f, "format_version");
    if (!fmt || strcmp(fmt, "fedprof-model") != 0 || !cfg_json || !item_list) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: not a fedprof model (metadata format/config/items missing)", path);
        goto fail;
    }
    if (!ver || strcmp(ver, "1") != 0) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: unsupported model format version '%s'", path, ver ? ver : "(none)");
        goto fail;
    }
    fp_config_t cfg;
    fp_config_defaults(&cfg);
    if ((st = fp_config_from_json(cfg_json, &cfg)) != FP_OK)
        goto fail;
    /* n_items is the row count of item_emb minus the padding row. */
    int n_items = -1;
    for (size_t i = 0; i < fp_st_n_tensors(f); i++) {
        const char *name;
        int nd;
        const size_t *shape;
        const float *data;
        fp_st_tensor(f, i, &name, &nd, &shape, &data);
        if (strcmp(name, "item_emb") == 0 && nd == 2 && shape[0] >= 2 && shape[0] - 1 <= FP_DATA_MAX_ITEMS)
            n_items = (int)(shape[0] - 1);
    }
    if (n_items < 1) {
        st = FP_FAIL(FP_ERR_FORMAT, "%s: no valid item_emb tensor", path);
        goto fail;
    }
    cfg.model.n_items = n_items;
    if ((st = fp_model_config_validate(&cfg.model)) != FP_OK)
        goto fail;
    if ((st = fp_model_create(&cfg.model, max_batch, threads, &m)) != FP_OK)
        goto fail;
    if ((st = fp_safetensors_read_layout(f, fp_model_layout(m), NULL, fp_model_params(m))) != FP_OK)
        goto fail;
    if (!fp_vec_all_finite(fp_model_params(m), fp_model_layout(m)->total)) {
        st = FP_FAIL(FP_ERR_NUMERIC, "%s: parameters contain NaN or Inf", path);
        goto fail;
    }
    if ((st = split_items(path, item_list, n_items, &items)) != FP_OK)
        goto fail;
    fp_safetensors_close(f);
    *m_out = m;
    *cfg_out = cfg;
    *items_out = items;
    return FP_OK;
fail:
    fp_model_destroy(m);
    fp_safetensors_close(f);
    return st;
}
