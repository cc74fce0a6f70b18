"""The batch dimension when exporting: dim 0 of every tensor input, kept symbolic where the model allows;
and the sequence dimension of token inputs (dim 1 of a 2-D integer or boolean tensor: ``input_ids``,
``attention_mask``), because a tokenizer pads each batch to its own longest text.

``torch.export`` specialises a dimension whose example size is 0 or 1 (its "0/1 specialisation"),
so a single example sample (batch 1, the common way to pass example inputs) fixed the batch of a
``torch.export`` capture at 1, and the graph refused calibration batches of 8 (a Llama wrapper).
Capture therefore traces a single-sample example as two copies of it (``doubled``), and keeps that
graph only if it also runs the original inputs. (The ONNX exporter, given the same spec, keeps a
batch of 1 symbolic on its own: ResNet-18 and the Llama graph both export with a dynamic batch.)
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping

import torch
from torch.utils import _pytree as pytree

from qgraph.errors import InputError
from qgraph.keyword_inputs import forward_parameters


def _batched(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() > 0


def is_token_sequence(t) -> bool:
    """A ``[batch, sequence]`` tensor of token ids or mask values (integer or boolean, 2-D)."""
    return isinstance(t, torch.Tensor) and t.dim() == 2 and not t.is_floating_point() and not t.is_complex()


def is_time_series(t) -> bool:
    """A ``[batch, time, features]`` float tensor (``[time, batch, features]`` where dim 1 is the
    batch): the input of a recurrent layer."""
    return isinstance(t, torch.Tensor) and t.dim() == 3 and t.is_floating_point()


def batch_dynamic_shapes(args: tuple, forward=None, keywords: tuple[str, ...] | None = None,
                         sequence: bool = False, declared: dict[str, dict[int, str]] | None = None,
                         axes: list[int | None] | None = None, time: bool = False,
                         states: frozenset[str] | set[str] = frozenset()) -> tuple | dict | None:
    """``dynamic_shapes`` for ``torch.export`` that mark dim 0 of every tensor input ``Dim.AUTO``
    (with ``sequence``, dim 1 of token inputs too: :func:`is_token_sequence`), nested like the inputs
    (a list of tensors gets a list of specs) and like ``forward``'s signature (the arguments that
    ``*args`` collects are one tuple there: a positional wrapper ``forward(self, *args)`` was
    rejected, and captured with a fixed batch); None when no input has a batch dim (or this torch has no ``Dim.AUTO``). With ``keywords`` (inputs given by name) a dict by
    parameter name; names that ``**kwargs`` collects are one dict under its name.
    ``declared``: more dims to keep dynamic, by ``forward`` parameter (``{"past_keys": {2: "past_sequence"}}``,
    applied to every tensor under that argument; :func:`declared_dynamic_dims`). ``axes``: the batch dim
    of each tensor leaf where it is not dim 0 (:func:`sequence_first_axes`); a token input's sequence is
    then its other dim. ``time``: the time dim of float time series (:func:`is_time_series`) too, for
    graphs with recurrent layers, except under the parameter names in ``states`` (recurrent states
    ``[layers, N, H]``: :func:`qgraph.recurrent_export.state_inputs`)."""
    auto = getattr(torch.export.Dim, "AUTO", None)
    if auto is None or not any(_batched(t) for t in pytree.tree_leaves(args)):
        return None
    params = forward_parameters(forward) if forward is not None else []
    names = list(keywords) if keywords else _positional_names(params)
    declared = declared or {}

    tensor_index = itertools.count()  # axes are per tensor leaf, in tree_map's (= tree_leaves') order

    def spec_for(name):
        extra = declared.get(name, {})

        def spec(t):
            k = next(tensor_index) if isinstance(t, torch.Tensor) else None
            if not _batched(t):
                return None
            b = axes[k] if axes is not None and axes[k] is not None else 0
            dims = {b: auto}
            # a length of 1 would be specialised anyway (and torch logs a warning saying so)
            series = time and name not in states and is_time_series(t)
            if ((sequence and is_token_sequence(t)) or series) and b in (0, 1) and t.shape[1 - b] != 1:
                dims[1 - b] = auto
            dims.update({d: auto for d in extra if d < t.dim()})
            return dims
        return spec

    specs = [pytree.tree_map(spec_for(names[i] if i < len(names) else None), a) for i, a in enumerate(args)]
    if keywords:
        named = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        out = {k: s for k, s in zip(keywords, specs) if k in named}
        rest = {k: s for k, s in zip(keywords, specs) if k not in named}
        var_kw = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)
        if rest and var_kw:
            out[var_kw] = rest
        return out
    for i, p in enumerate(params):
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            specs = specs[:i] + [tuple(specs[i:])]
            break
    return tuple(specs)


def _positional_names(params) -> list[str]:
    names = []
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        names.append(p.name)
    return names


def declared_dynamic_dims(model) -> dict[str, dict[int, str]] | None:
    """The dims a model declares dynamic beyond the batch and token sequence: its attribute
    ``qgraph_dynamic_dims``, ``{forward parameter: {dim: name}}`` (a KV cache's past length,
    :mod:`qgraph.generation`). The names become the ONNX file's dim names."""
    declared = getattr(model, "qgraph_dynamic_dims", None)
    if declared is None:
        return None
    if not isinstance(declared, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in declared.items()):
        raise InputError(f"{type(model).__name__}.qgraph_dynamic_dims must be {{parameter name: {{dim: name}}}}, got {declared!r}")
    return {k: {int(d): str(n) for d, n in v.items()} for k, v in declared.items()}


def has_token_sequences(args: tuple) -> bool:
    return any(is_token_sequence(t) for t in pytree.tree_leaves(args))


def single_sample(args: tuple) -> bool:
    """Every tensor input with a batch dim has batch size 1 (and there is one)."""
    sizes = [t.shape[0] for t in pytree.tree_leaves(args) if _batched(t)]
    return bool(sizes) and all(s == 1 for s in sizes)


def doubled(args: tuple) -> tuple:
    """``args`` with every batched tensor repeated twice along dim 0."""
    return tuple(pytree.tree_map(lambda t: torch.cat([t, t]) if _batched(t) else t, a) for a in args)


def _layout(args: tuple, size_dim: int, prefer: tuple[int, int]) -> tuple[list[torch.Tensor], list[int | None]] | None:
    """Each tensor leaf's batch dim when the batch size is the first 2+-D input's dim ``size_dim``: the
    first dim of ``prefer`` that has that size (None for 0-d tensors). None where a tensor has it on
    neither."""
    tensors = [t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]
    first = next((t for t in tensors if t.dim() >= 2), None)
    if first is None:
        return None
    n = first.shape[size_dim]
    axes: list[int | None] = []
    for t in tensors:
        dims = [d for d in prefer if t.dim() > d and t.shape[d] == n]
        if _batched(t) and not dims:
            return None
        axes.append(dims[0] if _batched(t) else None)
    return tensors, axes


def sequence_first_axes(args: tuple) -> list[int | None] | None:
    """The batch dim of each tensor leaf (``pytree.tree_leaves`` order; None for 0-d tensors) for a
    sequence-first model: dim 1 where it has the size of the first 2+-D input's dim 1, else dim 0
    where that has it (``nn.LSTM``'s default ``[T, N, F]`` input with ``[layers, N, H]`` states,
    ``nn.Transformer``'s ``[S, N, E]``, word_language_model's ``[T, N]`` ids beside its states). None
    when some input has that size nowhere, or when only 2-D token inputs would move off dim 0 (their
    dim 1 is the sequence). A guess the export then checks: the
    model must run with these dims cut to another size, and the file must agree there."""
    found = _layout(args, 1, (1, 0))
    if found is None:
        return None
    tensors, axes = found
    # dim 1 of token ids alone is their sequence, not a batch: some other input must put its batch there
    return axes if any(a == 1 and not is_token_sequence(t) for a, t in zip(axes, tensors)) else None


def states_beside_axes(args: tuple) -> list[int | None] | None:
    """The batch dim of each tensor leaf where the first 2+-D input is batch-first but recurrent states
    beside it have their batch on dim 1 (``nn.GRU(batch_first=True)``'s ``[N, T, F]`` input with its
    ``[layers, N, H]`` state): dim 0 where a tensor has the first input's dim 0 size there, else dim 1.
    None where some tensor has that size on neither, or none is on dim 1 (then dim 0 was the guess).
    Where a state's layer count equals the batch size (``[4, 4, H]`` states of two bidirectional layers
    at batch 4), dim 0 matches too: then the states are read as batch on dim 1, the input on dim 0."""
    found = _layout(args, 0, (0, 1))
    if found is not None and 1 in found[1]:
        return found[1]
    found = _layout(args, 0, (1, 0))
    if found is None:
        return None
    tensors, axes = found
    axes[next(i for i, t in enumerate(tensors) if t.dim() >= 2)] = 0  # the input itself stays batch-first
    return axes if 1 in axes else None


def batch_axes_guesses(args: tuple) -> list[list[int | None]]:
    """The batch layouts to try where dim 0 of every input is not the batch, in order:
    :func:`sequence_first_axes`, then :func:`states_beside_axes`."""
    guesses = []
    for guess in (sequence_first_axes(args), states_beside_axes(args)):
        if guess is not None and guess not in guesses:
            guesses.append(guess)
    return guesses


def samples_reversed(args: tuple) -> tuple | None:
    """The example with the order of dim 0 reversed in every tensor input, to test whether dim 0 holds
    samples (:func:`follows_samples`). None where the inputs' dim 0 sizes differ or are below 2."""
    sizes = {t.shape[0] for t in pytree.tree_leaves(args) if _batched(t)}
    if len(sizes) != 1 or min(sizes) < 2:
        return None
    return tuple(pytree.tree_map(lambda t: t.flip(0) if _batched(t) else t, a) for a in args)


def dim0_holds_samples(run, args: tuple, tolerance: float) -> bool:
    """Whether reversing dim 0 of ``args`` reverses the outputs of ``run(args)`` (:func:`follows_samples`);
    True where that cannot be tried (one sample, inputs of several dim 0 sizes, no other layout to
    guess, a model that fails on the reordered samples)."""
    flipped = samples_reversed(args) if batch_axes_guesses(args) else None
    if flipped is None:
        return True
    try:
        before, after = run(args), run(flipped)
    except Exception:  # noqa: BLE001 - a model that refuses its samples reordered: no evidence against dim 0
        return True
    n = next(t.shape[0] for t in pytree.tree_leaves(flipped) if isinstance(t, torch.Tensor) and t.dim())
    return follows_samples(before, after, n, tolerance)


def follows_samples(before, after, n: int, tolerance: float) -> bool:
    """Whether the outputs ``after`` (on :func:`samples_reversed` inputs) are ``before`` with ``n``
    samples reversed: each tensor flipped along one of its dims of size ``n`` or unchanged (a statistic
    over the batch), each list of ``n`` per-sample outputs reversed or unchanged, within ``tolerance``.
    A batch passes; the time axis of a recurrent or causal model does not (its outputs at a step depend
    on the steps before)."""
    if isinstance(before, torch.Tensor) or isinstance(after, torch.Tensor):
        if not (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor)) or before.shape != after.shape:
            return False
        if before.numel() == 0:
            return True
        a, b = before.double(), after.double()
        options = [a] + [a.flip(d) for d in range(a.dim()) if a.shape[d] == n]
        return any(torch.allclose(o, b, rtol=0, atol=tolerance, equal_nan=True) for o in options)
    if isinstance(before, Mapping):
        return (isinstance(after, Mapping) and list(before) == list(after)
                and all(follows_samples(before[k], after[k], n, tolerance) for k in before))
    if isinstance(before, (list, tuple)):
        if not isinstance(after, (list, tuple)) or len(before) != len(after):
            return False
        if all(follows_samples(x, y, n, tolerance) for x, y in zip(before, after)):
            return True
        return len(before) == n and all(follows_samples(x, y, n, tolerance) for x, y in zip(reversed(before), after))
    try:
        return bool(before == after)
    except Exception:  # noqa: BLE001 - values that do not compare
        return False


def _map_batched(args: tuple, axes: list[int | None], fn) -> tuple:
    """``args`` with ``fn(tensor, batch dim)`` applied to every tensor leaf that has a batch dim in ``axes``."""
    flat, spec = pytree.tree_flatten(args)
    k = 0
    for i, t in enumerate(flat):
        if isinstance(t, torch.Tensor):
            if axes[k] is not None and _batched(t):
                flat[i] = fn(t, axes[k])
            k += 1
    return pytree.tree_unflatten(flat, spec)


def other_batch(args: tuple, axes: list[int | None] | None = None, first: int = 1) -> tuple[tuple, tuple[int, int]]:
    """The example at another batch size, to check a dynamic batch: two copies of a single sample,
    else its ``first`` samples (the first alone by default). Returns ``(inputs, (old size, new size))``.
    ``axes``: the batch dims, where not dim 0 (:func:`sequence_first_axes`)."""
    if axes is None:
        size = next(t.shape[0] for t in pytree.tree_leaves(args) if _batched(t))
        if single_sample(args):
            return doubled(args), (1, 2)
        return tuple(pytree.tree_map(lambda t: t[:first] if _batched(t) else t, a) for a in args), (size, first)
    tensors = [t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]
    size = next(t.shape[b] for t, b in zip(tensors, axes) if b is not None)
    if size == 1:
        return _map_batched(args, axes, lambda t, b: torch.cat([t, t], b)), (1, 2)
    return _map_batched(args, axes, lambda t, b: t.narrow(b, 0, first)), (size, first)


def shorter_sequences(args: tuple, cut: list[bool], axes: list[int | None] | None = None,
                      longer: bool = False, half: bool = False) -> tuple[tuple, int]:
    """``args`` with the token inputs and time series flagged in ``cut`` (one flag per tensor leaf, in
    the order of ``pytree.tree_leaves``) one step shorter, where they have at least 3 steps: to check
    a file that claims a dynamic sequence length. Returns the inputs and how many were cut. ``axes``: the
    batch dims (a token input's sequence is its other dim). ``longer``: one step of zeros longer instead
    (padded batches of packed sequences: their rows' lengths may reach the example's length). ``half``:
    cut to half the length instead of one step (twice the length, padded with zeros, with ``longer``)."""
    flat, spec = pytree.tree_flatten(args)
    tensors = [i for i, t in enumerate(flat) if isinstance(t, torch.Tensor)]
    done = 0
    for k, (i, c) in enumerate(zip(tensors, cut)):
        seq = 1 - (axes[k] or 0) if axes is not None else 1
        if c and (is_token_sequence(flat[i]) or is_time_series(flat[i])) and flat[i].shape[seq] >= 3:
            t, n = flat[i], flat[i].shape[seq]
            step = n // 2 if half else 1
            flat[i] = torch.cat([t, torch.zeros_like(t.narrow(seq, 0, n if half else 1))], seq) if longer else t.narrow(seq, 0, n - step)
            done += 1
    return pytree.tree_unflatten(flat, spec), done


def tracing_inputs(args: tuple) -> list[tuple]:
    """The example inputs to try, in order, for a batch-dynamic trace: two copies of a single sample
    first (see the module docstring), then the inputs themselves."""
    return [doubled(args), args] if single_sample(args) else [args]
