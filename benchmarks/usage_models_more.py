"""Sixth round of user-style models for ``usage_scan.py`` (2026-12-07, third session): building blocks
of recent papers as their reference code writes them. A VQ-VAE quantizer (nearest codebook entry by
``torch.cdist`` and ``argmin``, the codebook indexed by the codes, a straight-through estimator), a
Conformer convolution module with relative-position attention (distances from ``torch.arange`` in
``forward`` looked up in an embedding), an MLP-Mixer block (token mixing by a linear over the transposed
tokens), a wav2vec 2.0 feature encoder (a Conv1d stack with GroupNorm, a weight-normed positional
convolution trimmed by one step), Perceiver latents (a learned array expanded over the batch, cross
attention) and a state-space scan stepped over time in a Python loop.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VQVAE(nn.Module):
    """Encoder, nearest codebook vector (``cdist`` + ``argmin``), ``codebook.weight[codes]``, a
    straight-through ``z + (zq - z).detach()``, decoder."""

    def __init__(self, codes: int = 16, dim: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, dim, 3, 1, 1))
        self.codebook = nn.Embedding(codes, dim)
        self.dec = nn.Sequential(nn.ConvTranspose2d(dim, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 3, 3, 1, 1))

    def forward(self, x):
        z = self.enc(x)
        n, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        codes = torch.cdist(flat, self.codebook.weight).argmin(1)
        zq = self.codebook.weight[codes].view(n, h, w, c).permute(0, 3, 1, 2)
        zq = z + (zq - z).detach()
        return self.dec(zq), codes.view(n, h, w)


class ConformerBlock(nn.Module):
    """Relative-position self-attention (distances ``arange(T)[:, None] - arange(T)[None]`` clipped and
    looked up in an embedding, added to the scores) and the Conformer convolution module (pointwise,
    GLU, depthwise, BatchNorm1d, SiLU, pointwise)."""

    def __init__(self, d: int = 16, heads: int = 2, span: int = 8) -> None:
        super().__init__()
        self.norm1, self.qkv, self.out = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.rel = nn.Embedding(2 * span + 1, heads)
        self.norm2, self.pw1 = nn.LayerNorm(d), nn.Conv1d(d, 2 * d, 1)
        self.dw, self.bn, self.pw2 = nn.Conv1d(d, d, 5, padding=2, groups=d), nn.BatchNorm1d(d), nn.Conv1d(d, d, 1)
        self.heads, self.span = heads, span

    def forward(self, x):  # [N, T, d]
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        pos = torch.arange(x.size(1), device=x.device)
        rel = (pos[:, None] - pos[None, :]).clamp(-self.span, self.span) + self.span
        scores = q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5 + self.rel(rel).permute(2, 0, 1)
        x = x + self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d))
        h = F.glu(self.pw1(self.norm2(x).transpose(1, 2)), dim=1)
        return x + self.pw2(F.silu(self.bn(self.dw(h)))).transpose(1, 2)


class MixerBlock(nn.Module):
    """MLP-Mixer: token mixing by an MLP over the transposed tokens, then channel mixing."""

    def __init__(self, tokens: int = 16, d: int = 12) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 32), nn.GELU(), nn.Linear(32, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(d, 24), nn.GELU(), nn.Linear(24, d))
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # [N, tokens, d]
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.channel_mlp(self.norm2(x))
        return self.head(x.mean(1))


class Wav2VecFeatures(nn.Module):
    """wav2vec 2.0's feature encoder: strided Conv1d layers (GroupNorm on the first), a LayerNorm on
    the transposed features, a projection, and the positional convolution (``weight_norm`` over dim 2,
    an even kernel, the last step dropped)."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(1, d, 10, 5, bias=False), nn.Conv1d(d, d, 3, 2, bias=False), nn.Conv1d(d, d, 2, 2, bias=False)])
        self.gn, self.norm, self.proj = nn.GroupNorm(d, d), nn.LayerNorm(d), nn.Linear(d, 24)
        self.pos = nn.utils.parametrizations.weight_norm(nn.Conv1d(24, 24, 4, padding=2, groups=4), dim=2)

    def forward(self, wav):  # [N, samples]
        x = wav[:, None]
        for i, conv in enumerate(self.convs):
            x = F.gelu(self.gn(conv(x)) if i == 0 else conv(x))
        x = self.proj(self.norm(x.transpose(1, 2)))
        p = self.pos(x.transpose(1, 2))[:, :, :-1]
        return x + F.gelu(p).transpose(1, 2)


class PerceiverLatents(nn.Module):
    """Perceiver: a learned latent array expanded over the batch cross-attends to the inputs."""

    def __init__(self, latents: int = 4, d: int = 16) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(latents, d) * 0.2)
        self.inp = nn.Linear(6, d)
        self.cross = nn.MultiheadAttention(d, 2, batch_first=True)
        self.self_attn = nn.TransformerEncoderLayer(d, 2, 32, 0.0, batch_first=True)
        self.head = nn.Linear(d, 3)

    def forward(self, x):  # [N, M, 6]
        kv = self.inp(x)
        lat = self.latents.expand(x.size(0), -1, -1)
        lat = lat + self.cross(lat, kv, kv, need_weights=False)[0]
        return self.head(self.self_attn(lat).mean(1))


class StateSpaceScan(nn.Module):
    """A diagonal state-space layer stepped over time in a Python loop: ``h = exp(-softplus(a)) * h +
    B x_t``, ``y_t = C h``, then a gated output."""

    def __init__(self, d: int = 8, state: int = 16) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(state))
        self.B, self.C, self.gate = nn.Linear(d, state), nn.Linear(state, d), nn.Linear(d, d)

    def forward(self, x):  # [N, T, d]
        decay = torch.exp(-F.softplus(self.a))
        h = x.new_zeros(x.size(0), self.a.numel())
        ys = []
        for t in range(x.size(1)):
            h = decay * h + self.B(x[:, t])
            ys.append(self.C(h))
        y = torch.stack(ys, 1)
        return y * torch.sigmoid(self.gate(x))


CASES = {
    "vqvae": ("VQ-VAE: cdist/argmin codes, codebook.weight[codes], straight-through",
              lambda: (VQVAE(), lambda n, g: (torch.randn(n, 3, 16, 16, generator=g),))),
    "conformer": ("Conformer: relative positions from arange in forward, GLU, depthwise Conv1d, BatchNorm1d",
                  lambda: (ConformerBlock(), lambda n, g: (torch.randn(n, 10, 16, generator=g),))),
    "mlp_mixer": ("MLP-Mixer: a linear over the transposed tokens", lambda: (MixerBlock(), lambda n, g: (torch.randn(n, 3, 16, 16, generator=g),))),
    "wav2vec_features": ("wav2vec 2.0 feature encoder: strided Conv1d, GroupNorm, weight_norm(dim=2) positional conv trimmed",
                         lambda: (Wav2VecFeatures(), lambda n, g: (torch.randn(n, 400, generator=g),))),
    "perceiver": ("Perceiver: learned latents expanded over the batch, cross-attention",
                  lambda: (PerceiverLatents(), lambda n, g: (torch.randn(n, 9, 6, generator=g),))),
    "ssm_scan": ("state-space scan: exp(-softplus(a)) decay, a Python loop over time", lambda: (StateSpaceScan(), lambda n, g: (torch.randn(n, 7, 8, generator=g),))),
}
