"""Oscillation-free quantization-aware training (OFQ, ALGORITHMS.md §7) for low-bit vision transformers.

The parts, each usable alone:

* :func:`statsq` / :func:`statsq_scale`: the statistics-based weight quantizer. Per output row
  ``s_r = 2·mean_j |W_rj|`` (no gradient), ``n = 2**(bits-1)``, levels ``s_r(k + 0.5)/n`` for
  ``k ∈ [-n, n-1]`` (no zero level), thresholds at ``s_r·k/n``; identity straight-through gradient
  everywhere. It runs on :func:`qgraph.primitives.fake_quantize_affine` (a grid of step ``s_r/n``
  shifted by half a step).
* :class:`QATLinear`: an ``nn.Linear`` with a StatsQ (or LSQ, for comparison) weight quantizer
  and an optional :class:`BiasLSQ` input quantizer (LSQ with learnable biases before and after).
* :class:`QKRAttention`: query–key reparameterization. Per head ``W_qk = W_qᵀW_k`` (C×C) is
  quantized instead of ``W_q`` and ``W_k``; scores ``Q(x̂ Q(W_qk)) x̂ᵀ / sqrt(d)``. With
  ``exact_bias`` the key-dependent term of the query bias ``x_j·W_kᵀb_q`` is kept, so with
  quantization off it equals the original attention exactly (the other bias terms do not change a
  softmax over keys). Cost: H·N·C² multiply-accumulates for the scores instead of 2·N·C².
* :class:`CGA`: confidence-guided annealing. Hooked on an optimizer, before every step it freezes
  every StatsQ weight that is not within ``boundary_range`` (in units of the grid step) of an
  interior rounding threshold: its gradient is zeroed, and after the step its value is restored
  (which also cancels weight decay and momentum). ``W_qk`` products pass gradient only through
  their near-threshold elements.
* :class:`OscillationTracker`: integer codes of every quantized weight after each step; counts
  direction reversals (an oscillation) per weight, and their EMA (momentum 0.01).
* :func:`prepare_ofq` (:class:`qgraph.passes.ofq.OFQPass`): swaps a model's linears and attention blocks.
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn

from qgraph.errors import InputError
from qgraph.granularity import PerChannel, PerTensor
from qgraph.primitives import MIN_SCALE, fake_quantize_affine, quantize_affine

WEIGHT_METHODS = ("statsq", "lsq")


# --------------------------------------------------------------------------- StatsQ math


def statsq_scale(w: torch.Tensor) -> torch.Tensor:
    """``s_r = 2·mean_j |W_rj|`` per output row (detached)."""
    return (2 * w.detach().reshape(w.shape[0], -1).abs().mean(dim=1)).clamp_min(MIN_SCALE)


def _half_grid(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    n = 2 ** (bits - 1)
    step = statsq_scale(w) / n
    return step, (step / 2).reshape((-1,) + (1,) * (w.dim() - 1)), n


def statsq_codes(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer level indices ``k ∈ [-n, n-1]`` of the StatsQ grid (value ``s_r(k + 0.5)/n``)."""
    step, half, n = _half_grid(w, bits)
    return quantize_affine(w.detach() - half, step, torch.zeros_like(step), -n, n - 1, PerChannel(0)).to(torch.int64)


def low_confidence(w: torch.Tensor, bits: int, boundary_range: float) -> torch.Tensor:
    """Elements within ``boundary_range`` (grid steps) of an interior threshold ``s_r·k/n``, ``|k| < n``."""
    n = 2 ** (bits - 1)
    t = w.detach() * n / statsq_scale(w).reshape((-1,) + (1,) * (w.dim() - 1))
    k = torch.round(t)
    return ((t - k).abs() <= boundary_range) & (k.abs() <= n - 1)


def statsq(w: torch.Tensor, bits: int, boundary_range: float | None = None) -> torch.Tensor:
    """StatsQ fake-quantized ``w`` (levels ``s_r(k+0.5)/n``), identity gradient to ``w``.

    With ``boundary_range`` (CGA for products such as ``W_qk``) only elements near a threshold pass
    gradient; the others are detached."""
    step, half, n = _half_grid(w, bits)
    q = fake_quantize_affine(w.detach() - half, step, torch.zeros_like(step), -n, n - 1, PerChannel(0)) + half
    src = w
    if boundary_range is not None:
        src = torch.where(low_confidence(w, bits, boundary_range), w, w.detach())
    return src + (q - src).detach()


# --------------------------------------------------------------------------- modules


class BiasLSQ(nn.Module):
    """LSQ activation quantizer with learnable biases: ``LSQ(x + β1) + β2`` (β per channel, last axis).

    One learnable per-tensor step, initialised on the first training batch to ``2·mean|x| / sqrt(Qp)``
    (the paper uses one step per token position; per-tensor keeps the module shape-agnostic)."""

    def __init__(self, channels: int, bits: int, signed: bool = True, biases: bool = True) -> None:
        super().__init__()
        self.bits, self.signed = bits, signed
        self.qmin, self.qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.beta1 = nn.Parameter(torch.zeros(channels)) if biases else None
        self.beta2 = nn.Parameter(torch.zeros(channels)) if biases else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.beta1 is not None:
            x = x + self.beta1
        if not bool(self.initialized):
            with torch.no_grad():
                self.scale.copy_((2 * x.abs().mean() / math.sqrt(self.qmax)).clamp_min(1e-8))
                self.initialized.fill_(True)
        g = 1.0 / math.sqrt(max(1, x.numel()) * self.qmax)
        s = self.scale.abs().clamp_min(1e-8)
        out = fake_quantize_affine(x, s, torch.zeros(()), self.qmin, self.qmax, PerTensor(), g)
        return out + self.beta2 if self.beta2 is not None else out


class QATLinear(nn.Linear):
    """``nn.Linear`` with a StatsQ or LSQ weight quantizer (``bits``) and an optional input quantizer."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 2, method: str = "statsq",
                 a_bits: int | None = None) -> None:
        super().__init__(in_features, out_features, bias)
        if method not in WEIGHT_METHODS:
            raise InputError(f"weight method must be one of {WEIGHT_METHODS}, got {method!r}")
        self.bits, self.method = bits, method
        self.input_quantizer = BiasLSQ(in_features, a_bits) if a_bits else None
        self.weight_scale = nn.Parameter(torch.ones(out_features)) if method == "lsq" else None
        self.lsq_ready = False

    @classmethod
    def from_linear(cls, lin: nn.Linear, bits: int, method: str = "statsq", a_bits: int | None = None) -> QATLinear:
        new = cls(lin.in_features, lin.out_features, lin.bias is not None, bits, method, a_bits)
        new = new.to(lin.weight.device)
        with torch.no_grad():
            new.weight.copy_(lin.weight)
            if lin.bias is not None:
                new.bias.copy_(lin.bias)
            if new.weight_scale is not None:  # LSQ init 2·mean|W| / sqrt(Qp) per row
                qp = max(1, 2 ** (bits - 1) - 1)
                new.weight_scale.copy_(2 * lin.weight.abs().mean(dim=1) / math.sqrt(qp))
        return new

    def _lsq_grid(self) -> tuple[torch.Tensor, int, int]:
        return self.weight_scale.abs().clamp_min(1e-8), -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1

    def quantized_weight(self) -> torch.Tensor:
        if self.method == "statsq":
            return statsq(self.weight, self.bits)
        s, lo, hi = self._lsq_grid()
        g = 1.0 / math.sqrt(self.in_features * hi)
        return fake_quantize_affine(self.weight, s, torch.zeros_like(s), lo, hi, PerChannel(0), g)

    def weight_codes(self) -> torch.Tensor:
        """The integer codes the weight quantizer assigns now (for :class:`OscillationTracker`)."""
        if self.method == "statsq":
            return statsq_codes(self.weight, self.bits)
        s, lo, hi = self._lsq_grid()
        return quantize_affine(self.weight.detach(), s.detach(), torch.zeros_like(s), lo, hi, PerChannel(0)).to(torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.method} {self.bits}-bit"


class QKRAttention(nn.Module):
    """Self-attention with query–key reparameterization (per head ``W_qk = W_qᵀ W_k``, quantized by StatsQ).

    Built from ``nn.MultiheadAttention`` (``batch_first=True``, called as ``attn(x, x, x)``; returns
    ``(out, None)``) or a timm-style block (``qkv`` and ``proj`` linears, ``num_heads``; called as
    ``attn(x)``). ``bits=None`` keeps everything float (the exact reparameterization)."""

    def __init__(self, dim: int, heads: int, bits: int | None, a_bits: int | None = None, method: str = "statsq",
                 exact_bias: bool = True, style: str = "timm", where: str = "") -> None:
        super().__init__()
        if dim % heads:
            raise InputError(f"attention at {where or '?'}: dim {dim} is not a multiple of {heads} heads")
        self.dim, self.heads, self.head_dim, self.bits, self.style, self.where = dim, heads, dim // heads, bits, style, where
        self.exact_bias = exact_bias
        self.q_weight = nn.Parameter(torch.zeros(dim, dim))
        self.k_weight = nn.Parameter(torch.zeros(dim, dim))
        self.q_bias = nn.Parameter(torch.zeros(dim)) if exact_bias else None
        self.v = QATLinear(dim, dim, True, bits or 8, method, a_bits) if bits else nn.Linear(dim, dim)
        self.proj = QATLinear(dim, dim, True, bits or 8, method, a_bits) if bits else nn.Linear(dim, dim)
        self.input_quantizer = BiasLSQ(dim, a_bits) if a_bits else None
        self.xqk_quantizer = BiasLSQ(dim, a_bits) if a_bits else None
        self.attn_quantizer = BiasLSQ(1, a_bits, signed=False, biases=False) if a_bits else None
        self.cga_boundary_range: float | None = None  # set by CGA: W_qk passes gradient only near thresholds

    @classmethod
    def from_module(cls, mod: nn.Module, bits: int | None, a_bits: int | None = None, method: str = "statsq",
                    exact_bias: bool = True, where: str = "") -> QKRAttention:
        if isinstance(mod, nn.MultiheadAttention):
            if not mod.batch_first or not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.dropout:
                raise InputError(f"attention at {where}: QKR handles nn.MultiheadAttention with batch_first=True, one embed "
                                 "dim, no add_bias_kv and no dropout")
            dim, heads, w, b, proj, style = mod.embed_dim, mod.num_heads, mod.in_proj_weight, mod.in_proj_bias, mod.out_proj, "mha"
        else:
            dim, heads, w, b, proj, style = mod.qkv.in_features, mod.num_heads, mod.qkv.weight, mod.qkv.bias, mod.proj, "timm"
        new = cls(dim, heads, bits, a_bits, method, exact_bias, style, where).to(w.device)
        with torch.no_grad():
            new.q_weight.copy_(w[:dim])
            new.k_weight.copy_(w[dim:2 * dim])
            if new.q_bias is not None and b is not None:
                new.q_bias.copy_(b[:dim])
            v = nn.Linear(dim, dim).to(w.device)
            v.weight.copy_(w[2 * dim:])
            if b is not None:
                v.bias.copy_(b[2 * dim:])
            else:
                v.bias.zero_()
            new.v = QATLinear.from_linear(v, bits, method, a_bits) if bits else v
            new.proj = QATLinear.from_linear(proj, bits, method, a_bits) if bits else _plain_linear(proj)
        return new

    def qk_product(self) -> torch.Tensor:
        """``W_qk`` stacked per head: ``[H·C, C]`` (row ``h·C + i`` is row ``i`` of head ``h``'s ``W_qᵀW_k``)."""
        h, d, c = self.heads, self.head_dim, self.dim
        return torch.einsum("hdc,hde->hce", self.q_weight.view(h, d, c), self.k_weight.view(h, d, c)).reshape(h * c, c)

    def weight_codes(self) -> torch.Tensor:
        return statsq_codes(self.qk_product(), self.bits) if self.bits else torch.zeros(0, dtype=torch.int64)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.style == "mha":
            key, value = (args + (x, x))[:2] if args else (kwargs.get("key", x), kwargs.get("value", x))
            if key is not x or value is not x:
                raise InputError(f"QKR attention at {self.where or '?'} handles self-attention only (query, key and value the same tensor)")
        b, n, c = x.shape
        h = self.heads
        xq = self.input_quantizer(x) if self.input_quantizer is not None else x
        wqk = self.qk_product()
        if self.bits:
            wqk = statsq(wqk, self.bits, self.cga_boundary_range)
        a = torch.einsum("bnc,hce->bhne", xq, wqk.view(h, c, c))
        if self.xqk_quantizer is not None:
            a = self.xqk_quantizer(a)
        scores = torch.einsum("bhne,bme->bhnm", a, xq) * self.head_dim**-0.5
        if self.q_bias is not None:  # the key-dependent term x_j · W_k^hᵀ b_q^h
            u = torch.einsum("hdc,hd->hc", self.k_weight.view(h, self.head_dim, c), self.q_bias.view(h, self.head_dim))
            scores = scores + torch.einsum("bmc,hc->bhm", xq, u).unsqueeze(2) * self.head_dim**-0.5
        attn = scores.softmax(dim=-1)
        if self.attn_quantizer is not None:
            attn = self.attn_quantizer(attn.unsqueeze(-1)).squeeze(-1)
        v = self.v(xq).view(b, n, h, self.head_dim).transpose(1, 2)
        out = self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return (out, None) if self.style == "mha" else out


def _plain_linear(lin: nn.Linear) -> nn.Linear:
    new = nn.Linear(lin.in_features, lin.out_features, lin.bias is not None).to(lin.weight.device)
    new.load_state_dict(lin.state_dict())
    return new


def is_timm_attention(mod: nn.Module) -> bool:
    return isinstance(getattr(mod, "qkv", None), nn.Linear) and isinstance(getattr(mod, "proj", None), nn.Linear) \
        and isinstance(getattr(mod, "num_heads", None), int) and mod.qkv.out_features == 3 * mod.qkv.in_features


def looks_like_attention(mod: nn.Module) -> bool:
    return "attention" in type(mod).__name__.lower() or "attn" in type(mod).__name__.lower()


# --------------------------------------------------------------------------- CGA and oscillations


def statsq_weights(model: nn.Module) -> dict[str, QATLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QATLinear) and m.method == "statsq"}


class CGA:
    """Confidence-guided annealing on ``model``'s StatsQ weights, driven by ``optimizer``'s step hooks.

    ``cga = CGA(model, boundary_range=0.005).attach(optimizer)``; then train as usual. Before each
    step, ``cga.frozen[name]`` is recomputed (True = frozen: farther than ``boundary_range`` grid
    steps from every interior threshold), frozen gradients are zeroed and the weights saved; after
    the step the frozen entries are restored. ``cga.detach()`` removes the hooks.
    """

    def __init__(self, model: nn.Module, boundary_range: float = 0.005) -> None:
        self.model, self.boundary_range = model, boundary_range
        self.layers = statsq_weights(model)
        self.attention = {n: m for n, m in model.named_modules() if isinstance(m, QKRAttention) and m.bits}
        if not self.layers and not self.attention:
            raise InputError("CGA found no StatsQ weights in the model: run qgraph.ofq.prepare_ofq(model, ...) first")
        self.frozen: dict[str, torch.Tensor] = {}
        self._saved: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def attach(self, optimizer: torch.optim.Optimizer) -> CGA:
        for m in self.attention.values():
            m.cga_boundary_range = self.boundary_range
        self._handles = [optimizer.register_step_pre_hook(self._before_step), optimizer.register_step_post_hook(self._after_step)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for m in self.attention.values():
            m.cga_boundary_range = None

    @torch.no_grad()
    def _before_step(self, *_):
        for name, mod in self.layers.items():
            frozen = ~low_confidence(mod.weight, mod.bits, self.boundary_range)
            if mod.weight.grad is not None:
                mod.weight.grad[frozen] = 0
            self.frozen[name] = frozen
            self._saved[name] = mod.weight.detach().clone()

    @torch.no_grad()
    def _after_step(self, *_):
        for name, mod in self.layers.items():
            frozen = self.frozen[name]
            mod.weight[frozen] = self._saved[name][frozen]

    def frozen_ratio(self) -> float:
        total = sum(f.numel() for f in self.frozen.values())
        return sum(int(f.sum()) for f in self.frozen.values()) / total if total else 0.0


class OscillationTracker:
    """Counts weight oscillations during QAT: call :meth:`step` after every optimizer step.

    For every module with ``weight_codes()`` (StatsQ/LSQ :class:`QATLinear`, :class:`QKRAttention`'s
    ``W_qk``) it keeps the last integer code and the direction of its last change. A change against
    the previous direction is one oscillation: ``counts[name]`` adds it up per weight, ``ema[name]``
    is its exponential moving average (``momentum``)."""

    def __init__(self, model: nn.Module, momentum: float = 0.01) -> None:
        self.momentum = momentum
        self.modules = {n: m for n, m in model.named_modules() if hasattr(m, "weight_codes") and getattr(m, "bits", None)}
        self.codes = {n: m.weight_codes() for n, m in self.modules.items()}
        self.direction = {n: torch.zeros_like(c) for n, c in self.codes.items()}
        self.counts = {n: torch.zeros_like(c) for n, c in self.codes.items()}
        self.ema = {n: torch.zeros_like(c, dtype=torch.float32) for n, c in self.codes.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        for n, m in self.modules.items():
            codes = m.weight_codes()
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


def prepare_ofq(model: nn.Module, bits: int = 2, a_bits: int | None = None, qkr: bool = True, method: str = "statsq",
                keep: tuple[str, ...] = ("patch_embed*", "head*"), keep_bits: int | None = 8, exact_bias: bool = True):
    """Swap ``model``'s layers in place for OFQ training; returns ``(model, changes)``. See :class:`qgraph.passes.ofq.OFQPass`."""
    from qgraph.passes.ofq import OFQPass

    p = OFQPass(bits, a_bits, qkr, method, keep, keep_bits, exact_bias)
    p.run(model)
    return model, p.changes


def matches_any(path: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, g) for g in globs)


__all__ = ["statsq", "statsq_scale", "statsq_codes", "low_confidence", "BiasLSQ", "QATLinear", "QKRAttention", "CGA",
           "OscillationTracker", "prepare_ofq", "statsq_weights", "is_timm_attention"]
