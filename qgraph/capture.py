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

``nn.Transformer`` and its encoder and decoder modules are traced into (fx keeps torch.nn modules
whole; the encoder's fused fast path is bypassed); ``nn.MultiheadAttention`` stays one module call
for the canonicalize pass to rewrite.

Every route is checked: the graph must reproduce the model's eager outputs on the example inputs.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.fx as fx
from torch import nn

from qgraph.batch_dim import declared_dynamic_dims
from qgraph.capture_checks import drop_dead_code, failure_site, module_types, outputs_match, register_output_dataclasses
from qgraph.distribution_checks import validation_note, validation_off
from qgraph.errors import CaptureError, InputError
from qgraph.export_route import export_route
from qgraph.graph import CaptureInfo, QGraph, record_shapes
from qgraph.keyword_inputs import (
    bind_inputs,
    concrete_defaults,
    is_keyword_inputs,
    keep_only_inputs,
    ordered_keywords,
    untensored_hint,
)
from qgraph.meta import CAPTURE_KEY
from qgraph.model_wrappers import unwrap
from qgraph.ops import MODULE_TYPES_KEY
from qgraph.packed_sequences import opaque_packing, packing_note
from qgraph.precision import Float32Casts, float32_casts, float32_inputs, upcast
from qgraph.trace_patches import attributes_restored, traceable_calls

_MAX_LEAF_ROUNDS = 64
ASSIGNED_KEY = "qgraph.assigned_attributes"  # symbolic_trace → its route: module attributes forward assigned


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


def _decoder_forward(m: nn.TransformerDecoder):
    """``nn.TransformerDecoder.forward`` without its causal-mask detection (which compares the mask's
    values: a ``tgt_is_causal`` left None is taken as False, and the mask itself is applied)."""
    def forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
                tgt_is_causal=None, memory_is_causal=False):
        x = tgt
        for layer in m.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
        return m.norm(x) if m.norm is not None else x
    return forward


def _transformer_forward(m: nn.Transformer):
    """``nn.Transformer.forward`` without its input checks (which compare sizes in Python)."""
    def forward(src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None, memory_is_causal=False):
        memory = m.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return m.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                         memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)
    return forward


# torch.nn modules fx would keep whole although they are made of layers qgraph quantizes
_TRACE_INTO = {
    nn.TransformerEncoderLayer: _encoder_layer_forward, nn.TransformerEncoder: _encoder_forward,
    nn.TransformerDecoderLayer: lambda m: m.forward,  # plain module calls already
    nn.TransformerDecoder: _decoder_forward, nn.Transformer: _transformer_forward,
}


class _AutoLeafTracer(fx.Tracer):
    """An fx tracer that treats chosen submodules as leaves and reports where tracing failed.

    Unlike plain ``fx.Tracer`` it traces into ``nn.Transformer`` and its encoder and decoder modules
    (fx keeps torch.nn modules whole; the encoder's fast-path checks are not traceable, the slow
    path computes the same thing). ``nn.MultiheadAttention``
    stays a module call, which the canonicalize pass rewrites.
    """

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def create_arg(self, a):
        """A NumPy scalar (``x / np.sqrt(2)``, NeuS's skip connections) becomes the Python number of the
        same value: fx refuses ``np.float32`` and writes ``np.float64`` into the generated code, whose
        namespace has no ``np`` (plain ``torch.fx.symbolic_trace`` fails either way)."""
        import numpy as np

        return super().create_arg(a.item() if isinstance(a, np.generic) else a)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaves:
            return True
        return type(m) not in _TRACE_INTO and super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        qualname = self.path_of_module(m)
        if type(m) in _TRACE_INTO and qualname not in self.leaves:
            forward = _TRACE_INTO[type(m)](m)
        if self.is_leaf_module(m, qualname):
            _bind(m, args, kwargs)  # a leaf's forward does not run here: refuse the arguments as the call would
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:
            if not hasattr(e, "_qgraph_failed_in"):
                e._qgraph_failed_in = qualname  # innermost module being traced
            raise


def _bind(m: nn.Module, args: tuple, kwargs: dict) -> None:
    """``TypeError`` where ``m``'s ``forward`` does not take these arguments, as calling it would raise:
    speechbrain's ``try: layer(x, lengths=lengths) except TypeError: layer(x)`` then takes the same
    branch under tracing as when it runs (a leaf's call is recorded, not run, and the graph kept a
    call the leaf refuses)."""
    try:
        signature = inspect.signature(m.forward)
    except (TypeError, ValueError):  # a builtin or scripted forward: nothing to check against
        return
    signature.bind(*args, **kwargs)


def _symbolic(model: nn.Module, keywords: tuple[str, ...] | None = None) -> tuple[fx.GraphModule | None, dict[str, str], str]:
    leaves: dict[str, str] = {}
    last_error = ""
    concrete = concrete_defaults(model.forward, keywords) if keywords else None
    for _ in range(_MAX_LEAF_ROUNDS):
        tracer = _AutoLeafTracer(set(leaves))
        try:
            with opaque_packing(model), traceable_calls(model), attributes_restored(model) as assigned:
                graph = tracer.trace(model, concrete_args=concrete)
            if keywords:
                keep_only_inputs(graph, keywords)
        except Exception as e:
            where = getattr(e, "_qgraph_failed_in", "")
            last_error = _decorated_forward(model) if "co_varnames is too small" in str(e) else ""
            last_error = last_error or f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{failure_site(e)}"
            if not where or where in leaves:
                return None, leaves, last_error
            leaves[where] = last_error
            continue
        qg = QGraph(tracer.root, graph, model.__class__.__name__)
        if assigned:
            qg.meta[ASSIGNED_KEY] = assigned
        return qg, leaves, ""
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
    declared = declared_dynamic_dims(model)
    casts = Float32Casts() if upcast_note else contextlib.nullcontext()
    with validation_off() as distributions, casts:
        qg = _capture(model, args, keywords, declared)
    if upcast_note and (float32_casts(qg) or casts.seen):  # symbolic_trace's graph still held them: no mode needed now
        qg.recompile()
        upcast_note += f"; the model's own casts to that precision compute in float32 ({', '.join(sorted(casts.seen))})"
    if distributions:
        qg.capture.notes.append(validation_note(distributions))
    qg.capture.keywords = keywords
    qg.capture.dynamic_dims = declared
    if unwrapped:
        qg.capture.notes.insert(0, unwrapped)
    if upcast_note:
        qg.capture.notes.append(upcast_note)
        qg.capture.upcast = True
    return qg


def _capture(model: nn.Module, args: tuple, keywords: tuple[str, ...] | None,
             declared: dict[str, dict[int, str]] | None = None) -> QGraph:
    """Capture with the routes in turn; ``keywords`` names ``args`` when the example inputs were given
    by name (the graph takes them positionally, in that order, under those names)."""
    expected = run_eager(model, args, keywords)
    registered = register_output_dataclasses(expected)
    qg = _capture_routes(model, args, keywords, declared, expected)
    if registered:
        qg.capture.notes.append(f"the model returns {', '.join(registered)}, a dataclass torch's pytree did not know: registered "
                                "with torch.export.register_dataclass, so its tensor fields are the graph's outputs")
    return qg


def _capture_routes(model: nn.Module, args: tuple, keywords: tuple[str, ...] | None,
                    declared: dict[str, dict[int, str]] | None, expected) -> QGraph:
    tried: list[str] = []

    gm, leaves, error = _symbolic(model, keywords)
    if gm is not None:
        try:
            ok = outputs_match(expected, record_shapes(gm, args))
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""  # fx appends the graph and a tlparse hint
            ok, error = False, f"{type(e).__name__}: {first}"
        if ok:
            drop_dead_code(gm, args, expected)
            gm.meta[CAPTURE_KEY] = CaptureInfo("symbolic_trace", leaves)
            if (note := packing_note(gm)) is not None:
                gm.capture.notes.append(note)
            if assigned := gm.meta.pop(ASSIGNED_KEY, None):
                gm.capture.notes.append(f"forward assigns {', '.join(sorted(set(assigned)))} a value computed while it runs: "
                                        "the graph computes the value where forward reads it but does not store it on the module")
            gm.meta[MODULE_TYPES_KEY] = module_types(model)
            if not leaves:
                return gm
            qg, why = export_route(model, args, expected, keywords, declared)
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

    qg, why = export_route(model, args, expected, keywords, declared)
    if qg is None:
        tried.append(f"torch.export: {why}")
        from qgraph.capture_parts import parts_hint

        raise CaptureError(f"no capture route handles {model.__class__.__name__}:\n  " + "\n  ".join(tried)
                           + parts_hint(model, args, keywords))
    qg.capture.notes.insert(0, f"fell back to torch.export because {tried[0]}")
    return qg
