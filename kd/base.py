"""`Distiller`: the student, the frozen teacher and the method's trainable extras in one module.

`forward(batch) -> (student_output, losses)`: the base class runs the teacher (frozen, in eval mode,
without gradients, or its cached outputs) and the student once, wraps everything in a `Step`, and
asks the method for its loss terms. A method therefore only writes `setup` (build its extras from
the feature shapes) and `distill_losses` (named, already-weighted scalars), and declares on its
class everything the engine and the data layer must know (see `Distiller`): its config keys, what
its batches carry, whether a teacher-output cache may stand in for its teacher, keys it fills from
the data, and an optional init stage. Methods with a different forward override the hooks
`teacher_pass` / `student_extras` rather than the whole step. Several methods combine with
`DISTILL.TYPE: "dct+kd"`: the first owns the networks, the others are built as companions that
contribute terms from the same `Step`, so features are computed once; `method_names` is the one
place that parses DISTILL.TYPE, and the module functions below merge the methods' declarations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.requests import NOTHING_EXTRA, BatchRequest
from models.features import Features
from models.network import Network
from utility.errors import ConfigError


@dataclass
class Step:
    """Everything one training step's loss terms may read."""

    batch: dict[str, Any]
    student: Features  # student features (student.out = embedding or logits)
    logits_s: Tensor | None  # student class logits (margin at the label, or backbone logits); None with Partial FC
    teacher: Features | None = None  # teacher features, computed without gradients
    logits_t: Tensor | None = None  # teacher class logits (no gradient), when the teacher has them
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific extras (partner views, ...)

    @property
    def labels(self) -> Tensor:
        return self.batch["label"]

    @property
    def epoch(self) -> int:
        """The 1-based epoch of the main training stage this step belongs to (1 outside training)."""
        return int(self.batch.get("epoch", 1))


@dataclass
class Probe:
    """Shapes of one forward pass, so methods can size connectors and embeddings at build time."""

    student: Features
    teacher: Features | None
    num_classes: int


class FrozenTeacher(nn.Module):
    """The teacher network: always in eval mode, never trained, never in the optimiser, never in DDP."""

    ddp_ignore = True  # engine.distributed.wrap_ddp leaves its parameters and buffers alone

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.network = network
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.network.eval()

    def train(self, mode: bool = True) -> FrozenTeacher:  # noqa: ARG002 - the teacher stays in eval
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor, labels: Tensor | None = None,
                with_logits: bool = True) -> tuple[Features, Tensor | None]:
        """Features and (optionally) class logits. Methods that never read the teacher's logits skip
        its head: an AdaFace head updates its batch statistics whenever it runs, which the seeds'
        teachers never do for those methods."""
        features = self.network.forward_features(x)
        if not with_logits:
            return features, None
        logits = features.out if self.network.head is None else self.network.head(features.out, labels)
        return features, logits


@dataclass
class InitStage:
    """A stage trained before the main one (FSP, AB, FT): `epochs` of the training set with SGD at a
    constant `lr` (momentum and weight decay from SOLVER) over `parameters`, minimising
    `Distiller.init_losses`; the main stage's schedule and epoch count start after it."""

    epochs: float
    lr: float
    parameters: list[nn.Parameter]


class Distiller(nn.Module):
    """Base class; `none` (plain training) is this class with no distillation terms.

    Declarations a method makes on its class (read by the engine and the data layer, which never
    name a method):
    """

    #: this method's DISTILL.<CONFIG_NODE> keys: KEY -> (default, one-line doc[, allowed values])
    defaults: dict[str, tuple] = {}
    #: the DISTILL sub-node holding its keys ("" = the registry name upper-cased)
    config_node: str = ""
    #: retired full keys this method still accepts: old key -> new key under DISTILL.<CONFIG_NODE>
    renamed_keys: dict[str, str] = {}
    #: whether the method needs the teacher at all (plain training does not)
    uses_teacher: bool = True
    #: whether the teacher network runs (AMLDistill reads only the teacher head's centres)
    runs_teacher: bool = True
    #: whether the method reads the teacher's class logits (KD-style terms) or only its features
    uses_teacher_logits: bool = True
    #: whether a teacher-output cache (the teacher's `out` and logits only) may replace its teacher
    cacheable_teacher: bool = False
    #: precomputed teacher outputs (`engine.teacher_cache.TeacherCache`, attached by the trainer when
    #: DATA.TEACHER_CACHE is set): `lookup(index, flip, with_logits) -> (Features(out=...), logits)`
    #: replaces the teacher forward
    teacher_cache: Any = None

    @classmethod
    def batch_request(cls, cfg: Any) -> BatchRequest:
        """What this method's training batches carry beyond image/label/index."""
        return BatchRequest(teacher_view=cls.uses_teacher)

    @classmethod
    def cache_refusal(cls, cfg: Any) -> str:
        """Why a teacher-output cache cannot replace this method's teacher ("" = it can)."""
        return "" if cls.cacheable_teacher else "it reads more of the teacher than its output and logits"

    @classmethod
    def data_keys(cls, cfg: Any, dataset: Any) -> dict[str, Any]:
        """Keys of DISTILL.<CONFIG_NODE> whose value comes from the training data (CRD's memory size)."""
        return {}

    def __init__(self, cfg: Any, student: Network, teacher: Network | None = None,
                 num_classes: int = 0, companions: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.ce_weight = float(cfg.DISTILL.CE_WEIGHT)
        self.student = student
        needs_teacher = self.uses_teacher or any(_registry().get(n).uses_teacher for n in companions)
        if needs_teacher and teacher is None:
            raise ConfigError(
                f"DISTILL.TYPE '{cfg.DISTILL.TYPE}' needs a teacher: set TEACHER.BACKBONE and "
                "TEACHER.CHECKPOINT"
            )
        self.teacher = FrozenTeacher(teacher) if (teacher is not None and needs_teacher) else None
        probe = self._probe()
        self.setup(cfg, probe)
        self.companions = nn.ModuleList(_registry().get(n).companion(cfg, probe) for n in companions)
        self.teacher_logits_needed = self.uses_teacher_logits or any(c.uses_teacher_logits for c in self.companions)

    # -- what a method overrides ---------------------------------------------------------------
    def setup(self, cfg: Any, probe: Probe) -> None:
        """Build the method's trainable extras (connectors, embeddings, memory banks, centres)."""

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        """Named, already-weighted distillation terms for this step."""
        return {}

    def init_stage(self) -> InitStage | None:
        """The stage to train before the main one, or None (most methods)."""
        return None

    def init_losses(self, step: Step) -> dict[str, Tensor]:
        """Named loss terms of the init stage: the method's distillation terms unless it says otherwise."""
        return self.distill_losses(step)

    def classification_losses(self, step: Step) -> dict[str, Tensor]:
        """The student's own supervised term: cross-entropy on its logits, weighted by CE_WEIGHT.

        A head that computes its loss itself (Partial FC: the softmax is distributed over ranks)
        left it in `step.extra["head_loss"]`.
        """
        if self.ce_weight == 0:
            return {}
        if "head_loss" in step.extra:
            return {"ce": self.ce_weight * step.extra["head_loss"]}
        return {"ce": self.ce_weight * F.cross_entropy(step.logits_s.float(), step.labels)}

    # -- shared machinery ----------------------------------------------------------------------
    @classmethod
    def companion(cls, cfg: Any, probe: Probe) -> Distiller:
        """This method's terms without owning any network, to be added to another distiller."""
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        obj.student = obj.teacher = None  # the owning distiller runs the networks
        obj.companions = nn.ModuleList()
        obj.cfg = cfg
        obj.num_classes = probe.num_classes
        obj.setup(cfg, probe)
        return obj

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(False)
        return self

    def student_step(self, batch: dict[str, Any]) -> Step:
        """The teacher pass (`teacher_pass`), then the student's features, any extra forward passes
        (`student_extras`), then the student's head (logits, or its own loss under Partial FC)."""
        step = Step(batch=batch, student=None, logits_s=None)  # type: ignore[arg-type]
        if self.teacher is not None and self.runs_teacher:
            self.teacher_pass(step)
        step.student = self.student.forward_features(batch["image"])
        self.student_extras(step)
        head = self.student.head
        if getattr(head, "computes_loss", False):  # Partial FC: no full logits exist on any rank
            step.extra["head_loss"] = head(step.student.out, batch["label"])
        else:
            step.logits_s = self.student.logits(step.student.out, batch.get("label"))
        return step

    def teacher_pass(self, step: Step) -> None:
        """Fill `step.teacher` / `step.logits_t`: the cached outputs when a cache is attached, else the
        frozen teacher on `image_teacher`. Methods with more teacher views extend this."""
        batch = step.batch
        if self.teacher_cache is not None:
            step.teacher, step.logits_t = self.teacher_cache.lookup(batch["index"], batch["flip"],
                                                                    self.teacher_logits_needed)
        else:
            step.teacher, step.logits_t = self.teacher(batch.get("image_teacher", batch["image"]),
                                                       batch.get("label"), self.teacher_logits_needed)

    def student_extras(self, step: Step) -> None:
        """Extra student forward passes (partner views) after its main pass, before its head runs."""

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        step = self.student_step(batch)
        if batch.get("init_stage", False):
            return step.student.out, self.init_losses(step)
        losses = self.classification_losses(step)
        losses.update(self.distill_losses(step))
        for companion in self.companions:
            for name, value in companion.distill_losses(step).items():
                if name in losses:
                    raise ConfigError(f"DISTILL.TYPE '{self.cfg.DISTILL.TYPE}': two methods both name a loss '{name}'")
                losses[name] = value
        return step.student.out, losses

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the optimiser updates: everything with requires_grad outside the teacher."""
        teacher_ids = {id(p) for p in self.teacher.parameters()} if self.teacher is not None else set()
        return (p for p in self.parameters() if p.requires_grad and id(p) not in teacher_ids)

    @torch.no_grad()
    def _probe(self) -> Probe:
        """One tiny eval-mode forward to learn feature shapes; BN statistics are left untouched."""
        size = int(self.cfg.DATA.IMAGE_SIZE)
        device = next(self.student.parameters()).device
        x = torch.zeros(2, 3, size, size, device=device)
        was_training = self.student.training
        self.student.eval()
        student = self.student.forward_features(x)
        self.student.train(was_training)
        teacher = self.teacher(x)[0] if self.teacher is not None else None
        return Probe(student=student, teacher=teacher, num_classes=self.num_classes)


def _registry():
    from kd import DISTILLERS

    return DISTILLERS


def method_names(cfg: Any) -> list[str]:
    """DISTILL.TYPE as a list of registered names ("dct + kd" -> ["dct", "kd"]); the one parser of it."""
    names = [n.strip() for n in str(cfg.DISTILL.TYPE).split("+") if n.strip()]
    if not names:
        raise ConfigError("DISTILL.TYPE is empty; use 'none' for plain training")
    registry = _registry()
    for name in names:
        registry.get(name)
    return names


def method_classes(cfg: Any) -> list[type[Distiller]]:
    """The Distiller classes DISTILL.TYPE names, in order."""
    return [_registry().get(name) for name in method_names(cfg)]


def uses_teacher(cfg: Any) -> bool:
    """Whether any method in DISTILL.TYPE needs a teacher."""
    return any(cls.uses_teacher for cls in method_classes(cfg))


def batch_request(cfg: Any) -> BatchRequest:
    """Everything the combined methods' training batches must carry."""
    request = NOTHING_EXTRA
    for cls in method_classes(cfg):
        request = request.merge(cls.batch_request(cfg))
    return request


def teacher_cache_refusal(cfg: Any) -> str:
    """Why DATA.TEACHER_CACHE cannot serve DISTILL.TYPE ("" = it can)."""
    for name, cls in zip(method_names(cfg), method_classes(cfg)):
        if not cls.uses_teacher:
            return f"DISTILL.TYPE '{name}' runs no teacher"
        reason = cls.cache_refusal(cfg)
        if reason:
            return f"DISTILL.TYPE '{name}': {reason}"
    return ""


def config_node(name: str) -> str:
    """The DISTILL sub-node of the method registered as `name`."""
    cls = _registry().get(name)
    return cls.config_node or name.upper()


def fill_data_keys(cfg: Any, dataset: Any) -> Any:
    """A copy of `cfg` with the keys the methods fill from the training data (e.g. CRD's N_DATA)."""
    cfg = cfg.clone()
    cfg.defrost()
    for name, cls in zip(method_names(cfg), method_classes(cfg)):
        for key, value in cls.data_keys(cfg, dataset).items():
            cfg.DISTILL[config_node(name)][key] = value
    cfg.freeze()
    return cfg


def build_distiller(cfg: Any, student: Network, teacher: Network | None, num_classes: int) -> Distiller:
    """The distiller DISTILL.TYPE names ("a+b" adds b's terms to a's)."""
    names = method_names(cfg)
    return _registry().build(names[0], cfg, student, teacher, num_classes=num_classes,
                             companions=tuple(names[1:]))
