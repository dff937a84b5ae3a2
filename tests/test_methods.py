"""The selection methods as objectives, against independent references: Wanda by a hand computation from the
weights and explicitly captured inputs, signed attribution patching by finite differences of the patched model,
the causal objective by brute-force ablation (weights zeroed, each sequence run alone)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_batch, tiny_model
from test_attribution import deltas, full_precision_norms, log_p
from test_attribution import make_pairs as make_attribution_pairs
from test_causal import brute_metric, make_pairs

from biasprune.localize.objective import CausalObjective, PairAnswerCollator, PairScores, pair_effects
from biasprune.models.architectures import NEURON_MODULE_CHOICES, resolve_units
from biasprune.pruning.factory import MaskFactory
from biasprune.scoring.contrastive import aligned_suffix_len, build_pair_batch
from biasprune.scoring.objectives import get_objective, selection_inputs
from biasprune.scoring.signed import SignedAttributionObjective, signal_to_noise
from biasprune.scoring.wanda import WandaObjective, wanda_batch


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", dtype=torch.float64)


# -------------------------------------------------------------------------------------------- (b) Wanda
def test_wanda_matches_a_hand_computation(model):
    layout = resolve_units(model, NEURON_MODULE_CHOICES)
    ids, attn, _ = random_batch(3, model.config.vocab_size, seed=3)
    got = wanda_batch(model, layout, ids, attn)
    inputs: dict[str, torch.Tensor] = {}
    handles = [u.module.register_forward_hook(lambda m, a, o, p=u.path: inputs.__setitem__(p, a[0].detach()))
               for u in layout.neurons]  # fmt: skip
    with torch.no_grad():
        model(ids, attention_mask=attn)
    for h in handles:
        h.remove()
    for e in range(3):
        L = int(attn[e].sum())
        for u in layout.neurons:  # s_e(i) = sum_j |W_ij| * sqrt(sum_t x[t, j]^2), loops over i and j
            x, W = inputs[u.path][e, :L], u.module.weight
            for i in (0, u.size // 2, u.size - 1):
                want = sum(abs(float(W[i, j])) * math.sqrt(sum(float(x[t, j]) ** 2 for t in range(L)))
                           for j in range(W.shape[1]))  # fmt: skip
                assert float(got.scores[f"neuron/{u.path}"][e, i]) == pytest.approx(want, rel=1e-9)
        for h in layout.heads:  # s_e(h) = sum over the head's o_proj columns j and all rows i of |W_ij| * ||z_j||
            z = inputs[h.o_proj_path][e, :L] if h.o_proj_path in inputs else None
            assert z is not None, "o_proj is a neuron module here, so its input was captured"
            for k in range(h.n_heads):
                cols = range(k * h.head_dim, (k + 1) * h.head_dim)
                want = sum(abs(float(h.o_proj.weight[i, j])) * math.sqrt(sum(float(z[t, j]) ** 2 for t in range(L)))
                           for j in cols for i in range(h.o_proj.weight.shape[0]))  # fmt: skip
                assert float(got.scores[f"head/{h.path}"][e, k]) == pytest.approx(want, rel=1e-9)


def test_wanda_ignores_padding_and_goes_through_the_rules(model):
    layout = resolve_units(model)
    ids, attn, resp = random_batch(4, model.config.vocab_size, seed=5)
    batch = {"input_ids": ids, "attention_mask": attn, "response_mask": resp}
    both = WandaObjective().score(model, layout, batch, torch.arange(4))
    for e in range(4):  # one row alone, unpadded, scores the same
        L = int(attn[e].sum())
        alone = wanda_batch(model, layout, ids[e : e + 1, :L], attn[e : e + 1, :L])
        for k, v in alone.scores.items():
            torch.testing.assert_close(both.scores[k][e], v[0], rtol=1e-9, atol=1e-12)
    s = {"white": {k: v[:2].sum(0) for k, v in both.scores.items()}, "black": {k: v[2:].sum(0) for k, v in both.scores.items()}}
    t, r, n_t, n_r = selection_inputs(s, ("white", "black"), "relative_difference", {"white": 2, "black": 2})
    masks = MaskFactory(rule="relative_difference").select(t, r, "neuron", 0.5, 0.5, "1%", n_t, n_r)
    assert set(masks) == {k for k in s["black"] if k.startswith("neuron/")}
    assert all(int((m == 0).sum()) == math.ceil(0.01 * m.numel()) for m in masks.values())


# ------------------------------------------------------------------------------- (c) signed attribution
def test_signed_estimates_match_finite_differences():
    """Central differences of m along (a_r − a_t) for single units of the last layer (no float32 softmax downstream,
    norms in float64, so m is exact to ~1e-14), no autograd at all; the squares are the estimates squared."""
    model = tiny_model("llama", dtype=torch.float64, seed=4)
    full_precision_norms(model)
    layout = resolve_units(model, NEURON_MODULE_CHOICES)
    pairs = make_attribution_pairs(3, model.config.vocab_size, seed=1)
    out = SignedAttributionObjective().score(model, layout, build_pair_batch(pairs), torch.arange(3))
    assert not [k for k in out.scores if k.endswith(("down_proj", "o_proj"))]  # residual-stream outputs: not scored
    gate = next(u for u in layout.neurons if u.layer == 1 and u.kind == "gate_proj")
    checked = 0
    for p, pair in enumerate(pairs):
        suffix = aligned_suffix_len(pair[0] + pair[2], pair[1] + pair[2])
        t, delta = deltas(model, layout, pair, suffix)
        for unit, c in ((gate, 3), (gate, 11), (layout.heads[1], 1)):
            if hasattr(unit, "o_proj"):
                key, D = f"head/{unit.path}", unit.head_dim
                d = torch.zeros_like(delta[key])
                d[:, c * D : (c + 1) * D] = delta[key][:, c * D : (c + 1) * D]

                def at(eps, d=d, mod=unit.o_proj, t=t, pair=pair):
                    return log_p(model, t, len(pair[2]), [(mod.register_forward_pre_hook, lambda m, a: (a[0] + eps * d,))])
            else:
                key = f"neuron/{unit.path}"
                d = torch.zeros_like(delta[key])
                d[:, c] = delta[key][:, c]

                def at(eps, d=d, mod=unit.module, t=t, pair=pair):
                    return log_p(model, t, len(pair[2]), [(mod.register_forward_hook, lambda m, a, o: o + eps * d)])

            with torch.no_grad():
                fd = float((at(1e-4) - at(-1e-4)) / 2e-4)
            assert abs(fd) > 1e-7  # not vacuous
            assert float(out.scores[key][p, c]) == pytest.approx(fd, rel=1e-6, abs=1e-10)  # batch of 3: rotary in float32
            assert float(out.scores[f"sq/{key}"][p, c]) == pytest.approx(fd**2, rel=1e-5)
            checked += 1
    assert checked == 9 and torch.equal(out.scores["count"], torch.ones(3, 1, dtype=out.scores["count"].dtype))


def test_signal_to_noise_ranking_against_numpy_and_its_refusals():
    import numpy as np

    est = np.array([[-1.0, 0.5, 2.0, 0.0], [-1.2, -0.5, 2.0, 0.0], [-0.8, 0.1, 2.0, 0.0]])  # pairs x units
    z = signal_to_noise(torch.tensor(est.sum(0)), torch.tensor((est**2).sum(0)), 3)
    want = -est[:, :2].mean(0) / est[:, :2].std(0, ddof=1)
    assert float(z[0]) == pytest.approx(want[0]) and float(z[1]) == pytest.approx(want[1])
    assert float(z[2]) == 0.0 and float(z[3]) == 0.0  # constant estimate (sd 0): no evidence either way
    scores = {"atp": {"neuron/a": torch.tensor(est.sum(0)), "sq/neuron/a": torch.tensor((est**2).sum(0)), "count": torch.tensor([3.0])}}
    t, r, n_t, n_r = selection_inputs(scores, ("white", "black"), "target")
    assert set(t) == {"neuron/a"} and int(t["neuron/a"].argmax()) == 0 and (n_t, n_r) == (None, None)
    with pytest.raises(ValueError, match=r"pruning\.rule='relative_difference' .* atp objective .* use pruning\.rule=target"):
        selection_inputs(scores, ("white", "black"), "relative_difference")
    with pytest.raises(ValueError, match="at least 2 scored pairs"):
        signal_to_noise(torch.ones(2), torch.ones(2), 1)


def test_atp_refuses_a_layout_of_residual_outputs_only(model):
    layout = resolve_units(model, ("down_proj", "o_proj"))
    with pytest.raises(ValueError, match=r"the atp objective scores no unit"):
        SignedAttributionObjective().unit_sizes(layout, neurons=True, heads=False)


# --------------------------------------------------------------------------------------- (d) causal
def test_causal_head_effects_match_brute_force_ablation(model):
    layout = resolve_units(model)
    pairs = make_pairs(3, seed=4)
    effects, gaps = pair_effects(model, layout, pairs, neurons=False, heads=True)
    base = brute_metric(model, layout, pairs)
    assert float(gaps.mean()) == pytest.approx(base, rel=1e-6, abs=1e-9)
    for h in layout.heads:
        key = f"head/{h.path}"
        for i in range(h.n_heads):
            per_pair = [brute_metric(model, layout, [p], {(key, i)}) - brute_metric(model, layout, [p]) for p in pairs]
            for p in range(3):
                assert float(effects[key][p, i]) == pytest.approx(per_pair[p], rel=1e-5, abs=1e-8)


def test_causal_neuron_effects_are_first_order_and_rank_by_gap_reduction():
    """The last layer's gate_proj (no float32 softmax downstream, float64 norms): d_p(u) is the derivative of g_p
    along zeroing, −d/dε g_p(a·(1 + ε)) at ε = 0, by central differences of the brute-force gap."""
    model = tiny_model("llama", dtype=torch.float64, seed=4)
    full_precision_norms(model)
    layout = resolve_units(model, ("gate_proj",))
    pairs = make_pairs(2, seed=8)
    effects, gaps = pair_effects(model, layout, pairs, neurons=True, heads=False)
    unit = layout.neurons[-1]
    key = f"neuron/{unit.path}"
    for i in (0, 5):  # d/dε g(a·(1 − ε)) at ε = 0, by central differences of a scaled channel
        for p, pair in enumerate(pairs):
            def scaled(f, i=i, pair=pair):
                def hook(mod, args, out):
                    out = out.clone()
                    out[..., i] *= f
                    return out

                h = unit.module.register_forward_hook(hook)
                try:
                    return brute_metric(model, layout, [pair])
                finally:
                    h.remove()

            eps = 1e-5
            fd = -(scaled(1 + eps) - scaled(1 - eps)) / (2 * eps)
            assert abs(fd) > 1e-7 and float(effects[key][p, i]) == pytest.approx(fd, rel=1e-6, abs=1e-11)
    obj = CausalObjective()
    sums = {k: v.sum(0) for k, v in effects.items()} | {"gap": gaps.sum()[None], "count": torch.tensor([2.0])}
    r, zero, _, _ = obj.selection_inputs({"causal": sums}, ("white", "black"), "target")
    M = float(gaps.mean())
    assert float(r[key][0]) == pytest.approx(abs(M) - abs(M + float(effects[key][:, 0].mean())))
    with pytest.raises(ValueError, match=r"causal objective .* use pruning\.rule=target"):
        obj.selection_inputs({"causal": sums}, ("white", "black"), "set_difference")


def test_causal_objective_batches_like_the_module_feeds_it(model):
    layout = resolve_units(model)
    pairs = make_pairs(3, seed=2)
    rows = [{"target": list(p.target), "reference": list(p.reference), "target_answer": list(p.target_answer),
             "reference_answer": list(p.reference_answer), "bucket": 0, "index": i, "weight": 1.0}
            for i, p in enumerate(pairs)]  # fmt: skip
    obj = get_objective("causal")
    batch = PairAnswerCollator(0)(rows)
    out = obj.score(model, layout, batch, torch.tensor([0, 2]), neurons=False, heads=True)
    assert isinstance(out, PairScores) and out.scores["count"].shape == (2, 1)
    want, gaps = pair_effects(model, layout, [pairs[0], pairs[2]], neurons=False, heads=True)
    for k, v in want.items():
        torch.testing.assert_close(out.scores[k], v.float(), rtol=1e-5, atol=1e-7)
    assert set(obj.unit_sizes(layout, False, True)) == {f"head/{h.path}" for h in layout.heads} | {"gap", "count"}


# ------------------------------------------------------------------------------------- fit takes the knob
@pytest.mark.parametrize(("objective", "rule", "groups"), [("wanda", "relative_difference", {"white", "black"}),
                                                            ("atp", "target", {"atp"}), ("causal", "target", {"causal"})])
def test_fit_scores_with_each_method_and_the_rules_select_from_its_file(tiny_model_dir, tmp_path, objective, rule, groups):
    """``--model.objective`` runs scoring end to end (data module, accumulator, scores files), and the scores file
    alone gives masks through the same selection machinery (the study's path: groups decide the objective)."""
    from lightning import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger

    from biasprune.answers.answering import TargetConfig
    from biasprune.datamodules import AuditDataModule
    from biasprune.pipeline.module import BiasPruneModule
    from biasprune.scoring.accumulate import sum_scores
    from biasprune.scoring.scorefile import read_scores, read_scores_meta

    module = BiasPruneModule(tiny_model_dir, dtype="float64", objective=objective, targets=TargetConfig(max_new_tokens=4))
    dm = AuditDataModule(scoring=["purchase/car"], evaluation=["purchase/car"], tokenizer=tiny_model_dir, batch_size=6)
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path, name=objective),
                      enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    trainer.fit(module, datamodule=dm)
    per_variation, _ = read_scores(f"{trainer.log_dir}/scores_by_variation.safetensors")
    assert read_scores_meta(f"{trainer.log_dir}/scores.safetensors")["objective"] == module.objective.description
    scores = sum_scores(per_variation)
    assert set(scores) == groups
    t, r, n_t, n_r = selection_inputs(scores, ("white", "black"), rule, read_scores_meta(f"{trainer.log_dir}/scores.safetensors")["n_examples"])
    masks = MaskFactory(rule=rule).select(t, r, "head", 0.5, 0.5, 2, n_t, n_r) | MaskFactory(rule=rule).select(t, r, "neuron", 0.5, 0.5, "1%", n_t, n_r)
    assert masks and sum(int((m == 0).sum()) for m in masks.values()) >= 1
    if objective in ("atp", "causal"):  # residual-stream outputs are not units of either
        assert not [k for k in masks if k.endswith(("down_proj", "o_proj"))]
        assert not [k for k in module.objective.unit_sizes(resolve_units(module.model), True, True) if k.endswith(("down_proj", "o_proj"))]
