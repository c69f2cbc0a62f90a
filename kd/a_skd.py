"""`a_skd`: attention similarity knowledge distillation (A-SKD, "teaching where to look", ECCV 2022).

The low-resolution student is taught to put its CBAM attention where the high-resolution teacher
puts it: per block, the channel map and the spatial map of the student are pulled towards the
teacher's by a cosine loss (spec face.md §3.1, §3.2). Two published forms exist and both are kept
(decision #1 of face.md §9):

- official A-SKD (default): the PRE-sigmoid CBAM logits of the A-SKD CBAM (`attention="cbam_a_skd"`,
  `DISTILL.A_SKD.MAPS logits`), summed over the 2 x 24 maps of an iResNet50 and weighted by 5.0;
- the F-SKD re-implementation: the POST-sigmoid gates of the Jongchan CBAM (`attention="cbam"`,
  `MAPS gates`), averaged over the maps (`REDUCTION mean`) and weighted by 80.

The student's own margin cross-entropy comes from the base class (CE on its head's logits).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError

#: Features field holding each MAPS choice
_MAP_FIELDS = {"logits": "attention_logits", "gates": "attention"}


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """Batch mean of 1 - cos(vec a_i, vec b_i), each sample flattened over all non-batch dimensions.

    The cosine is <a, b> / max(|a| |b|, 1e-8), the `cos_loss` shared by the A-SKD and F-SKD code
    (spec face.md §0). Computed in float32 whatever the autocast dtype.
    """
    a = a.float().reshape(a.shape[0], -1)
    b = b.float().reshape(b.shape[0], -1)
    dot = (a * b).sum(dim=1)
    norms = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)
    return (1.0 - dot / norms).mean()


def attention_similarity_loss(att_s: list[Tensor], att_t: list[Tensor], reduction: str = "sum") -> Tensor:
    """A-SKD term over two equal-length lists of attention maps (any shapes, batch first).

    Each pair contributes `cosine_distance(student_map, teacher_map)`; the terms are summed
    (`reduction="sum"`, the official A-SKD code) or averaged (`"mean"`, the F-SKD re-implementation).
    Maps are flattened per sample, so a (B, C, 1, 1) channel logit and a (B, C) gate give the same
    value. Unweighted: the distiller applies lambda. Teacher maps are not differentiated.
    """
    if len(att_s) != len(att_t):
        raise ValueError(f"attention_similarity_loss: {len(att_s)} student maps but {len(att_t)} teacher maps")
    if not att_s:
        raise ValueError("attention_similarity_loss: no attention maps given")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"attention_similarity_loss: reduction must be 'sum' or 'mean', got {reduction!r}")
    terms = torch.stack([cosine_distance(s, t.detach()) for s, t in zip(att_s, att_t)])
    return terms.sum() if reduction == "sum" else terms.mean()


def interleave_pairs(pairs: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """[(CA_0, SA_0), (CA_1, SA_1), ...] -> [CA_0, SA_0, CA_1, SA_1, ...] (the reference's order)."""
    return [m for pair in pairs for m in pair]


@DISTILLERS.register("a_skd")
class AttentionSimilarityKD(Distiller):
    """Margin CE of the student + WEIGHT x attention_similarity_loss over every CBAM block's maps.

    Student and teacher must both be CBAM networks of the same depth (A-SKD: iResNet50 with
    `attention="cbam_a_skd"` for the official maps, `"cbam"` for the F-SKD baseline). The student
    has no hint layers (spec face.md §9 #21) and starts from scratch.
    """

    defaults = {
        "WEIGHT": (5.0, "lambda (A-SKD 5.0 with sum; F-SKD baseline 80 with mean)"),
        "REDUCTION": ("sum", "'sum' over maps (A-SKD) or 'mean' (F-SKD re-implementation)", ("sum", "mean")),
        "MAPS": ("logits", "'logits' (pre-sigmoid, A-SKD) or 'gates' (post-sigmoid, F-SKD)", ("logits", "gates")),
    }

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        node = cfg.DISTILL.A_SKD
        self.weight = float(node.WEIGHT)
        self.reduction = str(node.REDUCTION)
        self.field = _MAP_FIELDS[str(node.MAPS)]
        if probe.teacher is None:
            raise ConfigError("DISTILL.TYPE 'a_skd' needs a teacher: set TEACHER.BACKBONE and TEACHER.CHECKPOINT")
        count_s = len(getattr(probe.student, self.field))
        count_t = len(getattr(probe.teacher, self.field))
        if count_s == 0 or count_t == 0:
            which = "STUDENT" if count_s == 0 else "TEACHER"
            raise ConfigError(
                f"DISTILL.TYPE 'a_skd' distils CBAM attention maps, but the {which} returns none: set "
                f"{which}.ATTENTION to 'cbam_a_skd' (official A-SKD) or 'cbam' (F-SKD baseline)"
            )
        if count_s != count_t:
            raise ConfigError(
                f"DISTILL.TYPE 'a_skd': the student has {count_s} CBAM blocks and the teacher {count_t}; "
                "A-SKD pairs them block by block, so use the same depth for both"
            )

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        att_s = interleave_pairs(getattr(step.student, self.field))
        att_t = interleave_pairs(getattr(step.teacher, self.field))
        return {"a_skd": self.weight * attention_similarity_loss(att_s, att_t, self.reduction)}
