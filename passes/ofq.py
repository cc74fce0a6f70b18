"""OFQPass: prepare a model for oscillation-free QAT (OFQ, ALGORITHMS.md §7); in place on an ``nn.Module``.

OFQ trains the model's own modules (it is quantization-aware training on the float architecture),
so the pass swaps modules rather than rewriting an fx graph. Rules, over ``named_modules`` in order:

1. A recognised attention block becomes :class:`qgraph.ofq.QKRAttention` (with ``qkr``):
   ``nn.MultiheadAttention`` (``batch_first=True``, self-attention) or a timm-style block (a
   ``qkv`` linear of 3·C outputs, a ``proj`` linear, an int ``num_heads``). Its linears are
   converted with it.
2. A module whose class name says attention (``*Attention*``, ``*Attn*``) but fits neither pattern
   is an :class:`UnsupportedOpError` naming its path and type (``qkr=False`` quantizes its linears
   without the reparameterization).
3. Linears matching a ``keep`` glob (patch embedding, classifier head) get ``keep_bits``-bit LSQ
   weights (``keep_bits=None``: they stay float).
4. Every other ``nn.Linear`` becomes a :class:`qgraph.ofq.QATLinear` with ``method`` (StatsQ, or
   LSQ for comparison) ``bits``-bit weights and, with ``a_bits``, a :class:`qgraph.ofq.BiasLSQ` input.
   ``bits=None`` keeps them float (only the exact reparameterization of rule 1).
"""

from __future__ import annotations

import torch.fx as fx
from qgraph.passes.base import QPass
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.errors import UnsupportedOpError
from qgraph.ofq import QATLinear, QKRAttention, is_timm_attention, looks_like_attention, matches_any


class OFQPass(QPass):
    name = "ofq"

    def __init__(self, bits: int = 2, a_bits: int | None = None, qkr: bool = True, method: str = "statsq",
                 keep: tuple[str, ...] = ("patch_embed*", "head*"), keep_bits: int | None = 8, exact_bias: bool = True) -> None:
        super().__init__()
        self.bits, self.a_bits, self.qkr, self.method = bits, a_bits, qkr, method
        self.keep, self.keep_bits, self.exact_bias = tuple(keep), keep_bits, exact_bias

    def call(self, gm: fx.GraphModule | nn.Module) -> PassResult:
        done: set[str] = set()
        modified = False
        for path, mod in list(gm.named_modules()):
            if not path or any(path.startswith(d + ".") for d in done) or isinstance(mod, (QKRAttention, QATLinear)):
                continue
            if self.qkr and (isinstance(mod, nn.MultiheadAttention) or is_timm_attention(mod)):  # rule 1
                new = QKRAttention.from_module(mod, self.bits, self.a_bits, self.method, self.exact_bias, where=path)
                _set(gm, path, new)
                done.add(path)
                self.record("replaced", path, path, f"{type(mod).__name__} → QKRAttention ({new.heads} heads, W_qk "
                            f"{self.bits}-bit StatsQ; scores cost H·N·C² instead of 2·N·C² MACs)")
                modified = True
                continue
            if self.qkr and looks_like_attention(mod) and not isinstance(mod, nn.Linear):  # rule 2
                raise UnsupportedOpError(
                    f"OFQ query-key reparameterization does not recognise the attention module at {path!r} "
                    f"({type(mod).__name__}): it handles nn.MultiheadAttention(batch_first=True) and timm-style blocks with "
                    "qkv/proj linears and num_heads; pass qkr=False to quantize its linears without reparameterization")
            if type(mod) is not nn.Linear:
                continue
            if matches_any(path, self.keep):  # rule 3
                if self.keep_bits is None:
                    self.record("kept float", path, path, "matches a keep glob")
                    continue
                _set(gm, path, QATLinear.from_linear(mod, self.keep_bits, "lsq"))
                self.record("replaced", path, path, f"Linear → {self.keep_bits}-bit LSQ weights (keep glob)")
            elif self.bits is None:  # float run: only the attention reparameterization
                continue
            else:  # rule 4
                _set(gm, path, QATLinear.from_linear(mod, self.bits, self.method, self.a_bits))
                act = f", {self.a_bits}-bit LSQ+bias inputs" if self.a_bits else ""
                self.record("replaced", path, path, f"Linear → {self.bits}-bit {self.method} weights{act}")
            done.add(path)
            modified = True
        return PassResult(gm, modified)


def _set(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


__all__ = ["OFQPass"]
