"""``Report.to_html(path)``: one self-contained HTML file (works offline, no CDN).

The page embeds the report JSON in ``<script id="qgraph-data" type="application/json">`` and the
explorer (``qgraph/assets/explorer.js`` and ``explorer.css``, plain JS written for qgraph, inlined),
plus the per-layer error chart as static SVG (``qgraph.plots.error_chart_svg``).
"""

from __future__ import annotations

import json
import os
from html import escape
from importlib import resources

from qgraph.plots import error_chart_svg


def _asset(name: str) -> str:
    return resources.files("qgraph").joinpath("assets", name).read_text(encoding="utf-8")


def _json_for_script(data: dict) -> str:
    from qgraph.report import _finite

    text = json.dumps(_finite(data), separators=(",", ":"))
    # inside <script> only "</" can end the element; "<!--" could start a comment state
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _db(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return f"{v:.1f}"


def render_html(report, title: str | None = None) -> str:
    d = report.data
    m = d["model"]
    recipe = m["recipe"]["name"]
    title = title or f"qgraph report: {recipe}"
    top1 = "" if m.get("top1_agreement") is None else f", top-1 agreement {m['top1_agreement']:.1%}"
    ranking = "".join(
        f'<li data-select="{escape(n)}">{escape(report.layer(n)["module"] or n)} '
        f'<span class="muted">{_db(report.layer(n)["output_alone"]["sqnr_db"])} dB alone</span></li>'
        for n in d["ranking"][:8])
    if not ranking:
        ranking = '<li class="muted">no ranking (report built with local=False)</li>'
    leaves = ", ".join(m["capture"]["leaves"]) or "none"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_asset("explorer.css")}</style></head>
<body>
<header><h1>{escape(title)}</h1>
<div class="muted">recipe {escape(recipe)} · {len(d["layers"])} quantized layers · {len(d["quantizers"])} quantizers ·
captured with {escape(m["capture"]["route"])} (leaves: {escape(leaves)}) · {m["batches"]} batch(es) ·
model output SQNR {_db(m["output"]["sqnr_db"])} dB, cosine {m["output"]["cosine"]:.4f}{top1} · qgraph {escape(d.get("qgraph_version", "?"))}</div></header>
<section id="summary">
<div class="chart"><b>Error per layer</b> (SQNR vs the float model; higher is better)<br>{error_chart_svg(report)}</div>
<div><b>Most sensitive layers</b> (model-output SQNR with only that layer quantized; keep these at higher precision first)
<ol id="ranking">{ranking}</ol></div>
</section>
<div id="toolbar">
<label>view <select id="view"><option value="after">after the passes</option><option value="before">before (float graph)</option>
<option value="diff">diff: which pass inserted / changed what</option></select></label>
<label>colour by <select id="metric"><option value="cumulative">error, everything quantized</option>
<option value="local">error, only this layer quantized</option><option value="output_alone">model output, only this layer quantized</option></select></label>
<label><input type="checkbox" id="weights"> show weights</label>
<input id="search" type="search" placeholder="find node or module path, Enter" size="26">
<button id="expand" type="button">expand all</button><button id="collapse" type="button">collapse</button>
<span id="switches"></span>
<span class="legend">SQNR<span style="background:hsl(0,70%,72%)"></span>0 dB<span style="background:hsl(60,70%,72%)"></span>20<span style="background:hsl(120,70%,72%)"></span>&ge;40</span>
<span id="count" class="muted"></span>
</div>
<div id="main">
<div id="tree"></div>
<svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg>
<div id="details"><p class="muted">Click a node to see its quantizer state, a group to expand it. Drag to pan, wheel to zoom.
In the diff view, green: inserted by a pass, orange: changed, red dashed: removed.</p></div>
</div>
<script id="qgraph-data" type="application/json">{_json_for_script(d)}</script>
<script>{_asset("explorer.js")}</script>
</body></html>
"""


def write_html(report, path: str, title: str | None = None) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(report, title))
    return path
