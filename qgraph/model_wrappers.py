"""Wrappers around a user's model that capture should look through: ``torch.compile``'s
``OptimizedModule``, ``nn.DataParallel`` and ``DistributedDataParallel``.

Capturing the wrapper itself works only through ``torch.export`` (symbolic tracing cannot trace
it), compiles the model just to run the example, and prefixes every module path with
``_orig_mod.`` or ``module.``, so a ``skip="fc"`` glob no longer matches. The wrapped module is
captured instead, and the capture notes say so.
"""

from __future__ import annotations

from torch import nn


def _inner(model: nn.Module) -> tuple[nn.Module, str] | None:
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    if isinstance(model, (DataParallel, DistributedDataParallel)):
        return model.module, type(model).__name__
    orig = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
    if isinstance(orig, nn.Module) and type(model).__name__ == "OptimizedModule":
        return orig, "torch.compile"
    return None


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """``(the module inside every wrapper, note)``; the note is empty when there was no wrapper."""
    removed = []
    while (found := _inner(model)) is not None:
        model, kind = found
        removed.append(kind)
    if not removed:
        return model, ""
    return model, (f"captured the model inside its {' and '.join(removed)} wrapper (module paths as in the model itself; "
                   f"compile or wrap the quantized model again if needed)")
