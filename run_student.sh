#!/usr/bin/env bash
# Train one or more students, each for one or more seeds, in sequence:
#   bash run_student.sh CONFIG [CONFIG ...] [--seeds S [S ...]] [--resume] [-- KEY VALUE ...]
# With --seeds, each run writes to <OUTPUT_DIR>/seed<S> so `python test.py --summary` can average them.
# NPROC_PER_NODE=N runs each training under `torchrun --nproc_per_node=N` (DDP, one process per GPU).
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")"
configs=(); seeds=(); extra=(); resume=()
mode=configs
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) mode=seeds ;;
    --resume) resume=(--resume) ;;
    --) shift; extra=("$@"); break ;;
    *) if [ "$mode" = seeds ]; then seeds+=("$1"); else configs+=("$1"); fi ;;
  esac
  shift
done
if [ ${#configs[@]} -eq 0 ]; then
  echo "usage: bash run_student.sh CONFIG [CONFIG ...] [--seeds S ...] [--resume] [-- KEY VALUE ...]" >&2
  exit 2
fi
for seed in ${seeds[@]+"${seeds[@]}"}; do
  case "$seed" in ''|*[!0-9]*) echo "run_student.sh: --seeds takes integers, got '$seed'" >&2; exit 2 ;; esac
done
launcher=(python3)
if [ "${NPROC_PER_NODE:-1}" -gt 1 ]; then launcher=(torchrun --nproc_per_node="$NPROC_PER_NODE"); fi
for config in "${configs[@]}"; do
  # a config path relative to where the script was called from, as the user typed it
  case "$config" in /*) ;; *) if [ -f "$caller/$config" ]; then config="$caller/$config"; fi ;; esac
  if [ ${#seeds[@]} -eq 0 ]; then
    "${launcher[@]}" train_student.py --config "$config" ${resume[@]+"${resume[@]}"} ${extra[@]+"${extra[@]}"}
  else
    base=$(python3 -c "import sys; from utility.config import load_config; print(load_config(sys.argv[1], sys.argv[2:]).EXPERIMENT.OUTPUT_DIR)" "$config" ${extra[@]+"${extra[@]}"})
    for seed in "${seeds[@]}"; do
      "${launcher[@]}" train_student.py --config "$config" ${resume[@]+"${resume[@]}"} ${extra[@]+"${extra[@]}"} \
        EXPERIMENT.SEED "$seed" EXPERIMENT.OUTPUT_DIR "$base/seed$seed"
    done
  fi
done
