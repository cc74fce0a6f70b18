"""QGraph: an ``fx.GraphModule`` with shapes on every node, capture notes and a networkx view."""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp, _extract_tensor_metadata
from torch.nn.utils.rnn import PackedSequence

from qgraph.errors import ShapeGuardError
from qgraph.meta import CAPTURE_KEY, LAYOUT_KEY
from qgraph.ops import module_path, tensor_meta


@dataclass
class CaptureInfo:
    """How a model became a graph: the route taken and what stayed opaque (and why)."""

    route: str  # "symbolic_trace" or "torch.export"
    leaves: dict[str, str] = field(default_factory=dict)  # module path -> reason it became a leaf
    notes: list[str] = field(default_factory=list)
    upcast: bool = False  # a float16/bfloat16/float64 model captured as float32: such inputs are cast (qgraph.precision)
    static_batch: bool = False  # a torch.export capture whose batch dim was fixed (the ONNX file keeps it fixed too)
    static_sequence: bool = False  # ... whose token inputs' sequence length was fixed (qgraph.batch_dim)
    keywords: tuple[str, ...] | None = None  # example inputs given by name: the graph's inputs, in order (qgraph.keyword_inputs)
    dynamic_dims: dict[str, dict[int, str]] | None = None  # dims the model declared dynamic (qgraph.batch_dim.declared_dynamic_dims)

    def describe(self) -> str:
        lines = [f"captured with {self.route}"]
        for path, reason in self.leaves.items():
            lines.append(f"  leaf {path}: {reason}")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


class QGraph(fx.GraphModule):
    """A captured model. Everything ``fx.GraphModule`` offers, plus:

    * ``capture``: a :class:`CaptureInfo` (route, leaves and why);
    * ``to_networkx()``: the data-flow graph as a ``networkx.DiGraph`` for analyses;
    * ``table()``: a readable listing of nodes with module paths, shapes and dtypes.
    """

    def __init__(self, root, graph: fx.Graph, class_name: str = "QGraph", capture: CaptureInfo | None = None):
        super().__init__(_rename_reserved(root, graph), graph, class_name)
        if capture is not None:
            self.meta[CAPTURE_KEY] = capture

    def __call__(self, *args, **kwargs):
        if self.capture.upcast:
            from qgraph.precision import float32_inputs

            args = float32_inputs(args)
            kwargs = dict(zip(kwargs, float32_inputs(tuple(kwargs.values()))))
        try:
            return super().__call__(*args, **kwargs)
        except AssertionError as e:  # a torch.export capture checks the shapes it was specialised to
            if not str(e).startswith("Guard failed"):
                raise
            given = [*args, *kwargs.values()]
            shapes = ", ".join(str(tuple(a.shape)) for a in given if isinstance(a, torch.Tensor))
            guard = str(e).removeprefix("Guard failed: ")
            values = [a for a in given if isinstance(a, str) and repr(a) not in guard]
            if values or "'" in guard:  # a string input (a task name) is a constant of the graph
                raise ShapeGuardError(f"this model was captured with torch.export, which fixed the value of its non-tensor "
                                      f"inputs: {guard} does not hold for {', '.join(map(repr, values)) or 'these inputs'}. "
                                      f"Such an input is part of the graph: quantize once per value (e.g. per task)",
                                      guard=guard) from e
            raise ShapeGuardError(f"this model was captured with torch.export, which fixed its input shapes (or values): "
                                  f"{guard} does not hold for inputs of shape {shapes}. "
                                  f"Run it on inputs shaped like the example inputs, or capture again with example "
                                  f"inputs of the new shape", guard=guard) from e

    @property
    def capture(self) -> CaptureInfo:
        return self.meta.get(CAPTURE_KEY) or CaptureInfo(route="unknown")

    def to_networkx(self) -> nx.DiGraph:
        g = nx.DiGraph()
        for node in self.graph.nodes:
            tm = tensor_meta(node)
            g.add_node(
                node.name,
                op=node.op,
                target=str(getattr(node.target, "__name__", node.target)),
                module_path=module_path(node),
                shape=tm[0] if tm else None,
                dtype=str(tm[1]) if tm else None,
            )
            for inp in node.all_input_nodes:
                g.add_edge(inp.name, node.name)
        return g

    def table(self) -> str:
        rows = [("node", "op", "target", "module path", "shape", "dtype")]
        for node in self.graph.nodes:
            tm = tensor_meta(node)
            target = getattr(node.target, "__name__", None) or str(node.target)
            rows.append((node.name, node.op, target, module_path(node), str(list(tm[0])) if tm else "", str(tm[1]).replace("torch.", "") if tm else ""))
        widths = [min(48, max(len(r[i]) for r in rows)) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c[:48].ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def __str__(self) -> str:
        """Code-like lines grouped by module path (``qgraph.graph_listing``); ``table()`` is the flat listing."""
        from qgraph.graph_listing import format_graph

        return format_graph(self, f"QGraph ({self.capture.route}, {len(self.graph.nodes)} nodes)")


def _rename_reserved(root, graph: fx.Graph):
    """A model attribute named like a QGraph member (``table``, ``capture``, ...) would collide with it when
    the graph module copies the model's attributes: give it a free name in the graph (``table_attr``), on a
    shallow copy of the root, so the model itself is untouched. Messages keep the original module paths."""
    reserved = {n for n in vars(QGraph) if not n.startswith("_")}
    firsts = {str(n.target).split(".")[0] for n in graph.nodes if n.op in ("get_attr", "call_module")}
    clash = sorted(firsts & reserved)
    if not clash or not isinstance(root, torch.nn.Module):
        return root
    proxy = copy.copy(root)  # a new __dict__; the parameter / buffer / module tables are copied below
    proxy._parameters, proxy._buffers, proxy._modules = dict(root._parameters), dict(root._buffers), dict(root._modules)
    for name in clash:
        new = name + "_attr"
        while hasattr(root, new) or new in firsts:
            new += "_"
        for table in (proxy._parameters, proxy._buffers, proxy._modules, proxy.__dict__):
            if name in table:
                table[new] = table.pop(name)
        for node in graph.nodes:
            t = str(node.target)
            if node.op in ("get_attr", "call_module") and (t == name or t.startswith(name + ".")):
                node.target = new + t[len(name):]
    return proxy


class _ShapeProp(ShapeProp):
    """torch.fx's ShapeProp (without a fake mode) that records no metadata for a ``PackedSequence``,
    alone or in a tuple: ShapeProp rebuilds the named tuple from metadata, and its constructor checks
    its fields' devices. A sparse tensor's layout is recorded under ``LAYOUT_KEY``."""

    def run_node(self, n: fx.Node):
        if self.fake_mode is not None:
            return super().run_node(n)
        try:
            result = fx.Interpreter.run_node(self, n)
        except Exception as e:
            raise RuntimeError(f"ShapeProp error for: node={n.format_node()} with meta={n.meta}") from e
        found = False

        def extract(obj):
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _extract_tensor_metadata(obj)
            return obj

        meta = fx.node.map_aggregate(_without_packed(result), extract)
        if found:
            n.meta["tensor_meta"] = meta
        elif isinstance(result, (int, float, bool)):  # a size or a Python number: as torch.export records it
            n.meta.setdefault("val", result)
        if isinstance(result, torch.Tensor) and result.layout != torch.strided:
            n.meta[LAYOUT_KEY] = result.layout  # a sparse tensor: ShapeProp's metadata has no layout
        n.meta["type"] = type(result)
        return result


def _without_packed(value):
    """``value`` with each ``PackedSequence`` in it (an LSTM's ``(output, (h, c))``) replaced by None."""
    if isinstance(value, PackedSequence):
        return None
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(_without_packed(v) for v in value)
    return value


def record_shapes(gm: fx.GraphModule, example_inputs: tuple):
    """Record shape and dtype on every node (``node.meta['val']`` for tensors), by running the graph;
    returns the graph's outputs of that run."""
    # ShapeProp prints the traceback of a failing node before it raises; capture catches the error,
    # records it and tries the next route, so the user would see a traceback for a capture that worked
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        out = _ShapeProp(gm).propagate(*example_inputs)
    for node in gm.graph.nodes:
        tm = node.meta.get("tensor_meta")
        if "val" not in node.meta and tm is not None and hasattr(tm, "shape"):
            node.meta["val"] = torch.empty(tm.shape, dtype=tm.dtype, device="meta")
    return out
