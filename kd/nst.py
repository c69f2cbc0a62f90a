"""`nst`: neuron-selectivity transfer (Huang & Wang, 2017), as RepDistiller and mdistiller compute it.

For one stage pair the larger map is average-pooled to the smaller one's (H, H) (square, from the
height), each channel is flattened over HW and L2-normalised, and with the polynomial kernel
k(a, b) = (a . b)^2 over all channel pairs the term is mean k(t, t) + mean k(s, s) - 2 mean k(s, t)
(channel counts may differ; the teacher term is a constant). The distiller sums the term over the
stage pairs of `Features.stages` (RepDistiller `feat[1:-1]`), paired from the first as RepDistiller's
`zip` does, and multiplies by DISTILL.NST.WEIGHT (50 in both references; CE weight 1, no KD).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """mean over samples and channel pairs (i, j) of (a[:, i] . b[:, j])^2; a, b: B x C x HW."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(feat_s: Tensor, feat_t: Tensor) -> Tensor:
    """NST term for ONE stage pair, a 0-dim tensor; feat_s, feat_t: B x C x H x W.

    The larger map is `adaptive_avg_pool2d`-ed to the smaller's (H, H). The teacher side is not
    differentiated; at least float32, autocast off.
    """
    with torch.autocast(device_type=feat_s.device.type, enabled=False):
        feat_s = feat_s.to(torch.promote_types(feat_s.dtype, torch.float32))
        feat_t = feat_t.detach().to(feat_s.dtype)
        size_s, size_t = feat_s.shape[2], feat_t.shape[2]
        if size_s > size_t:
            feat_s = F.adaptive_avg_pool2d(feat_s, (size_t, size_t))
        elif size_s < size_t:
            feat_t = F.adaptive_avg_pool2d(feat_t, (size_s, size_s))
        s = F.normalize(feat_s.reshape(feat_s.shape[0], feat_s.shape[1], -1), dim=2)
        t = F.normalize(feat_t.reshape(feat_t.shape[0], feat_t.shape[1], -1), dim=2)
        return _poly_kernel_mean(t, t) + _poly_kernel_mean(s, s) - 2 * _poly_kernel_mean(s, t)


@DISTILLERS.register("nst")
class NeuronSelectivityTransfer(Distiller):
    """WEIGHT x sum over stage pairs of nst_loss; no trainable extras."""

    defaults = {"WEIGHT": (50.0, "beta (RepDistiller / mdistiller 50)")}

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        if probe.teacher is None or not probe.teacher.stages or not probe.student.stages:
            raise ConfigError("DISTILL.TYPE 'nst' needs stage maps from both student and teacher "
                              "(set TEACHER.BACKBONE to a backbone that returns Features.stages)")
        self.weight = float(cfg.DISTILL.NST.WEIGHT)
        self.num_pairs = min(len(probe.student.stages), len(probe.teacher.stages))

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        pairs = zip(step.student.stages[:self.num_pairs], step.teacher.stages[:self.num_pairs])
        total = torch.stack([nst_loss(s, t) for s, t in pairs]).sum()
        return {"nst": self.weight * total}
