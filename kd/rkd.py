"""`rkd`: relational knowledge distillation (Park et al., CVPR 2019), distance + angle terms.

The pure function is RKD's own form as RepDistiller, mdistiller and F-SKD's `RKD_cri` compute it
(spec classification.md §2.8, face.md §3.4). The distiller compares one vector per sample:
the face embedding (`Features.out`, F-SKD's RKD baseline: w_dist 1, w_angle 2, weight 40; the
student has no hints, §9 #21) or the penultimate pooled vector (DISTILL.RKD.FEATURE "pooled", the
CIFAR form with 25 / 50).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError


def pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """RKD's pdist: sqrt(clamp(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, min eps)) with the diagonal set to 0."""
    square = x.pow(2).sum(dim=1)
    dist = (square.unsqueeze(0) + square.unsqueeze(1) - 2 * x @ x.t()).clamp(min=eps).sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return dist.masked_fill(eye, 0.0)


def _normalised_distances(x: Tensor) -> Tensor:
    """Distances divided by the mean of the positive entries (clamped off-diagonal ones included)."""
    dist = pairwise_distances(x)
    return dist / (dist.sum() / (dist > 0).sum())  # distances are >= 0; no boolean indexing (a host sync)


def _angles(x: Tensor) -> Tensor:
    """All B^3 angle cosines <e_ij, e_ik> with e_ij = normalize(x_j - x_i) (zero when j = i)."""
    diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_loss(emb_s: Tensor, emb_t: Tensor, w_dist: float = 25.0, w_angle: float = 50.0) -> Tensor:
    """w_dist * SmoothL1(D_s, D_t) + w_angle * SmoothL1(A_s, A_t), both batch-mean (beta 1).

    emb_s, emb_t: (B, ...) flattened per sample; dimensions may differ. D are pairwise distance
    matrices normalised by their mean positive entry, A the B^3 angle cosines. The teacher side is
    not differentiated. Computed in float32 with autocast off (autocast would run the Gram matrix
    and the angle bmm in bf16 even on float32 inputs).
    """
    with torch.autocast(device_type=emb_s.device.type, enabled=False):
        s = emb_s.float().reshape(emb_s.shape[0], -1)
        with torch.no_grad():
            t = emb_t.detach().float().reshape(emb_t.shape[0], -1)
            dist_t = _normalised_distances(t)
            angle_t = _angles(t)
        loss_dist = F.smooth_l1_loss(_normalised_distances(s), dist_t)
        loss_angle = F.smooth_l1_loss(_angles(s), angle_t)
        return w_dist * loss_dist + w_angle * loss_angle


@DISTILLERS.register("rkd")
class RelationalKD(Distiller):
    """WEIGHT x rkd_loss(student vector, teacher vector, W_DIST, W_ANGLE)."""

    defaults = {
        "WEIGHT": (40.0, "overall weight (F-SKD table)"),
        "W_DIST": (25.0, "distance term weight"),
        "W_ANGLE": (50.0, "angle term weight"),
        "FEATURE": ("out", "vectors compared: 'out' (face embedding, F-SKD) or 'pooled' (penultimate, RepDistiller)",
                    ("out", "pooled")),
    }

    uses_teacher_logits = False  # reads teacher features only
    cacheable_teacher = True

    @classmethod
    def cache_refusal(cls, cfg: Any) -> str:
        if str(cfg.DISTILL.RKD.FEATURE) != "out":
            return "the cache stores the teacher's 'out' only: set DISTILL.RKD.FEATURE 'out'"
        return ""

    def setup(self, cfg: Any, probe: Probe) -> None:
        node = cfg.DISTILL.RKD
        self.weight = float(node.WEIGHT)
        self.w_dist = float(node.W_DIST)
        self.w_angle = float(node.W_ANGLE)
        self.feature = str(node.FEATURE)
        if self.feature not in ("out", "pooled"):
            raise ConfigError(f"DISTILL.RKD.FEATURE must be 'out' or 'pooled', got {self.feature!r}")
        if probe.teacher is None:
            raise ConfigError("DISTILL.TYPE 'rkd' needs a teacher: set TEACHER.BACKBONE and TEACHER.CHECKPOINT")
        for role, features in (("student", probe.student), ("teacher", probe.teacher)):
            if features[self.feature] is None:
                raise ConfigError(f"DISTILL.RKD.FEATURE '{self.feature}': the {role} backbone does not return it; "
                                  "use 'out'")

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        emb_s, emb_t = step.student[self.feature], step.teacher[self.feature]
        return {"rkd": self.weight * rkd_loss(emb_s, emb_t, self.w_dist, self.w_angle)}
