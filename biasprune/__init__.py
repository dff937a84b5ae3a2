"""biasprune: find and prune the units of an instruct LLM that drive racially biased answers.

The Python API, for notebooks, in Lightning's own terms (README, "Python"): a LightningModule
(:class:`BiasPruneModule`), a LightningDataModule (:class:`AuditDataModule`), a Callback (:class:`PruningCallback`)
and ``lightning.Trainer``; ``trainer.fit`` scores, ``trainer.validate`` answers every arm, and
``module.results`` holds the summary and the claims. The names below are imported on first use (PEP 562), so
``import biasprune`` loads neither torch nor Lightning.

One subpackage per stage of the pipeline, lowest first; a module imports its own subpackage and lower floors
only (``tests/test_layout.py``; ``docs/method.md`` maps every step to its file):

* ``core``: argument checks, the project's error classes, hooks, process collectives, atomic file writes;
* ``data``, ``models``, ``metrics``: scenarios, names and prompts; model ids, loading, identity and units;
  the SMD and inlier metrics;
* ``scoring``, ``pruning``, ``localize``: scoring objectives over one capture helper and the scores files;
  selection rules, masks, arms; the causal ablation search and the layer-wise causal trace;
* ``answers``, ``stats``: sampled answers and parsing; rows, the name bootstrap, intervals, power, claims;
* ``pipeline``: the LightningModule, strategies, resume, the end of a validate stage, the manifest;
* ``biasprune.datamodules``, ``biasprune.callbacks``: the data module and the pruning callback;
* ``report``, ``study``, ``plant``: the audit report, the generalization study, planted controls;
* ``cli``: the ``biasprune`` command.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "BiasPruneModule": "biasprune.pipeline.module",
    "AuditDataModule": "biasprune.datamodules.audit",
    "PruningCallback": "biasprune.callbacks.pruning",
    "BiasPruneTrainer": "biasprune.study.trainer",
    "TargetConfig": "biasprune.answers.answering",
    "GenerationConfig": "biasprune.answers.generation",
    "EvaluationConfig": "biasprune.stats.rows",
    "StudyConfig": "biasprune.study.config",
    "GridConfig": "biasprune.study.config",
    "SelectionRule": "biasprune.pruning.rules",
    "RuleSettings": "biasprune.pruning.rules",
    "StandardizedMeanDifference": "biasprune.metrics.classes",
    "InlierRatio": "biasprune.metrics.classes",
    "parse_number": "biasprune.answers.parsing",
}

__all__ = [  # the names of _EXPORTS
    "AuditDataModule",
    "BiasPruneModule",
    "BiasPruneTrainer",
    "EvaluationConfig",
    "GenerationConfig",
    "GridConfig",
    "InlierRatio",
    "PruningCallback",
    "RuleSettings",
    "SelectionRule",
    "StandardizedMeanDifference",
    "StudyConfig",
    "TargetConfig",
    "__version__",
    "parse_number",
]

def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'biasprune' has no attribute {name!r}; the public names: {sorted(_EXPORTS)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
