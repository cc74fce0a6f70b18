"""Calibration and quantizer state across ``torch.distributed`` ranks.

Under ``torchrun``, every rank calls ``qgraph.quantize`` with its own shard of calibration data.
When a process group with more than one rank is initialised, qgraph then makes the ranks agree:

1. before the observers turn into qparams, their statistics are reduced over all ranks (min of the
   minima, max of the maxima, sums of the LSQ initialisation statistics, "signed" if any rank saw a
   negative value), so min-max calibration sees every rank's data, as one process given all shards
   would;
2. after calibration, every parameter and buffer of the quantized graph is broadcast from rank 0,
   so observers that keep samples (``percentile``, ``mse``) end up identical as well.

From there, DDP keeps the ranks equal: learnable scales are parameters (their gradients are
all-reduced), and a training step writes no other quantizer state (fixed-scale weight quantizers
derive their qparams from the synchronised weights). Every rank therefore exports the same qpack.
Pass ``sync_ranks=False`` to ``qgraph.quantize`` to calibrate one rank on its own (e.g. quantizing
on rank 0 only) — with the default, every rank must call it, or the others wait forever.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from qgraph.errors import CalibrationError


def active_world() -> int:
    """The number of ranks of the default process group, or 1 when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def should_sync(sync_ranks: bool | None) -> bool:
    """``sync_ranks`` as given, or (``None``) whether a process group of several ranks is running."""
    return active_world() > 1 if sync_ranks is None else bool(sync_ranks) and active_world() > 1


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree_on_seen(names: list[str], seen: list[bool], dev: torch.device) -> None:
    """Every rank must have fed the same quantizers; name one that some ranks never reached."""
    flags = torch.tensor([float(s) for s in seen], device=dev)
    lo, hi = flags.clone(), flags.clone()
    dist.all_reduce(lo, dist.ReduceOp.MIN)
    dist.all_reduce(hi, dist.ReduceOp.MAX)
    for name, own, a, b in zip(names, seen, lo.tolist(), hi.tolist()):
        if a != b:
            raise CalibrationError(f"quantizer {name} saw calibration data on some ranks but not on all (rank "
                                   f"{dist.get_rank()}: {'some' if own else 'none'}): give every rank batches that reach it")


def _reduce_flat(tensors: list[torch.Tensor], op, dev: torch.device) -> list[torch.Tensor]:
    """All-reduce a list of tensors in one call; returns them reduced, with their shapes."""
    if not tensors:
        return []
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32  # (sums and counts)
    flat = torch.cat([t.detach().to(dev, dtype).reshape(-1) for t in tensors])
    dist.all_reduce(flat, op)
    out, i = [], 0
    for t in tensors:
        out.append(flat[i:i + t.numel()].reshape(t.shape).to(t.device, t.dtype))
        i += t.numel()
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (a new tensor on ``t``'s device; float32 or float64)."""
    return _reduce_flat([t], dist.ReduceOp.SUM, _device())[0]


@torch.no_grad()
def reduce_observers(gm: nn.Module) -> None:
    """Step 1 above, for ``FakeQuantize`` observers and the per-task observers of task-scale quantizers."""
    from qgraph.quantizer import FakeQuantize
    from qgraph.task_scales import TaskFakeQuantize

    slots = []  # (name, observer or None, holder of LSQ init sums or None)
    for name, m in gm.named_modules():
        if isinstance(m, TaskFakeQuantize) and m.mode == "observe":
            slots += [(f"{name} (task {t})", m._observers[i], m._abs[i]) for i, t in enumerate(m.tasks)]
        elif isinstance(m, FakeQuantize) and m.mode == "observe":
            slots.append((name, m.observer, None))
    if not slots:
        return
    dev = _device()
    seen = [o is not None and o.min_val is not None for _, o, _ in slots]
    _agree_on_seen([n for n, _, _ in slots], seen, dev)
    obs = [o for (_, o, _), s in zip(slots, seen) if s]
    mins = _reduce_flat([o.min_val for o in obs], dist.ReduceOp.MIN, dev)
    maxs = _reduce_flat([o.max_val for o in obs], dist.ReduceOp.MAX, dev)
    for o, mn, mx in zip(obs, mins, maxs):
        o.min_val, o.max_val = mn, mx
    sums = [(a, s) for (_, _, a), s in zip(slots, seen) if a is not None and s]
    if sums:
        totals = _reduce_flat([torch.tensor(a[:2], dtype=torch.float64) for a, _ in sums], dist.ReduceOp.SUM, dev)
        lows = _reduce_flat([torch.tensor([a[2]]) for a, _ in sums], dist.ReduceOp.MIN, dev)
        for (a, _), tot, low in zip(sums, totals, lows):
            a[0], a[1], a[2] = float(tot[0]), float(tot[1]), float(low[0])


@torch.no_grad()
def reduce_bitswitch_stats(acts: dict[str, nn.Module]) -> None:
    """Step 1 for bit-switch activation quantizers: LSQ init sums per bit width and the sign."""
    if not acts:
        return
    dev = _device()
    mods = list(acts.values())
    signs = _reduce_flat([m.signed.float() for m in mods], dist.ReduceOp.MAX, dev)
    for m, s in zip(mods, signs):
        m.signed.fill_(int(s))
        m._host = None
    keys = [(m, b) for m in mods for b in sorted(m._stats)]
    totals = _reduce_flat([torch.tensor(m._stats[b], dtype=torch.float64) for m, b in keys], dist.ReduceOp.SUM, dev)
    for (m, b), t in zip(keys, totals):
        m._stats[b] = [float(t[0]), float(t[1])]


@torch.no_grad()
def broadcast_state(gm: nn.Module, src: int = 0) -> None:
    """Step 2 above: every parameter and buffer from rank ``src`` (host-side caches are dropped)."""
    dev = _device()
    for t in [*gm.parameters(), *gm.buffers()]:
        if t.numel() == 0:
            continue
        if t.device == dev and t.dtype != torch.bool:
            dist.broadcast(t.data, src)
        else:  # another device, or a dtype the backend may not carry (bool)
            buf = t.data.to(dev, torch.uint8 if t.dtype == torch.bool else t.dtype)
            dist.broadcast(buf, src)
            t.data.copy_(buf.to(t.dtype))
    for m in gm.modules():
        if hasattr(m, "_host"):
            m._host = None


__all__ = ["active_world", "should_sync", "all_reduce_sum", "reduce_observers", "reduce_bitswitch_stats", "broadcast_state"]
