"""AdaDistill (Boutros et al., ECCV 2024) and its non-adaptive form AMLDistill (ArcDistill / CosDistill).

AdaDistill (`adadistill`, spec adadistill.md §2.5): the student is trained with a margin softmax
whose class centres are not learned but rebuilt from the frozen teacher's normalised embeddings:
for every sample, w_y <- alpha * w_y + (1 - alpha) * t_hat, with a per-sample momentum
alpha = clip(cos(s_hat, t_hat), 1e-6, 1) or, weighted (default), alpha' =
clip(cos(s_hat, t_hat) * clip(cos(w_y, t_hat), 1e-6, 1), 1e-6, 1). The centres are updated FIRST
and the logits then use the updated centres, as the reference does. That margin softmax is the
student's only loss (it replaces the usual head: STUDENT.HEAD must be empty).

AMLDistill (`arcdistill` / `cosdistill`, §2.4): the same margin softmax over the teacher's frozen
class centres (the teacher head's weight, TEACHER.HEAD + its checkpoint); the teacher backbone is
never run.

Decisions (adadistill.md §7): #1 and #2 fixed (the reference crashes on the weighted flag and on
the plain-alpha path; plain alpha here is clip(c, 1e-6, 1), the poster's form); #7 reproduced
deterministically (duplicate labels in a batch: every alpha comes from the old centres and the
LAST occurrence in batch order writes the centre); #8 reproduced (centres are per-process and
never synchronised after DDP's initial broadcast; the trainer wraps with broadcast_buffers off);
#9 reproduced (ArcFace gradient through arccos/cos, no easy-margin fallback); #12 fixed (the
centres are a buffer in the state dict, so resume is exact).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step, method_names
from models.heads import one_hot_like
from utility.errors import ConfigError

MARGINS = ("arcface", "cosface")


def _unit_rows(x: Tensor) -> Tensor:
    """x / |x| per row, without an epsilon (the reference's `l2_norm`)."""
    return x / x.norm(dim=1, keepdim=True)


def margin_logits(emb_unit: Tensor, centres: Tensor, labels: Tensor, margin: str, s: float, m: float) -> Tensor:
    """AdaDistill's ArcFace / CosFace logits for unit embeddings against (C, D) centres.

    cos = clamp(e . w_j / |w_j|, -1, 1); ArcFace: s cos(arccos(cos) + m [j = y]) with autograd through
    arccos and cos and no fallback past pi; CosFace: s (cos - m [j = y]).
    """
    cos = (emb_unit @ _unit_rows(centres).t()).clamp(-1.0, 1.0)
    at_label = one_hot_like(cos, labels)
    if margin == "arcface":
        return s * torch.cos(torch.acos(cos) + m * at_label)
    return s * (cos - m * at_label)


def last_position(labels: Tensor) -> Tensor:
    """For each sample, the batch position of the last sample with its label (B x B comparisons: no
    torch.unique, whose output size would make CUDA wait for the host)."""
    positions = torch.arange(labels.shape[0], device=labels.device)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    return torch.where(same, positions.unsqueeze(0), -1).amax(dim=1)


def last_occurrence(labels: Tensor) -> Tensor:
    """Boolean mask of the samples whose label does not appear again later in the batch."""
    return last_position(labels) == torch.arange(labels.shape[0], device=labels.device)


class AdaDistillLoss(nn.Module):
    """Adaptive class-centre distillation loss; call `(emb_s, emb_t, labels) -> (loss, logits)`.

    emb_s, emb_t: RAW (B, D) student and teacher embeddings; both are L2-normalised here (twice, as
    the reference normalises in the script and again in the header: numerically a no-op but kept).
    `weight` holds the (num_classes, D) centres as a buffer: in the state dict, never trained, changed
    only by the EMA. Initial centres ~ N(0, 0.01^2), as the reference's header (not the teacher's).
    After each call `stats` holds the batch means the reference logs: alpha, lambda (weighted only),
    cos(student, teacher).
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: str = "arcface", s: float = 64.0,
                 m: float = 0.45, weighted_alpha: bool = True) -> None:
        super().__init__()
        if margin not in MARGINS:
            raise ConfigError(f"AdaDistillLoss: margin must be one of {list(MARGINS)}, got {margin!r}")
        self.margin = margin
        self.s = float(s)
        self.m = float(m)
        self.weighted_alpha = bool(weighted_alpha)
        self.register_buffer("weight", torch.randn(num_classes, embedding_size) * 0.01)
        self.stats: dict[str, Tensor] = {}

    @torch.no_grad()
    def update_centres(self, emb_unit_s: Tensor, emb_unit_t: Tensor, labels: Tensor) -> Tensor:
        """EMA of the labelled centres towards the teacher embeddings; returns the per-sample alpha."""
        cos_st = F.cosine_similarity(emb_unit_s, emb_unit_t, dim=1, eps=1e-8).clamp(-1.0, 1.0)
        old = self.weight[labels]
        if self.weighted_alpha:
            lam = F.cosine_similarity(old, emb_unit_t, dim=1, eps=1e-8).clamp(1e-6, 1.0)
            alpha = (cos_st * lam).clamp(1e-6, 1.0)
            self.stats = {"lambda": lam.mean()}
        else:
            alpha = cos_st.clamp(1e-6, 1.0)
            self.stats = {}
        new = alpha.unsqueeze(1) * old + (1.0 - alpha.unsqueeze(1)) * emb_unit_t
        # every sample of a label writes the value of its last occurrence: duplicate writes agree, so the
        # result does not depend on their order, and no boolean indexing syncs with the host
        self.weight.index_put_((labels,), new[last_position(labels)].to(self.weight.dtype))
        self.stats.update({"alpha": alpha.mean(), "cos_student_teacher": cos_st.mean()})
        return alpha

    def forward(self, emb_s: Tensor, emb_t: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        # in the centres' precision (float32) even under autocast: the reference runs fp32 only
        with torch.autocast(emb_s.device.type, enabled=False):
            emb_unit_s = _unit_rows(F.normalize(emb_s.to(self.weight.dtype), dim=1))
            emb_unit_t = _unit_rows(F.normalize(emb_t.detach().to(self.weight.dtype), dim=1))
            self.update_centres(emb_unit_s.detach(), emb_unit_t, labels)
            logits = margin_logits(emb_unit_s, self.weight, labels, self.margin, self.s, self.m)
            return F.cross_entropy(logits, labels), logits


def _require_headless_student(cfg: Any, name: str) -> None:
    if cfg.STUDENT.HEAD:
        raise ConfigError(
            f"DISTILL.TYPE '{name}' supplies the student's margin softmax itself: set STUDENT.HEAD '' "
            f"(got '{cfg.STUDENT.HEAD}')"
        )


@DISTILLERS.register("adadistill")
class AdaDistill(Distiller):
    """The student's loss is AdaDistillLoss (margin, s, m, weighted alpha from DISTILL.ADADISTILL)."""

    defaults = {
        "MARGIN": ("arcface", "margin inside the centre head: arcface | cosface", ("arcface", "cosface")),
        "S": (64.0, "scale (also arcdistill / cosdistill)"),
        "M": (0.45, "margin (also arcdistill / cosdistill)"),
        "WEIGHTED_ALPHA": (True, "alpha' = alpha * cos(centre, teacher)"),
    }
    cacheable_teacher = True  # reads only the teacher's embedding

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        _require_headless_student(cfg, "adadistill")
        if probe.teacher is None:
            raise ConfigError("DISTILL.TYPE 'adadistill' needs a teacher: set TEACHER.BACKBONE and TEACHER.CHECKPOINT")
        dim_s, dim_t = probe.student.out.shape[1], probe.teacher.out.shape[1]
        if dim_s != dim_t:
            raise ConfigError(f"DISTILL.TYPE 'adadistill': student embedding {dim_s}-d, teacher {dim_t}-d; "
                              "the centres mix both, so EMBEDDING_SIZE must agree")
        if probe.num_classes <= 0:
            raise ConfigError("DISTILL.TYPE 'adadistill' needs the number of classes (DATA.NUM_CLASSES or the data)")
        node = cfg.DISTILL.ADADISTILL
        self.criterion = AdaDistillLoss(probe.num_classes, dim_s, str(node.MARGIN), float(node.S), float(node.M),
                                        bool(node.WEIGHTED_ALPHA))

    def classification_losses(self, step: Step) -> dict[str, Tensor]:
        loss, logits = self.criterion(step.student.out, step.teacher.out, step.labels)
        step.logits_s = logits
        return {"adadistill": self.ce_weight * loss}


class _AMLDistill(Distiller):
    """Margin softmax of the student against the teacher's frozen class centres (poster Eq. 4)."""

    margin = "arcface"
    config_node = "ADADISTILL"  # shares AdaDistill's S and M
    runs_teacher = False  # the reference builds the teacher backbone but never runs it
    uses_teacher_logits = False

    def setup(self, cfg: Any, probe: Probe) -> None:
        name = method_names(cfg)[0]
        _require_headless_student(cfg, name)
        head = self.teacher.network.head if self.teacher is not None else None
        if head is None or getattr(head, "weight", None) is None:
            raise ConfigError(
                f"DISTILL.TYPE '{name}' uses the teacher's class centres: set TEACHER.HEAD (arcface or cosface) "
                "and TEACHER.HEAD_CHECKPOINT, or a teacher checkpoint that stores its head"
            )
        if head.weight.shape[1] != probe.student.out.shape[1]:
            raise ConfigError(f"DISTILL.TYPE '{name}': teacher centres are {head.weight.shape[1]}-d, the student "
                              f"embedding {probe.student.out.shape[1]}-d")
        self.s = float(cfg.DISTILL.ADADISTILL.S)
        self.m = float(cfg.DISTILL.ADADISTILL.M)

    def classification_losses(self, step: Step) -> dict[str, Tensor]:
        with torch.autocast(step.student.out.device.type, enabled=False):  # fp32, as the reference
            centres = self.teacher.network.head.weight.detach().float()
            emb_unit = _unit_rows(F.normalize(step.student.out.float(), dim=1))
            logits = margin_logits(emb_unit, centres, step.labels, self.margin, self.s, self.m)
            loss = F.cross_entropy(logits, step.labels)
        step.logits_s = logits
        return {self.loss_name: self.ce_weight * loss}


@DISTILLERS.register("arcdistill")
class ArcDistill(_AMLDistill):
    """AMLDistill with AdaDistill's ArcFace (s, m from DISTILL.ADADISTILL)."""

    margin = "arcface"
    loss_name = "arcdistill"


@DISTILLERS.register("cosdistill")
class CosDistill(_AMLDistill):
    """AMLDistill with AdaDistill's CosFace (s, m from DISTILL.ADADISTILL)."""

    margin = "cosface"
    loss_name = "cosdistill"
