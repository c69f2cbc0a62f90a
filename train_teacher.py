"""Train the network that TEACHER describes, on labels alone (no distiller), and save its checkpoint.

    python train_teacher.py --config configs/demo/face_teacher.yaml [KEY VALUE ...] [--resume [auto] | --overwrite] [--dry-run]
"""

from __future__ import annotations

import sys

from engine.cli import run_cli, training_main


def main(argv=None) -> int:
    return training_main("teacher", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
