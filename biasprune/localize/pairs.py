"""Name-swapped pairs, the answers' log-probabilities, the contrastive gap, and zero-ablation of units.

A :class:`NamePair` is a target-group prompt t and its reference-group twin r (the same question, only the name
differs; token ids of the chat-rendered prompts) with two answers: a_t (e.g. the model's answer to t) and a_r
(its answer to r). With lp(a | p) = Σ log p(answer tokens | p, earlier answer tokens) (the answer appended to
the prompt, tokenized separately as in scoring), the pair's **gap** is

    gap = [lp(a_t | t) − lp(a_r | t)] − [lp(a_t | r) − lp(a_r | r)]

how much more the target prompt prefers its own answer over the twin's answer than the reference prompt does:
a log odds ratio, 0 when the name changes nothing (p(· | t) = p(· | r)), and positive when each prompt favours
its own answer. It needs no parsing and no sampling, and is the same whichever group gets the higher number.
M = the mean gap over pairs is the contrastive metric of the causal search and the trace. A pair with a_t = a_r
has gap 0 whatever the model does: it carries no information (callers may drop it).

Zero-ablation (:func:`ablate`) is the tool's own pruning intervention (docs/method.md, "Masks"): a neuron's
output channel is multiplied by 0, a head's slice of the ``o_proj`` input is multiplied by 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from biasprune.core.hooks import HookSet
from biasprune.models.architectures import UnitLayout

__all__ = [
    "SIGNS",
    "NamePair",
    "ablate",
    "answer_logprobs",
    "pair_gaps",
    "pair_sequences",
]

#: The four sequences of a pair, in order, and their sign in the gap.
SEQUENCES = (("target", "target"), ("target", "reference"), ("reference", "target"), ("reference", "reference"))
SIGNS = (1.0, -1.0, -1.0, 1.0)


@dataclass(frozen=True)
class NamePair:
    """Token ids of a target-group prompt, its reference-group twin, and the two answers (non-empty)."""

    target: tuple[int, ...]
    reference: tuple[int, ...]
    target_answer: tuple[int, ...]
    reference_answer: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("target", "reference", "target_answer", "reference_answer"):
            value = tuple(int(i) for i in getattr(self, name))
            if not value:
                raise ValueError(f"NamePair.{name} is empty; every prompt and answer needs at least one token")
            object.__setattr__(self, name, value)

    def prompt(self, which: str) -> tuple[int, ...]:
        return self.target if which == "target" else self.reference

    def answer(self, which: str) -> tuple[int, ...]:
        return self.target_answer if which == "target" else self.reference_answer


def pair_sequences(pairs: Sequence[NamePair]) -> tuple[list[tuple[int, ...]], list[int]]:
    """The 4 sequences of every pair (prompt + answer, in :data:`SEQUENCES` order) and each one's answer length."""
    seqs, n_answer = [], []
    for p in pairs:
        for prompt, answer in SEQUENCES:
            seqs.append(p.prompt(prompt) + p.answer(answer))
            n_answer.append(len(p.answer(answer)))
    return seqs, n_answer


def _padded(seqs: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, seqs))
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    attn = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids.to(device), attn.to(device)


def answer_logprobs(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    n_answer: Sequence[int],
    batch_size: int = 64,
    hooks_per_batch=None,
) -> torch.Tensor:
    """lp of each sequence's last ``n_answer`` tokens given the tokens before them: float64 ``[len(seqs)]``.

    Right-padded batches of ``batch_size`` sequences; only the positions that predict answer tokens reach the
    output projection (a pre-hook gathers them), so the vocabulary-sized logits cost one row per answer token.
    ``hooks_per_batch(hooks, start, ids, attn)``, if given, registers extra hooks for each batch (rows ``start``
    to ``start + len``): the trace patches activations this way. Gradients flow if enabled (no ``no_grad`` here).
    """
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(seqs), batch_size):
        chunk, k = seqs[start : start + batch_size], n_answer[start : start + batch_size]
        ids, attn = _padded(chunk, device)
        lens = attn.sum(1)
        rows = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(k)]).to(device)
        # answer token j of row i sits at position len_i - n_i + j and is predicted from the position before it
        pos = torch.cat([torch.arange(int(lens[i]) - n - 1, int(lens[i]) - 1) for i, n in enumerate(k)]).to(device)
        targets = ids[rows, pos + 1]

        def gather(module, args, rows=rows, pos=pos):
            return (args[0][rows, pos], *args[1:])

        with HookSet() as hooks:
            hooks.forward_pre(model.get_output_embeddings(), gather)
            if hooks_per_batch is not None:
                hooks_per_batch(hooks, start, ids, attn)
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        logp = F.log_softmax(logits.double(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
        out.append(torch.zeros(len(chunk), dtype=torch.float64, device=device).index_add_(0, rows, logp))
    return torch.cat(out)


def pair_gaps(lp: torch.Tensor) -> torch.Tensor:
    """Per-pair gaps from :func:`answer_logprobs` of :func:`pair_sequences`: ``[n_pairs]`` (module docstring)."""
    signs = torch.tensor(SIGNS, dtype=lp.dtype, device=lp.device)
    return (lp.view(-1, 4) * signs).sum(1)


@contextlib.contextmanager
def ablate(model: nn.Module, layout: UnitLayout, prune: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Zero the units of ``prune`` (bool, True = zeroed; keys ``neuron/<path>`` or ``head/<path>``) while inside.

    The same intervention as a pruning mask: a neuron's output channel times 0, a head's slice of the ``o_proj``
    input times 0. Every hook is removed on exit, also after an error.
    """
    neurons = {f"neuron/{u.path}": u for u in layout.neurons}
    heads = {f"head/{h.path}": h for h in layout.heads}
    with HookSet() as hooks:
        for key, m in prune.items():
            if m.dtype != torch.bool or m.ndim != 1:
                raise TypeError(f"ablate takes 1-d bool masks (True = zeroed); {key!r} is {m.dtype} {tuple(m.shape)}")
            if not bool(m.any()):
                continue
            if key in neurons:
                u = neurons[key]
                if m.numel() != u.size:
                    raise ValueError(f"{key}: the mask has {m.numel()} units, the module {u.size}")
                keep = (~m).to(u.module.weight.device, u.module.weight.dtype)
                hooks.forward(u.module, lambda mod, args, out, keep=keep: out * keep)
            elif key in heads:
                h = heads[key]
                if m.numel() != h.n_heads:
                    raise ValueError(f"{key}: the mask has {m.numel()} units, the module {h.n_heads} heads")
                keep = (~m).to(h.o_proj.weight.device, h.o_proj.weight.dtype)[:, None]

                def zero_heads(mod, args, keep=keep, n=h.n_heads):
                    x = args[0]
                    return ((x.view(*x.shape[:-1], n, x.shape[-1] // n) * keep).reshape(x.shape), *args[1:])

                hooks.forward_pre(h.o_proj, zero_heads)
            else:
                raise KeyError(f"{key!r} names no unit group of this model; keys look like {next(iter(neurons), '')!r}")
        yield
