"""Distillers, registered by name; importing `kd` registers them all.

Each method is one file: a `Distiller` subclass decorated with `@DISTILLERS.register(name)` and,
for its core, a pure loss function that tests and external checks call directly.
"""

from utility.registry import Registry

DISTILLERS = Registry("distiller")

from kd.base import Distiller, Step, build_distiller  # noqa: E402

import kd.none  # noqa: E402,F401
import kd.kd  # noqa: E402,F401
from kd import askd, at, crd, dct  # noqa: E402,F401  (classification distillers)
from kd import a_skd, adadistill, f_skd, fitnet, rkd  # noqa: E402,F401  (face distillers)

__all__ = ["DISTILLERS", "Distiller", "Step", "build_distiller"]
