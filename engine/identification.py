"""Closed-set rank-k identification as AdaFace evaluates TinyFace (`spec/face_eval.md` §2).

Probes are ranked against one gallery (the matching images followed by the distractors); a probe
succeeds at rank k when any of its k most similar gallery images carries its label. Probes whose label
no gallery image has are left out of numerator and denominator (`DIR_FAR` at FAR = 1). Pure NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.verification import to_numpy

DISTRACTOR_LABEL = -100  # AdaFace's label for every Gallery_Distractor image
_PROBE_BATCH = 256  # probes scored at once: TinyFace's gallery has 158 k images


def fuse_flip(embeddings: Any, flipped_embeddings: Any) -> np.ndarray:
    """l2normalize(raw + raw_flipped) of un-normalised network outputs (float32): AdaFace's default
    `pre_norm_vector_add`, and its `average` for networks without a norm output."""
    summed = to_numpy(embeddings).astype(np.float32) + to_numpy(flipped_embeddings).astype(np.float32)
    norms = np.linalg.norm(summed, axis=1, keepdims=True)
    norms[norms == 0] = 1
    return summed / norms


def identification_accuracy(probe_feats: Any, probe_labels: Any, gallery_feats: Any, gallery_labels: Any,
                            ranks: Sequence[int] = (1, 5, 10, 20)) -> dict[int, float]:
    """{k: fraction of mated probes with a same-label gallery image among their k best matches}.

    Similarity is the plain inner product of the given features (pass unit features for cosine).
    A probe is mated when some gallery image has its label; distractors carry -100 or any label no
    probe has. Among exactly equal similarities the mate is ranked first (AdaFace's order is
    unspecified there). Raises ValueError when no probe is mated.
    """
    probes = to_numpy(probe_feats).astype(np.float32)
    gallery = to_numpy(gallery_feats).astype(np.float32)
    probe_labels = to_numpy(probe_labels).reshape(-1)
    gallery_labels = to_numpy(gallery_labels).reshape(-1)
    if probes.shape[0] != probe_labels.size or gallery.shape[0] != gallery_labels.size:
        raise ValueError(f"{probes.shape[0]} probe features for {probe_labels.size} labels, "
                         f"{gallery.shape[0]} gallery features for {gallery_labels.size} labels")
    mated = np.isin(probe_labels, gallery_labels)
    if not mated.any():
        raise ValueError("no probe has a gallery image of its label: rank-k identification is undefined")
    probes, probe_labels = probes[mated], probe_labels[mated]
    positions = np.empty(probe_labels.size, dtype=np.int64)
    for start in range(0, probe_labels.size, _PROBE_BATCH):
        similarity = probes[start:start + _PROBE_BATCH] @ gallery.T
        same = probe_labels[start:start + _PROBE_BATCH, None] == gallery_labels[None, :]
        best_mate = np.where(same, similarity, -np.inf).max(1)
        positions[start:start + similarity.shape[0]] = (similarity > best_mate[:, None]).sum(1)
    return {int(k): float(np.mean(positions < k)) for k in ranks}
