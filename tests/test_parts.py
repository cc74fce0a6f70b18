"""Models whose own ``forward`` no route captures (a detector's loop over its images, a data-dependent
branch): the ``CaptureError`` names the parts that do capture, and ``quantize_parts`` quantizes them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qgraph
from qgraph.summary import sqnr_db


class LoopingDetector(nn.Module):
    """Images as a list, each through the backbone in a Python loop; a branch on the scores' values."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 4)
        self.register_buffer("anchor", torch.ones(4))  # no weights: not a part

    def forward(self, images: list[torch.Tensor]):
        feats = torch.cat([self.backbone(img[None]).mean((2, 3)) for img in images])
        scores = self.head(feats)
        if bool((scores[:, 0] > 0).any()):  # data-dependent: torch.export cannot guard on it
            return scores * self.anchor
        return scores - self.anchor


def _images(g: torch.Generator, n: int = 3) -> tuple:
    return ([torch.randn(3, 12, 12, generator=g) for _ in range(n)],)


@pytest.fixture()
def detector():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return LoopingDetector().eval(), _images(g), [_images(g) for _ in range(4)], _images(g)


def test_the_capture_error_names_the_parts_that_capture(detector):
    model, example, _, _ = detector
    with pytest.raises(qgraph.CaptureError) as e:
        qgraph.quantize(model, example, "w8a8")
    text = str(e.value)
    assert "no capture route handles LoopingDetector" in text
    assert "These parts capture on their own (100% of the model's 1,432 weights)" in text
    assert "model.backbone(Tensor[1, 3, 12, 12]): 1,368 weights" in text and "model.head(Tensor[3, 16]): 64 weights" in text
    assert "qgraph.quantize_parts(model, example_inputs, recipe, calib_data)" in text


def test_quantize_parts_quantizes_each_part_and_exports_it(detector, tmp_path):
    model, example, calib, held_out = detector
    qp = qgraph.quantize_parts(model, example, "w8a8", calib)
    assert list(qp.parts) == ["backbone", "head"] and not qp.failed and not qp.float_layers
    assert isinstance(model.backbone, nn.Sequential)  # the user's model is untouched
    assert isinstance(qp.model.backbone, qgraph.QModel)
    # the backbone calibrated on every image of every batch (12 calls), the head once per batch
    calibrated = {path: {c.detail.rsplit(" from ", 1)[-1] for c in qm.changes if c.action == "calibrated"} for path, qm in qp.parts.items()}
    assert calibrated == {"backbone": {"12 batches"}, "head": {"4 batches"}}
    with torch.no_grad(), qp.frozen():
        got, want = qp(*held_out), model(*held_out)
    assert sqnr_db(want, got) > 25
    summary = qp.summary()
    assert "2 quantized part(s) of LoopingDetector (recipe w8a8)" in summary and "the model's own code" in summary
    results = qp.export(str(tmp_path), formats=("onnx", "qpack"))
    assert sorted(results) == ["backbone", "head"]
    for r in results.values():
        assert r.max_abs_error <= r.tolerance and r.qpack_path
    assert (tmp_path / "backbone.onnx").exists() and (tmp_path / "head.qpack").exists()


def test_quantize_parts_refuses_a_model_with_no_capturable_part():
    class Weightless(nn.Module):
        def forward(self, xs):
            return torch.stack([x * 2 for x in xs]) if bool(xs[0].sum() > 0) else xs[0]

    with pytest.raises(qgraph.CaptureError, match="no part of Weightless with weights captures"):
        qgraph.quantize_parts(Weightless(), ([torch.randn(2), torch.randn(2)],))


def test_quantize_parts_takes_skip_and_overrides_by_the_whole_models_paths(detector, tmp_path):
    model, example, calib, _ = detector
    qp = qgraph.quantize_parts(model, example, "w8a8", calib, skip=["backbone.2"],
                               overrides=[qgraph.Override(name="head", weight=qgraph.QSpec(bits=4, granularity=qgraph.PerChannel(0)))])
    weights = {path: {n: q.spec.bits for n, q in qm.quantizers().items() if q.role == "weight"} for path, qm in qp.parts.items()}
    assert len(weights["backbone"]) == 1  # the first conv; backbone.2 stays float
    assert [bits for bits in weights["head"].values()] == [4]
    # the part's recipe names its own paths, so its qpack loads onto the part alone
    qp.parts["backbone"].export(str(tmp_path / "backbone"), formats=("qpack",))
    loaded = qgraph.load(str(tmp_path / "backbone.qpack"), model.backbone)
    assert sum(q.role == "weight" for q in loaded.quantizers().values()) == 1
    # a part whose every op is skipped stays float
    qp = qgraph.quantize_parts(model, example, "w8a8", calib, skip="head")
    assert list(qp.parts) == ["backbone"] and "every op skipped" in qp.failed["head"]
    # a typo is an error naming the close paths, as for quantize
    with pytest.raises(qgraph.RecipeError, match=r"skip 'backbone\.3' matches none of the model's .*close module paths: backbone\.2"):
        qgraph.quantize_parts(model, example, "w8a8", calib, skip=["backbone.3"])


def test_quantize_parts_keeps_pruning_masks(detector):
    """A pruned detector: the part with the pruned conv keeps its mask in the graph, as ``quantize`` does."""
    from torch.nn.utils import prune

    model, example, calib, held_out = detector
    prune.l1_unstructured(model.backbone[2], "weight", amount=0.5)
    qp = qgraph.quantize_parts(model, example, "w8a8", calib)
    assert any(c.pass_name == "prune_masks" and c.action == "masked" and c.module_path == "2" for c in qp.parts["backbone"].changes)
    (mask,) = [m for m in qp.parts["backbone"].qgraph.modules() if type(m).__name__ == "SparseMask"]
    assert torch.equal(mask.mask, model.backbone[2].weight_mask.bool())
    with torch.no_grad(), qp.frozen():
        assert sqnr_db(model(*held_out), qp(*held_out)) > 25
