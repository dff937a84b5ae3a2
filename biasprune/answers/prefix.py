"""Prompts as one shared prefix and their remainders: what the decoders prefill, and how often.

A batch of chat prompts starts with the same tokens: the chat template's system part, and for the prompts of
one variation the scenario text up to the name ("... I want to buy a car from"). That common prefix is
prefilled once for the batch; each prompt's remainder is prefilled once, attending to it; and the k answers of
a prompt start from that prompt's keys and values (:mod:`biasprune.answers.decoding`,
:func:`biasprune.answers.generation.decode_eager`).

Prompt ``i`` is ``prefix + rest[i][mask[i] == 1]``: the remainders are left-padded to one width, so each
prompt's last token is in the last column. Positions count real tokens only: the prefix holds positions
``0 .. S-1`` and prompt ``i``'s remainder ``S .. S + len_i - 1``, exactly as in the whole prompt left-padded
on its own. The tokens are the whole prompts' tokens (tokenized as a whole); only the work is split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["PromptBatch", "common_prefix_length"]


def common_prefix_length(token_lists: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every list."""
    if not token_lists:
        return 0
    first, n = token_lists[0], min(len(t) for t in token_lists)
    for i in range(n):
        tok = first[i]
        if any(t[i] != tok for t in token_lists):
            return i
    return n


@dataclass(frozen=True)
class PromptBatch:
    """A batch of prompts split into a shared ``prefix [S]`` and left-padded remainders ``rest [B, P]``.

    Attributes:
        prefix: the tokens every prompt starts with (``S`` may be 0: nothing shared).
        rest: each prompt's remaining tokens, left-padded (at least one token per prompt, so that the last
            column is each prompt's last token, whose logits give the first answer token).
        mask: 1 where ``rest`` holds a token, 0 on padding.
    """

    prefix: torch.Tensor
    rest: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_token_lists(cls, token_lists: Sequence[Sequence[int]], pad_id: int, share: bool = True) -> PromptBatch:
        """Split whole prompts' token ids; ``share=False`` (or a single prompt) keeps every token in ``rest``.

        The shared prefix stops one token short of the shortest prompt, so every remainder keeps a token.
        """
        if not token_lists:
            raise ValueError("PromptBatch: no prompts")
        empty = [i for i, t in enumerate(token_lists) if len(t) == 0]
        if empty:
            raise ValueError(f"PromptBatch: prompt {empty[0]} has no tokens; every prompt needs at least one token")
        s = min(common_prefix_length(token_lists), min(len(t) for t in token_lists) - 1) if share and len(token_lists) > 1 else 0
        width = max(len(t) for t in token_lists) - s
        rest = torch.full((len(token_lists), width), int(pad_id), dtype=torch.long)
        mask = torch.zeros(len(token_lists), width, dtype=torch.long)
        for i, t in enumerate(token_lists):
            tail = list(t[s:])
            rest[i, width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
            mask[i, width - len(tail) :] = 1
        return cls(torch.tensor(list(token_lists[0][:s]), dtype=torch.long), rest, mask)

    @classmethod
    def from_padded(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, share: bool = True) -> PromptBatch:
        """From a left-padded (or any padded) batch ``input_ids, attention_mask [B, L]``."""
        pad = int(input_ids[attention_mask == 0][0]) if bool((attention_mask == 0).any()) else 0
        lists = [row[m.bool()].tolist() for row, m in zip(input_ids.cpu(), attention_mask.cpu())]
        return cls.from_token_lists(lists, pad, share).to(input_ids.device)

    def unshared(self) -> PromptBatch:
        """The same prompts with nothing shared (the prefix moved back into every remainder)."""
        if not self.prefix_len:
            return self
        lists = [self.prefix.tolist() + row[m.bool()].tolist() for row, m in zip(self.rest.cpu(), self.mask.cpu())]
        pad = int(self.rest[self.mask == 0][0]) if bool((self.mask == 0).any()) else 0
        return PromptBatch.from_token_lists(lists, pad, share=False).to(self.device)

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(self.prefix.to(device), self.rest.to(device), self.mask.to(device))

    @property
    def n_prompts(self) -> int:
        return self.rest.shape[0]

    @property
    def prefix_len(self) -> int:
        return self.prefix.shape[0]

    @property
    def device(self) -> torch.device:
        return self.rest.device

    def positions(self) -> torch.Tensor:
        """Position of every column of ``rest [B, P]`` (a padding column takes its row's first position)."""
        return self.prefix_len + (self.mask.cumsum(-1) - 1).clamp(min=0)

    def last_positions(self) -> torch.Tensor:
        """Position of each prompt's last token ``[B]``."""
        return self.prefix_len + self.mask.sum(-1) - 1

    def lengths(self) -> torch.Tensor:
        """Each whole prompt's length in tokens ``[B]``."""
        return self.prefix_len + self.mask.sum(-1)
