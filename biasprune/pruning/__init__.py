"""Which units are pruned and how: selection rules, masks (files, hooks, export), arms and random controls.

* :mod:`.rules`: selection rules over two groups' scores at a budget, and random draws of the same size;
* :mod:`.factory`: the one place masks are made (a kind's masks from scores, random controls and their seeds,
  budget checks) and the pruning callback's mask settings;
* :mod:`.masks`: keep-mask files (and a masks file given for evaluation), reversible application with hooks, hard
  application and export;
* :mod:`.arms`: what the model looks like while one set of answers is sampled;
* :mod:`.direction`: the direction arm, an affine edit of the residual stream (estimate, hooks, random control,
  file and loader for a plain transformers model).

May import: :mod:`biasprune.core`, :mod:`biasprune.models`.
"""
