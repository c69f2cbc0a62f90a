"""`f_skd`: feature similarity knowledge distillation for low-resolution face recognition (F-SKD).

Loss (spec face.md §3.3-3.5), on top of the student's own margin cross-entropy:

    POINT_WEIGHT x mean_i cos_loss(X_i, F_i^T)           point term over the 4 stages
  + CROSS_WEIGHT x cross_sample_loss(X_4, X_4+, F_4^T, F_4^T+)   relational term on the last stage
  + LOGIT_WEIGHT x T^2 KL(teacher margin logits || student margin logits)   optional HKD, T = 4

X_i are the student's HINTED stage maps (hint_i(layer_i), `Features.stages` of a student built with
STUDENT.HINTS true), F_i^T the teacher's raw stage maps. FSKD-v1 distilled the raw student stages
without hints: DISTILL.F_SKD.REQUIRE_HINTS false allows that (decision #20: explicit keys instead of
the reference's substring matching of `distill_type`).

Partners for the cross term (DATA.PARTNER):
- "shuffle": an in-batch permutation (`batch["partner_perm"]`, else drawn here): X+ = X[perm], no
  extra forward pass; self-pairs and cross-identity pairs are possible (reproduced, §9 #22);
- "table": a same-identity partner per sample, precomputed with the HR teacher by
  `python -m engine.partners --config FILE` (§3.4; the paper recipe, margin 0.0; `select_partners`
  below is the selection rule); the partner views
  `image_partner` / `image_partner_teacher` run through the student and the teacher as second forward
  passes. Samples without a partner (stored as their own index in the table, or `partner_valid`
  false) are dropped from the cross term only, as the reference's `correct_index` does.

Logit term (quirk #16, reproduced by default): for ArcFace/CosFace students the teacher's logits are
the STUDENT head's formula (student margin m) evaluated with the TEACHER head's class weights; for
AdaFace/MagFace students the student's own head is applied to the teacher embedding.
DISTILL.F_SKD.LOGIT_TEACHER_HEAD true uses the teacher's own head instead.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from data.requests import BatchRequest
from kd import DISTILLERS
from kd.a_skd import cosine_distance
from kd.base import Distiller, Probe, Step
from kd.kd import kd_loss
from models.features import Features
from utility.errors import ConfigError

#: heads whose teacher logits come from the student's own head (quirk #16)
_SELF_HEAD_MARGINS = ("adaface", "magface")
#: the reference excludes near-duplicates (the anchor itself included) above this teacher cosine
_DUPLICATE_COSINE = 0.99


def feature_similarity_loss(feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
    """F-SKD point term: mean over the given stage pairs of the batch-mean 1 - cos of each sample's
    flattened feature map (cos with eps 1e-8). The teacher maps are not differentiated."""
    if len(feats_s) != len(feats_t) or not feats_s:
        raise ValueError(f"feature_similarity_loss: {len(feats_s)} student and {len(feats_t)} teacher stages")
    return torch.stack([cosine_distance(s, t.detach()) for s, t in zip(feats_s, feats_t)]).mean()


def _unit_frobenius(feat: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, HW) divided by each sample's Frobenius norm. No eps, as the reference:
    an all-zero map gives NaN (§9 #27, reproduced; the trainer's non-finite guard reports it)."""
    flat = feat.float().flatten(2)
    return flat / flat.norm(dim=(1, 2), keepdim=True)


def _affinity(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample spatial affinity n(a)^T n(b): (B, HW, HW), contracting over channels."""
    return torch.einsum("bcm,bcn->bmn", _unit_frobenius(a), _unit_frobenius(b))


def _masked_cosine_distance(a: Tensor, b: Tensor, keep: Tensor) -> Tensor:
    """`cosine_distance` averaged over the samples where `keep` is true (0 when none): a mask instead of
    `a[keep]`, whose data-dependent size would make CUDA wait for the host every step."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    per_sample = 1.0 - (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)
    return torch.where(keep, per_sample, 0.0).sum() / keep.sum().clamp(min=1)


def cross_sample_loss(feat_s: Tensor, feat_pos_s: Tensor, feat_t: Tensor, feat_pos_t: Tensor,
                      keep: Tensor | None = None) -> Tensor:
    """F-SKD cross-sample relational term on one stage (the last: 512 x 7 x 7 for iResNet).

    With R(A, A') = n(A)^T n(A') (per-sample Frobenius-normalised maps, 49 x 49 affinities) and
    c(P, Q) = batch-mean 1 - cos(vec P, vec Q):
        L = 1/2 [c(R_HH, R_HL) + c(R_HH, R_LH)] + c(R_HH, R_LL),
    R_HH = R(T, T+), R_HL = R(T, S+), R_LH = R(S, T+), R_LL = R(S, S+). Teacher inputs are detached;
    the student receives gradient through both its anchor and its partner maps. With `keep` (B bools) the
    batch means run over the kept samples only (0 when none is kept). Computed in float32 with
    autocast off: under bf16 autocast the affinity contraction would otherwise run in bf16.
    """
    with torch.autocast(device_type=feat_s.device.type, enabled=False):
        feat_s, feat_pos_s = feat_s.float(), feat_pos_s.float()
        feat_t, feat_pos_t = feat_t.detach().float(), feat_pos_t.detach().float()
        r_hh = _affinity(feat_t, feat_pos_t)
        r_hl = _affinity(feat_t, feat_pos_s)
        r_lh = _affinity(feat_s, feat_pos_t)
        r_ll = _affinity(feat_s, feat_pos_s)
        distance = cosine_distance if keep is None else functools.partial(_masked_cosine_distance, keep=keep)
        return 0.5 * (distance(r_hh, r_hl) + distance(r_hh, r_lh)) + distance(r_hh, r_ll)


def select_partners(embeddings: np.ndarray, labels: np.ndarray, margin: float = 0.0,
                    seed: int = 0) -> np.ndarray:
    """One same-identity partner index per sample (int64), -1 where a sample has none.

    Candidates follow F-SKD's `train_embed.py`: with L2-normalised teacher embeddings, cosines to
    same-identity samples above 0.99 (near-duplicates, the anchor itself included) are set to 0,
    and the samples whose cosine then exceeds `margin` are kept. One candidate is drawn uniformly with
    a seeded generator (the reference redraws from the list at every load; a fixed draw keeps the
    table a plain array). `margin` < -2 draws the partner uniformly from the whole set (commit 4054d3a).
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    count = len(labels)
    if embeddings.shape[0] != count:
        raise ValueError(f"select_partners: {embeddings.shape[0]} embeddings for {count} labels")
    rng = np.random.default_rng(seed)
    if margin < -2:
        return rng.integers(0, count, size=count, dtype=np.int64)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    partners = np.full(count, -1, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    boundaries = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, boundaries):
        similarity = unit[members] @ unit[members].T
        similarity[similarity > _DUPLICATE_COSINE] = 0.0
        for row, anchor in enumerate(members):
            candidates = members[similarity[row] > margin]
            if len(candidates):
                partners[anchor] = candidates[rng.integers(len(candidates))]
    return partners


def _partner_mask(batch: dict[str, Any], size: int, device: torch.device) -> Tensor | None:
    """Which samples have a partner (None = all): `partner_valid` when the batch has it, else the
    samples whose table partner is not themselves (`engine.partners.write_partner_table` stores "no partner" as the
    sample's own index, which the selection rule never picks for margins >= 0)."""
    if "partner_valid" in batch:
        return batch["partner_valid"].to(device=device, dtype=torch.bool).reshape(size)
    if torch.is_tensor(batch.get("partner_index")) and torch.is_tensor(batch.get("index")):
        return (batch["partner_index"] != batch["index"]).to(device).reshape(size)
    return None


@DISTILLERS.register("f_skd")
class FeatureSimilarityKD(Distiller):
    """Student margin CE + point term + cross-sample term (+ optional logit term); see module docstring."""

    defaults = {
        "POINT_WEIGHT": (20.0, "weight of the point (feature-similarity) term"),
        "CROSS_WEIGHT": (4.0, "weight of the cross-sample relational term (needs DATA.PARTNER); 0 = off"),
        "LOGIT_WEIGHT": (0.0, "weight of the optional logit (HKD) term; 0 = off"),
        "LOGIT_TEMPERATURE": (4.0, "temperature of the logit term"),
        "LOGIT_TEACHER_HEAD": (False, "teacher logits from its own head (False: student margin with teacher "
                                      "weights, quirk #16)"),
        "REQUIRE_HINTS": (True, "the student must have hint layers (False: FSKD-v1, raw stages)"),
        "PARTNER_MARGIN": (0.0, "partner table: same-identity samples with teacher cosine > this (< -2: any sample)"),
    }
    uses_teacher_logits = False  # its logit term builds its own teacher logits (teacher_pass)

    @classmethod
    def batch_request(cls, cfg: Any) -> BatchRequest:
        """Partner views (DATA.PARTNER) when the cross-sample term is on."""
        partner = str(cfg.DATA.PARTNER) if float(cfg.DISTILL.F_SKD.CROSS_WEIGHT) > 0 else ""
        return BatchRequest(partner=partner)

    def setup(self, cfg: Any, probe: Probe) -> None:
        node = cfg.DISTILL.F_SKD
        self.point_weight = float(node.POINT_WEIGHT)
        self.cross_weight = float(node.CROSS_WEIGHT)
        self.logit_weight = float(node.LOGIT_WEIGHT)
        self.temperature = float(node.LOGIT_TEMPERATURE)
        self.logit_teacher_head = bool(node.LOGIT_TEACHER_HEAD)
        self.partner_mode = str(cfg.DATA.PARTNER)
        self.student_margin = str(cfg.STUDENT.HEAD)
        if probe.teacher is None:
            raise ConfigError("DISTILL.TYPE 'f_skd' needs a teacher: set TEACHER.BACKBONE and TEACHER.CHECKPOINT")
        if node.REQUIRE_HINTS and not cfg.STUDENT.HINTS:
            raise ConfigError(
                "DISTILL.TYPE 'f_skd' distils the student's HINTED stage maps: set STUDENT.HINTS true "
                "(or DISTILL.F_SKD.REQUIRE_HINTS false for FSKD-v1's raw stages)"
            )
        if len(probe.student.stages) != len(probe.teacher.stages):
            raise ConfigError(
                f"DISTILL.TYPE 'f_skd': the student has {len(probe.student.stages)} stages and the teacher "
                f"{len(probe.teacher.stages)}; F-SKD pairs them stage by stage"
            )
        for i, (s, t) in enumerate(zip(probe.student.stages, probe.teacher.stages)):
            if s.shape[1:] != t.shape[1:]:
                raise ConfigError(
                    f"DISTILL.TYPE 'f_skd': stage {i} has shape {tuple(s.shape[1:])} for the student and "
                    f"{tuple(t.shape[1:])} for the teacher; give the student hint layers (STUDENT.HINTS) "
                    "that map to the teacher's widths"
                )
        if self.cross_weight > 0 and self.partner_mode not in ("shuffle", "table"):
            raise ConfigError(
                "DISTILL.F_SKD.CROSS_WEIGHT > 0 needs partner views: set DATA.PARTNER to 'shuffle' (in-batch) "
                "or 'table' (same identity, from `python -m engine.partners`), or CROSS_WEIGHT 0"
            )
        if self.logit_weight > 0 and (not self.student_margin or cfg.SOLVER.PARTIAL_FC):
            raise ConfigError("DISTILL.F_SKD.LOGIT_WEIGHT > 0 distils full margin-head logits: set STUDENT.HEAD "
                              "and leave SOLVER.PARTIAL_FC off")

    # -- forward passes -------------------------------------------------------------------------
    def teacher_pass(self, step: Step) -> None:
        """Teacher anchor, then (table partners) the teacher's partner view and (logit term) its logits,
        all before the student runs, each a separate forward so every batch-norm sees the same batches
        as in the reference; teacher logits for the logit term are taken before the student head runs
        (AdaFace's batch statistics end with the student's). The teacher's own head runs only when a
        companion method needs its logits (the reference never calls it; an AdaFace head would
        overwrite its batch statistics)."""
        batch, labels = step.batch, step.batch.get("label")
        step.teacher = self._teacher_features(batch.get("image_teacher", batch["image"]))
        if self._two_views:
            step.extra["partner_teacher"] = self._teacher_features(batch["image_partner_teacher"])
        if self.logit_weight > 0:
            step.extra["logits_t_distill"] = self._teacher_margin_logits(step.teacher.out, labels)
        if self.teacher_logits_needed and self.teacher.network.head is not None:  # e.g. "f_skd+kd"
            with torch.no_grad():
                step.logits_t = self.teacher.network.head(step.teacher.out, labels)

    def student_extras(self, step: Step) -> None:
        """The student's partner view (table partners), after its anchor pass."""
        if self._two_views:
            step.extra["partner_student"] = self.student.forward_features(step.batch["image_partner"])

    @property
    def _two_views(self) -> bool:
        return self.cross_weight > 0 and self.partner_mode == "table"

    @torch.no_grad()
    def _teacher_features(self, images: Tensor) -> Features:
        return self.teacher.network.forward_features(images)

    @torch.no_grad()
    def _teacher_margin_logits(self, embedding_t: Tensor, labels: Tensor) -> Tensor:
        """Teacher-side logits of the HKD term (quirk #16 by default; see the module docstring)."""
        teacher_head = self.teacher.network.head
        if self.logit_teacher_head:
            if teacher_head is None:
                raise ConfigError("DISTILL.F_SKD.LOGIT_TEACHER_HEAD needs TEACHER.HEAD (and its checkpoint)")
            return teacher_head(embedding_t, labels)
        head = self.student.head
        if self.student_margin in _SELF_HEAD_MARGINS:
            return head(embedding_t, labels)
        if teacher_head is None:
            raise ConfigError(
                "DISTILL.F_SKD.LOGIT_WEIGHT > 0: the teacher's class weights are needed; set TEACHER.HEAD "
                "and TEACHER.HEAD_CHECKPOINT (or a teacher checkpoint that stores its head)"
            )
        return functional_call(head, {"weight": teacher_head.weight}, (embedding_t, labels))

    # -- loss terms --------------------------------------------------------------------------------
    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        stages_s, stages_t = step.student.stages, step.teacher.stages
        if self.point_weight > 0:
            losses["f_skd_point"] = self.point_weight * feature_similarity_loss(stages_s, stages_t)
        if self.cross_weight > 0:
            losses["f_skd_cross"] = self.cross_weight * self._cross_term(step)
        if self.logit_weight > 0:
            losses["f_skd_logit"] = self.logit_weight * kd_loss(step.logits_s, step.extra["logits_t_distill"],
                                                                self.temperature)
        return losses

    def _cross_term(self, step: Step) -> Tensor:
        last_s, last_t = step.student.stages[-1], step.teacher.stages[-1]
        size = last_s.shape[0]
        if self.partner_mode == "shuffle":
            perm = step.batch.get("partner_perm")
            perm = torch.randperm(size, device=last_s.device) if perm is None else perm.to(last_s.device).long()
            return cross_sample_loss(last_s, last_s[perm], last_t, last_t[perm])
        pos_s = step.extra["partner_student"].stages[-1]
        pos_t = step.extra["partner_teacher"].stages[-1]
        keep = _partner_mask(step.batch, size, last_s.device)  # no partner in the batch: the term is 0
        return cross_sample_loss(last_s, pos_s, last_t, pos_t, keep=keep)
