"""How a zoo model's float outputs react to input noise, per BatchNorm warm-up mode (``zoo_models.bn_warmup``).

For each model and mode: the input-dependent share of the logits (``sensitivity``: ‖y − batch mean‖ / ‖y‖),
the logits' standard deviation, and what 1% white noise on the inputs (40 dB SQNR) does to the float
model's outputs (SQNR) and top-1. A trained network keeps such noise near 40 dB and its top-1; a
network that turns it into 10 dB is chaotic, and no quantizer can keep its top-1.

    PYTHONPATH=. .venv/bin/python benchmarks/zoo_noise_gain.py resnet18 regnet_x_400mf densenet201
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.zoo_models import WARMUP_MODES, bn_warmup, zoo
from benchmarks.zoo_worker import first_tensor, float_info
from qgraph.summary import sqnr_db


def noise_gain(name: str, mode: str, batches: int = 3, rel_noise: float = 1e-2) -> dict:
    e = zoo()[name]
    model, make = e.build()
    bn_warmup(model, make, mode)
    g = torch.Generator().manual_seed(5)
    xs = [make(100 + i) for i in range(batches)]
    with torch.no_grad():
        ref = torch.cat([first_tensor(model(*x)) for x in xs])
        noisy = [tuple(a + a.std() * rel_noise * torch.randn(a.shape, generator=g) for a in x) for x in xs]
        got = torch.cat([first_tensor(model(*x)) for x in noisy])
    top1 = None if e.task == "features" else float((ref.argmax(-1) == got.argmax(-1)).float().mean())
    return {"sensitivity": float_info(ref, e.task)["sensitivity"], "std": float(ref.std()), "sqnr_db": sqnr_db(ref, got), "top1": top1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--modes", default=",".join(WARMUP_MODES))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    modes = args.modes.split(",")
    print("| model | " + " | ".join(f"{m}: sensitivity / logit std / SQNR under 40 dB input noise / top-1" for m in modes) + " |")
    print("|" + " --- |" * (len(modes) + 1))
    for name in args.models:
        cells = []
        for mode in modes:
            r = noise_gain(name, mode)
            top1 = "-" if r["top1"] is None else f"{r['top1']:.0%}"
            cells.append(f"{r['sensitivity']:.2f} / {r['std']:.2g} / {r['sqnr_db']:.1f} dB / {top1}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
