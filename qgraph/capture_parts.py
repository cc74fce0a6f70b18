"""When no route captures a model: which of its parts would capture on their own.

A full torchvision detector (Faster R-CNN, RetinaNet, SSD) loops over a list of images in its root
``forward`` and runs data-dependent box selection (NMS), so neither symbolic tracing nor
``torch.export`` captures it, and the ``CaptureError`` could only say where each route stopped. Most
of its weights are in parts that do capture (the backbone with its FPN, the heads), and a user can
quantize those one by one and put them back: the rest of the model runs in float around them.

:func:`capturable_parts` runs the model once with hooks that record each weighted submodule's first
call, then walks the module tree top-down: a part is tried with the inputs the model gave it, and
where it does not capture its children are tried. The search is bounded in time: it only runs on the
failure path, to write the hint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import _pytree as pytree


@dataclass
class Part:
    path: str
    weights: int  # parameters of the part's conv/linear/embedding layers and the like (numel)
    inputs: str  # how the model calls it, e.g. "Tensor[1, 3, 320, 320]"


def _weights(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.dim() >= 2)


def _describe(args: tuple) -> str:
    def one(a) -> str:
        if isinstance(a, torch.Tensor):
            return f"Tensor{list(a.shape)}"
        leaves = [t for t in pytree.tree_leaves(a) if isinstance(t, torch.Tensor)]
        return f"{type(a).__name__} of {len(leaves)} tensors" if leaves else type(a).__name__

    return ", ".join(one(a) for a in args)


def capturable_parts(model: nn.Module, args: tuple, keywords: tuple[str, ...] | None = None,
                     budget_s: float = 60.0) -> list[Part]:
    """The largest submodules of ``model`` that qgraph captures alone on the inputs ``model(*args)``
    gives them (positional calls only), top-down, within about ``budget_s`` seconds."""
    from qgraph.capture import run_eager, trace

    calls: dict[int, tuple] = {}

    def record(m, a, kw):
        if id(m) not in calls and not kw:
            calls[id(m)] = a

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for _, m in model.named_modules() if _weights(m)]
    try:
        run_eager(model, args, keywords)
    except Exception:  # noqa: BLE001 - no hint rather than a second error
        return []
    finally:
        for h in hooks:
            h.remove()
    found: list[Part] = []
    deadline = time.monotonic() + budget_s

    def visit(path: str, m: nn.Module) -> None:
        if not _weights(m) or time.monotonic() > deadline:
            return
        a = calls.get(id(m))
        if a is not None:
            try:
                trace(m, a)
            except Exception:  # noqa: BLE001 - this part does not capture: try its children
                pass
            else:
                found.append(Part(path, _weights(m), _describe(a)))
                return
        for name, child in m.named_children():
            visit(f"{path}.{name}" if path else name, child)

    for name, child in model.named_children():
        visit(name, child)
    return found


def parts_hint(model: nn.Module, args: tuple, keywords: tuple[str, ...] | None = None) -> str:
    """The ``CaptureError`` paragraph naming the parts that capture, or "" when none does."""
    budget = 30.0
    start = time.monotonic()
    parts = capturable_parts(model, args, keywords, budget_s=budget)
    cut = time.monotonic() - start > budget
    if not parts:
        return f"\n(No part with weights captured within the {budget:.0f} s search.)" if cut else ""
    total = _weights(model) or 1
    covered = sum(p.weights for p in parts)
    first = parts[0].path
    listed = "\n".join(f"    model.{p.path}({p.inputs}): {p.weights:,} weights" for p in parts)
    return (f"\nThese parts capture on their own ({covered / total:.0%} of the model's {total:,} weights):\n{listed}\n"
            f"  qgraph.quantize_parts(model, example_inputs, recipe, calib_data) quantizes each on the inputs the model "
            f"gives it and puts it back (the rest runs in float around them); or by hand, e.g. model.{first} = "
            f"qgraph.quantize(model.{first}, its_inputs, recipe, its_calib_inputs)."
            + (f" (The search stopped after {budget:.0f} s; quantize_parts searches for longer.)" if cut else ""))
