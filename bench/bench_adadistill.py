"""AdaDistill: frozen iResNet50 teacher -> MobileFaceNet student (`adadistill`, ArcFace s64 m0.45, MS1MV2 classes).

    python -m bench.bench_adadistill [--device cpu|cuda] [--batch N] [--steps N] [--warmup N] [--fast-path auto|all|switches]

Baseline (the AdaDistill seed's way): per sample on the CPU, flip (p = 0.5) and normalise; then the
teacher's embedding without gradients, AdaDistillLoss on the raw student and teacher embeddings
(centre EMA + margin softmax, fp32), backward, gradient-norm clipping at 5, SGD.
CPU defaults: batch 4, 1 warm-up, 3 timed; CUDA defaults: batch 512 (the recipe's), 3 warm-up, 10 timed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from bench.common import Workload, normalise_sample, parser, run_workload
from kd.adadistill import AdaDistillLoss
from models.network import Network

MEAN = STD = (0.5, 0.5, 0.5)
NUM_CLASSES = 85742  # MS1MV2


def prepare_sample(image: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """The same flipped, normalised 112 px view for student and teacher."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    if rng.random() < 0.5:
        x = x.flip(-1)
    view = normalise_sample(x, MEAN, STD)
    return view, view


class BaselineLoss:
    """AdaDistillLoss built on first use on the inputs' device (its centres are state, as in the seed)."""

    def __init__(self) -> None:
        self.criterion: AdaDistillLoss | None = None

    def __call__(self, student: Network, teacher: Network | None, x_s: Tensor, x_t: Tensor, labels: Tensor) -> Tensor:
        if self.criterion is None:
            self.criterion = AdaDistillLoss(NUM_CLASSES, 512, "arcface", 64.0, 0.45, True).to(x_s.device)
        with torch.no_grad():
            emb_t = teacher(x_t)
        loss, _ = self.criterion(student(x_s), emb_t, labels)
        return loss


WORKLOAD = Workload(
    title="AdaDistill: iResNet50 teacher -> MobileFaceNet student, 112px, MS1MV2 classes",
    config="configs/face/adadistill/adaarcdistill_ms1mv2.yaml",
    num_classes=NUM_CLASSES,
    stored_size=112,
    prepare_sample=prepare_sample,
    loss=BaselineLoss(),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0], cpu={"batch": 4, "steps": 3, "warmup": 1},
                  cuda={"batch": 512, "steps": 10, "warmup": 3}).parse_args(argv)
    print(run_workload(WORKLOAD, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
