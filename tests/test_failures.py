"""Runs that fail, stop or are refused say so: errors, early refusals, help, file modes, interrupted and killed runs."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import biasprune.cli.lightning  # noqa: F401  (Lightning sets up its log handlers now, not inside a captured test)
from biasprune.cli import SUBCOMMANDS, main
from biasprune.core import artifacts, checks
from biasprune.core.errors import USER_ERRORS, BiasPruneError, ConfigError, RunDirError
from biasprune.report import write_report

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--data.scoring", "[purchase/car]", "--data.evaluation", "[purchase/car]", "--model.generation.samples", "2",
             "--model.generation.max_new_tokens", "4", "--model.targets.max_new_tokens", "4",
             "--model.evaluation.bootstrap_samples", "50", "--model.evaluation.permutation_samples", "50",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
             "--pruning.random_draws", "1"]


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


# ------------------------------------------------------------------------------------------------ errors
def test_user_errors_are_the_projects_own_classes():
    from biasprune.data.names import AuditDataError
    from biasprune.models.architectures import UnsupportedArchitectureError
    from biasprune.models.loading import ModelLoadError
    from biasprune.pipeline.resume import FingerprintMismatch
    from biasprune.plant.spec import PlantSpecError
    from biasprune.pruning.masks import MaskError
    from biasprune.report import ReportError

    assert USER_ERRORS == (BiasPruneError,)
    for cls in (AuditDataError, MaskError, ReportError, FingerprintMismatch, UnsupportedArchitectureError, ModelLoadError,
                PlantSpecError, ConfigError, RunDirError):
        assert issubclass(cls, BiasPruneError), cls
    for cls in (AuditDataError, MaskError, ReportError, UnsupportedArchitectureError, ConfigError):
        assert issubclass(cls, ValueError), cls  # pytest.raises(ValueError) keeps working
    for call in (lambda: checks.check_choice("x", 3, [1, 2]), lambda: checks.check_choices("x", [3], [1]),
                 lambda: checks.check_fraction("x", 2.0), lambda: checks.check_positive("x", 0)):
        with pytest.raises(ConfigError):
            call()


def test_an_internal_bug_keeps_its_traceback(monkeypatch, capsys):
    import biasprune.report.cli as report_cli

    def bug(argv):
        raise ValueError("an index went wrong deep inside")

    monkeypatch.setattr(report_cli, "main", bug)
    with pytest.raises(ValueError, match="deep inside"):  # not a one-line "user error"
        main(["report", "somewhere"])
    monkeypatch.setattr(report_cli, "main", lambda argv: (_ for _ in ()).throw(ConfigError("a bad value")))
    with pytest.raises(SystemExit) as info:
        main(["report", "somewhere"])
    assert info.value.code == 2 and "biasprune: error: a bad value" in capsys.readouterr().err
    with pytest.raises(ConfigError):  # --debug keeps the traceback of a user error too
        main(["report", "somewhere", "--debug"])


def test_parse_errors_stay_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--no.such.flag", "1", "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "no.such.flag" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("biasprune: error: ")]) == 1


# -------------------------------------------------------------------------------------------------- help
def test_help_is_fast_to_load_and_lists_every_subcommand():
    """``biasprune --help`` imports neither torch nor Lightning, and lists every subcommand with one line."""
    code = ("import sys\nfrom biasprune.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'transformers', 'numpy'))\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    lines = out.stdout.splitlines()
    for name, summary in SUBCOMMANDS.items():
        mine = [line for line in lines if line.split()[:1] == [name]]
        assert len(mine) == 1 and mine[0].split(None, 1)[1] == summary, (name, mine)
    assert set(SUBCOMMANDS) >= {"fit", "validate", "study", "plant", "report"}
    assert "DESIGN" not in out.stdout


def test_fit_help_leads_with_the_tools_groups(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    positions = [text.index(f"--{g}.*:") for g in ("model", "data", "pruning", "model.evaluation")]
    assert positions == sorted(positions) and positions[-1] < text.index("Lightning Trainer (--trainer.*)")
    assert "--trainer.accelerator ACCELERATOR" not in text and "--help trainer" in text
    assert "DESIGN" not in text and "--optimizer" not in text
    assert len(text.splitlines()) < 400
    with pytest.raises(SystemExit):
        main(["fit", "--help", "trainer"])
    full = capsys.readouterr().out
    assert "--trainer.accelerator ACCELERATOR" in full and full.index("--model.*:") < full.index("--trainer.accelerator")


# ------------------------------------------------------------------------------------------- file modes
def test_atomic_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        written = [
            artifacts.write_json(tmp_path / "a.json", {"x": 1}),
            artifacts.write_csv(tmp_path / "b.csv", [{"x": 1}], ["x"]),
            artifacts.write_jsonl(tmp_path / "c.jsonl", [{"x": 1}]),
            artifacts.write_safetensors(tmp_path / "d.safetensors", {"m": torch.ones(3, dtype=torch.uint8)}, {}),
        ]
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what any other file of the run gets
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(plain.stat().st_mode & 0o777)} == {"0o640"}


def test_file_records_against_independent_counts(tmp_path):
    rows = [{"a": "1", "b": "x,y"}, {"a": "2", "b": "line\nbreak"}]
    path = artifacts.write_csv(tmp_path / "t.csv", rows, ["a", "b"])
    rec = artifacts.file_record(path)
    assert rec == {"bytes": len(path.read_bytes()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "rows": 2}
    assert artifacts.file_record(artifacts.write_jsonl(tmp_path / "t.jsonl", rows))["rows"] == 2


# ------------------------------------------------------------------------------------- early refusals
def _refused(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err  # Lightning may log a line or two (e.g. the seed) before the error
    errors = [line for line in err.splitlines() if line.startswith("biasprune: error: ")]
    assert "Traceback" not in err and len(errors) == 1, err
    assert err.splitlines()[-1] == "(run again with --debug for the traceback)"
    return errors[0]


def test_budget_zero_is_refused_before_anything_runs(tmp_path, capsys):
    for value in ("0", "0%"):
        err = _refused(["fit", "--pruning.budget", value, "--trainer.logger.init_args.save_dir", str(tmp_path)], capsys)
        assert f"pruning.budget={value!r}" in err or f"pruning.budget={value}" in err
        assert "smallest useful value is the count 1" in err
    err = _refused(["fit", "--pruning.units", "heads", "--pruning.head_budget", "0", "--trainer.logger.init_args.save_dir", str(tmp_path)], capsys)
    assert "pruning.head_budget=0 selects no unit" in err
    assert not (tmp_path / "biasprune").exists()


def test_a_budget_under_one_unit_of_every_pool_is_refused_before_scoring(tiny_model_dir, tmp_path, capsys):
    err = _refused(["fit", "--model.model_name_or_path", tiny_model_dir, "--pruning.budget", "1e-9",
                    "--trainer.logger.init_args.save_dir", str(tmp_path), *TINY_ARGS], capsys)
    assert "pruning.budget=1e-09 is less than one unit in every pool" in err
    # the tiny model's largest neuron pool has 48 units: 1/48 = 0.0208333, rounded up to 3 digits
    assert "smallest useful value is 0.0209 (one unit of the largest pool) or the count 1" in err
    run = tmp_path / "biasprune" / "version_0"
    assert not (run / "scoring_examples.jsonl").exists()  # refused before the target responses
    assert manifest(run)["status"] == "failed" and manifest(run)["stage"] == "setup"


def test_a_budget_rounded_up_to_one_unit_is_said(caplog):
    from biasprune.callbacks import PruningCallback

    sizes = {"neuron/l.0.up_proj": 1536, "neuron/l.0.o_proj": 576, "head/l.0.self_attn": 9}
    cb = PruningCallback(budget=0.001)  # 1.5 units of the first pool, 0.58 of the second: rounded up to 1
    with caplog.at_level("INFO"):
        cb.check_budgets(sizes)
    note = "pruning.budget=0.001 is less than one unit in 1 of 2 neuron pools (e.g. l.0.o_proj, 576 units): rounded up to 1 neuron"
    assert note in caplog.text and cb.run_notes()["budget_notes"] == [note + " in each of them"]
    cb = PruningCallback(budget=0.001, scope="global")  # one pool of 2112 neurons: 2.1 units, nothing to say
    cb.check_budgets(sizes)
    assert cb.run_notes() == {}
    with pytest.raises(ConfigError, match=r"pruning.head_budget=0.05 is less than one unit in every pool \(1 global pool\(s\) of at most 9"
                                          r" heads\).* smallest useful value is 0.112"):
        PruningCallback(units="heads", head_budget=0.05).check_budgets(sizes)


def test_budget_notes_of_auto_grids_and_defaults_and_their_order():
    """MaskSettings.budget_notes: each budget of an ``auto`` grid is noted, never refused alone; a ranking rule's
    default budget is named as such; a note comes out before a later kind's refusal (the log shows it)."""
    from biasprune.pruning.factory import MaskFactory, MaskSettings

    sizes = {"neuron/l.0.up_proj": 1536, "neuron/l.0.o_proj": 576, "head/l.0.self_attn": 9}
    factory = MaskFactory("relative_difference")
    auto = MaskSettings(factory, budget="auto", auto_budgets=("0.01%", "1%"), units="neurons")
    assert [what for what, _ in auto.budget_notes(sizes)] == ["pruning.auto_budgets='0.01%'"]  # under one unit everywhere
    small = {"neuron/a": 100, "neuron/b": 300}
    default = MaskSettings(MaskFactory("relative_difference", floor_quantile=0.5), units="neurons")  # 0.5%: 0.5 and 1.5 units
    (what, note), = default.budget_notes(small)
    assert what == "the default budget '0.5%' (pruning.budget not given)" and "1 of 2 neuron pools (e.g. a, 100 units)" in note
    assert list(MaskSettings(MaskFactory("set_difference"), units="neurons").budget_notes(small)) == []  # q decides
    both = MaskSettings(factory, budget=0.001, head_budget=0.05, units="both").budget_notes(sizes)
    assert next(both)[0] == "pruning.budget=0.001"
    with pytest.raises(ConfigError, match="pruning.head_budget=0.05 is less than one unit in every pool"):
        next(both)


def test_unwritable_directories_are_refused_before_the_model_loads(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = _refused(["fit", "--trainer.logger.init_args.save_dir", str(blocker / "runs")], capsys)
    assert f"--trainer.logger.init_args.save_dir: '{blocker / 'runs'}/biasprune/version_0' is under '{blocker}', which is a file" in err
    err = _refused(["study", "--study.output", str(blocker / "study")], capsys)
    assert f"--study.output: '{blocker / 'study'}' is under '{blocker}', which is a file" in err
    err = _refused(["fit", "--trainer.logger.init_args.save_dir", "/proc/biasprune-cannot-be-here"], capsys)
    assert "cannot create the directory '/proc/biasprune-cannot-be-here/biasprune/version_0'" in err
    if os.geteuid() != 0:  # root writes anywhere: permissions cannot refuse it
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        err = _refused(["fit", "--trainer.logger.init_args.save_dir", str(locked)], capsys)
        assert "cannot create the directory" in err and "Permission denied" in err


def test_a_missing_model_path_lists_the_accepted_forms(tmp_path, capsys):
    for model in (str(tmp_path / "no-such-model"), "someone/no-such-model"):
        err = _refused(["fit", "--model.model_name_or_path", model, "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")], capsys)
        assert f"model '{model}' does not exist" in err
        assert "'embedded:SmolLM2-135M-Instruct'" in err and "local directory" in err and "+plant:" in err
        assert "Repo id" not in err and "huggingface.co" not in err
    assert not (tmp_path / "runs").exists()  # refused before anything was written


# --------------------------------------------------------------------------- interrupted and killed runs
def _start(tiny_model_dir: str, cwd: Path) -> tuple[subprocess.Popen, list[str]]:
    """A CLI fit run of the tiny model whose scoring batches take a second each (tests/slow_batches.py)."""
    args = ["fit", "--model.model_name_or_path", tiny_model_dir, "--trainer.logger.init_args.save_dir", "runs", *TINY_ARGS,
            "--trainer.callbacks", json.dumps([{"class_path": "slow_batches.SlowScoring", "init_args": {"seconds": 1.0}}])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "biasprune", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, args


def _wait_for_scoring(proc: subprocess.Popen, run: Path) -> None:
    """Until the manifest says the run scores (then one more scoring batch)."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        try:
            if manifest(run).get("stage") == "scoring":
                time.sleep(1.5)
                return
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            pytest.fail(f"the run ended before scoring: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the run did not reach scoring")


def _report_refusal(run: Path, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(["report", str(run)])
    assert info.value.code == 2
    return capsys.readouterr().err


def test_ctrl_c_while_scoring_leaves_an_interrupted_run_whose_resume_command_finishes_it(tiny_model_dir, tmp_path, capsys):
    proc, args = _start(tiny_model_dir, tmp_path)
    run = tmp_path / "runs" / "biasprune" / "version_0"
    _wait_for_scoring(proc, run)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    state = manifest(run)
    assert state["status"] == "interrupted" and state["stage"] == "scoring" and state["signal"] == "SIGINT"
    resume = [line.removeprefix("resume: ") for line in err.splitlines() if line.startswith("resume: ")]
    assert resume == [state["resume"]["command"]]
    ckpt = state["resume"]["checkpoint"]
    assert ckpt and (tmp_path / ckpt).is_file() and f"--ckpt_path {ckpt}" in resume[0]
    assert "--trainer.logger.init_args.version 0" in resume[0]  # the resume finishes this run directory
    done = torch.load(tmp_path / ckpt, weights_only=False)["biasprune"]["done"]
    assert 0 < int(done.sum()) < done.numel() and f"the scores of {int(done.sum())} of {done.numel()} scoring examples" in err
    # the report explains the state instead of rendering
    msg = _report_refusal(run, capsys)
    assert "this run did not finish (last stage: scoring): it was interrupted (SIGINT); resume it with: biasprune fit" in msg
    # the printed command, run as printed (from the same directory), finishes the same run directory
    command = shlex.split(resume[0])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "biasprune", *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    state = manifest(run)
    assert state["status"] == "finished" and state["resumed_from"] == ckpt
    assert [a["status"] for a in state["attempts"]] == ["interrupted"]
    assert not (tmp_path / "runs" / "biasprune" / "version_1").exists()
    write_report(run, tensorboard=False)  # checks pass
    # exact: the same scores as a run that was never interrupted
    ref = tmp_path / "ref"
    main(["fit", "--model.model_name_or_path", tiny_model_dir, "--trainer.logger.init_args.save_dir", str(ref), *TINY_ARGS])
    resumed, _ = artifacts.read_safetensors(run / "scores.safetensors")
    whole, _ = artifacts.read_safetensors(ref / "biasprune" / "version_0" / "scores.safetensors")
    assert set(resumed) == set(whole)
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], rtol=1e-6, atol=0, msg=k)


def test_a_killed_run_stays_running_and_the_report_says_it_did_not_finish(tiny_model_dir, tmp_path, capsys):
    proc, _ = _start(tiny_model_dir, tmp_path)
    run = tmp_path / "runs" / "biasprune" / "version_0"
    _wait_for_scoring(proc, run)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    state = manifest(run)
    assert state["status"] == "running" and state["stage"] == "scoring" and state["pid"] == proc.pid
    msg = _report_refusal(run, capsys)
    assert f"this run did not finish (last stage: scoring): its process {proc.pid} on {state['host']} is gone" in msg
    # a run that still runs is told apart from one that is gone
    (run / "manifest.json").write_text(json.dumps(state | {"pid": os.getpid(), "pid_start": None}))
    assert "is still running" in _report_refusal(run, capsys)


def test_the_run_state_travels_to_spawned_processes(tmp_path):
    """A strategy that spawns processes pickles the trainer's callbacks: the run state must survive it."""
    import pickle

    from biasprune.cli.runstate import Describe, RunState, resume_command

    state = RunState(tmp_path, "fit", ["fit", "--ckpt_path", "old.ckpt"], {"k": 1}, 3, Describe("fit"))
    state.install_signals()
    try:
        copy = pickle.loads(pickle.dumps(state))
    finally:
        state.restore_signals()
    assert copy.run_dir == tmp_path and copy.describe.kind == "fit" and copy.manifest["status"] == "running"
    assert resume_command(["fit", "--ckpt_path=old.ckpt", "--a", "x y"], "c/new.ckpt", 3) == \
        "biasprune fit --a 'x y' --ckpt_path c/new.ckpt --trainer.logger.init_args.version 3"
