"""qm.report(data): per-layer errors on the trained digits CNN, the sensitivity ranking and the
mixed-precision overrides it suggests; qgraph.diff and print(qgraph)."""

from __future__ import annotations

import math
import re

import pytest
import torch

import qgraph
from examples.models import accuracy
from qgraph import InputError, RecipeError, Report


@pytest.fixture(scope="module")
def w8a8_report(digits_w8a8, calib):
    return digits_w8a8.report(calib[:3])


def test_report_layers_cover_every_quantized_op(digits_w8a8, w8a8_report):
    rows = digits_w8a8.summary_rows()
    assert [ly["node"] for ly in w8a8_report.layers] == [r["node"] for r in rows]
    assert {ly["module"] for ly in w8a8_report.layers} >= {"stem.0", "conv1.0", "conv2.0", "conv3.0", "fc1", "fc2"}
    for ly in w8a8_report.layers:
        for key in ("cumulative", "local", "output_alone"):
            assert math.isfinite(ly[key]["sqnr_db"]) and ly[key]["sqnr_db"] > 15, (ly["node"], key)
            assert 0.95 < ly[key]["cosine"] <= 1.0 + 1e-9
        assert ly["rank"] >= 1
    assert sorted(ly["rank"] for ly in w8a8_report.layers) == list(range(1, len(w8a8_report.layers) + 1))


def test_report_numbers_are_consistent(w8a8_report):
    first, last = w8a8_report.layer("stem.0"), w8a8_report.layer("fc2")
    # the first layer reads the model input: its local and cumulative errors are the same measurement
    assert first["local"]["sqnr_db"] == pytest.approx(first["cumulative"]["sqnr_db"], abs=1e-6)
    # the last layer's output quantizer produces the model output
    assert last["cumulative"]["sqnr_db"] == pytest.approx(w8a8_report.data["model"]["output"]["sqnr_db"], abs=1e-6)
    # error accumulates: deep layers see more of it than they cause alone
    conv3 = w8a8_report.layer("conv3.0")
    assert conv3["cumulative"]["sqnr_db"] < conv3["local"]["sqnr_db"]
    # ranking = ascending model-output SQNR with one layer quantized
    alone = [w8a8_report.layer(n)["output_alone"]["sqnr_db"] for n in w8a8_report.ranking]
    assert alone == sorted(alone)
    fc1 = w8a8_report.layer("fc1")
    assert fc1["weight_range"][0] < 0 < fc1["weight_range"][1] and fc1["activation_range"][0] >= 0
    assert fc1["activation_grid"][0] <= fc1["activation_range"][0] and fc1["weight_sqnr_db"] > 30
    assert w8a8_report.data["model"]["top1_agreement"] > 0.9


def test_report_table_and_json_round_trip(w8a8_report, tmp_path):
    text = w8a8_report.table()
    for path in ("stem.0", "conv3.0", "fc2", "SQNR local", "most sensitive"):
        assert path in text
    w8a8_report.to_json(str(tmp_path / "r.json"))
    again = Report.from_json(str(tmp_path / "r.json"))
    assert again.table() == text and again.ranking == w8a8_report.ranking
    q = again.data["quantizers"]["fc1.weight_quantizer"]
    assert q["bits"] == 8 and q["scale"]["count"] == 32 and sum(q["hist"]["counts"]) == 32 * 512 // 32
    with pytest.raises(InputError, match="not a qgraph report"):
        Report.from_json('{"nodes": []}')


def test_report_errors(digits_w8a8, w8a8_report):
    with pytest.raises(InputError):
        digits_w8a8.report(42)
    with pytest.raises(RecipeError):
        w8a8_report.recipe_overrides(keep=-1)
    with pytest.raises(InputError, match="no layer"):
        w8a8_report.layer("nope")


def _bottom_overrides(report, keep):
    """The same kind of overrides for the LEAST sensitive layers (the control)."""
    low = [report.layer(n)["module"] for n in reversed(report.ranking) if report.layer(n)["module"]][:keep]
    allo = report.recipe_overrides(keep=len(report.ranking), bits=8)
    return [o for o in allo if any(o.regex == f"^{re.escape(m)}$" for m in low)]


def test_recipe_overrides_recover_accuracy_at_2_bits(trained_cnn, example_batch, calib, digits):
    """w2a16 wrecks the digits CNN; keeping the 3 most sensitive layers at 8 bits recovers most of it,
    and clearly more than keeping the 3 least sensitive ones. (Without bias correction, which alone
    recovers most of w2a16's loss on this model: tests/test_bias_correction.py.)"""
    _, _, x_te, y_te = digits
    qm = qgraph.quantize(trained_cnn, example_batch, recipe="w2a16(bias_correction=False)", calib_data=calib)
    rep = qm.report(calib[:2])
    overrides = rep.recipe_overrides(keep=3, bits=8)
    assert len(overrides) == 3 and all(o.weight.bits == 8 for o in overrides)
    mixed = qgraph.quantize(trained_cnn, example_batch, recipe=rep.recipe(keep=3, bits=8), calib_data=calib)
    control = qgraph.quantize(trained_cnn, example_batch, recipe=qm.recipe, overrides=_bottom_overrides(rep, 3), calib_data=calib)
    acc_base, acc_mixed, acc_control = (accuracy(m, x_te, y_te) for m in (qm, mixed, control))
    assert acc_base < 0.6 and acc_mixed > 0.9 and acc_mixed > acc_control + 0.15, (acc_base, acc_mixed, acc_control)
    sq = [m.report(calib[:2], local=False).data["model"]["output"]["sqnr_db"] for m in (qm, mixed, control)]
    assert sq[1] > sq[0] + 5 and sq[1] > sq[2] + 3, sq
    summary = {r["module"]: r["bits"] for r in mixed.summary_rows()}
    assert sorted(m for m, b in summary.items() if b.startswith("w8")) == sorted(
        rep.layer(n)["module"] for n in rep.ranking[:3])


def test_with_variants_carries_per_setting_metrics(trained_cnn, example_batch, calib, w8a8_report):
    w4 = qgraph.quantize(trained_cnn, example_batch, recipe="w4a8", calib_data=calib).report(calib[:1], local=False)
    both = w8a8_report.with_variants("bits", {"8": w8a8_report, "4": w4})
    assert both.data["switches"] == {"bits": ["8", "4"]}
    v = both.layer("fc1")["variants"]["bits"]
    assert v["8"]["bits"] == "w8a8" and v["4"]["bits"] == "w4a8"
    assert v["4"]["cumulative"]["sqnr_db"] < v["8"]["cumulative"]["sqnr_db"]


def test_diff_names_inserted_quantizers_and_folded_batchnorm(trained_cnn, example_batch, digits_w8a8):
    d = qgraph.diff(digits_w8a8)
    added = {e.name for e in d.added}
    assert added == {n.replace(".", "_") for n in digits_w8a8.quantizers()}
    assert all("insert_quantizers: inserted" in e.passes for e in d.added)
    conv = next(e for e in d.changed if e.name == "conv2d_1")
    assert "conv1_0_weight -> conv1_0_weight_quantizer" in conv.detail and conv.module_path == "conv1.0"
    text = str(d)
    assert text.startswith(f"graph diff: {len(d.added)} added") and "\nconv1.0\n" in text
    full = qgraph.diff(qgraph.trace(trained_cnn, example_batch), digits_w8a8)
    folded = {e.name: e for e in full.removed if e.passes == ["fold_bn: folded"]}
    assert {e.module_path for e in folded.values()} == {"stem.1", "conv1.1", "conv2.1", "conv3.1"}
    assert not qgraph.diff(digits_w8a8.qgraph, digits_w8a8.qgraph)
    with pytest.raises(InputError):
        qgraph.diff("a", "b")


def test_print_qgraph_reads_with_module_paths(digits_w8a8):
    text = str(digits_w8a8.qgraph)
    assert "\nfc1\n" in text and "quantize[int8 sym per-channel(axis=0)](fc1.weight)" in text
    assert re.search(r"linear = linear\(flatten, fc1_weight_quantizer, fc1\.bias\)  \[32, 32\]  linear w8a8", text)
    assert text.splitlines()[-1] == "return linear_1"  # fc2: a classifier head, its result stays float (annotate rule 6)
    assert "linear_1 = linear(fc1_output_quantizer, fc2_weight_quantizer, fc2.bias)" in text


def test_report_of_a_bitswitch_model_carries_one_variant_per_bit_width(trained_cnn, example_batch, calib):
    qm = qgraph.quantize(trained_cnn, example_batch, recipe="bitswitch(8,4,2)", calib_data=calib[:2])
    qm.set_bits({"conv1*": 2})
    before = qm.get_bits()
    rep = qm.report(calib[:1], local=False)
    assert rep.data["switches"]["bits"] == ["8", "4", "2"]
    assert qm.get_bits() == before  # the model's own setting is restored
    layer = next(ly for ly in rep.data["layers"] if "variants" in ly and ly["variants"]["bits"]["8"]["cumulative"])
    sqnr = {b: layer["variants"]["bits"][b]["cumulative"]["sqnr_db"] for b in ("8", "4", "2")}
    assert sqnr["8"] > sqnr["4"] > sqnr["2"], sqnr  # each variant was measured at its own bit width


def test_report_of_a_task_scale_model_carries_one_variant_per_task():
    from torch import nn

    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    a = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    b = [5 * torch.randn(4, 3, 8, 8) + 2 for _ in range(2)]  # a task whose activations are far wider
    qm = qgraph.quantize(body, a[0], "tasks(a,b)", calib_data={"a": a, "b": b})
    rep = qm.report(a[:1], local=False)
    assert rep.data["switches"]["task"] == ["a", "b"]
    layer = rep.data["layers"][0]
    got = {t: layer["variants"]["task"][t]["cumulative"]["sqnr_db"] for t in ("a", "b")}
    assert got["a"] > got["b"] + 3, got  # on task a's data, task a's scales fit far better


def test_per_layer_sqnr_is_not_overwritten_by_an_inplace_activation():
    """conv → BN → SiLU(inplace=True): in the float graph the SiLU overwrites the conv's output tensor
    in place (in the quantized graph it overwrites the output quantizer's copy). The summary must
    compare the conv's own outputs, not SiLU(conv) against conv."""
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.SiLU(inplace=True),
                          nn.Conv2d(8, 8, 3), nn.SiLU(inplace=True), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
    calib = [(torch.randn(4, 3, 10, 10),) for _ in range(2)]
    qm = qgraph.quantize(model, calib[0], "w8a8(bias_correction=False)", calib_data=calib)
    rows = {r["module"]: r["sqnr_db"] for r in qm.summary_rows(torch.randn(4, 3, 10, 10))}
    assert rows["0"] > 30 and rows["3"] > 25, rows  # SiLU(conv) vs conv would read ~5 dB


class _CrossAttention(torch.nn.Module):
    """A cross-attention ``nn.MultiheadAttention`` (kept as a module, weight-only) returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.attn, self.fc = torch.nn.MultiheadAttention(16, 2, batch_first=True), torch.nn.Linear(16, 4)

    def forward(self, q, kv):
        return self.fc(self.attn(q, kv, kv)[0])


def test_report_measures_a_layer_that_returns_a_tuple():
    """It raised KeyError on the attention module's node (its output is (values, weights))."""
    torch.manual_seed(0)
    model = _CrossAttention().eval()
    data = [(torch.randn(4, 5, 16), torch.randn(4, 7, 16)) for _ in range(3)]
    qm = qgraph.quantize(model, data[0], "w8a8", data[1:])
    rep = qm.report(data[:2])
    attn = next(ly for ly in rep.layers if ly["module"] == "attn")
    assert math.isfinite(attn["cumulative"]["sqnr_db"]) and attn["cumulative"]["sqnr_db"] > 20


def test_report_of_a_half_precision_model_casts_its_data_as_the_model_does():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).to(torch.bfloat16).eval()
    data = [torch.randn(2, 3, 32, 32).to(torch.bfloat16) for _ in range(3)]
    qm = qgraph.quantize(model, data[0], "w8a8", data[1:])
    rep = qm.report(data[:1])  # bfloat16 batches: the float32 graph used to raise a dtype mismatch in conv1
    assert len(rep.layers) == len(qm.summary_rows()) and rep.data["model"]["output"]["sqnr_db"] > 15


class _Bags(torch.nn.Module):
    """An embedding bag with offsets, captured by torch.export (symbolic tracing refuses the check)."""

    def __init__(self) -> None:
        super().__init__()
        self.bag, self.fc = torch.nn.EmbeddingBag(20, 8, mode="sum"), torch.nn.Linear(8, 3)

    def forward(self, ids, offsets):
        if ids.shape[0] % 2:
            raise ValueError("ids come in pairs")
        return self.fc(self.bag(ids, offsets))


def test_report_json_of_a_torch_export_graph_with_symbolic_shapes():
    """Nodes that canonicalize adds to a torch.export graph (the bag's lookup) carry only the exporter's
    ``val``, whose first dim is symbolic: ``to_json`` failed ("Object of type SymInt is not JSON
    serializable", DLRM). Symbolic dims are written as their names."""
    import json

    g = torch.Generator().manual_seed(0)

    def make():
        return torch.randint(0, 20, (12,), generator=g), torch.tensor([0, 3, 7, 9])

    qm = qgraph.quantize(_Bags().eval(), make(), "w8a8", [make() for _ in range(2)])
    assert qm.qgraph.capture.route == "torch.export"
    data = json.loads(qm.report([make()]).to_json())
    shapes = [n["shape"] for n in data["graph"]["nodes"] if n["shape"]]
    assert ["s" in str(d) for s in shapes for d in s if isinstance(d, str)] == [True]  # the lookup's symbolic dim, by name
