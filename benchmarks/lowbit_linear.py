"""Low-bit linear layers in ONNX Runtime: qgraph int8 / int4 vs ORT's own quantizers.

A transformer-like MLP stack (``--blocks`` blocks of LayerNorm → Linear(d, 4d) → GELU →
Linear(4d, d) + residual; 3 blocks of d=1024 are 25.2M parameters) runs in ONNX Runtime with one
intra-op thread on 1 and 32 tokens (input ``[tokens, 1, d]``, tokens first, so that every exporter
writes the linears as MatMul + Add, the form ORT's 4-bit quantizer rewrites). Rows: the FP32 export, qgraph w8a16 / w8a8 / w4a16 (groups of
128 and 32) exports, and ORT's ``quantize_dynamic`` (int8) and ``MatMulNBitsQuantizer`` (4-bit,
block 128) applied to the same FP32 export. Columns: median latency of interleaved runs, speedup
and size ratio vs FP32, relative output error vs FP32 (‖y − y_fp32‖ / ‖y_fp32‖ on random tokens).

A second table runs one 4096×4096 int4 linear (qgraph w4a16, group 128) at every MatMulNBits
accuracy level (``session.qdq_matmulnbits_accuracy_level``), with the error against the
fake-quantized PyTorch model. ``--convs`` adds a third: convolutional nets (a 6-conv CNN at 56×56,
torchvision ResNet-18 at 224×224, random weights, BatchNorm folded) exported FP32 and with every
recipe, to show how each weight width runs in ORT (int4 conv weights with quantized activations
run QLinearConv; weight-only convs run float convs on weights ORT folds when it loads the file).

    .venv/bin/python benchmarks/lowbit_linear.py            # about 2 minutes
    .venv/bin/python benchmarks/lowbit_linear.py --convs    # and the conv table, about 1 more minute
    .venv/bin/python benchmarks/lowbit_linear.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    fmt_counts,
    interleaved_median_ms,
    machine_info,
    onnx_size,
    optimized_op_counts,
    ort_runner,
    ort_session,
    single_thread,
)

import qgraph  # noqa: E402
from qgraph.recipes import get_recipe  # noqa: E402

CONV_KERNELS = ("QLinearConv", "Conv", "FusedConv", "DequantizeLinear", "QGemm", "Gemm", "MatMulNBits")
KERNELS = ("MatMulNBits", "Gemm", "FusedGemm", "MatMul", "QGemm", "MatMulInteger", "MatMulIntegerToFloat",
           "DynamicQuantizeMatMul", "QLinearMatMul", "DequantizeLinear")


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))


class MLPStack(nn.Module):
    """Transformer-like linear stack: ``blocks`` MLP blocks with residuals, then a final LayerNorm."""

    def __init__(self, d: int = 1024, blocks: int = 3) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block(d) for _ in range(blocks)])
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(self.blocks(x))


def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def build_files(model, d: int, out: str, quick: bool) -> dict[str, str]:
    """Every row's ONNX file: FP32, qgraph exports, ORT's quantizers on the FP32 file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    x1 = torch.randn(1, 1, d)
    calib = [torch.randn(32, 1, d, generator=torch.Generator().manual_seed(i)) for i in range(2 if quick else 8)]
    files = {"FP32": os.path.join(out, "fp32.onnx")}
    qgraph.export_onnx(model, x1, files["FP32"])
    recipes = {"qgraph w8a16": "w8a16", "qgraph w8a8": "w8a8",
               "qgraph w4a16 g128": get_recipe("w4a16", group_size=128), "qgraph w4a16 g32": get_recipe("w4a16", group_size=32)}
    for name, recipe in recipes.items():
        qm = qgraph.quantize(model, x1, recipe=recipe, calib_data=calib)
        res = qm.export(os.path.join(out, name.replace(" ", "_")), formats=("onnx",))
        files[name] = res.onnx_path
        print(f"  {name}: {res}", flush=True)
    files["ORT quantize_dynamic int8"] = os.path.join(out, "ort_dynamic.onnx")
    quantize_dynamic(files["FP32"], files["ORT quantize_dynamic int8"], weight_type=QuantType.QInt8)
    for level in (None, 4):
        name = "ORT MatMulNBits 4-bit b128" + (f" (accuracy_level={level})" if level else "")
        q = MatMulNBitsQuantizer(onnx.load(files["FP32"]), bits=4, block_size=128, is_symmetric=True,
                                 accuracy_level=level)
        q.process()
        files[name] = os.path.join(out, f"ort_nbits_{level}.onnx")
        q.model.save_model_to_file(files[name], use_external_data_format=False)
    return files


def stack_table(args, out: str) -> list[str]:
    torch.manual_seed(0)
    model = MLPStack(args.d, args.blocks).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"MLP stack: {args.blocks} blocks, d={args.d}, {params / 1e6:.1f}M parameters; building files ...", flush=True)
    files = build_files(model, args.d, out, args.quick)
    sessions = {k: ort_session(p) for k, p in files.items()}
    lines = []
    for tokens in (1, 32):
        xs = [torch.randn(tokens, 1, args.d, generator=torch.Generator().manual_seed(100 + i)) for i in range(4)]
        with torch.no_grad():
            refs = [model(x).numpy() for x in xs]
        runs = args.runs if tokens == 1 else max(10, args.runs // 4)
        t = interleaved_median_ms({k: ort_runner(s, xs[0]) for k, s in sessions.items()}, runs=runs, rounds=5)
        lines += [f"\n{tokens} token{'s' if tokens > 1 else ''} (batch {tokens}), median of {runs} interleaved runs\n",
                  "| model | latency ms | speedup vs FP32 | ONNX MB | size ratio | rel. err vs FP32 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for k, s in sessions.items():
            name = s.get_inputs()[0].name
            err = np.mean([rel_err(s.run(None, {name: x.numpy()})[0], r) for x, r in zip(xs, refs)])
            size = onnx_size(files[k])
            lines.append(f"| {k} | {t[k]:.3f} | {t['FP32'] / t[k]:.2f}× | {size / 1e6:.2f} | "
                         f"{onnx_size(files['FP32']) / size:.2f}× | {err:.4f} |")
        print("\n".join(lines[-len(sessions) - 3:]), flush=True)
    lines.append("\nKernels after ONNX Runtime's optimisation (EXTENDED):\n")
    for k, p in files.items():
        lines.append(f"- {k}: {fmt_counts(optimized_op_counts(p), keep=KERNELS)}")
    return lines


def levels_table(args, out: str) -> list[str]:
    """One 4096×4096 int4 linear at each MatMulNBits accuracy level."""
    import onnxruntime as ort

    torch.manual_seed(0)
    lin = nn.Linear(4096, 4096).eval()
    x1 = torch.randn(1, 4096)
    qm = qgraph.quantize(lin, x1, recipe="w4a16")
    path = qm.export(os.path.join(out, "linear4096"), formats=("onnx",)).onnx_path
    fp32 = os.path.join(out, "linear4096_fp32.onnx")
    qgraph.export_onnx(lin, x1, fp32)

    def sess(p, level=None):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
        if level is not None:
            so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(level))
        return ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])

    sessions = {"FP32 (MatMul)": sess(fp32)} | {f"int4 level {lv}": sess(path, lv) for lv in range(5)}
    lines = ["\n4096×4096 linear, qgraph w4a16 (group 128), by `session.qdq_matmulnbits_accuracy_level`\n",
             "| session | tokens | latency ms | speedup vs FP32 | rel. err vs fake-quant model |", "| --- | --- | --- | --- | --- |"]
    for tokens in (1, 32):
        x = torch.randn(tokens, 4096)
        with torch.no_grad():
            ref = qm(x).numpy()
        t = interleaved_median_ms({k: ort_runner(s, x) for k, s in sessions.items()}, runs=args.runs if tokens == 1 else max(10, args.runs // 4))
        for k, s in sessions.items():
            err = rel_err(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0], ref)
            lines.append(f"| {k} | {tokens} | {t[k]:.3f} | {t['FP32 (MatMul)'] / t[k]:.2f}× | {err:.1e} |")
    print("\n".join(lines), flush=True)
    return lines


def conv_table(args, out: str) -> list[str]:
    """FP32 vs every recipe on two conv nets, batch 1."""
    import torchvision

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    chans = [3, 32, 64, 64, 128, 128, 128]
    cnn = nn.Sequential(*[m for i, o in zip(chans, chans[1:]) for m in block(i, o)], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    nets = {"6-conv CNN 56×56": (cnn, (1, 3, 56, 56)), "ResNet-18 224×224": (torchvision.models.resnet18(weights=None), (1, 3, 224, 224))}
    lines = []
    for title, (model, shape) in nets.items():
        torch.manual_seed(0)
        model = model.eval()
        x = torch.randn(*shape)
        calib = [torch.randn(*shape, generator=torch.Generator().manual_seed(i)) for i in range(2 if args.quick else 4)]
        slug = title.split()[0].replace("-", "").lower()
        files = {"FP32": os.path.join(out, f"{slug}_fp32.onnx")}
        qgraph.export_onnx(model, x, files["FP32"])
        for recipe in ("w8a8", "w4a8", "w8a16", "w4a16", "w2a16"):
            qm = qgraph.quantize(model, x, recipe=recipe, calib_data=calib)
            files[recipe] = qm.export(os.path.join(out, f"{slug}_{recipe}"), formats=("onnx",)).onnx_path
        sessions = {k: ort_session(p) for k, p in files.items()}
        t = interleaved_median_ms({k: ort_runner(s, x) for k, s in sessions.items()}, runs=max(10, args.runs // 4))
        with torch.no_grad():
            ref = model(x).numpy()
        lines += [f"\n{title}, batch 1\n", "| export | latency ms | speedup vs FP32 | ONNX MB | size ratio | rel. err vs FP32 | kernels (ORT EXTENDED) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for k, s in sessions.items():
            err = rel_err(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0], ref)
            size = onnx_size(files[k])
            lines.append(f"| {k} | {t[k]:.2f} | {t['FP32'] / t[k]:.2f}× | {size / 1e6:.2f} | {onnx_size(files['FP32']) / size:.2f}× | "
                         f"{err:.4f} | {fmt_counts(optimized_op_counts(files[k]), keep=CONV_KERNELS)} |")
        print("\n".join(lines[-len(sessions) - 3:]), flush=True)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs and calibration batches, one block")
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--runs", type=int, default=200, help="timed runs per row at 1 token (a quarter at 32)")
    ap.add_argument("--no-levels", action="store_true", help="skip the accuracy-level table")
    ap.add_argument("--convs", action="store_true", help="add the conv-net table (CNN, ResNet-18)")
    ap.add_argument("--out-dir", default=None, help="keep the ONNX files here (default: a temporary directory)")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.blocks = min(args.runs, 40), 1
    single_thread()
    for name in ("onnx_ir", "onnxscript"):  # ORT's quantization tools turn on INFO logging
        logging.getLogger(name).setLevel(logging.WARNING)
    print(machine_info(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out_dir or tmp
        os.makedirs(out, exist_ok=True)
        lines = stack_table(args, out)
        if not args.no_levels:
            lines += levels_table(args, out)
        if args.convs:
            lines += conv_table(args, out)
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
