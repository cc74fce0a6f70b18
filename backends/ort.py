"""ONNX Runtime: run an exported model, compare it with PyTorch, time it."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch
from torch.utils import _pytree as pytree


def session(path: str, threads: int = 1, optimized_path: str | None = None, matmulnbits_accuracy_level: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session.

    ``matmulnbits_accuracy_level``: how the fused ``MatMulNBits`` kernel (weight-only linears, 2/4/8
    bits) computes; ONNX Runtime reads it from the session, not from the file. Its default (4)
    quantizes activations to int8 on the fly: on a 4096×4096 int4 linear 15× faster than FP32 for
    one token, ~0.7% relative error. 0 computes in float and matches the PyTorch model to float
    rounding (2.6× faster than FP32 for one token, no faster for 32; for 8-bit weights a slow
    reference path). Verification uses 0. See docs/architecture.md, "MatMulNBits accuracy level".
    """
    opts = ort.SessionOptions()
    if matmulnbits_accuracy_level is not None:
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(matmulnbits_accuracy_level))
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def feeds(sess: ort.InferenceSession, args: tuple) -> dict:
    tensors = [a for a in pytree.tree_leaves(args) if isinstance(a, torch.Tensor)]
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(tensors):
        raise ValueError(f"the ONNX model takes {len(names)} inputs ({', '.join(names)}), got {len(tensors)} tensors")
    return {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}


def run(sess: ort.InferenceSession, args: tuple) -> list[np.ndarray]:
    """The session's outputs. A failing run raises (its message is the error); ONNX Runtime's own
    log line for it, printed to stderr besides, is turned off."""
    opts = ort.RunOptions()
    opts.log_severity_level = 4
    return sess.run(None, feeds(sess, args), opts)


@dataclass
class Agreement:
    max_abs_error: float
    max_abs_reference: float
    top1_agreement: float | None  # fraction of rows whose argmax matches (classifier-like outputs)
    top1_agreement_up_to_ties: float | None = None  # rows count as agreeing when the two maxima are within the tie tolerance

    def __str__(self) -> str:
        top1 = f", top-1 agreement {self.top1_agreement:.1%}" if self.top1_agreement is not None else ""
        return f"max abs error {self.max_abs_error:.3g} (outputs up to {self.max_abs_reference:.3g}){top1}"


def compare(reference, outputs: list[np.ndarray], tie_tolerance: float = 0.0) -> Agreement:
    """Compare PyTorch outputs (any pytree) with ONNX Runtime outputs (a flat list).

    Top-1 agreement is measured on the first output when it looks like logits (last dim > 1).
    Coarsely quantized logits tie often, and integer kernels may break a tie differently; a row
    whose ONNX Runtime argmax scores within ``tie_tolerance`` of the reference maximum counts as
    agreeing "up to ties".
    """
    # Python numbers the model returns (a batch size: x.shape[0]) are graph outputs in the file too
    leaves = [t for t in pytree.tree_leaves(reference) if isinstance(t, (torch.Tensor, bool, int, float))]
    ref = [t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32) for t in leaves]
    integer = [isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex() for t in leaves]
    if len(ref) != len(outputs):
        raise ValueError(f"PyTorch gave {len(ref)} outputs, ONNX Runtime {len(outputs)}")
    max_err = max_ref = 0.0
    agree, rows = 0, 0
    for i, (r, o) in enumerate(zip(ref, outputs)):
        o = np.asarray(o, dtype=np.float32)
        if r.shape != o.shape:
            raise ValueError(f"output shapes differ: PyTorch {r.shape}, ONNX Runtime {o.shape}")
        if r.size:
            diff = np.abs(r - o)
            if i and integer[i] and not integer[i - 1] and ref[i - 1].shape == r.shape and r.ndim:
                diff = np.where(_tied(ref[i - 1]), 0.0, diff)  # top-k indices of tied values: either order is right
            max_err = max(max_err, float(diff.max()))
            max_ref = max(max_ref, float(np.abs(r).max()))
    first_r, first_o = ref[0], np.asarray(outputs[0])
    top1 = top1_ties = None
    if first_r.ndim >= 2 and first_r.shape[-1] > 1:
        r2 = first_r.reshape(-1, first_r.shape[-1])
        a, b = r2.argmax(-1), first_o.reshape(-1, first_o.shape[-1]).argmax(-1)
        agree, rows = int((a == b).sum()), a.size
        top1 = agree / rows
        near = r2[np.arange(rows), b] >= r2.max(-1) - tie_tolerance
        top1_ties = float(near.mean())
    return Agreement(max_err, max_ref, top1, top1_ties)


def _tied(values: np.ndarray) -> np.ndarray:
    """Where a ``topk``'s values (the output before its indices) tie: a value equal to another in its
    row, or the row's last, which may tie with the first value left out. Integer kernels and
    8-bit grids make exact ties common, and PyTorch and ONNX Runtime order tied indices differently
    (a classifier head's ``softmax(...).topk(3)``: index 9 against 0 at the cut-off)."""
    rows = values.reshape(-1, values.shape[-1])
    order = np.argsort(rows, axis=-1, kind="stable")
    ranked = np.take_along_axis(rows, order, -1)
    near = np.diff(ranked, axis=-1) <= np.abs(rows).max(-1, keepdims=True) * 1e-6  # neighbours in sorted order
    tied_ranked = np.zeros(rows.shape, dtype=bool)
    tied_ranked[:, 1:] |= near
    tied_ranked[:, :-1] |= near
    tied = np.zeros(rows.shape, dtype=bool)
    np.put_along_axis(tied, order, tied_ranked, -1)
    tied[:, -1] = True
    return tied.reshape(values.shape)


def latency_ms(sess: ort.InferenceSession, args: tuple, runs: int = 50, warmup: int = 5) -> float:
    """Median wall-clock milliseconds of one ``run`` call."""
    f = feeds(sess, args)
    for _ in range(warmup):
        sess.run(None, f)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, f)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
