"""``qm.frozen()``: weights fake-quantized once while nothing they depend on changes."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_conv_setup

import qgraph
from qgraph import quantizer as quantizer_mod
from qgraph.quantizer import FakeQuantize, frozen_weights


@pytest.fixture
def tiny():
    model, x, calib = tiny_conv_setup()
    qm = qgraph.quantize(model, x, "w8a8", calib_data=calib).eval()
    return qm, x, calib


def _weight_quantizers(qm) -> list[FakeQuantize]:
    return [q for q in qm.quantizers().values() if q.role == "weight"]


def _count_computations(qm, monkeypatch) -> list[int]:
    """Count how often weight quantizers actually compute (not served from the memo)."""
    calls = [0]
    original = FakeQuantize._quantize

    def counting(self, x):
        if self.role == "weight":
            calls[0] += 1
        return original(self, x)

    monkeypatch.setattr(FakeQuantize, "_quantize", counting)
    return calls


def test_frozen_outputs_equal_plain_outputs_and_weights_are_quantized_once(tiny, monkeypatch):
    qm, x, calib = tiny
    n_weights = len(_weight_quantizers(qm))
    with torch.no_grad():
        plain = [qm(b) for b in calib]
        calls = _count_computations(qm, monkeypatch)
        with qm.frozen():
            frozen = [qm(b) for b in calib]
    assert all(torch.equal(a, b) for a, b in zip(plain, frozen))
    assert calls[0] == n_weights  # once each, not once per batch (5 batches)
    assert not quantizer_mod._MEMO and quantizer_mod._FROZEN_BLOCKS == 0


@pytest.mark.parametrize("change", ["in_place_step", "load_state_dict", "set_qparams", "data_assignment", "train_eval"])
def test_a_changed_weight_or_grid_is_quantized_again(tiny, change):
    qm, x, _ = tiny
    conv = qm.qgraph.get_submodule("conv1")
    q = qm.qgraph.get_submodule("conv1.weight_quantizer")
    with torch.no_grad(), qm.frozen():
        before = qm(x)
        if change == "in_place_step":  # what an optimizer does
            conv.weight.mul_(-0.5)
        elif change == "load_state_dict":
            state = qm.state_dict()
            state["qgraph.conv1.weight"] = -0.5 * state["qgraph.conv1.weight"]
            qm.load_state_dict(state)
        elif change == "set_qparams":
            q.set_qparams(q.scale * 2, q.zero_point)
        elif change == "data_assignment":
            conv.weight.data = -0.5 * conv.weight.detach().clone()
        elif change == "train_eval":  # a fixed-scale weight quantizer re-reads its weight after training
            conv.weight.mul_(-0.5)
            qm.train()
            qm.eval()
        after = qm(x)
    with torch.no_grad():
        expected = qm(x)  # outside the block: computed from scratch
    assert torch.equal(after, expected)
    assert not torch.equal(after, before)


def test_calls_that_need_gradients_are_not_memoised(tiny):
    qm, x, _ = tiny
    conv = qm.qgraph.get_submodule("conv1")
    with qm.frozen():
        with torch.no_grad():
            qm(x)  # fills the memo
        qm(x).square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_blocks_nest_and_only_plain_weight_quantizers_are_memoised(tiny):
    qm, x, _ = tiny
    weights = _weight_quantizers(qm)
    with frozen_weights(qm):
        with frozen_weights(qm):
            pass
        assert set(quantizer_mod._MEMO) == set(weights)  # the outer block still holds them
        assert all(q.role == "weight" for q in quantizer_mod._MEMO)
    assert not quantizer_mod._MEMO


def test_switching_bits_inside_a_block_is_not_served_stale(trained_cnn, example_batch, calib):
    qm = qgraph.quantize(trained_cnn, example_batch, recipe="bitswitch(8,4)", calib_data=calib).eval()
    with torch.no_grad():
        qm.set_bits(4)
        want4 = qm(example_batch)
        qm.set_bits(8)
        want8 = qm(example_batch)
        with qm.frozen():
            got8 = qm(example_batch)
            qm.set_bits(4)
            got4 = qm(example_batch)
    assert torch.equal(got8, want8) and torch.equal(got4, want4)
    assert not torch.equal(want8, want4)
