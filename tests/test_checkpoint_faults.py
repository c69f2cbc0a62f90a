"""Checkpoints under faults: never written from non-finite state, corruption detected, the previous
one kept, one-line errors for files that are not checkpoints, full disks, file modes, and student
checkpoints that identify the frozen teacher instead of storing it (issue 11 items 1, 2, 8, 9;
issue 12 item 5)."""

from __future__ import annotations

import errno
import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import test_trainer  # the same tiny CIFAR run: its data fixture and config
import torch

from engine.checkpoint import (
    load_checkpoint,
    load_network_weights,
    load_training_checkpoint,
    previous_path,
    save_checkpoint,
)
from engine.trainer import Trainer
from models import build_network
from utility.config import load_config
from utility.errors import CheckpointError, DistilleryError

cifar_root = test_trainer.cifar_root
tiny_cfg = test_trainer.tiny_cfg


def all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


# -- item 1: the non-finite guard ------------------------------------------------------------------
@pytest.mark.parametrize("period", ["1", "2"])
def test_exploding_run_never_writes_non_finite_checkpoint_and_names_a_good_one(cifar_root, tmp_path, period):
    """LR 1e4: the loss stays finite for a step after the weights have blown up, so the guard must
    look at the state it is about to save."""
    out = tmp_path / "boom"
    trainer = Trainer(tiny_cfg(cifar_root, out, "SOLVER.LR", "1e4", "SOLVER.SCHEDULE", "constant",
                               "SOLVER.CHECKPOINT_PERIOD", period, "SOLVER.MAX_ITERS", "20"), role="teacher")
    with pytest.raises(DistilleryError, match="non-finite") as info:
        trainer.train()
    message = str(info.value)
    assert "\n" not in message
    named = [Path(word) for word in message.split() if word.startswith(str(out)) and word.endswith(".pt")]
    if named:
        assert named[0].is_file(), message
        assert all_finite(load_training_checkpoint(named[0])["model"])
    else:
        assert "no checkpoint was written yet" in message
    for written in out.glob("*.pt"):  # nothing on disk holds inf/NaN
        assert all_finite(load_checkpoint(written)["model"]), written


# -- item 2: integrity, and the previous checkpoint ----------------------------------------------
def _flip_inside_largest_tensor(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[entry.header_offset + 26:entry.header_offset + 28], "little"), \
        int.from_bytes(raw[entry.header_offset + 28:entry.header_offset + 30], "little")
    start = entry.header_offset + 30 + name_len + extra_len
    raw[start + entry.file_size // 2] ^= 0x40
    path.write_bytes(bytes(raw))


def test_flipped_bytes_are_refused_and_the_previous_checkpoint_is_kept(cifar_root, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_cfg(cifar_root, out, "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.MAX_ITERS", "4"), role="teacher").train()
    last, previous = out / "last.pt", previous_path(out / "last.pt")
    assert load_checkpoint(last)["iteration"] == 4 and load_checkpoint(previous)["iteration"] == 2
    _flip_inside_largest_tensor(last)
    torch.load(last, weights_only=True)  # the fault: torch itself reads the damaged file without complaint
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(last)
    assert str(last) in str(info.value) and "\n" not in str(info.value)
    resumed = Trainer(tiny_cfg(cifar_root, out, "SOLVER.MAX_ITERS", "6"), role="teacher", resume=True)
    with pytest.raises(CheckpointError, match="corrupt"):
        resumed.train()
    assert load_checkpoint(previous)["iteration"] == 2  # still there, still good


def test_resume_from_previous_when_a_kill_removed_last(cifar_root, tmp_path):
    """Killed between keeping the previous checkpoint and renaming the new one into place."""
    out = tmp_path / "run"
    Trainer(tiny_cfg(cifar_root, out, "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.MAX_ITERS", "4"), role="teacher").train()
    (out / "last.pt").unlink()
    resumed = Trainer(tiny_cfg(cifar_root, out, "SOLVER.MAX_ITERS", "4"), role="teacher", resume=True)
    resumed.load_resume_state()
    assert resumed.iteration == 2


# -- item 8: files that are not checkpoints -----------------------------------------------------
@pytest.mark.parametrize("content", [{"foo": 1}, torch.zeros(3), "no-optimizer"])
def test_resume_from_a_file_that_is_not_a_training_checkpoint_is_one_line(cifar_root, tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    if content == "no-optimizer":
        save_checkpoint({"model": {}, "iteration": 1, "scheduler": {}, "rng": {}}, out / "last.pt")
    else:
        torch.save(content, out / "last.pt")
    trainer = Trainer(tiny_cfg(cifar_root, out), role="teacher", resume=True)
    with pytest.raises(CheckpointError) as info:
        trainer.train()
    assert "last.pt" in str(info.value) and "\n" not in str(info.value)


def test_network_weights_from_a_bare_tensor_or_foreign_dict_is_one_line(tmp_path):
    network = build_network(load_config(None, ["TEACHER.BACKBONE", "cifar.resnet8"]).TEACHER, 4)
    for name, content in (("tensor.pt", torch.zeros(3)), ("foo.pt", {"foo": 1})):
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError) as info:
            load_network_weights(network, tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)


class _Custom:
    pass


def test_weights_only_refusal_is_one_line(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"obj": _Custom()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value) and "weights_only" in str(info.value)


def test_full_disk_keeps_previous_checkpoint_and_removes_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"iteration": 1}, path, keep_previous=True)
    real_save = torch.save

    def full_disk(obj, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device") as info:
        save_checkpoint({"iteration": 2}, path, keep_previous=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert "previous checkpoint is intact" in str(info.value) and "--resume" in str(info.value)
    assert load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint({"iteration": 1}, tmp_path / "last.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == mode


# -- issue 12 item 5: the teacher is identified, not stored ----------------------------------------
def _student_cfg(root: Path, out: Path, teacher: Path, *extra: str):
    return tiny_cfg(root, out, "DISTILL.TYPE", "kd", "TEACHER.CHECKPOINT", str(teacher), *extra)


def test_student_checkpoint_stores_no_teacher_resumes_exactly_and_checks_the_teacher(cifar_root, tmp_path):
    teacher_dir = tmp_path / "teacher"
    Trainer(tiny_cfg(cifar_root, teacher_dir, "SOLVER.MAX_ITERS", "2"), role="teacher").train()
    teacher = teacher_dir / "last.pt"

    straight = Trainer(_student_cfg(cifar_root, tmp_path / "straight", teacher), role="student")
    straight.train()
    saved = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert saved["model"] and not [k for k in saved["model"] if k.startswith("teacher.")]
    assert any(k.startswith("student.") for k in saved["model"])
    assert saved["teacher_files"]["TEACHER.CHECKPOINT"]["sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()

    first = Trainer(_student_cfg(cifar_root, tmp_path / "split", teacher), role="student")
    first.plan.total_iters = 3
    first.train()
    resumed = Trainer(_student_cfg(cifar_root, tmp_path / "split", teacher), role="student", resume=True)
    resumed.train()
    a, b = straight.distiller.state_dict(), resumed.distiller.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

    # the teacher file changes in place (same path): resuming on it is refused
    state = load_checkpoint(teacher)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = state["model"][name] + 1.0
    save_checkpoint(state, teacher)
    again = Trainer(_student_cfg(cifar_root, tmp_path / "split", teacher, "SOLVER.MAX_ITERS", "8"), role="student",
                    resume=True)
    with pytest.raises(CheckpointError, match="TEACHER.CHECKPOINT"):
        again.train()
