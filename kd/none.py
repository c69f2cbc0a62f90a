"""`none`: plain supervised training (teachers and low-resolution baselines), no distillation."""

from kd import DISTILLERS
from kd.base import Distiller


@DISTILLERS.register("none")
class PlainTraining(Distiller):
    """Cross-entropy on the student's (margin) logits only; no teacher is run."""

    uses_teacher = False
