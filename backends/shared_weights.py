"""One weights file for several ONNX models that hold the same tensors (a decoder's prefill and decode graphs).

Each model's initializers of at least ``MIN_BYTES`` move to ONNX external data in one file next to the
models; a tensor that several models hold (same type, shape and bytes) is written once and every
model points at the same offset. ONNX Runtime reads external data relative to the model's folder, so
the models stay where they are and keep running; ``onnx.load`` reads them back whole.
"""

from __future__ import annotations

import hashlib
import os

import onnx
from onnx.external_data_helper import set_external_data

MIN_BYTES = 1024  # smaller tensors (scales, zero points, shapes) stay inline
ALIGN = 64  # offsets aligned for any element type


def share_weights(paths: list[str], data_name: str = "weights.bin") -> dict:
    """Move the large initializers of the models at ``paths`` (one folder) into ``data_name`` there,
    each distinct tensor once, and rewrite the models to refer to it. Returns sizes in bytes:
    ``before`` (the models as they were), ``after`` (models plus the data file), ``shared`` (bytes
    written once that more than one tensor refers to)."""
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    if len(folders) != 1:
        raise ValueError(f"the models must be in one folder to share a weights file; got {sorted(folders)}")
    folder = folders.pop()
    data_path = os.path.join(folder, data_name)
    before = sum(os.path.getsize(p) for p in paths)
    models = [onnx.load(p) for p in paths]
    where: dict[tuple, tuple[int, int]] = {}  # (type, dims, digest) -> (offset, length)
    refs: dict[tuple, int] = {}
    with open(data_path, "wb") as data:
        for model in models:
            for t in model.graph.initializer:
                if t.data_location == onnx.TensorProto.EXTERNAL or not t.HasField("raw_data") or len(t.raw_data) < MIN_BYTES:
                    continue
                key = (t.data_type, tuple(t.dims), hashlib.sha256(t.raw_data).hexdigest())
                if key not in where:
                    data.seek(-data.tell() % ALIGN, os.SEEK_CUR)
                    where[key] = (data.tell(), len(t.raw_data))
                    data.write(t.raw_data)
                refs[key] = refs.get(key, 0) + 1
                offset, length = where[key]
                set_external_data(t, data_name, offset=offset, length=length)
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
    for model, path in zip(models, paths):
        onnx.save(model, path)
    after = sum(os.path.getsize(p) for p in paths) + os.path.getsize(data_path)
    shared = sum(length * (refs[k] - 1) for k, (_, length) in where.items())
    return {"before": before, "after": after, "shared": shared, "tensors": len(where)}
