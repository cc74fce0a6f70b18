"""FoldWeightsPass: a layer weight computed from parameters alone becomes one parameter.

Weight standardization (timm's ``StdConv2d`` / ``ScaledStdConv2d``: BiT ResNetV2, the NF-Nets),
weight normalization and similar reparameterizations compute the weight a layer uses from its
parameters on every call, e.g. ``get_attr weight, gain → batch_norm → reshape_as → conv2d``. Left so,
the raw parameter is quantized where the unknown op reads it and the computed weight again before
the layer (two roundings; 59 weight quantizers for the 30 convs of timm's nf_resnet26), and the
exported model recomputes the weight in float on every run instead of storing integer weights.

Rules: the weight argument of a conv / linear / embedding call is evaluated once, and the layer reads
a new parameter ``<layer path>.folded_weight`` holding the result (the path of the module owning
the parameters it is computed from, when one module owns them all), when

1. it is not a ``get_attr`` but depends on ``get_attr`` nodes alone (no graph input, no module call,
   no random op; an input's ``.device`` or ``.dtype`` may be read, as in ``self.n_.to(x.device)``):
   the parameters it was computed from drop out of the graph;
2. it is a ``get_attr`` of a parametrized tensor (``torch.nn.utils.parametrize``, e.g.
   ``parametrizations.weight_norm``): reading it runs the parametrization, and the name is not in
   the ``state_dict`` (its parameters are ``parametrizations.weight.original0/1``), so a qpack could
   not store or restore it.

Like BatchNorm folding, this happens before quantization, so quantization-aware training trains the
folded weight (the reparameterization itself is not trained).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from qgraph.passes.base import QPass
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult
from torch.nn.utils import parametrize

from qgraph.ops import classify, inside_vmap, module_path, tensor_meta

_RANDOM = {"rand", "randn", "rand_like", "randn_like", "randint", "randint_like", "randperm", "bernoulli", "normal",
           "uniform", "multinomial", "poisson", "exponential", "geometric", "cauchy", "log_normal"}


def _is_random(node: fx.Node) -> bool:
    name = str(getattr(node.target, "__name__", node.target)).split(".")[0].rstrip("_").lower()  # aten "normal_.default"
    return name in _RANDOM or "dropout" in name


def _parameter_subgraph(node: fx.Node) -> list[fx.Node] | None:
    """Every node that ``node`` is computed from, when they are ``get_attr`` leaves and pure
    function / method calls on them; else None."""
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "get_attr" or _metadata_read(n):
            continue
        if n.op not in ("call_function", "call_method") or _is_random(n):
            return None
        stack.extend(n.all_input_nodes)
    return list(seen)


def _metadata_read(n: fx.Node) -> bool:
    """``x.device`` / ``x.dtype``: what a tensor is, not its values (SincNet's ``self.n_.to(x.device)``)."""
    return n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] in ("device", "dtype")


def _evaluate(gm: fx.GraphModule, nodes: list[fx.Node], order: dict[fx.Node, int], out: fx.Node) -> torch.Tensor:
    env: dict[fx.Node, object] = {}
    with torch.no_grad():
        for n in sorted(nodes, key=order.__getitem__):
            if _metadata_read(n):  # the weight is computed where the model's parameters are, for inputs of the recorded dtype
                meta = tensor_meta(n.args[0])
                device = next(iter(gm.parameters()), torch.empty(0)).device
                env[n] = device if n.args[1] == "device" else meta[1] if meta else torch.get_default_dtype()
                continue
            args = fx.node.map_arg(n.args, env.__getitem__)
            kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
            if n.op == "get_attr":
                env[n] = operator.attrgetter(str(n.target))(gm)
            elif n.op == "call_function":
                env[n] = n.target(*args, **kwargs)
            else:
                env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
    return env[out]


def _source_owner(w: fx.Node) -> str | None:
    """The module owning every parameter ``w`` is computed from, when there is one: a conv weight
    reshaped where another module calls ``F.conv1d`` (Hugging Face Mamba's ``conv1d.weight``, read
    by its mixer) is folded and quantized as ``conv1d``'s, not the caller's."""
    owners, stack, seen = set(), [w], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "get_attr":
            owners.add(str(n.target).rpartition(".")[0])
        stack.extend(n.all_input_nodes)
    return owners.pop() if len(owners) == 1 and "" not in owners else None


class FoldWeightsPass(QPass):
    name = "fold_weights"
    float_rewrite = True

    def call(self, gm: fx.GraphModule) -> PassResult:
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        vmapped = inside_vmap(gm)  # a stacked weight's _add_batch_dim exists only inside the vmap level
        modified = False
        for node in list(gm.graph.nodes):
            if node.op != "call_function":
                continue
            info = classify(gm, node)
            if info is None or info.weight is None or node in vmapped:
                continue
            w = info.weight
            if w.op == "get_attr":
                owner_path, _, attr = str(w.target).rpartition(".")
                owner = gm.get_submodule(owner_path) if owner_path else gm
                if not parametrize.is_parametrized(owner, attr):
                    continue
                with torch.no_grad():
                    value = getattr(owner, attr)
                made = [type(p).__name__ for p in owner.parametrizations[attr]]
            else:
                sub = _parameter_subgraph(w)
                if sub is None or not any(n.op == "get_attr" for n in sub):
                    continue
                value = _evaluate(gm, sub, order, w)
                made = sorted({str(n.target if n.op != "call_function" else getattr(n.target, "__name__", n.target)) for n in sub
                               if n.op != "get_attr"})
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                continue
            path = _source_owner(w) or module_path(node)
            try:
                owner = gm.get_submodule(path) if path else gm
                target = f"{path}.folded_weight" if path else "folded_weight"
            except AttributeError:
                owner, target = gm, f"{path.replace('.', '_')}_folded_weight"
            attr = target.rpartition(".")[2]
            old = getattr(owner, attr, None)
            if not (isinstance(old, torch.Tensor) and old.shape == value.shape and torch.equal(old, value)):
                i = 1  # a layer called twice computes its weight twice: one parameter when the values agree
                while hasattr(owner, attr):
                    attr, i = f"folded_weight_{i}", i + 1
                target = f"{target.rpartition('.')[0]}.{attr}" if "." in target else attr
                setattr(owner, attr, nn.Parameter(value.detach().clone(), requires_grad=True))
            with gm.graph.inserting_before(w):
                new = gm.graph.get_attr(target)
            new.meta["val"] = value.detach()
            w.replace_all_uses_with(new)
            self.record("folded", node, path, f"{info.kind} weight computed from parameters ({', '.join(made)}) into {target}")
            modified = True
        return self.finish(gm, modified)
