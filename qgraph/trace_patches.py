"""Python-level calls torch.fx cannot trace on its own, recorded in the graph for the length of a trace.

* ``len(x)`` of a traced tensor. PyTorch's word_language_model example builds its causal mask as
  ``generate_square_subsequent_mask(len(src))``; ``Proxy.__len__`` must return an int, so fx raises,
  and ``torch.export`` fails on that model too (on the mask check ``nn.TransformerEncoder`` runs on
  the result). While qgraph traces, a ``len`` is put into the namespace of every module whose
  ``forward`` the model runs: on a traced value it records a call of :func:`length` (a tensor's
  ``size(0)``, which ``torch.export`` keeps symbolic; a list's length), anywhere else it is the builtin.
  The name is removed after tracing.
* ``torch.zeros(x.size(0), hidden)``, the way every RNN tutorial makes its initial state (and
  ``ones`` / ``empty`` / ``rand`` / ``randn``). torch's argument parser takes a traced first size for
  the whole size and raises ``zeros() takes 1 positional argument but 2 were given``; the same call with
  the sizes as one tuple traces. While qgraph traces, these functions (in ``torch`` and under names a
  model's module imported them as) pass the sizes as a tuple when one of them is traced.
* ``table[:x.size(0)]``: a tensor that is not traced (a buffer: the PyTorch Transformer tutorial's
  positional encoding, ``self.pe[:x.size(0)]``) indexed by a traced size. ``Tensor.__getitem__``
  raises "slice indices must be integers"; while qgraph traces, such an index records a ``getitem``
  of the tensor (fx reads a buffer of the model as ``get_attr``).

* ``self.window_ = self.window_.to(x.device)``: a ``forward`` that assigns a plain attribute stores
  the traced value on the module (SincNet). The GraphModule then copied the fx Proxy, the graph check
  failed, and ``torch.export``, run next on the same module, found Proxies in it. Every module's plain
  attributes and buffers are put back when a trace ends (:func:`attributes_restored`).

Before this, each sent a model to the ``torch.export`` fallback, made a module a float leaf, or left no
route at all. The patches are process-wide while one trace runs (as torch.fx's own autowrapping of
``math`` functions is), fall through to the original wherever no traced value is involved, and are
undone when the trace ends.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import operator

import torch
import torch.fx as fx
from torch import nn

_SIZED_FACTORIES = ("zeros", "ones", "empty", "rand", "randn")


def length(obj) -> int:
    """``len(obj)``, as a traced graph records it: a tensor's ``size(0)``, which ``torch.export`` keeps
    symbolic (``len`` of a tensor would fix that dim to the example's size)."""
    return obj.size(0) if isinstance(obj, torch.Tensor) else builtins.len(obj)


def _len(obj):
    if isinstance(obj, fx.Proxy):
        return obj.tracer.create_proxy("call_function", length, (obj,), {})
    return builtins.len(obj)


def _sizes_as_tuple(factory):
    @functools.wraps(factory)
    def call(*args, **kwargs):
        if len(args) > 1 and any(isinstance(a, fx.Proxy) for a in args):
            return factory(tuple(args), **kwargs)
        return factory(*args, **kwargs)

    return call


def _traced_index(index) -> fx.Proxy | None:
    """The first traced value in a tensor index (a slice bound, an index, inside a tuple)."""
    parts = index if isinstance(index, tuple) else (index,)
    for p in parts:
        for v in (p.start, p.stop, p.step) if isinstance(p, slice) else (p,):
            if isinstance(v, fx.Proxy):
                return v
    return None


def _getitem(self, index):
    proxy = _traced_index(index)
    if proxy is not None:
        return proxy.tracer.create_proxy("call_function", operator.getitem, (self, index), {})
    return _TENSOR_GETITEM(self, index)


_TENSOR_GETITEM = torch.Tensor.__getitem__


def forward_globals(m: nn.Module) -> dict | None:
    """The module namespace ``type(m).forward`` was written in (None for a TorchScript module, whose
    ``forward`` is no Python function)."""
    try:
        return type(m).forward.__globals__
    except Exception:  # noqa: BLE001 - ScriptModule's forward descriptor raises its own AttributeError on access
        return None


@contextlib.contextmanager
def traceable_calls(model: nn.Module):
    """While tracing ``model``: ``len`` of a traced value, sized factories with a traced size and
    tensors indexed by a traced value trace."""
    namespaces = list({id(g): g for g in map(forward_globals, model.modules()) if g is not None}.values())
    added = [ns for ns in namespaces if "len" not in ns]
    originals = {getattr(torch, name): _sizes_as_tuple(getattr(torch, name)) for name in _SIZED_FACTORIES}
    patched = []
    try:
        for ns in added:
            ns["len"] = _len
        torch.Tensor.__getitem__ = _getitem
        for ns in [vars(torch)] + namespaces:
            for name, value in list(ns.items()):
                if callable(value) and not isinstance(value, type) and _hashable(value) and value in originals:
                    ns[name] = originals[value]
                    patched.append((ns, name, value))
        yield
    finally:
        if torch.Tensor.__dict__.get("__getitem__") is _getitem:
            del torch.Tensor.__getitem__  # back to TensorBase's slot
        for ns, name, value in reversed(patched):
            ns[name] = value
        for ns in added:
            if ns.get("len") is _len:
                del ns["len"]


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


_MODULE_DICTS = ("_parameters", "_buffers", "_modules")


@contextlib.contextmanager
def attributes_restored(model: nn.Module):
    """Every module's plain attributes and buffers as they were before the block: a trace may assign
    traced values to them. New attributes stay (fx keeps the constants a graph reads as
    ``_tensor_constant<i>`` on the root) unless they hold traced values. Yields a list that names,
    after the block, each attribute that was assigned a traced value (``path.name``)."""
    saved = [(path, m, {k: v for k, v in vars(m).items() if k not in _MODULE_DICTS}, dict(m._buffers))
             for path, m in model.named_modules() if not isinstance(m, torch.jit.ScriptModule)]  # fx does not trace into those
    assigned: list[str] = []
    try:
        yield assigned
    finally:
        for path, m, _, _ in saved:
            assigned += [f"{path}.{k}" if path else k for k, v in vars(m).items()
                         if k not in _MODULE_DICTS and isinstance(v, fx.Proxy)]
        for _, m, attrs, buffers in saved:
            for k in [k for k, v in vars(m).items() if k not in attrs and k not in _MODULE_DICTS and isinstance(v, fx.Proxy)]:
                delattr(m, k)
            for k, v in attrs.items():
                if vars(m).get(k) is not v:
                    object.__setattr__(m, k, v)
            if len(m._buffers) != len(buffers) or any(m._buffers.get(k) is not v for k, v in buffers.items()):
                m._buffers.clear()
                m._buffers.update(buffers)
