/* ledger_report: the renderings of a verification report (dp/ledger.h): a table for people, one
 * JSON object for machines, and an SVG plot of cumulative ε per round. Pure formatting: every
 * value shown was checked (or recomputed) by fp_ledger_verify_file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp/ledger.h"
#include "dp/ledger_internal.h"

/* Generous caps on the rendered text (a report of FP_LEDGER_MAX_ENTRIES rows stays below them). */
#define MAX_JSON_BYTES ((size_t)2 << 30)
#define MAX_SVG_BYTES ((size_t)1 << 30)

static const char *key_source(int pinned)
{
    return pinned ? "pinned" : "first-entry";
}

/* ---------------------------------------------------------------- text */

static void short_num(char *buf, size_t n, double v)
{
    snprintf(buf, n, "%.6g", v);
}

fp_status fp_ledger_report_print(const fp_ledger_report_t *r, FILE *out)
{
    if (!r || !out)
        return FP_FAIL(FP_ERR_INVALID, "report_print: NULL argument");
    int fed = r->kind == FP_LEDGER_KIND_FEDERATION;
    fprintf(out, "ledger       %s\n", r->path);
    fprintf(out, "kind         %s, %zu verified entr%s\n", fed ? "federation ledger (countersigned)" : "client ledger",
            r->n_rows, r->n_rows == 1 ? "y" : "ies");
    if (fed && r->coordinator[0])
        fprintf(out, "coordinator  key %.16s...  %s\n", r->coordinator,
                r->coordinator_pinned ? "pinned (matches --pubkey)"
                                      : "trusted on first use (the key in line 1; pin it with --pubkey)");
    for (size_t k = 0; k < r->n_clients; k++) {
        const fp_ledger_signer_t *c = &r->clients[k];
        fprintf(out, "client       %s  key %.16s...  %s\n", c->id, c->pubkey,
                c->pinned ? "pinned (matches --pubkey)" : "trusted on first use (the key in its first entry; pin it "
                                                          "with --pubkey)");
    }
    if (r->n_rows > 0) {
        fprintf(out, "\n%6s", "line");
        if (fed)
            fprintf(out, " %-16s %5s", "client", "seq");
        fprintf(out, " %7s %7s %-6s %-9s %-8s %-7s %9s %-8s %-8s %-10s %-10s %-8s %5s\n", "round", "version", "unit",
                "q", "sigma", "clip", "steps", "delta", "conv", "eps_round", "eps", "budget", "order");
        for (size_t i = 0; i < r->n_rows; i++) {
            const fp_ledger_row_t *w = &r->rows[i];
            char q[24], sg[24], cl[24], de[24], er[24], ep[24], bu[24], od[24];
            short_num(q, sizeof q, w->spend.q);
            short_num(sg, sizeof sg, w->spend.sigma);
            short_num(cl, sizeof cl, w->spend.clip);
            short_num(de, sizeof de, w->spend.delta);
            short_num(er, sizeof er, w->eps_round);
            short_num(ep, sizeof ep, w->eps);
            short_num(bu, sizeof bu, w->budget);
            short_num(od, sizeof od, w->order);
            fprintf(out, "%6lld", (long long)w->line);
            if (fed)
                fprintf(out, " %-16.16s %5lld", r->clients[w->client].id, (long long)w->seq);
            fprintf(out, " %7lld %7lld %-6s %-9s %-8s %-7s %9lld %-8s %-8s %-10s %-10s %-8s %5s\n",
                    (long long)w->spend.round, (long long)w->spend.model_version, fp_ledger_unit_name(w->spend.unit),
                    q, sg, cl, (long long)w->spend.steps, de, fp_dp_conversion_name(w->spend.conversion), er, ep, bu,
                    od);
        }
        fputc('\n', out);
    }
    for (size_t k = 0; k < r->n_clients; k++) {
        const fp_ledger_signer_t *c = &r->clients[k];
        fprintf(out, "spent        %s: %sepsilon %.6g at delta %g after %lld round%s (budget %g)%s\n", c->id,
                r->status == FP_OK ? "" : "at least ", c->eps, c->delta, (long long)c->entries,
                c->entries == 1 ? "" : "s", c->budget, r->status == FP_OK ? "" : "; later entries were not checked");
    }
    if (r->torn_bytes)
        fprintf(out, "warning      line %lld is an incomplete final line (%zu bytes) left by a crash while appending: "
                     "not an entry, ignored (the owner's next open removes it)\n",
                (long long)r->torn_line, r->torn_bytes);
    if (r->status == FP_OK) {
        fprintf(out, "verdict      OK: %zu entr%s; hash chains, seqs and round order intact; every signature%s "
                     "valid; every epsilon recomputed within %g relative and within its budget\n",
                r->n_rows, r->n_rows == 1 ? "y" : "ies", fed ? " and countersignature" : "", FP_LEDGER_EPS_RTOL);
    } else if (r->fail_line > 0) {
        fprintf(out, "verdict      FAILED at line %lld", (long long)r->fail_line);
        if (r->fail_round >= 0)
            fprintf(out, " (round %lld)", (long long)r->fail_round);
        fprintf(out, ": %s\n", r->message);
    } else {
        fprintf(out, "verdict      FAILED: %s\n", r->message);
    }
    return ferror(out) ? FP_FAIL(FP_ERR_IO, "writing the report") : FP_OK;
}

/* ---------------------------------------------------------------- JSON */

static void jkey(fp_ledger_buf_t *b, const char *key)
{
    fp_ledger_buf_json_str(b, key, strlen(key));
    fp_ledger_buf_put(b, ":", 1);
}

static void jnum(fp_ledger_buf_t *b, const char *key, double v)
{
    jkey(b, key);
    fp_ledger_buf_num(b, v);
    fp_ledger_buf_put(b, ",", 1);
}

static void jint(fp_ledger_buf_t *b, const char *key, long long v)
{
    jkey(b, key);
    fp_ledger_buf_printf(b, "%lld,", v);
}

static void jstr(fp_ledger_buf_t *b, const char *key, const char *v)
{
    jkey(b, key);
    fp_ledger_buf_json_str(b, v, strlen(v));
    fp_ledger_buf_put(b, ",", 1);
}

/* Replaces a trailing ',' by c. */
static void jclose(fp_ledger_buf_t *b, char c)
{
    if (!b->err && b->n > 0 && b->p[b->n - 1] == ',')
        b->p[b->n - 1] = c;
    else
        fp_ledger_buf_put(b, &c, 1);
}

fp_status fp_ledger_report_json(const fp_ledger_report_t *r, char **json)
{
    if (!r || !json)
        return FP_FAIL(FP_ERR_INVALID, "report_json: NULL argument");
    *json = NULL;
    int fed = r->kind == FP_LEDGER_KIND_FEDERATION;
    fp_ledger_buf_t b;
    fp_ledger_buf_init(&b, MAX_JSON_BYTES);
    fp_ledger_buf_put(&b, "{", 1);
    jstr(&b, "ledger", r->path);
    jstr(&b, "kind", fed ? "federation" : "client");
    jkey(&b, "ok");
    fp_ledger_buf_puts(&b, r->status == FP_OK ? "true," : "false,");
    jint(&b, "lines", r->lines);
    jint(&b, "verified_entries", (long long)r->n_rows);
    jkey(&b, "error");
    if (r->status == FP_OK) {
        fp_ledger_buf_puts(&b, "null,");
    } else {
        fp_ledger_buf_put(&b, "{", 1);
        jkey(&b, "line");
        if (r->fail_line > 0)
            fp_ledger_buf_printf(&b, "%lld,", (long long)r->fail_line);
        else
            fp_ledger_buf_puts(&b, "null,");
        jkey(&b, "round");
        if (r->fail_round >= 0)
            fp_ledger_buf_printf(&b, "%lld,", (long long)r->fail_round);
        else
            fp_ledger_buf_puts(&b, "null,");
        jstr(&b, "status", fp_strerror(r->status));
        jstr(&b, "message", r->message);
        jclose(&b, '}');
        fp_ledger_buf_put(&b, ",", 1);
    }
    jkey(&b, "torn_line");
    if (r->torn_bytes)
        fp_ledger_buf_printf(&b, "{\"line\":%lld,\"bytes\":%zu},", (long long)r->torn_line, r->torn_bytes);
    else
        fp_ledger_buf_puts(&b, "null,");
    jkey(&b, "coordinator");
    if (fed && r->coordinator[0]) {
        fp_ledger_buf_put(&b, "{", 1);
        jstr(&b, "pubkey", r->coordinator);
        jstr(&b, "key_source", key_source(r->coordinator_pinned));
        jclose(&b, '}');
        fp_ledger_buf_put(&b, ",", 1);
    } else {
        fp_ledger_buf_puts(&b, "null,");
    }
    jkey(&b, "clients");
    fp_ledger_buf_put(&b, "[", 1);
    for (size_t k = 0; k < r->n_clients; k++) {
        const fp_ledger_signer_t *c = &r->clients[k];
        fp_ledger_buf_put(&b, "{", 1);
        jstr(&b, "client", c->id);
        jstr(&b, "pubkey", c->pubkey);
        jstr(&b, "key_source", key_source(c->pinned));
        jint(&b, "first_line", c->first_line);
        jint(&b, "entries", c->entries);
        jint(&b, "last_round", c->last_round);
        jstr(&b, "last_hash", c->last_hash);
        jnum(&b, "epsilon", c->eps);
        jnum(&b, "delta", c->delta);
        jnum(&b, "budget", c->budget);
        jclose(&b, '}');
        fp_ledger_buf_put(&b, ",", 1);
    }
    jclose(&b, ']');
    fp_ledger_buf_put(&b, ",", 1);
    jkey(&b, "entries");
    fp_ledger_buf_put(&b, "[", 1);
    for (size_t i = 0; i < r->n_rows; i++) {
        const fp_ledger_row_t *w = &r->rows[i];
        fp_ledger_buf_put(&b, "{", 1);
        jint(&b, "line", w->line);
        jstr(&b, "client", r->clients[w->client].id);
        jint(&b, "seq", w->seq);
        jint(&b, "round", w->spend.round);
        jint(&b, "model_version", w->spend.model_version);
        jstr(&b, "unit", fp_ledger_unit_name(w->spend.unit));
        jnum(&b, "q", w->spend.q);
        jnum(&b, "sigma", w->spend.sigma);
        jnum(&b, "clip", w->spend.clip);
        jint(&b, "steps", w->spend.steps);
        jnum(&b, "delta", w->spend.delta);
        jstr(&b, "conversion", fp_dp_conversion_name(w->spend.conversion));
        jnum(&b, "eps_round", w->eps_round);
        jnum(&b, "eps", w->eps);
        jnum(&b, "eps_round_recomputed", w->eps_round_check);
        jnum(&b, "eps_recomputed", w->eps_check);
        jnum(&b, "order", w->order);
        jnum(&b, "budget", w->budget);
        jstr(&b, "time", w->time);
        jclose(&b, '}');
        fp_ledger_buf_put(&b, ",", 1);
    }
    jclose(&b, ']');
    fp_ledger_buf_puts(&b, "}\n");
    fp_status st = fp_ledger_buf_status(&b, "JSON report");
    if (st != FP_OK) {
        fp_ledger_buf_free(&b);
        return st;
    }
    *json = fp_ledger_buf_take(&b, NULL);
    return FP_OK;
}

/* ---------------------------------------------------------------- SVG */

static void xml_text(fp_ledger_buf_t *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fp_ledger_buf_puts(b, "&amp;"); break;
        case '<': fp_ledger_buf_puts(b, "&lt;"); break;
        case '>': fp_ledger_buf_puts(b, "&gt;"); break;
        case '"': fp_ledger_buf_puts(b, "&quot;"); break;
        case '\'': fp_ledger_buf_puts(b, "&apos;"); break;
        default:
            if ((unsigned char)*s >= 0x20)
                fp_ledger_buf_put(b, s, 1);
        }
    }
}

/* A "nice" tick step (1, 2 or 5 × 10^k) giving about n ticks over range. */
static double nice_step(double range, int n)
{
    double raw = range / n, mag = pow(10.0, floor(log10(raw))), f = raw / mag;
    return (f <= 1.0 ? 1.0 : f <= 2.0 ? 2.0 : f <= 5.0 ? 5.0 : 10.0) * mag;
}

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                      "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
#define N_PALETTE (sizeof palette / sizeof palette[0])

fp_status fp_ledger_report_svg(const fp_ledger_report_t *r, char **svg)
{
    if (!r || !svg)
        return FP_FAIL(FP_ERR_INVALID, "report_svg: NULL argument");
    *svg = NULL;
    const double W = 860, H = 500, L = 80, R = 200, T = 60, B = 60;
    const double pw = W - L - R, ph = H - T - B;
    /* Ranges. */
    double x0 = INFINITY, x1 = -INFINITY, y1 = 0;
    for (size_t i = 0; i < r->n_rows; i++) {
        double x = (double)r->rows[i].spend.round;
        x0 = fmin(x0, x);
        x1 = fmax(x1, x);
        y1 = fmax(y1, r->rows[i].eps);
    }
    double ymax_budget = 0;
    int same_delta = 1;
    for (size_t k = 0; k < r->n_clients; k++) {
        ymax_budget = fmax(ymax_budget, r->clients[k].budget);
        same_delta &= r->clients[k].delta == r->clients[0].delta;
    }
    y1 = fmax(y1, ymax_budget);
    if (!(x0 <= x1)) {
        x0 = 0;
        x1 = 1;
    }
    if (x0 == x1) {
        x0 -= 1;
        x1 += 1;
    }
    if (!(y1 > 0))
        y1 = 1;
    double ystep = nice_step(y1, 5);
    y1 = ceil(y1 * 1.05 / ystep) * ystep;
    double xstep = fmax(1.0, nice_step(x1 - x0, 8));
#define SX(x) (L + ((x) - x0) / (x1 - x0) * pw)
#define SY(y) (T + ph - (y) / y1 * ph)
    fp_ledger_buf_t b;
    fp_ledger_buf_init(&b, MAX_SVG_BYTES);
    fp_ledger_buf_printf(&b,
                         "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                         "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 "
                         "%.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n"
                         "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                         W, H, W, H);
    fp_ledger_buf_printf(&b, "<text x=\"%.1f\" y=\"24\" font-size=\"15\" font-weight=\"bold\">", L);
    fp_ledger_buf_puts(&b, "Cumulative ε per round: ");
    xml_text(&b, r->path);
    fp_ledger_buf_puts(&b, "</text>\n");
    if (r->status != FP_OK) {
        char msg[160];
        snprintf(msg, sizeof msg, "verification FAILED at line %lld: only the entries verified before it are drawn",
                 (long long)r->fail_line);
        fp_ledger_buf_printf(&b, "<text x=\"%.1f\" y=\"44\" fill=\"#d62728\">", L);
        xml_text(&b, msg);
        fp_ledger_buf_puts(&b, "</text>\n");
    }
    /* Grid, ticks and tick labels. */
    fp_ledger_buf_puts(&b, "<g stroke=\"#dddddd\" stroke-width=\"1\">\n");
    for (double y = 0; y <= y1 + ystep * 1e-9; y += ystep)
        fp_ledger_buf_printf(&b, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\"/>\n", L, SY(y), L + pw, SY(y));
    double xt0 = ceil(x0 / xstep) * xstep;
    for (double x = xt0; x <= x1 + xstep * 1e-9; x += xstep)
        fp_ledger_buf_printf(&b, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\"/>\n", SX(x), T, SX(x), T + ph);
    fp_ledger_buf_puts(&b, "</g>\n<g fill=\"#333333\">\n");
    for (double y = 0; y <= y1 + ystep * 1e-9; y += ystep)
        fp_ledger_buf_printf(&b, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"end\">%g</text>\n", L - 6, SY(y) + 4, y);
    for (double x = xt0; x <= x1 + xstep * 1e-9; x += xstep)
        fp_ledger_buf_printf(&b, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">%g</text>\n", SX(x), T + ph + 18,
                             x);
    fp_ledger_buf_puts(&b, "</g>\n");
    /* Axes and their labels. */
    fp_ledger_buf_printf(&b,
                         "<g stroke=\"#333333\" stroke-width=\"1.2\"><line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" "
                         "y2=\"%.2f\"/><line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\"/></g>\n",
                         L, T + ph, L + pw, T + ph, L, T, L, T + ph);
    fp_ledger_buf_printf(&b, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">round</text>\n", L + pw / 2, H - 16);
    fp_ledger_buf_printf(&b, "<text transform=\"translate(22 %.2f) rotate(-90)\" text-anchor=\"middle\">", T + ph / 2);
    if (same_delta && r->n_clients > 0)
        fp_ledger_buf_printf(&b, "cumulative ε (δ = %g)", r->clients[0].delta);
    else
        fp_ledger_buf_puts(&b, "cumulative ε (at each entry's δ)");
    fp_ledger_buf_puts(&b, "</text>\n");
    /* One line per client, its budget dashed in the same colour. */
    for (size_t k = 0; k < r->n_clients; k++) {
        const char *col = palette[k % N_PALETTE];
        size_t npts = 0;
        fp_ledger_buf_printf(&b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
        for (size_t i = 0; i < r->n_rows; i++) {
            if (r->rows[i].client != k)
                continue;
            fp_ledger_buf_printf(&b, "%s%.2f,%.2f", npts ? " " : "", SX((double)r->rows[i].spend.round),
                                 SY(r->rows[i].eps));
            npts++;
        }
        fp_ledger_buf_puts(&b, "\"/>\n");
        if (npts <= 200) {
            fp_ledger_buf_printf(&b, "<g fill=\"%s\">", col);
            for (size_t i = 0; i < r->n_rows; i++)
                if (r->rows[i].client == k)
                    fp_ledger_buf_printf(&b, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"2.5\"/>",
                                         SX((double)r->rows[i].spend.round), SY(r->rows[i].eps));
            fp_ledger_buf_puts(&b, "</g>\n");
        }
        fp_ledger_buf_printf(&b,
                             "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" stroke-width=\"1\" "
                             "stroke-dasharray=\"6 4\"/>\n",
                             L, SY(r->clients[k].budget), L + pw, SY(r->clients[k].budget), col);
        /* Legend entry. */
        double ly = T + 10 + 36.0 * (double)k;
        fp_ledger_buf_printf(&b,
                             "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" stroke-width=\"2\"/>"
                             "<text x=\"%.2f\" y=\"%.2f\">",
                             L + pw + 16, ly, L + pw + 40, ly, col, L + pw + 46, ly + 4);
        xml_text(&b, r->clients[k].id);
        fp_ledger_buf_printf(&b,
                             "</text>\n<text x=\"%.2f\" y=\"%.2f\" fill=\"#555555\" font-size=\"10\">ε %.4g of budget "
                             "%g (dashed)</text>\n",
                             L + pw + 46, ly + 17, r->clients[k].eps, r->clients[k].budget);
    }
    if (r->n_clients == 0)
        fp_ledger_buf_printf(&b, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">no verified entries</text>\n",
                             L + pw / 2, T + ph / 2);
    fp_ledger_buf_puts(&b, "</svg>\n");
#undef SX
#undef SY
    fp_status st = fp_ledger_buf_status(&b, "SVG plot");
    if (st != FP_OK) {
        fp_ledger_buf_free(&b);
        return st;
    }
    *svg = fp_ledger_buf_take(&b, NULL);
    return FP_OK;
}
