"""Folding FrozenBatchNorm2d: torchvision detection backbones, qgraph with and without the fold vs ORT.

Every pretrained torchvision detection model (Faster R-CNN, RetinaNet, Mask R-CNN, FCOS) builds its
ResNet backbone with ``FrozenBatchNorm2d``, whose statistics are buffers: symbolic tracing records it
as ``x * scale + shift`` with constant tensors, not as a BatchNorm. ``FoldBatchNormPass`` rule 4 folds
that into the conv before it. This benchmark builds ``resnet_fpn_backbone`` (the backbone + FPN those
detectors use, random weights, FrozenBatchNorm given random non-identity statistics as a trained one
has) and compares, in one run:

* ``qgraph``: ``quantize(model, x, "w8a8")`` as shipped (the fold on);
* ``no fold``: ``quantize(..., fold_bn=False)``, i.e. the affine maps stay float ops between the
  quantized convs (what qgraph did before rule 4);
* ``ORT``: ONNX Runtime's ``quant_pre_process`` + ``quantize_static`` (QDQ, per-channel int8 weights,
  uint8 activations) on the float ONNX export, calibrated on the same batches.

Columns: output SQNR against the float model, on the whole output and on its input-dependent part
(the output minus its mean over the inputs), each the worst of the five FPN levels on held-out random
inputs; float Mul/Add nodes and QLinearConv nodes left after ONNX Runtime's graph optimisation, and
ONNX Runtime latency (one thread, interleaved rounds) as a ratio to ``qgraph``.

    PYTHONPATH=. .venv/bin/python benchmarks/fold_affine.py                 # resnet18 and resnet50, 128x128, batch 8
    PYTHONPATH=. .venv/bin/python benchmarks/fold_affine.py --models resnet18 --side 96 --runs 10
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import warnings

import numpy as np
import torch

import qgraph
from benchmarks.common import interleaved_median_ms, machine_info, op_counts, ort_runner, ort_session, single_thread
from benchmarks.zoo_models import trained_frozen_bn
from benchmarks.zoo_worker import fidelity, stacked, tensors

CALIB, EVAL = 8, 4  # batches


def batch(seed: int, side: int) -> torch.Tensor:
    return torch.randn(8, 3, side, side, generator=torch.Generator().manual_seed(seed))


def build(name: str) -> torch.nn.Module:
    """``resnet_fpn_backbone(name)`` with random weights and FrozenBatchNorm made to look trained."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    model = resnet_fpn_backbone(backbone_name=name, weights=None, trainable_layers=0).eval()
    trained_frozen_bn(model)
    return model


def ort_outputs(path: str, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    return stacked([[torch.from_numpy(o).float() for o in sess.run(None, {name: x.numpy()})] for x in xs])


def ort_static(model, x: torch.Tensor, calib: list[torch.Tensor], base: str) -> str:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"x": b.numpy()} for b in calib])

        def get_next(self):
            return next(self._it, None)

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), base + "_fp32.onnx", dynamo=False, opset_version=17, input_names=["x"])
    # the quantization tools leave uuid-named scratch files in the working directory
    with tempfile.TemporaryDirectory(dir=os.path.dirname(base)) as scratch, contextlib.chdir(scratch):
        quant_pre_process(base + "_fp32.onnx", base + "_pre.onnx")
        quantize_static(base + "_pre.onnx", base + "_ort.onnx", Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return base + "_ort.onnx"


def optimized_counts(path: str) -> dict[str, int]:
    opt = path[:-5] + ".opt.onnx"
    ort_session(path, level="extended", optimized_path=opt)  # "all" adds NCHWc layout ops
    c = op_counts(opt)
    return {"float Mul+Add": c["Mul"] + c["Add"], "QLinearConv": c["QLinearConv"]}


def run(name: str, side: int, runs: int, out_dir: str) -> list[dict]:
    model = build(name)
    x, calib, xe = batch(0, side), [batch(1 + i, side) for i in range(CALIB)], [batch(100 + i, side) for i in range(EVAL)]
    with torch.no_grad():
        ref = stacked([tensors(model(b)) for b in xe])
    base = os.path.join(os.path.abspath(out_dir), name)
    paths = {}
    for arm, fold in (("qgraph", True), ("no fold", False)):
        qm = qgraph.quantize(model, (x,), "w8a8", calib_data=[(b,) for b in calib], fold_bn=fold)
        paths[arm] = qm.export(f"{base}_{arm.replace(' ', '_')}", formats=("onnx",), dynamic_batch=False).onnx_path
    paths["ORT"] = ort_static(model, x, calib, base)
    rows = {}
    for arm, p in paths.items():
        f = fidelity(ref, ort_outputs(p, xe), "features")
        rows[arm] = {"model": f"{name} FPN", "arm": arm, "sqnr_db": f["sqnr_db"], "varying_db": f["sqnr_varying_db"], **optimized_counts(p)}
    feeds = {arm: ort_runner(ort_session(p), np.ascontiguousarray(x.numpy())) for arm, p in paths.items()}
    for arm, ms in interleaved_median_ms(feeds, runs=runs).items():
        rows[arm]["ms"] = ms
    for r in rows.values():
        r["vs qgraph"] = r["ms"] / rows["qgraph"]["ms"]
    return list(rows.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--runs", type=int, default=20, help="timed ONNX Runtime runs per arm")
    ap.add_argument("--out", default="out/fold_affine")
    args = ap.parse_args(argv)
    single_thread()
    os.makedirs(args.out, exist_ok=True)
    print(machine_info())
    print(f"input 8x3x{args.side}x{args.side}; SQNR: worst FPN level vs the float model; ORT: 1 thread, median of {args.runs}")
    print("| model | arm | SQNR dB | input-dependent part dB | float Mul+Add | QLinearConv | ORT ms | vs qgraph |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.models.split(","):
        for r in run(name, args.side, args.runs, args.out):
            print(f"| {r['model']} | {r['arm']} | {r['sqnr_db']:.1f} | {r['varying_db']:.1f} | {r['float Mul+Add']} | {r['QLinearConv']} "
                  f"| {r['ms']:.1f} | {r['vs qgraph']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
