"""What every capture route checks: the graph reproduces the model's outputs on the example inputs,
and dead code is dropped only where the outputs stay the same."""

from __future__ import annotations

import copy
import dataclasses
import os
import traceback

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from qgraph.dead_code import eliminate_dead_code
from qgraph.errors import CaptureError


def outputs_match(expected, got) -> bool:
    a, _ = pytree.tree_flatten(expected)
    b, _ = pytree.tree_flatten(got)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            # NaN where the model gives NaN too (a fully masked attention row) is a match
            if x.shape != y.shape or not torch.allclose(x.float(), y.float(), atol=1e-4, rtol=1e-4, equal_nan=True):
                return False
    return True


def drop_dead_code(gm: fx.GraphModule, args: tuple, expected) -> None:
    """Remove ops whose results nothing uses (a Hugging Face pooler that a wrapper does not return):
    they would get quantizers that calibration never reaches. Kept if the graph then disagrees
    with the model (an in-place op whose result is unused)."""
    before = copy.deepcopy(gm.graph)
    if not eliminate_dead_code(gm.graph):
        return
    gm.recompile()
    try:
        with torch.no_grad():
            same = outputs_match(expected, gm(*args))
    except Exception:
        same = False
    if not same:
        gm.graph = before
        gm.recompile()


def module_types(model: nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules() if name}


_LIBRARY_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, fx, pytree, os))  # torch, the stdlib


def failure_site(e: BaseException) -> str:
    """Where in the user's code a capture route failed: ``" at <file>:<line> (<function>): <code>"``
    for the innermost frame outside torch, the standard library and qgraph, or ``""``. The tracers'
    own messages name an internal check (fx: "`__cuda_array_interface__` must be a dict" for
    ``pack_padded_sequence`` on a traced tensor), not the line that made it."""
    import qgraph.backends
    import qgraph.passes

    ours = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (qgraph, qgraph.passes, qgraph.backends))
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(_LIBRARY_DIRS + ours) and not f.filename.startswith("<")]
    if not frames:
        return ""
    f = frames[-1]
    code = f" `{f.line.strip()}`" if f.line else ""
    return f" at {os.path.basename(f.filename)}:{f.lineno} ({f.name}){code}"


def register_output_dataclasses(output) -> list[str]:
    """Register with ``torch.export.register_dataclass`` every dataclass type in a model's output that
    torch's pytree does not know; returns their names. Unregistered, such an output is one opaque
    leaf: no tensor in it could be compared, calibrated against or exported (torch.export refuses
    it). Raises :class:`CaptureError` when a type cannot be registered."""
    names: list[str] = []
    for _ in range(8):  # dataclasses nested in dataclasses appear one level per round
        new = {type(leaf) for leaf in pytree.tree_leaves(output)
               if dataclasses.is_dataclass(leaf) and not isinstance(leaf, type) and type(leaf) not in pytree.SUPPORTED_NODES}
        if not new:
            break
        for cls in sorted(new, key=lambda c: c.__qualname__):
            try:
                torch.export.register_dataclass(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")
            except Exception as e:  # noqa: BLE001 - say which type and why, in the user's terms
                raise CaptureError(f"the model returns {cls.__qualname__}, a dataclass torch's pytree does not know, and "
                                   f"registering it failed ({type(e).__name__}: {e}); register it yourself with "
                                   "torch.utils._pytree.register_pytree_node before quantizing") from e
            names.append(cls.__qualname__)
    return names


def training_branches(model: nn.Module) -> list[str]:
    """The modules, defined outside torch, whose ``forward`` reads ``self.training``: the graph holds the
    branch taken in eval mode, where capture runs the model, so code that runs only in training mode
    (SpecAugment, ``F.dropout(x, training=self.training)``) is not in it."""
    found: dict[str, list[str]] = {}  # class name -> module paths, one entry per class (24 layers are one)
    for path, m in model.named_modules():
        cls = type(m)
        code = getattr(getattr(cls, "forward", None), "__code__", None)
        if code is not None and not cls.__module__.startswith("torch.") and "training" in code.co_names:
            found.setdefault(cls.__name__, []).append(path)
    return [f"{paths[0]} ({name})" if len(paths) == 1 and paths[0] else name if len(paths) == 1
            else f"{paths[0]} and {len(paths) - 1} more ({name})" for name, paths in found.items()]
