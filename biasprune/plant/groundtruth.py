"""Ground truth from a plant: which units a LoRA adapter changed, and how well a pruning mask finds them.

A planted model is a base plus a peft LoRA adapter (a folder with ``adapter_config.json`` and
``adapter_model.safetensors``). Merging adds, per adapted linear module,

    ΔW = s · B @ A        s = alpha / r  (alpha / sqrt(r) with ``use_rslora``)

(A: ``[r, in]``, B: ``[out, r]``; r and alpha per module from ``rank_pattern``/``alpha_pattern`` when set,
matched as peft does; ΔW transposed with ``fan_in_fan_out``). The unit norms, per unit-group key:

* ``neuron/<module path>``: ``[out_features]``, ‖ΔW[i, :]‖₂, the change of output channel i's weights
  (0 for a module the adapter leaves alone);
* ``head/<attention path>``: ``[n_heads]``, for query head h with head_dim D and key/value head
  g = h // (n_heads / n_kv_heads)::

      sqrt(‖ΔW_o[:, hD:(h+1)D]‖²_F + ‖ΔW_q[hD:(h+1)D, :]‖²_F + ‖ΔW_k[gD:(g+1)D, :]‖²_F + ‖ΔW_v[gD:(g+1)D, :]‖²_F)

  the o_proj input columns the head writes through, and the q/k/v rows that compute it (k and v are
  shared by the heads of a group and count fully for each). ``head_projections`` chooses which of q/k/v
  count (``()``: o_proj only). Missing projections contribute 0.

Only plain LoRA is read: DoRA, LoRA biases and quantized variants change the merge and are refused, and so
is an adapter that fully retrains (``modules_to_save``) a module holding units.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from biasprune.models.architectures import UnitLayout
from biasprune.pruning.rules import top_k_mask

__all__ = ["lora_deltas", "lora_update_norms", "precision_recall"]

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<path>.+)\.lora_(?P<ab>[AB])\.weight$")
_REFUSED = ("use_dora", "lora_bias", "use_qalora")


def _pattern_value(patterns: Mapping[str, float], path: str, default: float) -> float:
    """peft's ``get_pattern_key``: the first pattern p with ``re.match(rf"(.*\\.)?({p})$", path)``."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return default


def _read_adapter(adapter_dir: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    adapter_dir = Path(adapter_dir)
    config_file, weights_file = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(
                f"{adapter_dir}: no {f.name}; a peft LoRA adapter folder holds adapter_config.json and adapter_model.safetensors"
            )
    config = json.loads(config_file.read_text())
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ValueError(f"{config_file}: peft_type={config.get('peft_type')!r}; only 'LORA' adapters are read")
    refused = [k for k in _REFUSED if config.get(k)]
    if refused:
        raise ValueError(f"{config_file}: {refused} set; only plain LoRA (ΔW = s·B@A) is supported")
    tensors = load_file(str(weights_file))
    factors: dict[str, dict[str, torch.Tensor]] = {}
    others: list[str] = []
    for key, value in tensors.items():
        match = _LORA_KEY.match(key)
        if match:
            factors.setdefault(match["path"], {})[match["ab"]] = value
        else:
            others.append(key)
    deltas: dict[str, torch.Tensor] = {}
    for path, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{weights_file}: {path} has lora_{next(iter(ab))} but not its partner")
        A, B = ab["A"].double(), ab["B"].double()
        r = A.shape[0]
        expected_r = _pattern_value(config.get("rank_pattern") or {}, path, config["r"])
        if r != expected_r:
            raise ValueError(f"{weights_file}: {path} has rank {r}, adapter_config.json says {expected_r}")
        alpha = _pattern_value(config.get("alpha_pattern") or {}, path, config["lora_alpha"])
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        delta = scale * (B @ A)
        deltas[path] = delta.T if config.get("fan_in_fan_out") else delta
    return deltas, others


def lora_deltas(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """Module path (as in the model's ``named_modules()``) -> ΔW ``[out, in]`` (float64) of a LoRA adapter."""
    return _read_adapter(adapter_dir)[0]


def _path_of(key: str) -> str:
    key = key.removeprefix("base_model.model.")
    return key.split(".modules_to_save", 1)[0]


def lora_update_norms(
    adapter_dir: str | Path,
    layout_or_module_paths: UnitLayout | Sequence[str],
    head_projections: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
) -> dict[str, torch.Tensor]:
    """Per unit-group key, the norm of each unit's LoRA update (float64; see the module docstring).

    With a :class:`UnitLayout`: every neuron and head group of the model. With module paths: ``neuron/<path>``
    for each, every path must be adapted (its size comes from ΔW).
    """
    deltas, others = _read_adapter(adapter_dir)
    if isinstance(layout_or_module_paths, UnitLayout):
        layout = layout_or_module_paths
        neurons = [(u.path, u.size) for u in layout.neurons]
        heads = list(layout.heads)
    else:
        neurons, heads = [(p, None) for p in layout_or_module_paths], []
        missing = [p for p, _ in neurons if p not in deltas]
        if missing:
            raise KeyError(
                f"{adapter_dir}: no LoRA update for {missing[:3]}; adapted modules: {sorted(deltas)[:5]} ..."
            )
    unit_paths = {p for p, _ in neurons} | {h.o_proj_path for h in heads}
    unit_paths |= {f"{h.path}.{name}" for h in heads for name in head_projections}
    retrained = sorted({_path_of(k) for k in others} & unit_paths)
    if retrained:
        raise ValueError(
            f"{adapter_dir}: the adapter retrains {retrained[:3]} in full (modules_to_save); only LoRA updates are read"
        )
    out: dict[str, torch.Tensor] = {}
    for path, size in neurons:
        if path in deltas:
            norms = deltas[path].norm(dim=1)
            if size is not None and norms.shape[0] != size:
                raise ValueError(
                    f"{adapter_dir}: ΔW of {path} has {norms.shape[0]} rows, the model has {size} channels"
                )
            out[f"neuron/{path}"] = norms
        else:
            out[f"neuron/{path}"] = torch.zeros(size, dtype=torch.float64)
    for h in heads:
        H, D = h.n_heads, h.head_dim
        sq = torch.zeros(H, dtype=torch.float64)
        if h.o_proj_path in deltas:
            sq += deltas[h.o_proj_path].pow(2).sum(0).view(H, D).sum(1)
        for name in head_projections:
            delta = deltas.get(f"{h.path}.{name}")
            if delta is None:
                continue
            rows = delta.pow(2).sum(1).view(-1, D).sum(1)  # per (query or key/value) head of this projection
            if H % rows.shape[0]:
                raise ValueError(
                    f"{adapter_dir}: {h.path}.{name} has {rows.shape[0]} heads of {D}, not a divisor of {H}"
                )
            sq += rows.repeat_interleave(H // rows.shape[0])
        out[f"head/{h.path}"] = sq.sqrt()
    return out


def precision_recall(
    prune_masks: Mapping[str, torch.Tensor],
    truth_norms: Mapping[str, torch.Tensor],
    k: int | Mapping[str, int] | None = None,
) -> dict[str, dict[str, float | int]]:
    """Per kind, the pruned set against the k units with the largest update norm over all units of the kind.

    ``prune_masks``: bool prune masks (True = prune) or uint8 keep-masks (0 = pruned); keys absent from it
    count as unpruned. ``k`` defaults to the number pruned of that kind (then precision = recall); an int
    applies to every kind, a mapping gives it per kind. Ties in the norms go to the lower index (keys in
    ``truth_norms`` order). Per kind: ``precision`` = hits / pruned, ``recall`` = hits / k (NaN when the
    denominator is 0), ``chance`` = k / units (a random mask's expected precision), ``mass`` = the share of
    the kind's total squared norm that the pruned units hold, and the counts.
    """
    extra = [key for key in prune_masks if key not in truth_norms]
    if extra:
        raise KeyError(f"prune masks name {len(extra)} unit group(s) without ground truth, e.g. {extra[:3]}")
    out: dict[str, dict[str, float | int]] = {}
    kinds = dict.fromkeys(key.split("/", 1)[0] for key in prune_masks)
    for kind in kinds:
        keys = [key for key in truth_norms if key.split("/", 1)[0] == kind]
        truth = torch.cat([truth_norms[key].double().flatten() for key in keys])
        parts = []
        for key in keys:
            m = prune_masks.get(key)
            if m is None:
                parts.append(torch.zeros(truth_norms[key].numel(), dtype=torch.bool))
                continue
            if m.numel() != truth_norms[key].numel():
                raise ValueError(f"{key}: the mask has {m.numel()} units, the ground truth {truth_norms[key].numel()}")
            parts.append((m if m.dtype == torch.bool else m == 0).flatten().cpu())
        pruned = torch.cat(parts)
        n_pruned, n_units = int(pruned.sum()), truth.numel()
        kk = n_pruned if k is None else int(k if isinstance(k, int) else k[kind])
        hits = int((pruned & top_k_mask(truth, kk)).sum())
        total = float(truth.pow(2).sum())
        out[kind] = {
            "precision": hits / n_pruned if n_pruned else math.nan,
            "recall": hits / kk if kk else math.nan,
            "chance": kk / n_units if n_units else math.nan,
            "mass": float(truth[pruned].pow(2).sum()) / total if total > 0 else math.nan,
            "k": kk,
            "n_pruned": n_pruned,
            "n_hits": hits,
            "n_units": n_units,
        }
    return out
