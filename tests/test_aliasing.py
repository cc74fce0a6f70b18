"""Quantizers go after the in-place writes that fill a value (qgraph/aliasing.py): DeepSeek's attention
fills ``new_empty`` keys through slice views, and a quantizer right after ``new_empty`` read garbage."""

import torch
from torch import nn

import qgraph
from qgraph.aliasing import settled
from qgraph.summary import sqnr_db


class FillThenUse(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 3)

    def forward(self, x):
        k = x.new_empty(x.shape[0], 8)
        k[:, :4].copy_(self.a(x))
        k[:, 4:].copy_(self.b(x))
        return self.out(k)


def _nodes(graph, pred):
    return [n for n in graph.nodes if pred(n)]


def test_settled_is_the_last_write_through_a_view_in_an_exported_graph():
    torch.manual_seed(0)
    gm = torch.export.export(FillThenUse(), (torch.randn(4, 8),), strict=False).module()
    empty = _nodes(gm.graph, lambda n: "new_empty" in str(n.target))[0]
    copies = _nodes(gm.graph, lambda n: "copy_" in str(n.target))
    assert len(copies) == 2 and settled(empty) is copies[-1]
    linear = _nodes(gm.graph, lambda n: "linear" in str(n.target))[0]
    assert settled(linear) is linear  # nothing writes into it


def test_the_quantizer_reads_the_filled_value():
    torch.manual_seed(0)
    model, x = FillThenUse().eval(), torch.randn(16, 8)
    qm = qgraph.quantize(model, x, "w8a8", calib_data=[torch.randn(16, 8) for _ in range(4)])
    order = {n: i for i, n in enumerate(qm.qgraph.graph.nodes)}
    empty = _nodes(qm.qgraph.graph, lambda n: n.target == "new_empty")[0]
    (quantizer,) = [u for u in empty.users if u.op == "call_module"]
    writes = _nodes(qm.qgraph.graph, lambda n: n.target == "copy_")
    assert len(writes) == 2 and all(order[w] < order[quantizer] for w in writes)
    with torch.no_grad():
        assert sqnr_db(model(x), qm(x)) > 30



class ConvSkipInPlace(nn.Module):
    """Hugging Face Nystromformer's ``context_layer += self.conv(value_layer)`` on an attention product,
    behind a shape-dependent branch that symbolic tracing cannot take, so torch.export keeps ``aten.add_``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1, groups=4, bias=False)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        ctx = torch.matmul(torch.softmax(x @ x.transpose(-1, -2), -1), x)
        if x.shape[-1] > 4:
            ctx += self.conv(x)
        return self.fc(ctx)


def test_an_in_place_add_into_a_product_gets_no_dangling_input_quantizer(tmp_path):
    """The add's input quantizer on the value it writes into was placed after the write and read by
    nobody: dead-code elimination dropped its node, its module stayed, and calibration failed with
    "activation quantizer at matmul_1 saw no data during calibration"."""
    torch.manual_seed(0)
    model, calib = ConvSkipInPlace().eval(), [(torch.randn(4, 4, 8),) for _ in range(3)]
    qm = qgraph.quantize(model, calib[0], "w8a8", calib)
    assert qm.qgraph.capture.route == "torch.export"
    called = {str(n.target) for n in qm.qgraph.graph.nodes if n.op == "call_module"}
    assert set(qm.quantizers()) <= called, set(qm.quantizers()) - called
    x = torch.randn(4, 4, 8)
    with torch.no_grad(), qm.frozen():
        assert sqnr_db(model(x), qm(x)) > 25
    res = qm.export(str(tmp_path / "m"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance
