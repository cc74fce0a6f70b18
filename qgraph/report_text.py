"""The terminal view of a :class:`qgraph.report.Report`: one aligned line per layer."""

from __future__ import annotations

import math


def _db(v) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.1f}"


def _rng(r) -> str:
    return "-" if not r else f"{r[0]:.3g}..{r[1]:.3g}"


def _metric(ly: dict, key: str, field: str) -> str:
    m = ly.get(key)
    if not m:
        return "-"
    v = m[field]
    if field == "sqnr_db":
        return _db(v)
    if field == "cosine":
        return f"{v:.4f}"
    return f"{v:.3g}"


def format_report(report) -> str:
    d = report.data
    m = d["model"]
    layers = d["layers"]
    sparse = any((ly.get("sparsity") or 0) > 0 for ly in layers)
    head = (f"qgraph report: recipe {m['recipe']['name']}, {len(layers)} layers, {m['batches']} batch(es); "
            f"model output SQNR {_db(m['output']['sqnr_db'])} dB, cosine {m['output']['cosine']:.4f}")
    if m.get("top1_agreement") is not None:
        head += f", top-1 agreement {m['top1_agreement']:.1%}"
    cols = ["rank", "layer", "op", "bits", "SQNR cum", "SQNR local", "out SQNR alone", "cosine", "max err",
            "weight SQNR", "weight range", "act range", "act grid", "clipped"] + (["sparsity"] if sparse else [])
    rows = [cols]
    for ly in layers:
        row = [
            str(ly.get("rank", "-")), ly["module"] or ly["node"], ly["op"], ly["bits"],
            _metric(ly, "cumulative", "sqnr_db"), _metric(ly, "local", "sqnr_db"), _metric(ly, "output_alone", "sqnr_db"),
            _metric(ly, "cumulative", "cosine"), _metric(ly, "cumulative", "max_abs_error"), _db(ly.get("weight_sqnr_db")),
            _rng(ly.get("weight_range")), _rng(ly.get("activation_range")), _rng(ly.get("activation_grid")),
            "-" if ly.get("clipped") is None else f"{ly['clipped']:.2%}",
        ]
        if sparse:
            row.append("-" if ly.get("sparsity") is None else f"{ly['sparsity']:.1%}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = [head, *("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)]
    if d["ranking"]:
        top = [report.layer(n) for n in d["ranking"][:5]]
        lines.append("most sensitive (keep at higher precision first): " + ", ".join(ly["module"] or ly["node"] for ly in top))
    lines.append("SQNR in dB vs the float model. cum: everything quantized; local: only this layer quantized, float input; "
                 "out SQNR alone: model output with only this layer quantized (ranks the layers).")
    return "\n".join(lines)
