"""The layer-wise causal trace against an explicit two-run computation, pair by pair and layer by layer, and the
layers it points to and a mask's share in them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from test_causal import make_pairs

from biasprune.localize.trace import STAGES, causal_trace, layer_share, pointed_layers, stage_modules
from biasprune.models.architectures import resolve_units


def lp_answer(model, ids: list[int], n: int, module=None, replace=None) -> float:
    """lp of the last n tokens of one unpadded sequence; ``replace(output) -> output`` patches ``module``."""
    handle = module.register_forward_hook(lambda m, a, out: replace(out)) if module is not None else None
    try:
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    finally:
        if handle is not None:
            handle.remove()
    L = len(ids)
    return sum(float(logp[L - n - 1 + j, ids[L - n + j]]) for j in range(n))


def explicit_trace(model, pairs):
    """Two runs per (pair, answer, stage, layer): capture the reference's stage output, patch it into the target."""
    mods = stage_modules(model)
    n_layers = len(mods["resid"])
    effect = {s: [0.0] * n_layers for s in STAGES}
    change = {s: [0.0] * n_layers for s in STAGES}
    total = 0.0
    for p in pairs:
        answers = (p.target_answer, p.reference_answer)
        base = [lp_answer(model, list(p.target + a), len(a)) for a in answers]
        ref = [lp_answer(model, list(p.reference + a), len(a)) for a in answers]
        total += (base[0] - base[1]) - (ref[0] - ref[1])
        for s in STAGES:
            for L in range(n_layers):
                patched = []
                for a in answers:
                    t, r = list(p.target + a), list(p.reference + a)
                    # aligned suffix: common tail, not reaching into the common head
                    head = next(i for i in range(min(len(t), len(r)) + 1) if i == min(len(t), len(r)) or t[i] != r[i])
                    k = 0
                    while k < min(len(t), len(r)) - head and t[-1 - k] == r[-1 - k]:
                        k += 1
                    seen = {}

                    def grab(out, seen=seen):
                        seen["x"] = (out[0] if isinstance(out, tuple) else out).clone()
                        return out

                    lp_answer(model, r, len(a), mods[s][L], grab)

                    def put(out, k=k, seen=seen, t=t, r=r):
                        x = (out[0] if isinstance(out, tuple) else out).clone()
                        x[0, len(t) - k :] = seen["x"][0, len(r) - k :]
                        return (x, *out[1:]) if isinstance(out, tuple) else x

                    patched.append(lp_answer(model, t, len(a), mods[s][L], put))
                effect[s][L] += (base[0] - base[1]) - (patched[0] - patched[1])
                change[s][L] += patched[0] - base[0]
    n = len(pairs)
    return ({s: torch.tensor(v, dtype=torch.float64) / n for s, v in effect.items()},
            {s: torch.tensor(v, dtype=torch.float64) / n for s, v in change.items()}, total / n)  # fmt: skip


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_trace_equals_the_explicit_two_run_computation(arch):
    model = tiny_model(arch, dtype=torch.float64, seed=4)
    pairs = make_pairs(4, seed=2)
    got = causal_trace(model, pairs, batch_size=3)  # batches of pairs, padded
    effect, change, total = explicit_trace(model, pairs)
    assert got.total == pytest.approx(total, abs=1e-8) and got.n_pairs == 4
    for s in STAGES:
        torch.testing.assert_close(got.effect[s], effect[s], rtol=0, atol=1e-8)
        torch.testing.assert_close(got.answer_change[s], change[s], rtol=0, atol=1e-8)
    # the last layer's residual stream at every aligned position carries the whole swap
    assert float(got.share("resid")[-1]) == pytest.approx(1.0, abs=1e-8)
    assert all(float(v.abs().max()) > 1e-6 for v in got.effect.values())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_trace_errors():
    model = tiny_model("llama", dtype=torch.float64)
    with pytest.raises(ValueError, match=r"stages=\['embed'\] is not valid; valid choices: \['resid', 'attn', 'mlp'\]"):
        causal_trace(model, make_pairs(1), stages=["embed"])
    with pytest.raises(ValueError, match="no pairs"):
        causal_trace(model, [])


def _trace(attn, mlp, total=1.0):
    from biasprune.localize.trace import CausalTrace

    t = torch.tensor
    return CausalTrace({"attn": t(attn, dtype=torch.float64), "mlp": t(mlp, dtype=torch.float64)}, {}, total, 1)


def test_pointed_layers_known_answers():
    tr = _trace([0.05, 0.6, 0.0, 0.3, -0.4], [0.0, 0.0, 0.1, 0.0, 0.0])
    assert pointed_layers(tr, ("attn",), share=0.8) == [1, 3]  # 0.6 + 0.3 of 0.95 >= 0.76; 0.6 alone is not
    assert pointed_layers(tr, ("attn",), share=0.5) == [1]
    assert pointed_layers(tr, ("attn", "mlp"), share=0.8) == [1, 2, 3]
    flipped = _trace([-0.05, -0.6, 0.0, -0.3, 0.4], [0.0] * 5, total=-1.0)  # a negative gap: effects count by sign
    assert pointed_layers(flipped, ("attn",), share=0.8) == [1, 3]
    assert pointed_layers(_trace([0.0] * 3, [-1.0] * 3), share=0.8) == []
    with pytest.raises(KeyError, match="stage 'resid' is not in the trace"):
        pointed_layers(tr, ("resid",))
    with pytest.raises(ValueError, match="share=0 must lie in"):
        pointed_layers(tr, share=0)


def test_layer_share():
    model = tiny_model("llama", dtype=torch.float64, num_hidden_layers=3)
    layout = resolve_units(model)
    masks = {"head/model.layers.0.self_attn": torch.tensor([1, 0, 0, 1], dtype=torch.uint8),
             "head/model.layers.2.self_attn": torch.tensor([True, False, False, False]),
             "neuron/model.layers.1.mlp.up_proj": torch.ones(48, dtype=torch.uint8)}  # fmt: skip
    s = layer_share(masks, layout, [0])
    assert (s.n_in, s.n_pruned, s.share, s.downstream) == (2, 3, pytest.approx(2 / 3), False)
    s = layer_share(masks, layout, [1, 2])
    assert (s.n_in, s.share, s.downstream) == (1, pytest.approx(1 / 3), True)
    assert math.isnan(layer_share({}, layout, [0]).share)
    with pytest.raises(KeyError, match="names no unit group"):
        layer_share({"head/x": torch.ones(4, dtype=torch.bool)}, layout, [0])
