"""More of the ways user code is written, for ``usage_scan.py`` (second round, 2026-12-06): attention
in einsum and with masks, U-Nets and super-resolution nets, weights used twice or tied, functional
layers on parameters, torch's own Transformer modules, parametrizations, channels-last models,
tables whose first dim is not the batch, namedtuple outputs, training-only branches.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn


def _images(n: int, g: torch.Generator, side: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=g)


def _ids(n: int, g: torch.Generator, length: int = 10, vocab: int = 20) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=g)


def _mask(n: int, length: int = 10) -> torch.Tensor:
    """Right padding of 0 to 2 tokens per row."""
    m = torch.ones(n, length, dtype=torch.long)
    for i in range(n):
        m[i, length - i % 3:] = 0
    return m


class EinsumAttention(nn.Module):
    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.qkv, self.o, self.head = heads, nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(d, 4)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // self.heads)
        y = torch.einsum("bhqk,bkhd->bqhd", a.softmax(-1), v).reshape(b, t, d)
        return self.head(self.o(y).mean(1))


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.e2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.d1, self.out = nn.Conv2d(16, 8, 3, padding=1, padding_mode="reflect"), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(a)
        u = self.up(b) + F.interpolate(b[:, :8], scale_factor=2, mode="bilinear", align_corners=False)
        return self.out(F.relu(self.d1(torch.cat([a, u], 1))))


class Tied(nn.Module):
    """A conv called at two scales; a language-model head tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.emb, self.lm = nn.Conv2d(3, 8, 3, padding=1), nn.Embedding(20, 8), nn.Linear(8, 20, bias=False)
        self.lm.weight = self.emb.weight

    def forward(self, x, ids):
        f = self.conv(x).mean((2, 3)) + self.conv(F.avg_pool2d(x, 2)).mean((2, 3))
        return self.lm(self.emb(ids) + f[:, None])


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2), nn.Parameter(torch.zeros(8))
        self.w2, self.w3 = nn.Parameter(torch.randn(4, 8) * 0.3), nn.Parameter(torch.randn(4, 4) * 0.3)

    def forward(self, x):
        y = F.linear(F.conv2d(x, self.w, self.b, padding=1).relu().mean((2, 3)), self.w2)
        return torch.addmm(torch.ones(4), y, self.w3) + torch.bmm(y[:, None], self.w3.expand(y.shape[0], 4, 4))[:, 0]


class TorchEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(30, 16), nn.Linear(16, 3)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, ids, mask):
        return self.head(self.enc(self.emb(ids), src_key_padding_mask=mask == 0)[:, 0])


class CausalTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(30, 16), nn.Linear(16, 30)
        self.t = nn.Transformer(16, 2, 1, 1, 32, dropout=0.0, batch_first=True)

    def forward(self, src, tgt):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.head(self.t(self.emb(src), self.emb(tgt), tgt_mask=mask, tgt_is_causal=True))


class IsCausal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.o = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return self.o(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c))


class MaskedFill(nn.Module):
    """Attention with ``masked_fill(-inf)`` and ``torch.where``: the mask's length is tied to x's."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x, mask):
        att = (self.q(x) @ self.k(x).transpose(1, 2)) / math.sqrt(8)
        att = att.masked_fill(mask[:, None, :] == 0, float("-inf"))
        return self.o(torch.where(mask[..., None].bool(), att.softmax(-1) @ self.v(x), torch.zeros(())))


class FixedPositions(nn.Module):
    """A learned position table as long as the example: only that token length fits."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.pos, self.fc = nn.Embedding(20, 8), nn.Parameter(torch.randn(1, 10, 8)), nn.Linear(8, 3)

    def forward(self, ids):
        return self.fc(self.emb(ids) + self.pos).mean(1)


class SuperRes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1, padding_mode="replicate"), nn.Conv2d(16, 12, 3, padding=1)
        self.ps = nn.PixelShuffle(2)

    def forward(self, x):
        return self.ps(self.c2(F.leaky_relu(self.c1(x), 0.1))) + F.interpolate(x, scale_factor=2, mode="nearest")


class CausalConv(nn.Module):
    """wav2vec/Mamba-like: left padding, a depthwise Conv1d, GLU, LayerNorm over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.dw, self.ln, self.out = nn.Linear(8, 16), nn.Conv1d(8, 8, 4, groups=8), nn.LayerNorm(8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.dw(F.pad(F.glu(self.inp(x), -1).transpose(1, 2), (3, 0))).transpose(1, 2)
        return self.out(F.silu(self.ln(h))) + x


class FlattenView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        return F.log_softmax(self.fc(y.view(y.size(0), -1)), dim=1)


class Prototypes(nn.Module):
    """Image features against a table of class embeddings whose first dim is not the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.proj = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 8)

    def forward(self, x, classes):
        f = F.normalize(self.proj(torch.relu(self.conv(x)).mean((2, 3))), dim=-1)
        return f @ F.normalize(classes, dim=-1).T


class Parametrized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        p = nn.utils.parametrizations
        self.a, self.b = p.weight_norm(nn.Linear(8, 16)), p.spectral_norm(nn.Linear(16, 4))

    def forward(self, x):
        return self.b(F.gelu(self.a(x)))


Out = namedtuple("Out", "logits features")


class NamedTupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        f = torch.relu(self.conv(x)).mean((2, 3))
        return Out(self.fc(f), f)


class DropPath(nn.Module):
    """timm-style stochastic depth: a branch that only runs in training."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.p = nn.Linear(8, 8), nn.Linear(8, 8), 0.1

    def forward(self, x):
        y = self.a(x)
        if self.training and self.p > 0:
            y = y * (torch.rand(x.shape[0], 1) > self.p) / (1 - self.p)
        return self.b(x + y)


def _channels_last():
    import torchvision

    return torchvision.models.resnet18(num_classes=4).to(memory_format=torch.channels_last)


CASES = {
    "einsum_attention": ("attention written with torch.einsum", lambda: (EinsumAttention(), lambda n, g: (torch.randn(n, 6, 16, generator=g),))),
    "masked_fill": ("masked_fill(-inf) attention, torch.where; the mask tied to x's length",
                    lambda: (MaskedFill(), lambda n, g: (torch.randn(n, 10, 8, generator=g), _mask(n)))),
    "fixed_positions": ("tokens plus a position table of one length", lambda: (FixedPositions(), lambda n, g: (_ids(n, g),))),
    "sdpa_is_causal": ("scaled_dot_product_attention(is_causal=True)", lambda: (IsCausal(), lambda n, g: (torch.randn(n, 6, 16, generator=g),))),
    "torch_encoder": ("nn.TransformerEncoder with a padding mask", lambda: (TorchEncoder(), lambda n, g: (_ids(n, g, vocab=30), _mask(n)))),
    "nn_transformer": ("nn.Transformer with a causal target mask",
                       lambda: (CausalTransformer(), lambda n, g: (_ids(n, g, 9, 30), _ids(n, g, 7, 30)))),
    "unet": ("U-Net: GroupNorm, ConvTranspose2d, bilinear upsampling, skip concat, reflect padding", lambda: (UNet(), lambda n, g: (_images(n, g),))),
    "superres": ("PixelShuffle, replicate padding, nearest upsampling", lambda: (SuperRes(), lambda n, g: (_images(n, g),))),
    "causal_conv": ("left-padded depthwise Conv1d, GLU, LayerNorm", lambda: (CausalConv(), lambda n, g: (torch.randn(n, 12, 8, generator=g),))),
    "tied": ("a conv called twice; an LM head tied to the embedding", lambda: (Tied(), lambda n, g: (_images(n, g), _ids(n, g)))),
    "functional": ("F.conv2d / F.linear / addmm / bmm on parameters", lambda: (Functional(), lambda n, g: (_images(n, g),))),
    "prototypes": ("images against a class table of another size", lambda: (Prototypes(), lambda n, g: (_images(n, g), torch.randn(7, 8, generator=g)))),
    "parametrized": ("parametrizations.weight_norm / spectral_norm", lambda: (Parametrized(), lambda n, g: (torch.randn(n, 8, generator=g),))),
    "channels_last": ("a channels_last ResNet-18 and input",
                      lambda: (_channels_last(), lambda n, g: (_images(n, g).to(memory_format=torch.channels_last),))),
    "flatten_view": ("x.view(x.size(0), -1), BatchNorm, log_softmax", lambda: (FlattenView(), lambda n, g: (_images(n, g),))),
    "namedtuple_out": ("returns a namedtuple", lambda: (NamedTupleOut(), lambda n, g: (_images(n, g),))),
    "drop_path": ("stochastic depth: a training-only branch", lambda: (DropPath(), lambda n, g: (torch.randn(n, 8, generator=g),))),
}
