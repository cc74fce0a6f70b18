"""InsertQuantizersPass: turn annotations into FakeQuantize modules in the graph.

Placement follows what ONNX Runtime fuses into integer kernels (``DQ → op → Q``):

1. **Weights**: ``get_attr W → call_module <path>.weight_quantizer → op`` (one quantizer per
   weight, shared by every op that reads it).
2. **Activation inputs** of an annotated op are quantized unless they already are: a value counts
   as quantized when it comes from a quantizer directly or through pass-through ops (max-pool,
   reshape, flatten, permute, dropout, …), which keep their input's grid.
3. **Outputs** of an annotated op are quantized after the op, or after the ReLU-like op that is its
   only user (ORT fuses Conv+ReLU), so that the next op sees a quantized input.
4. **Modules** (annotated ``call_module`` Conv/Linear, and Conv/Linear children of auto-leaves)
   are swapped for :class:`qgraph.wrappers.QuantizedModule` with the same quantizers.

Quantizers are registered as submodules next to the layer they serve (``conv1.weight_quantizer``,
``conv1.input_quantizer``, ``layer1.0.add_output_quantizer``; a swapped module's graph-level output
quantizer is its sibling ``<path>_output_quantizer``), so ``state_dict`` keys read as paths.
"""

from __future__ import annotations

import torch.fx as fx
from qgraph.passes.base import ANNOTATION_KEY, QPass, unique_submodule_name
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.granularity import PerChannel, PerGroup, PerTensor
from qgraph.meta import MODULE_PATH_KEY
from qgraph.ops import classify, is_fusable_activation, is_passthrough
from qgraph.qspec import QSpec
from qgraph.quantizer import FakeQuantize
from qgraph.recipes import Recipe
from qgraph.wrappers import SWAPPABLE, QuantizedModule


def is_quantizer_node(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    try:
        return isinstance(gm.get_submodule(node.target), FakeQuantize)
    except AttributeError:
        return False


class InsertQuantizersPass(QPass):
    name = "insert_quantizers"

    def __init__(self, recipe: Recipe, leaves: set[str] | None = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.leaves = set(leaves or ())

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        weight_q: dict[fx.Node, fx.Node] = {}
        input_q: dict[fx.Node, fx.Node] = {}
        for node in list(gm.graph.nodes):
            ann = node.meta.get(ANNOTATION_KEY)
            if ann is None:
                continue
            if node.op == "call_module":
                modified |= self._swap(gm, str(node.target), ann.weight, ann.activation, node)
                continue
            path = ann.module_path
            info = classify(gm, node)
            if ann.weight is not None:
                w = info.weight
                if w not in weight_q:
                    weight_q[w] = self._insert_after(gm, w, ann.weight, "weight", f"{path}.weight_quantizer" if path else f"{w.name}_quantizer", path)
                self._replace_arg(node, w, weight_q[w])
                modified = True
            if ann.activation is None:
                continue
            for i, a in enumerate(info.activations if info else []):
                if self._is_quantized(gm, a):
                    continue
                if a not in input_q:
                    name = self._name(path, node, "input_quantizer" if len(info.activations) == 1 else f"input_quantizer_{i}")
                    input_q[a] = self._insert_after(gm, a, ann.activation, "activation", name, path)
                self._replace_arg(node, a, input_q[a])
                modified = True
            out = node
            users = list(node.users)
            if len(users) == 1 and is_fusable_activation(gm, users[0]):
                out = users[0]
            if out.users and not all(is_quantizer_node(gm, u) for u in out.users):
                q = self._insert_after(gm, out, ann.activation, "activation", self._name(path, node, "output_quantizer"), path)
                out.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
                modified = True
        for leaf in sorted(self.leaves):
            modified |= self._quantize_leaf(gm, leaf)
        return self.finish(gm, modified)

    # ----------------------------------------------------------------- helpers
    def _name(self, path: str, node: fx.Node, role: str) -> str:
        weighted = node.meta[ANNOTATION_KEY].weight is not None
        if weighted and path:
            return f"{path}.{role}"
        return f"{path}.{node.name}_{role}" if path else f"{node.name}_{role}"

    def _insert_after(self, gm, value: fx.Node, spec: QSpec, role: str, name: str, path: str) -> fx.Node:
        name = unique_submodule_name(gm, name)
        gm.add_submodule(name, FakeQuantize(spec, role, where=path or value.name))
        with gm.graph.inserting_after(value):
            q = gm.graph.call_module(name, (value,))
        q.meta = {k: v for k, v in value.meta.items() if k in ("val", "tensor_meta", "nn_module_stack")}
        q.meta[MODULE_PATH_KEY] = path
        self.record("inserted", q, path, f"{role} quantizer {spec.describe()} on {value.name}")
        return q

    @staticmethod
    def _replace_arg(node: fx.Node, old: fx.Node, new: fx.Node) -> None:
        node.replace_input_with(old, new)

    def _is_quantized(self, gm, value: fx.Node) -> bool:
        seen = value
        while True:
            if is_quantizer_node(gm, seen):
                return True
            if is_passthrough(gm, seen) and seen.args and isinstance(seen.args[0], fx.Node):
                seen = seen.args[0]
                continue
            return False

    def _swap(self, gm, path: str, wspec: QSpec | None, aspec: QSpec | None, node: fx.Node | None = None) -> bool:
        mod = gm.get_submodule(path)
        if not isinstance(mod, SWAPPABLE):
            return False
        wspec = module_weight_spec(mod, wspec) if wspec else None
        wq = FakeQuantize(wspec, "weight", where=path) if wspec else None
        iq = FakeQuantize(aspec, "activation", where=path) if aspec else None
        oq = FakeQuantize(aspec, "activation", where=path) if aspec and node is None else None
        parent_path, _, child = path.rpartition(".")
        parent = gm.get_submodule(parent_path) if parent_path else gm
        setattr(parent, child, QuantizedModule(mod, wq, iq, oq))
        self.record("swapped", node.name if node is not None else path, path, f"{type(mod).__name__} → QuantizedModule")
        if node is not None and aspec is not None and node.users:
            q = self._insert_after(gm, node, aspec, "activation", f"{path}_output_quantizer", path)
            node.replace_all_uses_with(q, delete_user_cb=lambda u: u is not q)
        return True

    def _quantize_leaf(self, gm, leaf: str) -> bool:
        """Swap the Conv/Linear layers inside an auto-leaf (fx could not trace into it)."""
        try:
            root = gm.get_submodule(leaf)
        except AttributeError:
            return False
        modified = False
        for name, mod in list(root.named_modules()):
            path = f"{leaf}.{name}" if name else leaf
            if not name or not isinstance(mod, SWAPPABLE) or isinstance(mod, QuantizedModule):
                continue
            kind = "linear" if isinstance(mod, nn.Linear) else "conv_transpose" if "Transpose" in type(mod).__name__ else "conv"
            d = self.recipe.decide(path, kind, type(mod))
            if d.quantized:
                modified |= self._swap(gm, path, d.weight, d.activation)
        return modified


def module_weight_spec(mod: nn.Module, spec: QSpec) -> QSpec:
    """Fit a weight spec to a module's weight layout (rules 2 and 3 of the annotate pass)."""
    g = spec.granularity
    transposed = isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    if isinstance(g, PerGroup) and (not isinstance(mod, nn.Linear) or mod.weight.shape[-1] % g.size):
        g = PerChannel(0)
    if transposed and isinstance(g, PerChannel):
        g = PerChannel(1) if mod.groups == 1 else PerTensor()
    return spec.with_(granularity=g)


__all__ = ["InsertQuantizersPass", "is_quantizer_node", "module_weight_spec"]
