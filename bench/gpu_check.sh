#!/usr/bin/env bash
# One command for a GPU's first minutes: the device tests on CUDA, two fast-path steps of every recipe
# family, then every bench/ workload at its target batch (images/s, MFU, top kernels, what bounds it).
#
#   bash bench/gpu_check.sh DIR [--device cuda|cpu] [--quick]
#
# Sized for one H100/H200 in under 8 minutes: each part runs under `timeout` (seconds below) and a part
# that fails or runs out of time is recorded and the next one starts. Writes into DIR: one log per part,
# pytest JUnit XML, <workload>.json/.md per benchmark, and summary.md (every table and part status).
# `--device cpu --quick` runs the same parts in minutes on a CPU (tiny batches, no figures).
# Needs nothing beyond torch, numpy, opencv, scikit-learn, pytest (pytest-xdist used when present) and
# yacs: on a machine without yacs, install its wheel first (see bench/README.md, "GPU check").
set -uo pipefail
cd "$(dirname "$0")/.."

out="${1:?usage: bash bench/gpu_check.sh DIR [--device cuda|cpu] [--quick]}"
shift
device=cuda
quick=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --quick) quick="--quick"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
summary="$out/summary.md"
export PYTHONUNBUFFERED=1 DISTILLERY_TEST_DEVICE="$device"
# seconds per part: tests, recipe families, then each benchmark (the sum stays under 8 minutes on a GPU)
t_tests=${T_TESTS:-70} t_recipes=${T_RECIPES:-90} t_bench=${T_BENCH:-45}
select=() select_slow=()
if [ -n "$quick" ]; then  # CPU smoke run: a few cases of each part, tiny benchmark batches
  t_tests=600 t_recipes=600 t_bench=600 select=(-k "a_skd_tiny or emulation or cover_every") select_slow=(-k cifar_none)
fi
problems=0

{
  echo "# GPU check $(date -u +%FT%TZ)"
  echo
  python3 - <<'PY'
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {gpu}, python {platform.python_version()}")
PY
  echo
  echo "| part | status | seconds |"
  echo "|---|---|---|"
} >"$summary"

part() {  # part NAME SECONDS COMMAND...: run under timeout, log to DIR/NAME.log, add a summary row
  local name="$1" seconds="$2"
  shift 2
  local start=$SECONDS
  echo "== $name (at most ${seconds}s): $*"
  timeout --kill-after=5 "$seconds" "$@" >"$out/$name.log" 2>&1
  local code=$?
  local status="ok"
  [ $code -eq 124 ] || [ $code -eq 137 ] && status="timeout after ${seconds}s"
  [ $code -ne 0 ] && [ "$status" = ok ] && status="failed (exit $code)"
  [ "$status" = ok ] || problems=$((problems + 1))
  echo "| $name | $status | $((SECONDS - start)) |" >>"$summary"
  tail -n 3 "$out/$name.log"
}

parallel=()
python3 -c "import xdist" 2>/dev/null && [ "$device" = cuda ] && parallel=(-n 8)

# 1. the tests that take a device (aot_eager backend: dtypes, recompilations, host syncs on real CUDA)
part tests "$t_tests" python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" tests/test_cuda_paths.py \
  tests/test_fast_path_recipes.py -m "not slow" "${select[@]}" --junitxml="$out/tests.xml"
# 2. two fast-path steps of every other recipe family, and the slow device checks (resume with dropout)
part recipes "$t_recipes" python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" tests/test_fast_path_recipes.py \
  tests/test_cuda_paths.py -m slow "${select_slow[@]}" --junitxml="$out/recipes.xml"
# 3. each workload at its target batch (the CUDA defaults of each script), fast path as the recipes run it
for workload in bench_askd bench_adadistill bench_cifar_kd bench_scene; do
  part "$workload" "$t_bench" python3 -m bench."$workload" --device "$device" $quick --profile 3 --out "$out"
done
part bench_cache "$t_bench" python3 -m bench.bench_cache --device "$device" $quick --out "$out"
if [ -n "$quick" ]; then data_args=(--images 64 --workers 0 --eval-images 16); else data_args=(); fi
part bench_data "$t_bench" python3 -m bench.bench_data --device "$device" "${data_args[@]}"

{
  echo
  for md in "$out"/*.md; do [ "$md" != "$summary" ] && cat "$md" && echo; done
  for name in bench_cache bench_data; do
    [ -s "$out/$name.log" ] && printf '### %s\n\n```\n%s\n```\n\n' "$name" "$(grep -v Warning "$out/$name.log" | tail -n 25)"
  done
} >>"$summary"
echo "summary: $summary"
echo "$problems part(s) failed or timed out" | tee -a "$summary"
[ $problems -eq 0 ]
