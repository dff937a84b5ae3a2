"""Ground truth from a plant: which units a LoRA adapter changed, and how well a pruning mask finds them.

Two kinds of truth. A **localized plant** (``biasprune plant --model.units``; :mod:`biasprune.plant.units`)
lists its units in ``provenance.json``: :func:`planted_units` reads them (keys in the masks' format) and
:func:`unit_precision_recall` scores any mask against that list. A plain LoRA plant changes every channel;
its truth is the norm of each unit's update, below.

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
from biasprune.models.loading import PROVENANCE_FILE
from biasprune.pruning.rules import top_k_mask

__all__ = [
    "MLP_NEURON",
    "lora_deltas",
    "lora_update_norms",
    "planted_units",
    "precision_recall",
    "truth_keep_masks",
    "unit_precision_recall",
]

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


# ------------------------------------------------------------------------------- localized plants
#: The kind under which :func:`unit_precision_recall` counts MLP neurons (a gate_proj/up_proj channel pair).
MLP_NEURON = "mlp_neuron"


def planted_units(adapter_dir: str | Path) -> dict[str, list[int]]:
    """A localized plant's ground truth: unit-group key (masks format) -> planted unit indices.

    ``head/<attention path>`` -> query heads; ``neuron/<gate_proj path>`` and ``neuron/<up_proj path>`` -> the
    MLP neurons. Read from the plant's ``provenance.json`` (``units.ground_truth``), written by
    ``biasprune plant`` with ``--model.units``.
    """
    file = Path(adapter_dir) / PROVENANCE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no {PROVENANCE_FILE}; a localized plant written by `biasprune plant` has one")
    units = json.loads(file.read_text(encoding="utf-8")).get("units")
    if not units or not units.get("ground_truth"):
        raise ValueError(
            f"{file}: no unit list (units.ground_truth); this plant is not localized (trained without"
            " --model.units): use lora_update_norms for its update-norm truth"
        )
    return {str(k): [int(i) for i in v] for k, v in units["ground_truth"].items()}


def truth_keep_masks(
    truth: Mapping[str, Sequence[int]], sizes: Mapping[str, int], keys: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """uint8 keep-masks (0 = pruned) that prune exactly the truth's units, for every key of ``sizes`` of the truth's
    kinds (``keys``: only those unit groups of the truth are pruned; the others of its kinds are kept whole)."""
    chosen = list(truth) if keys is None else list(keys)
    missing = [k for k in [*truth, *chosen] if k not in sizes]
    if missing:
        raise KeyError(f"unit group(s) {missing[:3]} of the truth are not in the model; keys look like {next(iter(sizes), '')!r}")
    unknown = [k for k in chosen if k not in truth]
    if unknown:
        raise KeyError(f"keys {unknown[:3]} are not in the truth; valid choices: {list(truth)}")
    kinds = {k.split("/", 1)[0] for k in truth}
    out = {k: torch.ones(n, dtype=torch.uint8) for k, n in sizes.items() if k.split("/", 1)[0] in kinds}
    for k in chosen:
        out[k][list(truth[k])] = 0
    return out


def _mlp_pairs(layout: UnitLayout) -> dict[str, tuple[str, str]]:
    """Layer -> (gate_proj key, up_proj key) for the layers whose both projections are in the layout."""
    by = {(u.layer, u.kind): f"neuron/{u.path}" for u in layout.neurons}
    return {str(layer): (by[(layer, "gate_proj")], by[(layer, "up_proj")])
            for layer in sorted({u.layer for u in layout.neurons})
            if (layer, "gate_proj") in by and (layer, "up_proj") in by}  # fmt: skip


def unit_precision_recall(
    prune_masks: Mapping[str, torch.Tensor],
    truth: Mapping[str, Sequence[int]],
    layout: UnitLayout | Mapping[str, int],
) -> dict[str, dict[str, float | int]]:
    """Precision and recall of a mask's pruned units against a localized plant's unit list, per kind.

    ``prune_masks``: bool prune masks (True = prune) or uint8 keep-masks (0 = pruned); absent keys count as
    unpruned. ``layout``: the model's :class:`UnitLayout` (or its ``sizes()``), which fixes the pool of each kind.
    Per kind (``head``, ``neuron``): with P the pruned units and T the truth's units of that kind,
    ``precision`` = |P ∩ T| / |P|, ``recall`` = |P ∩ T| / |T| (NaN when the denominator is 0), ``chance`` = |T| / n
    (the precision a uniformly random set of any size has in expectation, over the kind's n units), and the
    counts. With a layout, ``mlp_neuron`` also counts MLP neurons: neuron i of layer L is pruned when its
    ``gate_proj`` or ``up_proj`` output i is (either zeroes it) and planted when the truth lists it.
    """
    sizes = layout.sizes() if isinstance(layout, UnitLayout) else dict(layout)
    for source, keys in (("prune masks", prune_masks), ("truth", truth)):
        extra = [k for k in keys if k not in sizes]
        if extra:
            raise KeyError(f"{source} name {len(extra)} unit group(s) that are not in the model, e.g. {extra[:3]}")

    def pruned(key: str) -> torch.Tensor:
        m = prune_masks.get(key)
        if m is None:
            return torch.zeros(sizes[key], dtype=torch.bool)
        if m.numel() != sizes[key]:
            raise ValueError(f"{key}: the mask has {m.numel()} units, the model {sizes[key]}")
        return (m if m.dtype == torch.bool else m == 0).flatten().cpu()

    def planted(key: str) -> torch.Tensor:
        t = torch.zeros(sizes[key], dtype=torch.bool)
        t[list(truth.get(key, []))] = True
        return t

    def stats(p: torch.Tensor, t: torch.Tensor) -> dict[str, float | int]:
        n_p, n_t, hits = int(p.sum()), int(t.sum()), int((p & t).sum())
        return {
            "precision": hits / n_p if n_p else math.nan,
            "recall": hits / n_t if n_t else math.nan,
            "chance": n_t / p.numel() if p.numel() else math.nan,
            "n_pruned": n_p, "n_truth": n_t, "n_hits": hits, "n_units": int(p.numel()),
        }  # fmt: skip

    out: dict[str, dict[str, float | int]] = {}
    for kind in dict.fromkeys(k.split("/", 1)[0] for k in [*truth, *prune_masks]):
        keys = [k for k in sizes if k.split("/", 1)[0] == kind]
        out[kind] = stats(torch.cat([pruned(k) for k in keys]), torch.cat([planted(k) for k in keys]))
    if isinstance(layout, UnitLayout):
        pairs = _mlp_pairs(layout)
        if pairs and any(k in truth or k in prune_masks for pair in pairs.values() for k in pair):
            p = torch.cat([pruned(g) | pruned(u) for g, u in pairs.values()])
            t = torch.cat([planted(g) | planted(u) for g, u in pairs.values()])
            out[MLP_NEURON] = stats(p, t)
    return out
