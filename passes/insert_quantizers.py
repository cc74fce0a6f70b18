"""InsertQuantizersPass: turn annotations into FakeQuantize modules in the graph.

Placement follows what ONNX Runtime fuses into integer kernels (``DQ → op → Q``):

1. **Weights**: ``get_attr W → call_module <path>.weight_quantizer → op`` (one quantizer per
   weight, shared by every op that reads it).
2. **Activation inputs** of an annotated op are quantized unless they already are: a value counts
   as quantized when it comes from a quantizer directly or through pass-through ops (max-pool,
   reshape, flatten, permute, dropout, …), which keep their input's grid.
3. **Outputs** of an annotated op are quantized after the op, or after the ReLU-like op that is its
   only user (ORT fuses Conv+ReLU), so that the next op sees a quantized input; linear and matmul
   results only when the annotation asks for it (``quantize_output``: they reach another integer op).
4. **Modules** (annotated ``call_module`` Conv/Linear, and Conv/Linear children of auto-leaves)
   are swapped for :class:`qgraph.wrappers.QuantizedModule` with the same quantizers;
   ``nn.MultiheadAttention`` layers that stayed modules for
   :class:`qgraph.wrappers.QuantizedMultiheadAttention` (weight-only). What inside an auto-leaf
   stays float is recorded (a ``kept float`` change and a capture note).
5. **Weight-only** ops (embeddings, weights read by unknown calls) get only the weight quantizer.

Quantizers are registered as submodules next to the layer they serve (``conv1.weight_quantizer``,
``conv1.input_quantizer``, ``layer1.0.add_output_quantizer``; a swapped module's graph-level output
quantizer is its sibling ``<path>_output_quantizer``), so ``state_dict`` keys read as paths.
"""

from __future__ import annotations

import copy
import weakref

import torch
import torch.fx as fx
from qgraph.passes.base import ANNOTATION_KEY, QPass, unique_submodule_name
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from qgraph.aliasing import returns_itself, settled, writes_to
from qgraph.granularity import PerChannel, PerGroup, PerTensor
from qgraph.meta import MODULE_PATH_KEY
from qgraph.ops import classify, is_fusable_activation, is_passthrough, module_path
from qgraph.qspec import QSpec
from qgraph.quantizer import FakeQuantize
from qgraph.recipes import Recipe
from qgraph.wrappers import SWAPPABLE, QuantizedModule, QuantizedMultiheadAttention, mha_weight_names


def is_quantizer_node(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    try:
        return isinstance(gm.get_submodule(node.target), FakeQuantize)
    except AttributeError:
        return False


class InsertQuantizersPass(QPass):
    name = "insert_quantizers"

    def __init__(self, recipe: Recipe, leaves: set[str] | None = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.leaves = set(leaves or ())
        self._filling: dict[fx.Node, set[fx.Node]] = {}  # quantizer -> the in-place writes it waits for

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        weight_q: dict[fx.Node, fx.Node] = {}
        input_q: dict[fx.Node, fx.Node] = {}
        for node in list(gm.graph.nodes):
            ann = node.meta.get(ANNOTATION_KEY)
            if ann is None:
                continue
            if node.op == "call_module":
                modified |= self._swap(gm, str(node.target), ann.weight, ann.activation, node)
                continue
            path = ann.module_path
            if node.op == "get_attr":  # a weight read by calls qgraph does not know: quantize it where it is read
                if node not in weight_q:
                    weight_q[node] = self._insert_after(gm, node, ann.weight, "weight", _weight_quantizer_name(node, path), path)
                self._rewire(node, weight_q[node])
                modified = True
                continue
            info = classify(gm, node)
            if ann.weight is not None:
                w = info.weight
                if w not in weight_q:
                    weight_q[w] = self._insert_after(gm, w, ann.weight, "weight", _weight_quantizer_name(w, path), path)
                self._replace_arg(node, w, weight_q[w])
                modified = True
            if ann.activation is None:
                continue
            for i, a in enumerate(info.activations if info else []):
                if self._is_quantized(gm, a) or writes_to(node, {a}):
                    # an in-place op's destination (``ctx += self.conv(v)`` kept as ``aten.add_`` by torch.export):
                    # a quantizer on it would come after the write (its value is complete only then) and
                    # feed nothing; the value's own quantizer after the write covers what its readers see
                    continue
                if a not in input_q:
                    name = self._name(path, node, "input_quantizer" if len(info.activations) == 1 else f"input_quantizer_{i}")
                    input_q[a] = self._insert_after(gm, a, ann.activation, "activation", name, path)
                self._replace_arg(node, a, input_q[a])
                modified = True
            out = node
            users = list(node.users)
            if len(users) == 1 and is_fusable_activation(gm, users[0]):
                out = users[0]
            if ann.quantize_output and out.users and not all(is_quantizer_node(gm, u) for u in out.users):
                q = self._insert_after(gm, out, ann.activation, "activation", self._name(path, node, "output_quantizer"), path)
                self._rewire(out, q)
                modified = True
        self._share_quantized_weights(weight_q)
        for leaf in sorted(self.leaves):
            modified |= self._quantize_leaf(gm, leaf)
        self._note_float_weights(gm)
        self._limit_bias_grids(gm)
        return self.finish(gm, modified)

    def _share_quantized_weights(self, weight_q: dict[fx.Node, fx.Node]) -> None:
        for w, q in weight_q.items():
            read_quantized_everywhere(self, w, q, skip=self._filling.get(q, ()))

    def _limit_bias_grids(self, gm) -> None:
        """Tell the quantizer feeding each biased conv/linear about the bias (see ActivationQuantizer)."""
        for node in gm.graph.nodes:
            ann = node.meta.get(ANNOTATION_KEY)
            if ann is None or ann.weight is None or ann.activation is None or node.op != "call_function":
                continue
            info = classify(gm, node)
            if info is None or info.bias is None or info.bias.op != "get_attr" or not info.activations:
                continue
            w = info.weight.args[0] if is_quantizer_node(gm, info.weight) else info.weight
            transforms = []  # an N:M mask between the parameter and its quantizer: the floor reads the masked weight
            while w.op == "call_module" and getattr(gm.get_submodule(w.target), "is_weight_transform", False) \
                    and w.args and isinstance(w.args[0], fx.Node):
                transforms.insert(0, str(w.target))
                w = w.args[0]
            src = info.activations[0]
            while not is_quantizer_node(gm, src) and is_passthrough(gm, src) and src.args and isinstance(src.args[0], fx.Node):
                src = src.args[0]
            if w.op == "get_attr" and is_quantizer_node(gm, src):
                q = gm.get_submodule(src.target)
                if isinstance(q, ActivationQuantizer):
                    q.limit_for_bias(gm, str(w.target), str(info.bias.target), info.weight_channel_axis, ann.weight.qmax,
                                     tuple(transforms))

    # ----------------------------------------------------------------- helpers
    def _name(self, path: str, node: fx.Node, role: str) -> str:
        weighted = node.meta[ANNOTATION_KEY].weight is not None
        if weighted and path:
            return f"{path}.{role}"
        return f"{path}.{node.name}_{role}" if path else f"{node.name}_{role}"

    def _insert_after(self, gm, value: fx.Node, spec: QSpec, role: str, name: str, path: str) -> fx.Node:
        name = unique_submodule_name(gm, name)
        q = ActivationQuantizer(spec, where=path or value.name) if role == "activation" else FakeQuantize(spec, role, where=path or value.name)
        gm.add_submodule(name, q)
        anchor = settled(value)  # after the in-place writes that fill it (qgraph.aliasing)
        with gm.graph.inserting_after(anchor):
            q = gm.graph.call_module(name, (value,))
        if anchor is not value:  # those writes keep writing into the value itself
            filling, node = set(), value.next
            while node is not q:
                filling.add(node)
                node = node.next
            self._filling[q] = filling
        q.meta = {k: v for k, v in value.meta.items() if k in ("val", "tensor_meta", "nn_module_stack")}
        q.meta[MODULE_PATH_KEY] = path
        self.record("inserted", q, path, f"{role} quantizer {spec.describe()} on {value.name}")
        return q

    def _replace_arg(self, node: fx.Node, old: fx.Node, new: fx.Node) -> None:
        if node not in self._filling.get(new, ()):
            node.replace_input_with(old, new)

    def _rewire(self, value: fx.Node, q: fx.Node) -> None:
        """Every reader of ``value`` reads the quantizer ``q`` instead (not ``q`` itself, nor the
        in-place writes before it). So does every reader of what those writes return where that is
        ``value`` itself (``h = h.sigmoid_()``, torch.export's ``aten.leaky_relu_``): before, those
        readers kept the unquantized value and ``q``, read by nobody, was dropped."""
        skip = self._filling.get(q, set())
        for alias in [value, *returns_itself(value, skip)]:
            alias.replace_all_uses_with(q, delete_user_cb=lambda u: u is not q and u not in skip)

    def _is_quantized(self, gm, value: fx.Node) -> bool:
        seen = value
        while True:
            if is_quantizer_node(gm, seen):
                return True
            if is_passthrough(gm, seen) and seen.args and isinstance(seen.args[0], fx.Node):
                seen = seen.args[0]
                continue
            return False

    def _swap(self, gm, path: str, wspec: QSpec | None, aspec: QSpec | None, node: fx.Node | None = None) -> bool:
        mod = gm.get_submodule(path)
        if isinstance(mod, nn.MultiheadAttention):
            return self._swap_attention(gm, path, mod, wspec, node)
        if not isinstance(mod, SWAPPABLE):
            return False
        wspec = module_weight_spec(mod, wspec) if wspec else None
        wq = FakeQuantize(wspec, "weight", where=path) if wspec else None
        iq = FakeQuantize(aspec, "activation", where=path) if aspec else None
        oq = FakeQuantize(aspec, "activation", where=path) if aspec and node is None else None
        parent_path, _, child = path.rpartition(".")
        parent = gm.get_submodule(parent_path) if parent_path else gm
        mod, folded = _plain(mod)
        setattr(parent, child, QuantizedModule(mod, wq, iq, oq))
        self.record("swapped", node.name if node is not None else path, path, f"{type(mod).__name__} → QuantizedModule" + folded)
        if node is not None and aspec is not None and node.users:
            q = self._insert_after(gm, node, aspec, "activation", f"{path}_output_quantizer", path)
            self._rewire(node, q)
        return True

    def _swap_attention(self, gm, path: str, mod: nn.MultiheadAttention, wspec: QSpec | None, node: fx.Node | None) -> bool:
        if wspec is None:
            return False
        names = mha_weight_names(mod)
        quantizers = {n: FakeQuantize(wspec, "weight", where=f"{path}.{n}") for n in names}
        parent_path, _, child = path.rpartition(".")
        parent = gm.get_submodule(parent_path) if parent_path else gm
        setattr(parent, child, QuantizedMultiheadAttention(mod, quantizers))
        self.record("swapped", node.name if node is not None else path, path,
                    f"MultiheadAttention → QuantizedMultiheadAttention (weight-only: {', '.join(names)})")
        return True

    def _quantize_leaf(self, gm, leaf: str) -> bool:
        """Swap the Conv/Linear (and attention) layers inside an auto-leaf (fx could not trace into
        it), and say what inside it stays float."""
        try:
            root = gm.get_submodule(leaf)
        except AttributeError:
            return False
        modified, swapped, skipped = False, [], []
        inside_attention = {f"{n}.out_proj" for n, m in root.named_modules() if isinstance(m, nn.MultiheadAttention)}
        for name, mod in list(root.named_modules()):
            path = f"{leaf}.{name}" if name else leaf
            if not name or name in inside_attention or isinstance(mod, (QuantizedModule, QuantizedMultiheadAttention)):
                continue
            if isinstance(mod, nn.MultiheadAttention):
                d = self.recipe.decide(path, "linear", type(mod))
                if d.weight is not None and self._swap(gm, path, d.weight, None):
                    modified = True
                    swapped.append(name)
                continue
            if not isinstance(mod, SWAPPABLE):
                if any(True for _ in mod.parameters(recurse=False)):
                    skipped.append(f"{name} ({type(mod).__name__})")
                continue
            kind = "linear" if isinstance(mod, nn.Linear) else "conv_transpose" if "Transpose" in type(mod).__name__ else "conv"
            d = self.recipe.decide(path, kind, type(mod))
            if d.quantized:
                modified |= self._swap(gm, path, d.weight, d.activation)
                swapped.append(name)
        self._note_leaf(gm, leaf, root, swapped, skipped)
        return modified

    def _note_leaf(self, gm, leaf: str, root: nn.Module, swapped: list[str], skipped: list[str]) -> None:
        """Record (in the changes and in the capture notes that summary() and the export report
        print) exactly what inside an auto-leaf stayed float."""
        from qgraph.meta import CAPTURE_KEY

        kept = "the operations in its own forward (matmuls, adds, activations: no activation quantizers inside)"
        if skipped:
            kept += "; layers with weights that are not Conv/Linear: " + ", ".join(skipped)
        done = f"quantized by module swap: {', '.join(swapped)}" if swapped else "no layer inside could be swapped"
        text = f"leaf {leaf} ({type(root).__name__}) runs as one opaque call; {done}; stayed float: {kept}"
        self.record("kept float", leaf, leaf, text)
        cap = gm.meta.get(CAPTURE_KEY)
        if cap is not None:
            cap.notes[:] = [n for n in cap.notes if not n.startswith(f"leaf {leaf} (")] + [text]

    def _note_float_weights(self, gm) -> None:
        """Record, and add to the capture notes, the modules whose weight matrices stay float because
        qgraph has no quantized form for them (an ``nn.LSTM``): otherwise nothing would say so."""
        from qgraph.float_weights import NOTE_PREFIX, float_weight_modules
        from qgraph.meta import CAPTURE_KEY

        found = float_weight_modules(gm, self.leaves)
        for path, kind in found.items():
            self.record("kept float", path, path, f"{kind}: qgraph has no quantized form for it; its weights stay float, in the exports too")
        cap = gm.meta.get(CAPTURE_KEY)
        if found and cap is not None:
            listed = ", ".join(f"{p} ({k})" for p, k in found.items())
            cap.notes[:] = [n for n in cap.notes if not n.startswith(NOTE_PREFIX)] + [
                f"{NOTE_PREFIX}: {listed}; their weights stay float, in the exports too"]


class ActivationQuantizer(FakeQuantize):
    """An activation quantizer that keeps the int32 biases of the integer kernels it feeds in range.

    ONNX Runtime runs ``DQ → Conv/Gemm → Q`` as QLinearConv/QGemm with the float bias stored as
    int32 on the grid ``s_x · s_w``. When calibration sees a vanishing input range (random-weight
    nets whose activations decay to 1e-13), ``b / (s_x · s_w)`` overflows int32 and the fused
    kernel computes garbage. After calibration the scale is raised, where needed, to
    ``max |b| / (s_w · 2^30)`` of every biased conv/linear this quantizer feeds.
    """

    LIMIT = 2.0**30

    def __init__(self, spec: QSpec, where: str = "") -> None:
        super().__init__(spec, "activation", where=where)
        # (weakref to the graph module, weight, bias, channel axis, weight qmax, weight transforms applied in order)
        self._bias_limits: list[tuple] = []
        self.raised_from: float | None = None  # the calibrated scale, when the bias floor raised it

    def limit_for_bias(self, gm, weight: str, bias: str, axis: int, weight_qmax: int, transforms: tuple[str, ...] = ()) -> None:
        self._bias_limits.append((weakref.ref(gm), weight, bias, axis, weight_qmax, transforms))

    def _floor(self) -> float:
        floor = 0.0
        for ref, weight, bias, axis, qmax, transforms in self._bias_limits:
            gm = ref()
            if gm is None:
                continue
            w, b = _attr(gm, weight), _attr(gm, bias)
            if w is None or b is None or w.dim() < 2:
                continue
            for t in transforms:
                w = gm.get_submodule(t)(w)
            w = w.detach().float().transpose(0, axis).flatten(1).abs().amax(1)
            s_w = torch.where(w > 0, w / qmax, 1.0)  # as the weight quantizer scales a channel of zeros (FakeQuantize)
            if s_w.numel() != b.numel():
                continue
            floor = max(floor, float((b.detach().float().abs() / s_w).max()) / self.LIMIT)
        return floor

    @torch.no_grad()
    def finish_calibration(self) -> None:
        lo = self.observer.min_val if self.observer is not None else None
        super().finish_calibration()
        floor = self._floor()
        if floor <= float(self.scale.min()) or not isinstance(self.spec.granularity, PerTensor):
            return
        spec, zp = self.spec, self.zero_point
        if not spec.symmetric:
            low = float(lo.min()) if lo is not None else 0.0
            zp = torch.full_like(zp, min(max(round(spec.qmin - low / floor), spec.qmin), spec.qmax))
        self.raised_from = float(self.scale.min())
        self.set_qparams(torch.full_like(self.scale, floor), zp)


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def module_weight_spec(mod: nn.Module, spec: QSpec) -> QSpec:
    """Fit a weight spec to a module's weight layout (rules 2 and 3 of the annotate pass)."""
    g = spec.granularity
    transposed = isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    if isinstance(g, PerGroup) and (not isinstance(mod, nn.Linear) or mod.weight.shape[-1] % g.size):
        g = PerChannel(0)
    if transposed and isinstance(g, PerChannel):
        g = PerChannel(1) if mod.groups == 1 else PerTensor()
    return spec.with_(granularity=g)


__all__ = ["ActivationQuantizer", "InsertQuantizersPass", "is_quantizer_node", "module_weight_spec", "read_quantized_everywhere"]


def _plain(mod: nn.Module) -> tuple[nn.Module, str]:
    """A parametrized layer (``parametrizations.weight_norm`` on HiFi-GAN's transposed convs) as a plain
    copy holding its computed tensors as parameters, and a note saying so. Its ``weight`` is not in the
    ``state_dict`` (``parametrizations.weight.original0/1`` are), so a qpack could not store it; as
    ``fold_weights`` does for functional layers, QAT then trains the folded weight."""
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(mod):
        return mod, ""
    made = sorted({type(p).__name__ for ps in mod.parametrizations.values() for p in ps})
    names = list(mod.parametrizations.keys())
    with torch.no_grad():
        values = {name: getattr(mod, name).detach().clone() for name in names}
    # not remove_parametrizations on a deep copy: the copy shares the parametrized class, and removing
    # the property from it removes it from the original too
    plain = copy.deepcopy(mod)
    plain.__class__ = parametrize.type_before_parametrizations(mod)
    del plain._modules["parametrizations"]
    for name, value in values.items():
        plain.register_parameter(name, nn.Parameter(value))
    return plain, f"; its parametrized {', '.join(names)} ({', '.join(made)}) folded into plain parameters"


def read_quantized_everywhere(p: QPass, w: fx.Node, q: fx.Node, skip=()) -> None:
    """A weight that is quantized is quantized for every reader of ``w``: a tied table read by a
    quantized linear and by a lookup the recipe leaves float (w4a16 on a tied LM head), a parameter
    read by a linear and by a bmm, a conv called twice of which one call is a float first layer, was
    read float by the other op while the qpack holds only its codes, so the loaded model computed
    something else. One tensor, one stored form. Recorded on ``p``."""
    gm = q.graph.owning_module
    others = [u for u in w.users if u is not q and u not in skip and not is_quantizer_node(gm, u)]
    if not others:
        return
    for u in others:
        u.replace_input_with(w, q)
    readers = ", ".join(sorted({module_path(u) or u.name for u in others}))
    p.record("quantized", q, module_path(q) or "", f"{w.target} is also read by {readers}: every reader reads the "
                                                   f"quantized weight (a tied tensor is stored once)")


def _weight_quantizer_name(w: fx.Node, path: str) -> str:
    """``<layer>.weight_quantizer``; a matrix read under another name gets ``<owner>.<name>_quantizer``
    (``experts.gate_up_proj_quantizer``, ``proj_quantizer`` for ``x @ self.proj``)."""
    if w.op == "get_attr":
        owner, _, attr = str(w.target).rpartition(".")
        if attr not in ("weight", "folded_weight"):
            return f"{owner}.{attr}_quantizer" if owner else f"{attr}_quantizer"
    return f"{path}.weight_quantizer" if path else f"{w.name}_quantizer"
