"""QModel behaviour: calibration errors, state_dict round trips, training a post-training model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qgraph


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture()
def mlp():
    torch.manual_seed(0)
    return MLP().eval(), torch.randn(8, 32)


def test_empty_calibration_data_is_an_input_error(mlp):
    model, x = mlp
    with pytest.raises(qgraph.InputError, match="empty"):
        qgraph.quantize(model, x, "w8a8", calib_data=[])
    with pytest.raises(qgraph.InputError, match="batch 0"):
        qgraph.quantize(model, x, "w8a8", calib_data=[torch.randn(8, 31)])


def test_one_tensor_as_calibration_data_is_one_batch_or_a_stack_of_batches(mlp):
    """Iterating a ``[64, 32]`` calibration tensor yields unbatched samples; it is one batch now, and a
    ``[4, 16, 32]`` tensor four batches."""
    model, x = mlp
    data = torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    want = qgraph.quantize(model, x, "w8a8", [data]).quantizers()["fc1.input_quantizer"].scale
    assert torch.equal(qgraph.quantize(model, x, "w8a8", data).quantizers()["fc1.input_quantizer"].scale, want)
    stacked = qgraph.quantize(model, x, "w8a8", data.view(4, 16, 32))
    assert torch.equal(stacked.quantizers()["fc1.input_quantizer"].scale, want)  # min-max over the same 64 samples
    with pytest.raises(qgraph.InputError, match=r"one tensor of shape \[64\], and the example input has 2 dims"):
        qgraph.quantize(model, x, "w8a8", data[:, 0])


def test_a_quantized_model_is_not_quantized_again_nor_pickled(mlp, tmp_path):
    import copy
    import pickle

    model, x = mlp
    qm = qgraph.quantize(model, x, "w8a8", [x])
    with pytest.raises(qgraph.InputError, match="already quantized .*recipe 'w8a8'"):
        qgraph.quantize(qm, x, "w8a8")
    with pytest.raises(pickle.PicklingError, match=r"qgraph.load\(path, model\)"):  # was: cannot pickle 'weakref'
        torch.save(qm, tmp_path / "qm.pt")
    twin = copy.deepcopy(qm)  # deepcopy still works
    with torch.no_grad():
        assert torch.equal(twin(x), qm(x))
    assert twin.quantizers()["fc1.input_quantizer"] is not qm.quantizers()["fc1.input_quantizer"]


def test_calibration_sets_activation_ranges_from_the_data(mlp):
    model, x = mlp
    small = qgraph.quantize(model, x, "w8a8", calib_data=[x])
    large = qgraph.quantize(model, x, "w8a8", calib_data=[x * 10])
    s_small = small.quantizers()["fc1.input_quantizer"].scale.item()
    s_large = large.quantizers()["fc1.input_quantizer"].scale.item()
    assert s_large == pytest.approx(10 * s_small, rel=1e-5)
    assert s_small == pytest.approx((x.max() - x.min()).item() / 255, rel=1e-5)
    # weights are calibrated from themselves, not from the data
    torch.testing.assert_close(small.quantizers()["fc1.weight_quantizer"].scale,
                               large.quantizers()["fc1.weight_quantizer"].scale, rtol=0, atol=0)


def test_quantize_is_deterministic(mlp):
    model, x = mlp
    a = qgraph.quantize(model, x, "w4a8", calib_data=[x, -x])
    b = qgraph.quantize(model, x, "w4a8", calib_data=[x, -x])
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_state_dict_round_trip_restores_qparams(mlp):
    model, x = mlp
    qm = qgraph.quantize(model, x, "w8a8", calib_data=[x])
    other = qgraph.quantize(model, x, "w8a8", calib_data=[x * 3])
    with torch.no_grad():
        assert not torch.equal(qm(x), other(x))
    keys = set(qm.state_dict())
    assert {"qgraph.fc1.input_quantizer.scale", "qgraph.fc1.input_quantizer.zero_point", "qgraph.fc1.weight"} <= keys
    other.load_state_dict(qm.state_dict())
    with torch.no_grad():
        assert torch.equal(qm(x), other(x))


def test_fixed_scale_weight_quantizers_follow_trained_weights(mlp):
    """Training a post-training-quantized model: weight qparams are recomputed from the moved weights."""
    model, x = mlp
    qm = qgraph.quantize(model, x, "w8a8", calib_data=[x])
    wq = qm.quantizers()["fc1.weight_quantizer"]
    assert not wq.spec.learnable
    qm.train()
    opt = torch.optim.SGD(qm.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        qm(x).pow(2).sum().backward()
        opt.step()
    qm.eval()
    with torch.no_grad():
        qm(x)  # the first eval call refreshes the weight grid
    w = qm.qgraph.get_submodule("fc1").weight.detach()
    assert not torch.allclose(w, model.fc1.weight)
    torch.testing.assert_close(wq.scale, w.abs().amax(dim=1) / 127, rtol=1e-6, atol=0)
    # activation qparams stay as calibrated (they are buffers, not trained)
    assert "qgraph.fc1.input_quantizer.scale" not in dict(qm.named_parameters())


def test_qat_exports_verified_onnx(mlp, tmp_path):
    model, x = mlp
    qm = qgraph.quantize(model, x, "w4a8", calib_data=[x], qat=True)
    assert qm.training
    opt = torch.optim.Adam(qm.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        qm(x).pow(2).mean().backward()
        opt.step()
    result = qm.export(str(tmp_path / "qat"))  # export switches to eval itself
    assert not qm.training
    assert result.max_abs_error <= result.tolerance


def test_a_fixed_shape_capture_called_with_another_batch_size_names_the_cause():
    # the quantized model and the plain captured graph both translate torch.export's bare guard failure
    class FixedBatch(nn.Module):  # control flow on the batch size: torch.export fixes it
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(x) * 2 if x.shape[0] == 8 else self.fc(x)

    torch.manual_seed(0)
    qm = qgraph.quantize(FixedBatch().eval(), torch.randn(8, 6), "w8a8", calib_data=[(torch.randn(8, 6),)])
    assert qm.qgraph.capture.route == "torch.export"
    assert qm(torch.randn(8, 6)).shape == (8, 3)
    with pytest.raises(qgraph.InputError, match=r"captured with torch.export.*x.size\(\)\[0\] == 8.*\(3, 6\)"):
        qm(torch.randn(3, 6))
    graph = qgraph.trace(FixedBatch().eval(), torch.randn(8, 6))  # the captured graph itself says the same
    with pytest.raises(qgraph.InputError, match=r"captured with torch.export.*x.size\(\)\[0\] == 8.*\(3, 6\)"):
        graph(torch.randn(3, 6))


def test_qat_biases_go_back_on_the_int32_grid_before_export(tmp_path):
    """ONNX Runtime stores the bias of QLinearConv / QGemm as int32 on ``s_x · s_w``. Training moves
    biases (and scales) off that grid, and its rounding then flipped output codes: a frame classifier
    after three SGD steps, 0.00256 off against a tolerance of 0.0005. Export puts them back on it."""
    from qgraph.passes.bias_correction import bias_grid

    from benchmarks.usage_scan import build_case
    from benchmarks.workflow_scan import _outputs

    _, model, _, _, example, calib, _ = build_case("argmax_out")
    qm = qgraph.quantize(model, example, "w8a8", calib, qat=True)
    opt = torch.optim.SGD(qm.parameters(), lr=1e-3)
    for batch in calib:
        opt.zero_grad()
        sum(o.pow(2).mean() for o in _outputs(qm(*batch)) if o.requires_grad).backward()
        opt.step()
    res = qm.export(str(tmp_path / "qat"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance
    rounded = [c for c in qm.changes if c.pass_name == "export" and c.action == "rounded"]
    assert [c.module_path for c in rounded] == ["conv"], rounded  # the conv's result is quantized again: QLinearConv
    conv = next(n for n in qm.qgraph.graph.nodes if n.op == "call_function" and "conv" in str(n.target))
    steps = qm.qgraph.get_submodule("conv").bias / bias_grid(qm.qgraph, conv)
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-3)


def test_quantize_export_and_load_inside_inference_mode(mlp, tmp_path):
    """Inference scripts wrap everything in ``torch.inference_mode()``. ``quantize`` there crashed in bias
    correction ("Inference tensors do not track version counter"), and a model loaded there kept
    inference tensors as its state, so training it later failed. Both now keep ordinary tensors, and
    the results equal those made outside the block."""
    model, x = mlp
    outside = qgraph.quantize(model, x, "w8a8", [x])
    with torch.inference_mode():
        xi = x.clone()  # inputs made in the block are inference tensors too
        assert xi.is_inference()
        qm = qgraph.quantize(model, xi, "w8a8", [xi])
        res = qm.export(str(tmp_path / "im"), formats=("onnx", "qpack"))
        assert res.max_abs_error <= res.tolerance
        loaded = qgraph.load(res.qpack_path, model)
        with qm.frozen():
            assert torch.equal(qm(xi), outside(xi))
            assert torch.equal(loaded(xi), qm(xi))
    assert not any(t.is_inference() for m in (qm, loaded) for t in (*m.parameters(), *m.buffers()))
    for m in (qm, loaded):  # and they train afterwards
        m.train()
        m(x).sum().backward()


def test_exporting_a_model_whose_training_diverged_names_the_parameter(tmp_path):
    """A QAT run that diverged left NaN weights; the export check compared NaN with NaN and reported
    "max abs error 0 ... tolerance nan" instead of saying why."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(6, 4)
    qm = qgraph.quantize(model, x, "w8a8", [x], qat=True)
    with torch.no_grad():
        qm.qgraph.get_parameter("2.weight").fill_(float("nan"))
    with pytest.raises(qgraph.ExportError, match=r"parameter 2\.weight holds NaN values \(did training diverge"):
        qm.export(str(tmp_path / "diverged"), formats=("onnx",))


class _SpecAugment(nn.Module):
    def forward(self, x):
        if self.training:  # time masking, as SpecAugment runs it in training only
            t = torch.arange(x.shape[-1])
            x = x.masked_fill((t >= 2) & (t < 5), 0.0)
        return x


class _Augmented(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.aug, self.drop, self.fc = _SpecAugment(), nn.Dropout(0.5), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.drop(self.aug(x)))


def test_qat_notes_the_training_only_code_the_graph_lacks():
    """The graph is captured in eval mode: a ``forward`` that branches on ``self.training`` lost its
    training branch silently under QAT. The capture notes now name it; ``nn.Dropout`` still runs."""
    x = torch.randn(4, 16)
    qm = qgraph.quantize(_Augmented(), x, "w8a8", [x], qat=True)
    assert any("forward of aug (_SpecAugment) reads self.training" in n for n in qm.qgraph.capture.notes), qm.qgraph.capture.notes
    qm.train()
    assert not torch.equal(qm(x), qm(x))  # dropout is a graph node
    ptq = qgraph.quantize(_Augmented(), x, "w8a8", [x])
    assert not any("self.training" in n for n in ptq.qgraph.capture.notes)  # post-training: eval mode is the point


def test_training_branches_name_each_class_once():
    """A note per module would list every layer of a transformer whose attention reads
    ``self.training`` for its dropout: one entry per class, with how many more modules it has."""
    from qgraph.capture_checks import training_branches

    model = nn.Sequential(_SpecAugment(), nn.Dropout(0.1), _SpecAugment(), _Augmented())
    assert training_branches(model) == ["0 and 2 more (_SpecAugment)"]
