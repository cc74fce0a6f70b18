"""Models that are not float32: qgraph simulates, calibrates and exports in float32.

A model whose floating parameters or buffers are ``float16``/``bfloat16`` (a language model loaded
with ``torch_dtype=torch.bfloat16``) or ``float64`` (scientific code) is captured as a float32 copy:
the fake quantizers, observers and the ONNX/qpack exports all work on float32 values, and the deployed
weights are integers either way (ONNX's QuantizeLinear takes no float64). Floating inputs of those
dtypes are cast to float32 where the captured graph is called, so the user's batches still fit; the
outputs are float32. Integer inputs (token ids) are left alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils import _pytree as pytree

UPCAST = (torch.float16, torch.bfloat16, torch.float64)  # the floating dtypes qgraph's copy casts to float32


def upcast_dtypes(model: nn.Module) -> list[str]:
    """The non-float32 floating dtypes among ``model``'s parameters and buffers, e.g. ``["bfloat16"]``."""
    found = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.dtype in UPCAST}
    return sorted(str(d).removeprefix("torch.") for d in found)


def float32_inputs(args: tuple) -> tuple:
    """``args`` with every float16/bfloat16/float64 tensor cast to float32, also inside lists and tuples."""
    return tuple(pytree.tree_map(lambda a: a.float() if isinstance(a, torch.Tensor) and a.dtype in UPCAST else a, a) for a in args)


def upcast(model: nn.Module, in_place: bool) -> tuple[nn.Module, str]:
    """``(float32 model, note)``; ``note`` is empty and ``model`` returned as is when everything floating
    is float32. Without ``in_place`` the float32 model is a copy and ``model`` stays untouched."""
    dtypes = upcast_dtypes(model)
    if not dtypes:
        return model, ""
    if not in_place:  # a pruned or hook-normed model refuses deepcopy: its copy gets the computed weights
        from qgraph.weight_hooks import copy_with_plain_weights

        model = copy_with_plain_weights(model)[0]
    model.float()
    return model, (f"the model's {'/'.join(dtypes)} parameters and buffers were cast to float32 on qgraph's copy: "
                   f"quantizers calibrate and exports run in float32; {'/'.join(dtypes)} inputs are cast to float32 "
                   f"and the outputs are float32")


# --- casts to float16/bfloat16 inside forward ------------------------------------------------------------------
LOW = (torch.float16, torch.bfloat16)  # the dtypes a model's own casts are taken out of: computed in float32
_LOW_METHODS = {"half", "bfloat16"}


def _float32_dtypes(value):
    """``value`` (an argument structure) with every float16/bfloat16 dtype constant made float32."""
    return pytree.tree_map(lambda a: torch.float32 if isinstance(a, torch.dtype) and a in LOW else a, value)


def float32_casts(gm: torch.fx.GraphModule) -> list[tuple[torch.fx.Node, str]]:
    """Rewrite, in place, the graph's casts to float16/bfloat16 into float32 ones: ``x.half()`` and
    ``x.bfloat16()`` become ``x.float()``, and a float16/bfloat16 dtype argument (``x.to(torch.bfloat16)``,
    ``torch.zeros(..., dtype=torch.float16)``, torch.export's ``_to_copy`` and its dtype assertions)
    becomes ``torch.float32``. Returns ``(node, what it was)`` per node changed; the caller recompiles."""
    changed = []
    for node in gm.graph.nodes:
        if node.op not in ("call_method", "call_function"):
            continue
        if node.op == "call_method" and node.target in _LOW_METHODS:
            changed.append((node, f".{node.target}()"))
            node.target = "float"
        else:
            args, kwargs = _float32_dtypes(node.args), _float32_dtypes(dict(node.kwargs))
            if args == node.args and kwargs == dict(node.kwargs):
                continue
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            changed.append((node, _cast_name(name, (node.args, dict(node.kwargs)))))
            node.args, node.kwargs = args, kwargs
        if _is_float32_noop(node):  # a weight read through ``.bfloat16()`` is a parameter matmul's operand again
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    return changed


def _is_float32_noop(node: torch.fx.Node) -> bool:
    """Whether ``node`` is now a cast to float32 of a value that is float32 already (its tensor_meta)."""
    src = node.args[0] if node.args else None
    meta = (src.meta.get("tensor_meta") or src.meta.get("val")) if isinstance(src, torch.fx.Node) else None  # capture's or torch.export's
    if getattr(meta, "dtype", None) != torch.float32:
        return False
    if node.op == "call_method":
        return (node.target == "float" and len(node.args) == 1 and not node.kwargs
                or node.target == "to" and node.args[1:] == (torch.float32,) and not node.kwargs)
    return node.target is torch.ops.aten.to.dtype and node.args[1:] == (torch.float32,) and not node.kwargs


def _cast_name(name: str, arguments) -> str:
    """``to(..., bfloat16)``: a call and the first half-precision dtype among its arguments."""
    low = next(a for a in pytree.tree_leaves(arguments) if isinstance(a, torch.dtype) and a in LOW)
    return f"{name}(..., {str(low).removeprefix('torch.')})"


class Float32Casts(torch.overrides.TorchFunctionMode):
    """Runs a model's casts to float16/bfloat16 as float32 ones, the way :func:`float32_casts` rewrites
    its graph: a model qgraph cast to float32 (:func:`upcast`) whose ``forward`` casts to its old dtype
    itself (``x.half()`` before a float16 layer) would otherwise feed float16 values to float32 weights."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()  # the casts it changed, as ``float32_casts`` names them

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in _LOW_METHODS and args and isinstance(args[0], torch.Tensor):
            self.seen.add(f".{name}()")
            return args[0].float()
        if not any(isinstance(a, torch.dtype) and a in LOW for a in pytree.tree_leaves((args, kwargs))):
            return func(*args, **kwargs)  # the call as made: nothing to change
        self.seen.add(_cast_name(name, (args, kwargs)))
        return func(*_float32_dtypes(tuple(args)), **_float32_dtypes(kwargs))
