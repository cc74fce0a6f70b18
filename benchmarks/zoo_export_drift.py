"""Why ONNX Runtime and the quantized PyTorch model differ on a zoo model: rounding ties, or a bug?

For one zoo model at ``w8a8`` (same build, warm-up and calibration as ``benchmarks/zoo.py``):

1. Output differences on the export check's inputs: qgraph vs ONNX Runtime with its QDQ fusion
   (integer kernels, what the export check runs), qgraph vs ONNX Runtime without graph
   optimizations (float ops between QuantizeLinear/DequantizeLinear), and the two ONNX Runtime
   runs against each other; against the export check's default tolerance and its two terms
   (``qgraph.export_tolerance``: 3 output steps + 1e-4 of the range; twice the rounding drift, the
   largest output change under relative 1e-6 noise at every activation quantizer), with the drift
   over ``--trials`` draws.
2. Layer by layer (unoptimized ONNX Runtime, every QuantizeLinear output read back; qgraph's
   activation quantizers in graph order): how many integer codes differ, by how much, and for the
   first layer that differs, how close qgraph's pre-rounding values of the differing codes are to a
   rounding tie (x / scale + zero_point at k + 0.5). Codes that differ by one step at ties, with
   identical upstream codes, are two correct implementations rounding float noise differently; a
   larger step or a difference far from a tie is a real mismatch.

    PYTHONPATH=. .venv/bin/python benchmarks/zoo_export_drift.py vgg16_bn resnet50 [--bn-warmup none]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import torch
from qgraph.backends import ort as ort_backend

from benchmarks.zoo_models import WARMUP_MODES, bn_warmup, zoo
from benchmarks.zoo_worker import CALIB_BATCHES
from qgraph.export_tolerance import DRIFT_TRIALS, export_tolerance, rounding_drift


def _session(path: str, optimize: bool) -> ort.InferenceSession:
    if optimize:  # the export check's session: fused integer kernels, exact on CPUs without VNNI
        return ort_backend.session(path, exact_int8=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _with_quantize_outputs(path: str, out: str) -> list[onnx.NodeProto]:
    """Copy of the ONNX file with every QuantizeLinear output as a graph output; returns those nodes."""
    m = onnx.load(path)
    nodes = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    have = {o.name for o in m.graph.output}
    for n in nodes:
        if n.output[0] not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n.output[0]))
    onnx.save(m, out)
    return nodes


def _initializer(m: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in m.graph.initializer:
        if t.name == name:
            return onnx.numpy_helper.to_array(t)
    return None


def analyse(name: str, warmup: str, trials: int, out_dir: str, eps: float) -> None:
    import qgraph
    from qgraph.quantizer import FakeQuantize

    e = zoo()[name]
    model, make = e.build()
    bn_warmup(model, make, warmup)
    x = make(0)
    calib = [make(1 + i) for i in range(CALIB_BATCHES)]
    qm = qgraph.quantize(model, x, "w8a8", calib_data=calib)
    path = os.path.join(out_dir, name.replace("/", "__"))
    qm.export(path, formats=("onnx",), verify=False, dynamic_batch=False)
    onnx_path = path + ".onnx"
    with torch.no_grad():
        ref = qm(*x).float().numpy()
    feeds = lambda s: {i.name: a.numpy() for i, a in zip(s.get_inputs(), x)}  # noqa: E731
    fused = _session(onnx_path, True).run(None, feeds(_session(onnx_path, True)))[0]
    plain_sess = _session(onnx_path, False)
    plain = plain_sess.run(None, feeds(plain_sess))[0]
    tol = export_tolerance(qm, x, torch.from_numpy(ref))
    div = _divergences(qm, x, trials, eps)
    print(f"\n## {name} (w8a8, BatchNorm warm-up {warmup}, outputs up to {np.abs(ref).max():.3g})")
    print(f"max |qgraph - ORT fused| {np.abs(ref - fused).max():.3g}; |qgraph - ORT unoptimized| {np.abs(ref - plain).max():.3g}; "
          f"|ORT fused - ORT unoptimized| {np.abs(fused - plain).max():.3g}")
    print(f"default tolerance {tol.value:.3g} (grid {tol.grid:.3g}, drift {tol.drift:.3g}); rounding drift (largest output change, relative noise {eps:g} at every quantizer), "
          f"max over the first {', '.join(map(str, div))} draws: " + ", ".join(f"{v:.3g}" for v in div.values()))
    print(f"top-1 qgraph vs ORT fused {float((ref.argmax(-1) == fused.argmax(-1)).mean()):.0%}")

    # layer by layer
    probe = os.path.join(out_dir, "probe.onnx")
    qnodes = _with_quantize_outputs(onnx_path, probe)
    probe_model = onnx.load(probe)
    sess = _session(probe, False)
    names = [o.name for o in sess.get_outputs()]
    ort_codes = dict(zip(names, sess.run(None, feeds(sess))))
    acts = [n.target for n in qm.qgraph.graph.nodes if n.op == "call_module"
            and isinstance(qm.qgraph.get_submodule(n.target), FakeQuantize) and qm.qgraph.get_submodule(n.target).role == "activation"]
    seen_in: dict[str, torch.Tensor] = {}
    hooks = [qm.qgraph.get_submodule(t).register_forward_hook(lambda m, a, o, t=t: seen_in.__setitem__(t, a[0].detach()))
             for t in acts]
    with torch.no_grad():
        qm(*x)
    for h in hooks:
        h.remove()
    if len(acts) != len(qnodes):
        print(f"{len(acts)} activation quantizers vs {len(qnodes)} QuantizeLinear nodes: no layer-by-layer match")
        return
    layers, first = [], None
    for t, n in zip(acts, qnodes):
        s, z = _initializer(probe_model, n.input[1]), _initializer(probe_model, n.input[2])
        got = ort_codes[n.output[0]].astype(np.int64)
        xin = seen_in[t].float().numpy()
        if s is None or xin.shape != got.shape:
            print(f"layer {t}: no match (shape {xin.shape} vs {got.shape})")
            return
        lo, hi = (0, 255) if got.dtype == np.uint8 or ort_codes[n.output[0]].dtype == np.uint8 else (-128, 127)
        v = xin / s.astype(np.float32) + (z.astype(np.float32) if z is not None else 0)
        mine = np.clip(np.round(v), lo, hi).astype(np.int64)
        d = np.abs(mine - got)
        layers.append((t, int((d > 0).sum()), int(d.max()), d.size))
        if first is None and d.any():
            frac = np.abs(v - np.floor(v) - 0.5)[d > 0]
            first = (t, frac, np.abs(v[d > 0]).max())
    differing = [r for r in layers if r[1]]
    print(f"{len(layers)} activation quantizers; {len(differing)} have codes that differ from ONNX Runtime's")
    if first is not None:
        t, frac, vmax = first
        print(f"first differing layer {t}: {len(frac)} codes differ, all by {max(r[2] for r in layers if r[0] == t)} step(s); "
              f"their distance to a rounding tie: max {frac.max():.2g} steps (values up to {vmax:.0f} steps: float32 resolution {vmax * 6e-8:.1g})")
    for t, n_diff, dmax, size in differing[:6] + (differing[-2:] if len(differing) > 8 else []):
        print(f"  {t}: {n_diff}/{size} codes differ, max {dmax} step(s)")


def _divergences(qm, x: tuple, trials: int, eps: float) -> dict[int, float]:
    """``qgraph.export_tolerance.rounding_drift`` over the first k draws, for k = 1, 4, ``DRIFT_TRIALS`` (the
    export check's count) and ``trials``."""
    with torch.no_grad(), qm.frozen():
        return {k: rounding_drift(qm, x, eps=eps, trials=k) for k in sorted({1, 4, DRIFT_TRIALS, trials})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--bn-warmup", default="mean", choices=WARMUP_MODES)
    ap.add_argument("--trials", type=int, default=32, help="draws for the drift's tail (the export check uses DRIFT_TRIALS)")
    ap.add_argument("--eps", type=float, default=1e-6, help="relative noise at every quantizer input (qgraph.export_tolerance.rounding_drift)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            analyse(name, args.bn_warmup, args.trials, d, args.eps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
