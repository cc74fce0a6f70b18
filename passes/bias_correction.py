"""Empirical bias correction: remove the systematic part of each layer's quantization error.

Quantizing a layer's weights (and its inputs) shifts the *mean* of its output: ``E[(Ŵ − W) x]``
is not zero when the inputs have a non-zero mean, which post-ReLU activations always have, and
the shifts of earlier layers add up. A shift is the same for every input, so it moves all logits
of a classifier together and flips top-1 wherever margins are small. Bias correction (Nagel et al.,
*Data-Free Quantization*, 2019, §4.2, the empirical variant; NNCF applies it by default) measures
the shift on the calibration data and subtracts it from the layer's bias.

Two passes, both recorded as changes:

* :class:`ZeroBiasPass` (at prepare time) gives every weight-quantized conv / linear without a bias
  a zero bias, so the correction has a parameter to write and ``qgraph.load`` rebuilds the same
  parameters from a qpack. A zero bias changes nothing.
* :class:`BiasCorrectionPass` (after calibration) runs the calibration samples through the graph
  twice, in one batch: with every quantizer off (the float model), recording each target layer's
  per-channel output mean; then quantized, in execution order, where each layer's bias gets
  ``mean_float − mean_quantized`` and its output is shifted by the same amount before the next
  layer sees it, so every correction accounts for the corrected layers upstream. The corrections
  are then kept only if they raise the output SQNR against the float model on the same data, where
  a correction gave some layer its first nonzero bias (recorded either way; see
  :meth:`BiasCorrectionPass._judge`).

Layers whose bias is shared by another call, or is not a plain parameter, are left alone and recorded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.fx as fx
from qgraph.passes.base import QPass
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult
from torch.utils import _pytree as pytree

from qgraph.capture import batch_inputs
from qgraph.errors import InputError
from qgraph.granularity import PerTensor
from qgraph.ops import ADDMM, CONV, CONV_TRANSPOSE, LINEAR, is_fusable_activation, is_passthrough, module_path
from qgraph.quantizer import FakeQuantize, frozen_weights

MAX_SAMPLES = 128  # calibration samples the correction uses (one batch: the layer means are exact over it)


def _bias_slot(node: fx.Node) -> tuple[str | int, object]:
    """Where ``node`` takes its bias (an args index or a kwargs name) and what it passes there."""
    if node.target in ADDMM:
        return 0, node.args[0]
    if len(node.args) > 2:
        return 2, node.args[2]
    return "bias", node.kwargs.get("bias")


def _weight_node(node: fx.Node):
    return node.args[2] if node.target in ADDMM else node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")


def _is_quantizer(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), FakeQuantize)


def _weight_quantized(gm: fx.GraphModule, node: fx.Node) -> bool:
    w = _weight_node(node)
    if not (isinstance(w, fx.Node) and w.op == "call_module"):
        return False
    q = gm.get_submodule(w.target)
    return isinstance(q, FakeQuantize) and q.role == "weight"


def targets(gm: fx.GraphModule) -> list[fx.Node]:
    """The conv / conv-transpose / linear / addmm calls whose weight goes through a weight quantizer."""
    ops = CONV | CONV_TRANSPOSE | LINEAR | ADDMM
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in ops and _weight_quantized(gm, n)]


def _channel_axis(node: fx.Node) -> int:
    return -1 if node.target in LINEAR or node.target in ADDMM else 1


def _owner(gm: fx.GraphModule, node: fx.Node) -> tuple[str, str]:
    """The module that owns the layer's weight, and the name its bias gets there: ``bias`` next to a
    ``weight``, ``<name>_bias`` next to a matrix parameter of another name (``x @ self.proj``)."""
    w = _weight_node(node)
    src = w.args[0] if w.args and isinstance(w.args[0], fx.Node) else None
    if src is not None and src.op == "get_attr":
        owner, _, attr = str(src.target).rpartition(".")
        return owner, "bias" if attr in ("weight", "folded_weight") else f"{attr}_bias"
    return (w.target.rsplit(".", 1)[0] if w.target.endswith(".weight_quantizer") else w.target), "bias"


class ZeroBiasPass(QPass):
    """A zero bias for every weight-quantized conv / linear that has none (exact: adds zero)."""

    name = "zero_bias"

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in targets(gm):
            slot, bias = _bias_slot(node)
            if bias is not None or node.target in ADDMM:
                continue
            owner, name = _owner(gm, node)
            out = self._out_channels(gm, node)
            if out is None:
                continue
            mod = gm.get_submodule(owner) if owner else gm
            if getattr(mod, name, None) is not None:
                name = f"{name}_correction" if name != "bias" else "bias_correction"
            while name in dict(mod.named_parameters(recurse=False)) or name in dict(mod.named_buffers(recurse=False)):
                name += "_"
            if name == "bias" and hasattr(mod, "bias"):
                mod.bias = nn.Parameter(torch.zeros(out))
            else:
                mod.register_parameter(name, nn.Parameter(torch.zeros(out)))
            target = f"{owner}.{name}" if owner else name
            with gm.graph.inserting_before(node):
                attr = gm.graph.get_attr(target)
            if isinstance(slot, int):
                args = list(node.args)
                args[slot] = attr
                node.args = tuple(args)
            else:
                node.kwargs = {**node.kwargs, slot: attr}
            self.record("added", node, module_path(node), f"zero bias {target} ({out} channels) for bias correction")
            modified = True
        return self.finish(gm, modified)

    @staticmethod
    def _out_channels(gm: fx.GraphModule, node: fx.Node) -> int | None:
        w = _weight_node(node)
        while isinstance(w, fx.Node) and w.op == "call_module" and w.args:  # weight quantizer, sparsity mask
            w = w.args[0]
        if not (isinstance(w, fx.Node) and w.op == "get_attr"):
            return None
        try:
            weight = gm.get_parameter(w.target)
        except AttributeError:
            weight = gm.get_buffer(w.target)
        if node.target in CONV_TRANSPOSE:
            groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
            return weight.shape[1] * int(groups)
        return weight.shape[0]


def bias_grid(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """``s_x · s_w`` per output channel: the grid of the int32 bias of the integer kernel ``node`` becomes
    (``DQ → Conv/Gemm → Q`` runs as QLinearConv / QGemm), or None when its input is not quantized per tensor."""
    if node.target in CONV_TRANSPOSE:
        return None
    x, w = (node.args[1], node.args[2]) if node.target in ADDMM else (node.args[0], _weight_node(node))
    while isinstance(x, fx.Node) and not _is_quantizer(gm, x) and is_passthrough(gm, x) and x.args and isinstance(x.args[0], fx.Node):
        x = x.args[0]  # max-pool, reshape, ...: ops that keep their input's grid
    if not (isinstance(x, fx.Node) and x.op == "call_module" and isinstance(w, fx.Node) and w.op == "call_module"):
        return None
    qx, qw = gm.get_submodule(x.target), gm.get_submodule(w.target)
    if not (isinstance(qx, FakeQuantize) and qx.role == "activation" and qx.mode == "quantize" and qx.initialized
            and isinstance(qx.spec.granularity, PerTensor) and isinstance(qw, FakeQuantize) and qw.initialized):
        return None
    s_x, s_w = qx.effective_scale().detach().float(), qw.effective_scale().detach().float().reshape(-1)
    if s_x.numel() != 1:  # one step per token (OFQ's activation quantizer): no integer kernel's grid
        return None
    return (s_x.reshape(()) * s_w) if s_w.numel() > 1 else None


def _on_8_bits(q) -> bool:
    return isinstance(q, FakeQuantize) and q.role == "activation" and q.spec.qmax - q.spec.qmin == 255


def _requantized_at_8_bits(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s result (through one ReLU) only feeds 8-bit activation quantizers: ONNX
    Runtime then runs it as QLinearConv / QGemm with an int32 bias (``backends.onnx_fold`` rule 10
    adds the bias after the op everywhere else)."""
    users = list(node.users)
    if len(users) == 1 and is_fusable_activation(gm, users[0]):
        users = list(users[0].users)
    return bool(users) and all(u.op == "call_module" and _on_8_bits(gm.get_submodule(u.target)) for u in users)


@torch.no_grad()
def snap_biases_to_int32_grid(gm: fx.GraphModule) -> list[tuple[fx.Node, float]]:
    """Put the bias of every layer ONNX Runtime runs as an integer kernel with an int32 bias onto that
    grid, ``s_x · s_w`` (as bias correction leaves it): QAT moves biases and scales off it, and ONNX
    Runtime's rounding then flips output codes the fake-quantized model does not. Returns the layers
    moved and by how many grid steps at most."""
    moved = []
    for node in targets(gm):
        x = node.args[1] if node.target in ADDMM else node.args[0]
        if not (isinstance(x, fx.Node) and x.op == "call_module" and _on_8_bits(gm.get_submodule(x.target))
                and _requantized_at_8_bits(gm, node)):
            continue
        bias = BiasCorrectionPass._bias_param(gm, node)
        grid = bias_grid(gm, node) if bias is not None else None
        if grid is None or grid.numel() != bias.numel():
            continue
        steps = bias.detach().float() / grid
        off = float((steps - steps.round()).abs().max())
        if off > 1e-3:
            bias.copy_((steps.round() * grid).to(bias.dtype))
            moved.append((node, off))
    return moved


class _Probe(nn.Module):
    """Inserted after a target layer while the pass runs. Modes:

    * ``float``: accumulate the per-channel sum of the (float) output;
    * ``sequential``: set ``delta`` = float mean − this batch's mean (over all ranks with ``sync_ranks``)
      and shift the output by it, so the layers after it see it corrected;
    """

    def __init__(self, axis: int, sync_ranks: bool = False) -> None:
        super().__init__()
        self.axis = axis
        self.sync_ranks = sync_ranks
        self.mode = "float"
        self.total: torch.Tensor | None = None  # [channels + 1]: per-channel sums, then the count per channel
        self.float_mean: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None

    def _sums(self, y: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(y.dim()) if d != self.axis % y.dim()]
        total = y.detach().float().sum(dim=dims) if dims else y.detach().float()  # sum(dim=[]) would sum everything
        return torch.cat([total, total.new_full((1,), y.numel() / total.numel())])

    def _accumulate(self, y: torch.Tensor) -> None:
        s = self._sums(y)
        self.total = s if self.total is None else self.total + s

    def _shift(self, y: torch.Tensor) -> torch.Tensor:
        shape = [1] * y.dim()
        shape[self.axis] = -1
        return y + self.delta.to(y.dtype).reshape(shape)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            self._accumulate(y)
            return y
        if self.mode == "sequential":
            if self.float_mean is None:
                return y
            s = self._sums(y)
            if self.sync_ranks:  # every rank runs the same layers in the same order
                from qgraph.distributed import all_reduce_sum

                s = all_reduce_sum(s)
            self.delta = self.float_mean - s[:-1] / s[-1]
            return self._shift(y)
        raise ValueError(f"bias probe mode {self.mode!r}")

    def take_mean(self) -> torch.Tensor | None:
        """The accumulated mean (over all ranks with ``sync_ranks``; every rank must call this), then reset."""
        s, self.total = self.total, None
        if self.sync_ranks:
            from qgraph.distributed import all_reduce_sum

            s = all_reduce_sum(s if s is not None else torch.zeros(0))
        return None if s is None or not s.numel() else s[:-1] / s[-1]


def _flat(out) -> torch.Tensor:
    """Every tensor in a graph's output, flattened into one float vector."""
    return torch.cat([t.detach().float().reshape(-1) for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)])


def one_batch(batches: list[tuple], max_samples: int = MAX_SAMPLES) -> tuple | None:
    """The calibration batches joined along dim 0 (at most ``max_samples``), or None when they do not join."""
    if not all(b and all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in b) for b in batches):
        return None
    try:
        return tuple(torch.cat(ts)[:max_samples] for ts in zip(*batches))
    except RuntimeError:
        return None


class BiasCorrectionPass(QPass):
    """Subtract each weight-quantized layer's mean output shift (measured on calibration data) from its bias.

    The calibration batches (up to ``max_samples`` samples) run as one joined batch, which corrects
    every layer exactly, in one quantized pass, given the corrected layers before it. Graphs that take
    only their capture's batch size (``torch.export`` captures) run batch by batch instead: each batch
    is corrected the same way on its own, and the corrections are averaged.
    """

    name = "bias_correction"

    def __init__(self, batches: Iterable, max_samples: int = MAX_SAMPLES, sync_ranks: bool = False) -> None:
        super().__init__()
        self.batches = batches
        self.max_samples = max_samples  # per rank, with sync_ranks
        self.sync_ranks = sync_ranks

    def _take(self, gm: fx.GraphModule) -> list[tuple]:
        out, n = [], 0
        for b in self.batches:
            b = batch_inputs(gm, b)
            out.append(b)
            n += b[0].shape[0] if b and isinstance(b[0], torch.Tensor) and b[0].dim() else 1
            if n >= self.max_samples:
                break
        if not out:
            raise InputError("bias correction needs calibration data, and calib_data yielded no batches")
        return out

    def call(self, gm: fx.GraphModule) -> PassResult:
        nodes = [n for n in targets(gm) if self._bias_param(gm, n) is not None]
        skipped = [n for n in targets(gm) if n not in nodes]
        if not nodes:
            return PassResult(gm, False)
        batches = self._take(gm)
        probes: list[tuple[fx.Node, _Probe, fx.Node]] = []
        for i, node in enumerate(nodes):
            probe = _Probe(_channel_axis(node), self.sync_ranks)
            name = f"_bias_probe_{i}"
            gm.add_submodule(name, probe)
            with gm.graph.inserting_after(node):
                p = gm.graph.call_module(name, (node,))
            node.replace_all_uses_with(p, delete_user_cb=lambda u, p=p: u is not p)
            probes.append((node, probe, p))
        gm.recompile()
        quantizers = [m for m in gm.modules() if isinstance(m, FakeQuantize)]
        modes = [q.mode for q in quantizers]
        was_training = gm.training
        gm.eval()
        try:
            with torch.no_grad(), frozen_weights(gm):  # the weights are fixed here: fake-quantize each once
                how = self._correct(gm, [pr for _, pr, _ in probes], batches, quantizers, modes)
        finally:
            for q, mode in zip(quantizers, modes):
                q.mode = mode
            for node, _, p in probes:
                p.replace_all_uses_with(node)
                gm.graph.erase_node(p)
            for i in range(len(probes)):
                delattr(gm, f"_bias_probe_{i}")
            gm.recompile()
            gm.train(was_training)
        applied = []  # (node, bias, value before, corrected value, detail)
        with torch.no_grad():
            for node, probe, _ in probes:
                if probe.delta is None:
                    self.record("skipped", node, module_path(node), "bias correction: the calibration data never reached it")
                    continue
                bias = self._bias_param(gm, node)
                before = bias.detach().clone()
                bias.add_(probe.delta)
                grid = bias_grid(gm, node)
                if grid is not None:  # where ONNX Runtime's integer kernels store it (int32), so both compute the same sums
                    bias.copy_(torch.round(bias / grid) * grid)
                detail = (f"bias shifted by up to {float(probe.delta.abs().max()):.3g} ({how}"
                          + ("; on the int32 grid s_x·s_w)" if grid is not None else ")"))
                applied.append((node, bias, before, bias.detach().clone(), detail))
        keep = True
        if any(not before.any() for _, _, before, _, _ in applied):  # some layer gets its first nonzero bias: check
            with_db, without_db = self._judge(gm, applied)
            keep = with_db >= without_db
            verdict = (f"; output SQNR on the calibration data {with_db:.2f} dB with the corrections, {without_db:.2f} dB without: "
                       + ("kept" if keep else "all reverted"))
        else:
            verdict = ""
        with torch.no_grad():
            for node, bias, before, after, detail in applied:
                bias.copy_(after if keep else before)
                self.record("corrected" if keep else "reverted", node, module_path(node), detail + verdict)
        for node in skipped:
            self.record("skipped", node, module_path(node), "bias correction: the bias is not a parameter of this layer alone")
        return PassResult(gm, bool(applied) and keep)

    def _judge(self, gm, applied) -> tuple[float, float]:
        """Output SQNR against the float model on the calibration runs, with and without the corrections.

        A correction removes a layer's *mean* error; where that mean is negligible, a bias the layer did
        not have can still cost more than it removes: it moves outputs that were exactly zero (a padding
        token's zero embedding at the first position, through every bias-less projection of a transformer,
        then blown up by RMSNorm: Gemma w8a8 lost 5.6 dB). So when a correction gives some layer its
        first nonzero bias, the corrections are kept only if they help (two more quantized forwards on
        the calibration data; graphs whose corrected layers all had biases, e.g. BatchNorm folded into
        every conv, skip the check)."""
        def outputs() -> torch.Tensor:
            return torch.cat([_flat(gm(*run)) for run in self._runs])

        was_training = gm.training
        gm.eval()
        try:
            with torch.no_grad(), frozen_weights(gm):
                for _, bias, before, _, _ in applied:
                    bias.copy_(before)
                ref = torch.cat(self._float_outputs)  # the float model, with its own biases (from _correct)
                noise_without = (outputs() - ref).pow(2).sum()
                for _, bias, _, after, _ in applied:
                    bias.copy_(after)
                noise_with = (outputs() - ref).pow(2).sum()
        finally:
            gm.train(was_training)
        sums = torch.stack([ref.pow(2).sum(), noise_with, noise_without]).double()
        if self.sync_ranks:  # every rank must reach the same verdict
            from qgraph.distributed import all_reduce_sum

            sums = all_reduce_sum(sums)
        signal, n_with, n_without = (float(v) for v in sums)
        db = [10 * math.log10(signal / n) if n > 0 else math.inf for n in (n_with, n_without)]
        return db[0], db[1]

    def _correct(self, gm, probes: list[_Probe], batches: list[tuple], quantizers, modes) -> str:
        """Set every probe's ``delta``; returns how, for the record."""
        def set_mode(mode: str) -> None:
            for p in probes:
                p.mode = mode

        def quantizers_on(on: bool) -> None:
            for q, mode in zip(quantizers, modes):
                q.mode = mode if on else "off"

        joined = one_batch(batches, self.max_samples)
        if joined is not None:
            quantizers_on(False)
            set_mode("float")
            try:
                self._float_outputs = [_flat(gm(*joined))]  # the float model: per-channel means (and its output, for _judge)
            except Exception:  # noqa: BLE001 - the graph takes only its capture's batch size: go batch by batch
                joined = None
                for p in probes:
                    p.total = None
        self._runs = [joined] if joined is not None else batches
        if joined is not None:
            for p in probes:
                p.float_mean = p.take_mean()
            quantizers_on(True)
            set_mode("sequential")
            gm(*joined)
            return f"{joined[0].shape[0]} samples, one pass"
        # Batch by batch: each batch is corrected exactly like a joined batch (float means, then the
        # quantized layers in execution order, each seeing the corrected layers before it), and the
        # corrections are averaged over the batches, weighted by their samples. (Correcting every
        # layer at once from the shifts left after the previous round, and repeating, diverges on deep
        # graphs: each layer also corrects the shift its upstream layers are removing at the same time.)
        total: dict[int, torch.Tensor] = {}
        weight: dict[int, float] = {}
        self._float_outputs = []
        for b in batches:
            quantizers_on(False)
            set_mode("float")
            self._float_outputs.append(_flat(gm(*b)))
            for p in probes:
                p.float_mean, p.delta = p.take_mean(), None
            quantizers_on(True)
            set_mode("sequential")
            gm(*b)
            n = float(b[0].shape[0]) if b and isinstance(b[0], torch.Tensor) and b[0].dim() else 1.0
            for i, p in enumerate(probes):
                if p.delta is not None:
                    total[i] = total[i] + n * p.delta if i in total else n * p.delta
                    weight[i] = weight.get(i, 0.0) + n
        for i, p in enumerate(probes):
            p.delta = total[i] / weight[i] if i in total else None
        return f"{len(batches)} batches, each corrected in order, averaged"

    @staticmethod
    def _bias_param(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
        """The bias tensor ``node`` alone reads, or None (no bias, computed, or shared with another call)."""
        _, b = _bias_slot(node)
        if not (isinstance(b, fx.Node) and b.op == "get_attr") or len(b.users) != 1:
            return None
        if sum(1 for n in gm.graph.nodes if n.op == "get_attr" and n.target == b.target) != 1:
            return None
        try:
            t = gm.get_parameter(b.target)
        except AttributeError:
            try:
                t = gm.get_buffer(b.target)
            except AttributeError:
                return None
        return t if t.is_floating_point() and t.dim() == 1 else None
