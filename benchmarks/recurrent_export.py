"""Recurrent language models in ONNX: qgraph's w8a8 file against torch.onnx's float export of the same model.

    PYTHONPATH=. .venv/bin/python benchmarks/recurrent_export.py [--tokens 35] [--batch 20]

word_language_model's RNNModel shape (sequence-first ``[T, N]`` ids, an ``(h, c)`` state in and out;
2 layers of 200, 1,000 tokens), random weights. Per tool, measured in this run, one thread: export
seconds, ONNX nodes and bytes, ONNX Runtime median latency on the example, and whether the file runs
at another length and batch (T=50, N=7) and agrees there with the model it came from (max abs error).
torch.onnx's dynamo exporter gets the dynamic shapes it accepts (``Dim.AUTO`` on every dim that can
vary). Ratios are qgraph / torch.onnx.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import qgraph


class WordLM(nn.Module):
    def __init__(self, tokens: int = 1000, dim: int = 200, layers: int = 2) -> None:
        super().__init__()
        self.emb, self.rnn, self.dec = nn.Embedding(tokens, dim), nn.LSTM(dim, dim, layers), nn.Linear(dim, tokens)

    def forward(self, ids, hidden):
        out, hidden = self.rnn(self.emb(ids), hidden)
        return self.dec(out), hidden


def _inputs(t: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1000, (t, n), generator=g), (torch.randn(2, n, 200, generator=g), torch.randn(2, n, 200, generator=g))


def _feed(sess, x) -> dict:
    flat = [x[0], *x[1]]
    return {i.name: v.numpy() for i, v in zip(sess.get_inputs(), flat)}


def _measure(path: str, reference, example, other) -> dict:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = _feed(sess, example)
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    try:
        got = sess.run(None, _feed(sess, other))
        with torch.no_grad():
            want = [reference(*other)[0], *reference(*other)[1]]
        other_cell = f"ok ({max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want)):.2g})"
    except Exception as e:  # noqa: BLE001 - a file that refuses other shapes
        other_cell = f"refused ({str(e).splitlines()[0][:60]})"
    model = onnx.load(path)
    return {"ms": float(np.median(times)) * 1e3, "nodes": len(model.graph.node), "bytes": os.path.getsize(path), "other": other_cell,
            "ops": ", ".join(f"{k} {v}" for k, v in collections.Counter(n.op_type for n in model.graph.node).most_common(3))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=35)
    ap.add_argument("--batch", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = WordLM().eval()
    example, other = _inputs(args.tokens, args.batch, 0), _inputs(50, 7, 9)
    qm = qgraph.quantize(model, example, "w8a8", calib_data=[_inputs(args.tokens, args.batch, s) for s in (1, 2)])
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        qm.export(os.path.join(tmp, "qgraph"), formats=("onnx",))
        seconds = time.perf_counter() - t0
        rows["qgraph w8a8 (export + check)"] = {"s": seconds, **_measure(os.path.join(tmp, "qgraph.onnx"), qm, example, other)}
        auto = torch.export.Dim.AUTO
        t0 = time.perf_counter()
        torch.onnx.export(model, example, os.path.join(tmp, "float.onnx"), dynamo=True, opset_version=21, external_data=False,
                          dynamic_shapes=({0: auto, 1: auto}, ({1: auto}, {1: auto})), verbose=False)
        seconds = time.perf_counter() - t0
        rows["torch.onnx float (dynamo)"] = {"s": seconds, **_measure(os.path.join(tmp, "float.onnx"), model, example, other)}
    print(f"word LM (LSTM 2x200, 1000 tokens), example T={args.tokens}, N={args.batch}; other shapes T=50, N=7\n")
    print("| tool | export s | ONNX nodes | top ops | ONNX KB | ORT ms | T=50, N=7 (max abs error) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['s']:.1f} | {r['nodes']} | {r['ops']} | {r['bytes'] / 1024:.0f} | {r['ms']:.2f} | {r['other']} |")
    q, f = rows.values()
    print(f"\nratios qgraph / torch.onnx: export time {q['s'] / f['s']:.2f}, ONNX bytes {q['bytes'] / f['bytes']:.2f}, "
          f"ORT latency {q['ms'] / f['ms']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
