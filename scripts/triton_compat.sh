#!/usr/bin/env bash
# The kernels against the GPU machine's Triton (3.6) on a machine without a GPU: every variant the
# launchers can pick compiled for sm_90 (benches/kernel_resources.py), then the kernel tests and
# the graph-safety tests in that Triton's interpreter. Needs PyPI once: Triton 3.6, and numpy 2.2
# for its interpreter (which converts 1-element arrays with int(), an error from numpy 2.4 on).
# Installs into $COMPAT (default /tmp/codellama-fast-triton36), never into the project's .venv.
#
#   make triton-compat     # or: bash scripts/triton_compat.sh [pytest arguments]; OUT=dir for the JSON
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
COMPAT=${COMPAT:-/tmp/codellama-fast-triton36}
if [ ! -d "$COMPAT/triton" ]; then
    "$PY" -m pip install -q --no-deps --target "$COMPAT" "triton==3.6.0" "numpy==2.2.6"
fi
export PYTHONPATH="$COMPAT:$PWD/python:$PWD"
"$PY" -c "import triton, numpy; print(f'triton {triton.__version__}, numpy {numpy.__version__}')"
"$PY" benches/kernel_resources.py --arch 90 --out "${OUT:-$COMPAT/results}"
if [ $# -eq 0 ]; then
    set -- tests/test_kernels.py tests/test_attention_shared_decode.py tests/test_decode_tuning.py tests/test_graph_safety.py
fi
"$PY" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning "$@"
