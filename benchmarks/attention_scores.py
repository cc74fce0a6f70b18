"""Attention scores in int8: qgraph's w8a8 files with and without rule 16, side by side.

The dynamo exporter writes ``scaled_dot_product_attention`` as ``MatMul(q·√s, kᵀ·√s)``; rule 16
(``qgraph.backends.onnx_attention_scale``) moves the scale after the MatMul so that ONNX Runtime fuses
the scores with q's and k's DequantizeLinear into ``MatMulIntegerToFloat`` instead of a float
``FusedMatMul``. Per model, one process: the FP32 ONNX file, and one quantized PyTorch model exported
twice, once as shipped and once with rule 16 switched off. Cells: median latency as a ratio to FP32
ONNX (one thread, interleaved rounds, ONNX Runtime's exact int8 mode where the CPU lacks VNNI, as
qgraph's export check runs), the number of float score MatMuls ONNX Runtime left (``FusedMatMul``),
and the max abs error against the quantized PyTorch model as a fraction of the output range.

    PYTHONPATH=. .venv/bin/python benchmarks/attention_scores.py [--models vit_tiny,bert128,bert512] [--runs 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from unittest import mock

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)

from benchmarks import common, zoo_worker  # noqa: E402
from benchmarks.int8_kernels import _error, _first  # noqa: E402


def _models() -> dict:
    def bert(length: int):
        def build():
            from transformers import BertConfig, BertModel

            cfg = BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                             intermediate_size=1024, max_position_embeddings=max(512, length))
            torch.manual_seed(0)
            return BertModel(cfg).eval(), lambda g: (torch.randint(0, 1000, (1, length), generator=g),)
        return build

    def vit_tiny():
        import timm

        torch.manual_seed(0)
        return (timm.create_model("vit_tiny_patch16_224", pretrained=False).eval(),
                lambda g: (torch.randn(1, 3, 224, 224, generator=g),))

    return {"vit_tiny": vit_tiny, "bert128": bert(128), "bert512": bert(512)}


def run_model(name: str, build, runs: int, tmp: str) -> dict:
    from qgraph.backends import onnx_runtime_rules
    from qgraph.backends import ort as ort_backend

    import qgraph

    model, make = build()
    g = torch.Generator().manual_seed(1)
    x, calib = make(g), [make(g) for _ in range(8)]
    qm = qgraph.quantize(model, x, "w8a8", calib_data=calib)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the default-options warning is not what this measures
        with_rule = qm.export(os.path.join(tmp, f"{name}_rule16"), formats="onnx", dynamic_batch=False)
        with mock.patch.object(onnx_runtime_rules, "scale_after_attention_matmul", lambda *a: 0):
            without = qm.export(os.path.join(tmp, f"{name}_no_rule16"), formats="onnx", dynamic_batch=False)
    with torch.no_grad(), qm.frozen():
        want = _first(qm(*x))
    fp32 = os.path.join(tmp, f"{name}_fp32.onnx")
    zoo_worker.fp32_export(model, x, fp32)
    paths = {"fp32": fp32, "without rule 16": without.onnx_path, "with rule 16": with_rule.onnx_path}
    sessions = {k: ort_backend.session(p, exact_int8=True) for k, p in paths.items()}
    ms = common.interleaved_median_ms({k: common.ort_runner(s, *x) for k, s in sessions.items()}, runs)
    row = {"model": name, "fp32_ms": ms["fp32"]}
    for k in ("without rule 16", "with rule 16"):
        err = _error(ort_backend.run(sessions[k], x)[0], want)
        fused = common.optimized_op_counts(paths[k])["FusedMatMul"]
        row[k] = (ms[k] / ms["fp32"], fused, err)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit_tiny,bert128,bert512")
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args(argv)
    common.single_thread()
    print(common.machine_info() + "\n")
    builds = _models()
    cols = ["without rule 16", "with rule 16"]
    print("| model | FP32 ms | " + " | ".join(cols) + " | with / without |")
    print("| --- | --- | " + " | ".join("---" for _ in cols) + " | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            r = run_model(name, builds[name], args.runs, tmp)
            cells = [f"{r[c][0]:.2f}x / {r[c][1]} FusedMatMul / {r[c][2]:.1e}" for c in cols]
            print(f"| {name} | {r['fp32_ms']:.2f} | " + " | ".join(cells)
                  + f" | {r['with rule 16'][0] / r['without rule 16'][0]:.2f} |", flush=True)
    print("\ncells: latency / FP32 ONNX latency, float score MatMuls left by ONNX Runtime, max abs error / "
          "output range against the quantized PyTorch model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
