"""Tenth round of user-style models for ``usage_scan.py`` (2026-12-07, seventh session): layers and idioms of
recent architectures, written as their reference code writes them. RWKV-4 time mixing with a ``ZeroPad2d``
token shift and a learned per-channel decay in the numerically stable recurrent WKV form, PatchTST behind
RevIN (per-instance mean/std, patches by ``unfold``, denormalised output), N-BEATS with generic and trend
blocks, DeepFM's factorisation-machine interaction over ``nn.Embedding`` fields, ToMe bipartite soft matching
in a tiny ViT (``argsort``, ``gather``, ``scatter_reduce(mean)``), CondConv's per-sample expert kernels run as
one grouped ``conv2d`` over the batch, BiT's weight-standardised ``StdConv2d`` with GroupNorm, ShuffleNetV2's
channel split and shuffle, DeepLabV3's ASPP with an image-pooling branch, SAM's random Fourier positional
encoding feeding a two-way attention block, DINO's ``interpolate_pos_encoding`` (bicubic, ``scale_factor``
with the +0.1 trick), an RNN-T joiner (broadcast add of encoder and predictor), an
``nn.AdaptiveLogSoftmaxWithLoss.log_prob`` language-model head, EfficientDet's BiFPN fast normalised fusion,
an FNO spectral convolution on ``torch.cfloat`` weights, Informer's ProbSparse attention, involution kernels
applied through ``unfold``, and ECA-Net's 1-D convolution across channels.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.usage_models_research import _images, _trained_norms


# --- RWKV-4 ----------------------------------------------------------------------------------------------------
class RWKVTimeMix(nn.Module):
    """RWKV-4's ``RWKV_TimeMix``: token shift by ``nn.ZeroPad2d((0, 0, 1, -1))``, learned mixing ratios for
    k, v, r, and the WKV recurrence with ``w = -exp(time_decay)`` and the bonus ``time_first`` in the
    numerically stable form of the reference's RNN mode (a running maximum ``p`` of the exponents)."""

    def __init__(self, d: int, layer_id: int, n_layer: int) -> None:
        super().__init__()
        ratio_0_to_1 = layer_id / (n_layer - 1)
        ratio_1_to_almost0 = 1.0 - (layer_id / n_layer)
        decay_speed = torch.ones(d)
        for h in range(d):
            decay_speed[h] = -5 + 8 * (h / (d - 1)) ** (0.7 + 1.3 * ratio_0_to_1)
        self.time_decay = nn.Parameter(decay_speed)
        zigzag = torch.tensor([(i + 1) % 3 - 1 for i in range(d)]) * 0.5
        self.time_first = nn.Parameter(torch.ones(d) * math.log(0.3) + zigzag)
        x = torch.ones(1, 1, d)
        for i in range(d):
            x[0, 0, i] = i / d
        self.time_mix_k = nn.Parameter(torch.pow(x, ratio_1_to_almost0))
        self.time_mix_v = nn.Parameter(torch.pow(x, ratio_1_to_almost0) + 0.3 * ratio_0_to_1)
        self.time_mix_r = nn.Parameter(torch.pow(x, 0.5 * ratio_1_to_almost0))
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)

    def forward(self, x):
        B, T, C = x.size()
        xx = self.time_shift(x)
        xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
        xv = x * self.time_mix_v + xx * (1 - self.time_mix_v)
        xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
        k, v = self.key(xk), self.value(xv)
        sr = torch.sigmoid(self.receptance(xr))
        w = -torch.exp(self.time_decay)
        u = self.time_first
        aa = torch.zeros(B, C, dtype=x.dtype)
        bb = torch.zeros(B, C, dtype=x.dtype)
        pp = torch.full((B, C), -1e38, dtype=x.dtype)
        wkv = []
        for t in range(T):
            kk, vv = k[:, t], v[:, t]
            ww = u + kk
            p = torch.maximum(pp, ww)
            e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
            wkv.append((e1 * aa + e2 * vv) / (e1 * bb + e2))
            ww = pp + w
            p = torch.maximum(ww, kk)
            e1, e2 = torch.exp(ww - p), torch.exp(kk - p)
            aa = e1 * aa + e2 * vv
            bb = e1 * bb + e2
            pp = p
        return self.output(sr * torch.stack(wkv, dim=1))


class RWKVChannelMix(nn.Module):
    def __init__(self, d: int, layer_id: int, n_layer: int) -> None:
        super().__init__()
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
        ratio_1_to_almost0 = 1.0 - (layer_id / n_layer)
        x = torch.arange(d, dtype=torch.float).view(1, 1, d) / d
        self.time_mix_k = nn.Parameter(torch.pow(x, ratio_1_to_almost0))
        self.time_mix_r = nn.Parameter(torch.pow(x, ratio_1_to_almost0))
        self.key = nn.Linear(d, 4 * d, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        xx = self.time_shift(x)
        xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
        xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
        k = torch.square(torch.relu(self.key(xk)))
        return torch.sigmoid(self.receptance(xr)) * self.value(k)


class RWKV(nn.Module):
    """Token embedding, ``ln0``, two RWKV-4 blocks (pre-LayerNorm time mix and channel mix), output head."""

    def __init__(self, vocab: int = 60, d: int = 32, n_layer: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln0 = nn.LayerNorm(d)
        self.blocks = nn.ModuleList()
        for i in range(n_layer):
            self.blocks.append(nn.ModuleDict(dict(ln1=nn.LayerNorm(d), att=RWKVTimeMix(d, i, n_layer), ln2=nn.LayerNorm(d),
                                                  ffn=RWKVChannelMix(d, i, n_layer))))
        self.ln_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.ln0(self.emb(idx))
        for b in self.blocks:
            x = x + b["att"](b["ln1"](x))
            x = x + b["ffn"](b["ln2"](x))
        return self.head(self.ln_out(x))


# --- PatchTST with RevIN ----------------------------------------------------------------------------------------
class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al.), as PatchTST's ``layers/RevIN.py`` writes it."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps, self.affine = num_features, eps, affine
        if self.affine:
            self.affine_weight = nn.Parameter(torch.ones(num_features) * 1.2)
            self.affine_bias = nn.Parameter(torch.full((num_features,), 0.1))

    def forward(self, x, mode: str):
        if mode == "norm":
            self._get_statistics(x)
            x = self._normalize(x)
        elif mode == "denorm":
            x = self._denormalize(x)
        else:
            raise NotImplementedError
        return x

    def _get_statistics(self, x):
        dim2reduce = tuple(range(1, x.ndim - 1))
        self.mean = torch.mean(x, dim=dim2reduce, keepdim=True).detach()
        self.stdev = torch.sqrt(torch.var(x, dim=dim2reduce, keepdim=True, unbiased=False) + self.eps).detach()

    def _normalize(self, x):
        x = x - self.mean
        x = x / self.stdev
        if self.affine:
            x = x * self.affine_weight
            x = x + self.affine_bias
        return x

    def _denormalize(self, x):
        if self.affine:
            x = x - self.affine_bias
            x = x / (self.affine_weight + self.eps * self.eps)
        x = x * self.stdev
        x = x + self.mean
        return x


class PatchTST(nn.Module):
    """PatchTST (supervised): RevIN, channel independence, end padding by ``nn.ReplicationPad1d((0, stride))``,
    patches by ``unfold(dimension=-1, size=patch_len, step=stride)``, a linear patch embedding plus a learned
    position table, two encoder layers with BatchNorm over ``Transpose``, the flatten head, denormalisation."""

    def __init__(self, c_in: int = 3, context: int = 32, target: int = 8, patch_len: int = 8, stride: int = 4, d: int = 32) -> None:
        super().__init__()
        self.revin = RevIN(c_in)
        self.patch_len, self.stride = patch_len, stride
        self.padding_patch_layer = nn.ReplicationPad1d((0, stride))
        patch_num = (context - patch_len) // stride + 1 + 1
        self.W_P = nn.Linear(patch_len, d)
        self.W_pos = nn.Parameter(torch.empty(patch_num, d).uniform_(-0.02, 0.02))
        self.layers = nn.ModuleList()
        for _ in range(2):
            self.layers.append(nn.ModuleDict(dict(
                attn=nn.MultiheadAttention(d, 4, batch_first=True), norm_attn=nn.BatchNorm1d(d),
                ff=nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)), norm_ffn=nn.BatchNorm1d(d))))
        self.flatten = nn.Flatten(start_dim=-2)
        self.linear = nn.Linear(d * patch_num, target)

    def forward(self, z):  # z: [bs, seq_len, nvars]
        z = self.revin(z, "norm")
        z = z.permute(0, 2, 1)
        z = self.padding_patch_layer(z)
        z = z.unfold(dimension=-1, size=self.patch_len, step=self.stride)  # [bs, nvars, patch_num, patch_len]
        bs, n_vars = z.shape[0], z.shape[1]
        u = self.W_P(z)
        u = torch.reshape(u, (u.shape[0] * u.shape[1], u.shape[2], u.shape[3])) + self.W_pos
        for layer in self.layers:
            u = u + layer["attn"](u, u, u, need_weights=False)[0]
            u = layer["norm_attn"](u.transpose(1, 2)).transpose(1, 2)
            u = u + layer["ff"](u)
            u = layer["norm_ffn"](u.transpose(1, 2)).transpose(1, 2)
        u = torch.reshape(u, (bs, n_vars, u.shape[-2], u.shape[-1])).permute(0, 1, 3, 2)  # [bs, nvars, d_model, patch_num]
        z = self.linear(self.flatten(u))  # [bs, nvars, target]
        z = z.permute(0, 2, 1)
        return self.revin(z, "denorm")


def _series(n: int, g: torch.Generator) -> tuple:
    t = torch.arange(32, dtype=torch.float)[None, :, None]
    level = torch.randn(n, 1, 3, generator=g) * 5
    return (level + torch.sin(t / 3 + torch.rand(n, 1, 3, generator=g) * 6) * 2 + 0.3 * torch.randn(n, 32, 3, generator=g),)


# --- N-BEATS ----------------------------------------------------------------------------------------------------
class NBeatsBlock(nn.Module):
    """A fully-connected stack, then ``theta`` projected onto a backcast and a forecast basis: generic
    (learned linear bases) or trend (a fixed polynomial basis in a buffer, ``theta @ T``)."""

    def __init__(self, kind: str, backcast: int, forecast: int, units: int = 64, degree: int = 3) -> None:
        super().__init__()
        self.kind = kind
        self.fc = nn.Sequential(nn.Linear(backcast, units), nn.ReLU(), nn.Linear(units, units), nn.ReLU(),
                                nn.Linear(units, units), nn.ReLU())
        if kind == "generic":
            self.theta_b_fc, self.theta_f_fc = nn.Linear(units, units // 4), nn.Linear(units, units // 4)
            self.backcast_fc, self.forecast_fc = nn.Linear(units // 4, backcast), nn.Linear(units // 4, forecast)
        else:
            self.theta_b_fc = nn.Linear(units, degree + 1, bias=False)
            self.theta_f_fc = nn.Linear(units, degree + 1, bias=False)
            tb, tf = np.arange(backcast) / backcast, np.arange(forecast) / forecast
            self.register_buffer("T_backcast", torch.tensor(np.array([tb ** i for i in range(degree + 1)]), dtype=torch.float32))
            self.register_buffer("T_forecast", torch.tensor(np.array([tf ** i for i in range(degree + 1)]), dtype=torch.float32))

    def forward(self, x):
        x = self.fc(x)
        if self.kind == "generic":
            return self.backcast_fc(F.relu(self.theta_b_fc(x))), self.forecast_fc(F.relu(self.theta_f_fc(x)))
        return self.theta_b_fc(x).mm(self.T_backcast), self.theta_f_fc(x).mm(self.T_forecast)


class NBeats(nn.Module):
    """A trend stack and a generic stack: each block's backcast subtracted from the residual, its forecast
    added to the running forecast (``forecast = forecast + f``), as ``nbeats_pytorch`` writes it."""

    def __init__(self, backcast: int = 24, forecast: int = 8) -> None:
        super().__init__()
        self.stacks = nn.ModuleList([nn.ModuleList([NBeatsBlock("trend", backcast, forecast) for _ in range(2)]),
                                     nn.ModuleList([NBeatsBlock("generic", backcast, forecast) for _ in range(2)])])
        self.forecast_length = forecast

    def forward(self, backcast):
        forecast = torch.zeros(size=(backcast.size()[0], self.forecast_length))
        for stack in self.stacks:
            for block in stack:
                b, f = block(backcast)
                backcast = backcast - b
                forecast = forecast + f
        return backcast, forecast


# --- DeepFM -----------------------------------------------------------------------------------------------------
class DeepFM(nn.Module):
    """pytorch-fm's DeepFM: one id per field shifted by per-field offsets (a buffer), a first-order
    ``FeaturesLinear`` (an ``nn.Embedding`` of width 1 plus a bias), the FM term
    ``0.5 * (square_of_sum - sum_of_square)`` over the field embeddings, and an MLP with BatchNorm1d on the
    flattened embeddings; the sum through a sigmoid."""

    def __init__(self, field_dims: tuple[int, ...] = (10, 7, 20, 5, 12, 3), embed_dim: int = 8) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.tensor((0, *np.cumsum(field_dims)[:-1]), dtype=torch.long))
        self.fc = nn.Embedding(sum(field_dims), 1)
        self.bias = nn.Parameter(torch.zeros((1,)))
        self.embedding = nn.Embedding(sum(field_dims), embed_dim)
        nn.init.xavier_uniform_(self.embedding.weight.data)
        self.embed_output_dim = len(field_dims) * embed_dim
        self.mlp = nn.Sequential(nn.Linear(self.embed_output_dim, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x):
        x = x + self.offsets.unsqueeze(0)
        embed_x = self.embedding(x)
        linear = torch.sum(self.fc(x), dim=1) + self.bias
        square_of_sum = torch.sum(embed_x, dim=1) ** 2
        sum_of_square = torch.sum(embed_x ** 2, dim=1)
        fm = 0.5 * torch.sum(square_of_sum - sum_of_square, dim=1, keepdim=True)
        x = linear + fm + self.mlp(embed_x.view(-1, self.embed_output_dim))
        return torch.sigmoid(x.squeeze(1))


def _fields(n: int, g: torch.Generator) -> tuple:
    return (torch.stack([torch.randint(0, d, (n,), generator=g) for d in (10, 7, 20, 5, 12, 3)], dim=1),)


# --- ToMe -------------------------------------------------------------------------------------------------------
def bipartite_soft_matching(metric: torch.Tensor, r: int, class_token: bool = False):
    """ToMe's ``bipartite_soft_matching`` (facebookresearch/ToMe, ``tome/merge.py``)."""
    protected = 1 if class_token else 0
    t = metric.shape[1]
    r = min(r, (t - protected) // 2)
    if r <= 0:
        return lambda x, mode="mean": x
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        if class_token:
            scores[..., 0, :] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]  # unmerged tokens
        src_idx = edge_idx[..., :r, :]  # merged tokens
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
        if class_token:
            unm_idx = unm_idx.sort(dim=1)[0]  # the class token stays first

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    return merge


class ToMeBlock(nn.Module):
    """A timm ViT block patched as ToMe patches it: attention returns the keys' mean over heads as the
    matching metric, ``r`` tokens are merged between attention and MLP."""

    def __init__(self, d: int, heads: int, r: int) -> None:
        super().__init__()
        self.heads, self.r, self.scale = heads, r, (d // heads) ** -0.5
        self.norm1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm2, self.mlp = nn.LayerNorm(d), nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def attn(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x), k.mean(1)

    def forward(self, x):
        x_attn, metric = self.attn(self.norm1(x))
        x = x + x_attn
        merge = bipartite_soft_matching(metric, self.r, class_token=True)
        x = merge(x, mode="mean")
        return x + self.mlp(self.norm2(x))


class ToMeViT(nn.Module):
    def __init__(self, d: int = 32, r: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, 4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, d) * 0.02)
        self.blocks = nn.ModuleList([ToMeBlock(d, 4, r) for _ in range(3)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 5)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


# --- CondConv ---------------------------------------------------------------------------------------------------
class CondConv2d(nn.Module):
    """timm's ``CondConv2d``: routing weights per sample mix ``num_experts`` kernels, the batch folded into
    the channels and run as one grouped convolution (``groups = B``)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1, num_experts: int = 4) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size, self.stride = c_in, c_out, k, stride
        self.padding, self.num_experts = k // 2, num_experts
        self.weight_shape = (c_out, c_in, k, k)
        self.weight = nn.Parameter(torch.randn(num_experts, c_out * c_in * k * k) / math.sqrt(c_in * k * k))
        self.bias = nn.Parameter(torch.randn(num_experts, c_out) * 0.1)

    def forward(self, x, routing_weights):
        B, C, H, W = x.shape
        weight = torch.matmul(routing_weights, self.weight)
        new_weight_shape = (B * self.out_channels, self.in_channels) + (self.kernel_size, self.kernel_size)
        weight = weight.view(new_weight_shape)
        bias = torch.matmul(routing_weights, self.bias).view(B * self.out_channels)
        x = x.reshape(1, B * C, H, W)
        out = F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding, groups=B)
        return out.permute([1, 0, 2, 3]).view(B, self.out_channels, out.shape[-2], out.shape[-1])


class CondConvNet(nn.Module):
    """EfficientNet-CondConv style: routing from ``sigmoid(linear(avg_pool(x)))``, two CondConv layers with
    BatchNorm and SiLU, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.route1, self.cc1, self.bn1 = nn.Linear(16, 4), CondConv2d(16, 24), nn.BatchNorm2d(24)
        self.route2, self.cc2, self.bn2 = nn.Linear(24, 4), CondConv2d(24, 24, stride=2), nn.BatchNorm2d(24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = self.stem(x)
        r = torch.sigmoid(self.route1(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        x = F.silu(self.bn1(self.cc1(x, r)))
        r = torch.sigmoid(self.route2(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        x = F.silu(self.bn2(self.cc2(x, r)))
        return self.head(x.mean((2, 3)))


# --- BiT StdConv2d ----------------------------------------------------------------------------------------------
class StdConv2d(nn.Conv2d):
    """Big Transfer's weight-standardised convolution (``google-research/big_transfer``, PyTorch port)."""

    def forward(self, x):
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) / torch.sqrt(v + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PreActBottleneck(nn.Module):
    """BiT's pre-activation bottleneck: GroupNorm + ReLU before every StdConv2d, a projection shortcut from
    the pre-activated input."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.gn1, self.conv1 = nn.GroupNorm(4, cin), StdConv2d(cin, cmid, 1, bias=False)
        self.gn2, self.conv2 = nn.GroupNorm(4, cmid), StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3, self.conv3 = nn.GroupNorm(4, cmid), StdConv2d(cmid, cout, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        out = self.relu(self.gn1(x))
        residual = x
        if hasattr(self, "downsample"):
            residual = self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.gn2(out)))
        out = self.conv3(self.relu(self.gn3(out)))
        return out + residual


class BiT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.root = nn.Sequential(StdConv2d(3, 16, 3, stride=1, padding=1, bias=False), nn.ConstantPad2d(1, 0), nn.MaxPool2d(3, 2))
        self.body = nn.Sequential(PreActBottleneck(16, 32, 8), PreActBottleneck(32, 32, 8), PreActBottleneck(32, 64, 16, 2))
        self.head = nn.Sequential(nn.GroupNorm(8, 64), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Conv2d(64, 5, 1))

    def forward(self, x):
        return self.head(self.body(self.root(x)))[..., 0, 0]


# --- ShuffleNetV2 -----------------------------------------------------------------------------------------------
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class InvertedResidual(nn.Module):
    """torchvision's ShuffleNetV2 unit: ``x.chunk(2, dim=1)`` at stride 1, both branches at stride 2, concat,
    channel shuffle."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if self.stride > 1:
            self.branch1 = nn.Sequential(nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                                         nn.Conv2d(inp, branch_features, 1, bias=False), nn.BatchNorm2d(branch_features),
                                         nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if self.stride > 1 else branch_features, branch_features, 1, bias=False), nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch_features, branch_features, 3, stride, 1, groups=branch_features, bias=False), nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, bias=False), nn.BatchNorm2d(branch_features), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.stage2 = nn.Sequential(InvertedResidual(16, 32, 2), InvertedResidual(32, 32, 1), InvertedResidual(32, 32, 1))
        self.stage3 = nn.Sequential(InvertedResidual(32, 48, 2), InvertedResidual(48, 48, 1))
        self.conv5 = nn.Sequential(nn.Conv2d(48, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        x = self.conv5(self.stage3(self.stage2(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


# --- DeepLabV3 ASPP ---------------------------------------------------------------------------------------------
class ASPPPooling(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """torchvision's ASPP: a 1x1 branch, three dilated 3x3 branches, the image-pooling branch, concat, project."""

    def __init__(self, in_channels: int, atrous_rates: tuple[int, ...], out_channels: int = 32) -> None:
        super().__init__()
        modules = [nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())]
        for rate in atrous_rates:
            modules.append(nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False),
                                         nn.BatchNorm2d(out_channels), nn.ReLU()))
        modules.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(modules)
        self.project = nn.Sequential(nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
                                     nn.BatchNorm2d(out_channels), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3(nn.Module):
    """A stride-4 backbone, ASPP with rates (2, 4, 6), a classifier, logits upsampled to the input's size
    (``F.interpolate(size=input_shape, mode="bilinear")``), returned as ``{"out": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.Conv2d(32, 32, 3, 1, 2, dilation=2, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.classifier = nn.Sequential(ASPP(32, (2, 4, 6)), nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                        nn.ReLU(), nn.Conv2d(32, 6, 1))

    def forward(self, x):
        input_shape = x.shape[-2:]
        x = self.classifier(self.backbone(x))
        return {"out": F.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)}


# --- SAM --------------------------------------------------------------------------------------------------------
class PositionEmbeddingRandom(nn.Module):
    """segment-anything's random spatial-frequency positional encoding."""

    def __init__(self, num_pos_feats: int = 16, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * np.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = grid.cumsum(dim=0) - 0.5
        x_embed = grid.cumsum(dim=1) - 0.5
        y_embed = y_embed / h
        x_embed = x_embed / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)  # C x H x W

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        coords = coords_input.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(torch.float))


class SamAttention(nn.Module):
    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x, num_heads: int):
        b, n, c = x.shape
        x = x.reshape(b, n, num_heads, c // num_heads)
        return x.transpose(1, 2)

    def _recombine_heads(self, x):
        b, n_heads, n_tokens, c_per_head = x.shape
        x = x.transpose(1, 2)
        return x.reshape(b, n_tokens, n_heads * c_per_head)

    def forward(self, q, k, v):
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        _, _, _, c_per_head = q.shape
        attn = q @ k.permute(0, 1, 3, 2)
        attn = attn / math.sqrt(c_per_head)
        attn = torch.softmax(attn, dim=-1)
        return self.out_proj(self._recombine_heads(attn @ v))


class TwoWayAttentionBlock(nn.Module):
    def __init__(self, d: int, heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = SamAttention(d, heads)
        self.norm1 = nn.LayerNorm(d)
        self.cross_attn_token_to_image = SamAttention(d, heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, d))
        self.norm3 = nn.LayerNorm(d)
        self.norm4 = nn.LayerNorm(d)
        self.cross_attn_image_to_token = SamAttention(d, heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = self.norm1(queries + self.self_attn(q=q, k=q, v=queries))
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class SamPromptDecoder(nn.Module):
    """SAM's prompt path in miniature: point coordinates (pixels) encoded by ``forward_with_coords`` plus a
    label embedding, a learned output token, the dense image PE from the cumsum grid, two two-way blocks,
    a final token-to-image attention, a mask as ``hyper_in @ upscaled`` and an IoU head."""

    def __init__(self, d: int = 32, image_size: int = 64) -> None:
        super().__init__()
        self.image_size = (image_size, image_size)
        self.pe_layer = PositionEmbeddingRandom(d // 2)
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, d) for _ in range(2)])
        self.iou_token, self.mask_token = nn.Embedding(1, d), nn.Embedding(1, d)
        self.layers = nn.ModuleList([TwoWayAttentionBlock(d, 4, 64, skip_first_layer_pe=(i == 0)) for i in range(2)])
        self.final_attn_token_to_image = SamAttention(d, 4, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(d)
        self.output_upscaling = nn.Sequential(nn.ConvTranspose2d(d, d // 4, 2, 2), nn.GELU())
        self.hyper = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d // 4))
        self.iou_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))

    def forward(self, image_embedding, points, labels):
        bs, c, h, w = image_embedding.shape
        point_embedding = self.pe_layer.forward_with_coords(points + 0.5, self.image_size)
        point_embedding = point_embedding + torch.where(labels[..., None] == 1, self.point_embeddings[1].weight,
                                                        self.point_embeddings[0].weight)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_token.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(bs, -1, -1)
        tokens = torch.cat((output_tokens, point_embedding), dim=1)
        image_pe = self.pe_layer((h, w)).unsqueeze(0)
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        src = keys.transpose(1, 2).view(bs, c, h, w)
        upscaled = self.output_upscaling(src)
        b, c2, h2, w2 = upscaled.shape
        masks = (self.hyper(queries[:, 1, :]).unsqueeze(1) @ upscaled.view(b, c2, h2 * w2)).view(b, -1, h2, w2)
        return masks, self.iou_head(queries[:, 0, :])


def _sam_inputs(n: int, g: torch.Generator) -> tuple:
    return (torch.randn(n, 32, 8, 8, generator=g), torch.rand(n, 3, 2, generator=g) * 63,
            torch.randint(0, 2, (n, 3), generator=g))


# --- ViT interpolate_pos_encoding -------------------------------------------------------------------------------
class DinoViT(nn.Module):
    """DINO's ``VisionTransformer.prepare_tokens``: a position table for 16x16 images (4x4 patches) resized
    by ``interpolate_pos_encoding`` (bicubic, ``scale_factor`` with the +0.1 trick, the assert on the
    result's size) for the 24x24 images it is fed, then two pre-norm encoder layers and the class token."""

    def __init__(self, d: int = 32, patch: int = 4, table_side: int = 4) -> None:
        super().__init__()
        self.patch_size = patch
        self.patch_embed = nn.Conv2d(3, d, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, table_side * table_side + 1, d) * 0.2)
        self.blocks = nn.ModuleList([nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, activation="gelu", batch_first=True,
                                                                norm_first=True) for _ in range(2)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 5)

    def interpolate_pos_encoding(self, x, w, h):
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        class_pos_embed = self.pos_embed[:, 0]
        patch_pos_embed = self.pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = w // self.patch_size
        h0 = h // self.patch_size
        w0, h0 = w0 + 0.1, h0 + 0.1  # avoid floating point error in the interpolation
        patch_pos_embed = nn.functional.interpolate(
            patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
        assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)

    def prepare_tokens(self, x):
        B, nc, w, h = x.shape
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, w, h)

    def forward(self, x):
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


# --- RNN-T joiner -----------------------------------------------------------------------------------------------
class RNNT(nn.Module):
    """torchaudio's RNN-T shape: a stacked-frames transcriber (time reduction by reshape, linears), an
    LSTM predictor over label ids, and the joiner ``tanh(enc[:, :, None] + pred[:, None])`` then a linear,
    log-softmaxed over the vocabulary: ``[B, T, U, V]``."""

    def __init__(self, feats: int = 16, h: int = 32, vocab: int = 20, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride
        self.input_linear = nn.Linear(feats * stride, h)
        self.transcriber = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
        self.embedding = nn.Embedding(vocab, h)
        self.lstm = nn.LSTM(h, h, batch_first=True)
        self.pred_norm = nn.LayerNorm(h)
        self.linear = nn.Linear(h, vocab)

    def forward(self, features, targets):
        B, T, F_ = features.shape
        x = features.reshape(B, T // self.stride, F_ * self.stride)  # _TimeReduction
        source_encodings = self.transcriber(self.input_linear(x))
        target_encodings = self.pred_norm(self.lstm(self.embedding(targets))[0])
        joint_encodings = source_encodings.unsqueeze(2).contiguous() + target_encodings.unsqueeze(1).contiguous()
        output = self.linear(torch.tanh(joint_encodings))
        return torch.log_softmax(output, dim=-1)


def _speech_labels(n: int, g: torch.Generator) -> tuple:
    return torch.randn(n, 12, 16, generator=g), torch.randint(0, 20, (n, 5), generator=g)


# --- adaptive softmax -------------------------------------------------------------------------------------------
class AdaptiveSoftmaxLM(nn.Module):
    """A word LM whose output layer is ``nn.AdaptiveLogSoftmaxWithLoss`` (cutoffs [20, 60], div_value 2):
    ``log_prob`` of the flattened hidden states, reshaped back to ``[B, T, V]``."""

    def __init__(self, vocab: int = 120, d: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.conv = nn.Conv1d(d, d, 3, padding=2)
        self.ff = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU())
        self.crit = nn.AdaptiveLogSoftmaxWithLoss(d, vocab, cutoffs=[20, 60], div_value=2.0)

    def forward(self, ids):
        B, T = ids.shape
        h = self.conv(self.emb(ids).transpose(1, 2))[..., :T].transpose(1, 2)  # causal by trimming
        h = self.ff(torch.relu(h))
        return self.crit.log_prob(h.reshape(B * T, -1)).view(B, T, -1)


# --- BiFPN ------------------------------------------------------------------------------------------------------
class SeparableConvBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.depthwise_conv = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.pointwise_conv = nn.Conv2d(c, c, 1)
        self.bn = nn.BatchNorm2d(c, momentum=0.01, eps=1e-3)

    def forward(self, x):
        return self.bn(self.pointwise_conv(self.depthwise_conv(x)))


class BiFPN(nn.Module):
    """Yet-Another-EfficientDet-Pytorch's BiFPN layer on three levels, fast normalised fusion: each weight
    vector through ``nn.ReLU``, divided by ``torch.sum(w, dim=0) + epsilon``, a weighted sum of the inputs
    (nearest ``Upsample`` top-down, ``MaxPool2d(3, 2)`` bottom-up), swish, a separable conv."""

    def __init__(self, c: int = 16, epsilon: float = 1e-4) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.conv4_up, self.conv3_up = SeparableConvBlock(c), SeparableConvBlock(c)
        self.conv4_down, self.conv5_down = SeparableConvBlock(c), SeparableConvBlock(c)
        self.p4_upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.p3_upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.p4_downsample = nn.MaxPool2d(3, 2, 1)
        self.p5_downsample = nn.MaxPool2d(3, 2, 1)
        self.p4_w1 = nn.Parameter(torch.tensor([1.0, 0.5]))
        self.p3_w1 = nn.Parameter(torch.tensor([0.8, 1.3]))
        self.p4_w2 = nn.Parameter(torch.tensor([1.0, 0.2, 0.7]))
        self.p5_w2 = nn.Parameter(torch.tensor([0.6, 1.1]))
        self.p4_w1_relu, self.p3_w1_relu, self.p4_w2_relu, self.p5_w2_relu = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.swish = nn.SiLU()

    def forward(self, inputs):
        p3_in, p4_in, p5_in = inputs
        p4_w1 = self.p4_w1_relu(self.p4_w1)
        weight = p4_w1 / (torch.sum(p4_w1, dim=0) + self.epsilon)
        p4_up = self.conv4_up(self.swish(weight[0] * p4_in + weight[1] * self.p4_upsample(p5_in)))
        p3_w1 = self.p3_w1_relu(self.p3_w1)
        weight = p3_w1 / (torch.sum(p3_w1, dim=0) + self.epsilon)
        p3_out = self.conv3_up(self.swish(weight[0] * p3_in + weight[1] * self.p3_upsample(p4_up)))
        p4_w2 = self.p4_w2_relu(self.p4_w2)
        weight = p4_w2 / (torch.sum(p4_w2, dim=0) + self.epsilon)
        p4_out = self.conv4_down(self.swish(weight[0] * p4_in + weight[1] * p4_up + weight[2] * self.p4_downsample(p3_out)))
        p5_w2 = self.p5_w2_relu(self.p5_w2)
        weight = p5_w2 / (torch.sum(p5_w2, dim=0) + self.epsilon)
        p5_out = self.conv5_down(self.swish(weight[0] * p5_in + weight[1] * self.p5_downsample(p4_out)))
        return p3_out, p4_out, p5_out


class EfficientDetNeck(nn.Module):
    """A three-level backbone, 1x1 channel adapters, two BiFPN layers, a shared class head per level;
    returns the per-level logits concatenated over anchors."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()

        def down(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.SiLU())

        self.s1, self.s2, self.s3, self.s4 = down(3, 8), down(8, 16), down(16, 24), down(24, 32)
        self.adapt = nn.ModuleList([nn.Conv2d(k, c, 1) for k in (16, 24, 32)])
        self.bifpn = nn.Sequential(BiFPN(c), BiFPN(c))
        self.cls = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        c2 = self.s2(self.s1(x))
        c3 = self.s3(c2)
        c4 = self.s4(c3)
        feats = self.bifpn([a(f) for a, f in zip(self.adapt, (c2, c3, c4))])
        return torch.cat([self.cls(f).flatten(2) for f in feats], dim=2).transpose(1, 2)


# --- FNO --------------------------------------------------------------------------------------------------------
class SpectralConv2d(nn.Module):
    """The FNO reference's ``SpectralConv2d``: ``rfft2``, the lowest modes (both the top and bottom rows of
    the half spectrum) multiplied by ``torch.cfloat`` weights in ``einsum('bixy,ioxy->boxy')``, written
    into a zero spectrum by slice assignment, ``irfft2`` back to the grid."""

    def __init__(self, in_channels: int, out_channels: int, modes1: int, modes2: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.modes1, self.modes2 = in_channels, out_channels, modes1, modes2
        self.scale = 1 / (in_channels * out_channels)
        self.weights1 = nn.Parameter(self.scale * torch.rand(in_channels, out_channels, self.modes1, self.modes2, dtype=torch.cfloat))
        self.weights2 = nn.Parameter(self.scale * torch.rand(in_channels, out_channels, self.modes1, self.modes2, dtype=torch.cfloat))

    def compl_mul2d(self, input, weights):
        return torch.einsum("bixy,ioxy->boxy", input, weights)

    def forward(self, x):
        batchsize = x.shape[0]
        x_ft = torch.fft.rfft2(x)
        out_ft = torch.zeros(batchsize, self.out_channels, x.size(-2), x.size(-1) // 2 + 1, dtype=torch.cfloat, device=x.device)
        out_ft[:, :, :self.modes1, :self.modes2] = self.compl_mul2d(x_ft[:, :, :self.modes1, :self.modes2], self.weights1)
        out_ft[:, :, -self.modes1:, :self.modes2] = self.compl_mul2d(x_ft[:, :, -self.modes1:, :self.modes2], self.weights2)
        return torch.fft.irfft2(out_ft, s=(x.size(-2), x.size(-1)))


class FNO2d(nn.Module):
    """FNO2d: the grid (``linspace`` + ``repeat``) concatenated to the input, a lifting ``fc0``, two Fourier
    layers (spectral conv + 1x1 conv, GELU), the projection ``fc1``/``fc2``; channels-last in and out."""

    def __init__(self, modes: int = 4, width: int = 12) -> None:
        super().__init__()
        self.width = width
        self.fc0 = nn.Linear(3, width)
        self.conv0, self.conv1 = SpectralConv2d(width, width, modes, modes), SpectralConv2d(width, width, modes, modes)
        self.w0, self.w1 = nn.Conv2d(width, width, 1), nn.Conv2d(width, width, 1)
        self.fc1, self.fc2 = nn.Linear(width, 32), nn.Linear(32, 1)

    def get_grid(self, shape, device):
        batchsize, size_x, size_y = shape[0], shape[1], shape[2]
        gridx = torch.tensor(np.linspace(0, 1, size_x), dtype=torch.float)
        gridx = gridx.reshape(1, size_x, 1, 1).repeat([batchsize, 1, size_y, 1])
        gridy = torch.tensor(np.linspace(0, 1, size_y), dtype=torch.float)
        gridy = gridy.reshape(1, 1, size_y, 1).repeat([batchsize, size_x, 1, 1])
        return torch.cat((gridx, gridy), dim=-1).to(device)

    def forward(self, x):
        grid = self.get_grid(x.shape, x.device)
        x = torch.cat((x, grid), dim=-1)
        x = self.fc0(x).permute(0, 3, 1, 2)
        x = F.gelu(self.conv0(x) + self.w0(x))
        x = self.conv1(x) + self.w1(x)
        x = x.permute(0, 2, 3, 1)
        return self.fc2(F.gelu(self.fc1(x)))


def _field(n: int, g: torch.Generator) -> tuple:
    xs = torch.linspace(0, 2 * math.pi, 16)
    base = torch.sin(xs[None, :, None] * torch.randint(1, 4, (n, 1, 1), generator=g)) * torch.cos(xs[None, None, :])
    return ((base + 0.1 * torch.randn(n, 16, 16, generator=g))[..., None],)


# --- Informer ProbSparse ----------------------------------------------------------------------------------------
class ProbAttention(nn.Module):
    """Informer2020's ``ProbAttention`` (no mask): a sparsity measure ``M = max - mean`` of each query's
    scores against ``sample_k`` sampled keys, the ``n_top`` queries by ``topk`` get full attention
    (written back by advanced-index assignment with ``torch.arange(B)``/``torch.arange(H)``), the rest the
    mean of V. The reference draws the key sample by ``torch.randint`` in every forward; here the sample is
    drawn once at construction and kept in a buffer, so the forward is deterministic."""

    def __init__(self, factor: int = 2, max_len: int = 24) -> None:
        super().__init__()
        self.factor = factor
        sample_k = factor * int(np.ceil(np.log(max_len)))
        self.register_buffer("index_sample", torch.randint(max_len, (max_len, sample_k), generator=torch.Generator().manual_seed(7)))

    def _prob_QK(self, Q, K, sample_k, n_top):
        B, H, L_K, E = K.shape
        _, _, L_Q, _ = Q.shape
        K_expand = K.unsqueeze(-3).expand(B, H, L_Q, L_K, E)
        index_sample = self.index_sample[:L_Q, :sample_k] % L_K
        K_sample = K_expand[:, :, torch.arange(L_Q).unsqueeze(1), index_sample, :]
        Q_K_sample = torch.matmul(Q.unsqueeze(-2), K_sample.transpose(-2, -1)).squeeze(-2)
        M = Q_K_sample.max(-1)[0] - torch.div(Q_K_sample.sum(-1), L_K)
        M_top = M.topk(n_top, sorted=False)[1]
        Q_reduce = Q[torch.arange(B)[:, None, None], torch.arange(H)[None, :, None], M_top, :]
        return torch.matmul(Q_reduce, K.transpose(-2, -1)), M_top

    def _get_initial_context(self, V, L_Q):
        B, H, L_V, D = V.shape
        V_sum = V.mean(dim=-2)
        return V_sum.unsqueeze(-2).expand(B, H, L_Q, V_sum.shape[-1]).clone()

    def _update_context(self, context_in, V, scores, index, L_Q):
        B, H, L_V, D = V.shape
        attn = torch.softmax(scores, dim=-1)
        context_in[torch.arange(B)[:, None, None], torch.arange(H)[None, :, None], index, :] = torch.matmul(attn, V).type_as(context_in)
        return context_in

    def forward(self, queries, keys, values):
        B, L_Q, H, D = queries.shape
        _, L_K, _, _ = keys.shape
        queries, keys, values = queries.transpose(2, 1), keys.transpose(2, 1), values.transpose(2, 1)
        U_part = self.factor * np.ceil(np.log(L_K)).astype("int").item()
        u = self.factor * np.ceil(np.log(L_Q)).astype("int").item()
        U_part = U_part if U_part < L_K else L_K
        u = u if u < L_Q else L_Q
        scores_top, index = self._prob_QK(queries, keys, sample_k=U_part, n_top=u)
        scores_top = scores_top * (1.0 / math.sqrt(D))
        context = self._get_initial_context(values, L_Q)
        context = self._update_context(context, values, scores_top, index, L_Q)
        return context.transpose(2, 1).contiguous()


class InformerEncoder(nn.Module):
    """A token embedding (Conv1d, circular padding) plus a fixed sinusoidal table, two encoder layers of
    ProbSparse attention + conv feed-forward, Informer's distilling ``ConvLayer`` (ELU, max pool) between
    them, and a linear forecast of the last step."""

    def __init__(self, c_in: int = 4, d: int = 32, heads: int = 4, length: int = 24) -> None:
        super().__init__()
        self.heads = heads
        self.token = nn.Conv1d(c_in, d, 3, padding=1, padding_mode="circular")
        pe = torch.zeros(length, d)
        position = torch.arange(0, length).float().unsqueeze(1)
        div_term = (torch.arange(0, d, 2).float() * -(math.log(10000.0) / d)).exp()
        pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div_term), torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))
        self.layers = nn.ModuleList()
        for _ in range(2):
            self.layers.append(nn.ModuleDict(dict(
                attention=ProbAttention(2, length), q=nn.Linear(d, d), k=nn.Linear(d, d), v=nn.Linear(d, d), o=nn.Linear(d, d),
                conv1=nn.Conv1d(d, 2 * d, 1), conv2=nn.Conv1d(2 * d, d, 1), norm1=nn.LayerNorm(d), norm2=nn.LayerNorm(d))))
        self.distil = nn.Sequential(nn.Conv1d(d, d, 3, padding=1, padding_mode="circular"), nn.BatchNorm1d(d), nn.ELU(),
                                    nn.MaxPool1d(3, 2, 1))
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, c_in)

    def forward(self, x):
        x = self.token(x.permute(0, 2, 1)).transpose(1, 2) + self.pe[:, :x.size(1)]
        for i, layer in enumerate(self.layers):
            B, L, _ = x.shape
            q = layer["q"](x).view(B, L, self.heads, -1)
            k = layer["k"](x).view(B, L, self.heads, -1)
            v = layer["v"](x).view(B, L, self.heads, -1)
            x = layer["norm1"](x + layer["o"](layer["attention"](q, k, v).view(B, L, -1)))
            y = layer["conv2"](F.gelu(layer["conv1"](x.transpose(-1, 1)))).transpose(-1, 1)
            x = layer["norm2"](x + y)
            if i == 0:
                x = self.distil(x.permute(0, 2, 1)).transpose(1, 2)
        return self.proj(self.norm(x)[:, -1])


# --- involution -------------------------------------------------------------------------------------------------
class Involution(nn.Module):
    """d-li14/involution's ``involution`` (the naive PyTorch form): per-pixel ``K x K`` kernels per group
    generated by a 1x1 bottleneck (with BN + ReLU), applied to ``nn.Unfold`` neighbourhoods, summed."""

    def __init__(self, channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.channels = kernel_size, stride, channels
        reduction_ratio = 4
        self.group_channels = 8
        self.groups = self.channels // self.group_channels
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels // reduction_ratio, 1, bias=False),
                                   nn.BatchNorm2d(channels // reduction_ratio), nn.ReLU(inplace=True))
        self.conv2 = nn.Conv2d(channels // reduction_ratio, kernel_size ** 2 * self.groups, 1, 1)
        if stride > 1:
            self.avgpool = nn.AvgPool2d(stride, stride)
        self.unfold = nn.Unfold(kernel_size, 1, (kernel_size - 1) // 2, stride)

    def forward(self, x):
        weight = self.conv2(self.conv1(x if self.stride == 1 else self.avgpool(x)))
        b, c, h, w = weight.shape
        weight = weight.view(b, self.groups, self.kernel_size ** 2, h, w).unsqueeze(2)
        out = self.unfold(x).view(b, self.groups, self.group_channels, self.kernel_size ** 2, h, w)
        return (weight * out).sum(dim=3).view(b, self.channels, h, w)


class RedNet(nn.Module):
    """RedNet bottlenecks: 1x1 conv, involution 7x7 (stride 1, then stride 2), 1x1 conv, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList()
        for stride in (1, 2):
            self.blocks.append(nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                                             Involution(16, 7, stride), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                                             nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)))
        self.down = nn.AvgPool2d(2, 2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.blocks[0](x))
        x = torch.relu(self.down(x) + self.blocks[1](x))
        return self.fc(x.mean((2, 3)))


# --- ECA --------------------------------------------------------------------------------------------------------
class ECALayer(nn.Module):
    """ECA-Net's ``eca_layer``: global average pool, a 1-D conv across channels via
    ``squeeze(-1).transpose(-1, -2)``, sigmoid, ``x * y.expand_as(x)``; kernel size from the channel count."""

    def __init__(self, channel: int, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        t = int(abs((math.log(channel, 2) + b) / gamma))
        k_size = t if t % 2 else t + 1
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        y = self.sigmoid(y)
        return x * y.expand_as(x)


class ECANet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True), ECALayer(32),
                                  nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), ECALayer(64))
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


CASES = {
    "rwkv_time_mix": ("RWKV-4: ZeroPad2d((0,0,1,-1)) token shift, -exp(time_decay), stable WKV loop over T with maximum/exp",
                      lambda: (RWKV(), lambda n, g: (torch.randint(0, 60, (n, 10), generator=g),))),
    "patchtst_revin": ("PatchTST: RevIN mean/std stored on self, ReplicationPad1d, unfold patches, BatchNorm encoder, denorm",
                       lambda: (_trained_norms(PatchTST()), _series)),
    "nbeats": ("N-BEATS: trend (polynomial buffer, theta.mm) and generic blocks, backcast - b, forecast + f, two outputs",
               lambda: (NBeats(), lambda n, g: (torch.randn(n, 24, generator=g).cumsum(1) * 0.3,))),
    "deepfm": ("DeepFM: field offsets buffer, nn.Embedding fields, 0.5*(sum^2 - sum of squares), BN MLP, sigmoid",
               lambda: (_trained_norms(DeepFM()), _fields)),
    "tome_vit": ("ToMe ViT: cosine scores, scores[..., 0, :] = -inf, argsort, gather, scatter_reduce(mean), cat", lambda: (
        ToMeViT(), _images)),
    "condconv": ("CondConv: routing @ expert kernels, x.reshape(1, B*C, H, W), F.conv2d(groups=B), permute back", lambda: (
        _trained_norms(CondConvNet()), _images)),
    "bit_stdconv": ("BiT: StdConv2d (var_mean weight standardisation in forward), GroupNorm pre-activation bottlenecks", lambda: (
        BiT(), _images)),
    "shufflenet_v2": ("ShuffleNetV2: x.chunk(2, dim=1), branches, cat, channel shuffle by view/transpose/contiguous/view",
                      lambda: (_trained_norms(ShuffleNetV2()), lambda n, g: _images(n, g, 32))),
    "deeplab_aspp": ("DeepLabV3 ASPP: dilated 3x3 branches, AdaptiveAvgPool2d(1) branch interpolated to x.shape[-2:], dict out",
                     lambda: (_trained_norms(DeepLabV3()), lambda n, g: _images(n, g, 32))),
    "sam_two_way": ("SAM: random Fourier PE (coords @ gaussian buffer, sin/cos), cumsum grid, clone + slice-assign coords, "
                    "two-way attention, mask by matmul", lambda: (SamPromptDecoder(), _sam_inputs)),
    "vit_interp_pos": ("DINO interpolate_pos_encoding: 4x4 table resized bicubic by scale_factor (+0.1) to 6x6 for 24x24 input",
                       lambda: (DinoViT(), lambda n, g: _images(n, g, 24))),
    "rnnt_joiner": ("RNN-T: time reduction by reshape, LSTM predictor, enc[:, :, None] + pred[:, None], tanh, log_softmax",
                    lambda: (RNNT(), _speech_labels)),
    "adaptive_softmax": ("nn.AdaptiveLogSoftmaxWithLoss.log_prob(hidden) head (cutoffs 20/60) after a trimmed causal Conv1d",
                         lambda: (AdaptiveSoftmaxLM(), lambda n, g: (torch.randint(0, 120, (n, 10), generator=g),))),
    "bifpn": ("EfficientDet BiFPN: relu(w) / (sum(w) + eps) fast fusion of upsampled/max-pooled levels, separable convs",
              lambda: (_trained_norms(EfficientDetNeck()), lambda n, g: _images(n, g, 32))),
    "fno_spectral": ("FNO2d: rfft2, cfloat weight einsum on low modes, slice-assign into zeros(cfloat), irfft2, grid concat",
                     lambda: (FNO2d(), _field)),
    "informer_probsparse": ("Informer ProbSparse: sampled-key sparsity measure, topk queries, arange(B)/arange(H) index "
                            "assignment, mean-of-V context, distilling max pool", lambda: (
                                _trained_norms(InformerEncoder()), lambda n, g: (torch.randn(n, 24, 4, generator=g),))),
    "involution": ("RedNet involution: per-pixel kernels from 1x1 convs, nn.Unfold(7, padding 3, stride), 6-D view, mul, sum",
                   lambda: (_trained_norms(RedNet()), _images)),
    "eca": ("ECA-Net: avg pool, Conv1d across channels via squeeze(-1).transpose(-1, -2), sigmoid, expand_as", lambda: (
        _trained_norms(ECANet()), _images)),
}
