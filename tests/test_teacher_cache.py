"""DATA.TEACHER_CACHE: cached teacher outputs reproduce the live teacher, rebuild on a new teacher,
and are refused for methods or augmentations they cannot reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.synthetic_classification import write_cifar100
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.teacher_cache import check_cacheable
from engine.trainer import Trainer
from models import build_network
from utility.config import load_config
from utility.errors import ConfigError

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def tiny_cfg(root: Path, out: Path, *extra: str):
    """cifar.resnet8 on 4 synthetic classes, flip-only augmentation (no crop padding)."""
    return load_config(None, [
        "EXPERIMENT.TASK", "classification", "EXPERIMENT.OUTPUT_DIR", str(out), "EXPERIMENT.SEED", "5",
        "EXPERIMENT.DEVICE", "cpu", "DATA.ROOT", str(root), "DATA.TRAIN", "cifar-100-python",
        "DATA.FORMAT", "cifar100", "DATA.COLOR", "rgb", "DATA.IMAGE_SIZE", "32", "DATA.CROP_PADDING", "0",
        "DATA.WORKERS", "0", "DATA.MEAN", str(list(MEAN)), "DATA.STD", str(list(STD)),
        "TEACHER.BACKBONE", "cifar.resnet8", "STUDENT.BACKBONE", "cifar.resnet8",
        "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITERS", "2", "SOLVER.LR", "0.05",
        "SOLVER.CHECKPOINT_PERIOD", "100", "LOG.PERIOD", "1", "LOG.PROGRESS", "False",
        "LOG.TENSORBOARD", "False", "EVAL.BATCH_SIZE", "16", *extra,
    ])


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """Synthetic CIFAR and a teacher trained for 2 iterations."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, num_classes=4, train_per_class=12, test_per_class=4, seed=3)
    out = tmp_path_factory.mktemp("teacher")
    Trainer(tiny_cfg(root, out), role="teacher").train()
    return root, out / "last.pt"


def student_cfg(root: Path, out: Path, teacher: Path, *extra: str):
    return tiny_cfg(root, out, "DISTILL.TYPE", "kd", "TEACHER.CHECKPOINT", str(teacher), *extra)


def hand_teacher_outputs(root: Path, teacher_path: Path, sample: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's logits for one training sample, unflipped and mirrored, pre-processed by hand."""
    cfg = tiny_cfg(root, root)
    from data import DATASETS

    image = np.asarray(DATASETS.build("cifar100", cfg=cfg, split="train")[sample]["image"], dtype=np.float64)
    network = build_network(cfg.TEACHER, 4)
    state = load_checkpoint(teacher_path)["model"]
    network.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    network.eval()
    views = [(image / 255.0 - np.array(MEAN)) / np.array(STD), (image[:, ::-1] / 255.0 - np.array(MEAN)) / np.array(STD)]
    x = torch.tensor(np.stack(views).transpose(0, 3, 1, 2).copy(), dtype=torch.float32)
    with torch.no_grad():
        logits = network.forward_features(x).out
    return logits[0], logits[1]


def test_cached_kd_steps_equal_the_live_teacher(setup, tmp_path):
    root, teacher = setup
    cache = tmp_path / "cache"
    live = Trainer(student_cfg(root, tmp_path / "live", teacher))
    cached = Trainer(student_cfg(root, tmp_path / "cached", teacher, "DATA.TEACHER_CACHE", str(cache)))
    assert cached.distiller.teacher_cache is not None and live.distiller.teacher_cache is None

    # the stored rows are the teacher's logits for the unflipped and mirrored sample
    stored = np.load(cache / "out.npy")
    assert stored.shape == (48, 2, 4) and not (cache / "logits.npy").exists()  # no head: logits are out
    for sample in (0, 17):
        plain, mirrored = hand_teacher_outputs(root, teacher, sample)
        torch.testing.assert_close(torch.from_numpy(stored[sample, 0]), plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(stored[sample, 1]), mirrored, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(torch.from_numpy(stored[:, 0]), torch.from_numpy(stored[:, 1]))

    # the teacher never runs on the cached path
    calls = []
    cached.distiller.teacher.register_forward_hook(lambda *args: calls.append(1))
    steps = 0
    flips_seen = set()
    for live_batch, cached_batch in zip(live.loader, cached.loader):
        transformed = cached.transform(dict(cached_batch), torch.Generator().manual_seed(steps))
        flips_seen.update(transformed["flip"].tolist())
        _, live_terms = live.train_step(live_batch)
        _, cached_terms = cached.train_step(cached_batch)
        assert set(live_terms) == set(cached_terms) == {"ce", "kd"}
        for name in live_terms:
            assert abs(live_terms[name].item() - cached_terms[name].item()) < 1e-5, name
        live.iteration += 1
        cached.iteration += 1
        steps += 1
        if steps == 3:
            break
    assert steps == 3 and calls == [] and flips_seen == {False, True}


def test_flip_flags_describe_the_teacher_view(setup, tmp_path):
    root, teacher = setup
    trainer = Trainer(student_cfg(root, tmp_path / "run", teacher))
    raw = next(iter(trainer.loader))
    out = trainer.transform(dict(raw), torch.Generator().manual_seed(1))
    images = raw["image"].permute(0, 3, 1, 2).float()
    by_hand = torch.where(out["flip"].view(-1, 1, 1, 1), images.flip(-1), images)
    by_hand = (by_hand / 255.0 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out["image_teacher"], by_hand)


def test_a_changed_teacher_rebuilds_and_an_unchanged_one_reuses(setup, tmp_path):
    root, teacher = setup
    cache = tmp_path / "cache"
    mine = tmp_path / "teacher.pt"
    mine.write_bytes(teacher.read_bytes())
    cfg = student_cfg(root, tmp_path / "run", mine, "DATA.TEACHER_CACHE", str(cache))
    Trainer(cfg)
    first = np.load(cache / "out.npy")
    stamp = (cache / "out.npy").stat().st_mtime_ns
    Trainer(cfg)  # same key: reused, not rewritten
    assert (cache / "out.npy").stat().st_mtime_ns == stamp

    state = load_checkpoint(mine)
    state["model"] = {k: v * 1.5 if k.endswith("fc.weight") else v for k, v in state["model"].items()}
    save_checkpoint(state, mine)
    Trainer(cfg)
    second = np.load(cache / "out.npy")
    assert not np.allclose(first, second)
    plain, mirrored = hand_teacher_outputs(root, mine, 3)
    torch.testing.assert_close(torch.from_numpy(second[3, 0]), plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(second[3, 1]), mirrored, atol=1e-5, rtol=1e-5)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["num_samples"] == 48 and manifest["mean"] == list(MEAN)
    assert not list(cache.glob("*.tmp"))


def test_methods_and_augmentations_it_cannot_reproduce_are_refused(setup, tmp_path):
    root, teacher = setup
    with pytest.raises(ConfigError, match="DATA.TEACHER_CACHE"):
        Trainer(student_cfg(root, tmp_path / "at", teacher, "DISTILL.TYPE", "at",
                            "DATA.TEACHER_CACHE", str(tmp_path / "c")))
    assert not (tmp_path / "c").exists()
    for extra in (("DISTILL.TYPE", "fitnet"), ("DISTILL.TYPE", "kd+crd"), ("DATA.CROP_PADDING", "4"),
                  ("DATA.RANDOM_CROP", "True"), ("DISTILL.TYPE", "rkd", "DISTILL.RKD.FEATURE", "pooled")):
        with pytest.raises(ConfigError, match="DATA.TEACHER_CACHE"):
            check_cacheable(student_cfg(root, tmp_path, teacher, *extra))
    for allowed in (("DISTILL.TYPE", "kd"), ("DISTILL.TYPE", "adadistill"), ("DISTILL.TYPE", "rkd+kd"),
                    ("DATA.LOWRES.SIZES", "[16]")):
        check_cacheable(student_cfg(root, tmp_path, teacher, "DISTILL.RKD.FEATURE", "out", *allowed))
