"""AnnotatePass: decide, per op, what a recipe quantizes; write it to ``node.meta``.

Rules:

1. Every op that :func:`qgraph.ops.classify` recognises gets the recipe's decision for its module
   path, op kind and module type (overrides applied).
2. Per-group weight specs apply along the input dimension of 2-D (linear) weights; convs, and
   linear layers whose input size is not a multiple of the group, fall back to per-channel (recorded).
3. Transposed convs keep output channels on weight axis 1 (with ``groups == 1``; else per-tensor).
4. A ``call_module`` Conv/Linear/ConvTranspose that stayed a module (an auto-leaf's child, a
   transposed conv) is annotated too; the insert pass swaps it for a quantized wrapper.
5. A residual add is quantized only when its sum reaches a conv/linear/matmul input through ops
   ONNX Runtime keeps in integers (:func:`qgraph.ops.reaches_integer_op`); a transformer's residual
   stream, which only feeds LayerNorm, stays float (recorded as ``kept float``).
6. The result of a linear or matmul on 3-D+ activations (exported as ``MatMul``) is quantized only
   when it reaches another integer op the same way: ONNX Runtime runs ``DQ → MatMul`` without a
   ``Q`` after it as an integer kernel with a float result (``MatMulIntegerToFloat``), so a ``Q`` in
   front of a float op (LayerNorm, GELU, softmax) would only round once more. Convs and 2-D linears
   keep theirs (``QLinearConv`` and ``QGemm`` need ``DQ → op → Q``), except a 2-D linear whose
   result is a model output (a classifier head): a last ``Q`` would only round the outputs once more
   (docs/architecture.md: +0.2 to +1.3 dB output SQNR on zoo classifiers, ad hoc), and as ``MatMulIntegerToFloat`` (the lower pass
   and ``backends.onnx_fold`` rule 6) it still runs on integers (recorded as ``float result``).
7. Weight-only ops: embeddings (a table lookup: per-row int8 weights, the rows it gathers stay
   float), Conv/Linear weights read by calls qgraph does not know (annotated on their ``get_attr``,
   e.g. torchvision's ``shifted_window_attention``) and ``nn.MultiheadAttention`` modules the
   canonicalize pass could not rewrite: the weight gets the recipe's weight spec, no activation is
   quantized.
8. The router of a mixture-of-experts layer (a linear whose result reaches a ``topk`` or ``argmax``
   within three ops, and the graph computes with the chosen indices rather than only returning them) stays float,
   weight included: its logits choose the experts, and rounding flips the choice
   between near-tied experts, a jump in the output no tolerance can bound (Mixtral w8a8: 7 of 128
   tokens differed by up to 0.047 between ONNX Runtime and PyTorch with a quantized router).
9. Expert weights of mixture-of-experts layers (``[E, N, K]`` parameters read by a grouped matmul,
   :func:`qgraph.ops.is_grouped_mm`, or by an einsum as one matrix per expert, as the Switch
   Transformer's ``einsum("becd,edh->bech", x, wi)``): weight-only, no integer kernel reads them; a per-channel spec
   becomes one scale per row of the last axis (per expert and output channel), a per-group spec
   keeps its groups along the last axis (the input dimension) where they divide it. The stacked
   ``[members, out, in]`` weights of a ``vmap(functional_call)`` ensemble of linear layers are
   quantized the same way, on their ``get_attr`` outside the vmap level (one scale per member and
   output channel), and so are expert matrices gathered by index before an einsum (gpt-fast's
   ``self.w1[expert_indices]``).
10. Ops inside a ``torch.func.vmap`` (a ``torch.export`` graph between ``_vmap_increment_nesting`` and
    ``_vmap_decrement_nesting``: a model ensemble run by ``vmap(functional_call)``) stay float
    (recorded as ``kept float``): their values are batched tensors that exist only inside the vmap
    level, and an observer storing their range let one escape it. Their stacked weights are
    quantized outside the level (rule 9).
11. The ops inside a control-flow op's subgraphs (``torch.cond``'s branches, a ``while_loop``'s body:
    graph submodules the call reads by ``get_attr``) stay float, recorded as ``kept float`` on the
    call; the passes do not enter subgraphs. The conv / linear weights the branches read are lifted
    to the outer graph, where they are quantized weight-only.
12. A matmul of two activations whose outputs each sum 4 products or fewer (``K @ (R @ X + t)``:
    camera intrinsics, poses, rotations, homogeneous coordinates) stays float (recorded): no integer
    kernel gains at that size, and a per-tensor 8-bit grid over a small matrix of wide-ranging
    entries (focal lengths beside rotation terms) loses most of its signal (monodepth2's warp:
    7.6 dB with them quantized).

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
from qgraph.ops import (
    WEIGHT_ONLY_KINDS,
    classify,
    computed_from_inputs,
    contraction_size,
    feeds_model_output,
    feeds_topk,
    inside_vmap,
    module_path,
    owner_type,
    reaches_integer_op,
    tensor_meta,
)
from qgraph.qspec import QSpec
from qgraph.recipes import Recipe

FLOAT_OUTPUT_KINDS = ("linear", "matmul")  # integer kernels that may return float (rule 6)
SMALL_CONTRACTION = 4  # a matmul of two activations summing this many products or fewer stays float (rule 12)


@dataclass(frozen=True)
class Annotation:
    kind: str
    module_path: str
    weight: QSpec | None
    activation: QSpec | None
    quantize_output: bool = True  # False: inputs quantized, the result stays float (rule 6)


class AnnotatePass(QPass):
    name = "annotate"

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.seen: list[tuple[str, str, type | None]] = []  # (module path, kind, module type) of every quantizable op

    def call(self, gm: fx.GraphModule) -> PassResult:
        self.seen = []
        vmapped = inside_vmap(gm)
        for node in gm.graph.nodes:
            node.meta.pop(ANNOTATION_KEY, None)
            bodies = _subgraph_operands(gm, node)
            if bodies:
                self.record("kept float", node, module_path(node), f"the ops inside {_op_name(node)}'s subgraphs ({', '.join(bodies)}) "
                                                                   "stay float: the passes do not enter them (the conv / linear "
                                                                   "weights they read are quantized weight-only, outside)")
            info = classify(gm, node)
            if info is None:
                continue
            self.seen.append((info.module_path, info.kind, owner_type(gm, info.module_path)))
            if node in vmapped:
                self.record("kept float", node, info.module_path, f"{info.kind}: inside torch.func.vmap (its values are batched "
                                                                  "tensors of the vmap level; no observer can keep them)")
                continue
            decision = self.recipe.decide(*self.seen[-1])
            if not decision.quantized:
                continue
            weight, activation = decision.weight, decision.activation
            if info.kind == "add" and not reaches_integer_op(gm, node):
                self.record("kept float", node, info.module_path, "add: its sum reaches no conv/linear/matmul input (only float ops), "
                                                                  "so quantizing it would only add error")
                continue
            if info.kind == "linear" and feeds_topk(node):
                self.record("kept float", node, info.module_path, "linear: a mixture-of-experts router (its result reaches a top-k "
                                                                  "or argmax that picks the experts; rounding would flip near-tied choices)")
                continue
            if info.kind == "matmul" and (k := contraction_size(node)) is not None and k <= SMALL_CONTRACTION:
                self.record("kept float", node, info.module_path, f"matmul: each output sums {k} products (a 3-D transform, "
                                                                  "camera intrinsics, a pose): no integer kernel gains there, and "
                                                                  "per-tensor 8-bit grids on such small matrices lose most of them")
                continue
            if weight_only(gm, node, info):
                if weight is None:
                    continue
                activation = None
            if weight is not None:
                weight = self._fit_weight(gm, node, info, weight)
            output = activation is not None and (info.kind not in FLOAT_OUTPUT_KINDS or reaches_integer_op(gm, node)
                                                 or _rank(node) == 2 and not feeds_model_output(gm, node))
            if activation is not None and not output and info.kind == "linear" and _rank(node) == 2:
                self.record("float result", node, info.module_path, "linear: its result is a model output, kept float "
                                                                    "(a last Q would only round the outputs; ONNX Runtime: MatMulIntegerToFloat)")
            node.meta[ANNOTATION_KEY] = Annotation(info.kind, info.module_path, weight, activation, output)
            parts = [f"weight {weight.describe()}" if weight else "", f"activation {activation.describe()}" if activation else ""]
            self.record("annotated", node, info.module_path, f"{info.kind}: " + ", ".join(p for p in parts if p))
        return PassResult(gm, False)

    def _fit_weight(self, gm, node, info, spec: QSpec) -> QSpec:
        g = spec.granularity
        if isinstance(_module(gm, node), nn.MultiheadAttention):
            if isinstance(g, PerGroup):
                self.record("fallback", node, info.module_path, f"per-group({g.size}) → per-channel: attention projections in a wrapped module")
                return spec.with_(granularity=PerChannel(0))
            return spec
        if info.weight is not None and info.weight.op != "get_attr" and computed_from_inputs(info.weight):
            if not isinstance(g, PerTensor):  # its channels are not the layer's: CondConv's [B*out, in, k, k] grows with the batch
                self.record("fallback", node, info.module_path, f"{g} → per-tensor: the weight is computed from the model's inputs "
                                                                "(per-sample kernels), so its channels need not be the layer's")
                return spec.with_(granularity=PerTensor())
            return spec
        shape = self._weight_shape(gm, node, info)
        if shape is None:
            return spec
        if info.kind == "experts" and not isinstance(g, PerTensor):
            return self._fit_experts(node, info, spec, shape)
        if len(shape) < 2 and not isinstance(g, PerTensor):
            raise UnsupportedOpError(
                f"{info.kind} {node_context(node, info.module_path)}: {len(shape)}-D weight not supported by "
                f"recipe {self.recipe.name} ({g} needs a weight with output channels)"
            )
        if isinstance(g, PerGroup):
            if info.kind != "linear" or len(shape) != 2 or shape[-1] % g.size or info.weight_channel_axis != 0:
                why = (
                    f"{info.kind} weights are quantized per channel" if info.kind != "linear"
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

    def _fit_experts(self, node, info, spec: QSpec, shape) -> QSpec:
        """Expert weights ``[E, ·, ·]`` (rule 9): per-channel becomes one scale per row of the last axis,
        one per (expert, output channel) when the rows are output channels; groups run along the last axis."""
        k = shape[-1]
        rows_out = info.weight_channel_axis == len(shape) - 2  # the last axis is the input: one scale per output channel
        layout = (("[experts, out, in]" if rows_out else "[experts, in, out]: rows are inputs") if len(shape) == 3
                  else "stacked matrices, rows are outputs" if rows_out else "stacked matrices, rows are inputs")
        if isinstance(spec.granularity, PerGroup) and k % spec.granularity.size == 0:
            return spec
        why = (f"last axis {k} is not a multiple of {spec.granularity.size}" if isinstance(spec.granularity, PerGroup)
               else "one scale per row")
        self.record("fallback", node, info.module_path, f"{spec.granularity} → per-group({k}) on {tuple(shape)} {layout} ({why})")
        return spec.with_(granularity=PerGroup(k))

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


def _subgraph_operands(gm: fx.GraphModule, node: fx.Node) -> list[str]:
    """The graph submodules a control-flow op runs (``torch.cond``'s branches, a ``while_loop``'s
    body), by name."""
    if node.op != "call_function":
        return []
    names = []
    for a in node.args:
        if isinstance(a, fx.Node) and a.op == "get_attr":
            try:
                if isinstance(gm.get_submodule(str(a.target)), fx.GraphModule):
                    names.append(str(a.target))
            except AttributeError:
                continue
    return names


def _op_name(node: fx.Node) -> str:
    return str(getattr(node.target, "__name__", node.target)).removesuffix(".default")


def _rank(node: fx.Node) -> int | None:
    tm = tensor_meta(node)
    return len(tm[0]) if tm else None


def weight_only(gm, node, info) -> bool:
    """Ops whose weight is quantized but whose activations are not: table lookups, weights read by
    calls qgraph does not know (annotated on their ``get_attr``), wrapped attention modules."""
    return info.kind in WEIGHT_ONLY_KINDS or node.op == "get_attr" or isinstance(_module(gm, node), nn.MultiheadAttention)


def _module(gm, node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(node.target)

