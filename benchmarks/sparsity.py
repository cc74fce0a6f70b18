"""Sparsity benchmark: UniPTS vs magnitude pruning, Bi-Mask vs its baselines, sparse + quantized files.

    python benchmarks/sparsity.py                 # all CPU parts (digits CNN and a small ResNet; a few minutes)
    python benchmarks/sparsity.py --part unipts   # or bimask, files
    python benchmarks/sparsity.py --gpu           # 2:4 semi-structured linear vs dense on CUDA (GPU machine)

Data: scikit-learn digits (1,257 train / 540 test images of 8x8). Accuracy is top-1 on the test split.

* ``unipts``: a trained model pruned to 50/70/90% with 64 calibration images (no labels): one-shot
  uniform magnitude pruning, the same plus BatchNorm re-estimation on the 64 images, UniPTS without
  the search (uniform sparsity, dynamic sparse training with base-decayed KD), and full UniPTS.
* ``bimask``: 2:4 training from scratch: dense, forward-only N:M (SR-STE, dense backward),
  transposable mask (uni-directional, N:M both ways), naive bi-directional (no permutation) and
  Bi-Mask (best of G=100 permutations, refreshed every 100 steps); kept fraction |m_b|/|m_f| and
  the fraction of backward multiply-accumulates that the N:M input gradient saves.
* ``files``: qpack / ONNX sizes and ONNX Runtime latency of dense vs 2:4 quantized models.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import qgraph  # noqa: E402
from examples.models import DigitsCNN, accuracy, load_digits_data  # noqa: E402
from qgraph.bimask import backward_flops, finalize_bimask, kept_fractions, mask_energy, prepare_bimask  # noqa: E402
from qgraph.unipts import magnitude_prune, unipts  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (self.down(x) if self.down is not None else x))


class DigitsResNet(nn.Module):
    """A small ResNet for 1x8x8 digits: stem, three basic blocks (32, 64/2, 64), global pool, linear (~150k weights)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layer1 = BasicBlock(32, 32)
        self.layer2 = BasicBlock(32, 64, 2)
        self.layer3 = BasicBlock(64, 64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


MODELS = {"DigitsCNN": DigitsCNN, "DigitsResNet": DigitsResNet}
SKIP = {"DigitsCNN": ("stem.*", "fc2"), "DigitsResNet": ("stem.*", "fc")}  # Bi-Mask keeps the stem and the head dense


def train(model: nn.Module, data, epochs: int, seed: int, lr: float = 3e-3) -> nn.Module:
    """Adam + cosine, batch 64, cross-entropy: the digits recipe of examples.models."""
    x_tr, y_tr = data[0], data[1]
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x_tr) + 63) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def trained(name: str, data, seed: int = 0, epochs: int = 30) -> nn.Module:
    torch.manual_seed(seed)
    return train(MODELS[name](), data, epochs, seed)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


# --------------------------------------------------------------------------- UniPTS


def part_unipts(data, args) -> str:
    x_tr, _, x_te, y_te = data
    calib = x_tr[:args.calib]
    out = []
    for name in MODELS:
        rows = []
        for seed in range(args.seeds):
            model = trained(name, data, seed)
            dense = accuracy(model, x_te, y_te)
            for p in (0.5, 0.7, 0.9):
                t = time.time()
                mag = accuracy(magnitude_prune(model, p), x_te, y_te)
                mag_bn = accuracy(magnitude_prune(model, p, calib), x_te, y_te)
                plain = unipts(model, calib, p, search=False, epochs=args.epochs, seed=seed)
                full = unipts(model, calib, p, population=args.population, generations=args.generations, epochs=args.epochs, seed=seed)
                rows.append((seed, p, dense, mag, mag_bn, accuracy(plain.model, x_te, y_te), accuracy(full.model, x_te, y_te),
                             full.sparsity(), time.time() - t))
                print(f"  {name} seed {seed} {p:.0%}: " + " ".join(f"{v:.3f}" for v in rows[-1][2:]), flush=True)
        agg = []
        for p in (0.5, 0.7, 0.9):
            rs = [r for r in rows if r[1] == p]
            mean = [statistics.mean(r[i] for r in rs) for i in range(2, 9)]
            agg.append([f"{p:.0%}", pct(mean[0]), pct(mean[1]), pct(mean[2]), pct(mean[3]), pct(mean[4]), f"{100 * mean[5]:.1f}%",
                        f"{mean[6]:.0f}"])
        out.append(f"{name} (top-1 % on the 540 test images, mean of {args.seeds} seed(s); {args.calib} calibration images, no labels)\n\n"
                   + table(["target", "dense", "magnitude", "magnitude + BN re-est.", "UniPTS w/o search", "UniPTS",
                            "UniPTS actual sparsity", "s / sparsity level"], agg))
    return "\n\n".join(out)


# --------------------------------------------------------------------------- Bi-Mask


def part_bimask(data, args) -> str:
    x_te, y_te = data[2], data[3]
    out = []
    arms = [("dense", None), ("forward-only N:M (SR-STE)", "forward"), ("transposable (uni-directional)", "transposable"),
            ("bi-directional, no permutation", "naive"), ("Bi-Mask (G=100, I=100)", "bimask")]
    for name in MODELS:
        for pattern in args.patterns.split(","):
            n, m = (int(v) for v in pattern.split(":"))
            rows = []
            for label, mode in arms:
                accs, kept, energy, saved, secs = [], [], [], 0.0, []
                for seed in range(args.seeds):
                    torch.manual_seed(seed)
                    model = MODELS[name]()
                    if mode:
                        prepare_bimask(model, n, m, mode=mode, greedy=100, refresh=100, decay=2e-4, skip=SKIP[name], seed=seed)
                    t = time.time()
                    train(model, data, args.train_epochs, seed)
                    secs.append(time.time() - t)
                    if mode:
                        kept.append(statistics.mean(kept_fractions(model).values()))
                        energy.append([statistics.mean(v[i] for v in mask_energy(model).values()) for i in (0, 1)])
                        saved = backward_flops(model, x_te[:1])["saved"]
                        finalize_bimask(model)
                    accs.append(accuracy(model, x_te, y_te))
                    print(f"  {name} {pattern} {label} seed {seed}: {accs[-1]:.3f} ({secs[-1]:.1f}s)", flush=True)
                rows.append([label, pct(statistics.mean(accs)), f"{min(accs) * 100:.1f}–{max(accs) * 100:.1f}",
                             f"{statistics.mean(kept):.3f}" if kept else "-", *([f"{statistics.mean(e[i] for e in energy):.3f}" for i in (0, 1)] if energy else ["-", "-"]),
                             f"{saved:.1%}" if mode else "0%",
                             f"{statistics.mean(secs):.0f}"])
            out.append(f"{name}, {pattern} from scratch, {args.train_epochs} epochs, {args.seeds} seed(s) (stem and head dense)\n\n"
                       + table(["arm", "top-1 %", "range", "kept m_b/m_f", "forward energy", "backward energy", "backward MACs saved",
                                "train s"], rows))
    return "\n\n".join(out)


# --------------------------------------------------------------------------- files


def _bimask_trained(name: str, data, n: int, m: int, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]()
    prepare_bimask(model, n, m, skip=SKIP[name])
    return finalize_bimask(train(model, data, epochs, 0))


def part_files(data, args) -> str:
    from common import interleaved_median_ms, ort_runner, ort_session, single_thread

    single_thread()
    x_tr, _, x_te, y_te = data
    calib = [x_tr[i:i + 32] for i in range(0, 256, 32)]
    rows = []
    for name in MODELS:
        model = trained(name, data, 0)
        sparse_models = {"nm(2,4)": _bimask_trained(name, data, 2, 4, args.train_epochs),
                         "nm(1,4)": _bimask_trained(name, data, 1, 4, args.train_epochs)}
        sessions, mine = {}, []
        with tempfile.TemporaryDirectory() as tmp:
            for recipe in ("w8a8", "nm(2,4)+w8a8", "w4a8", "nm(2,4)+w4a8", "nm(1,4)+w4a8"):
                # the N:M recipe keeps the layers Bi-Mask kept dense (stem, head) dense too
                full = recipe.replace(",4)", f",4,skip={SKIP[name]!r})")
                qm = qgraph.quantize(model, x_te[:32], recipe=full, calib_data=calib)
                res = qm.export(os.path.join(tmp, recipe.replace("(", "_").replace(")", "").replace(",", "_")))
                sessions[recipe] = ort_runner(ort_session(res.onnx_path), x_te[:32])
                trained_acc = "-"
                if "+" in recipe:  # the same recipe on the model trained with Bi-Mask at that pattern
                    qs = qgraph.quantize(sparse_models[recipe.split("+")[0]], x_te[:32], recipe=full, calib_data=calib)
                    trained_acc = pct(accuracy(qs, x_te, y_te))
                mine.append([name, recipe, pct(accuracy(qm, x_te, y_te)), trained_acc, res.qpack_bytes, res.onnx_bytes])
            times = interleaved_median_ms(sessions, runs=50)
        base = {r[1]: r[4] for r in mine if "+" not in r[1]}
        for r in mine:
            r += [f"{base[r[1].split('+')[-1]] / r[4]:.2f}×", f"{times[r[1]]:.3f}"]
        rows += mine
    return ("dense vs N:M quantized models (stem and head dense): top-1 % one-shot on the dense-trained model and on a model\n"
            "trained with Bi-Mask at that pattern; qpack and ONNX bytes; ONNX Runtime CPU latency (batch 32, one thread, median ms)\n\n"
            + table(["model", "recipe", "top-1 % one-shot", "top-1 % Bi-Mask-trained", "qpack bytes", "ONNX bytes",
                     "qpack saving vs dense", "ORT ms"], rows))


# --------------------------------------------------------------------------- GPU


def part_gpu(args) -> str:
    """Time ``y = x Wᵀ`` with W 2:4 sparse through torch's semi-structured kernels vs dense (fp16, CUDA).

    Each timing brackets ``REPS`` back-to-back calls with CUDA events, so the host-side dispatch of
    the sparse tensor subclass is hidden behind GPU work as in a real network; both backends
    (cuSPARSELt and CUTLASS) are timed where this torch build has them.
    """
    if not torch.cuda.is_available():
        return "no CUDA device: the semi-structured 2:4 timing needs a GPU (run with --gpu on the GPU machine)"
    import torch.sparse as tsp

    from qgraph.sparsity import nm_mask

    reps = 20
    dev = torch.device("cuda")
    backends = [(n, getattr(tsp, c)) for n, c in (("cuSPARSELt", "SparseSemiStructuredTensorCUSPARSELT"),
                                                  ("CUTLASS", "SparseSemiStructuredTensorCUTLASS")) if hasattr(tsp, c)]

    def timed(fn) -> float:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        runs = []
        for _ in range(max(1, args.gpu_runs // reps)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            torch.cuda.synchronize()
            runs.append(start.elapsed_time(end) / reps)
        return statistics.median(runs)

    rows = []
    for n_out, k, batch in ((4096, 4096, 1024), (4096, 4096, 4096), (11008, 4096, 4096), (4096, 11008, 4096)):
        w = torch.randn(n_out, k, device=dev, dtype=torch.float16)
        w = w * nm_mask(w, 2, 4)
        x = torch.randn(batch, k, device=dev, dtype=torch.float16)
        dense = timed(lambda x=x, w=w: nn.functional.linear(x, w))
        row = [f"{batch}×{k} · ({n_out}×{k})ᵀ", f"{dense:.3f}"]
        for _name, cls in backends:
            try:
                ws = cls.from_dense(w)
                err = float((nn.functional.linear(x, w) - nn.functional.linear(x, ws)).abs().max())
                t = timed(lambda x=x, ws=ws: nn.functional.linear(x, ws))
                row.append(f"{t:.3f} ({dense / t:.2f}×, max |diff| {err:.2g})")
            except Exception as e:  # noqa: BLE001 - a backend this GPU/build lacks
                row.append(f"n/a: {type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''}")
        rows.append(row)
    return (f"2:4 semi-structured linear vs dense, fp16, {torch.cuda.get_device_name()}, torch {torch.__version__}; "
            f"median ms per call over blocks of {reps} calls\n\n"
            + table(["GEMM", "dense ms"] + [f"2:4 {n} ms (speed-up)" for n, _ in backends], rows))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("all", "unipts", "bimask", "files"), default="all")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--calib", type=int, default=64, help="calibration images for UniPTS / BN re-estimation")
    ap.add_argument("--epochs", type=int, default=100, help="UniPTS fine-tuning epochs over the calibration images")
    ap.add_argument("--population", type=int, default=25)
    ap.add_argument("--generations", type=int, default=25)
    ap.add_argument("--train-epochs", type=int, default=10, help="Bi-Mask training epochs")
    ap.add_argument("--patterns", default="2:4,1:4", help="N:M patterns for the Bi-Mask part")
    ap.add_argument("--gpu", action="store_true", help="only time the 2:4 semi-structured CUDA linear")
    ap.add_argument("--gpu-runs", type=int, default=100)
    args = ap.parse_args(argv)
    if args.gpu:
        print(part_gpu(args))
        return
    torch.set_num_threads(1)  # tiny batches: one thread is faster on a shared 2-core machine
    data = load_digits_data(0)
    parts = {"unipts": part_unipts, "bimask": part_bimask, "files": part_files}
    for name, fn in parts.items():
        if args.part in ("all", name):
            t = time.time()
            text = fn(data, args)
            print(f"\n## {name} ({time.time() - t:.0f} s)\n\n{text}\n", flush=True)


if __name__ == "__main__":
    main()
