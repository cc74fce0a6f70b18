"""QAT step time and peak memory: FP32 vs torch.ao FX QAT vs qgraph QAT, side by side in one run.

    python benchmarks/qat_speed.py                    # CUDA when present: ResNet-18 b128, ResNet-50 b64, MobileNetV2 b128, 224x224
    python benchmarks/qat_speed.py --compile          # every arm also under torch.compile (the fused path)
    python benchmarks/qat_speed.py --cpu-small        # the CPU version: the same models at 64x64, batch 8
    python benchmarks/qat_speed.py --models tiny --steps 3 --warmup 1   # seconds; what the test suite runs

One training step = zero_grad, forward, cross-entropy on random labels, backward, SGD(momentum) step.
Arms, all from the same randomly initialised torchvision model:

* ``fp32``: the float model (BatchNorm in training mode);
* ``torch.ao FX``: ``prepare_qat_fx`` with the x86 default QAT qconfig mapping (fused Conv-BN-ReLU
  modules, per-channel int8 weights, per-tensor uint8 activations, fused ATen fake-quant kernels);
* ``qgraph w8a8`` / ``qgraph w4a8``: ``qgraph.quantize(..., qat=True)`` — learnable LSQ scales
  for weights and activations, BatchNorm folded into the convs before training (qgraph's default);
* ``qgraph bitswitch``: ``bitswitch(8,6,4,2)`` trained at one precision (8 bits) per step,
  switchable BatchNorm kept.

Timing: median step time over ``--steps`` timed steps after ``--warmup`` steps, timed with CUDA
events on GPU and ``perf_counter`` on CPU; arms are timed in interleaved rounds so drift hits all of
them alike. Peak memory: ``torch.cuda.max_memory_allocated`` over a step (GPU only). Ratios are
against the FP32 arm in the same mode (eager vs eager, compiled vs compiled).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import qgraph  # noqa: E402

GPU_MODELS = {"resnet18": 128, "resnet50": 64, "mobilenet_v2": 128}  # the batch sizes
ARMS = ("fp32", "torch.ao FX", "qgraph w8a8", "qgraph w4a8", "qgraph bitswitch")


class Tiny(nn.Module):
    """A small conv net (conv-BN-ReLU x2, residual add, pooling, linear) for the test-suite run."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)) + h)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "tiny":
        return Tiny()
    import torchvision

    return getattr(torchvision.models, name)(num_classes=1000)


def _torch_ao_qat(model: nn.Module, x: torch.Tensor) -> nn.Module:
    import warnings

    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        return prepare_qat_fx(copy.deepcopy(model).train(), get_default_qat_qconfig_mapping("x86"), (x,))


def build_arms(model: nn.Module, x: torch.Tensor, arms: tuple[str, ...]) -> dict[str, nn.Module]:
    """Every arm as a trainable module on the CPU (moved to the device by the caller)."""
    calib = [x[: min(8, len(x))]]
    out: dict[str, nn.Module] = {}
    for arm in arms:
        if arm == "fp32":
            out[arm] = copy.deepcopy(model).train()
        elif arm == "torch.ao FX":
            out[arm] = _torch_ao_qat(model, x[:2])
        elif arm in ("qgraph w8a8", "qgraph w4a8"):
            out[arm] = qgraph.quantize(model, x[:2], arm.split()[1], calib_data=calib, qat=True).train()
        elif arm == "qgraph bitswitch":
            qm = qgraph.quantize(model, x[:2], "bitswitch(8,6,4,2)", calib_data=calib, qat=True)
            qm.set_bits(8)
            out[arm] = qm.train()
        else:
            raise ValueError(f"unknown arm {arm!r}; choose from {ARMS}")
    return out


@dataclass
class ArmTiming:
    times_ms: list[float] = field(default_factory=list)
    peak_mb: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)


def make_step(module: nn.Module, x: torch.Tensor, y: torch.Tensor, compile_: bool) -> Callable[[], None]:
    net = torch.compile(module) if compile_ else module
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    return step


def _time_block(step: Callable[[], None], n: int, cuda: bool) -> list[float]:
    times = []
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(n):
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_arms(steps: dict[str, Callable[[], None]], n_steps: int, warmup: int, cuda: bool, rounds: int = 5) -> dict[str, ArmTiming]:
    """Warm every arm up (recording peak memory on GPU), then time them in interleaved rounds."""
    res = {k: ArmTiming() for k in steps}
    for name, step in steps.items():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(max(1, warmup)):
            step()
        if cuda:
            torch.cuda.synchronize()
            res[name].peak_mb = torch.cuda.max_memory_allocated() / 2**20
    rounds = max(1, min(rounds, n_steps))
    per = [n_steps // rounds + (1 if r < n_steps % rounds else 0) for r in range(rounds)]
    for n in per:
        for name, step in steps.items():
            res[name].times_ms += _time_block(step, n, cuda)
    return res


def run(models: dict[str, int], size: int, n_steps: int, warmup: int, compile_modes: tuple[bool, ...],
        arms: tuple[str, ...] = ARMS, device: str | None = None) -> list[dict]:
    """Time every arm on every model; returns one row per (model, mode, arm)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(1)  # a second thread on a busy 2-core machine makes every step many times slower
    try:
        return _run(models, size, n_steps, warmup, compile_modes, arms, dev)
    finally:
        torch.set_num_threads(threads)


def _run(models, size, n_steps, warmup, compile_modes, arms, dev) -> list[dict]:
    cuda = dev.type == "cuda"
    rows = []
    for name, batch in models.items():
        model = build_model(name).eval()
        classes = model.fc.out_features if hasattr(model, "fc") else 1000
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 3, size, size, generator=g)
        y = torch.randint(0, classes, (batch,), generator=g)
        built = build_arms(model, x, arms)
        xd, yd = x.to(dev), y.to(dev)
        for compile_ in compile_modes:
            steps = {arm: make_step(copy.deepcopy(m).to(dev), xd, yd, compile_) for arm, m in built.items()}
            timings = time_arms(steps, n_steps, warmup, cuda)
            base = timings["fp32"].median if "fp32" in timings else None
            for arm, t in timings.items():
                rows.append({"model": name, "batch": batch, "mode": "compiled" if compile_ else "eager", "arm": arm,
                             "ms": t.median, "vs_fp32": t.median / base if base else None, "peak_mb": t.peak_mb})
            del steps
            if cuda:
                torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | batch | mode | arm | step ms | vs FP32 | vs torch.ao FX | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    ao = {(r["model"], r["mode"]): r["ms"] for r in rows if r["arm"] == "torch.ao FX"}
    for r in rows:
        vs_ao = r["ms"] / ao[(r["model"], r["mode"])] if (r["model"], r["mode"]) in ao else None
        lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['arm']} | {r['ms']:.2f} | "
                     f"{_ratio(r['vs_fp32'])} | {_ratio(vs_ao)} | "
                     f"{'' if r['peak_mb'] is None else round(r['peak_mb'])} |")
    return "\n".join(lines)


def _ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}×"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", help="model names (torchvision) or 'tiny'; default: the issue's three")
    p.add_argument("--batch", type=int, help="one batch size for every model (default: the issue's per model)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=30, help="timed steps per arm")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time every arm under torch.compile")
    p.add_argument("--only-compile", action="store_true", help="time only the compiled arms")
    p.add_argument("--arms", nargs="*", default=list(ARMS), help=f"subset of {ARMS}")
    p.add_argument("--cpu-small", action="store_true", help="CPU-sized run: 64x64 inputs, batch 8, 10 steps")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    a = p.parse_args(argv)
    if a.cpu_small:
        a.size, a.batch, a.steps, a.warmup, a.device = 64, a.batch or 8, 10, 3, a.device or "cpu"
    names = a.models or list(GPU_MODELS)
    models = {n: a.batch or GPU_MODELS.get(n, 8) for n in names}
    modes = (True,) if a.only_compile else ((False, True) if a.compile else (False,))
    rows = run(models, a.size, a.steps, a.warmup, modes, tuple(a.arms), a.device)
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name(0) if dev == "cuda" else f"CPU ({os.cpu_count()} logical CPUs, one torch thread)"
    print(f"\n### QAT training step, {a.size}x{a.size} inputs, {where}, torch {torch.__version__}; "
          f"median of {a.steps} steps after {a.warmup} warm-up\n")
    print(table(rows))


if __name__ == "__main__":
    main()
