#!/usr/bin/env bash
# threads.sh: how OpenMP's idle threads should wait, measured (common/threads_env.h).
#
#   bench/threads.sh [--reps N] [--loads "0 1 2"] [--policies "passive 1000 300000"]
#
# Times one training step (fedprof-bench-step, 2 threads) for the Amazon Games shape (B: maxlen
# 50, 23,715 items, mean length 9.3) and the MovieLens shape (A: maxlen 200, 3,416 items, mean
# length 50) under each wait policy:
#   passive   OMP_WAIT_POLICY=passive (sleep at once)
#   N         GOMP_SPINCOUNT=N (spin N iterations, then sleep); 1000 is fedprof's default,
#             300000 is libgomp's own default (what you get with neither variable set and a
#             program that does not choose)
# and each background load: that many busy-loop processes started beside it (0 = quiet
# machine; on 2 cores, 2 = every core also wanted by someone else). Policies alternate within
# each repetition; the table shows the median step time (ms) of REPS runs.
#
# Environment: BENCH_STEP (default build/fedprof-bench-step).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BS=${BENCH_STEP:-$ROOT/build/fedprof-bench-step}
REPS=3
LOADS="0 1 2"
POLICIES="passive 1000 300000"
while [ $# -gt 0 ]; do
    case "$1" in
    --reps) REPS=$2; shift ;;
    --loads) LOADS=$2; shift ;;
    --policies) POLICIES=$2; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "threads.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$BS" ] || { echo "threads.sh: $BS not found (build fedprof first)" >&2; exit 1; }

BUSY=()
stop_busy() {
    for p in "${BUSY[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    BUSY=()
}
trap stop_busy EXIT

declare -A SHAPE=([A]="--maxlen 200 --items 3416 --mean-len 50" [B]="--maxlen 50 --items 23715 --mean-len 9.3")

step_ms() { # shape policy -> step time in ms
    local env=(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT OPENBLAS_NUM_THREADS=1)
    if [ "$2" = passive ]; then env+=(OMP_WAIT_POLICY=passive); else env+=(GOMP_SPINCOUNT="$2"); fi
    # shellcheck disable=SC2086
    "${env[@]}" "$BS" ${SHAPE[$1]} --batch 128 --threads 2 --steps 30 --dp-steps 0 |
        sed -n 's/.*| step \([0-9.]*\) ms.*/\1/p'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; $(date -u +%F)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| shape | busy processes beside |'
for p in $POLICIES; do [ "$p" = passive ] && printf ' passive |' || printf ' spin %s |' "$p"; done
echo
printf '|---|---:|'; for _ in $POLICIES; do printf -- '---:|'; done; echo
for load in $LOADS; do
    stop_busy
    for ((i = 0; i < load; i++)); do
        (while :; do :; done) &
        BUSY+=($!)
    done
    sleep 0.5
    for shape in B A; do
        declare -A T=()
        for ((r = 0; r < REPS; r++)); do
            for p in $POLICIES; do T[$p]+="$(step_ms "$shape" "$p") "; done
        done
        printf '| %s | %d |' "$shape" "$load"
        for p in $POLICIES; do printf ' %s |' "$(tr ' ' '\n' <<<"${T[$p]}" | grep . | median)"; done
        echo
        unset T
    done
done
