#!/usr/bin/env bash
# One prepared check of gaflax on a GPU (issue #20), in under 8 minutes on one GPU:
#   scripts/device_check.sh OUT_DIR [cuda12|cuda13]
# It installs the accelerator extra into .venv-gpu (skipped when that venv already has a GPU jax),
# records the devices, runs the tests that exercise devices, bfloat16 and remat, benchmarks
# segment_ga with and without the fused Pallas kernel against segment_sum (bench_ga; the kernel's
# tests run first, compiled this time), the vmapped Cora grid against sequential runs
# (bench_grid), and one GAT reproduction run on Cora with its seconds per epoch. Every step writes
# its JSON (or log) into OUT_DIR and has its own time limit, so one slow step cannot take the rest.
# Data: $GAFLAX_DATA, else ../shared/data.
set -uo pipefail
OUT=${1:?usage: scripts/device_check.sh OUT_DIR [cuda12|cuda13]}
EXTRA=${2:-cuda12}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export GAFLAX_DATA=${GAFLAX_DATA:-../shared/data}
VENV=${GAFLAX_GPU_VENV:-.venv-gpu}  # a venv that already has jax for the GPU skips the install
PY=$VENV/bin/python
start=$(date +%s)
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record the status
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >> "$OUT/steps.jsonl"
  echo "$name: rc=$rc, $(( $(date +%s) - t0 )) s (total $(( $(date +%s) - start )) s)"
}

if ! { [ -x "$PY" ] && "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; }; then
  step install 240 bash -c "python3 -m venv $VENV && $VENV/bin/pip install -q -c constraints.txt -e '.[test,experiments,$EXTRA]'"
fi
step devices 60 "$PY" -c "
import json, jax
print(json.dumps({'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()],
                  'kind': jax.devices()[0].device_kind, 'jax': jax.__version__}))" 
cp "$OUT/devices.log" "$OUT/devices.json"
# The device tests force 4 host CPU devices in their subprocesses; bfloat16 and remat run on the GPU.
step tests 120 "$PY" -m pytest -q -p no:cacheprovider -n 0 tests/test_devices.py tests/test_backbones.py \
  -k "device or bfloat16 or remat or padding" --junitxml="$OUT/tests.xml"
step kernel_tests 90 "$PY" -m pytest -q -p no:cacheprovider -n 0 tests/test_kernels.py --junitxml="$OUT/kernel_tests.xml"
step bench_ga 120 "$PY" scripts/bench_ga.py --shapes cora 1M 4Mx64 --repeats 5 --no-pyg --kernel on --out "$OUT/bench_ga.json"
step bench_grid 150 "$PY" scripts/bench_grid.py --members 10 --max-epochs 300 --out "$OUT/bench_grid.json"
step reproduce_gat 60 "$PY" scripts/reproduce_gat.py --datasets cora --variants "GAT (weighted_sum)" --seeds 1 \
  --out "$OUT/reproduce_gat"
echo "done in $(( $(date +%s) - start )) s; results in $OUT"
