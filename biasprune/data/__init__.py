"""The audit's inputs: scenarios, names and their splits, and prompts rendered with a chat template.

* :mod:`.names`: name lists (CSV), the scoring / dev / test split, balanced by group x gender;
* :mod:`.scenarios`: scenario files (YAML), variations, selectors and the paired prompt rows;
* :mod:`.prompts`: the chat template applied to a question.

May import: :mod:`biasprune.core`.
"""
