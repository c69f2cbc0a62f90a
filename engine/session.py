"""What the CLIs do: load the config, set up logging and devices, then train, dry-run or test."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from engine import distributed as dist
from engine.checkpoint import (
    is_distillery_checkpoint,
    load_checkpoint,
    load_network_weights,
    load_strict,
    network_state_from_checkpoint,
)
from engine.evaluate import evaluate
from engine.preflight import check_run_inputs
from engine.results import format_table, write_results
from engine.run_dir import RunDir
from kd import method_names
from models import build_network
from models.network import Network
from utility.config import load_config
from utility.errors import CheckpointError, ConfigError
from utility.logging import setup_logging

log = logging.getLogger("distillery")


def run_training(config: str | None, overrides: Sequence[str], role: str, resume: bool | str = False,
                 dry_run: bool = False, overwrite: bool = False) -> int:
    """Train (or dry-run) the teacher or the student a config describes.

    `resume`: False/"no", True/"yes" (continue OUTPUT_DIR/last.pt) or "auto" (continue when a
    checkpoint exists). Before anything is written the output folder is claimed (engine/run_dir.py:
    locked, never silently overwritten) and every input the run reads later is checked.
    """
    mode = {True: "yes", False: "no"}.get(resume, resume) if isinstance(resume, bool) else str(resume)
    cfg = load_config(config, list(overrides))
    apply_thread_count(cfg)
    env = dist.init_distributed(cfg.EXPERIMENT.DEVICE)
    run_dir = None
    finished = False
    try:
        setup_logging(None, env.rank)
        from engine.trainer import Trainer
        from kd import uses_teacher

        check_run_inputs(cfg, role, role == "student" and uses_teacher(cfg))
        resumes = False
        if not dry_run:
            run_dir, problem = _claim_on_main(cfg, env, mode, overwrite)
            resumes, problem = dist.broadcast_object((run_dir.resume if run_dir else False, problem))
            if problem is not None:  # every rank stops with rank 0's one-line reason
                raise ConfigError(problem)
            setup_logging(cfg.EXPERIMENT.OUTPUT_DIR, env.rank)
        trainer = Trainer(cfg, role=role, resume=resumes, env=env)
        if dry_run:
            report = dry_run_report(trainer)  # every rank steps (DDP collectives); rank 0 prints
            if env.is_main:
                print(report)
        else:
            summary = trainer.train()
            if env.is_main and summary.get("last") is not None:
                print(format_table(summary))
        finished = True
        return 0
    finally:
        if run_dir is not None:
            run_dir.release()
        dist.cleanup(wait_for_peers=finished)


def _claim_on_main(cfg: Any, env: Any, mode: str, overwrite: bool) -> tuple[RunDir | None, str | None]:
    """Rank 0 claims the output folder; a refusal is returned (not raised) so that every rank can
    hear it before stopping."""
    if not env.is_main:
        return None, None
    try:
        return RunDir.claim(cfg.EXPERIMENT.OUTPUT_DIR, mode, overwrite), None
    except ConfigError as exc:
        if env.world_size <= 1:
            raise
        return None, str(exc)


def apply_thread_count(cfg: Any) -> None:
    """EXPERIMENT.THREADS > 0: fix torch's CPU thread count, whatever OMP_NUM_THREADS or the core count.

    CPU kernels split reductions (convolution weight gradients, batch-norm statistics, sums) into
    per-thread partial sums, so the float result of a run depends on the thread count; fixing it
    makes a CPU run repeat bit for bit on any machine with the same instruction set.
    """
    if int(cfg.EXPERIMENT.THREADS) > 0:
        torch.set_num_threads(int(cfg.EXPERIMENT.THREADS))


def count_parameters(module: torch.nn.Module | None) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    if module is None:
        return 0, 0
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def flops_per_image(network: torch.nn.Module, image_size: int, device: torch.device) -> int:
    """Forward FLOPs of one image by torch's flop counter (2 per multiply-accumulate: MACs = FLOPs / 2)."""
    was_training = network.training
    network.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 3, image_size, image_size, device=device))
    network.train(was_training)
    return int(counter.get_total_flops())


def compute_label(flops: int) -> str:
    """Both conventions, labelled: KD papers tabulate multiply-accumulates under the name FLOPs."""
    return f"{flops / 1e9:.3f} GFLOPs ({flops / 2e9:.3f} GMACs, the 'FLOPs' of KD papers' tables)/image"


def dry_run_report(trainer: Any) -> str:
    """One forward/backward on one batch, then sizes, FLOPs / MACs and the config sections the run uses."""
    batch = trainer.bad_samples.take(next(iter(trainer.loader)))
    total, terms = trainer.train_step(batch)
    if not torch.isfinite(total):
        raise ConfigError(f"dry run: the first step's loss is not finite ({ {k: float(v) for k, v in terms.items()} })")
    distiller = trainer.distiller
    size = int(trainer.cfg.DATA.IMAGE_SIZE)
    student_all, student_train = count_parameters(distiller.student)
    teacher_all, _ = count_parameters(distiller.teacher)
    extras = sum(p.numel() for p in distiller.trainable_parameters()) - student_train
    lines = [
        f"dry run ({trainer.role}) on {trainer.device}: one step, loss {float(total):.4f} "
        + " ".join(f"{k}={float(v):.4f}" for k, v in terms.items()),
        f"training set: {len(trainer.dataset)} images, {trainer.num_classes} classes; "
        f"{trainer.plan.total_iters} iterations of batch {trainer.plan.global_batch}",
        f"trained network: {student_all:,} parameters ({student_train:,} trainable), "
        + compute_label(flops_per_image(distiller.student, size, trainer.device)),
    ]
    if distiller.teacher is not None:
        teacher_flops = flops_per_image(distiller.teacher.network, size, trainer.device)
        lines.append(f"teacher: {teacher_all:,} parameters (frozen), {compute_label(teacher_flops)}")
    lines.append(f"method extras: {extras:,} trainable parameters")
    from engine.catalogue import used_sections

    lines.append("resolved config (the sections this run reads; OUTPUT_DIR/config.yaml holds every key):")
    lines.append(used_sections(trainer.cfg, trainer.role, method_names(trainer.cfg)))
    return "\n".join(lines)


def _num_classes_for_test(cfg: Any, state: dict[str, torch.Tensor] | None, checkpoint: dict | None) -> int:
    if cfg.DATA.NUM_CLASSES > 0:
        return int(cfg.DATA.NUM_CLASSES)
    if checkpoint is not None and checkpoint.get("num_classes"):
        return int(checkpoint["num_classes"])
    if cfg.EXPERIMENT.TASK == "face":
        return 1  # the backbone alone is evaluated; no head is built
    raise ConfigError("set DATA.NUM_CLASSES to evaluate this classification checkpoint")


def load_for_test(cfg: Any, node: Any, path: str | Path, device: torch.device) -> Network:
    """A head-less network (backbone only) with weights from a Distillery or published checkpoint."""
    path = Path(path)
    raw = load_checkpoint(path)
    is_ours = is_distillery_checkpoint(raw)
    num_classes = _num_classes_for_test(cfg, None, raw if is_ours else None)
    network = Network(build_network(node, num_classes).backbone, None)
    if is_ours:
        state = {k: v for k, v in network_state_from_checkpoint(raw).items() if not k.startswith("head.")}
        load_strict(network, state, str(path))
    else:
        load_network_weights(network, path, node.CHECKPOINT_SOURCE)
    return network.to(device).eval()


def load_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> tuple[Any, str]:
    """A finished run's own resolved `config.yaml` (OUTPUT_DIR = the folder itself) and its role.

    The recipe file alone would forget every command-line override the run was trained with
    (its DATA.ROOT, its SOLVER keys, its seed); the resolved copy has them all.
    """
    folder = Path(run_dir)
    config = folder / "config.yaml"
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such run folder (give a folder that training wrote, or --config FILE)")
    if not config.is_file():
        raise ConfigError(f"{folder}: no config.yaml in this folder; is it a run folder? (or use --config FILE)")
    role = "student"
    info = folder / "run.json"
    if info.is_file():
        import json

        try:
            role = json.loads(info.read_text()).get("role", "student")
        except json.JSONDecodeError:
            raise ConfigError(f"{info}: not valid JSON; fix or delete it") from None
    cfg = load_config(config, [*overrides, "EXPERIMENT.OUTPUT_DIR", str(folder)])
    return cfg, role


def run_test(config: str, overrides: Sequence[str], checkpoint: str = "", teacher: bool = False,
             output: str = "", attention_maps: int = 0, run_dir: str = "") -> int:
    """Evaluate checkpoints and write results.json / results.md.

    With `run_dir` the run's own config.yaml is used and its last.pt / best.pt are evaluated, as the
    network its run.json says it trained (a teacher run evaluates TEACHER).
    """
    trained_teacher = False
    if run_dir:
        cfg, role = load_run_config(run_dir, overrides)
        trained_teacher = role == "teacher"
        teacher = teacher or trained_teacher
    else:
        cfg = load_config(config, list(overrides))
    apply_thread_count(cfg)
    env = dist.init_distributed(cfg.EXPERIMENT.DEVICE)
    setup_logging(None, env.rank)
    if not env.is_main:  # evaluation is not sharded: under torchrun rank 0 alone evaluates and writes
        dist.cleanup(wait_for_peers=False)  # no collective ran, and rank 0 may evaluate for hours
        return 0
    node = cfg.TEACHER if teacher else cfg.STUDENT
    run_dir = Path(cfg.EXPERIMENT.OUTPUT_DIR)
    if checkpoint:
        targets = {"last": Path(checkpoint)}
    elif teacher and not trained_teacher:
        if not cfg.TEACHER.CHECKPOINT:
            raise ConfigError("--teacher: set TEACHER.CHECKPOINT or pass --checkpoint")
        targets = {"last": Path(cfg.TEACHER.CHECKPOINT)}
    else:
        targets = {name: run_dir / f"{name}.pt" for name in ("last", "best") if (run_dir / f"{name}.pt").is_file()}
        if not targets:
            raise CheckpointError(f"no checkpoint in {run_dir} (last.pt / best.pt); train first or pass --checkpoint")
    out_dir = Path(output) if output else (Path(targets["last"]).parent if teacher else run_dir)
    summary: dict[str, Any] = {}
    for name, path in targets.items():
        network = load_for_test(cfg, node, path, env.device)
        with torch.no_grad():
            summary[name] = evaluate(cfg, network, env.device, output_dir=out_dir / f"roc_{name}")
        summary[name]["checkpoint"] = str(path)
    summary.setdefault("best", summary["last"])
    write_results(summary, out_dir)
    print(format_table(summary))
    if attention_maps > 0:
        from engine.attention_maps import write_attention_maps

        networks = {"teacher" if teacher else "student": load_for_test(cfg, node, targets["last"], env.device)}
        if not teacher and cfg.TEACHER.BACKBONE and cfg.TEACHER.CHECKPOINT:
            networks = {"teacher": load_for_test(cfg, cfg.TEACHER, cfg.TEACHER.CHECKPOINT, env.device), **networks}
        paths = write_attention_maps(cfg, networks, attention_maps, out_dir, env.device)
        print(f"attention maps: {len(paths)} images in {paths[0].parent}")
    dist.cleanup(wait_for_peers=False)
    return 0
