"""In-place activations after a conv (Real-ESRGAN's and YOLO's ``LeakyReLU``/``SiLU(inplace=True)``).

On the torch.export route they stay ``aten.leaky_relu_`` / ``aten.silu_``, and in symbolically traced
code ``h = h.sigmoid_()`` is a method call. The conv's output quantizer was placed after the write, but
the readers of what the write returns kept the unquantized value: the quantizer, read by nobody, was
dropped, and calibration failed with "saw no data". Canonicalize (rule 11) now makes such an
activation out-of-place, and where it cannot (the conv result is read again after the write), the
insert pass rewires the readers of the write's result too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qgraph


class ConvInplaceAct(nn.Module):
    def __init__(self, kind: str, route: str) -> None:
        super().__init__()
        self.c1, self.c2, self.kind, self.route = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1), kind, route
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        if self.route == "torch.export":
            assert x.shape[2] % 2 == 0  # basicsr's pixel_unshuffle: symbolic tracing refuses it, torch.export takes it
        h = self.c1(x)
        if self.kind == "module":
            return self.c2(self.act(h))
        if self.kind == "functional":
            return self.c2(F.silu(h, inplace=True))
        if self.kind == "method":
            return self.c2(h.sigmoid_())
        g = h.sigmoid_()  # "read again": the conv result is read after the write too, so it stays in place
        return self.c2(g) + h.mean()


def _sqnr_db(want, got) -> float:
    return float(10 * torch.log10(want.pow(2).mean() / (got - want).pow(2).mean()))


@pytest.mark.parametrize("route", ["symbolic_trace", "torch.export"])
@pytest.mark.parametrize("kind", ["module", "functional", "method", "read again"])
def test_an_inplace_activation_after_a_conv_is_quantized_and_exported(route, kind, tmp_path):
    torch.manual_seed(0)
    model, x = ConvInplaceAct(kind, route).eval(), torch.randn(4, 3, 8, 8)
    qm = qgraph.quantize(model, x, "w8a8", [x, *torch.randn(3, 4, 3, 8, 8)])
    assert qm.qgraph.capture.route == route
    called = {n.target for n in qm.qgraph.graph.nodes if n.op == "call_module"}
    assert {"c1.output_quantizer", "c1.weight_quantizer", "c2.weight_quantizer"} <= called, sorted(called)
    if kind != "read again" or route == "torch.export":  # quantized before the activation, on both routes alike
        assert len(qm.quantizers()) == 6, sorted(qm.quantizers())  # (torch.export's graph reads the write's result twice)
    else:  # the write stays in place: its result, which c2 reads, is the conv's quantized output
        assert "c2.input_quantizer" not in qm.quantizers(), sorted(qm.quantizers())
    with torch.no_grad(), qm.frozen():
        want, got = model(x.clone()), qm(x.clone())
    assert _sqnr_db(want, got) > 30
    res = qm.export(str(tmp_path / "m"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance


class InplaceResidual(nn.Module):
    """torchvision's BasicBlock tail, ``out += identity`` then ``ReLU(inplace=True)``, captured by torch.export
    (``aten.add_``): the conv's output quantizer was dropped the same way."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)

    def forward(self, x):
        assert x.shape[2] % 2 == 0
        out = self.bn(self.conv(x))
        out += x
        return self.relu(out)


def test_an_inplace_residual_add_after_a_conv_keeps_its_quantizer(tmp_path):
    torch.manual_seed(0)
    model, x = InplaceResidual().eval(), torch.randn(4, 8, 8, 8)
    qm = qgraph.quantize(model, x, "w8a8", [x, *torch.randn(3, 4, 8, 8, 8)])
    assert qm.qgraph.capture.route == "torch.export"
    assert "conv.output_quantizer" in {n.target for n in qm.qgraph.graph.nodes if n.op == "call_module"}
    with torch.no_grad(), qm.frozen():
        assert _sqnr_db(model(x.clone()), qm(x.clone())) > 30
    res = qm.export(str(tmp_path / "res"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance


class LocationAttention(nn.Module):
    """Tacotron 2's attention step: the energies' padded positions are written through ``.data``."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.v = nn.Linear(8, 8), nn.Linear(8, 1)

    def forward(self, memory, mask):
        alignment = self.v(torch.tanh(self.q(memory))).squeeze(-1)
        alignment.data.masked_fill_(mask, -float("inf"))
        w = F.softmax(alignment, dim=1)
        return torch.bmm(w.unsqueeze(1), memory).squeeze(1)


def test_an_inplace_write_through_data_exports(tmp_path):
    """``alignment.data.masked_fill_(...)``: the ONNX exporter's torch.export lifted ``.data`` as a
    constant and refused the graph ("Constant lifted_tensor_0 is mutated in the forward method").
    Canonicalize (rule 12) reads it as ``.detach()``: the same storage, so the write still lands."""
    g = torch.Generator().manual_seed(0)
    mem = torch.randn(4, 6, 8, generator=g)
    mask = torch.arange(6)[None] >= torch.tensor([[6], [3], [5], [2]])
    model = LocationAttention().eval()
    qm = qgraph.quantize(model, (mem, mask), "w8a8", [(torch.randn(4, 6, 8, generator=g), mask)])
    assert not any(n.op == "call_function" and n.target is getattr for n in qm.qgraph.graph.nodes)
    with torch.no_grad(), qm.frozen():
        got = qm(mem, mask)
        ref = model(mem, mask)
    assert qgraph.summary.sqnr_db(ref, got) > 25  # the masked positions get no attention, as in the float model
    res = qm.export(str(tmp_path / "attn"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance
