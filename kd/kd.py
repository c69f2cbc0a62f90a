"""`kd`: Hinton knowledge distillation, KL between temperature-softened logits, scaled by T^2.

The RepDistiller / mdistiller weighting: loss = CE_WEIGHT * CE + KD.WEIGHT * kd_loss (their CIFAR
scripts use 0.1 and 0.9 with T = 4). Face students distil the head outputs of both networks at
the label (margin included), as F-SKD's logit term does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd import DISTILLERS
from kd.base import Distiller, Step


def kd_loss(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """T^2 * (1/B) * sum_b KL(softmax(z_t/T) || softmax(z_s/T)); teacher logits are not differentiated.

    Equal to RepDistiller's `DistillKL` and mdistiller's `kd_loss` (batch mean of the per-sample
    KL summed over classes). Computed in float32 whatever the autocast dtype.
    """
    t = float(temperature)
    log_p_s = F.log_softmax(logits_s.float() / t, dim=1)
    log_p_t = F.log_softmax(logits_t.detach().float() / t, dim=1)
    kl = torch.sum(log_p_t.exp() * (log_p_t - log_p_s), dim=1)
    return kl.mean() * (t * t)


@DISTILLERS.register("kd")
class KnowledgeDistillation(Distiller):
    """Hinton KD on the student's and teacher's class logits."""

    defaults = {
        "TEMPERATURE": (4.0, "softmax temperature T (loss scaled by T^2)"),
        "WEIGHT": (1.0, "weight of the KL term"),
    }
    cacheable_teacher = True  # reads only the teacher's logits

    def setup(self, cfg, probe) -> None:
        self.temperature = float(cfg.DISTILL.KD.TEMPERATURE)
        self.weight = float(cfg.DISTILL.KD.WEIGHT)

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        if step.logits_t is None:
            raise RuntimeError("kd needs teacher logits: give the teacher a head or a classifier backbone")
        return {"kd": self.weight * kd_loss(step.logits_s, step.logits_t, self.temperature)}
