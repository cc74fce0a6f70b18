"""Bias correction (passes/bias_correction.py): each weight-quantized layer's mean output shift, measured
on the calibration data, is subtracted from its bias."""

from __future__ import annotations

import pytest
import torch
from qgraph.passes.bias_correction import bias_grid, targets
from torch import nn

import qgraph
from examples.models import accuracy
from qgraph.recipes import build_recipe, recipe_from_json


def test_bias_correction_recovers_w2a16_accuracy_on_digits(trained_cnn, example_batch, calib, digits):
    """Real data: 2-bit weights shift every layer's mean output; correcting the biases on the
    calibration images (training split) recovers most of the test accuracy."""
    _, _, x_te, y_te = digits
    fp = accuracy(trained_cnn, x_te, y_te)
    off = qgraph.quantize(trained_cnn, example_batch, "w2a16(bias_correction=False)", calib_data=calib)
    on = qgraph.quantize(trained_cnn, example_batch, "w2a16", calib_data=calib)
    acc_off, acc_on = accuracy(off, x_te, y_te), accuracy(on, x_te, y_te)
    assert acc_off < 0.7 and acc_on > 0.85 and acc_on > acc_off + 0.2, (fp, acc_off, acc_on)
    corrected = [c for c in on.changes if c.pass_name == "bias_correction" and c.action == "corrected"]
    assert len(corrected) == len(targets(on.qgraph)) == 6  # stem, conv1, conv2, conv3, fc1, fc2


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32, bias=False)
        self.b = nn.Linear(32, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + 0.5)


def _data(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 16, generator=g) + 1.0 for _ in range(n)]


@pytest.mark.parametrize("recipe", ["w4a8", "w2a16"])
def test_output_mean_matches_float_on_the_calibration_data(recipe):
    """After correction the last layer's per-channel mean over the calibration samples equals the
    float model's (exact with weight-only quantization, given the corrected layers before it)."""
    torch.manual_seed(0)
    model = _MLP().eval()
    calib = _data(4, 1)
    x = torch.cat(calib)
    with torch.no_grad():
        ref = model(x).mean(0)
        qm = qgraph.quantize(model, calib[0], recipe, calib_data=calib)
        on = qm(x).mean(0)
        off = qgraph.quantize(model, calib[0], f"{recipe}(bias_correction=False)", calib_data=calib)(x).mean(0)
    err_on, err_off = (on - ref).abs().max(), (off - ref).abs().max()
    assert err_off > 1e-3
    if recipe == "w2a16":  # exact (float rounding aside)
        assert err_on < 1e-5, (err_on, err_off)
    else:  # w4a8: the biases are then rounded to the int32 grid s_x*s_w, and the next layer's 8-bit inputs move with them
        assert bias_grid(qm.qgraph, targets(qm.qgraph)[-1]) is not None
        assert err_on < err_off / 10, (err_on, err_off)


def test_added_biases_and_the_int32_grid_survive_export_and_load(tmp_path):
    """A layer without a bias gets a (corrected) one; it is on the grid ONNX Runtime's integer kernels
    store (s_x*s_w), the ONNX file matches, and qgraph.load rebuilds the same model from the qpack."""
    torch.manual_seed(0)
    model = _MLP().eval()
    calib = _data(4, 1)
    qm = qgraph.quantize(model, calib[0], "w8a8", calib_data=calib)
    assert any(c.pass_name == "zero_bias" and "a.bias" in c.detail for c in qm.changes)
    gm = qm.qgraph
    for node in targets(gm):
        grid = bias_grid(gm, node)
        bias = gm.get_parameter(node.args[2].target if len(node.args) > 2 else node.kwargs["bias"].target)
        assert grid is not None and bias.abs().max() > 0
        assert torch.equal(torch.round(bias / grid) * grid, bias)
    res = qm.export(str(tmp_path / "mlp"))
    assert res.max_abs_error <= res.tolerance
    back = qgraph.load(str(tmp_path / "mlp.qpack"), _MLP())
    x = torch.cat(_data(2, 7))
    with torch.no_grad():
        assert torch.equal(back(x), qm(x))


def test_recipe_option_and_files_written_before_it():
    assert build_recipe("w8a8").bias_correction and not build_recipe("w8a8(bias_correction=False)").bias_correction
    assert not build_recipe("w8a8").with_learnable_scales().bias_correction  # QAT trains the biases instead
    d = build_recipe("w8a8").to_json()
    assert recipe_from_json(d).bias_correction
    del d["bias_correction"]  # a qpack written before bias correction existed
    assert not recipe_from_json(d).bias_correction


def test_qat_does_not_correct_or_add_biases():
    model = _MLP().eval()
    qm = qgraph.quantize(model, _data(1, 0)[0], "w8a8", calib_data=_data(2, 1), qat=True)
    assert not any(c.pass_name in ("bias_correction", "zero_bias") for c in qm.changes)
    assert qm.qgraph.get_submodule("a").bias is None


def _corrections(qm) -> dict[str, str]:
    return {c.node: c.detail for c in qm.changes if c.pass_name == "bias_correction" and c.action == "corrected"}


class _FixedBatch(nn.Module):
    """Control flow on one batch size: captured by torch.export, which fixes the batch size to it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 8)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return y * 2 if x.shape[0] == 8 else y


def test_a_fixed_batch_graph_is_corrected_batch_by_batch():
    """The joined calibration batch does not fit a torch.export capture (its batch size is fixed): the
    correction goes batch by batch, each batch in execution order, and still brings the output means to the float model's."""
    torch.manual_seed(0)
    model, calib = _FixedBatch().eval(), _data(4, 2)
    qm = qgraph.quantize(model, calib[0], "w2a16", calib_data=calib)
    assert qm.qgraph.capture.route == "torch.export"
    details = list(_corrections(qm).values())
    assert len(details) == 2 and all("4 batches, each corrected in order, averaged" in d for d in details), details
    with torch.no_grad():
        ref = torch.cat([model(b) for b in calib]).mean(0)
        on = torch.cat([qm(b) for b in calib]).mean(0)
        off = torch.cat([qgraph.quantize(model, calib[0], "w2a16(bias_correction=False)", calib_data=calib)(b) for b in calib]).mean(0)
    assert (on - ref).abs().max() < 0.05 * (off - ref).abs().max(), (on - ref, off - ref)


class _FixedBatchDeep(nn.Module):
    """Ten amplifying layers after the batch-size branch: every upstream correction moves every
    downstream mean, which correcting all layers at once from the same measurement overshoots."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(24, 24) for _ in range(10))
        with torch.no_grad():
            for m in self.layers:
                m.weight.mul_(2.5)

    def forward(self, x):
        for m in self.layers:
            x = torch.relu(m(x)) - 0.5
        return x * 2 if x.shape[0] == 8 else x


def test_a_deep_fixed_batch_graph_is_corrected_in_order_not_overshot():
    """Batch by batch, each batch's layers are corrected in execution order (as in one joined batch):
    the output means come to the float model's, which correcting every layer at once over rounds
    missed by more than the uncorrected model on this graph."""
    torch.manual_seed(0)
    model = _FixedBatchDeep().eval()
    calib = [(torch.randn(8, 24, generator=torch.Generator().manual_seed(i)),) for i in range(4)]
    qm = qgraph.quantize(model, calib[0], "w8a16", calib_data=calib)
    assert qm.qgraph.capture.route == "torch.export"
    assert all("each corrected in order" in d for d in _corrections(qm).values())
    off = qgraph.quantize(model, calib[0], "w8a16(bias_correction=False)", calib_data=calib)
    with torch.no_grad():
        ref = torch.cat([model(*b) for b in calib]).mean(0)
        err_on = (torch.cat([qm(*b) for b in calib]).mean(0) - ref).abs().max()
        err_off = (torch.cat([off(*b) for b in calib]).mean(0) - ref).abs().max()
    assert err_on < 0.2 * err_off, (err_on, err_off)


class _ZeroRowsNorm(nn.Module):
    """Bias-less layers around an RMS norm: an input row of zeros stays exactly zero in the float
    model (a padding token's zero embedding), and any bias added to ``a`` is blown up by the norm."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32, bias=False)
        self.b = nn.Linear(32, 8, bias=False)

    def forward(self, x):
        h = self.a(x)
        return self.b(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-10))


def test_corrections_that_raise_the_output_error_are_reverted():
    torch.manual_seed(0)
    model = _ZeroRowsNorm().eval()
    g = torch.Generator().manual_seed(3)
    calib = [torch.randn(8, 16, generator=g) for _ in range(4)]  # zero-mean inputs: little mean shift to remove
    for b in calib:
        b[::2] = 0.0  # every other sample is all zeros
    qm = qgraph.quantize(model, calib[0], "w8a16", calib_data=calib)
    off = qgraph.quantize(model, calib[0], "w8a16(bias_correction=False)", calib_data=calib)
    reverted = [c for c in qm.changes if c.pass_name == "bias_correction" and c.action == "reverted"]
    assert len(reverted) == 2 and "all reverted" in reverted[0].detail, [str(c) for c in qm.changes if c.pass_name == "bias_correction"]
    x = torch.cat(calib)
    with torch.no_grad():
        assert torch.equal(qm(x), off(x))
        assert torch.equal(qm(x[::2]), torch.zeros(x[::2].shape[0], 8))  # zero rows stay exactly zero


class _OneVector(nn.Module):
    """A linear layer on one 1-D vector (the first row's features, a pooled summary)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(x[0])) + x[:, :3].sum(0)


def test_a_linear_on_a_1d_vector_is_corrected(tmp_path):
    """Its output has only the channel dim: the per-channel sum over no other dims was ``sum(dim=[])``,
    which sums everything, and quantize crashed inside torch ("zero-dimensional tensor cannot be
    concatenated")."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, generator=g)
    model = _OneVector().eval()
    qm = qgraph.quantize(model, x, "w4a16", [torch.randn(4, 8, generator=g) for _ in range(4)])
    assert any(c.pass_name == "bias_correction" and c.module_path == "fc" and c.action in ("corrected", "reverted")
               for c in qm.changes), [c for c in qm.changes if c.pass_name == "bias_correction"]
    res = qm.export(str(tmp_path / "vec"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance
