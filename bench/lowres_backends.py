"""How far apart the two low-resolution backends are: batched torch on the device vs OpenCV per sample.

F-SKD's head recipe resizes uint8 images with OpenCV; Distillery's default resizes float tensors
batched on the device. This prints, per interpolation and size, the mean and max absolute difference
(grey levels, 0-255) between the two on synthetic faces, so the README can say how close they are.

    python -m bench.lowres_backends [--images 64]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from data.lowres import degrade, degrade_opencv
from data.synthetic import face_training_images

MODES = ("nearest", "bilinear", "bicubic", "area")


def compare(images: np.ndarray, size: int, mode: str) -> tuple[float, float]:
    """(mean, max) |device - opencv| in grey levels, the device result rounded to uint8 like OpenCV's."""
    batch = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    device = degrade(batch, size, out_size=112, down=mode, up=mode)
    device = device.round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
    reference = np.stack([degrade_opencv(image, size, 112, mode, mode) for image in images]).astype(np.float32)
    difference = np.abs(device - reference)
    return float(difference.mean()), float(difference.max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args(argv)
    images, _ = face_training_images(max(1, args.images // 8), 8, seed=0)
    images = np.asarray(images[: args.images])
    print("| interpolation | size | mean abs diff (0-255) | max abs diff |")
    print("|---|---:|---:|---:|")
    for mode in MODES:
        for size in (14, 28, 56):
            mean, worst = compare(images, size, mode)
            print(f"| {mode} | {size} | {mean:.2f} | {worst:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
