"""Matrix products with a layer's weight, as linear layers, for ``CanonicalizePass`` (rule 8).

* ``x @ W.T`` (``matmul`` / ``mm`` of an activation and the transpose of a 2-D ``nn.Parameter``, any
  spelling) → ``linear(x, W)`` (:func:`linear_of_transposed`).
* A layer written as an einsum with its 2-D weight (code ported from JAX) → ``x @ W`` or
  ``linear(x, W)``, between permutes where the contracted index or the output order need them
  (:func:`einsum_linear`).
* An einsum weight of 3+ dims that contracts one index with x and gives the others to the output
  (MMoE's expert kernels) → one linear layer over those indices flattened (:func:`einsum_stacked_outputs`).

Each takes the pass (to record what it changed) and returns whether it rewrote ``node``.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F
from qgraph.passes.base import QPass

from qgraph.ops import BATCHED_MATMUL, EINSUM, MATMUL, MATMUL_METHODS, is_matrix_parameter


def linear_of_transposed(p: QPass, gm: fx.GraphModule, node: fx.Node) -> bool:
    """Rule 8: ``matmul(x, W.T)`` → ``linear(x, W)``."""
    is_mm = node.op == "call_function" and node.target in MATMUL or node.op == "call_method" and node.target in MATMUL_METHODS
    if not is_mm or node.target in BATCHED_MATMUL or len(node.args) != 2 or node.kwargs:
        return False
    x, wt = node.args
    if not isinstance(x, fx.Node) or x.op == "get_attr" or not isinstance(wt, fx.Node):
        return False
    w = _transposed_matrix(gm, wt)
    if w is None:
        return False
    aten = isinstance(node.target, torch._ops.OpOverload)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(torch.ops.aten.linear.default if aten else F.linear, (x, w))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    if not wt.users:
        gm.graph.erase_node(wt)
    path = str(w.target).rpartition(".")[0]
    p.record("replaced", new, path, f"x @ {w.target}.T by linear(x, {w.target})")
    return True


def einsum_linear(p: QPass, gm: fx.GraphModule, node: fx.Node) -> bool:
    """Rule 8: ``einsum("...k,kn->...n", x, W)`` → ``linear(x, W.T)`` as ``x @ W``, and
    ``einsum("...k,nk->...n", x, W)`` → ``linear(x, W)``: a layer written as an einsum with its
    2-D weight (code ported from JAX) contracts x's last dim, keeping the others in order. With
    explicit indices the contracted one may be anywhere and the output in any order
    (``einsum("bchw,oc->bohw", x, W)``, a 1x1 convolution; a one-hot code times a codebook): x
    is permuted to put it last, and the product permuted to the output's order."""
    if node.op != "call_function" or node.target not in EINSUM or node.kwargs or not node.args:
        return False
    eq, operands = node.args[0], node.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not isinstance(eq, str) or len(operands) != 2 or "->" not in eq:
        return False
    (sx, sw), out = eq.replace(" ", "").split("->")[0].split(","), eq.replace(" ", "").split("->")[1]
    x, w = operands
    if not (isinstance(x, fx.Node) and x.op != "get_attr" and isinstance(w, fx.Node) and is_matrix_parameter(gm, w)):
        return False
    if len(sw) != 2 or not sx or len(set(sx.replace("...", ""))) != len(sx.replace("...", "")) or sw[0] == sw[1]:
        return False
    k = next((c for c in sw if c in sx), None)  # the contracted index (the other one is the output's)
    if k is None or k in out or sum(c in sx for c in sw) != 1:
        return False
    n = sw[1] if sw[0] == k else sw[0]
    kept = sx.replace(k, "")
    if "..." in sx:  # a batch of any rank: x's last dim only, the others in order
        if sx[-1] != k or out != kept + n:
            return False
    elif sorted(out) != sorted(kept + n):
        return False
    aten = isinstance(node.target, torch._ops.OpOverload)
    g = gm.graph
    permute = torch.ops.aten.permute.default if aten else torch.permute
    permuted = sx[-1] != k or out != kept + n
    meta = {key: v for key, v in node.meta.items() if not permuted or key not in ("val", "tensor_meta")}
    with g.inserting_before(node):
        if sx[-1] != k:  # e.g. a 1x1 convolution as einsum("bchw,oc->bohw"): the contracted dim goes last
            x = g.call_function(permute, (x, [sx.index(c) for c in kept + k]))
            x.meta = dict(meta)
        if sw[0] == k:  # W is [k, n]: x @ W (a linear whose weight is [in, out], ops.classify)
            new = g.call_function(torch.ops.aten.matmul.default if aten else torch.matmul, (x, w))
        else:
            new = g.call_function(torch.ops.aten.linear.default if aten else F.linear, (x, w))
        new.meta = dict(meta)
        if out != kept + n:
            new = g.call_function(permute, (new, [(kept + n).index(c) for c in out]))
            new.meta = dict(node.meta)
    if permuted:
        p.refresh_meta = True  # the permuted values' shapes come from the float-rewrite check's run
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    p.record("replaced", new, str(w.target).rpartition(".")[0],
             f"einsum('{eq}') with the weight {w.target} by {'x @ W' if sw[0] == k else 'linear(x, W)'}"
             + (" between permutes" if permuted else ""))
    return True


def einsum_stacked_outputs(p: QPass, gm: fx.GraphModule, node: fx.Node) -> bool:
    """Rule 8 for a weight of 3+ dims that contracts one index with x and gives all its others to the
    output (MMoE's expert kernels ``einsum("ab,bcd->acd", x, W[in, units, experts])``, code ported
    from Keras): one linear layer whose outputs are those indices flattened,
    ``linear(x, W.permute(k first).reshape(k, -1).T)`` (fold_weights makes that weight one
    parameter), reshaped and permuted to the output's order."""
    if node.op != "call_function" or node.target not in EINSUM or node.kwargs or not node.args:
        return False
    eq, operands = node.args[0], node.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not isinstance(eq, str) or len(operands) != 2 or "->" not in eq or "." in eq:
        return False
    (sx, sw), out = eq.replace(" ", "").split("->")[0].split(","), eq.replace(" ", "").split("->")[1]
    x, w = operands
    if not (isinstance(x, fx.Node) and x.op != "get_attr" and isinstance(w, fx.Node) and w.op == "get_attr"):
        return False
    try:
        weight = gm.get_parameter(str(w.target))
    except AttributeError:
        return False
    if weight.dim() < 3 or len(sw) != weight.dim() or not weight.is_floating_point():
        return False
    if len(set(sw)) != len(sw) or len(set(sx)) != len(sx) or len(set(out)) != len(out):
        return False
    contracted = [c for c in sw if c in sx]
    produced = [c for c in sw if c not in sx]
    if len(contracted) != 1 or contracted[0] in out or not all(c in out for c in produced):
        return False
    k, kept = contracted[0], sx.replace(contracted[0], "")
    if sorted(out) != sorted(kept + "".join(produced)):
        return False
    aten = isinstance(node.target, torch._ops.OpOverload)
    permute = torch.ops.aten.permute.default if aten else torch.permute
    reshape = torch.ops.aten.reshape.default if aten else torch.reshape
    sizes = [weight.shape[sw.index(c)] for c in produced]
    g = gm.graph
    with g.inserting_before(node):
        if sx[-1] != k:
            x = g.call_function(permute, (x, [sx.index(c) for c in kept + k]))
        wk = g.call_function(permute, (w, [sw.index(c) for c in produced] + [sw.index(k)]))  # [*produced, k]
        wk = g.call_function(reshape, (wk, [math.prod(sizes), weight.shape[sw.index(k)]]))
        y = g.call_function(torch.ops.aten.linear.default if aten else F.linear, (x, wk))
        y = g.call_function(reshape, (y, [*_kept_sizes(node, sx, kept), *sizes]))
        order = kept + "".join(produced)
        new = g.call_function(permute, (y, [order.index(c) for c in out])) if out != order else y
    new.meta = dict(node.meta)
    p.refresh_meta = True  # the new values' shapes come from the float-rewrite check's run
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    p.record("replaced", new, str(w.target).rpartition(".")[0],
             f"einsum('{eq}') with the weight {w.target} by one linear layer of {math.prod(sizes)} outputs "
             f"({' x '.join(map(str, sizes))}), reshaped")
    return True


def _kept_sizes(node: fx.Node, sx: str, kept: str) -> list:
    """The sizes of x's kept dims, read from x at run time (``x.size(i)``), so any batch works."""
    x = node.args[1] if not isinstance(node.args[1], (list, tuple)) else node.args[1][0]
    g = node.graph
    aten = isinstance(node.target, torch._ops.OpOverload)
    with g.inserting_before(node):
        return [g.call_function(torch.ops.aten.sym_size.int, (x, sx.index(c))) if aten else g.call_method("size", (x, sx.index(c)))
                for c in kept]


_T_FNS = {torch.t, torch.ops.aten.t.default, torch.ops.aten.numpy_T.default, "t"}  # no dims
_TRANSPOSE_FNS = {torch.transpose, torch.ops.aten.transpose.int, "transpose"}  # two dims
_PERMUTE_FNS = {torch.permute, torch.ops.aten.permute.default, "permute"}  # the new order


def _transposed_matrix(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The ``get_attr`` of a 2-D parameter ``W`` when ``node`` is ``W.T`` (any spelling), else None."""
    if node.op not in ("call_function", "call_method") or node.kwargs or not node.args:
        return None
    t, src, dims = node.target, node.args[0], node.args[1:]
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = tuple(dims[0])  # permute([1, 0])
    if not (t is getattr and dims in (("T",), ("mT",)) or t in _T_FNS and not dims
            or all(isinstance(d, int) for d in dims) and (
                t in _TRANSPOSE_FNS and len(dims) == 2 and {d % 2 for d in dims} == {0, 1}
                or t in _PERMUTE_FNS and tuple(d % 2 for d in dims) == (1, 0))):
        return None
    return src if isinstance(src, fx.Node) and is_matrix_parameter(gm, src) else None
