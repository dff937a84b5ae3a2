"""The objective seam: the registry, the one capture helper against plain autograd, and a new objective plugged in."""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch, tiny_model
from lightning import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from transformers import AutoTokenizer

from biasprune.answers.answering import TargetConfig
from biasprune.core.artifacts import read_jsonl
from biasprune.datamodules import AuditDataModule
from biasprune.models.architectures import UnitLayout, resolve_units
from biasprune.pipeline.module import BiasPruneModule
from biasprune.scoring.accumulate import two_group_inputs
from biasprune.scoring.capture import (
    BatchScores,
    UnitSite,
    capture_activations,
    capture_gradients,
    response_nll,
    unit_sites,
)
from biasprune.scoring.gradxact import NLLObjective
from biasprune.scoring.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, Objective, get_objective, selection_inputs
from biasprune.scoring.scorefile import read_scores, read_scores_meta


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama", dtype=torch.float64)
    layout = resolve_units(model)
    ids, attn, resp = random_batch(5, model.config.vocab_size, seed=7)
    return model, layout, ids, attn, resp


# ----------------------------------------------------------------------------------------- registry
def test_the_registry_holds_the_objectives_and_names_bad_ones():
    assert list(OBJECTIVES) == ["nll", "contrastive", "wanda", "atp", "direction", "direction_name"] and DEFAULT_OBJECTIVE == "nll"
    assert all(isinstance(o, Objective) and o.name == k for k, o in OBJECTIVES.items())
    assert get_objective() is OBJECTIVES["nll"] and get_objective("contrastive") is OBJECTIVES["contrastive"]
    assert get_objective("causal").name == "causal" and get_objective("causal") is get_objective("causal")
    valid = r"valid choices: \['nll', 'contrastive', 'wanda', 'atp', 'direction', 'direction_name', 'causal'\]"
    with pytest.raises(ValueError, match=r"model\.objective='energy' is not valid; " + valid):
        get_objective("energy")
    with pytest.raises(ValueError, match=r"model\.objective='no\.such\.Objective': cannot import the objective class"):
        get_objective("no.such.Objective")
    with pytest.raises(TypeError, match="object does not implement the Objective protocol"):
        get_objective(object())
    with pytest.raises(ValueError, match=r"model\.objective='energy' is not valid"):
        BiasPruneModule(objective="energy")


def test_selection_inputs_follow_the_scores_groups():
    s = {"white": {"neuron/a": torch.ones(2)}, "black": {"neuron/a": torch.full((2,), 3.0)}}
    t, r, n_t, n_r = selection_inputs(s, ("white", "black"), "set_difference", {"white": 4, "black": 0})
    assert torch.equal(t["neuron/a"], s["black"]["neuron/a"]) and torch.equal(r["neuron/a"], s["white"]["neuron/a"])
    assert (n_t, n_r) == (None, 4)
    t, r, n_t, n_r = selection_inputs({"contrast": {"neuron/a": torch.tensor([2.0, 1.0])}}, ("white", "black"), "target")
    assert torch.equal(r["neuron/a"], torch.zeros(2)) and (n_t, n_r) == (None, None)
    with pytest.raises(ValueError, match=r"scores of groups \['asian', 'white'\] fit no objective"):
        selection_inputs({"white": {}, "asian": {}}, ("white", "black"), "target")


# ------------------------------------------------------------------------------------ capture helper
def test_capture_gradients_gives_each_sites_activation_and_gradient(setup):
    """A signed a·g reduction through the helper equals retain_grad + backward on the same batch."""
    model, layout, ids, attn, resp = setup
    sites = unit_sites(layout)

    def reduce(site: UnitSite, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (a * g).sum(1)  # [B, C], signed, not reduced per head

    got, objective = capture_gradients(model, sites, lambda: response_nll(model, ids, attn, resp), reduce)
    acts, handles = {}, []

    def keep(key, tensor):
        tensor.retain_grad()
        acts[key] = tensor

    for s in sites:
        if s.n_heads:
            handles.append(s.module.register_forward_pre_hook(lambda m, a, k=s.key: keep(k, a[0])))
        else:
            handles.append(s.module.register_forward_hook(lambda m, a, o, k=s.key: keep(k, o)))
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    try:
        loss = response_nll(model, ids, attn, resp, inputs_embeds=emb)
        loss.sum().backward()
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(objective, loss.detach())
    assert set(got) == {s.key for s in sites}
    for key, a in acts.items():
        torch.testing.assert_close(got[key], (a * a.grad).sum(1), rtol=1e-10, atol=1e-12, msg=key)
    assert all(p.grad is None for p in model.parameters())


def test_capture_activations_stores_every_site_once_and_restores_the_mode(setup):
    model, layout, ids, attn, _ = setup
    sites = unit_sites(layout, heads=False)
    stored = {}
    model.train()
    try:
        capture_activations(model, sites, lambda: model(ids, attention_mask=attn), lambda s, a: stored.__setitem__(s.key, a))
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    plain = {}
    handles = [s.module.register_forward_hook(lambda m, a, o, k=s.key: plain.__setitem__(k, o.detach())) for s in sites]
    try:
        with torch.no_grad():
            model(ids, attention_mask=attn)
    finally:
        for h in handles:
            h.remove()
    assert stored.keys() == plain.keys()
    for k in plain:
        assert torch.equal(stored[k], plain[k]) and not stored[k].requires_grad
    twice = sites[:1] * 2  # the same module listed twice fires twice per pass
    with pytest.raises(RuntimeError, match=rf"{sites[0].key}: the module ran twice in one forward pass"):
        capture_activations(model, twice, lambda: model(ids, attention_mask=attn), lambda s, a: None)
    with pytest.raises(RuntimeError, match="no activation was captured for 1 unit group"):
        capture_activations(model, [UnitSite("neuron/nowhere", torch.nn.Linear(2, 2))], lambda: model(ids), lambda s, a: None)
    assert [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks] == []


def test_capture_gradients_refuses_inference_mode(setup):
    model, layout, ids, attn, resp = setup
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"inference mode is on \(Lightning: inference_mode=False\)"):
        capture_gradients(model, unit_sites(layout), lambda: response_nll(model, ids, attn, resp), lambda s, a, g: g)


# ------------------------------------------------------------------------------- a new objective
class ActivationEnergy:
    """A forward-only scorer: sum over tokens of a² per neuron and example (the shape of a Wanda-style ‖X‖² sum)."""

    name = "energy"
    description = "sum_t a^2 per neuron (a test objective)"

    def __init__(self) -> None:
        self._tokens = NLLObjective()  # same items and batches as nll: prompt + response ids

    def groups(self, data_groups):
        return tuple(data_groups)

    def unit_sizes(self, layout: UnitLayout, neurons: bool, heads: bool) -> dict[str, int]:
        return {s.key: layout.sizes()[s.key] for s in unit_sites(layout, neurons=True, heads=False)}

    def items(self, tokenizer, kept, examples, variations, data_groups):
        return self._tokens.items(tokenizer, kept, examples, variations, data_groups)

    def collator(self, pad_id: int):
        return self._tokens.collator(pad_id)

    def score(self, model, layout, batch, idx, neurons=True, heads=True) -> BatchScores:
        ids, attn = batch["input_ids"][idx], batch["attention_mask"][idx]
        mask = attn[..., None].to(torch.float64)
        out: dict[str, torch.Tensor] = {}
        capture_activations(model, unit_sites(layout, heads=False), lambda: model(ids, attention_mask=attn, use_cache=False),
                            lambda s, a: out.__setitem__(s.key, (a.double() ** 2 * mask).sum(1)))
        return BatchScores(scores=out, losses=torch.zeros(len(idx), dtype=torch.float64), n_tokens=int(attn.sum()))

    def selection_inputs(self, scores, data_groups, rule, n_examples=None):
        return two_group_inputs(scores, data_groups, n_examples)


def test_a_new_objective_plugs_in_by_one_registry_entry(tiny_model_dir, tmp_path, monkeypatch):
    """Module, data module and accumulator take a forward-only objective unchanged; its group sums equal a direct
    example-by-example computation on the run's own scoring_examples.jsonl."""
    monkeypatch.setitem(OBJECTIVES, "energy", ActivationEnergy())
    module = BiasPruneModule(tiny_model_dir, dtype="float64", objective="energy", targets=TargetConfig(max_new_tokens=4))
    dm = AuditDataModule(scoring=["purchase/car"], evaluation=["purchase/car"], tokenizer=tiny_model_dir, batch_size=5)
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path, name="energy"),
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    run = trainer.log_dir
    per_variation, _ = read_scores(f"{run}/scores_by_variation.safetensors")
    assert read_scores_meta(f"{run}/scores.safetensors")["objective"] == ActivationEnergy.description
    got = per_variation["purchase/car"]
    assert set(got) == {"white", "black"} and all(k.startswith("neuron/") for k in got["white"])

    model = module.model
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    layout = resolve_units(model)
    expect: dict[str, dict[str, torch.Tensor]] = {}
    for e in read_jsonl(f"{run}/scoring_examples.jsonl"):
        if not e["response"].strip():
            continue
        ids = tok(e["prompt"], add_special_tokens=False)["input_ids"] + tok(e["response"], add_special_tokens=False)["input_ids"]
        acts, handles = {}, []
        for u in layout.neurons:
            handles.append(u.module.register_forward_hook(lambda m, a, o, k=f"neuron/{u.path}", acts=acts: acts.__setitem__(k, o[0])))
        try:
            with torch.no_grad():
                model(torch.tensor([ids]), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        for k, a in acts.items():
            group = expect.setdefault(e["group"], {})
            group[k] = group.get(k, 0) + (a.double() ** 2).sum(0)
    for g in ("white", "black"):
        for k, v in expect[g].items():
            torch.testing.assert_close(got[g][k], v, rtol=1e-9, atol=1e-9, msg=f"{g}/{k}")
