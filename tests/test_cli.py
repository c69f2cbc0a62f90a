"""End to end through the command-line entry points: teacher -> student -> test on tiny synthetic faces."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.synthetic import write_faces

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def face_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    write_faces(root, identities=6, images_per_identity=4, pairs=20, seed=1, sets=("lfw",))
    return root


def common(root: Path, out: Path) -> list[str]:
    return [
        "EXPERIMENT.DEVICE", "cpu", "EXPERIMENT.OUTPUT_DIR", str(out), "DATA.ROOT", str(root),
        "DATA.TRAIN", "train.rec", "DATA.WORKERS", "0", "EVAL.SETS", "['lfw.bin']", "EVAL.FOLDS", "2",
        "EVAL.BATCH_SIZE", "20", "EVAL.ROC", "False",
        "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITERS", "2", "LOG.PROGRESS", "False", "LOG.TENSORBOARD", "False",
        "LOG.PERIOD", "1",
    ]


NET = ["WIDTH", "8", "EMBEDDING_SIZE", "32", "HEAD", "arcface", "BACKBONE", "face.iresnet18"]


def node(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" if i % 2 == 0 else k for i, k in enumerate(NET)]


def test_teacher_student_test_pipeline(face_root, tmp_path):
    teacher_out = tmp_path / "teacher"
    run("train_teacher.py", "--config", "configs/demo/face_teacher.yaml",
        *common(face_root, teacher_out), *node("TEACHER"), "EVAL.RESOLUTIONS", "[112]")
    assert (teacher_out / "last.pt").is_file() and (teacher_out / "results.json").is_file()

    student_out = tmp_path / "student"
    run("train_student.py", "--config", "configs/demo/face_student.yaml",
        *common(face_root, student_out), *node("TEACHER"), *node("STUDENT"),
        "TEACHER.CHECKPOINT", str(teacher_out / "last.pt"), "DISTILL.TYPE", "kd", "EVAL.RESOLUTIONS", "[14]")
    assert (student_out / "last.pt").is_file()

    tested = run("test.py", "--config", "configs/demo/face_student.yaml",
                 *common(face_root, student_out), *node("STUDENT"), "EVAL.RESOLUTIONS", "[14, 112]")
    results = json.loads((student_out / "results.json").read_text())
    assert set(results) >= {"last", "best"}
    assert "lfw" in tested.stdout and (student_out / "results.md").is_file()
    for variant in ("last", "best"):
        assert 0.0 <= results[variant]["main"] <= 1.0 or 0.0 <= results[variant]["main"] <= 100.0

    dry = run("train_student.py", "--config", "configs/demo/face_student.yaml", "--dry-run",
              *common(face_root, tmp_path / "dry"), *node("TEACHER"), *node("STUDENT"),
              "TEACHER.CHECKPOINT", str(teacher_out / "last.pt"))
    assert "GFLOPs (" in dry.stdout and "GMACs" in dry.stdout and "parameters" in dry.stdout
    # only the sections the run reads: kd's node, not another method's
    assert "KD:" in dry.stdout and "CRD:" not in dry.stdout and "A_SKD:" not in dry.stdout
    assert not (tmp_path / "dry").exists()  # a dry run writes nothing

    # test.py on the run folder: its own config.yaml (DATA.ROOT, EVAL.SETS ... from the command line
    # above, which the recipe does not have), called from another folder
    before = (student_out / "results.json").read_text()
    (student_out / "results.json").unlink()
    folder_test = subprocess.run([sys.executable, str(ROOT / "test.py"), str(student_out)], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=600)
    assert folder_test.returncode == 0, folder_test.stderr[-2000:]
    rerun = json.loads((student_out / "results.json").read_text())
    assert set(rerun["last"]["sets"]["lfw"]["results"]) == {"14"}  # the run's EVAL.RESOLUTIONS, not the recipe's
    assert rerun["last"]["sets"]["lfw"]["results"]["14"] == json.loads(before)["last"]["sets"]["lfw"]["results"]["14"]
    if importlib.util.find_spec("onnxruntime") is not None:
        exported = run("test.py", str(student_out), "--export-onnx", str(tmp_path / "student.onnx"))
        assert (tmp_path / "student.onnx").is_file() and "BGR order" in exported.stdout
        assert "mean [0.5, 0.5, 0.5]" in exported.stdout and "N x 32" in exported.stdout
    flagged = run("test.py", "--run", str(teacher_out))  # a teacher run evaluates its TEACHER network
    assert "112" in flagged.stdout

    # log.txt: one line per LOG.PERIOD iteration with the loss terms, lr and throughput
    log_lines = [line for line in (student_out / "log.txt").read_text().splitlines() if "iteration 1/2:" in line
                 or "iteration 2/2:" in line]
    assert any(" ce " in line and " kd " in line and " lr " in line and "images/s" in line for line in log_lines)


def test_run_folder_errors_are_one_line(tmp_path):
    result = run("test.py", str(tmp_path), check=False)
    assert result.returncode == 2 and "no config.yaml" in result.stderr and "Traceback" not in result.stderr
    result = run("test.py", check=False)
    assert result.returncode == 2 and "RUN_DIR" in result.stderr


def test_config_typo_exits_2_with_one_line(face_root, tmp_path):
    result = run("train_teacher.py", "--config", "configs/demo/face_teacher.yaml",
                 *common(face_root, tmp_path / "x"), "SOLVER.LRR", "0.1", check=False)
    assert result.returncode == 2
    assert "SOLVER.LR" in result.stderr and "Traceback" not in result.stderr


def test_missing_data_exits_2(tmp_path):
    result = run("train_teacher.py", "--config", "configs/demo/face_teacher.yaml",
                 *common(tmp_path / "nowhere", tmp_path / "x"), check=False)
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr
