#!/usr/bin/env bash
# Usage: scripts/fuzz.sh SECONDS [TARGET...]
# Builds the libFuzzer targets of tests/fuzz with clang in build-fuzz/ (FEDPROF_FUZZ=ON; ASan +
# UBSan), runs each for SECONDS (-max_total_time) from a temporary copy of its seed corpus in
# tests/fuzz/corpus (the repository is not modified), and prints target, executions and crashes.
# Exits 1 if any target crashed (or leaked, or broke an invariant); its reproducer and log are kept
# in build-fuzz/fuzz-findings/<target>/. Env: FEDPROF_FUZZ_BUILD (build dir), JOBS (build jobs, 1).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-}
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
shift
all=(fuzz_tensor_stream fuzz_proto fuzz_safetensors fuzz_data fuzz_config fuzz_ledger)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

# shellcheck source=scripts/deps.sh
source "$root/scripts/deps.sh"
fedprof_deps || exit 1
if ! printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' |
        clang -x c -fsanitize=fuzzer - -o /dev/null >/dev/null 2>&1; then
    fedprof_fuzz_deps || exit 1
fi

build=${FEDPROF_FUZZ_BUILD:-$root/build-fuzz}
CC=clang cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DFEDPROF_FUZZ=ON >"$build.configure.log" 2>&1 ||
    { cat "$build.configure.log" >&2; exit 1; }
rm -f "$build.configure.log"
cmake --build "$build" -j"${JOBS:-1}" --target "${targets[@]}" >/dev/null || {
    cmake --build "$build" -j1 --target "${targets[@]}" 2>&1 | tail -40 >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/fedprof-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
findings="$build/fuzz-findings"
any=0
rows=()
for t in "${targets[@]}"; do
    bin="$build/tests/fuzz/$t"
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    [ -d "$root/tests/fuzz/corpus/$t" ] && cp -r "$root/tests/fuzz/corpus/$t/." "$work/$t/corpus/"
    # -timeout: one input taking longer than 25 s is a hang (reported as a crash).
    (cd "$work/$t" && ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" \
        "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=25 -print_final_stats=1 \
        -artifact_prefix="$work/$t/artifacts/" "$work/$t/corpus" >"$work/$t/log" 2>&1)
    rc=$?
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$work/$t/log" | tail -1)
    [ -z "$execs" ] && execs=$(grep -oE '^#[0-9]+' "$work/$t/log" | tail -1 | tr -d '#')
    crashed=0
    if [ $rc -ne 0 ] || ls "$work/$t/artifacts/"* >/dev/null 2>&1; then
        crashed=1
        any=1
        rm -rf "${findings:?}/$t"
        mkdir -p "$findings/$t"
        cp "$work/$t/log" "$findings/$t/log"
        cp "$work/$t/artifacts/"* "$findings/$t/" 2>/dev/null
        echo "== $t crashed (exit $rc); reproducer and log in $findings/$t/ ==" >&2
        grep -E "ERROR|SUMMARY|invariant failed|#[0-9]+ 0x" "$work/$t/log" | head -30 >&2
    fi
    rows+=("$(printf '%-20s %12s %8s' "$t" "${execs:-?}" "$crashed")")
done

printf '%-20s %12s %8s\n' target executions crashes
printf '%s\n' "${rows[@]}"
exit $any
