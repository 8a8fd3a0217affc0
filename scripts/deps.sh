#!/usr/bin/env bash
# Installs the Debian packages fedprof needs when they are missing (as root), or says which
# ones to install. Sourced by scripts/test.sh and scripts/demo.sh.
fedprof_deps() {
    local pkgs=(build-essential cmake pkg-config libopenblas-dev libfyaml-dev libjson-c-dev libcmocka-dev
                libssl-dev libgrpc-dev libprotobuf-c-dev protobuf-c-compiler)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "fedprof: missing Debian packages: ${missing[*]}" >&2
        echo "fedprof: install them with: sudo apt-get install -y ${missing[*]}" >&2
        return 1
    fi
    echo "fedprof: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Only for scripts/fuzz.sh: clang and its libFuzzer runtime (FEDPROF_FUZZ=ON builds).
fedprof_fuzz_deps() {
    local pkgs=(clang libclang-rt-14-dev)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "fedprof: fuzzing needs: ${missing[*]}" >&2
        echo "fedprof: install them with: sudo apt-get install -y ${missing[*]}" >&2
        return 1
    fi
    echo "fedprof: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
