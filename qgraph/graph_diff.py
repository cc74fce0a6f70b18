"""``qgraph.diff(before, after)``: what a rewrite did to a graph, in the user's module paths.

Nodes are matched by name (fx keeps a node's name through in-place passes):

1. a name only in ``after`` is **added** (a quantizer the insert pass put in, a functional conv
   canonicalize made of a module call);
2. a name only in ``before`` is **removed** (a folded BatchNorm, a replaced module call);
3. a name in both whose op, target or inputs differ is **changed** (a conv now reading its
   weight through a quantizer).

Each entry names the passes whose :class:`Change` records mention the node, when the changes are
known (``diff(qm)`` uses the QModel's). ``graph_json`` is the same comparison as the union graph
the HTML explorer draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.fx as fx

from qgraph.errors import InputError
from qgraph.ops import module_path, tensor_meta


@dataclass
class NodeDiff:
    name: str
    status: str  # "added", "removed", "changed"
    op: str
    target: str
    module_path: str
    detail: str = ""
    passes: list[str] = field(default_factory=list)  # "pass: action" of the changes that mention the node

    def __str__(self) -> str:
        mark = {"added": "+", "removed": "-", "changed": "~"}[self.status]
        by = f"  [{'; '.join(self.passes)}]" if self.passes else ""
        detail = f"  {self.detail}" if self.detail else ""
        return f"{mark} {self.name} = {self.op} {self.target}{detail}{by}"


@dataclass
class GraphDiff:
    added: list[NodeDiff]
    removed: list[NodeDiff]
    changed: list[NodeDiff]
    unchanged: int

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    @property
    def entries(self) -> list[NodeDiff]:
        return self.removed + self.changed + self.added

    def __str__(self) -> str:
        head = (f"graph diff: {len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed, "
                f"{self.unchanged} unchanged")
        groups: dict[str, list[NodeDiff]] = {}
        for e in self.entries:
            groups.setdefault(e.module_path, []).append(e)
        lines = [head]
        for path in sorted(groups, key=lambda p: (p == "", p)):
            lines.append(path or "(root)")
            lines += [f"  {e}" for e in groups[path]]
        return "\n".join(lines)

    __repr__ = __str__


def _target(node: fx.Node) -> str:
    return str(getattr(node.target, "__name__", node.target))


def _inputs(node: fx.Node) -> list[str]:
    return [n.name for n in node.all_input_nodes]


def _graph(obj) -> tuple[fx.Graph, list]:
    from qgraph.model import QModel

    if isinstance(obj, QModel):
        return obj.qgraph.graph, list(obj.changes)
    if isinstance(obj, fx.GraphModule):
        return obj.graph, []
    if isinstance(obj, fx.Graph):
        return obj, []
    raise InputError(f"diff compares fx graphs, GraphModules (a QGraph) or QModels, got {type(obj).__name__}")


def _passes_by_node(changes) -> dict[str, list[str]]:
    by: dict[str, list[str]] = {}
    for c in changes:
        label = f"{c.pass_name}: {c.action}"
        for key in {c.node, c.node.replace(".", "_")}:
            if label not in by.get(key, []):
                by.setdefault(key, []).append(label)
    return by


def diff(before, after=None, changes=None) -> GraphDiff:
    """Compare two graphs (``fx.Graph``, ``GraphModule``/``QGraph`` or ``QModel``). ``diff(qm)``
    compares a QModel's float reference graph (after canonicalize and BatchNorm folding) with its
    quantized graph; ``changes`` (default: the QModel's) label each entry with the passes involved."""
    from qgraph.model import QModel

    if after is None:
        if not isinstance(before, QModel) or before._float_graph is None:
            raise InputError("diff(x) with one argument needs a QModel (its float graph vs its quantized graph)")
        before, after = before._float_graph, before
    gb, _ = _graph(before)
    ga, model_changes = _graph(after)
    by_node = _passes_by_node(changes if changes is not None else model_changes)
    nb = {n.name: n for n in gb.nodes}
    na = {n.name: n for n in ga.nodes}

    def entry(n: fx.Node, status: str, detail: str = "") -> NodeDiff:
        return NodeDiff(n.name, status, n.op, _target(n), module_path(n), detail, by_node.get(n.name, []))

    added = [entry(n, "added", f"({', '.join(_inputs(n))})") for n in ga.nodes if n.name not in nb]
    removed = [entry(n, "removed") for n in gb.nodes if n.name not in na]
    changed, same = [], 0
    for n in ga.nodes:
        if n.name not in nb:
            continue
        b = nb[n.name]
        parts = []
        if (b.op, _target(b)) != (n.op, _target(n)):
            parts.append(f"was {b.op} {_target(b)}")
        ib, ia = _inputs(b), _inputs(n)
        if ib != ia:
            swaps = [f"{x} -> {y}" for x, y in zip(ib, ia) if x != y]
            if len(ib) != len(ia):
                swaps.append(f"{len(ib)} -> {len(ia)} inputs")
            parts.append("inputs " + ", ".join(swaps))
        if parts:
            changed.append(entry(n, "changed", "; ".join(parts)))
        else:
            same += 1
    return GraphDiff(added, removed, changed, same)


def graph_json(before: fx.GraphModule | None, after: fx.GraphModule, changes) -> dict:
    """The union of ``before`` and ``after`` as ``{"nodes": [...], "edges": [...]}`` for the explorer.

    Node fields: ``id``, ``op``, ``target``, ``module``, ``shape``, ``status`` (added / removed /
    changed / same), ``passes`` (changes naming it), ``quantizer`` (module name, for quantizer
    nodes), ``layer`` (the annotated op it belongs to), ``order`` (graph order). Edge: ``[src, dst,
    where]`` with ``where`` "both", "before" or "after".
    """
    from qgraph.layer_metrics import find_layers, is_quantizer

    d = diff(before, after, changes) if before is not None else GraphDiff([], [], [], 0)
    status = {e.name: e.status for e in d.entries}
    by_node = _passes_by_node(changes)
    layer_of: dict[str, str] = {}
    for ly in find_layers(after):
        for n in (ly.node, ly.end, ly.qend):
            layer_of.setdefault(n.name, ly.node.name)
        for inp in ly.node.all_input_nodes:
            if is_quantizer(after, inp):
                layer_of.setdefault(inp.name, ly.node.name)
                if inp.args and getattr(inp.args[0], "op", None) == "get_attr":
                    layer_of.setdefault(inp.args[0].name, ly.node.name)
            elif inp.op == "get_attr":
                layer_of.setdefault(inp.name, ly.node.name)

    def node_json(n: fx.Node, order: float, where: str) -> dict:
        tm = tensor_meta(n)
        return {
            "id": n.name, "op": n.op, "target": _target(n), "module": module_path(n),
            "shape": [d if isinstance(d, int) else str(d) for d in tm[0]] if tm else None, "status": status.get(n.name, "same"),
            "passes": by_node.get(n.name, []),
            "quantizer": str(n.target) if where == "after" and is_quantizer(after, n) else None,
            "layer": layer_of.get(n.name), "order": order,
        }

    nodes, index = [], {}
    for i, n in enumerate(after.graph.nodes):
        index[n.name] = i
        nodes.append(node_json(n, float(i), "after"))
    edges = {(a.name, n.name): "after" for n in after.graph.nodes for a in n.all_input_nodes}
    if before is not None:
        last = -1.0
        for n in before.graph.nodes:
            if n.name in index:
                last = float(index[n.name])
                continue
            last += 0.001  # a removed node sits where it was, just after its predecessor in the before graph
            nodes.append(node_json(n, last, "before"))
        for n in before.graph.nodes:
            for a in n.all_input_nodes:
                key = (a.name, n.name)
                edges[key] = "both" if key in edges else "before"
    nodes.sort(key=lambda x: x["order"])
    return {"nodes": nodes, "edges": [[a, b, w] for (a, b), w in edges.items()]}
