"""The export check's default tolerance: it scales with the outputs (no absolute floor that makes the
check vacuous for tiny logits), and its drift term is the model's own tie-flip sensitivity."""

from __future__ import annotations

import copy

import pytest
import qgraph.backends.ort as ort_backend
import torch
from helpers import tiny_conv_setup

import qgraph
from qgraph.errors import ExportMismatchError
from qgraph.export_tolerance import DRIFT_FACTOR, export_tolerance, grid_tolerance, rounding_drift

TINY = 1e-9


@pytest.fixture(scope="module")
def models():
    """The same TinyConvNet quantized twice: as is, and with its head scaled by 1e-9 (logits ~1e-9,
    the regime of random-weight EfficientNets)."""
    model, x, calib = tiny_conv_setup()
    small = copy.deepcopy(model)
    with torch.no_grad():
        small.head.weight.mul_(TINY)
        small.head.bias.mul_(TINY)
    return x, qgraph.quantize(model, x, "w8a8", calib), qgraph.quantize(small, x, "w8a8", calib)


def test_tolerance_scales_with_the_outputs(models):
    x, big, small = models
    with torch.no_grad():
        t_big, t_small = export_tolerance(big, (x,), big(x)), export_tolerance(small, (x,), small(x))
    assert t_big.value == max(t_big.grid, DRIFT_FACTOR * t_big.drift) > 0
    assert t_small.value == pytest.approx(TINY * t_big.value, rel=1e-3)
    assert t_small.grid == pytest.approx(TINY * t_big.grid, rel=1e-3)
    assert t_small.value < 1e-9  # the old rule added 1e-5: a thousand times the outputs themselves


def test_tiny_outputs_still_catch_a_wrong_onnx_file(models, tmp_path, monkeypatch):
    x, _, small = models
    ok = small.export(str(tmp_path / "ok"), formats=("onnx",))
    assert ok.max_abs_error <= ok.tolerance < 1e-9 and ok.drift is not None

    real_run = ort_backend.run

    def ten_percent_off(sess, args):  # a translation bug that scales the logits by 1.1 (errors ~1e-10)
        return [o * 1.1 for o in real_run(sess, args)]

    monkeypatch.setattr(ort_backend, "run", ten_percent_off)
    with pytest.raises(ExportMismatchError, match="disagrees"):
        small.export(str(tmp_path / "bad"), formats=("onnx",))


def test_rounding_drift_is_the_models_own_tie_sensitivity(models):
    x, big, _ = models
    with torch.no_grad():
        before = big(x)
        assert rounding_drift(big, (x,), eps=0.0) == 0.0  # no noise, same codes, same outputs
        coarse = rounding_drift(big, (x,), eps=1e-2)
        assert coarse > 0  # 1% noise flips codes, and the outputs move
        assert coarse <= float(before.abs().max())
        assert torch.equal(big(x), before)  # the jitter hooks are gone


def test_weight_only_models_have_no_drift_and_a_float_tolerance():
    model, x, calib = tiny_conv_setup()
    qm = qgraph.quantize(model, x, "w8a16", calib)
    with torch.no_grad():
        out = qm(x)
    assert rounding_drift(qm, (x,)) == 0.0
    tol = export_tolerance(qm, (x,), out)
    assert tol.value == tol.grid == pytest.approx(1e-4 * float(out.abs().max()))
    assert grid_tolerance(qm.qgraph, out) == tol.grid


def test_drift_jitters_values_near_an_asymmetric_zero_point_in_code_units():
    """An integer kernel's float error scales with the code ``a/s + z``, not with ``a``: ONNX Runtime's
    QLinearAdd rounded a FasterNet residual code 4e-6 from a tie the other way. Values 4e-5 steps from a
    tie and 2.5 steps below a zero point of 100: a jitter of ``|a|·1e-6`` (2.5e-6 steps) never flips
    them, one of the code's size (1e-4 steps) does, and the drift is one step."""
    from qgraph.qspec import QSpec
    from qgraph.quantizer import FakeQuantize

    q = FakeQuantize(QSpec(bits=8, symmetric=False, signed=False), "activation", where="x")
    q.set_qparams(torch.tensor(0.01), torch.tensor(100.0))
    q.set_mode("quantize")
    x = torch.full((4096,), 0.01 * (-2.5 + 4e-5))
    drift = rounding_drift(torch.nn.Sequential(q), (x,))
    assert drift == pytest.approx(0.01, rel=1e-3)
