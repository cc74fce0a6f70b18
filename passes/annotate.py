"""AnnotatePass: decide, per op, what a recipe quantizes; write it to ``node.meta``.

Rules:

1. Every op that :func:`qgraph.ops.classify` recognises gets the recipe's decision for its module
   path, op kind and module type (overrides applied).
2. Per-group weight specs apply along the input dimension of 2-D (linear) weights; convs, and
   linear layers whose input size is not a multiple of the group, fall back to per-channel (recorded).
3. Transposed convs keep output channels on weight axis 1 (with ``groups == 1``; else per-tensor).
4. A ``call_module`` Conv/Linear that stayed a module (an auto-leaf's child, an unusual padding
   mode) is annotated too; the insert pass swaps it for a quantized wrapper.

The result is an :class:`Annotation` under ``node.meta["qgraph.annotation"]``; nothing else is
changed, so the pass reports ``modified=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx
from qgraph.passes.base import ANNOTATION_KEY, QPass
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.errors import UnsupportedOpError, node_context
from qgraph.granularity import PerChannel, PerGroup, PerTensor
from qgraph.ops import classify, tensor_meta
from qgraph.qspec import QSpec
from qgraph.recipes import Recipe


@dataclass(frozen=True)
class Annotation:
    kind: str
    module_path: str
    weight: QSpec | None
    activation: QSpec | None


def _owner_type(gm: fx.GraphModule, path: str) -> type | None:
    try:
        return type(gm.get_submodule(path)) if path else None
    except AttributeError:
        return None


class AnnotatePass(QPass):
    name = "annotate"

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe

    def call(self, gm: fx.GraphModule) -> PassResult:
        for node in gm.graph.nodes:
            node.meta.pop(ANNOTATION_KEY, None)
            info = classify(gm, node)
            if info is None:
                continue
            decision = self.recipe.decide(info.module_path, info.kind, _owner_type(gm, info.module_path))
            if not decision.quantized:
                continue
            weight = decision.weight
            if weight is not None:
                weight = self._fit_weight(gm, node, info, weight)
            node.meta[ANNOTATION_KEY] = Annotation(info.kind, info.module_path, weight, decision.activation)
            parts = [f"weight {weight.describe()}" if weight else "", f"activation {decision.activation.describe()}" if decision.activation else ""]
            self.record("annotated", node, info.module_path, f"{info.kind}: " + ", ".join(p for p in parts if p))
        return PassResult(gm, False)

    def _fit_weight(self, gm, node, info, spec: QSpec) -> QSpec:
        shape = self._weight_shape(gm, node, info)
        g = spec.granularity
        if shape is None:
            return spec
        if len(shape) < 2 and not isinstance(g, PerTensor):
            raise UnsupportedOpError(
                f"{info.kind} {node_context(node, info.module_path)}: {len(shape)}-D weight not supported by "
                f"recipe {self.recipe.name} ({g} needs a weight with output channels)"
            )
        if isinstance(g, PerGroup):
            if info.kind != "linear" or len(shape) != 2 or shape[-1] % g.size or info.weight_channel_axis != 0:
                why = (
                    "convs are grouped per channel" if info.kind != "linear"
                    else "the weight is stored [in, out]" if info.weight_channel_axis != 0
                    else f"input size {shape[-1]} is not a multiple of {g.size}"
                )
                self.record("fallback", node, info.module_path, f"per-group({g.size}) → per-channel: {why}")
                return spec.with_(granularity=PerChannel(info.weight_channel_axis))
            return spec
        if isinstance(g, PerChannel) and info.kind == "conv_transpose":
            groups = node.args[6] if node.op == "call_function" and len(node.args) > 6 else getattr(_module(gm, node), "groups", 1)
            if groups != 1:
                self.record("fallback", node, info.module_path, "grouped transposed conv → per-tensor weight scale")
                return spec.with_(granularity=PerTensor())
            return spec.with_(granularity=PerChannel(1))
        if isinstance(g, PerChannel) and g.axis != info.weight_channel_axis:
            return spec.with_(granularity=PerChannel(info.weight_channel_axis))
        return spec

    @staticmethod
    def _weight_shape(gm, node, info):
        if info.weight is not None:
            tm = tensor_meta(info.weight)
            if tm is not None:
                return tm[0]
            if info.weight.op == "get_attr":
                obj = gm
                for part in str(info.weight.target).split("."):
                    obj = getattr(obj, part, None)
                return tuple(obj.shape) if obj is not None else None
            return None
        mod = _module(gm, node)
        return tuple(mod.weight.shape) if mod is not None else None


def _module(gm, node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(node.target)
