#!/usr/bin/env bash
# The seed's experiment (8 items of 10,000 integers, 4 worker processes,
# TRIALS trials, two strategies) on Python's multiprocessing.Queue
# (seed_mp_queue.py) and on jobmill's long-lived workers (examples/seed.rs),
# printed side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
PEERS=$(find_peers)
TRIALS=${TRIALS:-100}
cargo build --release --quiet --example seed
py=$(python3 "$PEERS/seed_mp_queue.py" --trials "$TRIALS")
rs=$(target/release/examples/seed --trials "$TRIALS")
printf '%-26s %-28s %-28s\n' strategy "python multiprocessing" "jobmill persistent workers"
for s in nonblocking-until-empty sentinel-per-worker; do
    p=$(grep "strategy=$s " <<<"$py")
    r=$(grep "strategy=$s " <<<"$rs")
    printf '%-26s %-28s %-28s\n' "$s" \
        "passed=$(field passed "$p") in $(field seconds "$p")s" \
        "passed=$(field passed "$r") in $(field seconds "$r")s"
done
