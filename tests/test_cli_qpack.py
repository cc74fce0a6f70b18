"""``qgraph pack`` / ``qgraph unpack`` / ``qgraph inspect`` end to end on the digits CNN factory."""

from __future__ import annotations

import pytest
from qgraph.backends.qpack import read_qpack
from typer.testing import CliRunner

from qgraph.cli import app

FACTORY = "examples.models:digits_cnn"


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    out = tmp_path_factory.mktemp("pack")
    res = CliRunner().invoke(app, ["pack", FACTORY, "--recipe", "w4a16", "--out", str(out), "--name", "net"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_pack_writes_only_the_qpack(packed):
    out, output = packed
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".report.json")) == ["net.qpack"]
    assert "net.qpack" in output and "w4a16" in output
    qp = read_qpack(str(out / "net.qpack"))
    assert qp.packed and all(p.bits == 4 for p in qp.packed.values())
    assert "recipe" in qp.meta


def test_inspect_packed_model(packed):
    out, _ = packed
    res = CliRunner().invoke(app, ["inspect", str(out / "net.qpack")])
    assert res.exit_code == 0, res.output
    assert "conv1.0.weight" in res.output and "int4" in res.output and "total" in res.output
    assert "w4a16" in res.output


def test_unpack_exports_verified_onnx(packed, tmp_path):
    out, _ = packed
    res = CliRunner().invoke(app, ["unpack", str(out / "net.qpack"), FACTORY, "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "net.onnx").is_file() and "net.onnx" in res.output


def test_unpack_errors(tmp_path):
    bad = tmp_path / "bad.qpack"
    bad.write_bytes(b"not a qpack at all")
    res = CliRunner().invoke(app, ["unpack", str(bad), FACTORY, "--out", str(tmp_path)])
    assert res.exit_code == 1 and "QPackError" in res.output
    res = CliRunner().invoke(app, ["unpack", str(bad), "no_such_module:f", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not found" in res.output


def test_pack_unknown_recipe(tmp_path):
    res = CliRunner().invoke(app, ["pack", FACTORY, "--recipe", "w3a3", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "RecipeError" in res.output
