"""``qgraph inspect`` on a model (factory), a report JSON and a qpack with its model, end to end."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from qgraph import Report
from qgraph.cli import app

FACTORY = "examples.models:digits_cnn"


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect")
    res = CliRunner().invoke(app, ["inspect", FACTORY, "--recipe", "w4a8", "--out", str(out), "--name", "net",
                                   "--json", "--png", "--batches", "2"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_inspect_factory_writes_offline_html_json_and_pngs(inspected):
    out, output = inspected
    assert "SQNR local" in output and "fc2" in output and "most sensitive" in output
    page = (out / "net.html").read_text()
    assert '<script id="qgraph-data" type="application/json">' in page and "<svg" in page
    # self-contained: no external scripts, styles or fonts
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "@import" not in page
    data = json.loads(re.search(r'<script id="qgraph-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    rep = Report.from_json(str(out / "net.report-full.json"))
    assert data["ranking"] == rep.ranking and len(data["graph"]["nodes"]) > 30
    assert rep.data["model"]["recipe"]["name"] == "w4a8" and rep.data["model"]["batches"] == 2
    for png in ("error_per_layer.png", "distributions.png"):
        blob = (out / "net-plots" / png).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000


def test_inspect_report_json_again(inspected, tmp_path):
    out, first = inspected
    res = CliRunner().invoke(app, ["inspect", str(out / "net.report-full.json"), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "net.html").is_file()
    table = lambda s: s[s.index("qgraph report"):s.index("SQNR in dB")]  # noqa: E731
    assert table(res.output) == table(first)


def test_inspect_qpack_with_its_model(tmp_path):
    res = CliRunner().invoke(app, ["pack", FACTORY, "--recipe", "w8a8", "--out", str(tmp_path), "--name", "net"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "net.qpack"), "--model", FACTORY, "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "conv1.0.weight" in res.output  # the qpack's tensor table, as before
    assert "qgraph report: recipe w8a8" in res.output and (tmp_path / "net.html").is_file()


def test_inspect_errors(tmp_path):
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "no such file" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    res = CliRunner().invoke(app, ["inspect", str(bad)])
    assert res.exit_code == 1 and "InputError" in res.output and "not a qgraph report" in res.output
    res = CliRunner().invoke(app, ["inspect", "no_such_module:f"])
    assert res.exit_code == 2 and "not found" in res.output
