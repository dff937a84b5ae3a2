"""The causal ablation search against brute force: every subset of a tiny model's heads ablated by zeroing weights,
log-probabilities computed pair by pair without padding; the first-order estimate against autograd on a unit gate.

Tolerances: float64 throughout, but Llama's rotary angles are computed in float32 (transformers), and a batch shape
changes them by ~1e-7 relative, so batched and one-by-one log-probabilities agree to ~1e-9 (gaps here: ~1e-3)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from biasprune.localize.causal import CausalSearch, causal_search, first_order_effects, greedy_picks
from biasprune.localize.pairs import NamePair, ablate, answer_logprobs, pair_gaps, pair_sequences
from biasprune.models.architectures import resolve_units
from biasprune.pruning.masks import apply_masks
from biasprune.pruning.rules import select_prune


def make_pairs(n: int, vocab: int = 96, seed: int = 0) -> list[NamePair]:
    """Pairs with a shared prefix and suffix around a 'name' of 1-3 tokens that differs; two different answers."""
    g = torch.Generator().manual_seed(seed)

    def toks(k: int) -> tuple[int, ...]:
        return tuple(torch.randint(1, vocab, (k,), generator=g).tolist())

    pairs = []
    for _ in range(n):
        pre, post = toks(int(torch.randint(2, 5, (1,), generator=g))), toks(int(torch.randint(3, 6, (1,), generator=g)))
        name_t, name_r = toks(int(torch.randint(1, 4, (1,), generator=g))), toks(int(torch.randint(1, 4, (1,), generator=g)))
        a_t, a_r = toks(2), toks(int(torch.randint(1, 3, (1,), generator=g)))
        pairs.append(NamePair(pre + name_t + post, pre + name_r + post, a_t, a_r))
    return pairs


def brute_metric(model, layout, pairs, heads=frozenset()) -> float:
    """M with the heads' o_proj input columns zeroed in the weights (restored after), each sequence run alone."""
    saved = {}
    for key, h in heads:
        unit = layout.head(key.removeprefix("head/"))
        cols = slice(h * unit.head_dim, (h + 1) * unit.head_dim)
        saved.setdefault(unit.o_proj_path, unit.o_proj.weight.detach().clone())
        with torch.no_grad():
            unit.o_proj.weight[:, cols] = 0
    try:
        gaps = []
        for p in pairs:
            lp = {}
            for prompt in ("target", "reference"):
                for answer in ("target", "reference"):
                    ids = torch.tensor([p.prompt(prompt) + p.answer(answer)])
                    with torch.no_grad():
                        logp = F.log_softmax(model(ids).logits[0].double(), -1)
                    n, L = len(p.answer(answer)), ids.shape[1]
                    lp[prompt, answer] = sum(float(logp[L - n - 1 + j, ids[0, L - n + j]]) for j in range(n))
            gaps.append(lp["target", "target"] - lp["target", "reference"] - lp["reference", "target"] + lp["reference", "reference"])
    finally:
        mods = dict(model.named_modules())
        with torch.no_grad():
            for path, w in saved.items():
                mods[path].weight.copy_(w)
    return sum(gaps) / len(gaps)


@pytest.fixture(scope="module")
def setup():
    # 2 layers x 3 query heads (one key/value group): 6 heads, 64 subsets
    model = tiny_model("llama", dtype=torch.float64, seed=3, hidden_size=24, num_attention_heads=3, num_key_value_heads=1)
    layout = resolve_units(model)
    return model, layout, make_pairs(2, seed=1)


@pytest.fixture(scope="module")
def every_subset(setup):
    """M of every subset of the 6 heads (64), by brute force."""
    model, layout, pairs = setup
    heads = [(f"head/{h.path}", i) for h in layout.heads for i in range(h.n_heads)]
    return heads, {S: brute_metric(model, layout, pairs, set(S)) for r in range(len(heads) + 1)
                   for S in itertools.combinations(heads, r)}  # fmt: skip


def test_gap_and_ablation_against_weights_and_masks(setup):
    model, layout, pairs = setup
    seqs, n_answer = pair_sequences(pairs)
    lp = answer_logprobs(model, seqs, n_answer, batch_size=7)  # batches that split pairs
    assert float(pair_gaps(lp).mean()) == pytest.approx(brute_metric(model, layout, pairs), abs=1e-7)
    prune = {"head/model.layers.0.self_attn": torch.tensor([True, False, True]),
             "neuron/model.layers.1.mlp.up_proj": torch.arange(48) % 5 == 0}  # fmt: skip
    with torch.no_grad(), ablate(model, layout, prune):
        got = answer_logprobs(model, seqs, n_answer)
    keep = {k: (~v).to(torch.uint8) for k, v in prune.items()}
    with torch.no_grad(), apply_masks(model, layout, keep):
        want = answer_logprobs(model, seqs, n_answer, batch_size=len(seqs))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    heads = {("head/model.layers.0.self_attn", 0), ("head/model.layers.0.self_attn", 2)}
    with torch.no_grad(), ablate(model, layout, {"head/model.layers.0.self_attn": prune["head/model.layers.0.self_attn"]}):
        m = float(pair_gaps(answer_logprobs(model, seqs, n_answer)).mean())
    assert m == pytest.approx(brute_metric(model, layout, pairs, heads), abs=1e-7)
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in model.modules())


def test_ablate_errors_and_hook_removal(setup):
    model, layout, _ = setup
    with pytest.raises(TypeError, match="1-d bool masks"):
        with ablate(model, layout, {"head/model.layers.0.self_attn": torch.ones(3, dtype=torch.uint8)}):
            pass
    with pytest.raises(ValueError, match="the mask has 4 units, the module 3 heads"):
        with ablate(model, layout, {"head/model.layers.0.self_attn": torch.ones(4, dtype=torch.bool)}):
            pass
    with pytest.raises(KeyError, match="names no unit group"):
        with ablate(model, layout, {"head/nope": torch.ones(4, dtype=torch.bool)}):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with ablate(model, layout, {"head/model.layers.1.self_attn": torch.ones(3, dtype=torch.bool)}):
            raise RuntimeError("boom")
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in model.modules())


@pytest.mark.parametrize("pool", [None, 4])
def test_greedy_heads_agree_with_every_subset(setup, every_subset, pool):
    model, layout, pairs = setup
    heads, brute = every_subset

    def M(S) -> float:
        return brute[tuple(sorted(S, key=heads.index))]

    res = causal_search(model, layout, pairs, units="heads", budget=5, target_fraction=0.99, pool=pool, batch_size=6)
    m0 = M(())
    assert res.baseline == pytest.approx(m0, abs=1e-7) and m0 != 0
    for key, i in heads:  # every head was ablated alone
        assert float(res.single[key][i]) + m0 == pytest.approx(M([(key, i)]), abs=1e-7)
    pool_units = sorted(heads, key=lambda u: abs(M([u])))[: len(heads) if pool is None else pool]
    picked: list[tuple[str, int]] = []
    current = m0
    for step in res.steps:  # each pick is the best of the pool by brute force, and its M is the subset's
        options = {c: abs(M([*picked, c])) for c in pool_units if c not in picked}
        assert abs(M([*picked, step.unit])) == pytest.approx(min(options.values()), abs=1e-7)
        assert abs(step.metric) < abs(current)
        picked.append(step.unit)
        current = step.metric
        assert step.metric == pytest.approx(M(picked), abs=1e-7)
    assert len(res.steps) >= 2
    left = [c for c in pool_units if c not in picked]
    if res.stopped == "no gain":
        assert all(abs(M([*picked, c])) >= abs(current) - 1e-12 for c in left)
    elif res.stopped == "budget":
        assert len(picked) == 5
    else:
        assert res.stopped == "effect reached" and abs(current) <= 0.01 * abs(m0)
    best_of_size = min(abs(M(S)) for S in itertools.combinations(heads, len(picked)))
    assert best_of_size <= abs(current) + 1e-12  # greedy is not better than the optimum (a sanity check)
    # evaluations: 1 baseline + every head alone + one per remaining pool unit per later step (and the stop check)
    n_pool = len(pool_units)
    later = sum(n_pool - t for t in range(1, len(res.steps) + (res.stopped == "no gain")))
    assert res.evaluations == 1 + len(heads) + later


def test_stop_when_the_effect_is_reached(setup):
    model, layout, pairs = setup
    full = causal_search(model, layout, pairs, units="heads", budget=6, target_fraction=0.99)
    first = abs(full.steps[0].metric) / abs(full.baseline)
    res = causal_search(model, layout, pairs, units="heads", budget=6, target_fraction=1 - first * (1 + 1e-9))
    assert res.stopped == "effect reached" and len(res.steps) == 1
    assert res.remaining() == [pytest.approx(first)]


def test_first_order_effects_equal_the_derivative_of_a_unit_gate(setup):
    """est(u) = −dM/dα at α = 1, where α multiplies u's activation (zeroing u is α = 0)."""
    model, layout, pairs = setup
    keys = ["neuron/model.layers.0.mlp.gate_proj", "neuron/model.layers.1.self_attn.v_proj", "head/model.layers.1.self_attn"]
    est = first_order_effects(model, layout, pairs, keys, batch_size=5)
    mods = dict(model.named_modules())
    for key in keys:
        kind, path = key.split("/", 1)
        n = layout.head(path).n_heads if kind == "head" else layout.neuron(path).size
        alpha = torch.ones(n, dtype=torch.float64, requires_grad=True)
        if kind == "head":
            D = layout.head(path).head_dim
            handle = mods[layout.head(path).o_proj_path].register_forward_pre_hook(
                lambda mod, args, n=n, D=D, alpha=alpha: ((args[0].view(*args[0].shape[:-1], n, D) * alpha[:, None]).reshape(args[0].shape),))
        else:
            handle = mods[path].register_forward_hook(lambda mod, args, out, alpha=alpha: out * alpha)
        try:
            gaps = []
            for p in pairs:  # pair by pair, no padding
                lp = {}
                for prompt in ("target", "reference"):
                    for answer in ("target", "reference"):
                        ids = torch.tensor([p.prompt(prompt) + p.answer(answer)])
                        logp = F.log_softmax(model(ids).logits[0], -1)
                        k, L = len(p.answer(answer)), ids.shape[1]
                        lp[prompt, answer] = sum(logp[L - k - 1 + j, ids[0, L - k + j]] for j in range(k))
                gaps.append(lp["target", "target"] - lp["target", "reference"] - lp["reference", "target"] + lp["reference", "reference"])
            (grad,) = torch.autograd.grad(sum(gaps) / len(gaps), alpha)
        finally:
            handle.remove()
        torch.testing.assert_close(est[key], -grad, rtol=1e-4, atol=1e-8)
        assert float(grad.abs().max()) > 1e-6
    assert all(p.grad is None for p in model.parameters())


def test_neuron_search_with_a_first_order_shortlist(setup):
    model, layout, pairs = setup
    layout_gate = resolve_units(model, ("gate_proj",))
    res = causal_search(model, layout_gate, pairs, units="neurons", budget=3, target_fraction=0.99, shortlist=6, pool=4)
    assert res.gradient_passes == 1 and res.first_order is not None
    sign = 1.0 if res.baseline > 0 else -1.0
    flat = sorted(((k, i) for k, v in res.first_order.items() for i in range(v.numel())),
                  key=lambda u: sign * float(res.first_order[u[0]][u[1]]))  # largest predicted reduction first  # fmt: skip
    shortlisted = flat[:6]
    measured = {(k, i) for k, v in res.single.items() for i in range(v.numel()) if not math.isnan(float(v[i]))}
    assert measured == set(shortlisted) and res.evaluations >= 1 + 6
    # the single ablations against explicit masks
    seqs, n_answer = pair_sequences(pairs)
    for key, i in shortlisted:
        keep = {key: torch.ones(layout_gate.neuron(key.removeprefix("neuron/")).size, dtype=torch.uint8)}
        keep[key][i] = 0
        with torch.no_grad(), apply_masks(model, layout_gate, keep):
            m = float(pair_gaps(answer_logprobs(model, seqs, n_answer)).mean())
        assert float(res.single[key][i]) == pytest.approx(m - res.baseline, abs=1e-7)
    assert {s.unit for s in res.steps} <= set(shortlisted)


def test_scores_feed_the_selection_rules_and_masks(setup):
    model, layout, pairs = setup
    res = causal_search(model, layout, pairs, units="heads", budget=3, target_fraction=0.99)
    scores = res.scores()
    assert set(scores) == {f"head/{h.path}" for h in layout.heads} and all(v.dtype == torch.float32 for v in scores.values())
    values = torch.cat(list(scores.values()))
    assert sorted(values.tolist()) == [float(v) for v in range(1, 7)]  # a strict ranking of all 6 heads
    for k in range(1, len(res.steps) + 1):
        prune = select_prune(scores, {key: torch.zeros_like(v) for key, v in scores.items()}, rule="target", budget=k,
                             scope="global")  # fmt: skip
        assert {(key, i) for key, m in prune.items() for i in m.nonzero().flatten().tolist()} == set(res.selected(k))
        keep = res.keep_masks(k)
        assert sum(int((m == 0).sum()) for m in keep.values()) == k and all(m.dtype == torch.uint8 for m in keep.values())
    # measured units rank by their single reduction of |M| after the picks
    rest = res.ranking()[len(res.steps):]
    gains = [abs(res.baseline) - abs(res.baseline + float(res.single[k][i])) for k, i in rest]
    assert gains == sorted(gains, reverse=True)


def test_search_errors_and_no_gap(setup):
    model, layout, pairs = setup
    with pytest.raises(ValueError, match="units='cells' is not valid; valid choices"):
        causal_search(model, layout, pairs, units="cells")
    with pytest.raises(ValueError, match="budget=0 must be >= 1"):
        causal_search(model, layout, pairs, budget=0)
    with pytest.raises(ValueError, match="shortlist=0 must be >= 1 or None"):
        causal_search(model, layout, pairs, shortlist=0)
    with pytest.raises(ValueError, match="no pairs"):
        causal_search(model, layout, [])
    with pytest.raises(ValueError, match="NamePair.target_answer is empty"):
        NamePair((1, 2), (1, 3), (), (4,))
    same = [NamePair(p.target, p.reference, p.target_answer, p.target_answer) for p in pairs]
    res = causal_search(model, layout, same)
    assert isinstance(res, CausalSearch) and res.baseline == 0 and res.stopped == "no gap" and res.steps == []


def test_greedy_picks_on_a_hand_made_metric():
    """The greedy step on a table of M(S) (hand-computed): a and b carry the same path (picking both does no more
    than one), c is independent; re-measurement after each pick must skip b, and each stop reason must show."""
    a, b, c, d = ("head/x", 0), ("head/x", 1), ("head/y", 0), ("head/y", 1)
    table = {frozenset(): 1.0, frozenset({a}): 0.4, frozenset({b}): 0.45, frozenset({c}): 0.6, frozenset({d}): 1.0,
             frozenset({a, b}): 0.4, frozenset({a, c}): 0.0, frozenset({a, d}): 0.4}
    calls = []

    def metric(chosen):
        calls.append(frozenset(chosen))
        return table[frozenset(chosen)]

    single = {u: table[frozenset({u})] for u in (a, b, c, d)}
    pool = [a, b, c, d]
    steps, stopped = greedy_picks(metric, single, pool, 1.0, budget=3, target_fraction=0.9)
    assert [s.unit for s in steps] == [a, c] and [s.metric for s in steps] == [0.4, 0.0] and stopped == "effect reached"
    assert frozenset({a}) not in calls  # the first step reads the single ablations, it does not re-measure them
    steps, stopped = greedy_picks(metric, single, pool, 1.0, budget=1, target_fraction=0.9)
    assert [s.unit for s in steps] == [a] and stopped == "budget"
    steps, stopped = greedy_picks(metric, single, [a, b, d], 1.0, budget=3, target_fraction=0.9)
    assert [s.unit for s in steps] == [a] and stopped == "no gain"  # after a, neither b nor d lowers |M|
    steps, stopped = greedy_picks(metric, single, [d], 1.0, budget=3, target_fraction=0.9)
    assert steps == [] and stopped == "no gain"
    steps, stopped = greedy_picks(metric, single, [a], 1.0, budget=3, target_fraction=0.9)
    assert [s.unit for s in steps] == [a] and stopped == "no gain"  # the pool is used up
    # equal |M|: the earlier unit of the pool wins, also across signs of M
    tie = {frozenset(): 1.0, frozenset({a}): -0.5, frozenset({b}): 0.5}
    steps, _ = greedy_picks(lambda s: tie[frozenset(s)], {a: -0.5, b: 0.5}, [b, a], 1.0, budget=1, target_fraction=0.9)
    assert [s.unit for s in steps] == [b]
