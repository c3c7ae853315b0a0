# Shared helpers for the bench scripts (sourced).

# The directory holding the peers' scripts (seed_mp_queue.py, mp_queue_throughput.py).
find_peers() {
    if [[ -n "${JOBMILL_PEERS:-}" ]]; then echo "$JOBMILL_PEERS"; return; fi
    for d in ../shared/peers ../../shared/peers /work/shared/peers; do
        if [[ -d "$d" ]]; then (cd "$d" && pwd); return; fi
    done
    echo "cannot find the peers' scripts; set JOBMILL_PEERS" >&2
    exit 2
}

# field NAME LINE: the value of NAME=... in a key=value line.
field() {
    tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"
}

# median of the numbers on stdin.
median() {
    sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
