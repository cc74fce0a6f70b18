"""One op-semantics table for both graph dialects qgraph sees.

``fx.symbolic_trace`` yields module calls and torch functions; ``torch.export`` yields ATen ops.
Passes never match raw targets themselves: they ask :func:`classify` "is this a conv, where is its
weight, which inputs are activations, and what is its module path?".
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from qgraph.meta import LAYOUT_KEY, MODULE_PATH_KEY
from qgraph.recurrent import RECURRENT_MODULES

aten = torch.ops.aten


def _ops(*names: str) -> set:
    """ATen overloads by name, skipping ones this torch build lacks."""
    out = set()
    for name in names:
        packet, _, overload = name.partition(".")
        p = getattr(aten, packet, None)
        if p is not None and hasattr(p, overload or "default"):
            out.add(getattr(p, overload or "default"))
    return out


CONV = {F.conv1d, F.conv2d, F.conv3d} | _ops("conv1d.default", "conv2d.default", "conv3d.default", "conv1d.padding", "conv2d.padding", "conv3d.padding")
CONV_TRANSPOSE = {F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d} | _ops(
    "conv_transpose1d.default", "conv_transpose2d.input", "conv_transpose3d.input"
)
LINEAR = {F.linear} | _ops("linear.default")
ADDMM = {torch.addmm} | _ops("addmm.default")  # addmm(bias, x, W[in, out]): Hugging Face Conv1D (GPT-2)
MATMUL = {torch.matmul, operator.matmul, torch.mm, torch.bmm} | _ops("matmul.default", "mm.default", "bmm.default")
EINSUM = {torch.einsum} | _ops("einsum.default")  # torch.einsum(eq, a, b) or (eq, [a, b]); aten.einsum(eq, [a, b])
EMBEDDING = {F.embedding} | _ops("embedding.default")  # F.embedding(ids, W) but aten.embedding(W, ids)
SDPA = {F.scaled_dot_product_attention} | _ops("scaled_dot_product_attention.default")
ADD = {operator.add, torch.add, operator.iadd} | _ops("add.Tensor", "add_.Tensor")
BATCH_NORM = {F.batch_norm} | _ops("batch_norm.default", "_native_batch_norm_legit_no_training.default")
FUSABLE_ACTIVATION = {F.relu, torch.relu, F.relu6, F.hardtanh} | _ops(
    "relu.default", "relu_.default", "hardtanh.default", "hardtanh_.default"
)
PASSTHROUGH = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.flatten, torch.reshape, torch.permute, torch.transpose,
    torch.squeeze, torch.unsqueeze, F.dropout,
} | _ops(
    "max_pool2d.default", "max_pool1d.default", "max_pool3d.default", "flatten.using_ints", "view.default",
    "reshape.default", "permute.default", "transpose.int", "squeeze.dim", "unsqueeze.default", "dropout.default",
    "clone.default", "contiguous.default", "_unsafe_view.default",
)
AVERAGING = {
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.mean,
    torch.cat, torch.concat,
} | _ops("avg_pool2d.default", "avg_pool1d.default", "avg_pool3d.default", "adaptive_avg_pool2d.default", "adaptive_avg_pool1d.default",
         "mean.dim", "mean.default", "cat.default", "_adaptive_avg_pool2d.default")
AVERAGING_METHODS = {"mean"}
PASSTHROUGH_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "clone"}
FUSABLE_METHODS = {"relu", "relu_"}
MATMUL_METHODS = {"matmul", "mm", "bmm"}
BATCHED_MATMUL = {torch.bmm, "bmm"} | _ops("bmm.default")  # both operands 3-D: never a weight
ADD_METHODS = {"add", "add_"}

CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSE_MODULES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LINEAR_MODULES = (nn.Linear,)
BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FUSABLE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
PASSTHROUGH_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten, nn.Dropout, nn.Identity)
AVERAGING_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
INTEGER_CONSUMERS = ("conv", "conv_transpose", "linear", "matmul")

# grouped matmuls of mixture-of-experts layers: ``(x [S, K] sorted by expert, W [E, K, N], offs [E])``,
# rows ``offs[e-1]:offs[e]`` times ``W[e]``. Matched by name: the Hugging Face op exists only once
# transformers is imported, and ``aten._grouped_mm`` only in newer torch.
GROUPED_MM_NAMES = ("transformers::grouped_mm_fallback", "aten::_grouped_mm")

# op kinds a recipe can name
WEIGHTED_KINDS = ("conv", "conv_transpose", "linear", "embedding", "experts")
# a table lookup; the expert weights of a grouped matmul (no integer kernel reads them): the weight
# is quantized, the activations are not
WEIGHT_ONLY_KINDS = ("embedding", "experts")
ACTIVATION_KINDS = ("matmul", "add")
KINDS = WEIGHTED_KINDS + ACTIVATION_KINDS


@dataclass
class OpInfo:
    """What a pass needs to know about a node."""

    kind: str
    module_path: str
    weight: fx.Node | None = None
    bias: fx.Node | None = None
    activations: list[fx.Node] = field(default_factory=list)
    weight_channel_axis: int = 0


MODULE_TYPES_KEY = "qgraph.module_types"  # GraphModule.meta: module path -> type in the user's model (set by capture)


def owner_type(gm: fx.GraphModule, path: str) -> type | None:
    """The type of the user's module at ``path``. A captured graph keeps only bare ``nn.Module``
    holders for attributes it reads, so capture records the original types."""
    types = gm.meta.get(MODULE_TYPES_KEY) or {}
    if path in types:
        return types[path]
    try:
        return type(gm.get_submodule(path)) if path else None
    except AttributeError:
        return None


def _target_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    try:
        return gm.get_submodule(node.target)
    except AttributeError:
        return None


def module_path(node: fx.Node) -> str:
    """The user's module path for a node: the call_module target, or the innermost module on its stack."""
    if MODULE_PATH_KEY in node.meta:
        return node.meta[MODULE_PATH_KEY]
    if node.op == "call_module":
        return str(node.target)
    if node.op == "get_attr":
        return str(node.target).rpartition(".")[0]
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        return _clean_path(str(path))
    return ""


def _clean_path(path: str) -> str:
    # torch.export stacks may read "L['self'].layer1" or "L__self___layer1"
    for prefix in ("L['self'].", "L__self__."):
        if path.startswith(prefix):
            path = path[len(prefix) :]
    return "" if path in ("L['self']", "L__self__") else path


def _arg(node: fx.Node, index: int, name: str):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name)


def _weight_path(weight) -> str | None:
    if isinstance(weight, fx.Node) and weight.op == "get_attr":
        return str(weight.target).rpartition(".")[0]
    return None


def is_fusable_activation(gm: fx.GraphModule, node: fx.Node) -> bool:
    """ReLU-like ops that ONNX Runtime fuses into the integer kernel before them."""
    if node.op == "call_function":
        return node.target in FUSABLE_ACTIVATION
    if node.op == "call_method":
        return node.target in FUSABLE_METHODS
    return isinstance(_target_module(gm, node), FUSABLE_MODULES)


def is_passthrough(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Ops that move or select values without changing them: they keep their input's quantization."""
    if node.op == "call_function":
        return node.target in PASSTHROUGH
    if node.op == "call_method":
        return node.target in PASSTHROUGH_METHODS
    return isinstance(_target_module(gm, node), PASSTHROUGH_MODULES)


def _is_averaging(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in AVERAGING
    if node.op == "call_method":
        return node.target in AVERAGING_METHODS
    return isinstance(_target_module(gm, node), AVERAGING_MODULES)


def reaches_integer_op(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s value reaches an activation input of a conv, linear or matmul through ops
    that ONNX Runtime can keep in integers (reshapes, max/average pooling, concat, ReLU, other adds).

    A residual add whose sum only feeds float ops (the LayerNorm of a transformer's residual
    stream) gains no integer kernel from being quantized, and its per-tensor grid, stretched by the
    stream's largest channels, wipes out the small branch it adds.
    """
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        for u in n.users:
            if u in seen:
                continue
            seen.add(u)
            info = classify(gm, u)
            if info is not None and info.kind in INTEGER_CONSUMERS and n in info.activations:
                return True
            if (info is not None and info.kind == "add") or is_passthrough(gm, u) or is_fusable_activation(gm, u) or _is_averaging(gm, u):
                stack.append(u)
    return False


TOPK = {torch.topk} | _ops("topk.default")
ARGMAX = {torch.argmax} | _ops("argmax.default")  # top-1 routing (Switch Transformer)
# what routers put between their logits and the top-k: a probability map, a dtype cast, a reshape
_ROUTER_STEPS = {torch.softmax, F.softmax, torch.sigmoid, F.sigmoid, torch.reshape} | _ops(
    "softmax.int", "_softmax.default", "sigmoid.default", "to.dtype", "_to_copy.default", "view.default", "reshape.default"
)
_ROUTER_STEP_METHODS = {"softmax", "sigmoid", "to", "float", "type_as", "view", "reshape"}


def _routes(topk: fx.Node) -> bool:
    """Whether a ``topk``'s (or an ``argmax``'s) indices are computed with inside the graph (dispatch
    to experts), not only returned (a classifier's top-5 predictions)."""
    if topk.target in ARGMAX or topk.target == "argmax":
        return any(v.op != "output" for v in topk.users)
    for u in topk.users:
        if u.op == "call_function" and u.target is operator.getitem and u.args[1:2] == (1,):
            if any(v.op != "output" for v in u.users):
                return True
    return False


def feeds_topk(node: fx.Node, hops: int = 3) -> bool:
    """Whether ``node``'s value reaches a ``topk`` or ``argmax`` directly or through at most ``hops - 1``
    of the steps a router takes (softmax or sigmoid, a dtype cast, a reshape), and the graph computes
    with the chosen indices: the router of a mixture-of-experts layer, whose logits pick the experts."""
    frontier = [node]
    for _ in range(hops):
        users = [u for n in frontier for u in n.users]
        if any((u.target in TOPK or u.target in ARGMAX or (u.op == "call_method" and u.target in ("topk", "argmax"))) and _routes(u)
               for u in users):
            return True
        frontier = [u for u in users if (u.op == "call_function" and u.target in _ROUTER_STEPS)
                    or (u.op == "call_method" and u.target in _ROUTER_STEP_METHODS)]
    return False


def feeds_model_output(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s value is a graph output, directly or through ops that only move or select
    values (flatten, reshape, dropout, …) or ReLU."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        for u in n.users:
            if u.op == "output":
                return True
            if u not in seen and (is_passthrough(gm, u) or is_fusable_activation(gm, u)):
                seen.add(u)
                stack.append(u)
    return False


def is_batch_norm(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in BATCH_NORM
    return isinstance(_target_module(gm, node), BN_MODULES)


def classify(gm: fx.GraphModule, node: fx.Node) -> OpInfo | None:
    """The quantization-relevant kind of ``node``, or None for ops qgraph leaves alone."""
    if node.op == "call_function":
        t = node.target
        if t in CONV or t in CONV_TRANSPOSE or t in LINEAR:
            kind = "conv" if t in CONV else "conv_transpose" if t in CONV_TRANSPOSE else "linear"
            x, w, b = node.args[0], _arg(node, 1, "weight"), _arg(node, 2, "bias")
            if not isinstance(x, fx.Node) or not isinstance(w, fx.Node):
                return None
            path = _weight_path(w) or module_path(node)
            axis = 1 if kind == "conv_transpose" else 0
            return OpInfo(kind, path, w, b if isinstance(b, fx.Node) else None, [x], axis)
        if t in ADDMM:
            b, x, w = node.args[0], node.args[1], node.args[2]
            if isinstance(x, fx.Node) and isinstance(w, fx.Node) and w.op == "get_attr" and not node.kwargs:
                return OpInfo("linear", _weight_path(w) or module_path(node), w, b if isinstance(b, fx.Node) else None, [x], 1)
            return None
        if t in MATMUL:
            return _matmul_info(gm, node)
        if t in SDPA:
            return _sdpa_info(node)
        if t in EINSUM:
            return _einsum_info(gm, node)
        if t in EMBEDDING:
            w, ids = (node.args[0], node.args[1]) if t is not F.embedding else (_arg(node, 1, "weight"), node.args[0])
            if isinstance(w, fx.Node) and isinstance(ids, fx.Node) and _embedding_plain(node, t):
                return OpInfo("embedding", _weight_path(w) or module_path(node), w, None, [], 0)
            return None
        if t in ADD:
            return _add_info(node)
        return None
    if node.op == "get_attr":
        from qgraph.stacked_weights import stacked_weight_info  # it builds on this module's tables

        return stacked_weight_info(gm, node) or _opaque_weight_info(gm, node)
    if node.op == "call_method":
        if node.target in MATMUL_METHODS and len(node.args) >= 2:
            return _matmul_info(gm, node)
        if node.target in ADD_METHODS:
            return _add_info(node)
        return None
    mod = _target_module(gm, node)
    if mod is None:
        return None
    x = node.args[0] if node.args else None
    if not isinstance(x, fx.Node):
        return None
    if isinstance(mod, nn.MultiheadAttention):  # one the canonicalize pass could not rewrite: weight-only, wrapped
        return OpInfo("linear", str(node.target), None, None, [], 0)
    if isinstance(mod, CONV_MODULES + CONV_TRANSPOSE_MODULES + LINEAR_MODULES):
        kind = "linear" if isinstance(mod, nn.Linear) else "conv_transpose" if isinstance(mod, CONV_TRANSPOSE_MODULES) else "conv"
        return OpInfo(kind, str(node.target), None, None, [x], 1 if kind == "conv_transpose" else 0)
    return None


def _matmul_info(gm: fx.GraphModule, node: fx.Node) -> OpInfo | None:
    """A matmul of two activations (kind ``matmul``), or one whose operand is a 2-D parameter, which
    is a linear layer written as ``x @ W`` / ``W @ x`` (kind ``linear``: the parameter is its weight,
    quantized per output channel and stored as integers; Hugging Face Mamba's
    ``dt_proj.weight @ x``). ``weight_channel_axis``: 1 for ``x @ W`` (``W`` is ``[in, out]``, as in
    ``addmm``), 0 for ``W @ x``. ``x @ W.T`` is rewritten to ``linear(x, W)`` by canonicalize."""
    a, b = node.args[0], node.args[1]
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or is_sparse(a) or is_sparse(b):
        return None  # a sparse operand (a GCN's adjacency in torch.spmm): the product stays float
    if node.target not in BATCHED_MATMUL:
        for w, x, axis in ((b, a, 1), (a, b, 0)):
            if is_matrix_parameter(gm, w) and x.op != "get_attr":
                return OpInfo("linear", _weight_path(w) or module_path(node), w, None, [x], axis)
    from qgraph.stacked_weights import matrix_slice_of, stacked_matrices_info

    if any(stacked_matrices_info(gm, v) for v in (a, b, matrix_slice_of(a), matrix_slice_of(b)) if v is not None):
        return None  # the parameter is quantized weight-only on its get_attr; the product stays float
    return OpInfo("matmul", module_path(node), activations=[a, b])


def contraction_size(node: fx.Node) -> int | None:
    """How many products each output of a ``matmul``/``mm``/``bmm``/``@`` node sums (the first operand's
    last dim), or None where that is unknown or the node is another op."""
    if not (node.op == "call_function" and node.target in MATMUL or node.op == "call_method" and node.target in MATMUL_METHODS):
        return None
    a = node.args[0] if node.args else None
    tm = tensor_meta(a) if isinstance(a, fx.Node) else None
    return tm[0][-1] if tm is not None and tm[0] and isinstance(tm[0][-1], int) else None


def is_matrix_parameter(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``node`` reads a 2-D floating-point ``nn.Parameter`` (not a buffer: fixed tables and
    transforms are not layer weights)."""
    if node.op != "get_attr":
        return False
    try:
        p = gm.get_parameter(str(node.target))
    except AttributeError:
        return False
    return p.dim() == 2 and p.is_floating_point()


def is_grouped_mm(node: fx.Node) -> bool:
    t = node.target
    if node.op != "call_function":
        return False
    if isinstance(t, torch._ops.OpOverload):
        return t.name() in GROUPED_MM_NAMES
    if isinstance(t, torch._ops.OpOverloadPacket):  # torch.ops.transformers.grouped_mm_fallback under symbolic trace
        return t._qualified_op_name in GROUPED_MM_NAMES
    return t is getattr(torch, "_grouped_mm", None) or t is getattr(F, "grouped_mm", None)  # symbolic trace


def _opaque_weight_info(gm: fx.GraphModule, node: fx.Node) -> OpInfo | None:
    """The weight of a Conv/Linear module read directly by calls qgraph does not know (a function
    wrapped with ``torch.fx.wrap`` such as torchvision's ``shifted_window_attention``), and the weight
    matrices of an LSTM/GRU/RNN (``qgraph.recurrent``; ``aten.lstm`` in ``torch.export`` graphs) and
    the ``[out, in1, in2]`` weight of an ``nn.Bilinear``:
    quantized weight-only, on its ``get_attr``, so that every reader sees the quantized weight."""
    owner, _, attr = str(node.target).rpartition(".")
    mod = owner_type(gm, owner) if node.users else None
    if mod is not None and issubclass(mod, RECURRENT_MODULES) and attr.startswith(("weight_ih", "weight_hh", "weight_hr_l")):
        return OpInfo("linear", owner, node, None, [], 0)  # one row per gate unit: per-channel along dim 0
    if mod is not None and issubclass(mod, nn.Bilinear) and attr == "weight":
        return OpInfo("linear", owner, node, None, [], 0)  # [out, in1, in2]: per output feature
    if attr != "weight" or mod is None or not issubclass(mod, CONV_MODULES + CONV_TRANSPOSE_MODULES + LINEAR_MODULES):
        return None
    readers = []
    for user in node.users:  # look through weight transforms (sparsity masks: W → mask → op)
        through = getattr(_target_module(gm, user), "is_weight_transform", False)
        readers += [(u, user) for u in user.users] if through else [(user, node)]
    for user, w in readers:
        info = classify(gm, user)
        if info is not None and (info.weight is w or w in info.activations):
            return None  # read by an op qgraph quantizes: that op owns the weight
    kind = "linear" if issubclass(mod, nn.Linear) else "conv_transpose" if issubclass(mod, CONV_TRANSPOSE_MODULES) else "conv"
    return OpInfo(kind, owner, node, None, [], 1 if kind == "conv_transpose" else 0)


def _sdpa_info(node: fx.Node) -> OpInfo | None:
    """Attention as the matmuls it is: q, k and v are quantized like matmul inputs (the mask is not)."""
    qkv = list(node.args[:3])
    if len(qkv) < 3 or not all(isinstance(a, fx.Node) and _is_float_tensor(a) for a in qkv):
        return None
    return OpInfo("matmul", module_path(node), activations=list(dict.fromkeys(qkv)))


def _einsum_info(gm: fx.GraphModule, node: fx.Node) -> OpInfo | None:
    """An einsum of two activations (attention written as ``einsum("bhqd,bhkd->bhqk", q, k)``) is a
    matmul: both operands are quantized like matmul inputs. An einsum with a 2-D weight that is a
    linear layer was rewritten to ``x @ W`` by canonicalize (rule 8); other einsums with a parameter
    operand are left alone, and so are einsums of one or of three or more operands."""
    operands = node.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not isinstance(node.args[0] if node.args else None, str) or len(operands) != 2:
        return None
    if not all(isinstance(a, fx.Node) and a.op != "get_attr" and _is_float_tensor(a) for a in operands):
        return None
    from qgraph.stacked_weights import gathered_expert_info, gathered_from

    if any((w := gathered_from(a)) is not None and gathered_expert_info(gm, w) for a in operands):
        return None  # expert matrices gathered by index: quantized weight-only on the parameter; the product stays float
    return OpInfo("matmul", module_path(node), activations=list(dict.fromkeys(operands)))


def _embedding_plain(node: fx.Node, target) -> bool:
    """A lookup with no max_norm (which would rewrite the table in place)."""
    if target is F.embedding:
        return _arg(node, 3, "max_norm") is None
    return True


def _add_info(node: fx.Node) -> OpInfo | None:
    a = node.args[0] if node.args else None
    b = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    if isinstance(a, fx.Node) and isinstance(b, fx.Node) and "alpha" not in node.kwargs:
        if _is_float_tensor(a) and _is_float_tensor(b) and _same_shape(a, b):
            return OpInfo("add", module_path(node), activations=[a, b])
    return None


def tensor_meta(node: fx.Node):
    """(shape, dtype) recorded on a node by capture, or None: the shapes of the example inputs' run
    (``tensor_meta``, concrete ints) where capture recorded them, else the exporter's ``val`` (whose
    batch dim may be symbolic)."""
    tm = node.meta.get("tensor_meta")
    if tm is not None and hasattr(tm, "shape") and all(isinstance(d, int) for d in tm.shape):
        return tuple(tm.shape), tm.dtype
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(val.shape), val.dtype
    if tm is not None and hasattr(tm, "shape"):
        return tuple(tm.shape), tm.dtype
    return None


def is_sparse(node: fx.Node) -> bool:
    """A sparse tensor (``torch.sparse_coo_tensor``, CSR, ...): no quantizer can observe it, and ONNX
    has no sparse activations; an op that reads one stays float."""
    val = node.meta.get("val")
    return node.meta.get(LAYOUT_KEY, torch.strided) != torch.strided or (isinstance(val, torch.Tensor) and val.layout != torch.strided)


def _is_float_tensor(node: fx.Node) -> bool:
    if isinstance(node.meta.get("val"), (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)):
        return False  # a size (``a.size(1) + b.size(1)``) or a Python number
    tm = tensor_meta(node)
    return (tm is None or tm[1].is_floating_point) and not is_sparse(node)


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    ta, tb = tensor_meta(a), tensor_meta(b)
    return ta is None or tb is None or ta[0] == tb[0]


def computed_from_inputs(node: fx.Node) -> bool:
    """Whether ``node``'s value depends on a graph input (a placeholder): a layer weight computed per
    sample (CondConv's routed kernels, a hypernetwork's output) rather than from parameters."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n.op == "placeholder":
            return True
        for i in n.all_input_nodes:
            if i not in seen:
                seen.add(i)
                stack.append(i)
    return False


def inside_vmap(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes between ``_vmap_increment_nesting`` and the matching ``_vmap_decrement_nesting``
    (``torch.func.vmap`` in a ``torch.export`` graph): their values are batched tensors that exist
    only inside the vmap level."""
    depth, inside = 0, set()
    for node in gm.graph.nodes:
        name = str(getattr(node.target, "__name__", node.target)) if node.op == "call_function" else ""
        if name.endswith("_vmap_increment_nesting"):
            depth += 1
        elif name.endswith("_vmap_decrement_nesting"):
            depth = max(0, depth - 1)
        elif depth:
            inside.add(node)
    return inside
