"""biasprune: find and prune the units of an instruct LLM that drive racially biased answers.

One subpackage per stage of the pipeline, lowest first; a module imports its own subpackage and lower floors
only (``tests/test_layout.py``; ``docs/method.md`` maps every step to its file):

* ``core``: argument checks, hooks, process collectives, atomic file writes;
* ``data``, ``models``, ``metrics``: scenarios, names and prompts; model ids, loading, identity and units;
  the SMD and inlier metrics;
* ``scoring``, ``pruning``, ``localize``: gradient x activation scores and their files; selection rules, masks,
  arms; the causal ablation search and the layer-wise causal trace;
* ``answers``, ``stats``: sampled answers and parsing; rows, the name bootstrap, intervals, power, claims;
* ``pipeline``: the LightningModule, strategies, resume, the end of a validate stage, the manifest;
* ``biasprune.datamodules``, ``biasprune.callbacks``: the data module and the pruning callback;
* ``report``, ``study``, ``plant``: the audit report, the generalization study, planted controls;
* ``cli``: the ``biasprune`` command.
"""

__version__ = "0.1.0"
