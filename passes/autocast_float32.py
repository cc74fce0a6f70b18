"""Float32AutocastPass: a ``torch.autocast`` region in ``forward`` is computed in float32.

``torch.export`` keeps ``with torch.autocast("cpu", dtype=torch.bfloat16):`` as one
``wrap_with_autocast`` call on a graph submodule, which the passes do not enter (its layers stayed
float) and which the ONNX exporter writes as bfloat16 ops; ONNX Runtime's CPU provider has no
bfloat16 ``MatMul``/``Gemm`` and refused the file. The region's graph is inlined, its bfloat16
dtype assertions dropped, so its layers are quantized like any other and the file runs in ONNX
Runtime. Autocast is a speed setting, not part of the model's math, and the quantizers round to 8
bits or fewer anyway; the float-rewrite check allows the difference bfloat16 rounding makes
(:attr:`min_sqnr_db`), not more.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from qgraph.passes.base import QPass
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.ops import module_path

_LOW = {torch.bfloat16, torch.float16}


def _is_autocast(node: fx.Node) -> bool:
    return (node.op == "call_function" and type(node.target).__name__ == "WrapWithAutocast" and len(node.args) >= 5
            and node.args[1] in _LOW and node.args[2] is True)


class Float32AutocastPass(QPass):
    name = "autocast_float32"
    float_rewrite = True
    # bfloat16 keeps 8 significant bits: one rounding is about -48 dB, a few layers of them 35-45 dB
    min_sqnr_db = 25.0
    refresh_meta = True  # the inlined nodes get their example shapes from the check's run (tensor_meta)

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            if not _is_autocast(node):
                continue
            device, dtype, sub_node, operands = node.args[0], node.args[1], node.args[4], node.args[5:]
            sub = gm.get_submodule(str(sub_node.target)) if isinstance(sub_node, fx.Node) and sub_node.op == "get_attr" else None
            if not isinstance(sub, fx.GraphModule):
                continue
            placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
            if len(placeholders) != len(operands) or any(_is_autocast(n) for n in sub.graph.nodes):
                continue
            with gm.graph.inserting_before(node):
                out = gm.graph.graph_copy(sub.graph, dict(zip(placeholders, operands)))
            results = list(out) if isinstance(out, (tuple, list)) else [out]
            for user in list(node.users):
                if user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int):
                    for check in [u for u in user.users if "_assert_tensor_metadata" in str(u.target)]:
                        gm.graph.erase_node(check)  # it asserts the region's bfloat16 result
                    user.replace_all_uses_with(results[user.args[1]])
                    gm.graph.erase_node(user)
            if node.users:  # read other than by index: leave it (the copy is dead code)
                continue
            gm.graph.erase_node(node)
            modified = True
            self.record("replaced", sub_node, module_path(node), f"torch.autocast({device!r}, {dtype}) region {sub_node.target}: "
                                                                  "inlined and computed in float32 (ONNX Runtime's CPU provider "
                                                                  f"has no {str(dtype).removeprefix('torch.')} MatMul/Gemm)")
        return self.finish(gm, modified)
