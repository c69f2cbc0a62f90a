"""at_loss against explicit per-sample, per-position computations (NumPy loops)."""

import numpy as np
import pytest
import torch

from kd.at import at_loss, select_stage_pairs
from utility.errors import ConfigError


def _attention_numpy(feat: np.ndarray, p: int) -> np.ndarray:
    """Per sample: for every position the channel mean of |F|^p, then divided by the vector's L2 norm."""
    batch, channels, height, width = feat.shape
    out = np.zeros((batch, height * width))
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                out[b, y * width + x] = sum(feat[b, c, y, x] ** p for c in range(channels)) / channels
        out[b] /= np.sqrt(np.sum(out[b] ** 2))
    return out


def _block_average(feat: np.ndarray, factor: int) -> np.ndarray:
    batch, channels, height, width = feat.shape
    out = np.zeros((batch, channels, height // factor, width // factor))
    for y in range(height // factor):
        for x in range(width // factor):
            block = feat[:, :, y * factor:(y + 1) * factor, x * factor:(x + 1) * factor]
            out[:, :, y, x] = block.mean(axis=(2, 3))
    return out


def test_at_loss_equal_sizes_matches_hand_computation():
    rng = np.random.default_rng(0)
    feat_s = rng.normal(size=(2, 3, 4, 4))
    feat_t = rng.normal(size=(2, 5, 4, 4))  # channel counts may differ
    diff = _attention_numpy(feat_s, 2) - _attention_numpy(feat_t, 2)
    expected = np.sum(diff ** 2) / (2 * 16)  # mean over B * HW
    got = at_loss(torch.tensor(feat_s, dtype=torch.float32), torch.tensor(feat_t, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_at_loss_pools_the_larger_map_either_way():
    rng = np.random.default_rng(1)
    big = rng.normal(size=(2, 3, 8, 8))
    small = rng.normal(size=(2, 4, 4, 4))
    pooled = _block_average(big, 2)
    expected = np.mean((_attention_numpy(pooled, 2) - _attention_numpy(small, 2)) ** 2)
    as_student = at_loss(torch.tensor(big, dtype=torch.float32), torch.tensor(small, dtype=torch.float32))
    as_teacher = at_loss(torch.tensor(small, dtype=torch.float32), torch.tensor(big, dtype=torch.float32))
    assert as_student.item() == pytest.approx(expected, rel=1e-5)
    assert as_teacher.item() == pytest.approx(expected, rel=1e-5)


def test_at_loss_power_and_gradient_only_to_student():
    rng = np.random.default_rng(2)
    feat_s = torch.tensor(rng.normal(size=(1, 2, 2, 2)), dtype=torch.float32, requires_grad=True)
    feat_t = torch.tensor(rng.normal(size=(1, 2, 2, 2)), dtype=torch.float32, requires_grad=True)
    expected = np.mean((_attention_numpy(feat_s.detach().numpy(), 4)
                        - _attention_numpy(feat_t.detach().numpy(), 4)) ** 2)
    loss = at_loss(feat_s, feat_t, p=4)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert feat_s.grad is not None and feat_s.grad.abs().sum() > 0
    assert feat_t.grad is None


def test_stage_selection():
    assert select_stage_pairs([], 3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert select_stage_pairs([], 4, 3) == [(0, 0), (1, 1), (2, 2)]  # RepDistiller's zip
    assert select_stage_pairs([-1], 4, 3) == [(3, 2)]
    with pytest.raises(ConfigError, match="DISTILL.AT.STAGES"):
        select_stage_pairs([3], 4, 3)
