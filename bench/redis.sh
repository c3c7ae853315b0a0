#!/usr/bin/env bash
# No-op jobs per second on a loopback Redis with 2 worker processes:
# jobmill's Redis Streams backend (batched lease/ack) beside RQ (Python,
# installed from PyPI into a throwaway venv), on the same server.
#
#   bench/redis.sh [JOBS] [RQ_JOBS]
#
# JOBS (default 200000) for jobmill, RQ_JOBS (default 5000) for RQ, which is
# much slower. Figures for jobmill: library workers (get_many/complete_many)
# draining a pre-filled queue, and producer + workers running together; then
# two `jobmill worker --persistent` processes (one long-lived worker each,
# window WINDOW, default 1024) draining a pre-filled queue, with a no-op Rust
# worker and a no-op Python worker (they store a result record per job and
# print each result, as the command does). redis-server runs with AOF on
# (appendfsync everysec), as in the tests. Needs redis-server, python3.
set -euo pipefail

JOBS=${1:-200000}
RQ_JOBS=${2:-5000}
BATCH=${BATCH:-500}
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
redis_pid=
cleanup() {
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

command -v redis-server >/dev/null || { echo "bench: redis-server is not installed" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly yes --dir "$tmp" \
    >"$tmp/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 300); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done
redis-cli -p "$port" ping | grep -q PONG

echo "building the benchmark (release)..." >&2
(cd "$here" && cargo build --release --quiet --example redis_bench \
    --example throughput --bin jobmill)
bench="$here/target/release/examples/redis_bench"
jobmill="$here/target/release/jobmill"
# The throughput example is a Rust worker (it sums each payload) when run by jobmill.
rust_worker="$here/target/release/examples/throughput"
WINDOW=${WINDOW:-1024}
now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/($3-$2):,.0f}')"; }

# 1. jobmill: two workers drain a pre-filled queue.
url="redis://127.0.0.1:$port/bench-drain"
"$bench" produce "$url" "$JOBS" 1000
t0=$(now)
"$bench" work "$url" "$BATCH" >"$tmp/w1" &
a=$!
"$bench" work "$url" "$BATCH" >"$tmp/w2" &
b=$!
wait "$a" "$b"
t1=$(now)
done_n=$(( $(cat "$tmp/w1") + $(cat "$tmp/w2") ))
[ "$done_n" -eq "$JOBS" ] || { echo "bench: jobmill did $done_n of $JOBS jobs" >&2; exit 1; }
jm_drain=$(rate "$JOBS" "$t0" "$t1")

# 2. jobmill: producer and two workers at once.
url="redis://127.0.0.1:$port/bench-live"
t0=$(now)
"$bench" produce "$url" "$JOBS" 1000 &
p=$!
"$bench" work "$url" "$BATCH" >"$tmp/w1" &
a=$!
"$bench" work "$url" "$BATCH" >"$tmp/w2" &
b=$!
wait "$p" "$a" "$b"
t1=$(now)
done_n=$(( $(cat "$tmp/w1") + $(cat "$tmp/w2") ))
[ "$done_n" -eq "$JOBS" ] || { echo "bench: jobmill did $done_n of $JOBS jobs" >&2; exit 1; }
jm_live=$(rate "$JOBS" "$t0" "$t1")

# 3. jobmill worker --persistent: two hosts' worth, one long-lived worker each.
persistent() { # name worker-command...
    local url="redis://127.0.0.1:$port/bench-$1"; shift
    "$bench" produce "$url" "$JOBS" 1000
    local t0 t1 a b
    t0=$(now)
    PYTHONPATH="$here/python" "$jobmill" worker --queue "$url" -j 1 --persistent \
        --window "$WINDOW" -- "$@" >/dev/null &
    a=$!
    PYTHONPATH="$here/python" "$jobmill" worker --queue "$url" -j 1 --persistent \
        --window "$WINDOW" -- "$@" >/dev/null &
    b=$!
    wait "$a" "$b"
    t1=$(now)
    local d
    d=$("$jobmill" status --queue "$url" | sed -n 's/.* \([0-9]*\) done.*/\1/p')
    [ "$d" -eq "$JOBS" ] || { echo "bench: worker --persistent did $d of $JOBS jobs" >&2; exit 1; }
    rate "$JOBS" "$t0" "$t1"
}
jm_pers_rust=$(persistent pers-rust "$rust_worker")
jm_pers_py=$(persistent pers-py python3 -c 'import jobmill_worker
for job in jobmill_worker.jobs():
    job.complete(b"%d" % len(job.payload))')

# 4. RQ: enqueue no-op jobs, then two burst workers drain them.
echo "installing rq into a throwaway venv..." >&2
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check rq
cat >"$tmp/noop.py" <<'EOF'
def noop():
    return None
EOF
cat >"$tmp/enqueue.py" <<EOF
import sys
from redis import Redis
from rq import Queue
sys.path.insert(0, "$tmp")
from noop import noop
q = Queue("bench", connection=Redis(port=$port))
n = int(sys.argv[1])
for i in range(0, n, 500):
    q.enqueue_many([Queue.prepare_data(noop) for _ in range(min(500, n - i))])
print(len(q))
EOF
"$tmp/venv/bin/python" "$tmp/enqueue.py" "$RQ_JOBS" >/dev/null
rq_worker() {
    (cd "$tmp" && PYTHONPATH="$tmp" "$tmp/venv/bin/rq" worker --burst --quiet \
        -w rq.worker.SimpleWorker --url "redis://127.0.0.1:$port" bench >/dev/null 2>&1)
}
t0=$(now)
rq_worker &
a=$!
rq_worker &
b=$!
wait "$a" "$b"
t1=$(now)
left=$(redis-cli -p "$port" llen rq:queue:bench)
[ "$left" -eq 0 ] || { echo "bench: rq left $left jobs" >&2; exit 1; }
rq_rate=$(rate "$RQ_JOBS" "$t0" "$t1")
rq_version=$("$tmp/venv/bin/python" -c 'import rq; print(rq.__version__)')

ratio=$(python3 -c "print(f'{${jm_drain//,/}/${rq_rate//,/}:.0f}')")
cat <<EOF

No-op jobs per second, 2 worker processes, loopback Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') (AOF everysec)
| system | jobs | jobs/s |
|---|---|---|
| jobmill Redis backend, batch $BATCH, draining a filled queue | $JOBS | $jm_drain |
| jobmill Redis backend, batch $BATCH, producer running alongside | $JOBS | $jm_live |
| jobmill worker --persistent ×2, Rust no-op worker, window $WINDOW | $JOBS | $jm_pers_rust |
| jobmill worker --persistent ×2, Python no-op worker, window $WINDOW | $JOBS | $jm_pers_py |
| RQ $rq_version, SimpleWorker (no fork), 2 burst workers | $RQ_JOBS | $rq_rate |
jobmill / RQ: ${ratio}x
EOF
