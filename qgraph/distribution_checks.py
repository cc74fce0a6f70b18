"""``torch.distributions`` argument validation while a model is captured.

A policy or likelihood head (``Normal(mu, std).log_prob(a)``, ``Categorical(logits=...)``) validates
its arguments by default: ``if not valid.all(): raise ValueError``, a branch on tensor values that
neither symbolic tracing nor ``torch.export`` can follow, so such a model had no capture route. The
checks only raise on invalid arguments and compute nothing the outputs use, so distributions built
while capture runs skip them (``validate_args=False`` where the model passed none); one built with
``validate_args=True`` keeps its checks. The process-wide default is not touched (torch's dynamo
turns it off by itself the first time it runs). The capture notes say when this applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.distributions import Distribution

_SCALAR = torch.Size()


@contextlib.contextmanager
def validation_off() -> Iterator[list[str]]:
    """Inside: distributions skip argument validation unless asked for it; yields the list of the
    distribution types built meanwhile that would have validated."""
    init = Distribution.__init__
    built: list[str] = []

    def init_without_checks(self, batch_shape=_SCALAR, event_shape=_SCALAR, validate_args=None):
        if validate_args is None and Distribution._validate_args:
            validate_args = False
            if type(self).__name__ not in built:
                built.append(type(self).__name__)
        return init(self, batch_shape, event_shape, validate_args)

    Distribution.__init__ = init_without_checks
    try:
        yield built
    finally:
        Distribution.__init__ = init


def validation_note(built: list[str]) -> str:
    return (f"torch.distributions argument validation ({', '.join(built)}) was off while capturing: its checks branch on "
            "tensor values and only raise on invalid arguments; the graph computes the same outputs without them")
