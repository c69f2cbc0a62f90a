"""Data-parallel training under `torchrun`: process-group setup, small collectives, DDP wrapping.

One process drives one device. `torchrun --nproc_per_node=N train_student.py ...` sets RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them and joins the
process group (NCCL on CUDA, gloo on CPU). Without them (or with WORLD_SIZE=1) it returns a
single-process `DistEnv` and every helper below degrades to the identity, so the same script runs
unchanged on one device. Nothing happens at import time (unlike insightface's trainer, which sets up
the process group when its modules are imported).

What is wrapped in DDP: only the trained modules (student, method extras). The frozen teacher is
never wrapped: it has no gradients to synchronise and its BN buffers must not be re-broadcast every
step. Modules whose state differs per rank on purpose (Partial FC's class-centre shards,
per-process AdaDistill centres) declare `ddp_ignore = True` and `wrap_ddp` keeps them out of
DDP's broadcast and gradient averaging.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utility.errors import ConfigError

log = logging.getLogger(__name__)

#: set once this process has joined a process group of several ranks (see `exit_status`)
_joined_group = False


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, logs, and writes checkpoints and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def _rank_gpu(local_rank: int) -> torch.device:
    """One process per GPU: LOCAL_RANK picks the device."""
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"LOCAL_RANK {local_rank} but only {count} CUDA device(s) are visible: "
                          f"start at most {count} processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


def _pick_device(device_pref: str, local_rank: int, world_size: int) -> torch.device:
    """`auto`: cuda:<local_rank> when CUDA is available, else cpu; `cpu`; `cuda` / `cuda:N`."""
    if device_pref == "cpu":
        return torch.device("cpu")
    if device_pref == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return _rank_gpu(local_rank)
    if device_pref == "cuda" or device_pref.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"EXPERIMENT.DEVICE is '{device_pref}' but CUDA is not available; "
                              "use 'auto' or 'cpu'")
        if world_size > 1 or device_pref == "cuda":
            if device_pref.startswith("cuda:") and world_size > 1:
                log.warning("EXPERIMENT.DEVICE '%s' ignored under torchrun: rank uses cuda:%d (LOCAL_RANK)",
                            device_pref, local_rank)
            return _rank_gpu(local_rank)
        index_text = device_pref.split(":", 1)[1]
        if not index_text.isdigit():
            raise ConfigError(f"EXPERIMENT.DEVICE '{device_pref}': the index after 'cuda:' must be a number")
        index = int(index_text)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"EXPERIMENT.DEVICE is '{device_pref}' but only "
                              f"{torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device("cuda", index)
    raise ConfigError(f"EXPERIMENT.DEVICE must be auto, cpu, cuda or cuda:N, got {device_pref!r}")


def init_distributed(device_pref: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Join the torchrun job described by the environment, or describe a single process.

    With WORLD_SIZE > 1 the default process group is initialised (NCCL when this rank uses CUDA,
    gloo on CPU) unless it already is; on CUDA the rank's device becomes the current device so that
    NCCL collectives and `broadcast_object` use it.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    device = _pick_device(device_pref, local_rank, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ConfigError(f"WORLD_SIZE={world_size} but {name} is not set; launch with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
        log.info("process group: backend %s, rank %d/%d, device %s", backend, rank, world_size, device)
    if dist.is_initialized():
        global _joined_group
        _joined_group = _joined_group or dist.get_world_size() > 1
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup(wait_for_peers: bool = True) -> None:
    """Leave the process group (safe to call when there is none).

    After a clean finish every rank first meets the others at a barrier. A DDP wrapper keeps the
    gloo process group alive past `destroy_process_group`, until the interpreter exits; if a worker
    thread then still holds the last collective's work (its tensors are Python objects), releasing
    it at exit aborts the process (SIGABRT, "terminate called without an active exception"; one
    exit in three or four here). The barrier's own work is the last one each worker holds. After a
    failure pass `wait_for_peers=False`: peers stuck in another collective would hold this rank
    until the timeout.
    """
    if dist.is_initialized():
        if wait_for_peers and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def exit_status(code: int) -> int:
    """Return `code` to the caller's `sys.exit`, or, in a rank of a multi-process job, exit with it now.

    A rank's interpreter teardown destroys torch's gloo process group, its TCPStore and DDP's
    reducer in no fixed order while their C++ threads may still run; now and then that aborts a
    rank whose work is all done (SIGABRT, "terminate called without an active exception"), which
    torchrun reports as a failed job. The barrier in `cleanup` made it rare, not impossible. So a
    rank that joined a group flushes its logs and standard streams (checkpoints and results are
    already closed files) and leaves with `os._exit`, skipping the teardown. A single process exits
    normally.
    """
    if not _joined_group:
        return code
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if _active() else 0


def get_world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """True on rank 0 and in a single process."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if not _active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _collective_device() -> torch.device:
    """NCCL only moves CUDA tensors; gloo moves CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(value: torch.Tensor | float, op: dist.ReduceOp, divide: bool) -> torch.Tensor | float:
    if not _active():
        return value
    is_tensor = isinstance(value, torch.Tensor)
    if is_tensor:
        tensor = value.detach().clone()
    else:
        tensor = torch.tensor(float(value), dtype=torch.float64)
    original_device = tensor.device
    work = tensor.to(_collective_device())
    dist.all_reduce(work, op=op)
    if divide:
        work = work / dist.get_world_size()
    if is_tensor:
        return work.to(original_device)
    return float(work.item())


def all_reduce_mean(value: torch.Tensor | float) -> torch.Tensor | float:
    """Mean over ranks, for logging losses and metrics; a tensor comes back as a new (detached) tensor,
    a float as a float."""
    return _all_reduce(value, dist.ReduceOp.SUM, divide=True)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (pickled; for small things such as run ids or paths)."""
    if not _active():
        return obj
    holder = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def any_rank_flag(flag: bool, device: torch.device | str | None = None) -> bool:
    """True on every rank when `flag` is True on any rank.

    Used by the non-finite-loss guard: if one rank stopped alone the others would wait forever in
    the next gradient all-reduce, so all ranks take the same decision.
    """
    if not _active():
        return bool(flag)
    device = _collective_device() if device is None else torch.device(device)
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = _collective_device()
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def ddp_ignored_names(module: nn.Module) -> list[str]:
    """Names of parameters and buffers DDP must leave alone: those under any submodule declaring
    `ddp_ignore = True` (the frozen teacher; state that differs per rank on purpose)."""
    names: list[str] = []
    for prefix, sub in module.named_modules():
        if getattr(sub, "ddp_ignore", False):
            head = f"{prefix}." if prefix else ""
            names.extend(head + name for name, _ in sub.named_parameters())
            names.extend(head + name for name, _ in sub.named_buffers())
    return sorted(set(names))


def wrap_ddp(module: nn.Module, env: DistEnv, find_unused_parameters: bool = False,
             broadcast_buffers: bool = True) -> nn.Module:
    """`module` in DistributedDataParallel when world_size > 1, otherwise unchanged.

    The teacher is never put in DDP: every submodule with `ddp_ignore = True` (the frozen teacher
    declares it) is excluded from DDP's initial broadcast, buffer broadcast and gradient
    averaging. `module` must already be on `env.device`. Note that DDP averages gradients, so a
    loss must be this rank's mean over its own batch (Partial FC accounts for this itself).
    """
    if env.world_size <= 1:
        return module
    ignored = ddp_ignored_names(module)
    if ignored:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, output_device=env.device if device_ids else None,
                                   find_unused_parameters=find_unused_parameters,
                                   broadcast_buffers=broadcast_buffers)


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm in `module` as SyncBatchNorm (statistics over the global batch under DDP).

    Only meaningful under DDP; in a single process the module is returned unchanged. PyTorch's
    SyncBatchNorm runs on GPUs only, so a CPU module under DDP is a configuration error.
    """
    if not _active():
        return module
    first = next(module.parameters(), None)
    if first is not None and first.device.type == "cpu":
        raise ConfigError("SOLVER.SYNC_BN needs CUDA devices (SyncBatchNorm does not run on CPU); "
                          "set SOLVER.SYNC_BN False for CPU runs")
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


__all__ = [
    "DistEnv", "init_distributed", "cleanup", "get_rank", "get_world_size", "is_main", "barrier",
    "all_reduce_mean", "broadcast_object", "any_rank_flag", "ddp_ignored_names", "wrap_ddp", "convert_sync_bn",
]
