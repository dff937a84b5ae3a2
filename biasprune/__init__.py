"""biasprune: find and prune the units of an instruct LLM that drive racially biased answers.

Modules, one concept each: ``data`` (scenarios, names, paired prompts), ``models`` (loading, the
embedded default), ``architectures`` (where units live), ``hooks``, ``scoring`` (gradient x activation),
``selection`` (set difference), ``masks`` (apply, harden, export), ``generation`` (sampled answers),
``parsing`` (numbers in answers), ``metrics``/``functional`` (SMD, inlier ratio), ``stats`` (bootstrap,
permutation), ``evaluation``, ``module`` (the LightningModule), ``strategies``, ``study``, ``plots``,
``cli``. The DataModule lives in the top-level ``datamodules`` package, the pruning Callback in
``callbacks``.
"""

__version__ = "0.1.0"
