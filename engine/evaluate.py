"""Evaluation runners: face verification per set and resolution, IJB-B/C and TinyFace, classification top-k.

The metrics themselves are pure functions elsewhere: pair-set verification in `engine.verification`
(re-exported here, `verification_accuracy` is public under this module's name), IJB template
verification in `engine.ijb`, rank-k identification in `engine.identification`. This module embeds
images with a model and feeds those functions.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from data.loader import build_dataset, build_eval_loader, to_device
from data.lowres import degrade
from data.pairs import load_verification_set
from data.transforms import EvalTransform
from engine.verification import (  # noqa: F401  (re-exported: the public names of engine.evaluate)
    PROTOCOLS,
    fold_slices,
    interp_slinear_scipy181,
    pair_scores,
    plot_roc,
    roc_curve_points,
    tar_at_far,
    to_numpy,
    verification_accuracy,
)
from utility.config import resolve_data_path
from utility.errors import ConfigError, DataError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# embedding extraction
# ---------------------------------------------------------------------------------------------------
def _fuse_sum(plain: Tensor, flipped: Tensor) -> Tensor:
    # insightface writes float32 outputs into float64 arrays, then adds them
    return plain.double() + flipped.double()


def _fuse_concat(plain: Tensor, flipped: Tensor) -> Tensor:
    return torch.cat([plain, flipped], dim=1)


_FLIP_FUSION: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"insightface": _fuse_sum, "skd": _fuse_concat}


def _embed_images(model: nn.Module, images: np.ndarray, cfg: CfgNode, device: torch.device,
                  lower_to: int | None) -> np.ndarray:
    """Flip-fused embeddings of uint8 N x H x W x 3 images, degraded to side `lower_to` unless None."""
    mean = torch.tensor(cfg.DATA.MEAN, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.DATA.STD, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    fuse = _FLIP_FUSION[cfg.EVAL.PROTOCOL]
    blur = tuple(cfg.EVAL.BLUR_SIGMA) or None

    def lower(x: Tensor) -> Tensor:
        return degrade(x, size=lower_to, out_size=cfg.DATA.IMAGE_SIZE, down=cfg.EVAL.DOWN, up=cfg.EVAL.UP,
                       blur_sigma=blur)

    outputs = []
    for start in range(0, images.shape[0], cfg.EVAL.BATCH_SIZE):
        batch = torch.from_numpy(np.array(images[start:start + cfg.EVAL.BATCH_SIZE])).to(device)  # a writable copy
        x = (batch.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        if lower_to is None:
            views = (x, x.flip(3))
        elif cfg.EVAL.DEGRADE_FLIPS_SEPARATELY:  # A-SKD: flip the HR image, then degrade each on its own
            views = (lower(x), lower(x.flip(3)))
        else:
            low = lower(x)
            views = (low, low.flip(3))
        # one forward for both views: eval-mode networks treat samples independently
        plain, flipped = model(torch.cat(views)).float().cpu().chunk(2)
        outputs.append(fuse(plain, flipped))
    return torch.cat(outputs).numpy()


def extract_pair_embeddings(model: nn.Module, images_uint8_nhwc: np.ndarray, issame: Sequence[bool] | np.ndarray,
                            cfg: CfgNode, resolution: int, device: torch.device | str,
                            cross_resolution: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Flip-fused embeddings (emb1, emb2) of the left (even) and right (odd) images of every pair.

    Images are uint8 N x H x W x 3 in `cfg.DATA.COLOR` order, normalised with DATA.MEAN/STD and, when
    `resolution` < DATA.IMAGE_SIZE, degraded with EVAL.DOWN/UP/BLUR_SIGMA. With `cross_resolution`
    the left image stays at full resolution and only the right one is degraded (F-SKD's HR gallery
    vs LR probe). EVAL.PROTOCOL decides the fusion: insightface sums f(x) + f(flip x) in float64,
    skd concatenates [f(x), f(flip x)] (float32, 2 x D).
    """
    images = to_numpy(images_uint8_nhwc)
    num_pairs = len(issame)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] != 2 * num_pairs:
        raise DataError(f"expected 2 x {num_pairs} images of H x W x 3 for {num_pairs} pairs, got {images.shape}")
    if cfg.EVAL.PROTOCOL not in _FLIP_FUSION:
        raise ConfigError(f"EVAL.PROTOCOL must be one of {list(PROTOCOLS)}, got {cfg.EVAL.PROTOCOL!r}")
    device = torch.device(device)
    lower_to = int(resolution) if int(resolution) < cfg.DATA.IMAGE_SIZE else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            emb1 = _embed_images(model, images[0::2], cfg, device, None if cross_resolution else lower_to)
            emb2 = _embed_images(model, images[1::2], cfg, device, lower_to)
    finally:
        model.train(was_training)
    return emb1, emb2


# ---------------------------------------------------------------------------------------------------
# runners
# ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _load_set_cached(path: str, mtime_ns: int, color: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    images, issame = load_verification_set(path, color=color, image_size=image_size)
    images.setflags(write=False)  # shared between evaluations: nobody may change it
    return images, np.asarray(issame, dtype=bool)


def load_verification_set_cached(cfg: CfgNode, path: str) -> tuple[Path, np.ndarray, np.ndarray]:
    """(resolved path, images, issame) of one EVAL.SETS entry; decoded once per process and file
    version, because periodic evaluation would otherwise decode thousands of JPEGs every time."""
    resolved = resolve_data_path(cfg, path)
    if not resolved.exists():
        raise DataError(f"EVAL.SETS: verification set {resolved} does not exist; fix the path or DATA.ROOT")
    images, issame = _load_set_cached(str(resolved.resolve()), resolved.stat().st_mtime_ns, cfg.DATA.COLOR,
                                      cfg.DATA.IMAGE_SIZE)
    return resolved, images, issame


def _set_names(paths: Sequence[Path]) -> list[str]:
    """Short, unique row names: the file or folder stem, numbered when two sets share one."""
    names: list[str] = []
    for path in paths:
        stem = path.stem or path.name
        name, copy = stem, 2
        while name in names:
            name, copy = f"{stem}_{copy}", copy + 1
        names.append(name)
    return names


def _resolution_runs(cfg: CfgNode) -> list[tuple[str, int, bool]]:
    """(column label, resolution, cross-resolution) for every configured evaluation."""
    resolutions = [int(r) for r in cfg.EVAL.RESOLUTIONS] or [cfg.DATA.IMAGE_SIZE]
    runs = [(str(r), r, False) for r in resolutions]
    if cfg.EVAL.CROSS_RESOLUTION:
        runs += [(f"{r} cross", r, True) for r in resolutions if r < cfg.DATA.IMAGE_SIZE]
    return runs


def _verify_one(cfg: CfgNode, emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray) -> dict[str, Any]:
    accuracy = verification_accuracy(emb1, emb2, issame, folds=cfg.EVAL.FOLDS, protocol=cfg.EVAL.PROTOCOL)
    tar = tar_at_far(emb1, emb2, issame, far=cfg.EVAL.FAR, folds=cfg.EVAL.FOLDS)
    return {
        "accuracy": accuracy["mean"],
        "std": accuracy["std"],
        "fold_accuracies": accuracy["fold_accuracies"],
        "thresholds": accuracy["thresholds"],
        "tar": tar["tar"],
        "far": tar["far"],
        "fold_tar": tar["fold_tar"],
    }


def evaluate_verification(cfg: CfgNode, model: nn.Module, device: torch.device | str,
                          output_dir: str | Path | None = None) -> dict[str, Any]:
    """Verification on every EVAL.SETS entry at every EVAL.RESOLUTIONS (plus cross-resolution).

    Returns {"task": "face", "protocol", "far_target", "sets": {name: {"path", "pairs", "results":
    {column: metrics}}}, "main"}; columns are "112", "28", ..., and "28 cross"; metrics hold
    `accuracy`, `std`, `fold_accuracies`, `thresholds`, `tar`, `far`, `fold_tar`. `main` is the mean
    accuracy over all sets and same-resolution columns (cross-resolution ones excluded), the number
    best-checkpoint selection uses. With EVAL.ROC and an `output_dir`, writes `roc_<set>.png`.
    """
    if not cfg.EVAL.SETS:
        raise ConfigError("EVAL.SETS is empty: list the verification sets (.bin files or pair folders)")
    runs = _resolution_runs(cfg)
    loaded = [load_verification_set_cached(cfg, path) for path in cfg.EVAL.SETS]
    names = _set_names([resolved for resolved, _, _ in loaded])
    sets: dict[str, Any] = {}
    main_values: list[float] = []
    for name, (resolved, images, issame) in zip(names, loaded):
        if issame.size < cfg.EVAL.FOLDS:
            raise DataError(f"{resolved}: {issame.size} pairs cannot fill EVAL.FOLDS = {cfg.EVAL.FOLDS} folds")
        results: dict[str, Any] = {}
        curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for label, resolution, cross in runs:
            emb1, emb2 = extract_pair_embeddings(model, images, issame, cfg, resolution, device, cross)
            results[label] = _verify_one(cfg, emb1, emb2, issame)
            if not cross:
                main_values.append(results[label]["accuracy"])
            if cfg.EVAL.ROC and output_dir is not None:
                fpr, tpr, _ = roc_curve_points(pair_scores(emb1, emb2, cfg.EVAL.PROTOCOL), issame)
                curves[f"{label} px"] = (fpr, tpr)
            log.info("%s @ %s: accuracy %.2f ± %.2f %%, TAR@FAR=%g %s", name, label,
                     100 * results[label]["accuracy"], 100 * results[label]["std"], cfg.EVAL.FAR,
                     "n/a" if results[label]["tar"] is None else f"{100 * results[label]['tar']:.2f} %")
        if curves:
            plot_roc(curves, Path(output_dir) / f"roc_{name}.png", title=f"{name} ({cfg.EVAL.PROTOCOL})")
        sets[name] = {"path": str(resolved), "pairs": int(issame.size), "results": results}
    return {
        "task": "face",
        "protocol": cfg.EVAL.PROTOCOL,
        "far_target": float(cfg.EVAL.FAR),
        "sets": sets,
        "main": float(np.mean(main_values)),
    }


def evaluate_classification(cfg: CfgNode, model: nn.Module, device: torch.device | str, dataset: Any = None,
                            transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Top-k accuracy (k in EVAL.TOPK, in percent) and mean per-class accuracy on the val split.

    `dataset` defaults to `data.loader.build_dataset(cfg, split="val")`; `transform` to
    `data.transforms.EvalTransform(cfg)`: a batch dict on the device (uint8 N x H x W x 3 `image`)
    -> dict with the normalised `image` and, for ten-crop, `num_crops` (crops of sample i are rows
    num_crops * i ...: sample-major), whose logits are averaged per sample. Returns {"task":
    "classification", "top1", "top5", ..., "mca", "samples", "main" (= top-1)}.
    """
    dataset = build_dataset(cfg, split="val") if dataset is None else dataset
    transform = EvalTransform(cfg) if transform is None else transform
    device = torch.device(device)
    topk = sorted({int(k) for k in cfg.EVAL.TOPK} | {1})  # top-1 is always reported: it is `main`
    correct = dict.fromkeys(topk, 0)
    class_correct = class_total = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in build_eval_loader(cfg, dataset, cfg.EVAL.BATCH_SIZE):
                labels = torch.as_tensor(batch["label"], dtype=torch.int64)
                inputs = transform(to_device(batch, device))
                logits = _average_crops(model(inputs["image"]).float(), labels.shape[0]).cpu()
                if int(labels.max()) >= logits.shape[1]:
                    raise DataError(f"label {int(labels.max())} but the model has {logits.shape[1]} outputs; "
                                    "check DATA.NUM_CLASSES against the val split")
                hits = logits.topk(min(topk[-1], logits.shape[1]), dim=1).indices.eq(labels[:, None])
                for k in topk:
                    correct[k] += int(hits[:, :k].any(1).sum())
                if class_total is None:
                    class_correct = torch.zeros(logits.shape[1], dtype=torch.int64)
                    class_total = torch.zeros(logits.shape[1], dtype=torch.int64)
                class_correct += torch.bincount(labels[hits[:, 0]], minlength=logits.shape[1])
                class_total += torch.bincount(labels, minlength=logits.shape[1])
    finally:
        model.train(was_training)
    if class_total is None:
        raise DataError("the classification val split is empty; check DATA.VAL")
    total = int(class_total.sum())
    present = class_total > 0
    results: dict[str, Any] = {"task": "classification"}
    results.update({f"top{k}": 100.0 * correct[k] / total for k in topk})
    results["mca"] = 100.0 * float((class_correct[present].double() / class_total[present].double()).mean())
    results["samples"] = total
    results["main"] = results["top1"]
    log.info("classification: %s", ", ".join(f"top-{k} {results[f'top{k}']:.2f} %" for k in topk))
    return results


def _average_crops(logits: Tensor, num_samples: int) -> Tensor:
    """Per-sample mean over crops when the transform produced several per image (ten-crop)."""
    if logits.shape[0] == num_samples:
        return logits
    if logits.shape[0] % num_samples:
        raise ValueError(f"{logits.shape[0]} outputs for {num_samples} images: crops must be a whole multiple")
    return logits.view(num_samples, logits.shape[0] // num_samples, -1).mean(1)


_TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "face": lambda cfg, model, device, output_dir: evaluate_verification(cfg, model, device, output_dir),
    "classification": lambda cfg, model, device, output_dir: evaluate_classification(cfg, model, device),
}


def evaluate(cfg: CfgNode, model: nn.Module, device: torch.device | str,
             output_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate `model` as EXPERIMENT.TASK says ("face" verification or "classification");
    the result always has a `main` metric (higher is better) for best-checkpoint selection."""
    task = cfg.EXPERIMENT.TASK
    if task not in _TASKS:
        raise ConfigError(f"EXPERIMENT.TASK must be one of {list(_TASKS)}, got {task!r}")
    return _TASKS[task](cfg, model, device, output_dir)
