"""`dkd`: decoupled knowledge distillation (Zhao et al., CVPR 2022), as mdistiller computes it.

KD split into a target-class term and a non-target term (spec classification.md 2.4): with
p = softmax(z / T) and g the one-hot label, TCKD = T^2/B sum_b KL(b_t || b_s) over the binary
distributions b = [p_target, 1 - p_target] (sums of probabilities; the student side through log,
not log-softmax), and NCKD = T^2/B sum_b KL(p^_t || p^_s) with p^ = softmax(z / T - 1000 g) (the
target class masked out). DKD = ALPHA TCKD + BETA NCKD. The distiller scales it by
min(epoch / WARMUP, 1) with the 1-based main-stage epoch (1/20 in the first epoch), as mdistiller
does; its CE weight is DISTILL.CE_WEIGHT (mdistiller's DKD.CE_WEIGHT, 1.0). BETA is per pair in
mdistiller's CIFAR configs (2, 6 or 8).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from models.heads import one_hot_like
from utility.errors import ConfigError

MASK_OFFSET = 1000.0  # subtracted from the target logit (after dividing by T) to mask it out of NCKD


def _kl_sum(log_p_s: Tensor, p_t: Tensor) -> Tensor:
    """sum over all entries of p_t (log p_t - log p_s), with 0 log 0 = 0 (F.kl_div, reduction 'sum')."""
    return F.kl_div(log_p_s, p_t, reduction="sum")


def dkd_loss(logits_s: Tensor, logits_t: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 8.0,
             temperature: float = 4.0) -> Tensor:
    """alpha * TCKD + beta * NCKD, both batch means scaled by T^2; without the warm-up factor.

    logits_s, logits_t: B x K; target: B class indices. The teacher is not differentiated.
    At least float32, autocast off.
    """
    t = float(temperature)
    batch = target.shape[0]
    with torch.autocast(device_type=logits_s.device.type, enabled=False):
        z_s = logits_s.to(torch.promote_types(logits_s.dtype, torch.float32)) / t
        z_t = logits_t.detach().to(z_s.dtype) / t
        gt = one_hot_like(z_s, target)
        p_s, p_t = z_s.softmax(1), z_t.softmax(1)
        target_s, target_t = (p_s * gt).sum(1, keepdim=True), (p_t * gt).sum(1, keepdim=True)
        binary_s = torch.cat([target_s, (p_s * (1 - gt)).sum(1, keepdim=True)], dim=1)
        binary_t = torch.cat([target_t, (p_t * (1 - gt)).sum(1, keepdim=True)], dim=1)
        tckd = _kl_sum(torch.log(binary_s), binary_t) * (t * t) / batch
        log_q_s = F.log_softmax(z_s - MASK_OFFSET * gt, dim=1)
        q_t = F.softmax(z_t - MASK_OFFSET * gt, dim=1)
        nckd = _kl_sum(log_q_s, q_t) * (t * t) / batch
        return alpha * tckd + beta * nckd


@DISTILLERS.register("dkd")
class DecoupledKD(Distiller):
    """min(epoch / WARMUP, 1) x dkd_loss(student logits, teacher logits, labels, ALPHA, BETA, TEMPERATURE)."""

    defaults = {
        "ALPHA": (1.0, "weight of the target-class term TCKD (mdistiller 1.0)"),
        "BETA": (8.0, "weight of the non-target term NCKD (mdistiller CIFAR: 2, 6 or 8 per pair)"),
        "TEMPERATURE": (4.0, "softmax temperature T (terms scaled by T^2; mdistiller DKD.T)"),
        "WARMUP": (20, "epochs over which the DKD term ramps up as min(epoch / WARMUP, 1); 0 = none"),
    }

    cacheable_teacher = True  # reads only the teacher's logits

    def setup(self, cfg: Any, probe: Probe) -> None:
        node = cfg.DISTILL.DKD
        if probe.teacher is None:
            raise ConfigError("DISTILL.TYPE 'dkd' needs a teacher: set TEACHER.BACKBONE and TEACHER.CHECKPOINT")
        if int(node.WARMUP) < 0:
            raise ConfigError(f"DISTILL.DKD.WARMUP must be >= 0 epochs, got {node.WARMUP}")
        if float(node.TEMPERATURE) <= 0:
            raise ConfigError(f"DISTILL.DKD.TEMPERATURE must be positive, got {node.TEMPERATURE}")
        self.alpha, self.beta = float(node.ALPHA), float(node.BETA)
        self.temperature = float(node.TEMPERATURE)
        self.warmup = int(node.WARMUP)

    def warmup_factor(self, epoch: int) -> float:
        """min(epoch / WARMUP, 1) for the 1-based epoch (mdistiller's ramp)."""
        return 1.0 if self.warmup == 0 else min(epoch / self.warmup, 1.0)

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        if step.logits_t is None or step.logits_s is None:
            raise ConfigError("DISTILL.TYPE 'dkd' needs class logits from both networks (a classifier backbone "
                              "or a head; not SOLVER.PARTIAL_FC)")
        loss = dkd_loss(step.logits_s, step.logits_t, step.labels, self.alpha, self.beta, self.temperature)
        return {"dkd": self.warmup_factor(step.epoch) * loss}
