"""The runner the scans share (``hf_scan.py``, ``timm_scan.py``): each model goes through
``zoo_worker.run_model`` (w8a8, the zoo's calibration and held-out inputs, export and ONNX Runtime
verification, no peers) in a forked child with a timeout, ``jobs`` at a time, prints one
Markdown row as each finishes, judged by the zoo's w8a8 criteria (``benchmarks.zoo.passes``), and a
summary line at the end."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
import warnings
from collections.abc import Callable

from benchmarks.zoo import passes
from benchmarks.zoo_worker import run_model

HEADER = ("| model | capture | w8a8 weights | export | SQNR dB | top-1 | zoo criteria | s |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")


def line(name: str, row: dict | None, seconds: float) -> str:
    if row is None:
        return f"| {name} | - | - | - | - | - | timeout or crash | {seconds:.0f} |"
    if "error" in row:
        return f"| {name} | - | - | - | - | - | float model: {row['error'][:90]} | {seconds:.0f} |"
    q = row["qgraph"].get("w8a8", {})
    if "error" in q:
        return f"| {name} | - | - | - | - | - | {q['error'][:160]} | {seconds:.0f} |"
    top1 = "-" if q.get("top1") is None else f"{q['top1']:.1%}" + (" (near-const.)" if row.get("fp", {}).get("degenerate") else "")
    export = "ok" if q.get("export_ok") else f"FAIL: {q.get('export_error', '')[:160]}"
    ok, why = passes(row, "qgraph")
    verdict = "pass" if ok else "FAIL: export" if not q.get("export_ok") else f"FAIL: {why[:120]}"
    return (f"| {name} | {q['route']} | {q['weights_quantized']}/{q['weights_total']} | {export} | {q['sqnr_db']:.1f} | {top1} | "
            f"{verdict} | {seconds:.0f} |")


def scan(models: list[tuple[str, str]], timeout: float, jobs: int = 1, json_dir: str | None = None) -> None:
    """``models``: (label, zoo name) pairs, registered in ``zoo_models`` before this is called."""
    out = json_dir or tempfile.mkdtemp(prefix="qgraph_scan_")
    os.makedirs(out, exist_ok=True)
    print(HEADER, flush=True)
    ctx = mp.get_context("fork")
    pending = list(models)
    running: list[tuple[str, str, mp.Process, float]] = []
    passed = 0
    while pending or running:
        while pending and len(running) < jobs:
            label, name = pending.pop(0)
            result = os.path.join(out, f"{name.replace('/', '__')}.json")
            child = ctx.Process(target=run_model, args=(name, "w8a8", out, result, False))
            child.start()
            running.append((label, result, child, time.perf_counter()))
        time.sleep(0.2)
        for item in list(running):
            label, result, child, t0 = item
            if child.is_alive() and time.perf_counter() - t0 < timeout:
                continue
            if child.is_alive():
                child.kill()
            child.join()
            running.remove(item)
            try:
                with open(result) as f:
                    row = json.load(f)
            except (OSError, ValueError):
                row = None
            passed += bool(row) and passes(row, "qgraph")[0]
            print(line(label, row, time.perf_counter() - t0), flush=True)
    print(f"\n{passed}/{len(models)} models passed (the zoo's w8a8 criteria)", flush=True)


def cli(argv, description: str, known: list[str], register: Callable[[list[str]], None], prefix: str,
        timeout: float) -> int:
    """The scans' shared command line: ``[names] [--timeout S] [--jobs N]``; ``register(names)`` makes
    them visible to ``zoo_models.zoo()`` as ``<prefix><name>``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("models", nargs="?", help="comma-separated names (default: all)")
    ap.add_argument("--timeout", type=float, default=timeout, help="seconds per model")
    ap.add_argument("--jobs", type=int, default=1, help="models run at once")
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(known)}")
    warnings.filterwarnings("ignore")
    register(names)
    scan([(n, f"{prefix}{n}") for n in names], args.timeout, args.jobs)
    return 0
