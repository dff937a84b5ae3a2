"""The audit report: one self-contained HTML page per run, rebuilt from the run's artifacts alone.

:func:`write_report` reads a finished ``fit``/``validate`` run directory (the logger's version directory) or a
study's output directory and writes ``report.html`` there: figures inline as PNG, styles inline, no script and
no link outside the directory. The page depends only on the artifacts (no clock, no absolute path of the
directory), so a copied run gives the same page. A run that did not finish (or is marked ``FAILED``), or whose
files do not match its manifest, gets no report: a :class:`ReportError` names every problem
(:mod:`biasprune.report.load`); ``force`` writes it with a banner naming them. The report's own figures also go to the run's TensorBoard events as images
(``report/<name>``; for a study under ``<output>/tensorboard``), one new events file per write.

``biasprune report RUN_DIR`` (:mod:`biasprune.report.cli`) rebuilds the page without loading the model;
:mod:`.plots` holds the figures that the report and the study draw.

May import: every layer below (core to the pipeline and its data module and callback); the report reads the
artifacts, never a running study or plant.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from biasprune.report.load import ReportError, RunArtifacts, load_run

__all__ = ["ReportError", "RunArtifacts", "build_report", "load_run", "log_figures", "save_report", "write_report"]

REPORT_FILE = "report.html"


def build_report(run_dir: str | Path, force: bool = False) -> tuple[str, list[tuple[str, str, bytes]]]:
    """The report's HTML and its generated figures ``(name, caption, PNG bytes)``; nothing is written."""
    return _build(load_run(run_dir, force=force))


def _build(art: RunArtifacts) -> tuple[str, list[tuple[str, str, bytes]]]:
    from biasprune.report.html import with_problems
    from biasprune.report.pages import run_page
    from biasprune.report.study import study_page
    from biasprune.report.transfer import has_transfer, transfer_page

    if art.kind == "study" and has_transfer(art.run_dir):
        html, figures = transfer_page(art)
    else:
        html, figures = study_page(art) if art.kind == "study" else run_page(art)
    return with_problems(html, art.problems), figures


def log_figures(log_dir: str | Path, figures: Sequence[tuple[str, str, bytes]], step: int = 0) -> None:
    """Add each figure to TensorBoard as image ``report/<name>`` (decoded from its PNG)."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    try:
        for name, _, png in figures:
            with Image.open(io.BytesIO(png)) as im:
                writer.add_image(f"report/{name}", np.asarray(im.convert("RGB")), step, dataformats="HWC")
    finally:
        writer.close()


def write_report(run_dir: str | Path, tensorboard: bool = True, force: bool = False) -> Path:
    """Check ``run_dir`` (:func:`load_run`), write its ``report.html`` and return its path; also log the figures to
    TensorBoard. ``force``: write it even for a run that did not finish or does not match its manifest (banner)."""
    return save_report(load_run(run_dir, force=force), tensorboard)


def save_report(art: RunArtifacts, tensorboard: bool = True) -> Path:
    """Write the report of a loaded run (mode 0666 less the umask, like the run's other files)."""
    from biasprune.core.artifacts import atomic_write_bytes

    html, figures = _build(art)
    out = atomic_write_bytes(art.run_dir / REPORT_FILE, html.encode("utf-8"))
    if tensorboard and figures:
        log_figures(art.run_dir / "tensorboard" if art.kind == "study" else art.run_dir, figures)
    return out
