"""Packed sequences (``nn.utils.rnn.pack_padded_sequence``) through symbolic tracing.

NLP tutorials feed an LSTM variable-length rows as ``pack_padded_sequence(x, lengths, ...)``. fx
cannot trace into that function (it reads the lengths' values), and ``torch.export`` fails on it too,
so no capture route handled such a model at all. While qgraph traces, :func:`opaque_packing` makes
``pack_padded_sequence`` and ``pad_packed_sequence`` opaque calls in the graph (:func:`pack_padded`,
:func:`pad_packed`), as ``torch.fx.wrap`` would, for calls through ``torch.nn.utils.rnn`` and for names
a model's module imported from it. The recurrent layer then takes the ``PackedSequence`` as a module
call, which the canonicalize pass rewrites into :func:`qgraph.recurrent.run_packed` so its weights are
quantized like those of a layer on tensors. The graph runs in PyTorch (calibration, QAT, qpack); an
ONNX export writes the layers as ONNX recurrent ops on the padded batch (``qgraph.recurrent_export``).
"""

from __future__ import annotations

import contextlib

import torch.fx as fx
from torch import nn
from torch.nn.utils import rnn
from torch.utils import _pytree as pytree

from qgraph.trace_patches import forward_globals


def pack_padded(*args, **kwargs):
    """``pack_padded_sequence``, as one opaque call in a traced graph."""
    return rnn.pack_padded_sequence(*args, **kwargs)


def pad_packed(*args, **kwargs):
    """``pad_packed_sequence``, as one opaque call in a traced graph."""
    return rnn.pad_packed_sequence(*args, **kwargs)


_OPAQUE = {"pack_padded_sequence": pack_padded, "pad_packed_sequence": pad_packed}


def _recorded(real, target):
    def call(*args, **kwargs):
        proxy = next((a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, fx.Proxy)), None)
        if proxy is None:
            return real(*args, **kwargs)
        return proxy.tracer.create_proxy("call_function", target, args, kwargs)

    return call


@contextlib.contextmanager
def opaque_packing(model: nn.Module):
    """While tracing ``model``: calls of the packing functions on traced values become graph nodes."""
    namespaces = [vars(rnn)] + list({id(g): g for g in map(forward_globals, model.modules()) if g is not None}.values())
    reals = {getattr(rnn, name): target for name, target in _OPAQUE.items()}
    patched = []
    try:
        for ns in namespaces:
            for name, value in list(ns.items()):
                if callable(value) and value in reals:
                    ns[name] = _recorded(value, reals[value])
                    patched.append((ns, name, value))
        yield
    finally:
        for ns, name, value in reversed(patched):
            ns[name] = value


def _packing_sites(gm: fx.GraphModule) -> str | None:
    from qgraph.ops import module_path

    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (pack_padded, pad_packed)]
    return ", ".join(sorted({module_path(n) or "the model's own forward" for n in calls})) if calls else None


def packing_note(gm: fx.GraphModule) -> str | None:
    """The capture note for a graph that packs sequences, or None."""
    where = _packing_sites(gm)
    if where is None:
        return None
    return (f"packed sequences ({where}): pack_padded_sequence / pad_packed_sequence are opaque calls in the graph; the "
            "recurrent layers run on the packed batch in PyTorch, and an ONNX file runs them on the padded batch with each "
            "row's length (LSTM / GRU / RNN sequence_lens)")


def packing_export_failure(gm: fx.GraphModule) -> str | None:
    """Why an ONNX export of a graph that packs sequences may have failed, or None for other graphs."""
    where = _packing_sites(gm)
    if where is None:
        return None
    return (f"the graph packs sequences ({where}) and ONNX has no packed layout. The file runs recurrent layers on the "
            "padded batch with each row's length, which covers pack_padded_sequence → LSTM / GRU / RNN (stacked, "
            "bidirectional, with an initial state) → pad_packed_sequence; any other use of a packed sequence (its .data or "
            ".batch_sizes, another function on it) has no translation")
