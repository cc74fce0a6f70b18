"""HASB: Hessian-aware stochastic bit switching and bit-map search for mixed precision (ALGORITHMS.md §6.6).

1. :func:`hessian_trace`: the average Hessian trace ``t_l = tr(H_l) / n_l`` of every bit-switch layer's
   weight, by Hutchinson's estimator (``E[vᵀHv]`` over Rademacher ``v``) on the float model.
2. :class:`RouletteSampler`: during mixed-precision training, each layer takes the sweep's bit width
   b, or with probability ``σ_e = σ·(e+1)/E`` (0 during warm-up epochs) a bit width drawn by
   roulette: uniform for layers with ``t_l`` below the mean, ``p_i = b_i / Σ_j b_j`` (high bits
   favoured) for sensitive layers. Pass it to :class:`qgraph.bitswitch_train.JointTrainer`.
3. :func:`search_bits`: the per-layer bit map that minimises the HAWQ-style objective
   ``Σ_l t_l · ‖W_l − Q_{b_l}(W_l)‖²`` under an average-bit budget, by an exact dynamic programme over
   the (cost, objective) Pareto frontier; no retraining. The paper's Algorithm 2 prints the objective
   ``Σ_l (t_l/n_l)·b_l``, which *minimising* would give sensitive layers the fewest bits; we follow
   the stated intent with the HAWQ form instead (an interpretation, see docs/bitswitch.md).
   :func:`pareto_bit_maps` returns the whole frontier.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from qgraph.bitswitch import DoubleRoundWeightQuantizer, bitswitch_layers
from qgraph.errors import InputError

__all__ = ["hessian_trace", "RouletteSampler", "search_bits", "pareto_bit_maps", "layer_weights", "bit_map_cost"]


def layer_weights(qm: nn.Module) -> dict[str, tuple[str, str]]:
    """``{layer: (weight state key, weight quantizer name)}`` of a bit-switch QModel."""
    gm = getattr(qm, "qgraph", qm)
    out: dict[str, tuple[str, str]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, DoubleRoundWeightQuantizer) and node.args and getattr(node.args[0], "op", None) == "get_attr":
                out[m.layer] = (str(node.args[0].target), str(node.target))
    return out


def hessian_trace(qm: nn.Module, batches: Iterable, loss_fn: Callable | None = None, samples: int = 7, seed: int = 0,
                  model: nn.Module | None = None) -> dict[str, float]:
    """Average Hessian trace per bit-switch layer, ``{layer: tr(H_l) / n_l}``.

    ``batches``: ``(inputs, target)`` pairs (about 1000 samples in the paper). ``model``: the float
    model to differentiate (default: the QModel's float reference graph, i.e. the pretrained weights,
    with the same parameter names); it is copied and run in eval mode.
    """
    keys = layer_weights(qm)
    if not keys:
        raise InputError("hessian_trace needs a bit-switch model (recipe='bitswitch')")
    ref = model if model is not None else getattr(qm, "_float_graph", None)
    if ref is None:
        raise InputError("hessian_trace needs the float model: pass model=")
    net = copy.deepcopy(ref).eval()
    params = {}
    for layer, (key, _) in keys.items():
        try:
            params[layer] = net.get_parameter(key)
        except AttributeError as e:
            raise InputError(f"the float model has no parameter {key} for layer {layer}") from e
    for p in net.parameters():
        p.requires_grad_(False)
    plist = list(params.values())
    for p in plist:
        p.requires_grad_(True)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    totals = [0.0] * len(plist)
    count = 0
    for batch in batches:
        x, y = batch
        args = x if isinstance(x, tuple) else (x,)
        loss = loss_fn(net(*args), y)
        grads = torch.autograd.grad(loss, plist, create_graph=True)
        for _ in range(samples):
            vs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(device=p.device, dtype=p.dtype) for p in plist]
            hv = torch.autograd.grad(grads, plist, grad_outputs=vs, retain_graph=True)
            for i, (h, v) in enumerate(zip(hv, vs)):
                totals[i] += float((h * v).sum())
            count += 1
    if count == 0:
        raise InputError("hessian_trace got no batches")
    return {layer: totals[i] / count / p.numel() for i, (layer, p) in enumerate(params.items())}


class RouletteSampler:
    """Per-layer bit widths for HASB mixed-precision training (see the module docstring).

    ``uniform=True`` draws every resampled layer uniformly (the ablation without Hessian awareness).
    """

    def __init__(self, traces: Mapping[str, float], bits: Iterable[int], epochs: int, sigma: float = 0.5,
                 warmup_epochs: int = 0, seed: int = 0, uniform: bool = False) -> None:
        if not traces:
            raise InputError("RouletteSampler needs per-layer Hessian traces")
        self.traces = dict(traces)
        self.bits = tuple(sorted(bits, reverse=True))
        self.epochs, self.sigma, self.warmup, self.uniform = max(1, epochs), sigma, warmup_epochs, uniform
        self.mean = sum(self.traces.values()) / len(self.traces)
        self.gen = torch.Generator().manual_seed(seed)
        weights = torch.tensor([float(b) for b in self.bits])
        self._sensitive = weights / weights.sum()
        self._flat = torch.full((len(self.bits),), 1.0 / len(self.bits))

    def probability(self, epoch: int) -> float:
        """σ_e: the chance that a layer is resampled in ``epoch``."""
        return 0.0 if epoch < self.warmup else self.sigma * (epoch + 1) / self.epochs

    def distribution(self, layer: str) -> torch.Tensor:
        """The roulette wheel of ``layer`` over ``self.bits``."""
        if self.uniform or self.traces[layer] < self.mean:
            return self._flat
        return self._sensitive

    def sample(self, bits: int, epoch: int) -> dict[str, int]:
        p = self.probability(epoch)
        out = {}
        for layer in self.traces:
            if float(torch.rand((), generator=self.gen)) < p:
                out[layer] = self.bits[int(torch.multinomial(self.distribution(layer), 1, generator=self.gen))]
            else:
                out[layer] = bits
        return out


@torch.no_grad()
def _layer_table(qm: nn.Module, traces: Mapping[str, float]) -> dict[str, dict[int, tuple[int, float]]]:
    """``{layer: {bits: (parameter count, t_l·‖W − Q_b(W)‖²)}}``."""
    gm = getattr(qm, "qgraph", qm)
    layers = bitswitch_layers(qm)
    table = {}
    for layer, (key, qname) in layer_weights(qm).items():
        if layer not in traces:
            raise InputError(f"no Hessian trace for layer {layer}; traces cover {', '.join(traces)}")
        q = gm.get_submodule(qname)
        w = gm.get_parameter(key).detach()
        saved = q.bits
        row = {}
        for b in layers[layer]:
            q.bits = b
            row[b] = (w.numel(), float(traces[layer]) * float((w - q(w)).pow(2).sum()))
        q.bits = saved
        table[layer] = row
    return table


def pareto_bit_maps(qm: nn.Module, traces: Mapping[str, float], weighted: bool = True) -> list[tuple[float, float, dict[str, int]]]:
    """Every Pareto-optimal bit map as ``(average bits, objective, {layer: bits})``, cheapest first.

    ``weighted``: the average is over parameters (model size); else over layers (the paper's mean).
    Exact: a dynamic programme that keeps, after each layer, only the (cost, objective) pairs no other
    pair beats in both.
    """
    table = _layer_table(qm, traces)
    states: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for row in table.values():
        grown = [(c + (n * b if weighted else b), o + err, choice + (b,)) for c, o, choice in states for b, (n, err) in row.items()]
        grown.sort(key=lambda s: (s[0], s[1]))
        states, best = [], float("inf")
        for s in grown:
            if s[1] < best:
                states.append(s)
                best = s[1]
    total = sum((next(iter(r.values()))[0] if weighted else 1) for r in table.values())
    names = list(table)
    return [(c / total, o, dict(zip(names, choice))) for c, o, choice in states]


def search_bits(qm: nn.Module, traces: Mapping[str, float], avg_bits: float, weighted: bool = True) -> dict[str, int]:
    """The bit map with the smallest objective whose average bit width is at most ``avg_bits``."""
    frontier = pareto_bit_maps(qm, traces, weighted)
    feasible = [s for s in frontier if s[0] <= avg_bits + 1e-9]
    if not feasible:
        raise InputError(f"no bit map averages {avg_bits} bits or less; the smallest average is {frontier[0][0]:.3g}")
    return min(feasible, key=lambda s: s[1])[2]


def bit_map_cost(qm: nn.Module, bit_map: Mapping[str, int], weighted: bool = True) -> float:
    """Average bits of ``bit_map`` (over parameters when ``weighted``, else over layers)."""
    gm = getattr(qm, "qgraph", qm)
    sizes = {layer: gm.get_parameter(key).numel() for layer, (key, _) in layer_weights(qm).items()}
    if weighted:
        return sum(sizes[k] * b for k, b in bit_map.items()) / sum(sizes[k] for k in bit_map)
    return sum(bit_map.values()) / len(bit_map)
