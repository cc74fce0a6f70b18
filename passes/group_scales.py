"""GroupScalesPass (QSLAW, ALGORITHMS.md §2): learnable per-group gains on grouped linear weights.

A recipe method pass run after insert_quantizers (recipe ``qslaw(bits=4, group_size=128)``): every
weight quantizer on a per-group grid (linear weights whose input dimension the group size divides;
others fall back to per channel and keep plain quantizers) becomes a
:class:`qgraph.group_scales.GroupGainQuantize` with frozen step and zero point and one learnable
gain per group, initialised to 1 at calibration. ``skip_first`` leaves the first N such layers (in
graph order) without gains, as the reference code leaves the first decoder layers.
"""

from __future__ import annotations

import torch.fx as fx
from qgraph.passes.base import QPass
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.granularity import PerGroup
from qgraph.group_scales import GroupGainQuantize
from qgraph.quantizer import FakeQuantize


class GroupScalesPass(QPass):
    name = "group_scales"

    def __init__(self, skip_first: int = 0) -> None:
        super().__init__()
        self.skip_first = int(skip_first)

    def call(self, gm: fx.GraphModule) -> PassResult:
        from qgraph.packing import weight_quantizers

        order = {str(n.target): i for i, n in enumerate(gm.graph.nodes) if n.op == "call_module"}
        names = sorted(weight_quantizers(gm).values(), key=lambda n: order.get(n, len(order)))
        seen, modified = 0, False
        for name in names:
            q = gm.get_submodule(name)
            if not isinstance(q, FakeQuantize) or isinstance(q, GroupGainQuantize) or not isinstance(q.spec.granularity, PerGroup):
                continue
            seen += 1
            if seen <= self.skip_first:
                self.record("kept", name, q.where, f"no group gains (one of the first {self.skip_first} grouped layers)")
                continue
            parent, _, child = name.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, child, GroupGainQuantize(q.spec, q.where))
            self.record("replaced", name, q.where, f"weight quantizer → learnable gain per group of {q.spec.granularity.size}")
            modified = True
        return PassResult(gm, modified)


__all__ = ["GroupScalesPass"]
