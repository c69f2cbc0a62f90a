"""Partial FC: margins by hand, the single-process head, and 2-rank sharding against a full softmax.

Distributed checks run 2 gloo processes on CPU; each rank saves what it saw and the parent compares
with an unsharded margin-softmax written here in plain torch (arccos form of ArcFace, one-hot CE).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from multiprocess import WORLD, run_ranks
from torch import nn

from models.partial_fc import PartialFC, class_shard, dist_cross_entropy, margin_logits
from utility.errors import CheckpointError, ConfigError


# -- reference, written independently of models/partial_fc.py -------------------------------------
def reference_loss(emb: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, margin: str,
                   s: float, m: float) -> torch.Tensor:
    """Unsharded margin softmax: normalise, cosine, margin at the label, scale, cross-entropy."""
    e = emb / emb.norm(dim=1, keepdim=True)
    w = centres / centres.norm(dim=1, keepdim=True)
    cos = (e @ w.t()).clamp(-1, 1)
    is_label = torch.zeros_like(cos, dtype=torch.bool)
    is_label[torch.arange(len(labels)), labels] = True
    if margin == "arcface":
        theta = torch.acos(cos)
        with_margin = torch.where(theta + m < math.pi, torch.cos(theta + m), cos - m * math.sin(math.pi - m))
    else:
        with_margin = cos - m
    logits = s * torch.where(is_label, with_margin, cos)
    return F.cross_entropy(logits, labels)






def _join(rank: int, port: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    from engine.distributed import init_distributed

    return init_distributed("cpu")


def _data(batch: int, dim: int, num_classes: int):
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(WORLD * batch, 6, generator=generator)
    centres = torch.randn(num_classes, dim, generator=generator)
    backbone = nn.Linear(6, dim)
    with torch.no_grad():
        backbone.weight.copy_(torch.randn(dim, 6, generator=generator))
        backbone.bias.copy_(torch.randn(dim, generator=generator))
    return inputs, centres, backbone


# -- margins by hand ------------------------------------------------------------------------------
def test_arcface_margin_values_by_hand():
    cosine = torch.tensor([[0.5, 0.2], [-0.95, 0.1], [0.3, 0.9]])
    labels = torch.tensor([0, 0, -1])
    out = margin_logits(cosine, labels, "arcface", s=2.0, m=0.5)
    # cos(acos(0.5) + 0.5) = cos(pi/3 + 0.5) = 0.5*cos(0.5) - (sqrt(3)/2)*sin(0.5)
    assert out[0, 0].item() == pytest.approx(2 * (0.5 * 0.8775825619 - 0.8660254038 * 0.4794255386), abs=1e-6)
    # -0.95 < cos(pi - 0.5) = -0.8775826: fallback cos - m*sin(pi - m) = -0.95 - 0.5*0.4794255
    assert out[1, 0].item() == pytest.approx(2 * (-0.95 - 0.5 * 0.4794255386), abs=1e-6)
    # non-label columns and rows without a label here are only scaled
    assert torch.allclose(out[0, 1:], torch.tensor([0.4]))
    assert torch.allclose(out[2], torch.tensor([0.6, 1.8]))


def test_cosface_margin_values_by_hand():
    cosine = torch.tensor([[0.5, 0.2, -0.1]])
    out = margin_logits(cosine, torch.tensor([2]), "cosface", s=64.0, m=0.35)
    assert torch.allclose(out, torch.tensor([[32.0, 12.8, 64 * (-0.45)]]), atol=1e-5)


def test_arcface_gradient_flows_through_the_margin():
    cosine = torch.tensor([[0.5, 0.2]], requires_grad=True)
    margin_logits(cosine, torch.tensor([0]), "arcface", s=1.0, m=0.5).sum().backward()
    theta = math.acos(0.5)
    # d cos(theta + m) / d cos = sin(theta + m) / sin(theta)
    assert cosine.grad[0, 0].item() == pytest.approx(math.sin(theta + 0.5) / math.sin(theta), rel=1e-5)
    assert cosine.grad[0, 1].item() == pytest.approx(1.0)


def test_unknown_margin_and_sample_rate_are_config_errors():
    with pytest.raises(ConfigError, match="margin"):
        PartialFC(4, 3, margin="sphereface")
    with pytest.raises(ConfigError, match="SAMPLE_RATE"):
        PartialFC(4, 3, sample_rate=0.0)


# -- single process: the ordinary full head -------------------------------------------------------
def test_class_shard_splits_as_insightface():
    # 10 classes over 4 ranks: 3, 3, 2, 2 starting at 0, 3, 6, 8
    assert [class_shard(10, r, 4) for r in range(4)] == [(0, 3), (3, 3), (6, 2), (8, 2)]
    assert [class_shard(8, r, 2) for r in range(2)] == [(0, 4), (4, 4)]


@pytest.mark.parametrize("margin,s,m", [("arcface", 16.0, 0.5), ("cosface", 30.0, 0.35)])
def test_single_process_equals_full_margin_softmax(margin, s, m):
    generator = torch.Generator().manual_seed(3)
    emb = torch.randn(6, 8, generator=generator)
    centres = torch.randn(5, 8, generator=generator)
    labels = torch.tensor([0, 4, 4, 2, 1, 0])
    head = PartialFC(8, 5, margin=margin, s=s, m=m, weight=centres)
    emb_a = emb.clone().requires_grad_(True)
    loss = head(emb_a, labels)
    loss.backward()
    emb_b, centres_b = emb.clone().requires_grad_(True), centres.clone().requires_grad_(True)
    expected = reference_loss(emb_b, centres_b, labels, margin, s, m)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(emb_a.grad, emb_b.grad, atol=1e-6)
    assert torch.allclose(head.weight.grad, centres_b.grad, atol=1e-5)


@pytest.mark.parametrize("name,m", [("arcface", 0.5), ("cosface", 0.35)])
def test_single_process_agrees_with_the_registered_head(name, m):
    """Partial FC must stay a drop-in for HEADS' arcface/cosface followed by cross-entropy."""
    from models import HEADS

    generator = torch.Generator().manual_seed(9)
    emb, labels = torch.randn(5, 8, generator=generator), torch.tensor([3, 0, 3, 1, 2])
    head = HEADS.build(name, 8, 4, s=64.0, m=m)
    partial = PartialFC(8, 4, margin=name, s=64.0, m=m, weight=head.weight.detach())
    expected = F.cross_entropy(head(emb, labels), labels)
    assert partial(emb, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_dist_cross_entropy_single_process_is_cross_entropy():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]], requires_grad=True)
    labels = torch.tensor([2, 0])
    loss = dist_cross_entropy(logits, labels)
    loss.backward()
    by_hand = -(0.5 - math.log(math.exp(2) + math.exp(-1) + math.exp(0.5))
                + 0.1 - math.log(math.exp(0.1) + math.exp(0.2) + math.exp(0.3))) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    softmax = torch.softmax(logits.detach(), dim=1)
    softmax[0, 2] -= 1
    softmax[1, 0] -= 1
    assert torch.allclose(logits.grad, softmax / 2, atol=1e-7)


def test_callable_margin_with_frozen_supplied_centres():
    generator = torch.Generator().manual_seed(5)
    emb, centres = torch.randn(4, 6, generator=generator), torch.randn(3, 6, generator=generator)
    labels = torch.tensor([2, 0, 1, 2])
    calls = []

    def no_margin(cosine, local_labels):
        calls.append(local_labels.clone())
        return 10.0 * cosine

    head = PartialFC(6, 3, margin=no_margin, weight=centres, trainable=False)
    emb = emb.requires_grad_(True)
    loss = head(emb, labels)
    loss.backward()
    cos = F.normalize(emb.detach()) @ F.normalize(centres).t()
    assert loss.item() == pytest.approx(F.cross_entropy(10 * cos, labels).item(), rel=1e-6)
    assert torch.equal(calls[0], labels)
    assert head.weight.grad is None and emb.grad is not None
    assert torch.equal(head.weight, centres)


def test_sampling_keeps_positives_when_they_exceed_the_budget():
    torch.manual_seed(0)
    head = PartialFC(4, 10, margin="cosface", s=8.0, m=0.2, sample_rate=0.2)  # budget 2 of 10
    labels = torch.tensor([7, 1, 4, 1, 9])
    generator = torch.Generator().manual_seed(1)
    emb = torch.randn(5, 4, generator=generator)
    loss = head(emb, labels)
    assert head.sampled_index.tolist() == [1, 4, 7, 9]
    kept = torch.tensor([1, 4, 7, 9])
    expected = reference_loss(emb, head.weight.detach()[kept], torch.tensor([2, 0, 1, 0, 3]), "cosface", 8.0, 0.2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_full_weight_round_trip_and_shape_errors():
    head = PartialFC(4, 6)
    assert tuple(head.weight.shape) == (6, 4)
    assert 0.004 < head.weight.std().item() < 0.02  # N(0, 0.01^2) initialisation
    replacement = torch.arange(24, dtype=torch.float32).view(6, 4)
    head.load_full_state_dict({"weight": replacement})
    assert torch.equal(head.full_state_dict()["weight"], replacement)
    with pytest.raises(CheckpointError, match="shape"):
        head.load_full_weight(torch.zeros(5, 4))


# -- two ranks --------------------------------------------------------------------------------------
BATCH, DIM, CLASSES = 3, 8, 7  # 7 classes over 2 ranks: shards of 4 and 3
LABELS = torch.tensor([0, 6, 3, 4, 3, 5])  # rank 0's rows, then rank 1's; both shards hit, duplicates


def _sharded_worker(rank: int, port: int, out: str, margin: str, s: float, m: float) -> None:
    env = _join(rank, port)
    from engine.distributed import cleanup, wrap_ddp

    torch.manual_seed(11)  # same torch RNG on both ranks: the shared init seed comes from rank 0 anyway
    initial = PartialFC(DIM, CLASSES, margin=margin, s=s, m=m, env=env)
    initial_full = initial.full_weight()
    inputs, centres, backbone = _data(BATCH, DIM, CLASSES)
    model = wrap_ddp(backbone, env)
    head = PartialFC(DIM, CLASSES, margin=margin, s=s, m=m, env=env, weight=centres)
    local_inputs = inputs[rank * BATCH:(rank + 1) * BATCH]
    emb = model(local_inputs)
    emb.retain_grad()
    loss = head(emb, LABELS[rank * BATCH:(rank + 1) * BATCH])
    loss.backward()
    torch.save({"loss": loss.detach(), "emb_grad": emb.grad, "shard_grad": head.weight.grad,
                "shard": head.weight.detach(), "start": head.class_start, "full": head.full_weight(),
                "initial_full": initial_full, "initial_shard": initial.weight.detach(),
                "backbone_grad": backbone.weight.grad, "bias_grad": backbone.bias.grad},
               Path(out) / f"rank{rank}.pt")
    cleanup()


@pytest.mark.parametrize("margin,s,m", [("arcface", 16.0, 0.5), ("cosface", 30.0, 0.35)])
def test_two_ranks_equal_the_unsharded_head(tmp_path, margin, s, m):
    ranks = run_ranks(_sharded_worker, tmp_path, margin, s, m, weights_only=True)
    inputs, centres, backbone = _data(BATCH, DIM, CLASSES)
    emb = backbone(inputs)
    emb.retain_grad()
    centres = centres.clone().requires_grad_(True)
    expected = reference_loss(emb, centres, LABELS, margin, s, m)
    expected.backward()
    # shards are contiguous, insightface-sized, and reassemble the full matrix
    assert [r["start"] for r in ranks] == [0, 4]
    assert [len(r["shard"]) for r in ranks] == [4, 3]
    for r in ranks:
        assert torch.equal(r["full"], centres.detach())
        assert r["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    centre_grad = torch.cat([r["shard_grad"] for r in ranks])
    assert torch.allclose(centre_grad, centres.grad, atol=1e-5, rtol=1e-4)
    # embeddings get WORLD x the global-loss gradient (DDP divides backbone gradients by WORLD) ...
    emb_grad = torch.cat([r["emb_grad"] for r in ranks])
    assert torch.allclose(emb_grad, WORLD * emb.grad, atol=1e-6, rtol=1e-4)
    # ... so after DDP the backbone holds exactly the single-process gradient
    for r in ranks:
        assert torch.allclose(r["backbone_grad"], backbone.weight.grad, atol=1e-6, rtol=1e-4)
        assert torch.allclose(r["bias_grad"], backbone.bias.grad, atol=1e-6, rtol=1e-4)
    # the random initial centres do not depend on the sharding: same as one process, same seed
    torch.manual_seed(11)
    single = PartialFC(DIM, CLASSES, margin=margin, s=s, m=m)
    for r in ranks:
        assert torch.equal(r["initial_full"], single.weight.detach())
    assert not torch.equal(ranks[0]["initial_shard"][:3], ranks[1]["initial_shard"])


SAMPLED_CLASSES, SAMPLED_BATCH = 20, 2  # shards of 10, budget int(0.5 * 10) = 5 per rank
SAMPLED_LABELS = torch.tensor([1, 13, 1, 7])  # shard 0 positives {1, 7}, shard 1 positives {13}


def _sampled_worker(rank: int, port: int, out: str) -> None:
    env = _join(rank, port)
    from engine.distributed import cleanup

    torch.manual_seed(100 + rank)
    generator = torch.Generator().manual_seed(2)
    emb = torch.randn(WORLD * SAMPLED_BATCH, DIM, generator=generator)[rank * SAMPLED_BATCH:(rank + 1) * SAMPLED_BATCH]
    centres = torch.randn(SAMPLED_CLASSES, DIM, generator=generator)
    head = PartialFC(DIM, SAMPLED_CLASSES, margin="arcface", s=16.0, m=0.5, sample_rate=0.5, env=env,
                     weight=centres)
    loss = head(emb, SAMPLED_LABELS[rank * SAMPLED_BATCH:(rank + 1) * SAMPLED_BATCH])
    loss.backward()
    torch.save({"loss": loss.detach(), "index": head.sampled_index + head.class_start,
                "shard_grad": head.weight.grad}, Path(out) / f"rank{rank}.pt")
    cleanup()


def test_sampling_over_two_ranks(tmp_path):
    ranks = run_ranks(_sampled_worker, tmp_path, weights_only=True)
    generator = torch.Generator().manual_seed(2)
    emb = torch.randn(WORLD * SAMPLED_BATCH, DIM, generator=generator)
    centres = torch.randn(SAMPLED_CLASSES, DIM, generator=generator)
    index0, index1 = ranks[0]["index"].tolist(), ranks[1]["index"].tolist()
    assert len(index0) == 5 and len(index1) == 5
    assert index0 == sorted(set(index0)) and index1 == sorted(set(index1))
    assert all(0 <= c < 10 for c in index0) and all(10 <= c < 20 for c in index1)
    assert {1, 7} <= set(index0) and 13 in index1
    kept = index0 + index1
    remapped = torch.tensor([kept.index(int(c)) for c in SAMPLED_LABELS])
    kept_centres = centres[kept].clone().requires_grad_(True)
    expected = reference_loss(emb, kept_centres, remapped, "arcface", 16.0, 0.5)
    expected.backward()
    for r in ranks:
        assert r["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # only sampled centres get a gradient, and it is the restricted softmax's
    full_grad = torch.cat([r["shard_grad"] for r in ranks])
    unsampled = [c for c in range(SAMPLED_CLASSES) if c not in kept]
    assert torch.count_nonzero(full_grad[unsampled]) == 0
    assert torch.allclose(full_grad[kept], kept_centres.grad, atol=1e-5, rtol=1e-4)
