#!/usr/bin/env bash
# jobmill run vs xargs -P, GNU parallel and rust-parallel, measured side by side
# in the same invocation with hyperfine: 2000 `true` jobs at -j2, and 2000
# `echo {}` jobs in input order (-k). Prints each tool's median and its ratio
# against jobmill (ratio > 1: the peer is slower).
#
# Installs the peers when missing: GNU parallel and hyperfine from Debian,
# rust-parallel from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
RUNS=${RUNS:-7}

need=()
command -v parallel >/dev/null || need+=(parallel)
command -v hyperfine >/dev/null || need+=(hyperfine)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; fi
command -v rust-parallel >/dev/null || cargo install --quiet rust-parallel
cargo build --release --quiet
JM=$PWD/target/release/jobmill
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
seq "$N" > "$tmp/in"
export JOBMILL_STATE_DIR="$tmp/state"

report() { # json-file label-of-baseline
  python3 - "$1" <<'PY'
import json, statistics, sys
res = json.load(open(sys.argv[1]))["results"]
base = statistics.median(res[0]["times"])
for r in res:
    m = statistics.median(r["times"])
    print(f"  {r['command'][:64]:64s} median {m:7.3f} s   ratio vs jobmill {m / base:5.2f}x")
PY
}

echo "== $N x true, 2 at a time =="
cmds=("$JM run -j2 -- true < $tmp/in")
if "$JM" run --help | grep -q -- --no-journal; then
  cmds=("$JM run -j2 --no-journal -- true < $tmp/in" "$JM run -j2 -- true < $tmp/in")
fi
hyperfine --shell=bash -w 1 -r "$RUNS" --style none --export-json "$tmp/true.json" \
  "${cmds[@]}" \
  "xargs -P2 -n1 true < $tmp/in" \
  "parallel --will-cite -j2 true < $tmp/in" \
  "rust-parallel -j2 true < $tmp/in" >/dev/null
report "$tmp/true.json"

echo "== $N x echo {}, input order kept (-k) =="
hyperfine --shell=bash -w 1 -r "$RUNS" --style none --export-json "$tmp/echo.json" \
  "$JM run -k -j2 -- echo < $tmp/in > /dev/null" \
  "xargs -P2 -n1 echo < $tmp/in > /dev/null" \
  "parallel --will-cite -k -j2 echo < $tmp/in > /dev/null" \
  "rust-parallel -k -j2 echo < $tmp/in > /dev/null" >/dev/null
report "$tmp/echo.json"
echo "(xargs cannot keep order; it is listed for scale.)"
