"""RKD and F-SKD's FitNet against hand computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kd.base import Probe, Step
from kd.fitnet import FitNet, hint_mse_loss
from kd.rkd import RelationalKD, rkd_loss
from models.features import Features
from utility.config import load_config
from utility.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "face"


def _smooth_l1(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1.0 else d - 0.5


def _rkd_by_hand(x: np.ndarray, y: np.ndarray, w_dist: float, w_angle: float) -> float:
    """Loops: pairwise distances (sqrt of max(square, 1e-12), diagonal 0) over their positive mean,
    and all B^3 angle cosines between normalised difference vectors (zero vectors give 0)."""
    n = len(x)

    def distances(v):
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                if i != j:
                    square = float(v[i] @ v[i] + v[j] @ v[j] - 2 * v[i] @ v[j])
                    d[i, j] = math.sqrt(max(square, 1e-12))
        return d / d[d > 0].mean()

    def angles(v):
        out = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    e_ij, e_ik = v[j] - v[i], v[k] - v[i]
                    nij, nik = max(np.linalg.norm(e_ij), 1e-12), max(np.linalg.norm(e_ik), 1e-12)
                    out.append(float((e_ij / nij) @ (e_ik / nik)))
        return out

    ds, dt = distances(x), distances(y)
    loss_d = sum(_smooth_l1(a, b) for a, b in zip(ds.ravel(), dt.ravel())) / n ** 2
    as_, at = angles(x), angles(y)
    loss_a = sum(_smooth_l1(a, b) for a, b in zip(as_, at)) / n ** 3
    return w_dist * loss_d + w_angle * loss_a


@pytest.mark.parametrize("w_dist, w_angle", [(25.0, 50.0), (1.0, 2.0)])
def test_rkd_matches_hand_computation(w_dist, w_angle):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 6)) * 4.0  # dimensions may differ
    value = rkd_loss(torch.from_numpy(x), torch.from_numpy(y), w_dist, w_angle).item()
    assert value == pytest.approx(_rkd_by_hand(x, y, w_dist, w_angle), rel=1e-5)


def test_rkd_defaults_are_the_cifar_weights_and_large_gaps_are_linear():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 3)) * 10.0, rng.normal(size=(4, 3))
    assert rkd_loss(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(
        _rkd_by_hand(x, y, 25.0, 50.0), rel=1e-5)


def test_rkd_is_scale_invariant_and_teacher_gets_no_gradient():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(4, 3))).requires_grad_()
    y = torch.from_numpy(rng.normal(size=(4, 3))).requires_grad_()
    rkd_loss(x, y).backward()
    assert x.grad is not None and y.grad is None
    same = rkd_loss(x.detach() * 3.0, x.detach())  # distances normalised by their mean, angles scale-free
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def _features(seed: int, batch: int = 3) -> Features:
    generator = torch.Generator().manual_seed(seed)
    return Features(out=torch.randn(batch, 5, generator=generator), pooled=torch.randn(batch, 7, generator=generator),
                    stages=[torch.randn(batch, 2, 4, 4, generator=generator),
                            torch.randn(batch, 3, 2, 2, generator=generator)])


def test_rkd_distiller_uses_the_embedding_with_the_f_skd_weights():
    cfg = load_config(CONFIGS / "f_skd/baselines/rkd_cosface.yaml")
    student, teacher = _features(0), _features(1)
    distiller = RelationalKD.companion(cfg, Probe(student=student, teacher=teacher, num_classes=4))
    step = Step(batch={}, student=student, logits_s=student.out, teacher=teacher)
    expected = 40.0 * _rkd_by_hand(student.out.numpy(), teacher.out.numpy(), 1.0, 2.0)
    assert distiller.distill_losses(step)["rkd"].item() == pytest.approx(expected, rel=1e-5)
    pooled_cfg = load_config(CONFIGS / "f_skd/baselines/rkd_cosface.yaml", ["DISTILL.RKD.FEATURE", "pooled"])
    pooled = RelationalKD.companion(pooled_cfg, Probe(student=student, teacher=teacher, num_classes=4))
    expected_pooled = 40.0 * _rkd_by_hand(student.pooled.numpy(), teacher.pooled.numpy(), 1.0, 2.0)
    assert pooled.distill_losses(step)["rkd"].item() == pytest.approx(expected_pooled, rel=1e-5)


def test_hint_mse_is_the_mean_over_stages_of_elementwise_mse():
    student, teacher = _features(2), _features(3)
    by_hand = []
    for s, t in zip(student.stages, teacher.stages):
        diff = (s.numpy().astype(np.float64) - t.numpy()).ravel()
        by_hand.append(sum(d * d for d in diff) / diff.size)
    assert hint_mse_loss(student.stages, teacher.stages).item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)


def test_fitnet_distiller_weights_and_requires_hints():
    cfg = load_config(CONFIGS / "f_skd/baselines/fitnet_cosface.yaml")
    student, teacher = _features(4), _features(5)
    distiller = FitNet.companion(cfg, Probe(student=student, teacher=teacher, num_classes=4))
    step = Step(batch={}, student=student, logits_s=student.out, teacher=teacher)
    assert distiller.distill_losses(step)["fitnet"].item() == pytest.approx(
        1.5 * hint_mse_loss(student.stages, teacher.stages).item(), rel=1e-6)
    no_hints = load_config(CONFIGS / "f_skd/baselines/fitnet_cosface.yaml", ["STUDENT.HINTS", "False"])
    with pytest.raises(ConfigError, match="STUDENT.HINTS"):
        FitNet.companion(no_hints, Probe(student=student, teacher=teacher, num_classes=4))


def test_rkd_loss_is_float32_under_bf16_autocast():
    """Autocast would run the Gram matrix and the angle bmm in bf16 even on float32 inputs."""
    g = torch.Generator().manual_seed(0)
    emb_s, emb_t = torch.randn(6, 16, generator=g), torch.randn(6, 32, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = rkd_loss(emb_s, emb_t)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, rkd_loss(emb_s, emb_t), rtol=1e-6)
