"""A fast subset of the model zoo (``benchmarks/zoo.py``) plus the op coverage it relies on:
``nn.MultiheadAttention`` (rewritten into graph ops, or wrapped), embeddings (int8 weight-only, per
row), transformer residual streams kept float, and what stays float inside a leaf."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from torch import nn

import qgraph
from benchmarks import zoo as zoo_bench
from benchmarks.zoo_worker import run_model
from qgraph.wrappers import QuantizedMultiheadAttention

SUBSET = ["custom/unetish", "custom/mha_encoder", "hf/bert"]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Each subset model run once through the zoo benchmark (w8a8, no peers): name -> (row, dir)."""
    out = {}
    for name in SUBSET:
        d = tmp_path_factory.mktemp(name.replace("/", "_"))
        run_model(name, "w8a8", str(d), str(d / "row.json"), peers=False)
        out[name] = (json.loads((d / "row.json").read_text()), d)
    return out


@pytest.mark.parametrize("name", SUBSET)
def test_zoo_model_passes_and_every_weight_is_quantized(rows, name):
    row, _ = rows[name]
    ok, why = zoo_bench.passes(row, "qgraph")
    assert ok, f"{name}: {why}"
    r = row["qgraph"]["w8a8"]
    assert r["export_ok"] and r["ort_max_err"] <= r["tolerance"]
    assert r["weights_quantized"] == r["weights_total"] > 0, r


def test_embedding_tables_are_int8_rows_gathered_after_dequantize(rows):
    row, d = rows["hf/bert"]
    assert row["qgraph"]["w8a8"]["route"] == "torch.export"
    m = onnx.load(str(d / "hf__bert_w8a8.onnx"))
    producer = {o: n for n in m.graph.node for o in n.output}
    gathers = [n for n in m.graph.node if n.op_type == "Gather" and producer.get(n.input[0]) is not None
               and producer[n.input[0]].op_type == "DequantizeLinear"]
    assert len(gathers) >= 2  # word and position embeddings (token types too)
    inits = {t.name: t for t in m.graph.initializer}
    tables = [inits[producer[g.input[0]].input[0]] for g in gathers if producer[g.input[0]].input[0] in inits]
    assert tables and all(t.data_type == onnx.TensorProto.INT8 for t in tables)


def _mha_block():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln = nn.LayerNorm(32)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.ln2 = nn.LayerNorm(32)
            self.fc = nn.Linear(32, 32)

        def forward(self, x):  # a pre-norm block: the residual stream feeds only LayerNorms and adds
            h = self.ln(x)
            x = x + self.attn(h, h, h)[0]
            return x + self.fc(self.ln2(x))

    torch.manual_seed(0)
    return Block().eval(), torch.randn(4, 6, 32)


def test_self_attention_becomes_linears_and_sdpa_and_residual_adds_stay_float():
    model, x = _mha_block()
    qm = qgraph.quantize(model, x, "w8a8")
    ops = {(r["op"], r["module"]) for r in qm.summary_rows()}
    assert ("linear", "attn") in ops and ("linear", "attn.out_proj") in ops  # in_proj_weight, out_proj.weight
    assert ("matmul", "attn") in ops  # scaled_dot_product_attention: q, k, v quantized
    assert not any(op == "add" for op, _ in ops)  # the residual stream only feeds LayerNorm / the output
    assert any(c.action == "kept float" and "add" in c.detail for c in qm.changes)
    with torch.no_grad():
        err = (qm(x) - model(x)).abs().max().item()
    assert 0 < err < 0.05


class _Cross(nn.Module):
    """Attention of queries over another sequence, as decoders and DETR/Perceiver-style heads call it."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        kdim = 24 if how == "kdim" else None
        self.attn = nn.MultiheadAttention(32, 4, kdim=kdim, vdim=kdim, batch_first=how != "memory")
        self.fc = nn.Linear(32, 8)

    def forward(self, q, kv, keep):  # keep: [N, S] 1 for tokens, 0 for padding
        if self.how == "memory":  # sequence-first, key = value = the encoder's output, padded
            return self.fc(self.attn(q.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), key_padding_mask=keep == 0)[0])
        if self.how == "twice":  # one module attending over two sequences: its two calls share the packed weights
            return self.fc(self.attn(q, kv, kv)[0] + self.attn(q, q, q)[0])
        if self.how == "weights":  # the attention weights are used: this call stays whole, and so does the other
            o, w = self.attn(q, kv, kv)
            return self.fc(o + self.attn(q, q, q)[0]) + w.mean(-1).unsqueeze(-1)
        if self.how == "separate":  # values differ from keys
            return self.fc(self.attn(q, kv, kv.flip(1))[0])
        return self.fc(self.attn(q, kv, kv)[0])


@pytest.mark.parametrize("how, projections", [("memory", "q and kv"), ("separate", "q, k and v"), ("kdim", "q, k and v"),
                                             ("twice", "q and kv")])
def test_cross_attention_becomes_linears_and_sdpa(how, projections, tmp_path):
    torch.manual_seed(0)
    model = _Cross(how).eval()
    width = 24 if how == "kdim" else 32
    keep = torch.ones(2, 7, dtype=torch.long)
    keep[1, 5:] = 0
    args = (torch.randn(2, 5, 32), torch.randn(2, 7, width), keep)
    qm = qgraph.quantize(model, args, "w8a8", [(torch.randn(2, 5, 32), torch.randn(2, 7, width), keep) for _ in range(2)])
    assert not any(n.op == "call_module" and n.target == "attn" for n in qm._float_graph.graph.nodes)
    assert any("cross-attention" in c.detail or "separate key and value" in c.detail for c in qm.changes
               if projections in c.detail)
    ops = {(r["op"], r["module"]) for r in qm.summary_rows()}
    assert ("matmul", "attn") in ops  # the attention's q, k and v are quantized, not only the weights
    weights = sorted(n for n, q in qm.quantizers().items() if q.role == "weight")
    # q and kv (or q, k, v), out_proj, fc; a module also called as self-attention keeps its packed in_proj for that
    assert len(weights) == {"memory": 4, "twice": 5}.get(how, 5), weights
    assert all(qm.quantizers()[n].initialized for n in weights)
    with torch.no_grad():
        want = model(*args)
        assert torch.allclose(qm._float_graph(*args), want, atol=1e-5)  # the rewrite itself is exact
        with qm.frozen():
            got = qm(*args)
    assert 10 * torch.log10(want.pow(2).mean() / (got - want).pow(2).mean()) > 20  # 24.5 to 34 dB here
    res = qm.export(str(tmp_path / "cross"), formats=("onnx", "qpack"))
    assert res.max_abs_error <= res.tolerance
    again = qgraph.load(str(tmp_path / "cross.qpack"), model, args)  # the split projections are restored by name
    with torch.no_grad(), again.frozen():
        torch.testing.assert_close(again(*args), got, rtol=0, atol=0)


def test_attention_whose_weights_are_used_is_wrapped_with_weight_quantizers(tmp_path):
    """Every call of the module stays whole: the wrapper owns the packed projections (its other call,
    a self-attention, used to be rewritten to read them and failed once the module was wrapped)."""
    torch.manual_seed(0)
    model = _Cross("weights").eval()
    args = (torch.randn(2, 5, 32), torch.randn(2, 7, 32), torch.ones(2, 7, dtype=torch.long))
    qm = qgraph.quantize(model, args, "w8a8")
    assert isinstance(qm.qgraph.get_submodule("attn"), QuantizedMultiheadAttention)
    wq = [q for q in qm.quantizers().values() if q.role == "weight"]
    assert len(wq) == 3 and all(q.initialized for q in wq)
    res = qm.export(str(tmp_path / "weights"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance


class _ValueGate(nn.Module):
    """Control flow on a tensor value: no tracer captures it whole, so it stays a leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        if x.abs().sum() > 0:  # true for the data here; no tracer can know that
            t = self.proj(x).unsqueeze(1)
            return self.norm(x + self.attn(t, t, t)[0].squeeze(1))
        return self.proj(x)


class _ValueNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.gate = _ValueGate()
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.gate(self.inp(x)))


def test_leaf_report_names_what_stayed_float():
    torch.manual_seed(0)
    model, x = _ValueNet().eval(), torch.randn(6, 8)
    qm = qgraph.quantize(model, x, "w8a8")
    cap = qm.qgraph.capture
    assert cap.route == "symbolic_trace" and list(cap.leaves) == ["gate"]
    assert any("torch.export could not capture" in n for n in cap.notes)
    note = next(n for n in cap.notes if n.startswith("leaf gate ("))
    assert "proj" in note and "attn" in note and "norm (LayerNorm)" in note and "stayed float" in note
    assert note in qm.summary()
    assert any(c.action == "kept float" and c.module_path == "gate" for c in qm.changes)
    assert isinstance(qm.qgraph.get_submodule("gate.attn"), QuantizedMultiheadAttention)
    assert all(q.initialized for q in qm.quantizers().values())
    with torch.no_grad():
        assert (qm(x) - model(x)).abs().max().item() < 0.05


def test_transformer_encoder_is_traced_into():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

        def forward(self, x):
            return self.encoder(x)

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(3, 5, 32)
    qm = qgraph.quantize(model, x, "w8a8")
    assert qm.qgraph.capture.route == "symbolic_trace" and not qm.qgraph.capture.leaves
    assert sum(q.role == "weight" for q in qm.quantizers().values()) == 2 * 4  # in_proj, out_proj, linear1, linear2


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.Dropout(0.5)).eval()


def _make(seed):
    return (torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(seed)) * 3 + 1,)


@pytest.mark.parametrize("mode", ["mean", "full", "none"])
def test_bn_warmup_modes(mode):
    """mean: every BatchNorm input is centred on the data, variances stay 1; full: unit-variance outputs;
    none: PyTorch's initial statistics. The model ends in eval mode, BatchNorm momentum restored."""
    from benchmarks.zoo_models import WARMUP_SEED, bn_warmup

    model = _bn_net()
    assert bn_warmup(model, _make, mode) == (0 if mode == "none" else 2)
    assert not any(m.training for m in model.modules()) and all(m.momentum == 0.1 for m in model if isinstance(m, nn.BatchNorm2d))
    seen = {}
    hooks = [m.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, (a[0], o))) for i, m in enumerate(model) if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(torch.cat([_make(WARMUP_SEED + i)[0] for i in range(4)]))  # the warm-up data itself
    for h in hooks:
        h.remove()
    for i, (inp, out) in seen.items():
        bn = model[i]
        mean = inp.mean((0, 2, 3))
        if mode == "none":
            assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.running_var, torch.ones(8))
        elif mode == "mean":
            assert torch.allclose(bn.running_mean, mean, atol=0.02) and torch.equal(bn.running_var, torch.ones(8))
        else:
            assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(8), atol=0.01)
            assert torch.allclose(out.var((0, 2, 3)), torch.ones(8), atol=0.05)


def test_rounding_drift_reaches_the_output_through_rounding_ties():
    """Float noise at every activation quantizer's input flips codes at ties; the flips reach the output."""
    from qgraph.export_tolerance import rounding_drift

    model, x = _mha_block()
    qm = qgraph.quantize(model, x, "w8a8")
    assert rounding_drift(qm, (x,), eps=0.0) == 0.0
    assert 0 < rounding_drift(qm, (x,), eps=1e-3) < 0.05


def test_zoo_fidelity_of_several_outputs_is_the_worst_outputs():
    """A detection backbone returns five feature maps: the zoo judges the worst of them, not the first."""
    from benchmarks.zoo_worker import fidelity

    g = torch.Generator().manual_seed(0)
    ref = [torch.randn(64, 32, generator=g), torch.randn(64, 16, 3, generator=g)]
    noisy = [r + s * torch.randn(r.shape, generator=g) for r, s in zip(ref, (1e-3, 1e-1))]  # ~60 dB, ~20 dB
    r = fidelity(ref, noisy, "features")
    assert r["outputs"] == 2 and abs(r["sqnr_db"] - 20) < 1.5 and abs(r["sqnr_varying_db"] - 20) < 1.5
    assert abs(fidelity(ref[0], noisy[0], "features")["sqnr_db"] - 60) < 1.5  # one tensor: as before
    assert fidelity(ref, noisy[:1], "features")["error"] == "1 output(s) where the float model has 2"
    assert "output 1 shape (64, 48)" in fidelity(ref, [noisy[0], noisy[1].reshape(64, 48)], "features")["error"]


def test_scan_rows_carry_the_zoos_verdict(rows):
    """The scans (hf_scan, timm_scan) print the zoo's verdict: a real row passes, a failed export or a
    low top-1 fails, and near-constant outputs are judged by SQNR whatever their top-1."""
    import copy

    from benchmarks.scan_runner import line

    row, _ = rows["custom/unetish"]
    assert "| pass |" in line("unetish", row, 1.0)
    broken = copy.deepcopy(row)
    broken["qgraph"]["w8a8"].update(export_ok=False, export_error="ExportMismatchError: max abs error 1")
    assert "| FAIL: export |" in line("unetish", broken, 1.0)
    low = copy.deepcopy(row)
    low["task"], low["fp"]["degenerate"] = "cls", False
    low["qgraph"]["w8a8"].update(top1=0.5, sqnr_db=30.0)
    assert "FAIL: top-1 50.0%" in line("unetish", low, 1.0)
    low["fp"]["degenerate"] = True
    assert "50.0% (near-const.) | pass |" in line("unetish", low, 1.0)
    low["qgraph"]["w8a8"]["sqnr_db"] = 10.0
    assert "FAIL: near-constant float outputs: judged by SQNR 10.0 dB" in line("unetish", low, 1.0)


def test_usage_scan_cases_run_end_to_end(tmp_path):
    """Two cases of benchmarks/usage_scan.py (chunk along the batch, an LSTM): quantize, export, verify,
    and the dynamic-batch file agrees with the quantized model at batch 3."""
    from benchmarks.usage_scan import run_case

    for name in ("chunk", "lstm"):
        row = run_case(name, str(tmp_path))
        assert row["export"].startswith("ok") and row["batch3"].startswith("ok"), row
        assert row["sqnr_db"] > 20, row
    assert row["weights"] == 4 and not row["notes"], row  # the LSTM's two weight matrices are quantized too


class _MaskedSelfAttention(nn.Module):
    """Self-attention called with each way ``nn.MultiheadAttention`` takes masks."""

    def __init__(self, how: str, batch_first: bool = True) -> None:
        super().__init__()
        self.how, self.batch_first = how, batch_first
        self.attn = nn.MultiheadAttention(16, 2, batch_first=batch_first)
        self.register_buffer("causal", torch.ones(6, 6, dtype=torch.bool).triu(1))  # True = masked out

    def forward(self, x, keep):  # keep: [N, S] 1 for tokens, 0 for padding
        h = x if self.batch_first else x.transpose(0, 1)
        causal, pad = self.causal, keep == 0
        if self.how == "padding":
            return self.attn(h, h, h, key_padding_mask=pad)[0]
        if self.how == "float_mask":
            return self.attn(h, h, h, attn_mask=causal.float() * -1e4)[0]
        if self.how == "per_head":  # [N * heads, L, S] bool, plus a float padding mask
            per_head = (pad[:, None, :] | causal).repeat_interleave(2, dim=0)
            return self.attn(h, h, h, attn_mask=per_head, key_padding_mask=pad.float() * -1e4)[0]
        return self.attn(h, h, h, attn_mask=causal, is_causal=True, need_weights=False)[0]  # "causal" (a decoder's)


@pytest.mark.parametrize("how, batch_first", [("padding", True), ("float_mask", False), ("per_head", True), ("causal", False)])
def test_masked_self_attention_becomes_linears_and_sdpa_with_the_same_mask(how, batch_first, tmp_path):
    from qgraph.passes.canonicalize import CanonicalizePass

    from qgraph.capture import trace

    torch.manual_seed(0)
    model = _MaskedSelfAttention(how, batch_first).eval()
    keep = torch.ones(4, 6, dtype=torch.long)
    keep[1, 4:] = keep[2, 5:] = 0
    x = torch.randn(4, 6, 16)
    with torch.no_grad():
        ref = model(x, keep)
    gm = trace(model, (x, keep))
    assert gm.capture.route == "symbolic_trace"
    p = CanonicalizePass()
    p.run(gm)
    assert not any(n.op == "call_module" for n in gm.graph.nodes)  # the attention module call is gone
    assert any("MultiheadAttention" in c.detail for c in p.changes)
    with torch.no_grad():  # the rewritten float graph computes what the module did, masks included
        torch.testing.assert_close(gm(x, keep), ref, rtol=1e-5, atol=1e-5)
    qm = qgraph.quantize(model, (x, keep), "w8a8")
    assert ("matmul", "attn") in {(r["op"], r["module"]) for r in qm.summary_rows()}  # q, k, v quantized
    res = qm.export(str(tmp_path / how), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance


def test_nn_transformer_is_traced_into_and_every_weight_quantized(tmp_path, capsys):
    """fx keeps torch.nn modules whole: ``nn.Transformer`` and its decoder were one float leaf call."""
    from benchmarks.usage_models import CausalTransformer

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = CausalTransformer().eval()  # embedding, nn.Transformer with a causal target mask, head
    data = [(torch.randint(0, 30, (4, 9), generator=g), torch.randint(0, 30, (4, 7), generator=g)) for _ in range(3)]
    qm = qgraph.quantize(model, data[0], "w8a8", data[1:])
    assert qm.qgraph.capture.route == "symbolic_trace" and not qm.qgraph.capture.leaves
    weights = {n for n, q in qm.quantizers().items() if q.role == "weight"}
    # embedding, head; encoder: in/out projection, two linears; decoder: self-attention, cross-attention
    # (q, kv and out projections), two linears
    assert len(weights) == 13, sorted(weights)
    assert any(n.startswith("t.decoder.layers.0.linear1") for n in weights)
    with torch.no_grad(), qm.frozen():
        want, got = model(*data[0]), qm(*data[0])
    assert 10 * torch.log10(want.pow(2).mean() / (got - want).pow(2).mean()) > 25
    res = qm.export(str(tmp_path / "t"), formats=("onnx",))
    assert res.max_abs_error <= res.tolerance
    # the export's batch probes (source and target batches are tied by the cross-attention) fail quietly:
    # torch.fx printed each failing graph line to stderr
    assert "FX-traced" not in capsys.readouterr().err
