/* fuzz_data: common/data's readers (text and CSV) on a file holding the input bytes.
 *
 * Invariants: no crash or leak; a dataset that loads is consistent (offsets increasing from 0 to
 * n_interactions, every item id in 1..n_items, names present) and splits (leave-one-out). */
#define _GNU_SOURCE /* memfd_create */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/data.h"
#include "common/errors.h"
#include "fuzz_common.h"

static void check(const fp_dataset_t *d)
{
    FUZZ_CHECK(d->n_users >= 1 && d->n_items >= 1 && d->n_interactions >= 1);
    FUZZ_CHECK(d->offsets[0] == 0 && d->offsets[d->n_users] == d->n_interactions);
    for (int32_t u = 0; u < d->n_users; u++) {
        FUZZ_CHECK(d->offsets[u] <= d->offsets[u + 1]);
        if (d->user_names)
            FUZZ_CHECK(d->user_names[u] != NULL);
    }
    for (int64_t i = 0; i < d->n_interactions; i++)
        FUZZ_CHECK(d->items[i] >= 1 && d->items[i] <= d->n_items);
    if (d->item_names)
        for (int32_t i = 1; i <= d->n_items; i++)
            FUZZ_CHECK(d->item_names[i] != NULL);
    fp_split_t s;
    FUZZ_CHECK(fp_split_loo(d, &s) == FP_OK);
    fp_split_free(&s);
    if (d->user_names)
        FUZZ_CHECK(fp_data_find_user(d, d->user_names[0]) >= 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_path(data, size);
    if (!path)
        return 0;
    const fp_data_format fmts[] = {FP_FORMAT_TEXT, FP_FORMAT_CSV, FP_FORMAT_AUTO};
    for (size_t k = 0; k < sizeof fmts / sizeof fmts[0]; k++) {
        fp_dataset_t *d = NULL;
        fp_status st = fp_data_load(path, fmts[k], &d);
        if (st == FP_OK) {
            FUZZ_CHECK(d != NULL);
            check(d);
        } else {
            FUZZ_CHECK(d == NULL);
        }
        fp_dataset_free(d);
    }
    fp_error_clear();
    return 0;
}
