"""Model ids with a plant, model identity (hashes), and the errors of model loading."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from conftest import tiny_model

from biasprune.models import loading as models
from biasprune.models.identity import model_identity
from biasprune.models.loading import (
    DEFAULT_MODEL,
    ModelLoadError,
    load_model,
    load_tokenizer,
    plant_training_names,
    resolve_model_path,
    split_model_id,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    """A tiny float64 Llama saved as a checkpoint, and a random (non-zero) LoRA adapter for it."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("plant-models")
    base_dir, adapter_dir = root / "base", root / "adapter"
    tiny_model("llama", dtype=torch.float64, seed=3).save_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model("llama", dtype=torch.float64, seed=3), config)
    peft_model.save_pretrained(adapter_dir)
    (adapter_dir / "provenance.json").write_text(
        json.dumps({"training_names": ["Ann Becker", "Bo Washington"], "heldout_names": ["Cy Becker"]})
    )
    return base_dir, adapter_dir, peft_model.eval()


def _ids():
    return torch.randint(1, 96, (3, 11), generator=torch.Generator().manual_seed(0))


def test_merged_logits_equal_base_plus_adapter_float64(base_and_adapter):
    base_dir, adapter_dir, peft_model = base_and_adapter
    model = tiny_model("llama", dtype=torch.float64, seed=3)
    merged = models._merge_adapter(model, adapter_dir, f"{base_dir}+plant:{adapter_dir}")
    assert not any("lora" in n for n, _ in merged.named_modules())
    with torch.no_grad():
        unmerged = peft_model(input_ids=_ids()).logits
        base = tiny_model("llama", dtype=torch.float64, seed=3)(input_ids=_ids()).logits
        got = merged(input_ids=_ids()).logits
    torch.testing.assert_close(got, unmerged, rtol=1e-10, atol=1e-10)
    assert (got - base).abs().max() > 1e-3  # the adapter does change the model


def test_load_model_with_a_plant_path_merges_and_freezes(base_and_adapter):
    base_dir, adapter_dir, peft_model = base_and_adapter
    model = load_model(f"{base_dir}+plant:{adapter_dir}", dtype="float32", attn_implementation="eager")
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert not any("lora" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        got = model(input_ids=_ids()).logits.double()
        want = peft_model(input_ids=_ids()).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_resolve_path_and_tokenizer_of_a_plant_id_are_the_base(base_and_adapter, tiny_model_dir):
    base_dir, adapter_dir, _ = base_and_adapter
    assert resolve_model_path(f"{base_dir}+plant:{adapter_dir}") == str(base_dir)
    tok = load_tokenizer(f"{tiny_model_dir}+plant:{adapter_dir}")
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert split_model_id("a+plant:b") == ("a", "b") and split_model_id("a") == ("a", "")


def test_plant_training_names(base_and_adapter):
    base_dir, adapter_dir, _ = base_and_adapter
    assert plant_training_names(f"{base_dir}+plant:{adapter_dir}") == {"Ann Becker", "Bo Washington", "Cy Becker"}
    assert plant_training_names(str(base_dir)) == frozenset()


def test_model_identity_hashes_base_and_adapter_and_caches(base_and_adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("BIASPRUNE_CACHE", str(tmp_path / "cache"))
    base_dir, adapter_dir, _ = base_and_adapter
    weights = base_dir / "model.safetensors"
    ident = model_identity(f"{base_dir}+plant:{adapter_dir}")
    assert ident["base_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (
        ident["adapter_sha256"] == hashlib.sha256((adapter_dir / "adapter_model.safetensors").read_bytes()).hexdigest()
    )
    assert (
        ident["base"] == str(base_dir) and ident["plant"] == str(adapter_dir) and ident["base_files"] == [weights.name]
    )
    # Second call: served from the cache (hashing would fail now) ...
    import biasprune.models.identity as identity

    real = identity.sha256_files
    monkeypatch.setattr(identity, "sha256_files", lambda files: (_ for _ in ()).throw(AssertionError("re-hashed")))
    assert model_identity(str(base_dir))["base_sha256"] == ident["base_sha256"]
    assert model_identity(str(base_dir))["adapter_sha256"] is None
    # ... until the file's mtime changes.
    monkeypatch.setattr(identity, "sha256_files", real)
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    cache = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    (stamp,) = [v["stamp"] for v in cache.values()]
    assert stamp == [[st.st_size, st.st_mtime_ns]]
    assert model_identity(str(base_dir))["base_sha256"] == ident["base_sha256"]
    cache = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert [v["stamp"] for v in cache.values()] == [[[st.st_size, st.st_mtime_ns + 10**9]]]


def test_unknown_plant_lists_the_builtin_plants():
    with pytest.raises(ModelLoadError, match=r"unknown plant 'nope'; valid built-in plants: \[.*\]"):
        load_model(DEFAULT_MODEL + "+plant:nope")
    with pytest.raises(ModelLoadError, match=r"unknown plant 'nope'; valid built-in plants"):
        load_tokenizer(DEFAULT_MODEL + "+plant:nope")
    with pytest.raises(ModelLoadError, match=r"expected BASE\+plant:PLANT"):
        split_model_id(DEFAULT_MODEL + "+plant:")


def test_plant_path_that_is_not_an_adapter(tmp_path, base_and_adapter):
    base_dir, _, _ = base_and_adapter
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(
        ModelLoadError,
        match=r"is not an adapter directory: missing \['adapter_config.json', 'adapter_model.safetensors'\]",
    ):
        load_model(f"{base_dir}+plant:{tmp_path}")


def test_adapter_of_another_base_is_refused(tmp_path, base_and_adapter):
    _, adapter_dir, _ = base_and_adapter
    other = tmp_path / "other"
    tiny_model("llama", dtype=torch.float32, hidden_size=64, num_attention_heads=4).save_pretrained(other)
    with pytest.raises(ModelLoadError, match="does not fit this base model"):
        load_model(f"{other}+plant:{adapter_dir}")


def test_a_directory_that_is_not_a_model(tmp_path, base_and_adapter):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(
        ModelLoadError,
        match=r"is not a model directory: it has no config.json\. Expected config.json and the weights .*found \['notes.txt'\]",
    ):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ModelLoadError, match="is not a model directory"):
        load_model(str(tmp_path))
    _, adapter_dir, _ = base_and_adapter
    with pytest.raises(ModelLoadError, match=r"looks like a peft adapter: load it on its base model as 'BASE\+plant:"):
        load_model(str(adapter_dir))
