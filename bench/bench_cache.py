"""Teacher-output cache: CIFAR-100 KD resnet32x4 -> resnet8x4 step with the live teacher vs `DATA.TEACHER_CACHE`.

    python -m bench.bench_cache [--device cpu|cuda] [--batch N] [--steps N] [--warmup N] [--fast-path auto|all|switches] [--threads N]

Both variants are `engine.trainer.Trainer.train_step` on the same synthetic CIFAR-100 data (flip-only
augmentation, DATA.CROP_PADDING 0, as the cache requires) and the same randomly initialised teacher
checkpoint; the cached one reads the teacher's logits from the memory-mapped cache instead of running
the teacher. The one-off cache build (two teacher passes over the training set) is timed separately.
CPU defaults: batch 32, 1 warm-up, 5 timed; CUDA defaults: batch 1024, 5 warm-up, 20 timed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import Variant, format_table, header_lines, measure, parser, resolve
from data.synthetic_classification import write_cifar100
from engine.checkpoint import FORMAT, save_checkpoint
from engine.trainer import Trainer
from models import build_network
from utility.config import load_config


def _config(root: Path, out: Path, teacher: Path, batch: int, device: torch.device, fast_path: str, *extra: str):
    return load_config(None, [
        "EXPERIMENT.TASK", "classification", "EXPERIMENT.OUTPUT_DIR", str(out), "EXPERIMENT.DEVICE", str(device),
        "DATA.ROOT", str(root), "DATA.TRAIN", "cifar-100-python", "DATA.FORMAT", "cifar100", "DATA.COLOR", "rgb",
        "DATA.IMAGE_SIZE", "32", "DATA.CROP_PADDING", "0", "DATA.WORKERS", "0", "DATA.ON_DEVICE", "True",
        "TEACHER.BACKBONE", "cifar.resnet32x4", "TEACHER.CHECKPOINT", str(teacher),
        "STUDENT.BACKBONE", "cifar.resnet8x4", "DISTILL.TYPE", "kd", "SOLVER.BATCH_SIZE", str(batch),
        "SOLVER.MAX_ITERS", "1000000", "SOLVER.FAST_PATH", fast_path, "LOG.PROGRESS", "False",
        "LOG.TENSORBOARD", "False", *extra,
    ])


def _batches(trainer: Trainer) -> Iterator[dict[str, Any]]:
    while True:
        yield from trainer.loader


def _stepper(trainer: Trainer):
    batches = _batches(trainer)

    def step() -> None:
        trainer.train_step(next(batches))
        trainer.iteration += 1
    return step


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0], cpu={"batch": 32, "steps": 5, "warmup": 1},
                  cuda={"batch": 1024, "steps": 20, "warmup": 5}).parse_args(argv)
    args, device = resolve(args)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        per_class = max(2, -(-2 * args.batch // 100))
        write_cifar100(work / "data", num_classes=100, train_per_class=per_class, test_per_class=1)
        teacher_cfg = load_config(None, ["TEACHER.BACKBONE", "cifar.resnet32x4"])
        teacher = build_network(teacher_cfg.TEACHER, 100)
        teacher_path = work / "teacher.pt"
        save_checkpoint({"format": FORMAT, "model": {f"student.{k}": v for k, v in teacher.state_dict().items()}},
                        teacher_path)
        live = Trainer(_config(work / "data", work / "live", teacher_path, args.batch, device, args.fast_path))
        start = time.perf_counter()
        cached = Trainer(_config(work / "data", work / "cached", teacher_path, args.batch, device, args.fast_path,
                                 "DATA.TEACHER_CACHE", str(work / "cache")))
        build_s = time.perf_counter() - start
        variants = [Variant("live teacher", _stepper(live), args.batch),
                    Variant("DATA.TEACHER_CACHE", _stepper(cached), args.batch)]
        measure(variants, device, args.warmup, args.steps)
        samples = len(cached.dataset)
    print(header_lines(device, None, args))
    print(format_table("CIFAR-100 KD resnet32x4 -> resnet8x4, train_step", variants, device, None, None,
                       reference="live teacher"))
    print(f"cache build (trainer construction incl. 2 x {samples} teacher forwards): {build_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
