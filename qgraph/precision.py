"""Models that are not float32: qgraph simulates, calibrates and exports in float32.

A model whose floating parameters or buffers are ``float16``/``bfloat16`` (a language model loaded
with ``torch_dtype=torch.bfloat16``) or ``float64`` (scientific code) is captured as a float32 copy:
the fake quantizers, observers and the ONNX/qpack exports all work on float32 values, and the deployed
weights are integers either way (ONNX's QuantizeLinear takes no float64). Floating inputs of those
dtypes are cast to float32 where the captured graph is called, so the user's batches still fit; the
outputs are float32. Integer inputs (token ids) are left alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils import _pytree as pytree

UPCAST = (torch.float16, torch.bfloat16, torch.float64)  # the floating dtypes qgraph's copy casts to float32


def upcast_dtypes(model: nn.Module) -> list[str]:
    """The non-float32 floating dtypes among ``model``'s parameters and buffers, e.g. ``["bfloat16"]``."""
    found = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.dtype in UPCAST}
    return sorted(str(d).removeprefix("torch.") for d in found)


def float32_inputs(args: tuple) -> tuple:
    """``args`` with every float16/bfloat16/float64 tensor cast to float32, also inside lists and tuples."""
    return tuple(pytree.tree_map(lambda a: a.float() if isinstance(a, torch.Tensor) and a.dtype in UPCAST else a, a) for a in args)


def upcast(model: nn.Module, in_place: bool) -> tuple[nn.Module, str]:
    """``(float32 model, note)``; ``note`` is empty and ``model`` returned as is when everything floating
    is float32. Without ``in_place`` the float32 model is a copy and ``model`` stays untouched."""
    dtypes = upcast_dtypes(model)
    if not dtypes:
        return model, ""
    if not in_place:  # a pruned or hook-normed model refuses deepcopy: its copy gets the computed weights
        from qgraph.weight_hooks import copy_with_plain_weights

        model = copy_with_plain_weights(model)[0]
    model.float()
    return model, (f"the model's {'/'.join(dtypes)} parameters and buffers were cast to float32 on qgraph's copy: "
                   f"quantizers calibrate and exports run in float32; {'/'.join(dtypes)} inputs are cast to float32 "
                   f"and the outputs are float32")
