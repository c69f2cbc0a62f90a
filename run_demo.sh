#!/usr/bin/env bash
# The CPU demo: synthetic faces in the real .rec/.idx and .bin formats -> a 112px teacher -> 14px students
# without distillation and with kd, a_skd and f_skd -> one comparison table.
#   bash run_demo.sh               one student seed (EXPERIMENT.SEED 0), about 3 minutes on 2 cores
#   bash run_demo.sh --seeds 0 1 2 every student once per seed, into student_<method>/seed<S>; the table
#                                  then gives mean ± std over the seeds (about 1.5 minutes per extra seed)
set -euo pipefail
cd "$(dirname "$0")"
usage="usage: bash run_demo.sh [--seeds S [S ...]]"
seeds=()
if [ $# -gt 0 ]; then
  if [ "$1" = --help ] || [ "$1" = -h ]; then echo "$usage"; exit 0; fi
  if [ "$1" != --seeds ] || [ $# -lt 2 ]; then echo "$usage" >&2; exit 2; fi
  for seed in "${@:2}"; do
    if ! [[ "$seed" =~ ^[0-9]+$ ]]; then echo "run_demo.sh: seed '$seed' is not a whole number; $usage" >&2; exit 2; fi
  done
  seeds=("$@")
fi
# Pin the CPU kernels to AVX2 so that every x86-64 CPU with AVX2 (AVX-512 ones too) rounds alike and
# prints the README's table; a variable you set yourself wins. Without AVX2 the figures will differ.
if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
  export ATEN_CPU_CAPABILITY="${ATEN_CPU_CAPABILITY:-avx2}" ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
  export MKL_CBWR="${MKL_CBWR:-AVX2}"
else
  echo "run_demo.sh: warning: this CPU has no AVX2 (or no /proc/cpuinfo); its figures will differ from the README's" >&2
fi
out=outputs/demo
rm -rf "$out"
echo "== synthetic face data (demo_data/faces: train.rec/.idx, lfw/cfp_fp/agedb_30.bin)"
python3 -m data.synthetic faces --out demo_data/faces --identities 20 --images-per-identity 16 --pairs 400
echo "== teacher at 112px"
python3 train_teacher.py --config configs/demo/face_teacher.yaml LOG.PROGRESS False
for method in none kd a_skd f_skd; do
  echo "== 14px student: DISTILL.TYPE $method"
  extra=()
  if [ "$method" = f_skd ]; then extra=(STUDENT.HINTS True DATA.PARTNER shuffle); fi
  overrides=(LOG.PROGRESS False DISTILL.TYPE "$method" EXPERIMENT.OUTPUT_DIR "$out/student_$method" "${extra[@]}")
  if [ ${#seeds[@]} -gt 0 ]; then
    bash run_student.sh configs/demo/face_student.yaml "${seeds[@]}" -- "${overrides[@]}"
  else
    python3 train_student.py --config configs/demo/face_student.yaml "${overrides[@]}"
  fi
done
echo "== comparison (verification accuracy %, best / last checkpoint)"
python3 test.py --summary "$out"
