"""Where a value is complete: after the in-place writes that fill it.

Captured graphs keep some in-place code as it is: DeepSeek's attention builds its keys with
``k = x.new_empty(...)`` and then ``k[..., :n].copy_(a)``, ``k[..., n:].copy_(b)`` through slice views.
A quantizer inserted right after ``new_empty`` read uninitialised memory (a NaN scale on a bad day,
stale values from the last call on a good one). :func:`settled` finds the node after which a value
holds what its readers see.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

VIEW_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "transpose", "permute", "expand", "expand_as", "unsqueeze", "squeeze",
    "narrow", "select", "split", "chunk", "unbind", "flatten", "unflatten", "t", "T", "mT", "diagonal", "unfold",
    "as_strided", "detach", "__getitem__", "contiguous",
})
VIEW_FUNCTIONS = frozenset({
    torch.transpose, torch.permute, torch.narrow, torch.select, torch.split, torch.chunk, torch.unbind, torch.squeeze,
    torch.unsqueeze, torch.flatten, torch.reshape, torch.diagonal, torch.t, torch.detach, operator.getitem,
})


def _schema(node: fx.Node):
    return getattr(node.target, "_schema", None) if node.op == "call_function" else None


def is_view(node: fx.Node) -> bool:
    """``node`` may return a view of its first input (so writes to it write to that input)."""
    schema = _schema(node)
    if schema is not None:
        if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
            return False
        return bool(schema.returns) and schema.returns[0].alias_info is not None
    if node.op == "call_method":
        return node.target in VIEW_METHODS
    return node.op == "call_function" and node.target in VIEW_FUNCTIONS


def writes_to(node: fx.Node, values: set[fx.Node]) -> bool:
    """``node`` writes in place into one of ``values``."""
    schema = _schema(node)
    if schema is not None:
        bound = list(node.args) + [node.kwargs.get(a.name) for a in schema.arguments[len(node.args):]]
        return any(a.alias_info is not None and a.alias_info.is_write and v in values
                   for a, v in zip(schema.arguments, bound))
    first = node.args[0] if node.args else None
    if node.op == "call_method":
        name = str(node.target)
        return first in values and name.endswith("_") and not name.startswith("__")
    return node.op == "call_function" and node.target is operator.setitem and first in values


def settled(value: fx.Node) -> fx.Node:
    """The node after which ``value`` holds what its readers see: ``value`` itself, or the last
    in-place write into it (or into a view of it) before the first node that reads it."""
    if not any(is_view(u) or writes_to(u, {value}) for u in value.users):
        return value
    aliases, last, node = {value}, value, value.next
    while node.op != "root":
        if any(a in aliases for a in node.all_input_nodes):
            if writes_to(node, aliases):
                last = node
            elif is_view(node):
                aliases.add(node)
            else:
                break  # the first reader
        node = node.next
    return last


def returns_itself(value: fx.Node, nodes) -> list[fx.Node]:
    """The in-place writes among ``nodes`` (in graph order) whose result is ``value`` itself: a write
    into ``value`` (or into such a result) that returns its first argument (``x.mul_(2)``,
    ``aten.leaky_relu_``), as opposed to a write into a view of it (``k[..., :n].copy_(a)``)."""
    same, found = {value}, []
    for node in sorted(nodes, key=_order(value.graph)):
        first = node.args[0] if node.args else None
        if first in same and writes_to(node, {first}) and _returns_first(node):
            same.add(node)
            found.append(node)
    return found


def _order(graph: fx.Graph):
    index = {n: i for i, n in enumerate(graph.nodes)}
    return index.__getitem__


def _returns_first(node: fx.Node) -> bool:
    schema = _schema(node)
    if schema is not None:
        first, out = schema.arguments[0].alias_info if schema.arguments else None, schema.returns[0].alias_info if schema.returns else None
        return first is not None and out is not None and first.before_set == out.before_set
    return node.op == "call_method"  # Tensor's in-place methods return self; setitem returns None
