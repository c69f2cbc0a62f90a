"""run_student.sh / run_teacher.sh (engine/launch.py): every argument and every run checked before any runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.launch import expand, parse
from utility.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
STUDENT = "configs/demo/face_student.yaml"


def script(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / name), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["run_student.sh", "run_teacher.sh"])
def test_scripts_reject_before_running(name, tmp_path):
    out = tmp_path / "out"
    cases = [
        ([STUDENT, "--dry-runn", "EXPERIMENT.OUTPUT_DIR", str(out)], "unknown option '--dry-runn'"),
        ([STUDENT, "EXPERIMENT.OUTPUT_DIR", str(out), "SOLVER.MAX_ITERS"], "has no value"),
        ([STUDENT, "EXPERIMENT.OUTPUT_DIR", str(out), "SOLVER.MAX_ITERZ", "2"], "SOLVER.MAX_ITERS"),
        ([STUDENT, "missing.yaml", "EXPERIMENT.OUTPUT_DIR", str(out)], "config file not found"),
        ([STUDENT, "EXPERIMENT.OUTPUT_DIR", str(out), "--seeds", "1", "x"], "--seeds takes integers"),
        ([STUDENT, "EXPERIMENT.OUTPUT_DIR", str(out), "--sweep", "SOLVER.LR", "0.1", "fast"], "SOLVER.LR=fast"),
    ]
    for args, message in cases:
        done = script(name, *args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr, (args, done.stderr)
    assert not out.exists()  # nothing ran
    shown = script(name, "--help")
    assert shown.returncode == 0 and "--sweep KEY V1 V2" in shown.stdout


def test_configs_relative_to_the_caller_and_bare_overrides(tmp_path):
    caller = ROOT / "configs"
    plan = parse("student", caller, ["demo/face_student.yaml", "SOLVER.MAX_ITERS", "2", "--resume",
                                     "--", "SOLVER.LR", "0.5"])
    assert plan.configs == [caller / "demo" / "face_student.yaml"]
    assert plan.overrides == ["SOLVER.MAX_ITERS", "2", "SOLVER.LR", "0.5"] and plan.flags == ["--resume"]
    auto = parse("student", caller, ["demo/face_student.yaml", "--resume", "auto", "--overwrite"])
    assert auto.flags == ["--resume", "auto", "--overwrite"] and auto.overrides == []
    with pytest.raises(ConfigError, match="neither a config"):
        parse("student", ROOT, [STUDENT, "SOLVER.LR", "0.5", STUDENT])  # configs come before overrides


def test_sweep_grid_with_seeds_plans_every_combination(tmp_path):
    base = tmp_path / "grid"
    plan = parse("student", ROOT, [STUDENT, "EXPERIMENT.OUTPUT_DIR", str(base),
                                   "--sweep", "DISTILL.KD.TEMPERATURE", "2", "4",
                                   "--seeds", "0", "1", "--sweep", "SOLVER.LR", "0.05", "-0.5e-1"])
    assert plan.seeds == [0, 1]
    assert plan.sweeps == [("DISTILL.KD.TEMPERATURE", ["2", "4"]), ("SOLVER.LR", ["0.05", "-0.5e-1"])]
    runs = expand(plan)
    assert len(runs) == 2 * 2 * 2
    folders = {run.output_dir for run in runs}
    expected = {str(base / f"DISTILL.KD.TEMPERATURE={t}" / f"SOLVER.LR={lr}" / f"seed{s}")
                for t in ("2", "4") for lr in ("0.05", "-0.5e-1") for s in (0, 1)}
    assert folders == expected
    first = runs[0].overrides
    assert first[-6:] == ["SOLVER.LR", "0.05", "EXPERIMENT.SEED", "0", "EXPERIMENT.OUTPUT_DIR",
                          str(base / "DISTILL.KD.TEMPERATURE=2" / "SOLVER.LR=0.05" / "seed0")]


def test_registry_names_are_checked_up_front():
    plan = parse("student", ROOT, [STUDENT, "--sweep", "DISTILL.TYPE", "kd", "kdd"])
    with pytest.raises(ConfigError, match="unknown distiller 'kdd'.*DISTILL.TYPE=kdd"):
        expand(plan)
    with pytest.raises(ConfigError, match="unknown backbone"):
        expand(parse("student", ROOT, [STUDENT, "STUDENT.BACKBONE", "face.iresnet19"]))
