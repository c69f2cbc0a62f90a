"""`cc`: correlation congruence (Peng et al., ICCV 2019) in RepDistiller's variant.

Both pooled vectors (`Features.pooled`, RepDistiller `feat[-1]`) go through a trainable linear
embedding (one per side, d -> DISTILL.CC.FEAT_DIM = 128, no normalisation: RepDistiller's
`LinearEmbed`); with delta = |e_s - e_t| the term is the mean over b = 0..B-2 of
sum_d delta[b, d] * delta[b + 1, d]: products of CONSECUTIVE samples in batch order, not the
paper's kernel form (spec classification.md 2.10, pitfall 5: reproduced, it is the loss). The
teacher embedding trains too (the teacher's features are fixed, its embedding is not). The
distiller multiplies by DISTILL.CC.WEIGHT (0.02; CE weight 1, no KD).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError


def cc_loss(emb_s: Tensor, emb_t: Tensor) -> Tensor:
    """mean_{b < B-1} sum_d |e_s - e_t|[b, d] * |e_s - e_t|[b + 1, d], a 0-dim tensor.

    emb_s, emb_t: B x D, already embedded (both sides differentiable). A batch of one has no
    consecutive pair (the original returns NaN): a ConfigError naming SOLVER.BATCH_SIZE instead.
    """
    if emb_s.shape[0] < 2:
        raise ConfigError(f"DISTILL.TYPE 'cc' pairs consecutive samples, but a batch has {emb_s.shape[0]}: "
                          "set SOLVER.BATCH_SIZE to at least 2 per process")
    delta = (emb_s.to(torch.promote_types(emb_s.dtype, torch.float32)) - emb_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@DISTILLERS.register("cc")
class CorrelationCongruence(Distiller):
    """WEIGHT x cc_loss(embed_s(student pooled), embed_t(teacher pooled)); both embeddings train."""

    defaults = {
        "WEIGHT": (0.02, "beta (RepDistiller 0.02)"),
        "FEAT_DIM": (128, "size of both linear embeddings (RepDistiller --feat_dim)"),
    }

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        node = cfg.DISTILL.CC
        if probe.teacher is None or probe.teacher.pooled is None or probe.student.pooled is None:
            raise ConfigError("DISTILL.TYPE 'cc' needs pooled vectors from both student and teacher "
                              "(set TEACHER.BACKBONE to a backbone that returns Features.pooled)")
        if int(node.FEAT_DIM) <= 0:
            raise ConfigError(f"DISTILL.CC.FEAT_DIM must be a positive embedding size, got {node.FEAT_DIM}")
        self.weight = float(node.WEIGHT)
        s_dim = probe.student.pooled.flatten(1).shape[1]
        t_dim = probe.teacher.pooled.flatten(1).shape[1]
        device = probe.student.pooled.device
        self.embed_s = nn.Linear(s_dim, int(node.FEAT_DIM)).to(device)
        self.embed_t = nn.Linear(t_dim, int(node.FEAT_DIM)).to(device)

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        emb_s = self.embed_s(step.student.pooled.flatten(1))
        emb_t = self.embed_t(step.teacher.pooled.detach().flatten(1))
        return {"cc": self.weight * cc_loss(emb_s, emb_t)}
