"""OFQPass: oscillation-free QAT on the quantized graph (the ``ofq`` method pass, recipe ``ofq(bits=2)``).

Runs after insert_quantizers, which placed the recipe's per-channel weight quantizers and per-tensor
activation quantizers on linears / matmuls (patch embedding and heads, the ``keep`` globs, at 8 bits).
Rules, in order:

1. **StatsQ** (``method="statsq"``): every weight quantizer outside ``keep`` becomes a
   :class:`qgraph.ofq.StatsQuantize` (``method="lsq"`` keeps the recipe's quantizer: learnable under QAT).
2. **Query-key reparameterization** (``qkr``): for each ``matmul(q, kᵀ)`` whose operands come, through
   index ops only (reshape, view, permute, transpose, getitem, unbind, chunk, split, contiguous) and
   the operands' quantizers, from linears on one shared input ``x̂`` (a fused ``qkv`` linear or separate
   ``q``/``k`` linears), the rows of ``q`` and ``k`` per head are found by running the graph once with the
   linears' outputs replaced by index probes (each element = its (batch, token, feature) position).
   The matmul becomes ``call_module <attention>.qk`` (:class:`qgraph.ofq.QKRScores` holding ``W_q``, ``W_k``
   and a StatsQ quantizer for ``W_qk``). A fused ``qkv`` linear is then split: ``v`` is recomputed by a
   new linear ``<qkv>_v`` on the ``v`` rows (its own StatsQ weight quantizer) and the old linear goes.
   A matmul that looks like attention (its result reaches a softmax) but does not fit is recorded as
   ``not reparameterized`` naming the module and why (its q/k quantizers stay).
3. **Activations**: every activation quantizer outside ``keep`` becomes a
   :class:`qgraph.ofq.TokenLSQuantize` (per-token LSQ with learnable biases; unsigned, no biases
   after a softmax).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from qgraph.passes.base import ANNOTATION_KEY, QPass, unique_submodule_name
from qgraph.passes.insert_quantizers import is_quantizer_node
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.dead_code import eliminate_dead_code
from qgraph.meta import MODULE_PATH_KEY
from qgraph.ofq import QKRScores, StatsQuantize, TokenLSQuantize, matches_any
from qgraph.ops import CONV_MODULES, CONV_TRANSPOSE_MODULES, LINEAR_MODULES, classify, tensor_meta
from qgraph.quantizer import FakeQuantize

INDEX_METHODS = {"reshape", "view", "permute", "transpose", "contiguous", "unflatten", "unbind", "chunk", "split", "flatten"}
INDEX_FUNCTIONS = {operator.getitem, torch.reshape, torch.permute, torch.transpose, torch.unbind, torch.chunk, torch.split,
                   torch.flatten, torch.unflatten}
SOFTMAX = {torch.softmax, F.softmax, torch.ops.aten.softmax.int, torch.ops.aten._softmax.default}


def _is_index_op(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in INDEX_METHODS
    if node.op == "call_function":
        return node.target in INDEX_FUNCTIONS or (isinstance(node.target, torch._ops.OpOverload)
                                                  and node.target.__name__.split(".")[0] in
                                                  {"view", "reshape", "permute", "transpose", "select", "unbind", "split",
                                                   "split_with_sizes", "slice", "clone", "_unsafe_view", "expand"})
    return False


def _is_softmax(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target == "softmax"
    if node.op == "call_function":
        return node.target in SOFTMAX
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.Softmax)
    return False


def _channel_first(gm: fx.GraphModule, node: fx.Node, hops: int = 8) -> bool:
    """Whether the activation quantizer ``node`` sees a convolution's channel-first map: it feeds a
    conv's input, or its value comes from a conv (or conv transpose) through ops that keep the shape
    (activations, BatchNorm, residual adds). Anything else is token-major ``[..., N, C]``."""
    def kind(n: fx.Node) -> str | None:
        if n.op == "call_module":  # a layer kept whole by a wrapper (a transposed conv)
            inner = getattr(gm.get_submodule(str(n.target)), "module", None)
            if isinstance(inner, CONV_MODULES + CONV_TRANSPOSE_MODULES + LINEAR_MODULES):
                return "linear" if isinstance(inner, LINEAR_MODULES) else "conv"
        info = classify(gm, n) if n.op != "get_attr" else None
        return None if info is None else "conv" if info.kind == "conv_transpose" else info.kind

    if any(kind(user) == "conv" and user.args and user.args[0] is node for user in node.users):
        return True
    src = node.args[0] if node.args else None
    meta = tensor_meta(src) if isinstance(src, fx.Node) else None
    if meta is None or len(meta[0]) < 3:
        return False
    while isinstance(src, fx.Node) and hops > 0:
        k = kind(src)
        if k is not None and k != "add":
            return k == "conv"
        here = tensor_meta(src)
        if here is None or here[0] != meta[0]:
            return False
        src = next((a for a in src.args if isinstance(a, fx.Node)), None)
        hops -= 1
    return False


class OFQPass(QPass):
    name = "ofq"

    def __init__(self, bits: int = 2, method: str = "statsq", qkr: bool = True, keep: list | tuple = ("patch_embed*", "head*"),
                 per_token: bool = True, exact_bias: bool = True) -> None:
        super().__init__()
        self.bits, self.method, self.qkr, self.keep = bits, method, qkr, tuple(keep)
        self.per_token, self.exact_bias = per_token, exact_bias

    def call(self, gm: fx.GraphModule) -> PassResult:
        from qgraph.packing import weight_quantizers

        modified = False
        if self.method == "statsq":  # rule 1
            for key, name in weight_quantizers(gm).items():
                q = gm.get_submodule(name)
                if matches_any(q.where, self.keep) or isinstance(q, StatsQuantize):
                    continue
                self._set(gm, name, StatsQuantize(self.bits, where=q.where))
                self.record("replaced", name, q.where, f"weight quantizer of {key} → {self.bits}-bit StatsQ (s_r = 2·mean|W_r|)")
                modified = True
        if self.qkr:  # rule 2
            modified |= self._reparameterize(gm)
        for node in list(gm.graph.nodes):  # rule 3
            if not is_quantizer_node(gm, node):
                continue
            q = gm.get_submodule(node.target)
            if q.role != "activation" or isinstance(q, TokenLSQuantize) or matches_any(q.where, self.keep):
                continue
            src = node.args[0]
            after_softmax = isinstance(src, fx.Node) and _is_softmax(gm, src)
            spec = q.spec.with_(signed=False) if after_softmax else q.spec
            channel_first = _channel_first(gm, node)
            self._set(gm, str(node.target), TokenLSQuantize(spec, q.where, self.per_token, biases=not after_softmax,
                                                            channel_axis=1 if channel_first else -1))
            kind = ("per-tensor (a conv's channel-first map, β per channel on axis 1)" if channel_first
                    else "per-token" if self.per_token else "per-tensor")
            grid = f"{'int' if spec.signed else 'uint'}{spec.bits}"
            self.record("replaced", node, q.where, f"activation quantizer → {kind} LSQ {grid}"
                        + (" (softmax output)" if after_softmax else " with learnable biases β1, β2"))
            modified = True
        modified |= self._wrapped_activations(gm)
        if modified:
            eliminate_dead_code(gm.graph)
            gm.delete_all_unused_submodules()
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified)

    def _wrapped_activations(self, gm: fx.GraphModule) -> bool:
        """Rule 3 for the activation quantizers of layers kept whole as modules (:class:`QuantizedModule`:
        inside auto-leaves, transposed convs): they are not graph nodes."""
        from qgraph.wrappers import QuantizedModule

        modified = False
        for path, mod in list(gm.named_modules()):
            if not isinstance(mod, QuantizedModule):
                continue
            conv = not isinstance(mod.module, LINEAR_MODULES)
            for attr in ("input_quantizer", "output_quantizer"):
                q = getattr(mod, attr)
                if (not isinstance(q, FakeQuantize) or isinstance(q, TokenLSQuantize) or q.role != "activation"
                        or matches_any(q.where, self.keep)):
                    continue
                self._set(gm, f"{path}.{attr}", TokenLSQuantize(q.spec, q.where, self.per_token, biases=True,
                                                                 channel_axis=1 if conv else -1))
                kind = "per-tensor (a conv's channel-first map, β per channel on axis 1)" if conv else (
                    "per-token" if self.per_token else "per-tensor")
                self.record("replaced", f"{path}.{attr}", q.where,
                            f"activation quantizer of a wrapped layer → {kind} LSQ "
                            f"{'int' if q.spec.signed else 'uint'}{q.spec.bits} with learnable biases β1, β2")
                modified = True
        return modified

    @staticmethod
    def _set(gm: fx.GraphModule, name: str, new: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, child, new)

    # ----------------------------------------------------------------- query-key reparameterization
    def _chain(self, gm, node) -> tuple[fx.Node | None, list[fx.Node]]:
        """Walk back from a matmul operand through quantizers and index ops to a linear node."""
        seen = []
        while isinstance(node, fx.Node):
            if is_quantizer_node(gm, node):
                node = node.args[0]
                continue
            info = classify(gm, node) if node.op == "call_function" else None
            if info is not None and info.kind == "linear":
                return node, seen
            if not _is_index_op(node) or not node.args:
                return None, seen
            seen.append(node)
            node = node.args[0]
        return None, seen

    def _reparameterize(self, gm: fx.GraphModule) -> bool:
        candidates = []
        for node in gm.graph.nodes:
            info = classify(gm, node) if node.op in ("call_function", "call_method") else None
            if info is None or info.kind != "matmul" or node.op == "call_function" and node.target is F.scaled_dot_product_attention:
                continue
            if not _reaches_softmax(gm, node):
                continue
            a, b = node.args[0], node.args[1]
            la, _ = self._chain(gm, a)
            lb, _ = self._chain(gm, b)
            path = info.module_path or node.name
            if la is None or lb is None:
                self.record("not reparameterized", node, path, "q @ kᵀ: an operand does not come from a linear through index "
                            "ops only; its matmul stays as it is")
                continue
            xa, xb = _linear_input(gm, la), _linear_input(gm, lb)
            if xa is not xb:
                self.record("not reparameterized", node, path, "q and k are not projections of the same input (cross-attention)")
                continue
            candidates.append((node, la, lb, path))
        sdpa = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in
                (F.scaled_dot_product_attention, torch.ops.aten.scaled_dot_product_attention.default)]
        for n in sdpa:
            self.record("not reparameterized", n, classify(gm, n).module_path or n.name,
                        "scaled_dot_product_attention (e.g. nn.MultiheadAttention) is not reparameterized yet; its q, k, v "
                        "are quantized as matmul inputs")
        if not candidates:
            return False
        # values of interest: each chain's last node before its operand quantizer, and every value a
        # fused linear still feeds (v), with the linears' outputs replaced by index probes
        linears = {c[1] for c in candidates} | {c[2] for c in candidates}
        values = _probe(gm, linears)
        modified = False
        for node, la, lb, path in candidates:
            qv, kv = values.get(_operand_value(gm, node.args[0])), values.get(_operand_value(gm, node.args[1]))
            rows = _decode_qk(qv, kv, la.meta, lb.meta)
            if isinstance(rows, str):
                self.record("not reparameterized", node, path, rows)
                continue
            q_rows, k_rows = rows
            heads = q_rows.shape[0]
            wa, ba = _linear_params(gm, la)
            wb, bb = _linear_params(gm, lb)
            qk = QKRScores(wa[q_rows.reshape(-1)], wb[k_rows.reshape(-1)], ba[q_rows.reshape(-1)] if ba is not None else None,
                           bb[k_rows.reshape(-1)] if bb is not None else None, heads,
                           self.bits if self.method == "statsq" else None, where=path, exact_bias=self.exact_bias)
            x = _linear_input(gm, la)
            act = _activation_spec(gm, x)
            if act is not None:
                qk.xqk_quantizer = TokenLSQuantize(act, f"{path}.x·W_qk", self.per_token, biases=True)
            name = unique_submodule_name(gm, f"{path}.qk" if path else f"{node.name}_qk")
            gm.add_submodule(name, qk)
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(name, (x,))
            new.meta = {k: v for k, v in node.meta.items() if k in ("val", "tensor_meta", "nn_module_stack")}
            new.meta[MODULE_PATH_KEY] = path
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            c = qk.dim
            self.record("reparameterized", new, path, f"q @ kᵀ → QKRScores: {heads} heads, W_qk [{heads * c}, {c}] "
                        f"{'StatsQ ' + str(self.bits) + '-bit' if qk.qk_quantizer else 'float'}; scores cost H·N·C² = "
                        f"{heads}·N·{c}² MACs instead of 2·N·C² for q, k")
            modified = True
        eliminate_dead_code(gm.graph)
        for lin in sorted(linears, key=lambda n: n.name):
            if lin.graph is gm.graph and lin.users:
                self._split_v(gm, lin, values)
        return modified

    def _split_v(self, gm: fx.GraphModule, lin: fx.Node, values: dict) -> None:
        """A fused qkv linear that now only feeds v: a linear on the v rows replaces it."""
        info = classify(gm, lin)
        path = info.module_path or lin.name
        ends = _chain_ends(gm, lin)
        if len(ends) != 1 or ends[0] not in values:
            self.record("kept", lin, path, "the q/k projection also feeds other values: it stays whole")
            return
        v_node = ends[0]
        rows = _decode_tokens(values[v_node], lin.meta)
        if isinstance(rows, str):
            self.record("kept", lin, path, f"its remaining output (v) is not [B, H, N, d] per token: {rows}")
            return
        heads, d = rows.shape
        w, b = _linear_params(gm, lin)
        flat = rows.reshape(-1)
        holder = nn.Module()
        holder.weight = nn.Parameter(w.detach()[flat].clone())
        holder.bias = nn.Parameter(b.detach()[flat].clone()) if b is not None else None
        base = unique_submodule_name(gm, f"{path}_v")
        gm.add_submodule(base, holder)
        wq_node = info.weight
        wq = gm.get_submodule(wq_node.target) if is_quantizer_node(gm, wq_node) else None
        g = gm.graph
        with g.inserting_before(v_node):
            w_attr = g.get_attr(f"{base}.weight")
            w_in = w_attr
            if wq is not None:
                newq = StatsQuantize(self.bits, where=base) if isinstance(wq, StatsQuantize) else type(wq)(wq.spec, "weight", where=base)
                gm.add_submodule(f"{base}.weight_quantizer", newq)
                w_in = g.call_module(f"{base}.weight_quantizer", (w_attr,))
            args = (_linear_input(gm, lin), w_in) + ((g.get_attr(f"{base}.bias"),) if b is not None else ())
            y = g.call_function(F.linear, args)
            v = g.call_method("transpose", (g.call_method("unflatten", (y, -1, (heads, d))), 1, 2))
        if ANNOTATION_KEY in lin.meta:
            y.meta[ANNOTATION_KEY] = lin.meta[ANNOTATION_KEY]
        for n in (w_attr, y):
            n.meta[MODULE_PATH_KEY] = base
        v_node.replace_all_uses_with(v)
        eliminate_dead_code(g)
        self.record("split", y, base, f"v = rows of {path}'s weight ({heads}×{d} of {w.shape[0]}); the fused q/k/v linear goes "
                    "(q and k live in the QKR module)")
        _drop_orphans(gm, info.module_path)


def _drop_orphans(gm: fx.GraphModule, path: str) -> None:
    """Delete the old linear's parameters (``<path>.weight``, ``<path>.bias``) once no node reads them."""
    read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    try:
        old = gm.get_submodule(path) if path else None
    except AttributeError:
        return
    if old is None or any(f"{path}.{n}" in read for n, _ in old.named_parameters(recurse=False)):
        return
    holder = nn.Module()  # (a Linear without its weight would not even print: keep only its children, e.g. quantizers)
    for n, child in old.named_children():
        holder.add_module(n, child)
    parent, _, child = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, holder)


def _reaches_softmax(gm, node: fx.Node, depth: int = 4) -> bool:
    """Whether the matmul's result reaches a softmax through at most ``depth`` elementwise ops (scale, mask)."""
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for u in n.users:
                if _is_softmax(gm, u):
                    return True
                nxt.append(u)
        frontier = nxt
    return False


def _linear_input(gm, lin: fx.Node) -> fx.Node:
    return classify(gm, lin).activations[0]


def _linear_params(gm, lin: fx.Node) -> tuple[torch.Tensor, torch.Tensor | None]:
    info = classify(gm, lin)
    w = info.weight.args[0] if is_quantizer_node(gm, info.weight) else info.weight
    weight = _fetch(gm, str(w.target))
    bias = _fetch(gm, str(info.bias.target)) if info.bias is not None and info.bias.op == "get_attr" else None
    return weight.detach(), (bias.detach() if bias is not None else None)


def _fetch(gm, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _activation_spec(gm, x: fx.Node):
    if is_quantizer_node(gm, x):
        q = gm.get_submodule(x.target)
        return q.spec if q.role == "activation" else None
    return None


def _operand_value(gm, node: fx.Node) -> fx.Node:
    while is_quantizer_node(gm, node):
        node = node.args[0]
    return node


def _chain_ends(gm, lin: fx.Node) -> list[fx.Node]:
    """The values the linear feeds through index ops only (the last index op of each path); ``[]``
    when its output also goes elsewhere."""
    ends, frontier = [], [lin]
    while frontier:
        n = frontier.pop()
        users = list(n.users)
        if users and all(_is_index_op(u) for u in users):
            frontier += users
        elif n is lin or any(_is_index_op(u) for u in users):
            return []
        else:
            ends.append(n)
    return ends


def _probe(gm: fx.GraphModule, linears: set) -> dict:
    """Run the graph once with each linear's output replaced by a tensor whose elements are their own
    (batch, token, feature) positions, ``(b·N + n)·F + f``; returns the value of every node."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    args = []
    for p in placeholders:
        meta = tensor_meta(p)  # the example's concrete shape (a torch.export capture's val has a symbolic batch)
        if meta is None or not all(isinstance(d, int) for d in meta[0]):
            return {}
        args.append(torch.zeros(meta[0], dtype=meta[1]))
    modes = {m: m.mode for m in gm.modules() if isinstance(m, FakeQuantize)}
    for m in modes:
        m.mode = "off"
    values: dict = {}

    class Probe(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in linears and isinstance(out, torch.Tensor) and out.dim() == 3 and out.numel() < 2**24:
                out = torch.arange(out.numel(), dtype=torch.float32).reshape(out.shape)
            if isinstance(out, torch.Tensor):
                values[n] = out
            return out

    was = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            Probe(gm).run(*args)
    except Exception:  # noqa: BLE001  (no probe: nothing is reparameterized, each candidate says so)
        return {}
    finally:
        for m, mode in modes.items():
            m.mode = mode
        gm.train(was)
    return values


def _positions(v: torch.Tensor, meta: dict):
    shape = tuple(meta["val"].shape) if "val" in meta else tuple(meta["tensor_meta"].shape)
    _, n, f = shape
    v = v.to(torch.int64)
    return v // (n * f), (v // f) % n, v % f, n


def _decode_tokens(v: torch.Tensor | None, meta: dict, token_axis: int = -2):
    """``[H, d]`` feature rows of a ``[B, H, N, d]`` value (token axis ``token_axis``) or a reason it is not one."""
    if v is None:
        return "the graph could not be probed"
    if v.dim() != 4:
        return f"expected a [B, H, N, d] value, got {v.dim()}-D"
    bat, tok, feat, n = _positions(v, meta)
    if token_axis == -1:
        bat, tok, feat = (t.transpose(-1, -2) for t in (bat, tok, feat))
    b_ok = torch.equal(bat, torch.arange(v.shape[0]).view(-1, 1, 1, 1).expand_as(bat))
    t_ok = tok.shape[2] == n and torch.equal(tok, torch.arange(n).view(1, 1, -1, 1).expand_as(tok))
    rows = feat[0, :, 0, :]
    f_ok = torch.equal(feat, rows.view(1, *rows.shape[:1], 1, rows.shape[1]).expand_as(feat))
    if not (b_ok and t_ok and f_ok):
        return "its head split mixes batch, tokens or features"
    return rows


def _decode_qk(qv, kv, qmeta, kmeta):
    q_rows = _decode_tokens(qv, qmeta, -2)
    if isinstance(q_rows, str):
        return f"q: {q_rows}"
    k_rows = _decode_tokens(kv, kmeta, -1)
    if isinstance(k_rows, str):
        return f"kᵀ: {k_rows}"
    if q_rows.shape != k_rows.shape:
        return f"q heads {tuple(q_rows.shape)} and k heads {tuple(k_rows.shape)} differ"
    return q_rows, k_rows


__all__ = ["OFQPass"]
