"""IJB-B / IJB-C template verification (1:1) and identification (1:N) as insightface evaluates them.

Pure NumPy on embeddings already computed (`spec/face_eval.md` §1). The 1:1 path is `ijb_11.py`'s:
image features under the flip / norm-score / detector-score flags, frames of one media averaged and
media summed into a unit template feature, cosine pair scores, and TAR read off scikit-learn's ROC
points (with `drop_intermediate`) at the point nearest each FAR, never interpolated. The ROC is
rebuilt here exactly, so a FAR below 1 / (number of impostor pairs) gives the TAR at FAR 0.

1:N follows `ijb_1n.py` (not `ijb_evals.py`, whose definition differs): one gallery made of both
gallery sets, rank-k on `argsort(-similarity)`, and TPIR at FPIR f as the fraction of probes whose
mate scores above the ceil(n_probes * f)-th largest non-mate score pooled over all probes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.verification import to_numpy

DEFAULT_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
_SCORE_BLOCK = 1 << 23  # similarity entries computed at once (64 MB of float64): bounded memory
_PROBE_BATCH = 1024


def _unit_rows(values: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation; a zero row stays zero (sklearn `normalize`)."""
    norms = np.sqrt(np.einsum("ij,ij->i", values, values))
    norms[norms == 0] = 1
    return values / norms[:, None]


def image_features(embeddings: Any, flipped_embeddings: Any = None, faceness: Any = None,
                   use_norm_score: bool = True, use_detector_score: bool = True) -> np.ndarray:
    """Per-image features (N x D float32) in `ijb_11.py`'s order of the three test modes.

    F1 (`flipped_embeddings` given): the sum of the two raw embeddings; F0: `embeddings` alone.
    N1 (`use_norm_score`): the raw norm stays as a quality weight; N0: each row L2-normalised.
    D1 (`use_detector_score` and `faceness` given): each row scaled by its detector score.
    """
    features = to_numpy(embeddings).astype(np.float32)
    if flipped_embeddings is not None:
        features = features + to_numpy(flipped_embeddings).astype(np.float32)
    if not use_norm_score:
        features = _unit_rows(features)
    if use_detector_score and faceness is not None:
        features = features * to_numpy(faceness).astype(np.float32).reshape(-1, 1)
    return features


def template_features(image_feats: Any, templates: Any, medias: Any) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique template ids, unit template features in that order, float64).

    Within a template, images of one media id are averaged; the media features are summed; the sum
    is L2-normalised (a zero sum stays zero). A media id shared by two templates is grouped
    separately in each. Equal to insightface's `image2template_feature` (which returns the pair in
    the other order), computed by sorting instead of one scan per template.
    """
    feats = to_numpy(image_feats).astype(np.float64)
    templates = to_numpy(templates).astype(np.int64).reshape(-1)
    medias = to_numpy(medias).astype(np.int64).reshape(-1)
    if not feats.shape[0] == templates.size == medias.size:
        raise ValueError(f"{feats.shape[0]} image features, {templates.size} template ids, {medias.size} media ids")
    order = np.lexsort((medias, templates))
    sorted_templates, sorted_medias = templates[order], medias[order]
    new_media = np.r_[True, (np.diff(sorted_templates) != 0) | (np.diff(sorted_medias) != 0)]
    media_starts = np.flatnonzero(new_media)
    counts = np.diff(np.r_[media_starts, order.size])
    media_feats = np.add.reduceat(feats[order], media_starts, axis=0) / counts[:, None]
    media_templates = sorted_templates[media_starts]
    template_starts = np.flatnonzero(np.r_[True, np.diff(media_templates) != 0])
    summed = np.add.reduceat(media_feats, template_starts, axis=0)
    return media_templates[template_starts], _unit_rows(summed)


def _rows_of(unique_templates: np.ndarray, ids: np.ndarray) -> np.ndarray:
    rows = np.searchsorted(unique_templates, ids)
    rows = np.minimum(rows, unique_templates.size - 1)
    unknown = unique_templates[rows] != ids
    if unknown.any():
        raise ValueError(f"template id {int(ids[np.argmax(unknown)])} has no template feature")
    return rows


def pair_scores(unique_templates: Any, template_feats: Any, t1: Any, t2: Any) -> np.ndarray:
    """Cosine score (float64) of every template pair (t1[i], t2[i]), in pair order. A template id
    without a feature raises ValueError (insightface would silently score it as row 0)."""
    return cross_pair_scores(unique_templates, template_feats, template_feats, t1, t2)


def cross_pair_scores(unique_templates: Any, first_feats: Any, second_feats: Any, t1: Any, t2: Any) -> np.ndarray:
    """`pair_scores` with t1's features from `first_feats` and t2's from `second_feats` (rows in
    `unique_templates` order): the cross-resolution protocol scores an HR template against an LR one.

    Pairs are grouped by their first template; each group of first templates is scored against every
    template with one matrix product, and the pairs pick their entries. IJB-C's 15.7 M pairs touch only
    23 k templates, so this reads far less memory than gathering two feature rows per pair.
    """
    unique_templates = to_numpy(unique_templates).astype(np.int64).reshape(-1)
    left_feats = to_numpy(first_feats).astype(np.float64)
    right_feats = to_numpy(second_feats).astype(np.float64)
    first = _rows_of(unique_templates, to_numpy(t1).astype(np.int64).reshape(-1))
    second = _rows_of(unique_templates, to_numpy(t2).astype(np.int64).reshape(-1))
    scores = np.empty(first.size, dtype=np.float64)
    order = np.argsort(first, kind="stable")
    rows, starts = np.unique(first[order], return_index=True)
    starts = np.r_[starts, order.size]
    block = max(1, _SCORE_BLOCK // max(1, right_feats.shape[0]))
    for begin in range(0, rows.size, block):
        chunk = rows[begin:begin + block]
        similarity = left_feats[chunk] @ right_feats.T
        pairs = order[starts[begin]:starts[min(begin + block, rows.size)]]
        scores[pairs] = similarity[np.searchsorted(chunk, first[pairs]), second[pairs]]
    return scores


def roc_points(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as `sklearn.metrics.roc_curve(labels, scores)` returns them with its
    defaults: one point per distinct score (ties are one point), collinear interior points dropped
    (`drop_intermediate=True`), (0, 0) with threshold +inf in front."""
    values = to_numpy(scores).astype(np.float64).reshape(-1)
    genuine = to_numpy(labels).reshape(-1).astype(bool)
    if values.shape != genuine.shape:
        raise ValueError(f"{values.size} scores but {genuine.size} labels")
    if genuine.all() or not genuine.any():
        raise ValueError("an ROC needs both genuine (label 1) and impostor (label 0) pairs")
    order = np.argsort(values, kind="mergesort")[::-1]
    values, genuine = values[order], genuine[order]
    ends = np.r_[np.flatnonzero(np.diff(values)), values.size - 1]
    tps = np.cumsum(genuine, dtype=np.int64)[ends]
    fps = 1 + ends - tps
    thresholds = values[ends]
    if fps.size > 2:
        keep = np.flatnonzero(np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def tar_at_far(scores: Any, labels: Any, fars: Sequence[float] = DEFAULT_FARS) -> dict[float, float]:
    """{far: TAR} (fractions) read off the ROC as `ijb_11.py` does: both arrays reversed, then the
    first point minimising |fpr - far|, so a tie in distance goes to the larger fpr and, at equal fpr,
    to the largest tpr. Print `100 * tar` with two decimals for the original table."""
    fpr, tpr, _ = roc_points(scores, labels)
    fpr, tpr = fpr[::-1], tpr[::-1]
    return {float(far): float(tpr[int(np.argmin(np.abs(fpr - far)))]) for far in fars}


def mate_indices(probe_subjects: Any, gallery_subjects: Any) -> np.ndarray:
    """Gallery row of each probe's subject; each must occur exactly once (`ijb_1n.py`'s `gen_mask`)."""
    probe_subjects = to_numpy(probe_subjects).reshape(-1)
    gallery_subjects = to_numpy(gallery_subjects).reshape(-1)
    order = np.argsort(gallery_subjects, kind="mergesort")
    ordered = gallery_subjects[order]
    left = np.searchsorted(ordered, probe_subjects, side="left")
    right = np.searchsorted(ordered, probe_subjects, side="right")
    bad = (right - left) != 1
    if bad.any():
        subject = probe_subjects[np.argmax(bad)]
        raise ValueError(f"probe subject {subject} occurs {int((right - left)[np.argmax(bad)])} times in the "
                         "gallery; 1:N needs exactly one gallery template per probe subject")
    return order[left]


def identification_1n(probe_feats: Any, probe_subjects: Any, gallery_feats: Any, gallery_subjects: Any,
                      ranks: Sequence[int] = (1, 5, 10), fpirs: Sequence[float] = (0.01, 0.1)) -> dict[str, Any]:
    """IJB 1:N as `ijb_1n.py` computes it, on unit template features.

    Returns {"rank": {k: fraction of probes whose mate is among the k highest similarities},
    "tpir": {f: fraction of probes whose mate similarity exceeds the ceil(n_probes * f)-th largest
    non-mate similarity of all probes together}}. Ties among similarities are resolved in the mate's
    favour (the original's order is unspecified).
    """
    probes = to_numpy(probe_feats).astype(np.float64)
    gallery = to_numpy(gallery_feats).astype(np.float64)
    mates = mate_indices(probe_subjects, gallery_subjects)
    needed = max(math.ceil(probes.shape[0] * f) for f in fpirs)
    if needed > probes.shape[0] * (gallery.shape[0] - 1):
        raise ValueError(f"{probes.shape[0]} probes x {gallery.shape[0] - 1} non-mates cannot give FPIR {max(fpirs)}")
    positions = np.empty(probes.shape[0], dtype=np.int64)
    mate_scores = np.empty(probes.shape[0], dtype=np.float64)
    top_negatives = np.empty(0, dtype=np.float64)
    for start in range(0, probes.shape[0], _PROBE_BATCH):
        similarity = probes[start:start + _PROBE_BATCH] @ gallery.T
        rows = np.arange(similarity.shape[0])
        mate = similarity[rows, mates[start:start + _PROBE_BATCH]]
        positions[start:start + similarity.shape[0]] = (similarity > mate[:, None]).sum(1)
        mate_scores[start:start + similarity.shape[0]] = mate
        similarity[rows, mates[start:start + _PROBE_BATCH]] = -np.inf
        negatives = np.concatenate([top_negatives, similarity[np.isfinite(similarity)]])
        keep = min(needed, negatives.size)
        top_negatives = np.partition(negatives, negatives.size - keep)[negatives.size - keep:]
    descending = np.sort(top_negatives)[::-1]
    return {
        "rank": {int(k): float(np.mean(positions < k)) for k in ranks},
        "tpir": {float(f): float(np.mean(mate_scores > descending[math.ceil(probes.shape[0] * f) - 1]))
                 for f in fpirs},
    }
