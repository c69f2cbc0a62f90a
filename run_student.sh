#!/usr/bin/env bash
# Train one or more students, each for one or more seeds and swept values, in sequence:
#   bash run_student.sh CONFIG [CONFIG ...] [KEY VALUE ...] [--seeds S ...] [--sweep KEY V1 V2 ...]...
#                       [--resume] [--dry-run] [-- KEY VALUE ...]
# Every argument and every resolved config is checked before the first run (engine/launch.py);
# `bash run_student.sh --help` lists the options. Runs go to <OUTPUT_DIR>/<KEY>=<V>/seed<S>.
# NPROC_PER_NODE=N runs each training under `torchrun --nproc_per_node=N` (DDP, one process per GPU).
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")"
exec python3 -m engine.launch student "$caller" "$@"
