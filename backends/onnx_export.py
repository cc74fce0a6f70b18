"""Export a (lowered) quantized graph to ONNX with QDQ and integer initializers.

Opset 21 (IR 10) by default; a graph with 2-bit weights is exported at opset 25 (IR 13), the first
opset with INT2/UINT2, so its codes are stored four to a byte.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings

import onnx
import torch
from qgraph.backends.onnx_fold import fold_constant_quantization
from qgraph.backends.onnx_ops import INT2_OPSET, is_2bit, translation_table
from qgraph.backends.onnx_runtime_rules import prepare_for_onnxruntime
from qgraph.backends.onnx_uint8_weights import uint8_weights as to_uint8_weights

from qgraph.batch_dim import batch_dynamic_shapes, doubled, single_sample
from qgraph.errors import ExportError
from qgraph.export_route import quiet_torch_export
from qgraph.meta import CAPTURE_KEY, FLOAT_BIASES_KEY
from qgraph.ops import module_path, tensor_meta
from qgraph.packed_sequences import packing_export_failure
from qgraph.recurrent_export import exportable_recurrence, state_inputs

OPSET = 21
IR_VERSION = 10  # ONNX Runtime rejects onnx.helper's newer default
# the IR version written for an opset: the lowest that allows it (ONNX Runtime 1.32 reads IR <= 13)
IR_FOR_OPSET = {21: 10, 22: 10, 23: 11, 24: 12, 25: 13, 26: 13}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILED_NODE = re.compile(r"translating node %(\S+) : .*?target=(?:torch\.ops\.)?([\w.:]+?)(?:\.default)?\]")


def exporter_failure(e: BaseException, gm: torch.nn.Module) -> str:
    """What the ONNX exporter's error means, in one message: the graph node it failed on (with the
    model's module path that calls it) and the innermost cause. The exporter's own first line is a
    generic "Failed to convert ... step 3/3" and the cause sits in its chained exceptions."""
    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    text = [_ANSI.sub("", str(c)) for c in chain]
    root = chain[-1]
    cause = f"{type(root).__name__}: {text[-1].strip().splitlines()[0] if text[-1].strip() else ''}"
    step = (text[0].strip().splitlines() or [""])[0].removesuffix(" Next steps:").strip()
    where = ""
    m = next((m for t in text for m in [_FAILED_NODE.search(t)] if m), None)
    if m is not None:
        node, op = m.groups()
        nodes = gm.graph.nodes if isinstance(getattr(gm, "graph", None), torch.fx.Graph) else []
        paths = sorted({module_path(n) or "the model's own forward" for n in nodes if op in str(n.target)})
        at = f", called in {', '.join(paths[:5])}{' and others' if len(paths) > 5 else ''}" if paths else ""
        where = f" on node %{node} (op {op}{at})"
    text = f"the ONNX exporter failed{where}: {cause}" + (f" [{type(e).__name__}: {step}]" if step else "")
    complex_at = _complex_node(gm)
    if complex_at:
        text += (f" The graph computes with complex tensors ({complex_at}): ONNX has no complex type, and the exporter "
                 "translates only some complex ops (FFTs, elementwise arithmetic of two complex tensors), not a complex "
                 "Python scalar factor (`1j * x`), a complex einsum, matmul or slice assignment. The usual way out is to "
                 "compute such products on the real and imaginary parts as real tensors; a kernel built from parameters "
                 "alone (S4D's) can be computed once and stored as a real buffer.")
    text += _leaves_hint(gm, text)
    packing = packing_export_failure(gm) if isinstance(getattr(gm, "graph", None), torch.fx.Graph) else None
    if packing:  # the likely cause, in the user's terms, first
        return f"{packing}. The exporter's error: {text}"
    return text


def _leaves_hint(gm: torch.nn.Module, error: str) -> str:
    """Where the exporter failed on data-dependent code and the graph calls leaves: those leaves, with why
    symbolic tracing could not follow them (the file and line). The exporter traces into a leaf with
    torch.export, which cannot follow a branch on tensor values either."""
    capture = getattr(gm, "meta", {}).get(CAPTURE_KEY)
    if capture is None or not capture.leaves or "data-dependent" not in error.lower():
        return ""
    listed = "; ".join(f"{leaf}: {why}" for leaf, why in capture.leaves.items())
    return (f" The graph calls code kept opaque at capture ({listed}); the exporter traces into it and fails where it "
            "branches on tensor values. An ONNX file needs that branch as torch.cond or torch.where, or out of forward; "
            "the quantized model itself runs in PyTorch.")


def _complex_node(gm: torch.nn.Module) -> str | None:
    """The first graph node with a complex value or a complex parameter it reads, as "%node in path"."""
    if not isinstance(getattr(gm, "graph", None), torch.fx.Graph):
        return None
    for n in gm.graph.nodes:
        tm = tensor_meta(n)
        if tm is not None and tm[1] is not None and tm[1].is_complex:
            path = module_path(n)
            return f"%{n.name}" + (f" in {path}" if path else "")
    return None


def export_onnx(gm: torch.nn.Module, args: tuple, path: str, opset: int | None = None, dynamic_batch: bool = True,
                kwargs: dict | None = None, batch_axes: list[int | None] | None = None, uint8_weights: bool = False) -> onnx.ModelProto:
    """Export ``gm`` on ``args`` to ``path`` (one self-contained file) and return the model.

    ``opset``: by default 21, or 25 when the graph dequantizes 2-bit weights (INT2 initializers);
    an explicit opset below 25 keeps 2-bit weights in int4 containers.
    With ``dynamic_batch`` the first dimension of every tensor input may vary (named ``batch`` in
    the file) where the graph allows it; a ``torch.export`` capture whose batch the exporter fixed
    (``capture.static_batch``: its graph may hold the batch size as a constant) keeps the example
    batch size. ``batch_is_dynamic(model)`` tells which happened. The sequence length of token inputs
    (2-D integer tensors) is left dynamic too (named ``sequence``), unless the capture fixed it.
    ``kwargs``: inputs given by name (``args`` is then empty), which the file's inputs are named after.
    ``batch_axes``: the batch dim of each tensor input where it is not dim 0 (sequence-first models:
    :func:`qgraph.batch_dim.sequence_first_axes`); a token input's sequence is then its other dim.
    ``uint8_weights``: store the int8 weights of integer kernels as uint8 with zero point 128 (rule 15,
    :mod:`qgraph.backends.onnx_uint8_weights`): ONNX Runtime then computes them exactly under any session
    options, also on x86 CPUs without VNNI.
    """
    _refuse_sparse_inputs(gm, args, kwargs)
    if _has_recurrent_layers(gm):
        # The exporter decomposes LSTM/GRU into torch's while_loop, which compiles its body with dynamo.
        # State left by earlier exports in the process made later ones fix the batch (the third LSTM
        # export in one process came out static); from a clean state each export is the same.
        torch._dynamo.reset()
    if opset is None:
        opset = INT2_OPSET if has_2bit_weights(gm) else OPSET
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    capture = getattr(gm, "meta", {}).get(CAPTURE_KEY)
    if capture is not None and capture.static_batch:  # its graph may hold the example batch size as a constant
        dynamic_batch = False
    sequence = capture is None or not capture.static_sequence  # likewise the sequence length of token inputs
    time = sequence and _has_recurrent_layers(gm)  # and of float time series beside recurrent layers
    states = state_inputs(gm) if time else set()  # not of their [layers, N, H] states
    declared = capture.dynamic_dims if capture is not None else None
    if kwargs:
        dynamic = (batch_dynamic_shapes(tuple(kwargs.values()), gm.forward, tuple(kwargs), sequence, declared, axes=batch_axes,
                                        time=time, states=states) if dynamic_batch else None)
    else:
        dynamic = (batch_dynamic_shapes(args, gm.forward, sequence=sequence, declared=declared, axes=batch_axes, time=time,
                                        states=states) if dynamic_batch else None)

    def export(args, kwargs):
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_torch_export(), exportable_recurrence(gm):
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                gm,
                args,
                kwargs=kwargs,
                dynamo=True,
                opset_version=opset,
                external_data=False,
                custom_translation_table=translation_table(opset),
                dynamic_shapes=dynamic,
                verbose=False,
                optimize=False,  # its full optimizer is most of the translation time; _clean_up does what we need
            )

    # A single-sample example is traced as two copies of it: with the batch's hint 1, torch 2.11's
    # exporter lets SDPA's mask check guard batch == 1 and writes shapes like 4 // batch, a file that
    # runs only at batch 1 (pytorch/pytorch#180202). The example itself if the copies fail.
    program = None
    if dynamic is not None and batch_axes is None and single_sample(tuple(kwargs.values()) if kwargs else args):
        try:
            program = export(doubled(args), dict(zip(kwargs, doubled(tuple(kwargs.values())))) if kwargs else kwargs)
        except Exception:  # noqa: BLE001 - the plain attempt below reports its own failure
            program = None
    if program is None:
        try:
            program = export(args, kwargs)
        except Exception as e:
            raise ExportError(exporter_failure(e, gm)) from e
    _pin_fixed_dims(program)
    try:
        _clean_up(program.model)
    except Exception as e:  # a bug in onnxscript's passes: say which step and node, not a traceback from inside it
        cause = f"{e}: {e.__cause__}" if e.__cause__ is not None else str(e)
        raise ExportError(f"simplifying the exported ONNX graph (onnxscript constant folding and clean-up) failed: "
                          f"{type(e).__name__}: {cause}"
                          + (". With dynamic_batch=False shapes are constants, which may avoid it" if dynamic_batch else "")) from e
    model = program.model_proto
    _name_batch_dim(model, declared, batch_axes)
    _name_outputs(model)
    fold_constant_quantization(model)
    prepare_for_onnxruntime(model, float_biases=bool(getattr(gm, "meta", {}).get(FLOAT_BIASES_KEY)))
    if uint8_weights:
        to_uint8_weights(model)
    strip_debug_info(model)
    model.ir_version = IR_FOR_OPSET.get(opset, IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model


def _has_recurrent_layers(gm: torch.nn.Module, packed: bool = True) -> bool:
    """Whether ``gm`` runs LSTM/GRU/RNN layers (``packed``: on packed sequences too; their time axis
    comes with each row's length, so a file check cannot just cut it)."""
    from qgraph.recurrent import run_packed, run_recurrent

    graph = getattr(gm, "graph", None)
    targets = (run_recurrent, run_packed) if packed else (run_recurrent,)
    return isinstance(graph, torch.fx.Graph) and any(
        n.op == "call_function" and (n.target in targets or str(n.target).startswith(("aten.lstm", "aten.gru")))
        for n in graph.nodes)


def _refuse_sparse_inputs(gm: torch.nn.Module, args: tuple, kwargs: dict | None) -> None:
    """An ``ExportError`` naming the first sparse input: ``torch.export`` refuses sparse tensors (its
    error names only an ATen op) and ONNX Runtime takes dense inputs only."""
    from torch.utils import _pytree as pytree

    from qgraph.keyword_inputs import forward_parameters

    names = [p.name for p in forward_parameters(gm.forward)] if not kwargs else list(kwargs)
    for i, value in enumerate(tuple(kwargs.values()) if kwargs else args):
        sparse = next((t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor) and t.layout != torch.strided), None)
        if sparse is not None:
            name = names[i] if i < len(names) else f"#{i}"
            raise ExportError(f"input {name!r} is a sparse tensor ({sparse.layout}, shape {list(sparse.shape)}): ONNX files take "
                              "dense inputs only, and torch.export refuses sparse ones. The quantized model runs in PyTorch "
                              f"and its qpack; for an ONNX file, quantize with the dense tensor ({name}.to_dense()) as the "
                              "example, where the model accepts one (torch.spmm and torch.mm do)")


def _pin_fixed_dims(program) -> None:
    """Write a dimension the export fixed as its number. ``torch.export`` may keep a dim asked to be
    dynamic as a symbol whose range is one value (a token input added to a fixed-length position
    table, a mask broadcast against a fixed-length input: ``s27`` in ``[10, 10]``), and the exporter
    names that symbol in the file, so the file claimed a dynamic ``sequence`` that ONNX Runtime
    refuses at any other length. Applied to every value's shape, inputs and outputs included."""
    import onnx_ir as ir
    from onnx_ir.traversal import RecursiveGraphIterator

    ep = getattr(program, "exported_program", None)
    if ep is None:
        return
    fixed = {}
    for sym, r in ep.range_constraints.items():
        try:
            if r.lower == r.upper and r.lower.is_integer:
                fixed[str(sym)] = int(r.lower)
        except (AttributeError, TypeError):  # an unbounded or non-integer range
            continue
    if not fixed:
        return
    graph = program.model.graph
    values = list(graph.inputs) + list(graph.outputs) + [v for n in RecursiveGraphIterator(graph) for v in n.outputs]
    for v in values:
        shape = v.shape
        if shape is None or not any(isinstance(d, ir.SymbolicDim) and d.value in fixed for d in shape):
            continue
        v.shape = ir.Shape([fixed[d.value] if isinstance(d, ir.SymbolicDim) and d.value in fixed else d for d in shape])


try:  # onnxscript >= 0.7 (setup.cfg allows older ones, which keep the run-time shape arithmetic)
    from onnxscript.rewriter.rules.common import materialize_reshape_shape_rule as _MATERIALIZE_RESHAPE
except ImportError:  # pragma: no cover - depends on the installed onnxscript
    _MATERIALIZE_RESHAPE = None


_NO_FOLD_DOMAIN = "qgraph.no_fold"  # not imported by the model: onnxscript's folder skips such nodes


def _runtime_split(node) -> bool:
    """A ``SplitToSequence`` whose chunk size is computed at run time and is not a list of sizes: the
    exporter writes ``torch.chunk``/``torch.split`` along a dynamic batch this way (chunk size =
    ``Squeeze(Shape(x)[0:1])``), and onnxscript 0.7's folder raises on it (``split_to_sequence``:
    ``'NoneType' object has no attribute 'ndim'``)."""
    if node.op_type != "SplitToSequence" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2 or node.inputs[1] is None:
        return False
    split = node.inputs[1]
    producer = split.producer()
    constant = split.const_value is not None or split.is_initializer() or (producer is not None and producer.op_type == "Constant")
    one_d = split.shape is not None and split.shape.rank() == 1
    return not constant and not one_d


@contextlib.contextmanager
def _shielded_from_folding(model):
    """Hide the nodes onnxscript's constant folder would crash on (``_runtime_split``) behind a domain
    the model does not import, and put them back afterwards; nothing about them could be folded."""
    from onnx_ir.traversal import RecursiveGraphIterator

    nodes = [n for n in RecursiveGraphIterator(model.graph) if _runtime_split(n)]
    domains = [n.domain for n in nodes]
    for n in nodes:
        n.domain = _NO_FOLD_DOMAIN
    try:
        yield
    finally:
        for n, d in zip(nodes, domains):
            n.domain = d


def _clean_up(model) -> None:
    """Fold constant subexpressions (shape arithmetic, reshapes of constants), lift ``Constant`` nodes to
    initializers, share identical initializers and drop dead nodes: the parts of the exporter's
    ``optimize=True`` this backend needs, at a tenth of its cost (EfficientNet-B0: 0.5 s vs 5 s, and
    the exporter's total time falls by a third). ONNX Runtime's own optimizer does the rest at load.

    With a dynamic batch, a reshape's target shape is computed at run time from the input's shape
    (``Shape → Squeeze → Reshape → Concat``: four tiny kernels per flatten or view). Where the result
    has at most one symbolic dimension, onnxscript's ``materialize_reshape_shape`` rule writes the
    shape as a constant with -1 there, and the chain dies (digits CNN in ONNX Runtime: 21.7–22.0 →
    20.3–20.5 µs, the static-batch file's time; benchmarks/ptq_vs_peers.py --models digits)."""
    import onnx_ir.passes.common as common
    import onnxscript.optimizer
    import onnxscript.rewriter

    with _shielded_from_folding(model):
        onnxscript.optimizer.fold_constants_ir(model)
    if _MATERIALIZE_RESHAPE is not None:
        onnxscript.rewriter.rewrite(model, pattern_rewrite_rules=[_MATERIALIZE_RESHAPE])
    for pass_ in (common.LiftConstantsToInitializersPass(), common.DeduplicateInitializersPass(), common.RemoveUnusedNodesPass()):
        pass_(model)


def has_2bit_weights(gm: torch.nn.Module) -> bool:
    """Whether a lowered graph dequantizes weights on a 2-bit grid (``qgraph::dequantize``)."""
    import qgraph.primitives  # noqa: F401  (registers the custom ops)

    graph = getattr(gm, "graph", None)
    if graph is None:
        return False
    target = torch.ops.qgraph.dequantize.default
    return any(n.op == "call_function" and n.target == target and is_2bit(n.args[3], n.args[4]) for n in graph.nodes)


def strip_debug_info(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug metadata (stack traces, fx node names) and value_info.

    On small models they are most of the file (a 27 KB digits CNN exported to 70 KB); ONNX Runtime
    needs neither. Graph inputs, outputs and their shapes stay.
    """
    for node in model.graph.node:
        del node.metadata_props[:]
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.initializer):
        del v.metadata_props[:]
    del model.graph.metadata_props[:]  # the exporter's graph signature and fx names
    del model.graph.value_info[:]


def _name_batch_dim(model: onnx.ModelProto, declared: dict[str, dict[int, str]] | None = None,
                    axes: list[int | None] | None = None) -> None:
    """Call the symbolic first dimension of the inputs ``batch`` everywhere it appears in inputs/outputs
    (every input's batch is one batch, even where the exporter kept a symbol per input: BERT's mask), and
    the symbolic second dimension of 2-D integer inputs (token ids, masks) ``sequence``. Independent
    sequence lengths (an encoder's and a decoder's) keep names of their own: the first is ``sequence``,
    the others are named after their input (``decoder_input_ids_sequence``), since one name for two
    sizes tells ONNX Runtime they are equal. ``declared``: the names a model gave its own dynamic dims
    (:func:`qgraph.batch_dim.declared_dynamic_dims`), for the inputs of that argument (``past_keys_0``
    belongs to ``past_keys``). The symbolic time dim of 3-D float inputs (time series beside recurrent
    layers) is a ``sequence`` too. ``axes``: each input's batch dim where it is not dim 0 (then a token
    input's sequence is its dim 0)."""
    def symbolic(i, axis: int) -> str:
        dims = i.type.tensor_type.shape.dim
        return dims[axis].dim_param if len(dims) > axis else ""

    inputs = list(model.graph.input)
    batch_dims = [a or 0 for a in axes] if axes is not None and len(axes) == len(inputs) else [0] * len(inputs)
    integer = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL}
    rename = {symbolic(i, b): "batch" for i, b in zip(inputs, batch_dims) if symbolic(i, b)}
    for i in model.graph.input:
        owner = next((p for p in declared or {} if i.name == p or (i.name.startswith(p + "_") and i.name[len(p) + 1:].isdigit())), None)
        for axis, name in (declared or {}).get(owner, {}).items():
            sym = symbolic(i, axis)
            if sym and sym not in rename:
                rename[sym] = name
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    for i, b in zip(inputs, batch_dims):
        sym = symbolic(i, 1 - b) if b in (0, 1) else ""
        rank, elem = len(i.type.tensor_type.shape.dim), i.type.tensor_type.elem_type
        if not sym or sym in rename or not ((rank == 2 and elem in integer) or (rank == 3 and elem in floating)):
            continue
        rename[sym] = "sequence" if "sequence" not in rename.values() else f"{i.name}_sequence"
    for v in list(model.graph.input) + list(model.graph.output):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]
            elif d.dim_param:  # an expression of symbols (a flattened [T, N] output: s31*s81 -> sequence*batch)
                d.dim_param = re.sub(r"\b[a-z]\d+\b", lambda m: rename.get(m.group(0), m.group(0)), d.dim_param)


def batch_is_dynamic(model: onnx.ModelProto) -> bool:
    return any(d.dim_param == "batch" for i in model.graph.input for d in i.type.tensor_type.shape.dim)


def _name_outputs(model: onnx.ModelProto) -> None:
    """Name graph outputs ``output`` (or ``output_0``, ``output_1``, ...) instead of internal value names."""
    outs = model.graph.output
    taken = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    for i, out in enumerate(outs):
        new = "output" if len(outs) == 1 else f"output_{i}"
        old = out.name
        if old == new or new in taken or any(old == o.name for o in outs[:i]) or old in taken:
            continue
        for node in model.graph.node:
            node.output[:] = [new if o == old else o for o in node.output]
            node.input[:] = [new if x == old else x for x in node.input]
        out.name = new
