"""The command line: every config parses, --help documents every knob, bad values are named in one line."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from biasprune.callbacks import PruningCallback
from biasprune.cli import main
from biasprune.cli.lightning import BiasPruneCLI
from biasprune.datamodules import AuditDataModule
from biasprune.pipeline.module import BiasPruneModule
from biasprune.study.config import GridConfig, StudyConfig
from biasprune.study.trainer import BiasPruneTrainer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))  # complete runs and overlays: --config FILE
FRAGMENTS = sorted(p for p in (ROOT / "configs").glob("*/*.yaml") if p.parent.name != "plant")  # one group each
# (configs/plant/ trains plants: tests/test_plant.py instantiates every one of them)


def _record_stages(monkeypatch) -> list:
    seen = []
    for name in ("fit", "validate", "study"):
        monkeypatch.setattr(BiasPruneTrainer, name, lambda self, model, datamodule=None, name=name, **kw: seen.append((name, self, model, datamodule, kw)))
    monkeypatch.setattr(BiasPruneCLI, "_finish", lambda self, kind, run_dir: None)
    monkeypatch.setattr(BiasPruneCLI, "_begin", lambda self, kind: None)  # example paths (e.g. /path/to/model) are placeholders
    return seen


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_parses(path, tmp_path, monkeypatch):
    """The same configuration language for fit, validate and study: every file parses and builds every object
    (the stages, and the checks of paths and model ids before them, are replaced by a recorder; GPU configs are
    checked on CPU)."""
    seen = _record_stages(monkeypatch)
    for sub in ("fit", "validate", "study"):
        if sub != "study" and "\nstudy:" in path.read_text():
            continue  # a study file carries --study.* keys, which fit and validate do not take
        seen.clear()
        main([sub, "--config", str(path), "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(tmp_path)])
        stage, _, model, dm, kw = seen[0]
        assert stage == sub and isinstance(model, BiasPruneModule) and isinstance(dm, AuditDataModule)
        if sub == "study":
            assert isinstance(kw["config"], StudyConfig)


@pytest.mark.parametrize("path", FRAGMENTS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_fragment_sets_its_group(path, tmp_path, monkeypatch):
    """A fragment given to its group's flag sets exactly its keys there (and, composed after a config, keeps the
    config's other keys of that group)."""
    seen = _record_stages(monkeypatch)
    group = path.parent.name
    keys = yaml.safe_load(path.read_text())
    cpu = ["--trainer.accelerator", "cpu"] if group == "trainer" else []  # GPU fragments are checked on CPU
    main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), f"--{group}", str(path), *cpu,
          "--trainer.logger.init_args.save_dir", str(tmp_path)])
    _, trainer, _, _, _ = seen[0]
    if group == "pruning":
        settings = next(cb for cb in trainer.callbacks if isinstance(cb, PruningCallback)).settings()
        assert {k: settings[k] for k in keys} == keys
    else:
        assert trainer.max_epochs == keys["max_epochs"] and trainer.num_devices == keys["devices"]
    assert trainer.logger.name == "quickstart"  # the config's own trainer keys stay


def test_composed_configs_resolve_to_one_configuration(capsys):
    """--config a --config b: later files win key by key; an overlay names a fragment by a path relative to itself."""
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--config", str(ROOT / "configs" / "ddp_cpu.yaml"), "--print_config"])
    assert info.value.code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["trainer"]["strategy"] == "frozen_ddp_spawn" and resolved["trainer"]["devices"] == 2
    assert resolved["trainer"]["logger"]["init_args"]["name"] == "quickstart"
    assert resolved["pruning"]["rule"] == "relative_difference" and resolved["pruning"]["budget"] == "auto"
    assert resolved["pruning"]["auto_budgets"] == ["0.25%", "0.5%", "1%"] and resolved["pruning"]["random_draws"] == 5


def test_help_documents_every_knob(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    text = capsys.readouterr().out
    linked = {"data.tokenizer", "data.trust_remote_code"}  # follow --model.* (link_arguments)
    for prefix, cls in (("model", BiasPruneModule), ("data", AuditDataModule), ("pruning", PruningCallback),
                        ("study", StudyConfig), ("study.grid", GridConfig)):
        for name in inspect.signature(cls.__init__).parameters:
            if name == "self" or f"{prefix}.{name}" in linked:
                continue
            assert f"--{prefix}.{name}" in text, f"--{prefix}.{name} missing from --help"
    # documented, not just listed: the docstring's text shows next to the flag
    for doc in ("fraction of each pool protected as most", "responses sampled per prompt (k)", "name splits whose answers are evaluated",
                "selection rules tried", "within-context masks may pool",
                "is the difference-of-means edit of the residual stream", "write the cross-context transfer matrix"):
        assert doc in re.sub(r"\s+", " ", text), doc


@pytest.mark.parametrize(
    "args, match",
    [
        (["--pruning.units", "layers"], "neurons"),
        (["--model.dtype", "int8"], "bfloat16"),
        (["--data.scoring", "[shopping]"], "unknown scenario 'shopping'"),
        (["--pruning.p", "1.5"], r"pruning.p=1.5 must be a fraction in \[0, 1\]"),
        (["--pruning.rule", "magic"], r"pruning.rule='magic' is not valid; valid choices"),
        (["--data.split_fractions", "[0.5, 0.5, 0.5]"], r"data.split_fractions"),
        (["--pruning.method", "units"], "direction"),
        (["--pruning.direction_layers", "late"], r"pruning.direction_layers='late': not a layer choice; valid forms"),
    ],
)
def test_bad_values_are_named_in_one_line(args, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--trainer.default_root_dir", str(tmp_path), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 12


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match=r"pruning.p=1.5"):
        main(["fit", "--debug", "--trainer.default_root_dir", str(tmp_path), "--pruning.p", "1.5"])


def test_a_failed_run_is_marked(tmp_path, capsys, tiny_model_dir):
    """A run that fails after its directory exists leaves FAILED with the reason, never something that looks done."""
    bad = tmp_path / "masks.safetensors"
    import torch

    from biasprune.core.artifacts import write_safetensors

    write_safetensors(bad, {"neuron/not.a.module": torch.ones(3, dtype=torch.uint8)}, {})
    with pytest.raises(SystemExit):
        main(["validate", "--model.model_name_or_path", tiny_model_dir, "--pruning.masks_file", str(bad), "--trainer.accelerator", "cpu",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"])
    runs = list((tmp_path / "runs").rglob("version_*"))
    assert runs and all((r / "FAILED").is_file() for r in runs)
    assert "names no unit group of this model" in (runs[0] / "FAILED").read_text()
    assert not any((r / "metrics.csv").exists() for r in runs)
