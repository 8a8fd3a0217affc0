#!/usr/bin/env bash
# dp.sh: the cost of DP-SGD on this machine.
#
#   bench/dp.sh [--n COORDS] [--reps R] [--steps S] [--batches "128 1024 4096"]
#
# 1. Noise: samples/s of fp_dp_add_noise (the exact discrete Gaussian of Canonne-Kamath-Steinke
#    over the ChaCha20 CSPRNG, at the grid DP-SGD uses: sigma/grid = 2^21 for 1.22M parameters)
#    on COORDS coordinates (default 1,219,858 = the Amazon Games model), with 1 and with 2
#    threads, against numpy's np.random.default_rng().normal (PCG64 + ziggurat, one thread,
#    float64), alone and as "x += normal" into a float32 vector (what fp_dp_add_noise does);
#    the best of R repetitions each, and the ratios.
# 2. Steps: fedprof-bench-step on the Games shape (maxlen 50, 23,715 items, mean length 9.3,
#    batch 128, 2 threads): a normal step, the clipped gradient on the same batch, and S whole
#    DP-SGD steps of the same expected batch, with their noise time apart, and S whole sigma=1
#    steps as training runs them (noise and the division by the batch in one pass); then the same at each
#    batch of --batches (default none): the noise is per step, whatever the batch, so its share
#    of a step falls as the batch grows.
#
# numpy's generator is not a CSPRNG and its floating-point Gaussian is not safe for privacy
# (Mironov 2012); the comparison says what the secure, exact sampler costs, not that the two are
# interchangeable.
#
# Environment: BENCH_STEP (default build/fedprof-bench-step), PYTHON (default /usr/bin/python3:
# Debian's python3-numpy).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BS=${BENCH_STEP:-$ROOT/build/fedprof-bench-step}
PY=${PYTHON:-/usr/bin/python3}
N=1219858
REPS=5
STEPS=10
BATCHES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --n) N=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --batches) BATCHES=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "dp.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$BS" ] || { echo "dp.sh: $BS not built (cmake --build build)" >&2; exit 1; }
"$PY" -c 'import numpy' 2>/dev/null || { echo "dp.sh: $PY has no numpy (apt-get install python3-numpy)" >&2; exit 1; }
# OpenMP's wait policy: fedprof's own default (common/threads_env.h) unless set by the caller
export OPENBLAS_NUM_THREADS=1

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
rate() { sed -n 's/.*= \([0-9.e+]*\) samples\/s.*/\1/p'; }
fp1=$("$BS" --noise "$N" --reps "$REPS" --threads 1 | tee /dev/stderr | rate)
fp2=$("$BS" --noise "$N" --reps "$REPS" --threads 2 | tee /dev/stderr | rate)
read -r np_gen np_add < <("$PY" - "$N" "$REPS" <<'EOF'
import sys, time
import numpy as np
n, reps = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng()
x = np.zeros(n, dtype=np.float32)
best_gen = best_add = 1e30
for _ in range(reps):
    t = time.perf_counter(); z = rng.normal(0.0, 1.0, size=n); best_gen = min(best_gen, time.perf_counter() - t)
    t = time.perf_counter(); x += rng.normal(0.0, 1.0, size=n); best_add = min(best_add, time.perf_counter() - t)
print(n / best_gen, n / best_add)
EOF
)
printf 'numpy %s default_rng().normal: %.0f samples/s; x += normal (float32 x): %.0f samples/s (1 thread)\n' \
  "$("$PY" -c 'import numpy; print(numpy.__version__)')" "$np_gen" "$np_add"
"$PY" - "$fp1" "$fp2" "$np_gen" "$np_add" <<'EOF'
import sys
fp1, fp2, gen, add = map(float, sys.argv[1:])
print(f"ratio fedprof / numpy: 1 thread {fp1 / gen:.3f} of numpy's normal ({fp1 / add:.3f} of x += normal); "
      f"2 threads {fp2 / gen:.3f} ({fp2 / add:.3f})")
EOF
echo
"$BS" --maxlen 50 --items 23715 --mean-len 9.3 --batch 128 --threads 2 --steps 30 --dp-steps "$STEPS"
for b in $BATCHES; do
  case "$b" in ''|*[!0-9]*) echo "dp.sh: --batches: '$b' is not a positive integer" >&2; exit 2 ;; esac
  echo
  echo "batch $b:"
  "$BS" --maxlen 50 --items 23715 --mean-len 9.3 --batch "$b" --threads 2 --steps 10 --dp-steps "$STEPS"
done
