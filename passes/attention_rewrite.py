"""Attention calls as graph ops, for ``CanonicalizePass`` (rule 4).

* An ``nn.MultiheadAttention`` module call (:func:`module_attention_call`,
  :func:`rewrite_module_attention`): in-projection → split heads → ``F.scaled_dot_product_attention``
  → merge heads → out-projection, with the module's masks combined as it combines them.
* ``F.multi_head_attention_forward`` called directly with a layer's weights (OpenAI CLIP's attention
  pooling, hand-written encoders; :func:`functional_attention_call`,
  :func:`rewrite_functional_attention`): the same ops. Self-attention on a packed ``in_proj_weight``,
  or separate ``q/k/v_proj_weight`` (``use_separate_proj_weight=True``) with any query, key and
  value. torch.fx kept the call as one opaque node, so its projections stayed float.

Either way the projections become ordinary ``F.linear`` calls on the weights, which are quantized per
channel and fused by ONNX Runtime.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from qgraph.meta import MODULE_PATH_KEY
from qgraph.ops import module_path, tensor_meta


def rewrite_module_attention(gm: fx.GraphModule, node: fx.Node, mod: nn.MultiheadAttention, call: dict) -> tuple[fx.Node, str]:
    """Rule 4: an ``nn.MultiheadAttention`` call (``call``: :func:`module_attention_call`) as graph ops;
    returns the output node and what replaced the call."""
    x, key, value = call["query"], call["key"], call["value"]
    path, heads = str(node.target), mod.num_heads
    g = gm.graph
    before = node.prev
    with g.inserting_before(node):
        seq_first = (lambda t: t) if mod.batch_first else (lambda t: g.call_method("transpose", (t, 0, 1)))
        q, k, v, projections = _in_projections(gm, path, mod, seq_first(x),
                                               *((None, None) if key is x and value is x else
                                                 (seq_first(key), None if value is key else seq_first(value))))
        o = g.call_function(F.scaled_dot_product_attention, (q, k, v), _sdpa_masking(g, call, heads))
        o = g.call_method("flatten", (g.call_method("transpose", (o, 1, 2)), 2))  # [N, L, dim]
        w_out = g.get_attr(f"{path}.out_proj.weight")
        b_out = g.get_attr(f"{path}.out_proj.bias") if mod.out_proj.bias is not None else None
        proj = out = g.call_function(F.linear, (o, w_out, b_out))
        if not mod.batch_first:
            out = g.call_method("transpose", (out, 0, 1))
    n = before.next
    while n is not node:  # the nodes this rewrite inserted, in order
        n.meta[MODULE_PATH_KEY] = f"{path}.out_proj" if n in (proj, w_out, b_out) else path
        n = n.next
    _replace_outputs(g, node, out)
    note = f", attention dropout {mod.dropout} left out" if mod.dropout else ""
    masks = [m for m in ("attn_mask", "key_padding_mask") if call[m] is not None] + (["is_causal"] if call["is_causal"] else [])
    note += f", masked by {' and '.join(masks)}" if masks else ""
    kind = "self-attention" if x is key is value else "cross-attention" if key is value else "separate key and value"
    return out, f"MultiheadAttention ({kind}, {heads} heads) by {projections}, scaled_dot_product_attention, out-projection{note}"

def _in_projections(gm, path: str, mod: nn.MultiheadAttention, x: fx.Node, key: fx.Node | None,
                    value: fx.Node | None) -> tuple:
    """q, k, v as ``[N, heads, length, head_dim]`` and what computed them. Self-attention (``key``
    None): one linear on the packed ``in_proj_weight``. Otherwise q reads rows ``[0, E)`` of it and
    k and v the rest, in one linear when they read the same tensor (``value`` None); a module
    with ``kdim``/``vdim`` has ``q/k/v_proj_weight`` already. Row blocks of the packed parameters
    become parameters of their own (``q_in_proj_weight``, ``kv_in_proj_weight``, ``q_in_proj_bias``
    ...), so each projection is an ordinary linear whose weight is quantized and stored once; the
    packed ones are dropped once no call reads them (:func:`drop_packed_projections`)."""
    g, heads, dim = gm.graph, mod.num_heads, mod.embed_dim

    def heads_first(t: fx.Node, n: int) -> list[fx.Node]:
        return _heads_first(g, t, n, heads, dim // heads)

    def linear(inp: fx.Node, name: str, rows: slice) -> fx.Node:
        if mod._qkv_same_embed_dim:
            _register(gm, w := f"{path}.{name}_in_proj_weight", mod.in_proj_weight[rows])
        else:
            w = f"{path}.{name}_proj_weight"
        if mod.in_proj_bias is not None:
            _register(gm, b := f"{path}.{name}_in_proj_bias", mod.in_proj_bias[rows])
        return g.call_function(F.linear, (inp, g.get_attr(w), g.get_attr(b) if mod.in_proj_bias is not None else None))

    if key is None:
        w_in = g.get_attr(f"{path}.in_proj_weight")
        b_in = g.get_attr(f"{path}.in_proj_bias") if mod.in_proj_bias is not None else None
        return *heads_first(g.call_function(F.linear, (x, w_in, b_in)), 3), "in-projection"
    (q,) = heads_first(linear(x, "q", slice(0, dim)), 1)
    if value is None and mod._qkv_same_embed_dim:
        k, v = heads_first(linear(key, "kv", slice(dim, 3 * dim)), 2)
        what = "q and kv projections"
    else:
        (k,) = heads_first(linear(key, "k", slice(dim, 2 * dim)), 1)
        (v,) = heads_first(linear(key if value is None else value, "v", slice(2 * dim, 3 * dim)), 1)
        what = "q, k and v projections"
    return q, k, v, what


def module_attention_call(node: fx.Node, mod: nn.MultiheadAttention) -> dict | None:
    """The arguments of an ``nn.MultiheadAttention`` call by name (``key`` is ``query`` and ``value``
    is ``key`` where they compute the same value), or None when rule 4 does not apply."""
    args = list(node.args) + [None] * (8 - len(node.args))
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")
    call = dict(zip(names, args))
    call.update(node.kwargs)
    x = call["query"]
    if _same_value(call["key"], x):  # attn(x.transpose(0, 1), x.transpose(0, 1), ...): two nodes, one value
        call["key"] = x
    if _same_value(call["value"], call["key"]):
        call["value"] = call["key"]
    simple = (
        all(isinstance(call[t], fx.Node) and _rank(call[t]) == 3 for t in ("query", "key", "value"))
        and all(call[m] is None or _float_or_bool(call[m]) for m in ("key_padding_mask", "attn_mask"))
        and isinstance(call["is_causal"], (bool, type(None))) and not (call["is_causal"] and call["attn_mask"] is None)
        and isinstance(call["need_weights"], (bool, type(None)))
        and mod.bias_k is None and mod.bias_v is None and not mod.add_zero_attn
        and _weights_unused(node)
    )
    return call if simple else None


def drop_packed_projections(gm: fx.GraphModule, path: str) -> None:
    """Set the packed projections of a rewritten attention module to None where no node reads them any
    more (its cross-attention calls read row blocks of their own), so they are neither kept nor trained."""
    mod = gm.get_submodule(path)
    read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name in ("in_proj_weight", "in_proj_bias"):
        if getattr(mod, name, None) is not None and f"{path}.{name}" not in read:
            setattr(mod, name, None)


def _same_value(a, b) -> bool:
    """The same node, or the same pure view/op call on the same inputs (``kv.transpose(0, 1)`` written twice)."""
    if a is b:
        return True
    return (isinstance(a, fx.Node) and isinstance(b, fx.Node) and a.op == b.op and a.op in ("call_method", "call_function")
            and a.target == b.target and a.args == b.args and a.kwargs == b.kwargs
            and str(getattr(a.target, "__name__", a.target)) in _PURE)


_PURE = {"transpose", "permute", "reshape", "view", "contiguous", "flatten", "unflatten", "squeeze", "unsqueeze", "getitem",
         "float", "to", "type_as", "detach", "t"}


def _register(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    """A new parameter ``target`` holding a copy of ``value`` (trainable, like the one it came from);
    a second call of the same module finds it there."""
    owner, _, attr = target.rpartition(".")
    owner = gm.get_submodule(owner) if owner else gm
    if not isinstance(getattr(owner, attr, None), nn.Parameter):
        setattr(owner, attr, nn.Parameter(value.detach().clone()))


def _float_or_bool(node) -> bool:
    """A mask argument whose dtype is known: bool (True = masked out) or floating point (added)."""
    tm = tensor_meta(node) if isinstance(node, fx.Node) else None
    return tm is not None and (tm[1] == torch.bool or tm[1].is_floating_point)


def _sdpa_masking(g: fx.Graph, call: dict, heads: int) -> dict:
    """The keyword arguments of ``scaled_dot_product_attention`` that mask as ``MultiheadAttention``
    does (``F.multi_head_attention_forward``): ``is_causal`` alone where it takes that hint (no key
    padding mask, attention weights not asked for); otherwise one additive float mask
    ``[N, heads, L, S]``-broadcastable: ``attn_mask`` (``[L, S]``, or ``[N * heads, L, S]`` split
    into ``[N, heads, L, S]``) plus ``key_padding_mask`` (``[N, S]`` → ``[N, 1, 1, S]``); a bool mask
    becomes ``-inf`` where True."""
    need_weights = call["need_weights"] is None or call["need_weights"]  # MultiheadAttention's default: True
    attn, padding = call["attn_mask"], call["key_padding_mask"]
    if call["is_causal"] and padding is None and not need_weights:
        return {"is_causal": True}

    def additive(m: fx.Node) -> fx.Node:
        if tensor_meta(m)[1] != torch.bool:
            return m
        zeros = g.call_function(torch.zeros_like, (m,), {"dtype": torch.float32})
        return g.call_method("masked_fill", (zeros, m, float("-inf")))

    mask = None
    if attn is not None:
        mask = additive(attn)
        if len(tensor_meta(attn)[0]) == 3:
            mask = g.call_method("unflatten", (mask, 0, (-1, heads)))
    if padding is not None:
        pad = g.call_method("unsqueeze", (g.call_method("unsqueeze", (additive(padding), 1)), 2))
        mask = pad if mask is None else g.call_function(operator.add, (mask, pad))
    return {} if mask is None else {"attn_mask": mask}


def _rank(node: fx.Node) -> int | None:
    tm = tensor_meta(node)
    return len(tm[0]) if tm else None


def _heads_first(g: fx.Graph, t: fx.Node, n: int, heads: int, head_dim: int) -> list[fx.Node]:
    """``[N, len, n * heads * head_dim]`` → ``n`` values ``[N, heads, len, head_dim]``."""
    t = g.call_method("permute", (g.call_method("unflatten", (t, -1, (n, heads, head_dim))), 2, 0, 3, 1, 4))
    return [g.call_function(operator.getitem, (t, i)) for i in range(n)]


def _weights_unused(node: fx.Node) -> bool:
    """The call's users read only its output (``[0]``), not the attention weights (``[1]``)."""
    users = list(node.users)
    return (all(u.op == "call_function" and u.target is operator.getitem and u.args[1] in (0, 1) for u in users)
            and not any(u.users for u in users if u.args[1] == 1))


def _replace_outputs(g: fx.Graph, node: fx.Node, out: fx.Node) -> None:
    """``node[0]`` becomes ``out``; the (unread) ``node[1]`` and ``node`` go."""
    for u in list(node.users):
        if u.args[1] == 0:
            u.replace_all_uses_with(out)
        g.erase_node(u)
    g.erase_node(node)


# F.multi_head_attention_forward's parameters, in order, and the defaults of those after the required ones
_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k", "bias_v",
             "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training", "key_padding_mask", "need_weights",
             "attn_mask", "use_separate_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "static_k", "static_v",
             "average_attn_weights", "is_causal")
_MHA_DEFAULTS = {"training": True, "key_padding_mask": None, "need_weights": True, "attn_mask": None,
                 "use_separate_proj_weight": False, "q_proj_weight": None, "k_proj_weight": None, "v_proj_weight": None,
                 "static_k": None, "static_v": None, "average_attn_weights": True, "is_causal": False}


def functional_attention_call(node: fx.Node) -> dict | None:
    """The arguments of an ``F.multi_head_attention_forward`` call by name, or None when the rewrite
    does not apply: 2-D (unbatched) inputs, ``bias_k``/``bias_v``, ``add_zero_attn``, ``static_k/v``,
    active dropout, the attention weights read, or a packed projection with a query that is not also
    key and value (its row blocks are no parameters of their own)."""
    if node.op != "call_function" or node.target is not F.multi_head_attention_forward:
        return None
    call = dict(_MHA_DEFAULTS)
    call.update(zip(_MHA_ARGS, node.args))
    call.update(node.kwargs)
    if set(call) != set(_MHA_ARGS):
        return None
    x = call["query"]
    if _same_value(call["key"], x):
        call["key"] = x
    if _same_value(call["value"], call["key"]):
        call["value"] = call["key"]
    heads, separate = call["num_heads"], call["use_separate_proj_weight"]
    weights = ("q_proj_weight", "k_proj_weight", "v_proj_weight") if separate is True else ("in_proj_weight",)
    meta = tensor_meta(x) if isinstance(x, fx.Node) else None
    dim = meta[0][-1] if meta is not None and meta[0] else None  # embed_dim_to_check is often x.shape[-1], a graph value
    call["embed_dim_to_check"] = dim
    simple = (
        isinstance(dim, int) and isinstance(heads, int) and heads > 0 and dim % heads == 0 and separate in (True, False)
        and all(isinstance(call[t], fx.Node) and _rank(call[t]) == 3 for t in ("query", "key", "value"))
        and all(isinstance(call[w], fx.Node) for w in (*weights, "out_proj_weight"))
        and (separate or x is call["key"] is call["value"])
        and call["bias_k"] is None and call["bias_v"] is None and call["add_zero_attn"] is False
        and call["static_k"] is None and call["static_v"] is None
        and (call["dropout_p"] == 0 or call["training"] is False)
        and all(call[m] is None or _float_or_bool(call[m]) for m in ("key_padding_mask", "attn_mask"))
        and isinstance(call["is_causal"], bool) and not (call["is_causal"] and call["attn_mask"] is None)
        and isinstance(call["need_weights"], bool) and _weights_unused(node)
    )
    return call if simple else None


def rewrite_functional_attention(gm: fx.GraphModule, node: fx.Node, call: dict) -> tuple[fx.Node, str]:
    """``F.multi_head_attention_forward`` (sequence first, ``call``: :func:`functional_attention_call`)
    as graph ops; returns the output node and what replaced the call. Each linear takes the module path
    of its weight where a ``get_attr`` reads it (``attn.out_proj``)."""
    g, heads, dim = gm.graph, call["num_heads"], call["embed_dim_to_check"]
    x, key, value, bias = call["query"], call["key"], call["value"], call["in_proj_bias"]
    path, before = module_path(node), node.prev
    with g.inserting_before(node):
        def batch_first(t: fx.Node) -> fx.Node:
            return g.call_method("transpose", (t, 0, 1))

        def heads_first(t: fx.Node, n: int) -> list[fx.Node]:
            return _heads_first(g, t, n, heads, dim // heads)

        if call["use_separate_proj_weight"]:
            def rows(i: int):
                return None if bias is None else g.call_function(operator.getitem, (bias, slice(i * dim, (i + 1) * dim)))

            xq = batch_first(x)
            xk = xq if key is x else batch_first(key)
            xv = xk if value is key else batch_first(value)
            (q,) = heads_first(g.call_function(F.linear, (xq, call["q_proj_weight"], rows(0))), 1)
            (k,) = heads_first(g.call_function(F.linear, (xk, call["k_proj_weight"], rows(1))), 1)
            (v,) = heads_first(g.call_function(F.linear, (xv, call["v_proj_weight"], rows(2))), 1)
            projections = "q, k and v projections"
        else:
            q, k, v = heads_first(g.call_function(F.linear, (batch_first(x), call["in_proj_weight"], bias)), 3)
            projections = "in-projection"
        o = g.call_function(F.scaled_dot_product_attention, (q, k, v), _sdpa_masking(g, call, heads))
        o = g.call_method("flatten", (g.call_method("transpose", (o, 1, 2)), 2))  # [N, L, dim]
        out = batch_first(g.call_function(F.linear, (o, call["out_proj_weight"], call["out_proj_bias"])))
    n = before.next
    while n is not node:  # the nodes this rewrite inserted, in order
        w = n.args[1] if n.target is F.linear else None
        owner = str(w.target).rpartition(".")[0] if isinstance(w, fx.Node) and w.op == "get_attr" else ""
        n.meta[MODULE_PATH_KEY] = owner or path
        n = n.next
    _replace_outputs(g, node, out)
    masks = [m for m in ("attn_mask", "key_padding_mask") if call[m] is not None] + (["is_causal"] if call["is_causal"] else [])
    note = f", masked by {' and '.join(masks)}" if masks else ""
    kind = "self-attention" if x is key is value else "cross-attention" if key is value else "separate key and value"
    return out, (f"F.multi_head_attention_forward ({kind}, {heads} heads) by {projections}, scaled_dot_product_attention, "
                 f"out-projection{note}")
