"""Ninth round of user-style models for ``usage_scan.py`` (2026-12-07, sixth session): layers and idioms of
popular model repositories, written as those repositories write them. ConvNeXt-V2's global response norm on
channels-last activations, a MobileViT block that unfolds feature maps into patches by reshape/permute, a
MobileNetV3 block with a ``mean((2, 3))`` squeeze-excite and hard-swish, CBAM's channel and spatial
attention, GhostNet's cheap depthwise features sliced to ``[:, :oup]``, a RepVGG block in training form,
coordinate attention, HRNet's multi-resolution fusion, a YOLO FPN + PAN neck returning a list, YOLOv5's Focus
and SPPF, PointNet++ set abstraction with a farthest-point-sampling loop, Swin's shifted windows by
``torch.roll`` with a mask buffer and a relative position bias table, a Switch-Transformer MoE with one-hot
einsum dispatch, FiLM conditioning, a U-Net conditioned on a sinusoidal time embedding plus a class
``nn.Embedding``, a TCN with causal ``F.pad`` and parametrized weight norm, and DETR's demo head.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from benchmarks.usage_models_research import _images, _trained_norms


def _conv_bn(i: int, o: int, k: int = 3, s: int = 1, act: type[nn.Module] | None = nn.SiLU) -> nn.Sequential:
    layers = [nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class GRN(nn.Module):
    """ConvNeXt-V2's global response normalisation, on ``[N, H, W, C]`` as the reference writes it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.randn(1, 1, 1, dim) * 0.1)
        self.beta = nn.Parameter(torch.randn(1, 1, 1, dim) * 0.1)

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2(nn.Module):
    """A stem and two ConvNeXt-V2 blocks: depthwise 7x7, permute to channels-last, LayerNorm, pwconv, GELU,
    GRN, pwconv, permute back, residual; a global-average head behind a LayerNorm."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            self.blocks.append(nn.ModuleDict(dict(dw=nn.Conv2d(dim, dim, 7, padding=3, groups=dim), norm=nn.LayerNorm(dim, eps=1e-6),
                                                  pw1=nn.Linear(dim, 4 * dim), grn=GRN(4 * dim), pw2=nn.Linear(4 * dim, dim))))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            y = b["dw"](x).permute(0, 2, 3, 1)
            y = b["pw2"](b["grn"](F.gelu(b["pw1"](b["norm"](y)))))
            x = x + y.permute(0, 3, 1, 2)
        return self.head(self.norm(x.mean([-2, -1])))


class MobileViTBlock(nn.Module):
    """MobileViT: local 3x3 + 1x1 convs, unfold to ``[B*P, N, d]`` patches by reshape/transpose, a transformer
    layer, fold back, 1x1 projection, concat with the input and a fusing 3x3."""

    def __init__(self, c: int = 16, d: int = 24, patch: int = 2) -> None:
        super().__init__()
        self.ph = self.pw = patch
        self.stem = _conv_bn(3, c, 3, 2)
        self.local = nn.Sequential(_conv_bn(c, c, 3), nn.Conv2d(c, d, 1, bias=False))
        self.attn = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.proj = _conv_bn(d, c, 1)
        self.fuse = _conv_bn(2 * c, c, 3)
        self.head = nn.Linear(c, 4)

    def unfolding(self, x):
        b, c, h, w = x.shape
        nh, nw = h // self.ph, w // self.pw
        x = x.reshape(b * c * nh, self.ph, nw, self.pw).transpose(1, 2)
        x = x.reshape(b, c, nh * nw, self.ph * self.pw).transpose(1, 3)
        return x.reshape(b * self.ph * self.pw, nh * nw, c), (b, h, w, nh, nw)

    def folding(self, x, info):
        b, h, w, nh, nw = info
        c = x.shape[-1]
        x = x.contiguous().view(b, self.ph * self.pw, nh * nw, c).transpose(1, 3)
        x = x.reshape(b * c * nh, nw, self.ph, self.pw).transpose(1, 2)
        return x.reshape(b, c, h, w)

    def forward(self, x):
        x = self.stem(x)
        y, info = self.unfolding(self.local(x))
        y = self.proj(self.folding(self.attn(y), info))
        y = self.fuse(torch.cat((x, y), dim=1))
        return self.head(y.mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class MobileNetV3Block(nn.Module):
    """MobileNetV3 inverted residuals: expand 1x1, depthwise 5x5 with hard-swish, squeeze-excite by
    ``x.mean((2, 3), keepdim=True)`` and ``torch.sigmoid``, project, residual; ``F.hardsigmoid`` gating too."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = _conv_bn(3, c, 3, 2, nn.Hardswish)
        self.expand = _conv_bn(c, 4 * c, 1, act=nn.Hardswish)
        self.dw = nn.Sequential(nn.Conv2d(4 * c, 4 * c, 5, 1, 2, groups=4 * c, bias=False), nn.BatchNorm2d(4 * c), nn.Hardswish())
        self.se = SqueezeExcite(4 * c)
        self.project = _conv_bn(4 * c, c, 1, act=None)
        self.gate = nn.Conv2d(c, c, 1)
        self.head = nn.Linear(c, 6)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        x = x * F.hardsigmoid(self.gate(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class CBAM(nn.Module):
    """CBAM: channel attention from a shared MLP over avg- and max-pooled descriptors, then spatial
    attention from ``torch.mean``/``torch.max`` along channels, concatenated, a 7x7 conv and a sigmoid."""

    def __init__(self, c: int = 16, r: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(3, c, 3, 1, nn.ReLU), _conv_bn(c, c, 3, 1, nn.ReLU))
        self.mlp = nn.Sequential(nn.Conv2d(c, c // r, 1, bias=False), nn.ReLU(), nn.Conv2d(c // r, c, 1, bias=False))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        x = self.body(x)
        ca = torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))
        x = x * ca
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out, _ = torch.max(x, dim=1, keepdim=True)
        x = x * torch.sigmoid(self.spatial(torch.cat([avg_out, max_out], dim=1)))
        return self.head(x)


class GhostModule(nn.Module):
    def __init__(self, inp: int, oup: int, ratio: int = 2, dw: int = 3, relu: bool = True) -> None:
        super().__init__()
        self.oup = oup
        init = math.ceil(oup / ratio)
        new = init * (ratio - 1)
        self.primary = nn.Sequential(nn.Conv2d(inp, init, 1, bias=False), nn.BatchNorm2d(init), nn.ReLU(inplace=True) if relu else nn.Identity())
        self.cheap = nn.Sequential(nn.Conv2d(init, new, dw, 1, dw // 2, groups=init, bias=False), nn.BatchNorm2d(new),
                                   nn.ReLU(inplace=True) if relu else nn.Identity())

    def forward(self, x):
        x1 = self.primary(x)
        x2 = self.cheap(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, :self.oup, :, :]


class GhostNet(nn.Module):
    """GhostNet bottleneck: Ghost modules (1x1 primary + cheap depthwise, concat, sliced to an odd ``oup``), a
    stride-2 depthwise between them, a shortcut of depthwise + pointwise convs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8, 3, 2, nn.ReLU)
        self.g1 = GhostModule(8, 23)
        self.dw = nn.Sequential(nn.Conv2d(23, 23, 3, 2, 1, groups=23, bias=False), nn.BatchNorm2d(23))
        self.g2 = GhostModule(23, 12, relu=False)
        self.short = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 12, 1, bias=False),
                                   nn.BatchNorm2d(12))
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.g2(self.dw(self.g1(x))) + self.short(x)
        return self.head(y.mean((2, 3)))


class RepVGGBlock(nn.Module):
    """RepVGG in its training form: 3x3 conv+BN, 1x1 conv+BN and an identity BN, summed, then ReLU."""

    def __init__(self, i: int, o: int, stride: int = 1) -> None:
        super().__init__()
        self.rbr_identity = nn.BatchNorm2d(i) if i == o and stride == 1 else None
        self.rbr_dense = _conv_bn(i, o, 3, stride, act=None)
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(i, o, 1, stride, 0, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return F.relu(self.rbr_dense(x) + self.rbr_1x1(x) + id_out)


class RepVGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.Sequential(RepVGGBlock(3, 16, 2), RepVGGBlock(16, 16), RepVGGBlock(16, 24, 2), RepVGGBlock(24, 24))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(24, 7)

    def forward(self, x):
        return self.linear(self.gap(self.stages(x)).view(x.size(0), -1))


class CoordAtt(nn.Module):
    """Coordinate attention (Hou et al.): pool along W and along H separately, permute and concat, a shared
    1x1 conv + BN + h_swish, ``torch.split`` back, two sigmoid gates."""

    def __init__(self, c: int = 16, r: int = 4) -> None:
        super().__init__()
        self.body = _conv_bn(3, c, 3, 1, nn.ReLU)
        self.pool_h, self.pool_w = nn.AdaptiveAvgPool2d((None, 1)), nn.AdaptiveAvgPool2d((1, None))
        mip = max(8, c // r)
        self.conv1, self.bn1, self.act = nn.Conv2d(c, mip, 1), nn.BatchNorm2d(mip), nn.Hardswish()
        self.conv_h, self.conv_w = nn.Conv2d(mip, c, 1), nn.Conv2d(mip, c, 1)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        x = self.body(x)
        identity = x
        n, c, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w.permute(0, 1, 3, 2)).sigmoid()
        return self.head(identity * a_w * a_h)


class HRFusion(nn.Module):
    """HRNet's fuse layers over three branches: each output sums the branches, up-sampled by a 1x1 conv +
    ``F.interpolate(size=x.shape[-2:])`` or down-sampled by chains of strided 3x3 convs."""

    def __init__(self, cs: tuple[int, ...] = (8, 16, 24)) -> None:
        super().__init__()
        self.stem = _conv_bn(3, cs[0], 3, 1, nn.ReLU)
        self.down1 = _conv_bn(cs[0], cs[1], 3, 2, nn.ReLU)
        self.down2 = _conv_bn(cs[1], cs[2], 3, 2, nn.ReLU)
        self.branches = nn.ModuleList(_conv_bn(c, c, 3, 1, nn.ReLU) for c in cs)
        fuse = []
        for i in range(3):
            row = nn.ModuleList()
            for j in range(3):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(cs[j], cs[i], 1, bias=False), nn.BatchNorm2d(cs[i])))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = [_conv_bn(cs[j], cs[j], 3, 2, nn.ReLU) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(cs[j], cs[i], 3, 2, act=None))
                    row.append(nn.Sequential(*steps))
            fuse.append(row)
        self.fuse = nn.ModuleList(fuse)
        self.head = nn.Conv2d(sum(cs), 4, 1)

    def forward(self, x):
        x0 = self.stem(x)
        x1 = self.down1(x0)
        xs = [x0, x1, self.down2(x1)]
        xs = [b(t) for b, t in zip(self.branches, xs)]
        out = []
        for i in range(3):
            y = xs[0] if i == 0 else self.fuse[i][0](xs[0])
            for j in range(1, 3):
                if i == j:
                    y = y + xs[j]
                elif j > i:
                    y = y + F.interpolate(self.fuse[i][j](xs[j]), size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
                else:
                    y = y + self.fuse[i][j](xs[j])
            out.append(F.relu(y))
        size = out[0].shape[-2:]
        cat = torch.cat([out[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in out[1:]], 1)
        return self.head(cat)


class FpnPan(nn.Module):
    """A YOLOv5/v8-style neck: a 3-scale backbone, top-down FPN (``nn.Upsample`` nearest + cat), bottom-up PAN
    (strided conv + cat), per-scale 1x1 heads, returned as a list of three maps."""

    def __init__(self) -> None:
        super().__init__()
        self.b1, self.b2, self.b3 = _conv_bn(3, 8, 3, 2), _conv_bn(8, 16, 3, 2), _conv_bn(16, 32, 3, 2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lat3 = _conv_bn(32, 16, 1)
        self.td2 = _conv_bn(32, 16, 3)
        self.lat2 = _conv_bn(16, 8, 1)
        self.td1 = _conv_bn(16, 8, 3)
        self.down1 = _conv_bn(8, 8, 3, 2)
        self.bu2 = _conv_bn(16, 16, 3)
        self.down2 = _conv_bn(16, 16, 3, 2)
        self.bu3 = _conv_bn(32, 32, 3)
        self.heads = nn.ModuleList(nn.Conv2d(c, 6, 1) for c in (8, 16, 32))

    def forward(self, x):
        c3 = self.b1(x)
        c4 = self.b2(c3)
        c5 = self.b3(c4)
        p5 = self.lat3(c5)
        p4 = self.td2(torch.cat([self.up(p5), c4], 1))
        p4l = self.lat2(p4)
        p3 = self.td1(torch.cat([self.up(p4l), c3], 1))
        n4 = self.bu2(torch.cat([self.down1(p3), p4l], 1))
        n5 = self.bu3(torch.cat([self.down2(n4), p5], 1))
        return [h(f) for h, f in zip(self.heads, (p3, n4, n5))]


class FocusSPPF(nn.Module):
    """YOLOv5's Focus (space-to-depth by strided slicing ``x[..., ::2, ::2]``, concat, conv) and SPPF (one 5x5
    max pool applied three times, the four maps concatenated)."""

    def __init__(self) -> None:
        super().__init__()
        self.focus = _conv_bn(12, 16, 3)
        self.down = _conv_bn(16, 32, 3, 2)
        self.cv1 = _conv_bn(32, 16, 1)
        self.m = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        self.cv2 = _conv_bn(64, 32, 1)
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        x = self.focus(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))
        x = self.cv1(self.down(x))
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.head(self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1)))


def farthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """PointNet++'s FPS as its PyTorch ports write it: a Python loop of ``npoint`` steps, ``torch.max`` index."""
    b, n, _ = xyz.shape
    centroids = torch.zeros(b, npoint, dtype=torch.long, device=xyz.device)
    distance = torch.ones(b, n, device=xyz.device) * 1e10
    farthest = torch.zeros(b, dtype=torch.long, device=xyz.device)
    batch_indices = torch.arange(b, dtype=torch.long, device=xyz.device)
    for i in range(npoint):
        centroids[:, i] = farthest
        centroid = xyz[batch_indices, farthest, :].view(b, 1, 3)
        dist = torch.sum((xyz - centroid) ** 2, -1)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = torch.max(distance, -1)[1]
    return centroids


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    b = points.shape[0]
    view_shape = list(idx.shape)
    view_shape[1:] = [1] * (len(view_shape) - 1)
    repeat_shape = list(idx.shape)
    repeat_shape[0] = 1
    batch_indices = torch.arange(b, dtype=torch.long, device=points.device).view(view_shape).repeat(repeat_shape)
    return points[batch_indices, idx, :]


class PointNet2SA(nn.Module):
    """PointNet++ set abstraction: FPS of 8 centroids, kNN grouping by ``topk`` of squared distances,
    ``index_points`` by advanced indexing, relative coordinates, shared Conv2d MLP, max over the group;
    then a global set abstraction and a classifier."""

    def __init__(self, npoint: int = 8, k: int = 4) -> None:
        super().__init__()
        self.npoint, self.k = npoint, k
        self.mlp = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.glob = nn.Sequential(nn.Conv1d(35, 32, 1), nn.BatchNorm1d(32), nn.ReLU())
        self.fc = nn.Linear(32, 5)

    def forward(self, xyz):
        new_xyz = index_points(xyz, farthest_point_sample(xyz, self.npoint))
        sqrdists = torch.cdist(new_xyz, xyz) ** 2
        idx = sqrdists.topk(self.k, dim=-1, largest=False)[1]
        grouped = index_points(xyz, idx) - new_xyz.unsqueeze(2)
        feats = torch.max(self.mlp(grouped.permute(0, 3, 2, 1)), 2)[0]
        g = self.glob(torch.cat([new_xyz.transpose(1, 2), feats], 1))
        return self.fc(torch.max(g, 2)[0])


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


class SwinBlock(nn.Module):
    """Swin Transformer block as the official repo writes it: ``torch.roll`` shift, window partition, a
    relative position bias table indexed by a buffer, a precomputed shifted-window attention mask buffer
    (masked_fill -100), window reverse, roll back, MLP."""

    def __init__(self, dim: int = 16, res: int = 8, ws: int = 4, shift: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.dim, self.res, self.ws, self.shift, self.heads = dim, res, ws, shift, heads
        self.scale = (dim // heads) ** -0.5
        self.embed = nn.Conv2d(3, dim, 2, 2)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * ws - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid([torch.arange(ws), torch.arange(ws)], indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += ws - 1
        rel[:, :, 1] += ws - 1
        rel[:, :, 0] *= 2 * ws - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        img_mask = torch.zeros((1, res, res, 1))
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                img_mask[:, hs, wsl, :] = cnt
                cnt += 1
        mw = window_partition(img_mask, ws).view(-1, ws * ws)
        attn_mask = mw.unsqueeze(1) - mw.unsqueeze(2)
        self.register_buffer("attn_mask", attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0))
        self.head = nn.Linear(dim, 5)

    def attention(self, x):
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        nw = self.attn_mask.shape[0]
        attn = attn.view(b_ // nw, nw, self.heads, n, n) + self.attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, self.heads, n, n).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))

    def forward(self, img):
        x = self.embed(img).flatten(2).transpose(1, 2)
        b, length, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, self.res, self.res, c)
        x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = self.attention(window_partition(x, self.ws).view(-1, self.ws * self.ws, c))
        x = window_reverse(win.view(-1, self.ws, self.ws, c), self.ws, self.res, self.res)
        x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2)).view(b, length, c)
        x = shortcut + x
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


class SwitchMoE(nn.Module):
    """A Switch-Transformer layer, mesh-tensorflow style: router softmax, top-1 by ``argmax``, ``F.one_hot``,
    position in expert by ``cumsum``, capacity mask, dispatch and combine tensors, einsum in and out of
    stacked expert weights; plus the load-balancing auxiliary loss returned beside the output."""

    def __init__(self, d: int = 16, experts: int = 4, hidden: int = 32, capacity_factor: float = 1.5) -> None:
        super().__init__()
        self.e, self.cf = experts, capacity_factor
        self.emb = nn.Embedding(40, d)
        self.router = nn.Linear(d, experts, bias=False)
        self.wi = nn.Parameter(torch.randn(experts, d, hidden) / math.sqrt(d))
        self.wo = nn.Parameter(torch.randn(experts, hidden, d) / math.sqrt(hidden))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, 40)

    def forward(self, ids):
        x = self.emb(ids)
        b, s, d = x.shape
        capacity = int(self.cf * s / self.e)
        probs = F.softmax(self.router(x), dim=-1)
        expert_index = torch.argmax(probs, dim=-1)
        expert_mask = F.one_hot(expert_index, num_classes=self.e)
        gate = (probs * expert_mask).sum(-1)
        position = (torch.cumsum(expert_mask, dim=1) - 1) * expert_mask
        expert_mask = expert_mask * (position < capacity)
        pos = F.one_hot((position * expert_mask).sum(-1), num_classes=capacity)
        dispatch = expert_mask.unsqueeze(-1).float() * pos.unsqueeze(2).float()
        combine = dispatch * gate[..., None, None]
        expert_in = torch.einsum("bsec,bsd->becd", dispatch, x)
        h = F.relu(torch.einsum("becd,edh->bech", expert_in, self.wi))
        expert_out = torch.einsum("bech,ehd->becd", h, self.wo)
        y = torch.einsum("bsec,becd->bsd", combine, expert_out)
        aux = self.e * (expert_mask.float().mean(1) * probs.mean(1)).sum(-1).mean()
        return self.out(self.norm(x + y)), aux


class FiLMNet(nn.Module):
    """FiLM (Perez et al.): per-block gamma/beta predicted from a second input (a question embedding),
    ``gamma[:, :, None, None] * bn(conv(x)) + beta``, residual blocks, max-pooled classifier."""

    def __init__(self, c: int = 16, q: int = 10, blocks: int = 2) -> None:
        super().__init__()
        self.stem = _conv_bn(3, c, 3, 1, nn.ReLU)
        self.film_gen = nn.Linear(q, 2 * c * blocks)
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(blocks))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c, affine=False) for _ in range(blocks))
        self.c, self.blocks = c, blocks
        self.fc = nn.Linear(c, 6)

    def forward(self, x, question):
        x = self.stem(x)
        film = self.film_gen(question).view(-1, self.blocks, 2, self.c)
        for i in range(self.blocks):
            gamma, beta = film[:, i, 0], film[:, i, 1]
            y = self.bns[i](self.convs[i](x))
            x = x + F.relu(gamma[:, :, None, None] * y + beta[:, :, None, None])
        return self.fc(F.adaptive_max_pool2d(x, 1).flatten(1))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Guided-diffusion's sinusoidal timestep embedding (float timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half).to(device=t.device)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class CondResBlock(nn.Module):
    def __init__(self, i: int, o: int, emb: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(4, i), nn.SiLU(), nn.Conv2d(i, o, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * o))
        self.out_norm = nn.GroupNorm(4, o)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Conv2d(o, o, 3, padding=1))
        self.skip = nn.Identity() if i == o else nn.Conv2d(i, o, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        scale, shift = torch.chunk(self.emb_layers(emb)[..., None, None], 2, dim=1)
        h = self.out_layers(self.out_norm(h) * (1 + scale) + shift)
        return self.skip(x) + h


class ClassCondUNet(nn.Module):
    """A guided-diffusion-style U-Net: sinusoidal embedding of integer timesteps through an MLP, plus
    ``nn.Embedding`` of class labels, summed; scale-shift residual blocks, a down and an up level, skip concat."""

    def __init__(self, c: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.c = c
        self.time_embed = nn.Sequential(nn.Linear(c, 4 * c), nn.SiLU(), nn.Linear(4 * c, 4 * c))
        self.label_emb = nn.Embedding(classes, 4 * c)
        self.inp = nn.Conv2d(3, c, 3, padding=1)
        self.down = nn.Conv2d(c, c, 3, 2, 1)
        self.r1 = CondResBlock(c, 2 * c, 4 * c)
        self.mid = CondResBlock(2 * c, 2 * c, 4 * c)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.r2 = CondResBlock(3 * c, c, 4 * c)
        self.out = nn.Sequential(nn.GroupNorm(4, c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1))

    def forward(self, x, timesteps, y):
        emb = self.time_embed(timestep_embedding(timesteps, self.c)) + self.label_emb(y)
        h0 = self.inp(x)
        h = self.mid(self.r1(self.down(h0), emb), emb)
        return self.out(self.r2(torch.cat([self.up(h), h0], 1), emb))


class TemporalBlock(nn.Module):
    def __init__(self, i: int, o: int, k: int, dilation: int) -> None:
        super().__init__()
        self.pad = (k - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(i, o, k, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(o, o, k, dilation=dilation))
        self.downsample = nn.Conv1d(i, o, 1) if i != o else None

    def forward(self, x):
        out = F.relu(self.conv1(F.pad(x, (self.pad, 0))))
        out = F.relu(self.conv2(F.pad(out, (self.pad, 0))))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class TCN(nn.Module):
    """locuslab's TCN: dilated causal Conv1d by left ``F.pad``, ``parametrizations.weight_norm``, 1x1
    down-sample residuals; the last time step into a linear (sequence classification)."""

    def __init__(self, inp: int = 4, chans: tuple[int, ...] = (16, 16, 24), k: int = 3) -> None:
        super().__init__()
        layers, prev = [], inp
        for i, c in enumerate(chans):
            layers.append(TemporalBlock(prev, c, k, 2 ** i))
            prev = c
        self.network = nn.Sequential(*layers)
        self.linear = nn.Linear(prev, 5)

    def forward(self, x):
        return self.linear(self.network(x)[:, :, -1])


class DETRdemo(nn.Module):
    """DETR's minimal demo: a conv backbone, 1x1 projection, learned row/col positional embeddings built by
    ``cat``/``repeat``/``flatten``, ``nn.Transformer`` (sequence-first) with object queries repeated over the
    batch, class logits and ``sigmoid`` boxes."""

    def __init__(self, num_classes: int = 5, hidden_dim: int = 16, nheads: int = 2, queries: int = 6) -> None:
        super().__init__()
        self.backbone = nn.Sequential(_conv_bn(3, 16, 3, 2, nn.ReLU), _conv_bn(16, 32, 3, 2, nn.ReLU))
        self.conv = nn.Conv2d(32, hidden_dim, 1)
        self.transformer = nn.Transformer(hidden_dim, nheads, 1, 1, dim_feedforward=32, dropout=0.0)
        self.linear_class = nn.Linear(hidden_dim, num_classes + 1)
        self.linear_bbox = nn.Linear(hidden_dim, 4)
        self.query_pos = nn.Parameter(torch.rand(queries, hidden_dim))
        self.row_embed = nn.Parameter(torch.rand(16, hidden_dim // 2))
        self.col_embed = nn.Parameter(torch.rand(16, hidden_dim // 2))

    def forward(self, inputs):
        h = self.conv(self.backbone(inputs))
        hh, ww = h.shape[-2:]
        pos = torch.cat([self.col_embed[:ww].unsqueeze(0).repeat(hh, 1, 1), self.row_embed[:hh].unsqueeze(1).repeat(1, ww, 1)],
                        dim=-1).flatten(0, 1).unsqueeze(1)
        h = self.transformer(pos + 0.1 * h.flatten(2).permute(2, 0, 1), self.query_pos.unsqueeze(1).repeat(1, h.shape[0], 1)).transpose(0, 1)
        return {"pred_logits": self.linear_class(h), "pred_boxes": self.linear_bbox(h).sigmoid()}


def _points(n: int, g: torch.Generator) -> tuple:
    return (torch.rand(n, 32, 3, generator=g),)


def _image_question(n: int, g: torch.Generator) -> tuple:
    return _images(n, g) + (torch.randn(n, 10, generator=g),)


def _diffusion(n: int, g: torch.Generator) -> tuple:
    return _images(n, g)[0], torch.randint(0, 1000, (n,), generator=g), torch.randint(0, 10, (n,), generator=g)


CASES = {
    "convnext_v2_grn": ("ConvNeXt-V2: dw 7x7, permute to NHWC, LayerNorm, GRN (torch.norm over H,W / channel mean)", lambda: (
        ConvNeXtV2(), lambda n, g: _images(n, g, 32))),
    "mobilevit": ("MobileViT block: unfold feature map to patches by reshape/transpose, transformer, fold back, concat", lambda: (
        _trained_norms(MobileViTBlock()), _images)),
    "mbv3_se": ("MobileNetV3: hardswish, SE by x.mean((2,3), keepdim) + torch.sigmoid, F.hardsigmoid gate", lambda: (
        _trained_norms(MobileNetV3Block()), _images)),
    "cbam": ("CBAM: shared MLP on avg/max-pooled channels, torch.mean/torch.max over C, cat, 7x7 conv, sigmoid", lambda: (
        _trained_norms(CBAM()), _images)),
    "ghost_module": ("GhostNet: 1x1 primary + cheap depthwise, cat, sliced [:, :oup] to an odd width, dw shortcut", lambda: (
        _trained_norms(GhostNet()), _images)),
    "repvgg_train": ("RepVGG training form: 3x3+BN, 1x1+BN and identity-BN branches summed, ReLU", lambda: (
        _trained_norms(RepVGG()), _images)),
    "coord_attention": ("coordinate attention: pool along H and along W, permute, cat, 1x1, torch.split, sigmoid gates", lambda: (
        _trained_norms(CoordAtt()), _images)),
    "hrnet_fusion": ("HRNet fuse layers: 3 resolutions, interpolate(size=x.shape[-2:]), strided-conv chains, sums", lambda: (
        _trained_norms(HRFusion()), _images)),
    "fpn_pan": ("YOLO FPN + PAN neck: nearest Upsample + cat top-down, strided conv + cat bottom-up, list of 3 maps", lambda: (
        _trained_norms(FpnPan()), lambda n, g: _images(n, g, 32))),
    "focus_sppf": ("YOLOv5 Focus (x[..., ::2, ::2] space-to-depth, cat) and SPPF (max pool x3, cat)", lambda: (
        _trained_norms(FocusSPPF()), _images)),
    "pointnet2_fps": ("PointNet++ SA: farthest point sampling loop with torch.max index, masked assign, cdist topk, gather",
                      lambda: (_trained_norms(PointNet2SA()), _points)),
    "swin_shifted": ("Swin block: torch.roll shift, window partition, relative position bias table, mask buffer", lambda: (
        SwinBlock(), _images)),
    "switch_moe": ("Switch MoE: argmax + F.one_hot routing, cumsum capacity, einsum dispatch/combine, aux loss", lambda: (
        SwitchMoE(), lambda n, g: (torch.randint(0, 40, (n, 12), generator=g),))),
    "film": ("FiLM: gamma/beta from a second input, gamma[:, :, None, None] * BN(conv(x)) + beta", lambda: (
        _trained_norms(FiLMNet()), _image_question)),
    "unet_time_class": ("guided-diffusion U-Net: sinusoidal timestep + nn.Embedding class, scale-shift GroupNorm blocks",
                        lambda: (ClassCondUNet(), _diffusion)),
    "tcn": ("TCN: dilated causal Conv1d by F.pad(x, (left, 0)), parametrizations.weight_norm, last step", lambda: (
        TCN(), lambda n, g: (torch.randn(n, 4, 24, generator=g),))),
    "detr_demo": ("DETR demo: row/col pos embeddings by repeat, nn.Transformer queries, class logits + sigmoid boxes", lambda: (
        _trained_norms(DETRdemo()), lambda n, g: _images(n, g, 32))),
}
