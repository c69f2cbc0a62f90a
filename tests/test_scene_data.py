"""Scene list files (DCT formats): parsing, class files, resize/crop geometry, errors, CRD indices,
and the synthetic scene writer read back through the real reader."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import DATASETS
from data.loader import SampleIndex
from data.requests import BatchRequest
from data.scene import SceneList, center_crop, center_crop_offsets, parse_list, resized_shape
from data.synthetic_classification import write_scene
from utility.config import get_defaults
from utility.errors import ConfigError, DataError


def _cfg(train: Path, val: Path | str = "", **data):
    cfg = get_defaults()
    cfg.DATA.TRAIN = str(train)
    cfg.DATA.VAL = str(val)
    cfg.DATA.COLOR = "bgr"
    for key, value in data.items():
        cfg.DATA[key] = value
    return cfg


def _image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _mit_folder(root: Path) -> dict[str, np.ndarray]:
    """A hand-written MIT67-style folder with lossless PNG images; returns them by relative path."""
    (root / "scene_names.txt").write_text("kitchen 0\nbeach 1\nforest 2\n")
    images = {
        "train/beach/b1.png": _image(40, 60, 1),
        "train/kitchen/k1.png": _image(50, 30, 2),
        "train/forest/f1.png": _image(20, 20, 3),
        "train/beach/b2.png": _image(40, 60, 4),
        "val/forest/f9.png": _image(45, 45, 5),
    }
    for relative, image in images.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / relative), image)
    (root / "train.txt").write_text("train/beach/b1.png\ntrain/kitchen/k1.png\n\ntrain/forest/f1.png\ntrain/beach/b2.png\n")
    (root / "val.txt").write_text("val/forest/f9.png\n")
    return images


def test_geometry_matches_torchvision_rules_by_hand():
    # Resize(256): shorter side 256, longer int(256 * long / short)
    assert resized_shape(480, 640, 256) == (256, 341)  # 256 * 640 / 480 = 341.33
    assert resized_shape(640, 480, 256) == (341, 256)
    assert resized_shape(300, 300, 256) == (256, 256)
    assert resized_shape(375, 500, 256) == (256, 341)  # 341.33
    # CenterCrop(224): top/left = round((side - 224) / 2), Python's round (half to even)
    assert center_crop_offsets(256, 341, 224) == (16, 58)  # 58.5 -> 58
    assert center_crop_offsets(257, 343, 224) == (16, 60)  # 16.5 -> 16, 59.5 -> 60
    image = np.arange(7 * 9 * 3, dtype=np.int64).reshape(7, 9, 3).astype(np.uint8)
    crop = center_crop(image, 4)  # top round(1.5) = 2, left round(2.5) = 2
    assert np.array_equal(crop, image[2:6, 2:6])
    small = np.full((3, 5, 3), 9, np.uint8)
    padded = center_crop(small, 4)  # pad one zero row at the bottom, then left round(0.5) = 0
    assert padded.shape == (4, 4, 3)
    assert np.all(padded[:3] == 9) and np.all(padded[3] == 0)


def test_mit67_list_labels_paths_and_class_file(tmp_path):
    _mit_folder(tmp_path)
    entries = parse_list(tmp_path / "train.txt")
    assert [e.image_path for e in entries][:2] == [tmp_path / "train/beach/b1.png", tmp_path / "train/kitchen/k1.png"]
    assert [e.line_number for e in entries] == [1, 2, 4, 5]  # the blank line is skipped, numbering kept
    dataset = DATASETS.build("scene_list", cfg=_cfg(tmp_path / "train.txt", tmp_path / "val.txt"), split="train")
    assert dataset.class_names == ["kitchen", "beach", "forest"] and dataset.num_classes == 3
    assert dataset.labels.tolist() == [1, 0, 2, 1] and dataset.labels.dtype == np.int64
    val = SceneList(_cfg(tmp_path / "train.txt", tmp_path / "val.txt"), split="val")
    assert val.labels.tolist() == [2] and len(val) == 1


def test_dct_jpg_lines_and_ade20k_lines(tmp_path):
    (tmp_path / "a.txt").write_text("train/bakery-shop/sun_abc.jpg\n")
    (entry,) = parse_list(tmp_path / "a.txt")
    assert entry.image_path == tmp_path / "train" / "bakery-shop" / "sun_abc.jpg" and entry.class_name == "bakery-shop"
    (tmp_path / "scene_names.txt").write_text("airport_terminal\nzoo\n")
    (tmp_path / "train").mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "train" / "ADE_train_00000001.jpg"), _image(30, 40, 0))
    (tmp_path / "train.txt").write_text("ADE_train_00000001 zoo\n")
    (entry,) = parse_list(tmp_path / "train.txt")
    assert entry.image_path == tmp_path / "train" / "ADE_train_00000001.jpg"  # <folder>/<list stem>/<name>.jpg
    dataset = SceneList(_cfg(tmp_path / "train.txt", IMAGE_SIZE=16, RESIZE=20), split="train")
    assert dataset.labels.tolist() == [1] and dataset[0]["image"].shape == (16, 16, 3)


def test_eval_centre_crop_and_ten_crop_square(tmp_path):
    images = _mit_folder(tmp_path)
    cfg = _cfg(tmp_path / "train.txt", tmp_path / "train.txt", IMAGE_SIZE=16, RESIZE=20)
    val = SceneList(cfg, split="val")
    resized = cv2.resize(images["train/beach/b1.png"], (30, 20), interpolation=cv2.INTER_AREA)  # 40x60 -> 20x30
    assert np.array_equal(val[0]["image"], resized[2:18, 7:23])  # round(2), round(7)
    tall = cv2.resize(images["train/kitchen/k1.png"], (20, 33), interpolation=cv2.INTER_AREA)  # 50x30 -> 33x20
    assert np.array_equal(val[1]["image"], tall[8:24, 2:18])  # round(8.5) = 8
    enlarged = cv2.resize(images["train/forest/f1.png"], (20, 20), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(val[2]["image"], enlarged[2:18, 2:18])
    rgb = SceneList(_cfg(tmp_path / "train.txt", tmp_path / "train.txt", IMAGE_SIZE=16, RESIZE=20, COLOR="rgb"), "val")
    assert np.array_equal(rgb[0]["image"], resized[2:18, 7:23, ::-1])
    ten = SceneList(_cfg(tmp_path / "train.txt", tmp_path / "train.txt", IMAGE_SIZE=16, RESIZE=20, TEN_CROP=True), "val")
    assert np.array_equal(ten[0]["image"], resized[:, 5:25])  # RESIZE x RESIZE centre square
    with pytest.raises(ConfigError, match="TEN_CROP"):
        SceneList(_cfg(tmp_path / "train.txt", tmp_path / "train.txt", IMAGE_SIZE=24, RESIZE=20, TEN_CROP=True), "val")


def test_random_crop_is_a_window_of_the_resized_image_and_reproducible(tmp_path):
    images = _mit_folder(tmp_path)
    cfg = _cfg(tmp_path / "train.txt", IMAGE_SIZE=16, RESIZE=20, RANDOM_CROP=True)
    dataset, again = SceneList(cfg, "train"), SceneList(cfg, "train")
    resized = cv2.resize(images["train/beach/b1.png"], (30, 20), interpolation=cv2.INTER_AREA)
    offsets = set()
    for epoch in range(8):
        crop = dataset[SampleIndex(0, epoch)]["image"]
        assert np.array_equal(crop, again[SampleIndex(0, epoch)]["image"])
        found = [(t, l) for t in range(5) for l in range(15) if np.array_equal(resized[t : t + 16, l : l + 16], crop)]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 1  # epochs draw different crops
    centre = SceneList(_cfg(tmp_path / "train.txt", IMAGE_SIZE=16, RESIZE=20), "train")[0]["image"]
    assert np.array_equal(centre, resized[2:18, 7:23])  # RANDOM_CROP off: centre crop in training too


def test_errors_name_list_file_line_and_path(tmp_path):
    _mit_folder(tmp_path)
    (tmp_path / "train.txt").write_text("train/beach/b1.png\ntrain/beach/missing.png\n")
    dataset = SceneList(_cfg(tmp_path / "train.txt", IMAGE_SIZE=16, RESIZE=20), "train")
    with pytest.raises(DataError, match=r"train\.txt:2: image not found: .*train/beach/missing\.png"):
        dataset[1]
    (tmp_path / "train.txt").write_text("train/beach/b1.png\ntrain/volcano/v.png\n")
    with pytest.raises(DataError, match=r"train\.txt:2: class 'volcano' is not in .*scene_names\.txt"):
        SceneList(_cfg(tmp_path / "train.txt"), "train")
    (tmp_path / "train.txt").write_text("one two three\n")
    with pytest.raises(DataError, match=r"train\.txt:1: cannot parse"):
        SceneList(_cfg(tmp_path / "train.txt"), "train")
    with pytest.raises(DataError, match="nope.txt"):
        SceneList(_cfg(tmp_path / "nope.txt"), "train")
    with pytest.raises(ConfigError, match="DATA.VAL"):
        SceneList(_cfg(tmp_path / "train.txt"), "val")


def test_classes_from_the_lists_without_a_class_file(tmp_path):
    _mit_folder(tmp_path)
    (tmp_path / "scene_names.txt").unlink()
    (tmp_path / "val.txt").write_text("val/zoo/z.png\n")
    dataset = SceneList(_cfg(tmp_path / "train.txt", tmp_path / "val.txt"), "train")
    assert dataset.class_names == ["beach", "forest", "kitchen", "zoo"]  # sorted union of both lists
    assert dataset.labels.tolist() == [0, 2, 1, 0]


def test_shared_train_val_names_are_reported(tmp_path, caplog):
    _mit_folder(tmp_path)
    (tmp_path / "val.txt").write_text("val/beach/b1.png\nval/forest/f9.png\n")
    with caplog.at_level(logging.WARNING, logger="data.scene"):
        SceneList(_cfg(tmp_path / "train.txt", tmp_path / "val.txt"), "val")
    assert "1 of 2 evaluation images" in caplog.text


def test_crd_contrast_indices_on_scene_lists(tmp_path):
    _mit_folder(tmp_path)
    dataset = SceneList(_cfg(tmp_path / "train.txt"), "train", BatchRequest(contrast_negatives=3))
    labels = dataset.labels.tolist()  # [1, 0, 2, 1]
    for index in range(4):
        contrast = dataset[index]["contrast_index"]
        assert contrast[0] == index and len(contrast) == 4
        assert all(labels[j] != labels[index] for j in contrast[1:])
    quirk = SceneList(_cfg(tmp_path / "train.txt"), "train",
                      BatchRequest(contrast_negatives=20, contrast_pool="dct_first_n"))
    # the DCT pools hold only the first num_classes (3) samples: 0 (beach), 1 (kitchen), 2 (forest)
    assert set(quirk[3]["contrast_index"][1:].tolist()) == {1, 2}
    with pytest.raises(ConfigError, match="contrast pool"):
        SceneList(_cfg(tmp_path / "train.txt"), "train", BatchRequest(contrast_negatives=2, contrast_pool="bogus"))


@pytest.mark.parametrize("style", ["mit67", "ade20k"])
def test_synthetic_scene_round_trip_and_determinism(tmp_path, style):
    paths = write_scene(tmp_path / "a", num_classes=3, train_per_class=4, val_per_class=2, seed=1, image_size=24,
                        style=style)
    cfg = _cfg(paths["train"], paths["val"], IMAGE_SIZE=16, RESIZE=20, RANDOM_CROP=True)
    train, val = SceneList(cfg, "train"), SceneList(cfg, "val")
    assert len(train) == 12 and len(val) == 6 and train.num_classes == 3
    assert np.bincount(train.labels).tolist() == [4, 4, 4] and np.bincount(val.labels).tolist() == [2, 2, 2]
    assert train.read_image(0).shape == (24, 32, 3)  # 4:3 images
    assert train[5]["image"].shape == (16, 16, 3) and val[5]["image"].shape == (16, 16, 3)
    first_line = paths["train"].read_text().splitlines()[0]
    assert first_line == ("train/scene_00/scene_00_train_0000.jpg" if style == "mit67" else "SYN_train_00000001 scene_00")

    def digest(root: Path) -> str:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return hashlib.sha256(b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes() for p in files)).hexdigest()

    again = write_scene(tmp_path / "b", 3, 4, 2, seed=1, image_size=24, style=style)
    other = write_scene(tmp_path / "c", 3, 4, 2, seed=2, image_size=24, style=style)
    assert digest(paths["root"]) == digest(again["root"]) != digest(other["root"])
