"""What the observers of an optimizer's steps share: attaching to its step hooks, removal, and naming tensors.

:class:`StepHooks` registers ``_pre_step`` and ``_post_step`` with ``register_step_pre_hook`` and
``register_step_post_hook`` of any ``torch.optim.Optimizer``; :meth:`StepHooks.remove` takes them off
(also on leaving a ``with`` block). :class:`kadam.monitor.StabilityMonitor` and
:class:`kadam.normalization.NormTracker` are such observers. :func:`named_tensors` reads the names users
hand them: a module, a mapping ``{name: tensor}`` or an iterable of ``(name, tensor)`` pairs.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["StepHooks", "named_tensors"]


def named_tensors(
    names: nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] | None, argument: str = "names"
) -> list[tuple[str, Tensor]]:
    """``(name, tensor)`` pairs from a module (its ``named_parameters()``), a mapping or an iterable of pairs.

    Raises:
        ValueError: naming ``argument``, for anything else.
    """
    if names is None:
        return []
    if isinstance(names, nn.Module):
        return list(names.named_parameters())
    entries = list(names.items()) if isinstance(names, Mapping) else list(names)
    for entry in entries:
        if not (
            isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], Tensor)
        ):
            raise ValueError(
                f"{argument} must be a module, a mapping of names to tensors or an iterable of "
                f"(name, tensor) pairs, got an entry {entry!r:.80}"
            )
    return entries


class StepHooks(abc.ABC):
    """Base of an observer attached to an optimizer's step pre- and post-hooks; subclasses define
    ``_pre_step(optimizer, args, kwargs)`` and ``_post_step(optimizer, args, kwargs)`` and call
    :meth:`_attach` at the end of their constructor."""

    _handles: list[Any]

    def _attach(self, optimizer: torch.optim.Optimizer) -> None:
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]

    @abc.abstractmethod
    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Called by ``optimizer.step`` before it steps."""

    @abc.abstractmethod
    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Called by ``optimizer.step`` after it stepped."""

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered (until :meth:`remove`)."""
        return bool(getattr(self, "_handles", None))

    def remove(self) -> None:
        """Take the hooks off the optimizer; what was recorded stays available. Idempotent."""
        for handle in getattr(self, "_handles", ()):
            handle.remove()
        self._handles = []

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
