"""Full torchvision detectors (transform, anchors, NMS included), which no capture route takes whole:
``qgraph.quantize_parts`` against torch.ao FX and ONNX Runtime's ``quantize_static`` on the same models.

Per detector (random weights, ``num_classes=5``, 160x160 images: one example, three calibration
images, one held out):

* qgraph: ``quantize_parts(model, ([img],), "w8a8", calib)``; the parts found and the share of the
  model's weights they hold; every part exported to ONNX and verified in ONNX Runtime
  (``QuantizedParts.export``); the quantized detector run on the held-out image against the float one
  (boxes kept, largest score difference);
* torch.ao: ``prepare_fx`` of the whole detector (what its FX flow needs first);
* ORT: the float detector exported by the TorchScript exporter (torchvision's documented ONNX route),
  then ``quantize_static`` (QDQ, per channel) calibrated on the same images, and the quantized file run on
  the held-out image (and the float file too, to tell the exporter's limits from the quantizer's).

    PYTHONPATH=. .venv/bin/python benchmarks/detector_parts.py                       # every detector, about 4 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/detector_parts.py fasterrcnn_mobilenet_v3_large_320_fpn
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import tempfile
import time
import warnings

import torch

import qgraph
from benchmarks.zoo_worker import _ort_session, _Reader

DETECTORS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn",
             "ssdlite320_mobilenet_v3_large", "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn")


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:90]}" if str(e).strip() else type(e).__name__


def _build(name: str):
    import torchvision

    torch.manual_seed(0)
    kwargs = {"weights": None, "weights_backbone": None}
    if not name.startswith("keypoint"):
        kwargs["num_classes"] = 5
    return getattr(torchvision.models.detection, name)(**kwargs).eval()


def _compare(got: list[dict], want: list[dict]) -> str:
    g, w = got[0], want[0]
    if g["boxes"].shape != w["boxes"].shape:
        return f"{len(g['boxes'])} boxes vs {len(w['boxes'])}"
    diff = float((g["scores"] - w["scores"]).abs().max()) if len(w["scores"]) else 0.0
    return f"{len(w['boxes'])} boxes, scores within {diff:.2g}"


def run_qgraph(name: str, images: list, out_dir: str) -> dict:
    model = _build(name)
    t0 = time.perf_counter()
    qp = qgraph.quantize_parts(model, images[0], "w8a8", images[1:4])
    r = {"quantize_s": time.perf_counter() - t0, "parts": len(qp.parts), "failed": len(qp.failed)}
    total = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    inside = sum(p.numel() for path in qp.parts for p in model.get_submodule(path).parameters() if p.dim() >= 2)
    r["covered"] = inside / total
    t1 = time.perf_counter()
    try:
        results = qp.export(os.path.join(out_dir, name), formats=("onnx",))
        r["verified"] = f"{sum(x.max_abs_error <= x.tolerance for x in results.values())}/{len(results)}"
    except Exception as e:  # noqa: BLE001 - the row says what failed
        r["verified"] = _short(e)
    r["export_s"] = time.perf_counter() - t1
    with torch.no_grad(), qp.frozen():
        r["held_out"] = _compare(qp(*images[4]), model(*images[4]))
    return r


def run_torch_ao(name: str, images: list) -> str:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    try:
        prepare_fx(copy.deepcopy(_build(name)), get_default_qconfig_mapping("x86"), images[0])
        return "prepare_fx ok"
    except Exception as e:  # noqa: BLE001
        return _short(e)


def run_ort(name: str, images: list, out_dir: str) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    CalibrationDataReader.register(_Reader)
    model = _build(name)
    base = os.path.join(os.path.abspath(out_dir), name)
    r: dict = {}
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, images[0], base + "_fp32.onnx", dynamo=False, opset_version=17)
    except Exception as e:  # noqa: BLE001
        return {"error": f"float export: {_short(e)}"}
    r["export_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    names = [i.name for i in _ort_session(base + "_fp32.onnx").get_inputs()]
    try:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix="ort_scratch_") as scratch, contextlib.chdir(scratch):
            quantize_static(base + "_fp32.onnx", base + "_ort_qs.onnx", _Reader(names, [b[0] for b in images[1:4]]),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
    except Exception as e:  # noqa: BLE001
        return {**r, "error": f"quantize_static: {_short(e)}"}
    r["quantize_s"] = time.perf_counter() - t1
    with torch.no_grad():
        want = model(*images[4])
    for which, path in (("held_out", base + "_ort_qs.onnx"), ("float_file", base + "_fp32.onnx")):
        try:
            out = _ort_session(path).run(None, {n: t.numpy() for n, t in zip(names, images[4][0])})
            # the file's outputs are the first image's dict flattened in its key order (boxes, labels, scores, ...)
            r[which] = _compare([{k: torch.from_numpy(v) for k, v in zip(want[0], out)}], want)
        except Exception as e:  # noqa: BLE001
            r[which] = f"does not run: {_short(e)}"
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=list(DETECTORS))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    g = torch.Generator().manual_seed(0)
    images = [([torch.rand(3, 160, 160, generator=g)],) for _ in range(5)]
    out_dir = tempfile.mkdtemp(prefix="qgraph_detectors_")
    print("| detector | qgraph parts (weights held) | qgraph quantize s | part files verified (export s) | qgraph held-out vs float "
          "| torch.ao | ORT float export + quantize_static s | ORT held-out vs float | ORT's float file vs float | "
          "time ratio qgraph / ORT |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        q = run_qgraph(name, images, out_dir)
        ao = run_torch_ao(name, images)
        o = run_ort(name, images, out_dir)
        ort_s = o.get("export_s", 0.0) + o.get("quantize_s", 0.0)
        q_s = q["quantize_s"] + q["export_s"]
        ort_cells = ((f"{ort_s:.1f}", o.get("held_out", "-"), o.get("float_file", "-")) if "error" not in o
                     else (o["error"], "-", "-"))
        ratio = f"{q_s / ort_s:.2f}" if "error" not in o and ort_s else "-"
        failed = f", {q['failed']} failed" if q["failed"] else ""
        print(f"| {name} | {q['parts']} ({q['covered']:.0%}){failed} | "
              f"{q['quantize_s']:.1f} | {q['verified']} ({q['export_s']:.1f}) | {q['held_out']} | {ao} | {ort_cells[0]} | "
              f"{ort_cells[1]} | {ort_cells[2]} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
