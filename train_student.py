"""Train STUDENT with the distiller DISTILL.TYPE names, from the frozen teacher in TEACHER.CHECKPOINT.

    python train_student.py --config configs/demo/face_student.yaml [KEY VALUE ...] [--resume [auto] | --overwrite] [--dry-run]
"""

from __future__ import annotations

import sys

from engine.cli import run_cli, training_main


def main(argv=None) -> int:
    return training_main("student", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
