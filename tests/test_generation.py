"""Batched generation against Hugging Face generate, seeded determinism, exact sampling."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM, AutoTokenizer

from biasprune.generation import GenerationConfig, _next_tokens, generate


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tok


def prompts(tok, n=5):
    users = ["hi", "What is the price of a car for Jamal Washington?", "ok then", "Estimate a number for Todd Becker please", "x"]
    return [tok.apply_chat_template([{"role": "user", "content": u}], tokenize=False, add_generation_prompt=True) for u in users[:n]]


def test_greedy_matches_hf_generate_with_left_padding(model_tok):
    model, tok = model_tok
    ps = prompts(tok)
    ours = generate(model, tok, ps, num_samples=1, temperature=0.0, max_new_tokens=8, batch_size=5)
    for p, (text,) in zip(ps, ours):
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        ref = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        assert text == tok.decode(ref[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_sampling_is_seeded_and_shaped(model_tok):
    model, tok = model_tok
    ps = prompts(tok, 3)
    a = generate(model, tok, ps, num_samples=4, temperature=1.0, max_new_tokens=6, seed=7)
    b = generate(model, tok, ps, num_samples=4, temperature=1.0, max_new_tokens=6, seed=7)
    c = generate(model, tok, ps, num_samples=4, temperature=1.0, max_new_tokens=6, seed=8)
    assert a == b and a != c
    assert [len(x) for x in a] == [4, 4, 4]


def test_lockstep_gives_the_same_answers(model_tok):
    model, tok = model_tok
    ps = prompts(tok, 3)
    a = generate(model, tok, ps, num_samples=3, temperature=1.0, max_new_tokens=6, seed=1)
    b = generate(model, tok, ps, num_samples=3, temperature=1.0, max_new_tokens=6, seed=1, lockstep=True)
    assert a == b


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_next_token_draws_follow_the_distribution(temperature, top_p):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:  # reference nucleus: smallest prefix of the sorted probabilities reaching top_p
        order = probs.argsort(descending=True)
        keep = (probs[order].cumsum(0) - probs[order]) < top_p
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[order[keep]] = True
        probs = torch.where(mask, probs, 0.0)
        probs = probs / probs.sum()
    n = 60_000
    gen = torch.Generator().manual_seed(0)
    draws = _next_tokens(logits.repeat(n, 1), temperature, top_p, gen)
    counts = torch.bincount(draws, minlength=6).double()
    nz = probs > 0
    assert counts[~nz].sum() == 0
    expected = probs[nz].double() / probs[nz].double().sum() * counts.sum()
    assert chisquare(counts[nz].numpy(), expected.numpy()).pvalue > 1e-3


def test_generation_config_errors():
    with pytest.raises(ValueError, match="generation.samples must be >= 1, got 0"):
        GenerationConfig(samples=0)
    with pytest.raises(ValueError, match=r"generation.top_p must be in \(0, 1\], got 1.5"):
        GenerationConfig(top_p=1.5)
    with pytest.raises(ValueError, match="generation.temperature must be >= 0"):
        GenerationConfig(temperature=-1)
