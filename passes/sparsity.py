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

``PruneMasksPass(masks)`` keeps the masks of a model pruned with ``torch.nn.utils.prune`` the same
way (combined with a recipe's mask where both apply), so that training keeps the pruned weights zero.

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
            mnode = insert_mask(gm, node, w, SparseMask(mask, spec.n, spec.m, where=path or w.name), path)
            done[w] = mnode
            what = f"{spec.n}:{spec.m}" if spec.kind == "nm" else f"{spec.ratio_for(path):.1%} unstructured"
            self.record("masked", mnode, path, f"{what} on {tuple(weight.shape)}: "
                        f"{1 - float(mask.float().mean()):.1%} of the weights are zero")
        for leaf in sorted(self.leaves):
            self.record("kept dense", leaf, leaf, "layers inside an auto-leaf are not masked")
        return self.finish(gm, bool(done))


def insert_mask(gm: fx.GraphModule, node: fx.Node, w: fx.Node, mask: SparseMask, path: str) -> fx.Node:
    """``get_attr W → call_module <path>.weight_mask → node``: ``node`` reads ``W ⊙ mask``."""
    name = unique_submodule_name(gm, f"{path}.weight_mask" if path else f"{w.name}_mask")
    gm.add_submodule(name, mask)
    with gm.graph.inserting_after(w):
        mnode = gm.graph.call_module(name, (w,))
    mnode.meta = {k: v for k, v in w.meta.items() if k in ("val", "tensor_meta")}
    if tensor_meta(mnode) is None:  # (canonicalize's get_attr weights carry no shape)
        mnode.meta["val"] = torch.empty(tuple(mask.mask.shape), device="meta")
    mnode.meta[MODULE_PATH_KEY] = path
    node.replace_input_with(w, mnode)
    return mnode


class PruneMasksPass(QPass):
    """Keeps the masks of ``torch.nn.utils.prune`` (``{module path: bool mask of its weight}``, read by
    :func:`qgraph.weight_hooks.copy_with_plain_weights` before it made the pruning permanent) as
    :class:`SparseMask` modules on the conv/linear weights, so that QAT keeps the pruned weights at
    zero (their gradient is masked). Where a sparsity recipe already masked the weight, the two masks
    are combined. Runs after ``SparsifyPass``, before annotate."""

    name = "prune_masks"

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.masks = masks

    def call(self, gm: fx.GraphModule) -> PassResult:
        kept, modified = {}, False
        for node in list(gm.graph.nodes):
            info = classify(gm, node)
            mask = self.masks.get(info.module_path) if info is not None and info.weight is not None else None
            if mask is None or info.module_path in kept:
                continue
            path, w = info.module_path, info.weight
            if info.kind not in SPARSE_KINDS:
                kept[path] = False
                self.record("kept dense", node, path, f"{info.kind}: the pruning mask is not kept (its zeros are)")
                continue
            if w.op == "call_module" and isinstance(gm.get_submodule(w.target), SparseMask):
                existing = gm.get_submodule(w.target)
                if existing.mask.shape == mask.shape:
                    existing.mask &= mask.to(existing.mask.device)
                    kept[path] = modified = True
                    self.record("masked", w, path, f"pruning mask combined with the recipe's: {existing.sparsity:.1%} zeros")
                    continue
            elif w.op == "get_attr" and tuple(getattr(_attr(gm, str(w.target)), "shape", ())) == tuple(mask.shape):
                m = insert_mask(gm, node, w, SparseMask(mask, where=path), path)
                kept[path] = modified = True
                self.record("masked", m, path, f"torch.nn.utils.prune mask kept: {1 - float(mask.float().mean()):.1%} "
                                               f"of the weights stay zero, also in training")
                continue
            kept[path] = False
            self.record("kept dense", node, path, "the pruning mask does not fit the weight the op reads; its zeros are kept")
        return self.finish(gm, modified)


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


__all__ = ["SparsifyPass", "PruneMasksPass", "FoldMasksPass", "insert_mask"]
