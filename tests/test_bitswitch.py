"""Double-rounding bit switching (recipe "bitswitch"): exact switching, joint training, INT8 qpack, ONNX, HASB."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import qgraph
from examples.models import DigitsCNN, accuracy
from qgraph.bitswitch import DoubleRoundWeightQuantizer, alrs_eta, bitswitch_layers, bitswitch_modules
from qgraph.bitswitch_export import derive_weights
from qgraph.bitswitch_train import JointTrainer
from qgraph.granularity import PerChannel
from qgraph.hasb import RouletteSampler, bit_map_cost, hessian_trace, layer_weights, pareto_bit_maps, search_bits
from qgraph.primitives import fake_quantize_affine

BITS = (8, 6, 4, 2)


@pytest.fixture(scope="module")
def joint(trained_cnn, digits, calib, example_batch):
    """The trained digits CNN, bit-switch quantized and jointly trained for 2 epochs (do not modify)."""
    x_tr, y_tr, _, _ = digits
    qm = qgraph.quantize(trained_cnn, example_batch, recipe="bitswitch(8,6,4,2)", calib_data=calib)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        JointTrainer(qm, lr=1e-3).fit(x_tr, y_tr, epochs=2, progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    return qm.eval()


def test_double_rounding_is_the_rounding_shift_of_the_int8_codes():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.1, 2.0, 16).reshape(-1, 1, 1, 1)
    q = DoubleRoundWeightQuantizer(w, BITS, "conv")
    s = q.effective_scale().detach().reshape(-1, 1, 1, 1)
    q8 = torch.clamp(torch.round(w / s), -128, 127)
    for b in BITS:
        d = 8 - b
        lo, hi = -(2 ** (b - 1)), 2 ** (b - 1) - 1
        expected = torch.clamp(torch.round(q8 / 2**d), lo, hi)
        assert torch.equal(q.codes(w, b).float(), expected)
        # the reference code skips the first clip: the same codes
        assert torch.equal(torch.clamp(torch.round(torch.round(w / s) / 2**d), lo, hi), expected)
        q.set_bits(b)
        assert torch.equal(q(w), expected * (s * 2**d)), b
    # not the same as rounding the float weights straight to the low grid (the shared-scale baseline)
    direct = torch.clamp(torch.round(w / (s * 4)), -32, 31)
    assert not torch.equal(direct, q.codes(w, 6).float())


def test_double_rounding_gradients_are_the_primitives_at_the_effective_step():
    torch.manual_seed(1)
    w = torch.randn(4, 10, requires_grad=True)
    q = DoubleRoundWeightQuantizer(w, BITS, "fc")
    q.set_bits(4)
    g = torch.randn(4, 10)
    (q(w) * g).sum().backward()
    w2 = w.detach().clone().requires_grad_()
    s2 = q.scale.detach().clone().requires_grad_()
    ref = fake_quantize_affine(w2, s2 * 16, torch.zeros(4), -8, 7, PerChannel(0), q.grad_factor(w, 4))
    (ref * g).sum().backward()
    assert torch.equal(w.grad, w2.grad)
    assert torch.allclose(q.scale.grad, s2.grad) and q.scale.grad.abs().sum() > 0


def test_switching_is_exact_and_deterministic(joint, digits):
    x = digits[2][:64]
    outs = {}
    for b in BITS:
        joint.set_bits(b)
        outs[b] = joint(x)
    for b in reversed(BITS):
        joint.set_bits(b)
        assert torch.equal(joint(x), outs[b])
    assert not torch.equal(outs[8], outs[2])
    joint.set_bits({"conv*": 2, "fc1": 6})
    assert joint.get_bits() == {"conv1.0": 2, "conv2.0": 2, "conv3.0": 2, "fc1": 6}
    mixed = joint(x)
    joint.set_bits(8).set_bits({"conv*": 2, "fc1": 6})
    assert torch.equal(joint(x), mixed)
    joint.set_bits(8)


def test_set_bits_refuses_bad_patterns_and_bits(joint):
    joint.set_bits(8)
    with pytest.raises(qgraph.InputError, match=r"'layer3\.\*' matches no bit-switch layer; layers: conv1.0, conv2.0"):
        joint.set_bits({"layer3.*": 2})
    with pytest.raises(qgraph.InputError, match=r"layer conv1.0 switches among \[8, 6, 4, 2\] bits, not 3"):
        joint.set_bits(3)
    with pytest.raises(qgraph.InputError, match="not 5"):
        joint.set_bits({"conv1.0": 4, "fc1": 5})
    assert set(joint.get_bits().values()) == {8}  # nothing changed by a refused call


def test_joint_training_every_precision_beats_chance_widely(joint, digits):
    _, _, x_te, y_te = digits
    for b in BITS:
        joint.set_bits(b)
        assert accuracy(joint, x_te, y_te) > 0.9, b  # chance is 0.1
    joint.set_bits(8)


def test_recipe_names_and_options():
    assert qgraph.get_recipe("bitswitch").bits == BITS
    assert qgraph.get_recipe("bitswitch(8, 4)").bits == (8, 4)
    r = qgraph.get_recipe("bitswitch(bits=(2, 3, 4), keep_first_last=False)")
    assert r.bits == (4, 3, 2) and not r.keep_first_last and r.name == "bitswitch(4,3,2)"
    assert qgraph.recipes.recipe_from_json(r.to_json()) == r
    for bad in ("bitswitch(9)", "bitswitch(8, 8)", "bitswitch(rounding='floor')", "bitswitch(8,"):
        with pytest.raises(qgraph.RecipeError):
            qgraph.get_recipe(bad)


def test_first_and_last_layers_stay_float_unless_asked(trained_cnn, example_batch):
    qm = qgraph.prepare(trained_cnn, example_batch, recipe="bitswitch")
    assert list(qm.get_bits()) == ["conv1.0", "conv2.0", "conv3.0", "fc1"]
    qm = qgraph.prepare(trained_cnn, example_batch, recipe=qgraph.get_recipe("bitswitch", keep_first_last=False), skip="conv2.*")
    assert list(qm.get_bits()) == ["stem.0", "conv1.0", "conv3.0", "fc1", "fc2"]
    assert type(qm.qgraph.get_submodule("conv1.1")).__name__ == "SwitchableBatchNorm"


def test_qpack_round_trip_derives_each_precision_exactly(joint, digits, tmp_path):
    x = digits[2][:64]
    res = joint.export(str(tmp_path / "net"), formats=("qpack",))
    gm = joint.qgraph
    for b in BITS:
        joint.set_bits(b)
        expected = joint(x)
        loaded = qgraph.load(res.qpack_path, DigitsCNN(), bits=b)
        assert torch.equal(loaded(x), expected), b
        derived = derive_weights(res.qpack_path, b)
        for key, qname in layer_weights(joint).values():
            q = gm.get_submodule(qname)
            w = gm.get_parameter(key).detach()
            codes, step = derived[key]
            assert torch.equal(codes, q.codes(w, b))  # the k-bit codes training used
            assert torch.equal(codes.float() * step.reshape(-1, *[1] * (w.dim() - 1)), q(w))  # the k-bit weights training used
    mixed = {"conv1.0": 8, "conv2.0": 2, "conv3.0": 4, "fc1": 6}
    joint.set_bits(mixed)
    assert torch.equal(qgraph.load(res.qpack_path, DigitsCNN(), bits=mixed)(x), joint(x))
    joint.set_bits(8)
    # no float copy of a bit-switched weight in the file
    from qgraph.backends.qpack import read_qpack
    pack = read_qpack(res.qpack_path)
    assert {k for k in pack.packed} == {k for k, _ in layer_weights(joint).values()}
    assert not any(k in pack.floats for k in pack.packed)


def test_onnx_export_at_chosen_precision_matches_onnx_runtime(joint, digits, tmp_path):
    x = digits[2][:64]
    for bits in (2, {"conv1.0": 8, "conv2.0": 2, "conv3.0": 4, "fc1": 6}):
        joint.set_bits(bits)
        fixed = joint.at_bits()
        assert torch.equal(fixed(x), joint(x))  # the fixed-precision model is the bit-switch model, bit for bit
        res = fixed.export(str(tmp_path / f"net_{len(str(bits))}"))
        assert res.max_abs_error < 1e-3 and res.top1_agreement == 1.0
    joint.set_bits(8)
    with pytest.raises(qgraph.ExportError, match="no qpack of its own"):
        joint.at_bits(4).export(str(tmp_path / "x"), formats=("qpack",))


def test_direct_rounding_baseline_has_no_int8_qpack(trained_cnn, example_batch, tmp_path):
    qm = qgraph.quantize(trained_cnn, example_batch, recipe="bitswitch(rounding='direct')")
    with pytest.raises(qgraph.ExportError, match="rounds float weights directly"):
        qm.export(str(tmp_path / "d"), formats=("qpack",))


def test_alrs_scales_the_scale_learning_rate_per_precision(trained_cnn, digits, example_batch):
    assert [alrs_eta(b, 8) for b in BITS] == [1.0, 0.1, 0.01, 0.001]
    assert [alrs_eta(b, 4) for b in (4, 3, 2)] == [1.0, 0.5, 0.1]
    qm = qgraph.quantize(trained_cnn, example_batch, recipe="bitswitch")
    tr = JointTrainer(qm, lr=1e-3)
    tr.step(digits[0][:32], digits[1][:32])
    assert tr.last_lr == pytest.approx({8: 1e-3, 6: 1e-4, 4: 1e-5, 2: 1e-6})
    assert tr.optimizer.param_groups[1]["lr"] == 1e-3  # restored for schedulers
    assert JointTrainer(qm, lr=1e-3, alrs="grad").scale_lr_factor(2) <= 1e-3
    with pytest.raises(qgraph.InputError):
        JointTrainer(qm, alrs="sometimes")


def test_hasb_traces_sampler_and_exact_search(joint, digits):
    x_tr, y_tr = digits[0], digits[1]
    traces = hessian_trace(joint, [(x_tr[:128], y_tr[:128])], samples=2)
    assert set(traces) == {"conv1.0", "conv2.0", "conv3.0", "fc1"}
    assert all(t == t and abs(t) < 1e3 for t in traces.values())
    sampler = RouletteSampler(traces, BITS, epochs=4, warmup_epochs=1, seed=0)
    assert sampler.sample(6, 0) == {layer: 6 for layer in traces}
    assert sampler.probability(3) == 0.5
    sensitive = max(traces, key=traces.get)
    assert sampler.distribution(sensitive).tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1])
    # the Pareto DP finds the same optimum as trying all 4^4 bit maps
    layers = list(traces)
    table = {}
    for layer, (key, qname) in layer_weights(joint).items():
        q, w = joint.qgraph.get_submodule(qname), joint.qgraph.get_parameter(key).detach()
        for b in BITS:
            q.bits = b
            with torch.no_grad():
                table[layer, b] = traces[layer] * float((w - q(w)).pow(2).sum())
        q.bits = 8
    for avg in (4, 3):
        chosen = search_bits(joint, traces, avg)
        assert bit_map_cost(joint, chosen) <= avg
        best = min((sum(table[layer, b] for layer, b in zip(layers, combo)), combo) for combo in itertools.product(BITS, repeat=4)
                   if bit_map_cost(joint, dict(zip(layers, combo))) <= avg)
        assert sum(table[layer, chosen[layer]] for layer in layers) == pytest.approx(best[0])
    frontier = pareto_bit_maps(joint, traces)
    assert frontier[0][0] == 2.0 and frontier[-1][0] == 8.0
    with pytest.raises(qgraph.InputError, match="smallest average is 2"):
        search_bits(joint, traces, 1.5)


def test_load_bits_on_a_plain_qpack_is_refused(digits_w8a8, tmp_path):
    res = copy.deepcopy(digits_w8a8).export(str(tmp_path / "plain"), formats=("qpack",))
    with pytest.raises(qgraph.QPackError, match="not a bit-switch qpack"):
        qgraph.load(res.qpack_path, DigitsCNN(), bits=4)
    assert bitswitch_modules(digits_w8a8) == {}


def test_a_bitswitch_recipe_that_switches_nothing_says_why_at_quantize():
    from qgraph.errors import RecipeError

    two_layers = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    with pytest.raises(RecipeError, match=r"switches no layer of this model: 0 \(first layer \(keep_first_last\)\); 2 \(last layer"
                                          r".*keep_first_last=False"):
        qgraph.quantize(two_layers, torch.randn(4, 8), "bitswitch(8,4)")
    qm = qgraph.quantize(two_layers, torch.randn(4, 8), "bitswitch(bits=(8, 4), keep_first_last=False)")
    assert set(bitswitch_layers(qm)) == {"0", "2"}


class _Siamese(torch.nn.Module):
    """One encoder conv applied to two views: its first call is the first layer (kept float), its
    second call is switched; the weight is one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.mid = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, a, b):
        fa = torch.relu(self.enc(a))
        fb = torch.relu(self.mid(torch.relu(self.enc(b))))
        return self.fc((fa + fb).mean((2, 3)))


def test_a_weight_shared_with_a_float_end_layer_loads_to_the_same_model(tmp_path):
    """The first call read the float weight while the qpack stores only INT8 codes: the loaded model
    differed (usage cases list_input, tied: up to 0.0018 at every bit width)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = _Siamese().eval()
    data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)) for _ in range(3)]
    qm = qgraph.quantize(model, data[0], "bitswitch", data[1:])
    assert any(c.action == "quantized" and "enc.weight is also read by" in c.detail for c in qm.changes)
    for bits in (8, 4):
        qm.set_bits(bits)
        res = qm.export(str(tmp_path / f"siamese{bits}"), formats=("qpack",))
        back = qgraph.load(res.qpack_path, model, bits=bits)
        with torch.no_grad(), qm.frozen(), back.frozen():
            assert torch.equal(back(*data[0]), qm(*data[0])), bits


class _RootParameters(torch.nn.Module):
    """Layers written as F.conv2d / F.linear on parameters of the model itself (no module path)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.w2 = torch.nn.Parameter(torch.randn(4, 8) * 0.3)

    def forward(self, x):
        h = torch.nn.functional.conv2d(x, self.w, padding=1).relu().mean((2, 3))
        return torch.nn.functional.linear(h, self.w2)


def test_switched_layers_on_root_parameters_get_quantizers_of_their_own(tmp_path):
    """Both layers' quantizers were registered under the same name (".weight_quantizer"): the conv's
    weight went through the linear's 4-channel quantizer and calibration failed."""
    torch.manual_seed(0)
    model = _RootParameters().eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    qm = qgraph.quantize(model, data[0], "bitswitch(keep_first_last=False)", data[1:])
    assert set(bitswitch_layers(qm.qgraph)) >= {"w", "w2"}
    qm.set_bits(4)
    res = qm.export(str(tmp_path / "root"))
    back = qgraph.load(res.qpack_path, model, bits=4)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(data[0]), qm(data[0]))


@pytest.mark.parametrize("bits", [8, 4])
def test_layers_with_in_out_weights_switch_bits_too(bits, tmp_path):
    """``x @ W`` with an ``[in, out]`` weight (Hugging Face GPT-2's ``Conv1D``, an einsum layer
    canonicalize rewrote) was kept float, so bit switching switched 1 of GPT-2's 9 layers and refused
    a model of such layers. Its weight is quantized per output column now; the INT8 qpack derives
    each precision exactly and the ONNX file matches."""
    torch.manual_seed(0)

    class InOut(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1, self.w2 = torch.nn.Parameter(torch.randn(8, 16) * 0.3), torch.nn.Parameter(torch.randn(16, 4) * 0.3)

        def forward(self, x):
            return torch.relu(x @ self.w1) @ self.w2

    g = torch.Generator().manual_seed(1)
    model = InOut().eval()
    x, calib = torch.randn(4, 8, generator=g), [torch.randn(4, 8, generator=g) for _ in range(3)]
    qm = qgraph.quantize(model, x, "bitswitch(keep_first_last=False)", calib)
    assert sum(c.action == "bit-switched" for c in qm.changes) == 2
    q1 = qm.qgraph.get_submodule("w1_weight_quantizer")
    assert q1.axis == 1 and q1.scale.numel() == 16  # one step per output column
    qm.set_bits(bits)
    res = qm.export(str(tmp_path / "m"))
    assert res.max_abs_error <= res.tolerance
    back = qgraph.load(res.qpack_path, model, x, bits=bits)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(x), qm(x))


class _UpSampler(nn.Module):
    """A DCGAN-like decoder: a conv, a strided ConvTranspose2d with a BatchNorm, a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.up, self.bn, self.post = nn.Conv2d(4, 16, 3, padding=1), nn.ConvTranspose2d(16, 16, 4, 2, 1), nn.BatchNorm2d(16), \
            nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.post(torch.relu(self.bn(self.up(torch.relu(self.pre(x))))))


@pytest.mark.parametrize("bits", [8, 4])
def test_transposed_convs_switch_bits_and_export(bits, tmp_path):
    """A generator made of ConvTranspose2d layers (DCGAN) was refused: "switches no layer of this model".
    Transposed convs now switch per output channel (their weight's axis 1); their float bias is added
    after the op in the file, since ONNX Runtime rounds a bias beside DQ inputs to int32 (0.0013 off)."""
    torch.manual_seed(0)
    x = torch.randn(4, 4, 8, 8)
    qm = qgraph.quantize(_UpSampler().eval(), x, "bitswitch(keep_first_last=False)", calib_data=[x])
    assert any(c.action == "bit-switched" and c.module_path == "up" for c in qm.changes)
    assert type(qm.qgraph.get_submodule("bn")).__name__ == "SwitchableBatchNorm"
    qm.set_bits(bits)
    res = qm.export(str(tmp_path / f"up{bits}"))
    assert res.max_abs_error <= res.tolerance
    back = qgraph.load(res.qpack_path, _UpSampler().eval(), x, bits=bits)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(x), qm(x))


class _ComplexUp(nn.Module):
    """DCCRN's complex transposed conv: one ConvTranspose1d run on the real and the imaginary part."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose1d(4, 4, 4, 2, padding=1)

    def forward(self, real, imag):
        return self.up(real) - self.up(imag)


def test_a_transposed_conv_called_twice_gets_one_weight_quantizer(tmp_path):
    """Rule 0 gives each call of a transposed conv its own ``get_attr`` of the weight: the weight got two
    quantizers, and the export failed (KeyError: 'up.weight_quantizer')."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g))
    qm = qgraph.quantize(_ComplexUp().eval(), x, "bitswitch(keep_first_last=False)", calib_data=[x])
    assert [n for n, m in qm.qgraph.named_modules() if isinstance(m, DoubleRoundWeightQuantizer)] == ["up.weight_quantizer"]
    qm.set_bits(4)
    res = qm.export(str(tmp_path / "up"))
    assert res.max_abs_error <= res.tolerance
    back = qgraph.load(res.qpack_path, _ComplexUp().eval(), x, bits=4)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(*x), qm(*x))


def test_a_float_bias_after_a_2d_matmul_stays_exact_in_onnx_runtime(tmp_path):
    """A bit-switch VAE at 4 bits failed the export check (1.1e-4 against 4.9e-5): ONNX Runtime fused
    its 2-D ``mu`` linear (MatMul + Add in the file) into a Gemm and rounded the float bias to int32.
    The bias is now subtracted, negated, which no fusion picks up."""
    import onnx

    from benchmarks.usage_models_apps import VAE

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 16, 16, generator=g)
    qm = qgraph.quantize(VAE().eval(), x, "bitswitch(keep_first_last=False)", calib_data=[torch.rand(4, 1, 16, 16, generator=g)])
    qm.set_bits(4)
    res = qm.export(str(tmp_path / "vae"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance
    assert "Sub" in {n.op_type for n in onnx.load(res.onnx_path).graph.node}


class _TiedLM(nn.Module):
    """Token embedding, a layer, and an LM head tied to the embedding table."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mix = nn.Embedding(64, 32), nn.Linear(32, 32)

    def forward(self, ids):
        return torch.nn.functional.linear(torch.relu(self.mix(self.embed(ids))), self.embed.weight)


def test_a_tied_lm_head_switched_to_2_bits_loads_in_onnx_runtime(tmp_path):
    """At 2 bits the tied table is an int2 initializer whose dequantized values a Transpose reads (the
    LM head): ONNX Runtime 1.32 failed to load the file, in its constant folding. The table is stored in
    an int4 container there (onnx_fold rule 8)."""
    import onnx

    torch.manual_seed(0)
    ids = torch.randint(0, 64, (4, 8))
    qm = qgraph.quantize(_TiedLM().eval(), ids, "bitswitch(keep_first_last=False)", calib_data=[ids])
    qm.set_bits(2)
    res = qm.export(str(tmp_path / "tied2"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance
    types = {t.data_type for t in onnx.load(res.onnx_path).graph.initializer}
    assert onnx.TensorProto.INT4 in types
