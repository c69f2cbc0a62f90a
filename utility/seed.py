"""Seeding and RNG-state capture, so runs repeat and resumed runs continue exactly."""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally ask torch for deterministic kernels.

    Deterministic mode also turns cuDNN's autotuner off (it may pick different algorithms per run) and
    sets the cuBLAS workspace that deterministic CUDA matrix products need, unless the user set one.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Every RNG state a training step can touch, for checkpoints (with CUDA: one state per visible
    device, which dropout on the GPU draws from)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured.

    RNG states are CPU byte tensors whatever device a checkpoint was loaded onto (`map_location`
    moves them). CUDA states are restored device by device, as many as both the checkpoint and this
    process have (a different count is logged; exact continuation then holds for those devices only).
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda_states) != count:
            log.warning("the checkpoint holds CUDA RNG states of %d device(s), this process sees %d; "
                        "restoring the first %d", len(cuda_states), count, min(count, len(cuda_states)))
        for index, device_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(device_state.cpu(), index)


def worker_seed(base_seed: int, *parts: int) -> int:
    """A distinct, reproducible 32-bit seed for a (worker, epoch, rank, ...) combination."""
    return int(np.random.SeedSequence([base_seed, *parts]).generate_state(1)[0])
