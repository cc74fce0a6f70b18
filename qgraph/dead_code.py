"""Dead-code elimination that keeps in-place work.

``fx.Graph.eliminate_dead_code`` drops every node whose result nothing reads, unless torch knows it
to be impure. Symbolically traced graphs hold calls torch cannot judge: ``x.add_(y)`` with the result
unused, ``nn.ReLU(inplace=True)`` called for its effect, a function registered with
``torch.fx.wrap`` that adds into its argument (torchvision's MViT-v2 adds its pooled query into the
attention output that way). Dropping such a node silently changes what the graph computes
(mvit_v2_s: the float graph after one pass came out at -1.3 dB against the model).

:func:`may_mutate` is the conservative test every qgraph pass uses: a node is kept if torch calls it
impure, or it may write to a tensor it did not create.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

# the in-place operators (``x += y`` traces to ``operator.iadd``, ``x[i] = y`` to ``operator.setitem``)
_INPLACE_OPERATORS = {operator.iadd, operator.iand, operator.iconcat, operator.ifloordiv, operator.ilshift, operator.imatmul,
                      operator.imod, operator.imul, operator.ior, operator.ipow, operator.irshift, operator.isub,
                      operator.itruediv, operator.ixor, operator.setitem, operator.delitem}
# calls that change functorch's state, kept though nothing reads their result: a ``torch.func.vmap``
# in a ``torch.export`` graph opens and closes its level with them (dropping them leaves the batched
# tensors of ``_add_batch_dim`` outside any level: "your tensor may have escaped")
_STATEFUL_NAMES = {"_vmap_increment_nesting", "_vmap_decrement_nesting", "lazy_load_decompositions"}
# functions from these packages are pure unless called in their in-place form (qgraph's own never write
# to their arguments)
_PURE_PACKAGES = {"torch", "_operator", "operator", "builtins", "math", "qgraph"}


def _inplace_name(name: str) -> bool:
    return name.endswith("_") and not name.endswith("__")


def may_mutate(node: fx.Node) -> bool:
    """Whether ``node`` must stay even when nothing reads its result."""
    if node.is_impure():
        return True
    if node.op == "call_method":
        return _inplace_name(str(node.target))
    if node.op == "call_module":
        mod = node.graph.owning_module.get_submodule(str(node.target))  # is_impure above found it
        return bool(getattr(mod, "inplace", False))
    if node.op == "call_function":
        t = node.target
        if t in _INPLACE_OPERATORS or node.kwargs.get("inplace") is True or node.kwargs.get("out") is not None:
            return True
        if isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
            return False  # aten ops: torch's is_impure read their schema above
        if _inplace_name(getattr(t, "__name__", "")):  # torch.relu_, F.relu_
            return True
        if getattr(t, "__name__", "") in _STATEFUL_NAMES and (getattr(t, "__module__", None) or "").startswith("torch._functorch"):
            return True
        package = (getattr(t, "__module__", None) or "").split(".")[0]
        return package not in _PURE_PACKAGES  # e.g. a torch.fx.wrap'ed user function: unknown, kept
    return False


def eliminate_dead_code(graph: fx.Graph) -> bool:
    """``graph.eliminate_dead_code`` with :func:`may_mutate` as the purity test; True if it removed nodes."""
    return graph.eliminate_dead_code(is_impure_node=may_mutate)
