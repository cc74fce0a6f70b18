"""Sparsity recipes (nm, sparse): exact masks, composition with quantization, ONNX parity, qpack round trip."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import tiny_conv_setup
from onnx import numpy_helper
from qgraph.backends.qpack import read_qpack

import qgraph
from examples.models import accuracy
from qgraph.bimask import (
    backward_flops,
    backward_mask,
    finalize_bimask,
    nm_recipe,
    prepare_bimask,
    search_permutation,
    transposable_mask,
)
from qgraph.recipes import recipe_from_json
from qgraph.sparsity import SparseMask, magnitude_mask, nm_counts, nm_indices, nm_mask, nm_mask_from_indices
from qgraph.unipts import BaseDecayedKD, bn_recalibrate, decode, magnitude_prune, unipts


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (4, 8)])
def test_nm_mask_keeps_exactly_n_largest_of_every_group(n, m):
    w = torch.randn(6, 4, 3, 8, generator=torch.Generator().manual_seed(n * m))
    mask = nm_mask(w, n, m)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    assert bool((nm_counts(mask, m) == n).all())
    groups = w.abs().reshape(6, -1, m)
    g_mask = mask.reshape(6, -1, m)
    kept_min = torch.where(g_mask, groups, torch.inf).amin(-1)
    pruned_max = torch.where(g_mask, -torch.inf, groups).amax(-1)
    assert bool((kept_min >= pruned_max).all())  # every kept weight is at least as large as every pruned one
    idx = nm_indices(mask, n, m)
    assert idx.dtype == torch.uint8 and idx.shape == (6, 96 // m * n)
    assert torch.equal(nm_mask_from_indices(idx, tuple(w.shape), n, m), mask)


def test_magnitude_mask_prunes_the_ratio():
    w = torch.randn(10, 33, generator=torch.Generator().manual_seed(0))
    mask = magnitude_mask(w, 0.7)
    assert int((~mask).sum()) == round(0.7 * 330)
    assert float(w.abs()[mask].min()) >= float(w.abs()[~mask].max())


def test_recipe_strings_resolve_and_compose():
    r = qgraph.get_recipe("nm(2,4)")
    assert (r.sparsity.kind, r.sparsity.n, r.sparsity.m, r.weight, r.activation) == ("nm", 2, 4, None, None)
    assert qgraph.get_recipe("nm(n=4, m=8)").sparsity.describe() == "4:8"
    assert qgraph.get_recipe("nm").sparsity.describe() == "2:4"
    assert qgraph.get_recipe("sparse(0.5)").sparsity.ratio == 0.5
    both = qgraph.get_recipe(["nm(1,4)", "w4a8"])
    assert both.name == "nm(1,4)+w4a8" and both.weight.bits == 4 and both.sparsity.n == 1
    assert qgraph.get_recipe("nm(1,4)+w4a8") == both
    back = recipe_from_json(both.to_json())
    assert back.sparsity == both.sparsity and back.to_json() == both.to_json()
    assert "sparsity" not in qgraph.get_recipe("w8a8").to_json()  # quantization-only recipes are unchanged


@pytest.mark.parametrize("text,fragment", [
    ("nm(4,2)", "1 <= n < m"),
    ("nm(2,4", "cannot read recipe 'nm(2,4'"),
    ("nm(x)", "needs integers"),
    ("nm(2, 4, 8, 9)", "does not take"),
    ("sparse(1.5)", "[0, 1)"),
    ("sparse('a lot')", "[0, 1)"),
    ("nm(2,4)+sparse(0.5)", "sparsity recipes"),
    ("w8a8+w4a8", "quantization recipes"),
    ("nnm(2,4)", "unknown recipe 'nnm(2,4)'"),
])
def test_bad_recipe_strings_are_recipe_errors(text, fragment):
    with pytest.raises(qgraph.RecipeError, match=None) as info:
        qgraph.get_recipe(text)
    assert fragment in str(info.value), str(info.value)


def _masks(qm) -> dict[str, SparseMask]:
    return {n: m for n, m in qm.qgraph.named_modules() if isinstance(m, SparseMask)}


def test_nm_with_w8a8_exports_masked_int8_weights_and_round_trips(tmp_path):
    model, x, calib = tiny_conv_setup()
    qm = qgraph.quantize(model, x, recipe=["nm(2,4)", "w8a8"], calib_data=calib)
    masks = _masks(qm)
    assert set(masks) == {"conv2.weight_mask", "fc.weight_mask", "head.weight_mask"}  # conv1: K=27 stays dense
    assert any("kept dense" in str(c) and "K=27" in str(c) for c in qm.changes)
    res = qm.export(str(tmp_path / "net"))  # raises unless ONNX Runtime matches the QModel
    assert res.top1_agreement == 1.0 and res.max_abs_error <= res.tolerance
    # ONNX: the integer weights are the masked ones, exactly 2:4 along each row
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(res.onnx_path).graph.initializer}
    int8 = [a for a in inits.values() if a.dtype == np.int8 and a.ndim >= 2]
    assert len(int8) == 4
    def is_2_4(a):
        return a.reshape(a.shape[0], -1).shape[1] % 4 == 0 and np.all((a.reshape(a.shape[0], -1, 4) != 0).sum(-1) <= 2)

    # the head's result stays float: it is stored as Wᵀ for ONNX Runtime's MatMulIntegerToFloat
    sparse_2_4 = [a for a in int8 if is_2_4(a) or a.ndim == 2 and is_2_4(a.T)]
    assert len(sparse_2_4) == 3
    # qpack: kept codes + 2-bit indices; smaller than the dense w8a8 file; loads back bit for bit
    qp = read_qpack(res.qpack_path)
    assert {k for k, p in qp.packed.items() if p.nm} == {"conv2.weight", "fc.weight", "head.weight"}
    dense = qgraph.quantize(model, x, recipe="w8a8", calib_data=calib).export(str(tmp_path / "dense"), formats=("qpack",))
    assert res.qpack_bytes < 0.75 * dense.qpack_bytes
    qm2 = qgraph.load(res.qpack_path, tiny_conv_setup()[0])
    assert torch.equal(qm2(x), qm(x))
    for name, mask in _masks(qm2).items():
        assert torch.equal(mask.mask, masks[name].mask)


def test_unstructured_sparse_with_w4a8_round_trips(tmp_path):
    model, x, calib = tiny_conv_setup()
    qm = qgraph.quantize(model, x, recipe="sparse(0.6)+w4a8", calib_data=calib)
    masks = _masks(qm)
    assert len(masks) == 4 and all(abs(m.sparsity - 0.6) < 0.01 for m in masks.values())
    res = qm.export(str(tmp_path / "net"))
    qm2 = qgraph.load(res.qpack_path, tiny_conv_setup()[0])
    assert torch.equal(qm2(x), qm(x))
    for name, mask in _masks(qm2).items():  # rebuilt from the codes: may also drop kept weights that quantized to 0
        assert not bool((mask.mask & ~masks[name].mask).any()) and mask.sparsity >= masks[name].sparsity


def test_sparse_only_recipe_exports_float_weights_with_zeros(tmp_path):
    model, x, calib = tiny_conv_setup()
    qm = qgraph.quantize(model, x, recipe="nm(4,8)", calib_data=calib)
    assert not qm.quantizers()
    res = qm.export(str(tmp_path / "net"))
    assert res.max_abs_error < 1e-4
    qm2 = qgraph.load(res.qpack_path, tiny_conv_setup()[0])
    assert torch.equal(qm2(x), qm(x))


def test_frozen_masks_stay_frozen_through_qat_steps():
    model, x, calib = tiny_conv_setup()
    qm = qgraph.quantize(model, x, recipe=["nm(2,4)", "w8a8"], calib_data=calib, qat=True)
    masks = {n: m.mask.clone() for n, m in _masks(qm).items()}
    opt = torch.optim.SGD(qm.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    target = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in qm.state_dict().items() if k.endswith("fc.weight")}
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(qm(x), target).backward()
        opt.step()
    assert not torch.equal(before["qgraph.fc.weight"], qm.state_dict()["qgraph.fc.weight"])  # it trained
    for name, mod in _masks(qm).items():
        assert torch.equal(mod.mask, masks[name])
        w = qm.qgraph.get_parameter(name.replace("weight_mask", "weight"))
        assert bool((nm_counts(mod(w), 4) <= 2).all())
    qm.eval()
    lowered = qm.lowered()
    for name in masks:
        q = lowered.get_submodule(name.replace("weight_mask", "weight_quantizer"))
        w = qm.qgraph.get_parameter(name.replace("weight_mask", "weight"))
        codes = q.qweight if q.qweight.shape == w.shape else q.qweight.t()  # the head is lowered to Wᵀ
        assert bool((nm_counts(codes, 4) <= 2).all())


# --------------------------------------------------------------------------- Bi-Mask


def _two_layer_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(16 * 4 * 4, 12))


def test_bimask_masks_structure_and_gradients():
    net = _two_layer_net()
    report = prepare_bimask(net, 2, 4, greedy=20, refresh=5, decay=1e-2)
    assert report == {"0": "masked", "3": "masked"}
    layer = net[0]
    layer.train()
    x = torch.randn(4, 8, 4, 4, requires_grad=True)
    net(x).sum().backward()
    m_f, m_b = layer.masks()
    assert bool((nm_counts(m_f, 4) == 2).all())  # forward: exactly 2:4 along the input dimension
    assert not bool((m_b & ~m_f).any())  # m_b ⊆ m_f
    per_col = m_b.reshape(16, -1)[layer.masker.perm].reshape(4, 4, -1).sum(1)
    assert bool((per_col <= 2).all())  # backward: ≤ 2 of every 4 permuted output channels per column
    # the input gradient uses W ⊙ m_b; the weight gradient is dense plus decay on the pruned weights
    xx = torch.randn(2, 8, 4, 4, requires_grad=True)
    g = torch.randn(2, 16, 4, 4)
    layer.weight.grad = None
    gx = torch.autograd.grad(layer(xx), xx, g, retain_graph=False)[0]
    w = layer.weight.detach()
    ref_x = xx.detach().clone().requires_grad_()
    ref_w = w.clone().requires_grad_()
    out = torch.nn.functional.conv2d(ref_x, ref_w * m_b, None, padding=1)
    rx, rw = torch.autograd.grad(out, (ref_x, ref_w), g)
    assert torch.allclose(gx, rx, atol=1e-5)
    layer(xx).backward(g)
    ref_w2 = w.clone().requires_grad_()
    (torch.nn.functional.conv2d(xx.detach(), ref_w2, None, padding=1) * g).sum().backward()
    assert torch.allclose(layer.weight.grad, ref_w2.grad + 1e-2 * (~m_f) * w, atol=1e-5)


def test_bimask_permutation_search_keeps_more_than_identity():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    m_f = nm_mask(w, 2, 4)
    ident = int(backward_mask(w, m_f, torch.arange(32), 2, 4).sum())
    perm, best = search_permutation(w, m_f, 2, 4, 50, torch.Generator().manual_seed(0), current=torch.arange(32))
    assert best >= ident and best == int(backward_mask(w, m_f, perm, 2, 4).sum())
    assert best > ident  # 50 random candidates beat the identity on random weights


def test_transposable_mask_is_nm_both_ways_and_finalize_feeds_nm_recipe():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    from qgraph.bimask import _block_patterns

    pats = _block_patterns(2, 4)
    assert len(pats) == 90
    t = transposable_mask(w, 2, 4, pats)
    assert bool((t.reshape(16, -1, 4).sum(-1) == 2).all()) and bool((t.t().reshape(32, -1, 4).sum(-1) == 2).all())
    net = _two_layer_net()
    prepare_bimask(net, 2, 4, mode="transposable")
    x = torch.randn(3, 8, 4, 4)
    flops = backward_flops(net, x)
    assert abs(flops["saved"] - 0.25) < 1e-9  # every layer's input gradient runs 2:4
    with torch.no_grad():
        y = net(x)
    finalize_bimask(net)
    assert isinstance(net[0], torch.nn.Conv2d)
    with torch.no_grad():
        assert torch.allclose(net(x), y, atol=1e-5)
    qm = qgraph.quantize(net, x, recipe="nm(2,4)")  # the nm recipe finds the trained masks again
    assert torch.allclose(qm(x), y, atol=1e-5)
    skip_head = {"0": "masked", "3": "dense: skipped"}
    assert nm_recipe(skip_head).sparsity.skip == ("3",)
    qm = qgraph.quantize(net, x, recipe=[nm_recipe(skip_head), "w8a8"])
    assert [m.where for m in qm.qgraph.modules() if isinstance(m, SparseMask)] == ["0"]


# --------------------------------------------------------------------------- UniPTS


def test_base_decayed_kd_gradient():
    kd = BaseDecayedKD(temperature=4.0, tau0=8.0, decay=0.99)
    kd.set_epoch(50)
    zs = torch.randn(5, 10, requires_grad=True)
    zt = torch.randn(5, 10)
    kd(zs, zt).backward()
    expected = 16.0 / (5 * kd.tau) * (torch.softmax(zs.detach(), -1) - torch.softmax(zt / 4.0, -1))
    assert abs(kd.tau - 8 * 0.99**50) < 1e-12 and torch.allclose(zs.grad, expected, atol=1e-6)


def test_decode_reaches_the_target_and_bn_recalibration_matches_batch_stats():
    sizes = [100, 2000, 500]
    ratios = decode(torch.tensor([0.3, -1.0, 2.0]), sizes, 0.5)
    assert abs(sum(r * n for r, n in zip(ratios, sizes)) - 0.5 * sum(sizes)) < 1e-3  # (float32 softmax)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    x = torch.randn(20, 1, 6, 6)
    bn_recalibrate(net, x, noise=0.0, batch_size=20)
    with torch.no_grad():
        y = net[0](x)
    assert torch.allclose(net[1].running_mean, y.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(net[1].running_var, y.var((0, 2, 3), unbiased=True), atol=1e-4)


def test_unipts_beats_magnitude_pruning_at_90_percent(trained_cnn, digits):
    x_tr, _, x_te, y_te = digits
    calib = x_tr[:64]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: a second thread only adds contention
    try:
        result = unipts(trained_cnn, calib, 0.9, population=6, generations=3, epochs=30)
    finally:
        torch.set_num_threads(threads)
    assert abs(result.sparsity() - 0.9) < 0.01
    mag = accuracy(magnitude_prune(trained_cnn, 0.9), x_te, y_te)
    acc = accuracy(result.model, x_te, y_te)
    assert acc > 0.8 and acc > mag + 0.3, (acc, mag)
    qm = qgraph.quantize(result.model, x_te[:32], recipe=[result.recipe(), "w8a8"], calib_data=[calib])
    masked = [m for m in qm.qgraph.modules() if isinstance(m, SparseMask)]
    assert len(masked) == 6 and accuracy(qm, x_te, y_te) > acc - 0.02


def test_a_replicate_padded_conv_gets_its_mask(tmp_path):
    """A conv with ``padding_mode="replicate"`` stayed a module call: its weight was no graph value, so
    it kept all its weights (recorded dense). Canonicalize now makes it ``F.pad`` and a functional
    conv, so it is masked like any conv, and the file still matches."""
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode="replicate")

        def forward(self, x):
            return self.c2(torch.relu(self.c1(x)))

    x = torch.randn(2, 8, 8, 8)
    qm = qgraph.quantize(Net().eval(), x, "nm(2,4)+w8a8", [x])
    assert {c.module_path for c in qm.changes if c.action == "masked"} == {"c1", "c2"}
    assert not [c for c in qm.changes if c.action == "kept dense"]
    w = qm.qgraph.get_submodule("c2.weight_mask")(qm.qgraph.get_parameter("c2.weight"))
    assert ((w.reshape(8, -1, 4) != 0).sum(-1) <= 2).all()  # 2 of every 4 along the input
    res = qm.export(str(tmp_path / "rep"))
    assert res.max_abs_error <= res.tolerance


def test_a_zero_weight_layer_under_a_mask_keeps_its_bias_in_int32(tmp_path):
    """A spatial transformer's head starts with zero weights and the identity as its bias. Its weight
    scale was then 1e-30, and ONNX Runtime's int32 bias ``b / (s_x · s_w)`` overflowed unless the input
    scale was raised to fit (the bias floor): to ~1e20, which wiped out the other layer reading that
    input. Under an N:M mask the floor was skipped and the file's theta was garbage. A channel of
    zeros now gets weight scale 1 (its codes are 0 either way), and the floor reads masked weights."""
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head, self.side = torch.nn.Linear(8, 16), torch.nn.Linear(16, 6), torch.nn.Linear(16, 6)
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))

        def forward(self, x):
            h = torch.relu(self.body(x))
            return self.head(h) * self.side(h)

    torch.manual_seed(0)
    x, model = torch.randn(4, 8), Net().eval()
    for recipe in ("w8a8", "nm(2,4)+w8a8"):
        qm = qgraph.quantize(model, x, recipe, [torch.randn(4, 8) for _ in range(2)])
        assert any(c.action == "masked" and c.module_path == "head" for c in qm.changes) == (recipe != "w8a8")
        res = qm.export(str(tmp_path / "stn"), formats=("onnx",))
        assert res.max_abs_error <= res.tolerance
        assert all(getattr(q, "raised_from", None) is None for q in qm.quantizers().values())  # calibrated grids kept
        if recipe == "w8a8":  # (N:M prunes `side`: the float model is no reference there)
            with torch.no_grad():
                want = model(x)
                assert 10 * torch.log10(want.pow(2).sum() / (qm(x) - want).pow(2).sum()) > 30
