"""The units a localized plant may change, and what that means for the weights (docs/method.md, "Localized plants").

A localized plant confines its trained update to a listed set of units, so the list is the ground truth of
"which units carry the bias". Units are named as in the masks (``docs/method.md``, "Masks"):

* a **head** (query head h of an attention module, named by the module's path, e.g. ``model.layers.10.self_attn``)
  may change through its rows ``[h·D, (h+1)·D)`` of ``q_proj`` (its query: where it looks) and its columns
  ``[h·D, (h+1)·D)`` of ``o_proj`` (what it writes to the residual stream), D = head_dim. ``k_proj`` and
  ``v_proj`` are never trained: under grouped-query attention their rows are shared by every query head of
  a key/value group, so a change there would reach heads that are not listed;
* an **MLP neuron** i (of an MLP module, e.g. ``model.layers.16.mlp``) may change through its rows i of
  ``gate_proj`` and ``up_proj`` and its column i of ``down_proj``: everything that computes it and everything
  it writes.

A unit's change is zero outside those slices, so zeroing the unit (a pruned head's slice of the ``o_proj``
input, a pruned neuron's ``gate_proj`` or ``up_proj`` output) removes the base's unit together with all the
plant changed in it. The ground truth in the masks' key format (:meth:`ResolvedUnits.ground_truth`):
``head/<attention path>`` -> the heads, ``neuron/<gate_proj path>`` and ``neuron/<up_proj path>`` -> the MLP
neurons (zeroing either output removes the neuron: the down projection reads act(gate) · up).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from biasprune.models.architectures import UnitLayout

__all__ = ["HEAD_PROJECTIONS", "MLP_PROJECTIONS", "PlantUnits", "PlantUnitsError", "ResolvedUnits", "Slice"]

#: projection -> the axis of its weight ``[out, in]`` a head owns (``rows`` of q_proj, ``columns`` of o_proj).
HEAD_PROJECTIONS = {"q_proj": "rows", "o_proj": "columns"}
#: projection -> the axis of its weight an MLP neuron owns.
MLP_PROJECTIONS = {"gate_proj": "rows", "up_proj": "rows", "down_proj": "columns"}


class PlantUnitsError(ValueError):
    """A unit list is invalid; the message names the field (``model.units.<field>``), the value and the choices."""


@dataclass(frozen=True)
class PlantUnits:
    """The units a localized plant's update is confined to (empty: the plant may change every adapted weight).

    Attributes:
        heads: attention module path -> query-head indices, e.g. ``{model.layers.10.self_attn: [1, 7]}``.
            A head trains its rows of ``q_proj`` and its columns of ``o_proj`` (k/v rows are shared under
            grouped-query attention and never trained).
        mlp_neurons: MLP module path -> neuron indices, e.g. ``{model.layers.16.mlp: [5, 812]}``. A neuron
            trains its rows of ``gate_proj``/``up_proj`` and its column of ``down_proj``.
    """

    heads: dict[str, list[int]] = field(default_factory=dict)
    mlp_neurons: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, groups in (("heads", self.heads), ("mlp_neurons", self.mlp_neurons)):
            for path, idx in groups.items():
                flag = f"model.units.{name}[{path!r}]"
                if not idx:
                    raise PlantUnitsError(f"{flag} is empty; list at least one index or leave the module out")
                bad = [i for i in idx if isinstance(i, bool) or not isinstance(i, int) or i < 0]
                if bad:
                    raise PlantUnitsError(f"{flag}={list(idx)}: indices must be integers >= 0, got {bad}")
                if len(set(idx)) != len(idx):
                    raise PlantUnitsError(f"{flag}={list(idx)} lists an index twice")

    def __bool__(self) -> bool:
        return bool(self.heads or self.mlp_neurons)

    def count(self) -> dict[str, int]:
        return {"heads": sum(map(len, self.heads.values())), "mlp_neurons": sum(map(len, self.mlp_neurons.values()))}

    def resolve(self, layout: UnitLayout, projections: Sequence[str] = (*HEAD_PROJECTIONS, *MLP_PROJECTIONS)) -> ResolvedUnits:
        """The weight slices of the units in a model, through the given projections (``model.lora_target_modules``).

        ``layout`` must hold the neurons of every projection used (``resolve_units(model, NEURON_MODULE_CHOICES)``).
        Projections that no listed unit owns (``k_proj``, ``v_proj``, or MLP ones for a heads-only list) are
        ignored; a unit kind none of whose projections is allowed is an error.
        """
        by_layer: dict[tuple[int, str], str] = {(u.layer, u.kind): u.path for u in layout.neurons}
        sizes: dict[str, tuple[int, int]] = {u.path: (u.module.out_features, u.module.in_features) for u in layout.neurons}
        mlp_paths = {path.rpartition(".")[0]: layer for (layer, kind), path in by_layer.items() if kind == "gate_proj"}
        slices: dict[str, Slice] = {}
        truth: dict[str, list[int]] = {}

        def allowed(kind: str, table: Mapping[str, str]) -> list[str]:
            use = [p for p in table if p in projections]
            if not use:
                raise PlantUnitsError(
                    f"model.units.{kind} is given but model.lora_target_modules={list(projections)} allows none of"
                    f" its projections; add some of {list(table)}"
                )
            return use

        def add(layer: int, proj: str, axis: str, idx: torch.Tensor, what: str) -> None:
            path = by_layer.get((layer, proj))
            if path is None:
                raise PlantUnitsError(f"{what}: the layout has no {proj} in layer {layer}; resolve it with every projection")
            s = slices.setdefault(path, Slice(path, *sizes[path]))
            s.add(axis, idx)

        if self.heads:
            use = allowed("heads", HEAD_PROJECTIONS)
            heads = {h.path: h for h in layout.heads}
            for path, idx in self.heads.items():
                if path not in heads:
                    raise PlantUnitsError(
                        f"model.units.heads: {path!r} is no attention module of this model; valid choices: e.g."
                        f" {list(heads)[:3]} ... ({len(heads)} modules)"
                    )
                h = heads[path]
                _check_range(f"model.units.heads[{path!r}]", idx, h.n_heads, "query heads")
                cols = torch.cat([torch.arange(i * h.head_dim, (i + 1) * h.head_dim) for i in sorted(idx)])
                for proj in use:
                    add(h.layer, proj, HEAD_PROJECTIONS[proj], cols, f"model.units.heads[{path!r}]")
                truth[f"head/{path}"] = sorted(idx)
        if self.mlp_neurons:
            use = allowed("mlp_neurons", MLP_PROJECTIONS)
            for path, idx in self.mlp_neurons.items():
                if path not in mlp_paths:
                    raise PlantUnitsError(
                        f"model.units.mlp_neurons: {path!r} is no MLP module of this model; valid choices: e.g."
                        f" {sorted(mlp_paths)[:3]} ... ({len(mlp_paths)} modules)"
                    )
                layer = mlp_paths[path]
                gate = by_layer[(layer, "gate_proj")]
                _check_range(f"model.units.mlp_neurons[{path!r}]", idx, sizes[gate][0], "neurons")
                rows = torch.tensor(sorted(idx))
                for proj in use:
                    add(layer, proj, MLP_PROJECTIONS[proj], rows, f"model.units.mlp_neurons[{path!r}]")
                for proj in ("gate_proj", "up_proj"):
                    truth[f"neuron/{by_layer[(layer, proj)]}"] = sorted(idx)
        return ResolvedUnits(self, dict(sorted(slices.items())), truth)


def _check_range(flag: str, idx: Sequence[int], n: int, what: str) -> None:
    bad = [i for i in idx if i >= n]
    if bad:
        raise PlantUnitsError(f"{flag}: {bad} out of range; the module has {n} {what} (valid: 0 to {n - 1})")


@dataclass
class Slice:
    """The rows (output channels) and columns (input features) of one projection's weight ``[out, in]`` that a
    localized plant may change: ΔW[i, j] may be non-zero only if i is a listed row or j a listed column."""

    path: str
    out_features: int
    in_features: int
    rows: torch.Tensor | None = None  # bool [out_features]; None: no row of this projection is owned
    columns: torch.Tensor | None = None  # bool [in_features]

    def add(self, axis: str, idx: torch.Tensor) -> None:
        n = self.out_features if axis == "rows" else self.in_features
        current = getattr(self, axis)
        mask = torch.zeros(n, dtype=torch.bool) if current is None else current
        mask[idx] = True
        setattr(self, axis, mask)

    def allowed(self) -> torch.Tensor:
        """bool ``[out, in]``: where ΔW may be non-zero."""
        out = torch.zeros(self.out_features, self.in_features, dtype=torch.bool)
        if self.rows is not None:
            out |= self.rows.cpu()[:, None]
        if self.columns is not None:
            out |= self.columns.cpu()[None, :]
        return out


@dataclass(frozen=True)
class ResolvedUnits:
    """A unit list placed in a model: the weight slices per projection path, and the ground truth."""

    units: PlantUnits
    slices: dict[str, Slice]
    truth: dict[str, list[int]]

    def ground_truth(self) -> dict[str, list[int]]:
        """Unit-group key (masks format) -> the planted unit indices (sorted)."""
        return {k: list(v) for k, v in self.truth.items()}

    def record(self) -> dict:
        """What ``provenance.json`` keeps: the unit list as given, the ground truth and the changed weight slices."""
        return {
            "heads": {k: list(v) for k, v in self.units.heads.items()},
            "mlp_neurons": {k: list(v) for k, v in self.units.mlp_neurons.items()},
            "ground_truth": self.ground_truth(),
            "counts": self.units.count(),
            "trained_slices": {
                p: {"rows": int(s.rows.sum()) if s.rows is not None else 0,
                    "columns": int(s.columns.sum()) if s.columns is not None else 0}
                for p, s in self.slices.items()
            },  # fmt: skip
        }
