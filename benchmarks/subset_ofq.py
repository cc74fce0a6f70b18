"""DFSQ on a tiny ×2 super-resolution network, and OFQ on a tiny ViT on digits (ALGORITHMS.md §4, §7).

    PYTHONPATH=$PWD python benchmarks/subset_ofq.py            # both parts, a few CPU minutes
    PYTHONPATH=$PWD python benchmarks/subset_ofq.py --part dfsq --quick

DFSQ: a tiny EDSR-like ×2 network (head conv, 4 residual blocks of conv-ReLU-conv, body conv,
conv + PixelShuffle upsampler, a bicubic skip so it trains in a minute) trained on random 48×48
crops of scikit-learn's ``china.jpg``; Y-channel PSNR on the held-out ``flower.jpg`` (centre crop),
calibrated on 32 training crops, no fine-tuning. Arms: FP32; uniform PTQ (per-channel min/max
weights, static per-tensor min/max activations, qgraph's standard quantizers); per-channel dynamic
normalisation with a uniform grid (ablation: DFSQ's normalisation without subset selection); DFSQ.
Only the residual blocks' convs are quantized in every arm (as DFSQ does for EDSR).
Then point-selection time, K-means vs exhaustive, as the universal set grows.

OFQ: a tiny ViT (2×2 patches of the 8×8 digits → 16 tokens, dim 32, 4 heads, 2 blocks) trained FP,
then ``qgraph.quantize(fp, x, "ofq(bits=b, ...)", calib, qat=True)`` and QAT at W{3,2}A{3,2} with KD
from the FP model: LSQ weights (``method=lsq, qkr=False``); StatsQ (``qkr=False``); StatsQ + QKR;
StatsQ + QKR + CGA (BR 0.005, lr 1e-5), with a control of the same extra epochs without CGA; two
seeds. Oscillation ratio: weights whose oscillation EMA (momentum 0.01) exceeds 0.005 at the end of
each phase.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import qgraph  # noqa: E402
from qgraph.granularity import PerChannel, PerTensor  # noqa: E402
from qgraph.ofq_train import CGA, OscillationTracker  # noqa: E402
from qgraph.qspec import QSpec  # noqa: E402
from qgraph.recipes import Recipe  # noqa: E402
from qgraph.subset import codebook_sse, exhaustive_select, kmeans_select, subset_quantizers, universal_set  # noqa: E402

# ============================================================================ DFSQ


class TinyEDSR(nn.Module):
    def __init__(self, c: int = 32, blocks: int = 4) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.ModuleList(nn.ModuleList([nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)]) for _ in range(blocks))
        self.body_end = nn.Conv2d(c, c, 3, padding=1)
        self.up = nn.Conv2d(c, 3 * 4, 3, padding=1)

    def forward(self, lr):
        h = self.head(lr)
        r = h
        for a, b in self.body:
            r = r + b(torch.relu(a(r)))
        h = h + self.body_end(r)
        base = F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False)
        return base + F.pixel_shuffle(self.up(h), 2)


def _images():
    from sklearn.datasets import load_sample_images

    imgs = load_sample_images().images  # china.jpg, flower.jpg: 427×640×3 uint8
    return [torch.from_numpy(np.asarray(i, dtype=np.float32) / 255).permute(2, 0, 1) for i in imgs]


def _downscale(hr: torch.Tensor) -> torch.Tensor:
    return F.interpolate(hr, scale_factor=0.5, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def _crops(img: torch.Tensor, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    _, h, w = img.shape
    ys = torch.randint(0, h - size + 1, (n,), generator=g)
    xs = torch.randint(0, w - size + 1, (n,), generator=g)
    return torch.stack([img[:, y:y + size, x:x + size] for y, x in zip(ys.tolist(), xs.tolist())])


def _psnr_y(sr: torch.Tensor, hr: torch.Tensor, border: int = 2) -> float:
    w = torch.tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1) / 255
    y1, y2 = (sr.clamp(0, 1) * w).sum(1), (hr * w).sum(1)
    d = (y1 - y2)[..., border:-border, border:-border]
    return float(10 * torch.log10(1 / d.square().mean()))


def _uniform_recipe(bits: int) -> Recipe:
    w = QSpec(bits=bits, symmetric=False, signed=True, granularity=PerChannel(0))
    a = QSpec(bits=bits, symmetric=False, signed=False, granularity=PerTensor())
    return Recipe(f"uniform-w{bits}a{bits}", w, a, kinds=("conv",))


FP_LAYERS = ["head", "body_end", "up"]


def _uniform_codebooks(qm, bits: int) -> None:
    """Ablation: DFSQ's per-channel dynamic normalisation with a uniform grid instead of subset points."""
    for q in subset_quantizers(qm.qgraph).values():
        c = q.codebook.shape[0]
        k = 2**bits
        grid = torch.arange(k) / (k - 1) if q.post_relu else torch.arange(-(k // 2), k // 2) / (k // 2)
        q.set_codebook(grid.float().expand(c, k).contiguous())


def run_dfsq(quick: bool) -> list[str]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train_img, test_img = _images()
    model = TinyEDSR()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = 60 if quick else 200
    t0 = time.time()
    for i in range(steps):
        hr = _crops(train_img, 16, 48, g)
        hr = torch.where(torch.rand(16, 1, 1, 1, generator=g) < 0.5, hr, hr.flip(-1))
        loss = F.l1_loss(model(_downscale(hr)), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == steps * 2 // 3:
            for pg in opt.param_groups:
                pg["lr"] = 2e-4
    train_s = time.time() - t0
    model.eval()
    _, h, w = test_img.shape
    hr = test_img[:, h // 2 - 96:h // 2 + 96, w // 2 - 128:w // 2 + 128].unsqueeze(0)
    lr = _downscale(hr)
    calib = [_downscale(_crops(train_img, 16, 48, g)) for _ in range(2)]
    with torch.no_grad():
        fp = _psnr_y(model(lr), hr)
        bicubic = _psnr_y(F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False), hr)
    rows = [f"DFSQ: tiny EDSR ×2 (32 ch, 4 blocks) trained {steps} steps ({train_s:.0f} s) on china.jpg crops; "
            f"Y-PSNR on flower.jpg centre 192×256; calibration 32 crops 24×24 LR",
            "", "| arm | 8-bit | 6-bit | 4-bit |", "| --- | --- | --- | --- |",
            f"| bicubic | {bicubic:.2f} | {bicubic:.2f} | {bicubic:.2f} |", f"| FP32 | {fp:.2f} | {fp:.2f} | {fp:.2f} |"]
    results = {"uniform PTQ (static per-tensor acts)": [], "dynamic norm + uniform grid": [], "DFSQ": []}
    for bits in (8, 6, 4):
        uq = qgraph.quantize(model, (lr,), recipe=_uniform_recipe(bits), calib_data=calib, skip=FP_LAYERS)
        dq = qgraph.quantize(model, (lr,), recipe=f"subset(bits={bits}, keep_first_last=False)", calib_data=calib, skip=FP_LAYERS)
        with torch.no_grad():
            results["uniform PTQ (static per-tensor acts)"].append(_psnr_y(uq(lr), hr))
            results["DFSQ"].append(_psnr_y(dq(lr), hr))
            _uniform_codebooks(dq, bits)
            results["dynamic norm + uniform grid"].append(_psnr_y(dq(lr), hr))
    for arm, vals in results.items():
        rows.append(f"| {arm} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    rows += ["", *selection_timing(quick)]
    return rows


def selection_timing(quick: bool) -> list[str]:
    """Fast (K-means) vs exhaustive point selection, 4 points, as the universal set grows."""
    rng = np.random.default_rng(0)
    values = np.clip(rng.laplace(0, 0.2, 2000), -1, 1)
    full = universal_set()
    rows = ["Point selection (4 points incl. 0, 2000 Laplace samples), universal set = every j-th value of U:", "",
            "| set size | subsets tried | exhaustive s | K-means s | SSE K-means / exhaustive |", "| --- | --- | --- | --- | --- |"]
    sizes = (8, 16, 32) if quick else (8, 16, 32, 48, 64)
    for size in (*sizes, len(full)):
        uni = np.unique(np.concatenate([[0.0], full[np.linspace(0, len(full) - 1, size).round().astype(int)]])).astype(np.float32)
        t0 = time.perf_counter()
        fast = kmeans_select(values, 4, uni)
        t_fast = time.perf_counter() - t0
        combos = math.comb(int((uni != 0).sum()), 3)
        if size == len(full):
            rows.append(f"| {len(uni)} | {combos:,} | (not run) | {t_fast:.3f} | – |")
            continue
        t0 = time.perf_counter()
        ref = exhaustive_select(values, 4, uni)
        t_ex = time.perf_counter() - t0
        rows.append(f"| {len(uni)} | {combos:,} | {t_ex:.2f} | {t_fast:.3f} | {codebook_sse(values, fast) / codebook_sse(values, ref):.3f} |")
    return rows


# ============================================================================ OFQ


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class _Attention(nn.Module):
    """timm-style attention (qkv / proj / num_heads): what QKR pattern-matches."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (c // self.num_heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, img):  # [B, 1, 8, 8] → 16 tokens of 2×2 patches
        p = img.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        x = self.patch_embed(p) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(1))


BATCH = 128


def _accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    model.train()
    return acc


def _train(model, x, y, epochs, lr, teacher=None, tracker=None, g=None, wd=0.05, schedule=True):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * math.ceil(len(x) / BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.02) if schedule else None
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            out = model(x[idx])
            loss = F.cross_entropy(out, y[idx])
            if teacher is not None:
                with torch.no_grad():
                    t = teacher(x[idx])
                loss = loss + F.kl_div(F.log_softmax(out, 1), F.softmax(t, 1), reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if tracker is not None:
                tracker.step()
    return opt


def run_ofq(quick: bool, seeds: int = 2) -> list[str]:
    from examples.models import load_digits_data

    x_tr, y_tr, x_te, y_te = load_digits_data()
    t0 = time.time()
    fp_epochs, epochs, cga_epochs = (2, 1, 1) if quick else (20, 4, 1)
    seeds = 1 if quick else seeds
    calib = [x_tr[i:i + BATCH] for i in range(0, 2 * BATCH, BATCH)]
    arms = [("LSQ", "method=lsq, qkr=False"), ("StatsQ", "qkr=False"), ("StatsQ + QKR", "")]
    results: dict[tuple, list] = {}
    fp_accs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        fp = TinyViT(dim=DIM, heads=4, depth=DEPTH)
        _train(fp, x_tr, y_tr, fp_epochs, 3e-3, g=g)
        fp.eval()
        fp_accs.append(_accuracy(fp, x_te, y_te))
        fp.eval()
        for bits in (3, 2):
            for name, opts in arms:
                torch.manual_seed(100 + seed)
                recipe = f"ofq(bits={bits}{', ' + opts if opts else ''})"
                qm = qgraph.quantize(fp, x_tr[:BATCH], recipe, calib, qat=True)
                tracker = OscillationTracker(qm)
                opt = torch.optim.AdamW(qm.parameters(), lr=1e-3, weight_decay=0.05)
                _train_with(opt, qm, x_tr, y_tr, epochs, fp, tracker, g, cosine=True)
                results.setdefault((bits, name), []).append(_ofq_stats(qm, tracker, x_te, y_te))
                if name != "StatsQ + QKR":
                    continue
                ctrl = copy.deepcopy(qm)  # control: the same extra epochs at the same lr, without CGA
                tracker = OscillationTracker(ctrl)
                _train_with(torch.optim.AdamW(ctrl.parameters(), lr=1e-5, weight_decay=0.05), ctrl, x_tr, y_tr, cga_epochs, fp,
                            tracker, g)
                results.setdefault((bits, f"StatsQ + QKR, {cga_epochs} more epochs at lr 1e-5 (no CGA)"), []).append(
                    _ofq_stats(ctrl, tracker, x_te, y_te))
                tracker = OscillationTracker(qm)
                opt = torch.optim.AdamW(qm.parameters(), lr=1e-5, weight_decay=0.05)
                cga = CGA(qm, boundary_range=0.005).attach(opt)
                _train_with(opt, qm, x_tr, y_tr, cga_epochs, fp, tracker, g)
                cga.detach()
                results.setdefault((bits, "StatsQ + QKR + CGA"), []).append(
                    _ofq_stats(qm, tracker, x_te, y_te) + (cga.frozen_ratio(),))
    n_params = sum(p.numel() for p in TinyViT(dim=DIM, heads=4, depth=DEPTH).parameters())
    rows = [f"OFQ: tiny ViT (16 tokens, dim {DIM}, 4 heads, {DEPTH} blocks, {n_params:,} parameters) on digits; FP32 trained "
            f"{fp_epochs} epochs: " + ", ".join(f"{a:.1%}" for a in fp_accs) + f" test accuracy (seeds 0..{seeds - 1}). "
            f"qgraph.quantize(fp, x, 'ofq(bits=b, ...)', calib, qat=True); QAT {epochs} epochs (batch {BATCH}) with KD from FP, "
            f"AdamW lr 1e-3 cosine; patch embed and head 8-bit LSQ; CGA {cga_epochs} more epochs, lr 1e-5 constant, BR 0.005. "
            f"Mean over {seeds} seeds (per-seed values in brackets).", "",
            "| bits | arm | test acc | oscillating weights (EMA > 0.005) | oscillations per weight per 100 steps |",
            "| --- | --- | --- | --- | --- |"]
    for (bits, name), runs in results.items():
        acc, ratio, per100 = (np.array([r[i] for r in runs]) for i in range(3))
        label = name + (f" ({np.mean([r[3] for r in runs]):.1%} frozen)" if len(runs[0]) > 3 else "")
        rows.append(f"| W{bits}A{bits} | {label} | {acc.mean():.1%} [{', '.join(f'{a:.1%}' for a in acc)}] | "
                    f"{ratio.mean():.2%} [{', '.join(f'{r:.2%}' for r in ratio)}] | {per100.mean():.3f} |")
    rows.append("")
    rows.append(f"(OFQ part: {time.time() - t0:.0f} s)")
    return rows


DIM, DEPTH = 32, 2


def _train_with(opt, model, x, y, epochs, teacher, tracker, g, cosine: bool = False):
    steps = epochs * math.ceil(len(x) / BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=opt.param_groups[0]["lr"] * 0.02) if cosine else None
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            out = model(x[idx])
            with torch.no_grad():
                t = teacher(x[idx])
            loss = F.cross_entropy(out, y[idx]) + F.kl_div(F.log_softmax(out, 1), F.softmax(t, 1), reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            tracker.step()


def _ofq_stats(model, tracker, x_te, y_te) -> tuple:
    per_100 = 100 * tracker.total() / max(1, tracker.steps) / max(1, sum(c.numel() for c in tracker.counts.values()))
    return _accuracy(model, x_te, y_te), tracker.ratio(0.005), per_100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("dfsq", "ofq", "both"), default="both")
    ap.add_argument("--quick", action="store_true", help="a smoke run (minutes → seconds; figures meaningless)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0 = time.time()
    if args.part in ("dfsq", "both"):
        print("\n".join(run_dfsq(args.quick)), flush=True)
        print(flush=True)
    if args.part in ("ofq", "both"):
        print("\n".join(run_ofq(args.quick)), flush=True)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
