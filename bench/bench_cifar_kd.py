"""CIFAR-100 KD: resnet32x4 -> resnet8x4, 0.1 x CE + 0.9 x KL (T = 4), at the recipe's batch and a large one.

    python -m bench.bench_cifar_kd [--device cpu|cuda] [--batch N[,N...]] [--steps N] [--warmup N] [--fast-path ...]

Baseline (RepDistiller's way): per sample on the CPU, RandomCrop(32, padding 4) with zero padding,
flip (p = 0.5), normalise; then teacher logits without gradients, CE + KD, backward, SGD.
Distillery runs its CIFAR path: the uint8 set resident on the device (DATA.ON_DEVICE), crop, flip and
normalisation batched there. CPU defaults: batches 8 and 32, 1 warm-up, 3 timed; CUDA defaults:
batches 64 (the recipe's) and 1024, 5 warm-up, 20 timed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.common import Workload, normalise_sample, parser, run_workload
from kd.kd import kd_loss
from models.network import Network

MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)


def prepare_sample(image: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """RandomCrop(32, padding=4) + flip + normalise of one uint8 32 x 32 x 3 image (one view for both)."""
    x = F.pad(torch.from_numpy(image).permute(2, 0, 1).float(), (4, 4, 4, 4))
    top, left = int(rng.integers(9)), int(rng.integers(9))
    x = x[:, top : top + 32, left : left + 32]
    if rng.random() < 0.5:
        x = x.flip(-1)
    view = normalise_sample(x, MEAN, STD)
    return view, view


def loss(student: Network, teacher: Network | None, x_s: Tensor, x_t: Tensor, labels: Tensor) -> Tensor:
    logits_s = student(x_s)
    with torch.no_grad():
        logits_t = teacher(x_t)
    return 0.1 * F.cross_entropy(logits_s, labels) + 0.9 * kd_loss(logits_s, logits_t, 4.0)


WORKLOAD = Workload(
    title="CIFAR-100 KD: resnet32x4 -> resnet8x4, 32px",
    config="configs/cifar100/kd/resnet32x4_resnet8x4.yaml",
    num_classes=100,
    stored_size=32,
    prepare_sample=prepare_sample,
    loss=loss,
    on_device=True,
)


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser(__doc__.splitlines()[0], cpu={"batch": 0, "steps": 3, "warmup": 1},
                 cuda={"batch": 0, "steps": 20, "warmup": 5})
    cli.set_defaults(batch=None)
    cli._option_string_actions["--batch"].type = str
    args = cli.parse_args(argv)
    device_is_cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    batches = args.batch or ("64,1024" if device_is_cuda else "2" if args.quick else "8,32")
    tables = []
    for batch in (int(b) for b in batches.split(",")):
        args.batch = batch
        tables.append(run_workload(WORKLOAD, args))
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
