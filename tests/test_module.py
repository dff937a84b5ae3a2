"""The Lightning pipeline on a tiny random model: artifacts, independent re-scoring, arms, processes, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

import biasprune.pipeline.parallel  # noqa: F401
from biasprune.answers.answering import TargetConfig
from biasprune.answers.generation import GenerationConfig
from biasprune.callbacks import PruningCallback
from biasprune.core.artifacts import read_jsonl, read_safetensors
from biasprune.datamodules import AuditDataModule
from biasprune.models.architectures import resolve_units
from biasprune.pipeline.module import BiasPruneModule
from biasprune.pipeline.resume import FingerprintMismatch
from biasprune.scoring.accumulate import sum_scores
from biasprune.scoring.gradxact import score_batch
from biasprune.scoring.scorefile import read_scores
from biasprune.stats.rows import METRIC_COLUMNS, EvaluationConfig

FAST_GEN = GenerationConfig(samples=3, max_new_tokens=6)
FAST_EVAL = EvaluationConfig(bootstrap_samples=50, permutation_samples=50)
TARGETS = TargetConfig(max_new_tokens=6)


def make(model_dir, names=None, eval_cfg=FAST_EVAL, gen=FAST_GEN, **data):
    module = BiasPruneModule(model_dir, dtype="float64", targets=TARGETS, generation=gen, evaluation=eval_cfg)
    kwargs = dict(scoring=["purchase/car"], evaluation=["purchase/car"], tokenizer=model_dir, batch_size=3, eval_batch_size=4)
    if names:
        kwargs.update(names=names, split_fractions=(0.4, 0.2, 0.4))
    kwargs.update(data)
    return module, AuditDataModule(**kwargs)


def trainer(tmp_path, name="run", **kw):
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("devices", 1)
    return Trainer(max_epochs=1, logger=TensorBoardLogger(tmp_path, name=name), enable_progress_bar=False,
                   enable_model_summary=False, **kw)


def fit_and_validate(t, module, dm, **kw):
    """What ``biasprune fit`` does: score, then evaluate the arms in a validate stage of the same run."""
    t.fit(module, datamodule=dm, **kw)
    t.validate(module, datamodule=dm)
    return Path(t.log_dir)


def names_file(tmp_path, n=20):
    path = tmp_path / "names.csv"
    path.write_text("name,group,gender\n" + "".join(
        f"Person{i} {'Becker' if i % 2 else 'Washington'},{'white' if i % 2 else 'black'},{'man' if i % 4 < 2 else 'woman'}\n" for i in range(n)))
    return str(path)


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    module, dm = make(tiny_model_dir, scoring=["purchase/car", "purchase/piano"])
    t = trainer(tmp, callbacks=[PruningCallback(units="both", rule="set_difference", p=0.2, q=0.3, random_draws=2)])
    return fit_and_validate(t, module, dm), module, dm


def test_fit_writes_the_contract_artifacts(fitted):
    run, module, dm = fitted
    scores, meta = read_safetensors(run / "scores.safetensors")
    layout = module.layout
    for group in ("white", "black"):
        for u in layout.neurons:
            assert scores[f"{group}/neuron/{u.path}"].shape == (u.size,) and scores[f"{group}/neuron/{u.path}"].dtype == torch.float32
        for h in layout.heads:
            assert scores[f"{group}/head/{h.path}"].shape == (h.n_heads,)
    assert json.loads(meta["n_examples"]) == {"white": 40, "black": 40}  # 2 variations x 20 scoring names per group
    masks, mmeta = read_safetensors(run / "masks.safetensors")
    assert set(masks) == set(layout.keys()) and all(m.dtype == torch.uint8 for m in masks.values())
    assert {mmeta[k] for k in ("p", "q", "units", "reference_group", "target_group")} == {"0.2", "0.3", "both", "white", "black"}
    examples = read_jsonl(run / "scoring_examples.jsonl")
    assert len(examples) == 80 and all(set(e) >= {"group", "scenario", "variation", "name", "prompt", "response"} for e in examples)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [(r["split"], r["arm"], r["phase"]) for r in rows] == [
        ("test", "unpruned", "baseline"), ("test", "pruned", "pruned"), ("test", "random/0", "random"), ("test", "random/1", "random")]
    summary = {r["arm"]: r for r in csv.DictReader(open(run / "summary.csv"))}
    assert summary["pruned"]["random_draws"] == "2" and float(summary["pruned"]["null_mean_abs_rank_smd_p95"]) > 0
    assert {r["claim"] for r in csv.DictReader(open(run / "claims.csv"))} == {"pruning lowers bias (pruned)"}
    assert json.loads((run / "inlier_bounds.json").read_text())["bounds"].keys() == {"purchase/car"}
    heads_pruned = [(k, i) for k, m in masks.items() if k.startswith("head/") for i in (m == 0).nonzero().flatten().tolist()]
    assert (run / "name_attention.csv").is_file() == bool(heads_pruned)  # the mechanism artifact, when heads are pruned
    if heads_pruned:
        mech = list(csv.DictReader(open(run / "name_attention.csv")))
        assert len(mech) == sum(h.n_heads for h in layout.heads)
        assert sorted((r["key"], int(r["head"])) for r in mech if r["pruned"] == "1") == sorted(heads_pruned)
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    answers = read_jsonl(run / "answers.jsonl")
    assert len(answers) == 4 * 40 and {a["arm"] for a in answers} == {"unpruned", "pruned", "random/0", "random/1"}


def test_random_controls_prune_as_many_units_per_module(fitted):
    run, _, _ = fitted
    rows = {r["arm"]: r for r in csv.DictReader(open(run / "metrics.csv"))}
    for arm in ("random/0", "random/1"):
        assert rows[arm]["pruned_neurons"] == rows["pruned"]["pruned_neurons"]
        assert rows[arm]["pruned_heads"] == rows["pruned"]["pruned_heads"]


def test_scores_are_reproducible_from_scoring_examples_alone(fitted, tiny_model_dir):
    """Re-score the stored texts with score_batch directly, one example at a time; per variation and summed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _, _ = fitted
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval().requires_grad_(False)
    layout = resolve_units(model)
    per_variation: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for e in read_jsonl(run / "scoring_examples.jsonl"):
        p = tok(e["prompt"], add_special_tokens=False)["input_ids"]
        r = tok(e["response"], add_special_tokens=False)["input_ids"]
        if not r:
            continue
        ids = torch.tensor([p + r])
        resp = torch.tensor([[0] * len(p) + [1] * len(r)])
        group = per_variation.setdefault(f"{e['scenario']}/{e['variation']}", {}).setdefault(e["group"], {})
        for k, s in score_batch(model, layout, ids, torch.ones_like(ids), resp).scores.items():
            group[k] = group.get(k, 0) + s[0].double()
    stored, _ = read_scores(run / "scores_by_variation.safetensors")
    for v, groups in per_variation.items():
        for g, keys in groups.items():
            for k, t in keys.items():
                torch.testing.assert_close(stored[v][g][k], t, rtol=1e-5, atol=1e-8, msg=f"{v}/{g}/{k}")
    total = sum_scores(per_variation)
    scores, _ = read_safetensors(run / "scores.safetensors")
    for g, keys in total.items():
        for k, t in keys.items():
            torch.testing.assert_close(scores[f"{g}/{k}"].double(), t, rtol=1e-5, atol=1e-8)


def test_answers_do_not_depend_on_the_batch_size(tiny_model_dir, tmp_path):
    """Keyed random streams: the same seed gives the same answers whatever the evaluation batch size."""
    out = {}
    for bs in (1, 5, 40):
        module, dm = make(tiny_model_dir, eval_batch_size=bs)
        t = trainer(tmp_path, name=f"bs{bs}")
        t.validate(module, datamodule=dm)
        out[bs] = {(r["name"], r["arm"]): r["responses"] for r in read_jsonl(Path(t.log_dir) / "answers.jsonl")}
    assert out[1] == out[5] == out[40]


def test_fit_validate_and_a_masks_file_give_the_same_answers(fitted, tiny_model_dir, tmp_path):
    """One code path and one seed rule: validate with the fit run's masks reproduces the fit run's answers."""
    run, _, _ = fitted
    module, dm = make(tiny_model_dir, scoring=["purchase/car", "purchase/piano"])
    t = trainer(tmp_path, name="val", callbacks=[PruningCallback(masks_file=str(run / "masks.safetensors"), random_draws=0)])
    t.validate(module, datamodule=dm)
    # the masks file's arm is named after it; its answers are the fit run's pruned arm's
    arm = f"pruned[{run.parent.name}/{run.name}]"
    mine = {(r["arm"].replace(arm, "pruned"), r["name"]): r["responses"] for r in read_jsonl(Path(t.log_dir) / "answers.jsonl")}
    theirs = {(r["arm"], r["name"]): r["responses"] for r in read_jsonl(run / "answers.jsonl") if r["arm"] in ("unpruned", "pruned")}
    assert mine == theirs
    assert (Path(t.log_dir) / "masks.safetensors").read_bytes() == (run / "masks.safetensors").read_bytes()  # copied in


def _scores_of(run: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(run / "scores.safetensors")[0]


def test_two_processes_equal_one(tiny_model_dir, tmp_path):
    names = names_file(tmp_path)  # odd shards: 8 scoring names, batch 3 over 2 ranks
    runs = {}
    for devices, strategy in ((1, "auto"), (2, "frozen_ddp_spawn")):
        module, dm = make(tiny_model_dir, names=names)
        t = trainer(tmp_path, name=f"d{devices}", devices=devices, strategy=strategy, callbacks=[PruningCallback(random_draws=1)])
        t.logger.version  # noqa: B018  (pin the version before processes are spawned, as the CLI does)
        runs[devices] = fit_and_validate(t, module, dm)
    one, two = _scores_of(runs[1]), _scores_of(runs[2])
    assert set(one) == set(two)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-7, msg=k)
    assert read_jsonl(runs[1] / "scoring_examples.jsonl") == read_jsonl(runs[2] / "scoring_examples.jsonl")
    answers = [{(r["arm"], r["name"]): r["responses"] for r in read_jsonl(run / "answers.jsonl")} for run in (runs[1], runs[2])]
    assert answers[0] == answers[1]
    rows = [list(csv.DictReader(open(run / "metrics.csv"))) for run in (runs[1], runs[2])]
    assert len(rows[0]) == len(rows[1])
    for a, b in zip(*rows):  # the rows of the gathered records: the same numbers whatever the world size
        for k in a:
            try:
                assert float(b[k]) == pytest.approx(float(a[k]), rel=1e-9, nan_ok=True), k
            except ValueError:
                assert b[k] == a[k], k


def test_resume_from_a_mid_epoch_checkpoint_gives_the_same_totals(tiny_model_dir, tmp_path):
    names = names_file(tmp_path)
    module, dm = make(tiny_model_dir, names=names, batch_size=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    t = trainer(tmp_path, name="full", callbacks=[PruningCallback(random_draws=1), ckpt])
    full_run = fit_and_validate(t, module, dm)
    mid = tmp_path / "ckpt" / "step=2.ckpt"
    state = torch.load(mid, weights_only=False)
    assert state["state_dict"] == {}  # frozen weights are not checkpointed
    assert int(state["biasprune"]["done"].sum()) == 4 and state["biasprune"]["score_sums"].dtype == torch.float64
    module, dm = make(tiny_model_dir, names=names, batch_size=2)
    t = trainer(tmp_path, name="resumed", callbacks=[PruningCallback(random_draws=1)])
    resumed_run = fit_and_validate(t, module, dm, ckpt_path=mid)
    full, resumed = _scores_of(full_run), _scores_of(resumed_run)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-6, atol=0, msg=k)
    # the resumed run's directory holds everything a fresh run's does, with the same answers
    for name in ("scoring_examples.jsonl", "masks.safetensors", "metrics.csv", "inlier_bounds.json", "answers.jsonl", "timings.json"):
        assert (resumed_run / name).is_file(), name
    assert read_jsonl(resumed_run / "answers.jsonl") == read_jsonl(full_run / "answers.jsonl")


def test_resume_from_a_finished_epoch_finishes_the_run(tiny_model_dir, tmp_path):
    """Lightning's own end-of-epoch checkpoint: the epoch is skipped on resume, the run still ends complete."""
    names = names_file(tmp_path)
    module, dm = make(tiny_model_dir, names=names)
    t = trainer(tmp_path, name="first", callbacks=[PruningCallback(random_draws=1)])
    t.fit(module, datamodule=dm)  # interrupted before the evaluation: only the checkpoint is left
    ckpt = next((Path(t.log_dir) / "checkpoints").glob("*.ckpt"))
    module, dm = make(tiny_model_dir, names=names)
    t = trainer(tmp_path, name="second", callbacks=[PruningCallback(random_draws=1)])
    run = fit_and_validate(t, module, dm, ckpt_path=ckpt)
    for name in ("scores.safetensors", "masks.safetensors", "metrics.csv", "summary.csv", "answers.jsonl"):
        assert (run / name).is_file(), name
    assert {r["arm"] for r in csv.DictReader(open(run / "metrics.csv"))} == {"unpruned", "pruned", "random/0"}


@pytest.mark.parametrize("change, field", [
    (dict(data=dict(scoring=["purchase/piano"])), "data.scoring"),
    (dict(model=dict(neuron_modules=["up_proj"])), "model.neuron_modules"),
    (dict(pruning=dict(budget="1%")), "budget"),
])
def test_resume_with_other_inputs_is_refused(tiny_model_dir, tmp_path, change, field):
    names = names_file(tmp_path)
    module, dm = make(tiny_model_dir, names=names, batch_size=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    t = trainer(tmp_path, name="a", callbacks=[PruningCallback(), ckpt])
    t.fit(module, datamodule=dm)
    module = BiasPruneModule(tiny_model_dir, dtype="float64", targets=TARGETS, generation=FAST_GEN, evaluation=FAST_EVAL, **change.get("model", {}))
    _, dm = make(tiny_model_dir, names=names, batch_size=2, **change.get("data", {}))
    t = trainer(tmp_path, name="b", callbacks=[PruningCallback(**change.get("pruning", {}))])
    with pytest.raises(FingerprintMismatch, match=rf"1 field\(s\) differ: {field}"):
        t.fit(module, datamodule=dm, ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")


def test_settings_that_leave_examples_unscored_are_refused_before_any_work(tiny_model_dir, tmp_path):
    module, dm = make(tiny_model_dir)
    t = trainer(tmp_path, limit_train_batches=2)
    with pytest.raises(ValueError, match=r"--trainer.limit_train_batches=2 would stop scoring before its 14 batch\(es\)"):
        t.fit(module, datamodule=dm)
    assert module.model is None or not (Path(t.log_dir) / "scoring_examples.jsonl").exists()


def test_validate_with_a_masks_file_evaluates_its_arms(fitted, tiny_model_dir, tmp_path):
    run, _, _ = fitted
    module, dm = make(tiny_model_dir, evaluation=["chess"])
    t = trainer(tmp_path, name="val2", callbacks=[PruningCallback(masks_file=str(run / "masks.safetensors"), random_draws=1)])
    t.validate(module, datamodule=dm)
    rows = list(csv.DictReader(open(Path(t.log_dir) / "metrics.csv")))
    arm = f"pruned[{run.parent.name}/{run.name}]"
    assert [(r["arm"], r["scenario"]) for r in rows] == [("unpruned", "chess"), (arm, "chess"), ("random/0", "chess")]
    # bounds of a stored file replace the unpruned arm's when given
    module = BiasPruneModule(tiny_model_dir, dtype="float64", targets=TARGETS, generation=FAST_GEN,
                             evaluation=EvaluationConfig(bootstrap_samples=0, permutation_samples=0, inlier_bounds=str(run / "inlier_bounds.json")))
    _, dm = make(tiny_model_dir)
    t = trainer(tmp_path, name="val3", callbacks=[PruningCallback(masks_file=str(run / "masks.safetensors"), random_draws=0)])
    t.validate(module, datamodule=dm)
    rows = list(csv.DictReader(open(Path(t.log_dir) / "metrics.csv")))
    stored = json.loads((run / "inlier_bounds.json").read_text())["bounds"]["purchase/car"]
    assert all([float(r["lower"]), float(r["upper"])] == pytest.approx(stored) for r in rows)


def test_the_contrastive_objective_scores_name_swapped_pairs(tiny_model_dir, tmp_path):
    """objective=contrastive: per-variation sums of |attribution patching| over pairs, equal to a direct computation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from biasprune.scoring.contrastive import build_pair_batch, contrastive_batch

    names = names_file(tmp_path)
    module = BiasPruneModule(tiny_model_dir, dtype="float64", objective="contrastive", targets=TARGETS, generation=FAST_GEN,
                             evaluation=EvaluationConfig(bootstrap_samples=0, permutation_samples=0))
    _, dm = make(tiny_model_dir, names=names)
    t = trainer(tmp_path, name="contrast", callbacks=[PruningCallback(rule="target", budget=3, random_draws=1)])
    run = fit_and_validate(t, module, dm)
    scores, meta = read_safetensors(run / "scores.safetensors")
    assert {k.split("/")[0] for k in scores} == {"contrast"} and json.loads(meta["n_examples"]) == {"contrast": 4}
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval().requires_grad_(False)
    examples = read_jsonl(run / "scoring_examples.jsonl")
    twins = {e["pair_id"]: e for e in examples if e["group"] == "white"}
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs = [(ids(e["prompt"]), ids(twins[e["pair_id"]]["prompt"]), ids(e["response"])) for e in examples if e["group"] == "black" and e["response"].strip()]
    direct = contrastive_batch(model, resolve_units(model), **build_pair_batch(pairs, tok.pad_token_id)).scores
    for key, s in direct.items():
        torch.testing.assert_close(scores[f"contrast/{key}"].double(), s.sum(0), rtol=1e-5, atol=1e-9, msg=key)
    masks, _ = read_safetensors(run / "masks.safetensors")
    assert all(int((m == 0).sum()) == 3 for k, m in masks.items() if k.startswith("neuron/"))
    with pytest.raises(ValueError, match="the contrastive objective scores pairs .* use pruning.rule=target"):
        from biasprune.scoring.objectives import selection_inputs

        selection_inputs({"contrast": {}}, ("white", "black"), "set_difference")


def test_random_controls_are_drawn_per_split(fitted):
    """Seeds by (split, arm, draw): the dev and test controls of the pruned arm never share a mask."""
    run, _, _ = fitted
    masks, _ = read_safetensors(run / "masks.safetensors")
    cb = PruningCallback(units="both", random_draws=2)
    dev, test = cb.arms_from(masks, "dev"), cb.arms_from(masks, "test")
    assert [a.name for a in dev] == [a.name for a in test] == ["unpruned", "pruned", "random/0", "random/1"]
    for d, t in zip(dev[2:], test[2:]):
        assert any(not torch.equal(d.masks[k], t.masks[k]) for k in masks)
        assert all(int((d.masks[k] == 0).sum()) == int((t.masks[k] == 0).sum()) == int((masks[k] == 0).sum()) for k in masks)
    assert any(not torch.equal(test[2].masks[k], test[3].masks[k]) for k in masks)


def test_budget_auto_chooses_on_dev_names(tiny_model_dir, tmp_path):
    """fit with --pruning.budget auto: a dev stage compares the candidates with their own random controls, the choice
    goes into the masks and the manifest's settings, and the reported stage answers the test names only."""
    from biasprune.study.auto import CHOICE_FILE
    from biasprune.study.trainer import BiasPruneTrainer

    names = names_file(tmp_path, n=40)
    module, dm = make(tiny_model_dir, names=names, eval_cfg=EvaluationConfig(bootstrap_samples=50, permutation_samples=0,
                                                                            utility_margin=1.0, max_undefined_share=1.0))
    cb = PruningCallback(rule="relative_difference", budget="auto", auto_budgets=("1%", "5%"), auto_rules=("relative_difference", "target"),
                         random_draws=1)
    assert [point["budget"] for point in cb.candidates()] == ["1%", "5%", "1%", "5%"] and cb.auto
    t = BiasPruneTrainer(max_epochs=1, logger=TensorBoardLogger(tmp_path, name="auto"), enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, callbacks=[cb])
    run = fit_and_validate(t, module, dm)
    table = list(csv.DictReader(open(run / CHOICE_FILE)))
    assert [r["point"] for r in table] == ["relative_difference budget=1%", "relative_difference budget=5%", "target budget=1%",
                                           "target budget=5%"]
    assert {r["split"] for r in table} == {"dev"} and sum(r["chosen"] == "True" for r in table) == 1
    chosen = next(r for r in table if r["chosen"] == "True")
    assert cb.chosen == {"rule": chosen["rule"], "budget": chosen["budget"], "head_budget": None}
    _, meta = read_safetensors(run / "masks.safetensors")
    assert json.loads(meta["chosen"]) == cb.chosen
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert {r["split"] for r in rows} == {"test"} and {r["arm"] for r in rows} == {"unpruned", "pruned", "random/0"}
    # the chosen point is the one with the lowest scale-free mean |SMD| minus its random control's among those that qualify
    qualify = [r for r in table if r["utility"] == "non-inferior" and r["all_defined"] == "True" and float(r["min_pruned"]) >= 1]
    assert chosen == min(qualify, key=lambda r: (float(r["vs_random_rank_smd"]), float(r["mean_pruned"])))
