"""How much each unit drives the answers: gradient x activation scores, their sums and the scores files.

* :mod:`.capture`: what the objectives share (per-example results, the a x g reduction, the response likelihood);
* :mod:`.gradxact`: s_e(u) = |sum_t sum_d a * dL_e/da| for the response NLL;
* :mod:`.contrastive`: attribution patching on name-swapped pairs;
* :mod:`.direction`: per-layer residual-stream sums per group (forward only), from which the direction arm is estimated;
* :mod:`.objectives`: which of the two a train batch gets;
* :mod:`.accumulate`: group sums S_G(u), additive over examples, processes and variations;
* :mod:`.scorefile`: ``scores.safetensors`` and ``scores_by_variation.safetensors``.

May import: :mod:`biasprune.core`, :mod:`biasprune.models`.
"""
