"""Rewrites of an exported, folded QDQ model for ONNX Runtime's fusions (:func:`prepare_for_onnxruntime`),
numbered after the folding rules 1 to 4 of :mod:`qgraph.backends.onnx_fold`:

5. A packed (int4/int2) weight read by a per-channel or per-tensor ``DequantizeLinear`` that feeds
   a Conv / ConvTranspose / Gemm / MatMul whose other input is itself dequantized (activations are
   quantized, w4a8) gets a ``Cast(to int8)`` between the initializer and the DequantizeLinear: the
   file keeps the packed codes, ONNX Runtime folds the Cast into an int8 constant when it loads the
   model and then fuses the integer kernels (QLinearConv, QGemm). It has none for int4 weights, so
   without the Cast the layer runs as DequantizeLinear + float Conv, slower than FP32.
6. A weight-only ``DequantizeLinear → MatMul → Add(bias) → Relu`` (or another activation ONNX
   Runtime fuses into Gemm) gets its bias added by ``Sum`` instead of ``Add``: ONNX Runtime would
   otherwise fuse MatMul + Add into Gemm and Gemm + Relu into FusedGemm before it fuses the
   DequantizeLinear into MatMulNBits, and the layer would run as float GEMM on weights dequantized
   at every run. The same for an integer ``DQ(x), DQ(W) → MatMul → Add(bias)`` with no
   ``QuantizeLinear`` after it (a linear whose result stays float, e.g. a classifier head): as Sum
   it runs as ``MatMulIntegerToFloat``; as Gemm, ONNX Runtime 1.32 fuses no QDQ Gemm without an
   output ``Q`` and runs a float Gemm.
7. A weight-only conv's per-channel ``DequantizeLinear`` (and one that a MatMul of two weights reads)
   becomes ``Mul(Cast(codes → float), scale)``
   (with a ``Sub`` of the zero point when it is not 0): the same float arithmetic, but plain ops that
   ONNX Runtime constant-folds when it loads the model, so the conv runs at FP32 speed on float
   weights while the file keeps the integer codes. ONNX Runtime never folds a DequantizeLinear (it
   keeps them for its QDQ fusions) and has no weight-only conv kernel, so the DequantizeLinear would
   otherwise run at every inference (ResNet-18 w4a16: 0.54× FP32 speed). A conv whose input is
   dequantized behind a zero ``Pad`` (``padding='same'`` with an even kernel) is not weight-only:
   ONNX Runtime folds the Pad into the Conv, and then re-quantizes float weights per tensor.
   A MatMul of two dequantized weights (an LSTM's ``W_hh @ W_hr`` with projections) is folded
   whole the same way; ONNX Runtime otherwise fused it into ``MatMulIntegerToFloat``, whose
   per-row zero point of the left weight it refuses at run time in its exact int8 mode (rule 14).
8. An int2/uint2 weight of a weight-only MatMul whose column count is not a multiple of 4 is stored
   in an int4/uint4 container instead: ONNX Runtime 1.32 fuses it into ``MatMulNBits(bits=2)`` and
   then computes wrong results (a classifier head with 10 outputs came out 100% off); int4 is right.
   So is an int2/uint2 table whose dequantized values a Transpose reads (GPT-2's tied embedding and
   LM head, bit switching at 2 bits): ONNX Runtime 1.32 failed to load that file, constant-folding
   the transposed int2 values ("Element type mismatch between tensor proto and ortvalue_initializer").
9. The all-zero zero point of a symmetric weight-only MatMul weight on 4 or 2 bits is left out (0 is
   DequantizeLinear's default): MatMulNBits then has no zero-point input, as in the files ONNX
   Runtime's own 4-bit quantizer writes, and a group-32 int4 file is 2.5% smaller. An int8 weight
   keeps it: ONNX Runtime's exact int8 mode (rule 14) gives a per-channel int8 DequantizeLinear with
   no zero point a scalar one of 128, and then refuses to run it ("x_zero_point must be null or 1D
   tensor with size 10").

10. A Conv, ConvTranspose or Gemm whose input and weight are both dequantized and whose bias is a float initializer
    gets the bias added by an ``Add`` after it, where its activations are on fewer than 8 bits (a
    ``Clip`` between Q and DQ) or its result is not quantized again (no ``QuantizeLinear`` after it,
    directly or through a Relu). ONNX Runtime otherwise rounds the bias to int32 on ``s_x · s_w``
    when it loads the model (its QDQ bias quantization), which the quantized PyTorch model does not
    do: an OFQ model (2-bit activations, 3-bit weights) came out 0.55 off, bit-switch models at 4
    bits 0.003. A float bias added to a ``MatMul`` of DQ inputs (bit switching, narrow codes) becomes
    ``Sub(MatMul, -b)``: ONNX Runtime's MatMulAddFusion would make a 2-D ``MatMul + Add`` a Gemm and
    round its bias just the same. With 8-bit activations whose result is quantized again (w8a8,
    w4a8) the op keeps its bias, so ONNX Runtime still fuses QLinearConv / QGemm, unless the bias is
    off that op's grid ``s_x · s_w``: a layer called at several steps with different input scales (a
    state-space scan's shared ``B`` linear, stepped over time) has its bias on one step's grid at
    most, and ONNX Runtime's rounding of the others flipped one output code 0.0071 off (tolerance
    1.1e-4). Biases on the grid (post-training bias correction puts them there) keep the fusion.

11. An activation's ``DequantizeLinear`` with one step per position along an axis (OFQ's per-token
    steps) becomes ``Mul(Sub(Cast(q → float), zp), scale)``, before rules 5 to 10. ONNX Runtime has no
    integer kernel for per-axis activations, yet its extended fusions take them in: ``DQ → MatMul``
    became ``MatMulIntegerToFloat``, which refuses a per-axis zero point at run time, and
    ``DQ → LeakyRelu → Q`` became ``QLinearLeakyRelu``, whose lookup table failed to build. The same
    float arithmetic as plain ops runs where the fused kernels could not.

12. An activation's int8 ``QuantizeLinear → [Clip] → DequantizeLinear`` (a signed grid: OFQ's 2-bit
    activations) moves to uint8, codes, zero point and Clip bounds shifted by 128: the same values.
    ONNX Runtime converts int8 pairs to uint8 itself, and where it had first propagated a
    DequantizeLinear past an Unsqueeze or Reshape, it wrote a QuantizeLinear whose output type no
    longer matched its zero point, and the file failed to load. Applied first of all; weights keep their
    signed grids (they are initializers, not a QuantizeLinear's computed input).

13. A graph output that a ``Transpose`` also reads, on its way to a ``QuantizeLinear``, is computed under
    another name and written to the output by an ``Identity``. ONNX Runtime's transpose optimizer
    (1.32) moves the Q/DQ pair above the Transpose and then fed the graph output from the new
    DequantizeLinear: the output came back rounded to the matmul input's 8-bit grid (a Sinkhorn
    layer's transport plan, returned and multiplied transposed, 0.00067 off, half a step).

14. Every int8 weight's ``DequantizeLinear`` reads a zero point of its own (the exporter shares
    identical initializers, and all-zero per-channel zero points of equal length are identical). On
    x86 CPUs without VNNI, ONNX Runtime's u8·s8 kernels add pairs of products in int16 with
    saturation; its exact mode (``session.x64quantprecision``, what qgraph's checks run:
    :func:`qgraph.backends.ort.session`) converts each fused op's int8 weight and zero point to
    uint8 under the name ``<initializer>_s8_2_u8``, and ONNX Runtime 1.32 refused to load a file whose
    zero point two ops shared ("Attempt to replace the existing tensor"). Applied last. A weight
    tensor that several ops read (one parameter used twice, a tied embedding and LM head) stays
    shared in the file, which would double it; :func:`qgraph.backends.ort.session` loads a copy
    with one per reader instead.

15. Optional, after these (``export(uint8_weights=True)``): int8 weights of integer kernels stored as uint8
    with zero point + 128, exact under any ONNX Runtime session options (:mod:`qgraph.backends.onnx_uint8_weights`).

16. The constant ``Mul`` the exporter puts on each side of attention's ``q·kᵀ`` MatMul goes after it, where
    both sides are dequantized, so that ONNX Runtime fuses ``MatMulIntegerToFloat``
    (:mod:`qgraph.backends.onnx_attention_scale`). After rule 11, before rule 5.

Rules 5 to 16 depend on what ONNX Runtime does; the file stays valid ONNX that any runtime can run.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from qgraph.backends.onnx_attention_scale import scale_after_attention_matmul
from qgraph.backends.onnx_fold import _RANGE, _attr, _to_numpy, subgraph_reads

# packed weight type -> the 8-bit type ONNX Runtime's integer kernels take
_WIDEN = {TensorProto.INT4: TensorProto.INT8, TensorProto.UINT4: TensorProto.UINT8,
          TensorProto.INT2: TensorProto.INT8, TensorProto.UINT2: TensorProto.UINT8}
_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# ops a quantized activation passes through on its way to a weighted op (ONNX Runtime propagates
# Q/DQ across them before it fuses)
_PASS_THROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
# activations ONNX Runtime's GemmActivationFusion folds into FusedGemm (onnxruntime 1.32)
_GEMM_ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "Softplus",
                     "Softsign", "ThresholdedRelu"}


def prepare_for_onnxruntime(model: onnx.ModelProto, float_biases: bool = False) -> dict[str, int]:
    """Rules 5 to 14 and 16 (module docstring), in place; returns how many weights or nodes each rule changed.
    ``float_biases``: rule 10 for every integer Conv/ConvTranspose/Gemm and biased MatMul (a bit-switch
    model's fixed-bits copy)."""
    return {
        "uint8_activations": _signed_activations_in_uint8(model),
        "per_axis_activations": _per_axis_activations_as_float_ops(model),
        "attention_scale": scale_after_attention_matmul(model, _Graph(model.graph)),
        "int8_compute": _int8_compute_for_packed_weights(model),
        "sum_bias": _keep_matmul_for_matmulnbits(model),
        "foldable_dequantize": _foldable_weight_only_convs(model),
        "int2_as_int4": _int2_matmul_in_int4(model),
        "zero_point_dropped": _drop_zero_points_of_matmul_weights(model),
        "float_bias": _exact_float_bias(model, everywhere=float_biases),
        "output_identity": _outputs_read_transposed(model),
        "own_zero_point": _own_weight_zero_points(model),
    }


class _Graph:
    """Producer / consumer / initializer lookups over a GraphProto (rebuilt by each rule)."""

    def __init__(self, g: onnx.GraphProto) -> None:
        self.g = g
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.users.setdefault(i, []).append(n)
            for i in subgraph_reads(n):  # an If / Loop whose branches read the value counts as its reader
                self.users.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}

    def dequantizer(self, name: str) -> onnx.NodeProto | None:
        """The DequantizeLinear that computes ``name``, directly or through pass-through ops, or None."""
        for _ in range(16):
            p = self.producer.get(name)
            if p is None or p.op_type == "DequantizeLinear":
                return p
            if not self.passes_through(p):
                return None
            name = p.input[0]
        return None

    def dequantized(self, name: str) -> bool:
        """``name`` is computed by a DequantizeLinear, directly or through pass-through ops."""
        return self.dequantizer(name) is not None

    def passes_through(self, node: onnx.NodeProto) -> bool:
        """An op between a DequantizeLinear and its reader that ONNX Runtime's fusions see past: a
        reshape or max pool, or a zero ``Pad`` (``padding='same'`` with an even kernel), which its
        PadFusion folds into the Conv after it when it loads the model."""
        if node.op_type in _PASS_THROUGH:
            return True
        if node.op_type != "Pad" or _attr(node, "mode", b"constant") not in (b"constant", "constant"):
            return False
        value = self.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return len(node.input) <= 2 or not node.input[2] or value is not None and not np.any(_to_numpy(value))

    def weight_dq(self, dq: onnx.NodeProto, types) -> onnx.TensorProto | None:
        """The integer initializer a DequantizeLinear reads, if it is one of ``types`` and only
        weighted ops read the result, as their weight."""
        if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx") or dq.output[0] in self.outputs:
            return None
        w = self.inits.get(dq.input[0])
        readers = self.users.get(dq.output[0], [])
        if w is None or w.data_type not in types or not readers:
            return None
        for r in readers:
            if r.op_type not in _WEIGHTED or r.domain not in ("", "ai.onnx") or len(r.input) < 2:
                return None
            if r.input[1] != dq.output[0] or r.input[0] == dq.output[0]:
                return None
        return w

    def replace_nodes(self, before: dict[int, list[onnx.NodeProto]], drop: set[int] = frozenset(),
                      after: dict[int, list[onnx.NodeProto]] | None = None) -> None:
        """Insert nodes before (``after``: after) the node at each index of ``before``; drop the nodes
        at the indices in ``drop``; drop initializers nothing reads any more."""
        nodes = []
        for i, n in enumerate(self.g.node):
            nodes.extend(before.get(i, []))
            if i not in drop:
                nodes.append(n)
            nodes.extend((after or {}).get(i, []))
        del self.g.node[:]
        self.g.node.extend(nodes)
        used = {i for n in self.g.node for i in (*n.input, *subgraph_reads(n))}
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)

    def add_initializer(self, value: np.ndarray, name: str) -> str:
        """``value`` as an initializer named ``name``, or ``name_2``, ... where ``name`` holds another
        value (a zero point shared by two weights, reshaped along different axes)."""
        base, i = name, 1
        while name in self.inits:
            old = _to_numpy(self.inits[name])
            if old.dtype == value.dtype and old.shape == value.shape and np.array_equal(old, value):
                return name
            i += 1
            name = f"{base}_{i}"
        self.inits[name] = numpy_helper.from_array(value, name)
        self.g.initializer.append(self.inits[name])
        return name

    def rewrite_initializer(self, name: str, value: np.ndarray, suffix: str) -> str:
        """``value`` under ``name`` when one node reads it, else under a new name ``name_suffix``."""
        if len(self.users.get(name, [])) == 1 and name not in self.outputs:
            self.inits[name].CopyFrom(numpy_helper.from_array(value, name))
            return name
        return self.add_initializer(value, f"{name}_{suffix}")


def _int8_compute_for_packed_weights(model: onnx.ModelProto) -> int:
    """Rule 5: ``packed → Cast(int8) → DequantizeLinear`` where the activation is quantized."""
    gr = _Graph(model.graph)
    before: dict[int, list[onnx.NodeProto]] = {}
    widened: set[str] = set()  # one Cast per initializer, however many DequantizeLinear read it
    for idx, dq in enumerate(gr.g.node):
        w = gr.weight_dq(dq, _WIDEN)
        if w is None or _attr(dq, "block_size", 0):
            continue
        if not all(gr.dequantized(r.input[0]) for r in gr.users[dq.output[0]]):
            continue
        to = _WIDEN[w.data_type]
        suffix = "int8" if to == TensorProto.INT8 else "uint8"
        wide = f"{w.name}_{suffix}"
        if wide not in widened:  # two DequantizeLinear of one (deduplicated) initializer wrote two Casts of one name
            before[idx] = [onnx.helper.make_node("Cast", [w.name], [wide], name=f"{wide}_cast", to=to)]
            widened.add(wide)
        dq.input[0] = wide
        if len(dq.input) > 2 and dq.input[2]:
            zp = _to_numpy(gr.inits[dq.input[2]]).astype(np.int8 if suffix == "int8" else np.uint8)
            dq.input[2] = gr.rewrite_initializer(dq.input[2], zp, suffix)
    if before:
        gr.replace_nodes(before)
    return len(before)


def _keep_matmul_for_matmulnbits(model: onnx.ModelProto) -> int:
    """Rule 6: bias ``Sum`` instead of ``Add`` where ONNX Runtime would fuse MatMul + Add into a float Gemm."""
    gr = _Graph(model.graph)
    changed = 0
    for add in gr.g.node:
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
            continue
        mm = next((gr.producer.get(i) for i in add.input if i not in gr.inits), None)
        if mm is None or mm.op_type != "MatMul" or not any(i in gr.inits for i in add.input):
            continue
        if len(gr.users.get(mm.output[0], [])) != 1:
            continue
        dq = gr.producer.get(mm.input[1])
        if dq is None or not _dequantizes_codes(gr, dq):
            continue
        after = gr.users.get(add.output[0], [])
        if gr.dequantized(mm.input[0]):  # integer MatMul with a float result (MatMulIntegerToFloat)
            gemm_would_take_it = not any(u.op_type == "QuantizeLinear" for u in after)
        else:  # weight-only MatMul (MatMulNBits)
            gemm_would_take_it = len(after) == 1 and after[0].op_type in _GEMM_ACTIVATIONS and add.output[0] not in gr.outputs
        if gemm_would_take_it:
            add.op_type = "Sum"
            changed += 1
    return changed


def _dequantizes_codes(gr: _Graph, dq: onnx.NodeProto) -> bool:
    """``dq`` dequantizes weight codes: an integer initializer, or one that rule 5 widens by a Cast."""
    if gr.weight_dq(dq, _RANGE) is not None:
        return True
    cast = gr.producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
    return cast is not None and cast.op_type == "Cast" and cast.input[0] in gr.inits


def _foldable_weight_only_convs(model: onnx.ModelProto) -> int:
    """Rule 7: a weight-only conv's ``DequantizeLinear`` becomes ``Mul(Sub(Cast(q), zp), scale)``."""
    gr = _Graph(model.graph)
    before: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    for idx, dq in enumerate(gr.g.node):
        if dq.op_type != "DequantizeLinear" or _attr(dq, "block_size", 0):
            continue
        w, readers = gr.weight_dq(dq, _RANGE), gr.users.get(dq.output[0], [])
        conv = w is not None and all(r.op_type in ("Conv", "ConvTranspose") and not gr.dequantized(r.input[0]) for r in readers)
        constant = [r for r in readers if _of_constants(gr, r)]
        if not conv:
            w = gr.inits.get(dq.input[0])
            if w is None or w.data_type not in _RANGE or dq.output[0] in gr.outputs or not constant:
                continue
        scale_t = gr.inits.get(dq.input[1])
        zp_t = gr.inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if scale_t is None or (len(dq.input) > 2 and dq.input[2] and zp_t is None):
            continue
        shape = [1] * len(w.dims)
        if _to_numpy(scale_t).size > 1:
            shape[_attr(dq, "axis", 1) % len(w.dims)] = -1
        if conv or len(constant) == len(readers):
            before[idx] = _float_dequantize(gr, dq, scale_t, zp_t, shape)
            drop.add(idx)
            continue
        out = f"{dq.output[0]}_float"  # a float copy for the products of weights; the other readers keep the DequantizeLinear
        before[idx] = _float_dequantize(gr, dq, scale_t, zp_t, shape, out)
        for r in constant:
            r.input[:] = [out if i == dq.output[0] else i for i in r.input]
    if before:
        gr.replace_nodes(before, drop)
    return len(before)


def _of_constants(gr: _Graph, node: onnx.NodeProto) -> bool:
    """A MatMul or Gemm whose inputs are all initializers or their ``DequantizeLinear``: a product of
    two weights (an LSTM's recurrent weight times its projection), the same at every run."""
    if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
        return False
    for i in node.input:
        p = gr.producer.get(i)
        if i and i not in gr.inits and not (p is not None and p.op_type == "DequantizeLinear" and p.input[0] in gr.inits):
            return False
    return True


def _float_dequantize(gr: _Graph, dq: onnx.NodeProto, scale_t: onnx.TensorProto, zp_t: onnx.TensorProto | None,
                      shape: list[int], out: str | None = None) -> list[onnx.NodeProto]:
    """``DequantizeLinear(q, scale, zp)`` as ``Mul(Sub(Cast(q → float), zp), scale)`` (no ``Sub`` for
    a zero ``zp``), with scale and zero point reshaped to ``shape`` to broadcast along the axis; its
    result is named ``out`` (by default the DequantizeLinear's output)."""
    scale = _to_numpy(scale_t)
    keep = out is not None  # the DequantizeLinear stays: its scale and zero point too
    out = out or dq.output[0]

    def reshaped(name: str, value: np.ndarray, suffix: str) -> str:
        return gr.add_initializer(value, f"{name}_{suffix}") if keep else gr.rewrite_initializer(name, value, suffix)
    nodes = [onnx.helper.make_node("Cast", [dq.input[0]], [f"{out}_codes"], to=scale_t.data_type)]
    codes = f"{out}_codes"
    if zp_t is not None and np.any(_to_numpy(zp_t) != 0):
        zp = reshaped(zp_t.name, _to_numpy(zp_t).astype(scale.dtype).reshape(shape), "float")
        nodes.append(onnx.helper.make_node("Sub", [codes, zp], [f"{out}_centered"]))
        codes = f"{out}_centered"
    s = reshaped(scale_t.name, scale.reshape(shape), "broadcast")
    nodes.append(onnx.helper.make_node("Mul", [codes, s], [out]))
    return nodes


def _signed_activations_in_uint8(model: onnx.ModelProto) -> int:
    """Rule 12: an activation's int8 ``Q → [Clip] → DQ`` → uint8, codes, zero point and bounds + 128."""
    gr = _Graph(model.graph)
    done = 0
    for q in list(gr.g.node):
        if q.op_type != "QuantizeLinear" or q.input[0] in gr.inits or len(q.input) < 3 or q.input[2] not in gr.inits:
            continue
        zp_t = gr.inits[q.input[2]]
        if zp_t.data_type != TensorProto.INT8 or _attr(q, "output_dtype", 0) not in (0, TensorProto.INT8):
            continue
        chain, clips = list(gr.users.get(q.output[0], [])), []
        if len(chain) == 1 and chain[0].op_type == "Clip":
            clips = chain
            chain = list(gr.users.get(chain[0].output[0], []))
        bounds = [gr.inits.get(b) for c in clips for b in c.input[1:]]
        if (not chain or any(d.op_type != "DequantizeLinear" or len(d.input) < 3 or d.input[2] != q.input[2] for d in chain)
                or any(b is None or b.data_type != TensorProto.INT8 for b in bounds) or q.output[0] in gr.outputs):
            continue
        shift = lambda t: (_to_numpy(t).astype(np.int16) + 128).astype(np.uint8)  # noqa: E731
        zp = gr.add_initializer(shift(zp_t), f"{zp_t.name}_uint8")
        for n in [q, *chain]:
            n.input[2] = zp
        for c in clips:
            for k in (1, 2):
                c.input[k] = gr.add_initializer(shift(gr.inits[c.input[k]]), f"{c.input[k]}_uint8")
        for a in q.attribute:
            if a.name == "output_dtype" and a.i:
                a.i = TensorProto.UINT8
        done += 1
    return done


def _outputs_read_transposed(model: onnx.ModelProto) -> int:
    """Rule 13: a graph output that a Transpose on its way to a QuantizeLinear reads → ``Identity``."""
    gr = _Graph(model.graph)
    done = 0
    for node in list(gr.g.node):
        for k, out in enumerate(node.output):
            if out not in gr.outputs or not any(
                    t.op_type == "Transpose" and any(q.op_type == "QuantizeLinear" for q in gr.users.get(t.output[0], []))
                    for t in gr.users.get(out, [])):
                continue
            inner = f"{out}_value"
            node.output[k] = inner
            for reader in gr.users.get(out, []):
                reader.input[:] = [inner if x == out else x for x in reader.input]
            gr.g.node.append(onnx.helper.make_node("Identity", [inner], [out], name=f"{out}_identity"))
            done += 1
    return done


def _per_axis_activations_as_float_ops(model: onnx.ModelProto) -> int:
    """Rule 11: an activation's ``DequantizeLinear`` with one step per position along an axis (OFQ's
    per-token steps) → ``Mul(Sub(Cast(q), zp), scale)``."""
    gr = _Graph(model.graph)
    before: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    for idx, dq in enumerate(gr.g.node):
        if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx") or dq.input[0] in gr.inits:
            continue
        scale_t = gr.inits.get(dq.input[1])
        zp_t = gr.inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        axis = _attr(dq, "axis", 1)
        if scale_t is None or len(scale_t.dims) != 1 or _to_numpy(scale_t).size < 2 or axis >= 0 or _attr(dq, "block_size", 0):
            continue
        if len(dq.input) > 2 and dq.input[2] and zp_t is None:
            continue
        before[idx] = _float_dequantize(gr, dq, scale_t, zp_t, [-1] + [1] * (-axis - 1))
        drop.add(idx)
    if before:
        gr.replace_nodes(before, drop)
    return len(before)


def _int2_matmul_in_int4(model: onnx.ModelProto) -> int:
    """Rule 8: int2 codes of a MatMul weight with ``N % 4 != 0`` columns move to an int4 container."""
    gr = _Graph(model.graph)
    wider = {TensorProto.INT2: ml_dtypes.int4, TensorProto.UINT2: ml_dtypes.uint4}
    changed = 0
    for dq in gr.g.node:
        w = gr.weight_dq(dq, wider)
        if w is None or w.dims[-1] % 4 == 0 or any(r.op_type != "MatMul" for r in gr.users[dq.output[0]]):
            w = _int2_read_through_transpose(gr, dq)
        if w is None:
            continue
        dtype = wider[w.data_type]
        for i in (0, 2):
            if len(dq.input) > i and dq.input[i]:
                t = gr.inits[dq.input[i]]
                dq.input[i] = gr.rewrite_initializer(t.name, _to_numpy(t).astype(np.int8).astype(dtype), "int4")
        changed += 1
    if changed:
        gr.replace_nodes({})
    return changed


def _int2_read_through_transpose(gr: _Graph, dq: onnx.NodeProto) -> onnx.TensorProto | None:
    """The int2/uint2 initializer a DequantizeLinear reads when a Transpose reads its result (a tied
    embedding table that is also the LM head): ONNX Runtime 1.32 fails to load such a file, in the
    constant folding of the transposed int2 values."""
    if dq.op_type != "DequantizeLinear" or not dq.input or not any(r.op_type == "Transpose" for r in gr.users.get(dq.output[0], [])):
        return None
    w = gr.inits.get(dq.input[0])
    return w if w is not None and w.data_type in (TensorProto.INT2, TensorProto.UINT2) else None


def _drop_zero_points_of_matmul_weights(model: onnx.ModelProto) -> int:
    """Rule 9: no zero-point input for signed packed weight-only MatMul weights whose zero points are all 0."""
    gr = _Graph(model.graph)
    signed = {t for t, (lo, _) in _RANGE.items() if lo < 0 and t != TensorProto.INT8}
    changed = 0
    for dq in gr.g.node:
        w = gr.weight_dq(dq, signed)
        if w is None or len(dq.input) < 3 or not dq.input[2] or dq.input[2] not in gr.inits:
            continue
        readers = gr.users[dq.output[0]]
        if any(r.op_type != "MatMul" or gr.dequantized(r.input[0]) for r in readers):
            continue
        if np.any(_to_numpy(gr.inits[dq.input[2]]).astype(np.int8) != 0):
            continue
        del dq.input[2:]
        changed += 1
    if changed:
        gr.replace_nodes({})
    return changed


def _narrow_codes(gr: _Graph, dq: onnx.NodeProto | None) -> bool:
    """A DequantizeLinear of activation codes on fewer than 8 bits (clipped after the QuantizeLinear)."""
    if dq is None or dq.op_type != "DequantizeLinear":
        return False
    src = gr.producer.get(dq.input[0])
    return src is not None and src.op_type == "Clip"


def _requantized(gr: _Graph, out: str) -> bool:
    """``out`` only feeds QuantizeLinear nodes, directly or through a Relu or a Clip that ONNX Runtime
    removes in front of its QuantizeLinear (:func:`_clip_dropped`: ReLU6 before a uint8 grid that ends
    at or below 6); it then fuses the op with its bias into an integer kernel."""
    users = gr.users.get(out, [])
    if len(users) == 1 and (users[0].op_type == "Relu" or _clip_dropped(gr, users[0])):
        users = gr.users.get(users[0].output[0], [])
    return bool(users) and out not in gr.outputs and all(u.op_type == "QuantizeLinear" for u in users)


def _clip_dropped(gr: _Graph, clip: onnx.NodeProto) -> bool:
    """Whether ONNX Runtime's ClipQuantFusion (1.32) removes ``clip``: constant bounds, one reader, a
    QuantizeLinear with a constant scale and zero point whose grid lies within the bounds (up to float32
    epsilon), so that the QuantizeLinear's own saturation clips the same. Without this, a ReLU6 conv
    (MobileNetV2) counted as not requantized, rule 10 moved its bias into an Add, and ONNX Runtime ran
    35 of its 52 convs in float on dequantized weights: 2.2× FP32 latency, against 0.63× with all 52 fused."""
    if clip.op_type != "Clip" or clip.domain not in ("", "ai.onnx") or clip.output[0] in gr.outputs:
        return False
    users = gr.users.get(clip.output[0], [])
    if len(users) != 1 or users[0].op_type != "QuantizeLinear" or len(users[0].input) < 3:
        return False
    bounds = []
    for k, default in ((1, -np.inf), (2, np.inf)):
        name = clip.input[k] if len(clip.input) > k else ""
        if name and name not in gr.inits:
            return False
        bounds.append(float(_to_numpy(gr.inits[name]).reshape(())) if name else default)
    q = users[0]
    scale, zp = gr.inits.get(q.input[1]), gr.inits.get(q.input[2])
    if scale is None or zp is None or zp.data_type not in _RANGE or _to_numpy(scale).size != 1 or _to_numpy(zp).size != 1:
        return False
    s, z = np.float32(_to_numpy(scale).reshape(())), np.float32(_to_numpy(zp).reshape(()))
    qmin, qmax = _RANGE[zp.data_type]
    low, high = float(s * np.float32(qmin - z)), float(s * np.float32(qmax - z))  # in float32, as ONNX Runtime does
    eps = float(np.finfo(np.float32).eps)
    return bounds[0] - low <= eps and high - bounds[1] <= eps


def _off_grid(gr: _Graph, x_dq: onnx.NodeProto, w_dq: onnx.NodeProto, bias: onnx.TensorProto) -> bool:
    """``bias`` is not on the int32 grid ``s_x · s_w`` ONNX Runtime would round it to (more than 1e-3
    of a step off, the tolerance of ``snap_biases_to_int32_grid``, plus float32's share of a large
    bias); False where a scale is not a constant of the file."""
    s_x, s_w = gr.inits.get(x_dq.input[1]) if len(x_dq.input) > 1 else None, gr.inits.get(w_dq.input[1]) if len(w_dq.input) > 1 else None
    if s_x is None or s_w is None:
        return False
    sx, sw, b = _to_numpy(s_x).astype(np.float64), _to_numpy(s_w).astype(np.float64), _to_numpy(bias).astype(np.float64)
    if sx.size != 1 or sw.size not in (1, b.size):
        return False
    grid = (sx.reshape(()) * sw.reshape(-1)) if sw.size > 1 else np.full(b.shape, sx.reshape(()) * sw.reshape(()))
    if (grid <= 0).any():
        return False
    steps = b.reshape(-1) / grid
    # float32 storage of a snapped bias leaves ~1e-7 of |steps|: no flip, ONNX Runtime rounds it back
    return bool((np.abs(steps - np.round(steps)) > 1e-3 + 1e-6 * np.abs(steps)).any())


def _exact_float_bias(model: onnx.ModelProto, everywhere: bool = False) -> int:
    """Rule 10: ``Conv/ConvTranspose/Gemm(DQ(x), DQ(W), b)`` → ``Add(Conv(DQ(x), DQ(W)), b)`` where ONNX
    Runtime's int32 bias would be coarse or would reach the output unrounded (``everywhere``: for every
    such op). ONNX Runtime rounds a float bias beside DQ inputs to int32 ``s_x·s_w`` at its basic
    optimization level (a bit-switch ConvTranspose: 0.0013 off at 8 bits)."""
    gr = _Graph(model.graph)
    after: dict[int, list[onnx.NodeProto]] = {}
    subtracted = 0
    for idx, n in enumerate(gr.g.node):
        if n.op_type == "Add" and n.domain in ("", "ai.onnx"):
            subtracted += _subtracted_matmul_bias(gr, n, everywhere)
            continue
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm") or n.domain not in ("", "ai.onnx") or len(n.input) != 3 or not n.input[2]:
            continue
        bias = gr.inits.get(n.input[2])
        if bias is None or bias.data_type != TensorProto.FLOAT or len(bias.dims) != 1:
            continue
        if n.op_type == "Gemm" and _attr(n, "beta", 1.0) != 1.0:
            continue
        x_dq, w_dq = gr.dequantizer(n.input[0]), gr.producer.get(n.input[1])
        if x_dq is None or w_dq is None or w_dq.op_type != "DequantizeLinear":
            continue
        if not (everywhere or _narrow_codes(gr, x_dq) or not _requantized(gr, n.output[0]) or _off_grid(gr, x_dq, w_dq, bias)):
            continue
        b = _to_numpy(bias)
        if n.op_type != "Gemm":  # [C] against [N, C, *spatial]
            rank = len(gr.inits[w_dq.input[0]].dims) if w_dq.input[0] in gr.inits else None
            if rank is None:
                cast = gr.producer.get(w_dq.input[0])
                rank = len(gr.inits[cast.input[0]].dims) if cast is not None and cast.input[0] in gr.inits else None
            if rank is None:
                continue
            b = b.reshape([-1] + [1] * (rank - 2))
        out = n.output[0]
        name = gr.add_initializer(b, f"{n.input[2]}_after")
        del n.input[2]
        n.output[0] = f"{out}_without_bias"
        after[idx] = [onnx.helper.make_node("Add", [n.output[0], name], [out], name=f"{out}_bias")]
    if after:
        gr.replace_nodes({}, after=after)
    return len(after) + subtracted


def _subtracted_matmul_bias(gr: _Graph, add: onnx.NodeProto, everywhere: bool) -> int:
    """Rule 10 for ``Add(MatMul(DQ(x), DQ(W)), b)`` with narrow activation codes (or ``everywhere``):
    the Add becomes ``Sub(MatMul(...), -b)``, the same float values. ONNX Runtime's MatMulAddFusion
    would otherwise make it a Gemm with bias, and its QDQ bias quantization then round ``b`` to int32
    (a bit-switch VAE at 4 bits: 1.1e-4 off on its 2-D ``mu`` linear)."""
    if len(add.input) != 2:
        return 0
    for k in (0, 1):
        bias, mm = gr.inits.get(add.input[k]), gr.producer.get(add.input[1 - k])
        if bias is None or bias.data_type != TensorProto.FLOAT or len(bias.dims) != 1 or mm is None or mm.op_type != "MatMul":
            continue
        if gr.users.get(mm.output[0], []) != [add] or mm.output[0] in gr.outputs:
            return 0
        x_dq, w_dq = gr.dequantizer(mm.input[0]), gr.producer.get(mm.input[1])
        if x_dq is None or w_dq is None or w_dq.op_type != "DequantizeLinear":
            return 0
        if not (everywhere or _narrow_codes(gr, x_dq) or _off_grid(gr, x_dq, w_dq, bias)):
            return 0
        negated = gr.add_initializer(-_to_numpy(bias), f"{add.input[k]}_negated")
        add.op_type = "Sub"
        add.input[:] = [mm.output[0], negated]
        return 1
    return 0


def _own_weight_zero_points(model: onnx.ModelProto) -> int:
    """Rule 14: a copy of the zero point for each int8 weight ``DequantizeLinear`` whose zero point
    another node reads too. The weight is an int8 initializer, or one that a ``Cast`` to int8 reads
    (rule 5)."""
    gr = _Graph(model.graph)
    taken: set[str] = set()
    changed = 0
    for dq in gr.g.node:
        if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx") or len(dq.input) < 3 or not dq.input[2]:
            continue
        zp = gr.inits.get(dq.input[2])
        cast = gr.producer.get(dq.input[0])
        w = gr.inits.get(dq.input[0] if cast is None else cast.input[0] if cast.op_type == "Cast" else "")
        if zp is None or w is None or zp.data_type != TensorProto.INT8 or len(gr.users[zp.name]) < 2:
            continue
        if zp.name not in taken:  # its first reader keeps it
            taken.add(zp.name)
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(zp)
        base, i = f"{zp.name}_{dq.output[0]}", 1
        copy.name = base
        while copy.name in gr.inits:
            i += 1
            copy.name = f"{base}_{i}"
        gr.inits[copy.name] = copy
        gr.g.initializer.append(copy)
        dq.input[2] = copy.name
        changed += 1
    return changed
