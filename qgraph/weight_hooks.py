"""Weights that a forward pre-hook computes: ``torch.nn.utils.prune``, the hook-based
``torch.nn.utils.weight_norm`` and ``spectral_norm``.

Each of these keeps the real parameters under other names (``weight_orig`` and ``weight_mask``;
``weight_g`` and ``weight_v``; ``weight_orig``, ``weight_u`` and ``weight_v``) and writes ``weight``
as a plain tensor attribute before every call. That tensor is the product of an autograd graph, so
``copy.deepcopy`` refuses the module (the error blames weight_norm even for pruning), and
``torch.export`` refuses an attribute that is neither a parameter nor a buffer.

qgraph quantizes the weight the model computes, so its copy of the model gets that weight as an
ordinary parameter, the way ``prune.remove``, ``remove_weight_norm`` and ``remove_spectral_norm`` leave
it (spectral norm with its stored power-iteration vectors, as eval mode uses them). The user's model is
not changed; the capture notes list each weight made ordinary. Pruning masks of weights are returned
too: the quantized graph keeps them, so that training keeps the pruned weights zero. The newer ``torch.nn.utils.parametrize``
forms need none of this: capture reads their weights through the parametrization.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.spectral_norm import SpectralNorm, remove_spectral_norm
from torch.nn.utils.weight_norm import WeightNorm, remove_weight_norm

_KINDS = ((prune.BasePruningMethod, "pruning (torch.nn.utils.prune)"),
          (WeightNorm, "weight_norm"),
          (SpectralNorm, "spectral_norm"))


def _hooks(model: nn.Module) -> Iterator[tuple[str, nn.Module, object, str]]:
    """``(module path, module, hook, what)`` for every weight-computing pre-hook in ``model``."""
    for path, m in model.named_modules():
        for hook in m._forward_pre_hooks.values():
            for cls, what in _KINDS:
                if isinstance(hook, cls):
                    yield path, m, hook, what


def _computed(m: nn.Module, hook) -> torch.Tensor:
    """The weight the hook would write before the next call, in eval mode."""
    if isinstance(hook, prune.BasePruningMethod):
        return hook.apply_mask(m)
    if isinstance(hook, SpectralNorm):
        return hook.compute_weight(m, do_power_iteration=False)
    return hook.compute_weight(m)


def _name(hook) -> str:
    return getattr(hook, "_tensor_name", None) or hook.name  # pruning methods / the two norms


def copy_with_plain_weights(model: nn.Module) -> tuple[nn.Module, list[str], dict[str, torch.Tensor]]:
    """A deep copy of ``model`` whose hook-computed weights are ordinary parameters, a note per weight
    so made (none when the model has no such hooks), and the pruning masks of pruned ``weight``
    parameters by module path (``qgraph.passes.sparsity.PruneMasksPass`` keeps them in the graph)."""
    found = list(_hooks(model))
    if not found:
        return copy.deepcopy(model), [], {}
    saved = []
    try:
        with torch.no_grad():
            for _, m, hook, _ in found:
                name = _name(hook)
                saved.append((m, name, m.__dict__.get(name, None), name in m.__dict__))
                m.__dict__[name] = _computed(m, hook).detach()  # a leaf for deepcopy; restored below
        out = copy.deepcopy(model)
    finally:
        for m, name, value, present in reversed(saved):
            if present:
                m.__dict__[name] = value
            else:
                m.__dict__.pop(name, None)
    notes, masks = [], {}
    with torch.no_grad():
        for path, m, hook, what in list(_hooks(out)):  # a list: removing a hook changes the dict iterated
            name = _name(hook)
            where = f"{path}.{name}" if path else name
            if isinstance(hook, prune.BasePruningMethod):
                mask = getattr(m, f"{name}_mask").detach().bool()
                prune.remove(m, name)
                if name == "weight":
                    masks[path] = mask
                notes.append(f"{where}: {what} made permanent on qgraph's copy ({1 - float(mask.float().mean()):.0%} "
                             f"zeros, quantized as zeros" + ("; the mask keeps them zero in training)" if name == "weight" else ")"))
            elif isinstance(hook, WeightNorm):
                remove_weight_norm(m, name)
                notes.append(f"{where}: {what} computed once on qgraph's copy (an ordinary weight from here on)")
            else:
                remove_spectral_norm(m, name)
                notes.append(f"{where}: {what} computed once on qgraph's copy with its stored power-iteration vectors")
    return out, notes, masks
