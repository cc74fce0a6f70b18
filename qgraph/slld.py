"""SLLD: structure-based layer-by-layer distillation (TSQ-MTC, ALGORITHMS.md §1.3), an auxiliary QAT loss.

For each chosen block of a quantized model, the block's quantized output is compared with the
output of the *same block run in float* (its weights unquantized, no activation quantizers) on the
*same input* the quantized block received:

    L_SLLD = weight · Σ_blocks (1 − SSIM(sg(block_fp(x_q)), block_q(x_q)))

SSIM is the mean over sliding Gaussian windows (11×11, σ = 1.5), with C1 = (0.01·L)², C2 = (0.03·L)²
and L the float output's dynamic range ``max|A_fp|``; feature maps (B, C, H, W) are compared channel
by channel, token tensors (B, N, C) as one-channel images (B, 1, N, C). The float branch gets no
gradient (a second local computation, no teacher model).

Blocks are module paths of the model that was quantized (``"body.0"``, ``"layers.3.attn"``): the
block's nodes are those the capture recorded under that module (``nn_module_stack``); its input is
every value from outside the block it reads (weights excepted) and its output the one value used
outside it. Default: every direct child of the root module that contains a quantized weight.
Use::

    with qgraph.SLLD(qm, blocks=["body.0", "body.1"], weight=0.01) as slld:
        for x, y in loader:
            loss = l1(qm(x), y) + slld.loss()     # loss() reads the blocks of the last forward
            ...

Inside the ``with`` the graph has identity "tap" calls that record the block inputs and outputs;
leaving it (or ``slld.remove()``) takes them out again, so export sees the graph unchanged.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from qgraph.errors import InputError
from qgraph.quantizer import FakeQuantize


def _gaussian(window: int, sigma: float, device, dtype) -> torch.Tensor:
    r = torch.arange(window, device=device, dtype=dtype) - (window - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float | torch.Tensor | None = None, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM over sliding Gaussian windows between ``x`` (reference) and ``y``, same shape.

    4-D tensors are (B, C, H, W) and compared channel by channel; 3-D (B, N, C) become (B, 1, N, C);
    2-D (N, C) become (1, 1, N, C). ``data_range`` (L) defaults to ``max|x|``. The window shrinks to
    the smaller spatial size when the map is smaller than it.
    """
    if x.shape != y.shape:
        raise InputError(f"ssim needs tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() == 2:
        x, y = x[None, None], y[None, None]
    elif x.dim() == 3:
        x, y = x[:, None], y[:, None]
    elif x.dim() != 4:
        raise InputError(f"ssim takes 2-D, 3-D or 4-D tensors, got {x.dim()}-D")
    x, y = x.float(), y.float()
    L = x.detach().abs().max() if data_range is None else torch.as_tensor(data_range, dtype=torch.float32)
    L = torch.clamp(L, min=1e-8)
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    wh, ww = min(window, x.shape[-2]), min(window, x.shape[-1])
    gh, gw = _gaussian(wh, sigma, x.device, x.dtype), _gaussian(ww, sigma, x.device, x.dtype)
    k = (gh[:, None] * gw[None, :])[None, None].expand(x.shape[1], 1, wh, ww).contiguous()

    def blur(t):
        return F.conv2d(t, k, groups=x.shape[1])

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


class _Tap(nn.Module):
    """Identity that records what passes through it (the SLLD hooks in the graph)."""

    def __init__(self, store: dict, key: tuple) -> None:
        super().__init__()
        object.__setattr__(self, "_store", store)
        self.key = key

    def forward(self, x):
        self._store[self.key] = x
        return x


def _in_block(node: fx.Node, block: str) -> bool:
    return block in (node.meta.get("nn_module_stack") or {})


def _is_quantizer(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), FakeQuantize)


def _constant_source(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The ``get_attr`` a value comes from directly or through a (weight) quantizer, else None."""
    if node.op == "get_attr":
        return node
    if _is_quantizer(gm, node) and isinstance(node.args[0], fx.Node) and node.args[0].op == "get_attr":
        return node.args[0]
    return None


class SLLD:
    """The SLLD auxiliary loss on ``qm`` (a :class:`qgraph.QModel` or a quantized graph module); see the module doc."""

    def __init__(self, qm: nn.Module, blocks: list[str] | None = None, weight: float = 0.01) -> None:
        self.gm: fx.GraphModule = qm.qgraph if hasattr(qm, "qgraph") else qm
        self.weight = float(weight)
        self.blocks = list(blocks) if blocks is not None else self._default_blocks()
        if not self.blocks:
            raise InputError("SLLD found no blocks: name them with blocks=[module paths]")
        self._store: dict = {}
        self._taps: list[str] = []
        self._fp: dict[str, tuple[fx.GraphModule, int]] = {}
        self._install()

    def _default_blocks(self) -> list[str]:
        blocks: list[str] = []
        for node in self.gm.graph.nodes:
            if node.op != "call_function" or not any(_is_quantizer(self.gm, a) and self.gm.get_submodule(a.target).role == "weight"
                                                     for a in node.all_input_nodes):
                continue
            stack = list((node.meta.get("nn_module_stack") or {}).keys())
            if stack and stack[0] not in blocks:
                blocks.append(stack[0])
        return blocks

    # ----------------------------------------------------------------- graph surgery
    def _install(self) -> None:
        gm, graph = self.gm, self.gm.graph
        nodes = list(graph.nodes)
        plans = []
        for block in self.blocks:
            inside = [n for n in nodes if _in_block(n, block)]
            if not inside:
                raise InputError(f"SLLD block {block!r} has no operations in the quantized graph "
                                 "(not a module path of the model, or traced away)")
            members = set(inside)
            inputs: list[fx.Node] = []
            for n in inside:
                for a in n.all_input_nodes:
                    if a not in members and a not in inputs and _constant_source(gm, a) is None:
                        inputs.append(a)
            outputs = [n for n in inside if any(u not in members for u in n.users)]
            if len(outputs) != 1:
                raise InputError(f"SLLD block {block!r} has {len(outputs)} values used outside it "
                                 f"({', '.join(o.name for o in outputs)}); SLLD needs blocks with one output")
            plans.append((block, inside, inputs, outputs[0]))
        for block, inside, inputs, out in plans:  # before any tap changes the nodes' inputs
            self._fp[block] = (self._float_block(block, inside, inputs, out), len(inputs))
        for b, (block, _, inputs, out) in enumerate(plans):
            for i, value in enumerate([*inputs, out]):
                key = (block, i)
                name = f"_slld_tap_{b}_{i}"
                while hasattr(gm, name):
                    name += "_"
                gm.add_submodule(name, _Tap(self._store, key))
                with graph.inserting_after(value):
                    tap = graph.call_module(name, (value,))
                value.replace_all_uses_with(tap, delete_user_cb=lambda u, t=tap: u is not t)
                self._taps.append(name)
        graph.lint()
        gm.recompile()

    def _float_block(self, block: str, inside: list[fx.Node], inputs: list[fx.Node], out: fx.Node) -> fx.GraphModule:
        """The block as its own graph module on the same weights, with every quantizer bypassed."""
        gm = self.gm
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for i, a in enumerate(inputs):
            env[a] = g.placeholder(f"x{i}")

        def value(a: fx.Node) -> fx.Node:
            if a in env:
                return env[a]
            src = _constant_source(gm, a)
            if src is None:
                raise InputError(f"SLLD block {block!r}: cannot rebuild input {a.name}")
            env[a] = g.get_attr(src.target)
            return env[a]

        for n in inside:
            if _is_quantizer(gm, n):
                env[n] = value(n.args[0]) if n.args[0] not in env else env[n.args[0]]
                continue
            for a in n.all_input_nodes:
                if a not in env:
                    value(a)
            env[n] = g.node_copy(n, lambda a: env[a])
        g.output(env[out])
        return fx.GraphModule(gm, g)

    def remove(self) -> None:
        """Take the taps out of the graph again."""
        graph = self.gm.graph
        for node in list(graph.nodes):
            if node.op == "call_module" and node.target in self._taps:
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
        for name in self._taps:
            delattr(self.gm, name)
        self._taps = []
        graph.lint()
        self.gm.recompile()

    def __enter__(self) -> SLLD:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # ----------------------------------------------------------------- the loss
    def terms(self) -> dict[str, torch.Tensor]:
        """``1 − SSIM`` per block, from the last forward of the quantized model."""
        if not self._taps:
            raise InputError("SLLD was removed; create a new one")
        out = {}
        for block, (fp, n_in) in self._fp.items():
            try:
                xs = [self._store[(block, i)].detach() for i in range(n_in)]
                yq = self._store[(block, n_in)]
            except KeyError:
                raise InputError(f"SLLD block {block!r} has not run yet: call the model before loss()") from None
            with torch.no_grad():
                yf = fp(*xs)
            out[block] = 1.0 - ssim(yf, yq)
        return out

    def loss(self) -> torch.Tensor:
        """``weight · Σ (1 − SSIM)`` over the blocks, from the last forward."""
        return self.weight * sum(self.terms().values())


__all__ = ["SLLD", "ssim"]
