"""Set-difference selection against a brute-force numpy implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biasprune.selection import n_top, select_prune, top_k_mask


def brute_force(target: np.ndarray, reference: np.ndarray, p: float, q: float) -> np.ndarray:
    """Prune u iff rank_T(u) < ceil(q n) and rank_R(u) >= ceil(p n); ranks by (-score, index)."""
    n = len(target)
    kq = math.ceil(round(q * n, 9))
    kp = math.ceil(round(p * n, 9))
    rank_t = {u: r for r, u in enumerate(sorted(range(n), key=lambda u: (-target[u], u)))}
    rank_r = {u: r for r, u in enumerate(sorted(range(n), key=lambda u: (-reference[u], u)))}
    return np.array([rank_t[u] < kq and rank_r[u] >= kp for u in range(n)])


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("scope", ["module", "global"])
def test_matches_brute_force(seed, scope):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, size=rng.integers(1, 5))
    # Few distinct values so that ties are common.
    tgt = {f"neuron/m{i}": rng.integers(0, 6, size=n).astype(np.float32) for i, n in enumerate(sizes)}
    ref = {k: rng.integers(0, 6, size=v.size).astype(np.float32) for k, v in tgt.items()}
    p, q = float(rng.choice([0.0, 0.15, 0.35, 0.5, 1.0])), float(rng.choice([0.0, 0.15, 0.4, 0.7, 1.0]))
    got = select_prune({k: torch.from_numpy(v) for k, v in tgt.items()}, {k: torch.from_numpy(v) for k, v in ref.items()}, p, q, scope)
    if scope == "module":
        for k in tgt:
            np.testing.assert_array_equal(got[k].numpy(), brute_force(tgt[k], ref[k], p, q))
    else:
        expect = brute_force(np.concatenate(list(tgt.values())), np.concatenate(list(ref.values())), p, q)
        np.testing.assert_array_equal(np.concatenate([got[k].numpy() for k in tgt]), expect)


def test_ties_go_to_the_lower_index():
    assert top_k_mask(torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0]), 2).tolist() == [False, True, True, False, False]


def test_n_top_is_robust_to_float_noise():
    assert 0.07 * 100 > 7  # the float product overshoots ...
    assert n_top(0.07, 100) == 7  # ... but means 7
    assert n_top(0.4, 10) == 4 and n_top(0.41, 10) == 5 and n_top(0.0, 7) == 0 and n_top(1.0, 7) == 7


def test_prunes_target_important_not_reference_important():
    tgt = {"neuron/a": torch.tensor([9.0, 8.0, 1.0, 0.0])}
    ref = {"neuron/a": torch.tensor([9.0, 0.0, 0.0, 0.0])}
    assert select_prune(tgt, ref, p=0.25, q=0.5)["neuron/a"].tolist() == [False, True, False, False]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(p=1.5, q=0.1), r"p=1.5 must be a fraction in \[0, 1\]"),
        (dict(p=0.1, q=-0.1), r"q=-0.1 must be a fraction"),
        (dict(p=0.1, q=0.1, scope="layer"), r"scope='layer' is not valid; valid choices: \['module', 'global'\]"),
    ],
)
def test_bad_arguments(kwargs, match):
    s = {"neuron/a": torch.ones(3)}
    with pytest.raises(ValueError, match=match):
        select_prune(s, s, **kwargs)


def test_missing_reference_key():
    with pytest.raises(KeyError, match="reference scores lack 1 unit group"):
        select_prune({"neuron/a": torch.ones(3)}, {}, 0.1, 0.1)
