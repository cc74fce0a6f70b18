"""QuantizedModule: a Conv/Linear with its quantizers, for layers that stay modules.

Layers inside auto-leaves (submodules fx could not trace) are quantized by swapping the module for
this wrapper: the input goes through ``input_quantizer``, the weight through ``weight_quantizer``,
and the original module's own functional forward is reused.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        w = self.weight_quantizer(m.weight) if self.weight_quantizer is not None else m.weight
        if isinstance(m, nn.Linear):
            y = F.linear(x, w, m.bias)
        elif isinstance(m, _CONV):
            y = m._conv_forward(x, w, m.bias)
        else:
            fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[len(m.kernel_size)]
            y = fn(x, w, m.bias, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return y
