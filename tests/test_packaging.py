"""One namespace: the installed distribution holds only ``biasprune`` (datamodules and callbacks inside it)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    import shutil

    out = tmp_path_factory.mktemp("wheel")
    had_build = (ROOT / "build").exists()
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                              capture_output=True, text=True, timeout=300)
    finally:
        if not had_build:  # setuptools builds in the source tree; leave it as it was
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = out.glob("biasprune-*.whl")
    return found


def test_top_level_is_only_biasprune(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
        (top_level,) = [n for n in names if n.endswith("top_level.txt")] or [None]
        listed = zf.read(top_level).decode().split() if top_level else sorted(top)
    assert top == {"biasprune"} and listed == ["biasprune"]
    for expected in ("biasprune/datamodules/audit.py", "biasprune/callbacks/pruning.py", "biasprune/study/run.py",
                     "biasprune/resources/names/default.csv", "biasprune/resources/scenarios/purchase.yaml",
                     "biasprune/resources/plants/purchase/adapter_model.safetensors",
                     "biasprune/resources/plants/heads/provenance.json", "biasprune/resources/plants/neurons/adapter_model.safetensors"):
        assert expected in names, expected


def test_outside_the_repository_only_the_namespace_imports(wheel, tmp_path):
    """Unpacked wheel on sys.path, run from elsewhere: ``import callbacks`` fails, ``biasprune.callbacks`` works."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    code = (f"import importlib.util, sys; sys.path = [p for p in sys.path if p not in ('', {str(ROOT)!r})]; sys.path.insert(0, {str(site)!r});"
            "assert importlib.util.find_spec('callbacks') is None and importlib.util.find_spec('datamodules') is None;"
            "import biasprune.callbacks, biasprune.datamodules; print(biasprune.callbacks.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith(str(site))
