"""Evaluate a trained student (or, with --teacher, the teacher) and write results.json / results.md.

    python test.py RUN_DIR [--export-onnx PATH] [--attention-maps N] [KEY VALUE ...]     (also --run RUN_DIR)
    python test.py --config FILE [--checkpoint PATH] [--teacher] [--output DIR] [--attention-maps N] [KEY VALUE ...]
    python test.py --summary RUNS_DIR [RUNS_DIR ...] [--csv FILE]

RUN_DIR is a finished run's folder: it is evaluated with its own resolved config.yaml (every override
it was trained with) and its last.pt / best.pt, as a teacher or a student as its run.json says.
Without --checkpoint the run's OUTPUT_DIR/last.pt and best.pt are both evaluated (best and last
epoch side by side). --summary collects many runs' results into one table (rows = methods,
columns = teacher/student pairs or set @ resolution, mean ± std over seeds). IJB-B/C and TinyFace are
evaluated through config keys: EVAL.IJB.ROOT DIR and/or EVAL.TINYFACE.ROOT DIR (README, face benchmarks).
"""

from __future__ import annotations

import argparse
import sys

from engine.cli import is_override_key, run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="experiment YAML (may inherit with _BASE_)")
    parser.add_argument("--run", default="", metavar="RUN_DIR",
                        help="a run folder: evaluate it with its own config.yaml (same as the bare RUN_DIR)")
    parser.add_argument("--export-onnx", default="", metavar="PATH",
                        help="write the trained backbone as ONNX (dynamic batch), checked with onnxruntime")
    parser.add_argument("--list", action="store_true", help="list distillers, backbones, heads, datasets, recipes")
    parser.add_argument("--checkpoint", default="", help="checkpoint to evaluate (default: the run's last/best)")
    parser.add_argument("--teacher", action="store_true", help="evaluate the TEACHER network instead")
    parser.add_argument("--output", default="", help="folder for results.json/results.md")
    parser.add_argument("--attention-maps", type=int, default=0, metavar="N",
                        help="also write PNGs of teacher vs student attention maps for N images")
    parser.add_argument("--summary", nargs="+", metavar="RUNS_DIR", help="tabulate the runs under these folders")
    parser.add_argument("--csv", default="", help="with --summary: also write the numbers as CSV here")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and not is_override_key(argv[0]):
        argv = ["--run", *argv]  # test.py RUN_DIR [options] [KEY VALUE ...]
    args = parser.parse_args(argv)
    if args.list:
        from engine.cli import print_catalogue

        return print_catalogue()
    if args.summary:
        from engine.summary import find_runs, summary_csv, summary_markdown

        runs = find_runs(args.summary)
        print(summary_markdown(runs))
        if args.csv:
            with open(args.csv, "w", newline="") as handle:
                handle.write(summary_csv(runs))
        return 0
    if args.config and args.run:
        parser.error("give a RUN_DIR or --config, not both")
    if not args.config and not args.run:
        parser.error("give a RUN_DIR (a finished run's folder) or --config FILE (or use --summary / --list)")
    if args.export_onnx:
        from engine.export import export_run

        return export_run(args.run, args.config, args.overrides, args.export_onnx, checkpoint=args.checkpoint,
                          teacher=args.teacher)
    from engine.session import run_test

    return run_test(args.config, args.overrides, checkpoint=args.checkpoint, teacher=args.teacher,
                    output=args.output, attention_maps=args.attention_maps, run_dir=args.run)


if __name__ == "__main__":
    sys.exit(run_cli(main))
