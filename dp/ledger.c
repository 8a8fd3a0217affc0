/* ledger: signed, hash-chained privacy ledgers (client and federation), budget admission and
 * verification. See ledger.h for the API and dp/README.md ("Ledger format") for the bytes.
 *
 * One rule keeps the writer and the verifier honest with each other: every line is accepted by
 * the same check (parse → canonical re-serialisation compared byte for byte → key → signature →
 * chain → seq → round order → ε recomputed → budget) whether it is read from a file, verified
 * offline, received by the coordinator or just built by fp_ledger_append; a line is written only
 * after it passed that check, and state changes only after the write and fsync succeeded.
 *
 * Canonical form is enforced by re-serialising the parsed entry and comparing bytes: that rules
 * out duplicate keys, reordered keys, whitespace and alternative number spellings, so every tool
 * that parses a line sees the same values the signature covers. */
#define _DEFAULT_SOURCE /* flock(): a per-open-file lock, unlike fcntl's per-process one */

#include "dp/ledger.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "common/log.h"
#include "dp/ledger_internal.h"

#define SIG_BYTES 64
#define KEY_BYTES 32
#define HASH_BYTES 32
#define READ_CHUNK 65536
#define MAX_KEY_FILE (64u << 10)
#define MAX_CLIENTS 1000000u
#define JSON_DEPTH 4
/* The member that ends a line and is left out of the signed bytes: ,"sig":"<128 hex>"} */
#define SIG_SUFFIX_LEN (sizeof ",\"sig\":\"" - 1 + 2 * SIG_BYTES + 2)
#define COSIG_SUFFIX_LEN (sizeof ",\"cosig\":\"" - 1 + 2 * SIG_BYTES + 2)

static const char ZERO_HASH_HEX[65] = "0000000000000000000000000000000000000000000000000000000000000000";

/* ================================================================================================
 * Small helpers */

static const char *errno_text(int e, char *buf, size_t n)
{
    if (strerror_r(e, buf, n) != 0)
        snprintf(buf, n, "errno %d", e);
    return buf;
}

/* Records "what: <OpenSSL's reason>" and clears OpenSSL's error queue. */
static fp_status ossl_fail(fp_status code, const char *what)
{
    unsigned long e = ERR_get_error();
    char reason[256] = "no detail";
    if (e)
        ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    return FP_FAIL(code, "%s: %s", what, reason);
}

/* "<ctx> (client C, round R): <message>", the parenthesis only with what is known; the source
 * position recorded is the caller's (efail is a macro). */
static fp_status efail_at(fp_status code, const char *file, int line, const char *ctx, const char *client,
                          int64_t round, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static fp_status efail_at(fp_status code, const char *file, int line, const char *ctx, const char *client,
                          int64_t round, const char *fmt, ...)
{
    char msg[768], where[96] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (client && client[0] && round >= 0)
        snprintf(where, sizeof where, " (client %.40s, round %lld)", client, (long long)round);
    else if (client && client[0])
        snprintf(where, sizeof where, " (client %.40s)", client);
    else if (round >= 0)
        snprintf(where, sizeof where, " (round %lld)", (long long)round);
    return fp_error_fail(code, file, line, "%s%s: %s", ctx, where, msg);
}
#define efail(code, ctx, client, round, ...) efail_at((code), __FILE__, __LINE__, (ctx), (client), (round), __VA_ARGS__)

static void to_hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Exactly 2n lowercase hex digits -> n bytes; -1 otherwise. */
static int from_hex(const char *in, size_t len, unsigned char *out, size_t n)
{
    if (len != 2 * n)
        return -1;
    for (size_t i = 0; i < 2 * n; i++) {
        char c = in[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return -1;
        if (i % 2 == 0)
            out[i / 2] = (unsigned char)(v << 4);
        else
            out[i / 2] |= (unsigned char)v;
    }
    return 0;
}

static fp_status sha256(const void *data, size_t n, unsigned char out[HASH_BYTES])
{
    unsigned int len = 0;
    if (EVP_Digest(data, n, out, &len, EVP_sha256(), NULL) != 1 || len != HASH_BYTES)
        return ossl_fail(FP_ERR_INTERNAL, "SHA-256");
    return FP_OK;
}

static int valid_client_id(const char *s, size_t n)
{
    if (n == 0 || n > FP_LEDGER_MAX_CLIENT_ID)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\')
            return 0;
    return 1;
}

/* |a − b| within the verification tolerance. Both must be finite. */
static int eps_close(double a, double b)
{
    if (!isfinite(a) || !isfinite(b))
        return 0;
    double tol = FP_LEDGER_EPS_RTOL * fmax(fabs(a), fabs(b));
    return fabs(a - b) <= fmax(tol, FP_LEDGER_EPS_ATOL);
}

/* ================================================================================================
 * Text buffer (ledger_internal.h) */

void fp_ledger_buf_init(fp_ledger_buf_t *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

void fp_ledger_buf_free(fp_ledger_buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

char *fp_ledger_buf_take(fp_ledger_buf_t *b, size_t *len)
{
    char *p = b->err ? NULL : b->p;
    if (len)
        *len = p ? b->n : 0;
    if (!p)
        free(b->p);
    size_t max = b->max;
    memset(b, 0, sizeof *b);
    b->max = max;
    return p;
}

static int buf_reserve(fp_ledger_buf_t *b, size_t extra)
{
    if (b->err)
        return -1;
    if (extra > b->max || b->n > b->max - extra) {
        b->err = 2;
        return -1;
    }
    size_t need = b->n + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->err = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void fp_ledger_buf_put(fp_ledger_buf_t *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) != 0)
        return;
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void fp_ledger_buf_puts(fp_ledger_buf_t *b, const char *s)
{
    fp_ledger_buf_put(b, s, strlen(s));
}

void fp_ledger_buf_printf(fp_ledger_buf_t *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (k < 0) {
        b->err = b->err ? b->err : 2;
        return;
    }
    if ((size_t)k < sizeof small) {
        fp_ledger_buf_put(b, small, (size_t)k);
        return;
    }
    if (buf_reserve(b, (size_t)k) != 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

void fp_ledger_buf_num(fp_ledger_buf_t *b, double v)
{
    char t[40];
    if (!isfinite(v)) {
        fp_ledger_buf_puts(b, "null");
        return;
    }
    if (v == 0.0)
        v = 0.0; /* -0 -> 0: a reader gets the integer 0 back */
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(t, sizeof t, "%.0f", v);
    } else {
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(t, sizeof t, "%.*g", prec, v);
            if (strtod(t, NULL) == v)
                break;
        }
    }
    fp_ledger_buf_puts(b, t);
}

void fp_ledger_buf_json_str(fp_ledger_buf_t *b, const char *s, size_t n)
{
    fp_ledger_buf_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        fp_ledger_buf_put(b, s + run, i - run);
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            fp_ledger_buf_put(b, esc, 2);
        } else {
            fp_ledger_buf_printf(b, "\\u%04x", c);
        }
        run = i + 1;
    }
    fp_ledger_buf_put(b, s + run, n - run);
    fp_ledger_buf_put(b, "\"", 1);
}

fp_status fp_ledger_buf_status(const fp_ledger_buf_t *b, const char *what)
{
    if (b->err == 1)
        return FP_FAIL(FP_ERR_NOMEM, "%s: out of memory", what);
    if (b->err)
        return FP_FAIL(FP_ERR_RANGE, "%s: longer than %zu bytes", what, b->max);
    return FP_OK;
}

/* ================================================================================================
 * Keys */

struct fp_ledger_key {
    EVP_PKEY *pkey;
    int priv;
    unsigned char pub[KEY_BYTES];
    char hex[2 * KEY_BYTES + 1];
};

/* Wraps pkey (taking ownership) after checking it is Ed25519. */
static fp_status key_wrap(EVP_PKEY *pkey, int priv, const char *what, fp_ledger_key_t **out)
{
    if (EVP_PKEY_get_id(pkey) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(pkey);
        return FP_FAIL(FP_ERR_FORMAT, "%s: not an Ed25519 key", what);
    }
    fp_ledger_key_t *k = calloc(1, sizeof *k);
    if (!k) {
        EVP_PKEY_free(pkey);
        return FP_FAIL(FP_ERR_NOMEM, "%s: key", what);
    }
    size_t len = KEY_BYTES;
    if (EVP_PKEY_get_raw_public_key(pkey, k->pub, &len) != 1 || len != KEY_BYTES) {
        EVP_PKEY_free(pkey);
        free(k);
        return ossl_fail(FP_ERR_FORMAT, what);
    }
    k->pkey = pkey;
    k->priv = priv;
    to_hex(k->pub, KEY_BYTES, k->hex);
    *out = k;
    return FP_OK;
}

/* A second handle on the same key (EVP_PKEY reference counted). */
static fp_status key_ref(const fp_ledger_key_t *src, fp_ledger_key_t **out)
{
    fp_ledger_key_t *k = malloc(sizeof *k);
    if (!k)
        return FP_FAIL(FP_ERR_NOMEM, "key reference");
    if (EVP_PKEY_up_ref(src->pkey) != 1) {
        free(k);
        return ossl_fail(FP_ERR_INTERNAL, "key reference");
    }
    *k = *src;
    *out = k;
    return FP_OK;
}

fp_status fp_ledger_key_generate(fp_ledger_key_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "key_generate: NULL output");
    *out = NULL;
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    if (!ctx)
        return ossl_fail(FP_ERR_INTERNAL, "Ed25519 key generation");
    if (EVP_PKEY_keygen_init(ctx) != 1 || EVP_PKEY_keygen(ctx, &pkey) != 1) {
        EVP_PKEY_CTX_free(ctx);
        return ossl_fail(FP_ERR_INTERNAL, "Ed25519 key generation");
    }
    EVP_PKEY_CTX_free(ctx);
    return key_wrap(pkey, 1, "generated key", out);
}

/* A passphrase callback that supplies none: an encrypted key fails instead of prompting. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* The whole of a small file into a malloc'd buffer. */
static fp_status read_small_file(const char *path, size_t max, char **data, size_t *n)
{
    char eb[128];
    *data = NULL;
    *n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return FP_FAIL(e == ENOENT ? FP_ERR_NOT_FOUND : FP_ERR_IO, "open %s: %s", path, errno_text(e, eb, sizeof eb));
    }
    char *buf = malloc(max + 1);
    if (!buf) {
        close(fd);
        return FP_FAIL(FP_ERR_NOMEM, "read %s", path);
    }
    size_t len = 0;
    for (;;) {
        ssize_t k = read(fd, buf + len, max + 1 - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            fp_status st = FP_FAIL(FP_ERR_IO, "read %s: %s", path, errno_text(errno, eb, sizeof eb));
            free(buf);
            close(fd);
            return st;
        }
        if (k == 0)
            break;
        len += (size_t)k;
        if (len > max) {
            free(buf);
            close(fd);
            return FP_FAIL(FP_ERR_FORMAT, "%s: larger than %zu bytes", path, max);
        }
    }
    close(fd);
    buf[len] = '\0';
    *data = buf;
    *n = len;
    return FP_OK;
}

/* A key from PEM text (data[n], need not be NUL-terminated); what names it in messages. */
static fp_status key_from_pem(const char *data, size_t n, const char *what, fp_ledger_key_t **out)
{
    if (n > MAX_KEY_FILE || n > (size_t)INT_MAX)
        return FP_FAIL(FP_ERR_FORMAT, "%s: %zu bytes is not a key", what, n);
    char *z = malloc(n + 1);
    if (!z)
        return FP_FAIL(FP_ERR_NOMEM, "%s", what);
    memcpy(z, data, n);
    z[n] = '\0';
    int priv = strstr(z, "-----BEGIN PRIVATE KEY-----") != NULL;
    int pub = strstr(z, "-----BEGIN PUBLIC KEY-----") != NULL;
    OPENSSL_cleanse(z, n);
    free(z);
    if (priv == pub)
        return FP_FAIL(FP_ERR_FORMAT, "%s: expected one PEM \"PRIVATE KEY\" or \"PUBLIC KEY\" block (Ed25519)", what);
    BIO *bio = BIO_new_mem_buf(data, (int)n);
    if (!bio)
        return ossl_fail(FP_ERR_NOMEM, what);
    EVP_PKEY *pkey = priv ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL)
                          : PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (!pkey)
        return ossl_fail(FP_ERR_FORMAT, what);
    ERR_clear_error();
    return key_wrap(pkey, priv, what, out);
}

fp_status fp_ledger_key_load(const char *pem_path, fp_ledger_key_t **out)
{
    if (!pem_path || !out)
        return FP_FAIL(FP_ERR_INVALID, "key_load: NULL argument");
    *out = NULL;
    char *data;
    size_t n;
    fp_status st = read_small_file(pem_path, MAX_KEY_FILE, &data, &n);
    if (st != FP_OK)
        return st;
    char what[300];
    snprintf(what, sizeof what, "%s", pem_path);
    st = key_from_pem(data, n, what, out);
    OPENSSL_cleanse(data, n);
    free(data);
    return st;
}

fp_status fp_ledger_key_from_public_pem(const char *pem, size_t n, fp_ledger_key_t **out)
{
    if (!pem || !out)
        return FP_FAIL(FP_ERR_INVALID, "key_from_public_pem: NULL argument");
    *out = NULL;
    fp_status st = key_from_pem(pem, n, "public key PEM", out);
    if (st == FP_OK && (*out)->priv) {
        fp_ledger_key_free(*out);
        *out = NULL;
        return FP_FAIL(FP_ERR_FORMAT, "public key PEM: a private key was given where a public key was expected");
    }
    return st;
}

fp_status fp_ledger_key_public_pem(const fp_ledger_key_t *key, char **pem)
{
    if (!key || !pem)
        return FP_FAIL(FP_ERR_INVALID, "key_public_pem: NULL argument");
    *pem = NULL;
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio)
        return ossl_fail(FP_ERR_NOMEM, "public key PEM");
    if (PEM_write_bio_PUBKEY(bio, key->pkey) != 1) {
        BIO_free(bio);
        return ossl_fail(FP_ERR_FORMAT, "public key PEM");
    }
    char *p = NULL;
    long len = BIO_get_mem_data(bio, &p);
    if (len <= 0 || !p || !(*pem = malloc((size_t)len + 1))) {
        BIO_free(bio);
        return FP_FAIL(FP_ERR_NOMEM, "public key PEM");
    }
    memcpy(*pem, p, (size_t)len);
    (*pem)[len] = '\0';
    BIO_free(bio);
    return FP_OK;
}

fp_status fp_ledger_key_from_hex(const char *hex, fp_ledger_key_t **out)
{
    if (!hex || !out)
        return FP_FAIL(FP_ERR_INVALID, "key_from_hex: NULL argument");
    *out = NULL;
    unsigned char raw[KEY_BYTES];
    if (from_hex(hex, strlen(hex), raw, KEY_BYTES) != 0)
        return FP_FAIL(FP_ERR_FORMAT, "public key '%.70s' is not 64 lowercase hex digits", hex);
    EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, KEY_BYTES);
    if (!pkey)
        return ossl_fail(FP_ERR_FORMAT, "Ed25519 public key");
    return key_wrap(pkey, 0, "public key", out);
}

/* Write data to a new file (O_EXCL) with mode, fsync'd. */
static fp_status write_new_file(const char *path, const void *data, size_t n, mode_t mode)
{
    char eb[128];
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        int e = errno;
        if (e == EEXIST)
            return FP_FAIL(FP_ERR_INVALID, "%s already exists: refusing to overwrite a key", path);
        return FP_FAIL(FP_ERR_IO, "create %s: %s", path, errno_text(e, eb, sizeof eb));
    }
    fp_status st = FP_OK;
    const char *p = data;
    while (n > 0 && st == FP_OK) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            st = FP_FAIL(FP_ERR_IO, "write %s: %s", path, k < 0 ? errno_text(errno, eb, sizeof eb) : "no progress");
        else {
            p += k;
            n -= (size_t)k;
        }
    }
    if (st == FP_OK && fchmod(fd, mode) != 0)
        st = FP_FAIL(FP_ERR_IO, "chmod %s: %s", path, errno_text(errno, eb, sizeof eb));
    if (st == FP_OK && fsync(fd) != 0)
        st = FP_FAIL(FP_ERR_IO, "fsync %s: %s", path, errno_text(errno, eb, sizeof eb));
    if (close(fd) != 0 && st == FP_OK)
        st = FP_FAIL(FP_ERR_IO, "close %s: %s", path, errno_text(errno, eb, sizeof eb));
    if (st != FP_OK)
        unlink(path);
    return st;
}

/* fsync the directory dir (so a created file's name survives a crash). */
static fp_status fsync_dir(const char *dir)
{
    char eb[128];
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return FP_FAIL(FP_ERR_IO, "open directory %s: %s", dir, errno_text(errno, eb, sizeof eb));
    fp_status st = FP_OK;
    if (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP && errno != EROFS)
        st = FP_FAIL(FP_ERR_IO, "fsync directory %s: %s", dir, errno_text(errno, eb, sizeof eb));
    close(fd);
    return st;
}

static fp_status fsync_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = !slash ? strdup(".") : slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
    if (!dir)
        return FP_FAIL(FP_ERR_NOMEM, "directory of %s", path);
    fp_status st = fsync_dir(dir);
    free(dir);
    return st;
}

static char *join_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* PEM text of the private (priv = 1) or public key into a malloc'd buffer. */
static fp_status key_pem(const fp_ledger_key_t *key, int priv, char **pem, size_t *n)
{
    *pem = NULL;
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio)
        return ossl_fail(FP_ERR_NOMEM, "PEM buffer");
    int ok = priv ? PEM_write_bio_PrivateKey(bio, key->pkey, NULL, NULL, 0, NULL, NULL)
                  : PEM_write_bio_PUBKEY(bio, key->pkey);
    char *mem = NULL;
    long len = ok == 1 ? BIO_get_mem_data(bio, &mem) : 0;
    if (ok != 1 || len <= 0 || !mem) {
        BIO_free(bio);
        return ossl_fail(FP_ERR_INTERNAL, "PEM encoding of the ledger key");
    }
    *pem = malloc((size_t)len);
    if (*pem) {
        memcpy(*pem, mem, (size_t)len);
        *n = (size_t)len;
    }
    OPENSSL_cleanse(mem, (size_t)len);
    BIO_free(bio);
    return *pem ? FP_OK : FP_FAIL(FP_ERR_NOMEM, "PEM text");
}

fp_status fp_ledger_key_save(const fp_ledger_key_t *key, const char *dir)
{
    if (!key || !dir)
        return FP_FAIL(FP_ERR_INVALID, "key_save: NULL argument");
    if (!key->priv)
        return FP_FAIL(FP_ERR_INVALID, "key_save: a public-only key cannot be saved as a key pair");
    char *priv_path = join_path(dir, FP_LEDGER_KEY_FILE), *pub_path = join_path(dir, FP_LEDGER_PUBKEY_FILE);
    char *priv_pem = NULL, *pub_pem = NULL;
    size_t priv_n = 0, pub_n = 0;
    fp_status st = FP_OK;
    if (!priv_path || !pub_path) {
        st = FP_FAIL(FP_ERR_NOMEM, "key paths");
        goto done;
    }
    if (access(priv_path, F_OK) == 0 || access(pub_path, F_OK) == 0) {
        st = FP_FAIL(FP_ERR_INVALID, "%s already holds a ledger key: refusing to overwrite it", dir);
        goto done;
    }
    if ((st = key_pem(key, 1, &priv_pem, &priv_n)) != FP_OK || (st = key_pem(key, 0, &pub_pem, &pub_n)) != FP_OK)
        goto done;
    if ((st = write_new_file(priv_path, priv_pem, priv_n, 0600)) != FP_OK)
        goto done;
    if ((st = write_new_file(pub_path, pub_pem, pub_n, 0644)) != FP_OK) {
        unlink(priv_path);
        goto done;
    }
    st = fsync_dir(dir);
done:
    if (priv_pem)
        OPENSSL_cleanse(priv_pem, priv_n);
    free(priv_pem);
    free(pub_pem);
    free(priv_path);
    free(pub_path);
    return st;
}

fp_status fp_ledger_key_load_or_create(const char *dir, fp_ledger_key_t **out, int *created)
{
    if (!dir || !out)
        return FP_FAIL(FP_ERR_INVALID, "key_load_or_create: NULL argument");
    *out = NULL;
    if (created)
        *created = 0;
    char *path = join_path(dir, FP_LEDGER_KEY_FILE);
    if (!path)
        return FP_FAIL(FP_ERR_NOMEM, "key path");
    fp_status st = fp_ledger_key_load(path, out);
    if (st == FP_OK && !(*out)->priv) {
        fp_ledger_key_free(*out);
        *out = NULL;
        st = FP_FAIL(FP_ERR_FORMAT, "%s holds no private key", path);
    }
    free(path);
    if (st != FP_ERR_NOT_FOUND)
        return st;
    fp_error_clear();
    if ((st = fp_ledger_key_generate(out)) != FP_OK)
        return st;
    if ((st = fp_ledger_key_save(*out, dir)) != FP_OK) {
        fp_ledger_key_free(*out);
        *out = NULL;
        return st;
    }
    if (created)
        *created = 1;
    return FP_OK;
}

void fp_ledger_key_public_hex(const fp_ledger_key_t *key, char hex[65])
{
    if (!key) {
        hex[0] = '\0';
        return;
    }
    memcpy(hex, key->hex, sizeof key->hex);
}

int fp_ledger_key_has_private(const fp_ledger_key_t *key)
{
    return key ? key->priv : 0;
}

int fp_ledger_key_equal(const fp_ledger_key_t *a, const fp_ledger_key_t *b)
{
    return a && b && memcmp(a->pub, b->pub, KEY_BYTES) == 0;
}

void fp_ledger_key_free(fp_ledger_key_t *key)
{
    if (!key)
        return;
    EVP_PKEY_free(key->pkey);
    free(key);
}

static fp_status sign_bytes(const fp_ledger_key_t *key, const void *msg, size_t n, char hex[2 * SIG_BYTES + 1])
{
    if (!key->priv)
        return FP_FAIL(FP_ERR_INVALID, "signing needs a private key");
    unsigned char sig[SIG_BYTES];
    size_t len = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return ossl_fail(FP_ERR_NOMEM, "signature context");
    if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, key->pkey) != 1 ||
        EVP_DigestSign(ctx, sig, &len, msg, n) != 1 || len != SIG_BYTES) {
        EVP_MD_CTX_free(ctx);
        return ossl_fail(FP_ERR_INTERNAL, "Ed25519 signature");
    }
    EVP_MD_CTX_free(ctx);
    to_hex(sig, SIG_BYTES, hex);
    return FP_OK;
}

/* *ok = 1 when sig_hex is a valid signature of msg by pkey. Errors only for OpenSSL failures. */
static fp_status verify_bytes(EVP_PKEY *pkey, const void *msg, size_t n, const char *sig_hex, int *ok)
{
    unsigned char sig[SIG_BYTES];
    *ok = 0;
    if (from_hex(sig_hex, strlen(sig_hex), sig, SIG_BYTES) != 0)
        return FP_OK;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return ossl_fail(FP_ERR_NOMEM, "verification context");
    if (EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pkey) != 1) {
        EVP_MD_CTX_free(ctx);
        return ossl_fail(FP_ERR_INTERNAL, "Ed25519 verification");
    }
    int rc = EVP_DigestVerify(ctx, sig, SIG_BYTES, msg, n);
    EVP_MD_CTX_free(ctx);
    ERR_clear_error(); /* a bad signature leaves a queue entry; it is an answer, not an error */
    *ok = rc == 1;
    return FP_OK;
}

/* ================================================================================================
 * Entries: names, serialisation, parsing */

fp_status fp_ledger_unit_parse(const char *text, fp_ledger_unit *out)
{
    if (text && out && strcmp(text, "record") == 0) {
        *out = FP_LEDGER_UNIT_RECORD;
        return FP_OK;
    }
    if (text && out && strcmp(text, "client") == 0) {
        *out = FP_LEDGER_UNIT_CLIENT;
        return FP_OK;
    }
    return FP_FAIL(FP_ERR_INVALID, "privacy unit '%.40s' is neither 'record' nor 'client'", text ? text : "(null)");
}

const char *fp_ledger_unit_name(fp_ledger_unit u)
{
    return u == FP_LEDGER_UNIT_RECORD ? "record" : u == FP_LEDGER_UNIT_CLIENT ? "client" : "?";
}

/* Everything but "sig", then "}" when close is set (the signed bytes), else without the "}". */
static void put_entry(fp_ledger_buf_t *b, const fp_ledger_entry_t *e, int close)
{
    const fp_ledger_spend_t *s = &e->spend;
    fp_ledger_buf_printf(b, "{\"v\":%d,\"kind\":\"client\",\"client\":", FP_LEDGER_VERSION);
    fp_ledger_buf_json_str(b, e->client, strlen(e->client));
    fp_ledger_buf_printf(b, ",\"seq\":%lld,\"round\":%lld,\"model_version\":%lld,\"unit\":\"%s\",\"q\":",
                         (long long)e->seq, (long long)s->round, (long long)s->model_version,
                         fp_ledger_unit_name(s->unit));
    fp_ledger_buf_num(b, s->q);
    fp_ledger_buf_puts(b, ",\"sigma\":");
    fp_ledger_buf_num(b, s->sigma);
    fp_ledger_buf_puts(b, ",\"clip\":");
    fp_ledger_buf_num(b, s->clip);
    fp_ledger_buf_printf(b, ",\"steps\":%lld,\"delta\":", (long long)s->steps);
    fp_ledger_buf_num(b, s->delta);
    fp_ledger_buf_printf(b, ",\"conversion\":\"%s\",\"orders\":[", fp_dp_conversion_name(s->conversion));
    for (size_t k = 0; k < e->n_orders; k++) {
        if (k)
            fp_ledger_buf_put(b, ",", 1);
        fp_ledger_buf_num(b, e->orders[k]);
    }
    fp_ledger_buf_puts(b, "],\"eps_round\":");
    fp_ledger_buf_num(b, e->eps_round);
    fp_ledger_buf_puts(b, ",\"eps\":");
    fp_ledger_buf_num(b, e->eps);
    fp_ledger_buf_puts(b, ",\"order\":");
    fp_ledger_buf_num(b, e->order);
    fp_ledger_buf_puts(b, ",\"budget\":");
    fp_ledger_buf_num(b, e->budget);
    fp_ledger_buf_printf(b, ",\"time\":\"%s\",\"prev\":\"%s\",\"pubkey\":\"%s\"", e->time, e->prev, e->pubkey);
    if (close)
        fp_ledger_buf_put(b, "}", 1);
}

static int valid_time(const char *t, size_t n)
{
    static const char pat[] = "dddd-dd-ddTdd:dd:ddZ";
    if (n != sizeof pat - 1)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (pat[i] == 'd' ? !(t[i] >= '0' && t[i] <= '9') : t[i] != pat[i])
            return 0;
    return 1;
}

static void time_now(char out[21])
{
    time_t now = time(NULL);
    struct tm tm;
    if (now == (time_t)-1 || !gmtime_r(&now, &tm) || strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm) != 20)
        snprintf(out, 21, "1970-01-01T00:00:00Z"); /* a clock we cannot read; the time is informational */
}

/* Checks of the values an entry may hold (shared by the writer and the parser). */
static fp_status check_spend(const fp_ledger_spend_t *s, fp_status code, const char *ctx, const char *client)
{
    int64_t r = s->round;
    if (s->round < 0 || s->round > FP_LEDGER_MAX_INT)
        return efail(code, ctx, client, -1, "round %lld is not in [0, %lld]", (long long)s->round,
                     FP_LEDGER_MAX_INT);
    if (s->model_version < 0 || s->model_version > FP_LEDGER_MAX_INT)
        return efail(code, ctx, client, r, "model_version %lld is not in [0, %lld]",
                     (long long)s->model_version, FP_LEDGER_MAX_INT);
    if (s->unit != FP_LEDGER_UNIT_RECORD && s->unit != FP_LEDGER_UNIT_CLIENT)
        return efail(code, ctx, client, r, "unknown privacy unit %d", (int)s->unit);
    if (!(s->q >= 0.0 && s->q <= 1.0))
        return efail(code, ctx, client, r, "q = %g is not a sampling rate in [0, 1]", s->q);
    if (!(s->sigma == 0.0 || (s->sigma >= FP_DP_SIGMA_MIN && s->sigma <= FP_DP_SIGMA_MAX)))
        return efail(code, ctx, client, r, "sigma = %g is neither 0 nor in [%g, %g]", s->sigma,
                     FP_DP_SIGMA_MIN, FP_DP_SIGMA_MAX);
    if (!(s->clip > 0.0 && isfinite(s->clip)))
        return efail(code, ctx, client, r, "clip = %g is not a finite bound > 0", s->clip);
    if (s->steps < 0 || s->steps > FP_LEDGER_MAX_STEPS)
        return efail(code, ctx, client, r, "steps = %lld is not in [0, %lld]", (long long)s->steps,
                     FP_LEDGER_MAX_STEPS);
    if (!(s->delta > 0.0 && s->delta < 1.0))
        return efail(code, ctx, client, r, "delta = %g is not in (0, 1)", s->delta);
    if (s->conversion != FP_DP_CONVERSION_IMPROVED && s->conversion != FP_DP_CONVERSION_CLASSIC)
        return efail(code, ctx, client, r, "unknown conversion %d", (int)s->conversion);
    return FP_OK;
}

static fp_status check_orders(const double *orders, size_t n, fp_status code, const char *ctx, const char *client,
                               int64_t round)
{
    if (n == 0 || n > FP_LEDGER_MAX_ORDERS)
        return efail(code, ctx, client, round, "%zu RDP orders (1 to %u allowed)", n, FP_LEDGER_MAX_ORDERS);
    for (size_t k = 0; k < n; k++)
        if (!(orders[k] > 1.0 && orders[k] <= FP_DP_MAX_ORDER))
            return efail(code, ctx, client, round, "RDP order %g is not in (1, %g]", orders[k],
                         FP_DP_MAX_ORDER);
    return FP_OK;
}

void fp_ledger_entry_clear(fp_ledger_entry_t *e)
{
    if (!e)
        return;
    free(e->orders);
    memset(e, 0, sizeof *e);
}

fp_status fp_ledger_entry_sign(fp_ledger_entry_t *e, const fp_ledger_key_t *key, char **line, size_t *len)
{
    if (!e || !key || !line)
        return FP_FAIL(FP_ERR_INVALID, "entry_sign: NULL argument");
    *line = NULL;
    if (len)
        *len = 0;
    if (!valid_client_id(e->client, strnlen(e->client, sizeof e->client)))
        return FP_FAIL(FP_ERR_INVALID, "entry_sign: client id '%.40s' is empty, too long or has '\"', '\\' or "
                                       "non-printable characters", e->client);
    memcpy(e->pubkey, key->hex, sizeof e->pubkey);
    fp_ledger_buf_t b;
    fp_ledger_buf_init(&b, FP_LEDGER_MAX_LINE);
    put_entry(&b, e, 1);
    fp_status st = fp_ledger_buf_status(&b, "ledger entry");
    if (st == FP_OK)
        st = sign_bytes(key, b.p, b.n, e->sig);
    if (st == FP_OK) {
        b.n--; /* drop the "}" of the signed form */
        fp_ledger_buf_printf(&b, ",\"sig\":\"%s\"}", e->sig);
        st = fp_ledger_buf_status(&b, "ledger entry");
    }
    if (st != FP_OK) {
        fp_ledger_buf_free(&b);
        return st;
    }
    *line = fp_ledger_buf_take(&b, len);
    return FP_OK;
}

/* ---- JSON field access ---- */

static fp_status parse_json(const char *line, size_t len, const char *ctx, json_object **out)
{
    *out = NULL;
    if (memchr(line, '\0', len))
        return efail(FP_ERR_PARSE, ctx, NULL, -1, "contains a NUL byte");
    if (len > INT_MAX)
        return efail(FP_ERR_PARSE, ctx, NULL, -1, "line too long");
    struct json_tokener *tok = json_tokener_new_ex(JSON_DEPTH);
    if (!tok)
        return FP_FAIL(FP_ERR_NOMEM, "%s: JSON tokener", ctx);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8 | JSON_TOKENER_ALLOW_TRAILING_CHARS);
    json_object *root = json_tokener_parse_ex(tok, line, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!root || jerr != json_tokener_success) {
        json_object_put(root);
        return efail(FP_ERR_PARSE, ctx, NULL, -1, "not a JSON object (%s)",
                     jerr == json_tokener_continue ? "it ends too early" : json_tokener_error_desc(jerr));
    }
    if (end != len) {
        json_object_put(root);
        return efail(FP_ERR_PARSE, ctx, NULL, -1, "text after the JSON object");
    }
    if (!json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        return efail(FP_ERR_PARSE, ctx, NULL, -1, "not a JSON object");
    }
    *out = root;
    return FP_OK;
}

/* The members of root must be exactly names[0..n) (in any order here; canonical order is checked
 * by re-serialisation). */
static fp_status check_members(json_object *root, const char *const *names, size_t n, const char *ctx)
{
    for (size_t k = 0; k < n; k++)
        if (!json_object_object_get_ex(root, names[k], NULL))
            return efail(FP_ERR_FORMAT, ctx, NULL, -1, "missing field '%s'", names[k]);
    json_object_object_foreach(root, key, val)
    {
        (void)val;
        size_t k = 0;
        while (k < n && strcmp(key, names[k]) != 0)
            k++;
        if (k == n)
            return efail(FP_ERR_FORMAT, ctx, NULL, -1, "unknown field '%.40s'", key);
    }
    return FP_OK;
}

static const char *json_type_word(json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_null: return "null";
    case json_type_boolean: return "a boolean";
    case json_type_double: return "a fraction";
    case json_type_int: return "an integer";
    case json_type_object: return "an object";
    case json_type_array: return "an array";
    case json_type_string: return "a string";
    }
    return "?";
}

static fp_status get_int(json_object *root, const char *name, const char *ctx, int64_t round, int64_t *out)
{
    json_object *v = json_object_object_get(root, name);
    if (!json_object_is_type(v, json_type_int))
        return efail(FP_ERR_FORMAT, ctx, NULL, round, "field '%s' must be an integer, not %s", name,
                     json_type_word(v));
    *out = json_object_get_int64(v);
    return FP_OK;
}

static fp_status get_num(json_object *root, const char *name, const char *ctx, int64_t round, double *out)
{
    json_object *v = json_object_object_get(root, name);
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
        return efail(FP_ERR_FORMAT, ctx, NULL, round, "field '%s' must be a number, not %s", name,
                     json_type_word(v));
    *out = json_object_get_double(v);
    if (!isfinite(*out))
        return efail(FP_ERR_FORMAT, ctx, NULL, round, "field '%s' is not a finite number", name);
    return FP_OK;
}

static fp_status get_str(json_object *root, const char *name, const char *ctx, int64_t round, const char **s,
                         size_t *n)
{
    json_object *v = json_object_object_get(root, name);
    if (!json_object_is_type(v, json_type_string))
        return efail(FP_ERR_FORMAT, ctx, NULL, round, "field '%s' must be a string, not %s", name,
                     json_type_word(v));
    *s = json_object_get_string(v);
    *n = (size_t)json_object_get_string_len(v);
    return FP_OK;
}

static fp_status get_hex(json_object *root, const char *name, size_t bytes, const char *ctx, int64_t round,
                         char *out)
{
    const char *s;
    size_t n;
    unsigned char tmp[SIG_BYTES];
    fp_status st = get_str(root, name, ctx, round, &s, &n);
    if (st != FP_OK)
        return st;
    if (from_hex(s, n, tmp, bytes) != 0)
        return efail(FP_ERR_FORMAT, ctx, NULL, round, "field '%s' must be %zu lowercase hex digits", name, 2 * bytes);
    memcpy(out, s, n + 1);
    return FP_OK;
}

/* The "v" and "kind" every line starts with; kind_out gets the kind. */
static fp_status get_kind(json_object *root, const char *ctx, fp_ledger_kind *kind_out)
{
    int64_t v;
    const char *kind;
    size_t n;
    json_object *jv = NULL;
    if (!json_object_object_get_ex(root, "v", &jv))
        return efail(FP_ERR_FORMAT, ctx, NULL, -1, "missing field 'v' (not a fedprof ledger line)");
    fp_status st = get_int(root, "v", ctx, -1, &v);
    if (st != FP_OK)
        return st;
    if (v != FP_LEDGER_VERSION)
        return efail(FP_ERR_FORMAT, ctx, NULL, -1, "ledger format version %lld (this build reads %d)", (long long)v,
                     FP_LEDGER_VERSION);
    if (!json_object_object_get_ex(root, "kind", NULL))
        return efail(FP_ERR_FORMAT, ctx, NULL, -1, "missing field 'kind'");
    if ((st = get_str(root, "kind", ctx, -1, &kind, &n)) != FP_OK)
        return st;
    if (strcmp(kind, "client") == 0)
        *kind_out = FP_LEDGER_KIND_CLIENT;
    else if (strcmp(kind, "federation") == 0)
        *kind_out = FP_LEDGER_KIND_FEDERATION;
    else
        return efail(FP_ERR_FORMAT, ctx, NULL, -1, "kind '%.40s' is neither 'client' nor 'federation'", kind);
    return FP_OK;
}

static const char *const client_fields[] = {
    "v",     "kind",   "client", "seq",        "round",     "model_version", "unit",  "q",
    "sigma", "clip",   "steps",  "delta",      "conversion", "orders",       "eps_round", "eps",
    "order", "budget", "time",   "prev",       "pubkey",    "sig",
};
#define N_CLIENT_FIELDS (sizeof client_fields / sizeof client_fields[0])

/* Fields of a client entry (root already known to be of kind "client"). */
static fp_status entry_from_json(json_object *root, const char *ctx, fp_ledger_entry_t *e)
{
    fp_status st;
    const char *s;
    size_t n;
    memset(e, 0, sizeof *e);
    e->spend.round = -1;
    if ((st = check_members(root, client_fields, N_CLIENT_FIELDS, ctx)) != FP_OK)
        return st;
    /* The round first, so every later message can name it. */
    int64_t r = -1;
    if ((st = get_int(root, "round", ctx, -1, &e->spend.round)) != FP_OK)
        return st;
    if (e->spend.round < 0 || e->spend.round > FP_LEDGER_MAX_INT)
        return efail(FP_ERR_FORMAT, ctx, NULL, -1, "field 'round' is not in [0, %lld]", FP_LEDGER_MAX_INT);
    r = e->spend.round;
    if ((st = get_str(root, "client", ctx, r, &s, &n)) != FP_OK)
        return st;
    if (!valid_client_id(s, n))
        return efail(FP_ERR_FORMAT, ctx, NULL, r, "field 'client' must be 1 to %u printable ASCII characters "
                     "without '\"' or '\\'", FP_LEDGER_MAX_CLIENT_ID);
    memcpy(e->client, s, n + 1);
    if ((st = get_int(root, "seq", ctx, r, &e->seq)) != FP_OK)
        return st;
    if (e->seq < 1 || e->seq > FP_LEDGER_MAX_INT)
        return efail(FP_ERR_FORMAT, ctx, NULL, r, "field 'seq' is not a positive integer");
    if ((st = get_int(root, "model_version", ctx, r, &e->spend.model_version)) != FP_OK)
        return st;
    if ((st = get_str(root, "unit", ctx, r, &s, &n)) != FP_OK)
        return st;
    if (fp_ledger_unit_parse(s, &e->spend.unit) != FP_OK)
        return efail(FP_ERR_FORMAT, ctx, NULL, r, "field 'unit' is '%.40s', neither 'record' nor 'client'", s);
    if ((st = get_num(root, "q", ctx, r, &e->spend.q)) != FP_OK ||
        (st = get_num(root, "sigma", ctx, r, &e->spend.sigma)) != FP_OK ||
        (st = get_num(root, "clip", ctx, r, &e->spend.clip)) != FP_OK ||
        (st = get_int(root, "steps", ctx, r, &e->spend.steps)) != FP_OK ||
        (st = get_num(root, "delta", ctx, r, &e->spend.delta)) != FP_OK)
        return st;
    if ((st = get_str(root, "conversion", ctx, r, &s, &n)) != FP_OK)
        return st;
    if (fp_dp_conversion_parse(s, &e->spend.conversion) != FP_OK)
        return efail(FP_ERR_FORMAT, ctx, NULL, r, "field 'conversion' is '%.40s', neither 'improved' nor 'classic'",
                     s);
    if ((st = check_spend(&e->spend, FP_ERR_FORMAT, ctx, NULL)) != FP_OK)
        return st;
    json_object *orders = json_object_object_get(root, "orders");
    if (!json_object_is_type(orders, json_type_array))
        return efail(FP_ERR_FORMAT, ctx, NULL, r, "field 'orders' must be an array, not %s", json_type_word(orders));
    size_t no = json_object_array_length(orders);
    if (no == 0 || no > FP_LEDGER_MAX_ORDERS)
        return efail(FP_ERR_FORMAT, ctx, NULL, r, "field 'orders' holds %zu orders (1 to %u allowed)", no,
                     FP_LEDGER_MAX_ORDERS);
    if (!(e->orders = malloc(no * sizeof *e->orders)))
        return FP_FAIL(FP_ERR_NOMEM, "%s: %zu orders", ctx, no);
    e->n_orders = no;
    for (size_t k = 0; k < no; k++) {
        json_object *o = json_object_array_get_idx(orders, k);
        if (!json_object_is_type(o, json_type_int) && !json_object_is_type(o, json_type_double))
            return efail(FP_ERR_FORMAT, ctx, NULL, r, "field 'orders' holds %s", json_type_word(o));
        e->orders[k] = json_object_get_double(o);
    }
    if ((st = check_orders(e->orders, no, FP_ERR_FORMAT, ctx, NULL, r)) != FP_OK)
        return st;
    if ((st = get_num(root, "eps_round", ctx, r, &e->eps_round)) != FP_OK ||
        (st = get_num(root, "eps", ctx, r, &e->eps)) != FP_OK ||
        (st = get_num(root, "order", ctx, r, &e->order)) != FP_OK ||
        (st = get_num(root, "budget", ctx, r, &e->budget)) != FP_OK)
        return st;
    if (e->eps_round < 0 || e->eps < 0)
        return efail(FP_ERR_FORMAT, ctx, NULL, r, "a negative epsilon");
    if (!(e->budget > 0))
        return efail(FP_ERR_FORMAT, ctx, NULL, r, "field 'budget' must be > 0");
    if ((st = get_str(root, "time", ctx, r, &s, &n)) != FP_OK)
        return st;
    if (!valid_time(s, n))
        return efail(FP_ERR_FORMAT, ctx, NULL, r, "field 'time' is not a UTC time YYYY-MM-DDThh:mm:ssZ");
    memcpy(e->time, s, n + 1);
    if ((st = get_hex(root, "prev", HASH_BYTES, ctx, r, e->prev)) != FP_OK ||
        (st = get_hex(root, "pubkey", KEY_BYTES, ctx, r, e->pubkey)) != FP_OK ||
        (st = get_hex(root, "sig", SIG_BYTES, ctx, r, e->sig)) != FP_OK)
        return st;
    return FP_OK;
}

/* Parse a client line: JSON, kind, fields, canonical form. The signature is checked by the caller
 * (it needs the key the context trusts). */
static fp_status parse_entry_line(const char *line, size_t len, const char *ctx, fp_ledger_entry_t *e)
{
    memset(e, 0, sizeof *e);
    e->spend.round = -1;
    if (len > FP_LEDGER_MAX_LINE)
        return efail(FP_ERR_FORMAT, ctx, NULL, -1, "entry longer than %u bytes", FP_LEDGER_MAX_LINE);
    json_object *root;
    fp_status st = parse_json(line, len, ctx, &root);
    if (st != FP_OK)
        return st;
    fp_ledger_kind kind;
    if ((st = get_kind(root, ctx, &kind)) == FP_OK && kind != FP_LEDGER_KIND_CLIENT)
        st = efail(FP_ERR_FORMAT, ctx, NULL, -1, "a federation line where a client entry was expected");
    if (st == FP_OK)
        st = entry_from_json(root, ctx, e);
    json_object_put(root);
    if (st == FP_OK) {
        fp_ledger_buf_t b;
        fp_ledger_buf_init(&b, FP_LEDGER_MAX_LINE);
        put_entry(&b, e, 0);
        fp_ledger_buf_printf(&b, ",\"sig\":\"%s\"}", e->sig);
        if ((st = fp_ledger_buf_status(&b, ctx)) == FP_OK && (b.n != len || memcmp(b.p, line, len) != 0))
            st = efail(FP_ERR_FORMAT, ctx, NULL, e->spend.round,
                       "not in canonical form (field order, spacing, escapes or number spelling differ from what "
                       "fedprof writes; duplicate fields?)");
        fp_ledger_buf_free(&b);
    }
    if (st != FP_OK) { /* keep the round, if it was read, for the caller's report */
        int64_t round = e->spend.round;
        fp_ledger_entry_clear(e);
        e->spend.round = round;
    }
    return st;
}

/* The signed bytes of a canonical client line: the line without its last member, closed. */
static fp_status entry_signed_ok(EVP_PKEY *pub, const char *line, size_t len, const char *sig_hex, int *ok)
{
    size_t body = len - SIG_SUFFIX_LEN;
    char *msg = malloc(body + 1);
    if (!msg)
        return FP_FAIL(FP_ERR_NOMEM, "signed bytes");
    memcpy(msg, line, body);
    msg[body] = '}';
    fp_status st = verify_bytes(pub, msg, body + 1, sig_hex, ok);
    free(msg);
    return st;
}

static fp_status pkey_from_hex(const char *hex, EVP_PKEY **out)
{
    unsigned char raw[KEY_BYTES];
    *out = NULL;
    if (from_hex(hex, strlen(hex), raw, KEY_BYTES) != 0)
        return FP_FAIL(FP_ERR_FORMAT, "public key is not 64 lowercase hex digits");
    *out = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, KEY_BYTES);
    return *out ? FP_OK : ossl_fail(FP_ERR_FORMAT, "Ed25519 public key");
}

fp_status fp_ledger_entry_parse(const char *line, size_t len, fp_ledger_entry_t *e)
{
    if (!line || !e)
        return FP_FAIL(FP_ERR_INVALID, "entry_parse: NULL argument");
    fp_status st = parse_entry_line(line, len, "ledger entry", e);
    if (st != FP_OK)
        return st;
    EVP_PKEY *pub;
    int ok = 0;
    if ((st = pkey_from_hex(e->pubkey, &pub)) == FP_OK) {
        st = entry_signed_ok(pub, line, len, e->sig, &ok);
        EVP_PKEY_free(pub);
    }
    if (st == FP_OK && !ok)
        st = efail(FP_ERR_FORMAT, "ledger entry", e->client, e->spend.round,
                   "signature does not verify with the entry's own key");
    if (st != FP_OK)
        fp_ledger_entry_clear(e);
    return st;
}

/* ================================================================================================
 * A client's chain: the state that each of its entries must continue. */

typedef struct {
    char id[FP_LEDGER_MAX_CLIENT_ID + 1]; /* "" until the first entry (verification) */
    char pubkey[65];                      /* "" until trusted */
    EVP_PKEY *pub;
    int pinned;
    int64_t n;          /* entries accepted */
    int64_t first_line; /* file line of its first entry */
    int64_t last_line;
    unsigned char last_hash[HASH_BYTES];
    int64_t last_round;
    fp_ledger_unit unit;
    double *orders; /* NULL until fixed */
    size_t n_orders;
    double *rdp; /* composed RDP per order */
    double eps, budget, delta;
    size_t signer; /* index into a report's clients */
} chain_t;

/* What accepting an entry would change; committed only once the entry is safely recorded. */
typedef struct {
    unsigned char hash[HASH_BYTES];
    double eps_round, eps;
    double *sum;      /* the composed RDP after the entry (owned until committed) */
    EVP_PKEY *pub;    /* a key trusted with this entry (owned until committed) */
    double *orders;   /* orders fixed by this entry (owned until committed) */
} accept_t;

static void accept_free(accept_t *a)
{
    free(a->sum);
    EVP_PKEY_free(a->pub);
    free(a->orders);
    memset(a, 0, sizeof *a);
}

static void chain_free(chain_t *c)
{
    if (!c)
        return;
    EVP_PKEY_free(c->pub);
    free(c->orders);
    free(c->rdp);
    free(c);
}

static chain_t *chain_new(void)
{
    chain_t *c = calloc(1, sizeof *c);
    if (c) {
        c->last_round = -1;
        c->signer = (size_t)-1;
    }
    return c;
}

/* RDP of one spend at the chain's orders composed onto rdp (NULL: nothing yet): ε of the round,
 * ε after it, the best order, and the composed RDP in sum (n values, caller's buffer). */
static fp_status compose(const double *orders, size_t n, const double *rdp, const fp_ledger_spend_t *s,
                         double *sum, double *eps_round, double *eps, double *best)
{
    fp_status st = fp_dp_rdp(s->q, s->sigma, s->steps, orders, n, sum);
    if (st != FP_OK)
        return st;
    if ((st = fp_dp_eps_from_rdp(orders, sum, n, s->delta, s->conversion, eps_round, NULL)) != FP_OK)
        return st;
    if (rdp)
        for (size_t k = 0; k < n; k++)
            sum[k] += rdp[k];
    return fp_dp_eps_from_rdp(orders, sum, n, s->delta, s->conversion, eps, best);
}

/* Check entry e (parsed from line[0..len)) against chain c, as line `lineno` of its file (ctx
 * names it); client: name the client in messages. Nothing in c changes; *a gets what would. */
static fp_status chain_check(const chain_t *c, const fp_ledger_entry_t *e, const char *line, size_t len,
                             const char *ctx, const char *client, accept_t *a)
{
    fp_status st;
    int64_t r = e->spend.round;
    memset(a, 0, sizeof *a);
    /* Identity: the client id and its key. */
    if (c->id[0] && strcmp(c->id, e->client) != 0)
        return efail(FP_ERR_FORMAT, ctx, client, r, "entry of client '%.40s' in the ledger of client '%.40s'",
                     e->client, c->id);
    EVP_PKEY *pub = c->pub;
    if (c->pubkey[0] && strcmp(c->pubkey, e->pubkey) != 0) {
        if (c->pinned)
            return efail(FP_ERR_FORMAT, ctx, client, r,
                         "signed by key %.16s..., not the expected key %.16s... (forged or re-keyed entry)", e->pubkey,
                         c->pubkey);
        return efail(FP_ERR_FORMAT, ctx, client, r,
                     "signed by key %.16s..., but the client's earlier entries by %.16s... (forged or re-keyed "
                     "entry)", e->pubkey, c->pubkey);
    }
    if (!pub) {
        if ((st = pkey_from_hex(e->pubkey, &a->pub)) != FP_OK)
            return efail(st, ctx, client, r, "%s", fp_error_message());
        pub = a->pub;
    }
    int ok = 0;
    if ((st = entry_signed_ok(pub, line, len, e->sig, &ok)) != FP_OK)
        goto fail;
    if (!ok) {
        st = efail(FP_ERR_FORMAT, ctx, client, r,
                   "signature does not verify: the entry was modified after signing, or signed by another key");
        goto fail;
    }
    /* Chain. */
    if (e->seq != c->n + 1) {
        st = efail(FP_ERR_FORMAT, ctx, client, r,
                   "seq %lld where %lld was expected: an entry was deleted, inserted or reordered before this one",
                   (long long)e->seq, (long long)(c->n + 1));
        goto fail;
    }
    char prev[65];
    if (c->n == 0)
        memcpy(prev, ZERO_HASH_HEX, sizeof prev);
    else
        to_hex(c->last_hash, HASH_BYTES, prev);
    if (strcmp(prev, e->prev) != 0) {
        if (c->n == 0)
            st = efail(FP_ERR_FORMAT, ctx, client, r, "first entry whose prev is not the genesis hash (64 zeros): "
                       "earlier entries were deleted");
        else
            st = efail(FP_ERR_FORMAT, ctx, client, r,
                       "prev does not match the SHA-256 of the previous entry (line %lld): it was modified, or "
                       "entries were deleted or reordered", (long long)c->last_line);
        goto fail;
    }
    if (c->n > 0 && r <= c->last_round) {
        st = efail(FP_ERR_FORMAT, ctx, client, r, "round %lld does not come after round %lld (line %lld): a "
                   "round spent twice, or entries reordered", (long long)r, (long long)c->last_round,
                   (long long)c->last_line);
        goto fail;
    }
    if (c->n > 0 && e->spend.unit != c->unit) {
        st = efail(FP_ERR_FORMAT, ctx, client, r, "privacy unit '%s' after '%s': ε of different units does not "
                   "compose", fp_ledger_unit_name(e->spend.unit), fp_ledger_unit_name(c->unit));
        goto fail;
    }
    const double *orders = c->orders;
    size_t n = c->n_orders;
    if (orders) {
        if (e->n_orders != n || memcmp(e->orders, orders, n * sizeof *orders) != 0) {
            st = efail(FP_ERR_FORMAT, ctx, client, r, "RDP orders differ from the ledger's (%zu orders): RDP at "
                       "different orders does not compose", n);
            goto fail;
        }
    } else {
        n = e->n_orders;
        if (!(a->orders = malloc(n * sizeof *a->orders))) {
            st = FP_FAIL(FP_ERR_NOMEM, "%s: orders", ctx);
            goto fail;
        }
        memcpy(a->orders, e->orders, n * sizeof *a->orders);
        orders = a->orders;
    }
    /* ε, recomputed. */
    if (!(a->sum = malloc(n * sizeof *a->sum))) {
        st = FP_FAIL(FP_ERR_NOMEM, "%s: RDP", ctx);
        goto fail;
    }
    double best = 0;
    if ((st = compose(orders, n, c->n ? c->rdp : NULL, &e->spend, a->sum, &a->eps_round, &a->eps, &best)) != FP_OK) {
        st = efail(st, ctx, client, r, "recomputing ε: %s", fp_error_message());
        goto fail;
    }
    if (!eps_close(e->eps_round, a->eps_round)) {
        st = efail(FP_ERR_NUMERIC, ctx, client, r, "ε of the round recorded as %.17g, recomputed %.17g", e->eps_round,
                   a->eps_round);
        goto fail;
    }
    if (!eps_close(e->eps, a->eps)) {
        st = efail(FP_ERR_NUMERIC, ctx, client, r,
                   "cumulative ε recorded as %.17g, recomputed %.17g from the recorded parameters (tolerance %g "
                   "relative)", e->eps, a->eps, FP_LEDGER_EPS_RTOL);
        goto fail;
    }
    size_t k = 0;
    while (k < n && orders[k] != e->order)
        k++;
    double at = INFINITY;
    if (k < n && (st = fp_dp_eps_from_rdp(&orders[k], &a->sum[k], 1, e->spend.delta, e->spend.conversion, &at,
                                          NULL)) != FP_OK)
        goto fail;
    if (k == n || !eps_close(at, a->eps)) {
        st = efail(FP_ERR_NUMERIC, ctx, client, r, "recorded order %g is not an order giving ε (recomputed best "
                   "order %g)", e->order, best);
        goto fail;
    }
    if (!(e->eps <= e->budget)) {
        st = efail(FP_ERR_RANGE, ctx, client, r, "cumulative ε %.17g exceeds the recorded budget %.17g", e->eps,
                   e->budget);
        goto fail;
    }
    if ((st = sha256(line, len, a->hash)) != FP_OK)
        goto fail;
    return FP_OK;
fail:
    accept_free(a);
    return st;
}

static void chain_commit(chain_t *c, const fp_ledger_entry_t *e, accept_t *a, int64_t lineno)
{
    if (!c->id[0])
        memcpy(c->id, e->client, sizeof c->id);
    if (!c->pubkey[0])
        memcpy(c->pubkey, e->pubkey, sizeof c->pubkey);
    if (a->pub) {
        c->pub = a->pub;
        a->pub = NULL;
    }
    if (a->orders) {
        c->orders = a->orders;
        c->n_orders = e->n_orders;
        a->orders = NULL;
    }
    free(c->rdp);
    c->rdp = a->sum;
    a->sum = NULL;
    if (c->n == 0)
        c->first_line = lineno;
    c->n++;
    c->last_line = lineno;
    memcpy(c->last_hash, a->hash, HASH_BYTES);
    c->last_round = e->spend.round;
    c->unit = e->spend.unit;
    c->eps = a->eps;
    c->budget = e->budget;
    c->delta = e->spend.delta;
    accept_free(a);
}

/* ================================================================================================
 * Federation lines */

static const char *const fed_fields[] = {"v", "kind", "seq", "prev", "coordinator", "entry", "cosig"};
#define N_FED_FIELDS (sizeof fed_fields / sizeof fed_fields[0])

typedef struct {
    int64_t seq;
    char prev[65], coordinator[65], cosig[129];
    char *entry; /* the client line (malloc'd) */
    size_t entry_len;
} fed_line_t;

static void put_fed(fp_ledger_buf_t *b, int64_t seq, const char *prev, const char *coordinator, const char *entry,
                    size_t entry_len)
{
    fp_ledger_buf_printf(b, "{\"v\":%d,\"kind\":\"federation\",\"seq\":%lld,\"prev\":\"%s\",\"coordinator\":\"%s\","
                            "\"entry\":", FP_LEDGER_VERSION, (long long)seq, prev, coordinator);
    fp_ledger_buf_json_str(b, entry, entry_len);
}

static fp_status parse_fed_line(const char *line, size_t len, const char *ctx, fed_line_t *f)
{
    memset(f, 0, sizeof *f);
    json_object *root;
    fp_status st = parse_json(line, len, ctx, &root);
    if (st != FP_OK)
        return st;
    fp_ledger_kind kind;
    const char *s;
    size_t n;
    if ((st = get_kind(root, ctx, &kind)) == FP_OK && kind != FP_LEDGER_KIND_FEDERATION)
        st = efail(FP_ERR_FORMAT, ctx, NULL, -1, "a client entry where a federation line was expected");
    if (st == FP_OK)
        st = check_members(root, fed_fields, N_FED_FIELDS, ctx);
    if (st == FP_OK && (st = get_int(root, "seq", ctx, -1, &f->seq)) == FP_OK &&
        (f->seq < 1 || f->seq > FP_LEDGER_MAX_INT))
        st = efail(FP_ERR_FORMAT, ctx, NULL, -1, "field 'seq' is not a positive integer");
    if (st == FP_OK)
        st = get_hex(root, "prev", HASH_BYTES, ctx, -1, f->prev);
    if (st == FP_OK)
        st = get_hex(root, "coordinator", KEY_BYTES, ctx, -1, f->coordinator);
    if (st == FP_OK)
        st = get_hex(root, "cosig", SIG_BYTES, ctx, -1, f->cosig);
    if (st == FP_OK && (st = get_str(root, "entry", ctx, -1, &s, &n)) == FP_OK) {
        if (n > FP_LEDGER_MAX_LINE)
            st = efail(FP_ERR_FORMAT, ctx, NULL, -1, "field 'entry' longer than %u bytes", FP_LEDGER_MAX_LINE);
        else if (!(f->entry = malloc(n + 1)))
            st = FP_FAIL(FP_ERR_NOMEM, "%s: entry", ctx);
        else {
            memcpy(f->entry, s, n + 1);
            f->entry_len = n;
        }
    }
    json_object_put(root);
    if (st == FP_OK) {
        fp_ledger_buf_t b;
        fp_ledger_buf_init(&b, FP_LEDGER_MAX_FED_LINE);
        put_fed(&b, f->seq, f->prev, f->coordinator, f->entry, f->entry_len);
        fp_ledger_buf_printf(&b, ",\"cosig\":\"%s\"}", f->cosig);
        if ((st = fp_ledger_buf_status(&b, ctx)) == FP_OK && (b.n != len || memcmp(b.p, line, len) != 0))
            st = efail(FP_ERR_FORMAT, ctx, NULL, -1,
                       "not in canonical form (field order, spacing, escapes or number spelling differ from what "
                       "fedprof writes; duplicate fields?)");
        fp_ledger_buf_free(&b);
    }
    if (st != FP_OK) {
        free(f->entry);
        memset(f, 0, sizeof *f);
    }
    return st;
}

static fp_status fed_signed_ok(EVP_PKEY *pub, const char *line, size_t len, const char *cosig, int *ok)
{
    size_t body = len - COSIG_SUFFIX_LEN;
    char *msg = malloc(body + 1);
    if (!msg)
        return FP_FAIL(FP_ERR_NOMEM, "countersigned bytes");
    memcpy(msg, line, body);
    msg[body] = '}';
    fp_status st = verify_bytes(pub, msg, body + 1, cosig, ok);
    free(msg);
    return st;
}

/* ================================================================================================
 * Scanning a ledger file: the state shared by verification and the two handles. */

typedef struct {
    const char *path;
    int kind_known;
    fp_ledger_kind kind;
    chain_t **chains;
    size_t n_chains, cap_chains;
    /* Federation chain. */
    int64_t fed_n;
    unsigned char fed_hash[HASH_BYTES];
    char coord_hex[65];
    EVP_PKEY *coord_pub;
    int coord_pinned;
    int coord_required; /* the pin must be the coordinator's key (fed handle) */
    const fp_ledger_key_t *pin;
    int pin_used;
    /* Client ledger handle: each entry's round, offset and length, for has_round and read_line. */
    int index;
    int64_t *rounds;
    off_t *offs;
    size_t *lens;
    size_t n_idx, cap_idx;
    fp_ledger_report_t *report; /* when verifying */
    size_t row_cap, client_cap;
    int64_t cur_line, cur_round; /* the line being checked and its round (-1: unknown) */
} scan_t;

static void scan_free(scan_t *s)
{
    for (size_t k = 0; k < s->n_chains; k++)
        chain_free(s->chains[k]);
    free(s->chains);
    EVP_PKEY_free(s->coord_pub);
    free(s->rounds);
    free(s->offs);
    free(s->lens);
    memset(s, 0, sizeof *s);
}

static chain_t *scan_find(const scan_t *s, const char *id)
{
    for (size_t k = 0; k < s->n_chains; k++)
        if (strcmp(s->chains[k]->id, id) == 0)
            return s->chains[k];
    return NULL;
}

/* A new chain for a client first seen at this line (pinned when its key is the pin). */
static fp_status new_chain(const scan_t *s, const fp_ledger_entry_t *e, chain_t **out)
{
    chain_t *c = chain_new();
    if (!c)
        return FP_FAIL(FP_ERR_NOMEM, "client chain");
    if (s->pin && strcmp(s->pin->hex, e->pubkey) == 0)
        c->pinned = 1;
    *out = c;
    return FP_OK;
}

static fp_status scan_add_chain(scan_t *s, chain_t *c)
{
    if (s->n_chains == s->cap_chains) {
        if (s->n_chains >= MAX_CLIENTS)
            return FP_FAIL(FP_ERR_RANGE, "%s: more than %u clients", s->path, MAX_CLIENTS);
        size_t cap = s->cap_chains ? 2 * s->cap_chains : 8;
        chain_t **p = realloc(s->chains, cap * sizeof *p);
        if (!p)
            return FP_FAIL(FP_ERR_NOMEM, "client table");
        s->chains = p;
        s->cap_chains = cap;
    }
    s->chains[s->n_chains++] = c;
    return FP_OK;
}

static fp_status grow(void **p, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return FP_OK;
    size_t c = *cap ? 2 * *cap : 64;
    void *q = realloc(*p, c * size);
    if (!q)
        return FP_FAIL(FP_ERR_NOMEM, "ledger table of %zu entries", c);
    *p = q;
    *cap = c;
    return FP_OK;
}

/* Records an accepted entry in the report (verification) and the index (client handle). */
static fp_status scan_note(scan_t *s, chain_t *c, const fp_ledger_entry_t *e, const accept_t *a,
                           int64_t lineno, off_t off, size_t len)
{
    fp_status st;
    if (s->index) {
        size_t cap = s->cap_idx;
        if ((st = grow((void **)&s->rounds, &cap, s->n_idx, sizeof *s->rounds)) != FP_OK)
            return st;
        cap = s->cap_idx;
        if ((st = grow((void **)&s->offs, &cap, s->n_idx, sizeof *s->offs)) != FP_OK)
            return st;
        cap = s->cap_idx;
        if ((st = grow((void **)&s->lens, &cap, s->n_idx, sizeof *s->lens)) != FP_OK)
            return st;
        s->cap_idx = cap;
        s->rounds[s->n_idx] = e->spend.round;
        s->offs[s->n_idx] = off;
        s->lens[s->n_idx] = len;
        s->n_idx++;
    }
    fp_ledger_report_t *r = s->report;
    if (!r)
        return FP_OK;
    if (c->signer == (size_t)-1) { /* the client's first entry: a new signer */
        if ((st = grow((void **)&r->clients, &s->client_cap, r->n_clients, sizeof *r->clients)) != FP_OK)
            return st;
        fp_ledger_signer_t *g = &r->clients[r->n_clients];
        memset(g, 0, sizeof *g);
        memcpy(g->id, e->client, sizeof g->id);
        memcpy(g->pubkey, e->pubkey, sizeof g->pubkey);
        g->pinned = c->pinned;
        g->first_line = lineno;
        c->signer = r->n_clients++;
    }
    fp_ledger_signer_t *g = &r->clients[c->signer];
    g->entries++;
    g->last_round = e->spend.round;
    to_hex(a->hash, HASH_BYTES, g->last_hash);
    g->eps = a->eps;
    g->budget = e->budget;
    g->delta = e->spend.delta;
    g->n_orders = e->n_orders;
    if ((st = grow((void **)&r->rows, &s->row_cap, r->n_rows, sizeof *r->rows)) != FP_OK)
        return st;
    fp_ledger_row_t *w = &r->rows[r->n_rows++];
    memset(w, 0, sizeof *w);
    w->line = lineno;
    w->client = c->signer;
    w->seq = e->seq;
    w->spend = e->spend;
    w->eps_round = e->eps_round;
    w->eps = e->eps;
    w->order = e->order;
    w->budget = e->budget;
    w->eps_round_check = a->eps_round;
    w->eps_check = a->eps;
    memcpy(w->time, e->time, sizeof w->time);
    return FP_OK;
}

/* One complete line of a client ledger. */
static fp_status scan_client_line(scan_t *s, const char *line, size_t len, int64_t lineno, off_t off)
{
    char ctx[320];
    snprintf(ctx, sizeof ctx, "%s line %lld", s->path, (long long)lineno);
    fp_ledger_entry_t e;
    fp_status st = parse_entry_line(line, len, ctx, &e);
    s->cur_round = e.spend.round;
    if (st != FP_OK)
        return st;
    chain_t *c = s->chains[0];
    accept_t a;
    if ((st = chain_check(c, &e, line, len, ctx, NULL, &a)) == FP_OK) {
        if ((st = scan_note(s, c, &e, &a, lineno, off, len)) == FP_OK)
            chain_commit(c, &e, &a, lineno);
        accept_free(&a);
    }
    fp_ledger_entry_clear(&e);
    return st;
}

/* The federation part of a line: seq, prev, coordinator key and countersignature. */
static fp_status fed_check(scan_t *s, const fed_line_t *f, const char *line, size_t len, const char *ctx,
                           const char *client, int64_t round, EVP_PKEY **new_coord, unsigned char hash[HASH_BYTES])
{
    fp_status st;
    *new_coord = NULL;
    if (f->seq != s->fed_n + 1)
        return efail(FP_ERR_FORMAT, ctx, client, round,
                     "federation seq %lld where %lld was expected: a line was deleted, inserted or reordered",
                     (long long)f->seq, (long long)(s->fed_n + 1));
    char prev[65];
    if (s->fed_n == 0)
        memcpy(prev, ZERO_HASH_HEX, sizeof prev);
    else
        to_hex(s->fed_hash, HASH_BYTES, prev);
    if (strcmp(prev, f->prev) != 0)
        return efail(FP_ERR_FORMAT, ctx, client, round,
                     "prev does not match the SHA-256 of the previous federation line: it was modified, or lines "
                     "were deleted or reordered");
    EVP_PKEY *pub = s->coord_pub;
    if (s->coord_hex[0]) {
        if (strcmp(s->coord_hex, f->coordinator) != 0)
            return efail(FP_ERR_FORMAT, ctx, client, round,
                         "countersigned by key %.16s..., not the coordinator's %.16s...%s", f->coordinator,
                         s->coord_hex, s->coord_pinned ? " (the expected key)" : "");
    } else {
        if (s->coord_required && strcmp(s->pin->hex, f->coordinator) != 0)
            return efail(FP_ERR_FORMAT, ctx, client, round,
                         "countersigned by key %.16s..., not this coordinator's key %.16s...", f->coordinator,
                         s->pin->hex);
        if ((st = pkey_from_hex(f->coordinator, new_coord)) != FP_OK)
            return efail(st, ctx, client, round, "%s", fp_error_message());
        pub = *new_coord;
    }
    int ok = 0;
    if ((st = fed_signed_ok(pub, line, len, f->cosig, &ok)) == FP_OK && !ok)
        st = efail(FP_ERR_FORMAT, ctx, client, round,
                   "countersignature does not verify: the line was modified after countersigning, or "
                   "countersigned by another key");
    if (st == FP_OK)
        st = sha256(line, len, hash);
    if (st != FP_OK) {
        EVP_PKEY_free(*new_coord);
        *new_coord = NULL;
    }
    return st;
}

static void fed_commit(scan_t *s, const fed_line_t *f, EVP_PKEY **new_coord, const unsigned char hash[HASH_BYTES])
{
    if (*new_coord) {
        s->coord_pub = *new_coord;
        *new_coord = NULL;
        memcpy(s->coord_hex, f->coordinator, sizeof s->coord_hex);
        s->coord_pinned = s->pin && strcmp(s->pin->hex, f->coordinator) == 0;
        if (s->report) {
            memcpy(s->report->coordinator, f->coordinator, sizeof s->report->coordinator);
            s->report->coordinator_pinned = s->coord_pinned;
        }
    }
    s->fed_n++;
    memcpy(s->fed_hash, hash, HASH_BYTES);
}

/* One complete line of a federation ledger. */
static fp_status scan_fed_line(scan_t *s, const char *line, size_t len, int64_t lineno)
{
    char ctx[320];
    snprintf(ctx, sizeof ctx, "%s line %lld", s->path, (long long)lineno);
    fed_line_t f;
    fp_status st = parse_fed_line(line, len, ctx, &f);
    if (st != FP_OK)
        return st;
    EVP_PKEY *new_coord = NULL;
    unsigned char hash[HASH_BYTES];
    fp_ledger_entry_t e;
    memset(&e, 0, sizeof e);
    chain_t *fresh = NULL;
    accept_t a;
    memset(&a, 0, sizeof a);
    /* The embedded entry is read first only to name its client and round; the countersignature
     * is judged before the entry's own defects. */
    char ictx[360];
    snprintf(ictx, sizeof ictx, "%s line %lld, client entry", s->path, (long long)lineno);
    fp_status est = parse_entry_line(f.entry, f.entry_len, ictx, &e);
    s->cur_round = e.spend.round;
    if ((st = fed_check(s, &f, line, len, ctx, est == FP_OK ? e.client : NULL, e.spend.round, &new_coord, hash)) !=
        FP_OK)
        goto done;
    if (est != FP_OK) { /* its message is still the last error: fed_check succeeded */
        st = est;
        goto done;
    }
    snprintf(ictx, sizeof ictx, "%s line %lld", s->path, (long long)lineno);
    chain_t *c = scan_find(s, e.client);
    if (!c) {
        if ((st = new_chain(s, &e, &fresh)) != FP_OK)
            goto done;
        c = fresh;
    }
    if ((st = chain_check(c, &e, f.entry, f.entry_len, ictx, e.client, &a)) != FP_OK)
        goto done;
    if (fresh) {
        if ((st = scan_add_chain(s, fresh)) != FP_OK)
            goto done;
        fresh = NULL;
    }
    fed_commit(s, &f, &new_coord, hash);
    if ((st = scan_note(s, c, &e, &a, lineno, 0, 0)) != FP_OK)
        goto done;
    chain_commit(c, &e, &a, lineno);
done:
    accept_free(&a);
    chain_free(fresh);
    EVP_PKEY_free(new_coord);
    fp_ledger_entry_clear(&e);
    free(f.entry);
    return st;
}

/* ---- line reader: bounded lines from a file descriptor ---- */

typedef struct {
    int fd;
    char *buf;
    size_t cap, len, pos, max;
    off_t consumed; /* file offset of buf[pos] */
    int eof;
} reader_t;

static fp_status reader_init(reader_t *r, int fd, size_t max)
{
    memset(r, 0, sizeof *r);
    r->fd = fd;
    r->max = max;
    r->cap = max + 1 + READ_CHUNK;
    if (!(r->buf = malloc(r->cap)))
        return FP_FAIL(FP_ERR_NOMEM, "line buffer of %zu bytes", r->cap);
    return FP_OK;
}

/* The next line: *end = 1 at the end of the file; else line[0..*len) (not NUL-terminated, valid
 * until the next call), *nl = 0 for a final line without its newline, *off its file offset. */
static fp_status reader_next(reader_t *r, const char *path, int64_t lineno, const char **line, size_t *len,
                             int *nl, off_t *off, int *end)
{
    char eb[128];
    *end = 0;
    for (;;) {
        char *p = memchr(r->buf + r->pos, '\n', r->len - r->pos);
        if (p) {
            *line = r->buf + r->pos;
            *len = (size_t)(p - *line);
            *nl = 1;
            *off = r->consumed;
            if (*len > r->max)
                return FP_FAIL(FP_ERR_FORMAT, "%s line %lld: longer than %zu bytes", path, (long long)lineno, r->max);
            r->pos += *len + 1;
            r->consumed += (off_t)(*len + 1);
            return FP_OK;
        }
        size_t pend = r->len - r->pos;
        if (pend > r->max)
            return FP_FAIL(FP_ERR_FORMAT, "%s line %lld: longer than %zu bytes", path, (long long)lineno, r->max);
        if (r->eof) {
            if (pend == 0) {
                *end = 1;
                return FP_OK;
            }
            *line = r->buf + r->pos;
            *len = pend;
            *nl = 0;
            *off = r->consumed;
            r->pos = r->len;
            r->consumed += (off_t)pend;
            return FP_OK;
        }
        if (r->pos > 0) {
            memmove(r->buf, r->buf + r->pos, pend);
            r->len = pend;
            r->pos = 0;
        }
        ssize_t k = read(r->fd, r->buf + r->len, r->cap - r->len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return FP_FAIL(FP_ERR_IO, "read %s: %s", path, errno_text(errno, eb, sizeof eb));
        if (k == 0)
            r->eof = 1;
        r->len += (size_t)k;
    }
}

/* Read and check every line of fd. A final line without newline is left to the caller: *torn_off
 * is its offset and *torn_len its length (0 when there is none). */
static fp_status scan_file(scan_t *s, int fd, int64_t *lines, off_t *end_off, off_t *torn_off, size_t *torn_len)
{
    reader_t r;
    *lines = 0;
    *torn_len = 0;
    *torn_off = 0;
    *end_off = 0;
    fp_status st = reader_init(&r, fd, FP_LEDGER_MAX_FED_LINE);
    if (st != FP_OK)
        return st;
    for (int64_t lineno = 1;; lineno++) {
        const char *line = NULL;
        size_t len = 0;
        int nl = 0, end = 0;
        off_t off = 0;
        s->cur_line = lineno;
        s->cur_round = -1;
        if ((st = reader_next(&r, s->path, lineno, &line, &len, &nl, &off, &end)) != FP_OK || end)
            break;
        if (!nl) {
            if (s->kind_known && s->kind == FP_LEDGER_KIND_CLIENT && len > FP_LEDGER_MAX_LINE) {
                st = FP_FAIL(FP_ERR_FORMAT, "%s line %lld: an unterminated final line of %zu bytes is not a torn "
                             "entry", s->path, (long long)lineno, len);
                break;
            }
            *torn_off = off;
            *torn_len = len;
            break;
        }
        *lines = lineno;
        if (lineno > (int64_t)FP_LEDGER_MAX_ENTRIES) {
            st = FP_FAIL(FP_ERR_RANGE, "%s: more than %u lines", s->path, FP_LEDGER_MAX_ENTRIES);
            break;
        }
        if (len == 0) {
            st = FP_FAIL(FP_ERR_FORMAT, "%s line %lld: empty line", s->path, (long long)lineno);
            break;
        }
        if (!s->kind_known) {
            char ctx[320];
            snprintf(ctx, sizeof ctx, "%s line %lld", s->path, (long long)lineno);
            json_object *root;
            if ((st = parse_json(line, len, ctx, &root)) != FP_OK)
                break;
            st = get_kind(root, ctx, &s->kind);
            json_object_put(root);
            if (st != FP_OK)
                break;
            s->kind_known = 1;
            if (s->report)
                s->report->kind = s->kind;
            if (s->kind == FP_LEDGER_KIND_CLIENT && s->n_chains == 0) {
                chain_t *c = chain_new();
                if (!c || (st = scan_add_chain(s, c)) != FP_OK) {
                    chain_free(c);
                    st = c ? st : FP_FAIL(FP_ERR_NOMEM, "client chain");
                    break;
                }
                if (s->pin) {
                    memcpy(c->pubkey, s->pin->hex, sizeof c->pubkey);
                    if ((st = pkey_from_hex(c->pubkey, &c->pub)) != FP_OK)
                        break;
                    c->pinned = 1;
                }
            }
        }
        if (s->kind == FP_LEDGER_KIND_CLIENT) {
            if (len > FP_LEDGER_MAX_LINE) {
                st = FP_FAIL(FP_ERR_FORMAT, "%s line %lld: longer than %u bytes", s->path, (long long)lineno,
                             FP_LEDGER_MAX_LINE);
                break;
            }
            st = scan_client_line(s, line, len, lineno, off);
        } else {
            st = scan_fed_line(s, line, len, lineno);
        }
        if (st != FP_OK)
            break;
        *end_off = off + (off_t)len + 1;
    }
    free(r.buf);
    return st;
}

/* Open path, lock it, and scan it; the handles' common start. */
static fp_status open_locked(const char *path, int *fd_out, int *created)
{
    char eb[128];
    *created = 0;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
        *created = 1;
    } else if (errno == EEXIST) {
        fd = open(path, O_RDWR | O_CLOEXEC);
    }
    if (fd < 0)
        return FP_FAIL(errno == ENOENT ? FP_ERR_NOT_FOUND : FP_ERR_IO, "open %s: %s", path,
                       errno_text(errno, eb, sizeof eb));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return FP_FAIL(FP_ERR_IO, "%s is not a regular file", path);
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            return FP_FAIL(FP_ERR_INVALID, "%s is open in another handle or process (one writer per ledger)", path);
        return FP_FAIL(FP_ERR_IO, "lock %s: %s", path, errno_text(e, eb, sizeof eb));
    }
    fp_status st = *created ? fsync_parent(path) : FP_OK;
    if (st != FP_OK) {
        close(fd);
        return st;
    }
    *fd_out = fd;
    return FP_OK;
}

/* Cut an unacknowledged final line (a crash while appending) off the file. */
static fp_status truncate_torn(int fd, const char *path, off_t off, size_t len, int64_t lineno)
{
    char eb[128];
    if (ftruncate(fd, off) != 0 || fsync(fd) != 0)
        return FP_FAIL(FP_ERR_IO, "truncate %s: %s", path, errno_text(errno, eb, sizeof eb));
    fp_log_warn("ledger %s: removed an incomplete final line %lld (%zu bytes) left by a crash while appending; "
                "it was never acknowledged, so nothing was spent by it", path, (long long)lineno, len);
    return FP_OK;
}

/* Write line + '\n' at off and fsync; on failure cut the file back to off (*broken when even
 * that fails). */
static fp_status append_line(int fd, const char *path, off_t off, const char *line, size_t len, int *broken)
{
    char eb[128];
    fp_status st = FP_OK;
    size_t total = len + 1, done = 0;
    while (done < total) {
        const char *p = done < len ? line + done : "\n";
        size_t n = done < len ? len - done : 1;
        ssize_t k = pwrite(fd, p, n, off + (off_t)done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            st = FP_FAIL(FP_ERR_IO, "write %s: %s", path, k < 0 ? errno_text(errno, eb, sizeof eb) : "no progress");
            break;
        }
        done += (size_t)k;
    }
    if (st == FP_OK && fsync(fd) != 0)
        st = FP_FAIL(FP_ERR_IO, "fsync %s: %s", path, errno_text(errno, eb, sizeof eb));
    if (st != FP_OK && (ftruncate(fd, off) != 0 || fsync(fd) != 0))
        *broken = 1;
    return st;
}

/* ================================================================================================
 * The client ledger handle */

struct fp_ledger {
    char *path;
    int fd;
    fp_ledger_key_t *key;
    double budget;
    scan_t s;
    off_t size;
    size_t recovered;
    int broken;
};

void fp_ledger_close(fp_ledger_t *l)
{
    if (!l)
        return;
    if (l->fd >= 0)
        close(l->fd); /* releases the lock */
    fp_ledger_key_free(l->key);
    scan_free(&l->s);
    free(l->path);
    free(l);
}

fp_status fp_ledger_open(const char *path, const fp_ledger_key_t *key, const fp_ledger_options_t *opt,
                         fp_ledger_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "ledger_open: NULL output");
    *out = NULL;
    if (!path || !key || !opt || !opt->client_id)
        return FP_FAIL(FP_ERR_INVALID, "ledger_open: NULL argument");
    if (!key->priv)
        return FP_FAIL(FP_ERR_INVALID, "ledger_open: %s: the key has no private part to sign with", path);
    if (!valid_client_id(opt->client_id, strlen(opt->client_id)))
        return FP_FAIL(FP_ERR_INVALID, "ledger_open: client id '%.40s' must be 1 to %u printable ASCII characters "
                       "without '\"' or '\\'", opt->client_id, FP_LEDGER_MAX_CLIENT_ID);
    if (!(opt->budget_epsilon > 0 && isfinite(opt->budget_epsilon)))
        return FP_FAIL(FP_ERR_INVALID, "ledger_open: budget_epsilon %g is not a finite number > 0",
                       opt->budget_epsilon);
    if ((opt->orders == NULL) != (opt->n_orders == 0))
        return FP_FAIL(FP_ERR_INVALID, "ledger_open: orders and n_orders disagree");
    fp_status st;
    if (opt->orders &&
        (st = check_orders(opt->orders, opt->n_orders, FP_ERR_INVALID, "ledger_open", NULL, -1)) != FP_OK)
        return st;
    int created;
    int64_t lines;
    off_t torn_off;
    size_t torn_len;
    fp_ledger_t *l = calloc(1, sizeof *l);
    if (!l)
        return FP_FAIL(FP_ERR_NOMEM, "ledger handle");
    l->fd = -1;
    l->budget = opt->budget_epsilon;
    chain_t *c = NULL;
    if (!(l->path = strdup(path))) {
        st = FP_FAIL(FP_ERR_NOMEM, "ledger path");
        goto fail;
    }
    if ((st = key_ref(key, &l->key)) != FP_OK)
        goto fail;
    l->s.path = l->path;
    l->s.index = 1;
    l->s.pin = l->key;
    l->s.kind_known = 1;
    l->s.kind = FP_LEDGER_KIND_CLIENT;
    if (!(c = chain_new())) {
        st = FP_FAIL(FP_ERR_NOMEM, "client chain");
        goto fail;
    }
    if ((st = scan_add_chain(&l->s, c)) != FP_OK) {
        chain_free(c);
        goto fail;
    }
    memcpy(c->id, opt->client_id, strlen(opt->client_id) + 1);
    memcpy(c->pubkey, l->key->hex, sizeof c->pubkey);
    if (EVP_PKEY_up_ref(l->key->pkey) != 1) {
        st = ossl_fail(FP_ERR_INTERNAL, "key reference");
        goto fail;
    }
    c->pub = l->key->pkey;
    c->pinned = 1;
    if (opt->orders) {
        if (!(c->orders = malloc(opt->n_orders * sizeof *c->orders))) {
            st = FP_FAIL(FP_ERR_NOMEM, "orders");
            goto fail;
        }
        memcpy(c->orders, opt->orders, opt->n_orders * sizeof *c->orders);
        c->n_orders = opt->n_orders;
    }
    if ((st = open_locked(path, &l->fd, &created)) != FP_OK)
        goto fail;
    if ((st = scan_file(&l->s, l->fd, &lines, &l->size, &torn_off, &torn_len)) != FP_OK)
        goto fail;
    if (torn_len) {
        if ((st = truncate_torn(l->fd, path, torn_off, torn_len, lines + 1)) != FP_OK)
            goto fail;
        l->recovered = torn_len;
        l->size = torn_off;
    }
    if (!c->orders) { /* an empty ledger without given orders: the defaults */
        const double *d;
        size_t n = fp_dp_default_orders(&d);
        if (!(c->orders = malloc(n * sizeof *c->orders))) {
            st = FP_FAIL(FP_ERR_NOMEM, "orders");
            goto fail;
        }
        memcpy(c->orders, d, n * sizeof *c->orders);
        c->n_orders = n;
    }
    *out = l;
    return FP_OK;
fail:
    fp_ledger_close(l);
    return st;
}

static chain_t *ledger_chain(const fp_ledger_t *l)
{
    return l->s.chains[0];
}

int fp_ledger_has_round(const fp_ledger_t *l, int64_t round)
{
    if (!l)
        return 0;
    size_t lo = 0, hi = l->s.n_idx; /* rounds strictly increase: binary search */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->s.rounds[mid] == round)
            return 1;
        if (l->s.rounds[mid] < round)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

fp_status fp_ledger_project(const fp_ledger_t *l, const fp_ledger_spend_t *spend, double *eps_after,
                            double *eps_round)
{
    if (!l || !spend || !eps_after)
        return FP_FAIL(FP_ERR_INVALID, "ledger_project: NULL argument");
    const chain_t *c = ledger_chain(l);
    fp_status st = check_spend(spend, FP_ERR_INVALID, l->path, c->id);
    if (st != FP_OK)
        return st;
    double *sum = malloc(c->n_orders * sizeof *sum), er, best;
    if (!sum)
        return FP_FAIL(FP_ERR_NOMEM, "projection");
    st = compose(c->orders, c->n_orders, c->n ? c->rdp : NULL, spend, sum, &er, eps_after, &best);
    free(sum);
    if (st == FP_OK && eps_round)
        *eps_round = er;
    return st;
}

fp_status fp_ledger_admit(const fp_ledger_t *l, const fp_ledger_spend_t *spend, double *eps_after)
{
    if (!l || !spend)
        return FP_FAIL(FP_ERR_INVALID, "ledger_admit: NULL argument");
    const chain_t *c = ledger_chain(l);
    double eps = NAN;
    fp_status st = fp_ledger_project(l, spend, &eps, NULL);
    if (eps_after)
        *eps_after = eps;
    if (st != FP_OK)
        return st;
    if (fp_ledger_has_round(l, spend->round))
        return FP_FAIL(FP_ERR_INVALID, "%s: round %lld is already in the ledger: it was spent, never train it again",
                       l->path, (long long)spend->round);
    if (c->n > 0 && spend->round <= c->last_round)
        return FP_FAIL(FP_ERR_INVALID, "%s: round %lld is older than the last recorded round %lld", l->path,
                       (long long)spend->round, (long long)c->last_round);
    if (c->n > 0 && spend->unit != c->unit)
        return FP_FAIL(FP_ERR_INVALID, "%s: privacy unit '%s' but the ledger accounts for '%s'", l->path,
                       fp_ledger_unit_name(spend->unit), fp_ledger_unit_name(c->unit));
    if (!(eps <= l->budget))
        return FP_FAIL(FP_ERR_RANGE, "%s: round %lld would bring ε to %.6g, past the budget %.6g (now %.6g): "
                       "refused, nothing written", l->path, (long long)spend->round, eps, l->budget, c->eps);
    return FP_OK;
}

fp_status fp_ledger_append(fp_ledger_t *l, const fp_ledger_spend_t *spend, double *eps_after, char **line_out)
{
    if (line_out)
        *line_out = NULL;
    if (!l || !spend)
        return FP_FAIL(FP_ERR_INVALID, "ledger_append: NULL argument");
    if (l->broken)
        return FP_FAIL(FP_ERR_IO, "%s: an earlier write failed and could not be undone; reopen the ledger", l->path);
    fp_status st = fp_ledger_admit(l, spend, eps_after);
    if (st != FP_OK)
        return st;
    chain_t *c = ledger_chain(l);
    fp_ledger_entry_t e, back;
    memset(&e, 0, sizeof e);
    memset(&back, 0, sizeof back);
    memcpy(e.client, c->id, sizeof e.client);
    e.seq = c->n + 1;
    e.spend = *spend;
    e.orders = c->orders; /* borrowed; not freed through e */
    e.n_orders = c->n_orders;
    e.budget = l->budget;
    time_now(e.time);
    if (c->n == 0)
        memcpy(e.prev, ZERO_HASH_HEX, sizeof e.prev);
    else
        to_hex(c->last_hash, HASH_BYTES, e.prev);
    double *sum = malloc(c->n_orders * sizeof *sum);
    if (!sum)
        return FP_FAIL(FP_ERR_NOMEM, "ledger entry");
    st = compose(c->orders, c->n_orders, c->n ? c->rdp : NULL, spend, sum, &e.eps_round, &e.eps, &e.order);
    free(sum);
    if (st != FP_OK)
        return st;
    char *line = NULL;
    size_t len = 0;
    if ((st = fp_ledger_entry_sign(&e, l->key, &line, &len)) != FP_OK)
        return st;
    /* The line passes the verifier's own check before it is written. */
    char ctx[320];
    snprintf(ctx, sizeof ctx, "%s line %lld (being appended)", l->path, (long long)(c->n + 1));
    accept_t a;
    memset(&a, 0, sizeof a);
    if ((st = parse_entry_line(line, len, ctx, &back)) != FP_OK ||
        (st = chain_check(c, &back, line, len, ctx, NULL, &a)) != FP_OK)
        goto done;
    int64_t lineno = c->n + 1;
    if ((st = append_line(l->fd, l->path, l->size, line, len, &l->broken)) != FP_OK)
        goto done;
    if ((st = scan_note(&l->s, c, &back, &a, lineno, l->size, len)) != FP_OK) {
        /* Recorded on disk but not in memory: the handle can no longer be trusted to continue. */
        l->broken = 1;
        goto done;
    }
    chain_commit(c, &back, &a, lineno);
    l->size += (off_t)len + 1;
    if (eps_after)
        *eps_after = back.eps;
    if (line_out) {
        *line_out = line;
        line = NULL;
    }
done:
    accept_free(&a);
    fp_ledger_entry_clear(&back);
    free(line);
    return st;
}

fp_status fp_ledger_read_line(const fp_ledger_t *l, int64_t seq, char **line, size_t *len)
{
    char eb[128];
    if (!l || !line)
        return FP_FAIL(FP_ERR_INVALID, "ledger_read_line: NULL argument");
    *line = NULL;
    if (len)
        *len = 0;
    if (seq < 1 || (uint64_t)seq > l->s.n_idx)
        return FP_FAIL(FP_ERR_NOT_FOUND, "%s: no entry %lld (the ledger has %zu)", l->path, (long long)seq,
                       l->s.n_idx);
    size_t n = l->s.lens[seq - 1];
    off_t off = l->s.offs[seq - 1];
    char *buf = malloc(n + 1);
    if (!buf)
        return FP_FAIL(FP_ERR_NOMEM, "ledger line");
    size_t done = 0;
    while (done < n) {
        ssize_t k = pread(l->fd, buf + done, n - done, off + (off_t)done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            free(buf);
            return FP_FAIL(FP_ERR_IO, "read %s: %s", l->path, k < 0 ? errno_text(errno, eb, sizeof eb) : "short file");
        }
        done += (size_t)k;
    }
    buf[n] = '\0';
    *line = buf;
    if (len)
        *len = n;
    return FP_OK;
}

double fp_ledger_epsilon(const fp_ledger_t *l)
{
    return l ? ledger_chain(l)->eps : 0.0;
}

double fp_ledger_budget(const fp_ledger_t *l)
{
    return l ? l->budget : 0.0;
}

int64_t fp_ledger_entries(const fp_ledger_t *l)
{
    return l ? ledger_chain(l)->n : 0;
}

int fp_ledger_last_round(const fp_ledger_t *l, int64_t *round)
{
    if (!l || ledger_chain(l)->n == 0)
        return 0;
    if (round)
        *round = ledger_chain(l)->last_round;
    return 1;
}

size_t fp_ledger_recovered_bytes(const fp_ledger_t *l)
{
    return l ? l->recovered : 0;
}

/* ================================================================================================
 * The federation ledger handle */

struct fp_ledger_fed {
    char *path;
    int fd;
    fp_ledger_key_t *key;
    scan_t s;
    off_t size;
    size_t recovered;
    int broken;
};

void fp_ledger_fed_close(fp_ledger_fed_t *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    fp_ledger_key_free(f->key);
    scan_free(&f->s);
    free(f->path);
    free(f);
}

fp_status fp_ledger_fed_open(const char *path, const fp_ledger_key_t *coordinator, fp_ledger_fed_t **out)
{
    if (!out)
        return FP_FAIL(FP_ERR_INVALID, "ledger_fed_open: NULL output");
    *out = NULL;
    if (!path || !coordinator)
        return FP_FAIL(FP_ERR_INVALID, "ledger_fed_open: NULL argument");
    if (!coordinator->priv)
        return FP_FAIL(FP_ERR_INVALID, "ledger_fed_open: %s: the key has no private part to sign with", path);
    fp_status st;
    int created;
    int64_t lines;
    off_t torn_off;
    size_t torn_len;
    fp_ledger_fed_t *f = calloc(1, sizeof *f);
    if (!f)
        return FP_FAIL(FP_ERR_NOMEM, "federation ledger handle");
    f->fd = -1;
    if (!(f->path = strdup(path))) {
        st = FP_FAIL(FP_ERR_NOMEM, "ledger path");
        goto fail;
    }
    if ((st = key_ref(coordinator, &f->key)) != FP_OK)
        goto fail;
    f->s.path = f->path;
    f->s.pin = f->key;
    f->s.coord_required = 1;
    f->s.kind_known = 1;
    f->s.kind = FP_LEDGER_KIND_FEDERATION;
    if ((st = open_locked(path, &f->fd, &created)) != FP_OK)
        goto fail;
    if ((st = scan_file(&f->s, f->fd, &lines, &f->size, &torn_off, &torn_len)) != FP_OK)
        goto fail;
    if (torn_len) {
        if ((st = truncate_torn(f->fd, path, torn_off, torn_len, lines + 1)) != FP_OK)
            goto fail;
        f->recovered = torn_len;
        f->size = torn_off;
    }
    if (!f->s.coord_hex[0]) {
        memcpy(f->s.coord_hex, f->key->hex, sizeof f->s.coord_hex);
        if (EVP_PKEY_up_ref(f->key->pkey) != 1) {
            st = ossl_fail(FP_ERR_INTERNAL, "key reference");
            goto fail;
        }
        f->s.coord_pub = f->key->pkey;
        f->s.coord_pinned = 1;
    }
    *out = f;
    return FP_OK;
fail:
    fp_ledger_fed_close(f);
    return st;
}

fp_status fp_ledger_fed_append(fp_ledger_fed_t *f, const char *client_line, size_t len,
                               const fp_ledger_key_t *client_key, fp_ledger_entry_t *entry, char **fed_line)
{
    if (fed_line)
        *fed_line = NULL;
    if (entry)
        memset(entry, 0, sizeof *entry);
    if (!f || !client_line)
        return FP_FAIL(FP_ERR_INVALID, "ledger_fed_append: NULL argument");
    if (f->broken)
        return FP_FAIL(FP_ERR_IO, "%s: an earlier write failed and could not be undone; reopen the ledger", f->path);
    if (len > FP_LEDGER_MAX_LINE)
        return FP_FAIL(FP_ERR_FORMAT, "client entry of %zu bytes (at most %u)", len, FP_LEDGER_MAX_LINE);
    const char *ctx = "client entry";
    fp_ledger_entry_t e;
    fp_status st = parse_entry_line(client_line, len, ctx, &e);
    if (st != FP_OK)
        return st;
    accept_t a;
    memset(&a, 0, sizeof a);
    chain_t *fresh = NULL, *c = scan_find(&f->s, e.client);
    char *line = NULL;
    size_t line_len = 0;
    unsigned char hash[HASH_BYTES];
    if (client_key && strcmp(client_key->hex, e.pubkey) != 0) {
        st = efail(FP_ERR_FORMAT, ctx, e.client, e.spend.round, "signed by key %.16s..., not the client's key %.16s...",
                   e.pubkey, client_key->hex);
        goto done;
    }
    if (c && e.seq <= c->n) {
        if ((st = sha256(client_line, len, hash)) != FP_OK)
            goto done;
        if (e.seq == c->n && memcmp(hash, c->last_hash, HASH_BYTES) == 0)
            goto done; /* a retry of the entry accepted last: nothing to do */
        st = efail(FP_ERR_INVALID, ctx, e.client, e.spend.round,
                   "seq %lld is already recorded (the federation ledger holds this client's entries up to seq %lld)",
                   (long long)e.seq, (long long)c->n);
        goto done;
    }
    int64_t next = c ? c->n + 1 : 1;
    if (e.seq > next) {
        st = efail(FP_ERR_NOT_FOUND, ctx, e.client, e.spend.round,
                   "seq %lld, but the federation ledger holds this client's entries up to seq %lld: send entries "
                   "%lld to %lld first", (long long)e.seq, (long long)(next - 1), (long long)next,
                   (long long)(e.seq - 1));
        goto done;
    }
    if (!c) {
        if (!(fresh = chain_new())) {
            st = FP_FAIL(FP_ERR_NOMEM, "client chain");
            goto done;
        }
        c = fresh;
    }
    if ((st = chain_check(c, &e, client_line, len, ctx, e.client, &a)) != FP_OK)
        goto done;
    /* Countersign. */
    char prev[65];
    if (f->s.fed_n == 0)
        memcpy(prev, ZERO_HASH_HEX, sizeof prev);
    else
        to_hex(f->s.fed_hash, HASH_BYTES, prev);
    fp_ledger_buf_t b;
    fp_ledger_buf_init(&b, FP_LEDGER_MAX_FED_LINE);
    put_fed(&b, f->s.fed_n + 1, prev, f->key->hex, client_line, len);
    fp_ledger_buf_put(&b, "}", 1);
    char cosig[2 * SIG_BYTES + 1];
    if ((st = fp_ledger_buf_status(&b, "federation line")) == FP_OK &&
        (st = sign_bytes(f->key, b.p, b.n, cosig)) == FP_OK) {
        b.n--;
        fp_ledger_buf_printf(&b, ",\"cosig\":\"%s\"}", cosig);
        st = fp_ledger_buf_status(&b, "federation line");
    }
    if (st != FP_OK) {
        fp_ledger_buf_free(&b);
        goto done;
    }
    line = fp_ledger_buf_take(&b, &line_len);
    if ((st = sha256(line, line_len, hash)) != FP_OK)
        goto done;
    if (fresh && (st = scan_add_chain(&f->s, fresh)) != FP_OK)
        goto done;
    int64_t lineno = f->s.fed_n + 1;
    if ((st = append_line(f->fd, f->path, f->size, line, line_len, &f->broken)) != FP_OK) {
        if (fresh)
            f->s.n_chains--; /* not committed: take the new client back out */
        goto done;
    }
    fresh = NULL;
    f->size += (off_t)line_len + 1;
    f->s.fed_n++;
    memcpy(f->s.fed_hash, hash, HASH_BYTES);
    chain_commit(c, &e, &a, lineno);
    if (fed_line) {
        *fed_line = line;
        line = NULL;
    }
done:
    accept_free(&a);
    chain_free(fresh);
    free(line);
    if (st == FP_OK && entry)
        *entry = e;
    else
        fp_ledger_entry_clear(&e);
    return st;
}

int64_t fp_ledger_fed_next_seq(const fp_ledger_fed_t *f, const char *client_id)
{
    const chain_t *c = f && client_id ? scan_find(&f->s, client_id) : NULL;
    return c ? c->n + 1 : 1;
}

fp_status fp_ledger_fed_client_epsilon(const fp_ledger_fed_t *f, const char *client_id, double *eps,
                                       int64_t *entries)
{
    if (!f || !client_id || !eps)
        return FP_FAIL(FP_ERR_INVALID, "ledger_fed_client_epsilon: NULL argument");
    const chain_t *c = scan_find(&f->s, client_id);
    *eps = c ? c->eps : 0.0;
    if (entries)
        *entries = c ? c->n : 0;
    return FP_OK;
}

int64_t fp_ledger_fed_entries(const fp_ledger_fed_t *f)
{
    return f ? f->s.fed_n : 0;
}

size_t fp_ledger_fed_recovered_bytes(const fp_ledger_fed_t *f)
{
    return f ? f->recovered : 0;
}

/* ================================================================================================
 * Verification */

void fp_ledger_report_free(fp_ledger_report_t *r)
{
    if (!r)
        return;
    free(r->path);
    free(r->rows);
    free(r->clients);
    free(r);
}

/* Copies the current error into the report as its failure. */
static void report_fail(fp_ledger_report_t *r, fp_status st, int64_t line, int64_t round)
{
    r->status = st;
    r->fail_line = line;
    r->fail_round = round;
    snprintf(r->message, sizeof r->message, "%s", fp_error_message());
}

fp_status fp_ledger_verify_file(const char *path, const fp_ledger_key_t *pin, fp_ledger_report_t **report)
{
    char eb[128];
    if (!report)
        return FP_FAIL(FP_ERR_INVALID, "verify_file: NULL report");
    *report = NULL;
    if (!path)
        return FP_FAIL(FP_ERR_INVALID, "verify_file: NULL path");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return FP_FAIL(e == ENOENT ? FP_ERR_NOT_FOUND : FP_ERR_IO, "open %s: %s", path, errno_text(e, eb, sizeof eb));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return FP_FAIL(FP_ERR_IO, "%s is not a regular file", path);
    }
    fp_ledger_report_t *r = calloc(1, sizeof *r);
    if (!r || !(r->path = strdup(path))) {
        close(fd);
        free(r);
        return FP_FAIL(FP_ERR_NOMEM, "verification report");
    }
    r->fail_round = -1;
    r->pin_given = pin != NULL;
    scan_t s;
    memset(&s, 0, sizeof s);
    s.path = path;
    s.pin = pin;
    s.report = r;
    int64_t lines = 0;
    off_t end_off, torn_off;
    size_t torn_len;
    fp_status st = scan_file(&s, fd, &lines, &end_off, &torn_off, &torn_len);
    close(fd);
    r->lines = lines;
    if (st != FP_OK) {
        report_fail(r, st, s.cur_line, s.cur_round);
    } else {
        if (torn_len) {
            r->torn_line = lines + 1;
            r->torn_bytes = torn_len;
        }
        if (pin && r->kind == FP_LEDGER_KIND_FEDERATION && !s.coord_pinned) {
            int any = 0;
            for (size_t k = 0; k < r->n_clients; k++)
                any |= r->clients[k].pinned;
            if (!any && r->n_rows > 0) {
                st = FP_FAIL(FP_ERR_FORMAT, "%s: the expected key %.16s... is neither the coordinator's (%.16s...) "
                             "nor any client's", path, pin->hex, r->coordinator);
                report_fail(r, st, 0, -1);
            }
        }
    }
    scan_free(&s);
    *report = r;
    return st; /* the failure is still this thread's last error (and a copy is in the report) */
}
