"""Multi-task quantization on real data: task-specific scales (TSQ-MTC) and group gains (QSLAW).

Part 1, restoration (ALGORITHMS.md §1): a small IPT-like model (per-task head conv → shared body of
residual blocks → per-task tail conv, plus the input) co-trained in FP32 on ×2 super-resolution
(bicubic down/up, VDSR-style pre-upsampled input), denoising (σ = 30/255) and deraining (synthetic
streaks). Training patches come from scikit-learn's sample photos (china.jpg, flower.jpg), test
patches from matplotlib's grace_hopper.jpg. The shared body is quantized W4A4 (heads and tails stay
float, as the reference code keeps them), then fine-tuned (QAT) with:
  shared scales   — recipe tasks(all): one (scale, zero point) per quantizer, calibrated on all tasks;
  task scales     — recipe tasks(sr,denoise,derain): one pair per task, each from its own data;
  + SLLD          — task scales plus 0.01 · Σ(1 − SSIM) between float and quantized block outputs.
PSNR (dB) per task on the test patches; compression of the body's qpack vs FP32; ONNX per task
checked in ONNX Runtime by export.

Part 2, QSLAW (ALGORITHMS.md §2): a byte-level causal transformer trained in FP32 on English text
that ships with Python (pydoc_data.topics, the "original"/language data), then quantized weight-only
(4-bit asymmetric, groups of 128) and adapted to a new domain (the stdlib's own .py sources, the
"new"/multimodal analog) by learning only the per-group gains: RTN (fixed scales) vs gains learned
on the new data only vs gains with the warmup-then-mix schedule. Perplexity on held-out text of both.

    python benchmarks/multitask.py            # CPU, a few minutes on 2 cores
    python benchmarks/multitask.py --long     # longer training (uses CUDA when available)
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import qgraph  # noqa: E402
from qgraph.group_scales import MixedWarmup, gain_parameters  # noqa: E402

TASKS = ("sr", "denoise", "derain")


# ============================================================================ restoration data


def _images():
    from matplotlib import cbook
    from matplotlib import image as mpimg
    from sklearn.datasets import load_sample_images

    train = [np.asarray(im, dtype=np.float32) / 255.0 for im in load_sample_images().images]
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        test = np.asarray(mpimg.imread(f, format="jpg"), dtype=np.float32) / 255.0
    return train, test


def _patches(img: np.ndarray, size: int, n: int, rng: np.random.Generator) -> torch.Tensor:
    h, w, _ = img.shape
    ys, xs = rng.integers(0, h - size, n), rng.integers(0, w - size, n)
    return torch.from_numpy(np.stack([img[y:y + size, x:x + size] for y, x in zip(ys, xs)])).permute(0, 3, 1, 2).contiguous()


def _rain(shape, g: torch.Generator) -> torch.Tensor:
    """Synthetic rain: sparse drops smeared along one slanted direction per image."""
    b, _, h, w = shape
    drops = (torch.rand(b, 1, h, w, generator=g) < 0.02).float() * (0.5 + 0.5 * torch.rand(b, 1, h, w, generator=g))
    k = 9
    out = torch.zeros(b, 1, h, w)
    for i in range(b):
        slope = float(torch.rand(1, generator=g)) * 0.8 - 0.4
        ker = torch.zeros(k, k)
        for t in range(k):
            ker[t, int(round((k - 1) / 2 + slope * (t - (k - 1) / 2)))] = 1.0
        out[i] = F.conv2d(drops[i:i + 1], ker[None, None], padding=k // 2)[0]
    return out.clamp(0, 1) * 0.8


def degrade(task: str, hr: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if task == "sr":
        lr = F.interpolate(hr, scale_factor=0.5, mode="bicubic", align_corners=False, antialias=True)
        return F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    if task == "denoise":
        return hr + torch.randn(hr.shape, generator=g) * (30.0 / 255.0)
    return (hr + _rain(hr.shape, g)).clamp(0, 1)


class TaskData:
    def __init__(self, n_train: int, n_test: int, size: int, seed: int = 0) -> None:
        train, test = _images()
        rng = np.random.default_rng(seed)
        self.train = torch.cat([_patches(im, size, n_train // len(train), rng) for im in train])
        self.test = _patches(test, size, n_test, rng)
        g = torch.Generator().manual_seed(seed + 1)
        self.test_inputs = {t: degrade(t, self.test, g) for t in TASKS}
        self.g = torch.Generator().manual_seed(seed + 2)

    def batch(self, task: str, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.train), (n,), generator=self.g)
        hr = self.train[idx]
        if bool(torch.rand(1, generator=self.g) < 0.5):
            hr = hr.flip(-1)
        return degrade(task, hr, self.g).to(device), hr.to(device)


# ============================================================================ restoration model


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class Body(nn.Module):
    def __init__(self, c: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResBlock(c) for _ in range(blocks)])

    def forward(self, x):
        return self.blocks(x)


class MultiTaskNet(nn.Module):
    """IPT-like: per-task head → shared body → per-task tail, output = input + tail(...)."""

    def __init__(self, c: int = 32, blocks: int = 4) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({t: nn.Conv2d(3, c, 3, padding=1) for t in TASKS})
        self.body = Body(c, blocks)
        self.tails = nn.ModuleDict({t: nn.Conv2d(c, 3, 3, padding=1) for t in TASKS})

    def forward(self, x, task: str):
        return x + self.tails[task](self.body(F.relu(self.heads[task](x))))


def psnr(y: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float(((y.clamp(0, 1) - ref) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def evaluate(net: MultiTaskNet, data: TaskData, device, set_task=None) -> dict[str, float]:
    net.eval()
    out = {}
    for t in TASKS:
        if set_task is not None:
            set_task(t)
        ys = [net(x.to(device), t).cpu() for x in data.test_inputs[t].split(64)]
        out[t] = psnr(torch.cat(ys), data.test)
    return out


def train(net, data: TaskData, steps: int, lr: float, device, batch: int, set_task=None, slld=None, log: str = "") -> None:
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = random.Random(0)
    net.train()
    t0 = time.time()
    for _ in range(steps):
        task = rng.choice(TASKS)  # every mini-batch comes from one task
        if set_task is not None:
            set_task(task)
        x, y = data.batch(task, batch, device)
        loss = F.l1_loss(net(x, task), y)
        if slld is not None:
            loss = loss + slld.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    print(f"  {log}: {steps} steps in {time.time() - t0:.0f} s", flush=True)


def restoration(args, device) -> None:
    torch.manual_seed(0)
    data = TaskData(args.patches, 256, args.size)
    fp = MultiTaskNet(args.channels, args.blocks).to(device)
    train(fp, data, args.fp_steps, 1e-3, device, args.batch, log="FP32 co-training")
    rows = [("FP32", evaluate(fp, data, device))]

    def body_inputs(task, n=4):
        with torch.no_grad():
            return [F.relu(fp.heads[task](data.batch(task, args.batch, device)[0])) for _ in range(n)]

    calib = {t: body_inputs(t) for t in TASKS}
    example = calib["sr"][0][:1]
    arms = {
        "shared scales": ("tasks(all)", {"all": [b for t in TASKS for b in calib[t]]}, False),
        "task scales": (f"tasks({','.join(TASKS)})", calib, False),
        "task scales + SLLD": (f"tasks({','.join(TASKS)})", calib, True),
    }
    qbodies = {}
    for name, (recipe, cal, use_slld) in arms.items():
        net = MultiTaskNet(args.channels, args.blocks).to(device)
        net.load_state_dict(fp.state_dict())
        qb = qgraph.quantize(net.body.cpu(), example.cpu(), recipe, calib_data={k: [b.cpu() for b in v] for k, v in cal.items()})
        qb.to(device)
        net.body = qb
        set_task = qb.set_task if len(qb.tasks) > 1 else None
        if not use_slld:  # the SLLD arm starts from the same PTQ model as "task scales"
            rows.append((f"W4A4 {name}, PTQ", evaluate(net, data, device, set_task)))
        if use_slld:
            with qgraph.SLLD(qb, blocks=[f"blocks.{i}" for i in range(args.blocks)], weight=0.01) as slld:
                train(net, data, args.qat_steps, 2e-4, device, args.batch, set_task, slld, log=f"QAT {name}")
        else:
            train(net, data, args.qat_steps, 2e-4, device, args.batch, set_task, log=f"QAT {name}")
        rows.append((f"W4A4 {name}, QAT", evaluate(net, data, device, set_task)))
        qbodies[name] = qb

    print(f"\nRestoration PSNR (dB) on {len(data.test)} test patches {args.size}×{args.size} from grace_hopper.jpg "
          f"(body {args.blocks} ResBlocks × {args.channels} ch; heads/tails float)")
    print(f"{'model':34s} " + " ".join(f"{t:>8s}" for t in TASKS) + "     mean")
    for name, r in rows:
        print(f"{name:34s} " + " ".join(f"{r[t]:8.2f}" for t in TASKS) + f" {sum(r.values()) / len(r):8.2f}")

    qb = qbodies["task scales"].cpu()
    print("\nPer-task activation steps of the task-scale body (first quantizers):")
    for qname, q in list(qgraph.task_scales.task_quantizers(qb.qgraph).items())[:4]:
        print(f"  {qname:36s} " + "  ".join(f"{t} {float(q.task_qparams(t)[0]):.4f}" for t in TASKS))
    with tempfile.TemporaryDirectory() as d:
        fp32 = sum(p.numel() * 4 for p in fp.body.parameters())
        res = None
        for t in TASKS:
            res = qb.export(os.path.join(d, "body"), task=t)
            print(f"  ONNX for {t:8s}: ONNX Runtime vs qgraph max abs error {res.max_abs_error:.3g} (tolerance {res.tolerance:.3g})")
        whole = sum(p.numel() * 4 for p in fp.parameters())
        rest = whole - fp32
        print(f"\nqpack of the body (int4 weights shared, {len(TASKS)} scale sets): {res.qpack_bytes} bytes; "
              f"FP32 body {fp32} bytes → {fp32 / res.qpack_bytes:.2f}× smaller (paper, IPT 4-bit: 7.99×); "
              f"whole model with float heads/tails {whole / (res.qpack_bytes + rest):.2f}×")


# ============================================================================ QSLAW on text


def _text_corpora() -> tuple[bytes, bytes]:
    import argparse as _a
    import collections as _c
    import dataclasses as _d
    import inspect as _i
    import pydoc_data.topics as topics
    import typing as _t

    language = "\n\n".join(topics.topics[k] for k in sorted(topics.topics)).encode("utf-8", "replace")
    code = "\n\n".join(inspect.getsource(m) for m in (_a, _c, _d, _i, _t)).encode("utf-8", "replace")
    return language, code


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (f(h).reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(a)
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class TinyLM(nn.Module):
    def __init__(self, d: int = 128, layers: int = 2, heads: int = 4, ctx: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, d)
        self.pos = nn.Parameter(torch.zeros(1, ctx, d))
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 256)

    def forward(self, idx):
        return self.head(self.ln(self.blocks(self.emb(idx) + self.pos[:, : idx.shape[1]])))


def _split(data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n = int(len(t) * 0.9)
    return t[:n], t[n:]


def _lm_batches(tokens: torch.Tensor, ctx: int, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        i = torch.randint(0, len(tokens) - ctx - 1, (batch,), generator=g)
        yield torch.stack([tokens[j:j + ctx + 1] for j in i.tolist()])


def _lm_loss(model, chunk, device):
    chunk = chunk.to(device)
    logits = model(chunk[:, :-1])
    return F.cross_entropy(logits.reshape(-1, 256), chunk[:, 1:].reshape(-1))


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, ctx: int, device, max_windows: int = 400) -> float:
    model.eval()
    starts = list(range(0, len(tokens) - ctx - 1, ctx))[:max_windows]
    chunks = torch.stack([tokens[s:s + ctx + 1] for s in starts])
    total = sum(float(_lm_loss(model, c, device)) * len(c) for c in chunks.split(100))
    return math.exp(total / len(chunks))


def qslaw(args, device) -> None:
    torch.manual_seed(0)
    language, code = _text_corpora()
    (lang_tr, lang_te), (code_tr, code_te) = _split(language), _split(code)
    ctx = 64
    fp = TinyLM(args.lm_dim, args.lm_layers, ctx=ctx).to(device)
    opt = torch.optim.AdamW(fp.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.lm_steps)
    t0 = time.time()
    fp.train()
    for _, chunk in zip(range(args.lm_steps), _lm_batches(lang_tr, ctx, 32, 0)):
        loss = _lm_loss(fp, chunk, device)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    print(f"  FP32 LM on language text: {args.lm_steps} steps in {time.time() - t0:.0f} s", flush=True)
    rows = [("FP32", perplexity(fp, lang_te, ctx, device), perplexity(fp, code_te, ctx, device))]
    example = next(_lm_batches(lang_tr, ctx, 8, 1))[:, :-1]
    calib = [c[:, :-1] for _, c in zip(range(4), _lm_batches(lang_tr, ctx, 16, 2))]

    for bits in args.lm_bits:
        recipe = f"qslaw(bits={bits}, group_size=128)"

        def fresh(recipe=recipe):
            qm = qgraph.quantize(fp.cpu().eval(), example, recipe, calib_data=calib)
            fp.to(device)
            return qm.to(device)

        rtn = fresh()
        rows.append((f"W{bits} g128 RTN (fixed scales)", perplexity(rtn, lang_te, ctx, device), perplexity(rtn, code_te, ctx, device)))
        schedules = {
            "gains on new data only": MixedWarmup(_lm_batches(code_tr, ctx, 32, 3), _lm_batches(lang_tr, ctx, 32, 4),
                                                  args.gain_steps, warmup_steps=args.gain_steps),
            "gains, warmup then 1:1 mix": MixedWarmup(_lm_batches(code_tr, ctx, 32, 3), _lm_batches(lang_tr, ctx, 32, 4),
                                                      args.gain_steps, warmup_steps=args.gain_steps // 3, mix=1.0),
        }
        for name, schedule in schedules.items():
            qm = fresh()
            qm.train()
            gains = gain_parameters(qm)
            opt = torch.optim.Adam(gains, lr=2e-3)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.gain_steps)
            t0 = time.time()
            for _, chunk in schedule:
                loss = _lm_loss(qm, chunk, device)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            qm.eval()
            rows.append((f"W{bits} g128 {name}", perplexity(qm, lang_te, ctx, device), perplexity(qm, code_te, ctx, device)))
            print(f"  {name} (W{bits}): {args.gain_steps} steps in {time.time() - t0:.0f} s", flush=True)
        if bits == args.lm_bits[0]:
            with tempfile.TemporaryDirectory() as d:
                qm_cpu = qm.cpu()
                res = qm_cpu.export(os.path.join(d, "lm"), formats=("qpack",))
                loaded = qgraph.load(res.qpack_path, TinyLM(args.lm_dim, args.lm_layers, ctx=ctx), example_inputs=example)
                same = torch.equal(loaded(example), qm_cpu(example))
                fp32 = sum(p.numel() * 4 for p in fp.parameters())
                print(f"  gains folded at export: qpack {res.qpack_bytes} bytes (FP32 {fp32}), a plain W{bits} g128 file; "
                      f"reloaded model equals the trained one bit for bit: {same}")
                qm.to(device)

    print(f"\nQSLAW on a byte-level causal transformer (d={args.lm_dim}, {args.lm_layers} layers), perplexity on held-out text")
    print(f"{'model':40s} {'language (pydoc topics)':>24s} {'new: stdlib .py code':>22s}")
    for name, a, b in rows:
        print(f"{name:40s} {a:24.3f} {b:22.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long", "--gpu", action="store_true", help="longer training (CUDA when available)")
    p.add_argument("--only", choices=("restoration", "qslaw"))
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.long:
        args.patches, args.size, args.batch, args.channels, args.blocks = 4000, 48, 32, 64, 6
        args.fp_steps, args.qat_steps = 6000, 2000
        args.lm_dim, args.lm_layers, args.lm_steps, args.gain_steps, args.lm_bits = 256, 4, 6000, 1500, (4, 3)
    else:
        torch.set_num_threads(2)
        args.patches, args.size, args.batch, args.channels, args.blocks = 1000, 24, 16, 24, 3
        args.fp_steps, args.qat_steps = 700, 200
        args.lm_dim, args.lm_layers, args.lm_steps, args.gain_steps, args.lm_bits = 128, 2, 400, 120, (4, 3)
    print(f"device {device}, torch {torch.__version__}, {'--long' if args.long else 'CPU-size'} run", flush=True)
    t0 = time.time()
    if args.only in (None, "restoration"):
        restoration(args, device)
    if args.only in (None, "qslaw"):
        qslaw(args, device)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
