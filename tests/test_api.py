"""The Python API: ``import biasprune`` is light, its names load on use, and the README's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import biasprune

ROOT = Path(__file__).resolve().parents[1]


def test_import_biasprune_loads_neither_torch_nor_lightning():
    code = "import sys, biasprune; print(sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_resolves_to_its_definition():
    import importlib

    for name in biasprune.__all__:
        value = getattr(biasprune, name)
        if name != "__version__":
            assert getattr(importlib.import_module(biasprune._EXPORTS[name]), name) is value
    assert set(biasprune.__all__) <= set(dir(biasprune))
    with pytest.raises(AttributeError, match="module 'biasprune' has no attribute 'Nope'; the public names"):
        biasprune.Nope  # noqa: B018


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_on_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The README's snippet, unchanged but for the model and its budget, audits a tiny random model and prints its
    summary and claims (from ``module.results``, which are also the files of the run). The tiny model's MLPs have
    48 channels, under which the README's 0.5% is less than one unit in every pool and refused, so it gets 5%."""
    code = readme_example()
    assert code.count('MODEL = "embedded:SmolLM2-135M-Instruct+plant:purchase"') == 1
    assert code.count('budget="0.5%"') == 1
    code = code.replace("embedded:SmolLM2-135M-Instruct+plant:purchase", tiny_model_dir).replace('budget="0.5%"', 'budget="5%"')
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    printed = capsys.readouterr().out
    module, trainer = scope["module"], scope["trainer"]
    summary, claims = module.results["summary"], module.results["claims"]
    assert [r["arm"] for r in summary] == ["unpruned", "pruned", *(f"random/{d}" for d in range(5))]  # fit's default: 5 draws
    assert claims and all(c.verdict in ("holds", "does not hold", "inconclusive", "breaks answers") for c in claims)
    for row in summary:
        assert f"{row['arm']:<10} scale-free |SMD| {row['mean_abs_rank_smd']:.3f}" in printed and f"paper |SMD| {row['mean_abs_smd']:.3f}" in printed
    run = (tmp_path / trainer.log_dir).resolve()
    assert run.is_relative_to((tmp_path / "runs" / "notebook").resolve())
    for name in ("summary.csv", "claims.csv", "metrics.csv", "masks.safetensors", "scores.safetensors"):
        assert (run / name).is_file(), name
