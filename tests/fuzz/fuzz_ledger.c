/* fuzz_ledger: dp/ledger's readers on the input bytes: fp_ledger_entry_parse (what the coordinator
 * runs on the ledger entries an update header carries from the network) on each line, and
 * fp_ledger_verify_file (what `fedprof-audit verify` runs on a ledger file someone hands over) on
 * the whole input.
 *
 * Invariants: no crash or leak; a parsed entry's fields are in their documented ranges; a ledger
 * that verifies has a report whose rows are within the file's lines. */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/errors.h"
#include "dp/ledger.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;
    for (int lines = 0; p < end && lines < 8; lines++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        fp_ledger_entry_t e;
        if (fp_ledger_entry_parse(p, len, &e) == FP_OK) {
            FUZZ_CHECK(e.seq >= 1 && e.spend.round >= 0 && e.spend.round <= FP_LEDGER_MAX_INT);
            FUZZ_CHECK(e.spend.q >= 0 && e.spend.q <= 1 && e.spend.delta > 0 && e.spend.delta < 1);
            FUZZ_CHECK(e.n_orders <= FP_LEDGER_MAX_ORDERS && isfinite(e.eps) && e.eps >= 0);
            fp_ledger_entry_clear(&e);
        }
        fp_error_clear();
        p = nl ? nl + 1 : end;
    }
    const char *path = fuzz_path(data, size);
    if (path) {
        fp_ledger_report_t *r = NULL;
        if (fp_ledger_verify_file(path, NULL, &r) == FP_OK) {
            FUZZ_CHECK(r && r->status == FP_OK && (int64_t)r->n_rows <= r->lines);
        }
        fp_ledger_report_free(r);
        fp_error_clear();
    }
    return 0;
}
