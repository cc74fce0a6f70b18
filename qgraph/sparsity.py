"""Weight sparsity: N:M and unstructured masks, the ``nm`` and ``sparse`` recipes, and the mask module.

A sparsity recipe attaches a :class:`SparseMask` to every Conv/Linear weight it covers
(``get_attr W → call_module <path>.weight_mask → [weight quantizer →] op``, see
``qgraph.passes.sparsity``). The mask is computed once from the weight magnitudes and then
**frozen**: training steps update the dense weight, the graph only ever uses ``W ⊙ mask``.

N:M groups (the layout every function here shares): a weight of shape ``[C_out, ...]`` is read as
a matrix ``[C_out, K]`` with ``K = numel / C_out`` in PyTorch's C order (for a conv
``K = C_in·kh·kw``); each row is cut into consecutive groups of ``m`` and at most ``n`` weights of a
group are kept. ``K`` must be a multiple of ``m``; layers where it is not stay dense (the pass says
so). Unstructured masks keep the ``numel - round(ratio·numel)`` largest magnitudes of a layer.

Training-time masks (Bi-Mask, UniPTS) live in ``qgraph.bimask`` and ``qgraph.unipts``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from qgraph.errors import RecipeError
from qgraph.recipes import Recipe, register_recipe

KINDS = ("nm", "unstructured")


@dataclass(frozen=True)
class SparsitySpec:
    """What a sparsity recipe prunes: ``kind`` "nm" (``n`` of every ``m``) or "unstructured"
    (``ratio`` of each layer's weights, or ``layers[path]`` for the layers named there); module
    paths matching a ``skip`` glob stay dense."""

    kind: str
    n: int = 0
    m: int = 0
    ratio: float = 0.0
    layers: tuple[tuple[str, float], ...] = field(default=())
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RecipeError(f"sparsity kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "nm":
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.n, self.m))
            if not ok or not 1 <= self.n < self.m <= 256:
                raise RecipeError(f"N:M sparsity needs integers 1 <= n < m <= 256, got n={self.n!r}, m={self.m!r}")
        else:
            for what, r in (("ratio", self.ratio), *((f"layers[{p!r}]", r) for p, r in self.layers)):
                if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                    raise RecipeError(f"sparsity {what} must be a number in [0, 1), got {r!r}")

    def ratio_for(self, path: str) -> float:
        return dict(self.layers).get(path, self.ratio)

    def skips(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, g) for g in self.skip)

    def describe(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        return f"{self.ratio:.0%} unstructured" + (f" ({len(self.layers)} layers set)" if self.layers else "")

    def to_json(self) -> dict:
        d: dict = {"kind": self.kind}
        if self.kind == "nm":
            d.update(n=self.n, m=self.m)
        else:
            d["ratio"] = self.ratio
            if self.layers:
                d["layers"] = {p: r for p, r in self.layers}
        if self.skip:
            d["skip"] = list(self.skip)
        return d

    @staticmethod
    def from_json(d: dict) -> SparsitySpec:
        try:
            layers = tuple(sorted((str(p), float(r)) for p, r in dict(d.get("layers", {})).items()))
            return SparsitySpec(d["kind"], int(d.get("n", 0)), int(d.get("m", 0)), float(d.get("ratio", 0.0)), layers,
                                tuple(d.get("skip", ())))
        except (KeyError, TypeError, ValueError) as e:
            raise RecipeError(f"not a valid sparsity description {d!r}: {e}") from e


# --------------------------------------------------------------------------- masks


def nm_fits(shape: tuple[int, ...], m: int) -> str | None:
    """Why a weight of ``shape`` cannot take N:M groups of ``m`` (None when it can)."""
    if len(shape) < 2:
        return f"{len(shape)}-D weight has no rows"
    k = 1
    for d in shape[1:]:
        k *= d
    if k % m:
        return f"row length K={k} is not a multiple of m={m}"
    return None


def _groups(w: torch.Tensor, m: int) -> torch.Tensor:
    return w.reshape(w.shape[0], -1, m)


def nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask keeping the ``n`` largest ``|w|`` of every group of ``m`` (exactly ``n`` per group)."""
    g = _groups(w.detach().abs(), m)
    idx = g.topk(n, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(w.shape)


def magnitude_mask(w: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool mask keeping the ``numel - round(ratio·numel)`` largest ``|w|`` of the whole tensor."""
    flat = w.detach().abs().reshape(-1)
    keep = flat.numel() - int(round(ratio * flat.numel()))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep > 0:
        mask[flat.topk(keep).indices] = True
    return mask.reshape(w.shape)


def nm_counts(x: torch.Tensor, m: int) -> torch.Tensor:
    """Non-zeros per N:M group of ``x`` (a mask or a weight), shape ``[C_out, K/m]``."""
    return (_groups(x, m) != 0).sum(-1)


def nm_indices(mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In-group positions (ascending, uint8) of the kept entries of an exact N:M ``mask``: ``[C_out, K/m·n]``."""
    g = _groups(mask, m)
    if not bool((g.sum(-1) == n).all()):
        raise ValueError(f"mask is not exactly {n}:{m}")
    pos = torch.arange(m, dtype=torch.uint8).expand_as(g)
    return pos[g].reshape(mask.shape[0], -1)


def nm_mask_from_indices(indices: torch.Tensor, shape: tuple[int, ...], n: int, m: int) -> torch.Tensor:
    """Inverse of :func:`nm_indices`."""
    rows = shape[0]
    idx = indices.to(torch.int64).reshape(rows, -1, n)
    mask = torch.zeros(rows, idx.shape[1], m, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(shape)


def compute_mask(w: torch.Tensor, spec: SparsitySpec, path: str = "") -> torch.Tensor:
    if spec.kind == "nm":
        return nm_mask(w, spec.n, spec.m)
    return magnitude_mask(w, spec.ratio_for(path))


class SparseMask(nn.Module):
    """Multiplies a weight by a frozen bool ``mask`` (a buffer, saved in ``state_dict``).

    ``n``/``m`` are set for N:M masks (0 otherwise); ``where`` is the module path, for messages.
    """

    is_weight_transform = True  # qgraph.ops looks through it to the op that reads the weight

    def __init__(self, mask: torch.Tensor, n: int = 0, m: int = 0, where: str = "") -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.n, self.m, self.where = n, m, where

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)

    @property
    def sparsity(self) -> float:
        return 1.0 - float(self.mask.float().mean())

    def extra_repr(self) -> str:
        kind = f"{self.n}:{self.m}" if self.m else "unstructured"
        return f"{kind}, {self.sparsity:.1%} zeros, shape={tuple(self.mask.shape)}"


def weight_masks(gm) -> dict[str, str]:
    """``{weight state key: SparseMask module name}`` for every masked weight read by ``get_attr``."""
    found = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), SparseMask):
            src = node.args[0]
            if getattr(src, "op", None) == "get_attr":
                found[str(src.target)] = str(node.target)
    return found


def is_mask_node(gm, node) -> bool:
    if getattr(node, "op", None) != "call_module":
        return False
    try:
        return isinstance(gm.get_submodule(node.target), SparseMask)
    except AttributeError:
        return False


# --------------------------------------------------------------------------- recipes


@register_recipe("nm")
def nm(n: int = 2, m: int = 4, skip: tuple[str, ...] = ()) -> Recipe:
    """N:M weight sparsity (n of every m consecutive weights along each row of Conv/Linear weights); no quantization.
    Compose with a quantization recipe: recipe=["nm(2,4)", "w8a8"]."""
    spec = SparsitySpec("nm", n, m, skip=tuple(skip))
    return Recipe(f"nm({n},{m})", None, None, kinds=(), description=nm.__doc__, sparsity=spec)


@register_recipe("sparse")
def sparse(ratio: float = 0.5, layers: dict | None = None, skip: tuple[str, ...] = ()) -> Recipe:
    """Unstructured magnitude sparsity: ``ratio`` of each Conv/Linear weight set to zero (``layers``: per-module-path ratios)."""
    spec = SparsitySpec("unstructured", ratio=ratio, layers=tuple(sorted((layers or {}).items())), skip=tuple(skip))
    name = f"sparse({ratio:g})" if not layers else f"sparse(per-layer, {len(layers)} layers)"
    return Recipe(name, None, None, kinds=(), description=sparse.__doc__, sparsity=spec)


__all__ = [
    "SparsitySpec", "SparseMask", "nm_mask", "magnitude_mask", "nm_counts", "nm_indices", "nm_mask_from_indices",
    "compute_mask", "nm_fits", "weight_masks", "is_mask_node", "nm", "sparse",
]
