"""FoldWeightsPass: layer weights computed from parameters alone (weight standardization, weight norm)
become one parameter, quantized once and stored as integers."""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import qgraph
from qgraph.summary import sqnr_db


class StdConv(nn.Conv2d):
    """Weight standardization with a learned gain, the way timm's ScaledStdConv2d computes it."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)
        self.gain = nn.Parameter(torch.full((cout, 1, 1, 1), 1.3))

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=1e-5)
        return F.conv2d(x, self.gain * w.reshape_as(self.weight), self.bias, self.stride, self.padding)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = StdConv(3, 8)
        self.conv2 = StdConv(8, 8)
        self.fc = weight_norm(nn.Linear(8, 5))

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.fc(x)


def _data(seed: int) -> torch.Tensor:
    return torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_computed_weights_are_folded_into_one_parameter_each():
    torch.manual_seed(0)
    model = Net().eval()
    qm = qgraph.quantize(model, _data(0), "w8a8", calib_data=[(_data(i),) for i in range(1, 3)])
    weights = sorted(k for k, q in qm.quantizers().items() if q.role == "weight")
    assert weights == ["conv1.weight_quantizer", "conv2.weight_quantizer", "fc.weight_quantizer"]  # not 2-3 per layer
    folded = {c.module_path for c in qm.changes if c.pass_name == "fold_weights"}
    assert folded == {"conv1", "conv2", "fc"}
    gm = qm.qgraph
    with torch.no_grad():
        want = model.conv1.gain * F.batch_norm(model.conv1.weight.reshape(1, 8, -1), None, None, training=True,
                                               momentum=0.0, eps=1e-5).reshape_as(model.conv1.weight)
        assert torch.allclose(gm.get_submodule("conv1").folded_weight, want, atol=1e-6)
        y, q = model(_data(5)), qm(_data(5))
    assert 25 < sqnr_db(y, q) < 60  # quantized, and close


def test_folded_weights_export_as_integer_initializers_and_load_back(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    qm = qgraph.quantize(model, _data(0), "w8a8", calib_data=[(_data(i),) for i in range(1, 3)])
    res = qm.export(str(tmp_path / "net"))
    assert res.max_abs_error <= res.tolerance
    m = onnx.load(res.onnx_path)
    ops = [n.op_type for n in m.graph.node]
    assert not set(ops) & {"BatchNormalization", "ReduceL2", "Div", "Sqrt", "Pow"}  # no weight math at run time
    assert ops.count("ReduceMean") == 1  # the model's own spatial mean
    int8 = sorted(tuple(t.dims) for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1)
    assert int8 == [(8, 3, 3, 3), (8, 5), (8, 8, 3, 3)]  # every weight stored as int8 codes (the head as W^T)
    back = qgraph.load(res.qpack_path, Net().eval(), _data(0))
    with torch.no_grad(), qm.frozen():
        assert torch.equal(back(_data(7)), qm(_data(7)))


def test_qat_trains_the_folded_weight():
    torch.manual_seed(0)
    qm = qgraph.quantize(Net().eval(), _data(0), "w8a8", calib_data=[(_data(1),)], qat=True)
    w = qm.qgraph.get_submodule("conv1").folded_weight
    assert any(p is w for p in qm.parameters())
    qm(_data(2)).square().mean().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


class _Upsampler(nn.Module):
    """HiFi-GAN's upsampling layer: a weight-normed ConvTranspose1d (kept as a module and swapped for a
    QuantizedModule, not made functional), then a LeakyReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.up = weight_norm(nn.ConvTranspose1d(8, 4, 4, 2, padding=1))

    def forward(self, x):
        return F.leaky_relu(self.up(x), 0.1)


def test_a_weight_normed_transposed_conv_packs_and_loads(tmp_path):
    """The wrapper kept the parametrized module, and the packer recorded ``up.module.weight``, which is
    not in the state_dict: any qpack export failed ("`weight` is not a buffer"). The swap now folds the
    parametrization into a plain copy; the user's model keeps its weight norm."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 10)
    model = _Upsampler().eval()
    qm = qgraph.quantize(model, x, "w4a16", [x])
    assert any("folded into plain parameters" in c.detail for c in qm.changes if c.module_path == "up")
    assert hasattr(model.up, "parametrizations") and model.up.weight.shape == (8, 4, 4)  # the original still computes it
    res = qm.export(str(tmp_path / "up"))
    assert res.max_abs_error <= res.tolerance
    back = qgraph.load(res.qpack_path, _Upsampler().eval(), x)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(x), qm(x))
        assert sqnr_db(model(x), qm(x)) > 15
