"""The study's own settings (``--study.*``): strategies, contexts, the tuning grid, the rule that picks a point."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from biasprune.core.checks import check_choices, check_fraction, check_positive

if TYPE_CHECKING:
    from biasprune.pruning.rules import RuleLike

__all__ = ["GridConfig", "STRATEGIES", "StudyConfig", "UNITS"]

STRATEGIES = ("prompt_specific", "within_context", "cross_context")
UNITS = ("neurons", "heads")
Strategy = Literal["prompt_specific", "within_context", "cross_context"]
Units = Literal["neurons", "heads"]


@dataclass(frozen=True)
class GridConfig:
    """The pruning points tried on the dev names, for every strategy and unit kind alike.

    With ``pruning.rule=set_difference`` and no budgets, the points are p x q; with budgets, p x budget (the
    budget replaces q); with a ranking rule, the budgets alone. Budgets below 1 are fractions of a pool, 1 and
    above are unit counts.

    Attributes:
        p: neuron p values (fraction of each pool protected as most important for the reference group).
        q: neuron q values (fraction of each pool considered most important for the target group).
        budget: neuron budgets (units pruned per pool).
        head_p: head p values.
        head_q: head q values.
        head_budget: head budgets (heads pruned in total with ``head_scope=global``).
        min_pruned: a point or arm that prunes fewer units than this (in every variation) is flagged and kept out
            of the choice and the claims. (A point also needs the utility guard on dev names:
            ``model.evaluation.utility_margin``; :mod:`biasprune.study.choose`.)
        random_draws: random-mask controls per grid point and variation, on dev and test (each split and point its
            own masks).
        chosen_draws: random-mask controls of each chosen point on test, in all (the claims judge it as one new
            random mask, a prediction interval, so their spread counts: docs/method.md, "Statistics").
        rules: selection rules tried (each with the points above; a rule is a knob chosen on dev like the others):
            registered names or dotted paths (docs/method.md, "Selection rules"); empty for ``pruning.rule`` alone.
    """

    p: tuple[float, ...] = (0.35,)
    q: tuple[float, ...] = (0.40,)
    budget: tuple[int | float | str, ...] = ()
    head_p: tuple[float, ...] = (0.15,)
    head_q: tuple[float, ...] = (0.15,)
    head_budget: tuple[int | float | str, ...] = ()
    min_pruned: int = 1
    random_draws: int = 1
    chosen_draws: int = 10
    rules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from biasprune.pruning.rules import parse_budget, resolve_rule  # torch: only when a study is configured

        for rule in self.rules:
            resolve_rule(rule, "study.grid.rules")  # a registered name or a dotted path
        for name in ("p", "q", "head_p", "head_q"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"study.grid.{name} must list at least one value")
            for v in values:
                check_fraction(f"study.grid.{name}", float(v))
        for name in ("budget", "head_budget"):
            for v in getattr(self, name):
                parse_budget(v, flag=f"study.grid.{name}")
        check_positive("study.grid.min_pruned", self.min_pruned, minimum=0)
        check_positive("study.grid.random_draws", self.random_draws, minimum=1)
        check_positive("study.grid.chosen_draws", self.chosen_draws, minimum=1)

    def points(self, units: str, rule: RuleLike, default_budgets: Sequence[int | float | str | None] = ()) -> list[tuple[float, float, int | float | str | None]]:
        """(p, q, budget) of every grid point of one unit kind (a ranking rule without grid budgets takes
        ``default_budgets``, the pruning callback's budget or its ``auto`` list)."""
        from biasprune.pruning.rules import resolve_rule

        ps, qs, bs = (self.p, self.q, self.budget) if units == "neurons" else (self.head_p, self.head_q, self.head_budget)
        resolved = resolve_rule(rule)
        if resolved.needs_budget:
            bs = bs or tuple(b for b in default_budgets if b is not None)
            if not bs:
                raise ValueError(f"pruning.rule={resolved.name!r} needs budgets: give study.grid.{'budget' if units == 'neurons' else 'head_budget'}")
            return [(float(ps[0]), float(qs[0]), b) for b in bs]
        if bs:
            return [(float(p), float(qs[0]), b) for p, b in itertools.product(ps, bs)]
        return [(float(p), float(q), None) for p, q in itertools.product(ps, qs)]


@dataclass(frozen=True)
class StudyConfig:
    """The generalization study: which masks are learned, how they are tuned and where results go.

    The evaluated variations are ``--data.evaluation``; the study adds the scoring variations it needs.

    Attributes:
        output: directory of the study (pieces, tables, figures); running again continues from it.
        strategies: ``prompt_specific`` (a variation's own mask), ``within_context`` (the other variations of its
            scenario, pooled), ``cross_context`` (each other scenario in ``contexts``, pooled).
        units: unit kinds pruned, each in its own arm: ``neurons``, ``heads``.
        within_variations: variations that within-context masks may pool (each evaluated variation uses the
            others of its scenario in this list); empty for all.
        contexts: other scenarios, used one by one by the cross-context strategy.
        grid: the pruning points tried on dev.
        pieces: the piece store; empty for ``<output>/pieces``. Studies that share a store reuse each other's
            scores and answers wherever their inputs agree (e.g. two objectives on the same model).
        transfer: instead of the strategies, write the cross-context transfer matrix of ``--pruning.method``
            (masks or direction): each scenario of ``transfer_sources`` x each scenario of ``--data.evaluation``, on
            test names (docs/method.md, "Transfer matrix").
        transfer_sources: the source scenarios of the matrix; empty for the scenarios of ``--data.evaluation``.
        transfer_layers: ``--pruning.method direction``: layer candidates (e.g. ``[2, early, all]``) among which each
            source's layers are chosen on dev names (its own variations; docs/results.md states the rule); empty:
            ``--pruning.direction_layers``.
    """

    output: str = "runs/study"
    strategies: tuple[Strategy, ...] = STRATEGIES
    units: tuple[Units, ...] = UNITS
    within_variations: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ("finance", "activity", "service")
    grid: GridConfig = field(default_factory=GridConfig)
    pieces: str = ""
    transfer: bool = False
    transfer_sources: tuple[str, ...] = ()
    transfer_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_choices("study.strategies", self.strategies, STRATEGIES)
        check_choices("study.units", self.units, UNITS)
        if "cross_context" in self.strategies and not self.contexts:
            raise ValueError("study.contexts is empty, but the cross_context strategy needs at least one other scenario")
