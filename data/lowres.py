"""Low-resolution degradation: down to 14/28/56 px, back up to the network's input, optional blur.

Every face network sees 112 x 112; a low-resolution (LR) view is the HR crop resampled down to a
side `size` and back up (`spec/face.md` §4). The batched torch path (`degrade`,
`degrade_per_sample`) runs on the training device; the OpenCV path (`degrade_opencv`) works on one
uint8 image in a DataLoader worker and is what F-SKD's current code does exactly.

Interpolation choices and why:
- `nearest` is PyTorch's legacy nearest (source index floor(i * in / out)), what A-SKD calls
  through `F.interpolate(mode='nearest')`; not `nearest-exact`. For integer factors it equals
  OpenCV's INTER_NEAREST, which FSKD-v1 uses.
- `bilinear` / `bicubic` use align_corners=False and **no antialias**: the seeds resample with
  OpenCV INTER_LINEAR / INTER_CUBIC, which use the same half-pixel sampling (cubic a = -0.75) and
  do not low-pass before shrinking, so antialias=False is what they effectively compute (up to
  OpenCV's uint8 fixed-point rounding).
- `area` is box averaging (`F.interpolate(mode='area')`), OpenCV INTER_AREA for integer factors.
- Lanczos has no torch kernel; it exists only in the OpenCV path (`lanczos`).
- The blur is A-SKD's: a fixed 5 x 5 Gaussian with (sigma_x, sigma_y), kernel exactly as
  torchvision's functional `gaussian_blur` builds it, reflect padding, per channel, after upsampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from utility.errors import ConfigError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
OPENCV_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}
# F-SKD's pool for its random per-sample interpolation: [NEAREST, LINEAR, AREA, CUBIC, LANCZOS4]
OPENCV_RANDOM_CHOICES = ("nearest", "bilinear", "area", "bicubic", "lanczos")


def _check_mode(mode: str, allowed: Sequence[str]) -> None:
    if mode not in allowed:
        raise ConfigError(f"unknown interpolation {mode!r}; choose one of {list(allowed)}")


def resize(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Square resize of an N x C x H x W float batch with one of `INTERPOLATIONS`."""
    _check_mode(mode, INTERPOLATIONS)
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(images, size=(size, size), mode=mode, align_corners=False, antialias=False)
    return F.interpolate(images, size=(size, size), mode=mode)


def gaussian_kernel1d(sigma: float, kernel_size: int = 5, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """torchvision's 1-D Gaussian: x = linspace(-(k-1)/2, (k-1)/2, k), exp(-x^2 / (2 sigma^2)), normalised."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=dtype, device=device)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


def gaussian_blur(images: torch.Tensor, sigma: Sequence[float], kernel_size: int = 5) -> torch.Tensor:
    """Depthwise Gaussian blur with fixed (sigma_x along W, sigma_y along H) and reflect padding."""
    sigma_x, sigma_y = float(sigma[0]), float(sigma[1])
    kernel_x = gaussian_kernel1d(sigma_x, kernel_size, images.dtype, images.device)
    kernel_y = gaussian_kernel1d(sigma_y, kernel_size, images.dtype, images.device)
    kernel = torch.mm(kernel_y[:, None], kernel_x[None, :])
    channels = images.shape[1]
    weight = kernel.expand(channels, 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    padded = F.pad(images, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(padded, weight, groups=channels)


def degrade(images: torch.Tensor, size: int, out_size: int = 112, down: str = "nearest", up: str = "nearest",
            blur_sigma: Sequence[float] | None = None) -> torch.Tensor:
    """Down to `size`, back up to `out_size`, then the optional blur; N x C x H x W float in and out.

    `size >= out_size` (and `size >=` the input side) means full resolution: returned unchanged.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"degrade expects an N x C x H x W float tensor, got {tuple(images.shape)} {images.dtype}")
    size = int(size)
    if size >= out_size or size >= min(images.shape[-2:]):
        return images if images.shape[-1] == out_size else resize(images, out_size, up)
    low = resize(images, size, down)
    high = resize(low, out_size, up)
    if blur_sigma is not None and len(blur_sigma) > 0:
        high = gaussian_blur(high, blur_sigma)
    return high


def draw_modes(count: int, mode: str, choices: Sequence[str] = INTERPOLATIONS,
               generator: torch.Generator | None = None) -> list[str]:
    """Per-sample interpolation names: `mode` for all, or independent uniform draws when "random"."""
    if mode != "random":
        return [mode] * count
    picks = torch.randint(len(choices), (count,), generator=generator,
                          device=generator.device if generator is not None else "cpu")
    return [choices[int(pick)] for pick in picks.tolist()]


def draw_sizes(count: int, sizes: Sequence[int], hr_prob: float = 0.0, out_size: int = 112,
               generator: torch.Generator | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Per-sample sides: full resolution with probability `hr_prob`, else uniform over `sizes`.

    F-SKD `down_size=1` is sizes [14, 28, 56, 112] with hr_prob 0; its `equal=False` is
    [14, 28, 56] with hr_prob 0.5. Both draws are always made, so the generator advances the same.
    """
    draw_device = generator.device if generator is not None else "cpu"
    if not sizes:
        return torch.full((count,), out_size, dtype=torch.long, device=device)
    keep_hr = torch.rand(count, generator=generator, device=draw_device) < hr_prob
    picks = torch.randint(len(sizes), (count,), generator=generator, device=draw_device)
    table = torch.tensor([int(s) for s in sizes], dtype=torch.long, device=draw_device)
    chosen = torch.where(keep_hr, torch.full_like(picks, out_size), table[picks])
    return chosen.to(device) if device is not None else chosen


def degrade_per_sample(images: torch.Tensor, sizes: torch.Tensor, out_size: int = 112,
                       down: str | Sequence[str] = "nearest", up: str | Sequence[str] = "nearest",
                       blur_sigma: Sequence[float] | None = None, generator: torch.Generator | None = None,
                       random_choices: Sequence[str] = INTERPOLATIONS) -> torch.Tensor:
    """Each sample degraded to its own size (and own modes); samples sharing them run as one batch.

    `down`/`up` are a name for all samples, "random" (drawn per sample from `random_choices` with
    `generator`: all down modes first, then all up modes), or a sequence of names, one per sample.
    """
    count = images.shape[0]
    downs = draw_modes(count, down, random_choices, generator) if isinstance(down, str) else list(down)
    ups = draw_modes(count, up, random_choices, generator) if isinstance(up, str) else list(up)
    if len(downs) != count or len(ups) != count:
        raise ValueError("degrade_per_sample: one down and one up mode per sample")
    size_list = [int(s) for s in sizes.tolist()]
    groups: dict[tuple[int, str, str], list[int]] = {}
    for position, key in enumerate(zip(size_list, downs, ups)):
        groups.setdefault(key, []).append(position)
    if len(groups) == 1:
        (size, down_mode, up_mode), = groups
        return degrade(images, size, out_size, down_mode, up_mode, blur_sigma)
    output = torch.empty(count, images.shape[1], out_size, out_size, dtype=images.dtype, device=images.device)
    for (size, down_mode, up_mode), positions in groups.items():
        index = torch.tensor(positions, device=images.device)
        output[index] = degrade(images[index], size, out_size, down_mode, up_mode, blur_sigma)
    return output


def degrade_opencv(image: np.ndarray, size: int, out_size: int = 112, down: str = "nearest",
                   up: str = "nearest") -> np.ndarray:
    """One uint8 H x W x C image down to `size` and up to `out_size` with OpenCV (F-SKD's way)."""
    _check_mode(down, tuple(OPENCV_INTERPOLATIONS))
    _check_mode(up, tuple(OPENCV_INTERPOLATIONS))
    if size >= out_size or size >= min(image.shape[:2]):
        if image.shape[:2] == (out_size, out_size):
            return image
        return cv2.resize(image, (out_size, out_size), interpolation=OPENCV_INTERPOLATIONS[up])
    low = cv2.resize(image, (size, size), interpolation=OPENCV_INTERPOLATIONS[down])
    return cv2.resize(low, (out_size, out_size), interpolation=OPENCV_INTERPOLATIONS[up])


def random_degrade_opencv(image: np.ndarray, rng: np.random.Generator, sizes: Sequence[int], hr_prob: float = 0.0,
                          out_size: int = 112, down: str = "random", up: str = "random") -> tuple[np.ndarray, int]:
    """F-SKD's per-sample LR view: a size (HR with `hr_prob`), then down/up modes, each drawn from `rng`.

    "random" draws among OpenCV's NEAREST, LINEAR, AREA, CUBIC, LANCZOS4 independently per direction.
    Returns the view and the size used (out_size = full resolution).
    """
    if not sizes:
        return image, out_size
    keep_hr = rng.random() < hr_prob
    size = out_size if keep_hr else int(sizes[int(rng.integers(len(sizes)))])
    down_mode = OPENCV_RANDOM_CHOICES[int(rng.integers(len(OPENCV_RANDOM_CHOICES)))] if down == "random" else down
    up_mode = OPENCV_RANDOM_CHOICES[int(rng.integers(len(OPENCV_RANDOM_CHOICES)))] if up == "random" else up
    return degrade_opencv(image, size, out_size, down_mode, up_mode), size
