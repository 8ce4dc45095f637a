#!/usr/bin/env bash
# The GPU check, in one go on one CUDA GPU, within 8 minutes: the CUDA tests (tests/cuda: every
# layer against the CPU in float64, and no host-device synchronisation on the hot paths with
# validation off), then every benchmark with --device cuda. Everything, with the commit, the
# GPU, torch and each command's exit status and time, goes to
# results/gpu/gpu_check_<UTC time>.txt; commit that file (results/gpu/).
#
#     benchmarks/gpu_check.sh            # PYTHON=... to pick the interpreter (default python3)
#
# Each step has its own time limit (timeout), so a slow or hung step cannot eat the budget of
# the others; the limits add up to 480 s.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}  # python3 holds torch on the device machines
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p results/gpu
out="results/gpu/gpu_check_$(date -u +%Y%m%dT%H%M%SZ).txt"
began=$(date +%s)

step() {  # step <seconds> <command...>
  local limit=$1 start rc
  shift
  echo >> "$out"
  echo "\$ $*" >> "$out"
  start=$(date +%s)
  timeout "$limit" "$@" >> "$out" 2>&1
  rc=$?
  echo "[exit $rc after $(($(date +%s) - start)) s; limit $limit s]" >> "$out"
}

{
  echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
} > "$out" 2>&1

step 150 "$PY" -m pytest tests/cuda -m cuda -q -p no:cacheprovider -rfEsxX
step 45 "$PY" benchmarks/bench_mappings.py --device cuda --repeats 10
step 180 "$PY" benchmarks/bench_structures.py --device cuda --repeats 3
step 30 "$PY" benchmarks/bench_estimators.py --device cuda --repeats 10
step 60 "$PY" benchmarks/compare_estimators.py --device cuda --draws 200
step 15 "$PY" benchmarks/bench_tree_sampling.py --device cuda --repeats 3

echo >> "$out"
echo "total $(($(date +%s) - began)) s" >> "$out"
echo "$out"
