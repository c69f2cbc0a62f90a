"""F-SKD: point and cross-sample terms against hand computations, partner masking and selection.

(One-step training, the logit term and the partner-table command are in test_face_distillers.py.)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kd.base import Probe, Step
from kd.f_skd import FeatureSimilarityKD, cross_sample_loss, feature_similarity_loss, select_partners
from models.features import Features
from utility.config import load_config
from utility.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "face"
TINY = ["STUDENT.BACKBONE", "face.iresnet18", "TEACHER.BACKBONE", "face.iresnet18", "STUDENT.POOLING", "A",
        "TEACHER.POOLING", "A", "DATA.IMAGE_SIZE", "32"]


# -- hand computations (plain loops over NumPy arrays) -------------------------------------------
def _cos_loss_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    total = 0.0
    for i in range(a.shape[0]):
        x, y = a[i].ravel().astype(np.float64), b[i].ravel().astype(np.float64)
        total += 1.0 - float(x @ y) / max(math.sqrt(float(x @ x)) * math.sqrt(float(y @ y)), 1e-8)
    return total / a.shape[0]


def _affinity_by_hand(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """R[b, m, n] = sum_c n(a)[b, c, m] * n(b)[b, c, n], n = per-sample Frobenius normalisation."""
    batch, channels = a.shape[:2]
    positions = a.shape[2] * a.shape[3]
    out = np.zeros((batch, positions, positions))
    for i in range(batch):
        fa = a[i].reshape(channels, positions).astype(np.float64)
        fb = b[i].reshape(channels, positions).astype(np.float64)
        fa, fb = fa / np.sqrt((fa ** 2).sum()), fb / np.sqrt((fb ** 2).sum())
        for m in range(positions):
            for n in range(positions):
                out[i, m, n] = sum(fa[c, m] * fb[c, n] for c in range(channels))
    return out


def _cross_by_hand(s: np.ndarray, sp: np.ndarray, t: np.ndarray, tp: np.ndarray) -> float:
    r_hh, r_hl = _affinity_by_hand(t, tp), _affinity_by_hand(t, sp)
    r_lh, r_ll = _affinity_by_hand(s, tp), _affinity_by_hand(s, sp)
    return (0.5 * (_cos_loss_by_hand(r_hh, r_hl) + _cos_loss_by_hand(r_hh, r_lh))
            + _cos_loss_by_hand(r_hh, r_ll))


def _maps(seed: int, shape=(2, 3, 2, 2)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(4)]


# -- pure functions ---------------------------------------------------------------------------------
def test_point_term_is_the_mean_over_stages_of_cos_loss():
    generator = torch.Generator().manual_seed(0)
    feats_s = [torch.randn(3, 4, 5, 5, generator=generator), torch.randn(3, 8, 2, 2, generator=generator)]
    feats_t = [torch.randn(3, 4, 5, 5, generator=generator), torch.randn(3, 8, 2, 2, generator=generator)]
    expected = sum(_cos_loss_by_hand(s.numpy(), t.numpy()) for s, t in zip(feats_s, feats_t)) / 2
    assert feature_similarity_loss(feats_s, feats_t).item() == pytest.approx(expected, rel=1e-6)
    assert feature_similarity_loss(feats_s, [f.clone() for f in feats_s]).item() == pytest.approx(0.0, abs=1e-6)


def test_cross_sample_term_matches_hand_affinities_on_2x2_maps():
    s, sp, t, tp = _maps(1)
    expected = _cross_by_hand(s.numpy(), sp.numpy(), t.numpy(), tp.numpy())
    assert cross_sample_loss(s, sp, t, tp).item() == pytest.approx(expected, rel=1e-5)


def test_cross_sample_term_weights_the_three_parts():
    """Student equal to teacher: every relation equals R_HH, so the term vanishes; only R_LL wrong
    (student partner = teacher partner, student anchor replaced) keeps the 1/2 weights visible."""
    s, sp, t, tp = _maps(2)
    assert cross_sample_loss(t.clone(), tp.clone(), t, tp).item() == pytest.approx(0.0, abs=1e-6)
    # student anchor differs, student partner equals the teacher partner: R_HL = R_HH
    value = cross_sample_loss(s, tp.clone(), t, tp).item()
    r_hh, r_lh = _affinity_by_hand(t.numpy(), tp.numpy()), _affinity_by_hand(s.numpy(), tp.numpy())
    part = _cos_loss_by_hand(r_hh, r_lh)
    assert value == pytest.approx(0.5 * part + part, rel=1e-5)


def test_cross_sample_gradient_reaches_both_student_maps_and_no_teacher_map():
    s, sp, t, tp = (m.requires_grad_() for m in _maps(3))
    cross_sample_loss(s, sp, t, tp).backward()
    assert s.grad is not None and sp.grad is not None and s.grad.abs().sum() > 0 and sp.grad.abs().sum() > 0
    assert t.grad is None and tp.grad is None


# -- distiller terms on fake features ------------------------------------------------------------------
def _fake_features(seed: int, batch: int = 4) -> Features:
    generator = torch.Generator().manual_seed(seed)
    stages = [torch.randn(batch, 2, 3, 3, generator=generator), torch.randn(batch, 3, 2, 2, generator=generator)]
    return Features(out=torch.randn(batch, 6, generator=generator), stages=stages)


def _companion(config: str, overrides: list[str] | None = None) -> FeatureSimilarityKD:
    cfg = load_config(CONFIGS / config, overrides or [])
    probe = Probe(student=_fake_features(0), teacher=_fake_features(1), num_classes=3)
    return FeatureSimilarityKD.companion(cfg, probe)


def _step(batch: dict, extra: dict | None = None) -> Step:
    student, teacher = _fake_features(10), _fake_features(11)
    return Step(batch=batch, student=student, logits_s=student.out, teacher=teacher, extra=extra or {})


def test_shuffle_partners_permute_the_batch_features():
    distiller = _companion("f_skd/student_cosface.yaml", ["DATA.PARTNER", "shuffle"])
    perm = torch.tensor([2, 0, 3, 1])
    step = _step({"label": torch.zeros(4, dtype=torch.long), "partner_perm": perm})
    losses = distiller.distill_losses(step)
    s, t = step.student.stages[-1].numpy(), step.teacher.stages[-1].numpy()
    expected_cross = _cross_by_hand(s, s[perm.numpy()], t, t[perm.numpy()])
    expected_point = sum(_cos_loss_by_hand(a.numpy(), b.numpy())
                         for a, b in zip(step.student.stages, step.teacher.stages)) / 2
    assert losses["f_skd_cross"].item() == pytest.approx(4.0 * expected_cross, rel=1e-5)
    assert losses["f_skd_point"].item() == pytest.approx(20.0 * expected_point, rel=1e-5)
    assert "f_skd_logit" not in losses


def test_table_partners_without_a_partner_are_dropped_from_the_cross_term_only():
    distiller = _companion("f_skd/student_cosface.yaml")
    partner_s, partner_t = _fake_features(20), _fake_features(21)
    index = torch.tensor([7, 8, 9, 10])
    partner_index = torch.tensor([12, 8, 13, 10])  # samples 1 and 3 point at themselves: no partner
    step = _step({"label": torch.zeros(4, dtype=torch.long), "index": index, "partner_index": partner_index},
                 {"partner_student": partner_s, "partner_teacher": partner_t})
    keep = [0, 2]
    s, t = step.student.stages[-1].numpy()[keep], step.teacher.stages[-1].numpy()[keep]
    sp, tp = partner_s.stages[-1].numpy()[keep], partner_t.stages[-1].numpy()[keep]
    losses = distiller.distill_losses(step)
    assert losses["f_skd_cross"].item() == pytest.approx(4.0 * _cross_by_hand(s, sp, t, tp), rel=1e-5)
    expected_point = sum(_cos_loss_by_hand(a.numpy(), b.numpy())  # all four samples
                         for a, b in zip(step.student.stages, step.teacher.stages)) / 2
    assert losses["f_skd_point"].item() == pytest.approx(20.0 * expected_point, rel=1e-5)

    step.batch["partner_index"] = index.clone()  # nobody has a partner: the term is zero, not NaN
    assert distiller.distill_losses(step)["f_skd_cross"].item() == 0.0


def test_setup_requires_hints_and_partners():
    with pytest.raises(ConfigError, match="STUDENT.HINTS"):
        _companion("f_skd/student_cosface.yaml", ["STUDENT.HINTS", "False"])
    with pytest.raises(ConfigError, match="DATA.PARTNER"):
        _companion("f_skd/student_cosface.yaml", ["DATA.PARTNER", ""])
    # FSKD-v1: raw stages allowed, no cross term so no partners needed
    assert _companion("f_skd_v1/student.yaml").cross_weight == 0.0


# -- partner table -----------------------------------------------------------------------------------------
def test_select_partners_follows_the_reference_rule():
    angles = np.deg2rad([0.0, 0.5, 60.0, 120.0, 10.0, 30.0])
    embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.array([[1], [3], [2], [1], [5], [1]])
    labels = np.array([0, 0, 0, 0, 1, 2])
    # identity 0: sample 0 and 1 are near-duplicates (cos > 0.99) -> excluded for each other;
    # sample 3 is at 120 degrees from sample 0 (cos < 0) -> excluded with margin 0.
    partners = select_partners(embeddings, labels, margin=0.0, seed=0)
    assert partners.dtype == np.int64 and partners.shape == (6,)
    assert partners[0] == 2 and partners[1] == 2  # the only valid candidate for both
    assert partners[2] in (0, 1, 3)  # 60 degrees to 0/1, 60 degrees to 3: all positive
    assert partners[3] == 2  # 120 degrees to 0 and 1 (cos < 0), 60 to 2
    assert partners[4] == -1 and partners[5] == -1  # singletons have no partner
    # a stricter margin: cos(60 deg) = 0.5 is not > 0.6
    strict = select_partners(embeddings, labels, margin=0.6, seed=0)
    assert (strict == -1).all()
    again = select_partners(embeddings, labels, margin=0.0, seed=0)
    assert np.array_equal(partners, again)
    anywhere = select_partners(embeddings, labels, margin=-3.0, seed=1)
    assert ((anywhere >= 0) & (anywhere < 6)).all()


def test_cross_sample_loss_is_float32_under_bf16_autocast():
    """The affinity einsum would run in bf16 under autocast (the fast path's loss came back bf16)."""
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(3, 8, 4, 4, generator=g) for _ in range(4)]
    keep = torch.tensor([True, False, True])
    for mask in (None, keep):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = cross_sample_loss(*maps, keep=mask)
        assert loss.dtype == torch.float32
        assert torch.allclose(loss, cross_sample_loss(*maps, keep=mask), rtol=1e-6)
