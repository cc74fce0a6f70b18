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

