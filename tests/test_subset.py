"""DFSQ subset quantization: universal set, point selection, the quantized conv model and its export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qgraph
from qgraph.subset import (
    SubsetQuantize,
    codebook_sse,
    dequantize_codebook,
    exhaustive_select,
    kmeans_select,
    quantize_codebook,
    subset_quantizers,
    universal_set,
)


class TinySR(nn.Module):
    """head conv → 2 residual blocks (conv, ReLU, conv) → tail conv: the DFSQ layer pattern."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(nn.ModuleList([nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)]) for _ in range(2))
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        h = self.head(x)
        for a, b in self.blocks:
            h = h + b(torch.relu(a(h)))
        return self.tail(h)


def _model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = TinySR().eval()
    x = torch.rand(4, 3, 12, 12)
    return model, x


def _numpy_lookup(a: np.ndarray, cb: np.ndarray, post_relu: bool) -> np.ndarray:
    """DFSQ's activation quantizer written directly: normalise per sample and channel, nearest codebook point."""
    mu = np.zeros_like(a.mean(axis=(2, 3), keepdims=True)) if post_relu else a.mean(axis=(2, 3), keepdims=True)
    m = np.abs(a - mu).max(axis=(2, 3), keepdims=True) + 1e-8
    t = (a - mu) / m
    idx = np.abs(t[..., None] - cb[None, :, None, None, :]).argmin(-1)
    return (cb[np.arange(cb.shape[0])[None, :, None, None], idx] * m + mu).astype(np.float32)


def test_universal_set_has_the_papers_377_values_of_at_most_four_powers_of_two():
    u = universal_set()
    assert len(u) == 377 and len(universal_set(signed=False)) == 189
    assert u.min() == -1.0 and u.max() == 1.0 and 0.0 in u
    # each value times 4 is a sum of at most 4 powers of two (2^0 .. 2^-8)
    for v in np.abs(u) * 4:
        bits = np.binary_repr(int(round(float(v) * 2**8)))
        assert bits.count("1") <= 4 and abs(int(bits, 2) / 2**8 - v) < 1e-9


def test_fast_selection_is_close_to_exhaustive_on_a_small_set():
    rng = np.random.default_rng(0)
    small = universal_set(words=2)  # 2 words: a small universal set, exhaustive search is cheap
    for dist in (rng.laplace(0, 0.15, 4000), np.clip(rng.normal(0.2, 0.3, 4000), -1, 1)):
        values = np.clip(dist, -1, 1)
        fast = kmeans_select(values, 4, small)
        ref = exhaustive_select(values, 4, small)
        assert set(fast.tolist()) <= set(small.tolist()) and 0.0 in fast and 0.0 in ref
        assert codebook_sse(values, ref) <= codebook_sse(values, fast) <= 1.15 * codebook_sse(values, ref)


def test_exhaustive_search_refuses_a_huge_set():
    with pytest.raises(qgraph.InputError, match="kmeans_select"):
        exhaustive_select(np.zeros(10), 16, universal_set())


def test_subset_model_codebooks_are_universal_and_output_matches_numpy_lookup():
    model, x = _model_and_data()
    qm = qgraph.quantize(model, (x,), recipe="subset(bits=4)", calib_data=[x])
    qs = subset_quantizers(qm.qgraph)
    assert len(qs) == 4, sorted(qs)  # two convs per block; head and tail stay float
    assert sorted(q.post_relu for q in qs.values()) == [False, False, True, True]
    rows = {r["module"]: r["bits"] for r in qm.summary_rows()}
    assert rows == {"blocks.0.0": "w4a4", "blocks.0.1": "w4a4", "blocks.1.0": "w4a4", "blocks.1.1": "w4a4"}
    uni = set(universal_set().tolist())
    for q in qs.values():
        cb = q.codebook.numpy()
        assert cb.shape == (8, 16) and set(cb.ravel().tolist()) <= uni and (cb == 0).any(axis=1).all()
    # the model's output equals the same model with every subset quantizer replaced by a NumPy lookup
    q = next(q for q in qs.values() if not q.post_relu)
    inp = torch.randn(2, 8, 5, 5) * 3 + 1
    with torch.no_grad():
        np.testing.assert_allclose(q(inp).numpy(), _numpy_lookup(inp.numpy(), q.codebook.numpy(), False), rtol=0, atol=1e-5)
        out = qm(x)
        hooks = [m.register_forward_hook(lambda mod, args, _: torch.from_numpy(
            _numpy_lookup(args[0].numpy(), mod.codebook.numpy(), mod.post_relu))) for m in qs.values()]
        by_numpy = qm(x)
        for h in hooks:
            h.remove()
    torch.testing.assert_close(out, by_numpy, rtol=0, atol=1e-5)
    # the lookup is idempotent on normalised values already on the grid
    on_grid = q.codebook.reshape(1, 8, 16, 1)  # sample 0, channel c, every point of c's codebook
    assert torch.equal(dequantize_codebook(quantize_codebook(on_grid, q.codebook), q.codebook), on_grid)
    # the quantized model is close to float and not identical
    with torch.no_grad():
        ref, out = model(x), qm(x)
    err = float((ref - out).abs().max())
    assert 0 < err < 0.2 * float(ref.abs().max())


def test_subset_state_round_trips_through_state_dict():
    model, x = _model_and_data()
    qm = qgraph.quantize(model, (x,), recipe="subset(bits=3)", calib_data=[x])
    q2 = qgraph.prepare(model, (x,), recipe="subset(bits=3)")
    q2.load_state_dict(qm.state_dict())
    with torch.no_grad():
        assert torch.equal(q2(x), qm(x))


def test_subset_quantizer_rejects_wrong_channel_count():
    q = SubsetQuantize(2, post_relu=False, where="blk.conv")
    q.set_mode("observe")
    q(torch.randn(1, 3, 4, 4))
    q.finish_calibration()
    with pytest.raises(qgraph.InputError, match="blk.conv"):
        q(torch.randn(1, 5, 4, 4))


def test_subset_model_exports_to_onnx_as_index_gather_lookup_with_ort_parity(tmp_path):
    from tests.helpers import op_types

    model, x = _model_and_data()
    qm = qgraph.quantize(model, (x,), recipe="subset(bits=4)", calib_data=[x])
    result = qm.export(str(tmp_path / "sr"), tolerance=1e-4)  # raises ExportMismatchError if ORT disagrees
    assert result.max_abs_error <= 1e-4
    ops = op_types(tmp_path / "sr.onnx")
    assert ops["Gather"] == 4 and ops["ReduceMax"] == 4  # one codebook lookup and one max-abs per quantizer


def test_subset_qpack_stores_codebooks_as_indices_and_loads_to_identical_outputs(tmp_path):
    from qgraph.backends.qpack import read_qpack

    model, x = _model_and_data()
    qm = qgraph.quantize(model, (x,), recipe="subset(bits=4)", calib_data=[x])
    qm.export(str(tmp_path / "sr"), formats=("qpack",))
    pack = read_qpack(str(tmp_path / "sr.qpack"))
    books = {k: p for k, p in pack.packed.items() if k.endswith("input_quantizer.codebook")}
    assert len(books) == 4 and not any(k.endswith(".codebook") for k in pack.floats)
    uni = set(universal_set().tolist())
    for k, p in books.items():
        assert p.codes.shape == (8, 16) and set(p.codebook.tolist()) <= uni
        assert torch.equal(torch.from_numpy(p.codebook[p.codes.astype(np.int64)]), qm.qgraph.get_submodule(k[:-9]).codebook)
    fresh, _ = _model_and_data(seed=1)  # other float weights: everything must come from the file
    loaded = qgraph.load(str(tmp_path / "sr.qpack"), fresh, (x,))
    with torch.no_grad():
        assert torch.equal(loaded(x), qm(x))



class _SharedConvs(nn.Module):
    """``edge`` is the first conv and the last; ``mid`` is called twice in between; with ``reuse_first``
    the first conv's weight is also read by a conv in the middle."""

    def __init__(self, reuse_first: bool) -> None:
        super().__init__()
        self.reuse_first = reuse_first
        self.edge, self.mid = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.mid(torch.relu(self.edge(x))))
        h = h + F.conv2d(h, (self.edge if self.reuse_first else self.mid).weight, padding=1)
        return self.edge(h) if not self.reuse_first else self.mid(h)


@pytest.mark.parametrize("reuse_first", [False, True])
def test_keep_first_last_with_convs_that_share_weights(reuse_first, tmp_path):
    """It crashed inside torch.fx ("Tried to erase Node ... but it still had 1 users") when the first
    conv's weight quantizer also fed another conv."""
    torch.manual_seed(0)
    model, x = _SharedConvs(reuse_first).eval(), torch.randn(2, 8, 8, 8)
    qm = qgraph.quantize(model, x, "subset", [torch.randn(2, 8, 8, 8) for _ in range(2)])
    weights = {n for n, q in qm.quantizers().items() if q.role == "weight"}
    actions = {(c.action, c.module_path) for c in qm.changes if c.pass_name == "subset"}
    if reuse_first:  # the first conv shares its weight with a quantized conv: it reads it quantized
        assert weights == {"edge.weight_quantizer", "mid.weight_quantizer"} and ("kept quantized", "edge") in actions
    else:  # the first and the last conv are one weight: it stays float for both
        assert weights == {"mid.weight_quantizer"} and ("kept float", "edge") in actions
    res = qm.export(str(tmp_path / "shared"))
    back = qgraph.load(res.qpack_path, model)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(x), qm(x))


class _ReplicatePadded(nn.Module):
    """An SR-style stack whose middle conv pads by replication."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.tail = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)
        self.edge = nn.Conv2d(8, 8, 3, padding=1, padding_mode="replicate")
        self.body = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.tail(torch.relu(self.body(torch.relu(self.edge(torch.relu(self.head(x)))))))


def test_a_replicate_padded_conv_gets_its_subset_quantizer(tmp_path):
    """A replicate-padded conv is ``F.pad`` and a functional conv after canonicalize, so it gets its
    SubsetQuantize like any conv; the pad between it and the ReLU before it keeps ``post_relu`` (the
    values are still non-negative). It exports and loads back to the same model."""
    from qgraph.subset import SubsetQuantize

    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    qm = qgraph.quantize(_ReplicatePadded().eval(), x, "subset", [torch.rand(2, 3, 8, 8) for _ in range(2)])
    q = qm.qgraph.get_submodule("edge.input_quantizer")
    assert isinstance(q, SubsetQuantize) and q.post_relu
    assert any(c.pass_name == "subset" and c.action == "subset" and c.module_path == "edge" for c in qm.changes)
    res = qm.export(str(tmp_path / "rep"))
    assert res.max_abs_error <= res.tolerance
    back = qgraph.load(res.qpack_path, _ReplicatePadded().eval(), x)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(x), qm(x))
