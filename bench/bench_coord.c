/* fedprof-bench-coord: what the coordinator costs, measured on the real `fedprof-server run`
 * process: its peak resident memory, and the round overhead (everything but local training).
 *
 * The coordinator is started as a child process (`fedprof-server run --insecure --listen
 * 127.0.0.1:0`, the port it reports in its log, a small YAML config for the model shape, a
 * checkpoint directory in a temporary work directory), before this process allocates anything
 * large. The clients are lightweight threads of this process that speak the Federation protocol
 * directly over common/wire (no local training, no optimizer state), each on its own TCP
 * connection: each joins with an insecure_name, long-polls GetTask, and for every TRAIN task pulls
 * the global model (PullModel, every chunk checked and the SHA-256 digest verified by fp_ts_reader
 * into a receive buffer), pushes an update (PushUpdate, fp_ts_writer: header with the round, base
 * version, layout hash and session, 512 KiB chunks as fedprof-client join, digest) and polls again
 * until DONE. Every client
 * pushes the same update, 1e-4 x N(0, 1) drawn once (one shared read-only buffer), so FedAvg makes
 * the next model exactly the pulled one plus that update: client 0 checks this on every round of a
 * small model (P <= 4M). Receive buffers come from a pool of --max-pulls buffers (0: one per
 * client), allocated and touched before the clients start; --max-pushes limits concurrent pushes
 * (a diagnostic: what concurrent pushes cost the coordinator).
 *
 * Measured:
 *  - the coordinator's memory: VmRSS of /proc/PID/status every --rss-ms, with the largest value
 *    in each stage (idle; join; pull, pull+push, push: some client is pulling / pushing; commit:
 *    none is; final: the last round is committed, the final model is being written; done), and
 *    VmHWM (the kernel's peak), read last while the process still lived: the peak reported is the
 *    larger of the two. The idle RSS is read --settle seconds after the server reported its port,
 *    before any client joined; the VmHWM at that moment is the start-up peak;
 *  - the rounds: each client records when it got its TRAIN task, began and ended its pull, began
 *    and ended its push; inotify on the checkpoint directory sees each commit's checkpoint begin
 *    (the temporary file created) and end (renamed into place), and the final model written. A
 *    round runs from the first TRAIN task any client got to the rename of its checkpoint; its
 *    parts: dispatch (until every client got its task), until every client holds the model
 *    (pull), then until every update was accepted (push), then until the checkpoint began
 *    (aggregate + server optimizer step; can be slightly negative: the coordinator may start
 *    before the last client has read its acknowledgement), the checkpoint, and from the rename to
 *    the next round's first task (select). A Status poller (every --status-ms) follows the phase
 *    and the counters, for the memory stages and as the fallback clock of the commits;
 *  - CPU seconds of the coordinator (its /proc/PID/stat over the rounds, and in all from rusage)
 *    and of this process (the clients): on a small machine both share the same cores.
 *
 *   fedprof-bench-coord [--server PATH] [--clients 100] [--rounds 10] [--dim 16] [--blocks 1]
 *                       [--heads 1] [--maxlen 20] [--n-items 1000 | --target-params N]
 *                       [--max-pulls 0] [--max-pushes 0] [--status-ms 20] [--rss-ms 50]
 *                       [--settle 1] [--timeout 1800] [--work DIR] [--keep] [--trace FILE] [--json]
 * --server: the fedprof-server binary (default $FEDPROF_SERVER, else fedprof-server next to this
 * program). --target-params: choose n_items so that the model has about N parameters (the item
 * table dominates); the count is checked against the one the coordinator announces. --trace: one
 * CSV line per memory sample. --json: one JSON object (bench/coord.sh tables it). Progress on a
 * TTY only. A benchmark, not a test: it fails only when the federation does not work (an RPC
 * refused, a model that is not what FedAvg must give, a failed round, the server dying), never
 * because the machine is slow. Every error is reported; the server child is stopped on every path
 * (and dies with this process: PR_SET_PDEATHSIG). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "common/cli.h"
#include "common/config.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/model.h"
#include "common/params.h"
#include "common/rng.h"
#include "common/tensor_stream.h"
#include "common/wire.h"
#include "fedprof.pb-c.h"

#define PROG "fedprof-bench-coord"
#define MAX_CLIENTS 1000
#define EXTRA_ROUNDS 16                       /* failed (retried) rounds tolerated in the round-id tables */
#define RPC_DEADLINE_MS 30000                 /* Join */
#define STATUS_DEADLINE_MS 5000               /* Status (blocks while the coordinator checkpoints) */
#define POLL_WAIT_MS 10000                    /* GetTask long poll, as fedprof-client join */
#define STREAM_DEADLINE_MS ((int64_t)1800000) /* PullModel, PushUpdate */
#define VERIFY_MAX_PARAMS ((size_t)4 << 20)
#define MAX_EVENTS 200000
#define SERVER_START_S 300.0

/* ---- shared state --------------------------------------------------------------------------------- */

typedef struct {
    double task, pull_req, pull0, pull1, push_req, push0, push1; /* fp_now() times; 0: did not happen */
} ctimes_t;

typedef struct {
    int idx;
    pthread_t th;
    int started;
    fp_wire_channel_t *ch;
    char name[32];
    char session[FP_TS_SESSION_MAX + 1];
    ctimes_t *t;     /* [max_round_id + 1] */
    int rounds_done;
    int waits;       /* GetTask answers WAIT */
    double join0, join1; /* the Join call */
    float *prev;     /* client 0 with verification: the model it pulled last */
    uint64_t prev_version;
    double verify_max_err;
    int verified;
} client_t;

typedef struct {
    double t;                      /* fp_now() when the answer came */
    double t_prev;                 /* the previous successful poll's answer time */
    uint64_t round, committed;
    int phase, received;
} event_t;

typedef struct {
    double t;
    long rss_kb, hwm_kb;
    double cpu_s;
    int phase, committed, pulls, pushes;
} sample_t;

typedef struct {
    /* options */
    int n_clients, rounds, max_pulls, max_pushes, status_ms, rss_ms, json;
    /* the model */
    size_t P;
    uint64_t layout_hash;
    float *delta;
    int max_round_id;
    /* the server */
    char target[64];
    _Atomic pid_t pid; /* read by the monitors while the main thread may clear it */
    int port;
    /* the receive-buffer pool */
    pthread_mutex_t pool_mu;
    pthread_cond_t pool_cv;
    float **bufs;
    int n_bufs, *free_list, n_free;
    int push_tokens; /* pushes that may start now (--max-pushes), under pool_mu */
    /* run state */
    atomic_int abort_flag, stop_monitors;
    atomic_int phase, committed, received, pulls_active, pushes_active, clients_done;
    pthread_mutex_t err_mu;
    char err[1024];
    /* status events */
    event_t *ev;
    int n_ev;
    uint64_t status_ok, status_err; /* Status answers; failed Status calls */
    double status_max_s;            /* the slowest Status answer (the coordinator's lock held) */
    int status_max_phase;           /* the phase that answer reported */
    Fedprof__V1__StatusResponse *last_status; /* the last answer (owned) */
    pthread_mutex_t status_mu;
    /* memory samples */
    sample_t *smp;
    int n_smp, cap_smp;
    long last_hwm_kb, max_rss_kb;
    double last_cpu_s;
    double t_clients;             /* when the clients were started (0 before) */
    double t_end;                 /* fp_now() at which the run gives up */
    /* checkpoint files (inotify on the checkpoint directory): k-th save of the coordinator state
     * begun (its temporary file created) and committed (renamed into place); the final model */
    double *ck_begin, *ck_done;
    int n_ck_begin, n_ck_done, cap_ck;
    double final_begin, final_done;
    int inotify_fd;
} bench_t;

static bench_t B;
static volatile sig_atomic_t g_child = 0, g_signal = 0;

static void bench_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void bench_error(const char *fmt, ...)
{
    pthread_mutex_lock(&B.err_mu);
    if (!B.err[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(B.err, sizeof B.err, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&B.err_mu);
    atomic_store(&B.abort_flag, 1);
    pthread_mutex_lock(&B.pool_mu);
    pthread_cond_broadcast(&B.pool_cv);
    pthread_mutex_unlock(&B.pool_mu);
}

static int aborted(void)
{
    return atomic_load(&B.abort_flag);
}

/* A stream deadline: STREAM_DEADLINE_MS, but never past the run's --timeout (a call to a server
 * that was stopped waits for it to come back until its deadline: wait-for-ready). */
static int64_t stream_deadline(void)
{
    double left = B.t_end - fp_now();
    int64_t ms = left > 1 ? (int64_t)(left * 1000) : 1000;
    return ms < STREAM_DEADLINE_MS ? ms : STREAM_DEADLINE_MS;
}

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* SIGINT/SIGTERM/SIGHUP: the server child is killed at once (async-signal-safe) and the run ends
 * through its normal error path (threads joined, work directory removed); a second signal ends
 * this process with the default action. */
static void on_signal(int sig)
{
    pid_t p = (pid_t)g_child;
    if (p > 0)
        kill(p, SIGKILL);
    if (g_signal) {
        signal(sig, SIG_DFL);
        raise(sig);
    }
    g_signal = sig;
}

/* ---- the server process ------------------------------------------------------------------------ */

static int read_proc_status(pid_t pid, long *rss_kb, long *hwm_kb)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[256];
    int got = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmRSS:", 6)) {
            *rss_kb = strtol(line + 6, NULL, 10);
            got |= 1;
        } else if (!strncmp(line, "VmHWM:", 6)) {
            *hwm_kb = strtol(line + 6, NULL, 10);
            got |= 2;
        }
    }
    fclose(f);
    return got == 3 ? 0 : -1; /* a zombie has no Vm lines */
}

static int read_proc_cpu(pid_t pid, double *cpu_s)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    char state = 0;
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 1, " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &state, &ut, &st) != 3)
        return -1;
    *cpu_s = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    return 0;
}

/* Stop the child: SIGTERM, up to 5 s, then SIGKILL; reaps it. Says so when it had already ended
 * by itself (a client's error is then only the symptom). */
static void kill_server(void)
{
    pid_t p = B.pid;
    if (p <= 0)
        return;
    int ws = 0;
    if (waitpid(p, &ws, WNOHANG) == p) {
        if (!g_signal) /* else this process killed it */
            fprintf(stderr, PROG ": the server had ended (%s %d)\n", WIFEXITED(ws) ? "exit status" : "signal",
                WIFEXITED(ws) ? WEXITSTATUS(ws) : WTERMSIG(ws));
        B.pid = 0;
        g_child = 0;
        return;
    }
    kill(p, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(p, NULL, WNOHANG) == p) {
            B.pid = 0;
            g_child = 0;
            return;
        }
        sleep_s(0.05);
    }
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
    B.pid = 0;
    g_child = 0;
}

static int start_server(const char *exe, char *const argv[], const char *log_path)
{
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        fprintf(stderr, PROG ": cannot create %s: %s\n", log_path, strerror(errno));
        return -1;
    }
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, PROG ": fork: %s\n", strerror(errno));
        close(fd);
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* the server never outlives the bench */
        if (getppid() != parent)
            _exit(127);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) {
            dup2(nul, 0);
            close(nul);
        }
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        execv(exe, argv);
        const char msg[] = PROG ": exec of the server failed\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    close(fd);
    B.pid = pid;
    g_child = pid;
    return 0;
}

static void print_log_tail(const char *log_path)
{
    FILE *f = fopen(log_path, "r");
    if (!f)
        return;
    char buf[4096];
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, sz > (long)sizeof buf - 1 ? sz - (long)sizeof buf + 1 : 0, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *start = buf;
    if (sz > (long)sizeof buf - 1 && strchr(buf, '\n')) /* from the first whole line */
        start = strchr(buf, '\n') + 1;
    fprintf(stderr, "---- server log (%s), last lines ----\n%s%s---- end of server log ----\n", log_path, start,
            n && buf[n - 1] == '\n' ? "" : "\n");
}

/* Wait for "on port N" in the server's log; 0 with B.port set, -1 when it died or never said. */
static int wait_port(const char *log_path)
{
    double t0 = fp_now();
    while (fp_now() - t0 < SERVER_START_S) {
        if (g_signal) {
            fprintf(stderr, PROG ": interrupted by signal %d\n", (int)g_signal);
            return -1;
        }
        int status = 0;
        pid_t w = waitpid(B.pid, &status, WNOHANG);
        if (w == B.pid) {
            B.pid = 0;
            g_child = 0;
            fprintf(stderr, PROG ": the server exited before serving (%s %d)\n",
                    WIFEXITED(status) ? "exit status" : "signal",
                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            print_log_tail(log_path);
            return -1;
        }
        FILE *f = fopen(log_path, "r");
        if (f) {
            char line[1024];
            while (fgets(line, sizeof line, f)) {
                const char *p = strstr(line, " on port ");
                int port = 0;
                if (p && sscanf(p, " on port %d", &port) == 1 && port > 0 && port < 65536) {
                    fclose(f);
                    B.port = port;
                    return 0;
                }
            }
            fclose(f);
        }
        sleep_s(0.05);
    }
    fprintf(stderr, PROG ": the server did not report its port within %.0f s\n", SERVER_START_S);
    print_log_tail(log_path);
    return -1;
}

/* ---- monitors: Status poller and memory sampler ------------------------------------------------- */

static const char *phase_name(int p)
{
    switch (p) {
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_WAITING: return "waiting";
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_SELECT: return "select";
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_TRAIN: return "train";
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_AGGREGATE: return "aggregate";
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_COMMIT: return "commit";
    case FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_DONE: return "done";
    default: return "unknown";
    }
}

static void *status_main(void *arg)
{
    (void)arg;
    fp_wire_creds_t *cr = NULL;
    fp_wire_channel_t *ch = NULL;
    if (fp_wire_creds_insecure(&cr) != FP_OK || fp_wire_channel_create(B.target, cr, 0, &ch) != FP_OK) {
        bench_error("status poller: %s", fp_error_message());
        fp_wire_creds_destroy(cr);
        return NULL;
    }
    fp_wire_creds_destroy(cr);
    Fedprof__V1__StatusRequest req = FEDPROF__V1__STATUS_REQUEST__INIT;
    req.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    uint8_t buf[16];
    size_t n = fedprof__v1__status_request__pack(&req, buf);
    uint64_t round = UINT64_MAX, committed = UINT64_MAX;
    int phase = -1;
    double t_prev = 0;
    /* Stops once DONE was seen (the server then goes away; a call to it would wait for its deadline). */
    while (!atomic_load(&B.stop_monitors) && !aborted() &&
           atomic_load(&B.phase) != FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_DONE) {
        uint8_t *resp = NULL;
        size_t rn = 0;
        int code = 0;
        char msg[FP_WIRE_STATUS_MSG_MAX] = "";
        double t_call = fp_now();
        fp_status st = fp_wire_call_unary(ch, FP_WIRE_METHOD_STATUS, buf, n, STATUS_DEADLINE_MS, &resp, &rn, &code, msg);
        double t = fp_now();
        Fedprof__V1__StatusResponse *r = st == FP_OK ? fedprof__v1__status_response__unpack(NULL, rn, resp) : NULL;
        free(resp);
        if (!r) {
            pthread_mutex_lock(&B.status_mu);
            B.status_err++;
            pthread_mutex_unlock(&B.status_mu);
            sleep_s(0.01);
            continue;
        }
        atomic_store(&B.phase, (int)r->phase);
        atomic_store(&B.committed, (int)r->committed_rounds);
        atomic_store(&B.received, (int)r->received);
        pthread_mutex_lock(&B.status_mu);
        B.status_ok++;
        if (t - t_call > B.status_max_s) {
            B.status_max_s = t - t_call;
            B.status_max_phase = (int)r->phase;
        }
        if ((r->round_id != round || (int)r->phase != phase || r->committed_rounds != committed) &&
            B.n_ev < MAX_EVENTS) {
            event_t *e = &B.ev[B.n_ev++];
            e->t = t;
            e->t_prev = t_prev > 0 ? t_prev : t;
            e->round = r->round_id;
            e->committed = r->committed_rounds;
            e->phase = (int)r->phase;
            e->received = (int)r->received;
            round = r->round_id;
            committed = r->committed_rounds;
            phase = (int)r->phase;
        }
        if (B.last_status)
            fedprof__v1__status_response__free_unpacked(B.last_status, NULL);
        B.last_status = r;
        pthread_mutex_unlock(&B.status_mu);
        t_prev = t;
        sleep_s(B.status_ms / 1000.0);
    }
    fp_wire_channel_destroy(ch);
    return NULL;
}

static void *rss_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&B.stop_monitors)) {
        pid_t p = B.pid;
        long rss = 0, hwm = 0;
        double cpu = 0;
        if (p > 0 && read_proc_status(p, &rss, &hwm) == 0) {
            int have_cpu = read_proc_cpu(p, &cpu) == 0;
            pthread_mutex_lock(&B.status_mu);
            B.last_hwm_kb = hwm;
            if (rss > B.max_rss_kb)
                B.max_rss_kb = rss;
            if (have_cpu)
                B.last_cpu_s = cpu;
            if (B.n_smp == B.cap_smp) {
                int cap = B.cap_smp ? 2 * B.cap_smp : 4096;
                sample_t *s = realloc(B.smp, (size_t)cap * sizeof *s);
                if (s) {
                    B.smp = s;
                    B.cap_smp = cap;
                }
            }
            if (B.n_smp < B.cap_smp) {
                sample_t *s = &B.smp[B.n_smp++];
                s->t = fp_now();
                s->rss_kb = rss;
                s->hwm_kb = hwm;
                s->cpu_s = have_cpu ? cpu : B.last_cpu_s;
                s->phase = atomic_load(&B.phase);
                s->committed = atomic_load(&B.committed);
                s->pulls = atomic_load(&B.pulls_active);
                s->pushes = atomic_load(&B.pushes_active);
            }
            pthread_mutex_unlock(&B.status_mu);
        }
        sleep_s(B.rss_ms / 1000.0);
    }
    return NULL;
}

/* Watches the checkpoint directory: the coordinator saves its state once per committed round
 * (common/checkpoint: a temporary "coordinator.safetensors.tmp.XXXXXX" written, fsync'd, renamed
 * over coordinator.safetensors, the directory fsync'd), and writes model.safetensors at the end.
 * Creation and rename times bracket the checkpoint of each commit to within microseconds, with no
 * load on the server. */
static void *watch_main(void *arg)
{
    (void)arg;
    static const char state[] = "coordinator.safetensors", model[] = "model.safetensors";
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    while (!atomic_load(&B.stop_monitors)) {
        struct pollfd pf = {B.inotify_fd, POLLIN, 0};
        int pr = poll(&pf, 1, 50);
        if (pr <= 0)
            continue;
        double t = fp_now();
        ssize_t n = read(B.inotify_fd, buf, sizeof buf);
        if (n <= 0)
            continue;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *e = (const struct inotify_event *)(void *)p;
            p += sizeof *e + e->len;
            if (!e->len)
                continue;
            int is_state = !strncmp(e->name, state, sizeof state - 1);
            int is_model = !strncmp(e->name, model, sizeof model - 1);
            int tmp = strstr(e->name, ".tmp.") != NULL;
            pthread_mutex_lock(&B.status_mu);
            if ((e->mask & IN_CREATE) && tmp && is_state && B.n_ck_begin < B.cap_ck)
                B.ck_begin[B.n_ck_begin++] = t;
            else if ((e->mask & IN_MOVED_TO) && !tmp && is_state && !strcmp(e->name, state) && B.n_ck_done < B.cap_ck)
                B.ck_done[B.n_ck_done++] = t;
            else if ((e->mask & IN_CREATE) && tmp && is_model)
                B.final_begin = t;
            else if ((e->mask & IN_MOVED_TO) && !strcmp(e->name, model))
                B.final_done = t;
            pthread_mutex_unlock(&B.status_mu);
        }
    }
    return NULL;
}

/* ---- receive buffers ---------------------------------------------------------------------------- */

static float *buf_take(int *slot)
{
    pthread_mutex_lock(&B.pool_mu);
    while (B.n_free == 0 && !aborted())
        pthread_cond_wait(&B.pool_cv, &B.pool_mu);
    if (aborted()) {
        pthread_mutex_unlock(&B.pool_mu);
        return NULL;
    }
    int i = B.free_list[--B.n_free];
    pthread_mutex_unlock(&B.pool_mu);
    *slot = i; /* every buffer was allocated (and touched) before the clients started */
    return B.bufs[i];
}

static void buf_give(int slot)
{
    pthread_mutex_lock(&B.pool_mu);
    B.free_list[B.n_free++] = slot;
    pthread_cond_broadcast(&B.pool_cv);
    pthread_mutex_unlock(&B.pool_mu);
}

/* --max-pushes: wait for a push token; 0 on abort. */
static int push_take(void)
{
    pthread_mutex_lock(&B.pool_mu);
    while (B.push_tokens == 0 && !aborted())
        pthread_cond_wait(&B.pool_cv, &B.pool_mu);
    int ok = !aborted();
    if (ok)
        B.push_tokens--;
    pthread_mutex_unlock(&B.pool_mu);
    return ok;
}

static void push_give(void)
{
    pthread_mutex_lock(&B.pool_mu);
    B.push_tokens++;
    pthread_cond_broadcast(&B.pool_cv);
    pthread_mutex_unlock(&B.pool_mu);
}

/* ---- a client ----------------------------------------------------------------------------------- */

static int client_join(client_t *c)
{
    Fedprof__V1__JoinRequest req = FEDPROF__V1__JOIN_REQUEST__INIT;
    Fedprof__V1__Capabilities cap = FEDPROF__V1__CAPABILITIES__INIT;
    req.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    cap.max_message_bytes = FP_WIRE_DEFAULT_MAX_MSG;
    cap.max_parameters = FP_TS_MAX_PARAMS;
    cap.discrete_gaussian = 1;
    cap.client_version = (char *)(uintptr_t)PROG;
    req.capabilities = &cap;
    req.num_examples_bucket = 5;
    req.insecure_name = c->name;
    uint8_t buf[512];
    if (fedprof__v1__join_request__get_packed_size(&req) > sizeof buf) {
        bench_error("%s: JoinRequest too large", c->name);
        return -1;
    }
    size_t n = fedprof__v1__join_request__pack(&req, buf);
    uint8_t *resp = NULL;
    size_t rn = 0;
    int code = 0;
    char msg[FP_WIRE_STATUS_MSG_MAX] = "";
    if (fp_wire_call_unary(c->ch, FP_WIRE_METHOD_JOIN, buf, n, RPC_DEADLINE_MS, &resp, &rn, &code, msg) != FP_OK) {
        bench_error("%s: Join: %s: %s", c->name, fp_wire_code_name(code), msg[0] ? msg : fp_error_message());
        return -1;
    }
    Fedprof__V1__JoinResponse *jr = fedprof__v1__join_response__unpack(NULL, rn, resp);
    free(resp);
    if (!jr || !jr->session || !jr->session[0] || strlen(jr->session) > FP_TS_SESSION_MAX) {
        if (jr)
            fedprof__v1__join_response__free_unpacked(jr, NULL);
        bench_error("%s: Join: no usable JoinResponse", c->name);
        return -1;
    }
    snprintf(c->session, sizeof c->session, "%s", jr->session);
    fedprof__v1__join_response__free_unpacked(jr, NULL);
    return 0;
}

/* One GetTask long poll until TRAIN (1) or DONE (0); -1 on error or abort. */
static int client_task(client_t *c, uint64_t last_round, uint64_t *round_id, uint64_t *version)
{
    while (!aborted()) {
        Fedprof__V1__GetTaskRequest req = FEDPROF__V1__GET_TASK_REQUEST__INIT;
        req.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
        req.last_round_id = last_round;
        req.max_wait_ms = POLL_WAIT_MS;
        req.session = c->session;
        uint8_t buf[256];
        size_t n = fedprof__v1__get_task_request__pack(&req, buf);
        uint8_t *resp = NULL;
        size_t rn = 0;
        int code = 0;
        char msg[FP_WIRE_STATUS_MSG_MAX] = "";
        double t0 = fp_now();
        if (fp_wire_call_unary(c->ch, FP_WIRE_METHOD_GET_TASK, buf, n, POLL_WAIT_MS + RPC_DEADLINE_MS, &resp, &rn,
                               &code, msg) != FP_OK) {
            bench_error("%s: GetTask: %s: %s", c->name, fp_wire_code_name(code), msg[0] ? msg : fp_error_message());
            return -1;
        }
        double t1 = fp_now();
        Fedprof__V1__GetTaskResponse *t = fedprof__v1__get_task_response__unpack(NULL, rn, resp);
        free(resp);
        if (!t) {
            bench_error("%s: GetTask: not a GetTaskResponse", c->name);
            return -1;
        }
        int action = t->action, ret = -2;
        if (action == FEDPROF__V1__TASK_ACTION__TASK_ACTION_TRAIN) {
            if (!t->model || t->model->parameter_count != B.P || t->model->layout_hash != B.layout_hash) {
                bench_error("%s: TRAIN for a model of %" PRIu64 " parameters (layout %016" PRIx64
                            "), this bench computed %zu (%016" PRIx64 ")",
                            c->name, t->model ? t->model->parameter_count : 0, t->model ? t->model->layout_hash : 0,
                            B.P, B.layout_hash);
                ret = -1;
            } else if (t->round_id < 1 || t->round_id > (uint64_t)B.max_round_id) {
                bench_error("%s: round id %" PRIu64 " beyond %d (too many failed rounds?)", c->name, t->round_id,
                            B.max_round_id);
                ret = -1;
            } else {
                *round_id = t->round_id;
                *version = t->model_version;
                c->t[t->round_id].task = t1;
                ret = 1;
            }
        } else if (action == FEDPROF__V1__TASK_ACTION__TASK_ACTION_DONE) {
            ret = 0;
        } else if (action == FEDPROF__V1__TASK_ACTION__TASK_ACTION_WAIT) {
            c->waits++;
            /* a long poll that came back early: honour retry_after */
            if ((t1 - t0) * 1000.0 < POLL_WAIT_MS / 2.0)
                sleep_s((t->retry_after_ms ? t->retry_after_ms : 200) / 1000.0);
        } else {
            bench_error("%s: GetTask: unknown action %d", c->name, action);
            ret = -1;
        }
        fedprof__v1__get_task_response__free_unpacked(t, NULL);
        if (ret != -2)
            return ret;
    }
    return -1;
}

typedef struct {
    fp_ts_reader_t *r;
    fp_status st;
    char msg[512];
} pull_ctx_t;

static int on_model_msg(const uint8_t *data, size_t len, void *user)
{
    pull_ctx_t *p = user;
    p->st = fp_ts_reader_feed(p->r, data, len);
    if (p->st != FP_OK) {
        snprintf(p->msg, sizeof p->msg, "%s", fp_error_message());
        return 1;
    }
    return 0;
}

static int client_pull(client_t *c, uint64_t round_id, uint64_t version)
{
    ctimes_t *tm = &c->t[round_id];
    tm->pull_req = fp_now();
    int slot = -1;
    float *dst = buf_take(&slot);
    if (!dst)
        return -1;
    tm->pull0 = fp_now();
    atomic_fetch_add(&B.pulls_active, 1);
    Fedprof__V1__PullModelRequest req = FEDPROF__V1__PULL_MODEL_REQUEST__INIT;
    req.protocol_version = FEDPROF__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    req.round_id = round_id;
    req.model_version = version;
    req.session = c->session;
    uint8_t buf[256];
    size_t n = fedprof__v1__pull_model_request__pack(&req, buf);
    fp_ts_reader_opts_t ro = {FP_TS_MODEL, B.P, B.P, 1, B.layout_hash, dst, B.P};
    pull_ctx_t pc = {NULL, FP_OK, ""};
    int rc = -1;
    if (fp_ts_reader_create(&ro, &pc.r) != FP_OK) {
        bench_error("%s: reader: %s", c->name, fp_error_message());
        goto out;
    }
    int code = 0;
    char msg[FP_WIRE_STATUS_MSG_MAX] = "";
    fp_status st = fp_wire_call_server_stream(c->ch, FP_WIRE_METHOD_PULL_MODEL, buf, n, stream_deadline(),
                                              on_model_msg, &pc, &code, msg);
    if (pc.st != FP_OK) {
        bench_error("%s: PullModel round %" PRIu64 ": the model stream was refused: %s", c->name, round_id, pc.msg);
        goto out;
    }
    if (st != FP_OK) {
        bench_error("%s: PullModel round %" PRIu64 ": %s: %s", c->name, round_id, fp_wire_code_name(code),
                    msg[0] ? msg : fp_error_message());
        goto out;
    }
    if (fp_ts_reader_finish(pc.r) != FP_OK) {
        bench_error("%s: PullModel round %" PRIu64 ": %s", c->name, round_id, fp_error_message());
        goto out;
    }
    const fp_ts_header_t *h = fp_ts_reader_header(pc.r);
    if (h->model_version != version) {
        bench_error("%s: pulled model version %" PRIu64 ", the task said %" PRIu64, c->name, h->model_version, version);
        goto out;
    }
    tm->pull1 = fp_now();
    /* Client 0 of a small model: the new model is exactly the previous one plus the update. */
    if (c->prev) {
        if (c->prev_version && version == c->prev_version + 1) {
            double worst = 0;
            for (size_t i = 0; i < B.P; i++) {
                float expect = c->prev[i] + B.delta[i];
                double e = fabs((double)dst[i] - (double)expect);
                if (e > worst)
                    worst = e;
            }
            if (worst > c->verify_max_err)
                c->verify_max_err = worst;
            c->verified++;
            if (!(worst <= 1e-6)) {
                bench_error("%s: model version %" PRIu64 " differs from version %" PRIu64
                            " + the update by %.3g: FedAvg of identical updates must give exactly that",
                            c->name, version, c->prev_version, worst);
                goto out;
            }
        }
        memcpy(c->prev, dst, B.P * sizeof(float));
        c->prev_version = version;
    }
    rc = 0;
out:
    atomic_fetch_sub(&B.pulls_active, 1);
    fp_ts_reader_destroy(pc.r);
    buf_give(slot);
    return rc;
}

static int client_push(client_t *c, uint64_t round_id, uint64_t version)
{
    ctimes_t *tm = &c->t[round_id];
    fp_ts_header_t *h = calloc(1, sizeof *h); /* ~50 KiB (ledger text): not on the stack */
    if (!h) {
        bench_error("%s: out of memory", c->name);
        return -1;
    }
    h->kind = FP_TS_UPDATE;
    h->protocol_version = 1;
    h->round_id = round_id;
    h->model_version = version;
    h->param_count = B.P;
    h->layout_hash = B.layout_hash;
    h->chunk_bytes = FP_TS_PUSH_CHUNK_BYTES; /* as fedprof-client join */
    h->example_count_bucket = 5;
    h->local_steps = 1;
    snprintf(h->session, sizeof h->session, "%s", c->session);
    tm->push_req = fp_now();
    if (!push_take()) {
        free(h);
        return -1;
    }
    tm->push0 = fp_now();
    atomic_fetch_add(&B.pushes_active, 1);
    int rc = -1;
    fp_ts_writer_t *w = NULL;
    fp_wire_stream_t *s = NULL;
    if (fp_ts_writer_create(h, B.delta, &w) != FP_OK) {
        bench_error("%s: writer: %s", c->name, fp_error_message());
        goto out;
    }
    if (fp_wire_stream_open(c->ch, FP_WIRE_METHOD_PUSH_UPDATE, stream_deadline(), &s) != FP_OK) {
        bench_error("%s: PushUpdate: %s", c->name, fp_error_message());
        goto out;
    }
    fp_status wst = FP_OK;
    for (;;) {
        const uint8_t *m = NULL;
        size_t n = 0;
        if ((wst = fp_ts_writer_next(w, &m, &n)) != FP_OK || !m)
            break;
        if (fp_wire_stream_write(s, m, n) != FP_OK)
            break; /* the call ended early: finish says why */
    }
    if (wst != FP_OK) {
        bench_error("%s: writer: %s", c->name, fp_error_message());
        goto out;
    }
    uint8_t *resp = NULL;
    size_t rn = 0;
    int code = 0;
    char msg[FP_WIRE_STATUS_MSG_MAX] = "";
    if (fp_wire_stream_finish(s, &resp, &rn, &code, msg) != FP_OK) {
        bench_error("%s: PushUpdate round %" PRIu64 " refused: %s: %s", c->name, round_id, fp_wire_code_name(code),
                    msg[0] ? msg : fp_error_message());
        goto out;
    }
    Fedprof__V1__PushUpdateResponse *r = fedprof__v1__push_update_response__unpack(NULL, rn, resp);
    free(resp);
    if (!r || !r->accepted || r->round_id != round_id) {
        bench_error("%s: PushUpdate round %" PRIu64 ": the coordinator did not confirm the update", c->name,
                    round_id);
        if (r)
            fedprof__v1__push_update_response__free_unpacked(r, NULL);
        goto out;
    }
    fedprof__v1__push_update_response__free_unpacked(r, NULL);
    tm->push1 = fp_now();
    rc = 0;
out:
    atomic_fetch_sub(&B.pushes_active, 1);
    push_give();
    fp_wire_stream_destroy(s);
    fp_ts_writer_destroy(w);
    free(h);
    return rc;
}

static void *client_main(void *arg)
{
    client_t *c = arg;
    fp_wire_creds_t *cr = NULL;
    /* gRPC shares one connection (subchannel) among the channels of a process whose arguments are
     * equal, and the coordinator allows 64 streams per connection: 100 clients in one process would
     * then queue behind each other's long polls. A message limit that differs per client (by a few
     * bytes above the default; every message here is far smaller) gives each client its own TCP
     * connection, as separate client processes have. */
    size_t max_msg = FP_WIRE_DEFAULT_MAX_MSG + (size_t)c->idx + 1;
    if (fp_wire_creds_insecure(&cr) != FP_OK || fp_wire_channel_create(B.target, cr, max_msg, &c->ch) != FP_OK) {
        bench_error("%s: channel: %s", c->name, fp_error_message());
        fp_wire_creds_destroy(cr);
        return NULL;
    }
    fp_wire_creds_destroy(cr);
    c->join0 = fp_now();
    if (client_join(c) != 0)
        return NULL;
    c->join1 = fp_now();
    uint64_t last = 0;
    for (;;) {
        uint64_t round_id = 0, version = 0;
        int r = client_task(c, last, &round_id, &version);
        if (r <= 0) {
            if (r == 0)
                atomic_fetch_add(&B.clients_done, 1);
            return NULL;
        }
        if (aborted() || client_pull(c, round_id, version) != 0 || aborted() ||
            client_push(c, round_id, version) != 0)
            return NULL;
        c->rounds_done++;
        last = round_id;
    }
}

/* ---- statistics ----------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* q-quantile with linear interpolation (numpy's default) of v[0..n), sorted in place. */
static double quantile(double *v, int n, double q)
{
    if (n <= 0)
        return NAN;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double pos = q * (n - 1);
    int i = (int)floor(pos);
    if (i >= n - 1)
        return v[n - 1];
    return v[i] + (pos - i) * (v[i + 1] - v[i]);
}

static double mean(const double *v, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += v[i];
    return n ? s / n : NAN;
}

static json_object *jnum(double x)
{
    return isfinite(x) ? json_object_new_double(x) : json_object_new_null();
}

/* mean, p50, p90, min, max of v[0..n) as a JSON object (v is sorted). */
static json_object *jstats(double *v, int n)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "n", json_object_new_int(n));
    json_object_object_add(o, "mean", jnum(mean(v, n)));
    json_object_object_add(o, "p50", jnum(quantile(v, n, 0.5)));
    json_object_object_add(o, "p90", jnum(quantile(v, n, 0.9)));
    json_object_object_add(o, "min", jnum(n ? v[0] : NAN));
    json_object_object_add(o, "max", jnum(n ? v[n - 1] : NAN));
    return o;
}

/* Commit time of the k-th commit: midpoint of the last poll before the counter reached k and the
 * first at or after; NAN if never seen. */
static double commit_time(uint64_t k, double *resolution)
{
    for (int i = 0; i < B.n_ev; i++)
        if (B.ev[i].committed >= k) {
            *resolution = B.ev[i].t - B.ev[i].t_prev;
            return 0.5 * (B.ev[i].t + B.ev[i].t_prev);
        }
    return NAN;
}

static double cpu_at(double t)
{
    double c = NAN;
    for (int i = 0; i < B.n_smp; i++) {
        if (B.smp[i].t > t)
            return isnan(c) ? B.smp[i].cpu_s : c;
        c = B.smp[i].cpu_s;
    }
    return c;
}

enum { ST_IDLE, ST_JOIN, ST_PULL, ST_PULLPUSH, ST_PUSH, ST_COMMIT, ST_FINAL, ST_DONE, ST_N };
static const char *const stage_names[ST_N] = {"idle", "join", "pull", "pull+push", "push", "commit", "final", "done"};

static int stage_of(const sample_t *s)
{
    if (B.t_clients <= 0 || s->t < B.t_clients)
        return ST_IDLE;
    if (s->phase == FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_DONE)
        return ST_DONE;
    if (s->committed >= B.rounds)
        return ST_FINAL; /* the last round is committed and checkpointed: the final model is written */
    if (s->pulls > 0 && s->pushes > 0)
        return ST_PULLPUSH;
    if (s->pulls > 0)
        return ST_PULL;
    if (s->pushes > 0)
        return ST_PUSH;
    if (s->phase == FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_TRAIN ||
        s->phase == FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_AGGREGATE ||
        s->phase == FEDPROF__V1__ROUND_PHASE__ROUND_PHASE_COMMIT)
        return ST_COMMIT;
    return ST_JOIN;
}

/* ---- the report ------------------------------------------------------------------------------------ */

typedef struct {
    double t_start, t_port, t_clients_end, t_exit, model_mb;
    long idle_rss_kb, idle_hwm_kb;
    int n_items, dim, blocks, heads, maxlen;
    const char *trace;
    struct rusage ru0, ru1, ruc;
} run_t;

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

/* Per-round series, filled by report(). */
enum { S_ROUND, S_DISPATCH, S_PULL, S_PUSH, S_AGG, S_CKPT, S_COMMIT, S_SELECT, S_PERIOD, S_N };
static const char *const series_names[S_N] = {"round_s", "dispatch_s", "pull_s", "push_s", "aggregate_s",
                                               "checkpoint_s", "commit_s", "select_s", "period_s"};

static void write_trace(const char *path, double t0)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, PROG ": cannot write %s: %s\n", path, strerror(errno));
        return;
    }
    fprintf(f, "t_s,rss_mb,hwm_mb,cpu_s,phase,committed,pulls,pushes,stage\n");
    for (int i = 0; i < B.n_smp; i++) {
        const sample_t *s = &B.smp[i];
        fprintf(f, "%.3f,%.1f,%.1f,%.2f,%s,%d,%d,%d,%s\n", s->t - t0, s->rss_kb * 1024.0 / 1e6,
                s->hwm_kb * 1024.0 / 1e6, s->cpu_s, phase_name(s->phase), s->committed, s->pulls, s->pushes,
                stage_names[stage_of(s)]);
    }
    if (fclose(f) != 0)
        fprintf(stderr, PROG ": writing %s failed\n", path);
}

/* Analyse the run and print it (text or JSON). -1 with B.err set when the timings are incomplete. */
static int report(client_t *cl, const run_t *ri)
{
    const int nr = B.rounds, clients = B.n_clients;
    const Fedprof__V1__StatusResponse *ls = B.last_status;
    uint64_t failed = ls ? ls->failed_rounds : 0, rejected = 0;
    for (size_t i = 0; ls && i < ls->n_rejections; i++)
        rejected += ls->rejections[i]->count;
    if (failed) {
        bench_error("%" PRIu64 " round(s) failed and were retried (round ids and commits no longer line up)", failed);
        return -1;
    }
    int use_watch = B.n_ck_done >= nr && B.n_ck_begin >= nr;
    double *ser[S_N], *cpull = NULL, *cpush = NULL, *cwait = NULL, *cpwait = NULL, *first = NULL, *commit = NULL;
    int nser[S_N] = {0}, ncl = 0, rc = -1;
    for (int k = 0; k < S_N; k++)
        ser[k] = calloc((size_t)nr + 1, sizeof(double));
    cpull = calloc((size_t)clients * (size_t)nr, sizeof(double));
    cpush = calloc((size_t)clients * (size_t)nr, sizeof(double));
    cwait = calloc((size_t)clients * (size_t)nr, sizeof(double));
    cpwait = calloc((size_t)clients * (size_t)nr, sizeof(double));
    first = calloc((size_t)nr + 2, sizeof(double));
    commit = calloc((size_t)nr + 2, sizeof(double));
    json_object *o = json_object_new_object(), *per = json_object_new_array();
    for (int k = 0; k < S_N; k++)
        if (!ser[k])
            goto out;
    if (!cpull || !cpush || !cwait || !cpwait || !first || !commit) {
        bench_error("out of memory");
        goto out;
    }
    double worst_res = 0;
    for (int r = 1; r <= nr; r++) {
        double ft = INFINITY, lt = 0, lpull = 0, lpush = 0;
        for (int i = 0; i < clients; i++) {
            const ctimes_t *t = &cl[i].t[r];
            if (t->task <= 0 || t->pull1 <= 0 || t->push1 <= 0) {
                bench_error("%s has no complete timing for round %d", cl[i].name, r);
                goto out;
            }
            ft = fmin(ft, t->task);
            lt = fmax(lt, t->task);
            lpull = fmax(lpull, t->pull1);
            lpush = fmax(lpush, t->push1);
            cpull[ncl] = t->pull1 - t->pull0;
            cpush[ncl] = t->push1 - t->push0;
            cpwait[ncl] = t->push0 - t->push_req;
            cwait[ncl++] = t->pull0 - t->pull_req;
        }
        double ct, cb = NAN, res = 0;
        if (use_watch) {
            ct = B.ck_done[r - 1];
            cb = B.ck_begin[r - 1];
        } else if (isnan(ct = commit_time((uint64_t)r, &res))) {
            bench_error("round %d was never seen committed", r);
            goto out;
        }
        worst_res = fmax(worst_res, res);
        first[r] = ft;
        commit[r] = ct;
        double v[S_N] = {ct - ft, lt - ft, lpull - ft, lpush - lpull, cb - lpush, ct - cb, ct - lpush, NAN, NAN};
        json_object *pr = json_object_new_object();
        json_object_object_add(pr, "round", json_object_new_int(r));
        for (int k = 0; k <= S_COMMIT; k++) {
            json_object_object_add(pr, series_names[k], jnum(v[k]));
            if (isfinite(v[k]))
                ser[k][nser[k]++] = v[k];
        }
        json_object_object_add(pr, "server_cpu_s", jnum(cpu_at(ct) - cpu_at(ft)));
        json_object_array_add(per, pr);
    }
    for (int r = 1; r < nr; r++) {
        double sel = first[r + 1] - commit[r], period = first[r + 1] - first[r];
        ser[S_SELECT][nser[S_SELECT]++] = sel;
        ser[S_PERIOD][nser[S_PERIOD]++] = period;
        json_object *pr = json_object_array_get_idx(per, (size_t)r - 1);
        json_object_object_add(pr, "select_next_s", jnum(sel));
        json_object_object_add(pr, "period_s", jnum(period));
    }
    double *steady = calloc((size_t)nr + 1, sizeof(double));
    int n_steady = 0;
    if (!steady) {
        bench_error("out of memory");
        goto out;
    }
    for (int r = 2; r <= nr; r++)
        steady[n_steady++] = commit[r] - first[r];

    long stage_max[ST_N] = {0};
    for (int i = 0; i < B.n_smp; i++) {
        int s = stage_of(&B.smp[i]);
        if (B.smp[i].rss_kb > stage_max[s])
            stage_max[s] = B.smp[i].rss_kb;
    }
    if (ri->trace)
        write_trace(ri->trace, ri->t_start);
    const double mb = 1024.0 / 1e6; /* kB -> MB */
    /* VmHWM is the kernel's peak of this process image; ru_maxrss of the reaped child also counts
     * the forked copy of the bench before its exec (small: the fork comes before any big buffer). */
    double peak_mb = fmax((double)B.max_rss_kb, (double)B.last_hwm_kb) * mb;
    double bench_cpu = tv_s(ri->ru1.ru_utime) - tv_s(ri->ru0.ru_utime) + tv_s(ri->ru1.ru_stime) - tv_s(ri->ru0.ru_stime);
    double server_cpu_total = tv_s(ri->ruc.ru_utime) + tv_s(ri->ruc.ru_stime);
    double span = commit[nr] - first[1], server_cpu_rounds = cpu_at(commit[nr]) - cpu_at(first[1]);
    int waits = 0;
    double *cjoin = calloc((size_t)clients, sizeof(double)), last_join = 0;
    if (!cjoin) {
        free(steady);
        bench_error("out of memory");
        goto out;
    }
    for (int i = 0; i < clients; i++) {
        waits += cl[i].waits;
        cjoin[i] = cl[i].join1 - cl[i].join0;
        last_join = fmax(last_join, cl[i].join1);
    }

    json_object_object_add(o, "clients", json_object_new_int(clients));
    json_object_object_add(o, "rounds", json_object_new_int(nr));
    json_object_object_add(o, "params", json_object_new_int64((int64_t)B.P));
    json_object_object_add(o, "model_mb", jnum(ri->model_mb));
    json_object_object_add(o, "n_items", json_object_new_int(ri->n_items));
    json_object_object_add(o, "dim", json_object_new_int(ri->dim));
    json_object_object_add(o, "blocks", json_object_new_int(ri->blocks));
    json_object_object_add(o, "heads", json_object_new_int(ri->heads));
    json_object_object_add(o, "maxlen", json_object_new_int(ri->maxlen));
    json_object_object_add(o, "max_pulls", json_object_new_int(B.max_pulls));
    json_object_object_add(o, "max_pushes", json_object_new_int(B.max_pushes));
    json_object_object_add(o, "status_ms", json_object_new_int(B.status_ms));
    json_object_object_add(o, "rss_ms", json_object_new_int(B.rss_ms));
    json_object_object_add(o, "server_start_s", jnum(ri->t_port - ri->t_start));
    json_object_object_add(o, "idle_rss_mb", jnum(ri->idle_rss_kb * mb));
    json_object_object_add(o, "startup_hwm_mb", jnum(ri->idle_hwm_kb * mb));
    json_object_object_add(o, "max_sampled_rss_mb", jnum(B.max_rss_kb * mb));
    json_object_object_add(o, "last_hwm_mb", jnum(B.last_hwm_kb * mb));
    json_object_object_add(o, "ru_maxrss_mb", jnum(ri->ruc.ru_maxrss * mb));
    json_object_object_add(o, "peak_rss_mb", jnum(peak_mb));
    json_object_object_add(o, "peak_over_model", jnum(peak_mb / ri->model_mb));
    json_object *sj = json_object_new_object();
    for (int s = 0; s < ST_N; s++)
        if (stage_max[s])
            json_object_object_add(sj, stage_names[s], jnum(stage_max[s] * mb));
    json_object_object_add(o, "max_rss_mb_by_stage", sj);
    json_object_object_add(o, "rejections", json_object_new_int64((int64_t)rejected));
    json_object_object_add(o, "bytes_in", json_object_new_int64(ls ? (int64_t)ls->bytes_in : -1));
    json_object_object_add(o, "bytes_out", json_object_new_int64(ls ? (int64_t)ls->bytes_out : -1));
    json_object_object_add(o, "get_task_waits", json_object_new_int(waits));
    json_object_object_add(o, "verified_rounds", json_object_new_int(cl[0].verified));
    json_object_object_add(o, "verify_max_abs_err", jnum(cl[0].prev ? cl[0].verify_max_err : NAN));
    json_object_object_add(o, "commit_from", json_object_new_string(use_watch ? "checkpoint rename" : "status poll"));
    json_object_object_add(o, "commit_resolution_s", jnum(worst_res));
    json_object_object_add(o, "status_polls", json_object_new_int64((int64_t)B.status_ok));
    json_object_object_add(o, "status_errors", json_object_new_int64((int64_t)B.status_err));
    json_object_object_add(o, "status_max_s", json_object_new_double(B.status_max_s));
    json_object_object_add(o, "status_max_phase", json_object_new_string(phase_name(B.status_max_phase)));
    json_object_object_add(o, "final_model_write_s", jnum(B.final_done - B.final_begin));
    /* jstats sorts: the text report reads the sorted copies through the JSON. */
    for (int k = 0; k < S_N; k++)
        json_object_object_add(o, series_names[k], jstats(ser[k], nser[k]));
    json_object_object_add(o, "round_steady_s", jstats(steady, n_steady));
    json_object_object_add(o, "client_pull_s", jstats(cpull, ncl));
    json_object_object_add(o, "client_push_s", jstats(cpush, ncl));
    json_object_object_add(o, "client_buffer_wait_s", jstats(cwait, ncl));
    json_object_object_add(o, "client_push_wait_s", jstats(cpwait, ncl));
    json_object_object_add(o, "client_join_s", jstats(cjoin, clients));
    json_object_object_add(o, "all_joined_s", jnum(last_join - B.t_clients));
    json_object_object_add(o, "first_round_start_s", jnum(first[1] - B.t_clients));
    free(cjoin);
    json_object_object_add(o, "rounds_span_s", jnum(span));
    json_object_object_add(o, "server_cpu_rounds_s", jnum(server_cpu_rounds));
    json_object_object_add(o, "server_cpu_total_s", jnum(server_cpu_total));
    json_object_object_add(o, "bench_cpu_s", jnum(bench_cpu));
    json_object_object_add(o, "clients_wall_s", jnum(ri->t_clients_end - B.t_clients));
    json_object_object_add(o, "server_exit_after_clients_s", jnum(ri->t_exit - ri->t_clients_end));
    json_object_object_add(o, "per_round", per);
    per = NULL;
    free(steady);
    if (B.json) {
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    } else {
        printf("coordinator: %zu parameters (%.1f MB as float32), %d clients, %d round(s), fedavg\n", B.P,
               ri->model_mb, clients, nr);
        printf("memory (RSS of the server process, MB): idle %.1f (start-up peak %.1f); peak %.1f = %.2f x the model "
               "(VmHWM %.1f, ru_maxrss %.1f, max sampled %.1f)\n",
               ri->idle_rss_kb * mb, ri->idle_hwm_kb * mb, peak_mb, peak_mb / ri->model_mb, B.last_hwm_kb * mb,
               ri->ruc.ru_maxrss * mb, B.max_rss_kb * mb);
        printf("  max sampled RSS by stage:");
        for (int s = 0; s < ST_N; s++)
            if (stage_max[s])
                printf(" %s %.1f;", stage_names[s], stage_max[s] * mb);
        printf("\nrounds (seconds; commit from the %s):\n", use_watch ? "checkpoint rename" : "Status poll");
        const char *rows[] = {"round_s", "round_steady_s", "dispatch_s", "pull_s", "push_s", "aggregate_s",
                              "checkpoint_s", "commit_s", "select_s", "period_s", "client_pull_s", "client_push_s",
                              "client_buffer_wait_s", "client_push_wait_s", "client_join_s"};
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
            json_object *p = json_object_object_get(o, rows[i]);
            printf("  %-21s mean %8.4f  p50 %8.4f  p90 %8.4f  max %8.4f  (n %d)\n", rows[i],
                   json_object_get_double(json_object_object_get(p, "mean")),
                   json_object_get_double(json_object_object_get(p, "p50")),
                   json_object_get_double(json_object_object_get(p, "p90")),
                   json_object_get_double(json_object_object_get(p, "max")),
                   json_object_get_int(json_object_object_get(p, "n")));
        }
        printf("all %d clients joined %.3f s after they started; round 1 began at %.3f s; final model write %.3f s\n",
               clients, last_join - B.t_clients, first[1] - B.t_clients, B.final_done - B.final_begin);
        printf("cpu: server %.2f s over the rounds (%.2f s in all), clients (this process) %.2f s; rounds span %.2f s\n",
               server_cpu_rounds, server_cpu_total, bench_cpu, span);
        printf("checks: %d round(s) verified (max |error| %.3g), 0 failed rounds, %" PRIu64 " rejected updates\n",
               cl[0].verified, cl[0].prev ? cl[0].verify_max_err : NAN, rejected);
    }
    rc = 0;
out:
    json_object_put(o);
    json_object_put(per);
    for (int k = 0; k < S_N; k++)
        free(ser[k]);
    free(cpull);
    free(cpush);
    free(cwait);
    free(cpwait);
    free(first);
    free(commit);
    return rc;
}

/* ---- work directory ----------------------------------------------------------------------------- */

static void rm_tree(const char *path, int depth)
{
    struct stat sb;
    if (depth > 4 || lstat(path, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                    continue;
                char sub[4096];
                if ((size_t)snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) < sizeof sub)
                    rm_tree(sub, depth + 1);
            }
            closedir(d);
        }
        if (rmdir(path) != 0)
            fprintf(stderr, PROG ": warning: cannot remove %s: %s\n", path, strerror(errno));
    } else if (unlink(path) != 0) {
        fprintf(stderr, PROG ": warning: cannot remove %s: %s\n", path, strerror(errno));
    }
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, PROG ": cannot write %s: %s\n", path, strerror(errno));
        if (f)
            fclose(f);
        return -1;
    }
    return 0;
}

/* ---- main ------------------------------------------------------------------------------------------ */

static int default_server(char *out, size_t n)
{
    const char *env = getenv("FEDPROF_SERVER");
    if (env && env[0]) {
        snprintf(out, n, "%s", env);
        return 0;
    }
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        return -1;
    self[len] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash)
        return -1;
    *slash = '\0';
    if ((size_t)snprintf(out, n, "%s/fedprof-server", self) >= n)
        return -1;
    return 0;
}

/* Parameters of the model the server will build (its layout, built here without training state). */
static int model_size(const fp_model_config_t *mc, size_t *P, uint64_t *hash)
{
    fp_model_t *m = NULL;
    if (fp_model_create(mc, 1, 1, &m) != FP_OK) {
        fprintf(stderr, PROG ": model config: %s\n", fp_error_message());
        return -1;
    }
    *P = fp_model_layout(m)->total;
    if (hash)
        *hash = fp_layout_hash(fp_model_layout(m));
    fp_model_destroy(m);
    return 0;
}

int main(int argc, char **argv)
{
    const char *server_opt = NULL, *work_opt = NULL, *trace = NULL;
    int clients = 100, rounds = 10, dim = 16, blocks = 1, heads = 1, maxlen = 20, n_items = 1000, max_pulls = 0;
    int max_pushes = 0, server_pulls = 0;
    int status_ms = 20, rss_ms = 50, keep = 0, json = 0, help = 0;
    uint64_t target = 0;
    float settle = 1.0f, timeout = 1800.0f;
    fp_opt_t opts[] = {
        {"server", FP_OPT_STR, &server_opt, 0, 0, NULL, "fedprof-server binary (default $FEDPROF_SERVER, else next to this program)"},
        {"clients", FP_OPT_INT, &clients, 1, MAX_CLIENTS, NULL, "clients, all selected every round (default 100)"},
        {"rounds", FP_OPT_INT, &rounds, 1, 10000, NULL, "rounds (default 10)"},
        {"dim", FP_OPT_INT, &dim, 1, 4096, NULL, "model.dim (default 16)"},
        {"blocks", FP_OPT_INT, &blocks, 1, 64, NULL, "model.blocks (default 1)"},
        {"heads", FP_OPT_INT, &heads, 1, 64, NULL, "model.heads (default 1)"},
        {"maxlen", FP_OPT_INT, &maxlen, 1, 4096, NULL, "model.maxlen (default 20)"},
        {"n-items", FP_OPT_INT, &n_items, 1, FP_DATA_MAX_ITEMS, NULL, "catalogue size (default 1000)"},
        {"target-params", FP_OPT_U64, &target, 0, 4e9, NULL, "choose n-items for about this many parameters"},
        {"max-pulls", FP_OPT_INT, &max_pulls, 0, MAX_CLIENTS, NULL, "receive buffers, i.e. concurrent pulls (0: one per client)"},
        {"max-pushes", FP_OPT_INT, &max_pushes, 0, MAX_CLIENTS, NULL, "concurrent pushes (0: no limit; a diagnostic)"},
        {"server-pulls", FP_OPT_INT, &server_pulls, 0, 1024, NULL,
         "the server's max_concurrent_pulls (0: its default)"},
        {"status-ms", FP_OPT_INT, &status_ms, 1, 10000, NULL, "Status poll interval (default 20)"},
        {"rss-ms", FP_OPT_INT, &rss_ms, 1, 10000, NULL, "memory sample interval (default 50)"},
        {"settle", FP_OPT_FLOAT, &settle, 0, 600, NULL, "seconds between the server's start and the idle reading (default 1)"},
        {"timeout", FP_OPT_FLOAT, &timeout, 1, 86400, NULL, "give up after this many seconds (default 1800)"},
        {"work", FP_OPT_STR, &work_opt, 0, 0, NULL, "work directory (default: a new one in $TMPDIR, removed)"},
        {"keep", FP_OPT_FLAG, &keep, 0, 0, NULL, "keep the work directory (server log, checkpoints)"},
        {"trace", FP_OPT_STR, &trace, 0, 0, NULL, "write the memory samples to this CSV file"},
        {"json", FP_OPT_FLAG, &json, 0, 0, NULL, "one JSON object instead of the text report"},
        {"help", FP_OPT_FLAG, &help, 0, 0, NULL, "this help"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    if (fp_cli_parse(argc - 1, argv + 1, opts) != FP_OK) {
        fprintf(stderr, PROG ": %s (see --help)\n", fp_error_message());
        return 2;
    }
    if (help) {
        printf("usage: " PROG " [options]\n\n"
               "Runs `fedprof-server run` on 127.0.0.1 with in-process protocol clients (pull, push, no\n"
               "training) and reports the coordinator's peak RSS and the round overhead.\n\n");
        fp_cli_print_help(opts);
        return 0;
    }
    if (max_pulls == 0 || max_pulls > clients)
        max_pulls = clients;
    if (max_pushes == 0 || max_pushes > clients)
        max_pushes = clients;
    memset(&B, 0, sizeof B);
    B.n_clients = clients;
    B.rounds = rounds;
    B.max_pulls = max_pulls;
    B.max_pushes = max_pushes;
    B.push_tokens = max_pushes;
    B.status_ms = status_ms;
    B.rss_ms = rss_ms;
    B.json = json;
    B.max_round_id = rounds + EXTRA_ROUNDS;
    B.inotify_fd = -1;
    pthread_mutex_init(&B.pool_mu, NULL);
    pthread_cond_init(&B.pool_cv, NULL);
    pthread_mutex_init(&B.err_mu, NULL);
    pthread_mutex_init(&B.status_mu, NULL);
    fp_log_set_quiet(json);

    char server[4096];
    if (server_opt)
        snprintf(server, sizeof server, "%s", server_opt);
    else if (default_server(server, sizeof server) != 0) {
        fprintf(stderr, PROG ": cannot locate fedprof-server: pass --server\n");
        return 2;
    }
    if (access(server, X_OK) != 0) {
        fprintf(stderr, PROG ": %s is not an executable: %s (pass --server or set FEDPROF_SERVER)\n", server,
                strerror(errno));
        return 2;
    }

    /* The model: the server's config defaults with the shape given here. */
    fp_config_t cfg;
    fp_config_defaults(&cfg);
    cfg.model.dim = dim;
    cfg.model.blocks = blocks;
    cfg.model.heads = heads;
    cfg.model.maxlen = maxlen;
    cfg.model.dropout = 0.1f;
    if (target > 0) {
        size_t p1 = 0, p2 = 0;
        cfg.model.n_items = 1;
        if (model_size(&cfg.model, &p1, NULL) != 0)
            return 2;
        cfg.model.n_items = 1 + 4096;
        if (model_size(&cfg.model, &p2, NULL) != 0)
            return 2;
        double per_item = (double)(p2 - p1) / 4096.0;
        double n = 1.0 + round(((double)target - (double)p1) / per_item);
        if (n < 1 || n > FP_DATA_MAX_ITEMS) {
            fprintf(stderr, PROG ": --target-params %" PRIu64 " needs %.0f items: out of range\n", target, n);
            return 2;
        }
        n_items = (int)n;
    }
    cfg.model.n_items = n_items;
    if (model_size(&cfg.model, &B.P, &B.layout_hash) != 0)
        return 2;
    double model_mb = (double)B.P * 4.0 / 1e6;

    /* Small tables now; the large buffers only once the server runs (see below). */
    B.bufs = calloc((size_t)max_pulls, sizeof *B.bufs);
    B.free_list = calloc((size_t)max_pulls, sizeof *B.free_list);
    B.ev = calloc(MAX_EVENTS, sizeof *B.ev);
    client_t *cl = calloc((size_t)clients, sizeof *cl);
    if (!B.bufs || !B.free_list || !B.ev || !cl) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    for (int i = 0; i < max_pulls; i++)
        B.free_list[i] = max_pulls - 1 - i;
    B.n_bufs = B.n_free = max_pulls;
    for (int i = 0; i < clients; i++) {
        cl[i].idx = i;
        snprintf(cl[i].name, sizeof cl[i].name, "bench-%04d", i);
        if (!(cl[i].t = calloc((size_t)B.max_round_id + 1, sizeof *cl[i].t))) {
            fprintf(stderr, PROG ": out of memory\n");
            return 1;
        }
    }

    /* Work directory, config, the server. */
    char work[4096], path[4200], ckpt[4200], log_path[4200];
    int own_work = !work_opt;
    if (work_opt) {
        snprintf(work, sizeof work, "%s", work_opt);
        if (mkdir(work, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, PROG ": cannot create %s: %s\n", work, strerror(errno));
            return 1;
        }
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(work, sizeof work, "%s/fedprof-bench-coord.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
        if (!mkdtemp(work)) {
            fprintf(stderr, PROG ": mkdtemp %s: %s\n", work, strerror(errno));
            return 1;
        }
    }
    snprintf(path, sizeof path, "%s/server.yaml", work);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt", work);
    snprintf(log_path, sizeof log_path, "%s/server.log", work);
    rm_tree(ckpt, 0); /* a fresh federation, never a resumed one */
    char yaml[1024], pulls_line[64] = "";
    if (server_pulls > 0)
        snprintf(pulls_line, sizeof pulls_line, "  max_concurrent_pulls: %d\n", server_pulls);
    snprintf(yaml, sizeof yaml,
             "# written by " PROG "\n"
             "server:\n  member_timeout_s: 3600\n  round_timeout_s: 3600\n  federation_id: bench\n%s"
             "model:\n  dim: %d\n  blocks: %d\n  heads: %d\n  maxlen: %d\n  dropout: 0.1\n",
             pulls_line, dim, blocks, heads, maxlen);
    int rc = 1;
    if (write_file(path, yaml) != 0)
        goto cleanup_dir;
    char a_items[32], a_rounds[32], a_clients[32];
    snprintf(a_items, sizeof a_items, "%d", n_items);
    snprintf(a_rounds, sizeof a_rounds, "%d", rounds);
    snprintf(a_clients, sizeof a_clients, "%d", clients);
    char *sargv[] = {server,  "run",        "--config",     path,          "--listen",           "127.0.0.1:0",
                     "--insecure", "--n-items", a_items,     "--rounds",     a_rounds,            "--clients-per-round",
                     a_clients, "--min-clients", a_clients, "--checkpoint-dir", ckpt,            NULL};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    if (!json)
        fprintf(stderr, "[" PROG "] model: %zu parameters (%.1f MB), n_items %d, dim %d; %d clients, %d round(s)\n",
                B.P, model_mb, n_items, dim, clients, rounds);
    double t_start = fp_now();
    B.t_end = t_start + timeout;
    if (start_server(server, sargv, log_path) != 0)
        goto cleanup_dir;
    if (wait_port(log_path) != 0) {
        rc = g_signal ? 128 + (int)g_signal : 1;
        goto cleanup_server;
    }
    double t_port = fp_now();
    snprintf(B.target, sizeof B.target, "127.0.0.1:%d", B.port);

    /* The large buffers, after the fork: a forked child's resident set before its exec counts in
     * its ru_maxrss. The update every client pushes: 1e-4 x N(0, 1), one read-only buffer; the
     * receive buffers (fp_buffer_alloc touches them), never allocated inside a timed round. */
    if (!(B.delta = fp_buffer_alloc(B.P))) {
        fprintf(stderr, PROG ": update buffer: %s\n", fp_error_message());
        goto cleanup_server;
    }
    fp_rng_t rng;
    fp_rng_seed(&rng, 20261201);
    for (size_t i = 0; i < B.P; i++)
        B.delta[i] = (float)(1e-4 * fp_rng_normal(&rng));
    for (int i = 0; i < max_pulls; i++)
        if (!(B.bufs[i] = fp_buffer_alloc(B.P))) {
            fprintf(stderr, PROG ": receive buffer %d of %zu floats: %s\n", i, B.P, fp_error_message());
            goto cleanup_server;
        }
    if (B.P <= VERIFY_MAX_PARAMS && !(cl[0].prev = fp_buffer_alloc(B.P))) {
        fprintf(stderr, PROG ": %s\n", fp_error_message());
        goto cleanup_server;
    }

    /* Monitors: memory sampler, Status poller, checkpoint watcher. */
    pthread_t th_mon[3];
    int n_mon = 0;
    B.cap_ck = B.max_round_id + 1;
    B.ck_begin = calloc((size_t)B.cap_ck, sizeof *B.ck_begin);
    B.ck_done = calloc((size_t)B.cap_ck, sizeof *B.ck_done);
    if (!B.ck_begin || !B.ck_done) {
        fprintf(stderr, PROG ": out of memory\n");
        goto cleanup_server;
    }
    B.inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (B.inotify_fd < 0 || inotify_add_watch(B.inotify_fd, ckpt, IN_CREATE | IN_MOVED_TO) < 0) {
        fprintf(stderr, PROG ": inotify on %s: %s\n", ckpt, strerror(errno));
        goto cleanup_server;
    }
    void *(*mon_fn[3])(void *) = {rss_main, status_main, watch_main};
    for (int i = 0; i < 3; i++) {
        if (pthread_create(&th_mon[n_mon], NULL, mon_fn[i], NULL) != 0) {
            fprintf(stderr, PROG ": pthread_create failed\n");
            goto cleanup_threads;
        }
        n_mon++;
    }
    sleep_s(settle);
    run_t ri;
    memset(&ri, 0, sizeof ri);
    ri.t_start = t_start;
    ri.t_port = t_port;
    ri.model_mb = model_mb;
    ri.n_items = n_items;
    ri.dim = dim;
    ri.blocks = blocks;
    ri.heads = heads;
    ri.maxlen = maxlen;
    ri.trace = trace;
    if (read_proc_status(B.pid, &ri.idle_rss_kb, &ri.idle_hwm_kb) != 0) {
        fprintf(stderr, PROG ": cannot read /proc/%d/status\n", (int)B.pid);
        print_log_tail(log_path);
        goto cleanup_threads;
    }

    /* The clients. */
    getrusage(RUSAGE_SELF, &ri.ru0);
    B.t_clients = fp_now();
    for (int i = 0; i < clients; i++) {
        if (pthread_create(&cl[i].th, NULL, client_main, &cl[i]) != 0) {
            bench_error("pthread_create for client %d failed", i);
            break;
        }
        cl[i].started = 1;
    }
    fp_progress_t prog;
    fp_progress_begin(&prog, "rounds", rounds);
    int server_status = -1, server_exited = 0;
    for (;;) {
        if (atomic_load(&B.clients_done) == clients || aborted())
            break;
        if (fp_now() > B.t_end) {
            bench_error("timeout: %.0f s", (double)timeout);
            break;
        }
        if (g_signal) {
            bench_error("interrupted by signal %d", (int)g_signal);
            break;
        }
        int ws = 0;
        if (waitpid(B.pid, &ws, WNOHANG) == B.pid) {
            server_exited = 1;
            server_status = ws;
            B.pid = 0;
            g_child = 0;
            if (atomic_load(&B.clients_done) < clients)
                bench_error("the server exited (%s %d) while %d client(s) were still running",
                            WIFEXITED(ws) ? "exit status" : "signal", WIFEXITED(ws) ? WEXITSTATUS(ws) : WTERMSIG(ws),
                            clients - atomic_load(&B.clients_done));
            break;
        }
        char extra[160];
        pthread_mutex_lock(&B.status_mu);
        long rss = B.n_smp ? B.smp[B.n_smp - 1].rss_kb : 0;
        pthread_mutex_unlock(&B.status_mu);
        snprintf(extra, sizeof extra, "%s, %d/%d updates, %d pulling, %d pushing, server RSS %.0f MB",
                 phase_name(atomic_load(&B.phase)), atomic_load(&B.received), clients, atomic_load(&B.pulls_active),
                 atomic_load(&B.pushes_active), rss * 1024.0 / 1e6);
        fp_progress_update(&prog, atomic_load(&B.committed), extra);
        sleep_s(0.1);
    }
    fp_progress_end(&prog);
    if (aborted())
        kill_server(); /* ends every client call */
    for (int i = 0; i < clients; i++)
        if (cl[i].started)
            pthread_join(cl[i].th, NULL);
    ri.t_clients_end = fp_now();
    getrusage(RUSAGE_SELF, &ri.ru1);
    for (int i = 0; i < clients; i++) {
        fp_wire_channel_destroy(cl[i].ch);
        cl[i].ch = NULL;
    }
    if (aborted())
        goto report_error;

    /* The federation is done: the server serves DONE for done_linger_s, then exits 0 by itself. */
    if (!server_exited) {
        double t0 = fp_now();
        for (;;) {
            int ws = 0;
            if (waitpid(B.pid, &ws, WNOHANG) == B.pid) {
                server_status = ws;
                break;
            }
            if (fp_now() - t0 > 120) {
                bench_error("the server did not exit within 120 s after DONE");
                goto report_error;
            }
            sleep_s(0.02);
        }
    }
    ri.t_exit = fp_now();
    atomic_store(&B.stop_monitors, 1);
    for (int i = 0; i < n_mon; i++)
        pthread_join(th_mon[i], NULL);
    n_mon = 0;
    B.pid = 0; /* reaped above; kept until the monitors stopped (they skip a vanished process) */
    g_child = 0;
    if (!WIFEXITED(server_status) || WEXITSTATUS(server_status) != 0) {
        bench_error("the server ended with %s %d", WIFEXITED(server_status) ? "exit status" : "signal",
                    WIFEXITED(server_status) ? WEXITSTATUS(server_status) : WTERMSIG(server_status));
        goto report_error;
    }
    getrusage(RUSAGE_CHILDREN, &ri.ruc);
    if (report(cl, &ri) != 0)
        goto report_error;
    rc = 0;
    goto cleanup_threads;

report_error:
    if (g_signal)
        fprintf(stderr, PROG ": interrupted by signal %d (the server was killed)\n", (int)g_signal);
    fprintf(stderr, PROG ": error: %s\n", B.err[0] ? B.err : "(unknown)");
    print_log_tail(log_path);
    rc = g_signal ? 128 + (int)g_signal : 1;
cleanup_threads:
    atomic_store(&B.stop_monitors, 1);
    for (int i = 0; i < n_mon; i++)
        pthread_join(th_mon[i], NULL);
cleanup_server:
    kill_server();
    if (B.inotify_fd >= 0)
        close(B.inotify_fd);
cleanup_dir:
    if (B.last_status)
        fedprof__v1__status_response__free_unpacked(B.last_status, NULL);
    if (own_work && !keep)
        rm_tree(work, 0);
    else if (!json)
        fprintf(stderr, "[" PROG "] work directory kept: %s\n", work);
    for (int i = 0; i < clients; i++) {
        fp_wire_channel_destroy(cl[i].ch);
        free(cl[i].t);
        fp_buffer_free(cl[i].prev);
    }
    free(cl);
    for (int i = 0; i < B.n_bufs; i++)
        fp_buffer_free(B.bufs[i]);
    free(B.bufs);
    free(B.free_list);
    free(B.ev);
    free(B.smp);
    free(B.ck_begin);
    free(B.ck_done);
    fp_buffer_free(B.delta);
    return rc;
}
