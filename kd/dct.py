"""`dct`: DCT-driven attention distillation for scene recognition (López-Cifuentes et al.), as released.

Per stage, for student and teacher separately: the activation map A = mean_c F^2, min-max
normalised per sample, made zero-mean, transformed to the frequency domain, min-max normalised
again; the stage contributes the Euclidean distance between the two spectra (square root of
the sum of squares, neither squared nor averaged). Distances add over stages per sample; with
DISTILL.DCT.TEACHER_CORRECT (the reference's PRED_GUIDE, on by default) samples the teacher
misclassifies count zero, and the sum is divided by the FULL batch size, as the reference does.

The released code's "DCT" is the real part of the 2-D DFT (torch.fft.fft along H, then W), not a
DCT-II; `transform="dft_real"` (the default) reproduces it and the published numbers.
`transform="dct2"` is a Distillery extension: an unnormalised DCT-II along H then W, computed with
two matrix products; it does NOT reproduce published numbers. Student and teacher maps must
have the same H x W at every stage (true for R50->R18, R152->R34, R50->MNv2 at 224 px, and for
same-family CIFAR pairs); the reference aligns nothing. DISTILL.DCT.ALIGN (another extension, off
by default) adaptive-average-pools the larger feature map to the smaller size first, as AT does,
so that cross-architecture CIFAR pairs (e.g. resnet32x4 -> ShuffleV1) can use the loss. The min-max steps have no epsilon in the reference (a constant map
gives NaN, which the trainer's non-finite guard reports); DISTILL.DCT.EPS adds one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError

TRANSFORMS = ("dft_real", "dct2")


def _min_max(x: Tensor, eps: float) -> Tensor:
    """(x - min) / (max - min + eps) per sample over the last two dims, as nested min/max like the
    reference (so gradients go to one arg-min / arg-max element, as there)."""
    low = torch.min(torch.min(x, dim=1)[0], dim=1)[0][:, None, None]
    high = torch.max(torch.max(x, dim=1)[0], dim=1)[0][:, None, None]
    return (x - low) / (high - low + eps)


def dct2_matrix(size: int, device: torch.device) -> Tensor:
    """C[u, y] = cos(pi * (2y + 1) * u / (2 * size)): the unnormalised DCT-II basis."""
    u = torch.arange(size, device=device, dtype=torch.float64)[:, None]
    y = torch.arange(size, device=device, dtype=torch.float64)[None, :]
    return torch.cos(math.pi * (2 * y + 1) * u / (2 * size)).float()


def attention_spectrum(feat: Tensor, transform: str = "dft_real", eps: float = 0.0) -> Tensor:
    """B x H x W normalised spectrum of one stage's activation map (steps 1-5 of the method)."""
    activation = _min_max(feat.float().pow(2).mean(1), eps)
    batch, height, width = activation.shape
    activation = activation - activation.reshape(batch, -1).mean(1)[:, None, None]
    if transform == "dft_real":
        spectrum = torch.real(torch.fft.fft(torch.fft.fft(activation, dim=1), dim=2))
    elif transform == "dct2":
        spectrum = dct2_matrix(height, activation.device) @ activation @ dct2_matrix(width, activation.device).T
    else:
        raise ConfigError(f"DISTILL.DCT.TRANSFORM must be one of {list(TRANSFORMS)}, got {transform!r}")
    return _min_max(spectrum, eps)


def _pool_to_common_size(feat_s: Tensor, feat_t: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool whichever map is larger to the smaller H x W (the ALIGN extension)."""
    size = (min(feat_s.shape[2], feat_t.shape[2]), min(feat_s.shape[3], feat_t.shape[3]))
    if tuple(feat_s.shape[2:]) != size:
        feat_s = F.adaptive_avg_pool2d(feat_s, size)
    if tuple(feat_t.shape[2:]) != size:
        feat_t = F.adaptive_avg_pool2d(feat_t, size)
    return feat_s, feat_t


def dct_attention_loss(feats_s: list[Tensor], feats_t: list[Tensor], teacher_correct: Tensor | None = None,
                       transform: str = "dft_real", eps: float = 0.0, align: bool = False) -> Tensor:
    """(1/B) * sum_b mask_b * sum_l ||D_l(F_s[b]) - D_l(F_t[b])||_2 over LISTS of stage maps.

    feats_s, feats_t: per stage N x C x H x W (equal H x W per stage, channels may differ);
    teacher_correct: None (every sample counts) or an N-vector, 1 where the teacher's argmax
    equals the label; masked samples contribute 0 but the mean still divides by the full batch.
    The teacher side is not differentiated. Computed in float32 (FFTs do not run in bf16).
    `transform`: "dft_real" (the reference) or "dct2"; `eps`: added to the min-max denominators
    (0 as the reference); `align`: pool the larger map of a pair to the smaller size first (an
    extension; without it, sizes must match).
    """
    if len(feats_s) != len(feats_t):
        raise ValueError(f"dct_attention_loss: {len(feats_s)} student stages vs {len(feats_t)} teacher stages")
    device_type = feats_s[0].device.type
    with torch.autocast(device_type=device_type, enabled=False):
        per_sample = torch.zeros(feats_s[0].shape[0], device=feats_s[0].device)
        for feat_s, feat_t in zip(feats_s, feats_t):
            if align:
                feat_s, feat_t = _pool_to_common_size(feat_s, feat_t)
            if feat_s.shape[2:] != feat_t.shape[2:]:
                raise ValueError(f"dct_attention_loss: student map {tuple(feat_s.shape[2:])} and teacher map "
                                 f"{tuple(feat_t.shape[2:])} differ; the method needs equal sizes")
            spectrum_s = attention_spectrum(feat_s, transform, eps).reshape(feat_s.shape[0], -1)
            with torch.no_grad():
                spectrum_t = attention_spectrum(feat_t.detach(), transform, eps).reshape(feat_t.shape[0], -1)
            per_sample = per_sample + torch.sqrt(torch.sum(torch.pow(spectrum_s - spectrum_t, 2), dim=1))
        if teacher_correct is not None:
            per_sample = per_sample * teacher_correct.to(per_sample.dtype)
        return per_sample.mean()


@DISTILLERS.register("dct")
class DCTAttentionDistillation(Distiller):
    """`dct_attention_loss` over every stage, times DISTILL.DCT.WEIGHT (the reference's ALPHA, 1)."""

    defaults = {
        "WEIGHT": (1.0, "weight of the DCT-attention term"),
        "TRANSFORM": ("dft_real", "'dft_real' (what the reference computes) or 'dct2' (extension)",
                      ("dft_real", "dct2")),
        "TEACHER_CORRECT": (True, "PRED_GUIDE (reference default on): zero the term where the teacher is wrong"),
        "EPS": (0.0, "added to the min-max denominators; 0 = as the reference (a constant map gives NaN)"),
        "ALIGN": (False, "extension: pool the larger map of a stage pair to the smaller (cross-arch CIFAR)"),
    }

    def setup(self, cfg: Any, probe: Probe) -> None:
        node = cfg.DISTILL.DCT
        if probe.teacher is None:
            raise ConfigError("DISTILL.TYPE 'dct' needs a teacher: set TEACHER.BACKBONE and TEACHER.CHECKPOINT")
        if node.TRANSFORM not in TRANSFORMS:
            raise ConfigError(f"DISTILL.DCT.TRANSFORM must be one of {list(TRANSFORMS)}, got {node.TRANSFORM!r}")
        stages_s, stages_t = probe.student.stages, probe.teacher.stages
        sizes_s = [tuple(f.shape[2:]) for f in stages_s]
        sizes_t = [tuple(f.shape[2:]) for f in stages_t]
        self.align = bool(node.ALIGN)
        if not sizes_s or len(sizes_s) != len(sizes_t):
            raise ConfigError(f"DISTILL.TYPE 'dct' needs the same number of stages in student and teacher; got "
                              f"student {sizes_s}, teacher {sizes_t}")
        if sizes_s != sizes_t and not self.align:
            raise ConfigError(f"DISTILL.TYPE 'dct' needs student and teacher stages of equal sizes; got student "
                              f"{sizes_s}, teacher {sizes_t} (set DISTILL.DCT.ALIGN true to pool the larger "
                              "map of each pair, an extension the reference does not have)")
        self.weight = float(node.WEIGHT)
        self.transform = str(node.TRANSFORM)
        self.eps = float(node.EPS)
        self.teacher_correct = bool(node.TEACHER_CORRECT)

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        mask = None
        if self.teacher_correct:
            if step.logits_t is None:
                raise ConfigError("DISTILL.DCT.TEACHER_CORRECT needs teacher class logits")
            mask = (step.logits_t.argmax(dim=1) == step.labels).float()
        loss = dct_attention_loss(step.student.stages, step.teacher.stages, mask, self.transform, self.eps,
                                  self.align)
        return {"dct": self.weight * loss}
