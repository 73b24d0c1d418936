#!/usr/bin/env bash
# GPU readiness in one table, within 8 minutes (bench/gpu_check.py says what it runs):
#   bash bench/gpu_check.sh              # on a GPU machine, from a clone with `make install` done
#   bash bench/gpu_check.sh --cpu-smoke  # the same steps scaled down on CPU (checks the script)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# A hard stop at 8 minutes; the steps themselves share 470 s of it.
exec timeout --signal=INT --kill-after=10 480 "$PY" bench/gpu_check.py "$@"
