#!/usr/bin/env bash
# coord.sh: the coordinator's peak memory and its round overhead, on this machine; prints a markdown
# report.
#
#   bench/coord.sh [--quick] [--rounds N] [--clients 10,50,100] [--mem-clients 50]
#                  [--mem-params 25000000] [--mem-rounds 3] [--no-mem] [--no-diag] [--no-rounds]
#                  [--build DIR] [--bin PATH] [--server PATH] [--work DIR]
#
# Builds fedprof-bench-coord and fedprof-server in their own build dir (default build-coord,
# Release) unless --bin and --server name binaries, snapshots both into the work dir (a rebuild
# during the run cannot change what is measured), then runs fedprof-bench-coord, which starts the
# real `fedprof-server run` process on 127.0.0.1 (--insecure, a port the kernel picks) and drives
# it with in-process protocol clients (join, pull the model and verify its digest, push an update;
# no local training):
#  1. memory: a 25M-parameter model (dim 64, 2 blocks, maxlen 50; n_items chosen for the count),
#     --mem-clients clients (default 50) all selected, --mem-rounds rounds (default 3: the second
#     round onwards runs on a warm heap, which one round alone hides): the coordinator's peak RSS
#     (VmHWM of /proc/PID/status, read last while it lived) against the goal of 4x the model's
#     float32 size, its idle RSS, and the largest RSS in each stage of the round (sampled every
#     50 ms);
#  2. diagnostic (--no-diag skips it): the same with the clients pushing one at a time
#     (--max-pushes 1), which shows what the concurrent pushes cost the coordinator;
#  3. round overhead: a tiny model (dim 16, 1 block, maxlen 20, 1,000 items), N rounds (default
#     20; --quick 5) with 10, 50 and 100 clients (--clients), each client pulling and pushing every
#     round: seconds from the first TRAIN task to the commit (the checkpoint's rename), and its
#     parts.
# --quick: 10 and 100 clients, 5 rounds; the memory case with 10M parameters and 20 clients (not for
# the record).
#
# The machine may be shared: how busy the CPUs were with other work just before each run (0.5 s
# from /proc/stat, this script idle), and `uptime` before and after, are in the report. Clients
# and coordinator share this machine's cores, so the CPU seconds of both are reported.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-/usr/bin/python3}
QUICK=0
ROUNDS=""
CLIENTS=""
MEM_CLIENTS=""
MEM_PARAMS=""
MEM_ROUNDS=""
DO_MEM=1
DO_DIAG=1
DO_ROUNDS=1
BUILD=$ROOT/build-coord
BIN=""
SERVER=""
WORK=""

while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --mem-clients) MEM_CLIENTS=$2; shift ;;
    --mem-params) MEM_PARAMS=$2; shift ;;
    --mem-rounds) MEM_ROUNDS=$2; shift ;;
    --no-mem) DO_MEM=0 ;;
    --no-diag) DO_DIAG=0 ;;
    --no-rounds) DO_ROUNDS=0 ;;
    --build) BUILD=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --server) SERVER=$2; shift ;;
    --work) WORK=$2; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "coord.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    : "${ROUNDS:=5}" "${CLIENTS:=10,100}" "${MEM_CLIENTS:=20}" "${MEM_PARAMS:=10000000}" "${MEM_ROUNDS:=1}"
else
    : "${ROUNDS:=20}" "${CLIENTS:=10,50,100}" "${MEM_CLIENTS:=50}" "${MEM_PARAMS:=25000000}" "${MEM_ROUNDS:=3}"
fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "coord.sh: --rounds wants a positive integer" >&2; exit 2; }
[[ $CLIENTS =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "coord.sh: --clients wants N[,N...]" >&2; exit 2; }
[[ $MEM_CLIENTS =~ ^[1-9][0-9]*$ ]] || { echo "coord.sh: --mem-clients wants a positive integer" >&2; exit 2; }
[[ $MEM_PARAMS =~ ^[1-9][0-9]*$ ]] || { echo "coord.sh: --mem-params wants a positive integer" >&2; exit 2; }
[[ $MEM_ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "coord.sh: --mem-rounds wants a positive integer" >&2; exit 2; }
"$PY" -c 'import json' 2>/dev/null || { echo "coord.sh: needs $PY" >&2; exit 1; }

log() { echo "[coord] $*" >&2; }

if [ -z "$BIN" ] || [ -z "$SERVER" ]; then
    log "building fedprof-bench-coord and fedprof-server in $BUILD"
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >"${TMPDIR:-/tmp}/fedprof-coord-cmake.log" 2>&1 ||
        { cat "${TMPDIR:-/tmp}/fedprof-coord-cmake.log" >&2; exit 1; }
    cmake --build "$BUILD" -j2 --target fedprof-bench-coord fedprof-server >&2
    [ -n "$BIN" ] || BIN=$BUILD/fedprof-bench-coord
    [ -n "$SERVER" ] || SERVER=$BUILD/fedprof-server
fi
[ -x "$BIN" ] || { echo "coord.sh: $BIN not found" >&2; exit 1; }
[ -x "$SERVER" ] || { echo "coord.sh: $SERVER not found" >&2; exit 1; }

CLEAN_WORK=0
if [ -z "$WORK" ]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/fedprof-coord.XXXXXX")
    CLEAN_WORK=1
fi
mkdir -p "$WORK"
cleanup() { if [ "$CLEAN_WORK" = 1 ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT
cp "$BIN" "$WORK/fedprof-bench-coord"
cp "$SERVER" "$WORK/fedprof-server"

# Share of all CPUs busy over 0.5 s (any process; this script sleeps meanwhile).
busy() {
    "$PY" - <<'EOF'
import time
def rd():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v), v[3] + v[4]
t0, i0 = rd(); time.sleep(0.5); t1, i1 = rd()
print(round(100 * (1 - (i1 - i0) / max(1, t1 - t0))))
EOF
}

export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} # the wait policy: fedprof's default unless set
RES=$WORK/results.jsonl
: >"$RES"
CMDS=$WORK/commands.txt
: >"$CMDS"
# run NAME ARGS...: one bench process; its JSON line goes into results.jsonl tagged with NAME.
run() {
    local name=$1
    shift
    local b
    b=$(busy)
    log "$name: fedprof-bench-coord $* (CPUs busy before: $b%)"
    echo "$name|fedprof-bench-coord $*" >>"$CMDS"
    if ! "$WORK/fedprof-bench-coord" --server "$WORK/fedprof-server" --json "$@" >"$WORK/out.json" 2>"$WORK/err.txt"; then
        cat "$WORK/err.txt" >&2
        echo "coord.sh: the bench failed ($name)" >&2
        exit 1
    fi
    "$PY" -c 'import json, sys
d = json.load(open(sys.argv[1])); d["name"] = sys.argv[2]; d["busy_before_pct"] = int(sys.argv[3])
print(json.dumps(d))' "$WORK/out.json" "$name" "$b" >>"$RES"
}

LOAD_BEFORE=$(uptime)
T0=$(date +%s)
MEM_ARGS=(--clients "$MEM_CLIENTS" --rounds "$MEM_ROUNDS" --dim 64 --blocks 2 --heads 1 --maxlen 50 --target-params "$MEM_PARAMS")
if [ "$DO_MEM" = 1 ]; then
    run memory "${MEM_ARGS[@]}" --trace "$WORK/memory-trace.csv"
    if [ "$DO_DIAG" = 1 ]; then
        run memory-serial-push "${MEM_ARGS[@]}" --max-pushes 1 --trace "$WORK/memory-serial-trace.csv"
    fi
fi
if [ "$DO_ROUNDS" = 1 ]; then
    IFS=, read -r -a NS <<<"$CLIENTS"
    for n in "${NS[@]}"; do
        run "rounds-$n" --clients "$n" --rounds "$ROUNDS" --dim 16 --blocks 1 --heads 1 --maxlen 20 --n-items 1000
    done
fi
T1=$(date +%s)
LOAD_AFTER=$(uptime)

MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
MEM=$(free -g 2>/dev/null | awk '/^Mem:/ { print $2 " GiB" }' || echo "?")
GRPCV=$(pkg-config --modversion grpc 2>/dev/null || echo "?")
GLIBCV=$(getconf GNU_LIBC_VERSION 2>/dev/null || echo "?")
TREE=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
if [ "$TREE" != "?" ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    TREE="$TREE + uncommitted changes"
fi

"$PY" - "$RES" "$CMDS" "$QUICK" "$((T1 - T0))" "$MODEL" "$(nproc)" "$MEM" "$GRPCV" "$GLIBCV" "$LOAD_BEFORE" \
    "$LOAD_AFTER" "$TREE" <<'EOF'
import json, sys
res, cmds, quick, wall, model, ncpu, mem, grpcv, glibcv, load0, load1, tree = sys.argv[1:13]
rows = {}
for line in open(res):
    if line.strip():
        d = json.loads(line)
        rows[d["name"]] = d
cmd = dict(l.rstrip("\n").split("|", 1) for l in open(cmds) if "|" in l)
busy = [d["busy_before_pct"] for d in rows.values()]

def f(x, nd=3):
    return "—" if x is None else f"{x:,.{nd}f}"

print("# Coordinator memory and round overhead" + (" (QUICK run: not for the record)" if quick == "1" else ""))
print()
print(f"- machine: {model}, {ncpu} cores (`nproc`), {mem}; libgrpc {grpcv} (pkg-config), {glibcv}; tree {tree}")
print(f"- load before: `{load0.strip()}`; after: `{load1.strip()}`; CPUs busy with other work just before a run: "
      f"max {max(busy) if busy else '?'}% (the machine may be shared); {wall} s in all")
print("- the coordinator is the real `fedprof-server run` process (--insecure, 127.0.0.1, fedavg, checkpoints on "
      "local disk); the clients are threads of `fedprof-bench-coord` on the same cores (join, pull + verify, push; "
      "no local training)")
print()

for name, title in (("memory", "every client pulls then pushes at will"),
                    ("memory-serial-push", "the same, the clients pushing one at a time (--max-pushes 1)")):
    d = rows.get(name)
    if not d:
        continue
    st = d["max_rss_mb_by_stage"]
    print(f"## Memory: {d['params']:,} parameters ({d['model_mb']:.1f} MB float32), {d['clients']} clients, "
          f"{d['rounds']} round(s): {title}")
    print()
    print(f"Command: `{cmd[name]}`")
    print()
    print("| | MB | × model |")
    print("|---|---:|---:|")
    m = d["model_mb"]
    print(f"| idle (model loaded, no client) | {d['idle_rss_mb']:,.1f} | {d['idle_rss_mb'] / m:.2f} |")
    print(f"| start-up peak (VmHWM before any client) | {d['startup_hwm_mb']:,.1f} | {d['startup_hwm_mb'] / m:.2f} |")
    for s in ("join", "pull", "pull+push", "push", "commit", "final", "done"):
        if s in st:
            print(f"| max sampled RSS while: {s} | {st[s]:,.1f} | {st[s] / m:.2f} |")
    print(f"| **peak RSS (VmHWM)** | **{d['peak_rss_mb']:,.1f}** | **{d['peak_over_model']:.2f}** |")
    print(f"| for reference: model 4·P + running sum 8·P + one receive buffer 4·P (server/coordinator.h) | "
          f"{4 * m:,.1f} | 4.00 |")
    print()
    ok = d["peak_over_model"] <= 4.0
    print(f"Goal: peak ≤ 4 × the model ({4 * m:,.0f} MB): **{'met' if ok else 'NOT met'}** "
          f"({d['peak_over_model']:.2f} ×). Round {f(d['round_s']['mean'], 1)} s (pull phase {f(d['pull_s']['mean'], 1)} s, "
          f"push phase {f(d['push_s']['mean'], 1)} s, aggregate {f(d['aggregate_s']['mean'])} s, checkpoint "
          f"{f(d['checkpoint_s']['mean'])} s; final model write {f(d['final_model_write_s'])} s); CPU: coordinator "
          f"{f(d['server_cpu_rounds_s'], 1)} s in the round, clients {f(d['bench_cpu_s'], 1)} s; "
          f"{d['bytes_out'] / 1e9:.2f} GB out, {d['bytes_in'] / 1e9:.2f} GB in.")
    print()

rr = sorted((d for n, d in rows.items() if n.startswith("rounds-")), key=lambda d: d["clients"])
if rr:
    d0 = rr[0]
    print(f"## Round overhead: {d0['params']:,} parameters (dim {d0['dim']}, {d0['blocks']} block, maxlen {d0['maxlen']}, "
          f"{d0['n_items']:,} items), {d0['rounds']} rounds")
    print()
    print("Commands: " + "; ".join(f"`{cmd['rounds-' + str(d['clients'])]}`" for d in rr))
    print()
    print("Seconds per round, from the first TRAIN task a client received to the rename of the round's checkpoint "
          "(mean / p50 / p90 over all rounds; steady = rounds 2..N); parts: means over the rounds.")
    print()
    print("| clients | round mean | p50 | p90 | steady mean | dispatch | until all pulled | then until all pushed | "
          "aggregate | checkpoint | select next | round to round | coordinator CPU s / round | client CPU s / round |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in rr:
        r = d["round_s"]
        print(f"| {d['clients']} | **{f(r['mean'])}** | {f(r['p50'])} | {f(r['p90'])} | {f(d['round_steady_s']['mean'])} | "
              f"{f(d['dispatch_s']['mean'])} | {f(d['pull_s']['mean'])} | {f(d['push_s']['mean'])} | "
              f"{f(d['aggregate_s']['mean'])} | {f(d['checkpoint_s']['mean'])} | {f(d['select_s']['mean'])} | "
              f"{f(d['period_s']['mean'])} | {f(d['server_cpu_rounds_s'] / d['rounds'])} | "
              f"{f(d['bench_cpu_s'] / d['rounds'])} |")
    print()
    print("Per client (all rounds): " + "; ".join(
        f"{d['clients']} clients: pull {f(d['client_pull_s']['p50'])} s p50 ({f(d['client_pull_s']['p90'])} p90), "
        f"push {f(d['client_push_s']['p50'])} s p50 ({f(d['client_push_s']['p90'])} p90)" for d in rr) + ".")
    print()
    print("Checks: " + "; ".join(f"{d['clients']} clients: {d['verified_rounds']} rounds verified (new model = old + "
                                 f"update, max error {d['verify_max_abs_err']}), {d['rejections']} rejections"
                                 for d in rr) + ".")
EOF
