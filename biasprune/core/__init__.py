"""The ground floor: argument checks, hooks with guaranteed removal, process collectives and atomic file writes.

* :mod:`.checks`: one wording for "not a valid choice", "not a fraction", "must be >= n";
* :mod:`.hooks`: :class:`~biasprune.core.hooks.HookSet`, every forward hook this package registers;
* :mod:`.distributed`: all-reduce, all-gather of objects and barriers that are no-ops in one process;
* :mod:`.artifacts`: atomic writers and readers of JSON, JSONL, CSV and safetensors files.

May import: nothing of biasprune (only the standard library, torch, numpy and safetensors).
"""
