"""Scan: every Hugging Face model of the zoo and of ``hf_scan.py`` called by name, as a tokenizer feeds it.

The zoo reaches these models through a positional wrapper. Here the model itself is quantized from a
mapping: ``{"input_ids": ..., "attention_mask": ...}`` for text models (the mask pads the last three
tokens of one row; the mask only where ``forward`` takes one), ``{"pixel_values": ...}`` and the like
otherwise; calibrated on four such batches, exported with the default verification, and, for text
models whose sequence length stayed dynamic, the ONNX file is run on 3 rows of 12 tokens (the example
has 8 rows of 16) and compared with the quantized model by the export check's default rule. A fixed
sequence length is reported, not run short (the model then refuses other lengths, and says so).

    PYTHONPATH=. .venv/bin/python benchmarks/hf_by_name_scan.py              # all 68, about 7 min on two cores
    PYTHONPATH=. .venv/bin/python benchmarks/hf_by_name_scan.py hf/bert hf/scan_mamba
"""

from __future__ import annotations

import inspect
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from qgraph.backends import ort as ort_backend

import benchmarks.hf_scan as hf_scan
import benchmarks.zoo_models as zm
import qgraph
from qgraph.export_tolerance import export_tolerance


def _first(out) -> torch.Tensor:
    if isinstance(out, tuple):
        return out[0]
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def run(name: str, entry) -> str:
    t0 = time.perf_counter()
    wrapper, make = entry.build()
    model, arg = wrapper.model, wrapper.arg
    masked = arg == "input_ids" and "attention_mask" in inspect.signature(model.forward).parameters

    def batch(seed: int, rows: int | None = None, length: int | None = None) -> dict:
        x = make(seed)[0][:rows, :length] if arg == "input_ids" else make(seed)[0]
        out = {arg: x}
        if masked:
            mask = torch.ones_like(x)
            mask[0, -3:] = 0
            out["attention_mask"] = mask
        return out

    try:
        qm = qgraph.quantize(model, batch(0), "w8a8", calib_data=[batch(s) for s in range(1, 5)])
        cap = qm.qgraph.capture
        res = qm.export(tempfile.mkdtemp(prefix="qgraph_by_name_") + "/m", formats=("onnx",))
        export = f"ok ({res.max_abs_error:.2g} <= {res.tolerance:.2g})"
        short = "-"
        if arg == "input_ids" and cap.static_sequence:
            short = "sequence fixed (noted)"
        elif arg == "input_ids":
            b = batch(9, rows=3, length=12)
            got = ort_backend.session(res.onnx_path, matmulnbits_accuracy_level=0, exact_int8=True).run(None, {k: v.numpy() for k, v in b.items()})[0]
            with torch.no_grad(), qm.frozen():
                out = qm(**b)
            err = float(np.abs(got - _first(out).numpy()).max())
            tol = export_tolerance(qm, tuple(b.values()), out).value
            short = f"{'ok' if err <= tol else 'MISMATCH'} ({err:.2g} <= {tol:.2g})"
        return f"| {name} | {', '.join(cap.keywords)} | {cap.route} | {export} | {short} | {time.perf_counter() - t0:.0f} |"
    except Exception as e:  # noqa: BLE001 - one row per model, failures included
        return f"| {name} | {arg} | - | FAIL: {type(e).__name__}: {str(e).splitlines()[0][:160]} | - | {time.perf_counter() - t0:.0f} |"


def main(argv: list[str] | None = None) -> int:
    warnings.simplefilter("ignore")
    names = list(sys.argv[1:] if argv is None else argv)
    hf_scan._register(list(hf_scan.MODELS))
    entries = {e.name: e for e in zm.hf_entries()}
    unknown = [n for n in names if n not in entries]
    if unknown:
        print(f"unknown: {', '.join(unknown)}; known: {', '.join(entries)}", file=sys.stderr)
        return 2
    print("| model | inputs by name | capture | export (ORT error <= tolerance) | 3 rows x 12 tokens in ONNX Runtime | s |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for n in names or entries:
        rows.append(run(n, entries[n]))
        print(rows[-1], flush=True)
    bad = [r for r in rows if "FAIL" in r or "MISMATCH" in r]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} models quantize from inputs by name, export and verify "
          "(and run 3 x 12 tokens where the sequence length is dynamic)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
