"""Synthetic faces written in the real formats and read back through the real readers and datasets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from data.lists import read_image_list, scan_class_folders
from data.loader import SampleIndex, build_dataset
from data.pairs import load_bin, load_pair_folder
from data.recordio import RecordIO, RecordIOWriter, encode_image
from data.requests import BatchRequest
from data.synthetic import face_pairs, face_training_images, main, write_faces
from utility.config import get_defaults
from utility.errors import ConfigError, DataError

IDS, PER_ID, PAIRS = 5, 4, 20


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faces")
    write_faces(out, IDS, PER_ID, PAIRS, seed=3, sets=("lfw", "cfp_fp"), extracted=True)
    return out


def _cfg(train: Path, **data):
    cfg = get_defaults()
    cfg.DATA.TRAIN = str(train)
    cfg.DATA.WORKERS = 0
    for key, value in data.items():
        node = cfg.DATA
        parts = key.split("__")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return cfg


def test_rec_layout_is_insightface(faces: Path) -> None:
    reader = RecordIO(faces / "train.rec")
    images = IDS * PER_ID
    assert len(reader) == images + 1 + IDS
    assert reader.keys[: images + 1] == list(range(1, images + 1)) + [0]  # images first, then record 0
    header0, _ = reader.read(0)
    assert header0.flag == 2 and header0.label.tolist() == [images + 1, images + 1 + IDS]
    for label in range(IDS):
        start, end = reader.read(images + 1 + label)[0].label.tolist()
        assert (start, end) == (1 + label * PER_ID, 1 + (label + 1) * PER_ID)
        header, payload = reader.read(int(start))
        assert header.flag == 0 and header.label == float(label) and header.id == int(start)
        assert payload[:2] == b"\xff\xd8"
    assert (faces / "property").read_text() == f"{IDS},112,112"


def test_face_recordio_dataset(faces: Path) -> None:
    dataset = build_dataset(_cfg(faces / "train.rec"))
    assert type(dataset).__name__ == "FaceRecordIO"
    assert len(dataset) == IDS * PER_ID and dataset.num_classes == IDS
    assert dataset.labels.tolist() == [n // PER_ID for n in range(IDS * PER_ID)]
    item = dataset[6]
    assert item["label"] == 1 and item["index"] == 6
    assert item["image"].shape == (112, 112, 3) and item["image"].dtype == np.uint8
    rgb = build_dataset(_cfg(faces, COLOR="rgb"))[6]["image"]  # the folder holding train.rec also works
    assert np.array_equal(rgb, item["image"][:, :, ::-1])


def test_extracted_forms_agree_with_the_records(faces: Path) -> None:
    paths, labels = read_image_list(faces / "train.list")
    assert len(paths) == IDS * PER_ID and labels.tolist() == [n // PER_ID for n in range(IDS * PER_ID)]
    first_line = (faces / "train.list").read_text().splitlines()[0]
    assert first_line.endswith("  0") and first_line.split("  ")[0].endswith("image/000000/00000001.jpg")
    listed = build_dataset(_cfg(faces / "train.list"))
    folder = build_dataset(_cfg(faces))
    records = build_dataset(_cfg(faces / "train.rec"))
    # a directory holding train.rec is read as RecordIO first; the folder reader needs FORMAT set
    assert type(folder).__name__ == "FaceRecordIO"
    cfg = _cfg(faces)
    cfg.DATA.FORMAT = "face_folder"
    folder = build_dataset(cfg)
    assert folder.labels.tolist() == listed.labels.tolist() == records.labels.tolist()
    # the extracted JPEGs are re-encodings of the decoded records (q95): close, not identical
    difference = np.abs(listed[9]["image"].astype(int) - records[9]["image"].astype(int)).mean()
    assert difference < 3.0
    assert np.array_equal(listed[9]["image"], folder[9]["image"])


def test_bins_and_pair_folders(faces: Path) -> None:
    for name in ("lfw", "cfp_fp"):
        images, issame = load_bin(faces / f"{name}.bin")
        assert images.shape == (2 * PAIRS, 112, 112, 3) and issame.shape == (PAIRS,)
        assert issame.sum() == PAIRS // 2
        for block in np.array_split(issame, 10):  # every fold holds same and different pairs
            assert block.sum() == 1
        folder_images, folder_issame = load_pair_folder(faces / "evaluation" / name)
        assert np.array_equal(folder_issame, issame)
        assert np.abs(folder_images.astype(int) - images.astype(int)).mean() < 3.0
    assert not (faces / "agedb_30.bin").exists()


def test_same_pairs_are_closer_than_different_pairs() -> None:
    images, issame = face_pairs(40, seed=0, name="lfw")
    flat = images.reshape(40, 2, -1).astype(np.float64)
    flat -= flat.mean(axis=2, keepdims=True)
    flat /= np.linalg.norm(flat, axis=2, keepdims=True)
    cosine = (flat[:, 0] * flat[:, 1]).sum(axis=1)
    assert cosine[issame].mean() > cosine[~issame].mean()


def test_generation_is_deterministic_and_seeded(tmp_path: Path) -> None:
    def digest(folder: Path) -> list[str]:
        return [hashlib.md5((folder / n).read_bytes()).hexdigest() for n in ("train.rec", "train.idx", "lfw.bin")]

    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write_faces(tmp_path / name, 3, 2, 10, seed=seed, sets=("lfw",))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")[0] != digest(tmp_path / "c")[0]
    images, labels = face_training_images(3, 2, seed=1)
    assert images.shape == (6, 112, 112, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert not np.array_equal(images[0], images[1])  # two views of one identity differ


def test_evaluation_identities_are_not_training_identities() -> None:
    train, _ = face_training_images(4, 1, seed=0)
    pairs, _ = face_pairs(10, seed=0, name="lfw")
    for image in pairs:
        assert min(np.abs(image.astype(int) - t.astype(int)).mean() for t in train) > 5.0


def test_cli(tmp_path: Path) -> None:
    assert main(["faces", "--out", str(tmp_path / "cli"), "--identities", "2", "--images-per-identity", "2",
                 "--pairs", "10", "--seed", "4", "--sets", "agedb_30"]) == 0
    assert {p.name for p in (tmp_path / "cli").iterdir()} == {"train.rec", "train.idx", "property", "agedb_30.bin"}
    try:
        import data.synthetic_classification  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("data.synthetic_classification is not present")
    assert main(["cifar", "--out", str(tmp_path / "cifar"), "--classes", "2", "--train-per-class", "2",
                 "--test-per-class", "1"]) == 0
    assert any((tmp_path / "cifar").rglob("meta"))


def test_partner_table_and_opencv_views(faces: Path, tmp_path: Path) -> None:
    table = np.array([(n + 1) % (IDS * PER_ID) for n in range(IDS * PER_ID)], dtype=np.int64)
    np.save(tmp_path / "partners.npy", table)
    cfg = _cfg(faces / "train.rec", PARTNER="table", PARTNER_TABLE=str(tmp_path / "partners.npy"),
               LOWRES__SIZES=[14], LOWRES__BACKEND="opencv", LOWRES__DOWN="nearest", LOWRES__UP="nearest")
    dataset = build_dataset(cfg, request=BatchRequest(partner="table"))
    item = dataset[SampleIndex(3, epoch=2)]
    assert item["partner_index"] == 4
    assert np.array_equal(item["partner"], dataset[4]["image"])
    expected = np.repeat(np.repeat(item["image"][::8, ::8], 8, axis=0), 8, axis=1)  # nearest 112 -> 14 -> 112
    assert np.array_equal(item["image_lr"], expected) and item["lowres_size"] == 14
    assert item["partner_lr"].shape == (112, 112, 3)

    np.save(tmp_path / "short.npy", table[:-1])
    cfg.DATA.PARTNER_TABLE = str(tmp_path / "short.npy")
    with pytest.raises(DataError, match="one entry per sample"):
        build_dataset(cfg, request=BatchRequest(partner="table"))
    cfg.DATA.PARTNER_TABLE = ""
    with pytest.raises(ConfigError, match="PARTNER_TABLE"):
        build_dataset(cfg, request=BatchRequest(partner="table"))


def test_plain_im2rec_file_without_header(tmp_path: Path) -> None:
    image = encode_image(np.full((112, 112, 3), 90, dtype=np.uint8))
    with RecordIOWriter(tmp_path / "plain.rec") as writer:
        for key, label in enumerate([2, 0, 5]):
            writer.write(key, [float(label), 1.0] if key == 1 else float(label), image)  # array labels too
    dataset = build_dataset(_cfg(tmp_path / "plain.rec"))
    assert dataset.labels.tolist() == [2, 0, 5] and dataset.num_classes == 6
    assert dataset[1]["label"] == 0


def test_class_folder_scan_and_list_errors(tmp_path: Path) -> None:
    for name in ("b", "a"):
        (tmp_path / "image" / name).mkdir(parents=True)
        (tmp_path / "image" / name / "x.jpg").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8)))
    paths, labels, classes = scan_class_folders(tmp_path / "image")
    assert classes == ["a", "b"] and labels.tolist() == [0, 1] and paths[0].parent.name == "a"
    (tmp_path / "bad.list").write_text("relative/x.jpg  3\nbroken-line\n")
    with pytest.raises(DataError, match="bad.list:2"):
        read_image_list(tmp_path / "bad.list")
    (tmp_path / "ok.list").write_text("relative/x.jpg\t3\n/abs/y.jpg   1\n")
    paths, labels = read_image_list(tmp_path / "ok.list")
    assert paths == [tmp_path / "relative" / "x.jpg", Path("/abs/y.jpg")] and labels.tolist() == [3, 1]
