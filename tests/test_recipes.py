"""Recipes, overrides, skip lists, per-group fallback, and weight-only int4 export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import op_types
from torch import nn

import qgraph
from qgraph import Override, PerChannel, PerGroup, QSpec


class MLP(nn.Module):
    """fc1 has K=256 (a multiple of 128), fc2 K=256, head K=100 (not a multiple of 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(256, 256)
        self.fc2 = nn.Linear(256, 100)
        self.head = nn.Linear(100, 10)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ConvLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = y + self.conv_b(y)  # a residual add
        return self.fc(torch.flatten(y, 1))


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return MLP().eval(), torch.randn(4, 256)


@pytest.fixture(scope="module")
def convnet():
    torch.manual_seed(0)
    return ConvLinear().eval(), torch.randn(2, 3, 6, 6)


def _weight_specs(qm) -> dict[str, QSpec]:
    return {n.removesuffix(".weight_quantizer"): q.spec for n, q in qm.quantizers().items() if q.role == "weight"}


def _paths(qm) -> set[str]:
    return {q.where for q in qm.quantizers().values()}


def test_builtin_recipes_are_listed():
    names = qgraph.list_recipes()
    assert {"w8a8", "w4a8", "w8a16", "w4a16"} <= set(names)
    r = qgraph.get_recipe("w4a8")
    assert r.weight.bits == 4 and r.activation.bits == 8
    assert qgraph.get_recipe("w8a16").activation is None


def test_unknown_recipe_lists_known_names(mlp):
    model, x = mlp
    with pytest.raises(qgraph.RecipeError) as info:
        qgraph.quantize(model, x, recipe="w3a7")
    msg = str(info.value)
    assert "w3a7" in msg
    for name in qgraph.list_recipes():
        assert name in msg
    with pytest.raises(qgraph.RecipeError):
        qgraph.get_recipe("int8")
    with pytest.raises(qgraph.RecipeError):
        qgraph.get_recipe(8)


def test_recipe_options_and_bad_options():
    assert qgraph.get_recipe("w8a8", observer="mse").activation.observer == "mse"
    assert qgraph.get_recipe("w4a16", group_size=32).weight.granularity == PerGroup(32)
    with pytest.raises(qgraph.RecipeError):
        qgraph.get_recipe("w8a8", group_size=32)
    with pytest.raises(qgraph.RecipeError):
        qgraph.get_recipe("w8a8", observer="histogram")


def test_register_recipe_twice_is_an_error():
    with pytest.raises(qgraph.RecipeError):
        qgraph.register_recipe("w8a8")(lambda: qgraph.get_recipe("w8a16"))
    assert qgraph.get_recipe("w8a8").name == "w8a8"


def test_override_by_name_glob(mlp):
    model, x = mlp
    int4 = QSpec(bits=4, granularity=PerChannel(0))
    qm = qgraph.quantize(model, x, "w8a8", overrides=[Override(name="fc*", weight=int4)])
    specs = _weight_specs(qm)
    assert specs["fc1"].bits == 4 and specs["fc2"].bits == 4
    assert specs["head"].bits == 8


def test_override_by_regex_skip(mlp):
    model, x = mlp
    qm = qgraph.quantize(model, x, "w8a8", overrides=[Override(regex=r"^fc\d$", skip=True)])
    assert _paths(qm) == {"head"}
    # fc1/fc2 are plain float linears: their weights are untouched in the graph
    torch.testing.assert_close(qm.qgraph.get_submodule("fc1").weight, model.fc1.weight, rtol=0, atol=0)


def test_override_by_op_kind(convnet):
    model, x = convnet
    qm = qgraph.quantize(model, x, "w8a8", overrides=[Override(op="linear", weight=None, activation=None)])
    assert "fc" not in _paths(qm)
    assert {"conv", "conv_b"} <= _paths(qm)
    rows = {r["module"]: r for r in qm.summary_rows()}
    assert "fc" not in rows and rows["conv"]["op"] == "conv"
    # the residual add is quantized by default and can be switched off by kind
    assert any(r["op"] == "add" for r in rows.values())
    qm2 = qgraph.quantize(model, x, "w8a8", overrides=[Override(op="add", skip=True)])
    assert not any(r["op"] == "add" for r in qm2.summary_rows())


@pytest.mark.parametrize("module_type", ["Conv2d", nn.Conv2d], ids=["by_name", "by_class"])
def test_override_by_module_type(convnet, module_type):
    model, x = convnet
    int4 = QSpec(bits=4, granularity=PerChannel(0))
    qm = qgraph.quantize(model, x, "w8a8", overrides=[Override(module_type=module_type, weight=int4)])
    specs = _weight_specs(qm)
    assert specs["conv"].bits == 4 and specs["conv_b"].bits == 4
    assert specs["fc"].bits == 8


def test_last_matching_override_wins(mlp):
    model, x = mlp
    int4 = QSpec(bits=4, granularity=PerChannel(0))
    int6 = QSpec(bits=6, granularity=PerChannel(0))
    qm = qgraph.quantize(model, x, "w8a8", overrides=[Override(name="*", weight=int4), Override(name="fc2", weight=int6)])
    specs = _weight_specs(qm)
    assert (specs["fc1"].bits, specs["fc2"].bits, specs["head"].bits) == (4, 6, 4)


def test_skip_list_keeps_a_layer_float(mlp):
    model, x = mlp
    qm = qgraph.quantize(model, x, "w8a8", skip=["head"])
    assert "head" not in _paths(qm)
    assert not any(name.startswith("head.") for name in qm.quantizers())
    assert {"fc1", "fc2"} <= _paths(qm)
    assert qm.recipe.overrides[-1] == Override(name="head", skip=True)
    # a string is accepted as a single glob
    qm2 = qgraph.quantize(model, x, "w8a8", skip="fc*")
    assert _paths(qm2) == {"head"}


def test_a_skip_glob_or_path_override_that_matches_nothing_is_an_error(mlp):
    """``skip=["haed"]`` quantized the head silently: the layer the user meant to keep float was not."""
    model, x = mlp
    with pytest.raises(qgraph.RecipeError, match=r"skip 'haed' matches none of the model's 3 quantizable ops; close module paths: head"):
        qgraph.quantize(model, x, "w8a8", skip=["fc*", "haed"])
    with pytest.raises(qgraph.RecipeError, match=r"Override\(regex='\^encoder'\) matches none of the model's 3 quantizable ops; module paths of quantizable ops: fc1, fc2, head"):
        qgraph.quantize(model, x, "w8a8", overrides=[Override(regex="^encoder", skip=True)])
    # policies by op kind or module type may match nothing (one override list for many models)
    qm = qgraph.quantize(model, x, "w8a8", overrides=[Override(op="add", skip=True), Override(module_type="Conv2d", skip=True)])
    assert _paths(qm) == {"fc1", "fc2", "head"}


def test_per_group_falls_back_to_per_channel_when_k_is_not_a_multiple(mlp):
    model, x = mlp
    qm = qgraph.quantize(model, x, "w4a16")  # group size 128
    specs = _weight_specs(qm)
    assert specs["fc1"].granularity == PerGroup(128)
    assert specs["fc2"].granularity == PerGroup(128)
    assert specs["head"].granularity == PerChannel(0)
    fallbacks = [c for c in qm.changes if c.action == "fallback"]
    assert [c.module_path for c in fallbacks] == ["head"]
    assert "100" in fallbacks[0].detail and "128" in fallbacks[0].detail
    q = qm.quantizers()
    assert tuple(q["fc1.weight_quantizer"].scale.shape) == (256, 2)
    assert tuple(q["head.weight_quantizer"].scale.shape) == (10,)
    # weight-only: no activation quantizers at all
    assert all(m.role == "weight" for m in q.values())


def test_w4a16_exports_int4_weights_smaller_than_w8a16(mlp, tmp_path):
    model, x = mlp
    r4 = qgraph.quantize(model, x, "w4a16").export(str(tmp_path / "w4a16"))
    r8 = qgraph.quantize(model, x, "w8a16").export(str(tmp_path / "w8a16"))
    assert r4.max_abs_error <= r4.tolerance and r8.max_abs_error <= r8.tolerance
    m4 = onnx.load(r4.onnx_path)
    int4_shapes = sorted(tuple(t.dims) for t in m4.graph.initializer if t.data_type == onnx.TensorProto.INT4 and len(t.dims) == 2)
    # fc1's (and fc2's) 256-wide weights are stored as int4 (transposed for MatMulNBits: K x N)
    assert (256, 256) in int4_shapes and (256, 100) in int4_shapes
    float_sizes = [int(np.prod(t.dims)) for t in m4.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert max(float_sizes) <= 2 * 256, "only biases and scales stay float; no float weight matrix is left"
    assert op_types(r4.onnx_path)["DequantizeLinear"] >= 3
    assert r4.onnx_bytes < 0.75 * r8.onnx_bytes


@pytest.mark.parametrize(
    "kwargs",
    [dict(op="foo"), dict(), dict(regex="fc(")],
    ids=["unknown_op", "no_criteria", "bad_regex"],
)
def test_invalid_override_is_a_recipe_error(kwargs):
    with pytest.raises(qgraph.RecipeError):
        Override(**kwargs)


def test_overrides_must_be_override_objects(mlp):
    model, x = mlp
    with pytest.raises(qgraph.RecipeError):
        qgraph.quantize(model, x, "w8a8", overrides=[{"name": "fc1", "skip": True}])


@pytest.mark.parametrize("kwargs", [dict(bits=9), dict(bits=1), dict(observer="kl"), dict(percentile=40.0)])
def test_invalid_qspec_is_a_recipe_error(kwargs):
    with pytest.raises(qgraph.RecipeError):
        QSpec(**kwargs)


def test_qspec_and_recipe_json_round_trip():
    spec = QSpec(bits=4, symmetric=False, signed=False, granularity=PerGroup(32), observer="mse", learnable=True)
    assert QSpec.from_json(spec.to_json()) == spec
    r = qgraph.get_recipe("w4a8").with_overrides(Override(name="fc*", skip=True), Override(op="add", activation=None))
    d = r.to_json()
    assert d["name"] == "w4a8" and d["weight"]["bits"] == 4
    assert d["overrides"] == [{"name": "fc*", "skip": True}, {"op": "add", "activation": None}]
