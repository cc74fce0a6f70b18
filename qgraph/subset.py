"""Distribution-flexible subset quantization (DFSQ, ALGORITHMS.md §4), post-training only.

* :func:`universal_set`: the multi-word additive power-of-two values ``U`` (§4.2); with the default
  4 words, 189 values in [0, 1] and 377 in [-1, 1].
* :func:`kmeans_select` (the fast selection, linear in ``|U|``) and :func:`exhaustive_select` (the
  exponential reference for small sets) pick ``2**bits`` points of ``U`` (0 always among them) for one
  channel's normalised activations; :func:`codebook_sse` is the error both minimise.
* :func:`quantize_codebook` / :func:`dequantize_codebook`: nearest-point indices and the lookup,
  the math of the activation quantizer (an index computation followed by a gather, which is how
  the ONNX file runs it).
* :class:`SubsetQuantize`: the activation quantizer. Per sample and channel it normalises
  ``x̃ = (x - μ) / (m + ε)`` (μ the spatial mean, 0 after a ReLU; m the spatial max-abs of
  ``x - μ``), replaces ``x̃`` by its nearest codebook point of its channel and undoes the
  normalisation. Calibration collects normalised values per channel and runs :func:`kmeans_select`.
* the recipe ``subset(bits=4)``: per-output-channel asymmetric min/max ``bits``-bit conv weights and
  subset-quantized conv inputs (the ``subset`` method pass, :mod:`qgraph.passes.subset`).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from qgraph.errors import CalibrationError, InputError, RecipeError
from qgraph.granularity import PerChannel
from qgraph.qspec import QSpec
from qgraph.quantizer import FakeQuantize
from qgraph.recipes import Recipe, register_recipe

EPS = 1e-8
MAX_SAMPLES = 20000  # normalised values kept per channel for K-means
MAX_COMBINATIONS = 2_000_000  # exhaustive search refuses more subsets than this


def universal_set(words: int = 4, signed: bool = True) -> np.ndarray:
    """Sorted float32 values ``(u_1 + ... + u_w) / w`` with ``u_k ∈ {1, 2^-k, 2^-(k+w), 0}`` (and their negatives).

    Every value is a sum of at most ``words`` powers of two over ``words``: multiplying by one is
    shifts and adds. ``words=4`` gives the paper's set (189 values in [0, 1], 377 with negatives).
    """
    if not 1 <= words <= 8:
        raise InputError(f"universal_set takes 1..8 words, got {words}")
    terms = [(1.0, 2.0**-k, 2.0 ** -(k + words), 0.0) for k in range(1, words + 1)]
    pos = {sum(t) / words for t in itertools.product(*terms)}
    vals = pos | {-v for v in pos} if signed else pos
    return np.array(sorted(vals), dtype=np.float32)


def _nearest(values: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Index into sorted ``points`` of the nearest point for each value (ties go to the lower point)."""
    mids = (points[1:] + points[:-1]) / 2
    return np.searchsorted(mids, values, side="left")


def snap(points: np.ndarray, universe: np.ndarray) -> np.ndarray:
    """Each point replaced by its nearest element of (sorted) ``universe``."""
    return universe[_nearest(np.asarray(points, dtype=np.float32), universe)]


def codebook_sse(values: np.ndarray, codebook: np.ndarray) -> float:
    """Sum of squared errors of quantizing ``values`` to the nearest point of ``codebook``."""
    cb = np.sort(np.asarray(codebook, dtype=np.float64))
    v = np.asarray(values, dtype=np.float64)
    return float(np.sum((v - cb[_nearest(v, cb)]) ** 2))


def kmeans_select(values: np.ndarray, k: int, universe: np.ndarray, restarts: int = 5, iters: int = 100,
                  tol: float = 1e-3, seed: int = 0) -> np.ndarray:
    """The fast point selection (§4.5): K-means with one centroid pinned at 0, centroids snapped to
    ``universe``, best of ``restarts`` by SSE. Returns ``k`` sorted values of ``universe`` (snapping
    can repeat a value, so fewer may be distinct). Cost: linear in ``|universe|`` and in the data."""
    v = np.asarray(values, dtype=np.float64).ravel()
    uni = np.sort(np.asarray(universe, dtype=np.float32))
    if k < 1:
        raise InputError(f"kmeans_select needs k >= 1, got {k}")
    if v.size == 0:
        raise CalibrationError("kmeans_select got no values")
    rng = np.random.default_rng(seed)
    best, best_sse = None, math.inf
    for _ in range(restarts):
        c = np.concatenate([[0.0], rng.choice(v, size=k - 1, replace=v.size < k - 1)]) if k > 1 else np.zeros(1)
        for _ in range(iters):
            c = np.sort(c)
            idx = _nearest(v, c)
            sums = np.bincount(idx, weights=v, minlength=k)
            counts = np.bincount(idx, minlength=k)
            new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
            new[np.argmin(np.abs(c))] = 0.0  # the pinned centroid stays at 0
            moved = float(np.max(np.abs(new - c)))
            c = new
            if moved < tol:
                break
        cb = np.sort(snap(c, uni))
        sse = codebook_sse(v, cb)
        if sse < best_sse:
            best, best_sse = cb, sse
    return best.astype(np.float32)


def exhaustive_select(values: np.ndarray, k: int, universe: np.ndarray) -> np.ndarray:
    """The reference: the ``k``-subset of ``universe`` containing 0 with the lowest SSE on ``values``,
    by trying every subset (``C(|U| - 1, k - 1)`` of them; refused above 2 million)."""
    uni = np.sort(np.asarray(universe, dtype=np.float32))
    others = uni[uni != 0]
    n = math.comb(len(others), k - 1)
    if n > MAX_COMBINATIONS:
        raise InputError(f"exhaustive_select would try {n} subsets of a {len(uni)}-value set (limit {MAX_COMBINATIONS}); "
                         "use kmeans_select or a smaller universal set")
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    best, best_sse = None, math.inf
    for combo in itertools.combinations(others, k - 1):
        cb = np.sort(np.array((0.0, *combo)))
        sse = codebook_sse(v, cb)
        if sse < best_sse:
            best, best_sse = cb, sse
    return best.astype(np.float32)


# --------------------------------------------------------------------------- the quantizer math


def normalise(x: torch.Tensor, post_relu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x̃, μ, m + ε)`` per sample and channel over the spatial axes of an ``[N, C, ...]`` tensor (detached stats)."""
    dims = tuple(range(2, x.dim()))
    xd = x.detach()
    mu = torch.zeros_like(xd.mean(dim=dims, keepdim=True)) if post_relu else xd.mean(dim=dims, keepdim=True)
    m = (xd - mu).abs().amax(dim=dims, keepdim=True) + EPS
    return (x - mu) / m, mu, m


def quantize_codebook(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index (int64, along the last axis of ``codebook[C, K]``, rows sorted) of the nearest point of
    channel ``c``'s codebook for each element of ``x[N, C, ...]``; ties go to the lower point."""
    mids = (codebook[:, 1:] + codebook[:, :-1]) / 2  # [C, K-1]: thresholds between neighbouring points
    mids = mids.reshape((1, codebook.shape[0]) + (1,) * (x.dim() - 2) + (-1,))
    return (x.unsqueeze(-1) > mids).to(torch.int64).sum(-1)


def dequantize_codebook(idx: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The lookup ``codebook[c, idx]`` for indices ``idx[N, C, ...]``: one Gather on the flattened codebook."""
    c, k = codebook.shape
    offsets = (torch.arange(c, device=idx.device) * k).reshape((1, c) + (1,) * (idx.dim() - 2))
    flat = (idx + offsets).reshape(-1)
    return codebook.reshape(-1).index_select(0, flat).reshape(idx.shape)


class SubsetQuantize(FakeQuantize):
    """DFSQ activation quantizer for an ``[N, C, H, W]`` conv input (per-channel codebooks ⊆ ``U``).

    ``codebook`` is a ``[C, 2**bits]`` buffer of sorted values of :func:`universal_set` with 0 in
    every row; ``post_relu`` skips the mean subtraction. Calibration (``observe`` mode) keeps up to
    20000 normalised values per channel; ``finish_calibration`` runs :func:`kmeans_select`. The
    backward pass is an identity straight-through estimator (DFSQ itself never trains).
    """

    label = "subset"

    def __init__(self, bits: int, post_relu: bool, where: str = "", words: int = 4, seed: int = 0) -> None:
        spec = QSpec(bits=bits, symmetric=True, signed=False, granularity=PerChannel(1))
        super().__init__(spec, "activation", where)
        self.observer = None
        self.post_relu = bool(post_relu)
        self.words = words
        self.seed = seed
        self._samples: list[list[np.ndarray]] = []
        self.register_buffer("codebook", torch.zeros(0))

    @property
    def initialized(self) -> bool:
        return self.codebook.numel() > 0

    def set_mode(self, mode: str) -> None:
        super().set_mode(mode)
        self.observer = None
        if mode == "observe":
            self._samples = []

    def _observe(self, x: torch.Tensor) -> None:
        if x.dim() < 3:
            raise InputError(f"subset quantizer at {self.where or '?'} expects [N, C, H, W] inputs, got shape {tuple(x.shape)}")
        xt, _, _ = normalise(x.detach().float(), self.post_relu)
        per_channel = xt.transpose(0, 1).reshape(x.shape[1], -1).cpu().numpy()
        if not self._samples:
            self._samples = [[] for _ in range(x.shape[1])]
        rng = np.random.default_rng(self.seed + sum(len(s) for s in self._samples))
        for c, vals in enumerate(per_channel):
            if vals.size > MAX_SAMPLES:
                vals = rng.choice(vals, MAX_SAMPLES, replace=False)
            self._samples[c].append(vals)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        if not self._samples:
            if self.initialized:
                self.mode = "quantize"
                return
            raise CalibrationError(f"subset quantizer at {self.where or '?'} saw no data during calibration")
        uni = universal_set(self.words)
        rows = []
        for c, chunks in enumerate(self._samples):
            vals = np.concatenate(chunks)
            if vals.size > MAX_SAMPLES:
                vals = np.random.default_rng(self.seed + c).choice(vals, MAX_SAMPLES, replace=False)
            rows.append(kmeans_select(vals, 2**self.spec.bits, uni, seed=self.seed + c))
        self.set_codebook(torch.from_numpy(np.stack(rows)))
        self._samples = []
        self.mode = "quantize"

    @torch.no_grad()
    def set_codebook(self, codebook: torch.Tensor) -> None:
        cb = torch.sort(codebook.detach().float(), dim=1).values
        if cb.dim() != 2 or cb.shape[1] != 2**self.spec.bits:
            raise InputError(f"subset quantizer at {self.where or '?'}: a codebook is [C, {2**self.spec.bits}], got {tuple(cb.shape)}")
        self.codebook = cb.clone()
        self.scale = torch.ones(())  # (the normalisation is dynamic: no stored scale)
        self.zero_point = torch.zeros(())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "codebook"
        if key in state_dict and self.codebook.shape != state_dict[key].shape:
            self.codebook = torch.empty_like(state_dict[key], dtype=torch.float32)
            self.mode = "quantize"
        for name in ("scale", "zero_point"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], dtype=torch.float32))
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] != self.codebook.shape[0]:
            raise InputError(f"subset quantizer at {self.where or '?'} has {self.codebook.shape[0]} channel codebooks, "
                             f"got input of shape {tuple(x.shape)}")
        xt, mu, m = normalise(x, self.post_relu)
        q = dequantize_codebook(quantize_codebook(xt.detach(), self.codebook), self.codebook)
        out = q * m + mu
        if self.training:
            return x + (out - x).detach()  # identity straight-through estimator
        return out

    def codebook_indices(self) -> np.ndarray:
        """``[C, 2**bits]`` indices of the codebook values into :func:`universal_set` (9 bits for 4 words)."""
        uni = universal_set(self.words)
        cb = self.codebook.cpu().numpy()
        idx = np.searchsorted(uni, cb)
        idx = np.clip(idx, 0, len(uni) - 1)
        if not np.array_equal(uni[idx], cb):
            raise CalibrationError(f"subset quantizer at {self.where or '?'} has codebook values outside the universal set")
        return idx

    def scale_range(self) -> tuple[float, float] | None:
        """Smallest and largest gap between distinct codebook points (normalised units)."""
        if not self.initialized:
            return None
        gaps = [np.diff(np.unique(r)) for r in self.codebook.cpu().numpy()]
        gaps = np.concatenate([g for g in gaps if g.size] or [np.zeros(1)])
        return float(gaps.min()), float(gaps.max())

    def extra_repr(self) -> str:
        return f"subset {self.spec.bits}-bit, post_relu={self.post_relu}, mode={self.mode}"

    def report_fields(self) -> dict:
        if not self.initialized:
            return {"subset": "not calibrated"}
        distinct = [len(np.unique(r)) for r in self.codebook.cpu().numpy()]
        return {"subset": f"{self.codebook.shape[0]} channel codebooks of {2**self.spec.bits} points from |U|={len(universal_set(self.words))}",
                "post_relu": self.post_relu, "distinct levels (min..max)": f"{min(distinct)}..{max(distinct)}"}


def subset_quantizers(module: nn.Module) -> dict[str, SubsetQuantize]:
    return {n: m for n, m in module.named_modules() if isinstance(m, SubsetQuantize)}


def pack_codebooks(gm: nn.Module, state: dict[str, torch.Tensor]) -> list:
    """qpack records for the activation codebooks of ``gm`` (popped from ``state``, the float tensors).

    Each ``<quantizer>.codebook`` ``[C, 2**bits]`` is stored with the reserved ``codebook`` encoding:
    codes are indices into the layer's table of distinct universal-set values (``bits`` wide, the
    fewest that fit, at least 2), the table is the entry's ``codebook`` (padded with its last value)
    and the scale is 1. A layer with more than 256 distinct values stays a float tensor.
    """
    from qgraph.backends.qpack import PackedTensor

    out = []
    for name, q in sorted(subset_quantizers(gm).items()):
        key = f"{name}.codebook"
        if key not in state or not q.initialized:
            continue
        cb = q.codebook.detach().cpu().numpy().astype(np.float32)
        table = np.unique(cb)
        if table.size > 256:
            continue
        bits = max(2, math.ceil(math.log2(table.size)))
        padded = np.concatenate([table, np.full(2**bits - table.size, table[-1], dtype=np.float32)])
        codes = np.searchsorted(table, cb).astype(np.uint8)
        out.append(PackedTensor(name=key, codes=codes, bits=bits, qmin=0, qmax=2**bits - 1, scale=np.array(1.0, dtype=np.float32),
                                zero_point=np.zeros((), dtype=np.uint8), granularity={"kind": "per_tensor"}, codebook=padded))
        state.pop(key)
    return out


def unpack_codebook(p) -> torch.Tensor:
    """The values of a ``codebook``-encoded qpack record: ``codebook[codes] * scale``."""
    codes = np.asarray(p.codes, dtype=np.int64)
    return torch.from_numpy(np.asarray(p.codebook, dtype=np.float32)[codes] * np.float32(np.asarray(p.scale, dtype=np.float32)))


@register_recipe("subset")
def subset_recipe(bits: int = 4, keep_first_last: bool = True) -> Recipe:
    """DFSQ (post-training): conv weights ``bits``-bit asymmetric per output channel (min/max), conv inputs
    subset-quantized on per-channel codebooks of ``2**bits`` universal-set points; the first and last
    conv stay float unless ``keep_first_last=False``. ``"subset(bits=4)"``."""
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise RecipeError(f"subset(bits=...) takes 2..8 bits, got {bits!r}")
    weight = QSpec(bits=bits, symmetric=False, signed=True, granularity=PerChannel(0))
    return Recipe(f"subset(bits={bits})", weight, None, kinds=("conv",), description=subset_recipe.__doc__,
                  methods=(("subset", {"bits": bits, "keep_first_last": bool(keep_first_last)}),))


__all__ = ["universal_set", "kmeans_select", "exhaustive_select", "codebook_sse", "snap", "normalise", "quantize_codebook",
           "dequantize_codebook", "SubsetQuantize", "subset_quantizers", "subset_recipe", "pack_codebooks", "unpack_codebook"]
