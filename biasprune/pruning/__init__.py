"""Which units are pruned and how: selection rules, masks (files, hooks, export), arms and random controls.

* :mod:`.rules`: selection rules over two groups' scores at a budget, and random draws of the same size;
* :mod:`.masks`: keep-mask files, reversible application with hooks, hard application and export;
* :mod:`.arms`: what the model looks like while one set of answers is sampled.

May import: :mod:`biasprune.core`, :mod:`biasprune.models`.
"""
