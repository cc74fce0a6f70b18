"""Double-rounding bit switching: one INT8 model that runs at 8, 6, 4 or 2 bits (ALGORITHMS.md §6).

The pieces a ``bitswitch`` recipe puts into a graph (``qgraph.passes.bitswitch``):

* :class:`DoubleRoundWeightQuantizer`: one per-output-channel scale ``s`` shared by every bit width.
  The high-precision codes are ``q_h = clamp(round(W / s), -2^(h-1), 2^(h-1) - 1)`` (INT8 for
  h = 8); a lower precision l takes the *second rounding* of those codes,
  ``q_l = clamp(round(q_h / 2^(h-l)), -2^(l-1), 2^(l-1) - 1)`` (a rounding right shift, ties to
  even), and the weight the layer uses is ``q_l · s · 2^(h-l)``. So only the INT8 codes and ``s``
  need to be stored: every lower precision is derived from them exactly. Both roundings are
  :func:`qgraph.primitives.quantize_affine`; gradients are the primitive's own (straight-through
  for W, LSQ for ``s``, per channel) taken at the effective step ``s · 2^(h-l)``.
  ``rounding="direct"`` is the shared-scale baseline that rounds the float weights straight to the
  low grid (it needs the float weights, so it cannot be served from an INT8 file).
* :class:`BitSwitchActQuantizer`: one LSQ scale per bit width (``s_a[b]``), zero point 0, unsigned
  when the first values it sees are non-negative (after ReLU), signed otherwise.
* :class:`SwitchableBatchNorm`: one BatchNorm per bit width (statistics and affine parameters).

Every bit-switch module belongs to a *layer* (the module path of its conv / linear) and carries the
layer's current ``bits``; :func:`set_bits` sets them for the whole model or per layer by glob.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from qgraph.errors import CalibrationError, InputError, RecipeError
from qgraph.granularity import PerChannel, PerTensor
from qgraph.primitives import (
    MIN_SCALE,
    dequantize_affine,
    fake_quantize_affine,
    fake_quantize_grads,
    integer_range,
    quantize_affine,
)
from qgraph.quantizer import scale_gradients_flow
from qgraph.recipes import Recipe, register_recipe

ROUNDINGS = ("double", "direct")
SUPPORTED_BITS = range(2, 9)

__all__ = [
    "BitSwitchRecipe", "bitswitch", "DoubleRoundWeightQuantizer", "BitSwitchActQuantizer", "SwitchableBatchNorm",
    "double_round_codes", "set_bits", "get_bits", "bitswitch_layers", "bitswitch_modules", "is_bitswitch", "alrs_eta",
]


# ------------------------------------------------------------------------------------------ recipe


@dataclass(frozen=True)
class BitSwitchRecipe(Recipe):
    """A recipe whose conv / linear layers switch among ``bits`` (highest first) at run time."""

    bits: tuple[int, ...] = (8, 6, 4, 2)
    keep_first_last: bool = True
    rounding: str = "double"

    @property
    def high_bits(self) -> int:
        return self.bits[0]

    def with_learnable_scales(self) -> Recipe:
        return self  # bit-switch scales are always learnable (LSQ)

    def to_json(self) -> dict:
        d = super().to_json()
        d["factory"] = "bitswitch"
        d["options"] = {"bits": list(self.bits), "keep_first_last": self.keep_first_last, "rounding": self.rounding}
        return d


@register_recipe("bitswitch")
def bitswitch(*args: int, bits=None, keep_first_last: bool = True, rounding: str = "double") -> BitSwitchRecipe:
    """Double-rounding bit switching: INT8 per-channel weights with one shared scale, lower bit widths by
    rounding the INT8 codes again, one activation scale and one BatchNorm per bit width; first and last
    layers float unless ``keep_first_last=False``. ``bitswitch(8, 6, 4, 2)`` or ``bitswitch(bits=(4, 3, 2))``."""
    if args and bits is not None:
        raise RecipeError("give the bit widths either positionally or as bits=, not both")
    chosen = args or bits or (8, 6, 4, 2)
    if isinstance(chosen, int):
        chosen = (chosen,)
    try:
        chosen = tuple(chosen)
    except TypeError as e:
        raise RecipeError(f"bitswitch bits must be integers in 2..8, got {bits!r}") from e
    if not chosen or any(not isinstance(b, int) or isinstance(b, bool) or b not in SUPPORTED_BITS for b in chosen):
        raise RecipeError(f"bitswitch bits must be integers in 2..8, got {chosen!r}")
    if len(set(chosen)) != len(chosen):
        raise RecipeError(f"bitswitch bits must be distinct, got {chosen!r}")
    if rounding not in ROUNDINGS:
        raise RecipeError(f"bitswitch rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    chosen = tuple(sorted(chosen, reverse=True))
    name = "bitswitch(" + ",".join(map(str, chosen)) + ")"
    return BitSwitchRecipe(name, None, None, kinds=("conv", "linear"), description=bitswitch.__doc__, bits=chosen,
                           keep_first_last=bool(keep_first_last), rounding=rounding)


# ------------------------------------------------------------------------------------------ math


def alrs_eta(bits: int, high_bits: int) -> float:
    """ALRS learning-rate factor η_b (Eq. 7): 10^(-Δ/2) for even Δ = h - b, 5·10^(-(Δ+1)/2) for odd Δ."""
    delta = high_bits - bits
    return 10.0 ** (-delta / 2) if delta % 2 == 0 else 5.0 * 10.0 ** (-(delta + 1) / 2)


def double_round_codes(codes_high: torch.Tensor, high_bits: int, bits: int) -> torch.Tensor:
    """``clamp(round(q_h / 2^(h-l)), -2^(l-1), 2^(l-1)-1)``: the l-bit codes of the h-bit codes (int8)."""
    if bits == high_bits:
        return codes_high.to(torch.int8)
    qmin, qmax = integer_range(bits, True)
    step = torch.tensor(float(2 ** (high_bits - bits)))
    return quantize_affine(codes_high.float(), step, torch.zeros(()), qmin, qmax, PerTensor())


class _DoubleRound(torch.autograd.Function):
    """Forward: the exact double-rounded weight. Backward: the primitive's gradients (STE for W, LSQ
    for the scale, summed per channel) at the effective step ``s·2^Δ``."""

    @staticmethod
    def forward(ctx, w, scale, high_bits: int, bits: int, axis: int, grad_factor: float):
        ctx.save_for_backward(w, scale)
        ctx.args = (high_bits, bits, axis, grad_factor)
        g = PerChannel(axis)
        qmin, qmax = integer_range(high_bits, True)
        codes = double_round_codes(quantize_affine(w, scale, torch.zeros_like(scale), qmin, qmax, g), high_bits, bits)
        step = scale * float(2 ** (high_bits - bits))
        lo, hi = integer_range(bits, True)
        return dequantize_affine(codes, step, torch.zeros_like(step), lo, hi, g)

    @staticmethod
    def backward(ctx, grad):
        w, scale = ctx.saved_tensors
        high_bits, bits, axis, grad_factor = ctx.args
        lo, hi = integer_range(bits, True)
        factor = float(2 ** (high_bits - bits))  # d step / d scale
        gw, g_step, _ = fake_quantize_grads(grad, w, scale * factor, torch.zeros_like(scale), lo, hi, PerChannel(axis), grad_factor)
        return gw, g_step * factor, None, None, None, None


# ------------------------------------------------------------------------------------------ modules


class _Switch(nn.Module):
    """Common state: the layer this module belongs to, its bit widths and the current one."""

    def __init__(self, bits: tuple[int, ...], layer: str) -> None:
        super().__init__()
        self.bit_choices = tuple(bits)
        self.layer = layer
        self.bits = bits[0]

    def set_bits(self, bits: int) -> None:
        if bits not in self.bit_choices:
            raise InputError(f"layer {self.layer} switches among {list(self.bit_choices)} bits, not {bits!r}")
        self.bits = int(bits)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, bits={self.bits} of {list(self.bit_choices)}"


class DoubleRoundWeightQuantizer(_Switch):
    """Weights on an INT8 (``high_bits``) per-channel grid; lower bit widths by double rounding."""

    def __init__(self, weight: torch.Tensor, bits: tuple[int, ...], layer: str, axis: int = 0, rounding: str = "double") -> None:
        super().__init__(bits, layer)
        self.high_bits = bits[0]
        self.axis = axis
        self.rounding = rounding
        self.scale = nn.Parameter(self.init_scale(weight, self.high_bits, axis))

    @staticmethod
    @torch.no_grad()
    def init_scale(weight: torch.Tensor, high_bits: int, axis: int) -> torch.Tensor:
        """``max(|μ - 3σ|, |μ + 3σ|) / 2^(h-1)`` per channel (the reference code's initialisation)."""
        w = weight.detach().float().transpose(0, axis).flatten(1)
        mu, sigma = w.mean(1), w.std(1, unbiased=False)
        s = torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs()) / 2 ** (high_bits - 1)
        return s.clamp_min(MIN_SCALE)

    def effective_scale(self) -> torch.Tensor:
        return self.scale.abs().clamp_min(MIN_SCALE)

    def grad_factor(self, w: torch.Tensor, bits: int) -> float:
        per_channel = max(1, w.numel() // max(1, self.scale.numel()))
        return 1.0 / math.sqrt(per_channel * integer_range(bits, True)[1])

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s, b = self.effective_scale(), self.bits
        if self.rounding == "direct":
            lo, hi = integer_range(b, True)
            step = s * float(2 ** (self.high_bits - b))
            return fake_quantize_affine(w, step, torch.zeros_like(step), lo, hi, PerChannel(self.axis), self.grad_factor(w, b))
        return _DoubleRound.apply(w, s, self.high_bits, b, self.axis, self.grad_factor(w, b))

    @torch.no_grad()
    def codes(self, w: torch.Tensor, bits: int | None = None) -> torch.Tensor:
        """Integer codes (int8) of ``w`` at ``bits`` (default: the current bits), as the forward uses them."""
        b = self.bits if bits is None else bits
        s = self.effective_scale()
        if self.rounding == "direct":
            lo, hi = integer_range(b, True)
            return quantize_affine(w.float(), s * float(2 ** (self.high_bits - b)), torch.zeros_like(s), lo, hi, PerChannel(self.axis))
        qmin, qmax = integer_range(self.high_bits, True)
        high = quantize_affine(w.float(), s, torch.zeros_like(s), qmin, qmax, PerChannel(self.axis))
        return double_round_codes(high, self.high_bits, b)

    def step(self, bits: int | None = None) -> torch.Tensor:
        """The per-channel step of ``bits``: ``s · 2^(h - bits)``."""
        b = self.bits if bits is None else bits
        return self.effective_scale().detach() * float(2 ** (self.high_bits - b))


class BitSwitchActQuantizer(_Switch):
    """LSQ activation quantizer with one scale per bit width (zero point 0).

    ``signed`` is decided by the first values seen (-1 undecided, 0 unsigned, 1 signed); a bit width's
    scale is initialised to ``2·mean|x| / sqrt(Qp)`` from the first batch it sees (or from calibration
    in ``observe`` mode, over all calibration batches), and learned from then on.
    """

    def __init__(self, bits: tuple[int, ...], layer: str) -> None:
        super().__init__(bits, layer)
        self.scale = nn.Parameter(torch.ones(len(bits)))
        self.register_buffer("initialized", torch.zeros(len(bits), dtype=torch.bool))
        self.register_buffer("signed", torch.tensor(-1, dtype=torch.int8))
        self.mode = "quantize"
        self._stats: dict[int, list[float]] = {}
        self._host: tuple[int, set[int]] | None = None  # host copies of (signed, initialized): see _host_state

    def index(self, bits: int) -> int:
        return self.bit_choices.index(bits)

    def _host_state(self) -> tuple[int, set[int]]:
        """``signed`` and the initialised bit-width indices, read from the buffers once (and again
        after a state dict is loaded), so that a training step never waits on the device."""
        if self._host is None:
            self._host = (int(self.signed), {i for i, v in enumerate(self.initialized.tolist()) if v})
        return self._host

    def _load_from_state_dict(self, *args, **kwargs):
        self._host = None
        super()._load_from_state_dict(*args, **kwargs)

    def grid(self, bits: int) -> tuple[int, int]:
        signed = self._host_state()[0]
        if signed < 0:
            raise CalibrationError(f"activation quantizer of layer {self.layer} has not seen any data yet")
        return integer_range(bits, bool(signed))

    @torch.no_grad()
    def _decide_sign(self, x: torch.Tensor) -> None:
        if self._host_state()[0] < 0:
            sign = 1 if bool((x < 0).any()) else 0
            self.signed.fill_(sign)
            self._host = (sign, self._host[1])

    @torch.no_grad()
    def _init_scale(self, i: int, mean_abs: float) -> None:
        qp = self.grid(self.bit_choices[i])[1]
        self.scale.data[i] = max(2.0 * mean_abs / math.sqrt(qp), MIN_SCALE)
        self.initialized[i] = True
        self._host_state()[1].add(i)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        for b, (total, count) in self._stats.items():
            self._init_scale(self.index(b), total / max(count, 1))
        self._stats = {}
        self.mode = "quantize"

    def effective_scale(self, bits: int | None = None) -> torch.Tensor:
        i = self.index(self.bits if bits is None else bits)
        return self.scale[i].abs().clamp_min(MIN_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._decide_sign(x)
        if self.mode == "observe":
            total, count = self._stats.get(self.bits, [0.0, 0])
            self._stats[self.bits] = [total + float(x.detach().abs().sum()), count + x.numel()]
            return x
        i = self.index(self.bits)
        if i not in self._host_state()[1]:
            self._init_scale(i, float(x.detach().abs().mean()))
        lo, hi = self.grid(self.bits)
        factor = 1.0 / math.sqrt(max(1, x.numel()) * hi) if scale_gradients_flow() else 1.0
        s = self.effective_scale()
        return fake_quantize_affine(x, s, torch.zeros_like(s), lo, hi, PerTensor(), factor)


class SwitchableBatchNorm(_Switch):
    """One BatchNorm per bit width, all initialised from the float model's BatchNorm."""

    def __init__(self, bn: nn.Module, bits: tuple[int, ...], layer: str) -> None:
        super().__init__(bits, layer)
        self.bns = nn.ModuleDict({str(b): copy.deepcopy(bn) for b in bits})

    def current(self) -> nn.Module:
        return self.bns[str(self.bits)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.current()(x)


BITSWITCH_TYPES = (DoubleRoundWeightQuantizer, BitSwitchActQuantizer, SwitchableBatchNorm)


# ------------------------------------------------------------------------------------------ switching


def _graph(model: nn.Module) -> nn.Module:
    return getattr(model, "qgraph", model)


def bitswitch_modules(model: nn.Module) -> dict[str, _Switch]:
    """``{module name: module}`` for every bit-switch module of a QModel (or graph module)."""
    return {n: m for n, m in _graph(model).named_modules() if isinstance(m, _Switch)}


def is_bitswitch(model: nn.Module) -> bool:
    return any(True for _ in bitswitch_modules(model))


def bitswitch_layers(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{layer path: bit widths it switches among}``, in graph order."""
    layers: dict[str, tuple[int, ...]] = {}
    for m in bitswitch_modules(model).values():
        layers.setdefault(m.layer, m.bit_choices)
    return layers


def get_bits(model: nn.Module) -> dict[str, int]:
    """``{layer path: current bits}``."""
    out: dict[str, int] = {}
    for m in bitswitch_modules(model).values():
        out.setdefault(m.layer, m.bits)
    return out


def resolve_bits(model: nn.Module, bits: int | Mapping[str, int]) -> dict[str, int]:
    """The per-layer bit map ``bits`` stands for (an int: every layer; a mapping: globs → bits, later
    entries win, layers no glob matches keep their current bits), checked against the layers."""
    layers = bitswitch_layers(model)
    if not layers:
        raise InputError("this model has no bit-switch layers: quantize it with recipe='bitswitch'")
    current = get_bits(model)
    if isinstance(bits, Mapping):
        wanted = dict(current)
        for pattern, b in bits.items():
            if not isinstance(pattern, str):
                raise InputError(f"set_bits keys are layer paths or globs, got {pattern!r}")
            hit = [layer for layer in layers if fnmatch.fnmatchcase(layer, pattern)]
            if not hit:
                raise InputError(f"set_bits pattern {pattern!r} matches no bit-switch layer; layers: {', '.join(layers)}")
            for layer in hit:
                wanted[layer] = b
    else:
        wanted = {layer: bits for layer in layers}
    for layer, b in wanted.items():
        if isinstance(b, bool) or not isinstance(b, int) or b not in layers[layer]:
            raise InputError(f"layer {layer} switches among {list(layers[layer])} bits, not {b!r}")
    return wanted


def set_bits(model: nn.Module, bits: int | Mapping[str, int]) -> dict[str, int]:
    """Switch every layer (``bits`` an int) or the layers matching globs (``{"layer3.*": 2}``); returns
    the resulting ``{layer: bits}``. Nothing changes when any entry is invalid."""
    wanted = resolve_bits(model, bits)
    for m in bitswitch_modules(model).values():
        m.set_bits(wanted[m.layer])
    return wanted


def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The quantization scales (weight and activation) of the bit-switch modules."""
    return [m.scale for m in bitswitch_modules(model).values() if isinstance(m, (DoubleRoundWeightQuantizer, BitSwitchActQuantizer))]


def bit_choices(model: nn.Module) -> tuple[int, ...]:
    """The bit widths of the model (highest first)."""
    found = sorted({b for bs in bitswitch_layers(model).values() for b in bs}, reverse=True)
    return tuple(found)


def recipe_bits(recipe: Recipe) -> tuple[int, ...]:
    return recipe.bits if isinstance(recipe, BitSwitchRecipe) else ()


def with_bits(recipe: BitSwitchRecipe, bits: tuple[int, ...]) -> BitSwitchRecipe:
    return replace(recipe, bits=tuple(sorted(bits, reverse=True)))
