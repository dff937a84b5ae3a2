"""Unit layout resolved from module paths on tiny random configs of each supported family."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, random_batch, tiny_model

from biasprune.models.architectures import UnsupportedArchitectureError, resolve_units
from biasprune.pruning.masks import apply_masks, harden_masks
from biasprune.scoring.gradxact import score_batch


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_layout_scoring_and_masks(arch):
    model = tiny_model(arch, dtype=torch.float32)
    layout = resolve_units(model)
    assert [u.path for u in layout.neurons[:6]] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.0.mlp.down_proj",
    ]
    assert [h.path for h in layout.heads] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    assert all(h.n_heads == 4 for h in layout.heads)
    modules = dict(model.named_modules())
    for u in layout.neurons:
        assert modules[u.path] is u.module
    ids, attn, resp = random_batch(3, model.config.vocab_size)
    scores = score_batch(model, layout, ids, attn, resp).scores
    assert set(scores) == set(layout.keys())
    assert all(torch.isfinite(s).all() and (s >= 0).all() for s in scores.values())
    masks = {k: (torch.arange(n) % 3 != 0).to(torch.uint8) for k, n in layout.sizes().items()}
    with apply_masks(model, layout, masks):
        hooked = model(ids, attention_mask=attn).logits
    harden_masks(model, layout, masks)
    torch.testing.assert_close(model(ids, attention_mask=attn).logits, hooked, rtol=0, atol=0)


def test_unsupported_architecture_lists_choices():
    import transformers

    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    with pytest.raises(UnsupportedArchitectureError, match=r"(?s)architecture .gpt2. .* is not supported; supported model types: \[.gemma., .*register_architecture"):
        resolve_units(model)


def test_bad_neuron_modules():
    with pytest.raises(ValueError, match=r"unknown module\(s\) \['mlp'\]; valid choices: \['q_proj'"):
        resolve_units(tiny_model(), ["mlp"])
