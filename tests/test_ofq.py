"""OFQ as a recipe: StatsQ formula and codes, QKR in the graph, CGA, the oscillation counter, export and qpack."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qgraph.backends.qpack import read_qpack
from torch import nn

import qgraph
from qgraph.ofq import CGA, OscillationTracker, QKRScores, StatsQuantize, TokenLSQuantize, statsq, statsq_codes, statsq_scale
from qgraph.quantizer import FakeQuantize


class Attention(nn.Module):
    """timm's ViT attention layout (fused qkv, proj, num_heads)."""

    def __init__(self, dim: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (c // self.num_heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class NormalizedAttention(Attention):
    """q and k are normalised before the product: not a plain projection, so QKR does not apply."""

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TinyViT(nn.Module):
    """8×8 digits-sized images → 16 tokens of 2×2 patches, one pre-norm block, mean-pooled head."""

    def __init__(self, dim: int = 16, attn: type = Attention) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.1)
        self.norm1, self.norm2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = attn(dim, 4)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, img):
        p = img.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        x = self.patch_embed(p) + self.pos
        x = x + self.attn(self.norm1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(self.norm(x).mean(1))


def _setup(seed: int = 0, attn: type = Attention):
    torch.manual_seed(seed)
    model = TinyViT(attn=attn).eval()
    with torch.no_grad():
        for p in model.attn.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-zero q/k/v biases
    x = torch.rand(8, 1, 8, 8)
    calib = [torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    return model, x, calib


def _train(qm, x, steps: int, lr: float = 1e-2, tracker=None, opt=None):
    opt = opt or torch.optim.AdamW(qm.parameters(), lr=lr, weight_decay=0.05)
    y = torch.arange(len(x)) % 10
    qm.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(qm(x), y).backward()
        opt.step()
        if tracker is not None:
            tracker.step()
    return opt


def test_statsq_follows_its_formula_with_identity_gradient_and_odd_codes():
    torch.manual_seed(0)
    w = (torch.randn(6, 10) * torch.linspace(0.1, 2, 6)[:, None]).requires_grad_()
    for bits in (2, 3, 4):
        q = statsq(w, bits)
        a = w.detach().numpy().astype(np.float32)
        s = 2 * np.abs(a).mean(axis=1, keepdims=True)
        n = 2 ** (bits - 1)
        want = s * (np.round(np.clip(a / s, -1, 1 - 1e-6) * n - 0.5) + 0.5) / n
        np.testing.assert_allclose(q.detach().numpy(), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(statsq_scale(w).numpy(), s[:, 0], rtol=1e-6)
        codes = statsq_codes(w, bits)
        assert (codes % 2 != 0).all() and codes.min() >= -(2**bits) + 1 and codes.max() <= 2**bits - 1
        # the stored form: odd codes times s_r/2**bits, one multiplication, equals the quantizer's output bit for bit
        assert torch.equal(codes.float() * (statsq_scale(w) / 2**bits)[:, None], q.detach())
        g = torch.randn_like(w)
        (grad,) = torch.autograd.grad(q, w, g)
        assert torch.equal(grad, g)  # identity STE, clipped weights included
    m = w.detach().abs().mean(1, keepdim=True)
    levels = (statsq(w, 2).detach() / m).unique().numpy()
    assert set(np.round(levels, 4).tolist()) <= {-1.5, -0.5, 0.5, 1.5}  # 2-bit: ±0.5·mean|W|, ±1.5·mean|W|


def test_recipe_places_statsq_qkr_and_per_token_lsq():
    model, x, calib = _setup()
    qm = qgraph.quantize(model, x, "ofq(bits=2)", calib, qat=True)
    gm = qm.qgraph
    qk = gm.get_submodule("attn.qk")
    assert isinstance(qk, QKRScores) and isinstance(qk.qk_quantizer, StatsQuantize) and qk.heads == 4
    assert isinstance(gm.get_submodule("attn.qkv_v.weight_quantizer"), StatsQuantize)
    assert "attn.qkv.weight" not in gm.state_dict()  # the fused linear is gone: q, k in QKR, v split off
    for name in ("fc1.weight_quantizer", "fc2.weight_quantizer", "attn.proj.weight_quantizer"):
        assert isinstance(gm.get_submodule(name), StatsQuantize)
    assert not isinstance(gm.get_submodule("head.weight_quantizer"), StatsQuantize)  # 8-bit LSQ (keep glob)
    acts = {n: m for n, m in gm.named_modules() if isinstance(m, TokenLSQuantize)}
    softmax = [m for m in acts.values() if not m.spec.signed]
    assert len(softmax) == 1 and softmax[0].beta1 is None  # attention probabilities: unsigned, no biases
    fc1 = gm.get_submodule("fc1.input_quantizer")
    assert fc1.scale.shape == (16,) and fc1.beta1.shape == (16,)  # one step per token, β per channel
    # init: 2·mean|x| / sqrt(Qp) per token over batch and channels
    with torch.no_grad():
        feats = {}
        h = gm.get_submodule("norm2").register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
        for q in gm.modules():
                if isinstance(q, FakeQuantize):
                    q.mode = "off"  # (as in calibration: everything float)
        for b in calib:
            feats.pop("x", None)
            qm(b)
            feats.setdefault("all", []).append(feats["x"])
        h.remove()
    allx = torch.cat(feats["all"])
    torch.testing.assert_close(fc1.scale.detach(), 2 * allx.abs().mean((0, 2)) / 1.0, rtol=1e-4, atol=1e-7)  # Qp = 1 at 2 bits
    assert any(c.action == "reparameterized" and c.module_path == "attn" for c in qm.changes)


def test_qkr_and_v_split_are_exact_before_quantization():
    model, x, calib = _setup()
    qm = qgraph.quantize(model, x, "ofq(bits=3)", calib, qat=True)
    for m in qm.qgraph.modules():
        if isinstance(m, FakeQuantize):
            m.mode = "off"
    qm.eval()
    with torch.no_grad():
        torch.testing.assert_close(qm(x), model(x), rtol=1e-4, atol=1e-5)


class _SliceAssigned(nn.Module):
    """The ViT behind SAM's idiom ``x = x.clone(); x[..., 0] = ...``, which only torch.export captures."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, img):
        img = img.clone()
        img[:, :, 0] = img[:, :, 0] * 2
        return self.inner(img)


def test_qkr_in_a_torch_export_capture():
    """The probe that finds q and k in the fused qkv output built its zero inputs from the placeholders'
    ``val``, whose batch is symbolic in a torch.export capture: OFQ crashed inside ATen ("SymIntArrayRef
    expected to contain only concrete integers"). It takes the example's concrete shapes now."""
    inner, x, calib = _setup()
    model = _SliceAssigned(inner).eval()
    qm = qgraph.quantize(model, x, "ofq(bits=2)", calib, qat=True)
    assert qm.qgraph.capture.route == "torch.export"
    assert any(c.action == "reparameterized" and c.module_path == "inner.attn" for c in qm.changes), \
        [(c.action, c.module_path) for c in qm.changes if "param" in c.action]


def test_unrecognised_attention_is_recorded_by_module_path():
    model, x, calib = _setup(attn=NormalizedAttention)
    qm = qgraph.quantize(model, x, "ofq(bits=2)", calib, qat=True)
    notes = [c for c in qm.changes if c.action == "not reparameterized"]
    assert notes and notes[0].module_path == "attn" and "index ops" in notes[0].detail
    assert not any(isinstance(m, QKRScores) for m in qm.qgraph.modules())
    assert isinstance(qm.qgraph.get_submodule("attn.qkv.weight_quantizer"), StatsQuantize)  # still StatsQ, whole


def test_ofq_model_trains_exports_to_ort_and_round_trips_through_qpack(tmp_path):
    model, x, calib = _setup()
    qm = qgraph.quantize(model, x, "ofq(bits=2)", calib, qat=True)
    before = qm.qgraph.get_submodule("attn.qk").q_weight.detach().clone()
    _train(qm, x, 4)
    assert not torch.equal(before, qm.qgraph.get_submodule("attn.qk").q_weight.detach())  # gradients reach W_q via W_qk
    qm.eval()
    res = qm.export(str(tmp_path / "vit"), tolerance=1e-4)
    assert res.max_abs_error <= 1e-4 and res.top1_agreement == 1.0
    pack = read_qpack(str(tmp_path / "vit.qpack"))
    fc1 = pack.packed["fc1.weight"]
    assert (fc1.bits, fc1.qmin, fc1.qmax) == (3, -4, 3) and set(np.unique(fc1.codes).tolist()) <= {-3, -1, 1, 3}
    loaded = qgraph.load(str(tmp_path / "vit.qpack"), model)
    xs = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(loaded(xs), qm(xs))


def test_cga_really_freezes_the_weights_it_reports_frozen():
    model, x, calib = _setup()
    qm = qgraph.quantize(model, x, "ofq(bits=2)", calib, qat=True)
    opt = _train(qm, x, 3)  # plain QAT first: momentum and weight decay would move every weight
    cga = CGA(qm, boundary_range=0.05).attach(opt)
    assert "fc1.weight" in cga.layers and "attn.qk" in cga.attention
    moved_unfrozen = 0
    for _ in range(3):
        before = {k: w.detach().clone() for k, (w, _) in cga.layers.items()}
        _train(qm, x, 1, opt=opt)
        for k, (w, _) in cga.layers.items():
            frozen = cga.frozen[k]
            assert frozen.any() and torch.equal(w.detach()[frozen], before[k][frozen])
            moved_unfrozen += int((w.detach()[~frozen] != before[k][~frozen]).sum())
    assert moved_unfrozen > 0  # the near-threshold weights still train
    assert 0.5 < cga.frozen_ratio() < 1.0
    cga.detach()
    w = qm.qgraph.get_submodule("fc1").weight
    before = w.detach().clone()
    _train(qm, x, 1, opt=opt)
    assert (w.detach() != before).float().mean() > 0.5  # hooks removed: everything trains again


def test_oscillation_counter_counts_a_synthetic_oscillation():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    values = [0.1, 0.9, 0.1, 0.9, 0.1]
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0, 0.5, values[0]]]))
    qm = qgraph.quantize(model, torch.randn(2, 4), "ofq(bits=2, keep=[], qkr=False)", qat=True)
    w = qm.qgraph.get_submodule("0").weight
    tracker = OscillationTracker(qm, momentum=0.5)
    for v in values[1:]:
        with torch.no_grad():
            w[0, 3] = v
        tracker.step()
    assert tracker.counts["0.weight"][0].tolist() == [0, 0, 0, 3]  # 0→1 sets the direction, then three reversals
    assert tracker.total() == 3
    assert tracker.ema["0.weight"][0, 3] == pytest.approx(0.5 * (1 + 0.5 + 0.25))
    assert tracker.ratio(0.1) == pytest.approx(0.25)


def test_recipe_options_are_checked():
    with pytest.raises(qgraph.RecipeError, match="qkr=False"):
        qgraph.get_recipe("ofq(bits=2, method=lsq)")
    with pytest.raises(qgraph.RecipeError, match="2..7"):
        qgraph.get_recipe("ofq(bits=9)")


class _TokenMLP(nn.Module):
    """Token-major ``[B, N, C]`` features through a LeakyReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.leaky_relu(self.fc1(x), 0.1))


def _ofq_onnx(case: str, tmp_path):
    """A usage-scan case (or ``token_mlp``) quantized with OFQ and exported (checked in ONNX Runtime):
    the ONNX model and its initializers by name."""
    import onnx

    from benchmarks.usage_scan import build_case

    if case == "token_mlp":
        g = torch.Generator().manual_seed(0)
        model, example, calib = _TokenMLP().eval(), torch.randn(2, 6, 8, generator=g), [torch.randn(2, 6, 8, generator=g)]
    else:
        _, model, _, _, example, calib, _ = build_case(case)
    qm = qgraph.quantize(model, example, "ofq", calib)
    res = qm.export(str(tmp_path / case), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance
    m = onnx.load(res.onnx_path)
    return m, {t.name: t for t in m.graph.initializer}


@pytest.mark.parametrize("case", ["masked_fill", "token_mlp"])
def test_per_token_activations_export_past_onnx_runtimes_fusions(case, tmp_path):
    """OFQ's per-token activation steps reach ONNX Runtime's extended fusions as per-axis
    DequantizeLinear: attention·V became MatMulIntegerToFloat, which refused the per-axis zero point
    at run time, and DQ → LeakyRelu → Q became QLinearLeakyRelu, whose lookup table failed to build
    (SuperRes, before conv maps got one step). The export writes such dequantizations as float ops
    (onnx_fold rule 11)."""
    m, inits = _ofq_onnx(case, tmp_path)
    weights = set(inits) | {n.output[0] for n in m.graph.node if n.op_type == "Cast" and n.input[0] in inits}  # int4 codes widened
    per_axis = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in weights
                and int(np.prod(inits[n.input[1]].dims)) > 1]
    assert not per_axis, [n.name for n in per_axis]  # every per-token step is dequantized by Mul
    assert any(n.op_type == "Mul" and n.output[0].startswith("fake_quantize") for n in m.graph.node)


@pytest.mark.parametrize("case", ["siamese", "stn"])
def test_signed_activation_grids_travel_in_uint8(case, tmp_path):
    """OFQ's 2-bit activations are signed. In int8 containers, ONNX Runtime (converting int8 Q/DQ
    pairs to uint8 after propagating a DequantizeLinear past an Unsqueeze or Reshape) wrote a
    QuantizeLinear whose output type did not match its zero point, and the file did not load. The
    grid is shifted by 128 into uint8 instead: the same values."""
    import onnx

    m, inits = _ofq_onnx(case, tmp_path)
    zps = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.data_type == onnx.TensorProto.UINT8 for z in zps)
    assert any(int(onnx.numpy_helper.to_array(z).ravel()[0]) == 128 for z in zps)  # a symmetric signed grid, shifted


def test_per_token_steps_are_not_taken_for_an_integer_kernels_bias_grid(tmp_path):
    """A conv after an OFQ activation quantizer with one step per row: the export's int32 bias check
    read that quantizer's scale as one number and failed (shape '[]' is invalid for input of size 16)."""
    _ofq_onnx("int_output", tmp_path)  # convs with biases on 16x16 images; raises if the export fails


class _PooledHead3d(nn.Module):
    """X3D's head: Conv3d + BN + ReLU, AvgPool3d to 1x1x1, Conv3d + Hardswish, a linear on channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.head_conv = nn.Sequential(nn.Conv3d(3, 8, 1, bias=False), nn.BatchNorm3d(8), nn.ReLU())
        self.pool = nn.AvgPool3d((4, 4, 4), stride=1)
        self.pre_logits = nn.Sequential(nn.Conv3d(8, 16, 1, bias=False), nn.Hardswish())
        self.proj = nn.Linear(16, 4)

    def forward(self, x):
        x = self.pre_logits(self.pool(self.head_conv(x)))
        return self.proj(x.permute((0, 2, 3, 4, 1))).mean([1, 2, 3])


def test_a_one_step_token_scale_after_pooling_exports_as_a_scalar(tmp_path):
    """OFQ's per-token steps on a pooled conv map have one step (an axis of size 1): exported as a [1]
    scale with an axis, ONNX Runtime fused DequantizeLinear → AveragePool → QuantizeLinear into
    QLinearAveragePool and refused the file ("Scale and Zero-point must be a scalar")."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 4, 4, 4, generator=g)
    qm = qgraph.quantize(_PooledHead3d().eval(), x, "ofq", [torch.randn(4, 3, 4, 4, 4, generator=g) for _ in range(2)])
    assert any(q.role == "activation" and tuple(q.scale.shape) == (1,) for q in qm.quantizers().values())
    res = qm.export(str(tmp_path / "head"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance


class _ConvNet(nn.Module):
    """A small conv net with a residual block and a linear head (the OFQ recipe on a conv backbone);
    ``edge`` pads by replication (canonicalized to ``F.pad`` and a functional conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.edge = nn.Conv2d(8, 8, 3, padding=1, padding_mode="replicate")
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.conv(h))
        return self.head(self.edge(h).mean((2, 3)))


def test_conv_maps_get_one_step_and_per_channel_biases(tmp_path):
    """OFQ's per-token steps are for ``[B, N, C]`` tokens. On a conv's ``[B, C, H, W]`` map, axis -2 is
    the image height: each image row got its own step, β was per image column, and the model refused
    any other image height. Conv maps now get one step and β per channel (axis 1); the model runs at
    another size, trains, exports and round-trips through its qpack."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 6, 10, generator=g)
    model = _ConvNet().eval()
    qm = qgraph.quantize(model, x, "ofq(bits=4)", [torch.randn(4, 3, 6, 10, generator=g) for _ in range(2)], qat=True)
    acts = {n: q for n, q in qm.qgraph.named_modules() if isinstance(q, TokenLSQuantize)}
    conv_maps = {n: q for n, q in acts.items() if q.channel_axis == 1}
    assert set(conv_maps) == {"stem.input_quantizer", "stem.output_quantizer", "conv.output_quantizer",
                              "edge.input_quantizer", "edge.output_quantizer"}, sorted(acts)
    assert all(q.channel_axis == -1 for n, q in acts.items() if n not in conv_maps)
    for name, q in conv_maps.items():
        assert q.scale.dim() == 0 and q.beta1.shape == ((3,) if name == "stem.input_quantizer" else (8,))
    opt = torch.optim.SGD(qm.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        qm(x).pow(2).mean().backward()
        opt.step()
    assert any(q.beta1.abs().sum() > 0 for q in conv_maps.values())  # β trained, broadcast over H and W
    qm.eval()
    with torch.no_grad():
        assert qm(torch.randn(2, 3, 9, 7, generator=g)).shape == (2, 4)  # another image size
    res = qm.export(str(tmp_path / "cnn"), formats=("onnx", "qpack"))
    assert res.max_abs_error <= res.tolerance
    loaded = qgraph.load(str(tmp_path / "cnn.qpack"), model)
    with torch.no_grad():
        assert torch.equal(loaded(x), qm(x))


class _GatedEdge(nn.Module):
    """A block with data-dependent control flow: an auto-leaf, its conv quantized by module swap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y if y.sum() > 0 else -y


def test_the_activation_quantizers_of_a_layer_inside_an_auto_leaf_become_ofq_quantizers():
    """A conv inside an auto-leaf is swapped for a :class:`qgraph.wrappers.QuantizedModule`, whose
    quantizers are no graph nodes: they kept the recipe's plain quantizers. They now get OFQ's
    learnable-bias quantizers too, on the channel axis of the conv's map, and train."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = _ConvNet().eval()
    model.edge = _GatedEdge()
    x = torch.randn(4, 3, 6, 10, generator=g)
    qm = qgraph.quantize(model, x, "ofq(bits=4)", [torch.randn(4, 3, 6, 10, generator=g) for _ in range(2)], qat=True)
    assert list(qm.qgraph.capture.leaves) == ["edge"]
    acts = {n: q for n, q in qm.quantizers().items() if n.startswith("edge.") and q.role == "activation"}
    assert set(acts) == {"edge.conv.input_quantizer", "edge.conv.output_quantizer"}, sorted(acts)
    assert all(isinstance(q, TokenLSQuantize) and q.channel_axis == 1 and q.beta1.shape == (8,) for q in acts.values())
    opt = torch.optim.SGD(qm.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        qm(x).pow(2).mean().backward()
        opt.step()
    assert any(q.beta1.abs().sum() > 0 for q in acts.values())
