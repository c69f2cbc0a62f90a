"""Procedural CIFAR-100-like and scene-like data, written in the real formats so demos and tests go
through the real readers (`data/cifar.py`, `data/scene.py`).

Every class is a fixed pattern (shape or texture, foreground and background colours; for scenes a
sky gradient, a horizon, a ground texture and object blobs) and every sample jitters it (position,
size, phase, colours) and adds noise, so a small CNN separates the classes well above chance within a
few hundred steps while the task is not trivial. Generation is vectorised per class and every random
number comes from a generator seeded by (seed, purpose, class), so the same seed writes the same bytes.
`python -m data.synthetic cifar|scene ...` is the command-line front end.
"""

from __future__ import annotations

import pickle as op  # opcode constants of the pickle format
import struct
from pathlib import Path

import cv2
import numpy as np

from data.cifar import CIFAR_FOLDER, IMAGE_SIDE

CIFAR_SHAPES = (
    "disk", "square", "ring", "cross", "triangle",
    "hstripes", "vstripes", "checker", "diagonal", "twoblobs",
)  # fmt: skip
FINE_PER_COARSE = 5  # CIFAR-100 groups its 100 classes into 20 superclasses of 5

# Purposes of the seeded generators (class parameters vs per-sample jitter vs split order).
_CLASS, _TRAIN, _TEST, _ORDER = 0, 1, 2, 3


def _shape_masks(shape: str, count: int, period: int, rng: np.random.Generator) -> np.ndarray:
    """count x 32 x 32 float32 masks in [0, 1] of one shape, jittered in position, size and phase."""
    yy, xx = np.mgrid[0:IMAGE_SIDE, 0:IMAGE_SIDE].astype(np.float32)
    cy = 15.5 + rng.uniform(-4, 4, (count, 1, 1)).astype(np.float32)
    cx = 15.5 + rng.uniform(-4, 4, (count, 1, 1)).astype(np.float32)
    radius = rng.uniform(6, 10, (count, 1, 1)).astype(np.float32)
    phase = rng.integers(0, period, (count, 1, 1)).astype(np.float32)
    dy, dx = yy - cy, xx - cx
    if shape == "disk":
        mask = dx**2 + dy**2 <= radius**2
    elif shape == "square":
        mask = np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * radius
    elif shape == "ring":
        mask = np.abs(np.sqrt(dx**2 + dy**2) - radius) <= 1.5
    elif shape == "cross":
        mask = ((np.abs(dx) <= 2) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= 2) & (np.abs(dx) <= radius))
    elif shape == "triangle":
        mask = (dy >= -radius) & (dy <= 0.8 * radius) & (np.abs(dx) <= 0.6 * (dy + radius))
    elif shape == "hstripes":
        mask = ((yy + phase) // period) % 2 == 0
    elif shape == "vstripes":
        mask = ((xx + phase) // period) % 2 == 0
    elif shape == "checker":
        mask = (((xx + phase) // period) + ((yy + phase) // period)) % 2 == 0
    elif shape == "diagonal":
        mask = ((xx + yy + phase) // period) % 2 == 0
    else:  # twoblobs
        half = radius / 2
        mask = ((dx - 6) ** 2 + dy**2 <= half**2) | ((dx + 6) ** 2 + dy**2 <= half**2)
    return mask.astype(np.float32)


def _cifar_class_images(label: int, count: int, seed: int, purpose: int) -> np.ndarray:
    """count x 32 x 32 x 3 uint8 RGB images of class `label`."""
    class_rng = np.random.default_rng([seed, _CLASS, label])
    foreground, background = class_rng.uniform(0, 255, (2, 3)).astype(np.float32)
    period = int(class_rng.integers(2, 6))
    rng = np.random.default_rng([seed, purpose, label])
    mask = _shape_masks(CIFAR_SHAPES[label % len(CIFAR_SHAPES)], count, period, rng)[..., None]
    jitter = rng.normal(0, 12, (2, count, 1, 1, 3)).astype(np.float32)
    image = (background + jitter[0]) * (1 - mask) + (foreground + jitter[1]) * mask
    image += rng.standard_normal(image.shape, dtype=np.float32) * 8
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def cifar_class_names(num_classes: int) -> list[str]:
    """Fine label names: the class's pattern and its number, e.g. `disk_00`."""
    return [f"{CIFAR_SHAPES[label % len(CIFAR_SHAPES)]}_{label:02d}" for label in range(num_classes)]


def _cifar_split(num_classes: int, per_class: int, seed: int, purpose: int, batch_label: str) -> dict:
    """One split as the official pickle's dict: shuffled samples, channel-planar rows."""
    images = np.concatenate(
        [_cifar_class_images(label, per_class, seed, purpose) for label in range(num_classes)]
    )
    labels = np.repeat(np.arange(num_classes), per_class)
    order = np.random.default_rng([seed, _ORDER, purpose]).permutation(len(labels))
    images, labels = images[order], labels[order]
    names = cifar_class_names(num_classes)
    return {
        "filenames": [f"{names[label]}_s_{number:06d}.png" for number, label in enumerate(labels.tolist())],
        "batch_label": batch_label,
        "fine_labels": labels.tolist(),
        "coarse_labels": (labels // FINE_PER_COARSE).tolist(),
        "data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(labels), 3 * IMAGE_SIDE**2)),
    }


# A minimal protocol-2 encoder for the value types the CIFAR pickles hold. It writes what Python 2's
# cPickle wrote for the official files: strings and the pixel buffer as Python 2 `str` (read back
# with encoding="latin1"), NumPy's reconstructor under its Python 2 name `numpy.core.multiarray`.
# Python 3's pickler would instead route the buffer through `_codecs.encode` (a 1.5 times larger
# file) and name NumPy's private module of the day, so the bytes would change with the NumPy version.


def _py2_str(text: str | bytes) -> bytes:
    data = text.encode("latin1") if isinstance(text, str) else text
    if len(data) < 256:
        return op.SHORT_BINSTRING + bytes([len(data)]) + data
    return op.BINSTRING + struct.pack("<I", len(data)) + data


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return op.BININT1 + bytes([value])
    if 0 <= value < 65536:
        return op.BININT2 + struct.pack("<H", value)
    return op.BININT + struct.pack("<i", value)


def _py2_global(module: str, name: str) -> bytes:
    return op.GLOBAL + f"{module}\n{name}\n".encode()


def _py2_array(array: np.ndarray) -> list[bytes]:
    """`_reconstruct(ndarray, (0,), 'b')`, then BUILD with the state (1, shape, dtype('u1'), False, raw)."""
    if array.dtype != np.uint8:
        raise TypeError("only uint8 arrays are written")
    empty = _py2_global("numpy.core.multiarray", "_reconstruct") + _py2_global("numpy", "ndarray")
    empty += _py2_int(0) + op.TUPLE1 + _py2_str("b") + op.TUPLE3 + op.REDUCE
    shape = op.MARK + b"".join(_py2_int(side) for side in array.shape) + op.TUPLE
    dtype = _py2_global("numpy", "dtype") + _py2_str("u1") + _py2_int(0) + _py2_int(1) + op.TUPLE3 + op.REDUCE
    dtype += (
        op.MARK
        + _py2_int(3)
        + _py2_str("|")
        + op.NONE * 3
        + _py2_int(-1) * 2
        + _py2_int(0)
        + op.TUPLE
        + op.BUILD
    )
    raw = np.ascontiguousarray(array).tobytes()
    state = op.MARK + _py2_int(1) + shape + dtype + op.NEWFALSE + op.BINSTRING + struct.pack("<I", len(raw))
    return [empty, state, raw, op.TUPLE + op.BUILD]


def _py2_value(value: object) -> list[bytes]:
    if isinstance(value, np.ndarray):
        return _py2_array(value)
    if isinstance(value, str):
        return [_py2_str(value)]
    if isinstance(value, int):
        return [_py2_int(value)]
    if isinstance(value, list):
        items = [chunk for item in value for chunk in _py2_value(item)]
        return [op.EMPTY_LIST, op.MARK, *items, op.APPENDS] if items else [op.EMPTY_LIST]
    raise TypeError(f"cannot encode {type(value).__name__}")


def _dump(content: dict, path: Path) -> None:
    """Write `content` as a Python 2 cPickle protocol-2 dict (see above)."""
    chunks = [op.PROTO + bytes([2]), op.EMPTY_DICT, op.MARK]
    for key, value in content.items():
        chunks += [_py2_str(key), *_py2_value(value)]
    chunks += [op.SETITEMS, op.STOP]
    with path.open("wb") as handle:
        handle.writelines(chunks)


def write_cifar100(
    out_dir: str | Path,
    num_classes: int = 100,
    train_per_class: int = 500,
    test_per_class: int = 100,
    seed: int = 0,
) -> Path:
    """Write `out_dir/cifar-100-python/{train,test,meta}` as the official pickles; returns that folder."""
    if num_classes < 1 or train_per_class < 1 or test_per_class < 1:
        raise ValueError("num_classes, train_per_class and test_per_class must be positive")
    folder = Path(out_dir) / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    _dump(_cifar_split(num_classes, train_per_class, seed, _TRAIN, "training batch 1 of 1"), folder / "train")
    _dump(_cifar_split(num_classes, test_per_class, seed, _TEST, "testing batch 1 of 1"), folder / "test")
    num_coarse = -(-num_classes // FINE_PER_COARSE)
    meta = {
        "fine_label_names": cifar_class_names(num_classes),
        "coarse_label_names": [f"group_{group:02d}" for group in range(num_coarse)],
    }
    _dump(meta, folder / "meta")
    return folder


def _scene_class_images(
    label: int, count: int, height: int, width: int, seed: int, purpose: int
) -> np.ndarray:
    """count x height x width x 3 uint8 BGR scenes of class `label`: sky, horizon, textured ground, blobs."""
    class_rng = np.random.default_rng([seed, _CLASS, label])
    sky_top, sky_bottom, ground_a, ground_b, blob_colour = class_rng.uniform(0, 255, (5, 3)).astype(
        np.float32
    )
    horizon_fraction = class_rng.uniform(0.3, 0.7)
    stripe_period = float(class_rng.integers(4, 16))
    stripe_slope = float(class_rng.uniform(-1, 1))
    blob_count = int(class_rng.integers(0, 4))

    rng = np.random.default_rng([seed, purpose, label])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = height * (horizon_fraction + rng.uniform(-0.08, 0.08, (count, 1, 1))).astype(np.float32)
    sky_mix = np.clip(yy / np.maximum(horizon, 1), 0, 1)[..., None]
    sky = sky_top * (1 - sky_mix) + sky_bottom * sky_mix
    phase = rng.uniform(0, stripe_period, (count, 1, 1)).astype(np.float32)
    stripes = (np.floor((yy + stripe_slope * xx + phase) / stripe_period) % 2)[..., None]
    ground = ground_a * (1 - stripes) + ground_b * stripes
    image = np.where((yy < horizon)[..., None], sky, ground)
    for _ in range(blob_count):
        by = rng.uniform(0.2, 0.9, (count, 1, 1)).astype(np.float32) * height
        bx = rng.uniform(0.1, 0.9, (count, 1, 1)).astype(np.float32) * width
        radius = rng.uniform(0.06, 0.14, (count, 1, 1)).astype(np.float32) * height
        inside = ((yy - by) ** 2 + (xx - bx) ** 2 <= radius**2)[..., None]
        image = np.where(inside, blob_colour, image)
    image = image + rng.normal(0, 10, (count, 1, 1, 3)).astype(np.float32)
    image += rng.standard_normal(image.shape, dtype=np.float32) * 6
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.tobytes())


def write_scene(
    out_dir: str | Path,
    num_classes: int = 5,
    train_per_class: int = 20,
    val_per_class: int = 10,
    seed: int = 0,
    image_size: int = 96,
    style: str = "mit67",
) -> dict[str, Path]:
    """Write a small scene set as the DCT repository lays one out; returns its `root`, `train` and `val`
    list files and `classes` file.

    `out_dir/scene_names.txt` has lines `name idx`; images are `image_size` high and 4/3 as wide (so
    the shorter-side resize matters). `style="mit67"` (also SUN397's) writes list lines
    `train/<class>/<file>.jpg` with images at that path; `style="ade20k"` writes `<name> <class>` with
    images at `train/<name>.jpg` (and `val/...`).
    """
    if style not in ("mit67", "ade20k"):
        raise ValueError(f"style must be 'mit67' or 'ade20k', got {style!r}")
    if num_classes < 1 or train_per_class < 1 or val_per_class < 1 or image_size < 8:
        raise ValueError("num_classes, train_per_class, val_per_class must be positive and image_size >= 8")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    class_names = [f"scene_{label:02d}" for label in range(num_classes)]
    classes_path = root / "scene_names.txt"
    classes_path.write_text("".join(f"{name} {label}\n" for label, name in enumerate(class_names)))
    height, width = image_size, image_size * 4 // 3
    paths = {"root": root, "classes": classes_path}
    for set_name, per_class, purpose in (("train", train_per_class, _TRAIN), ("val", val_per_class, _TEST)):
        lines = []
        for label, class_name in enumerate(class_names):
            images = _scene_class_images(label, per_class, height, width, seed, purpose)
            for number, image in enumerate(images):
                if style == "mit67":
                    relative = f"{set_name}/{class_name}/{class_name}_{set_name}_{number:04d}.jpg"
                    lines.append(relative)
                else:
                    name = f"SYN_{set_name}_{label * per_class + number + 1:08d}"
                    relative = f"{set_name}/{name}.jpg"
                    lines.append(f"{name} {class_name}")
                _write_jpeg(root / relative, image)
        paths[set_name] = root / f"{set_name}.txt"
        paths[set_name].write_text("".join(line + "\n" for line in lines))
    return paths
