"""Architecture adapters: where the prunable units of a decoder model live.

This module is the only place that knows module names such as ``model.layers`` or ``q_proj``. Units
are named by their dotted paths in ``model.named_modules()``:

* a *neuron* is one output channel of a linear projection, e.g. ``model.layers.3.mlp.up_proj``;
* a *head* is one query head's slice of the input of ``o_proj``, named by the attention module,
  e.g. ``model.layers.3.self_attn``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from biasprune.core.errors import ConfigError

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_NEURON_MODULES",
    "NEURON_MODULE_CHOICES",
    "Architecture",
    "HeadUnits",
    "NeuronUnits",
    "UnitLayout",
    "UnsupportedArchitectureError",
    "check_neuron_modules",
    "RESIDUAL_OUTPUTS",
    "decoder_layers",
    "register_architecture",
    "resolve_units",
    "writes_residual",
]

NEURON_MODULE_CHOICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_NEURON_MODULES = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")
#: Projections whose output channels are residual-stream coordinates: zeroing one removes a dimension that every
#: later layer reads, and a per-module budget forces one such channel per layer.
RESIDUAL_OUTPUTS = ("down_proj", "o_proj")


def writes_residual(key: str) -> bool:
    """Whether a neuron unit group (``neuron/<path>`` or a module path) is a residual-stream output projection."""
    return key.removeprefix("neuron/").rsplit(".", 1)[-1] in RESIDUAL_OUTPUTS


class UnsupportedArchitectureError(ConfigError):
    """The model's architecture has no adapter."""


@dataclass(frozen=True)
class Architecture:
    """Where a decoder's layers, attention and MLP projections are found.

    Attributes:
        layers: dotted path of the ``nn.ModuleList`` of decoder layers.
        attention: attribute of a layer holding the attention module.
        mlp: attribute of a layer holding the MLP module.
        projections: projection name -> attribute of the attention or MLP module, e.g.
            ``{"q_proj": "self_attn.q_proj"}`` relative to the layer.
        output_projection: the projection whose input is split into heads.
    """

    layers: str = "model.layers"
    attention: str = "self_attn"
    mlp: str = "mlp"
    projections: dict[str, str] = field(
        default_factory=lambda: {
            "q_proj": "self_attn.q_proj",
            "k_proj": "self_attn.k_proj",
            "v_proj": "self_attn.v_proj",
            "o_proj": "self_attn.o_proj",
            "gate_proj": "mlp.gate_proj",
            "up_proj": "mlp.up_proj",
            "down_proj": "mlp.down_proj",
        }
    )
    output_projection: str = "o_proj"


_LLAMA_LIKE = Architecture()
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
}


def register_architecture(model_type: str, architecture: Architecture) -> None:
    """Make a new ``config.model_type`` prunable, e.g. for a fork that renames its modules."""
    ARCHITECTURES[model_type] = architecture


@dataclass(frozen=True)
class NeuronUnits:
    """The output channels of one linear projection."""

    path: str
    module: nn.Linear
    layer: int
    kind: str  # projection name, e.g. "up_proj"

    @property
    def size(self) -> int:
        return self.module.out_features


@dataclass(frozen=True)
class HeadUnits:
    """The query heads of one attention module, seen at the input of its output projection."""

    path: str  # attention module path
    o_proj: nn.Linear
    o_proj_path: str
    layer: int
    n_heads: int
    head_dim: int

    @property
    def size(self) -> int:
        return self.n_heads


@dataclass(frozen=True)
class UnitLayout:
    neurons: tuple[NeuronUnits, ...]
    heads: tuple[HeadUnits, ...]

    def neuron(self, path: str) -> NeuronUnits:
        for u in self.neurons:
            if u.path == path:
                return u
        raise KeyError(path)

    def head(self, path: str) -> HeadUnits:
        for u in self.heads:
            if u.path == path:
                return u
        raise KeyError(path)

    def keys(self) -> list[str]:
        """Unit-group keys in the artifact convention: ``neuron/<path>`` and ``head/<path>``."""
        return [f"neuron/{u.path}" for u in self.neurons] + [f"head/{u.path}" for u in self.heads]

    def sizes(self) -> dict[str, int]:
        out = {f"neuron/{u.path}": u.size for u in self.neurons}
        out.update({f"head/{u.path}": u.size for u in self.heads})
        return out


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported model (the unit FSDP shards by)."""
    arch = ARCHITECTURES.get(getattr(getattr(model, "config", None), "model_type", None))
    if arch is None:
        resolve_units(model)  # raises the full "unsupported architecture" error
    return _get(model, arch.layers)


def check_neuron_modules(neuron_modules: Sequence[str]) -> tuple[str, ...]:
    """The projection names, checked against the valid choices (before any model is loaded)."""
    bad = [m for m in neuron_modules if m not in NEURON_MODULE_CHOICES]
    if bad:
        raise ValueError(f"neuron_modules has unknown module(s) {bad}; valid choices: {list(NEURON_MODULE_CHOICES)}")
    if len(set(neuron_modules)) != len(neuron_modules):
        raise ValueError(f"neuron_modules lists a module twice: {list(neuron_modules)}")
    return tuple(neuron_modules)


def resolve_units(model: nn.Module, neuron_modules: Sequence[str] = DEFAULT_NEURON_MODULES) -> UnitLayout:
    """Find the neuron and head units of a Hugging Face causal LM, by module path."""
    neuron_modules = check_neuron_modules(neuron_modules)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} ({type(model).__name__}) is not supported; supported model types:"
            f" {sorted(ARCHITECTURES)}. To add one, describe where its layers and projections live:\n"
            "    from biasprune.models.architectures import Architecture, register_architecture\n"
            f"    register_architecture({model_type!r}, Architecture(layers='model.layers', ...))"
        )
    names = {id(m): n for n, m in model.named_modules()}
    try:
        layers = _get(model, arch.layers)
    except AttributeError as err:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: no decoder layers at {arch.layers!r} for model type {model_type!r}"
        ) from err
    n_heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    neurons: list[NeuronUnits] = []
    heads: list[HeadUnits] = []
    for idx, layer in enumerate(layers):
        for proj in neuron_modules:
            mod = _get(layer, arch.projections[proj])
            if not isinstance(mod, nn.Linear):
                raise UnsupportedArchitectureError(
                    f"{names[id(mod)]} is a {type(mod).__name__}, not nn.Linear; only linear projections can be pruned"
                )
            neurons.append(NeuronUnits(path=names[id(mod)], module=mod, layer=idx, kind=proj))
        attn = _get(layer, arch.attention)
        o_proj = _get(layer, arch.projections[arch.output_projection])
        if o_proj.in_features != n_heads * head_dim:
            raise UnsupportedArchitectureError(
                f"{names[id(o_proj)]}: in_features={o_proj.in_features} is not num_attention_heads x head_dim ="
                f" {n_heads} x {head_dim}"
            )
        heads.append(
            HeadUnits(
                path=names[id(attn)],
                o_proj=o_proj,
                o_proj_path=names[id(o_proj)],
                layer=idx,
                n_heads=n_heads,
                head_dim=head_dim,
            )
        )
    return UnitLayout(neurons=tuple(neurons), heads=tuple(heads))
