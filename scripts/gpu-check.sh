#!/usr/bin/env bash
# gpu-check.sh OUTDIR: the one script to run where an NVIDIA GPU is (issue: GPU local training).
#
#   1. builds fedprof with the CUDA back-end (build-gpu/, Release, FEDPROF_CUDA=ON);
#   2. runs tests/test_cuda (every GPU kernel and whole training steps against the CPU back-end,
#      with the tolerances stated in the test) and test_model / test_dpsgd / test_kernels on the
#      CPU as a control;
#   3. times a training step on the GPU by phase (fedprof-bench-step --device cuda), then
#      training throughput on the GPU, fedprof (`fedprof-client train --device cuda`) against
#      PyTorch on CUDA (bench/torch_sasrec.py --device cuda, the same model), on two synthetic
#      configurations: G = the Amazon Games shape (dim 50, 2 blocks, 1 head, maxlen 50, batch 128,
#      23,715 items) and L = dim 256, 4 blocks, maxlen 200, batch 256, 1,000,000 items; one epoch
#      over a reduced user count each, so the whole script stays under 5 minutes on an H100.
#
# Everything it prints goes to OUTDIR/gpu-check.log as well, with nvidia-smi, the test outputs and
# one JSON line per timed run (OUTDIR/runs.jsonl). Exit status: non-zero if the build or a test
# fails; a missing PyTorch only skips the peer runs (said in the log).
# Environment: SKIP_BUILD=1 reuses the build folder as it is; BUILD_DIR (default build-gpu);
# G_USERS / L_USERS / L_ITEMS change the synthetic sets; CONFIGS (default "G L") picks them;
# DEVICE (default cuda) = cpu dry-runs the whole script's plumbing on a machine without a GPU.
set -euo pipefail
OUT=${1:?usage: scripts/gpu-check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
ROOT=$(pwd)
exec > >(tee "$OUT/gpu-check.log") 2>&1
echo "gpu-check: $(date -u +%FT%TZ) on $(hostname), tree $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 && head -15 "$OUT/nvidia-smi.txt" || echo "gpu-check: nvidia-smi failed (see nvidia-smi.txt)"

B=${BUILD_DIR:-build-gpu}
DEV=${DEVICE:-cuda}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  missing=""
  for p in openblas libfyaml json-c cmocka grpc libprotobuf-c; do
    pkg-config --exists "$p" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    echo "gpu-check: missing development packages:$missing; installing (scripts/deps.sh)"
    . scripts/deps.sh
    fedprof_deps
  fi
  t0=$(date +%s)
  cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DFEDPROF_CUDA=ON -DFEDPROF_WERROR=ON >"$OUT/cmake.txt" 2>&1 ||
    { tail -30 "$OUT/cmake.txt"; exit 1; }
  cmake --build "$B" -j "$(nproc)" --target test_cuda test_model test_dpsgd test_kernels fedprof-client fedprof-bench-step \
    >"$OUT/build.txt" 2>&1 || { grep -E "error|Error" -A3 "$OUT/build.txt" | head -40; exit 1; }
  echo "gpu-check: built in $(( $(date +%s) - t0 )) s"
fi

export OPENBLAS_NUM_THREADS=1
status=0
for t in test_cuda test_model test_dpsgd test_kernels; do
  if FP_TEST_VERBOSE=1 "$B/$t" >"$OUT/$t.txt" 2>&1; then
    echo "gpu-check: $t passed ($(grep -c SKIPPED "$OUT/$t.txt" || true) skip lines)"
  else
    echo "gpu-check: $t FAILED:"; grep -E "FAILED|ERROR|error|gpu .* cpu" "$OUT/$t.txt" | head -30; status=1
  fi
done
# on a GPU run every parity test must have run: a skip means the CUDA back-end did not start
if [ "$DEV" = cuda ] && grep -q "SKIPPED" "$OUT/test_cuda.txt"; then
  echo "gpu-check: test_cuda SKIPPED tests on a GPU run (the CUDA back-end did not start?):"
  grep -E "SKIPPED|CUDA|device" "$OUT/test_cuda.txt" | head -12
  status=1
fi
grep -E "device auto|worst" "$OUT/test_cuda.txt" | head -40 || true

# where a step's time goes on the GPU (forward, backward, Adam; the DP-SGD step and its noise)
"$B/fedprof-bench-step" --device "$DEV" --maxlen 50 --items 23715 --mean-len 9.3 --batch 128 --threads "$(nproc)" \
  --steps 30 --dp-steps 5 >"$OUT/bench_step_G.txt" 2>&1 || { echo "gpu-check: bench-step G failed"; status=1; }
case " ${CONFIGS:-G L} " in *" L "*)
  "$B/fedprof-bench-step" --device "$DEV" --dim 256 --blocks 4 --maxlen 200 --items "${L_ITEMS:-1000000}" --mean-len 100 \
    --batch 256 --threads "$(nproc)" --steps 10 --dp-steps 0 >"$OUT/bench_step_L.txt" 2>&1 ||
    { echo "gpu-check: bench-step L failed"; status=1; } ;;
esac
grep -hE "device:|forward|throughput|DP" "$OUT"/bench_step_*.txt || true

PY=${PYTHON:-python3}
have_torch=0
if "$PY" -c 'import torch, sys; sys.exit(0 if sys.argv[1] == "cpu" or torch.cuda.is_available() else 1)' "$DEV" 2>/dev/null; then
  have_torch=1
  "$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda,
    torch.cuda.get_device_name(0) if sys.argv[1] == "cuda" else "(dry run on the CPU)")' "$DEV"
else
  echo "gpu-check: no PyTorch with CUDA in $PY: peer runs skipped"
fi

FP="$B/fedprof-client"
DATA="$OUT/data"
mkdir -p "$DATA"
runs="$OUT/runs.jsonl"
: >"$runs"
# name users items mean_len dim blocks heads maxlen batch dropout
configs=("G ${G_USERS:-31013} 23715 9.3 50 2 1 50 128 0.5" "L ${L_USERS:-8192} ${L_ITEMS:-1000000} 100 256 4 1 200 256 0.2")
for c in "${configs[@]}"; do
  read -r name users items meanlen dim blocks heads maxlen batch dropout <<<"$c"
  case " ${CONFIGS:-G L} " in *" $name "*) ;; *) continue ;; esac
  f="$DATA/$name.txt"
  "$FP" synth --out "$f" --users "$users" --items "$items" --mean-len "$meanlen" --seed 7 >/dev/null
  for dev in "$DEV"; do
    line=$("$FP" train --data "$f" --out "$DATA/$name-$dev" --device "$dev" --epochs 1 --eval-every 0 \
      --eval-users 1000 --no-full --dim "$dim" --blocks "$blocks" --heads "$heads" --maxlen "$maxlen" \
      --batch "$batch" --dropout "$dropout" --threads "$(nproc)" --json --quiet | tail -1) || { echo "gpu-check: fedprof $name $dev failed"; status=1; continue; }
    echo "{\"config\":\"$name\",\"impl\":\"fedprof\",\"device\":\"$dev\",\"result\":$line}" | tee -a "$runs"
  done
  if [ "$have_torch" = 1 ]; then
    line=$("$PY" bench/torch_sasrec.py --data "$f" --device "$DEV" --epochs 1 --dim "$dim" --blocks "$blocks" \
      --heads "$heads" --maxlen "$maxlen" --batch "$batch" --dropout "$dropout" --threads "$(nproc)" | tail -1) ||
      { echo "gpu-check: torch $name failed"; status=1; continue; }
    echo "{\"config\":\"$name\",\"impl\":\"torch\",\"device\":\"$DEV\",\"result\":$line}" | tee -a "$runs"
  fi
done
"$PY" - "$runs" <<'EOF' || true
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["config"], {})[r["impl"]] = r["result"].get("seqs_per_s")
for cfg, v in by.items():
    fp, th = v.get("fedprof"), v.get("torch")
    ratio = f"{fp / th:.2f}x" if fp and th else "n/a"
    print(f"config {cfg}: fedprof {fp} seq/s, torch {th} seq/s, fedprof/torch {ratio}")
EOF
echo "gpu-check: done (status $status); results in $OUT"
exit $status
