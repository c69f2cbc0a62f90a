"""IJB-B/C: metrics on hand-worked examples (spec/face_eval.md §1), readers on synthetic folders, bad inputs."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_curve

from data.ijb import IJBImages, load_ijb, meta_paths
from data.synthetic_face_eval import ijb_faces, write_ijb
from engine.ijb import (
    cross_pair_scores,
    identification_1n,
    image_features,
    mate_indices,
    pair_scores,
    roc_points,
    tar_at_far,
    template_features,
)
from utility.errors import DataError


# ----------------------------------------------------------------------------------------------
# image and template features
# ----------------------------------------------------------------------------------------------
def test_image_features_modes():
    emb, flipped, faceness = np.array([[3.0, 4.0]]), np.array([[1.0, 0.0]]), np.array([0.5])
    np.testing.assert_allclose(image_features(emb, flipped, faceness), [[2.0, 2.0]])  # (3+1, 4+0) * 0.5
    np.testing.assert_allclose(image_features(emb, None, faceness), [[1.5, 2.0]])  # F0
    np.testing.assert_allclose(image_features(emb, flipped, faceness, use_norm_score=False),
                               [[0.5 / math.sqrt(2), 0.5 / math.sqrt(2)]])  # N0: unit, then * faceness
    np.testing.assert_allclose(image_features(emb, flipped, faceness, use_detector_score=False), [[4.0, 4.0]])
    np.testing.assert_allclose(image_features(emb, flipped, None), [[4.0, 4.0]])  # no scores: D skipped


def test_template_pooling_averages_frames_then_sums_media():
    # template 7: media 10 = frames (1,0), (0,1) -> mean (.5,.5); media 11 = (2,0); sum (2.5, .5)
    # template 3: one image (0,3); template 9 reuses media id 10: its own group, (0,2) alone
    feats = np.array([[0.0, 2.0], [1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])
    templates = np.array([9, 7, 7, 3, 7])
    medias = np.array([10, 10, 11, 5, 10])
    ids, pooled = template_features(feats, templates, medias)
    np.testing.assert_array_equal(ids, [3, 7, 9])
    np.testing.assert_allclose(pooled, [[0, 1], np.array([2.5, 0.5]) / math.sqrt(6.5), [0, 1]])


def test_many_frames_of_one_video_weigh_as_one_still():
    feats = np.array([[1.0, 0.0]] * 50 + [[0.0, 1.0]])
    ids, pooled = template_features(feats, np.ones(51, dtype=int), np.r_[np.zeros(50, dtype=int), 1])
    np.testing.assert_allclose(pooled, [[1 / math.sqrt(2), 1 / math.sqrt(2)]])


def test_zero_template_stays_zero_and_pair_scores_are_cosines():
    ids, pooled = template_features(np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]]), [1, 2, 3], [1, 2, 3])
    np.testing.assert_array_equal(pooled[0], [0, 0])
    scores = pair_scores(ids, pooled, [2, 2, 1], [3, 2, 3])
    np.testing.assert_allclose(scores, [0.6, 1.0, 0.0])
    with pytest.raises(ValueError, match="template id 5"):
        pair_scores(ids, pooled, [2, 5], [3, 3])


# ----------------------------------------------------------------------------------------------
# ROC and TAR@FAR
# ----------------------------------------------------------------------------------------------
def test_roc_points_equal_sklearn_with_ties():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=3000), 1)  # heavy ties
    labels = (rng.random(3000) < 0.1).astype(int)
    scores[labels == 1] += 1.0
    fpr, tpr, thresholds = roc_points(scores, labels)
    ref_fpr, ref_tpr, ref_thresholds = roc_curve(labels, scores)
    np.testing.assert_array_equal(fpr, ref_fpr)
    np.testing.assert_array_equal(tpr, ref_tpr)
    np.testing.assert_array_equal(thresholds[1:], ref_thresholds[1:])


def test_tar_at_far_hand_worked():
    # descending: .95P .9N .8P .6P .5N .3N .2P .1N; (fps, tps) per score: (0,1)(1,1)(1,2)(1,3)(2,3)(3,3)(3,4)(4,4)
    # drop_intermediate removes (1,2) and (2,3); with (0,0): fpr 0,0,.25,.25,.75,.75,1 / tpr 0,.25,.25,.75,.75,1,1
    scores = np.array([0.95, 0.9, 0.8, 0.6, 0.5, 0.3, 0.2, 0.1])
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    tar = tar_at_far(scores, labels, fars=(1e-3, 0.1, 0.25, 0.5, 0.75, 1.0))
    assert tar[1e-3] == 0.25  # below 1 / N_neg: the positives above every negative (only .95)
    assert tar[0.1] == 0.25  # nearer to fpr 0 than to .25
    assert tar[0.25] == 0.75
    assert tar[0.5] == 1.0  # (2,3) was dropped; equally near .25 and .75: the larger fpr, its largest tpr
    assert tar[0.75] == 1.0 and tar[1.0] == 1.0


def test_tar_at_far_tied_scores_form_one_point():
    # 0.9P, then 0.5 for two positives and two negatives: one ROC point (2 fps, 3 tps)
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.5])
    labels = np.array([1, 1, 1, 0, 0])
    tar = tar_at_far(scores, labels, fars=(1e-4, 0.4, 0.6))
    assert tar[1e-4] == pytest.approx(1 / 3)
    assert tar[0.4] == pytest.approx(1 / 3)  # |0 - .4| < |1 - .4|
    assert tar[0.6] == 1.0


def test_tar_at_far_needs_both_classes():
    with pytest.raises(ValueError, match="both genuine"):
        tar_at_far([0.1, 0.2], [1, 1])


# ----------------------------------------------------------------------------------------------
# 1:N (ijb_1n.py)
# ----------------------------------------------------------------------------------------------
def test_identification_1n_hand_worked():
    # probes x gallery similarities; gallery subjects [10, 20, 30]; probes of 20, 10, 30, 20
    similarity = np.array([[0.1, 0.9, 0.3],    # mate 0.9 first
                           [0.5, 0.6, 0.2],    # mate 0.5 second
                           [0.7, 0.1, 0.4],    # mate 0.4 second
                           [0.2, 0.3, 0.35]])  # mate 0.3 second
    probes, gallery = np.eye(4), np.zeros((3, 4))
    gallery[:, :4] = similarity.T  # probe_i . gallery_j = similarity[i, j]
    found = identification_1n(probes, [20, 10, 30, 20], gallery, [10, 20, 30], ranks=(1, 2), fpirs=(0.25, 0.5))
    assert found["rank"] == {1: 0.25, 2: 1.0}
    # non-mates pooled: .1 .3 | .6 .2 | .7 .1 | .2 .35 -> descending .7 .6 .35 .3 ...
    # FPIR .25: ceil(4 * .25) = 1st largest = .7: mates above .7: .9 -> 1/4; FPIR .5: 2nd = .6: .9 -> 1/4
    assert found["tpir"] == {0.25: 0.25, 0.5: 0.25}
    found = identification_1n(probes, [20, 10, 30, 20], gallery, [10, 20, 30], fpirs=(1.0,))
    assert found["tpir"] == {1.0: 0.75}  # 4th largest = .3: .9, .5, .4 exceed it, .3 does not


def test_1n_needs_exactly_one_gallery_template_per_probe_subject():
    with pytest.raises(ValueError, match="occurs 2 times"):
        mate_indices([1, 2], [1, 2, 2])
    with pytest.raises(ValueError, match="occurs 0 times"):
        mate_indices([3], [1, 2])
    np.testing.assert_array_equal(mate_indices([30, 10], [10, 20, 30]), [2, 0])


# ----------------------------------------------------------------------------------------------
# reader on the synthetic layout
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ijb_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ijb")
    write_ijb(root, subjects=4, targets=("IJBB", "IJBC"), seed=2)
    return root


def test_reader_matches_the_files(ijb_root):
    for target in ("IJBB", "IJBC"):
        ijb = load_ijb(ijb_root, target, one_to_n=True)
        lines = meta_paths(ijb_root, target)["face_tid_mid"].read_text().split("\n")
        assert len(ijb) == len([line for line in lines if line])
        first = lines[0].split()
        assert ijb.names[0] == first[0] and ijb.templates[0] == int(first[1]) and ijb.medias[0] == int(first[2])
        assert ijb.landmarks.shape == (len(ijb), 5, 2) and ijb.faceness.min() >= 0.3
        assert set(np.unique(ijb.pair_labels)) == {0, 1}
        assert np.isin(ijb.pair_t1, ijb.templates).all() and np.isin(ijb.pair_t2, ijb.templates).all()
        # every gallery subject once, every probe subject in the gallery
        assert len(set(ijb.gallery_subjects)) == ijb.gallery_subjects.size
        assert np.isin(ijb.probe_subjects, ijb.gallery_subjects).all()


def test_loose_crops_align_back_to_the_face(ijb_root):
    ijb = load_ijb(ijb_root, "IJBC")
    image = IJBImages(ijb, 112, "bgr")[0]["image"].numpy()
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8
    # the writer pasted a 112 px face under a random similarity transform; aligning on the written
    # landmarks undoes it: the crop is close to one source face, far closer than the loose crop's centre
    faces = ijb_faces("IJBC", 4, seed=2).reshape(-1, 112, 112, 3).astype(float)
    centre = cv2.imread(str(ijb.folder / "loose_crop" / ijb.names[0])).astype(float)[24:136, 24:136]
    aligned_error = np.abs(faces - image).mean(axis=(1, 2, 3)).min()
    centre_error = np.abs(faces - centre).mean(axis=(1, 2, 3)).min()
    assert aligned_error < 6.0 and centre_error > 2 * aligned_error


@pytest.fixture
def broken(ijb_root, tmp_path) -> Path:
    shutil.copytree(ijb_root / "IJBC", tmp_path / "IJBC")
    return tmp_path


def _edit_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().split("\n")
    lines[number - 1] = text
    path.write_text("\n".join(lines))


def test_missing_meta_file(broken):
    meta_paths(broken, "IJBC")["template_pair_label"].unlink()
    with pytest.raises(DataError, match="ijbc_template_pair_label.txt does not exist"):
        load_ijb(broken, "IJBC")


def test_wrong_field_counts_name_file_and_line(broken):
    paths = meta_paths(broken, "IJBC")
    _edit_line(paths["face_tid_mid"], 3, "3.jpg 1")
    with pytest.raises(DataError, match=r"ijbc_face_tid_mid.txt:3: expected 3 fields"):
        load_ijb(broken, "IJBC")


def test_landmark_line_with_wrong_field_count(broken):
    paths = meta_paths(broken, "IJBC")
    _edit_line(paths["name_5pts_score"], 2, "2.jpg 1 2 3")
    with pytest.raises(DataError, match=r"ijbc_name_5pts_score.txt:2: expected 12 fields"):
        load_ijb(broken, "IJBC")


def test_pair_line_with_wrong_field_count(broken):
    _edit_line(meta_paths(broken, "IJBC")["template_pair_label"], 4, "1 2 1 7")
    with pytest.raises(DataError, match=r"ijbc_template_pair_label.txt:4: expected 3 fields"):
        load_ijb(broken, "IJBC")


def test_image_named_in_meta_but_absent(broken):
    (broken / "IJBC" / "loose_crop" / "5.jpg").unlink()
    with pytest.raises(DataError, match=r"ijbc_face_tid_mid.txt:5: image 5.jpg is not in"):
        load_ijb(broken, "IJBC")


def test_pair_naming_unknown_template(broken):
    _edit_line(meta_paths(broken, "IJBC")["template_pair_label"], 2, "1 999 0")
    with pytest.raises(DataError, match=r"ijbc_template_pair_label.txt:2: template id 999"):
        load_ijb(broken, "IJBC")


def test_files_out_of_order_are_refused(broken):
    path = meta_paths(broken, "IJBC")["name_5pts_score"]
    lines = path.read_text().split("\n")
    lines[0], lines[1] = lines[1], lines[0]
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"ijbc_name_5pts_score.txt:1: names image 2.jpg"):
        load_ijb(broken, "IJBC")


def test_one_to_n_csv_with_unknown_template(broken):
    path = meta_paths(broken, "IJBC")["probe"]
    _edit_line(path, 2, "999,1,img/999.jpg")
    load_ijb(broken, "IJBC")  # 1:N files are only read when asked for
    with pytest.raises(DataError, match=r"ijbc_1N_probe_mixed.csv:2: template id 999"):
        load_ijb(broken, "IJBC", one_to_n=True)


def test_streamed_pooling_in_small_chunks_equals_one_pass(ijb_root, monkeypatch):
    import engine.evaluate as runner
    from utility.config import get_defaults

    ijb = load_ijb(ijb_root, "IJBB")
    raw = np.random.default_rng(0).normal(size=(len(ijb), 8)).astype(np.float32)
    expected = template_features(image_features(raw[:, :4], raw[:, 4:], ijb.faceness), ijb.templates, ijb.medias)
    monkeypatch.setattr(runner, "_TEMPLATE_CHUNK", 5)  # a few templates per chunk, never a template split
    ids, feats = runner._ijb_templates(get_defaults(), ijb, raw)
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_allclose(feats, expected[1], rtol=1e-6, atol=1e-7)


def test_pair_scores_equal_row_dot_products_on_random_pairs():
    rng = np.random.default_rng(1)
    ids = np.sort(rng.choice(10_000, 300, replace=False))
    feats = normalize_rows(rng.normal(size=(300, 8)))
    other = normalize_rows(rng.normal(size=(300, 8)))
    t1, t2 = rng.choice(ids, 5000), rng.choice(ids, 5000)
    rows1, rows2 = np.searchsorted(ids, t1), np.searchsorted(ids, t2)
    np.testing.assert_allclose(pair_scores(ids, feats, t1, t2), np.sum(feats[rows1] * feats[rows2], 1), atol=1e-12)
    np.testing.assert_allclose(cross_pair_scores(ids, feats, other, t1, t2),
                               np.sum(feats[rows1] * other[rows2], 1), atol=1e-12)


def normalize_rows(values: np.ndarray) -> np.ndarray:
    return values / np.linalg.norm(values, axis=1, keepdims=True)
