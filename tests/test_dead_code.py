"""Passes keep in-place work whose result nothing reads, and a float rewrite that changes the model is
caught (torchvision's MViT-v2 lost its residual pooling: fx's dead-code elimination dropped the
``torch.fx.wrap``ped function that adds it in place)."""

import pytest
import torch
import torch.fx as fx
from qgraph.passes.base import QPass
from qgraph.passes.pipeline import run_float_rewrites
from torch import nn

import qgraph
from qgraph.dead_code import eliminate_dead_code, may_mutate
from qgraph.errors import CaptureError


def add_into(x, y):  # writes into its argument and returns nothing anyone reads (like MViT's _add_shortcut)
    x.add_(y)
    return x


torch.fx.wrap("add_into")


class InPlace(nn.Module):
    """Three in-place writes whose results are unused: a method, a wrapped function, an inplace module."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.fc1(x)
        y.mul_(0.5)
        z = self.fc2(y)
        add_into(z, y)
        self.act(z)
        return self.fc3(z)


def test_in_place_nodes_with_unused_results_survive_dead_code_elimination():
    gm = fx.symbolic_trace(InPlace().eval())
    kinds = {n.name: may_mutate(n) for n in gm.graph.nodes if n.op not in ("placeholder", "output")}
    assert kinds["mul_"] and kinds["add_into"] and kinds["act"]
    assert not kinds["fc1"] and not kinds["fc2"]  # modules without inplace state are pure
    assert not eliminate_dead_code(gm.graph)  # nothing to drop: every unused node writes in place
    # the same graph with fx's own test loses all three
    assert fx.symbolic_trace(InPlace().eval()).graph.eliminate_dead_code()


def test_quantize_keeps_in_place_writes():
    torch.manual_seed(0)
    model = InPlace().eval()
    x = torch.randn(16, 8)
    with torch.no_grad():
        ref = model(x.clone())
    qm = qgraph.quantize(model, x, "w8a8", calib_data=[(torch.randn(16, 8),) for _ in range(4)])
    with torch.no_grad():
        assert torch.allclose(qm._float_graph(x.clone()), ref, atol=1e-6)  # the float reference is the model
        got = qm(x.clone())
    sqnr = 10 * torch.log10(ref.pow(2).mean() / (ref - got).pow(2).mean())
    assert sqnr > 30, f"w8a8 SQNR {sqnr:.1f} dB"  # before the fix the in-place writes were gone: about 3 dB


class _ScaleWeights(QPass):  # a float rewrite gone wrong: it changes a weight
    name = "bad_fold"
    float_rewrite = True

    def call(self, gm):
        gm.fc1.weight.data.mul_(3.0)
        self.record("folded", "fc1", "fc1")
        return self.finish(gm, False)


def test_a_float_rewrite_that_changes_the_model_is_named():
    torch.manual_seed(0)
    gm = fx.symbolic_trace(InPlace().eval())
    with pytest.raises(CaptureError, match=r"pass bad_fold changed what the float model computes.*SQNR"):
        run_float_rewrites(gm, [_ScaleWeights()], (torch.randn(4, 8),))


def test_a_pure_call_whose_out_argument_is_none_is_dead_code():
    """fx records ``F.normalize(w)`` with its defaults, ``out=None`` included; the purity test read any
    ``out`` keyword as a write, so a weight normalised in ``forward`` and folded into a parameter kept
    its dead normalisation, and the capture notes claimed the raw weight stayed float."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 8))

        def forward(self, x):
            torch.nn.functional.normalize(self.w, dim=-1)  # result unused: dead
            return torch.nn.functional.normalize(x, dim=-1, out=torch.empty_like(x))

    gm = fx.symbolic_trace(M())
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.nn.functional.normalize]
    assert [n.kwargs.get("out") is None for n in calls] == [True, False] and "out" in calls[0].kwargs
    assert not may_mutate(calls[0]) and may_mutate(calls[1])
    assert eliminate_dead_code(gm.graph)
    assert [n.kwargs.get("out") is None for n in gm.graph.nodes if n.target is torch.nn.functional.normalize] == [False]
