#!/usr/bin/env bash
# The main job on the embedded default data: build, generate the synthetic behaviour log,
# train the profile encoder, evaluate it against the popularity baseline, write profiles and
# show recommendations for one user; then split the users among three partners and train the
# same encoder as a federation on this machine: a coordinator and three partners over mutual TLS
# on 127.0.0.1, record-level differential privacy, each partner with its own privacy budget and
# signed ledger, audited at the end. Everything lands in demo-out/ (or $1).
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

# run_federation NAME BUDGET_SHOP BUDGET_BANK BUDGET_MARKET [server flags...]: a coordinator and three
# partners over mutual TLS on 127.0.0.1 (a free port), logs and outputs in $out/NAME/.
run_federation() {
    local name=$1 b0=$2 b1=$3 b2=$4
    shift 4
    local fed="$out/$name"
    rm -rf "$fed"
    mkdir -p "$fed"
    local n_items
    n_items=$(awk 'BEGIN { m = 0 } $2 > m { m = $2 } END { print m }' "$out/behaviour.txt")
    build/fedprof-server run --config configs/demo-federation.yaml --listen 127.0.0.1:0 --n-items "$n_items" \
        --federation-id "$name" --checkpoint-dir "$fed/coordinator" --ca "$certs/ca.pem" \
        --cert "$certs/server.pem" --key "$certs/server.key" "$@" 2>"$fed/server.log" &
    local server_pid=$!
    local port=
    for _ in $(seq 100); do
        port=$(sed -n 's/.* on port \([0-9][0-9]*\) .*/\1/p' "$fed/server.log")
        [ -n "$port" ] && break
        kill -0 $server_pid 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$port" ]; then
        kill $server_pid 2>/dev/null || true
        echo "demo: the coordinator did not start:" >&2
        cat "$fed/server.log" >&2
        return 1
    fi
    local pids=() i=0 budgets=("$b0" "$b1" "$b2") p
    for p in shop bank market; do
        local extra=()
        [ "${budgets[$i]}" != - ] && extra=(--budget-epsilon "${budgets[$i]}")
        build/fedprof-client join --server "localhost:$port" --data "$out/partners/partner$i.txt" \
            --ca "$certs/ca.pem" --cert "$certs/$p.pem" --key "$certs/$p.key" --out "$fed/$p" \
            --threads 1 --give-up 300 "${extra[@]}" 2>"$fed/$p.log" &
        pids+=($!)
        i=$((i + 1))
    done
    local status=0 pid
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    if [ $status -ne 0 ]; then kill $server_pid 2>/dev/null || true; fi
    wait $server_pid || status=1
    grep -E "committed|done|warning|error" "$fed/server.log" | tail -n 3
    for p in shop bank market; do
        echo "  $p: $(grep -E '^final model on local' "$fed/$p.log" | sed 's/^final model on local test items: //')"
        grep -E '^privacy:' "$fed/$p.log" | sed 's/^/    /' || true
    done
    [ $status -eq 0 ] || { echo "demo: the federation failed (logs in $fed)" >&2; return 1; }
}

echo
echo "== The same encoder trained by three partners as a federation on this machine (mutual TLS) =="
mkdir -p "$out/partners"
for p in 0 1 2; do awk -v p=$p '$1 % 3 == p' "$out/behaviour.txt" > "$out/partners/partner$p.txt"; done
certs="$out/certs"
scripts/make-certs.sh "$certs" shop bank market >/dev/null
run_federation federation - - -
echo "  final model: $out/federation/coordinator/model.safetensors"

echo
echo "== Again with record-level differential privacy: budgets epsilon 8 (shop, bank) and 4 (market) =="
run_federation federation-dp 8 8 4 --privacy-unit record --clip 1 --noise-multiplier 1.3 --local-epochs 1
echo "  (about 670 users per partner is far too few for DP-SGD at this epsilon: the noise costs most of the"
echo "   accuracy. Record-level DP pays off with tens of thousands of users per partner.)"
echo
echo "The federation's privacy ledger, verified offline (fedprof-audit verify):"
build/fedprof-audit verify "$out/federation-dp/coordinator/federation-ledger.jsonl" | tail -n 4
