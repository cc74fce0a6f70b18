"""Calibration observers: they watch tensors and pick a scale and zero point for a QSpec.

* ``minmax``: the observed range;
* ``percentile``: clip the range to the given percentile of |values| seen (per-tensor only;
  other granularities fall back to min-max);
* ``mse``: shrink the min-max range by the factor that minimises the squared fake-quantization
  error of the values seen (per slice for per-channel / per-group grids).
"""

from __future__ import annotations

import torch

from qgraph.errors import CalibrationError
from qgraph.granularity import PerChannel, PerGroup, PerTensor
from qgraph.primitives import choose_qparams, fake_quantize_affine
from qgraph.qspec import QSpec

_MAX_SAMPLES = 1 << 20


def reduce_minmax(x: torch.Tensor, spec: QSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` laid out by the spec's granularity."""
    g = spec.granularity
    if isinstance(g, PerTensor):
        return x.amin(), x.amax()
    if isinstance(g, PerChannel):
        axis = g.axis % x.dim()
        dims = [d for d in range(x.dim()) if d != axis]
        if not dims:
            return x, x
        return x.amin(dim=dims), x.amax(dim=dims)
    if isinstance(g, PerGroup):
        if x.shape[-1] % g.size:
            raise CalibrationError(f"last dimension {x.shape[-1]} is not a multiple of group size {g.size}")
        v = x.reshape(*x.shape[:-1], -1, g.size)
        return v.amin(-1), v.amax(-1)
    raise TypeError(g)


class Observer:
    """Accumulates statistics of the tensors passed to ``update``; ``compute`` returns qparams."""

    def __init__(self, spec: QSpec) -> None:
        self.spec = spec
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        self.last: torch.Tensor | None = None
        self.count = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        mn, mx = reduce_minmax(x, self.spec)
        if self.min_val is None or self.min_val.shape != mn.shape:
            self.min_val, self.max_val = mn, mx
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, mn), torch.maximum(self.max_val, mx)
        self.count += 1
        if self.spec.observer == "minmax":
            return
        if isinstance(self.spec.granularity, PerTensor):
            flat = x.flatten()
            budget = max(1, _MAX_SAMPLES // 16)
            if flat.numel() > budget:
                idx = torch.randint(0, flat.numel(), (budget,), generator=torch.Generator().manual_seed(self.count))
                flat = flat[idx.to(flat.device)]
            self.samples.append(flat)
            if sum(s.numel() for s in self.samples) > _MAX_SAMPLES:
                self.samples = [torch.cat(self.samples)[-_MAX_SAMPLES:]]
        else:
            self.last = x

    @torch.no_grad()
    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val is None:
            raise CalibrationError("observer saw no data")
        spec = self.spec
        mn, mx = self.min_val, self.max_val
        if spec.observer == "percentile" and self.samples:
            values = torch.cat(self.samples)
            q = spec.percentile / 100.0
            hi = torch.quantile(values, q)
            lo = torch.quantile(values, 1.0 - q)
            mn, mx = torch.maximum(mn, lo), torch.minimum(mx, hi)
        elif spec.observer == "mse":
            values = torch.cat(self.samples) if self.samples else self.last
            if values is not None:
                mn, mx = self._mse_range(values, mn, mx)
        return choose_qparams(mn, mx, spec.qmin, spec.qmax, spec.symmetric)

    def _mse_range(self, values, mn, mx):
        spec = self.spec
        best_err, best = None, (mn, mx)
        for alpha in torch.linspace(1.0, 0.3, 15).tolist():
            s, z = choose_qparams(mn * alpha, mx * alpha, spec.qmin, spec.qmax, spec.symmetric)
            err = (fake_quantize_affine(values, s, z, spec.qmin, spec.qmax, spec.granularity) - values) ** 2
            if isinstance(spec.granularity, PerTensor):
                err = err.mean()
            else:
                err = reduce_sum_like(err, spec, mn.shape)
            if best_err is None:
                best_err, best = err, (mn * alpha, mx * alpha)
            else:
                better = err < best_err
                best = (torch.where(better, mn * alpha, best[0]), torch.where(better, mx * alpha, best[1]))
                best_err = torch.minimum(err, best_err)
        return best


def reduce_sum_like(err: torch.Tensor, spec: QSpec, shape: torch.Size) -> torch.Tensor:
    g = spec.granularity
    if isinstance(g, PerChannel):
        axis = g.axis % err.dim()
        return err.sum(dim=[d for d in range(err.dim()) if d != axis]).reshape(shape)
    return err.reshape(*err.shape[:-1], -1, g.size).sum(-1).reshape(shape)
