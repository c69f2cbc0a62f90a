"""Evaluate a trained student (or, with --teacher, the teacher) and write results.json / results.md.

    python test.py --config FILE [--checkpoint PATH] [--teacher] [--output DIR] [KEY VALUE ...]

Without --checkpoint the run's OUTPUT_DIR/last.pt and best.pt are both evaluated (best and last
epoch side by side).
"""

from __future__ import annotations

import sys

from engine.cli import base_parser, run_cli


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="", help="checkpoint to evaluate (default: the run's last/best)")
    parser.add_argument("--teacher", action="store_true", help="evaluate the TEACHER network instead")
    parser.add_argument("--output", default="", help="folder for results.json/results.md")
    args = parser.parse_args(argv)
    from engine.session import run_test

    return run_test(args.config, args.overrides, checkpoint=args.checkpoint, teacher=args.teacher,
                    output=args.output)


if __name__ == "__main__":
    sys.exit(run_cli(main))
