"""A-SKD: the attention-similarity term against hand computations, and the distiller's map choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kd.a_skd import AttentionSimilarityKD, attention_similarity_loss, interleave_pairs
from kd.base import Probe, Step
from models.features import Features
from utility.config import load_config
from utility.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "face"


def _one_minus_cos_by_hand(student: np.ndarray, teacher: np.ndarray) -> float:
    """Loop over samples: 1 - <a, b> / max(|a||b|, 1e-8), averaged over the batch."""
    values = []
    for b in range(student.shape[0]):
        a = student[b].ravel().astype(np.float64)
        t = teacher[b].ravel().astype(np.float64)
        dot = sum(x * y for x, y in zip(a, t))
        norms = max(np.sqrt(sum(x * x for x in a)) * np.sqrt(sum(y * y for y in t)), 1e-8)
        values.append(1.0 - dot / norms)
    return sum(values) / len(values)


def _random_maps(generator: torch.Generator, batch: int = 3) -> list[torch.Tensor]:
    shapes = [(batch, 4, 1, 1), (batch, 1, 5, 5), (batch, 8, 1, 1), (batch, 1, 3, 3)]
    return [torch.randn(shape, generator=generator) for shape in shapes]


def test_sum_and_mean_match_hand_computation():
    generator = torch.Generator().manual_seed(0)
    att_s, att_t = _random_maps(generator), _random_maps(generator)
    per_map = [_one_minus_cos_by_hand(s.numpy(), t.numpy()) for s, t in zip(att_s, att_t)]
    total = attention_similarity_loss(att_s, att_t, reduction="sum")
    mean = attention_similarity_loss(att_s, att_t, reduction="mean")
    assert total.item() == pytest.approx(sum(per_map), rel=1e-6)
    assert mean.item() == pytest.approx(sum(per_map) / 4, rel=1e-6)
    assert attention_similarity_loss(att_s, att_t).item() == pytest.approx(total.item())  # default: sum


def test_channel_map_shapes_are_equivalent_and_identical_maps_give_zero():
    generator = torch.Generator().manual_seed(1)
    gate_s, gate_t = torch.rand(4, 16, generator=generator), torch.rand(4, 16, generator=generator)
    as_4d = attention_similarity_loss([gate_s.view(4, 16, 1, 1)], [gate_t.view(4, 16, 1, 1)])
    as_2d = attention_similarity_loss([gate_s], [gate_t])
    assert as_4d.item() == pytest.approx(as_2d.item(), rel=1e-6)
    assert attention_similarity_loss([gate_s], [gate_s.clone()]).item() == pytest.approx(0.0, abs=1e-6)
    # opposite maps: cos = -1 per sample -> 2 per map
    assert attention_similarity_loss([gate_s], [-gate_s]).item() == pytest.approx(2.0, abs=1e-6)


def test_zero_map_uses_the_eps_floor():
    zeros = torch.zeros(2, 3, 1, 1)
    other = torch.randn(2, 3, 1, 1)
    assert attention_similarity_loss([zeros], [other]).item() == pytest.approx(1.0)


def test_teacher_maps_get_no_gradient():
    generator = torch.Generator().manual_seed(2)
    att_s = [m.requires_grad_() for m in _random_maps(generator)]
    att_t = [m.requires_grad_() for m in _random_maps(generator)]
    attention_similarity_loss(att_s, att_t).backward()
    assert all(m.grad is not None and torch.isfinite(m.grad).all() for m in att_s)
    assert all(m.grad is None for m in att_t)


def test_mismatched_lists_and_bad_reduction_are_rejected():
    maps = [torch.randn(2, 3)]
    with pytest.raises(ValueError):
        attention_similarity_loss(maps, maps * 2)
    with pytest.raises(ValueError):
        attention_similarity_loss(maps, maps, reduction="max")


def test_interleave_order_is_channel_then_spatial_per_block():
    a0, s0, a1, s1 = (torch.full((1, 1), float(v)) for v in range(4))
    assert [t.item() for t in interleave_pairs([(a0, s0), (a1, s1)])] == [0.0, 1.0, 2.0, 3.0]


def _features(generator: torch.Generator, blocks: int = 2) -> Features:
    """Fake CBAM features: logits and gates = sigmoid(logits), as a CBAM block returns them."""
    logits = [(torch.randn(3, 4, 1, 1, generator=generator), torch.randn(3, 1, 4, 4, generator=generator))
              for _ in range(blocks)]
    gates = [(torch.sigmoid(c), torch.sigmoid(s)) for c, s in logits]
    return Features(out=torch.randn(3, 8, generator=generator), attention=gates, attention_logits=logits)


@pytest.mark.parametrize("config, field, reduction, weight", [
    ("a_skd/student_14.yaml", "attention_logits", "sum", 5.0),  # official: pre-sigmoid, sum, 5
    ("f_skd/baselines/a_skd_cosface.yaml", "attention", "mean", 80.0),  # F-SKD: gates, mean, 80
])
def test_distiller_reads_the_configured_maps(config, field, reduction, weight):
    cfg = load_config(f"{CONFIGS}/{config}")
    generator = torch.Generator().manual_seed(3)
    student, teacher = _features(generator), _features(generator)
    distiller = AttentionSimilarityKD.companion(cfg, Probe(student=student, teacher=teacher, num_classes=5))
    step = Step(batch={"label": torch.zeros(3, dtype=torch.long)}, student=student, logits_s=student.out,
                teacher=teacher)
    value = distiller.distill_losses(step)["a_skd"].item()
    per_map = [_one_minus_cos_by_hand(s.numpy(), t.numpy())
               for s_pair, t_pair in zip(getattr(student, field), getattr(teacher, field))
               for s, t in zip(s_pair, t_pair)]
    expected = sum(per_map) if reduction == "sum" else sum(per_map) / len(per_map)
    assert value == pytest.approx(weight * expected, rel=1e-5)


def test_distiller_refuses_networks_without_attention():
    cfg = load_config(f"{CONFIGS}/a_skd/student_14.yaml")
    plain = Features(out=torch.zeros(2, 8))
    with pytest.raises(ConfigError, match="ATTENTION"):
        AttentionSimilarityKD.companion(cfg, Probe(student=plain, teacher=_features(torch.Generator()),
                                                   num_classes=5))
