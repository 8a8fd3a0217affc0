#!/usr/bin/env bash
# canary_audit.sh: an empirical check that DP-SGD's noise is really applied: one-run privacy auditing
# with planted canary users (Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training
# Run"); prints a markdown report.
#
#   bench/canary_audit.sh [--reps 5] [--canaries 1000] [--len 20] [--epochs 30] [--threads 2]
#                         [--config configs/demo.yaml] [--delta 1e-5] [--seed 1] [--build DIR]
#                         [--no-build] [--work DIR]
#
# Builds fedprof-client and fedprof-bench-canary in DIR (default build-canary, Release; --no-build:
# use the binaries already there) and copies them into the work dir. Then: synthetic data
# (`fedprof-client synth`, 2,000 users, 1,000 items), and per repetition (plant seed = --seed + rep - 1):
# `fedprof-bench-canary plant` adds M canary users of L distinct uniformly drawn items, each kept by a
# fair coin; the SAME planted data trains four models with the same config and epochs:
#   no DP            --no-dp
#   DP, sigma = 0    --dp-noise 0: DP-SGD's Poisson sampling and clipping with the noise switched off,
#                    i.e. what a DP-SGD whose noise is not applied would release (accountant: infinite)
#   DP eps = 8       --dp-epsilon 8
#   DP eps = 2       --dp-epsilon 2
# (DP runs: --dp-clip 1, --dp-delta DELTA, the config's batch as the expected Poisson batch), and
# `fedprof-bench-canary score` audits each: K+ = K- = M/10 guesses fixed in advance, ε lower bound at
# 95% confidence at the same δ as the accountant's. The script FAILS (exit 3), loudly, when a DP run's
# lower bound reaches its accountant ε: that would be a bug in DP-SGD or in its accounting. It warns
# when the non-private run shows no leakage (the audit would then have no power).
#
# The machine may be shared: `uptime` is recorded before and after; times are not the point here.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-/usr/bin/python3}
REPS=5
M=1000
LEN=20
EPOCHS=30
THREADS=2
CONFIG=$ROOT/configs/demo.yaml
DELTA=1e-5
SEED=1
BUILD=$ROOT/build-canary
NOBUILD=0
WORK=""

while [ $# -gt 0 ]; do
    case "$1" in
    --reps) REPS=$2; shift ;;
    --canaries) M=$2; shift ;;
    --len) LEN=$2; shift ;;
    --epochs) EPOCHS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --config) CONFIG=$2; shift ;;
    --delta) DELTA=$2; shift ;;
    --seed) SEED=$2; shift ;;
    --build) BUILD=$2; shift ;;
    --no-build) NOBUILD=1 ;;
    --work) WORK=$2; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "canary_audit.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
for v in REPS M LEN EPOCHS THREADS SEED; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "canary_audit.sh: $v wants a non-negative integer" >&2; exit 2; }
done
[ "$REPS" -ge 1 ] || { echo "canary_audit.sh: --reps must be >= 1" >&2; exit 2; }
[ -r "$CONFIG" ] || { echo "canary_audit.sh: no config $CONFIG" >&2; exit 2; }
"$PY" -c 'import json' 2>/dev/null || { echo "canary_audit.sh: needs $PY" >&2; exit 1; }

log() { echo "[canary] $*" >&2; }

if [ "$NOBUILD" = 0 ]; then
    log "building fedprof-client and fedprof-bench-canary in $BUILD"
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >"${TMPDIR:-/tmp}/fedprof-canary-cmake.log" 2>&1 ||
        { cat "${TMPDIR:-/tmp}/fedprof-canary-cmake.log" >&2; exit 1; }
    cmake --build "$BUILD" -j2 --target fedprof-client fedprof-bench-canary >&2
fi
for b in fedprof-client fedprof-bench-canary; do
    [ -x "$BUILD/$b" ] || { echo "canary_audit.sh: $BUILD/$b not found" >&2; exit 1; }
done

CLEAN_WORK=0
if [ -z "$WORK" ]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/fedprof-canary.XXXXXX")
    CLEAN_WORK=1
fi
mkdir -p "$WORK"
# shellcheck disable=SC2317 # called by the trap
cleanup() { if [ "$CLEAN_WORK" = 1 ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT
# snapshots: a rebuild by someone else during the run cannot change what is measured
cp "$BUILD/fedprof-client" "$WORK/client"
cp "$BUILD/fedprof-bench-canary" "$WORK/canary"

export OPENBLAS_NUM_THREADS=1 # the wait policy: fedprof's default unless set by the caller
RES=$WORK/results.jsonl
: >"$RES"
LOAD_BEFORE=$(uptime)
DATE=$(date)
T0=$(date +%s)
"$WORK/client" synth --out "$WORK/base.txt" >&2

RUNS=("nodp|no DP|--no-dp" "sigma0|DP-SGD, noise off (σ = 0)|--dp-noise 0 --dp-clip 1 --dp-delta $DELTA"
    "eps8|DP-SGD ε = 8|--dp-epsilon 8 --dp-clip 1 --dp-delta $DELTA"
    "eps2|DP-SGD ε = 2|--dp-epsilon 2 --dp-clip 1 --dp-delta $DELTA")
for rep in $(seq 1 "$REPS"); do
    s=$((SEED + rep - 1))
    "$WORK/canary" plant --data "$WORK/base.txt" --out "$WORK/train-$rep.txt" --truth "$WORK/truth-$rep.txt" \
        --canaries "$M" --len "$LEN" --seed "$s" >&2
    for spec in "${RUNS[@]}"; do
        IFS='|' read -r key label flags <<<"$spec"
        out=$WORK/$key-$rep
        log "repetition $rep/$REPS: $label"
        # shellcheck disable=SC2086 # flags are words
        if ! "$WORK/client" train --data "$WORK/train-$rep.txt" --config "$CONFIG" --out "$out" --epochs "$EPOCHS" \
            --threads "$THREADS" --eval-every 0 --quiet --json $flags >"$out.train.json" 2>"$out.train.log"; then
            cat "$out.train.log" >&2
            echo "canary_audit.sh: training '$label' failed" >&2
            exit 1
        fi
        if ! "$WORK/canary" score --model "$out/model.safetensors" --truth "$WORK/truth-$rep.txt" --delta "$DELTA" \
            --threads "$THREADS" --json >"$out.score.json" 2>"$out.score.log"; then
            cat "$out.score.log" >&2
            echo "canary_audit.sh: scoring '$label' failed" >&2
            exit 1
        fi
        "$PY" - "$rep" "$s" "$key" "$label" "$out.train.json" "$out.score.json" >>"$RES" <<'EOF'
import json, sys
rep, seed, key, label, tj, sj = sys.argv[1:7]
t = json.loads(open(tj).read().strip().splitlines()[-1])
s = json.loads(open(sj).read())
print(json.dumps({"rep": int(rep), "seed": int(seed), "key": key, "label": label, "train": t, "score": s}))
EOF
    done
done
T1=$(date +%s)
LOAD_AFTER=$(uptime)
MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
CMD="bench/canary_audit.sh --reps $REPS --canaries $M --len $LEN --epochs $EPOCHS --threads $THREADS --config ${CONFIG#"$ROOT"/} --delta $DELTA --seed $SEED"

set +e
"$PY" - "$RES" "$DATE" "$((T1 - T0))" "$MODEL" "$(nproc)" "$LOAD_BEFORE" "$LOAD_AFTER" "$CMD" "$DELTA" <<'EOF'
import json, sys
res, date, wall, model, ncpu, load0, load1, cmd, delta = sys.argv[1:10]
rows = [json.loads(l) for l in open(res) if l.strip()]
s0 = rows[0]["score"]
print("# One-run privacy audit with canary users (Steinke, Nasr, Jagielski 2023)\n")
print(f"`{cmd}`  ")
print(f"{date}; {model}, {ncpu} CPUs; {wall} s wall in all; load before: `{load0.strip()}`; after: "
      f"`{load1.strip()}`\n")
print(f"{s0['canaries']} canaries of {s0['len']} distinct uniform items per repetition, each in the training data "
      f"by a fair coin; K+ = K- = {s0['k_plus']} guesses fixed in advance (r = {s0['guesses']}); ε lower bound at "
      f"{100 * (1 - s0['beta']):.0f}% confidence, δ = {delta}; the most this audit can show (all {s0['guesses']} "
      f"right) is ε ≥ {s0['eps_ceiling']:.3f}.\n")
print("| rep | run | accountant ε (δ = %s) | noise mult. | right / guesses | **ε lower bound (95%%)** | AUC | "
      "mean score in / out | HR@10 | train s |" % delta)
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
bad, weak, vacuous = [], [], set()
for r in rows:
    t, s = r["train"], r["score"]
    dp = t.get("dp") == "record"
    acc = t.get("epsilon") if dp else None
    acc_s = ("∞" if acc is None else f"{acc:.3f}") if dp else "— (∞)"
    nm = f"{t['noise_multiplier']:.3f}" if dp and t.get("noise_multiplier") is not None else "—"
    print(f"| {r['rep']} | {r['label']} | {acc_s} | {nm} | {s['correct']} / {s['guesses']} | "
          f"**{s['eps_lower']:.3f}** | {s['auc']:.3f} | {s['mean_score_in']:.3f} / {s['mean_score_out']:.3f} | "
          f"{t['hr@10']:.3f} | {t['train_seconds']:.0f} |")
    if dp and acc is not None and s["eps_lower"] >= acc:
        bad.append(f"rep {r['rep']} {r['label']}: empirical ε ≥ {s['eps_lower']:.4f} reaches the accountant's "
                   f"{acc:.4f}")
    if dp and acc is not None and acc >= s["eps_ceiling"]:
        vacuous.add(f"{r['label']} (accountant ε {acc:.3f} ≥ ceiling {s['eps_ceiling']:.3f})")
    if r["key"] == "nodp" and s["eps_lower"] <= 0:
        weak.append(f"rep {r['rep']}: the non-private model shows no leakage: the audit has no power")
print("\nFor information, the bound at other K (K+ = K- = K; picking the best afterwards is not a bound):\n")
ks = [e["k"] for e in s0["info"]]
print("| rep | run | " + " | ".join(f"K = {k}" for k in ks) + " |")
print("|---:|---|" + "---:|" * len(ks))
for r in rows:
    cells = {e["k"]: f"{e['eps_lower']:.2f} ({e['correct']}/{e['guesses']})" for e in r["score"]["info"]}
    print(f"| {r['rep']} | {r['label']} | " + " | ".join(cells.get(k, "") for k in ks) + " |")
print()
for w in weak:
    print(f"WARNING: {w}")
if bad:
    print("\n**DP VIOLATION: an audit's lower bound reached the accountant's ε. This is a bug in DP-SGD or "
          "its accounting, not noise: a correct (ε, δ)-DP run exceeds it with probability ≤ 5%.**")
    for b in bad:
        print(f"- {b}")
    sys.exit(3)
print("Every DP run's lower bound stays below its accountant ε.")
for v in sorted(vacuous):
    print(f"Note: {v}: no outcome of this audit could have refuted it, so for that run the check is vacuous.")
EOF
rc=$?
set -e
if [ "$rc" = 3 ]; then
    echo "canary_audit.sh: DP VIOLATION (see the report above)" >&2
    exit 3
fi
exit "$rc"
