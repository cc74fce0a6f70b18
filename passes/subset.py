"""SubsetPass: DFSQ activation quantizers on conv inputs (the ``subset`` method pass, recipe ``subset(bits=4)``).

Runs in place after insert_quantizers (which gave the convs their per-channel min/max weight
quantizers and, with this recipe, no activation quantizers). Rules, over the conv ops in graph order:

1. With ``keep_first_last`` the first and the last conv stay float: their weight quantizer is
   bypassed and removed (recorded as ``kept float``). DFSQ keeps an SR network's head and tail
   (image-facing convs) in full precision. A weight the first or last conv shares with another
   conv (a module called twice) is stored once, quantized, so such an end reads it quantized
   (recorded as ``kept quantized``); where the first and the last conv are the same weight, both
   stay float.
2. Every other conv whose weight is quantized gets a :class:`qgraph.subset.SubsetQuantize` on its
   activation input: ``x → <path>.input_quantizer → conv``. A value read by several convs gets one
   quantizer.
3. ``post_relu`` is True when the producer of that input is a ReLU (``relu``/``relu_`` call,
   ``F.relu`` or an ``nn.ReLU`` module), also behind a pad that keeps values non-negative (a
   reflect-padded conv's ``F.pad``): its values are non-negative, so the mean is not subtracted.
4. Convs whose weight is not quantized are left alone (recorded).
5. Convs inside auto-leaves (swapped for :class:`qgraph.wrappers.QuantizedModule`) are not graph
   nodes: they keep the recipe's weight quantizer and no activation quantizer (recorded). A conv
   with a ``padding_mode`` other than zeros is a graph node like any other (canonicalize makes it
   ``F.pad`` and a functional conv).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.fx as fx
import torch.nn.functional as F
from qgraph.passes.base import ANNOTATION_KEY, QPass, unique_submodule_name
from qgraph.passes.insert_quantizers import is_quantizer_node
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.meta import MODULE_PATH_KEY
from qgraph.ops import classify
from qgraph.subset import SubsetQuantize

RELU_TARGETS = {torch.relu, torch.relu_, F.relu, torch.ops.aten.relu.default, torch.ops.aten.relu_.default, "relu", "relu_"}


_PADS = {F.pad, torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default, torch.ops.aten.reflection_pad1d.default,
         torch.ops.aten.reflection_pad2d.default, torch.ops.aten.reflection_pad3d.default,
         torch.ops.aten.replication_pad1d.default, torch.ops.aten.replication_pad2d.default,
         torch.ops.aten.replication_pad3d.default}


def _pad_value(node: fx.Node) -> float:
    """The value a pad node writes at the border (0 for the modes that copy border values); -1 where
    it is not a number known here."""
    i = 2 if node.target is torch.ops.aten.constant_pad_nd.default else 3
    value = node.args[i] if len(node.args) > i else node.kwargs.get("value")
    return 0.0 if value is None else float(value) if isinstance(value, (int, float)) else -1.0


def is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is a ReLU's output, also behind a pad (a reflect/replicate/circular conv's
    ``F.pad``, or a constant pad with a non-negative value), which keeps the values non-negative."""
    while node.op == "call_function" and node.target in _PADS and isinstance(node.args[0], fx.Node) and _pad_value(node) >= 0:
        node = node.args[0]
    if node.op == "call_function" and node.target in RELU_TARGETS:
        return True
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return True
    if node.op == "call_module":
        try:
            return isinstance(gm.get_submodule(node.target), nn.ReLU)
        except AttributeError:
            return False
    return False


class SubsetPass(QPass):
    name = "subset"

    def __init__(self, bits: int = 4, keep_first_last: bool = True, words: int = 4) -> None:
        super().__init__()
        self.bits = bits
        self.keep_first_last = keep_first_last
        self.words = words

    def call(self, gm: fx.GraphModule) -> PassResult:
        from qgraph.wrappers import QuantizedModule

        convs = []
        for n in gm.graph.nodes:
            info = classify(gm, n) if n.op == "call_function" else None
            if info is not None and info.kind == "conv":
                convs.append((n, info))
        ends = {convs[0][0], convs[-1][0]} if self.keep_first_last and convs else set()
        modified, done = False, {}
        for path, m in gm.named_modules():  # rule 5
            if isinstance(m, QuantizedModule) and isinstance(m.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                self.record("kept float", path, path, "a conv inside an auto-leaf: its recipe weight quantizer stays, "
                                                      "with no subset activation quantizer (not a graph node)")
        for node, info in convs:
            wq = info.weight
            quantized = wq is not None and is_quantizer_node(gm, wq)
            if node in ends:  # rule 1
                shared = [u for u in wq.users if u is not node and u not in ends] if quantized else []
                if shared:  # a weight also read by a quantized conv is stored once, quantized: this conv reads it so too
                    self.record("kept quantized", node, info.module_path, "first/last conv, but its weight is shared with "
                                f"{', '.join(u.name for u in shared)}: it reads the quantized weight")
                    continue
                if quantized:
                    for u in list(wq.users):  # this conv and the other end reading the same weight (a conv called twice)
                        u.replace_input_with(wq, wq.args[0])
                    target = wq.target
                    gm.graph.erase_node(wq)
                    gm.delete_submodule(target)
                    modified = True
                node.meta.pop(ANNOTATION_KEY, None)  # (summaries and reports: the op is float)
                self.record("kept float", node, info.module_path, "first/last conv stays float (keep_first_last)")
                continue
            if not quantized:  # rule 4
                self.record("kept float", node, info.module_path, "weight not quantized by the recipe")
                continue
            x = info.activations[0]
            if x in done:  # rule 2: one quantizer per value
                node.replace_input_with(x, done[x])
                if ANNOTATION_KEY in node.meta:
                    node.meta[ANNOTATION_KEY] = replace(node.meta[ANNOTATION_KEY], activation=gm.get_submodule(done[x].target).spec)
                continue
            post_relu = is_relu(gm, x)  # rule 3
            path = info.module_path
            name = unique_submodule_name(gm, f"{path}.input_quantizer" if path else f"{node.name}_input_quantizer")
            gm.add_submodule(name, SubsetQuantize(self.bits, post_relu, where=path or node.name, words=self.words))
            with gm.graph.inserting_before(node):
                q = gm.graph.call_module(name, (x,))
            q.meta = {k: v for k, v in x.meta.items() if k in ("val", "tensor_meta")}
            q.meta[MODULE_PATH_KEY] = path
            node.replace_input_with(x, q)
            done[x] = q
            if ANNOTATION_KEY in node.meta:  # the op's activation is quantized now (summaries: w4a4)
                node.meta[ANNOTATION_KEY] = replace(node.meta[ANNOTATION_KEY], activation=gm.get_submodule(name).spec)
            self.record("subset", q, path, f"{self.bits}-bit per-channel codebooks from the universal set, "
                                           f"post_relu={post_relu}")
            modified = True
        return self.finish(gm, modified)


__all__ = ["SubsetPass", "is_relu"]
