"""The in-memory types of a qpack: ``PackedTensor``, ``QPack`` and a checked manifest entry.

They live apart from ``qpack`` so that the N:M encoding (``qpack_nm``) and the listing
(``qpack_describe``) can use them without importing the reader and writer. ``qgraph.backends.qpack``
re-exports ``PackedTensor`` and ``QPack``, their documented home (docs/qpack.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PackedTensor", "QPack", "ManifestEntry"]


@dataclass
class PackedTensor:
    """One quantized tensor: integer codes of the tensor's shape with their scales and zero points."""

    name: str
    codes: np.ndarray
    bits: int
    qmin: int
    qmax: int
    scale: np.ndarray
    zero_point: np.ndarray
    granularity: dict
    codebook: np.ndarray | None = None  # reserved: float32, 2**bits entries that the codes index
    # N:M sparsity (format version 2): {"n", "m", "indices"}; indices uint8 [shape[0], K/m*n], the ascending
    # in-group positions of the kept codes (K = numel/shape[0]); every other code is the zero point
    nm: dict | None = None


@dataclass
class QPack:
    """What ``read_qpack`` returns: packed tensors (codes unpacked), plain tensors, meta, writer version."""

    packed: dict[str, PackedTensor] = field(default_factory=dict)
    floats: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    version: str = ""


@dataclass
class ManifestEntry:
    """A manifest entry, checked: what every tensor of one packed tensor must look like."""

    name: str
    bits: int
    qmin: int
    qmax: int
    signed: bool
    shape: tuple[int, ...]
    granularity: dict
    nm: dict | None
    expect: dict[str, tuple[str, tuple[int, ...]]]  # role -> (safetensors dtype code, shape)
