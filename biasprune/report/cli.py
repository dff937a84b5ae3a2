"""``biasprune report RUN_DIR``: rebuild a run's ``report.html`` from its artifacts alone (no model is loaded).

RUN_DIR is a ``fit``/``validate`` run's version directory (e.g. ``runs/quickstart/version_0``) or a study's
``--study.output`` directory. A directory that is missing, holds no ``manifest.json`` or is marked ``FAILED`` is
refused with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from biasprune.report import ReportError, write_report

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="biasprune report", description="Rebuild a run's report.html from its artifacts alone (no model is loaded).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a fit/validate run's version directory or a study's output directory")
    p.add_argument("--no-tensorboard", action="store_true", help="do not add the report's figures to the run's TensorBoard events")
    return p


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (None: ``sys.argv[1:]``), write the report and print its path."""
    args = _parser().parse_args(argv)
    try:
        path = write_report(args.run_dir, tensorboard=not args.no_tensorboard)
    except ReportError as err:
        print(f"biasprune report: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"report: {path}")


if __name__ == "__main__":
    main()
