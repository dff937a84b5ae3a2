"""The quickstart's evaluation answers by ``generate`` from two source trees, side by side in one run.

    python -m benchmarks.speed.bench_answer_trees --out out/answers --before main   # main against this checkout

The answering of the README's main job without the rest of the run: the planted model of
``configs/quickstart.yaml``, its evaluation prompts (the first ``--prompts`` test rows of the three Purchase
variations, in one batch), ``--samples`` answers each at T = 1 and ``--max-new-tokens`` tokens, through
``biasprune.answers.generation.generate`` with its default decoder, as the module's answering step calls it.
The two trees are installed as ``benchmarks.speed.bench_quickstart`` installs them (``--before`` a git
revision; ``--after`` a revision, or this checkout's working tree by default). Each measurement is a fresh
process of one tree that loads the model, answers a two-prompt warm-up and then times one ``generate`` call;
the trees alternate for ``--rounds`` rounds (before, after, then after, before, ...), so a burst of load from
other processes on a shared machine falls on both. Written to ``--out/answers.json`` and printed: every time,
the fastest of each tree, the ratio, the load average, and how many prompts got the same answers in both trees.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from benchmarks.speed.bench_quickstart import export, install, working_tree

# One measurement in a child process (the tree's own biasprune on PYTHONPATH): argv = out, model, prompts, samples,
# max_new_tokens, threads.
_CHILD = """
import json, sys, time
import torch
out, name, n, k, m, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
torch.set_num_threads(threads)
from biasprune.answers.generation import generate
from biasprune.datamodules import AuditDataModule
from biasprune.models.loading import load_model, load_tokenizer
Q = ["purchase/car", "purchase/bicycle", "purchase/piano"]
dm = AuditDataModule(scoring=Q, evaluation=Q)
dm.setup("validate")
rows = [dict(r) for r in dm.eval_set][:n]
prompts = [r["prompt"] for r in rows]
keys = [r.get("key") or f"{r['scenario']}/{r['variation']}/{r['name']}" for r in rows]
model, tok = load_model(name), load_tokenizer(name)
kw = dict(num_samples=k, temperature=1.0, max_new_tokens=m, seed=0)
generate(model, tok, prompts[:2], keys=keys[:2], batch_size=2, **kw)
start = time.perf_counter()
answers = generate(model, tok, prompts, keys=keys, batch_size=len(prompts), **kw)
seconds = time.perf_counter() - start
json.dump({"s": seconds, "answers": answers}, open(out, "w"))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the installs, logs and answers.json")
    parser.add_argument("--before", default="main", help="git revision of the 'before' tree (default: main)")
    parser.add_argument("--after", default=None, help="git revision or tree id of the 'after' tree (default: the working tree)")
    parser.add_argument("--model", default="embedded:SmolLM2-135M-Instruct+plant:purchase", help="the quickstart's model")
    parser.add_argument("--prompts", type=int, default=40, help="evaluation prompts, one batch (the quickstart's eval_batch_size)")
    parser.add_argument("--samples", type=int, default=8, help="answers per prompt (the quickstart's 8)")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="tokens per answer (the quickstart's 12)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tree, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each process (default 1)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sites, revisions = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-answers-") as tmp:
        for tree in ("before", "after"):
            src = Path(tmp) / tree
            src.mkdir()
            if tree == "before" or args.after:
                revisions[tree] = export(args.before if tree == "before" else args.after, src)
            else:
                revisions[tree] = working_tree(src)
            sites[tree] = out / f"site-{tree}"
            install(src, sites[tree], out / "install.log")
            print(f"{tree}: {revisions[tree]}", flush=True)
    times: dict[str, list[float]] = {"before": [], "after": []}
    answers: dict[str, list] = {}
    for r in range(args.rounds):
        for tree in ("before", "after") if r % 2 == 0 else ("after", "before"):
            rec_file = out / f"{tree}_{r}.json"
            cmd = [sys.executable, "-c", _CHILD, str(rec_file), args.model, str(args.prompts), str(args.samples),
                   str(args.max_new_tokens), str(args.threads)]
            env = dict(os.environ, PYTHONPATH=str(sites[tree]), OMP_NUM_THREADS=str(args.threads))
            proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            rec = json.loads(rec_file.read_text())
            times[tree].append(round(rec["s"], 2))
            answers[tree] = rec["answers"]
            print(f"round {r} {tree}: {rec['s']:.1f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
    best = {tree: min(ts) for tree, ts in times.items()}
    same = sum(a == b for a, b in zip(answers["before"], answers["after"]))
    result = {
        "date": date.today().isoformat(), "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
        "revisions": revisions, "args": {k: str(v) for k, v in vars(args).items()}, "times_s": times, "best_s": best,
        "ratio": round(best["before"] / best["after"], 3), "same_answer_lists": same, "prompts": len(answers["after"]),
    }
    (out / "answers.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"before {best['before']:.1f} s, after {best['after']:.1f} s: before / after {result['ratio']}x;"
          f" the same answers for {same} of {result['prompts']} prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
