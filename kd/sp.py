"""`sp`: similarity-preserving KD (Tung & Mori, ICCV 2019), as RepDistiller and mdistiller compute it.

Each network's last stage map (RepDistiller `feat[-2]`, mdistiller `feats[-1]`: `Features.stages[-1]`)
is flattened per sample into Q (B x D); G = row-wise L2-normalised Q Q^T (B x B); the term is
||G_t - G_s||_F^2 / B^2. Only the Gram matrix enters, so student and teacher maps may have any
shapes. The distiller multiplies by DISTILL.SP.WEIGHT (3000 in both references; CE weight 1, no KD).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError


def _gram(feat: Tensor) -> Tensor:
    """Row-normalised B x B similarity matrix of the flattened samples (F.normalize, eps 1e-12)."""
    flat = feat.reshape(feat.shape[0], -1)
    return F.normalize(flat @ flat.t())


def sp_loss(feat_s: Tensor, feat_t: Tensor) -> Tensor:
    """||G_t - G_s||_F^2 / B^2 for ONE feature pair, a 0-dim tensor (the original returns shape [1]).

    feat_s, feat_t: (B, ...) of any shapes with the same B. The teacher side is not differentiated.
    Computed in at least float32 with autocast off (the Gram matmul would otherwise run in bf16).
    """
    batch = feat_s.shape[0]
    with torch.autocast(device_type=feat_s.device.type, enabled=False):
        feat_s = feat_s.to(torch.promote_types(feat_s.dtype, torch.float32))
        feat_t = feat_t.detach().to(feat_s.dtype)
        diff = _gram(feat_t) - _gram(feat_s)
        return diff.pow(2).sum() / (batch * batch)


@DISTILLERS.register("sp")
class SimilarityPreserving(Distiller):
    """WEIGHT x sp_loss(last student stage, last teacher stage); no trainable extras."""

    defaults = {"WEIGHT": (3000.0, "beta (RepDistiller / mdistiller 3000)")}

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        if probe.teacher is None or not probe.teacher.stages or not probe.student.stages:
            raise ConfigError("DISTILL.TYPE 'sp' needs stage maps from both student and teacher "
                              "(set TEACHER.BACKBONE to a backbone that returns Features.stages)")
        self.weight = float(cfg.DISTILL.SP.WEIGHT)

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        return {"sp": self.weight * sp_loss(step.student.stages[-1], step.teacher.stages[-1])}
