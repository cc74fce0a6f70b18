"""Bit switching on digits (CPU): one double-rounding model at 8/6/4/2 bits vs the alternatives.

    python benchmarks/bitswitch.py                 # digits, CPU, a few minutes
    python benchmarks/bitswitch.py --seeds 0 1 2   # mean over seeds
    python benchmarks/bitswitch.py --gpu-cnn       # step time, joint multi-precision vs FP training (CUDA if present)

Digits arms (all start from the same FP-trained DigitsCNN, first and last layers float, the same
epochs, Adam, cosine schedule; accuracy on the 540-image test split):

* (a) joint: recipe ``bitswitch(8,6,4,2)``, one model trained jointly (per-bit steps), with / without ALRS;
* (b) separate: one model per precision, ``bitswitch(b)`` (its own b-bit grid and scales), trained alone;
* (c) shared-scale baseline: jointly trained like (a) but the low bit widths round the float weights
  straight onto the shared scale's coarser grids (``rounding="direct"``, needs FP weights stored);
* HASB: the joint model (a) further trained as a mixed-precision supernet with Hessian-aware
  roulette sampling (and, as the ablation, uniform sampling), then bit maps searched for an average
  of 4 and 3 bits (over parameters) with no retraining; compared with uniform 4 / 2 bits, random bit
  maps of the same budget, and the same searched maps on the model (a) without HASB training.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import qgraph  # noqa: E402
from examples.models import accuracy, calib_batches, load_digits_data, train_digits_cnn  # noqa: E402
from qgraph.bitswitch_train import JointTrainer, progress  # noqa: E402
from qgraph.hasb import RouletteSampler, bit_map_cost, hessian_trace, layer_weights, search_bits  # noqa: E402

BITS = (8, 6, 4, 2)


def _accs(qm, x, y, bits=BITS) -> dict:
    out = {}
    for b in bits:
        qm.set_bits(b)
        out[b] = accuracy(qm, x, y)
    qm.set_bits(max(bits))
    return out


def _joint(fp, data, recipe, epochs, lr, alrs, seed):
    x_tr, y_tr, x_te, _ = data
    qm = qgraph.quantize(fp, x_te[:32], recipe=recipe, calib_data=calib_batches(x_tr))
    JointTrainer(qm, lr=lr, alrs=alrs).fit(x_tr, y_tr, epochs=epochs, seed=seed, progress_bar=False)
    return qm.eval()


def _random_maps(qm, budget: float, n: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    layers = list(layer_weights(qm))
    found, tries = [], 0
    while len(found) < n and tries < 10000:
        tries += 1
        m = {layer: BITS[int(torch.randint(0, len(BITS), (), generator=gen))] for layer in layers}
        if budget - 1.0 < bit_map_cost(qm, m) <= budget:
            found.append(m)
    return found


def run_digits(seed: int, epochs: int, hasb_epochs: int, lr: float) -> dict:
    data = load_digits_data(0)
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    fp = train_digits_cnn(epochs=30, seed=seed)
    rows: dict[str, dict] = {"FP32": {b: accuracy(fp, x_te, y_te) for b in BITS}}
    t0 = time.perf_counter()
    joint = _joint(fp, data, "bitswitch(8,6,4,2)", epochs, lr, "fixed", seed)
    rows["(a) joint double rounding + ALRS"] = _accs(joint, x_te, y_te)
    times = {"joint": time.perf_counter() - t0}
    rows["(a) joint double rounding, no ALRS"] = _accs(_joint(fp, data, "bitswitch(8,6,4,2)", epochs, lr, "off", seed), x_te, y_te)
    rows["(a) joint double rounding + ALRS (grad)"] = _accs(_joint(fp, data, "bitswitch(8,6,4,2)", epochs, lr, "grad", seed), x_te, y_te)
    t0 = time.perf_counter()
    sep = {}
    for b in BITS:
        qm = _joint(fp, data, f"bitswitch({b})", epochs, lr, "off", seed)
        sep[b] = accuracy(qm, x_te, y_te)
    times["separate"] = time.perf_counter() - t0
    rows["(b) separate QAT per precision"] = sep
    rows["(c) shared scale, direct rounding + ALRS"] = _accs(_joint(fp, data, "bitswitch(rounding='direct')", epochs, lr, "fixed", seed), x_te, y_te)
    rows["(c) shared scale, direct rounding, no ALRS"] = _accs(_joint(fp, data, "bitswitch(rounding='direct')", epochs, lr, "off", seed), x_te, y_te)

    # HASB mixed precision, starting from the joint model
    traces = hessian_trace(joint, [(x_tr[i:i + 256], y_tr[i:i + 256]) for i in range(0, 1024, 256)], samples=7, seed=seed)
    mixed: dict[str, dict] = {}
    supernets = {}
    for name, uniform in (("HASB roulette", False), ("uniform sampling", True)):
        net = copy.deepcopy(joint)
        sampler = RouletteSampler(traces, BITS, epochs=hasb_epochs, seed=seed, uniform=uniform)
        JointTrainer(net, lr=lr, sampler=sampler).fit(x_tr, y_tr, epochs=hasb_epochs, seed=seed, progress_bar=False)
        supernets[name] = net.eval()
    for budget in (4, 3):
        bit_map = search_bits(supernets["HASB roulette"], traces, budget)
        avg = bit_map_cost(joint, bit_map)
        row = {"bit map": ",".join(str(bit_map[k]) for k in bit_map), "avg bits": avg}
        for name, net in (*supernets.items(), ("(a) without HASB training", joint)):
            net.set_bits(bit_map)
            row[name] = accuracy(net, x_te, y_te)
            net.set_bits(8)
        randoms = _random_maps(joint, budget, 5, seed)
        accs = []
        for m in randoms:
            supernets["HASB roulette"].set_bits(m)
            accs.append(accuracy(supernets["HASB roulette"], x_te, y_te))
        supernets["HASB roulette"].set_bits(8)
        row["random maps (HASB net)"] = statistics.mean(accs) if accs else float("nan")
        mixed[f"avg {budget} bits (searched)"] = row
    for b in (4, 2):
        row = {"bit map": "uniform", "avg bits": float(b)}
        for name, net in (*supernets.items(), ("(a) without HASB training", joint)):
            net.set_bits(b)
            row[name] = accuracy(net, x_te, y_te)
            net.set_bits(8)
        row["random maps (HASB net)"] = float("nan")
        mixed[f"uniform {b} bits"] = row
    return {"rows": rows, "mixed": mixed, "traces": traces, "times": times}


def _fmt(values: list[float]) -> str:
    if not values or any(v != v for v in values):
        return "-"
    m = statistics.mean(values) * 100
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ± {statistics.stdev(values) * 100:.2f}"


def print_digits(results: list[dict], args) -> None:
    print(f"\n### Digits, DigitsCNN, {args.epochs} epochs of QAT per arm (HASB: +{args.hasb_epochs}), "
          f"lr {args.lr}, seeds {args.seeds}; test accuracy % (mean ± sd over seeds)\n")
    print("| arm | " + " | ".join(f"w{b}a{b}" for b in BITS) + " |")
    print("|---|" + "---|" * len(BITS))
    for arm in results[0]["rows"]:
        print(f"| {arm} | " + " | ".join(_fmt([r["rows"][arm][b] for r in results]) for b in BITS) + " |")
    cols = [c for c in results[0]["mixed"]["avg 4 bits (searched)"] if c not in ("bit map", "avg bits")]
    print("\n| mixed precision (seed " + str(args.seeds[0]) + " bit map) | avg bits | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for key, row in results[0]["mixed"].items():
        label = f"{key}: {row['bit map']}" if row["bit map"] != "uniform" else key
        print(f"| {label} | {statistics.mean(r['mixed'][key]['avg bits'] for r in results):.2f} | "
              + " | ".join(_fmt([r["mixed"][key][c] for r in results]) for c in cols) + " |")
    tr = results[0]["traces"]
    print("\nHessian trace / parameter (seed " + str(args.seeds[0]) + "): " + ", ".join(f"{k} {v:.2e}" for k, v in tr.items()))
    t = results[0]["times"]
    print(f"wall time seed {args.seeds[0]}: joint (4 precisions) {t['joint']:.1f} s, separate (4 runs) {t['separate']:.1f} s")


# ------------------------------------------------------------------------------------------ GPU part


def gpu_cnn(args) -> None:
    """Step time of joint multi-precision training (4 per-bit steps per batch) vs FP training on a
    torchvision ResNet-18 with random 32x32 inputs (CIFAR-sized), timed with CUDA events."""
    import torchvision

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    fp = torchvision.models.resnet18(num_classes=10).to(dev)
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    qm = qgraph.quantize(fp.cpu().eval(), x[:8].cpu(), recipe="bitswitch(8,6,4,2)", calib_data=[x[:32].cpu()]).to(dev)
    fp = fp.to(dev)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(fp.parameters(), lr=5e-4)

    def fp_step():
        fp.train()
        opt.zero_grad(set_to_none=True)
        loss_fn(fp(x), y).backward()
        opt.step()

    trainer = JointTrainer(qm, lr=5e-4)
    single = JointTrainer(qm, lr=5e-4, bits=(4,))

    def timed(fn, iters):
        for _ in range(args.warmup):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times = []
            for _ in progress(range(iters), desc="steps", leave=False):
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
        else:
            times = []
            for _ in progress(range(iters), desc="steps", leave=False):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    rows = [("FP32 training step", timed(fp_step, args.iters)),
            ("bit-switch, one precision (w4a4) step", timed(lambda: single.step(x, y), args.iters)),
            ("bit-switch, joint 8/6/4/2 step (4 fwd/bwd/updates)", timed(lambda: trainer.step(x, y), args.iters))]
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU"
    print(f"\n### ResNet-18 (torchvision, 10 classes), random 3x32x32 inputs, batch {args.batch}, {name}, "
          f"torch {torch.__version__}; median of {args.iters} steps after {args.warmup} warm-up\n")
    print("| step | ms | vs FP32 |")
    print("|---|---|---|")
    for label, ms in rows:
        print(f"| {label} | {ms:.2f} | {ms / rows[0][1]:.2f}× |")
    print(f"\njoint step vs 4 separate single-precision steps: {rows[2][1] / (4 * rows[1][1]):.2f}×")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--hasb-epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gpu-cnn", action="store_true", help="ResNet-18 step times instead of the digits arms")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    if args.gpu_cnn:
        gpu_cnn(args)
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = [run_digits(s, args.epochs, args.hasb_epochs, args.lr) for s in progress(args.seeds, desc="seeds")]
    print_digits(results, args)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
