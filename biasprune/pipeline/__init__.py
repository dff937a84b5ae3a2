"""The Lightning spine: the LightningModule, its strategies, resume, the end of a validate stage, the manifest.

* :mod:`.module`: :class:`~biasprune.pipeline.module.BiasPruneModule` (scoring in ``fit``, answers in ``validate``);
* :mod:`.parallel`: the frozen DDP and FSDP strategies (no DDP wrap; sharded decoder layers);
* :mod:`.resume`: fingerprints, scoring progress and checkpoint state;
* :mod:`.results`: rows, summary and claims of the gathered records, result files, the printed summary and TensorBoard;
* :mod:`.manifest`: ``manifest.json``.

The data module (``biasprune.datamodules``) and the pruning callback (``biasprune.callbacks``) sit one floor up.

May import: every layer below (core, data, models, metrics, scoring, pruning, answers, stats).
"""
