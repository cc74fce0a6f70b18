"""Shared helpers for the benchmarks: one-thread ORT sessions, interleaved timing, ONNX export and
graph inspection.

Machine facts (docs/TOOLCHAIN): 2 vCPUs sharing one core's FP units, so every benchmark runs ORT and
torch with ONE intra-op thread and compares medians taken in the same process, as ratios.
"""

from __future__ import annotations

import collections
import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch


def single_thread() -> None:
    """Pin torch to one intra-op thread (and one inter-op thread where still allowed)."""
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started
        pass


def machine_info() -> str:
    """One line: CPU model, logical CPUs, SIMD features that matter for int8 (AVX-512, VNNI), versions."""
    import platform

    import onnxruntime as ort

    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model in ("unknown CPU", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return (f"{model}, {os.cpu_count()} logical CPUs, {' '.join(simd) or 'no SIMD info'}; "
            f"torch {torch.__version__}, onnxruntime {ort.__version__}")


def ort_session(path: str, threads: int = 1, level: str = "all", optimized_path: str | None = None):
    """An ORT CPU session with ``threads`` intra-op threads and graph optimisation ``level``
    (``"disable"``, ``"basic"``, ``"extended"``, ``"all"``); ``optimized_path`` saves the optimised graph."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_runner(sess, *inputs: torch.Tensor | np.ndarray) -> Callable[[], list]:
    """A zero-argument callable that runs ``sess`` once on ``inputs`` (converted to numpy once)."""
    feeds = {i.name: np.ascontiguousarray(np.asarray(x)) for i, x in zip(sess.get_inputs(), inputs)}
    return lambda: sess.run(None, feeds)


def ort_logits(sess, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Run ``sess`` once per tensor in ``xs`` (a batch each) and stack the first outputs."""
    name = sess.get_inputs()[0].name
    return torch.cat([torch.from_numpy(sess.run(None, {name: x.numpy()})[0]) for x in xs])


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def interleaved_median_ms(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 3, rounds: int = 5) -> dict[str, float]:
    """Median ms per callable, timed in ``rounds`` interleaved rounds so that drift in machine
    speed (and cache state left by the previous candidate) hits every candidate alike; the starting
    candidate rotates each round. ``runs`` is the total number of timed calls per callable."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per_round = max(1, runs // rounds)
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for r in range(rounds):
        for name, fn in order[r % len(order):] + order[:r % len(order)]:  # rotate who goes first
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def export_fp32_onnx(model: torch.nn.Module, example_inputs: tuple, path: str, opset: int = 20) -> str:
    """Export ``model`` with the dynamo exporter to a single self-contained ``.onnx`` file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, tuple(example_inputs), path, dynamo=True, opset_version=opset,
                          external_data=False, verbose=False)
    return path


def onnx_size(path: str) -> int:
    """Bytes on disk of an ONNX model, including a side ``.data`` file if there is one."""
    size = os.path.getsize(path)
    for side in (path + ".data", os.path.splitext(path)[0] + ".data"):
        if os.path.exists(side):
            size += os.path.getsize(side)
            break
    return size


def op_counts(path: str) -> collections.Counter:
    """Histogram of node op types in an ONNX file (top graph only)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return collections.Counter(n.op_type for n in model.graph.node)


def optimized_op_counts(path: str, level: str = "extended") -> collections.Counter:
    """Histogram of op types after ORT's graph optimisation at ``level`` (shows what got fused)."""
    out = os.path.splitext(path)[0] + f".ort_{level}.onnx"
    ort_session(path, level=level, optimized_path=out)
    return op_counts(out)


def top1_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of rows whose argmax agrees between two logit tensors."""
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def fmt_counts(c: collections.Counter, keep: Sequence[str] | None = None) -> str:
    """``"QLinearConv:53 QGemm:1 ..."``, most common first (only ``keep`` op types if given)."""
    items = [(k, v) for k, v in c.most_common() if keep is None or k in keep]
    return " ".join(f"{k}:{v}" for k, v in items)
