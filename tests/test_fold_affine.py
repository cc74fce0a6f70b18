"""Folding per-channel affine maps with constant coefficients (torchvision's FrozenBatchNorm2d, a
LayerScale after a linear) into the conv / linear before them, and the cases that must stay unfolded."""

from __future__ import annotations

import collections
import copy

import onnx
import pytest
import torch
from qgraph.backends import ort as ort_backend
from qgraph.passes.canonicalize import CanonicalizePass
from qgraph.passes.fold_bn import FoldBatchNormPass
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import qgraph
from qgraph.capture import trace


def _frozen_bn(channels: int, g: torch.Generator) -> FrozenBatchNorm2d:
    """A FrozenBatchNorm2d with statistics far from identity (as a pretrained backbone's are)."""
    bn = FrozenBatchNorm2d(channels)
    bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
    bn.bias.copy_(torch.randn(channels, generator=g))
    bn.running_mean.copy_(torch.randn(channels, generator=g))
    bn.running_var.copy_(torch.rand(channels, generator=g) * 2 + 0.2)
    return bn


class FrozenNet(nn.Module):
    """conv → FrozenBN → ReLU twice (one depthwise), a residual add, and a head."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), _frozen_bn(8, g)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), _frozen_bn(8, g)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x + torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class Patterns(nn.Module):
    """Each branch is one candidate: what folds and what must not."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(3, 4, 1)
        self.d = nn.Conv2d(3, 4, 1)
        self.e = nn.Linear(3, 6)
        self.register_buffer("per_channel", torch.tensor([0.5, -2.0, 3.0, 1.5]).reshape(1, 4, 1, 1))
        self.register_buffer("spatial", torch.linspace(0.5, 2.0, 16).reshape(1, 1, 4, 4))
        self.layer_scale = nn.Parameter(torch.linspace(0.1, 1.0, 6))

    def forward(self, x):
        a = self.a(x) * self.per_channel - 0.25  # folds: scale, then a scalar shift
        b = self.b(x) * self.spatial  # stays: the constant varies over H and W, not channels
        c = self.c(x)
        c = c * self.per_channel + c  # stays: the conv result has a second user
        d = 2.0 + self.d(x)  # folds: a shift alone, operands swapped
        e = self.layer_scale * self.e(x.mean((2, 3)))  # folds: LayerScale after a linear
        return a + b + c + d, e


def _folded(qg) -> list[str]:
    p = FoldBatchNormPass()
    p.run(qg)
    return sorted(c.module_path for c in p.changes if c.action == "folded")


def test_frozen_batchnorm_folds_into_its_conv_exactly():
    model, x = FrozenNet().eval(), torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    qg = trace(copy.deepcopy(model), (x,))
    CanonicalizePass().run(qg)
    assert _folded(qg) == ["conv1", "conv2"]
    ops = collections.Counter(str(n.target) for n in qg.graph.nodes if n.op == "call_function")
    assert not any("mul" in t for t in ops), ops  # the FrozenBN's x * scale + shift is gone
    with torch.no_grad():
        torch.testing.assert_close(qg(x), ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(qg.get_submodule("conv1").weight, model.conv1.weight)


def test_only_per_channel_constants_after_a_single_use_layer_fold():
    model, x = Patterns().eval(), torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        ref = model(x)
    qg = trace(copy.deepcopy(model), (x,))
    CanonicalizePass().run(qg)
    assert _folded(qg) == ["a", "d", "e"]
    with torch.no_grad():
        out = qg(x)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_quantized_frozen_bn_net_exports_without_float_affine_ops(tmp_path):
    model = FrozenNet().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 8, 8, generator=g)
    calib = [(torch.randn(8, 3, 8, 8, generator=g),) for _ in range(4)]
    qm = qgraph.quantize(model, (x,), "w8a8", calib_data=calib)
    folded = [c for c in qm.changes if c.action == "folded"]
    assert [c.module_path for c in folded] == ["conv1", "conv2"]
    assert all("of bn" in c.detail for c in folded), [c.detail for c in folded]  # names the FrozenBN it removed
    res = qm.export(str(tmp_path / "m"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node)
    assert ops["Mul"] == 0 and ops["Conv"] == 2, ops
    # ONNX Runtime fuses both convs into QLinearConv, which it cannot with a float Mul/Add after them
    ort_backend.session(str(tmp_path / "m.onnx"), optimized_path=str(tmp_path / "opt.onnx"))
    opt = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert opt["QLinearConv"] == 2, opt


def test_fold_bn_false_keeps_the_affine_ops():
    model, x = FrozenNet().eval(), torch.randn(4, 3, 8, 8)
    qm = qgraph.quantize(model, (x,), "w8a8", calib_data=[(x,)], fold_bn=False)
    assert not any(c.action == "folded" for c in qm.changes)
    assert sum(n.op == "call_function" and "mul" in str(n.target) for n in qm.qgraph.graph.nodes) >= 2


@pytest.mark.parametrize("shape", [(4,), (1, 4, 1)])
def test_a_constant_that_would_broadcast_to_more_dims_stays(shape):
    """A [4] vector after a conv2d broadcasts along W, a [1, 4, 1] one along H: neither is per-channel."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.register_buffer("s", torch.arange(1.0, 5.0).reshape(shape))

        def forward(self, x):
            return self.conv(x) * self.s

    x = torch.randn(2, 3, 4, 4)
    qg = trace(M().eval(), (x,))
    CanonicalizePass().run(qg)
    assert _folded(qg) == []


class BatchNormAct(nn.BatchNorm2d):
    """timm's ``BatchNormAct2d`` in short: it asserts a 4-D input, then ``F.batch_norm`` and an activation."""

    def forward(self, x):
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return nn.functional.relu(x)


def test_a_batchnorm_behind_a_rank_assert_folds_into_its_conv(tmp_path):
    """The assert's ``x.ndim`` was a second reader of the conv result, so the BatchNorm stayed float
    between two quantizers (34 of them in timm's MobileNetV3-Small). Canonicalize rule 14 drops an
    assert on the rank the graph has, and the BatchNorm folds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), BatchNormAct(8), nn.Conv2d(8, 4, 1), BatchNormAct(4)).eval()
    for bn in (model[1], model[3]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    qm = qgraph.quantize(model, x, "w8a8", calib_data=[(torch.randn(2, 3, 8, 8),) for _ in range(4)])
    targets = [n.target for n in qm.qgraph.graph.nodes]
    assert nn.functional.batch_norm not in targets and torch._assert not in targets
    assert sum(c.action == "removed" and "ndim == 4" in c.detail for c in qm.changes) == 2, qm.changes
    assert sum(c.action == "folded" for c in qm.changes) == 2
    res = qm.export(str(tmp_path / "m"), formats=("onnx",))
    ops = collections.Counter(n.op_type for n in onnx.load(res.onnx_path).graph.node)
    assert ops["BatchNormalization"] == 0 and ops["Conv"] == 2, ops
