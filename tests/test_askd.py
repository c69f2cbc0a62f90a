"""ASKD loss against explicit loops: regional and class similarity, pdist clamping, per-call r clamp."""

import math

import numpy as np
import pytest
import torch

from kd.askd import askd_loss, pairwise_scalar_distances


def _smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.mean(np.where(d < 1, 0.5 * d ** 2, d - 0.5)))


def _relation_numpy(values: np.ndarray) -> np.ndarray:
    """values (..., M): |v_i - v_j| with the 1e-6 floor off the diagonal, divided by the mean positive entry."""
    m = values.shape[-1]
    dist = np.zeros(values.shape + (m,))
    for index in np.ndindex(values.shape[:-1]):
        for i in range(m):
            for j in range(m):
                if i != j:
                    dist[index + (i, j)] = max(abs(values[index + (i,)] - values[index + (j,)]), 1e-6)
    return dist / dist[dist > 0].mean()


def _regions(feat: np.ndarray, r: int) -> np.ndarray:
    n, c, h, _ = feat.shape
    k = h // r
    cells = h // k
    out = np.zeros((n, c, cells * cells))
    for y in range(cells):
        for x in range(cells):
            out[:, :, y * cells + x] = feat[:, :, y * k:(y + 1) * k, x * k:(x + 1) * k].mean(axis=(2, 3))
    return out


def _askd_numpy(feat_s, feat_t, logits_s, logits_t, r, w_rs=5.0, w_cs=14.0):
    rs = _smooth_l1(_relation_numpy(_regions(feat_s, r)), _relation_numpy(_regions(feat_t, r)))
    cs = _smooth_l1(_relation_numpy(logits_s), _relation_numpy(logits_t))
    return w_rs * rs + w_cs * cs


def _t(a):
    return torch.tensor(a, dtype=torch.float64)


def test_askd_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    feat_s, feat_t = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 8, 8))
    logits_s, logits_t = rng.normal(size=(2, 5)) * 3, rng.normal(size=(2, 5)) * 3
    got = askd_loss(_t(feat_s), _t(feat_t), _t(logits_s), _t(logits_t), r=2)
    assert got.item() == pytest.approx(_askd_numpy(feat_s, feat_t, logits_s, logits_t, 2), rel=1e-6)


def test_region_kernel_drops_trailing_rows_when_r_does_not_divide():
    rng = np.random.default_rng(1)
    feat_s, feat_t = rng.normal(size=(2, 2, 7, 7)), rng.normal(size=(2, 2, 7, 7))
    logits = rng.normal(size=(2, 4))
    got = askd_loss(_t(feat_s), _t(feat_t), _t(logits), _t(logits), r=2, w_cs=0.0)
    # kernel 7 // 2 = 3, stride 3: a 2 x 2 grid over rows/cols 0..5
    assert got.item() == pytest.approx(5.0 * _smooth_l1(_relation_numpy(_regions(feat_s, 2)),
                                                        _relation_numpy(_regions(feat_t, 2))), rel=1e-6)


def test_r_is_clamped_to_the_smaller_map_per_call():
    rng = np.random.default_rng(2)
    feat_s, feat_t = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 4, 4))
    logits_s, logits_t = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    args = (_t(feat_s), _t(feat_t), _t(logits_s), _t(logits_t))
    clamped = askd_loss(*args, r=8)
    assert clamped.item() == pytest.approx(askd_loss(*args, r=2).item(), rel=1e-12)
    assert clamped.item() == pytest.approx(_askd_numpy(feat_s, feat_t, logits_s, logits_t, 2), rel=1e-6)
    # the clamp does not persist: a later call on bigger maps uses the full r again
    big_s, big_t = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(2, 3, 8, 8))
    later = askd_loss(_t(big_s), _t(big_t), _t(logits_s), _t(logits_t), r=4)
    assert later.item() == pytest.approx(_askd_numpy(big_s, big_t, logits_s, logits_t, 4), rel=1e-6)


def test_pdist_clamps_equal_values_to_1e_minus_6_and_counts_them_in_the_mean():
    values = torch.tensor([[1.0, 1.0, 3.0]], dtype=torch.float64)
    dist = pairwise_scalar_distances(values)[0]
    assert dist[0, 0] == 0 and dist[1, 1] == 0
    assert dist[0, 1].item() == pytest.approx(1e-6, rel=1e-6)  # sqrt of the 1e-12 floor
    assert dist[0, 2].item() == pytest.approx(2.0)
    # the floor entries count in the positive mean used for normalisation
    positive = dist[dist > 0]
    assert positive.numel() == 6
    assert positive.mean().item() == pytest.approx((2 * 1e-6 + 4 * 2.0) / 6, rel=1e-9)
    # and the loss agrees with the hand computation that includes them
    logits_s = np.array([[1.0, 1.0, 3.0]])
    logits_t = np.array([[0.0, 2.0, 3.0]])
    feat = np.ones((1, 1, 2, 2))
    got = askd_loss(_t(feat), _t(feat), _t(logits_s), _t(logits_t), w_rs=0.0)
    assert got.item() == pytest.approx(14.0 * _smooth_l1(_relation_numpy(logits_s), _relation_numpy(logits_t)))


def test_gradients_reach_student_inputs_only():
    rng = np.random.default_rng(3)
    feat_s = torch.tensor(rng.normal(size=(2, 3, 4, 4)), requires_grad=True)
    feat_t = torch.tensor(rng.normal(size=(2, 3, 4, 4)), requires_grad=True)
    logits_s = torch.tensor(rng.normal(size=(2, 5)), requires_grad=True)
    logits_t = torch.tensor(rng.normal(size=(2, 5)), requires_grad=True)
    askd_loss(feat_s, feat_t, logits_s, logits_t).backward()
    assert feat_s.grad.abs().sum() > 0 and logits_s.grad.abs().sum() > 0
    assert feat_t.grad is None and logits_t.grad is None
    assert math.isfinite(float(feat_s.grad.sum()))


def test_channel_mismatch_is_rejected():
    with pytest.raises(ValueError, match="connector"):
        askd_loss(torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4), torch.randn(1, 3), torch.randn(1, 3))
