"""`fsp`: flow of solution procedure (Yim et al., CVPR 2017), as RepDistiller computes and trains it.

Within each network, every consecutive pair of maps of [stem] + stages (RepDistiller's `feat[:-1]`)
gives an FSP matrix G = mean_hw(bottom_a * top_b), B x C_top x C_bottom, after the larger of the two
maps is average-pooled to the smaller one's (H, H). `fsp_loss` sums, over the pairs, the mean of
(G_s - G_t)^2, so the student's and the teacher's maps must have the same channel counts, stage by
stage (the CIFAR pairs of equal widths: resnet110/56 -> resnet20/32, resnet32x4 -> resnet8x4,
wrn_40_2 -> wrn_16_2, vgg13 -> vgg8).

RepDistiller uses FSP only in an init stage: DISTILL.FSP.INIT_EPOCHS (30) epochs of SGD at the base
lr (SOLVER.LR, constant) over the student, minimising `fsp_loss` alone; then the main stage trains
with CE only (its `-b 50` is never read). DISTILL.FSP.WEIGHT > 0 also adds the term to the main stage.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kd import DISTILLERS
from kd.base import Distiller, InitStage, Probe, Step
from models.features import Features
from utility.errors import ConfigError


def _pool_to(feat: Tensor, size: int) -> Tensor:
    return F.adaptive_avg_pool2d(feat, (size, size))


def fsp_matrices(feats: list[Tensor]) -> list[Tensor]:
    """One B x C_top x C_bottom matrix per consecutive pair (bottom = feats[i], top = feats[i + 1])."""
    matrices = []
    for bottom, top in zip(feats[:-1], feats[1:]):
        h_bottom, h_top = bottom.shape[2], top.shape[2]
        if h_bottom > h_top:
            bottom = _pool_to(bottom, h_top)
        elif h_bottom < h_top:
            top = _pool_to(top, h_bottom)
        batch = bottom.shape[0]
        b = bottom.reshape(batch, bottom.shape[1], -1)
        t = top.reshape(batch, top.shape[1], -1)
        matrices.append(torch.bmm(t, b.transpose(1, 2)) / b.shape[2])
    return matrices


def fsp_loss(feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
    """FSP over lists of consecutive maps (stem first): sum over pairs of mean((G_s - G_t)^2).

    feats_s, feats_t: equally long lists of N x C x H x W maps with equal channel counts position
    by position (a mismatch is a ConfigError naming DISTILL.TYPE 'fsp'). The teacher is not
    differentiated. Returns a 0-dim float32 tensor, autocast off.
    """
    if len(feats_s) != len(feats_t) or len(feats_s) < 2:
        raise ConfigError(f"DISTILL.TYPE 'fsp': student gives {len(feats_s)} maps, teacher {len(feats_t)}; "
                          "FSP needs the same number (>= 2) on both sides")
    channels_s = [f.shape[1] for f in feats_s]
    channels_t = [f.shape[1] for f in feats_t]
    if channels_s != channels_t:
        raise ConfigError(f"DISTILL.TYPE 'fsp': stem + stage channels differ (student {channels_s}, teacher "
                          f"{channels_t}); FSP needs a teacher/student pair of equal widths")
    with torch.autocast(device_type=feats_s[0].device.type, enabled=False):  # bmm would run in bf16
        g_s = fsp_matrices([f.float() for f in feats_s])
        g_t = fsp_matrices([f.detach().float() for f in feats_t])
        return torch.stack([(s - t).pow(2).mean() for s, t in zip(g_s, g_t)]).sum()


def _maps(features: Features) -> list[Tensor]:
    return [features.stem, *features.stages]


@DISTILLERS.register("fsp")
class FlowOfSolutionProcedure(Distiller):
    """`fsp_loss` in an init stage over the student; the main stage adds WEIGHT x the term (0: CE only)."""

    defaults = {
        "INIT_EPOCHS": (30.0, "epochs of the FSP-only init stage (RepDistiller init_epochs 30), at SOLVER.LR"),
        "WEIGHT": (0.0, "weight of fsp_loss in the main stage (RepDistiller: 0, main stage CE only)"),
    }

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        if probe.teacher is None:
            raise ConfigError("DISTILL.TYPE 'fsp' needs a teacher: set TEACHER.BACKBONE and TEACHER.CHECKPOINT")
        for role, features in (("student", probe.student), ("teacher", probe.teacher)):
            if features.stem is None or not features.stages:
                raise ConfigError(f"DISTILL.TYPE 'fsp': the {role} backbone returns no stem feature or no "
                                  "stages (FSP reads [stem] + stages; the CIFAR zoo has them)")
        fsp_loss(_maps(probe.student), _maps(probe.teacher))  # channel mismatch -> ConfigError at build time
        node = cfg.DISTILL.FSP
        self.weight = float(node.WEIGHT)
        self.init_epochs = float(node.INIT_EPOCHS)
        if self.init_epochs < 0:
            raise ConfigError(f"DISTILL.FSP.INIT_EPOCHS must be >= 0, got {self.init_epochs}")
        self.init_lr = float(cfg.SOLVER.LR)

    def init_stage(self) -> InitStage | None:
        if self.init_epochs == 0 or self.student is None:  # as a companion, the owner decides the stages
            return None
        return InitStage(epochs=self.init_epochs, lr=self.init_lr,
                         parameters=[p for p in self.student.parameters() if p.requires_grad])

    def init_losses(self, step: Step) -> dict[str, Tensor]:
        return {"fsp": fsp_loss(_maps(step.student), _maps(step.teacher))}

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        if self.weight == 0:
            return {}
        return {"fsp": self.weight * fsp_loss(_maps(step.student), _maps(step.teacher))}
