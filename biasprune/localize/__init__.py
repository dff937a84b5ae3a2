"""Causal localization: which units and which layers carry a name's effect on the answers, found by intervening.

``pairs`` (name-swapped prompt pairs with two answers each, the answers' log-probabilities, the contrastive gap
and reversible zero-ablation of units), ``causal`` (the causal ablation search: every unit ablated alone, or a
first-order shortlist checked by ablation, then a greedy selection re-measured after each pick), ``trace`` (the
layer-wise causal trace: one stage's output patched from the name-swapped prompt, layer by layer, and a mask's
share of units in the layers it points to). Formulas and costs: docs/method.md, "Causal localization".

Sits at the layer of scoring and pruning. May import: core, data, models, metrics.
"""
