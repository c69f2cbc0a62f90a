"""Distillers, registered by name; importing `kd` discovers and registers every method in this folder.

Each method is one file `kd/<name>.py`: a `Distiller` subclass decorated with
`@DISTILLERS.register(name)` that declares its config keys, batch needs and the rest on its class
(`kd.base.Distiller`), and, for its core, a pure loss function that tests and external checks call
directly. Discovery imports every module here (no list to edit) and adds each method's keys to the
config schema as `DISTILL.<NAME>.*`.
"""

import importlib
import pkgutil

from utility.config import register_method_keys, register_renamed_key
from utility.registry import Registry

DISTILLERS = Registry("distiller")

_NOT_METHODS = {"base"}


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name not in _NOT_METHODS:
            importlib.import_module(f"{__name__}.{module.name}")
    # classes that declare keys first, so a class sharing another's node (arcdistill) finds it there
    entries = sorted(((name, DISTILLERS.get(name)) for name in DISTILLERS), key=lambda e: not e[1].defaults)
    for name, cls in entries:
        node = cls.config_node or name.upper()
        register_method_keys(node, cls.defaults, owner=f"{cls.__module__}.{cls.__qualname__}")
        for old, key in cls.renamed_keys.items():
            register_renamed_key(old, f"DISTILL.{node}.{key}")


_discover()

from kd.base import (  # noqa: E402
    Distiller,
    InitStage,
    Step,
    batch_request,
    build_distiller,
    fill_data_keys,
    method_names,
    teacher_cache_refusal,
    uses_teacher,
)

__all__ = ["DISTILLERS", "Distiller", "InitStage", "Step", "batch_request", "build_distiller", "fill_data_keys",
           "method_names", "teacher_cache_refusal", "uses_teacher"]
