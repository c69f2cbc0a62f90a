#!/usr/bin/env bash
# Train one or more students, each for one or more seeds, in sequence:
#   bash run_student.sh CONFIG [CONFIG ...] [--seeds S [S ...]] [--resume] [-- KEY VALUE ...]
# With --seeds, each run writes to <OUTPUT_DIR>/seed<S> so `python test.py --summary` can average them.
set -euo pipefail
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
for config in "${configs[@]}"; do
  if [ ${#seeds[@]} -eq 0 ]; then
    python3 train_student.py --config "$config" "${resume[@]}" "${extra[@]}"
  else
    base=$(python3 -c "import sys; from utility.config import load_config; print(load_config(sys.argv[1], sys.argv[2:]).EXPERIMENT.OUTPUT_DIR)" "$config" "${extra[@]}")
    for seed in "${seeds[@]}"; do
      python3 train_student.py --config "$config" "${resume[@]}" "${extra[@]}" \
        EXPERIMENT.SEED "$seed" EXPERIMENT.OUTPUT_DIR "$base/seed$seed"
    done
  fi
done
