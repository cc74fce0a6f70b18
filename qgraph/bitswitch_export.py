"""Export and load of bit-switch models: one INT8 qpack serves every bit width (ALGORITHMS.md §6.8).

* :func:`write_bitswitch_qpack`: each bit-switched weight as its INT8 codes (``high_bits``) with the
  shared per-channel scale; every activation scale of every bit width, every per-bit BatchNorm and
  the float layers as plain tensors. No float copy of a bit-switched weight is stored.
* :func:`derive_weights`: the l-bit codes and steps of every weight, straight from the file's INT8
  codes by the rounding shift (what a deployment runtime does).
* :func:`load_bitswitch` (``qgraph.load(path, model, bits=...)``): the bit-switch QModel rebuilt from
  the file and switched to ``bits`` (an int or a per-layer map); bit for bit the writer's
  ``qm.set_bits(bits)``.
* :func:`materialize` (``qm.at_bits(bits)``): a fixed-precision copy with ordinary
  :class:`~qgraph.quantizer.FakeQuantize` weight / activation quantizers (the derived l-bit codes and
  the bit width's activation scales) and each layer's BatchNorm for that bit width; its outputs equal
  the bit-switch model's bit for bit, and it exports to ONNX through the usual verified path.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import numpy as np
import torch
from torch import nn

from qgraph.bitswitch import (
    BitSwitchActQuantizer,
    BitSwitchRecipe,
    DoubleRoundWeightQuantizer,
    bitswitch_layers,
    bitswitch_modules,
    double_round_codes,
    get_bits,
    resolve_bits,
    set_bits,
)
from qgraph.errors import ExportError, QPackError
from qgraph.granularity import PerChannel, PerTensor, granularity_to_json
from qgraph.meta import FLOAT_BIASES_KEY
from qgraph.model import ExportResult, QModel
from qgraph.primitives import dequantize_affine, integer_range
from qgraph.qspec import QSpec
from qgraph.quantizer import FakeQuantize
from qgraph.recipes import Recipe

META_KEY = "bitswitch"

__all__ = ["materialize", "export_bitswitch", "write_bitswitch_qpack", "load_bitswitch", "derive_weights", "FixedBitsQModel"]


def _weight_sources(gm) -> dict[str, str]:
    """``{weight state key: weight quantizer name}`` for the bit-switched weights."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), DoubleRoundWeightQuantizer):
            out[str(node.args[0].target)] = str(node.target)
    return out


def _bits_label(bits: dict[str, int]) -> str:
    values = set(bits.values())
    return f"w{values.pop()}" if len(values) == 1 else "mixed(" + ",".join(f"{k}:{v}" for k, v in bits.items()) + ")"


class FixedBitsQModel(QModel):
    """A bit-switch model frozen at one bit map (``qm.at_bits(...)``): exports ONNX; its qpack is the
    bit-switch model's INT8 one (``qgraph.load(path, model, bits=...)`` derives this model)."""

    def export(self, path: str, *, formats: tuple[str, ...] = ("onnx",), **kwargs) -> ExportResult:
        if "qpack" in formats:
            raise ExportError("a fixed-precision model derived from a bit-switch model has no qpack of its own: export the "
                              "bit-switch model (one INT8 qpack) and load it with qgraph.load(path, model, bits=...)")
        return super().export(path, formats=formats, **kwargs)


def _replace(gm, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, module)


@torch.no_grad()
def materialize(qm: QModel, bits=None) -> FixedBitsQModel:
    """A fixed-precision copy of ``qm`` at ``bits`` (int or per-layer map; default: the current bits)."""
    wanted = resolve_bits(qm, bits) if bits is not None else get_bits(qm)
    gm = copy.deepcopy(qm.qgraph).eval()
    set_bits(gm, wanted)
    sources = {q: key for key, q in _weight_sources(gm).items()}
    signed = {m.layer: int(m.signed) == 1 for m in bitswitch_modules(gm).values() if isinstance(m, BitSwitchActQuantizer)}
    for name, m in list(bitswitch_modules(gm).items()):
        b = m.bits
        if isinstance(m, DoubleRoundWeightQuantizer):
            w = gm.get_parameter(sources[name])
            codes, step = m.codes(w.detach()), m.step()
            spec = QSpec(bits=b, symmetric=True, signed=True, granularity=PerChannel(m.axis), learnable=True)
            fq = FakeQuantize(spec, "weight", where=m.layer)
            fq.set_qparams(step, torch.zeros_like(step))
            lo, hi = integer_range(b, True)
            w.data = dequantize_affine(codes, step, torch.zeros_like(step), lo, hi, PerChannel(m.axis))
        elif isinstance(m, BitSwitchActQuantizer):
            spec = QSpec(bits=b, symmetric=False, signed=bool(int(m.signed)), granularity=PerTensor(), learnable=True)
            fq = FakeQuantize(spec, "activation", where=m.layer)
            fq.set_qparams(m.effective_scale().detach().reshape(()), torch.zeros(()))
        else:
            _replace(gm, name, copy.deepcopy(m.current()).eval())
            continue
        fq.mode, fq.observer = "quantize", None
        _replace(gm, name, fq.eval())
    _annotate(gm, wanted, signed)
    gm.meta[FLOAT_BIASES_KEY] = True  # its biases are on no int32 grid: ONNX Runtime must not round them
    recipe = Recipe(f"{qm.recipe.name}@{_bits_label(wanted)}", None, None, kinds=qm.recipe.kinds, description="fixed bits of a bit-switch model")
    out = FixedBitsQModel(gm, qm._float_graph, recipe, qm._example_inputs, list(qm.changes), fold_bn=False)
    return out.eval()


def _annotate(gm, wanted: dict[str, int], signed: dict[str, bool]) -> None:
    """Give the bit-switched ops' annotations (written by the pass) their fixed bit widths, for summary()."""
    from qgraph.meta import ANNOTATION_KEY

    for node in gm.graph.nodes:
        ann = node.meta.get(ANNOTATION_KEY)
        if ann is None or ann.module_path not in wanted:
            continue
        b, sign = wanted[ann.module_path], signed.get(ann.module_path, False)
        node.meta[ANNOTATION_KEY] = dataclasses.replace(ann, weight=ann.weight.with_(bits=b), activation=ann.activation.with_(bits=b, signed=sign))


def _packed(qm: QModel) -> tuple[list, dict[str, np.ndarray]]:
    from qgraph.backends.qpack import PackedTensor
    from qgraph.packing import used_state

    gm = qm.qgraph
    state = used_state(gm)
    packed = []
    for key, qname in sorted(_weight_sources(gm).items()):
        q = gm.get_submodule(qname)
        if q.rounding != "double":
            raise ExportError(f"layer {q.layer} rounds float weights directly (rounding={q.rounding!r}): its lower bit widths "
                              "cannot be derived from INT8 codes, so it has no INT8 qpack")
        lo, hi = integer_range(q.high_bits, True)
        with torch.no_grad():
            codes = q.codes(state[key].detach(), q.high_bits)
            scale = q.effective_scale().detach().float()
        packed.append(PackedTensor(name=key, codes=codes.cpu().numpy(), bits=q.high_bits, qmin=lo, qmax=hi,
                                   scale=scale.cpu().numpy(), zero_point=np.zeros(scale.shape, np.int8),
                                   granularity=granularity_to_json(PerChannel(q.axis))))
        state.pop(key)
        state.pop(f"{qname}.scale")
    floats = {k: v.detach().cpu().numpy() for k, v in sorted(state.items())}
    return packed, floats


def write_bitswitch_qpack(qm: QModel, path: str) -> int:
    """Write the one INT8 qpack of a bit-switch model; returns the file size."""
    from qgraph.backends.qpack import write_qpack
    from qgraph.packing import _INPUTS_KEY, example_input_specs

    packed, floats = _packed(qm)
    meta = {
        "recipe": qm.recipe.to_json(),
        _INPUTS_KEY: example_input_specs(qm),
        "fold_bn": False,
        META_KEY: {"bits": list(qm.recipe.bits), "layers": {k: list(v) for k, v in bitswitch_layers(qm).items()}},
    }
    return write_qpack(path, packed, floats, meta)


def derive_weights(path: str, bits) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{weight key: (l-bit codes, per-channel step)}`` derived from a bit-switch qpack's INT8 codes.

    ``bits``: an int for every layer, or ``{layer path: bits}`` (layer = weight key without ``.weight``;
    a parameter of the model itself, ``w``, is layer ``w``).
    """
    from qgraph.backends.qpack import read_qpack

    pack = read_qpack(path)
    info = pack.meta.get(META_KEY)
    if info is None:
        raise QPackError(f"{path} is not a bit-switch qpack (no {META_KEY!r} entry in its meta)")
    out = {}
    for key, p in pack.packed.items():
        layer = key.rpartition(".")[0] or key  # a parameter of the model itself (F.linear(x, self.w)) is its own layer
        b = bits.get(layer) if isinstance(bits, dict) else bits
        if b not in info["layers"].get(layer, ()):
            raise QPackError(f"{path}: layer {layer} switches among {info['layers'].get(layer)} bits, not {b!r}")
        codes = double_round_codes(torch.from_numpy(np.array(p.codes, copy=True)), p.bits, b)
        out[key] = (codes, torch.from_numpy(np.asarray(p.scale, np.float32)) * float(2 ** (p.bits - b)))
    return out


def load_bitswitch(path: str, pack, model: nn.Module, example_inputs, bits=None) -> QModel:
    """Rebuild a bit-switch QModel from its INT8 qpack (see ``qgraph.load``) and switch it to ``bits``."""
    from qgraph.api import prepare
    from qgraph.packing import _INPUTS_KEY, _synth_inputs, used_state
    from qgraph.recipes import recipe_from_json

    try:
        recipe = recipe_from_json(pack.meta["recipe"])
        specs = pack.meta[_INPUTS_KEY]
    except (KeyError, ValueError) as e:
        raise QPackError(f"{path}: the file does not record a recipe and example inputs ({e})") from e
    if not isinstance(recipe, BitSwitchRecipe):
        raise QPackError(f"{path}: the recorded recipe {recipe.name!r} is not a bit-switch recipe")
    args = example_inputs if example_inputs is not None else _synth_inputs(specs)  # prepare checks them
    qm = prepare(model, args, recipe=recipe)
    gm = qm.qgraph
    sources = _weight_sources(gm)
    expected = set(used_state(gm)) - {f"{q}.scale" for q in sources.values()}
    have = set(pack.floats) | set(pack.packed)
    missing, extra = sorted(expected - have), sorted(have - expected)
    if missing or extra:
        raise QPackError(f"{path} does not fit this model: "
                         + (f"the model needs {', '.join(missing[:5])} which the file lacks; " if missing else "")
                         + (f"the file has {', '.join(extra[:5])} which the model does not use" if extra else ""))
    state = {k: torch.from_numpy(np.array(v, copy=True, order="C")) for k, v in pack.floats.items()}
    with torch.no_grad():
        for key, p in pack.packed.items():
            if key not in sources:
                raise QPackError(f"{path}: tensor {key} is packed but is not a bit-switched weight of this model")
            q = gm.get_submodule(sources[key])
            if (p.qmin, p.qmax) != integer_range(q.high_bits, True):
                raise QPackError(f"{path}: tensor {key} is on grid [{p.qmin}, {p.qmax}], the recipe's is int{q.high_bits}")
            scale = torch.from_numpy(np.asarray(p.scale, dtype=np.float32))
            codes = torch.from_numpy(np.array(p.codes, copy=True, order="C"))
            if tuple(codes.shape) != tuple(gm.get_parameter(key).shape) or scale.shape != q.scale.shape:
                raise QPackError(f"{path}: tensor {key} has shape {tuple(codes.shape)}, the model's is {tuple(gm.get_parameter(key).shape)}")
            q.scale.data = scale
            state[key] = dequantize_affine(codes, scale, torch.zeros_like(scale), p.qmin, p.qmax, PerChannel(q.axis))
    try:
        gm.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise QPackError(f"{path} does not fit this model: {e}") from e
    qm.eval()
    if bits is not None:
        qm.set_bits(bits)
    return qm


def export_bitswitch(qm: QModel, path: str, *, formats=("onnx", "qpack"), verify: bool = True, tolerance=None,
                     min_top1: float = 0.99, dynamic_batch: bool = True, uint8_weights: bool = False) -> ExportResult:
    """``qm.export`` for bit-switch models: ``path.qpack`` (INT8, every bit width) and ``path.onnx`` at the
    model's current bits (``qm.at_bits(...).export(...)`` for another precision)."""
    from qgraph.model import EXPORT_FORMATS

    unknown = set(formats) - set(EXPORT_FORMATS)
    if unknown or not formats:
        raise ExportError(f"unknown export format(s) {sorted(unknown) or formats}; known: {', '.join(EXPORT_FORMATS)}")
    base = path[:-5] if path.endswith(".onnx") else path[:-6] if path.endswith(".qpack") else path
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    qm.eval()
    if "onnx" in formats:
        result = materialize(qm).export(base + ".onnx", formats=("onnx",), verify=verify, tolerance=tolerance,
                                        min_top1=min_top1, dynamic_batch=dynamic_batch, uint8_weights=uint8_weights)
    else:
        result = ExportResult(onnx_path=None, report_path=base + ".report.json", onnx_bytes=0, max_abs_error=float("nan"),
                              tolerance=0.0, top1_agreement=None)
    if "qpack" in formats:
        result.qpack_path = base + ".qpack"
        result.qpack_bytes = write_bitswitch_qpack(qm, result.qpack_path)
        if verify:
            _verify_qpack(qm, result.qpack_path)
    if "onnx" not in formats:
        qm._write_report(result)
    return result


def _verify_qpack(qm: QModel, path: str) -> None:
    """Every bit width's codes derived from the file equal the ones the model computes."""
    gm = qm.qgraph
    sources = _weight_sources(gm)
    for b in qm.recipe.bits:
        derived = derive_weights(path, b)
        for key, qname in sources.items():
            q = gm.get_submodule(qname)
            codes, step = derived[key]
            if not torch.equal(codes, q.codes(gm.get_parameter(key).detach(), b)) or not torch.equal(step, q.step(b)):
                raise ExportError(f"qpack round trip changed {key} at {b} bits: derived codes differ from the model's")
