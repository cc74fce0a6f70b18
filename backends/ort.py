"""ONNX Runtime: run an exported model, compare it with PyTorch, time it."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch
from torch.utils import _pytree as pytree

EXACT_INT8 = "session.x64quantprecision"  # ONNX Runtime's session entry for u8·u8 kernels where u8·s8 ones saturate
_SHARED_WEIGHT = "Attempt to replace the existing tensor"  # ONNX Runtime 1.32's load failure in that mode (see session)


def session(path: str, threads: int = 1, optimized_path: str | None = None, matmulnbits_accuracy_level: int | None = None,
            exact_int8: bool = False) -> ort.InferenceSession:
    """An ONNX Runtime CPU session.

    ``exact_int8``: compute integer convolutions and matmuls exactly on every x86 CPU. Without VNNI
    (AVX2, AVX-512 without VNNI), ONNX Runtime's u8·s8 kernels add each pair of products in int16
    with saturation (``vpmaddubsw``), so uint8 activations near the top of their range against int8
    weights of large magnitude come out off (random-weight AlexNet w8a8: 5.2e-4 on logits up to
    0.022, 2.3× the export check's tolerance; exact mode 5.6e-9). Exact mode (the session entry
    ``session.x64quantprecision``) converts those weights to uint8 when the file loads and runs
    slower u8·u8 kernels; it changes nothing on CPUs with VNNI. :func:`int8_saturates` tells whether
    this CPU is affected. ONNX Runtime 1.32 cannot convert an int8 tensor that several nodes read (a
    tied embedding and LM head, one conv applied twice) and fails to load such a file in this mode;
    the session then runs a copy of the model with one such tensor per reader (the same values).
    Where ONNX Runtime's own rewrites share one (the experts of a stacked MoE weight), it runs the
    file at the basic optimization level instead: no QDQ fusions, DequantizeLinear and float ops.
    ``sess.exact_int8`` says whether the session computes int8 exactly (False only on such a CPU
    without ``exact_int8``).

    ``matmulnbits_accuracy_level``: how the fused ``MatMulNBits`` kernel (weight-only linears, 2/4/8
    bits) computes; ONNX Runtime reads it from the session, not from the file. Its default (4)
    quantizes activations to int8 on the fly: on a 4096×4096 int4 linear 15× faster than FP32 for
    one token, ~0.7% relative error. 0 computes in float and matches the PyTorch model to float
    rounding (2.6× faster than FP32 for one token, no faster for 32; for 8-bit weights a slow
    reference path). Verification uses 0. See docs/architecture.md, "MatMulNBits accuracy level".
    """
    if not exact_int8:
        sess = ort.InferenceSession(path, _options(threads, optimized_path, matmulnbits_accuracy_level, False),
                                    providers=["CPUExecutionProvider"])
        sess.exact_int8 = not int8_saturates()
        return sess
    options = _options(threads, optimized_path, matmulnbits_accuracy_level, True)
    for model in (path, _unshared_int8):  # the file, then its copy with one int8 tensor per reader
        try:
            sess = ort.InferenceSession(model if isinstance(model, str) else model(path), options, providers=["CPUExecutionProvider"])
            sess.exact_int8 = True
            return sess
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            if _SHARED_WEIGHT not in str(e):
                raise
    # ONNX Runtime's own rewrites shared a tensor (a DequantizeLinear moved past the Gather of each
    # expert of a stacked weight): no QDQ fusions, so no integer kernels, DequantizeLinear and float ops
    options = _options(threads, optimized_path, matmulnbits_accuracy_level, False)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    sess.exact_int8 = True
    return sess


def _options(threads: int, optimized_path: str | None, matmulnbits_accuracy_level: int | None, exact_int8: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if matmulnbits_accuracy_level is not None:
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(matmulnbits_accuracy_level))
    if exact_int8:
        opts.add_session_config_entry(EXACT_INT8, "1")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4 if exact_int8 else 3  # a load failure in exact mode is handled, not logged
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return opts


def _unshared_int8(path: str) -> bytes:
    """The model at ``path``, serialized, with every int8 initializer that several nodes read (a tied
    embedding and LM head, one conv applied twice, a shared zero point) copied once per reader, and
    every ``DequantizeLinear`` of one copied once per consumer. The values are the same; ONNX Runtime
    1.32's exact int8 mode converts each copy on its own (``session``)."""
    import onnx

    model = onnx.load(path)
    g = model.graph
    int8 = {t.name: t for t in g.initializer if t.data_type == onnx.TensorProto.INT8}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    nodes, extra, count = [], [], 0

    def own(name: str) -> str:
        nonlocal count
        count += 1
        copy = onnx.TensorProto()
        copy.CopyFrom(int8[name])
        copy.name = f"{name}__reader{count}"
        extra.append(copy)
        return copy.name

    for n in g.node:
        shared = [k for k, i in enumerate(n.input) if i in int8 and len(consumers[i]) > 1]
        readers = consumers.get(n.output[0], []) if n.op_type == "DequantizeLinear" and n.output else []
        if n.op_type == "DequantizeLinear" and n.input[0] in int8 and len(readers) > 1 and n.output[0] not in outputs:
            for r, reader in enumerate(readers):  # one DequantizeLinear per consumer, each on its own tensors
                dq = onnx.NodeProto()
                dq.CopyFrom(n)
                dq.name, dq.output[0] = f"{n.name}__reader{r}", f"{n.output[0]}__reader{r}"
                for k, i in enumerate(n.input):
                    if i in int8:
                        dq.input[k] = own(i)
                reader.input[:] = [dq.output[0] if i == n.output[0] else i for i in reader.input]
                nodes.append(dq)
            continue
        for k in shared:
            n.input[k] = own(n.input[k])
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(extra)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used or t.name in outputs]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model.SerializeToString()


def int8_saturates() -> bool:
    """Whether ONNX Runtime's default u8·s8 kernels may saturate on this CPU: x86 without VNNI
    (read from ``/proc/cpuinfo``; False where it cannot be read)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def default_session_error(model, path: str, args: tuple, expected) -> float | None:
    """How far ONNX Runtime with default session options computes the file at ``path`` (its
    ``onnx.ModelProto`` is ``model``) from ``expected`` on ``args``, where those options compute it
    differently from exact mode: on this CPU int8 kernels saturate (:func:`int8_saturates`) and the
    file has int8 weights that integer kernels multiply. None elsewhere: there the default session
    is the exact one. None too where the default session fails to load or run the file (the file was
    checked in exact mode; this only measures a configuration)."""
    from qgraph.backends.onnx_uint8_weights import integer_kernel_weights

    if not int8_saturates() or not integer_kernel_weights(model):
        return None
    try:
        outputs = run(session(path, matmulnbits_accuracy_level=0), args)
    except Exception:  # noqa: BLE001 - onnxruntime raises its own exception types
        return None
    return compare(expected, outputs).max_abs_error


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
