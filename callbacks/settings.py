"""The pruning callback's settings: its arguments (the ``--pruning.*`` flags), their checks, and everything decided
from them without a trainer.

:func:`check_arguments` refuses a bad value with an error that names the flag (``pruning.*``), the value and what
would be valid, and reads the files the callback may be given, so that a wrong command line fails when the
callback is built, before a model is loaded or a prompt is scored. The checks run in a fixed order (the first bad
argument is the one reported):

1. ``method``, ``direction_layers`` (its form: the range is checked on the model), ``direction_file`` (read);
2. ``units``, the scopes, the fractions p, q, head_p, head_q, the counts (random_draws, mechanism_pairs,
   auto_draws), ``floor_quantile``;
3. the budgets given (a budget that selects no unit is refused now, not after scoring), the ``auto`` grids and
   rules, then ``rule`` (resolved once, into the :class:`~biasprune.pruning.factory.MaskFactory`);
4. ``masks_file`` (read), and ``auto`` with ``method=direction`` (nothing is pruned there).

:class:`PruningSettings` holds the checked arguments and answers what needs no trainer: the settings record
(:meth:`~PruningSettings.settings`: the checkpoint's fingerprint, the metadata of ``masks.safetensors``, the
manifest), the mask settings (:class:`~biasprune.pruning.factory.MaskSettings`) with the points ``auto`` chooses
among, masks of a point from summed scores, random controls, and the notes on budgets rounded up to one unit. The
study reads these; :class:`biasprune.callbacks.pruning.PruningCallback` adds what happens in a run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch
from lightning.pytorch.utilities import rank_zero_info

from biasprune.core.checks import check_choice, check_fraction, check_positive
from biasprune.core.errors import ConfigError
from biasprune.pruning.direction import DirectionEdit, load_direction, parse_layers
from biasprune.pruning.factory import AUTO, UNIT_KINDS, UNITS, MaskFactory, MaskSettings
from biasprune.pruning.masks import MasksSource
from biasprune.pruning.rules import SCOPES, RuleSettings, SelectionRule, parse_budget, resolve_rule, rule_name
from biasprune.scoring.objectives import selection_inputs

__all__ = ["METHODS", "Checked", "PruningSettings", "check_arguments", "metadata_strings"]

METHODS = ("masks", "direction")


def metadata_strings(settings: Mapping[str, Any]) -> dict[str, str]:
    """Settings as file metadata: strings, with dicts and lists as JSON."""
    return {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in settings.items()}


class Checked(NamedTuple):
    """What the callback builds from its arguments: the mask factory, the direction file's edit and the masks
    file's record (None when that file is not given)."""

    factory: MaskFactory
    direction: DirectionEdit | None
    masks: MasksSource | None


def check_arguments(
    *,
    units: str,
    rule: Any,
    p: float,
    q: float,
    budget: int | float | str | None,
    scope: str,
    head_p: float,
    head_q: float,
    head_budget: int | float | str | None,
    head_scope: str,
    floor_quantile: float,
    random_draws: int,
    random_seed: int,
    auto_budgets: Sequence[int | float | str],
    head_auto_budgets: Sequence[int | float | str],
    auto_rules: Sequence[str],
    auto_draws: int,
    masks_file: str,
    mechanism_pairs: int,
    method: str,
    direction_layers: str,
    direction_file: str,
) -> Checked:
    """Refuse a bad argument of :class:`biasprune.callbacks.pruning.PruningCallback` (module docstring for the
    order) and return what is built from the arguments."""
    check_choice("pruning.method", method, METHODS)
    parse_layers(direction_layers, 4096)  # refuse a malformed choice now; the range is checked on the model
    direction = load_direction(direction_file) if direction_file else None
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
    kinds = UNIT_KINDS[units]
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
    factory = MaskFactory(rule, scope, head_scope, floor_quantile, random_seed)  # resolves (checks) the rule
    masks = MasksSource.read(masks_file) if masks_file else None  # fail now, before a run starts, on an unreadable file
    auto = any((budget if kind == "neuron" else head_budget) == AUTO for kind in kinds)
    if method == "direction" and auto:
        raise ConfigError("pruning.budget=auto (or head_budget=auto) chooses a mask's budget; with pruning.method=direction"
                          " nothing is pruned: give a number, or choose the direction's layers with study.transfer_layers")
    return Checked(factory, direction, masks)


class PruningSettings:
    """What the pruning callback selects and evaluates: its arguments, checked when built (:func:`check_arguments`),
    and what is decided from them without a trainer (module docstring).

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
        checked = check_arguments(
            units=units, rule=rule, p=p, q=q, budget=budget, scope=scope, head_p=head_p, head_q=head_q,
            head_budget=head_budget, head_scope=head_scope, floor_quantile=floor_quantile, random_draws=random_draws,
            random_seed=random_seed, auto_budgets=auto_budgets, head_auto_budgets=head_auto_budgets, auto_rules=auto_rules,
            auto_draws=auto_draws, masks_file=masks_file, mechanism_pairs=mechanism_pairs, method=method,
            direction_layers=direction_layers, direction_file=direction_file,
        )
        self.method, self.direction_layers, self.direction_file = method, direction_layers, direction_file
        self.units, self.rule, self.p, self.q, self.budget, self.scope = units, rule, p, q, budget, scope
        self.head_p, self.head_q, self.head_budget, self.head_scope = head_p, head_q, head_budget, head_scope
        self.floor_quantile, self.random_draws, self.random_seed = floor_quantile, random_draws, random_seed
        self.auto_budgets, self.head_auto_budgets = tuple(auto_budgets), tuple(head_auto_budgets)
        self.auto_rules, self.auto_draws = tuple(auto_rules), auto_draws
        self.masks_file, self.export_dir, self.log_histograms = masks_file, export_dir, log_histograms
        self.mechanism_pairs = mechanism_pairs
        self.factory = checked.factory  # the rule, resolved
        self.direction: DirectionEdit | None = checked.direction  # direction_file's, or estimated in validate
        self.masks_input: MasksSource | None = checked.masks  # masks_file, read
        self.loaded = (checked.masks.masks, checked.masks.metadata) if checked.masks else None  # its masks, metadata
        self.masks_source: dict[str, str] = checked.masks.record() if checked.masks else {}
        self.chosen: dict[str, Any] | None = None  # the choice on dev names of budget: auto
        self.budget_notes: dict[str, str] = {}

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

    def mask_settings(self) -> MaskSettings:
        """How this callback makes masks, as one typed value (the study builds its arms from it)."""
        return MaskSettings(self.factory, self.budget, self.head_budget, self.random_draws, self.auto_budgets,
                            self.head_auto_budgets, self.units, self.p, self.q, self.head_p, self.head_q, self.auto_rules)

    def kinds(self) -> list[str]:
        return self.mask_settings().kinds()

    @property
    def auto(self) -> bool:
        """Whether the budget of a pruned kind is ``auto`` (chosen on dev names)."""
        return self.mask_settings().auto

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

    def candidates(self) -> list[dict[str, Any]]:
        """The points ``auto`` chooses among: ``{"rule", "budget", "head_budget"}`` for every rule of ``auto_rules``
        (or ``rule``) and every budget of an ``auto`` kind (the configured budget of the other)."""
        return self.mask_settings().candidates()

    def configure_choice(self, chosen: Mapping[str, Any] | None) -> None:
        """The point chosen on dev names for ``auto`` (a :meth:`candidates` entry; None to forget it)."""
        self.chosen = dict(chosen) if chosen is not None else None

    def select(self, target: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
               n_target: int | None = None, n_reference: int | None = None,
               point: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """Keep-masks (uint8, 1 = keep) for the configured unit kinds (``n_*``: examples behind each group's sums);
        ``point`` (a :meth:`candidates` entry) overrides the rule and budgets, e.g. with the choice of ``auto``."""
        return self.mask_settings().select(target, reference, n_target, n_reference, point or self.chosen)

    def select_point(self, scores: Mapping, groups: Sequence[str], n: Mapping[str, int],
                     point: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """Masks of ``point`` (or the configured / chosen one) from summed scores of ``groups`` (reference, target)."""
        rule = (point or self.chosen or {}).get("rule", self.factory.rule_name)
        return self.select(*selection_inputs(scores, tuple(groups), rule, n), point=point)

    def random_controls(self, masks: Mapping[str, torch.Tensor], split: str, arm: str = "pruned",
                        draws: int | None = None) -> list[dict[str, torch.Tensor]]:
        """``random_draws`` (or ``draws``) keep-mask sets of ``arm`` on ``split``, pruning as many units per module
        (neurons) / in total (heads)."""
        return self.factory.random_controls(masks, split, arm, range(self.random_draws if draws is None else draws))

    def check_budgets(self, sizes: Mapping[str, int]) -> None:
        """Refuse a budget given on the command line that is under one unit in every pool of this model; note a
        budget that is rounded up to one unit in some pool (log and manifest). ``sizes``: unit group -> units
        (:meth:`biasprune.pruning.factory.MaskSettings.budget_notes`)."""
        for what, note in self.mask_settings().budget_notes(sizes):
            if what not in self.budget_notes:
                rank_zero_info(f"biasprune: {note}")
            self.budget_notes[what] = note
