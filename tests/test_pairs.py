"""Verification pair sets: the py2 `.bin` fixture, the NumPy (L, 1) form, the restricted unpickler,
and the extracted folder + pair list form."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.pairs import (
    load_bin,
    load_pair_folder,
    load_verification_set,
    read_bin_payloads,
    write_bin,
    write_pair_folder,
)
from utility.errors import DataError

_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = next(
    (p for p in (_ROOT / "tests" / "fixtures" / "mxnet", _ROOT.parent / "shared" / "fixtures" / "mxnet") if p.is_dir()),
    _ROOT / "tests" / "fixtures" / "mxnet",
)
needs_fixture = pytest.mark.skipif(not (FIXTURES / "pairs.bin").is_file(), reason="mxnet fixtures not available")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIXTURES / "expected.json").read_text())["bin"]


@needs_fixture
def test_py2_bin_fixture(expected: dict) -> None:
    with pytest.raises(UnicodeDecodeError):  # why encoding="bytes" is needed at all
        pickle.loads((FIXTURES / "pairs.bin").read_bytes())
    payloads, issame = read_bin_payloads(FIXTURES / "pairs.bin")
    assert issame.dtype == bool and issame.tolist() == [False, False, True, False, True, True, True, False]
    assert issame.tolist() == expected["issame"]
    assert [len(p) for p in payloads] == [image["jpeg_length"] for image in expected["images"]]
    assert [md5(p) for p in payloads] == [image["jpeg_md5"] for image in expected["images"]]

    images, flags = load_bin(FIXTURES / "pairs.bin")
    assert images.shape == (16, 112, 112, 3) and images.dtype == np.uint8
    assert np.array_equal(flags, issame)
    rgb, _ = load_bin(FIXTURES / "pairs.bin", color="rgb")
    assert np.array_equal(rgb, images[..., ::-1])
    for image, colour, info in zip(images, rgb, expected["images"]):
        bgr_ok = md5(image.tobytes()) == info["md5_bgr_cv2_imdecode"]
        rgb_ok = md5(np.ascontiguousarray(colour).tobytes()) == info["md5_rgb_mx_image_imdecode"]
        if not (bgr_ok and rgb_ok):  # another libjpeg: +-1 on a few pixels
            reference = cv2.imdecode(np.frombuffer(payloads[info["index"]], np.uint8), cv2.IMREAD_COLOR)
            assert np.abs(reference.astype(int) - image.astype(int)).max() <= 1


@needs_fixture
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_array_items_as_in_real_agedb_cfp_bins(protocol: int, tmp_path: Path) -> None:
    payloads, issame = read_bin_payloads(FIXTURES / "pairs.bin")
    arrays = [np.frombuffer(p, dtype=np.uint8).reshape(-1, 1).copy() for p in payloads]  # cv2.imencode's (L, 1)
    (tmp_path / "agedb.bin").write_bytes(pickle.dumps((arrays, issame.tolist()), protocol=protocol))
    images, flags = load_bin(tmp_path / "agedb.bin")
    reference, _ = load_bin(FIXTURES / "pairs.bin")
    assert np.array_equal(images, reference) and np.array_equal(flags, issame)


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_refused_without_running(protocol: int, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([_Exploit(marker)], []), protocol=protocol))
    with pytest.raises(DataError, match="is not allowed"):
        load_bin(tmp_path / "evil.bin")
    assert not marker.exists()
    # the hand-written opcode form (GLOBAL + REDUCE)
    (tmp_path / "evil2.bin").write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(DataError):
        load_bin(tmp_path / "evil2.bin")
    assert not marker.exists()


def test_codecs_encode_admitted_only_for_latin1(tmp_path: Path) -> None:
    # _codecs.encode(text, "rot13") is a global a Python 3 protocol-2 pickle may name; only latin-1 passes
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R]\x86."
    (tmp_path / "odd.bin").write_bytes(payload)
    with pytest.raises(DataError, match="latin-1"):
        load_bin(tmp_path / "odd.bin")


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:112, 0:112]
    images = []
    for _ in range(count):
        base = rng.uniform(40, 200, 3)
        wave = 30 * np.sin(x / rng.uniform(5, 15) + rng.uniform(0, 6))[..., None]
        images.append(np.clip(base + wave + 0 * y[..., None], 0, 255).astype(np.uint8))
    return images


def test_write_bin_round_trip(tmp_path: Path) -> None:
    images = _images(6)
    write_bin(tmp_path / "s.bin", images, [True, False, True])
    raw = (tmp_path / "s.bin").read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2, as insightface's py2 scripts write
    loaded, issame = load_bin(tmp_path / "s.bin")
    assert issame.tolist() == [True, False, True]
    assert loaded.shape == (6, 112, 112, 3)
    assert max(np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(loaded, images)) < 2.0  # JPEG q95
    with pytest.raises(DataError, match="2 per pair"):
        write_bin(tmp_path / "t.bin", images, [True])


def test_malformed_bins(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_bin(tmp_path / "missing.bin")
    (tmp_path / "dict.bin").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(DataError, match="expected a pickled"):
        load_bin(tmp_path / "dict.bin")
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([b"x"] * 3, [True]), protocol=2))
    with pytest.raises(DataError, match="3 images for 1 pairs"):
        load_bin(tmp_path / "odd.bin")
    (tmp_path / "short.bin").write_bytes(b"\x80\x02]q")
    with pytest.raises(DataError):
        load_bin(tmp_path / "short.bin")


def test_pair_folder_form(tmp_path: Path) -> None:
    images = _images(4, seed=1)
    folder = tmp_path / "evaluation" / "lfw"
    list_path = write_pair_folder(folder, images, [True, False])
    assert list_path == tmp_path / "evaluation" / "lfw.txt"
    assert list_path.read_text() == "00001.jpg 00002.jpg 1\n00003.jpg 00004.jpg -1\n"
    assert sorted(p.name for p in folder.iterdir()) == ["00001.jpg", "00002.jpg", "00003.jpg", "00004.jpg"]

    from_folder, same = load_pair_folder(folder)
    from_list, same_list = load_verification_set(list_path, color="rgb")
    assert same.tolist() == same_list.tolist() == [True, False]
    direct = cv2.imread(str(folder / "00003.jpg"), cv2.IMREAD_COLOR)
    assert np.array_equal(from_folder[2], direct)
    assert np.array_equal(from_list, from_folder[..., ::-1])


def test_hand_written_pair_list_and_dispatch(tmp_path: Path) -> None:
    folder = tmp_path / "cfp"
    folder.mkdir()
    for name, image in zip(["b.png", "a.png"], _images(2, seed=2)):
        cv2.imwrite(str(folder / name), image)
    (tmp_path / "cfp.txt").write_text("b.png   a.png  -1\n\n")
    images, issame = load_verification_set(folder)
    assert issame.tolist() == [False]
    assert np.array_equal(images[0], cv2.imread(str(folder / "b.png")))  # PNG is lossless: exact
    (tmp_path / "bad.txt").write_text("a.png b.png 2\n")
    (tmp_path / "bad").mkdir()
    with pytest.raises(DataError, match=r"bad.txt:1"):
        load_pair_folder(tmp_path / "bad.txt")
    with pytest.raises(DataError, match="expected an insightface .bin"):
        load_verification_set(tmp_path / "set.npz")
