"""UniPTS: post-training sparsity from a small calibration set (CVPR 2024; ALGORITHMS.md §3).

Three parts, run by :func:`unipts` on a float model with BatchNorm (before ``qgraph.quantize``):

1. **Reduce–regrow search** (:func:`reduce_regrow_search`) for per-layer sparsity: a genome
   ``v ∈ ℝ^L`` decodes to ``p_l = max(0, P + 0.05 − R·softmax(v)_l / N_l)`` with ``R = 0.05·N``
   (every layer reduced to ``P + 0.05``, a 5% global budget regrown by the genome). Fitness: copy
   the model, set the masks, re-estimate BatchNorm on the calibration images (+ Gaussian noise
   σ = 1e-6, train mode, no grad), then top-1 on the calibration images in eval mode. A genetic
   algorithm: one uniform genome + random ones, the top ``parents`` breed by uniform crossover
   and by mutation ``v ← v·(1 + N(0, 1))`` (per gene with probability 0.1).
2. **Dynamic sparse training** (``qgraph.sparse_training``): the magnitude mask is recomputed on
   every forward, gradients are dense (pruned weights can regrow), SR-STE decay λ on pruned weights.
3. **Base-decayed distillation** (:class:`BaseDecayedKD`): ``L = (T²/B) Σ p_t (log p_t − ℓ_s/τ_e)``
   with ``p_t = softmax(z_t/T)``, ``ℓ_s = log_softmax(z_s)``, ``τ_e = τ₀·decay^e``: the student's
   log is taken in base ``e^{τ_e}``, and the gradient ``(T²/(B·τ_e))(p_s − p_t)`` grows as
   ``τ_e`` shrinks. No labels are used anywhere.

Labels [INF]: the calibration set is unlabeled here; fitness counts agreement with the dense
teacher's top-1 (ties broken by the mean log-probability of the teacher's class).

    result = unipts(model, calib_x, sparsity=0.9)           # a new model; ``model`` is not changed
    result.model, result.ratios                              # plain layers holding W ⊙ m, per-layer p_l
    qm = qgraph.quantize(result.model, x, recipe=[result.recipe(), "w8a8"], calib_data=[calib_x])
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from qgraph.errors import InputError
from qgraph.sparse_training import masked_layers, unwrap_layers, wrap_layers
from qgraph.sparsity import magnitude_mask

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class DynamicMagnitude(nn.Module):
    """Masker: the ``1 − ratio`` largest magnitudes of the layer, recomputed on every call (``m_b = m_f``)."""

    def __init__(self, ratio: float) -> None:
        super().__init__()
        self.ratio = float(ratio)

    def forward(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = magnitude_mask(w, self.ratio)
        return m, m


class BaseDecayedKD(nn.Module):
    """The base-decayed distillation loss; ``set_epoch(e)`` sets ``τ_e = tau0 · decay^e``."""

    def __init__(self, temperature: float = 4.0, tau0: float = 8.0, decay: float = 0.99) -> None:
        super().__init__()
        self.t, self.tau0, self.decay, self.tau = temperature, tau0, decay, tau0

    def set_epoch(self, epoch: int) -> None:
        self.tau = self.tau0 * self.decay**epoch

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        p_t = F.softmax(teacher.detach() / self.t, dim=-1)
        log_p_t = F.log_softmax(teacher.detach() / self.t, dim=-1)
        ls = F.log_softmax(student, dim=-1) / self.tau
        return (self.t**2) * (p_t * (log_p_t - ls)).sum(-1).mean()


def prepare_unipts(model: nn.Module, sparsity: float, decay: float = 5e-5, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Swap (in place) every Conv2d/Linear for a dynamically masked layer at ``sparsity``."""
    return wrap_layers(model, lambda path, layer: DynamicMagnitude(sparsity), decay, skip)


def set_layer_sparsity(model: nn.Module, ratios: dict[str, float]) -> None:
    layers = masked_layers(model)
    unknown = sorted(set(ratios) - set(layers))
    if unknown:
        raise InputError(f"no masked layer at {', '.join(unknown)}; masked layers: {', '.join(layers)}")
    for path, p in ratios.items():
        layers[path].masker.ratio = float(p)


def layer_ratios(model: nn.Module) -> dict[str, float]:
    return {p: layer.masker.ratio for p, layer in masked_layers(model).items()}


@torch.no_grad()
def bn_recalibrate(model: nn.Module, x: torch.Tensor, noise: float = 1e-6, batch_size: int = 64, seed: int = 0) -> None:
    """Re-estimate every BatchNorm's running statistics on ``x`` (+ Gaussian noise), as a cumulative average."""
    bns = [m for m in model.modules() if isinstance(m, BN_TYPES)]
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    gen = torch.Generator().manual_seed(seed)
    was = model.training
    model.train()
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            model(xb + noise * torch.randn(xb.shape, generator=gen))
    finally:
        for bn, mom in zip(bns, saved):
            bn.momentum = mom
        model.train(was)


@torch.no_grad()
def _fitness(model: nn.Module, x: torch.Tensor, teacher_top1: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logp = F.log_softmax(model(x), -1)
    agree = float((logp.argmax(-1) == teacher_top1).float().mean())
    return agree, float(logp.gather(1, teacher_top1[:, None]).mean())


def decode(v: torch.Tensor, sizes: list[int], target: float, step: float = 0.05) -> list[float]:
    """Per-layer sparsity from a genome: every layer at ``target + step``, ``step·N`` weights regrown by ``softmax(v)``."""
    total = sum(sizes)
    a = torch.softmax(v, 0)
    return [max(0.0, min(0.999, target + step - step * total * float(a[i]) / sizes[i])) for i in range(len(sizes))]


@dataclass
class SearchResult:
    ratios: dict[str, float]
    fitness: float
    history: list[float] = field(default_factory=list)  # best fitness per generation


def reduce_regrow_search(model: nn.Module, x: torch.Tensor, target: float, *, population: int = 25, generations: int = 25,
                         parents: int = 10, mutation_rate: float = 0.1, seed: int = 0, teacher_top1: torch.Tensor | None = None,
                         ) -> SearchResult:
    """The GA over per-layer sparsity of a model prepared with :func:`prepare_unipts` (not modified)."""
    layers = masked_layers(model)
    if not layers:
        raise InputError("reduce_regrow_search needs a model prepared with prepare_unipts")
    paths = list(layers)
    sizes = [layers[p].weight.numel() for p in paths]
    gen = torch.Generator().manual_seed(seed)
    if teacher_top1 is None:
        teacher_top1 = _fitness_labels(model, x)
    cache: dict[tuple, tuple[float, float]] = {}

    def fit(v: torch.Tensor) -> tuple[float, float]:
        ratios = decode(v, sizes, target)
        key = tuple(round(r, 6) for r in ratios)
        if key not in cache:
            trial = copy.deepcopy(model)
            set_layer_sparsity(trial, dict(zip(paths, ratios)))
            bn_recalibrate(trial, x, seed=seed)
            cache[key] = _fitness(trial, x, teacher_top1)
        return cache[key]

    pop = [torch.zeros(len(paths))] + [torch.rand(len(paths), generator=gen) for _ in range(population - 1)]
    history = []
    for _ in range(generations):
        scored = sorted(((fit(v), i, v) for i, v in enumerate(pop)), key=lambda t: (t[0], -t[1]), reverse=True)
        history.append(scored[0][0][0])
        top = [v for _, _, v in scored[:parents]]
        children = []
        n_cross = (population - parents) // 2
        for _ in range(n_cross):
            a, b = (top[int(i)] for i in torch.randint(len(top), (2,), generator=gen))
            pick = torch.rand(len(paths), generator=gen) < 0.5
            children.append(torch.where(pick, a, b))
        while len(children) < population - parents:
            a = top[int(torch.randint(len(top), (1,), generator=gen))]
            hit = torch.rand(len(paths), generator=gen) < mutation_rate
            children.append(torch.where(hit, a * (1 + torch.randn(len(paths), generator=gen)), a))
        pop = top + children
    best = max(pop, key=fit)
    return SearchResult(dict(zip(paths, decode(best, sizes, target))), fit(best)[0], history)


@torch.no_grad()
def _fitness_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return model(x).argmax(-1)
    finally:
        model.train(was)


def finetune(student: nn.Module, teacher: nn.Module, x: torch.Tensor, *, epochs: int = 100, lr: float = 0.01,
             batch_size: int = 64, weight_decay: float = 1e-4, loss: BaseDecayedKD | None = None, seed: int = 0) -> list[float]:
    """Dynamic sparse training of ``student`` on ``x`` with the KD loss (SGD, momentum 0.9, 1-epoch
    warmup then cosine); returns the loss per epoch."""
    loss = loss or BaseDecayedKD()
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = epochs * steps_per_epoch
    warm = steps_per_epoch

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    teacher.eval()
    with torch.no_grad():
        t_logits = teacher(x)
    out = []
    for epoch in range(epochs):
        loss.set_epoch(epoch)
        student.train()
        perm = torch.randperm(len(x), generator=gen)
        run = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            value = loss(student(x[idx]), t_logits[idx])
            value.backward()
            opt.step()
            sched.step()
            run += float(value.detach()) * len(idx)
        out.append(run / len(x))
    return out


@dataclass
class UniPTSResult:
    model: nn.Module  # plain layers holding W ⊙ m, BatchNorm re-estimated
    ratios: dict[str, float]  # per-layer sparsity used
    search: SearchResult | None
    losses: list[float]

    def recipe(self):
        """The ``sparse`` recipe that keeps exactly these masks when the model is quantized."""
        from qgraph.sparsity import sparse

        return sparse(0.0, layers=self.ratios)

    def sparsity(self) -> float:
        ws = [m.weight for m in self.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        return float(sum(int((w == 0).sum()) for w in ws)) / max(1, sum(w.numel() for w in ws))


def unipts(model: nn.Module, calib_x: torch.Tensor, sparsity: float, *, search: bool = True, population: int = 25,
           generations: int = 25, epochs: int = 100, lr: float = 0.01, decay: float = 5e-5, skip: tuple[str, ...] = (),
           kd: BaseDecayedKD | None = None, seed: int = 0) -> UniPTSResult:
    """Prune a copy of ``model`` to ``sparsity`` with UniPTS using only the images ``calib_x``."""
    if not 0.0 < sparsity < 1.0:
        raise InputError(f"sparsity must be in (0, 1), got {sparsity!r}")
    if not isinstance(calib_x, torch.Tensor) or len(calib_x) == 0:
        raise InputError("calib_x must be a non-empty tensor of calibration images")
    teacher = copy.deepcopy(model).eval()
    student = copy.deepcopy(model)
    prepare_unipts(student, sparsity, decay, skip)
    found = None
    if search:
        found = reduce_regrow_search(student, calib_x, sparsity, population=population, generations=generations, seed=seed,
                                     teacher_top1=_fitness_labels(teacher, calib_x))
        set_layer_sparsity(student, found.ratios)
    losses = finetune(student, teacher, calib_x, epochs=epochs, lr=lr, loss=kd, seed=seed) if epochs else []
    bn_recalibrate(student, calib_x, seed=seed)
    ratios = layer_ratios(student)
    unwrap_layers(student)
    return UniPTSResult(student.eval(), ratios, found, losses)


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float, calib_x: torch.Tensor | None = None) -> nn.Module:
    """Baseline: a copy with every Conv2d/Linear pruned to ``sparsity`` by magnitude (one shot, uniform);
    with ``calib_x`` BatchNorm is re-estimated on it afterwards."""
    out = copy.deepcopy(model).eval()
    for m in out.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.mul_(magnitude_mask(m.weight, sparsity))
    if calib_x is not None:
        bn_recalibrate(out, calib_x)
        out.eval()
    return out


__all__ = ["unipts", "UniPTSResult", "magnitude_prune", "prepare_unipts", "set_layer_sparsity", "layer_ratios",
           "bn_recalibrate", "reduce_regrow_search", "finetune", "BaseDecayedKD", "DynamicMagnitude", "decode", "SearchResult"]
