#!/usr/bin/env bash
# speed.sh: fedprof vs PyTorch (bench/torch_sasrec.py, the same model) on this machine.
#
#   bench/speed.sh [--quick] [--reps N] [--configs "A B"] [--work DIR]
#
# For each config, the same synthetic data set is written with `fedprof-client synth`; then
# training and profile inference are run alternately (fedprof, torch, fedprof, torch, ...),
# REPS times each, and the medians are tabled. Both sides use 2 threads.
#
#   A: dim 50, 2 blocks, 1 head, maxlen 200, batch 128, dropout 0.2; 6,040 users, 3,416 items,
#      mean length 50 (MovieLens-1M-like, SASRec's ML-1M setting)
#   B: dim 50, 2 blocks, 1 head, maxlen 50, batch 128, dropout 0.5; 31,013 users, 23,715 items,
#      mean length 9.3 (Amazon-Games-like)
#
# What is timed:
#   fedprof train: its JSON "seqs_per_s" = trained sequences / train_seconds over whole epochs,
#                  batching (negative sampling) and its first steps included.
#   torch train:   "seqs_per_s" = sequences / seconds of the optimisation steps only (forward,
#                  backward, Adam), the first 3 steps excluded as warm-up, batches pre-built in
#                  numpy outside the timed region: the most favourable number for torch, so the
#                  headline ratio is the conservative one for fedprof. Also reported:
#                  "seqs_per_s_incl_batching" over the whole run (warm-up + batching included),
#                  which is measured like fedprof's.
#   embed:         profiles of every user (batches of 256); fedprof's JSON profiles_per_s vs torch
#                  eval-mode no_grad forward, one warm-up batch excluded. torch loads the very
#                  model fedprof trained, and the two profile matrices are compared.
#   peak RSS:      each process's own ru_maxrss (JSON peak_rss_mb); torch's includes the Python
#                  interpreter and the torch libraries (rss_after_import_mb shows that share).
#
# The machine may be shared: before each run the script waits (up to QUIET_WAIT s, default 30;
# 0 with --quick) until the CPUs are >= 85% idle over a 1 s sample, and records the busy share it
# saw. Contended runs are flagged; both medians and bests (max) are tabled.
#
# Environment: FEDPROF_CLIENT (default build/fedprof-client), PYTHON (default /usr/bin/python3),
# EPOCHS_A / EPOCHS_B (default 1), REPS (default 3; 2 with --quick).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FP=${FEDPROF_CLIENT:-$ROOT/build/fedprof-client}
PY=${PYTHON:-/usr/bin/python3}
TS=$ROOT/bench/torch_sasrec.py
QUICK=0
REPS=${REPS:-}
CONFIGS="A B"
WORK=""

while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --reps) REPS=$2; shift ;;
    --configs) CONFIGS=$2; shift ;;
    --work) WORK=$2; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "speed.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$REPS" ]; then if [ "$QUICK" = 1 ]; then REPS=2; else REPS=3; fi; fi
if [ -z "${QUIET_WAIT:-}" ]; then if [ "$QUICK" = 1 ]; then QUIET_WAIT=0; else QUIET_WAIT=30; fi; fi

[ -x "$FP" ] || { echo "speed.sh: $FP not found (build fedprof first)" >&2; exit 1; }
"$PY" -c 'import torch, numpy' 2>/dev/null || { echo "speed.sh: $PY lacks torch/numpy" >&2; exit 1; }
[ -n "$WORK" ] || WORK=$(mktemp -d /tmp/fedprof-bench.XXXXXX)
mkdir -p "$WORK"
# Snapshot the binary: a rebuild during the run must not change what is measured.
cp "$FP" "$WORK/fedprof-client"
FP_ORIG=$FP
FP=$WORK/fedprof-client
RES=$WORK/results.jsonl
CMDS=$WORK/commands.txt
: >"$RES"
: >"$CMDS"

# Optional train flags: passed only when this fedprof-client knows them.
TRAIN_HELP=$("$FP" train --help 2>&1 || true)
has_flag() { grep -q -- "$1" <<<"$TRAIN_HELP"; }

log() { echo "[speed] $*" >&2; }

# busy_pct: share of all CPUs busy (any process, any container) over 1 s, from /proc/stat.
busy_pct() {
    local a b
    a=$(head -n 1 /proc/stat)
    sleep 1
    b=$(head -n 1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); t = 0; i = 0;
        for (k = 2; k <= 9; k++) { d = y[k] - x[k]; t += d; if (k == 5 || k == 6) i += d }
        printf "%d", (t > 0 ? 100 * (t - i) / t : 0) }'
}

# quiet: wait until the machine is idle (<= 15% busy) or QUIET_WAIT seconds passed; sets BUSY.
quiet() {
    local waited=0
    BUSY=$(busy_pct 2>/dev/null || echo 0)
    while [ "$BUSY" -gt 15 ] && [ "$waited" -lt "$QUIET_WAIT" ]; do
        [ "$waited" = 0 ] && log "machine ${BUSY}% busy with other work: waiting up to ${QUIET_WAIT}s"
        sleep 4
        waited=$((waited + 5))
        BUSY=$(busy_pct 2>/dev/null || echo 0)
    done
}

# run TAG CMD...: run, echo the command, keep the last JSON line of stdout in results.jsonl.
run() {
    local tag=$1
    shift
    printf '%s\n' "$*" >>"$CMDS"
    log "$tag: $*"
    local out
    quiet
    if ! out=$("$@" 2>"$WORK/last.stderr"); then
        echo "speed.sh: command failed ($tag): $*" >&2
        cat "$WORK/last.stderr" >&2
        exit 1
    fi
    local line
    line=$(grep '^{' <<<"$out" | tail -n 1 || true)
    [ -n "$line" ] || { echo "speed.sh: no JSON line from: $*" >&2; echo "$out" >&2; exit 1; }
    printf '{"tag": "%s", "busy_before_pct": %s, "result": %s}\n' "$tag" "$BUSY" "$line" >>"$RES"
}

cfg_params() { # name -> users items mean_len seed maxlen dropout epochs
    case "$1" in
    A) if [ "$QUICK" = 1 ]; then echo "600 3416 50 1 200 0.2 1"; else echo "6040 3416 50 1 200 0.2 ${EPOCHS_A:-1}"; fi ;;
    B) if [ "$QUICK" = 1 ]; then echo "3000 23715 9.3 2 50 0.5 1"; else echo "31013 23715 9.3 2 50 0.5 ${EPOCHS_B:-1}"; fi ;;
    *) echo "speed.sh: unknown config $1" >&2; exit 2 ;;
    esac
}

T_START=$(date +%s)
for C in $CONFIGS; do
    read -r USERS ITEMS MEANLEN SEED MAXLEN DROPOUT EPOCHS <<<"$(cfg_params "$C")"
    D=$WORK/$C
    mkdir -p "$D"
    DATA=$D/data.txt
    printf '%s\n' "$FP synth --out $DATA --users $USERS --items $ITEMS --mean-len $MEANLEN --seed $SEED" >>"$CMDS"
    "$FP" synth --out "$DATA" --users "$USERS" --items "$ITEMS" --mean-len "$MEANLEN" --seed "$SEED" >&2
    MODEL_ARGS=(--dim 50 --blocks 2 --heads 1 --maxlen "$MAXLEN")
    FP_EXTRA=()
    has_flag --dropout && FP_EXTRA+=(--dropout "$DROPOUT")
    has_flag --eval-users && FP_EXTRA+=(--eval-users 1000) # its final evaluation is untimed
    has_flag --no-full && FP_EXTRA+=(--no-full)
    for r in $(seq 1 "$REPS"); do
        rm -rf "$D/fp_$r"
        run "$C train fedprof $r" "$FP" train --data "$DATA" --epochs "$EPOCHS" "${MODEL_ARGS[@]}" --batch 128 \
            "${FP_EXTRA[@]}" --eval-every 0 --threads 2 --quiet --json --out "$D/fp_$r"
        run "$C train torch $r" env OPENBLAS_NUM_THREADS=1 "$PY" "$TS" --mode train --data "$DATA" --epochs "$EPOCHS" \
            "${MODEL_ARGS[@]}" --batch 128 --dropout "$DROPOUT" --threads 2 --json
    done
    for r in $(seq 1 "$REPS"); do
        run "$C embed fedprof $r" "$FP" embed --model "$D/fp_1/model.safetensors" --data "$DATA" \
            --out "$D/fp_profiles.npy" --json --threads 2 --quiet
        run "$C embed torch $r" env OPENBLAS_NUM_THREADS=1 "$PY" "$TS" --mode embed --data "$DATA" \
            "${MODEL_ARGS[@]}" --embed-batch 256 --threads 2 --json \
            --load-fedprof "$D/fp_1/model.safetensors" --save-profiles "$D/torch_profiles.npy"
    done
    "$PY" - "$D/fp_profiles.npy" "$D/torch_profiles.npy" "$C" >>"$RES" <<'EOF'
import json, sys, numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
d = float(np.abs(a - b).max()) if a.shape == b.shape else None
print(json.dumps({"tag": "%s check" % sys.argv[3], "result": {
    "shape_fedprof": list(a.shape), "shape_torch": list(b.shape), "max_abs_diff": d,
    "max_abs": float(np.abs(a).max())}}))
EOF
done
T_END=$(date +%s)

"$PY" - "$RES" "$CMDS" "$QUICK" "$REPS" "$((T_END - T_START))" "$WORK" "$FP_ORIG" <<'EOF'
import json, os, platform, statistics, subprocess, sys
res_path, cmds_path, quick, reps, wall, work, fp_orig = sys.argv[1:8]
rows = [json.loads(l) for l in open(res_path) if l.strip()]
by = {}
for r in rows:
    parts = r["tag"].split()
    by.setdefault(tuple(parts[:3]), []).append(r["result"])

def med(cfg, mode, impl, key):
    v = [x.get(key) for x in by.get((cfg, mode, impl), []) if x.get(key) is not None]
    return (statistics.median(v), v) if v else (None, [])

def best(cfg, mode, impl, key, lower=False):
    v = [x.get(key) for x in by.get((cfg, mode, impl), []) if x.get(key) is not None]
    return (min(v) if lower else max(v)) if v else None

def f(x, nd=1):
    return "n/a" if x is None else f"{x:,.{nd}f}"

def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b

model = "?"
try:
    for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if l.startswith("Model name"):
            model = l.split(":", 1)[1].strip()
except OSError:
    pass
print("# fedprof vs PyTorch speed benchmark" + (" (QUICK smoke run: numbers not meaningful)" if quick == "1" else ""))
print()
print(f"- machine: {model}, nproc {os.cpu_count()}, {platform.system()} {platform.release()}")
t = next((x["result"] for x in rows if x["tag"].split()[2:3] == ["torch"]), {})
print(f"- torch {t.get('torch')} (torch threads {t.get('threads')}, OPENBLAS_NUM_THREADS "
      f"{t.get('openblas_threads')}, attention '{t.get('attn')}', MALLOC_MMAP_THRESHOLD_ "
      f"{t.get('malloc_mmap_threshold')}); fedprof --threads 2")
print(f"- {reps} alternating runs per measurement, medians shown (all runs listed); total {wall} s")
print(f"- work dir: {work} (fedprof-client there is a copy of {fp_orig} taken at the start)")
busy = [(r["tag"], r["busy_before_pct"]) for r in rows if "busy_before_pct" in r]
noisy = [f"{t} ({b}%)" for t, b in busy if b > 15]
if busy:
    print(f"- CPU busy with other work just before each run: max {max(b for _, b in busy)}%"
          + (f"  **WARNING: {len(noisy)} run(s) started on a busy machine: {', '.join(noisy)}; "
             "their numbers may be low (see the per-run lists; 'best' is the max)**" if noisy else ""))
targets = []
for cfg in sorted({k[0] for k in by}):
    fp_tr, fp_tr_v = med(cfg, "train", "fedprof", "seqs_per_s")
    pt_tr, pt_tr_v = med(cfg, "train", "torch", "seqs_per_s")
    pt_trb, pt_trb_v = med(cfg, "train", "torch", "seqs_per_s_incl_batching")
    fp_em, fp_em_v = med(cfg, "embed", "fedprof", "profiles_per_s")
    pt_em, pt_em_v = med(cfg, "embed", "torch", "profiles_per_s")
    fp_rt, _ = med(cfg, "train", "fedprof", "peak_rss_mb")
    pt_rt, _ = med(cfg, "train", "torch", "peak_rss_mb")
    fp_re, _ = med(cfg, "embed", "fedprof", "peak_rss_mb")
    pt_re, _ = med(cfg, "embed", "torch", "peak_rss_mb")
    pt_imp, _ = med(cfg, "train", "torch", "rss_after_import_mb")
    fp_loss, _ = med(cfg, "train", "fedprof", "final_loss")
    pt_loss, _ = med(cfg, "train", "torch", "final_loss")
    t0 = (by.get((cfg, "train", "torch")) or [{}])[0]
    chk = (by.get((cfg, "check", None)) or by.get((cfg, "check")) or [{}])[0]
    print()
    print(f"## Config {cfg}: users {t0.get('users')}, items {t0.get('items')}, interactions "
          f"{t0.get('interactions')}, trainable users {t0.get('trainable_users')}, epochs {t0.get('epochs')}")
    print()
    bfp, bpt = best(cfg, "train", "fedprof", "seqs_per_s"), best(cfg, "train", "torch", "seqs_per_s")
    bfe, bpe = best(cfg, "embed", "fedprof", "profiles_per_s"), best(cfg, "embed", "torch", "profiles_per_s")
    print("| measure (median of runs) | fedprof | torch | fedprof / torch |")
    print("|---|---:|---:|---:|")
    print(f"| train seqs/s (torch: steps only, warm-up excluded) | {f(fp_tr)} | {f(pt_tr)} | {f(ratio(fp_tr, pt_tr), 2)}x |")
    print(f"| train seqs/s (torch: whole run incl. batching, like fedprof's) | {f(fp_tr)} | {f(pt_trb)} | {f(ratio(fp_tr, pt_trb), 2)}x |")
    print(f"| inference profiles/s | {f(fp_em)} | {f(pt_em)} | {f(ratio(fp_em, pt_em), 2)}x |")
    print(f"| peak RSS, train (MB) | {f(fp_rt)} | {f(pt_rt)} | {f(ratio(fp_rt, pt_rt), 3)} |")
    print(f"| peak RSS, inference (MB) | {f(fp_re)} | {f(pt_re)} | {f(ratio(fp_re, pt_re), 3)} |")
    print(f"| final train loss (mean of last epoch) | {f(fp_loss, 4)} | {f(pt_loss, 4)} | |")
    print(f"| best run: train seqs/s (torch steps only) | {f(bfp)} | {f(bpt)} | {f(ratio(bfp, bpt), 2)}x |")
    print(f"| best run: inference profiles/s | {f(bfe)} | {f(bpe)} | {f(ratio(bfe, bpe), 2)}x |")
    print()
    print(f"runs: fedprof train {[round(x) for x in fp_tr_v]}, torch train {[round(x) for x in pt_tr_v]} "
          f"(incl. batching {[round(x) for x in pt_trb_v]}), fedprof embed {[round(x) for x in fp_em_v]}, "
          f"torch embed {[round(x) for x in pt_em_v]}; torch RSS right after `import torch`: {f(pt_imp)} MB")
    if chk:
        print(f"same model check: profiles fedprof {chk.get('shape_fedprof')} vs torch {chk.get('shape_torch')}, "
              f"max |diff| {chk.get('max_abs_diff')} (max |value| {f(chk.get('max_abs'), 3)})")
    targets.append((cfg, ratio(fp_tr, pt_tr), ratio(fp_em, pt_em), fp_rt, pt_rt, fp_re, pt_re))
print()
print("## Targets (train >= 2.5x, inference >= 3x, lower peak RSS)")
print()
ok = lambda c: "PASS" if c else "FAIL"
for cfg, tr, em, a, b, c, d in targets:
    print(f"- {cfg}: train {f(tr, 2)}x {ok(tr is not None and tr >= 2.5)}; inference {f(em, 2)}x "
          f"{ok(em is not None and em >= 3)}; RSS train {ok(a is not None and b is not None and a < b)}, "
          f"inference {ok(c is not None and d is not None and c < d)}")
print()
print("## Commands")
print()
print("```")
print(open(cmds_path).read().rstrip())
print("```")
EOF
