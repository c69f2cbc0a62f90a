"""Face verification metrics on per-pair embeddings (pure NumPy): 10-fold accuracy, TAR@FAR, ROC.

Two published protocols, chosen by `EVAL.PROTOCOL`, because their numbers are not comparable with each
other (`spec/face.md` §7.1, `spec/adadistill.md` §5.1):

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

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

PROTOCOLS = ("insightface", "skd")


# ---------------------------------------------------------------------------------------------------
def to_numpy(values: Any) -> np.ndarray:
    """A NumPy view of an array or tensor; half-precision tensors widen to float32."""
    if isinstance(values, Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _check_pairs(emb1: Any, emb2: Any, issame: Any, folds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    left, right = to_numpy(emb1), to_numpy(emb2)
    same = to_numpy(issame).astype(bool).reshape(-1)
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
    decisions = np.zeros(same.size, dtype=bool)  # per pair: right under its fold's threshold
    for test in fold_slices(same.size, folds):
        train = _train_mask(same.size, test)
        correct = _insightface_correct(dist[train], same[train], thresholds)
        best = thresholds[int(np.argmax(correct))]  # the first of equally good thresholds
        decisions[test] = (dist[test] < best) == same[test]
        accuracies.append(float(np.count_nonzero(decisions[test])) / float(dist[test].size))
        best_thresholds.append(float(best))
    return accuracies, best_thresholds, decisions


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
    decisions = np.zeros(same.size, dtype=bool)  # per pair: right under its fold's threshold
    for test in fold_slices(same.size, folds):
        train = _train_mask(same.size, test)
        scores = _skd_scores(left, right, train)
        correct = _skd_correct(scores[train], same[train], thresholds_cmp)
        best = float(np.mean(thresholds[correct == correct.max()]))  # mean of all best thresholds
        threshold = dtype(best)  # both inequalities strict, as in _skd_correct
        decisions[test] = np.where(same[test], scores[test] > threshold, scores[test] < threshold)
        accuracies.append(float(np.count_nonzero(decisions[test])) / float(scores[test].size))
        best_thresholds.append(best)
    return accuracies, best_thresholds, decisions


_PROTOCOL_FOLDS: dict[str, Callable[..., tuple[list, list, np.ndarray]]] = {
    "insightface": _insightface_folds,
    "skd": _skd_folds,
}


def verification_accuracy(emb1: np.ndarray | Tensor, emb2: np.ndarray | Tensor, issame: Sequence[bool] | np.ndarray,
                          folds: int = 10, protocol: str = "insightface") -> dict[str, Any]:
    """10-fold verification accuracy of pairs (emb1[i], emb2[i]) with labels issame[i].

    `emb1`, `emb2`: N x D final per-pair embeddings, flip already fused by the caller (insightface:
    summed; skd: concatenated). `folds`: contiguous blocks of the pair order, the first N % folds
    one pair longer. `protocol`: "insightface" or "skd" (see the module docstring).
    Returns `mean` and `std` (fractions in [0, 1], std over folds with ddof 0), `fold_accuracies`,
    the per-fold `thresholds` (squared distance for insightface, cosine for skd) and `correct`, one
    bool per pair (in pair order) for the decision its fold's threshold gave: two models scored on the
    same pairs are compared pair by pair, whose standard error is smaller than that of two
    independent accuracies (`engine.summary`).
    """
    if protocol not in _PROTOCOL_FOLDS:
        raise ValueError(f"unknown verification protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    left, right, same = _check_pairs(emb1, emb2, issame, folds)
    accuracies, thresholds, correct = _PROTOCOL_FOLDS[protocol](left, right, same, folds)
    return {
        "mean": float(np.mean(accuracies)),
        "std": float(np.std(accuracies)),
        "fold_accuracies": accuracies,
        "thresholds": thresholds,
        "correct": correct.tolist(),
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
    left = to_numpy(emb1).astype(np.float64)
    right = to_numpy(emb2).astype(np.float64)
    if protocol == "skd":
        mu = np.concatenate((left, right), 0).mean(0, keepdims=True)
        left, right = left - mu, right - mu
    return np.sum(_l2_normalise_rows(left) * _l2_normalise_rows(right), 1)


def roc_curve_points(scores: np.ndarray | Tensor, issame: Sequence[bool] | np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for "same iff score >= threshold", one point per distinct score from
    the highest down, starting at (0, 0) with threshold +inf."""
    values = to_numpy(scores).astype(np.float64).reshape(-1)
    same = to_numpy(issame).astype(bool).reshape(-1)
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


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "",
             min_far: float = 1e-4) -> Path:
    """Write one PNG with an ROC curve per label (log-scaled FPR from `min_far`, as face verification
    plots are; IJB plots start at 1e-6)."""
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
    axes.set_xlim(min_far, 1.0)
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
