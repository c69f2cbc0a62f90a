"""A-SKD: iResNet50-CBAM (cbam_a_skd) teacher at 112 px -> the same network as student fed 14 px faces.

    python -m bench.bench_askd [--device cpu|cuda] [--batch N] [--steps N] [--warmup N] [--fast-path auto|all|switches]

Baseline (the A-SKD seed's way): per sample on the CPU, flip (p = 0.5), nearest down to 14 px and
back up to 112, the vertical 5 x 5 Gaussian blur (0.1, 2.0), normalise; then margin CE (ArcFace
s32 m0.5) + 5.0 x the summed attention-similarity term over the 48 pre-sigmoid CBAM maps.
CPU defaults: batch 2, 1 warm-up, 2 timed steps (the published network, so still a few minutes on
two busy cores); CUDA defaults: batch 256 (the issue's), 3 warm-up, 10 timed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.common import Workload, interpolate_sample, normalise_sample, parser, run_workload
from data.lowres import gaussian_blur
from kd.a_skd import attention_similarity_loss, interleave_pairs
from models.network import Network

MEAN = STD = (0.5, 0.5, 0.5)
LOW_RES, BLUR = 14, (0.1, 2.0)


def prepare_sample(image: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """(student 14 px view, teacher HR view) of one uint8 H x W x 3 face, both flipped together."""
    hr = torch.from_numpy(image).permute(2, 0, 1).float()
    if rng.random() < 0.5:
        hr = hr.flip(-1)
    low = interpolate_sample(interpolate_sample(hr, LOW_RES, "nearest"), hr.shape[-1], "nearest")
    low = gaussian_blur(low[None], BLUR)[0].clamp(0, 255)
    return normalise_sample(low, MEAN, STD), normalise_sample(hr, MEAN, STD)


def loss(student: Network, teacher: Network | None, x_s: Tensor, x_t: Tensor, labels: Tensor) -> Tensor:
    features_s = student.forward_features(x_s)
    ce = F.cross_entropy(student.head(features_s.out, labels), labels)
    with torch.no_grad():
        features_t = teacher.forward_features(x_t)
    term = attention_similarity_loss(interleave_pairs(features_s.attention_logits),
                                     interleave_pairs(features_t.attention_logits), "sum")
    return ce + 5.0 * term


WORKLOAD = Workload(
    title="A-SKD: iResNet50-CBAM 112px teacher -> iResNet50-CBAM 14px student, ArcFace, CASIA classes",
    config="configs/face/a_skd/student_14.yaml",
    num_classes=10572,
    stored_size=112,
    prepare_sample=prepare_sample,
    loss=loss,
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0], cpu={"batch": 2, "steps": 2, "warmup": 1},
                  cuda={"batch": 256, "steps": 10, "warmup": 3}).parse_args(argv)
    print(run_workload(WORKLOAD, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
