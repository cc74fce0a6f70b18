"""Parameters that are stacks of weight matrices, read per slice rather than by a conv or linear call:
quantized weight-only on their ``get_attr`` as kind ``experts`` (annotate rule 9), one scale per
matrix row.

* mixture-of-experts weights ``[E, K, N]`` read by a grouped matmul, or by an einsum as one matrix
  per expert (:func:`expert_weight_info`);
* the stacked ``[members, out, in]`` weights of a ``vmap(functional_call)`` ensemble
  (:func:`ensemble_weight_info`);
* a parameter of 3+ dims in a broadcast matmul with an activation (:func:`stacked_matrices_info`),
  or read one matrix at a time by an integer index (DCN-v2's ``matmul(self.kernels[i], x)``);
* mixture-of-experts weights ``[E, ·, ·]`` gathered by a tensor of expert indices and read by einsums
  as one matrix per gathered expert (gpt-fast's ``einsum("ti,taoi->tao", x, self.w1[expert_indices])``,
  :func:`gathered_expert_info`).

:func:`qgraph.ops.classify` asks :func:`stacked_weight_info` about every ``get_attr``.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from qgraph.ops import (
    BATCHED_MATMUL,
    EINSUM,
    LINEAR,
    MATMUL,
    OpInfo,
    _is_float_tensor,
    _ops,
    is_grouped_mm,
    tensor_meta,
)


def stacked_weight_info(gm: fx.GraphModule, node: fx.Node) -> OpInfo | None:
    """Kind ``experts`` for a ``get_attr`` of a stacked weight (any of the three forms above), else None."""
    return (expert_weight_info(node) or ensemble_weight_info(gm, node) or stacked_matrices_info(gm, node)
            or gathered_expert_info(gm, node))


def expert_weight_info(node: fx.Node) -> OpInfo | None:
    """A 3-D parameter every reader of which is a grouped matmul's weight ``[E, K, N]``, directly or
    through a transpose (Hugging Face MoE layers store ``[E, N, K]``, the rows of ``nn.Linear``), or an
    einsum that reads it as one matrix per expert (:func:`einsum_expert_axis`):
    kind ``experts``, quantized on its ``get_attr`` (weight-only). ``weight_channel_axis``: the
    axis of the stored tensor that holds the output channels (N)."""
    tm = tensor_meta(node)
    if tm is None or len(tm[0]) != 3 or not tm[1].is_floating_point or not node.users:
        return None
    axes = set()
    for user in node.users:
        mm, out_axis = user, 2
        if (user.op == "call_function" and user.target in (torch.transpose, *_ops("transpose.int"))
                or user.op == "call_method" and user.target == "transpose"):
            dims = {d % 3 for d in user.args[1:3]}
            if dims != {1, 2} or len(user.users) != 1:
                return None
            mm, out_axis = next(iter(user.users)), 1
        if mm is user and user.op == "call_function" and user.target in EINSUM:
            out_axis = einsum_expert_axis(user, node)
            if out_axis is None:
                return None
        elif not (is_grouped_mm(mm) and len(mm.args) > 1 and mm.args[1] is (user if mm is not user else node)):
            return None
        axes.add(out_axis)
    if len(axes) != 1:
        return None
    return OpInfo("experts", str(node.target).rpartition(".")[0], node, None, [], axes.pop())


def einsum_expert_axis(einsum: fx.Node, weight: fx.Node) -> int | None:
    """The output-channel axis of a 3-D expert weight read by a two-operand einsum as stacked
    per-expert matrices (the Switch Transformer's ``einsum("becd,edh->bech", x, wi)``): the weight's
    first index is a batch index (in the other operand and the output), one index is contracted
    with the other operand and one goes to the output. None for any other einsum."""
    eq, operands = einsum.args[0], einsum.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not isinstance(eq, str) or "->" not in eq or "." in eq or einsum.kwargs or len(operands) != 2:
        return None
    ins, out = eq.replace(" ", "").split("->")
    subs = ins.split(",")
    if len(subs) != 2 or operands[0] is operands[1] or weight not in operands:
        return None
    sw, sx = (subs[1], subs[0]) if operands[1] is weight else (subs[0], subs[1])
    if len(sw) != 3 or len(set(sw)) != 3 or len(set(sx)) != len(sx) or len(set(out)) != len(out):
        return None
    e, rest = sw[0], sw[1:]
    contracted = [c for c in rest if c in sx and c not in out]
    produced = [c for c in rest if c in out and c not in sx]
    if not (e in sx and e in out and len(contracted) == 1 and len(produced) == 1):
        return None
    return sw.index(produced[0])


def ensemble_weight_info(gm: fx.GraphModule, node: fx.Node) -> OpInfo | None:
    """The stacked weights of a model ensemble run by ``torch.func.vmap(functional_call)``: a 3-D
    parameter ``[members, out, in]`` (``torch.func.stack_module_state`` of linear layers) every reader
    of which is ``_add_batch_dim`` over dim 0 feeding only linear layers as their weight. Kind
    ``experts`` (one linear per slice, as in a mixture of experts), quantized weight-only on its
    ``get_attr``, outside the vmap level, per (member, output channel)."""
    if not is_parameter(gm, node):
        return None
    tm = tensor_meta(node)
    if tm is None or len(tm[0]) != 3 or not tm[1].is_floating_point or not node.users:
        return None
    for user in node.users:
        name = str(getattr(user.target, "__name__", "")) if user.op == "call_function" else ""
        if not (name.endswith("_add_batch_dim") and user.args[:2] == (node, 0) and user.users):
            return None
        if not all(r.op == "call_function" and r.target in LINEAR and len(r.args) > 1 and r.args[1] is user
                   and r.args[0] is not user for r in user.users):
            return None
    return OpInfo("experts", str(node.target).rpartition(".")[0], node, None, [], 1)


def stacked_matrices_info(gm: fx.GraphModule, node: fx.Node) -> OpInfo | None:
    """A parameter of 3 or more dims every reader of which multiplies it by an activation in a
    broadcast matmul (CapsNet's ``matmul(W [1, caps, classes, out, in], u [n, caps, 1, in, 1])``):
    a stack of weight matrices, kind ``experts``, quantized weight-only on its ``get_attr`` with one
    scale per matrix row. ``weight_channel_axis``: the output rows (dim -2) of ``W @ x``, the columns
    (dim -1) of ``x @ W``."""
    if node.op != "get_attr" or not node.users or not is_parameter(gm, node):
        return None
    tm = tensor_meta(node)
    if tm is None or len(tm[0]) < 3 or not tm[1].is_floating_point:
        return None
    axes = set()
    for reader in node.users:
        # a slice by an integer index on the first dim is one of the stacked matrices; the axes below
        # count from the end, so they name the same dims of the stack
        products = list(reader.users) if matrix_slice_of(reader) is node else [reader]
        for user in products:
            value = reader if user is not reader else node
            is_mm = (user.op == "call_function" and user.target in MATMUL and user.target not in BATCHED_MATMUL
                     or user.op == "call_method" and user.target == "matmul")
            if not is_mm or user.kwargs or len(user.args) != 2 or user.args[0] is user.args[1]:
                return None
            other = user.args[1] if user.args[0] is value else user.args[0]
            if not isinstance(other, fx.Node) or other.op == "get_attr" or not _is_float_tensor(other):
                return None
            axes.add(len(tm[0]) - 2 if user.args[0] is value else len(tm[0]) - 1)
    if len(axes) != 1:
        return None
    return OpInfo("experts", str(node.target).rpartition(".")[0], node, None, [], axes.pop())


_SELECT = _ops("select.int")


def matrix_slice_of(node: fx.Node) -> fx.Node | None:
    """The ``get_attr`` that ``node`` slices by one integer index on its first dim (``w[i]``;
    ``aten.select(w, 0, i)``), or None."""
    if node.op != "call_function" or not node.users:
        return None
    if node.target is operator.getitem and len(node.args) == 2 and type(node.args[1]) is int:
        src = node.args[0]
    elif node.target in _SELECT and len(node.args) == 3 and node.args[1] == 0 and type(node.args[2]) is int:
        src = node.args[0]
    else:
        return None
    return src if isinstance(src, fx.Node) and src.op == "get_attr" else None


_INDEX = _ops("index.Tensor")


def gathered_from(node: fx.Node) -> fx.Node | None:
    """The ``get_attr`` whose first dim ``node`` gathers by a tensor of integer indices (``w[idx]``;
    ``aten.index.Tensor(w, [idx])``), or None."""
    if node.op != "call_function" or len(node.args) != 2:
        return None
    src, idx = node.args
    if node.target in _INDEX and isinstance(idx, (list, tuple)) and len(idx) == 1:
        idx = idx[0]
    elif node.target is not operator.getitem:
        return None
    tm = tensor_meta(idx) if isinstance(idx, fx.Node) else None
    if tm is None or tm[1].is_floating_point or tm[1] is torch.bool:
        return None
    return src if isinstance(src, fx.Node) and src.op == "get_attr" else None


def gathered_expert_info(gm: fx.GraphModule, node: fx.Node) -> OpInfo | None:
    """A 3-D parameter ``[E, ·, ·]`` every reader of which gathers expert matrices by a tensor of indices
    and feeds only two-operand einsums that read the gathered ``[..., ·, ·]`` as one matrix per index
    (the gathered dims go to the output, one matrix dim is contracted with the other operand and one
    goes to the output): kind ``experts``, quantized on its ``get_attr`` (weight-only) before the
    gather. ``weight_channel_axis``: the stored axis that goes to the output."""
    if node.op != "get_attr" or not node.users or not is_parameter(gm, node):
        return None
    tm = tensor_meta(node)
    if tm is None or len(tm[0]) != 3 or not tm[1].is_floating_point:
        return None
    axes = set()
    for gather in node.users:
        if gathered_from(gather) is not node or not gather.users:
            return None
        for user in gather.users:
            axis = _gathered_einsum_axis(user, gather) if user.op == "call_function" and user.target in EINSUM else None
            if axis is None:
                return None
            axes.add(axis)
    if len(axes) != 1:
        return None
    return OpInfo("experts", str(node.target).rpartition(".")[0], node, None, [], axes.pop())


def _gathered_einsum_axis(einsum: fx.Node, gathered: fx.Node) -> int | None:
    """The stored axis (1 or 2 of ``[E, ·, ·]``) that an einsum sends to its output from a gathered stack
    of matrices; None where it does not read them as one matrix per gathered index."""
    eq, operands = einsum.args[0], einsum.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not isinstance(eq, str) or "->" not in eq or "." in eq or einsum.kwargs or len(operands) != 2 or operands[0] is operands[1]:
        return None
    ins, out = eq.replace(" ", "").split("->")
    subs = ins.split(",")
    if len(subs) != 2 or gathered not in operands:
        return None
    sw, sx = (subs[1], subs[0]) if operands[1] is gathered else (subs[0], subs[1])
    if len(sw) < 3 or len(set(sw)) != len(sw) or any(c not in out for c in sw[:-2]):
        return None
    a, b = sw[-2:]
    for produced, contracted, axis in ((a, b, 1), (b, a, 2)):
        if produced in out and produced not in sx and contracted in sx and contracted not in out:
            return axis
    return None


def is_parameter(gm: fx.GraphModule, node: fx.Node) -> bool:
    try:
        gm.get_parameter(str(node.target))
    except AttributeError:
        return False
    return True
