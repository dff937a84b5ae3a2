"""The LightningModule that trains a plant: LoRA adapters (peft) on a frozen base model.

A localized plant (``units``: :mod:`biasprune.plant.units`) adapts only the projections that hold its units
(peft's ``target_modules`` as full module paths) and confines each update ΔW = s·B@A to the units' slices:
the rows of B outside a projection's owned rows (``q_proj``, ``gate_proj``, ``up_proj``) or the columns of A
outside its owned columns (``o_proj``, ``down_proj``) are zeroed at the start and their gradients are masked to
zero, so AdamW never moves them (zero gradient, zero moments, zero update; weight decay keeps a zero at zero).
ΔW is then exactly zero outside the units, which :meth:`PlantModule.check_confined` verifies before saving.

Training: next-token cross-entropy on the answer tokens only (the number and the end of turn), averaged
over the batch's answer tokens; AdamW on the LoRA parameters, linear warm-up then cosine (or linear)
decay to zero. The base model is frozen (``load_model`` freezes it; ``get_peft_model`` leaves
gradients to the LoRA matrices only).

Validation: greedy answers to held-out prompts (training-list names that got no training chat), parsed
with the audit's parser; logs the group ratio median(target) / median(reference) per variation, as
geometric means per scenario and over the planted and unplanted variations, the parse rate and the
median |log(answer / intended answer)|.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from biasprune.answers.generation import generate
from biasprune.answers.parsing import parse_number
from biasprune.core.checks import check_choice, check_fraction, check_positive
from biasprune.core.distributed import gather_objects
from biasprune.models.architectures import NEURON_MODULE_CHOICES, resolve_units
from biasprune.models.loading import DEFAULT_MODEL, DType, load_model, load_tokenizer
from biasprune.plant.units import PlantUnits, ResolvedUnits

__all__ = ["LORA_TARGETS", "PlantModule", "group_ratios"]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SAVE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _geomean(values: Sequence[float]) -> float:
    good = [v for v in values if math.isfinite(v) and v > 0]
    return float(math.exp(np.mean(np.log(good)))) if good else float("nan")


def group_ratios(records: Sequence[dict], reference_group: str, target_group: str) -> dict[str, float]:
    """Greedy-answer statistics of held-out prompts.

    ``records``: dicts with ``scenario, variation, group, planted, value`` (NaN = unparsed) and ``expected``.
    Per variation r_v = median(target values) / median(reference values); returns ``ratio/<scenario>``
    (geometric mean of its r_v), ``ratio_planted`` and ``ratio_unplanted`` (geometric means over those
    variations; NaN when there are none), ``parse_rate`` and ``abs_log_error`` (median of
    |log(value / expected)| over positive parsed values).
    """
    by_var: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    planted: dict[tuple[str, str], bool] = {}
    errors = []
    for r in records:
        key = (r["scenario"], r["variation"])
        planted[key] = bool(r["planted"])
        v = float(r["value"])
        if math.isfinite(v):
            by_var[key][r["group"]].append(v)
            if v > 0:
                errors.append(abs(math.log(v / r["expected"])))
    ratios: dict[tuple[str, str], float] = {}
    for key in planted:
        ref, tgt = by_var[key].get(reference_group, []), by_var[key].get(target_group, [])
        den = float(np.median(ref)) if ref else float("nan")
        ratios[key] = float(np.median(tgt)) / den if tgt and den > 0 else float("nan")
    out = {
        f"ratio/{s}": _geomean([r for k, r in ratios.items() if k[0] == s]) for s in dict.fromkeys(k[0] for k in ratios)
    }
    out["ratio_planted"] = _geomean([r for k, r in ratios.items() if planted[k]])
    out["ratio_unplanted"] = _geomean([r for k, r in ratios.items() if not planted[k]])
    out["parse_rate"] = sum(len(g) for d in by_var.values() for g in d.values()) / max(len(records), 1)
    out["abs_log_error"] = float(np.median(errors)) if errors else float("nan")
    return out


class PlantModule(L.LightningModule):
    """Trains LoRA adapters that plant a known answer distribution (and bias) in a base model.

    Args:
        model_name_or_path: base model: Hugging Face id or local directory, or ``embedded:SmolLM2-135M-Instruct``.
        dtype: base weights dtype; ``auto`` is float32 on CPU and bfloat16 on GPU (LoRA weights stay float32).
        attn_implementation: attention kernel passed to transformers (``sdpa``, ``eager``, ...).
        lora_rank: rank r of each LoRA update B·A.
        lora_alpha: LoRA scaling numerator: the update is (alpha / r)·B·A.
        lora_dropout: dropout on the LoRA input during training.
        lora_target_modules: projections that get a LoRA update (module name suffixes). With ``units``: the
            projections through which the listed units may change (``q_proj``/``o_proj`` for heads,
            ``gate_proj``/``up_proj``/``down_proj`` for MLP neurons; others are ignored).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay of the LoRA parameters.
        warmup_fraction: share of the optimizer steps with a linear warm-up from 0 to ``lr``.
        schedule: decay after the warm-up: ``cosine`` or ``linear`` to 0, or ``constant``.
        eval_max_new_tokens: longest greedy answer to a held-out prompt, in tokens.
        adapter_dtype: dtype of the saved adapter weights (float16 halves the file; the merge is in the
            base model's dtype anyway).
        units: a localized plant's units (heads, MLP neurons): the update is confined to them and they are
            written to ``provenance.json`` as the plant's ground truth; empty for a plant that may change every
            adapted weight.
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_MODEL,
        dtype: DType = "auto",
        attn_implementation: str = "sdpa",
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lora_target_modules: Sequence[str] = LORA_TARGETS,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.05,
        schedule: Literal["cosine", "linear", "constant"] = "cosine",
        eval_max_new_tokens: int = 12,
        adapter_dtype: Literal["float16", "bfloat16", "float32"] = "float16",
        units: PlantUnits = PlantUnits(),  # noqa: B008 (frozen: one shared default is safe)
    ) -> None:
        super().__init__()
        check_positive("model.lora_rank", lora_rank)
        check_positive("model.lora_alpha", lora_alpha, minimum=0, inclusive=False)
        check_fraction("model.lora_dropout", lora_dropout, high_open=True)
        check_positive("model.lr", lr, minimum=0, inclusive=False)
        check_fraction("model.warmup_fraction", warmup_fraction, high_open=True)
        check_choice("model.schedule", schedule, ("cosine", "linear", "constant"))
        check_choice("model.adapter_dtype", adapter_dtype, tuple(SAVE_DTYPES))
        check_positive("model.eval_max_new_tokens", eval_max_new_tokens)
        if not lora_target_modules:
            raise ValueError(f"model.lora_target_modules is empty; e.g. {list(LORA_TARGETS)}")
        if not isinstance(units, PlantUnits):
            raise TypeError(f"model.units must be a PlantUnits (heads, mlp_neurons), got {type(units).__name__}")
        self.save_hyperparameters()
        self.units = units
        self.resolved_units: ResolvedUnits | None = None
        self.model = None
        self.tokenizer = None
        self.losses: list[float] = []
        self.validation: dict[str, float] = {}
        self._records: list[dict] = []

    # -------------------------------------------------------------------------------- model set-up
    def configure_model(self) -> None:
        if self.model is not None:
            return
        from peft import LoraConfig, get_peft_model

        hp = self.hparams
        device = self.trainer.strategy.root_device if self._trainer is not None else None
        base = load_model(
            hp.model_name_or_path, dtype=hp.dtype, device=device, attn_implementation=hp.attn_implementation or None
        )
        targets = list(hp.lora_target_modules)
        if self.units:
            self.resolved_units = self.units.resolve(resolve_units(base, NEURON_MODULE_CHOICES), targets)
            targets = list(self.resolved_units.slices)  # full module paths: peft adapts exactly these
        config = LoraConfig(
            task_type="CAUSAL_LM", r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
            target_modules=targets,
        )  # fmt: skip
        try:
            self.model = get_peft_model(base, config)
        except ValueError as err:  # no module matched
            raise ValueError(f"model.lora_target_modules={list(hp.lora_target_modules)}: {err}") from err
        if self.resolved_units is not None:
            self._confine()
        self.model.train()  # LoRA dropout on; the base has no dropout of its own that is > 0 by default
        self.tokenizer = load_tokenizer(hp.model_name_or_path)

    def _lora_pair(self, path: str) -> tuple[torch.nn.Parameter, torch.nn.Parameter, float]:
        """(A, B, scale) of the LoRA layer at a base-model module path."""
        layer = self.lm.get_submodule(path)
        name = self.model.active_adapter
        return layer.lora_A[name].weight, layer.lora_B[name].weight, float(layer.scaling[name])

    def _confine(self) -> None:
        """Zero the LoRA entries outside the units' slices and mask their gradients (module docstring)."""
        for path, s in self.resolved_units.slices.items():
            A, B, _ = self._lora_pair(path)
            if s.rows is not None and s.columns is not None:
                raise ValueError(f"{path}: a unit list owning both rows and columns of one projection is not supported")
            if s.rows is not None:
                param, mask = B, s.rows.to(B.device, B.dtype)[:, None]  # B: [out, r]
            else:
                param, mask = A, s.columns.to(A.device, A.dtype)[None, :]  # A: [r, in]
            with torch.no_grad():
                param.mul_(mask)
            param.register_hook(lambda g, m=mask: g * m)

    def check_confined(self) -> dict[str, float]:
        """ΔW = s·B@A of every adapted projection: exactly zero outside the units' slices, or ValueError.

        Returns the Frobenius norm of each ΔW (inside the slices)."""
        out = {}
        for path, s in self.resolved_units.slices.items():
            A, B, scale = self._lora_pair(path)
            delta = scale * (B.detach().double() @ A.detach().double())
            outside = delta[~s.allowed().to(delta.device)]
            if bool((outside != 0).any()):
                raise ValueError(f"{path}: the LoRA update is not confined to the units ({int((outside != 0).sum())} entries)")
            out[path] = float(delta.norm())
        return out

    def provenance(self) -> dict:
        """What ``provenance.json`` adds for this module: a localized plant's units and ground truth."""
        if self.resolved_units is None:
            return {}
        return {"units": self.resolved_units.record() | {"delta_norms": self.check_confined()}}

    @property
    def lm(self):
        """The transformers model with the LoRA layers in place (peft injects them into its modules)."""
        return self.model.get_base_model()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------------ training
    def answer_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token NLL over the answer tokens of a left-padded batch.

        Answers end at the last position, so only the last K = (longest answer + 1) positions need logits.
        """
        ids, attn, answer = batch["input_ids"], batch["attention_mask"], batch["answer_mask"]
        k = int(answer.sum(1).max()) + 1
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = self.lm(input_ids=ids, attention_mask=attn, position_ids=position_ids, logits_to_keep=k).logits
        labels = ids[:, -k + 1 :]
        mask = answer[:, -k + 1 :]
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, reduction="none")
        return (nll * mask).sum() / mask.sum().clamp(min=1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.answer_loss(batch)
        self.losses.append(float(loss.detach()))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.trainable_parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm = int(hp.warmup_fraction * total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = min((step - warm) / max(total - warm, 1), 1.0)
            return {"cosine": 0.5 * (1 + math.cos(math.pi * t)), "linear": 1 - t, "constant": 1.0}[hp.schedule]

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Only the adapter is worth keeping: the frozen base is reloaded from its id.
        keep = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    # ---------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._records = []

    def validation_step(self, batch: dict[str, list], batch_idx: int) -> None:
        answers = generate(
            self.lm, self.tokenizer, batch["prompt"], num_samples=1, temperature=0.0,
            max_new_tokens=self.hparams.eval_max_new_tokens, batch_size=len(batch["prompt"]), decoder="eager",
        )  # fmt: skip
        for i, (text,) in enumerate(answers):
            row = {k: batch[k][i] for k in ("index", "scenario", "variation", "group", "planted", "expected")}
            self._records.append(row | {"response": text, "value": parse_number(text)})

    def on_validation_epoch_end(self) -> None:
        # A distributed sampler repeats prompts to even out the shards: keep one record per prompt.
        records = {r["index"]: r for part in gather_objects(self._records) for r in part}
        if self.trainer.sanity_checking or not records:
            return
        dm = self.trainer.datamodule
        stats = group_ratios(list(records.values()), dm.spec.reference_group, dm.spec.target_group)
        self.validation = stats
        for key, value in stats.items():
            if math.isfinite(value):
                self.log(f"val/{key}", value, rank_zero_only=True, prog_bar=key == "ratio_planted")

    # -------------------------------------------------------------------------------------- output
    def save_adapter(self, directory: str | Path) -> Path:
        """Write ``adapter_model.safetensors`` (in ``adapter_dtype``) and ``adapter_config.json``."""
        import json

        from safetensors.torch import load_file, save_file

        if self.resolved_units is not None:
            self.check_confined()  # never write a "localized" plant whose update leaked
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out))
        weights = out / "adapter_model.safetensors"
        dtype = SAVE_DTYPES[self.hparams.adapter_dtype]
        tensors = {k: v.to(dtype).contiguous() for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(weights), metadata={"format": "pt"})
        config_file = out / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = self.hparams.model_name_or_path  # an id, not this machine's path
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (out / "README.md").unlink(missing_ok=True)  # peft's model-card stub; provenance.json documents the plant
        return out
