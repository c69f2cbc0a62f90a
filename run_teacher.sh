#!/usr/bin/env bash
# Train one or more teachers in sequence, with the same arguments as run_student.sh:
#   bash run_teacher.sh CONFIG [CONFIG ...] [KEY VALUE ...] [--seeds S ...] [--sweep KEY V1 V2 ...]...
#                       [--resume] [--dry-run] [-- KEY VALUE ...]
# Every argument and every resolved config is checked before the first run (engine/launch.py).
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")"
exec python3 -m engine.launch teacher "$caller" "$@"
