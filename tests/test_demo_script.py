"""`run_demo.sh` checks its arguments before it deletes or trains anything, pins its kernels, counts its cores.

The script is copied into a scratch folder (it works in its own folder), next to an old demo output that
a bad call must leave in place; a good call is the demo itself, minutes long, so it is not run here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo_copy(tmp_path) -> Path:
    shutil.copy(ROOT / "run_demo.sh", tmp_path / "run_demo.sh")
    old = tmp_path / "outputs" / "demo" / "teacher"
    old.mkdir(parents=True)
    (old / "last.pt").write_bytes(b"an earlier run")
    return tmp_path


@pytest.mark.parametrize("args, says", [
    (["--seeds"], "usage: bash run_demo.sh [--seeds S [S ...]]"),
    (["--seeds", "0", "one"], "seed 'one' is not a whole number"),
    (["--fast"], "usage: bash run_demo.sh"),
    (["0", "1"], "usage: bash run_demo.sh"),
])
def test_bad_arguments_exit_2_with_one_line_and_touch_nothing(demo_copy, args, says):
    done = subprocess.run(["bash", str(demo_copy / "run_demo.sh"), *args], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""
    assert (demo_copy / "outputs" / "demo" / "teacher" / "last.pt").read_bytes() == b"an earlier run"
    assert not (demo_copy / "demo_data").exists()


def test_help_prints_usage_and_exits_0(demo_copy):
    done = subprocess.run(["bash", str(demo_copy / "run_demo.sh"), "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("usage: bash run_demo.sh")
    assert (demo_copy / "outputs" / "demo" / "teacher" / "last.pt").exists()


def _capability_under_the_demo_pin(environment: dict[str, str]) -> str:
    """Run run_demo.sh's own ISA block (cut out of the script), then ask torch which kernels it uses."""
    script = (ROOT / "run_demo.sh").read_text()
    start = script.index("if grep -qw avx2")
    block = script[start:script.index("\nfi\n", start) + 4]
    probe = 'python3 -c "import torch; print(torch.backends.cpu.get_cpu_capability())"'
    done = subprocess.run(["bash", "-c", block + probe], capture_output=True, text=True, timeout=120,
                          env=environment)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_demo_pins_avx2_kernels_and_a_setting_of_your_own_wins():
    """The README's table is what every AVX2 CPU prints only if AVX-512 CPUs run the AVX2 kernels too."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file() or " avx2" not in cpuinfo.read_text():
        pytest.skip("needs an x86-64 CPU with AVX2")
    pinned = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
    clean = {name: value for name, value in os.environ.items() if name not in pinned}
    assert _capability_under_the_demo_pin(clean) == "AVX2"
    assert _capability_under_the_demo_pin({**clean, "ATEN_CPU_CAPABILITY": "default"}) == "DEFAULT"


def test_students_run_one_per_core_whatever_omp_num_threads():
    """`nproc` alone answers OMP_NUM_THREADS; the demo's student slots must count the cores instead."""
    script = (ROOT / "run_demo.sh").read_text()
    line = next(row for row in script.splitlines() if row.startswith("slots="))
    cores = len(os.sched_getaffinity(0))
    for threads in ("1", "7"):
        done = subprocess.run(["bash", "-c", line + '\necho "$slots"'], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "OMP_NUM_THREADS": threads, "OMP_THREAD_LIMIT": threads})
        assert done.returncode == 0 and done.stdout.strip() == str(cores), (threads, done.stdout, done.stderr)
