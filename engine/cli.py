"""Shared plumbing of the command-line entry points: arguments, config, user-error handling.

A `DistilleryError` (bad config, missing file, corrupt data, mismatched checkpoint) is printed as
one line on stderr and exits with status 2; anything else keeps its traceback because it is a bug.
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
from collections.abc import Callable, Sequence

from utility.errors import DistilleryError

#: file-system faults a user fixes (full disk, quota, read-only or forbidden folder), not bugs
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="experiment YAML (may inherit with _BASE_)")
    parser.add_argument("overrides", nargs="*", metavar="KEY VALUE",
                        help="pairs overriding the config, e.g. SOLVER.LR 0.05 (flags may come before, "
                             "between or after them)")
    return parser


def _attach_resume_mode(argv: Sequence[str]) -> list[str]:
    """`--resume` takes an optional `auto`; written `--resume=MODE` so that in `--resume SOLVER.LR 0.1`
    the override is never taken for the flag's value."""
    out: list[str] = []
    tokens = list(argv)
    position = 0
    while position < len(tokens):
        token = tokens[position]
        if token == "--":
            out.extend(tokens[position:])
            break
        if token == "--resume":
            following = tokens[position + 1] if position + 1 < len(tokens) else ""
            if following == "auto":
                position += 1
            token = f"--resume={'auto' if following == 'auto' else 'yes'}"
        out.append(token)
        position += 1
    return out


def parse_training_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The training CLIs' arguments; flags are accepted anywhere among the KEY VALUE overrides."""
    parser = base_parser(description)
    parser.add_argument("--resume", nargs="?", const="yes", default="no", choices=("yes", "auto"),
                        help="continue the run in OUTPUT_DIR from its last.pt; '--resume auto': continue when a "
                             "checkpoint exists, start fresh otherwise (job scripts after preemption)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start fresh in an OUTPUT_DIR that holds a run, deleting that run's files")
    parser.add_argument("--dry-run", action="store_true",
                        help="build everything, run one forward/backward, print sizes and FLOPs, exit")
    parser.add_argument("--list", action="store_true",
                        help="list distillers (with their keys), backbones, heads, datasets and recipes, then exit")
    tokens = _attach_resume_mode(sys.argv[1:] if argv is None else argv)
    return parser.parse_intermixed_args(tokens)


def training_main(role: str, description: str, argv: Sequence[str] | None = None) -> int:
    """`train_teacher.py` / `train_student.py`: the same options, a different network trained."""
    if list_requested(argv):
        return print_catalogue()
    args = parse_training_args(description, argv)
    from engine.session import run_training

    return run_training(args.config, args.overrides, role=role, resume=args.resume, dry_run=args.dry_run,
                        overwrite=args.overwrite)


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
    """Call `main`, turning user errors into one line and exit status 2; ranks of a multi-process
    job then leave through `engine.distributed.exit_status`."""
    code = _user_errors_as_status(main, argv)
    distributed = sys.modules.get("engine.distributed")  # only a process that imported it can have joined
    return distributed.exit_status(code) if distributed else code


def _user_errors_as_status(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    try:
        return main(argv)
    except DistilleryError as exc:
        logging.getLogger("distillery").debug("user error", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {exc.filename or 'a file'}: {exc.strerror}; free space or fix the permissions, then "
              "continue with --resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
