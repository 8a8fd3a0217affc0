#!/usr/bin/env bash
# transport.sh: model transfer over common/wire (gRPC, plaintext and mTLS) against raw TCP and raw
# TLS on loopback, on this machine; prints a markdown report.
#
#   bench/transport.sh [--quick] [--reps N] [--sizes 64,256] [--chunk-bytes N] [--build DIR]
#                      [--bin PATH] [--baseline PATH] [--work DIR]
#
# Builds fedprof-bench-transport in its own build dir (default build-transport, Release) unless
# --bin names a binary, snapshots it into the work dir (a rebuild during the run cannot change what
# is measured), makes a throw-away federation CA and certificates (scripts/make-certs.sh WORK/certs
# bench), then runs the bench REPS times (default 5; --quick: 2 reps of 16 and 64 MiB), one
# repetition per process, each starting the order of its paths one place later. Every process runs
# every path once per size: raw TCP, raw TLS (one row per TLS 1.3 suite), gRPC PullModel and
# PushUpdate over tensor_stream, the same bytes over gRPC without tensor_stream ("bytes only"),
# plain and mTLS, and SHA-256 and memcpy alone. Medians over the repetitions are tabled, with ratios
# to raw TCP (and raw TLS) measured in the same processes, and the process CPU time per GB moved.
#
# --baseline PATH: another build of the bench (e.g. one linked against an older common/wire.c) run
# alternately with this one, same certificates, same sizes; a before/after table is added.
#
# The machine may be shared: each process records how busy the CPUs were (other work, 0.5 s sample)
# before its repetition, and `uptime` is taken before and after; the report shows both.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-/usr/bin/python3}
QUICK=0
REPS=""
SIZES=""
CHUNK=0
BUILD=$ROOT/build-transport
BIN=""
BASE=""
WORK=""

while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --reps) REPS=$2; shift ;;
    --sizes) SIZES=$2; shift ;;
    --chunk-bytes) CHUNK=$2; shift ;;
    --build) BUILD=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --baseline) BASE=$2; shift ;;
    --work) WORK=$2; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "transport.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$REPS" ]; then if [ "$QUICK" = 1 ]; then REPS=2; else REPS=5; fi; fi
if [ -z "$SIZES" ]; then if [ "$QUICK" = 1 ]; then SIZES=16,64; else SIZES=64,256; fi; fi
[[ $REPS =~ ^[1-9][0-9]*$ ]] || { echo "transport.sh: --reps wants a positive integer" >&2; exit 2; }
"$PY" -c 'import json, statistics' 2>/dev/null || { echo "transport.sh: needs $PY" >&2; exit 1; }

log() { echo "[transport] $*" >&2; }

if [ -z "$BIN" ]; then
    log "building fedprof-bench-transport in $BUILD"
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >"${TMPDIR:-/tmp}/fedprof-transport-cmake.log" 2>&1 ||
        { cat "${TMPDIR:-/tmp}/fedprof-transport-cmake.log" >&2; exit 1; }
    cmake --build "$BUILD" -j2 --target fedprof-bench-transport >&2
    BIN=$BUILD/fedprof-bench-transport
fi
[ -x "$BIN" ] || { echo "transport.sh: $BIN not found" >&2; exit 1; }
[ -z "$BASE" ] || [ -x "$BASE" ] || { echo "transport.sh: baseline $BASE not found" >&2; exit 1; }

CLEAN_WORK=0
if [ -z "$WORK" ]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/fedprof-transport.XXXXXX")
    CLEAN_WORK=1
fi
mkdir -p "$WORK"
cleanup() {
    rm -rf "$WORK/certs" # the CA key: never left behind
    if [ "$CLEAN_WORK" = 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
cp "$BIN" "$WORK/bench-new"
[ -z "$BASE" ] || cp "$BASE" "$WORK/bench-base"
"$ROOT/scripts/make-certs.sh" "$WORK/certs" bench >/dev/null

RES=$WORK/results.jsonl
: >"$RES"
LOAD_BEFORE=$(uptime)
ARGS=(--sizes-mib "$SIZES" --certs "$WORK/certs" --chunk-bytes "$CHUNK" --reps 1 --json)
CMD="$(basename "$BIN") ${ARGS[*]} --rotate R   (R = 0 .. $((REPS - 1)); certs: scripts/make-certs.sh DIR bench)"
T0=$(date +%s)
for r in $(seq 0 $((REPS - 1))); do
    for which in new base; do
        [ "$which" = base ] && [ -z "$BASE" ] && continue
        log "repetition $((r + 1))/$REPS ($which)"
        if ! "$WORK/bench-$which" "${ARGS[@]}" --rotate "$r" >"$WORK/out.jsonl" 2>"$WORK/err.txt"; then
            cat "$WORK/err.txt" >&2
            echo "transport.sh: the $which bench failed" >&2
            exit 1
        fi
        sed "s/^{/{\"bin\": \"$which\", /" "$WORK/out.jsonl" >>"$RES"
    done
done
T1=$(date +%s)
LOAD_AFTER=$(uptime)

MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'aes|vaes|pclmulqdq|vpclmulqdq|sha_ni|avx2|avx512f' |
    sort | tr '\n' ' ' || true)
GRPCV=$(pkg-config --modversion grpc 2>/dev/null || echo "?")
SSLV=$(openssl version 2>/dev/null || echo "?")
MEM=$(free -g 2>/dev/null | awk '/^Mem:/ { print $2 " GiB" }' || echo "?")

"$PY" - "$RES" "$QUICK" "$REPS" "$((T1 - T0))" "$MODEL" "$(nproc)" "$MEM" "$FLAGS" "$GRPCV" "$SSLV" \
    "$LOAD_BEFORE" "$LOAD_AFTER" "$CMD" "$BIN" "$BASE" <<'EOF'
import json, statistics, sys
(res, quick, reps, wall, model, ncpu, mem, flags, grpcv, sslv, load0, load1, cmd, binpath, basepath) = sys.argv[1:16]
rows = [json.loads(l) for l in open(res) if l.strip()]
order, by = [], {}
for r in rows:
    k = (r["bin"], r["mib"], r["path"])
    if (r["mib"], r["path"]) not in order:
        order.append((r["mib"], r["path"]))
    by.setdefault(k, []).append(r)

def med(b, mib, path, key="mb_per_s"):
    v = [x[key] for x in by.get((b, mib, path), [])]
    return statistics.median(v) if v else None

def cpu(b, mib, path):
    v = [x["cpu_seconds"] / (x["mib"] * 1.048576e-3) for x in by.get((b, mib, path), [])]
    return statistics.median(v) if v else None

def rng(b, mib, path):
    v = [x["mb_per_s"] for x in by.get((b, mib, path), [])]
    return f"{min(v):,.0f}–{max(v):,.0f}" if v else ""

RAW = "raw TCP (write/read, 1 MiB calls)"
tls_rows = [p for (_, p) in order if p.startswith("raw TLS")]
RAWTLS = tls_rows[0] if tls_rows else None
key_rows = {"gRPC plain PullModel", "gRPC plain PushUpdate", "gRPC mTLS PullModel", "gRPC mTLS PushUpdate"}
busy = [x.get("busy_before_pct", -1) for x in rows if x["bin"] == "new"]
print("# Transport benchmark: common/wire (gRPC) against raw TCP and raw TLS on loopback"
      + (" (QUICK run: not for the record)" if quick == "1" else ""))
print()
print(f"- machine: {model}, {ncpu} cores, {mem}; CPU flags: {flags.strip()}")
print(f"- gRPC {grpcv} (Debian build, TLS through the system OpenSSL); {sslv}")
print(f"- load before: `{load0.strip()}`; after: `{load1.strip()}`; CPUs busy with other work just before a "
      f"repetition: max {max(busy) if busy else '?'}%, median {statistics.median(busy) if busy else '?'}% "
      "(the machine may be shared: paths are interleaved so all see the same load)")
print(f"- {reps} repetitions, one process each, {wall} s; MB/s = 10^6 payload bytes per second from the start "
      "of the call to verified data; CPU s/GB = process CPU time (all threads, user + system) per 10^9 bytes")
print(f"- command: `{cmd}`")
print()
print("| size | path | median MB/s | range | vs raw TCP | vs raw TLS | CPU s/GB |")
print("|---:|---|---:|---:|---:|---:|---:|")
for mib, path in order:
    m = med("new", mib, path)
    raw = med("new", mib, RAW)
    rt = med("new", mib, RAWTLS) if RAWTLS else None
    vt = f"{m / rt:.2f}" if (rt and "mTLS" in path) else ""
    b = "**" if path in key_rows else ""
    print(f"| {mib} MiB | {path} | {b}{m:,.0f}{b} | {rng('new', mib, path)} | {b}{m / raw:.2f}{b} | {vt} | "
          f"{cpu('new', mib, path):.2f} |")
print()
print("Goals (median over raw TCP's median, same size, same processes):")
for mib in sorted({m for m, _ in order}):
    for path, goal in (("gRPC plain PullModel", .8), ("gRPC plain PushUpdate", .8),
                       ("gRPC mTLS PullModel", .5), ("gRPC mTLS PushUpdate", .5)):
        m, raw = med("new", mib, path), med("new", mib, RAW)
        if m is None:
            continue
        print(f"- {mib} MiB {path}: {m / raw:.2f} (goal >= {goal:.2f}): {'met' if m / raw >= goal else 'NOT met'}")
if basepath:
    print()
    print(f"## Before / after (baseline `{basepath}` run alternately with `{binpath}`)")
    print()
    print("| size | path | before MB/s | after MB/s | before CPU s/GB | after CPU s/GB | before / raw TCP | after / raw TCP |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for mib, path in order:
        if path.startswith("raw") or path.startswith("SHA") or path.startswith("memcpy"):
            continue
        b0, b1 = med("base", mib, path), med("new", mib, path)
        if b0 is None:
            continue
        r0, r1 = med("base", mib, RAW), med("new", mib, RAW)
        print(f"| {mib} MiB | {path} | {b0:,.0f} | {b1:,.0f} | {cpu('base', mib, path):.2f} | "
              f"{cpu('new', mib, path):.2f} | {b0 / r0:.2f} | {b1 / r1:.2f} |")
EOF
