"""qpack with real models: exact round trips, identical outputs after load, deterministic bytes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qgraph
from qgraph.packing import used_state, weight_quantizers


class Net(nn.Module):
    """Convs with BN (folded), a residual add, a grouped linear layer, a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 128)
        self.norm = nn.LayerNorm(128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        x = x + torch.relu(self.c2(x))
        x = torch.flatten(nn.functional.max_pool2d(x, 2), 1)
        return self.fc2(self.norm(torch.relu(self.fc1(x))))


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = Net().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


def _fake_quantized_weights(qm) -> dict[str, torch.Tensor]:
    gm = qm.qgraph
    state = used_state(gm)
    with torch.no_grad():
        return {k: gm.get_submodule(q)(state[k]) for k, q in weight_quantizers(gm).items()}


@pytest.mark.parametrize("recipe", ["w8a8", "w4a8", "w4a16", "w2a16"])
def test_load_rebuilds_weights_bit_for_bit_and_same_outputs(tmp_path, recipe):
    x = torch.randn(8, 3, 8, 8)
    qm = qgraph.quantize(_net(), x, recipe=recipe, calib_data=[torch.randn(8, 3, 8, 8) for _ in range(3)])
    res = qm.export(str(tmp_path / "net"), formats=("qpack",))
    assert res.qpack_bytes > 0 and res.onnx_path is None
    loaded = qgraph.load(res.qpack_path, _net(seed=1))  # different float weights: all must come from the file
    want, got = _fake_quantized_weights(qm), _fake_quantized_weights(loaded)
    assert want.keys() == got.keys() and len(want) == 4
    for k in want:
        assert torch.equal(want[k], got[k]), k
    with torch.no_grad():
        assert torch.equal(qm(x), loaded(x))
    # every tensor keeps its shape, 0-d per-tensor scales included (ONNX Runtime 1.30 rejects
    # 1-element scales in QLinearAdd)
    want_state, got_state = qm.qgraph.state_dict(), loaded.qgraph.state_dict()
    for k, v in want_state.items():
        if k.endswith((".scale", ".zero_point")):
            assert got_state[k].shape == v.shape, k


def test_writing_twice_gives_identical_bytes(tmp_path):
    x = torch.randn(4, 3, 8, 8)
    qm = qgraph.quantize(_net(), x, recipe="w4a8")
    a = qm.export(str(tmp_path / "a"), formats=("qpack",)).qpack_path
    b = qm.export(str(tmp_path / "b"), formats=("qpack",)).qpack_path
    assert open(a, "rb").read() == open(b, "rb").read()


def test_load_from_factory_and_export_onnx(tmp_path):
    x = torch.randn(4, 3, 8, 8)
    qm = qgraph.quantize(_net(), x, recipe="w8a8")
    res = qm.export(str(tmp_path / "net"))
    assert res.onnx_path and res.qpack_path
    loaded = qgraph.load(res.qpack_path, lambda: (_net(seed=2), x))
    again = loaded.export(str(tmp_path / "again"), formats=("onnx",))
    assert again.max_abs_error <= again.tolerance
    with torch.no_grad():
        assert torch.equal(qm(x), loaded(x))


def test_qpack_is_smaller_than_float_state(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    m = _net()
    float_bytes = sum(t.numel() * t.element_size() for t in m.state_dict().values())
    res = qgraph.quantize(m, x, recipe="w4a16").export(str(tmp_path / "n"), formats=("qpack",))
    assert res.qpack_bytes < float_bytes / 3


def test_load_refuses_a_model_that_does_not_fit(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    res = qgraph.quantize(_net(), x, recipe="w8a8").export(str(tmp_path / "n"), formats=("qpack",))
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    with pytest.raises(qgraph.QPackError, match="does not fit"):
        qgraph.load(res.qpack_path, other)


def test_unknown_export_format_is_refused(tmp_path):
    qm = qgraph.quantize(_net(), torch.randn(2, 3, 8, 8), recipe="w8a8")
    with pytest.raises(qgraph.ExportError, match="unknown export format"):
        qm.export(str(tmp_path / "n"), formats=("tflite",))
    res = qm.export(str(tmp_path / "one"), formats="qpack")  # one format as a string (was: formats 'a', 'c', 'k', ...)
    assert res.qpack_path and not res.onnx_path


class TiedLM(nn.Module):
    """A language-model head tied to the token embedding, and a parameter read by a linear and a bmm."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.lm = nn.Embedding(40, 16), nn.Linear(16, 40, bias=False)
        self.lm.weight = self.emb.weight
        self.mix = nn.Parameter(torch.randn(16, 16) * 0.25)

    def forward(self, ids):
        h = self.emb(ids)
        h = h @ self.mix + torch.bmm(h, self.mix.expand(h.shape[0], 16, 16))
        return self.lm(torch.relu(h))


@pytest.mark.parametrize("recipe", ["w4a16", "w8a8"])
def test_a_tied_weight_is_quantized_for_every_reader_and_loads_to_the_same_outputs(tmp_path, recipe):
    """w4a16 quantizes the head but not lookups: the lookup used to read the float table while the
    qpack holds only the codes, so the loaded model differed (0.84 on the usage scan's case)."""
    torch.manual_seed(0)
    model = TiedLM().eval()
    data = [torch.randint(0, 40, (4, 7), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    qm = qgraph.quantize(model, data[0], recipe, data[1:])
    res = qm.export(str(tmp_path / "tied"))  # ONNX (verified) and qpack (weights checked bit for bit)
    back = qgraph.load(res.qpack_path, model)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(data[0]), qm(data[0]))
    gm = qm.qgraph
    table = next(n for n in gm.graph.nodes if n.op == "get_attr" and n.target == "emb.weight")
    assert [u.op for u in table.users] == ["call_module"]  # only its quantizer reads the float table
    assert any(c.action == "quantized" and "emb.weight is also read by" in c.detail for c in qm.changes) == (recipe == "w4a16")


class Views(nn.Module):
    """A list of tensors and optional arguments, as the usage scan's ``list_input``/``optional_args``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, views, shift=None, scale=1.0):
        f = sum(torch.relu(self.conv(v)).mean((2, 3)) for v in views)
        return self.fc(f if shift is None else f + shift) * scale


def test_example_inputs_with_lists_none_and_numbers_are_recorded_and_load(tmp_path):
    """The default export (ONNX and qpack) refused such models: "example inputs must be tensors"."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = Views().eval()

    def batch():
        return ([torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)], None, 2.0)

    qm = qgraph.quantize(model, batch(), "w8a8", [batch() for _ in range(3)])
    res = qm.export(str(tmp_path / "views"))
    back = qgraph.load(res.qpack_path, model)  # example inputs rebuilt from the record: a list, None, 2.0
    x = batch()
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(*x), qm(*x))


class PaddedEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(30, 16), nn.Linear(16, 3)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 1,
                                         enable_nested_tensor=False)

    def forward(self, ids, mask):
        return self.head(self.enc(self.emb(ids), src_key_padding_mask=mask == 0)[:, 0])


def test_a_masked_encoder_loads_from_the_recorded_input_shapes(tmp_path):
    """load() made integer inputs of zeros: an attention mask that masks every token, NaN outputs, and
    "no capture route handles PaddedEncoder". Integers are 1 now."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = PaddedEncoder().eval()
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 6:] = 0
    data = [(torch.randint(0, 30, (4, 9), generator=g), mask) for _ in range(3)]
    qm = qgraph.quantize(model, data[0], "w8a8", data[1:])
    res = qm.export(str(tmp_path / "enc"), formats=("qpack",))
    back = qgraph.load(res.qpack_path, model)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(*data[0]), qm(*data[0]))


class _Binned(nn.Module):
    """A piecewise-linear flow's bins: inputs in [0, 1) index a table by ``floor(x * bins)``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.table = nn.Linear(8, 8), nn.Parameter(torch.randn(10))

    def forward(self, u):
        return self.proj(u) + self.table[(u * 10).floor().long().clamp(max=9)]


def test_a_model_that_refuses_the_rebuilt_inputs_is_told_to_pass_its_own(tmp_path):
    """load() rebuilds example inputs from the file's record of their shapes, with random normal values,
    which this model cannot index with (-4): the error now says the inputs were rebuilt and how to pass
    the model's own, and with them the model loads."""
    torch.manual_seed(0)
    model, u = _Binned().eval(), torch.rand(4, 8)
    qm = qgraph.quantize(model, u, "w8a8", [torch.rand(4, 8) for _ in range(3)])
    res = qm.export(str(tmp_path / "binned"), formats=("qpack",))
    with pytest.raises(qgraph.InputError, match=r"rebuilt from .*binned\.qpack's record .* example_inputs="):
        qgraph.load(res.qpack_path, model)
    back = qgraph.load(res.qpack_path, model, example_inputs=u)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(u), qm(u))


class _ComplexRope(nn.Module):
    """Meta's Llama reference code: the RoPE table is a complex64 buffer, applied by ``view_as_complex``."""

    def __init__(self, dim: int = 8, length: int = 6) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("freqs_cis", torch.polar(torch.ones(length, dim // 2), torch.outer(torch.arange(length).float(), freqs)))

    def forward(self, x):  # [B, T, dim]
        q = torch.view_as_complex(self.q(x).reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(q * self.freqs_cis[: x.shape[1]]).flatten(2)


def test_a_complex_buffer_goes_through_the_qpack(tmp_path):
    """The qpack refused the model ("tensor 'freqs_cis' has dtype complex64, which a qpack cannot store"):
    the complex table is stored as its real view and the loaded model gives the same outputs."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, 8)
    qm = qgraph.quantize(_ComplexRope().eval(), x, "w4a16")
    res = qm.export(str(tmp_path / "rope"), formats=("qpack",))
    fresh = _ComplexRope()
    fresh.freqs_cis.zero_()  # the table too must come from the file
    loaded = qgraph.load(res.qpack_path, fresh)
    with torch.no_grad():
        assert torch.equal(loaded(x), qm(x))
