#!/usr/bin/env bash
# The test command: installs missing packages, configures and builds in build/ (or $FEDPROF_BUILD_DIR),
# then runs every CMocka test through ctest.
#   scripts/test.sh              tests with sanitizers off (fast)
#   FEDPROF_SANITIZE=ON scripts/test.sh   with AddressSanitizer + UndefinedBehaviorSanitizer (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
fedprof_deps
build=${FEDPROF_BUILD_DIR:-build}
sanitize=${FEDPROF_SANITIZE:-OFF}
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B "$build" -DFEDPROF_WERROR=ON -DFEDPROF_SANITIZE="$sanitize" >/dev/null
cmake --build "$build" -j "$jobs"
# Sanitized code is slower; tests stay bounded by their ctest timeouts.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$build" --output-on-failure -j "$jobs"
