"""Evaluation: face verification per set and resolution, and classification top-k.

Verification follows one of two published protocols, chosen by `EVAL.PROTOCOL`, because their numbers
are not comparable with each other (`spec/face.md` §7.1, `spec/adadistill.md` §5.1):

- `insightface` (AdaDistill, arcface_torch): embedding = f(x) + f(flip x), L2-normalised; squared
  distance; thresholds `arange(0, 4, 0.01)`; "same" iff dist < t; the first best threshold on the
  nine training folds is applied to the held-out fold. TAR@FAR as insightface's VAL@FAR.
- `skd` (A-SKD, F-SKD, from Face_Pytorch): feature = concat(f(x), f(flip x)); per fold the features
  are centred on the training folds' mean, L2-normalised and compared by cosine; thresholds
  k/10000 for k in -10000..10000 with strict inequalities; the threshold is the mean of all best ones.

TAR@FAR is insightface's VAL@FAR under either protocol (computed on the protocol's fused features).

Folds are contiguous blocks of the pair order (sklearn `KFold(shuffle=False)`), which keeps the
official LFW/CFP fold structure stored in the `.bin` order. The threshold searches count with sorted
scores instead of looping over the grid; the counts are exact integers, so the chosen thresholds are
those of the reference loops.
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
from utility.config import resolve_data_path
from utility.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROTOCOLS = ("insightface", "skd")


# ---------------------------------------------------------------------------------------------------
# verification metrics (pure NumPy)
# ---------------------------------------------------------------------------------------------------
def _to_numpy(values: Any) -> np.ndarray:
    """A NumPy view of an array or tensor; half-precision tensors widen to float32."""
    if isinstance(values, Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _check_pairs(emb1: Any, emb2: Any, issame: Any, folds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    left, right = _to_numpy(emb1), _to_numpy(emb2)
    same = _to_numpy(issame).astype(bool).reshape(-1)
    if left.ndim != 2 or left.shape != right.shape:
        raise ValueError(f"emb1 and emb2 must both be N x D, got {left.shape} and {right.shape}")
    if left.shape[0] != same.shape[0]:
        raise ValueError(f"{left.shape[0]} embedding pairs but {same.shape[0]} issame labels")
    if not 2 <= folds <= same.shape[0]:
        raise ValueError(f"folds must lie in [2, number of pairs = {same.shape[0]}], got {folds}")
    return left, right, same


def fold_slices(num_pairs: int, folds: int = 10) -> list[slice]:
    """Contiguous folds as `KFold(folds, shuffle=False)` makes them: the first `num_pairs % folds`
    folds hold one pair more than the rest."""
    sizes = np.full(folds, num_pairs // folds)
    sizes[: num_pairs % folds] += 1
    stops = np.cumsum(sizes)
    return [slice(int(stop - size), int(stop)) for size, stop in zip(sizes, stops)]


def _train_mask(num_pairs: int, test: slice) -> np.ndarray:
    mask = np.ones(num_pairs, dtype=bool)
    mask[test] = False
    return mask


def _l2_normalise_rows(values: np.ndarray) -> np.ndarray:
    """sklearn's `preprocessing.normalize` (l2): row norms via einsum, zero norms left as they are."""
    norms = np.sqrt(np.einsum("ij,ij->i", values, values))
    norms[norms == 0.0] = 1.0
    return values / norms[:, None]


def _insightface_distances(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Squared distance of the L2-normalised float64 embeddings (insightface stores them in float64)."""
    left = _l2_normalise_rows(emb1.astype(np.float64))
    right = _l2_normalise_rows(emb2.astype(np.float64))
    return np.sum(np.square(np.subtract(left, right)), 1)


def _count_below(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Number of values strictly below each threshold."""
    return np.searchsorted(sorted_values, thresholds, side="left")


def _count_above(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Number of values strictly above each threshold."""
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side="right")


def _insightface_correct(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Correct decisions per threshold for "same iff dist < t": TP + TN."""
    same_sorted, diff_sorted = np.sort(dist[same]), np.sort(dist[~same])
    return _count_below(same_sorted, thresholds) + (diff_sorted.size - _count_below(diff_sorted, thresholds))


def _skd_correct(scores: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Correct decisions per threshold with both inequalities strict: same & s > t, different & s < t."""
    return _count_above(np.sort(scores[same]), thresholds) + _count_below(np.sort(scores[~same]), thresholds)


def _insightface_folds(left: np.ndarray, right: np.ndarray, same: np.ndarray, folds: int) -> tuple[list, list]:
    dist = _insightface_distances(left, right)
    thresholds = np.arange(0, 4, 0.01)
    accuracies, best_thresholds = [], []
    for test in fold_slices(same.size, folds):
        train = _train_mask(same.size, test)
        correct = _insightface_correct(dist[train], same[train], thresholds)
        best = thresholds[int(np.argmax(correct))]  # the first of equally good thresholds
        test_correct = _insightface_correct(dist[test], same[test], np.array([best]))[0]
        accuracies.append(float(test_correct) / float(dist[test].size))
        best_thresholds.append(float(best))
    return accuracies, best_thresholds


def _skd_scores(left: np.ndarray, right: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Cosine after centring on the training folds' mean of left and right features together.

    The expressions are the reference's own, so float32 features give its float32 results.
    """
    mu = np.expand_dims(np.mean(np.concatenate((left[train], right[train]), 0), 0), 0)
    left, right = left - mu, right - mu
    left = left / np.expand_dims(np.sqrt(np.sum(np.power(left, 2), 1)), 1)
    right = right / np.expand_dims(np.sqrt(np.sum(np.power(right, 2), 1)), 1)
    return np.sum(np.multiply(left, right), 1)


def _skd_folds(left: np.ndarray, right: np.ndarray, same: np.ndarray, folds: int) -> tuple[list, list]:
    # The reference scored float32 features and, under NumPy 1.x, compared them with thresholds
    # rounded to float32; float64 features are compared in float64.
    dtype = np.float64 if left.dtype == np.float64 else np.float32
    left, right = left.astype(dtype, copy=False), right.astype(dtype, copy=False)
    thresholds = np.arange(-10000, 10001) * 1.0 / 10000
    thresholds_cmp = thresholds.astype(dtype)
    accuracies, best_thresholds = [], []
    for test in fold_slices(same.size, folds):
        train = _train_mask(same.size, test)
        scores = _skd_scores(left, right, train)
        correct = _skd_correct(scores[train], same[train], thresholds_cmp)
        best = float(np.mean(thresholds[correct == correct.max()]))  # mean of all best thresholds
        test_correct = _skd_correct(scores[test], same[test], np.array([best], dtype=dtype))[0]
        accuracies.append(float(test_correct) / float(scores[test].size))
        best_thresholds.append(best)
    return accuracies, best_thresholds


_PROTOCOL_FOLDS: dict[str, Callable[..., tuple[list, list]]] = {
    "insightface": _insightface_folds,
    "skd": _skd_folds,
}


def verification_accuracy(emb1: np.ndarray | Tensor, emb2: np.ndarray | Tensor, issame: Sequence[bool] | np.ndarray,
                          folds: int = 10, protocol: str = "insightface") -> dict[str, Any]:
    """10-fold verification accuracy of pairs (emb1[i], emb2[i]) with labels issame[i].

    `emb1`, `emb2`: N x D final per-pair embeddings, flip already fused by the caller (insightface:
    summed; skd: concatenated). `folds`: contiguous blocks of the pair order, the first N % folds
    one pair longer. `protocol`: "insightface" or "skd" (see the module docstring).
    Returns `mean` and `std` (fractions in [0, 1], std over folds with ddof 0), `fold_accuracies`
    and the per-fold `thresholds` (squared distance for insightface, cosine for skd).
    """
    if protocol not in _PROTOCOL_FOLDS:
        raise ValueError(f"unknown verification protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    left, right, same = _check_pairs(emb1, emb2, issame, folds)
    accuracies, thresholds = _PROTOCOL_FOLDS[protocol](left, right, same, folds)
    return {
        "mean": float(np.mean(accuracies)),
        "std": float(np.std(accuracies)),
        "fold_accuracies": accuracies,
        "thresholds": thresholds,
    }


def interp_slinear_scipy181(x: np.ndarray, y: np.ndarray, u: float) -> float:
    """`scipy.interpolate.interp1d(x, y, kind='slinear')(u)` as SciPy 1.8.1 computes it.

    insightface feeds it FAR curves full of repeated values, which SciPy >= 1.9 rejects. 1.8.1 sorts
    x stably, evaluates a degree-1 B-spline on knots [x0, x0, x1, ..., xn, xn]: with i the last index
    with x[i] <= u, de Boor's weights towards x[i + 1]; at u = max(x) the last interval is used, which
    gives y[-1] when max(x) is unique and 0.0 when it is repeated (a zero-width interval).
    """
    order = np.argsort(x, kind="mergesort")
    x, y = np.asarray(x, dtype=np.float64)[order], np.asarray(y, dtype=np.float64)[order]
    if x.size < 2:
        raise ValueError("slinear interpolation needs at least two points")
    if not x[0] <= u <= x[-1]:
        raise ValueError(f"{u} lies outside the interpolation range [{x[0]}, {x[-1]}]")
    i = min(int(np.searchsorted(x, u, side="right")) - 1, x.size - 2)
    lo, hi = x[i], x[i + 1]
    if hi == lo:
        return 0.0
    weight = 1.0 / (hi - lo)
    return float(y[i] * (weight * (hi - u)) + y[i + 1] * (weight * (u - lo)))


def tar_at_far(emb1: np.ndarray | Tensor, emb2: np.ndarray | Tensor, issame: Sequence[bool] | np.ndarray,
               far: float = 1e-3, folds: int = 10) -> dict[str, Any]:
    """insightface's VAL@FAR (`calculate_val`) on L2-normalised embeddings and squared distances.

    Per fold: FAR(t) on the training folds for t in `arange(0, 4, 0.001)`; t* by slinear
    interpolation of t over FAR at `far` (SciPy 1.8.1 semantics), or 0 when the largest training FAR
    stays below `far`; then TAR (= VAL) and the achieved FAR on the held-out fold. A fold without
    genuine (impostor) pairs has no TAR (FAR) and is left out of the means instead of crashing.
    Returns `tar`, `tar_std`, `far` (means over folds), `far_target`, `fold_tar`, `fold_far`, `thresholds`.
    """
    left, right, same = _check_pairs(emb1, emb2, issame, folds)
    dist = _insightface_distances(left, right)
    thresholds = np.arange(0, 4, 0.001)
    fold_tar, fold_far, fold_thresholds = [], [], []
    for test in fold_slices(same.size, folds):
        train = _train_mask(same.size, test)
        impostors = np.sort(dist[train][~same[train]])
        threshold = 0.0
        if impostors.size:
            far_train = _count_below(impostors, thresholds) / float(impostors.size)
            if np.max(far_train) >= far:
                threshold = interp_slinear_scipy181(far_train, thresholds, far)
        accepted = dist[test] < threshold
        genuine = same[test]
        n_same, n_diff = int(genuine.sum()), int((~genuine).sum())
        fold_tar.append(float(np.sum(accepted & genuine)) / n_same if n_same else float("nan"))
        fold_far.append(float(np.sum(accepted & ~genuine)) / n_diff if n_diff else float("nan"))
        fold_thresholds.append(float(threshold))
    tar_values = np.array(fold_tar)
    far_values = np.array(fold_far)
    tar_defined = tar_values[~np.isnan(tar_values)]
    far_defined = far_values[~np.isnan(far_values)]
    return {
        "tar": float(np.mean(tar_defined)) if tar_defined.size else None,
        "tar_std": float(np.std(tar_defined)) if tar_defined.size else None,
        "far": float(np.mean(far_defined)) if far_defined.size else None,
        "far_target": float(far),
        "fold_tar": [None if np.isnan(v) else v for v in fold_tar],
        "fold_far": [None if np.isnan(v) else v for v in fold_far],
        "thresholds": fold_thresholds,
    }


def pair_scores(emb1: np.ndarray | Tensor, emb2: np.ndarray | Tensor, protocol: str = "insightface") -> np.ndarray:
    """One similarity per pair for ROC curves (higher = more alike): cosine of the embeddings,
    after centring on the mean of all features for `skd` (its per-fold centring, made global)."""
    left = _to_numpy(emb1).astype(np.float64)
    right = _to_numpy(emb2).astype(np.float64)
    if protocol == "skd":
        mu = np.concatenate((left, right), 0).mean(0, keepdims=True)
        left, right = left - mu, right - mu
    return np.sum(_l2_normalise_rows(left) * _l2_normalise_rows(right), 1)


def roc_curve_points(scores: np.ndarray | Tensor, issame: Sequence[bool] | np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for "same iff score >= threshold", one point per distinct score from
    the highest down, starting at (0, 0) with threshold +inf."""
    values = _to_numpy(scores).astype(np.float64).reshape(-1)
    same = _to_numpy(issame).astype(bool).reshape(-1)
    if values.shape != same.shape:
        raise ValueError(f"{values.size} scores but {same.size} issame labels")
    n_same, n_diff = int(same.sum()), int((~same).sum())
    if n_same == 0 or n_diff == 0:
        raise ValueError("an ROC curve needs both genuine and impostor pairs")
    order = np.argsort(-values, kind="mergesort")
    values, same = values[order], same[order]
    run_ends = np.r_[np.flatnonzero(np.diff(values)), values.size - 1]
    true_pos = np.cumsum(same)[run_ends]
    false_pos = run_ends + 1 - true_pos
    fpr = np.r_[0.0, false_pos / n_diff]
    tpr = np.r_[0.0, true_pos / n_same]
    return fpr, tpr, np.r_[np.inf, values[run_ends]]


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """Write one PNG with an ROC curve per label (log-scaled FPR, as face verification plots are)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for label, (fpr, tpr) in curves.items():
        fpr, tpr = np.asarray(fpr), np.asarray(tpr)
        visible = fpr > 0
        axes.plot(fpr[visible], tpr[visible], label=label, linewidth=1.2)
    axes.set_xscale("log")
    axes.set_xlim(1e-4, 1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("false accept rate")
    axes.set_ylabel("true accept rate")
    axes.grid(True, which="both", linewidth=0.3)
    if title:
        axes.set_title(title)
    if curves:
        axes.legend(loc="lower right", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


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
    images = _to_numpy(images_uint8_nhwc)
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
