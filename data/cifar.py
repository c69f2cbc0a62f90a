"""CIFAR-100 from its python pickles (dataset `cifar100`), and CRD's class-aware negative sampling.

The official `cifar-100-python` archive holds three pickles written by Python 2's cPickle: `train`
and `test` (`data`: uint8 N x 3072, each row the 1024 R, then G, then B values of a row-major 32 x 32
image; `fine_labels`, `coarse_labels`, `filenames`, `batch_label`) and `meta` (`fine_label_names`,
`coarse_label_names`). A pickle can run arbitrary code while loading, so they are read with an
unpickler that admits only the few globals a NumPy array needs.

CRD (RepDistiller `CIFAR100InstanceSample`, mode 'exact') pairs every training sample with K
negatives drawn uniformly, without replacement unless K exceeds the pool, from the samples of the
other classes; column 0 of `contrast_index` is the sample itself. `ContrastSampler` implements that
draw for one sample (in `__getitem__`) and for a batch of indices (the device-resident path); the
scene datasets reuse it.
"""

from __future__ import annotations

import codecs
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from yacs.config import CfgNode

from data import DATASETS
from data.loader import sample_rng
from data.requests import CONTRAST_POOLS, NOTHING_EXTRA, BatchRequest
from utility.config import resolve_data_path
from utility.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

CIFAR_FOLDER = "cifar-100-python"
SPLIT_FILES = {"train": "train", "val": "test", "test": "test"}
IMAGE_SIDE = 32

# RNG streams, so the crop and contrast draws of one (seed, epoch, index) never share random numbers.
STREAM_CONTRAST = 1
STREAM_CROP = 2

# NumPy's array reconstructor lives in numpy.core (NumPy 1, and Python 2 pickles) or numpy._core
# (NumPy 2); take the function from an array's own reduce tuple instead of importing either module.
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles from Python 3 use it for bytes, limited to latin-1."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1", errors)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a pickled NumPy array needs; anything else is refused
    before it is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a data pickle")
        return allowed


def _as_text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def load_pickle(path: Path) -> dict[str, Any]:
    """Read one CIFAR pickle (Python 2 or 3) safely; keys come back as `str`."""
    if not path.is_file():
        raise DataError(f"CIFAR file not found: {path} (expected the unpacked '{CIFAR_FOLDER}' folder)")
    try:
        with path.open("rb") as handle:
            content = RestrictedUnpickler(handle, encoding="latin1").load()
    except Exception as exc:  # any unpickling failure means the file is not a usable CIFAR pickle
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: a CIFAR pickle holds a dict, found {type(content).__name__}")
    return {_as_text(key): value for key, value in content.items()}


def planar_to_hwc(rows: np.ndarray) -> np.ndarray:
    """N x 3072 channel-planar rows (R plane, G plane, B plane) -> N x 32 x 32 x 3 RGB images."""
    planes = rows.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def find_cifar_folder(path: Path) -> Path:
    """The folder holding `train`/`test`/`meta`: `path` itself or its `cifar-100-python` child."""
    if (path / "train").is_file() or (path / "test").is_file():
        return path
    if (path / CIFAR_FOLDER).is_dir():
        return path / CIFAR_FOLDER
    raise DataError(
        f"{path}: no CIFAR-100 pickles here; expected 'train', 'test' and 'meta' in this folder or in "
        f"'{path / CIFAR_FOLDER}'"
    )


def read_split(pickle_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 32 x 32 x 3 uint8 RGB, fine labels int64) of one split pickle."""
    content = load_pickle(pickle_path)
    for key in ("data", "fine_labels"):
        if key not in content:
            raise DataError(f"{pickle_path}: key '{key}' missing (keys found: {sorted(content)})")
    rows = np.asarray(content["data"])
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3 * IMAGE_SIDE * IMAGE_SIDE:
        raise DataError(f"{pickle_path}: 'data' must be uint8 N x 3072, found {rows.dtype} {rows.shape}")
    labels = np.asarray(content["fine_labels"], dtype=np.int64)
    if labels.shape != (rows.shape[0],):
        raise DataError(f"{pickle_path}: {labels.size} fine_labels for {rows.shape[0]} images")
    return planar_to_hwc(rows), labels


def read_class_names(meta_path: Path) -> list[str]:
    """`fine_label_names` from the `meta` pickle, in label order."""
    content = load_pickle(meta_path)
    if "fine_label_names" not in content:
        raise DataError(f"{meta_path}: key 'fine_label_names' missing (keys found: {sorted(content)})")
    return [_as_text(name) for name in content["fine_label_names"]]


class ContrastSampler:
    """CRD's contrast indices: [own index, K indices drawn uniformly from the samples of other classes].

    Negatives are drawn without replacement unless K is larger than the pool (RepDistiller's
    `replace = K > len(cls_negative[label])`). Instead of one pool array per class, the pool members
    are kept sorted by class once; the negatives of class c are that order with c's block removed, so a
    draw picks positions in the shorter range and skips over the block.

    `pool="dct_first_n"` reproduces the DCT repository's scene CRD dataset, whose pools are built from
    only the first `num_classes` training samples (spec dct pitfall 2); `"class"` uses every sample.
    """

    def __init__(self, labels: np.ndarray, num_classes: int, pool: str = "class") -> None:
        if pool not in CONTRAST_POOLS:
            raise ConfigError(f"contrast pool must be one of {list(CONTRAST_POOLS)}, got {pool!r}")
        self.labels = np.asarray(labels, dtype=np.int64)
        members = np.arange(len(self.labels) if pool == "class" else min(num_classes, len(self.labels)))
        self._order = members[np.argsort(self.labels[members], kind="stable")]
        self._counts = np.bincount(self.labels[members], minlength=num_classes)
        self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])

    def draw(self, index: int, k: int, rng: np.random.Generator) -> np.ndarray:
        """int64 array of length k + 1: `index`, then k negatives of other classes."""
        label = self.labels[index]
        start, count = self._starts[label], self._counts[label]
        pool_size = len(self._order) - count
        if pool_size <= 0:
            raise DataError(f"CRD: no samples outside class {label} to draw negatives from")
        positions = rng.choice(pool_size, size=k, replace=k > pool_size)
        np.add(positions, count, out=positions, where=positions >= start)
        out = np.empty(k + 1, dtype=np.int64)
        out[0] = index
        np.take(self._order, positions, out=out[1:])
        return out

    def draw_batch(self, indices: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """B x (k + 1) int64 array, one `draw` per row, all from the same generator."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(indices), k + 1), dtype=np.int64)
        for row, index in enumerate(indices):
            out[row] = self.draw(int(index), k, rng)
        return out


def _split_paths(cfg: CfgNode, split: str) -> tuple[Path, Path]:
    """(split pickle, meta pickle) for `split`; DATA.VAL, when set, overrides the folder for "val"."""
    if split not in SPLIT_FILES:
        raise ConfigError(f"CIFAR-100 split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    source = cfg.DATA.TRAIN if split == "train" or not cfg.DATA.VAL else cfg.DATA.VAL
    if not source:
        raise ConfigError("'DATA.TRAIN' is empty: set it to the CIFAR-100 folder")
    path = resolve_data_path(cfg, source)
    if path.is_file():  # a split pickle named directly, e.g. DATA.VAL = .../cifar-100-python/test
        return path, path.parent / "meta"
    folder = find_cifar_folder(path)
    return folder / SPLIT_FILES[split], folder / "meta"


@DATASETS.register("cifar100")
class CIFAR100(Dataset):
    """CIFAR-100 train ("train") or test ("val") split, fully in memory as uint8 HWC images.

    Items: `image` (32 x 32 x 3 uint8, DATA.COLOR order), `label`, `index`, and for the training split
    with `request.contrast_negatives` = K > 0 also `contrast_index` (K + 1 int64, see `ContrastSampler`), drawn
    from `data.loader.sample_rng(EXPERIMENT.SEED, epoch, index)`, the epoch taken from the loader's
    `SampleIndex` (or `set_epoch` for plain ints). `images` is the whole split as one N x 32 x 32 x 3
    uint8 tensor (sharing memory with the items) so the loader can keep it on the device when
    DATA.ON_DEVICE.
    """

    def __init__(self, cfg: CfgNode, split: str = "train", request: BatchRequest | None = None) -> None:
        split_path, meta_path = _split_paths(cfg, split)
        images, labels = read_split(split_path)
        self.class_names = read_class_names(meta_path)
        self.num_classes = cfg.DATA.NUM_CLASSES or len(self.class_names)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataError(
                f"{split_path}: fine_labels span {labels.min()}..{labels.max()}, outside the "
                f"{self.num_classes} classes of {meta_path} (or DATA.NUM_CLASSES)"
            )
        if cfg.DATA.COLOR == "bgr":
            images = np.ascontiguousarray(images[..., ::-1])
        self.split = split
        self.path = split_path
        self.labels = labels
        self.images = torch.from_numpy(images)
        self._images = images
        self.seed = int(cfg.EXPERIMENT.SEED)
        self.epoch = 0
        request = request or NOTHING_EXTRA
        self.contrast_negatives = request.contrast_negatives if split == "train" else 0
        self.contrast: ContrastSampler | None = None
        if self.contrast_negatives > 0:
            self.contrast = ContrastSampler(labels, self.num_classes, request.contrast_pool)
        logger.info("CIFAR-100 %s: %d images, %d classes from %s", split, len(labels), self.num_classes, split_path)

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """The epoch for plain-int indices (a loader `SampleIndex` brings its own, also into workers)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch = getattr(index, "epoch", self.epoch)  # a loader `SampleIndex` carries its epoch
        index = int(index)
        item: dict[str, Any] = {"image": self._images[index], "label": int(self.labels[index]), "index": index}
        if self.contrast is not None:
            rng = sample_rng(self.seed, epoch, index, STREAM_CONTRAST)
            item["contrast_index"] = self.contrast.draw(index, self.contrast_negatives, rng)
        return item

    def batch_extras(self, indices: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        """Per-batch extras for the device-resident path: the contrast indices (B x (K + 1))."""
        if self.contrast is None:
            return {}
        drawn = self.contrast.draw_batch(indices, self.contrast_negatives, rng)
        return {"contrast_index": torch.as_tensor(drawn, dtype=torch.long)}
