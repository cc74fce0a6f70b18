"""``qgraph::rnn`` and ``qgraph::packed_rnn`` (recurrent layers on a batch and on packed sequences,
``qgraph.recurrent_export``) as ONNX ``LSTM`` / ``GRU`` / ``RNN`` ops, one op per layer; on packed
sequences with ``sequence_lens``. The time length is the input's, whatever it is.

ONNX orders gates differently from PyTorch: an LSTM's ``i f g o`` rows become ``i o f c``, a GRU's
``r z n`` become ``z r h`` (with ``linear_before_reset=1``, PyTorch's GRU: the reset gate scales
``W_hn h + b_hn``). Weights are ``[directions, gates·H, K]`` and the biases ``W_b`` and ``R_b`` one
``[directions, 2·gates·H]`` row; the reorder runs on the dequantized weights, so the int8 initializers
stay as they were quantized. Each layer's ``Y [T, directions, N, H]`` becomes the next layer's
``[T, N, directions·H]`` input, and the states of every layer are concatenated in PyTorch's order
(layer-major, forward before reverse).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript import opset21 as op

_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}  # ONNX's gate order, as indices of PyTorch's


def _onnx_gates(w, mode: str, hidden_size: int):
    """``w``'s gate blocks of rows in ONNX's order: one ``Gather`` (a ``Split`` has several outputs,
    which onnxscript's constant folder skips with a warning for float biases)."""
    if mode not in _ORDER:
        return w
    rows = [gate * hidden_size + j for gate in _ORDER[mode] for j in range(hidden_size)]
    return op.Gather(w, op.Constant(value_ints=rows), axis=0)


def _stack(values: list):
    """``[directions, ...]`` from one value per direction."""
    rows = [op.Unsqueeze(v, op.Constant(value_ints=[0])) for v in values]
    return op.Concat(*rows, axis=0) if len(rows) > 1 else rows[0]


def rnn(x, h0, c0, weights, mode: str, has_biases: bool, num_layers: int, bidirectional: bool, batch_first: bool,
        hidden_size: int):
    return _layers(x, None, h0, c0, weights, mode, has_biases, num_layers, bidirectional, batch_first, hidden_size)


def packed_rnn(x, lengths, h0, c0, weights, mode: str, has_biases: bool, num_layers: int, bidirectional: bool,
               batch_first: bool, hidden_size: int):
    seq = op.Cast(lengths, to=ir.DataType.INT32)
    return _layers(x, seq, h0, c0, weights, mode, has_biases, num_layers, bidirectional, batch_first, hidden_size)


def _layers(x, seq, h0, c0, weights, mode: str, has_biases: bool, num_layers: int, bidirectional: bool, batch_first: bool,
            hidden_size: int):
    """The stacked layers; ``seq``: each row's length (int32), or None where every row runs the whole axis."""
    directions = 2 if bidirectional else 1
    per = 4 if has_biases else 2  # weight_ih, weight_hh[, bias_ih, bias_hh] per layer and direction
    if batch_first:
        x = op.Transpose(x, perm=[1, 0, 2])
    attrs = {"hidden_size": hidden_size, "direction": "bidirectional" if bidirectional else "forward"}
    hs, cs = [], []
    for layer in range(num_layers):
        groups = [weights[(layer * directions + k) * per:(layer * directions + k + 1) * per] for k in range(directions)]
        w = _stack([_onnx_gates(g[0], mode, hidden_size) for g in groups])
        r = _stack([_onnx_gates(g[1], mode, hidden_size) for g in groups])
        b = _stack([op.Concat(_onnx_gates(g[2], mode, hidden_size), _onnx_gates(g[3], mode, hidden_size), axis=0) for g in groups]) if has_biases else None
        rows = (op.Constant(value_ints=[layer * directions]), op.Constant(value_ints=[(layer + 1) * directions]),
                op.Constant(value_ints=[0]))
        ih = op.Slice(h0, *rows) if h0 is not None else None
        if mode == "LSTM":
            ic = op.Slice(c0, *rows) if c0 is not None else None
            y, yh, yc = op.LSTM(x, w, r, b, seq, ih, ic, **attrs)
            cs.append(yc)
        elif mode == "GRU":
            y, yh = op.GRU(x, w, r, b, seq, ih, linear_before_reset=1, **attrs)
        else:
            y, yh = op.RNN(x, w, r, b, seq, ih, activations=["Tanh" if mode == "RNN_TANH" else "Relu"] * directions, **attrs)
        hs.append(yh)
        x = op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
    if batch_first:
        x = op.Transpose(x, perm=[1, 0, 2])
    h = op.Concat(*hs, axis=0) if len(hs) > 1 else hs[0]
    if mode != "LSTM":
        return x, h, op.CastLike(op.ConstantOfShape(op.Constant(value_ints=[0])), x)
    return x, h, op.Concat(*cs, axis=0) if len(cs) > 1 else cs[0]
