"""Sequence-model idioms for ``usage_scan.py`` (third round, part two, 2026-12-07): WaveNet's dilated
causal convolutions with gated activations, a linear layer written as ``einsum`` with its weight,
FNet's Fourier mixing, an LSTM over packed padded sequences, a hand-written top-2 mixture of experts,
a teacher branch under ``torch.no_grad()``, a pointer network gathering by argmax, and a cosine
classifier normalising its weight in ``forward``.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WaveNet(nn.Module):
    """Dilated causal Conv1d stacks with tanh·sigmoid gates, residual and skip connections."""

    def __init__(self, channels: int = 8, layers: int = 3) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, channels, 1)
        self.filt = nn.ModuleList([nn.Conv1d(channels, channels, 2, dilation=2**i) for i in range(layers)])
        self.gate = nn.ModuleList([nn.Conv1d(channels, channels, 2, dilation=2**i) for i in range(layers)])
        self.res = nn.ModuleList([nn.Conv1d(channels, channels, 1) for _ in range(layers)])
        self.out = nn.Conv1d(channels, 4, 1)

    def forward(self, x):  # [N, 1, T]
        h, skip = self.inp(x), 0
        for i, (f, g, r) in enumerate(zip(self.filt, self.gate, self.res)):
            p = F.pad(h, (2**i, 0))  # causal: pad on the left only
            z = torch.tanh(f(p)) * torch.sigmoid(g(p))
            h = h + r(z)
            skip = skip + z
        return self.out(F.relu(skip))


class EinsumLinear(nn.Module):
    """Layers written as ``einsum`` with their weight (code ported from JAX/flax)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 16) * 0.3)
        self.b1 = nn.Parameter(torch.zeros(16))
        self.w2 = nn.Parameter(torch.randn(16, 4) * 0.3)

    def forward(self, x):  # [N, T, 8]
        h = F.gelu(torch.einsum("btd,de->bte", x, self.w1) + self.b1)
        return torch.einsum("bte,ec->btc", h, self.w2)


class FNet(nn.Module):
    """Token mixing by the real part of a 2-D FFT over sequence and hidden dims."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed, self.ff1, self.ff2, self.head = nn.Linear(6, d), nn.Linear(d, 32), nn.Linear(32, d), nn.Linear(d, 3)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x):  # [N, T, 6]
        h = self.embed(x)
        h = self.n1(h + torch.fft.fft2(h.to(torch.complex64)).real)
        h = self.n2(h + self.ff2(F.gelu(self.ff1(h))))
        return self.head(h.mean(1))


class PackedLSTM(nn.Module):
    """An LSTM over ``pack_padded_sequence`` of variable-length rows, as NLP tutorials write it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(30, 8), nn.LSTM(8, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, ids, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.head(h[-1])


def _padded_ids(n: int, g: torch.Generator):
    lengths = torch.tensor([7 - i % 4 for i in range(n)])
    return torch.randint(0, 30, (n, 7), generator=g), lengths


class TopTwoMoE(nn.Module):
    """A hand-written top-2 mixture of experts: softmax router, ``topk``, each expert on its tokens
    (``index_select``), weighted results summed back with ``index_add``."""

    def __init__(self, d: int = 8, experts: int = 4) -> None:
        super().__init__()
        self.router = nn.Linear(d, experts)
        self.experts = nn.ModuleList([nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, d)) for _ in range(experts)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):  # [N, T, d]
        tokens = x.reshape(-1, x.shape[-1])
        weights, chosen = self.router(tokens).softmax(-1).topk(2, dim=-1)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(chosen == e)
            out = out.index_add(0, rows, expert(tokens.index_select(0, rows)) * weights[rows, slot].unsqueeze(-1))
        return self.head(out.reshape(x.shape).mean(1))


class TeacherStudent(nn.Module):
    """A frozen teacher evaluated under ``torch.no_grad()`` and detached, next to the student."""

    def __init__(self) -> None:
        super().__init__()
        self.student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        self.teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        with torch.no_grad():
            target = self.teacher(x).detach()
        return self.student(x), target


class Pointer(nn.Module):
    """A pointer network step: attention scores over inputs, argmax, ``gather`` of the chosen rows."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.query, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):  # [N, T, 4]
        h = torch.tanh(self.enc(x))
        scores = torch.einsum("btd,bd->bt", h, self.query(h.mean(1)))
        idx = scores.argmax(-1, keepdim=True).unsqueeze(-1).expand(-1, 1, h.shape[-1])
        return self.out(torch.gather(h, 1, idx).squeeze(1)), scores.log_softmax(-1)


class CosineHead(nn.Module):
    """A cosine classifier: normalised features against a weight normalised in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.weight = nn.Parameter(torch.randn(5, 8))

    def forward(self, x):
        return 10 * F.linear(F.normalize(self.body(x), dim=-1), F.normalize(self.weight, dim=-1))


CASES = {
    "wavenet": ("dilated causal Conv1d, left padding, tanh*sigmoid gates, skips", lambda: (WaveNet(), lambda n, g: (torch.randn(n, 1, 32, generator=g),))),
    "einsum_linear": ("linear layers written as torch.einsum with the weight", lambda: (EinsumLinear(), lambda n, g: (torch.randn(n, 5, 8, generator=g),))),
    "fnet": ("FNet: real part of torch.fft.fft2 token mixing", lambda: (FNet(), lambda n, g: (torch.randn(n, 6, 6, generator=g),))),
    "packed_lstm": ("nn.LSTM on pack_padded_sequence (lengths input)", lambda: (PackedLSTM(), _padded_ids)),
    "moe_top2": ("hand-written top-2 mixture of experts: topk, where, index_select, index_add",
                 lambda: (TopTwoMoE(), lambda n, g: (torch.randn(n, 5, 8, generator=g),))),
    "teacher_no_grad": ("a teacher under torch.no_grad() and detach, returned with the student",
                        lambda: (TeacherStudent(), lambda n, g: (torch.randn(n, 8, generator=g),))),
    "pointer_gather": ("pointer network: einsum scores, argmax, torch.gather", lambda: (Pointer(), lambda n, g: (torch.randn(n, 6, 4, generator=g),))),
    "cosine_head": ("F.normalize features and a weight normalised in forward", lambda: (CosineHead(), lambda n, g: (torch.randn(n, 3, 16, 16, generator=g),))),
}
