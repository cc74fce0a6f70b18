"""Fourth round of user-style models for ``usage_scan.py`` (2026-12-07): whole small applications as
tutorials and papers write them. The PyTorch text-classification tutorial (``nn.EmbeddingBag`` with
offsets), a DCGAN generator, a diffusion U-Net (sinusoidal timestep embedding, FiLM, GroupNorm,
self-attention), PointNet (a T-Net predicting a 3x3 transform, max over points), a YOLO-style head that
decodes boxes on a grid built in ``forward``, a VAE, an FT-Transformer for tabular data (per-feature
weights used elementwise, a CLS token), a CRNN for CTC (bidirectional LSTM), a NeRF MLP with positional
encoding, ``nn.MultiheadAttention`` returning its weights, ``nn.Bilinear`` and a deformable convolution.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _images(n: int, g: torch.Generator, side: int = 16, channels: int = 3) -> torch.Tensor:
    return torch.randn(n, channels, side, side, generator=g)


class TextClassification(nn.Module):
    """The PyTorch tutorial's text classifier: one flat id tensor, bag offsets, ``nn.EmbeddingBag``."""

    def __init__(self, vocab: int = 50, dim: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab, dim, sparse=False)
        self.fc = nn.Linear(dim, classes)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


def _bags(n: int, g: torch.Generator) -> tuple:
    lengths = torch.randint(2, 7, (n,), generator=g)
    text = torch.randint(0, 50, (int(lengths.sum()),), generator=g)
    return text, torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])


class DCGANGenerator(nn.Module):
    """A latent vector up to a 16x16 image: ConvTranspose2d, BatchNorm, ReLU, tanh."""

    def __init__(self, latent: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent, 32, 4, 1, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(True),
            nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(True),
            nn.ConvTranspose2d(16, 3, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z):  # [N, latent, 1, 1]
        return self.net(z)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(4, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(tdim, 2 * cout)
        self.n2, self.c2 = nn.GroupNorm(4, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.film(F.silu(temb)).chunk(2, dim=1)
        h = self.n2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(h))


class AttnBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = nn.GroupNorm(4, c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("nqk,nck->ncq", attn, v).reshape(n, c, h, w)
        return x + self.proj(out)


class DiffusionUNet(nn.Module):
    """DDPM-style: (noisy image, integer timestep) -> predicted noise."""

    def __init__(self, c: int = 16, tdim: int = 32) -> None:
        super().__init__()
        self.tdim = tdim
        self.temb = nn.Sequential(nn.Linear(tdim, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inp = nn.Conv2d(3, c, 3, padding=1)
        self.down1, self.pool = ResBlock(c, c, tdim), nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.mid, self.attn = ResBlock(c, 2 * c, tdim), AttnBlock(2 * c)
        self.up1 = ResBlock(3 * c, c, tdim)
        self.out = nn.Sequential(nn.GroupNorm(4, c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1))

    def forward(self, x, t):
        temb = self.temb(timestep_embedding(t, self.tdim))
        h1 = self.down1(self.inp(x), temb)
        h = self.attn(self.mid(self.pool(h1), temb))
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.out(self.up1(torch.cat([h, h1], dim=1), temb))


class TNet(nn.Module):
    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.k = k
        self.conv = nn.Sequential(nn.Conv1d(k, 16, 1), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 32, 1), nn.BatchNorm1d(32), nn.ReLU())
        self.fc = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, k * k))

    def forward(self, x):
        f = torch.max(self.conv(x), 2, keepdim=True)[0].view(-1, 32)
        iden = torch.eye(self.k, dtype=x.dtype, device=x.device).view(1, self.k * self.k).repeat(x.size(0), 1)
        return (self.fc(f) + iden).view(-1, self.k, self.k)


class PointNet(nn.Module):
    """PointNet classification: an input transform, shared per-point MLPs, max over points."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.tnet = TNet(3)
        self.mlp = nn.Sequential(nn.Conv1d(3, 16, 1), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 64, 1), nn.BatchNorm1d(64), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, classes))

    def forward(self, x):  # [N, 3, points]
        trans = self.tnet(x)
        x = torch.bmm(x.transpose(2, 1), trans).transpose(2, 1)
        x = torch.max(self.mlp(x), 2, keepdim=False)[0]
        return F.log_softmax(self.head(x), dim=1)


class YoloTiny(nn.Module):
    """A YOLO-style detector: SiLU convs, an upsampled skip, two heads whose raw maps are decoded on
    a grid built in ``forward`` (sigmoid offsets times stride, anchors) into one ``[N, boxes, 5 + C]``."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.no, self.na = 5 + classes, 2

        def cbs(cin, cout, s):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())

        self.b1, self.b2, self.b3 = cbs(3, 8, 2), cbs(8, 16, 2), cbs(16, 32, 2)
        self.lat = cbs(32, 16, 1)
        self.head = nn.ModuleList([nn.Conv2d(32, self.na * self.no, 1), nn.Conv2d(32, self.na * self.no, 1)])
        self.register_buffer("anchors", torch.tensor([[[10.0, 13.0], [16.0, 30.0]], [[30.0, 61.0], [62.0, 45.0]]]))
        self.strides = (4, 8)

    def forward(self, x):
        p2 = self.b2(self.b1(x))  # stride 4
        p3 = self.b3(p2)  # stride 8
        f2 = torch.cat([p2, F.interpolate(self.lat(p3), scale_factor=2.0, mode="nearest")], 1)
        f3 = p3
        out = []
        for i, f in enumerate((f2, f3)):
            p = self.head[i](f)
            n, _, h, w = p.shape
            p = p.view(n, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).sigmoid()
            yv, xv = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, h, w, 2).float()
            xy = (p[..., :2] * 2 - 0.5 + grid) * self.strides[i]
            wh = (p[..., 2:4] * 2) ** 2 * self.anchors[i].view(1, self.na, 1, 1, 2)
            out.append(torch.cat((xy, wh, p[..., 4:]), -1).view(n, -1, self.no))
        return torch.cat(out, 1)


class VAE(nn.Module):
    """A convolutional VAE: the encoder's mean in eval mode (a sample only in training), the decoder
    back to an image; returns (reconstruction, mu, logvar)."""

    def __init__(self, latent: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 4, 2, 1), nn.ReLU(), nn.Flatten())
        self.mu, self.logvar = nn.Linear(16 * 4 * 4, latent), nn.Linear(16 * 4 * 4, latent)
        self.dec_in = nn.Linear(latent, 16 * 4 * 4)
        self.dec = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, 1, 4, 2, 1), nn.Sigmoid())

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.dec(self.dec_in(z).view(-1, 16, 4, 4)), mu, logvar


class FTTransformer(nn.Module):
    """FT-Transformer for tabular data: each numeric feature times its own vector plus a bias
    (parameters used elementwise), categorical ids through one table with per-column offsets, a CLS
    token expanded over the batch, one pre-norm encoder layer, a head on the CLS token."""

    def __init__(self, numeric: int = 5, cardinalities: tuple = (3, 4, 6), d: int = 16, classes: int = 2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(numeric, d) * 0.3)
        self.bias = nn.Parameter(torch.randn(numeric, d) * 0.1)
        self.register_buffer("offsets", torch.tensor([0, *torch.tensor(cardinalities).cumsum(0)[:-1].tolist()]))
        self.cat = nn.Embedding(sum(cardinalities), d)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.3)
        self.encoder = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.ReLU(), nn.Linear(d, classes))

    def forward(self, x_num, x_cat):
        tokens = torch.cat([self.cls.expand(x_num.shape[0], -1, -1), x_num[..., None] * self.weight[None] + self.bias[None],
                            self.cat(x_cat + self.offsets[None])], dim=1)
        return self.head(self.encoder(tokens)[:, 0])


def _tabular(n: int, g: torch.Generator) -> tuple:
    cats = torch.stack([torch.randint(0, c, (n,), generator=g) for c in (3, 4, 6)], dim=1)
    return torch.randn(n, 5, generator=g), cats


class CRNN(nn.Module):
    """Text-line recognition for CTC: convs pooling height away, columns as time steps, a
    bidirectional LSTM, per-step log-probabilities ``[T, N, classes]``."""

    def __init__(self, classes: int = 11) -> None:
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d((2, 1)),
                                 nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((1, None)))
        self.rnn = nn.LSTM(32, 16, bidirectional=True)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):  # [N, 1, 16, W]
        f = self.cnn(x).squeeze(2).permute(2, 0, 1)  # [T, N, C]
        out, _ = self.rnn(f)
        return F.log_softmax(self.fc(out), dim=2)


class NeRF(nn.Module):
    """A NeRF MLP: sin/cos positional encoding of points, a skip concatenation of the encoding,
    density through ReLU and colour through a sigmoid."""

    def __init__(self, freqs: int = 4, width: int = 32) -> None:
        super().__init__()
        self.freqs = freqs
        enc = 3 * (1 + 2 * freqs)
        self.l1, self.l2 = nn.Linear(enc, width), nn.Linear(width, width)
        self.l3 = nn.Linear(width + enc, width)
        self.sigma, self.rgb = nn.Linear(width, 1), nn.Linear(width, 3)

    def forward(self, x):  # [N, 3]
        e = torch.cat([x] + [f(2.0**k * math.pi * x) for k in range(self.freqs) for f in (torch.sin, torch.cos)], dim=-1)
        h = F.relu(self.l2(F.relu(self.l1(e))))
        h = F.relu(self.l3(torch.cat([h, e], dim=-1)))
        return torch.cat([F.relu(self.sigma(h)), torch.sigmoid(self.rgb(h))], dim=-1)


class AttentionWeights(nn.Module):
    """``nn.MultiheadAttention`` called with its defaults (``need_weights=True``): the averaged
    attention map is returned next to the output, as interpretability code does."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.inp, self.attn, self.out = nn.Linear(6, d), nn.MultiheadAttention(d, 2, batch_first=True), nn.Linear(d, 3)

    def forward(self, x):
        h = self.inp(x)
        a, w = self.attn(h, h, h)
        return self.out(a + h), w


class BilinearFusion(nn.Module):
    """Two modalities fused by ``nn.Bilinear`` (x1ᵀ W x2 + b), then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 12), nn.Linear(6, 10)
        self.fuse, self.head = nn.Bilinear(12, 10, 16), nn.Linear(16, 3)

    def forward(self, x1, x2):
        return self.head(F.relu(self.fuse(F.relu(self.a(x1)), F.relu(self.b(x2)))))


class Deformable(nn.Module):
    """A deformable convolution (``torchvision.ops.DeformConv2d``) whose offsets a conv predicts."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import DeformConv2d

        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.offset = nn.Conv2d(8, 2 * 3 * 3, 3, padding=1)
        self.deform = DeformConv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = F.relu(self.deform(h, self.offset(h)))
        return self.head(h.mean((2, 3)))


CASES = {
    "text_classification": ("the PyTorch tutorial's EmbeddingBag(text, offsets) classifier", lambda: (TextClassification(), _bags)),
    "dcgan": ("DCGAN generator: ConvTranspose2d, BatchNorm, tanh", lambda: (DCGANGenerator(), lambda n, g: (torch.randn(n, 16, 1, 1, generator=g),))),
    "diffusion_unet": ("diffusion U-Net: timestep embedding, FiLM, GroupNorm, attention, skip concat",
                       lambda: (DiffusionUNet(), lambda n, g: (_images(n, g), torch.randint(0, 1000, (n,), generator=g)))),
    "pointnet": ("PointNet: T-Net transform by bmm, eye in forward, max over points",
                 lambda: (PointNet(), lambda n, g: (torch.randn(n, 3, 32, generator=g),))),
    "yolo_head": ("YOLO-style decode: meshgrid in forward, sigmoid offsets, anchors, view/permute/cat",
                  lambda: (YoloTiny(), lambda n, g: (_images(n, g, side=32),))),
    "vae": ("VAE: mean in eval, ConvTranspose2d decoder, three outputs", lambda: (VAE(), lambda n, g: (torch.rand(n, 1, 16, 16, generator=g),))),
    "ft_transformer": ("tabular FT-Transformer: elementwise feature weights, offset ids, CLS expand", lambda: (FTTransformer(), _tabular)),
    "crnn_ctc": ("CRNN: convs, squeeze/permute to time, bidirectional LSTM, log_softmax",
                 lambda: (CRNN(), lambda n, g: (torch.randn(n, 1, 16, 24, generator=g),))),
    "nerf": ("NeRF MLP: sin/cos positional encoding, skip concat", lambda: (NeRF(), lambda n, g: (torch.rand(n, 3, generator=g),))),
    "mha_weights": ("nn.MultiheadAttention with need_weights=True, weights returned",
                    lambda: (AttentionWeights(), lambda n, g: (torch.randn(n, 5, 6, generator=g),))),
    "bilinear": ("nn.Bilinear fusion of two inputs", lambda: (BilinearFusion(), lambda n, g: (torch.randn(n, 8, generator=g), torch.randn(n, 6, generator=g)))),
    "deform_conv": ("torchvision.ops.DeformConv2d with predicted offsets", lambda: (Deformable(), lambda n, g: (_images(n, g),))),
}
