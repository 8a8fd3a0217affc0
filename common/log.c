/* log: stderr messages and TTY progress lines. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fp_quiet_flag = 0;
static fp_log_level fp_min_level = FP_LOG_INFO;
static int fp_progress_visible = 0;

void fp_log_set_quiet(int quiet) { fp_quiet_flag = quiet; }
int fp_log_quiet(void) { return fp_quiet_flag; }
void fp_log_set_level(fp_log_level lvl) { fp_min_level = lvl; }

void fp_log(fp_log_level lvl, const char *fmt, ...)
{
    if (lvl < fp_min_level || (fp_quiet_flag && lvl < FP_LOG_WARN))
        return;
    if (fp_progress_visible) {
        fputs("\r\033[K", stderr);
        fp_progress_visible = 0;
    }
    static const char *names[] = {"debug", "info", "warning", "error"};
    if (lvl != FP_LOG_INFO)
        fprintf(stderr, "%s: ", names[lvl]);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

double fp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fmt_secs(char *buf, size_t n, double s)
{
    if (s < 0)
        s = 0;
    if (s < 60)
        snprintf(buf, n, "%.1fs", s);
    else if (s < 3600)
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else
        snprintf(buf, n, "%dh%02dm", (int)(s / 3600), ((int)s % 3600) / 60);
}

void fp_progress_begin(fp_progress_t *p, const char *label, int64_t total)
{
    memset(p, 0, sizeof *p);
    p->enabled = !fp_quiet_flag && isatty(STDERR_FILENO);
    p->start = fp_now();
    p->total = total > 0 ? total : 1;
    snprintf(p->label, sizeof p->label, "%s", label);
}

void fp_progress_update(fp_progress_t *p, int64_t done, const char *extra)
{
    if (!p->enabled)
        return;
    double now = fp_now();
    if (done < p->total && now - p->last_draw < 0.1)
        return;
    p->last_draw = now;
    double frac = (double)done / (double)p->total;
    if (frac > 1)
        frac = 1;
    char bar[21];
    int filled = (int)(frac * 20);
    for (int i = 0; i < 20; i++)
        bar[i] = i < filled ? '#' : '-';
    bar[20] = '\0';
    double el = now - p->start;
    char els[16], eta[16];
    fmt_secs(els, sizeof els, el);
    if (frac > 0)
        fmt_secs(eta, sizeof eta, el / frac - el);
    else
        snprintf(eta, sizeof eta, "?");
    fprintf(stderr, "\r\033[K%s [%s] %3d%% %s ETA %s  %s", p->label, bar, (int)(frac * 100), els, eta,
            extra ? extra : "");
    fflush(stderr);
    fp_progress_visible = 1;
}

void fp_progress_end(fp_progress_t *p)
{
    if (p->enabled && fp_progress_visible) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        fp_progress_visible = 0;
    }
}
