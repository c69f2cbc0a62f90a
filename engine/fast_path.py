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

On a CPU whose oneDNN runs AVX-512 kernels, bf16 with channels_last is refused (see
`cpu_bf16_channels_last_is_unsafe`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from utility.errors import ConfigError

#: ONEDNN_MAX_CPU_ISA values that keep oneDNN off its AVX-512 kernels
_BELOW_AVX512 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}


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


def cpu_bf16_channels_last_is_unsafe() -> bool:
    """Whether oneDNN here would run bf16 channels_last convolutions with its AVX-512 kernels.

    Those corrupt the heap: with torch 2.13.0 (CPU wheel) on an AMD EPYC with AVX-512, the backward
    of a bf16 1x1 stride-2 convolution (an iResNet or CIFAR ResNet downsample) on a channels_last
    4 x 8 x 112 x 112 input ended in "malloc(): corrupted top size" or "double free", in eager mode
    as under torch.compile. Contiguous inputs, or `ONEDNN_MAX_CPU_ISA=AVX2`, were fine.
    """
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return torch.cpu._is_avx512_supported() and isa not in _BELOW_AVX512


def apply_fast_path(cfg: Any, device: torch.device | str) -> Any:
    """A frozen copy of `cfg` whose SOLVER.COMPILE / CHANNELS_LAST / FUSED hold the effective switches.

    On CUDA it also sets `torch.backends.cudnn.benchmark` (see `cudnn_benchmark`).
    """
    effective = resolve_fast_path(cfg, device)
    if (torch.device(device).type == "cpu" and effective.channels_last and cfg.SOLVER.PRECISION == "bf16"
            and cpu_bf16_channels_last_is_unsafe()):
        raise ConfigError("SOLVER.PRECISION bf16 with channels_last (SOLVER.CHANNELS_LAST or FAST_PATH all) on "
                          "this AVX-512 CPU: oneDNN's bf16 convolution backward corrupts memory there; set "
                          "SOLVER.FAST_PATH switches and SOLVER.CHANNELS_LAST False, or run with ONEDNN_MAX_CPU_ISA=AVX2")
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
