"""The cross-context transfer matrix of one model and one method, as ``biasprune study --study.transfer true`` runs it:

    python -m benchmarks.analysis.transfer_matrix MODEL_ID --method {masks,direction} --out DIR
        [--evaluation purchase/car,finance/childcare_expenses,...] [--samples 4] [--random-draws 2] [--layers early] [--layer-candidates "2;early"] [--positions prompt|name]
        [--accelerator gpu] [--names FILE] [--max-new-tokens 16] [--eval-batch-size 64]

One fit scores each source scenario's evaluated variations on scoring names (``nll`` for masks, ``direction`` for the
direction arm), one validate answers every evaluated variation on test names with the unpruned model, each source's
arm and its random controls (with ``--layer-candidates``, a dev-name stage first chooses each source's direction
layers among them: ``transfer_direction_layers.csv``); DIR receives ``transfer_<method>.csv``, ``transfer_<method>.png``,
``transfer_<method>_rows.json``, ``settings.json`` and the run directory (scores, answers, TensorBoard). The matrix is
printed at the end. docs/method.md, "Transfer matrix", gives the cell and row rules.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger

from biasprune.answers.answering import TargetConfig
from biasprune.answers.generation import GenerationConfig
from biasprune.callbacks import PruningCallback
from biasprune.datamodules import AuditDataModule
from biasprune.pipeline.module import BiasPruneModule
from biasprune.stats.rows import EvaluationConfig
from biasprune.study.config import StudyConfig
from biasprune.study.trainer import BiasPruneTrainer

PLANT_EVALUATION = "purchase/car,purchase/piano,finance/childcare_expenses,activity/skiing,service/tax_preparation"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--method", choices=["masks", "direction"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--evaluation", default=PLANT_EVALUATION, help="comma-separated scenario[/variation] selectors")
    ap.add_argument("--samples", type=int, default=4, help="sampled answers per prompt")
    ap.add_argument("--random-draws", type=int, default=2)
    ap.add_argument("--layers", default="early", help="direction: decoder layers edited (early, all, 2, 0-7, 1,4)")
    ap.add_argument("--layer-candidates", default="",
                    help="direction: ';'-separated layer choices, one chosen per source on dev names (e.g. '2;early')")
    ap.add_argument("--positions", choices=["prompt", "name"], default="prompt",
                    help="direction: average over the prompt's tokens but the first (objective direction) or the name's tokens (direction_name)")
    ap.add_argument("--budget", default=None, help="masks: neurons pruned per module (default: the callback's)")
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--names", default="", help="names file (default: the package's)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="answers' and target responses' length")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(vars(args), indent=1))
    evaluation = [s.strip() for s in args.evaluation.split(",") if s.strip()]
    module = BiasPruneModule(
        args.model, dtype=args.dtype, objective=("direction" if args.positions == "prompt" else "direction_name") if args.method == "direction" else "nll",
        targets=TargetConfig(max_new_tokens=args.max_new_tokens),
        generation=GenerationConfig(samples=args.samples, max_new_tokens=args.max_new_tokens),
        evaluation=EvaluationConfig(bootstrap_samples=args.bootstrap, permutation_samples=args.bootstrap),
    )
    data = dict(scoring=evaluation, evaluation=evaluation, tokenizer=args.model, batch_size=args.batch_size,
                eval_batch_size=args.eval_batch_size)
    if args.names:
        data["names"] = args.names
    dm = AuditDataModule(**data)
    cb = PruningCallback(method=args.method, direction_layers=args.layers, random_draws=args.random_draws,
                         budget=args.budget)
    trainer = BiasPruneTrainer(max_epochs=1, accelerator=args.accelerator, devices=1, callbacks=[cb],
                               logger=TensorBoardLogger(out, name="run"), enable_progress_bar=False, enable_model_summary=False)
    candidates = tuple(c.strip() for c in args.layer_candidates.split(";") if c.strip())
    result = trainer.study(module, dm, StudyConfig(output=str(out), transfer=True, transfer_layers=candidates))
    rows = list(csv.DictReader(open(out / f"transfer_{args.method}.csv")))
    print(f"\ntransfer matrix ({args.method}, {args.model}): cut in mean |SMD| [95% interval] verdict")
    for r in rows:
        print(f"  {r['source']:>10} -> {r['target']:<10} {float(r['cut']):+.3f} [{float(r['cut_ci_low']):+.3f},"
              f" {float(r['cut_ci_high']):+.3f}]  inlier x{float(r['inlier_vs_unpruned']):.2f}"
              f"  parse x{float(r['parse_vs_unpruned']):.2f}  {r['verdict']}")
    for s, v in result.get("rows", {}).items():
        print(f"  row {s}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
