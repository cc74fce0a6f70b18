"""CanonicalizePass: module calls of Conv/Linear become functional calls on ``get_attr`` weights.

Rewrite rules:

1. ``call_module Conv{1,2,3}d`` (also a parametrized one, e.g. weight-normed) → ``get_attr weight``
   (+ ``get_attr bias``) → ``call_function F.conv{n}d(x, weight, bias, stride, padding, dilation,
   groups)``. A ``padding_mode`` other than ``"zeros"`` (``reflect``, ``replicate``, ``circular``)
   becomes what ``nn.Conv`` itself runs:
   ``F.pad(x, pads, mode)`` and the conv with no padding, so every pass sees the conv as it sees
   any other (before, such a conv stayed a module call, quantized by swapping it for a wrapper).
2. ``call_module Linear`` → ``F.linear(x, weight, bias)``. Rules 1 and 2 also take the input
   by keyword (``conv(input=x)``).
3. ``call_module Embedding`` → ``F.embedding(ids, weight, padding_idx)``;
   ``call_module EmbeddingBag`` → ``F.embedding(ids, weight)`` then a reduction
   over each bag: ``sum``/``mean``/``amax`` on ``[N, bag]`` ids alone, else
   :func:`qgraph.embedding_bag.reduce_bags` (offsets, per-sample weights, ``padding_idx``). The table
   becomes a weight-only embedding like any other (it stayed float), and the exporter writes a
   Gather and a reduction or scatter instead of a Loop over the bags. A table with ``max_norm``
   (renormalized in place by each lookup) has every row renormalized once first (rule 3a).
4. ``call_module MultiheadAttention`` (no ``bias_k``/``add_zero_attn``, the attention weights
   unused; ``attn_mask``, ``key_padding_mask`` and ``is_causal`` become the mask or flag of the
   attention call, combined as ``MultiheadAttention`` combines them) → the ops it runs: in-projection
   → split heads → ``F.scaled_dot_product_attention`` → merge heads → ``F.linear(·, out_proj.weight)``.
   Self-attention (``attn(x, x, x)``) projects with one ``F.linear(x, in_proj_weight)``.
   Cross-attention (``attn(x, memory, memory)``) reads row blocks of the packed projection: they
   become parameters of their own, ``q_in_proj_weight`` (and ``_bias``) for ``F.linear(x, ·)`` and
   ``kv_in_proj_weight`` for ``F.linear(memory, ·)`` (``k_``/``v_in_proj_*`` when key and value
   differ; a module built with ``kdim``/``vdim`` has ``q/k/v_proj_weight`` already), and the packed
   ones are dropped once nothing reads them. Key or value written as the same view twice
   (``m.transpose(0, 1)``) counts as one value. torch.fx keeps ``nn.MultiheadAttention`` as one
   opaque module call; rewritten, its projections are ordinary linears (quantized, fused by ONNX
   Runtime) and its attention an ordinary op. Attention dropout is not part of the rewritten graph
   (recorded). A module is rewritten at all its calls or none: where one call does not fit (its
   attention weights used), every call stays a module and the insert pass wraps it
   (:class:`qgraph.wrappers.QuantizedMultiheadAttention`, weight-only). ``F.multi_head_attention_forward``
   called directly with a layer's weights becomes the same ops (self-attention on a packed
   ``in_proj_weight``, or separate ``q/k/v_proj_weight``: OpenAI CLIP's attention pooling);
   ``passes/attention_rewrite.py`` has both.
5. ``aten.view`` (torch.export graphs) → ``aten.reshape``, ``aten.contiguous`` → ``aten.clone``
   (contiguous format): the same values, but re-exporting the captured graph to ONNX otherwise drops
   the ``contiguous`` and fails on the ``view`` of a transposed tensor after it (Hugging Face T5:
   "Cannot view a tensor with shape ... and strides ..."). For the same reason the result of
   ``scaled_dot_product_attention`` is copied to contiguous memory (``clone(memory_format=
   contiguous_format)``): its strides depend on which kernel computes it (the fused CPU flash
   kernel, chosen e.g. with a 4-D float mask, returns [B, L, H, D] memory; the math path and ONNX
   Runtime [B, H, L, D]), so ``o.transpose(1, 2).reshape(...)`` after it (timm MaxViT's attention)
   is decomposed into a ``view`` under one layout and fails when the exporter re-runs the graph
   under the other. A ``.contiguous()`` does not help: ``torch.export`` drops it as a no-op when
   the strides it sees at capture are contiguous; a ``clone`` is always kept.
6. ``get_attr`` nodes that read the same ``nn.Parameter`` under different names (tied weights: a
   Hugging Face LM head tied to the token embedding, which symbolic tracing reads as both
   ``lm_head.weight`` and ``word_embeddings.weight``) become the first of them, so the weight gets one
   quantizer (with the spec of its first reader, the embedding) and the qpack and ONNX store it once.
   ``torch.export`` graphs read each parameter once already.
8. ``x @ W.T`` (``matmul`` / ``mm`` of an activation and the transpose of a 2-D ``nn.Parameter``:
   ``.T``, ``.t()``, ``transpose(0, 1)``, ``permute(1, 0)``) → ``linear(x, W)``: the same product,
   with the weight read as stored (``[out, in]``), so it is quantized per output channel like any
   linear, its ``[in, out]`` copy is not folded into a second parameter, and a weight tied to an
   embedding stays one tensor. ``x @ W`` and ``W @ x`` need no rewrite (``ops.classify``). A layer
   written as an einsum with its 2-D weight, ``einsum("...k,kn->...n", x, W)`` (or ``nk``),
   contracting x's last dim and keeping the others in order, becomes ``x @ W`` (or ``linear(x, W)``);
   with explicit indices, another contracted dim or output order gets permutes around it. A weight of
   3+ dims that contracts one index with x and gives all its others to the output (MMoE's
   ``einsum("ab,bcd->acd", x, W)``) is one linear layer over those indices flattened, reshaped after.
   ``passes/matmul_rewrite.py`` has these.
7. ``scaled_dot_product_attention`` on q / k / v of rank 5 or more (window attention in timm's NesT
   and Hiera: ``[batch, heads, windows, tokens, dim]``), without a mask: the ONNX exporter translates
   only 4-D attention, so the leading dims but the last are merged before it and restored after it.

9. ``call_module LSTM/GRU/RNN`` on a tensor (not a packed sequence) →
   :func:`qgraph.recurrent.run_recurrent(x, hx, [get_attr weights], ...)`, and their cells →
   :func:`qgraph.recurrent.run_cell`: the weight matrices become
   graph values, quantized weight-only where they are read (``qgraph.ops``); the exporter still
   writes one LSTM/GRU/RNN op. Eval mode: dropout between stacked layers is not in the graph.

10. ``call_module Bilinear`` → ``F.bilinear(x1, x2, weight, bias)``: its ``[out, in1, in2]`` weight
    is quantized weight-only where it is read, per output feature (``qgraph.ops``).

11. An in-place activation (``nn.LeakyReLU(inplace=True)``, ``F.silu(x, inplace=True)``, ``x.sigmoid_()``,
    torch.export's ``aten.leaky_relu_``) whose input is a conv / linear / matmul result read by nothing
    else → its out-of-place form: the same values, and the result is quantized before the activation
    (ONNX Runtime's integer conv then its own activation kernel) instead of after it.

12. ``x.data`` (symbolic tracing's ``getattr(x, "data")``) → ``x.detach()``: the same storage, no
    autograd. The ONNX exporter's ``torch.export`` lifts ``.data`` as a constant and refuses the graph
    when it is written in place (Tacotron 2's ``alignment.data.masked_fill_(mask, -inf)``: "Constant
    lifted_tensor_0 is mutated in the forward method").

13. ``clamp`` / ``clip`` of a float tensor with an int bound beside a float one (SincNet's
    ``torch.clamp(f, 50, sample_rate / 2)``) → both bounds floats: the same values. The ONNX exporter's
    type promotion made the int bound a tensor and then found no ``aten.clamp`` overload for a tensor
    beside a number, float files included.

14. ``torch._assert(x.ndim == k)`` where the traced ``x`` has rank ``k`` is dropped (timm's
    ``BatchNormAct2d``): its rank query was a second reader of the conv result, and the BatchNorm
    stayed float. ``passes/rank_asserts.py``.

After this, weights are graph values that quantizers can be attached to in both dialects
(``torch.export`` graphs already have this form). The module stays in the hierarchy and owns its
parameters, so ``state_dict`` keys do not change, except for cross-attention's split projections
(rule 4). Auto-leaf modules are left alone.
"""

from __future__ import annotations

import math
import operator
import warnings

import torch
import torch.fx as fx
import torch.nn.functional as F
from qgraph.passes.attention_rewrite import (
    drop_packed_projections,
    functional_attention_call,
    module_attention_call,
    rewrite_functional_attention,
    rewrite_module_attention,
)
from qgraph.passes.base import QPass
from qgraph.passes.matmul_rewrite import einsum_linear, einsum_stacked_outputs, linear_of_transposed
from qgraph.passes.rank_asserts import drop_rank_assert
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult
from torch.nn.utils import parametrize

from qgraph.embedding_bag import bag_call, reduce_bags
from qgraph.meta import MODULE_PATH_KEY
from qgraph.ops import SDPA, module_path, tensor_meta
from qgraph.recurrent import module_config, recurrent_call, weight_names

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_ATEN_VIEW = torch.ops.aten.view.default
_ATEN_CONTIGUOUS = torch.ops.aten.contiguous.default


class CanonicalizePass(QPass):
    name = "canonicalize"
    float_rewrite = True

    def __init__(self, leaves: set[str] | None = None) -> None:
        super().__init__()
        self.leaves = set(leaves or ())

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        attention = self._rewritable_attention(gm)
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target in SDPA and self._attention_4d(gm, node):
                modified = True  # rule 7 (the node is visited again below for rule 5)
            if node.op == "call_function" and node.target in SDPA and not _made_contiguous(node):
                with gm.graph.inserting_after(node):
                    if node.target is F.scaled_dot_product_attention:  # a copy, never elided (rule 5)
                        c = gm.graph.call_method("clone", (node,), {"memory_format": torch.contiguous_format})
                    else:
                        c = gm.graph.call_function(torch.ops.aten.clone.default, (node,), {"memory_format": torch.contiguous_format})
                c.meta = {k: v for k, v in node.meta.items() if k != "val"}
                node.replace_all_uses_with(c, delete_user_cb=lambda u, c=c: u is not c)
                modified = True
                continue
            if (call := functional_attention_call(node)) is not None:  # rule 4, F.multi_head_attention_forward
                out, what = rewrite_functional_attention(gm, node, call)
                self.record("replaced", out, module_path(out), what)
                modified = True
                continue
            if (node.op == "call_function" and node.target is getattr and node.args[1:] == ("data",)
                    and isinstance(node.args[0], fx.Node) and tensor_meta(node.args[0]) is not None):  # not a PackedSequence's .data
                with gm.graph.inserting_after(node):
                    detached = gm.graph.call_method("detach", (node.args[0],))
                detached.meta = dict(node.meta)
                node.replace_all_uses_with(detached)
                gm.graph.erase_node(node)
                self.record("replaced", detached, module_path(detached), "x.data → x.detach() (the same storage; the ONNX "
                                                                         "exporter refuses in-place writes to .data)")
                modified = True  # rule 12
                continue
            if _float_clamp_bounds(node):
                modified = True  # rule 13
                continue
            if (removed := drop_rank_assert(gm, node)) is not None:
                self.record("removed", *removed)
                modified = True  # rule 14
                continue
            if _out_of_place(gm, node):
                self.record("replaced", node, module_path(node), "in-place activation on a conv/linear result made out-of-place, "
                                                                  "so the result is quantized before it, as without inplace=True")
                modified = True  # rule 11
                continue
            if linear_of_transposed(self, gm, node) or einsum_linear(self, gm, node) or einsum_stacked_outputs(self, gm, node):
                modified = True  # rule 8
                continue
            if node.op == "call_function" and node.target is _ATEN_VIEW:
                node.target = torch.ops.aten.reshape.default  # rule 5
                modified = True
                continue
            if node.op == "call_function" and node.target is _ATEN_CONTIGUOUS and len(node.args) == 1 and not node.kwargs:
                node.target, node.kwargs = torch.ops.aten.clone.default, {"memory_format": torch.contiguous_format}  # rule 5
                modified = True
                continue
            if node.op == "call_function" and node.target in _ATEN_BAGS and self._aten_embedding_bag(gm, node):
                modified = True  # rule 3, torch.export dialect
                continue
            if node.op != "call_module" or node.target in self.leaves:
                continue
            mod = gm.get_submodule(node.target)
            kind = parametrize.type_before_parametrizations(mod)  # a weight-normed Linear is a ParametrizedLinear
            if type(mod) in (nn.Embedding, nn.EmbeddingBag) and mod.max_norm is not None:
                self._renormalize_table(node, mod)  # then rule 3 applies
                modified = True
            if isinstance(mod, nn.MultiheadAttention):
                if attention.get(node.target):
                    out, what = rewrite_module_attention(gm, node, mod, module_attention_call(node, mod))
                    self.record("replaced", out, str(node.target), what)
                    modified = True
                continue
            if kind is nn.Embedding and mod.max_norm is None and len(node.args) == 1 and not node.kwargs:
                modified |= self._replace(gm, node, F.embedding, (node.args[0], f"{node.target}.weight", mod.padding_idx), "Embedding")
                continue
            if kind is nn.EmbeddingBag and (bags := bag_call(node, mod)) is not None:
                self._embedding_bag(gm, node, mod, bags)
                modified = True
                continue
            if (call := recurrent_call(node, mod)) is not None:
                self._recurrent(gm, node, mod, *call)
                modified = True
                continue
            if kind is nn.Bilinear and len(node.args) == 2 and not node.kwargs:
                modified |= self._replace(gm, node, F.bilinear, (*node.args, f"{node.target}.weight",
                                                                  f"{node.target}.bias" if mod.bias is not None else None), "Bilinear")
                continue
            x = _only_input(node)
            pads = None
            if kind in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and x is not None:
                fn = _CONV_FN[len(mod.kernel_size)]
                if mod.padding_mode == "zeros":
                    extra = (mod.stride, mod.padding, mod.dilation, mod.groups)
                else:  # what nn.Conv._conv_forward runs for the other padding modes
                    extra = (mod.stride, 0, mod.dilation, mod.groups)
                    pads = list(mod._reversed_padding_repeated_twice)
            elif kind is nn.Linear and x is not None:
                fn, extra = F.linear, ()
            else:
                continue
            path = str(node.target)
            with gm.graph.inserting_before(node), warnings.catch_warnings():
                # fx warns that a parametrized weight (a property) has no underlying reference; fold_weights folds it
                warnings.filterwarnings("ignore", "Attempted to insert a get_attr Node with no underlying reference")
                w = gm.graph.get_attr(f"{path}.weight")
                b = gm.graph.get_attr(f"{path}.bias") if mod.bias is not None else None
                if pads is not None:
                    x = gm.graph.call_function(F.pad, (x, pads), {"mode": mod.padding_mode})
                    x.meta = {MODULE_PATH_KEY: path}
                    self.refresh_meta = True  # the padded input's shape comes from the float-rewrite check's run
                new = gm.graph.call_function(fn, (x, w, b, *extra))
            new.meta = dict(node.meta)
            new.meta[MODULE_PATH_KEY] = path
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            padded = f" after F.pad(mode={mod.padding_mode!r})" if pads is not None else ""
            self.record("replaced", new, path, f"{kind.__name__} module call by {fn.__name__}{padded}")
            modified = True
        for path, ok in attention.items():
            if ok:
                drop_packed_projections(gm, path)
        modified |= self._merge_tied(gm)
        return self.finish(gm, modified)

    def _rewritable_attention(self, gm: fx.GraphModule) -> dict[str, bool]:
        """``{path: rewrite}`` for the ``nn.MultiheadAttention`` modules called in ``gm``: all of a
        module's calls are rewritten or none (a call left whole is wrapped, and the wrapper must still
        own the packed projections the others read)."""
        ok: dict[str, bool] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module" and node.target not in self.leaves:
                mod = gm.get_submodule(node.target)
                if isinstance(mod, nn.MultiheadAttention):
                    ok[node.target] = ok.get(node.target, True) and module_attention_call(node, mod) is not None
        return ok

    def _attention_4d(self, gm: fx.GraphModule, node: fx.Node) -> bool:
        """Rule 7: attention on q / k / v of rank 5 or more (no mask, the same leading dims) runs on
        4-D views: all leading dims but the last merged into one, and the result reshaped back."""
        q, k, v = (node.args + (None,) * 3)[:3]
        mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
        metas = [tensor_meta(t) if isinstance(t, fx.Node) else None for t in (q, k, v)]
        if mask is not None or any(m is None for m in metas):
            return False
        shapes = [m[0] for m in metas]
        if len(shapes[0]) <= 4 or len({len(sh) for sh in shapes}) != 1 or len({sh[:-2] for sh in shapes}) != 1:
            return False
        if not all(isinstance(d, int) for sh in shapes for d in sh):
            return False
        reshape = torch.ops.aten.reshape.default if node.target is not F.scaled_dot_product_attention else torch.reshape
        lead = shapes[0][:-2]
        flat = math.prod(lead[:-1])
        with gm.graph.inserting_before(node):
            views = []
            for t, (sh, dtype) in zip((q, k, v), metas):
                r = gm.graph.call_function(reshape, (t, [-1, *sh[-3:]]))
                r.meta = {"val": torch.empty((flat, *sh[-3:]), dtype=dtype, device="meta"), MODULE_PATH_KEY: module_path(node)}
                views.append(r)
        node.args = (*views, *node.args[3:])
        out_shape = (*lead, shapes[0][-2], shapes[2][-1])
        with gm.graph.inserting_after(node):
            back = gm.graph.call_function(reshape, (node, [-1, *out_shape[1:]]))
        back.meta = {"val": torch.empty(out_shape, dtype=metas[0][1], device="meta"), MODULE_PATH_KEY: module_path(node)}
        node.replace_all_uses_with(back, delete_user_cb=lambda u: u is not back)
        node.meta["val"] = torch.empty((flat, *out_shape[-3:]), dtype=metas[0][1], device="meta")
        self.record("reshaped", node, module_path(node), f"{len(lead) + 2}-D attention to 4-D ({'x'.join(map(str, lead))} -> "
                    f"{flat}x{lead[-1]} leading dims; the ONNX exporter translates only 4-D attention)")
        return True

    def _merge_tied(self, gm: fx.GraphModule) -> bool:
        """Rule 6: one ``get_attr`` per parameter object, the first in graph order (it precedes every
        user of a later one)."""
        first: dict[int, fx.Node] = {}
        modified = False
        for node in list(gm.graph.nodes):
            if node.op != "get_attr":
                continue
            try:
                t = gm.get_parameter(str(node.target))
            except AttributeError:
                continue  # a buffer, a constant, a submodule
            keep = first.setdefault(id(t), node)
            if keep is node:
                continue
            node.replace_all_uses_with(keep)
            gm.graph.erase_node(node)
            self.record("merged", keep, str(node.target).rpartition(".")[0], f"tied weight {node.target} read as {keep.target}")
            modified = True
        return modified

    def _renormalize_table(self, node: fx.Node, mod: nn.Module) -> None:
        """Rule 3a: ``max_norm`` renormalizes, in place, each row a lookup reads whose norm exceeds it,
        and a renormalized row never exceeds it again. Doing it once for every row gives every lookup
        the same values, and leaves a table that can be quantized (this is quantize's own copy)."""
        with torch.no_grad():
            torch.embedding_renorm_(mod.weight, torch.arange(mod.num_embeddings, device=mod.weight.device), mod.max_norm,
                                    mod.norm_type)
        self.record("renormalized", node, str(node.target), f"{type(mod).__name__} max_norm={mod.max_norm}: every row renormalized "
                                                           "once, as each lookup would, so the table is fixed and quantizable")
        mod.max_norm = None

    def _embedding_bag(self, gm, node: fx.Node, mod: nn.EmbeddingBag, bags: dict) -> None:
        """Rule 3: ``F.embedding(ids, weight)``, reduced over each bag (:mod:`qgraph.embedding_bag`)."""
        path, g, ids = str(node.target), gm.graph, bags["input"]
        with g.inserting_before(node):
            rows = g.call_function(F.embedding, (ids, g.get_attr(f"{path}.weight")))
            if bags["equal"]:
                out = g.call_method({"sum": "sum", "mean": "mean", "max": "amax"}[mod.mode], (rows, 1))
            else:
                out = g.call_function(reduce_bags, (rows, ids, bags["offsets"], mod.mode, mod.include_last_offset,
                                                    bags["per_sample_weights"], mod.padding_idx))
        for n in (rows, rows.args[1], out):
            n.meta[MODULE_PATH_KEY] = path
        out.meta = {**node.meta, MODULE_PATH_KEY: path}
        node.replace_all_uses_with(out)
        g.erase_node(node)
        how = (f"{out.target} over the bag" if bags["equal"] else
               "a scatter of each row into its bag" + (" (offsets)" if bags["offsets"] is not None else ""))
        self.record("replaced", out, path, f"EmbeddingBag (mode {mod.mode}{', bags of equal size' if bags['equal'] else ''}) "
                                           f"module call by embedding and {how}")

    def _recurrent(self, gm, node: fx.Node, mod: nn.Module, fn, x: fx.Node, hx) -> None:
        """Rule 9: an LSTM/GRU/RNN (cell) module call → :func:`qgraph.recurrent.run_recurrent`
        (``run_cell``) on its weights."""
        path, g = str(node.target), gm.graph
        with g.inserting_before(node):
            weights = [g.get_attr(f"{path}.{name}") for name in weight_names(mod)]
            new = g.call_function(fn, (x, hx, weights, *module_config(mod)))
        for w in weights:
            w.meta[MODULE_PATH_KEY] = path
        new.meta = {**node.meta, MODULE_PATH_KEY: path}
        node.replace_all_uses_with(new)
        g.erase_node(node)
        self.record("replaced", new, path, f"{type(mod).__name__} module call by {fn.__name__} on its {len(weights)} weights"
                    + (" (eval mode: no dropout between layers)" if getattr(mod, "dropout", 0) and mod.num_layers > 1 else ""))

    def _aten_embedding_bag(self, gm, node: fx.Node) -> bool:
        """Rule 3 on a ``torch.export`` graph: ``aten.embedding_bag(weight, ids, offsets, ...)[0]`` →
        ``aten.embedding(weight, ids)`` and :func:`reduce_bags` (the bag's other outputs unused)."""
        names = ("weight", "indices", "offsets", "scale_grad_by_freq", "mode", "sparse", "per_sample_weights",
                 "include_last_offset", "padding_idx")
        call = {**dict(zip(names, node.args)), **node.kwargs}
        users = list(node.users)
        w = call["weight"]
        if (not isinstance(w, fx.Node) or w.op != "get_attr" or call.get("mode", 0) not in (0, 1, 2) or not users
                or any(u.target is not operator.getitem or u.args[1] != 0 for u in users)):
            return False
        ids, g = call["indices"], gm.graph
        pad = call.get("padding_idx")
        with g.inserting_before(node):
            rows = g.call_function(torch.ops.aten.embedding.default, (w, ids))
            out = g.call_function(reduce_bags, (rows, ids, call["offsets"], ("sum", "mean", "max")[call.get("mode", 0)],
                                                bool(call.get("include_last_offset", False)), call.get("per_sample_weights"),
                                                None if pad is None or pad < 0 else pad))
        wv, iv = w.meta.get("val"), ids.meta.get("val")
        rows.meta = {k: v for k, v in node.meta.items() if k != "val"}
        if isinstance(wv, torch.Tensor) and isinstance(iv, torch.Tensor):
            rows.meta["val"] = torch.ops.aten.embedding.default(wv, iv)
        out.meta = dict(users[0].meta)
        for u in users:
            u.replace_all_uses_with(out)
            g.erase_node(u)
        g.erase_node(node)
        self.record("replaced", out, module_path(out) or str(w.target).rpartition(".")[0],
                    f"{node.target} by embedding and a scatter of each row into its bag")
        return True

    def _replace(self, gm, node: fx.Node, fn, args: tuple, what: str) -> bool:
        """``node`` → ``fn(*args)``, where string args name attributes to read with ``get_attr``."""
        path = str(node.target)
        new = replace_module_call(gm, node, fn, args)
        self.record("replaced", new, path, f"{what} module call by {fn.__name__}")
        return True



def _only_input(node: fx.Node):
    """The one input of a layer's call, ``layer(x)`` or ``layer(input=x)``; None for any other call."""
    if len(node.args) == 1 and not node.kwargs:
        return node.args[0]
    if not node.args and set(node.kwargs) == {"input"}:
        return node.kwargs["input"]
    return None


def replace_module_call(gm: fx.GraphModule, node: fx.Node, fn, args: tuple) -> fx.Node:
    """A ``call_module`` node → ``fn(*args)``, where string args name attributes to read with
    ``get_attr``; the new node keeps the module's path."""
    with gm.graph.inserting_before(node):
        args = tuple(gm.graph.get_attr(a) if isinstance(a, str) else a for a in args)
        new = gm.graph.call_function(fn, args)
    new.meta = {**node.meta, MODULE_PATH_KEY: str(node.target)}
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


_ATEN_BAGS = {getattr(torch.ops.aten, op).default for op in ("embedding_bag", "_embedding_bag")} | {torch.ops.aten.embedding_bag.padding_idx}


def _made_contiguous(node: fx.Node) -> bool:
    users = list(node.users)
    return len(users) == 1 and (users[0].target == "clone" or users[0].target is torch.ops.aten.clone.default) \
        and users[0].kwargs.get("memory_format") == torch.contiguous_format


# rule 11: in-place activations, and the results they may be made out-of-place on
_INPLACE_ACTIVATIONS = {"relu_", "relu6_", "leaky_relu_", "silu_", "elu_", "celu_", "selu_", "gelu_", "mish_", "hardswish_",
                        "hardsigmoid_", "hardtanh_", "sigmoid_", "tanh_", "clamp_", "clamp_min_", "clamp_max_", "threshold_"}
_INPLACE_KWARG = {F.relu, F.relu6, F.leaky_relu, F.silu, F.elu, F.celu, F.selu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh,
                  F.threshold}
_WEIGHTED_RESULTS = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear,
                     torch.matmul, operator.matmul} | {
    getattr(torch.ops.aten, name).default for name in ("conv1d", "conv2d", "conv3d", "linear", "matmul", "mm", "addmm")
} | {torch.ops.aten.convolution.default, torch.ops.aten.conv_transpose2d.input, torch.ops.aten.conv_transpose1d.default,
     torch.ops.aten.conv_transpose3d.input}


def _out_of_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Rule 11: ``node`` made out-of-place where it is an in-place activation on a weighted op's
    result that nothing else reads; False where it is not."""
    x = node.args[0] if node.args else None
    if not (isinstance(x, fx.Node) and len(x.users) == 1 and (
            x.op == "call_function" and x.target in _WEIGHTED_RESULTS
            or x.op == "call_module" and isinstance(gm.get_submodule(x.target), (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)))):
        return False
    if node.op == "call_method" and node.target in _INPLACE_ACTIVATIONS:
        node.target = node.target[:-1]
        return True
    if node.op == "call_function" and node.target in _INPLACE_KWARG and node.kwargs.get("inplace") is True:
        node.kwargs = {**node.kwargs, "inplace": False}
        return True
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) and node.target._schema.name.startswith("aten::"):
        name = node.target._schema.name.removeprefix("aten::")
        packet = getattr(torch.ops.aten, name[:-1], None) if name in _INPLACE_ACTIVATIONS else None
        functional = getattr(packet, node.target._overloadname, None) if packet is not None else None
        if functional is not None and [a.name for a in functional._schema.arguments] == [a.name for a in node.target._schema.arguments]:
            node.target = functional
            return True
    return False


_CLAMPS = {torch.clamp, torch.clip, torch.ops.aten.clamp.default}


def _float_clamp_bounds(node: fx.Node) -> bool:
    """Rule 13: an int bound beside a float one, on a float tensor, becomes a float."""
    if not ((node.op == "call_function" and node.target in _CLAMPS) or (node.op == "call_method" and node.target in ("clamp", "clip"))):
        return False
    meta = tensor_meta(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    if meta is None or not meta[1].is_floating_point:
        return False
    names = ("min", "max")
    bounds = {name: node.args[1 + i] if len(node.args) > 1 + i else node.kwargs.get(name) for i, name in enumerate(names)}
    numbers = [v for v in bounds.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not any(isinstance(v, float) for v in numbers) or all(isinstance(v, float) for v in numbers):
        return False
    args, kwargs = list(node.args), dict(node.kwargs)
    for i, name in enumerate(names):
        if len(args) > 1 + i and type(args[1 + i]) is int:
            args[1 + i] = float(args[1 + i])
        elif type(kwargs.get(name)) is int:
            kwargs[name] = float(kwargs[name])
    node.args, node.kwargs = tuple(args), kwargs
    return True
