"""Distillers, registered by name; importing `kd` registers them all.

Each method is one file: a `Distiller` subclass decorated with `@DISTILLERS.register(name)` and,
for its core, a pure loss function that tests and external checks call directly.
"""

from utility.registry import Registry

DISTILLERS = Registry("distiller")

# Importing each method's module registers it: plain training and Hinton KD, the classification
# methods (at, crd, dct, askd) and the face methods (a_skd, f_skd, fitnet, rkd, AdaDistill family).
from kd import a_skd, adadistill, askd, at, crd, dct, f_skd, fitnet, kd, none, rkd  # noqa: E402,F401,I001
from kd.base import Distiller, Step, build_distiller  # noqa: E402

__all__ = ["DISTILLERS", "Distiller", "Step", "build_distiller"]
