"""Writing run artifacts atomically, recording what was written, and refusing an output path that cannot be written.

Each writer renders into a temporary file in the target's directory and renames it into place, so an
error (or a kill) while writing leaves the previous file, or none, behind. The temporary file is created with
mode 0666 less the process umask, like any file the user's shell would create, so results, masks and reports
of a shared results folder are as readable as every other file of the run.

:func:`file_record` gives a file's size, sha256 and (CSV, JSONL) row count, as the run's manifest lists them;
:func:`check_writable_dir` refuses a directory that cannot be created or written, before any work is done.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from biasprune.core.errors import RunDirError

__all__ = [
    "atomic_write_bytes",
    "check_writable_dir",
    "file_record",
    "row_count",
    "sha256_file",
    "read_json",
    "read_jsonl",
    "read_safetensors",
    "write_csv",
    "write_json",
    "write_jsonl",
    "write_safetensors",
]


def _new_temp(path: Path) -> str:
    """Create an empty, unique ``.<name>.<random>.tmp`` beside ``path`` with mode 0666 less the umask.

    (``tempfile.mkstemp`` would make it 0600, and the rename would carry that mode to the result.)
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return str(tmp)
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


@contextlib.contextmanager
def _atomic_target(path: str | Path) -> Iterator[str]:
    """A temporary file beside ``path`` that replaces it on success and disappears on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    mode = os.stat(tmp).st_mode & 0o777  # 0666 less the umask
    try:
        yield tmp
        if os.stat(tmp).st_mode & 0o777 != mode:  # a writer that recreated the file (safetensors makes it 0600)
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with _atomic_target(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Save tensors with string metadata (non-strings are JSON-encoded)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    with _atomic_target(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=meta)
    return Path(path)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata() or {})
    return load_file(str(path)), metadata


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    text = "".join(json.dumps(dict(r), ensure_ascii=False, default=_json_default) + "\n" for r in rows)
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _csv_cell(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_cell(r.get(k, "")) for k in columns})
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


# ----------------------------------------------------------------------------------------- file records
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def row_count(path: str | Path) -> int | None:
    """Data rows of a CSV (records after the header, as ``csv`` reads them) or a JSONL file (non-blank lines);
    None for other files."""
    path = Path(path)
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            return max(sum(1 for _ in csv.reader(fh)) - 1, 0)
    if path.suffix == ".jsonl":
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    return None


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a file, with ``"rows"`` for a CSV or JSONL file (what a manifest lists)."""
    path = Path(path)
    out: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    rows = row_count(path)
    if rows is not None:
        out["rows"] = rows
    return out


def check_writable_dir(path: str | Path, flag: str) -> Path:
    """Create ``path`` (and its parents) if needed and make sure a file can be written in it.

    Raises :class:`~biasprune.core.errors.RunDirError` in one line naming ``flag``, the path and the reason
    (a parent that is a regular file, no permission, a read-only file system) — before any work is done.
    """
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        what = "is" if blocker == path else f"is under {str(blocker)!r}, which is"
        raise RunDirError(f"{flag}: {str(path)!r} {what} a file, not a directory; give a directory path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"{flag}: cannot create the directory {str(path)!r} ({err.strerror or type(err).__name__});"
                          " give a directory you can write to") from None
    try:
        os.unlink(_new_temp(path / "write-test"))
    except OSError as err:
        raise RunDirError(f"{flag}: cannot write in the directory {str(path)!r} ({err.strerror or type(err).__name__});"
                          " give a directory you can write to") from None
    return path
