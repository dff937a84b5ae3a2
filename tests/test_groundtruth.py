"""LoRA update norms against peft's own merge, and precision/recall against brute force."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_model

from biasprune.models.architectures import resolve_units
from biasprune.plant.groundtruth import lora_deltas, lora_update_norms, precision_recall

peft = pytest.importorskip("peft")

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_random_adapter(tmp_path, seed=0, **lora):
    """A tiny Llama wrapped by peft with random LoRA A and B, saved; returns (base model, merged model, dir)."""
    base = tiny_model("llama", dtype=torch.float32, seed=seed)
    config = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ALL, **lora})
    wrapped = peft.get_peft_model(copy.deepcopy(base), config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    wrapped.save_pretrained(tmp_path)
    merged = wrapped.merge_and_unload()
    return base, merged, tmp_path


@pytest.mark.parametrize(
    "lora",
    [
        {},
        {"use_rslora": True, "r": 3},
        {"alpha_pattern": {"up_proj": 2.0}, "rank_pattern": {"layers.1.self_attn.q_proj": 2}},
        {"target_modules": ["q_proj", "up_proj", "o_proj"]},
    ],
)
def test_norms_equal_the_merged_weight_change(tmp_path, lora):
    base, merged, adapter = save_random_adapter(tmp_path, **lora)
    layout = resolve_units(base, ALL)
    norms = lora_update_norms(adapter, layout)
    changed = dict(merged.named_modules())
    for u in layout.neurons:
        delta = (changed[u.path].weight - u.module.weight).double()
        torch.testing.assert_close(norms[f"neuron/{u.path}"], delta.norm(dim=1), rtol=1e-5, atol=1e-6, msg=u.path)
    assert any(float(v.max()) > 0.1 for v in norms.values())
    # heads: an explicit loop over heads and their q/k/v rows and o_proj columns
    cfg = base.config
    H, KV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    for h in layout.heads:
        d = {p: (changed[f"{h.path}.{p}"].weight - dict(base.named_modules())[f"{h.path}.{p}"].weight).double() for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
        expect = []
        for head in range(H):
            g = head // (H // KV)
            sq = sum(float(x) ** 2 for x in d["o_proj"][:, head * D : (head + 1) * D].flatten())
            sq += sum(float(x) ** 2 for x in d["q_proj"][head * D : (head + 1) * D].flatten())
            sq += sum(float(x) ** 2 for x in d["k_proj"][g * D : (g + 1) * D].flatten())
            sq += sum(float(x) ** 2 for x in d["v_proj"][g * D : (g + 1) * D].flatten())
            expect.append(math.sqrt(sq))
        torch.testing.assert_close(norms[f"head/{h.path}"], torch.tensor(expect, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_o_proj_only_heads_and_module_paths(tmp_path):
    base, merged, adapter = save_random_adapter(tmp_path, target_modules=["o_proj", "up_proj"])
    layout = resolve_units(base)  # default neuron modules: no o_proj
    norms = lora_update_norms(adapter, layout, head_projections=())
    path = layout.heads[0].o_proj_path
    delta = (dict(merged.named_modules())[path].weight - dict(base.named_modules())[path].weight).double()
    D = layout.heads[0].head_dim
    expect = torch.stack([delta[:, h * D : (h + 1) * D].norm() for h in range(layout.heads[0].n_heads)])
    torch.testing.assert_close(norms[f"head/{layout.heads[0].path}"], expect, rtol=1e-5, atol=1e-6)
    q = f"neuron/{layout.neurons[0].path}"
    assert layout.neurons[0].kind == "q_proj" and float(norms[q].abs().max()) == 0.0  # not adapted: zeros
    up = [u.path for u in layout.neurons if u.kind == "up_proj"]
    by_path = lora_update_norms(adapter, up)
    assert list(by_path) == [f"neuron/{p}" for p in up]
    torch.testing.assert_close(by_path[f"neuron/{up[0]}"], norms[f"neuron/{up[0]}"])
    assert set(lora_deltas(adapter)) == {u.path for u in layout.neurons if u.kind == "up_proj"} | {h.o_proj_path for h in layout.heads}
    with pytest.raises(KeyError, match=r"no LoRA update for \['model.layers.0.self_attn.q_proj'\]"):
        lora_update_norms(adapter, [layout.neurons[0].path])


def test_refused_adapters(tmp_path):
    _, _, adapter = save_random_adapter(tmp_path, target_modules=["up_proj"])
    cfg_file = adapter / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match=r"\['use_dora'\] set; only plain LoRA"):
        lora_update_norms(adapter, ["model.layers.0.mlp.up_proj"])
    cfg_file.write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    with pytest.raises(ValueError, match="peft_type='IA3'; only 'LORA' adapters are read"):
        lora_deltas(adapter)
    cfg_file.write_text(json.dumps({**cfg, "r": 5}))
    with pytest.raises(ValueError, match="has rank 4, adapter_config.json says 5"):
        lora_deltas(adapter)
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        lora_deltas(tmp_path / "nowhere")


# ------------------------------------------------------------------------------ precision / recall
def brute_precision_recall(masks, truth, k):
    keys = list(truth)
    values = [(float(v), i) for i, v in enumerate(np.concatenate([truth[key].numpy() for key in keys]))]
    pruned = np.concatenate([masks[key].numpy() if key in masks else np.zeros(truth[key].numel(), bool) for key in keys])
    k = int(pruned.sum()) if k is None else k
    top = {i for _, i in sorted(values, key=lambda t: (-t[0], t[1]))[:k]}
    hits = sum(1 for i in range(len(values)) if pruned[i] and i in top)
    n = int(pruned.sum())
    return hits / n if n else math.nan, hits / k if k else math.nan, hits


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("k", [None, 3, 0])
def test_precision_recall_matches_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 20, size=3)
    truth = {f"neuron/m{i}": torch.from_numpy(rng.integers(0, 4, n).astype(np.float64)) for i, n in enumerate(sizes)}
    truth["head/a"] = torch.from_numpy(rng.random(6))
    masks = {key: torch.from_numpy(rng.random(v.numel()) < 0.3) for key, v in list(truth.items())[1:]}  # m0 absent
    got = precision_recall(masks, truth, k=k)
    for kind in ("neuron", "head"):
        sub_truth = {key: v for key, v in truth.items() if key.startswith(kind)}
        precision, recall, hits = brute_precision_recall(masks, sub_truth, k)
        assert got[kind]["n_hits"] == hits
        np.testing.assert_equal([got[kind]["precision"], got[kind]["recall"]], [precision, recall])
    keep = {key: (~m).to(torch.uint8) for key, m in masks.items()}
    np.testing.assert_equal(precision_recall(keep, truth, k=k), got)  # keep-masks read the same (NaN-safe)


def test_precision_recall_known_answer():
    truth = {"neuron/a": torch.tensor([5.0, 0.0, 3.0, 3.0]), "neuron/b": torch.tensor([4.0, 1.0])}
    masks = {"neuron/a": torch.tensor([True, False, False, True]), "neuron/b": torch.tensor([False, True])}
    got = precision_recall(masks, truth)["neuron"]  # k = 3: units a0 (5), b0 (4), a2 (3; tie with a3 -> lower index)
    assert (got["k"], got["n_hits"], got["n_pruned"], got["n_units"]) == (3, 1, 3, 6)
    assert got["precision"] == pytest.approx(1 / 3) and got["recall"] == pytest.approx(1 / 3)
    assert got["chance"] == pytest.approx(0.5) and got["mass"] == pytest.approx((25 + 9 + 1) / (25 + 9 + 9 + 16 + 1))
    with pytest.raises(KeyError, match="without ground truth"):
        precision_recall({"neuron/z": torch.ones(1, dtype=torch.bool)}, truth)
    with pytest.raises(ValueError, match="neuron/a: the mask has 2 units, the ground truth 4"):
        precision_recall({"neuron/a": torch.ones(2, dtype=torch.bool)}, truth)
