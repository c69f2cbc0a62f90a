"""What every benchmark shares: devices, honest timing, peak memory, FLOPs, MFU, and the two loops.

Each training benchmark times, in one process on one device and on the same models, loss and batch:

- `baseline`: a hand-written fp32 eager loop as the seed repositories run it: every sample is
  pre-processed on the CPU (flip, low-resolution degradation with per-sample `F.interpolate`,
  normalisation), the batch is stacked and copied to the device, then forward, loss, backward, step.
- `baseline, model only`: the same loop on a batch pre-processed once outside the timing, i.e. what
  the models and the optimiser cost alone (the seeds hide part of their CPU work in DataLoader
  workers; this row shows the floor any data path can reach).
- `distillery`: `engine.trainer.Trainer.train_step` itself on a uint8 batch (the distiller from the
  registry, `data.transforms.TrainTransform` on the device, the configured optimiser, the fast path
  that `SOLVER.FAST_PATH` resolves to on that device).

Timing: warm-up steps first (excluded; compilation and autotuning happen there), then the timed steps
of the variants interleaved (A B C A B C ...) so that load from other processes on a shared machine
hits every variant alike; each step is timed alone, synchronised on CUDA, and the median is reported.
Peak memory is read during each variant's first timed step: on CUDA the allocator's high-water mark
(weights and optimiser state included), on CPU the growth of the resident set size over the step,
sampled every 2 ms (transient memory only: weights and optimiser state exist before it). FLOPs are counted by
`torch.utils.flop_counter` on one eager step of the model-only loop (forward + backward + teacher
forward, 2 FLOPs per multiply-accumulate); model-FLOPs utilisation divides the achieved rate by the
device's bf16 matrix peak, measured once at start with a large matrix product (CUDA only).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from data.transforms import TrainTransform
from engine.distributed import DistEnv
from engine.fast_path import apply_fast_path
from engine.optim import build_optimizer, build_scheduler, scaled_lr
from engine.trainer import Plan, Trainer, _precision_dtype
from kd import batch_request, build_distiller
from models import build_network
from models.network import Network
from utility.config import load_config

ROOT = Path(__file__).resolve().parents[1]


# -- devices and clocks ---------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    """`auto` = CUDA when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a host clock read after it measures that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def matmul_peak_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float | None:
    """Measured bf16 matrix-product rate of a CUDA device in TFLOP/s (median of `repeats`); None on CPU."""
    if device.type != "cuda":
        return None
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * size**3 / statistics.median(times) / 1e12


# -- memory ---------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


class PeakMemory:
    """Peak memory of the enclosed work in bytes (`.peak`): CUDA allocator high-water mark, or on CPU
    the largest growth of the process's resident set over its size at entry (sampled every 2 ms)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, start: int) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes() - start)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, args=(_rss_bytes(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (forward and backward ops alike), by torch's flop counter."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# -- measurement ----------------------------------------------------------------------------------
@dataclass
class Variant:
    """One thing to time: `step()` runs one full training step (or one unit of work)."""

    name: str
    step: Callable[[], Any]
    items_per_step: int
    times: list[float] = field(default_factory=list)
    peak_bytes: int | None = None  # None: not measured

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def items_per_s(self) -> float:
        return self.items_per_step / self.median_s


def measure(variants: Sequence[Variant], device: torch.device, warmup: int, steps: int) -> None:
    """Warm each variant up, then time `steps` steps of every variant, interleaved, each synchronised
    and timed on its own; peak memory is read during each variant's first timed step."""
    for variant in variants:
        for _ in range(warmup):
            variant.step()
        synchronize(device)
    for round_number in range(steps):
        for variant in variants:
            memory = PeakMemory(device) if round_number == 0 else None
            synchronize(device)
            if memory is not None:
                memory.__enter__()
            start = time.perf_counter()
            variant.step()
            synchronize(device)
            variant.times.append(time.perf_counter() - start)
            if memory is not None:
                memory.__exit__()
                variant.peak_bytes = memory.peak


def format_table(title: str, variants: Sequence[Variant], device: torch.device, flops_per_item: float | None,
                 peak_tflops: float | None, reference: str, unit: str = "images/s", step_label: str = "ms/step") -> str:
    """A plain-text table: rate, ms/step, peak memory, achieved TFLOP/s and MFU, ratio to `reference`."""
    ref = next(v for v in variants if v.name == reference)
    header = f"{'variant':<30}{unit:>11}{step_label:>11}{'peak MiB':>10}{'TFLOP/s':>9}{'MFU':>8}{'ratio':>8}"
    lines = [title, header, "-" * len(header)]
    for variant in variants:
        rate = variant.items_per_s
        tflops = flops_per_item * rate / 1e12 if flops_per_item else None
        mfu = f"{100 * tflops / peak_tflops:.1f}%" if (tflops is not None and peak_tflops) else "n/a"
        lines.append(
            f"{variant.name:<30}{rate:>11.1f}{1e3 * variant.median_s:>11.1f}"
            f"{(f'{variant.peak_bytes / 2**20:.0f}' if variant.peak_bytes is not None else 'n/a'):>10}"
            f"{(f'{tflops:.3f}' if tflops is not None else 'n/a'):>9}{mfu:>8}{rate / ref.items_per_s:>7.2f}x"
        )
    memory = "allocator high-water mark" if device.type == "cuda" else "resident-set growth in a steady-state step"
    lines.append(f"ratio = {unit} over '{reference}'; peak MiB = {memory}")
    return "\n".join(lines)


def header_lines(device: torch.device, peak_tflops: float | None, args: argparse.Namespace) -> str:
    peak = f"{peak_tflops:.0f} TFLOP/s bf16 (measured, 8192^3 matmul)" if peak_tflops else "n/a (CPU)"
    return (f"date {datetime.datetime.now().isoformat(timespec='seconds')}  device {device} ({device_name(device)})  "
            f"torch {torch.__version__}\nbatch {args.batch}  warm-up {args.warmup}  timed steps {args.steps} (median)  "
            f"fast path {args.fast_path}  device peak {peak}")


# -- command line ---------------------------------------------------------------------------------
def parser(description: str, cpu: dict[str, int], cuda: dict[str, int]) -> argparse.ArgumentParser:
    """--device/--batch/--steps/--warmup/--fast-path; unset numbers take `cpu` or `cuda` defaults."""
    result = argparse.ArgumentParser(description=description)
    result.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    result.add_argument("--batch", type=int, default=None, help=f"batch size (default CPU {cpu['batch']}, "
                                                                f"CUDA {cuda['batch']})")
    result.add_argument("--steps", type=int, default=None, help="timed steps per variant (median reported)")
    result.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps per variant")
    result.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier on a shared CPU")
    result.add_argument("--fast-path", default="auto", choices=("auto", "all", "switches"),
                        help="SOLVER.FAST_PATH for the Distillery step (auto: on for CUDA)")
    result.add_argument("--quick", action="store_true",
                        help="batch 2, no warm-up, 1 timed step: checks that the workload runs (no figures)")
    result.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="profile this many Distillery steps: top kernels and what bounds the step")
    result.add_argument("--out", default="", metavar="DIR", help="also write the results as DIR/<name>.json and .md")
    result.set_defaults(_cpu=cpu, _cuda=cuda)
    return result


def resolve(args: argparse.Namespace) -> tuple[argparse.Namespace, torch.device]:
    """Fill unset numbers with the device's defaults."""
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = args._cuda if device.type == "cuda" else args._cpu
    if getattr(args, "quick", False):
        defaults = {"batch": 2, "steps": 1, "warmup": 0}
    for key in ("batch", "steps", "warmup"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    return args, device


# -- what bounds a step -----------------------------------------------------------------------------
#: dense bf16 matrix peaks from the vendors' datasheets (TFLOP/s, no sparsity), by device-name substring
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0,
                         "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
_MATRIX_KERNELS = re.compile(r"gemm|conv|wgmma|cutlass|cudnn|xmma|sm90|matmul|\bmm\b|addmm|bmm|dot", re.I)


def datasheet_peak_tflops(device: torch.device) -> float | None:
    """The detected GPU's datasheet dense bf16 peak, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DATASHEET_BF16_TFLOPS.items() if key in name), None)


def profile_step(step: Callable[[], Any], device: torch.device, steps: int, top: int = 10) -> dict[str, Any]:
    """torch.profiler over `steps` calls of `step`: the top kernels (CUDA) or ops (CPU) by self time, the
    share of matrix kernels, how busy the device was over the wall time, and a one-line verdict.

    The verdict: device busy < 70 % of the wall time -> host-bound (Python, launches, data, syncs);
    else matrix kernels >= 60 % of device time -> matrix-bound; else memory/elementwise-bound.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    wall_us = (time.perf_counter() - start) * 1e6
    on_device = device.type == "cuda"

    def self_us(event: Any) -> float:
        if on_device:
            return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
        return float(event.self_cpu_time_total)

    events = [e for e in prof.key_averages() if self_us(e) > 0 and not e.key.startswith("ProfilerStep")]
    total = sum(self_us(e) for e in events) or 1.0
    matrix = sum(self_us(e) for e in events if _MATRIX_KERNELS.search(e.key)) / total
    ranked = sorted(events, key=self_us, reverse=True)[:top]
    kernels = [{"name": e.key[:100], "ms_per_step": self_us(e) / steps / 1e3, "share": self_us(e) / total}
               for e in ranked]
    busy = total / wall_us if on_device else None
    if busy is not None and busy < 0.7:
        bound = f"host-bound: the GPU is busy {100 * busy:.0f} % of the step (Python, launches, data or syncs)"
    elif matrix >= 0.6:
        bound = f"matrix-bound: matrix kernels take {100 * matrix:.0f} % of {'GPU' if on_device else 'op'} time"
    else:
        bound = (f"memory/elementwise-bound: matrix kernels take only {100 * matrix:.0f} % of "
                 f"{'GPU' if on_device else 'op'} time")
    return {"steps": steps, "wall_ms_per_step": wall_us / steps / 1e3, "device_busy": busy,
            "matrix_share": matrix, "bound": bound, "top": kernels}


def format_profile(profile: dict[str, Any]) -> str:
    lines = [f"profile over {profile['steps']} steps ({profile['wall_ms_per_step']:.1f} ms/step wall): "
             f"{profile['bound']}", f"{'share':>7}{'ms/step':>9}  kernel / op"]
    lines += [f"{100 * k['share']:>6.1f}%{k['ms_per_step']:>9.2f}  {k['name']}" for k in profile["top"]]
    return "\n".join(lines)


def write_results(out: str, name: str, record: dict[str, Any], text: str) -> None:
    """`out/<name>.json` (the figures) and `out/<name>.md` (the printed table in a code block)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (folder / f"{name}.md").write_text(f"### {record.get('title', name)}\n\n```\n{text}\n```\n")


def variant_record(variant: Variant, flops_per_item: float | None, peaks: dict[str, float | None]) -> dict[str, Any]:
    """One variant's figures: rate, step time, peak memory, TFLOP/s and MFU against each known peak."""
    tflops = flops_per_item * variant.items_per_s / 1e12 if flops_per_item else None
    return {"name": variant.name, "items_per_s": variant.items_per_s, "ms_per_step": 1e3 * variant.median_s,
            "peak_mib": variant.peak_bytes / 2**20 if variant.peak_bytes is not None else None,
            "tflops": tflops,
            **{f"mfu_{key}": (tflops / peak if tflops is not None and peak else None) for key, peak in peaks.items()}}


# -- the training workloads -----------------------------------------------------------------------
@dataclass
class Workload:
    """A distillation set-up both loops run: the recipe, the data shape, the seed-style per-sample
    pre-processing and the hand-written loss of the baseline."""

    title: str
    config: str  # recipe YAML, relative to the repository root
    num_classes: int
    stored_size: int  # side of the uint8 images the loader delivers
    prepare_sample: Callable[[np.ndarray, np.random.Generator], tuple[Tensor, Tensor]]  # -> (student, teacher) CHW
    loss: Callable[[Network, Network | None, Tensor, Tensor, Tensor], Tensor]
    overrides: list[str] = field(default_factory=list)
    on_device: bool = False  # the loader serves batches from device memory (DATA.ON_DEVICE, CIFAR)


def normalise_sample(image_chw: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """ToTensor + Normalize of one float C x H x W image on [0, 255] (the seeds' per-sample transform)."""
    mean_t = torch.tensor(mean, dtype=image_chw.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=image_chw.dtype).view(-1, 1, 1)
    return (image_chw / 255.0 - mean_t) / std_t


def random_uint8_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """count x size x size x 3 uint8 noise (never zeros: they can run faster than real data)."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def distillery_trainer(cfg: Any, student: Network, teacher: Network | None, num_classes: int,
                       device: torch.device) -> Trainer:
    """A `Trainer` set up as `Trainer.__init__` does (fast path, distiller, channels_last, compile,
    optimiser, schedule, autocast) minus data loading and checkpoints, so `train_step` is the real one."""
    cfg = apply_fast_path(cfg, device)
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.role, trainer.device, trainer.iteration = cfg, "student", device, 0
    trainer.env = DistEnv(rank=0, local_rank=0, world_size=1, device=device)
    trainer.transform = TrainTransform(cfg, batch_request(cfg))
    trainer.distiller = build_distiller(cfg, student, teacher, num_classes).to(device)
    batch = int(cfg.SOLVER.BATCH_SIZE)
    trainer.plan = Plan(iters_per_epoch=10**9, total_iters=10**9, global_batch=batch, batch_per_rank=batch)
    trainer.init_optimizer = None
    if cfg.SOLVER.CHANNELS_LAST:
        trainer.distiller.to(memory_format=torch.channels_last)
    if cfg.SOLVER.COMPILE:
        trainer._compile()
    trainer.model = trainer.distiller
    trainer.base_lr = scaled_lr(cfg, int(cfg.SOLVER.BATCH_SIZE))
    trainer.optimizer = build_optimizer(cfg, trainer.distiller.trainable_parameters(), trainer.base_lr, device)
    trainer.scheduler = build_scheduler(trainer.optimizer, cfg, 10**9, 10**9, trainer.base_lr)
    trainer.autocast_dtype = _precision_dtype(cfg, device)
    trainer.model.train()
    return trainer


class BaselineLoop:
    """The hand-written fp32 eager loop: per-sample CPU pre-processing, stack, copy, forward, loss,
    backward, optimiser step (plain torch SGD with the recipe's hyper-parameters, on the student's
    own parameters), gradient clipping when the recipe clips."""

    def __init__(self, workload: Workload, cfg: Any, student: Network, teacher: Network | None,
                 device: torch.device) -> None:
        self.workload = workload
        self.device = device
        self.student = student.to(device).train()
        self.teacher = teacher.to(device).eval() if teacher is not None else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
        solver = cfg.SOLVER
        params = list(self.student.parameters())
        lr = scaled_lr(cfg, int(solver.BATCH_SIZE))
        if solver.OPTIMIZER == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=lr, momentum=solver.MOMENTUM, nesterov=solver.NESTEROV,
                                             weight_decay=solver.WEIGHT_DECAY)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(solver.BETAS),
                                               weight_decay=solver.WEIGHT_DECAY)
        self.grad_clip = float(solver.GRAD_CLIP)
        self.rng = np.random.default_rng(0)

    def prepare(self, images: np.ndarray) -> tuple[Tensor, Tensor]:
        """Per-sample CPU pre-processing, then one stacked batch per view on the device."""
        views = [self.workload.prepare_sample(image, self.rng) for image in images]
        student = torch.stack([s for s, _ in views])
        teacher = torch.stack([t for _, t in views])
        return student.to(self.device, non_blocking=True), teacher.to(self.device, non_blocking=True)

    def train_on(self, x_student: Tensor, x_teacher: Tensor, labels: Tensor) -> Tensor:
        loss = self.workload.loss(self.student, self.teacher, x_student, x_teacher, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.student.parameters(), self.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def step(self, images: np.ndarray, labels: Tensor) -> Tensor:
        x_student, x_teacher = self.prepare(images)
        return self.train_on(x_student, x_teacher, labels.to(self.device, non_blocking=True))


def load_workload_config(workload: Workload, batch: int, device: torch.device, fast_path: str) -> Any:
    overrides = ["SOLVER.BATCH_SIZE", str(batch), "EXPERIMENT.DEVICE", str(device.type), "DATA.NUM_CLASSES",
                 str(workload.num_classes), "SOLVER.FAST_PATH", fast_path, *workload.overrides]
    return load_config(ROOT / workload.config, overrides)


def run_workload(workload: Workload, args: argparse.Namespace) -> str:
    """Build both loops on the same initial weights, measure the three variants, return the table."""
    args, device = resolve(args)
    torch.manual_seed(0)
    cfg = load_workload_config(workload, args.batch, device, args.fast_path)
    student = build_network(cfg.STUDENT, workload.num_classes)
    teacher = build_network(cfg.TEACHER, workload.num_classes) if cfg.TEACHER.BACKBONE else None
    baseline = BaselineLoop(workload, cfg, copy.deepcopy(student), copy.deepcopy(teacher), device)
    trainer = distillery_trainer(cfg, student, teacher, workload.num_classes, device)
    peak = matmul_peak_tflops(device)

    images = random_uint8_images(args.batch, workload.stored_size)
    labels = torch.as_tensor(np.random.default_rng(1).integers(0, workload.num_classes, args.batch))
    batch = {"image": torch.from_numpy(images), "label": labels, "index": torch.arange(args.batch)}
    if workload.on_device:  # what TrainLoader yields for DATA.ON_DEVICE: tensors already on the device
        batch = {key: value.to(device) for key, value in batch.items()}
    elif device.type == "cuda":  # what a DataLoader with pin_memory yields
        batch = {key: value.pin_memory() for key, value in batch.items()}
    ready_student, ready_teacher = baseline.prepare(images)
    ready_labels = labels.to(device)

    def distillery_step() -> None:
        trainer.train_step(batch)
        trainer.iteration += 1

    flops = count_flops(lambda: baseline.train_on(ready_student, ready_teacher, ready_labels)) / args.batch
    variants = [
        Variant("baseline (fp32, per-sample)", lambda: baseline.step(images, labels), args.batch),
        Variant("baseline, model only", lambda: baseline.train_on(ready_student, ready_teacher, ready_labels),
                args.batch),
        Variant("distillery train_step", distillery_step, args.batch),
    ]
    measure(variants, device, args.warmup, args.steps)
    effective = trainer.cfg.SOLVER
    datasheet = datasheet_peak_tflops(device)
    lines = [
        header_lines(device, peak, args),
        f"distillery: precision {trainer.autocast_dtype or torch.float32}, compile {effective.COMPILE}, "
        f"channels_last {effective.CHANNELS_LAST}, fused {effective.FUSED}; model FLOPs/image "
        f"{flops / 1e9:.2f} G (student fwd+bwd, teacher fwd)",
        format_table(workload.title, variants, device, flops, peak, reference="baseline (fp32, per-sample)"),
    ]
    if datasheet:
        tflops = flops * variants[-1].items_per_s / 1e12
        lines.append(f"distillery MFU against the datasheet bf16 peak of this GPU ({datasheet:.0f} TFLOP/s): "
                     f"{100 * tflops / datasheet:.1f}%")
    profile = profile_step(distillery_step, device, args.profile) if getattr(args, "profile", 0) else None
    if profile is not None:
        lines.append(format_profile(profile))
    text = "\n".join(lines)
    if getattr(args, "out", ""):
        record = {"title": workload.title, "config": workload.config, "device": device_name(device),
                  "torch": torch.__version__, "batch": args.batch, "warmup": args.warmup, "steps": args.steps,
                  "fast_path": {"precision": str(trainer.autocast_dtype or torch.float32),
                                "compile": bool(effective.COMPILE), "channels_last": bool(effective.CHANNELS_LAST),
                                "fused": bool(effective.FUSED)},
                  "flops_per_image": flops, "peak_tflops_measured": peak, "peak_tflops_datasheet": datasheet,
                  "variants": [variant_record(v, flops, {"measured": peak, "datasheet": datasheet})
                               for v in variants],
                  "profile": profile}
        write_results(args.out, f"{Path(workload.config).parent.name}_{Path(workload.config).stem}_b{args.batch}",
                      record, text)
    return text


def interpolate_sample(image_chw: Tensor, size: int, mode: str) -> Tensor:
    """One C x H x W image resized to size x size (no batch dimension outside)."""
    extra = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(image_chw[None], size=(size, size), mode=mode, **extra)[0]
