"""Capture: symbolic trace with auto-leaves, the torch.export fallback, shapes, input errors."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import qgraph
from qgraph.summary import sqnr_db
from qgraph.wrappers import QuantizedModule


class Gate(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace this forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return self.lin(-x)


class GatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(8, 16)
        self.gate = Gate()
        self.fc1 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc1(torch.relu(self.gate(self.fc0(x))))


class ShapeBranch(nn.Module):
    """Control flow in the root forward on a shape: fx fails, torch.export works (batch dim left dynamic)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.shape[0] > 1:
            return torch.relu(y)
        return y


class ValueBranch(nn.Module):
    """Control flow in the root forward on a tensor value: no route can capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:
            return y
        return -y


@pytest.fixture(scope="module")
def gated():
    torch.manual_seed(0)
    return GatedNet().eval(), torch.randn(4, 8)


def test_untraceable_submodule_becomes_a_leaf_with_a_reason(gated):
    model, x = gated
    qg = qgraph.trace(model, x)
    assert isinstance(qg, qgraph.QGraph)
    assert qg.capture.route == "symbolic_trace"
    assert list(qg.capture.leaves) == ["gate"]
    assert "control flow" in qg.capture.leaves["gate"]
    # the leaf is one opaque call_module node; the rest of the model is traced through
    call_modules = [str(n.target) for n in qg.graph.nodes if n.op == "call_module"]
    assert call_modules == ["fc0", "gate", "fc1"]
    torch.testing.assert_close(qg(x), model(x))


def test_quantize_reaches_the_linear_inside_a_leaf(gated):
    model, x = gated
    calib = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)] + [x]
    qm = qgraph.quantize(model, x, "w8a8", calib)
    quantizers = qm.quantizers()
    assert "gate.lin.weight_quantizer" in quantizers
    assert quantizers["gate.lin.weight_quantizer"].role == "weight"
    assert quantizers["gate.lin.weight_quantizer"].initialized
    assert isinstance(qm.qgraph.get_submodule("gate.lin"), QuantizedModule)
    assert any(c.action == "swapped" and c.module_path == "gate.lin" for c in qm.changes)
    # the traced layers are quantized as usual
    assert {"fc0.weight_quantizer", "fc1.weight_quantizer"} <= set(quantizers)
    # and the quantized model is close to, but not identical with, the float one
    with torch.no_grad():
        err = (qm(x) - model(x)).abs().max().item()
    assert 0 < err < 0.03
    # the user's model is untouched
    assert type(model.gate.lin) is nn.Linear


def test_root_shape_control_flow_falls_back_to_torch_export():
    torch.manual_seed(0)
    model, x = ShapeBranch().eval(), torch.randn(3, 8)
    qg = qgraph.trace(model, x)
    assert qg.capture.route == "torch.export"
    assert any("symbolic_trace" in note for note in qg.capture.notes)
    torch.testing.assert_close(qg(x), model(x))
    qm = qgraph.quantize(model, x, "w8a8")
    assert qm.qgraph.capture.route == "torch.export"
    assert "fc.weight_quantizer" in qm.quantizers()


def test_root_value_control_flow_is_a_capture_error_naming_both_routes():
    model = ValueBranch().eval()
    with pytest.raises(qgraph.CaptureError) as info:
        qgraph.trace(model, torch.randn(3, 8))
    msg = str(info.value)
    assert "symbolic_trace" in msg and "torch.export" in msg
    assert isinstance(info.value, qgraph.QGraphError)


def _shape_of(node):
    from qgraph.ops import tensor_meta

    tm = tensor_meta(node)
    return None if tm is None else tm[0]


def test_every_call_node_has_a_shape_symbolic(gated):
    model, x = gated
    qg = qgraph.trace(model, x)
    calls = [n for n in qg.graph.nodes if n.op.startswith("call_")]
    assert len(calls) == 4
    shapes = {str(n.target): _shape_of(n) for n in calls}
    assert shapes["fc0"] == (4, 16) and shapes["gate"] == (4, 16) and shapes["fc1"] == (4, 4)
    assert all(s is not None for s in shapes.values())


def test_every_call_node_has_a_shape_export():
    torch.manual_seed(0)
    qg = qgraph.trace(ShapeBranch().eval(), torch.randn(3, 8))
    # nodes whose value is used (torch.export may add a guard-check call that returns None)
    calls = [n for n in qg.graph.nodes if n.op.startswith("call_") and n.users]
    assert calls
    assert all(_shape_of(n) is not None for n in calls), [n.name for n in calls if _shape_of(n) is None]
    assert {_shape_of(n) for n in calls} == {(3, 4)}


def test_to_networkx_has_a_node_per_graph_node(gated):
    model, x = gated
    qg = qgraph.trace(model, x)
    g = qg.to_networkx()
    names = [n.name for n in qg.graph.nodes]
    assert g.number_of_nodes() == len(names)
    assert set(g.nodes) == set(names)
    assert g.number_of_edges() == sum(len(n.all_input_nodes) for n in qg.graph.nodes)
    assert g.nodes["fc0"]["shape"] == (4, 16)
    assert g.has_edge("fc0", "gate") and g.has_edge("gate", "relu")


def test_wrong_example_inputs_raise_input_error_with_shapes(gated):
    model, _ = gated
    with pytest.raises(qgraph.InputError) as info:
        qgraph.trace(model, torch.randn(4, 5))
    assert "(4, 5)" in str(info.value)
    with pytest.raises(qgraph.InputError):
        qgraph.quantize(model, torch.randn(2, 3, 7))


def test_non_module_raises_input_error():
    with pytest.raises(qgraph.InputError) as info:
        qgraph.trace(lambda x: x + 1, torch.randn(2, 2))
    assert "Module" in str(info.value)
    with pytest.raises(qgraph.InputError):
        qgraph.trace(nn.Linear(2, 2), {"x": torch.randn(1, 2)})


def test_quantize_of_a_non_module_raises_input_error():
    with pytest.raises(qgraph.InputError):
        qgraph.quantize(lambda x: x + 1, torch.randn(2, 2))
    with pytest.raises(qgraph.InputError):
        qgraph.quantize("resnet18", torch.randn(1, 3, 8, 8))


class _ReservedNames(nn.Module):
    """Attributes named like QGraph members (``table``, ``capture``) used to crash the capture."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.table = nn.Parameter(torch.randn(4))
        self.capture = nn.Linear(4, 3)

    def forward(self, x):
        return self.capture(self.fc(x) + self.table)


def test_attributes_named_like_qgraph_members_are_renamed_in_the_graph_only(tmp_path):
    torch.manual_seed(0)
    model, x = _ReservedNames().eval(), torch.randn(16, 4)
    qm = qgraph.quantize(model, x, "w8a8")
    assert isinstance(model.table, nn.Parameter) and isinstance(model.capture, nn.Linear)  # the user's model is untouched
    assert callable(qm.qgraph.table) and qm.qgraph.capture.route  # and QGraph's own members still work
    assert torch.equal(qm.qgraph.table_attr, model.table)
    assert "capture_attr.weight_quantizer" in dict(qm.qgraph.named_modules())
    with torch.no_grad():
        assert sqnr_db(model(x), qm(x)) > 25
    res = qm.export(str(tmp_path / "reserved"), formats=("onnx", "qpack"))
    assert res.max_abs_error <= res.tolerance
    again = qgraph.load(str(tmp_path / "reserved.qpack"), _ReservedNames().eval())
    assert torch.equal(again(x), qm(x))


def test_torch_export_capture_keeps_the_batch_dim_dynamic(tmp_path):
    """Captured on a batch of 3, the quantized model runs on other batch sizes, calibrates on joined
    batches, and exports with a dynamic batch dim."""
    torch.manual_seed(0)
    model = ShapeBranch().eval()
    calib = [(torch.randn(3, 8),) for _ in range(3)]
    qm = qgraph.quantize(model, calib[0], "w8a8", calib_data=calib)
    assert qm.qgraph.capture.route == "torch.export"
    assert all("9 samples, one pass" in c.detail for c in qm.changes if c.pass_name == "bias_correction" and c.action == "corrected")
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert sqnr_db(model(x), qm(x)) > 30
    res = qm.export(str(tmp_path / "branch"), formats=("onnx",))
    assert res.dynamic_batch and res.max_abs_error <= res.tolerance


class NoGradTable(nn.Module):
    """A position table read under ``torch.no_grad()`` (Marian/Pegasus) in a model that only
    ``torch.export`` captures: the exporter wraps that read in a grad-mode region."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Embedding(16, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        with torch.no_grad():
            p = self.pos(torch.arange(x.shape[1]))
        y = self.fc(x + p)
        if y.shape[0] > 1:
            return torch.relu(y)
        return y


def test_no_grad_regions_are_inlined_and_their_weights_quantized(tmp_path):
    torch.manual_seed(0)
    model, x = NoGradTable().eval(), torch.randn(3, 5, 8)
    qg = qgraph.trace(model, x)
    assert qg.capture.route == "torch.export"
    assert any("no_grad" in note for note in qg.capture.notes), qg.capture.notes
    assert not any("wrap_with_set_grad_enabled" in str(n.target) for n in qg.graph.nodes)
    torch.testing.assert_close(qg(x), model(x))
    qm = qgraph.quantize(model, x, "w8a8", calib_data=[torch.randn(3, 5, 8) for _ in range(2)])
    assert {"pos.weight_quantizer", "fc.weight_quantizer"} <= set(qm.quantizers()), sorted(qm.quantizers())
    res = qm.export(str(tmp_path / "m"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance


def test_inlined_no_grad_region_still_gets_no_gradient():
    torch.manual_seed(0)
    model, x = NoGradTable().train(), torch.randn(3, 5, 8)
    qm = qgraph.quantize(model, x, "w8a8", calib_data=[torch.randn(3, 5, 8)], qat=True)
    qm(x).sum().backward()
    grads = {n: p.grad for n, p in qm.named_parameters() if n.endswith(".weight")}
    assert any(k.endswith("fc.weight") and g is not None and g.abs().sum() > 0 for k, g in grads.items()), list(grads)
    assert all(g is None or not g.abs().sum() for k, g in grads.items() if k.endswith("pos.weight")), list(grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_a_half_precision_model_is_quantized_and_exported_in_float32(dtype, tmp_path):
    """A bfloat16/float16 model (an LLM loaded in bfloat16) used to crash inside torch.conv2d (half
    inputs, float32 fake-quantized weights). It is captured as a float32 copy; half inputs are cast.
    A float64 model exported a file ONNX Runtime refused ("invalid model": QuantizeLinear takes no
    double); it is captured as float32 the same way."""
    from helpers import tiny_conv_setup

    model, x, calib = tiny_conv_setup()
    half = model.to(dtype)
    qm = qgraph.quantize(half, x.to(dtype), "w8a8", [c.to(dtype) for c in calib])
    assert next(half.parameters()).dtype == dtype  # the user's model is not touched
    assert qm.qgraph.capture.upcast and any(str(dtype).removeprefix("torch.") in n for n in qm.qgraph.capture.notes)
    with torch.no_grad(), qm.frozen():
        out = qm(x.to(dtype))
        ref = copy.deepcopy(half).float()(x.to(dtype).float())  # the same weights, in float32
    assert out.dtype == torch.float32
    assert sqnr_db(ref, out) > 25
    result = qm.export(str(tmp_path / "half"), formats=("onnx", "qpack"))
    assert result.max_abs_error <= result.tolerance


class _CastsItself(nn.Module):
    """An old-style float16 model: ``forward`` casts its input and a buffer of zeros to float16 itself."""

    def __init__(self, branch: bool) -> None:
        super().__init__()
        self.conv, self.fc, self.branch = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4), branch

    def forward(self, x):
        h = torch.relu(self.conv(x.half()))
        if self.branch and h.shape[0] > 1:  # symbolic_trace refuses this, torch.export takes it
            h = h * 2
        return self.fc(h.mean((2, 3))) + torch.zeros(h.shape[0], 4, dtype=torch.float16)


@pytest.mark.parametrize("route", ["symbolic_trace", "torch.export"])
def test_a_half_model_that_casts_to_half_itself_computes_in_float32(route, tmp_path):
    """qgraph's float32 copy of a float16 model met the model's own ``x.half()``: float16 inputs to
    float32 weights, reported as "the model fails on the example inputs" though the model runs. Its
    casts to float16 compute in float32 on either capture route, and the note names them."""
    torch.manual_seed(0)
    model = _CastsItself(branch=route == "torch.export").half().eval()
    x = torch.randn(2, 3, 8, 8)
    qm = qgraph.quantize(model, x, "w8a8", [x, *torch.randn(3, 2, 3, 8, 8)])
    cap = qm.qgraph.capture
    assert cap.route == route and cap.upcast
    assert any(".half(), zeros(..., float16)" in n for n in cap.notes), cap.notes
    with torch.no_grad(), qm.frozen():
        out, ref = qm(x), model(x).float()  # the float16 model itself
    assert out.dtype == torch.float32 and sqnr_db(ref, out) > 25
    result = qm.export(str(tmp_path / "casts"), formats=("onnx",))
    assert result.max_abs_error <= result.tolerance


def test_tracing_a_half_precision_model_leaves_it_half():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).to(torch.bfloat16)
    qg = qgraph.trace(model, torch.randn(2, 8, dtype=torch.bfloat16))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert qg.capture.upcast and qg(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.float32


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.bag = nn.EmbeddingBag(10, 16, max_norm=1.0)  # quantized: renormalized once, then a lookup
        self.script = torch.jit.script(nn.Sequential(nn.Linear(16, 16), nn.ReLU()))
        self.head = nn.Linear(16, 4)

    def forward(self, x, ids):
        h = torch.relu(self.proj(x)) + self.bag(ids)
        return self.head(self.script(h))


def test_weights_with_no_quantized_form_are_named_as_float():
    """A TorchScript submodule keeps float weights; the summary used to be silent about it. Layers the
    recipe skips on purpose are the recipe's decision and are not listed, nor is what got quantized."""
    x, ids = torch.randn(4, 8), torch.randint(0, 10, (4, 3))
    qm = qgraph.quantize(_Recurrent().eval(), (x, ids), "w8a8", skip=["head"])
    notes = [n for n in qm.qgraph.capture.notes if n.startswith("stayed float, no quantized form")]
    assert notes == ["stayed float, no quantized form in qgraph: script (TorchScript module); "
                     "their weights stay float, in the exports too"], qm.qgraph.capture.notes
    assert {c.module_path for c in qm.changes if c.action == "kept float"} >= {"script"}
    assert "script (TorchScript module)" in str(qm.summary()) and "bag.weight_quantizer" in qm.quantizers()
    assert set(qm.quantizers()) >= {"proj.weight_quantizer"} and "head.weight_quantizer" not in qm.quantizers()


class _ShapeBranch(nn.Module):
    """Control flow on a shape in the root forward: symbolic tracing cannot, torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if x.shape[1] > 3:
            x = x[:, 1:]
        return self.fc(x.mean(1))


def test_a_single_sample_example_keeps_the_batch_of_a_torch_export_capture_dynamic():
    """torch.export fixes a dimension whose example size is 1; with a single-sample example the
    capture refused the calibration batches ('x.size()[0] == 1 does not hold')."""
    g = torch.Generator().manual_seed(0)
    qm = qgraph.quantize(_ShapeBranch().eval(), torch.randn(1, 6, 8, generator=g), "w8a8",
                         [torch.randn(4, 6, 8, generator=g) for _ in range(2)])
    assert qm.qgraph.capture.route == "torch.export"
    x = torch.randn(5, 6, 8, generator=g)
    with torch.no_grad():
        assert qm(x).shape == (5, 4)
        assert sqnr_db(qm._float_graph(x), qm(x)) > 30


class _BakedBatch(nn.Module):
    """Needs torch.export (control flow on a shape), and its code fixes the batch at 4."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(40, 4)

    def forward(self, x):
        if x.shape[1] > 3:
            x = x[:, 1:]
        return self.fc(torch.relu(x).reshape(4, -1))


def test_a_capture_with_a_fixed_batch_exports_a_fixed_batch(tmp_path):
    """The ONNX file of a graph whose batch torch.export fixed used to claim a dynamic batch while its
    reshape kept the example's 4 (ONNX Runtime failed at any other batch size)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 8, generator=g)
    qm = qgraph.quantize(_BakedBatch().eval(), x, "w8a8", [torch.randn(4, 6, 8, generator=g)])
    assert qm.qgraph.capture.route == "torch.export" and qm.qgraph.capture.static_batch
    # the notes say so: before, only ExportResult.dynamic_batch told, without why
    assert any("fixed the batch size at the example's (4)" in n for n in qm.qgraph.capture.notes), qm.qgraph.capture.notes
    result = qm.export(str(tmp_path / "baked"), formats=("onnx",))
    assert result.dynamic_batch is False and result.max_abs_error <= result.tolerance


def test_a_varargs_forward_keeps_a_dynamic_batch():
    """forward(self, *args) wrappers: torch.export rejected the flat dynamic-shape spec, and the
    capture fell back to a fixed batch."""
    class Varargs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _ShapeBranch()

        def forward(self, *args):
            return self.inner(args[0]) + args[1]

    g = torch.Generator().manual_seed(0)
    qm = qgraph.quantize(Varargs().eval(), (torch.randn(4, 6, 8, generator=g), torch.randn(4, 4, generator=g)), "w8a8")
    assert qm.qgraph.capture.route == "torch.export" and not qm.qgraph.capture.static_batch
    with torch.no_grad():
        assert qm(torch.randn(3, 6, 8), torch.randn(3, 4)).shape == (3, 4)


@pytest.mark.parametrize("wrap", [torch.compile, nn.DataParallel], ids=["torch.compile", "DataParallel"])
def test_a_wrapped_model_is_captured_through_its_wrapper(wrap):
    """torch.compile / DataParallel wrappers used to force the torch.export route (compiling the model
    to run the example) and prefix every path (_orig_mod., module.), so skip globs missed."""
    from helpers import tiny_conv_setup

    model, x, calib = tiny_conv_setup()
    qm = qgraph.quantize(wrap(model), x, "w8a8", calib, skip=["head"])
    cap = qm.qgraph.capture
    assert cap.route == "symbolic_trace" and "wrapper" in cap.notes[0]
    assert "conv1.weight_quantizer" in qm.quantizers() and "head.weight_quantizer" not in qm.quantizers()
    with torch.no_grad(), qm.frozen():
        assert sqnr_db(model(x), qm(x)) > 25


def test_half_inputs_inside_a_list_are_cast_too():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 4)

        def forward(self, xs):
            return self.a(xs[0]) + self.a(xs[1])

    x = ([torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16()],)
    model = Pair().to(torch.bfloat16)
    qm = qgraph.quantize(model, x, "w8a8", [x])
    with torch.no_grad(), qm.frozen():
        ref = copy.deepcopy(model).float()([t.float() for t in x[0]])
        assert sqnr_db(ref, qm(*x)) > 30


class _NanWhereMasked(nn.Module):
    """Attention with every key of a row masked out gives NaN there, in eager PyTorch too."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x, keep):
        att = (self.fc(x) @ x.transpose(1, 2)).masked_fill(keep[:, None, :] == 0, float("-inf"))
        return att.softmax(-1) @ x


def test_a_graph_that_gives_nan_where_the_model_does_is_captured():
    keep = torch.ones(2, 5, dtype=torch.long)
    keep[1] = 0  # the second sample has no token: NaN rows in the model's own output
    x = torch.randn(2, 5, 8)
    qg = qgraph.trace(_NanWhereMasked().eval(), (x, keep))
    assert qg.capture.route == "symbolic_trace"
    with torch.no_grad():
        out = qg(x, keep)
    assert out[1].isnan().all() and not out[0].isnan().any()


class _ValueDependentWidth(nn.Module):
    """How many outputs it returns depends on the input's values: no route can capture that."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        keep = int((x.sum() > 0).item()) + 1
        return self.fc(x)[:, :keep]


def test_a_model_no_route_captures_is_refused_naming_the_line_that_failed():
    """Each route's failure names the user's line: fx's and torch.export's messages named neither the
    file nor the code (an LSTM over ``pack_padded_sequence``, the first such model, now captures)."""
    torch.manual_seed(0)
    with pytest.raises(qgraph.CaptureError) as err:
        qgraph.quantize(_ValueDependentWidth().eval(), torch.randn(4, 8), "w8a8")
    lines = str(err.value).splitlines()
    code = "`keep = int((x.sum() > 0).item()) + 1`"
    assert any(ln.strip().startswith("symbolic_trace:") and "test_capture.py:" in ln and code in ln for ln in lines), lines
    assert any(ln.strip().startswith("torch.export:") and code in ln for ln in lines), lines


class _OwnParameters(nn.Module):
    """A contraction with a 3-D parameter (one matrix per feature, FT-Transformer's feature tokens:
    quantized like expert weights) and a root-level ``weight`` used elementwise (no quantized form)."""

    def __init__(self) -> None:
        super().__init__()
        self.core = nn.Parameter(torch.randn(4, 5, 6))
        self.weight = nn.Parameter(torch.randn(4, 6))
        self.pos = nn.Parameter(torch.randn(1, 4, 6))  # added, not multiplied: float by design, not listed
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.einsum("nij,ijk->nik", x, self.core) * self.weight + self.pos)


def test_parameters_the_graph_reads_in_float_are_named_with_their_op():
    """The einsum's parameter stayed float without a word (only ``weight*`` names were looked at; it is now
    quantized per feature and output channel), and a root-level ``weight`` was listed as "`` (module)``",
    an empty name."""
    qm = qgraph.quantize(_OwnParameters().eval(), torch.randn(2, 4, 5), "w8a8")
    notes = [n for n in qm.qgraph.capture.notes if n.startswith("stayed float, no quantized form")]
    assert notes == ["stayed float, no quantized form in qgraph: weight (parameter read by mul); "
                     "their weights stay float, in the exports too"], qm.qgraph.capture.notes
    assert qm.quantizers()["core_quantizer"].role == "weight"


class _Codebook(nn.Module):
    """A VQ-VAE quantizer: the nearest entry of an ``nn.Embedding`` codebook by ``torch.cdist``, looked
    up by indexing its weight. An embedding table read as a module call is the recipe's decision; this
    one no op quantizes."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.codebook = nn.Linear(6, 4), nn.Embedding(8, 4)

    def forward(self, x):
        z = self.enc(x)
        return z + (self.codebook.weight[torch.cdist(z, self.codebook.weight).argmin(1)] - z).detach()


def test_a_codebook_read_by_cdist_is_named():
    """It stayed float without a word: ``nn.Embedding`` weights were left to the recipe even where the
    graph itself reads them in a product no quantizer covers."""
    qm = qgraph.quantize(_Codebook().eval(), torch.randn(5, 6), "w8a8")
    notes = [n for n in qm.qgraph.capture.notes if n.startswith("stayed float, no quantized form")]
    assert len(notes) == 1 and "codebook.weight (parameter read by" in notes[0] and "cdist" in notes[0], qm.qgraph.capture.notes


class _PolicyHead(nn.Module):
    """An actor-critic policy head: a Normal's log-probability of given actions and its entropy."""

    def __init__(self) -> None:
        super().__init__()
        self.mu, self.log_std = nn.Linear(6, 2), nn.Parameter(torch.zeros(2))

    def forward(self, x, actions):
        dist = torch.distributions.Normal(self.mu(x), self.log_std.exp())
        return dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)


def test_distribution_argument_validation_does_not_block_capture(tmp_path, monkeypatch):
    """``torch.distributions`` validates arguments by default with a branch on tensor values, which no
    capture route followed; capture turns validation off, says so, and restores the default."""
    torch.manual_seed(0)
    model = _PolicyHead().eval()
    x, a = torch.randn(4, 6), torch.randn(4, 2)
    # the default is on in a fresh process; torch's dynamo turns it off for good once it first runs (an
    # earlier torch.export in this process), so set it as a fresh process has it
    monkeypatch.setattr(torch.distributions.Distribution, "_validate_args", True)
    qm = qgraph.quantize(model, (x, a), "w8a8", [(torch.randn(4, 6), torch.randn(4, 2)) for _ in range(3)])
    assert any("torch.distributions argument validation (Normal) was off" in n for n in qm.qgraph.capture.notes)
    assert torch.distributions.Distribution._validate_args  # the process-wide default is left as it was
    with pytest.raises(ValueError):  # and the user's model still validates
        model(x, torch.full((4, 2), float("nan")))
    res = qm.export(str(tmp_path / "policy"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance


class _VmapEnsemble(nn.Module):
    """Three linear models run at once by ``torch.func.vmap(functional_call)``, averaged."""

    def __init__(self) -> None:
        super().__init__()
        members = [nn.Linear(8, 4) for _ in range(3)]
        params, _ = torch.func.stack_module_state(members)
        self.params = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(v) for k, v in params.items()})
        self.base = [copy.deepcopy(members[0]).to("meta")]

    def forward(self, x):
        def one(w, b):
            return torch.func.functional_call(self.base[0], {"weight": w, "bias": b}, (x,))
        return torch.func.vmap(one)(self.params["weight"], self.params["bias"]).mean(0)


def test_vmap_ensemble_weights_quantized_outside_the_level_and_ops_inside_stay_float(tmp_path):
    """The stacked weights of a ``vmap(functional_call)`` ensemble are quantized weight-only on their
    ``get_attr``, outside the vmap level, one scale per (member, output channel). The ops inside the
    level stay float, recorded: folding outside it and observing batched tensors inside it let a
    batched tensor escape ("Either your tensor may have escaped from inside a function being
    vmapped"), and so did dead-code elimination dropping the level's unread
    ``_vmap_increment_nesting``. The file holds the weights as int8."""
    torch.manual_seed(0)
    model = _VmapEnsemble().eval()
    x = torch.randn(4, 8)
    qm = qgraph.quantize(model, x, "w8a8", [torch.randn(4, 8) for _ in range(2)])
    kept = [c for c in qm.changes if c.action == "kept float" and "inside torch.func.vmap" in c.detail]
    assert kept
    quantizers = qm.quantizers()
    assert list(quantizers) == ["params.weight_quantizer"] and quantizers["params.weight_quantizer"].role == "weight"
    scale = quantizers["params.weight_quantizer"].scale
    assert scale.numel() == 3 * 4  # per member and output channel
    with torch.no_grad(), qm.frozen():
        got, want = qm(x), model(x)
    assert 35 < sqnr_db(want, got) < 80  # rounded, and close
    try:
        res = qm.export(str(tmp_path / "ensemble"), formats=("onnx",))
    except qgraph.ExportError:  # torch 2.11's exporter cannot decompose vmap graphs ("prim.device != aten.mul")
        with pytest.raises(qgraph.ExportError):  # nor the float model's: torch's limit, not qgraph's
            qgraph.export_onnx(model, x, str(tmp_path / "float.onnx"))
        return
    assert res.max_abs_error <= res.tolerance
    inits = {i.name: i for i in onnx.load(str(tmp_path / "ensemble.onnx")).graph.initializer}
    assert [3, 4, 8] in [list(i.dims) for i in inits.values() if i.data_type == onnx.TensorProto.INT8]  # codes (and zero points)
    assert not [i.name for i in inits.values() if list(i.dims) == [3, 4, 8] and i.data_type == onnx.TensorProto.FLOAT]


@dataclasses.dataclass
class _DetectorOutput:
    logits: torch.Tensor
    boxes: torch.Tensor
    loss: torch.Tensor | None = None


class _DataclassHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.cls, self.box = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        f = self.body(x)
        return _DetectorOutput(logits=self.cls(f).flatten(2), boxes=self.box(f).sigmoid().flatten(2))


def test_a_dataclass_output_is_registered_and_its_tensors_checked(tmp_path):
    """An unregistered dataclass is one opaque pytree leaf: the capture check compared no tensor, and
    bias correction crashed on an empty ``torch.cat``. Its type is now registered (and noted), so its
    fields are outputs that are checked, calibrated against and exported."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    qm = qgraph.quantize(_DataclassHead().eval(), x, "w8a8", [torch.randn(2, 3, 8, 8) for _ in range(2)])
    assert any("_DetectorOutput" in n and "register_dataclass" in n for n in qm.qgraph.capture.notes), qm.qgraph.capture.notes
    with torch.no_grad(), qm.frozen():
        out = qm(x)
    assert isinstance(out, _DetectorOutput) and out.loss is None and out.logits.shape == (2, 4, 64)
    res = qm.export(str(tmp_path / "det"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance and len(_onnx_outputs(res.onnx_path)) == 2


def _onnx_outputs(path: str) -> list[str]:
    return [o.name for o in onnx.load(path).graph.output]


class _Res2NetTDNN(nn.Module):
    """A Res2Net-style block: fx cannot iterate ``torch.chunk`` of a traced value, so it is a leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        y = [c if i == 0 else torch.relu(c) for i, c in enumerate(torch.chunk(x, 2, dim=1))]
        return torch.relu(self.conv(torch.cat(y, 1)))


class _SpeechbrainBlocks(nn.Module):
    """speechbrain's ECAPA-TDNN: each block called with ``lengths=`` where it takes them, else without."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Res2NetTDNN(), _Res2NetTDNN()])

    def forward(self, x, lengths=None):
        for layer in self.blocks:
            try:
                x = layer(x, lengths=lengths)
            except TypeError:
                x = layer(x)
        return x


def test_a_leaf_refuses_arguments_its_forward_does_not_take_while_tracing():
    """A leaf's call is recorded, not run: ``layer(x, lengths=lengths)`` raised no TypeError while
    tracing, and the graph kept a call the leaf refuses (the model was refused). The tracer now binds
    the arguments to the leaf's signature, so the ``except TypeError`` branch is traced, as it runs."""
    from qgraph.capture import _AutoLeafTracer

    model = _SpeechbrainBlocks().eval()
    graph = _AutoLeafTracer({"blocks.0", "blocks.1"}).trace(model)
    calls = [n for n in graph.nodes if n.op == "call_module"]
    assert [str(n.target) for n in calls] == ["blocks.0", "blocks.1"] and all(not n.kwargs for n in calls)


def test_torch_export_falls_back_to_strict_mode(tmp_path):
    """torch.export's non-strict tracer failed on the same model ("Unexpected key
    _export_root.blocks.0"), so the blocks stayed opaque leaves; its strict mode captures them whole
    (torch 2.14; torch 2.11's strict mode fails to inline the ``try``, and the leaves stay)."""
    g = torch.Generator().manual_seed(0)
    x, lengths = torch.randn(4, 4, 8, generator=g), torch.ones(4)
    model = _SpeechbrainBlocks().eval()
    qm = qgraph.quantize(model, (x, lengths), "w8a8", [(torch.randn(4, 4, 8, generator=g), lengths)])
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 14):
        assert qm.qgraph.capture.route == "torch.export" and not qm.qgraph.capture.leaves
    else:
        assert set(qm.qgraph.capture.leaves) == {"blocks.0", "blocks.1"}
    res = qm.export(str(tmp_path / "ecapa"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance and res.dynamic_batch


class _SummedLengths(nn.Module):
    """Two token inputs and the sum of their lengths: ``a.shape[1] + b.shape[1]`` is an add of two sizes.
    With ``masked``, a causal mask from ``torch.finfo(x.dtype)``, which symbolic tracing cannot follow."""

    def __init__(self, masked: bool) -> None:
        super().__init__()
        self.emb, self.pos, self.lin, self.masked = nn.Embedding(32, 8), nn.Linear(1, 8), nn.Linear(8, 8), masked

    def forward(self, a, b):
        t = a.shape[1] + b.shape[1]
        x = self.emb(torch.cat([a, b], 1))
        p = torch.arange(t, dtype=torch.float32)[None, :, None]
        h = (x + self.pos(p)).reshape(x.shape[0], t, -1)
        scores = h @ h.transpose(1, 2)
        if self.masked:
            scores = scores + torch.triu(torch.full((t, t), torch.finfo(x.dtype).min), 1)
        return self.lin(torch.softmax(scores, -1) @ h)


@pytest.mark.parametrize("route", ["symbolic_trace", "torch.export"])
def test_an_add_of_two_sizes_is_no_tensor_add(route, tmp_path):
    """A sum of two sizes had no tensor metadata, which the op classifier read as "a float tensor of
    unknown shape": it was an add to quantize, and calibration handed its observer a Python int
    ("'int' object has no attribute 'detach'"). Sizes are recorded as numbers, on both routes."""
    torch.manual_seed(0)
    ex = (torch.randint(0, 32, (4, 6)), torch.randint(0, 32, (4, 4)))
    qm = qgraph.quantize(_SummedLengths(masked=route == "torch.export").eval(), ex, "w8a8")
    assert qm.qgraph.capture.route == route
    assert not [n for n in qm.quantizers() if n.startswith("add")]
    result = qm.export(str(tmp_path / "lengths"), formats=("onnx",))
    assert result.max_abs_error <= result.tolerance


class _NumpyScale(nn.Module):
    """NeuS's skip connection: ``torch.cat([h, x], 1) / np.sqrt(2)``, a NumPy scalar in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(11, 4)

    def forward(self, x):
        return self.b(torch.cat([torch.relu(self.a(x)), x], 1) / np.sqrt(2) * np.float32(0.5))


def test_numpy_scalars_in_forward_become_python_numbers():
    """fx wrote a NumPy float64 into the generated code as ``np.float64(1.414...)``, which its namespace
    does not define: the graph passed capture's checks (run node by node) and ``quantize`` failed with
    "NameError: name 'np' is not defined"; it refused a float32 outright (capture fell back to
    torch.export). The tracer makes them Python numbers of the same value."""
    torch.manual_seed(0)
    model, x = _NumpyScale().eval(), torch.randn(4, 3)
    qg = qgraph.trace(model, x)
    assert qg.capture.route == "symbolic_trace"
    assert "np." not in qg.code
    torch.testing.assert_close(qg(x), model(x), rtol=0, atol=0)
    qm = qgraph.quantize(model, x, "w8a8", [torch.randn(4, 3)])
    assert "b.input_quantizer" in qm.quantizers()


def test_an_export_failing_inside_a_leaf_names_the_leaf_and_its_line(gated, tmp_path):
    """A leaf that branches on tensor values quantizes and runs in PyTorch, but the ONNX exporter traces
    into it and fails. The error was torch's alone ("Could not guard on data-dependent expression"),
    naming neither the leaf nor the line; it now names both, as capture recorded them."""
    model, x = gated
    qm = qgraph.quantize(model, x, "w8a8", [x])
    with pytest.raises(qgraph.ExportError) as info:
        qm.export(str(tmp_path / "gated"), formats=("onnx",))
    msg = str(info.value)
    assert "data-dependent" in msg and "gate: " in msg and "test_capture.py:" in msg and "torch.cond" in msg
