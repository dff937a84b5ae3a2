"""Sampled answers: generation with keyed random streams, the static decoder, answer records and parsing.

* :mod:`.streams`: random numbers keyed by (seed, prompt key, answer, token), whatever the batch layout;
* :mod:`.decoding`: the static-cache decoder; :mod:`.generation`: the eager path and the choice between them;
* :mod:`.answering`: target responses for scoring and answer records per arm;
* :mod:`.parsing`: the first number of a response (``biasprune.parsing.parse_number``, a contract).

May import: :mod:`biasprune.core`, :mod:`biasprune.data`, :mod:`biasprune.models`, :mod:`biasprune.metrics`,
:mod:`biasprune.scoring`, :mod:`biasprune.pruning`.
"""
