#!/usr/bin/env bash
# Makes target/bench-venv with ioc-finder 9.4.1 (from PyPI) and prints the path of its python.
# Idempotent: an existing venv with the right ioc-finder is reused.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${BENCH_VENV:-$root/target/bench-venv}"
if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("ioc-finder") != "9.4.1")' 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'ioc-finder==9.4.1' >&2
fi
echo "$venv/bin/python"
