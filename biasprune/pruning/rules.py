"""Which units to prune: selection rules over the two groups' scores, at a pruning budget.

A *pool* is one unit group (scope ``module``: one projection's channels, one attention module's heads) or
all unit groups given, concatenated in key order (scope ``global``: all units of a kind). In a pool of n
units with target-group scores t = S_target and reference-group scores r = S_reference:

* ``set_difference`` (the paper's rule, after Wei et al. 2024): prune u iff u is among the ⌈q·n⌉ highest
  t and NOT among the ⌈p·n⌉ highest r. With a budget b, q is replaced by the budget: prune the b highest
  t among the units outside the reference group's top ⌈p·n⌉ (fewer when fewer remain).
* ranking rules: prune the b highest values of a per-unit statistic (a budget is required):

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

When the example counts n_target, n_reference are given, t and r are the group means S/n (the scores file
holds S_G and n_G, nothing else); otherwise the sums (the same thing for balanced groups). Ties always
break towards the lower index (position in the pool). Scores must be finite.

A budget is a count of units (``12``: 12 per pool) or a fraction of each pool's units (``0.005`` or
``"0.5%"``: ⌈0.005·n⌉ per pool, robust to float noise); see :func:`parse_budget`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
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
    "Scope",
    "keep_masks",
    "n_top",
    "parse_budget",
    "pruned_by_kind",
    "pruned_counts",
    "pruned_share",
    "random_keep_like",
    "random_prune_like",
    "rule_statistic",
    "select_prune",
    "top_k_mask",
]

Scope = Literal["module", "global"]
SCOPES = ("module", "global")
Rule = Literal["set_difference", "target", "difference", "relative_difference", "log_ratio", "rank_difference"]
RULES = ("set_difference", "target", "difference", "relative_difference", "log_ratio", "rank_difference")
RANKING_RULES = RULES[1:]

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


def rule_statistic(rule: str, t: torch.Tensor, r: torch.Tensor, floor_quantile: float = 0.5) -> torch.Tensor:
    """The float64 statistic a ranking rule sorts a pool by (−inf: never pruned). See the module docstring."""
    t, r = t.double(), r.double()
    if rule == "target":
        return t.clone()
    if rule == "difference":
        return t - r
    if rule == "relative_difference":
        total = t + r
        eligible = total > _quantile(total, floor_quantile)  # strictly above a value >= 0: the ratio is defined
        return torch.where(eligible, (t - r) / torch.where(eligible, total, 1.0), -math.inf)
    if rule == "log_ratio":
        mean = (t + r) / 2.0
        floor = _quantile(mean, floor_quantile)
        if floor <= 0:
            positive = mean[mean > 0]
            floor = float(positive.min()) if positive.numel() else 1.0
        return torch.log((t + floor) / (r + floor))
    if rule == "rank_difference":
        return _quantile_ranks(t) - _quantile_ranks(r)
    raise ValueError(f"{rule!r} is not a ranking rule; valid choices: {list(RANKING_RULES)}")


def _prune_pool(
    t: torch.Tensor, r: torch.Tensor, rule: str, p: float, q: float, budget: Budget | None, fq: float
) -> torch.Tensor:
    n = t.shape[0]
    if rule == "set_difference":
        protected = top_k_mask(r, n_top(p, n))
        if budget is None:
            return top_k_mask(t, n_top(q, n)) & ~protected
        stat = torch.where(protected, -math.inf, t.double())
    else:
        stat = rule_statistic(rule, t, r, fq)
    k = min(budget.units(n), int(torch.isfinite(stat).sum()))
    return top_k_mask(stat, k)


def _check_scores(name: str, key: str, s: torch.Tensor) -> None:
    if s.ndim != 1:
        raise ValueError(f"{name} scores of {key!r} have shape {tuple(s.shape)}; one score per unit expected")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name} scores of {key!r} hold {int((~torch.isfinite(s)).sum())} non-finite value(s)")


def select_prune(
    target: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    *,
    rule: Rule = "set_difference",
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
        rule: one of :data:`RULES`.
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
    check_choice(flags["rule"], rule, RULES)
    check_choice(flags["scope"], scope, SCOPES)
    check_fraction(flags["p"], p)
    check_fraction(flags["q"], q)
    check_fraction(flags["floor_quantile"], floor_quantile)
    budget = None if budget is None else parse_budget(budget, flags["budget"])
    if budget is None and rule != "set_difference":
        raise ValueError(
            f"{flags['rule']}={rule!r} ranks units and needs a budget: set {flags['budget']}"
            " (a count such as 12, a fraction such as 0.005, or '0.5%')"
        )
    keys = list(target) if keys is None else list(keys)
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
        return _prune_pool(t, r, rule, p, q, budget, floor_quantile)

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
    rule: Rule = "set_difference",
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
                f" {tuple(m.shape)} (for uint8 keep-masks use random_keep_like)"
            )
    keys = list(prune)
    if scope == "module":
        return {k: _draw(m.shape[0], int(m.sum()), seed, k).to(m.device) for k, m in prune.items()}
    if not keys:
        return {}
    sizes = [prune[k].shape[0] for k in keys]
    pooled = _draw(sum(sizes), sum(int(prune[k].sum()) for k in keys), seed, "\x1f".join(keys))
    return {k: m.to(prune[k].device) for k, m in zip(keys, torch.split(pooled, sizes))}


def random_keep_like(keep: Mapping[str, torch.Tensor], scope: Scope, seed: int) -> dict[str, torch.Tensor]:
    """:func:`random_prune_like` for uint8 keep-masks (1 = keep): returns uint8 keep-masks."""
    drawn = random_prune_like({k: m == 0 for k, m in keep.items()}, scope, seed)
    return {k: (~m).to(torch.uint8) for k, m in drawn.items()}


# ------------------------------------------------------------------------------------------ counts
def _pruned(m: torch.Tensor) -> int:
    """Bool masks are prune masks (True = prune); integer masks are keep-masks (0 = pruned)."""
    return int(m.sum()) if m.dtype == torch.bool else int((m == 0).sum())


def pruned_counts(masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Pruned units per key, for bool prune masks (True = prune) or uint8 keep-masks (0 = pruned)."""
    return {k: _pruned(m) for k, m in masks.items()}


def pruned_by_kind(masks: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """kind (the key's part before ``/``) -> (pruned units, units)."""
    out: dict[str, tuple[int, int]] = {}
    for k, m in masks.items():
        kind = k.split("/", 1)[0]
        pruned, total = out.get(kind, (0, 0))
        out[kind] = (pruned + _pruned(m), total + int(m.numel()))
    return out


def pruned_share(masks: Mapping[str, torch.Tensor]) -> float:
    """Pruned units / all units of the masks (0.0 when there are none)."""
    total = sum(int(m.numel()) for m in masks.values())
    return sum(_pruned(m) for m in masks.values()) / total if total else 0.0
