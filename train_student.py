"""Train STUDENT with the distiller DISTILL.TYPE names, from the frozen teacher in TEACHER.CHECKPOINT.

    python train_student.py --config configs/demo/face_student.yaml [--resume] [--dry-run] [KEY VALUE ...]
"""

from __future__ import annotations

import sys

from engine.cli import base_parser, run_cli


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt")
    parser.add_argument("--dry-run", action="store_true",
                        help="build everything, run one forward/backward, print sizes and FLOPs, exit")
    args = parser.parse_args(argv)
    from engine.session import run_training

    return run_training(args.config, args.overrides, role="student", resume=args.resume, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(run_cli(main))
