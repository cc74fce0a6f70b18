"""Quantized wrappers for layers that stay modules.

* :class:`QuantizedModule`: a Conv/Linear with its quantizers. Layers inside auto-leaves (submodules
  fx could not trace) are quantized by swapping the module for this wrapper: the input goes through
  ``input_quantizer``, the weight through ``weight_quantizer``, and the original module's own
  functional forward is reused.
* :class:`QuantizedMultiheadAttention`: an ``nn.MultiheadAttention`` whose projection weights are
  fake-quantized (weight-only) before ``F.multi_head_attention_forward``, for the attention layers
  the canonicalize pass cannot rewrite into graph ops (attention weights used, ``bias_k``, inside
  auto-leaves).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qgraph.quantizer import FakeQuantize

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
SWAPPABLE = (nn.Linear,) + _CONV + _CONV_T


class QuantizedModule(nn.Module):
    def __init__(self, module: nn.Module, weight_quantizer: FakeQuantize | None, input_quantizer: FakeQuantize | None,
                 output_quantizer: FakeQuantize | None = None) -> None:
        super().__init__()
        if not isinstance(module, SWAPPABLE):
            raise TypeError(f"cannot wrap {type(module).__name__}")
        self.module = module
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer
        self.output_quantizer = output_quantizer

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        """``output_size``: a transposed conv's (U-Nets match the skip's size with ``up(x, output_size=skip.shape)``)."""
        m = self.module
        if output_size is not None and not isinstance(m, _CONV_T):
            raise TypeError(f"{type(m).__name__}.forward() takes no output_size")
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        w = self.weight_quantizer(m.weight) if self.weight_quantizer is not None else m.weight
        if isinstance(m, nn.Linear):
            y = F.linear(x, w, m.bias)
        elif isinstance(m, _CONV):
            y = m._conv_forward(x, w, m.bias)
        else:
            nd = len(m.kernel_size)
            fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
            pad = m._output_padding(x, output_size, m.stride, m.padding, m.kernel_size, nd, m.dilation)
            y = fn(x, w, m.bias, m.stride, m.padding, pad, m.groups, m.dilation)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return y


class QuantizedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with weight quantizers on its input and output projections.

    ``weight_quantizers`` maps a weight name (``in_proj_weight`` or ``q_proj_weight`` /
    ``k_proj_weight`` / ``v_proj_weight``, and ``out_proj.weight``) to its quantizer; the attention
    itself runs as ``nn.MultiheadAttention.forward`` does outside its fused fast path.
    """

    def __init__(self, module: nn.MultiheadAttention, weight_quantizers: dict[str, FakeQuantize]) -> None:
        super().__init__()
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"cannot wrap {type(module).__name__}")
        self.module = module
        self.weight_quantizers = nn.ModuleDict({k.replace(".", "_"): q for k, q in weight_quantizers.items()})

    def _w(self, name: str):
        w = self.module.get_parameter(name) if name != "out_proj.weight" else self.module.out_proj.weight
        q = self.weight_quantizers[name.replace(".", "_")] if name.replace(".", "_") in self.weight_quantizers else None
        return q(w) if q is not None and w is not None else w

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        m = self.module
        batched = query.dim() == 3
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask", target_type=query.dtype)
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        if m.batch_first and batched:
            query, key, value = (t.transpose(1, 0) for t in (query, key, value))
        separate = not m._qkv_same_embed_dim
        out, weights = F.multi_head_attention_forward(
            query, key, value, m.embed_dim, m.num_heads,
            None if separate else self._w("in_proj_weight"), m.in_proj_bias, m.bias_k, m.bias_v, m.add_zero_attn, m.dropout,
            self._w("out_proj.weight"), m.out_proj.bias, training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask, use_separate_proj_weight=separate,
            q_proj_weight=self._w("q_proj_weight") if separate else None,
            k_proj_weight=self._w("k_proj_weight") if separate else None,
            v_proj_weight=self._w("v_proj_weight") if separate else None,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
        )
        if m.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights


def mha_weight_names(module: nn.MultiheadAttention) -> list[str]:
    """The projection weights of an attention layer, in the names QuantizedMultiheadAttention uses."""
    proj = ["in_proj_weight"] if module._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    return proj + ["out_proj.weight"]
