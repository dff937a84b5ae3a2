"""The Lightning pipeline on a tiny random model: artifacts, independent re-scoring, processes, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

import biasprune.strategies  # noqa: F401
from biasprune.architectures import resolve_units
from biasprune.artifacts import read_jsonl, read_safetensors
from biasprune.evaluation import EvaluationConfig, METRIC_COLUMNS
from biasprune.generation import GenerationConfig
from biasprune.module import BiasPruneModule
from biasprune.scoring import score_batch
from biasprune.callbacks import PruningCallback
from biasprune.datamodules import AuditDataModule

FAST_GEN = GenerationConfig(samples=3, max_new_tokens=6)
FAST_EVAL = EvaluationConfig(bootstrap_samples=50, permutation_samples=50)
NO_EVAL = EvaluationConfig(baseline=False, pruned=False)


def make(model_dir, tmp_path, names=None, eval_cfg=FAST_EVAL, **data):
    module = BiasPruneModule(model_dir, response_max_new_tokens=6, generation=FAST_GEN, evaluation=eval_cfg)
    kwargs = dict(scoring=["purchase/car"], evaluation=["purchase/car"], tokenizer=model_dir, batch_size=3, eval_batch_size=4)
    if names:
        kwargs.update(names=names, holdout_names=False)
    kwargs.update(data)
    return module, AuditDataModule(**kwargs)


def trainer(tmp_path, name="run", **kw):
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("devices", 1)
    return Trainer(
        max_epochs=1,
        logger=TensorBoardLogger(tmp_path, name=name),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def odd_names(tmp_path, n=7):
    path = tmp_path / "names.csv"
    path.write_text("name,group,gender\n" + "".join(f"Person{i} {'Becker' if i % 2 else 'Washington'},{'white' if i % 2 else 'black'},{'man' if i % 3 else 'woman'}\n" for i in range(n)))
    return str(path)


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    module, dm = make(tiny_model_dir, tmp)
    t = trainer(tmp, callbacks=[PruningCallback(units="both", p=0.2, q=0.3)])
    t.fit(module, datamodule=dm)
    return Path(t.log_dir), module, dm


def test_fit_writes_the_contract_artifacts(fitted):
    run, module, dm = fitted
    scores, meta = read_safetensors(run / "scores.safetensors")
    layout = module.layout
    for group in ("white", "black"):
        for u in layout.neurons:
            assert scores[f"{group}/neuron/{u.path}"].shape == (u.size,) and scores[f"{group}/neuron/{u.path}"].dtype == torch.float32
        for h in layout.heads:
            assert scores[f"{group}/head/{h.path}"].shape == (h.n_heads,)
    assert json.loads(meta["n_examples"]) == {"white": 10, "black": 10}
    assert meta["model"] and meta["objective"]
    masks, mmeta = read_safetensors(run / "masks.safetensors")
    assert set(masks) == set(layout.keys()) and all(m.dtype == torch.uint8 for m in masks.values())
    assert {mmeta[k] for k in ("p", "q", "units", "reference_group", "target_group")} == {"0.2", "0.3", "both", "white", "black"}
    examples = read_jsonl(run / "scoring_examples.jsonl")
    assert len(examples) == 20 and all(set(e) >= {"group", "scenario", "variation", "name", "prompt", "response"} for e in examples)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [(r["phase"], r["variation"]) for r in rows] == [("baseline", "car"), ("pruned", "car")]
    assert json.loads((run / "inlier_bounds.json").read_text())["bounds"].keys() == {"purchase/car"}
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    assert (run / "answers_baseline.jsonl").is_file() and (run / "answers_pruned.jsonl").is_file()


def test_scores_are_reproducible_from_scoring_examples_alone(fitted, tiny_model_dir):
    """Re-score the stored texts with score_batch directly, one example at a time, and compare."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _, _ = fitted
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval().requires_grad_(False)
    layout = resolve_units(model)
    totals: dict[str, torch.Tensor] = {}
    for e in read_jsonl(run / "scoring_examples.jsonl"):
        p = tok(e["prompt"], add_special_tokens=False)["input_ids"]
        r = tok(e["response"], add_special_tokens=False)["input_ids"]
        if not r:
            continue
        ids = torch.tensor([p + r])
        resp = torch.tensor([[0] * len(p) + [1] * len(r)])
        for k, s in score_batch(model, layout, ids, torch.ones_like(ids), resp).scores.items():
            key = f"{e['group']}/{k}"
            totals[key] = totals.get(key, 0) + s[0].double()
    scores, _ = read_safetensors(run / "scores.safetensors")
    assert set(scores) == set(totals)
    for k in scores:
        torch.testing.assert_close(scores[k].double(), totals[k], rtol=1e-5, atol=1e-8, msg=k)


def test_pruned_phase_ran_with_masks_applied(fitted):
    _, module, _ = fitted
    assert module.masks is not None and module._mask_hooks is not None and len(module._mask_hooks) > 0
    assert set(module.phase_results) == {"baseline", "pruned"}


def _scores_of(run: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(run / "scores.safetensors")[0]


def test_two_processes_equal_one_on_odd_examples(tiny_model_dir, tmp_path):
    names = odd_names(tmp_path)  # 7 names x 1 variation = 7 scoring examples, batch 3
    runs = {}
    for devices, strategy in ((1, "auto"), (2, "frozen_ddp_spawn")):
        module, dm = make(tiny_model_dir, tmp_path, names=names, eval_cfg=NO_EVAL)
        t = trainer(tmp_path, name=f"d{devices}", devices=devices, strategy=strategy, callbacks=[PruningCallback()])
        t.fit(module, datamodule=dm)
        runs[devices] = Path(tmp_path / f"d{devices}" / "version_0")
    one, two = _scores_of(runs[1]), _scores_of(runs[2])
    assert set(one) == set(two)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-7, msg=k)
    meta = read_safetensors(runs[2] / "scores.safetensors")[1]
    assert sum(json.loads(meta["n_examples"]).values()) == 7  # nothing counted twice
    assert len(read_jsonl(runs[2] / "scoring_examples.jsonl")) == 7


def test_resume_from_a_mid_epoch_checkpoint_gives_the_same_totals(tiny_model_dir, tmp_path):
    names = odd_names(tmp_path)
    module, dm = make(tiny_model_dir, tmp_path, names=names, eval_cfg=NO_EVAL, batch_size=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    t = trainer(tmp_path, name="full", callbacks=[PruningCallback(), ckpt])
    t.fit(module, datamodule=dm)
    full = _scores_of(Path(t.log_dir))
    mid = tmp_path / "ckpt" / "step=2.ckpt"
    state = torch.load(mid, weights_only=False)
    assert state["state_dict"] == {}  # frozen weights are not checkpointed
    assert int(state["biasprune"]["done"].sum()) == 4 and state["biasprune"]["score_sums"].dtype == torch.float64
    module, dm = make(tiny_model_dir, tmp_path, names=names, eval_cfg=NO_EVAL, batch_size=2)
    t = trainer(tmp_path, name="resumed", callbacks=[PruningCallback()])
    t.fit(module, datamodule=dm, ckpt_path=mid)
    resumed = _scores_of(Path(t.log_dir))
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-6, atol=0, msg=k)


def test_validate_applies_a_masks_file_and_reuses_bounds(fitted, tiny_model_dir, tmp_path):
    run, _, _ = fitted
    module, dm = make(tiny_model_dir, tmp_path)
    cb = PruningCallback(masks_file=str(run / "masks.safetensors"))
    t = trainer(tmp_path, name="val", callbacks=[cb])
    t.validate(module, datamodule=dm)
    rows = list(csv.DictReader(open(Path(t.log_dir) / "metrics.csv")))
    assert [r["phase"] for r in rows] == ["pruned"]  # bounds came from the fit run's inlier_bounds.json
    stored = json.loads((run / "inlier_bounds.json").read_text())["bounds"]["purchase/car"]
    assert [float(rows[0]["lower"]), float(rows[0]["upper"])] == pytest.approx(stored)
    # another context: no stored bounds, so the unpruned model is evaluated first
    module, dm = make(tiny_model_dir, tmp_path, evaluation=["chess"])
    t = trainer(tmp_path, name="val2", callbacks=[PruningCallback(masks_file=str(run / "masks.safetensors"))])
    t.validate(module, datamodule=dm)
    rows = list(csv.DictReader(open(Path(t.log_dir) / "metrics.csv")))
    assert [(r["phase"], r["scenario"]) for r in rows] == [("baseline", "chess"), ("pruned", "chess")]
