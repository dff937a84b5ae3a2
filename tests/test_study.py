"""The generalization study on a tiny random model: outputs, strategy sums, resumption."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from biasprune import study as study_mod
from biasprune.evaluation import EvaluationConfig
from biasprune.generation import GenerationConfig
from biasprune.study import GridConfig, Study


def make(model_dir, out, **kw):
    args = dict(
        output=str(out),
        model=model_dir,
        eval_variations=["car", "bicycle"],
        within_variations=["car", "bicycle", "piano"],
        contexts=["chess", "finance"],
        generation=GenerationConfig(samples=3, max_new_tokens=6),
        evaluation=EvaluationConfig(bootstrap_samples=30, permutation_samples=30),
        grid=GridConfig(p=(0.2, 0.35), q=(0.4,), head_p=(0.1,), head_q=(0.2,)),
        response_max_new_tokens=6,
        claims_bootstrap=200,
        eval_batch_size=8,
    )
    args.update(kw)
    return Study(**args)


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    s = make(tiny_model_dir, out)
    result = s.run()
    return out, s, result


def test_outputs(finished):
    out, s, result = finished
    for name in ("metrics.csv", "grid.csv", "results.csv", "results.md", "claims.csv",
                 "fig2_strategies_neurons.png", "fig2_strategies_heads.png", "fig3_overlap.png", "fig4_layers.png",
                 "fig5_grid_neurons.png", "fig5_grid_heads.png", "inlier_bounds.json"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    arms = {(r["phase"], r["units"], r["strategy"], r["context"]) for r in rows}
    assert ("baseline", "", "", "") in arms
    for units in ("neurons", "heads"):
        assert {("pruned", units, "prompt_specific", ""), ("pruned", units, "within_context", ""), ("pruned", units, "cross_context", "chess"), ("pruned", units, "cross_context", "finance")} <= arms
    grid = list(csv.DictReader(open(out / "grid.csv")))
    assert [(g["units"], g["p"], g["q"]) for g in grid] == [("neurons", "0.2", "0.4"), ("neurons", "0.35", "0.4"), ("heads", "0.1", "0.2")]
    assert sum(g["chosen"] == "True" for g in grid) == 2
    claims = {c["claim"]: c["verdict"] for c in csv.DictReader(open(out / "claims.csv"))}
    assert set(claims) == {"pruning lowers bias", "neurons beat heads", "prompt-specific > within-context > cross-context"}
    assert set(claims.values()) <= {"holds", "does not hold", "inconclusive"}
    results = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["units"], r["strategy"], r["context"]) for r in results} >= {("", "unpruned", ""), ("neurons", "cross_context", "mean")}
    # each variation was scored once: 2 eval + piano + 1 chess + 3 finance
    assert result["computed"]["scores"] == 7 and result["computed"]["responses"] == 7


def test_strategy_sums_equal_scoring_the_union(finished):
    """Scores summed over variations equal one scoring pass over the union of their examples."""
    out, s, _ = finished
    summed = s.strategy_scores("within_context", "purchase/car")  # bicycle + piano
    examples = [json.loads(line) for k in ("purchase__bicycle", "purchase__piano") for line in open(out / "pieces/responses" / f"{k}.jsonl")]
    s.dm.set_scoring_examples(examples)
    from biasprune.scoring import ScoreAccumulator, score_batch

    acc = ScoreAccumulator(s.layout.sizes())
    for batch in s.dm.train_dataloader():
        acc.add(score_batch(s.model, s.layout, batch["input_ids"], batch["attention_mask"], batch["response_mask"]), batch["group_index"], batch["weight"])
    union = dict(zip(s.dm.groups, acc.split(dtype=torch.float64)))
    for g in union:
        for k in union[g]:
            torch.testing.assert_close(summed[g][k], union[g][k], rtol=1e-6, atol=1e-9)


def test_rerun_recomputes_nothing(finished, tiny_model_dir):
    out, _, first = finished
    again = make(tiny_model_dir, out).run()
    assert again["computed"] == {"responses": 0, "scores": 0, "evaluations": 0}
    assert again["claims"] == first["claims"]


def test_interrupted_study_continues_from_its_pieces(tiny_model_dir, tmp_path, monkeypatch):
    s = make(tiny_model_dir, tmp_path, units=["neurons"], strategies=["prompt_specific", "within_context"], contexts=[])
    real = Study.evaluate
    calls = {"n": 0}

    def flaky(self, key, rel, masks):
        if not self._piece(rel).is_file():
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt("interrupted")
        return real(self, key, rel, masks)

    monkeypatch.setattr(Study, "evaluate", flaky)
    with pytest.raises(KeyboardInterrupt):
        s.run()
    done, scored = s.computed["evaluations"], s.computed["scores"]
    assert done == 3
    monkeypatch.setattr(Study, "evaluate", real)
    resumed = make(tiny_model_dir, tmp_path, units=["neurons"], strategies=["prompt_specific", "within_context"], contexts=[])
    out = resumed.run()
    # baseline 2 + grid 2 points x 2 variations + within 2 = 8 evaluations and 3 scored variations in all;
    # the second run computes exactly what the first did not finish
    assert out["computed"]["evaluations"] == 8 - done
    assert out["computed"]["scores"] == 3 - scored


def test_changed_settings_refuse_to_reuse_pieces(finished, tiny_model_dir):
    out, _, _ = finished
    with pytest.raises(ValueError, match=r"holds a study with other settings \(\['generation'\]\)"):
        make(tiny_model_dir, out, generation=GenerationConfig(samples=4, max_new_tokens=6)).run()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(strategies=["everything"]), r"study.strategies has \['everything'\]; valid choices"),
        (dict(units=[]), r"study.units has nothing"),
        (dict(eval_variations=["boat"]), r"study.eval_variations: purchase has no variation\(s\) \['boat'\]"),
        (dict(contexts=["purchase"]), r"study.contexts: \['purchase'\] must be loaded scenarios other than 'purchase'"),
        (dict(eval_scenario="cooking"), r"study.eval_scenario: 'cooking' is not loaded"),
        (dict(neuron_modules=["mlp"]), r"neuron_modules has unknown module\(s\) \['mlp'\]; valid choices"),
    ],
)
def test_bad_settings(tiny_model_dir, tmp_path, kw, match):
    with pytest.raises((ValueError, study_mod.AuditDataError), match=match):
        make(tiny_model_dir, tmp_path, **kw)


def test_grid_config_errors():
    with pytest.raises(ValueError, match=r"grid.q has 1.5, which is not a fraction"):
        GridConfig(q=(1.5,))
    with pytest.raises(ValueError, match=r"grid.p must list at least one value"):
        GridConfig(p=())
