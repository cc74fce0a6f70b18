"""OFQ training tools (ALGORITHMS.md §7) for a QModel quantized with the ``ofq`` recipe (:mod:`qgraph.ofq`).

* :class:`CGA`: confidence-guided annealing on the StatsQ weights, driven by an optimizer's step hooks;
* :class:`OscillationTracker`: counts weight-code reversals after every optimizer step (EMA too).
"""

from __future__ import annotations

import torch
from torch import nn

from qgraph.errors import InputError
from qgraph.ofq import QKRScores, StatsQuantize, low_confidence, statsq_codes
from qgraph.primitives import quantize_affine
from qgraph.quantizer import FakeQuantize


def _graph(model: nn.Module) -> nn.Module:
    return model.qgraph if hasattr(model, "qgraph") else model


def quantized_weights(model: nn.Module) -> dict[str, tuple[nn.Parameter, FakeQuantize]]:
    """``{weight key: (parameter, its weight quantizer)}`` of a QModel (or its graph), graph order."""
    from qgraph.packing import weight_quantizers

    gm = _graph(model)
    out = {}
    for key, qname in weight_quantizers(gm).items():
        owner, _, attr = key.rpartition(".")
        p = getattr(gm.get_submodule(owner) if owner else gm, attr)
        out[key] = (p, gm.get_submodule(qname))
    return out


def statsq_weights(model: nn.Module) -> dict[str, tuple[nn.Parameter, StatsQuantize]]:
    return {k: v for k, v in quantized_weights(model).items() if isinstance(v[1], StatsQuantize)}


def qkr_modules(model: nn.Module) -> dict[str, QKRScores]:
    return {n: m for n, m in _graph(model).named_modules() if isinstance(m, QKRScores)}


class CGA:
    """Confidence-guided annealing on a QModel's StatsQ weights, driven by ``optimizer``'s step hooks.

    ``cga = CGA(qm, boundary_range=0.005).attach(optimizer)``; then train as usual. Before each step
    ``cga.frozen[key]`` is recomputed (True = frozen: farther than ``boundary_range`` grid steps from
    every interior threshold), frozen gradients are zeroed and the weights saved; after the step the
    frozen entries are restored (cancelling weight decay and momentum). ``W_qk`` products pass
    gradient to ``W_q``, ``W_k`` only through their near-threshold elements. ``detach()`` removes the hooks.
    """

    def __init__(self, model: nn.Module, boundary_range: float = 0.005) -> None:
        self.model, self.boundary_range = model, boundary_range
        self.layers = statsq_weights(model)
        self.attention = {n: m for n, m in qkr_modules(model).items() if m.qk_quantizer is not None}
        if not self.layers and not self.attention:
            raise InputError("CGA found no StatsQ weights: quantize the model with the ofq recipe (method='statsq') first")
        self.frozen: dict[str, torch.Tensor] = {}
        self._saved: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def attach(self, optimizer: torch.optim.Optimizer) -> CGA:
        for m in self.attention.values():
            m.qk_quantizer.boundary_range = self.boundary_range
        self._handles = [optimizer.register_step_pre_hook(self._before_step), optimizer.register_step_post_hook(self._after_step)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for m in self.attention.values():
            m.qk_quantizer.boundary_range = None

    @torch.no_grad()
    def _before_step(self, *_):
        for key, (w, q) in self.layers.items():
            frozen = ~low_confidence(w, q.statsq_bits, self.boundary_range)
            if w.grad is not None:
                w.grad[frozen] = 0
            self.frozen[key] = frozen
            self._saved[key] = w.detach().clone()

    @torch.no_grad()
    def _after_step(self, *_):
        for key, (w, _) in self.layers.items():
            frozen = self.frozen[key]
            w[frozen] = self._saved[key][frozen]

    def frozen_ratio(self) -> float:
        total = sum(f.numel() for f in self.frozen.values())
        return sum(int(f.sum()) for f in self.frozen.values()) / total if total else 0.0


def _weight_codes(w: torch.Tensor, q: FakeQuantize) -> torch.Tensor:
    if isinstance(q, StatsQuantize):
        return statsq_codes(w, q.statsq_bits).to(torch.int64)  # (s_r of the weight as it is now)
    s = q.effective_scale().detach()
    return quantize_affine(w.detach(), s, q.zero_point, q.spec.qmin, q.spec.qmax, q.spec.granularity).to(torch.int64)


class OscillationTracker:
    """Counts weight oscillations during QAT of a QModel: call :meth:`step` after every optimizer step.

    For every quantized weight (StatsQ or LSQ) and every ``W_qk`` product it keeps the last integer
    code and the direction of its last change. A change against the previous direction is one
    oscillation: ``counts[name]`` adds them up per weight, ``ema[name]`` is their exponential moving
    average (``momentum``)."""

    def __init__(self, model: nn.Module, momentum: float = 0.01) -> None:
        self.momentum = momentum
        self.weights = quantized_weights(model)
        self.products = qkr_modules(model)
        codes = self._codes()
        self.codes = codes
        self.direction = {n: torch.zeros_like(c) for n, c in codes.items()}
        self.counts = {n: torch.zeros_like(c) for n, c in codes.items()}
        self.ema = {n: torch.zeros_like(c, dtype=torch.float32) for n, c in codes.items()}
        self.steps = 0

    @torch.no_grad()
    def _codes(self) -> dict[str, torch.Tensor]:
        out = {k: _weight_codes(w, q) for k, (w, q) in self.weights.items()}
        out.update({f"{n}.W_qk": m.weight_codes().to(torch.int64) for n, m in self.products.items() if m.qk_quantizer is not None})
        return out

    @torch.no_grad()
    def step(self) -> None:
        for n, codes in self._codes().items():
            delta = torch.sign(codes - self.codes[n])
            flip = (delta != 0) & (delta == -self.direction[n])
            self.counts[n] += flip.to(self.counts[n].dtype)
            self.ema[n].mul_(1 - self.momentum).add_(flip.float(), alpha=self.momentum)
            self.direction[n] = torch.where(delta != 0, delta, self.direction[n])
            self.codes[n] = codes
        self.steps += 1

    def total(self) -> int:
        return int(sum(int(c.sum()) for c in self.counts.values()))

    def ratio(self, threshold: float = 0.005) -> float:
        """Fraction of weights whose oscillation EMA exceeds ``threshold``."""
        numel = sum(e.numel() for e in self.ema.values())
        return sum(int((e > threshold).sum()) for e in self.ema.values()) / numel if numel else 0.0

    def rate(self) -> float:
        """Mean oscillation EMA over all tracked weights (reversals per weight per step)."""
        numel = sum(e.numel() for e in self.ema.values())
        return sum(float(e.sum()) for e in self.ema.values()) / numel if numel else 0.0


__all__ = ["CGA", "OscillationTracker", "quantized_weights", "statsq_weights", "qkr_modules"]
