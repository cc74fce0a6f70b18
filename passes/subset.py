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
   ``F.relu`` or an ``nn.ReLU`` module): its values are non-negative, so the mean is not subtracted.
4. Convs whose weight is not quantized are left alone (recorded).
5. A conv kept whole as a module (:class:`qgraph.wrappers.QuantizedModule`: ``padding_mode="replicate"``)
   takes part like the others, its ``SubsetQuantize`` as the wrapper's ``input_quantizer``. Those inside
   auto-leaves are not graph nodes: they keep the recipe's weight quantizer and no activation
   quantizer (recorded).
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


def is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
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
            wrapped = n.op == "call_module" and isinstance(m := gm.get_submodule(str(n.target)), QuantizedModule) \
                and isinstance(m.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
            if info is not None and info.kind == "conv" or wrapped:
                convs.append((n, info))
        ends = {convs[0][0], convs[-1][0]} if self.keep_first_last and convs else set()
        modified, done = False, {}
        in_graph = {str(n.target) for n, info in convs if info is None}
        for path, m in gm.named_modules():
            if isinstance(m, QuantizedModule) and isinstance(m.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and path not in in_graph:
                self.record("kept float", path, path, "a conv inside an auto-leaf: its recipe weight quantizer stays, "
                                                      "with no subset activation quantizer (not a graph node)")
        for node, info in convs:
            if info is None:  # rule 5
                modified |= self._wrapped(gm, node, node in ends)
                continue
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

    def _wrapped(self, gm: fx.GraphModule, node: fx.Node, end: bool) -> bool:
        """Rule 5: a conv kept whole as a module, called at ``node``."""
        path = str(node.target)
        mod = gm.get_submodule(path)
        if end:
            mod.weight_quantizer = None
            self.record("kept float", node, path, "first/last conv stays float (keep_first_last)")
            return True
        if mod.weight_quantizer is None:
            self.record("kept float", node, path, "weight not quantized by the recipe")
            return False
        post_relu = isinstance(node.args[0], fx.Node) and is_relu(gm, node.args[0])
        mod.input_quantizer = SubsetQuantize(self.bits, post_relu, where=path, words=self.words)
        self.record("subset", node, path, f"{self.bits}-bit per-channel codebooks from the universal set, post_relu={post_relu} "
                                          "(the input quantizer of the module kept whole)")
        return True


__all__ = ["SubsetPass", "is_relu"]
