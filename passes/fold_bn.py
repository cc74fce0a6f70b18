"""FoldBatchNormPass: fold inference-mode BatchNorm into the convolution before it.

Rewrite rules (``conv`` is a functional conv whose weight is a ``get_attr`` and whose only user
is the BatchNorm):

1. ``conv → call_module BatchNorm{1,2,3}d`` (eval mode, tracked statistics)
2. ``conv → F.batch_norm(x, mean, var, gamma, beta, training=False)`` (args as ``get_attr``)
3. ``conv → aten.batch_norm`` / ``aten._native_batch_norm_legit_no_training`` (+ ``getitem 0``)

become ``conv`` with ``W' = W · γ/√(σ²+ε)`` (per output channel) and ``b' = (b − μ) · γ/√(σ²+ε) + β``.
The new weight and bias replace the conv module's parameters (the model was copied before
quantization, so the user's model is untouched). Folding is what lets ONNX Runtime fuse
``DQ → Conv → Q`` into ``QLinearConv``.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from qgraph.passes.base import QPass
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.ops import BN_MODULES, CONV, classify

aten = torch.ops.aten
_ATEN_BN = {getattr(aten.batch_norm, "default", None)} - {None}
_ATEN_BN_NO_TRAIN = {getattr(getattr(aten, "_native_batch_norm_legit_no_training", None), "default", None)} - {None}


def _attr(gm: fx.GraphModule, node) -> torch.Tensor | None:
    if node is None:
        return None
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj
    return None


def _set_attr(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    setattr(owner, name, nn.Parameter(value, requires_grad=True))


class FoldBatchNormPass(QPass):
    name = "fold_bn"

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            stats = self._bn_stats(gm, node)
            if stats is None:
                continue
            conv = node.args[0]
            info = classify(gm, conv) if isinstance(conv, fx.Node) else None
            if info is None or info.kind != "conv" or conv.target not in CONV or len(conv.users) != 1:
                continue
            w_node, b_node = info.weight, info.bias
            w = _attr(gm, w_node)
            if w is None or (b_node is not None and _attr(gm, b_node) is None):
                continue
            if any(u is not conv for u in w_node.users):
                continue  # a shared weight cannot be folded for one user
            mean, var, gamma, beta, eps, replace_node = stats
            with torch.no_grad():
                inv = torch.rsqrt(var.float() + eps)
                g = inv if gamma is None else gamma.float() * inv
                new_w = w.detach() * g.reshape(-1, *([1] * (w.dim() - 1)))
                b = _attr(gm, b_node)
                b = torch.zeros_like(mean) if b is None else b.detach()
                new_b = (b - mean) * g + (0 if beta is None else beta.detach())
            _set_attr(gm, str(w_node.target), new_w.to(w.dtype))
            if b_node is None:
                bias_target = str(w_node.target).rpartition(".")[0] + ".bias"
                _set_attr(gm, bias_target, new_b.to(w.dtype))
                with gm.graph.inserting_before(conv):
                    b_node = gm.graph.get_attr(bias_target)
                args = list(conv.args)
                while len(args) < 3:
                    args.append(None)
                args[2] = b_node
                conv.args = tuple(args)
            else:
                _set_attr(gm, str(b_node.target), new_b.to(w.dtype))
            replace_node.replace_all_uses_with(conv)
            self.record("folded", node, info.module_path, f"BatchNorm into conv {conv.name}")
            modified = True
        result = self.finish(gm, modified)
        if modified:  # drop the folded BatchNorm modules: dead parameters would reach optimizers and stall DDP
            gm.delete_all_unused_submodules()
        return result

    def _bn_stats(self, gm, node):
        """(mean, var, gamma, beta, eps, node whose uses become the conv) for an inference BN, else None."""
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if not isinstance(mod, BN_MODULES) or mod.training or mod.running_mean is None:
                return None
            return mod.running_mean, mod.running_var, mod.weight, mod.bias, mod.eps, node
        if node.op != "call_function":
            return None
        a = node.args
        if node.target is torch.nn.functional.batch_norm:
            kw = node.kwargs
            mean, var = _attr(gm, a[1]), _attr(gm, a[2])
            gamma = _attr(gm, a[3] if len(a) > 3 else kw.get("weight"))
            beta = _attr(gm, a[4] if len(a) > 4 else kw.get("bias"))
            training = a[5] if len(a) > 5 else kw.get("training", False)
            eps = a[7] if len(a) > 7 else kw.get("eps", 1e-5)
            if training or mean is None or var is None:
                return None
            return mean, var, gamma, beta, eps, node
        if node.target in _ATEN_BN:
            # batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
            if a[5]:
                return None
            mean, var = _attr(gm, a[3]), _attr(gm, a[4])
            if mean is None or var is None:
                return None
            return mean, var, _attr(gm, a[1]), _attr(gm, a[2]), a[7], node
        if node.target in _ATEN_BN_NO_TRAIN:
            # (input, weight, bias, running_mean, running_var, momentum, eps) -> (out, save_mean, save_rstd)
            users = list(node.users)
            if len(users) != 1 or users[0].target is not operator.getitem or users[0].args[1] != 0:
                return None
            mean, var = _attr(gm, a[3]), _attr(gm, a[4])
            if mean is None or var is None:
                return None
            return mean, var, _attr(gm, a[1]), _attr(gm, a[2]), a[6], users[0]
        return None
