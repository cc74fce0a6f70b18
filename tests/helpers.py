"""Small test helpers (imported by test modules; pytest puts this directory on sys.path)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch


def ort_session(path, optimized_path: str | None = None, level=None, exact_int4: bool = False) -> ort.InferenceSession:
    """A one-thread CPU session with exact int8 kernels on CPUs without VNNI, as qgraph's export check
    runs (``qgraph.backends.ort.session``). ``exact_int4``: the fused int4 MatMulNBits kernel
    computes in float (by default ONNX Runtime quantizes its activations to int8 on the fly).
    ``level``: a graph optimization level other than ONNX Runtime's default (all)."""
    from qgraph.backends import ort as ort_backend

    if level is None:
        return ort_backend.session(str(path), optimized_path=None if optimized_path is None else str(optimized_path),
                                   matmulnbits_accuracy_level=0 if exact_int4 else None, exact_int8=True)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.x64quantprecision", "1")
    if exact_int4:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_predict(sess: ort.InferenceSession, x: torch.Tensor) -> np.ndarray:
    """Run a single-input ONNX model over ``x`` in chunks of its (static) batch size; returns logits."""
    inp = sess.get_inputs()[0]
    b = inp.shape[0] if isinstance(inp.shape[0], int) else len(x)
    xs = x.numpy()
    outs = []
    for i in range(0, len(xs), b):
        chunk = xs[i:i + b]
        n = len(chunk)
        if n < b:
            chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(sess.run(None, {inp.name: chunk})[0][:n])
    return np.concatenate(outs)


def op_types(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def initializer_types(path) -> dict[str, int]:
    return {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}


def file_size(path) -> int:
    return Path(path).stat().st_size


class TinyConvNet(torch.nn.Module):
    """conv → relu → pool → conv → relu → pool → linear (K=256 → 128) → relu → linear (128 → 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(16 * 4 * 4, 128)
        self.head = torch.nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.head(torch.relu(self.fc(torch.flatten(x, 1))))


def tiny_conv_setup():
    """(TinyConvNet in eval mode, an example batch of 8 16x16 images, 5 calibration batches)."""
    torch.manual_seed(0)
    model = TinyConvNet().eval()
    x = torch.randn(8, 3, 16, 16)
    calib = [torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)] + [x]
    return model, x, calib
