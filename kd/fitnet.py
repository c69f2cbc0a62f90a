"""`fitnet`: FitNet hints as F-SKD's face baseline (spec face.md §3.4, §3.5).

The student carries F-SKD's hint layers (a 1x1 conv [+ BN] per stage, STUDENT.HINTS true, trained
with the student), so its hinted stage maps already have the teacher's shapes; the term is the
mean over the four stages of the element-mean squared error to the teacher's raw stage maps,
weighted by DISTILL.FITNET.WEIGHT (1.5 in F-SKD's tables). This is F-SKD's FitNet, not
RepDistiller's single-stage ConvReg form.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError


def hint_mse_loss(feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
    """Mean over stage pairs of mean((S_i - T_i)^2); teacher maps are not differentiated; float32."""
    if len(feats_s) != len(feats_t) or not feats_s:
        raise ValueError(f"hint_mse_loss: {len(feats_s)} student and {len(feats_t)} teacher stages")
    terms = [F.mse_loss(s.float(), t.detach().float()) for s, t in zip(feats_s, feats_t)]
    return torch.stack(terms).mean()


@DISTILLERS.register("fitnet")
class FitNet(Distiller):
    """Student margin CE + WEIGHT x hint_mse_loss(hinted student stages, teacher stages)."""

    defaults = {
        "WEIGHT": (1.5, "weight of the hint MSE (F-SKD table)"),
    }

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        self.weight = float(cfg.DISTILL.FITNET.WEIGHT)
        if probe.teacher is None:
            raise ConfigError("DISTILL.TYPE 'fitnet' needs a teacher: set TEACHER.BACKBONE and TEACHER.CHECKPOINT")
        if not cfg.STUDENT.HINTS:
            raise ConfigError("DISTILL.TYPE 'fitnet' regresses the student's hinted stages: set STUDENT.HINTS true")
        shapes_s = [tuple(s.shape[1:]) for s in probe.student.stages]
        shapes_t = [tuple(t.shape[1:]) for t in probe.teacher.stages]
        if shapes_s != shapes_t:
            raise ConfigError(
                f"DISTILL.TYPE 'fitnet': hinted student stages {shapes_s} do not match the teacher's {shapes_t}"
            )

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        return {"fitnet": self.weight * hint_mse_loss(step.student.stages, step.teacher.stages)}
