"""N:M sparse tensors in a qpack (format version 2): the kept codes and their in-group positions.

A tensor of shape ``[C_out, ...]`` is read as rows of K = numel / C_out codes, each row cut into
groups of ``m`` that keep ``n`` codes each; ``NAME.codes`` holds the kept codes and
``NAME.nm_indices`` their ascending positions inside their groups, bit-packed like codes
(``qpack_pack``); every other position is the zero point. ``nm_compress`` gives the writer the
stored form (refusing what would not round-trip), ``nm_expand`` gives the reader the dense codes
(checking the indices). See docs/qpack.md, "N:M sparse tensors".
"""

from __future__ import annotations

import math

import numpy as np
from qgraph.backends.qpack_pack import padding_is_zero, unpack_bits
from qgraph.backends.qpack_types import ManifestEntry, PackedTensor

from qgraph.errors import QPackError

__all__ = ["nm_index_bits", "nm_kept", "expand_to", "nm_compress", "nm_expand"]


def nm_index_bits(m: int) -> int:
    """Bits an in-group position of an N:M group of ``m`` needs (stored in a 2-, 4- or 8-bit field)."""
    return max(1, (m - 1).bit_length())


def nm_kept(shape: tuple[int, ...], n: int, m: int) -> int:
    """How many codes an N:M tensor of ``shape`` keeps (raises ValueError when rows of K do not split into groups of m)."""
    count = math.prod(shape)
    if len(shape) < 2 or shape[0] == 0 or (count // shape[0]) % m:
        raise ValueError(f"N:M with m={m} needs rows (axis 0) whose length K = numel / shape[0] is a multiple of m, "
                         f"shape is {list(shape)}")
    return count // m * n


def expand_to(p: np.ndarray, gran: dict, shape: tuple[int, ...]) -> np.ndarray:
    """A scale or zero point laid out by granularity JSON ``gran``, broadcast to ``shape``."""
    p = np.asarray(p)
    kind = gran.get("kind")
    if kind == "per_tensor":
        return np.broadcast_to(p.reshape(()), shape)
    if kind == "per_channel":
        axis = gran["axis"] % len(shape)
        return np.broadcast_to(p.reshape([-1 if d == axis else 1 for d in range(len(shape))]), shape)
    return np.repeat(p, gran["size"], axis=gran.get("axis", -1))


def nm_expand(en: ManifestEntry, kept: np.ndarray, packed_idx: np.ndarray, zp: np.ndarray, bad) -> tuple[np.ndarray, dict]:
    """Dense codes (the zero point at pruned positions) and the ``nm`` dict from kept codes and packed indices."""
    n, m = en.nm["n"], en.nm["m"]
    ibits = nm_index_bits(m)
    if not padding_is_zero(packed_idx, ibits, kept.size):
        raise bad("the padding bits after the last N:M index are not zero")
    idx = unpack_bits(packed_idx, ibits, kept.size, False)
    if idx.size and int(idx.max()) >= m:
        raise bad(f"N:M indices reach {int(idx.max())}, m is {m}")
    rows = en.shape[0]
    groups = idx.reshape(rows, -1, n).astype(np.int64)
    if n > 1 and not np.all(np.diff(groups, axis=-1) > 0):
        raise bad(f"N:M indices are not strictly ascending within every group of {n}")
    full = np.array(expand_to(zp, en.granularity, en.shape)).astype(kept.dtype).reshape(rows, -1, m)
    np.put_along_axis(full, groups, kept.reshape(rows, -1, n), axis=-1)
    return full.reshape(en.shape), {"n": n, "m": m, "indices": idx.reshape(rows, -1)}


def nm_compress(pt: PackedTensor, codes: np.ndarray, zp: np.ndarray, gran: dict, where: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """(manifest ``nm``, kept codes, indices) of a PackedTensor with ``nm``; refuses what would not round-trip."""
    if not isinstance(pt.nm, dict) or set(pt.nm) != {"n", "m", "indices"}:
        raise QPackError(f"{where}: nm must be a dict with keys n, m, indices")
    n, m = (int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else -1 for v in (pt.nm["n"], pt.nm["m"]))
    if not 1 <= n < m <= 256:
        raise QPackError(f"{where}: invalid N:M n={pt.nm['n']!r}, m={pt.nm['m']!r} (need integers 1 <= n < m <= 256)")
    try:
        kept_count = nm_kept(codes.shape, n, m)
    except ValueError as e:
        raise QPackError(f"{where}: {e}") from e
    idx = np.asarray(pt.nm["indices"])
    rows = codes.shape[0]
    if idx.dtype != np.uint8 or idx.shape != (rows, kept_count // rows):
        raise QPackError(f"{where}: nm indices must be uint8 of shape {[rows, kept_count // rows]}, got {idx.dtype} {list(idx.shape)}")
    groups = idx.reshape(rows, -1, n).astype(np.int64)
    if idx.size and (int(idx.max()) >= m or (n > 1 and not np.all(np.diff(groups, axis=-1) > 0))):
        raise QPackError(f"{where}: nm indices must be below m={m} and strictly ascending within each group")
    try:
        full_zp = np.array(expand_to(zp, gran, codes.shape)).reshape(rows, -1, m)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise QPackError(f"{where}: cannot lay out zero points by granularity {gran!r}: {e}") from e
    g = codes.reshape(rows, -1, m)
    pruned = np.ones(g.shape, bool)
    np.put_along_axis(pruned, groups, False, axis=-1)
    if np.any(g[pruned] != full_zp[pruned]):
        raise QPackError(f"{where}: codes outside the kept N:M positions are not the zero point (the values would be lost)")
    kept = np.take_along_axis(g, groups, axis=-1).reshape(-1)
    return {"n": n, "m": m}, kept, idx.reshape(-1)
