"""One zoo model in its own process: qgraph per recipe, then the peers; writes one JSON row.

    python -m benchmarks.zoo_worker NAME --recipes w8a8,w4a16 --out-dir DIR --result FILE [--no-peers] [--bn-warmup mean|full|none]
        [--eval-batches N]

The row is rewritten after every step, so a model that times out in a later step keeps what it did.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import sys
import tempfile
import time
import traceback
import warnings

import torch
from torch.utils import _pytree as pytree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)


CALIB_BATCHES = 8  # batches of 8 random inputs that calibrate every tool (64 inputs)
EVAL_BATCHES = 12  # held-out batches of 8 for the float-vs-quantized comparison (96 inputs: one top-1 flip is 1%)


def first_tensor(out) -> torch.Tensor:
    return next(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)).detach().float()


def tensors(out) -> list[torch.Tensor]:
    """Every tensor in a model's output, in pytree order (the order an ONNX export lists its outputs)."""
    return [t.detach().float() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def stacked(per_batch: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Outputs of several batches (one list of tensors per batch) as one tensor per output."""
    if len({len(b) for b in per_batch}) != 1:
        raise RuntimeError(f"the number of outputs varies between batches: {[len(b) for b in per_batch]}")
    return [torch.cat(col) for col in zip(*per_batch)]


def _classes(y: torch.Tensor, task: str) -> torch.Tensor | None:
    if task == "features" or y.dim() < 2:
        return None
    return y.argmax(1) if task == "seg" else y.reshape(-1, y.shape[-1]).argmax(-1)


def fidelity(ref: torch.Tensor | list[torch.Tensor], got: torch.Tensor | list[torch.Tensor], task: str) -> dict:
    """SQNR of ``got`` against the float ``ref`` (and on the input-dependent part of ``ref``), and top-1
    agreement of the first output. With several outputs (lists, e.g. the five levels of an FPN) the
    SQNRs are the worst output's."""
    from qgraph.summary import sqnr_db

    refs, gots = ([ref], [got]) if isinstance(ref, torch.Tensor) else (ref, got)
    if len(refs) != len(gots):
        return {"error": f"{len(gots)} output(s) where the float model has {len(refs)}"}
    for i, (r, g) in enumerate(zip(refs, gots)):
        if r.shape != g.shape:
            which = f"output {i} shape" if len(refs) > 1 else "output shape"
            return {"error": f"{which} {tuple(g.shape)} differs from the float model's {tuple(r.shape)}"}
    a, b = _classes(refs[0], task), _classes(gots[0], task)
    varying = [r - r.mean(0, keepdim=True) for r in refs]  # the part of the float output that depends on the input
    out = {"sqnr_db": min(sqnr_db(r, g) for r, g in zip(refs, gots)),
           "sqnr_varying_db": min(sqnr_db(v, v + (g - r)) for v, r, g in zip(varying, refs, gots)),
           "top1": None if a is None else float((a == b).float().mean())}
    if len(refs) > 1:
        out["outputs"] = len(refs)
    return out


def float_info(ref: torch.Tensor, task: str) -> dict:
    """How much the float outputs depend on the input, and how many classes its top-1 covers."""
    from benchmarks.zoo import SENSITIVITY_MIN

    sens = float((ref - ref.mean(0, keepdim=True)).norm() / ref.norm().clamp_min(1e-30))
    cls = _classes(ref, task)
    return {"sensitivity": sens, "classes": None if cls is None else int(cls.unique().numel()),
            "degenerate": task != "features" and sens < SENSITIVITY_MIN}


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def run_qgraph(model, entry, recipe: str, x: tuple, calib: list, xe: list, ref, out_dir: str) -> dict:
    from qgraph.backends import ort as ort_backend

    import qgraph
    from benchmarks.zoo_models import weight_kinds
    from qgraph.errors import ExportMismatchError
    from qgraph.export_tolerance import export_tolerance, grid_tolerance
    from qgraph.meta import ANNOTATION_KEY
    from qgraph.recipes import get_recipe

    t0 = time.perf_counter()
    kinds = set(get_recipe(recipe).kinds)
    r: dict = {"weights_total": sum(bool(k & kinds) for k in weight_kinds(model))}
    qm = qgraph.quantize(model, x, recipe, calib_data=calib)
    cap = qm.qgraph.capture
    r.update(route=cap.route, leaves=len(cap.leaves), leaf_reasons=cap.leaves, notes=cap.notes,
             weights_quantized=sum(q.role == "weight" for q in qm.quantizers().values()),
             ops=sum(ANNOTATION_KEY in n.meta for n in qm.qgraph.graph.nodes), quantize_s=time.perf_counter() - t0)
    with torch.no_grad(), qm.frozen():
        r.update(fidelity(ref, stacked([tensors(qm(*b)) for b in xe]), entry.task))
    path = os.path.join(out_dir, f"{entry.name.replace('/', '__')}_{recipe}")
    t1 = time.perf_counter()
    with torch.no_grad(), qm.frozen():
        expected = qm(*x)
    r["grid_tolerance"] = grid_tolerance(qm.qgraph, expected)  # what the check allowed before the drift term
    try:
        res = qm.export(path, formats=("onnx",), dynamic_batch=False)  # the library's default tolerance
        r.update(export_ok=True, ort_max_err=res.max_abs_error, tolerance=res.tolerance, drift=res.drift, onnx_bytes=res.onnx_bytes,
                 grid_ok=res.max_abs_error <= r["grid_tolerance"])
    except ExportMismatchError as e:
        r.update(export_ok=False, export_error=_short(e))
        try:
            agreement = ort_backend.compare(expected, ort_backend.run(ort_backend.session(path + ".onnx", matmulnbits_accuracy_level=0, exact_int8=True), x))
            tol = export_tolerance(qm, x, expected)
            r.update(ort_max_err=agreement.max_abs_error, tolerance=tol.value, drift=tol.drift)
        except Exception as e2:  # noqa: BLE001 - the numbers are a courtesy
            r["export_error"] += f" (re-check failed: {_short(e2)})"
    except Exception as e:  # noqa: BLE001
        r.update(export_ok=False, export_error=_short(e))
    r["export_s"] = time.perf_counter() - t1
    r["seconds"] = time.perf_counter() - t0
    return r


def run_torch_ao(model, entry, x: tuple, calib: list, xe: list, ref, out_dir: str) -> dict:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    t0 = time.perf_counter()
    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), x)
    with torch.no_grad():
        for b in calib:
            prepared(*b)
        converted = convert_fx(prepared)
        r = fidelity(ref, stacked([tensors(converted(*b)) for b in xe]), entry.task)
    r["quantize_s"] = time.perf_counter() - t0
    try:
        torch.onnx.export(converted, x, os.path.join(out_dir, f"{entry.name.replace('/', '__')}_torch_ao.onnx"), dynamo=True,
                          opset_version=21, external_data=False, verbose=False)
        r["export_ok"] = True
    except Exception as e:  # noqa: BLE001
        r.update(export_ok=False, export_error=_short(e))
    r["seconds"] = time.perf_counter() - t0
    return r


class _Reader:
    def __init__(self, names: list[str], batches: list[tuple]):
        self._it = iter([{n: t.numpy() for n, t in zip(names, b)} for b in batches])

    def get_next(self):
        return next(self._it, None)


def _ort_session(path: str):
    """ONNX Runtime's files run as qgraph's are checked: exact int8 kernels on CPUs without VNNI."""
    from qgraph.backends import ort as ort_backend

    return ort_backend.session(path, exact_int8=True)


def _runs_like(path: str, model, x: tuple) -> bool:
    """Whether ONNX Runtime loads ``path`` and reproduces the float model's first output on ``x``."""
    try:
        sess = _ort_session(path)
        got = torch.from_numpy(sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), x)})[0]).float()
        with torch.no_grad():
            want = first_tensor(model(*x))
        return got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()) + 1e-6))
    except Exception:  # noqa: BLE001 - any failure means: use the other exporter
        return False


def fp32_export(model, x: tuple, path: str) -> str:
    """The float model as ONNX for ``quantize_static``: the TorchScript exporter (opset 17; eight times
    faster than the dynamo exporter on EfficientNet-B0, and what many ONNX Runtime users still run)
    when ONNX Runtime runs its file and matches the model, else the dynamo exporter qgraph uses.
    Returns which one wrote the file."""
    import qgraph

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, x, path, dynamo=False, opset_version=17)
        if _runs_like(path, model, x):
            return "torchscript"
    except Exception:  # noqa: BLE001 - fall back to the dynamo exporter
        pass
    qgraph.export_onnx(model, x, path, dynamic_batch=False)
    return "dynamo"


def run_ort(model, entry, x: tuple, calib: list, xe: list, ref, out_dir: str) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    CalibrationDataReader.register(_Reader)
    t0 = time.perf_counter()
    base = os.path.join(os.path.abspath(out_dir), entry.name.replace("/", "__"))
    r: dict = {"fp32_exporter": fp32_export(model, x, base + "_fp32.onnx")}
    r["fp32_export_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    src = base + "_fp32.onnx"
    # ORT's quantization tools write uuid-named external-data files (100-350 MB on Swin) into the
    # working directory and leave them there: give them a scratch directory that goes with the model
    with tempfile.TemporaryDirectory(dir=out_dir, prefix="ort_scratch_") as scratch, contextlib.chdir(scratch):
        try:
            quant_pre_process(src, base + "_pre.onnx", skip_symbolic_shape=False)
            if not _runs_like(base + "_pre.onnx", model, x):
                raise RuntimeError("the pre-processed file does not reproduce the float model")
            src = base + "_pre.onnx"
        except Exception as e:  # noqa: BLE001 - quantize the plain export instead
            r["pre_process_error"] = _short(e)
        names = [i.name for i in _ort_session(src).get_inputs()]
        quantize_static(src, base + "_ort_qs.onnx", _Reader(names, calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    r["quantize_s"] = time.perf_counter() - t1
    r["export_ok"] = True  # its output is an ONNX file
    sess = _ort_session(base + "_ort_qs.onnx")
    out = [[torch.from_numpy(o).float() for o in sess.run(None, {n: t.numpy() for n, t in zip(names, b)})] for b in xe]
    r.update(fidelity(ref, stacked(out), entry.task))
    r["seconds"] = time.perf_counter() - t0
    return r


def run_model(name: str, recipes: str, out_dir: str, result: str, peers: bool, warmup: str = "none",
              eval_batches: int = EVAL_BATCHES) -> None:
    """``warmup``: how the BatchNorm statistics are re-estimated on random inputs before any tool sees the
    model (``zoo_models.bn_warmup``: mean, full, none). ``eval_batches``: held-out batches every tool is
    judged on (more give a top-1 agreement with less sampling noise, at the cost of their forward passes)."""
    from benchmarks.zoo_models import bn_warmup, zoo

    entry = zoo()[name]
    row: dict = {"model": entry.name, "family": entry.family, "task": entry.task, "input": entry.input_desc, "note": entry.note, "qgraph": {}}

    def save():
        with open(result, "w") as f:
            json.dump(row, f, indent=1, default=str)

    def step(fn, *a):
        try:
            return fn(*a)
        except Exception as e:  # noqa: BLE001 - one failure is one cell of the table
            return {"error": _short(e), "traceback": traceback.format_exc()[-2000:]}

    t0 = time.perf_counter()
    try:
        model, make = entry.build()
        warmed = bn_warmup(model, make, warmup)
        x = make(0)
        calib = [make(1 + i) for i in range(CALIB_BATCHES)]
        xe = [make(1 + CALIB_BATCHES + i) for i in range(eval_batches)]
        with torch.no_grad():
            ref = stacked([tensors(model(*b)) for b in xe])  # one tensor per output
    except Exception as e:  # noqa: BLE001
        row["error"] = f"float model: {_short(e)}"
        save()
        return
    row["fp"] = float_info(ref[0], entry.task)
    row["fp"]["bn_warmup"] = f"{warmup}: {warmed} BatchNorm layers"
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    row["build_s"] = time.perf_counter() - t0
    save()
    for recipe in recipes.split(","):
        row["qgraph"][recipe] = step(run_qgraph, model, entry, recipe, x, calib, xe, ref, out_dir)
        save()
    if peers:
        row["torch_ao"] = step(run_torch_ao, model, entry, x, calib, xe, ref, out_dir)
        save()
        row["ort"] = step(run_ort, model, entry, x, calib, xe, ref, out_dir)
        save()


def drop_onnx(out_dir: str, name: str) -> None:
    """Delete one model's ONNX files (qgraph's and the peers'); its JSON row and reports stay."""
    stem = name.replace("/", "__") + "_"
    for f in os.listdir(out_dir):
        if f.startswith(stem) and f.endswith(".onnx"):
            os.remove(os.path.join(out_dir, f))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", nargs="?")
    ap.add_argument("--serve", action="store_true", help="read {name, result} JSON lines on stdin, run each")
    ap.add_argument("--recipes", default="w8a8,w4a16")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--result")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--keep-onnx", action="store_true", help="keep the ONNX files (a full run writes about 20 GB)")
    ap.add_argument("--bn-warmup", default="none", choices=("mean", "full", "none"), help="see zoo_models.bn_warmup")
    ap.add_argument("--eval-batches", type=int, default=EVAL_BATCHES, help="held-out batches of 8 each tool is judged on")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if not args.serve:
        run_model(args.name, args.recipes, args.out_dir, args.result, not args.no_peers, args.bn_warmup, args.eval_batches)
        if not args.keep_onnx:
            drop_onnx(args.out_dir, args.name)
        return 0
    from benchmarks.zoo import DONE

    for line in sys.stdin:
        job = json.loads(line)
        run_model(job["name"], args.recipes, args.out_dir, job["result"], not args.no_peers, args.bn_warmup, args.eval_batches)
        if not args.keep_onnx:
            drop_onnx(args.out_dir, job["name"])
        gc.collect()
        print(f"{DONE} {job['name']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
