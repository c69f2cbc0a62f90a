"""Face verification pair sets: insightface `.bin` pickles and extracted folders with a pair list.

A `.bin` (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`) is a pickle of `(bins, issame_list)`: 2N encoded
images (pair k = images 2k, 2k+1) and N bools (`spec/adadistill.md` §4.4). The files come from the
internet, and `pickle.load` executes whatever a file asks for, so they are read with an unpickler
that refuses every global except the few the format needs: NumPy's array reconstruction (real
AgeDB/CFP bins store each JPEG as a uint8 (L, 1) array) and `_codecs.encode` restricted to latin-1
(how Python 3 writes `bytes` at protocol 2). Python 2 `str` items load as bytes (`encoding="bytes"`).

The extracted form (the A-SKD/F-SKD conversion script's output) is `evaluation/<name>/00001.jpg ...`
plus `evaluation/<name>.txt` with lines `"00001.jpg 00002.jpg 1"` (1 same, -1 different), no header.
"""

from __future__ import annotations

import codecs
import io
import mmap
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data.lists import read_image, read_pair_list, write_image
from data.recordio import decode_image, encode_image
from utility.errors import DataError


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as Python 3's protocol-2 pickles use it for bytes, and nothing more."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("_codecs.encode is only admitted for latin-1 byte strings")
    return text.encode("latin-1", errors)


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    admitted: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core", "numpy._core"):
        admitted[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        admitted[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        admitted[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return admitted


class _BinUnpickler(pickle.Unpickler):
    """Admits only the globals an insightface `.bin` can contain; everything else is refused."""

    _admitted = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._admitted[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a .bin file") from None


def _as_bytes(item: Any, path: Path, position: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise DataError(f"{path}: image {position} is a {type(item).__name__}, expected encoded image bytes")


def read_bin_payloads(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """The encoded images and the issame flags of a `.bin`, without decoding."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"verification set not found: {path}")
    try:
        # Unpickled from a memory map, not the file object: a FRAME or BINBYTES opcode that declares
        # more bytes than the file holds then reads only what is there (and fails as truncated)
        # instead of allocating the declared size.
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            content = _BinUnpickler(mapped, encoding="bytes").load()
    except MemoryError:
        raise DataError(f"{path}: declares objects larger than memory; not an insightface .bin file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            OverflowError, KeyError) as exc:
        raise DataError(f"{path}: not a readable insightface .bin verification file ({exc})") from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise DataError(f"{path}: expected a pickled (images, issame) pair, got {type(content).__name__}")
    bins, issame = content
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple, np.ndarray)):
        raise DataError(f"{path}: expected lists of images and issame flags")
    payloads = [_as_bytes(item, path, position) for position, item in enumerate(bins)]
    flags = np.asarray([bool(flag) for flag in issame], dtype=bool)
    if len(payloads) != 2 * len(flags):
        raise DataError(f"{path}: {len(payloads)} images for {len(flags)} pairs (need 2 images per pair)")
    return payloads, flags


def _stack(images: Sequence[np.ndarray], source: str, image_size: int | None) -> np.ndarray:
    if image_size is not None:
        images = [
            image if image.shape[:2] == (image_size, image_size)
            else cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
            for image in images
        ]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise DataError(f"{source}: images have different sizes {sorted(shapes)}; pass image_size to resize them")
    if not images:
        raise DataError(f"{source}: holds no images")
    return np.stack(images)


def load_bin(path: str | Path, color: str = "bgr", image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode a `.bin` into (N x H x W x 3 uint8 images in `color` order, bool issame of N/2)."""
    payloads, issame = read_bin_payloads(path)

    def decode(position: int) -> np.ndarray:
        return decode_image(payloads[position], color, source=f"{path}: image {position}")

    with ThreadPoolExecutor(max_workers=4) as pool:  # OpenCV releases the GIL while decoding
        images = list(pool.map(decode, range(len(payloads))))
    return _stack(images, str(path), image_size), issame


def write_bin(path: str | Path, images_bgr: Sequence[np.ndarray], issame: Sequence[bool], quality: int = 95) -> None:
    """Write a `.bin` as insightface's pack scripts do: protocol-2 pickle of (JPEG bytes, bools)."""
    flags = [bool(flag) for flag in issame]
    if len(images_bgr) != 2 * len(flags):
        raise DataError(f"{path}: {len(images_bgr)} images for {len(flags)} pairs (need 2 per pair)")
    payloads = [encode_image(image, quality) for image in images_bgr]
    buffer = io.BytesIO()
    pickle.dump((payloads, flags), buffer, protocol=2)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(buffer.getvalue())


def _pair_paths(path: Path) -> tuple[Path, Path]:
    """(image folder, pair list) of the extracted form, given either of them."""
    if path.suffix == ".txt":
        return path.with_suffix(""), path
    return path, path.parent / f"{path.name}.txt"


def load_pair_folder(path: str | Path, color: str = "bgr", image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Extracted pairs (`<name>/` + `<name>.txt`, either path given) as (images, issame) like `load_bin`."""
    folder, list_path = _pair_paths(Path(path))
    if not folder.is_dir():
        raise DataError(f"pair image folder not found: {folder} (expected beside {list_path})")
    left, right, issame = read_pair_list(list_path)
    names = [name for pair in zip(left, right) for name in pair]

    def load(name: str) -> np.ndarray:
        return read_image(folder / name, color)

    with ThreadPoolExecutor(max_workers=4) as pool:
        images = list(pool.map(load, names))
    return _stack(images, str(folder), image_size), issame


def write_pair_folder(folder: str | Path, images_bgr: Sequence[np.ndarray], issame: Sequence[bool]) -> Path:
    """The extracted form: `folder/00001.jpg ...` and `folder.txt` ("a.jpg b.jpg 1|-1", no header)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for pair, same in enumerate(issame):
        names = [f"{2 * pair + 1:05d}.jpg", f"{2 * pair + 2:05d}.jpg"]
        for name, image in zip(names, images_bgr[2 * pair : 2 * pair + 2]):
            write_image(folder / name, image)
        lines.append(f"{names[0]} {names[1]} {1 if same else -1}\n")
    list_path = folder.parent / f"{folder.name}.txt"
    list_path.write_text("".join(lines))
    return list_path


def load_verification_set(path: str | Path, color: str = "bgr", image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A pair set from a `.bin`, an extracted folder or its `.txt` pair list."""
    path = Path(path)
    if path.suffix == ".bin":
        return load_bin(path, color, image_size)
    if path.is_dir() or path.suffix == ".txt":
        return load_pair_folder(path, color, image_size)
    raise DataError(
        f"verification set {path}: expected an insightface .bin file, an extracted pair folder or its .txt list"
    )
