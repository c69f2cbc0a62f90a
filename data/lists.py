"""Image lists and extracted image folders (the A-SKD/F-SKD conversion script's outputs).

- `train.list`: one line per image, `<path>  <label>` (the script writes two spaces; any whitespace
  is accepted); paths are absolute or relative to the list's folder. Labels are the script's
  `os.listdir` order, so they are a permutation of the record labels (`spec/face.md` §6).
- `image/<class>/<file>.jpg`: class folders; Distillery sorts them, so labels are reproducible.
- `evaluation/<name>.txt`: pair lines `"00001.jpg 00002.jpg 1"` (1 same, -1 different), no header.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from data.recordio import decode_image, encode_image
from utility.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def read_image(path: str | Path, color: str = "bgr") -> np.ndarray:
    """An image file as H x W x 3 uint8 in `color` order (works with non-ASCII paths)."""
    path = Path(path)
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror}") from None
    return decode_image(payload, color, source=str(path))


def write_image(path: str | Path, image_bgr: np.ndarray, quality: int = 95) -> None:
    """A BGR uint8 image as JPEG (quality 95, as the conversion script's `cv2.imwrite`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        path.write_bytes(encode_image(image_bgr, quality))
        return
    ok, buffer = cv2.imencode(path.suffix, image_bgr)
    if not ok:
        raise DataError(f"could not encode {path}")
    path.write_bytes(buffer.tobytes())


def read_image_list(list_path: str | Path) -> tuple[list[Path], np.ndarray]:
    """(paths, int64 labels) from a `train.list`-style file; relative paths join the list's folder."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise DataError(f"image list not found: {list_path}")
    paths: list[Path] = []
    labels: list[int] = []
    for line_number, line in enumerate(list_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.strip().rsplit(maxsplit=1)
        try:
            label = int(fields[1])
        except (IndexError, ValueError):
            raise DataError(f"{list_path}:{line_number}: expected '<path>  <label>', got {line!r}") from None
        if label < 0:
            raise DataError(f"{list_path}:{line_number}: negative label {label}")
        image_path = Path(fields[0].strip())
        paths.append(image_path if image_path.is_absolute() else list_path.parent / image_path)
        labels.append(label)
    if not paths:
        raise DataError(f"{list_path}: the list holds no images")
    return paths, np.asarray(labels, dtype=np.int64)


def write_image_list(list_path: str | Path, paths: Sequence[str | Path], labels: Sequence[int]) -> None:
    """A `train.list` as the conversion script writes it: `<path>` + two spaces + `<label>`."""
    lines = [f"{path}  {int(label)}\n" for path, label in zip(paths, labels)]
    Path(list_path).write_text("".join(lines))


def scan_class_folders(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """(paths, int64 labels, class names) of a `<root>/<class>/<image>` tree; classes sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise DataError(f"{root}: no images found in class sub-folders (expected {root}/<class>/<image>.jpg)")
    return paths, np.asarray(labels, dtype=np.int64), classes


def read_pair_list(list_path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(left names, right names, bool issame) from an extracted pair list (no header line)."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise DataError(f"pair list not found: {list_path}")
    left: list[str] = []
    right: list[str] = []
    flags: list[bool] = []
    for line_number, line in enumerate(list_path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[2] not in ("1", "-1"):
            raise DataError(f"{list_path}:{line_number}: expected '<left> <right> 1|-1', got {line!r}")
        left.append(fields[0])
        right.append(fields[1])
        flags.append(fields[2] == "1")
    if not flags:
        raise DataError(f"{list_path}: the pair list is empty")
    return left, right, np.asarray(flags, dtype=bool)
