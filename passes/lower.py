"""LowerPass: make weights integer for export.

Rewrite rules (run on a copy of the quantized graph, just before ONNX export):

1. ``get_attr W → weight_quantizer`` becomes ``get_attr W_int → qgraph::dequantize``: the integer
   codes are computed once and stored as an int8 buffer (``<quantizer>.qweight``) with the
   quantizer's scale and zero point, so the exporter writes integer initializers. The result is
   bit-identical to the fake-quantized weight.
2. Weight-only linear ``linear(x, dequantize(W_int), b)`` with per-group or per-output-channel
   weights becomes ``matmul(x, dequantize(W_intᵀ)) + b`` (blocks along axis 0, or one scale per
   column on axis 1): the ``DequantizeLinear → MatMul`` pattern ONNX Runtime fuses into
   MatMulNBits (2, 4 or 8 bits). So does a linear with a quantized input whose result stays float
   (annotate rule 6), which ONNX Runtime fuses into ``MatMulIntegerToFloat``. As ``linear`` either
   would stay a float Gemm that dequantizes its weight at every run.

3. Leaf modules with a ``lower_for_export()`` method store their own integer codes (the ``W_qk``
   products of OFQ's query-key reparameterization, ``qgraph.ofq.QKRScores``).

Activation quantizers are left as they are (they export as QuantizeLinear/DequantizeLinear).
"""

from __future__ import annotations

import torch
import torch.fx as fx
from qgraph.passes.base import ANNOTATION_KEY, QPass
from qgraph.passes.insert_quantizers import is_quantizer_node
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.granularity import PerChannel, PerGroup
from qgraph.ops import LINEAR, is_passthrough
from qgraph.packing import stored_codes
from qgraph.primitives import granularity_args


class LowerPass(QPass):
    name = "lower"

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            if not is_quantizer_node(gm, node):
                continue
            q = gm.get_submodule(node.target)
            src = node.args[0]
            if q.role != "weight" or q.mode != "quantize" or not isinstance(src, fx.Node) or src.op != "get_attr":
                continue
            weight = gm.get_parameter(src.target) if _is_param(gm, src.target) else gm.get_buffer(src.target)
            spec = q.spec
            with torch.no_grad():
                scale = q.effective_scale().detach().clone()
                zp = q.zero_point.detach().clone()
                codes = stored_codes(q, weight.detach().float())
            axis, group = granularity_args(spec.granularity)
            users = list(node.users)
            transpose = (
                (isinstance(spec.granularity, PerGroup) or spec.granularity == PerChannel(0))
                and len(users) == 1
                and users[0].op == "call_function"
                and users[0].target in LINEAR
                and codes.dim() == 2
                and (_weight_only(gm, users[0]) or _float_result(users[0]))
            )
            if transpose and group:  # blocks along K: scale [N, K/g] -> [K/g, N]
                codes, scale, zp, axis = codes.t().contiguous(), scale.t().contiguous(), zp.t().contiguous(), 0
            elif transpose:  # one scale per output channel, now axis 1 of Wᵀ
                codes, axis = codes.t().contiguous(), 1
            q.register_buffer("qweight", codes, persistent=False)
            q.register_buffer("lowered_scale", scale, persistent=False)
            q.register_buffer("lowered_zero_point", zp, persistent=False)
            with gm.graph.inserting_before(node):
                args = [gm.graph.get_attr(f"{node.target}.{n}") for n in ("qweight", "lowered_scale", "lowered_zero_point")]
                dq = gm.graph.call_function(torch.ops.qgraph.dequantize.default, (*args, spec.qmin, spec.qmax, axis, group))
            dq.meta = dict(node.meta)
            node.replace_all_uses_with(dq)
            gm.graph.erase_node(node)
            detail = f"{tuple(codes.shape)} {spec.describe()}"
            if transpose:
                lin = users[0]
                x, b = lin.args[0], (lin.args[2] if len(lin.args) > 2 else lin.kwargs.get("bias"))
                with gm.graph.inserting_before(lin):
                    mm = gm.graph.call_function(torch.matmul, (x, dq))
                    out = gm.graph.call_function(torch.add, (mm, b)) if b is not None else mm
                out.meta = dict(lin.meta)
                lin.replace_all_uses_with(out)
                gm.graph.erase_node(lin)
                detail += ", linear as MatMul on Wᵀ (" + ("blocked along K)" if group else "per column)")
            self.record("lowered", dq, q.where, detail)
            modified = True
        for name, mod in gm.named_modules():  # leaf modules with weights of their own (qgraph.ofq.QKRScores)
            if hasattr(mod, "lower_for_export"):
                detail = mod.lower_for_export()
                if detail:
                    self.record("lowered", name, getattr(mod, "where", name), detail)
        return self.finish(gm, modified)


def _float_result(linear: fx.Node) -> bool:
    """A w8a8-style linear whose result stays float (annotate rule 6): as ``DequantizeLinear → MatMul``
    ONNX Runtime runs it as ``MatMulIntegerToFloat``; as a Gemm without a ``Q`` after it, it would
    stay a float Gemm that dequantizes its weight at every run."""
    ann = linear.meta.get(ANNOTATION_KEY)
    return ann is not None and ann.activation is not None and not ann.quantize_output


def _is_param(gm, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def _weight_only(gm, linear: fx.Node) -> bool:
    """The linear's input is not quantized (no quantizer before it, directly or through ops such as
    flatten / reshape / max-pool that keep their input's quantization)."""
    x = linear.args[0]
    while isinstance(x, fx.Node):
        if is_quantizer_node(gm, x):
            return False
        if not (is_passthrough(gm, x) and x.args):
            return True
        x = x.args[0]
    return True
