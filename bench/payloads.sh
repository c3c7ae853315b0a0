#!/usr/bin/env bash
# Payload throughput from 16 B to 64 MiB: COUNT items of SIZE bytes through
# 2 long-lived jobmill workers (Rust worker reading every byte, Python worker
# taking the length) beside Python's multiprocessing.Queue
# (mp_queue_throughput.py), with this machine's memcpy at the same size as
# the ceiling. Runs are interleaved (peer, rust, python for every size, then
# again), RUNS times (default 3); each figure is the median. Counts aim at
# 1-3 s per run; scale them with SCALE (e.g. SCALE=0.5).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
PEERS=$(find_peers)
RUNS=${RUNS:-3}
SCALE=${SCALE:-1}
cargo build --release --quiet --example throughput
BIN=target/release/examples/throughput

# size peer_count jobmill_count (rust and python)
CASES=(
    "16 150000 1500000"
    "65536 30000 200000"
    "1048576 2000 20000"
    "67108864 30 200"
)
scaled() { awk -v n="$1" -v s="$SCALE" 'BEGIN { c = int(n * s); print (c < 1 ? 1 : c) }'; }

declare -A RES
for run in $(seq "$RUNS"); do
    for case in "${CASES[@]}"; do
        read -r size pc jc <<<"$case"
        pc=$(scaled "$pc"); jc=$(scaled "$jc")
        RES[$size,peer]+="$(field mb_per_s "$(python3 "$PEERS/mp_queue_throughput.py" --size "$size" --count "$pc" --workers 2 | tail -1)") "
        RES[$size,rust]+="$(field mb_per_s "$("$BIN" --worker rust --size "$size" --count "$jc" --workers 2 | tail -1)") "
        RES[$size,python]+="$(field mb_per_s "$("$BIN" --worker python --size "$size" --count "$jc" --workers 2 | tail -1)") "
        RES[$size,memcpy]+="$(field gb_per_s "$("$BIN" --memcpy --size "$size" --count "$(( (4 << 30) / size ))" | tail -1)") "
    done
    echo "run $run of $RUNS done" >&2
done

med() { tr ' ' '\n' <<<"$1" | grep . | median; }
printf '%-10s %14s %14s %8s %14s %8s %12s\n' "size" "peer MB/s" "rust MB/s" "ratio" "python MB/s" "ratio" "memcpy GB/s"
for case in "${CASES[@]}"; do
    read -r size _ _ <<<"$case"
    peer=$(med "${RES[$size,peer]}")
    rust=$(med "${RES[$size,rust]}")
    py=$(med "${RES[$size,python]}")
    mc=$(med "${RES[$size,memcpy]}")
    printf '%-10s %14.1f %14.1f %7.1fx %14.1f %7.1fx %12.1f\n' "$size" "$peer" "$rust" \
        "$(echo "$rust / $peer" | bc -l)" "$py" "$(echo "$py / $peer" | bc -l)" "$mc"
done
echo "(2 workers; medians of $RUNS interleaved runs; 'ratio' = jobmill / peer MB/s)"
