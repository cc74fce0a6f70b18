"""Models whose weights a forward pre-hook computes: pruning left in place, the hook-based
weight_norm and spectral_norm. ``quantize`` refused pruned and weight-normed models
(``copy.deepcopy``: "Only Tensors created explicitly by the user (graph leaves) support the deepcopy
protocol"), and a spectral-normed model failed its export (``weight`` is not a buffer)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import qgraph
from qgraph.summary import sqnr_db
from qgraph.weight_hooks import copy_with_plain_weights


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _pruned() -> nn.Module:
    m = _cnn()
    prune.l1_unstructured(m[0], "weight", amount=0.5)
    prune.random_unstructured(m[6], "weight", amount=0.25)
    prune.l1_unstructured(m[6], "weight", amount=0.25)  # pruned twice: a PruningContainer
    return m.eval()


def _weight_normed() -> nn.Module:
    m = _cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of parametrizations, still common
        m[0] = nn.utils.weight_norm(m[0])
        m[2] = nn.utils.weight_norm(m[2], dim=None)
    return m.eval()


def _spectral_normed() -> nn.Module:
    m = _cnn()
    m[2], m[6] = nn.utils.spectral_norm(m[2]), nn.utils.spectral_norm(m[6])
    m.train()
    with torch.no_grad():
        m(torch.randn(2, 3, 8, 8))  # power iterations, as training runs them
    return m.eval()


@pytest.mark.parametrize("build, kind, hooked", [(_pruned, "pruning", ["0.weight", "6.weight"]),
                                                 (_weight_normed, "weight_norm", ["0.weight", "2.weight"]),
                                                 (_spectral_normed, "spectral_norm", ["2.weight", "6.weight"])])
def test_hook_computed_weights_are_quantized_as_the_model_computes_them(build, kind, hooked, tmp_path):
    model = build()
    g = torch.Generator().manual_seed(1)
    x, calib = torch.randn(4, 3, 8, 8, generator=g), [torch.randn(8, 3, 8, 8, generator=g) for _ in range(2)]
    with torch.no_grad():
        want = model(x)
    hooks_before = {p: len(m._forward_pre_hooks) for p, m in model.named_modules()}
    qm = qgraph.quantize(model, x, "w8a8", calib)
    # the user's model keeps its hooks and its reparametrized weights
    assert {p: len(m._forward_pre_hooks) for p, m in model.named_modules()} == hooks_before
    assert not any(isinstance(model.get_submodule(h.rsplit(".", 1)[0])._parameters.get("weight"), nn.Parameter) for h in hooked)
    with torch.no_grad():
        assert torch.equal(model(x), want)
    notes = [n for n in qm.qgraph.capture.notes if kind in n]
    assert sorted(n.split(":")[0] for n in notes) == hooked, qm.qgraph.capture.notes
    assert sum(q.role == "weight" for q in qm.quantizers().values()) == 3
    with torch.no_grad():
        assert torch.allclose(qm._float_graph(x), want, atol=1e-6)  # the float graph computes the model's weights
        with qm.frozen():
            assert sqnr_db(want, qm(x)) > 30
    res = qm.export(str(tmp_path / kind), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance


def test_pruned_weights_are_zero_codes_in_the_packed_file(tmp_path):
    from qgraph.backends.qpack import read_qpack

    model = _pruned()
    copied, notes, masks = copy_with_plain_weights(model)
    assert torch.equal(copied[0].weight, model[0].weight_orig * model[0].weight_mask)
    assert isinstance(copied[0].weight, nn.Parameter) and not hasattr(copied[0], "weight_orig")
    assert notes[0].startswith("0.weight: pruning") and "50% zeros" in notes[0]
    assert sorted(masks) == ["0", "6"] and torch.equal(masks["6"], model[6].weight_mask.bool())
    qm = qgraph.quantize(model, torch.randn(4, 3, 8, 8), "w8a8")
    pack = read_qpack(qm.export(str(tmp_path / "pruned"), formats=("qpack",)).qpack_path)
    (name,) = [k for k in pack.packed if k.startswith("0.")]
    p = pack.packed[name]
    zero_codes = torch.from_numpy(p.codes.astype("int32")) == torch.from_numpy(p.zero_point.astype("int32")).reshape(-1, 1, 1, 1)
    assert torch.equal(zero_codes, ~model[0].weight_mask.bool())  # exactly the pruned weights decode to 0


def test_qat_keeps_pruned_weights_at_zero(tmp_path):
    """Pruning then quantization-aware fine-tuning: the pruned weights must stay zero through the
    training steps (the mask is kept in the graph), and the export still verifies."""
    model = _pruned()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, 8, 8, generator=g)
    qm = qgraph.quantize(model, x, "w8a8", [x], qat=True)
    assert any(c.pass_name == "prune_masks" and c.action == "masked" and c.module_path == "0" for c in qm.changes)
    opt = torch.optim.SGD(qm.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        qm(x).square().mean().backward()
        opt.step()
    pruned = ~model[0].weight_mask.bool()
    masked = [m for m in qm.qgraph.modules() if type(m).__name__ == "SparseMask"]
    assert len(masked) == 2
    qm.eval()
    res = qm.export(str(tmp_path / "qat"), formats=("onnx", "qpack"))
    assert res.max_abs_error <= res.tolerance
    # the trained weights as the model uses them: zero where pruned, moved elsewhere
    used = {m.where: m(qgraph_weight(qm, m.where)) for m in masked}
    assert not used["0"][pruned].any() and not torch.equal(used["0"][~pruned], model[0].weight[~pruned])
    # the qpack loads onto the pruned model and onto a fresh one of the same architecture
    for target in (model, _cnn().eval()):
        loaded = qgraph.load(res.qpack_path, target)
        with torch.no_grad():
            assert torch.equal(loaded(x), qm(x))


def qgraph_weight(qm, path: str) -> torch.Tensor:
    """The trained weight tensor the mask at ``path`` multiplies."""
    for n in qm.qgraph.graph.nodes:
        if n.op == "call_module" and type(qm.qgraph.get_submodule(n.target)).__name__ == "SparseMask" \
                and qm.qgraph.get_submodule(n.target).where == path:
            w = n.args[0]
            return qm.qgraph.get_parameter(w.target) if w.op == "get_attr" else None
    raise KeyError(path)


def test_a_pruned_model_under_a_sparsity_recipe_keeps_both_masks():
    model = _pruned()
    qm = qgraph.quantize(model, torch.randn(4, 3, 8, 8), "nm(2,4)+w8a8")
    (mask,) = [m for m in qm.qgraph.modules() if type(m).__name__ == "SparseMask" and m.where == "2"]
    assert mask.n == 2 and mask.m == 4  # conv 2 was not pruned: N:M alone
    (both,) = [m for m in qm.qgraph.modules() if type(m).__name__ == "SparseMask" and m.where == "6"]
    assert not both.mask[~model[6].weight_mask.bool()].any()  # the pruned zeros stay masked
    assert both.mask.view(4, -1, 4).sum(-1).max() <= 2  # and each group of 4 keeps at most 2
    (alone,) = [m for m in qm.qgraph.modules() if type(m).__name__ == "SparseMask" and m.where == "0"]
    assert torch.equal(alone.mask, model[0].weight_mask.bool())  # 27 weights per row: no N:M, the pruning mask


def test_tracing_a_pruned_half_precision_model_leaves_it_as_it_was():
    """``qgraph.trace`` captures a bfloat16 model as a float32 copy; a pruned one refused the copy
    ("Only Tensors created explicitly by the user support the deepcopy protocol")."""
    model = _pruned().to(torch.bfloat16)
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    graph = qgraph.trace(model, x)
    assert graph.capture.upcast and model[0].weight_orig.dtype == torch.bfloat16
    assert hasattr(model[0], "weight_mask")  # the user's model keeps its pruning
    with torch.no_grad():
        assert sqnr_db(model(x).float(), graph(x)) > 40
