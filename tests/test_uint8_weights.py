"""``export(uint8_weights=True)`` (backends/onnx_uint8_weights.py, rule 15): int8 weights of integer
kernels stored as uint8, exact under ONNX Runtime's default session options on every x86 CPU; and the
export check's measurement of what default options compute on a CPU whose u8·s8 kernels saturate."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from qgraph.backends import ort as ort_backend
from qgraph.backends.onnx_uint8_weights import integer_kernel_weights
from test_exact_int8 import Saturating, SharedConv
from torch import nn

import qgraph


def _quantized(model, shape, recipe="w8a8", scale=4.0):
    torch.manual_seed(0)
    x = torch.rand(*shape) * scale
    qm = qgraph.quantize(model.eval(), (x,), recipe, calib_data=[(torch.rand(*shape) * scale,) for _ in range(4)])
    return qm, x


def _dequantized_weights(path) -> list[np.ndarray]:
    """(codes - zero point) of every DequantizeLinear of an initializer, in node order (int64: exact)."""
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            zp = inits[n.input[2]].astype(np.int64) if len(n.input) > 2 and n.input[2] else np.int64(0)
            codes = inits[n.input[0]].astype(np.int64)
            if zp.ndim:  # per axis
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1) % codes.ndim
                zp = zp.reshape([-1 if d == axis else 1 for d in range(codes.ndim)])
            out.append(codes - zp)
    return out


def _default_session(path):
    opts = ort.SessionOptions()  # what a user who opens the file without qgraph gets
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_uint8_file_holds_the_same_values_and_is_exact_under_default_options(tmp_path):
    qm, x = _quantized(Saturating(), (4, 32, 4, 4))
    s8 = qm.export(str(tmp_path / "s8"), formats="onnx", dynamic_batch=False)
    u8 = qm.export(str(tmp_path / "u8"), formats="onnx", dynamic_batch=False, uint8_weights=True)
    assert u8.uint8_weights and not s8.uint8_weights
    types = {t.name: t.data_type for t in onnx.load(u8.onnx_path).graph.initializer}
    dqs = [n for n in onnx.load(u8.onnx_path).graph.node if n.op_type == "DequantizeLinear" and n.input[0] in types]
    assert len(dqs) == 2 and all(types[n.input[0]] == types[n.input[2]] == onnx.TensorProto.UINT8 for n in dqs)
    assert not integer_kernel_weights(onnx.load(u8.onnx_path))
    for a, b in zip(_dequantized_weights(s8.onnx_path), _dequantized_weights(u8.onnx_path), strict=True):
        np.testing.assert_array_equal(a, b)
    with torch.no_grad(), qm.frozen():
        want = qm(x)
    got = _default_session(u8.onnx_path).run(None, {"x": x.numpy()})[0]
    assert float((torch.from_numpy(got) - want).abs().max()) <= u8.tolerance  # s8 is >100x off here on AVX2 CPUs
    assert u8.default_session_error is None
    assert json.load(open(u8.report_path))["export"]["uint8_weights"] is True


def test_weight_only_layers_keep_int8(tmp_path):
    """No integer kernel multiplies a weight-only layer's codes by 8-bit activations: nothing saturates."""
    qm, x = _quantized(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), (4, 16), recipe="w8a16")
    res = qm.export(str(tmp_path / "m"), formats="onnx", uint8_weights=True)
    types = [t.data_type for t in onnx.load(res.onnx_path).graph.initializer]
    assert onnx.TensorProto.INT8 in types and onnx.TensorProto.UINT8 not in types


def test_a_shared_weight_is_converted_once_and_loads_in_exact_mode_as_it_is(tmp_path):
    qm, x = _quantized(SharedConv(), (2, 32, 4, 4))
    res = qm.export(str(tmp_path / "m"), formats="onnx", dynamic_batch=False, uint8_weights=True)
    m = onnx.load(res.onnx_path)
    u8 = {t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.UINT8 and t.dims}
    weights = [n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in u8]
    zero_points = [n.input[2] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in u8]
    assert len(set(weights)) == 1 and len(set(zero_points)) == len(zero_points)
    assert not [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    with torch.no_grad(), qm.frozen():
        want = qm(x)
    for sess in (_default_session(res.onnx_path), ort.InferenceSession(res.onnx_path, ort_backend._options(1, None, None, True))):
        got = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
        assert float((got - want).abs().max()) <= res.tolerance


def test_a_conv_net_runs_its_integer_kernels_on_uint8_weights(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=16, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    qm, x = _quantized(model, (4, 3, 8, 8))
    res = qm.export(str(tmp_path / "m"), formats="onnx", uint8_weights=True)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(res.onnx_path, opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert "QLinearConv" in ops, ops  # ONNX Runtime still fuses the integer convs
    with torch.no_grad(), qm.frozen():
        want = qm(torch.flip(x, [0]))  # another batch than the example's (the file's batch is dynamic)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: torch.flip(x, [0]).numpy()})[0])
    assert float((got - want).abs().max()) <= res.tolerance


def test_export_measures_the_default_options_where_they_saturate(tmp_path):
    qm, x = _quantized(Saturating(), (4, 32, 4, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = qm.export(str(tmp_path / "m"), formats="onnx", dynamic_batch=False)
    if not ort_backend.int8_saturates():
        assert res.default_session_error is None and not caught  # the default session is the exact one
        return
    assert res.default_session_error > 100 * res.tolerance
    message = " ".join(str(w.message) for w in caught)
    assert "uint8_weights=True" in message and "exact_int8=True" in message
    assert "default session options" in str(res)


@pytest.mark.parametrize("saturates", [True, False])
def test_default_session_error_is_measured_only_where_it_differs(monkeypatch, tmp_path, saturates):
    """On any CPU: with the CPU check forced, the default session's error is measured (and on a CPU
    with VNNI it is the exact one's), without it nothing runs."""
    qm, x = _quantized(Saturating(), (4, 32, 4, 4))
    res = qm.export(str(tmp_path / "m"), formats="onnx", dynamic_batch=False)
    monkeypatch.setattr(ort_backend, "int8_saturates", lambda: saturates)
    with torch.no_grad(), qm.frozen():
        want = qm(x)
    err = ort_backend.default_session_error(onnx.load(res.onnx_path), res.onnx_path, (x,), want)
    if not saturates:
        assert err is None
    else:
        default = _default_session(res.onnx_path).run(None, {"x": x.numpy()})[0]
        assert err == pytest.approx(float((torch.from_numpy(default) - want).abs().max()))


def test_cli_writes_uint8_weights(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qgraph.cli import app

    (tmp_path / "u8factory.py").write_text(
        "import torch\nfrom test_exact_int8 import Saturating\n\n"
        "def build():\n    torch.manual_seed(0)\n    return Saturating().eval(), (torch.rand(4, 32, 4, 4) * 4,)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for flag, weights in (["--uint8-weights"], "uint8"), ([], "int8"):
        res = CliRunner().invoke(app, ["quantize", "u8factory:build", "--out", str(tmp_path / weights), "--no-summary", *flag])
        assert res.exit_code == 0, res.output
        assert f"weights         {weights}" in res.output
        saturating = ort_backend.int8_saturates() and weights == "int8"
        assert ("above the tolerance, see --uint8-weights" in res.output) is saturating, res.output
