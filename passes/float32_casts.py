"""Float32CastsPass: a float32 model's own casts to float16/bfloat16 become float32.

A model that computes a stretch in half precision by hand (``h.to(torch.bfloat16)`` and the weights'
``.bfloat16()`` before an ``F.linear``, then ``.float()``) gives its quantizers bfloat16 values next to
float32 scales: calibration and bias correction crashed inside torch (``self and mat2 must have the
same dtype``), and an ONNX ``QuantizeLinear`` cannot mix the two. qgraph simulates and exports in
float32 (:mod:`qgraph.precision`), and the quantizers round to 8 bits or fewer anyway, so the casts are
made float32 and recorded; the float-rewrite check allows the difference half-precision rounding
makes (:attr:`min_sqnr_db`, as for autocast regions), not more.
"""

from __future__ import annotations

import torch.fx as fx
from qgraph.passes.base import QPass
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.ops import module_path
from qgraph.precision import float32_casts


class Float32CastsPass(QPass):
    name = "float32_casts"
    float_rewrite = True
    min_sqnr_db = 25.0  # float16/bfloat16 rounding of a few layers (Float32AutocastPass's floor)
    refresh_meta = True  # the nodes after a cast held half-precision tensor_meta: recorded again by the check's run

    def call(self, gm: fx.GraphModule) -> PassResult:
        changed = float32_casts(gm)
        for node, was in changed:
            self.record("replaced", node, module_path(node), f"{was} → float32: qgraph computes and exports in float32 "
                                                             "(a quantizer takes float32 values)")
        if changed:
            gm.recompile()
        return PassResult(gm, bool(changed))
