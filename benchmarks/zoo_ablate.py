"""What-if ablations on zoo models that fail w8a8: which change to the quantized graph would lift them?

Each variant edits the fake-quantized PyTorch model after ``quantize`` (nothing here is exported) and
is judged like the zoo judges w8a8 (same calibration and evaluation inputs, ``zoo_worker.fidelity``):

* ``bc on``: the w8a8 recipe as shipped (bias correction on); every other column has it off, so
  that switching quantizers off does not leave a correction for noise that is no longer there;
* ``base``: ``w8a8(bias_correction=False)``;
* ``float pre-act``: conv/linear results that only feed a smooth activation (SiLU, sigmoid,
  hardswish, GELU, ...) are not rounded, as if the runtime fused the activation into the conv;
* ``float stream``: a quantized value that feeds both an integer op and a float op (a residual add)
  reaches the float op unrounded: only the conv/linear reads the rounded copy;
* ``both``: the two together;
* ``ranges x1.25``: every activation grid widened by a quarter (fewer clipped outliers, coarser steps).

    PYTHONPATH=. .venv/bin/python benchmarks/zoo_ablate.py efficientnet_b0 mobilenet_v3_small swin_v2_t
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.fx as fx

import qgraph
from benchmarks.zoo_models import bn_warmup, zoo
from benchmarks.zoo_worker import CALIB_BATCHES, EVAL_BATCHES, fidelity, first_tensor
from qgraph.quantizer import FakeQuantize

SMOOTH = {"silu", "sigmoid", "hardswish", "hardsigmoid", "gelu", "mish", "tanh"}
INTEGER = {"conv1d", "conv2d", "conv3d", "linear", "matmul", "bmm", "conv_transpose2d"}
VARIANTS = ("bc on", "base", "float pre-act", "float stream", "both", "ranges x1.25")


def _kind(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return type(gm.get_submodule(n.target)).__name__.lower()
    if n.op == "placeholder":
        return "input"
    return getattr(n.target, "__name__", str(n.target)).lower()


def _activation_nodes(gm: fx.GraphModule) -> list[tuple[fx.Node, FakeQuantize]]:
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_module":
            m = gm.get_submodule(n.target)
            if isinstance(m, FakeQuantize) and m.role == "activation" and m.mode == "quantize":
                out.append((n, m))
    return out


def float_pre_activation(gm: fx.GraphModule) -> int:
    """Switch off quantizers on conv/linear results whose every user is a smooth activation."""
    count = 0
    for n, q in _activation_nodes(gm):
        users = {_kind(gm, u) for u in n.users}
        if _kind(gm, n.args[0]) in INTEGER and users and users <= SMOOTH:
            q.mode, count = "off", count + 1
    return count


def float_stream(gm: fx.GraphModule) -> int:
    """Give the float users of a rounded value that also feeds an integer op the unrounded value."""
    count = 0
    for n, _ in _activation_nodes(gm):
        kinds = {u: _kind(gm, u) for u in n.users}
        if set(kinds.values()) & INTEGER and set(kinds.values()) - INTEGER:
            for u, k in kinds.items():
                if k not in INTEGER:
                    u.replace_input_with(n, n.args[0])
                    count += 1
    gm.recompile()
    return count


def widen(gm: fx.GraphModule, factor: float) -> int:
    nodes = _activation_nodes(gm)
    for _, q in nodes:
        lo = (q.spec.qmin - q.zero_point) * q.scale * factor
        hi = (q.spec.qmax - q.zero_point) * q.scale * factor
        scale = (hi - lo) / (q.spec.qmax - q.spec.qmin)
        q.set_qparams(scale, torch.clamp(torch.round(q.spec.qmin - lo / scale), q.spec.qmin, q.spec.qmax))
    return len(nodes)


def _apply(variant: str, qm) -> int | None:
    gm = qm.qgraph
    if variant == "float pre-act":
        return float_pre_activation(gm)
    if variant == "float stream":
        return float_stream(gm)
    if variant == "both":
        return float_pre_activation(gm) + float_stream(gm)
    if variant == "ranges x1.25":
        return widen(gm, 1.25)
    return None


def ablate(name: str, variants: tuple[str, ...]) -> dict[str, str]:
    e = zoo()[name]
    model, make = e.build()
    bn_warmup(model, make, "none")  # the full run's regime
    x = make(0)
    calib = [make(1 + i) for i in range(CALIB_BATCHES)]
    xe = [make(1 + CALIB_BATCHES + i) for i in range(EVAL_BATCHES)]
    with torch.no_grad():
        ref = torch.cat([first_tensor(model(*b)) for b in xe])
    cells = {}
    for v in variants:
        qm = qgraph.quantize(model, x, "w8a8" if v == "bc on" else "w8a8(bias_correction=False)", calib_data=calib)
        changed = _apply(v, qm)
        with torch.no_grad(), qm.frozen():
            r = fidelity(ref, torch.cat([first_tensor(qm(*b)) for b in xe]), e.task)
        top1 = "-" if r["top1"] is None else f"{r['top1']:.1%}"
        cells[v] = f"{r['sqnr_db']:.1f} / {top1}" + ("" if changed is None else f" ({changed})")
    return cells


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    variants = tuple(args.variants.split(","))
    if unknown := set(variants) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    print("SQNR dB / top-1 agreement (quantizers or edges changed) on the zoo's 96 evaluation inputs")
    print("| model | " + " | ".join(variants) + " | s |")
    print("|" + " --- |" * (len(variants) + 2))
    for name in args.models:
        t0 = time.perf_counter()
        cells = ablate(name, variants)
        print(f"| {name} | " + " | ".join(cells[v] for v in variants) + f" | {time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
