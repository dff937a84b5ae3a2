"""Reading a run directory for the report: its state, its files checked against the manifest, then the tables.

:func:`load_run` first checks what the run directory claims (docs/failures.md):

* the run's state: a manifest still at ``running`` (killed, or not done yet), ``interrupted`` or ``failed`` is a
  run that did not finish (last stage, and how to resume it or why it failed);
* every file the manifest lists: present, the same size and sha256, and for CSV/JSONL the same number of rows;
* every result table and answers file: each row readable (a CSV row with as many fields as its header, a JSONL
  line that is a JSON object). A problem names the file and the file's own line number (``answers.jsonl:57``),
  or the line of manifest.json that holds the recorded value.

Any problem refuses the report (:class:`ReportError`, every problem listed); ``force=True`` reads what is there
and hands the problems to the page, which shows them in a banner. Columns are read by name and every optional
column may be missing (older or newer runs); numbers are parsed on use (:func:`num`), so a table with extra
columns or an empty cell never stops the report.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biasprune.core.artifacts import sha256_file
from biasprune.core.errors import ConfigError

__all__ = ["ReportError", "RunArtifacts", "check_files", "iter_answers", "layer_and_kind", "load_run", "num", "read_masks",
           "read_table", "run_state", "text"]

KINDS = ("fit", "validate", "study")
REQUIRED = {"fit": ("manifest.json", "metrics.csv"), "validate": ("manifest.json", "metrics.csv"),
            "study": ("manifest.json", "metrics.csv", "results.csv")}
#: Tables and answer files the report reads (checked row by row even when the manifest does not list them).
READ_FILES = ("metrics.csv", "summary.csv", "claims.csv", "grid.csv", "results.csv", "answers.jsonl")


class ReportError(ConfigError):
    """A directory that is not a finished run, or whose files do not match its manifest or cannot be read.

    ``problems``: each problem in one line (file and line number where there is one).
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


def num(row: Mapping[str, object] | None, key: str) -> float:
    """``row[key]`` as a float; NaN when missing, empty or not a number (``True``/``False`` give 1/0)."""
    if row is None:
        return math.nan
    v = row.get(key)
    if isinstance(v, (int, float)):
        return float(v)
    if not isinstance(v, str) or not v.strip():
        return math.nan
    if v in ("True", "False"):
        return float(v == "True")
    try:
        return float(v)
    except ValueError:
        return math.nan


def text(row: Mapping[str, object] | None, key: str) -> str:
    """``row[key]`` as a string ('' when missing)."""
    v = (row or {}).get(key)
    return "" if v is None else str(v)


def _csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return [dict(r) for r in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ReportError(f"{path}: cannot read the table ({err})") from err


def read_table(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV artifact of the run, by column name (a :class:`ReportError` when unreadable)."""
    return _csv(path)


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ReportError(f"{path}: not readable as JSON ({err})") from err


# ----------------------------------------------------------------------------------------- checks
def _line_of(text: str, needle: str) -> int | None:
    """The 1-based line of ``text`` holding ``needle`` (None when absent)."""
    at = text.find(needle)
    return None if at < 0 else text.count("\n", 0, at) + 1


def _rows(path: Path, name: str) -> tuple[int, int, list[str]]:
    """(data rows, last line, problems) of a CSV or JSONL file, each problem with the file's own line number."""
    problems: list[str] = []
    try:
        if path.suffix == ".jsonl":
            n, line_no = 0, 0
            with open(path, encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    n += 1
                    try:
                        obj = json.loads(line)
                    except ValueError as err:
                        problems.append(f"{name}:{line_no}: not valid JSON ({getattr(err, 'msg', err)}, column"
                                        f" {getattr(err, 'colno', '?')})")
                        continue
                    if not isinstance(obj, dict):
                        problems.append(f"{name}:{line_no}: a JSON {type(obj).__name__}, not an object (one record per line)")
            return n, line_no, problems
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return 0, 0, [f"{name}:1: empty file, no header"]
            n = 0
            for record in reader:
                n += 1
                if len(record) != len(header):
                    problems.append(f"{name}:{reader.line_num}: {len(record)} field(s), the header (line 1) has {len(header)}")
            return n, reader.line_num, problems
    except UnicodeDecodeError as err:
        return 0, 0, [f"{name}: not UTF-8 text (byte {err.start})"]
    except csv.Error as err:
        return 0, 0, [f"{name}: not valid CSV ({err})"]


def check_files(run_dir: Path, manifest: Mapping, manifest_text: str) -> list[str]:
    """Every problem of the run's files against its manifest (sizes, checksums, row counts) and of their rows."""
    problems: list[str] = []
    listed = manifest.get("artifacts") if isinstance(manifest.get("artifacts"), dict) else {}
    names = list(listed) + [n for n in READ_FILES if n not in listed and (run_dir / n).is_file()]
    for name in names:
        rec = listed.get(name) if isinstance(listed.get(name), dict) else None
        path = run_dir / name
        where = f"manifest.json:{_line_of(manifest_text, json.dumps(name) + ': {')}"
        if not path.is_file():
            problems.append(f"{name}: missing ({where} lists it{', ' + str(rec.get('bytes')) + ' bytes' if rec else ''})")
            continue
        found: list[str] = []
        if path.suffix in (".csv", ".jsonl"):
            rows, last, bad = _rows(path, name)
            found += bad
            expected = rec.get("rows") if rec else None
            if isinstance(expected, int) and rows != expected and not bad:
                found.append(f"{name}:{last}: the file ends after {rows} row(s) at line {last}; {where} lists {expected} rows"
                             " (the file was cut or edited after the run)")
        if rec and not found:
            size, sha = path.stat().st_size, rec.get("sha256")
            if isinstance(rec.get("bytes"), int) and size != rec["bytes"]:
                found.append(f"{name}: {size} bytes; {where} lists {rec['bytes']} (the file was changed after the run)")
            elif isinstance(sha, str) and sha256_file(path) != sha:
                line = _line_of(manifest_text, sha)
                found.append(f"{name}: its sha256 is not the one manifest.json:{line} records ({sha[:12]}...): the file or the"
                             " manifest was changed after the run")
        problems += found
    return problems


def run_state(manifest: Mapping) -> str | None:
    """Why a run did not finish (None for a finished run, or a manifest older than run states)."""
    from biasprune.pipeline.manifest import process_state

    status, stage = manifest.get("status"), manifest.get("stage", "?")
    if status in (None, "finished"):
        return None
    head = f"this run did not finish (last stage: {stage})"
    if status == "interrupted":
        resume = (manifest.get("resume") or {}).get("command")
        return f"{head}: it was interrupted ({manifest.get('signal', 'a signal')})" + (f"; resume it with: {resume}" if resume else "")
    if status == "failed":
        return f"{head}: it failed ({manifest.get('error', 'no reason recorded')})"
    pid, host = manifest.get("pid"), manifest.get("host")
    alive = process_state(manifest)
    if alive == "alive":
        return f"{head}: its process {pid} on {host} is still running; report it once it has finished"
    if alive == "gone":
        return (f"{head}: its process {pid} on {host} is gone, killed or crashed without a word; start the run again"
                " (a fit run resumes from a checkpoint in checkpoints/ with --ckpt_path, if there is one)")
    return f"{head}: its process {pid} ran on host {host}, which this is not; whether it still runs cannot be told from here"


@dataclass
class RunArtifacts:
    """What the report shows, read from one run directory (nothing else is consulted but plant provenance)."""

    run_dir: Path
    kind: str
    manifest: dict
    metrics: list[dict]
    summary: list[dict]
    claims: list[dict]
    grid: list[dict] = field(default_factory=list)
    bounds: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    config_text: str = ""
    problems: list[str] = field(default_factory=list)

    def file(self, name: str) -> Path:
        return self.run_dir / name

    @property
    def splits(self) -> list[str]:
        """Evaluated splits, test first."""
        return sorted(dict.fromkeys(text(r, "split") for r in self.metrics), key=lambda s: (s != "test", s))

    @property
    def headline_split(self) -> str:
        return self.splits[0] if self.splits else "test"

    @property
    def groups(self) -> tuple[str, str]:
        g = list(self.manifest.get("data", {}).get("groups") or ["reference", "target"])
        return (str(g[0]), str(g[1] if len(g) > 1 else "target"))


def load_run(run_dir: str | Path, force: bool = False) -> RunArtifacts:
    """Read and check a ``fit``, ``validate`` or ``study`` directory; :class:`ReportError` names what is wrong.

    A run that did not finish, or whose files do not match its manifest, is refused with every problem named;
    with ``force`` it is read as it is and the problems are in :attr:`RunArtifacts.problems`.
    """
    d = Path(run_dir)
    expected = ("expected a biasprune run directory: a fit/validate run's version directory (e.g. runs/NAME/version_0)"
                " or a study's --study.output, holding manifest.json and metrics.csv")
    if not d.exists():
        raise ReportError(f"run directory {str(d)!r} does not exist; {expected}")
    if not d.is_dir():
        raise ReportError(f"{str(d)!r} is not a directory; {expected}")
    problems: list[str] = []
    failed = d / "FAILED"
    if failed.is_file():
        reason = failed.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        message = (f"run directory {str(d)!r} is marked FAILED ({reason[0] if reason else 'no reason given'});"
                   " a failed run gets no report: its results are incomplete. Rerun it, or remove FAILED"
                   " only if you know the run finished")
        if not force:
            raise ReportError(message)
        problems.append(message)
    if not (d / "manifest.json").is_file():
        present = sorted(p.name for p in d.iterdir())[:10]
        raise ReportError(f"run directory {str(d)!r} has no manifest.json; {expected}; found {present}")
    manifest = _json(d / "manifest.json")
    if not isinstance(manifest, dict):
        raise ReportError(f"{d / 'manifest.json'}: expected a JSON object, got {type(manifest).__name__}")
    kind = str(manifest.get("kind", ""))
    if kind not in KINDS:
        raise ReportError(f"{d / 'manifest.json'}: field 'kind' is {kind!r}; valid choices: {list(KINDS)}")
    state = run_state(manifest)
    if state is not None and not problems:
        if not force:
            raise ReportError(f"{d}: {state}", [state])
        problems.append(state)
    required = REQUIRED[kind]
    if kind == "study" and any(not p.name.endswith("_layers.csv") for p in d.glob("transfer_*.csv")):
        required = ("manifest.json",)  # a transfer study (--study.transfer) writes its matrices, no results table
    missing = [f for f in required if not (d / f).is_file()]
    if missing and not force:
        raise ReportError(f"run directory {str(d)!r} (a {kind} run) lacks {missing}; the run did not finish writing its results")
    problems += check_files(d, manifest, (d / "manifest.json").read_text(encoding="utf-8", errors="replace"))
    if problems and not force:
        raise ReportError(f"{d}: " + "; ".join(problems) + ". `biasprune report --force` renders it with these problems named", problems)
    summary_file = d / ("results.csv" if kind == "study" else "summary.csv")
    bounds = _json(d / "inlier_bounds.json") if (d / "inlier_bounds.json").is_file() else {}
    timings = _json(d / "timings.json") if (d / "timings.json").is_file() else {}

    def table(name: str) -> list[dict]:
        return _csv(d / name) if (d / name).is_file() else []

    return RunArtifacts(
        run_dir=d, kind=kind, manifest=manifest,
        metrics=table("metrics.csv"),
        summary=table(summary_file.name),
        claims=table("claims.csv"),
        grid=table("grid.csv"),
        bounds=bounds if isinstance(bounds, dict) else {},
        timings=timings if isinstance(timings, dict) else {},
        config_text=(d / "config.yaml").read_text(encoding="utf-8", errors="replace") if (d / "config.yaml").is_file() else "",
        problems=problems,
    )  # fmt: skip


def iter_answers(path: Path, split: str, scenario: str, variation: str, arms: Sequence[str]) -> Iterator[dict]:
    """The answer records of one split and variation for the given arms, streamed from ``answers.jsonl``."""
    wanted = set(arms)
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError:  # named in the report's banner by load_run (only a forced report gets here)
                continue
            if isinstance(r, dict) and r.get("split") == split and r.get("scenario") == scenario and r.get("variation") == variation and r.get("arm") in wanted:
                yield r


def layer_and_kind(key: str) -> tuple[int, str]:
    """``"neuron/model.layers.3.mlp.up_proj"`` -> ``(3, "up_proj")``; ``"head/model.layers.3.self_attn"`` -> ``(3, "heads")``."""
    unit, _, module = key.partition("/")
    m = re.search(r"\.(\d+)(\.|$)", module)
    layer = int(m.group(1)) if m else 0
    return layer, ("heads" if unit == "head" else module.rsplit(".", 1)[-1])


def read_masks(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``masks.safetensors`` as numpy uint8 keep-masks (1 = kept, 0 = pruned) and its metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = dict(fh.metadata() or {})
            masks = {k: np.asarray(fh.get_tensor(k)) for k in sorted(fh.keys())}
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise ReportError(f"{path}: not a readable safetensors file ({err})") from err
    return masks, meta
