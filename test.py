"""Evaluate a trained student (or, with --teacher, the teacher) and write results.json / results.md.

    python test.py --config FILE [--checkpoint PATH] [--teacher] [--output DIR] [--attention-maps N] [KEY VALUE ...]
    python test.py --summary RUNS_DIR [RUNS_DIR ...] [--csv FILE]

Without --checkpoint the run's OUTPUT_DIR/last.pt and best.pt are both evaluated (best and last
epoch side by side). --summary collects many runs' results into one table (rows = methods,
columns = teacher/student pairs or set @ resolution, mean ± std over seeds). IJB-B/C and TinyFace are
evaluated through config keys: EVAL.IJB.ROOT DIR and/or EVAL.TINYFACE.ROOT DIR (README, face benchmarks).
"""

from __future__ import annotations

import argparse
import sys

from engine.cli import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="experiment YAML (may inherit with _BASE_)")
    parser.add_argument("--checkpoint", default="", help="checkpoint to evaluate (default: the run's last/best)")
    parser.add_argument("--teacher", action="store_true", help="evaluate the TEACHER network instead")
    parser.add_argument("--output", default="", help="folder for results.json/results.md")
    parser.add_argument("--attention-maps", type=int, default=0, metavar="N",
                        help="also write PNGs of teacher vs student attention maps for N images")
    parser.add_argument("--summary", nargs="+", metavar="RUNS_DIR", help="tabulate the runs under these folders")
    parser.add_argument("--csv", default="", help="with --summary: also write the numbers as CSV here")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    args = parser.parse_args(argv)
    if args.summary:
        from engine.summary import find_runs, summary_csv, summary_markdown

        runs = find_runs(args.summary)
        print(summary_markdown(runs))
        if args.csv:
            with open(args.csv, "w", newline="") as handle:
                handle.write(summary_csv(runs))
        return 0
    if not args.config:
        parser.error("--config is required (or use --summary)")
    from engine.session import run_test

    return run_test(args.config, args.overrides, checkpoint=args.checkpoint, teacher=args.teacher,
                    output=args.output, attention_maps=args.attention_maps)


if __name__ == "__main__":
    sys.exit(run_cli(main))
