"""Attention whose output layout depends on the kernel: the export must not depend on it.

timm MaxViT's ``AttentionCl`` calls ``scaled_dot_product_attention`` with a 4-D float bias and then
``o.transpose(1, 2).reshape(...)``. On CPU the fused flash kernel (picked for that mask) returns
[B, L, H, D] memory, the math path [B, H, L, D]: the ONNX exporter decomposed the reshape into a
``view`` under the first layout and failed re-running it under the second ("Cannot view a tensor
with shape ... and strides ..."), for every recipe."""

from __future__ import annotations

import collections

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qgraph
from qgraph.granularity import PerChannel


class RelPosAttention(nn.Module):
    """timm MaxViT's channels-last attention with a relative-position bias, in small."""

    def __init__(self, dim: int = 32, heads: int = 2, tokens: int = 16) -> None:
        super().__init__()
        self.heads, self.tokens = heads, tokens
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.rel_table = nn.Parameter(torch.randn(2 * tokens, heads) * 0.1)
        self.register_buffer("rel_index", torch.randint(0, 2 * tokens, (tokens, tokens), generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        b, restore = x.shape[0], x.shape[:-1]
        q, k, v = self.qkv(x).view(b, -1, self.heads, 3 * x.shape[-1] // self.heads).transpose(1, 2).chunk(3, dim=3)
        bias = self.rel_table[self.rel_index.view(-1)].view(self.tokens, self.tokens, -1).permute(2, 0, 1).unsqueeze(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.contiguous())
        return self.proj(o.transpose(1, 2).reshape(restore + (-1,)))


@pytest.mark.parametrize("recipe", ["w8a8", "w4a16"])
def test_attention_with_a_4d_bias_then_transpose_reshape_exports(recipe, tmp_path):
    torch.manual_seed(0)
    model, x = RelPosAttention().eval(), torch.randn(8, 4, 4, 32)
    qm = qgraph.quantize(model, x, recipe)
    res = qm.export(str(tmp_path / "attn"), formats=("onnx",), dynamic_batch=False)
    assert res.max_abs_error <= res.tolerance
    sdpa = [n for n in qm.qgraph.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert len(sdpa) == 1  # its result is copied, not merely made .contiguous() (which torch.export drops)
    copy = [n for n in qm.qgraph.graph.nodes if n.op == "call_method" and n.target == "clone"]
    assert len(copy) == 1 and copy[0].kwargs["memory_format"] == torch.contiguous_format


class WindowAttention5d(nn.Module):
    """Attention over [batch, heads, windows, tokens, dim], as timm's NesT and Hiera call it."""

    def __init__(self, dim: int = 32, heads: int = 2, windows: int = 4) -> None:
        super().__init__()
        self.heads, self.windows = heads, windows
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):  # x: [B, windows * tokens, dim]
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, self.windows, n // self.windows, 3, self.heads, c // self.heads).permute(3, 0, 4, 1, 2, 5)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, windows, tokens, head_dim]
        return self.proj(o.permute(0, 2, 3, 1, 4).reshape(b, n, c))


class _BatchBranch(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) if x.shape[0] > 1 else -self.inner(x)


@pytest.mark.parametrize("tracer", ["symbolic_trace", "torch.export"])
def test_attention_on_5d_windows_exports_as_4d(tracer, tmp_path):
    """The ONNX exporter translates only 4-D attention ("only 4D query, key, and value are supported"):
    canonicalize runs it on 4-D views, and the file matches the quantized model."""
    torch.manual_seed(0)
    model = WindowAttention5d().eval()
    if tracer == "torch.export":  # control flow on the batch size forces the torch.export route
        model = _BatchBranch(model).eval()
    x = torch.randn(3, 16, 32)
    qm = qgraph.quantize(model, x, "w8a8", calib_data=[(torch.randn(3, 16, 32),)])
    assert qm.qgraph.capture.route == tracer
    assert [c.action for c in qm.changes if "4-D" in c.detail] == ["reshaped"]
    with torch.no_grad():
        assert (qm(x) - model(x)).abs().max() < 0.05
    res = qm.export(str(tmp_path / "win"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance


class EinsumAttention(nn.Module):
    """Attention written with ``torch.einsum`` (timm's HaloNet and BotNet, many research models), and
    an einsum that contracts a parameter (a weight: a linear layer, rewritten to ``x @ W``)."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mix = nn.Parameter(torch.randn(dim, dim) * dim**-0.5)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).unbind(2)
        a = torch.einsum("bqhd,bkhd->bhqk", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
        o = torch.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, t, c)
        return self.proj(torch.einsum("btc,cd->btd", o, self.mix))


def test_einsum_of_two_activations_is_quantized_like_a_matmul(tmp_path):
    from qgraph.passes.insert_quantizers import is_quantizer_node

    torch.manual_seed(0)
    model = EinsumAttention().eval()
    x, calib = torch.randn(4, 6, 32), [torch.randn(8, 6, 32) for _ in range(3)]
    qm = qgraph.quantize(model, x, "w8a8", calib)
    gm = qm.qgraph
    einsums = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.einsum]
    assert len(einsums) == 2
    for n in einsums:  # q·k and attention·v: both operands rounded to 8 bits
        assert all(is_quantizer_node(gm, a) for a in n.args[1:]), n.format_node()
    # the einsum with the parameter is a linear layer now: x @ mix, its weight quantized per column
    assert qm.quantizers()["mix_quantizer"].role == "weight"
    assert sum(q.role == "activation" for q in qm.quantizers().values()) >= 4
    with torch.no_grad(), qm.frozen():
        want, got = model(x), qm(x)
    assert 10 * torch.log10(want.pow(2).mean() / (got - want).pow(2).mean()) > 25
    res = qm.export(str(tmp_path / "einsum"), formats=("onnx",))  # raises if ONNX Runtime disagrees
    assert res.max_abs_error <= res.tolerance


class ClipAttentionPool(nn.Module):
    """OpenAI CLIP's ``AttentionPool2d``: the mean token (plus positions) attends over the feature map, by
    ``F.multi_head_attention_forward`` with separate q/k/v projection weights and a concatenated bias."""

    def __init__(self, side: int = 4, dim: int = 32, heads: int = 4, out: int = 8) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(side * side + 1, dim) / dim ** 0.5)
        self.k_proj, self.q_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.c_proj, self.heads = nn.Linear(dim, out), heads

    def forward(self, x):  # [N, C, H, W]
        x = x.flatten(2).permute(2, 0, 1)  # [HW, N, C]
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + self.pos[:, None, :]
        o, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, training=self.training, need_weights=False)
        return o.squeeze(0)


class FunctionalSelfAttention(nn.Module):
    """A hand-written encoder layer calling ``F.multi_head_attention_forward`` with an ``nn.MultiheadAttention``'s
    packed weights (sequence first), a key padding mask and the attention weights asked for but unused."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.attn, self.heads, self.head = nn.MultiheadAttention(dim, heads), heads, nn.Linear(dim, 3)

    def forward(self, x, pad):  # x: [N, L, C], pad: [N, L] bool (True = padding)
        s = x.transpose(0, 1)
        o, _ = F.multi_head_attention_forward(
            s, s, s, s.shape[-1], self.heads, self.attn.in_proj_weight, self.attn.in_proj_bias, None, None, False, 0.1,
            self.attn.out_proj.weight, self.attn.out_proj.bias, training=self.training, key_padding_mask=pad)
        return self.head(o.transpose(0, 1) + x)


@pytest.mark.parametrize("case", ["clip_pool", "self_attention"])
def test_functional_multi_head_attention_becomes_linears_and_sdpa(case, tmp_path):
    """``F.multi_head_attention_forward`` called directly stayed one opaque node: its q/k/v and output
    projections stayed float. It is rewritten like an ``nn.MultiheadAttention`` call (canonicalize
    rule 4), exactly, and its projection weights are quantized per channel."""
    torch.manual_seed(0)
    if case == "clip_pool":
        model, args = ClipAttentionPool().eval(), (torch.randn(4, 32, 4, 4),)
        calib = [(torch.randn(4, 32, 4, 4),) for _ in range(3)]
        projections = {"q_proj", "k_proj", "v_proj", "c_proj"}
    else:
        pad = torch.zeros(4, 6, dtype=torch.bool)
        pad[1, 4:] = True
        model, args = FunctionalSelfAttention().eval(), (torch.randn(4, 6, 32), pad)
        calib = [(torch.randn(4, 6, 32), pad) for _ in range(3)]
        projections = {"attn.in_proj", "attn.out_proj"}
    qm = qgraph.quantize(model, args, "w8a8", calib)
    assert not any(n.target is F.multi_head_attention_forward for n in qm._float_graph.graph.nodes)
    assert any("F.multi_head_attention_forward" in c.detail for c in qm.changes if c.pass_name == "canonicalize")
    weights = {n.removesuffix("_weight_quantizer").removesuffix(".weight_quantizer") for n, q in qm.quantizers().items()
               if q.role == "weight"}
    assert projections <= weights, weights
    assert all(q.spec.granularity == PerChannel(0) and q.scale.numel() > 1 for q in qm.quantizers().values() if q.role == "weight")
    with torch.no_grad():
        want = model(*args)
        torch.testing.assert_close(qm._float_graph(*args), want, rtol=1e-5, atol=1e-5)  # the rewrite itself is exact
        with qm.frozen():
            got = qm(*args)
    assert 10 * torch.log10(want.pow(2).mean() / (got - want).pow(2).mean()) > 25
    res = qm.export(str(tmp_path / case), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance


class ScaledAttention(nn.Module):
    """Pre-norm self-attention with a head size of 8: the exporter's scale on each side, 8 ** -0.25, is
    no power of two, so moving it changes float rounding and the export check sees that."""

    def __init__(self, dim: int = 32, heads: int = 4, masked: bool = False) -> None:
        super().__init__()
        self.heads, self.masked = heads, masked
        self.ln, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(self.ln(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = torch.triu(torch.full((n, n), -1e4), 1) if self.masked else None  # additive, like Hugging Face's
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.proj(o.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("masked", [False, True])
def test_attention_scores_run_as_an_integer_matmul_in_onnx_runtime(masked, tmp_path):
    """Rule 16: the exporter wrote ``MatMul(DQ(q) · √s, kᵀ · √s)``, and ONNX Runtime ran the scores as a
    float ``FusedMatMul`` though q and k are quantized. With the scale after the MatMul it fuses
    ``MatMulIntegerToFloat``; only ``softmax · v`` (float probabilities) stays a float MatMul."""
    from helpers import ort_session

    torch.manual_seed(0)
    model, x = ScaledAttention(masked=masked).eval(), torch.randn(2, 6, 32)
    qm = qgraph.quantize(model, (x,), "w8a8", [(torch.randn(2, 6, 32),) for _ in range(4)])
    res = qm.export(str(tmp_path / "attn"), formats=("onnx",), dynamic_batch=False)
    assert res.max_abs_error <= res.tolerance
    g = onnx.load(str(tmp_path / "attn.onnx")).graph
    producer = {o: n for n in g.node for o in n.output}
    assert not any(producer[i].op_type == "Mul" for n in g.node if n.op_type == "MatMul" for i in n.input if i in producer)
    assert sum(n.op_type == "Mul" and n.name.endswith("_attention_scale") for n in g.node) == 1
    ort_session(tmp_path / "attn.onnx", optimized_path=tmp_path / "opt.onnx", level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    fused = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert fused["FusedMatMul"] == 0 and fused["MatMul"] == 1, fused
    assert fused["MatMulIntegerToFloat"] == 3, fused  # the qkv and output projections, and q·kᵀ


def test_the_attention_scale_stays_where_q_and_k_are_float(tmp_path):
    """w4a16 quantizes no activation: the scaled q and k are plain float, and the export keeps them."""
    torch.manual_seed(0)
    model, x = ScaledAttention().eval(), torch.randn(2, 6, 32)
    qm = qgraph.quantize(model, (x,), "w4a16", [(torch.randn(2, 6, 32),) for _ in range(2)])
    qm.export(str(tmp_path / "attn"), formats=("onnx",), dynamic_batch=False)
    g = onnx.load(str(tmp_path / "attn.onnx")).graph
    producer = {o: n for n in g.node for o in n.output}
    assert any(n.op_type == "MatMul" and all(producer[i].op_type == "Mul" for i in n.input) for n in g.node)
    assert not any(n.name.endswith("_attention_scale") for n in g.node)
