"""`askd`: attribute-structure knowledge distillation (Crishawy/ASKD, CIFAR-100), as the released code computes.

Two relational terms, each comparing normalised pairwise-distance structures with SmoothL1:
- regional similarity RS: the last spatial map (student's after a trained 1x1 connector to the
  teacher's channels) is average-pooled into r x r regions (kernel = stride = H // r); per
  (sample, channel) all pairwise distances between region means;
- class similarity CS: per sample all pairwise distances between raw class scores (no temperature).
Distances are RKD's pdist: sqrt(clamp(a^2 + b^2 - 2ab, 1e-12)) with a zero diagonal; each side is
divided by the mean of its entries > 0 over the whole tensor (clamped 1e-6 entries included);
the teacher side is not differentiated. Every released config: beta 1, w_rs 5, w_cs 14, no Hinton
term, r = 2 for same-family pairs and 4 for cross-architecture pairs, position "res_last".

The reference clamps r in place on the loss module (r = min(r, H_s, H_t)), so the clamp persists
across calls; Distillery clamps per call, which is identical for every released config (a
single position); the persistence under the unused "res_group" option is not reproduced.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError

PDIST_EPS = 1e-12


def pairwise_scalar_distances(values: Tensor) -> Tensor:
    """(..., M) -> (..., M, M): |v_i - v_j| as RKD's pdist computes it (via v_i^2 + v_j^2 - 2 v_i v_j,
    clamped at 1e-12 before the square root), diagonal set to 0."""
    column = values.unsqueeze(-1)
    square = column.pow(2)
    product = column @ column.transpose(-1, -2)
    distances = (square + square.transpose(-1, -2) - 2 * product).clamp(min=PDIST_EPS).sqrt()
    eye = torch.eye(values.shape[-1], dtype=torch.bool, device=values.device)
    return distances.masked_fill(eye, 0.0)


def _relation_loss(values_s: Tensor, values_t: Tensor) -> Tensor:
    """SmoothL1 between the two sides' distance tensors, each divided by its mean positive entry."""
    with torch.no_grad():
        distances_t = _over_positive_mean(pairwise_scalar_distances(values_t))
    distances_s = _over_positive_mean(pairwise_scalar_distances(values_s))
    return F.smooth_l1_loss(distances_s, distances_t)


def _over_positive_mean(distances: Tensor) -> Tensor:
    """Distances (>= 0) over the mean of their positive entries; sum / count rather than
    `d[d > 0].mean()`, whose boolean indexing makes CUDA wait for the host."""
    return distances / (distances.sum() / (distances > 0).sum())


def regional_similarity_loss(feat_s: Tensor, feat_t: Tensor, r: int = 2) -> Tensor:
    """RS for one position: feat_s (after the connector) and feat_t are N x C x H x H, equal C."""
    if feat_s.shape[1] != feat_t.shape[1]:
        raise ValueError(f"askd: student ({feat_s.shape[1]}) and teacher ({feat_t.shape[1]}) channels differ; "
                         "pass the student map through the 1x1 connector first")
    size_s, size_t = feat_s.shape[2], feat_t.shape[2]
    if feat_s.shape[3] != size_s or feat_t.shape[3] != size_t:
        raise ValueError("askd: feature maps must be square")
    r = min(int(r), size_s, size_t)
    regions_s = F.avg_pool2d(feat_s, size_s // r).flatten(2)
    regions_t = F.avg_pool2d(feat_t.detach(), size_t // r).flatten(2)
    return _relation_loss(regions_s, regions_t)


def class_similarity_loss(logits_s: Tensor, logits_t: Tensor) -> Tensor:
    """CS: relation loss over each sample's pairwise class-score distances (raw logits)."""
    return _relation_loss(logits_s, logits_t.detach())


def askd_loss(feat_s: Tensor, feat_t: Tensor, logits_s: Tensor, logits_t: Tensor, r: int = 2,
              w_rs: float = 5.0, w_cs: float = 14.0) -> Tensor:
    """w_rs * RS(feat_s, feat_t; r) + w_cs * CS(logits_s, logits_t) for one position.

    feat_s: student map ALREADY through the 1x1 connector (N x C_t x H_s x H_s); feat_t: teacher map;
    r is clamped to min(r, H_s, H_t) on every call. A zero weight skips its term, as the reference.
    Computed in float32.
    """
    with torch.autocast(device_type=feat_s.device.type, enabled=False):
        total = feat_s.new_zeros((), dtype=torch.float32)
        if w_rs:
            total = total + w_rs * regional_similarity_loss(feat_s.float(), feat_t.float(), r)
        if w_cs:
            total = total + w_cs * class_similarity_loss(logits_s.float(), logits_t.float())
        return total


@DISTILLERS.register("askd")
class AttributeStructureDistillation(Distiller):
    """`askd_loss` on the last stage (position "res_last") times DISTILL.ASKD.WEIGHT; owns the connector."""

    defaults = {
        "WEIGHT": (1.0, "beta on w_rs*RS + w_cs*CS (every released config: 1)"),
        "R": (2, "region side for the regional similarity"),
        "W_RS": (5.0, "regional-similarity weight"),
        "W_CS": (14.0, "class-similarity weight"),
    }

    def setup(self, cfg: Any, probe: Probe) -> None:
        node = cfg.DISTILL.ASKD
        if probe.teacher is None or not probe.teacher.stages or not probe.student.stages:
            raise ConfigError("DISTILL.TYPE 'askd' needs stage maps from both student and teacher")
        if int(node.R) <= 0:
            raise ConfigError(f"DISTILL.ASKD.R must be a positive region count, got {node.R}")
        channels_s = probe.student.stages[-1].shape[1]
        channels_t = probe.teacher.stages[-1].shape[1]
        # as the reference: a 1x1 conv with bias and PyTorch's default init, trained with the student
        self.connector = nn.Conv2d(channels_s, channels_t, kernel_size=1).to(probe.student.stages[-1].device)
        self.weight = float(node.WEIGHT)
        self.r = int(node.R)
        self.w_rs = float(node.W_RS)
        self.w_cs = float(node.W_CS)

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        if step.logits_t is None:
            raise ConfigError("DISTILL.TYPE 'askd' needs teacher class logits")
        feat_s = self.connector(step.student.stages[-1])
        loss = askd_loss(feat_s, step.teacher.stages[-1], step.logits_s, step.logits_t, self.r, self.w_rs,
                         self.w_cs)
        return {"askd": self.weight * loss}
