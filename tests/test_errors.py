"""Errors at the boundary name the argument, the value and the valid choices."""

from __future__ import annotations

import pytest
import torch

from biasprune.evaluation import EvaluationConfig
from biasprune.masks import MaskError
from biasprune.models import resolve_dtype
from biasprune.module import BiasPruneModule
from biasprune.callbacks import PruningCallback


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(score_neurons=False, score_heads=False), "score_neurons and score_heads are both false"),
        (dict(response_max_new_tokens=0), "response_max_new_tokens must be >= 1, got 0"),
        (dict(response_temperature=-0.5), "response_temperature must be >= 0, got -0.5"),
        (dict(neuron_modules=["fc1"]), r"unknown module\(s\) \['fc1'\]; valid choices"),
        (dict(evaluation=EvaluationConfig(inlier_bounds="/nowhere/bounds.json")), r"evaluation.inlier_bounds: file '/nowhere/bounds.json' does not exist"),
    ],
)
def test_module_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BiasPruneModule(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(units="layers"), r"pruning.units='layers' is not valid; valid choices: \['neurons', 'heads', 'both'\]"),
        (dict(scope="model"), r"pruning.scope='model' is not valid; valid choices: \['module', 'global'\]"),
        (dict(head_scope="layer"), r"pruning.head_scope='layer' is not valid"),
        (dict(mode="soft"), r"pruning.mode='soft' is not valid; valid choices: \['reversible', 'hard'\]"),
        (dict(head_q=2.0), r"pruning.head_q=2.0 must be a fraction in \[0, 1\]"),
    ],
)
def test_callback_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruningCallback(**kwargs)


def test_callback_masks_file(tmp_path, monkeypatch):
    with pytest.raises(MaskError, match="does not exist"):
        PruningCallback(masks_file=str(tmp_path / "missing.safetensors"))
    import biasprune.callbacks.pruning as pruning

    monkeypatch.setattr(pruning, "load_masks", lambda path: ({}, {}))  # a readable file without tensors
    with pytest.raises(MaskError, match="masks file 'x.safetensors' holds no masks"):
        PruningCallback(masks_file="x.safetensors")


def test_callback_needs_scores_of_the_pruned_kind():
    cb = PruningCallback(units="heads")
    with pytest.raises(RuntimeError, match=r"pruning.units='heads' needs head scores, but none were computed \(set model.score_heads true\)"):
        cb.select({"neuron/a": torch.ones(3)}, {"neuron/a": torch.ones(3)})


def test_module_without_masks_cannot_export(tmp_path):
    with pytest.raises(RuntimeError, match="no masks are applied: nothing to export"):
        BiasPruneModule().export_pruned(tmp_path)


def test_bad_dtype():
    with pytest.raises(ValueError, match=r"dtype='int4' is not valid; valid choices: \['auto', 'float32', 'bfloat16', 'float16'\]"):
        resolve_dtype("int4")
