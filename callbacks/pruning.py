"""The pruning Callback: turns scores into masks, and gives every evaluation batch its arms.

At the start of a ``validate`` stage it resolves the masks under test: those of ``masks_file``, or, after
``fit`` in the same run, masks selected from the run's scores (docs/method.md, "Selection rules"; ``rule``,
``p``/``q`` or ``budget``), written to ``masks.safetensors`` (and exported as a Hugging Face checkpoint when
asked). It then hands the module its evaluation plan (:class:`biasprune.pruning.arms.EvaluationPlan`): the arms of
each batch, i.e. the unpruned model, the pruned model, and ``random_draws`` random masks that prune the same
number of units per module (neurons) and in total (heads), drawn for each name split separately (seeds by (split,
arm, draw): :meth:`biasprune.pruning.factory.MaskFactory.control_seed`; docs/method.md, "Answers, arms and
metrics"), or the plan given to :meth:`PruningCallback.configure_evaluation` (the study's). It needs only the
:class:`biasprune.pruning.arms.PrunableModule` members of the module, and for the mechanism artifact
(``name_attention.csv``, :mod:`biasprune.callbacks.mechanism`) its ``model`` and ``tokenizer``.

A masks file is copied into the run directory as ``masks.safetensors`` (so the run directory alone shows what was
evaluated), its path and sha256 go to the manifest (:meth:`PruningCallback.run_notes`), and its arm is named after
it (``pruned[quickstart/version_0]``) in every table. A budget that selects no unit is refused: ``0`` when the
callback is built, a fraction under one unit of every pool once the model is loaded (before scoring); a budget
rounded up to one unit in a pool is said in the log and the manifest.

``budget: auto`` (or ``head_budget: auto``) leaves the budget, and the rule among ``auto_rules``, to a choice on dev
names made before the reported stage, by the study's rule (:mod:`biasprune.study.choose`, with the utility guard):
:class:`biasprune.study.trainer.BiasPruneTrainer` makes it (:mod:`biasprune.study.auto`) and hands it over with
:meth:`PruningCallback.configure_choice`.

With ``method="direction"`` the arm under test is not a mask but an affine edit of the residual stream at
``direction_layers``, estimated from the run's ``direction`` sums (docs/method.md, "Directions"): it is written to
``direction.safetensors`` and evaluated beside ``random_draws`` random-direction controls of the same size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from biasprune.callbacks.mechanism import write_name_attention
from biasprune.core.artifacts import atomic_write_bytes
from biasprune.core.checks import check_choice, check_fraction, check_positive
from biasprune.core.errors import ConfigError
from biasprune.data.names import AuditDataError
from biasprune.pipeline.resume import check_fingerprint
from biasprune.pruning.arms import UNPRUNED, Arm, EvaluationPlan, PrunableModule, pruned_counts
from biasprune.pruning.direction import (
    DirectionEdit,
    estimate_direction,
    load_direction,
    parse_layers,
    random_direction,
)
from biasprune.pruning.factory import MaskFactory, MaskSettings
from biasprune.pruning.masks import MaskError, load_masks, save_masks, validate_masks
from biasprune.pruning.rules import SCOPES, RuleSettings, SelectionRule, parse_budget, resolve_rule, rule_name
from biasprune.scoring.accumulate import sum_scores
from biasprune.scoring.objectives import selection_inputs
from biasprune.scoring.scorefile import read_scores, read_scores_meta

__all__ = ["AUTO", "PruningCallback", "masks_arm_name"]

UNITS = ("neurons", "heads", "both")
METHODS = ("masks", "direction")
AUTO = "auto"


def masks_arm_name(masks_file: str | Path) -> str:
    """The arm of a masks file: ``pruned[NAME/version_N]`` for a run's ``masks.safetensors``, else ``pruned[FILE]``."""
    path = Path(masks_file).resolve()
    label = "/".join(path.parts[-3:-1]) if path.name == "masks.safetensors" and len(path.parts) > 2 else path.name
    return f"pruned[{label}]"


class PruningCallback(Callback):
    """Select and save pruning masks, and serve the evaluation arms.

    Args:
        units: which units to prune: ``neurons``, ``heads`` or ``both``.
        rule: how units are chosen from the two groups' scores: ``relative_difference`` (the default, which the
            planted controls favour: docs/results.md), another registered rule, ``set_difference`` (the paper's:
            top q of the target group's scores minus the top p of the reference group's), the dotted path of a
            statistic function ``f(t, r, settings)``, or a :class:`~biasprune.pruning.rules.SelectionRule`
            subclass by ``class_path``/``init_args``; formulas in docs/method.md, "Selection rules".
        p: neurons: fraction of each pool protected as most important for the reference group.
        q: neurons: fraction of each pool considered most important for the target group.
        budget: neurons: units pruned per pool, as a fraction of the pool (``0.005`` or ``"0.5%"``) or a count
            (``12``); with ``set_difference`` it replaces q. ``auto``: chosen on dev names among ``auto_budgets``
            (and the rule among ``auto_rules``) by the study's rule with the utility guard. Empty: p/q decide
            (``set_difference``) or ``DEFAULT_BUDGETS`` of :mod:`biasprune.pruning.factory` (0.5% of each module; a
            ranking rule).
        scope: neurons: ``module`` selects within each projection, ``global`` over all neurons.
        head_p: heads: like ``p``.
        head_q: heads: like ``q``.
        head_budget: heads: like ``budget`` (empty with a ranking rule: ``DEFAULT_BUDGETS``, 3 heads; ``auto``: among
            ``head_auto_budgets``).
        head_scope: heads: ``global`` (over all heads of the model, as in the paper) or ``module``.
        floor_quantile: ``relative_difference`` and ``log_ratio``: the pool quantile of S_t + S_r below which units
            are not candidates (relative_difference) or that floors both scores (log_ratio).
        random_draws: random-mask controls evaluated beside the pruned model (docs/method.md, "Answers, arms and
            metrics"; 0 disables them and with them every claim); the claim judges the arm as one new random mask
            (a prediction interval), so the draws' spread is part of its interval (docs/method.md, "Statistics").
        random_seed: seed from which every random mask's seed is derived, with the split, the arm and the draw.
        auto_budgets: neurons: the budgets ``budget: auto`` chooses among on dev names.
        head_auto_budgets: heads: the budgets ``head_budget: auto`` chooses among.
        auto_rules: the rules ``auto`` chooses among (each with every budget; registered names or dotted paths); empty
            for ``rule`` alone.
        auto_draws: random controls per candidate on dev names (the choice compares each with its own).
        masks_file: evaluate this ``masks.safetensors`` instead of selecting masks from this run's scores (it is
            copied into the run directory and its arm is named after it).
        export_dir: write the pruned model there as a Hugging Face checkpoint (``save_pretrained``).
        log_histograms: log score histograms per unit kind and group to TensorBoard.
        method: ``masks`` (prune units: the arm under test is a keep-mask set) or ``direction`` (the arm under test
            is the difference-of-means edit of the residual stream, estimated from ``model.objective=direction`` or
            ``direction_name`` sums, with random-direction controls; docs/method.md, "Directions").
        direction_layers: ``method=direction``: the decoder layers edited: ``early`` (the first quarter), ``all``,
            one index (``2``), a range (``0-7``) or a list (``1,4``).
        direction_file: ``method=direction``: evaluate this ``direction.safetensors`` instead of estimating one.
        mechanism_pairs: after selecting masks that prune heads, measure on this many name-swapped pairs of the
            scoring examples how much attention the answer positions pay to the name tokens, head by head, and
            write ``name_attention.csv`` (the report's mechanism figure; docs/method.md, "The mechanism of pruned
            heads"); 0 skips it.
    """

    def __init__(
        self,
        units: Literal["neurons", "heads", "both"] = "neurons",
        rule: str | SelectionRule | Callable[[torch.Tensor, torch.Tensor, RuleSettings], torch.Tensor] = "relative_difference",
        p: float = 0.35,
        q: float = 0.40,
        budget: int | float | str | None = None,
        scope: Literal["module", "global"] = "module",
        head_p: float = 0.15,
        head_q: float = 0.15,
        head_budget: int | float | str | None = None,
        head_scope: Literal["module", "global"] = "global",
        floor_quantile: float = 0.5,
        random_draws: int = 5,
        random_seed: int = 0,
        auto_budgets: Sequence[int | float | str] = ("0.1%", "0.25%", "0.5%", "1%"),
        head_auto_budgets: Sequence[int | float | str] = (1, 3, 9),
        auto_rules: Sequence[str] = (),
        auto_draws: int = 1,
        masks_file: str = "",
        export_dir: str = "",
        log_histograms: bool = True,
        mechanism_pairs: int = 8,
        method: Literal["masks", "direction"] = "masks",
        direction_layers: str = "early",
        direction_file: str = "",
    ) -> None:
        check_choice("pruning.method", method, METHODS)
        parse_layers(direction_layers, 4096)  # refuse a malformed choice now; the range is checked on the model
        self.method, self.direction_layers, self.direction_file = method, direction_layers, direction_file
        self.direction: DirectionEdit | None = load_direction(direction_file) if direction_file else None
        if direction_file and method != "direction":
            raise ValueError(f"pruning.direction_file={direction_file!r} needs pruning.method=direction (got {method!r})")
        check_choice("pruning.units", units, UNITS)
        check_choice("pruning.scope", scope, SCOPES)
        check_choice("pruning.head_scope", head_scope, SCOPES)
        for name, v in (("pruning.p", p), ("pruning.q", q), ("pruning.head_p", head_p), ("pruning.head_q", head_q)):
            check_fraction(name, v)
        check_positive("pruning.random_draws", random_draws, minimum=0)
        check_positive("pruning.mechanism_pairs", mechanism_pairs, minimum=0)
        check_positive("pruning.auto_draws", auto_draws, minimum=1)
        check_fraction("pruning.floor_quantile", floor_quantile)
        kinds = {"neurons": ("neuron",), "heads": ("head",), "both": ("neuron", "head")}[units]
        for kind, name, b in (("neuron", "pruning.budget", budget), ("head", "pruning.head_budget", head_budget)):
            if b is not None and b != AUTO:
                parsed = parse_budget(b, flag=name)  # refuse a bad budget now, not after scoring
                if kind in kinds and not (parsed.count or parsed.fraction):
                    raise ConfigError(
                        f"{name}={b!r} selects no unit: nothing would be pruned after the whole run. The smallest useful"
                        " value is the count 1 (one unit per pool) or a fraction above 0 (e.g. '0.5%')"
                    )
        for name, values in (("pruning.auto_budgets", auto_budgets), ("pruning.head_auto_budgets", head_auto_budgets)):
            if not values:
                raise ConfigError(f"{name} is empty: give the budgets that {name.replace('auto_budgets', 'budget')}=auto chooses among")
            for b in values:
                parse_budget(b, flag=name)
        for r in auto_rules:
            resolve_rule(r, "pruning.auto_rules")  # a registered name or a dotted path
        self.units, self.rule, self.p, self.q, self.budget, self.scope = units, rule, p, q, budget, scope
        self.head_p, self.head_q, self.head_budget, self.head_scope = head_p, head_q, head_budget, head_scope
        self.floor_quantile = floor_quantile
        self.random_draws, self.random_seed = random_draws, random_seed
        self.auto_budgets, self.head_auto_budgets = tuple(auto_budgets), tuple(head_auto_budgets)
        self.auto_rules, self.auto_draws = tuple(auto_rules), auto_draws
        self.factory = MaskFactory(rule, scope, head_scope, floor_quantile, random_seed)  # resolves (checks) the rule
        self.chosen: dict[str, Any] | None = None  # the choice on dev names of budget: auto
        self.masks_file, self.export_dir, self.log_histograms = masks_file, export_dir, log_histograms
        self.mechanism_pairs = mechanism_pairs
        self.loaded: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None
        self.masks_source: dict[str, str] = {}
        self._masks_bytes = b""
        if masks_file:
            self.loaded = load_masks(masks_file)  # fail now, before a run starts, on an unreadable file
            if not self.loaded[0]:
                raise MaskError(f"masks file {masks_file!r} holds no masks")
            import hashlib

            self._masks_bytes = Path(masks_file).read_bytes()
            self.masks_source = {"path": str(Path(masks_file).resolve()), "sha256": hashlib.sha256(self._masks_bytes).hexdigest(),
                                 "copy": "masks.safetensors", "arm": masks_arm_name(masks_file)}
        self.budget_notes: dict[str, str] = {}
        self.masks: dict[str, torch.Tensor] | None = None
        self._arms: dict[str, list[Arm]] = {}  # per split
        self._baseline = True
        self._plan: EvaluationPlan | None = None
        if method == "direction" and self.auto:
            raise ConfigError("pruning.budget=auto (or head_budget=auto) chooses a mask's budget; with pruning.method=direction"
                              " nothing is pruned: give a number, or choose the direction's layers with study.transfer_layers")

    @property
    def arm_name(self) -> str:
        """The pruned arm's name: ``pruned``, or after the masks file it evaluates."""
        return self.masks_source.get("arm", "pruned")

    def run_notes(self) -> dict[str, Any]:
        """What the manifest adds to :meth:`settings`: the masks file's source and how a budget was rounded."""
        out: dict[str, Any] = {}
        if self.masks_source:
            out["masks_source"] = dict(self.masks_source)
        if self.budget_notes:
            out["budget_notes"] = list(self.budget_notes.values())
        return out

    def configure_evaluation(self, plan: EvaluationPlan | None) -> None:
        """Hand ``plan`` (the study's arms) to the module in the next validate stages instead of this run's masks;
        None goes back to this run's masks."""
        self._plan = plan

    @property
    def plan(self) -> EvaluationPlan | None:
        """The plan given to :meth:`configure_evaluation` (None: this run's masks)."""
        return self._plan

    def mask_settings(self) -> MaskSettings:
        """How this callback makes masks, as one typed value (the study builds its arms from it)."""
        return MaskSettings(self.factory, self.budget, self.head_budget, self.random_draws, self.auto_budgets, self.head_auto_budgets)

    def kinds(self) -> list[str]:
        return {"neurons": ["neuron"], "heads": ["head"], "both": ["neuron", "head"]}[self.units]

    @property
    def auto(self) -> bool:
        """Whether the budget of a pruned kind is ``auto`` (chosen on dev names)."""
        return any((self.budget if k == "neuron" else self.head_budget) == AUTO for k in self.kinds())

    def settings(self) -> dict[str, Any]:
        """Everything that decides the masks (also the metadata of ``masks.safetensors``); ``chosen`` once
        ``auto`` was resolved on dev names."""
        out = {
            "units": self.units, "rule": rule_name(self.rule), "p": self.p, "q": self.q, "budget": self.budget, "scope": self.scope,
            "head_p": self.head_p, "head_q": self.head_q, "head_budget": self.head_budget, "head_scope": self.head_scope,
            "floor_quantile": self.floor_quantile,
            "random_draws": self.random_draws, "random_seed": self.random_seed, "masks_file": self.masks_file,
            "method": self.method, "direction_layers": self.direction_layers, "direction_file": self.direction_file,
        }
        if self.auto:
            out |= {"auto_budgets": list(self.auto_budgets), "head_auto_budgets": list(self.head_auto_budgets),
                    "auto_rules": list(self.auto_rules or (self.factory.rule_name,)), "auto_draws": self.auto_draws}
        return out | ({"chosen": dict(self.chosen)} if self.chosen else {})

    # ------------------------------------------------------------------------------------ selection
    def candidates(self) -> list[dict[str, Any]]:
        """The points ``auto`` chooses among: ``{"rule", "budget", "head_budget"}`` for every rule of ``auto_rules``
        (or ``rule``) and every budget of an ``auto`` kind (the configured budget of the other)."""
        budgets = {}
        for kind in self.kinds():
            own = self.budget if kind == "neuron" else self.head_budget
            grid = self.auto_budgets if kind == "neuron" else self.head_auto_budgets
            budgets[kind] = list(grid) if own == AUTO else [own]
        out = []
        for rule in self.auto_rules or (self.factory.rule_name,):
            for b in budgets.get("neuron", [self.budget]):
                for hb in budgets.get("head", [self.head_budget]):
                    out.append({"rule": rule, "budget": b, "head_budget": hb})
        return out

    def configure_choice(self, chosen: Mapping[str, Any] | None) -> None:
        """The point chosen on dev names for ``auto`` (a :meth:`candidates` entry; None to forget it)."""
        self.chosen = dict(chosen) if chosen is not None else None

    def select(self, target: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
               n_target: int | None = None, n_reference: int | None = None,
               point: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """Keep-masks (uint8, 1 = keep) for the configured unit kinds (``n_*``: examples behind each group's sums);
        ``point`` (a :meth:`candidates` entry) overrides the rule and budgets, e.g. with the choice of ``auto``."""
        point = point or self.chosen or {}
        factory = self.factory.with_rule(point["rule"]) if "rule" in point else self.factory
        masks: dict[str, torch.Tensor] = {}
        for kind in self.kinds():
            p, q = (self.p, self.q) if kind == "neuron" else (self.head_p, self.head_q)
            budget = point.get("budget", self.budget) if kind == "neuron" else point.get("head_budget", self.head_budget)
            if budget == AUTO:
                flag = "pruning.budget" if kind == "neuron" else "pruning.head_budget"
                raise RuntimeError(f"{flag}=auto has not been chosen on dev names: run fit through"
                                   " biasprune.study.trainer.BiasPruneTrainer (as the CLI does), which makes the choice")
            selected = factory.select(target, reference, kind, p, q, budget, n_target, n_reference)
            if not selected:
                raise RuntimeError(f"pruning.units={self.units!r} needs {kind} scores, but none were computed (set model.score_{kind}s true)")
            masks.update(selected)
        return masks

    def random_controls(self, masks: Mapping[str, torch.Tensor], split: str, arm: str = "pruned",
                        draws: int | None = None) -> list[dict[str, torch.Tensor]]:
        """``random_draws`` (or ``draws``) keep-mask sets of ``arm`` on ``split``, pruning as many units per module
        (neurons) / in total (heads)."""
        return self.factory.random_controls(masks, split, arm, range(self.random_draws if draws is None else draws))

    def arms_from(self, masks: Mapping[str, torch.Tensor] | None, split: str, baseline: bool = True) -> list[Arm]:
        """The arms of one split: the unpruned model, the pruned model and its random controls on that split."""
        arms = [UNPRUNED] if baseline else []
        if masks is not None:
            arms.append(Arm(self.arm_name, "pruned", masks))
            arms += [Arm(f"random/{d}", "random", m, draw=d) for d, m in enumerate(self.random_controls(masks, split))]
        return arms

    def direction_arms(self, edit: DirectionEdit, split: str, baseline: bool = True) -> list[Arm]:
        """The arms of one split: the unpruned model, the direction edit and ``random_draws`` random-direction
        controls of the same size, seeded like the random masks by (split, arm, draw)."""
        arms = [UNPRUNED] if baseline else []
        arms.append(Arm("pruned", "pruned", edit=edit))
        return arms + [Arm(f"random/{d}", "random", edit=random_direction(edit, self.factory.control_seed(split, "pruned", d)),
                           draw=d) for d in range(self.random_draws)]

    def arms_for(self, split: str, scenario: str, variation: str) -> Sequence[Arm]:
        if split not in self._arms:
            if self.method == "direction":
                self._arms[split] = self.direction_arms(self.direction, split, self._baseline) if self.direction is not None \
                    else [UNPRUNED]
            else:
                self._arms[split] = self.arms_from(self.masks, split, self._baseline)
        return self._arms[split]

    # ---------------------------------------------------------------------------------------- hooks
    def _fingerprint(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.settings().items() if k != "chosen"}  # the choice comes after scoring

    def state_dict(self) -> dict[str, Any]:
        return {"settings": self._fingerprint()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "settings" in state_dict:
            check_fingerprint(state_dict["settings"], self._fingerprint(), "the checkpoint (pruning settings)")

    def on_fit_start(self, trainer: L.Trainer, pl_module: PrunableModule) -> None:
        objective = getattr(getattr(pl_module, "objective", None), "name", "")
        if self.method == "direction" and not self.direction_file and not objective.startswith("direction"):
            raise ValueError(f"pruning.method=direction needs model.objective=direction or direction_name (got {objective!r})")
        if self.loaded is not None:
            validate_masks(self.loaded[0], pl_module.layout, source=self.masks_file)
        elif self._plan is None and self.method == "masks":
            self.check_budgets(pl_module.layout.sizes())  # before scoring: the budget must select something

    def check_budgets(self, sizes: Mapping[str, int]) -> None:
        """Refuse a budget given on the command line that is under one unit in every pool of this model; note a
        budget that is rounded up to one unit in some pool (log and manifest). ``sizes``: unit group -> units."""
        for kind in self.kinds():
            given, flag, scope = ((self.budget, "pruning.budget", self.scope) if kind == "neuron"
                                  else (self.head_budget, "pruning.head_budget", self.head_scope))
            if given == AUTO:  # each candidate of the choice on dev names: rounding is noted, none is refused alone
                auto, auto_flag = ((self.auto_budgets, "pruning.auto_budgets") if kind == "neuron"
                                   else (self.head_auto_budgets, "pruning.head_auto_budgets"))
                for candidate in auto:
                    self._check_budget(kind, candidate, auto_flag, scope, sizes, refuse=False)
                continue
            self._check_budget(kind, given, flag, scope, sizes)

    def _check_budget(self, kind: str, given: Any, flag: str, scope: str, sizes: Mapping[str, int],
                      refuse: bool = True) -> None:
        """One budget of ``kind``: refused (``refuse``) when under one unit in every pool, noted when rounded up."""
        effective = self.factory.budget_of(kind, given)
        if effective is None:
            return  # set_difference without a budget: q decides
        budget = parse_budget(effective, flag=flag)
        groups = {k: n for k, n in sizes.items() if k.startswith(kind + "/")}
        if budget.fraction is None or not groups:
            return
        pools = groups if scope == "module" else {f"all {kind}s": sum(groups.values())}
        under = {k: n for k, n in pools.items() if round(budget.fraction * n, 9) < 1}
        if not under:
            return
        largest = max(pools.values())
        what = f"{flag}={given!r}" if given is not None else f"the default budget {effective!r} ({flag} not given)"
        if refuse and len(under) == len(pools) and given is not None:
            smallest = 10 ** (math.floor(math.log10(1 / largest)) - 2)  # 1/largest rounded up to 3 digits
            smallest = math.ceil(1 / largest / smallest) * smallest
            raise ConfigError(
                f"{what} is less than one unit in every pool ({len(pools)} {scope} pool(s) of at most {largest} {kind}s):"
                f" it selects nothing, or one unit per pool only by rounding up. The smallest useful value is"
                f" {smallest:.3g} (one unit of the largest pool) or the count 1"
            )
        example, n = next(iter(under.items()))
        note = (f"{what} is less than one unit in {len(under)} of {len(pools)} {kind} pools (e.g. {example.split('/', 1)[-1]},"
                f" {n} units): rounded up to 1 {kind} in each of them")
        if what not in self.budget_notes:
            rank_zero_info(f"biasprune: {note}")
        self.budget_notes[what] = note

    def on_validation_start(self, trainer: L.Trainer, pl_module: PrunableModule) -> None:
        if trainer.sanity_checking:
            return
        if self._plan is not None:
            pl_module.configure_evaluation(self._plan)
            return
        if self.method == "direction":
            self._resolve_direction(trainer, pl_module)  # sets self.direction (None when nothing was scored)
            self._arms, self._baseline = {}, pl_module.evaluation.baseline
            pl_module.configure_evaluation(EvaluationPlan(self))
            return
        self.masks = self._resolve(trainer, pl_module)
        self._arms, self._baseline = {}, pl_module.evaluation.baseline
        pl_module.configure_evaluation(EvaluationPlan(self))

    def run_scores(self, pl_module: PrunableModule) -> tuple[dict, dict[str, int], list[str]] | None:
        """This run's scores summed over its scoring variations, the examples behind each group and the
        variations; None when nothing was scored in this run (collective: every rank calls it)."""
        per_variation = pl_module.final_scores()
        stored = Path(pl_module.run_dir) / "scores_by_variation.safetensors"
        if per_variation is None and stored.is_file():  # written by this run's fit (another process, or resumed)
            per_variation, _ = read_scores(stored)
        if per_variation is None:
            return None
        n = read_scores_meta(stored).get("n_examples", {}) if stored.is_file() else {}
        return sum_scores(per_variation), n, list(per_variation)

    def select_point(self, scores: Mapping, groups: Sequence[str], n: Mapping[str, int],
                     point: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """Masks of ``point`` (or the configured / chosen one) from summed scores of ``groups`` (reference, target)."""
        rule = (point or self.chosen or {}).get("rule", self.factory.rule_name)
        return self.select(*selection_inputs(scores, tuple(groups), rule, n), point=point)

    def _resolve_direction(self, trainer: L.Trainer, pl_module: PrunableModule) -> DirectionEdit | None:
        """The direction under test: ``direction_file``'s, or estimated from this run's sums and written to
        ``direction.safetensors`` (and beside the exported model); None when nothing was scored."""
        n_layers = len(pl_module.layout.heads)
        if self.direction is not None:
            parse_layers(list(self.direction.layers), n_layers, flag=f"pruning.direction_file={self.direction_file!r}")
            return self.direction
        found = self.run_scores(pl_module)
        if found is None:
            return None
        scores, _, variations = found
        ref, tgt = trainer.datamodule.groups
        layers = parse_layers(self.direction_layers, n_layers)
        meta = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in self.settings().items()} | {
            "scoring": ",".join(variations), "model": str(getattr(pl_module, "hparams", {}).get("model_name_or_path", ""))}
        edit = estimate_direction(scores, (ref, tgt), layers, meta)
        if trainer.global_rank == 0:
            edit.save(Path(pl_module.run_dir) / "direction.safetensors")
            if self.export_dir:
                pl_module.export_pruned(self.export_dir, {}, meta)
                edit.save(Path(self.export_dir) / "direction.safetensors")
            rank_zero_info(f"direction edit at layer(s) {list(layers)}; in {Path(pl_module.run_dir) / 'direction.safetensors'}")
        self.direction = edit
        return edit

    def _resolve(self, trainer: L.Trainer, pl_module: PrunableModule) -> dict[str, torch.Tensor] | None:
        if self.loaded is not None:
            validate_masks(self.loaded[0], pl_module.layout, source=self.masks_file)
            copy = Path(pl_module.run_dir) / "masks.safetensors"
            if trainer.global_rank == 0 and not (copy.exists() and copy.resolve() == Path(self.masks_source["path"])):
                atomic_write_bytes(copy, self._masks_bytes)  # the run directory alone shows what was evaluated
            return self.loaded[0]
        found = self.run_scores(pl_module)
        if found is None:
            return None  # nothing was scored in this run: evaluate the unpruned model
        scores, n, variations = found
        ref, tgt = trainer.datamodule.groups
        masks = self.select_point(scores, (ref, tgt), n)
        if trainer.global_rank == 0:
            meta = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in self.settings().items()} | {
                "reference_group": ref, "target_group": tgt, "scoring": ",".join(variations),
            }
            save_masks(Path(pl_module.run_dir) / "masks.safetensors", masks, meta)
            if self.export_dir:
                pl_module.export_pruned(self.export_dir, masks, meta)
            self._log(trainer, pl_module, scores, masks)
        self._mechanism(trainer, pl_module, masks)
        return masks

    def _mechanism(self, trainer: L.Trainer, pl_module: PrunableModule, masks: dict[str, torch.Tensor]) -> None:
        """``name_attention.csv`` for masks that prune heads (every rank runs the same passes; rank 0 writes)."""
        dm = trainer.datamodule
        if not self.mechanism_pairs or not any(k.startswith("head/") and bool((m == 0).any()) for k, m in masks.items()):
            return
        examples = getattr(dm, "scoring_examples", None)
        if not examples or getattr(pl_module, "tokenizer", None) is None:
            rank_zero_info("name attention skipped: this run has no scoring examples to take name-swapped pairs from")
            return
        experiment = next((lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_scalar")), None)
        try:
            rows = write_name_attention(pl_module.run_dir, pl_module.model, pl_module.layout, pl_module.tokenizer, examples,
                                        dm.scoring_variations, dm.groups, masks, self.mechanism_pairs,
                                        experiment if trainer.global_rank == 0 else None, write=trainer.global_rank == 0)
        except AuditDataError as err:  # e.g. a prompt file without pair ids
            rank_zero_info(f"name attention skipped: {err}")
            return
        pruned = [r["name_attention"] for r in rows if r["pruned"]]
        rank_zero_info(f"name attention: pruned heads {sum(pruned) / len(pruned):.3f}, all heads"
                       f" {sum(r['name_attention'] for r in rows) / len(rows):.3f} (name_attention.csv)")

    # -------------------------------------------------------------------------------------- logging
    def _log(self, trainer: L.Trainer, pl_module: PrunableModule, scores: dict, masks: dict[str, torch.Tensor]) -> None:
        c = pruned_counts(masks)
        what = " and ".join(f"{c[k]} of {c[k + '_units']} {k}s" for k in ("neuron", "head") if c[k + "_units"])
        rule = (self.chosen or {}).get("rule", self.factory.rule_name)
        rank_zero_info(f"pruned {what} ({rule}); masks in {Path(pl_module.run_dir) / 'masks.safetensors'}")
        experiment = next((lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_scalar")), None)
        if experiment is None:
            return
        layout = pl_module.layout
        # One curve per module kind: pruned units against layer index (the paper's Fig. 4 as scalars).
        for key, m in masks.items():
            kind, path = key.split("/", 1)
            n = int((m == 0).sum())
            if kind == "neuron":
                u = layout.neuron(path)
                experiment.add_scalar(f"pruned/{u.kind}", n, global_step=u.layer)
            else:
                experiment.add_scalar("pruned/heads", n, global_step=layout.head(path).layer)
        experiment.add_scalar("pruned/total", c["neuron"] + c["head"], global_step=0)
        if self.log_histograms:
            for group, per_key in scores.items():
                for kind in ("neuron", "head"):
                    vals = [s.float() for k, s in per_key.items() if k.startswith(kind + "/")]
                    if vals:
                        experiment.add_histogram(f"scores/{kind}/{group}", torch.cat(vals).clamp(min=1e-12).log10(), 0)
        experiment.flush()
