"""What ``QModel.export``'s ONNX check costs next to the export itself.

For each model (torchvision, random weights, w8a8 calibrated on two batches), one row:
one forward of the fake-quantized model on the example inputs, the default tolerance's drift
estimate (``qgraph.export_tolerance.export_tolerance``: ``DRIFT_TRIALS`` jittered forwards),
``torch.onnx.export`` plus qgraph's clean-up (``export_onnx``), and the ONNX Runtime run that the
check compares; then the drift estimate as a multiple of the forward and as a fraction of the export.

    PYTHONPATH=. .venv/bin/python benchmarks/export_check_cost.py                       # resnet50 at 8x3x224x224
    PYTHONPATH=. .venv/bin/python benchmarks/export_check_cost.py --models resnet18,mobilenet_v3_small --side 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch
import torchvision
from qgraph.backends import ort as ort_backend
from qgraph.backends.onnx_export import export_onnx

import qgraph
from qgraph.export_tolerance import DRIFT_TRIALS, export_tolerance


def _seconds(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(name: str, batch: int, side: int, out_dir: str) -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    x = (torch.randn(batch, 3, side, side, generator=g),)
    qm = qgraph.quantize(model, x, "w8a8", [(torch.randn(batch, 3, side, side, generator=g),) for _ in range(2)])
    qm.eval()
    with torch.no_grad(), qm.frozen():
        qm(*x)  # warm-up
        forward, expected = _seconds(lambda: qm(*x))
    drift, tol = _seconds(lambda: export_tolerance(qm, x, expected))
    with qm.frozen():
        path = f"{out_dir}/{name}.onnx"
        lowered = qm.lowered()
        export, _ = _seconds(lambda: export_onnx(lowered, x, path))
    sess = ort_backend.session(path, matmulnbits_accuracy_level=0, exact_int8=True)
    ort_run, _ = _seconds(lambda: ort_backend.run(sess, x))
    return {"model": name, "input": f"{batch}x3x{side}x{side}", "forward": forward, "drift": drift, "export": export, "ort": ort_run,
            "tolerance": tol.value}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50", help="torchvision classifiers, comma-separated")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--side", type=int, default=224)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    out_dir = tempfile.mkdtemp(prefix="qgraph_check_cost_")
    print(f"| model | input | forward s | drift estimate s ({DRIFT_TRIALS} draws) | export_onnx s | ONNX Runtime run s | "
          "drift / forward | drift / export |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        r = measure(name, args.batch, args.side, out_dir)
        print(f"| {r['model']} | {r['input']} | {r['forward']:.2f} | {r['drift']:.2f} | {r['export']:.2f} | {r['ort']:.2f} | "
              f"{r['drift'] / r['forward']:.1f}x | {r['drift'] / r['export']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
