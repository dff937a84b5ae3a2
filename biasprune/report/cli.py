"""``biasprune report RUN_DIR``: check a run directory, then rebuild its ``report.html`` from the artifacts alone.

RUN_DIR is a ``fit``/``validate`` run's version directory (e.g. ``runs/quickstart/version_0``) or a study's
``--study.output`` directory. The run must have finished, and its files must match its manifest (sizes, sha256,
row counts) with every row readable (:func:`biasprune.report.load.load_run`). Otherwise every problem is printed
on its own line, naming the file and its line number, and the exit status is 2; ``--force`` writes the report
anyway, with a banner naming each problem. No model is loaded.
"""

from __future__ import annotations

import argparse
import sys

from biasprune.report import ReportError, load_run, save_report

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="biasprune report",
                                description="Check a run directory against its manifest and rebuild its report.html (no model is loaded).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a fit/validate run's version directory or a study's output directory")
    p.add_argument("--force", action="store_true",
                   help="write the report of a run that did not finish or whose files do not match its manifest, with a banner naming each problem")
    p.add_argument("--no-tensorboard", action="store_true", help="do not add the report's figures to the run's TensorBoard events")
    return p


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (None: ``sys.argv[1:]``), write the report and print its path."""
    args = _parser().parse_args(argv)
    try:
        art = load_run(args.run_dir, force=args.force)
    except ReportError as err:
        if err.problems == [str(err)]:  # not a run directory at all
            print(f"biasprune report: error: {err}", file=sys.stderr)
        elif len(err.problems) == 1:
            print(f"biasprune report: error: {args.run_dir}: {err.problems[0]}\n(no report written; --force writes it with this"
                  " named in a banner)", file=sys.stderr)
        else:
            print(f"biasprune report: error: {args.run_dir}: {len(err.problems)} problem(s); no report written"
                  " (--force writes it with each problem named in a banner):", file=sys.stderr)
            for problem in err.problems:
                print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    path, problems = save_report(art, tensorboard=not args.no_tensorboard), art.problems
    for problem in problems:
        print(f"biasprune report: warning: {problem}", file=sys.stderr)
    print(f"report: {path}" + (f" (forced: {len(problems)} problem(s) named in its banner)" if problems else ""))


if __name__ == "__main__":
    main()
