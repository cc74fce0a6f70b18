"""``nn.EmbeddingBag`` as a lookup and a reduction, so that its table is an ordinary embedding weight.

Two forms, chosen by :func:`bag_call` from one module call:

- ``[N, bag]`` ids alone (bags of equal size, DLRM's sparse features): ``F.embedding`` then
  ``sum``/``mean``/``amax`` over the bag dimension. The exporter writes Gather and ReduceSum.
- anything else the module accepts (``max_norm``, which renormalizes the table in place, is applied to
  every row once by the canonicalize pass first):
  flat ids with ``offsets`` (the PyTorch text-classification tutorial), ``include_last_offset``,
  ``per_sample_weights`` and ``padding_idx``; also ``[N, bag]`` ids with those. ``F.embedding`` then
  :func:`reduce_bags`, a scatter of each row into its bag (ScatterElements in the file). Empty bags
  come out as zeros, as in PyTorch.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from qgraph.ops import tensor_meta

MODES = ("sum", "mean", "max")


def bag_call(node: fx.Node, mod: nn.EmbeddingBag) -> dict | None:
    """The call's inputs by name (``input``, ``offsets``, ``per_sample_weights``) and whether the bags
    are the plain ``[N, bag]`` form (``equal``); None where the call cannot be rewritten."""
    names = ("input", "offsets", "per_sample_weights")
    call = dict(zip(names, node.args))
    call.update(node.kwargs)
    if set(call) - set(names) or mod.max_norm is not None or mod.mode not in MODES or not isinstance(call.get("input"), fx.Node):
        return None
    tm = tensor_meta(call["input"])
    if tm is None or len(tm[0]) not in (1, 2):
        return None
    offsets, weights = _given(call.get("offsets")), _given(call.get("per_sample_weights"))
    if (len(tm[0]) == 1) == (offsets is None):  # flat ids need offsets, [N, bag] ids take none
        return None
    equal = len(tm[0]) == 2 and weights is None and mod.padding_idx is None
    return {"input": call["input"], "offsets": offsets, "per_sample_weights": weights, "equal": equal}


def _given(value):
    """None for an optional input the example left out: a placeholder whose example value was None
    (``forward(self, ids, offsets=None)`` called without offsets) carries no tensor metadata."""
    if isinstance(value, fx.Node) and value.op == "placeholder" and tensor_meta(value) is None:
        return None
    return value


def reduce_bags(rows: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor | None, mode: str, include_last_offset: bool,
                per_sample_weights: torch.Tensor | None, padding_idx: int | None) -> torch.Tensor:
    """What ``nn.EmbeddingBag`` returns, from the looked-up ``rows`` of its ``ids``: ``[bags, dim]``."""
    dim = rows.shape[-1]
    if ids.dim() == 2:  # [N, bag]: bag n is rows n * bag ... (n + 1) * bag - 1
        bags = ids.shape[0]
        seg = torch.arange(ids.numel(), device=ids.device) // ids.shape[1]
        rows, ids = rows.reshape(-1, dim), ids.reshape(-1)
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
    else:
        starts = offsets[:-1] if include_last_offset else offsets
        bags = starts.shape[0]
        seg = (torch.arange(ids.shape[0], device=ids.device)[:, None] >= starts[None, :]).sum(1) - 1  # each row's bag
    keep = torch.ones_like(ids, dtype=rows.dtype) if padding_idx is None else (ids != padding_idx).to(rows.dtype)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights[:, None].to(rows.dtype)
    index = seg[:, None].expand(-1, dim)
    counts = torch.zeros(bags, dtype=rows.dtype, device=rows.device).scatter_add(0, seg, keep)[:, None]
    if mode == "max":
        rows = torch.where(keep[:, None] > 0, rows, torch.full_like(rows, float("-inf")))
        out = torch.full((bags, dim), float("-inf"), dtype=rows.dtype, device=rows.device).scatter_reduce(0, index, rows, "amax")
        return torch.where(counts > 0, out, torch.zeros_like(out))
    out = torch.zeros(bags, dim, dtype=rows.dtype, device=rows.device).scatter_add(0, index, rows * keep[:, None])
    return out / counts.clamp(min=1) if mode == "mean" else out
