"""The base of every qgraph pass: ``torch.fx.passes.infra`` plus a record of what changed."""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from qgraph.dead_code import eliminate_dead_code
from qgraph.meta import ANNOTATION_KEY  # noqa: F401  (re-exported for passes)


@dataclass(frozen=True)
class Change:
    """One edit a pass made, in the user's terms."""

    pass_name: str
    action: str  # e.g. "inserted", "folded", "replaced", "annotated", "calibrated", "lowered"
    node: str
    module_path: str
    detail: str = ""

    def __str__(self) -> str:
        where = f" at {self.module_path}" if self.module_path else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"[{self.pass_name}] {self.action} {self.node}{where}{detail}"


class QPass(PassBase):
    """A graph pass that mutates the GraphModule in place and records its changes in ``changes``."""

    name = "pass"
    float_rewrite = False  # rewrites the float model without quantizing it (the pipeline runs these first)

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[Change] = []

    def record(self, action: str, node: fx.Node | str, module_path: str = "", detail: str = "") -> None:
        name = node.name if isinstance(node, fx.Node) else str(node)
        self.changes.append(Change(self.name, action, name, module_path, detail))

    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        """Run the pass (requires → call → ensures) and return the graph module it edited in place."""
        result = self(gm)
        if result is None:
            return gm
        if result.graph_module is not gm:
            raise RuntimeError(f"pass {self.name} must edit the graph module in place")
        return gm

    def finish(self, gm: fx.GraphModule, modified: bool) -> PassResult:
        if modified:
            eliminate_dead_code(gm.graph)
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified)


def unique_submodule_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while _has_submodule(gm, name):
        name = f"{base}_{i}"
        i += 1
    return name


def _has_submodule(gm: fx.GraphModule, name: str) -> bool:
    try:
        gm.get_submodule(name)
        return True
    except AttributeError:
        return False
