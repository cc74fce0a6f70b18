"""The human-readable listing of a qpack (``qgraph inspect FILE``): bytes stored per tensor and in all.

``stored_bytes`` counts what one packed tensor takes in the file (packed codes, scales, non-zero zero
points, codebook, N:M indices); ``describe_qpack`` reads a file and prints one row per tensor, then
totals, the header size, the recipe and the writing qgraph version (docs/qpack.md, "Command line").
"""

from __future__ import annotations

import json
import os

import numpy as np
from qgraph.backends.qpack import read_qpack
from qgraph.backends.qpack_nm import nm_index_bits
from qgraph.backends.qpack_pack import packed_length
from qgraph.backends.qpack_types import PackedTensor

__all__ = ["stored_bytes", "describe_qpack"]


def stored_bytes(pt: PackedTensor) -> int:
    """Bytes a packed tensor takes in a qpack: packed codes, scales, non-zero zero points, extras."""
    count = np.asarray(pt.codes).size
    if pt.nm is not None:
        count = count // pt.nm["m"] * pt.nm["n"]
    n = packed_length(count, pt.bits) + np.asarray(pt.scale).nbytes
    if np.any(np.asarray(pt.zero_point) != 0):
        n += np.asarray(pt.zero_point).size
    if pt.codebook is not None:
        n += np.asarray(pt.codebook).nbytes
    if pt.nm is not None:
        n += packed_length(count, nm_index_bits(pt.nm["m"]))
    return int(n)


def _gran_str(g: dict) -> str:
    if g.get("kind") == "per_channel":
        return f"per-channel(axis={g['axis']})"
    if g.get("kind") == "per_group":
        return f"per-group({g['size']}" + (f", axis={g['axis']})" if "axis" in g else ")")
    return "per-tensor"


def describe_qpack(path: str) -> str:
    """A table of a qpack file's tensors: bits, granularity, shape, bytes stored, fp32 bytes / stored."""
    qp = read_qpack(path)
    rows = []
    for name, pt in sorted(qp.packed.items()):
        kind = ("int" if pt.qmin < 0 else "uint") + str(pt.bits) + (" codebook" if pt.codebook is not None else "")
        kind += f" {pt.nm['n']}:{pt.nm['m']}" if pt.nm is not None else ""
        rows.append((name, kind, _gran_str(pt.granularity), list(pt.codes.shape), stored_bytes(pt), 4 * pt.codes.size))
    for name, a in qp.floats.items():
        rows.append((name, a.dtype.name, "-", list(a.shape), a.nbytes, 4 * a.size))
    size = os.path.getsize(path)
    stored, fp32 = sum(r[4] for r in rows), sum(r[5] for r in rows)

    def ratio(fp: int, st: int) -> str:
        return f"{fp / st:.2f}x" if st else "-"

    cells = [("tensor", "bits", "granularity", "shape", "bytes", "ratio")]
    cells += [(n, k, g, "x".join(map(str, s)) or "()", str(b), ratio(f, b)) for n, k, g, s, b, f in rows]
    cells.append(("total", f"{len(qp.packed)} packed", f"{len(qp.floats)} plain", "", str(stored), ratio(fp32, stored)))
    widths = [max(len(r[i]) for r in cells) for i in range(6)]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    recipe = qp.meta.get("recipe", "?")
    if isinstance(recipe, dict):
        recipe = recipe.get("name", json.dumps(recipe, sort_keys=True))
    lines.append(f"file {size} bytes ({size - stored} header), fp32 {fp32} bytes, {ratio(fp32, size)} overall")
    lines.append(f"recipe {recipe}, written by qgraph {qp.version}")
    return "\n".join(lines)
