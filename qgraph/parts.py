"""Quantize the parts of a model that no route captures whole.

``qgraph.quantize_parts(model, example_inputs, recipe, calib_data)`` is for models whose own
``forward`` no tracer follows: a torchvision detector loops over its list of images and selects boxes
data-dependently, so ``quantize`` raises a ``CaptureError``. Its backbone, FPN and heads do capture.
This finds the largest such parts (:func:`qgraph.capture_parts.capturable_parts`), records the inputs
the model gives each part on every calibration batch, quantizes each part with ``quantize`` on those
inputs, and returns a copy of the model with the parts replaced by their :class:`QModel`: the model's
own code and the parts that did not capture run in float around them, in PyTorch. Each part exports
to its own verified ONNX file and qpack.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

from torch import nn

from qgraph.errors import CaptureError, InputError, QGraphError


class QuantizedParts(nn.Module):
    """A model whose capturable parts are quantized (``parts``: module path → :class:`QModel`); call it
    like the original. ``failed``: parts that capture but did not quantize, with the reason;
    ``float_layers``: weighted modules outside every quantized part (they stay float)."""

    def __init__(self, model: nn.Module, parts: dict, failed: dict[str, str], float_layers: list[str], notes: list[str]) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "parts", parts)  # the QModels live inside self.model already
        self.failed, self.float_layers, self.notes = failed, float_layers, notes

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @contextlib.contextmanager
    def frozen(self):
        """``with qp.frozen():`` every part's weights fake-quantized once (:meth:`QModel.frozen`)."""
        with contextlib.ExitStack() as stack:
            for qm in self.parts.values():
                stack.enter_context(qm.frozen())
            yield self

    def export(self, directory: str, *, formats: tuple[str, ...] | str = ("onnx", "qpack"), **options) -> dict:
        """Each part's files as ``directory/<module path>.onnx`` / ``.qpack`` (:meth:`QModel.export`,
        verified the same way); returns ``{module path: ExportResult}``."""
        os.makedirs(directory, exist_ok=True)
        return {path: qm.export(os.path.join(directory, path), formats=formats, **options) for path, qm in self.parts.items()}

    def summary(self) -> str:
        weights = {path: sum(q.role == "weight" for q in qm.quantizers().values()) for path, qm in self.parts.items()}
        recipe = next(iter(self.parts.values())).recipe.name if self.parts else "-"
        lines = [f"{len(self.parts)} quantized part(s) of {type(self.model).__name__} (recipe {recipe}):"]
        lines += [f"  {path}: {qm.qgraph.capture.route}, {weights[path]} quantized weights" for path, qm in self.parts.items()]
        lines += [f"  {path}: not quantized ({why})" for path, why in self.failed.items()]
        if self.float_layers:
            shown = ", ".join(self.float_layers[:8]) + (", ..." if len(self.float_layers) > 8 else "")
            lines.append(f"float outside the parts: {len(self.float_layers)} weighted module(s) ({shown}) and the model's own code")
        else:
            lines.append("float outside the parts: the model's own code (no weighted layers)")
        return "\n".join(lines + self.notes)


def quantize_parts(model: nn.Module, example_inputs, recipe="w8a8", calib_data: Iterable | None = None,
                   budget_s: float = 120.0) -> QuantizedParts:
    """Quantize each part of ``model`` that captures alone (see the module docstring). ``calib_data``:
    batches for the whole model, as for ``quantize``; each part calibrates on the inputs it receives
    from them. The input model is not modified. Raises :class:`CaptureError` when no part captures."""
    from qgraph.api import quantize
    from qgraph.capture import as_input_tuple, run_eager
    from qgraph.capture_parts import capturable_parts
    from qgraph.keyword_inputs import is_keyword_inputs, ordered_keywords
    from qgraph.model_wrappers import unwrap
    from qgraph.weight_hooks import copy_with_plain_weights

    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module to quantize, got {type(model).__name__}")
    model, _ = unwrap(model)
    model, notes, _ = copy_with_plain_weights(model)
    model.eval()
    if is_keyword_inputs(example_inputs):
        named = ordered_keywords(model.forward, example_inputs)
        keywords, args = tuple(named), tuple(named.values())
    else:
        keywords, args = None, as_input_tuple(example_inputs)
    found = capturable_parts(model, args, keywords, budget_s=budget_s)
    if not found:
        raise CaptureError(f"no part of {type(model).__name__} with weights captures on its own")
    modules = {p.path: model.get_submodule(p.path) for p in found}
    calls: dict[str, list[tuple]] = {path: [] for path in modules}
    hooks = [m.register_forward_pre_hook(lambda _m, a, path=path: calls[path].append(a)) for path, m in modules.items()]
    try:
        for batch in (list(calib_data) if calib_data is not None else [example_inputs]):
            run_eager(model, as_input_tuple(batch, keywords), keywords)
    finally:
        for h in hooks:
            h.remove()
    parts, failed = {}, {}
    for path, m in modules.items():
        if not calls[path]:
            failed[path] = "the calibration batches never reached it"
            continue
        try:
            qm = quantize(m, calls[path][0], recipe, calls[path])
        except QGraphError as e:
            failed[path] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            continue
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, qm)
        parts[path] = qm
    inside = tuple(f"{p}." for p in parts)
    float_layers = [path for path, m in model.named_modules()
                    if path and not path.startswith(inside) and path not in parts
                    and any(p.dim() >= 2 for p in m.parameters(recurse=False))]
    return QuantizedParts(model, parts, failed, float_layers, notes)

