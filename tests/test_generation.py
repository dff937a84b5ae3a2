"""Generation: keyed random streams, exact sampling, the eager and static decoders against each other and HF."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import ARCHS, tiny_model
from scipy.stats import chi2_contingency, chisquare, ks_2samp, kstest
from transformers import AutoModelForCausalLM, AutoTokenizer

from biasprune.answers.decoding import decode_static
from biasprune.answers.generation import GenerationConfig, decode_eager, generate, resolve_decoder
from biasprune.answers.prefix import PromptBatch, common_prefix_length
from biasprune.answers.streams import draw_tokens, keyed_uniforms

USERS = [
    "hi",
    "What is the price of a car for Jamal Washington?",
    "ok then",
    "Estimate a number for Todd Becker please",
    "x",
    "How many hours of piano should Tanisha Washington budget?",
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model32(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def model64(tiny_model_dir):
    # sdpa: transformers' eager attention gives NaN on left-padded rows in float64 (its mask overflows)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64, attn_implementation="sdpa").eval()


def chat(tok, users=USERS):
    return [
        tok.apply_chat_template([{"role": "user", "content": u}], tokenize=False, add_generation_prompt=True)
        for u in users
    ]


def sdpa_tiny(arch="llama", dtype=torch.float64, **kw):
    model = tiny_model(arch, dtype=dtype, **kw)
    model.config._attn_implementation = "sdpa"
    return model


# ------------------------------------------------------------------------------------------- random streams


def splitmix_reference(seed, key, j, t):
    """The module docstring's formula in plain Python integers."""
    mask = (1 << 64) - 1

    def mix(x):
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    h = int.from_bytes(hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()[:8], "little")
    s = mix(h ^ mix(j + 1))
    return (mix((s + (t + 1) * 0x9E3779B97F4A7C15) & mask) >> 11) * 2.0**-53


def test_keyed_uniforms_follow_the_documented_formula():
    u = keyed_uniforms(7, ["a", "purchase/car/Jamal Washington"], 3, 5)
    assert u.shape == (6, 5) and u.dtype == np.float64
    for i, key in enumerate(["a", "purchase/car/Jamal Washington"]):
        for j in range(3):
            for t in range(5):
                assert u[i * 3 + j, t] == splitmix_reference(7, key, j, t)


def test_keyed_uniforms_depend_only_on_seed_key_answer_and_step():
    full = keyed_uniforms(0, ["x", "y", "z"], 4, 10)
    # fewer steps, fewer answers, other keys around, another order: the same numbers
    assert np.array_equal(keyed_uniforms(0, ["y"], 2, 6), full[4:6, :6])
    assert np.array_equal(keyed_uniforms(0, ["z", "x"], 4, 10), np.concatenate([full[8:], full[:4]]))
    assert not np.array_equal(keyed_uniforms(1, ["x"], 4, 10), full[:4])
    big = keyed_uniforms(3, [f"k{i}" for i in range(200)], 10, 50).ravel()
    assert kstest(big, "uniform").pvalue > 1e-3
    assert len(np.unique(big)) == big.size


# ------------------------------------------------------------------------------------------------ the draw


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_draws_follow_the_distribution(temperature, top_p):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:  # reference nucleus: smallest prefix of the sorted probabilities reaching top_p
        order = probs.argsort(descending=True)
        keep = (probs[order].cumsum(0) - probs[order]) < top_p
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[order[keep]] = True
        probs = torch.where(mask, probs, 0.0)
    n = 60_000
    u = torch.from_numpy(keyed_uniforms(0, ["d"], n, 1)[:, 0])
    counts = torch.bincount(draw_tokens(logits.repeat(n, 1), temperature, top_p, u), minlength=6).double()
    nz = probs > 0
    assert counts[~nz].sum() == 0
    expected = probs[nz].double() / probs[nz].double().sum() * counts.sum()
    assert chisquare(counts[nz].numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("vocab", [6, 256, 257, 4096])
def test_draw_is_the_inverse_cdf_of_a_numpy_reference(vocab):
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(300, vocab, generator=g, dtype=torch.float64) * 3
    logits[:, ::3] = -float("inf")  # zero-probability tokens must never be drawn
    u = torch.rand(300, generator=g, dtype=torch.float64)
    u[:2] = torch.tensor([0.0, 1 - 2**-53])
    for temperature, top_p in ((1.0, 1.0), (0.6, 0.9)):
        p = torch.softmax((logits / temperature).float(), -1).double().numpy()
        if top_p < 1:
            order = np.argsort(-p, axis=1, kind="stable")
            sp = np.take_along_axis(p, order, 1)
            keep = np.zeros_like(p, dtype=bool)
            np.put_along_axis(keep, order, (np.cumsum(sp, 1) - sp) < top_p, 1)
            p = np.where(keep, p, 0.0)
        cdf = np.cumsum(p, 1)
        last = [int(np.flatnonzero(p[r])[-1]) for r in range(len(u))]  # u * total may round up to the total
        ref = [min(np.searchsorted(cdf[r], u[r].item() * cdf[r, -1], side="right"), last[r]) for r in range(len(u))]
        got = draw_tokens(logits, temperature, top_p, u).numpy()
        assert got.tolist() == ref
        assert (p[np.arange(len(u)), got] > 0).all()


def test_greedy_draw_is_argmax():
    logits = torch.randn(4, 10)
    assert torch.equal(draw_tokens(logits, 0.0, 0.5, None), logits.argmax(-1))


# ------------------------------------------------------------------------------ answers vs how work is cut


@pytest.mark.parametrize("decoder", ["eager", "static"])
def test_greedy_matches_hf_generate_with_left_padding(model32, tok, decoder):
    ps = chat(tok)[:5]
    ours = generate(model32, tok, ps, num_samples=1, temperature=0.0, max_new_tokens=8, batch_size=5, decoder=decoder)
    for p, (text,) in zip(ps, ours):
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        ref = model32.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        assert text == tok.decode(ref[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("decoder", ["eager", "static"])
def test_answers_do_not_depend_on_batching_order_or_company(model64, tok, decoder):
    ps = chat(tok)
    keys = [f"purchase/car/name{i}" for i in range(len(ps))]
    kw = dict(num_samples=4, temperature=1.0, max_new_tokens=8, seed=3, keys=keys, decoder=decoder)
    ref = generate(model64, tok, ps, batch_size=len(ps), **kw)
    assert [len(a) for a in ref] == [4] * len(ps)
    assert len({a for answers in ref for a in answers}) > len(ps)  # sampled, not all the same
    for bs in (1, 3):
        assert generate(model64, tok, ps, batch_size=bs, **kw) == ref
    perm = [4, 2, 0, 5, 1, 3]
    shuffled = generate(model64, tok, [ps[i] for i in perm], batch_size=4, **kw | {"keys": [keys[i] for i in perm]})
    assert shuffled == [ref[i] for i in perm]
    alone = generate(model64, tok, ps[3:4], batch_size=8, **kw | {"keys": keys[3:4]})
    assert alone == ref[3:4]
    halves = generate(model64, tok, ps[:3], **kw | {"keys": keys[:3]}) + generate(
        model64, tok, ps[3:], **kw | {"keys": keys[3:]}
    )
    assert halves == ref  # e.g. two processes each answering half of the prompts


def test_keys_name_the_streams(model64, tok):
    ps = chat(tok)[:3]
    kw = dict(num_samples=3, temperature=1.0, max_new_tokens=8, seed=0)
    a = generate(model64, tok, ps, keys=["a", "b", "c"], **kw)
    assert generate(model64, tok, ps, keys=["a", "b", "c"], **kw) == a
    assert generate(model64, tok, ps, keys=["a", "b", "d"], **kw)[:2] == a[:2]
    assert generate(model64, tok, ps, keys=["a", "b", "d"], **kw)[2] != a[2]
    assert generate(model64, tok, ps, keys=["a", "b", "c"], **kw | {"seed": 1}) != a
    assert generate(model64, tok, ps, **kw) == generate(model64, tok, ps, keys=ps, **kw)  # default key: the prompt
    same = generate(model64, tok, [ps[0], ps[0]], keys=["k", "k"], **kw)
    assert same[0] == same[1]


def test_lockstep_gives_the_same_answers(model64, tok):
    ps = chat(tok)[:3]
    kw = dict(num_samples=3, temperature=1.0, max_new_tokens=6, seed=1)
    a = generate(model64, tok, ps, **kw)
    assert generate(model64, tok, ps, lockstep=True, **kw) == a
    assert generate(model64, tok, ps, lockstep=True, decoder="static", **kw) == a


# ------------------------------------------------------------------------------------ static against eager


def prompts_with_padding(n, length=9, vocab=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    for i in range(n):
        mask[i, : i % 4] = 0
    return ids, mask


def prompts_with_prefix(n, prefix=6, vocab=96, seed=0, same_length=False):
    """Token lists that share their first ``prefix`` tokens, of different lengths (or all of one length)."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(1, vocab, (prefix,), generator=g).tolist()
    lengths = [4] * n if same_length else [1 + (3 * i) % 7 for i in range(n)]
    return [head + torch.randint(1, vocab, (m,), generator=g).tolist() for m in lengths]


def decode(path, model, tokens, *args, share=True, **kw):
    batch = PromptBatch.from_token_lists(tokens, 0, share)
    return (decode_eager if path == "eager" else decode_static)(model, batch, *args, **kw)


@pytest.mark.parametrize("n_prompts", [1, 3, 8])
@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (1.0, 1.0), (1.0, 0.7)])
@pytest.mark.parametrize("fixed", [False, True])
def test_static_draws_the_eager_tokens(n_prompts, temperature, top_p, fixed):
    model = sdpa_tiny()
    ids, mask = prompts_with_padding(n_prompts)
    k, steps, stops = 5, 16, list(range(10, 22))  # many stop ids: rows finish early, at different steps
    u = torch.from_numpy(keyed_uniforms(3, [str(i) for i in range(n_prompts)], k, steps)) if temperature else None
    eager = decode_eager(model, PromptBatch.from_padded(ids, mask, share=False), k, temperature, top_p, steps, stops, 0, u)
    stats = {}
    batch = PromptBatch.from_padded(ids, mask)
    static = decode_static(model, batch, k, temperature, top_p, steps, stops, 0, u, fixed=fixed, stats=stats)
    assert torch.equal(static, eager)
    lengths = (eager != 0).sum(1)
    if n_prompts == 8:  # the case exercises early stops and dropped rows (greedy: 8 rows, the smallest bucket)
        assert lengths.min() < steps
        assert min(stats["rows"]) < max(stats["rows"]) or (fixed and temperature == 0)
    assert model.config._attn_implementation == "sdpa"  # restored


# Every architecture of conftest.ARCHS; binding sliding windows on Mistral (every layer, padded prompts) and on
# Gemma-2 (every other layer, with its logit soft-capping). Gemma-2 runs transformers' eager attention (the only
# one with soft-capping), which gives NaN on left-padded rows in float64: its prompts share one length.
ARCH_CASES = [(arch, None) for arch in ARCHS] + [("mistral", 3), ("gemma2", 3)]


@pytest.mark.parametrize("arch, window", ARCH_CASES)
def test_shared_prefix_gives_the_tokens_of_whole_prompts(arch, window):
    """Against today's path (each prompt prefilled whole by the model's own attention, its cache repeated for
    its answers), float64: the eager and static decoders with the batch's prefix prefilled once, static with
    exact and fixed shapes and without a shared prefix, draw the same tokens, greedy, at T = 1 and with top-p."""
    model = tiny_model(arch, **({"sliding_window": window} if window else {}))
    if arch != "gemma2":
        model.config._attn_implementation = "sdpa"
    tokens = prompts_with_prefix(5, same_length=arch == "gemma2")
    k, steps, stops = 4, 10, list(range(10, 22))
    u = torch.from_numpy(keyed_uniforms(1, list("abcde"), k, steps))
    for temperature, top_p, uu in ((0.0, 1.0, None), (1.0, 1.0, u), (1.0, 0.7, u)):
        args = (k, temperature, top_p, steps, stops, 0, uu)
        today = decode("eager", model, tokens, *args, share=False)
        if temperature:
            assert len({tuple(r) for r in today.tolist()}) > 5  # sampled answers differ
        stats = {}
        assert torch.equal(decode("static", model, tokens, *args, stats=stats), today)
        assert stats["prefix_len"] == 6
        assert torch.equal(decode("static", model, tokens, *args, fixed=True), today)
        assert torch.equal(decode("static", model, tokens, *args, share=False), today)
        assert torch.equal(decode("eager", model, tokens, *args, stats=stats), today)
        # under a binding window the model's own mask counts cache columns: eager prefills prompts whole
        assert stats["prefix_len"] == (0 if window else 6)


def test_answers_with_one_history_share_a_row():
    """Answers of a prompt that drew the same tokens so far are computed once: greedy answers never fork; sampled
    answers of a sharp model fork as they differ; the tokens are those of today's path either way."""
    model = sdpa_tiny()
    tokens = prompts_with_prefix(3)
    k, steps = 6, 8
    for temperature, sharpen in ((0.0, 1.0), (1.0, 40.0)):
        with torch.no_grad():
            model.lm_head.weight.mul_(sharpen)
        u = torch.from_numpy(keyed_uniforms(0, list("abc"), k, steps)) if temperature else None
        args = (k, temperature, 1.0, steps, [], 0, u)
        today = decode("eager", model, tokens, *args, share=False)
        for fixed in (False, True):
            stats = {}
            assert torch.equal(decode("static", model, tokens, *args, fixed=fixed, stats=stats), today)
            distinct = [len({(i // k, *r[: t + 1]) for i, r in enumerate(today.tolist())}) for t in range(steps - 1)]
            if not fixed:  # exact shapes: one row per distinct history (no row has stopped)
                assert stats["rows"] == distinct
        if temperature == 0:
            assert distinct == [3] * (steps - 1)
        else:
            assert distinct[0] < 3 * k and distinct[-1] > distinct[0]


def test_shared_prefix_keeps_pruning_hooks(model64, tok):
    """Masks are forward hooks: they act on the shared prefix's forward as on every other."""
    ps = chat(tok)
    mlp, attn = model64.model.layers[0].mlp, model64.model.layers[1].self_attn
    hooks = [
        mlp.up_proj.register_forward_hook(lambda m, args, out: out * (torch.arange(out.shape[-1]) % 2)),
        attn.o_proj.register_forward_pre_hook(lambda m, args: (args[0] * (torch.arange(args[0].shape[-1]) < 8),)),
    ]
    kw = dict(num_samples=3, temperature=1.0, max_new_tokens=8, seed=0, batch_size=6)
    try:
        today = generate(model64, tok, ps, decoder="eager", share_prefix=False, **kw)
        stats = {}
        assert generate(model64, tok, ps, decoder="static", stats=stats, **kw) == today
        assert stats["prefix_len"] > 10  # the chat template's system part
        assert generate(model64, tok, ps, decoder="eager", **kw) == today
    finally:
        for h in hooks:
            h.remove()
    assert generate(model64, tok, ps, decoder="static", **kw) != today


def teacher_forced_logprob(model, prompts, answers, k):
    """Mean log-probability of each answer's tokens under ``model``, teacher-forced: answer ``j`` of prompt ``i``
    is row ``i * k + j`` of ``answers`` (all of one length). One forward per prompt, float64."""
    out = []
    for i, prompt in enumerate(prompts):
        ans = answers[i * k : (i + 1) * k]
        ids = torch.cat([torch.tensor(prompt).expand(k, -1), ans], 1)
        logp = torch.log_softmax(model(input_ids=ids).logits[:, len(prompt) - 1 : -1].double(), -1)
        out.append(logp.gather(-1, ans[..., None]).squeeze(-1).mean(1))
    return torch.cat(out).numpy()


def test_float32_answers_follow_the_distribution_of_whole_prompts():
    """float32 rounds differently once the prefix is split off, so tokens may differ; the distribution must not.
    Two-sample tests of the decoding benchmark (docs/benchmarks.md): Kolmogorov-Smirnov on the per-answer mean
    log-probability under the model, chi-square homogeneity of the first and of the last token; static with a
    shared prefix (seed 0) against today's eager path (seed 1). A colder temperature must be told apart."""
    model, ref64 = sdpa_tiny(dtype=torch.float32, seed=2), sdpa_tiny(dtype=torch.float64, seed=2)
    with torch.no_grad():  # a random head gives nearly uniform next tokens: sharpen them so temperature matters
        model.lm_head.weight.mul_(30)
        ref64.lm_head.weight.mul_(30)
    tokens = prompts_with_prefix(24, seed=1)
    k, steps = 16, 6
    keys = [str(i) for i in range(len(tokens))]

    def answers(path, seed, share, temperature=1.0):
        u = torch.from_numpy(keyed_uniforms(seed, keys, k, steps))
        return decode(path, model, tokens, k, temperature, 1.0, steps, [], 0, u, share=share)

    ours, today, cold = answers("static", 0, True), answers("eager", 1, False), answers("eager", 1, False, 0.5)
    with torch.no_grad():
        lp = {name: teacher_forced_logprob(ref64, tokens, a, k) for name, a in (("ours", ours), ("today", today), ("cold", cold))}
    assert ks_2samp(lp["ours"], lp["today"]).pvalue > 1e-3
    assert ks_2samp(lp["cold"], lp["today"]).pvalue < 1e-6
    for col in (0, steps - 1):
        counts = np.stack([np.bincount(a[:, col].numpy() // 6, minlength=16) for a in (ours, today)])
        assert chi2_contingency(counts[:, counts.sum(0) > 0]).pvalue > 1e-3


def test_prompt_batch_splits_the_common_prefix():
    lists = [[5, 6, 7, 8], [5, 6, 7, 9, 10], [5, 6, 1]]
    b = PromptBatch.from_token_lists(lists, pad_id=0)
    assert b.prefix.tolist() == [5, 6] and b.rest.tolist() == [[0, 7, 8], [7, 9, 10], [0, 0, 1]]
    assert b.mask.tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 1]]
    assert b.positions().tolist() == [[2, 2, 3], [2, 3, 4], [2, 2, 2]]
    assert b.last_positions().tolist() == [3, 4, 2] and b.lengths().tolist() == [4, 5, 3]
    # every prompt keeps a token; one prompt or share=False: nothing shared
    assert PromptBatch.from_token_lists([[1, 2], [1, 2, 3]], 0).prefix.tolist() == [1]
    assert PromptBatch.from_token_lists([[1, 2, 3]], 0).prefix_len == 0
    assert PromptBatch.from_token_lists(lists, 0, share=False).rest[1].tolist() == [5, 6, 7, 9, 10]
    ids = torch.tensor([[0, 0, 5, 6, 3], [5, 6, 4, 4, 4]])
    padded = PromptBatch.from_padded(ids, (torch.arange(5) >= torch.tensor([[2], [0]])).long())
    assert padded.prefix.tolist() == [5, 6] and padded.rest.tolist() == [[0, 0, 3], [4, 4, 4]]
    assert common_prefix_length([[1, 2], [1, 3]]) == 1 and common_prefix_length([]) == 0
    with pytest.raises(ValueError, match="PromptBatch: prompt 1 has no tokens"):
        PromptBatch.from_token_lists([[1], []], 0)


def test_static_restores_the_attention_implementation_after_an_error():
    model = sdpa_tiny()

    def fail(module, args, out):
        raise RuntimeError("boom in layer 1")

    model.model.layers[1].register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="boom in layer 1"):
        decode("static", model, prompts_with_prefix(2), 1, 0.0, 1.0, 4, [5], 0, None)
    assert model.config._attn_implementation == "sdpa"


# ------------------------------------------------------------------------------------- choices and errors


def test_decoder_choice_and_fallbacks(tok, model64):
    assert resolve_decoder("auto", torch.device("cpu")) == "static"
    assert resolve_decoder("static", torch.device("cpu"), lockstep=True) == "eager"
    assert resolve_decoder("eager", torch.device("cuda")) == "eager"
    model = sdpa_tiny()
    attn = model.model.layers[1].self_attn
    inner = attn.forward

    def own_attention(*args, **kwargs):  # this layer computes its attention outside the attention interface
        impl, model.config._attn_implementation = model.config._attn_implementation, "sdpa"
        try:
            return inner(*args, **kwargs)
        finally:
            model.config._attn_implementation = impl

    attn.forward = own_attention
    ids = prompts_with_prefix(2)

    class Tok:  # ids as text: enough of a tokenizer for generate
        pad_token_id, eos_token_id = 0, 5

        def __call__(self, texts, **kw):
            return {"input_ids": [ids[int(t)] for t in texts]}

        def decode(self, row, skip_special_tokens=True):
            return " ".join(map(str, row.tolist()))

    kw = dict(num_samples=2, temperature=1.0, max_new_tokens=6, batch_size=2)
    stats = {}
    auto = generate(model, Tok(), ["0", "1"], stats=stats, **kw)
    assert stats["decoder"] == "eager"
    assert auto == generate(model, Tok(), ["0", "1"], decoder="eager", **kw)
    with pytest.raises(ValueError, match=r"decoder='static' cannot run this model: 1 of 2 attention layers went"):
        generate(model, Tok(), ["0", "1"], decoder="static", **kw)
    assert model.config._attn_implementation == "sdpa"


def test_generation_errors(tok, model64):
    with pytest.raises(ValueError, match="generation.samples must be >= 1, got 0"):
        GenerationConfig(samples=0)
    with pytest.raises(ValueError, match=r"generation.top_p must be in \(0, 1\], got 1.5"):
        GenerationConfig(top_p=1.5)
    with pytest.raises(ValueError, match="generation.temperature must be >= 0"):
        GenerationConfig(temperature=-1)
    with pytest.raises(
        ValueError, match=r"generation.decoder='fast' is not valid; valid choices: \['auto', 'eager', 'static'\]"
    ):
        GenerationConfig(decoder="fast")
    assert GenerationConfig().decoder == "auto"
    ps = chat(tok)[:2]
    with pytest.raises(ValueError, match="generate: keys has 1 entries for 2 prompts"):
        generate(model64, tok, ps, keys=["a"])
    with pytest.raises(ValueError, match=r"decoder='cuda' is not valid; valid choices: \['auto', 'eager', 'static'\]"):
        generate(model64, tok, ps, decoder="cuda")
    with pytest.raises(ValueError, match="generate: batch_size must be >= 1, got 0"):
        generate(model64, tok, ps, batch_size=0)
