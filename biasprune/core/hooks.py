"""One place where hooks are registered, tracked and removed.

Every forward hook this package puts on a model goes through :class:`HookSet`. Used as a context
manager it removes each handle on exit, also when the scored forward raises; kept open (reversible
pruning masks), it is removed explicitly with :meth:`HookSet.remove`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["HookSet"]


class HookSet:
    """A set of forward (pre-)hooks with guaranteed removal."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def forward(self, module: nn.Module, fn: Callable, with_kwargs: bool = False) -> None:
        """``fn(module, args, output)`` (``fn(module, args, kwargs, output)`` with ``with_kwargs``); a non-None
        return value replaces the output."""
        self._handles.append(module.register_forward_hook(fn, with_kwargs=with_kwargs))

    def forward_pre(self, module: nn.Module, fn: Callable) -> None:
        """``fn(module, args)``; a non-None return value replaces the positional arguments."""
        self._handles.append(module.register_forward_pre_hook(fn))

    def remove(self) -> None:
        # Pop before removing so that a failure part-way never leaves a stale handle recorded.
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
