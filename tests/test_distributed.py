"""engine/distributed.py: single-process fallbacks, collectives over 2 gloo ranks, DDP equivalence.

Each 2-rank test forks two processes that join a gloo group through `init_distributed` (as under
torchrun), save what they computed, and the parent checks it against values written out by hand
or computed in one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from multiprocess import WORLD, run_ranks
from torch import nn

from engine.distributed import (
    DistEnv,
    all_reduce_mean,
    any_rank_flag,
    broadcast_object,
    convert_sync_bn,
    init_distributed,
    is_main,
    wrap_ddp,
)
from utility.errors import ConfigError

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")






def _join(rank: int, port: int) -> DistEnv:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    return init_distributed("cpu")


# -- single process ---------------------------------------------------------------------------------
@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


def test_single_process_env_and_identity_helpers(no_torchrun):
    env = init_distributed("cpu")
    assert (env.rank, env.local_rank, env.world_size, env.is_main) == (0, 0, 1, True)
    assert env.device == torch.device("cpu")
    assert is_main()
    assert all_reduce_mean(2.5) == 2.5
    assert torch.equal(all_reduce_mean(torch.tensor([1.0, 2.0])), torch.tensor([1.0, 2.0]))
    assert any_rank_flag(True) is True and any_rank_flag(False) is False
    assert broadcast_object({"a": 1}) == {"a": 1}
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert wrap_ddp(model, env) is model
    assert convert_sync_bn(model) is model


def test_auto_device_without_cuda_is_cpu(no_torchrun):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only fallback")
    assert init_distributed("auto").device == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        init_distributed("cuda")


def test_torchrun_without_master_address_is_a_config_error(no_torchrun, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        init_distributed("cpu")


# -- collectives over two ranks --------------------------------------------------------------------
def _helpers_worker(rank: int, port: int, out: str) -> None:
    env = _join(rank, port)
    from engine.distributed import barrier, cleanup

    results = {
        "env": (env.rank, env.local_rank, env.world_size, env.is_main, str(env.device)),
        "is_main": is_main(),
        "mean_float": all_reduce_mean(float(rank + 1)),  # (1 + 2) / 2
        "mean_tensor": all_reduce_mean(torch.tensor([2.0 * rank, 4.0])),
        "flag_one": any_rank_flag(rank == 1, "cpu"),
        "flag_none": any_rank_flag(False),
        "flag_all": any_rank_flag(True),
        "object": broadcast_object({"run": f"from-{rank}", "ranks": [rank]}),
        "object_src1": broadcast_object(("tuple", rank), src=1),
    }
    barrier()
    try:
        convert_sync_bn(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
        results["sync_bn_cpu"] = "no error"
    except ConfigError as error:
        results["sync_bn_cpu"] = str(error)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    cleanup()


def test_collectives_over_two_ranks(tmp_path):
    ranks = run_ranks(_helpers_worker, tmp_path)
    for rank, r in enumerate(ranks):
        assert r["env"] == (rank, rank, 2, rank == 0, "cpu")
        assert r["is_main"] == (rank == 0)
        assert r["mean_float"] == 1.5 and isinstance(r["mean_float"], float)
        assert torch.equal(r["mean_tensor"], torch.tensor([1.0, 4.0]))
        assert r["flag_one"] is True, "one rank's True must stop every rank"
        assert r["flag_none"] is False and r["flag_all"] is True
        assert r["object"] == {"run": "from-0", "ranks": [0]}
        assert r["object_src1"] == ("tuple", 1)
        assert "SYNC_BN" in r["sync_bn_cpu"]


# -- DDP: two ranks x batch B == one process x batch 2B --------------------------------------------
BATCH, STEPS, LR = 4, 3, 0.1


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class PerRankState(nn.Module):
    """State that must stay different on each rank (as Partial FC shards)."""

    ddp_ignore = True

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.full((2,), value))
        self.register_buffer("counter", torch.full((1,), value))


class Bundle(nn.Module):
    def __init__(self, rank_value: float) -> None:
        super().__init__()
        self.net = TinyNet()
        self.per_rank = PerRankState(rank_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _ddp_data():
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(STEPS, WORLD * BATCH, 2, 4, 4, generator=generator)
    labels = torch.randint(0, 5, (STEPS, WORLD * BATCH), generator=generator)
    return inputs, labels


def _train(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, parameters) -> None:
    optimizer = torch.optim.SGD(parameters, lr=LR, momentum=0.9, weight_decay=5e-4)
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs[step]), labels[step])
        loss.backward()
        optimizer.step()


def _ddp_worker(rank: int, port: int, out: str) -> None:
    env = _join(rank, port)
    from engine.distributed import cleanup

    torch.manual_seed(1 + rank)  # different init per rank: DDP must broadcast rank 0's weights
    bundle = Bundle(rank_value=float(rank + 7))
    model = wrap_ddp(bundle, env)
    inputs, labels = _ddp_data()
    local = slice(rank * BATCH, (rank + 1) * BATCH)
    _train(model, inputs[:, local], labels[:, local], bundle.net.parameters())
    torch.save({"net": bundle.net.state_dict(), "per_rank": bundle.per_rank.state_dict(),
                "wrapped": type(model).__name__}, Path(out) / f"rank{rank}.pt")
    cleanup()


def test_ddp_two_ranks_match_one_process_with_the_whole_batch(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    torch.manual_seed(1)  # rank 0's initial weights
    reference = Bundle(rank_value=7.0).net
    inputs, labels = _ddp_data()
    _train(reference, inputs, labels, reference.parameters())
    for r in ranks:
        assert r["wrapped"] == "DistributedDataParallel"
        for name, value in reference.state_dict().items():
            assert torch.allclose(r["net"][name], value, atol=1e-6, rtol=0), name
    # modules marked ddp_ignore keep their own per-rank values (neither broadcast nor averaged)
    assert torch.equal(ranks[0]["per_rank"]["value"], torch.full((2,), 7.0))
    assert torch.equal(ranks[1]["per_rank"]["value"], torch.full((2,), 8.0))
    assert torch.equal(ranks[1]["per_rank"]["counter"], torch.full((1,), 8.0))


def test_exit_status_returns_the_code_in_a_single_process():
    from engine.distributed import exit_status

    assert exit_status(3) == 3  # no group joined: the caller's sys.exit tears down normally


def test_ddp_ignored_names_cover_marked_modules():
    from engine.distributed import ddp_ignored_names

    names = ddp_ignored_names(Bundle(rank_value=0.0))
    assert names == ["per_rank.counter", "per_rank.value"]


def test_frozen_teacher_is_kept_out_of_ddp():
    from engine.distributed import ddp_ignored_names
    from kd.base import FrozenTeacher
    from models.network import Network

    holder = nn.Module()
    holder.student = nn.Linear(2, 2)
    holder.teacher = FrozenTeacher(Network(nn.Linear(2, 2)))
    assert ddp_ignored_names(holder) == ["teacher.network.backbone.bias", "teacher.network.backbone.weight"]


def _exit_with_ddp_alive_worker(rank: int, port: int, out: str) -> None:
    """The end of a rank's run, as `train_*.py` ends it: cleanup, then `sys.exit(exit_status(0))`."""
    import atexit
    import sys

    env = _join(rank, port)
    from engine.distributed import cleanup, exit_status

    model = wrap_ddp(nn.Linear(4, 2), env)  # still referenced when the process exits, as in a run
    model(torch.randn(3, 4)).sum().backward()
    loss = all_reduce_mean(torch.tensor([float(rank)]))  # a run's last collective: the logged mean
    torch.save({"grad": model.module.weight.grad, "loss": loss}, Path(out) / f"rank{rank}.pt")
    atexit.register((Path(out) / f"teardown{rank}").touch)  # runs only if the interpreter tears down
    sys.stdout = open(Path(out) / f"stdout{rank}.txt", "w")  # block-buffered, like a redirected stdout
    print(f"rank {rank} done")
    cleanup()
    sys.exit(exit_status(0))


def test_ranks_exit_cleanly_while_a_ddp_model_is_still_alive(tmp_path):
    """Without the barrier in `cleanup` one such exit in three or four aborted with SIGABRT; with it
    one CI run still failed on it (the teardown of rank 0, the TCPStore's host), hence `exit_status`."""
    for attempt in range(8):
        out = tmp_path / str(attempt)
        out.mkdir()
        ranks = run_ranks(_exit_with_ddp_alive_worker, out, weights_only=True)  # raises unless both exit 0
        for rank in range(WORLD):
            assert (out / f"stdout{rank}.txt").read_text() == f"rank {rank} done\n"  # flushed before leaving
            assert not (out / f"teardown{rank}").exists()  # the interpreter's teardown was skipped
        assert torch.equal(ranks[0]["grad"], ranks[1]["grad"])  # averaged over the two ranks
        assert ranks[0]["loss"].item() == ranks[1]["loss"].item() == 0.5
