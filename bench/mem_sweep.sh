#!/usr/bin/env bash
# Memory sweep (issue 13): 40 jobs at -j8, each allocating and touching a
# random 10-30% of the memory budget for a few seconds, run three ways
# inside a memory cgroup of its own with a limit (so the machine never
# OOMs and the numbers do not depend on what else runs):
#
#   (a) jobmill run -j8 --mem-per-job auto
#   (b) jobmill run -j8 --retries 3
#   (c) GNU parallel -j8 --memfree SIZE (SIZE = 30% of the limit)
#
# For each: wall time, jobs done, and OOM kills (the cgroup's oom_kill
# counter, read before and after; the kernel counts each process it
# kills). The percentages are of the cgroup's limit, not of the machine's
# MemAvailable. Every run gets the same sizes (one seeded draw) and a fresh
# state directory (so `auto` learns from this run only).
#
# Needs root and the v1 memory controller (/sys/fs/cgroup/memory); the
# cgroup is made under the one this shell runs in and removed at the end.
# Not part of `cargo test`.
#
#   bench/mem_sweep.sh [JOBMILL] [LIMIT_MIB]     (defaults: target/release/jobmill
#                                                  or target/debug/jobmill; 3072)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
jobmill=${1:-}
if [[ -z "$jobmill" ]]; then
    jobmill=$here/target/release/jobmill
    [[ -x $jobmill ]] || jobmill=$here/target/debug/jobmill
fi
limit_mib=${2:-3072}
jobs=40
slots=8
hold=3   # seconds each job holds its memory

[[ $(id -u) == 0 ]] || { echo "mem_sweep: needs root (to make a memory cgroup)" >&2; exit 2; }
v1=/sys/fs/cgroup/memory
[[ -f $v1/memory.limit_in_bytes ]] || { echo "mem_sweep: needs the v1 memory controller at $v1" >&2; exit 2; }
command -v parallel >/dev/null || { echo "mem_sweep: GNU parallel not installed" >&2; exit 2; }
python=$(python3 -c 'import sys; print(sys.executable)')

parent=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
cg=$v1${parent%/}/jobmill-mem-sweep-$$
mkdir "$cg"
work=$(mktemp -d)
cleanup() {
    # Back to the parent cgroup, then remove ours (it must be empty).
    echo $$ > "$v1${parent%/}/cgroup.procs" 2>/dev/null || true
    rmdir "$cg" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
limit=$((limit_mib * 1024 * 1024))
echo "$limit" > "$cg/memory.limit_in_bytes"
echo $$ > "$cg/cgroup.procs"

# The job: allocate SIZE bytes, touch every page, hold them, record done.
cat > "$work/hog.py" <<'EOF'
import sys, time
n, out = int(sys.argv[1]), sys.argv[2]
b = bytearray(n)
b[::4096] = b"\1" * len(range(0, n, 4096))
time.sleep(float(sys.argv[3]))
with open(out, "a") as f:
    f.write("done %d\n" % n)
EOF
# One draw of sizes, 10-30% of the limit, the same for every run.
"$python" - "$limit" "$jobs" > "$work/sizes" <<'EOF'
import random, sys
limit, n = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(13)
for _ in range(n):
    print(int(limit * rng.uniform(0.10, 0.30)))
EOF

oom_kills() { sed -n 's/^oom_kill //p' "$cg/memory.oom_control"; }

# run NAME COMMAND...: runs it in the cgroup, prints one result line.
run() {
    local name=$1; shift
    local done_file=$work/run$((++runs)).done
    : > "$done_file"
    local before after t0 t1 code=0
    before=$(oom_kills)
    t0=$(date +%s.%N)
    XDG_STATE_HOME=$work/state$runs DONE=$done_file "$@" < "$work/sizes" \
        > "$work/run$runs.out" 2> "$work/run$runs.err" || code=$?
    t1=$(date +%s.%N)
    after=$(oom_kills)
    printf '%-34s wall=%6.1fs  done=%2d/%d  oom_kills=%-3d exit=%d\n' \
        "$name" "$(echo "$t1 - $t0" | bc)" "$(wc -l < "$done_file")" "$jobs" \
        $((after - before)) "$code"
}

runs=0
hog=("$python" "$work/hog.py")
echo "mem_sweep: $jobs jobs, -j$slots, each 10-30% of a ${limit_mib} MiB cgroup limit, held ${hold}s"
echo "           jobmill: $jobmill"
run "jobmill --mem-per-job auto" \
    "$jobmill" run -j$slots --mem-per-job auto -- sh -c \
    "exec ${hog[*]} \$1 \"\$DONE\" $hold" sh
run "jobmill --retries 3" \
    "$jobmill" run -j$slots --retries 3 -- sh -c \
    "exec ${hog[*]} \$1 \"\$DONE\" $hold" sh
run "parallel --memfree $((limit_mib * 30 / 100))M" \
    parallel --will-cite -j$slots --memfree "$((limit_mib * 30 / 100))M" \
    "exec ${hog[*]} {} \"\$DONE\" $hold"
