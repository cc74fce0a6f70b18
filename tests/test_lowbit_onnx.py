"""Low-bit ONNX lowering: INT2 at opset 25, int4 conv weights with int8 compute, MatMulNBits for
weight-only linears, weight-only convs that ONNX Runtime folds to float. Each export is verified
against the QModel by ``qm.export`` (ONNX Runtime, accuracy level 0), and checked again here."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import TinyConvNet, op_types, ort_session, tiny_conv_setup
from qgraph.backends.onnx_fold import fold_constant_quantization

import qgraph

EXTENDED = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
EXPECTED_TYPE = {"w4a16": onnx.TensorProto.INT4, "w8a16": onnx.TensorProto.INT8, "w2a16": onnx.TensorProto.INT2}


Net = TinyConvNet


@pytest.fixture(scope="module")
def net():
    return tiny_conv_setup()


def _export(net, recipe, tmp_path, name=None, **kw):
    model, x, calib = net
    qm = qgraph.quantize(model, x, recipe, calib, **kw)
    result = qm.export(str(tmp_path / (name or recipe)), formats=("onnx",))
    assert result.max_abs_error <= result.tolerance
    return qm, result, onnx.load(result.onnx_path)


SHAPES = {"conv1": (8, 3, 3, 3), "conv2": (16, 8, 3, 3), "fc": (256, 128), "head": (128, 10)}  # fc, head: Wᵀ
SHAPES_W4A8 = SHAPES | {"fc": (128, 256)}  # a linear with quantized input and result keeps W; the head's result is float: Wᵀ


def _weights(m: onnx.ModelProto, shapes=SHAPES) -> dict[str, onnx.TensorProto]:
    """The weight-code initializers (what a DequantizeLinear or Cast reads first), by layer."""
    inits = {t.name: t for t in m.graph.initializer}
    codes = [inits[n.input[0]] for n in m.graph.node if n.op_type in ("DequantizeLinear", "Cast") and n.input[0] in inits]
    by_shape = {tuple(t.dims): t for t in codes if len(t.dims) >= 2}
    return {layer: by_shape[shape] for layer, shape in shapes.items()}


def _optimized_ops(path, tmp_path, **kw):
    out = tmp_path / "optimized.onnx"
    ort_session(path, optimized_path=out, level=EXTENDED, **kw)
    return op_types(out)


def _parity(qm, path, x, tol, exact_int4=True):
    sess = ort_session(path, exact_int4=exact_int4)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = qm(x).numpy()
    assert np.abs(got - want).max() <= tol, np.abs(got - want).max()


def test_w2a16_stores_int2_four_codes_a_byte_at_opset_25(net, tmp_path):
    qm, result, m = _export(net, "w2a16", tmp_path)
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [25]
    assert m.ir_version == 13
    weights = _weights(m)
    for name in ("conv1", "conv2", "fc"):
        t = weights[name]
        assert t.data_type == onnx.TensorProto.INT2, name
        assert len(t.raw_data) == -(-int(np.prod(t.dims)) // 4), "four 2-bit codes per byte"
        codes = onnx.numpy_helper.to_array(t).astype(np.int8)
        assert codes.min() >= -2 and codes.max() <= 1
    # a MatMul weight with 10 columns stays in an int4 container: ORT 1.32's 2-bit MatMulNBits is wrong there
    assert weights["head"].data_type == onnx.TensorProto.INT4
    ops = _optimized_ops(result.onnx_path, tmp_path, exact_int4=True)
    assert ops["MatMulNBits"] == 2 and ops["DequantizeLinear"] == 0, ops
    _parity(qm, result.onnx_path, net[1], 1e-4)


def test_int2_file_is_smaller_than_int4(net, tmp_path):
    _, r2, _ = _export(net, "w2a16", tmp_path, name="two")
    _, r4, _ = _export(net, qgraph.get_recipe("w4a16", group_size=64), tmp_path, name="four")
    w2 = sum(len(t.raw_data) for t in _weights(onnx.load(r2.onnx_path)).values())
    w4 = sum(len(t.raw_data) for t in _weights(onnx.load(r4.onnx_path)).values())
    assert w2 < 0.6 * w4 and r2.onnx_bytes < r4.onnx_bytes


def test_models_without_2bit_weights_stay_at_opset_21(net, tmp_path):
    for recipe in ("w8a8", "w4a16"):
        _, _, m = _export(net, recipe, tmp_path)
        assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [21]
        assert m.ir_version == 10


def test_w4a8_convs_store_int4_and_run_qlinearconv(net, tmp_path):
    qm, result, m = _export(net, "w4a8", tmp_path)
    weights = _weights(m, SHAPES_W4A8)
    assert {t.data_type for t in weights.values()} == {onnx.TensorProto.INT4}
    casts = [n for n in m.graph.node if n.op_type == "Cast"]
    assert {c.input[0] for c in casts} == {t.name for t in weights.values()}, "each packed weight is widened by a Cast"
    ops = _optimized_ops(result.onnx_path, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 0, ops
    assert ops["QGemm"] == 1 and ops["MatMulIntegerToFloat"] == 1, ops  # fc; the head (float result, rule 6)
    _parity(qm, result.onnx_path, net[1], result.tolerance)
    # folding the exported file again keeps the codes packed
    again = onnx.load(result.onnx_path)
    fold_constant_quantization(again)
    assert {t.data_type for t in _weights(again, SHAPES_W4A8).values()} == {onnx.TensorProto.INT4}


@pytest.mark.parametrize("recipe", ["w4a16", "w8a16"])
def test_weight_only_linears_fuse_into_matmulnbits(net, recipe, tmp_path):
    qm, result, m = _export(net, recipe, tmp_path)
    ops = _optimized_ops(result.onnx_path, tmp_path)
    # both linears, including fc whose ReLU ORT would otherwise fuse into a float Gemm
    assert ops["MatMulNBits"] == 2, ops
    assert ops["Gemm"] == ops["FusedGemm"] == 0, ops
    _parity(qm, result.onnx_path, net[1], 1e-4)
    # ORT's default accuracy level (int8 activations inside MatMulNBits) stays close
    _parity(qm, result.onnx_path, net[1], 2e-2 * float(np.abs(qm(net[1]).detach().numpy()).max()), exact_int4=False)


@pytest.mark.parametrize("recipe", ["w4a16", "w8a16", "w2a16"])
def test_weight_only_convs_fold_to_float_in_onnxruntime(net, recipe, tmp_path):
    qm, result, m = _export(net, recipe, tmp_path)
    weights = _weights(m)
    assert {weights[c].data_type for c in ("conv1", "conv2")} == {EXPECTED_TYPE[recipe]}
    dq_readers = {r.op_type for n in m.graph.node if n.op_type == "DequantizeLinear" for r in m.graph.node if n.output[0] in r.input}
    assert "Conv" not in dq_readers, "a weight-only conv reads Mul(Cast(codes), scale), not a DequantizeLinear"
    ops = _optimized_ops(result.onnx_path, tmp_path, exact_int4=True)
    assert ops["DequantizeLinear"] == ops["Cast"] == ops["Mul"] == 0, ops
    assert ops["Conv"] + ops["FusedConv"] == 2
    _parity(qm, result.onnx_path, net[1], 1e-4)


def _biased_stack() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 16), nn.ReLU(),
                         nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


@pytest.mark.parametrize("recipe, bits", [("ofq", None), ("bitswitch", 8), ("bitswitch", 4), ("bitswitch", 2)])
def test_biases_of_low_bit_integer_layers_stay_float_in_onnxruntime(recipe, bits, tmp_path):
    """ONNX Runtime rounds the float bias of a QDQ Conv/Gemm to int32 on s_x * s_w when it loads the
    file; with 2-4-bit activations that grid is coarse and the file disagreed with the model (OFQ
    0.55 on a two-layer residual net, bit-switch at 4 bits 0.003): such biases are added after the op,
    and a bit-switch model's at every bit width (at 8 bits the rounding flipped codes of the next
    layers' inputs: 2.8e-4 against a tolerance of 2.8e-5)."""
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(4, 3, 8, 8, generator=g) for _ in range(3)]
    qm = qgraph.quantize(_biased_stack(), data[0], recipe, data[1:])
    if bits is not None:
        qm.set_bits(bits)
    res = qm.export(str(tmp_path / recipe), formats=("onnx",))  # raises if ONNX Runtime disagrees
    assert res.max_abs_error <= res.tolerance
    m = onnx.load(res.onnx_path)
    producer = {o: n for n in m.graph.node for o in n.output}
    moved = [n for n in m.graph.node if n.op_type == "Add" and producer.get(n.input[0]) is not None
             and producer[n.input[0]].op_type in ("Conv", "Gemm") and len(producer[n.input[0]].input) == 2]
    assert moved  # the bias follows the op instead of being its third input
    sess = ort.InferenceSession(res.onnx_path, providers=["CPUExecutionProvider"])  # all optimizations on
    x = torch.randn(4, 3, 8, 8, generator=g)
    with torch.no_grad(), qm.frozen():
        want = (qm.at_bits() if bits is not None else qm)(x).numpy()
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0] - want).max() <= res.tolerance


def test_two_layers_with_equal_int4_codes_export(tmp_path):
    """Equal weights are stored once (deduplicated initializers); rule 5 then wrote two Casts with one
    output name, and the file failed ONNX's SSA check (an nn.TransformerEncoder at OFQ/bit-switch)."""
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()
    with torch.no_grad():
        model[4].weight.copy_(model[2].weight)
        model[4].bias.copy_(model[2].bias)
    x = torch.randn(4, 3, 8, 8)
    qm = qgraph.quantize(model, x, "w4a8", [torch.randn(4, 3, 8, 8) for _ in range(2)])
    res = qm.export(str(tmp_path / "twins"), formats=("onnx",))  # checker + ONNX Runtime
    m = onnx.load(res.onnx_path)
    casts = [n.output[0] for n in m.graph.node if n.op_type == "Cast"]
    assert len(casts) == len(set(casts))


def test_an_initializer_added_under_a_taken_name_with_another_value_gets_its_own():
    """Rule 7 reshapes a zero point shared by two weights (deduplicated) along each weight's channel
    axis; the second reshape came back under the first one's name, and a ConvTranspose (axis 1)
    and a Conv (axis 0) sharing all-128 zero points made a file ONNX Runtime refused ("Sub:
    Incompatible dimensions")."""
    from qgraph.backends.onnx_runtime_rules import _Graph

    g = onnx.helper.make_graph([], "g", [], [], initializer=[onnx.numpy_helper.from_array(np.zeros(3, np.float32), "z")])
    gr = _Graph(g)
    a = gr.add_initializer(np.zeros((1, 3, 1, 1), np.float32), "z_float")
    assert gr.add_initializer(np.zeros((1, 3, 1, 1), np.float32), "z_float") == a  # the same value: shared
    b = gr.add_initializer(np.zeros((3, 1, 1, 1), np.float32), "z_float")
    assert b != a and onnx.numpy_helper.to_array(gr.inits[b]).shape == (3, 1, 1, 1)
    assert gr.add_initializer(np.ones((1, 3, 1, 1), np.float32), "z_float") not in (a, b)
