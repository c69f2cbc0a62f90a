"""Checkpoints: atomic, verified saving; strict loading with readable errors; import of published weights.

A Distillery checkpoint is a dict saved with `torch.save` and read back with `weights_only=True`:
`format`, `model` (the distiller's state dict: `student.*` and method extras; the frozen teacher is
not stored, only the path and SHA-256 of its files, verified on resume), `optimizer`, `scheduler`,
`iteration`, `rng`, `best`, `config` (YAML text) and `integrity`: the SHA-256 of everything else,
recomputed on load, so flipped bytes inside a tensor are an error instead of silently trained on.
Published checkpoints (the seeds' `.pth`/`.ckpt` files, torchvision ImageNet weights) are plain
state dicts whose keys `convert_published` renames into ours; every load is `strict=True`, and a
mismatch is reported as missing / unexpected keys and shape differences instead of being ignored.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from utility.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "distillery-2"
#: earlier checkpoints (no integrity hash, teacher stored): still read
LEGACY_FORMATS = ("distillery-1",)
PUBLISHED_SOURCES = ("a_skd", "f_skd", "insightface", "adadistill", "repdistiller", "torchvision")
#: what `--resume` needs in a checkpoint
TRAINING_KEYS = ("model", "optimizer", "scheduler", "iteration", "rng")


def is_distillery_checkpoint(obj: Any) -> bool:
    """True for a dict written by `save_checkpoint` (this format or an older one)."""
    return isinstance(obj, Mapping) and obj.get("format") in (FORMAT, *LEGACY_FORMATS)


# -- integrity ---------------------------------------------------------------------------------
def _feed(digest: Any, value: Any) -> None:
    """Hash a nested checkpoint value: tensors by dtype, shape and bytes; containers by structure."""
    if isinstance(value, Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{flat.dtype}{tuple(value.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[" if isinstance(value, list) else b"(")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def payload_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint's content (every key but `integrity`)."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in state.items() if key != "integrity"})
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (identifies a teacher checkpoint without storing it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- saving ------------------------------------------------------------------------------------
def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before `path` is kept (`last.pt` -> `last.prev.pt`)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _file_mode() -> int:
    """0666 minus the umask: the mode every other file of a run gets (mkstemp would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _keep_previous(path: Path) -> None:
    """Make `path`'s current file the previous checkpoint, while `path` itself stays in place
    (a hard link, so a kill at any moment leaves a readable `path`); a rename where links fail."""
    previous = previous_path(path)
    if not path.is_file():
        return
    staged = previous.with_name(f".{previous.name}.{os.getpid()}.tmp")
    try:
        staged.unlink(missing_ok=True)
        os.link(path, staged)
        os.replace(staged, previous)
    except OSError:
        staged.unlink(missing_ok=True)
        os.replace(path, previous)


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> None:
    """Write `state` (plus `format` and its integrity hash) to `path` atomically: a temporary file in
    the same folder, fsync, rename. With `keep_previous` the file it replaces becomes `*.prev.pt`.

    A run killed mid-write leaves the previous checkpoint intact, never a truncated one; a write
    that fails (a full disk) removes its temporary file and raises a one-line CheckpointError.
    """
    path = Path(path)
    content = {"format": FORMAT, **state}
    content.pop("integrity", None)
    content["integrity"] = {"sha256": payload_digest(content)}
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as tmp:
            torch.save(content, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, _file_mode())
        if keep_previous:
            _keep_previous(path)
        os.replace(tmp_name, path)
    except OSError as exc:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        intact = "the previous checkpoint is intact" if path.is_file() else "no earlier checkpoint exists"
        raise CheckpointError(
            f"cannot write checkpoint {path}: {exc.strerror or exc} ({intact}); "
            + ("free disk space, then continue with --resume" if full else "check EXPERIMENT.OUTPUT_DIR")
        ) from None
    except BaseException:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temporary checkpoint files a killed save left behind (call only while holding the
    folder's lock: another live run's temporary file would be in flight)."""
    removed = []
    for stale in Path(folder).glob(".*.pt.*.tmp"):
        stale.unlink(missing_ok=True)
        removed.append(stale)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted save in %s", len(removed), folder)
    return removed


# -- loading -----------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Read a checkpoint or state-dict file safely (`weights_only=True`), with one-line errors.

    A Distillery checkpoint's integrity hash is verified: a file changed after it was written
    (flipped bytes, a copy cut short) is refused instead of loaded.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError(
                f"{path}: refused, it holds Python objects beyond tensors and plain containers, which "
                "could run code (weights_only=True); if you trust it, re-save its state dict with "
                "torch.save(model.state_dict(), path)"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_one_line(exc)}); "
                              "is it complete and written by torch.save?") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_one_line(exc)}); "
                              "is it complete and written by torch.save?") from None
    if isinstance(content, Mapping) and content.get("format") == FORMAT:
        stored = content.get("integrity")
        if not isinstance(stored, Mapping) or stored.get("sha256") != payload_digest(content):
            raise CheckpointError(
                f"{path}: corrupt, its content does not match the integrity hash written with it; "
                f"use the previous checkpoint ({previous_path(path).name}) or retrain"
            )
    return content


def load_training_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint `--resume` can continue from: verified, and holding every part of the state."""
    content = load_checkpoint(path, map_location)
    if not is_distillery_checkpoint(content):
        what = type(content).__name__ if not isinstance(content, Mapping) else "a dict without 'format'"
        raise CheckpointError(f"{path}: not a Distillery training checkpoint (it is {what}); "
                              "--resume needs the last.pt a training run wrote")
    missing = [key for key in TRAINING_KEYS if key not in content]
    if missing:
        raise CheckpointError(f"{path}: a Distillery checkpoint without {', '.join(missing)}; "
                              "--resume needs the last.pt a training run wrote")
    return dict(content)


# -- RNG state in weights_only-safe form -------------------------------------------------------
def pack_rng(state: dict[str, Any]) -> dict[str, Any]:
    """`utility.seed.rng_state()` with NumPy arrays turned into tensors (weights_only can read them)."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    packed = dict(state)
    packed["numpy"] = (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                       float(cached))
    return packed


def unpack_rng(packed: dict[str, Any]) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = packed["numpy"]
    state = dict(packed)
    state["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    python = packed["python"]
    state["python"] = (python[0], tuple(python[1]), python[2])
    return state


# -- published layouts ----------------------------------------------------------------------------
def _unwrap(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Peel the usual wrappers (`{'model': sd}`, `{'state_dict': sd}`, A-SKD's `net_state_dict`,
    the DCT repository's `model_state_dict`) and DDP's `module.` prefix."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got a "
                              f"{type(state_dict).__name__}")
    sd: Any = state_dict
    for key in ("net_state_dict", "model_state_dict", "state_dict", "model"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    out = {}
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            continue
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def detect_source(state_dict: Mapping[str, Any]) -> str:
    """Guess a published layout from its key names (for CHECKPOINT_SOURCE: auto)."""
    keys = set(_unwrap(state_dict))
    if any(k.startswith("input_layer.") for k in keys):
        return "a_skd"
    if any(k.startswith(("embed_s.", "contrast.")) for k in keys):
        return "repdistiller"
    if "prelu.weight" in keys or any(k.startswith("hint_layer") for k in keys):
        return "f_skd"
    if "conv1.conv.weight" in keys or any(k.startswith("conv_23.") for k in keys):
        return "adadistill"
    return "torchvision"


def convert_published(state_dict: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """Rename a published checkpoint's keys into Distillery's (identity where names already agree).

    `source`: `a_skd` (A-SKD CBAMResNet), `f_skd` (F-SKD iResNet / students with hints),
    `insightface` and `adadistill` (iResNet, MobileFaceNet), `repdistiller` (CIFAR zoo, and a
    RepDistiller `CRDLoss` state dict), `torchvision` (ImageNet-style ResNet / MobileNetV2).
    Wrappers such as `{'model': ...}` and DDP's `module.` prefix are removed first.
    """
    if source not in PUBLISHED_SOURCES:
        raise CheckpointError(f"unknown checkpoint source '{source}'; known: {', '.join(PUBLISHED_SOURCES)}")
    sd = _unwrap(state_dict)
    if source == "a_skd":
        from models.face.published import from_a_skd

        return from_a_skd(sd)
    if source == "f_skd":
        from models.face.published import from_f_skd

        return from_f_skd(sd)
    if source in ("insightface", "adadistill"):
        from models.face import published

        return getattr(published, f"from_{source}")(sd)
    if source == "repdistiller" and any(k.startswith(("embed_s.", "contrast.")) for k in sd):
        from kd.crd import crd_state_from_repdistiller

        return crd_state_from_repdistiller(sd)
    return sd


# -- loading into modules --------------------------------------------------------------------------
def describe_mismatch(module: nn.Module, state_dict: Mapping[str, Tensor], limit: int = 6) -> str:
    """Human-readable difference between a module's keys/shapes and a state dict's."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape differences", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def load_strict(module: nn.Module, state_dict: Mapping[str, Tensor], origin: str) -> None:
    """`load_state_dict(strict=True)` with a CheckpointError that says exactly what does not fit."""
    problem = describe_mismatch(module, state_dict)
    if problem:
        raise CheckpointError(
            f"{origin} does not fit the model: {problem}. Check the BACKBONE/ATTENTION/POOLING/HINTS "
            "settings and CHECKPOINT_SOURCE"
        )
    module.load_state_dict(state_dict, strict=True)


def network_state_from_checkpoint(checkpoint: Mapping[str, Any], prefix: str = "student.") -> dict[str, Tensor]:
    """The `Network` state (backbone.*, head.*) stored inside a Distillery checkpoint."""
    model = checkpoint["model"]
    return {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}


def load_network_weights(network: nn.Module, path: str | Path, source: str = "auto",
                         head_path: str | Path | None = None) -> None:
    """Load a `Network` (backbone + optional head) from a Distillery checkpoint or a published file.

    A Distillery checkpoint carries the network as `student.*` (whatever role it was trained in).
    A published file holds the backbone only; its head, if any, comes from `head_path`.
    """
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint or state dict")
    if is_distillery_checkpoint(checkpoint):
        state = network_state_from_checkpoint(checkpoint)
        if getattr(network, "head", None) is None:
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        load_strict(network, state, f"{path}")
        return
    resolved = detect_source(checkpoint) if source in ("auto", "distillery") else source
    backbone_state = convert_published(checkpoint, resolved)
    backbone = getattr(network, "backbone", network)
    load_strict(backbone, backbone_state, f"{path} (read as a '{resolved}' checkpoint)")
    if head_path:
        head = getattr(network, "head", None)
        if head is None:
            raise CheckpointError(f"{head_path}: a head checkpoint was given but the model has no HEAD")
        from models.face.published import head_from_published

        raw_head = load_checkpoint(head_path)
        if not isinstance(raw_head, Mapping):
            raise CheckpointError(f"{head_path}: holds a {type(raw_head).__name__}, not a head state dict")
        head_state = head_from_published(_unwrap(raw_head), type(head).__name__.lower())
        load_strict(head, head_state, f"{head_path}")
