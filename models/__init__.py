"""Backbones and heads, registered by name.

`BACKBONES.build(name, **kw)` and `HEADS.build(name, in_features, num_classes, **kw)`; the
registering modules are imported here so that importing `models` fills both registries.
`build_network(node, num_classes)` turns a TEACHER/STUDENT config node into a `Network`.
"""

from __future__ import annotations

from typing import Any

from utility.registry import Registry

BACKBONES = Registry("backbone")
HEADS = Registry("head")

# Importing the sub-packages registers their backbones and heads.
from models import cifar, face, heads, imagenet  # noqa: E402,F401,I001
from models.features import Features  # noqa: E402
from models.network import Network  # noqa: E402


def backbone_kwargs(node: Any, num_classes: int) -> dict[str, Any]:
    """Constructor keywords for the backbone a TEACHER/STUDENT node names."""
    name = node.BACKBONE
    if name.startswith("face."):
        kwargs = {
            "num_features": node.EMBEDDING_SIZE,
            "dropout": node.DROPOUT,
            "attention": node.ATTENTION,
            "pooling": node.POOLING,
            "hints": node.HINTS,
            "hint_bn": node.HINT_BN,
        }
        if node.WIDTH != 64:  # only the iResNets have a width option
            kwargs["width"] = node.WIDTH
        return kwargs
    return {"num_classes": num_classes}


def head_kwargs(node: Any) -> dict[str, Any]:
    """Constructor keywords for the head a TEACHER/STUDENT node names."""
    kind = node.HEAD
    if kind in ("arcface",):
        return {"s": node.HEAD_S, "m": node.HEAD_M, "easy_margin": node.HEAD_EASY_MARGIN}
    if kind in ("cosface",):
        return {"s": node.HEAD_S, "m": node.HEAD_M}
    if kind == "adaface":
        return {"s": node.HEAD_S, "m": node.HEAD_M, "h": node.HEAD_H, "t_alpha": node.HEAD_T_ALPHA}
    if kind == "magface":
        return {"s": node.HEAD_S}
    return {}


def build_network(node: Any, num_classes: int) -> Network:
    """A `Network` from a TEACHER or STUDENT config node (weights are loaded by the engine)."""
    backbone = BACKBONES.build(node.BACKBONE, **backbone_kwargs(node, num_classes))
    head = None
    if node.HEAD:
        head = HEADS.build(node.HEAD, node.EMBEDDING_SIZE, num_classes, **head_kwargs(node))
    return Network(backbone, head)


__all__ = ["BACKBONES", "HEADS", "Features", "Network", "build_network", "backbone_kwargs", "head_kwargs"]
