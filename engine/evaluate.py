"""Evaluation runners: face verification per set and resolution, IJB-B/C and TinyFace, classification top-k.

The metrics themselves are pure functions elsewhere: pair-set verification in `engine.verification`
(re-exported here, `verification_accuracy` is public under this module's name), IJB template
verification in `engine.ijb`, rank-k identification in `engine.identification`. This module embeds
images with a model and feeds those functions.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm
from yacs.config import CfgNode

from data.ijb import IJBImages, IJBSet, load_ijb, meta_paths
from data.loader import build_dataset, build_eval_loader, to_device
from data.lowres import degrade
from data.pairs import load_verification_set
from data.tinyface import TinyFaceImages, TinyFaceSet, load_tinyface
from data.transforms import EvalTransform
from engine import ijb as ijb_metrics
from engine.identification import fuse_flip, identification_accuracy
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


def _flip_views(model: nn.Module, batch_uint8_nhwc: Tensor, cfg: CfgNode, device: torch.device,
                lower_to: int | None) -> tuple[Tensor, Tensor]:
    """(f(x), f(flip x)) as float32 CPU tensors of a uint8 N x H x W x 3 batch, normalised with
    DATA.MEAN/STD and degraded to side `lower_to` (EVAL.DOWN/UP/BLUR_SIGMA) unless None."""
    mean = torch.tensor(cfg.DATA.MEAN, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.DATA.STD, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    blur = tuple(cfg.EVAL.BLUR_SIGMA) or None

    def lower(x: Tensor) -> Tensor:
        return degrade(x, size=lower_to, out_size=cfg.DATA.IMAGE_SIZE, down=cfg.EVAL.DOWN, up=cfg.EVAL.UP,
                       blur_sigma=blur)

    x = (batch_uint8_nhwc.to(device).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    if lower_to is None:
        views = (x, x.flip(3))
    elif cfg.EVAL.DEGRADE_FLIPS_SEPARATELY:  # A-SKD: flip the HR image, then degrade each on its own
        views = (lower(x), lower(x.flip(3)))
    else:
        low = lower(x)
        views = (low, low.flip(3))
    # one forward for both views: eval-mode networks treat samples independently
    plain, flipped = model(torch.cat(views)).float().cpu().chunk(2)
    return plain, flipped


def _embed_images(model: nn.Module, images: np.ndarray, cfg: CfgNode, device: torch.device,
                  lower_to: int | None) -> np.ndarray:
    """Flip-fused embeddings of uint8 N x H x W x 3 images, degraded to side `lower_to` unless None."""
    fuse = _FLIP_FUSION[cfg.EVAL.PROTOCOL]
    outputs = []
    for start in range(0, images.shape[0], cfg.EVAL.BATCH_SIZE):
        batch = torch.from_numpy(np.array(images[start:start + cfg.EVAL.BATCH_SIZE]))  # a writable copy
        outputs.append(fuse(*_flip_views(model, batch, cfg, device, lower_to)))
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
        "pair_correct": "".join("1" if ok else "0" for ok in accuracy["correct"]),
        "tar": tar["tar"],
        "far": tar["far"],
        "fold_tar": tar["fold_tar"],
    }


def evaluate_verification(cfg: CfgNode, model: nn.Module, device: torch.device | str,
                          output_dir: str | Path | None = None) -> dict[str, Any]:
    """Verification on every EVAL.SETS entry at every EVAL.RESOLUTIONS (plus cross-resolution).

    Returns {"task": "face", "protocol", "far_target", "sets": {name: {"path", "pairs", "results":
    {column: metrics}}}, "main"}; columns are "112", "28", ..., and "28 cross"; metrics hold
    `accuracy`, `std`, `fold_accuracies`, `thresholds`, `pair_correct` (one '1'/'0' per pair in pair
    order, the record `test.py --summary` compares two runs with, pair by pair), `tar`, `far`,
    `fold_tar`. `main` is the mean accuracy over all sets and same-resolution columns
    (cross-resolution ones excluded), the number best-checkpoint selection uses. With EVAL.ROC and
    an `output_dir`, writes `roc_<set>.png`.
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


# ---------------------------------------------------------------------------------------------------
# IJB-B/C and TinyFace
# ---------------------------------------------------------------------------------------------------
_TEMPLATE_CHUNK = 65536  # images pooled at once when reading features back from the memory map


@functools.lru_cache(maxsize=4)
def _load_ijb_cached(root: str, target: str, one_to_n: bool, mtime_ns: int) -> IJBSet:
    return load_ijb(root, target, one_to_n)


def load_ijb_targets(cfg: CfgNode) -> list[IJBSet]:
    """Every EVAL.IJB.TARGETS entry read and checked (once per process and meta-file version)."""
    root = resolve_data_path(cfg, cfg.EVAL.IJB.ROOT)
    loaded = []
    for target in cfg.EVAL.IJB.TARGETS:
        meta = meta_paths(root, target)["face_tid_mid"]
        mtime = meta.stat().st_mtime_ns if meta.exists() else 0
        loaded.append(_load_ijb_cached(str(root), target, bool(cfg.EVAL.IJB.ONE_TO_N), mtime))
    return loaded


def _scratch_folder(output_dir: str | Path | None, prefix: str) -> Path:
    """A fresh temporary folder for memory-mapped features, inside `output_dir` when given (the
    system's temporary folder may be too small for IJB-C's 2 GB of features)."""
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=output_dir))


def _embedding_size(model: nn.Module, cfg: CfgNode, device: torch.device) -> int:
    size = cfg.DATA.IMAGE_SIZE
    return int(model(torch.zeros(2, 3, size, size, device=device)).shape[1])


def _embed_to_memmap(model: nn.Module, dataset: Any, cfg: CfgNode, device: torch.device, lower_to: int | None,
                     path: Path, description: str) -> np.ndarray:
    """[f(x) | f(flip x)] of every image (N x 2D float32) streamed into a `.npy` memory map at `path`,
    so IJB-C's 469 k images never sit in a Python list."""
    width = _embedding_size(model, cfg, device)
    features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(dataset), 2 * width))
    loader = build_eval_loader(cfg, dataset, cfg.EVAL.BATCH_SIZE)
    for batch in tqdm(loader, desc=description, disable=not cfg.LOG.PROGRESS, leave=False):
        plain, flipped = _flip_views(model, batch["image"], cfg, device, lower_to)
        rows = np.asarray(batch["index"])
        features[rows[0]:rows[-1] + 1] = torch.cat([plain, flipped], 1).numpy()  # sequential loader
    features.flush()
    return features


def _ijb_templates(cfg: CfgNode, ijb: IJBSet, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit template features from the raw image features, read back in bounded chunks of whole templates."""
    width = raw.shape[1] // 2
    order = np.argsort(ijb.templates, kind="stable")
    bounds = np.r_[np.flatnonzero(np.r_[True, np.diff(ijb.templates[order]) != 0]), order.size]
    ids, feats, first = [], [], 0
    while first < bounds.size - 1:  # whole templates, about _TEMPLATE_CHUNK images at a time
        last = max(first + 1, int(np.searchsorted(bounds, bounds[first] + _TEMPLATE_CHUNK, side="right")) - 1)
        rows = np.sort(order[bounds[first]:bounds[last]])
        block = np.asarray(raw[rows])
        image_feats = ijb_metrics.image_features(
            block[:, :width], block[:, width:] if cfg.EVAL.IJB.USE_FLIP_TEST else None, ijb.faceness[rows],
            cfg.EVAL.IJB.USE_NORM_SCORE, cfg.EVAL.IJB.USE_DETECTOR_SCORE)
        chunk_ids, chunk_feats = ijb_metrics.template_features(image_feats, ijb.templates[rows], ijb.medias[rows])
        ids.append(chunk_ids)
        feats.append(chunk_feats)
        first = last
    return np.concatenate(ids), np.concatenate(feats)


def _select(unique_templates: np.ndarray, feats: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    return feats[np.searchsorted(unique_templates, wanted)]


def _one_to_n(ijb: IJBSet, unique: np.ndarray, gallery_feats: np.ndarray, probe_feats: np.ndarray) -> dict[str, Any]:
    """ijb_1n.py: templates deduplicated (subject of the first occurrence), one stacked gallery."""
    gallery_ids, first = np.unique(ijb.gallery_templates, return_index=True)
    probe_ids, probe_first = np.unique(ijb.probe_templates, return_index=True)
    try:
        found = ijb_metrics.identification_1n(_select(unique, probe_feats, probe_ids), ijb.probe_subjects[probe_first],
                                  _select(unique, gallery_feats, gallery_ids), ijb.gallery_subjects[first])
    except ValueError as error:
        raise DataError(f"{ijb.folder / 'meta'}: 1:N gallery/probe lists: {error}") from None
    return {"rank": {str(k): v for k, v in found["rank"].items()},
            "tpir": {f"{f:g}": v for f, v in found["tpir"].items()}}


def evaluate_ijb(cfg: CfgNode, model: nn.Module, device: torch.device | str, targets: Sequence[IJBSet],
                 output_dir: str | Path | None = None) -> dict[str, Any]:
    """IJB 1:1 TAR@FAR (and with EVAL.IJB.ONE_TO_N 1:N) per target and resolution column.

    Every image is aligned to DATA.IMAGE_SIZE, embedded with its mirror in fp32 and, for columns
    below full resolution, degraded as the pair sets are. In an "r cross" column the first template
    of each pair (the 1:N gallery) keeps full resolution. Returns {target: {"images", "templates",
    "pairs", "results": {column: {"tar": {far: fraction}, "one_to_n": ...}}}}; writes
    `roc_<target>.png` with EVAL.ROC and an `output_dir`.
    """
    device = torch.device(device)
    runs = _resolution_runs(cfg)
    resolutions = sorted({r for _, r, _ in runs} | ({cfg.DATA.IMAGE_SIZE} if any(c for *_, c in runs) else set()))
    keep = bool(cfg.EVAL.IJB.FEATURES_DIR)
    scratch = Path(cfg.EVAL.IJB.FEATURES_DIR) if keep else _scratch_folder(output_dir, "ijb_features_")
    scratch.mkdir(parents=True, exist_ok=True)
    found: dict[str, Any] = {}
    try:
        for ijb in targets:
            dataset = IJBImages(ijb, cfg.DATA.IMAGE_SIZE, cfg.DATA.COLOR)
            pooled = {}
            for resolution in resolutions:
                lower_to = resolution if resolution < cfg.DATA.IMAGE_SIZE else None
                path = scratch / f"{ijb.target}_{resolution}.npy"
                raw = _embed_to_memmap(model, dataset, cfg, device, lower_to, path, f"{ijb.target} @ {resolution}px")
                pooled[resolution] = _ijb_templates(cfg, ijb, raw)
                del raw
                if not keep:
                    path.unlink()
            results, curves = {}, {}
            for label, resolution, cross in runs:
                unique, probe_feats = pooled[resolution]
                gallery_feats = pooled[cfg.DATA.IMAGE_SIZE][1] if cross else probe_feats
                scores = ijb_metrics.cross_pair_scores(unique, gallery_feats, probe_feats, ijb.pair_t1, ijb.pair_t2)
                entry: dict[str, Any] = {"tar": {f"{far:g}": tar for far, tar in
                                                 ijb_metrics.tar_at_far(scores, ijb.pair_labels, cfg.EVAL.IJB.FARS).items()}}
                if cfg.EVAL.IJB.ONE_TO_N:
                    entry["one_to_n"] = _one_to_n(ijb, unique, gallery_feats, probe_feats)
                results[label] = entry
                if cfg.EVAL.ROC and output_dir is not None:
                    fpr, tpr, _ = ijb_metrics.roc_points(scores, ijb.pair_labels)
                    curves[f"{label} px"] = (fpr, tpr)
                log.info("%s @ %s: %s", ijb.target, label,
                         ", ".join(f"TAR@FAR={far} {100 * tar:.2f} %" for far, tar in entry["tar"].items()))
            if curves:
                plot_roc(curves, Path(output_dir) / f"roc_{ijb.target}.png", title=f"{ijb.target} 1:1", min_far=1e-6)
            found[ijb.target] = {"images": len(ijb), "templates": int(np.unique(ijb.templates).size),
                                 "pairs": int(ijb.pair_labels.size), "results": results}
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return found


def _fused(raw: np.ndarray, use_flip: bool) -> np.ndarray:
    """TinyFace features: l2normalize(f(x) + f(flip x)) (AdaFace's default fusion), or l2normalize(f(x))."""
    width = raw.shape[1] // 2
    out = np.empty((raw.shape[0], width), dtype=np.float32)
    for start in range(0, raw.shape[0], _TEMPLATE_CHUNK):
        block = np.asarray(raw[start:start + _TEMPLATE_CHUNK])
        flipped = block[:, width:] if use_flip else np.zeros_like(block[:, :width])
        out[start:start + block.shape[0]] = fuse_flip(block[:, :width], flipped)
    return out


def evaluate_tinyface(cfg: CfgNode, model: nn.Module, device: torch.device | str, tinyface: TinyFaceSet,
                      output_dir: str | Path | None = None) -> dict[str, Any]:
    """TinyFace closed-set rank-k (EVAL.TINYFACE.RANKS). The images are natively low-resolution:
    they are only resized to DATA.IMAGE_SIZE, never degraded further. Returns {"probes", "gallery",
    "aligned", "results": {"native": {"rank": {k: fraction}}}}."""
    device = torch.device(device)
    scratch = _scratch_folder(output_dir, "tinyface_features_")
    try:
        feats = {}
        for name, paths in (("probe", tinyface.probe_paths), ("gallery", tinyface.gallery_paths)):
            dataset = TinyFaceImages(paths, cfg.DATA.IMAGE_SIZE, cfg.DATA.COLOR)
            raw = _embed_to_memmap(model, dataset, cfg, device, None, scratch / f"{name}.npy", f"TinyFace {name}")
            feats[name] = _fused(raw, cfg.EVAL.TINYFACE.USE_FLIP_TEST)
            del raw
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ranks = identification_accuracy(feats["probe"], tinyface.probe_labels, feats["gallery"], tinyface.gallery_labels,
                                    [int(k) for k in cfg.EVAL.TINYFACE.RANKS])
    log.info("TinyFace: %s", ", ".join(f"rank-{k} {100 * v:.2f} %" for k, v in ranks.items()))
    return {"probes": len(tinyface.probe_paths), "gallery": len(tinyface.gallery_paths), "aligned": tinyface.aligned,
            "results": {"native": {"rank": {str(k): v for k, v in ranks.items()}}}}


def _face_main(results: dict[str, Any], cfg: CfgNode) -> float:
    """Best-checkpoint metric: mean pair-set accuracy; without sets the mean IJB TAR at the configured
    FAR nearest 1e-4 (AdaDistill's headline); else TinyFace rank-1 (the first rank)."""
    if results.get("sets"):
        return results["main"]
    if results.get("ijb"):
        far = f"{min(cfg.EVAL.IJB.FARS, key=lambda f: abs(np.log10(f) + 4)):g}"
        return float(np.mean([entry["tar"][far] for target in results["ijb"].values()
                              for column, entry in target["results"].items() if not column.endswith("cross")]))
    return float(next(iter(results["tinyface"]["results"]["native"]["rank"].values())))


def evaluate_face(cfg: CfgNode, model: nn.Module, device: torch.device | str,
                  output_dir: str | Path | None = None, periodic: bool = False) -> dict[str, Any]:
    """Pair-set verification (EVAL.SETS), IJB-B/C (EVAL.IJB.ROOT) and TinyFace (EVAL.TINYFACE.ROOT).

    All metadata is read and checked before any image is embedded, so a bad meta line fails at once.
    A `periodic` evaluation during training skips IJB / TinyFace (hundreds of thousands of images)
    unless their PERIODIC key is set or there are no pair sets to select the best checkpoint by.
    The result is `evaluate_verification`'s dict (empty `sets` without EVAL.SETS) plus "ijb" and
    "tinyface" entries; `main` as `_face_main` says.
    """
    if not (cfg.EVAL.SETS or cfg.EVAL.IJB.ROOT or cfg.EVAL.TINYFACE.ROOT):
        raise ConfigError("nothing to evaluate: set EVAL.SETS (pair sets), EVAL.IJB.ROOT or EVAL.TINYFACE.ROOT")
    if cfg.EVAL.IJB.ROOT and cfg.DATA.IMAGE_SIZE % 112 and cfg.DATA.IMAGE_SIZE % 128:
        raise ConfigError(f"EVAL.IJB.ROOT: faces are aligned to DATA.IMAGE_SIZE = {cfg.DATA.IMAGE_SIZE}, which must "
                          "be a multiple of 112 or 128 (insightface's templates)")
    for path in cfg.EVAL.SETS:
        load_verification_set_cached(cfg, path)
    skip = periodic and bool(cfg.EVAL.SETS)
    with_ijb = bool(cfg.EVAL.IJB.ROOT) and not (skip and not cfg.EVAL.IJB.PERIODIC)
    with_tinyface = bool(cfg.EVAL.TINYFACE.ROOT) and not (skip and not cfg.EVAL.TINYFACE.PERIODIC)
    ijb_targets = load_ijb_targets(cfg) if with_ijb else []
    tinyface = load_tinyface(resolve_data_path(cfg, cfg.EVAL.TINYFACE.ROOT)) if with_tinyface else None
    if cfg.EVAL.SETS:
        results = evaluate_verification(cfg, model, device, output_dir)
    else:
        results = {"task": "face", "protocol": cfg.EVAL.PROTOCOL, "far_target": float(cfg.EVAL.FAR), "sets": {}}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if ijb_targets:
                results["ijb"] = evaluate_ijb(cfg, model, device, ijb_targets, output_dir)
            if tinyface is not None:
                results["tinyface"] = evaluate_tinyface(cfg, model, device, tinyface, output_dir)
    finally:
        model.train(was_training)
    results["main"] = _face_main(results, cfg)
    return results


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
    "face": lambda cfg, model, device, output_dir, periodic: evaluate_face(cfg, model, device, output_dir, periodic),
    "classification": lambda cfg, model, device, output_dir, periodic: evaluate_classification(cfg, model, device),
}


def evaluate(cfg: CfgNode, model: nn.Module, device: torch.device | str,
             output_dir: str | Path | None = None, periodic: bool = False) -> dict[str, Any]:
    """Evaluate `model` as EXPERIMENT.TASK says ("face": pair sets, IJB-B/C, TinyFace; or
    "classification"); the result always has a `main` metric (higher is better) for best-checkpoint
    selection. `periodic` marks an EVAL.PERIOD evaluation during training (see `evaluate_face`)."""
    task = cfg.EXPERIMENT.TASK
    if task not in _TASKS:
        raise ConfigError(f"EXPERIMENT.TASK must be one of {list(_TASKS)}, got {task!r}")
    return _TASKS[task](cfg, model, device, output_dir, periodic)
