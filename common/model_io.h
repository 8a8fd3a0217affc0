/* model_io: a trained encoder on disk, as one safetensors file that Python can load.
 *
 * Tensors: the model's parameters by layout name (item_emb, pos_emb, blocks.N...).
 * Metadata: "format" = "fedprof-model", "format_version" = "1", "config" = the full
 * fp_config_t as JSON, "layout_hash" = hex of fp_layout_hash, "items" = the original item ids
 * in dense order (id 1 first), one per line, so a model ranks items by their real names. */
#ifndef FEDPROF_COMMON_MODEL_IO_H
#define FEDPROF_COMMON_MODEL_IO_H

#include "common/config.h"
#include "common/errors.h"
#include "common/model.h"

/* Save model m trained with config c; item_names[1..n_items] (item_names[0] unused; NULL names
 * items by their decimal id). Atomic. */
fp_status fp_model_save(const char *path, fp_model_t *m, const fp_config_t *c, char *const *item_names);
/* The same file from a layout and its parameters without a model (n_items: the catalogue size,
 * item_emb's rows minus the padding row). fp_model_save writes through it. */
fp_status fp_model_save_params(const char *path, const fp_layout_t *l, const float *params, int n_items,
                               const fp_config_t *c, char *const *item_names);

/* Load a model file into a new model sized for max_batch rows and `threads` threads.
 * *cfg_out receives the stored config (with model.n_items set); *items_out a malloc'd array of
 * n_items + 1 malloc'd strings ([0] = NULL), freed with fp_model_items_free. */
fp_status fp_model_load(const char *path, int max_batch, int threads, fp_model_t **m_out, fp_config_t *cfg_out,
                        char ***items_out);
void fp_model_items_free(char **items, int n_items);

#endif
