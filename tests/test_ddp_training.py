"""The real Trainer under DDP: 2 gloo ranks on CPU, forked as under torchrun.

What must hold (the multi-GPU promise): two ranks with batch B each train to the same weights as
one process with batch 2B; only rank 0 writes files; a non-finite loss on one rank stops both;
stop + `--resume` under DDP continues exactly; Partial FC trains and checkpoints its full centres.

The networks here have no BatchNorm on purpose: in train mode BN normalises with each rank's own
batch statistics (SOLVER.SYNC_BN off), so BN models are not expected to match one process with the
whole batch. A tiny conv net keeps each 2-rank run to a few seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from multiprocess import WORLD, run_ranks
from torch import nn

from data.loader import ResumableSampler
from data.synthetic_classification import write_cifar100
from engine.checkpoint import load_checkpoint
from models import BACKBONES
from models.features import Features
from utility.config import load_config

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
EMBEDDING = 8


class TinyConvNet(nn.Module):
    """conv -> relu -> global average pool -> linear; no BatchNorm, no dropout."""

    def __init__(self, num_classes: int = 4, out_features: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=4, padding=1)
        self.fc = nn.Linear(6, out_features or num_classes)

    def forward_features(self, x: torch.Tensor) -> Features:
        stage = torch.relu(self.conv(x))
        pooled = stage.mean(dim=(2, 3))
        return Features(out=self.fc(pooled), stages=[stage], preact_stages=[stage], pooled=pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).out


class TinyDropoutNet(TinyConvNet):
    """The same with dropout: training draws from the global RNG, which differs per rank."""

    def forward_features(self, x: torch.Tensor) -> Features:
        stage = torch.relu(self.conv(x))
        pooled = nn.functional.dropout(stage.mean(dim=(2, 3)), p=0.5, training=self.training)
        return Features(out=self.fc(pooled), stages=[stage], pooled=pooled)


if "test.ddp_tiny" not in BACKBONES:
    BACKBONES.register("test.ddp_tiny")(lambda num_classes: TinyConvNet(num_classes))
    BACKBONES.register("test.ddp_tiny_embedding")(lambda num_classes: TinyConvNet(num_classes, EMBEDDING))
    BACKBONES.register("test.ddp_tiny_dropout")(lambda num_classes: TinyDropoutNet(num_classes, EMBEDDING))


def overrides(root: Path, out: Path, *extra: str) -> list[str]:
    """Deterministic augmentation (no flip, no crop): the per-rank augmentation seeds then cannot
    make two ranks differ from one process."""
    return [
        "EXPERIMENT.TASK", "classification", "EXPERIMENT.OUTPUT_DIR", str(out), "EXPERIMENT.SEED", "5",
        "EXPERIMENT.DEVICE", "cpu", "DATA.ROOT", str(root), "DATA.TRAIN", "cifar-100-python",
        "DATA.FORMAT", "cifar100", "DATA.COLOR", "rgb", "DATA.IMAGE_SIZE", "32", "DATA.CROP_PADDING", "0",
        "DATA.FLIP", "False", "DATA.WORKERS", "0", "DATA.MEAN", "[0.5,0.5,0.5]", "DATA.STD", "[0.25,0.25,0.25]",
        "STUDENT.BACKBONE", "test.ddp_tiny", "TEACHER.BACKBONE", "test.ddp_tiny",
        "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITERS", "8", "SOLVER.LR", "0.2", "SOLVER.SCHEDULE", "cosine",
        "SOLVER.CHECKPOINT_PERIOD", "100", "LOG.PERIOD", "2", "LOG.PROGRESS", "False",
        "LOG.TENSORBOARD", "False", "EVAL.BATCH_SIZE", "16", "EVAL.TOPK", "[1]", *extra,
    ]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, num_classes=4, train_per_class=12, test_per_class=4, seed=3)  # 48 images: 6 batches of 8
    return root


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)






def _join(rank: int, port: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    from engine.distributed import init_distributed

    return init_distributed("cpu")


def _state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.distiller.state_dict().items()}


# -- the sampler: rank shards compose the single-process batches ---------------------------------------
def test_rank_batches_compose_the_single_process_batch():
    num_samples, batch, seed = 23, 3, 9
    single = ResumableSampler(num_samples, WORLD * batch, seed)
    ranks = [ResumableSampler(num_samples, batch, seed, rank=r, world_size=WORLD) for r in range(WORLD)]
    orders = []
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        whole = [list(map(int, b)) for b in single]
        per_rank = [[list(map(int, b)) for b in sampler] for sampler in ranks]
        # 23 samples, global batch 6: 3 steps, 5 samples dropped, every rank takes 3 of each global batch
        assert len(whole) == 3 and all(len(p) == 3 for p in per_rank)
        for step, global_batch in enumerate(whole):
            parts = [p[step] for p in per_rank]
            assert all(len(part) == batch for part in parts)
            assert not set(parts[0]) & set(parts[1])
            assert sorted(parts[0] + parts[1]) == sorted(global_batch)
        orders.append(whole)
    assert orders[0] != orders[1], "each epoch draws its own permutation"


# -- two ranks == one process ------------------------------------------------------------------------
def _training_worker(rank: int, port: int, out: str, root: str) -> None:
    env = _join(rank, port)
    from engine.distributed import cleanup
    from engine.session import run_training
    from engine.trainer import Trainer

    out_dir = Path(out)
    straight = Trainer(load_config(None, overrides(Path(root), out_dir / "straight")), env=env)
    straight.train()
    first = Trainer(load_config(None, overrides(Path(root), out_dir / "split")), env=env)
    first.plan.total_iters = 5  # stop mid-epoch, as if killed after the checkpoint at iteration 5
    first.train()
    resumed = Trainer(load_config(None, overrides(Path(root), out_dir / "split")), resume=True, env=env)
    resumed.train()
    result = {"straight": _state(straight), "resumed": _state(resumed), "model": type(straight.model).__name__,
              "history": [h for h in straight.history if "loss/ce" in h]}
    torch.save(result, out_dir / f"rank{rank}.pt")
    # the CLI path, each rank pointed at its own folder: whatever rank 1 wrote would show up in files1
    run_training(None, overrides(Path(root), out_dir / f"files{rank}", "LOG.TENSORBOARD", "True",
                                 "SOLVER.MAX_ITERS", "2"), role="student")
    cleanup()


def test_two_ranks_train_like_one_process_resume_and_only_rank0_writes(cifar_root, tmp_path, no_torchrun):
    from engine.trainer import Trainer

    ranks = run_ranks(_training_worker, tmp_path, str(cifar_root))
    assert all(r["model"] == "DistributedDataParallel" for r in ranks)
    reference = Trainer(load_config(None, overrides(cifar_root, tmp_path / "single")))
    initial = _state(reference)
    reference.train()
    expected = _state(reference)
    assert expected.keys() == ranks[0]["straight"].keys()
    for name, value in expected.items():
        assert not torch.allclose(initial[name], value), f"{name} did not train"
        for r in ranks:
            assert torch.allclose(r["straight"][name], value, atol=1e-5, rtol=1e-4), name
        # replicas stay identical, and stop + --resume under DDP continues exactly
        assert torch.equal(ranks[0]["straight"][name], ranks[1]["straight"][name]), name
        assert torch.equal(ranks[0]["resumed"][name], ranks[0]["straight"][name]), name
        assert torch.equal(ranks[1]["resumed"][name], ranks[1]["straight"][name]), name
    # logged losses are reduced over the ranks: the mean of the two half-batch means is the
    # single process's whole-batch mean, and both ranks log the same numbers
    logged = [(h["iteration"], h["loss/ce"]) for h in reference.history if "loss/ce" in h]
    assert [h["iteration"] for h in ranks[0]["history"]] == [2, 4, 6, 8] == [i for i, _ in logged]
    for r in ranks:
        assert [h["loss/ce"] for h in r["history"]] == pytest.approx([v for _, v in logged], rel=1e-4)
    assert [h["loss/ce"] for h in ranks[0]["history"]] == [h["loss/ce"] for h in ranks[1]["history"]]
    # only rank 0 writes: checkpoints, logs, TensorBoard, results, curves
    assert not (tmp_path / "files1").exists()
    written = {p.name for p in (tmp_path / "files0").iterdir()}
    assert {"last.pt", "best.pt", "config.yaml", "run.json", "results.json", "results.md", "curves.png",
            "log.txt", "tb"} <= written
    assert load_checkpoint(tmp_path / "files0" / "last.pt")["iteration"] == 2


# -- non-finite loss on one rank --------------------------------------------------------------------
def _nan_worker(rank: int, port: int, out: str, root: str) -> None:
    env = _join(rank, port)
    from engine.distributed import cleanup
    from engine.trainer import Trainer
    from utility.errors import ConfigError, DistilleryError

    out_dir = Path(out)
    trainer = Trainer(load_config(None, overrides(Path(root), out_dir / "nan")), env=env)
    transform = trainer.transform
    local_losses: list[float] = []

    def poisoned(batch, generator=None):
        batch = transform(batch, generator)
        if rank == 1 and trainer.iteration == 2:
            batch["image"] = torch.full_like(batch["image"], float("nan"))
        return batch

    step = trainer.train_step

    def recording_step(batch):
        total, terms = step(batch)
        local_losses.append(float(total))
        return total, terms

    trainer.transform = poisoned
    trainer.train_step = recording_step
    result: dict = {}
    try:
        trainer.train()
        result["error"] = None
    except DistilleryError as error:
        result["error"] = str(error)
    result["iteration"] = trainer.iteration
    result["losses"] = local_losses
    try:
        Trainer(load_config(None, overrides(Path(root), out_dir / "sync", "SOLVER.SYNC_BN", "True")), env=env)
        result["sync_bn"] = "no error"
    except ConfigError as error:
        result["sync_bn"] = str(error)
    torch.save(result, out_dir / f"rank{rank}.pt")
    cleanup()


def test_non_finite_loss_on_one_rank_stops_both(cifar_root, tmp_path, no_torchrun):
    ranks = run_ranks(_nan_worker, tmp_path, str(cifar_root))
    for r in ranks:
        assert r["error"] is not None and "non-finite loss at iteration 3" in r["error"]
        assert r["iteration"] == 3 and len(r["losses"]) == 3
        assert "SYNC_BN" in r["sync_bn"]
    # rank 0's own loss was finite when it stopped: it stopped because rank 1's was not
    assert all(torch.isfinite(torch.tensor(ranks[0]["losses"])))
    assert not torch.isfinite(torch.tensor(ranks[1]["losses"][-1]))


# -- Partial FC -------------------------------------------------------------------------------------
def _partial_fc_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return overrides(root, out, "STUDENT.BACKBONE", "test.ddp_tiny_embedding", "STUDENT.HEAD", "arcface",
                     "STUDENT.EMBEDDING_SIZE", str(EMBEDDING), "STUDENT.HEAD_S", "8.0", "STUDENT.HEAD_M", "0.3",
                     "SOLVER.PARTIAL_FC", "True", "SOLVER.MAX_ITERS", "3", *extra)


def _partial_fc_worker(rank: int, port: int, out: str, root: str) -> None:
    env = _join(rank, port)
    from engine.distributed import cleanup
    from engine.trainer import Trainer

    out_dir = Path(out)
    trainer = Trainer(load_config(None, _partial_fc_overrides(Path(root), out_dir / "pfc")), env=env)
    trainer.train()
    head = trainer.distiller.student.head
    result = {"shard": head.weight.detach().clone(), "start": head.class_start}
    # stop + resume: each rank's shard, its momentum and its own RNG stream (dropout) must come back
    dropout = ("STUDENT.BACKBONE", "test.ddp_tiny_dropout", "SOLVER.MAX_ITERS", "4")
    straight = Trainer(load_config(None, _partial_fc_overrides(Path(root), out_dir / "straight", *dropout)), env=env)
    straight.train()
    first = Trainer(load_config(None, _partial_fc_overrides(Path(root), out_dir / "split", *dropout)), env=env)
    first.plan.total_iters = 2
    first.train()
    resumed = Trainer(load_config(None, _partial_fc_overrides(Path(root), out_dir / "split", *dropout)),
                      resume=True, env=env)
    resumed.train()
    result.update(straight=_state(straight), resumed=_state(resumed))
    torch.save(result, out_dir / f"rank{rank}.pt")
    cleanup()


def test_partial_fc_over_two_ranks_equals_the_single_process_head_and_resumes(cifar_root, tmp_path, no_torchrun):
    from engine.trainer import Trainer

    ranks = run_ranks(_partial_fc_worker, tmp_path, str(cifar_root))
    reference = Trainer(load_config(None, _partial_fc_overrides(cifar_root, tmp_path / "single")))
    initial = reference.distiller.student.head.weight.detach().clone()
    reference.train()
    expected = reference.distiller.state_dict()
    saved = load_checkpoint(tmp_path / "pfc" / "last.pt")["model"]
    # 4 classes over 2 ranks: shards [0, 2) and [2, 4); the checkpoint holds the gathered (4, 8) centres
    assert [r["start"] for r in ranks] == [0, 2]
    assert saved["student.head.weight"].shape == (4, EMBEDDING)
    assert torch.equal(saved["student.head.weight"], torch.cat([r["shard"] for r in ranks]))
    assert not torch.allclose(expected["student.head.weight"], initial)
    assert saved.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.allclose(saved[name], value, atol=1e-5, rtol=1e-4), name
    # resume under DDP is exact on every rank, shard included
    for r in ranks:
        for name, value in r["straight"].items():
            assert torch.equal(r["resumed"][name], value), name
    assert not torch.equal(ranks[0]["straight"]["student.head.weight"], ranks[1]["straight"]["student.head.weight"])
