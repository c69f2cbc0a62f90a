"""TinyFace rank-k identification (spec/face_eval.md §2) and its reader on a synthetic Testing_Set."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.synthetic_face_eval import write_tinyface
from data.tinyface import DISTRACTOR_LABEL, TinyFaceImages, load_tinyface
from engine.identification import fuse_flip, identification_accuracy
from utility.errors import DataError


def test_fuse_flip_normalises_the_sum_of_raw_outputs():
    fused = fuse_flip(np.array([[3.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 4.0], [1.0, 1.0]]))
    np.testing.assert_allclose(fused, [[0.6, 0.8], [2 ** -0.5, 2 ** -0.5]], rtol=1e-6)
    np.testing.assert_allclose(fuse_flip(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0]])), [[0.6, 0.8]])


def test_rank_k_hand_worked():
    # similarity rows per probe; gallery labels [1, 2, -100, 1]
    similarity = np.array([[0.2, 0.9, 0.5, 0.1],   # label 1: best mate .2, behind .9 and .5: position 2
                           [0.1, 0.8, 0.3, 0.2],   # label 2: mate .8 first
                           [0.9, 0.9, 0.9, 0.9]])  # label 9: no gallery image, left out
    probes, gallery = np.eye(3), similarity.T.copy()
    found = identification_accuracy(probes, [1, 2, 9], gallery, [1, 2, DISTRACTOR_LABEL, 1], ranks=(1, 2, 3))
    assert found == {1: 0.5, 2: 0.5, 3: 1.0}


def test_any_gallery_image_of_the_label_counts():
    # the second image of identity 1 is at the top: rank-1 success although the first is last
    similarity = np.array([[0.1, 0.5, 0.9, 0.3]])
    found = identification_accuracy(np.eye(1), [1], similarity.T.copy(), [1, 5, 1, 6], ranks=(1,))
    assert found == {1: 1.0}


def naive_dir(score: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray, ranks) -> dict:
    """AdaFace's closed-set loop, written out: sort each mated probe's row, look for a label in the top k."""
    hits = {k: [] for k in ranks}
    for row, label in zip(score, probe_labels):
        if label not in gallery_labels:
            continue
        ordered = gallery_labels[np.argsort(row)[::-1]]
        for k in ranks:
            hits[k].append(label in ordered[:k])
    return {k: float(np.mean(v)) for k, v in hits.items()}


def test_matches_the_naive_loop_on_random_features():
    rng = np.random.default_rng(5)
    probes = fuse_flip(rng.normal(size=(300, 16)), rng.normal(size=(300, 16)))
    gallery = fuse_flip(rng.normal(size=(700, 16)), rng.normal(size=(700, 16)))
    probe_labels = rng.integers(0, 60, 300)
    gallery_labels = np.r_[rng.integers(0, 50, 200), np.full(500, DISTRACTOR_LABEL)]
    ranks = (1, 5, 10, 20)
    expected = naive_dir(probes @ gallery.T, probe_labels, gallery_labels, ranks)
    assert identification_accuracy(probes, probe_labels, gallery, gallery_labels, ranks) == expected


def test_no_mated_probe_is_an_error():
    with pytest.raises(ValueError, match="no probe"):
        identification_accuracy(np.eye(2), [1, 2], np.eye(2), [3, 4])


# ----------------------------------------------------------------------------------------------
# reader
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tinyface_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tinyface")
    write_tinyface(root, identities=5, distractors=7, aligned=True, seed=1)
    return root


def test_reader_labels_and_gallery_order(tinyface_root):
    found = load_tinyface(tinyface_root)
    assert found.aligned and len(found.probe_paths) == 10 and len(found.gallery_paths) == 10 + 7
    assert all(path.parts[-3] == "aligned_pad_0.1_pad_high" for path in found.probe_paths)
    assert [int(p.name.split("_")[0]) for p in found.probe_paths] == list(found.probe_labels)
    np.testing.assert_array_equal(found.gallery_labels[10:], [DISTRACTOR_LABEL] * 7)  # matches, then distractors
    assert set(found.gallery_labels[:10]) == set(range(1, 6))
    assert TinyFaceImages(found.probe_paths, 112)[0]["image"].shape == (112, 112, 3)


def test_original_images_are_upsampled_when_no_aligned_copies(tinyface_root, tmp_path):
    shutil.copytree(tinyface_root / "tinyface", tmp_path / "tinyface")
    found = load_tinyface(tmp_path)
    assert not found.aligned and found.probe_paths[0].parts[-3] == "Testing_Set"
    native = cv2.imread(str(found.probe_paths[0]))
    assert max(native.shape[:2]) <= 26  # natively tiny
    image = TinyFaceImages(found.probe_paths, 112, "rgb")[0]["image"].numpy()
    expected = cv2.resize(native, (112, 112), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    np.testing.assert_array_equal(image, expected)


def test_bad_layouts(tinyface_root, tmp_path):
    with pytest.raises(DataError, match="no tinyface/Testing_Set"):
        load_tinyface(tmp_path)
    shutil.copytree(tinyface_root, tmp_path / "copy")
    (tmp_path / "copy" / "aligned_pad_0.1_pad_high" / "Probe" / "1_1.jpg").unlink()
    with pytest.raises(DataError, match="1_1.jpg has no aligned copy"):
        load_tinyface(tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "aligned_pad_0.1_pad_high")
    (tmp_path / "copy" / "tinyface" / "Testing_Set" / "Probe" / "1_1.jpg").rename(
        tmp_path / "copy" / "tinyface" / "Testing_Set" / "Probe" / "x_1.jpg")
    with pytest.raises(DataError, match="x_1.jpg: TinyFace probe and match names start with the identity"):
        load_tinyface(tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "tinyface" / "Testing_Set" / "Gallery_Distractor")
    with pytest.raises(DataError, match="Gallery_Distractor does not exist"):
        load_tinyface(tmp_path / "copy")
