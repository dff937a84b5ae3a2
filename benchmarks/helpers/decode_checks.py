"""Two-sample checks that two decoders sample the same distribution (torch only: no scipy on the GPU machine).

* :func:`ks_two_sample`: Kolmogorov-Smirnov on two samples of reals, asymptotic p-value (Kolmogorov's
  series with Stephens' small-sample correction, as in Numerical Recipes' ``kstwo``);
* :func:`chi2_homogeneity`: chi-square test that two count vectors come from one multinomial;
* :func:`answer_logprobs`: the per-answer mean log-probability of the drawn tokens under the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["answer_logprobs", "chi2_homogeneity", "id_bins", "ks_two_sample"]


def ks_two_sample(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """Two-sided two-sample KS test: ``statistic`` (sup |F_a - F_b|), asymptotic ``p``, sample sizes ``n``."""
    a, b = a.double().flatten().sort().values, b.double().flatten().sort().values
    both = torch.cat([a, b])
    fa = torch.searchsorted(a, both, right=True).double() / len(a)
    fb = torch.searchsorted(b, both, right=True).double() / len(b)
    d = float((fa - fb).abs().max())
    en = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        p = 1.0
    else:
        p = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101))
    return {"statistic": d, "p": min(max(p, 0.0), 1.0), "n": [len(a), len(b)], "method": "two-sample KS, asymptotic"}


def chi2_homogeneity(a: torch.Tensor, b: torch.Tensor, min_expected: float = 5.0) -> dict[str, Any]:
    """Chi-square test of homogeneity of two count vectors over the same bins.

    Bins whose expected count is below ``min_expected`` in either sample are pooled into one bin (dropped if
    that bin still falls short). ``df`` = bins - 1; ``p`` from the regularized upper incomplete gamma.
    """
    table = torch.stack([a.double(), b.double()])
    n_rows = table.sum(1, keepdim=True)
    expected = n_rows * table.sum(0, keepdim=True) / table.sum()
    small = (expected < min_expected).any(0)
    if bool(small.any()):
        pooled = table[:, small].sum(1, keepdim=True)
        table = torch.cat([table[:, ~small], pooled], 1)
        expected = n_rows * table.sum(0, keepdim=True) / table.sum()
        if bool((expected[:, -1] < min_expected).any()):
            table, expected = table[:, :-1], expected[:, :-1]
    stat = float(((table - expected) ** 2 / expected).sum())
    df = table.shape[1] - 1
    p = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2))) if df else 1.0
    return {"statistic": stat, "df": df, "p": p, "n": [int(a.sum()), int(b.sum())], "method": "chi-square homogeneity"}


def id_bins(ids: torch.Tensor, vocab: int, bins: int) -> torch.Tensor:
    """Counts of token ids in ``bins`` equal ranges of ``[0, vocab)``."""
    width = -(-vocab // bins)
    return torch.bincount(ids.flatten() // width, minlength=bins)


@torch.no_grad()
def answer_logprobs(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    answers: torch.Tensor,
    k: int,
    device: torch.device,
    max_rows: int = 64,
) -> torch.Tensor:
    """Mean log-probability per answer of its tokens, teacher-forced: ``answers [len(prompts) * k, m]`` holds
    answer ``j`` of prompt ``i`` at row ``i * k + j`` (all of length m). Float64, ``[len(prompts) * k]``."""
    m = answers.shape[1]
    step = max(1, max_rows // k)
    out = []
    for start in range(0, len(prompts), step):
        enc = tokenizer(list(prompts[start : start + step]), return_tensors="pt", padding=True, padding_side="left")
        ids = enc["input_ids"].repeat_interleave(k, 0)
        mask = enc["attention_mask"].repeat_interleave(k, 0)
        ans = answers[start * k : start * k + ids.shape[0]]
        ids = torch.cat([ids, ans], 1).to(device)
        mask = torch.cat([mask, torch.ones_like(ans)], 1).to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=m + 1).logits[:, :m]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, ans.to(device)[..., None]).squeeze(-1)
        out.append(lp.double().mean(1).cpu())
    return torch.cat(out)
