/* test_federation_proc: the federation as a user runs it. fedprof-server and fedprof-client are
 * started as processes (binaries from $FEDPROF_SERVER and $FEDPROF_CLIENT), plaintext gRPC on
 * 127.0.0.1 with a port picked at run time, synthetic data split into three partners by user.
 *
 *  - test_sigkill_restart: the coordinator is killed with SIGKILL mid-round (two rounds committed,
 *    the third training, one of its updates accepted), restarted on the same checkpoint dir, killed
 *    again as soon as that restart serves, and restarted once more. The clients
 *    reconnect by themselves and every process exits 0; the restarts say they resumed; the
 *    committed rounds over the three server logs are 1..6, each once, model version = round + 1;
 *    the final model equals the one of an uninterrupted run of the same federation (training is
 *    deterministic: seeds come from the plan, the identity and the round id), so no update was
 *    counted twice or lost; every partner saved that same final model (one of them under the
 *    default --out, runs/joined in its working directory).
 *  - test_server_cli_bad_input: bad flags, configs, files and peers give a clear message and a
 *    non-zero exit below 128 (never a signal, never a sanitizer report), for `fedprof-server run`,
 *    `fedprof-server status` and `fedprof-client join`.
 *
 * Every wait is bounded; on a failed check every child is killed (SIGKILL + waitpid) and the logs
 * of the processes are printed. Everything started here is stopped here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/model.h"
#include "common/model_io.h"

#define FPP_ROUNDS 6
#define FPP_CLIENTS 3
#define FPP_MAX_KIDS 64
#define FPP_MAX_ARGS 48
#define FPP_DEADLINE_S 120.0 /* any single wait; the whole test takes ~20 s in Release */

static const char *g_srv, *g_cli;
static char g_dir[128];
static int g_n_items;
static char g_cfg[256];

/* ---- children ---- */

typedef struct {
    pid_t pid;
    int reaped, status;
    char name[32], out[256], err[256];
} fpp_kid_t;

static fpp_kid_t g_kids[FPP_MAX_KIDS];
static int g_n_kids;

static double fpp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fpp_sleep(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* The whole file (at most cap - 1 bytes of its end) into buf; "" when it cannot be read. */
static void fpp_slurp_tail(const char *path, char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        if (size > (long)(cap - 1) && fseek(f, size - (long)(cap - 1), SEEK_SET) != 0)
            size = 0;
        else if (size <= (long)(cap - 1))
            rewind(f);
    }
    size_t k = fread(buf, 1, cap - 1, f);
    buf[k] = '\0';
    fclose(f);
}

static void fpp_kill_all(void)
{
    for (int i = 0; i < g_n_kids; i++) {
        fpp_kid_t *k = &g_kids[i];
        if (k->reaped || k->pid <= 0)
            continue;
        if (kill(k->pid, SIGKILL) != 0 && errno != ESRCH)
            fprintf(stderr, "kill %s (%d): %s\n", k->name, (int)k->pid, strerror(errno));
        while (waitpid(k->pid, &k->status, 0) < 0 && errno == EINTR)
            ;
        k->reaped = 1;
    }
}

static void fpp_dump_logs(void)
{
    static char buf[6000];
    for (int i = 0; i < g_n_kids; i++) {
        fpp_kid_t *k = &g_kids[i];
        fprintf(stderr, "---- %s (pid %d, %s) ----\n", k->name, (int)k->pid, k->reaped ? "ended" : "running");
        fpp_slurp_tail(k->out, buf, sizeof buf);
        if (buf[0])
            fprintf(stderr, "[stdout]\n%s\n", buf);
        fpp_slurp_tail(k->err, buf, sizeof buf);
        if (buf[0])
            fprintf(stderr, "[stderr]\n%s\n", buf);
    }
}

/* A failed check: show every process's output, stop them all, fail the test. */
#define FPP_CHECK(cond, ...)                                                                                           \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fpp_dump_logs();                                                                                           \
            fpp_kill_all();                                                                                            \
            fail_msg(__VA_ARGS__);                                                                                     \
        }                                                                                                              \
    } while (0)

/* fork + exec argv (argv[0] is the binary) in cwd (NULL: ours), stdin from /dev/null, stdout and
 * stderr to files named after `name` in g_dir/logs. Returns the child's index. */
static int fpp_spawn(const char *name, const char *cwd, char *const argv[])
{
    FPP_CHECK(g_n_kids < FPP_MAX_KIDS, "too many children");
    fpp_kid_t *k = &g_kids[g_n_kids];
    memset(k, 0, sizeof *k);
    snprintf(k->name, sizeof k->name, "%s", name);
    snprintf(k->out, sizeof k->out, "%s/logs/%s.out", g_dir, name);
    snprintf(k->err, sizeof k->err, "%s/logs/%s.err", g_dir, name);
    int fo = open(k->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int fe = open(k->err, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int fi = open("/dev/null", O_RDONLY | O_CLOEXEC);
    FPP_CHECK(fo >= 0 && fe >= 0 && fi >= 0, "open logs of %s: %s", name, strerror(errno));
    pid_t pid = fork();
    if (pid == 0) {
        /* The child: only async-signal-safe calls until exec. */
        if (dup2(fi, 0) < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0 || (cwd && chdir(cwd) != 0))
            _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    int fork_errno = errno;
    if (close(fo) != 0 || close(fe) != 0 || close(fi) != 0)
        fail_msg("close: %s", strerror(errno));
    FPP_CHECK(pid > 0, "fork %s: %s", name, strerror(fork_errno));
    k->pid = pid;
    g_n_kids++;
    return g_n_kids - 1;
}

/* fpp_spawn with the arguments as a NULL-terminated list after the binary. */
static int fpp_spawnl(const char *name, const char *cwd, const char *bin, ...)
{
    char *argv[FPP_MAX_ARGS];
    int n = 0;
    argv[n++] = (char *)bin;
    va_list ap;
    va_start(ap, bin);
    for (const char *a = va_arg(ap, char *); a; a = va_arg(ap, char *)) {
        if (n >= FPP_MAX_ARGS - 1) {
            va_end(ap);
            fail_msg("too many arguments for %s", name);
        }
        argv[n++] = (char *)a;
    }
    va_end(ap);
    argv[n] = NULL;
    return fpp_spawn(name, cwd, argv);
}

/* Wait up to timeout_s for child i; 1 when it ended, 0 when it still runs. */
static int fpp_wait(int i, double timeout_s)
{
    fpp_kid_t *k = &g_kids[i];
    double t_end = fpp_now() + timeout_s;
    while (!k->reaped) {
        pid_t r = waitpid(k->pid, &k->status, WNOHANG);
        if (r == k->pid) {
            k->reaped = 1;
            break;
        }
        if (r < 0 && errno != EINTR)
            FPP_CHECK(0, "waitpid %s: %s", k->name, strerror(errno));
        if (fpp_now() > t_end)
            return 0;
        fpp_sleep(0.02);
    }
    return 1;
}

/* Exit code, or 128 + signal. */
static int fpp_rc(int i)
{
    const fpp_kid_t *k = &g_kids[i];
    if (WIFSIGNALED(k->status))
        return 128 + WTERMSIG(k->status);
    return WIFEXITED(k->status) ? WEXITSTATUS(k->status) : -1;
}

static void fpp_wait_ok(int i, double timeout_s)
{
    FPP_CHECK(fpp_wait(i, timeout_s), "%s did not end within %.0f s", g_kids[i].name, timeout_s);
    FPP_CHECK(fpp_rc(i) == 0, "%s exited %d", g_kids[i].name, fpp_rc(i));
}

/* Wait for the clients to exit 0, failing at once when the server fails first. */
static void fpp_wait_clients(const int *kids, int n, int server, double timeout_s)
{
    double t_end = fpp_now() + timeout_s;
    for (;;) {
        int running = 0;
        for (int k = 0; k < n; k++) {
            if (!fpp_wait(kids[k], 0))
                running++;
            else
                FPP_CHECK(fpp_rc(kids[k]) == 0, "%s exited %d", g_kids[kids[k]].name, fpp_rc(kids[k]));
        }
        if (!running)
            return;
        FPP_CHECK(!fpp_wait(server, 0) || fpp_rc(server) == 0, "%s exited %d with clients running",
                  g_kids[server].name, fpp_rc(server));
        FPP_CHECK(fpp_now() < t_end, "%d client(s) still running after %.0f s", running, timeout_s);
        fpp_sleep(0.02);
    }
}

static void fpp_sigkill(int i)
{
    FPP_CHECK(kill(g_kids[i].pid, SIGKILL) == 0, "kill %s: %s", g_kids[i].name, strerror(errno));
    FPP_CHECK(fpp_wait(i, 30), "%s survived SIGKILL", g_kids[i].name);
    FPP_CHECK(fpp_rc(i) == 128 + SIGKILL, "%s: exit %d after SIGKILL", g_kids[i].name, fpp_rc(i));
}

/* stdout and stderr of child i, concatenated. */
static char g_text[1 << 17];
static const char *fpp_output(int i)
{
    static char part[1 << 16];
    fpp_slurp_tail(g_kids[i].out, g_text, sizeof g_text / 2);
    fpp_slurp_tail(g_kids[i].err, part, sizeof part);
    strncat(g_text, part, sizeof g_text - strlen(g_text) - 1);
    return g_text;
}

/* Run a command in g_dir to its end (bounded), return its exit code; its output is in fpp_output(). */
static int g_case;
static int fpp_run(const char *bin, ...)
{
    char *argv[FPP_MAX_ARGS];
    int n = 0;
    argv[n++] = (char *)bin;
    va_list ap;
    va_start(ap, bin);
    for (const char *a = va_arg(ap, char *); a; a = va_arg(ap, char *)) {
        if (n >= FPP_MAX_ARGS - 1) {
            va_end(ap);
            fail_msg("too many arguments");
        }
        argv[n++] = (char *)a;
    }
    va_end(ap);
    argv[n] = NULL;
    char name[32];
    snprintf(name, sizeof name, "case%02d", g_case++);
    int i = fpp_spawn(name, g_dir, argv); /* in g_dir: a join's default --out lands there, not in ours */
    FPP_CHECK(fpp_wait(i, 60), "%s hung (%s %s ...)", name, bin, argv[1] ? argv[1] : "");
    return fpp_rc(i);
}

/* The last fpp_run exited `rc` (a clean exit, below 128) and said `needle`. */
static void fpp_expect(int got, int rc, const char *needle)
{
    int i = g_n_kids - 1;
    const char *text = fpp_output(i);
    if (got != rc || got >= 128 || (needle && !strstr(text, needle))) {
        fprintf(stderr, "---- %s: exit %d ----\n%s\n", g_kids[i].name, got, text);
        fpp_kill_all();
        fail_msg("%s: exit %d, want %d and '%s' in its output", g_kids[i].name, got, rc, needle ? needle : "");
    }
}

/* ... and also said `needle`. */
static void fpp_said(const char *needle)
{
    int i = g_n_kids - 1;
    const char *text = fpp_output(i);
    if (!strstr(text, needle)) {
        fprintf(stderr, "---- %s ----\n%s\n", g_kids[i].name, text);
        fpp_kill_all();
        fail_msg("%s: '%s' not in its output", g_kids[i].name, needle);
    }
}

/* ---- fixtures ---- */

static int fpp_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    assert_int_equal(close(fd), 0);
    return ntohs(a.sin_port);
}

static void fpp_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

/* Synthetic data, split into part0..2.txt by user id mod 3; outside.txt is part0 with every item
 * id moved above the catalogue. */
static int setup(void **state)
{
    (void)state;
    g_srv = getenv("FEDPROF_SERVER");
    g_cli = getenv("FEDPROF_CLIENT");
    if (!g_srv)
        g_srv = FEDPROF_BINARY_DIR "/fedprof-server";
    if (!g_cli)
        g_cli = FEDPROF_BINARY_DIR "/fedprof-client";
    snprintf(g_dir, sizeof g_dir, "/tmp/fp_fedproc_XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    char p[300], q[300];
    snprintf(p, sizeof p, "%s/logs", g_dir);
    if (mkdir(p, 0755) != 0)
        return -1;
    snprintf(p, sizeof p, "%s/all.txt", g_dir);
    int i = fpp_spawnl("synth", NULL, g_cli, "synth", "--out", p, "--users", "1500", "--items", "300", "--mean-len",
                       "12", "--seed", "5", (char *)NULL);
    if (!fpp_wait(i, 60) || fpp_rc(i) != 0) {
        fpp_dump_logs();
        return -1;
    }
    FILE *in = fopen(p, "rb"), *out[FPP_CLIENTS + 1];
    if (!in)
        return -1;
    for (int k = 0; k <= FPP_CLIENTS; k++) {
        if (k < FPP_CLIENTS)
            snprintf(q, sizeof q, "%s/part%d.txt", g_dir, k);
        else
            snprintf(q, sizeof q, "%s/outside.txt", g_dir);
        if (!(out[k] = fopen(q, "wb")))
            return -1;
    }
    char line[256];
    long max_item = 0;
    while (fgets(line, sizeof line, in)) {
        unsigned long user = 0;
        long item = 0;
        if (sscanf(line, "%lu %ld", &user, &item) != 2)
            return -1;
        if (item > max_item)
            max_item = item;
        fprintf(out[user % FPP_CLIENTS], "%lu %ld\n", user, item);
    }
    fclose(in);
    g_n_items = (int)max_item;
    /* outside.txt: part0's users with ids above the catalogue, written once the max is known */
    snprintf(q, sizeof q, "%s/part0.txt", g_dir);
    if (fflush(out[0]) != 0 || !(in = fopen(q, "rb")))
        return -1;
    while (fgets(line, sizeof line, in)) {
        unsigned long user = 0;
        long item = 0;
        if (sscanf(line, "%lu %ld", &user, &item) != 2)
            return -1;
        fprintf(out[FPP_CLIENTS], "%lu %ld\n", user, item + max_item);
    }
    fclose(in);
    for (int k = 0; k <= FPP_CLIENTS; k++)
        if (fclose(out[k]) != 0)
            return -1;
    if (g_n_items < 200)
        return -1;
    /* A small model keeps rounds short; eval.max_users bounds the partners' final evaluation. */
    snprintf(g_cfg, sizeof g_cfg, "%s/model.yaml", g_dir);
    fpp_write(g_cfg, "model:\n  dim: 16\n  blocks: 1\n  heads: 1\n  maxlen: 20\n  dropout: 0.2\n"
                     "train:\n  batch: 64\neval:\n  max_users: 200\n");
    g_n_kids = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    fpp_kill_all();
    if (strncmp(g_dir, "/tmp/fp_fedproc_", 16) != 0)
        return -1;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Per test: nothing left running, whatever happened. */
static int test_teardown(void **state)
{
    (void)state;
    fpp_kill_all();
    return 0;
}

/* ---- status ---- */

typedef struct {
    int answered;
    long long committed, model_version, received;
    char phase[32];
} fpp_status_t;

static fpp_status_t fpp_status(const char *addr)
{
    fpp_status_t s;
    memset(&s, 0, sizeof s);
    int i = fpp_spawnl("status", NULL, g_srv, "status", "--server", addr, "--insecure", "--json", "--timeout", "1",
                       (char *)NULL);
    FPP_CHECK(fpp_wait(i, 30), "status hung");
    int rc = fpp_rc(i);
    FPP_CHECK(rc < 128, "status crashed: %d", rc);
    if (rc == 0) {
        char buf[4096];
        fpp_slurp_tail(g_kids[i].out, buf, sizeof buf);
        json_object *j = json_tokener_parse(buf), *v = NULL;
        FPP_CHECK(j != NULL, "status --json printed no JSON: %s", buf);
        if (json_object_object_get_ex(j, "committed_rounds", &v))
            s.committed = json_object_get_int64(v);
        if (json_object_object_get_ex(j, "model_version", &v))
            s.model_version = json_object_get_int64(v);
        if (json_object_object_get_ex(j, "received", &v))
            s.received = json_object_get_int64(v);
        if (json_object_object_get_ex(j, "phase", &v))
            snprintf(s.phase, sizeof s.phase, "%s", json_object_get_string(v));
        json_object_put(j);
        s.answered = 1;
    }
    /* Status probes are many: forget them so the children table stays small. */
    g_n_kids--;
    return s;
}

/* ---- logs ---- */

/* The "resuming from DIR/...: K of N rounds committed, model version V" line: K, or -1. */
static int fpp_resumed(const char *log, long long *version)
{
    const char *r = strstr(log, "resuming from ");
    if (!r)
        return -1;
    int k = -1, n = 0;
    if (sscanf(r, "resuming from %*[^:]: %d of %d rounds committed, model version %lld", &k, &n, version) != 3)
        return -1;
    return n == FPP_ROUNDS ? k : -1;
}

/* The "round R committed: model version V from U updates in Ts (J/N)" lines must count J = from+1,
 * from+2, ... each once, with V = J + 1 and U = 3. Returns the last J (from when none). */
static int fpp_committed_run(const char *log, int from, const char *name)
{
    int last = from;
    for (const char *p = strstr(log, " committed: model version "); p; p = strstr(p + 1, " committed: model version ")) {
        const char *line = p;
        while (line > log && line[-1] != '\n')
            line--;
        unsigned long long round = 0, version = 0;
        int upd = 0, j = 0, n = 0;
        double secs = 0;
        int got = sscanf(line, "round %llu committed: model version %llu from %d updates in %lfs (%d/%d)", &round,
                         &version, &upd, &secs, &j, &n);
        FPP_CHECK(got == 6, "%s: cannot read the commit line at: %.120s", name, line);
        FPP_CHECK(j == last + 1 && n == FPP_ROUNDS && version == (unsigned long long)j + 1 && upd == FPP_CLIENTS,
                  "%s: commit %d/%d (version %llu, %d updates) after commit %d", name, j, n, version, upd, last);
        FPP_CHECK(round >= (unsigned long long)j, "%s: round id %llu below its commit count %d", name, round, j);
        last = j;
    }
    return last;
}

/* ---- models ---- */

static fp_model_t *fpp_load(const char *path, fp_config_t *cfg)
{
    fp_model_t *m = NULL;
    char **items = NULL;
    FPP_CHECK(fp_model_load(path, 1, 1, &m, cfg, &items) == FP_OK, "cannot load %s: %s", path, fp_error_message());
    fp_model_items_free(items, cfg->model.n_items);
    return m;
}

static int fpp_same_bytes(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb)
            same = 0;
        if (ca == EOF || cb == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

/* ---- the tests ---- */

static int fpp_start_server(const char *name, const char *addr, const char *ck)
{
    char n_items[16];
    snprintf(n_items, sizeof n_items, "%d", g_n_items);
    /* --local-epochs 6: a round lasts long enough (~0.3 s in Release) for a kill to land inside it. */
    return fpp_spawnl(name, NULL, g_srv, "run", "--listen", addr, "--insecure", "--n-items", n_items, "--rounds", "6",
                      "--clients-per-round", "3", "--min-clients", "3", "--checkpoint-dir", ck, "--round-timeout",
                      "30", "--config", g_cfg, "--local-epochs", "6", (char *)NULL);
}

static void fpp_start_clients(int *kids, const char *addr, const char *tag, int eval)
{
    for (int k = 0; k < FPP_CLIENTS; k++) {
        char name[32], id[8], data[256], out[256], cwd[256];
        snprintf(name, sizeof name, "%s-p%d", tag, k);
        snprintf(id, sizeof id, "p%d", k);
        snprintf(data, sizeof data, "%s/part%d.txt", g_dir, k);
        snprintf(out, sizeof out, "%s/%s%d", g_dir, tag, k);
        if (!eval && k == 0) {
            /* No --out: the default (client.out, runs/joined) under a fresh working directory. */
            snprintf(cwd, sizeof cwd, "%s/%s-cwd", g_dir, tag);
            FPP_CHECK(mkdir(cwd, 0755) == 0, "mkdir %s: %s", cwd, strerror(errno));
            kids[k] = fpp_spawnl(name, cwd, g_cli, "join", "--server", addr, "--insecure", "--name", id, "--data",
                                 data, "--threads", "1", "--give-up", "120", "--no-eval", (char *)NULL);
        } else {
            kids[k] = fpp_spawnl(name, NULL, g_cli, "join", "--server", addr, "--insecure", "--name", id, "--data",
                                 data, "--out", out, "--threads", "1", "--give-up", "120",
                                 eval ? (char *)NULL : "--no-eval", (char *)NULL);
        }
    }
}

static void test_sigkill_restart(void **state)
{
    (void)state;
    g_n_kids = 0;
    char addr[32], ck[256], ck_ref[256], path[300], ref_path[300];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", fpp_free_port());
    snprintf(ck, sizeof ck, "%s/ck", g_dir);
    snprintf(ck_ref, sizeof ck_ref, "%s/ck-ref", g_dir);
    double t0 = fpp_now();

    /* The reference: the same federation, uninterrupted. */
    int kids[FPP_CLIENTS];
    int ref = fpp_start_server("ref-server", addr, ck_ref);
    fpp_start_clients(kids, addr, "ref", 0);
    fpp_wait_clients(kids, FPP_CLIENTS, ref, FPP_DEADLINE_S);
    fpp_wait_ok(ref, FPP_DEADLINE_S);
    snprintf(ref_path, sizeof ref_path, "%s/model.safetensors", ck_ref);
    snprintf(path, sizeof path, "%s/ref-cwd/runs/joined/model.safetensors", g_dir);
    FPP_CHECK(fpp_same_bytes(path, ref_path), "the default --out (runs/joined) holds no copy of the final model");
    double t_ref = fpp_now() - t0;

    /* A: killed mid-round once two rounds are committed. Its log is polled (cheap, every 5 ms):
     * the last line "round R (K/6 committed): ... waiting for 3 updates" means round R trains. */
    int a = fpp_start_server("server-A", addr, ck);
    fpp_start_clients(kids, addr, "out", 1);
    double t_end = fpp_now() + FPP_DEADLINE_S;
    int in_round = 0;
    unsigned long long round_a = 0;
    for (;;) {
        static char tail[512];
        fpp_slurp_tail(g_kids[a].err, tail, sizeof tail);
        size_t len = strlen(tail);
        if (len > 0 && tail[len - 1] == '\n') {
            tail[--len] = '\0';
            const char *last = strrchr(tail, '\n');
            last = last ? last + 1 : tail;
            int k = 0, n = 0;
            if (sscanf(last, "round %llu (%d/%d committed)", &round_a, &k, &n) == 3 && k >= 2 &&
                strstr(last, "waiting for")) {
                /* ... and, to lose an accepted update with the round, once a client says so. */
                char said[64];
                snprintf(said, sizeof said, "round %llu: update accepted", round_a);
                for (int c = 0; c < FPP_CLIENTS && !in_round; c++)
                    if (strstr(fpp_output(kids[c]), said))
                        in_round = k;
                if (in_round)
                    break;
            }
        }
        FPP_CHECK(fpp_now() < t_end, "no round in training after two commits within %.0f s", FPP_DEADLINE_S);
        FPP_CHECK(!fpp_wait(a, 0), "server A ended before it could be killed mid-round: %d", fpp_rc(a));
        fpp_sleep(0.005);
    }
    fpp_sigkill(a);
    print_message("killed A in round %llu (%d committed before it)\n", round_a, in_round);
    fpp_sleep(1.0);

    /* B: killed as soon as it serves (its log says so), mostly before the clients are back. */
    int b = fpp_start_server("server-B", addr, ck);
    t_end = fpp_now() + FPP_DEADLINE_S;
    while (!strstr(fpp_output(b), "fedprof-server: serving")) {
        FPP_CHECK(fpp_now() < t_end, "server B never served");
        FPP_CHECK(!fpp_wait(b, 0), "server B ended early: %d", fpp_rc(b));
        fpp_sleep(0.005);
    }
    fpp_sigkill(b);
    fpp_sleep(0.5);

    /* C: runs to the end. */
    int c = fpp_start_server("server-C", addr, ck);
    fpp_wait_clients(kids, FPP_CLIENTS, c, FPP_DEADLINE_S);
    /* The clients leave on DONE; the coordinator serves DONE a while longer (done_linger_s). */
    fpp_status_t s = fpp_status(addr);
    if (s.answered)
        FPP_CHECK(s.committed == FPP_ROUNDS && s.model_version == FPP_ROUNDS + 1 && !strcmp(s.phase, "done"),
                  "final status: %lld committed, version %lld, phase %s", s.committed, s.model_version, s.phase);
    fpp_wait_ok(c, FPP_DEADLINE_S);

    /* Commits over the three lives: 1..6, each once. A commit can be persisted and the process
     * killed before its log line, so a restart may resume one past the last line seen. */
    long long va = 0, vb = 0, vc = 0;
    const char *la = fpp_output(a);
    FPP_CHECK(fpp_resumed(la, &va) == -1, "server A resumed from a fresh checkpoint dir");
    int last_a = fpp_committed_run(la, 0, "server A");
    int kb = fpp_resumed(fpp_output(b), &vb);
    FPP_CHECK(kb >= 2 && (kb == last_a || kb == last_a + 1) && vb == kb + 1,
              "server B resumed from %d commits (version %lld); A logged %d", kb, vb, last_a);
    int last_b = fpp_committed_run(fpp_output(b), kb, "server B");
    const char *lc = fpp_output(c);
    int kc = fpp_resumed(lc, &vc);
    FPP_CHECK(kc >= kb && (kc == last_b || kc == last_b + 1) && vc == kc + 1,
              "server C resumed from %d commits (version %lld); B logged %d", kc, vc, last_b);
    lc = fpp_output(c);
    FPP_CHECK(fpp_committed_run(lc, kc, "server C") == FPP_ROUNDS, "server C did not commit up to round %d",
              FPP_ROUNDS);
    FPP_CHECK(strstr(lc, "federation done: 6 rounds") != NULL, "server C: no 'federation done: 6 rounds'");

    /* The clients: they came back by themselves (retries), got the final version, saved it. */
    snprintf(path, sizeof path, "%s/model.safetensors", ck);
    for (int k = 0; k < FPP_CLIENTS; k++) {
        const char *lk = fpp_output(kids[k]);
        const char *r = strstr(lk, "rounds trained, ");
        while (r && r > lk && r[-1] != '\n')
            r--;
        char id[16];
        int trained = 0, accepted = 0, refused = 0, retries = 0;
        FPP_CHECK(r && sscanf(r, "joined as %15[^:]: %d rounds trained, %d updates accepted, %d refused, %d retries",
                              id, &trained, &accepted, &refused, &retries) == 5,
                  "client p%d: no final report line", k);
        /* A round re-run after a restart is trained again only when its update had been accepted
         * by the killed server (the kept update is pushed otherwise): at most one per kill. */
        FPP_CHECK(trained >= FPP_ROUNDS && trained <= FPP_ROUNDS + 2 && retries >= 1 && refused == 0,
                  "client p%d: %d rounds trained, %d refused, %d retries", k, trained, refused, retries);
        FPP_CHECK(strstr(lk, "final global model (version 7) saved") != NULL, "client p%d: no final model v7", k);
        char out[300];
        snprintf(out, sizeof out, "%s/out%d/model.safetensors", g_dir, k);
        FPP_CHECK(fpp_same_bytes(out, path), "client p%d saved another model than %s", k, path);
    }

    /* Nothing counted twice, nothing lost: the final model is the uninterrupted run's. The only
     * legitimate difference is the arrival order of the three updates in the double-precision
     * running sum (a relative 1e-16 change, at most one float ulp per round); one update counted
     * twice or lost moves the model by about 1/18 of its whole training movement ||w - w0||. The
     * bound, 1e-4 of that movement, separates the two by orders of magnitude either way. */
    int bitwise = fpp_same_bytes(path, ref_path);
    fp_config_t cfg, cfg_ref;
    fp_model_t *m = fpp_load(path, &cfg), *mr = fpp_load(ref_path, &cfg_ref), *m0 = NULL;
    FPP_CHECK(fp_model_create(&cfg_ref.model, 1, 1, &m0) == FP_OK, "model: %s", fp_error_message());
    fp_model_init(m0, 42); /* server.init_seed's default: the coordinator's initial model */
    size_t n = fp_model_layout(mr)->total;
    FPP_CHECK(fp_model_layout(m)->total == n && fp_model_layout(m0)->total == n, "layouts differ");
    const float *w = fp_model_params(m), *wr = fp_model_params(mr), *w0 = fp_model_params(m0);
    double diff = 0, moved = 0;
    for (size_t i = 0; i < n; i++) {
        diff += ((double)w[i] - wr[i]) * ((double)w[i] - wr[i]);
        moved += ((double)wr[i] - w0[i]) * ((double)wr[i] - w0[i]);
    }
    diff = sqrt(diff);
    moved = sqrt(moved);
    fp_model_destroy(m);
    fp_model_destroy(mr);
    fp_model_destroy(m0);
    print_message("B logged %d commits; resumed from %d then %d commits; final model %s the reference (||w - w_ref|| %.3g, training "
                  "moved it %.3g); reference %.1f s, killed run %.1f s\n",
                  last_b - kb, kb, kc, bitwise ? "bitwise equal to" : "close to", diff, moved, t_ref, fpp_now() - t0 - t_ref);
    FPP_CHECK(moved > 0 && diff <= 1e-4 * moved, "final model differs from the reference: %.3g vs movement %.3g",
              diff, moved);
}

static void test_server_cli_bad_input(void **state)
{
    (void)state;
    g_n_kids = 0;
    int port = fpp_free_port();
    char addr[32], any[32], n_items[16], ck[256], file[256], cfg[256], n100[16];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    snprintf(any, sizeof any, "0.0.0.0:%d", port);
    snprintf(n_items, sizeof n_items, "%d", g_n_items);
    snprintf(n100, sizeof n100, "%d", 100);
    snprintf(ck, sizeof ck, "%s/ck-bad", g_dir);
    const char *S = g_srv, *C = g_cli;
#define RUN_ARGS "run", "--listen", addr, "--insecure", "--checkpoint-dir", ck
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n_items, "--bogus", "1", NULL), 2, "unknown option '--bogus'");
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n_items, "--rounds", "0", NULL), 2, "--rounds: '0'");
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n_items, "--rounds", "abc", NULL), 2, "--rounds: 'abc'");
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n_items, "--rounds", NULL), 2, "--rounds");
    fpp_expect(fpp_run(S, RUN_ARGS, NULL), 2, "--n-items N");
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n_items, "--strategy", "bogus", NULL), 1, "got 'bogus'");
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n_items, "--privacy-unit", "bogus", NULL), 2,
               "--privacy-unit 'bogus'");
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n_items, "--privacy-unit", "client", NULL), 2, "needs a clip bound");
    /* a catalogue smaller than eval.negatives (100) would fail every partner after the last round */
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n100, NULL), 2, "eval.negatives (100)");
    /* plaintext only on loopback, refused before anything is created */
    fpp_expect(fpp_run(S, "run", "--listen", any, "--insecure", "--checkpoint-dir", ck, "--n-items", n_items, NULL),
               2, "only allowed on a loopback address");
    struct stat sb;
    FPP_CHECK(stat(ck, &sb) != 0 && errno == ENOENT, "the refused run created %s", ck);
    fpp_expect(fpp_run(S, "run", "--listen", addr, "--checkpoint-dir", ck, "--n-items", n_items, NULL), 2,
               "TLS needs --ca, --cert and --key");
    snprintf(file, sizeof file, "%s/nope.pem", g_dir);
    fpp_expect(fpp_run(S, "run", "--listen", addr, "--checkpoint-dir", ck, "--n-items", n_items, "--ca", file,
                       "--cert", file, "--key", file, NULL),
               2, "nope.pem");
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n_items, "--ca", file, NULL), 2, "--insecure excludes");
    snprintf(cfg, sizeof cfg, "%s/notyaml.yaml", g_dir);
    fpp_write(cfg, "server: [unclosed\n  - {x: \n");
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n_items, "--config", cfg, NULL), 1, "notyaml.yaml");
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n_items, "--config", g_dir, NULL), 1, g_dir);
    snprintf(cfg, sizeof cfg, "%s/unknown.yaml", g_dir);
    fpp_write(cfg, "server:\n  roundz: 3\n");
    fpp_expect(fpp_run(S, RUN_ARGS, "--n-items", n_items, "--config", cfg, NULL), 1, "unknown key 'server.roundz'");
    snprintf(file, sizeof file, "%s/a-file", g_dir);
    fpp_write(file, "not a directory\n");
    fpp_expect(fpp_run(S, "run", "--listen", addr, "--insecure", "--checkpoint-dir", file, "--n-items", n_items, NULL),
               1, "is not a directory");
    fpp_expect(fpp_run(S, "frobnicate", NULL), 2, "unknown command 'frobnicate'");
    fpp_expect(fpp_run(S, "status", "--insecure", NULL), 2, "--server is required");
    fpp_expect(fpp_run(S, "status", "--server", addr, "--insecure", "--timeout", "1", NULL), 1,
               "no coordinator answered at");

    /* fedprof-client join without a coordinator. */
    char data[256], dir[256];
    snprintf(data, sizeof data, "%s/part0.txt", g_dir);
    fpp_expect(fpp_run(C, "join", "--data", data, "--insecure", "--name", "x", NULL), 2, "--server");
    fpp_expect(fpp_run(C, "join", "--server", addr, "--insecure", "--name", "x", NULL), 2, "--data is required");
    fpp_expect(fpp_run(C, "join", "--server", addr, "--insecure", "--data", data, NULL), 2,
               "--insecure needs --name");
    fpp_expect(fpp_run(C, "join", "--server", addr, "--data", data, NULL), 2, "mutual TLS needs --ca");
    fpp_expect(fpp_run(C, "join", "--server", any, "--insecure", "--name", "x", "--data", data, NULL), 1,
               "non-loopback");
    snprintf(file, sizeof file, "%s/missing.txt", g_dir);
    fpp_expect(fpp_run(C, "join", "--server", addr, "--insecure", "--name", "x", "--data", file, NULL), 1,
               "missing.txt");
    snprintf(dir, sizeof dir, "%s/logs", g_dir); /* a directory: unreadable as a data file */
    fpp_expect(fpp_run(C, "join", "--server", addr, "--insecure", "--name", "x", "--data", dir, NULL), 1, dir);
    if (geteuid() != 0) { /* root reads a mode-000 file anyway */
        snprintf(file, sizeof file, "%s/noperm.txt", g_dir);
        fpp_write(file, "1 1\n1 2\n");
        FPP_CHECK(chmod(file, 0) == 0, "chmod: %s", strerror(errno));
        fpp_expect(fpp_run(C, "join", "--server", addr, "--insecure", "--name", "x", "--data", file, NULL), 1,
                   "noperm.txt");
    }
    fpp_expect(fpp_run(C, "join", "--server", addr, "--insecure", "--name", "x", "--data", data, "--give-up", "1",
                       NULL),
               1, "giving up");

    /* With a coordinator: an identity it refuses, and data outside its catalogue. */
    int srv = fpp_spawnl("bad-input-server", NULL, S, RUN_ARGS, "--n-items", n_items, "--rounds", "1",
                         "--clients-per-round", "1", "--min-clients", "1", "--round-timeout", "30", "--config", g_cfg,
                         (char *)NULL);
    fpp_status_t s;
    double t_end = fpp_now() + FPP_DEADLINE_S;
    do {
        FPP_CHECK(fpp_now() < t_end, "the coordinator never answered status");
        FPP_CHECK(!fpp_wait(srv, 0), "the coordinator ended early: %d", fpp_rc(srv));
        s = fpp_status(addr);
    } while (!s.answered);
    FPP_CHECK(s.committed == 0 && s.model_version == 1, "a fresh coordinator: %lld committed, version %lld",
              s.committed, s.model_version);
    fpp_expect(fpp_run(C, "join", "--server", addr, "--insecure", "--name", "bad name!", "--data", data, "--give-up",
                       "30", NULL),
               1, "insecure_name must be");
    snprintf(file, sizeof file, "%s/outside.txt", g_dir);
    fpp_expect(fpp_run(C, "join", "--server", addr, "--insecure", "--name", "stranger", "--data", file, "--give-up",
                       "30", "--no-eval", NULL),
               1, "outside the federation's catalogue 1..");
    fpp_said("nothing to train on");
    /* SIGTERM before a round was committed: a clean stop that says how to resume. */
    FPP_CHECK(kill(g_kids[srv].pid, SIGTERM) == 0, "kill: %s", strerror(errno));
    FPP_CHECK(fpp_wait(srv, 30), "the coordinator ignored SIGTERM");
    const char *log = fpp_output(srv);
    FPP_CHECK(fpp_rc(srv) == 130 && strstr(log, "stopped after 0/1 committed rounds"),
              "SIGTERM: exit %d", fpp_rc(srv));
#undef RUN_ARGS
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sigkill_restart, test_teardown),
        cmocka_unit_test_teardown(test_server_cli_bad_input, test_teardown),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
