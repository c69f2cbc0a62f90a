"""`vid`: variational information distillation (Ahn et al., CVPR 2019), as RepDistiller computes it.

Per stage pair, the student map (the larger of the two maps average-pooled to the smaller one's
(H, H)) goes through a bias-free 1x1-conv regressor s -> t -> t -> t (ReLU between) that predicts the
teacher map's mean; each teacher channel has a trained variance softplus(log_scale) + eps, started at
init_pred_var. The term is mean 0.5 * ((mu - F_t)^2 / var + log var); the distiller sums it over the
stage pairs and applies DISTILL.VID.WEIGHT (1 in RepDistiller and the DCT repository). Both the
regressors and log_scale train (mdistiller keeps log_scale fixed; RepDistiller's form is used).

Stages: DISTILL.VID.STAGES picks indices of `Features.stages`; [] = all, paired from the first
(RepDistiller's `feat[1:-1]`, zip). The DCT scene configs use [1, 2, 3] (its `features[1:-1]`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd import DISTILLERS
from kd.at import select_stage_pairs
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


class VIDLoss(nn.Module):
    """VID for ONE stage pair; call `(feat_s, feat_t)` -> 0-dim loss.

    in_channels: student channels; mid_channels, out_channels: teacher channels in RepDistiller's
    use. State-dict keys exactly RepDistiller's: `log_scale` [out], `regressor.0.weight`
    [mid, in, 1, 1], `regressor.2.weight` [mid, mid, 1, 1], `regressor.4.weight` [out, mid, 1, 1].
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, init_pred_var: float = 5.0,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            _conv1x1(in_channels, mid_channels), nn.ReLU(),
            _conv1x1(mid_channels, mid_channels), nn.ReLU(),
            _conv1x1(mid_channels, out_channels),
        )
        start = math.log(math.exp(init_pred_var - eps) - 1.0)  # softplus^-1(init_pred_var - eps)
        self.log_scale = nn.Parameter(torch.full((out_channels,), start))
        self.eps = eps

    def forward(self, feat_s: Tensor, feat_t: Tensor) -> Tensor:
        feat_t = feat_t.detach()
        size_s, size_t = feat_s.shape[2], feat_t.shape[2]
        if size_s > size_t:
            feat_s = F.adaptive_avg_pool2d(feat_s, (size_t, size_t))
        elif size_s < size_t:
            feat_t = F.adaptive_avg_pool2d(feat_t, (size_s, size_s))
        mean = self.regressor(feat_s)
        var = (torch.log(1.0 + torch.exp(self.log_scale)) + self.eps).view(1, -1, 1, 1)
        return (0.5 * ((mean - feat_t).pow(2) / var + torch.log(var))).mean()


@DISTILLERS.register("vid")
class VariationalInformationDistillation(Distiller):
    """Sum over stage pairs of `VIDLoss`, times DISTILL.VID.WEIGHT; one VIDLoss(s_c, t_c, t_c) per pair."""

    defaults = {
        "WEIGHT": (1.0, "beta (RepDistiller and DCT ALPHA: 1)"),
        "INIT_PRED_VAR": (5.0, "initial predicted variance of every teacher channel"),
        "EPS": (1e-5, "variance floor added to softplus(log_scale)"),
        "STAGES": ([], "stage indices to distil (Features.stages); [] = all, paired from the first"),
    }

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        if probe.teacher is None:
            raise ConfigError("DISTILL.TYPE 'vid' needs a teacher: set TEACHER.BACKBONE and TEACHER.CHECKPOINT")
        node = cfg.DISTILL.VID
        self.weight = float(node.WEIGHT)
        try:
            self.pairs = select_stage_pairs(list(node.STAGES), len(probe.student.stages), len(probe.teacher.stages))
        except ConfigError as error:
            raise ConfigError(str(error).replace("DISTILL.AT.STAGES", "DISTILL.VID.STAGES")) from None
        if not self.pairs:
            raise ConfigError("DISTILL.TYPE 'vid': the student or the teacher returns no stages")
        device = probe.student.stages[0].device
        self.regressors = nn.ModuleList(
            VIDLoss(probe.student.stages[i].shape[1], probe.teacher.stages[j].shape[1],
                    probe.teacher.stages[j].shape[1], float(node.INIT_PRED_VAR), float(node.EPS))
            for i, j in self.pairs
        ).to(device)

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        stages_s, stages_t = step.student.stages, step.teacher.stages
        total = torch.stack([vid(stages_s[i].float(), stages_t[j].float())
                             for vid, (i, j) in zip(self.regressors, self.pairs)]).sum()
        return {"vid": self.weight * total}
