"""The usage scan's models (``usage_scan.CASES``) through the workflows beyond w8a8 PTQ and ONNX.

Per case, each column one workflow, each judged by a check that can fail:

* ``w4a16 + qpack``: weight-only int4, ``export`` to ONNX (verified) and qpack, then
  ``qgraph.load(qpack, model)`` (example inputs rebuilt from the file's record) must give the same
  outputs as the exported model, bit for bit, on held-out inputs;
* ``2:4 + w8a8``: ``["nm(2,4)", "w8a8"]`` (N:M sparsity composed with quantization), exported and
  loaded the same way;
* ``bitswitch @4``: ``bitswitch(keep_first_last=False)`` switched to 4 bits, exported (ONNX at 4 bits,
  the INT8 qpack) and loaded with ``bits=4``;
* ``OFQ`` and ``subset (DFSQ)``: the seed methods' recipes, exported and loaded the same way;
* ``report``: ``qm.report(held_out)`` with an HTML page and the table;
* ``QAT``: ``quantize(..., qat=True)``, three SGD steps on the outputs' mean square, then
  ``export`` to ONNX and qpack (each verified).

    PYTHONPATH=. .venv/bin/python benchmarks/workflow_scan.py             # every case, about 10 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/workflow_scan.py tied t5      # some of them
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings

import torch
from torch.utils import _pytree as pytree

import qgraph
from benchmarks.usage_scan import SKIP, _call, build_case, chosen_cases

WORKFLOWS = ("w4a16 + qpack", "2:4 + w8a8", "bitswitch @4", "OFQ", "subset (DFSQ)", "report", "QAT")


def _outputs(out) -> list[torch.Tensor]:
    return [t.float() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _why(e: BaseException) -> str:
    text = str(e).strip()
    return f"FAIL {type(e).__name__}: {text.splitlines()[0][:160] if text else ''}"


def _round_trip(model, example, calib, held, recipe, skip, path: str, bits: int | None = None) -> str:
    qm = qgraph.quantize(model, example, recipe, calib, skip=skip)
    if bits is not None:
        qm.set_bits(bits)
    qm.export(path)  # ONNX (checked in ONNX Runtime) and qpack (weights checked bit for bit)
    back = qgraph.load(path + ".qpack", model, bits=bits)
    with torch.no_grad(), qm.frozen(), back.frozen():
        want, got = _outputs(_call(qm, held)), _outputs(_call(back, held))
    if len(want) != len(got) or not all(torch.equal(a, b) for a, b in zip(want, got)):
        worst = max(float((a - b).abs().max()) for a, b in zip(want, got)) if len(want) == len(got) else float("nan")
        return f"LOADED MODEL DIFFERS (max {worst:.2g})"
    return "ok"


def _report(model, example, calib, held, skip, path: str) -> str:
    qm = qgraph.quantize(model, example, "w8a8", calib, skip=skip)
    rep = qm.report([held])
    rep.to_html(path + ".html")
    rep.table()
    return f"ok ({len(rep.layers)} layers)"


def _qat(model, example, calib, skip, path: str) -> str:
    qm = qgraph.quantize(model, example, "w8a8", calib, qat=True, skip=skip)
    opt = torch.optim.SGD(qm.parameters(), lr=1e-3)
    for batch in calib:
        losses = [o.pow(2).mean() for o in _outputs(_call(qm, batch)) if o.requires_grad]
        if not losses:
            return "FAIL no output carries a gradient"
        opt.zero_grad()
        sum(losses).backward()
        opt.step()
    res = qm.eval().export(path)
    return f"ok ({res.max_abs_error:.2g} <= {res.tolerance:.2g})"


def run_case(name: str, out_dir: str) -> dict:
    what, model, _, _, example, calib, held = build_case(name)
    skip = SKIP.get(name)
    row: dict = {"case": name, "what": what}
    t0 = time.perf_counter()
    steps = {
        "w4a16 + qpack": lambda: _round_trip(model, example, calib, held, "w4a16", skip, f"{out_dir}/{name}_w4"),
        "2:4 + w8a8": lambda: _round_trip(model, example, calib, held, ["nm(2,4)", "w8a8"], skip, f"{out_dir}/{name}_nm"),
        "bitswitch @4": lambda: _round_trip(model, example, calib, held, "bitswitch(keep_first_last=False)", skip,
                                            f"{out_dir}/{name}_bs", bits=4),
        "OFQ": lambda: _round_trip(model, example, calib, held, "ofq", skip, f"{out_dir}/{name}_ofq"),
        "subset (DFSQ)": lambda: _round_trip(model, example, calib, held, "subset", skip, f"{out_dir}/{name}_dfsq"),
        "report": lambda: _report(model, example, calib, held, skip, f"{out_dir}/{name}"),
        "QAT": lambda: _qat(model, example, calib, skip, f"{out_dir}/{name}_qat"),
    }
    for key, step in steps.items():
        try:
            row[key] = step()
        except Exception as e:  # noqa: BLE001 - one failure is one cell of the table
            row[key] = _why(e)
    row["s"] = time.perf_counter() - t0
    return row


def main(argv: list[str] | None = None) -> int:
    cases = chosen_cases(argv, __doc__)
    warnings.simplefilter("ignore")
    out_dir = tempfile.mkdtemp(prefix="qgraph_workflows_")
    print("| case | " + " | ".join(WORKFLOWS) + " | s |")
    print("| --- |" + " --- |" * len(WORKFLOWS) + " --- |")
    cells = failed = 0
    for name in cases:
        r = run_case(name, out_dir)
        cells += len(WORKFLOWS)
        failed += sum(not r[w].startswith("ok") for w in WORKFLOWS)
        print(f"| {name} | " + " | ".join(r[w] for w in WORKFLOWS) + f" | {r['s']:.0f} |", flush=True)
    print(f"\n{cells - failed}/{cells} case-workflows pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
