#!/usr/bin/env bash
# jobmill run vs xargs -P, GNU parallel and rust-parallel, side by side in one
# invocation: 2000 `true` jobs at -j2, and 2000 `echo {}` jobs keeping input
# order. Rounds are interleaved (bench/compare.py), so load on a shared
# machine hits every tool alike; each row is the median of RUNS rounds.
#
# The first table's baseline is the floor: a bare C loop of posix_spawnp +
# waitpid on 2 threads (../shared/peers/spawn_floor.c, compiled here with
# gcc -O2 -pthread) running the same command with the same argument. It is
# given the command's full path, as jobmill looks a program up in PATH once
# per run: with a bare name, posix_spawnp would try every PATH entry before
# the right one for every job (8 failed execve per job with this machine's
# PATH). No tool that starts its jobs with posix_spawnp can beat it; jobmill
# starts them with a clone on a reused stack (src/sys/spawn.rs), which saves
# glibc's mapping and unmapping of a stack per child and can come in under
# it. Each ratio there is that tool's time over the floor's.
#
# Environment: N (jobs, 2000), RUNS (rounds, 9), FLOOR_SRC (the floor's C
# source), JM (the jobmill binary to time, default a release build of this
# tree), JM_BASE (a second jobmill binary, e.g. of the main branch, timed
# in the same rounds for a before/after comparison).
#
# Installs the peers when missing: GNU parallel from Debian, rust-parallel
# from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
RUNS=${RUNS:-9}
FLOOR_SRC=${FLOOR_SRC:-../shared/peers/spawn_floor.c}

command -v parallel >/dev/null || { apt-get update -qq && apt-get install -y -qq parallel; }
command -v rust-parallel >/dev/null || cargo install --quiet rust-parallel
if [[ -z "${JM:-}" ]]; then
  cargo build --release --quiet --bin jobmill
  JM=$PWD/target/release/jobmill
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
FLOOR=$tmp/spawn_floor
gcc -O2 -pthread "$FLOOR_SRC" -o "$FLOOR"
seq "$N" > "$tmp/in"
export XDG_STATE_HOME="$tmp/state"

# jobmill_rows LABEL BINARY: the rows for one jobmill binary, with and
# without its journal (when it has --no-journal).
jobmill_rows() {
  if "$2" run --help | grep -q -- --no-journal; then
    rows+=("$1 (no journal)=$2 run -j2 --no-journal -- true < $tmp/in"
           "$1 (journal)=$2 run -j2 -- true < $tmp/in")
  else
    rows+=("$1=$2 run -j2 -- true < $tmp/in")
  fi
}
rows=()
jobmill_rows jobmill "$JM"
[[ -n "${JM_BASE:-}" ]] && jobmill_rows "jobmill@base" "$JM_BASE"

python3 bench/compare.py --runs "$RUNS" --title "$N x true, -j2, against the floor" \
  "floor=$FLOOR 2 $(command -v true) < $tmp/in" \
  "${rows[@]}" \
  "xargs -P2=xargs -P2 -n1 true < $tmp/in" \
  "GNU parallel=parallel --will-cite -j2 true < $tmp/in" \
  "rust-parallel=rust-parallel -j2 true < $tmp/in"

python3 bench/compare.py --runs "$RUNS" --title "$N x echo {}, -j2, input order kept" \
  "jobmill -k=$JM run -k -j2 -- echo < $tmp/in > /dev/null" \
  "GNU parallel -k=parallel --will-cite -k -j2 echo < $tmp/in > /dev/null" \
  "rust-parallel -k=rust-parallel -k -j2 echo < $tmp/in > /dev/null" \
  "xargs -P2 (unordered)=xargs -P2 -n1 echo < $tmp/in > /dev/null"
