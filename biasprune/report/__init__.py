"""The audit report: one self-contained HTML page per run, rebuilt from the run's artifacts alone.

:func:`write_report` reads a finished ``fit``/``validate`` run directory (the logger's version directory) or a
study's output directory and writes ``report.html`` there: figures inline as PNG, styles inline, no script and
no link outside the directory. The page depends only on the artifacts (no clock, no absolute path of the
directory), so a copied run gives the same page. A directory marked ``FAILED`` gets no report: a
:class:`ReportError` says so. The report's own figures also go to the run's TensorBoard events as images
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

__all__ = ["ReportError", "RunArtifacts", "build_report", "load_run", "log_figures", "write_report"]

REPORT_FILE = "report.html"


def build_report(run_dir: str | Path) -> tuple[str, list[tuple[str, str, bytes]]]:
    """The report's HTML and its generated figures ``(name, caption, PNG bytes)``; nothing is written."""
    return _build(load_run(run_dir))


def _build(art: RunArtifacts) -> tuple[str, list[tuple[str, str, bytes]]]:
    from biasprune.report.pages import run_page
    from biasprune.report.study import study_page
    from biasprune.report.transfer import has_transfer, transfer_page

    if art.kind == "study" and has_transfer(art.run_dir):
        return transfer_page(art)
    return study_page(art) if art.kind == "study" else run_page(art)


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


def write_report(run_dir: str | Path, tensorboard: bool = True) -> Path:
    """Write ``report.html`` into ``run_dir`` and return its path; also log the figures to TensorBoard."""
    from biasprune.core.artifacts import atomic_write_bytes

    run_dir = Path(run_dir)
    art = load_run(run_dir)
    html, figures = _build(art)
    out = atomic_write_bytes(run_dir / REPORT_FILE, html.encode("utf-8"))
    out.chmod(0o644)  # a page to share: readable like the other files a reviewer opens
    if tensorboard and figures:
        log_figures(run_dir / "tensorboard" if art.kind == "study" else run_dir, figures)
    return out
