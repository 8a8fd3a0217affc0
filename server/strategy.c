/* strategy: round aggregation (weighted means, coordinate-wise median and trimmed mean) and the
 * server optimizers (FedAvg, FedAvgM, FedAdagrad, FedAdam, FedYogi) of server/strategy.h.
 *
 * Numerics: every sum is accumulated in double and rounded to float once, at the end; every
 * optimizer rule is evaluated in double per coordinate and its results (w, m, v) rounded to
 * float once. Each coordinate is computed independently of the others, so the OpenMP loops give
 * bit-identical results whatever the thread count.
 *
 * The robust statistics use a selection (introselect: quickselect with a three-way partition and
 * a heapsort fallback once the recursion budget is spent, so a crafted set of values cannot make
 * it quadratic) on a per-thread scratch copy of one coordinate's n values, O(n) per coordinate on
 * average and O(n log n) at worst; the buffered updates themselves are never reordered, so
 * fp_agg_result can be called any number of times. */
#include "server/strategy.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/params.h"

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_max_threads(void) { return 1; }
#endif

/* Below this much work (values touched) a loop stays on one thread (fork/join costs more). */
#define STRAT_PAR_MIN 16384
/* Most threads the robust statistics use (bounds the selection scratch). */
#define STRAT_MAX_THREADS 64
/* Weights outside this range are refused: see fp_agg_add in the header. */
#define STRAT_WEIGHT_MIN 1e-30
#define STRAT_WEIGHT_MAX 1e30
/* Below this many values a selection just insertion-sorts. */
#define SELECT_SMALL 16

static const char *const strat_names[] = {"fedavg", "fedavgm", "fedadagrad", "fedadam",
                                           "fedyogi", "median", "trimmed_mean"};
#define STRAT_N ((int)(sizeof strat_names / sizeof strat_names[0]))

const char *fp_strategy_name(fp_strategy_kind k)
{
    if ((int)k < 0 || (int)k >= STRAT_N)
        return "unknown";
    return strat_names[k];
}

fp_status fp_strategy_parse(const char *name, fp_strategy_kind *out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "fp_strategy_parse: NULL argument");
    for (int i = 0; name && i < STRAT_N; i++)
        if (strcmp(name, strat_names[i]) == 0) {
            *out = (fp_strategy_kind)i;
            return FP_OK;
        }
    return FP_FAIL(FP_ERR_INVALID,
                   "unknown strategy '%.64s' (expected one of fedavg, fedavgm, fedadagrad, fedadam, fedyogi, "
                   "median, trimmed_mean)",
                   name ? name : "(null)");
}

static int kind_valid(fp_strategy_kind k) { return (int)k >= 0 && (int)k < STRAT_N; }

static int kind_adaptive(fp_strategy_kind k)
{
    return k == FP_STRAT_FEDADAGRAD || k == FP_STRAT_FEDADAM || k == FP_STRAT_FEDYOGI;
}

int fp_strategy_buffers(fp_strategy_kind k) { return k == FP_STRAT_MEDIAN || k == FP_STRAT_TRIMMED_MEAN; }

void fp_strategy_defaults(fp_strategy_opts_t *o, fp_strategy_kind kind)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->kind = kind;
    /* An adaptive step moves each coordinate by about η whatever Δ̄'s scale (m/√v ≈ ±1), so
     * η = 1 would be far too large there; 0.01 is the paper's usual choice. */
    o->server_lr = kind_adaptive(kind) ? 0.01 : 1.0;
    o->momentum = 0.9;
    o->beta1 = 0.9;
    o->beta2 = 0.99;
    o->tau = 1e-3;
    o->trim_fraction = 0.1;
}

static int in_unit(double x) { return x >= 0.0 && x < 1.0; } /* [0, 1); false for NaN */

fp_status fp_strategy_validate(const fp_strategy_opts_t *o)
{
    if (!o)
        return FP_FAIL(FP_ERR_INVALID, "fp_strategy_validate: NULL argument");
    if (!kind_valid(o->kind))
        return FP_FAIL(FP_ERR_INVALID, "strategy kind %d is not one of the known strategies", (int)o->kind);
    const char *name = fp_strategy_name(o->kind);
    if (!(o->server_lr > 0.0 && isfinite(o->server_lr)))
        return FP_FAIL(FP_ERR_RANGE, "%s: server_lr must be > 0 and finite (got %g)", name, o->server_lr);
    if (o->kind == FP_STRAT_FEDAVGM && !in_unit(o->momentum))
        return FP_FAIL(FP_ERR_RANGE, "%s: momentum must be in [0, 1) (got %g)", name, o->momentum);
    if (kind_adaptive(o->kind)) {
        if (!in_unit(o->beta1))
            return FP_FAIL(FP_ERR_RANGE, "%s: beta1 must be in [0, 1) (got %g)", name, o->beta1);
        if (!in_unit(o->beta2))
            return FP_FAIL(FP_ERR_RANGE, "%s: beta2 must be in [0, 1) (got %g)", name, o->beta2);
        /* v starts at τ² and is stored as float: τ² must be a normal, finite float. */
        if (!(o->tau >= 1e-18 && o->tau <= 1e18))
            return FP_FAIL(FP_ERR_RANGE, "%s: tau must be in [1e-18, 1e18] (got %g)", name, o->tau);
    }
    if (o->kind == FP_STRAT_TRIMMED_MEAN && !(o->trim_fraction >= 0.0 && o->trim_fraction < 0.5))
        return FP_FAIL(FP_ERR_RANGE, "%s: trim_fraction must be in [0, 0.5) (got %g)", name, o->trim_fraction);
    return FP_OK;
}

/* ---- Selection --------------------------------------------------------------------------------- */

static inline void swapf(float *a, float *b)
{
    float t = *a;
    *a = *b;
    *b = t;
}

static void insertion_sort(float *a, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        float x = a[i];
        size_t j = i;
        for (; j > 0 && a[j - 1] > x; j--)
            a[j] = a[j - 1];
        a[j] = x;
    }
}

static void sift_down(float *a, size_t root, size_t n)
{
    for (;;) {
        size_t c = 2 * root + 1;
        if (c >= n)
            return;
        if (c + 1 < n && a[c + 1] > a[c])
            c++;
        if (!(a[c] > a[root]))
            return;
        swapf(&a[c], &a[root]);
        root = c;
    }
}

static void heap_sort(float *a, size_t n)
{
    for (size_t i = n / 2; i-- > 0;)
        sift_down(a, i, n);
    for (size_t e = n; e-- > 1;) {
        swapf(&a[0], &a[e]);
        sift_down(a, 0, e);
    }
}

static inline float med3(float x, float y, float z)
{
    if (x > y)
        swapf(&x, &y);
    if (y > z)
        y = z;
    return x > y ? x : y;
}

/* Rearrange a[0..n) (finite values) so that a[k] is the value of rank k, everything before it
 * ≤ a[k] and everything after it ≥ a[k] (nth_element). Requires k < n. */
static void select_kth(float *a, size_t n, size_t k)
{
    size_t lo = 0, hi = n - 1; /* inclusive */
    int budget = 2;
    for (size_t m = n; m > 1; m >>= 1)
        budget += 2;
    while (hi > lo) {
        size_t len = hi - lo + 1;
        if (len <= SELECT_SMALL) {
            insertion_sort(a + lo, len);
            return;
        }
        if (budget-- == 0) {
            heap_sort(a + lo, len);
            return;
        }
        float p = med3(a[lo], a[lo + len / 2], a[hi]);
        /* Three-way partition: [lo, lt) < p, [lt, gt] == p, (gt, hi] > p. Runs of equal values
         * (identical updates, zeros) end the search at once. */
        size_t lt = lo, i = lo, gt = hi;
        while (i <= gt) {
            if (a[i] < p)
                swapf(&a[lt++], &a[i++]);
            else if (a[i] > p) {
                swapf(&a[i], &a[gt]);
                if (gt == 0)
                    break; /* cannot happen (p is in the range), but keeps gt from wrapping */
                gt--;
            } else
                i++;
        }
        if (k < lt)
            hi = lt - 1; /* k >= lo, so lt > lo here */
        else if (k > gt)
            lo = gt + 1; /* gt < k <= hi */
        else
            return;
    }
}

/* Median of a[0..n) (n >= 1; a is reordered): the middle value, or the mean of the two. */
static float median_of(float *a, size_t n)
{
    size_t k = n / 2;
    select_kth(a, n, k);
    if (n & 1)
        return a[k];
    float lower = a[0];
    for (size_t i = 1; i < k; i++)
        if (a[i] > lower)
            lower = a[i];
    return (float)(0.5 * ((double)lower + (double)a[k]));
}

/* Mean of a[0..n) without its t smallest and t largest values (n > 2t; a is reordered unless
 * t == 0, when the values are summed in their given order). */
static float trimmed_mean_of(float *a, size_t n, size_t t)
{
    if (t > 0) {
        select_kth(a, n, t);                 /* a[0..t) are the t smallest */
        select_kth(a + t, n - t, n - 2 * t - 1); /* a(n-t..n) are the t largest */
    }
    double s = 0.0;
    for (size_t i = t; i < n - t; i++)
        s += a[i];
    return (float)(s / (double)(n - 2 * t));
}

/* ---- Aggregation ------------------------------------------------------------------------------- */

struct fp_agg {
    fp_strategy_opts_t o;
    size_t P, max_updates;
    size_t n; /* updates added since the last reset */
    /* Mean strategies. */
    double *sum; /* Σ w_i Δ_i, P doubles */
    double wsum; /* Σ w_i */
    /* Buffering strategies. */
    float **upd;     /* max_updates slots; the first n_alloc are allocated and kept across resets */
    size_t n_alloc;
    float *scratch;  /* threads × max_updates floats, allocated by the first result */
    size_t scratch_floats;
};

/* Bytes fp_buffer_alloc really takes for n floats (it rounds up to 64 bytes). */
static size_t buffer_bytes(size_t n) { return (n * sizeof(float) + 63) / 64 * 64; }

fp_status fp_agg_create(const fp_strategy_opts_t *o, size_t n_params, size_t max_updates, fp_agg_t **out)
{
    if (!o || !out)
        return FP_FAIL(FP_ERR_INVALID, "fp_agg_create: NULL argument");
    fp_status st = fp_strategy_validate(o);
    if (st != FP_OK)
        return st;
    if (n_params == 0 || max_updates == 0)
        return FP_FAIL(FP_ERR_INVALID, "fp_agg_create: n_params (%zu) and max_updates (%zu) must be >= 1", n_params,
                       max_updates);
    int buffers = fp_strategy_buffers(o->kind);
    if (n_params > (SIZE_MAX - 64) / sizeof(double) ||
        (buffers && (max_updates > SIZE_MAX / STRAT_MAX_THREADS / sizeof(float) ||
                     max_updates > SIZE_MAX / buffer_bytes(n_params))))
        return FP_FAIL(FP_ERR_RANGE, "fp_agg_create: %zu updates of %zu parameters overflow the address space",
                       max_updates, n_params);
    fp_agg_t *a = calloc(1, sizeof *a);
    if (!a)
        return FP_FAIL(FP_ERR_NOMEM, "aggregator");
    a->o = *o;
    a->P = n_params;
    a->max_updates = max_updates;
    if (buffers) {
        if (!(a->upd = calloc(max_updates, sizeof *a->upd))) {
            free(a);
            return FP_FAIL(FP_ERR_NOMEM, "aggregator: table of %zu updates", max_updates);
        }
    } else if (!(a->sum = calloc(n_params, sizeof *a->sum))) {
        free(a);
        return FP_FAIL(FP_ERR_NOMEM, "aggregator: running sum of %zu doubles", n_params);
    }
    *out = a;
    return FP_OK;
}

void fp_agg_destroy(fp_agg_t *a)
{
    if (!a)
        return;
    if (a->upd)
        for (size_t i = 0; i < a->n_alloc; i++)
            fp_buffer_free(a->upd[i]);
    free(a->upd);
    free(a->sum);
    fp_buffer_free(a->scratch);
    free(a);
}

/* Index of the first non-finite value of x[0..n), or n if all are finite. */
static size_t first_non_finite(const float *x, size_t n)
{
    size_t first = n;
#pragma omp parallel for schedule(static) reduction(min : first) if (n >= STRAT_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]) && i < first)
            first = i;
    return first;
}

fp_status fp_agg_add(fp_agg_t *a, const float *delta, double weight)
{
    if (!a || !delta)
        return FP_FAIL(FP_ERR_INVALID, "fp_agg_add: NULL argument");
    if (a->n >= a->max_updates)
        return FP_FAIL(FP_ERR_RANGE, "aggregator full: %zu updates already added this round", a->max_updates);
    if (!(weight >= STRAT_WEIGHT_MIN && weight <= STRAT_WEIGHT_MAX))
        return FP_FAIL(FP_ERR_RANGE, "update weight %g outside [%g, %g]", weight, STRAT_WEIGHT_MIN,
                       STRAT_WEIGHT_MAX);
    const size_t P = a->P;
    size_t bad = first_non_finite(delta, P);
    if (bad < P)
        return FP_FAIL(FP_ERR_NUMERIC, "update value %zu is not finite (%g)", bad, (double)delta[bad]);
    if (fp_strategy_buffers(a->o.kind)) {
        if (a->n == a->n_alloc) { /* lazily, one update at a time; kept across resets */
            float *b = fp_buffer_alloc(P);
            if (!b)
                return FP_FAIL(FP_ERR_NOMEM, "aggregator: buffer for update %zu (%zu floats)", a->n + 1, P);
            a->upd[a->n_alloc++] = b;
        }
        memcpy(a->upd[a->n], delta, P * sizeof *delta);
    } else {
        double *s = a->sum;
#pragma omp parallel for schedule(static) if (P >= STRAT_PAR_MIN)
        for (size_t j = 0; j < P; j++)
            s[j] += weight * (double)delta[j];
        a->wsum += weight;
    }
    a->n++;
    return FP_OK;
}

fp_status fp_agg_add_check(const fp_agg_t *a, double weight)
{
    if (!a)
        return FP_FAIL(FP_ERR_INVALID, "fp_agg_add_check: NULL aggregator");
    if (fp_strategy_buffers(a->o.kind))
        return FP_FAIL(FP_ERR_INVALID, "ranged adding is for the mean strategies (this one buffers updates)");
    if (a->n >= a->max_updates)
        return FP_FAIL(FP_ERR_RANGE, "aggregator full: %zu updates already added this round", a->max_updates);
    if (!(weight >= STRAT_WEIGHT_MIN && weight <= STRAT_WEIGHT_MAX))
        return FP_FAIL(FP_ERR_RANGE, "update weight %g outside [%g, %g]", weight, STRAT_WEIGHT_MIN,
                       STRAT_WEIGHT_MAX);
    return FP_OK;
}

fp_status fp_agg_add_range(fp_agg_t *a, size_t offset, const float *delta, size_t n, double weight)
{
    fp_status st = fp_agg_add_check(a, weight);
    if (st != FP_OK)
        return st;
    if (!delta && n > 0)
        return FP_FAIL(FP_ERR_INVALID, "fp_agg_add_range: NULL delta");
    if (offset > a->P || n > a->P - offset)
        return FP_FAIL(FP_ERR_RANGE, "update range [%zu, %zu + %zu) outside the %zu parameters", offset, offset, n,
                       a->P);
    size_t bad = first_non_finite(delta, n);
    if (bad < n)
        return FP_FAIL(FP_ERR_NUMERIC, "update value %zu is not finite (%g)", offset + bad, (double)delta[bad]);
    double *s = a->sum + offset;
#pragma omp parallel for schedule(static) if (n >= STRAT_PAR_MIN)
    for (size_t j = 0; j < n; j++)
        s[j] += weight * (double)delta[j];
    return FP_OK;
}

fp_status fp_agg_commit_update(fp_agg_t *a, double weight)
{
    fp_status st = fp_agg_add_check(a, weight);
    if (st != FP_OK)
        return st;
    a->wsum += weight;
    a->n++;
    return FP_OK;
}

size_t fp_agg_count(const fp_agg_t *a) { return a ? a->n : 0; }

static fp_status robust_result(fp_agg_t *a, float *out)
{
    const size_t P = a->P, n = a->n;
    int nt = omp_get_max_threads();
    if (nt > STRAT_MAX_THREADS)
        nt = STRAT_MAX_THREADS;
    if (nt < 1 || P < 2 || P * n < STRAT_PAR_MIN)
        nt = 1;
    size_t need = (size_t)nt * a->max_updates; /* no overflow: checked at create */
    if (a->scratch_floats < need) {
        float *s = fp_buffer_alloc(need);
        if (!s)
            return FP_FAIL(FP_ERR_NOMEM, "aggregator: selection scratch of %zu floats", need);
        fp_buffer_free(a->scratch);
        a->scratch = s;
        a->scratch_floats = need;
    }
    size_t t = 0;
    if (a->o.kind == FP_STRAT_TRIMMED_MEAN) {
        t = (size_t)floor(a->o.trim_fraction * (double)n);
        if (2 * t >= n) /* only if β·n rounded up to n/2; keep at least one value */
            t = (n - 1) / 2;
    }
    const int median = a->o.kind == FP_STRAT_MEDIAN;
    float *const *upd = a->upd;
    float *scratch = a->scratch;
    const size_t stride = a->max_updates;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        float *x = scratch + (size_t)omp_get_thread_num() * stride;
#pragma omp for schedule(static)
        for (size_t j = 0; j < P; j++) {
            for (size_t i = 0; i < n; i++)
                x[i] = upd[i][j];
            out[j] = median ? median_of(x, n) : trimmed_mean_of(x, n, t);
        }
    }
    return FP_OK;
}

fp_status fp_agg_result(fp_agg_t *a, float *out)
{
    if (!a || !out)
        return FP_FAIL(FP_ERR_INVALID, "fp_agg_result: NULL argument");
    if (a->n == 0)
        return FP_FAIL(FP_ERR_INVALID, "fp_agg_result: no update was added this round");
    if (fp_strategy_buffers(a->o.kind))
        return robust_result(a, out);
    /* A convex combination of finite floats with weights in [1e-30, 1e30]: finite, no overflow. */
    const size_t P = a->P;
    const double *s = a->sum, W = a->wsum;
#pragma omp parallel for schedule(static) if (P >= STRAT_PAR_MIN)
    for (size_t j = 0; j < P; j++)
        out[j] = (float)(s[j] / W);
    return FP_OK;
}

void fp_agg_reset(fp_agg_t *a)
{
    if (!a)
        return;
    a->n = 0;
    a->wsum = 0.0;
    if (a->sum)
        memset(a->sum, 0, a->P * sizeof *a->sum);
}

size_t fp_agg_bytes(const fp_agg_t *a)
{
    if (!a)
        return 0;
    size_t b = sizeof *a;
    if (a->sum)
        b += a->P * sizeof *a->sum;
    if (a->upd)
        b += a->max_updates * sizeof *a->upd + a->n_alloc * buffer_bytes(a->P);
    if (a->scratch)
        b += buffer_bytes(a->scratch_floats);
    return b;
}

/* ---- Server optimizer -------------------------------------------------------------------------- */

struct fp_sopt {
    fp_strategy_opts_t o;
    size_t P;
    int n_state;
    float *m, *v; /* P floats each, or NULL when the rule has no such state */
    uint64_t steps;
};

static int n_state_of(fp_strategy_kind k)
{
    if (k == FP_STRAT_FEDAVGM)
        return 1;
    return kind_adaptive(k) ? 2 : 0;
}

fp_status fp_sopt_create(const fp_strategy_opts_t *o, size_t n_params, fp_sopt_t **out)
{
    if (!o || !out)
        return FP_FAIL(FP_ERR_INVALID, "fp_sopt_create: NULL argument");
    fp_status st = fp_strategy_validate(o);
    if (st != FP_OK)
        return st;
    if (n_params == 0)
        return FP_FAIL(FP_ERR_INVALID, "fp_sopt_create: n_params must be >= 1");
    if (n_params > (SIZE_MAX - 64) / sizeof(float))
        return FP_FAIL(FP_ERR_RANGE, "fp_sopt_create: %zu parameters overflow the address space", n_params);
    fp_sopt_t *s = calloc(1, sizeof *s);
    if (!s)
        return FP_FAIL(FP_ERR_NOMEM, "server optimizer");
    s->o = *o;
    s->P = n_params;
    s->n_state = n_state_of(o->kind);
    if (s->n_state >= 1 && !(s->m = fp_buffer_alloc(n_params))) /* zeroed */
        goto nomem;
    if (s->n_state >= 2) {
        if (!(s->v = fp_buffer_alloc(n_params)))
            goto nomem;
        const float v0 = (float)(o->tau * o->tau);
        for (size_t j = 0; j < n_params; j++)
            s->v[j] = v0;
    }
    *out = s;
    return FP_OK;
nomem:
    fp_sopt_destroy(s);
    return FP_FAIL(FP_ERR_NOMEM, "server optimizer state (%zu parameters)", n_params);
}

void fp_sopt_destroy(fp_sopt_t *s)
{
    if (!s)
        return;
    fp_buffer_free(s->m);
    fp_buffer_free(s->v);
    free(s);
}

/* x rounded to float into *out; 0 (and *out = 0) if x is NaN or beyond the float range, where the
 * C conversion itself would be undefined. */
static inline int to_float(double x, float *out)
{
    if (!(fabs(x) <= (double)FLT_MAX)) {
        *out = 0.0f;
        return 0;
    }
    *out = (float)x;
    return 1;
}

/* One coordinate of the rule: from (w, m, v, d) to the new (w, m, v), each evaluated in double
 * and rounded to float once. Returns 1 if all new values are finite floats. Pure, so the check
 * pass and the write pass of fp_sopt_apply compute the same bits. */
static inline int sopt_coord(const fp_sopt_t *s, size_t j, float w0, float d0, float *w1, float *m1, float *v1)
{
    const fp_strategy_opts_t *o = &s->o;
    const double d = d0, w = w0;
    double wn;
    int ok = 1;
    switch (o->kind) {
    case FP_STRAT_FEDAVGM: {
        double m = o->momentum * (double)s->m[j] + d;
        wn = w + o->server_lr * m;
        ok &= to_float(m, m1);
        break;
    }
    case FP_STRAT_FEDADAGRAD:
    case FP_STRAT_FEDADAM:
    case FP_STRAT_FEDYOGI: {
        const double d2 = d * d, v0 = s->v[j];
        double m = o->beta1 * (double)s->m[j] + (1.0 - o->beta1) * d;
        double v;
        if (o->kind == FP_STRAT_FEDADAGRAD)
            v = v0 + d2;
        else if (o->kind == FP_STRAT_FEDADAM)
            v = o->beta2 * v0 + (1.0 - o->beta2) * d2;
        else {
            double diff = v0 - d2;
            double sgn = diff > 0.0 ? 1.0 : (diff < 0.0 ? -1.0 : 0.0);
            v = v0 - (1.0 - o->beta2) * d2 * sgn;
        }
        wn = w + o->server_lr * m / (sqrt(v) + o->tau);
        ok &= to_float(m, m1);
        ok &= to_float(v, v1);
        break;
    }
    default: /* FedAvg, median, trimmed mean */
        wn = w + o->server_lr * d;
        break;
    }
    ok &= to_float(wn, w1);
    return ok;
}

/* Δ̄[j]: delta_bar[j], or, without delta_bar, the mean Σ/W computed as fp_agg_result does. */
static inline float delta_at(const float *delta_bar, const double *sum, double W, size_t j)
{
    return delta_bar ? delta_bar[j] : (float)(sum[j] / W);
}

/* fp_sopt_apply from delta_bar or, when it is NULL, from the running sum and Σw of a mean aggregator. */
static fp_status sopt_apply(fp_sopt_t *s, float *w, const float *delta_bar, const double *sum, double W)
{
    const size_t P = s->P;
    /* Pass 1 checks every new value without writing; pass 2 recomputes and writes. Twice the
     * arithmetic of one pass, but no scratch copy of w, m and v, and nothing changes on refusal. */
    size_t bad = P;
#pragma omp parallel for schedule(static) reduction(min : bad) if (P >= STRAT_PAR_MIN)
    for (size_t j = 0; j < P; j++) {
        float w1, m1 = 0.0f, v1 = 0.0f;
        if (!sopt_coord(s, j, w[j], delta_at(delta_bar, sum, W, j), &w1, &m1, &v1) && j < bad)
            bad = j;
    }
    if (bad < P)
        return FP_FAIL(FP_ERR_NUMERIC,
                       "%s step refused: parameter %zu would become non-finite (w %g, update %g); model and "
                       "optimizer state unchanged",
                       fp_strategy_name(s->o.kind), bad, (double)w[bad], (double)delta_at(delta_bar, sum, W, bad));
    float *m = s->m, *v = s->v;
#pragma omp parallel for schedule(static) if (P >= STRAT_PAR_MIN)
    for (size_t j = 0; j < P; j++) {
        float w1, m1 = 0.0f, v1 = 0.0f;
        (void)sopt_coord(s, j, w[j], delta_at(delta_bar, sum, W, j), &w1, &m1, &v1);
        w[j] = w1;
        if (m)
            m[j] = m1;
        if (v)
            v[j] = v1;
    }
    s->steps++;
    return FP_OK;
}

fp_status fp_sopt_apply(fp_sopt_t *s, float *w, const float *delta_bar)
{
    if (!s || !w || !delta_bar)
        return FP_FAIL(FP_ERR_INVALID, "fp_sopt_apply: NULL argument");
    return sopt_apply(s, w, delta_bar, NULL, 0.0);
}

fp_status fp_sopt_apply_agg(fp_sopt_t *s, float *w, const fp_agg_t *a)
{
    if (!s || !w || !a)
        return FP_FAIL(FP_ERR_INVALID, "fp_sopt_apply_agg: NULL argument");
    if (fp_strategy_buffers(a->o.kind))
        return FP_FAIL(FP_ERR_INVALID, "fp_sopt_apply_agg: the %s aggregator has no running sum",
                       fp_strategy_name(a->o.kind));
    if (a->P != s->P)
        return FP_FAIL(FP_ERR_INVALID, "fp_sopt_apply_agg: %zu aggregated parameters, %zu optimised", a->P, s->P);
    if (a->n == 0)
        return FP_FAIL(FP_ERR_INVALID, "fp_sopt_apply_agg: no update was added this round");
    return sopt_apply(s, w, NULL, a->sum, a->wsum);
}

int fp_sopt_n_state(const fp_sopt_t *s) { return s ? s->n_state : 0; }

float *fp_sopt_state(fp_sopt_t *s, int i)
{
    if (!s || i < 0 || i >= s->n_state)
        return NULL;
    return i == 0 ? s->m : s->v;
}

const char *fp_sopt_state_name(int i)
{
    if (i == 0)
        return "m";
    if (i == 1)
        return "v";
    return NULL;
}

uint64_t fp_sopt_steps(const fp_sopt_t *s) { return s ? s->steps : 0; }

void fp_sopt_set_steps(fp_sopt_t *s, uint64_t steps)
{
    if (s)
        s->steps = steps;
}
