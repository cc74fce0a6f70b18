"""Which weight matrices of a quantized graph stayed float because qgraph has no quantized form for
the module that reads them (``nn.LSTM``/``nn.GRU``/``nn.RNN`` and their cells, ``nn.Bilinear``, an
a TorchScript submodule, which runs as one opaque call), or
because the graph reads them in an op qgraph does not quantize (a user's module multiplying its own
``weight`` elementwise, an einsum that is not a linear layer).

Conv/Linear/Embedding/attention weights, and any weight an op qgraph knows reads (a router's linear),
are left out: the recipe or annotate decided about those (skip globs, overrides, routers kept float),
and the passes record the decisions; unless the graph reads such a module's weight itself in a product
qgraph does not quantize (a VQ-VAE's ``codebook.weight`` in ``torch.cdist``). So are weights inside auto-leaves, whose
notes already list what stayed float, and parameters the graph never reads (a head eval mode skips).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn

from qgraph.ops import classify, owner_type
from qgraph.quantizer import FakeQuantize
from qgraph.wrappers import SWAPPABLE, QuantizedModule, QuantizedMultiheadAttention

NOTE_PREFIX = "stayed float, no quantized form in qgraph"  # the capture note the insert pass adds
DECIDED_BY_RECIPE = SWAPPABLE + (nn.Embedding, nn.MultiheadAttention)


def _reads_into_quantizer(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A ``get_attr`` whose value reaches a weight quantizer, directly or through weight transforms
    (sparsity masks)."""
    frontier, seen = list(node.users), set()
    while frontier:
        user = frontier.pop()
        if user in seen or user.op != "call_module":
            continue
        seen.add(user)
        mod = gm.get_submodule(str(user.target))
        if isinstance(mod, FakeQuantize):
            return True
        if getattr(mod, "is_weight_transform", False):
            frontier += list(user.users)
    return False


def _read_by_known_op(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A ``get_attr`` read as the weight of an op qgraph knows (a linear, conv, embedding): whether it
    is quantized was the recipe's or annotate's decision (a mixture-of-experts router stays float),
    and the passes record it."""
    for user in node.users:
        info = classify(gm, user)
        if info is not None and info.weight is node:
            return True
    return False


def float_weight_modules(gm: fx.GraphModule, leaves: set[str] = frozenset()) -> dict[str, str]:
    """``{path: what}`` of the weight matrices the graph reads in float, and that no recipe rule
    covers: a module (``rnn: LSTM``) whose parameters a module call reads, or a parameter the graph
    reads itself (``weight: parameter read by mul``; a root-level parameter has no module to name).
    A weight matrix is a parameter of 2 or more dimensions that is named ``weight*`` (``weight``,
    LSTM's ``weight_ih_l0``) or, read by the graph, reaches a product (matmul, einsum, a conv)
    through views: position tables, class tokens and relative position biases are added to
    activations, not multiplied, and stay float by design."""
    used: dict[str, bool] = {}  # parameter name -> quantized
    readers: dict[str, list[str]] = {}  # parameter read by the graph itself -> the ops reading it
    scripted: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            if isinstance(mod, FakeQuantize):
                continue
            swapped = isinstance(mod, (QuantizedModule, QuantizedMultiheadAttention))
            for name, _ in mod.named_parameters():
                used[f"{node.target}.{name}"] = swapped
        elif node.op == "get_attr":
            if isinstance(operator.attrgetter(str(node.target))(gm), torch._C.ScriptModule):  # a TorchScript submodule, called as a whole
                scripted.append(str(node.target).removesuffix("._c"))
                continue
            used[str(node.target)] = used.get(str(node.target), False) or _reads_into_quantizer(gm, node) or _read_by_known_op(gm, node)
            readers.setdefault(str(node.target), []).extend(_consumers(node))
    params = dict(gm.named_parameters(remove_duplicate=False))
    found: dict[str, str] = {}
    for name, quantized in used.items():
        p = params.get(name)
        if quantized or p is None or p.dim() < 2:
            continue
        ops = readers.get(name)
        if not name.rpartition(".")[2].startswith("weight") and not (ops and any(op in _PRODUCT_NAMES for op in ops)):
            continue
        owner = name.rpartition(".")[0]
        if _inside(owner, leaves):  # the leaf's own note lists what stayed float in it
            continue
        t = owner_type(gm, owner)
        product = bool(ops) and any(op in _PRODUCT_NAMES for op in ops)
        if t is not None and issubclass(t, DECIDED_BY_RECIPE + (FakeQuantize,)) and not product:
            continue  # (an Embedding's table the graph itself multiplies, a VQ codebook in cdist, is listed)
        if ops is not None:  # read by the graph: name the parameter and what reads it
            found[name] = f"parameter read by {', '.join(dict.fromkeys(ops))}"
        else:
            found[owner] = t.__name__ if t is not None else "module"
    found.update({path: "TorchScript module" for path in scripted if not _inside(path, leaves)})
    return found


_VIEW_NAMES = {"view", "reshape", "transpose", "permute", "t", "unsqueeze", "squeeze", "contiguous", "to", "float", "expand",
               "flatten", "getitem", "clone", "_to_copy", "type_as"}
_PRODUCT_NAMES = {"linear", "matmul", "mm", "bmm", "einsum", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d", "bilinear", "baddbmm", "addmm", "tensordot", "outer", "__matmul__", "cdist"}


def _op_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    if isinstance(t, torch._ops.OpOverload):
        return t.overloadpacket.__name__
    return getattr(t, "__name__", str(t))


def _consumers(node: fx.Node) -> list[str]:
    """The ops that read a ``get_attr``'s value, looking through views and copies."""
    out, frontier, seen = [], list(node.users), set()
    while frontier:
        user = frontier.pop()
        if user in seen or user.op not in ("call_function", "call_method"):
            continue
        seen.add(user)
        name = _op_name(user)
        if name in _VIEW_NAMES:
            frontier += list(user.users)
        else:
            out.append(name)
    return out


def _inside(path: str, leaves: set[str]) -> bool:
    return any(path == leaf or path.startswith(leaf + ".") for leaf in leaves)
