"""How the report and the HTML explorer scale to a ViT: timm ViT-Tiny (random weights), w8a8.

    python benchmarks/inspect_vit.py [--html out/vit_tiny.html]

Prints graph size, report time (with and without the one-layer-at-a-time runs), HTML size and,
when headless Chromium and Playwright are available, the page's time to first render.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import torch

import qgraph


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--html", default="out/vit_tiny_report.html")
    args = ap.parse_args()
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    x = torch.randn(2, 3, 224, 224)
    calib = [torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    qm = qgraph.quantize(model, x, recipe="w8a8", calib_data=calib)
    t = time.perf_counter()
    fast = qm.report(calib[:1], local=False)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    rep = qm.report(calib[:1])
    t_full = time.perf_counter() - t
    rep.to_html(args.html)
    rows = [("graph nodes (after passes)", len(qm.qgraph.graph.nodes)),
            ("graph nodes in the report (before ∪ after)", len(rep.data["graph"]["nodes"])),
            ("quantized layers", len(rep.layers)), ("quantizers", len(rep.data["quantizers"])),
            ("report, local=False (s)", f"{t_fast:.1f}"), ("report with local errors + ranking (s)", f"{t_full:.1f}"),
            ("model output SQNR (dB)", f"{fast.data['model']['output']['sqnr_db']:.1f}"),
            ("HTML size (KiB)", f"{os.path.getsize(args.html) / 1024:.0f}")]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        try:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = b.new_page(viewport={"width": 1400, "height": 1000})
                t = time.perf_counter()
                page.goto("file://" + os.path.abspath(args.html))
                page.wait_for_selector("body[data-ready='1']")
                rows.append(("page load to first render (s)", f"{time.perf_counter() - t:.2f}"))
                rows.append(("boxes drawn at first", page.locator("#graph .node").count()))
                t = time.perf_counter()
                page.click("#expand")
                rows.append(("expand all: boxes, time (s)", f"{page.locator('#graph .node').count()}, {time.perf_counter() - t:.2f}"))
                b.close()
        except ImportError:
            pass
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")


if __name__ == "__main__":
    main()
