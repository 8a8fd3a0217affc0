#!/usr/bin/env bash
# The main job on the embedded default data: build, generate the synthetic behaviour log,
# train the profile encoder, evaluate it against the popularity baseline, write profiles and
# show recommendations for one user. Everything lands in demo-out/ (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
fedprof_deps
out=${1:-demo-out}
cmake -S . -B build -DFEDPROF_WERROR=ON >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
mkdir -p "$out"
bin=build/fedprof-client
$bin synth --out "$out/behaviour.txt"
$bin train --data "$out/behaviour.txt" --config configs/demo.yaml --out "$out/model"
$bin embed --model "$out/model/model.safetensors" --data "$out/behaviour.txt" --out "$out/profiles.npy"
echo
echo "Top 10 items for user 1:"
$bin recommend --model "$out/model/model.safetensors" --data "$out/behaviour.txt" --user 1 --k 10
