"""The command line: every config parses, --help documents every knob, bad values are named."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from biasprune.cli import BiasPruneCLI, main
from biasprune.module import BiasPruneModule
from biasprune.callbacks import PruningCallback
from biasprune.datamodules import AuditDataModule

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not p.name.startswith("study"))


@pytest.mark.parametrize("path", LIGHTNING_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_file_parses(path, tmp_path):
    # GPU configs are checked on CPU: only the accelerator is overridden.
    cli = BiasPruneCLI(
        BiasPruneModule,
        AuditDataModule,
        run=False,
        args=["--config", str(path), "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path)],
        save_config_kwargs={"overwrite": True},
    )
    assert isinstance(cli.model, BiasPruneModule) and isinstance(cli.datamodule, AuditDataModule)
    assert any(isinstance(c, PruningCallback) for c in cli.trainer.callbacks)


def test_help_documents_every_knob(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    linked = {"data.tokenizer", "data.trust_remote_code"}  # follow --model.* (link_arguments)
    for prefix, cls in (("model", BiasPruneModule), ("data", AuditDataModule), ("pruning", PruningCallback)):
        for name in inspect.signature(cls.__init__).parameters:
            if name == "self" or f"{prefix}.{name}" in linked:
                continue
            assert f"--{prefix}.{name}" in text, f"--{prefix}.{name} missing from --help"
    # documented, not just listed: the docstring's text shows next to the flag
    assert "fraction of each pool protected as most" in text
    assert "responses sampled per prompt (k)" in text


@pytest.mark.parametrize(
    "args, match",
    [
        (["--pruning.units", "layers"], "neurons"),
        (["--model.dtype", "int8"], "bfloat16"),
        (["--data.scoring", "[shopping]"], "unknown scenario 'shopping'"),
        (["--pruning.p", "1.5"], r"pruning.p=1.5 must be a fraction in \[0, 1\]"),
    ],
)
def test_bad_values_are_named(args, match, capsys, tmp_path):
    with pytest.raises((SystemExit, ValueError)) as info:
        main(["fit", "--trainer.default_root_dir", str(tmp_path), *args])
    message = str(info.value) + capsys.readouterr().err
    import re

    assert re.search(match, message), message


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("study*.yaml")), ids=lambda p: p.name)
def test_study_configs_parse(path, tmp_path, monkeypatch):
    import biasprune.study as study_mod

    seen = {}

    def fake_run(self):  # parse and construct only: the run itself is tested in test_study.py
        seen["study"] = self
        self.output.mkdir(parents=True)
        (self.output / "results.md").write_text("table")
        return {"seconds": 0, "computed": {}}

    monkeypatch.setattr(study_mod.Study, "run", fake_run)
    study_mod.main(["--config", str(path), "--output", str(tmp_path / "s")])
    s = seen["study"]
    assert s.eval_keys and s.units and s.strategies
