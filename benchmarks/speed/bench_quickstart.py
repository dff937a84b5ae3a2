"""The README's main job before and after a change, side by side: wall time and each stage's time.

    python -m benchmarks.speed.bench_quickstart --out out/quickstart                 # eaf2c35 against this checkout
    python -m benchmarks.speed.bench_quickstart --out out/qs --before main --rounds 2 -- --trainer.max_epochs 1

Two source trees are installed, without dependencies, into directories under ``--out`` (``pip install --no-deps
--target``), so that both run with this environment's packages and neither with the other's code: ``before``,
the git revision ``--before`` (``git archive``; default eaf2c35, the commit these measurements started from),
and ``after``, this checkout's working tree as it is, or the revision ``--after`` (a commit, or the tree id that
``git merge-tree --write-tree A B`` prints for a merge not yet made). Each run is a fresh ``python -m biasprune fit --config
configs/quickstart.yaml`` process (extra flags after ``--``) whose run directory lies under ``--out``; the runs
alternate (before, after, then after, before, ...) so that a burst of load from other processes on a shared
machine does not fall on one tree only. The converted model must already be in the cache (``BIASPRUNE_CACHE``).

Written to ``--out/quickstart.json`` and printed: per run the wall time, the stages of its ``timings.json``
(model load, target responses, scoring, evaluation), the rest (imports, Lightning start-up, statistics, the
report), the peak resident memory and the run's summary table; then the fastest run of each tree and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import date
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("load_model", "target_responses", "scoring", "evaluation")

# Runs the CLI in this interpreter and writes the peak resident memory (KiB) at exit, whatever the exit status.
_CHILD = """
import atexit, json, resource, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps({"max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})))
from biasprune.cli import main
main(sys.argv[2:])
"""


def install(src: Path, target: Path, log: Path) -> None:
    """``pip install --no-deps --target`` of a source tree (a wheel built with this environment's setuptools)."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(src)]
    with log.open("a") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)


def export(revision: str, dest: Path) -> str:
    """The tree of ``revision`` (``git archive``) in ``dest``; its full commit (or tree) hash."""
    commit = subprocess.run(["git", "rev-parse", revision], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    data = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return commit


def working_tree(dest: Path) -> str:
    """This checkout's tracked and untracked, not ignored, files (as they are now) in ``dest``."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return head + ("+uncommitted changes" if dirty.strip() else "")


def summary_lines(text: str) -> list[str]:
    """The summary table and the claims of a run's output."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("bias on the test names")), None)
    if start is None:
        return []
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("(run directory")), len(lines))
    return lines[start:end]


def run_once(tree: str, src: Path, site: Path, out: Path, label: str, config: str, extra: list[str], threads: int = 0) -> dict:
    """One ``biasprune fit`` process of ``tree``; its figures."""
    save_dir = out / "runs" / label
    rss_file = out / f"{label}.rss.json"
    cmd = [sys.executable, "-c", _CHILD, str(rss_file), "fit", "--config", str(src / config),
           "--trainer.logger.init_args.save_dir", str(save_dir), *extra]
    env = dict(os.environ, PYTHONPATH=str(site))
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    # cwd: a directory without a source tree, so that only the installed copy can be imported
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (out / f"{label}.log").write_text(proc.stdout + proc.stderr)
    rec = {"tree": tree, "label": label, "wall_s": round(wall, 2), "exit": proc.returncode}
    timings = sorted(save_dir.glob("*/version_*/timings.json"))
    if timings:
        stages = json.loads(timings[-1].read_text())
        rec["stages"] = stages
        rec["rest_s"] = round(wall - sum(stages.values()), 2)
    if rss_file.is_file():
        rec["peak_rss_gib"] = round(json.loads(rss_file.read_text())["max_rss_kib"] / 2**20, 2)
    rec["summary"] = summary_lines(proc.stdout + proc.stderr)
    return rec


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the installs, run directories, logs and quickstart.json")
    parser.add_argument("--before", default="eaf2c35", help="git revision of the 'before' tree (default: eaf2c35)")
    parser.add_argument("--after", default=None,
                        help="git revision (or tree id) of the 'after' tree (default: this checkout's working tree as it is)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each tree (alternating; default 1)")
    parser.add_argument("--config", default="configs/quickstart.yaml", help="the job's config, relative to each tree")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of each run (OMP_NUM_THREADS; default 0: torch's choice, one per core). On a"
                             " machine shared with other jobs, 1 avoids stalls at every operator's thread barrier")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    trees: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as tmp:
        for tree in ("before", "after"):
            src = Path(tmp) / tree
            src.mkdir()
            if tree == "before" or args.after:
                revision = export(args.before if tree == "before" else args.after, src)
            else:
                revision = working_tree(src)
            site = out / f"site-{tree}"
            install(src, site, out / "install.log")
            trees[tree] = {"src": src, "site": site, "revision": revision}
            print(f"{tree}: {revision} installed in {site}", flush=True)
        runs = []
        for r in range(args.rounds):
            for tree in ("before", "after") if r % 2 == 0 else ("after", "before"):
                t = trees[tree]
                rec = run_once(tree, t["src"], t["site"], out, f"{tree}_{r}", args.config, extra, args.threads)
                runs.append(rec)
                print(f"round {r} {tree}: {rec['wall_s']} s, exit {rec['exit']}, stages {rec.get('stages')}", flush=True)
    best = {tree: min((r for r in runs if r["tree"] == tree and r["exit"] == 0), key=lambda r: r["wall_s"], default=None)
            for tree in trees}
    result = {
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
        "command": ["python", "-m", "biasprune", "fit", "--config", args.config, *extra],
        "threads": args.threads or "torch default",
        "revisions": {tree: t["revision"] for tree, t in trees.items()},
        "runs": runs,
        "best": best,
    }
    if best["before"] and best["after"]:
        result["ratio_wall"] = round(best["before"]["wall_s"] / best["after"]["wall_s"], 3)
    (out / "quickstart.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'':22}" + "".join(f"{tree:>12}" for tree in trees))
    for key in ("wall_s", *STAGES, "rest_s", "peak_rss_gib"):
        cells = []
        for tree in trees:
            rec = best[tree] or {}
            value = rec.get(key, rec.get("stages", {}).get(key))
            cells.append(f"{value:>12}" if value is not None else f"{'-':>12}")
        print(f"{key:22}" + "".join(cells))
    if "ratio_wall" in result:
        print(f"\nbefore / after (wall): {result['ratio_wall']}x")
    for tree in trees:
        print(f"\n{tree} ({trees[tree]['revision']}):\n" + "\n".join((best[tree] or {}).get("summary", [])))
    return 0 if all(best.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
