"""Linear layers written as matmuls with a parameter (``x @ W``, ``x @ W.T``, ``W @ x``): the parameter
is a weight, quantized per output channel and stored as integers, in both capture routes and in
weight-only recipes; the ONNX file matches in ONNX Runtime and the qpack restores the same weights."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import qgraph


class MatmulNet(nn.Module):
    """Token ids → embedding → ``x @ W_in`` ([in, out]) → ``x @ W_mid.T`` ([out, in]) → ``W_mix @ x``
    across tokens → logits ``x @ embedding.T`` (the table tied as the head)."""

    def __init__(self, vocab: int = 32, dim: int = 32, tokens: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.w_in = nn.Parameter(torch.randn(dim, 64) * dim**-0.5)
        self.w_mid = nn.Parameter(torch.randn(dim, 64) * 64**-0.5)
        self.w_mix = nn.Parameter(torch.randn(tokens, tokens) * tokens**-0.5)
        self.register_buffer("table", torch.randn(dim, dim))  # a buffer is not a weight

    def forward(self, ids):
        h = self.emb(ids)
        h = torch.relu(h @ self.w_in)
        h = torch.relu(h @ self.w_mid.T)
        h = h + self.w_mix @ h  # mixes tokens: [T, T] @ [B, T, dim]
        h = h @ self.table
        return h @ self.emb.weight.t()


class _BatchBranch(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) if x.shape[0] > 1 else -self.inner(x)  # control flow on the batch size: torch.export


def _data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 32, (4, 8), generator=g),) for _ in range(5)]


@pytest.mark.parametrize("route", ["symbolic_trace", "torch.export"])
def test_parameter_matmuls_are_linear_layers(route, tmp_path):
    torch.manual_seed(0)
    net = MatmulNet().eval()
    model = net if route == "symbolic_trace" else _BatchBranch(net).eval()
    pre = "" if route == "symbolic_trace" else "inner."
    data = _data()
    qm = qgraph.quantize(model, data[0], "w8a8", data[1:])
    assert qm.qgraph.capture.route == route
    weights = {n: q for n, q in qm.quantizers().items() if q.role == "weight"}
    # the tied table has one quantizer (its first reader, the lookup); the three matrices are weights
    want = {f"{pre}emb.weight_quantizer", f"{pre}w_in_quantizer", f"{pre}w_mid_quantizer", f"{pre}w_mix_quantizer"}
    assert set(weights) == want, sorted(weights)
    # per output channel: [in, out] stored → one scale per column; [out, in] and W @ x → one per row
    assert weights[f"{pre}w_in_quantizer"].scale.numel() == 64
    assert weights[f"{pre}w_mid_quantizer"].scale.numel() == 32
    assert weights[f"{pre}w_mix_quantizer"].scale.numel() == 8
    assert any(c.action == "replaced" and "w_mid.T" in c.detail for c in qm.changes)
    assert not any(n.startswith(f"{pre}table") for n in qm.quantizers())
    with torch.no_grad():
        want, got = model(*data[0]), qm(*data[0])
    assert 10 * torch.log10(want.pow(2).mean() / (got - want).pow(2).mean()) > 25  # SQNR in dB
    res = qm.export(str(tmp_path / "mm"))  # raises if ONNX Runtime disagrees
    assert res.max_abs_error <= res.tolerance
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(res.onnx_path).graph.initializer}
    int8 = sorted(tuple(a.shape) for a in inits.values() if a.dtype.name == "int8" and a.ndim == 2)
    assert int8 == [(8, 8), (32, 32), (32, 64), (32, 64)], int8  # the weights are stored as int8 codes
    back = qgraph.load(res.qpack_path, model)
    with torch.no_grad():
        for name, q in weights.items():
            param = name.removesuffix("_quantizer")  # emb.weight_quantizer quantizes emb.weight, w_in_quantizer w_in
            assert torch.equal(back.quantizers()[name](back.qgraph.get_parameter(param)), q(qm.qgraph.get_parameter(param))), name


def test_weight_only_recipe_quantizes_parameter_matmuls(tmp_path):
    """Before, w4a16 left every matmul float: a model written with ``x @ W`` was not compressed at all."""
    torch.manual_seed(0)
    model = MatmulNet().eval()
    data = _data()
    qm = qgraph.quantize(model, data[0], "w4a16", data[1:])
    assert {"w_in_quantizer", "w_mid_quantizer", "w_mix_quantizer"} <= set(qm.quantizers())
    assert all(q.role == "weight" for q in qm.quantizers().values())
    res = qm.export(str(tmp_path / "mm4"))
    assert res.max_abs_error <= res.tolerance


@pytest.mark.parametrize("recipe", ["w8a8", "w4a16"])
def test_a_bilinear_layer_quantizes_its_weight(recipe, tmp_path):
    """``nn.Bilinear`` (x1ᵀ W x2 + b, a ``[out, in1, in2]`` weight) stayed float, named in the notes. It is
    now ``F.bilinear`` on its weight, quantized weight-only per output feature; exact float rewrite,
    verified export, exact qpack round trip."""
    from benchmarks.usage_models_apps import BilinearFusion

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model, args = BilinearFusion().eval(), (torch.randn(4, 8, generator=g), torch.randn(4, 6, generator=g))
    qm = qgraph.quantize(model, args, recipe, calib_data=[args])
    with torch.no_grad():
        torch.testing.assert_close(qm._float_graph(*args), model(*args), rtol=1e-6, atol=1e-6)
    assert "fuse.weight_quantizer" in qm.quantizers() and not qm.qgraph.capture.notes
    res = qm.export(str(tmp_path / "bilinear"))
    assert res.max_abs_error <= res.tolerance
    back = qgraph.load(res.qpack_path, BilinearFusion().eval(), args)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(*args), qm(*args))


class _GCN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 4) * 0.3)

    def forward(self, x, adj):
        return torch.spmm(adj, x @ self.w)


def test_a_sparse_operand_gets_no_quantizer_and_the_export_names_it(tmp_path):
    """A GCN's sparse adjacency in ``torch.spmm``: calibration failed in ``aminmax`` on the sparse input
    ("calibration batch 0 does not fit the model"), and the ONNX export named only ``aten.mm``."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 10, (2, 30), generator=g)
    adj = torch.sparse_coo_tensor(idx, torch.rand(30, generator=g), (10, 10)).coalesce()
    args = (torch.randn(10, 8, generator=g), adj)
    model = _GCN().eval()
    qm = qgraph.quantize(model, args, "w8a8")
    with torch.no_grad():
        torch.testing.assert_close(qm._float_graph(*args), model(*args))
    observed = [n for n in qm.qgraph.graph.nodes if n.op == "call_module" and any(a.name == "adj" for a in n.all_input_nodes)]
    assert not observed, observed
    with torch.no_grad():
        assert torch.isfinite(qm(*args)).all()
    with pytest.raises(qgraph.ExportError, match="input 'adj' is a sparse tensor"):
        qm.export(str(tmp_path / "gcn"), formats=("onnx",))


class StackedMatrices(nn.Module):
    """CapsNet-style: every input capsule has its own matrix per class, ``W [1, caps, classes, out, in] @ u``
    broadcast over the batch; then ``v @ V`` with a stacked ``V [classes, out, k]`` on the right."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(0.3 * torch.randn(1, 6, 3, 8, 4))
        self.v = nn.Parameter(0.3 * torch.randn(3, 8, 5))

    def forward(self, u):  # u [n, 6, 4]
        u_hat = torch.matmul(self.w, u[:, :, None, :, None]).squeeze(-1)  # [n, 6, 3, 8]
        return torch.relu(u_hat.sum(1)).unsqueeze(2) @ self.v  # [n, 3, 1, 5]


def test_stacked_weight_matrices_are_weight_only_per_row(tmp_path):
    """A parameter of 3+ dims multiplied by an activation is a stack of weight matrices: int8 weight-only,
    one scale per matrix row (output channels for ``W @ x``), not a per-tensor activation quantizer."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model, data = StackedMatrices().eval(), [(torch.randn(4, 6, 4, generator=g),) for _ in range(4)]
    qm = qgraph.quantize(model, data[0], "w8a8", data[1:])
    q = qm.quantizers()
    assert set(q) == {"w_quantizer", "v_quantizer"} and all(x.role == "weight" for x in q.values()), q
    assert tuple(q["w_quantizer"].scale.shape) == (1, 6, 3, 8, 1)  # per (capsule, class, output row)
    assert tuple(q["v_quantizer"].scale.shape) == (3, 8, 1)  # x @ V: rows are inputs
    with torch.no_grad(), qm.frozen():
        want, got = model(*data[0]), qm(*data[0])
    assert 35 < 10 * torch.log10(want.pow(2).mean() / (got - want).pow(2).mean()) < 80
    res = qm.export(str(tmp_path / "stacked"))
    assert res.max_abs_error <= res.tolerance
    int8 = [tuple(i.dims) for i in onnx.load(res.onnx_path).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert (1, 6, 3, 8, 4) in int8 and (3, 8, 5) in int8, int8


class CrossNet(nn.Module):
    """DCN-v2's cross network (DeepCTR-Torch, torchrec): stacked ``[layers, d, d]`` kernels read one per
    layer as ``matmul(self.kernels[i], x_l)``."""

    def __init__(self, d: int = 8, layers: int = 2) -> None:
        super().__init__()
        self.kernels = nn.Parameter(torch.randn(layers, d, d) * d ** -0.5)
        self.bias = nn.Parameter(torch.zeros(layers, d, 1))
        self.out = nn.Linear(d, 1)
        self.layers = layers

    def forward(self, x):
        x_0 = x.unsqueeze(2)
        x_l = x_0
        for i in range(self.layers):
            x_l = x_0 * (torch.matmul(self.kernels[i], x_l) + self.bias[i]) + x_l
        return self.out(x_l.squeeze(2))


def test_stacked_matrices_read_one_per_layer_are_weights(tmp_path):
    """``self.kernels[i]`` in a matmul: the slices went behind activation quantizers (per-tensor, from
    an observer) and the kernels were neither counted nor stored as weights. The stack is now a
    weight, int8 per (layer, output row), as when the matmul reads it whole."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model, data = CrossNet().eval(), [(torch.randn(4, 8, generator=g),) for _ in range(4)]
    qm = qgraph.quantize(model, data[0], "w8a8", data[1:])
    q = qm.quantizers()
    assert q["kernels_quantizer"].role == "weight" and tuple(q["kernels_quantizer"].scale.shape) == (2, 8, 1)
    assert not any(name.startswith("matmul") for name in q), sorted(q)  # no activation quantizer on a slice
    res = qm.export(str(tmp_path / "cross"))
    assert res.max_abs_error <= res.tolerance
    int8 = [tuple(i.dims) for i in onnx.load(res.onnx_path).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert (2, 8, 8) in int8, int8
    back = qgraph.load(res.qpack_path, CrossNet().eval(), data[0])
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(*data[0]), qm(*data[0]))


class _Projection(nn.Module):
    """PIFu's pixel-aligned projection: ``K @ (R @ X + t)`` by bmm with per-sample cameras, divided by depth;
    then a feature MLP on the points (a real matmul over 16 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp, self.mix = nn.Linear(5, 16), nn.Parameter(torch.randn(16, 16) / 4)

    def forward(self, points, rot, trans, intrinsics):  # [B, 3, N], [B, 3, 3], [B, 3, 1], [B, 3, 3]
        cam = torch.bmm(intrinsics, torch.bmm(rot, points) + trans)
        uv = cam[:, :2] / cam[:, 2:].clamp(min=1e-5)
        h = torch.relu(self.mlp(torch.cat([uv, points], 1).transpose(1, 2)))
        return uv, torch.relu(h @ h.transpose(1, 2)) @ (h @ self.mix)


def test_matmuls_of_a_few_products_stay_float(tmp_path):
    """Camera intrinsics and poses got per-tensor 8-bit grids on both sides of their 3x3 products: a
    focal length of 200 beside rotation terms below 1 left the rotation a few grid steps, and the
    projected coordinates lost most of their signal (monodepth2's warp: 7.6 dB). Matmuls that sum 4
    products or fewer stay float (recorded); the 16-channel ones are still quantized."""
    g = torch.Generator().manual_seed(0)

    def inputs(n):
        rot = torch.linalg.qr(torch.randn(n, 3, 3, generator=g))[0]
        points = torch.randn(n, 3, 20, generator=g) + torch.tensor([0.0, 0.0, 6.0])[:, None]
        k = torch.tensor([[200.0, 0, 64], [0, 200.0, 64], [0, 0, 1]]).expand(n, 3, 3)
        return points, rot, 0.1 * torch.randn(n, 3, 1, generator=g), k

    torch.manual_seed(0)
    model, x = _Projection().eval(), inputs(4)
    qm = qgraph.quantize(model, x, "w8a8", [inputs(4) for _ in range(3)])
    kept = [c for c in qm.changes if c.action == "kept float" and "sums 3 products" in c.detail]
    assert len(kept) == 2
    matmul_q = {n for n in qm.quantizers() if n.startswith(("bmm", "matmul"))}
    assert matmul_q and not any(n.startswith("bmm") for n in matmul_q)  # the 16-channel matmuls keep theirs
    held = inputs(4)
    with torch.no_grad():
        uv, got = model(*held)[0], qm(*held)[0]
    assert 10 * torch.log10(uv.pow(2).sum() / (uv - got).pow(2).sum()) > 60  # only the float rounding of the kept ops
    res = qm.export(str(tmp_path / "proj"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance
