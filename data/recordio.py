"""Pure-Python MXNet RecordIO (`.rec` + `.idx`): the container of insightface face datasets.

CASIA-WebFace and MS1MV2 ship as `train.rec`/`train.idx`; mxnet itself does not install beside
NumPy 2, so this module reads (and, for synthetic data and tests, writes) the format byte for byte
as `spec/adadistill.md` §4 describes it:

- a record is one or more *parts*: magic u32 `0xCED7230A`, `lrec` u32 = (cflag << 29) | length,
  the data, zero padding to 4 bytes; cflag 0 = whole record, 1/2/3 = first/middle/last part.
  The writer splits a record wherever the magic word sits at a 4-aligned offset and drops it;
  the reader re-inserts it between parts.
- the `.idx` is text, `"<key>\\t<offset>"` per record, in write order (record 0 is not first).
- a record starts with `IRHeader` = `<IfQQ` (flag, label, id, id2); flag > 0 means `flag` float32
  labels follow. The rest is the payload (an encoded image, or nothing for header records).

File handles are opened lazily and per process, so one `RecordIO` can be handed to DataLoader
workers (it pickles without its handle and every forked or spawned worker reopens the file).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from utility.errors import DataError

logger = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART_HEADER = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


@dataclass(frozen=True)
class IRHeader:
    """The 24-byte record header: `label` is a float (flag 0) or a float32 array of `flag` values."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


@dataclass(frozen=True)
class Part:
    """Where one part of a record lies in the `.rec` file (for inspection and tests)."""

    offset: int
    cflag: int
    length: int
    pad: int


def unpack(record: bytes, source: str = "record") -> tuple[IRHeader, bytes]:
    """Split a joined record into its header and payload (as `mx.recordio.unpack`)."""
    if len(record) < _IR_HEADER.size:
        raise DataError(f"{source}: {len(record)} bytes is too short for a 24-byte IRHeader")
    flag, label, rec_id, rec_id2 = _IR_HEADER.unpack_from(record, 0)
    start = _IR_HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if len(record) < end:
            raise DataError(f"{source}: header announces {flag} float labels but the record ends first")
        label = np.frombuffer(record, dtype="<f4", count=flag, offset=start).astype(np.float32)
        start = end
    return IRHeader(flag, label, rec_id, rec_id2), bytes(record[start:])


def label_range(header: IRHeader, source: str, low: int, high: int) -> tuple[int, int]:
    """The [start, end) key range a header record's two labels give, checked to be finite whole
    numbers with low <= start <= end <= high: the values come from the file and size allocations."""
    values = np.atleast_1d(np.asarray(header.label, dtype=np.float64))
    if header.flag < 2 or len(values) < 2:
        raise DataError(f"{source}: expected a header with two labels (a key range), got {header.label!r}")
    start, end = float(values[0]), float(values[1])
    if not all(np.isfinite(v) and v == int(v) for v in (start, end)) or not low <= start <= end <= high:
        raise DataError(f"{source}: key range [{start:g}, {end:g}) is not a range of whole numbers within "
                        f"[{low}, {high}]; the header record is corrupt (rebuild the .rec or its header)")
    return int(start), int(end)


def label_value(header: IRHeader, source: str, high: int) -> int:
    """A sample's class label from its header: a finite whole number in [0, high)."""
    value = float(header.label[0]) if header.flag > 0 else float(header.label)
    if not (np.isfinite(value) and value == int(value) and 0 <= value < high):
        raise DataError(f"{source}: label {value:g} is not a class index in [0, {high}); the record is corrupt")
    return int(value)


def pack(label: float | Sequence[float] | np.ndarray, payload: bytes, rec_id: int, rec_id2: int = 0) -> bytes:
    """Header + payload as `mx.recordio.pack` builds it: flag = 0 for a scalar, len(label) otherwise."""
    if np.ndim(label) == 0:
        return _IR_HEADER.pack(0, float(label), rec_id, rec_id2) + payload
    values = np.asarray(label, dtype="<f4").ravel()
    return _IR_HEADER.pack(len(values), 0.0, rec_id, rec_id2) + values.tobytes() + payload


def decode_image(payload: bytes, color: str = "bgr", source: str = "image") -> np.ndarray:
    """Decode encoded image bytes into an H x W x 3 uint8 array in `color` order ("bgr" or "rgb")."""
    if color not in ("bgr", "rgb"):
        raise DataError(f"{source}: color must be 'bgr' or 'rgb', got {color!r}")
    image = None
    if payload:
        image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{source}: the {len(payload)} payload bytes are not a decodable image")
    if color == "rgb":
        image = np.ascontiguousarray(image[:, :, ::-1])
    return image


def encode_image(image_bgr: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a BGR uint8 image, as `mx.recordio.pack_img` makes them (quality 95)."""
    ok, buffer = cv2.imencode(".jpg", image_bgr, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise DataError("could not JPEG-encode an image (expected H x W x 3 uint8)")
    return buffer.tobytes()


def read_index(idx_path: str | Path) -> tuple[list[int], dict[int, int]]:
    """Keys in file order and key -> byte offset from a `.idx` file."""
    idx_path = Path(idx_path)
    if not idx_path.is_file():
        raise DataError(
            f"RecordIO index not found: {idx_path}. Put the .idx written with the .rec beside it, "
            "or rebuild it with data.recordio.build_index(rec_path)."
        )
    keys: list[int] = []
    offsets: dict[int, int] = {}
    with open(idx_path) as handle:
        for line_number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise DataError(f"{idx_path}:{line_number}: expected '<key>\\t<offset>', got {line!r}") from None
            if key in offsets:
                raise DataError(f"{idx_path}:{line_number}: key {key} appears twice")
            keys.append(key)
            offsets[key] = offset
    return keys, offsets


class RecordIO:
    """Random access to an indexed RecordIO file: `read(key) -> (IRHeader, payload)`.

    `len()` counts every record in the index (images, header record 0, identity records);
    iterating yields `(header, payload)` for each record in index (write) order.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise DataError(f"RecordIO file not found: {self.rec_path}")
        self.keys, self._offsets = read_index(self.idx_path)
        self._size = self.rec_path.stat().st_size
        for key, offset in self._offsets.items():
            if not 0 <= offset < self._size:
                raise DataError(
                    f"{self.idx_path}: key {key} points at offset {offset}, outside {self.rec_path} "
                    f"({self._size} bytes); the index does not belong to this .rec"
                )
        self._handle: BinaryIO | None = None
        self._pid: int | None = None

    # -- file handle, one per process -------------------------------------------------------
    def _file(self) -> BinaryIO:
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.rec_path, "rb")  # noqa: SIM115 - kept open for random access
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def __enter__(self) -> RecordIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._offsets

    def offset(self, key: int) -> int:
        try:
            return self._offsets[key]
        except KeyError:
            raise DataError(f"{self.idx_path}: no record with key {key}") from None

    def _read_part(self, offset: int, key: int) -> tuple[int, int, bytes]:
        handle = self._file()
        handle.seek(offset)
        head = handle.read(_PART_HEADER.size)
        where = f"{self.rec_path}: record {key} at offset {offset}"
        if len(head) < _PART_HEADER.size:
            raise DataError(f"{where}: file ends inside a part header (truncated .rec?)")
        magic, lrec = _PART_HEADER.unpack(head)
        if magic != MAGIC:
            raise DataError(
                f"{where}: bad magic 0x{magic:08X} (expected 0x{MAGIC:08X}); the .rec is corrupt "
                "or the .idx does not belong to it"
            )
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        if offset + _PART_HEADER.size + length > self._size:  # never allocate what the file cannot hold
            raise DataError(f"{where}: part announces {length} bytes but the file ends after "
                            f"{self._size - offset - _PART_HEADER.size} (truncated or corrupt .rec)")
        data = handle.read(length)
        if len(data) < length:
            raise DataError(f"{where}: part of {length} bytes is truncated after {len(data)} bytes")
        return cflag, length, data

    def parts(self, key: int) -> list[Part]:
        """The parts a record is stored in (offset, cflag, length, padding)."""
        offset = self.offset(key)
        found: list[Part] = []
        while True:
            cflag, length, _ = self._read_part(offset, key)
            pad = (4 - length % 4) % 4
            found.append(Part(offset, cflag, length, pad))
            offset += _PART_HEADER.size + length + pad
            if cflag in (0, 3):
                return found
            if offset >= self._size:
                raise DataError(f"{self.rec_path}: record {key} ends before its last part (truncated .rec?)")

    def read_raw(self, key: int) -> bytes:
        """The record's bytes with split parts re-joined (magic re-inserted between parts)."""
        offset = self.offset(key)
        cflag, length, data = self._read_part(offset, key)
        if cflag == 0:
            return data
        if cflag != 1:
            raise DataError(f"{self.rec_path}: record {key} at offset {offset} starts with part flag {cflag}")
        chunks = [data]
        while cflag != 3:
            offset += _PART_HEADER.size + length + (4 - length % 4) % 4
            cflag, length, data = self._read_part(offset, key)
            if cflag not in (2, 3):
                raise DataError(
                    f"{self.rec_path}: record {key}: part at offset {offset} has flag {cflag}, "
                    "expected a middle (2) or last (3) part"
                )
            chunks.append(data)
        return _MAGIC_BYTES.join(chunks)

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        """`(header, payload)` of the record stored under `key`."""
        return unpack(self.read_raw(key), f"{self.rec_path}: record {key}")

    def read_header(self, key: int) -> IRHeader:
        """Only the header (cheap: reads the first part's leading bytes)."""
        offset = self.offset(key)
        handle = self._file()
        handle.seek(offset)
        head = handle.read(_PART_HEADER.size + _IR_HEADER.size)
        if len(head) == _PART_HEADER.size + _IR_HEADER.size:
            magic, lrec = _PART_HEADER.unpack_from(head)
            flag = _IR_HEADER.unpack_from(head, _PART_HEADER.size)[0]
            needed = _IR_HEADER.size + 4 * flag
            if magic == MAGIC and lrec >> 29 == 0 and (lrec & _LENGTH_MASK) >= needed:
                record = head[_PART_HEADER.size :] + handle.read(4 * flag)
                return unpack(record, f"{self.rec_path}: record {key}")[0]
        # split, short or corrupt records: the full read handles them (and reports errors)
        return self.read(key)[0]

    def __iter__(self) -> Iterator[tuple[IRHeader, bytes]]:
        for key in self.keys:
            yield self.read(key)

    def __repr__(self) -> str:
        return f"RecordIO({str(self.rec_path)!r}, {len(self)} records)"


class RecordIOWriter:
    """Writes `.rec` + `.idx` exactly as mxnet's `MXIndexedRecordIO.write_idx` does."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self._rec = open(self.rec_path, "wb")  # noqa: SIM115 - closed in close()
        self._idx = open(self.idx_path, "w")  # noqa: SIM115
        self._keys: set[int] = set()

    def write_raw(self, key: int, record: bytes) -> None:
        """Store `record` under `key`, split at every 4-aligned magic word as mxnet does."""
        if key in self._keys:
            raise DataError(f"{self.rec_path}: key {key} written twice")
        if len(record) >= 1 << 29:
            raise DataError(f"{self.rec_path}: record {key} is {len(record)} bytes; RecordIO allows < 2^29")
        self._keys.add(key)
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        cuts = []
        position = record.find(_MAGIC_BYTES)
        while position >= 0:
            if position % 4 == 0:  # only 4-aligned occurrences split the record
                cuts.append(position)
            position = record.find(_MAGIC_BYTES, position + 1)
        if not cuts:
            self._write_part(0, record)
            return
        start = 0
        for number, cut in enumerate(cuts):
            self._write_part(1 if number == 0 else 2, record[start:cut])
            start = cut + 4
        self._write_part(3, record[start:])

    def _write_part(self, cflag: int, data: bytes) -> None:
        self._rec.write(_PART_HEADER.pack(MAGIC, (cflag << 29) | len(data)))
        self._rec.write(data)
        self._rec.write(b"\0" * ((4 - len(data) % 4) % 4))

    def write(self, key: int, label: float | Sequence[float] | np.ndarray, payload: bytes = b"", rec_id: int | None = None,
              rec_id2: int = 0) -> None:
        """Pack header + payload (id defaults to the key, as insightface writes) and store it."""
        self.write_raw(key, pack(label, payload, key if rec_id is None else rec_id, rec_id2))

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_face_rec(rec_path: str | Path, encoded_images: Sequence[bytes], labels: Sequence[int],
                   idx_path: str | Path | None = None) -> None:
    """An insightface face dataset: images 1..N, then header record 0, then identity records.

    Labels must be sorted and contiguous 0..C-1 (the `faces_*_112x112` layout): record 0 carries
    [N + 1, N + 1 + C] and identity record N + 1 + c the image-key range [first, last + 1) of class c.
    """
    labels = [int(label) for label in labels]
    if len(labels) != len(encoded_images):
        raise DataError(f"{rec_path}: {len(encoded_images)} images but {len(labels)} labels")
    if labels != sorted(labels) or (labels and sorted(set(labels)) != list(range(labels[-1] + 1))):
        raise DataError(f"{rec_path}: face records need labels sorted and contiguous from 0")
    num_images = len(labels)
    num_classes = labels[-1] + 1 if labels else 0
    first_identity = num_images + 1
    with RecordIOWriter(rec_path, idx_path) as writer:
        for key, (payload, label) in enumerate(zip(encoded_images, labels), 1):
            writer.write(key, float(label), payload)
        writer.write(0, [float(first_identity), float(first_identity + num_classes)])
        starts = np.searchsorted(labels, np.arange(num_classes + 1))
        for label in range(num_classes):
            writer.write(first_identity + label, [float(starts[label] + 1), float(starts[label + 1] + 1)])


def build_index(rec_path: str | Path, idx_path: str | Path | None = None) -> Path:
    """Rebuild a lost `.idx` by scanning the `.rec`; keys are the records' header ids (insightface)."""
    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")
    if not rec_path.is_file():
        raise DataError(f"RecordIO file not found: {rec_path}")
    size = rec_path.stat().st_size
    lines = []
    with open(rec_path, "rb") as handle:
        offset = 0
        record_start = None
        header_bytes = b""
        while offset < size:
            handle.seek(offset)
            head = handle.read(_PART_HEADER.size)
            if len(head) < _PART_HEADER.size or _PART_HEADER.unpack(head)[0] != MAGIC:
                raise DataError(f"{rec_path}: no RecordIO part at offset {offset}; the file is corrupt")
            lrec = _PART_HEADER.unpack(head)[1]
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if cflag in (0, 1):
                record_start, header_bytes = offset, b""
            if len(header_bytes) < _IR_HEADER.size:
                header_bytes += (_MAGIC_BYTES if cflag in (2, 3) else b"") + handle.read(min(length, 64))
            if cflag in (0, 3):
                if len(header_bytes) < _IR_HEADER.size:
                    raise DataError(f"{rec_path}: record at offset {record_start} is shorter than its header")
                lines.append(f"{_IR_HEADER.unpack_from(header_bytes)[2]}\t{record_start}\n")
            offset += _PART_HEADER.size + length + (4 - length % 4) % 4
    idx_path.write_text("".join(lines))
    logger.info("wrote %d index lines to %s", len(lines), idx_path)
    return idx_path
