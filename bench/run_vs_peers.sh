#!/usr/bin/env bash
# jobmill run vs xargs -P, GNU parallel and rust-parallel, side by side in one
# invocation: 2000 `true` jobs at -j2, and 2000 `echo {}` jobs keeping input
# order. Rounds are interleaved (bench/compare.py), so load on a shared
# machine hits every tool alike. A ratio above 1 means slower than jobmill.
# The `floor` row is a bare posix_spawn loop running the same command with
# the same argument: no tool that starts a process per job can beat it.
#
# Installs the peers when missing: GNU parallel from Debian, rust-parallel
# from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
RUNS=${RUNS:-9}

command -v parallel >/dev/null || { apt-get update -qq && apt-get install -y -qq parallel; }
command -v rust-parallel >/dev/null || cargo install --quiet rust-parallel
cargo build --release --quiet --bin jobmill --example spawn_floor
JM=$PWD/target/release/jobmill
# The least a runner that spawns a process per job can take here
# (examples/spawn_floor.rs): same command, same argument, nothing else.
FLOOR=$PWD/target/release/examples/spawn_floor
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
seq "$N" > "$tmp/in"
export XDG_STATE_HOME="$tmp/state"

journal_variants=("jobmill=$JM run -j2 -- true < $tmp/in")
if "$JM" run --help | grep -q -- --no-journal; then
  journal_variants=("jobmill (no journal)=$JM run -j2 --no-journal -- true < $tmp/in"
                    "jobmill (journal)=$JM run -j2 -- true < $tmp/in")
fi
python3 bench/compare.py --runs "$RUNS" --title "$N x true, -j2" \
  "${journal_variants[@]}" \
  "xargs -P2=xargs -P2 -n1 true < $tmp/in" \
  "GNU parallel=parallel --will-cite -j2 true < $tmp/in" \
  "rust-parallel=rust-parallel -j2 true < $tmp/in" \
  "floor: bare Command loop=$FLOOR 2 true < $tmp/in"

python3 bench/compare.py --runs "$RUNS" --title "$N x echo {}, -j2, input order kept" \
  "jobmill -k=$JM run -k -j2 -- echo < $tmp/in > /dev/null" \
  "GNU parallel -k=parallel --will-cite -k -j2 echo < $tmp/in > /dev/null" \
  "rust-parallel -k=rust-parallel -k -j2 echo < $tmp/in > /dev/null" \
  "xargs -P2 (unordered)=xargs -P2 -n1 echo < $tmp/in > /dev/null"
