"""The acceptance criteria on scikit-learn digits: accuracy after W8A8 PTQ and W4A8 QAT, ONNX Runtime
agreement on the whole test set, file size, summary and report."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import ort_predict, ort_session

import qgraph
from examples.models import accuracy

QAT_EPOCHS = 2


def test_fp32_baseline_is_trained(fp32_accuracy):
    assert fp32_accuracy >= 0.97


def test_w8a8_ptq_within_half_a_point_of_fp32(digits_w8a8, trained_cnn, digits, fp32_accuracy):
    _, _, x_te, y_te = digits
    assert isinstance(digits_w8a8, qgraph.QModel)
    assert not digits_w8a8.training
    acc = accuracy(digits_w8a8, x_te, y_te)
    assert acc >= fp32_accuracy - 0.005, f"W8A8 {acc:.4f} vs FP32 {fp32_accuracy:.4f}"
    # quantization really happened: outputs differ from the float model
    with torch.no_grad():
        assert not torch.allclose(digits_w8a8(x_te[:64]), trained_cnn(x_te[:64]))


def test_w8a8_quantizes_every_conv_and_linear(digits_w8a8):
    weight_paths = {q.where for q in digits_w8a8.quantizers().values() if q.role == "weight"}
    assert weight_paths == {"stem.0", "conv1.0", "conv2.0", "conv3.0", "fc1", "fc2"}
    assert sum(c.action == "folded" for c in digits_w8a8.changes) == 4  # four conv+BN pairs


@pytest.fixture(scope="module")
def digits_w4a8_qat(trained_cnn, example_batch, calib, digits):
    x_tr, y_tr, _, _ = digits
    qm = qgraph.quantize(trained_cnn, example_batch, recipe="w4a8", calib_data=calib, qat=True)
    assert qm.training, "qat=True returns a model in train mode"
    initial = {n: q.scale.detach().clone() for n, q in qm.quantizers().items()}
    opt = torch.optim.Adam(qm.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(QAT_EPOCHS):
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = F.cross_entropy(qm(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    qm.eval()
    return qm, initial, losses


def test_w4a8_qat_within_two_points_of_fp32(digits_w4a8_qat, digits, fp32_accuracy):
    qm, _, losses = digits_w4a8_qat
    _, _, x_te, y_te = digits
    assert not qm.training
    acc = accuracy(qm, x_te, y_te)
    assert acc >= fp32_accuracy - 0.02, f"W4A8 QAT {acc:.4f} vs FP32 {fp32_accuracy:.4f}"
    assert all(q.spec.bits == 4 for q in qm.quantizers().values() if q.role == "weight")
    assert sum(losses[-5:]) / 5 < 0.2


def test_qat_learns_the_scales(digits_w4a8_qat):
    qm, initial, _ = digits_w4a8_qat
    quantizers = qm.quantizers()
    assert all(q.spec.learnable for q in quantizers.values())
    scale_params = {id(q.scale) for q in quantizers.values()}
    assert scale_params <= {id(p) for p in qm.parameters()}, "LSQ scales are trainable parameters"
    moved = [n for n, q in quantizers.items() if not torch.equal(q.scale.detach(), initial[n])]
    assert len(moved) == len(quantizers), "every scale received gradient updates"


def test_qat_model_state_dict_round_trips(digits_w4a8_qat, trained_cnn, example_batch, calib, digits):
    qm, _, _ = digits_w4a8_qat
    x = digits[2][:64]
    fresh = qgraph.quantize(trained_cnn, example_batch, recipe="w4a8", calib_data=calib[:1], qat=True).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), qm(x))
    fresh.load_state_dict(qm.state_dict())
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), qm(x), rtol=0, atol=0)


def test_exported_w8a8_agrees_with_qmodel_on_the_whole_test_set(digits_w8a8, digits_w8a8_export, digits):
    result, _ = digits_w8a8_export
    _, _, x_te, y_te = digits
    assert result.top1_agreement is not None and result.top1_agreement >= 0.99
    sess = ort_session(result.onnx_path)
    onnx_logits = torch.from_numpy(ort_predict(sess, x_te))
    with torch.no_grad():
        q_logits = torch.cat([digits_w8a8(x_te[i:i + 128]) for i in range(0, len(x_te), 128)])
    assert onnx_logits.shape == (len(x_te), 10)
    agreement = (onnx_logits.argmax(1) == q_logits.argmax(1)).float().mean().item()
    assert agreement >= 0.99, f"top-1 agreement {agreement:.4f}"
    # and the ONNX model is itself as accurate as the quantized model, within a point
    onnx_acc = (onnx_logits.argmax(1) == y_te).float().mean().item()
    assert abs(onnx_acc - accuracy(digits_w8a8, x_te, y_te)) <= 0.01


def test_summary_mentions_every_quantized_module_and_sqnr(digits_w8a8):
    text = digits_w8a8.summary()
    assert isinstance(text, str)
    assert repr(text) == str(text), "the summary displays as the table itself at the REPL"
    assert text.startswith("qgraph w8a8:")
    rows = digits_w8a8.summary_rows()
    modules = {r["module"] for r in rows if r["op"] in ("conv", "linear")}
    assert modules == {"stem.0", "conv1.0", "conv2.0", "conv3.0", "fc1", "fc2"}
    for path in modules:
        assert path in text
    assert "SQNR" in text and "w8a8" in text
    sqnrs = [r["sqnr_db"] for r in rows]
    assert all(s is not None for s in sqnrs)
    assert all(20.0 < s < 80.0 for s in sqnrs), sqnrs
    for s in sqnrs:
        assert f"{s:.1f}" in text


def test_export_writes_a_json_report(digits_w8a8, digits_w8a8_export):
    result, out = digits_w8a8_export
    assert result.report_path.startswith(str(out))
    report = json.loads(open(result.report_path).read())
    assert report["recipe"]["name"] == "w8a8"
    assert report["recipe"]["weight"]["bits"] == 8
    assert report["qgraph_version"] == qgraph.__version__
    nodes = report["nodes"]
    assert len(nodes) == len(digits_w8a8.summary_rows())
    assert {n["module"] for n in nodes if n["op"] in ("conv", "linear")} == {
        "stem.0", "conv1.0", "conv2.0", "conv3.0", "fc1", "fc2"}
    assert all(isinstance(n["sqnr_db"], float) for n in nodes)
    assert report["export"]["tolerance"] == pytest.approx(result.tolerance)
    assert report["export"]["top1_agreement"] == pytest.approx(result.top1_agreement)


@pytest.fixture(scope="module")
def resnet18_w8a8(tmp_path_factory):
    """A weight-dominated model (resnet18, 11.7M parameters, 32x32 input) and its verified W8A8 export."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    qm = qgraph.quantize(model, x, "w8a8", calib_data=[x, torch.randn(2, 3, 32, 32)])
    result = qm.export(str(tmp_path_factory.mktemp("resnet18") / "resnet18_w8a8"))
    return model, x, result


@pytest.mark.parametrize("baseline", ["torch.onnx.export", "qgraph.export_onnx"])
def test_int8_onnx_is_at_most_26_percent_of_fp32(resnet18_w8a8, baseline, tmp_path):
    model, x, result = resnet18_w8a8
    fp32_path = tmp_path / "resnet18_fp32.onnx"
    if baseline == "torch.onnx.export":
        torch.onnx.export(model, (x,), dynamo=True, opset_version=21, external_data=False).save(str(fp32_path))
    else:  # the same exporter settings qgraph uses for quantized models (debug metadata stripped)
        qgraph.export_onnx(model, x, str(fp32_path))
    fp32_bytes = os.path.getsize(fp32_path)
    n_params = sum(p.numel() for p in model.parameters())
    assert fp32_bytes >= 4 * n_params * 0.99  # the FP32 file really holds FP32 weights
    assert result.max_abs_error <= result.tolerance
    ratio = result.onnx_bytes / fp32_bytes
    assert ratio <= 0.26, f"int8 file is {ratio:.1%} of the FP32 file"
    assert result.onnx_bytes >= n_params * 0.99  # and it still holds every weight (as int8)
