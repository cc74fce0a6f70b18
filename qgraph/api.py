"""The one call: ``qgraph.quantize(model, example_inputs, recipe, calib_data)``."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from qgraph.capture import as_input_tuple, trace
from qgraph.capture_checks import training_branches
from qgraph.errors import InputError, RecipeError
from qgraph.keyword_inputs import is_keyword_inputs, ordered_keywords
from qgraph.model import QModel
from qgraph.model_wrappers import unwrap
from qgraph.precision import float32_inputs
from qgraph.recipes import Override, Recipe, build_recipe
from qgraph.weight_hooks import copy_with_plain_weights


@torch.inference_mode(False)  # called inside a user's inference_mode block: its state must be ordinary tensors
def quantize(
    model: nn.Module,
    example_inputs,
    recipe: str | Recipe | list = "w8a8",
    calib_data: Iterable | None = None,
    *,
    overrides: Iterable[Override] | None = None,
    skip: Iterable[str] | str | None = None,
    qat: bool = False,
    fold_bn: bool = True,
    sync_ranks: bool | None = None,
) -> QModel:
    """Quantize ``model`` and return a :class:`QModel`.

    ``example_inputs``: a tensor or tuple of positional tensors the model accepts, or a mapping of
    ``forward``'s arguments by name (a dict, a tokenizer's ``BatchEncoding``): the quantized model then
    takes those arguments (``qm(**batch)`` or positionally, in ``forward``'s order), and calibration
    batches may be mappings with the same keys.
    ``recipe``: a name (``qgraph.list_recipes()``) or a :class:`Recipe`, or a list composing a
    sparsity recipe with a quantization recipe (``["nm(2,4)", "w8a8"]``); ``overrides`` refine it
    (:class:`Override`), ``skip`` lists module-path globs that stay float.
    ``calib_data``: an iterable of batches (a tensor, a tuple of tensors or a mapping by name each) for post-training
    calibration (one tensor is one batch, or a stack of batches with one more dim than the example); without it
    the example inputs calibrate. With the ``tasks(...)`` recipe it is a mapping ``{task: batches}`` and each
    task's scales come from its own batches. ``qat=True`` makes scales learnable (LSQ) so the returned model
    can be trained. The input model is not modified.
    ``sync_ranks``: under ``torch.distributed`` (several ranks), every rank calls ``quantize`` with
    its own calibration shard and the ranks end with identical quantizers (statistics reduced over
    all ranks, then state broadcast from rank 0; :mod:`qgraph.distributed`). The default ``None`` does
    this whenever a process group of several ranks is initialised; ``False`` calibrates this rank alone.
    """
    from qgraph.distributed import broadcast_state, should_sync
    from qgraph.passes.pipeline import calibrate

    sync = should_sync(sync_ranks)
    qm = prepare(model, example_inputs, recipe, overrides=overrides, skip=skip, qat=qat, fold_bn=fold_bn)
    keywords = qm.qgraph.capture.keywords
    if isinstance(calib_data, torch.Tensor):
        calib_data = _tensor_batches(calib_data, qm._example_inputs)
    if isinstance(calib_data, Mapping) and keywords and set(calib_data) <= set(keywords):
        calib_data = [calib_data]  # one batch of inputs by name (a tokenizer's BatchEncoding), not {task: batches}
    if isinstance(calib_data, Mapping):  # {task: batches} for task-specific scales (recipe "tasks(...)")
        from qgraph.passes.task_scales import calibrate_tasks

        qm.changes += calibrate_tasks(qm.qgraph, calib_data, sync)
    else:
        batches = list(calib_data) if calib_data is not None else [qm._example_inputs]
        if not batches:
            raise InputError("calib_data is empty")
        qm.changes += calibrate(qm.qgraph, batches, sync, bias_correction=qm.recipe.bias_correction and not qat)
    if sync:
        broadcast_state(qm.qgraph)
    qm.eval()
    if qat:
        qm.train()
    return qm


def _tensor_batches(calib: torch.Tensor, example: tuple) -> list:
    """``calib_data`` given as one tensor: iterating it would yield samples without their batch dim, so
    it is one batch where it has the example's rank, and a stack of batches where it has one more."""
    shape = list(calib.shape)
    if len(example) == 1 and isinstance(example[0], torch.Tensor):
        rank = example[0].dim()
        if calib.dim() == rank:
            return [calib]
        if calib.dim() == rank + 1:
            return list(calib)
        raise InputError(f"calib_data is one tensor of shape {shape}, and the example input has {rank} dims: give a "
                         f"batch of the example's rank, a stack of such batches, or a list of batches")
    raise InputError(f"calib_data is one tensor of shape {shape}, but the model takes {len(example)} inputs: give a list "
                     f"of batches, each a tuple of the model's inputs")


@torch.inference_mode(False)
def prepare(
    model: nn.Module,
    example_inputs,
    recipe: str | Recipe | list = "w8a8",
    *,
    overrides: Iterable[Override] | None = None,
    skip: Iterable[str] | str | None = None,
    qat: bool = False,
    fold_bn: bool = True,
) -> QModel:
    """Capture and rewrite ``model`` with quantizers that are not calibrated yet (``quantize`` without
    its calibration step; ``qgraph.load`` fills the quantizers from a file instead)."""
    from qgraph.passes.annotate import AnnotatePass
    from qgraph.passes.pipeline import prepare_passes, run_float_rewrites, run_passes

    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module to quantize, got {type(model).__name__}")
    if isinstance(model, QModel):
        raise InputError(f"the model is already quantized (a QModel with recipe {model.recipe.name!r}): quantize the float "
                         f"model it was made from")
    r = build_recipe(recipe, overrides, skip)
    fold_bn = fold_bn and not getattr(r, "bits", None)  # bit-switch recipes keep one BatchNorm per bit width
    if qat:
        r = r.with_learnable_scales()
    model, unwrapped = unwrap(model)  # before the copy: a DistributedDataParallel wrapper holds a process group
    model, plain, prune_masks = copy_with_plain_weights(model)  # a deep copy; pruned or weight-normed weights as parameters
    qg = trace(model.eval(), example_inputs, owns_model=True)
    qg.capture.notes[:0] = [n for n in (unwrapped, *plain) if n]
    if qat and (branches := training_branches(model)):
        qg.capture.notes.append(f"QAT trains the graph captured in eval mode: forward of {', '.join(branches)} reads "
                                "self.training, and code that runs only in training mode there (data augmentation, "
                                "F.dropout(..., training=self.training)) is not in the graph; nn.Dropout modules still run")
    args = as_input_tuple(example_inputs, qg.capture.keywords)  # a dict: bound by name, in the graph's order
    if qg.capture.upcast:
        args = float32_inputs(args)
    passes = prepare_passes(r, set(qg.capture.leaves), fold_bn=fold_bn, prune_masks=prune_masks)
    split = sum(p.float_rewrite for p in passes)  # canonicalize, sorted_topk, fold_weights (+ fold_bn): the float reference graph
    changes = run_float_rewrites(qg, passes[:split], args)
    float_graph = copy.deepcopy(qg)
    changes += run_passes(qg, passes[split:])
    seen = next((p.seen for p in passes if isinstance(p, AnnotatePass)), None)
    _check_user_overrides(r.overrides[len(r.overrides) - len(list(overrides or [])) - len(_globs(skip)):], seen)
    return QModel(qg, float_graph, r, args, changes, fold_bn=fold_bn)


def _globs(skip) -> list[str]:
    return [skip] if isinstance(skip, str) else list(skip or [])


def _check_user_overrides(user: Iterable[Override], seen: list[tuple[str, str, type | None]] | None) -> None:
    """A skip glob or an override by module path (``name=``, ``regex=``) that matches no quantizable op is a
    typo or a stale path: without this error the layer the user meant to keep float would be quantized
    silently. Overrides by op kind or module type alone are policies for any model and may match nothing.
    ``seen``: ``(module path, kind, module type)`` of every quantizable op (``AnnotatePass.seen``)."""
    if seen is None:  # bit-switch recipes annotate in their own pass
        return
    for o in user:
        if (o.name is None and o.regex is None) or any(o.matches(*op) for op in seen):
            continue
        paths = sorted({path for path, _, _ in seen if path})
        keys = ", ".join(f"{k}={getattr(o, k)!r}" for k in ("name", "regex") if getattr(o, k) is not None)
        what = f"skip {o.name!r}" if o.skip and o.regex is None and o.op is None and o.module_type is None else f"Override({keys})"
        close = difflib.get_close_matches(o.name or o.regex, paths, n=5, cutoff=0.5)
        hint = f"; close module paths: {', '.join(close)}" if close else (f"; module paths of quantizable ops: "
                                                                          f"{', '.join(paths[:8])}{', ...' if len(paths) > 8 else ''}")
        raise RecipeError(f"{what} matches none of the model's {len(seen)} quantizable ops{hint}")


def export_onnx(model: nn.Module, example_inputs, path: str, dynamic_batch: bool = True):
    """Export any module to ONNX the way qgraph exports quantized ones (opset 21, one file, no
    exporter debug metadata), e.g. the FP32 baseline a quantized file is compared with.
    ``example_inputs`` may be a mapping of ``forward``'s arguments by name (the file's inputs are then
    named after them). A model with LSTM/GRU/RNN layers, or one that packs sequences
    (``pack_padded_sequence``), is exported through qgraph's capture, whose graph the ONNX export
    writes with one ONNX recurrent op per layer: on tensors, its time axis stays dynamic with the batch
    (``torch.export`` fixes it at the example's length). Returns the ``onnx.ModelProto``.
    """
    from qgraph.backends.onnx_export import export_onnx as _export
    from qgraph.errors import ExportError

    model, _ = unwrap(model)
    if is_keyword_inputs(example_inputs):
        named = ordered_keywords(model.forward, example_inputs)
        return _export(model.eval(), (), path, dynamic_batch=dynamic_batch, kwargs=named)
    args = as_input_tuple(example_inputs)
    if dynamic_batch and any(isinstance(m, nn.RNNBase) for m in model.modules()):
        graph = _recurrent_graph(model.eval(), args)
        if graph is not None:
            return _export(graph, args, path, dynamic_batch=dynamic_batch, batch_axes=_float_batch_axes(graph, args))
    try:
        return _export(model.eval(), args, path, dynamic_batch=dynamic_batch)
    except ExportError as failure:
        # torch.export cannot trace pack_padded_sequence; qgraph's capture keeps it an opaque call,
        # which the export writes as ONNX recurrent ops (qgraph.recurrent_export)
        graph = _recurrent_graph(model, args, packed=True)
        if graph is None:  # not capturable, or no packing: the exporter's own error stands
            raise failure from failure.__cause__
        return _export(graph, args, path, dynamic_batch=dynamic_batch)


def _float_batch_axes(graph, args: tuple) -> list[int | None] | None:
    """The batch dims of a float recurrent graph's inputs: None (dim 0) where reversing dim 0 reverses
    the outputs, else the first other layout (sequence-first inputs: ``nn.LSTM``'s default). Unverified,
    as the float export is: ``QModel.export`` checks its layout in ONNX Runtime."""
    from torch.utils import _pytree as pytree

    from qgraph.batch_dim import batch_axes_guesses, dim0_holds_samples

    def run(a):
        with torch.no_grad():
            return graph(*a)

    scale = max((float(t.abs().max()) for t in pytree.tree_leaves(run(args)) if isinstance(t, torch.Tensor)), default=0.0)
    if dim0_holds_samples(run, args, 1e-5 * scale + 1e-7):
        return None
    return (batch_axes_guesses(args) or [None])[0]


def _recurrent_graph(model: nn.Module, args: tuple, packed: bool = False):
    """qgraph's float capture of ``model`` with its recurrent layers rewritten to ``run_recurrent`` /
    ``run_packed`` (canonicalize), or None where it does not capture or has no such layers (``packed``:
    none on packed sequences)."""
    from qgraph.packed_sequences import packing_note
    from qgraph.passes.canonicalize import CanonicalizePass
    from qgraph.passes.pipeline import run_float_rewrites
    from qgraph.recurrent import run_recurrent

    try:
        graph = trace(model, args)
    except Exception:  # noqa: BLE001 - the caller falls back to the plain export
        return None
    if packed and packing_note(graph) is None:
        return None
    run_float_rewrites(graph, [CanonicalizePass(set(graph.capture.leaves))], args)  # run_recurrent / run_packed
    if not packed and not any(n.target is run_recurrent for n in graph.graph.nodes):
        return None
    return graph
