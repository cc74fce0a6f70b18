"""ONNX Runtime's int8 kernels on x86 CPUs without VNNI: files load in its exact mode, and the export
check runs that mode (backends/onnx_runtime_rules.py rule 14, qgraph.backends.ort.session)."""

from __future__ import annotations

import onnx
import pytest
import torch
from qgraph.backends import ort as ort_backend
from torch import nn

import qgraph


class TwoConvs(nn.Module):
    """Two convs with the same number of output channels: their all-zero int8 weight zero points are
    identical tensors, which the exporter would share."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 16, 1)
        self.b = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Saturating(nn.Module):
    """A 1x1 conv and a linear whose positive weights all round to code 127 and whose inputs (ReLU
    outputs) fill the uint8 grid: each pair of products, 2 · 255 · 127, overflows int16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 8, 1, bias=False)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        with torch.no_grad():
            self.conv.weight.fill_(0.05)
            self.fc.weight.uniform_(0.9, 1.0)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(torch.relu(x))).flatten(1))


def _zero_point_readers(path) -> dict[str, int]:
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    readers: dict[str, int] = {}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and len(n.input) > 2 and inits.get(n.input[0]) is not None \
                and inits[n.input[0]].data_type == onnx.TensorProto.INT8:
            readers[n.input[2]] = sum(n.input[2] in other.input for other in m.graph.node)
    return readers


def test_each_int8_weight_reads_its_own_zero_point_and_the_file_loads_in_exact_mode(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 16, 6, 6)
    qm = qgraph.quantize(TwoConvs().eval(), (x,), "w8a8", calib_data=[(torch.randn(4, 16, 6, 6),) for _ in range(4)])
    res = qm.export(str(tmp_path / "m"), formats=("onnx",))
    readers = _zero_point_readers(res.onnx_path)
    assert len(readers) == 2 and set(readers.values()) == {1}, readers
    sess = ort_backend.session(res.onnx_path, exact_int8=True)  # ONNX Runtime 1.32 refused a shared one on AVX2 CPUs
    assert sess.exact_int8


def test_export_check_passes_where_int16_pair_sums_saturate(tmp_path):
    torch.manual_seed(0)
    model = Saturating().eval()
    x = torch.rand(4, 32, 4, 4) * 4
    qm = qgraph.quantize(model, (x,), "w8a8", calib_data=[(torch.rand(4, 32, 4, 4) * 4,) for _ in range(4)])
    res = qm.export(str(tmp_path / "m"), formats=("onnx",), dynamic_batch=False)  # failed on AVX2 CPUs without VNNI
    assert res.max_abs_error <= res.tolerance
    with torch.no_grad(), qm.frozen():
        want = qm(x)
    exact = ort_backend.run(ort_backend.session(res.onnx_path, exact_int8=True), (x,))[0]
    assert float((torch.from_numpy(exact) - want).abs().max()) <= res.tolerance
    if ort_backend.int8_saturates():  # the mechanism, where this CPU has it: the default kernels are far off
        default = ort_backend.run(ort_backend.session(res.onnx_path), (x,))[0]
        assert float((torch.from_numpy(default) - want).abs().max()) > 100 * res.tolerance


class SharedConv(nn.Module):
    """One conv applied twice: its int8 weight is one initializer, dequantized once for two integer
    convs. Its weights are scaled up so that pairs of products overflow int16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.uniform_(0.04, 0.05)

    def forward(self, x):
        return self.conv(torch.relu(self.conv(torch.relu(x))))


def test_a_file_with_a_shared_int8_weight_runs_exactly(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(2, 32, 4, 4) * 4
    qm = qgraph.quantize(SharedConv().eval(), (x,), "w8a8", calib_data=[(torch.rand(2, 32, 4, 4) * 4,) for _ in range(4)])
    res = qm.export(str(tmp_path / "m"), formats=("onnx",), dynamic_batch=False)
    assert res.max_abs_error <= res.tolerance
    # ONNX Runtime 1.32's exact mode refuses the file itself on AVX2 CPUs ("Attempt to replace the existing
    # tensor"); the session runs a copy with one weight per conv
    sess = ort_backend.session(res.onnx_path, exact_int8=True)
    assert sess.exact_int8
    with torch.no_grad(), qm.frozen():
        want = qm(x)
    got = torch.from_numpy(ort_backend.run(sess, (x,))[0])
    assert float((got - want).abs().max()) <= res.tolerance


@pytest.mark.parametrize("flags, saturates", [("fpu avx avx2 fma", True), ("avx2 avx512f avx512_vnni", False),
                                              ("avx2 avx_vnni", False), ("sse4_2", False)])
def test_int8_saturates_reads_the_cpu_flags(monkeypatch, tmp_path, flags, saturates):
    import builtins
    import platform

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real_open = builtins.open
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    assert ort_backend.int8_saturates() is saturates


def test_the_per_reader_copy_computes_the_same_and_shares_no_int8_tensor(tmp_path):
    """What ``session`` loads where ONNX Runtime's exact mode refuses a shared weight, checked on any CPU."""
    import numpy as np
    import onnxruntime as ort

    torch.manual_seed(0)
    x = torch.rand(2, 32, 4, 4) * 4
    qm = qgraph.quantize(SharedConv().eval(), (x,), "w8a8", calib_data=[(torch.rand(2, 32, 4, 4) * 4,) for _ in range(4)])
    res = qm.export(str(tmp_path / "m"), formats=("onnx",), verify=False)
    copy = onnx.load_from_string(ort_backend._unshared_int8(res.onnx_path))
    int8 = {t.name for t in copy.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    reads = [i for n in copy.graph.node for i in n.input if i in int8]
    assert len(reads) == len(set(reads)) and len(reads) >= 4, reads  # each conv's weight and zero point its own
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # DequantizeLinear + float Conv
    want = ort.InferenceSession(res.onnx_path, plain).run(None, {"x": x.numpy()})[0]
    got = ort.InferenceSession(copy.SerializeToString(), plain).run(None, {"x": x.numpy()})[0]
    np.testing.assert_array_equal(got, want)
