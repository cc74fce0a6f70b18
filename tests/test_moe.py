"""Mixture-of-experts layers: expert weights quantized weight-only, the router kept float, the grouped
matmul exported to ONNX (one MatMul per expert) and verified in ONNX Runtime, qpack round trip."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import ort_session
from qgraph.backends import ort as ort_backend
from torch import nn

import qgraph
from qgraph.stacked_weights import gathered_from

# Hugging Face's grouped matmul: what its MoE layers run under torch.export (torch._grouped_mm's
# export kernel takes bfloat16 only)
moe_integration = pytest.importorskip("transformers.integrations.moe")


class TinyMoE(nn.Module):
    """Top-2 routing over 4 experts, the rows sorted by expert and multiplied by one grouped matmul per
    projection (as Hugging Face's MoE layers do), expert weights stored [E, out, in] and transposed."""

    def __init__(self, dim: int = 16, hidden: int = 32, experts: int = 4, top_k: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.router = nn.Linear(dim, experts, bias=False)
        self.up = nn.Parameter(torch.randn(experts, hidden, dim) * dim**-0.5)
        self.down = nn.Parameter(torch.randn(experts, dim, hidden) * hidden**-0.5)
        self.head = nn.Linear(dim, classes)
        self.experts, self.top_k = experts, top_k

    def forward(self, x):
        mm = torch.ops.transformers.grouped_mm_fallback
        h = self.inp(x)
        weights, chosen = torch.softmax(self.router(h), dim=-1).topk(self.top_k, dim=-1)
        flat = chosen.reshape(-1)
        order = flat.argsort()
        token = order // self.top_k
        counts = torch.histc(flat.float(), bins=self.experts, min=0, max=self.experts - 1)  # a fixed shape, unlike bincount
        offs = torch.cumsum(counts, 0).to(torch.int32)
        rows = h[token]
        y = mm(torch.relu(mm(rows, self.up.transpose(-2, -1), offs)), self.down.transpose(-2, -1), offs)
        y = y * weights.reshape(-1)[order, None]
        out = torch.zeros_like(h).index_add(0, token, y)
        return self.head(out + h)


@pytest.fixture(scope="module")
def moe():
    torch.manual_seed(0)
    model = TinyMoE().eval()
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(8, 16, generator=g),)
    calib = [(torch.randn(8, 16, generator=g),) for _ in range(4)]
    return model, x, calib


def test_experts_quantized_router_float_and_export(moe, tmp_path):
    model, x, calib = moe
    qm = qgraph.quantize(model, x, "w8a8", calib)
    weights = {n: q for n, q in qm.quantizers().items() if q.role == "weight"}
    assert {"up_quantizer", "down_quantizer"} <= set(weights)
    assert "router.weight_quantizer" not in weights
    assert any(c.action == "kept float" and c.module_path == "router" and "router" in c.detail for c in qm.changes)
    # one scale per expert and output channel
    assert tuple(weights["up_quantizer"].scale.shape) == (4, 32, 1)
    with torch.no_grad():
        wq = weights["up_quantizer"](model.up)
    err = (wq - model.up).abs()
    assert 0 < err.max() <= weights["up_quantizer"].scale.max() / 2 + 1e-7
    # the summary reports the expert weights' own error (not the unquantized get_attr: inf)
    rows = {r["module"] or r["node"]: r for r in qm.summary_rows() if r["op"] == "experts"}
    assert set(rows) == {"up", "down"} and all(30 < r["sqnr_db"] < 80 and r["scale_min"] > 0 for r in rows.values()), rows
    res = qm.export(str(tmp_path / "moe"))  # raises if ONNX Runtime disagrees
    assert res.max_abs_error < 1e-4
    # the file runs other batches too, and the qpack rebuilds the same model
    x2 = torch.randn(5, 16, generator=torch.Generator().manual_seed(7))
    got = ort_backend.run(ort_session(res.onnx_path), (x2,))[0]
    with torch.no_grad(), qm.frozen():
        want = qm(x2)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    back = qgraph.load(res.qpack_path, TinyMoE().eval())
    with torch.no_grad():
        assert torch.equal(back.quantizers()["up_quantizer"](back.qgraph.get_parameter("up")), wq)


def test_experts_per_group_w4a16(moe, tmp_path):
    model, x, calib = moe
    qm = qgraph.quantize(model, x, "w4a16(group_size=8)", calib)
    q = qm.quantizers()["down_quantizer"]
    assert tuple(q.scale.shape) == (4, 16, 4)  # [E, out, in / 8]
    res = qm.export(str(tmp_path / "moe4"))
    assert res.max_abs_error < 1e-4


def test_hugging_face_mixtral_exports(tmp_path):
    import transformers as tf

    cfg = tf.MixtralConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=16, use_cache=False)
    torch.manual_seed(0)
    lm = tf.MixtralForCausalLM(cfg).eval()

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, ids):
            return self.lm(input_ids=ids).logits

    g = torch.Generator().manual_seed(1)
    ids = [(torch.randint(0, 64, (2, 8), generator=g),) for _ in range(3)]
    qm = qgraph.quantize(Logits().eval(), ids[0], "w8a8", ids[1:])
    names = set(qm.quantizers())
    assert {"lm.model.layers.0.mlp.experts.gate_up_proj_quantizer", "lm.model.layers.0.mlp.experts.down_proj_quantizer"} <= names
    assert not any(n.startswith("lm.model.layers.0.mlp.gate.") for n in names)
    res = qm.export(str(tmp_path / "mixtral"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance


def test_a_classifier_returning_its_top_k_keeps_a_quantized_head():
    """Only a top-k whose indices the graph computes with is a router: a head whose top-5 is the output stays quantized."""
    class TopFive(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(16, 16), nn.Linear(16, 10)

        def forward(self, x):
            return self.head(torch.relu(self.body(x))).softmax(-1).topk(5)

    torch.manual_seed(0)
    x = torch.randn(4, 16)
    qm = qgraph.quantize(TopFive().eval(), (x,), "w8a8", [(torch.randn(4, 16),)])
    assert "head.weight_quantizer" in qm.quantizers()
    assert not any(c.action == "kept float" and "router" in c.detail for c in qm.changes)


class SwitchMoE(nn.Module):
    """A Switch-Transformer layer as mesh-tensorflow writes it: top-1 routing by ``argmax``, one-hot dispatch
    and combine tensors, and ``einsum`` in and out of expert weights stored ``[E, in, out]``. The
    capacity is a constant, or (``dynamic_capacity``) ``int`` of the length, which only ``torch.export``
    captures."""

    def __init__(self, d: int = 16, experts: int = 4, hidden: int = 32, dynamic_capacity: bool = False) -> None:
        super().__init__()
        self.e, self.dynamic = experts, dynamic_capacity
        self.router = nn.Linear(d, experts, bias=False)
        self.wi = nn.Parameter(torch.randn(experts, d, hidden) * d**-0.5)
        self.wo = nn.Parameter(torch.randn(experts, hidden, d) * hidden**-0.5)
        self.out = nn.Linear(d, 10)

    def forward(self, x):
        capacity = int(1.5 * x.shape[1] / self.e) if self.dynamic else 4
        probs = torch.softmax(self.router(x), dim=-1)
        mask = nn.functional.one_hot(probs.argmax(-1), self.e)
        position = (torch.cumsum(mask, dim=1) - 1) * mask
        mask = mask * (position < capacity)
        dispatch = mask.unsqueeze(-1).float() * nn.functional.one_hot((position * mask).sum(-1), capacity).unsqueeze(2).float()
        combine = dispatch * (probs * mask).sum(-1)[..., None, None]
        h = torch.relu(torch.einsum("becd,edh->bech", torch.einsum("bsec,bsd->becd", dispatch, x), self.wi))
        return self.out(x + torch.einsum("bsec,becd->bsd", combine, torch.einsum("bech,ehd->becd", h, self.wo)))


@pytest.mark.parametrize("dynamic_capacity", [False, True], ids=["symbolic_trace", "torch.export"])
def test_einsum_expert_weights_and_an_argmax_router(dynamic_capacity, tmp_path):
    """Expert weights read by einsum are int8 weight-only, one scale per (expert, row); the router whose
    argmax picks the expert stays float, like a top-k router."""
    torch.manual_seed(0)
    model = SwitchMoE(dynamic_capacity=dynamic_capacity).eval()
    g = torch.Generator().manual_seed(1)
    x, calib = torch.randn(2, 8, 16, generator=g), [(torch.randn(2, 8, 16, generator=g),) for _ in range(3)]
    qm = qgraph.quantize(model, (x,), "w8a8", calib)
    assert qm.qgraph.capture.route == ("torch.export" if dynamic_capacity else "symbolic_trace")
    weights = {n: q for n, q in qm.quantizers().items() if q.role == "weight"}
    assert set(weights) == {"wi_quantizer", "wo_quantizer", "out.weight_quantizer"}, sorted(weights)
    assert tuple(weights["wi_quantizer"].scale.shape) == (4, 16, 1)  # [E, in, out]: one scale per row
    assert any(c.action == "kept float" and c.module_path == "router" and "argmax" in c.detail for c in qm.changes)
    with torch.no_grad():
        err = (weights["wo_quantizer"](model.wo) - model.wo).abs()
    assert 0 < err.max() <= weights["wo_quantizer"].scale.max() / 2 + 1e-7
    res = qm.export(str(tmp_path / "switch"))  # raises if ONNX Runtime disagrees
    assert res.max_abs_error <= res.tolerance
    int8 = sorted(tuple(i.dims) for i in onnx.load(res.onnx_path).graph.initializer if i.data_type == onnx.TensorProto.INT8)
    assert (4, 16, 32) in int8 and (4, 32, 16) in int8, int8


class GatheredExperts(nn.Module):
    """gpt-fast's MOEFeedForward: the expert matrices of each token's chosen experts gathered by index
    (``self.w1[expert_indices]``, ``[T, A, out, in]``) and applied by einsum. ``finfo``: a line symbolic
    tracing cannot follow (the torch.export route, where the gather is ``aten.index.Tensor``)."""

    def __init__(self, finfo: bool = False, experts: int = 4, dim: int = 16, hidden: int = 24) -> None:
        super().__init__()
        self.gate, self.finfo = nn.Linear(dim, experts, bias=False), finfo
        self.w1 = nn.Parameter(torch.randn(experts, hidden, dim) * dim**-0.5)
        self.w3 = nn.Parameter(torch.randn(experts, hidden, dim) * dim**-0.5)
        self.w2 = nn.Parameter(torch.randn(experts, dim, hidden) * hidden**-0.5)

    def forward(self, x):  # [T, dim]
        weights, idx = torch.topk(torch.softmax(self.gate(x), -1), 2, dim=-1)
        if self.finfo:
            weights = weights.clamp_min(torch.finfo(x.dtype).tiny)
        weights = weights / weights.sum(-1, keepdim=True)
        h = torch.nn.functional.silu(torch.einsum("ti,taoi->tao", x, self.w1[idx])) * torch.einsum("ti,taoi->tao", x, self.w3[idx])
        return torch.einsum("tai,ta->ti", torch.einsum("tao,taio->tai", h, self.w2[idx]), weights)


@pytest.mark.parametrize("finfo", [False, True], ids=["symbolic_trace", "torch.export"])
def test_expert_matrices_gathered_by_index_are_weights(finfo, tmp_path):
    """The gathered matrices got per-tensor uint8 activation quantizers, and the parameters themselves
    (two thirds of the model) no weight quantizer: they stayed float in the files, and nothing said so.
    Each parameter is now int8 weight-only before the gather, one scale per (expert, output row)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model, x = GatheredExperts(finfo).eval(), torch.randn(12, 16, generator=g)
    qm = qgraph.quantize(model, x, "w8a8", [torch.randn(12, 16, generator=g) for _ in range(3)])
    assert qm.qgraph.capture.route == ("torch.export" if finfo else "symbolic_trace")
    weights = {n: q for n, q in qm.quantizers().items() if q.role == "weight"}
    assert set(weights) == {"w1_quantizer", "w2_quantizer", "w3_quantizer"}, sorted(weights)
    assert tuple(weights["w1_quantizer"].scale.shape) == (4, 24, 1) and tuple(weights["w2_quantizer"].scale.shape) == (4, 16, 1)
    quantized = [n.args[0] for n in qm.qgraph.graph.nodes if n.op == "call_module" and n.target in qm.quantizers()]
    assert quantized and not any(gathered_from(v) is not None for v in quantized)  # no activation quantizer on a gathered matrix
    res = qm.export(str(tmp_path / "gathered"))
    assert res.max_abs_error <= res.tolerance
    int8 = sorted(tuple(i.dims) for i in onnx.load(res.onnx_path).graph.initializer if i.data_type == onnx.TensorProto.INT8)
    assert int8.count((4, 24, 16)) == 2 and (4, 16, 24) in int8, int8
    loaded = qgraph.load(res.qpack_path, GatheredExperts(finfo).eval())
    with torch.no_grad(), qm.frozen(), loaded.frozen():
        assert torch.equal(loaded(x), qm(x))
