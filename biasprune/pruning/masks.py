"""Pruning masks: files, reversible application with hooks, and hard application to the weights.

A mask set maps unit-group keys to uint8 keep-masks (1 = keep, 0 = pruned)::

    "neuron/model.layers.3.mlp.up_proj"   [out_features]
    "head/model.layers.3.self_attn"       [num_attention_heads]

A pruned neuron's output is exactly 0 for every input; a pruned head's slice of the ``o_proj`` input is
exactly 0. The reversible mode multiplies by the mask in hooks; the hard mode zeroes weight rows (neurons)
or ``o_proj`` weight columns (heads). Both give the same logits; removing the hooks restores the model.

A masks file given for evaluation (``--pruning.masks_file``) is read once into a :class:`MasksSource`: its masks,
its bytes (copied into the run directory, so that the run directory alone shows what was evaluated), its sha256
and its arm's name (:func:`masks_arm_name`), which the manifest records as ``masks_source``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from biasprune.core.artifacts import atomic_write_bytes, read_safetensors, write_safetensors
from biasprune.core.errors import ConfigError
from biasprune.core.hooks import HookSet
from biasprune.models.architectures import UnitLayout

__all__ = [
    "MaskError",
    "MasksSource",
    "apply_masks",
    "check_mask_tensors",
    "export_pruned",
    "harden_masks",
    "load_masks",
    "masks_arm_name",
    "save_masks",
    "validate_masks",
]


class MaskError(ConfigError):
    """A masks file does not fit the model it is applied to."""


_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_mask_tensors(masks: Mapping[str, object], source: str = "masks") -> None:
    """Every mask must be a 1-D bool or integer tensor whose values are all 0 or 1 (nothing is cast first)."""
    for key, m in masks.items():
        if not isinstance(m, torch.Tensor):
            raise MaskError(f"{source}: {key!r} is a {type(m).__name__}, not a tensor of 0/1 keep-flags")
        if m.dtype not in _MASK_DTYPES:
            sample = m.detach().flatten()[:4].tolist()
            raise MaskError(
                f"{source}: {key!r} has dtype {m.dtype} (values such as {sample}); a mask must hold integers or"
                f" bools, 1 = keep and 0 = pruned (valid dtypes: {[str(d) for d in _MASK_DTYPES]})"
            )
        if m.ndim != 1:
            raise MaskError(f"{source}: {key!r} has shape {tuple(m.shape)}; a mask must be 1-D, one flag per unit")
        bad = m[(m != 0) & (m != 1)]
        if bad.numel():
            found = sorted({int(v) for v in bad.unique()[:5].tolist()})
            raise MaskError(
                f"{source}: {key!r} holds values other than 0 and 1: {found} ({bad.numel()} of {m.numel()} entries)"
            )


def validate_masks(masks: Mapping[str, torch.Tensor], layout: UnitLayout, source: str = "masks") -> None:
    """Masks of 0/1 integers or bools (:func:`check_mask_tensors`), one per unit group of the model."""
    check_mask_tensors(masks, source)
    sizes = layout.sizes()
    for key, m in masks.items():
        if key not in sizes:
            kinds = sorted({k.split("/")[0] for k in sizes})
            example = next(iter(sizes), "")
            raise MaskError(
                f"{source}: key {key!r} names no unit group of this model; keys look like {example!r}"
                f" (kinds {kinds}). Was the mask learned on another model or other neuron_modules?"
            )
        if m.shape[0] != sizes[key]:
            raise MaskError(f"{source}: {key!r} has shape {tuple(m.shape)}, the model has {sizes[key]} units there")


def save_masks(path: str | Path, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, object]) -> Path:
    return write_safetensors(path, {k: m.to(torch.uint8) for k, m in masks.items()}, metadata)


def load_masks(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a masks file; every tensor is checked (:func:`check_mask_tensors`) before it becomes uint8."""
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"masks file {str(path)!r} does not exist")
    try:
        masks, meta = read_safetensors(path)
    except Exception as err:  # safetensors raises several types for a damaged file
        raise MaskError(f"{path}: not a readable safetensors file ({err})") from err
    check_mask_tensors(masks, str(path))  # before the cast: 0.5 or 2 must not become a silent 0 or 1
    return {k: v.to(torch.uint8) for k, v in masks.items()}, meta


def masks_arm_name(masks_file: str | Path) -> str:
    """The arm of a masks file: ``pruned[NAME/version_N]`` for a run's ``masks.safetensors``, else ``pruned[FILE]``."""
    path = Path(masks_file).resolve()
    label = "/".join(path.parts[-3:-1]) if path.name == "masks.safetensors" and len(path.parts) > 2 else path.name
    return f"pruned[{label}]"


@dataclass(frozen=True, eq=False)
class MasksSource:
    """A masks file given for evaluation, read once.

    Attributes:
        given: the path as given (``--pruning.masks_file``), which errors name.
        path: the file's resolved path.
        masks: its keep-masks (uint8), checked by :func:`load_masks`.
        metadata: its metadata.
        data: its bytes, as read (what the run directory's copy holds).
        arm: the name of its arm (:func:`masks_arm_name`).
    """

    given: str
    path: str
    masks: dict[str, torch.Tensor]
    metadata: dict[str, str]
    data: bytes
    arm: str

    COPY = "masks.safetensors"

    @classmethod
    def read(cls, masks_file: str | Path) -> MasksSource:
        """Read ``masks_file``; an unreadable file, or one that holds no mask, is refused (:class:`MaskError`)."""
        masks, metadata = load_masks(masks_file)
        if not masks:
            raise MaskError(f"masks file {masks_file!r} holds no masks")
        path = Path(masks_file)
        return cls(str(masks_file), str(path.resolve()), masks, metadata, path.read_bytes(), masks_arm_name(masks_file))

    def record(self) -> dict[str, str]:
        """Where the masks came from, for the manifest: ``path``, ``sha256``, ``copy`` (the copy's file name in the
        run directory) and ``arm``."""
        return {"path": self.path, "sha256": hashlib.sha256(self.data).hexdigest(), "copy": self.COPY, "arm": self.arm}

    def check(self, layout: UnitLayout) -> dict[str, torch.Tensor]:
        """The masks, once they fit the model's units (:func:`validate_masks`)."""
        validate_masks(self.masks, layout, source=self.given)
        return self.masks

    def use(self, layout: UnitLayout, run_dir: str | Path, write: bool = True) -> dict[str, torch.Tensor]:
        """The masks, once they fit the model, with the file's bytes copied to ``run_dir/masks.safetensors`` (when
        ``write``: rank 0) unless that is the file itself, so that the run directory alone shows what was evaluated."""
        self.check(layout)
        copy = Path(run_dir) / self.COPY
        if write and not (copy.exists() and copy.resolve() == Path(self.path)):
            atomic_write_bytes(copy, self.data)
        return self.masks


def _head_view(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)


def apply_masks(model: torch.nn.Module, layout: UnitLayout, masks: Mapping[str, torch.Tensor]) -> HookSet:
    """Reversible pruning: hooks that zero pruned units. Call ``.remove()`` (or use ``with``) to undo."""
    validate_masks(masks, layout)
    hooks = HookSet()
    try:
        for key, keep in masks.items():
            if bool(keep.all()):
                continue
            kind, path = key.split("/", 1)
            if kind == "neuron":
                unit = layout.neuron(path)
                k = keep.to(unit.module.weight.device, unit.module.weight.dtype)
                hooks.forward(unit.module, lambda mod, args, out, k=k: out * k)
            else:
                head = layout.head(path)
                k = keep.to(head.o_proj.weight.device, head.o_proj.weight.dtype)[:, None]

                def zero_heads(mod, args, k=k, n=head.n_heads):
                    x = args[0]
                    return ((_head_view(x, n) * k).reshape(x.shape), *args[1:])

                hooks.forward_pre(head.o_proj, zero_heads)
    except BaseException:
        hooks.remove()
        raise
    return hooks


def _weight_slices(layout: UnitLayout, masks: Mapping[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, tuple]]:
    """(tensor, index) pairs whose entries a hard prune sets to zero."""
    for key, keep in masks.items():
        kind, path = key.split("/", 1)
        pruned = (keep == 0).nonzero().flatten().tolist()
        if not pruned:
            continue
        if kind == "neuron":
            mod = layout.neuron(path).module
            idx = torch.tensor(pruned, device=mod.weight.device)
            yield mod.weight, (idx,)
            if mod.bias is not None:
                yield mod.bias, (idx,)
        else:
            head = layout.head(path)
            d = head.head_dim
            cols = torch.cat([torch.arange(h * d, (h + 1) * d) for h in pruned]).to(head.o_proj.weight.device)
            yield head.o_proj.weight, (slice(None), cols)


@torch.no_grad()
def harden_masks(model: torch.nn.Module, layout: UnitLayout, masks: Mapping[str, torch.Tensor]) -> None:
    """Hard pruning: zero the weights of pruned units in place (weight rows / ``o_proj`` columns)."""
    validate_masks(masks, layout)
    for tensor, index in _weight_slices(layout, masks):
        tensor[index] = 0


@contextlib.contextmanager
def _hardened(model: torch.nn.Module, layout: UnitLayout, masks: Mapping[str, torch.Tensor]):
    """Temporarily hard-prune, keeping only the zeroed slices to restore (not a copy of the model)."""
    validate_masks(masks, layout)
    saved = []
    try:
        with torch.no_grad():
            for tensor, index in _weight_slices(layout, masks):
                saved.append((tensor, index, tensor[index].clone()))
                tensor[index] = 0
        yield
    finally:
        with torch.no_grad():
            for tensor, index, values in reversed(saved):
                tensor[index] = values


def export_pruned(
    model: torch.nn.Module,
    tokenizer,
    layout: UnitLayout,
    masks: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write a standard Hugging Face checkpoint with the pruned weights zeroed (``save_pretrained``).

    Any transformers user can load it with ``AutoModelForCausalLM.from_pretrained(out_dir)``; the masks
    travel beside it as ``masks.safetensors``. The in-memory model is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _hardened(model, layout, masks):
        model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    save_masks(out_dir / "masks.safetensors", masks, dict(metadata or {}))
    return out_dir
