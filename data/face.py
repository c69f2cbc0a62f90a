"""Face-recognition training sets: insightface RecordIO, `train.list`, and class-folder trees.

Every dataset returns `dict(image, label, index)` (H x W x 3 uint8 in `DATA.COLOR` order) plus:
- `partner`, `partner_index` when the method's `BatchRequest` asks for "table" partners: a
  same-identity partner from an int64 `.npy` table with one partner index per sample
  (`DATA.PARTNER_TABLE`, written by `python -m engine.partners`);
- `image_lr` (and `partner_lr`), `lowres_size` when `DATA.LOWRES.BACKEND` is "opencv": F-SKD's LR
  view made here with OpenCV on uint8, seeded per (seed, epoch, index) so it does not depend on
  worker scheduling; the device transform then flips both views together.
Labels come from the record headers (not `train.list`'s `os.listdir` order, `spec/face.md` §9 #12).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from data import DATASETS
from data.lists import read_image, read_image_list, scan_class_folders
from data.loader import sample_epoch, sample_rng
from data.lowres import random_degrade_opencv
from data.recordio import RecordIO, decode_image, label_range, label_value
from data.requests import NOTHING_EXTRA, BatchRequest
from utility.config import resolve_data_path
from utility.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MAX_CLASSES = 1 << 24  # sane bound on a label read from a file (WebFace42M has 2 M identities)


def _split_path(cfg: Any, split: str) -> Path:
    key = "TRAIN" if split == "train" else "VAL"
    raw = cfg.DATA[key]
    if not raw:
        raise ConfigError(f"'DATA.{key}' is empty; set it to the face training data")
    return resolve_data_path(cfg, raw)


class FaceDataset(Dataset, ABC):
    """Shared item assembly: colour order, size check, partner table, OpenCV LR view."""

    def __init__(self, cfg: Any, split: str, labels: np.ndarray, num_classes: int,
                 request: BatchRequest | None = None) -> None:
        self.cfg = cfg
        self.split = split
        self.color = cfg.DATA.COLOR
        self.image_size = int(cfg.DATA.IMAGE_SIZE)
        self.seed = int(cfg.EXPERIMENT.SEED)
        self.labels = np.asarray(labels, dtype=np.int64)
        if cfg.DATA.NUM_CLASSES > 0:
            if len(self.labels) and cfg.DATA.NUM_CLASSES <= int(self.labels.max()):
                raise ConfigError(
                    f"'DATA.NUM_CLASSES' is {cfg.DATA.NUM_CLASSES} but the data has label {int(self.labels.max())}"
                )
            num_classes = int(cfg.DATA.NUM_CLASSES)
        self.num_classes = int(num_classes)
        lowres = cfg.DATA.LOWRES
        self.opencv_lowres = split == "train" and lowres.BACKEND == "opencv" and len(lowres.SIZES) > 0
        request = request or NOTHING_EXTRA
        self.partners = self._load_partners() if split == "train" and request.partner == "table" else None

    def _load_partners(self) -> np.ndarray:
        raw = self.cfg.DATA.PARTNER_TABLE
        if not raw:
            raise ConfigError("'DATA.PARTNER' is 'table' but 'DATA.PARTNER_TABLE' is empty; "
                              "write one with `python -m engine.partners --config CONFIG`")
        path = resolve_data_path(self.cfg, raw)
        try:
            table = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the partner table {path}: {exc}") from None
        if table.ndim != 1 or table.dtype.kind not in "iu" or len(table) != len(self.labels):
            raise DataError(
                f"{path}: a partner table is a 1-D integer array with one entry per sample "
                f"({len(self.labels)}), got shape {table.shape} {table.dtype}; rebuild it for this data"
            )
        if len(table) and (table.min() < 0 or table.max() >= len(self.labels)):
            raise DataError(f"{path}: partner indices must lie in [0, {len(self.labels)})")
        return table.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def load_image(self, index: int) -> np.ndarray:
        """The decoded H x W x 3 uint8 image of sample `index` in BGR."""

    def label_of(self, index: int) -> int:
        return int(self.labels[index])

    def _image(self, index: int) -> np.ndarray:
        image = self.load_image(index)
        if image.shape[:2] != (self.image_size, self.image_size):
            image = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_LINEAR)
        if self.color == "rgb":
            image = np.ascontiguousarray(image[:, :, ::-1])
        return image

    def _lowres(self, image: np.ndarray, index: int, epoch: int, stream: int) -> tuple[np.ndarray, int]:
        lowres = self.cfg.DATA.LOWRES
        rng = sample_rng(self.seed, epoch, index, stream)
        return random_degrade_opencv(image, rng, [int(s) for s in lowres.SIZES], float(lowres.HR_PROB),
                                     self.image_size, lowres.DOWN, lowres.UP)

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch = sample_epoch(index)
        position = int(index)
        image = self._image(position)
        item: dict[str, Any] = {"image": image, "label": self.label_of(position), "index": position}
        if self.opencv_lowres:
            item["image_lr"], item["lowres_size"] = self._lowres(image, position, epoch, 0)
        if self.partners is not None:
            partner = int(self.partners[position])
            item["partner"] = self._image(partner)
            item["partner_index"] = partner
            if self.opencv_lowres:
                item["partner_lr"], _ = self._lowres(item["partner"], position, epoch, 1)
        return item


@DATASETS.register("face_recordio")
class FaceRecordIO(FaceDataset):
    """insightface `train.rec`/`train.idx` (or a folder holding them); labels from record headers.

    Record 0 with flag > 0 gives (L0, L1): images are keys 1..L0-1 and identity records L0..L1-1
    give num_classes and each class's key range. Without it (a plain im2rec file) every indexed
    record is an image, in index order, and num_classes is max label + 1.
    """

    def __init__(self, cfg: Any, split: str = "train", request: BatchRequest | None = None) -> None:
        path = _split_path(cfg, split)
        if path.is_dir():
            path = path / "train.rec"
        self.record = RecordIO(path)
        labels, num_classes = self._scan()
        super().__init__(cfg, split, labels, num_classes, request)

    def _scan(self) -> tuple[np.ndarray, int]:
        record = self.record
        count = len(record)  # every number read from the headers is checked against this
        header0 = record.read_header(0) if 0 in record else None
        if header0 is not None and header0.flag > 0:
            first_identity, end = label_range(header0, f"{record.rec_path}: header record 0", 1, count + 1)
            self.keys = np.arange(1, first_identity, dtype=np.int64)
            labels = np.full(len(self.keys), -1, dtype=np.int64)
            for label, identity_key in enumerate(range(first_identity, end)):
                start, stop = label_range(record.read_header(identity_key),
                                          f"{record.rec_path}: identity record {identity_key}", 1, first_identity)
                labels[start - 1 : stop - 1] = label
            if (labels < 0).any():
                logger.info("%s: identity records do not cover every image; reading image headers", record.rec_path)
                labels = np.asarray([self._header_label(int(k)) for k in self.keys], dtype=np.int64)
            num_classes = end - first_identity
        else:
            self.keys = np.asarray(record.keys, dtype=np.int64)
            labels = np.asarray([self._header_label(int(k)) for k in self.keys], dtype=np.int64)
            num_classes = int(labels.max()) + 1 if len(labels) else 0
        if not len(self.keys):
            raise DataError(f"{record.rec_path}: holds no image records")
        return labels, max(num_classes, int(labels.max()) + 1)

    def _header_label(self, key: int) -> int:
        """A label from an image header: a whole number below MAX_CLASSES (it sizes the head)."""
        return label_value(self.record.read_header(key), f"{self.record.rec_path}: record {key}", MAX_CLASSES)

    def load_image(self, index: int) -> np.ndarray:
        key = int(self.keys[index])
        _, payload = self.record.read(key)
        return decode_image(payload, "bgr", source=f"{self.record.rec_path}: record {key}")


@DATASETS.register("face_image_list")
class FaceImageList(FaceDataset):
    """Images and labels from a `train.list` (`<path>  <label>` per line)."""

    def __init__(self, cfg: Any, split: str = "train", request: BatchRequest | None = None) -> None:
        path = _split_path(cfg, split)
        if path.is_dir():
            path = path / "train.list"
        self.paths, labels = read_image_list(path)
        super().__init__(cfg, split, labels, int(labels.max()) + 1, request)

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self.paths[index], "bgr")


@DATASETS.register("face_folder")
class FaceFolder(FaceDataset):
    """An `image/<class>/<file>.jpg` tree (the folder holding `image/`, or the class root itself)."""

    def __init__(self, cfg: Any, split: str = "train", request: BatchRequest | None = None) -> None:
        path = _split_path(cfg, split)
        root = path / "image" if (path / "image").is_dir() else path
        self.paths, labels, self.classes = scan_class_folders(root)
        super().__init__(cfg, split, labels, len(self.classes), request)

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self.paths[index], "bgr")
