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
from qgraph.recipes import recipe_from_json
from qgraph.sparsity import SparseMask, magnitude_mask, nm_counts, nm_indices, nm_mask, nm_mask_from_indices


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
    ("nm(x)", "cannot read recipe"),
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
    sparse_2_4 = [a for a in int8 if a.reshape(a.shape[0], -1).shape[1] % 4 == 0
                  and np.all((a.reshape(a.shape[0], -1, 4) != 0).sum(-1) <= 2)]
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
        codes = lowered.get_submodule(name.replace("weight_mask", "weight_quantizer")).qweight
        assert bool((nm_counts(codes, 4) <= 2).all())
