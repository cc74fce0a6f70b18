"""Sparsity passes: attach frozen weight masks to Conv/Linear layers, and fold them for export.

``SparsifyPass(recipe)`` (in place; runs after fold_bn, before annotate, so masks are computed on
the weights that are deployed and the weight quantizer sees the masked weight):

1. For every ``conv`` / ``linear`` op whose weight is a ``get_attr`` (``qgraph.ops.classify``), a
   :class:`qgraph.sparsity.SparseMask` is inserted between the weight and the op:
   ``get_attr W → call_module <path>.weight_mask → op``; a weight read by several ops gets one mask.
2. N:M masks keep the ``n`` largest magnitudes of every group of ``m`` along each row; layers
   whose row length is not a multiple of ``m`` stay dense (recorded as ``kept dense`` with the
   reason). Unstructured masks keep the largest magnitudes of the layer (``ratio`` or its
   per-layer value).
3. Layers matching the spec's ``skip`` globs or a ``skip`` override of the recipe stay dense;
   transposed convs, embeddings and layers inside auto-leaves are not masked (recorded).

``FoldMasksPass`` (in place, on the copy that is exported): each ``get_attr W → weight_mask``
becomes ``get_attr <mask>.masked_weight`` holding ``W ⊙ mask``, so the lower pass and the ONNX
exporter see a plain (zero-filled) weight.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from qgraph.passes.base import QPass, unique_submodule_name
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.meta import MODULE_PATH_KEY
from qgraph.ops import classify, owner_type, tensor_meta
from qgraph.recipes import Recipe
from qgraph.sparsity import SparseMask, compute_mask, is_mask_node, nm_fits

SPARSE_KINDS = ("conv", "linear")


class SparsifyPass(QPass):
    name = "sparsify"

    def __init__(self, recipe: Recipe, leaves: set[str] | None = None) -> None:
        super().__init__()
        if recipe.sparsity is None:
            raise ValueError(f"recipe {recipe.name} has no sparsity")
        self.recipe = recipe
        self.spec = recipe.sparsity
        self.leaves = set(leaves or ())

    def _skipped(self, path: str, kind: str, mtype) -> bool:
        if self.spec.skips(path):
            return True
        return any(o.skip and o.matches(path, kind, mtype) for o in self.recipe.overrides)

    def call(self, gm: fx.GraphModule) -> PassResult:
        spec, done = self.spec, {}
        for node in list(gm.graph.nodes):
            info = classify(gm, node)
            if info is None or info.kind not in SPARSE_KINDS and info.kind not in ("conv_transpose", "embedding"):
                continue
            path = info.module_path
            if info.kind not in SPARSE_KINDS or info.weight is None or info.weight.op != "get_attr" or info.weight_channel_axis != 0:
                self.record("kept dense", node, path, f"{info.kind}: sparsity masks cover conv and linear weights read as [out, ...]")
                continue
            w = info.weight
            if w in done:
                node.replace_input_with(w, done[w])
                continue
            if self._skipped(path, info.kind, owner_type(gm, path)):
                self.record("kept dense", node, path, "skipped by the recipe")
                continue
            weight = _attr(gm, str(w.target))
            why = nm_fits(tuple(weight.shape), spec.m) if spec.kind == "nm" else None
            if why:
                self.record("kept dense", node, path, f"{spec.n}:{spec.m} does not fit: {why}")
                continue
            mask = compute_mask(weight, spec, path)
            name = unique_submodule_name(gm, f"{path}.weight_mask" if path else f"{w.name}_mask")
            gm.add_submodule(name, SparseMask(mask, spec.n, spec.m, where=path or w.name))
            with gm.graph.inserting_after(w):
                mnode = gm.graph.call_module(name, (w,))
            mnode.meta = {k: v for k, v in w.meta.items() if k in ("val", "tensor_meta")}
            if tensor_meta(mnode) is None:  # (canonicalize's get_attr weights carry no shape)
                mnode.meta["val"] = torch.empty_like(weight, device="meta")
            mnode.meta[MODULE_PATH_KEY] = path
            node.replace_input_with(w, mnode)
            done[w] = mnode
            what = f"{spec.n}:{spec.m}" if spec.kind == "nm" else f"{spec.ratio_for(path):.1%} unstructured"
            self.record("masked", mnode, path, f"{what} on {tuple(weight.shape)}: "
                        f"{1 - float(mask.float().mean()):.1%} of the weights are zero")
        for leaf in sorted(self.leaves):
            self.record("kept dense", leaf, leaf, "layers inside an auto-leaf are not masked")
        return self.finish(gm, bool(done))


class FoldMasksPass(QPass):
    name = "fold_masks"

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            src = node.args[0] if node.args else None
            if not is_mask_node(gm, node) or getattr(src, "op", None) != "get_attr":
                continue
            mod = gm.get_submodule(node.target)
            with torch.no_grad():
                mod.register_buffer("masked_weight", mod(_attr(gm, str(src.target)).detach()), persistent=False)
            with gm.graph.inserting_before(node):
                new = gm.graph.get_attr(f"{node.target}.masked_weight")
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            self.record("folded", new, mod.where, f"weight ⊙ mask ({mod.sparsity:.1%} zeros)")
            modified = True
        return self.finish(gm, modified)


def _attr(gm, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


__all__ = ["SparsifyPass", "FoldMasksPass"]
