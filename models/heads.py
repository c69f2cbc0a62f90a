"""Margin and linear classification heads, registered in `models.HEADS`.

Every head is built as `HEADS.build(name, in_features, num_classes, **kw)` and called as
`head(embedding, labels) -> logits`: the raw (unnormalised) embedding goes in, the margin is applied
at each sample's label, and `labels=None` gives margin-free logits (the scaled cosine, or the plain
linear output) for inference. `head.weight` holds the class centres as (num_classes, in_features)
for every head (AdaDistill and HKD read them); published AdaFace/MagFace kernels, stored
(in_features, num_classes), are transposed by `models/face/published.py:head_from_published`.

Formulas follow the reference code of A-SKD / F-SKD (spec face.md §2), including its numerical
quirks, so logits match the originals on the same inputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import HEADS


def _in_fp32(method: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run a head method in float32 with autocast off, whatever the surrounding precision.

    Margins live near cos = +-1 (sqrt(1 - cos^2), arccos, the cos(pi - m) threshold), where bf16's 8
    mantissa bits move a logit of scale s = 64 by ~0.5; the seeds train these heads in fp32, and the
    (B x classes) product is small next to the backbone.
    """

    @functools.wraps(method)
    def in_fp32(self: nn.Module, embedding: Tensor, *args: object) -> Tensor:
        with torch.autocast(embedding.device.type, enabled=False):
            return method(self, embedding.float(), *args)

    return in_fp32


def one_hot_like(logits: Tensor, labels: Tensor) -> Tensor:
    """B x C one-hot of `labels` in `logits`' dtype and device, by scatter: F.one_hot checks the labels'
    range with .item(), a host sync every training step."""
    return torch.zeros_like(logits).scatter_(1, labels.reshape(-1, 1).long(), 1.0)


def _uniform_unit_columns(in_features: int, num_classes: int) -> Tensor:
    """AdaFace/MagFace init: uniform(-1, 1), every class vector renormalised to unit length. Drawn in
    the published (in_features, num_classes) orientation so a seed gives the published init."""
    kernel = torch.empty(in_features, num_classes).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
    return kernel.t().contiguous()


@HEADS.register("arcface")
class ArcFaceHead(nn.Module):
    """Additive angular margin (A-SKD / F-SKD `ArcMarginProduct`): target logit s*cos(theta + m).

    Past theta > pi - m, where cos(theta + m) stops decreasing, the target logit falls back to
    s*(cos theta - m*sin(pi - m)) (easy_margin: keeps cos theta when cos theta <= 0). The margin is
    part of the graph, so gradients flow through it. As in the reference, sin theta =
    sqrt(1 - cos^2) is not clamped: a cosine that rounds beyond +-1 gives NaN (never seen with
    normalised vectors in float32), and a cosine of exactly +-1 has an infinite sin derivative.
    """

    def __init__(self, in_features: int, num_classes: int, s: float = 32.0, m: float = 0.5,
                 easy_margin: bool = False) -> None:
        super().__init__()
        self.s, self.m, self.easy_margin = s, m, easy_margin
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.threshold = math.cos(math.pi - m)
        self.fallback = math.sin(math.pi - m) * m

    @_in_fp32
    def forward(self, embedding: Tensor, labels: Tensor | None = None) -> Tensor:
        cosine = F.linear(F.normalize(embedding), F.normalize(self.weight))
        if labels is None:
            return cosine * self.s
        sine = torch.sqrt(1.0 - torch.pow(cosine, 2))
        phi = cosine * self.cos_m - sine * self.sin_m
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            phi = torch.where((cosine - self.threshold) > 0, phi, cosine - self.fallback)
        one_hot = one_hot_like(cosine, labels)
        return ((one_hot * phi) + ((1.0 - one_hot) * cosine)) * self.s


@HEADS.register("cosface")
class CosFaceHead(nn.Module):
    """Additive cosine margin: logits s*(cos theta - m*[j = label])."""

    def __init__(self, in_features: int, num_classes: int, s: float = 32.0, m: float = 0.4) -> None:
        super().__init__()
        self.s, self.m = s, m
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    @_in_fp32
    def forward(self, embedding: Tensor, labels: Tensor | None = None) -> Tensor:
        cosine = F.linear(F.normalize(embedding), F.normalize(self.weight))
        if labels is None:
            return cosine * self.s
        return (cosine - one_hot_like(cosine, labels) * self.m) * self.s


@HEADS.register("adaface")
class AdaFaceHead(nn.Module):
    """AdaFace: a margin that adapts to image quality, measured by the embedding norm.

    The norm of each raw embedding is standardised with batch statistics (mean, unbiased std) kept
    as buffers and updated as mu <- t_alpha*mean + (1 - t_alpha)*mu on every call with labels, in
    train and eval mode alike, as in the reference (t_alpha = 1.0 overwrites them each batch). The
    target logit is s*(cos(clip(theta - m*z, eps, pi - eps)) - (m + m*z)) with z = clip(h*(n - mu) /
    (sigma + eps), -1, 1); other logits s*cos(clip(theta, eps, pi - eps)). eps = 1e-3. `t` is the
    unused buffer the published checkpoints carry.
    """

    eps = 1e-3

    def __init__(self, in_features: int, num_classes: int, s: float = 32.0, m: float = 0.4,
                 h: float = 0.333, t_alpha: float = 1.0) -> None:
        super().__init__()
        self.s, self.m, self.h, self.t_alpha = s, m, h, t_alpha
        self.weight = nn.Parameter(_uniform_unit_columns(in_features, num_classes))
        self.register_buffer("t", torch.zeros(1))
        self.register_buffer("batch_mean", torch.ones(1) * 20)
        self.register_buffer("batch_std", torch.ones(1) * 100)

    @_in_fp32
    def forward(self, embedding: Tensor, labels: Tensor | None = None) -> Tensor:
        norms = torch.norm(embedding, 2, 1, True)
        unit_embedding = torch.div(embedding, norms)
        unit_weight = torch.div(self.weight, torch.norm(self.weight, 2, 1, True))
        cosine = torch.mm(unit_embedding, unit_weight.t()).clamp(-1 + self.eps, 1 - self.eps)
        if labels is None:
            return cosine * self.s
        safe_norms = torch.clip(norms, min=0.001, max=100).clone().detach()
        with torch.no_grad():
            self.batch_mean.copy_(safe_norms.mean() * self.t_alpha + (1 - self.t_alpha) * self.batch_mean)
            self.batch_std.copy_(safe_norms.std() * self.t_alpha + (1 - self.t_alpha) * self.batch_std)
        margin_scaler = (safe_norms - self.batch_mean) / (self.batch_std + self.eps)
        margin_scaler = torch.clip(margin_scaler * self.h, -1, 1)
        one_hot = one_hot_like(cosine, labels)
        angular_margin = one_hot * (self.m * margin_scaler * -1)
        theta = torch.clip(cosine.acos() + angular_margin, min=self.eps, max=math.pi - self.eps)
        additive_margin = one_hot * (self.m + self.m * margin_scaler)
        return (theta.cos() - additive_margin) * self.s


@HEADS.register("magface")
class MagFaceHead(nn.Module):
    """MagFace (F-SKD `MagMarginProduct`): ArcFace with a per-sample margin that grows with the
    embedding magnitude a = clamp(||z||, l_a, u_a): m(a) = l_margin + (u_margin - l_margin) *
    (a - l_a) / (u_a - l_a). The magnitude regulariser is `regularizer(embedding)`, already weighted
    by `lambda_g` (F-SKD adds 20 * g to the cross-entropy)."""

    def __init__(self, in_features: int, num_classes: int, s: float = 32.0, l_margin: float = 0.45,
                 u_margin: float = 0.8, l_a: float = 10.0, u_a: float = 110.0, lambda_g: float = 20.0,
                 easy_margin: bool = False) -> None:
        super().__init__()
        self.s, self.easy_margin, self.lambda_g = s, easy_margin, lambda_g
        self.l_margin, self.u_margin, self.l_a, self.u_a = l_margin, u_margin, l_a, u_a
        self.weight = nn.Parameter(_uniform_unit_columns(in_features, num_classes))

    def magnitude(self, embedding: Tensor) -> Tensor:
        """a = ||z|| clamped to [l_a, u_a], B x 1."""
        return torch.norm(embedding, dim=1, keepdim=True).clamp(self.l_a, self.u_a)

    def margin(self, magnitude: Tensor) -> Tensor:
        """m(a), linear from l_margin at l_a to u_margin at u_a."""
        return (self.u_margin - self.l_margin) / (self.u_a - self.l_a) * (magnitude - self.l_a) + self.l_margin

    @_in_fp32
    def regularizer(self, embedding: Tensor) -> Tensor:
        """lambda_g * g with g = mean(a / u_a^2 + 1 / a): MagFace's term rewarding larger magnitudes."""
        magnitude = self.magnitude(embedding)
        return self.lambda_g * torch.mean(1 / (self.u_a**2) * magnitude + 1 / magnitude)

    @_in_fp32
    def forward(self, embedding: Tensor, labels: Tensor | None = None) -> Tensor:
        cosine = torch.mm(F.normalize(embedding), F.normalize(self.weight, dim=1).t()).clamp(-1, 1)
        if labels is None:
            return self.s * cosine
        margin = self.margin(self.magnitude(embedding))
        sine = torch.sqrt(1.0 - torch.pow(cosine, 2))
        phi = cosine * torch.cos(margin) - sine * torch.sin(margin)
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            threshold = torch.cos(math.pi - margin)
            phi = torch.where(cosine > threshold, phi, cosine - torch.sin(math.pi - margin) * margin)
        one_hot = one_hot_like(cosine, labels)
        return one_hot * (self.s * phi) + (1.0 - one_hot) * (self.s * cosine)


@HEADS.register("linear")
class LinearHead(nn.Linear):
    """Plain linear classifier (with bias); labels are accepted and ignored."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes, bias=True)

    def forward(self, embedding: Tensor, labels: Tensor | None = None) -> Tensor:
        return super().forward(embedding)


__all__ = ["AdaFaceHead", "ArcFaceHead", "CosFaceHead", "LinearHead", "MagFaceHead", "one_hot_like"]
