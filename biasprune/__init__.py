"""biasprune: find and prune the units of an instruct LLM that drive racially biased answers.

Modules, one concept each (``docs/method.md`` maps every step to its file):

* data: ``data``/``names`` (scenarios, names, splits), ``prompts`` (chat rendering), ``biasprune.datamodules``;
* models: ``models`` (loading, the embedded default, planted ids), ``identity`` (weight digests),
  ``architectures`` (where units live), ``hooks``;
* scoring and selection: ``scoring`` (gradient x activation), ``attribution`` (contrastive), ``selection``
  (rules, random controls), ``masks``, ``groundtruth`` (a plant's own update);
* answers: ``answering``, ``generation``/``decoding``/``sampling`` (keyed streams), ``parsing``;
* judging: ``metrics``/``functional``, ``evaluation`` (rows, bounds), ``summary``, ``bootstrap``, ``intervals``,
  ``power``, ``stats``, ``claims``;
* the pipeline: ``module`` (the LightningModule), ``arms``, ``resume``, ``run_results``, ``strategies``,
  ``distributed``, ``biasprune.callbacks`` (the pruning callback), ``trainer``, ``study``;
* controls and reports: ``plant``, ``manifest``, ``report``, ``plots``, ``artifacts``;
* the command line: ``cli``, ``lightning_cli``, ``checks``, ``errors``.
"""

__version__ = "0.1.0"
