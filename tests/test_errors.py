"""Errors at the boundary name the argument, the value and the valid choices."""

from __future__ import annotations

import pytest
import torch

from biasprune.answers.answering import TargetConfig
from biasprune.callbacks import PruningCallback
from biasprune.models.loading import resolve_dtype
from biasprune.pipeline.module import BiasPruneModule
from biasprune.pruning.masks import MaskError
from biasprune.stats.rows import EvaluationConfig


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(score_neurons=False, score_heads=False), "score_neurons and model.score_heads are both false"),
        (dict(neuron_modules=["fc1"]), r"unknown module\(s\) \['fc1'\]; valid choices"),
        (dict(objective="likelihood"), r"model.objective='likelihood' is not valid; valid choices: \['nll', 'contrastive', 'wanda', 'atp', 'direction', 'direction_name', 'causal'\]"),
        (dict(evaluation=EvaluationConfig(inlier_bounds="/nowhere/bounds.json")), r"evaluation.inlier_bounds: file '/nowhere/bounds.json' does not exist"),
        (dict(evaluation=EvaluationConfig(baseline=False)), r"baseline=false needs model.evaluation.inlier_bounds"),
    ],
)
def test_module_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BiasPruneModule(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=0), r"model.targets.max_new_tokens must be >= 1, got 0"),
    (dict(temperature=-0.5), r"model.targets.temperature must be >= 0, got -0.5"),
])
def test_target_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TargetConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(units="layers"), r"pruning.units='layers' is not valid; valid choices: \['neurons', 'heads', 'both'\]"),
        (dict(scope="model"), r"pruning.scope='model' is not valid; valid choices: \['module', 'global'\]"),
        (dict(head_scope="layer"), r"pruning.head_scope='layer' is not valid"),
        (dict(rule="magic"), r"pruning.rule='magic' is not valid; valid choices: \['set_difference'"),
        (dict(head_q=2.0), r"pruning.head_q=2.0 must be a fraction in \[0, 1\]"),
        (dict(random_draws=-1), r"pruning.random_draws must be >= 0, got -1"),
        (dict(budget="lots"), r"pruning.budget"),
        (dict(floor_quantile=1.5), r"pruning.floor_quantile=1.5 must be a fraction"),
    ],
)
def test_callback_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruningCallback(**kwargs)


def test_callback_masks_file(tmp_path, monkeypatch):
    with pytest.raises(MaskError, match="does not exist"):
        PruningCallback(masks_file=str(tmp_path / "missing.safetensors"))
    import biasprune.pruning.masks as masks_module

    monkeypatch.setattr(masks_module, "load_masks", lambda path: ({}, {}))  # a readable file without tensors
    with pytest.raises(MaskError, match="masks file 'x.safetensors' holds no masks"):
        PruningCallback(masks_file="x.safetensors")


def test_callback_needs_scores_of_the_pruned_kind():
    cb = PruningCallback(units="heads")
    with pytest.raises(RuntimeError, match=r"pruning.units='heads' needs head scores, but none were computed \(set model.score_heads true\)"):
        cb.select({"neuron/a": torch.ones(3)}, {"neuron/a": torch.ones(3)})


def test_bad_dtype():
    with pytest.raises(ValueError, match=r"dtype='int4' is not valid; valid choices: \['auto', 'float32', 'bfloat16', 'float16', 'float64'\]"):
        resolve_dtype("int4")
