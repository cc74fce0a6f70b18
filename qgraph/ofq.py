"""Oscillation-free quantization-aware training (OFQ, ALGORITHMS.md §7) as a qgraph recipe.

``qm = qgraph.quantize(vit, x, "ofq(bits=2)", calib_data=batches, qat=True)`` runs the normal
pipeline (capture → insert quantizers → the ``ofq`` method pass, :mod:`qgraph.passes.ofq`) and gives
a :class:`qgraph.QModel` to train, export (ONNX, verified in ONNX Runtime) and pack (qpack). The parts:

* :class:`StatsQuantize`: the statistics-based weight quantizer. Per output row
  ``s_r = 2·mean_j |W_rj|`` (recomputed from the weight while training, no gradient), ``n = 2**(b-1)``,
  levels ``s_r(k + 0.5)/n`` for ``k ∈ [-n, n-1]`` (no zero level), thresholds at ``s_r·k/n``; identity
  straight-through gradient everywhere. The levels are stored exactly as **odd integer codes
  ``c = 2k+1`` on a (b+1)-bit signed grid with scale ``s_r/2**b``** (zero point 0): ``Ŵ = c·s_r/2**b`` is
  one multiplication, which ONNX ``DequantizeLinear`` and the qpack reader compute bit for bit (a
  half-step zero point cannot be written: ONNX and qpack zero points are integers).
* :class:`TokenLSQuantize`: LSQ activations with learnable biases, ``LSQ(x + β1) + β2`` (β per
  channel, last axis), one learnable step **per token** (axis -2 of a ``[..., N, C]`` input; per tensor
  for 2-D inputs, and for the channel-first maps of convolutions, ``[B, C, *spatial]``, whose β is on
  axis 1: a conv map has no token axis, and a step per image row would tie the model to one image
  height), initialised at calibration to ``2·mean|x| / sqrt(Qp)`` over batch and channels;
  LSQ gradient scale ``1/sqrt(Qp·n_s)`` (n_s elements per step, batch included). Unsigned and without
  biases after a softmax.
* :class:`QKRScores`: query–key reparameterization, the leaf that replaces ``q @ kᵀ``: per head
  ``W_qk = W_qᵀW_k`` (C×C, StatsQ per row) and ``scores = Q_a(x̂·Q(W_qk))·x̂ᵀ`` plus, with
  ``exact_bias``, every bias term (``x_m·W_kᵀb_q``, ``x_n·W_qᵀb_k``, ``b_q·b_k``), so with quantization
  off it equals ``q @ kᵀ`` exactly. Cost: H·N·C² multiply-accumulates instead of 2·N·C².
* :class:`CGA` (in :mod:`qgraph.ofq_train`, also reachable here): confidence-guided annealing on a
  QModel's StatsQ weights, driven by an optimizer's step hooks: weights farther than ``boundary_range`` (grid steps) from every interior threshold are
  frozen (gradient zeroed, value restored after the step); ``W_qk`` passes gradient only through
  its near-threshold elements.
* :class:`OscillationTracker` (:mod:`qgraph.ofq_train`): integer codes of every quantized weight (StatsQ, LSQ, ``W_qk``) after
  each step; a code change against the previous direction is one oscillation; EMA (momentum 0.01).
* :func:`prepare_ofq`: ``qgraph.quantize(..., "ofq(...)", qat=True)`` in one call.
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from qgraph.errors import CalibrationError, InputError, RecipeError
from qgraph.granularity import PerChannel, PerTensor
from qgraph.primitives import MIN_SCALE, dequantize_affine, fake_quantize_affine, quantize_affine
from qgraph.qspec import QSpec
from qgraph.quantizer import FakeQuantize, scale_gradients_flow
from qgraph.recipes import Override, Recipe, register_recipe

WEIGHT_METHODS = ("statsq", "lsq")


# --------------------------------------------------------------------------- StatsQ math


def statsq_scale(w: torch.Tensor) -> torch.Tensor:
    """``s_r = 2·mean_j |W_rj|`` per output row (detached)."""
    return (2 * w.detach().reshape(w.shape[0], -1).abs().mean(dim=1)).clamp_min(MIN_SCALE)


def _rows(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (w.dim() - 1))


def statsq_codes(w: torch.Tensor, bits: int, half: torch.Tensor | None = None) -> torch.Tensor:
    """Odd integer codes ``c = 2k + 1`` (int8) of the StatsQ levels, ``k = clamp(⌊W/step - 0.5⌉, -n, n-1)``,
    ``step = s_r/n``; ``half = s_r/2**bits`` (the code grid's step) defaults to the weight's own."""
    n = 2 ** (bits - 1)
    half = statsq_scale(w) / 2**bits if half is None else half
    step = 2 * half
    k = quantize_affine(w.detach() - _rows(half, w), step, torch.zeros_like(step), -n, n - 1, PerChannel(0))
    return (2 * k.to(torch.int16) + 1).to(torch.int8)


def low_confidence(w: torch.Tensor, bits: int, boundary_range: float, half: torch.Tensor | None = None) -> torch.Tensor:
    """Elements within ``boundary_range`` (grid steps) of an interior threshold ``s_r·k/n``, ``|k| < n``."""
    n = 2 ** (bits - 1)
    half = statsq_scale(w) / 2**bits if half is None else half
    t = w.detach() / _rows(2 * half, w)
    k = torch.round(t)
    return ((t - k).abs() <= boundary_range) & (k.abs() <= n - 1)


def statsq(w: torch.Tensor, bits: int, boundary_range: float | None = None) -> torch.Tensor:
    """StatsQ fake-quantized ``w`` (levels ``s_r(k+0.5)/n``), identity gradient to ``w``; with
    ``boundary_range`` (CGA on products) only elements near a threshold pass gradient."""
    half = statsq_scale(w) / 2**bits
    codes = statsq_codes(w, bits, half)
    q = dequantize_affine(codes, half, torch.zeros_like(half), -(2**bits), 2**bits - 1, PerChannel(0))
    src = w
    if boundary_range is not None:
        src = torch.where(low_confidence(w, bits, boundary_range, half), w, w.detach())
    return q + (src - src.detach())  # exactly q forward (x - x = 0), gradient 1


# --------------------------------------------------------------------------- quantizers


class StatsQuantize(FakeQuantize):
    """StatsQ weight quantizer (``bits``-bit levels stored as odd codes on a ``bits + 1``-bit grid).

    While training it re-reads ``s_r`` from the weight on every call; in eval it uses the stored
    scale (refreshed once after training, like qgraph's fixed-scale weight quantizers), which is what
    export and ``qgraph.load`` reproduce. ``boundary_range`` (set by :class:`CGA` on ``W_qk``): pass
    gradient only to elements near a threshold."""

    def __init__(self, bits: int, where: str = "") -> None:
        if not 2 <= bits <= 7:
            raise RecipeError(f"StatsQ takes 2..7 bits (its codes need one bit more), got {bits}")
        super().__init__(QSpec(bits=bits + 1, symmetric=True, signed=True, granularity=PerChannel(0)), "weight", where)
        self.statsq_bits = bits
        self.observer = None
        self.boundary_range: float | None = None

    def set_mode(self, mode: str) -> None:
        super().set_mode(mode)
        self.observer = None

    @torch.no_grad()
    def _read_scale(self, x: torch.Tensor) -> None:
        self.set_qparams(statsq_scale(x) / 2**self.statsq_bits, torch.zeros(x.shape[0]))

    def init_from(self, x: torch.Tensor) -> None:
        self._read_scale(x)
        self.mode, self.observer = "quantize", None

    def finish_calibration(self) -> None:
        if not self.initialized:
            raise CalibrationError(f"weight quantizer at {self.where or '?'} saw no weight during calibration")
        self.mode, self.observer = "quantize", None

    def weight_codes(self, w: torch.Tensor) -> torch.Tensor:
        """The stored integer codes of ``w`` (odd, on the ``bits + 1``-bit grid): what export and qpack write."""
        return statsq_codes(w, self.statsq_bits, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe" or self.training or self._refresh or not self.initialized:
            self._read_scale(x)
            self._refresh = False
        if self.mode == "observe":
            return x
        q = dequantize_affine(self.weight_codes(x), self.scale, self.zero_point, self.spec.qmin, self.spec.qmax, PerChannel(0))
        src = x
        if self.boundary_range is not None and x.requires_grad:
            src = torch.where(low_confidence(x, self.statsq_bits, self.boundary_range, self.scale), x, x.detach())
        return q + (src - src.detach())

    def extra_repr(self) -> str:
        return f"StatsQ {self.statsq_bits}-bit (odd codes on int{self.statsq_bits + 1}), mode={self.mode}"

    def report_fields(self) -> dict:
        return {"statsq": f"{self.statsq_bits}-bit levels s_r(k+0.5)/2^{self.statsq_bits - 1}, odd codes on int{self.statsq_bits + 1}"}


class TokenLSQuantize(FakeQuantize):
    """OFQ activation quantizer: ``LSQ(x + β1) + β2``, one step per token (axis -2), β per channel.

    ``per_token=False`` or 2-D inputs: one step per tensor. ``channel_axis``: -1 for token-major
    ``[..., N, C]`` inputs; 1 for the channel-first maps of convolutions (one step per tensor, β on
    axis 1). ``biases``: β1, β2 (learnable, zero at calibration; only with learnable specs).
    Calibration sets ``s = 2·mean|x| / sqrt(Qp)`` per token."""

    def __init__(self, spec: QSpec, where: str = "", per_token: bool = True, biases: bool = True,
                 channel_axis: int = -1) -> None:
        super().__init__(spec, "activation", where)
        if channel_axis not in (-1, 1):
            raise ValueError(f"channel_axis must be -1 (tokens, channels last) or 1 (channel-first maps), got {channel_axis}")
        self.observer = None
        self.per_token, self.biases = bool(per_token), bool(biases) and spec.learnable
        self.channel_axis = channel_axis
        self.beta1 = nn.Parameter(torch.zeros(0)) if self.biases else None
        self.beta2 = nn.Parameter(torch.zeros(0)) if self.biases else None
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._channels = 0

    def set_mode(self, mode: str) -> None:
        super().set_mode(mode)
        self.observer = None
        if mode == "observe":
            self._sum, self._count = None, 0

    def _token_axis(self, x: torch.Tensor) -> bool:
        return self.per_token and self.channel_axis == -1 and x.dim() >= 3

    def _beta(self, beta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """β shaped to broadcast over ``x`` along its channel axis."""
        return beta.reshape(-1, *[1] * (x.dim() - 2)) if self.channel_axis == 1 and x.dim() > 2 else beta

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        a = x.detach().float().abs()
        if self._token_axis(x):
            s = a.transpose(-2, 0).reshape(x.shape[-2], -1).sum(1)
            if self._sum is not None and self._sum.shape != s.shape:
                raise InputError(f"per-token activation quantizer at {self.where or '?'} saw {x.shape[-2]} tokens after "
                                 f"{self._sum.numel()}: per-token steps need a fixed sequence length (per_token=False lifts it)")
        else:
            s = a.sum().reshape(())
        self._sum = s if self._sum is None else self._sum + s
        self._count += x.numel() // max(1, s.numel())
        self._channels = x.shape[self.channel_axis if x.dim() > 1 else -1]

    @torch.no_grad()
    def finish_calibration(self) -> None:
        if self._sum is None:
            if self.initialized:
                self.mode = "quantize"
                return
            raise CalibrationError(f"activation quantizer at {self.where or '?'} saw no data during calibration")
        scale = (2 * self._sum / self._count / math.sqrt(max(1, self.spec.qmax))).clamp_min(1e-8)
        self.set_qparams(scale, torch.zeros_like(scale))
        if self.biases:
            self.beta1.data = torch.zeros(self._channels)
            self.beta2.data = torch.zeros(self._channels)
        self._sum, self.mode = None, "quantize"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("beta1", "beta2"):
            p = getattr(self, name)
            if p is not None and prefix + name in state_dict and p.shape != state_dict[prefix + name].shape:
                p.data = torch.empty_like(state_dict[prefix + name], dtype=torch.float32)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        per_token = self.scale.dim() == 1
        if per_token and (x.dim() < 2 or x.shape[-2] != self.scale.numel()):
            raise InputError(f"per-token activation quantizer at {self.where or '?'} has {self.scale.numel()} token steps, "
                             f"got input of shape {tuple(x.shape)}")
        if self.beta1 is not None and self.beta1.numel():
            x = x + self._beta(self.beta1, x)
        learnable = self.spec.learnable and scale_gradients_flow()
        factor = 1.0 / math.sqrt(max(1, self.spec.qmax) * max(1, x.numel() // self.scale.numel())) if learnable else 1.0
        g = PerChannel(-2) if per_token else PerTensor()
        out = fake_quantize_affine(x, self.effective_scale(), self.zero_point, self.spec.qmin, self.spec.qmax, g, factor)
        return out + self._beta(self.beta2, x) if self.beta2 is not None and self.beta2.numel() else out

    def extra_repr(self) -> str:
        steps = f"{self.scale.numel()} token steps" if self.scale.dim() == 1 else "one step"
        layout = ", channel-first map" if self.channel_axis == 1 else ""
        return f"LSQ {self.spec.describe()}, {steps}{layout}, biases={self.biases}, mode={self.mode}"


class QKRScores(nn.Module):
    """``q @ kᵀ`` of one attention block, reparameterized: ``Q_a(x̂·Q(W_qk))·x̂ᵀ`` per head (+ bias terms).

    ``q_weight``, ``k_weight``: ``[H·d, C]`` (head-major rows of the original projections), ``q_bias``,
    ``k_bias``: ``[H·d]`` or None. ``qk_quantizer``: a :class:`StatsQuantize` on the stacked
    ``[H·C, C]`` product (None: float); ``xqk_quantizer``: the activation quantizer of ``x̂·Q(W_qk)``.
    Input ``x̂ [B, N, C]``; output ``[B, H, N, N]``."""

    def __init__(self, q_weight, k_weight, q_bias, k_bias, heads: int, bits: int | None, where: str = "",
                 exact_bias: bool = True) -> None:
        super().__init__()
        hd, c = q_weight.shape
        self.heads, self.head_dim, self.dim, self.where = heads, hd // heads, c, where
        self.q_weight = nn.Parameter(q_weight.detach().clone())
        self.k_weight = nn.Parameter(k_weight.detach().clone())
        keep = exact_bias and q_bias is not None
        self.q_bias = nn.Parameter(q_bias.detach().clone()) if keep else None
        self.k_bias = nn.Parameter(k_bias.detach().clone()) if exact_bias and k_bias is not None else None
        self.qk_quantizer = StatsQuantize(bits, where=f"{where}.W_qk") if bits else None
        self.xqk_quantizer: FakeQuantize | None = None
        self.register_buffer("qk_codes", torch.zeros(0, dtype=torch.int8), persistent=False)  # set by lower_for_export

    def qk_product(self) -> torch.Tensor:
        """``W_qk`` stacked per head: ``[H·C, C]`` (row ``h·C + i`` is row ``i`` of head ``h``'s ``W_qᵀW_k``)."""
        h, d, c = self.heads, self.head_dim, self.dim
        return (self.q_weight.view(h, d, c).transpose(1, 2) @ self.k_weight.view(h, d, c)).reshape(h * c, c)

    def quantized_product(self) -> torch.Tensor:
        q = self.qk_quantizer
        if q is not None and self.qk_codes.numel():  # lowered: the integer codes, as the ONNX file stores them
            return dequantize_affine(self.qk_codes, q.scale, q.zero_point, q.spec.qmin, q.spec.qmax, PerChannel(0))
        w = self.qk_product()
        return q(w) if q is not None else w

    @torch.no_grad()
    def lower_for_export(self) -> str:
        """Store ``W_qk``'s codes (called on the export copy by ``LowerPass``)."""
        if self.qk_quantizer is None:
            return ""
        self.qk_quantizer(self.qk_product())  # (refreshes a stale scale)
        self.qk_codes = self.qk_quantizer.weight_codes(self.qk_product())
        return f"W_qk {tuple(self.qk_codes.shape)} as StatsQ codes"

    def weight_codes(self) -> torch.Tensor:
        q = self.qk_quantizer
        w = self.qk_product()
        return q.weight_codes(w) if q is not None and q.initialized else torch.zeros(0, dtype=torch.int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, d, c = self.heads, self.head_dim, self.dim
        xh = x.unsqueeze(1)  # [B, 1, N, C]
        a = xh @ self.quantized_product().view(h, c, c)  # [B, H, N, C]
        if self.xqk_quantizer is not None:
            a = self.xqk_quantizer(a)
        scores = a @ xh.transpose(-1, -2)  # [B, H, N, N]
        if self.q_bias is not None:  # key-dependent term x_m · W_k^hᵀ b_q^h
            u = (self.q_bias.view(h, 1, d) @ self.k_weight.view(h, d, c)).reshape(h, c)
            scores = scores + (x @ u.t()).transpose(1, 2).unsqueeze(2)
        if self.k_bias is not None:  # query-dependent term x_n · W_q^hᵀ b_k^h (and b_q·b_k): constant under a softmax over keys
            r = (self.k_bias.view(h, 1, d) @ self.q_weight.view(h, d, c)).reshape(h, c)
            scores = scores + (x @ r.t()).transpose(1, 2).unsqueeze(3)
            if self.q_bias is not None:
                scores = scores + (self.q_bias.view(h, d) * self.k_bias.view(h, d)).sum(1).view(1, h, 1, 1)
        return scores

    def extra_repr(self) -> str:
        return f"{self.heads} heads, dim {self.dim}, W_qk [{self.heads * self.dim}, {self.dim}]"


# --------------------------------------------------------------------------- the recipe


@register_recipe("ofq")
def ofq_recipe(bits: int = 2, a_bits: int | None = None, qkr: bool = True, method: str = "statsq",
               keep: tuple | list | str = ("patch_embed*", "head*"), keep_bits: int | None = 8, per_token: bool = True,
               exact_bias: bool = True) -> Recipe:
    """OFQ for low-bit ViTs (use with ``qat=True``): ``bits``-bit StatsQ weights (``method="lsq"``: LSQ, the
    baseline), ``a_bits``-bit (default ``bits``) per-token LSQ activations with learnable biases, query-key
    reparameterization of recognised attention (``qkr``); linears matching ``keep`` at ``keep_bits``
    (None: float). ``"ofq(bits=3)"``."""
    if not isinstance(bits, int) or not 2 <= bits <= 7:
        raise RecipeError(f"ofq(bits=...) takes 2..7 bits, got {bits!r}")
    a_bits = bits if a_bits is None else a_bits
    if not isinstance(a_bits, int) or not 2 <= a_bits <= 8:
        raise RecipeError(f"ofq(a_bits=...) takes 2..8 bits, got {a_bits!r}")
    if method not in WEIGHT_METHODS:
        raise RecipeError(f"ofq(method=...) is one of {WEIGHT_METHODS}, got {method!r}")
    if method == "lsq" and qkr:
        raise RecipeError("ofq(method='lsq') is the LSQ baseline without query-key reparameterization: add qkr=False")
    keep = (keep,) if isinstance(keep, str) else tuple(keep)
    weight = QSpec(bits=bits, symmetric=True, signed=True, granularity=PerChannel(0))  # (the ofq pass swaps in StatsQ)
    act = QSpec(bits=a_bits, symmetric=True, signed=True, granularity=PerTensor())
    if keep_bits is None:
        overrides = tuple(Override(name=g, skip=True) for g in keep)
    else:
        kw = QSpec(bits=keep_bits, symmetric=True, signed=True, granularity=PerChannel(0))
        ka = QSpec(bits=keep_bits, symmetric=True, signed=True, granularity=PerTensor())
        overrides = tuple(Override(name=g, weight=kw, activation=ka) for g in keep)
    name = f"ofq(bits={bits}, a_bits={a_bits}" + (", method=lsq" if method == "lsq" else "") + ("" if qkr else ", qkr=False") + ")"
    options = {"bits": bits, "method": method, "qkr": bool(qkr), "keep": list(keep), "per_token": bool(per_token),
               "exact_bias": bool(exact_bias)}
    return Recipe(name, weight, act, kinds=("conv", "linear", "matmul"), overrides=overrides, description=ofq_recipe.__doc__,
                  methods=(("ofq", options),))


def matches_any(path: str, globs) -> bool:
    return any(fnmatch.fnmatchcase(path, g) for g in globs)


def prepare_ofq(model: nn.Module, example_inputs, calib_data=None, **options):
    """``qgraph.quantize(model, example_inputs, ofq_recipe(**options), calib_data, qat=True)``: a QModel to train."""
    from qgraph.api import quantize

    return quantize(model, example_inputs, ofq_recipe(**options), calib_data, qat=True)


_TRAINING = ("CGA", "OscillationTracker", "quantized_weights", "statsq_weights", "qkr_modules")


def __getattr__(name: str):
    """``qgraph.ofq.CGA`` and the other training tools live in :mod:`qgraph.ofq_train`."""
    if name in _TRAINING:
        from qgraph import ofq_train

        return getattr(ofq_train, name)
    raise AttributeError(f"module 'qgraph.ofq' has no attribute {name!r}")


__all__ = ["statsq", "statsq_scale", "statsq_codes", "low_confidence", "StatsQuantize", "TokenLSQuantize", "QKRScores",
           "ofq_recipe", "prepare_ofq", *_TRAINING]
