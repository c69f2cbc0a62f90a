"""Optimiser and learning-rate schedule from the SOLVER config node.

The schedule is a pure function of the iteration (`lr_factor`), stepped once per iteration, so it
is exact under resume and independent of how epochs are counted. Epoch milestones decay at the
first iteration of that epoch; the seeds' stepping quirks (A-SKD's epoch-start step, AdaDistill's
`m - 1 <= epoch` rule) are written into their configs as the effective milestones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from utility.errors import ConfigError


def scaled_lr(cfg: Any, global_batch: int) -> float:
    """Base lr, optionally scaled linearly with the batch (AdaDistill: lr * batch / 512)."""
    lr = float(cfg.SOLVER.LR)
    if cfg.SOLVER.LR_REFERENCE_BATCH > 0:
        lr *= global_batch / cfg.SOLVER.LR_REFERENCE_BATCH
    return lr


def build_optimizer(cfg: Any, parameters: Iterable[nn.Parameter], lr: float, device: torch.device) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov) or AdamW over `parameters`; fused kernels on CUDA when asked."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: the model has no trainable parameters")
    fused = bool(cfg.SOLVER.FUSED) and device.type == "cuda"
    solver = cfg.SOLVER
    if solver.OPTIMIZER == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=solver.MOMENTUM, nesterov=solver.NESTEROV,
                               weight_decay=solver.WEIGHT_DECAY, **({"fused": True} if fused else {}))
    return torch.optim.AdamW(params, lr=lr, betas=tuple(solver.BETAS), weight_decay=solver.WEIGHT_DECAY,
                             **({"fused": True} if fused else {}))


def milestone_iterations(cfg: Any, iters_per_epoch: int) -> list[int]:
    """Multistep decay points in iterations."""
    factor = iters_per_epoch if cfg.SOLVER.MILESTONE_UNIT == "epoch" else 1
    return sorted(int(round(m * factor)) for m in cfg.SOLVER.MILESTONES)


def warmup_iterations(cfg: Any, iters_per_epoch: int) -> int:
    return max(int(cfg.SOLVER.WARMUP_ITERS), int(round(cfg.SOLVER.WARMUP_EPOCHS * iters_per_epoch)))


def lr_factor(iteration: int, total: int, cfg: Any, iters_per_epoch: int, base_lr: float) -> float:
    """Multiplier of the base lr at `iteration` (0-based): warm-up times the decay schedule."""
    solver = cfg.SOLVER
    warmup = warmup_iterations(cfg, iters_per_epoch)
    warm = min(1.0, (iteration + 1) / warmup) if warmup > 0 else 1.0
    floor = solver.MIN_LR / base_lr if base_lr > 0 else 0.0
    if solver.SCHEDULE == "multistep":
        passed = sum(iteration >= m for m in milestone_iterations(cfg, iters_per_epoch))
        decay = solver.GAMMA ** passed
    elif solver.SCHEDULE == "cosine":
        progress = min(1.0, max(0, iteration - warmup) / max(1, total - warmup))
        decay = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif solver.SCHEDULE == "poly":
        progress = min(1.0, max(0, iteration - warmup) / max(1, total - warmup))
        decay = floor + (1 - floor) * (1 - progress)
    else:
        decay = 1.0
    return warm * decay


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, total: int, iters_per_epoch: int,
                    base_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration; its state (last_epoch) resumes exactly."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, cfg, iters_per_epoch, base_lr)
    )
