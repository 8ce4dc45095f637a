#!/usr/bin/env bash
# The reproduction runs that pay on a GPU, in one go on one CUDA GPU within a time limit: the
# signaling game at the protocol's feature size (4096-d; every estimator of its table, one seed,
# all cells in parallel) and, if time is left, NRI graph layout with latent spanning trees. The
# run records (config, command, run.json with commit and times, metrics, CSV logs; no
# checkpoints) and the report tables go to results/gpu/reproduce_<UTC time>/ (when $OUT is set,
# as on a borrowed device machine, one archive $OUT/reproduce_<UTC time>.tgz of that folder);
# commit them under results/<task>/.
#
#     benchmarks/gpu_reproduce.sh                  # profile faithful, 480 s in all
#     PROFILE=paper LIMIT=3000 benchmarks/gpu_reproduce.sh
#
# Environment: LATENTGRAD_DATA (data and the generated sets' cache, /tmp/latentgrad_data), PYTHON
# (interpreter), PROFILE (faithful), LIMIT (seconds for everything, 480),
# SEED_GAME (322), SEED_NRI (42), NRI_ESTIMATORS (the four relaxed tree/edge estimators; empty
# skips graph layout), RUNS (the sweeps' working folder with checkpoints, /tmp/latentgrad_gpu_runs).
# A cell cut off by the limit leaves no record; RESUME=1 on the same machine continues it from its
# checkpoint in RUNS, and finished cells are never rerun.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}  # python3 holds torch on the device machines
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PROFILE=${PROFILE:-faithful}
LIMIT=${LIMIT:-480}
SEED_GAME=${SEED_GAME:-322}
SEED_NRI=${SEED_NRI:-42}
NRI_ESTIMATORS=${NRI_ESTIMATORS-tree_sst,tree_st,subset_st,edges_st}
GAME_ESTIMATORS=sparsemax,softmax,sfe,sfe_01,sfe_plus,nvil,gumbel,st_gumbel,gaussian_sparsemax
name="reproduce_$(date -u +%Y%m%dT%H%M%SZ)"
if [ -n "${OUT:-}" ]; then dest="/tmp/$name"; else dest="results/gpu/$name"; fi
export LATENTGRAD_DATA="${LATENTGRAD_DATA:-/tmp/latentgrad_data}"  # generated data are cached there
runs="${RUNS:-/tmp/latentgrad_gpu_runs}"
mkdir -p "$dest" "$runs"
resume=()
[ "${RESUME:-0}" = 1 ] && resume=(--resume)
began=$(date +%s)
log="$dest/log.txt"

{
  echo "gpu_reproduce $(date -u +%Y-%m-%dT%H:%M:%SZ) profile=$PROFILE limit=${LIMIT}s"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$log" 2>&1

sweep() {  # sweep <seconds> <task> <estimators> <seed> <workers>
  local start=$(date +%s)
  echo "\$ sweep $2 --estimators $3 --seeds $4 --workers $5 profile=$PROFILE" >> "$log"
  timeout "$1" "$PY" -m latentgrad.experiments.cli sweep "$2" --estimators "$3" --seeds "$4" \
    --workers "$5" --out "$runs" --no-progress-bar "${resume[@]}" "profile=$PROFILE" >> "$log" 2>&1
  echo "[exit $? after $(($(date +%s) - start)) s; limit $1 s]" >> "$log"
}

# The game's nine cells share the GPU at once (small networks; the 4096-d features dominate).
sweep $((LIMIT * 6 / 10)) signal_game "$GAME_ESTIMATORS" "$SEED_GAME" 9
left=$((LIMIT - ($(date +%s) - began) - 30))
if [ -n "$NRI_ESTIMATORS" ] && [ "$left" -gt 60 ]; then
  sweep "$left" graph_layout "$NRI_ESTIMATORS" "$SEED_NRI" 4
fi

# the records of the finished cells, without checkpoints
for m in $(find "$runs" -name metrics.json); do
  cell=$(dirname "$m"); to="$dest/runs/${cell#"$runs"/}"
  mkdir -p "$to"
  cp "$cell"/config.yaml "$cell"/command.txt "$cell"/run.json "$m" "$to"/ 2>/dev/null
  [ -d "$cell/csv" ] && cp -r "$cell/csv" "$to"/
done
for task in signal_game graph_layout; do
  if [ -n "$(find "$dest/runs/$task" -name metrics.json 2>/dev/null | head -1)" ]; then
    (cd "$dest" && "$PY" -m latentgrad.experiments.cli report "runs/$task" --out "$task") >> "$log" 2>&1
  fi
done
echo "total $(($(date +%s) - began)) s" >> "$log"
if [ -n "${OUT:-}" ]; then
  tar -C /tmp -czf "$OUT/$name.tgz" "$name" && echo "$OUT/$name.tgz"
else
  echo "$dest"
fi
