"""Masks: exact zeros, reversible = hard = exported checkpoint, file validation."""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch, tiny_model

from biasprune.models.architectures import resolve_units
from biasprune.pruning.masks import (
    MaskError,
    apply_masks,
    export_pruned,
    harden_masks,
    load_masks,
    save_masks,
    validate_masks,
)


def random_masks(layout, seed=0, frac=0.3):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(n, generator=g) > frac).to(torch.uint8) for k, n in layout.sizes().items()}


@pytest.fixture()
def model_and_layout():
    model = tiny_model("llama", dtype=torch.float32, seed=4)
    return model, resolve_units(model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def test_pruned_neurons_output_exactly_zero(model_and_layout):
    model, layout = model_and_layout
    masks = random_masks(layout)
    ids, attn, _ = random_batch(3, model.config.vocab_size)
    seen = {}
    with apply_masks(model, layout, masks):
        # registered after the mask hooks, so these see the masked outputs
        handles = [u.module.register_forward_hook(lambda m, a, o, k=f"neuron/{u.path}": seen.__setitem__(k, o)) for u in layout.neurons]
        try:
            model(ids, attention_mask=attn)
        finally:
            for h in handles:
                h.remove()
    for k, out in seen.items():
        pruned = masks[k] == 0
        assert torch.equal(out[..., pruned], torch.zeros_like(out[..., pruned])), k
        assert (out[..., ~pruned] != 0).float().mean() > 0.9


def test_pruned_heads_contribute_exactly_zero(model_and_layout):
    model, layout = model_and_layout
    head = layout.heads[1]
    keep = torch.tensor([1, 0, 1, 0], dtype=torch.uint8)
    ids, attn, _ = random_batch(2, model.config.vocab_size)
    inputs = {}
    with apply_masks(model, layout, {f"head/{head.path}": keep}):
        h = head.o_proj.register_forward_pre_hook(lambda m, a: inputs.__setitem__("x", a[0]))
        try:
            model(ids, attention_mask=attn)
        finally:
            h.remove()
    x = inputs["x"].view(*inputs["x"].shape[:2], head.n_heads, head.head_dim)
    assert torch.equal(x[:, :, [1, 3]], torch.zeros_like(x[:, :, [1, 3]]))
    # o_proj's output is then exactly the kept heads' contribution
    d = head.head_dim
    cols = torch.cat([torch.arange(i * d, (i + 1) * d) for i in (0, 2)])
    expect = inputs["x"][..., cols] @ head.o_proj.weight[:, cols].T
    torch.testing.assert_close(head.o_proj(inputs["x"]), expect, rtol=1e-6, atol=1e-6)


def test_removing_masks_restores_exact_logits(model_and_layout):
    model, layout = model_and_layout
    ids, attn, _ = random_batch(3, model.config.vocab_size)
    before = model(ids, attention_mask=attn).logits
    with apply_masks(model, layout, random_masks(layout)):
        pruned = model(ids, attention_mask=attn).logits
    after = model(ids, attention_mask=attn).logits
    assert not torch.equal(before, pruned)
    assert torch.equal(before, after)


def test_hooks_equal_hard_equal_exported(model_and_layout, tmp_path):
    from transformers import AutoModelForCausalLM

    model, layout = model_and_layout
    masks = random_masks(layout, seed=1)
    ids, attn, _ = random_batch(3, model.config.vocab_size)
    with apply_masks(model, layout, masks):
        hooked = model(ids, attention_mask=attn).logits
    original = {k: v.clone() for k, v in model.state_dict().items()}
    export_pruned(model, None, layout, masks, tmp_path / "pruned", {"p": "0.1"})
    for k, v in model.state_dict().items():  # export leaves the in-memory model as it was
        assert torch.equal(v, original[k]), k
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.float32, attn_implementation="eager").eval()
    exported = reloaded(ids, attention_mask=attn).logits
    harden_masks(model, layout, masks)
    hard = model(ids, attention_mask=attn).logits
    torch.testing.assert_close(hard, hooked, rtol=0, atol=0)
    torch.testing.assert_close(exported, hard, rtol=0, atol=0)
    saved, meta = load_masks(tmp_path / "pruned" / "masks.safetensors")
    assert meta["p"] == "0.1" and set(saved) == set(masks)


def test_masks_file_roundtrip_and_errors(model_and_layout, tmp_path):
    model, layout = model_and_layout
    masks = random_masks(layout)
    save_masks(tmp_path / "m.safetensors", masks, {"units": "both"})
    loaded, meta = load_masks(tmp_path / "m.safetensors")
    assert meta == {"units": "both"} and all(torch.equal(loaded[k], masks[k]) for k in masks)
    validate_masks(loaded, layout)
    with pytest.raises(MaskError, match="does not exist"):
        load_masks(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MaskError, match="not a readable safetensors file"):
        load_masks(tmp_path / "junk.safetensors")
    with pytest.raises(MaskError, match=r"key 'neuron/model.layers.9.mlp.up_proj' names no unit group of this model"):
        validate_masks({"neuron/model.layers.9.mlp.up_proj": torch.ones(48, dtype=torch.uint8)}, layout)
    key = f"neuron/{layout.neurons[0].path}"
    with pytest.raises(MaskError, match=r"has shape \(5,\), the model has 32 units there"):
        validate_masks({key: torch.ones(5, dtype=torch.uint8)}, layout)
    with pytest.raises(MaskError, match="values other than 0 and 1"):
        validate_masks({key: torch.full((32,), 2, dtype=torch.uint8)}, layout)


@pytest.mark.parametrize(
    "tensor, match",
    [
        (torch.full((32,), 0.5), r"'neuron/x' has dtype torch.float32 \(values such as \[0.5, 0.5, 0.5, 0.5\]\)"),
        (torch.ones(32, dtype=torch.bfloat16), r"'neuron/x' has dtype torch.bfloat16"),
        (torch.tensor([0, 1, 2, 7], dtype=torch.uint8), r"'neuron/x' holds values other than 0 and 1: \[2, 7\] \(2 of"),
        (torch.tensor([1, -1, 0], dtype=torch.int64), r"'neuron/x' holds values other than 0 and 1: \[-1\] \(1 of 3"),
        (torch.ones(2, 16, dtype=torch.uint8), r"'neuron/x' has shape \(2, 16\); a mask must be 1-D"),
    ],
)
def test_masks_file_is_checked_before_the_cast(tmp_path, tensor, match):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"neuron/x": tensor}, str(path))
    with pytest.raises(MaskError, match=rf"bad.safetensors: {match}"):
        load_masks(path)


def test_integer_and_bool_masks_load_as_uint8(tmp_path, model_and_layout):
    from safetensors.torch import save_file

    _, layout = model_and_layout
    key, n = next(iter(layout.sizes().items()))
    for dtype in (torch.bool, torch.int8, torch.int32, torch.int64, torch.uint8):
        keep = (torch.arange(n) % 2).to(dtype)
        save_file({key: keep}, str(tmp_path / "m.safetensors"))
        loaded, _ = load_masks(tmp_path / "m.safetensors")
        assert loaded[key].dtype == torch.uint8 and torch.equal(loaded[key], (torch.arange(n) % 2).to(torch.uint8))
        validate_masks({key: keep}, layout)
    with pytest.raises(MaskError, match=rf"masks: '{key}' has dtype torch.float32"):
        validate_masks({key: torch.ones(n)}, layout)  # 0/1 floats too: nothing is cast silently
    with pytest.raises(MaskError, match=rf"run.safetensors: '{key}' is a list, not a tensor"):
        validate_masks({key: [1] * n}, layout, source="run.safetensors")


def test_an_arm_puts_its_masks_and_edit_on_the_model_and_takes_them_off_after_an_error(model_and_layout):
    """Arm.applied against the hard-pruned weights with the edit's own hooks (an independent application), and no
    hook left after an error inside the block."""
    import copy

    from biasprune.pruning.arms import UNPRUNED, Arm
    from biasprune.pruning.direction import DirectionEdit

    model, layout = model_and_layout
    ids, attn, _ = random_batch(3, model.config.vocab_size, seed=2)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    g = torch.Generator().manual_seed(5)
    u = torch.randn(1, model.config.hidden_size, generator=g)
    edit = DirectionEdit((1,), u / u.norm(), torch.tensor([0.7]))
    masks = random_masks(layout, seed=3)

    def logits(m):
        with torch.no_grad():
            return m(input_ids=ids, attention_mask=attn, position_ids=pos).logits

    plain = logits(model)
    hard = copy.deepcopy(model)
    harden_masks(hard, resolve_units(hard, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), masks)
    with edit.apply(hard):
        expected = logits(hard)
    with Arm("pruned", "pruned", masks, edit=edit).applied(model, layout):
        torch.testing.assert_close(logits(model), expected)
    with UNPRUNED.applied(model, layout):
        torch.testing.assert_close(logits(model), plain, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="inside the block"):
        with Arm("pruned", "pruned", masks, edit=edit).applied(model, layout):
            raise RuntimeError("an error inside the block")
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._forward_hooks_with_kwargs for m in model.modules())
    torch.testing.assert_close(logits(model), plain, rtol=0, atol=0)


def test_a_masks_file_given_for_evaluation_is_read_once_and_copied_byte_for_byte(model_and_layout, tmp_path):
    import hashlib

    from biasprune.pruning.masks import MasksSource

    model, layout = model_and_layout
    run = tmp_path / "quickstart" / "version_3"
    save_masks(run / "masks.safetensors", random_masks(layout, seed=6), {"units": "neurons"})
    raw = (run / "masks.safetensors").read_bytes()
    source = MasksSource.read(str(run / "masks.safetensors"))
    assert source.record() == {"path": str((run / "masks.safetensors").resolve()), "sha256": hashlib.sha256(raw).hexdigest(),
                               "copy": "masks.safetensors", "arm": "pruned[quickstart/version_3]"}
    assert source.metadata == {"units": "neurons"}
    other = tmp_path / "other"
    used = source.use(layout, other, write=False)
    assert not (other / "masks.safetensors").exists() and used is source.masks  # a rank other than 0 writes nothing
    source.use(layout, other)
    assert (other / "masks.safetensors").read_bytes() == raw
    source.use(layout, run)  # the run directory's own file: left as it is
    assert (run / "masks.safetensors").read_bytes() == raw
    with pytest.raises(MaskError, match="names no unit group"):
        MasksSource("x", "x", {"neuron/nowhere": torch.ones(3, dtype=torch.uint8)}, {}, b"", "pruned[x]").use(layout, other)
    assert MasksSource.read(str(other / "masks.safetensors")).arm == f"pruned[{tmp_path.name}/other]"
