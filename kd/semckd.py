"""`semckd` (also `ckd`, the DCT tables' name): cross-layer distillation with semantic calibration
(Chen et al., AAAI 2021), as the DCT repository's copy of the original code computes it.

Every student stage i may learn from every teacher stage j. The weights come from the batch itself:
each flattened stage gives a B x B Gram matrix X X^T; one MLP per teacher stage (key) and per student
stage (query) maps its rows B -> 2(B/4) -> B/4 (ReLU between, L2-normalised), and
w[b, i, :] = softmax_j(q_i[b] . k_j[b]). A value regressor per (i, j) (conv1x1 -> 2 t_C, BN, ReLU,
conv3x3, BN, ReLU, conv1x1 -> t_C, bias-free) maps the student map onto the teacher's; the student
is pooled first when its map is larger, else the teacher is pooled to the student's size (even when
equal). L = sum_{b,i,j} w[b,i,j] * mean_chw(v_ij[b] - t_ij[b])^2 / (B * n_s); the attention is not
detached. The distiller applies DISTILL.SEMCKD.WEIGHT (DCT `ALPHA: 400`).

The MLPs' input size is the batch size, fixed at build time to the per-rank batch
(SOLVER.BATCH_SIZE / world size); a batch of any other size (a short final batch) contributes a zero
term, as the original skips it. State-dict keys are the original module's, under `self_attention.`
(spec classification.md 2.12b). The original's quirk of leaving the module in eval mode after the
first validation is not reproduced: its BN layers train in training mode.

Stages: DISTILL.SEMCKD.STAGES picks indices of `Features.stages` on both sides; [] = all
(RepDistiller's `feat[1:-1]` on CIFAR). The DCT scene configs use [1, 2, 3] (its `features[1:-1]`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import ConfigError


class _MLPEmbed(nn.Module):
    """Linear(dim_in -> 2 dim_out), ReLU, Linear(-> dim_out), exact L2 row normalisation (no epsilon)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear2(F.relu(self.linear1(x.reshape(x.shape[0], -1))))
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


class _ValueRegressor(nn.Module):
    """conv1x1(s_C -> 2 t_C), BN, ReLU, conv3x3, BN, ReLU, conv1x1(-> t_C); bias-free convs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = 2 * out_channels
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, out_channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.regressor(x)


class _CrossLayerAttention(nn.Module):
    """Keys, queries and value regressors; attribute names are the original's (`key_weight{j}`,
    `query_weight{i}`, `regressor{i}{j}`), so the state dict loads under `self_attention.`."""

    def __init__(self, s_channels: list[int], t_channels: list[int], batch_size: int, factor: int) -> None:
        super().__init__()
        self.num_s, self.num_t = len(s_channels), len(t_channels)
        for j in range(self.num_t):
            setattr(self, f"key_weight{j}", _MLPEmbed(batch_size, batch_size // factor))
        for i in range(self.num_s):
            setattr(self, f"query_weight{i}", _MLPEmbed(batch_size, batch_size // factor))
        for i in range(self.num_s):
            for j in range(self.num_t):
                setattr(self, f"regressor{i}{j}", _ValueRegressor(s_channels[i], t_channels[j]))

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(attention B x n_s x n_t, per-sample MSE B x n_s x n_t)."""
        batch = feats_s[0].shape[0]
        gram = [f.reshape(batch, -1) @ f.reshape(batch, -1).t() for f in (*feats_s, *feats_t)]
        keys = torch.stack([getattr(self, f"key_weight{j}")(gram[self.num_s + j]) for j in range(self.num_t)], 2)
        queries = torch.stack([getattr(self, f"query_weight{i}")(gram[i]) for i in range(self.num_s)], 1)
        attention = torch.softmax(torch.bmm(queries, keys), dim=-1)
        errors = []
        for i, feat_s in enumerate(feats_s):
            row = []
            for j, feat_t in enumerate(feats_t):
                size_s, size_t = feat_s.shape[2], feat_t.shape[2]
                if size_s > size_t:
                    value, target = self._regress(i, j, F.adaptive_avg_pool2d(feat_s, (size_t, size_t))), feat_t
                else:
                    value, target = self._regress(i, j, feat_s), F.adaptive_avg_pool2d(feat_t, (size_s, size_s))
                row.append((value - target).pow(2).reshape(batch, -1).mean(1))
            errors.append(torch.stack(row, 1))
        return attention, torch.stack(errors, 1)

    def _regress(self, i: int, j: int, x: Tensor) -> Tensor:
        return getattr(self, f"regressor{i}{j}")(x)


class SemCKDLoss(nn.Module):
    """SemCKD over lists of stages; call `(feats_s, feats_t)` -> 0-dim loss (unweighted).

    s_channels, t_channels: channel counts of the student's and the teacher's stages; batch_size:
    the (fixed) batch the key/query MLPs take; factor: MLP output = batch_size // factor (4).
    The teacher maps are not differentiated. State: `self_attention.{query,key}_weight{n}.linear{1,2}.*`,
    `self_attention.regressor{i}{j}.regressor.{0,3,6}.weight` (convs) and `.regressor.{1,4}.*` (BN).
    """

    def __init__(self, s_channels: list[int], t_channels: list[int], batch_size: int, factor: int = 4) -> None:
        super().__init__()
        if batch_size < 2 or batch_size // factor < 1:
            raise ConfigError(f"DISTILL.TYPE 'semckd': the per-rank batch ({batch_size}) must be >= 2 and at least "
                              f"the factor ({factor}); raise SOLVER.BATCH_SIZE")
        if not s_channels or not t_channels:
            raise ConfigError("DISTILL.TYPE 'semckd': the student or the teacher gives no stages")
        self.batch_size = int(batch_size)
        self.self_attention = _CrossLayerAttention(list(s_channels), list(t_channels), self.batch_size, factor)

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        batch = feats_s[0].shape[0]
        if batch != self.batch_size:
            raise ConfigError(f"DISTILL.TYPE 'semckd': batch of {batch} samples, but the MLPs were built for "
                              f"{self.batch_size}; skip such batches (the distiller does)")
        attention, errors = self.self_attention(list(feats_s), [f.detach() for f in feats_t])
        return (attention * errors).sum() / (batch * len(feats_s))


def per_rank_batch(cfg: Any) -> int:
    """SOLVER.BATCH_SIZE divided by the number of processes (the batch each rank's MLPs see)."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return int(cfg.SOLVER.BATCH_SIZE) // world


def _select(stages: list[int], count: int, side: str) -> list[int]:
    if not stages:
        return list(range(count))
    for index in stages:
        if not -count <= index < count:
            raise ConfigError(f"DISTILL.SEMCKD.STAGES: stage {index} does not exist (the {side} has {count} "
                              f"stages); use indices 0..{count - 1} or []")
    return [index % count for index in stages]


@DISTILLERS.register("semckd")
@DISTILLERS.register("ckd")
class SemanticCalibrationDistillation(Distiller):
    """`SemCKDLoss` over the chosen stages of both networks, times DISTILL.SEMCKD.WEIGHT."""

    config_node = "SEMCKD"
    defaults = {
        "WEIGHT": (400.0, "beta (DCT config_CKD.yaml ALPHA 400)"),
        "FACTOR": (4, "key/query MLP output = per-rank batch // FACTOR"),
        "STAGES": ([], "stage indices of both networks (Features.stages); [] = all"),
    }

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        if probe.teacher is None:
            raise ConfigError("DISTILL.TYPE 'semckd' needs a teacher: set TEACHER.BACKBONE and TEACHER.CHECKPOINT")
        node = cfg.DISTILL.SEMCKD
        self.weight = float(node.WEIGHT)
        self.stages_s = _select(list(node.STAGES), len(probe.student.stages), "student")
        self.stages_t = _select(list(node.STAGES), len(probe.teacher.stages), "teacher")
        batch = per_rank_batch(cfg)
        if batch < 2:
            raise ConfigError(f"DISTILL.TYPE 'semckd': SOLVER.BATCH_SIZE gives {batch} sample(s) per process; "
                              "SemCKD's batch-similarity MLPs need at least 2 (use a larger batch)")
        self.semckd = SemCKDLoss([probe.student.stages[i].shape[1] for i in self.stages_s],
                                 [probe.teacher.stages[j].shape[1] for j in self.stages_t],
                                 batch, int(node.FACTOR)).to(probe.student.stages[0].device)

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        feats_s = [step.student.stages[i].float() for i in self.stages_s]
        if feats_s[0].shape[0] != self.semckd.batch_size:
            # a short batch: no term, as the original skips the batch; the zero keeps every extra in the graph
            return {"semckd": sum(p.sum() for p in self.semckd.parameters()) * 0.0}
        feats_t = [step.teacher.stages[j].float() for j in self.stages_t]
        return {"semckd": self.weight * self.semckd(feats_s, feats_t)}
