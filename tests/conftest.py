"""Shared fixtures: tiny random models built from configs (never downloaded), CPU only."""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import transformers

TINY = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
ARCHS = {
    "llama": lambda: transformers.LlamaConfig(**TINY),
    "mistral": lambda: transformers.MistralConfig(**TINY),
    "qwen2": lambda: transformers.Qwen2Config(**TINY),
    "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=8),
    "gemma": lambda: transformers.GemmaConfig(**TINY, head_dim=8),
    "gemma2": lambda: transformers.Gemma2Config(**TINY, head_dim=8),
}


def tiny_model(arch: str = "llama", dtype: torch.dtype = torch.float64, seed: int = 0, **overrides):
    """A random tiny causal LM in eval mode with frozen weights."""
    config = ARCHS[arch]()
    for k, v in overrides.items():
        setattr(config, k, v)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    model.requires_grad_(False)
    return model


def random_batch(n: int, vocab: int, seed: int = 0, min_len: int = 6, max_len: int = 14):
    """Right-padded token batch with a prompt part and a response part per row."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(min_len, max_len + 1, (n,), generator=g)
    T = int(lens.max())
    ids = torch.zeros(n, T, dtype=torch.long)
    attn = torch.zeros(n, T, dtype=torch.long)
    resp = torch.zeros(n, T, dtype=torch.long)
    for i, L in enumerate(lens.tolist()):
        ids[i, :L] = torch.randint(1, vocab, (L,), generator=g)
        attn[i, :L] = 1
        p = int(torch.randint(2, L - 1, (1,), generator=g))
        resp[i, p:L] = 1
    return ids, attn, resp


@pytest.fixture(scope="session")
def tokenizer_dir():
    """The embedded model's tokenizer (real chat template), converted once into the test cache."""
    from biasprune.models.loading import DEFAULT_MODEL, resolve_model_path

    return resolve_model_path(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
    """A tiny random Llama with the embedded model's tokenizer, saved as a local HF checkpoint."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model("llama", dtype=torch.float32, vocab_size=len(tok), seed=1)
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    # Random weights rarely emit digits; make digit tokens (and the end of turn) likely, so that sampled
    # answers parse to numbers and the evaluation path sees real values.
    with torch.no_grad():
        favoured = tok.convert_tokens_to_ids(list("0123456789")) + [tok.eos_token_id]
        model.lm_head.weight.mul_(0.01)
        model.lm_head.weight[favoured] *= 5000
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
