"""FoldBatchNormPass: fold inference-mode BatchNorm, and other per-channel affine maps with constant
coefficients, into the convolution (or linear layer) before it.

Rewrite rules (``conv`` / ``linear`` is a functional call whose weight is a ``get_attr`` used by no other
call and whose only user is the op folded into it):

1. ``conv → call_module BatchNorm{1,2,3}d`` (eval mode, tracked statistics)
2. ``conv → F.batch_norm(x, mean, var, gamma, beta, training=False)`` (args as ``get_attr``)
3. ``conv → aten.batch_norm`` / ``aten._native_batch_norm_legit_no_training`` (+ ``getitem 0``)
4. ``conv|linear → mul(·, s) [→ add(·, t) | sub(·, t)]`` and ``conv|linear → add|sub(·, t)``, where ``s``
   and ``t`` are constants (``get_attr`` tensors or numbers) that broadcast along the output channels
   only. This is how symbolic tracing records torchvision's ``FrozenBatchNorm2d``, the norm of every
   pretrained torchvision detection backbone (its statistics are buffers, so tracing bakes
   ``x * scale + shift`` into two constants); also a per-feature scale (LayerScale) right after a linear.

Each becomes the layer alone with ``W' = W · s`` (per output channel) and ``b' = b · s + t``; for a
BatchNorm ``s = γ/√(σ²+ε)`` and ``t = β − μ·s``. The new weight and bias replace the layer's
parameters (the model was copied before quantization, so the user's model is untouched). Folding is
what lets ONNX Runtime fuse ``DQ → Conv → Q`` into ``QLinearConv`` for a BatchNorm, and it saves the
rounding of the unfolded result: left float, FrozenBatchNorm maps cost a ResNet-50 FPN backbone 1.8 dB
and 1.44x in ONNX Runtime (``benchmarks/fold_affine.py``, docs/benchmarks.md).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from qgraph.passes.base import QPass
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.ops import BN_MODULES, CONV, LINEAR, classify, module_path, tensor_meta

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


def _new_bias_target(gm: fx.GraphModule, weight: str) -> str:
    """Where a folded bias goes: ``bias`` next to a ``weight`` (or ``folded_weight``), ``<name>_bias``
    next to a matrix of another name, at the root for a root parameter; a name no other attribute
    holds (a root-level weight's bias was ``.bias``, which torch.fx refuses)."""
    owner_path, _, attr = weight.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    name = "bias" if attr in ("weight", "folded_weight") else f"{attr}_bias"
    while getattr(owner, name, None) is not None:
        name += "_"
    return f"{owner_path}.{name}" if owner_path else name


class FoldBatchNormPass(QPass):
    name = "fold_bn"
    float_rewrite = True

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            if not node.users and node.op == "call_function":
                continue  # already folded into a conv earlier in this loop
            match = self._bn_match(gm, node) or _affine_match(gm, node)
            if match is None:
                continue
            layer, scale, shift, replace_node, what = match
            info = classify(gm, layer)
            w_node, b_node = info.weight, info.bias
            w = _attr(gm, w_node)
            with torch.no_grad():
                new_w = w.detach() * scale.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype)
                b = _attr(gm, b_node)
                b = torch.zeros_like(scale) if b is None else b.detach()
                new_b = b * scale + shift
            _set_attr(gm, str(w_node.target), new_w.to(w.dtype))
            if b_node is None:
                bias_target = _new_bias_target(gm, str(w_node.target))
                _set_attr(gm, bias_target, new_b.to(w.dtype))
                with gm.graph.inserting_before(layer):
                    b_node = gm.graph.get_attr(bias_target)
                args = list(layer.args)
                while len(args) < 3:
                    args.append(None)
                args[2] = b_node
                layer.args = tuple(args)
            else:
                _set_attr(gm, str(b_node.target), new_b.to(w.dtype))
            replace_node.replace_all_uses_with(layer)
            source = module_path(node)
            what += f" of {source}" if source and source != info.module_path else ""
            self.record("folded", node, info.module_path, f"{what} into {info.kind} {layer.name}")
            modified = True
        result = self.finish(gm, modified)
        if modified:  # drop the folded BatchNorm modules: dead parameters would reach optimizers and stall DDP
            gm.delete_all_unused_submodules()
        return result

    def _bn_match(self, gm, node):
        """``(conv, scale, shift, node whose uses become the conv, what)`` for an inference BN after a
        foldable conv, else None."""
        stats = self._bn_stats(gm, node)
        if stats is None:
            return None
        conv = node.args[0]
        if not _foldable(gm, conv, ("conv",)):
            return None
        mean, var, gamma, beta, eps, replace_node = stats
        with torch.no_grad():
            inv = torch.rsqrt(var.float() + eps)
            scale = inv if gamma is None else gamma.float() * inv
            shift = -mean.float() * scale + (0 if beta is None else beta.detach().float())
        return conv, scale, shift, replace_node, "BatchNorm"

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


def _foldable(gm: fx.GraphModule, layer, kinds: tuple[str, ...]) -> bool:
    """Whether ``layer`` is a canonical conv / linear call of one of ``kinds`` whose weight (and bias) are
    attributes used by this call alone and whose result has one user (the op folded into it)."""
    if not isinstance(layer, fx.Node) or layer.op != "call_function" or len(layer.users) != 1:
        return False
    if layer.target not in CONV and layer.target not in LINEAR:
        return False  # transposed convs keep output channels on the weight's dim 1
    info = classify(gm, layer)
    if info is None or info.kind not in kinds:
        return False
    if _attr(gm, info.weight) is None or (info.bias is not None and _attr(gm, info.bias) is None):
        return False
    return all(u is layer for u in info.weight.users)  # a shared weight cannot be folded for one user


_MUL = {operator.mul, torch.mul, getattr(aten.mul, "Tensor", None)} - {None}
_ADD = {operator.add, torch.add, getattr(aten.add, "Tensor", None)} - {None}
_SUB = {operator.sub, torch.sub, getattr(aten.sub, "Tensor", None)} - {None}


def _channel_vector(gm: fx.GraphModule, layer: fx.Node, operand) -> torch.Tensor | None:
    """``operand`` as one value per output channel of ``layer`` when it is a constant that broadcasts
    along that layer's output channels only (a scalar, a ``[C]`` vector for a linear, a ``[1, C, 1, 1]``
    tensor for a conv2d), else None."""
    meta = tensor_meta(layer)
    if meta is None or not meta[0]:
        return None
    rank = len(meta[0])
    w = _attr(gm, classify(gm, layer).weight)
    channels = w.shape[0]
    if isinstance(operand, (int, float)) and not isinstance(operand, bool):
        return torch.full((channels,), float(operand))
    c = _attr(gm, operand) if isinstance(operand, fx.Node) else None
    if not isinstance(c, torch.Tensor) or not c.is_floating_point() or c.dim() > rank:
        return None
    # the channel dim counted from the right: 1 for a linear, 3 for a conv2d (N, C, H, W or C, H, W)
    from_right = 1 if layer.target in LINEAR else w.dim() - 1
    shape = [1] * (rank - c.dim()) + list(c.shape)
    axis = rank - from_right
    if any(s != 1 for i, s in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return c.detach().float().reshape(-1).expand(channels).clone()


def _other(node: fx.Node, layer: fx.Node, commutative: bool):
    """The operand of a binary ``node`` that is not ``layer`` (None when ``layer`` is not where it must be)."""
    if len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    if a is layer and b is not layer:
        return b
    if commutative and b is layer and a is not layer:
        return a
    return None


def _affine_match(gm: fx.GraphModule, node: fx.Node):
    """A conv / linear followed by a multiply and/or an add (or subtract) of per-output-channel
    constants, e.g. torchvision's ``FrozenBatchNorm2d`` (every pretrained detection backbone), which
    symbolic tracing records as ``x * scale + shift`` with constant tensors. Returns
    ``(layer, scale, shift, node whose uses become the layer, what)`` or None."""
    if node.op != "call_function" or node.target not in _MUL | _ADD | _SUB:
        return None
    layer = next((a for a in node.args[:2] if _foldable(gm, a, ("conv", "linear"))), None)
    if layer is None:
        return None
    channels = _attr(gm, classify(gm, layer).weight).shape[0]
    scale, shift = torch.ones(channels), torch.zeros(channels)
    if node.target in _MUL:
        s = _other(node, layer, commutative=True)
        scale = None if s is None else _channel_vector(gm, layer, s)
        if scale is None:
            return None
        end, what = node, "constant per-channel scale"
        users = list(node.users)
        if len(users) == 1 and users[0].target in _ADD | _SUB and users[0].op == "call_function":
            t = _other(users[0], node, commutative=users[0].target in _ADD)
            t = None if t is None else _channel_vector(gm, layer, t)
            if t is not None:
                shift = -t if users[0].target in _SUB else t
                end, what = users[0], "constant per-channel scale and shift"
        return layer, scale, shift, end, what
    t = _other(node, layer, commutative=node.target in _ADD)
    t = None if t is None else _channel_vector(gm, layer, t)
    if t is None:
        return None
    return layer, scale, -t if node.target in _SUB else t, node, "constant per-channel shift"
