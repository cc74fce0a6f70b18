"""Group-wise scale learning (QSLAW, ALGORITHMS.md §2): learnable per-group gains on linear weights.

* :class:`GroupGainQuantize`: a weight quantizer on an asymmetric per-group grid whose step ``s``
  and zero point ``z`` are frozen (min-max or MSE from calibration) and whose per-group gain ``γ``
  (init 1) is trained: ``q = clamp(round(W / γ / s) + z, qmin, qmax)``, ``Ŵ = s·(q − z)`` (dequantized
  with ``s``, not ``s·γ``, as the reference code does). Built on
  :func:`qgraph.primitives.fake_quantize_affine` applied to ``W / γ``: straight-through rounding,
  so ``∂L/∂γ = −Σ ∂L/∂Ŵ · W/γ² · 1[in range]``; ``s`` and ``z`` get no gradient.
* the recipe ``qslaw(bits=4, group_size=128)``: weight-only, linear weights in groups along the
  input dimension (convs per channel, no gains); the ``group_scales`` method pass adds the gains.
* :func:`fold_gains` absorbs the gains: ``W ← Ŵ`` and ``γ ← 1``, after which the quantizer gives the
  same codes and values bit for bit. :func:`folded_copy` is what export writes: a plain grouped
  weight quantizer per layer and a recipe without the gains, so the qpack and ONNX files are those
  of an ordinary ``w4 g128`` model.
* :class:`MixedWarmup`: the data schedule (§2.4): warm up on the new ("multimodal") data only, then
  mix the original ("language") data in, optionally ramping its share.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Iterator
from dataclasses import replace

import torch
from torch import nn

from qgraph.errors import InputError, RecipeError
from qgraph.granularity import PerGroup
from qgraph.primitives import fake_quantize_affine
from qgraph.qspec import QSpec
from qgraph.quantizer import FakeQuantize
from qgraph.recipes import Recipe, register_recipe


class GroupGainQuantize(FakeQuantize):
    """Per-group weight quantizer with frozen (s, z) and a learnable gain per group (QSLAW)."""

    def __init__(self, spec: QSpec, where: str = "") -> None:
        if not isinstance(spec.granularity, PerGroup):
            raise RecipeError(f"group gains need a per-group weight grid; {where or 'a quantizer'} has {spec.granularity}")
        super().__init__(spec.with_(learnable=False), "weight", where=where)
        self.gain = nn.Parameter(torch.zeros(0))

    def _ensure_gain(self) -> None:
        if self.initialized and self.gain.shape != self.scale.shape:
            self.gain.data = torch.ones_like(self.scale)

    def finish_calibration(self) -> None:
        super().finish_calibration()
        self._ensure_gain()

    def init_from(self, x: torch.Tensor) -> None:
        super().init_from(x)
        self._ensure_gain()

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        super().set_qparams(scale, zero_point)
        self._ensure_gain()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "gain"
        if key in state_dict and self.gain.shape != state_dict[key].shape:
            self.gain.data = torch.empty_like(state_dict[key], dtype=torch.float32)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True):
        return nn.Module.train(self, mode)  # s and z are frozen: no re-reading of the weight after training

    def gained(self, w: torch.Tensor) -> torch.Tensor:
        """``W / γ`` (γ repeated over each group)."""
        if self.gain.numel() == 0:
            return w
        return w / self.gain.repeat_interleave(self.spec.granularity.size, dim=-1)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        return fake_quantize_affine(self.gained(x), self.scale, self.zero_point, spec.qmin, spec.qmax, spec.granularity)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", {self.gain.numel()} learnable group gains"

    def report_fields(self) -> dict:
        if self.gain.numel() == 0:
            return {}
        g = self.gain.detach().float()
        return {"group_gains": {"count": g.numel(), "min": float(g.min()), "max": float(g.max()), "mean": float(g.mean())}}


def gain_quantizers(module: nn.Module) -> dict[str, GroupGainQuantize]:
    return {n: m for n, m in module.named_modules() if isinstance(m, GroupGainQuantize)}


def gain_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The gains to hand to an optimizer (QSLAW trains only these, plus the user's own adapters)."""
    return [q.gain for q in gain_quantizers(module).values() if q.gain.numel()]


@torch.no_grad()
def fold_gains(qm) -> int:
    """Absorb every group gain into its weight (``W ← Ŵ``, ``γ ← 1``), in place; returns the count folded.

    The fake-quantized weights, hence the model's outputs, are unchanged bit for bit: ``Ŵ/s`` rounds
    back to the same codes.
    """
    from qgraph.packing import used_state, weight_quantizers

    gm = qm.qgraph if hasattr(qm, "qgraph") else qm
    state = used_state(gm)
    folded = 0
    for key, qname in weight_quantizers(gm).items():
        q = gm.get_submodule(qname)
        if not isinstance(q, GroupGainQuantize) or q.gain.numel() == 0 or key not in state:
            continue
        owner, _, attr = key.rpartition(".")
        w = getattr(gm.get_submodule(owner) if owner else gm, attr)
        w.data.copy_(q(w.detach()).to(w.dtype))
        q.gain.data.fill_(1.0)
        folded += 1
    return folded


def folded_copy(qm):
    """What export writes for a model with group gains: a copy with the gains folded, each
    :class:`GroupGainQuantize` a plain :class:`FakeQuantize` on the same grid, and the recipe without
    the ``group_scales`` method. ``qm`` itself when it has no gains."""
    if not gain_quantizers(qm.qgraph):
        return qm
    out = copy.deepcopy(qm)
    fold_gains(out)
    for name, q in gain_quantizers(out.qgraph).items():
        plain = FakeQuantize(q.spec, "weight", where=q.where)
        plain.set_qparams(q.scale, q.zero_point)
        plain.mode, plain.observer = "quantize", None
        plain.training = q.training  # a new module trains by default, and a training weight quantizer re-reads min-max
        parent, _, child = name.rpartition(".")
        setattr(out.qgraph.get_submodule(parent) if parent else out.qgraph, child, plain)
    out.recipe = replace(out.recipe, methods=tuple(m for m in out.recipe.methods if m[0] != "group_scales"))
    return out


@register_recipe("qslaw")
def qslaw_recipe(bits: int = 4, group_size: int = 128, observer: str = "minmax", skip_first: int = 0) -> Recipe:
    """QSLAW: weight-only asymmetric int<bits> linear weights in groups of ``group_size`` along the input
    dimension with a learnable gain per group (frozen step and zero point); convs per channel without gains."""
    if group_size < 1:
        raise RecipeError(f"group_size must be positive, got {group_size}")
    w = QSpec(bits=bits, symmetric=False, signed=False, granularity=PerGroup(group_size), observer=observer,
              scale_dtype="float16")
    return Recipe(f"qslaw w{bits} g{group_size}", w, None, kinds=("conv", "conv_transpose", "linear"),
                  methods=(("group_scales", {"skip_first": skip_first}),), description=qslaw_recipe.__doc__)


class MixedWarmup:
    """The QSLAW data schedule (ALGORITHMS.md §2.4) over two endless batch sources.

    Steps ``0 .. warmup_steps-1`` draw from ``new`` only (the "modality-aware warmup"); afterwards
    each step draws from ``original`` with probability ``p``, where ``p`` ramps linearly from 0 to
    ``mix / (1 + mix)`` over ``ramp_steps`` (``ramp_steps=0``: at once; ``mix=1.0``: about 1:1, as the
    reference code). Iterating yields ``(source, batch)`` with source ``"new"`` or ``"original"``.
    """

    def __init__(self, new: Iterable, original: Iterable, steps: int, warmup_steps: int = 0, mix: float = 1.0,
                 ramp_steps: int = 0, seed: int = 0) -> None:
        if steps < 0 or warmup_steps < 0 or ramp_steps < 0 or mix < 0:
            raise InputError("MixedWarmup needs non-negative steps, warmup_steps, ramp_steps and mix")
        self.new, self.original = new, original
        self.steps, self.warmup_steps, self.mix, self.ramp_steps = steps, warmup_steps, mix, ramp_steps
        self.seed = seed

    def p_original(self, step: int) -> float:
        if step < self.warmup_steps:
            return 0.0
        target = self.mix / (1.0 + self.mix)
        if self.ramp_steps == 0:
            return target
        return target * min(1.0, (step - self.warmup_steps + 1) / self.ramp_steps)

    def __iter__(self) -> Iterator[tuple[str, object]]:
        rng = random.Random(self.seed)
        new, original = iter(self.new), iter(self.original)
        for step in range(self.steps):
            if rng.random() < self.p_original(step):
                yield "original", next(original)
            else:
                yield "new", next(new)


__all__ = ["GroupGainQuantize", "gain_quantizers", "gain_parameters", "fold_gains", "folded_copy", "qslaw_recipe",
           "MixedWarmup"]
