"""What `run_teacher.sh` / `run_student.sh` do: parse every argument, check every run, then train them in turn.

    bash run_student.sh CONFIG [CONFIG ...] [KEY VALUE ...] [--seeds S ...] [--sweep KEY V1 V2 ...]...
                        [--resume [auto]] [--overwrite] [--dry-run] [-- KEY VALUE ...]

A mistake (an unknown option, a missing config, a bad key or value in any combination) must surface
before the first run starts, not after an hour of training, so the whole plan is built and every
resolved config is validated up front. Runs go into `<OUTPUT_DIR>/<KEY>=<V>/.../seed<S>` (one folder level
per swept key, `seed<S>` only with --seeds) so `test.py --summary OUTPUT_DIR` tables them.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from utility.config import load_config
from utility.errors import ConfigError, DistilleryError

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")
FLAGS = ("--seeds", "--sweep", "--resume", "--overwrite", "--dry-run", "--help", "-h", "--")

#: config keys that name a registry entry, checked before the first run starts
REGISTRY_KEYS = {
    "TEACHER.BACKBONE": "backbone",
    "STUDENT.BACKBONE": "backbone",
    "TEACHER.HEAD": "head",
    "STUDENT.HEAD": "head",
    "DATA.FORMAT": "dataset",
}


def usage(role: str) -> str:
    return (f"usage: bash run_{role}.sh CONFIG [CONFIG ...] [KEY VALUE ...] [--seeds S ...] "
            "[--sweep KEY V1 V2 ...]... [--resume [auto]] [--overwrite] [--dry-run] [-- KEY VALUE ...]")


HELP = """
Trains each CONFIG in turn (paths relative to where you call the script), with the KEY VALUE overrides
(after the configs, or after --) applied to every run.
  --seeds S ...          one run per seed, into <OUTPUT_DIR>/seed<S>
  --sweep KEY V1 V2 ...  one run per value, into <OUTPUT_DIR>/<KEY>=<V>; repeat for a grid (every
                         combination, one folder level per key); combines with --seeds
  --resume [auto]        continue each run from its last.pt (auto: resume where one exists, else start)
  --overwrite            replace a previous run's files in an output folder
  --dry-run              build each run and take one step, printing sizes and FLOPs; trains nothing
Every config and every combination is validated before the first run starts.
NPROC_PER_NODE=N runs each training under torchrun (DDP, one process per GPU)."""


@dataclass
class Plan:
    """The parsed command line."""

    configs: list[Path] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    sweeps: list[tuple[str, list[str]]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


@dataclass
class Run:
    config: Path
    overrides: list[str]
    output_dir: str


def parse(role: str, caller: Path, argv: Sequence[str]) -> Plan:
    """Arguments into a Plan; a ConfigError with the usage line for anything it cannot place."""
    plan = Plan()
    args = list(argv)
    mode = "configs"
    i = 0

    def fail(message: str) -> ConfigError:
        return ConfigError(f"run_{role}.sh: {message}. {usage(role)}")

    while i < len(args):
        token = args[i]
        if token == "--":
            rest = args[i + 1:]
            if len(rest) % 2:
                raise fail(f"overrides after -- come in KEY VALUE pairs; '{rest[-1]}' has no value")
            plan.overrides += rest
            break
        if token == "--resume" and i + 1 < len(args) and args[i + 1] == "auto":
            plan.flags += ["--resume", "auto"] if "--resume" not in plan.flags else []
            mode = "configs"
            i += 1
        elif token in ("--resume", "--overwrite", "--dry-run"):
            plan.flags += [token] if token not in plan.flags else []
            mode = "configs"
        elif token == "--seeds":
            mode = "seeds"
        elif token == "--sweep":
            if i + 1 >= len(args) or not KEY.fullmatch(args[i + 1]):
                raise fail("--sweep takes a KEY (e.g. DISTILL.KD.TEMPERATURE) and then its values")
            plan.sweeps.append((args[i + 1], []))
            mode = "sweep"
            i += 1
        elif token.startswith("-") and not re.fullmatch(r"-\d[\d.e+-]*", token):
            raise fail(f"unknown option '{token}'")
        elif mode == "sweep" and not KEY.fullmatch(token):
            plan.sweeps[-1][1].append(token)
        elif KEY.fullmatch(token):
            if i + 1 >= len(args):
                raise fail(f"override '{token}' has no value")
            plan.overrides += [token, args[i + 1]]
            mode = "overrides"
            i += 1
        elif mode == "seeds":
            if not re.fullmatch(r"\d+", token):
                raise fail(f"--seeds takes integers, got '{token}'")
            plan.seeds.append(int(token))
        elif mode == "configs" and not plan.overrides:
            path = Path(token).expanduser()
            plan.configs.append(path if path.is_absolute() else caller / path)
        else:
            raise fail(f"'{token}' is neither a config (configs come first) nor a KEY VALUE override")
        i += 1
    if not plan.configs:
        raise fail("no CONFIG given")
    for key, values in plan.sweeps:
        if not values:
            raise fail(f"--sweep {key} has no values")
    if "--seeds" in args and not plan.seeds:
        raise fail("--seeds has no seeds")
    for config in plan.configs:
        if not config.is_file():
            raise ConfigError(f"config file not found: {config}")
    return plan


def _value_folder(value: str) -> str:
    return re.sub(r"[/\\\s]+", "_", value)


def _check_names(cfg) -> None:
    """Registry names (backbones, heads, datasets, distillers) are checked by builders; check them now."""
    from data import DATASETS
    from kd import method_names
    from models import BACKBONES, HEADS

    tables = {"backbone": BACKBONES, "head": HEADS, "dataset": DATASETS}
    for key, kind in REGISTRY_KEYS.items():
        section, name = key.split(".")
        value = str(cfg[section][name])
        if value and not (key == "DATA.FORMAT" and value == "auto"):
            tables[kind].get(value)
    method_names(cfg)  # every name in DISTILL.TYPE is a registered distiller


def expand(plan: Plan) -> list[Run]:
    """Every (config, sweep combination, seed) run, each resolved config validated."""
    runs = []
    grids = list(itertools.product(*[[(key, v) for v in values] for key, values in plan.sweeps]))
    for config in plan.configs:
        base = str(load_config(config, plan.overrides).EXPERIMENT.OUTPUT_DIR)
        for combination in grids:
            pairs = [item for key_value in combination for item in key_value]
            folder = Path(base, *[f"{key}={_value_folder(value)}" for key, value in combination])
            for seed in plan.seeds or [None]:
                extra = list(pairs)
                if seed is not None:
                    extra += ["EXPERIMENT.SEED", str(seed)]
                    out = folder / f"seed{seed}"
                else:
                    out = folder
                if plan.sweeps or seed is not None:
                    extra += ["EXPERIMENT.OUTPUT_DIR", str(out)]
                try:
                    cfg = load_config(config, plan.overrides + extra)
                    _check_names(cfg)
                except DistilleryError as error:
                    where = " ".join(f"{k}={v}" for k, v in combination)
                    raise ConfigError(f"{error}" + (f" (in the sweep combination {where})" if where else "")) from None
                runs.append(Run(config, plan.overrides + extra, str(out)))
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m engine.launch ROLE CALLER_DIR ARGS...` (what the two shell scripts exec)."""
    args = list(sys.argv[1:] if argv is None else argv)
    role, caller, rest = args[0], Path(args[1]), args[2:]
    if any(token in ("--help", "-h") for token in rest[: rest.index("--") if "--" in rest else None]):
        print(usage(role) + HELP)
        return 0
    try:
        plan = parse(role, caller, rest)
        runs = expand(plan)
    except DistilleryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    launcher = [sys.executable]
    if int(os.environ.get("NPROC_PER_NODE", "1") or 1) > 1:
        launcher = ["torchrun", f"--nproc_per_node={os.environ['NPROC_PER_NODE']}"]
    script = str(ROOT / f"train_{role}.py")
    print(f"run_{role}.sh: {len(runs)} run(s) checked", file=sys.stderr)
    for number, run in enumerate(runs, 1):
        if len(runs) > 1:
            print(f"== run {number}/{len(runs)}: {run.config.name} -> {run.output_dir}", file=sys.stderr, flush=True)
        code = subprocess.call([*launcher, script, "--config", str(run.config), *plan.flags, *run.overrides],
                               cwd=ROOT)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
