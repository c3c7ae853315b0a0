#!/usr/bin/env bash
# Small-job throughput: 16-byte no-op jobs through 2 long-lived jobmill workers
# (Rust worker, Python worker) beside Python's multiprocessing.Queue
# (mp_queue_throughput.py), all in this one invocation. Each figure is the
# median of RUNS runs (default 3). Prints jobs/s and ratios to the peer.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
PEERS=$(find_peers)
RUNS=${RUNS:-3}
SIZE=${SIZE:-16}
cargo build --release --quiet --example throughput
BIN=target/release/examples/throughput

run() { # name command...
    local name=$1; shift
    for _ in $(seq "$RUNS"); do
        field items_per_s "$("$@" | tail -1)"
    done | median
}

peer=$(run peer python3 "$PEERS/mp_queue_throughput.py" --size "$SIZE" --count 100000 --workers 2)
rust=$(run rust "$BIN" --worker rust --size "$SIZE" --count 2000000 --workers 2)
py=$(run python "$BIN" --worker python --size "$SIZE" --count 500000 --workers 2)

printf '%-40s %12s %8s\n' "size=${SIZE}B, 2 workers (median of $RUNS)" "jobs/s" "ratio"
printf '%-40s %12.0f %8s\n' "python multiprocessing.Queue (peer)" "$peer" "1.0x"
printf '%-40s %12.0f %7.1fx\n' "jobmill persistent, Rust worker" "$rust" "$(echo "$rust / $peer" | bc -l)"
printf '%-40s %12.0f %7.1fx\n' "jobmill persistent, Python worker" "$py" "$(echo "$py / $peer" | bc -l)"
