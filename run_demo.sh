#!/usr/bin/env bash
# The CPU demo: synthetic faces in the real .rec/.idx and .bin formats -> a 112px teacher -> 14px students
# without distillation and with kd, a_skd and f_skd -> one comparison table.
#   bash run_demo.sh               one student seed (EXPERIMENT.SEED 0), about 2.5 minutes on 2 cores
#   bash run_demo.sh --seeds 0 1 2 every student once per seed, into student_<method>/seed<S>; the table
#                                  then gives mean ± spread over the seeds and each method's mean gap to the
#                                  student trained alone ± its standard error (about 1.1 minutes per extra seed)
# Students train one per core at once, each on one thread (EXPERIMENT.THREADS 1 in face_student.yaml), so
# their numbers do not depend on how many run side by side or on the core count.
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
  seeds=("${@:2}")
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

slots=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 2)  # nproc alone obeys OMP_NUM_THREADS
where="student_<method>"
if [ ${#seeds[@]} -gt 0 ]; then where="student_<method>/seed<S>"; fi
echo "== 14px students: DISTILL.TYPE none kd a_skd f_skd at seed(s) ${seeds[*]:-0}, $slots at a time" \
     "(each run's console output in $out/$where/stdout.txt)"
student() {  # method seed folder: one student run, its console output kept in its folder
  local method=$1 seed=$2 dir=$3 extra=() start=$SECONDS
  if [ "$method" = f_skd ]; then extra=(STUDENT.HINTS True DATA.PARTNER shuffle); fi
  mkdir -p "$dir"
  if python3 train_student.py --config configs/demo/face_student.yaml LOG.PROGRESS False DISTILL.TYPE "$method" \
       EXPERIMENT.SEED "$seed" EXPERIMENT.OUTPUT_DIR "$dir" "${extra[@]}" > "$dir/stdout.txt" 2>&1; then
    echo "   $method seed $seed: done in $((SECONDS - start)) s"
  else
    echo "run_demo.sh: student $method seed $seed failed; its output ($dir/stdout.txt) ends:" >&2
    tail -n 5 "$dir/stdout.txt" >&2
    return 1
  fi
}
running=0 failed=0
for seed in "${seeds[@]:-0}"; do
  for method in none kd a_skd f_skd; do
    dir="$out/student_$method"
    if [ ${#seeds[@]} -gt 0 ]; then dir="$dir/seed$seed"; fi
    if [ "$running" -ge "$slots" ]; then wait -n || failed=1; running=$((running - 1)); fi
    student "$method" "$seed" "$dir" &
    running=$((running + 1))
  done
done
while [ "$running" -gt 0 ]; do wait -n || failed=1; running=$((running - 1)); done
if [ "$failed" -ne 0 ]; then exit 1; fi
echo "== comparison (verification accuracy %, best / last checkpoint)"
python3 test.py --summary "$out"
