"""Bias correction on and off, on zoo models: output SQNR against the float model on held-out inputs.

For each model, ``w8a8`` and ``w8a8(bias_correction=False)`` are calibrated on the zoo's calibration batches
and compared with the float model on six held-out batches. The last column says what the pass's own check
did (kept or reverted its corrections, with the calibration-data SQNR it compared). Names as in
``benchmarks/zoo.py``; ``hf/scan_<name>`` selects a model of ``benchmarks/hf_scan.py``.

    PYTHONPATH=. .venv/bin/python benchmarks/bias_correction_onoff.py hf/gemma hf/llama vgg11 densenet121
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

import benchmarks.hf_scan as hf_scan
import qgraph
from benchmarks.zoo_models import zoo
from benchmarks.zoo_worker import CALIB_BATCHES, first_tensor
from qgraph.summary import sqnr_db


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    hf_scan._register([n[len("hf/scan_"):] for n in args.models if n.startswith("hf/scan_")])
    models = zoo()
    print("| model | w8a8 SQNR dB | without bias correction | difference | the pass's check |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.models:
        model, make = models[name].build()
        x = make(0)
        calib = [make(1 + i) for i in range(CALIB_BATCHES)]
        held_out = [make(1 + CALIB_BATCHES + i) for i in range(6)]
        with torch.no_grad():
            ref = torch.cat([first_tensor(model(*b)) for b in held_out])
        db, verdict = [], "-"
        for recipe in ("w8a8", "w8a8(bias_correction=False)"):
            qm = qgraph.quantize(model, x, recipe, calib_data=calib)
            with torch.no_grad(), qm.frozen():
                db.append(sqnr_db(ref, torch.cat([first_tensor(qm(*b)) for b in held_out])))
            checks = [c.detail.rpartition("; ")[2] for c in qm.changes if c.pass_name == "bias_correction" and "output SQNR" in c.detail]
            if recipe == "w8a8":
                verdict = checks[0] if checks else "not needed (every corrected layer had a nonzero bias)"
        print(f"| {name} | {db[0]:.2f} | {db[1]:.2f} | {db[0] - db[1]:+.2f} | {verdict} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
