"""CRD: NCE formula, Z frozen on the first batch, momentum memory update, state dict and RepDistiller mapping."""

import math

import numpy as np
import pytest
import torch

from kd.crd import CRDLoss, crd_state_from_repdistiller, nce_loss
from utility.errors import CheckpointError

N_DATA, K, DIM = 12, 3, 4


def _nce_numpy(scores: np.ndarray, n_data: int) -> float:
    """-(1/B) [sum_b log(o_b0/(o_b0 + K/N + 1e-7)) + sum_b sum_j log((K/N)/(o_bj + K/N + 1e-7))]."""
    batch, columns = scores.shape
    noise = (columns - 1) / n_data
    total = 0.0
    for b in range(batch):
        total += math.log(scores[b, 0] / (scores[b, 0] + noise + 1e-7))
        for j in range(1, columns):
            total += math.log(noise / (scores[b, j] + noise + 1e-7))
    return -total / batch


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.sqrt((rows ** 2).sum(axis=1, keepdims=True))


def test_nce_loss_matches_formula():
    scores = np.array([[0.9, 0.1, 0.3, 0.05], [0.2, 0.4, 0.01, 0.7]])
    got = nce_loss(torch.tensor(scores, dtype=torch.float32), n_data=20)
    assert got.item() == pytest.approx(_nce_numpy(scores, 20), rel=1e-5)


def test_memory_init_range_and_params_layout():
    torch.manual_seed(0)
    crd = CRDLoss(5, 6, 128, 1000, 10, 0.07, 0.5)
    bound = 1 / math.sqrt(128 / 3)
    assert crd.memory_s.shape == (1000, 128) and crd.memory_t.shape == (1000, 128)
    assert crd.memory_s.abs().max() <= bound and crd.memory_s.abs().max() > 0.9 * bound
    assert crd.params.dtype == torch.float32
    assert crd.params.tolist() == pytest.approx([10, np.float32(0.07), -1, -1, 0.5])
    assert set(crd.state_dict()) == {"embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias",
                                     "memory_s", "memory_t", "params"}


def _expected_step(crd, f_s, f_t, idx, contrast, z=None):
    """Independent NumPy version of one CRD call: returns (loss, z_s, z_t, new memory_s, new memory_t)."""
    w_s, b_s = crd.embed_s.weight.detach().double().numpy(), crd.embed_s.bias.detach().double().numpy()
    w_t, b_t = crd.embed_t.weight.detach().double().numpy(), crd.embed_t.bias.detach().double().numpy()
    mem_s, mem_t = crd.memory_s.double().numpy().copy(), crd.memory_t.double().numpy().copy()
    v_s = _unit(f_s @ w_s.T + b_s)
    v_t = _unit(f_t @ w_t.T + b_t)
    temperature = float(np.float32(0.07))
    scores_s = np.zeros(contrast.shape)
    scores_t = np.zeros(contrast.shape)
    for b in range(contrast.shape[0]):
        for j in range(contrast.shape[1]):
            scores_s[b, j] = math.exp(mem_t[contrast[b, j]] @ v_s[b] / temperature)
            scores_t[b, j] = math.exp(mem_s[contrast[b, j]] @ v_t[b] / temperature)
    if z is None:
        z = (scores_s.mean() * N_DATA, scores_t.mean() * N_DATA)
    loss = _nce_numpy(scores_s / z[0], N_DATA) + _nce_numpy(scores_t / z[1], N_DATA)
    for b, row in enumerate(idx):
        mem_s[row] = _unit((0.5 * mem_s[row] + 0.5 * v_s[b])[None])[0]
        mem_t[row] = _unit((0.5 * mem_t[row] + 0.5 * v_t[b])[None])[0]
    return loss, z, mem_s, mem_t


def test_two_steps_z_fixed_after_first_and_memory_moves():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    crd = CRDLoss(5, 6, DIM, N_DATA, K, 0.07, 0.5)
    batches = []
    for idx in ([1, 4], [4, 7]):  # row 4 is updated twice
        f_s, f_t = rng.normal(size=(2, 5)), rng.normal(size=(2, 6))
        contrast = np.array([[idx[0], 0, 2, 3], [idx[1], 5, 6, 8]])
        batches.append((f_s, f_t, np.array(idx), contrast))

    z_first = None
    for step, (f_s, f_t, idx, contrast) in enumerate(batches):
        loss_ref, z_ref, mem_s_ref, mem_t_ref = _expected_step(crd, f_s, f_t, idx, contrast, z_first)
        untouched = [r for r in range(N_DATA) if r not in idx]
        before_s = crd.memory_s.clone()
        loss = crd(torch.tensor(f_s, dtype=torch.float32), torch.tensor(f_t, dtype=torch.float32),
                   torch.tensor(idx), torch.tensor(contrast))
        assert loss.dim() == 0
        assert loss.item() == pytest.approx(loss_ref, rel=1e-4)
        if step == 0:
            z_first = z_ref
        # Z is set once (step 0) and then stays fixed
        assert crd.params[2].item() == pytest.approx(z_first[0], rel=1e-5)
        assert crd.params[3].item() == pytest.approx(z_first[1], rel=1e-5)
        np.testing.assert_allclose(crd.memory_s.numpy(), mem_s_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(crd.memory_t.numpy(), mem_t_ref, rtol=1e-5, atol=1e-6)
        assert torch.equal(crd.memory_s[untouched], before_s[untouched])
        np.testing.assert_allclose(crd.memory_s[idx].norm(dim=1).numpy(), 1.0, rtol=1e-6)


def test_resume_from_state_dict_is_exact():
    torch.manual_seed(0)
    crd = CRDLoss(5, 6, DIM, N_DATA, K, 0.07, 0.5)
    f_s, f_t = torch.randn(2, 5), torch.randn(2, 6)
    idx, contrast = torch.tensor([0, 1]), torch.tensor([[0, 2, 3, 4], [1, 5, 6, 7]])
    crd(f_s, f_t, idx, contrast)
    resumed = CRDLoss(5, 6, DIM, N_DATA, K, 0.07, 0.5)
    resumed.load_state_dict(crd.state_dict())
    assert resumed.params[2] > 0  # Z came with the state dict
    idx2, contrast2 = torch.tensor([2, 3]), torch.tensor([[2, 0, 1, 4], [3, 9, 10, 11]])
    assert torch.equal(crd(f_s, f_t, idx2, contrast2), resumed(f_s, f_t, idx2, contrast2))


def test_gradient_reaches_both_embeddings_and_student_not_teacher():
    torch.manual_seed(0)
    crd = CRDLoss(5, 6, DIM, N_DATA, K, 0.07, 0.5)
    f_s = torch.randn(2, 5, requires_grad=True)
    f_t = torch.randn(2, 6, requires_grad=True)
    crd(f_s, f_t, torch.tensor([0, 1]), torch.tensor([[0, 2, 3, 4], [1, 5, 6, 7]])).backward()
    assert f_s.grad is not None and f_t.grad is None
    assert crd.embed_s.weight.grad.abs().sum() > 0 and crd.embed_t.weight.grad.abs().sum() > 0


def test_repdistiller_state_dict_mapping():
    sd = {
        "embed_s.linear.weight": torch.full((4, 5), 1.0),
        "embed_s.linear.bias": torch.full((4,), 2.0),
        "embed_t.linear.weight": torch.full((4, 6), 3.0),
        "embed_t.linear.bias": torch.full((4,), 4.0),
        "contrast.params": torch.tensor([3.0, 0.07, 11.5, 12.5, 0.5]),
        "contrast.memory_v1": torch.full((N_DATA, 4), 5.0),
        "contrast.memory_v2": torch.full((N_DATA, 4), 6.0),
    }
    ours = crd_state_from_repdistiller(sd)
    assert ours["embed_s.weight"][0, 0] == 1.0 and ours["embed_t.bias"][0] == 4.0
    assert ours["memory_s"][0, 0] == 5.0 and ours["memory_t"][0, 0] == 6.0  # v1 = student, v2 = teacher
    crd = CRDLoss(5, 6, DIM, N_DATA, K, 0.07, 0.5)
    crd.load_state_dict(ours, strict=True)
    assert crd.params[2].item() == 11.5 and crd.params[3].item() == 12.5
    with pytest.raises(CheckpointError, match="unexpected key"):
        crd_state_from_repdistiller({**sd, "contrast.unknown": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="missing"):
        crd_state_from_repdistiller({k: v for k, v in sd.items() if k != "contrast.params"})
