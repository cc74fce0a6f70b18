"""Per-layer error analysis of a quantized graph against its float reference.

A *layer* is an op the annotate pass chose to quantize (a conv, linear, matmul, add, …). Its
*end* is the value the next layer reads: the op's result, or the ReLU fused after it, as
quantized by the layer's output quantizer when it has one. Every quantizer belongs to exactly one
layer: weight and output quantizers to the layer they serve, an input quantizer to the first layer
that reads it (an input already quantized by the layer before belongs to that one).

Measured on the same batches (:func:`analyse`):

* **cumulative** error: the fully quantized graph against the float graph at the layer's end
  (what the layer sees, with every error upstream included);
* **local** error: only this layer's quantizers switched on, everything else float, so the layer
  reads exactly the float input (its own contribution);
* **output SQNR alone**: the model output in that same run; the sensitivity ranking sorts layers by
  it (the lower, the more this one layer costs on its own);
* weight and activation statistics: ranges, clipping, histograms against the quantization grid.

SQNR is ``10·log10(Σref² / Σ(ref − q)²)`` over all batches; cosine is over the flattened values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from qgraph.meta import ANNOTATION_KEY
from qgraph.ops import is_fusable_activation
from qgraph.quantizer import FakeQuantize
from qgraph.summary import NodeRecorder

HIST_BINS = 64


@dataclass
class ErrorStats:
    """Running sums for SQNR, cosine similarity and max abs error between a reference and an approximation."""

    ref_sq: float = 0.0
    approx_sq: float = 0.0
    err_sq: float = 0.0
    dot: float = 0.0
    max_abs: float = 0.0
    count: int = 0

    def add(self, ref: torch.Tensor, approx: torch.Tensor) -> None:
        r, a = ref.detach().double().flatten(), approx.detach().double().flatten()
        d = r - a
        self.ref_sq += float(r @ r)
        self.approx_sq += float(a @ a)
        self.err_sq += float(d @ d)
        self.dot += float(r @ a)
        self.max_abs = max(self.max_abs, float(d.abs().max())) if d.numel() else self.max_abs
        self.count += r.numel()

    @property
    def sqnr_db(self) -> float:
        if self.err_sq == 0:
            return math.inf
        if self.ref_sq == 0:
            return -math.inf
        return 10 * math.log10(self.ref_sq / self.err_sq)

    @property
    def cosine(self) -> float:
        den = math.sqrt(self.ref_sq * self.approx_sq)
        return 1.0 if den == 0 and self.err_sq == 0 else (self.dot / den if den else 0.0)

    def to_json(self) -> dict:
        return {"sqnr_db": self.sqnr_db, "cosine": self.cosine, "max_abs_error": self.max_abs}


@dataclass
class Histogram:
    """Counts over fixed bins (fixed by the first tensor seen, widened to the quantizer's grid)."""

    lo: float
    hi: float
    counts: list[int] = field(default_factory=lambda: [0] * HIST_BINS)

    @classmethod
    def spanning(cls, x: torch.Tensor, grid: tuple[float, float] | None) -> Histogram:
        lo, hi = float(x.min()), float(x.max())
        if grid is not None:
            lo, hi = min(lo, grid[0]), max(hi, grid[1])
        if hi <= lo:
            hi = lo + 1e-8
        return cls(lo, hi)

    def add(self, x: torch.Tensor) -> None:
        h = torch.histc(x.detach().float().flatten().clamp(self.lo, self.hi), bins=HIST_BINS, min=self.lo, max=self.hi)
        self.counts = [c + int(v) for c, v in zip(self.counts, h.tolist())]

    def to_json(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "counts": self.counts}


@dataclass
class Layer:
    node: fx.Node  # the annotated op in the quantized graph
    end: fx.Node  # the op, or the ReLU fused after it (the value compared with the float graph)
    qend: fx.Node  # the output quantizer of ``end`` when there is one, else ``end``
    quantizers: list[str] = field(default_factory=list)  # FakeQuantize module names this layer owns


def is_quantizer(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(_module(gm, node.target), FakeQuantize)


def _module(gm: fx.GraphModule, target) -> torch.nn.Module | None:
    try:
        return gm.get_submodule(str(target))
    except AttributeError:
        return None


def find_layers(qg: fx.GraphModule) -> list[Layer]:
    """The annotated ops of ``qg`` in graph order, each with its end node and the quantizers it owns."""
    layers: list[Layer] = []
    owned: set[str] = set()
    for node in qg.graph.nodes:
        if ANNOTATION_KEY not in node.meta:
            continue
        end = node
        users = list(node.users)
        if len(users) == 1 and is_fusable_activation(qg, users[0]):
            end = users[0]
        qend = next((u for u in end.users if is_quantizer(qg, u) and _module(qg, u.target).role == "activation"), end)
        if node.op == "get_attr":  # a weight read by a call qgraph does not know: the weight itself is the layer
            qend = next((u for u in node.users if is_quantizer(qg, u)), node)
        layer = Layer(node, end, qend)
        if qend is not end or node.op == "get_attr":
            layer.quantizers.append(str(qend.target))
        for inp in node.all_input_nodes:
            if is_quantizer(qg, inp) and _module(qg, inp.target).role == "weight":
                layer.quantizers.append(str(inp.target))
        if node.op == "call_module":  # a swapped QuantizedModule: its quantizers live inside it
            mod = _module(qg, node.target)
            layer.quantizers += [f"{node.target}.{n}" for n, m in mod.named_modules() if n and isinstance(m, FakeQuantize)]
        owned.update(layer.quantizers)
        layers.append(layer)
    for layer in layers:  # input quantizers: the first layer reading one owns it, unless another layer already does
        for inp in layer.node.all_input_nodes:
            if is_quantizer(qg, inp) and str(inp.target) not in owned:
                layer.quantizers.append(str(inp.target))
                owned.add(str(inp.target))
    return layers


def _run(gm: fx.GraphModule, args: tuple, keep: set[str], inputs_of: set[str] = frozenset(), on_input=None):
    rec = NodeRecorder(gm, keep, inputs_of, on_input)
    with torch.no_grad():
        out = rec.run(*args)
    return rec.values, out


def _flat_output(out) -> torch.Tensor:
    leaves = [t.detach().float().flatten() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return torch.cat(leaves) if leaves else torch.zeros(0)


def _logits(out) -> torch.Tensor | None:
    leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return leaves[0] if len(leaves) == 1 and leaves[0].dim() == 2 and leaves[0].shape[1] > 1 else None


class _OnlyQuantizers:
    """Context: every FakeQuantize of ``gm`` off except ``names`` (modes restored afterwards)."""

    def __init__(self, gm: fx.GraphModule, names: list[str]) -> None:
        self.quantizers = {n: m for n, m in gm.named_modules() if isinstance(m, FakeQuantize)}
        self.names = set(names)

    def __enter__(self):
        self.saved = {n: m.mode for n, m in self.quantizers.items()}
        for n, m in self.quantizers.items():
            if n not in self.names:
                m.mode = "off"
        return self

    def __exit__(self, *exc):
        for n, m in self.quantizers.items():
            m.mode = self.saved[n]


def grid_range(q: FakeQuantize) -> tuple[float, float] | None:
    """The smallest and largest value a per-tensor quantizer can represent (``None`` per channel)."""
    if not q.initialized or q.scale.numel() != 1:
        return None
    s, z = float(q.effective_scale().detach().reshape(-1)[0]), float(q.zero_point.detach().reshape(-1)[0]) if q.zero_point.numel() else 0.0
    return s * (q.spec.qmin - z), s * (q.spec.qmax - z)


@dataclass
class Analysis:
    """What :func:`analyse` measured, keyed by layer node name / quantizer module name."""

    layers: list[Layer]
    cumulative: dict[str, ErrorStats]
    local: dict[str, ErrorStats]
    output_alone: dict[str, ErrorStats]
    output: ErrorStats
    top1_agreement: float | None
    act_range: dict[str, tuple[float, float]]  # layer -> observed float range at its end
    act_hist: dict[str, Histogram]  # activation quantizer -> histogram of the values it quantizes
    clipped: dict[str, float]  # activation quantizer -> fraction of values outside its grid
    batches: int


def analyse(qg: fx.GraphModule, fg: fx.GraphModule, batches: list[tuple], local: bool = True) -> Analysis:
    """Run the float and the quantized graph on ``batches`` and measure every layer (module docstring)."""
    layers = find_layers(qg)
    float_names = {n.name for n in fg.graph.nodes}
    layers_cmp = [ly for ly in layers if ly.end.name in float_names]
    ends = {ly.end.name for ly in layers_cmp}
    qends = {ly.qend.name for ly in layers_cmp}
    act_q = {n.name: n for n in qg.graph.nodes if is_quantizer(qg, n) and _module(qg, n.target).role == "activation"}
    cumulative = {ly.node.name: ErrorStats() for ly in layers_cmp}
    local_stats = {ly.node.name: ErrorStats() for ly in layers_cmp}
    alone = {ly.node.name: ErrorStats() for ly in layers_cmp}
    output = ErrorStats()
    act_range: dict[str, tuple[float, float]] = {}
    hist: dict[str, Histogram] = {}
    clip_counts: dict[str, list[int]] = {}
    agree, total = 0, 0

    def on_input(n: fx.Node, x: torch.Tensor) -> None:
        q = _module(qg, n.target)
        if not q.initialized or q.mode != "quantize":
            return
        g = grid_range(q)
        key = str(n.target)
        if key not in hist:
            hist[key] = Histogram.spanning(x, g)
        hist[key].add(x)
        if g is not None:
            c = clip_counts.setdefault(key, [0, 0])
            c[0] += int(((x < g[0]) | (x > g[1])).sum())
            c[1] += x.numel()

    for args in batches:
        ref, ref_raw = _run(fg, args, ends)
        got, got_raw = _run(qg, args, qends, set(act_q), on_input)
        ref_out = _flat_output(ref_raw)
        output.add(ref_out, _flat_output(got_raw))
        lf, lq = _logits(ref_raw), _logits(got_raw)
        if lf is not None and lq is not None:
            agree += int((lf.argmax(1) == lq.argmax(1)).sum())
            total += lf.shape[0]
        for ly in layers_cmp:
            r = ref.get(ly.end.name)
            if r is None:  # a value that is not a tensor: nothing to compare
                continue
            lo, hi = act_range.get(ly.node.name, (math.inf, -math.inf))
            act_range[ly.node.name] = (min(lo, float(r.min())), max(hi, float(r.max())))
            if got.get(ly.qend.name) is not None and got[ly.qend.name].shape == r.shape:
                cumulative[ly.node.name].add(r, got[ly.qend.name])
        if not local:
            continue
        for ly in layers_cmp:
            with _OnlyQuantizers(qg, ly.quantizers):
                one, one_out = _run(qg, args, {ly.qend.name})
            v, r = one.get(ly.qend.name), ref.get(ly.end.name)
            if v is not None and r is not None and v.shape == r.shape:
                local_stats[ly.node.name].add(r, v)
            alone[ly.node.name].add(ref_out, _flat_output(one_out))
    clipped = {k: c[0] / c[1] for k, c in clip_counts.items() if c[1]}
    return Analysis(layers, cumulative, local_stats if local else {}, alone if local else {}, output,
                    agree / total if total else None, act_range, hist, clipped, len(batches))
