"""The mechanism artifact of a run: the name attention of every head, the pruned ones marked (``name_attention.csv``).

After the pruning callback has selected its masks, :func:`write_name_attention` takes ``n_pairs`` name-swapped
pairs of the run's scoring examples (spread over them: every ⌈len/n⌉-th pair in length order), measures n_h for every
head (:mod:`biasprune.localize.attention`: the mean attention of the answer positions to the name tokens), and
writes one row per head: its mean over the 2·n_pairs sequences, their standard deviation, whether the pruned arm
zeroes it and its rank among all heads (1 = most attention to the name). The report (``What was pruned``) draws it;
TensorBoard gets the pruned heads' and all heads' means as scalars and the distribution as a histogram.

:func:`record_name_attention` is the pruning callback's step: it runs :func:`write_name_attention` on the run's
scoring examples when the masks prune a head, and says in the log why it was skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from biasprune.callbacks.monitor import tensorboard
from biasprune.core import artifacts
from biasprune.data.names import AuditDataError
from biasprune.localize.attention import name_attention
from biasprune.localize.objective import pair_items
from biasprune.localize.pairs import NamePair
from biasprune.models.architectures import UnitLayout

__all__ = ["COLUMNS", "FILE", "head_rows", "record_name_attention", "spread", "write_name_attention"]

FILE = "name_attention.csv"
COLUMNS = ("key", "layer", "head", "name_attention", "sd", "n_sequences", "pruned", "rank", "n_heads_total")


def spread(rows: Sequence, n: int) -> list:
    """``n`` rows spread evenly over ``rows`` (all of them when there are no more than ``n``)."""
    if n >= len(rows):
        return list(rows)
    return [rows[i * len(rows) // n] for i in range(n)]


def head_rows(values: Mapping[str, torch.Tensor], layout: UnitLayout, masks: Mapping[str, torch.Tensor]) -> list[dict]:
    """One row per head (``COLUMNS``) from :func:`~biasprune.localize.attention.name_attention`'s values and the
    keep-masks (a head is pruned where its ``head/<path>`` mask is 0; a head group without a mask is kept)."""
    layers = {f"head/{h.path}": h.layer for h in layout.heads}
    rows = []
    for key, v in values.items():
        keep = masks.get(key)
        for i in range(v.shape[1]):
            col = v[:, i]
            rows.append({"key": key, "layer": layers[key], "head": i, "name_attention": float(col.mean()),
                         "sd": float(col.std()) if len(col) > 1 else 0.0, "n_sequences": len(col),
                         "pruned": int(keep is not None and int(keep[i]) == 0)})  # fmt: skip
    order = sorted(range(len(rows)), key=lambda j: -rows[j]["name_attention"])
    for rank, j in enumerate(order, 1):
        rows[j]["rank"] = rank
        rows[j]["n_heads_total"] = len(rows)
    return rows


def write_name_attention(run_dir: str | Path, model, layout: UnitLayout, tokenizer, examples: Sequence[dict],
                         variations: Sequence[str], groups: Sequence[str], masks: Mapping[str, torch.Tensor],
                         n_pairs: int, experiment=None, write: bool = True) -> list[dict]:
    """Measure, write ``FILE`` into ``run_dir`` (when ``write``: rank 0) and log to ``experiment`` (a TensorBoard
    ``SummaryWriter``, optional); returns the rows. Every rank may call it (the same forward passes everywhere)."""
    items = spread(pair_items(tokenizer, examples, examples, variations, groups), n_pairs)
    pairs = [NamePair(r["target"], r["reference"], r["target_answer"], r["reference_answer"]) for r in items]
    rows = head_rows(name_attention(model, layout, pairs), layout, masks)
    if write:
        artifacts.write_csv(Path(run_dir) / FILE, rows, COLUMNS)
    if experiment is not None:
        values = torch.tensor([r["name_attention"] for r in rows])
        pruned = [r["name_attention"] for r in rows if r["pruned"]]
        experiment.add_scalar("mechanism/name_attention_all_heads", float(values.mean()), 0)
        if pruned:
            experiment.add_scalar("mechanism/name_attention_pruned_heads", sum(pruned) / len(pruned), 0)
            experiment.add_scalar("mechanism/pruned_heads_best_rank", min(r["rank"] for r in rows if r["pruned"]), 0)
        experiment.add_histogram("mechanism/name_attention", values, 0)
        experiment.flush()
    return rows


def record_name_attention(trainer: L.Trainer, pl_module, masks: Mapping[str, torch.Tensor], n_pairs: int) -> None:
    """``name_attention.csv`` for masks that prune heads, on ``n_pairs`` pairs of the run's scoring examples (0: none).
    Every rank runs the same passes; rank 0 writes and logs. ``pl_module``: its ``run_dir``, ``model``, ``layout`` and
    ``tokenizer``."""
    dm = trainer.datamodule
    if not n_pairs or not any(k.startswith("head/") and bool((m == 0).any()) for k, m in masks.items()):
        return
    examples = getattr(dm, "scoring_examples", None)
    if not examples or getattr(pl_module, "tokenizer", None) is None:
        rank_zero_info("name attention skipped: this run has no scoring examples to take name-swapped pairs from")
        return
    experiment = tensorboard(trainer)
    try:
        rows = write_name_attention(pl_module.run_dir, pl_module.model, pl_module.layout, pl_module.tokenizer, examples,
                                    dm.scoring_variations, dm.groups, masks, n_pairs,
                                    experiment if trainer.global_rank == 0 else None, write=trainer.global_rank == 0)
    except AuditDataError as err:  # e.g. a prompt file without pair ids
        rank_zero_info(f"name attention skipped: {err}")
        return
    pruned = [r["name_attention"] for r in rows if r["pruned"]]
    rank_zero_info(f"name attention: pruned heads {sum(pruned) / len(pruned):.3f}, all heads"
                   f" {sum(r['name_attention'] for r in rows) / len(rows):.3f} (name_attention.csv)")
