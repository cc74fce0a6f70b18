"""Model zoo: capture → quantize → export → verify on every model of ``benchmarks/zoo_models.py``, with peers.

Per model (random weights; BatchNorm statistics as initialised, or with ``--bn-warmup mean`` running means
re-estimated on four batches of random inputs, see ``zoo_models.bn_warmup``; a batch of 8 random inputs; eight more batches calibrate) and recipe:
``qgraph.quantize(model, x, recipe, calib_data=...)``, ``qm.export(path, formats=("onnx",))`` (which runs
ONNX Runtime and compares it with the quantized PyTorch model), then the quantized model against the
float one on 96 held-out inputs: SQNR of the first output and top-1 agreement (classifiers, segmentation
per pixel, language models per token). Peers on the same models and data (w8a8 row): torch.ao FX
``prepare_fx``/``convert_fx`` (x86 qconfig mapping; its ONNX export is attempted and counted) and ONNX
Runtime ``quantize_static`` (QDQ, per-channel, U8 activations / S8 weights, MinMax) on the FP32 export.

Pass (w8a8): export verified, and top-1 agreement ≥ 95% — or, where the float outputs hardly depend on
the input (random-weight nets often give the same logits for every input), or for feature outputs,
SQNR ≥ 20 dB. Every model runs in its own subprocess with a timeout.

    .venv/bin/python benchmarks/zoo.py                    # everything (see docs/benchmarks.md for the time)
    .venv/bin/python benchmarks/zoo.py --quick --no-peers # one or two models per family
    .venv/bin/python benchmarks/zoo.py --only resnet18,hf/bert --recipes w8a8 --json out/zoo.json
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)  # after site-packages, so an installed qgraph wins over the source tree

MIN_TOP1 = 0.95
MIN_SQNR_DB = 20.0
SENSITIVITY_MIN = 0.05  # ‖y − mean over the batch‖ / ‖y‖ below this: outputs "near-constant" across inputs


def select(entries: dict, only: str | None, quick: bool, family: str | None, huge: bool = False) -> list:
    chosen = [e for e in entries.values() if huge or not e.huge or only]
    if quick:
        chosen = [e for e in chosen if e.quick]
    if family:
        fams = family.split(",")
        chosen = [e for e in chosen if e.family in fams]
    if only:
        pats = [p.strip() for p in only.split(",") if p.strip()]
        chosen = [e for e in chosen if any(p == e.name or fnmatch.fnmatchcase(e.name, p) or p == e.name.split("/")[-1] for p in pats)]
    return chosen


class Worker:
    """A ``benchmarks.zoo_worker --serve`` process that runs models one at a time (imports paid
    once); a model that hangs past the timeout or crashes costs only itself: the process is
    killed and the next model gets a fresh one. Recycled every ``RECYCLE`` models to bound memory."""

    RECYCLE = 12

    def __init__(self, args, out_dir: str, slot: int) -> None:
        self.args, self.out_dir, self.slot = args, out_dir, slot
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue = queue.Queue()
        self.done = 0

    def _start(self) -> None:
        cmd = [sys.executable, "-m", "benchmarks.zoo_worker", "--serve", "--recipes", self.args.recipes, "--out-dir", self.out_dir]
        if self.args.no_peers:
            cmd.append("--no-peers")
        if self.args.keep_onnx:
            cmd.append("--keep-onnx")
        cmd += ["--bn-warmup", "none" if self.args.no_bn_warmup else self.args.bn_warmup, "--eval-batches", str(self.args.eval_batches)]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        self.log = os.path.join(self.out_dir, f"worker{self.slot}.log")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "a"), text=True, bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=lambda p=self.proc, q=self.lines: [q.put(x.rstrip("\n")) for x in p.stdout] and None or q.put(None),
                         daemon=True).start()
        self.done = 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def run(self, name: str, result: str) -> str | None:
        """None when the worker finished the model, else what went wrong."""
        if self.proc is None or self.proc.poll() is not None or self.done >= self.RECYCLE:
            self.stop()
            self._start()
        self.proc.stdin.write(json.dumps({"name": name, "result": result}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + self.args.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                return f"timeout after {self.args.timeout} s"
            if line is None:  # the process died
                self.proc.wait()
                tail = open(self.log).read().strip().splitlines()[-1:]
                self.proc = None
                return f"worker died ({' '.join(tail)[:200]})"
            if line == f"{DONE} {name}":
                self.done += 1
                return None


DONE = "@@zoo-done@@"


def run_one(worker: Worker, name: str, args, out_dir: str) -> dict:
    result = os.path.join(out_dir, name.replace("/", "__") + ".json")
    t0 = time.perf_counter()
    err = worker.run(name, result)
    row = {"model": name, "qgraph": {}}
    if os.path.exists(result):  # rewritten after every step: a timeout keeps the steps done
        with open(result) as f:
            row = json.load(f)
    row["seconds"] = time.perf_counter() - t0
    if err:
        if "fp" not in row:
            row["error"] = err
        row["incomplete"] = err
        for recipe in args.recipes.split(","):
            row["qgraph"].setdefault(recipe, {"error": err})
        for tool in ([] if args.no_peers else ["torch_ao", "ort"]):
            row.setdefault(tool, {"error": err})
    return row


# ------------------------------------------------------------------------------------------------ judging
def judge(r: dict | None, task: str, degenerate: bool, need_export: bool = True) -> tuple[bool, str]:
    """(passed, why) for one tool's numbers on one model."""
    if r is None:
        return False, "not run"
    if r.get("error"):
        return False, r["error"]
    if need_export and not r.get("export_ok"):
        return False, r.get("export_error") or "export failed"
    sqnr, top1 = r.get("sqnr_db"), r.get("top1")
    if task != "features" and not degenerate:
        if top1 is None:
            return False, "no top-1"
        why = f"top-1 {top1:.1%}"
        if top1 < MIN_TOP1 and r.get("sqnr_varying_db") is not None:
            why += f" (SQNR {sqnr:.1f} dB; {r['sqnr_varying_db']:.1f} dB on the input-dependent part of the float output)"
        return top1 >= MIN_TOP1, why
    ok = sqnr is not None and sqnr >= MIN_SQNR_DB
    why = "near-constant float outputs: judged by SQNR" if degenerate and task != "features" else "judged by SQNR"
    return ok, f"{why} {sqnr:.1f} dB" if sqnr is not None else why


def passes(row: dict, tool: str) -> tuple[bool, str]:
    if row.get("error"):
        return False, row["error"]
    degenerate = row.get("fp", {}).get("degenerate", False)
    task = row.get("task", "cls")
    if tool == "qgraph":
        q = row.get("qgraph", {})
        ok, why = judge(q.get("w8a8"), task, degenerate)
        for recipe, r in q.items():  # other recipes: must run, export and verify
            if recipe != "w8a8" and not (r.get("export_ok") and not r.get("error")):
                ok, why = False, f"{recipe}: {r.get('error') or r.get('export_error') or 'export failed'}"
        return ok, why
    return judge(row.get(tool), task, degenerate, need_export=(tool == "ort"))


# ------------------------------------------------------------------------------------------------ table
def _f(v, fmt: str, na: str = "-") -> str:
    return na if v is None else format(v, fmt)


def table(rows: list[dict], recipes: list[str], peers: bool) -> str:
    head = ["model", "recipe", "capture", "weights q/n", "ops", "export", "ORT err / tol", "SQNR dB", "top-1", "pass", "s"]
    if peers:
        head += ["torch.ao top-1 / SQNR", "ORT qs top-1 / SQNR"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        if row.get("error"):
            lines.append(f"| {row['model']} | all | {row['error']} |" + " |" * (len(head) - 3))
            continue
        fp = row["fp"]
        for i, recipe in enumerate(recipes):
            r = row["qgraph"].get(recipe, {"error": "not run"})
            if r.get("error"):
                cells = [row["model"], recipe, r["error"][:120]] + [""] * (len(head) - 3)
                lines.append("| " + " | ".join(cells) + " |")
                continue
            cap = r["route"] + (f" +{r['leaves']} leaf" if r.get("leaves") else "")
            export = ("ok" if r.get("grid_ok", r.get("default_ok", True)) else "ok (drift)") if r.get("export_ok") else "FAIL"
            err = f"{_f(r.get('ort_max_err'), '.2g')} / {_f(r.get('tolerance'), '.2g')}"
            top1 = _f(r.get("top1"), ".0%")
            if fp.get("degenerate"):
                top1 += f" (FP {fp['classes']} cls)"
            if recipe == "w8a8":
                ok, why = judge(r, row["task"], fp.get("degenerate", False))
                verdict = "yes" if ok else f"NO: {why}"
            else:
                verdict = "runs" if r.get("export_ok") else "NO"
            cells = [row["model"] if i == 0 else "", recipe, cap, f"{r['weights_quantized']}/{r['weights_total']}", str(r["ops"]), export, err,
                     _f(r.get("sqnr_db"), ".1f"), top1, verdict, f"{r.get('seconds', 0):.0f}"]
            if peers:
                if recipe == "w8a8":
                    ao, qs = row.get("torch_ao"), row.get("ort")
                    cells += [_peer(ao, torch_ao=True), _peer(qs)]
                else:
                    cells += ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compact_table(rows: list[dict], peers: bool) -> str:
    """One line per model: capture, w8a8 (weights, export, SQNR, top-1, verdict), peers, w4a16."""
    head = ["model", "capture", "w8a8 weights", "export", "SQNR dB", "top-1", "pass"]
    head += ["torch.ao top-1 / SQNR", "ORT qs top-1 / SQNR"] if peers else []
    head += ["w4a16 export / SQNR / top-1"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        if row.get("error"):
            lines.append(f"| {row['model']} | {row['error'][:100]} |" + " |" * (len(head) - 2))
            continue
        q, fp = row["qgraph"].get("w8a8", {}), row.get("fp", {})
        ok, why = judge(q, row.get("task", "cls"), fp.get("degenerate", False))
        if q.get("error"):
            cells = [row["model"], q["error"][:100], "", "", "", "", "NO"]
        else:
            top1 = _f(q.get("top1"), ".0%") + (" (near-const.)" if fp.get("degenerate") else "")
            export = ("ok" if q.get("grid_ok", q.get("default_ok", True)) else "ok (drift)") if q.get("export_ok") else "FAIL"
            cap = q["route"] + (f" +{q['leaves']} leaf" if q.get("leaves") else "")
            cells = [row["model"], cap, f"{q['weights_quantized']}/{q['weights_total']}", export, _f(q.get("sqnr_db"), ".1f"), top1,
                     "yes" if ok else "NO"]
        if peers:
            cells += [_peer(row.get("torch_ao"), torch_ao=True), _peer(row.get("ort"))]
        w4 = row["qgraph"].get("w4a16")
        if w4 is None:
            cells.append("-")
        elif w4.get("error") or not w4.get("export_ok"):
            cells.append("FAIL: " + (w4.get("error") or w4.get("export_error") or "")[:60])
        else:
            cells.append(f"ok / {_f(w4.get('sqnr_db'), '.1f')} / {_f(w4.get('top1'), '.0%')}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _peer(r: dict | None, torch_ao: bool = False) -> str:
    if r is None:
        return "-"
    if r.get("error"):
        return "FAIL: " + r["error"][:60]
    s = f"{_f(r.get('top1'), '.0%')} / {_f(r.get('sqnr_db'), '.1f')}"
    if torch_ao:
        s += ", ONNX " + ("ok" if r.get("export_ok") else "fails")
    return s


def main(argv=None) -> int:
    from benchmarks.zoo_models import zoo

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one or two models per family")
    ap.add_argument("--only", help="comma-separated names or globs (e.g. resnet18,hf/*,vit_*)")
    ap.add_argument("--family", help="torchvision, tv-seg, tv-det, tv-video, tv-flow, timm, hf, custom (comma-separated)")
    ap.add_argument("--recipes", default="w8a8,w4a16")
    ap.add_argument("--no-peers", action="store_true", help="skip torch.ao FX and ORT quantize_static")
    ap.add_argument("--huge", action="store_true", help="include the models over 250M parameters (vit_h_14, vit_l_*, regnet_y_128gf)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per model (subprocess killed after)")
    ap.add_argument("--jobs", type=int, default=1, help="models run in parallel (one thread each)")
    ap.add_argument("--out-dir", help="ONNX files and per-model JSON (default: a temporary directory)")
    ap.add_argument("--json", help="write all rows to this file")
    ap.add_argument("--keep-onnx", action="store_true", help="keep every ONNX file in --out-dir (a full run writes about 20 GB)")
    ap.add_argument("--bn-warmup", default="none", choices=("mean", "full", "none"),
                    help="BatchNorm statistics re-estimated on random inputs before any tool sees a model: none (default: "
                         "PyTorch's initial mean 0 / variance 1, the regime of the documented full run), running means only "
                         "(input-sensitive logits; a harder test for every tool), or means and variances (makes random nets chaotic)")
    ap.add_argument("--no-bn-warmup", action="store_true", help="the same as --bn-warmup none")
    ap.add_argument("--eval-batches", type=int, default=12, help="held-out batches of 8 that judge every tool (default 12: 96 "
                    "inputs, a standard error of 2.2 points at 95%% top-1; 60: 480 inputs, 1.0 point)")
    ap.add_argument("--list", action="store_true", help="list the selected models and exit")
    ap.add_argument("--compact", action="store_true", help="one line per model instead of one per model and recipe")
    ap.add_argument("--from-json", help="print the tables and summary of an earlier --json file instead of running")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            rows = json.load(f)["rows"]
        return report(rows, args, recipes=args.recipes.split(","), seconds=None, out_dir=None)
    chosen = select(zoo(), args.only, args.quick, args.family, args.huge)
    if args.list or not chosen:
        print("\n".join(f"{e.name:40s} {e.family:12s} {e.task:9s} {e.input_desc}" for e in chosen) or "no model matches")
        return 0 if chosen else 2
    recipes = args.recipes.split(",")
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="qgraph_zoo_")
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[dict] = []

    local = threading.local()
    workers: list[Worker] = []

    def work(e):
        if not hasattr(local, "worker"):
            local.worker = Worker(args, out_dir, len(workers))
            workers.append(local.worker)
        row = run_one(local.worker, e.name, args, out_dir)
        row.setdefault("task", e.task)
        ok, why = passes(row, "qgraph")
        print(f"[{time.perf_counter() - t0:6.0f}s] {e.name:36s} {'pass' if ok else 'FAIL'} ({why}) {row.get('seconds', 0):.0f}s", flush=True)
        return row

    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = list(pool.map(work, chosen))
    finally:
        for w in workers:
            w.stop()
    return report(rows, args, recipes, time.perf_counter() - t0, out_dir)


def report(rows: list[dict], args, recipes: list[str], seconds: float | None, out_dir: str | None) -> int:
    """Print the table and the summary lines (and write --json); exit status 0 when every model passed."""
    peers = not args.no_peers and any("ort" in r or "torch_ao" in r for r in rows)
    print()
    print(compact_table(rows, peers) if args.compact else table(rows, recipes, peers))
    print()
    tools = ["qgraph"] + (["torch_ao", "ort"] if peers else [])
    label = {"qgraph": "qgraph (w8a8 criteria" + (", other recipes export-verified)" if len(recipes) > 1 else ")"),
             "torch_ao": "torch.ao FX (x86)", "ort": "ORT quantize_static"}
    summary = {}
    for tool in tools:
        verdicts = [(r["model"], *passes(r, tool)) for r in rows]
        n = sum(v[1] for v in verdicts)
        summary[tool] = n
        print(f"{label[tool]}: {n}/{len(rows)} models passed")
        for model, ok, why in verdicts:
            if not ok and tool == "qgraph":
                print(f"    {model}: {why}")
    if "torch_ao" in summary:
        n_export = sum(bool(r.get("torch_ao", {}).get("export_ok")) for r in rows)
        print(f"torch.ao converted models that exported to ONNX: {n_export}/{len(rows)}")
    took = f"{seconds:.0f} s, " if seconds is not None else ""
    print(f"{summary['qgraph']}/{len(rows)} models passed ({took}out dir {out_dir})")
    if args.json and seconds is not None:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "summary": summary, "seconds": seconds}, f, indent=1, default=str)
    return 0 if summary["qgraph"] == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
