"""One place where masks are made: a kind's masks from two groups' scores, and random controls with their seed rule.

The pruning callback (``biasprune fit``/``validate``) and the study's plan both make masks through a
:class:`MaskFactory`, so the mapping from unit kind to pool scope, the default budgets of the ranking rules and
the seed of every random control are decided here and nowhere else.

* :meth:`MaskFactory.select`: uint8 keep-masks of one unit kind (``neuron`` or ``head``) by the factory's rule
  at one pruning point (p, q, budget), within the kind's scope (:mod:`biasprune.pruning.rules`);
* :meth:`MaskFactory.budget_note`: a budget checked against the pools of a model before scoring: refused when it
  selects nothing (under one unit in every pool), noted when it is rounded up to one unit in some pool;
* :meth:`MaskFactory.random_controls`: for each draw d of the arm a on the name split s, masks that prune as many
  units per module (scope ``module``) or in total (scope ``global``) as the given masks, each kind in its own
  scope, uniformly, from the stream seeded :meth:`MaskFactory.control_seed` (s, a, d)
  (:func:`biasprune.pruning.rules.random_prune_like`). The seed depends on the split, the arm and the draw, so the
  dev and the test controls of one arm never share a mask, nor do the controls of two arms that prune as many
  units: their claims are independent, and a control that helped a point win on dev is not its control on test.
  :meth:`MaskFactory.random_edits` draws the direction arm's random-direction controls from the same seeds.

:class:`MaskSettings` is the pruning callback's whole mask configuration as one typed value (unit kinds, p/q,
budgets and the ``auto`` grids around one factory): the points ``auto`` chooses among, the masks of one point, and
the budget notes of a model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from biasprune.core.checks import check_choice, check_fraction
from biasprune.core.errors import ConfigError
from biasprune.pruning.direction import DirectionEdit, random_direction
from biasprune.pruning.rules import (
    HEAD_FLAGS,
    NEURON_FLAGS,
    SCOPES,
    Budget,
    RuleLike,
    Scope,
    keep_masks,
    parse_budget,
    random_prune_like,
    resolve_rule,
)

__all__ = ["AUTO", "DEFAULT_BUDGETS", "KINDS", "UNITS", "MaskFactory", "MaskSettings"]

KINDS = ("neuron", "head")
#: ``--pruning.units`` and the unit kinds each one prunes.
UNITS = ("neurons", "heads", "both")
UNIT_KINDS = {"neurons": ("neuron",), "heads": ("head",), "both": ("neuron", "head")}
#: The budget that is chosen on dev names (``--pruning.budget auto``).
AUTO = "auto"
#: The budget of a ranking rule given none, per kind: 0.5% of each module's channels, 3 heads. Both were read off
#: the planted `purchase` control's tables (docs/results.md, tables that included its test names), so no result on
#: that plant should rest on them: ``--pruning.budget auto`` chooses on dev names instead (configs/quickstart.yaml).
DEFAULT_BUDGETS: dict[str, int | str] = {"neuron": "0.5%", "head": 3}


@dataclass(frozen=True)
class MaskFactory:
    """How masks are selected and how their random controls are drawn.

    Attributes:
        rule: the selection rule: a registered name (:data:`biasprune.pruning.rules.RULES`), a dotted path, a
            :class:`~biasprune.pruning.rules.SelectionRule` or a statistic; held resolved, as a
            :class:`~biasprune.pruning.rules.Rule`.
        scope: the pool of neurons (``module``: each projection; ``global``: all neurons).
        head_scope: the pool of heads (``global``: all heads of the model; ``module``: each attention module).
        floor_quantile: ``relative_difference``/``log_ratio``: the pool quantile of the floor.
        random_seed: the seed from which every random control's stream is derived.
    """

    rule: RuleLike = "relative_difference"
    scope: Scope = "module"
    head_scope: Scope = "global"
    floor_quantile: float = 0.5
    random_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", resolve_rule(self.rule, "pruning.rule"))
        check_choice("pruning.scope", self.scope, SCOPES)
        check_choice("pruning.head_scope", self.head_scope, SCOPES)
        check_fraction("pruning.floor_quantile", self.floor_quantile)

    @property
    def rule_name(self) -> str:
        return self.rule.name

    def with_rule(self, rule: RuleLike) -> MaskFactory:
        """This factory with another rule; a name equal to this factory's own rule keeps it (so a user's rule,
        known by name only here, is found)."""
        if isinstance(rule, str) and rule == self.rule.name:
            return self
        return replace(self, rule=rule)

    def scope_of(self, kind: str) -> Scope:
        check_choice("unit kind", kind, KINDS)
        return self.scope if kind == "neuron" else self.head_scope

    def budget_of(self, kind: str, budget: Budget | float | int | str | None) -> Budget | float | int | str | None:
        """The budget a point uses: its own, else (ranking rules) the kind's default; None for ``set_difference``
        without a budget (p and q decide)."""
        if budget is None and self.rule.needs_budget:
            return DEFAULT_BUDGETS[kind]
        return budget

    def select(self, target: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], kind: str, p: float, q: float,
               budget: Budget | float | int | str | None = None, n_target: int | None = None,
               n_reference: int | None = None) -> dict[str, torch.Tensor]:
        """uint8 keep-masks (1 = keep) of the ``kind/`` unit groups of ``target`` (empty when there is none)."""
        return keep_masks(target, reference, kind, p, q, self.scope_of(kind), rule=self.rule, budget=self.budget_of(kind, budget),
                          n_target=n_target, n_reference=n_reference, floor_quantile=self.floor_quantile,
                          flags=HEAD_FLAGS if kind == "head" else NEURON_FLAGS)

    def budget_note(self, kind: str, given: Any, flag: str, sizes: Mapping[str, int],
                    refuse: bool = True) -> tuple[str, str] | None:
        """Check the budget ``given`` (as ``flag``) of ``kind`` against the model's pools (``sizes``: unit group ->
        units) before scoring: ``(what, note)`` when a fractional budget is under one unit in some pool (it is
        rounded up to one unit there; ``what`` names the budget), None when nothing needs saying. Raises
        :class:`~biasprune.core.errors.ConfigError` (``refuse``) for a budget given that is under one unit in every
        pool: it selects nothing, or one unit per pool only by rounding up."""
        effective = self.budget_of(kind, given)
        if effective is None:
            return None  # set_difference without a budget: q decides
        budget = parse_budget(effective, flag=flag)
        groups = {k: n for k, n in sizes.items() if k.startswith(kind + "/")}
        if budget.fraction is None or not groups:
            return None
        scope = self.scope_of(kind)
        pools = groups if scope == "module" else {f"all {kind}s": sum(groups.values())}
        under = {k: n for k, n in pools.items() if round(budget.fraction * n, 9) < 1}
        if not under:
            return None
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
        return what, (f"{what} is less than one unit in {len(under)} of {len(pools)} {kind} pools (e.g."
                      f" {example.split('/', 1)[-1]}, {n} units): rounded up to 1 {kind} in each of them")

    def control_seed(self, split: str, arm: str, draw: int) -> int:
        """The seed of random control ``draw`` of ``arm`` on the name split ``split``: the first 8 bytes of
        SHA-256 of ``"{random_seed}/{split}/{arm}/{draw}"``, as an unsigned integer."""
        key = f"{int(self.random_seed)}/{split}/{arm}/{int(draw)}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")

    def random_controls(self, masks: Mapping[str, torch.Tensor], split: str, arm: str,
                        draws: Iterable[int]) -> list[dict[str, torch.Tensor]]:
        """One keep-mask set per draw of ``arm`` on ``split``, pruning as many units as ``masks`` per module / in
        total, kind by kind."""
        out = []
        for d in draws:
            drawn: dict[str, torch.Tensor] = {}
            for kind in KINDS:
                part = {k: m == 0 for k, m in masks.items() if k.startswith(kind + "/")}
                if part:
                    chosen = random_prune_like(part, self.scope_of(kind), seed=self.control_seed(split, arm, d))
                    drawn.update({k: (~v).to(torch.uint8) for k, v in chosen.items()})
            out.append(drawn)
        return out

    def random_edits(self, edit: DirectionEdit, split: str, arm: str, draws: Iterable[int]) -> list[DirectionEdit]:
        """One random-direction control of ``edit`` per draw of ``arm`` on ``split`` (same layers, same shift of the
        pooled mean: :func:`biasprune.pruning.direction.random_direction`), seeded like the random masks."""
        return [random_direction(edit, self.control_seed(split, arm, d)) for d in draws]


@dataclass(frozen=True)
class MaskSettings:
    """The pruning callback's mask settings as one typed value: what the callback selects its masks with, and what
    the study builds its arms from.

    Attributes:
        factory: how masks are selected and their random controls drawn.
        budget: the neuron budget given (``--pruning.budget``), or None.
        head_budget: the head budget given (``--pruning.head_budget``), or None.
        random_draws: random controls per evaluated arm (``--pruning.random_draws``).
        auto_budgets: the neuron budgets that ``budget: auto`` chooses among (``--pruning.auto_budgets``).
        head_auto_budgets: the head budgets that ``head_budget: auto`` chooses among.
        units: the units pruned (``--pruning.units``: ``neurons``, ``heads`` or ``both``).
        p: neurons: the reference group's protected fraction (``--pruning.p``).
        q: neurons: the target group's candidate fraction (``--pruning.q``).
        head_p: heads: like ``p`` (``--pruning.head_p``).
        head_q: heads: like ``q`` (``--pruning.head_q``).
        auto_rules: the rules ``auto`` chooses among (``--pruning.auto_rules``; empty: the factory's rule alone).
    """

    factory: MaskFactory
    budget: Budget | float | int | str | None = None
    head_budget: Budget | float | int | str | None = None
    random_draws: int = 5
    auto_budgets: tuple[Budget | float | int | str, ...] = ()
    head_auto_budgets: tuple[Budget | float | int | str, ...] = ()
    units: str = "neurons"
    p: float = 0.35
    q: float = 0.40
    head_p: float = 0.15
    head_q: float = 0.15
    auto_rules: tuple[str, ...] = ()

    def kinds(self) -> list[str]:
        """The unit kinds that ``units`` prunes (``neuron``, ``head``)."""
        return list(UNIT_KINDS[self.units])

    def given(self, kind: str) -> Budget | float | int | str | None:
        """The budget given for ``kind`` (``budget`` for neurons, ``head_budget`` for heads)."""
        return self.budget if kind == "neuron" else self.head_budget

    @property
    def auto(self) -> bool:
        """Whether the budget of a pruned kind is ``auto`` (chosen on dev names)."""
        return any(self.given(k) == AUTO for k in self.kinds())

    def candidates(self) -> list[dict[str, Any]]:
        """The points ``auto`` chooses among: ``{"rule", "budget", "head_budget"}`` for every rule of ``auto_rules``
        (or the factory's rule) and every budget of an ``auto`` kind (the configured budget of the other)."""
        budgets = {}
        for kind in self.kinds():
            grid = self.auto_budgets if kind == "neuron" else self.head_auto_budgets
            budgets[kind] = list(grid) if self.given(kind) == AUTO else [self.given(kind)]
        out = []
        for rule in self.auto_rules or (self.factory.rule_name,):
            for b in budgets.get("neuron", [self.budget]):
                for hb in budgets.get("head", [self.head_budget]):
                    out.append({"rule": rule, "budget": b, "head_budget": hb})
        return out

    def select(self, target: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
               n_target: int | None = None, n_reference: int | None = None,
               point: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """Keep-masks (uint8, 1 = keep) for the unit kinds of ``units`` (``n_*``: examples behind each group's sums);
        ``point`` (a :meth:`candidates` entry) overrides the rule and budgets, e.g. with the choice of ``auto``."""
        point = point or {}
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

    def budget_notes(self, sizes: Mapping[str, int]) -> Iterator[tuple[str, str]]:
        """:meth:`MaskFactory.budget_note` of every budget of the pruned kinds, one at a time (so that a note is
        in hand before a later budget is refused): the budget given, or with ``auto`` each budget of its grid, which
        is only noted, never refused alone (each is one candidate of the choice on dev names)."""
        for kind in self.kinds():
            given, flag = self.given(kind), "pruning.budget" if kind == "neuron" else "pruning.head_budget"
            if given == AUTO:
                grid, grid_flag = ((self.auto_budgets, "pruning.auto_budgets") if kind == "neuron"
                                   else (self.head_auto_budgets, "pruning.head_auto_budgets"))
                found = (self.factory.budget_note(kind, b, grid_flag, sizes, refuse=False) for b in grid)
            else:
                found = iter([self.factory.budget_note(kind, given, flag, sizes)])
            yield from (note for note in found if note is not None)

    def default_budget(self, units: str) -> Budget | float | int | str:
        """The budget of a grid point of ``units`` (``neurons`` or ``heads``) that names none: the one given, or
        the kind's :data:`DEFAULT_BUDGETS` entry."""
        check_choice("study.units", units, ("neurons", "heads"))
        if units == "neurons":
            return self.budget or DEFAULT_BUDGETS["neuron"]
        return self.head_budget or DEFAULT_BUDGETS["head"]

    def default_budgets(self, units: str) -> tuple[Budget | float | int | str, ...]:
        """The budgets of the grid points of ``units`` that name none: the ``auto`` list where the budget is
        ``auto`` (the study then chooses among them on dev, as ``fit`` would), else :meth:`default_budget` alone."""
        given = self.budget if units == "neurons" else self.head_budget
        if given == "auto":
            return tuple(self.auto_budgets if units == "neurons" else self.head_auto_budgets)
        return (self.default_budget(units),)
