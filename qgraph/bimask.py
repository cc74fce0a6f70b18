"""Bi-Mask: N:M sparse training with separate forward and backward masks (ICML 2023; ALGORITHMS.md §5).

A weight ``[C_out, ...]`` is read as ``W₂ [C_out, K]`` (C order, K = C_in·kh·kw for a conv).

* forward mask ``m_f``: the ``n`` largest ``|W|`` of every group of ``m`` consecutive entries of a
  row (N:M along the input / reduction dimension of ``Y = X·(W⊙m_f)ᵀ``);
* backward mask ``m_b ⊆ m_f`` for the input gradient ``G_X = G_Y·(W⊙m_b)``, whose reduction runs
  over output channels: permute the rows of ``W⊙m_f`` by ``perm``, keep the ``n`` largest of every
  group of ``m`` consecutive (permuted) rows in each column, intersect with ``m_f`` and unpermute;
* ``perm`` is the best of ``greedy`` random permutations of C_out (the one that keeps the most
  forward weights in ``m_b``), searched again every ``refresh`` training calls;
* weight gradient dense, plus ``decay · (1 − m_f) ⊙ W`` (``qgraph.sparse_training``).

Modes (to compare against): ``"bimask"`` (the above), ``"naive"`` (``perm`` = identity, no
search), ``"transposable"`` (the uni-directional baseline: one mask N:M along rows *and* columns
of every m×m block, the best of all such patterns per block; forward and backward both use it;
m ≤ 4), ``"forward"`` (SR-STE: ``m_b = m_f``, the backward is not N:M along output channels so it
is not accelerated).

    from qgraph.bimask import prepare_bimask, finalize_bimask
    report = prepare_bimask(model, n=2, m=4, skip=("stem.*", "fc2"))   # in place
    ... train as usual (the permutation refresh counts training forward calls) ...
    finalize_bimask(model)                      # plain layers holding W ⊙ m_f
    qm = qgraph.quantize(model, x, recipe=[nm_recipe(report, 2, 4), "w8a8"], calib_data=batches)
"""

from __future__ import annotations

import itertools
import math
import zlib

import torch
from torch import nn

from qgraph.errors import InputError
from qgraph.sparse_training import masked_layers, unwrap_layers, wrap_layers
from qgraph.sparsity import nm_mask

MODES = ("bimask", "naive", "transposable", "forward")


def column_nm_mask(w2: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest ``|w2|`` of every group of ``m`` consecutive rows, in each column of ``w2 [C_out, K]``."""
    rows, k = w2.shape
    g = w2.abs().reshape(rows // m, m, k)
    idx = g.topk(n, dim=1).indices
    return torch.zeros_like(g, dtype=torch.bool).scatter_(1, idx, True).reshape(rows, k)


def backward_mask(w2: torch.Tensor, m_f2: torch.Tensor, perm: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """``m_b`` for one permutation of the output channels (rows); ``m_b ⊆ m_f``, at most ``n`` of every
    ``m`` permuted rows per column."""
    p_mask = m_f2[perm] & column_nm_mask((w2 * m_f2)[perm], n, m)
    m_b = torch.empty_like(p_mask)
    m_b[perm] = p_mask
    return m_b


def search_permutation(w2: torch.Tensor, m_f2: torch.Tensor, n: int, m: int, candidates: int,
                       generator: torch.Generator, current: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """The permutation (of ``candidates`` random ones, plus ``current``) whose backward mask keeps the most weights."""
    rows = w2.shape[0]
    pool = [current] if current is not None else []
    pool += [torch.randperm(rows, generator=generator) for _ in range(candidates)]
    best, best_score = pool[0], -1
    for perm in pool:
        score = int(backward_mask(w2, m_f2, perm, n, m).sum())
        if score > best_score:
            best, best_score = perm, score
    return best, best_score


def _block_patterns(n: int, m: int) -> torch.Tensor:
    """Every m×m 0/1 matrix with exactly n ones in each row and each column, as ``[P, m·m]`` floats."""
    rows = [r for r in itertools.product((0, 1), repeat=m) if sum(r) == n]
    pats = [b for b in itertools.product(rows, repeat=m) if all(sum(col) == n for col in zip(*b))]
    return torch.tensor(pats, dtype=torch.float32).reshape(len(pats), m * m)


def transposable_mask(w2: torch.Tensor, n: int, m: int, patterns: torch.Tensor) -> torch.Tensor:
    """Per m×m block of ``w2 [C_out, K]``, the pattern (N:M in rows and columns) keeping the most magnitude."""
    rows, k = w2.shape
    blocks = w2.abs().reshape(rows // m, m, k // m, m).permute(0, 2, 1, 3).reshape(-1, m * m)
    best = (blocks @ patterns.t()).argmax(1)
    mask = patterns[best].reshape(rows // m, k // m, m, m).permute(0, 2, 1, 3).reshape(rows, k)
    return mask.bool()


class BiMasker(nn.Module):
    """Computes ``(m_f, m_b)`` for one layer; holds its permutation and step counter."""

    def __init__(self, shape: tuple[int, ...], n: int = 2, m: int = 4, mode: str = "bimask", greedy: int = 100,
                 refresh: int = 100, seed: int = 0) -> None:
        super().__init__()
        if mode not in MODES:
            raise InputError(f"Bi-Mask mode {mode!r} is not one of {MODES}")
        if mode == "transposable" and m > 4:
            raise InputError(f"transposable masks are searched exhaustively per block: m={m} > 4 is not supported")
        self.n, self.m, self.mode, self.greedy, self.refresh = n, m, mode, int(greedy), int(refresh)
        self.register_buffer("perm", torch.arange(shape[0]))
        self.step = 0
        self.kept_fraction = float("nan")  # |m_b| / |m_f| at the last call
        self._gen = torch.Generator().manual_seed(seed)
        self._patterns = _block_patterns(n, m) if mode == "transposable" else None

    @staticmethod
    def fits(shape: tuple[int, ...], m: int) -> bool:
        return len(shape) >= 2 and shape[0] % m == 0 and math.prod(shape[1:]) % m == 0

    def forward(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, m = self.n, self.m
        w2 = w.reshape(w.shape[0], -1)
        if self.mode == "transposable":
            m_f2 = transposable_mask(w2, n, m, self._patterns)
            return m_f2.reshape(w.shape), m_f2.reshape(w.shape)
        m_f2 = nm_mask(w2, n, m)
        if self.mode == "forward":
            return m_f2.reshape(w.shape), m_f2.reshape(w.shape)
        if self.mode == "bimask" and self.training and self.step % self.refresh == 0:
            self.perm, _ = search_permutation(w2, m_f2, n, m, self.greedy, self._gen, current=self.perm)
        if self.training:
            self.step += 1
        m_b2 = backward_mask(w2, m_f2, self.perm, n, m)
        self.kept_fraction = float(m_b2.sum()) / max(1, int(m_f2.sum()))
        return m_f2.reshape(w.shape), m_b2.reshape(w.shape)


def prepare_bimask(model: nn.Module, n: int = 2, m: int = 4, *, mode: str = "bimask", greedy: int = 100,
                   refresh: int = 100, decay: float = 2e-4, skip: tuple[str, ...] = (), seed: int = 0) -> dict[str, str]:
    """Swap (in place) the Conv2d/Linear layers of ``model`` for Bi-Mask training layers.

    Layers whose C_out or K is not a multiple of ``m`` (or matching a ``skip`` glob) stay dense.
    Returns ``{module path: "masked" | "dense: reason"}``.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m):
        raise InputError(f"Bi-Mask needs integers 1 <= n < m, got n={n!r}, m={m!r}")

    def make(path, layer):
        shape = tuple(layer.weight.shape)
        if not BiMasker.fits(shape, m):
            return None
        return BiMasker(shape, n, m, mode, greedy, refresh, seed=seed + zlib.crc32(path.encode()) % 10_000)

    return wrap_layers(model, make, decay, skip)


def finalize_bimask(model: nn.Module) -> nn.Module:
    """Replace the Bi-Mask layers by plain layers holding ``W ⊙ m_f`` (in place); returns ``model``."""
    return unwrap_layers(model)


def nm_recipe(report: dict[str, str], n: int = 2, m: int = 4):
    """The ``nm(n, m)`` recipe that keeps dense the layers ``prepare_bimask`` kept dense (its ``report``),
    so that quantizing the finalized model masks exactly the trained layers."""
    from qgraph.sparsity import nm

    return nm(n, m, skip=tuple(sorted(p for p, what in report.items() if what != "masked")))


def kept_fractions(model: nn.Module) -> dict[str, float]:
    """``|m_b| / |m_f|`` of each Bi-Mask layer at its last call (1.0 for transposable / forward modes)."""
    out = {}
    for path, layer in masked_layers(model).items():
        mk = layer.masker
        out[path] = 1.0 if mk.mode in ("transposable", "forward") else mk.kept_fraction
    return out


@torch.no_grad()
def mask_energy(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Per layer ``(‖W⊙m_f‖², ‖W⊙m_b‖²)`` relative to ``‖W⊙nm(W)‖²``, the weight an unconstrained N:M forward
    keeps: how much the forward loses to its mask (transposable < 1) and how much of it the input
    gradient uses (the gradient gap; 1.0 for the forward-only arm)."""
    out = {}
    for path, layer in masked_layers(model).items():
        w = layer.weight.detach()
        was = layer.masker.training
        layer.masker.eval()  # (no permutation refresh, no step)
        try:
            m_f, m_b = layer.masker(w)
        finally:
            layer.masker.train(was)
        ref = (w * nm_mask(w.reshape(w.shape[0], -1), layer.masker.n, layer.masker.m).reshape(w.shape)).pow(2).sum().clamp_min(1e-30)
        out[path] = (float((w * m_f).pow(2).sum() / ref), float((w * m_b).pow(2).sum() / ref))
    return out


def backward_flops(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Multiply-accumulates of one training step's backward pass on ``x`` (weight and input gradients
    of every Conv2d/Linear; the input gradient of a Bi-Mask / transposable layer runs N:M sparse).

    Returns ``{"dense": MACs if every layer were dense, "sparse": MACs with N:M input gradients,
    "saved": 1 - sparse / dense}``. Forward-only (SR-STE) layers save nothing.
    """
    macs: list[tuple[float, float]] = []  # (dense MACs of one GEMM, fraction of the input-gradient GEMM that runs)
    hooks = []

    def hook(mod, inp, out):
        w = mod.layer.weight if hasattr(mod, "layer") else mod.weight
        k = math.prod(w.shape[1:])
        gemm = out.numel() * k
        frac = 1.0
        if hasattr(mod, "masker") and mod.masker.mode != "forward":
            frac = mod.masker.n / mod.masker.m
        macs.append((gemm, frac))

    wrapped = set()
    for mod in model.modules():
        if hasattr(mod, "masker") and hasattr(mod, "layer"):
            hooks.append(mod.register_forward_hook(hook))
            wrapped.add(id(mod.layer))
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and id(mod) not in wrapped:
            hooks.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    dense = sum(2 * g for g, _ in macs)
    sparse = sum(g + g * f for g, f in macs)
    return {"dense": float(dense), "sparse": float(sparse), "saved": 1.0 - sparse / dense if dense else 0.0}


__all__ = ["prepare_bimask", "finalize_bimask", "nm_recipe", "kept_fractions", "mask_energy", "backward_flops", "BiMasker", "backward_mask",
           "column_nm_mask", "search_permutation", "transposable_mask", "MODES"]
