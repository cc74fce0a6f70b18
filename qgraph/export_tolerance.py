"""How far ONNX Runtime may differ from the fake-quantized model before an export counts as wrong.

Two correct runtimes compute every op's float math in a different order (ONNX Runtime's integer
kernels, its float kernels, PyTorch), so their results differ by a few float32 ulps, and every code
whose pre-rounding value lies that close to ``k + 0.5`` rounds the other way, by one step. A flipped
code perturbs the next layers' sums and flips more: vgg16_bn differs from ONNX Runtime in 2 of its
98,304 input codes (exact ties) and in 58 of its 80 output codes, by up to 5 steps
(``benchmarks/zoo_export_drift.py``). The default tolerance is the larger of

* **grid**: ``GRID_STEPS`` steps of the activation grids the outputs are on (none when a float op
  computes them) plus ``RANGE_FRACTION`` of the output range (one-step differences in the last
  quantized ops, float rounding), and
* **drift**: ``DRIFT_FACTOR`` times the model's own divergence when every activation quantizer's input
  ``a`` moves by ``DRIFT_EPS * N(0, 1)`` times its code's magnitude in ``a``'s units, ``|a| + |s·z|``
  on a per-tensor grid with zero point ``z`` and ``|a|`` on others (``DRIFT_TRIALS`` independent draws):
  the same tie-flip mechanism, simulated. ``DRIFT_EPS`` = 1e-6 is about 8 float32 ulps, a conv's
  accumulation of a few hundred products. One draw's divergence is heavy-tailed (it jumps with the
  particular codes that flip): timm's resnext26ts, 32 single draws (seeds 0-31), median 8.7e-7,
  largest 5.3e-6, while ONNX Runtime's fused kernels differ by 2.8e-6. The largest of this function's
  first 4 draws (1.25e-6: tolerance 2.5e-6) made a correct export fail; of its first 16, 4.8e-6
  (tolerance 9.7e-6). So ``DRIFT_TRIALS`` is 16 (each draw is one forward pass on the example inputs:
  ResNet-50 at 8x3x224x224, 14 s for the 16 against 15 s for ``torch.onnx.export``;
  ``benchmarks/zoo_export_drift.py`` prints the drift over 1, 4, 16, 32).

Both terms scale with the outputs, so the check means as much for logits of 1e-11 as for logits of
10: there is no absolute floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils import _pytree as pytree

from qgraph.ops import is_fusable_activation, is_passthrough
from qgraph.quantizer import FakeQuantize

GRID_STEPS = 3
RANGE_FRACTION = 1e-4
DRIFT_FACTOR = 2.0
DRIFT_EPS = 1e-6
DRIFT_TRIALS = 16


@dataclass(frozen=True)
class Tolerance:
    value: float  # max(grid, DRIFT_FACTOR * drift)
    grid: float
    drift: float


def _tensors(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.numel()]


def output_quantizers(gm: torch.fx.GraphModule) -> list[FakeQuantize]:
    """The activation quantizers whose grid the graph outputs are on: reached from the outputs back
    through ops that only move or select values (reshape, flatten, max pooling, ReLU). An output
    computed by a float op (a classifier head whose result stays float, a softmax) is on no grid."""
    found, seen = [], set()
    frontier = [n for n in gm.graph.nodes if n.op == "output"]
    while frontier:
        node = frontier.pop()
        for inp in node.all_input_nodes:
            if inp in seen:
                continue
            seen.add(inp)
            mod = gm.get_submodule(inp.target) if inp.op == "call_module" else None
            if isinstance(mod, FakeQuantize):
                if mod.role == "activation" and mod.initialized:
                    found.append(mod)
            elif is_passthrough(gm, inp) or is_fusable_activation(gm, inp):
                frontier.append(inp)
    return found


def grid_tolerance(gm: torch.fx.GraphModule, expected) -> float:
    """``GRID_STEPS`` steps of the output grids plus ``RANGE_FRACTION`` of the largest output magnitude."""
    output_range = max((float(t.detach().abs().max()) for t in _tensors(expected)), default=0.0)
    step = max((q.scale_range()[1] for q in output_quantizers(gm)), default=0.0)
    return GRID_STEPS * step + RANGE_FRACTION * output_range


class _NoisePool:
    """N(0, 1) noise for ``rounding_drift``, drawn once and handed out as windows at seeded random
    offsets: a fresh ``torch.randn`` per quantizer call and draw cost as much as the forward passes
    themselves (ResNet-50 at 8x3x224x224: 7.9 s of randn in a 24 s drift estimate). Within a window
    the values are independent draws; two draws see different windows."""

    def __init__(self, seed: int):
        self._g = torch.Generator().manual_seed(seed)
        self._pool = torch.empty(0)
        self._cast: dict[tuple, torch.Tensor] = {}

    def take(self, like: torch.Tensor) -> torch.Tensor:
        n = like.numel()
        if self._pool.numel() < 2 * n:
            self._pool = torch.randn(max(2 * n, 1 << 16), generator=self._g)
            self._cast.clear()
        key = (like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = self._pool.to(device=like.device, dtype=like.dtype)
        offset = int(torch.randint(0, self._pool.numel() - n + 1, (1,), generator=self._g))
        return self._cast[key][offset:offset + n].view(like.shape)


def rounding_drift(model: torch.nn.Module, args: tuple, expected=None, eps: float = DRIFT_EPS, trials: int = DRIFT_TRIALS,
                   seed: int = 0) -> float:
    """The largest output change over ``trials`` runs of ``model(*args)`` in which the input ``a`` of every
    activation quantizer moves by ``eps * N(0, 1)`` times :func:`_code_magnitude` (``|a| + |s·z|``, or
    ``|a|``; independent draws, seeded).
    0 when the model has no activation quantizers (weight-only: its codes are fixed)."""
    acts = [m for m in model.modules() if isinstance(m, FakeQuantize) and m.role == "activation"]
    if not acts:
        return 0.0
    noise = _NoisePool(seed)

    def jitter(m, inputs):
        a = inputs[0]
        if not (isinstance(a, torch.Tensor) and a.is_floating_point()):
            return None
        return (torch.addcmul(a, _code_magnitude(m, a), noise.take(a), value=eps),) + tuple(inputs[1:])

    worst = 0.0
    with torch.no_grad():
        ref = _tensors(model(*args) if expected is None else expected)
        for _ in range(trials):
            hooks = [m.register_forward_pre_hook(jitter) for m in acts]
            try:
                got = _tensors(model(*args))
            finally:
                for h in hooks:
                    h.remove()
            worst = max([worst] + [float((a.float() - b.float()).abs().max()) for a, b in zip(ref, got)])
    return worst


def _code_magnitude(m: FakeQuantize, a: torch.Tensor) -> torch.Tensor:
    """What the float error of a runtime's integer kernel scales with, in ``a``'s units: the code
    ``|a / s + z|`` times ``s``, bounded by ``|a| + |s·z|`` (ONNX Runtime's ``QLinearAdd`` and
    requantization compute around the zero point). A value near an asymmetric grid's zero point has a
    small ``|a|`` but a code of about ``z``: FasterNet's residual add had a code 4e-6 from a tie,
    which ONNX Runtime rounded the other way, while a jitter of ``|a|·eps`` left the drift at 0 and
    the check rejected a correct file. Per-tensor grids only; others keep ``|a|``."""
    if not m.initialized or m.zero_point.numel() != 1 or not bool(m.zero_point.any()):
        return a
    s = m.effective_scale()
    return a.abs() + (s * m.zero_point).abs().reshape(()).to(a.dtype) if s.numel() == 1 else a


def export_tolerance(qm, args: tuple, expected) -> Tolerance:
    """The default tolerance of ``QModel.export``'s ONNX check for ``qm`` on ``args`` (module docstring).
    ``expected`` is ``qm(*args)``."""
    grid = grid_tolerance(qm.qgraph, expected)
    with torch.no_grad(), qm.frozen():
        drift = rounding_drift(qm, args, expected)
    return Tolerance(max(grid, DRIFT_FACTOR * drift), grid, drift)
