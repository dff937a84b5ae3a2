"""From answers to verdicts: per-variation rows, the name bootstrap, intervals, power, summaries and claims.

* :mod:`.moments`: per-variation SMD intervals and permutation p-values (names as clusters);
* :mod:`.rows`: inlier bounds and one row per (split, arm, variation);
* :mod:`.bootstrap`: |SMD| per variation under a name bootstrap paired across arms and metrics, the utility rates on the
  same draws, and the noise floor;
* :mod:`.intervals`: percentile and BCa intervals of arms and paired differences over the variations defined in every
  arm compared; random controls compared as one new mask (a prediction interval);
* :mod:`.power`: the within-name correlation and the minimum detectable SMD;
* :mod:`.claims`: verdicts (with the utility guard) as pure functions of intervals, and Holm's adjustment of a family;
  :mod:`.summary`: per-arm rows and claims of a split.

May import: :mod:`biasprune.core`, :mod:`biasprune.data`, :mod:`biasprune.models`, :mod:`biasprune.metrics`,
:mod:`biasprune.scoring`, :mod:`biasprune.pruning`.
"""
