"""Which units to prune: selection rules over the two groups' scores, at a pruning budget.

A *pool* is one unit group (scope ``module``: one projection's channels, one attention module's heads) or
all unit groups given, concatenated in key order (scope ``global``: all units of a kind). In a pool of n
units with target-group scores t = S_target and reference-group scores r = S_reference, a rule is a
*statistic*: a float64 value per unit (−inf: never pruned), and the budget's highest finite values are
pruned (ties to the lower index; with no budget, which only ``set_difference`` allows, every finite unit).
The rules live in a registry, name -> :class:`Rule` (docs/method.md, "Selection rules"):

* ``set_difference`` (the paper's rule, after Wei et al. 2024): prune u iff u is among the ⌈q·n⌉ highest
  t and NOT among the ⌈p·n⌉ highest r. With a budget b, q is replaced by the budget: prune the b highest
  t among the units outside the reference group's top ⌈p·n⌉ (fewer when fewer remain).
* ranking rules (a budget is required):

  - ``target``:              t
  - ``difference``:          t − r
  - ``relative_difference``: (t − r) / (t + r), only among units whose t + r is strictly above the
                             pool's ``floor_quantile`` (default 0.5: the median) of t + r; the others
                             are never pruned
  - ``log_ratio``:           log((t + f) / (r + f)), f = the pool's ``floor_quantile`` of (t + r) / 2
                             (when that is 0: the smallest positive (t + r) / 2, or 1 if there is none).
                             A smooth version of the filter: (t − r) / (t + r + 2f) = tanh(log_ratio / 2)
                             ranks the same, so it ranks like the relative difference for units far
                             above the floor and shrinks units near or below it towards 0. With a
                             constant coefficient of variation of the per-example scores, log(t / r)
                             has the same variance for every unit, so the unfloored ratio is a z-score;
                             the floor guards against units whose tiny scores are mostly noise.
  - ``rank_difference``:     F_t(u) − F_r(u), F the unit's quantile in the pool (mid-rank − 1) / (n − 1)
                             (ties share their average rank): scale-free, so a few huge-score channels
                             ("massive activations") weigh no more than any other.

Adding a rule to the package is one function here, registered with ``@_register("name")``. A user's rule
needs no change to the package: give ``--pruning.rule`` the dotted path of a statistic function
(``mypkg.rules.my_statistic``), or a :class:`SelectionRule` subclass by ``class_path``/``init_args`` (as
Lightning's ``ModelPruning`` takes ``pruning_fn``); :func:`resolve_rule` turns any of these into a
:class:`Rule`.

When the example counts n_target, n_reference are given, t and r are the group means S/n (the scores file
holds S_G and n_G, nothing else); otherwise the sums (the same thing for balanced groups). Scores must be
finite.

A budget is a count of units (``12``: 12 per pool) or a fraction of each pool's units (``0.005`` or
``"0.5%"``: ⌈0.005·n⌉ per pool, robust to float noise); see :func:`parse_budget`.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from biasprune.core.checks import check_choice, check_fraction

__all__ = [
    "RANKING_RULES",
    "RULES",
    "SCOPES",
    "Budget",
    "Rule",
    "RuleLike",
    "RuleSettings",
    "Scope",
    "SelectionRule",
    "keep_masks",
    "n_top",
    "parse_budget",
    "random_prune_like",
    "resolve_rule",
    "rule_name",
    "select_prune",
    "top_k_mask",
]

Scope = Literal["module", "global"]
SCOPES = ("module", "global")

# Flag names used in error messages (the CLI's spelling).
NEURON_FLAGS = {name: f"pruning.{name}" for name in ("rule", "p", "q", "budget", "scope", "floor_quantile")}
HEAD_FLAGS = {**NEURON_FLAGS, **{name: f"pruning.head_{name}" for name in ("p", "q", "budget", "scope")}}


def n_top(fraction: float, n: int) -> int:
    """ceil(fraction * n), robust to float noise (0.07 * 100 is 7.000000000000001, and means 7)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(n, math.ceil(round(fraction * n, 9)))


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k highest scores; among equal scores the lower index wins."""
    mask = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    if k <= 0:
        return mask
    # A stable sort keeps equal scores in index order, so ties go to the lower index.
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    mask[order[:k]] = True
    return mask


# ------------------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Budget:
    """Units to prune per pool: exactly one of ``count`` (units) or ``fraction`` (of the pool's units)."""

    count: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.fraction is None):
            raise ValueError("a Budget has exactly one of count and fraction")

    def units(self, n: int) -> int:
        """The number of units pruned in a pool of n: min(count, n), or ⌈fraction·n⌉."""
        return min(self.count, n) if self.count is not None else n_top(self.fraction, n)

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.fraction * 100:g}%"


def parse_budget(value: Budget | float | int | str, flag: str = "pruning.budget") -> Budget:
    """A budget from the command line or a config.

    ``12`` (an int, or a float > 1 that is whole) is 12 units per pool; ``0.005`` (a float in [0, 1)) is
    0.5% of each pool's units, and so is the string ``"0.5%"``; ``"12"`` and ``"0.005"`` read as numbers.
    ``1`` is one unit and ``"100%"`` all of them; the float ``1.0`` is refused as ambiguous (a command line
    typed as float turns ``1`` into ``1.0``).
    """
    if isinstance(value, Budget):
        return value
    hint = "give a count of units (12), a fraction of units (0.005) or a percentage ('0.5%')"
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                pct = float(text[:-1])
            except ValueError:
                pct = math.nan
            if not 0.0 <= pct <= 100.0:
                raise ValueError(f"{flag}={value!r} is not a budget; {hint}")
            return Budget(fraction=pct / 100.0)
        for convert in (int, float):
            try:
                number = convert(text)
            except ValueError:
                continue
            return parse_budget(number, flag)
        raise ValueError(f"{flag}={value!r} is not a budget; {hint}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{flag}={value!r} is not a budget; {hint}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{flag}={value} is a negative count; {hint}")
        return Budget(count=value)
    if value == 1.0:
        raise ValueError(f"{flag}=1.0 is ambiguous: one unit (give the integer 1) or all units (give '100%')")
    if math.isfinite(value) and 0.0 <= value < 1.0:
        return Budget(fraction=float(value))
    if math.isfinite(value) and value > 1.0 and value == int(value):
        return Budget(count=int(value))
    raise ValueError(f"{flag}={value!r} is neither a fraction in [0, 1] nor a whole count; {hint}")


# ------------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class RuleSettings:
    """What a rule sees of a selection besides the two scores: the pruning point and the floor.

    Attributes:
        p: fraction of the pool protected as most important for the reference group (``set_difference``).
        q: fraction of the pool most important for the target group (``set_difference`` without a budget).
        budget: the units pruned per pool, or None (then the rule's own finite values are all pruned).
        floor_quantile: the pool quantile of the floor (``relative_difference``, ``log_ratio``).
    """

    p: float = 0.35
    q: float = 0.40
    budget: Budget | None = None
    floor_quantile: float = 0.5


#: A rule's statistic: (t, r, settings) -> float64 [n], one value per unit of the pool; −inf is never pruned.
Statistic = Callable[[torch.Tensor, torch.Tensor, RuleSettings], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """A selection rule: its name (``masks.safetensors`` metadata, the study's ``rule`` column), its statistic,
    and whether it needs a budget (a ranking rule) or picks its own count from p and q (``set_difference``)."""

    name: str
    statistic: Statistic
    needs_budget: bool = True


class SelectionRule:
    """Base class of a user's rule given by ``class_path`` (``--pruning.rule.class_path mypkg.MyRule``).

    Subclasses type their ``__init__`` arguments (they become ``--pruning.rule.init_args.*``) and implement
    :meth:`statistic`; ``needs_budget = False`` only for a rule whose statistic leaves −inf on every unit it
    does not prune (then no budget is required).
    """

    needs_budget: bool = True

    def statistic(self, t: torch.Tensor, r: torch.Tensor, settings: RuleSettings) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__qualname__} must implement statistic(t, r, settings)")

    @property
    def name(self) -> str:
        """The class path with its arguments, e.g. ``mypkg.MyRule(alpha=0.3)``: stable across runs."""
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()) if not k.startswith("_"))
        return f"{type(self).__module__}.{type(self).__qualname__}({args})"


#: What ``--pruning.rule`` (and ``select_prune(rule=...)``) accepts: a registered name or a dotted path to a
#: statistic function or a SelectionRule class, a SelectionRule instance (``class_path``), a statistic, a Rule.
RuleLike = str | SelectionRule | Rule | Statistic

_REGISTRY: dict[str, Rule] = {}


def _register(name: str, needs_budget: bool = True) -> Callable[[Statistic], Statistic]:
    def add(fn: Statistic) -> Statistic:
        _REGISTRY[name] = Rule(name, fn, needs_budget)
        return fn

    return add


def _quantile(x: torch.Tensor, q: float) -> float:
    return float(torch.quantile(x, q))  # linear interpolation, as numpy's default (q = 0.5: numpy's median)


def _quantile_ranks(x: torch.Tensor) -> torch.Tensor:
    """(mid-rank − 1) / (n − 1) in [0, 1], ties sharing their average rank; 0 when n == 1."""
    n = x.shape[0]
    if n <= 1:
        return torch.zeros_like(x)
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mid = (ends - counts.double() + ends - 1.0) / 2.0  # 0-based average position of each distinct value
    return mid[inverse] / (n - 1)


@_register("set_difference", needs_budget=False)
def _set_difference(t: torch.Tensor, r: torch.Tensor, s: RuleSettings) -> torch.Tensor:
    """t outside the reference top ⌈p·n⌉; without a budget, only within the target top ⌈q·n⌉."""
    n = t.shape[0]
    protected = top_k_mask(r, n_top(s.p, n))
    if s.budget is None:
        return torch.where(top_k_mask(t, n_top(s.q, n)) & ~protected, t, -math.inf)
    return torch.where(protected, -math.inf, t)


@_register("target")
def _target(t: torch.Tensor, r: torch.Tensor, s: RuleSettings) -> torch.Tensor:
    return t.clone()


@_register("difference")
def _difference(t: torch.Tensor, r: torch.Tensor, s: RuleSettings) -> torch.Tensor:
    return t - r


@_register("relative_difference")
def _relative_difference(t: torch.Tensor, r: torch.Tensor, s: RuleSettings) -> torch.Tensor:
    total = t + r
    eligible = total > _quantile(total, s.floor_quantile)  # strictly above a value >= 0: the ratio is defined
    return torch.where(eligible, (t - r) / torch.where(eligible, total, 1.0), -math.inf)


@_register("log_ratio")
def _log_ratio(t: torch.Tensor, r: torch.Tensor, s: RuleSettings) -> torch.Tensor:
    mean = (t + r) / 2.0
    floor = _quantile(mean, s.floor_quantile)
    if floor <= 0:
        positive = mean[mean > 0]
        floor = float(positive.min()) if positive.numel() else 1.0
    return torch.log((t + floor) / (r + floor))


@_register("rank_difference")
def _rank_difference(t: torch.Tensor, r: torch.Tensor, s: RuleSettings) -> torch.Tensor:
    return _quantile_ranks(t) - _quantile_ranks(r)


#: The registered rules (the paper's first), and those that rank units at a budget.
RULES: tuple[str, ...] = tuple(_REGISTRY)
RANKING_RULES: tuple[str, ...] = tuple(k for k, v in _REGISTRY.items() if v.needs_budget)


def _import(path: str, flag: str) -> object:
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"{flag}={path!r} is neither a rule nor an importable function or class ({type(err).__name__}: {err});"
            f" valid choices: {list(RULES)}, or the dotted path of a statistic function or SelectionRule class"
        ) from None


def resolve_rule(rule: RuleLike, flag: str = "pruning.rule") -> Rule:
    """The :class:`Rule` of a registered name, a dotted path (``mypkg.rules.stat``: a statistic function, a
    :class:`SelectionRule` subclass without arguments, or an instance), a SelectionRule, a statistic or a Rule."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, SelectionRule):
        return Rule(rule.name, rule.statistic, bool(rule.needs_budget))
    if isinstance(rule, str):
        if rule in _REGISTRY:
            return _REGISTRY[rule]
        if "." not in rule.strip("."):
            check_choice(flag, rule, RULES)
        found = _import(rule, flag)
        if isinstance(found, type) and issubclass(found, SelectionRule):
            found = found()
        if isinstance(found, SelectionRule):
            return resolve_rule(found, flag)
        if callable(found):
            return Rule(rule, found)
        raise ValueError(f"{flag}={rule!r} names a {type(found).__name__}, not a statistic function or SelectionRule")
    if callable(rule):
        return Rule(f"{getattr(rule, '__module__', '')}.{getattr(rule, '__qualname__', type(rule).__qualname__)}", rule)
    raise ValueError(f"{flag}={rule!r} is not a rule; valid choices: {list(RULES)}, a dotted path, or a SelectionRule")


def rule_name(rule: RuleLike) -> str:
    """The name a rule is written under (metadata, fingerprints, the study's columns)."""
    return resolve_rule(rule).name


def _statistic(rule: Rule, t: torch.Tensor, r: torch.Tensor, settings: RuleSettings) -> torch.Tensor:
    stat = rule.statistic(t, r, settings)
    if not isinstance(stat, torch.Tensor) or stat.shape != t.shape:
        shape = tuple(stat.shape) if isinstance(stat, torch.Tensor) else type(stat).__name__
        raise ValueError(f"rule {rule.name!r} returned {shape} for a pool of {t.shape[0]} units; one value per unit expected")
    if bool(torch.isnan(stat).any()):
        raise ValueError(f"rule {rule.name!r} returned NaN for {int(torch.isnan(stat).sum())} unit(s); use -inf for 'never prune'")
    return stat.double()


def _prune_pool(t: torch.Tensor, r: torch.Tensor, rule: Rule, settings: RuleSettings) -> torch.Tensor:
    """The units of one pool whose statistic is among the budget's highest finite values (all finite ones
    without a budget)."""
    stat = _statistic(rule, t, r, settings)
    finite = int(torch.isfinite(stat).sum())
    k = finite if settings.budget is None else min(settings.budget.units(t.shape[0]), finite)
    return top_k_mask(stat, k)


def _check_scores(name: str, key: str, s: torch.Tensor) -> None:
    if s.ndim != 1:
        raise ValueError(f"{name} scores of {key!r} have shape {tuple(s.shape)}; one score per unit expected")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name} scores of {key!r} hold {int((~torch.isfinite(s)).sum())} non-finite value(s)")


def _check_pair(target: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in reference]
    if missing:
        raise KeyError(f"reference scores lack {len(missing)} unit group(s), e.g. {missing[:3]}")
    for k in keys:
        _check_scores("target", k, target[k])
        _check_scores("reference", k, reference[k])
        if target[k].shape != reference[k].shape:
            raise ValueError(
                f"target and reference scores of {k!r} differ in shape: {tuple(target[k].shape)}"
                f" vs {tuple(reference[k].shape)}"
            )


def _settings(rule: RuleLike, p: float, q: float, budget, floor_quantile: float, flags: Mapping[str, str]) -> tuple[Rule, RuleSettings]:
    """The rule and its settings, every argument checked (errors name the flags)."""
    resolved = resolve_rule(rule, flags["rule"])
    check_fraction(flags["p"], p)
    check_fraction(flags["q"], q)
    check_fraction(flags["floor_quantile"], floor_quantile)
    budget = None if budget is None else parse_budget(budget, flags["budget"])
    if budget is None and resolved.needs_budget:
        raise ValueError(
            f"{flags['rule']}={resolved.name!r} ranks units and needs a budget: set {flags['budget']}"
            " (a count such as 12, a fraction such as 0.005, or '0.5%')"
        )
    return resolved, RuleSettings(p, q, budget, floor_quantile)


def select_prune(
    target: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    *,
    rule: RuleLike = "set_difference",
    p: float = 0.35,
    q: float = 0.40,
    budget: Budget | float | int | str | None = None,
    scope: Scope = "module",
    keys: Sequence[str] | None = None,
    n_target: int | None = None,
    n_reference: int | None = None,
    floor_quantile: float = 0.5,
    flags: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean prune masks (True = prune) for each key, by one rule (see the module docstring).

    Args:
        target: scores S_target per unit group (e.g. ``neuron/model.layers.0.mlp.up_proj``).
        reference: scores S_reference with the same keys and shapes.
        rule: a registered rule (:data:`RULES`), a dotted path, a :class:`SelectionRule` or a statistic.
        p: ``set_difference``: fraction of each pool's units protected as most important for the reference group.
        q: ``set_difference`` without a budget: fraction of each pool's units most important for the target group.
        budget: units pruned per pool (see :func:`parse_budget`); required by the ranking rules, and replaces q
            for ``set_difference``. p and q are ignored by the ranking rules.
        scope: ``module`` selects within each key; ``global`` pools all keys (in ``keys`` order).
        keys: the groups to select over, in order; defaults to ``target``'s keys.
        n_target, n_reference: the groups' example counts; when both are given, the rules compare the
            means S/n instead of the sums.
        floor_quantile: ``relative_difference``: the pool quantile of t + r a unit must exceed;
            ``log_ratio``: the pool quantile of (t + r) / 2 used as the floor f. 0.5 (the median) by default.
        flags: flag names for error messages (keys ``rule, p, q, budget, scope, floor_quantile``); the neuron
            flags by default.
    """
    flags = {**NEURON_FLAGS, **(flags or {})}
    check_choice(flags["scope"], scope, SCOPES)
    resolved, settings = _settings(rule, p, q, budget, floor_quantile, flags)
    keys = list(target) if keys is None else list(keys)
    _check_pair(target, reference, keys)
    if not keys:
        return {}
    n_t = n_r = 1
    if n_target is not None and n_reference is not None:
        if n_target <= 0 or n_reference <= 0:
            raise ValueError(f"example counts must be positive, got n_target={n_target}, n_reference={n_reference}")
        n_t, n_r = n_target, n_reference

    def pool(ks: list[str]) -> torch.Tensor:
        t = torch.cat([target[k].double() for k in ks]) / n_t
        r = torch.cat([reference[k].double() for k in ks]) / n_r
        return _prune_pool(t, r, resolved, settings)

    if scope == "module":
        return {k: pool([k]) for k in keys}
    return dict(zip(keys, torch.split(pool(keys), [target[k].shape[0] for k in keys])))


def keep_masks(
    target: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    kind: str,
    p: float,
    q: float,
    scope: Scope,
    *,
    rule: RuleLike = "set_difference",
    budget: Budget | float | int | str | None = None,
    n_target: int | None = None,
    n_reference: int | None = None,
    floor_quantile: float = 0.5,
    flags: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """uint8 keep-masks (1 = keep) for the unit groups of one kind (``neuron`` or ``head``).

    The groups are the keys of ``target`` that start with ``kind/``, in their order (which is the pool
    order of scope ``global``). Empty when there is none. Errors name the head flags (``pruning.head_p``
    ...) for kind ``head`` unless ``flags`` says otherwise.
    """
    keys = [k for k in target if k.startswith(kind + "/")]
    flags = {**(HEAD_FLAGS if kind == "head" else NEURON_FLAGS), **(flags or {})}
    prune = select_prune(
        target, reference, rule=rule, p=p, q=q, budget=budget, scope=scope, keys=keys,
        n_target=n_target, n_reference=n_reference, floor_quantile=floor_quantile, flags=flags,
    )  # fmt: skip
    return {k: (~v).to(torch.uint8) for k, v in prune.items()}


# ------------------------------------------------------------------------------------ random control
def _stream_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (seed, name), independent of torch's global RNG and of Python's hash seed."""
    digest = hashlib.sha256(f"{int(seed)}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _draw(n: int, k: int, seed: int, name: str) -> torch.Tensor:
    """k of n units, uniformly without replacement, from a stream keyed by (seed, name)."""
    mask = torch.zeros(n, dtype=torch.bool)
    if k > 0:
        gen = torch.Generator().manual_seed(_stream_seed(seed, name))
        mask[torch.randperm(n, generator=gen)[:k]] = True
    return mask


def random_prune_like(prune: Mapping[str, torch.Tensor], scope: Scope, seed: int) -> dict[str, torch.Tensor]:
    """A uniformly drawn prune mask (bool, True = prune) with as many pruned units as ``prune``.

    Scope ``module``: the same count in each key, drawn from a stream keyed by (seed, key), so one key's
    draw does not depend on the others. Scope ``global``: the same total over all keys pooled in their
    order, every subset of that size equally likely, from a stream keyed by (seed, all key names).
    The draw is a pure function of (seed, key names, sizes, counts).
    """
    check_choice("pruning.scope", scope, SCOPES)
    for k, m in prune.items():
        if m.dtype != torch.bool or m.ndim != 1:
            raise TypeError(
                f"random_prune_like takes 1-d bool prune masks (True = prune); {k!r} is {m.dtype} of shape"
                f" {tuple(m.shape)} (pass keep-masks as {{key: m == 0}})"
            )
    keys = list(prune)
    if scope == "module":
        return {k: _draw(m.shape[0], int(m.sum()), seed, k).to(m.device) for k, m in prune.items()}
    if not keys:
        return {}
    sizes = [prune[k].shape[0] for k in keys]
    pooled = _draw(sum(sizes), sum(int(prune[k].sum()) for k in keys), seed, "\x1f".join(keys))
    return {k: m.to(prune[k].device) for k, m in zip(keys, torch.split(pooled, sizes))}
