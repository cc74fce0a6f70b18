"""Recurrent layers in an ONNX export: one ONNX LSTM / GRU / RNN op per layer, for any sequence length.

``torch.export`` traces ``aten.lstm`` / ``aten.gru`` through their step-by-step meta functions, which
fix the time length at the example's: a language model's file took only sequences of the example's
length, even where its token inputs were declared dynamic. While a graph is exported,
:func:`exportable_recurrence` retargets :func:`qgraph.recurrent.run_recurrent` to the custom op
``qgraph::rnn`` (eager: the layer itself; its fake function keeps the time dim symbolic; in ONNX:
``backends/onnx_rnn.py``). ONNX's LSTM has no projection: an LSTM with ``proj_size`` becomes one op
per layer that carries the unprojected state, followed by the projection (:func:`_projected_lstm`).

Packed sequences

A captured graph keeps ``pack_padded_sequence`` → :func:`qgraph.recurrent.run_packed` →
``pad_packed_sequence`` as opaque calls (``qgraph.packed_sequences``). ``torch.export`` cannot trace
the packing: its sizes (``batch_sizes``) depend on the lengths' values. ONNX's recurrent ops take a
padded batch and each row's length instead, and compute what the packed layer computes: each row runs
for its own length (the reverse direction starts from the row's last valid step), the state returned
is the one after that step, and outputs past the length are zero.

While a graph is exported, :func:`exportable_recurrence` retargets the three calls to functions on a
:class:`Padded` batch (the padded tensor, the lengths and its layout): packing keeps the padded tensor,
the layer becomes the custom op ``qgraph::packed_rnn`` (eager: the real packed layer; in ONNX:
``backends/onnx_rnn.py``) and unpacking trims the time axis to the longest row, or pads it to
``total_length``. A graph that reads a packed sequence's own fields (``.data``, ``.batch_sizes``)
fails the export with an ``AttributeError`` on :class:`Padded`, never with a silently different file.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.fx as fx
from torch.nn.utils import rnn

from qgraph.packed_sequences import pack_padded, pad_packed
from qgraph.recurrent import run_packed, run_recurrent


class Padded(NamedTuple):
    """A packed sequence as ONNX sees it: ``padded`` ([N, T, F] if ``batch_first`` else [T, N, F],
    zero past each row's length once a layer wrote it) and the rows' ``lengths``."""

    padded: torch.Tensor
    lengths: torch.Tensor
    batch_first: bool


@torch.library.custom_op("qgraph::packed_rnn", mutates_args=())
def packed_rnn(x: torch.Tensor, lengths: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None,
               weights: list[torch.Tensor], mode: str, has_biases: bool, num_layers: int, bidirectional: bool,
               batch_first: bool, hidden_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A recurrent layer on a padded batch whose rows have ``lengths``: ``(output, h_n, c_n)``, the
    output padded with zeros to ``x``'s time length, ``c_n`` empty unless ``mode`` is LSTM."""
    time = x.shape[1 if batch_first else 0]
    packed = rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=batch_first, enforce_sorted=False)
    hx = None if h0 is None else ((h0, c0) if mode == "LSTM" else h0)
    out, hidden = run_packed(packed, hx, list(weights), mode, has_biases, num_layers, bidirectional, batch_first, hidden_size, 0)
    y, _ = rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=time)
    if mode == "LSTM":
        return y, hidden[0].clone(), hidden[1].clone()
    return y, hidden.clone(), x.new_zeros(0)


@packed_rnn.register_fake
def _rnn_shapes(x, lengths, h0, c0, weights, mode, has_biases, num_layers, bidirectional, batch_first, hidden_size):
    states = num_layers * (2 if bidirectional else 1)
    n = x.shape[0 if batch_first else 1]
    y = x.new_empty(list(x.shape[:-1]) + [(2 if bidirectional else 1) * hidden_size])
    return y, x.new_empty(states, n, hidden_size), x.new_empty(states, n, hidden_size) if mode == "LSTM" else x.new_empty(0)


@torch.library.custom_op("qgraph::rnn", mutates_args=())
def rnn_layer(x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None, weights: list[torch.Tensor], mode: str,
              has_biases: bool, num_layers: int, bidirectional: bool, batch_first: bool,
              hidden_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A recurrent layer on a batched input (every row runs the whole time axis): ``(output, h_n, c_n)``,
    ``c_n`` empty unless ``mode`` is LSTM."""
    hx = None if h0 is None else ((h0, c0) if mode == "LSTM" else h0)
    y, hidden = run_recurrent(x, hx, list(weights), mode, has_biases, num_layers, bidirectional, batch_first, hidden_size, 0)
    if mode == "LSTM":
        return y, hidden[0], hidden[1]
    return y, hidden, x.new_zeros(0)


@rnn_layer.register_fake
def _(x, h0, c0, weights, mode, has_biases, num_layers, bidirectional, batch_first, hidden_size):
    return _rnn_shapes(x, None, h0, c0, weights, mode, has_biases, num_layers, bidirectional, batch_first, hidden_size)


def recurrent_for_export(x, hx, weights: list, mode: str, has_biases: bool, num_layers: int, bidirectional: bool,
                         batch_first: bool, hidden_size: int, proj_size: int):
    """:func:`qgraph.recurrent.run_recurrent` as ``qgraph::rnn`` (an unbatched input as a batch of one)."""
    lstm, batched = mode == "LSTM", x.dim() == 3
    if not batched:
        x = x.unsqueeze(0 if batch_first else 1)
        if hx is not None:
            hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
    h0, c0 = (hx if lstm else (hx, None)) if hx is not None else (None, None)
    if proj_size:
        y, h, c = _projected_lstm(x, h0, c0, list(weights), has_biases, num_layers, bidirectional, batch_first, hidden_size)
    else:
        y, h, c = rnn_layer(x, h0, c0, list(weights), mode, has_biases, num_layers, bidirectional, batch_first, hidden_size)
    if not batched:
        y, h, c = y.squeeze(0 if batch_first else 1), h.squeeze(1), c.squeeze(1) if lstm else c
    return y, ((h, c) if lstm else h)


def _projected_lstm(x, h0, c0, weights: list, has_biases: bool, num_layers: int, bidirectional: bool, batch_first: bool,
                    hidden_size: int, lengths=None):
    """An LSTM with ``proj_size`` as one ``qgraph::rnn`` LSTM per layer, which has no projection: the
    state it carries is the unprojected ``o * tanh(c)`` (``hidden_size``), whose recurrent weight is
    ``W_hh @ W_hr``; each layer's outputs and final state are then projected by ``W_hr``. A given
    projected ``h0`` enters as extra input features on the direction's first step (the forward
    direction's step 0, the reverse one's last), read by ``W_hh``, with the carried state starting at
    zero: the same gates as ``W_hh @ h0``. Batched input (``[N, T, K]`` or ``[T, N, K]``); with ``lengths``
    (a padded batch, ``qgraph::packed_rnn``) the reverse direction starts at each row's last valid step."""
    dirs = 2 if bidirectional else 1
    per = 5 if has_biases else 3  # weight_ih, weight_hh[, bias_ih, bias_hh], weight_hr
    if batch_first:
        x = x.transpose(0, 1)
    steps, n = x.shape[0], x.shape[1]
    hs, cs = [], []
    for layer in range(num_layers):
        groups = [weights[(layer * dirs + k) * per:(layer * dirs + k + 1) * per] for k in range(dirs)]
        inputs, w_ih = x, [g[0] for g in groups]
        if h0 is not None:
            step = torch.arange(steps, device=x.device)[:, None]
            last = (lengths.to(x.device) - 1)[None, :] if lengths is not None else steps - 1
            firsts = []
            for k, g in enumerate(groups):
                first = (step == 0) if k == 0 else (step == last)  # [T, N] or [T, 1]
                firsts.append(first.unsqueeze(-1).to(x.dtype) * h0[layer * dirs + k])
                w_ih[k] = torch.cat([g[0]] + [g[1] if j == k else torch.zeros_like(g[1]) for j in range(dirs)], dim=1)
            inputs = torch.cat([x, *[f.expand(steps, n, -1) for f in firsts]], dim=-1)
        flat = []
        for k, g in enumerate(groups):
            flat += [w_ih[k], g[1] @ g[-1]] + list(g[2:4] if has_biases else [])
        start = None if c0 is None else c0[layer * dirs:(layer + 1) * dirs]
        zero = None if c0 is None else c0.new_zeros(dirs, n, hidden_size)
        if lengths is None:
            y, h, c = rnn_layer(inputs, zero, start, flat, "LSTM", has_biases, 1, bidirectional, False, hidden_size)
        else:
            y, h, c = packed_rnn(inputs, lengths, zero, start, flat, "LSTM", has_biases, 1, bidirectional, False, hidden_size)
        x = torch.cat([y[..., k * hidden_size:(k + 1) * hidden_size] @ g[-1].T for k, g in enumerate(groups)], dim=-1)
        hs += [h[k] @ g[-1].T for k, g in enumerate(groups)]
        cs += [c[k] for k in range(dirs)]
    return (x.transpose(0, 1) if batch_first else x), torch.stack(hs), torch.stack(cs)


def pack_for_export(input, lengths, batch_first: bool = False, enforce_sorted: bool = True) -> Padded:
    """``pack_padded_sequence`` for the exporter: the padded tensor and lengths, unpacked. The file
    accepts rows in any order, where ``enforce_sorted=True`` would have refused unsorted ones."""
    return Padded(input, torch.as_tensor(lengths), batch_first)


def run_for_export(packed, hx, weights: list, mode: str, has_biases: bool, num_layers: int, bidirectional: bool,
                   batch_first: bool, hidden_size: int, proj_size: int):
    """:func:`qgraph.recurrent.run_packed` on a :class:`Padded` batch, as ``qgraph::packed_rnn``."""
    if not isinstance(packed, Padded):
        return run_packed(packed, hx, weights, mode, has_biases, num_layers, bidirectional, batch_first, hidden_size, proj_size)
    lstm = mode == "LSTM"
    h0, c0 = (hx if lstm else (hx, None)) if hx is not None else (None, None)
    if proj_size:
        y, h, c = _projected_lstm(packed.padded, h0, c0, list(weights), has_biases, num_layers, bidirectional, packed.batch_first,
                                  hidden_size, packed.lengths)
        return Padded(y, packed.lengths, packed.batch_first), (h, c)
    y, h, c = packed_rnn(packed.padded, packed.lengths, h0, c0, list(weights), mode, has_biases, num_layers, bidirectional,
                         packed.batch_first, hidden_size)
    return Padded(y, packed.lengths, packed.batch_first), ((h, c) if lstm else h)


def pad_for_export(sequence, batch_first: bool = False, padding_value: float = 0.0, total_length=None):
    """``pad_packed_sequence`` for the exporter: ``(padded, lengths)``, the time axis as long as the
    longest row (a size the file computes from the lengths) or ``total_length``."""
    if not isinstance(sequence, Padded):
        return rnn.pad_packed_sequence(sequence, batch_first, padding_value, total_length)
    y, lengths = sequence.padded, sequence.lengths
    if sequence.batch_first != batch_first:
        y = y.transpose(0, 1)
    axis = 1 if batch_first else 0
    time = y.shape[axis]
    if total_length is None:
        longest = lengths.max().item()
        torch._check(longest >= 0)
        torch._check(longest <= time)
        y = y.narrow(axis, 0, longest)
    elif total_length != time:
        y = y.narrow(axis, 0, total_length) if total_length < time else torch.cat(
            [y, y.new_zeros(*(total_length - time if d == axis else s for d, s in enumerate(y.shape)))], axis)
    if padding_value != 0:
        steps = torch.arange(y.shape[axis], device=y.device)
        valid = steps[None, :] < lengths.to(y.device)[:, None]  # [N, T]
        y = torch.where((valid if batch_first else valid.T).unsqueeze(-1), y, padding_value)
    return y, lengths.to(torch.int64)


_PASS_THROUGH = {"contiguous", "clone", "detach", "float", "to"}


def state_inputs(gm: torch.nn.Module) -> set[str]:
    """Names of ``gm``'s inputs that reach a recurrent layer's initial state (``hx``) directly (through
    tuple indexing, ``contiguous``, ``detach``, ...): ``[layers, N, H]`` tensors whose dim 0 is no time
    axis, although they look like a sequence-first time series."""
    import operator

    from torch.utils import _pytree as pytree

    graph = getattr(gm, "graph", None)
    if not isinstance(graph, fx.Graph):
        return set()
    found: set[str] = set()
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in (run_recurrent, run_packed) or len(node.args) < 2:
            continue
        todo = [n for n in pytree.tree_leaves(node.args[1]) if isinstance(n, fx.Node)]
        while todo:
            n = todo.pop()
            if n.op == "placeholder":
                found.add(n.target)
            elif (n.op == "call_function" and n.target is operator.getitem) or (n.op == "call_method" and n.target in _PASS_THROUGH):
                todo.append(n.args[0])
    return found


_RETARGET = {pack_padded: pack_for_export, run_packed: run_for_export, pad_packed: pad_for_export,
             run_recurrent: recurrent_for_export}


@contextlib.contextmanager
def exportable_recurrence(gm: torch.nn.Module):
    """While exporting ``gm``: its recurrent layers run as ``qgraph::rnn`` and its packing calls on
    :class:`Padded` batches (no-op for a graph without them). The targets are restored afterwards."""
    graph = getattr(gm, "graph", None)
    nodes = [n for n in graph.nodes if n.op == "call_function" and n.target in _RETARGET] if isinstance(graph, fx.Graph) else []
    if not nodes:
        yield
        return
    originals = [n.target for n in nodes]
    for n in nodes:
        n.target = _RETARGET[n.target]
    gm.recompile()
    try:
        yield
    finally:
        for n, target in zip(nodes, originals):
            n.target = target
        gm.recompile()
