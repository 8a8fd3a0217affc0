/* fuzz_config: common/config's YAML reader (fp_config_load_string) on the input bytes.
 *
 * Invariants: no crash or leak; a refused document leaves the config unchanged; an accepted one
 * validates, and its JSON form reads back (fp_config_to_json -> fp_config_from_json) to the same
 * JSON. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/errors.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fp_config_t c;
    fp_config_defaults(&c);
    fp_status st = fp_config_load_string("fuzz.yaml", (const char *)data, size, &c);
    if (st != FP_OK) { /* unchanged: still the defaults */
        fp_config_t d;
        fp_config_defaults(&d);
        char *a = NULL, *b = NULL;
        FUZZ_CHECK(fp_config_to_json(&c, &a) == FP_OK && fp_config_to_json(&d, &b) == FP_OK);
        FUZZ_CHECK(strcmp(a, b) == 0 && c.model.n_items == d.model.n_items);
        free(a);
        free(b);
        fp_error_clear();
        return 0;
    }
    FUZZ_CHECK(fp_config_validate(&c) == FP_OK);
    char *j1 = NULL, *j2 = NULL;
    FUZZ_CHECK(fp_config_to_json(&c, &j1) == FP_OK);
    fp_config_t c2;
    fp_config_defaults(&c2);
    FUZZ_CHECK(fp_config_from_json(j1, &c2) == FP_OK);
    FUZZ_CHECK(fp_config_to_json(&c2, &j2) == FP_OK);
    FUZZ_CHECK(strcmp(j1, j2) == 0);
    free(j1);
    free(j2);
    fp_error_clear();
    return 0;
}
