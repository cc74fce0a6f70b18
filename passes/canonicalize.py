"""CanonicalizePass: module calls of Conv/Linear become functional calls on ``get_attr`` weights.

Rewrite rules:

1. ``call_module Conv{1,2,3}d`` (zero padding mode) → ``get_attr weight`` (+ ``get_attr bias``) →
   ``call_function F.conv{n}d(x, weight, bias, stride, padding, dilation, groups)``.
2. ``call_module Linear`` → ``F.linear(x, weight, bias)``.

After this, weights are graph values that quantizers can be attached to in both dialects
(``torch.export`` graphs already have this form). The module stays in the hierarchy and owns its
parameters, so ``state_dict`` keys do not change. Auto-leaf modules are left alone.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F
from qgraph.passes.base import QPass
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.meta import MODULE_PATH_KEY

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class CanonicalizePass(QPass):
    name = "canonicalize"

    def __init__(self, leaves: set[str] | None = None) -> None:
        super().__init__()
        self.leaves = set(leaves or ())

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or node.target in self.leaves or node.kwargs:
                continue
            mod = gm.get_submodule(node.target)
            if type(mod) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and mod.padding_mode == "zeros" and len(node.args) == 1:
                fn = _CONV_FN[len(mod.kernel_size)]
                extra = (mod.stride, mod.padding, mod.dilation, mod.groups)
            elif type(mod) is nn.Linear and len(node.args) == 1:
                fn, extra = F.linear, ()
            else:
                continue
            path = str(node.target)
            with gm.graph.inserting_before(node):
                w = gm.graph.get_attr(f"{path}.weight")
                b = gm.graph.get_attr(f"{path}.bias") if mod.bias is not None else None
                new = gm.graph.call_function(fn, (node.args[0], w, b, *extra))
            new.meta = dict(node.meta)
            new.meta[MODULE_PATH_KEY] = path
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            self.record("replaced", new, path, f"{type(mod).__name__} module call by {fn.__name__}")
            modified = True
        return self.finish(gm, modified)
