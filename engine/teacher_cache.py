"""Teacher-output cache: run a frozen teacher once per training sample instead of once per step.

With a frozen teacher and a teacher view that only ever varies by a horizontal flip, the teacher's
output for a sample is one of two fixed vectors. `DATA.TEACHER_CACHE` names a folder where they are
precomputed before training (both flips, in eval mode, on the exact full-resolution view the
training transform gives the teacher) and stored as float32 `.npy` arrays that are memory-mapped
during training: `out.npy` [N, 2, D] (embedding or logits) and, when the teacher has a head,
`logits.npy` [N, 2, C] (the head at the sample's label, margin included, as the training step
computes it). The distiller then reads the rows of `batch["index"]` at `batch["flip"]` and never
runs the teacher.

`manifest.json` holds the key the arrays were built for: the SHA-256 of the teacher checkpoint(s),
the training data's identity (resolved path, size, mtime, top-level entries of a folder, sample
count, labels), the pre-processing keys and the teacher's config. Any difference rebuilds. Arrays
are written under temporary names and renamed, and the manifest is written last, so an interrupted
build never leaves a cache that looks valid.

Only methods that declare `cacheable_teacher` (they read nothing but the teacher's `out` / logits)
may use it; every other method, and every augmentation that changes the teacher view beyond a flip,
is refused with a ConfigError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor

from data.requests import BatchRequest
from data.transforms import TrainTransform
from engine import distributed as dist
from kd import batch_request, teacher_cache_refusal
from kd.base import Distiller
from models.features import Features
from utility.config import resolve_data_path
from utility.errors import ConfigError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def check_cacheable(cfg: Any, request: BatchRequest | None = None) -> None:
    """Raise ConfigError unless DATA.TEACHER_CACHE can reproduce the live teacher for this config: every
    method must declare its teacher cacheable, and the teacher view may vary only by a flip."""
    refusal = teacher_cache_refusal(cfg)
    if refusal:
        raise ConfigError(f"DATA.TEACHER_CACHE stores only the teacher's output and logits; {refusal}. "
                          "Set DATA.TEACHER_CACHE ''")
    request = request or batch_request(cfg)
    data = cfg.DATA
    reasons = []
    if int(data.CROP_PADDING) > 0:
        reasons.append("DATA.CROP_PADDING > 0 (random crops)")
    if bool(data.RANDOM_CROP):
        reasons.append("DATA.RANDOM_CROP (random crops)")
    if request.partner:
        reasons.append("DATA.PARTNER (partner views)")
    if reasons:
        raise ConfigError(f"DATA.TEACHER_CACHE needs a teacher view that only varies by a flip, but {reasons[0]} "
                          "changes it; turn that off or set DATA.TEACHER_CACHE ''")
    if str(cfg.TEACHER.HEAD) == "adaface":
        raise ConfigError("DATA.TEACHER_CACHE cannot store an AdaFace teacher head's logits (they depend on the "
                          "batch through its running norm statistics); set DATA.TEACHER_CACHE ''")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _data_identity(path: Path) -> dict[str, Any]:
    """Path, size and mtime of the training data; for a folder also of its top-level entries
    (a CIFAR folder's `train` file is rewritten in place without touching the folder's mtime)."""
    stat = path.stat()
    identity: dict[str, Any] = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if path.is_dir():
        identity["entries"] = sorted(
            (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns) for entry in os.scandir(path)
        )
    return identity


def cache_key(cfg: Any, dataset: Any, with_logits: bool) -> dict[str, Any]:
    """Everything the cached outputs depend on (JSON-serialisable; compared for equality)."""
    teacher = cfg.TEACHER
    checkpoints = {"checkpoint": _file_sha256(Path(teacher.CHECKPOINT).expanduser())}
    if teacher.HEAD_CHECKPOINT:
        checkpoints["head_checkpoint"] = _file_sha256(Path(teacher.HEAD_CHECKPOINT).expanduser())
    labels = np.ascontiguousarray(np.asarray(dataset.labels, dtype=np.int64))
    return {
        "version": FORMAT_VERSION,
        "teacher_sha256": checkpoints,
        "teacher_config": json.loads(json.dumps(dict(teacher), default=str)),
        "data": _data_identity(resolve_data_path(cfg, cfg.DATA.TRAIN).resolve()),
        "num_samples": len(dataset),
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
        "color": str(cfg.DATA.COLOR),
        "image_size": int(cfg.DATA.IMAGE_SIZE),
        "mean": [float(v) for v in cfg.DATA.MEAN],
        "std": [float(v) for v in cfg.DATA.STD],
        "with_logits": bool(with_logits),
    }


class TeacherCache:
    """Memory-mapped teacher outputs; `lookup` stands in for the frozen teacher's forward."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.out = np.load(folder / "out.npy", mmap_mode="r")
        logits_path = folder / "logits.npy"
        self.logits = np.load(logits_path, mmap_mode="r") if logits_path.is_file() else None

    def lookup(self, index: Tensor, flip: Tensor, with_logits: bool = True) -> tuple[Features, Tensor | None]:
        """(Features(out=...), logits) of the samples `index` seen with `flip`, on `index`'s device.

        Logits are the head's output at the label when the teacher has a head, else `out` itself
        (as `FrozenTeacher` returns them); None when not asked for.
        """
        rows = index.detach().cpu().numpy().astype(np.int64)
        sides = flip.detach().cpu().numpy().astype(np.int64)
        out = torch.from_numpy(np.ascontiguousarray(self.out[rows, sides])).to(index.device, non_blocking=True)
        if not with_logits:
            return Features(out=out), None
        if self.logits is None:
            return Features(out=out), out
        logits = torch.from_numpy(np.ascontiguousarray(self.logits[rows, sides])).to(index.device, non_blocking=True)
        return Features(out=out), logits


def _collate(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Only what the teacher needs: uint8 images, labels, indices (datasets may return extras)."""
    return {
        "image": torch.from_numpy(np.stack([np.asarray(item["image"]) for item in items])),
        "label": torch.as_tensor([int(item["label"]) for item in items], dtype=torch.long),
        "index": torch.as_tensor([int(item["index"]) for item in items], dtype=torch.long),
    }


@torch.no_grad()
def build_cache(cfg: Any, dataset: Any, distiller: Distiller, transform: TrainTransform, folder: Path,
                device: torch.device, autocast_dtype: torch.dtype | None, key: dict[str, Any],
                batch_size: int = 256) -> None:
    """Run the frozen teacher over every sample in both flips and write the arrays, then the manifest."""
    teacher = distiller.teacher
    with_logits = bool(key["with_logits"]) and teacher.network.head is not None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # the old cache is invalid from here on
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=int(cfg.DATA.WORKERS), collate_fn=_collate,
                                         generator=torch.Generator().manual_seed(0))  # global RNG untouched
    count = len(dataset)
    arrays: dict[str, np.memmap] = {}
    for batch in loader:
        # the teacher view of TrainTransform without its random draws: geometry (none, or a centre
        # crop of oversized images), normalisation; flip 1 mirrors it, as `flip_where` does
        view = transform.teacher_view(batch["image"].to(device))
        labels, rows = batch["label"].to(device), batch["index"].numpy()
        for side, images in enumerate((view, view.flip(-1))):
            autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                        else torch.autocast(device.type, enabled=False))
            with autocast:
                features, logits = teacher(images.contiguous(), labels, with_logits)
            outputs = {"out": features.out}
            if with_logits:
                outputs["logits"] = logits
            for name, value in outputs.items():
                if name not in arrays:
                    arrays[name] = open_memmap(folder / f"{name}.npy.tmp", mode="w+", dtype=np.float32,
                                               shape=(count, 2, value.shape[1]))
                arrays[name][rows, side] = value.float().cpu().numpy()
    for name, array in arrays.items():
        array.flush()
        os.replace(folder / f"{name}.npy.tmp", folder / f"{name}.npy")
    arrays.clear()
    if not with_logits:
        (folder / "logits.npy").unlink(missing_ok=True)
    manifest_tmp = folder / f"{MANIFEST}.tmp"
    manifest_tmp.write_text(json.dumps(key, indent=1, sort_keys=True))
    os.replace(manifest_tmp, folder / MANIFEST)
    log.info("teacher cache: %d samples x 2 flips written to %s", count, folder)


def _is_valid(folder: Path, key: dict[str, Any]) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file() or not (folder / "out.npy").is_file():
        return False
    try:
        return json.loads(manifest.read_text()) == json.loads(json.dumps(key))
    except json.JSONDecodeError:
        return False


def prepare_teacher_cache(cfg: Any, dataset: Any, distiller: Distiller, transform: TrainTransform,
                          device: torch.device, autocast_dtype: torch.dtype | None = None) -> TeacherCache:
    """The cache DATA.TEACHER_CACHE names, rebuilt first (by rank 0; the others wait) when its key differs."""
    check_cacheable(cfg)
    if distiller.teacher is None:
        raise ConfigError("DATA.TEACHER_CACHE is set but the method runs no teacher; set DATA.TEACHER_CACHE ''")
    folder = Path(str(cfg.DATA.TEACHER_CACHE)).expanduser()
    key = cache_key(cfg, dataset, distiller.teacher_logits_needed)
    if dist.is_main():
        if _is_valid(folder, key):
            log.info("teacher cache: reusing %s", folder)
        else:
            log.info("teacher cache: building %s (missing or built for another teacher/data)", folder)
            build_cache(cfg, dataset, distiller, transform, folder, device, autocast_dtype, key)
    dist.barrier()
    return TeacherCache(folder)
