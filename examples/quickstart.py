"""qgraph quickstart: train a small CNN on scikit-learn digits, quantize it to INT8, export, compare.

    python examples/quickstart.py [--out out/quickstart] [--recipe w8a8]

Trains DigitsCNN (~3 s), quantizes it with ``qgraph.quantize`` (W8A8, 8 calibration batches),
prints the per-node summary, exports verified QDQ ONNX, exports the FP32 model to ONNX as well,
and compares accuracy, file size and latency (ONNX Runtime and torch on one thread) on the
540-image digits test set. Then the same one call for a Hugging Face model fed as a tokenizer feeds
it: a small BERT trained on the digits (``examples/digits_bert.py``, ~6 s; skipped without
``transformers``) is quantized from a ``BatchEncoding`` and compared in PyTorch and ONNX Runtime.
Exits non-zero if INT8 loses more than 1 accuracy point against FP32 (2 for the BERT) or ONNX
Runtime disagrees with the fake-quantized PyTorch model.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from qgraph.backends.ort import int8_saturates  # noqa: E402

import qgraph  # noqa: E402
from examples.models import accuracy, calib_batches, load_digits_data, train_digits_cnn  # noqa: E402

MAX_ACC_DROP = 0.01  # INT8 may lose at most 1 accuracy point against FP32
MIN_AGREEMENT = 0.99  # ONNX Runtime and the fake-quant model must agree on >= 99% of top-1 predictions
MAX_BERT_DROP = 0.02  # the BERT (84% FP32) may lose at most 2 points
MAX_LM_DROP = 0.02  # the character LM (about 55% next-character accuracy in FP32) likewise


def interleaved_median_ms(fns: list, runs: int, warmup: int = 3) -> list[float]:
    """Median wall time (ms) of each function, timed round-robin so load changes hit all alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
    return [statistics.median(ts) for ts in times]


class OrtModel:
    """An ONNX Runtime session on one intra-op thread, callable on torch tensors (any batch size)."""

    def __init__(self, path: Path) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inp = self.sess.get_inputs()[0]
        self.name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {self.name: x})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.numpy()
        b = self.fixed_batch
        if b is None or len(x) == b:
            return torch.from_numpy(self.run(x))
        outs = []  # a static batch size: run in chunks, padding the last one
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self.run(chunk)[:n])
        return torch.from_numpy(np.concatenate(outs))


def state_dict_bytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        line = "  ".join("-" * w for w in widths)
        print(f"\n{title}\n{line}")
        print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
        print(line)
        for r in rows:
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        print(line)
        return
    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 120).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/quickstart"), help="output directory")
    ap.add_argument("--recipe", default="w8a8")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--runs", type=int, default=50, help="timed runs per latency figure")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    # 1. Data and a trained FP32 model.
    x_tr, y_tr, x_te, y_te = load_digits_data(seed=0)
    t = time.perf_counter()
    model = train_digits_cnn(epochs=args.epochs, seed=0)
    print(f"trained DigitsCNN ({sum(p.numel() for p in model.parameters()):,} params) in {time.perf_counter() - t:.1f} s")

    # 2. Quantize: calibrate on 8 training batches of 32, print the per-node table.
    t = time.perf_counter()
    qm = qgraph.quantize(model, (x_te[:32],), recipe=args.recipe, calib_data=calib_batches(x_tr, 8, 32))
    print(f"quantized with recipe {args.recipe!r} in {time.perf_counter() - t:.1f} s\n")
    print(qm.summary())

    # 3. Export: the quantized model (verified in ONNX Runtime by qgraph) and the FP32 model for comparison.
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    # On an x86 CPU without VNNI, ONNX Runtime's default int8 kernels saturate (qgraph's check warns);
    # a file meant for this machine stores its weights as uint8, exact under any session options.
    res = qm.export(str(args.out / "digits_cnn"), uint8_weights=int8_saturates())
    print(f"\nexported in {time.perf_counter() - t:.1f} s: {res}")
    fp32_path = args.out / "digits_cnn_fp32.onnx"
    qgraph.export_onnx(model, (x_te[:32],), str(fp32_path))  # same exporter settings, for a fair size comparison

    # 4. Compare on the full test set, one thread everywhere.
    torch.set_num_threads(1)
    fp32_ort, int8_ort = OrtModel(fp32_path), OrtModel(Path(res.onnx_path))
    with torch.no_grad():
        q_logits = qm(x_te)
    int8_ort_logits = int8_ort(x_te)
    agreement = float((q_logits.argmax(-1) == int8_ort_logits.argmax(-1)).float().mean())

    # A static-batch export is timed at its own batch size and runs the test set in chunks of it (the
    # others too, for a fair comparison); a dynamic one is timed on batch 1 and on the whole test set.
    bs = int8_ort.fixed_batch or 1
    chunk = int8_ort.fixed_batch or len(x_te)
    xb = x_te[:bs]
    xb_np = xb.numpy()

    def torch_timer(m):
        def f():
            with torch.no_grad():
                m(xb)
        return f

    def full_set(m):
        def f():
            with torch.no_grad():
                for i in range(0, len(x_te), chunk):
                    m(x_te[i:i + chunk])
        return f

    systems = [
        ("FP32 (PyTorch)", model, state_dict_bytes(model), torch_timer(model)),
        ("FP32 (ONNX Runtime)", fp32_ort, fp32_path.stat().st_size, lambda: fp32_ort.run(xb_np)),
        (f"{args.recipe.upper()} fake-quant (PyTorch)", qm, None, torch_timer(qm)),
        (f"{args.recipe.upper()} (ONNX Runtime)", int8_ort, Path(res.onnx_path).stat().st_size, lambda: int8_ort.run(xb_np)),
    ]
    rows, acc, size = [], {}, {}
    n_whole = max(args.runs // 5, 3)
    lat = dict(zip([s[0] for s in systems], interleaved_median_ms([s[3] for s in systems], args.runs)))
    whole = dict(zip([s[0] for s in systems], interleaved_median_ms([full_set(s[1]) for s in systems], n_whole, warmup=1)))
    for name, m, nbytes, _ in systems:
        acc[name] = accuracy(m, x_te, y_te)
        size[name] = nbytes
        rows.append([name, f"{100 * acc[name]:.2f}", "-" if nbytes is None else f"{nbytes / 1024:.1f}",
                     f"{lat[name]:.3f}", f"{whole[name]:.1f}"])
    print_table(f"digits test set ({len(x_te)} images), one thread",
                ["model", "accuracy %", "size KB", f"ms / batch of {bs}", f"ms / {len(x_te)} images"], rows)
    print(f"(latency: median of {args.runs} runs of one batch, and of {n_whole} passes over the test set "
          f"in batches of {chunk}, round-robin over the four; PyTorch size: its state_dict)")

    fp32_name, fp32_ort_name, q_name, q_ort_name = (s[0] for s in systems)
    drop = acc[fp32_name] - acc[q_ort_name]
    print(f"size ratio   FP32 ONNX / {args.recipe} ONNX: {size[fp32_ort_name] / size[q_ort_name]:.2f}x smaller")
    print(f"speed-up     FP32 ORT / {args.recipe} ORT:   {lat[fp32_ort_name] / lat[q_ort_name]:.2f}x on a batch of {bs}, "
          f"{whole[fp32_ort_name] / whole[q_ort_name]:.2f}x on the test set")
    print(f"accuracy     {args.recipe} ORT vs FP32 PyTorch: {100 * (acc[q_ort_name] - acc[fp32_name]):+.2f} points")
    print(f"top-1 agreement, {args.recipe} ONNX Runtime vs qm: {100 * agreement:.2f}% "
          f"({int(round(agreement * len(x_te)))}/{len(x_te)})")

    failures = []
    if drop > MAX_ACC_DROP:
        failures.append(f"{args.recipe} accuracy dropped {100 * drop:.2f} points (> {100 * MAX_ACC_DROP:.0f})")
    if acc[fp32_name] - acc[q_name] > MAX_ACC_DROP:
        failures.append(f"fake-quant accuracy dropped {100 * (acc[fp32_name] - acc[q_name]):.2f} points")
    if agreement < MIN_AGREEMENT:
        failures.append(f"ONNX Runtime agrees with qm on only {100 * agreement:.2f}% of the test set")
    failures += bert_part(args.out, args.recipe)
    failures += generation_part(args.out, args.recipe)
    print(f"total time {time.perf_counter() - t_start:.1f} s")
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


def bert_part(out: Path, recipe: str) -> list[str]:
    """5. A Hugging Face BERT trained on the digits, quantized from a tokenizer-style ``BatchEncoding``
    (batches padded to their own lengths) and compared in PyTorch and ONNX Runtime. Returns failures."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("\n(transformers is not installed: the BERT part is skipped)")
        return []
    from qgraph.backends.ort import session

    from examples.digits_bert import accuracy as bert_accuracy
    from examples.digits_bert import digits_bert, tokenize

    _, _, x_te, y_te = load_digits_data(seed=0)
    t = time.perf_counter()
    model, example, calib = digits_bert()
    print(f"\ntrained a BertForSequenceClassification ({sum(p.numel() for p in model.parameters()):,} params) "
          f"on the digits as token sequences in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    qm = qgraph.quantize(model, example, recipe=recipe, calib_data=calib)  # the BatchEncoding as it is
    res = qm.export(str(out / "digits_bert"), uint8_weights=int8_saturates())
    fp32_path = out / "digits_bert_fp32.onnx"
    qgraph.export_onnx(model, example, str(fp32_path))
    print(f"quantized from a BatchEncoding ({', '.join(qm.qgraph.capture.keywords)}) and exported in "
          f"{time.perf_counter() - t:.1f} s: {res}")

    def ort_accuracy(path) -> float:
        sess, correct = session(str(path)), 0
        for i in range(0, len(x_te), 128):  # batches padded to their own lengths, as a tokenizer pads them
            enc = tokenize(x_te[i:i + 128])
            logits = sess.run(None, {k: v.numpy() for k, v in enc.items()})[0]
            correct += int((logits.argmax(1) == y_te[i:i + 128].numpy()).sum())
        return correct / len(x_te)

    acc = {
        "FP32 (PyTorch)": (bert_accuracy(model, x_te, y_te), state_dict_bytes(model)),
        "FP32 (ONNX Runtime)": (ort_accuracy(fp32_path), fp32_path.stat().st_size),
        f"{recipe.upper()} fake-quant (PyTorch)": (bert_accuracy(qm, x_te, y_te), None),
        f"{recipe.upper()} (ONNX Runtime)": (ort_accuracy(res.onnx_path), Path(res.onnx_path).stat().st_size),
    }
    print_table(f"BERT, digits as token sequences ({len(x_te)} test images)", ["model", "accuracy %", "size KB"],
                [[k, f"{100 * a:.2f}", "-" if n is None else f"{n / 1024:.1f}"] for k, (a, n) in acc.items()])
    (fp32, _), _, (fq, _), (q_ort, _) = acc.values()
    failures = []
    if fp32 - q_ort > MAX_BERT_DROP or fp32 - fq > MAX_BERT_DROP:
        failures.append(f"BERT {recipe} accuracy dropped {100 * (fp32 - min(q_ort, fq)):.2f} points (> {100 * MAX_BERT_DROP:.0f})")
    return failures


def generation_part(out: Path, recipe: str) -> list[str]:
    """6. A character-level Hugging Face Llama trained on scikit-learn's dataset descriptions, quantized
    for generation with a KV cache (prefill and decode graphs) and run in ONNX Runtime. Returns failures."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("\n(transformers is not installed: the generation part is skipped)")
        return []
    from examples import char_lm

    t = time.perf_counter()
    r = char_lm.run(str(out / "char_lm"), recipe)
    print(f"\ntrained a character-level LlamaForCausalLM, quantized it for generation (prefill + decode graphs), exported "
          f"and ran it in ONNX Runtime in {time.perf_counter() - t:.1f} s")
    sizes = [r["float_bytes"], None, r["onnx_bytes"]]
    print_table(f"Llama, held-out next character ({r['scored']} characters, through the KV cache)", ["model", "accuracy %", "size KB"],
                [[k, f"{100 * a:.2f}", "-" if n is None else f"{n / 1024:.1f}"] for (k, a), n in zip(r["accuracy"].items(), sizes)])
    for k, v in r["samples"].items():
        print(f"  {k:9s} {v!r}")
    fp32, fq, q_ort = r["accuracy"].values()
    if fp32 - min(fq, q_ort) > MAX_LM_DROP:
        return [f"generation {recipe} accuracy dropped {100 * (fp32 - min(fq, q_ort)):.2f} points (> {100 * MAX_LM_DROP:.0f})"]
    return []


if __name__ == "__main__":
    sys.exit(main())
