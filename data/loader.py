"""Dataset selection and the loaders that feed the trainer: uint8 batches, exactly resumable.

- `build_dataset` picks the registered dataset from `DATA.FORMAT` (or infers it from the path).
- `ResumableSampler` yields one epoch of index batches per rank: a permutation seeded by
  (seed, epoch), sharded across DDP ranks, restartable at any batch (`set_start`), so a resumed run
  sees the same remaining batches it would have seen.
- `build_train_loader` wraps it in a DataLoader (worker processes seeded per (seed, rank, worker);
  persistent workers; pinned memory on CUDA only) or, for `DATA.ON_DEVICE` datasets with a resident
  `images` tensor (CIFAR), slices batches straight out of device memory.

Indices reach datasets as `SampleIndex` (an `int` that also carries the epoch), so a dataset in a
persistent worker can draw its per-sample randomness from `sample_rng(seed, epoch, index)`:
independent of worker count and scheduling, and reproducible after a resume.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data import DATASETS
from data.bad_samples import SkipBadSamples
from data.requests import BatchRequest
from utility.config import resolve_data_path
from utility.errors import ConfigError, DataError
from utility.seed import worker_seed

logger = logging.getLogger(__name__)

_FORMATS_HELP = (
    "a .rec file (face_recordio), a *.list file such as train.list (face_image_list), a folder with "
    "image/<class>/ sub-folders (face_folder), a CIFAR-100 python folder with train/test/meta (cifar100), "
    "or a .txt image list (scene_list); or set DATA.FORMAT to a registered dataset name"
)


class SampleIndex(int):
    """A dataset index (an ordinary `int`) that also carries the epoch it was drawn for."""

    epoch: int

    def __new__(cls, value: int, epoch: int = 0) -> SampleIndex:
        index = super().__new__(cls, value)
        index.epoch = epoch
        return index

    def __reduce__(self) -> tuple[Any, tuple[int, int]]:
        return SampleIndex, (int(self), self.epoch)


def sample_epoch(index: int) -> int:
    """The epoch a `SampleIndex` was drawn for (0 for a plain int)."""
    return int(getattr(index, "epoch", 0))


def sample_rng(seed: int, epoch: int, index: int, *parts: int) -> np.random.Generator:
    """A NumPy generator for one sample's random choices, fixed by (seed, epoch, index, *parts)."""
    return np.random.default_rng(worker_seed(int(seed), int(epoch), int(index), *parts))


def infer_format(path: Path) -> str:
    """The dataset registry name a training path implies."""
    if path.suffix == ".rec" or (path.is_dir() and (path / "train.rec").is_file()):
        return "face_recordio"
    if path.suffix == ".list" or path.name == "train.list":
        return "face_image_list"
    if path.is_dir() and (path / "image").is_dir():
        return "face_folder"
    if path.is_dir() and all((path / name).is_file() for name in ("train", "test", "meta")):
        return "cifar100"
    if path.suffix == ".txt":
        return "scene_list"
    raise DataError(f"cannot tell the dataset format of {path}; expected {_FORMATS_HELP}")


def build_dataset(cfg: Any, split: str = "train", request: BatchRequest | None = None) -> Dataset:
    """The dataset for `split` ("train" reads DATA.TRAIN, "val" reads DATA.VAL); `request` says what the
    training batches must carry beyond image/label/index (`kd.batch_request(cfg)`; none by default)."""
    name = cfg.DATA.FORMAT
    if name == "auto":
        raw = cfg.DATA.TRAIN if split == "train" else cfg.DATA.VAL
        key = "DATA.TRAIN" if split == "train" else "DATA.VAL"
        if not raw:
            raise ConfigError(f"'{key}' is empty; set it to {_FORMATS_HELP}")
        path = resolve_data_path(cfg, raw)
        if not path.exists():
            hint = (f"DATA.ROOT is empty: set it to the folder that holds {raw!r}" if not cfg.DATA.ROOT
                    else "check DATA.ROOT")
            raise DataError(f"{key} = {raw!r} resolves to {path}, which does not exist ({hint})")
        name = infer_format(path)
    return DATASETS.build(name, cfg=cfg, split=split, request=request)


class ResumableSampler:
    """Index batches for one epoch on one rank: shuffled per (seed, epoch), resumable mid-epoch.

    The epoch's permutation is cut to a multiple of `world_size * batch_size` (drop_last) or padded
    by wrapping around to a multiple of `world_size` (as DistributedSampler); rank r takes every
    `world_size`-th index starting at r, so ranks are disjoint and together cover the epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        if batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ConfigError(f"bad sampler setup: batch {batch_size}, rank {rank}, world size {world_size}")
        if drop_last and num_samples < batch_size * world_size:
            raise DataError(
                f"the dataset holds {num_samples} samples, fewer than one global batch of "
                f"{batch_size * world_size}; lower SOLVER.BATCH_SIZE"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its own permutation); also resets the start batch to 0."""
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, batch_in_epoch: int) -> None:
        """Skip the first `batch_in_epoch` batches of the current epoch (resume mid-epoch)."""
        self.start = int(batch_in_epoch)

    def _samples_per_rank(self) -> int:
        if self.drop_last:
            return self.num_samples // (self.batch_size * self.world_size) * self.batch_size
        return -(-self.num_samples // self.world_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the full epoch, whatever `set_start` says)."""
        per_rank = self._samples_per_rank()
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def epoch_indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(worker_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        total = self._samples_per_rank() * self.world_size
        if total > self.num_samples:
            order = torch.cat([order, order[: total - self.num_samples]])
        return order[:total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[SampleIndex]]:
        indices = self.epoch_indices().tolist()
        for batch in range(self.start, len(self)):
            chunk = indices[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield [SampleIndex(index, self.epoch) for index in chunk]


class _SeedWorker:
    """worker_init_fn: seeds Python, NumPy and torch per (seed, rank, worker) in each worker."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed = seed
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        seed = worker_seed(self.seed, self.rank, worker_id)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def default_device(cfg: Any) -> torch.device:
    """EXPERIMENT.DEVICE as a torch.device ("auto" = the current CUDA device when there is one)."""
    name = cfg.EXPERIMENT.DEVICE
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class TrainLoader:
    """An epoch's uint8 batches (dicts of tensors), with `set_epoch`, `set_start`, `batches_per_epoch`."""

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, loader: DataLoader | None = None,
                 device: torch.device | None = None) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self._loader = loader
        self.device = device
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        if loader is None:
            self._images = torch.as_tensor(np.asarray(dataset.images)).to(device)
            self._labels = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.long).to(device)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):  # in-process copy; workers read SampleIndex.epoch
            self.dataset.set_epoch(epoch)

    def set_start(self, batch_in_epoch: int) -> None:
        self.sampler.set_start(batch_in_epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._loader is not None:
            yield from self._loader
            return
        for number, batch in enumerate(self.sampler, self.sampler.start):
            indices = torch.tensor([int(i) for i in batch], dtype=torch.long)
            on_device = indices.to(self.device)
            item = {"image": self._images[on_device], "label": self._labels[on_device], "index": on_device}
            item.update(to_device(self._extras(indices, number), self.device))
            yield item

    def _extras(self, indices: torch.Tensor, batch_number: int) -> dict[str, Any]:
        """Per-batch extras of a device-resident dataset (contrast indices), from the dataset's
        `batch_extras(indices, rng)` with a generator seeded per (seed, epoch, batch, rank)."""
        extras = getattr(self.dataset, "batch_extras", None)
        if extras is None:
            return {}
        rng = sample_rng(self.sampler.seed, self.sampler.epoch, batch_number, self.sampler.rank)
        return extras(indices.numpy(), rng)


def _private_generator(seed: int) -> torch.Generator:
    """The DataLoader draws its worker base seed from this, not from the global RNG: creating an
    iterator (at resume, or for an evaluation) must not shift the stream dropout draws from."""
    return torch.Generator().manual_seed(seed)


def _pin_memory(cfg: Any, device: torch.device) -> bool:
    return bool(cfg.DATA.PIN_MEMORY) and device.type == "cuda" and torch.cuda.is_available()


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@functools.cache
def _note_capped(requested: int, cores: int) -> None:
    logging.getLogger(__name__).info(
        "DATA.WORKERS %d exceeds the %d available cores; using %d worker processes", requested, cores, cores)


def worker_count(cfg: Any) -> int:
    """DATA.WORKERS capped at the available cores (more processes than cores only compete).

    The cap is logged once per process (not once per loader); DataLoader's own warning about too
    many workers then never fires.
    """
    requested, cores = int(cfg.DATA.WORKERS), available_cores()
    if requested > cores:
        _note_capped(requested, cores)
        return cores
    return requested


def build_train_loader(cfg: Any, dataset: Dataset, batch_size_per_rank: int, seed: int, rank: int = 0,
                       world_size: int = 1, device: torch.device | str | None = None) -> TrainLoader:
    """Shuffled, sharded, resumable training batches (drop_last: every step sees a full batch).

    With `DATA.ON_DEVICE` and a dataset exposing `images` (N x H x W x 3 uint8) and `labels`, the
    whole set lives on `device` and batches are gathered there; a dataset method
    `batch_extras(indices, rng) -> dict` adds per-batch extras (contrast indices) in that mode.
    """
    device = torch.device(device) if device is not None else default_device(cfg)
    sampler = ResumableSampler(len(dataset), batch_size_per_rank, seed, rank, world_size, shuffle=True,
                               drop_last=True)
    if cfg.DATA.ON_DEVICE and hasattr(dataset, "images"):
        return TrainLoader(dataset, sampler, None, device)
    workers = worker_count(cfg)
    loader = DataLoader(
        SkipBadSamples(dataset),  # an undecodable sample is replaced and counted, not fatal
        batch_sampler=sampler,
        num_workers=workers,
        worker_init_fn=_SeedWorker(seed, rank) if workers > 0 else None,
        generator=_private_generator(seed),
        persistent_workers=workers > 0,
        pin_memory=_pin_memory(cfg, device),
    )
    return TrainLoader(dataset, sampler, loader, device)


def build_eval_loader(cfg: Any, dataset: Dataset, batch_size: int) -> DataLoader:
    """Sequential batches over the whole dataset (no shuffling, last batch kept)."""
    workers = worker_count(cfg)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=workers,
        worker_init_fn=_SeedWorker(int(cfg.EXPERIMENT.SEED), 0) if workers > 0 else None,
        generator=_private_generator(int(cfg.EXPERIMENT.SEED)),
        pin_memory=_pin_memory(cfg, default_device(cfg)),
    )


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move every tensor of a batch to `device` (non-blocking; other values pass through)."""
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }
