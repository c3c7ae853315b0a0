#!/usr/bin/env bash
# Builds the Python package (python/: maturin + PyO3) into a fresh virtualenv
# under target/ and runs its pytest suite there, with numpy installed.
# Exits non-zero on any failure, including "no tests collected".
# Needs: a Rust toolchain, python3 (>= 3.9) with the venv module
# (Debian: apt-get install python3-venv), and PyPI (maturin, pytest, numpy).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/target/python-test-venv"
python=${PYTHON:-python3}
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$root/python" pytest numpy
# Run from python/tests so that the installed package, not the source tree,
# is what the tests import.
cd "$root/python/tests"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" .
