"""The ground floor: argument checks, hooks with guaranteed removal, process collectives and atomic file writes.

* :mod:`.checks`: one wording for "not a valid choice", "not a fraction", "must be >= n";
* :mod:`.hooks`: :class:`~biasprune.core.hooks.HookSet`, every forward hook this package registers;
* :mod:`.distributed`: all-reduce, all-gather of objects and barriers that are no-ops in one process;
* :mod:`.errors`: the project's own error classes (what the command prints in one line);
* :mod:`.artifacts`: atomic writers and readers of JSON, JSONL, CSV and safetensors files, file records (size,
  sha256, rows) and the check that an output directory can be written.

May import: its own modules, nothing else of biasprune (only the standard library, torch, numpy and safetensors).
"""
