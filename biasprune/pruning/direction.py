"""The direction arm: an affine concept edit of the residual stream (Karvonen & Marks 2025), its random control,
its file and its loader for a plain transformers model (docs/method.md, "Directions").

From the group sums of the ``direction`` objectives (per decoder layer l: S_G(l), the sum of the layer's output
over the positions that carry the name, and N_G, their number), with groups (reference r, target t)::

    mu_G(l) = S_G(l) / N_G        d(l) = mu_t(l) - mu_r(l)        u(l) = d(l) / |d(l)|        c(l) = mu_r(l) . u(l)

The edit at layer l replaces the component of the layer's output h along u with the reference group's mean
component, at every position but the first of each sequence::

    h' = h + (c - h . u) u

so the projection of every edited activation on u is c, and nothing orthogonal to u changes. "First" is the
position whose position id is 0: the decoding loops (and Hugging Face's) give position ids
``cumsum(attention_mask) - 1``, so under left padding the first real token has id 0 (padding never matters), and
under KV caching the decoding steps have ids > 0, so the prompt's first token is left alone in the prefill and
nothing else is skipped.

Random-direction control: at the same layers, a unit vector v(l) drawn from an isotropic Gaussian and a sign
s = +-1, both from a generator seeded by the control's seed, with the edit h' = h + (c_v - h . v) v and

    c_v(l) = m(l) . v(l) + s |c(l) - m(l) . u(l)|,     m(l) = (S_r(l) + S_t(l)) / (N_r + N_t)

m is the pooled mean activation of the scoring positions. "Same norm of change": both edits collapse one direction
and move the pooled mean activation of the scoring positions by the same distance, |c - m . u|, at every edited
layer (tested in tests/test_direction.py).

Exact folding into weights is not possible: the edit acts on the residual stream after a layer (a sum that no
single weight produces) and skips the first position. The export is therefore this file plus
:func:`attach_direction`, which puts the same hooks on a plain ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from biasprune.core.artifacts import read_safetensors, write_safetensors
from biasprune.core.hooks import HookSet
from biasprune.models.architectures import decoder_layers

__all__ = [
    "COUNT_KEY",
    "DirectionEdit",
    "attach_direction",
    "estimate_direction",
    "load_direction",
    "parse_layers",
    "random_direction",
]

# The keys of the direction objectives' sums (biasprune.scoring.direction; the same strings, checked by a test).
RESID_PREFIX = "resid/"
COUNT_KEY = "positions"
LAYER_SPECS = ("early", "all", "<layer>", "<first>-<last>", "<a>,<b>,...")


def parse_layers(spec: str | int | Sequence[int], n_layers: int, flag: str = "pruning.direction_layers") -> tuple[int, ...]:
    """Layer indices from ``early`` (the first quarter, ceil(L/4) layers), ``all``, one index, a range ``i-j``
    (inclusive) or a comma list; refuses an index outside [0, L)."""
    if isinstance(spec, int):
        layers = [spec]
    elif not isinstance(spec, str):
        layers = [int(x) for x in spec]
    elif spec == "early":
        layers = list(range(-(-n_layers // 4)))
    elif spec == "all":
        layers = list(range(n_layers))
    elif re.fullmatch(r"\d+-\d+", spec.strip()):
        a, b = (int(x) for x in spec.split("-"))
        layers = list(range(a, b + 1))
    elif re.fullmatch(r"\d+(,\d+)*", spec.replace(" ", "")):
        layers = [int(x) for x in spec.replace(" ", "").split(",")]
    else:
        raise ValueError(f"{flag}={spec!r}: not a layer choice; valid forms: {list(LAYER_SPECS)}")
    bad = [i for i in layers if not 0 <= i < n_layers]
    if not layers or bad:
        raise ValueError(f"{flag}={spec!r}: layer(s) {bad or 'none'} outside the model's {n_layers} layers [0, {n_layers - 1}]")
    return tuple(sorted(set(layers)))


@dataclass(frozen=True, eq=False)
class DirectionEdit:
    """An affine edit of the residual stream at some decoder layers: h' = h + (c - h . u) u, positions with id > 0.

    Attributes:
        layers: decoder layer indices (the edit acts on each one's output).
        units: ``[len(layers), hidden]`` float32 unit vectors u.
        targets: ``[len(layers)]`` float32 values c that h . u is set to.
        pooled: ``[len(layers), hidden]`` float32 pooled mean activations m of the scoring positions (what the
            random control's size is measured on); may be empty for an imported edit.
        metadata: provenance (model, groups, scoring variations, positions, seed) written with the file.
    """

    layers: tuple[int, ...]
    units: torch.Tensor
    targets: torch.Tensor
    pooled: torch.Tensor | None = None
    metadata: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.layers)
        if self.units.ndim != 2 or self.units.shape[0] != n or self.targets.shape != (n,):
            raise ValueError(f"a direction edit of {n} layers needs units [{n}, hidden] and targets [{n}];"
                             f" got {tuple(self.units.shape)} and {tuple(self.targets.shape)}")

    @property
    def counts(self) -> dict[str, int]:
        """Edited layers, as an arm counts its changes."""
        return {"layers": len(self.layers)}

    def shift(self) -> torch.Tensor:
        """|c - m . u| per layer: the distance the edit moves the pooled mean activation (the control's size)."""
        if self.pooled is None:
            raise ValueError("this direction edit has no pooled means; its random control cannot be sized")
        return (self.targets - (self.pooled * self.units).sum(-1)).abs()

    def apply(self, model: nn.Module) -> HookSet:
        """Reversible: hooks on the edited layers' outputs (``.remove()``, or ``with``, undoes them)."""
        return attach(model, self)

    def save(self, path: str | Path) -> Path:
        tensors = {f"direction/{layer}": self.units[i].contiguous() for i, layer in enumerate(self.layers)}
        tensors.update({f"target/{layer}": self.targets[i : i + 1].contiguous() for i, layer in enumerate(self.layers)})
        if self.pooled is not None:
            tensors.update({f"pooled_mean/{layer}": self.pooled[i].contiguous() for i, layer in enumerate(self.layers)})
        write_safetensors(path, tensors, {k: str(v) for k, v in self.metadata.items()})
        return Path(path)


def load_direction(path: str | Path) -> DirectionEdit:
    """A direction edit written by :meth:`DirectionEdit.save` (``direction/{l}``, ``target/{l}``, ``pooled_mean/{l}``)."""
    tensors, meta = read_safetensors(path)
    layers = sorted(int(k.split("/", 1)[1]) for k in tensors if k.startswith("direction/"))
    if not layers or any(f"target/{layer}" not in tensors for layer in layers):
        raise ValueError(f"{path}: not a direction file (needs direction/<layer> and target/<layer> tensors)")
    pooled = (torch.stack([tensors[f"pooled_mean/{layer}"].float() for layer in layers])
              if all(f"pooled_mean/{layer}" in tensors for layer in layers) else None)
    return DirectionEdit(tuple(layers), torch.stack([tensors[f"direction/{layer}"].float() for layer in layers]),
                         torch.cat([tensors[f"target/{layer}"].float() for layer in layers]), pooled, meta)


def attach(model: nn.Module, edit: DirectionEdit) -> HookSet:
    """The edit's hooks on ``model`` (see the module docstring for the formula and the first position)."""
    layers = decoder_layers(model)
    hooks = HookSet()
    try:
        for i, layer in enumerate(edit.layers):
            module = layers[layer]
            p = next(module.parameters())
            u = edit.units[i].to(p.device)
            c = float(edit.targets[i])

            def hook(mod, args, kwargs, output, u=u, c=c, layer=layer):
                pos = kwargs.get("position_ids")
                if pos is None:
                    raise RuntimeError(f"decoder layer {layer} got no position_ids; the direction edit cannot find the first token")
                h = output[0] if isinstance(output, tuple) else output
                work = torch.promote_types(h.dtype, torch.float32)
                hw = h.to(work)
                uw = u.to(work)
                uw = uw / uw.norm()  # a unit vector in the working precision (stored in float32)
                delta = (c - hw @ uw).unsqueeze(-1) * uw
                keep_first = (pos > 0).to(work).expand(h.shape[:-1]).unsqueeze(-1)
                new = (hw + delta * keep_first).to(h.dtype)
                return (new, *output[1:]) if isinstance(output, tuple) else new

            hooks.forward(module, hook, with_kwargs=True)
    except BaseException:
        hooks.remove()
        raise
    return hooks


def attach_direction(model: nn.Module, path: str | Path) -> HookSet:
    """Load a ``direction.safetensors`` and put its edit on a plain transformers causal LM (the export's loader)::

        model = AutoModelForCausalLM.from_pretrained(export_dir)
        hooks = attach_direction(model, f"{export_dir}/direction.safetensors")   # hooks.remove() undoes it
    """
    return attach(model, load_direction(path))


def _layer_sums(sums: Mapping[str, torch.Tensor], layers: Sequence[int], group: str) -> tuple[torch.Tensor, float]:
    missing = [layer for layer in layers if f"{RESID_PREFIX}{layer}" not in sums]
    if missing or COUNT_KEY not in sums:
        raise ValueError(f"group {group!r}: no residual-stream sums for layer(s) {missing} (score with model.objective=direction)")
    n = float(sums[COUNT_KEY].double().sum())
    if n <= 0:
        raise ValueError(f"group {group!r}: no scoring position was averaged; a direction needs both groups")
    return torch.stack([sums[f"{RESID_PREFIX}{layer}"].double() for layer in layers]), n


def estimate_direction(scores: Mapping[str, Mapping[str, torch.Tensor]], groups: Sequence[str], layers: Sequence[int],
                       metadata: Mapping[str, object] | None = None) -> DirectionEdit:
    """The difference-of-means edit at ``layers`` from group sums (``groups`` = (reference, target))."""
    ref, tgt = groups
    s_r, n_r = _layer_sums(scores[ref], layers, ref)
    s_t, n_t = _layer_sums(scores[tgt], layers, tgt)
    mu_r, mu_t = s_r / n_r, s_t / n_t
    d = mu_t - mu_r
    norm = d.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError(f"the groups' mean activations are equal at layer(s) {[layers[i] for i in (norm[:, 0] == 0).nonzero().flatten().tolist()]}")
    u = d / norm
    meta = {"reference_group": ref, "target_group": tgt, "layers": ",".join(map(str, layers)),
            "n_positions": f"{ref}={int(n_r)},{tgt}={int(n_t)}", **(metadata or {})}
    return DirectionEdit(tuple(int(x) for x in layers), u.float(), (mu_r * u).sum(-1).float(),
                         ((s_r + s_t) / (n_r + n_t)).float(), meta)


def random_direction(edit: DirectionEdit, seed: int) -> DirectionEdit:
    """The random-direction control of ``edit``: same layers, same shift of the pooled mean (module docstring)."""
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    v = torch.randn(edit.units.shape, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    sign = torch.randint(0, 2, (len(edit.layers),), generator=g, dtype=torch.float64) * 2 - 1
    pooled = edit.pooled.double()
    c = (pooled * v).sum(-1) + sign * edit.shift().double()
    return DirectionEdit(edit.layers, v.float(), c.float(), edit.pooled, {**edit.metadata, "random_seed": str(seed)})
