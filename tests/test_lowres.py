"""Low-resolution degradation checked against hand-computed small cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.lowres import (
    degrade,
    degrade_opencv,
    degrade_per_sample,
    draw_modes,
    draw_sizes,
    gaussian_blur,
    gaussian_kernel1d,
    random_degrade_opencv,
)
from utility.errors import ConfigError


def test_nearest_picks_floor_indices_4x4() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # down 4 -> 2 keeps rows/cols floor(i * 4 / 2) = 0, 2; up 2 -> 4 repeats floor(i * 2 / 4) = 0, 0, 1, 1
    expected = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [8, 8, 10, 10], [8, 8, 10, 10]])
    assert torch.equal(degrade(x, 2, out_size=4)[0, 0], expected)


def test_nearest_non_integer_factor_is_not_nearest_exact() -> None:
    x = torch.arange(25.0).view(1, 1, 5, 5)
    # 5 -> 3: floor(i * 5 / 3) = 0, 1, 3 (nearest-exact would take 0, 2, 4); 3 -> 5: floor(i * 3 / 5) = 0, 0, 1, 1, 2
    picks = [0, 0, 1, 1, 3]
    expected = x[0, 0][picks][:, picks]
    assert torch.equal(degrade(x, 3, out_size=5)[0, 0], expected)


def test_bilinear_without_antialias_and_area() -> None:
    row = torch.tensor([0.0, 10, 20, 70, 30, 50, 90, 10])
    x = row.view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()
    from data.lowres import resize

    # 8 -> 2, align_corners=False, no antialias: samples at 1.5 and 5.5 = means of (x1, x2) and (x5, x6)
    assert torch.allclose(resize(x, 2, "bilinear")[0, 0, 0], torch.tensor([15.0, 70.0]))
    # area: box means over 4
    assert torch.allclose(resize(x, 2, "area")[0, 0, 0], torch.tensor([25.0, 45.0]))


def test_full_resolution_is_unchanged() -> None:
    x = torch.rand(2, 3, 112, 112)
    assert degrade(x, 112) is x
    assert degrade(x, 150, blur_sigma=(0.1, 2.0)) is x


def test_gaussian_kernel_matches_spec_values() -> None:
    expected = torch.tensor([0.152469, 0.221841, 0.251379, 0.221841, 0.152469])
    assert torch.allclose(gaussian_kernel1d(2.0), expected, atol=1e-6)
    # independent formula: exp(-x^2 / (2 s^2)) over x = -2..2, normalised
    xs = np.arange(-2, 3, dtype=np.float64)
    for sigma in (0.1, 0.7, 3.0):
        reference = np.exp(-(xs**2) / (2 * sigma**2))
        assert np.allclose(gaussian_kernel1d(sigma).numpy(), reference / reference.sum(), atol=1e-7)


def _blur_reference(image: np.ndarray, sigma_x: float, sigma_y: float) -> np.ndarray:
    """Independent 5 x 5 correlation with reflect padding, one channel."""
    xs = np.arange(-2, 3, dtype=np.float64)
    kx = np.exp(-(xs**2) / (2 * sigma_x**2))
    ky = np.exp(-(xs**2) / (2 * sigma_y**2))
    kernel = np.outer(ky / ky.sum(), kx / kx.sum())
    padded = np.pad(image, 2, mode="reflect")
    out = np.zeros_like(image, dtype=np.float64)
    for dy in range(5):
        for dx in range(5):
            out += kernel[dy, dx] * padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return out


def test_blur_is_vertical_only_for_a_skd_sigmas() -> None:
    k = [0.152469, 0.221841, 0.251379, 0.221841, 0.152469]
    # varying along W only: sigma_x 0.1 is an identity along W and the vertical blur sees constant columns
    cols = torch.tensor([0.0, 50, 10, 200, 30, 90, 5]).view(1, 1, 1, 7).expand(1, 2, 9, 7).contiguous()
    assert torch.allclose(gaussian_blur(cols, (0.1, 2.0)), cols, atol=1e-4)
    # an impulse in row 1 (reflect padding mirrors it into row -1)
    impulse = torch.zeros(1, 1, 9, 3)
    impulse[0, 0, 1, :] = 1.0
    out = gaussian_blur(impulse, (0.1, 2.0))[0, 0, :, 1]
    assert out[0].item() == pytest.approx(k[1] + k[3], abs=1e-5)  # rows -1 and 1 both hold the impulse
    assert out[1].item() == pytest.approx(k[0] + k[2], abs=1e-5)  # taps rows -1 (=1) and 1
    assert out[2].item() == pytest.approx(k[1], abs=1e-5)
    assert out[3].item() == pytest.approx(k[0], abs=1e-5)
    assert out[4].item() == pytest.approx(0.0, abs=1e-6)


def test_blur_matches_independent_reference_per_channel() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 10, 12, generator=generator) * 255
    out = gaussian_blur(images, (0.8, 1.5))
    for n in range(2):
        for c in range(3):
            reference = _blur_reference(images[n, c].double().numpy(), 0.8, 1.5)
            assert np.allclose(out[n, c].numpy(), reference, atol=1e-3)


def test_degrade_blurs_after_upsampling() -> None:
    x = torch.rand(1, 1, 8, 8) * 255
    nearest = degrade(x, 4, out_size=8)
    blurred = degrade(x, 4, out_size=8, blur_sigma=(0.1, 2.0))
    reference = _blur_reference(nearest[0, 0].double().numpy(), 0.1, 2.0)
    assert np.allclose(blurred[0, 0].numpy(), reference, atol=1e-3)


def test_per_sample_equals_per_size_degrade() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(7, 3, 32, 32, generator=generator) * 255
    sizes = torch.tensor([8, 16, 8, 32, 4, 16, 8])
    downs = ["nearest", "bilinear", "area", "nearest", "bicubic", "bilinear", "nearest"]
    out = degrade_per_sample(images, sizes, 32, down=downs, up="bilinear", blur_sigma=(0.5, 1.0))
    for n in range(7):
        single = degrade(images[n : n + 1], int(sizes[n]), 32, downs[n], "bilinear", (0.5, 1.0))
        assert torch.allclose(out[n : n + 1], single, atol=1e-4)
    assert torch.equal(out[3], images[3])  # size 32 = full resolution


def test_random_modes_come_from_the_generator() -> None:
    images = torch.rand(16, 1, 16, 16) * 255
    sizes = torch.full((16,), 4)
    a = degrade_per_sample(images, sizes, 16, "random", "random", generator=torch.Generator().manual_seed(3))
    b = degrade_per_sample(images, sizes, 16, "random", "random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    modes = draw_modes(16, "random", ("nearest", "area"), torch.Generator().manual_seed(3))
    assert set(modes) == {"nearest", "area"}
    assert draw_modes(3, "bicubic") == ["bicubic"] * 3


def test_draw_sizes() -> None:
    generator = torch.Generator().manual_seed(0)
    assert draw_sizes(50, [14, 28], hr_prob=1.0, generator=generator).tolist() == [112] * 50
    drawn = draw_sizes(4000, [14, 28, 56], hr_prob=0.5, generator=torch.Generator().manual_seed(1))
    counts = {size: int((drawn == size).sum()) for size in (14, 28, 56, 112)}
    assert sum(counts.values()) == 4000
    assert abs(counts[112] - 2000) < 150 and all(abs(counts[s] - 667) < 100 for s in (14, 28, 56))
    again = draw_sizes(4000, [14, 28, 56], hr_prob=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(drawn, again)
    assert draw_sizes(3, []).tolist() == [112, 112, 112]


def test_opencv_nearest_equals_integer_subsampling() -> None:
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = degrade_opencv(image, 28, 112, "nearest", "nearest")
    expected = np.repeat(np.repeat(image[::4, ::4], 4, axis=0), 4, axis=1)
    assert np.array_equal(out, expected)
    # and torch's nearest agrees for the integer factor
    torch_out = degrade(torch.from_numpy(image).permute(2, 0, 1)[None].float(), 28)
    assert np.array_equal(torch_out[0].permute(1, 2, 0).numpy().astype(np.uint8), expected)


def test_random_opencv_view_is_reproducible() -> None:
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    a, size_a = random_degrade_opencv(image, np.random.default_rng(5), [14, 28, 56])
    b, size_b = random_degrade_opencv(image, np.random.default_rng(5), [14, 28, 56])
    assert size_a == size_b and size_a in (14, 28, 56) and np.array_equal(a, b)
    assert a.shape == image.shape and not np.array_equal(a, image)
    same, size = random_degrade_opencv(image, np.random.default_rng(5), [14], hr_prob=1.0)
    assert size == 112 and same is image


def test_unknown_interpolation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="lanczos"):
        degrade(torch.rand(1, 1, 8, 8), 4, 8, down="lanczos")
