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


def _as_picture(view: Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """A normalised N x 3 x H x W batch back to N x H x W x 3 uint8 (still in DATA.COLOR order)."""
    mean_t = torch.tensor(mean, dtype=view.dtype, device=view.device)[None, :, None, None]
    std_t = torch.tensor(std, dtype=view.dtype, device=view.device)[None, :, None, None]
    pixels = ((view * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def student_resolution(cfg: Any) -> int | None:
    """The side a face student is shown: its training low resolution, else the lowest evaluated one."""
    size = int(cfg.DATA.IMAGE_SIZE)
    if cfg.EXPERIMENT.TASK != "face":
        return None
    trained = [int(r) for r in cfg.DATA.LOWRES.SIZES if int(r) < size]
    evaluated = [int(r) for r in cfg.EVAL.RESOLUTIONS if int(r) < size]
    if trained:
        return min(trained)
    return min(evaluated) if evaluated else None


def write_attention_maps(cfg: Any, networks: dict[str, nn.Module], count: int, output_dir: str | Path,
                         device: torch.device) -> list[Path]:
    """One PNG per image: the input, then each network's stage maps overlaid on it.

    Face students are shown the probe degraded to their training resolution (the view they learnt
    from; else the lowest evaluated one); teachers always get the full-resolution image. Each row
    starts with the image that network actually saw, labelled with its resolution.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = sample_images(cfg, count)
    size = int(cfg.DATA.IMAGE_SIZE)
    # a copy: the cached verification images are read-only (every evaluation shares them)
    batch = normalize(torch.tensor(raw).to(device), cfg.DATA.MEAN, cfg.DATA.STD)
    if batch.shape[-1] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
    low = student_resolution(cfg)
    all_maps, seen, sides = {}, {}, {}
    for name, network in networks.items():
        view, sides[name] = batch, size
        if name == "student" and low is not None:
            view = degrade(batch, low, out_size=size, down=cfg.EVAL.DOWN, up=cfg.EVAL.UP)
            sides[name] = low
        network.eval()
        all_maps[name] = [m.cpu().numpy() for m in activation_maps(network, view)]
        seen[name] = _as_picture(view, list(cfg.DATA.MEAN), list(cfg.DATA.STD))
    out = Path(output_dir) / "attention_maps"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(len(raw)):
        rows = len(all_maps)
        cols = 1 + max(len(maps) for maps in all_maps.values())
        figure, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
        for row, (name, maps) in enumerate(all_maps.items()):
            shown = _display(seen[name][index], cfg.DATA.COLOR)
            axes[row][0].imshow(shown)
            axes[row][0].set_title(f"{name} input ({sides[name]} px)", fontsize=8)
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
