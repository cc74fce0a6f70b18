"""``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (and their cells) as one function of their input and weights.

torch.fx keeps a recurrent layer as one opaque module call, so its weight matrices (most of a speech
or OCR model's bytes) had no place for a quantizer. The canonicalize pass replaces the call with
:func:`run_recurrent` (:func:`run_cell`) on ``get_attr`` reads of the module's weights; each weight matrix is then
quantized weight-only where it is read (per gate row, ``qgraph.ops``), as torch.ao's dynamic
quantization does for these layers. The ONNX exporter still writes one LSTM/GRU/RNN op, fed by
DequantizeLinear of int8 initializers.

The function mirrors ``nn.RNNBase.forward`` for tensor inputs (batched or not, ``batch_first``,
initial state given or zero, LSTM projections) in eval mode: dropout between layers is not applied.
:func:`run_packed` does the same on a ``PackedSequence`` (``qgraph.packed_sequences`` keeps the
packing an opaque call while tracing).
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.rnn import PackedSequence

LAYERS = (nn.LSTM, nn.GRU, nn.RNN)
CELLS = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
RECURRENT_MODULES = LAYERS + CELLS


def recurrent_call(node: fx.Node, mod: nn.Module) -> tuple | None:
    """``(function, input, hx)`` of a module call that :func:`run_recurrent` or :func:`run_cell` can
    replace, else None."""
    if type(mod) not in RECURRENT_MODULES or len(node.args) not in (1, 2) or node.kwargs:
        return None
    x = node.args[0]
    if not isinstance(x, fx.Node):
        return None
    hx = node.args[1] if len(node.args) == 2 else None
    if isinstance(mod, LAYERS) and x.meta.get("type") is PackedSequence:  # qgraph.packed_sequences
        return run_packed, x, hx
    tm = x.meta.get("tensor_meta")
    ranks = (2, 3) if isinstance(mod, LAYERS) else (1, 2)
    if tm is None or not hasattr(tm, "shape") or len(tm.shape) not in ranks:
        return None
    return run_recurrent if isinstance(mod, LAYERS) else run_cell, x, hx


def weight_names(mod: nn.Module) -> list[str]:
    """The parameters the function reads, in its order."""
    if isinstance(mod, LAYERS):
        return list(mod._flat_weights_names)
    return ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if mod.bias else [])


def module_config(mod: nn.Module) -> tuple:
    """The arguments of :func:`run_recurrent` / :func:`run_cell` after the weights, for one module."""
    kind = type(mod).__name__.removesuffix("Cell")
    mode = ("RNN_" + mod.nonlinearity.upper()) if kind == "RNN" else kind  # RNN_TANH / RNN_RELU, LSTM, GRU
    if isinstance(mod, CELLS):
        return (mode, mod.hidden_size)
    return (mode, mod.bias, mod.num_layers, mod.bidirectional, mod.batch_first, mod.hidden_size, getattr(mod, "proj_size", 0))


def run_packed(packed: PackedSequence, hx, weights: list, mode: str, has_biases: bool, num_layers: int, bidirectional: bool,
               batch_first: bool, hidden_size: int, proj_size: int):
    """What the module returns on a ``PackedSequence``: ``(packed output, h_n)`` (``(h_n, c_n)`` for an
    LSTM), the state in the caller's row order, as ``nn.RNNBase.forward`` computes it."""
    lstm = mode == "LSTM"
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    layers = num_layers * (2 if bidirectional else 1)
    n = int(batch_sizes[0])
    if hx is None:
        h0 = torch.zeros(layers, n, proj_size or hidden_size, dtype=data.dtype, device=data.device)
        hx = (h0, torch.zeros(layers, n, hidden_size, dtype=data.dtype, device=data.device)) if lstm else h0
    elif sorted_indices is not None:
        hx = tuple(h.index_select(1, sorted_indices) for h in hx) if lstm else hx.index_select(1, sorted_indices)
    config = (has_biases, num_layers, 0.0, False, bidirectional)
    if lstm:
        out, h, c = torch.lstm(data, batch_sizes, hx, weights, *config)
        hidden = (h, c)
    else:
        fn = {"GRU": torch.gru, "RNN_TANH": torch.rnn_tanh, "RNN_RELU": torch.rnn_relu}[mode]
        out, hidden = fn(data, batch_sizes, hx, weights, *config)
    if unsorted_indices is not None:
        hidden = tuple(h.index_select(1, unsorted_indices) for h in hidden) if lstm else hidden.index_select(1, unsorted_indices)
    return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), hidden


def run_cell(x: torch.Tensor, hx, weights: list, mode: str, hidden_size: int):
    """What an ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` returns: ``(h, c)`` or ``h``."""
    lstm = mode == "LSTM"
    batched = x.dim() == 2
    if not batched:
        x = x.unsqueeze(0)
        if hx is not None:
            hx = tuple(h.unsqueeze(0) for h in hx) if lstm else hx.unsqueeze(0)
    if hx is None:
        h0 = torch.zeros(x.shape[0], hidden_size, dtype=x.dtype, device=x.device)
        hx = (h0, h0) if lstm else h0
    else:
        for h in hx if lstm else (hx,):
            if tuple(h.shape) != (x.shape[0], hidden_size):
                raise RuntimeError(f"Expected hidden size {(x.shape[0], hidden_size)}, got {list(h.shape)}")
    w_ih, w_hh, *biases = weights
    b_ih, b_hh = biases if biases else (None, None)
    if lstm:
        out = torch.lstm_cell(x, hx, w_ih, w_hh, b_ih, b_hh)
        return out if batched else tuple(o.squeeze(0) for o in out)
    fn = {"GRU": torch.gru_cell, "RNN_TANH": torch.rnn_tanh_cell, "RNN_RELU": torch.rnn_relu_cell}[mode]
    out = fn(x, hx, w_ih, w_hh, b_ih, b_hh)
    return out if batched else out.squeeze(0)


def run_recurrent(x: torch.Tensor, hx, weights: list, mode: str, has_biases: bool, num_layers: int, bidirectional: bool,
                  batch_first: bool, hidden_size: int, proj_size: int):
    """What the module returns: ``(output, h_n)``, or ``(output, (h_n, c_n))`` for an LSTM."""
    lstm = mode == "LSTM"
    batched = x.dim() == 3
    if not batched:
        x = x.unsqueeze(0 if batch_first else 1)
        if hx is not None:
            hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
    n, layers = x.shape[0 if batch_first else 1], num_layers * (2 if bidirectional else 1)
    if hx is None:
        h0 = torch.zeros(layers, n, proj_size or hidden_size, dtype=x.dtype, device=x.device)
        hx = (h0, torch.zeros(layers, n, hidden_size, dtype=x.dtype, device=x.device)) if lstm else h0
    else:  # the module's own check: the raw op would run on a state of another batch size
        for h, size in zip(hx if lstm else (hx,), (proj_size or hidden_size, hidden_size)):
            if tuple(h.shape) != (layers, n, size):
                raise RuntimeError(f"Expected hidden size {(layers, n, size)}, got {list(h.shape)}")
    config = (has_biases, num_layers, 0.0, False, bidirectional, batch_first)
    if lstm:
        out, h, c = torch.lstm(x, hx, weights, *config)
        hidden = (h, c)
    else:
        fn = {"GRU": torch.gru, "RNN_TANH": torch.rnn_tanh, "RNN_RELU": torch.rnn_relu}[mode]
        out, hidden = fn(x, hx, weights, *config)
    if not batched:
        out = out.squeeze(0 if batch_first else 1)
        hidden = tuple(h.squeeze(1) for h in hidden) if lstm else hidden.squeeze(1)
    return out, hidden
