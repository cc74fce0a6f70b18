"""The ``torch.export`` capture route (:mod:`qgraph.capture` tries it after symbolic tracing).

Non-strict ``torch.export`` with the batch dim, and the sequence dim of token inputs, left dynamic
where the model allows (:mod:`qgraph.batch_dim`); inputs given by name are exported as keyword
arguments and the graph is made callable positionally too (:mod:`qgraph.keyword_inputs`); outputs it
cannot flatten (a ``DynamicCache``) are dropped; code under ``torch.no_grad()`` is inlined so the
passes see it. The capture notes say what each of these did.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import operator

import torch
import torch.fx as fx
from torch import nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int
from torch.utils import _pytree as pytree

from qgraph.batch_dim import batch_dynamic_shapes, has_token_sequences, is_token_sequence, tracing_inputs
from qgraph.capture_checks import drop_dead_code, failure_site, module_types, outputs_match
from qgraph.graph import CaptureInfo, QGraph, record_shapes
from qgraph.keyword_inputs import positional_exported
from qgraph.meta import CAPTURE_KEY
from qgraph.ops import MODULE_TYPES_KEY


@contextlib.contextmanager
def quiet_torch_export():
    """A ``torch.export`` attempt without its stderr: on a failure it prints the whole partial graph
    there (hundreds of lines for a small Transformer) and logs guard warnings, before raising the
    error qgraph reports in its own words (capture notes, ``CaptureError``, ``ExportError``)."""
    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def export_route(model: nn.Module, args: tuple, expected, keywords: tuple[str, ...] | None = None,
                 declared: dict[str, dict[int, str]] | None = None) -> tuple[QGraph | None, str]:
    """The torch.export route: ``(graph, "")`` or ``(None, why it failed)``."""
    target, dropped = _without_opaque_outputs(model, expected)
    if dropped:
        expected = _filter_outputs(expected)
    try:
        ep = _export_batch_dynamic(target, args, keywords, declared)
        exported = ep.module()
        if keywords:
            positional_exported(exported, args)
        inlined = _inline_grad_mode_regions(exported)
        qg = QGraph(exported, exported.graph, model.__class__.__name__)
        # the example's concrete shapes, next to the exporter's symbolic ones, and the outputs to check
        ok = outputs_match(expected, record_shapes(qg, args))
        if ok:
            drop_dead_code(qg, args, expected)
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}{failure_site(e)}"
    if not ok:
        return None, "graph does not reproduce the model's outputs"
    notes = []
    if inlined:
        notes.append(f"code under torch.no_grad()/enable_grad() was inlined into the graph, where the passes see it (in {inlined})")
    if dropped:
        notes.append(f"outputs that are not tensors were dropped from the graph (returned as None): {', '.join(dropped)}")
    lengths = _fixed_sequence_lengths(ep)
    if lengths == [1]:  # one token per row: a decoding step (qgraph.generation), not a padded text
        notes.append("torch.export fixed the token inputs' sequence length (1): one token per row")
    elif lengths:
        notes.append(f"torch.export fixed the token inputs' sequence length ({', '.join(map(str, lengths))}): batches must "
                     "have the example's length (token ids padded with a tokenizer's padding='max_length'; "
                     "an edge list with as many edges)")
    static = _static_batch(ep)
    if static and (sizes := sorted({int(v.shape[0]) for v in _user_input_values(ep) if isinstance(v, torch.Tensor) and v.dim()})):
        notes.append(f"torch.export fixed the batch size at the example's ({', '.join(map(str, sizes))}): code in forward needs "
                     "that size (a Python loop or list over the batch, a shape read as a number); calibration batches must "
                     "have it, and the ONNX file keeps it")
    qg.meta[CAPTURE_KEY] = CaptureInfo("torch.export", {}, notes, static_batch=static, static_sequence=bool(lengths))
    qg.meta[MODULE_TYPES_KEY] = module_types(model)
    return qg, ""


def _inline_grad_mode_regions(gm: fx.GraphModule) -> str:
    """Inline the ``wrap_with_set_grad_enabled`` regions ``torch.export`` makes of code under
    ``torch.no_grad()`` (a Marian/Pegasus sinusoidal position table read): the passes look at the
    top-level graph only, so what stays inside is never quantized. Grad mode does not change forward
    values; the results of a no_grad region are detached, so training still sends them no gradient.
    Returns the module paths of the inlined regions, comma-separated ("" when none)."""
    hop = getattr(torch.ops.higher_order, "wrap_with_set_grad_enabled", None)
    if hop is None:
        return ""
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not hop:
            continue
        sub_node, operands = node.args[1], node.args[2:]
        users = list(node.users)
        if getattr(sub_node, "op", None) != "get_attr" or not all(u.target is operator.getitem for u in users):
            continue
        sub = gm.get_submodule(sub_node.target)
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(operands) or any(n.op in ("get_attr", "call_module") for n in sub.graph.nodes):
            continue  # attributes of the region's own module would not resolve in the parent
        with gm.graph.inserting_before(node):
            outs = gm.graph.graph_copy(sub.graph, dict(zip(placeholders, operands)))
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        if not node.args[0]:  # under no_grad: the results carry no gradient (a QAT step must not train the table)
            outs = [_detached(gm.graph, o) if isinstance(o, fx.Node) else o for o in outs]
        for u in users:
            u.replace_all_uses_with(outs[u.args[1]])
            gm.graph.erase_node(u)
        gm.graph.erase_node(node)
        if not sub_node.users:
            gm.graph.erase_node(sub_node)
            gm.delete_submodule(sub_node.target)
        stack = node.meta.get("nn_module_stack")
        done.append((next(reversed(stack.values()))[0] if stack else "") or "the root module")
    if done:
        gm.graph.lint()
        gm.recompile()
    return ", ".join(done)


def _detached(graph: fx.Graph, value: fx.Node) -> fx.Node:
    with graph.inserting_after(value):
        d = graph.call_function(torch.ops.aten.detach.default, (value,))
    if "val" in value.meta:
        d.meta["val"] = value.meta["val"]
    return d


def _static_batch(ep) -> bool:
    """The exported program's tensor inputs all have a fixed first dimension (the exporter
    specialised the batch, or the dynamic attempt failed): shape constants inside the graph may then
    hold the example's batch size, so the ONNX file must not claim a dynamic one."""
    dims = [v.shape[0] for v in _user_input_values(ep) if isinstance(v, torch.Tensor) and v.dim() > 0]
    return bool(dims) and all(is_concrete_int(d) for d in dims)  # a SymInt the exporter fixed counts too


def _fixed_sequence_lengths(ep) -> list[int]:
    """The token inputs' sequence lengths that are fixed in the exported program (see :func:`_static_batch`)."""
    return sorted({int(v.shape[1]) for v in _user_input_values(ep) if is_token_sequence(v) and is_concrete_int(v.shape[1])})


def _user_input_values(ep) -> list:
    names = set(ep.graph_signature.user_inputs)
    return [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in names]


def _export_batch_dynamic(model: nn.Module, args: tuple, keywords: tuple[str, ...] | None = None,
                          declared: dict[str, dict[int, str]] | None = None):
    """``torch.export`` with the batch dim (dim 0 of every tensor input) left dynamic where the model
    allows it (``Dim.AUTO``: the exporter keeps it symbolic, or specialises it where the code needs a
    fixed value), so the graph runs, calibrates and exports for any batch size, also when the example
    is a single sample. Token inputs (``input_ids``, an ``attention_mask``) keep their sequence
    length dynamic too, so batches padded to other lengths calibrate and run; where that fails, the
    batch alone; plain static export when that fails too. ``declared``: dims the model declares
    dynamic as well (:func:`qgraph.batch_dim.declared_dynamic_dims`)."""
    def export(example, shapes=None, strict=False):
        with quiet_torch_export():
            if keywords:  # by name, as the model is called
                return torch.export.export(model, (), dict(zip(keywords, example)), dynamic_shapes=shapes, strict=strict)
            return torch.export.export(model, example, dynamic_shapes=shapes, strict=strict)

    attempts = [True, False] if has_token_sequences(args) else [False]
    failure: Exception | None = None
    for sequence in attempts:
        shapes = batch_dynamic_shapes(args, model.forward, keywords, sequence=sequence, declared=declared)
        if shapes is None:
            break
        for example in tracing_inputs(args):  # a single sample is traced as two (qgraph.batch_dim)
            try:
                ep = export(example, shapes)
                if example is not args:
                    with torch.no_grad():
                        ep.module()(**dict(zip(keywords, args))) if keywords else ep.module()(*args)  # the batch may have been specialised to 2 after all
                return ep
            except Exception as e:  # noqa: BLE001 - these dims cannot stay dynamic: fewer, or specialise
                failure = e
                continue
    if declared:  # a static graph would refuse the very shapes the model asked for
        raise RuntimeError(f"the dims declared dynamic ({declared}) could not stay dynamic: {failure}") from failure
    try:
        return export(args)
    except Exception as e:
        # the non-strict tracer has its own failures (speechbrain's ``try: layer(x, lengths=lengths)
        # except TypeError: layer(x)``: "Unexpected key _export_root.blocks.0"), which strict mode's
        # bytecode capture does not: the batch dynamic, then static
        first = batch_dynamic_shapes(args, model.forward, keywords, sequence=False, declared=declared)
        for shapes in ([first] if first is not None else []) + [None]:
            try:
                return export(args, shapes, strict=True)
            except Exception:  # noqa: BLE001 - the non-strict failure is the one to report
                continue
        raise e


def _is_plain_leaf(v) -> bool:
    return v is None or isinstance(v, (torch.Tensor, int, float, bool, str))


def _filter_outputs(out):
    return pytree.tree_map(lambda v: v if _is_plain_leaf(v) else None, out)


def _without_opaque_outputs(model: nn.Module, expected) -> tuple[nn.Module, list[str]]:
    """A view of ``model`` whose outputs hold only tensors and plain values.

    ``torch.export`` refuses outputs it cannot flatten (e.g. a Hugging Face ``DynamicCache``). Such
    leaves are replaced by None in a shallow copy of the model whose ``forward`` filters its outputs;
    parameters and module paths stay the same.
    """
    dropped = sorted({type(v).__name__ for v in pytree.tree_leaves(expected) if not _is_plain_leaf(v)})
    if not dropped:
        return model, []
    view = copy.copy(model)
    inner = model.forward

    @functools.wraps(inner)  # the model's signature, which torch.export binds inputs and dynamic shapes to
    def forward(*a, **k):
        return _filter_outputs(inner(*a, **k))

    view.forward = forward
    return view, dropped
