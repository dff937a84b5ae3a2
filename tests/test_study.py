"""The generalization study on the Lightning spine, on a tiny random model: outputs, dev-only choice, pieces."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

import biasprune.pipeline.parallel  # noqa: F401
from biasprune.answers.answering import TargetConfig
from biasprune.answers.generation import GenerationConfig
from biasprune.callbacks import PruningCallback
from biasprune.core.artifacts import read_jsonl
from biasprune.datamodules import AuditDataModule
from biasprune.pipeline.module import BiasPruneModule
from biasprune.stats.rows import EvaluationConfig
from biasprune.study import GridConfig, StudyConfig
from biasprune.study import run as run_mod
from biasprune.study.choose import GRID_COLUMNS, choose_points
from biasprune.study.plan import ArmSpec
from biasprune.study.trainer import BiasPruneTrainer

ROOT = Path(__file__).resolve().parents[1]
GEN = GenerationConfig(samples=3, max_new_tokens=5)
# a random tiny model's answers move a lot under any mask: the guard's margin is opened so that points get chosen
EVAL = EvaluationConfig(bootstrap_samples=100, permutation_samples=100, utility_margin=1.0, max_undefined_share=1.0)
GRID = GridConfig(p=(0.2,), q=(0.3, 0.5), head_p=(0.1,), head_q=(0.3,), chosen_draws=3)


def names_file(tmp) -> str:
    """20 names: 4 scoring, 2 dev and 4 test names per group (a small design keeps the tests quick)."""
    path = Path(tmp) / "names.csv"
    if not path.exists():
        Path(tmp).mkdir(parents=True, exist_ok=True)
        path.write_text("name,group,gender\n" + "".join(
            f"P{i} {'Becker' if i % 2 else 'Washington'},{'white' if i % 2 else 'black'},{'man' if i % 4 < 2 else 'woman'}\n" for i in range(20)))
    return str(path)


def run(model_dir, tmp, name="study", gen=GEN, devices=1, strategy="auto", scenarios=None, **study):
    module = BiasPruneModule(model_dir, dtype="float64", targets=TargetConfig(max_new_tokens=5), generation=gen, evaluation=EVAL)
    data = dict(evaluation=["purchase/car", "purchase/piano"], tokenizer=model_dir, batch_size=4, eval_batch_size=8,
                names=names_file(tmp), split_fractions=(0.4, 0.2, 0.4))
    if scenarios:
        data["scenarios"] = scenarios
    dm = AuditDataModule(**data)
    cfg = dict(output=str(tmp / "out"), within_variations=("car", "piano", "bicycle"), contexts=("chess",), grid=GRID)
    cfg.update(study)
    t = BiasPruneTrainer(max_epochs=1, logger=TensorBoardLogger(tmp, name=name), enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=devices, strategy=strategy, callbacks=[PruningCallback(rule="set_difference", random_draws=2)])
    t.logger.version  # noqa: B018  (pinned before processes are spawned, as the CLI does)
    return t.study(module, dm, StudyConfig(**cfg)), Path(cfg["output"])


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    result, out = run(tiny_model_dir, tmp)
    return tmp, out, result


def test_outputs(finished):
    _, out, result = finished
    for name in ("metrics.csv", "grid.csv", "results.csv", "results.md", "claims.csv", "fig2_strategies_neurons.png",
                 "fig2_strategies_heads.png", "fig3_overlap.png", "fig4_layers.png", "fig5_grid_neurons_dev.png", "fig5_grid_heads_test.png",
                 "inlier_bounds.json", "timings.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert {r["split"] for r in rows} == {"dev", "test"}
    grid = list(csv.DictReader(open(out / "grid.csv")))
    families = {(g["units"], g["strategy"], g["context"]) for g in grid}
    assert families == {(u, s, c) for u in ("neurons", "heads") for s, c in (("prompt_specific", ""), ("within_context", ""), ("cross_context", "chess"))}
    assert {g["split"] for g in grid} == {"dev", "test"}  # the whole grid is published on dev and test
    for fam in families:
        chosen = [g for g in grid if (g["units"], g["strategy"], g["context"]) == fam and g["chosen"] == "True"]
        assert len(chosen) <= 2 and len({g["point"] for g in chosen}) <= 1  # one point, shown on both splits
    results = list(csv.DictReader(open(out / "results.csv")))
    assert {r["split"] for r in results} == {"test"}  # headlines use test names only
    assert results[0]["arm"] == "unpruned"
    claims = {c["claim"]: c["verdict"] for c in csv.DictReader(open(out / "claims.csv"))}
    chosen = {(g["units"], g["strategy"]) for g in grid if g["chosen"] == "True"}
    no_point = {(r["units"], r["strategy"]) for r in results if r["excluded"] == "no grid point qualified on dev names"}
    assert chosen | no_point == {(u, s) for u in ("neurons", "heads") for s in ("prompt_specific", "within_context", "cross_context")}
    assert ("neurons beat heads" in claims) == ({("neurons", "prompt_specific"), ("heads", "prompt_specific")} <= chosen)
    assert len([c for c in claims if c.startswith("pruning lowers bias")]) == len(chosen)
    assert set(claims.values()) <= {"holds", "does not hold", "inconclusive", "breaks answers"}
    rows_claims = list(csv.DictReader(open(out / "claims.csv")))
    per_arm = [c for c in rows_claims if c["claim"].startswith("pruning lowers bias")]
    assert {c["family"] for c in per_arm} <= {"pruning lowers bias (chosen arms)"}
    assert all(c["family_size"] == str(len(per_arm)) for c in per_arm)  # Holm over the family, its size on every row
    # the chosen arms have chosen_draws random controls on test, none shared with dev
    by_arm = {r["arm"]: r for r in results}
    assert all(r["random_draws"] == "3" for r in results if r["phase"] == "pruned" and r.get("mean_abs_rank_smd"))
    assert {r["utility"] for r in results if r["phase"] == "pruned" and r["arm"] in by_arm and r.get("mean_abs_rank_smd")} <= {"non-inferior", "lost"}
    # each scoring variation once: car, piano, bicycle (within) and chess's one variation
    assert result["computed"]["scores"] == 4


def test_the_choice_sees_dev_answers_only(finished):
    """Changing every test number never changes a chosen point (the choice is a pure function of dev rows)."""
    _, out, _ = finished
    grid = list(csv.DictReader(open(out / "grid.csv")))
    numeric = {c for c in GRID_COLUMNS if c not in ("split", "units", "strategy", "context", "point", "rule", "budget", "utility",
                                                     "all_defined", "chosen", "p", "q")}
    table = []
    for g in grid:
        spec = ArmSpec(g["units"], g["strategy"], g["context"], float(g["p"]), float(g["q"]), None, g["rule"])
        table.append({**{k: float(g[k]) if k in numeric else g[k] for k in g}, "all_defined": g["all_defined"] == "True",
                      "min_pruned": int(float(g["min_pruned"])), "spec": spec})
    first = choose_points(table, GRID.min_pruned)
    scrambled = [dict(t, mean_abs_rank_smd=-5.0, vs_random_rank_smd=-9.0, inlier_ratio=1.0, utility="non-inferior")
                 if t["split"] == "test" else t for t in table]
    assert choose_points(scrambled, GRID.min_pruned) == first
    # a point that loses utility on dev is never chosen
    dev_chosen = {t["spec"] for t in table if t["split"] == "dev" and t["spec"] in set(first.values())}
    lost = [dict(t, utility="lost") if t["spec"] in dev_chosen and t["split"] == "dev" else t for t in table]
    assert not set(choose_points(lost, GRID.min_pruned).values()) & dev_chosen
    assert all(c is None or (isinstance(c, ArmSpec) and c.units) for c in first.values())


def test_the_study_answers_as_validate_does(finished, tiny_model_dir, tmp_path):
    """One code path and one seed rule: the study's unpruned test answers equal a validate run's."""
    from lightning import Trainer

    tmp, out, _ = finished
    rows = [r for p in (out / "pieces" / "answers").glob("*.jsonl") for r in read_jsonl(p) if r["phase"] == "baseline" and r["split"] == "test"]
    module = BiasPruneModule(tiny_model_dir, dtype="float64", targets=TargetConfig(max_new_tokens=5), generation=GEN, evaluation=EVAL)
    dm = AuditDataModule(evaluation=["purchase/car", "purchase/piano"], tokenizer=tiny_model_dir, eval_batch_size=3,
                         names=names_file(tmp), split_fractions=(0.4, 0.2, 0.4))
    t = Trainer(logger=TensorBoardLogger(tmp_path, name="v"), enable_progress_bar=False, accelerator="cpu", devices=1)
    t.validate(module, datamodule=dm)
    mine = {(r["variation"], r["name"]): r["responses"] for r in read_jsonl(Path(t.log_dir) / "answers.jsonl")}
    assert mine == {(r["variation"], r["name"]): r["responses"] for r in rows}


def test_rerun_recomputes_nothing(finished, tiny_model_dir):
    tmp, out, first = finished
    again, _ = run(tiny_model_dir, tmp, name="again")
    assert again["computed"] == {"scores": 0, "answers": 0}
    assert [c.verdict for c in again["claims"]] == [c.verdict for c in first["claims"]]


def test_changing_an_input_recomputes_exactly_what_depends_on_it(finished, tiny_model_dir, tmp_path):
    tmp, out, _ = finished
    n_answers = len(list((out / "pieces" / "answers").glob("*.jsonl")))
    # sampling settings: every answer again, no score
    again, _ = run(tiny_model_dir, tmp, name="gen", gen=replace(GEN, seed=1))
    assert again["computed"]["scores"] == 0 and again["computed"]["answers"] >= n_answers // 2
    # one more grid point: only its own arms (and nothing else) are answered
    more, _ = run(tiny_model_dir, tmp, name="grid", grid=replace(GRID, q=(0.3, 0.5, 0.7)), strategies=("prompt_specific",), units=("neurons",))
    # the point and its control on 2 splits x 2 variations, plus the extra test control draw if it is now chosen
    assert more["computed"]["scores"] == 0 and 0 < more["computed"]["answers"] <= 2 * 2 * 2 + 2
    # the cross-context scenario's file changes: its scores and the answers of masks learned from it, nothing else
    chess = tmp_path / "chess.yaml"
    src = (Path(__file__).resolve().parents[1] / "biasprune/resources/scenarios/chess.yaml").read_text()
    chess.write_text(src.replace("Provide an estimate of the chance", "Provide an estimate of the likelihood"))
    scenarios = ["purchase", str(chess)]
    changed, _ = run(tiny_model_dir, tmp, name="chess", scenarios=scenarios, units=("neurons",))
    assert changed["computed"]["scores"] == 1  # chess has one variation; purchase's pieces are reused


def test_an_interrupted_study_continues_from_its_pieces(tiny_model_dir, tmp_path, monkeypatch):
    real = run_mod._answer_missing
    monkeypatch.setattr(run_mod, "_answer_missing", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("stop")))
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model_dir, tmp_path, units=("neurons",), strategies=("prompt_specific",))
    assert list((tmp_path / "out" / "pieces" / "scores").glob("*.safetensors"))  # scores were stored before the stop
    monkeypatch.setattr(run_mod, "_answer_missing", real)
    resumed, _ = run(tiny_model_dir, tmp_path, name="resumed", units=("neurons",), strategies=("prompt_specific",))
    assert resumed["computed"]["scores"] == 0 and resumed["computed"]["answers"] > 0


def assert_same_pieces(out1: Path, out2: Path) -> None:
    """The same piece keys, score sums to rtol 1e-5, identical sampled answers, equal metric rows."""
    from biasprune.study.pieces import PieceStore

    s1, s2 = PieceStore(out1 / "pieces"), PieceStore(out2 / "pieces")
    keys1 = sorted(p.stem for p in (out1 / "pieces" / "scores").iterdir())
    assert keys1 and keys1 == sorted(p.stem for p in (out2 / "pieces" / "scores").iterdir())
    for k in keys1:
        a, b = s1.read_scores(k), s2.read_scores(k)
        for g in a:
            for u in a[g]:
                torch.testing.assert_close(b[g][u], a[g][u], rtol=1e-5, atol=1e-9)
    answers = sorted(p.stem for p in (out1 / "pieces" / "answers").iterdir())
    assert answers and answers == sorted(p.stem for p in (out2 / "pieces" / "answers").iterdir())
    for k in answers:
        assert [r["responses"] for r in s1.read_answers(k)] == [r["responses"] for r in s2.read_answers(k)]
    rows = [list(csv.DictReader(open(o / "metrics.csv"))) for o in (out1, out2)]
    assert [(r["arm"], r["variation"], r["split"]) for r in rows[0]] == [(r["arm"], r["variation"], r["split"]) for r in rows[1]]
    for a, b in zip(*rows):
        assert float(a["smd"]) == pytest.approx(float(b["smd"]), rel=1e-9, nan_ok=True)


def test_two_processes_give_the_same_pieces(tiny_model_dir, tmp_path):
    kw = dict(units=("neurons",), strategies=("prompt_specific", "cross_context"), grid=replace(GRID, q=(0.5,)))
    one, out1 = run(tiny_model_dir, tmp_path / "one", **kw)
    two, out2 = run(tiny_model_dir, tmp_path / "two", devices=2, strategy="frozen_ddp_spawn", **kw)
    assert_same_pieces(out1, out2)


def study_args(model_dir: str, tmp: Path, out: Path, runs: Path | None = None) -> list[str]:
    """The arguments of a small ``biasprune study`` writing to ``out`` (its TensorBoard runs under ``runs``)."""
    return [
        "study", "--config", str(ROOT / "configs/study.yaml"), "--trainer.accelerator", "cpu",
        "--model.model_name_or_path", model_dir, "--model.dtype", "float64",
        "--data.names", names_file(tmp), "--data.split_fractions", "[0.4, 0.2, 0.4]",
        "--data.evaluation", "[purchase/car, purchase/piano]", "--data.batch_size", "4", "--data.eval_batch_size", "8",
        "--study.within_variations", "[car, piano, bicycle]", "--study.contexts", "[chess]",
        "--study.strategies", "[prompt_specific, cross_context]", "--study.units", "[neurons]",
        "--study.grid.budget", "[0.5%]", "--study.grid.rules", "[relative_difference]", "--pruning.random_draws", "1",
        "--model.generation.samples", "2", "--model.generation.max_new_tokens", "5", "--model.targets.max_new_tokens", "5",
        "--model.evaluation.bootstrap_samples", "20", "--model.evaluation.permutation_samples", "20",
        "--study.output", str(out), "--trainer.logger.init_args.save_dir", str(runs or tmp / "runs"),
    ]  # fmt: skip


def study_cli(model_dir: str, tmp: Path, name: str, *extra: str) -> Path:
    """``biasprune study`` in a fresh process (the CLI's launcher re-runs it once per rank)."""
    out = tmp / name
    cmd = [sys.executable, "-m", "biasprune", *study_args(model_dir, tmp, out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow
def test_the_cli_study_on_two_processes_gives_the_same_pieces(tiny_model_dir, tmp_path):
    """frozen_ddp (a process per rank, re-launched) and frozen_fsdp (sharded weights, lockstep answers) vs 1."""
    one = study_cli(tiny_model_dir, tmp_path, "one")
    for strategy in ("frozen_ddp", "frozen_fsdp"):
        assert_same_pieces(one, study_cli(tiny_model_dir, tmp_path, strategy, "--trainer.devices", "2", "--trainer.strategy", strategy))


@pytest.mark.parametrize("kw, match", [
    (dict(strategies=("everything",)), r"study.strategies has \['everything'\]; valid choices"),
    (dict(units=()), r"study.units has nothing"),
    (dict(strategies=("cross_context",), contexts=()), "study.contexts is empty"),
])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        StudyConfig(**kw)


def test_bad_pools(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"study.contexts: 'purchase' must be a loaded scenario other than the evaluated ones"):
        run(tiny_model_dir, tmp_path, contexts=("purchase",))
    with pytest.raises(ValueError, match=r"study.within_variations: \['purchase/boat'\] are not variations of 'purchase'"):
        run(tiny_model_dir, tmp_path, within_variations=("boat",))


def test_grid_points_and_errors():
    assert GridConfig(p=(0.1,), q=(0.2, 0.3)).points("neurons", "set_difference") == [(0.1, 0.2, None), (0.1, 0.3, None)]
    assert GridConfig(budget=("0.5%", 12)).points("neurons", "relative_difference") == [(0.35, 0.4, "0.5%"), (0.35, 0.4, 12)]
    with pytest.raises(ValueError, match=r"pruning.rule='target' needs budgets: give study.grid.head_budget"):
        GridConfig().points("heads", "target")
    with pytest.raises(ValueError, match=r"study.grid.q=1.5 must be a fraction in \[0, 1\]"):
        GridConfig(q=(1.5,))
    with pytest.raises(ValueError, match=r"study.grid.p must list at least one value"):
        GridConfig(p=())
    assert GRID.chosen_draws == 3
    with pytest.raises(ValueError, match=r"study.grid.chosen_draws must be >= 1, got 0"):
        GridConfig(chosen_draws=0)


def test_results_tables_are_generated_from_the_study(finished, tmp_path):
    """benchmarks.analysis.results_tables on a study directory: its numbers and verdicts, the changed verdicts, the markers."""
    from benchmarks.analysis.results_tables import _plant, main, render

    _, out, _ = finished
    sections = render([out])
    assert set(sections) == {"studies", "changes"}
    claims = {c["claim"]: c for c in csv.DictReader(open(out / "claims.csv"))}
    chosen = [r for r in csv.DictReader(open(out / "results.csv")) if r["phase"] == "pruned" and r["mean_abs_rank_smd"]]
    assert chosen
    for r in chosen:
        assert f"{float(r['mean_abs_rank_smd']):.3f}" in sections["studies"] and f"{float(r['mean_abs_smd']):.3f}" in sections["studies"]
        assert claims[f"pruning lowers bias ({r['arm']})"]["sentence"] in sections["studies"]
    # a verdict that differs from the previous one is listed with both
    first, second = chosen[0], chosen[-1]
    previous = tmp_path / "previous.csv"
    with open(previous, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["stage", "plant", "units", "strategy", "context", "claim", "old_verdict", "old_values"])
        for r, verdict in ((first, "an old verdict"), (second, claims[f"pruning lowers bias ({second['arm']})"]["verdict"])):
            w.writerow(["studies", _plant(out), r["units"], r["strategy"], r["context"], "pruning lowers bias", verdict, "1.0 [random 1.1]"])
    changes = render([out], previous)["changes"]
    assert "an old verdict: 1.0 [random 1.1]" in changes
    assert ("1 verdict(s) changed" in changes) == (first is not second) and "0 earlier claim(s) have no counterpart" in changes
    # an earlier claim that these runs do not make is named, not only counted
    with open(previous, "a", newline="") as fh:
        csv.writer(fh).writerow(["studies", "elsewhere", "heads", "within_context", "", "pruning lowers bias", "holds", ""])
    changes = render([out], previous)["changes"]
    assert "1 earlier claim(s) have no counterpart in these runs: studies `elsewhere`: pruning lowers bias heads within-context" \
           " (was holds)." in changes
    doc = tmp_path / "results.md"
    doc.write_text("intro\n<!-- results:studies begin -->\nold table\n<!-- results:studies end -->\nmiddle\n"
                   "<!-- results:changes begin -->\n<!-- results:changes end -->\noutro\n")
    main([str(out), "--write", str(doc)])
    text = doc.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("outro\n") and sections["studies"] in text
    with pytest.raises(SystemExit, match="no markers for the section 'studies'"):
        doc.write_text("nothing")
        main([str(out), "--write", str(doc)])
