"""The HTML explorer in a real browser: headless Chromium (Debian's ``chromium``, installed by
scripts/setup.sh) driven by Playwright, without Playwright's own browser download."""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest

from qgraph import Report

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


def _chromium() -> str | None:
    for cand in (os.environ.get("QGRAPH_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 shutil.which("google-chrome")):
        if cand and os.path.exists(cand):
            return cand
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium found (apt-get install chromium, or set QGRAPH_CHROMIUM)")


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _open(browser, path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: problems.append(f"network request: {r.url}") if not r.url.startswith(("file:", "data:", "about:")) else None)
    page.goto(f"file://{path}")
    page.wait_for_selector("body[data-ready='1']", timeout=10_000)
    return page, problems


def _non_blank(png: bytes) -> float:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").resize((200, 150))
    px = list(img.getdata())
    background = max(set(px), key=px.count)
    return sum(1 for p in px if sum(abs(a - b) for a, b in zip(p, background)) > 40) / len(px)


@pytest.fixture(scope="module")
def digits_page(digits_w8a8, calib, tmp_path_factory):
    path = tmp_path_factory.mktemp("html") / "digits.html"
    rep = digits_w8a8.report(calib[:2])
    rep.with_variants("bits", {"8": rep}).to_html(str(path))
    return path, rep


def test_page_renders_and_a_click_shows_quantizer_state(browser, digits_page):
    path, rep = digits_page
    page, problems = _open(browser, path)
    assert page.locator("#graph .node").count() >= 25
    page.fill("#search", "fc1")
    page.press("#search", "Enter")  # finds the layer at module fc1 and centres the view on it
    page.click("#details")  # clear focus; then click the node itself
    page.click("#graph .node[data-id='linear']")
    details = page.inner_text("#details")
    fc1 = rep.layer("fc1")
    assert "layer fc1" in details and "fc1.weight_quantizer" in details and "int8 sym per-channel" in details
    assert f"sensitivity rank\t{fc1['rank']} of" in details
    assert page.locator("#details svg.hist").count() >= 2 and page.locator("#details svg.hist line.grid").count() > 2
    shot = page.locator("#graph").screenshot()
    assert _non_blank(shot) > 0.02
    # the diff view marks what the insert pass added; the switcher exists because the report has variants
    page.select_option("#view", "diff")
    assert page.locator("#graph .node.status-added").count() == len(rep.data["quantizers"])
    assert page.locator("select[data-switch='bits']").count() == 1
    page.select_option("select[data-switch='bits']", "8")
    page.click("#ranking li >> nth=0")
    assert f"layer {rep.layer(rep.ranking[0])['module']}" in page.inner_text("#details")
    assert problems == []
    page.close()


def _vit_like(rep: Report, blocks: int = 12) -> Report:
    """The digits report with a synthetic ViT-sized graph (~2,000 nodes in module groups)."""
    nodes, edges, prev, order = [{"id": "x", "op": "placeholder", "target": "x", "module": "", "shape": None, "status": "same",
                                  "passes": [], "quantizer": None, "layer": None, "order": 0}], [], "x", 1
    for b in range(blocks):
        for sub in ("norm1", "attn.qkv", "attn.matmul", "attn.softmax", "attn.proj", "norm2", "mlp.fc1", "mlp.act", "mlp.fc2"):
            for k in range(18):
                nid = f"b{b}_{sub.replace('.', '_')}_{k}"
                nodes.append({"id": nid, "op": "call_function", "target": "op", "module": f"blocks.{b}.{sub}", "shape": [1, 197, 192],
                              "status": "added" if k % 3 == 0 else "same", "passes": [], "quantizer": None, "layer": None, "order": order})
                edges.append([prev, nid, "after"])
                prev, order = nid, order + 1
    data = json.loads(rep.to_json())
    data["graph"] = {"nodes": nodes, "edges": edges}
    return Report.from_json(json.dumps(data))


def test_two_thousand_node_graph_stays_usable(browser, digits_page, tmp_path):
    _, rep = digits_page
    big = _vit_like(rep)
    assert len(big.data["graph"]["nodes"]) > 1900
    path = tmp_path / "vit.html"
    big.to_html(str(path))
    page, problems = _open(browser, path)
    shown = page.locator("#graph .node").count()
    assert 5 <= shown <= 160, shown
    groups = page.locator("#graph .node.group")
    assert groups.count() >= 5
    visible_group = page.evaluate("""() => {
        const box = document.getElementById('graph').getBoundingClientRect();
        const g = [...document.querySelectorAll('#graph .node.group')].find(e => {
            const r = e.getBoundingClientRect(); return r.top > box.top && r.bottom < box.bottom; });
        return g && g.getAttribute('data-id'); }""")
    assert visible_group, "no module group in view at first"
    page.click(f"#graph .node[data-id='{visible_group}']")
    assert page.locator("#graph .node").count() > shown
    assert _non_blank(page.locator("#graph").screenshot()) > 0.01
    assert problems == []
    page.close()
