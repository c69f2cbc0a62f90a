"""`pkt`: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), as RepDistiller computes it.

On the pooled vectors (`Features.pooled`, RepDistiller `feat[-1]`): every row is divided by its L2
norm plus eps (not `F.normalize`), NaNs set to 0; the cosine matrix (diagonal included) is mapped to
[0, 1] by (S + 1) / 2 and each row normalised to sum 1, giving conditional probabilities P; the term
is mean_ij P_t log((P_t + eps) / (P_s + eps)) with the same eps. The distiller multiplies by
DISTILL.PKT.WEIGHT (30000 in RepDistiller and mdistiller; CE weight 1, no KD).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError


def _conditional_probabilities(x: Tensor, eps: float) -> Tensor:
    """Rows x/(||x|| + eps) (NaN -> 0), cosine matrix shifted to [0, 1], rows normalised to sum 1."""
    x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    similarity = (x @ x.t() + 1.0) / 2.0
    return similarity / similarity.sum(1, keepdim=True)


def pkt_loss(feat_s: Tensor, feat_t: Tensor, eps: float = 1e-7) -> Tensor:
    """mean_ij P_t[i,j] log((P_t[i,j] + eps) / (P_s[i,j] + eps)), a 0-dim tensor.

    feat_s, feat_t: (B, ...) pooled features, flattened per sample; dimensions may differ. An
    all-zero row gives cosines 0 (probabilities 1/(2 * row sum)), so the loss stays finite. The
    teacher side is not differentiated; at least float32, autocast off.
    """
    with torch.autocast(device_type=feat_s.device.type, enabled=False):
        s = feat_s.reshape(feat_s.shape[0], -1)
        s = s.to(torch.promote_types(s.dtype, torch.float32))
        t = feat_t.detach().reshape(feat_t.shape[0], -1).to(s.dtype)
        p_s = _conditional_probabilities(s, eps)
        p_t = _conditional_probabilities(t, eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@DISTILLERS.register("pkt")
class ProbabilisticKnowledgeTransfer(Distiller):
    """WEIGHT x pkt_loss(student pooled, teacher pooled); no trainable extras."""

    defaults = {"WEIGHT": (30000.0, "beta (RepDistiller / mdistiller 30000)")}

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        if probe.teacher is None or probe.teacher.pooled is None or probe.student.pooled is None:
            raise ConfigError("DISTILL.TYPE 'pkt' needs pooled vectors from both student and teacher "
                              "(set TEACHER.BACKBONE to a backbone that returns Features.pooled)")
        self.weight = float(cfg.DISTILL.PKT.WEIGHT)

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        return {"pkt": self.weight * pkt_loss(step.student.pooled, step.teacher.pooled)}
