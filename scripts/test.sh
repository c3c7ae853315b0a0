#!/usr/bin/env bash
# The whole test suite, as the README says: installs what the tests need when
# it is missing (redis-server, GNU parallel with Text::CSV, python3, openssl,
# chromium, tmux from Debian), then runs
# every test. Tests that need Redis start their own throwaway server on a free
# loopback port; a missing redis-server makes them fail, never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v parallel >/dev/null 2>&1 || need+=(parallel)
# GNU parallel's --csv needs Text::CSV (tests/compat_parallel.rs uses it).
perl -MText::CSV -e 1 >/dev/null 2>&1 || need+=(libtext-csv-perl)
# `jobmill report` is rendered in headless Chromium, `status --watch` read
# in a tmux pane (tests/report.rs).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
# The Python package's tests build it into a virtualenv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "scripts/test.sh: please install: ${need[*]} (e.g. sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
fi

# The Python worker's zero-copy test wraps payloads with numpy (tests/payloads.rs).
python3 -c 'import numpy' >/dev/null 2>&1 || python3 -m pip install --quiet numpy

# Journals written by the tests go to a throwaway state directory, never to
# the user's ~/.local/state/jobmill.
state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT
export XDG_STATE_HOME="$state"

status=0
cargo test --all-targets --no-fail-fast "$@" || status=$?
# The Python package (python/): built with maturin into a fresh virtualenv,
# its pytest suite run there with numpy (scripts/test_python.sh).
bash scripts/test_python.sh || status=$?
exit "$status"
