"""The GPU fast path: one switch (`SOLVER.FAST_PATH`) over torch.compile, channels_last and fused optimisers.

Existing recipes set `SOLVER.COMPILE`, `SOLVER.CHANNELS_LAST` and `SOLVER.FUSED` as booleans (default
false), which is right for CPU runs and tests but leaves a GPU far from its limit. `FAST_PATH` decides
once, at set-up, what the run really uses, so the trainer and the optimiser builder keep reading the
individual keys:

- `auto` (default): all three on when the device is CUDA; on any other device the individual keys alone.
- `all`: all three on whatever the device (fused kernels still only where the optimiser has them: CUDA).
- `switches`: the individual keys alone.

(Not `on`/`off`: YAML reads those unquoted words as booleans.)

Precision stays with `SOLVER.PRECISION` (bf16 autocast on CUDA under `auto`); recipes that pin `fp32`
for faithfulness keep it. The resolved switches are written into the run's `config.yaml`.

cuDNN's autotuner (`SOLVER.CUDNN_BENCHMARK`, on by default) is decided here too, whatever the fast
path: input shapes are fixed during training, so the one-off search pays for itself within a few
steps; `EXPERIMENT.DETERMINISTIC` turns it off (the search may pick different algorithms per run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class FastPath:
    """What a run actually uses after `SOLVER.FAST_PATH` is applied to the individual switches."""

    compile: bool
    channels_last: bool
    fused: bool

    @property
    def any(self) -> bool:
        return self.compile or self.channels_last or self.fused


def resolve_fast_path(cfg: Any, device: torch.device | str) -> FastPath:
    """The effective (compile, channels_last, fused) for `cfg` on `device`."""
    device = torch.device(device)
    mode = str(cfg.SOLVER.FAST_PATH)
    forced = mode == "all" or (mode == "auto" and device.type == "cuda")
    return FastPath(
        compile=bool(cfg.SOLVER.COMPILE) or forced,
        channels_last=bool(cfg.SOLVER.CHANNELS_LAST) or forced,
        fused=(bool(cfg.SOLVER.FUSED) or forced) and device.type == "cuda",
    )


def apply_fast_path(cfg: Any, device: torch.device | str) -> Any:
    """A frozen copy of `cfg` whose SOLVER.COMPILE / CHANNELS_LAST / FUSED hold the effective switches.

    On CUDA it also sets `torch.backends.cudnn.benchmark` (see `cudnn_benchmark`).
    """
    effective = resolve_fast_path(cfg, device)
    resolved = cfg.clone()
    resolved.defrost()
    resolved.SOLVER.COMPILE = effective.compile
    resolved.SOLVER.CHANNELS_LAST = effective.channels_last
    resolved.SOLVER.FUSED = effective.fused
    resolved.freeze()
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark(cfg)
    return resolved


def cudnn_benchmark(cfg: Any) -> bool:
    """Whether a CUDA run autotunes cuDNN: SOLVER.CUDNN_BENCHMARK unless EXPERIMENT.DETERMINISTIC."""
    return bool(cfg.SOLVER.CUDNN_BENCHMARK) and not bool(cfg.EXPERIMENT.DETERMINISTIC)
