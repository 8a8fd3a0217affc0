/* data: behaviour logs as per-user item sequences.
 *
 * Reading streams the file through one fixed chunk and one line buffer of at most
 * FP_DATA_MAX_LINE bytes, so a hostile file (a 100 MB line, NUL bytes, a billion columns) costs
 * bounded memory and ends in an error naming the file and line, never a crash. Ids are
 * interned in a small open-addressing string map; every row is kept as (user, item[, time])
 * and grouped per user at the end with a stable counting sort, so lines of one user need not be
 * contiguous. The synthetic generator, the leave-one-out split, the batcher and the partitioner
 * all draw from fp_rng_t, so everything here is deterministic in its seed.
 *
 * Thread-safety: no global state; distinct objects may be used from distinct threads. */
#include "common/data.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_CHUNK (64 * 1024)
#define TEXT_ID_MAX 2147483647LL
#define MAX_USERS (INT32_MAX - 1)
#define SYNTH_MAX_USERS 10000000
#define SYNTH_MAX_LEN 200
#define BATCHER_MAX_MAXLEN 65536
#define BATCHER_MAX_BATCH (1 << 20)
#define BATCHER_MAX_NEG 1024
#define SHOW 48 /* bytes of a bad token quoted in an error message */

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                               */
/* ------------------------------------------------------------------------------------------ */

/* Grow an array to hold at least `need` elements. Returns the (possibly moved) array, or NULL
 * on failure, in which case the old array is untouched and still owned by the caller. */
static void *grow_array(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return p;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elem)
            return NULL;
        nc *= 2;
    }
    void *q = realloc(p, nc * elem);
    if (!q)
        return NULL;
    *cap = nc;
    return q;
}

/* calloc that never returns NULL for a zero count (so "no users" is not "out of memory"). */
static void *xcalloc(size_t n, size_t elem)
{
    if (n == 0)
        n = 1;
    if (n > SIZE_MAX / elem)
        return NULL;
    return calloc(n, elem);
}

static char *xstrndup(const char *s, size_t n)
{
    char *r = malloc(n + 1);
    if (!r)
        return NULL;
    memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

static int ascii_lower(int c) { return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c; }

static int span_ieq(const char *s, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    if (n != m)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (ascii_lower((unsigned char)s[i]) != lit[i])
            return 0;
    return 1;
}

/* A text-format id: decimal digits only (leading zeros allowed), value in [1, 2^31-1].
 * On success (*canon, *canon_len) is the digit string without leading zeros. */
static int parse_text_id(const char *s, size_t n, const char **canon, size_t *canon_len, int32_t *value)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    while (n > 0 && *s == '0') {
        s++;
        n--;
    }
    if (n == 0 || n > 10)
        return 0;
    long long v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    if (v > TEXT_ID_MAX)
        return 0;
    if (canon) {
        *canon = s;
        *canon_len = n;
    }
    if (value)
        *value = (int32_t)v;
    return 1;
}

/* A timestamp: an integer or a floating-point number, finite. long double keeps every int64
 * exact on x86-64 (64-bit mantissa), so nanosecond epochs still order correctly. */
static int parse_timestamp(const char *s, size_t n, long double *out)
{
    char buf[80];
    if (n == 0 || n >= sizeof buf)
        return 0;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (is_blank(buf[0]))
        return 0;
    char *end = NULL;
    long double v = strtold(buf, &end); /* overflow gives inf (refused); underflow is fine */
    if (end != buf + n || !isfinite(v))
        return 0;
    *out = v;
    return 1;
}

/* Does a name look like a positive integer ("0042" counts; "0" does not)? */
static int is_positive_integer(const char *s)
{
    if (!s || !*s)
        return 0;
    int nonzero = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        if (*p != '0')
            nonzero = 1;
    }
    return nonzero;
}

/* Numeric order of two positive-integer strings of any length; ties ("7" vs "07") by string. */
static int cmp_numeric_names(const char *a, const char *b)
{
    const char *x = a, *y = b;
    while (*x == '0')
        x++;
    while (*y == '0')
        y++;
    size_t lx = strlen(x), ly = strlen(y);
    if (lx != ly)
        return lx < ly ? -1 : 1;
    int c = memcmp(x, y, lx);
    if (c)
        return c;
    return strcmp(a, b);
}

static void shuffle_i32(int32_t *a, size_t n, fp_rng_t *r)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)fp_rng_below(r, i);
        int32_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* String -> dense int32 map (open addressing, linear probing, keys interned in one arena)     */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    size_t off;    /* into arena; NUL-terminated there */
    uint32_t len;
    uint32_t hash;
} strkey;

typedef struct {
    int32_t *slot; /* [cap], -1 = empty, else an id */
    size_t cap;    /* power of two */
    int32_t count;
    strkey *keys;  /* [count] */
    size_t keys_cap;
    char *arena;
    size_t arena_len, arena_cap;
} strmap;

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    /* fmix64: FNV's low bits are weak for short keys and we index by the low bits. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return (uint32_t)h;
}

static void strmap_free(strmap *m)
{
    free(m->slot);
    free(m->keys);
    free(m->arena);
    memset(m, 0, sizeof *m);
}

static int strmap_init(strmap *m, size_t cap)
{
    memset(m, 0, sizeof *m);
    m->cap = 1024;
    while (m->cap < cap * 2)
        m->cap *= 2;
    m->slot = malloc(m->cap * sizeof *m->slot);
    if (!m->slot)
        return -1;
    memset(m->slot, 0xff, m->cap * sizeof *m->slot);
    return 0;
}

static int strmap_rehash(strmap *m)
{
    size_t nc = m->cap * 2;
    int32_t *ns = malloc(nc * sizeof *ns);
    if (!ns)
        return -1;
    memset(ns, 0xff, nc * sizeof *ns);
    for (int32_t id = 0; id < m->count; id++) {
        size_t i = m->keys[id].hash & (nc - 1);
        while (ns[i] >= 0)
            i = (i + 1) & (nc - 1);
        ns[i] = id;
    }
    free(m->slot);
    m->slot = ns;
    m->cap = nc;
    return 0;
}

static int32_t strmap_find_h(const strmap *m, const char *s, size_t n, uint32_t h, size_t *slot_out)
{
    size_t i = h & (m->cap - 1);
    for (;;) {
        int32_t id = m->slot[i];
        if (id < 0) {
            if (slot_out)
                *slot_out = i;
            return -1;
        }
        const strkey *k = &m->keys[id];
        if (k->hash == h && k->len == n && memcmp(m->arena + k->off, s, n) == 0)
            return id;
        i = (i + 1) & (m->cap - 1);
    }
}

static int32_t strmap_find(const strmap *m, const char *s, size_t n)
{
    return strmap_find_h(m, s, n, hash_bytes(s, n), NULL);
}

/* Returns 1 (added), 0 (already there) with *id set; -1 out of memory; -2 more than max_count. */
static int strmap_intern(strmap *m, const char *s, size_t n, int32_t max_count, int32_t *id)
{
    uint32_t h = hash_bytes(s, n);
    size_t slot;
    int32_t found = strmap_find_h(m, s, n, h, &slot);
    if (found >= 0) {
        *id = found;
        return 0;
    }
    if (m->count >= max_count)
        return -2;
    if ((size_t)(m->count + 1) * 2 > m->cap) {
        if (strmap_rehash(m))
            return -1;
        strmap_find_h(m, s, n, h, &slot);
    }
    void *p = grow_array(m->keys, &m->keys_cap, (size_t)m->count + 1, sizeof *m->keys);
    if (!p)
        return -1;
    m->keys = p;
    p = grow_array(m->arena, &m->arena_cap, m->arena_len + n + 1, 1);
    if (!p)
        return -1;
    m->arena = p;
    memcpy(m->arena + m->arena_len, s, n);
    m->arena[m->arena_len + n] = '\0';
    m->keys[m->count] = (strkey){m->arena_len, (uint32_t)n, h};
    m->arena_len += n + 1;
    m->slot[slot] = m->count;
    *id = m->count++;
    return 1;
}

static const char *strmap_key(const strmap *m, int32_t id) { return m->arena + m->keys[id].off; }

/* ------------------------------------------------------------------------------------------ */
/* Bounded line reader                                                                         */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    FILE *f;
    const char *path;
    char *chunk; /* [READ_CHUNK] */
    size_t clen, cpos;
    int eof;
    char *line; /* [FP_DATA_MAX_LINE + 1], NUL-terminated, without the '\n' */
    size_t len;
    long long lineno; /* of the line in `line`, from 1 */
} reader;

/* Next line into r->line. *got = 0 at end of file. A line longer than FP_DATA_MAX_LINE bytes is
 * an error as soon as the limit is crossed (the rest is never read or stored). */
static fp_status reader_next(reader *r, int *got)
{
    *got = 0;
    r->len = 0;
    int any = 0;
    for (;;) {
        if (r->cpos == r->clen) {
            if (r->eof)
                break;
            r->clen = fread(r->chunk, 1, READ_CHUNK, r->f);
            r->cpos = 0;
            if (r->clen == 0) {
                if (ferror(r->f))
                    return FP_FAIL(FP_ERR_IO, "%s:%lld: read failed: %s", r->path, r->lineno + 1,
                                   strerror(errno));
                r->eof = 1;
                break;
            }
        }
        any = 1;
        char *s = r->chunk + r->cpos;
        size_t avail = r->clen - r->cpos;
        char *nl = memchr(s, '\n', avail);
        size_t take = nl ? (size_t)(nl - s) : avail;
        if (take > (size_t)FP_DATA_MAX_LINE - r->len)
            return FP_FAIL(FP_ERR_PARSE, "%s:%lld: line longer than %d bytes", r->path, r->lineno + 1,
                           FP_DATA_MAX_LINE);
        memcpy(r->line + r->len, s, take);
        r->len += take;
        r->cpos += take + (nl ? 1 : 0);
        if (nl)
            break;
    }
    if (!any)
        return FP_OK;
    r->lineno++;
    r->line[r->len] = '\0';
    if (memchr(r->line, '\0', r->len))
        return FP_FAIL(FP_ERR_PARSE, "%s:%lld: NUL byte in line", r->path, r->lineno);
    if (r->lineno == 1 && r->len >= 3 && memcmp(r->line, "\xEF\xBB\xBF", 3) == 0) {
        memmove(r->line, r->line + 3, r->len - 2); /* with the NUL */
        r->len -= 3;
    }
    while (r->len > 0 && is_blank(r->line[r->len - 1]))
        r->line[--r->len] = '\0';
    *got = 1;
    return FP_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Loader                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    char *s;
    size_t n;
} span;

typedef struct {
    const char *path;
    reader rd;
    strmap users, items;
    int32_t *row_user, *row_item;
    long double *row_ts; /* NULL unless a timestamp order applies */
    size_t n_rows, cap_user, cap_item, cap_ts;
    span *fields; /* CSV fields of the current line */
    size_t fields_cap, n_fields;
    size_t csv_ncol;
    long csv_user, csv_item, csv_ts; /* column indices, -1 = absent */
} loader;

static void loader_free(loader *L)
{
    if (L->rd.f)
        fclose(L->rd.f);
    free(L->rd.chunk);
    free(L->rd.line);
    strmap_free(&L->users);
    strmap_free(&L->items);
    free(L->row_user);
    free(L->row_item);
    free(L->row_ts);
    free(L->fields);
}

static fp_status add_row(loader *L, const char *u, size_t un, const char *it, size_t in, int has_ts,
                         long double ts)
{
    const char *path = L->path;
    long long ln = L->rd.lineno;
    int32_t uid, iid;
    int rc = strmap_intern(&L->users, u, un, MAX_USERS, &uid);
    if (rc == -1)
        return FP_FAIL(FP_ERR_NOMEM, "%s:%lld: user table", path, ln);
    if (rc == -2)
        return FP_FAIL(FP_ERR_RANGE, "%s:%lld: more than %d users", path, ln, MAX_USERS);
    rc = strmap_intern(&L->items, it, in, FP_DATA_MAX_ITEMS, &iid);
    if (rc == -1)
        return FP_FAIL(FP_ERR_NOMEM, "%s:%lld: item table", path, ln);
    if (rc == -2)
        return FP_FAIL(FP_ERR_RANGE, "%s:%lld: more than %d distinct items", path, ln, FP_DATA_MAX_ITEMS);
    void *p = grow_array(L->row_user, &L->cap_user, L->n_rows + 1, sizeof *L->row_user);
    if (!p)
        return FP_FAIL(FP_ERR_NOMEM, "%s:%lld: rows", path, ln);
    L->row_user = p;
    p = grow_array(L->row_item, &L->cap_item, L->n_rows + 1, sizeof *L->row_item);
    if (!p)
        return FP_FAIL(FP_ERR_NOMEM, "%s:%lld: rows", path, ln);
    L->row_item = p;
    if (has_ts) {
        p = grow_array(L->row_ts, &L->cap_ts, L->n_rows + 1, sizeof *L->row_ts);
        if (!p)
            return FP_FAIL(FP_ERR_NOMEM, "%s:%lld: rows", path, ln);
        L->row_ts = p;
        L->row_ts[L->n_rows] = ts;
    }
    L->row_user[L->n_rows] = uid;
    L->row_item[L->n_rows] = iid;
    L->n_rows++;
    return FP_OK;
}

/* "user item [timestamp]", whitespace-separated. The timestamp is validated but the order of the
 * lines is what counts (the SASRec files are already in time order). */
static fp_status parse_text_line(loader *L)
{
    char *s = L->rd.line;
    size_t n = L->rd.len;
    span tok[3];
    int ntok = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && is_blank(s[i]))
            i++;
        if (i >= n)
            break;
        size_t b = i;
        while (i < n && !is_blank(s[i]))
            i++;
        if (ntok < 3)
            tok[ntok] = (span){s + b, i - b};
        ntok++;
    }
    if (ntok == 0)
        return FP_OK; /* blank line */
    if (ntok != 2 && ntok != 3)
        return FP_FAIL(FP_ERR_PARSE, "%s:%lld: expected 2 or 3 columns (user item [timestamp]), found %d",
                       L->path, L->rd.lineno, ntok);
    const char *cu, *ci;
    size_t nu, ni;
    if (!parse_text_id(tok[0].s, tok[0].n, &cu, &nu, NULL))
        return FP_FAIL(FP_ERR_PARSE, "%s:%lld: user id '%.*s' is not an integer in [1, 2147483647]", L->path,
                       L->rd.lineno, (int)(tok[0].n < SHOW ? tok[0].n : SHOW), tok[0].s);
    if (!parse_text_id(tok[1].s, tok[1].n, &ci, &ni, NULL))
        return FP_FAIL(FP_ERR_PARSE, "%s:%lld: item id '%.*s' is not an integer in [1, 2147483647]", L->path,
                       L->rd.lineno, (int)(tok[1].n < SHOW ? tok[1].n : SHOW), tok[1].s);
    long double ts = 0;
    if (ntok == 3 && !parse_timestamp(tok[2].s, tok[2].n, &ts))
        return FP_FAIL(FP_ERR_PARSE, "%s:%lld: timestamp '%.*s' is not a number", L->path, L->rd.lineno,
                       (int)(tok[2].n < SHOW ? tok[2].n : SHOW), tok[2].s);
    return add_row(L, cu, nu, ci, ni, 0, 0);
}

/* Split a CSV line into fields (RFC 4180 quoting within one line: "a ""b"", c" -> a "b", c).
 * Quoted fields are unescaped in place. Unquoted fields are trimmed of spaces/tabs.
 * Quoted line breaks are not supported: the quote is then unterminated, which is an error. */
static fp_status csv_split(loader *L)
{
    char *s = L->rd.line;
    size_t n = L->rd.len, i = 0;
    L->n_fields = 0;
    for (;;) {
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
        span f;
        if (i < n && s[i] == '"') {
            size_t start = ++i, w = start;
            int closed = 0;
            while (i < n) {
                if (s[i] == '"') {
                    if (i + 1 < n && s[i + 1] == '"') {
                        s[w++] = '"';
                        i += 2;
                        continue;
                    }
                    i++;
                    closed = 1;
                    break;
                }
                s[w++] = s[i++];
            }
            if (!closed)
                return FP_FAIL(FP_ERR_PARSE,
                               "%s:%lld: unterminated quoted field (line breaks inside quotes are not supported)",
                               L->path, L->rd.lineno);
            f = (span){s + start, w - start};
            while (i < n && (s[i] == ' ' || s[i] == '\t'))
                i++;
            if (i < n && s[i] != ',')
                return FP_FAIL(FP_ERR_PARSE, "%s:%lld: unexpected '%c' after a closing quote", L->path,
                               L->rd.lineno, s[i]);
        } else {
            size_t start = i;
            while (i < n && s[i] != ',') {
                if (s[i] == '"')
                    return FP_FAIL(FP_ERR_PARSE, "%s:%lld: stray '\"' inside an unquoted field", L->path,
                                   L->rd.lineno);
                i++;
            }
            size_t end = i;
            while (end > start && is_blank(s[end - 1]))
                end--;
            f = (span){s + start, end - start};
        }
        void *p = grow_array(L->fields, &L->fields_cap, L->n_fields + 1, sizeof *L->fields);
        if (!p)
            return FP_FAIL(FP_ERR_NOMEM, "%s:%lld: fields", L->path, L->rd.lineno);
        L->fields = p;
        L->fields[L->n_fields++] = f;
        if (i >= n)
            break;
        i++; /* the comma */
    }
    return FP_OK;
}

static fp_status parse_csv_header(loader *L)
{
    fp_status st = csv_split(L);
    if (st)
        return st;
    L->csv_user = L->csv_item = L->csv_ts = -1;
    for (size_t c = 0; c < L->n_fields; c++) {
        const span *f = &L->fields[c];
        long *slot = span_ieq(f->s, f->n, "user_id")     ? &L->csv_user
                     : span_ieq(f->s, f->n, "item_id")   ? &L->csv_item
                     : span_ieq(f->s, f->n, "timestamp") ? &L->csv_ts
                                                         : NULL;
        if (!slot)
            continue;
        if (*slot >= 0)
            return FP_FAIL(FP_ERR_PARSE, "%s:%lld: column '%.*s' appears twice in the CSV header", L->path,
                           L->rd.lineno, (int)(f->n < SHOW ? f->n : SHOW), f->s);
        *slot = (long)c;
    }
    if (L->csv_user < 0 || L->csv_item < 0)
        return FP_FAIL(FP_ERR_PARSE, "%s:%lld: CSV header must name the columns user_id and item_id", L->path,
                       L->rd.lineno);
    L->csv_ncol = L->n_fields;
    return FP_OK;
}

static fp_status check_csv_id(loader *L, const span *f, const char *what)
{
    if (f->n == 0)
        return FP_FAIL(FP_ERR_PARSE, "%s:%lld: empty %s", L->path, L->rd.lineno, what);
    if (f->n > FP_DATA_MAX_ID_LEN)
        return FP_FAIL(FP_ERR_PARSE, "%s:%lld: %s longer than %d bytes", L->path, L->rd.lineno, what,
                       FP_DATA_MAX_ID_LEN);
    return FP_OK;
}

static fp_status parse_csv_line(loader *L)
{
    if (L->rd.len == 0)
        return FP_OK; /* blank line */
    fp_status st = csv_split(L);
    if (st)
        return st;
    if (L->n_fields != L->csv_ncol)
        return FP_FAIL(FP_ERR_PARSE, "%s:%lld: expected %zu fields (as in the header), found %zu", L->path,
                       L->rd.lineno, L->csv_ncol, L->n_fields);
    const span *u = &L->fields[L->csv_user], *it = &L->fields[L->csv_item];
    if ((st = check_csv_id(L, u, "user_id")) || (st = check_csv_id(L, it, "item_id")))
        return st;
    long double ts = 0;
    if (L->csv_ts >= 0) {
        const span *t = &L->fields[L->csv_ts];
        if (!parse_timestamp(t->s, t->n, &ts))
            return FP_FAIL(FP_ERR_PARSE, "%s:%lld: timestamp '%.*s' is not a number", L->path, L->rd.lineno,
                           (int)(t->n < SHOW ? t->n : SHOW), t->s);
    }
    return add_row(L, u->s, u->n, it->s, it->n, L->csv_ts >= 0, ts);
}

static int ends_with_csv(const char *path)
{
    size_t n = strlen(path);
    return n >= 4 && path[n - 4] == '.' && span_ieq(path + n - 3, 3, "csv");
}

/* Allocate an empty dataset with arrays for the given sizes (names arrays zeroed). */
static fp_dataset_t *dataset_alloc(int32_t n_users, int32_t n_items, int64_t n_inter, int user_names,
                                   int item_names)
{
    fp_dataset_t *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->n_users = n_users;
    d->n_items = n_items;
    d->n_interactions = n_inter;
    d->offsets = xcalloc((size_t)n_users + 1, sizeof *d->offsets);
    d->items = xcalloc((size_t)n_inter, sizeof *d->items);
    if (user_names)
        d->user_names = xcalloc((size_t)n_users, sizeof *d->user_names);
    if (item_names)
        d->item_names = xcalloc((size_t)n_items + 1, sizeof *d->item_names);
    if (!d->offsets || !d->items || (user_names && !d->user_names) || (item_names && !d->item_names)) {
        fp_dataset_free(d);
        return NULL;
    }
    return d;
}

typedef struct {
    long double ts;
    int64_t pos;
    int32_t item;
} ts_row;

static int cmp_ts_row(const void *a, const void *b)
{
    const ts_row *x = a, *y = b;
    if (x->ts < y->ts)
        return -1;
    if (x->ts > y->ts)
        return 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

typedef struct {
    const char *name;
    int32_t id;
} named_id;

static int cmp_named_id(const void *a, const void *b)
{
    return cmp_numeric_names(((const named_id *)a)->name, ((const named_id *)b)->name);
}

/* Turn the collected rows into a dataset: dense item ids (numeric order when every item id is a
 * positive integer, else order of first appearance), rows grouped per user (stable), then sorted
 * per user by timestamp (stable) when the CSV has one. */
static fp_status build_dataset(loader *L, fp_dataset_t **out)
{
    fp_status st = FP_OK;
    int32_t nu = L->users.count, ni = L->items.count;
    int64_t nr = (int64_t)L->n_rows;
    int32_t *order = NULL, *newid = NULL;
    ts_row *tmp = NULL;
    long double *gts = NULL;
    fp_dataset_t *d = dataset_alloc(nu, ni, nr, 1, 1);
    order = xcalloc((size_t)ni, sizeof *order);
    newid = xcalloc((size_t)ni, sizeof *newid);
    if (!d || !order || !newid) {
        st = FP_FAIL(FP_ERR_NOMEM, "%s: dataset of %lld interactions", L->path, (long long)nr);
        goto done;
    }
    int numeric = 1;
    for (int32_t i = 0; i < ni && numeric; i++)
        numeric = is_positive_integer(strmap_key(&L->items, i));
    for (int32_t i = 0; i < ni; i++)
        order[i] = i;
    if (numeric) {
        named_id *byname = xcalloc((size_t)ni, sizeof *byname);
        if (!byname) {
            st = FP_FAIL(FP_ERR_NOMEM, "%s: item order", L->path);
            goto done;
        }
        for (int32_t i = 0; i < ni; i++)
            byname[i] = (named_id){strmap_key(&L->items, i), i};
        qsort(byname, (size_t)ni, sizeof *byname, cmp_named_id);
        for (int32_t i = 0; i < ni; i++)
            order[i] = byname[i].id;
        free(byname);
    }
    for (int32_t r = 0; r < ni; r++)
        newid[order[r]] = r + 1;

    for (int64_t r = 0; r < nr; r++)
        d->offsets[L->row_user[r] + 1]++;
    for (int32_t u = 0; u < nu; u++)
        d->offsets[u + 1] += d->offsets[u];
    int64_t *fill = xcalloc((size_t)nu, sizeof *fill);
    if (!fill) {
        st = FP_FAIL(FP_ERR_NOMEM, "%s: grouping", L->path);
        goto done;
    }
    memcpy(fill, d->offsets, (size_t)nu * sizeof *fill);
    if (L->row_ts) {
        gts = xcalloc((size_t)nr, sizeof *gts);
        if (!gts) {
            free(fill);
            st = FP_FAIL(FP_ERR_NOMEM, "%s: timestamps", L->path);
            goto done;
        }
    }
    for (int64_t r = 0; r < nr; r++) {
        int64_t at = fill[L->row_user[r]]++;
        d->items[at] = newid[L->row_item[r]];
        if (gts)
            gts[at] = L->row_ts[r];
    }
    free(fill);

    if (gts) {
        int64_t maxn = 0;
        for (int32_t u = 0; u < nu; u++)
            if (d->offsets[u + 1] - d->offsets[u] > maxn)
                maxn = d->offsets[u + 1] - d->offsets[u];
        tmp = xcalloc((size_t)maxn, sizeof *tmp);
        if (!tmp) {
            st = FP_FAIL(FP_ERR_NOMEM, "%s: timestamp sort", L->path);
            goto done;
        }
        for (int32_t u = 0; u < nu; u++) {
            int64_t a = d->offsets[u], b = d->offsets[u + 1];
            int sorted = 1;
            for (int64_t k = a + 1; k < b && sorted; k++)
                sorted = !(gts[k] < gts[k - 1]);
            if (sorted)
                continue;
            for (int64_t k = a; k < b; k++)
                tmp[k - a] = (ts_row){gts[k], k, d->items[k]};
            qsort(tmp, (size_t)(b - a), sizeof *tmp, cmp_ts_row);
            for (int64_t k = a; k < b; k++)
                d->items[k] = tmp[k - a].item;
        }
    }

    for (int32_t u = 0; u < nu; u++) {
        if (!(d->user_names[u] = xstrndup(strmap_key(&L->users, u), L->users.keys[u].len))) {
            st = FP_FAIL(FP_ERR_NOMEM, "%s: names", L->path);
            goto done;
        }
    }
    for (int32_t i = 0; i < ni; i++) {
        if (!(d->item_names[newid[i]] = xstrndup(strmap_key(&L->items, i), L->items.keys[i].len))) {
            st = FP_FAIL(FP_ERR_NOMEM, "%s: names", L->path);
            goto done;
        }
    }
    *out = d;
    d = NULL;
done:
    fp_dataset_free(d);
    free(order);
    free(newid);
    free(tmp);
    free(gts);
    return st;
}

fp_status fp_data_load(const char *path, fp_data_format fmt, fp_dataset_t **out)
{
    if (out)
        *out = NULL;
    if (!path || !out)
        return FP_FAIL(FP_ERR_INVALID, "fp_data_load: NULL argument");
    if (fmt != FP_FORMAT_AUTO && fmt != FP_FORMAT_TEXT && fmt != FP_FORMAT_CSV)
        return FP_FAIL(FP_ERR_INVALID, "%s: unknown data format %d", path, (int)fmt);
    loader L;
    memset(&L, 0, sizeof L);
    L.path = path;
    L.rd.path = path;
    fp_status st = FP_OK;
    L.rd.f = fopen(path, "rb");
    if (!L.rd.f) {
        st = FP_FAIL(FP_ERR_IO, "%s:0: cannot open: %s", path, strerror(errno));
        goto done;
    }
    L.rd.chunk = malloc(READ_CHUNK);
    L.rd.line = malloc((size_t)FP_DATA_MAX_LINE + 1);
    if (!L.rd.chunk || !L.rd.line || strmap_init(&L.users, 1024) || strmap_init(&L.items, 1024)) {
        st = FP_FAIL(FP_ERR_NOMEM, "%s: reader buffers", path);
        goto done;
    }
    int got, first = 1;
    int csv = fmt == FP_FORMAT_CSV || (fmt == FP_FORMAT_AUTO && ends_with_csv(path));
    while (!(st = reader_next(&L.rd, &got)) && got) {
        if (first) {
            size_t k = 0;
            while (k < L.rd.len && is_blank(L.rd.line[k]))
                k++;
            if (k == L.rd.len)
                continue; /* blank lines before the first content line */
            first = 0;
            /* AUTO: a comma on the first line means CSV; its header must then name the
             * columns (a text line can never hold a comma, so nothing valid is lost). */
            if (fmt == FP_FORMAT_AUTO && memchr(L.rd.line, ',', L.rd.len))
                csv = 1;
            if (csv) {
                if ((st = parse_csv_header(&L)))
                    goto done;
                continue;
            }
        }
        st = csv ? parse_csv_line(&L) : parse_text_line(&L);
        if (st)
            goto done;
    }
    if (st)
        goto done;
    if (L.n_rows == 0) {
        st = FP_FAIL(FP_ERR_PARSE, "%s:%lld: no interactions (%s)", path, L.rd.lineno > 0 ? L.rd.lineno : 1,
                     csv && !first ? "only a CSV header" : "empty file");
        goto done;
    }
    st = build_dataset(&L, out);
done:
    loader_free(&L);
    return st;
}

void fp_dataset_free(fp_dataset_t *d)
{
    if (!d)
        return;
    if (d->user_names)
        for (int32_t u = 0; u < d->n_users; u++)
            free(d->user_names[u]);
    if (d->item_names)
        for (int32_t i = 0; i <= d->n_items; i++)
            free(d->item_names[i]);
    free(d->user_names);
    free(d->item_names);
    free(d->offsets);
    free(d->items);
    free(d);
}

/* Structural check of a dataset handed in by a caller: sizes, offsets, item range. O(n). */
static fp_status check_dataset(const fp_dataset_t *d, const char *who)
{
    if (!d)
        return FP_FAIL(FP_ERR_INVALID, "%s: NULL dataset", who);
    if (d->n_users < 0 || d->n_items < 0 || d->n_items > FP_DATA_MAX_ITEMS || d->n_interactions < 0 ||
        !d->offsets || (d->n_interactions > 0 && !d->items))
        return FP_FAIL(FP_ERR_INVALID, "%s: malformed dataset header", who);
    if (d->offsets[0] != 0 || d->offsets[d->n_users] != d->n_interactions)
        return FP_FAIL(FP_ERR_INVALID, "%s: dataset offsets do not span the interactions", who);
    for (int32_t u = 0; u < d->n_users; u++)
        if (d->offsets[u + 1] < d->offsets[u])
            return FP_FAIL(FP_ERR_INVALID, "%s: dataset offsets decrease at user %d", who, u);
    for (int64_t k = 0; k < d->n_interactions; k++)
        if (d->items[k] < 1 || d->items[k] > d->n_items)
            return FP_FAIL(FP_ERR_INVALID, "%s: item id %d at %lld outside 1..%d", who, d->items[k],
                           (long long)k, d->n_items);
    return FP_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Saving, remapping, lookup                                                                   */
/* ------------------------------------------------------------------------------------------ */

fp_status fp_data_save_text(const fp_dataset_t *d, const char *path)
{
    fp_status st = check_dataset(d, "fp_data_save_text");
    if (st)
        return st;
    if (!path || !*path)
        return FP_FAIL(FP_ERR_INVALID, "fp_data_save_text: empty path");
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 16);
    if (!tmp)
        return FP_FAIL(FP_ERR_NOMEM, "%s: temp name", path);
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp.XXXXXX", 12);
    FILE *f = NULL;
    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = FP_FAIL(FP_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        free(tmp);
        return st;
    }
    (void)fchmod(fd, 0644); /* mkstemp makes 0600; a data export is not a secret */
    f = fdopen(fd, "wb");
    if (!f) {
        st = FP_FAIL(FP_ERR_IO, "%s: fdopen: %s", path, strerror(errno));
        close(fd);
        goto fail;
    }
    char ubuf[16], ibuf[16];
    for (int32_t u = 0; u < d->n_users; u++) {
        const char *un = ubuf;
        if (d->user_names) {
            un = d->user_names[u];
            if (!un || !parse_text_id(un, strlen(un), NULL, NULL, NULL)) {
                st = FP_FAIL(FP_ERR_INVALID, "%s: user name '%.*s' is not a text-format id (an integer in [1, 2147483647])",
                             path, SHOW, un ? un : "(null)");
                goto fail;
            }
        } else {
            snprintf(ubuf, sizeof ubuf, "%d", u + 1);
        }
        for (int64_t k = d->offsets[u]; k < d->offsets[u + 1]; k++) {
            int32_t it = d->items[k];
            const char *in = ibuf;
            if (d->item_names) {
                in = d->item_names[it];
                if (!in || !parse_text_id(in, strlen(in), NULL, NULL, NULL)) {
                    st = FP_FAIL(FP_ERR_INVALID,
                                 "%s: item name '%.*s' is not a text-format id (an integer in [1, 2147483647])",
                                 path, SHOW, in ? in : "(null)");
                    goto fail;
                }
            } else {
                snprintf(ibuf, sizeof ibuf, "%d", it);
            }
            if (fprintf(f, "%s %s\n", un, in) < 0) {
                st = FP_FAIL(FP_ERR_IO, "%s: write: %s", path, strerror(errno));
                goto fail;
            }
        }
    }
    if (fflush(f) != 0 || ferror(f)) {
        st = FP_FAIL(FP_ERR_IO, "%s: write: %s", path, strerror(errno));
        goto fail;
    }
    if (fclose(f) != 0) {
        f = NULL;
        st = FP_FAIL(FP_ERR_IO, "%s: close: %s", path, strerror(errno));
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        st = FP_FAIL(FP_ERR_IO, "%s: rename: %s", path, strerror(errno));
        goto fail;
    }
    free(tmp);
    return FP_OK;
fail:
    if (f)
        fclose(f);
    unlink(tmp);
    free(tmp);
    return st;
}

fp_status fp_data_remap_items(fp_dataset_t *d, char *const *names, int32_t n, int64_t *n_dropped)
{
    fp_status st = check_dataset(d, "fp_data_remap_items");
    if (st)
        return st;
    if (!names || n < 1 || n > FP_DATA_MAX_ITEMS)
        return FP_FAIL(FP_ERR_INVALID, "fp_data_remap_items: bad vocabulary (n = %d)", n);
    strmap m;
    int32_t *map = NULL, *items = NULL;
    int64_t *offsets = NULL;
    char **nn = NULL;
    if (strmap_init(&m, (size_t)n))
        return FP_FAIL(FP_ERR_NOMEM, "fp_data_remap_items: map");
    for (int32_t i = 1; i <= n; i++) {
        if (!names[i]) {
            st = FP_FAIL(FP_ERR_INVALID, "fp_data_remap_items: vocabulary name %d is NULL", i);
            goto done;
        }
        size_t len = strlen(names[i]);
        int32_t id;
        int rc = strmap_intern(&m, names[i], len, FP_DATA_MAX_ITEMS, &id);
        if (rc < 0) {
            st = FP_FAIL(FP_ERR_NOMEM, "fp_data_remap_items: map");
            goto done;
        }
        if (rc == 0) {
            st = FP_FAIL(FP_ERR_INVALID, "fp_data_remap_items: duplicate vocabulary name '%.*s' (%d and %d)",
                         SHOW, names[i], id + 1, i);
            goto done;
        }
    }
    map = xcalloc((size_t)d->n_items + 1, sizeof *map);
    offsets = xcalloc((size_t)d->n_users + 1, sizeof *offsets);
    nn = xcalloc((size_t)n + 1, sizeof *nn);
    if (!map || !offsets || !nn) {
        st = FP_FAIL(FP_ERR_NOMEM, "fp_data_remap_items: tables");
        goto done;
    }
    for (int32_t i = 1; i <= d->n_items; i++) {
        char buf[16];
        const char *nm = buf;
        if (d->item_names)
            nm = d->item_names[i];
        else
            snprintf(buf, sizeof buf, "%d", i);
        int32_t id = nm ? strmap_find(&m, nm, strlen(nm)) : -1;
        map[i] = id + 1; /* 0 = unknown */
    }
    int64_t kept = 0;
    for (int64_t k = 0; k < d->n_interactions; k++)
        kept += map[d->items[k]] != 0;
    items = xcalloc((size_t)kept, sizeof *items);
    if (!items) {
        st = FP_FAIL(FP_ERR_NOMEM, "fp_data_remap_items: items");
        goto done;
    }
    int64_t w = 0;
    for (int32_t u = 0; u < d->n_users; u++) {
        for (int64_t k = d->offsets[u]; k < d->offsets[u + 1]; k++)
            if (map[d->items[k]])
                items[w++] = map[d->items[k]];
        offsets[u + 1] = w;
    }
    for (int32_t i = 1; i <= n; i++) {
        if (!(nn[i] = xstrndup(names[i], strlen(names[i])))) {
            st = FP_FAIL(FP_ERR_NOMEM, "fp_data_remap_items: names");
            goto done;
        }
    }
    /* Commit: nothing below can fail. */
    if (n_dropped)
        *n_dropped = d->n_interactions - kept;
    if (d->item_names)
        for (int32_t i = 0; i <= d->n_items; i++)
            free(d->item_names[i]);
    free(d->item_names);
    free(d->items);
    free(d->offsets);
    d->item_names = nn;
    d->items = items;
    d->offsets = offsets;
    d->n_items = n;
    d->n_interactions = kept;
    nn = NULL;
    items = NULL;
    offsets = NULL;
done:
    if (nn)
        for (int32_t i = 0; i <= n; i++)
            free(nn[i]);
    free(nn);
    free(items);
    free(offsets);
    free(map);
    strmap_free(&m);
    return st;
}

int32_t fp_data_find_user(const fp_dataset_t *d, const char *name)
{
    if (!d || !name)
        return -1;
    if (d->user_names) {
        for (int32_t u = 0; u < d->n_users; u++)
            if (d->user_names[u] && strcmp(d->user_names[u], name) == 0)
                return u;
        return -1;
    }
    int32_t v;
    if (!parse_text_id(name, strlen(name), NULL, NULL, &v) || v > d->n_users)
        return -1;
    return v - 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Synthetic behaviour                                                                         */
/* ------------------------------------------------------------------------------------------ */

void fp_synth_defaults(fp_synth_params_t *p)
{
    if (!p)
        return;
    p->n_users = 2000;
    p->n_items = 1000;
    p->n_interests = 20;
    p->mean_len = 20.0;
    p->zipf_s = 1.0;
    p->p_transition = 0.6;
    p->seed = 1;
}

typedef struct {
    int32_t n_items, n_interests;
    int32_t *perm;   /* [n_items]: cluster c holds perm[cstart[c] .. cstart[c+1]) by popularity rank */
    int32_t *cstart; /* [n_interests + 1] */
    double *cdf;     /* [n_items]: cumulative Zipf weight within the cluster */
    int32_t *succ;   /* [n_items + 1]: the fixed successor of an item (same cluster) */
} synth_world;

static int32_t synth_draw(const synth_world *w, int32_t c, fp_rng_t *r)
{
    int32_t a = w->cstart[c], b = w->cstart[c + 1];
    double x = fp_rng_uniform_d(r) * w->cdf[b - 1];
    int32_t lo = a, hi = b - 1; /* first j with cdf[j] > x */
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (w->cdf[mid] > x)
            hi = mid;
        else
            lo = mid + 1;
    }
    return w->perm[lo];
}

fp_status fp_data_synthetic(const fp_synth_params_t *p, fp_dataset_t **out)
{
    if (out)
        *out = NULL;
    if (!p || !out)
        return FP_FAIL(FP_ERR_INVALID, "fp_data_synthetic: NULL argument");
    if (p->n_users < 1 || p->n_users > SYNTH_MAX_USERS)
        return FP_FAIL(FP_ERR_INVALID, "synthetic: n_users %d outside [1, %d]", p->n_users, SYNTH_MAX_USERS);
    if (p->n_items < 2 || p->n_items > FP_DATA_MAX_ITEMS)
        return FP_FAIL(FP_ERR_INVALID, "synthetic: n_items %d outside [2, %d]", p->n_items, FP_DATA_MAX_ITEMS);
    if (p->n_interests < 1 || p->n_interests > p->n_items)
        return FP_FAIL(FP_ERR_INVALID, "synthetic: n_interests %d outside [1, n_items]", p->n_interests);
    if (!(p->mean_len >= 3.0 && p->mean_len <= SYNTH_MAX_LEN))
        return FP_FAIL(FP_ERR_INVALID, "synthetic: mean_len %g outside [3, %d]", p->mean_len, SYNTH_MAX_LEN);
    if (!(p->zipf_s >= 0.0 && p->zipf_s <= 10.0))
        return FP_FAIL(FP_ERR_INVALID, "synthetic: zipf_s %g outside [0, 10]", p->zipf_s);
    if (!(p->p_transition >= 0.0 && p->p_transition <= 1.0))
        return FP_FAIL(FP_ERR_INVALID, "synthetic: p_transition %g outside [0, 1]", p->p_transition);

    fp_status st = FP_OK;
    const int32_t N = p->n_items, K = p->n_interests, U = p->n_users;
    synth_world w = {N, K, NULL, NULL, NULL, NULL};
    int32_t *cyc = NULL, *items = NULL;
    int64_t *offsets = NULL;
    size_t cap = 0;
    fp_dataset_t *d = NULL;
    w.perm = xcalloc((size_t)N, sizeof *w.perm);
    w.cstart = xcalloc((size_t)K + 1, sizeof *w.cstart);
    w.cdf = xcalloc((size_t)N, sizeof *w.cdf);
    w.succ = xcalloc((size_t)N + 1, sizeof *w.succ);
    cyc = xcalloc((size_t)N, sizeof *cyc);
    offsets = xcalloc((size_t)U + 1, sizeof *offsets);
    if (!w.perm || !w.cstart || !w.cdf || !w.succ || !cyc || !offsets) {
        st = FP_FAIL(FP_ERR_NOMEM, "synthetic: tables for %d items", N);
        goto done;
    }

    /* World: independent streams for the item structure and the users, so that the world
     * does not change with n_users. */
    fp_rng_t master, rw, ru;
    fp_rng_seed(&master, p->seed);
    rw = fp_rng_split(&master, 1);
    ru = fp_rng_split(&master, 2);
    for (int32_t i = 0; i < N; i++)
        w.perm[i] = i + 1;
    shuffle_i32(w.perm, (size_t)N, &rw); /* popularity must not follow the id */
    for (int32_t c = 0; c <= K; c++)
        w.cstart[c] = (int32_t)((int64_t)c * N / K);
    for (int32_t c = 0; c < K; c++) {
        int32_t a = w.cstart[c], b = w.cstart[c + 1];
        double acc = 0.0;
        for (int32_t j = a; j < b; j++) {
            acc += pow((double)(j - a + 1), -p->zipf_s);
            w.cdf[j] = acc;
        }
        /* Successors: one random cycle through the cluster, so every item has exactly one
         * successor and one predecessor and chains visit popular and rare items alike. */
        memcpy(cyc + a, w.perm + a, (size_t)(b - a) * sizeof *cyc);
        shuffle_i32(cyc + a, (size_t)(b - a), &rw);
        for (int32_t j = a; j < b; j++)
            w.succ[cyc[j]] = cyc[j + 1 < b ? j + 1 : a];
    }

    const double m = p->mean_len - 3.0; /* geometric part: mean m, P(k) = (1-q)^k q, q = 1/(m+1) */
    const double log1mq = m > 0 ? log1p(-1.0 / (m + 1.0)) : 0.0;
    size_t n = 0;
    for (int32_t u = 0; u < U; u++) {
        int32_t interest[3];
        double cw[3];
        int k = 1 + (int)fp_rng_below(&ru, (uint64_t)(K < 3 ? K : 3));
        double tot = 0.0;
        for (int j = 0; j < k; j++) {
            int32_t c;
            int dup;
            do {
                c = (int32_t)fp_rng_below(&ru, (uint64_t)K);
                dup = 0;
                for (int q = 0; q < j; q++)
                    dup |= interest[q] == c;
            } while (dup);
            interest[j] = c;
            tot += -log(1.0 - fp_rng_uniform_d(&ru)) + 1e-12; /* Dirichlet(1,..,1) weights */
            cw[j] = tot;
        }
        int len = 3;
        if (m > 0) {
            double g = floor(log(1.0 - fp_rng_uniform_d(&ru)) / log1mq);
            len = g >= SYNTH_MAX_LEN - 3 ? SYNTH_MAX_LEN : 3 + (int)g;
        }
        void *q = grow_array(items, &cap, n + (size_t)len, sizeof *items);
        if (!q) {
            st = FP_FAIL(FP_ERR_NOMEM, "synthetic: %zu interactions", n + (size_t)len);
            goto done;
        }
        items = q;
        int32_t cur = 0;
        for (int t = 0; t < len; t++) {
            if (t > 0 && fp_rng_uniform_d(&ru) < p->p_transition) {
                cur = w.succ[cur];
            } else {
                double x = fp_rng_uniform_d(&ru) * tot;
                int j = 0;
                while (j < k - 1 && cw[j] <= x)
                    j++;
                cur = synth_draw(&w, interest[j], &ru);
            }
            items[n++] = cur;
        }
        offsets[u + 1] = (int64_t)n;
    }

    d = calloc(1, sizeof *d);
    if (!d) {
        st = FP_FAIL(FP_ERR_NOMEM, "synthetic: dataset");
        goto done;
    }
    d->n_users = U;
    d->n_items = N;
    d->n_interactions = (int64_t)n;
    d->offsets = offsets;
    d->items = items;
    offsets = NULL;
    items = NULL;
    d->item_names = xcalloc((size_t)N + 1, sizeof *d->item_names);
    if (!d->item_names) {
        st = FP_FAIL(FP_ERR_NOMEM, "synthetic: names");
        goto done;
    }
    for (int32_t i = 1; i <= N; i++) {
        char buf[16];
        int len = snprintf(buf, sizeof buf, "%d", i);
        if (!(d->item_names[i] = xstrndup(buf, (size_t)len))) {
            st = FP_FAIL(FP_ERR_NOMEM, "synthetic: names");
            goto done;
        }
    }
    *out = d;
    d = NULL;
done:
    fp_dataset_free(d);
    free(w.perm);
    free(w.cstart);
    free(w.cdf);
    free(w.succ);
    free(cyc);
    free(items);
    free(offsets);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* Leave-one-out split                                                                         */
/* ------------------------------------------------------------------------------------------ */

fp_status fp_split_loo(const fp_dataset_t *d, fp_split_t *out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "fp_split_loo: NULL output");
    memset(out, 0, sizeof *out);
    fp_status st = check_dataset(d, "fp_split_loo");
    if (st)
        return st;
    size_t nu = (size_t)d->n_users;
    out->train_len = xcalloc(nu, sizeof *out->train_len);
    out->valid = xcalloc(nu, sizeof *out->valid);
    out->test = xcalloc(nu, sizeof *out->test);
    if (!out->train_len || !out->valid || !out->test) {
        fp_split_free(out);
        return FP_FAIL(FP_ERR_NOMEM, "fp_split_loo: %d users", d->n_users);
    }
    for (int32_t u = 0; u < d->n_users; u++) {
        int64_t a = d->offsets[u], n = d->offsets[u + 1] - a;
        if (n > INT32_MAX) {
            fp_split_free(out);
            return FP_FAIL(FP_ERR_RANGE, "fp_split_loo: user %d has %lld items", u, (long long)n);
        }
        if (n >= 3) {
            out->train_len[u] = (int32_t)(n - 2);
            out->valid[u] = d->items[a + n - 2];
            out->test[u] = d->items[a + n - 1];
        } else {
            out->train_len[u] = (int32_t)n;
        }
    }
    out->d = d;
    return FP_OK;
}

void fp_split_free(fp_split_t *s)
{
    if (!s)
        return;
    free(s->train_len);
    free(s->valid);
    free(s->test);
    memset(s, 0, sizeof *s);
}

static fp_status check_split(const fp_split_t *s, const char *who)
{
    if (!s || !s->d || !s->train_len || !s->valid || !s->test)
        return FP_FAIL(FP_ERR_INVALID, "%s: split not initialised", who);
    const fp_dataset_t *d = s->d;
    for (int32_t u = 0; u < d->n_users; u++)
        if (s->train_len[u] < 0 || s->train_len[u] > d->offsets[u + 1] - d->offsets[u])
            return FP_FAIL(FP_ERR_INVALID, "%s: train_len of user %d does not fit the dataset", who, u);
    return FP_OK;
}

fp_status fp_split_popularity(const fp_split_t *s, int64_t **counts_out)
{
    if (counts_out)
        *counts_out = NULL;
    if (!counts_out)
        return FP_FAIL(FP_ERR_INVALID, "fp_split_popularity: NULL output");
    fp_status st = check_split(s, "fp_split_popularity");
    if (st)
        return st;
    const fp_dataset_t *d = s->d;
    int64_t *c = xcalloc((size_t)d->n_items + 1, sizeof *c);
    if (!c)
        return FP_FAIL(FP_ERR_NOMEM, "fp_split_popularity: %d items", d->n_items);
    for (int32_t u = 0; u < d->n_users; u++) {
        const int32_t *x = d->items + d->offsets[u];
        for (int32_t k = 0; k < s->train_len[u]; k++)
            c[x[k]]++;
    }
    *counts_out = c;
    return FP_OK;
}

void fp_split_history(const fp_split_t *s, int32_t user, int for_test, int maxlen, int32_t *seq_out)
{
    if (!seq_out || maxlen <= 0)
        return;
    memset(seq_out, 0, (size_t)maxlen * sizeof *seq_out);
    if (!s || !s->d || !s->train_len || !s->valid || user < 0 || user >= s->d->n_users)
        return;
    const fp_dataset_t *d = s->d;
    int64_t avail = d->offsets[user + 1] - d->offsets[user];
    int64_t h = s->train_len[user];
    if (for_test && s->valid[user] != 0)
        h++; /* the validation item directly follows the training items */
    if (h < 0 || h > avail)
        return;
    int64_t take = h < maxlen ? h : maxlen;
    const int32_t *x = d->items + d->offsets[user] + (h - take);
    memcpy(seq_out + (maxlen - take), x, (size_t)take * sizeof *x);
}

/* ------------------------------------------------------------------------------------------ */
/* Batcher                                                                                     */
/* ------------------------------------------------------------------------------------------ */

struct fp_batcher {
    const fp_split_t *s;
    int maxlen, batch, n_neg;
    int32_t n_users;  /* trainable users */
    int32_t *users;   /* [n_users], ascending: the canonical list */
    int32_t *order;   /* [n_users], a fresh shuffle of `users` at each epoch start, so that the
                         rng is the only state carried from one epoch to the next */
    int32_t cursor;   /* next index into users; == n_users: start a new epoch */
    fp_rng_t rng;
    uint64_t *mark;   /* bitmap over items 0..n_items: the current row's training set */
    int32_t *free_items; /* lazily: items outside a near-complete training set */
    size_t free_cap;
};

fp_status fp_batcher_create(const fp_split_t *s, int maxlen, int batch, int n_neg, uint64_t seed,
                            fp_batcher_t **out)
{
    if (out)
        *out = NULL;
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "fp_batcher_create: NULL output");
    fp_status st = check_split(s, "fp_batcher_create");
    if (st)
        return st;
    if (maxlen < 1 || maxlen > BATCHER_MAX_MAXLEN || batch < 1 || batch > BATCHER_MAX_BATCH || n_neg < 0 ||
        n_neg > BATCHER_MAX_NEG)
        return FP_FAIL(FP_ERR_INVALID, "fp_batcher_create: maxlen %d, batch %d, n_neg %d out of range", maxlen,
                       batch, n_neg);
    if ((uint64_t)batch * (uint64_t)maxlen * (uint64_t)(n_neg ? n_neg : 1) > (uint64_t)INT32_MAX)
        return FP_FAIL(FP_ERR_INVALID, "fp_batcher_create: batch x maxlen x n_neg too large");
    if (n_neg > 0 && s->d->n_items < 2)
        return FP_FAIL(FP_ERR_INVALID, "fp_batcher_create: %d item(s): no negative can be sampled",
                       s->d->n_items);
    fp_batcher_t *b = calloc(1, sizeof *b);
    if (!b)
        return FP_FAIL(FP_ERR_NOMEM, "fp_batcher_create");
    b->s = s;
    b->maxlen = maxlen;
    b->batch = batch;
    b->n_neg = n_neg;
    fp_rng_seed(&b->rng, seed);
    const fp_dataset_t *d = s->d;
    int32_t nt = 0;
    for (int32_t u = 0; u < d->n_users; u++)
        nt += s->train_len[u] >= 2;
    b->users = xcalloc((size_t)nt, sizeof *b->users);
    b->order = xcalloc((size_t)nt, sizeof *b->order);
    b->mark = xcalloc(((size_t)d->n_items + 1 + 63) / 64, sizeof *b->mark);
    if (!b->users || !b->order || !b->mark) {
        fp_batcher_destroy(b);
        return FP_FAIL(FP_ERR_NOMEM, "fp_batcher_create: %d users, %d items", nt, d->n_items);
    }
    for (int32_t u = 0; u < d->n_users; u++)
        if (s->train_len[u] >= 2)
            b->users[b->n_users++] = u;
    b->cursor = b->n_users;
    *out = b;
    return FP_OK;
}

void fp_batcher_destroy(fp_batcher_t *b)
{
    if (!b)
        return;
    free(b->users);
    free(b->order);
    free(b->mark);
    free(b->free_items);
    free(b);
}

int32_t fp_batcher_n_users(const fp_batcher_t *b) { return b ? b->n_users : 0; }

int32_t fp_batcher_batches_per_epoch(const fp_batcher_t *b)
{
    return b ? (int32_t)(((int64_t)b->n_users + b->batch - 1) / b->batch) : 0;
}

fp_rng_t fp_batcher_rng(const fp_batcher_t *b)
{
    fp_rng_t r = {{0, 0, 0, 0}};
    return b ? b->rng : r;
}

void fp_batcher_set_rng(fp_batcher_t *b, fp_rng_t r)
{
    if (b)
        b->rng = r;
}

static inline int marked(const uint64_t *m, int32_t i) { return (int)((m[i >> 6] >> (i & 63)) & 1u); }

/* One negative for a row whose training set (n_marked distinct items) is marked.
 * Usual case: rejection sampling (expected tries <= 16 thanks to the branch below).
 * Training set covers > 15/16 of the catalogue: sample from the explicit list of the rest.
 * Training set covers everything: no true negative exists; take any item != pos. */
static fp_status sample_neg(fp_batcher_t *b, int64_t n_marked, int32_t pos, int *free_built,
                            int32_t *n_free, int32_t *out)
{
    const int32_t N = b->s->d->n_items;
    int64_t nf = (int64_t)N - n_marked;
    if (nf <= 0) {
        int32_t v = 1 + (int32_t)fp_rng_below(&b->rng, (uint64_t)(N - 1));
        *out = v >= pos ? v + 1 : v;
        return FP_OK;
    }
    if (nf * 16 >= N) {
        int32_t v;
        do
            v = 1 + (int32_t)fp_rng_below(&b->rng, (uint64_t)N);
        while (marked(b->mark, v));
        *out = v;
        return FP_OK;
    }
    if (!*free_built) {
        void *p = grow_array(b->free_items, &b->free_cap, (size_t)nf, sizeof *b->free_items);
        if (!p)
            return FP_FAIL(FP_ERR_NOMEM, "fp_batcher_next: free-item list");
        b->free_items = p;
        int32_t k = 0;
        for (int32_t i = 1; i <= N; i++)
            if (!marked(b->mark, i))
                b->free_items[k++] = i;
        *n_free = k;
        *free_built = 1;
    }
    *out = b->free_items[fp_rng_below(&b->rng, (uint64_t)*n_free)];
    return FP_OK;
}

static fp_status fill_row(fp_batcher_t *b, int32_t u, int32_t *seq, int32_t *pos, int32_t *neg)
{
    const fp_dataset_t *d = b->s->d;
    const int32_t *x = d->items + d->offsets[u];
    const int32_t L = b->s->train_len[u];
    const int T = b->maxlen, K = b->n_neg;
    int64_t distinct = 0;
    if (K > 0) {
        for (int32_t i = 0; i < L; i++) {
            uint64_t bit = 1ULL << (x[i] & 63);
            uint64_t *w = &b->mark[x[i] >> 6];
            distinct += !(*w & bit);
            *w |= bit;
        }
    }
    int32_t start = L > T + 1 ? L - (T + 1) : 0;
    int32_t m = L - start - 1; /* filled positions, <= T */
    int pad = T - m;
    memset(seq, 0, (size_t)pad * sizeof *seq);
    memset(pos, 0, (size_t)pad * sizeof *pos);
    if (K > 0)
        memset(neg, 0, (size_t)pad * (size_t)K * sizeof *neg);
    fp_status st = FP_OK;
    int free_built = 0;
    int32_t n_free = 0;
    for (int32_t j = 0; j < m; j++) {
        seq[pad + j] = x[start + j];
        pos[pad + j] = x[start + j + 1];
        for (int k = 0; k < K && !st; k++)
            st = sample_neg(b, distinct, pos[pad + j], &free_built, &n_free, &neg[(size_t)(pad + j) * K + k]);
    }
    if (K > 0)
        for (int32_t i = 0; i < L; i++)
            b->mark[x[i] >> 6] &= ~(1ULL << (x[i] & 63));
    return st;
}

fp_status fp_batcher_next(fp_batcher_t *b, int32_t *seq, int32_t *pos, int32_t *neg, int *rows,
                          int *epoch_end)
{
    if (rows)
        *rows = 0;
    if (epoch_end)
        *epoch_end = 0;
    if (!b || !seq || !pos || (b->n_neg > 0 && !neg) || !rows || !epoch_end)
        return FP_FAIL(FP_ERR_INVALID, "fp_batcher_next: NULL argument");
    const size_t T = (size_t)b->maxlen, K = (size_t)b->n_neg;
    int r = 0;
    if (b->n_users > 0) {
        if (b->cursor >= b->n_users) {
            memcpy(b->order, b->users, (size_t)b->n_users * sizeof *b->order);
            shuffle_i32(b->order, (size_t)b->n_users, &b->rng);
            b->cursor = 0;
        }
        for (; r < b->batch && b->cursor < b->n_users; r++) {
            fp_status st = fill_row(b, b->order[b->cursor++], seq + (size_t)r * T, pos + (size_t)r * T,
                                    neg ? neg + (size_t)r * T * K : NULL);
            if (st)
                return st;
        }
    }
    size_t rest = (size_t)(b->batch - r);
    memset(seq + (size_t)r * T, 0, rest * T * sizeof *seq);
    memset(pos + (size_t)r * T, 0, rest * T * sizeof *pos);
    if (K > 0)
        memset(neg + (size_t)r * T * K, 0, rest * T * K * sizeof *neg);
    *rows = r;
    *epoch_end = b->cursor >= b->n_users;
    return FP_OK;
}

fp_status fp_batcher_fill(fp_batcher_t *b, const int32_t *idx, int n, int32_t *seq, int32_t *pos, int32_t *neg)
{
    if (!b || !seq || !pos || (b->n_neg > 0 && !neg) || (n > 0 && !idx))
        return FP_FAIL(FP_ERR_INVALID, "fp_batcher_fill: NULL argument");
    if (n < 0 || n > b->batch)
        return FP_FAIL(FP_ERR_INVALID, "fp_batcher_fill: %d rows, the batcher holds %d", n, b->batch);
    for (int r = 0; r < n; r++)
        if (idx[r] < 0 || idx[r] >= b->n_users)
            return FP_FAIL(FP_ERR_INVALID, "fp_batcher_fill: user index %d outside [0, %d)", idx[r], b->n_users);
    const size_t T = (size_t)b->maxlen, K = (size_t)b->n_neg;
    for (int r = 0; r < n; r++) {
        fp_status st = fill_row(b, b->users[idx[r]], seq + (size_t)r * T, pos + (size_t)r * T,
                                neg ? neg + (size_t)r * T * K : NULL);
        if (st)
            return st;
    }
    size_t rest = (size_t)(b->batch - n);
    memset(seq + (size_t)n * T, 0, rest * T * sizeof *seq);
    memset(pos + (size_t)n * T, 0, rest * T * sizeof *pos);
    if (K > 0)
        memset(neg + (size_t)n * T * K, 0, rest * T * K * sizeof *neg);
    return FP_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Partitioning                                                                                */
/* ------------------------------------------------------------------------------------------ */

fp_status fp_data_partition(const fp_dataset_t *d, int n_parts, uint64_t seed, int32_t **part_of)
{
    if (part_of)
        *part_of = NULL;
    if (!part_of)
        return FP_FAIL(FP_ERR_INVALID, "fp_data_partition: NULL output");
    fp_status st = check_dataset(d, "fp_data_partition");
    if (st)
        return st;
    if (n_parts < 1 || n_parts > d->n_users)
        return FP_FAIL(FP_ERR_INVALID, "fp_data_partition: %d parts for %d users (need 1..n_users)", n_parts,
                       d->n_users);
    int32_t *perm = xcalloc((size_t)d->n_users, sizeof *perm);
    int32_t *po = xcalloc((size_t)d->n_users, sizeof *po);
    if (!perm || !po) {
        free(perm);
        free(po);
        return FP_FAIL(FP_ERR_NOMEM, "fp_data_partition: %d users", d->n_users);
    }
    fp_rng_t r;
    fp_rng_seed(&r, seed);
    for (int32_t u = 0; u < d->n_users; u++)
        perm[u] = u;
    shuffle_i32(perm, (size_t)d->n_users, &r);
    for (int32_t i = 0; i < d->n_users; i++)
        po[perm[i]] = i % n_parts;
    free(perm);
    *part_of = po;
    return FP_OK;
}

fp_status fp_data_subset(const fp_dataset_t *d, const int32_t *part_of, int part, fp_dataset_t **out)
{
    if (out)
        *out = NULL;
    if (!part_of || !out)
        return FP_FAIL(FP_ERR_INVALID, "fp_data_subset: NULL argument");
    fp_status st = check_dataset(d, "fp_data_subset");
    if (st)
        return st;
    int32_t nu = 0;
    int64_t ni = 0;
    for (int32_t u = 0; u < d->n_users; u++)
        if (part_of[u] == part) {
            nu++;
            ni += d->offsets[u + 1] - d->offsets[u];
        }
    if (nu == 0)
        return FP_FAIL(FP_ERR_INVALID, "fp_data_subset: part %d has no users", part);
    fp_dataset_t *o = dataset_alloc(nu, d->n_items, ni, 1, d->item_names != NULL);
    if (!o)
        return FP_FAIL(FP_ERR_NOMEM, "fp_data_subset: %d users", nu);
    int32_t w = 0;
    for (int32_t u = 0; u < d->n_users; u++) {
        if (part_of[u] != part)
            continue;
        int64_t a = d->offsets[u], n = d->offsets[u + 1] - a;
        memcpy(o->items + o->offsets[w], d->items + a, (size_t)n * sizeof *o->items);
        o->offsets[w + 1] = o->offsets[w] + n;
        /* Unnamed users get their parent's implicit name, so identities survive partitioning. */
        char buf[16];
        const char *nm = buf;
        if (d->user_names)
            nm = d->user_names[u] ? d->user_names[u] : "";
        else
            snprintf(buf, sizeof buf, "%d", u + 1);
        if (!(o->user_names[w] = xstrndup(nm, strlen(nm)))) {
            fp_dataset_free(o);
            return FP_FAIL(FP_ERR_NOMEM, "fp_data_subset: names");
        }
        w++;
    }
    if (d->item_names)
        for (int32_t i = 1; i <= d->n_items; i++)
            if (d->item_names[i] && !(o->item_names[i] = xstrndup(d->item_names[i], strlen(d->item_names[i])))) {
                fp_dataset_free(o);
                return FP_FAIL(FP_ERR_NOMEM, "fp_data_subset: names");
            }
    *out = o;
    return FP_OK;
}
