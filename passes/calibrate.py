"""CalibratePass: run calibration batches through the graph and fix every quantizer's qparams.

1. Every FakeQuantize switches to ``observe`` (values pass through unchanged, observers record).
2. The calibration batches run through the graph (no gradients).
3. With ``sync_ranks``, observer statistics are reduced over the ``torch.distributed`` ranks
   (``qgraph.distributed``).
4. Each quantizer turns its observations into a scale and zero point and switches to ``quantize``.

A quantizer that saw nothing (a branch the data never reached) is an error naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.fx as fx
from qgraph.passes.base import QPass
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.capture import batch_inputs
from qgraph.errors import InputError
from qgraph.keyword_inputs import untensored_hint
from qgraph.quantizer import FakeQuantize


class CalibratePass(QPass):
    name = "calibrate"

    def __init__(self, batches: Iterable, sync_ranks: bool = False) -> None:
        super().__init__()
        self.batches = batches
        self.sync_ranks = sync_ranks  # reduce observer statistics over torch.distributed ranks first

    def call(self, gm: fx.GraphModule) -> PassResult:
        quantizers = [(n, m) for n, m in gm.named_modules() if isinstance(m, FakeQuantize)]
        if not quantizers:
            return PassResult(gm, False)
        for _, q in quantizers:
            q.set_mode("observe")
        was_training = gm.training
        gm.eval()
        count = 0
        with torch.no_grad():
            for i, batch in enumerate(self.batches):
                args = batch_inputs(gm, batch)
                try:
                    gm(*args)
                except Exception as e:
                    if isinstance(batch, Mapping):
                        hint = untensored_hint(batch, "batch input")
                        hint = f"; {hint}" if hint else ""
                    elif len(args) > 1:
                        hint = (f"; the batch has {len(args)} parts, which go to forward() as positional arguments: if your "
                                "loader yields (inputs, labels), pass calib_data=(x for x, _ in loader)")
                    else:
                        hint = ""
                    raise InputError(f"calibration batch {i} does not fit the model: {type(e).__name__}: {e}{hint}") from e
                count += 1
        if count == 0:
            raise InputError("calib_data yielded no batches")
        if self.sync_ranks:
            from qgraph.distributed import reduce_observers

            reduce_observers(gm)
        for name, q in quantizers:
            q.finish_calibration()
            lo, hi = q.scale_range()
            self.record("calibrated", name, q.where, f"{q.spec.describe()} scale {lo:.3g}..{hi:.3g} from {count} batches")
        gm.train(was_training)
        return PassResult(gm, True)
