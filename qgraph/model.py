"""QModel: the quantized model. An ``nn.Module`` that runs, trains, summarises and exports itself."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from qgraph.errors import ExportError, ExportMismatchError, ShapeGuardError
from qgraph.export_tolerance import export_tolerance
from qgraph.graph import QGraph
from qgraph.primitives import dequantize_affine
from qgraph.quantizer import FakeQuantize, frozen_weights
from qgraph.recipes import Recipe

EXPORT_FORMATS = ("onnx", "qpack")


@dataclass
class ExportResult:
    onnx_path: str | None
    report_path: str
    onnx_bytes: int
    max_abs_error: float
    tolerance: float
    top1_agreement: float | None
    dynamic_batch: bool = False
    qpack_path: str | None = None
    qpack_bytes: int = 0
    drift: float | None = None  # the model's own rounding drift behind a default tolerance (qgraph.export_tolerance)
    fixed_shapes: str | None = None  # why the file has the example's input shapes although a dynamic batch was asked for
    batch_dims: list[int | None] | None = None  # each tensor input's batch dim, where the file's batch is not dim 0 of every input
    uint8_weights: bool = False  # the file's integer-kernel weights are uint8 (export(uint8_weights=True))
    # ONNX Runtime's error with default session options, where they compute the file differently (a CPU without VNNI)
    default_session_error: float | None = None

    def __str__(self) -> str:
        parts = []
        if self.onnx_path:
            top1 = f", top-1 agreement {self.top1_agreement:.1%}" if self.top1_agreement is not None else ""
            parts.append(f"{self.onnx_path} ({self.onnx_bytes / 1024:.1f} KiB): ONNX Runtime vs qgraph max abs error "
                         f"{self.max_abs_error:.3g} (tolerance {self.tolerance:.3g}){top1}")
        if self.fixed_shapes:
            parts.append(f"input shapes fixed to the example's: {self.fixed_shapes}")
        if self.batch_dims:
            parts.append(f"the batch is dim {', '.join('-' if d is None else str(d) for d in self.batch_dims)} "
                         "of the tensor inputs, in order")
        if self.default_session_error is not None and self.default_session_error > self.tolerance:
            parts.append(default_session_warning(self.default_session_error, self.tolerance))
        if self.qpack_path:
            parts.append(f"{self.qpack_path} ({self.qpack_bytes / 1024:.1f} KiB)")
        return "; ".join(parts)


def default_session_warning(error: float, tolerance: float) -> str:
    return (f"with default session options, ONNX Runtime computes this file {error:.3g} off on this CPU (tolerance "
            f"{tolerance:.3g}): without VNNI its u8·s8 kernels saturate. Open sessions with "
            f"qgraph.backends.ort.session(path, exact_int8=True) (session option session.x64quantprecision=1), "
            f"or export with uint8_weights=True for a file that is exact under any options")


class SummaryText(str):
    """A summary table: a plain ``str`` whose REPL display is the table itself."""

    def __repr__(self) -> str:
        return str(self)


class QModel(nn.Module):
    """A quantized model.

    * call it like the original model (fake-quantized forward);
    * train it (QAT): learnable scales are parameters, weight quantizers follow the weights;
    * ``summary()``: per-node table; ``export(path)``: verified ONNX plus a JSON report;
    * ``with qm.frozen():`` evaluate many batches at fixed weights, each weight fake-quantized once;
    * ``qgraph``: the rewritten :class:`QGraph`; ``changes``: what every pass did.
    """

    def __init__(self, qgraph: QGraph, float_graph: QGraph | None, recipe: Recipe, example_inputs: tuple, changes: list,
                 fold_bn: bool = True) -> None:
        super().__init__()
        self.qgraph = qgraph
        self.recipe = recipe
        self.changes = list(changes)
        self.fold_bn = fold_bn
        # kept out of the module tree: the float reference is not trained or saved with the model
        object.__setattr__(self, "_float_graph", float_graph)
        object.__setattr__(self, "_example", example_inputs)

    @property
    def _example_inputs(self) -> tuple:
        """The example inputs, a fresh copy at each read: the checks and reports run the model on them
        several times, and a model that writes into an input (a static KV cache's ``index_copy_``) and
        returns it would change the inputs of the next run and the outputs already computed."""
        return _copies(self._example)

    def forward(self, *args, **kwargs):
        return self.qgraph(*args, **kwargs)  # a fixed-shape capture called with other shapes: InputError

    def __reduce_ex__(self, protocol):
        import pickle

        raise pickle.PicklingError(
            "a QModel is not pickled (torch.save(qm), pickle.dump): save qm.export(path, formats=('qpack',)) and rebuild "
            "it with qgraph.load(path, model), or torch.save(qm.state_dict()) and load that into "
            "qgraph.quantize(model, example, recipe).load_state_dict(...)")

    def __deepcopy__(self, memo):  # what copy.deepcopy does for a module, without __reduce_ex__
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    def frozen(self):
        """``with qm.frozen(): ...``: every weight is fake-quantized once and reused while it does not
        change (an optimizer step or ``load_state_dict`` does change it; see
        :func:`qgraph.quantizer.frozen_weights`). For evaluating many batches: the outputs are the same
        bit for bit, and weight-heavy models run several times faster (vgg16: 6x the float time per
        batch without it)."""
        return frozen_weights(self)

    # ----------------------------------------------------------------- inspection
    def quantizers(self) -> dict[str, FakeQuantize]:
        return {n: m for n, m in self.qgraph.named_modules() if isinstance(m, FakeQuantize)}

    def summary_rows(self, data=None) -> list[dict]:
        from qgraph.capture import batch_inputs
        from qgraph.summary import summary_rows

        args = batch_inputs(self.qgraph, data) if data is not None else self._example_inputs
        was = self.training
        self.eval()
        try:
            with self.frozen():
                return summary_rows(self.qgraph, self._float_graph, args)
        finally:
            self.train(was)

    def summary(self, data=None) -> SummaryText:
        """Per-node table (op, module path, bits, quantizer, scale range, SQNR vs float on ``data``).

        Returns the table as a string that also displays as itself at the REPL; ``print`` it in scripts.
        """
        from qgraph.summary import format_rows

        if getattr(self.recipe, "bits", None):  # bit-switch model: the table of its current bits
            return self.at_bits().summary(data)
        rows = self.summary_rows(data)
        cap = self.qgraph.capture
        head = f"qgraph {self.recipe.name}: {len(rows)} ops quantized, {len(self.quantizers())} quantizers, {cap.describe()}"
        return SummaryText(head + "\n" + format_rows(rows))

    def report(self, data=None, *, local: bool = True, max_batches: int | None = None, switches: bool = True):
        """Per-layer error report vs the float model on ``data`` (:class:`qgraph.report.Report`):
        ``.table()``, ``.to_json()``, ``.to_html(path)``, ``.ranking``, ``.recipe_overrides(keep, bits)``."""
        from qgraph.report import build_report

        with self.frozen():
            return build_report(self, data, local=local, max_batches=max_batches, switches=switches)

    @torch.no_grad()
    def sync_weight_quantizers(self) -> None:
        """Let fixed-scale weight quantizers re-read weights that moved since their last call (after QAT)."""
        from qgraph.packing import effective_weight, used_state, weight_quantizers

        stale = {k: n for k, n in weight_quantizers(self.qgraph).items() if self.qgraph.get_submodule(n)._refresh}
        if stale:
            state = used_state(self.qgraph)
            for key, name in stale.items():
                if key in state:  # (through its sparsity mask, if any)
                    self.qgraph.get_submodule(name)(effective_weight(self.qgraph, state, key))

    def _snap_biases(self) -> None:
        """Before an export: biases of integer layers back on the int32 grid ONNX Runtime stores them
        on (:func:`qgraph.passes.bias_correction.snap_biases_to_int32_grid`), recorded in ``changes``.
        Post-training biases are there already; training moves them off."""
        from qgraph.meta import FLOAT_BIASES_KEY
        from qgraph.ops import module_path
        from qgraph.passes.base import Change
        from qgraph.passes.bias_correction import snap_biases_to_int32_grid

        if self.qgraph.meta.get(FLOAT_BIASES_KEY):  # a bit-switch model's fixed-bits copy: every bias stays float in the file
            return
        for node, off in snap_biases_to_int32_grid(self.qgraph):
            self.changes.append(Change("export", "rounded", node.name, module_path(node),
                                       f"bias onto the int32 grid s_x·s_w of ONNX Runtime's integer kernel ({off:.2f} steps off)"))

    # ----------------------------------------------------------------- bit switching (recipe "bitswitch")
    def set_bits(self, bits) -> QModel:
        """Switch a bit-switch model to ``bits`` (an int) or per layer (``{"layer3.*": 2}``); see qgraph.bitswitch."""
        from qgraph.bitswitch import set_bits

        set_bits(self, bits)
        return self

    def get_bits(self) -> dict[str, int]:
        """``{layer: current bits}`` of a bit-switch model."""
        from qgraph.bitswitch import get_bits

        return get_bits(self)

    def at_bits(self, bits=None) -> QModel:
        """A fixed-precision copy of a bit-switch model at ``bits`` (default: the current ones), with
        plain quantizers and BatchNorms: what ONNX export runs; see qgraph.bitswitch_export."""
        from qgraph.bitswitch_export import materialize

        return materialize(self, bits)

    # ----------------------------------------------------------------- tasks (qgraph.task_scales)
    def set_task(self, name: str) -> str | None:
        """Use task ``name``'s activation scales (recipe ``tasks(...)``); returns the previous task."""
        from qgraph.task_scales import set_task

        return set_task(self.qgraph, name)

    def task(self, name: str):
        """``with qm.task("denoise"): ...``: run with ``denoise``'s scales, then restore the previous task."""
        from qgraph.task_scales import task

        return task(self.qgraph, name)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task names of a model with task-specific scales (``()`` otherwise)."""
        from qgraph.task_scales import task_names

        return task_names(self.qgraph)

    # ----------------------------------------------------------------- export
    def lowered(self) -> nn.Module:
        """A copy with integer weights (``LowerPass``), as it is handed to the ONNX exporter."""
        from qgraph.passes.lower import LowerPass
        from qgraph.passes.sparsity import FoldMasksPass

        self.sync_weight_quantizers()
        gm = copy.deepcopy(self.qgraph).eval()
        FoldMasksPass().run(gm)
        LowerPass().run(gm)
        return gm

    def export(self, path: str, *, formats: tuple[str, ...] | str = ("onnx", "qpack"), verify: bool = True,
               tolerance: float | None = None, min_top1: float = 0.99, dynamic_batch: bool = True,
               task: str | None = None, uint8_weights: bool = False) -> ExportResult:
        """Write ``path.onnx`` and/or ``path.qpack`` (``formats``), plus ``path.report.json``.

        ONNX: ONNX Runtime runs the file on the example inputs; if its outputs differ from this
        model's by more than ``tolerance`` or top-1 agreement is below ``min_top1``,
        :class:`ExportMismatchError` is raised (the file stays on disk for inspection). The default
        tolerance is the larger of 3 steps of the grids the outputs are on plus 1e-4 of the output
        range, and twice the output change that float-rounding noise at every activation quantizer
        causes (:mod:`qgraph.export_tolerance`; ``ExportResult.drift`` records that change). ``dynamic_batch``: let the batch dimension vary
        where the graph allows (``ExportResult.dynamic_batch`` says whether it does; such a file is
        also run at another batch size, and one whose outputs differ there is an
        :class:`ExportMismatchError`; where the model itself fails at another batch size (its first dims
        are not a batch), or ONNX Runtime cannot run the file there (the exporter fixed a size inside
        the graph), the file gets the example's shapes: ``ExportResult.fixed_shapes`` says why).
        qpack: the file is read back and every rebuilt weight must equal this model's fake-quantized
        weight bit for bit.
        ``uint8_weights``: store the int8 weights of integer kernels as uint8 with zero point 128 (the same
        values). On x86 CPUs without VNNI, ONNX Runtime's default u8·s8 kernels saturate and compute an
        int8 file wrongly unless the session sets ``session.x64quantprecision``; a uint8 file is exact
        under any session options, and slower on CPUs with VNNI. Where this CPU is such a CPU, the check
        also runs the int8 file with default options and records the error in
        ``ExportResult.default_session_error`` (a warning when it is above the tolerance).
        Task-specific scales: the ONNX file is for ``task`` (default: the active task), the qpack holds
        every task's scales. Learned group gains (QSLAW) are folded into the codes first, and the biases
        of layers ONNX Runtime runs as integer kernels are put back on their int32 grid ``s_x · s_w``
        (training moves them off; recorded in ``changes``).
        """
        if isinstance(formats, str):  # formats="onnx": one format, not its letters
            formats = (formats,)
        if getattr(self.recipe, "bits", None):  # a bit-switch model: one INT8 qpack, ONNX at the current bits
            from qgraph.bitswitch_export import export_bitswitch

            return export_bitswitch(self, path, formats=formats, verify=verify, tolerance=tolerance, min_top1=min_top1,
                                    dynamic_batch=dynamic_batch, uint8_weights=uint8_weights)
        unknown = set(formats) - set(EXPORT_FORMATS)
        if unknown or not formats:
            raise ExportError(f"unknown export format(s) {sorted(unknown) or formats}; known: {', '.join(EXPORT_FORMATS)}")
        bad = next((name for name, p in self.qgraph.named_parameters() if torch.isnan(p).any()), None)
        if bad is not None:  # else the check compared NaN with NaN and reported "tolerance nan"
            raise ExportError(f"parameter {bad} holds NaN values (did training diverge? a learning rate too "
                              f"high, or a loss that overflows): there is nothing meaningful to export")
        base = path[:-5] if path.endswith(".onnx") else path[:-6] if path.endswith(".qpack") else path
        os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
        result = ExportResult(onnx_path=None, report_path=base + ".report.json", onnx_bytes=0, max_abs_error=float("nan"),
                              tolerance=0.0, top1_agreement=None, uint8_weights=uint8_weights)
        self.eval()
        with self.frozen():
            self.sync_weight_quantizers()
            self._snap_biases()
            packed, single = self._export_sources(task)
            mismatch = None
            if "onnx" in formats:
                try:
                    single._export_checked_onnx(base + ".onnx", result, verify, tolerance, dynamic_batch, min_top1)
                except ExportMismatchError as e:  # the file and its report stay on disk for inspection
                    mismatch = e
            if "qpack" in formats:
                packed._export_qpack(base + ".qpack", result, verify)
            self._write_report(result)
        if mismatch is not None:
            raise mismatch
        if result.default_session_error is not None and result.default_session_error > result.tolerance:
            warnings.warn(default_session_warning(result.default_session_error, result.tolerance), stacklevel=2)
        return result

    def _export_checked_onnx(self, onnx_path, result, verify, tolerance, dynamic_batch, min_top1) -> None:
        """Export, compare with ONNX Runtime on the example, and check a dynamic batch at another size.
        Where the model itself takes no other batch (its first dims are not batches: a graph's node
        features and edge list), or ONNX Runtime cannot run the file at one the model takes, the file
        is exported again with the example's shapes, and ``result.fixed_shapes`` says why; so is one
        the ONNX exporter cannot write with a dynamic batch (CondConv's ``groups=B``, an attribute)."""
        try:
            agreement, sess = self._export_onnx(onnx_path, result, verify, tolerance, dynamic_batch)
        except ExportError as e:
            if not dynamic_batch or isinstance(e, ExportMismatchError) or self.qgraph.capture.static_batch:
                raise
            try:
                agreement, sess = self._export_onnx(onnx_path, result, verify, tolerance, dynamic_batch=False)
            except ExportError:
                raise e from None  # the first failure is the one to explain
            result.fixed_shapes = f"with a dynamic batch {e}"
        _check_agreement(agreement, result, min_top1)
        if agreement is None:
            return
        if result.dynamic_batch and not self._dim0_holds_samples(result.tolerance):
            # dim 0 varies but is no batch (a sequence-first LSTM's time axis once the file takes any length)
            if self._export_batch_axes(onnx_path, result, verify, tolerance, min_top1):
                return
            agreement, sess = self._export_onnx(onnx_path, result, verify, tolerance, dynamic_batch)
            _check_agreement(agreement, result, min_top1)
        if not result.dynamic_batch:  # the exporter fixed dim 0 (a sequence-first LSTM's time axis): dim 1 may be the batch
            if dynamic_batch and not self._export_batch_axes(onnx_path, result, verify, tolerance, min_top1):
                agreement, sess = self._export_onnx(onnx_path, result, verify, tolerance, dynamic_batch=False)
                _check_agreement(agreement, result, min_top1)
            return
        try:
            self._check_other_batch(sess, result)
            self._separate_batches(sess, result)
        except _ModelRefusesOtherShapes as refused:
            if self._export_batch_axes(onnx_path, result, verify, tolerance, min_top1):
                return
            if type(refused) is _ModelRefusesOtherShapes and self._dim0_batch_without_single_samples(
                    onnx_path, result, verify, tolerance, min_top1):
                return
            agreement, sess = self._export_onnx(onnx_path, result, verify, tolerance, dynamic_batch=False)
            _check_agreement(agreement, result, min_top1)
            result.fixed_shapes = str(refused)

    def _dim0_batch_without_single_samples(self, onnx_path, result, verify, tolerance, min_top1) -> bool:
        """A model that fails at a batch of one where no other layout fits (``x.squeeze()`` drops the batch
        dim too, DeepCTR's cross network): the file keeps dim 0 dynamic where the model and ONNX Runtime
        agree at one sample less than the example."""
        from qgraph.batch_dim import other_batch

        size = other_batch(self._example_inputs)[1][0]
        if size <= 2 or not self._dim0_holds_samples(result.tolerance):
            return False
        agreement, sess = self._export_onnx(onnx_path, result, verify, tolerance, True)
        _check_agreement(agreement, result, min_top1)
        if agreement is None or not result.dynamic_batch:
            return False
        try:
            self._check_other_batch(sess, result, first=size - 1)
            self._separate_batches(sess, result)
        except _ModelRefusesOtherShapes:
            return False
        return True

    def _dim0_holds_samples(self, tolerance: float) -> bool:
        from qgraph.batch_dim import dim0_holds_samples

        return dim0_holds_samples(self._probe, self._example_inputs, tolerance)

    def _export_batch_axes(self, onnx_path, result, verify, tolerance, min_top1) -> bool:
        """Where dim 0 is not the batch of every input, try the layouts of
        :func:`qgraph.batch_dim.batch_axes_guesses`: sequence-first inputs (``nn.LSTM``'s and
        ``nn.Transformer``'s default layout, their ``[layers, N, H]`` states), then a batch-first input
        beside such states. The first one kept is where the model runs with those dims cut to another
        size and ONNX Runtime agrees there; ``result.batch_dims`` says which."""
        from qgraph.batch_dim import batch_axes_guesses

        if self.qgraph.capture.static_batch:
            return False
        for axes in batch_axes_guesses(self._example_inputs):
            try:
                agreement, sess = self._export_onnx(onnx_path, result, verify, tolerance, True, batch_axes=axes)
                _check_agreement(agreement, result, min_top1)
                if agreement is None or not result.dynamic_batch:
                    continue
                self._check_other_batch(sess, result, axes)
            except Exception:  # noqa: BLE001 - the guess was wrong (or the exporter failed on it): try the next
                continue
            result.batch_dims = axes
            return True
        return False

    def _export_sources(self, task: str | None):
        """(model for the qpack, model for ONNX): group gains folded (a copy, when there are any), and
        for ONNX one task's scales (a copy, for models with task-specific scales)."""
        from qgraph.group_scales import folded_copy
        from qgraph.task_scales import single_task_copy

        packed = folded_copy(self)
        return packed, single_task_copy(packed, task)

    def _export_onnx(self, onnx_path, result, verify, tolerance, dynamic_batch, batch_axes=None):
        from qgraph.backends import ort as ort_backend
        from qgraph.backends.onnx_export import batch_is_dynamic, export_onnx

        args = self._example_inputs  # each read a fresh copy: a model may write into its inputs (QModel._example_inputs)
        with torch.no_grad():
            expected = self(*self._example_inputs)
        model = export_onnx(self.lowered(), self._example_inputs, onnx_path, dynamic_batch=dynamic_batch, batch_axes=batch_axes,
                            uint8_weights=result.uint8_weights)
        result.onnx_path, result.onnx_bytes, result.dynamic_batch = onnx_path, os.path.getsize(onnx_path), batch_is_dynamic(model)
        if not verify:
            return None, None
        step = "load"
        try:  # ONNX Runtime's own failures (a fusion it cannot build, a kernel that refuses shapes) name the file
            sess = ort_backend.session(onnx_path, matmulnbits_accuracy_level=0, exact_int8=True)
            step = "run"
            outputs = ort_backend.run(sess, args)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"ONNX Runtime could not {step} the exported file on the example inputs: {first[:600]}. "
                              f"{_low_precision_hint(model, first)}The file is at {onnx_path}") from e
        if tolerance is None:
            default = export_tolerance(self, self._example_inputs, expected)
            tolerance, result.drift = default.value, default.drift
        result.tolerance = tolerance
        try:
            agreement = ort_backend.compare(expected, outputs, tie_tolerance=result.tolerance)
        except ValueError as e:  # output count or shapes differ: the file does not compute this model
            raise ExportError(f"ONNX Runtime's outputs do not line up with the model's: {e}. The file is at {onnx_path}") from e
        result.max_abs_error, result.top1_agreement = agreement.max_abs_error, agreement.top1_agreement
        result.default_session_error = ort_backend.default_session_error(model, onnx_path, args, expected)
        return agreement, sess  # the session, for the other-batch check

    def _check_other_batch(self, sess, result, axes: list[int | None] | None = None, first: int = 1) -> None:
        """A file that claims a dynamic batch must run at another batch size than the example's too:
        an exporter can keep the batch symbolic yet write shapes that only hold for the example's size
        (torch 2.11 with a single-sample example, pytorch/pytorch#180202). Token inputs and time series
        whose length the file leaves dynamic (``sequence``) are run one step shorter in the same call (longer, padded
        with zeros, for a graph that packs sequences). ``axes``: the
        batch dims where they are not dim 0 (:func:`qgraph.batch_dim.batch_axes_guesses`). ``first``: the
        other batch's size (1; where the model refuses a batch of one, one less than the example's)."""
        from qgraph.backends import ort as ort_backend
        from qgraph.batch_dim import other_batch, shorter_sequences
        from qgraph.packed_sequences import packing_note

        batch_only, (size, new_size) = other_batch(self._example_inputs, axes, first)
        seq_dims = [1 - (a or 0) for a in axes] if axes is not None else [1] * len(sess.get_inputs())
        claims = [len(i.shape) in (2, 3) and d in (0, 1) and isinstance(i.shape[d], str) and i.shape[d] in ("sequence", f"{i.name}_sequence")
                  for i, d in zip(sess.get_inputs(), seq_dims)]
        longer = packing_note(self.qgraph) is not None  # a padded batch's rows may fill the example's length
        if (any(claims) and self.qgraph.capture.route == "torch.export"  # the one route that leaves shape guards
                and self._guards_sequence(shorter_sequences(batch_only, claims, axes, longer=longer, half=True)[0])):
            # torch.export took only a range of lengths around the example's (a Switch MoE's capacity
            # int(1.5 * s / 4)) and the file holds values derived from the example's: it must not claim others
            _fix_sequence_dims(result.onnx_path, claims, seq_dims, self._example_inputs)
            claims = [False] * len(claims)
        other, shortened = shorter_sequences(batch_only, claims, axes, longer=longer)
        fix = f"; export with dynamic_batch=False for a file with fixed input shapes. The file is at {result.onnx_path}"
        try:
            expected = self._probe(other)
        except Exception as e:  # noqa: BLE001 - the model itself refuses the shapes the file claims to take
            if not shortened:
                raise _ModelRefusesOtherShapes(new_size, e) from e
            # the model takes only the example's length (one input's length fixed, the others tied to
            # it; a time series that reads fixed steps): the file says so, and the batch is checked alone
            _fix_sequence_dims(result.onnx_path, claims, seq_dims, self._example_inputs)
            other, shortened = batch_only, 0
            try:
                expected = self._probe(other)
            except Exception as e:  # noqa: BLE001 - nor another batch
                raise _ModelRefusesOtherShapes(new_size, e) from e
        at = f"a batch of {new_size}" + (f" with sequence inputs one step {'longer' if longer else 'shorter'}" if shortened else "")
        why = f"ONNX Runtime runs the file at the example's batch of {size} but not at {at}"
        try:
            got = ort_backend.run(sess, other)
        except Exception as e:  # noqa: BLE001 - a shape error inside ONNX Runtime: the exporter fixed a size the model varies
            raise _FileRefusesOtherShapes(f"{why} ({_first_line(e)}), although the model does: the exporter fixed a size "
                                          f"inside the graph") from e
        try:
            agreement = ort_backend.compare(expected, got, tie_tolerance=result.tolerance)
        except Exception as e:  # noqa: BLE001 - outputs that do not line up
            raise ExportMismatchError(f"{why}: {_first_line(e)}{fix}") from e
        if agreement.max_abs_error > result.tolerance:
            raise ExportMismatchError(f"{why}: {agreement}; tolerance {result.tolerance:.3g}{fix}")

    def _guards_sequence(self, args: tuple) -> bool:
        """Whether an equality among the capture's shape guards refuses ``args`` (sequences at half or
        twice the example's length): the graph holds a value computed from the example's length, which
        a probe one step shorter misses where the value is the same there. An inequality (``s > 4``
        from ``if ids.shape[1] > 4``) is a range the graph is right for, as before."""
        try:
            self._probe(args)
        except ShapeGuardError as e:
            return " == " in e.guard
        except Exception:  # noqa: BLE001 - the model's own refusal is judged by the one-step check
            return False
        return False

    def _probe(self, args: tuple):
        """The outputs on inputs of sizes the model may refuse. torch.fx prints the generated code of a
        failing graph line to stderr before the exception reaches the caller; a probe's failure is an
        answer, not an error, so that print is swallowed. It runs on copies of ``args`` (which may be
        views of the example inputs), which a model may write into."""
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            return self(*_copies(args))

    def _separate_batches(self, sess, result) -> None:
        """An input whose first dim does not have to match the other inputs' (CLIP's images against its
        texts, a table of class embeddings) gets a dim name of its own instead of ``batch``, and so do
        the output dims that follow it: where the quantized model runs it at another size than the
        rest, and ONNX Runtime, given the renamed file, does too and agrees. One name for two sizes
        tells runtimes they are equal (ONNX Runtime plans memory by it and failed on such a file)."""
        import onnx
        from torch.utils import _pytree as pytree

        from qgraph.backends import ort as ort_backend

        inputs = sess.get_inputs()
        batched = [k for k, i in enumerate(inputs) if i.shape and i.shape[0] == "batch"]
        if len(batched) < 2:
            return
        flat, spec = pytree.tree_flatten(self._example_inputs)
        slots = [k for k, t in enumerate(flat) if isinstance(t, torch.Tensor)]
        own: dict[str, str] = {}  # input name -> its own dim name
        outputs: dict[int, dict[int, str]] = {}  # output index -> {dim: name}
        trials = []
        for k in batched[1:]:  # the first keeps "batch"
            sized = list(flat)
            for j in batched:
                t, n = flat[slots[j]], 2 if j == k else 3
                sized[slots[j]] = torch.cat([t] * n)[:n]
            args = pytree.tree_unflatten(sized, spec)
            try:
                expected = self._probe(args)
            except Exception:  # noqa: BLE001 - its size is tied to the other inputs'
                continue
            name = own[inputs[k].name] = f"{inputs[k].name}_batch"
            trials.append((args, expected))
            got = [t for t in pytree.tree_leaves(expected) if isinstance(t, (torch.Tensor, bool, int, float))]
            for o, t in enumerate(got):
                for d, size in enumerate(getattr(t, "shape", ())):
                    if size == 2:
                        outputs.setdefault(o, {})[d] = name
        if not own:
            return
        original = onnx.load(result.onnx_path)
        _rename_batch_dims(result.onnx_path, own, outputs)
        try:
            renamed = ort_backend.session(result.onnx_path, matmulnbits_accuracy_level=0, exact_int8=True)
            ok = all(ort_backend.compare(e, ort_backend.run(renamed, a), tie_tolerance=result.tolerance).max_abs_error
                     <= result.tolerance for a, e in trials)
        except Exception:  # noqa: BLE001 - the graph itself ties the sizes: keep the file as it was
            ok = False
        if not ok:
            onnx.save(original, result.onnx_path)

    def _export_qpack(self, qpack_path, result, verify):
        from qgraph import packing
        from qgraph.backends.qpack import read_qpack

        result.qpack_path, result.qpack_bytes = qpack_path, packing.write(self, qpack_path)
        if not verify:
            return
        stored = read_qpack(qpack_path).packed
        state = packing.used_state(self.qgraph)
        for key, qname in packing.weight_quantizers(self.qgraph).items():
            q = self.qgraph.get_submodule(qname)
            weight = packing.effective_weight(self.qgraph, state, key)
            p = stored[key]
            with torch.no_grad():
                rebuilt = dequantize_affine(torch.from_numpy(p.codes), torch.from_numpy(p.scale.astype("float32")),
                                            torch.from_numpy(p.zero_point.astype("float32")), p.qmin, p.qmax, q.spec.granularity)
                if weight is not None and not torch.equal(rebuilt, q(weight)):
                    raise ExportError(f"qpack round trip changed weight {key}: rebuilt values differ from the fake-quantized weight")

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


class _ModelRefusesOtherShapes(Exception):
    """The quantized model itself fails on the example cut to another batch size: its first dims are
    not (only) a batch, e.g. a graph network's node features and ``[2, edges]`` edge list."""

    def __init__(self, size: int, cause: BaseException) -> None:
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        super().__init__(f"the model itself fails at a batch of {size} ({type(cause).__name__}: {first})")


class _FileRefusesOtherShapes(_ModelRefusesOtherShapes):
    """The model runs at another batch size but ONNX Runtime cannot run the dynamic file there: the
    exporter wrote a size of the example into the graph (a sequence-first ``nn.LSTM`` input, whose
    dim 0 is the sequence, which the LSTM translation fixes)."""

    def __init__(self, why: str) -> None:
        Exception.__init__(self, why)


def _copies(args):
    """``args`` with every tensor cloned (``QModel._example_inputs``)."""
    from torch.utils import _pytree as pytree

    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, args)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _check_agreement(agreement, result: ExportResult, min_top1: float) -> None:
    if agreement is None:
        return
    bad_top1 = agreement.top1_agreement_up_to_ties is not None and agreement.top1_agreement_up_to_ties < min_top1
    if agreement.max_abs_error > result.tolerance or bad_top1:
        raise ExportMismatchError(
            f"ONNX Runtime disagrees with the quantized model on the example inputs: {agreement}; "
            f"tolerance {result.tolerance:.3g}, minimum top-1 agreement {min_top1:.0%}. The file is at {result.onnx_path}"
        )


def _fix_sequence_dims(path: str, claims: list[bool], seq_dims: list[int], example: tuple) -> None:
    """Write the example's lengths (dim ``seq_dims[k]``) into the file's inputs flagged in ``claims``
    (one flag per tensor input): the model refuses other lengths, so the file must not claim them."""
    import onnx
    from torch.utils import _pytree as pytree

    tensors = [t for t in pytree.tree_leaves(example) if isinstance(t, torch.Tensor)]
    model = onnx.load(path)
    for inp, claim, d, t in zip(model.graph.input, claims, seq_dims, tensors):
        if claim:
            inp.type.tensor_type.shape.dim[d].dim_value = int(t.shape[d])
    onnx.save(model, path)


def _rename_batch_dims(path: str, inputs: dict[str, str], outputs: dict[int, dict[int, str]]) -> None:
    """Give dim 0 of the named inputs, and the listed ``batch`` dims of outputs, their own names."""
    import onnx

    model = onnx.load(path)
    for inp in model.graph.input:
        if inp.name in inputs:
            inp.type.tensor_type.shape.dim[0].dim_param = inputs[inp.name]
    for o, dims in outputs.items():
        shape = model.graph.output[o].type.tensor_type.shape.dim if o < len(model.graph.output) else []
        for d, name in dims.items():
            if d < len(shape) and shape[d].dim_param == "batch":
                shape[d].dim_param = name
    onnx.save(model, path)


def _low_precision_hint(model, error: str) -> str:
    """Why ONNX Runtime may lack a kernel: the file computes in bfloat16 (a cast in ``forward``; autocast
    regions are computed in float32 already, ``passes/autocast_float32.py``), which its CPU provider has
    no MatMul or Gemm kernel for."""
    import onnx

    if "NOT_IMPLEMENTED" not in error:
        return ""
    bf16 = onnx.TensorProto.BFLOAT16
    typed = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    if not any(v.type.tensor_type.elem_type == bf16 for v in typed) and not any(
            a.name == "to" and a.i == bf16 for n in model.graph.node if n.op_type == "Cast" for a in n.attribute):
        return ""
    return ("The file computes in bfloat16 (the model casts to it in forward), and ONNX Runtime's CPU provider has no "
            "bfloat16 kernel for that op. Compute that part in float32 for export, or run the file on a provider with "
            "bfloat16 kernels. ")
