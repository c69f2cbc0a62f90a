"""Shared plumbing of the command-line entry points: arguments, config, user-error handling.

A `DistilleryError` (bad config, missing file, corrupt data, mismatched checkpoint) is printed as
one line on stderr and exits with status 2; anything else keeps its traceback because it is a bug.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence

from utility.errors import DistilleryError


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="experiment YAML (may inherit with _BASE_)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="KEY VALUE pairs overriding the config, e.g. SOLVER.LR 0.05")
    return parser


def training_main(role: str, description: str, argv: Sequence[str] | None = None) -> int:
    """`train_teacher.py` / `train_student.py`: the same options, a different network trained."""
    if list_requested(argv):
        return print_catalogue()
    parser = base_parser(description)
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt")
    parser.add_argument("--dry-run", action="store_true",
                        help="build everything, run one forward/backward, print sizes and FLOPs, exit")
    parser.add_argument("--list", action="store_true",
                        help="list distillers (with their keys), backbones, heads, datasets and recipes, then exit")
    args = parser.parse_args(argv)
    from engine.session import run_training

    return run_training(args.config, args.overrides, role=role, resume=args.resume, dry_run=args.dry_run)


def list_requested(argv: Sequence[str] | None) -> bool:
    """`--list` among the options (before any KEY VALUE override), which needs no --config."""
    args = list(sys.argv[1:] if argv is None else argv)
    return "--list" in args


def print_catalogue() -> int:
    """`--list`: what a config can name (engine/catalogue.py)."""
    from engine.catalogue import catalogue

    print(catalogue())
    return 0


def is_override_key(token: str) -> bool:
    """A `SECTION.KEY` override name, as opposed to a path."""
    return re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+", token) is not None


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call `main`, turning user errors into one line and exit status 2."""
    try:
        return main(argv)
    except DistilleryError as exc:
        logging.getLogger("distillery").debug("user error", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
