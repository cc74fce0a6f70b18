"""Calls torch.fx cannot trace by itself, as tutorials write them: ``len(src)`` sizing a causal mask
(PyTorch's word_language_model: no capture route handled it), a positional table sliced by
``x.size(0)`` (a float leaf), and ``torch.zeros(x.size(0), hidden)`` making an RNN's initial state (sent
to the ``torch.export`` fallback, which fixed the token length)."""

from __future__ import annotations

import math

import onnx
import torch
from torch import nn

import qgraph
from qgraph import trace_patches


class _Positions(nn.Module):
    """The PyTorch Transformer tutorial's positional encoding: a buffer sliced by ``x.size(0)``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pe", torch.randn(32, 1, 16))

    def forward(self, x):
        return x + self.pe[:x.size(0)]


class _CausalLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(30, 16), _Positions()
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, 0.0), 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 30)

    def forward(self, src):  # [T, N], sequence-first as in word_language_model
        mask = nn.Transformer.generate_square_subsequent_mask(len(src))
        return self.head(self.encoder(self.pos(self.embed(src) * math.sqrt(16)), mask))


_ZEROS = torch.zeros


class _GRUState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(30, 8), nn.GRU(8, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, ids):
        h0 = torch.zeros(1, ids.size(0), 8)
        start = torch.zeros(ids.size(0), 1, dtype=torch.long)  # a first argument traced, more sizes after it
        out, _ = self.rnn(self.embed(torch.cat([start, ids], 1)), h0)
        return self.head(out[:, -1])


def test_len_of_a_traced_tensor_is_recorded_and_stays_dynamic(tmp_path):
    torch.manual_seed(0)
    model, ids = _CausalLM().eval(), torch.randint(0, 30, (7, 3))
    qm = qgraph.quantize(model, (ids,), "w8a8", calib_data=[(torch.randint(0, 30, (7, 3)),)])
    assert qm.qgraph.capture.route == "symbolic_trace" and not qm.qgraph.capture.leaves, qm.qgraph.capture.describe()
    assert any(n.target is trace_patches.length for n in qm.qgraph.graph.nodes)
    assert any(n.op == "get_attr" and n.target == "pos.pe" for n in qm.qgraph.graph.nodes)  # sliced in the graph
    assert "len" not in _CausalLM.forward.__globals__ and "__getitem__" not in torch.Tensor.__dict__  # restored
    other = torch.randint(0, 30, (5, 2))  # another length: the mask follows it
    with torch.no_grad():
        torch.testing.assert_close(qm._float_graph(other), model(other), rtol=1e-5, atol=1e-5)
    res = qm.export(str(tmp_path / "lm"), formats=("onnx",))
    dims = [d.dim_param or d.dim_value for d in onnx.load(res.onnx_path).graph.input[0].type.tensor_type.shape.dim]
    assert all(isinstance(d, str) for d in dims), dims  # neither dim pinned to the example's size


def test_a_factory_sized_by_a_traced_value_traces():
    torch.manual_seed(0)
    model, ids = _GRUState().eval(), torch.randint(0, 30, (4, 6))
    qm = qgraph.quantize(model, (ids,), "w8a8")
    assert qm.qgraph.capture.route == "symbolic_trace", qm.qgraph.capture.notes
    assert torch.zeros is _ZEROS  # restored after tracing
    other = torch.randint(0, 30, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(qm._float_graph(other), model(other), rtol=1e-6, atol=1e-6)


def test_len_of_plain_values_is_the_builtin():
    assert trace_patches._len([1, 2, 3]) == 3 and trace_patches._len(torch.zeros(4, 2)) == 4


class _SincConv(nn.Module):
    """SincNet's ``SincConv_fast``: a plain tensor attribute moved to the input's device in ``forward``
    (and the computed filters kept on the module), band edges clamped by an int and a float bound."""

    def __init__(self) -> None:
        super().__init__()
        self.low_hz_ = nn.Parameter(torch.tensor([[30.0], [200.0], [900.0], [2500.0]]))
        self.window_ = torch.hann_window(9)[None]
        self.n_ = torch.arange(-4, 5).float()[None] / 16000

    def forward(self, x):
        self.window_ = self.window_.to(x.device)
        self.n_ = self.n_.to(x.device)
        low = torch.clamp(self.low_hz_.abs(), 50, 16000 / 2)
        self.filters = (torch.sin(2 * math.pi * low * self.n_) * self.window_).view(4, 1, 9)
        return torch.conv1d(x, self.filters, padding=4).relu().mean(-1)


def test_attributes_assigned_in_forward_are_restored_after_tracing(tmp_path):
    """A ``forward`` that assigns plain attributes stored fx Proxies on qgraph's copy: the graph check
    failed and torch.export, run next on the same copy, found Proxies ("no capture route"). They are
    put back after the trace, the note names them, and the mixed int/float clamp bounds (canonicalize
    rule 13) let the file export. The filters, computed from parameters and buffers moved to the
    input's device, fold into one weight (fold_weights), quantized per filter."""
    g = torch.Generator().manual_seed(0)
    model = _SincConv().eval()
    x = torch.randn(2, 1, 64, generator=g)
    qm = qgraph.quantize(model, x, "w8a8", [torch.randn(8, 1, 64, generator=g) for _ in range(4)])
    assert qm.qgraph.capture.route == "symbolic_trace"
    assert any("forward assigns filters, n_, window_" in n for n in qm.qgraph.capture.notes), qm.qgraph.capture.notes
    assert type(model.window_) is torch.Tensor and not hasattr(model, "filters")  # the user's model untouched
    assert qm.quantizers()["folded_weight_quantizer"].scale.numel() == 4  # per filter: .to(x.device) reads no values
    with torch.no_grad(), qm.frozen():
        assert qgraph.summary.sqnr_db(model(x), qm(x)) > 25
    res = qm.export(str(tmp_path / "sinc"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance
