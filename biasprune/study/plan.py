"""The study's arms as typed objects, the masks each arm uses on each variation, and each stage's arm source.

An :class:`ArmSpec` says how an arm's masks are made (unit kind, strategy, context, pruning point, random
draw); for every evaluated variation the :class:`StudyPlan` turns it into keep-masks from the per-variation
score pieces, and :meth:`StudyPlan.stage` gives one validate stage its arms (:class:`StageArms`, the
:class:`~biasprune.pruning.arms.ArmSource` the module answers). Strategies pool score sums (docs/method.md, "The
generalization study"; :func:`biasprune.scoring.accumulate.sum_scores`):

* ``prompt_specific``: the variation's own scores;
* ``within_context``: the other variations of its scenario (those listed in ``study.within_variations``);
* ``cross_context``: every variation of one other scenario (``study.contexts``, one context per arm).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from biasprune.pruning.arms import Arm
from biasprune.pruning.factory import MaskFactory
from biasprune.scoring.accumulate import sum_scores
from biasprune.scoring.objectives import selection_inputs
from biasprune.study.pieces import PieceStore, digest, masks_digest

__all__ = ["ArmSpec", "EvalKey", "StageArms", "StudyOutcome", "StudyPlan", "strategy_pools", "strategy_variations"]

VarKey = str  # "scenario/variation"
EvalKey = tuple[str, str, str]  # (split, scenario, variation)


@dataclass(frozen=True)
class ArmSpec:
    """How one arm's masks are made. ``units == ""`` is the unpruned model; ``draw >= 0`` a random control."""

    units: str = ""
    strategy: str = ""
    context: str = ""
    p: float = 0.0
    q: float = 0.0
    budget: int | float | str | None = None
    rule: str = "set_difference"
    draw: int = -1

    @property
    def phase(self) -> str:
        return "baseline" if not self.units else ("random" if self.draw >= 0 else "pruned")

    @property
    def point(self) -> str:
        """The pruning point: rule and p/q or budget (``set_difference`` names only p and q or the budget)."""
        if not self.units:
            return ""
        if self.rule != "set_difference":
            return f"{self.rule} budget={self.budget}"
        return f"p={self.p:g} budget={self.budget}" if self.budget is not None else f"p={self.p:g} q={self.q:g}"

    def selected(self) -> ArmSpec:
        """The arm whose random control this is (itself for a selected arm)."""
        return replace(self, draw=-1)

    def family(self) -> tuple[str, str, str]:
        """(units, strategy, context): the arms a point is chosen among."""
        return (self.units, self.strategy, self.context)

    def labels(self) -> dict[str, object]:
        return {"units": self.units, "strategy": self.strategy, "context": self.context, "point": self.point,
                "rule": self.rule if self.units else "", "p": self.p if self.units else "", "q": self.q if self.units else "",
                "budget": "" if self.budget is None else self.budget}


def strategy_pools(
    variations: Mapping[str, Sequence[VarKey]], evaluated: Sequence[VarKey], strategies: Sequence[str],
    within_variations: Sequence[str], contexts: Sequence[str],
) -> tuple[dict[str, list[VarKey]], dict[str, list[VarKey]]]:
    """The within-context pool of every evaluated scenario and the variations of every cross-context scenario.

    ``variations``: every loaded scenario's variation keys, in file order. A scenario's within-context pool is
    its variations listed in ``within_variations`` (``variation`` or ``scenario/variation``), or all of them.
    """
    evaluated_scenarios = {v.split("/")[0] for v in evaluated}
    within: dict[str, list[VarKey]] = {}
    for scen in evaluated_scenarios:
        all_vars = list(variations.get(scen, ()))
        chosen = [w if "/" in w else f"{scen}/{w}" for w in within_variations]
        bad = [w for w in chosen if w.split("/")[0] == scen and w not in all_vars]
        if bad:
            raise ValueError(f"study.within_variations: {bad} are not variations of {scen!r}; valid: {all_vars}")
        within[scen] = [w for w in chosen if w.split("/")[0] == scen] or all_vars
    pools: dict[str, list[VarKey]] = {}
    if "cross_context" in strategies:
        for c in contexts:
            if c not in variations or c in evaluated_scenarios:
                raise ValueError(f"study.contexts: {c!r} must be a loaded scenario other than the evaluated ones"
                                 f" {sorted(evaluated_scenarios)}; loaded: {sorted(variations)}")
            pools[c] = list(variations[c])
    return within, pools


def strategy_variations(
    strategy: str, context: str, variation: VarKey, within_pool: Mapping[str, Sequence[VarKey]], contexts: Mapping[str, Sequence[VarKey]]
) -> list[VarKey]:
    """The scoring variations whose summed scores make the mask of ``strategy`` for ``variation``."""
    if strategy == "prompt_specific":
        return [variation]
    if strategy == "within_context":
        scen = variation.split("/")[0]
        pool = [w for w in within_pool.get(scen, ()) if w != variation]
        if not pool:
            raise ValueError(f"within_context for {variation}: study.within_variations leaves no other variation of {scen!r}")
        return pool
    if strategy == "cross_context":
        return list(contexts[context])
    raise ValueError(f"unknown strategy {strategy!r}")


class StudyPlan:
    """Masks per (arm, variation) from score pieces, answer-piece keys, and the arms of each validate stage."""

    def __init__(self, store: PieceStore, score_keys: Mapping[VarKey, str], groups: Sequence[str], factory: MaskFactory,
                 within_pool: Mapping[str, Sequence[VarKey]], contexts: Mapping[str, Sequence[VarKey]],
                 answer_prefix: Mapping[tuple[str, VarKey], str]) -> None:
        self.store, self.score_keys, self.groups = store, dict(score_keys), tuple(groups)
        self.factory = factory  # scopes, floor, random seed; each arm's own rule
        self.within_pool, self.contexts = within_pool, contexts
        self.answer_prefix = dict(answer_prefix)  # (split, variation) -> digest of model, generation, prompts
        self._scores: dict[VarKey, dict] = {}
        self._masks: dict[tuple[ArmSpec, VarKey, str], dict[str, torch.Tensor] | None] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_scores": {}, "_masks": {}}  # caches are rebuilt where the plan is used

    def scores(self, variations: Sequence[VarKey]) -> dict[str, dict[str, torch.Tensor]]:
        for v in variations:
            if v not in self._scores:
                self._scores[v] = self.store.read_scores(self.score_keys[v])
        return sum_scores({v: self._scores[v] for v in variations})

    def n_examples(self, variations: Sequence[VarKey]) -> dict[str, int]:
        """Scoring examples behind each group's summed scores (ranking rules compare group means)."""
        total = {g: 0 for g in self.groups}
        for v in variations:
            n = self.store.scores_meta(self.score_keys[v]).get("n_examples", {})
            for g in self.groups:
                total[g] += int(n.get(g, 0))
        return total

    def masks(self, spec: ArmSpec, variation: VarKey, split: str = "") -> dict[str, torch.Tensor] | None:
        """Keep-masks of ``spec`` on ``variation`` (None for the unpruned model); a random control is drawn for
        its ``split`` (seeds by split, arm and draw: dev and test controls never share a mask)."""
        if not spec.units:
            return None
        if spec.draw >= 0 and not split:
            raise ValueError(f"the random control {spec} needs the name split it is drawn for")
        key = (spec, variation, split if spec.draw >= 0 else "")
        if key not in self._masks:
            factory = self.factory.with_rule(spec.rule)
            kind = "neuron" if spec.units == "neurons" else "head"
            if spec.draw >= 0:
                selected = spec.selected()
                arm = f"{selected.units}/{selected.strategy}:{selected.context}/{selected.point}"
                self._masks[key] = factory.random_controls(self.masks(selected, variation), split, arm, [spec.draw])[0]
            else:
                pool = strategy_variations(spec.strategy, spec.context, variation, self.within_pool, self.contexts)
                target, reference, n_t, n_r = selection_inputs(self.scores(pool), self.groups, spec.rule, self.n_examples(pool))
                self._masks[key] = factory.select(target, reference, kind, spec.p, spec.q, spec.budget, n_t, n_r)
        return self._masks[key]

    def answer_key(self, spec: ArmSpec, split: str, variation: VarKey) -> str:
        return digest(self.answer_prefix[(split, variation)], masks_digest(self.masks(spec, variation, split)))

    def stage(self, jobs: Mapping[EvalKey, Sequence[ArmSpec]]) -> StageArms:
        """The arms of one validate stage: ``jobs[(split, scenario, variation)]`` lists the arm specs answered there."""
        return StageArms(self, jobs)


class StageArms:
    """The arms of one validate stage of the study (the :class:`biasprune.pruning.arms.ArmSource` protocol).

    Every (split, variation) batch gets the arm specs its job lists, each named by its answer-piece key; arms
    with identical masks share one set of answers.
    """

    def __init__(self, plan: StudyPlan, jobs: Mapping[EvalKey, Sequence[ArmSpec]]) -> None:
        self.plan = plan
        self.jobs = {k: tuple(v) for k, v in jobs.items()}

    def arms_for(self, split: str, scenario: str, variation: str) -> list[Arm]:
        v = f"{scenario}/{variation}"
        arms: dict[str, Arm] = {}
        for s in self.jobs.get((split, scenario, variation), ()):
            key = self.plan.answer_key(s, split, v)
            arms.setdefault(key, Arm(key, s.phase, self.plan.masks(s, v, split), draw=s.draw, labels=s.labels()))
        return list(arms.values())


@dataclass(frozen=True)
class StudyOutcome:
    """What the study's results are computed from (:func:`biasprune.study.results.write_results`).

    Attributes:
        plan: the masks and answer-piece keys of every arm (its ``store`` holds the pieces).
        eval_keys: the evaluated (split, scenario, variation) triples, dev and test.
        table: one row per grid point and split (:func:`biasprune.study.choose.point_table`).
        chosen: the point chosen on dev for every (units, strategy, context); None where none qualified.
    """

    plan: StudyPlan
    eval_keys: tuple[EvalKey, ...]
    table: tuple[dict, ...] = ()
    chosen: Mapping[tuple[str, str, str], ArmSpec | None] = field(default_factory=dict)
