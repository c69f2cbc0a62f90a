#!/usr/bin/env bash
# Train a teacher: bash run_teacher.sh CONFIG [--resume] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")"
if [ $# -lt 1 ]; then echo "usage: bash run_teacher.sh CONFIG [--resume] [KEY VALUE ...]" >&2; exit 2; fi
config=$1; shift
exec python3 train_teacher.py --config "$config" "$@"
