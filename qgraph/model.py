"""QModel: the quantized model. An ``nn.Module`` that runs, trains, summarises and exports itself."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from qgraph.errors import ExportMismatchError
from qgraph.graph import QGraph
from qgraph.quantizer import FakeQuantize
from qgraph.recipes import Recipe


@dataclass
class ExportResult:
    onnx_path: str
    report_path: str
    onnx_bytes: int
    max_abs_error: float
    tolerance: float
    top1_agreement: float | None
    dynamic_batch: bool = False

    def __str__(self) -> str:
        top1 = f", top-1 agreement {self.top1_agreement:.1%}" if self.top1_agreement is not None else ""
        return (f"{self.onnx_path} ({self.onnx_bytes / 1024:.1f} KiB): ONNX Runtime vs qgraph max abs error "
                f"{self.max_abs_error:.3g} (tolerance {self.tolerance:.3g}){top1}")


class SummaryText(str):
    """A summary table: a plain ``str`` whose REPL display is the table itself."""

    def __repr__(self) -> str:
        return str(self)


class QModel(nn.Module):
    """A quantized model.

    * call it like the original model (fake-quantized forward);
    * train it (QAT): learnable scales are parameters, weight quantizers follow the weights;
    * ``summary()``: per-node table; ``export(path)``: verified ONNX plus a JSON report;
    * ``qgraph``: the rewritten :class:`QGraph`; ``changes``: what every pass did.
    """

    def __init__(self, qgraph: QGraph, float_graph: QGraph | None, recipe: Recipe, example_inputs: tuple, changes: list) -> None:
        super().__init__()
        self.qgraph = qgraph
        self.recipe = recipe
        self.changes = list(changes)
        # kept out of the module tree: the float reference is not trained or saved with the model
        object.__setattr__(self, "_float_graph", float_graph)
        object.__setattr__(self, "_example_inputs", example_inputs)

    def forward(self, *args, **kwargs):
        return self.qgraph(*args, **kwargs)

    # ----------------------------------------------------------------- inspection
    def quantizers(self) -> dict[str, FakeQuantize]:
        return {n: m for n, m in self.qgraph.named_modules() if isinstance(m, FakeQuantize)}

    def summary_rows(self, data=None) -> list[dict]:
        from qgraph.capture import as_input_tuple
        from qgraph.summary import summary_rows

        args = as_input_tuple(data) if data is not None else self._example_inputs
        was = self.training
        self.eval()
        try:
            return summary_rows(self.qgraph, self._float_graph, args)
        finally:
            self.train(was)

    def summary(self, data=None) -> SummaryText:
        """Per-node table (op, module path, bits, quantizer, scale range, SQNR vs float on ``data``).

        Returns the table as a string that also displays as itself at the REPL; ``print`` it in scripts.
        """
        from qgraph.summary import format_rows

        rows = self.summary_rows(data)
        cap = self.qgraph.capture
        head = f"qgraph {self.recipe.name}: {len(rows)} ops quantized, {len(self.quantizers())} quantizers, {cap.describe()}"
        return SummaryText(head + "\n" + format_rows(rows))

    # ----------------------------------------------------------------- export
    def lowered(self) -> nn.Module:
        """A copy with integer weights (``LowerPass``), as it is handed to the ONNX exporter."""
        from qgraph.passes.lower import LowerPass

        gm = copy.deepcopy(self.qgraph).eval()
        for q in gm.modules():
            if isinstance(q, FakeQuantize):
                q._refresh = False
        LowerPass().run(gm)
        return gm

    def export(self, path: str, *, verify: bool = True, tolerance: float | None = None, min_top1: float = 0.99,
               dynamic_batch: bool = True) -> ExportResult:
        """Write ``path.onnx`` and ``path.report.json``; check the ONNX model against this model.

        ONNX Runtime runs the file on the example inputs; if its outputs differ from this model's by
        more than ``tolerance`` (default: 3 output quantization steps plus 1e-4 of the output range) or
        top-1 agreement is below ``min_top1``, :class:`ExportMismatchError` is raised (the file stays
        on disk for inspection). ``dynamic_batch``: let the batch dimension vary where the graph allows
        (``ExportResult.dynamic_batch`` says whether it does).
        """
        from qgraph.backends import ort as ort_backend
        from qgraph.backends.onnx_export import batch_is_dynamic, export_onnx

        base = path[:-5] if path.endswith(".onnx") else path
        onnx_path, report_path = base + ".onnx", base + ".report.json"
        self.eval()
        args = self._example_inputs
        with torch.no_grad():
            expected = self(*args)
        model = export_onnx(self.lowered(), args, onnx_path, dynamic_batch=dynamic_batch)
        agreement = None
        tol = 0.0
        if verify:
            sess = ort_backend.session(onnx_path, matmulnbits_accuracy_level=0)
            outputs = ort_backend.run(sess, args)
            tol = tolerance if tolerance is not None else self._default_tolerance(expected)
            agreement = ort_backend.compare(expected, outputs, tie_tolerance=tol)
        result = ExportResult(onnx_path, report_path, os.path.getsize(onnx_path),
                              agreement.max_abs_error if agreement else float("nan"), tol,
                              agreement.top1_agreement if agreement else None, batch_is_dynamic(model))
        self._write_report(result)
        if agreement is not None:
            bad_top1 = agreement.top1_agreement_up_to_ties is not None and agreement.top1_agreement_up_to_ties < min_top1
            if agreement.max_abs_error > tol or bad_top1:
                raise ExportMismatchError(
                    f"ONNX Runtime disagrees with the quantized model on the example inputs: {agreement}; "
                    f"tolerance {tol:.3g}, minimum top-1 agreement {min_top1:.0%}. The file is at {onnx_path}"
                )
        return result

    def _default_tolerance(self, expected) -> float:
        """Three steps of the coarsest activation grid, plus 1e-4 of the output range."""
        from torch.utils import _pytree as pytree

        leaves = [t for t in pytree.tree_leaves(expected) if isinstance(t, torch.Tensor) and t.numel()]
        output_range = max((float(t.detach().abs().max()) for t in leaves), default=0.0)
        scales = [q.scale_range()[1] for q in self.quantizers().values() if q.role == "activation" and q.initialized]
        step = max(scales) if scales else 0.0
        return 3 * step + 1e-4 * output_range + 1e-5

    def _write_report(self, result: ExportResult) -> None:
        rows = self.summary_rows()
        cap = self.qgraph.capture
        report = {
            "qgraph_version": __import__("qgraph").__version__,
            "recipe": self.recipe.to_json(),
            "capture": {"route": cap.route, "leaves": cap.leaves, "notes": cap.notes},
            "export": asdict(result),
            "nodes": rows,
            "changes": [str(c) for c in self.changes],
        }
        with open(result.report_path, "w") as f:
            json.dump(report, f, indent=2, default=str)
