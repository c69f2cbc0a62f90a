"""`run_demo.sh` checks its arguments before it deletes or trains anything.

The script is copied into a scratch folder (it works in its own folder), next to an old demo output that
a bad call must leave in place; a good call is the demo itself, minutes long, so it is not run here.
"""

from __future__ import annotations

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
