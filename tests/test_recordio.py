"""RecordIO reader/writer against files written by the real mxnet 1.9.1 (shared fixtures)."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from data.recordio import RecordIO, RecordIOWriter, build_index, decode_image, write_face_rec
from utility.errors import DataError

_ROOT = Path(__file__).resolve().parents[1]
# the mxnet-written files: a copy inside the repository if there is one, else the shared folder beside it
FIXTURES = next(
    (p for p in (_ROOT / "tests" / "fixtures" / "mxnet", _ROOT.parent / "shared" / "fixtures" / "mxnet") if p.is_dir()),
    _ROOT / "tests" / "fixtures" / "mxnet",
)
pytestmark = pytest.mark.skipif(not (FIXTURES / "faces.rec").is_file(), reason="mxnet fixtures not available")

MAGIC = b"\x0a\x23\xd7\xce"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIXTURES / "expected.json").read_text())["rec"]


@pytest.fixture()
def reader() -> RecordIO:
    with RecordIO(FIXTURES / "faces.rec") as record:
        yield record


def _pixels_match(image: np.ndarray, md5_expected: str, pixel_sum: int) -> bool:
    """md5 when the libjpeg agrees; otherwise a pixel sum within +-1 on a few pixels (README)."""
    return md5(np.ascontiguousarray(image).tobytes()) == md5_expected or abs(int(image.astype(np.int64).sum()) - pixel_sum) < 500


def test_index_in_file_order(reader: RecordIO, expected: dict) -> None:
    assert len(reader) == expected["num_records"] == 35
    assert [[key, reader.offset(key)] for key in reader.keys] == expected["idx_lines_in_file_order"]
    assert reader.keys[30] == 0  # record 0 is written after the images, not at offset 0


def test_every_record_matches(reader: RecordIO, expected: dict) -> None:
    for record in expected["records"]:
        key = record["key"]
        parts = [vars(part) for part in reader.parts(key)]
        assert parts == record["parts"], key
        assert len(reader.read_raw(key)) == record["record_length"]
        header, payload = reader.read(key)
        assert (header.flag, header.id, header.id2) == (record["flag"], record["id"], record["id2"])
        if record["flag"] > 0:
            assert isinstance(header.label, np.ndarray) and header.label.dtype == np.float32
            assert header.label.tolist() == record["label"]
        else:
            assert isinstance(header.label, float) and header.label == record["label"]
        assert len(payload) == record["payload_length"]
        if record["shape"] is None:
            continue
        assert md5(payload) == record["payload_md5"]
        bgr = decode_image(payload)
        rgb = decode_image(payload, color="rgb")
        assert list(bgr.shape) == record["shape"] and bgr.dtype == np.uint8
        assert np.array_equal(rgb, bgr[:, :, ::-1])
        assert _pixels_match(bgr, record["md5_bgr_cv2_imdecode"], record["pixel_sum"])
        assert _pixels_match(rgb, record["md5_rgb_mx_image_imdecode"], record["pixel_sum"])


def test_split_record_rejoined_with_magic(reader: RecordIO, expected: dict) -> None:
    key = expected["split_record_key"]
    assert key == 11
    assert [(p.cflag, p.length) for p in reader.parts(key)] == [(1, 32), (2, 4), (3, 4006)]
    raw = reader.read_raw(key)
    assert len(raw) == 32 + 4 + 4 + 4 + 4006
    # the magic the writer dropped sits at record offsets 32 and 40 again, the unaligned copy at 50 stays
    assert raw[32:36] == MAGIC and raw[40:44] == MAGIC and raw[50:54] == MAGIC
    header, payload = reader.read(key)
    assert payload[:2] == b"\xff\xd8" and header.label == 1.0


def test_header_zero_and_identity_ranges(reader: RecordIO, expected: dict) -> None:
    header0, payload0 = reader.read(0)
    assert header0.flag == 2 and payload0 == b""
    first, end = (int(v) for v in header0.label)
    assert (first, end) == (expected["header0"]["first_identity_record"], expected["header0"]["end"])
    assert list(range(1, first)) == expected["image_keys"]
    assert list(range(first, end)) == expected["identity_keys"]
    ranges = [reader.read(key)[0].label.tolist() for key in range(first, end)]
    assert ranges == [[1.0, 9.0], [9.0, 16.0], [16.0, 25.0], [25.0, 31.0]]  # 8, 7, 9 and 6 images
    for label, (start, stop) in enumerate(ranges):
        assert {reader.read_header(k).label for k in range(int(start), int(stop))} == {float(label)}


def test_iteration_follows_index_order(reader: RecordIO) -> None:
    ids = [header.id for header, _ in reader]
    assert ids == reader.keys


def test_writer_reproduces_mxnet_bytes(reader: RecordIO, expected: dict, tmp_path: Path) -> None:
    with RecordIOWriter(tmp_path / "copy.rec") as writer:
        for key in reader.keys:
            writer.write_raw(key, reader.read_raw(key))
    assert md5((tmp_path / "copy.rec").read_bytes()) == expected["file_md5"]
    assert md5((tmp_path / "copy.idx").read_bytes()) == expected["idx_file_md5"]


def test_writer_splits_only_at_aligned_magic(tmp_path: Path) -> None:
    record = MAGIC + MAGIC + b"ab" + MAGIC + b"xyz"  # aligned at 0 and 4, unaligned at 6
    with RecordIOWriter(tmp_path / "t.rec") as writer:
        writer.write_raw(7, record)
        writer.write_raw(3, b"")
        writer.write(5, [1.0, 2.5], b"payload", rec_id=9, rec_id2=1)
    reader = RecordIO(tmp_path / "t.rec")
    assert [(p.cflag, p.length) for p in reader.parts(7)] == [(1, 0), (2, 0), (3, 9)]
    assert reader.read_raw(7) == record
    assert reader.read_raw(3) == b"" and reader.parts(3)[0].cflag == 0
    header, payload = reader.read(5)
    assert (header.flag, header.label.tolist(), header.id, header.id2, payload) == (2, [1.0, 2.5], 9, 1, b"payload")
    raw = (tmp_path / "t.rec").read_bytes()
    # first part header: magic, lrec = 1 << 29 | 0
    assert raw[:8] == MAGIC + struct.pack("<I", 1 << 29)
    assert len(raw) % 4 == 0


def test_face_rec_layout(tmp_path: Path) -> None:
    payloads = [bytes([n]) * (n + 1) for n in range(5)]
    write_face_rec(tmp_path / "f.rec", payloads, [0, 0, 1, 2, 2])
    reader = RecordIO(tmp_path / "f.rec")
    assert reader.keys == [1, 2, 3, 4, 5, 0, 6, 7, 8]
    assert reader.read(0)[0].label.tolist() == [6.0, 9.0]
    assert [reader.read(k)[0].label.tolist() for k in (6, 7, 8)] == [[1.0, 3.0], [3.0, 4.0], [4.0, 6.0]]
    assert [reader.read(k)[0].label for k in range(1, 6)] == [0.0, 0.0, 1.0, 2.0, 2.0]
    assert reader.read(4)[1] == payloads[3]
    with pytest.raises(DataError):
        write_face_rec(tmp_path / "g.rec", payloads, [1, 0, 0, 2, 2])


def test_pickles_without_handle_and_reopens(reader: RecordIO) -> None:
    first = reader.read(5)[1]
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handle is None
    assert clone.read(5)[1] == first
    clone._pid = -1  # as if forked: the next read must open its own handle
    assert clone.read(6)[1] == reader.read(6)[1] and clone._pid is not None and clone._pid > 0


def test_build_index_recreates_idx(expected: dict, tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "faces.rec", tmp_path / "faces.rec")
    with pytest.raises(DataError, match="index not found"):
        RecordIO(tmp_path / "faces.rec")
    build_index(tmp_path / "faces.rec")
    assert md5((tmp_path / "faces.idx").read_bytes()) == expected["idx_file_md5"]


def test_corrupt_files_raise_data_error(tmp_path: Path) -> None:
    raw = bytearray((FIXTURES / "faces.rec").read_bytes())
    index = (FIXTURES / "faces.idx").read_text()
    (tmp_path / "bad.idx").write_text(index)
    raw[4400] ^= 0xFF  # the magic of record 2
    (tmp_path / "bad.rec").write_bytes(bytes(raw))
    reader = RecordIO(tmp_path / "bad.rec")
    assert reader.read(1)[1]  # intact records still read
    with pytest.raises(DataError, match=r"bad\.rec: record 2 at offset 4400: bad magic"):
        reader.read(2)

    (tmp_path / "cut.rec").write_bytes(bytes(raw[:4000]))
    (tmp_path / "cut.idx").write_text("1\t0\n")
    with pytest.raises(DataError, match="record 1 .*truncated"):
        RecordIO(tmp_path / "cut.rec").read(1)

    (tmp_path / "far.rec").write_bytes(bytes(raw[:4000]))
    (tmp_path / "far.idx").write_text("1\t0\n2\t4400\n")
    with pytest.raises(DataError, match="key 2 points at offset 4400"):
        RecordIO(tmp_path / "far.rec")

    (tmp_path / "junk.rec").write_bytes(bytes(raw[:4000]))
    (tmp_path / "junk.idx").write_text("1\t0\nnot a line\n")
    with pytest.raises(DataError, match="junk.idx:2"):
        RecordIO(tmp_path / "junk.rec")

    with pytest.raises(DataError, match="no record with key 99"):
        RecordIO(FIXTURES / "faces.rec").read(99)
    with pytest.raises(DataError, match="not a decodable image"):
        decode_image(b"not a jpeg")
