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
import fnmatch
import glob
import os
import re
from collections.abc import Iterable
from dataclasses import replace

from torch import nn

from qgraph.errors import CaptureError, InputError, QGraphError
from qgraph.recipes import Override, build_recipe


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


def _in_part(user: list[Override], part: str, module_paths: list[str]) -> list[Override]:
    """The user's overrides, written with the whole model's module paths, for the part at ``part``: one
    per module of the part whose full path a ``name``/``regex`` override matches, by its exact path
    inside the part (so the part's recipe, stored in its qpack, reads right for the part alone).
    Overrides by op kind or module type alone apply to every part unchanged."""
    out = []
    for o in user:
        if o.name is None and o.regex is None:
            out.append(o)
            continue
        for rel in module_paths:
            full = f"{part}.{rel}" if rel else part
            if (o.name is None or fnmatch.fnmatchcase(full, o.name)) and (o.regex is None or re.search(o.regex, full)):
                out.append(replace(o, name=glob.escape(rel), regex=None))
    return out


def _ops_seen(part: str, qm) -> list[tuple[str, str, type | None]]:
    """``(full module path, kind, module type)`` of every quantizable op of a quantized part."""
    from qgraph.ops import classify, owner_type

    gm = qm._float_graph
    infos = [i for i in (classify(gm, n) for n in gm.graph.nodes) if i is not None]
    return [(f"{part}.{i.module_path}" if i.module_path else part, i.kind, owner_type(gm, i.module_path)) for i in infos]


def quantize_parts(model: nn.Module, example_inputs, recipe="w8a8", calib_data: Iterable | None = None, *,
                   overrides: Iterable[Override] | None = None, skip: Iterable[str] | str | None = None,
                   budget_s: float = 120.0) -> QuantizedParts:
    """Quantize each part of ``model`` that captures alone (see the module docstring). ``calib_data``:
    batches for the whole model, as for ``quantize``; each part calibrates on the inputs it receives
    from them. ``overrides`` and ``skip`` as for ``quantize``, with the whole model's module paths
    (``skip=["roi_heads.box_predictor.*"]``); a part all of whose ops are skipped stays float. The input
    model is not modified. Raises :class:`CaptureError` when no part captures."""
    from torch.nn.utils import prune

    from qgraph.api import _check_user_overrides, quantize
    from qgraph.capture import as_input_tuple, run_eager
    from qgraph.capture_parts import capturable_parts
    from qgraph.keyword_inputs import is_keyword_inputs, ordered_keywords
    from qgraph.model_wrappers import unwrap
    from qgraph.weight_hooks import copy_with_plain_weights

    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module to quantize, got {type(model).__name__}")
    model, _ = unwrap(model)
    base = build_recipe(recipe)
    user = list(build_recipe(base, overrides, skip).overrides[len(base.overrides):])  # the user's, skips last
    model, notes, masks = copy_with_plain_weights(model)
    model.eval()
    if is_keyword_inputs(example_inputs):
        named = ordered_keywords(model.forward, example_inputs)
        keywords, args = tuple(named), tuple(named.values())
    else:
        keywords, args = None, as_input_tuple(example_inputs)
    found = capturable_parts(model, args, keywords, budget_s=budget_s)
    if not found:
        raise CaptureError(f"no part of {type(model).__name__} with weights captures on its own")
    for path, mask in masks.items():  # pruned again, so that each part's quantize keeps the masks (PruneMasksPass)
        prune.custom_from_mask(model.get_submodule(path), "weight", mask)
    modules = {p.path: model.get_submodule(p.path) for p in found}
    calls: dict[str, list[tuple]] = {path: [] for path in modules}
    hooks = [m.register_forward_pre_hook(lambda _m, a, path=path: calls[path].append(a)) for path, m in modules.items()]
    try:
        for batch in (list(calib_data) if calib_data is not None else [example_inputs]):
            run_eager(model, as_input_tuple(batch, keywords), keywords)
    finally:
        for h in hooks:
            h.remove()
    parts, failed, seen = {}, {}, []
    for path, m in modules.items():
        if not calls[path]:
            failed[path] = "the calibration batches never reached it"
            continue
        own = _in_part(user, path, [rel for rel, _ in m.named_modules()])
        try:
            qm = quantize(m, calls[path][0], base.with_overrides(*own) if own else base, calls[path])
        except QGraphError as e:
            failed[path] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            continue
        seen += _ops_seen(path, qm)
        if not qm.quantizers():
            failed[path] = "every op skipped by skip= or overrides; it stays float"
            continue
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, qm)
        parts[path] = qm
    _check_user_overrides(user, seen)
    inside = tuple(f"{p}." for p in parts)
    float_layers = [path for path, m in model.named_modules()
                    if path and not path.startswith(inside) and path not in parts
                    and any(p.dim() >= 2 for p in m.parameters(recurse=False))]
    return QuantizedParts(model, parts, failed, float_layers, notes)

