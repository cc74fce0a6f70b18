"""SortedTopkPass: ``topk(..., sorted=False)`` becomes ``topk(..., sorted=True)``.

``sorted=False`` leaves the order of the k results to the implementation, and PyTorch and ONNX
Runtime pick different ones (Informer's ProbSparse attention: the same top-u queries, rows in another
order). A model that only scatters the results back by their indices computes the same either way,
but a quantizer with one step per row (OFQ's per-token activations) then gives the rows different
steps in the two runtimes (0.69 off). Sorted, the order is defined and both agree.

Where the model's output does depend on the unspecified order, the float output changes on the
example inputs; :func:`qgraph.passes.pipeline.run_float_rewrites` then calls :meth:`revert`, and the
change is recorded as reverted instead of raising.
"""

from __future__ import annotations

import torch.fx as fx
from qgraph.passes.base import QPass
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.ops import TOPK, module_path

_SORTED_ARG = 4  # topk(input, k, dim, largest, sorted)


class SortedTopkPass(QPass):
    name = "sorted_topk"
    float_rewrite = True

    def __init__(self) -> None:
        super().__init__()
        self._undo: list[tuple[fx.Node, tuple, dict]] = []

    def call(self, gm: fx.GraphModule) -> PassResult:
        self._undo = []
        for node in gm.graph.nodes:
            if not (node.op == "call_function" and node.target in TOPK or node.op == "call_method" and node.target == "topk"):
                continue
            if len(node.args) > _SORTED_ARG:
                if node.args[_SORTED_ARG] is not False:
                    continue
                self._undo.append((node, node.args, dict(node.kwargs)))
                node.args = (*node.args[:_SORTED_ARG], True, *node.args[_SORTED_ARG + 1:])
            elif node.kwargs.get("sorted") is False:
                self._undo.append((node, node.args, dict(node.kwargs)))
                node.kwargs = {**node.kwargs, "sorted": True}
            else:
                continue
            self.record("replaced", node, module_path(node), "topk(sorted=False) → sorted=True: the order of its results is "
                                                              "left to the implementation, and ONNX Runtime's differs from PyTorch's")
        return self.finish(gm, bool(self._undo))

    def revert(self, gm: fx.GraphModule, why: str) -> None:
        """Put back ``sorted=False`` (the model's output depends on the order it returns)."""
        for node, args, kwargs in self._undo:
            node.args, node.kwargs = args, kwargs
            self.record("reverted", node, module_path(node), f"kept topk(sorted=False): {why}")
        self.changes = [c for c in self.changes if c.action == "reverted"]
        gm.recompile()
