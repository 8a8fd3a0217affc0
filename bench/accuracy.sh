#!/usr/bin/env bash
# Accuracy against the SASRec paper on Amazon Games (../shared/data/amazon-games.txt):
# trains with configs/centralized.yaml (the paper's Games settings) and prints the sampled and
# full-catalogue HR@10 / NDCG@10 beside the popularity baseline and the paper's numbers.
#   bench/accuracy.sh [--epochs N] [--threads N] [--out DIR]
# Skips cleanly (exit 0) when the data set is absent. FEDPROF_BUILD_DIR picks the build folder
# (default build; built there first if it has no fedprof-client).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${FEDPROF_GAMES:-../shared/data/amazon-games.txt}
epochs=400 threads=2 out=bench-out/games
while [ $# -gt 0 ]; do
    case "$1" in
        --epochs) epochs=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 [--epochs N] [--threads N] [--out DIR]" >&2; exit 2 ;;
    esac
done
if [ ! -f "$data" ]; then
    echo "skip: $data not found" >&2
    exit 0
fi
bdir=${FEDPROF_BUILD_DIR:-build}
[ -x "$bdir/fedprof-client" ] || { cmake -S . -B "$bdir" >/dev/null && cmake --build "$bdir" -j2 >/dev/null; }
mkdir -p "$out"
echo "machine: $(lscpu | sed -n 's/^Model name:\s*//p'), $(nproc) cores"
cmd="$bdir/fedprof-client train --data $data --config configs/centralized.yaml --epochs $epochs --threads $threads --out $out --json"
echo "command: ${OMP_WAIT_POLICY:+OMP_WAIT_POLICY=$OMP_WAIT_POLICY }OPENBLAS_NUM_THREADS=1 $cmd"
OPENBLAS_NUM_THREADS=1 $cmd 2> "$out/train.log" | tail -n 1 > "$out/result.json"
/usr/bin/env python3 - "$out/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("| metric | fedprof | popularity | SASRec paper |")
print("|---|---|---|---|")
print(f"| HR@10 (100 sampled negatives) | {r['hr@10']:.4f} | {r['popularity_hr@10']:.4f} | 0.7410 |")
print(f"| NDCG@10 (100 sampled negatives) | {r['ndcg@10']:.4f} | {r['popularity_ndcg@10']:.4f} | 0.5360 |")
print(f"| HR@10 (full catalogue) | {r['full_hr@10']:.4f} | {r['popularity_full_hr@10']:.4f} | — |")
print(f"| NDCG@10 (full catalogue) | {r['full_ndcg@10']:.4f} | {r['popularity_full_ndcg@10']:.4f} | — |")
print(f"\nepochs {r['epochs']}, wall {r['seconds']:.0f} s (training {r['train_seconds']:.0f} s, "
      f"{r['seqs_per_s']:.0f} sequences/s), peak RSS {r['peak_rss_mb']:.0f} MB, {r['eval_users']} users evaluated")
PY
