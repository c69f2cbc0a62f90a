"""The training loop: exact resume, atomic checkpoints, schedules, the non-finite guard, strict loads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from data.synthetic_classification import write_cifar100
from engine.checkpoint import FORMAT, load_checkpoint, load_network_weights, save_checkpoint
from engine.optim import lr_factor
from engine.trainer import Trainer
from models import build_network
from utility.config import load_config
from utility.errors import CheckpointError, DistilleryError


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, num_classes=4, train_per_class=12, test_per_class=4, seed=3)
    return root


def tiny_cfg(root: Path, out: Path, *extra: str):
    """cifar.resnet8 on 4 synthetic classes: a real model and data path, a second per step."""
    return load_config(None, [
        "EXPERIMENT.TASK", "classification", "EXPERIMENT.OUTPUT_DIR", str(out), "EXPERIMENT.SEED", "7",
        "EXPERIMENT.DEVICE", "cpu", "DATA.ROOT", str(root), "DATA.TRAIN", "cifar-100-python",
        "DATA.FORMAT", "cifar100", "DATA.COLOR", "rgb", "DATA.IMAGE_SIZE", "32", "DATA.CROP_PADDING", "4",
        "DATA.WORKERS", "0", "DATA.MEAN", "[0.5,0.5,0.5]", "DATA.STD", "[0.25,0.25,0.25]",
        "TEACHER.BACKBONE", "cifar.resnet8", "STUDENT.BACKBONE", "cifar.resnet8",
        "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITERS", "6", "SOLVER.LR", "0.05", "SOLVER.SCHEDULE", "cosine",
        "SOLVER.CHECKPOINT_PERIOD", "100", "LOG.PERIOD", "2", "LOG.PROGRESS", "False",
        "LOG.TENSORBOARD", "False", "EVAL.BATCH_SIZE", "16", *extra,
    ])


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.distiller.state_dict().items()}


@pytest.mark.parametrize("on_device", [False, True])
def test_resume_continues_exactly(cifar_root, tmp_path, on_device):
    """N iterations straight == N/2, stop, --resume to N (weights bit-identical on CPU)."""
    extra = ("DATA.ON_DEVICE", str(on_device))
    straight = Trainer(tiny_cfg(cifar_root, tmp_path / "straight", *extra), role="teacher")
    straight.train()

    first = Trainer(tiny_cfg(cifar_root, tmp_path / "split", *extra), role="teacher")
    first.plan.total_iters = 3  # stop half-way, as if killed after the checkpoint at iteration 3
    first.train()
    assert load_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 3
    resumed = Trainer(tiny_cfg(cifar_root, tmp_path / "split", *extra), role="teacher", resume=True)
    resumed.train()

    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and the run really trained: weights moved away from a fresh initialisation
    fresh = Trainer(tiny_cfg(cifar_root, tmp_path / "fresh", *extra), role="teacher")
    assert any(not torch.equal(a[k], v) for k, v in fresh.distiller.state_dict().items() if v.is_floating_point())


def test_checkpoint_contents_and_results(cifar_root, tmp_path):
    trainer = Trainer(tiny_cfg(cifar_root, tmp_path / "run"), role="teacher")
    summary = trainer.train()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["format"] == FORMAT and state["iteration"] == 6
    for key in ("model", "optimizer", "scheduler", "rng", "best", "config", "num_classes"):
        assert key in state
    assert (tmp_path / "run" / "best.pt").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "run.json").is_file()
    assert (tmp_path / "run" / "results.json").is_file()
    assert 0.0 <= summary["last"]["top1"] <= 100.0
    # the saved network loads strictly into a fresh one and gives the same outputs
    network = build_network(trainer.cfg.TEACHER, 4)
    load_network_weights(network, tmp_path / "run" / "last.pt")
    x = torch.randn(2, 3, 32, 32)
    network.eval()
    trainer.distiller.student.eval()
    assert torch.allclose(network(x), trainer.distiller.student(x))


def test_atomic_save_leaves_previous_checkpoint_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"iteration": 1}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_non_finite_loss_stops_cleanly(cifar_root, tmp_path):
    trainer = Trainer(tiny_cfg(cifar_root, tmp_path / "nan", "SOLVER.LR", "1e30", "SOLVER.SCHEDULE",
                               "constant"), role="teacher")
    with pytest.raises(DistilleryError, match="non-finite loss"):
        trainer.train()


def test_mismatched_checkpoint_names_the_problem(cifar_root, tmp_path):
    trainer = Trainer(tiny_cfg(cifar_root, tmp_path / "a"), role="teacher")
    trainer.train()
    other = build_network(load_config(None, ["TEACHER.BACKBONE", "cifar.resnet14"]).TEACHER, 4)
    with pytest.raises(CheckpointError) as info:
        load_network_weights(other, tmp_path / "a" / "last.pt")
    assert "missing keys" in str(info.value) and "last.pt" in str(info.value)


def test_student_needs_a_teacher_checkpoint(cifar_root, tmp_path):
    with pytest.raises(DistilleryError, match="TEACHER.CHECKPOINT"):
        Trainer(tiny_cfg(cifar_root, tmp_path / "s", "DISTILL.TYPE", "kd"), role="student")


def test_resume_without_checkpoint_is_a_clear_error(cifar_root, tmp_path):
    trainer = Trainer(tiny_cfg(cifar_root, tmp_path / "none"), role="teacher", resume=True)
    with pytest.raises(CheckpointError, match="--resume"):
        trainer.train()


def test_lr_schedules_against_hand_values():
    cfg = load_config(None, ["SOLVER.SCHEDULE", "multistep", "SOLVER.MILESTONES", "[2, 3]",
                             "SOLVER.GAMMA", "0.1", "SOLVER.MILESTONE_UNIT", "epoch"])
    # 10 iterations per epoch: decays at iterations 20 and 30
    assert [lr_factor(i, 40, cfg, 10, 0.1) for i in (0, 19, 20, 29, 30)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cfg = load_config(None, ["SOLVER.SCHEDULE", "cosine", "SOLVER.WARMUP_ITERS", "4"])
    assert lr_factor(0, 14, cfg, 1, 0.1) == pytest.approx(0.25)  # linear warm-up (i+1)/4
    assert lr_factor(3, 14, cfg, 1, 0.1) == pytest.approx(1.0)
    assert lr_factor(9, 14, cfg, 1, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))
    cfg = load_config(None, ["SOLVER.SCHEDULE", "poly", "SOLVER.MIN_LR", "0.01"])
    assert lr_factor(5, 10, cfg, 1, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
