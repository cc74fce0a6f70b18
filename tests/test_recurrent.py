"""LSTM/GRU/RNN layers and cells: their weight matrices are quantized weight-only (they stayed float,
most of a speech or OCR model's bytes), the float graph stays exact, the file keeps one LSTM/GRU op
fed by int8 initializers, and qpack round trips are exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from qgraph.backends import ort as ort_backend
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import qgraph


class _Layer(nn.Module):
    def __init__(self, cell, out: int = 16, **options) -> None:
        super().__init__()
        self.rnn, self.fc = cell(8, 16, **options), nn.Linear(out, 3)

    def forward(self, x, h=None):
        y, _ = self.rnn(x) if h is None else self.rnn(x, h)
        return self.fc(y)


class _AnyArgs(_Layer):  # *args: captured by torch.export, where the layer is aten.lstm on its weights
    def forward(self, *args):
        y, _ = self.rnn(*args)
        return self.fc(y)


class _CellLoop(nn.Module):
    def __init__(self, cell) -> None:
        super().__init__()
        self.cell, self.fc = cell(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = None
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.fc(h[0] if isinstance(h, tuple) else h)


_CASES = {
    "lstm-batch-first": (lambda: _Layer(nn.LSTM, batch_first=True), (torch.randn(4, 6, 8),), "LSTM", 2),
    "gru-2-layers": (lambda: _Layer(nn.GRU, num_layers=2, batch_first=True), (torch.randn(4, 6, 8),), "GRU", 4),
    "rnn-relu": (lambda: _Layer(nn.RNN, nonlinearity="relu", batch_first=True), (torch.randn(4, 6, 8),), None, 2),
    "lstm-unbatched": (lambda: _Layer(nn.LSTM), (torch.randn(6, 8),), "LSTM", 2),
    "gru-initial-state": (lambda: _Layer(nn.GRU, batch_first=True), (torch.randn(4, 6, 8), torch.randn(1, 4, 16)), "GRU", 2),
    "lstm-torch-export": (lambda: _AnyArgs(nn.LSTM, batch_first=True), (torch.randn(4, 6, 8),), "LSTM", 2),
    "lstm-cell": (lambda: _CellLoop(nn.LSTMCell), (torch.randn(4, 5, 8),), None, 2),
    "gru-cell": (lambda: _CellLoop(nn.GRUCell), (torch.randn(4, 5, 8),), None, 2),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_recurrent_weights_are_quantized_and_export(case, tmp_path):
    build, args, onnx_op, matrices = _CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    qm = qgraph.quantize(model, args, "w8a8", calib_data=[args])
    with torch.no_grad():
        torch.testing.assert_close(qm._float_graph(*args), model(*args), rtol=1e-6, atol=1e-6)  # the rewrite is exact
    recurrent = sorted(k for k in qm.quantizers() if k.startswith(("rnn.", "cell.")))
    assert len(recurrent) == matrices and all(qm.quantizers()[k].role == "weight" for k in recurrent), recurrent
    assert not any(n.startswith("stayed float") for n in qm.qgraph.capture.notes), qm.qgraph.capture.notes
    res = qm.export(str(tmp_path / case))
    assert res.max_abs_error <= res.tolerance
    graph = onnx.load(res.onnx_path).graph
    if onnx_op is not None:
        assert onnx_op in {n.op_type for n in graph.node}
    int8_matrices = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8_matrices) == matrices + 1, int8_matrices  # and the linear head's
    back = qgraph.load(res.qpack_path, build().eval(), args)
    with torch.no_grad(), qm.frozen():
        assert torch.equal(back(*args), qm(*args))


def test_a_hidden_state_of_another_batch_is_refused_as_the_module_does():
    """The raw ``torch.gru`` runs on a state of another batch size; the module (and the rewrite) refuse it,
    so the export check sees a model that takes only its example's batch and fixes the file's shapes."""
    model = _Layer(nn.GRU, batch_first=True).eval()
    qm = qgraph.quantize(model, (torch.randn(4, 6, 8), torch.randn(1, 4, 16)), "w8a8")
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        model(torch.randn(2, 6, 8), torch.randn(1, 4, 16))
    with pytest.raises(RuntimeError, match="Expected hidden size"), torch.no_grad():
        qm(torch.randn(2, 6, 8), torch.randn(1, 4, 16))


class _WordLM(nn.Module):
    """word_language_model's RNNModel: ids ``[T, N]`` and ``(h, c)`` ``[layers, N, H]`` in, both out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(30, 8), nn.LSTM(8, 16, 2), nn.Linear(16, 30)

    def forward(self, ids, hidden):
        out, hidden = self.rnn(self.embed(ids), hidden)
        return self.head(out), hidden


@pytest.mark.parametrize("case", ["features", "ids-and-state"])
def test_sequence_first_inputs_export_with_a_dynamic_batch_on_dim_1(case, tmp_path):
    """``nn.LSTM``'s default layout, ``[T, N, F]`` (word_language_model: ``[T, N]`` ids and
    ``[layers, N, H]`` states). The export took dim 0 for the batch: the states refused another size
    there, or the file did (the exporter fixes the sequence length inside the LSTM op), and the file
    got the example's shapes. Now dim 1 is tried next, kept where the model runs with it cut to
    another size and ONNX Runtime agrees there: the file's batch is dim 1."""
    torch.manual_seed(0)
    if case == "features":
        model, args = _Layer(nn.LSTM, num_layers=2).eval(), (torch.randn(6, 4, 8),)
        other = (torch.randn(6, 3, 8),)
    else:
        model = _WordLM().eval()
        args = (torch.randint(0, 30, (6, 4)), (torch.randn(2, 4, 16), torch.randn(2, 4, 16)))
        other = (torch.randint(0, 30, (6, 3)), (torch.randn(2, 3, 16), torch.randn(2, 3, 16)))
    qm = qgraph.quantize(model, args, "w8a8")
    res = qm.export(str(tmp_path / "seq_first"), formats=("onnx",))
    assert res.dynamic_batch and res.fixed_shapes is None and res.batch_dims[0] == 1, res
    file = onnx.load(res.onnx_path)
    assert all(i.type.tensor_type.shape.dim[1].dim_param == "batch" for i in file.graph.input)
    sess = ort_backend.session(res.onnx_path, exact_int8=True)
    flat = [t.numpy() for t in torch.utils._pytree.tree_leaves(other)]
    got = sess.run(None, {i.name: v for i, v in zip(sess.get_inputs(), flat)})
    with torch.no_grad(), qm.frozen():
        want = torch.utils._pytree.tree_leaves(qm(*other))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)


class _PackedGRU(nn.Module):
    """``pack_padded_sequence`` / ``pad_packed_sequence`` imported by name, a bidirectional GRU, the padded
    output averaged over time."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(30, 8), nn.GRU(8, 8, batch_first=True, bidirectional=True), nn.Linear(16, 3)

    def forward(self, ids, lengths):
        packed = pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=ids.shape[1])
        return self.head(out.sum(1) / lengths[:, None])


def _lengths_batch(n: int = 4, seed: int = 1) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 30, (n, 7), generator=g), torch.tensor([7 - i % 4 for i in range(n)])


@pytest.mark.parametrize("build", [lambda: __import__("benchmarks.usage_models_seq", fromlist=["PackedLSTM"]).PackedLSTM(), _PackedGRU],
                         ids=["lstm-hidden-state", "bidirectional-gru-padded-output"])
def test_packed_sequences_capture_and_quantize_their_recurrent_weights(build, tmp_path):
    """An LSTM over ``pack_padded_sequence``, as NLP tutorials write it: no capture route handled the model
    (CaptureError). The packing is now an opaque call in the traced graph and the layer runs on the packed
    batch with quantized weights: exact float graph, exact qpack round trip, and an ONNX file (one LSTM /
    GRU op with ``sequence_lens``, ``tests/test_packed_export.py``) that ONNX Runtime runs on other lengths."""
    import torch.nn.utils.rnn as rnn

    torch.manual_seed(0)
    model, args = build().eval(), _lengths_batch()
    qm = qgraph.quantize(model, args, "w8a8", calib_data=[_lengths_batch(seed=2)])
    assert rnn.pack_padded_sequence.__module__ == "torch.nn.utils.rnn"  # patched only while tracing
    with torch.no_grad():
        torch.testing.assert_close(qm._float_graph(*args), model(*args), rtol=1e-6, atol=1e-6)
    assert any(k.startswith("rnn.weight_hh_l0") for k in qm.quantizers())
    assert any(n.startswith("packed sequences") for n in qm.qgraph.capture.notes), qm.qgraph.capture.notes
    res = qm.export(str(tmp_path / "packed"))
    back = qgraph.load(res.qpack_path, build().eval())
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(*args), qm(*args))
    other = _lengths_batch(n=3, seed=4)
    with torch.no_grad(), qm.frozen():
        want = qm(*other).numpy()
    got = ort_backend.session(res.onnx_path, exact_int8=True).run(None, {"ids": other[0].numpy(), "lengths": other[1].numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_an_lstm_export_does_not_depend_on_the_exports_before_it(tmp_path):
    """The exporter decomposes LSTMs into torch's while_loop, which compiles its body with dynamo; after
    a sequence-first and a packed LSTM export in the same process, a batch-first LSTM's file came out
    with the example's shapes (the usage scan's ``lstm`` row read "static batch" after
    ``word_lm_lstm`` and ``packed_lstm``). Each export now starts from a clean dynamo state."""
    torch.manual_seed(0)
    word = qgraph.quantize(_WordLM().eval(), (torch.randint(0, 30, (6, 4)), (torch.randn(2, 4, 16), torch.randn(2, 4, 16))), "w8a8")
    word.export(str(tmp_path / "word"), formats=("onnx",))
    packed = __import__("benchmarks.usage_models_seq", fromlist=["PackedLSTM"]).PackedLSTM().eval()
    qgraph.quantize(packed, _lengths_batch(), "w8a8").export(str(tmp_path / "packed"), formats=("onnx",))
    res = qgraph.quantize(_Layer(nn.LSTM, batch_first=True).eval(), torch.randn(4, 6, 8), "w8a8").export(
        str(tmp_path / "batch_first"), formats=("onnx",))
    assert res.dynamic_batch and res.batch_dims is None and res.fixed_shapes is None, res
