"""Margin and linear heads against hand-computed logits on 2-d embeddings at known angles.

Class centres are the axes (class 0 along x, class 1 along y, deliberately not unit length), so an
embedding at angle phi has cos(theta_0) = cos(phi) and cos(theta_1) = sin(phi).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch

from models import HEADS, head_kwargs
from models.face.published import head_from_published
from utility.errors import ConfigError


def axis_head(name: str, **kwargs):
    head = HEADS.build(name, 2, 2, **kwargs)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))
    return head


def at_angles(angles, norms=None):
    norms = norms or [1.0] * len(angles)
    return torch.tensor([[r * math.cos(a), r * math.sin(a)] for a, r in zip(angles, norms)], dtype=torch.float64).float()


def test_arcface_margin_fallback_and_inference():
    s, m = 32.0, 0.5
    head = axis_head("arcface", s=s, m=m)
    # 2.5 is below pi - m = 2.64 (normal branch); 2.9 is beyond it (fallback).
    angles = [0.6, 2.5, 2.9]
    logits = head(at_angles(angles, [3.0, 1.0, 7.0]), torch.tensor([0, 0, 0]))
    expected = torch.tensor([
        [s * math.cos(0.6 + m), s * math.sin(0.6)],
        [s * math.cos(2.5 + m), s * math.sin(2.5)],
        [s * (math.cos(2.9) - m * math.sin(math.pi - m)), s * math.sin(2.9)],
    ])
    assert torch.allclose(logits, expected, atol=1e-4)
    # Label 1: the margin moves to the other column.
    logits = head(at_angles([0.6]), torch.tensor([1]))
    assert torch.allclose(logits, torch.tensor([[s * math.cos(0.6), s * math.cos(math.pi / 2 - 0.6 + m)]]), atol=1e-4)
    # No labels: plain scaled cosine.
    assert torch.allclose(head(at_angles([0.6])), torch.tensor([[s * math.cos(0.6), s * math.sin(0.6)]]), atol=1e-4)


def test_arcface_easy_margin():
    s, m = 10.0, 0.3
    head = axis_head("arcface", s=s, m=m, easy_margin=True)
    logits = head(at_angles([0.6, 2.0]), torch.tensor([0, 0]))
    assert torch.allclose(logits[:, 0], torch.tensor([s * math.cos(0.9), s * math.cos(2.0)]), atol=1e-4)


def test_arcface_gradient_flows_through_the_margin():
    """d(s cos(phi + m))/d(phi) = -s sin(phi + m); along the tangent of a radius-r embedding the
    gradient is that over r."""
    s, m, phi, r = 32.0, 0.5, 0.6, 2.0
    head = axis_head("arcface", s=s, m=m)
    embedding = at_angles([phi], [r]).requires_grad_(True)
    head(embedding, torch.tensor([0]))[0, 0].backward()
    tangent = torch.tensor([-math.sin(phi), math.cos(phi)])
    assert torch.allclose(embedding.grad[0] @ tangent, torch.tensor(-s * math.sin(phi + m) / r), atol=1e-3)
    radial = torch.tensor([math.cos(phi), math.sin(phi)])
    assert abs((embedding.grad[0] @ radial).item()) < 1e-4  # the scale of the embedding does not matter


def test_cosface():
    s, m = 30.0, 0.35
    head = axis_head("cosface", s=s, m=m)
    logits = head(at_angles([0.6, 1.2], [4.0, 0.2]), torch.tensor([0, 1]))
    expected = torch.tensor([[s * (math.cos(0.6) - m), s * math.sin(0.6)],
                             [s * math.cos(1.2), s * (math.sin(1.2) - m)]])
    assert torch.allclose(logits, expected, atol=1e-4)
    assert torch.allclose(head(at_angles([0.6])), torch.tensor([[s * math.cos(0.6), s * math.sin(0.6)]]), atol=1e-4)


def adaface_target(theta, norm_z, s, m):
    return s * (math.cos(min(max(theta - m * norm_z, 1e-3), math.pi - 1e-3)) - (m + m * norm_z))


def test_adaface_with_batch_statistics():
    s, m, h = 32.0, 0.4, 0.333
    head = axis_head("adaface", s=s, m=m, h=h, t_alpha=1.0)
    norms = [10.0, 30.0]
    logits = head(at_angles([0.5, 1.0], norms), torch.tensor([0, 1]))
    mean, std = 20.0, math.sqrt(((10 - 20) ** 2 + (30 - 20) ** 2) / 1)  # unbiased std
    z = [max(-1.0, min(1.0, h * (n - mean) / (std + 1e-3))) for n in norms]
    expected = torch.tensor([
        [adaface_target(0.5, z[0], s, m), s * math.sin(0.5)],
        [s * math.cos(1.0), adaface_target(math.pi / 2 - 1.0, z[1], s, m)],
    ])
    assert torch.allclose(logits, expected, atol=1e-3)
    assert torch.allclose(head.batch_mean, torch.tensor([mean])) and torch.allclose(head.batch_std, torch.tensor([std]))


def test_adaface_statistics_momentum_and_clamp():
    head = axis_head("adaface", t_alpha=0.5)
    head(at_angles([0.5, 1.0], [10.0, 50.0]), torch.tensor([0, 1]))
    assert torch.allclose(head.batch_mean, torch.tensor([0.5 * 30 + 0.5 * 20]))
    assert torch.allclose(head.batch_std, torch.tensor([0.5 * math.sqrt(800) + 0.5 * 100]))
    # A cosine of exactly 1 is clamped to 1 - 1e-3; no labels means no margin and no statistics update.
    before = head.batch_mean.clone()
    assert torch.allclose(head(at_angles([0.0]))[0, 0], torch.tensor(32 * 0.999))
    assert torch.equal(head.batch_mean, before)
    assert set(dict(head.named_buffers())) == {"t", "batch_mean", "batch_std"}


def test_magface_margin_grows_with_the_norm():
    s = 32.0
    head = axis_head("magface", s=s)
    # norms 5 -> a = 10 (m 0.45), 60 -> m 0.625, 200 -> a = 110 (m 0.8)
    margins = [0.45, 0.45 + 0.35 * 50 / 100, 0.8]
    logits = head(at_angles([0.3, 0.3, 0.3], [5.0, 60.0, 200.0]), torch.tensor([0, 0, 0]))
    assert torch.allclose(logits[:, 0], torch.tensor([s * math.cos(0.3 + mg) for mg in margins]), atol=1e-4)
    assert torch.allclose(logits[:, 1], torch.full((3,), s * math.sin(0.3)), atol=1e-4)
    # Beyond pi - m(a): cos - m sin(pi - m)
    fallback = head(at_angles([2.8], [200.0]), torch.tensor([0]))[0, 0]
    assert torch.allclose(fallback, torch.tensor(s * (math.cos(2.8) - 0.8 * math.sin(math.pi - 0.8))), atol=1e-4)
    # Regulariser: 20 * mean(a / 110^2 + 1 / a) over the clamped magnitudes.
    a = [10.0, 60.0, 110.0]
    g = sum(x / 110**2 + 1 / x for x in a) / 3
    assert torch.allclose(head.regularizer(at_angles([0.3] * 3, [5.0, 60.0, 200.0])), torch.tensor(20 * g), atol=1e-6)


def test_linear_head():
    head = HEADS.build("linear", 3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 0.5]]))
        head.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    expected = torch.tensor([[1 + 6 + 0.5, -2 + 1.5 - 0.5]])
    assert torch.allclose(head(x, torch.tensor([1])), expected) and torch.allclose(head(x), expected)


@pytest.mark.parametrize("name", ["arcface", "cosface", "adaface", "magface", "linear"])
def test_heads_build_from_config_keywords(name):
    node = SimpleNamespace(HEAD=name, HEAD_S=16.0, HEAD_M=0.3, HEAD_EASY_MARGIN=False, HEAD_H=0.333, HEAD_T_ALPHA=1.0)
    head = HEADS.build(name, 8, 5, **head_kwargs(node))
    assert head.weight.shape == (5, 8)
    logits = head(torch.randn(4, 8), torch.tensor([0, 1, 2, 4]))
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    if name != "linear":
        assert head.s == 16.0


def test_adaface_and_magface_init_is_the_published_kernel_transposed():
    for name in ("adaface", "magface"):
        torch.manual_seed(3)
        head = HEADS.build(name, 6, 4)
        torch.manual_seed(3)
        kernel = torch.empty(6, 4).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
        assert torch.allclose(head.weight, kernel.t())
        assert torch.allclose(head.weight.norm(dim=1), torch.ones(4), atol=1e-5)
    arcface = HEADS.build("arcface", 6, 4)
    assert arcface.weight.abs().max() <= math.sqrt(6 / (6 + 4))  # xavier uniform


def test_head_from_published():
    kernel = torch.arange(12.0).reshape(4, 3)  # (in_features, num_classes)
    published = OrderedDict([("module.kernel", kernel), ("module.t", torch.zeros(1)),
                             ("module.batch_mean", torch.full((1,), 21.0)), ("module.batch_std", torch.full((1,), 9.0))])
    converted = head_from_published(published, "adaface")
    head = HEADS.build("adaface", 4, 3)
    head.load_state_dict(converted, strict=True)
    assert torch.equal(head.weight, kernel.t()) and head.batch_mean.item() == 21.0

    magface = HEADS.build("magface", 4, 3)
    magface.load_state_dict(head_from_published({"weight": kernel}, "magface"), strict=True)
    assert torch.equal(magface.weight, kernel.t())

    arcface = HEADS.build("arcface", 4, 3)
    arcface.load_state_dict(head_from_published({"weight": kernel.t()}, "arcface"), strict=True)  # already (C, in)
    assert torch.equal(arcface.weight, kernel.t())
    arcface.load_state_dict(head_from_published({"kernel": kernel}, "arcface"), strict=True)  # AdaDistill header
    assert torch.equal(arcface.weight, kernel.t())
    with pytest.raises(ConfigError, match="sphereface"):
        head_from_published({"weight": kernel}, "sphereface")
