"""Rule 14 of :class:`qgraph.passes.canonicalize.CanonicalizePass`: drop assertions on a tensor's rank.

``torch._assert(x.ndim == k, msg)`` (also ``x.dim() == k``, either side of the ``==``) where the
traced ``x`` has rank ``k``: a graph fixes every value's rank, so the assertion holds on every input
the graph runs. timm's ``BatchNormAct2d`` asserts its input is 4-D; the ``getattr(x, "ndim")`` is a
second reader of the conv result before it, so the BatchNorm was not folded into the conv (a fold
needs the conv's result to have one reader) and ran in float between two quantizers: 34 in timm's
MobileNetV3-Small, every BatchNorm of timm's EfficientNets and MobileNets.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from qgraph.ops import module_path, tensor_meta


def _rank_query(node) -> fx.Node | None:
    """The tensor whose rank ``node`` reads (``getattr(x, "ndim")``, ``x.dim()``), else None."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("ndim",):
        return node.args[0] if isinstance(node.args[0], fx.Node) else None
    if node.op == "call_method" and node.target == "dim" and len(node.args) == 1 and not node.kwargs:
        return node.args[0] if isinstance(node.args[0], fx.Node) else None
    return None


def drop_rank_assert(gm: fx.GraphModule, node: fx.Node) -> tuple[str, str, str] | None:
    """Remove ``node`` if it asserts a rank the traced graph has (with its comparison and rank query,
    when nothing else reads them); returns (its name, its module path, what it checked), else None."""
    if node.op != "call_function" or node.target is not torch._assert or not node.args:
        return None
    cond = node.args[0]
    if not isinstance(cond, fx.Node) or cond.op != "call_function" or cond.target is not operator.eq or len(cond.args) != 2:
        return None
    a, b = cond.args
    query, rank = (a, b) if _rank_query(a) is not None else (b, a)
    tensor = _rank_query(query)
    meta = tensor_meta(tensor) if tensor is not None else None
    if meta is None or not isinstance(rank, int) or isinstance(rank, bool) or len(meta[0]) != rank:
        return None
    removed = (node.name, module_path(node), f"assert {tensor.name}.ndim == {rank}: the graph fixes that rank")
    gm.graph.erase_node(node)
    for dead in (cond, query):
        if not dead.users:
            gm.graph.erase_node(dead)
    return removed
