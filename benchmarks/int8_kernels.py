"""Int8 files on this CPU: ONNX Runtime's default kernels, its exact mode, and uint8 weights; ORT's
``quantize_static`` the same way.

On x86 CPUs without VNNI, ONNX Runtime's default u8·s8 kernels saturate int16 pair sums
(``qgraph.backends.ort.session``, docs/architecture.md "Exact int8 kernels on CPUs without VNNI").
Per model, one process: FP32 ONNX; qgraph's w8a8 file (int8 weights) with default session options and
in exact mode (``session.x64quantprecision``); qgraph's file with ``uint8_weights=True`` with default
options; and ONNX Runtime's own ``quantize_static`` file (QDQ, per-channel, U8 activations / S8
weights) with default options and in exact mode. Each int8 column: median latency as a ratio to FP32
ONNX (batch 1 for the image nets, one thread, interleaved rounds) and the max abs error against
what the file encodes (qgraph: the quantized PyTorch model; ORT: its own file in exact mode), as a
fraction of the output range.

    PYTHONPATH=. .venv/bin/python benchmarks/int8_kernels.py [--models resnet18,mobilenet_v2,mlp,bert] [--runs 60]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)

from benchmarks import common, zoo_worker  # noqa: E402


def _models() -> dict:
    import torchvision
    from torch import nn

    def bert():
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
        torch.manual_seed(0)
        model = BertModel(cfg).eval()
        return model, lambda g: (torch.randint(0, 1000, (1, 64), generator=g),)

    def image(build):
        def make():
            torch.manual_seed(0)
            return build(num_classes=1000).eval(), lambda g: (torch.randn(1, 3, 224, 224, generator=g),)
        return make

    def mlp():
        torch.manual_seed(0)
        return (nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024)).eval(),
                lambda g: (torch.randn(32, 1024, generator=g),))

    return {"resnet18": image(torchvision.models.resnet18), "mobilenet_v2": image(torchvision.models.mobilenet_v2),
            "mlp": mlp, "bert": bert}


def _error(got: np.ndarray, want) -> float:
    want = np.asarray(want.detach().float().numpy() if isinstance(want, torch.Tensor) else want, dtype=np.float32)
    return float(np.abs(np.asarray(got, dtype=np.float32) - want).max() / max(float(np.abs(want).max()), 1e-30))


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out)


def run_model(name: str, build, runs: int, tmp: str) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from qgraph.backends import ort as ort_backend

    import qgraph

    model, make = build()
    g = torch.Generator().manual_seed(1)
    x, calib = make(g), [make(g) for _ in range(8)]
    qm = qgraph.quantize(model, x, "w8a8", calib_data=calib)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the check's warning about default options is what this measures
        s8 = qm.export(os.path.join(tmp, f"{name}_s8"), formats="onnx", dynamic_batch=False)
        u8 = qm.export(os.path.join(tmp, f"{name}_u8"), formats="onnx", dynamic_batch=False, uint8_weights=True)
    with torch.no_grad(), qm.frozen():
        want = _first(qm(*x))
    fp32 = os.path.join(tmp, f"{name}_fp32.onnx")
    zoo_worker.fp32_export(model, x, fp32)  # the zoo's ORT peer's export: TorchScript, else the dynamo exporter
    names = [i.name for i in common.ort_session(fp32).get_inputs()]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{n: t.numpy() for n, t in zip(names, b)} for b in calib])

        def get_next(self):
            return next(self._it, None)

    ort_qs = os.path.join(tmp, f"{name}_ort_qs.onnx")
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static logs advice to pre-process the file
    with contextlib.chdir(tmp):
        quantize_static(fp32, ort_qs, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    sessions = {
        "fp32": ort_backend.session(fp32),
        "qgraph s8, default": ort_backend.session(s8.onnx_path),
        "qgraph s8, exact": ort_backend.session(s8.onnx_path, exact_int8=True),
        "qgraph u8, default": ort_backend.session(u8.onnx_path),
        "ORT qs, default": ort_backend.session(ort_qs),
        "ORT qs, exact": ort_backend.session(ort_qs, exact_int8=True),
    }
    outs = {k: ort_backend.run(s, x)[0] for k, s in sessions.items()}
    ms = common.interleaved_median_ms({k: common.ort_runner(s, *x) for k, s in sessions.items()}, runs)
    row = {"model": name, "fp32_ms": ms["fp32"]}
    for k in sessions:
        if k == "fp32":
            continue
        ref = outs["ORT qs, exact"] if k.startswith("ORT") else want
        row[k] = (ms[k] / ms["fp32"], _error(outs[k], ref))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2,mlp,bert")
    ap.add_argument("--runs", type=int, default=60)
    args = ap.parse_args(argv)
    common.single_thread()
    from qgraph.backends.ort import int8_saturates

    print(common.machine_info())
    print(f"int8 kernels saturate here (x86 without VNNI): {int8_saturates()}\n")
    builds = _models()
    cols = ["qgraph s8, default", "qgraph s8, exact", "qgraph u8, default", "ORT qs, default", "ORT qs, exact"]
    print("| model | FP32 ms | " + " | ".join(cols) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in cols) + " |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            r = run_model(name, builds[name], args.runs, tmp)
            cells = [f"{r[c][0]:.2f}x / {r[c][1]:.1e}" for c in cols]
            print(f"| {name} | {r['fp32_ms']:.2f} | " + " | ".join(cells) + " |", flush=True)
    print("\ncells: latency / FP32 ONNX latency, max abs error / output range (qgraph: against the quantized "
          "PyTorch model; ORT: against its own file in exact mode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
