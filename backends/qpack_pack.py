"""Bit packing for qpack files: integer codes in 2-, 4- or 8-bit fields, element 0 in the low bits.

A ``bits``-wide code is stored in a field of ``field_width(bits)`` bits: 2 for bits <= 2 (four per
byte), 4 for bits 3..4 (two per byte), 8 for bits 5..8 (one per byte). Element ``i`` of the
flattened (C-order) tensor goes to byte ``i // per_byte`` at bit offset ``(i % per_byte) * width``;
signed codes are two's complement in their field; the last byte is padded with zero bits. For 4-bit
codes this is exactly ONNX's int4/uint4 packing (element 0 in the low nibble). See docs/qpack.md.
"""

from __future__ import annotations

import numpy as np

from qgraph.errors import QPackError

__all__ = ["field_width", "packed_length", "pack_bits", "unpack_bits", "padding_is_zero"]


def field_width(bits: int) -> int:
    """Width in bits of the field a ``bits``-wide code is stored in (2, 4 or 8)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise QPackError(f"bits must be an integer in 1..8, got {bits!r}")
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def packed_length(count: int, bits: int) -> int:
    """Bytes that ``count`` packed ``bits``-wide codes take: ``ceil(count / per_byte)``."""
    per_byte = 8 // field_width(bits)
    return -(-int(count) // per_byte)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer ``codes`` (any shape, flattened in C order) into a flat uint8 array.

    Codes must fit ``bits`` bits as signed or unsigned integers (``-2**(bits-1) .. 2**bits - 1``);
    negative codes are stored two's complement in their field.
    """
    width = field_width(bits)
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iub":
        raise QPackError(f"codes must be an integer array, got dtype {codes.dtype}")
    flat = codes.reshape(-1)
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < -(2 ** (bits - 1)) or hi > 2**bits - 1:
            raise QPackError(f"codes in [{lo}, {hi}] do not fit {bits} bits")
    # two's complement in 8 bits, then keep the field's low bits
    fields = flat.astype(np.int16).astype(np.uint8) & np.uint8((1 << width) - 1)
    if width == 8:
        return np.ascontiguousarray(fields)
    per_byte = 8 // width
    pad = (-fields.size) % per_byte
    if pad:
        fields = np.concatenate([fields, np.zeros(pad, np.uint8)])
    rows = fields.reshape(-1, per_byte)
    out = np.zeros(rows.shape[0], np.uint8)
    for j in range(per_byte):
        out |= rows[:, j] << np.uint8(j * width)
    return out


def unpack_bits(data: np.ndarray, bits: int, count: int, signed: bool) -> np.ndarray:
    """Unpack ``count`` codes from ``pack_bits`` output: flat int8 when ``signed`` else uint8.

    Signed fields are sign-extended from the field width (a 3-bit code is read as a 4-bit field).
    """
    width = field_width(bits)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise QPackError(f"packed data must be a 1-d uint8 array, got {data.dtype} with shape {data.shape}")
    count = int(count)
    need = packed_length(count, bits)
    if count < 0 or data.size < need:
        raise QPackError(f"{count} {bits}-bit codes need {need} bytes, got {data.size}")
    if width == 8:
        out = data[:count].copy()
        return out.view(np.int8) if signed else out
    per_byte = 8 // width
    mask = np.uint8((1 << width) - 1)
    shifts = (np.arange(per_byte, dtype=np.uint8) * width).astype(np.uint8)
    fields = ((data[:need, None] >> shifts[None, :]) & mask).reshape(-1)[:count]
    if not signed:
        return np.ascontiguousarray(fields)
    values = fields.astype(np.int16)
    values -= (values >= (1 << (width - 1))).astype(np.int16) << width
    return values.astype(np.int8)


def padding_is_zero(data: np.ndarray, bits: int, count: int) -> bool:
    """Whether the bits after the last code (in the last byte) are all zero, as the writer leaves them."""
    width = field_width(bits)
    used = (int(count) * width) % 8
    if used == 0 or data.size == 0:
        return True
    return int(data[-1]) >> used == 0
