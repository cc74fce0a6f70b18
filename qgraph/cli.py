"""The ``qgraph`` command line: quantize a model from a factory function, pack / unpack / inspect qpack
files of packed weights, inspect models and reports (error table, HTML explorer), list recipes, print versions.

A *factory* is a function that takes no arguments and returns ``(model, example_inputs)`` or
``(model, example_inputs, calib_batches)``; name it as ``MODULE:FACTORY``, e.g.
``qgraph quantize examples.models:digits_cnn --recipe w8a8 --out out/``.
"""

from __future__ import annotations

import importlib
import itertools
import os
import sys
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="qgraph: quantize PyTorch models and export verified QDQ ONNX.",
)

EXIT_QGRAPH_ERROR = 1  # qgraph refused the model / recipe / export
EXIT_USAGE = 2  # the command line or the factory is wrong


class FactoryError(Exception):
    """The MODULE:FACTORY string or what the factory returned is unusable."""


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def load_factory(spec: str):
    """Resolve ``MODULE:FACTORY`` (the current directory is on the import path) to ``(name, callable)``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise FactoryError(f"expected MODULE:FACTORY (e.g. examples.models:digits_cnn), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise FactoryError(f"module {module_name!r} not found (looked in {cwd} and sys.path)") from None
        raise FactoryError(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    except Exception as e:  # the user's module raised while importing
        raise FactoryError(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FactoryError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryError(f"{spec} is a {type(obj).__name__}, not a callable factory")
    return attr.rsplit(".", 1)[-1], obj


def call_factory(spec: str, factory):
    """Call the factory and check it returned ``(model, example_inputs[, calib_batches])``."""
    from collections.abc import Mapping

    import torch
    from torch import nn

    from qgraph.errors import QGraphError

    try:
        out = factory()
    except QGraphError:
        raise
    except Exception as e:
        raise FactoryError(f"factory {spec} raised {type(e).__name__}: {e}") from None
    if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
        got = f"a {len(out)}-tuple" if isinstance(out, (tuple, list)) else f"a {type(out).__name__}"
        raise FactoryError(f"factory {spec} must return (model, example_inputs) or "
                           f"(model, example_inputs, calib_batches), got {got}")
    model, example_inputs = out[0], out[1]
    if not isinstance(model, nn.Module):
        raise FactoryError(f"factory {spec} returned a {type(model).__name__} as the model, not a torch.nn.Module")
    calib = out[2] if len(out) == 3 else None
    if isinstance(calib, Mapping) and calib and all(isinstance(v, torch.Tensor) for v in calib.values()):
        calib = [calib]  # one batch by name (a BatchEncoding), not an iterable of batches: its keys are not batches
    if calib is not None and not hasattr(calib, "__iter__"):
        raise FactoryError(f"factory {spec} returned a {type(calib).__name__} as calib_batches, not an iterable")
    return model, example_inputs, calib


def _human_size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MB"


@app.command("quantize")
def quantize_cmd(
    factory: str = typer.Argument(..., metavar="MODULE:FACTORY", help="function returning (model, example_inputs[, calib_batches])"),
    recipe: str = typer.Option("w8a8", "--recipe", "-r", help="quantization recipe (see `qgraph recipes`)"),
    out: str = typer.Option("out", "--out", "-o", help="output directory"),
    name: str | None = typer.Option(None, "--name", "-n", help="file stem of the outputs (default: the factory's name)"),
    calib_batches: int | None = typer.Option(None, "--calib-batches", min=1, help="use at most N calibration batches"),
    summary: bool = typer.Option(True, "--summary/--no-summary", help="print the per-node table"),
    uint8_weights: bool = typer.Option(False, "--uint8-weights", help="store integer-kernel weights as uint8 (zero point 128): "
                                       "exact in ONNX Runtime under any session options, also on x86 CPUs without VNNI"),
) -> None:
    """Quantize the model a factory returns, print its summary, export verified QDQ ONNX to OUT/NAME.onnx."""
    import qgraph
    from qgraph.errors import QGraphError

    try:
        fname, fn = load_factory(factory)
        model, example_inputs, calib = call_factory(factory, fn)
    except FactoryError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    except QGraphError as e:
        raise _fail(f"{type(e).__name__}: {e}", EXIT_QGRAPH_ERROR) from None
    if calib is None:
        calib = [example_inputs]
    if calib_batches is not None:
        calib = list(itertools.islice(calib, calib_batches))
    stem = Path(out) / (name or fname)
    try:
        qm = qgraph.quantize(model, example_inputs, recipe=recipe, calib_data=calib)
        if summary:
            typer.echo(qm.summary())
        stem.parent.mkdir(parents=True, exist_ok=True)
        res = qm.export(str(stem), uint8_weights=uint8_weights)
    except QGraphError as e:
        raise _fail(f"{type(e).__name__}: {e}", EXIT_QGRAPH_ERROR) from None
    typer.echo(f"recipe          {recipe}")
    typer.echo(f"onnx            {getattr(res, 'onnx_path', '?')}  ({_human_size(getattr(res, 'onnx_bytes', None))})")
    typer.echo(f"report          {getattr(res, 'report_path', '?')}")
    typer.echo(f"max abs error   {getattr(res, 'max_abs_error', float('nan')):.3g}  (ONNX Runtime vs qgraph)")
    agree = getattr(res, "top1_agreement", None)
    typer.echo(f"top-1 agreement {'n/a' if agree is None else f'{100 * agree:.2f}%'}")
    typer.echo(f"batch           {'dynamic' if res.dynamic_batch else 'static (as in the example inputs)'}")
    typer.echo(f"weights         {'uint8 (exact under any ONNX Runtime options)' if res.uint8_weights else 'int8'}")
    if res.default_session_error is not None:  # this CPU's default int8 kernels saturate
        typer.echo(f"default options max abs error {res.default_session_error:.3g} on this CPU (x86 without VNNI)"
                   + ("" if res.default_session_error <= res.tolerance else ": above the tolerance, see --uint8-weights"))
    for line in _onnx_inputs(getattr(res, "onnx_path", None)):
        typer.echo(f"input           {line}")


def _onnx_inputs(path: str | None) -> list[str]:
    """``name [dims] dtype`` for each input of the ONNX file (symbolic dims by name: batch, sequence)."""
    if not path or not Path(path).exists():
        return []
    import onnx

    model = onnx.load(path, load_external_data=False)
    out = []
    for i in model.graph.input:
        t = i.type.tensor_type
        dims = ", ".join(d.dim_param or str(d.dim_value) for d in t.shape.dim)
        out.append(f"{i.name} [{dims}] {onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)}")
    return out


def _load_model_from_factory(factory: str):
    """``(name, model, example_inputs, calib)`` from ``MODULE:FACTORY``, or a usage/qgraph error exit."""
    from qgraph.errors import QGraphError

    try:
        fname, fn = load_factory(factory)
        return (fname, *call_factory(factory, fn))
    except FactoryError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    except QGraphError as e:
        raise _fail(f"{type(e).__name__}: {e}", EXIT_QGRAPH_ERROR) from None


@app.command("inspect")
def inspect_cmd(
    target: str = typer.Argument(..., metavar="FILE|MODULE:FACTORY",
                                 help="a .qpack file, a report JSON (Report.to_json / --json), or a factory to quantize and inspect"),
    model: str | None = typer.Option(None, "--model", "-m", metavar="MODULE:FACTORY",
                                     help="with a .qpack: the float model to load it onto, then report and write HTML"),
    recipe: str = typer.Option("w8a8", "--recipe", "-r", help="recipe, when TARGET is a factory"),
    out: str = typer.Option("out", "--out", "-o", help="output directory (HTML, JSON, PNG)"),
    name: str | None = typer.Option(None, "--name", "-n", help="file stem (default: the factory's or the file's)"),
    html: bool = typer.Option(True, "--html/--no-html", help="write OUT/NAME.html (models and reports)"),
    json_out: bool = typer.Option(False, "--json", help="also write the report as OUT/NAME.report-full.json"),
    png: bool = typer.Option(False, "--png", help="also write PNG plots to OUT/NAME-plots/ (needs matplotlib)"),
    batches: int = typer.Option(4, "--batches", min=1, help="calibration batches the report measures on"),
) -> None:
    """Inspect a qpack file (tensor table), or a model / report: per-layer error table and a
    self-contained HTML explorer (graph, errors, quantizer state, before/after), PNG plots on request."""
    from qgraph.errors import QGraphError

    is_file = os.path.exists(target)
    try:
        if is_file and target.endswith(".qpack"):
            from qgraph.backends.qpack_describe import describe_qpack

            typer.echo(describe_qpack(target))
            if model is None:
                return
            report, stem = _report_from_qpack(target, model, batches), name or Path(target).name.removesuffix(".qpack")
        elif is_file:
            from qgraph.report import Report

            report, stem = Report.from_json(target), name or Path(target).name.removesuffix(".json").removesuffix(".report-full")
        elif ":" in target:
            report, stem = _report_from_factory(target, recipe, batches, name)
        else:
            raise _fail(f"{target}: no such file, and not MODULE:FACTORY", EXIT_USAGE)
        typer.echo(report.table())
        _write_report_files(report, Path(out) / stem, html, json_out, png)
    except QGraphError as e:
        raise _fail(f"{type(e).__name__}: {e}", EXIT_QGRAPH_ERROR) from None


def _report_from_factory(factory: str, recipe: str, batches: int, name: str | None):
    import qgraph

    fname, model, example_inputs, calib = _load_model_from_factory(factory)
    calib = [example_inputs] if calib is None else list(calib)
    qm = qgraph.quantize(model, example_inputs, recipe=recipe, calib_data=calib)
    return qm.report(calib[:batches]), name or fname


def _report_from_qpack(path: str, factory: str, batches: int):
    import qgraph

    _, model, example_inputs, calib = _load_model_from_factory(factory)
    qm = qgraph.load(path, lambda: (model, example_inputs))
    data = list(itertools.islice(calib, batches)) if calib is not None else None
    return qm.report(data)


def _write_report_files(report, stem: Path, html: bool, json_out: bool, png: bool) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    if html:
        typer.echo(f"html    {report.to_html(str(stem) + '.html')}")
    if json_out:
        report.to_json(str(stem) + ".report-full.json")
        typer.echo(f"json    {stem}.report-full.json")
    if png:
        from qgraph.plots import save_pngs

        for p in save_pngs(report, str(stem) + "-plots"):
            typer.echo(f"png     {p}")


@app.command("pack")
def pack_cmd(
    factory: str = typer.Argument(..., metavar="MODULE:FACTORY", help="function returning (model, example_inputs[, calib_batches])"),
    recipe: str = typer.Option("w4a16", "--recipe", "-r", help="quantization recipe (see `qgraph recipes`)"),
    out: str = typer.Option("out", "--out", "-o", help="output directory"),
    name: str | None = typer.Option(None, "--name", "-n", help="file stem (default: the factory's name)"),
    calib_batches: int | None = typer.Option(None, "--calib-batches", min=1, help="use at most N calibration batches"),
) -> None:
    """Quantize the model a factory returns and write only its packed weights, OUT/NAME.qpack."""
    import qgraph
    from qgraph.errors import QGraphError

    fname, model, example_inputs, calib = _load_model_from_factory(factory)
    calib = [example_inputs] if calib is None else calib
    if calib_batches is not None:
        calib = list(itertools.islice(calib, calib_batches))
    stem = Path(out) / (name or fname)
    try:
        qm = qgraph.quantize(model, example_inputs, recipe=recipe, calib_data=calib)
        stem.parent.mkdir(parents=True, exist_ok=True)
        res = qm.export(str(stem), formats=("qpack",))
    except QGraphError as e:
        raise _fail(f"{type(e).__name__}: {e}", EXIT_QGRAPH_ERROR) from None
    path = getattr(res, "qpack_path", None) or f"{stem}.qpack"
    typer.echo(f"recipe  {recipe}")
    typer.echo(f"qpack   {path}  ({_human_size(os.path.getsize(path) if os.path.exists(path) else None)})")


@app.command("unpack")
def unpack_cmd(
    file: str = typer.Argument(..., metavar="FILE.qpack", help="a qpack file written by `qgraph pack` or QModel.export"),
    factory: str = typer.Argument(..., metavar="MODULE:FACTORY", help="function returning the float model (and example inputs)"),
    out: str = typer.Option("out", "--out", "-o", help="output directory"),
    name: str | None = typer.Option(None, "--name", "-n", help="file stem (default: the qpack's)"),
) -> None:
    """Load a qpack onto the factory's float model and export verified QDQ ONNX to OUT/NAME.onnx."""
    import qgraph
    from qgraph.errors import QGraphError

    _, model, example_inputs, _ = _load_model_from_factory(factory)
    stem = Path(out) / (name or Path(file).name.removesuffix(".qpack"))
    try:
        qm = qgraph.load(file, lambda: (model, example_inputs))
        stem.parent.mkdir(parents=True, exist_ok=True)
        res = qm.export(str(stem), formats=("onnx",))
    except QGraphError as e:
        raise _fail(f"{type(e).__name__}: {e}", EXIT_QGRAPH_ERROR) from None
    typer.echo(f"onnx            {getattr(res, 'onnx_path', '?')}  ({_human_size(getattr(res, 'onnx_bytes', None))})")
    typer.echo(f"max abs error   {getattr(res, 'max_abs_error', float('nan')):.3g}  (ONNX Runtime vs qgraph)")


@app.command("recipes")
def recipes_cmd() -> None:
    """List the known quantization recipes."""
    import qgraph

    for r in qgraph.list_recipes():
        typer.echo(r)


@app.command("version")
def version_cmd() -> None:
    """Print the versions of qgraph and of the libraries it runs on."""
    from importlib.metadata import PackageNotFoundError, version

    import qgraph

    typer.echo(f"qgraph {qgraph.__version__}")
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            typer.echo(f"  {dist} {version(dist)}")
        except PackageNotFoundError:
            typer.echo(f"  {dist} (not installed)")


def main() -> None:
    """Entry point of the ``qgraph`` console script."""
    app()


if __name__ == "__main__":
    main()
