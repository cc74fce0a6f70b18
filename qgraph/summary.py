"""Per-node summary: which quantizer each op got, its scales, and the error it causes (SQNR)."""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from qgraph.meta import ANNOTATION_KEY
from qgraph.quantizer import FakeQuantize


class NodeRecorder(fx.Interpreter):
    """Runs a graph; keeps copies of chosen node outputs (by name), and hands chosen nodes' first
    inputs to a callback. Copies: an in-place op after a node (timm's ``SiLU(inplace=True)``) would
    otherwise overwrite the kept output with the activation's."""

    def __init__(self, gm: fx.GraphModule, keep: set[str], inputs_of: set[str] = frozenset(), on_input=None) -> None:
        super().__init__(gm)
        self.keep, self.inputs_of, self.on_input = keep, inputs_of, on_input
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        if n.name in self.inputs_of and self.on_input is not None:
            arg = self.env.get(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
            if isinstance(arg, torch.Tensor):
                self.on_input(n, arg)
        out = super().run_node(n)
        if n.name in self.keep:
            # a module call that returns a tuple (MultiheadAttention: output, weights) is kept as its first tensor
            value = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(value, torch.Tensor):
                self.values[n.name] = value.detach().clone()
        return out


def node_outputs(gm: fx.GraphModule, args: tuple, names: set[str]) -> dict[str, torch.Tensor]:
    rec = NodeRecorder(gm, names)
    with torch.no_grad():
        rec.run(*args)
    return rec.values


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(‖ref‖² / ‖ref − approx‖²)."""
    noise = (reference.float() - approx.float()).pow(2).sum().item()
    signal = reference.float().pow(2).sum().item()
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def _quantizer_nodes(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    """The quantizers an op reads; for a weight annotated on its ``get_attr`` (experts, weights read by
    unknown calls), the quantizer that reads it."""
    around = list(node.users) if node.op == "get_attr" else node.all_input_nodes
    return [n for n in around if n.op == "call_module" and isinstance(gm.get_submodule(n.target), FakeQuantize)]


def _quantizers_of(gm: fx.GraphModule, node: fx.Node) -> list[FakeQuantize]:
    return [gm.get_submodule(n.target) for n in _quantizer_nodes(gm, node)]


def summary_rows(qgraph: fx.GraphModule, float_graph: fx.GraphModule | None, args: tuple | None) -> list[dict]:
    annotated = [n for n in qgraph.graph.nodes if ANNOTATION_KEY in n.meta]
    names = {n.name for n in annotated}
    err: dict[str, float] = {}
    if float_graph is not None and args is not None:
        # a get_attr weight is compared after its quantizer (the float graph reads the same name unquantized)
        seen = {n.name: (qs[0].name if n.op == "get_attr" and (qs := _quantizer_nodes(qgraph, n)) else n.name) for n in annotated}
        ref = node_outputs(float_graph, args, names)
        got = node_outputs(qgraph, args, set(seen.values()))
        err = {k: sqnr_db(ref[k], got[seen[k]]) for k in names
               if k in ref and seen[k] in got and ref[k].shape == got[seen[k]].shape}
    rows = []
    for n in annotated:
        ann = n.meta[ANNOTATION_KEY]
        scales = [q.scale_range() for q in _quantizers_of(qgraph, n) if q.scale_range()]
        wq = next((q for q in _quantizers_of(qgraph, n) if q.role == "weight"), None)
        rows.append({
            "node": n.name,
            "op": ann.kind,
            "module": ann.module_path,
            "weight": ann.weight.describe() if ann.weight else "float",
            "activation": ann.activation.describe() if ann.activation else "float",
            "bits": (f"w{ann.weight.bits}" if ann.weight else "w-") + (f"a{ann.activation.bits}" if ann.activation else "a-"),
            "granularity": str(ann.weight.granularity) if ann.weight else str(ann.activation.granularity),
            "weight_scale": wq.scale_range() if wq is not None else None,
            "scale_min": min(s[0] for s in scales) if scales else None,
            "scale_max": max(s[1] for s in scales) if scales else None,
            "sqnr_db": err.get(n.name),
        })
    return rows


def format_rows(rows: list[dict]) -> str:
    """The rows as an aligned text table ("w8a-" reads: 8-bit weights, float activations)."""
    header = ("op", "module", "bits", "weight quantizer", "scale range", "SQNR dB")
    lines = [header]
    for r in rows:
        sr = f"{r['scale_min']:.3g}..{r['scale_max']:.3g}" if r["scale_min"] is not None else "-"
        sq = "-" if r["sqnr_db"] is None else ("inf" if math.isinf(r["sqnr_db"]) else f"{r['sqnr_db']:.1f}")
        lines.append((r["op"], r["module"] or r["node"], r["bits"], r["weight"], sr, sq))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)
