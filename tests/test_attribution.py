"""Contrastive attribution patching against independent references on a tiny float64 model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from biasprune.models.architectures import resolve_units
from biasprune.scoring.contrastive import aligned_suffix_len, build_pair_batch, contrastive_batch


def make_pairs(n: int, vocab: int, seed: int = 0):
    """(target prompt, reference prompt, response) triples: a shared prefix, a name of 1-3 tokens, a shared tail."""
    g = torch.Generator().manual_seed(seed)

    def rand(k):
        return torch.randint(1, vocab, (k,), generator=g).tolist()

    pairs = []
    for _ in range(n):
        prefix, tail, y = rand(int(torch.randint(2, 6, (1,), generator=g))), rand(3), rand(int(torch.randint(1, 5, (1,), generator=g)))
        name_t, name_r = rand(int(torch.randint(1, 4, (1,), generator=g))), rand(int(torch.randint(1, 4, (1,), generator=g)))
        name_r[-1] = (name_t[-1] % (vocab - 1)) + 1  # the names' last tokens differ: the suffix is the tail and y
        pairs.append((prefix + name_t + tail, prefix + name_r + tail, y))
    return pairs


def log_p(model, ids: list[int], n_resp: int, hooks=()) -> torch.Tensor:
    """m = sum of log p(response tokens), from the full logits of one unpadded sequence."""
    handles = [register(fn) for register, fn in hooks]
    try:
        logits = model(torch.tensor([ids]), use_cache=False).logits[0].double()
    finally:
        for h in handles:
            h.remove()
    logp = F.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return logp[-n_resp:].sum()


def activations(model, layout, ids: list[int]) -> dict[str, torch.Tensor]:
    acts, handles = {}, []
    for u in layout.neurons:
        handles.append(u.module.register_forward_hook(lambda m, a, o, k=f"neuron/{u.path}": acts.__setitem__(k, o[0].detach())))
    for h in layout.heads:
        handles.append(h.o_proj.register_forward_pre_hook(lambda m, a, k=f"head/{h.path}": acts.__setitem__(k, a[0][0].detach())))
    try:
        with torch.no_grad():
            model(torch.tensor([ids]), use_cache=False)
    finally:
        for hd in handles:
            hd.remove()
    return acts


def deltas(model, layout, pair, suffix):
    """(a_r - a_t) at the target's positions: nonzero only on the last ``suffix`` positions, aligned from the end."""
    tp, rp, y = pair
    t, r = tp + y, rp + y
    a_t, a_r = activations(model, layout, t), activations(model, layout, r)
    out = {}
    for k in a_t:
        d = torch.zeros_like(a_t[k])
        if suffix:
            d[len(t) - suffix :] = a_r[k][len(r) - suffix :] - a_t[k][len(t) - suffix :]
        out[k] = d
    return t, out


def directional_derivatives(model, layout, pair, suffix):
    """d/d eps_c m(a_t + eps_c (a_r - a_t)) at eps = 0 for every unit c of every group: autograd w.r.t. eps."""
    t, delta = deltas(model, layout, pair, suffix)
    n_resp = len(pair[2])
    out = {}
    for u in layout.neurons:
        key = f"neuron/{u.path}"
        eps = torch.zeros(u.size, dtype=torch.float64, requires_grad=True)
        m = log_p(model, t, n_resp, [(u.module.register_forward_hook, lambda mod, a, o, d=delta[key], e=eps: o + e * d)])
        out[key] = torch.autograd.grad(m, eps)[0]
    for h in layout.heads:
        key = f"head/{h.path}"
        eps = torch.zeros(h.n_heads, dtype=torch.float64, requires_grad=True)

        def patch(mod, args, d=delta[key], e=eps, h=h):
            return (args[0] + (e[:, None] * d.view(-1, h.n_heads, h.head_dim)).reshape(d.shape),)

        m = log_p(model, t, n_resp, [(h.o_proj.register_forward_pre_hook, patch)])
        out[key] = torch.autograd.grad(m, eps)[0]
    return out


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama", dtype=torch.float64, seed=4)
    layout = resolve_units(model)
    pairs = make_pairs(4, model.config.vocab_size, seed=1)
    return model, layout, pairs


def test_estimate_is_the_directional_derivative(setup):
    model, layout, pairs = setup
    batch = build_pair_batch(pairs)
    signed = contrastive_batch(model, layout, **batch, absolute=False).scores
    absolute = contrastive_batch(model, layout, **batch).scores
    for b, pair in enumerate(pairs):
        ref = directional_derivatives(model, layout, pair, int(batch["suffix_len"][b]))
        assert set(ref) == set(signed)
        for k in ref:
            torch.testing.assert_close(signed[k][b], ref[k], rtol=1e-7, atol=1e-10, msg=k)
            torch.testing.assert_close(absolute[k][b], ref[k].abs(), rtol=1e-7, atol=1e-10, msg=k)
        assert max(float(ref[k].abs().max()) for k in ref) > 1e-3  # the check is not vacuous


def full_precision_norms(model) -> None:
    """RMSNorm in the model's own dtype (transformers computes it in float32, which adds ~1e-8 noise to m)."""
    for mod in model.modules():
        if type(mod).__name__.endswith("RMSNorm"):

            def forward(x, mod=mod):
                return mod.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon))

            mod.forward = forward


def test_estimate_matches_finite_differences(setup):
    """Central differences of m along (a_r - a_t) for single units, with no autograd at all.

    Units of the last layer's MLP and heads: no attention softmax (float32 in transformers) lies downstream,
    so with float64 norms m is exact to ~1e-14 and a small step is accurate.
    """
    _, _, pairs = setup
    model = tiny_model("llama", dtype=torch.float64, seed=4)
    full_precision_norms(model)
    layout = resolve_units(model)
    batch = build_pair_batch(pairs[:1])
    signed = contrastive_batch(model, layout, **batch, absolute=False).scores
    t, delta = deltas(model, layout, pairs[0], int(batch["suffix_len"][0]))
    n_resp, h_step = len(pairs[0][2]), 1e-4
    checks = [(layout.neurons[i], c) for i, c in ((9, 3), (10, 10), (11, 7))] + [(layout.heads[1], 2), (layout.heads[1], 0)]
    assert [layout.neurons[i].kind for i in (9, 10, 11)] == ["gate_proj", "up_proj", "down_proj"]
    assert all(u.layer == 1 for u, _ in checks)
    for unit, c in checks:
        if hasattr(unit, "o_proj"):
            key, D = f"head/{unit.path}", unit.head_dim
            d = torch.zeros_like(delta[key])
            d[:, c * D : (c + 1) * D] = delta[key][:, c * D : (c + 1) * D]

            def at(eps, d=d, mod=unit.o_proj):
                return log_p(model, t, n_resp, [(mod.register_forward_pre_hook, lambda m, a: (a[0] + eps * d,))])
        else:
            key = f"neuron/{unit.path}"
            d = torch.zeros_like(delta[key])
            d[:, c] = delta[key][:, c]

            def at(eps, d=d, mod=unit.module):
                return log_p(model, t, n_resp, [(mod.register_forward_hook, lambda m, a, o: o + eps * d)])

        with torch.no_grad():
            fd = (at(h_step) - at(-h_step)) / (2 * h_step)
        torch.testing.assert_close(signed[key][0, c], fd, rtol=1e-6, atol=1e-11, msg=key)
        assert abs(float(fd)) > 1e-7  # not vacuous


def test_identical_names_score_zero(setup):
    model, layout, pairs = setup
    tp, _, y = pairs[0]
    batch = build_pair_batch([(tp, tp, y)])
    assert int(batch["suffix_len"][0]) == 0  # identical sequences: nothing differs, nothing is aligned
    batch["suffix_len"][0] = len(y) + 3  # align the tail and y anyway: the activations are equal
    out = contrastive_batch(model, layout, **batch).scores
    assert all(float(v.abs().max()) < 1e-12 for v in out.values())


def test_padding_never_contributes(setup):
    model, layout, pairs = setup
    batched = contrastive_batch(model, layout, **build_pair_batch(pairs, pad_id=7)).scores
    for b, pair in enumerate(pairs):
        single = contrastive_batch(model, layout, **build_pair_batch([pair])).scores
        for k in single:
            torch.testing.assert_close(batched[k][b], single[k][0], rtol=1e-9, atol=1e-12, msg=k)


def test_heads_match_an_explicit_per_head_sum(setup):
    """retain_grad on the o_proj input of the target run, then sum (a_r - a_t) * g head by head in a loop."""
    model, layout, pairs = setup
    batch = build_pair_batch(pairs[1:2])
    ours = contrastive_batch(model, layout, **batch, neurons=False).scores
    assert all(k.startswith("head/") for k in ours)
    t, delta = deltas(model, layout, pairs[1], int(batch["suffix_len"][0]))
    kept, handles = {}, []

    def keep(mod, args, k):
        args[0].retain_grad()
        kept[k] = args[0]

    for h in layout.heads:
        handles.append(h.o_proj.register_forward_pre_hook(lambda mod, args, k=f"head/{h.path}": keep(mod, args, k)))
    try:
        ids = torch.tensor([t])
        emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logp = F.log_softmax(model(inputs_embeds=emb, use_cache=False).logits[0, :-1].double(), -1)
        m = logp.gather(1, ids[0, 1:, None])[-len(pairs[1][2]) :].sum()
        m.backward()
    finally:
        for hd in handles:
            hd.remove()
    for k, a in kept.items():
        g = a.grad
        h = layout.head(k[5:])
        expect = torch.zeros(h.n_heads, dtype=torch.float64)
        for head in range(h.n_heads):
            for pos in range(len(t)):
                for d in range(head * h.head_dim, (head + 1) * h.head_dim):
                    expect[head] += delta[k][pos, d] * g[0, pos, d]
        torch.testing.assert_close(ours[k][0], expect.abs(), rtol=1e-8, atol=1e-12, msg=k)
        assert float(expect.abs().max()) > 1e-6  # not vacuous


def test_no_grad_caller_train_mode_and_no_parameter_grad(setup):
    model, layout, pairs = setup
    batch = build_pair_batch(pairs[:2])
    plain = contrastive_batch(model, layout, **batch).scores
    model.train()
    try:
        with torch.no_grad():
            inside = contrastive_batch(model, layout, **batch).scores
        assert model.training and all(m.training for m in model.modules())  # the caller's mode comes back
    finally:
        model.eval()
    for k in plain:
        torch.testing.assert_close(inside[k], plain[k], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())
    assert all(not p.requires_grad for p in model.parameters())


def test_no_hook_remains_after_an_exception(setup):
    model, layout, pairs = setup

    class Boom(RuntimeError):
        pass

    def explode(module, args, output):
        raise Boom("inside the target run")

    batch = build_pair_batch(pairs[:2])
    handle = layout.neurons[2].module.register_forward_hook(explode)
    try:
        with pytest.raises(Boom, match="inside the target run"):
            contrastive_batch(model, layout, **batch)
    finally:
        handle.remove()
    assert [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks] == []
    assert contrastive_batch(model, layout, **batch).scores


@pytest.mark.parametrize(
    "t, r, expect",
    [([1, 2, 3, 9, 9], [1, 2, 4, 4, 9, 9], 2), ([1, 2, 3], [1, 2, 3], 0), ([5, 1, 2], [6, 7, 1, 2], 2), ([1, 1, 1], [1, 1], 0)],
)
def test_aligned_suffix_len(t, r, expect):
    assert aligned_suffix_len(t, r) == expect


def test_bad_inputs(setup):
    model, layout, pairs = setup
    good = build_pair_batch(pairs[:2])

    def variant(**changes):
        return {**{k: v.clone() for k, v in good.items()}, **changes}

    bad_pad = variant()
    bad_pad["target_attn"][0, 0] = 0
    with pytest.raises(ValueError, match="target_attn is not right-padded"):
        contrastive_batch(model, layout, **bad_pad)
    with pytest.raises(ValueError, match=r"suffix_len \[99, .*\] must lie in \[0, min"):
        contrastive_batch(model, layout, **variant(suffix_len=torch.tensor([99, 1])))
    with pytest.raises(ValueError, match="response_mask_target marks tokens outside the aligned suffix"):
        contrastive_batch(model, layout, **variant(suffix_len=torch.tensor([0, 0])))
    wrong = variant()
    L = int(wrong["reference_attn"][1].sum())
    wrong["reference_ids"][1, L - 1] += 1
    with pytest.raises(ValueError, match="pair 1: the last .* tokens differ between target and reference"):
        contrastive_batch(model, layout, **wrong)
    with pytest.raises(ValueError, match="pair 0: the response has no tokens"):
        build_pair_batch([([1, 2], [1, 3], [])])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference mode is on .*inference_mode=False"):
        contrastive_batch(model, layout, **good)
