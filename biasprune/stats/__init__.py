"""From answers to verdicts: per-variation rows, the name bootstrap, intervals, power, summaries and claims.

* :mod:`.moments`: per-variation SMD intervals and permutation p-values (names as clusters);
* :mod:`.rows`: inlier bounds and one row per (split, arm, variation);
* :mod:`.bootstrap`: mean |SMD| over variations, a name bootstrap paired across arms, and the noise floor;
* :mod:`.intervals`: percentile and BCa intervals of arms and paired differences;
* :mod:`.power`: the within-name correlation and the minimum detectable SMD;
* :mod:`.claims`: verdicts as pure functions of intervals; :mod:`.summary`: per-arm rows and claims of a split.

May import: :mod:`biasprune.core`, :mod:`biasprune.data`, :mod:`biasprune.models`, :mod:`biasprune.metrics`,
:mod:`biasprune.scoring`, :mod:`biasprune.pruning`.
"""
