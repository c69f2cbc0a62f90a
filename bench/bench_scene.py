"""Scene recognition KD: ResNet-50 -> ResNet-18 at 224 px, 0.1 x CE + 0.8 x KL (T = 4), ADE20K classes.

    python -m bench.bench_scene [--device cpu|cuda] [--batch N] [--steps N] [--warmup N] [--fast-path auto|all|switches]

Baseline (the DCT repository's way, PIL-free): per sample on the CPU, RandomCrop(224) of a 256 x 256
image, flip (p = 0.5), normalise; teacher logits without gradients, CE + KD, backward, SGD.
CPU defaults: batch 4, 1 warm-up, 3 timed; CUDA defaults: batch 128 (the recipe's), 3 warm-up, 10 timed.
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

MEAN = (0.43216, 0.394666, 0.37645)
STD = (0.22803, 0.22145, 0.216989)
CROP, STORED = 224, 256


def prepare_sample(image: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """RandomCrop(224) + flip + normalise of one uint8 256 x 256 x 3 image (one view for both)."""
    top, left = int(rng.integers(STORED - CROP + 1)), int(rng.integers(STORED - CROP + 1))
    x = torch.from_numpy(image[top : top + CROP, left : left + CROP]).permute(2, 0, 1).float()
    if rng.random() < 0.5:
        x = x.flip(-1)
    view = normalise_sample(x, MEAN, STD)
    return view, view


def loss(student: Network, teacher: Network | None, x_s: Tensor, x_t: Tensor, labels: Tensor) -> Tensor:
    logits_s = student(x_s)
    with torch.no_grad():
        logits_t = teacher(x_t)
    return 0.1 * F.cross_entropy(logits_s, labels) + 0.8 * kd_loss(logits_s, logits_t, 4.0)


WORKLOAD = Workload(
    title="Scene KD: ResNet-50 -> ResNet-18, 224px crops of 256px images, ADE20K classes",
    config="configs/scene/ade20k/kd/resnet50_resnet18.yaml",
    num_classes=1055,
    stored_size=STORED,
    prepare_sample=prepare_sample,
    loss=loss,
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0], cpu={"batch": 4, "steps": 3, "warmup": 1},
                  cuda={"batch": 128, "steps": 10, "warmup": 3}).parse_args(argv)
    print(run_workload(WORKLOAD, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
