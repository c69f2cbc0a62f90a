"""AdaDistillLoss against a NumPy re-computation of the reference step (spec adadistill.md §2.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd.adadistill import AdaDistillLoss, last_occurrence, margin_logits


def _reference_step(centres, emb_s, emb_t, labels, weighted, margin, s, m):
    """One AdaDistill step written out per sample with Python loops (float64).

    Every alpha reads the OLD centres; the centres are then written sample by sample in batch order,
    so a later duplicate overwrites an earlier one; the logits read the UPDATED centres.
    """
    old = np.array(centres, dtype=np.float64)
    unit = lambda v: v / math.sqrt(float(v @ v))  # noqa: E731
    s_hat = [unit(np.asarray(v, dtype=np.float64)) for v in emb_s]
    t_hat = [unit(np.asarray(v, dtype=np.float64)) for v in emb_t]
    alphas, new_rows = [], []
    for i, y in enumerate(labels):
        c = min(max(float(s_hat[i] @ t_hat[i]), -1.0), 1.0)
        if weighted:
            w = old[y]
            lam = float(w @ t_hat[i]) / max(math.sqrt(float(w @ w)) * math.sqrt(float(t_hat[i] @ t_hat[i])), 1e-8)
            a = c * min(max(lam, 1e-6), 1.0)
        else:
            a = c
        alpha = min(max(a, 1e-6), 1.0)
        alphas.append(alpha)
        new_rows.append(alpha * old[y] + (1.0 - alpha) * t_hat[i])
    updated = old.copy()
    for i, y in enumerate(labels):
        updated[y] = new_rows[i]
    logits = np.zeros((len(labels), len(updated)))
    for i, y in enumerate(labels):
        for j, w in enumerate(updated):
            cos = min(max(float(s_hat[i] @ w) / math.sqrt(float(w @ w)), -1.0), 1.0)
            if margin == "arcface":
                logits[i, j] = s * math.cos(math.acos(cos) + (m if j == y else 0.0))
            else:
                logits[i, j] = s * (cos - (m if j == y else 0.0))
    losses = [-(logits[i, y] - math.log(sum(math.exp(v) for v in logits[i]))) for i, y in enumerate(labels)]
    return updated, logits, sum(losses) / len(losses), alphas


def _case(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 4))
    emb_s = rng.normal(size=(4, 4)) * 3.0
    emb_t = emb_s + rng.normal(size=(4, 4))  # correlated, so alpha is positive
    labels = [1, 3, 1, 0]  # class 1 appears twice
    return centres, emb_s, emb_t, labels


@pytest.mark.parametrize("margin, m", [("arcface", 0.45), ("cosface", 0.35)])
@pytest.mark.parametrize("weighted", [True, False])
def test_step_matches_the_reference_with_duplicate_labels(margin, m, weighted):
    centres, emb_s, emb_t, labels = _case()
    loss_fn = AdaDistillLoss(5, 4, margin=margin, s=64.0, m=m, weighted_alpha=weighted).double()
    loss_fn.weight.copy_(torch.from_numpy(centres))
    loss, logits = loss_fn(torch.from_numpy(emb_s), torch.from_numpy(emb_t), torch.tensor(labels))
    updated, ref_logits, ref_loss, alphas = _reference_step(centres, emb_s, emb_t, labels, weighted,
                                                            margin, 64.0, m)
    assert np.allclose(loss_fn.weight.numpy(), updated, atol=1e-6)
    assert np.allclose(logits.detach().numpy(), ref_logits, atol=1e-4)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert loss_fn.stats["alpha"].item() == pytest.approx(sum(alphas) / len(alphas), rel=1e-6)
    # the later duplicate (sample 2) wrote class 1, from the OLD centre, not after sample 0's write
    assert np.allclose(loss_fn.weight[1].numpy(), updated[1])
    assert not np.allclose(updated[1], _reference_step(centres, emb_s[:1], emb_t[:1], [1], weighted,
                                                       margin, 64.0, m)[0][1])
    # untouched classes keep their centres
    assert np.allclose(loss_fn.weight[[2, 4]].numpy(), centres[[2, 4]])


def test_weighted_alpha_multiplies_by_the_centre_teacher_cosine():
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    emb_s = np.array([[1.0, 1.0]])
    emb_t = np.array([[2.0, 0.5]])
    t_hat = emb_t[0] / np.linalg.norm(emb_t[0])
    c = float(emb_s[0] @ emb_t[0]) / (np.linalg.norm(emb_s[0]) * np.linalg.norm(emb_t[0]))
    for weighted, expected in [(False, c), (True, c * t_hat[0])]:  # cos(w_0, t) = t_hat[0]
        loss_fn = AdaDistillLoss(2, 2, "arcface", weighted_alpha=weighted).double()
        loss_fn.weight.copy_(torch.from_numpy(centres))
        loss_fn(torch.from_numpy(emb_s), torch.from_numpy(emb_t), torch.tensor([0]))
        assert loss_fn.stats["alpha"].item() == pytest.approx(expected, rel=1e-9)
        assert np.allclose(loss_fn.weight[0].numpy(), expected * centres[0] + (1 - expected) * t_hat)


def test_cold_centre_orthogonal_to_the_teacher_is_replaced():
    """lambda = 0 is clamped to 1e-6, so alpha = 1e-6 and the centre becomes the teacher vector."""
    loss_fn = AdaDistillLoss(1, 2, "cosface").double()
    loss_fn.weight.copy_(torch.tensor([[0.0, 0.2]], dtype=torch.float64))
    loss_fn(torch.tensor([[1.0, 0.1]], dtype=torch.float64), torch.tensor([[3.0, 0.0]], dtype=torch.float64),
            torch.tensor([0]))
    assert loss_fn.stats["alpha"].item() == pytest.approx(1e-6)
    assert np.allclose(loss_fn.weight[0].numpy(), [1.0 - 1e-6, 0.2e-6], atol=1e-12)


def test_raw_embeddings_are_normalised_and_only_the_student_gets_gradient():
    centres, emb_s, emb_t, labels = _case(1)
    results = []
    for scale in (1.0, 7.0):
        loss_fn = AdaDistillLoss(5, 4, "arcface").double()
        loss_fn.weight.copy_(torch.from_numpy(centres))
        student = (torch.from_numpy(emb_s) * scale).requires_grad_()
        teacher = (torch.from_numpy(emb_t) / scale).requires_grad_()
        loss, _ = loss_fn(student, teacher, torch.tensor(labels))
        loss.backward()
        results.append(loss.item())
        assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
        assert teacher.grad is None
    assert results[0] == pytest.approx(results[1], rel=1e-9)


def test_centres_are_a_buffer_in_the_state_dict_and_not_trained():
    loss_fn = AdaDistillLoss(7, 3, "arcface")
    assert list(loss_fn.parameters()) == []
    assert loss_fn.state_dict()["weight"].shape == (7, 3)
    assert loss_fn.weight.std().item() == pytest.approx(0.01, rel=0.6)  # N(0, 0.01^2) init, not the teacher's


def test_arcface_has_no_fallback_past_pi():
    """theta + m > pi keeps s*cos(theta + m) (AdaDistill's ArcFace), unlike the A-SKD/F-SKD head."""
    theta = math.radians(170.0)
    emb = torch.tensor([[math.cos(theta), math.sin(theta)]], dtype=torch.float64)
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    logits = margin_logits(emb, centres, torch.tensor([0]), "arcface", 64.0, 0.5)
    assert logits[0, 0].item() == pytest.approx(64.0 * math.cos(theta + 0.5), rel=1e-9)
    assert logits[0, 1].item() == pytest.approx(64.0 * math.sin(theta), rel=1e-9)


def test_arcface_gradient_goes_through_arccos():
    """d logit_y / d cos = s sin(theta + m) / sin(theta) (not s, as a margin under no_grad would give)."""
    theta, s, m = math.radians(60.0), 64.0, 0.5
    cos_value = torch.tensor([[math.cos(theta)]], dtype=torch.float64, requires_grad=True)
    emb = torch.cat([cos_value, torch.tensor([[math.sin(theta)]], dtype=torch.float64)], dim=1)
    logits = margin_logits(emb, torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([0]), "arcface", s, m)
    logits[0, 0].backward()
    assert cos_value.grad.item() == pytest.approx(s * math.sin(theta + m) / math.sin(theta), rel=1e-9)


def test_last_occurrence_marks_the_final_write_of_each_label():
    labels = torch.tensor([4, 1, 4, 2, 1, 4])
    assert last_occurrence(labels).tolist() == [False, False, False, True, True, True]
