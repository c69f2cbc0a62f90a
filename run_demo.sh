#!/usr/bin/env bash
# The CPU demo: synthetic faces in the real .rec/.bin formats -> a 112px teacher -> 14px students
# without distillation and with kd, a_skd and f_skd -> one comparison table.
set -euo pipefail
cd "$(dirname "$0")"
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
  python3 train_student.py --config configs/demo/face_student.yaml LOG.PROGRESS False \
    DISTILL.TYPE "$method" EXPERIMENT.OUTPUT_DIR "$out/student_$method" "${extra[@]}"
done
echo "== comparison (verification accuracy %, best / last checkpoint)"
python3 test.py --summary "$out"
