"""``print(qgraph)``: a graph as short code-like lines, grouped under the user's module paths.

    stem.0
      stem_0_input_quantizer = quantize[uint8 asym per-tensor](x)          [32, 1, 8, 8]
      conv2d = conv2d(stem_0_input_quantizer, stem_0_weight_quantizer, stem.0.bias)  [32, 16, 8, 8]  conv w8a8

Weights (``get_attr``) are written as their attribute path where they are used; a quantizer call
shows its spec; an op the recipe quantized shows its kind and bits.
"""

from __future__ import annotations

import torch.fx as fx

from qgraph.meta import ANNOTATION_KEY
from qgraph.ops import module_path, tensor_meta
from qgraph.quantizer import FakeQuantize


def _arg(a) -> str:
    if isinstance(a, fx.Node):
        return str(a.target) if a.op == "get_attr" else a.name
    if isinstance(a, (list, tuple)):
        inner = ", ".join(_arg(x) for x in a)
        return f"[{inner}]" if isinstance(a, list) else f"({inner}{',' if len(a) == 1 else ''})"
    if isinstance(a, float):
        return f"{a:g}"
    return repr(a) if isinstance(a, str) else str(a)


def _call(gm: fx.GraphModule, node: fx.Node) -> str:
    args = [_arg(a) for a in node.args] + [f"{k}={_arg(v)}" for k, v in node.kwargs.items()]
    if node.op == "call_module":
        try:
            mod = gm.get_submodule(str(node.target))
        except AttributeError:
            mod = None
        if isinstance(mod, FakeQuantize):
            return f"quantize[{mod.spec.describe()}{'' if mod.mode == 'quantize' else ', ' + mod.mode}]({', '.join(args)})"
        kind = type(mod).__name__ if mod is not None else "?"
        return f"{node.target}:{kind}({', '.join(args)})"
    if node.op == "call_method":
        return f"{args[0]}.{node.target}({', '.join(args[1:])})"
    name = getattr(node.target, "__name__", None) or str(node.target)
    return f"{name}({', '.join(args)})"


def format_graph(gm: fx.GraphModule, title: str) -> str:
    lines = [title]
    current = None
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            continue
        tm = tensor_meta(node)
        shape = f"  {list(tm[0])}" if tm else ""
        if node.op == "placeholder":
            lines.append(f"input {node.name}{shape}")
            continue
        if node.op == "output":
            lines.append(f"return {_arg(node.args[0])}")
            continue
        path = module_path(node)
        if path != current:
            lines.append(path or "(root)")
            current = path
        ann = node.meta.get(ANNOTATION_KEY)
        tag = ""
        if ann is not None:
            tag = f"  {ann.kind} " + (f"w{ann.weight.bits}" if ann.weight else "w-") + (f"a{ann.activation.bits}" if ann.activation else "a-")
        lines.append(f"  {node.name} = {_call(gm, node)}{shape}{tag}")
    return "\n".join(lines)
