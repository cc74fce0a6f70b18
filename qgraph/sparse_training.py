"""Sparse training layers: a Conv2d/Linear whose forward and input-gradient use separate weight masks.

``MaskedTrainLayer(layer, masker, decay)`` wraps an ``nn.Conv2d`` (any stride / padding /
dilation, ``groups == 1``, zero padding) or ``nn.Linear``. On every call ``masker(weight)``
returns ``(m_f, m_b)`` and a custom autograd function computes

    forward      y   = op(x, W ⊙ m_f) + b
    input grad   G_X = op_inputgrad(G_Y, W ⊙ m_b)               (``torch.nn.grad.conv2d_input``)
    weight grad  G_W = op_weightgrad(x, G_Y) + decay · (1 − m_f) ⊙ W   (dense: pruned weights get
                                                                     gradient, SR-STE decay pulls them down)

so a method picks its masks (Bi-Mask: ``m_b`` N:M along output channels, UniPTS: ``m_b = m_f``
recomputed from magnitudes on every call) and shares the arithmetic. :func:`wrap_layers` swaps
layers in place, :func:`unwrap_layers` swaps them back with ``W ⊙ m_f`` as their weight (a plain
model whose zeros a ``qgraph`` sparsity recipe then finds again).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from qgraph.errors import InputError


class _MaskedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, m_f, m_b, decay: float):
        ctx.save_for_backward(x, w, m_f, m_b)
        ctx.decay, ctx.has_bias = decay, b is not None
        return F.linear(x, w * m_f, b)

    @staticmethod
    def backward(ctx, g):
        x, w, m_f, m_b = ctx.saved_tensors
        gx = g @ (w * m_b) if ctx.needs_input_grad[0] else None
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        gw = g2.t() @ x2 + ctx.decay * (~m_f) * w
        gb = g2.sum(0) if ctx.has_bias else None
        return gx, gw, gb, None, None, None


class _MaskedConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, m_f, m_b, decay: float, conv: tuple):
        ctx.save_for_backward(x, w, m_f, m_b)
        ctx.decay, ctx.has_bias, ctx.conv = decay, b is not None, conv
        stride, padding, dilation = conv
        return F.conv2d(x, w * m_f, b, stride, padding, dilation)

    @staticmethod
    def backward(ctx, g):
        x, w, m_f, m_b = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        gx = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(x.shape, w * m_b, g, stride, padding, dilation)
        gw = torch.nn.grad.conv2d_weight(x, w.shape, g, stride, padding, dilation) + ctx.decay * (~m_f) * w
        gb = g.sum((0, 2, 3)) if ctx.has_bias else None
        return gx, gw, gb, None, None, None, None


def trainable(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot be wrapped (None when it can)."""
    if isinstance(layer, nn.Linear):
        return None
    if type(layer) is nn.Conv2d:
        if layer.groups != 1:
            return f"grouped conv (groups={layer.groups})"
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return f"padding {layer.padding!r} / mode {layer.padding_mode!r}"
        return None
    return f"{type(layer).__name__} is not Conv2d or Linear"


class MaskedTrainLayer(nn.Module):
    """A Conv2d/Linear trained with forward mask ``m_f`` and input-gradient mask ``m_b`` from ``masker``."""

    def __init__(self, layer: nn.Module, masker: nn.Module, decay: float = 2e-4) -> None:
        super().__init__()
        why = trainable(layer)
        if why:
            raise InputError(f"cannot train {type(layer).__name__} with masks: {why}")
        self.layer, self.masker, self.decay = layer, masker, float(decay)

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    def masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.masker(self.layer.weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m_f, m_b = self.masks()
        w, b = self.layer.weight, self.layer.bias
        if isinstance(self.layer, nn.Linear):
            return _MaskedLinear.apply(x, w, b, m_f, m_b, self.decay)
        c = self.layer
        return _MaskedConv2d.apply(x, w, b, m_f, m_b, self.decay, (c.stride, c.padding, c.dilation))

    @torch.no_grad()
    def sparse_layer(self) -> nn.Module:
        """The wrapped layer with ``W ⊙ m_f`` as its weight (shares no storage with this one)."""
        import copy

        m_f, _ = self.masks()
        out = copy.deepcopy(self.layer)
        out.weight.mul_(m_f)
        return out


def wrap_layers(model: nn.Module, make_masker: Callable[[str, nn.Module], nn.Module | None], decay: float,
                skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Swap (in place) every Conv2d/Linear of ``model`` for a :class:`MaskedTrainLayer` whose masker
    ``make_masker(path, layer)`` returns (``None``: stays dense). Returns ``{path: what happened}``."""
    report: dict[str, str] = {}
    for path, mod in list(model.named_modules()):
        if not isinstance(mod, (nn.Conv2d, nn.Linear)) or isinstance(mod, MaskedTrainLayer):
            continue
        if any(fnmatch.fnmatchcase(path, g) for g in skip):
            report[path] = "dense: skipped"
            continue
        why = trainable(mod)
        masker = make_masker(path, mod) if why is None else None
        if masker is None:
            report[path] = f"dense: {why or 'the masker does not fit its shape'}"
            continue
        _set(model, path, MaskedTrainLayer(mod, masker, decay))
        report[path] = "masked"
    return report


def unwrap_layers(model: nn.Module) -> nn.Module:
    """Swap every :class:`MaskedTrainLayer` back for its layer with the forward mask applied (in place)."""
    for path, mod in list(model.named_modules()):
        if isinstance(mod, MaskedTrainLayer):
            _set(model, path, mod.sparse_layer())
    return model


def masked_layers(model: nn.Module) -> dict[str, MaskedTrainLayer]:
    return {p: m for p, m in model.named_modules() if isinstance(m, MaskedTrainLayer)}


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


__all__ = ["MaskedTrainLayer", "wrap_layers", "unwrap_layers", "masked_layers", "trainable"]
