"""Packed sequences in ONNX: ``pack_padded_sequence`` → LSTM/GRU/RNN → ``pad_packed_sequence`` is
written as ONNX recurrent ops with ``sequence_lens`` (``qgraph.recurrent_export``). The export failed in
``torch.export`` before. Each file is run in ONNX Runtime on lengths the example never had (a batch
whose longest row is shorter than the padded input, so the output's time axis shrinks) and compared
with the quantized PyTorch model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from qgraph.backends import ort as ort_backend
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import qgraph


class _Stacked(nn.Module):
    """Sequence-first input; two bidirectional LSTM layers, then a GRU on the first one's packed output
    with an initial state; the padded output trimmed to the longest row (no ``total_length``)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.lstm = nn.LSTM(8, 6, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(12, 7)
        self.head = nn.Linear(7, 3)

    def forward(self, x, lengths):  # x [T, N, 5]
        packed = pack_padded_sequence(self.inp(x), lengths, enforce_sorted=False)
        out, (h, c) = self.lstm(packed)
        out, h2 = self.gru(out, h[-1:, :, :1].expand(1, -1, 7).contiguous())
        padded, lens = pad_packed_sequence(out, batch_first=True)
        return self.head(padded), lens, c


class _RNNPadded(nn.Module):
    """``nn.RNN`` (relu, no biases) with sorted lengths, unpacked with a padding value."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.RNN(4, 6, nonlinearity="relu", bias=False, batch_first=True), nn.Linear(6, 2)

    def forward(self, x, lengths):
        out, _ = self.rnn(pack_padded_sequence(x, lengths, batch_first=True))
        padded, _ = pad_packed_sequence(out, batch_first=True, padding_value=-1.0, total_length=x.shape[1])
        return self.head(padded)


class _Projected(nn.Module):
    """A batch-first bidirectional LSTM with projections (ONNX's LSTM has none) and an initial state."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True, proj_size=3), nn.Linear(6, 2)

    def forward(self, x, lengths, h0, c0):
        out, (h, _) = self.lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), (h0, c0))
        padded, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.head(padded), h


class _ReadsData(nn.Module):
    """Reads the packed output's own ``.data``, which a padded batch does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.GRU(4, 6, batch_first=True), nn.Linear(6, 2)

    def forward(self, x, lengths):
        out, _ = self.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        return self.head(out.data).sum(0)


def _stacked_inputs(lengths, seed: int = 0, steps: int = 9):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(steps, len(lengths), 5, generator=g), torch.tensor(lengths)


def _rnn_inputs(lengths, seed: int = 0, steps: int = 6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(lengths), steps, 4, generator=g), torch.tensor(lengths)


def _proj_inputs(lengths, seed: int = 0, steps: int = 6):
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    return (torch.randn(n, steps, 5, generator=g), torch.tensor(lengths), torch.randn(4, n, 3, generator=g),
            torch.randn(4, n, 6, generator=g))


@pytest.mark.parametrize("build, inputs, example, other, ops", [
    (_Stacked, _stacked_inputs, [9, 4, 7, 2], [5, 1, 3], {"LSTM": 2, "GRU": 1}),
    (_RNNPadded, _rnn_inputs, [6, 5, 3, 3], [4, 4, 2, 1, 1], {"RNN": 1}),
    (_Projected, _proj_inputs, [6, 2, 5, 6], [3, 6, 1], {"LSTM": 2}),
], ids=["stacked-lstm-gru-trimmed", "rnn-sorted-padding-value", "lstm-projections-initial-state"])
def test_packed_sequences_export_as_onnx_recurrent_ops(build, inputs, example, other, ops, tmp_path):
    torch.manual_seed(0)
    model = build().eval()
    args = inputs(example)
    qm = qgraph.quantize(model, args, "w8a8", calib_data=[inputs(example, seed=1)])
    res = qm.export(str(tmp_path / "packed"), formats=("onnx",))
    if build is _Stacked:  # sequence-first: the batch is dim 1 of x, dim 0 of the lengths
        assert res.batch_dims == [1, 0] and res.fixed_shapes is None, res
    file = onnx.load(res.onnx_path)
    found = {t: sum(n.op_type == t for n in file.graph.node) for t in ("LSTM", "GRU", "RNN")}
    assert {t: k for t, k in found.items() if k} == ops
    int8 = {i.name for i in file.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert len(int8) >= 2 * sum(ops.values()), int8  # the recurrent weight matrices stay int8 codes
    # the padded length is dynamic: it was the example's (a batch padded to another length was refused)
    assert "sequence" in [d.dim_param for d in file.graph.input[0].type.tensor_type.shape.dim]
    sess = ort_backend.session(res.onnx_path, exact_int8=True)
    # another batch size, rows shorter than the padded input, and a batch padded longer than the example
    for lengths, steps in ((example, None), (other, None), ([11] + other, 12)):
        x = inputs(lengths, seed=3, **({"steps": steps} if steps else {}))
        with torch.no_grad(), qm.frozen():
            want = qm(*x)
        want = want if isinstance(want, tuple) else (want,)
        got = ort_backend.run(sess, x)
        assert [g.shape for g in got] == [tuple(w.shape) for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)


def test_the_float_model_exports_too(tmp_path):
    """``qgraph.export_onnx`` of the float model (the baseline a quantized file is compared with) failed
    in ``torch.export`` on the packing; it now goes through qgraph's capture."""
    torch.manual_seed(0)
    model = _Stacked().eval()
    qgraph.export_onnx(model, _stacked_inputs([9, 4, 7, 2]), str(tmp_path / "float.onnx"), dynamic_batch=False)
    sess = ort_backend.session(str(tmp_path / "float.onnx"))
    x = _stacked_inputs([8, 9, 1, 5], seed=2)
    with torch.no_grad():
        want = model(*x)
    for g, w in zip(ort_backend.run(sess, x), want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)


def test_a_graph_that_reads_packed_data_fails_the_export_with_a_reason(tmp_path):
    """ONNX has no packed layout, so ``.data`` of a packed sequence cannot be written: the export stops
    with an ``ExportError`` that names the packing, rather than writing a file with other numbers."""
    torch.manual_seed(0)
    args = _rnn_inputs([6, 5, 3, 3])
    qm = qgraph.quantize(_ReadsData().eval(), args, "w8a8")
    with pytest.raises(qgraph.ExportError, match="the graph packs sequences"):
        qm.export(str(tmp_path / "data"), formats=("onnx",))
