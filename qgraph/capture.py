"""Capture: any ``nn.Module`` plus example inputs to a :class:`QGraph`.

Routes, in order:

1. ``torch.fx`` symbolic tracing. A submodule whose ``forward`` cannot be traced (Python control
   flow on tensor values, unsupported calls) becomes a *leaf*: it stays one opaque
   ``call_module`` node, the reason is recorded, and tracing is retried. Conv/Linear layers inside
   leaves are still quantized, by module swapping (see ``passes.insert_quantizers``).
2. If the root ``forward`` itself cannot be traced, ``torch.export.export`` (non-strict) captures
   the model as ATen ops with static shapes. When symbolic tracing only worked with leaves,
   ``torch.export`` is tried as well and preferred if it captures the whole model (a leaf keeps its
   own ops float; Hugging Face models behind a positional wrapper would be one big leaf). Leaves
   stay when ``torch.export`` fails too (control flow on tensor values).

``nn.TransformerEncoder``/``nn.TransformerEncoderLayer`` are traced into (their fused fast path is
bypassed); ``nn.MultiheadAttention`` stays one module call for the canonicalize pass to rewrite.

Every route is checked: the graph must reproduce the model's eager outputs on the example inputs.
"""

from __future__ import annotations

import copy
import functools
import operator

import torch
import torch.fx as fx
from torch import nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int
from torch.utils import _pytree as pytree

from qgraph.batch_dim import batch_dynamic_shapes, has_token_sequences, is_token_sequence, tracing_inputs
from qgraph.dead_code import eliminate_dead_code
from qgraph.errors import CaptureError, InputError
from qgraph.graph import CaptureInfo, QGraph, record_shapes
from qgraph.keyword_inputs import (
    bind_inputs,
    concrete_defaults,
    is_keyword_inputs,
    keep_only_inputs,
    ordered_keywords,
    positional_exported,
    untensored_hint,
)
from qgraph.meta import CAPTURE_KEY
from qgraph.model_wrappers import unwrap
from qgraph.ops import MODULE_TYPES_KEY
from qgraph.precision import float32_inputs, upcast

_MAX_LEAF_ROUNDS = 64


def as_input_tuple(example_inputs, keywords: tuple[str, ...] | None = None) -> tuple:
    """Normalise example inputs (or a batch) to a tuple of positional arguments; a mapping is bound by
    name to ``keywords``, the inputs of a graph captured from keyword inputs (``capture.keywords``)."""
    bound = bind_inputs(example_inputs, keywords)
    if bound is not None:
        return bound
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs
    raise InputError(f"example inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def batch_inputs(gm: fx.GraphModule, batch) -> tuple:
    """A calibration or evaluation batch as the positional inputs of the captured graph ``gm``: a
    tensor, a tuple of tensors, or (for a model captured from inputs given by name) a mapping."""
    cap = gm.meta.get(CAPTURE_KEY)
    return as_input_tuple(batch, getattr(cap, "keywords", None))


def run_eager(model: nn.Module, args: tuple, keywords: tuple[str, ...] | None = None):
    """Run the model on example inputs (by name when ``keywords`` names them), turning a failure into
    an InputError that says so."""
    try:
        with torch.no_grad():
            return model(**dict(zip(keywords, args))) if keywords else model(*args)
    except Exception as e:  # the user's model raised: say the inputs do not fit
        hint = untensored_hint(dict(zip(keywords, args)), "example input") if keywords else ""
        if hint:
            raise InputError(f"the model fails on the example inputs: {hint} ({type(e).__name__}: {e})") from e
        shapes = ", ".join(f"{tuple(a.shape)} {str(a.dtype).replace('torch.', '')}" if isinstance(a, torch.Tensor) else type(a).__name__ for a in args)
        raise InputError(f"the model fails on the example inputs ({shapes}): {type(e).__name__}: {e}") from e


def _encoder_layer_forward(m: nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer.forward`` without its fused inference fast path (whose eligibility
    checks read tensor properties fx cannot trace): the same math, as module calls fx can follow."""
    def forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if m.norm_first:
            x = x + m._sa_block(m.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + m._ff_block(m.norm2(x))
        x = m.norm1(x + m._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return m.norm2(x + m._ff_block(x))
    return forward


def _encoder_forward(m: nn.TransformerEncoder):
    def forward(src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in m.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return m.norm(x) if m.norm is not None else x
    return forward


# torch.nn modules fx would keep whole although they are made of layers qgraph quantizes
_TRACE_INTO = {nn.TransformerEncoderLayer: _encoder_layer_forward, nn.TransformerEncoder: _encoder_forward}


class _AutoLeafTracer(fx.Tracer):
    """An fx tracer that treats chosen submodules as leaves and reports where tracing failed.

    Unlike plain ``fx.Tracer`` it traces into ``nn.TransformerEncoder(Layer)`` (their fast-path
    checks are not traceable; the slow path computes the same thing). ``nn.MultiheadAttention``
    stays a module call, which the canonicalize pass rewrites.
    """

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaves:
            return True
        return type(m) not in _TRACE_INTO and super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        qualname = self.path_of_module(m)
        if type(m) in _TRACE_INTO and qualname not in self.leaves:
            forward = _TRACE_INTO[type(m)](m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:
            if not hasattr(e, "_qgraph_failed_in"):
                e._qgraph_failed_in = qualname  # innermost module being traced
            raise


def _outputs_match(expected, got) -> bool:
    a, _ = pytree.tree_flatten(expected)
    b, _ = pytree.tree_flatten(got)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if x.shape != y.shape or not torch.allclose(x.float(), y.float(), atol=1e-4, rtol=1e-4):
                return False
    return True


def _symbolic(model: nn.Module, keywords: tuple[str, ...] | None = None) -> tuple[fx.GraphModule | None, dict[str, str], str]:
    leaves: dict[str, str] = {}
    last_error = ""
    concrete = concrete_defaults(model.forward, keywords) if keywords else None
    for _ in range(_MAX_LEAF_ROUNDS):
        tracer = _AutoLeafTracer(set(leaves))
        try:
            graph = tracer.trace(model, concrete_args=concrete)
            if keywords:
                keep_only_inputs(graph, keywords)
        except Exception as e:
            where = getattr(e, "_qgraph_failed_in", "")
            last_error = _decorated_forward(model) if "co_varnames is too small" in str(e) else ""
            last_error = last_error or f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if not where or where in leaves:
                return None, leaves, last_error
            leaves[where] = last_error
            continue
        return QGraph(tracer.root, graph, model.__class__.__name__), leaves, ""
    return None, leaves, f"gave up after {_MAX_LEAF_ROUNDS} leaf rounds"


def _decorated_forward(model: nn.Module) -> str:
    """Why fx refused a ``forward`` that a decorator wraps and that takes ``*args``/``**kwargs``
    (Hugging Face models): fx rewrites the outer wrapper's code with the inner signature's argument
    count and fails with "ValueError: code: co_varnames is too small", which names neither."""
    fwd = type(model).forward
    if getattr(fwd, "__wrapped__", None) is None:
        return ""
    return (f"fx cannot trace {type(model).__name__}.forward: a decorator wraps it and it takes *args or **kwargs "
            "(torch.fx's 'co_varnames is too small')")


def trace(model: nn.Module, example_inputs, *, owns_model: bool = False) -> QGraph:
    """Capture ``model`` as a :class:`QGraph` with shapes and dtypes on every node.

    Symbolic tracing comes first. When it only works with leaves (code inside them is quantized
    at best by module swapping), ``torch.export`` is tried too and, if it captures the whole model,
    preferred; the notes say which leaves that avoided.

    A float16/bfloat16 model is captured as float32 (:mod:`qgraph.precision`): on a copy, or in place
    with ``owns_model`` (the caller passes a copy of its own). A ``torch.compile``/``DataParallel``
    wrapper is looked through (:mod:`qgraph.model_wrappers`).

    Raises :class:`InputError` when the model fails on ``example_inputs`` and :class:`CaptureError`
    when no route yields a graph that reproduces the model's outputs.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model, unwrapped = unwrap(model)
    model, upcast_note = upcast(model, in_place=owns_model)
    if is_keyword_inputs(example_inputs):  # a dict / BatchEncoding: forward's arguments by name
        named = ordered_keywords(model.forward, example_inputs)
        keywords, args = tuple(named), tuple(named.values())
    else:
        keywords, args = None, as_input_tuple(example_inputs)
    if upcast_note:
        args = float32_inputs(args)
    qg = _capture(model, args, keywords)
    qg.capture.keywords = keywords
    if unwrapped:
        qg.capture.notes.insert(0, unwrapped)
    if upcast_note:
        qg.capture.notes.append(upcast_note)
        qg.capture.upcast = True
    return qg


def _capture(model: nn.Module, args: tuple, keywords: tuple[str, ...] | None) -> QGraph:
    """Capture with the routes in turn; ``keywords`` names ``args`` when the example inputs were given
    by name (the graph takes them positionally, in that order, under those names)."""
    expected = run_eager(model, args, keywords)
    tried: list[str] = []

    gm, leaves, error = _symbolic(model, keywords)
    if gm is not None:
        try:
            ok = _outputs_match(expected, record_shapes(gm, args))
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""  # fx appends the graph and a tlparse hint
            ok, error = False, f"{type(e).__name__}: {first}"
        if ok:
            _drop_dead_code(gm, args, expected)
            gm.meta[CAPTURE_KEY] = CaptureInfo("symbolic_trace", leaves)
            gm.meta[MODULE_TYPES_KEY] = _module_types(model)
            if not leaves:
                return gm
            qg, why = _export(model, args, expected, keywords)
            if qg is None:
                gm.capture.notes.append(f"torch.export could not capture the whole model either ({why}), so the leaves stay")
                return gm
            names = ", ".join(leaves)
            qg.capture.notes.insert(0, f"captured with torch.export: symbolic_trace needed leaves ({names}) that would have "
                                       "stayed opaque")
            return qg
        tried.append(f"symbolic_trace: graph does not reproduce the model ({error or 'outputs differ'})")
    else:
        tried.append(f"symbolic_trace: {error}")

    qg, why = _export(model, args, expected, keywords)
    if qg is None:
        tried.append(f"torch.export: {why}")
        raise CaptureError(f"no capture route handles {model.__class__.__name__}:\n  " + "\n  ".join(tried))
    qg.capture.notes.insert(0, f"fell back to torch.export because {tried[0]}")
    return qg


def _export(model: nn.Module, args: tuple, expected, keywords: tuple[str, ...] | None = None) -> tuple[QGraph | None, str]:
    """The torch.export route: ``(graph, "")`` or ``(None, why it failed)``."""
    target, dropped = _without_opaque_outputs(model, expected)
    if dropped:
        expected = _filter_outputs(expected)
    try:
        ep = _export_batch_dynamic(target, args, keywords)
        exported = ep.module()
        if keywords:
            positional_exported(exported, args)
        inlined = _inline_grad_mode_regions(exported)
        qg = QGraph(exported, exported.graph, model.__class__.__name__)
        # the example's concrete shapes, next to the exporter's symbolic ones, and the outputs to check
        ok = _outputs_match(expected, record_shapes(qg, args))
        if ok:
            _drop_dead_code(qg, args, expected)
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    if not ok:
        return None, "graph does not reproduce the model's outputs"
    notes = []
    if inlined:
        notes.append(f"code under torch.no_grad()/enable_grad() was inlined into the graph, where the passes see it (in {inlined})")
    if dropped:
        notes.append(f"outputs that are not tensors were dropped from the graph (returned as None): {', '.join(dropped)}")
    static_sequence = _static_sequence(ep)
    if static_sequence:
        lengths = sorted({int(a.shape[1]) for a in pytree.tree_leaves(args) if is_token_sequence(a)})
        notes.append(f"torch.export fixed the token inputs' sequence length ({', '.join(map(str, lengths))}): batches must "
                     "have the example's length (a tokenizer's padding='max_length')")
    qg.meta[CAPTURE_KEY] = CaptureInfo("torch.export", {}, notes, static_batch=_static_batch(ep),
                                       static_sequence=static_sequence)
    qg.meta[MODULE_TYPES_KEY] = _module_types(model)
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


def _static_sequence(ep) -> bool:
    """Some token input's sequence length is fixed in the exported program (see :func:`_static_batch`)."""
    return any(is_concrete_int(v.shape[1]) for v in _user_input_values(ep) if is_token_sequence(v))


def _user_input_values(ep) -> list:
    names = set(ep.graph_signature.user_inputs)
    return [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in names]


def _export_batch_dynamic(model: nn.Module, args: tuple, keywords: tuple[str, ...] | None = None):
    """``torch.export`` with the batch dim (dim 0 of every tensor input) left dynamic where the model
    allows it (``Dim.AUTO``: the exporter keeps it symbolic, or specialises it where the code needs a
    fixed value), so the graph runs, calibrates and exports for any batch size, also when the example
    is a single sample. Token inputs (``input_ids``, an ``attention_mask``) keep their sequence
    length dynamic too, so batches padded to other lengths calibrate and run; where that fails, the
    batch alone; plain static export when that fails too."""
    def export(example, shapes=None):
        if keywords:  # by name, as the model is called
            return torch.export.export(model, (), dict(zip(keywords, example)), dynamic_shapes=shapes, strict=False)
        return torch.export.export(model, example, dynamic_shapes=shapes, strict=False)

    attempts = [True, False] if has_token_sequences(args) else [False]
    for sequence in attempts:
        shapes = batch_dynamic_shapes(args, model.forward, keywords, sequence=sequence)
        if shapes is None:
            break
        for example in tracing_inputs(args):  # a single sample is traced as two (qgraph.batch_dim)
            try:
                ep = export(example, shapes)
                if example is not args:
                    with torch.no_grad():
                        ep.module()(**dict(zip(keywords, args))) if keywords else ep.module()(*args)  # the batch may have been specialised to 2 after all
                return ep
            except Exception:  # noqa: BLE001 - these dims cannot stay dynamic: fewer, or specialise
                continue
    return export(args)


def _drop_dead_code(gm: fx.GraphModule, args: tuple, expected) -> None:
    """Remove ops whose results nothing uses (a Hugging Face pooler that a wrapper does not return):
    they would get quantizers that calibration never reaches. Kept if the graph then disagrees
    with the model (an in-place op whose result is unused)."""
    before = copy.deepcopy(gm.graph)
    if not eliminate_dead_code(gm.graph):
        return
    gm.recompile()
    try:
        with torch.no_grad():
            same = _outputs_match(expected, gm(*args))
    except Exception:
        same = False
    if not same:
        gm.graph = before
        gm.recompile()


def _module_types(model: nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules() if name}


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
