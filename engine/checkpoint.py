"""Checkpoints: atomic saving, strict loading with readable errors, and import of published weights.

A Distillery checkpoint is a dict saved with `torch.save` and read back with `weights_only=True`:
`format`, `model` (the distiller's state dict: `student.*`, `teacher.*`, method extras),
`optimizer`, `scheduler`, `iteration`, `rng`, `best`, `config` (YAML text). Published checkpoints
(the seeds' `.pth`/`.ckpt` files, torchvision ImageNet weights) are plain state dicts whose keys
`convert_published` renames into ours; every load is `strict=True`, and a mismatch is reported as
missing / unexpected keys and shape differences instead of being silently ignored.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from utility.errors import CheckpointError

FORMAT = "distillery-1"
PUBLISHED_SOURCES = ("a_skd", "f_skd", "insightface", "adadistill", "repdistiller", "torchvision")


# -- saving ------------------------------------------------------------------------------------
def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, rename.

    A run killed mid-write leaves the previous checkpoint intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as tmp:
            torch.save({"format": FORMAT, **state}, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint or state-dict file safely (`weights_only=True`), with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc}). "
            "Is it complete and written by torch.save?"
        ) from None


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
    state["numpy"] = (name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached)  # map_location may be CUDA
    python = packed["python"]
    state["python"] = (python[0], tuple(python[1]), python[2])
    return state


# -- published layouts ----------------------------------------------------------------------------
def _unwrap(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Peel the usual wrappers (`{'model': sd}`, `{'state_dict': sd}`, A-SKD's `net_state_dict`,
    the DCT repository's `model_state_dict`) and DDP's `module.` prefix."""
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
    if isinstance(checkpoint, Mapping) and checkpoint.get("format") == FORMAT:
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

        head_state = head_from_published(_unwrap(load_checkpoint(head_path)), type(head).__name__.lower())
        load_strict(head, head_state, f"{head_path}")
