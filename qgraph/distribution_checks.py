"""``torch.distributions`` argument validation while a model is captured.

A policy or likelihood head (``Normal(mu, std).log_prob(a)``, ``Categorical(logits=...)``) validates
its arguments by default: ``if not valid.all(): raise ValueError``, a branch on tensor values that
neither symbolic tracing nor ``torch.export`` can follow, so such a model had no capture route. The
checks only raise on invalid arguments and compute nothing the outputs use, so capture turns the
default off (``Distribution.set_default_validate_args(False)``) and restores it afterwards; a
distribution built with ``validate_args=True`` keeps its checks. The capture notes say when this
applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch.distributions import Distribution


@contextlib.contextmanager
def validation_off() -> Iterator[list[str]]:
    """Inside: distributions skip argument validation unless asked for it; yields the list of the
    distribution types built meanwhile while validation would otherwise have been on."""
    before, init = Distribution._validate_args, Distribution.__init__
    built: list[str] = []

    def recording_init(self, *args, **kwargs):
        if before and type(self).__name__ not in built:
            built.append(type(self).__name__)
        return init(self, *args, **kwargs)

    Distribution.set_default_validate_args(False)
    Distribution.__init__ = recording_init
    try:
        yield built
    finally:
        Distribution.__init__ = init
        Distribution.set_default_validate_args(before)


def validation_note(built: list[str]) -> str:
    return (f"torch.distributions argument validation ({', '.join(built)}) was off while capturing: its checks branch on "
            "tensor values and only raise on invalid arguments; the graph computes the same outputs without them")
