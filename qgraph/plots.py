"""Plots of a report: per-layer error as inline SVG (no dependencies, for the HTML page) and PNG
files (matplotlib, an optional dependency: ``pip install qgraph[plots]``) for the CLI."""

from __future__ import annotations

import math
import os
from html import escape

from qgraph.errors import InputError


def _val(m: dict | None) -> float | None:
    if not m:
        return None
    v = m["sqnr_db"]
    return None if v is None or (isinstance(v, float) and math.isinf(v)) else v


def error_chart_svg(report, height: int = 190) -> str:
    """Bars per layer: SQNR with everything quantized (cumulative) and with only that layer
    quantized (local), in dB vs the float model. Returns an ``<svg>`` element as text."""
    layers = report.layers
    series = [("cumulative", "#d9822b"), ("local", "#4a78c2")]
    vals = [v for ly in layers for k, _ in series if (v := _val(ly.get(k))) is not None]
    top = max([10.0, *vals])
    top = math.ceil(top / 10) * 10
    bw, gap, left, bottom = 9, 8, 34, 70
    width = left + len(layers) * (len(series) * bw + gap) + 10
    plot_h = height - bottom - 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="error-chart" role="img" '
           f'aria-label="SQNR per layer">']
    for t in range(0, int(top) + 1, 10):
        y = 10 + plot_h * (1 - t / top)
        out.append(f'<line x1="{left}" x2="{width - 5}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ea"/>'
                   f'<text x="{left - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end" fill="#6b7482">{t}</text>')
    for i, ly in enumerate(layers):
        x0 = left + i * (len(series) * bw + gap) + gap / 2
        for j, (key, colour) in enumerate(series):
            v = _val(ly.get(key))
            if v is None:
                continue
            hgt = plot_h * max(0.0, min(v, top)) / top
            out.append(f'<rect x="{x0 + j * bw:.1f}" y="{10 + plot_h - hgt:.1f}" width="{bw - 1}" height="{hgt:.1f}" fill="{colour}">'
                       f'<title>{escape(ly["module"] or ly["node"])}: {key} {v:.1f} dB</title></rect>')
        lx, ly_ = x0 + bw, 14 + plot_h
        out.append(f'<text x="{lx:.1f}" y="{ly_:.1f}" font-size="9" fill="#3c4656" transform="rotate(50 {lx:.1f} {ly_:.1f})">'
                   f'{escape((ly["module"] or ly["node"])[-18:])}</text>')
    lx = left
    for key, colour in series:
        out.append(f'<rect x="{lx}" y="0" width="8" height="8" fill="{colour}"/><text x="{lx + 11}" y="8" font-size="9">{key} SQNR (dB)</text>')
        lx += 110
    out.append("</svg>")
    return "".join(out)


def save_pngs(report, directory: str, top: int = 6) -> list[str]:
    """Write ``error_per_layer.png`` and ``distributions.png`` (weight / activation histograms with
    the quantization grid for the ``top`` most sensitive layers) to ``directory``; returns the paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InputError("PNG plots need matplotlib (pip install 'qgraph[plots]' or pip install matplotlib)") from e
    os.makedirs(directory, exist_ok=True)
    paths = []
    layers = report.layers
    names = [ly["module"] or ly["node"] for ly in layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers) + 2), 4))
    xs = range(len(layers))
    for off, key, colour in ((-0.2, "cumulative", "#d9822b"), (0.2, "local", "#4a78c2")):
        ax.bar([x + off for x in xs], [_val(ly.get(key)) or 0 for ly in layers], width=0.4, color=colour, label=f"{key} SQNR")
    ax.set_xticks(list(xs), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("SQNR vs float (dB)")
    ax.set_title(f"per-layer error, recipe {report.data['model']['recipe']['name']}")
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(directory, "error_per_layer.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    chosen = [report.layer(n) for n in report.ranking[:top]] or layers[:top]
    qs = report.data["quantizers"]
    panels = [(ly, q) for ly in chosen for q in ly["quantizers"] if "hist" in qs.get(q, {})]
    if panels:
        cols = 2
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(10, 2.4 * rows), squeeze=False)
        for ax, (_, qname) in zip(axes.flat, panels):
            q = qs[qname]
            hist = q["hist"]
            n = len(hist["counts"])
            step = (hist["hi"] - hist["lo"]) / n
            ax.bar([hist["lo"] + (i + 0.5) * step for i in range(n)], hist["counts"], width=step, color="#6b8fc7")
            ax.set_yscale("symlog")
            if "grid" in q:
                levels = q["qmax"] - q["qmin"] + 1
                every = 1 if levels <= 64 else math.ceil(levels / 32)
                for k in range(q["qmin"], q["qmax"] + 1):
                    if (k - q["qmin"]) % every and k != q["qmax"]:
                        continue
                    v = q["grid"]["scale"] * (k - q["grid"]["zero_point"])
                    if hist["lo"] <= v <= hist["hi"]:
                        ax.axvline(v, color="#d64545", lw=0.6 if k not in (q["qmin"], q["qmax"]) else 1.4, alpha=0.8)
            ax.set_title(f"{qname} ({q['spec']})", fontsize=8)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle("distributions of the most sensitive layers (red: quantization grid)", fontsize=10)
        fig.tight_layout()
        paths.append(os.path.join(directory, "distributions.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
