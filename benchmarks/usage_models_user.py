"""Seventh round of user-style models for ``usage_scan.py`` (2026-12-07, fifth session): what users do to
a model before they quantize it, and idioms of popular reference code. Pruning with
``torch.nn.utils.prune`` (a ``weight_orig`` parameter, a mask buffer and a forward pre-hook), the old
hook-based ``weight_norm`` and ``spectral_norm``, forward hooks that change a block's output, Meta's LLaMA rotary embedding
in complex numbers (``view_as_complex``, ``polar``), ALiBi attention biases, grouped-query attention
through ``scaled_dot_product_attention(enable_gqa=True)``, circular and reflect padding modes,
adaptive pooling to sizes that do not divide the input, ``uint8`` images normalised inside the model,
a float64 model, an ``nn.Embedding(max_norm=...)`` that renormalises its rows in ``forward``,
antialiased downsampling; a BatchNorm shared by two convs and a conv shared by two BatchNorms, PReLU,
``padding="same"`` with even kernels, bucketized and one-hot tabular features, a ReLU ``nn.RNN``,
fractional resampling and a 0-d timestep input.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune


def _images(n: int, g: torch.Generator, side: int = 16) -> tuple:
    return (torch.randn(n, 3, side, side, generator=g),)


def _tokens(n: int, g: torch.Generator, length: int = 12, vocab: int = 50) -> tuple:
    return (torch.randint(0, vocab, (n, length), generator=g),)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def _pruned():
    """L1-unstructured pruning left in place (not ``prune.remove``d): the weight is recomputed from
    ``weight_orig * weight_mask`` by a forward pre-hook on every call."""
    m = SmallCNN()
    for layer in (m.conv1, m.conv2, m.fc):
        prune.l1_unstructured(layer, "weight", amount=0.5)
    return m, _images


def _spectral_norm():
    """``torch.nn.utils.spectral_norm``: a pre-hook that writes ``weight`` from ``weight_orig`` and
    power-iteration vectors (in eval mode it reuses them)."""
    m = SmallCNN()
    m.conv1 = nn.utils.spectral_norm(m.conv1)
    m.fc = nn.utils.spectral_norm(m.fc)
    with torch.no_grad():
        m.train()
        m(torch.randn(2, 3, 16, 16))  # a few power iterations, as training would have done
        m.eval()
    return m, _images


def _old_weight_norm():
    """The deprecated hook-based ``torch.nn.utils.weight_norm`` (HiFi-GAN, WaveGlow, TCN code still use it)."""
    m = nn.Sequential(nn.utils.weight_norm(nn.Conv1d(4, 16, 5, padding=2)), nn.LeakyReLU(0.1),
                      nn.utils.weight_norm(nn.Conv1d(16, 4, 3, padding=1), dim=None))
    return m, lambda n, g: (torch.randn(n, 4, 32, generator=g),)


def _forward_hooks():
    """A forward hook that scales a block's output and one that adds a residual: both change
    the result, so a trace that drops them computes something else."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    m[1].register_forward_hook(lambda mod, args, out: out * 0.5)
    m[2].register_forward_hook(lambda mod, args, out: out + args[0])
    return m, _images


def _precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end, device=freqs.device)
    return torch.polar(torch.ones(end, dim // 2), torch.outer(t, freqs).float())


class ComplexRotaryAttention(nn.Module):
    """Attention with rotary embeddings as Meta's LLaMA reference code applies them: query and key
    pairs viewed as complex numbers, multiplied by precomputed ``freqs_cis``, viewed back as real."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4, max_len: int = 64) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.emb = nn.Embedding(vocab, dim)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.out = nn.Linear(dim, vocab, bias=False)
        self.register_buffer("freqs_cis", _precompute_freqs_cis(self.hd, max_len), persistent=False)

    def forward(self, tokens):
        x = self.emb(tokens)
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.heads, self.hd)
        k = self.wk(x).view(b, t, self.heads, self.hd)
        v = self.wv(x).view(b, t, self.heads, self.hd)
        fc = self.freqs_cis[:t].view(1, t, 1, self.hd // 2)
        q = torch.view_as_real(torch.view_as_complex(q.float().reshape(b, t, self.heads, -1, 2)) * fc).flatten(3)
        k = torch.view_as_real(torch.view_as_complex(k.float().reshape(b, t, self.heads, -1, 2)) * fc).flatten(3)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.out(x + self.wo(a.transpose(1, 2).reshape(b, t, -1)))


class AlibiAttention(nn.Module):
    """ALiBi: a per-head linear distance penalty built in ``forward`` from ``arange``, plus a causal mask,
    added to the attention scores (BLOOM, MPT)."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.emb, self.qkv, self.proj = nn.Embedding(vocab, dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm, self.out = nn.LayerNorm(dim), nn.Linear(dim, vocab)
        self.register_buffer("slopes", 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads), persistent=False)

    def forward(self, tokens):
        x = self.emb(tokens)
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        pos = torch.arange(t, device=x.device)
        dist = (pos[None, :] - pos[:, None]).clamp(max=0).float()  # 0 on the diagonal, negative to the past
        bias = self.slopes[:, None, None] * dist
        bias = bias.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(x + self.proj(a.transpose(1, 2).reshape(b, t, d)))


class GroupedQueryAttention(nn.Module):
    """Grouped-query attention: 4 query heads share 2 key/value heads, expanded by ``sdpa`` itself."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.h, self.kvh, self.hd = heads, kv_heads, dim // heads
        self.emb = nn.Embedding(vocab, dim)
        self.q, self.kv = nn.Linear(dim, dim, bias=False), nn.Linear(dim, 2 * kv_heads * self.hd, bias=False)
        self.o, self.out = nn.Linear(dim, dim, bias=False), nn.Linear(dim, vocab)

    def forward(self, tokens):
        x = self.emb(tokens)
        b, t, d = x.shape
        q = self.q(x).view(b, t, self.h, self.hd).transpose(1, 2)
        k, v = self.kv(x).view(b, t, 2, self.kvh, self.hd).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.out(x + self.o(a.transpose(1, 2).reshape(b, t, d)))


def _padding_modes():
    """Convolutions with ``padding_mode="circular"`` (periodic domains) and ``"reflect"``."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                      nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Conv2d(8, 3, 1))
    return m, _images


class OddAdaptivePool(nn.Module):
    """Adaptive pooling to output sizes that do not divide the input (10x10 to 3x3 and 4x4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.avg, self.max = nn.AdaptiveAvgPool2d(3), nn.AdaptiveMaxPool2d(4)
        self.fc = nn.Linear(8 * 9 + 8 * 16, 10)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        return self.fc(torch.cat([self.avg(f).flatten(1), self.max(f).flatten(1)], 1))


class Uint8Images(nn.Module):
    """Takes ``uint8`` images as a camera or decoder gives them; scaling and normalisation inside."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.net = SmallCNN()

    def forward(self, x):
        return self.net((x.float() / 255.0 - self.mean) / self.std)


def _uint8_images():
    return Uint8Images(), lambda n, g: (torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8),)


def _float64():
    """A model in double precision, given double inputs (scientific code)."""
    return SmallCNN().double(), lambda n, g: (torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64),)


class MaxNormEmbedding(nn.Module):
    """``nn.Embedding(max_norm=1.0)``: rows looked up are renormalised in place during ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16, max_norm=1.0)
        self.fc = nn.Linear(16, 5)

    def forward(self, tokens):
        return self.fc(self.emb(tokens).mean(1))


class AntialiasDown(nn.Module):
    """Antialiased bilinear downsampling (``F.interpolate(..., antialias=True)``) between convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        f = F.interpolate(torch.relu(self.c1(x)), scale_factor=0.5, mode="bilinear", antialias=True)
        return self.c2(f)


class SharedBatchNorm(nn.Module):
    """One BatchNorm applied after two different convs (branches that share their normalisation)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 5, padding=2)
        self.bn, self.fc = nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc((torch.relu(self.bn(self.a(x))) + torch.relu(self.bn(self.b(x)))).mean((2, 3)))


class SharedConvTwoBatchNorms(nn.Module):
    """One conv called on two inputs, each call followed by its own BatchNorm (domain-specific BN)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        a = torch.relu(self.bn1(self.conv(x))).mean((2, 3))
        b = torch.relu(self.bn2(self.conv(x.flip(3)))).mean((2, 3))
        return self.fc(torch.cat([a, b], 1))


def _trained_bn(m: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine terms away from their identity initialisation."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for bn in (b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return m


class PReLUNet(nn.Module):
    """PReLU with one slope per channel and with one shared slope (face-recognition backbones)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.p1 = nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8)
        self.c2, self.p2 = nn.Conv2d(8, 8, 3, padding=1), nn.PReLU()
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.p1.weight.uniform_(0.05, 0.4)

    def forward(self, x):
        return self.fc(self.p2(self.c2(self.p1(self.c1(x)))).mean((2, 3)))


class SameEvenKernels(nn.Module):
    """``padding="same"`` with an even kernel and a dilated one (asymmetric pads), LocalResponseNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 4, padding="same")
        self.c2 = nn.Conv2d(8, 8, (2, 3), padding="same", dilation=2)
        self.lrn = nn.LocalResponseNorm(3)

    def forward(self, x):
        return self.c2(self.lrn(torch.relu(self.c1(x))))


class TabularBins(nn.Module):
    """Tabular features: a numeric column bucketized into bins and embedded, a categorical column one-hot."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("edges", torch.linspace(-2, 2, 7))
        self.emb = nn.Embedding(8, 4)
        self.fc = nn.Sequential(nn.Linear(4 + 5 + 1, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, num, cat):
        return self.fc(torch.cat([self.emb(torch.bucketize(num, self.edges)), F.one_hot(cat, 5).float(), num[:, None]], 1))


class ReluRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(6, 12, num_layers=2, nonlinearity="relu", batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


class FractionalResampling(nn.Module):
    """Upsampling by 1.5 with aligned corners, ceil-mode average pooling without the padding in the
    count, and PixelUnshuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.o = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.up = nn.Upsample(scale_factor=1.5, mode="bilinear", align_corners=True)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)
        self.unshuffle = nn.PixelUnshuffle(2)

    def forward(self, x):
        return self.o(self.pool(self.up(torch.relu(self.c(x))))), self.unshuffle(x)


class ScalarTimestep(nn.Module):
    """A denoiser given a 0-d timestep tensor: one t for the whole batch."""

    def __init__(self) -> None:
        super().__init__()
        self.temb = nn.Linear(1, 8)
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x, t):
        return self.c2(torch.relu(self.c1(x) + self.temb(t.float().view(1, 1) / 1000.0).view(1, -1, 1, 1)))


def _image_and_step(n: int, g: torch.Generator) -> tuple:
    return torch.randn(n, 3, 16, 16, generator=g), torch.tensor(int(torch.randint(0, 1000, (1,), generator=g)))


CASES = {
    "pruned": ("torch.nn.utils.prune left in place: weight_orig * weight_mask in a pre-hook", _pruned),
    "spectral_norm": ("hook-based nn.utils.spectral_norm on a conv and a linear", _spectral_norm),
    "old_weight_norm": ("hook-based nn.utils.weight_norm (deprecated, still common) on Conv1d, dim=0 and dim=None",
                        _old_weight_norm),
    "forward_hooks": ("forward hooks that scale a ReLU's output and add a residual around a block", _forward_hooks),
    "complex_rotary": ("LLaMA reference rotary embedding: view_as_complex, polar, view_as_real",
                       lambda: (ComplexRotaryAttention(), _tokens)),
    "alibi": ("ALiBi distance biases and a causal -inf mask built from arange in forward", lambda: (AlibiAttention(), _tokens)),
    "gqa": ("grouped-query attention: sdpa(enable_gqa=True), 4 query heads on 2 key/value heads",
            lambda: (GroupedQueryAttention(), _tokens)),
    "padding_modes": ("Conv2d padding_mode circular and reflect", _padding_modes),
    "adaptive_pool_odd": ("adaptive avg/max pooling 10x10 -> 3x3 and 4x4 (sizes that do not divide)",
                          lambda: (OddAdaptivePool(), lambda n, g: _images(n, g, 10))),
    "uint8_images": ("uint8 images, x.float() / 255 and normalisation inside the model", _uint8_images),
    "float64": ("a float64 model and float64 inputs", _float64),
    "embedding_max_norm": ("nn.Embedding(max_norm=1.0) renormalising looked-up rows in forward",
                           lambda: (MaxNormEmbedding(), _tokens)),
    "antialias": ("F.interpolate(scale_factor=0.5, mode='bilinear', antialias=True)", lambda: (AntialiasDown(), _images)),
    "shared_bn": ("one BatchNorm after two different convs", lambda: (_trained_bn(SharedBatchNorm()), _images)),
    "shared_conv_two_bn": ("one conv called twice, each call with its own BatchNorm",
                           lambda: (_trained_bn(SharedConvTwoBatchNorms()), _images)),
    "prelu": ("PReLU per channel and shared", lambda: (PReLUNet(), _images)),
    "same_even": ("padding='same' with even and dilated kernels, LocalResponseNorm", lambda: (SameEvenKernels(), _images)),
    "tabular_bins": ("bucketize into bins + embedding, one_hot", lambda: (TabularBins(), lambda n, g: (
        torch.randn(n, generator=g), torch.randint(0, 5, (n,), generator=g)))),
    "relu_rnn": ("nn.RNN(nonlinearity='relu'), 2 layers, batch_first", lambda: (ReluRNN(), lambda n, g: (torch.randn(n, 9, 6, generator=g),))),
    "fractional": ("Upsample x1.5 align_corners, AvgPool ceil_mode count_include_pad=False, PixelUnshuffle",
                   lambda: (FractionalResampling(), _images)),
    "scalar_t": ("a 0-d timestep tensor beside a batch of images", lambda: (ScalarTimestep(), _image_and_step)),
}
