"""Which config changes `--resume` accepts: a resumed run must still be one experiment.

The config saved in the checkpoint is compared key by key with the one the resumed run builds.
Keys are classed by prefix: SAFE_PREFIXES change how the run is executed or reported, not what is
trained (more iterations, evaluation and logging, workers, device, speed switches), and are
allowed and recorded in run.json's history. Every other key is unsafe and refused, so a key added
later (a new method's `DISTILL.<NAME>.*`) is unsafe without anyone listing it.
"""

from __future__ import annotations

from typing import Any

import yaml

from utility.errors import ConfigError

#: keys (or whole sections, ending with '.') whose change keeps the run the same experiment
SAFE_PREFIXES = (
    "EXPERIMENT.NAME", "EXPERIMENT.OUTPUT_DIR", "EXPERIMENT.DEVICE", "EXPERIMENT.DETERMINISTIC",
    "SOLVER.MAX_ITERS", "SOLVER.EPOCHS", "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.COMPILE", "SOLVER.CHANNELS_LAST", "SOLVER.FUSED", "SOLVER.FAST_PATH",
    "DATA.WORKERS", "DATA.PIN_MEMORY",
    "EVAL.", "LOG.",
)
#: keys that set the training length (allowed to grow, never below the checkpoint's iteration)
LENGTH_KEYS = ("SOLVER.MAX_ITERS", "SOLVER.EPOCHS")


def is_safe(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in SAFE_PREFIXES)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """`{"SOLVER.LR": 0.1, ...}` from a (yacs or plain) nested mapping."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_ABSENT = object()


def config_changes(saved_yaml: str, cfg: Any, defaults: Any) -> dict[str, tuple[Any, Any]]:
    """{key: (saved, new)} for every key that differs. A key the saved config lacks (the schema
    grew since) counts as its default."""
    saved = flatten(yaml.safe_load(saved_yaml) or {})
    new = flatten(cfg)
    known_defaults = flatten(defaults)
    changes = {}
    for key in sorted(set(saved) | set(new)):
        before = saved.get(key, known_defaults.get(key, _ABSENT))
        after = new.get(key, _ABSENT)
        if _normalise(before) != _normalise(after):
            changes[key] = (None if before is _ABSENT else before, None if after is _ABSENT else after)
    return changes


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def check_resume_config(saved_yaml: str, cfg: Any, defaults: Any, checkpoint_iteration: int, total_iters: int,
                        origin: str) -> dict[str, tuple[Any, Any]]:
    """Raise ConfigError naming every unsafe change; return the safe ones (for run.json's history)."""
    changes = config_changes(saved_yaml, cfg, defaults)
    unsafe = [key for key in changes if not is_safe(key)]
    if unsafe:
        described = ", ".join(f"{key} {changes[key][0]!r} -> {changes[key][1]!r}" for key in unsafe)
        raise ConfigError(
            f"--resume: {origin} was trained with another config; these keys change what is trained: "
            f"{described}. Resume with the run's own values, or start a new run in another EXPERIMENT.OUTPUT_DIR"
        )
    if total_iters < checkpoint_iteration:
        length = ", ".join(f"{key} {changes[key][1]!r}" for key in LENGTH_KEYS if key in changes) or "the length"
        raise ConfigError(
            f"--resume: {length} gives {total_iters} iterations, fewer than the {checkpoint_iteration} "
            f"{origin} has already trained; ask for at least {checkpoint_iteration}, or evaluate the run with test.py"
        )
    return changes
