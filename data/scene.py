"""Scene-recognition sets (ADE20K, SUN397, MIT67) from the DCT repository's list files (dataset `scene_list`).

A dataset folder holds `scene_names.txt` (one class per line, class id = line index, name = first
token: ADE20K lines are `name`, MIT67/SUN397 lines `name idx`), list files such as `train.txt` and
`val.txt`, and the images. A list line is one of
- `ADE_train_00000001 airport_terminal` (ADE20K: image name and class; the image is
  `<folder>/<list stem>/<name>.jpg`, e.g. `train/ADE_train_00000001.jpg`), or
- `train/<class>/<file>.jpg` (MIT67, SUN397: split on `/`; the image is `<folder>/train/<class>/<file>.jpg`).
A two-token line whose name contains `/` is taken as a path relative to the folder. Without
`scene_names.txt`, the classes are the sorted union of the class names in DATA.TRAIN and DATA.VAL.

Geometry follows the reference's torchvision pipeline, done here with OpenCV on the uint8 image:
Resize(DATA.RESIZE) of the shorter side (long side `int(RESIZE * long / short)`; area filter when
shrinking, bilinear when enlarging, where PIL uses antialiased bilinear), then RandomCrop(IMAGE_SIZE)
for training when DATA.RANDOM_CROP (offsets from `data.loader.sample_rng(seed, epoch, index)`),
else CenterCrop(IMAGE_SIZE) (torchvision's rounding; zero padding when the image is smaller). With
DATA.TEN_CROP the evaluation image is centre-cropped to RESIZE x RESIZE instead, so a batch stacks and
the device takes the ten IMAGE_SIZE crops from that square (the reference, which never enables ten-crop,
would take the corners of the full resized rectangle). Flip and normalisation run on the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset
from yacs.config import CfgNode

from data import DATASETS
from data.cifar import STREAM_CONTRAST, STREAM_CROP, ContrastSampler
from data.loader import sample_rng
from data.requests import NOTHING_EXTRA, BatchRequest
from utility.config import resolve_data_path
from utility.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

CLASS_FILE = "scene_names.txt"
IMAGE_SUFFIX = ".jpg"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class SceneEntry:
    """One list line: where the image is, its class name, and where it was listed (for errors)."""

    image_path: Path
    class_name: str
    list_path: Path
    line_number: int


def read_class_file(path: Path) -> list[str]:
    """Class names in id order: the first token of every non-empty line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read class file {path}: {exc.strerror}") from None
    names = [line.split()[0] for line in lines if line.strip()]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: class names repeat; each line must name a different class")
    return names


def _with_suffix(name: str) -> str:
    """DCT lists name ADE20K images without their `.jpg`."""
    return name if Path(name).suffix.lower() in IMAGE_SUFFIXES else name + IMAGE_SUFFIX


def parse_line(line: str, folder: Path, list_path: Path, line_number: int) -> SceneEntry:
    """Interpret one list line in either DCT format (see the module docstring)."""
    text = line.strip()
    if text.count("/") == 2 and Path(text).suffix.lower() in IMAGE_SUFFIXES:
        set_name, class_name, file_name = text.split("/")
        return SceneEntry(folder / set_name / class_name / file_name, class_name, list_path, line_number)
    tokens = text.split()
    if len(tokens) == 2:
        name, class_name = tokens
        image = folder / _with_suffix(name) if "/" in name else folder / list_path.stem / _with_suffix(name)
        return SceneEntry(image, class_name, list_path, line_number)
    raise DataError(
        f"{list_path}:{line_number}: cannot parse {text!r}; expected '<name> <class>' (ADE20K) or "
        f"'<set>/<class>/<file>.jpg' (MIT67, SUN397)"
    )


def parse_list(list_path: Path) -> list[SceneEntry]:
    """Every entry of a list file, in file order (blank lines skipped)."""
    try:
        lines = list_path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read list file {list_path}: {exc.strerror}") from None
    folder = list_path.parent
    return [parse_line(line, folder, list_path, number) for number, line in enumerate(lines, 1) if line.strip()]


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after torchvision's Resize(int): shorter side = short_side, long side truncated."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def resize_shorter(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize so the shorter side equals `short_side`, keeping the aspect ratio."""
    height, width = image.shape[:2]
    new_height, new_width = resized_shape(height, width, short_side)
    if (new_height, new_width) == (height, width):
        return image
    shrinking = new_height * new_width < height * width
    return cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def center_crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop(size) on an image at least size x size."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad to at least size x size, the extra split as torchvision's CenterCrop splits it."""
    height, width = image.shape[:2]
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if not pad_h and not pad_w:
        return image
    return cv2.copyMakeBorder(
        image, pad_h // 2, (pad_h + 1) // 2, pad_w // 2, (pad_w + 1) // 2, cv2.BORDER_CONSTANT, value=(0, 0, 0)
    )


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision CenterCrop(size): zero padding when smaller, then the centred square."""
    image = pad_to(image, size)
    top, left = center_crop_offsets(image.shape[0], image.shape[1], size)
    return image[top : top + size, left : left + size]


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """torchvision RandomCrop(size): offsets uniform over every valid position (padding first if small)."""
    image = pad_to(image, size)
    top = int(rng.integers(0, image.shape[0] - size + 1))
    left = int(rng.integers(0, image.shape[1] - size + 1))
    return image[top : top + size, left : left + size]


def _list_path(cfg: CfgNode, key: str) -> Path:
    value = cfg.DATA[key]
    if not value:
        raise ConfigError(f"'DATA.{key}' is empty: set it to the scene list file (e.g. train.txt / val.txt)")
    path = resolve_data_path(cfg, value)
    if not path.is_file():
        raise DataError(f"scene list file not found: {path} (from DATA.{key})")
    return path


def _warn_shared_names(train_entries: list[SceneEntry], val_entries: list[SceneEntry]) -> None:
    """SUN397's two DCT lists name the same files (spec dct pitfall 8); say so instead of hiding it."""
    train_names = {(entry.class_name, entry.image_path.name) for entry in train_entries}
    shared = sum((entry.class_name, entry.image_path.name) in train_names for entry in val_entries)
    if shared:
        logger.warning(
            "%d of %d evaluation images share class and file name with a training image (%s vs %s); "
            "check the split against the official partitions before publishing results",
            shared, len(val_entries), val_entries[0].list_path, train_entries[0].list_path,
        )


@DATASETS.register("scene_list")
class SceneList(Dataset):
    """A scene-recognition split read from a DCT list file: DATA.TRAIN for "train", DATA.VAL for "val".

    Items: `image` (uint8 HWC in DATA.COLOR order; IMAGE_SIZE square, or RESIZE square for ten-crop
    evaluation), `label`, `index`, and for training with `request.contrast_negatives` = K > 0 `contrast_index`
    (see `data.cifar.ContrastSampler`; the pool "dct_first_n" reproduces the DCT scene quirk).
    Random crops and negatives follow the epoch of the loader's `SampleIndex` (or `set_epoch`).
    """

    def __init__(self, cfg: CfgNode, split: str = "train", request: BatchRequest | None = None) -> None:
        if split not in ("train", "val", "test"):
            raise ConfigError(f"scene split must be 'train' or 'val', got {split!r}")
        self.training = split == "train"
        list_path = _list_path(cfg, "TRAIN" if self.training else "VAL")
        self.entries = parse_list(list_path)
        if not self.entries:
            raise DataError(f"{list_path}: the list is empty")
        # the other split's list: for the shared-name check, and for class names without a class file
        other_key = "VAL" if self.training else "TRAIN"
        other_entries = parse_list(_list_path(cfg, other_key)) if cfg.DATA[other_key] else []
        if other_entries and not self.training:
            _warn_shared_names(other_entries, self.entries)

        class_file = list_path.parent / CLASS_FILE
        if class_file.is_file():
            self.class_names = read_class_file(class_file)
        else:
            self.class_names = sorted({entry.class_name for entry in [*self.entries, *other_entries]})
        class_ids = {name: number for number, name in enumerate(self.class_names)}
        for entry in self.entries:
            if entry.class_name not in class_ids:
                source = class_file if class_file.is_file() else "the list files"
                raise DataError(
                    f"{entry.list_path}:{entry.line_number}: class {entry.class_name!r} is not in {source}"
                )
        self.labels = np.array([class_ids[entry.class_name] for entry in self.entries], dtype=np.int64)
        self.num_classes = cfg.DATA.NUM_CLASSES or len(self.class_names)
        if self.labels.max() >= self.num_classes:
            raise ConfigError(f"DATA.NUM_CLASSES = {self.num_classes} but {list_path} uses {len(self.class_names)}")

        self.color = cfg.DATA.COLOR
        self.resize = int(cfg.DATA.RESIZE)
        self.image_size = int(cfg.DATA.IMAGE_SIZE)
        self.random_crop = self.training and bool(cfg.DATA.RANDOM_CROP)
        self.ten_crop = not self.training and bool(cfg.DATA.TEN_CROP)
        if self.ten_crop and self.resize < self.image_size:
            raise ConfigError("DATA.TEN_CROP needs DATA.RESIZE >= DATA.IMAGE_SIZE (e.g. 256 and 224)")
        self.seed = int(cfg.EXPERIMENT.SEED)
        self.epoch = 0
        request = request or NOTHING_EXTRA
        self.contrast_negatives = request.contrast_negatives if self.training else 0
        self.contrast: ContrastSampler | None = None
        if self.contrast_negatives > 0:
            self.contrast = ContrastSampler(self.labels, self.num_classes, request.contrast_pool)
        logger.info("scene %s: %d images, %d classes from %s", split, len(self.labels), self.num_classes, list_path)

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """The epoch for plain-int indices (a loader `SampleIndex` brings its own, also into workers)."""
        self.epoch = int(epoch)

    def read_image(self, index: int) -> np.ndarray:
        """The listed image as decoded by OpenCV (BGR uint8, grey images expanded to three channels)."""
        entry = self.entries[index]
        image = cv2.imread(str(entry.image_path), cv2.IMREAD_COLOR)
        if image is None:
            problem = "cannot decode image" if entry.image_path.is_file() else "image not found"
            raise DataError(f"{entry.list_path}:{entry.line_number}: {problem}: {entry.image_path}")
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch = getattr(index, "epoch", self.epoch)  # a loader `SampleIndex` carries its epoch
        index = int(index)
        image = self.read_image(index)
        if self.resize > 0:
            image = resize_shorter(image, self.resize)
        if self.ten_crop:
            image = center_crop(image, self.resize)
        elif self.random_crop:
            image = random_crop(image, self.image_size, sample_rng(self.seed, epoch, index, STREAM_CROP))
        else:
            image = center_crop(image, self.image_size)
        if self.color == "rgb":
            image = image[..., ::-1]
        item: dict[str, Any] = {"image": np.ascontiguousarray(image), "label": int(self.labels[index]), "index": index}
        if self.contrast is not None:
            rng = sample_rng(self.seed, epoch, index, STREAM_CONTRAST)
            item["contrast_index"] = self.contrast.draw(index, self.contrast_negatives, rng)
        return item
