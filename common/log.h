/* log: leveled messages to stderr and a one-line progress display for long work.
 *
 * Progress is drawn (with \r) only when stderr is a TTY and the process is not quiet;
 * otherwise it is silent. Messages at WARN and above are printed unless quiet hides INFO.
 * Not thread-safe: call from the main thread. */
#ifndef FEDPROF_COMMON_LOG_H
#define FEDPROF_COMMON_LOG_H

#include <stdint.h>

typedef enum { FP_LOG_DEBUG = 0, FP_LOG_INFO = 1, FP_LOG_WARN = 2, FP_LOG_ERROR = 3 } fp_log_level;

/* quiet: only warnings and errors; no progress. */
void fp_log_set_quiet(int quiet);
int fp_log_quiet(void);
void fp_log_set_level(fp_log_level lvl);
void fp_log(fp_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define fp_log_info(...) fp_log(FP_LOG_INFO, __VA_ARGS__)
#define fp_log_warn(...) fp_log(FP_LOG_WARN, __VA_ARGS__)
#define fp_log_error(...) fp_log(FP_LOG_ERROR, __VA_ARGS__)

/* Monotonic seconds. */
double fp_now(void);

/* Progress of `total` units of work labelled `what` (e.g. "epoch 3/200"). */
typedef struct {
    int enabled;
    double start, last_draw;
    int64_t total;
    char label[96];
} fp_progress_t;

void fp_progress_begin(fp_progress_t *p, const char *label, int64_t total);
/* Draw at most 10 times a second: "label [#####-----] 53% 1.2s ETA 1.1s  extra". */
void fp_progress_update(fp_progress_t *p, int64_t done, const char *extra);
/* Erase the progress line. */
void fp_progress_end(fp_progress_t *p);

#endif
