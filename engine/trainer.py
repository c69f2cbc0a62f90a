"""One training loop for teachers and students.

Iteration-based (epochs convert to iterations), with the data order, the device-side augmentation
and every RNG a pure function of (seed, iteration), so `--resume` continues exactly where a killed
run stopped. The loop knows nothing about methods: the distiller returns named loss terms and the
trainer sums, logs and optimises them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed
from torch import nn

from data.bad_samples import BadSampleCounter, without_skip_fields
from data.loader import build_dataset, build_train_loader, to_device
from data.transforms import TrainTransform
from engine import distributed as dist
from engine.checkpoint import (
    file_sha256,
    load_network_weights,
    load_strict,
    load_training_checkpoint,
    pack_rng,
    previous_path,
    save_checkpoint,
    unpack_rng,
)
from engine.curves import plot_training_curves
from engine.evaluate import evaluate
from engine.fast_path import apply_fast_path
from engine.optim import build_optimizer, build_scheduler, scaled_lr
from engine.pretrained import load_pretrained_backbone
from engine.results import write_results
from engine.resume_check import check_resume_config
from engine.run_info import update_run_json, write_run_files
from engine.teacher_cache import prepare_teacher_cache
from kd import batch_request, build_distiller, fill_data_keys, uses_teacher
from kd.base import Distiller
from models import build_network
from models.network import Network
from models.partial_fc import PartialFC, class_shard
from utility.config import get_defaults
from utility.errors import CheckpointError, ConfigError, DistilleryError
from utility.seed import rng_state, seed_everything, set_rng_state, worker_seed

log = logging.getLogger(__name__)

TEACHER_PREFIX = "teacher."  # the frozen teacher's keys in Distiller.state_dict()


@dataclass
class Plan:
    """Lengths derived from the config and the data."""

    iters_per_epoch: int
    total_iters: int  # the whole run: the init stage (if any), then the main stage
    global_batch: int
    batch_per_rank: int
    init_iters: int = 0  # iterations of the method's init stage, before the main stage

    @property
    def main_iters(self) -> int:
        return self.total_iters - self.init_iters


def _precision_dtype(cfg: Any, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA when asked or on `auto`; fp32 (no autocast) otherwise."""
    precision = cfg.SOLVER.PRECISION
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def build_networks(cfg: Any, role: str, num_classes: int, uses_teacher: bool,
                   env: dist.DistEnv | None = None) -> tuple[Network, Network | None]:
    """The trained network (TEACHER node for role 'teacher', STUDENT otherwise) and the frozen teacher.

    With SOLVER.PARTIAL_FC the trained network's ArcFace/CosFace head becomes a `PartialFC` whose
    class centres are sharded over the ranks (identical to the plain head in one process).
    """
    trained_node = cfg.TEACHER if role == "teacher" else cfg.STUDENT
    if not trained_node.BACKBONE:
        raise ConfigError(f"{'TEACHER' if role == 'teacher' else 'STUDENT'}.BACKBONE is empty; name a backbone")
    trained = build_network(trained_node, num_classes)
    if cfg.SOLVER.PARTIAL_FC:
        if trained_node.HEAD not in ("arcface", "cosface"):
            raise ConfigError(f"SOLVER.PARTIAL_FC shards ArcFace/CosFace heads; HEAD is '{trained_node.HEAD}'")
        trained.head = PartialFC(trained_node.EMBEDDING_SIZE, num_classes, margin=trained_node.HEAD,
                                 s=trained_node.HEAD_S, m=trained_node.HEAD_M,
                                 sample_rate=cfg.SOLVER.SAMPLE_RATE, env=env)
    if trained_node.PRETRAINED:
        load_pretrained_backbone(trained.backbone, trained_node.PRETRAINED, trained_node.CHECKPOINT_SOURCE)
    if trained_node.CHECKPOINT:
        load_network_weights(trained, trained_node.CHECKPOINT, trained_node.CHECKPOINT_SOURCE,
                             trained_node.HEAD_CHECKPOINT or None)
    teacher = None
    if role == "student" and uses_teacher:
        if not cfg.TEACHER.BACKBONE or not cfg.TEACHER.CHECKPOINT:
            raise ConfigError(
                f"DISTILL.TYPE '{cfg.DISTILL.TYPE}' distils from a teacher: set TEACHER.BACKBONE and "
                "TEACHER.CHECKPOINT (train one with train_teacher.py)"
            )
        teacher = build_network(cfg.TEACHER, num_classes)
        load_network_weights(teacher, cfg.TEACHER.CHECKPOINT, cfg.TEACHER.CHECKPOINT_SOURCE,
                             cfg.TEACHER.HEAD_CHECKPOINT or None)
    return trained, teacher


class Trainer:
    """Builds data, networks, distiller and optimiser from a config, then trains."""

    def __init__(self, cfg: Any, role: str = "student", resume: bool = False,
                 env: dist.DistEnv | None = None) -> None:
        if role not in ("teacher", "student"):
            raise ValueError(f"role must be teacher or student, not {role!r}")
        if role == "teacher" and cfg.DISTILL.TYPE != "none":
            cfg = cfg.clone()
            cfg.defrost()
            cfg.DISTILL.TYPE = "none"  # a teacher trains on labels alone
            cfg.freeze()
        self.role = role
        self.resume = resume
        self.env = env or dist.init_distributed(cfg.EXPERIMENT.DEVICE)
        self.device = self.env.device
        self.output_dir = Path(cfg.EXPERIMENT.OUTPUT_DIR)
        seed_everything(cfg.EXPERIMENT.SEED, cfg.EXPERIMENT.DETERMINISTIC)

        self.request = batch_request(cfg)  # what the methods' batches carry beyond image/label/index
        self.dataset = build_dataset(cfg, split="train", request=self.request)
        # SOLVER.FAST_PATH resolved into COMPILE / CHANNELS_LAST / FUSED once, for all code below
        self.cfg = cfg = apply_fast_path(fill_data_keys(cfg, self.dataset), self.device)
        self.num_classes = int(cfg.DATA.NUM_CLASSES or self.dataset.num_classes)
        self.plan = self._plan(len(self.dataset))
        self.loader = build_train_loader(cfg, self.dataset, self.plan.batch_per_rank, cfg.EXPERIMENT.SEED,
                                         rank=self.env.rank, world_size=self.env.world_size,
                                         device=self.device)  # this rank's device, not DEVICE's
        self.plan.iters_per_epoch = self.loader.batches_per_epoch
        self.plan.total_iters = self._total_iters(self.loader.batches_per_epoch)
        self.transform = TrainTransform(cfg, self.request)

        student, teacher = build_networks(cfg, role, self.num_classes, uses_teacher(cfg), self.env)
        self.distiller: Distiller = build_distiller(cfg, student, teacher, self.num_classes).to(self.device)
        if cfg.DATA.TEACHER_CACHE and role == "student":  # precomputed teacher outputs replace its forward
            self.distiller.teacher_cache = prepare_teacher_cache(cfg, self.dataset, self.distiller, self.transform,
                                                                 self.device, _precision_dtype(cfg, self.device))
        if cfg.SOLVER.SYNC_BN and self.env.world_size > 1:
            self.distiller.student = dist.convert_sync_bn(self.distiller.student)
        if cfg.SOLVER.CHANNELS_LAST:
            self.distiller.to(memory_format=torch.channels_last)
        if cfg.SOLVER.COMPILE:
            self._compile()
        self.model = self._wrap_ddp(self.distiller)

        self.base_lr = scaled_lr(cfg, self.plan.global_batch)
        self.init_optimizer = self._init_stage_optimizer() if role == "student" else None
        self.optimizer = build_optimizer(cfg, self.distiller.trainable_parameters(), self.base_lr, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.plan.main_iters, self.plan.iters_per_epoch,
                                         self.base_lr)
        self.autocast_dtype = _precision_dtype(cfg, self.device)
        self.iteration = 0
        self.best: dict[str, Any] = {"metric": -math.inf, "iteration": -1, "results": None}
        self.last_results: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []  # logged scalars, for curves.png
        self.writer = None
        self.bad_samples = BadSampleCounter()  # undecodable samples skipped (data/bad_samples.py)
        self.last_good: tuple[Path, int] | None = None  # newest checkpoint written (or resumed) from finite state
        self.resumed: dict[str, Any] | None = None  # where --resume continued from, and the safe changes
        self._teacher_hashes: dict[str, dict[str, str]] | None = None

    # -- set-up helpers -------------------------------------------------------------------------
    def _plan(self, num_samples: int) -> Plan:
        world = self.env.world_size
        batch = int(self.cfg.SOLVER.BATCH_SIZE)
        if batch % world:
            raise ConfigError(f"SOLVER.BATCH_SIZE {batch} is not divisible by the {world} processes")
        if num_samples < batch // world:
            raise ConfigError(
                f"the training set has {num_samples} samples, fewer than one batch per process "
                f"({batch // world}); lower SOLVER.BATCH_SIZE"
            )
        return Plan(iters_per_epoch=0, total_iters=0, global_batch=batch, batch_per_rank=batch // world)

    def _init_stage_optimizer(self) -> torch.optim.Optimizer | None:
        """SGD of the method's init stage (constant lr; SOLVER momentum and weight decay), and its
        length added in front of the main stage; None when the method has no init stage."""
        stage = self.distiller.init_stage()
        if stage is None:
            return None
        self.plan.init_iters = int(round(stage.epochs * self.plan.iters_per_epoch))
        self.plan.total_iters += self.plan.init_iters
        return torch.optim.SGD(stage.parameters, lr=stage.lr, momentum=self.cfg.SOLVER.MOMENTUM,
                               weight_decay=self.cfg.SOLVER.WEIGHT_DECAY)

    def _total_iters(self, iters_per_epoch: int) -> int:
        if self.cfg.SOLVER.MAX_ITERS > 0:
            return int(self.cfg.SOLVER.MAX_ITERS)
        return int(self.cfg.SOLVER.EPOCHS * iters_per_epoch)

    def _compile(self) -> None:
        """torch.compile the student's and teacher's feature passes (the hot path)."""
        for network in (self.distiller.student, getattr(self.distiller.teacher, "network", None)):
            if network is not None:
                network.backbone.forward_features = torch.compile(network.backbone.forward_features)

    def _wrap_ddp(self, distiller: Distiller) -> nn.Module:
        """DDP over the distiller; the teacher and per-rank state (Partial FC shards) stay outside.

        Buffers are not broadcast: per-rank BN statistics as in the seeds (SOLVER.SYNC_BN syncs them),
        and method state such as memory banks stays each rank's own.
        """
        return dist.wrap_ddp(distiller, self.env, broadcast_buffers=False)

    def _clipped_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradient norm is clipped: all trainable ones except per-rank shards,
        whose norms differ between ranks and would make the replicas drift apart."""
        ignored = {id(p) for m in self.distiller.modules() if getattr(m, "ddp_ignore", False) for p in m.parameters()}
        return [p for p in self.distiller.trainable_parameters() if id(p) not in ignored]

    # -- checkpoints ----------------------------------------------------------------------------
    def _sharded_heads(self) -> dict[str, PartialFC]:
        return {name: m for name, m in self.distiller.named_modules() if isinstance(m, PartialFC)}

    def model_state(self) -> dict[str, torch.Tensor]:
        """The distiller's state with Partial FC shards gathered into full (C, D) centres, so a
        checkpoint loads under any number of processes (a collective: every rank calls it)."""
        state = self.distiller.state_dict()
        for name, head in self._sharded_heads().items():
            state[f"{name}.weight"] = head.full_weight()
        return state

    def load_model_state(self, state: dict[str, torch.Tensor], origin: str) -> None:
        state = dict(state)
        for name, head in self._sharded_heads().items():
            head.load_full_weight(state[f"{name}.weight"].to(head.weight.device))
            state[f"{name}.weight"] = head.weight.detach()
        load_strict(self.distiller, state, origin)

    def _sharded_slots(self) -> dict[int, PartialFC]:
        """Optimizer state-dict slot -> Partial FC head, for the heads' sharded centres."""
        slots = {id(p): i for i, p in enumerate(p for g in self.optimizer.param_groups for p in g["params"])}
        return {slots[id(h.weight)]: h for h in self._sharded_heads().values() if id(h.weight) in slots}

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state with each Partial FC shard's momentum/moments gathered into full
        (C, D) rows, as the centres are: otherwise rank 0's shard state would be loaded by every
        rank on resume (a collective: every rank calls it)."""
        state = self.optimizer.state_dict()
        for slot, head in self._sharded_slots().items():
            if slot in state["state"]:
                state["state"][slot] = {
                    key: _gather_shard_rows(value, head) if _is_shard_shaped(value, head) else value
                    for key, value in state["state"][slot].items()
                }
        return state

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Inverse of `optimizer_state`: each rank keeps its own rows of the gathered shard state."""
        state = {**state, "state": dict(state["state"])}
        for slot, head in self._sharded_slots().items():
            if slot in state["state"]:
                full = (head.num_classes, *head.weight.shape[1:])
                stop = head.class_start + head.num_local
                state["state"][slot] = {
                    key: value[head.class_start:stop] if torch.is_tensor(value) and tuple(value.shape) == full
                    else value for key, value in state["state"][slot].items()
                }
        self.optimizer.load_state_dict(state)

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything `--resume` needs (a collective under DDP: every rank calls it)."""
        own_rng = pack_rng(rng_state())
        model = {k: v for k, v in self.model_state().items() if not k.startswith(TEACHER_PREFIX)}
        return {
            "model": model,  # the frozen teacher is identified by `teacher_files`, not stored
            "teacher_files": self.teacher_files(),
            "bad_samples": self.bad_samples.state_dict(),
            "optimizer": self.optimizer_state(),
            **({"init_optimizer": self.init_optimizer.state_dict()} if self.init_optimizer is not None else {}),
            "scheduler": self.scheduler.state_dict(),
            "iteration": self.iteration,
            "rng": own_rng,
            "rng_ranks": _all_gather_object(own_rng),  # each rank's own streams (dropout draws differ)
            "best": dict(self.best),
            "role": self.role,
            "num_classes": self.num_classes,
            "history": self.history,
            "config": self.cfg.dump(),
        }

    def teacher_files(self) -> dict[str, dict[str, str]]:
        """{config key: {path, sha256}} of the frozen teacher's files (hashed once per run)."""
        if self._teacher_hashes is None:
            self._teacher_hashes = {}
            if self.distiller.teacher is not None:
                for key in ("CHECKPOINT", "HEAD_CHECKPOINT"):
                    value = str(self.cfg.TEACHER[key] or "")
                    if value:
                        self._teacher_hashes[f"TEACHER.{key}"] = {"path": value, "sha256": file_sha256(value)}
        return self._teacher_hashes

    def _state_is_finite(self, state: dict[str, Any]) -> bool:
        """Whether every float tensor of the model and optimizer state is finite (on every rank)."""
        def finite(value: Any) -> bool:
            if torch.is_tensor(value):
                return not value.is_floating_point() or bool(torch.isfinite(value).all())
            if isinstance(value, dict):
                return all(finite(v) for v in value.values())
            if isinstance(value, (list, tuple)):
                return all(finite(v) for v in value)
            return True

        return not dist.any_rank_flag(not (finite(state["model"]) and finite(state["optimizer"]["state"])),
                                      self.device)

    def _last_good_text(self) -> str:
        if self.last_good is None:
            return "no checkpoint was written yet"
        path, iteration = self.last_good
        return f"the last good checkpoint is {path} (iteration {iteration})"

    def save(self, name: str) -> Path:
        """Write OUTPUT_DIR/`name` from finite state only (`last.pt` keeps its predecessor as
        `last.prev.pt`); non-finite weights stop the run with the newest good checkpoint named."""
        path = self.output_dir / name
        state = self.checkpoint_state()  # every rank: gathering sharded heads is a collective
        if not self._state_is_finite(state):
            raise DistilleryError(
                f"non-finite weights or optimizer state at iteration {self.iteration}; training stopped without "
                f"writing {name}, and {self._last_good_text()}. Lower SOLVER.LR or set SOLVER.GRAD_CLIP"
            )
        # last.pt's predecessor becomes last.prev.pt, unless it is this very iteration re-saved (the
        # end of training writes again after the final evaluation): then the older one stays previous
        rotate = name == "last.pt" and (self.last_good is None or self.last_good[1] != self.iteration)
        if self.env.is_main:
            save_checkpoint(state, path, keep_previous=rotate)
        dist.barrier()
        if name == "last.pt":
            self.last_good = (path, self.iteration)
        return path

    def _resume_path(self) -> Path:
        path = self.output_dir / "last.pt"
        if path.is_file():
            return path
        previous = previous_path(path)
        if previous.is_file():  # killed between keeping the previous checkpoint and writing the new one
            log.warning("%s is missing; resuming from the previous checkpoint %s", path, previous)
            return previous
        raise CheckpointError(f"--resume: no checkpoint at {path}; start without --resume")

    def _check_teacher_files(self, recorded: dict[str, Any], origin: Path) -> None:
        """The teacher is not stored in the checkpoint: it must be the very file the run started with."""
        current = self.teacher_files()
        for key, record in recorded.items():
            now = current.get(key)
            if now is None or now["sha256"] != record.get("sha256"):
                raise CheckpointError(
                    f"--resume: {key} ({record.get('path')}) is not the file {origin} was trained with (its SHA-256 "
                    "differs); restore that teacher file or start a new run"
                )

    def load_resume_state(self) -> None:
        path = self._resume_path()
        state = load_training_checkpoint(path, map_location=self.device)
        changes = check_resume_config(str(state.get("config", "")), self.cfg, get_defaults(), int(state["iteration"]),
                                      self.plan.total_iters, str(path))
        self._check_teacher_files(state.get("teacher_files", {}), path)
        model = {k: v for k, v in state["model"].items() if not k.startswith(TEACHER_PREFIX)}
        model.update({k: v for k, v in self.distiller.state_dict().items() if k.startswith(TEACHER_PREFIX)})
        self.load_model_state(model, str(path))
        try:
            self.load_optimizer_state(state["optimizer"])
        except (KeyError, ValueError, IndexError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: its optimizer state does not fit this run's SOLVER.OPTIMIZER "
                                  f"'{self.cfg.SOLVER.OPTIMIZER}' ({type(exc).__name__}: {exc})") from None
        if self.init_optimizer is not None and "init_optimizer" in state:
            self.init_optimizer.load_state_dict(state["init_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.iteration = int(state["iteration"])
        self.best.update(state.get("best", {}))
        self.history = list(state.get("history", []))
        self.bad_samples.load_state_dict(state.get("bad_samples", {}))
        rng_ranks = state.get("rng_ranks") or [state["rng"]]
        if len(rng_ranks) == self.env.world_size:
            set_rng_state(unpack_rng(rng_ranks[self.env.rank]))
        else:  # another number of processes: exact continuation is impossible anyway
            log.warning("resuming %d process(es) from a checkpoint of %d: random streams restart per rank",
                        self.env.world_size, len(rng_ranks))
            set_rng_state(unpack_rng(rng_ranks[0]))
            self._seed_rank_streams()
        self.last_good = (path, self.iteration)
        self.resumed = {"from_iteration": self.iteration, "checkpoint": str(path),
                        "changes": {key: list(change) for key, change in changes.items()}}
        if changes:
            log.info("resumed with changed settings: %s",
                     ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
        log.info("resumed from %s at iteration %d", path, self.iteration)

    def _seed_rank_streams(self) -> None:
        """Under DDP, give each rank its own global RNG stream once the (identical) initial weights
        exist, so dropout masks differ between ranks as they differ between samples of one batch."""
        if self.env.world_size > 1:
            seed_everything(worker_seed(self.cfg.EXPERIMENT.SEED, self.iteration, self.env.rank, self.env.world_size),
                            self.cfg.EXPERIMENT.DETERMINISTIC)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, periodic: bool = False) -> dict[str, Any] | None:
        """Evaluate the trained network (rank 0); keep `best.pt` by the main metric. `periodic`: an
        EVAL.PERIOD evaluation, which skips the large benchmarks unless their PERIODIC key asks."""
        results = None
        if self.env.is_main:
            network = self.distiller.student
            was_training = network.training
            network.eval()
            results = evaluate(self.cfg, network, self.device, output_dir=self.output_dir,  # fp32: faithful numbers
                               periodic=periodic)
            network.train(was_training)
            results["iteration"] = self.iteration
            self.last_results = results
            self._log_scalars({f"eval/{k}": v for k, v in _flat_metrics(results).items()})
            log.info("iteration %d: main metric %.4f", self.iteration, results["main"])
        improved = dist.broadcast_object(results is not None and results["main"] > self.best["metric"])
        if improved:
            self.best = {"metric": results["main"] if results else 0.0, "iteration": self.iteration,
                         "results": results}
            self.save("best.pt")
        return results

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- logging ------------------------------------------------------------------------------------
    def _open_writer(self) -> None:
        if self.env.is_main and self.cfg.LOG.TENSORBOARD:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output_dir / "tb"))

    def _log_scalars(self, scalars: dict[str, float]) -> None:
        self.history.append({"iteration": self.iteration, **scalars})
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, self.iteration)

    # -- the loop -------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimiser step on one CPU batch; returns the summed loss and its terms (on device)."""
        batch = to_device(without_skip_fields(batch), self.device)  # counted by the loop, if at all
        generator = torch.Generator(device=self.device)
        generator.manual_seed(worker_seed(self.cfg.EXPERIMENT.SEED, self.iteration, self.env.rank))
        batch = self.transform(batch, generator)
        in_init_stage = self.iteration < self.plan.init_iters
        batch["init_stage"] = in_init_stage  # the distiller returns its init-stage losses then
        batch["epoch"] = max(self.iteration - self.plan.init_iters, 0) // self.plan.iters_per_epoch + 1
        # One explicit layout for every view: the uint8 NHWC -> NCHW permute leaves channels-last strides,
        # which would otherwise run the networks (and copy every weight gradient) in that layout unasked.
        memory_format = torch.channels_last if self.cfg.SOLVER.CHANNELS_LAST else torch.contiguous_format
        for key in ("image", "image_teacher", "image_partner", "image_partner_teacher"):
            if key in batch:
                batch[key] = batch[key].contiguous(memory_format=memory_format)
        with self._autocast():
            _, losses = self.model(batch)
        total = sum(value.float() for value in losses.values())
        optimizer = self.init_optimizer if in_init_stage else self.optimizer
        self.optimizer.zero_grad(set_to_none=True)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.SOLVER.GRAD_CLIP > 0:
            nn.utils.clip_grad_norm_(self._clipped_parameters(), self.cfg.SOLVER.GRAD_CLIP)
        optimizer.step()
        if not in_init_stage:
            self.scheduler.step()
        return total.detach(), {k: v.detach() for k, v in losses.items()}

    def _check_finite(self, flag: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        if dist.any_rank_flag(bool(flag.item()), self.device):
            described = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise DistilleryError(
                f"non-finite loss at iteration {self.iteration} ({described}); training stopped and "
                f"{self._last_good_text()}. Lower SOLVER.LR or set SOLVER.GRAD_CLIP"
            )

    def _check_bad_samples(self) -> None:
        """Stop every rank together once the undecodable samples pass the ceiling (recorded in run.json)."""
        stop = dist.any_rank_flag(self.bad_samples.over_ceiling(), self.device)
        if stop and self.env.is_main:
            update_run_json(self.output_dir, skipped_samples=self.bad_samples.summary())
        self.bad_samples.check(stop)

    def train(self) -> dict[str, Any]:
        """Train to the configured length; returns {'last': results, 'best': results, ...}."""
        cfg, plan = self.cfg, self.plan
        if self.resume:
            self.load_resume_state()
        else:
            self._seed_rank_streams()
        if self.env.is_main:
            write_run_files(cfg, self.output_dir, self.device, self.env.world_size, self.role, self.resumed)
        self._open_writer()
        log.info("%s training: %d iterations (%d per epoch), global batch %d, lr %.4g, device %s",
                 self.role, plan.total_iters, plan.iters_per_epoch, plan.global_batch, self.base_lr, self.device)
        self.model.train()
        progress = self._progress()
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        window: list[dict[str, torch.Tensor]] = []
        tick, seen = time.perf_counter(), 0
        check_every_step = self.device.type == "cpu"
        while self.iteration < plan.total_iters:
            epoch, position = divmod(self.iteration, plan.iters_per_epoch)
            self.loader.set_epoch(epoch)
            self.loader.set_start(position)
            for batch in self.loader:
                if self.iteration >= plan.total_iters:
                    break
                total, terms = self.train_step(self.bad_samples.take(batch))
                bad |= ~torch.isfinite(total)
                self.iteration += 1
                seen += plan.global_batch
                if window and window[-1].keys() != terms.keys():  # init stage -> main stage
                    window = []
                window.append(terms)
                at_log = self.iteration % cfg.LOG.PERIOD == 0 or self.iteration == plan.total_iters
                at_ckpt = self.iteration % cfg.SOLVER.CHECKPOINT_PERIOD == 0 or self.iteration == plan.total_iters
                at_eval = cfg.EVAL.PERIOD > 0 and self.iteration % cfg.EVAL.PERIOD == 0
                if check_every_step or at_log or at_ckpt or at_eval:
                    self._check_finite(bad, terms)
                    self._check_bad_samples()
                if at_log:
                    elapsed = time.perf_counter() - tick
                    self._report(window, seen / max(elapsed, 1e-9), progress)
                    window, tick, seen = [], time.perf_counter(), 0
                if progress is not None:
                    progress.update(1)
                if at_eval and self.iteration < plan.total_iters:
                    self.evaluate(periodic=True)
                    self.model.train()
                if at_ckpt:
                    self.save("last.pt")
        if progress is not None:
            progress.close()
        results = self.evaluate()
        self.save("last.pt")
        summary = {"last": results, "best": self.best.get("results") or results,
                   "best_iteration": self.best["iteration"], "last_iteration": self.iteration}
        if self.env.is_main and results is not None:
            write_results(summary, self.output_dir)
        if self.env.is_main:
            plot_training_curves(self.history, self.output_dir / "curves.png")
            update_run_json(self.output_dir, skipped_samples=self.bad_samples.summary())
        if self.writer is not None:
            self.writer.close()
        return summary

    def _progress(self):
        if not (self.env.is_main and self.cfg.LOG.PROGRESS):
            return None
        from tqdm import tqdm

        return tqdm(total=self.plan.total_iters, initial=self.iteration, desc=self.role, dynamic_ncols=True,
                    mininterval=2.0)

    def _report(self, window: list[dict[str, torch.Tensor]], images_per_s: float, progress) -> None:
        """Average the window's loss terms (one host sync), then log, TensorBoard and tqdm."""
        names = list(window[-1])
        means = torch.stack([torch.stack([w[n].float() for w in window]).mean() for n in names])
        means = dist.all_reduce_mean(means)
        values = dict(zip(names, means.tolist()))
        values["total"] = sum(values.values())
        lr = self.optimizer.param_groups[0]["lr"]
        skipped = {"data/skipped_samples": float(self.bad_samples.skipped)} if self.bad_samples.skipped else {}
        self._log_scalars({**{f"loss/{k}": v for k, v in values.items()}, "lr": lr, "images_per_s": images_per_s,
                           **skipped})
        if progress is not None:
            progress.set_postfix({**{k: f"{v:.3f}" for k, v in values.items()}, "lr": f"{lr:.3g}",
                                  "img/s": f"{images_per_s:.0f}"}, refresh=False)
        log.info("iteration %d/%d: %s lr %.4g, %.0f images/s", self.iteration, self.plan.total_iters,
                 " ".join(f"{k} {v:.4f}" for k, v in values.items()), lr, images_per_s)


def _is_shard_shaped(value: Any, head: PartialFC) -> bool:
    return torch.is_tensor(value) and value.dim() > 0 and tuple(value.shape) == tuple(head.weight.shape)


def _gather_shard_rows(shard: torch.Tensor, head: PartialFC) -> torch.Tensor:
    """A tensor shaped like `head`'s (local, D) shard, gathered from every rank into (C, D) rows in
    class order (shards may differ in size by one, so they travel padded)."""
    if head.world_size <= 1:
        return shard.detach().clone()
    largest = -(-head.num_classes // head.world_size)
    padded = shard.new_zeros(largest, *shard.shape[1:])
    padded[:shard.shape[0]] = shard
    parts = [torch.empty_like(padded) for _ in range(head.world_size)]
    torch.distributed.all_gather(parts, padded)
    counts = [class_shard(head.num_classes, r, head.world_size)[1] for r in range(head.world_size)]
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def _all_gather_object(obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order ([obj] in a single process)."""
    if dist.get_world_size() <= 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def _flat_metrics(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Scalar leaves of a results dict, slash-joined (for TensorBoard)."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        if isinstance(value, dict):
            flat.update(_flat_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "iteration":
            flat[f"{prefix}{key}"] = float(value)
    return flat
