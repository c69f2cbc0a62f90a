"""Runs under faults, through the command-line entry points: kill -9 during a save, config changes on
resume, output folders (existing runs, concurrent launches, files and read-only folders), inputs
checked at start, flags anywhere on the command line (issue 11 items 3, 4, 7, 8, 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from data.synthetic import write_faces
from data.synthetic_classification import write_cifar100
from engine.checkpoint import load_checkpoint
from engine.cli import parse_training_args, run_cli
from engine.resume_check import check_resume_config, is_safe
from engine.run_dir import RunDir
from utility.config import get_defaults, load_config
from utility.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, num_classes=4, train_per_class=12, test_per_class=4, seed=3)
    return root


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text("EXPERIMENT:\n  TASK: classification\n")
    return path


def cli_args(config: Path, root: Path, out: Path, *extra: str) -> list[str]:
    """train_teacher.py arguments for cifar.resnet8 on 4 synthetic classes, 6 constant-lr steps."""
    return ["--config", str(config),
            "EXPERIMENT.OUTPUT_DIR", str(out), "EXPERIMENT.SEED", "7", "EXPERIMENT.DEVICE", "cpu",
            "DATA.ROOT", str(root), "DATA.TRAIN", "cifar-100-python", "DATA.VAL", "cifar-100-python",
            "DATA.FORMAT", "cifar100", "DATA.IMAGE_SIZE", "32", "DATA.CROP_PADDING", "4", "DATA.WORKERS", "0",
            "TEACHER.BACKBONE", "cifar.resnet8", "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITERS", "6",
            "SOLVER.LR", "0.05", "SOLVER.SCHEDULE", "constant", "SOLVER.CHECKPOINT_PERIOD", "2",
            "LOG.PERIOD", "2", "LOG.PROGRESS", "False", "LOG.TENSORBOARD", "False", "EVAL.BATCH_SIZE", "16",
            "EVAL.ROC", "False", *extra]


def train(args: list[str], capsys=None) -> tuple[int, str]:
    """train_teacher.py in this process (no interpreter start-up); returns (exit status, stderr)."""
    from train_teacher import main

    if capsys is not None:
        capsys.readouterr()
    code = run_cli(main, args)
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- kill -9 during a save; `--resume` last on the command line -----------------------------------
KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    sys.path.insert(0, {root!r})
    real_save, calls = torch.save, []
    def save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint: half written, then the process dies
            handle.write(b"PK partial checkpoint")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, handle, *args, **kwargs)
    torch.save = save
    from engine.cli import run_cli
    from train_teacher import main
    sys.exit(run_cli(main, sys.argv[1:]))
""")


def test_kill_during_save_then_same_command_plus_resume_is_exact(cifar_root, config_file, tmp_path, capsys):
    straight = tmp_path / "straight"
    assert train(cli_args(config_file, cifar_root, straight)) == (0, "")

    killed = tmp_path / "killed"
    args = cli_args(config_file, cifar_root, killed)
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    result = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == -9, result.stderr
    assert list(killed.glob(".*.tmp")), "the kill left a temporary file behind"
    assert load_checkpoint(killed / "last.pt")["iteration"] == 2

    code, err = train([*args, "--resume"], capsys)  # what users type: the same command plus --resume
    assert code == 0, err
    assert not list(killed.glob(".*.tmp"))  # cleaned on start
    a, b = weights(straight / "last.pt"), weights(killed / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_flags_are_accepted_anywhere_among_the_overrides():
    for argv in (["--config", "c", "SOLVER.LR", "0.1", "--resume"],
                 ["--resume", "--config", "c", "SOLVER.LR", "0.1"],
                 ["SOLVER.LR", "0.1", "--config", "c", "--resume"]):
        args = parse_training_args("t", argv)
        assert (args.resume, args.overrides, args.config) == ("yes", ["SOLVER.LR", "0.1"], "c")
    args = parse_training_args("t", ["--config", "c", "--resume", "auto", "SOLVER.LR", "-0.5", "--dry-run"])
    assert (args.resume, args.overrides, args.dry_run) == ("auto", ["SOLVER.LR", "-0.5"], True)
    args = parse_training_args("t", ["--config", "c", "--resume", "SOLVER.LR", "0.1"])
    assert (args.resume, args.overrides) == ("yes", ["SOLVER.LR", "0.1"])  # never taken as --resume's value


# -- item 3: config changes on resume -------------------------------------------------------------
def test_resume_refuses_unsafe_changes_and_records_safe_ones(cifar_root, config_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = cli_args(config_file, cifar_root, out, "SOLVER.MAX_ITERS", "4")
    assert train(args, capsys)[0] == 0

    code, err = train([*args, "SOLVER.OPTIMIZER", "adamw", "EXPERIMENT.SEED", "8", "--resume"], capsys)
    line = one_line_error(err)  # was a KeyError traceback from the optimizer state
    assert code == 2 and "SOLVER.OPTIMIZER 'sgd' -> 'adamw'" in line and "EXPERIMENT.SEED 7 -> 8" in line

    code, err = train([*args, "SOLVER.MAX_ITERS", "2", "--resume"], capsys)  # used to "finish" silently
    assert code == 2 and "SOLVER.MAX_ITERS" in one_line_error(err) and "4" in err

    code, err = train([*args, "SOLVER.MAX_ITERS", "6", "EVAL.BATCH_SIZE", "8", "--resume"], capsys)
    assert code == 0, err
    assert load_checkpoint(out / "last.pt")["iteration"] == 6
    history = json.loads((out / "run.json").read_text())["history"]
    assert history[-1]["resumed"]["from_iteration"] == 4
    assert history[-1]["resumed"]["changes"] == {"EVAL.BATCH_SIZE": [16, 8], "SOLVER.MAX_ITERS": [4, 6]}


def test_key_classes_by_prefix():
    saved = load_config(None, ["DISTILL.TYPE", "kd"])
    changed = load_config(None, ["DISTILL.TYPE", "a_skd", "LOG.PERIOD", "5", "DATA.WORKERS", "0"])
    with pytest.raises(ConfigError) as info:
        check_resume_config(saved.dump(), changed, get_defaults(), 10, 100, "last.pt")
    assert "DISTILL.TYPE 'kd' -> 'a_skd'" in str(info.value) and "LOG.PERIOD" not in str(info.value)
    safe = load_config(None, ["DISTILL.TYPE", "kd", "LOG.PERIOD", "5", "DATA.WORKERS", "0"])
    assert set(check_resume_config(saved.dump(), safe, get_defaults(), 10, 100, "last.pt")) == {
        "LOG.PERIOD", "DATA.WORKERS"}
    # a method added later is unsafe without being listed anywhere; network, data and seed keys too
    for key in ("DISTILL.SOMENEWMETHOD.WEIGHT", "STUDENT.BACKBONE", "DATA.TRAIN", "SOLVER.SCHEDULE", "EXPERIMENT.SEED"):
        assert not is_safe(key), key
    for key in ("EVAL.SETS", "LOG.TENSORBOARD", "EXPERIMENT.DEVICE", "SOLVER.MAX_ITERS", "DATA.WORKERS"):
        assert is_safe(key), key


# -- item 4: output folders ------------------------------------------------------------------------
def test_fresh_run_into_a_used_folder_is_refused_overwrite_and_resume_auto(cifar_root, config_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = cli_args(config_file, cifar_root, out, "SOLVER.MAX_ITERS", "2")
    assert train(args, capsys)[0] == 0
    first = (out / "last.pt").read_bytes()
    code, err = train(args, capsys)
    line = one_line_error(err)
    assert code == 2 and "--resume" in line and "--overwrite" in line and str(out) in line
    assert (out / "last.pt").read_bytes() == first  # untouched

    code, err = train([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert not (out / "last.prev.pt").exists()  # the old run's files went before the new run started

    code, err = train([*args, "SOLVER.MAX_ITERS", "4", "--resume", "auto"], capsys)  # a checkpoint: continue
    assert code == 0, err
    assert load_checkpoint(out / "last.pt")["iteration"] == 4
    assert json.loads((out / "run.json").read_text())["history"][-1]["resumed"]["from_iteration"] == 2
    fresh = tmp_path / "fresh"
    code, err = train(cli_args(config_file, cifar_root, fresh, "SOLVER.MAX_ITERS", "2", "--resume", "auto"), capsys)
    assert code == 0, err  # nothing to resume: starts fresh
    assert "history" not in json.loads((fresh / "run.json").read_text())


def test_second_claim_of_a_folder_names_the_holder(tmp_path):
    held = RunDir.claim(tmp_path / "run")
    try:
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            RunDir.claim(tmp_path / "run", resume="auto")
    finally:
        held.release()
    RunDir.claim(tmp_path / "run", resume="auto").release()  # released: free again


def test_concurrent_launch_into_one_folder_is_refused(cifar_root, config_file, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); from engine.run_dir import "
         "RunDir; held = RunDir.claim(sys.argv[2]); print('held', flush=True); time.sleep(120)", str(ROOT), str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = train(cli_args(config_file, cifar_root, out), capsys)
        assert code == 2 and f"pid {holder.pid}" in one_line_error(err)
        assert not (out / "last.pt").exists() and not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


# -- item 8: OUTPUT_DIR faults ----------------------------------------------------------------------
def test_output_dir_that_is_or_sits_under_a_file(cifar_root, config_file, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for out in (blocker, blocker / "run"):
        code, err = train(cli_args(config_file, cifar_root, out), capsys)
        assert code == 2 and "EXPERIMENT.OUTPUT_DIR" in one_line_error(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir(cifar_root, config_file, tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = train(cli_args(config_file, cifar_root, locked / "run"), capsys)
        assert code == 2 and "cannot be written" in one_line_error(err)
    finally:
        locked.chmod(0o700)


# -- item 7: fail fast ---------------------------------------------------------------------------------
def test_missing_eval_set_is_found_before_training_and_by_dry_run(tmp_path, capsys):
    root = tmp_path / "faces"
    write_faces(root, identities=4, images_per_identity=2, pairs=10, seed=1, sets=("lfw",))
    out = tmp_path / "run"
    base = ["--config", str(ROOT / "configs/demo/face_teacher.yaml"), "EXPERIMENT.DEVICE", "cpu",
            "EXPERIMENT.OUTPUT_DIR", str(out), "DATA.ROOT", str(root), "DATA.TRAIN", "train.rec",
            "DATA.WORKERS", "0", "EVAL.SETS", "['lfw.bin', 'agedb_30.bin']", "SOLVER.MAX_ITERS", "2",
            "SOLVER.BATCH_SIZE", "4", "LOG.PROGRESS", "False", "TEACHER.WIDTH", "8"]
    for extra in ([], ["--dry-run"]):
        code, err = train([*base, *extra], capsys)
        line = one_line_error(err)
        assert code == 2 and "agedb_30.bin" in line and "EVAL.SETS" in line
        assert not (out / "last.pt").exists() and not (out / "log.txt").exists()
