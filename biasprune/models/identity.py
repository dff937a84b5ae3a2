"""Which weights a model id means: sha256 of the weight and adapter files, cached by path, size and mtime.

A run's fingerprint and its manifest name the model by these digests, so stored results are never reused for
other weights under the same name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from biasprune.models.loading import (
    EMBEDDED_PREFIX,
    SOURCE_MARKER,
    WEIGHT_PATTERNS,
    cache_dir,
    embedded_gguf,
    plant_chain,
    resolve_model_path,
    resolve_plant,
    split_model_id,
)

__all__ = ["cached_sha256", "model_identity", "sha256_files"]


def sha256_files(files: list[Path]) -> str:
    """sha256 of the files' bytes concatenated in the given order (one file: the same as ``sha256sum``)."""
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def cached_sha256(files: list[Path]) -> str:
    """:func:`sha256_files`, cached in ``cache_dir()/sha256.json`` by path, size and mtime of every file.

    An 8B model's weights take a minute to hash; the cache makes later runs free until a file changes.
    """
    from filelock import FileLock

    files = [Path(f).resolve() for f in files]
    key = "|".join(str(f) for f in files)
    stamp = [[f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    store = cache_dir() / "sha256.json"
    table = json.loads(store.read_text()) if store.is_file() else {}
    hit = table.get(key)
    if hit and hit.get("stamp") == stamp:
        return hit["sha256"]
    digest = sha256_files(files)
    store.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(store) + ".lock"):
        table = json.loads(store.read_text()) if store.is_file() else {}
        table[key] = {"stamp": stamp, "sha256": digest}
        tmp = store.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, store)
    return digest


def _local_dir(path: str) -> Path | None:
    if Path(path).is_dir():
        return Path(path)
    try:  # a hub id: its snapshot in the Hugging Face cache, if there is one
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached or not a hub id: the identity then has no hash
        return None


def model_identity(name_or_path: str) -> dict:
    """Which weights an id means: ``id``, ``base``, ``base_path``, ``base_sha256``, ``base_files``, ``plant``,
    ``adapter_path``, ``adapter_sha256`` (the last three None without a plant); for the embedded model also
    ``base_source`` and ``gguf_sha256`` (the shipped file, which other machines convert to the same model).
    With stacked plants (``BASE+plant:A+plant:B``) ``base`` is ``BASE+plant:A``, ``plant`` is B, and
    ``base_adapter_sha256`` lists the sha256 of A's (and any earlier plant's) adapter, in merge order.

    ``base_sha256`` covers the weight files (``model*.safetensors`` or ``pytorch_model*.bin``) in sorted
    name order; it is None when the weights are not on this machine.
    """
    base, plant = split_model_id(name_or_path)
    root, chain = plant_chain(name_or_path)
    base_path = resolve_model_path(root)
    local = _local_dir(base_path)
    weights: list[Path] = []
    if local is not None:
        for pattern in WEIGHT_PATTERNS:
            weights = sorted(local.glob(pattern))
            if weights:
                break
    out = {
        "id": name_or_path,
        "base": base,
        "base_path": str(Path(base_path).resolve()) if local is not None else base_path,
        "base_sha256": cached_sha256(weights) if weights else None,
        "base_files": [w.name for w in weights],
        "plant": plant or None,
        "adapter_path": None,
        "adapter_sha256": None,
    }
    if local is not None and (local / SOURCE_MARKER).is_file():
        out["base_source"] = json.loads((local / SOURCE_MARKER).read_text())
    if root.startswith(EMBEDDED_PREFIX):  # the GGUF file is the same everywhere; its conversion may not be
        out["gguf_sha256"] = cached_sha256([embedded_gguf(root[len(EMBEDDED_PREFIX) :])[1]])
    if len(chain) > 1:
        out["base_adapter_sha256"] = [
            sha256_files([resolve_plant(p, name_or_path) / "adapter_model.safetensors"]) for p in chain[:-1]
        ]
    if plant:
        adapter = resolve_plant(plant, name_or_path)
        out["adapter_path"] = str(adapter.resolve())
        out["adapter_sha256"] = sha256_files([adapter / "adapter_model.safetensors"])
    return out
