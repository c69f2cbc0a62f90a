"""Pictures of where networks look: teacher vs student activation maps over the input image.

The map of a stage is the attention-transfer map (mean over channels of the squared activation),
min-max normalised and upsampled to the input, as the DCT-attention repository's map extraction and
the A-SKD demo show them. Works for any backbone that returns `stages`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.lowres import degrade
from data.transforms import normalize


def activation_maps(network: nn.Module, images: Tensor) -> list[Tensor]:
    """Per stage: N x H x W maps in [0, 1] at the input resolution."""
    with torch.no_grad():
        features = network.forward_features(images)
    maps = []
    for stage in features.stages:
        amap = stage.float().pow(2).mean(1, keepdim=True)
        amap = F.interpolate(amap, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        low = amap.flatten(1).min(1).values[:, None, None]
        high = amap.flatten(1).max(1).values[:, None, None]
        maps.append((amap - low) / (high - low).clamp_min(1e-12))
    return maps


def sample_images(cfg: Any, count: int) -> np.ndarray:
    """The first `count` evaluation images (N x H x W x 3 uint8, DATA.COLOR order)."""
    if cfg.EXPERIMENT.TASK == "face":
        from engine.evaluate import load_verification_set_cached

        _, images, _ = load_verification_set_cached(cfg, cfg.EVAL.SETS[0])
        return images[:count]
    from data.loader import build_dataset

    dataset = build_dataset(cfg, split="val")
    return np.stack([np.asarray(dataset[i]["image"]) for i in range(min(count, len(dataset)))])


def _display(image: np.ndarray, color: str) -> np.ndarray:
    return image[..., ::-1] if color == "bgr" else image


def write_attention_maps(cfg: Any, networks: dict[str, nn.Module], count: int, output_dir: str | Path,
                         device: torch.device) -> list[Path]:
    """One PNG per image: the input, then each network's stage maps overlaid on it.

    Face students are shown the probe at the first evaluation resolution below the input size (the
    view they are trained on); teachers always get the full-resolution image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = sample_images(cfg, count)
    size = int(cfg.DATA.IMAGE_SIZE)
    batch = normalize(torch.as_tensor(raw).to(device), cfg.DATA.MEAN, cfg.DATA.STD)
    if batch.shape[-1] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
    low = [int(r) for r in cfg.EVAL.RESOLUTIONS if int(r) < size]
    all_maps = {}
    for name, network in networks.items():
        view = batch
        if name == "student" and cfg.EXPERIMENT.TASK == "face" and low:
            view = degrade(batch, low[0], out_size=size, down=cfg.EVAL.DOWN, up=cfg.EVAL.UP)
        network.eval()
        all_maps[name] = [m.cpu().numpy() for m in activation_maps(network, view)]
    out = Path(output_dir) / "attention_maps"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, image in enumerate(raw):
        shown = _display(np.asarray(image), cfg.DATA.COLOR)
        rows = len(all_maps)
        cols = 1 + max(len(maps) for maps in all_maps.values())
        figure, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
        for row, (name, maps) in enumerate(all_maps.items()):
            axes[row][0].imshow(shown)
            axes[row][0].set_title(f"{name} input", fontsize=8)
            for col in range(1, cols):
                axis = axes[row][col]
                if col - 1 < len(maps):
                    axis.imshow(shown)
                    axis.imshow(maps[col - 1][index], cmap="jet", alpha=0.5,
                                extent=(0, shown.shape[1], shown.shape[0], 0))
                    axis.set_title(f"stage {col}", fontsize=8)
            for axis in axes[row]:
                axis.axis("off")
        figure.tight_layout()
        path = out / f"image_{index:03d}.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    return written
