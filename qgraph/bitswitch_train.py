"""One-shot joint multi-precision QAT for bit-switch models (ALGORITHMS.md §6.5), with ALRS.

Per mini-batch, for each bit width from the highest to the lowest: switch the model (or, with a
:class:`~qgraph.hasb.RouletteSampler`, each layer) to that bit width, forward, loss, backward, and
**step at once** (Algorithm A.2): weights at the base learning rate λ, quantization scales at the
ALRS rate λ_b. Use :class:`JointTrainer` from your own loop (``trainer.step(x, y)``) or let
:meth:`JointTrainer.fit` run epochs with a progress bar.

ALRS (``alrs=``):

* ``"fixed"`` (default): ``λ_b = η_b · λ`` with η_b = 10^(-Δ/2) for even Δ = h − b, 5·10^(-(Δ+1)/2)
  for odd Δ ({8,6,4,2}: 1, 0.1, 0.01, 0.001). This is what the released code does.
* ``"grad"``: ``λ_b = η_b · λ · max(0, 1 − ḡ_b)``, ḡ_b the mean over scale tensors of
  ``min(max|∇s|, 1)`` at this bit width. The paper's Eq. 6 prints ``η_b·(λ − ḡ_b)``, which is
  negative for any realistic λ; this scaled form is our interpretation, not the paper's formula.
* ``"off"``: scales at λ for every bit width (the ablation).

The scale learning rate is set only for the step and restored afterwards, so learning-rate
schedulers on the optimizer see the base rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from qgraph.bitswitch import alrs_eta, bit_choices, scale_parameters, set_bits
from qgraph.errors import InputError

ALRS_MODES = ("fixed", "grad", "off")

__all__ = ["JointTrainer", "make_optimizer", "ALRS_MODES", "progress"]


def progress(iterable, enabled: bool = True, **kwargs):
    """``tqdm(iterable)`` when tqdm is installed and ``enabled``; the iterable itself otherwise."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return iterable
    return tqdm(iterable, **kwargs)


def make_optimizer(qm: nn.Module, lr: float = 5e-4, weight_decay: float = 5e-5, kind: str = "adam") -> torch.optim.Optimizer:
    """Two parameter groups: model weights (with ``weight_decay``) and quantization scales (none), as §6.5."""
    scales = scale_parameters(qm)
    ids = {id(p) for p in scales}
    weights = [p for p in qm.parameters() if id(p) not in ids and p.requires_grad]
    groups = [{"params": weights, "weight_decay": weight_decay, "name": "weights"},
              {"params": scales, "weight_decay": 0.0, "name": "scales"}]
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise InputError(f"optimizer kind must be 'adam' or 'sgd', got {kind!r}")


class JointTrainer:
    """Joint multi-precision training of a bit-switch QModel.

    ``optimizer``: one made by :func:`make_optimizer` (default) or your own whose scale parameters
    sit in param groups named ``"scales"``. ``sampler``: a :class:`qgraph.hasb.RouletteSampler` for
    HASB mixed-precision training (each layer's bit width drawn per step); ``None`` switches the whole
    model. ``loss_fn(outputs, target)`` defaults to cross-entropy.
    """

    def __init__(self, qm: nn.Module, *, lr: float = 5e-4, weight_decay: float = 5e-5, alrs: str = "fixed",
                 bits: Iterable[int] | None = None, optimizer: torch.optim.Optimizer | None = None,
                 loss_fn: Callable | None = None, sampler=None) -> None:
        if alrs not in ALRS_MODES:
            raise InputError(f"alrs must be one of {', '.join(ALRS_MODES)}, got {alrs!r}")
        choices = bit_choices(qm)
        if not choices:
            raise InputError("JointTrainer needs a bit-switch model (recipe='bitswitch')")
        self.bits = tuple(sorted(bits or choices, reverse=True))
        bad = [b for b in self.bits if b not in choices]
        if bad:
            raise InputError(f"bits {bad} are not among the model's bit widths {list(choices)}")
        self.qm, self.alrs, self.sampler = qm, alrs, sampler
        self.high_bits = choices[0]
        self.optimizer = optimizer or make_optimizer(qm, lr, weight_decay)
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.epoch = 0
        self.last_lr: dict[int, float] = {}

    def _scale_groups(self) -> list[dict]:
        return [g for g in self.optimizer.param_groups if g.get("name") == "scales"]

    def scale_lr_factor(self, bits: int) -> float:
        """λ_b / λ for this bit width, from the gradients now held by the scales (``alrs="grad"``)."""
        if self.alrs == "off":
            return 1.0
        eta = alrs_eta(bits, self.high_bits)
        if self.alrs == "fixed":
            return eta
        grads = [float(p.grad.detach().abs().max().clamp(max=1.0)) for g in self._scale_groups() for p in g["params"]
                 if p.grad is not None and p.grad.numel()]
        g_bar = sum(grads) / len(grads) if grads else 0.0
        return eta * max(0.0, 1.0 - g_bar)

    def step(self, inputs, target) -> dict[int, float]:
        """One mini-batch: for each bit width (high → low) forward, backward and step. Returns ``{bits: loss}``."""
        self.qm.train()
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        losses: dict[int, float] = {}
        for b in self.bits:
            if self.sampler is not None:
                set_bits(self.qm, self.sampler.sample(b, self.epoch))
            else:
                set_bits(self.qm, b)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.qm(*args), target)
            loss.backward()
            groups = self._scale_groups()
            saved = [g["lr"] for g in groups]
            factor = self.scale_lr_factor(b)
            for g in groups:
                g["lr"] = g["lr"] * factor
            self.last_lr[b] = groups[0]["lr"] if groups else float("nan")
            self.optimizer.step()
            for g, lr in zip(groups, saved):
                g["lr"] = lr
            losses[b] = float(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        set_bits(self.qm, self.bits[0])
        return losses

    def fit(self, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int = 64, seed: int = 0,
            scheduler: str | None = "cosine", progress_bar: bool = True) -> list[dict[int, float]]:
        """Train on tensors ``(x, y)`` for ``epochs`` (shuffled with ``seed``, cosine schedule); returns
        the mean loss per bit width of every epoch."""
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, epochs)) if scheduler == "cosine" else None
        gen = torch.Generator().manual_seed(seed)
        history = []
        bar = progress(range(epochs), progress_bar, desc="joint QAT", unit="epoch", leave=False)
        for epoch in bar:
            self.epoch = epoch
            perm = torch.randperm(len(x), generator=gen)
            sums: dict[int, float] = {}
            steps = 0
            for i in range(0, len(x), batch_size):
                idx = perm[i:i + batch_size]
                for b, v in self.step(x[idx], y[idx]).items():
                    sums[b] = sums.get(b, 0.0) + v
                steps += 1
            if sched is not None:
                sched.step()
            history.append({b: v / max(steps, 1) for b, v in sums.items()})
            if hasattr(bar, "set_postfix"):
                bar.set_postfix({f"loss@{b}": f"{v:.3f}" for b, v in history[-1].items()})
        self.qm.eval()
        return history
