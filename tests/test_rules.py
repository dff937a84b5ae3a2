"""The rule registry's seam: a user's rule from Python and from a CLI config, against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biasprune.callbacks import PruningCallback
from biasprune.cli import main
from biasprune.core.artifacts import read_safetensors
from biasprune.pruning.factory import MaskFactory
from biasprune.pruning.rules import (
    RULES,
    Rule,
    RuleSettings,
    SelectionRule,
    keep_masks,
    resolve_rule,
    rule_name,
    select_prune,
)
from biasprune.scoring.accumulate import sum_scores
from biasprune.scoring.scorefile import read_scores, read_scores_meta


# --------------------------------------------------------------------------------- a user's rules
def weighted_difference(t: torch.Tensor, r: torch.Tensor, settings: RuleSettings) -> torch.Tensor:
    """A statistic function: t - 0.5 r."""
    return t - 0.5 * r


class WeightedDifference(SelectionRule):
    """A rule given by class_path: t - alpha r, never pruning units whose t is below ``min_target``."""

    def __init__(self, alpha: float = 0.5, min_target: float = 0.0) -> None:
        self.alpha = alpha
        self.min_target = min_target

    def statistic(self, t: torch.Tensor, r: torch.Tensor, settings: RuleSettings) -> torch.Tensor:
        return torch.where(t >= self.min_target, t - self.alpha * r, -math.inf)


def brute(t, r, alpha, k, min_target=-math.inf):
    """Prune the k highest t - alpha r among units with t >= min_target, ties to the lower index."""
    stat = [t[u] - alpha * r[u] if t[u] >= min_target else -math.inf for u in range(len(t))]
    order = sorted((u for u in range(len(t)) if stat[u] != -math.inf), key=lambda u: (-stat[u], u))
    return np.array([u in set(order[:k]) for u in range(len(t))])


def constructed(seed: int):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 30, size=3)
    tgt = {f"neuron/m{i}": rng.integers(0, 5, size=n).astype(np.float64) for i, n in enumerate(sizes)}
    ref = {k: rng.integers(0, 5, size=v.size).astype(np.float64) for k, v in tgt.items()}
    return tgt, ref


def as_torch(d):
    return {k: torch.from_numpy(v) for k, v in d.items()}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("form", ["function", "dotted path", "instance", "class path"])
def test_a_users_rule_from_python_matches_brute_force(form, seed):
    tgt, ref = constructed(seed)
    alpha, min_target = (0.5, -math.inf) if form in ("function", "dotted path") else (0.25, 2.0)
    rule = {"function": weighted_difference, "dotted path": f"{__name__}.weighted_difference",
            "instance": WeightedDifference(alpha, min_target), "class path": f"{__name__}.WeightedDifference"}[form]
    if form == "class path":
        alpha, min_target = 0.5, 0.0  # a class named by its path is built with its defaults
    got = select_prune(as_torch(tgt), as_torch(ref), rule=rule, budget=3)
    for k in tgt:
        np.testing.assert_array_equal(got[k].numpy(), brute(tgt[k], ref[k], alpha, 3, min_target), err_msg=k)


def test_names_of_users_rules_are_stable_and_builtins_keep_theirs():
    assert rule_name("log_ratio") == "log_ratio" and resolve_rule("set_difference").needs_budget is False
    assert all(resolve_rule(name).name == name for name in RULES)
    assert rule_name(weighted_difference) == f"{__name__}.weighted_difference"
    assert rule_name(WeightedDifference(0.3)) == f"{__name__}.WeightedDifference(alpha=0.3, min_target=0.0)"
    assert rule_name(f"{__name__}.weighted_difference") == f"{__name__}.weighted_difference"


def test_the_callback_takes_a_users_rule_and_names_it_in_its_settings():
    tgt, ref = constructed(3)
    cb = PruningCallback(rule=WeightedDifference(alpha=0.25), budget=2, random_draws=1)
    assert cb.settings()["rule"] == f"{__name__}.WeightedDifference(alpha=0.25, min_target=0.0)"
    masks = cb.select(as_torch(tgt), as_torch(ref))
    for k in tgt:
        np.testing.assert_array_equal((masks[k] == 0).numpy(), brute(tgt[k], ref[k], 0.25, 2, 0.0), err_msg=k)
    # the study finds the callback's own rule by its name (it is importable by no path)
    factory = cb.mask_settings().factory
    assert factory.with_rule(factory.rule_name) is factory
    assert factory.with_rule("target").rule_name == "target"


def test_a_users_rule_without_a_budget_must_say_so():
    class Threshold(SelectionRule):
        needs_budget = False

        def statistic(self, t, r, settings):
            return torch.where(t > r, t, -math.inf)

    s = {"neuron/a": torch.tensor([3.0, 1.0, 2.0]), "neuron/b": torch.tensor([0.0, 5.0])}
    r = {"neuron/a": torch.tensor([1.0, 2.0, 2.0]), "neuron/b": torch.tensor([1.0, 1.0])}
    got = select_prune(s, r, rule=Threshold())
    assert got["neuron/a"].tolist() == [True, False, False] and got["neuron/b"].tolist() == [False, True]
    with pytest.raises(ValueError, match=r"pruning\.rule='.*weighted_difference' ranks units and needs a budget"):
        select_prune(s, r, rule=weighted_difference)


@pytest.mark.parametrize(
    "rule, match",
    [
        ("nosuch.module.stat", r"pruning\.rule='nosuch\.module\.stat' is neither a rule nor an importable .* valid choices: \['set_difference'"),
        (f"{__name__}.constructed_nothing", r"is neither a rule nor an importable function"),
        (f"{__name__}.math", r"names a module, not a statistic function or SelectionRule"),
        (3, r"pruning\.rule=3 is not a rule; valid choices"),
        (lambda t, r, s: t[:1], r"returned \(1,\) for a pool of 3 units; one value per unit expected"),
        (lambda t, r, s: t * math.nan, r"returned NaN for 3 unit\(s\); use -inf"),
        (SelectionRule(), r"SelectionRule must implement statistic\(t, r, settings\)"),
    ],
)
def test_bad_users_rules_are_named(rule, match):
    s = {"neuron/a": torch.ones(3)}
    with pytest.raises((ValueError, NotImplementedError), match=match):
        select_prune(s, s, rule=rule, budget=1)


def test_the_factory_and_keep_masks_hold_the_resolved_rule():
    factory = MaskFactory(rule=f"{__name__}.weighted_difference")
    assert isinstance(factory.rule, Rule) and factory.rule_name == f"{__name__}.weighted_difference"
    tgt, ref = constructed(1)
    keep = factory.select(as_torch(tgt), as_torch(ref), "neuron", 0.35, 0.4, budget=4)
    assert {k: m for k, m in keep.items()}.keys() == tgt.keys()
    same = keep_masks(as_torch(tgt), as_torch(ref), "neuron", 0.35, 0.4, "module", rule=weighted_difference, budget=4)
    assert all(torch.equal(keep[k], same[k]) for k in keep)


# --------------------------------------------------------------------------------- from a CLI config
def test_a_users_rule_from_a_cli_config(tiny_model_dir, tmp_path):
    """``pruning.rule`` given by class_path in a YAML config: the run's masks are the rule's, by brute force on the
    run's own scores (group means), and the masks file names the rule."""
    names = tmp_path / "names.csv"
    names.write_text("name,group,gender\n" + "".join(
        f"Person{i} {'Becker' if i % 2 else 'Washington'},{'white' if i % 2 else 'black'},{'man' if i % 4 < 2 else 'woman'}\n"
        for i in range(20)))
    config = tmp_path / "rule.yaml"
    config.write_text(f"""
model:
  model_name_or_path: {tiny_model_dir}
  dtype: float64
  score_heads: false
  targets: {{max_new_tokens: 4}}
  generation: {{samples: 2, max_new_tokens: 4}}
  evaluation: {{bootstrap_samples: 20, permutation_samples: 20}}
data:
  names: {names}
  scoring: [purchase/car]
  evaluation: [purchase/car]
  split_fractions: [0.4, 0.2, 0.4]
  batch_size: 4
pruning:
  rule:
    class_path: {__name__}.WeightedDifference
    init_args: {{alpha: 0.25}}
  budget: 2
  random_draws: 0
trainer:
  accelerator: cpu
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {tmp_path / "runs"}, name: rule}}
""")
    main(["fit", "--config", str(config)])
    run = next((tmp_path / "runs" / "rule").glob("version_*"))
    masks, meta = read_safetensors(run / "masks.safetensors")
    assert meta["rule"] == f"{__name__}.WeightedDifference(alpha=0.25, min_target=0.0)"
    per_variation, _ = read_scores(run / "scores_by_variation.safetensors")
    scores = sum_scores(per_variation)
    n = read_scores_meta(run / "scores_by_variation.safetensors")["n_examples"]
    assert masks and all(k.startswith("neuron/") for k in masks)
    for k, m in masks.items():
        t = (scores["black"][k] / n["black"]).tolist()
        r = (scores["white"][k] / n["white"]).tolist()
        np.testing.assert_array_equal((m == 0).numpy(), brute(t, r, 0.25, 2, 0.0), err_msg=k)
