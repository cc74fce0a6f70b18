"""Eighth round of user-style models for ``usage_scan.py`` (2026-12-07, sixth session): idioms of research code, written
as papers' reference implementations write them. A 3-D U-Net, a capsule network with dynamic routing, RealNVP
coupling layers returning a log-determinant, a neural ODE integrated by a fixed-step RK4 loop, a hypernetwork
whose generated weights meet the input in ``bmm`` and ``F.linear``, dense graph attention under an adjacency
mask, causal linear attention by ``cumsum``, a GAN discriminator's minibatch standard deviation (batch
statistics in eval), tabular inputs with NaNs for missing values, lazy modules, a forward that counts its
calls in a buffer, MAE random masking by ``argsort`` of a noise input, ``InstanceNorm2d`` with running
statistics, overlapping patches put back by ``nn.Fold``, DGCNN's k-nearest-neighbour edge features,
``torch.distributions`` policy heads, ``EmbeddingBag`` with per-sample weights, SIREN's sine layers, forces as
``-dE/dx`` by ``torch.autograd.grad`` inside ``forward``, an ensemble run by ``torch.func`` ``vmap``, Sinkhorn
iterations in the log domain, and a deep-equilibrium layer that stops iterating at a tolerance.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Normal


def _images(n: int, g: torch.Generator, side: int = 16, channels: int = 3) -> tuple:
    return (torch.randn(n, channels, side, side, generator=g),)


def _tokens(n: int, g: torch.Generator, length: int = 12, vocab: int = 50) -> tuple:
    return (torch.randint(0, vocab, (n, length), generator=g),)


def _trained_norms(m: nn.Module) -> nn.Module:
    """Running statistics and affine terms of every BatchNorm/InstanceNorm away from their initialisation."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.modules.batchnorm._NormBase) and bn.track_running_stats:
                c = bn.num_features
                bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if bn.affine:
                    bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    bn.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return m


class UNet3d(nn.Module):
    """A 3-D U-Net (medical volumes, video clips): Conv3d + BatchNorm3d blocks, MaxPool3d, a ConvTranspose3d
    up-sampling and the skip concatenation."""

    def __init__(self) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv3d(i, o, 3, padding=1, bias=False), nn.BatchNorm3d(o), nn.ReLU(inplace=True),
                                 nn.Conv3d(o, o, 3, padding=1, bias=False), nn.BatchNorm3d(o), nn.ReLU(inplace=True))

        self.enc1, self.enc2 = block(1, 8), block(8, 16)
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ConvTranspose3d(16, 8, kernel_size=2, stride=2)
        self.dec = block(16, 8)
        self.head = nn.Conv3d(8, 3, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        return self.head(self.dec(torch.cat([self.up(e2), e1], dim=1)))


def _squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    n2 = (s ** 2).sum(dim=dim, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)


class CapsuleNet(nn.Module):
    """Sabour et al.'s CapsNet: primary capsules from a strided conv, squashed; every primary capsule
    predicts every class capsule by its own matrix (a broadcast ``matmul`` with a 5-D weight); three
    iterations of dynamic routing (softmax over the routes, agreement added to the logits); the
    lengths of the class capsules are the class scores."""

    def __init__(self, classes: int = 10, routing_iters: int = 3) -> None:
        super().__init__()
        self.iters = routing_iters
        self.conv1 = nn.Conv2d(1, 16, 5)  # 16x16 -> 12x12
        self.primary = nn.Conv2d(16, 8 * 4, 5, stride=2)  # 8 capsule types of dim 4 on a 4x4 grid
        self.route_weights = nn.Parameter(0.1 * torch.randn(1, 8 * 4 * 4, classes, 8, 4))

    def forward(self, x):
        n = x.size(0)
        u = self.primary(F.relu(self.conv1(x)))
        u = _squash(u.view(n, 8, 4, 4, 4).permute(0, 1, 3, 4, 2).reshape(n, -1, 4))  # [n, 128, 4]
        u_hat = torch.matmul(self.route_weights, u[:, :, None, :, None]).squeeze(-1)  # [n, 128, classes, 8]
        b = torch.zeros(n, u_hat.size(1), u_hat.size(2), device=x.device)
        for i in range(self.iters):
            c = F.softmax(b, dim=2)
            v = _squash((c.unsqueeze(-1) * u_hat).sum(dim=1))  # [n, classes, 8]
            if i < self.iters - 1:
                b = b + (u_hat * v.unsqueeze(1)).sum(dim=-1)
        return v.norm(dim=-1)


class AffineCoupling(nn.Module):
    """RealNVP's affine coupling: the masked half conditions a scale (``scale * tanh(s)``, exponentiated) and
    a shift of the other half; the log-determinant is the summed log-scale."""

    def __init__(self, channels: int, mask: torch.Tensor, hidden: int = 16) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(hidden, 2 * channels, 3, padding=1))
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x):
        x_id = x * self.mask
        s, t = self.net(x_id).chunk(2, dim=1)
        s = self.scale * torch.tanh(s) * (1 - self.mask)
        t = t * (1 - self.mask)
        y = x_id + (1 - self.mask) * (x * torch.exp(s) + t)
        return y, s.flatten(1).sum(-1)


class RealNVP(nn.Module):
    """Alternating checkerboard masks, then channel masks (buffers); returns ``(z, sldj)``, the sum of the
    log-determinants, as the reference PyTorch port does (its loss adds the prior outside the model)."""

    def __init__(self, channels: int = 4, side: int = 8) -> None:
        super().__init__()
        ii, jj = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        board = ((ii + jj) % 2).float().view(1, 1, side, side).expand(1, channels, side, side).contiguous()
        chan = (torch.arange(channels) < channels // 2).float().view(1, channels, 1, 1).expand(1, channels, side, side).contiguous()
        self.layers = nn.ModuleList([AffineCoupling(channels, m) for m in (board, 1 - board, chan, 1 - chan)])

    def forward(self, x):
        sldj = torch.zeros(x.size(0), device=x.device)
        for layer in self.layers:
            x, ld = layer(x)
            sldj = sldj + ld
        return x, sldj


class ODEFunc(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(torch.cat([y, t * torch.ones_like(y[:, :1])], dim=1))


class NeuralODE(nn.Module):
    """A neural ODE classifier: an encoder, ``dy/dt = f(t, y)`` integrated from 0 to 1 by four classic RK4
    steps (a fixed Python loop over ``torch.linspace`` times), a decoder."""

    def __init__(self, steps: int = 4) -> None:
        super().__init__()
        self.steps = steps
        self.enc, self.func, self.dec = nn.Linear(6, 8), ODEFunc(), nn.Linear(8, 3)

    def forward(self, x):
        y = self.enc(x)
        ts = torch.linspace(0.0, 1.0, self.steps + 1, device=x.device)
        for i in range(self.steps):
            t0, h = ts[i], ts[i + 1] - ts[i]
            k1 = self.func(t0, y)
            k2 = self.func(t0 + h / 2, y + h / 2 * k1)
            k3 = self.func(t0 + h / 2, y + h / 2 * k2)
            k4 = self.func(t0 + h, y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return self.dec(y)


class HyperNetwork(nn.Module):
    """Two hypernetworks: one maps each sample's context to that sample's weight matrix and bias, applied
    with ``bmm`` (an activation-by-activation product); one maps a learned layer embedding to a shared
    weight matrix used by ``F.linear`` (Ha et al.'s static hypernetwork)."""

    def __init__(self, ctx: int = 6, dim: int = 8, hidden: int = 16, z: int = 4) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.hyper = nn.Sequential(nn.Linear(ctx, 32), nn.ReLU(), nn.Linear(32, hidden * dim + hidden))
        self.layer_z = nn.Parameter(torch.randn(z))
        self.static_hyper = nn.Linear(z, 10 * hidden)
        self.static_bias = nn.Parameter(torch.zeros(10))

    def forward(self, x, context):
        p = self.hyper(context)
        w = p[:, : self.hidden * self.dim].view(-1, self.hidden, self.dim)
        b = p[:, self.hidden * self.dim:]
        h = torch.relu(torch.bmm(w, x.unsqueeze(-1)).squeeze(-1) + b)
        w2 = self.static_hyper(self.layer_z).view(10, self.hidden) / math.sqrt(self.hidden)
        return F.linear(h, w2, self.static_bias)


class DenseGAT(nn.Module):
    """Graph attention on a dense adjacency (pyGAT-style): ``W h``, per-head source and target scores,
    LeakyReLU(0.2), ``masked_fill(adj == 0, -inf)``, softmax over neighbours, then an ELU and a second
    single-head layer averaged into node logits."""

    def __init__(self, features: int = 8, hidden: int = 8, heads: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.heads, self.hidden = heads, hidden
        self.w1 = nn.Linear(features, heads * hidden, bias=False)
        self.a_src, self.a_dst = nn.Parameter(0.3 * torch.randn(heads, hidden)), nn.Parameter(0.3 * torch.randn(heads, hidden))
        self.w2 = nn.Linear(heads * hidden, classes, bias=False)
        self.a2 = nn.Parameter(0.3 * torch.randn(2, classes))

    def forward(self, h, adj):
        n, nodes, _ = h.shape
        wh = self.w1(h).view(n, nodes, self.heads, self.hidden)
        e = F.leaky_relu((wh * self.a_src).sum(-1).unsqueeze(2) + (wh * self.a_dst).sum(-1).unsqueeze(1), 0.2)  # [n, i, j, heads]
        e = e.masked_fill(adj.unsqueeze(-1) == 0, float("-inf"))
        alpha = torch.softmax(e, dim=2)
        h1 = F.elu(torch.einsum("nijh,njhf->nihf", alpha, wh).reshape(n, nodes, -1))
        wh2 = self.w2(h1)
        e2 = F.leaky_relu((wh2 @ self.a2[0]).unsqueeze(2) + (wh2 @ self.a2[1]).unsqueeze(1), 0.2)
        alpha2 = torch.softmax(torch.where(adj > 0, e2, torch.full_like(e2, -9e15)), dim=2)
        return torch.log_softmax(alpha2 @ wh2, dim=-1)


def _graph(n: int, g: torch.Generator, nodes: int = 10) -> tuple:
    a = (torch.rand(n, nodes, nodes, generator=g) < 0.3).float()
    adj = ((a + a.transpose(1, 2) + torch.eye(nodes)) > 0).float()  # symmetric, with self-loops
    return torch.randn(n, nodes, 8, generator=g), adj


class CausalLinearAttention(nn.Module):
    """Katharopoulos et al.'s linear transformer, causal: feature map ``elu(x) + 1``, running sums of
    ``k v^T`` and of ``k`` by ``cumsum`` over time, a normaliser ``1 / (q . sum k)``."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.emb, self.qkv, self.o = nn.Embedding(vocab, dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens):
        x = self.emb(tokens)
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, self.hd).unbind(2)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        kv = torch.einsum("bthd,bthe->bthde", k, v).cumsum(dim=1)
        z = 1.0 / (torch.einsum("bthd,bthd->bth", q, k.cumsum(dim=1)) + 1e-6)
        a = torch.einsum("bthd,bthde->bthe", q, kv) * z.unsqueeze(-1)
        x = x + self.o(a.reshape(b, t, d))
        x = x + self.ff(self.norm2(x))
        return self.out(x)


class MinibatchStdDev(nn.Module):
    """StyleGAN2-ADA's ``MinibatchStdLayer``, verbatim: the standard deviation over groups of samples in the
    batch (``G = min(group_size, N)`` as tensors), appended as a feature map, so each sample's output depends
    on the others in its batch, in eval too."""

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x):
        N, C, H, W = x.shape
        G = torch.min(torch.as_tensor(self.group_size), torch.as_tensor(N)) if self.group_size is not None else N
        F_ = self.num_channels
        c = C // F_
        y = x.reshape(G, -1, F_, c, H, W)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, F_, 1, 1)
        y = y.repeat(G, 1, H, W)
        return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(16, 16, 4, stride=2, padding=1),
                                      nn.LeakyReLU(0.2))
        self.mbstd = MinibatchStdDev()
        self.head = nn.Sequential(nn.Conv2d(17, 16, 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(16 * 8 * 8, 1))

    def forward(self, img):
        return self.head(self.mbstd(self.features(img)))


class MissingValues(nn.Module):
    """Tabular data with NaN for missing values: ``torch.where(isnan)`` imputation by stored medians plus
    missingness indicators, ``clamp`` to per-feature tensor bounds, ``nan_to_num`` on the other columns."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("median", torch.tensor([0.1, -0.2, 0.0, 0.3]))
        self.register_buffer("lo", torch.full((6,), -2.0))
        self.register_buffer("hi", torch.tensor([2.0, 2.0, 1.5, 1.5, 2.5, 2.5]))
        self.mlp = nn.Sequential(nn.Linear(6 + 4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x):
        num, other = x[:, :4], x[:, 4:]
        missing = torch.isnan(num)
        num = torch.where(missing, self.median.expand_as(num), num)
        other = torch.nan_to_num(other, nan=0.0, posinf=3.0, neginf=-3.0)
        feats = torch.clamp(torch.cat([num, other], dim=1), min=self.lo, max=self.hi)
        return self.mlp(torch.cat([feats, missing.float()], dim=1))


def _with_nans(n: int, g: torch.Generator) -> tuple:
    x = torch.randn(n, 6, generator=g)
    return (x.masked_fill(torch.rand(n, 6, generator=g) < 0.2, float("nan")),)


def _lazy():
    """``LazyConv2d``, ``LazyBatchNorm2d`` and ``LazyLinear`` materialised by one forward before quantize."""
    m = nn.Sequential(nn.LazyConv2d(16, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(), nn.MaxPool2d(2),
                      nn.LazyConv2d(16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    with torch.no_grad():
        m.eval()(torch.zeros(1, 3, 16, 16))
    return _trained_norms(m), _images


class CallCounter(nn.Module):
    """A forward that mutates module state: ``self.calls += 1`` on a buffer and an EMA of the feature
    means kept for monitoring (neither changes the output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("feature_mean", torch.zeros(16))

    def forward(self, x):
        self.calls += 1
        f = torch.relu(self.conv2(F.max_pool2d(torch.relu(self.conv1(x)), 2))).mean((2, 3))
        self.feature_mean.mul_(0.99).add_(0.01 * f.detach().mean(0))
        return self.fc(f)


class MaskedAutoencoder(nn.Module):
    """MAE's ``random_masking`` as the reference writes it, with the noise given as an input: ``argsort``
    of the noise, ``ids_restore`` by a second ``argsort``, ``gather`` of the kept patches, a binary mask built
    by slice assignment and unshuffled; the decoder appends mask tokens and unshuffles them by ``gather``."""

    def __init__(self, dim: int = 32, patch: int = 4, mask_ratio: float = 0.75) -> None:
        super().__init__()
        self.mask_ratio = mask_ratio
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 16, dim))
        self.encoder = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.decoder_embed = nn.Linear(dim, dim)
        self.decoder = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.pred = nn.Linear(dim, patch * patch * 3)

    def random_masking(self, x, noise):
        N, L, D = x.shape
        len_keep = int(L * (1 - self.mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward(self, imgs, noise):
        x = self.patch_embed(imgs).flatten(2).transpose(1, 2) + self.pos_embed
        x, mask, ids_restore = self.random_masking(x, noise)
        x = self.decoder_embed(self.encoder(x))
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] - x.shape[1], 1)
        x = torch.cat([x, mask_tokens], dim=1)
        x = torch.gather(x, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        return self.pred(self.decoder(x)), mask


def _image_and_noise(n: int, g: torch.Generator) -> tuple:
    return torch.randn(n, 3, 16, 16, generator=g), torch.rand(n, 16, generator=g)


class TrackedInstanceNorm(nn.Module):
    """A style network whose ``InstanceNorm2d(affine=True, track_running_stats=True)`` uses its running
    statistics in eval (like a BatchNorm), beside GroupNorm and a tanh output."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 16, 5, padding=2), nn.InstanceNorm2d(16, affine=True, track_running_stats=True)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16)
        self.c3, self.n3 = nn.Conv2d(16, 16, 3, padding=1), nn.InstanceNorm2d(16, track_running_stats=True)
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.n1(self.c1(x)))
        h = F.relu(self.n2(self.c2(h)))
        h = h + F.relu(self.n3(self.c3(h)))
        return torch.tanh(self.out(F.relu(self.up(h))))


class FoldReconstruct(nn.Module):
    """Overlapping 4x4 patches (stride 2) by ``nn.Unfold``, a per-patch MLP denoiser, patches put back by
    ``nn.Fold`` (col2im) and divided by the fold of ones (how many patches cover each pixel)."""

    def __init__(self, side: int = 16, k: int = 4, stride: int = 2) -> None:
        super().__init__()
        self.unfold = nn.Unfold(kernel_size=k, stride=stride)
        self.fold = nn.Fold(output_size=side, kernel_size=k, stride=stride)
        d = 3 * k * k
        self.mlp = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, d))

    def forward(self, x):
        patches = self.unfold(x).transpose(1, 2)  # [n, L, 3*k*k]
        patches = patches + self.mlp(patches)
        out = self.fold(patches.transpose(1, 2))
        return out / self.fold(self.unfold(torch.ones_like(x)))


def _knn(x: torch.Tensor, k: int) -> torch.Tensor:
    inner = -2 * torch.matmul(x.transpose(2, 1), x)
    xx = torch.sum(x ** 2, dim=1, keepdim=True)
    pairwise_distance = -xx - inner - xx.transpose(2, 1)
    return pairwise_distance.topk(k=k, dim=-1)[1]  # (batch_size, num_points, k)


def _get_graph_feature(x: torch.Tensor, k: int) -> torch.Tensor:
    batch_size, _, num_points = x.shape
    idx = _knn(x, k)
    idx_base = torch.arange(0, batch_size, device=x.device).view(-1, 1, 1) * num_points
    idx = (idx + idx_base).view(-1)
    x = x.transpose(2, 1).contiguous()
    num_dims = x.size(2)
    feature = x.view(batch_size * num_points, -1)[idx, :].view(batch_size, num_points, k, num_dims)
    x = x.view(batch_size, num_points, 1, num_dims).repeat(1, 1, k, 1)
    return torch.cat((feature - x, x), dim=3).permute(0, 3, 1, 2).contiguous()


class DGCNN(nn.Module):
    """DGCNN's EdgeConv, from the reference code: k nearest neighbours by ``topk`` of negative squared
    distances, a flat index offset by ``arange(batch_size) * num_points``, neighbour features gathered by
    indexing, ``[x_j - x_i, x_i]`` through a Conv2d, max over neighbours; twice, then global max pooling."""

    def __init__(self, k: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.k = k
        self.conv1 = nn.Sequential(nn.Conv2d(6, 16, 1, bias=False), nn.BatchNorm2d(16), nn.LeakyReLU(0.2))
        self.conv2 = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16), nn.LeakyReLU(0.2))
        self.conv3 = nn.Sequential(nn.Conv1d(32, 32, 1, bias=False), nn.BatchNorm1d(32), nn.LeakyReLU(0.2))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x1 = self.conv1(_get_graph_feature(x, self.k)).max(dim=-1, keepdim=False)[0]
        x2 = self.conv2(_get_graph_feature(x1, self.k)).max(dim=-1, keepdim=False)[0]
        x = self.conv3(torch.cat((x1, x2), dim=1))
        return self.fc(F.adaptive_max_pool1d(x, 1).view(x.size(0), -1))


class GaussianPolicy(nn.Module):
    """An RL policy with a continuous and a discrete action head built as ``torch.distributions`` objects
    in eval: ``Normal(mu, log_std.exp())`` gives the deterministic action ``tanh(dist.mean)``, the
    ``log_prob`` of a given action and the entropy; ``Categorical(logits=...)`` its probabilities and the
    log-probability of a given choice."""

    def __init__(self, obs: int = 8, act: int = 2, choices: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.mu, self.logits = nn.Linear(32, act), nn.Linear(32, choices)
        self.log_std = nn.Parameter(torch.full((act,), -0.5))

    def forward(self, obs, action, choice):
        h = self.body(obs)
        dist = Normal(self.mu(h), self.log_std.exp())
        cat = Categorical(logits=self.logits(h))
        return (torch.tanh(dist.mean), dist.log_prob(action).sum(-1), dist.entropy().sum(-1), cat.probs,
                cat.log_prob(choice))


def _obs_actions(n: int, g: torch.Generator) -> tuple:
    return torch.randn(n, 8, generator=g), torch.randn(n, 2, generator=g), torch.randint(0, 4, (n,), generator=g)


class WeightedBag(nn.Module):
    """TF-IDF-weighted bag of words: ``nn.EmbeddingBag(mode="sum")`` on fixed-length 2-D id rows with
    ``per_sample_weights``, then a classifier."""

    def __init__(self, vocab: int = 100, dim: int = 16) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="sum")
        self.fc = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, ids, weights):
        return self.fc(self.bag(ids, per_sample_weights=weights))


def _weighted_ids(n: int, g: torch.Generator) -> tuple:
    w = torch.rand(n, 10, generator=g)
    return torch.randint(0, 100, (n, 10), generator=g), w / w.sum(1, keepdim=True)


class SineLayer(nn.Module):
    """SIREN's layer: ``sin(omega_0 * (W x + b))`` with the paper's uniform initialisation."""

    def __init__(self, i: int, o: int, first: bool = False, omega_0: float = 30.0) -> None:
        super().__init__()
        self.omega_0, self.linear = omega_0, nn.Linear(i, o)
        bound = 1 / i if first else math.sqrt(6 / i) / omega_0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x):
        return torch.sin(self.omega_0 * self.linear(x))


def _siren():
    """An implicit image: pixel coordinates in [-1, 1] to RGB through three sine layers (omega_0 = 30)."""
    m = nn.Sequential(SineLayer(2, 32, first=True), SineLayer(32, 32), SineLayer(32, 32), nn.Linear(32, 3))
    return m, lambda n, g: (torch.rand(n, 64, 2, generator=g) * 2 - 1,)


class EnergyForces(nn.Module):
    """A machine-learned interatomic potential: pairwise distances, a Gaussian radial basis, an MLP per
    pair summed to the energy; the forces are ``-dE/dpos`` by ``torch.autograd.grad`` inside ``forward``
    (under ``torch.enable_grad()``, as SchNet-style code does at inference)."""

    def __init__(self, basis: int = 16, cutoff: float = 3.0) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, basis))
        self.gamma = 10.0 / cutoff
        self.mlp = nn.Sequential(nn.Linear(basis, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1))

    def forward(self, pos):
        with torch.enable_grad():
            if not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
            atoms = pos.shape[1]
            diff = pos.unsqueeze(2) - pos.unsqueeze(1)
            d = torch.sqrt((diff ** 2).sum(-1) + 1e-9)
            rbf = torch.exp(-self.gamma * (d.unsqueeze(-1) - self.centers) ** 2)
            off_diag = 1.0 - torch.eye(atoms, device=pos.device)
            energy = (self.mlp(rbf).squeeze(-1) * off_diag).sum((1, 2))
            forces = -torch.autograd.grad(energy.sum(), pos, create_graph=self.training)[0]
        return energy, forces


class VmapEnsemble(nn.Module):
    """The ensembling tutorial's idiom: ``torch.func.stack_module_state`` of three MLPs, their stacked
    parameters registered on the module, and ``vmap(functional_call)`` over them in ``forward``; the
    members' mean and spread are returned."""

    def __init__(self, members: int = 3) -> None:
        super().__init__()
        nets = [nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)) for _ in range(members)]
        params, _ = torch.func.stack_module_state(nets)
        self.names = list(params)
        for i, v in enumerate(params.values()):
            self.register_parameter(f"p{i}", nn.Parameter(v.detach()))
        self.base = [copy.deepcopy(nets[0]).to("meta")]  # a stateless skeleton, kept out of the module tree

    def forward(self, x):
        params = {k: getattr(self, f"p{i}") for i, k in enumerate(self.names)}

        def one(p, inp):
            return torch.func.functional_call(self.base[0], (p, {}), (inp,))

        out = torch.func.vmap(one, in_dims=(0, None))(params, x)  # [members, n, 4]
        return out.mean(0), out.std(0)


def _log_sinkhorn(scores: torch.Tensor, iters: int) -> torch.Tensor:
    """Sinkhorn normalisation in the log domain with uniform marginals (SuperGlue's ``log_optimal_transport``
    without the dustbin)."""
    m, n = scores.shape[-2:]
    log_mu = torch.full_like(scores[..., 0], -math.log(m))
    log_nu = torch.full_like(scores[..., 0, :], -math.log(n))
    u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
    for _ in range(iters):
        u = log_mu - torch.logsumexp(scores + v.unsqueeze(1), dim=2)
        v = log_nu - torch.logsumexp(scores + u.unsqueeze(2), dim=1)
    return scores + u.unsqueeze(2) + v.unsqueeze(1) + math.log(m)


class SinkhornMatcher(nn.Module):
    """Keypoint matching: two descriptor sets projected, similarity scores scaled by a learned temperature,
    20 Sinkhorn iterations (``logsumexp`` in a Python loop), the assignment's exp and a soft match of B to A."""

    def __init__(self, dim: int = 16, iters: int = 20) -> None:
        super().__init__()
        self.iters = iters
        self.proj = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 32))
        self.log_temp = nn.Parameter(torch.tensor(math.log(0.2)))

    def forward(self, desc_a, desc_b):
        a, b = self.proj(desc_a), self.proj(desc_b)
        scores = torch.einsum("bnd,bmd->bnm", a, b) / (a.shape[-1] ** 0.5 * self.log_temp.exp())
        p = _log_sinkhorn(scores, self.iters).exp()
        return p, p.transpose(1, 2) @ desc_a


def _descriptor_pairs(n: int, g: torch.Generator) -> tuple:
    return torch.randn(n, 6, 16, generator=g), torch.randn(n, 7, 16, generator=g)


class DEQ(nn.Module):
    """A deep-equilibrium layer: ``z = tanh(W z + U x)`` iterated until the relative change falls under a
    tolerance (a data-dependent ``break``, at most 30 steps), then one more step so gradients could flow."""

    def __init__(self, dim: int = 16, tol: float = 1e-4, max_iter: int = 30) -> None:
        super().__init__()
        self.tol, self.max_iter = tol, max_iter
        self.inp = nn.Linear(8, dim)
        self.w = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.w.weight.mul_(0.5)  # a contraction, so the iteration converges
        self.out = nn.Linear(dim, 3)

    def forward(self, x):
        ux = self.inp(x)
        z = torch.zeros_like(ux)
        with torch.no_grad():
            for _ in range(self.max_iter):
                z_next = torch.tanh(self.w(z) + ux)
                if (z_next - z).norm() / (z_next.norm() + 1e-8) < self.tol:
                    z = z_next
                    break
                z = z_next
        z = torch.tanh(self.w(z) + ux)
        return self.out(z)


CASES = {
    "unet3d": ("3-D U-Net: Conv3d, BatchNorm3d, MaxPool3d, ConvTranspose3d, skip concat", lambda: (
        _trained_norms(UNet3d()), lambda n, g: (torch.randn(n, 1, 8, 16, 16, generator=g),))),
    "capsule_routing": ("CapsNet: squash, 5-D weight matmul, 3 dynamic-routing iterations, capsule lengths", lambda: (
        CapsuleNet(), lambda n, g: _images(n, g, channels=1))),
    "realnvp": ("RealNVP: checkerboard/channel mask buffers, exp(scale*tanh(s)), returns (z, summed log-det)", lambda: (
        RealNVP(), lambda n, g: (torch.randn(n, 4, 8, 8, generator=g),))),
    "neural_ode_rk4": ("neural ODE: four RK4 steps over linspace times, t concatenated to the state", lambda: (
        NeuralODE(), lambda n, g: (torch.randn(n, 6, generator=g),))),
    "hypernetwork": ("hypernetworks: per-sample generated weights in bmm, a generated F.linear weight", lambda: (
        HyperNetwork(), lambda n, g: (torch.randn(n, 8, generator=g), torch.randn(n, 6, generator=g)))),
    "gat_dense": ("dense GAT: adjacency input, LeakyReLU scores, masked_fill(-inf)/where softmax, einsum", lambda: (
        DenseGAT(), _graph)),
    "linear_attention": ("causal linear attention: elu+1 features, cumsum of k v^T and of k, normaliser", lambda: (
        CausalLinearAttention(), _tokens)),
    "minibatch_std": ("StyleGAN2 minibatch stddev: G = min(as_tensor(4), as_tensor(N)), batch statistics in eval",
                      lambda: (Discriminator(), _images)),
    "missing_values": ("NaN inputs: isnan + where imputation, nan_to_num, clamp with tensor bounds", lambda: (
        MissingValues(), _with_nans)),
    "lazy_modules": ("LazyConv2d, LazyBatchNorm2d, LazyLinear materialised by one forward", _lazy),
    "call_counter": ("state mutation in forward: self.calls += 1, an EMA buffer updated in place", lambda: (
        CallCounter(), _images)),
    "mae_masking": ("MAE random_masking: argsort of a noise input, gather, slice-assigned mask, mask tokens", lambda: (
        MaskedAutoencoder(), _image_and_noise)),
    "instance_norm_tracked": ("InstanceNorm2d(track_running_stats=True), GroupNorm, ConvTranspose2d, tanh", lambda: (
        _trained_norms(TrackedInstanceNorm()), _images)),
    "fold_overlap": ("nn.Unfold overlapping patches, per-patch MLP, nn.Fold divided by the fold of ones", lambda: (
        FoldReconstruct(), _images)),
    "dgcnn_knn": ("DGCNN EdgeConv: topk kNN, arange(B)*N flat index, x.view(B*N, -1)[idx], max over neighbours", lambda: (
        _trained_norms(DGCNN()), lambda n, g: (torch.randn(n, 3, 32, generator=g),))),
    "distributions_policy": ("torch.distributions Normal(mu, std) mean/log_prob/entropy, Categorical probs/log_prob",
                             lambda: (GaussianPolicy(), _obs_actions)),
    "weighted_bag": ("nn.EmbeddingBag(mode='sum') on 2-D ids with per_sample_weights", lambda: (WeightedBag(), _weighted_ids)),
    "siren": ("SIREN: sin(30 * linear) layers on coordinates", _siren),
    "energy_forces": ("interatomic potential: forces = -autograd.grad(E, pos) inside forward under enable_grad", lambda: (
        EnergyForces(), lambda n, g: (torch.rand(n, 6, 3, generator=g) * 2.5,))),
    "vmap_ensemble": ("torch.func.stack_module_state + vmap(functional_call) ensemble, mean and std", lambda: (
        VmapEnsemble(), lambda n, g: (torch.randn(n, 8, generator=g),))),
    "sinkhorn": ("log-domain Sinkhorn: 20 logsumexp iterations in a Python loop, learned temperature", lambda: (
        SinkhornMatcher(), _descriptor_pairs)),
    "deq_fixed_point": ("deep equilibrium: fixed-point iteration under no_grad with a data-dependent break", lambda: (
        DEQ(), lambda n, g: (torch.randn(n, 8, generator=g),))),
}
