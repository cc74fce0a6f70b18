"""Recurrent layers on whole batches in ONNX: one ONNX LSTM/GRU/RNN per layer (``qgraph::rnn``,
``qgraph.recurrent_export``), whose time length is the input's. ``torch.export`` traced ``aten.lstm``
step by step and fixed the time length at the example's, so a language model's file refused any
other length, and a declared dynamic time dim came out with the example's length on the outputs.
Each file is run in ONNX Runtime at lengths and batch sizes the example never had and compared with
the quantized PyTorch model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from qgraph.backends import ort as ort_backend
from torch import nn
from torch.utils import _pytree as pytree

import qgraph
from qgraph.batch_dim import follows_samples, samples_reversed


def _dims(v) -> list:
    return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]


def _run_and_compare(qm, path: str, inputs: tuple) -> None:
    sess = ort_backend.session(path, exact_int8=True)
    flat = [t.numpy() for t in pytree.tree_leaves(inputs)]
    got = sess.run(None, {i.name: v for i, v in zip(sess.get_inputs(), flat)})
    with torch.no_grad(), qm.frozen():
        want = pytree.tree_leaves(qm(*inputs))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)


class _TimeSeries(nn.Module):
    """A batch-first recurrent layer over float features, time declared dynamic, optional initial state."""

    qgraph_dynamic_dims = {"x": {1: "time"}}

    def __init__(self, cell, **options) -> None:
        super().__init__()
        self.inp, self.rnn = nn.Linear(5, 8), cell(8, 6, batch_first=True, **options)
        self.head = nn.Linear((options.get("proj_size") or 6) * (2 if options.get("bidirectional") else 1), 2)

    def forward(self, x, h=None):
        y, _ = self.rnn(self.inp(x), h)
        return self.head(y)


@pytest.mark.parametrize("cell, options, with_state", [
    (nn.LSTM, {"num_layers": 2, "bidirectional": True}, False),
    (nn.GRU, {"num_layers": 2}, True),
    (nn.RNN, {"nonlinearity": "relu", "bias": False}, True),
    # ONNX's LSTM has no projection; the exporter's own translation gave files ONNX Runtime refused
    (nn.LSTM, {"proj_size": 3}, False),
    (nn.LSTM, {"proj_size": 3, "num_layers": 2, "bidirectional": True}, True),
    (nn.LSTM, {"proj_size": 4, "bias": False}, True),
])
def test_a_declared_time_dim_runs_at_any_length(cell, options, with_state, tmp_path):
    torch.manual_seed(0)
    model = _TimeSeries(cell, **options).eval()
    layers = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)

    def inputs(n, t):
        x = torch.randn(n, t, 5)
        if not with_state:
            return (x,)
        h = torch.randn(layers, n, options.get("proj_size") or 6)
        return (x, (h, torch.randn(layers, n, 6)) if cell is nn.LSTM else h)

    qm = qgraph.quantize(model, inputs(4, 9), "w8a8", calib_data=[inputs(4, 9) for _ in range(3)])
    res = qm.export(str(tmp_path / "series"), formats=("onnx",))
    assert res.dynamic_batch, res
    # a batch-first input beside a [layers, N, H] state: the file used to get the example's shapes
    # (an LSTM's two states at batch 4 are [4, 4, H] with two bidirectional layers: dim 0 fits too)
    assert res.batch_dims == ([0] + [1] * (2 if cell is nn.LSTM else 1) if with_state else None), res
    file = onnx.load(res.onnx_path)
    assert _dims(file.graph.input[0]) == ["batch", "time", 5]
    if with_state:
        assert _dims(file.graph.input[1]) == [layers, "batch", options.get("proj_size") or 6]
    assert _dims(file.graph.output[0]) == ["batch", "time", 2]  # was [batch, 9, 2]: the example's length
    ops = {n.op_type for n in file.graph.node}
    assert cell.__name__ in ops and "Loop" not in ops, ops
    for n, t in ((3, 2), (2, 17)):
        _run_and_compare(qm, res.onnx_path, inputs(n, t))


class _WordLM(nn.Module):
    """word_language_model's RNNModel: ids ``[T, N]`` and ``(h, c)`` ``[layers, N, H]`` in, both out, the
    logits flattened to ``[T·N, tokens]``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(30, 8), nn.LSTM(8, 16, 2), nn.Linear(16, 30)

    def forward(self, ids, hidden):
        out, hidden = self.rnn(self.embed(ids), hidden)
        return self.head(out).view(-1, 30), hidden


def test_a_sequence_first_language_model_takes_any_length_and_batch(tmp_path):
    """Its file used to take only the example's 6 tokens; now both the sequence (dim 0) and the batch
    (dim 1) are dynamic."""
    torch.manual_seed(0)

    def inputs(t, n):
        return torch.randint(0, 30, (t, n)), (torch.randn(2, n, 16), torch.randn(2, n, 16))

    qm = qgraph.quantize(_WordLM().eval(), inputs(6, 4), "w8a8", calib_data=[inputs(6, 4) for _ in range(3)])
    res = qm.export(str(tmp_path / "word_lm"), formats=("onnx",))
    assert res.dynamic_batch and res.batch_dims == [1, 1, 1], res
    file = onnx.load(res.onnx_path)
    assert _dims(file.graph.input[0]) == ["sequence", "batch"]
    # the states look like [T, N, F] time series but are [layers, N, H]: their dim 0 stays fixed
    assert [_dims(i) for i in file.graph.input[1:]] == [[2, "batch", 16]] * 2
    assert _dims(file.graph.output[0]) == ["sequence*batch", 30]  # the exporter's symbols renamed inside expressions
    for t, n in ((3, 2), (11, 5)):
        _run_and_compare(qm, res.onnx_path, inputs(t, n))


def test_a_float_sequence_first_input_keeps_its_batch_on_dim_1(tmp_path):
    """``[T, N, F]`` features: the file now runs at another length on dim 0 too, so the other-batch check
    alone took dim 0 for the batch. Reversing dim 0 does not reverse an LSTM's outputs (each step
    depends on the ones before), so dim 0 is not a batch, and dim 1 is tried and kept."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.rnn = nn.LSTM(8, 16)
    qm = qgraph.quantize(_FirstOutput(model.rnn).eval(), (torch.randn(6, 4, 8),), "w8a8")
    res = qm.export(str(tmp_path / "features"), formats=("onnx",))
    assert res.dynamic_batch and res.batch_dims == [1], res
    _run_and_compare(qm, res.onnx_path, (torch.randn(6, 3, 8),))


class _FirstOutput(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


def test_follows_samples_tells_a_batch_from_a_time_axis():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4)
    flipped = samples_reversed((x,))
    assert torch.equal(flipped[0], x.flip(0))
    linear, lstm = nn.Linear(4, 2), nn.LSTM(4, 2)
    with torch.no_grad():
        assert follows_samples(linear(x), linear(flipped[0]), 5, 1e-6)
        assert follows_samples(linear(x).sum(0), linear(flipped[0]).sum(0), 5, 1e-5)  # a statistic over the batch
        assert not follows_samples(lstm(x)[0], lstm(flipped[0])[0], 5, 1e-3)
        assert not follows_samples((linear(x),), (linear(flipped[0]), linear(x)), 5, 1e-6)  # output counts differ
        per_sample = [{"score": linear(s)} for s in x]  # a list of per-sample outputs (detection models)
        assert follows_samples(per_sample, [{"score": linear(s)} for s in flipped[0]], 5, 1e-6)
        assert not follows_samples(per_sample, [{"score": linear(s)} for s in flipped[0].flip(1)], 5, 1e-6)
    assert samples_reversed((x, torch.randn(4, 3))) is None  # dim 0 sizes differ: no test
    assert samples_reversed((x[:1],)) is None


class _Tagger(nn.Module):
    """A batch-first LSTM tagger over float features, nothing declared (speech frames, sensor series)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.LSTM(5, 8, batch_first=True, bidirectional=True), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


class _LastStep(_Tagger):
    """Reads the example's last step by number: other lengths would read another step."""

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, 8])


def test_a_time_series_beside_recurrent_layers_gets_a_dynamic_length(tmp_path):
    """Like token ids' sequence, a float time series' length stays dynamic where the graph has recurrent
    layers (before: the example's 9 steps only); a model that reads fixed steps keeps its length."""
    torch.manual_seed(0)
    qm = qgraph.quantize(_Tagger().eval(), (torch.randn(4, 9, 5),), "w8a8", calib_data=[(torch.randn(4, 9, 5),)])
    res = qm.export(str(tmp_path / "tagger"), formats=("onnx",))
    file = onnx.load(res.onnx_path)
    assert _dims(file.graph.input[0]) == ["batch", "sequence", 5]
    assert _dims(file.graph.output[0]) == ["batch", "sequence", 3]
    _run_and_compare(qm, res.onnx_path, (torch.randn(2, 30, 5),))

    qm = qgraph.quantize(_LastStep().eval(), (torch.randn(4, 9, 5),), "w8a8", calib_data=[(torch.randn(4, 9, 5),)])
    res = qm.export(str(tmp_path / "last_step"), formats=("onnx",))
    assert res.dynamic_batch and _dims(onnx.load(res.onnx_path).graph.input[0]) == ["batch", 9, 5], res


class _TokenTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(30, 8), nn.Linear(32, 5)
        self.lstm = nn.LSTM(8, 16, 2, batch_first=True, bidirectional=True)

    def forward(self, x):
        return self.fc(self.lstm(self.emb(x))[0])


class _SeriesGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru, self.fc = nn.GRU(4, 8), nn.Linear(8, 2)

    def forward(self, x):  # [T, N, 4], GRU's default layout
        return self.fc(self.gru(x)[0][-1])


class _SeriesProjected(_SeriesGRU):
    def __init__(self) -> None:
        super().__init__()
        self.gru, self.fc = nn.LSTM(4, 8, proj_size=3), nn.Linear(3, 2)  # the exporter's own file failed in ONNX Runtime


@pytest.mark.parametrize("build, example, other, dims", [
    (_TokenTagger, (3, 12), (5, 20), ["batch", "sequence"]),
    (_SeriesGRU, (10, 4, 4), (17, 6, 4), ["sequence", "batch", 4]),
    (_SeriesProjected, (10, 4, 4), (17, 6, 4), ["sequence", "batch", 4])])
def test_the_float_export_of_a_recurrent_model_takes_any_length(build, example, other, dims, tmp_path):
    """``qgraph.export_onnx`` of a float LSTM/GRU model (the baseline a quantized file is compared with)
    went straight to ``torch.export``, which fixes the time length: the tagger's file declared its
    output at the example's 12 steps (ONNX Runtime warned at 20), and the GRU's `[T, N, 4]` file was
    `[batch, 4, 4]` and refused another batch. It now goes through qgraph's capture, as quantized
    models do, with the batch found on dim 1 for a sequence-first input."""
    torch.manual_seed(0)
    model = build().eval()
    make = (lambda s: torch.randint(0, 30, s)) if build is _TokenTagger else torch.randn
    x, x2 = make(example), make(other)
    path = str(tmp_path / "float.onnx")
    proto = qgraph.export_onnx(model, (x,), path)
    assert [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == dims
    out_dims = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == (["batch", "sequence", 5] if build is _TokenTagger else ["batch", 2])
    assert {"LSTM", "GRU"} & {n.op_type for n in proto.graph.node}
    sess = ort_backend.session(path, exact_int8=True)
    got = sess.run(None, {sess.get_inputs()[0].name: x2.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x2).numpy(), rtol=1e-5, atol=1e-5)
