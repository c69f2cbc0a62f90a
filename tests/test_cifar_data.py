"""CIFAR-100 pickles: reader against hand-built files, restricted unpickling, CRD contrast indices,
and the synthetic writer read back through the real reader."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from data import DATASETS
from data.cifar import CIFAR100, ContrastSampler
from data.loader import SampleIndex
from data.requests import BatchRequest
from data.synthetic_classification import write_cifar100
from utility.config import get_defaults
from utility.errors import DataError


def _cfg(train: str | Path, color: str = "rgb", val: str = ""):
    cfg = get_defaults()
    cfg.DATA.TRAIN = str(train)
    cfg.DATA.VAL = val
    cfg.DATA.COLOR = color
    return cfg


def _negatives(k: int) -> BatchRequest:
    return BatchRequest(contrast_negatives=k)


def _hand_built(folder: Path, labels: list[int], class_names: list[str], seed: int = 0) -> np.ndarray:
    """Write train/test/meta with Python 3's own pickler; return the train rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    train = {"data": rows, "fine_labels": labels, "coarse_labels": [0] * len(labels),
             "filenames": [f"f{i}.png" for i in range(len(labels))], "batch_label": "training batch 1 of 1"}
    test = dict(train, data=rows[::-1].copy(), fine_labels=labels[::-1], batch_label="testing batch 1 of 1")
    (folder / "train").write_bytes(pickle.dumps(train, protocol=2))
    (folder / "test").write_bytes(pickle.dumps(test))  # the default protocol must read too
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": class_names, "coarse_label_names": ["all"]}, 2))
    return rows


def test_planar_rows_become_hwc_images_with_labels_and_names(tmp_path):
    labels = [2, 0, 1, 2]
    rows = _hand_built(tmp_path / "cifar-100-python", labels, ["apple", "bus", "cat"])
    dataset = DATASETS.build("cifar100", cfg=_cfg(tmp_path), split="train")  # finds the child folder
    assert len(dataset) == 4 and dataset.num_classes == 3
    assert dataset.class_names == ["apple", "bus", "cat"]
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == labels
    # row layout: 1024 red values, then green, then blue; each plane row-major 32 x 32
    for n, y, x in [(0, 0, 0), (1, 0, 31), (2, 31, 0), (3, 17, 5), (1, 9, 30)]:
        image = dataset[n]["image"]
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert [int(image[y, x, c]) for c in range(3)] == [int(rows[n, c * 1024 + y * 32 + x]) for c in range(3)]
    item = dataset[3]
    assert item["label"] == 2 and item["index"] == 3 and "contrast_index" not in item
    assert isinstance(dataset.images, torch.Tensor) and dataset.images.dtype == torch.uint8
    assert dataset.images.shape == (4, 32, 32, 3)
    assert np.array_equal(dataset.images[3].numpy(), item["image"])


def test_bgr_order_and_val_split_reads_test(tmp_path):
    rows = _hand_built(tmp_path, [0, 1, 1], ["a", "b"])
    bgr = CIFAR100(_cfg(tmp_path, color="bgr"), split="train")
    assert [int(v) for v in bgr[1]["image"][4, 7]] == [int(rows[1, c * 1024 + 4 * 32 + 7]) for c in (2, 1, 0)]
    val = CIFAR100(_cfg(tmp_path), split="val")
    assert val.labels.tolist() == [1, 1, 0]  # the test pickle holds the rows reversed
    assert int(val[0]["image"][0, 0, 0]) == int(rows[2, 0])


def test_data_val_may_name_another_folder(tmp_path):
    _hand_built(tmp_path / "a", [0, 1], ["x", "y"], seed=1)
    other = _hand_built(tmp_path / "b", [1, 0, 1], ["x", "y"], seed=2)
    val = CIFAR100(_cfg(tmp_path / "a", val=str(tmp_path / "b")), split="val")
    assert len(val) == 3 and int(val[0]["image"][0, 0, 0]) == int(other[2, 0])


def _python2_pickle(rows: np.ndarray, labels: list[int]) -> bytes:
    """What Python 2's cPickle wrote: str keys and an ndarray whose buffer is a Python 2 str."""

    def text(value: bytes) -> bytes:
        return b"U" + bytes([len(value)]) + value if len(value) < 256 else b"T" + struct.pack("<I", len(value)) + value

    array = (
        b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03"
        b"(K\x01K" + bytes([rows.shape[0]]) + b"M\x00\x0c\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
        b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + text(rows.tobytes()) + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}q\x00(" + text(b"data") + array + text(b"fine_labels") + label_list + b"u."


def test_reads_python2_cpickle_layout(tmp_path):
    rows = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072).astype(np.uint8)
    (tmp_path / "train").write_bytes(_python2_pickle(rows, [1, 0]))
    meta = b"\x80\x02}(U\x10fine_label_names](U\x03oneU\x03twoeu."
    (tmp_path / "meta").write_bytes(meta)
    dataset = CIFAR100(_cfg(tmp_path), split="train")
    assert dataset.class_names == ["one", "two"] and dataset.labels.tolist() == [1, 0]
    assert int(dataset[1]["image"][0, 1, 2]) == (3072 + 2 * 1024 + 1) % 256


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_restricted_unpickler_refuses_foreign_globals_without_running_them(tmp_path):
    marker = tmp_path / "was_run"
    _hand_built(tmp_path / "cifar", [0, 1], ["a", "b"])
    evil = {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1], "payload": _Planted(marker)}
    (tmp_path / "cifar" / "train").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match=r"cifar/train.*pathlib.*touch|cifar/train.*not allowed"):
        CIFAR100(_cfg(tmp_path / "cifar"), split="train")
    assert not marker.exists()
    # `_codecs.encode` is admitted only for latin-1, as Python 3 writes bytes in protocol 2
    rot13 = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    (tmp_path / "cifar" / "train").write_bytes(rot13)
    with pytest.raises(DataError, match="rot13"):
        CIFAR100(_cfg(tmp_path / "cifar"), split="train")


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nothing")):
        CIFAR100(_cfg(tmp_path / "nothing"), split="train")
    _hand_built(tmp_path / "c", [0, 1], ["a", "b"])
    (tmp_path / "c" / "train").write_bytes((tmp_path / "c" / "train").read_bytes()[:500])
    with pytest.raises(DataError, match=r"c/train"):
        CIFAR100(_cfg(tmp_path / "c"), split="train")
    (tmp_path / "c" / "train").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "fine_labels": [0, 1]}))
    with pytest.raises(DataError, match=r"c/train.*3072"):
        CIFAR100(_cfg(tmp_path / "c"), split="train")
    (tmp_path / "c" / "meta").unlink()
    (tmp_path / "c" / "train").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]}))
    with pytest.raises(DataError, match=r"c/meta"):
        CIFAR100(_cfg(tmp_path / "c"), split="train")


def test_contrast_index_is_self_then_other_class_negatives(tmp_path):
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    _hand_built(tmp_path, labels, ["a", "b", "c"])
    dataset = CIFAR100(_cfg(tmp_path), split="train", request=_negatives(5))
    again = CIFAR100(_cfg(tmp_path), split="train", request=_negatives(5))
    for index in range(len(labels)):
        contrast = dataset[index]["contrast_index"]
        assert contrast.dtype == np.int64 and contrast.shape == (6,)
        assert contrast[0] == index
        assert all(labels[j] != labels[index] for j in contrast[1:])
        assert len(set(contrast[1:].tolist())) == 5  # pool of 8 >= K: no replacement
        assert np.array_equal(contrast, again[index]["contrast_index"])  # reproducible
    epochs = {tuple(dataset[SampleIndex(4, epoch)]["contrast_index"]) for epoch in range(6)}
    assert len(epochs) > 1  # a new epoch draws new negatives
    assert "contrast_index" not in CIFAR100(_cfg(tmp_path), split="val", request=_negatives(5))[0]


def test_contrast_draws_with_replacement_only_when_k_exceeds_the_pool(tmp_path):
    _hand_built(tmp_path, [0, 0, 1, 1, 2], ["a", "b", "c"])
    dataset = CIFAR100(_cfg(tmp_path), split="train", request=_negatives(9))
    contrast = dataset[4]["contrast_index"]
    assert contrast[0] == 4 and set(contrast[1:].tolist()) <= {0, 1, 2, 3} and len(contrast) == 10


def test_batched_contrast_indices(tmp_path):
    labels = [3, 1, 0, 2, 1, 3, 0, 2, 2, 1]
    _hand_built(tmp_path, labels, list("abcd"))
    dataset = CIFAR100(_cfg(tmp_path), split="train", request=_negatives(4))
    indices = np.array([7, 0, 4])
    drawn = dataset.batch_extras(indices, np.random.default_rng(11))["contrast_index"].numpy()
    assert drawn.shape == (3, 5) and drawn.dtype == np.int64
    assert drawn[:, 0].tolist() == [7, 0, 4]
    for row, index in zip(drawn, indices):
        assert all(labels[j] != labels[index] for j in row[1:]) and len(set(row[1:].tolist())) == 4
    again = dataset.batch_extras(indices, np.random.default_rng(11))["contrast_index"].numpy()
    assert np.array_equal(drawn, again)
    assert CIFAR100(_cfg(tmp_path), split="train").batch_extras(indices, np.random.default_rng(11)) == {}


def test_negatives_are_uniform_over_the_other_classes():
    labels = np.array([1, 0, 2, 1, 1, 0, 2, 2, 1, 0])  # class 1's block sits between 0 and 2 in sorted order
    sampler = ContrastSampler(labels, 3)
    rng = np.random.default_rng(0)
    counts = np.zeros(10)
    draws = 6000
    for _ in range(draws):
        counts[sampler.draw(3, 1, rng)[1]] += 1
    others = np.flatnonzero(labels != 1)
    assert counts[labels == 1].sum() == 0
    expected = draws / len(others)
    assert np.all(np.abs(counts[others] - expected) < 0.1 * expected)


def test_dct_first_n_pool_uses_only_the_first_num_classes_samples():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    sampler = ContrastSampler(labels, 3, pool="dct_first_n")
    drawn = sampler.draw_batch(np.arange(9), 20, np.random.default_rng(0))
    for index, row in enumerate(drawn):
        assert set(row[1:].tolist()) == {0, 1, 2} - {labels[index]}


def test_synthetic_writer_round_trip_and_determinism(tmp_path):
    folder = write_cifar100(tmp_path / "a", num_classes=10, train_per_class=12, test_per_class=6, seed=3)
    assert folder == tmp_path / "a" / "cifar-100-python"
    with (folder / "train").open("rb") as handle:
        raw = pickle.load(handle, encoding="latin1")  # readable by the ordinary loader as well
    assert {"data", "fine_labels", "coarse_labels", "filenames", "batch_label"} <= set(raw)
    assert raw["data"].dtype == np.uint8 and raw["data"].shape == (120, 3072)
    assert all(type(v) is int for v in raw["fine_labels"]) and len(raw["filenames"]) == 120
    with (folder / "meta").open("rb") as handle:
        meta = pickle.load(handle, encoding="latin1")
    assert len(meta["fine_label_names"]) == 10 and "coarse_label_names" in meta

    cfg = _cfg(tmp_path / "a")
    train, val = CIFAR100(cfg, split="train"), CIFAR100(cfg, split="val")
    assert len(train) == 120 and len(val) == 60 and train.num_classes == 10
    assert np.bincount(train.labels).tolist() == [12] * 10 and np.bincount(val.labels).tolist() == [6] * 10
    assert train.class_names == meta["fine_label_names"]
    image = train[5]["image"]
    assert int(image[10, 20, 1]) == int(raw["data"][5, 1024 + 10 * 32 + 20])

    # classes are separable: nearest class mean on raw pixels beats chance (10 %) by far
    flat = train.images.reshape(len(train), -1).float()
    means = torch.stack([flat[torch.from_numpy(train.labels == c)].mean(0) for c in range(10)])
    guesses = torch.cdist(val.images.reshape(len(val), -1).float(), means).argmin(1).numpy()
    assert (guesses == val.labels).mean() > 0.5

    def digest(root: Path) -> list[str]:
        return [hashlib.sha256((root / name).read_bytes()).hexdigest() for name in ("train", "test", "meta")]

    assert digest(folder) == digest(write_cifar100(tmp_path / "b", 10, 12, 6, seed=3))
    assert digest(folder)[0] != digest(write_cifar100(tmp_path / "c", 10, 12, 6, seed=4))[0]
