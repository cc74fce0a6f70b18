"""QModel ↔ qpack: which tensors a quantized model stores, and rebuilding a model from a file.

A qpack holds exactly what the quantized graph uses: every weight that has a weight quantizer as
integer codes with its scale and zero point, every other tensor the graph reads (biases, norms,
activation quantizers' scales) as is, the recipe and the example-input shapes. Loading re-runs the
same capture and passes on the user's (float) model, then sets every tensor from the file: weights
become ``(codes - zero_point) * scale``, which the weight quantizers map back to the same codes, so
the loaded model reproduces the writer's outputs bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from qgraph.errors import InputError, QGraphError
from qgraph.granularity import granularity_to_json
from qgraph.primitives import dequantize_affine, quantize_affine
from qgraph.quantizer import FakeQuantize
from qgraph.sparsity import is_mask_node, nm_indices, nm_mask_from_indices, weight_masks
from qgraph.wrappers import QuantizedModule

_INPUTS_KEY = "example_inputs"


def weight_quantizers(gm: fx.GraphModule) -> dict[str, str]:
    """``{weight state key: weight quantizer module name}`` for every quantized weight of the graph."""
    found: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if isinstance(mod, FakeQuantize) and mod.role == "weight":
            src = node.args[0]
            if is_mask_node(gm, src):  # get_attr W → weight_mask → weight quantizer
                src = src.args[0]
            if isinstance(src, fx.Node) and src.op == "get_attr":
                found[str(src.target)] = str(node.target)
    for name, mod in gm.named_modules():
        if isinstance(mod, QuantizedModule) and mod.weight_quantizer is not None:
            found[f"{name}.module.weight"] = f"{name}.weight_quantizer"
    return found


def used_state(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """The persistent tensors the graph reads: ``get_attr`` targets and the state of called modules."""
    state = gm.state_dict(keep_vars=False)
    used: dict[str, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and str(node.target) in state:
            used[str(node.target)] = state[str(node.target)]
        elif node.op == "call_module":
            prefix = f"{node.target}."
            used.update({k: v for k, v in state.items() if k.startswith(prefix)})
    return used


def stored_codes(q: FakeQuantize, weight: torch.Tensor) -> torch.Tensor:
    """The integer codes a weight quantizer stores for ``weight``: its own ``weight_codes`` where it has
    one (StatsQ's odd codes, qgraph.ofq), else the affine grid's."""
    if hasattr(q, "weight_codes"):
        return q.weight_codes(weight)
    s = q.effective_scale().detach()
    return quantize_affine(weight, s, q.zero_point, q.spec.qmin, q.spec.qmax, q.spec.granularity)


def effective_weight(gm: fx.GraphModule, state: dict[str, torch.Tensor], key: str) -> torch.Tensor | None:
    """The weight ``key`` as its quantizer sees it: ``W ⊙ mask`` when a sparsity mask sits in between."""
    w = state.get(key)
    masks = weight_masks(gm)
    if w is not None and key in masks:
        with torch.no_grad():
            w = gm.get_submodule(masks[key])(w)
    return w


def packed_weights(qm) -> tuple[list, dict[str, np.ndarray]]:
    """(PackedTensor records, float tensors) describing ``qm``'s quantized graph."""
    from qgraph.backends.qpack import PackedTensor

    gm = qm.qgraph
    wq = weight_quantizers(gm)
    state = used_state(gm)
    masks = weight_masks(gm)
    packed = []
    for key, qname in sorted(wq.items()):
        q = gm.get_submodule(qname)
        if not q.initialized:
            raise QGraphError(f"weight quantizer {qname} has no scale yet: calibrate the model before packing")
        spec = q.spec
        weight = effective_weight(gm, state, key)
        if weight is None:
            weight = gm.get_parameter(key) if key in dict(gm.named_parameters()) else gm.get_buffer(key)
        nm, mask_mod = None, gm.get_submodule(masks[key]) if key in masks else None
        if mask_mod is not None and mask_mod.m:  # N:M: the kept positions travel as indices (the codes shrink)
            nm = {"n": mask_mod.n, "m": mask_mod.m, "indices": nm_indices(mask_mod.mask, mask_mod.n, mask_mod.m).numpy()}
        if mask_mod is not None:  # the mask is rebuilt from the codes (and indices) at load
            state.pop(f"{masks[key]}.mask", None)
        with torch.no_grad():
            scale = q.effective_scale().detach()
            codes = stored_codes(q, weight.detach().float())
        scale_np = scale.cpu().numpy().astype(np.float16 if spec.scale_dtype == "float16" else np.float32)
        packed.append(PackedTensor(
            name=key, codes=codes.cpu().numpy(), bits=spec.bits, qmin=spec.qmin, qmax=spec.qmax,
            scale=scale_np, zero_point=q.zero_point.detach().cpu().numpy(),
            granularity=granularity_to_json(spec.granularity), nm=nm,
        ))
        for k in (key, f"{qname}.scale", f"{qname}.zero_point"):  # the packed record carries these
            state.pop(k, None)
    from qgraph.subset import pack_codebooks

    packed += pack_codebooks(gm, state)  # DFSQ activation codebooks: indices + table (codebook encoding)
    floats = {k: v.detach().cpu().numpy() for k, v in sorted(state.items())}
    return packed, floats


def write(qm, path: str) -> int:
    """Write ``qm`` as a qpack at ``path``; returns the file size."""
    from qgraph.backends.qpack import write_qpack

    packed, floats = packed_weights(qm)
    meta = {
        "recipe": qm.recipe.to_json(),
        _INPUTS_KEY: example_input_specs(qm),
        "fold_bn": qm.fold_bn,
    }
    from qgraph.task_scales import qpack_meta

    meta.update(qpack_meta(qm))  # "tasks": names and per-task tables (docs/qpack.md)
    return write_qpack(path, packed, floats, meta)


_MAX_RECORDED_VALUES = 65536  # integer example inputs up to this size may be stored with their values


def example_input_specs(qm) -> list[dict]:
    """Shape and dtype of each example input, for the qpack's meta (and its name, for inputs given by
    name), so ``load`` can make inputs of the same kind. Where the model fails on the inputs ``load``
    would make (``nn.EmbeddingBag`` offsets must start at 0, lengths must fit), the values of the
    integer and boolean example inputs are stored too (up to 65,536 each), and ``load`` uses them."""
    names = qm.qgraph.capture.keywords or (None,) * len(qm._example_inputs)
    specs = [_input_spec(a, name) for a, name in zip(qm._example_inputs, names)]
    g = torch.Generator().manual_seed(0)
    try:
        qm._probe(tuple(_synth_value(s, g) for s in specs))
    except Exception:  # noqa: BLE001 - the model refuses made-up inputs: keep the example's integers
        specs = [_input_spec(a, name, values=True) for a, name in zip(qm._example_inputs, names)]
    return specs


def _input_spec(a, name: str | None = None, values: bool = False) -> dict:
    spec = _value_spec(a, values)
    return {"name": name, **spec} if name else spec


def _value_spec(a, values: bool = False) -> dict:
    """A tensor's shape and dtype (and, with ``values``, the values of an integer or boolean one);
    lists and tuples of inputs nested (``forward(self, views: list)``); None, Python numbers and strings
    as they are (example inputs ``(x, None, 2.0)``, ``{"x": images, "task": "seg"}``)."""
    if isinstance(a, torch.Tensor):
        spec = {"shape": list(a.shape), "dtype": str(a.dtype).replace("torch.", "")}
        if values and not a.is_floating_point() and not a.is_complex() and a.numel() <= _MAX_RECORDED_VALUES:
            spec["values"] = a.flatten().tolist()
        return spec
    if a is None:
        return {"none": True}
    if isinstance(a, (bool, int, float, str)):
        return {"value": a}
    if isinstance(a, (list, tuple)):
        return {"list" if isinstance(a, list) else "tuple": [_value_spec(x, values) for x in a]}
    raise QGraphError(f"example inputs must be tensors, lists or tuples of them, None, Python numbers or strings to be recorded "
                      f"in a qpack, got {type(a).__name__}")


def _synth_value(s: dict, g: torch.Generator):
    if "shape" in s:
        dtype = getattr(torch, s["dtype"])
        if "values" in s:  # recorded because the model refuses made-up integers
            values = torch.tensor(s["values"], dtype=dtype)
            if values.numel() != math.prod(s["shape"]):
                raise QGraphError(f"unreadable example-input record in the qpack: {len(s['values'])} values for shape {s['shape']}")
            return values.reshape(s["shape"])
        if dtype.is_floating_point:
            return torch.randn(s["shape"], generator=g).to(dtype)
        # integers 1: a token id in any vocabulary and an attention mask that keeps every token (zeros
        # masked every token out: NaN attention); booleans False, which torch's masks read as "keep"
        return torch.zeros(s["shape"], dtype=dtype) if dtype == torch.bool else torch.ones(s["shape"], dtype=dtype)
    if s.get("none"):
        return None
    if "value" in s:
        return s["value"]
    if "list" in s:
        return [_synth_value(x, g) for x in s["list"]]
    if "tuple" in s:
        return tuple(_synth_value(x, g) for x in s["tuple"])
    raise QGraphError(f"unreadable example-input record in the qpack: {s!r}")


def _synth_inputs(specs: list[dict]) -> tuple | dict:
    """Inputs of the recorded shapes and dtypes (random normal floats, integers 1, booleans False, or
    the recorded values), lists, None and numbers as recorded; a dict by name when the example inputs
    were given by name."""
    g = torch.Generator().manual_seed(0)
    out = [_synth_value(s, g) for s in specs]
    if specs and all(s.get("name") for s in specs):
        return {s["name"]: t for s, t in zip(specs, out)}
    return tuple(out)


@torch.inference_mode(False)  # inside a user's inference_mode block too: the model's state stays trainable
def load(path: str, model: nn.Module | Callable, example_inputs=None, bits=None, task: str | None = None):
    """Rebuild the quantized model stored at ``path`` on ``model`` (the float architecture; its
    weights are replaced) or a factory returning ``model`` / ``(model, example_inputs, ...)``.

    ``bits`` (bit-switch qpacks only): the bit width, or ``{layer glob: bits}``, the model is switched
    to; its weights are derived from the stored INT8 codes (see qgraph.bitswitch_export).

    Example inputs default to the factory's, else to tensors of the recorded shapes (random normal
    floats, integers 1, booleans False; the example's own integers where the model refused those at
    export); give real ones when the model's control flow depends on input values.
    ``task``: for files with task-specific scales, the task to select (default: the first).
    """
    from qgraph.api import prepare
    from qgraph.backends.qpack import read_qpack
    from qgraph.errors import QPackError
    from qgraph.recipes import recipe_from_json

    pack = read_qpack(path)
    if not isinstance(model, nn.Module) and callable(model):
        made = model()
        if isinstance(made, tuple):
            model, *rest = made
            if example_inputs is None and rest:
                example_inputs = rest[0]
        else:
            model = made
    if not isinstance(model, nn.Module):
        raise QGraphError(f"load needs the model (an nn.Module) or a factory for it, got {type(model).__name__}")
    meta = pack.meta
    if "bitswitch" in meta:
        from qgraph.bitswitch_export import load_bitswitch

        return load_bitswitch(path, pack, model, example_inputs, bits)
    if bits is not None:
        raise QPackError(f"{path} is not a bit-switch qpack: bits= applies only to files of recipe 'bitswitch'")
    try:
        recipe = recipe_from_json(meta["recipe"])
        specs = meta[_INPUTS_KEY]
    except (KeyError, QGraphError) as e:
        raise QPackError(f"{path}: the file does not record a recipe and example inputs ({e})") from e
    args = example_inputs if example_inputs is not None else _synth_inputs(specs)  # prepare checks them
    try:
        qm = prepare(model, args, recipe=recipe, fold_bn=meta.get("fold_bn", True))
    except InputError as e:
        if example_inputs is not None:
            raise
        # the rebuilt inputs have the recorded shapes but random values, which a model may refuse (values
        # in [0, 1) that index a table): the user's own inputs capture it
        raise InputError(f"{e}. These example inputs were rebuilt from {path}'s record of their shapes and dtypes, with "
                         f"random values; pass the model's own with qgraph.load(path, model, example_inputs=...)") from e
    gm = qm.qgraph
    wq = weight_quantizers(gm)
    masks = weight_masks(gm)
    expected = set(used_state(gm)) - {f"{n}.{p}" for n in wq.values() for p in ("scale", "zero_point")}
    expected -= {f"{masks[k]}.mask" for k in wq if k in masks}  # rebuilt from the packed codes
    missing = sorted(expected - set(pack.floats) - set(pack.packed))
    extra = sorted((set(pack.floats) | set(pack.packed)) - expected)
    if missing or extra:
        raise QPackError(
            f"{path} does not fit this model: "
            + (f"the model needs {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''} which the file lacks; " if missing else "")
            + (f"the file has {', '.join(extra[:5])}{' …' if len(extra) > 5 else ''} which the model does not use" if extra else "")
        )
    state = {k: torch.from_numpy(np.array(v, copy=True, order="C")) for k, v in pack.floats.items()}  # keeps 0-d shapes
    with torch.no_grad():
        for key, p in pack.packed.items():
            if p.codebook is not None and key not in wq:  # a codebook-encoded tensor (DFSQ activation codebooks)
                from qgraph.subset import unpack_codebook

                state[key] = unpack_codebook(p)
                continue
            if key not in wq:
                raise QPackError(f"{path}: tensor {key} is packed but the model has no quantizer for it")
            q = gm.get_submodule(wq[key])
            scale = torch.from_numpy(np.asarray(p.scale, dtype=np.float32))
            zp = torch.from_numpy(np.asarray(p.zero_point, dtype=np.float32))
            codes = torch.from_numpy(np.array(p.codes, copy=True, order="C"))
            target_shape = _state_shape(gm, key)
            if tuple(codes.shape) != target_shape:
                raise QPackError(f"{path}: tensor {key} has shape {tuple(codes.shape)}, the model's is {target_shape}")
            if (p.qmin, p.qmax) != (q.spec.qmin, q.spec.qmax):
                raise QPackError(f"{path}: tensor {key} is on grid [{p.qmin}, {p.qmax}], the recipe says [{q.spec.qmin}, {q.spec.qmax}]")
            q.set_qparams(scale, zp)
            q.mode, q.observer, q._refresh = "quantize", None, False
            state[key] = dequantize_affine(codes, scale, zp, p.qmin, p.qmax, q.spec.granularity)
            if key in masks:
                _restore_mask(gm.get_submodule(masks[key]), p, state[key], path)
    try:
        gm.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise QPackError(f"{path} does not fit this model: {e}") from e
    qm.eval()  # first: eval() marks fixed-scale weight quantizers for a refresh, which the file's qparams override
    for q in gm.modules():
        if isinstance(q, FakeQuantize):
            q.mode, q.observer, q._refresh = "quantize", None, False
    if task is not None:
        qm.set_task(task)
    return qm


def _restore_mask(mask_mod, p, weight: torch.Tensor, path: str) -> None:
    """Set a weight's sparsity mask from the file: N:M from its indices, else the non-zero weights
    (a kept weight that quantized to zero reads as pruned, which changes no output)."""
    from qgraph.errors import QPackError

    if mask_mod.m:
        if p.nm is None or (p.nm["n"], p.nm["m"]) != (mask_mod.n, mask_mod.m):
            got = f"{p.nm['n']}:{p.nm['m']}" if p.nm is not None else "no N:M layout"
            raise QPackError(f"{path}: tensor {p.name} has {got}, the recipe says {mask_mod.n}:{mask_mod.m}")
        mask = nm_mask_from_indices(torch.from_numpy(p.nm["indices"]), tuple(weight.shape), p.nm["n"], p.nm["m"])
    else:
        mask = weight != 0
    mask_mod.mask = mask


def _state_shape(gm: fx.GraphModule, key: str) -> tuple:
    owner, _, name = key.rpartition(".")
    return tuple(getattr(gm.get_submodule(owner) if owner else gm, name).shape)
