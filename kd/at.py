"""`at`: attention transfer (Zagoruyko & Komodakis), in the form RepDistiller and mdistiller compute.

Each stage's attention map is a(F) = normalize(flatten_hw(mean_c F^p)); when the student's and the
teacher's maps differ in size, the larger one is adaptive-average-pooled to the smaller. One
stage pair contributes the mean over B*HW of (a_s - a_t)^2 (not the paper's beta/2 * ||.||_2 form),
and the distiller sums the stage pairs and applies DISTILL.AT.WEIGHT (1000 in every reference).

Stages are `Features.stages`: f1..f3 for CIFAR ResNets/WRN/ShuffleNets, f1..f4 for VGG, ResNet50
and MobileNetV2 (the stem output is never a stage), layer1..layer4 for ImageNet-style ResNets
(the DCT repository's four scales). Face iResNets give their four stage outputs the same way, so
`at` also serves face students (same function, same weight convention). DISTILL.AT.STAGES picks
stage indices; [] pairs every stage, from the first, as RepDistiller's `zip` does when the two
networks have different stage counts.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError

logger = logging.getLogger(__name__)


def attention_map(feat: Tensor, p: int = 2) -> Tensor:
    """normalize(flatten_hw(mean_c F^p)): one L2-normalised spatial attention vector per sample."""
    return F.normalize(feat.pow(p).mean(1).reshape(feat.shape[0], -1))


def at_loss(feat_s: Tensor, feat_t: Tensor, p: int = 2) -> Tensor:
    """Attention-transfer term for ONE stage pair: mean over B*HW of (a(F_s) - a(F_t))^2.

    feat_s, feat_t: N x C x H x W (channel counts may differ). If H differs, the larger map is
    `adaptive_avg_pool2d`-ed to the smaller square size, as RepDistiller does. The teacher map
    is not differentiated. Computed in float32.
    """
    feat_s = feat_s.float()
    feat_t = feat_t.detach().float()
    size_s, size_t = feat_s.shape[2], feat_t.shape[2]
    if size_s > size_t:
        feat_s = F.adaptive_avg_pool2d(feat_s, (size_t, size_t))
    elif size_s < size_t:
        feat_t = F.adaptive_avg_pool2d(feat_t, (size_s, size_s))
    return (attention_map(feat_s, p) - attention_map(feat_t, p)).pow(2).mean()


def select_stage_pairs(stages: list[int], num_student: int, num_teacher: int) -> list[tuple[int, int]]:
    """(student index, teacher index) pairs for DISTILL.AT.STAGES; [] = every stage from the first."""
    if not stages:
        if num_student != num_teacher:
            logger.warning("at: student has %d stages, teacher %d; pairing the first %d (as RepDistiller)",
                           num_student, num_teacher, min(num_student, num_teacher))
        count = min(num_student, num_teacher)
        return [(i, i) for i in range(count)]
    pairs = []
    for index in stages:
        if not (-num_student <= index < num_student and -num_teacher <= index < num_teacher):
            raise ConfigError(
                f"DISTILL.AT.STAGES: stage {index} does not exist (student has {num_student} stages, "
                f"teacher {num_teacher}); use indices 0..{min(num_student, num_teacher) - 1} or []"
            )
        pairs.append((index % num_student, index % num_teacher))
    return pairs


@DISTILLERS.register("at")
class AttentionTransfer(Distiller):
    """Sum of `at_loss` over the chosen stage pairs, times DISTILL.AT.WEIGHT; no trainable extras."""

    defaults = {
        "WEIGHT": (1000.0, "beta (RepDistiller 1000)"),
        "P": (2, "power of the activation map"),
        "STAGES": ([], "stage indices to distil (Features.stages); [] = all, paired from the first"),
    }

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        if probe.teacher is None:
            raise ConfigError("DISTILL.TYPE 'at' needs a teacher: set TEACHER.BACKBONE and TEACHER.CHECKPOINT")
        self.weight = float(cfg.DISTILL.AT.WEIGHT)
        self.p = int(cfg.DISTILL.AT.P)
        self.pairs = select_stage_pairs(list(cfg.DISTILL.AT.STAGES), len(probe.student.stages),
                                        len(probe.teacher.stages))
        if not self.pairs:
            raise ConfigError("DISTILL.TYPE 'at': the student or the teacher returns no stages")

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        stages_s, stages_t = step.student.stages, step.teacher.stages
        total = torch.stack([at_loss(stages_s[i], stages_t[j], self.p) for i, j in self.pairs]).sum()
        return {"at": self.weight * total}
