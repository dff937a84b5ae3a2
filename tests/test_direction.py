"""The direction arm: the estimator through the scoring spine against numpy, the edit on cached activations, the
random-direction control's size, hooks that leave no trace, the file and the loader of a plain transformers model."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from conftest import tiny_model
from lightning import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from transformers import AutoModelForCausalLM, AutoTokenizer

import biasprune.pipeline.parallel  # noqa: F401  (registers the frozen strategies)
from biasprune.answers.answering import TargetConfig
from biasprune.callbacks import PruningCallback
from biasprune.core.artifacts import read_jsonl
from biasprune.datamodules import AuditDataModule
from biasprune.models.architectures import decoder_layers
from biasprune.pipeline.module import BiasPruneModule
from biasprune.pruning import direction as edit_mod
from biasprune.pruning.direction import (
    DirectionEdit,
    attach_direction,
    estimate_direction,
    load_direction,
    parse_layers,
    random_direction,
)
from biasprune.scoring import direction as est_mod
from biasprune.scoring.direction import name_positions
from biasprune.scoring.objectives import OBJECTIVES
from biasprune.scoring.scorefile import read_scores

# ------------------------------------------------------------------------------------------------ helpers


def layer_outputs(model, ids, attn=None, position_ids=None):
    """Every decoder layer's output, captured by plain hooks (independent of the package's helpers)."""
    acts, handles = {}, []
    for i, layer in enumerate(decoder_layers(model)):
        handles.append(layer.register_forward_hook(
            lambda m, a, o, i=i: acts.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach().clone())))
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return acts, logits


def toy_edit(model, layers=(1,), seed=0) -> DirectionEdit:
    g = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    u = torch.randn(len(layers), hidden, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    return DirectionEdit(tuple(layers), u.float(), torch.randn(len(layers), generator=g).float(),
                         torch.randn(len(layers), hidden, generator=g).float())


@pytest.fixture(scope="module")
def model():
    m = tiny_model("llama", dtype=torch.float64, num_hidden_layers=3)
    m.config._attn_implementation = "sdpa"  # eager attention gives NaN rows for left padding; sdpa, as in decoding, does not
    return m


# ---------------------------------------------------------------------------------------- the estimator
def test_the_registry_keys_agree_between_the_estimator_and_the_edit():
    assert est_mod.COUNT_KEY == edit_mod.COUNT_KEY and est_mod.resid_key(4) == f"{edit_mod.RESID_PREFIX}4"
    assert OBJECTIVES["direction"].positions == "prompt" and OBJECTIVES["direction_name"].positions == "name"


@pytest.fixture(scope="module")
def direction_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("direction")
    module = BiasPruneModule(tiny_model_dir, dtype="float64", objective="direction", targets=TargetConfig(max_new_tokens=3))
    dm = AuditDataModule(scoring=["purchase/car", "purchase/piano"], evaluation=["purchase/car"], tokenizer=tiny_model_dir, batch_size=4)
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp, name="d"),
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    return trainer.log_dir, module


def test_the_estimated_direction_equals_a_numpy_difference_of_means(direction_run, tiny_model_dir):
    """fit with model.objective=direction, then the direction from its sums against numpy on every layer output."""
    run, module = direction_run
    per_variation, _ = read_scores(f"{run}/scores_by_variation.safetensors")
    totals = {g: {k: sum(per_variation[v][g][k] for v in per_variation) for k in per_variation["purchase/car"][g]}
              for g in ("white", "black")}
    n_layers = len(decoder_layers(module.model))
    edit = estimate_direction(totals, ("white", "black"), range(n_layers))

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = {g: {i: [] for i in range(n_layers)} for g in ("white", "black")}
    for e in read_jsonl(f"{run}/scoring_examples.jsonl"):
        if not e["response"].strip():
            continue
        ids = tok(e["prompt"], add_special_tokens=False)["input_ids"]
        acts, _ = layer_outputs(module.model, torch.tensor([ids]))
        for i in range(n_layers):
            rows[e["group"]][i].append(acts[i][0, 1:].numpy())  # every prompt token but the first
    for i in range(n_layers):
        mu_r = np.concatenate(rows["white"][i]).mean(0)
        mu_t = np.concatenate(rows["black"][i]).mean(0)
        d = mu_t - mu_r
        u = d / np.linalg.norm(d)
        np.testing.assert_allclose(edit.units[i].numpy(), u, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(edit.targets[i]), mu_r @ u, rtol=1e-5, atol=1e-6)
        pooled = np.concatenate(rows["white"][i] + rows["black"][i]).mean(0)
        np.testing.assert_allclose(edit.pooled[i].numpy(), pooled, rtol=1e-5, atol=1e-6)


def test_name_positions_are_the_names_tokens_never_the_first(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = "<|im_start|>user\nShould Jamal Washington buy a car? Jamal says yes.<|im_end|>"
    pos = name_positions(tok, prompt, "Jamal")
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert pos and 0 not in pos
    assert tok.decode([ids[t] for t in pos]).replace(" ", "") == "JamalJamal"
    with pytest.raises(ValueError, match="does not occur"):
        name_positions(tok, prompt, "Greg")


def test_the_direction_objective_has_no_selection_rule():
    with pytest.raises(ValueError, match="pruning.method=direction"):
        OBJECTIVES["direction"].selection_inputs({}, ("white", "black"), "relative_difference")


def test_layer_choices_and_their_errors():
    assert parse_layers("early", 30) == tuple(range(8)) and parse_layers("all", 3) == (0, 1, 2)
    assert parse_layers("2", 30) == (2,) and parse_layers("0-3", 30) == (0, 1, 2, 3) and parse_layers("5,1", 30) == (1, 5)
    with pytest.raises(ValueError, match=r"pruning.direction_layers='late'.*valid forms"):
        parse_layers("late", 30)
    with pytest.raises(ValueError, match="outside the model's 30 layers"):
        parse_layers("30", 30)
    with pytest.raises(ValueError, match=r"pruning.budget=auto .* with pruning.method=direction nothing is pruned"):
        PruningCallback(method="direction", budget="auto")


# --------------------------------------------------------------------------------------------- the edit
def test_the_edit_removes_exactly_that_component_on_cached_activations(model):
    """Right padding (position ids 0..T-1) and left padding (ids cumsum - 1): at the edited layer, h' . u = c at
    every position but the first real one, h' - h is parallel to u, and the first token is untouched."""
    edit = toy_edit(model, layers=(1,))
    u, c = edit.units[0].double(), float(edit.targets[0])
    u = u / u.norm()
    ids = torch.randint(1, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(3))
    attn = torch.ones_like(ids)
    attn[1, :2] = 0  # row 1 left-padded: its first real token is at index 2
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    before, _ = layer_outputs(model, ids, attn, pos)
    with edit.apply(model):
        after, _ = layer_outputs(model, ids, attn, pos)
    h, h2 = before[1], after[1]
    first = pos == 0
    edited = ~first
    torch.testing.assert_close((h2 @ u)[edited], torch.full_like((h2 @ u)[edited], c), rtol=0, atol=1e-10)
    diff = h2 - h
    torch.testing.assert_close(diff - (diff @ u).unsqueeze(-1) * u, torch.zeros_like(diff), rtol=0, atol=1e-10)
    torch.testing.assert_close(h2[first], h[first], rtol=0, atol=0)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)  # layers before the edit unchanged


def test_the_edit_is_the_same_with_a_kv_cache(model):
    """Prefill then one cached step equals one full pass under the edit (decoding steps have position ids > 0)."""
    edit = toy_edit(model, layers=(0, 2))
    ids = torch.randint(1, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(4))
    with edit.apply(model), torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        out = model(ids[:, :-1], use_cache=True)
        cache = out.past_key_values if hasattr(out, "past_key_values") and out.past_key_values is not None else out.cache
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        step = model(ids[:, -1:], **{name: cache}, use_cache=True,
                     position_ids=torch.tensor([[ids.shape[1] - 1]])).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-9, atol=1e-9)


def test_hooks_leave_no_trace_after_the_arm_or_an_error(model):
    ids = torch.randint(1, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(ids).logits
    edit = toy_edit(model, layers=(0, 1, 2))
    with edit.apply(model), torch.no_grad():
        changed = model(ids).logits
    assert not torch.equal(changed, ref)
    with pytest.raises(RuntimeError, match="boom"), edit.apply(model):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_hooks_with_kwargs for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)


def test_the_random_control_moves_the_pooled_mean_as_far_and_is_seeded(model):
    edit = toy_edit(model, layers=(0, 2))
    r1, r2, r3 = random_direction(edit, 11), random_direction(edit, 11), random_direction(edit, 12)
    assert torch.equal(r1.units, r2.units) and torch.equal(r1.targets, r2.targets) and not torch.equal(r1.units, r3.units)
    torch.testing.assert_close(r1.units.norm(dim=-1), torch.ones(2))
    for e in (edit, r1):  # the pooled mean m moves to m + (c - m.u) u: a distance |c - m.u|, the same for both
        m = edit.pooled.double()
        moved = m + (e.targets.double() - (m * e.units.double()).sum(-1)).unsqueeze(-1) * e.units.double()
        torch.testing.assert_close((moved - m).norm(dim=-1), edit.shift().double(), rtol=1e-5, atol=1e-6)
    cb = PruningCallback(method="direction", random_draws=2, random_seed=3)  # seeded by (split, arm, draw), as random masks
    dev, test, again = (cb.direction_arms(edit, split) for split in ("dev", "test", "test"))
    assert [a.name for a in test] == ["unpruned", "pruned", "random/0", "random/1"]
    for d in (0, 1):
        seed = cb.factory.control_seed("test", "pruned", d)
        assert torch.equal(test[2 + d].edit.units, random_direction(edit, seed).units)
        assert torch.equal(test[2 + d].edit.units, again[2 + d].edit.units) and not torch.equal(test[2 + d].edit.units, dev[2 + d].edit.units)


# ------------------------------------------------------------------------------------- file and export
def test_the_export_equals_the_hooked_models_logits(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    edit = toy_edit(model, layers=(0, 1))
    edit = DirectionEdit(edit.layers, edit.units, edit.targets, edit.pooled, {"model": tiny_model_dir, "scoring": "purchase/car"})
    path = edit.save(tmp_path / "direction.safetensors")
    back = load_direction(path)
    assert torch.equal(back.units, edit.units) and torch.equal(back.targets, edit.targets) and back.layers == edit.layers
    assert back.metadata["scoring"] == "purchase/car"
    ids = torch.randint(1, 200, (2, 9), generator=torch.Generator().manual_seed(6))
    with edit.apply(model), torch.no_grad():
        hooked = model(ids).logits
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with attach_direction(plain, path), torch.no_grad():
        exported = plain(ids).logits
    assert torch.equal(exported, hooked)
    with pytest.raises(ValueError, match="not a direction file"):
        from biasprune.core.artifacts import write_safetensors

        write_safetensors(tmp_path / "x.safetensors", {"neuron/a": torch.ones(2)}, {})
        load_direction(tmp_path / "x.safetensors")


# ------------------------------------------------------------------------------------------- the arm in fit
def test_fit_with_the_direction_method_evaluates_the_edit_beside_random_directions(tiny_model_dir, tmp_path):
    """biasprune fit's path (Trainer.fit then validate) with pruning.method=direction: the edit is written with its
    provenance, answered beside its random-direction controls, and kept in the claims (it edits layers)."""
    import csv

    from biasprune.answers.generation import GenerationConfig
    from biasprune.stats.rows import EvaluationConfig

    module = BiasPruneModule(tiny_model_dir, dtype="float64", objective="direction", targets=TargetConfig(max_new_tokens=3),
                             generation=GenerationConfig(samples=2, max_new_tokens=4),
                             evaluation=EvaluationConfig(bootstrap_samples=30, permutation_samples=30))
    dm = AuditDataModule(scoring=["purchase/car"], evaluation=["purchase/car"], tokenizer=tiny_model_dir, batch_size=4, eval_batch_size=4)
    cb = PruningCallback(method="direction", direction_layers="0-1", random_draws=2, export_dir=str(tmp_path / "export"))
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path, name="d"), callbacks=[cb],
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    trainer.validate(module, datamodule=dm)
    run = trainer.log_dir
    edit = load_direction(f"{run}/direction.safetensors")
    assert edit.layers == (0, 1) and edit.metadata["method"] == "direction" and edit.metadata["scoring"] == "purchase/car"
    assert load_direction(tmp_path / "export" / "direction.safetensors").layers == (0, 1)
    arms = {r["arm"]: r for r in csv.DictReader(open(f"{run}/summary.csv"))}
    assert {"unpruned", "pruned"} <= set(arms) and float(arms["pruned"]["random_draws"]) == 2
    assert arms["pruned"]["excluded"] != "prunes nothing" and float(arms["pruned"]["edited_layers"]) == 2
    rows = list(csv.DictReader(open(f"{run}/metrics.csv")))
    assert {r["edited_layers"] for r in rows if r["arm"] == "pruned"} == {"2"}
    assert {r["edited_layers"] for r in rows if r["arm"].startswith("random/")} == {"2"}
    assert all(not m._forward_hooks_with_kwargs for m in module.model.modules())
    with pytest.raises(ValueError, match="pruning.method=direction needs model.objective=direction"):
        Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                callbacks=[PruningCallback(method="direction")]).fit(
            BiasPruneModule(tiny_model_dir, dtype="float64"), datamodule=AuditDataModule(
                scoring=["purchase/car"], evaluation=["purchase/car"], tokenizer=tiny_model_dir, batch_size=4))


def test_two_processes_give_the_same_direction_sums(tiny_model_dir, tmp_path):
    """The residual-stream sums and position counts are sums over examples: 2 gloo processes (odd shards) equal 1."""
    from biasprune.callbacks import PruningCallback

    path = tmp_path / "names.csv"
    path.write_text("name,group,gender\n" + "".join(
        f"Person{i} {'Becker' if i % 2 else 'Washington'},{'white' if i % 2 else 'black'},{'man' if i % 4 < 2 else 'woman'}\n"
        for i in range(20)))
    sums = {}
    for devices, strategy in ((1, "auto"), (2, "frozen_ddp_spawn")):
        module = BiasPruneModule(tiny_model_dir, dtype="float64", objective="direction", targets=TargetConfig(max_new_tokens=3))
        dm = AuditDataModule(scoring=["purchase/car"], evaluation=["purchase/car"], tokenizer=tiny_model_dir, batch_size=3,
                             names=str(path), split_fractions=(0.4, 0.2, 0.4))
        t = Trainer(max_epochs=1, accelerator="cpu", devices=devices, strategy=strategy, logger=TensorBoardLogger(tmp_path, name=f"d{devices}"),
                    callbacks=[PruningCallback(method="direction", random_draws=0)], enable_progress_bar=False, enable_model_summary=False)
        t.logger.version  # noqa: B018  (pin the version before processes are spawned, as the CLI does)
        t.fit(module, datamodule=dm)
        sums[devices], _ = read_scores(f"{t.log_dir}/scores_by_variation.safetensors")
    one, two = sums[1]["purchase/car"], sums[2]["purchase/car"]
    for g in one:
        assert set(one[g]) == set(two[g]) and "positions" in one[g]
        for k in one[g]:
            torch.testing.assert_close(two[g][k], one[g][k], rtol=1e-9, atol=1e-9, msg=f"{g}/{k}")
