"""Example inputs given by name: a dict (or a Hugging Face ``BatchEncoding``) of forward arguments.

``quantize(model, tokenizer(texts, return_tensors="pt"))`` passes ``input_ids``, ``attention_mask``
(and so on) as keyword arguments, the way the model is called. The captured graph takes exactly those
arguments, in the order of the model's ``forward`` signature and under their own names, so the
quantized model is called like the original (``qm(**batch)``) or positionally, calibration batches may
be dicts with the same keys, and the ONNX file's inputs carry the names. Every other parameter of
``forward`` keeps its default value in the graph (for symbolic tracing, through ``concrete_args``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
import torch.fx as fx

from qgraph.errors import InputError

_VAR = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def forward_parameters(forward) -> list[inspect.Parameter]:
    """``forward``'s parameters; none for a builtin or C++ forward."""
    try:
        return list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):  # a builtin or C++ forward: no signature to follow
        return []


def ordered_keywords(forward, inputs: Mapping) -> dict:
    """``inputs`` as a plain dict in the order of ``forward``'s parameters (names that ``**kwargs``
    collects come last, in the given order). Raises InputError for a name ``forward`` does not take
    and for a required parameter that ``inputs`` lacks."""
    params = forward_parameters(forward)
    named = [p.name for p in params if p.kind not in _VAR and p.kind is not inspect.Parameter.POSITIONAL_ONLY]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    bad = [k for k in inputs if not isinstance(k, str)]
    if bad:
        raise InputError(f"example inputs given as a mapping need argument names as keys, got {bad[0]!r}")
    unknown = [k for k in inputs if k not in named]
    if unknown and not takes_any:
        single = f" (to pass the mapping itself as {named[0]!r}, wrap it in a tuple: ({{...}},))" if len(named) == 1 else ""
        raise InputError(f"the model's forward() has no parameter named {', '.join(map(repr, unknown))}; "
                         f"it takes {', '.join(named) or 'no named parameters'}{single}")
    required = [p.name for p in params if p.kind not in _VAR and p.default is inspect.Parameter.empty
                and p.name not in inputs]
    if required:
        raise InputError(f"the example inputs lack {', '.join(map(repr, required))}, which the model's forward() "
                         f"requires (given: {', '.join(inputs) or 'nothing'})")
    order = [k for k in named if k in inputs] + unknown
    return {k: inputs[k] for k in order}


def concrete_defaults(forward, names) -> dict:
    """``concrete_args`` for ``fx`` symbolic tracing: every named parameter not in ``names`` at its
    default (a ``use_cache`` flag stays a Python value the model's control flow can read)."""
    return {p.name: p.default for p in forward_parameters(forward)
            if p.kind not in _VAR and p.name not in names and p.default is not inspect.Parameter.empty}


def keep_only_inputs(graph: fx.Graph, names) -> None:
    """Drop the placeholders ``fx`` made for parameters not in ``names`` (the concrete ones, with the
    asserts that check their values, and a ``**kwargs`` catch-all), so the graph's inputs are exactly
    ``names`` and none is optional."""
    keep = set(names)
    for ph in [n for n in graph.nodes if n.op == "placeholder"]:
        if ph.name in keep or ph.target in keep:
            ph.args = ()  # no default: a missing input is an error, not a silent None
            continue
        chain = _users_closure(ph)
        if any(n.op == "output" for n in chain):
            raise InputError(f"the model's output depends on forward() argument {ph.target!r}, which the example "
                             "inputs do not give; pass it in the example inputs")
        for n in reversed(chain):
            graph.erase_node(n)
        graph.erase_node(ph)


def _users_closure(node: fx.Node) -> list[fx.Node]:
    """Every node computed from ``node``, in graph order."""
    seen: dict[fx.Node, None] = {}
    todo = list(node.users)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen[n] = None
            todo.extend(n.users)
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    return sorted(seen, key=order.__getitem__)


def positional_exported(gm: fx.GraphModule, example: tuple) -> None:
    """Make a graph that ``torch.export`` captured from keyword arguments callable positionally too:
    its code flattens ``(args, kwargs)`` against the recorded input structure, which names every input
    as a keyword, so a positional call was refused. The structure becomes "these inputs, in order",
    each nested like its ``example`` value (a list of numbers is a list of placeholders); the
    generated ``forward(self, input_ids, attention_mask)`` then binds either way."""
    from torch.utils import _pytree as pytree

    codegen = gm.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is None or info.in_spec is None:
        return
    spec = pytree.tree_structure((tuple(example), {}))
    if spec.num_leaves != info.in_spec.num_leaves:  # not the structure the exporter flattened: leave it keyword-only
        return
    codegen.pytree_info = info._replace(in_spec=spec)
    gm._in_spec = spec
    gm.recompile()


def bind_inputs(batch, keywords: tuple[str, ...] | None) -> tuple | None:
    """A mapping ``batch`` as positional inputs in ``keywords`` order; None when ``batch`` is not a
    mapping (the caller handles tensors and tuples). Missing or extra keys are an InputError."""
    if not isinstance(batch, Mapping):
        return None
    if keywords is None:
        raise InputError("this model was captured from positional example inputs, so its batches must be a tensor "
                         f"or a tuple of tensors, got a mapping with keys {', '.join(map(str, batch))}")
    missing = [k for k in keywords if k not in batch]
    extra = [k for k in batch if k not in keywords]
    if missing or extra:
        hint = ""
        if extra and not missing:  # a data loader's batch with labels: the user picks the inputs
            hint = f" (pass {{k: v for k, v in batch.items() if k in {tuple(keywords)!r}}} for each batch)"
        raise InputError("the batch's keys differ from the example inputs the model was captured with ("
                         + ", ".join(keywords) + "): "
                         + "; ".join(s for s in (f"missing {', '.join(missing)}" if missing else "",
                                                 f"not captured {', '.join(map(str, extra))}" if extra else "") if s)
                         + hint)
    return tuple(batch[k] for k in keywords)


def untensored_hint(inputs: Mapping, what: str) -> str:
    """Why a model failed on inputs by name, where token ids came as Python lists or NumPy arrays (a
    tokenizer called without ``return_tensors="pt"``): the key and the fix; "" otherwise. Only said
    after a failure: a forward may take a list of numbers on purpose."""
    from torch.utils import _pytree as pytree

    for k, v in inputs.items():
        leaves = pytree.tree_leaves(v) if isinstance(v, (list, tuple)) else [v]
        numbers = isinstance(v, (list, tuple)) and leaves and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in leaves)
        if numbers or type(v).__module__ == "numpy":
            kind = "NumPy array" if type(v).__module__ == "numpy" else type(v).__name__
            return (f"{what} {k!r} is a {kind}, not a tensor: call the tokenizer with return_tensors='pt' "
                    "(or convert with torch.as_tensor)")
    return ""


def is_keyword_inputs(example_inputs) -> bool:
    return isinstance(example_inputs, Mapping) and not isinstance(example_inputs, torch.Tensor)
