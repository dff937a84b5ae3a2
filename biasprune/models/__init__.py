"""Which model is audited: ids and loading, the embedded default, planted ids, identity and where units live.

* :mod:`.loading`: model ids (Hugging Face directories, ``embedded:...``, ``+plant:...``), the cache, loading;
* :mod:`.identity`: which weights an id means (sha256 of the weight and adapter files);
* :mod:`.architectures`: each supported architecture's neurons and heads, resolved once from the model.

May import: :mod:`biasprune.core`.
"""
