"""BitSwitchPass: turn conv / linear layers into bit-switch layers (recipe ``bitswitch``, ALGORITHMS.md §6).

Runs on the canonicalized graph with BatchNorm *not* folded (each bit width keeps its own
statistics). Rewrite rules, for each conv / linear op whose weight is a ``get_attr``:

1. ``get_attr W → op`` becomes ``get_attr W → <path>.weight_quantizer → op``, a
   :class:`~qgraph.bitswitch.DoubleRoundWeightQuantizer` (per output channel, scale initialised
   from W) that serves every bit width from one INT8 grid.
2. The op's activation input gets ``<path>.input_quantizer``, a
   :class:`~qgraph.bitswitch.BitSwitchActQuantizer` (one LSQ scale per bit width). Each layer
   quantizes its own input, so layers at different bit widths can share an input.
3. A ``call_module`` BatchNorm that is the op's only user becomes a
   :class:`~qgraph.bitswitch.SwitchableBatchNorm` (one BatchNorm per bit width) at the same path.
4. The op's ``node.meta`` annotation records the highest bit width (for ``summary()``).
5. With ``keep_first_last`` (default) the first and the last such op in graph order stay float
   (§6.2); so do ops an ``Override(skip=True)`` matches, grouped transposed convs and layers inside
   auto-leaves (recorded as ``kept float``). A transposed conv switches per output channel, its
   weight's axis 1. A weight read by a switched op is read through its
   quantizer by every op (a layer called twice, one call a float end): the qpack stores it once.

Nothing else is quantized: residual adds, pooling and the BatchNorms after float layers stay float,
as in the paper's MultiBitQConv networks.

:class:`BitSwitchCalibratePass` sets the activation scales of every bit width from calibration
batches (``2·mean|x| / sqrt(Qp)`` over all batches, weights quantized at that bit width).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from qgraph.passes.annotate import Annotation
from qgraph.passes.base import ANNOTATION_KEY, QPass, unique_submodule_name
from qgraph.passes.canonicalize import replace_module_call
from qgraph.passes.insert_quantizers import read_quantized_everywhere
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.bitswitch import BitSwitchActQuantizer, BitSwitchRecipe, DoubleRoundWeightQuantizer, SwitchableBatchNorm, set_bits
from qgraph.capture import batch_inputs
from qgraph.errors import InputError, RecipeError
from qgraph.granularity import PerChannel, PerTensor
from qgraph.ops import BN_MODULES, classify, owner_type
from qgraph.qspec import QSpec


class BitSwitchPass(QPass):
    name = "bitswitch"

    def __init__(self, recipe: BitSwitchRecipe, leaves: set[str] | None = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.leaves = set(leaves or ())

    def call(self, gm: fx.GraphModule) -> PassResult:
        candidates = []
        functional = self._functional_transposed_convs(gm)
        for node in gm.graph.nodes:
            info = classify(gm, node)
            if info is None or info.kind not in ("conv", "linear", "conv_transpose"):
                continue
            if node.op != "call_function" or info.weight is None or info.weight.op != "get_attr":
                self.record("kept float", node, info.module_path, f"{info.kind}: only conv / linear ops on a get_attr weight switch bits")
                continue
            if info.kind == "conv_transpose" and _groups(node) != 1:
                self.record("kept float", node, info.module_path, "grouped transposed conv: its output channels are not one weight axis")
                continue
            candidates.append((node, info))
        for leaf in sorted(self.leaves):
            self.record("kept float", leaf, leaf, "auto-leaf: its layers are not bit-switched")
        if self.recipe.keep_first_last and candidates:
            ends = [candidates[0]] + ([candidates[-1]] if len(candidates) > 1 else [])
            for (node, info), which in zip(ends, ("first", "last")):
                self.record("kept float", node, info.module_path, f"{which} layer (keep_first_last)")
            candidates = candidates[1:-1]
        modified = False
        self._weight_q: dict[str, tuple[fx.Node, fx.Node]] = {}  # weight target -> (its get_attr, its quantizer node)
        for node, info in candidates:
            path = info.module_path
            if any(o.skip and o.matches(path, info.kind, owner_type(gm, path)) for o in self.recipe.overrides):
                self.record("kept float", node, path, "skipped by an override")
                continue
            self._rewrite(gm, node, info)
            modified = True
        for w, q in self._weight_q.values():  # a float end layer sharing a switched layer's weight reads it switched
            read_quantized_everywhere(self, w, q)
        modified |= functional
        if not any(c.action == "bit-switched" for c in self.changes):  # a bit-switch model that switches nothing: say why now, not at export
            kept = [f"{c.module_path or c.node} ({c.detail})" for c in self.changes if c.action == "kept float"]
            raise RecipeError(f"recipe {self.recipe.name!r} switches no layer of this model: "
                              + ("; ".join(kept) if kept else "it has no conv or linear layer")
                              + (". bitswitch(..., keep_first_last=False) switches the first and last layers too"
                                 if self.recipe.keep_first_last else ""))
        return self.finish(gm, modified)

    def _functional_transposed_convs(self, gm: fx.GraphModule) -> bool:
        """Rule 0: ``call_module ConvTranspose{n}d`` (zero padding, one input, outside auto-leaves) →
        ``F.conv_transpose{n}d`` on ``get_attr`` weights, so that it can switch like a conv. (Other
        recipes keep the module and swap it for a ``QuantizedModule``; canonicalize leaves it.)"""
        changed = False
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or node.target in self.leaves or len(node.args) != 1 or node.kwargs:
                continue
            mod = gm.get_submodule(str(node.target))
            if type(mod) not in _CONV_T_FN or mod.padding_mode != "zeros":
                continue
            path, fn = str(node.target), _CONV_T_FN[type(mod)]
            new = replace_module_call(gm, node, fn, (node.args[0], f"{path}.weight", f"{path}.bias" if mod.bias is not None else None,
                                                     mod.stride, mod.padding, mod.output_padding, mod.groups, mod.dilation))
            self.record("replaced", new, path, f"{type(mod).__name__} module call by {fn.__name__}")
            changed = True
        return changed

    def _rewrite(self, gm: fx.GraphModule, node: fx.Node, info) -> None:
        bits, path = self.recipe.bits, info.module_path
        layer = path or str(info.weight.target)  # a functional call on a root parameter: named after the parameter
        stem = path or str(info.weight.target).replace(".", "_")
        # a weight read by two switched ops gets one quantizer: a layer called twice (rule 0 gives each
        # call of a transposed conv its own get_attr: DCCRN's complex conv runs one on both parts)
        _, wnode = self._weight_q.get(str(info.weight.target), (None, None))
        if wnode is None:
            weight = _attr(gm, str(info.weight.target))
            wq = DoubleRoundWeightQuantizer(weight, bits, layer, axis=info.weight_channel_axis, rounding=self.recipe.rounding)
            target = unique_submodule_name(gm, f"{stem}.weight_quantizer" if path else f"{stem}_weight_quantizer")
            wnode = self._insert_after(gm, info.weight, target, wq)
            self._weight_q[str(info.weight.target)] = (info.weight, wnode)
        node.replace_input_with(info.weight, wnode)
        if info.weight is not wnode.args[0] and not info.weight.users:
            gm.graph.erase_node(info.weight)
        x = info.activations[0]
        target = unique_submodule_name(gm, f"{stem}.input_quantizer" if path else f"{stem}_input_quantizer")
        xnode = self._insert_after(gm, x, target, BitSwitchActQuantizer(bits, layer), before=node)
        node.replace_input_with(x, xnode)
        detail = f"weights int{bits[0]} per channel, {'double rounding' if self.recipe.rounding == 'double' else 'direct rounding'} to {list(bits)}; input LSQ per bit"
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(gm.get_submodule(users[0].target), BN_MODULES):
            bn_path = str(users[0].target)
            parent, _, child = bn_path.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, child, SwitchableBatchNorm(gm.get_submodule(bn_path), bits, layer))
            detail += f"; BatchNorm {bn_path} switchable"
        # for summaries: the highest bit width (a fixed-bits copy, qm.at_bits(), carries its own bits)
        wspec = QSpec(bits=bits[0], symmetric=True, signed=True, granularity=PerChannel(info.weight_channel_axis), learnable=True)
        aspec = QSpec(bits=bits[0], symmetric=False, signed=False, granularity=PerTensor(), learnable=True)
        node.meta[ANNOTATION_KEY] = Annotation(info.kind, layer, wspec, aspec, quantize_output=False)
        self.record("bit-switched", node, layer, detail)

    @staticmethod
    def _insert_after(gm, value: fx.Node, target: str, module, before: fx.Node | None = None) -> fx.Node:
        gm.add_submodule(target, module)
        with gm.graph.inserting_before(before) if before is not None else gm.graph.inserting_after(value):
            q = gm.graph.call_module(target, (value,))
        q.meta = {k: v for k, v in value.meta.items() if k in ("tensor_meta", "val")}
        return q


class BitSwitchCalibratePass(QPass):
    """Initialise every bit width's activation scales from calibration batches (no gradients)."""

    name = "bitswitch_calibrate"

    def __init__(self, batches: Iterable, sync_ranks: bool = False) -> None:
        super().__init__()
        self.batches = batches
        self.sync_ranks = sync_ranks  # reduce the statistics over torch.distributed ranks (qgraph.distributed)

    def call(self, gm: fx.GraphModule) -> PassResult:
        acts = {n: m for n, m in gm.named_modules() if isinstance(m, BitSwitchActQuantizer)}
        if not acts:
            return PassResult(gm, False)
        batches = [batch_inputs(gm, b) for b in self.batches]
        if not batches:
            raise InputError("calib_data yielded no batches")
        was_training = gm.training
        gm.eval()
        bits = next(iter(acts.values())).bit_choices
        with torch.no_grad():
            for b in bits:
                set_bits(gm, b)
                for q in acts.values():
                    q.mode = "observe"
                for i, args in enumerate(batches):
                    try:
                        gm(*args)
                    except Exception as e:
                        raise InputError(f"calibration batch {i} does not fit the model: {type(e).__name__}: {e}") from e
                if self.sync_ranks:
                    from qgraph.distributed import reduce_bitswitch_stats

                    reduce_bitswitch_stats(acts)
                for q in acts.values():
                    q.finish_calibration()
        set_bits(gm, bits[0])
        for name, q in acts.items():
            scales = ", ".join(f"{b}b {float(q.effective_scale(b).detach()):.3g}" for b in bits)
            self.record("calibrated", name, q.layer, f"{'signed' if int(q.signed) else 'unsigned'}; scales {scales} from {len(batches)} batches")
        gm.train(was_training)
        return PassResult(gm, True)


_CONV_T_FN = {nn.ConvTranspose1d: F.conv_transpose1d, nn.ConvTranspose2d: F.conv_transpose2d, nn.ConvTranspose3d: F.conv_transpose3d}


def _groups(node: fx.Node) -> int:
    """``groups`` of a ``conv_transpose{n}d(x, w, bias, stride, padding, output_padding, groups, dilation)`` call."""
    groups = node.kwargs.get("groups", node.args[6] if len(node.args) > 6 else 1)
    return groups if isinstance(groups, int) else -1


def _attr(gm, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
