"""One place where masks are made: a kind's masks from two groups' scores, and random controls with their seed rule.

The pruning callback (``biasprune fit``/``validate``) and the study's plan both make masks through a
:class:`MaskFactory`, so the mapping from unit kind to pool scope, the default budgets of the ranking rules and
the seed of every random control are decided here and nowhere else.

* :meth:`MaskFactory.select`: uint8 keep-masks of one unit kind (``neuron`` or ``head``) by the factory's rule
  at one pruning point (p, q, budget), within the kind's scope (:mod:`biasprune.pruning.rules`);
* :meth:`MaskFactory.random_controls`: for each draw d of the arm a on the name split s, masks that prune as many
  units per module (scope ``module``) or in total (scope ``global``) as the given masks, each kind in its own
  scope, uniformly, from the stream seeded :meth:`MaskFactory.control_seed` (s, a, d)
  (:func:`biasprune.pruning.rules.random_prune_like`). The seed depends on the split, the arm and the draw, so the
  dev and the test controls of one arm never share a mask, nor do the controls of two arms that prune as many
  units: their claims are independent, and a control that helped a point win on dev is not its control on test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import torch

from biasprune.core.checks import check_choice, check_fraction
from biasprune.pruning.rules import (
    HEAD_FLAGS,
    NEURON_FLAGS,
    SCOPES,
    Budget,
    RuleLike,
    Scope,
    keep_masks,
    random_prune_like,
    resolve_rule,
)

__all__ = ["DEFAULT_BUDGETS", "KINDS", "MaskFactory", "MaskSettings"]

KINDS = ("neuron", "head")
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


@dataclass(frozen=True)
class MaskSettings:
    """The pruning callback's mask settings as one typed value: what the study builds its arms from.

    Attributes:
        factory: how masks are selected and their random controls drawn.
        budget: the neuron budget given (``--pruning.budget``), or None.
        head_budget: the head budget given (``--pruning.head_budget``), or None.
        random_draws: random controls per evaluated arm (``--pruning.random_draws``).
        auto_budgets: the neuron budgets that ``budget: auto`` chooses among (``--pruning.auto_budgets``).
        head_auto_budgets: the head budgets that ``head_budget: auto`` chooses among.
    """

    factory: MaskFactory
    budget: Budget | float | int | str | None = None
    head_budget: Budget | float | int | str | None = None
    random_draws: int = 5
    auto_budgets: tuple[Budget | float | int | str, ...] = ()
    head_auto_budgets: tuple[Budget | float | int | str, ...] = ()

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
