"""DCT-driven attention loss against explicit NumPy computations (cosine sums, loops, numpy.fft)."""

import math

import numpy as np
import pytest
import torch

from kd.dct import attention_spectrum, dct_attention_loss


def _minmax(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())


def _activation(feat: np.ndarray) -> np.ndarray:
    """One sample C x H x W -> min-max normalised, zero-mean H x W map."""
    am = _minmax((feat ** 2).mean(axis=0))
    return am - am.mean()


def _dft_real_by_cosines(am: np.ndarray) -> np.ndarray:
    """D[u,v] = sum_y sum_x A[y,x] cos(2 pi (u y / H + v x / W))."""
    height, width = am.shape
    out = np.zeros_like(am)
    for u in range(height):
        for v in range(width):
            out[u, v] = sum(am[y, x] * math.cos(2 * math.pi * (u * y / height + v * x / width))
                            for y in range(height) for x in range(width))
    return out


def _dct2_by_formula(am: np.ndarray) -> np.ndarray:
    """D[u,v] = sum_y sum_x A[y,x] cos(pi (2y+1) u / 2H) cos(pi (2x+1) v / 2W)."""
    height, width = am.shape
    out = np.zeros_like(am)
    for u in range(height):
        for v in range(width):
            out[u, v] = sum(am[y, x] * math.cos(math.pi * (2 * y + 1) * u / (2 * height))
                            * math.cos(math.pi * (2 * x + 1) * v / (2 * width))
                            for y in range(height) for x in range(width))
    return out


def _loss_numpy(feats_s, feats_t, mask=None, transform=_dft_real_by_cosines):
    batch = feats_s[0].shape[0]
    per_sample = np.zeros(batch)
    for f_s, f_t in zip(feats_s, feats_t):
        for b in range(batch):
            d_s = _minmax(transform(_activation(f_s[b])))
            d_t = _minmax(transform(_activation(f_t[b])))
            per_sample[b] += math.sqrt(np.sum((d_s - d_t) ** 2))
    if mask is not None:
        per_sample *= mask
    return per_sample.sum() / batch  # always the full batch


def _feats(rng, shapes):
    return [rng.normal(size=shape) for shape in shapes]


def _t(arrays):
    return [torch.tensor(a, dtype=torch.float32) for a in arrays]


def test_dft_real_is_real_part_of_numpy_fft2():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(2, 3, 4, 6))
    got = attention_spectrum(torch.tensor(feat, dtype=torch.float32)).numpy()
    for b in range(2):
        expected = _minmax(np.real(np.fft.fft2(_activation(feat[b]))))
        np.testing.assert_allclose(got[b], expected, rtol=1e-4, atol=1e-5)
        # and the same thing written as an explicit cosine sum
        np.testing.assert_allclose(got[b], _minmax(_dft_real_by_cosines(_activation(feat[b]))),
                                   rtol=1e-4, atol=1e-5)


def test_loss_over_scales_matches_hand_computation():
    rng = np.random.default_rng(1)
    feats_s = _feats(rng, [(3, 2, 4, 4), (3, 5, 2, 2)])
    feats_t = _feats(rng, [(3, 6, 4, 4), (3, 3, 2, 2)])  # channels differ, sizes match
    got = dct_attention_loss(_t(feats_s), _t(feats_t))
    assert got.item() == pytest.approx(_loss_numpy(feats_s, feats_t), rel=1e-4)


def test_teacher_correct_mask_zeroes_samples_but_divides_by_full_batch():
    rng = np.random.default_rng(2)
    feats_s = _feats(rng, [(4, 2, 4, 4)])
    feats_t = _feats(rng, [(4, 2, 4, 4)])
    mask = np.array([1.0, 0.0, 1.0, 0.0])
    got = dct_attention_loss(_t(feats_s), _t(feats_t), torch.tensor(mask))
    assert got.item() == pytest.approx(_loss_numpy(feats_s, feats_t, mask), rel=1e-4)
    # only samples 0 and 2 count, yet the mean divides by 4
    full = dct_attention_loss(_t(feats_s), _t(feats_t))
    assert got.item() < full.item()
    per_sample_02 = [dct_attention_loss([_t(feats_s)[0][i:i + 1]], [_t(feats_t)[0][i:i + 1]]).item() for i in (0, 2)]
    assert got.item() == pytest.approx(sum(per_sample_02) / 4, rel=1e-5)


def test_dct2_matches_explicit_formula():
    rng = np.random.default_rng(3)
    feats_s = _feats(rng, [(2, 3, 4, 3)])  # non-square on purpose
    feats_t = _feats(rng, [(2, 2, 4, 3)])
    got = dct_attention_loss(_t(feats_s), _t(feats_t), transform="dct2")
    assert got.item() == pytest.approx(_loss_numpy(feats_s, feats_t, transform=_dct2_by_formula), rel=1e-4)
    # and it is a different transform from the default
    assert abs(got.item() - dct_attention_loss(_t(feats_s), _t(feats_t)).item()) > 1e-3


def test_gradient_reaches_student_only_and_constant_map_gives_nan_without_eps():
    rng = np.random.default_rng(4)
    f_s = torch.tensor(rng.normal(size=(2, 3, 4, 4)), dtype=torch.float32, requires_grad=True)
    f_t = torch.tensor(rng.normal(size=(2, 3, 4, 4)), dtype=torch.float32, requires_grad=True)
    dct_attention_loss([f_s], [f_t]).backward()
    assert f_s.grad is not None and torch.isfinite(f_s.grad).all() and f_s.grad.abs().sum() > 0
    assert f_t.grad is None
    constant = torch.ones(1, 2, 4, 4)
    assert torch.isnan(dct_attention_loss([constant], [torch.randn(1, 2, 4, 4)]))
    assert torch.isfinite(dct_attention_loss([constant], [torch.randn(1, 2, 4, 4)], eps=1e-8))


def test_mismatched_sizes_are_rejected():
    with pytest.raises(ValueError, match="differ"):
        dct_attention_loss([torch.randn(1, 2, 4, 4)], [torch.randn(1, 2, 2, 2)])


def test_align_pools_the_larger_map_first():
    rng = np.random.default_rng(5)
    big = rng.normal(size=(2, 3, 8, 8))
    small_t = rng.normal(size=(2, 4, 4, 4))
    pooled = big.reshape(2, 3, 4, 2, 4, 2).mean(axis=(3, 5))  # 2 x 2 block means
    got = dct_attention_loss(_t([big]), _t([small_t]), align=True)
    assert got.item() == pytest.approx(_loss_numpy([pooled], [small_t]), rel=1e-4)
    with pytest.raises(ValueError, match="differ"):
        dct_attention_loss(_t([big]), _t([small_t]))
