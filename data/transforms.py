"""Batched augmentation and normalisation on the training device.

Images arrive from the loader as uint8 N x H x W x 3 tensors; everything random here (crops, flips,
low-resolution sizes and interpolations, in-batch partners) is drawn from the `torch.Generator`
the trainer passes in and seeds per iteration, so a resumed run repeats the same augmentations.

Order of operations (`spec/face.md` §4, `spec/classification.md` §3):
- CIFAR: random crop after zero padding (`DATA.CROP_PADDING`), then flip, then normalise.
- scene: the dataset delivers IMAGE_SIZE crops (larger images are cropped here: random with
  `DATA.RANDOM_CROP`, else centred), then flip, then normalise.
- face: the teacher gets the HR image, the student its LR view, both with the same flip.
  A-SKD flips the HR image first and degrades the flipped image (`DATA.LOWRES.FLIP_FIRST: true`);
  F-SKD degrades first and flips both views together (default). Under nearest resampling the two
  orders differ (floor indices are not mirror-symmetric), which is why the order is configurable.
Random draws per call, in this order: crop offsets, flips, LR sizes, LR interpolations, then the
partner's flips, sizes and interpolations (or the in-batch permutation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from data.lowres import INTERPOLATIONS, degrade_per_sample, draw_sizes
from data.requests import BatchRequest

_IMAGE_KEYS = ("image", "image_lr", "partner", "partner_lr")


def to_float_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x C -> float32 N x C x H x W on [0, 255]; float NCHW passes through."""
    if images.dtype == torch.uint8:
        return images.permute(0, 3, 1, 2).float()
    return images.float()


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """`(x / 255 - mean) / std` per channel (ToTensor + Normalize), as float N x C x H x W.

    Accepts uint8 N x H x W x C (the loader's layout) or float N x C x H x W on [0, 255];
    `mean`/`std` are on [0, 1] pixels, in the channel order of the images.
    """
    x = to_float_nchw(images)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x / 255.0 - mean_t) / std_t


def _draw_device(generator: torch.Generator | None) -> torch.device | str:
    return generator.device if generator is not None else "cpu"


def random_crop(images: torch.Tensor, size: int, padding: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random `size` crops of N x H x W x C images after zero padding (torchvision RandomCrop)."""
    if padding > 0:
        images = F.pad(images, (0, 0, padding, padding, padding, padding))
    count, height, width = images.shape[:3]
    tops = torch.randint(height - size + 1, (count,), generator=generator, device=_draw_device(generator))
    lefts = torch.randint(width - size + 1, (count,), generator=generator, device=_draw_device(generator))
    return _gather_crops(images, tops.to(images.device), lefts.to(images.device), size)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centred `size` crop of N x H x W x C images (torchvision's rounding of the offsets)."""
    height, width = images.shape[1:3]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return images[:, top : top + size, left : left + size]


def _gather_crops(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: int) -> torch.Tensor:
    steps = torch.arange(size, device=images.device)
    rows = (tops[:, None] + steps)[:, :, None]
    cols = (lefts[:, None] + steps)[:, None, :]
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    return images[batch, rows, cols]


def flip_where(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror (along W) the N x C x H x W samples whose `flips` entry is True."""
    return torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)


def ten_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision TenCrop of N x H x W x C images -> (N * 10) x size x size x C, sample-major.

    Per sample: top-left, top-right, bottom-left, bottom-right, centre, then the same five of the
    mirrored image.
    """
    height, width = images.shape[1:3]

    def five(batch: torch.Tensor) -> list[torch.Tensor]:
        return [
            batch[:, :size, :size], batch[:, :size, width - size :],
            batch[:, height - size :, :size], batch[:, height - size :, width - size :],
            center_crop(batch, size),
        ]

    crops = five(images) + five(images.flip(2))
    return torch.stack(crops, dim=1).reshape(-1, size, size, images.shape[-1])


class TrainTransform:
    """Training-time batch transform built from `cfg.DATA` and the methods' `BatchRequest` (partner views,
    the teacher view); see the module docstring for the order."""

    def __init__(self, cfg: Any, request: BatchRequest | None = None) -> None:
        data = cfg.DATA
        request = request or BatchRequest()
        self.image_size = int(data.IMAGE_SIZE)
        self.mean = [float(v) for v in data.MEAN]
        self.std = [float(v) for v in data.STD]
        self.flip = bool(data.FLIP)
        self.crop_padding = int(data.CROP_PADDING)
        self.random_crop = bool(data.RANDOM_CROP)
        self.partner_mode = request.partner
        self.teacher_view_wanted = request.teacher_view
        lowres = data.LOWRES
        self.sizes = [int(s) for s in lowres.SIZES]
        self.hr_prob = float(lowres.HR_PROB)
        self.down = str(lowres.DOWN)
        self.up = str(lowres.UP)
        self.random_choices = tuple(lowres.RANDOM_CHOICES) or INTERPOLATIONS
        self.blur_sigma = tuple(float(s) for s in lowres.BLUR_SIGMA) or None
        self.flip_first = bool(lowres.FLIP_FIRST)

    def _geometry(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Crop (CIFAR padding, or oversized scene images) on uint8 NHWC, then float NCHW."""
        if self.crop_padding > 0:
            images = random_crop(images, self.image_size, self.crop_padding, generator)
        elif images.shape[1] > self.image_size or images.shape[2] > self.image_size:
            if self.random_crop:
                images = random_crop(images, self.image_size, 0, generator)
            else:
                images = center_crop(images, self.image_size)
        return to_float_nchw(images)

    def teacher_view(self, images: torch.Tensor) -> torch.Tensor:
        """The unflipped, normalised full-resolution view the teacher sees, without random draws
        (what the teacher-output cache precomputes; valid when the only augmentation is a flip)."""
        return normalize(self._geometry(images, None), self.mean, self.std)

    def _views(self, hr: torch.Tensor, given_lr: torch.Tensor | None, generator: torch.Generator | None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(student view, teacher view, per-sample size, per-sample flip) of one float NCHW batch,
        sharing one flip (the flips let a teacher-output cache pick the mirrored row)."""
        count = hr.shape[0]
        if self.flip:
            flips = torch.rand(count, generator=generator, device=_draw_device(generator)) < 0.5
            flips = flips.to(hr.device)
        else:
            flips = torch.zeros(count, dtype=torch.bool, device=hr.device)
        teacher = flip_where(hr, flips)
        if given_lr is not None:  # made per sample with OpenCV in the workers (BACKEND opencv)
            lowres = to_float_nchw(given_lr)
            return flip_where(lowres, flips), teacher, None, flips
        if not self.sizes:
            return teacher, teacher, torch.full((count,), self.image_size, device=hr.device), flips
        sizes = draw_sizes(count, self.sizes, self.hr_prob, self.image_size, generator, hr.device)
        source = teacher if self.flip_first else hr
        student = degrade_per_sample(source, sizes, self.image_size, self.down, self.up, self.blur_sigma,
                                     generator, self.random_choices).clamp_(0.0, 255.0)
        if not self.flip_first:
            student = flip_where(student, flips)
        return student, teacher, sizes, flips

    def __call__(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Device batch (uint8 images) -> normalised views plus labels, indices and extras."""
        hr = self._geometry(batch["image"], generator)
        student, teacher, sizes, flips = self._views(hr, batch.get("image_lr"), generator)
        output = {key: value for key, value in batch.items() if key not in _IMAGE_KEYS}
        output["flip"] = flips
        if sizes is not None:
            output["lowres_size"] = sizes
        output["image"] = normalize(student, self.mean, self.std)
        if self.teacher_view_wanted:
            output["image_teacher"] = (output["image"] if teacher is student
                                       else normalize(teacher, self.mean, self.std))

        if "partner" in batch:
            partner_hr = self._geometry(batch["partner"], generator)
            partner_student, partner_teacher, _, _ = self._views(partner_hr, batch.get("partner_lr"), generator)
            output["image_partner"] = normalize(partner_student, self.mean, self.std)
            output["image_partner_teacher"] = (output["image_partner"] if partner_teacher is partner_student
                                               else normalize(partner_teacher, self.mean, self.std))
        elif self.partner_mode == "shuffle":
            perm = torch.randperm(hr.shape[0], generator=generator, device=_draw_device(generator)).to(hr.device)
            output["partner_perm"] = perm
            output["image_partner"] = output["image"][perm]
            if self.teacher_view_wanted:
                output["image_partner_teacher"] = output["image_teacher"][perm]
            if "index" in batch:
                output["partner_index"] = batch["index"][perm]
        return output


class EvalTransform:
    """Classification evaluation: centre crop to IMAGE_SIZE when larger (ten crops with
    `DATA.TEN_CROP`, sample-major, `num_crops` = 10 so logits average over `view(N, 10, -1)`),
    then normalise."""

    def __init__(self, cfg: Any) -> None:
        self.image_size = int(cfg.DATA.IMAGE_SIZE)
        self.mean = [float(v) for v in cfg.DATA.MEAN]
        self.std = [float(v) for v in cfg.DATA.STD]
        self.ten_crop = bool(cfg.DATA.TEN_CROP)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        images = batch["image"]
        output = {key: value for key, value in batch.items() if key != "image"}
        if self.ten_crop:
            images = ten_crop(images, self.image_size)
            output["num_crops"] = 10
        else:
            if images.shape[1] > self.image_size or images.shape[2] > self.image_size:
                images = center_crop(images, self.image_size)
            output["num_crops"] = 1
        output["image"] = normalize(images, self.mean, self.std)
        return output
