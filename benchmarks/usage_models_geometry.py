"""Seventeenth round of user-style models for ``usage_scan.py`` (2026-12-07): 3-D vision, point clouds, NeRF and geometry,
written as their reference repositories write them. Point clouds: fxia22's PointNet classifier with both T-Nets (``bmm`` by a
predicted 3x3 and 16x16 plus an identity built from numpy, max over points, ``log_softmax`` and the transform returned),
yanx27's PointNet++ set abstraction and feature propagation (farthest point sampling loop with ``torch.max(distance, -1)[1]``
and masked assign, ``query_ball_point`` by ``group_idx[sqrdists > r ** 2] = N`` then ``sort`` and first-index fill, batched
``points[batch_indices, idx, :]`` gathers, three-NN inverse-distance interpolation), WangYue's DGCNN with dynamic graphs
recomputed on features (``-xx - inner - xx.T`` and ``topk``, ``x.view(B * N, -1)[idx + idx_base]``, ``max(-1)``, max and avg
``adaptive_*_pool1d``), the Point Transformer layer (``argsort()[:, :, :k]`` neighbours, ``fc_delta`` relative positions,
vector attention ``softmax(dim=-2)`` and ``einsum('bmnf,bmnf->bmf')``), OpenPCDet's PointPillars (padding indicator, PFN
max, a per-sample ``coords[:, 0] == b`` scatter loop into a BEV canvas sized by ``coords[:, 0].max().item() + 1``) and a
batched VoxelNet-style ``scatter_`` by ``y * W + x`` flat indices, a FoldingNet decoder with a chamfer distance head, and a
SqueezeSeg-style range image (``atan2``/``asin`` spherical coordinates, ``floor`` pixel indices, ``scatter_reduce_('amax')``).
Neural fields: NeRF with its embedder (``2. ** linspace`` frequencies), the skip concat at layer 4, a view-direction branch and
``raw2outputs`` (``1e10`` last delta, ``1 - exp(-relu(sigma) * dists)``, exclusive ``cumprod`` transmittance, depth,
disparity and accumulation maps), HashNeRF's multiresolution hash encoding (``floor().long()`` voxel corners, xor of
prime-multiplied coordinates, ``& (2 ** T - 1)``, eight-corner trilinear interpolation, a ``keep_mask``), NeuS's SDF network
(geometric init, ``weight_norm``, ``Softplus(beta=100)``, skip ``cat / sqrt(2)``) and Occupancy Networks' conditional batch
norm decoder. Volumes and cameras: wolny's pytorch-3dunet (``InstanceNorm3d``, ``ConvTranspose3d``, final sigmoid only in
eval), a 3-D STN with ``affine_grid`` on 5-D sizes plus predicted offsets through ``grid_sample`` on volumes, monodepth2's
``disp_to_depth``, ``BackprojectDepth``/``Project3D`` and axis-angle pose (``rot = zeros(B, 4, 4)`` filled entry by entry)
warping by ``grid_sample(padding_mode='border')``, PIFu-style pixel-aligned features (``K @ (R @ X + t)``, divide by a clamped
z, ``grid_sample`` at the projections). Rotations: pytorch3d's ``quaternion_to_matrix`` (``unbind``, ``two_s``, stack),
``so3_exp_map``/``se3`` with a ``hat`` filled into ``new_zeros`` and ``torch.cross`` velocities, HMR's iterative regressor
with the 6-D representation by Gram-Schmidt, and a Pixel2Mesh-style graph convolution with dense adjacency and uniform
Laplacian smoothing.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.usage_models_research import _trained_norms


def _cloud(n: int, g: torch.Generator, points: int = 64, dims: int = 3) -> tuple:
    return (torch.randn(n, dims, points, generator=g),)


# --- PointNet (fxia22/pointnet.pytorch pointnet/model.py) -----------------------------------------------------------
class STN3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv1d(3, 32, 1), nn.Conv1d(32, 64, 1), nn.Conv1d(64, 128, 1)
        self.fc1, self.fc2, self.fc3 = nn.Linear(128, 64), nn.Linear(64, 32), nn.Linear(32, 9)
        self.relu = nn.ReLU()
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm1d(32), nn.BatchNorm1d(64), nn.BatchNorm1d(128)
        self.bn4, self.bn5 = nn.BatchNorm1d(64), nn.BatchNorm1d(32)

    def forward(self, x):
        batchsize = x.size()[0]
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = torch.max(x, 2, keepdim=True)[0]
        x = x.view(-1, 128)
        x = F.relu(self.bn4(self.fc1(x)))
        x = F.relu(self.bn5(self.fc2(x)))
        x = self.fc3(x)
        iden = torch.from_numpy(np.array([1, 0, 0, 0, 1, 0, 0, 0, 1]).astype(np.float32)).view(1, 9).repeat(batchsize, 1)
        if x.is_cuda:
            iden = iden.cuda()
        x = x + iden
        x = x.view(-1, 3, 3)
        return x


class STNkd(nn.Module):
    def __init__(self, k=16):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv1d(k, 32, 1), nn.Conv1d(32, 64, 1)
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, k * k)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm1d(32), nn.BatchNorm1d(64), nn.BatchNorm1d(32)
        self.k = k

    def forward(self, x):
        batchsize = x.size()[0]
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = torch.max(x, 2, keepdim=True)[0].view(-1, 64)
        x = self.fc2(F.relu(self.bn3(self.fc1(x))))
        iden = torch.from_numpy(np.eye(self.k).flatten().astype(np.float32)).view(1, self.k * self.k).repeat(batchsize, 1)
        x = x + iden
        return x.view(-1, self.k, self.k)


class PointNetCls(nn.Module):
    def __init__(self, k=5):
        super().__init__()
        self.stn = STN3d()
        self.conv1, self.conv2, self.conv3 = nn.Conv1d(3, 16, 1), nn.Conv1d(16, 64, 1), nn.Conv1d(64, 128, 1)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm1d(16), nn.BatchNorm1d(64), nn.BatchNorm1d(128)
        self.fstn = STNkd(k=16)
        self.fc1, self.fc2, self.fc3 = nn.Linear(128, 64), nn.Linear(64, 32), nn.Linear(32, k)
        self.dropout = nn.Dropout(p=0.3)
        self.bn4, self.bn5 = nn.BatchNorm1d(64), nn.BatchNorm1d(32)

    def forward(self, x):
        n_pts = x.size()[2]
        trans = self.stn(x)
        x = x.transpose(2, 1)
        x = torch.bmm(x, trans)
        x = x.transpose(2, 1)
        x = F.relu(self.bn1(self.conv1(x)))
        trans_feat = self.fstn(x)
        x = x.transpose(2, 1)
        x = torch.bmm(x, trans_feat)
        x = x.transpose(2, 1)
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        x = torch.max(x, 2, keepdim=True)[0]
        x = x.view(-1, 128)
        assert n_pts > 0
        x = F.relu(self.bn4(self.fc1(x)))
        x = F.relu(self.bn5(self.dropout(self.fc2(x))))
        x = self.fc3(x)
        return F.log_softmax(x, dim=1), trans, trans_feat


# --- PointNet++ (yanx27/Pointnet_Pointnet2_pytorch models/pointnet2_utils.py) ---------------------------------------
def square_distance(src, dst):
    B, N, _ = src.shape
    _, M, _ = dst.shape
    dist = -2 * torch.matmul(src, dst.permute(0, 2, 1))
    dist += torch.sum(src ** 2, -1).view(B, N, 1)
    dist += torch.sum(dst ** 2, -1).view(B, 1, M)
    return dist


def index_points(points, idx):
    device = points.device
    B = points.shape[0]
    view_shape = list(idx.shape)
    view_shape[1:] = [1] * (len(view_shape) - 1)
    repeat_shape = list(idx.shape)
    repeat_shape[0] = 1
    batch_indices = torch.arange(B, dtype=torch.long).to(device).view(view_shape).repeat(repeat_shape)
    new_points = points[batch_indices, idx, :]
    return new_points


def farthest_point_sample(xyz, npoint):
    device = xyz.device
    B, N, C = xyz.shape
    centroids = torch.zeros(B, npoint, dtype=torch.long).to(device)
    distance = torch.ones(B, N).to(device) * 1e10
    farthest = torch.zeros(B, dtype=torch.long).to(device)  # the repo draws torch.randint(0, N, (B,)); a fixed start here
    batch_indices = torch.arange(B, dtype=torch.long).to(device)
    for i in range(npoint):
        centroids[:, i] = farthest
        centroid = xyz[batch_indices, farthest, :].view(B, 1, 3)
        dist = torch.sum((xyz - centroid) ** 2, -1)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = torch.max(distance, -1)[1]
    return centroids


def query_ball_point(radius, nsample, xyz, new_xyz):
    device = xyz.device
    B, N, C = xyz.shape
    _, S, _ = new_xyz.shape
    group_idx = torch.arange(N, dtype=torch.long).to(device).view(1, 1, N).repeat([B, S, 1])
    sqrdists = square_distance(new_xyz, xyz)
    group_idx[sqrdists > radius ** 2] = N
    group_idx = group_idx.sort(dim=-1)[0][:, :, :nsample]
    group_first = group_idx[:, :, 0].view(B, S, 1).repeat([1, 1, nsample])
    mask = group_idx == N
    group_idx[mask] = group_first[mask]
    return group_idx


def sample_and_group(npoint, radius, nsample, xyz, points):
    B, N, C = xyz.shape
    S = npoint
    fps_idx = farthest_point_sample(xyz, npoint)
    new_xyz = index_points(xyz, fps_idx)
    idx = query_ball_point(radius, nsample, xyz, new_xyz)
    grouped_xyz = index_points(xyz, idx)
    grouped_xyz_norm = grouped_xyz - new_xyz.view(B, S, 1, C)
    if points is not None:
        grouped_points = index_points(points, idx)
        new_points = torch.cat([grouped_xyz_norm, grouped_points], dim=-1)
    else:
        new_points = grouped_xyz_norm
    return new_xyz, new_points


class PointNetSetAbstraction(nn.Module):
    def __init__(self, npoint, radius, nsample, in_channel, mlp):
        super().__init__()
        self.npoint, self.radius, self.nsample = npoint, radius, nsample
        self.mlp_convs, self.mlp_bns = nn.ModuleList(), nn.ModuleList()
        last_channel = in_channel
        for out_channel in mlp:
            self.mlp_convs.append(nn.Conv2d(last_channel, out_channel, 1))
            self.mlp_bns.append(nn.BatchNorm2d(out_channel))
            last_channel = out_channel

    def forward(self, xyz, points):
        xyz = xyz.permute(0, 2, 1)
        if points is not None:
            points = points.permute(0, 2, 1)
        new_xyz, new_points = sample_and_group(self.npoint, self.radius, self.nsample, xyz, points)
        new_points = new_points.permute(0, 3, 2, 1)  # [B, C+D, nsample, npoint]
        for i, conv in enumerate(self.mlp_convs):
            new_points = F.relu(self.mlp_bns[i](conv(new_points)))
        new_points = torch.max(new_points, 2)[0]
        new_xyz = new_xyz.permute(0, 2, 1)
        return new_xyz, new_points


class PointNetFeaturePropagation(nn.Module):
    def __init__(self, in_channel, mlp):
        super().__init__()
        self.mlp_convs, self.mlp_bns = nn.ModuleList(), nn.ModuleList()
        last_channel = in_channel
        for out_channel in mlp:
            self.mlp_convs.append(nn.Conv1d(last_channel, out_channel, 1))
            self.mlp_bns.append(nn.BatchNorm1d(out_channel))
            last_channel = out_channel

    def forward(self, xyz1, xyz2, points1, points2):
        xyz1, xyz2 = xyz1.permute(0, 2, 1), xyz2.permute(0, 2, 1)
        points2 = points2.permute(0, 2, 1)
        B, N, C = xyz1.shape
        _, S, _ = xyz2.shape
        if S == 1:
            interpolated_points = points2.repeat(1, N, 1)
        else:
            dists = square_distance(xyz1, xyz2)
            dists, idx = dists.sort(dim=-1)
            dists, idx = dists[:, :, :3], idx[:, :, :3]
            dist_recip = 1.0 / (dists + 1e-8)
            norm = torch.sum(dist_recip, dim=2, keepdim=True)
            weight = dist_recip / norm
            interpolated_points = torch.sum(index_points(points2, idx) * weight.view(B, N, 3, 1), dim=2)
        if points1 is not None:
            points1 = points1.permute(0, 2, 1)
            new_points = torch.cat([points1, interpolated_points], dim=-1)
        else:
            new_points = interpolated_points
        new_points = new_points.permute(0, 2, 1)
        for i, conv in enumerate(self.mlp_convs):
            new_points = F.relu(self.mlp_bns[i](conv(new_points)))
        return new_points


class PointNet2Seg(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.sa1 = PointNetSetAbstraction(16, 0.8, 8, 3 + 3, [16, 32])
        self.sa2 = PointNetSetAbstraction(4, 1.6, 8, 32 + 3, [32, 64])
        self.fp2 = PointNetFeaturePropagation(64 + 32, [32])
        self.fp1 = PointNetFeaturePropagation(32 + 3, [32, 32])
        self.conv1, self.bn1 = nn.Conv1d(32, 32, 1), nn.BatchNorm1d(32)
        self.conv2 = nn.Conv1d(32, num_classes, 1)

    def forward(self, xyz):
        l0_points = xyz
        l0_xyz = xyz[:, :3, :]
        l1_xyz, l1_points = self.sa1(l0_xyz, l0_points)
        l2_xyz, l2_points = self.sa2(l1_xyz, l1_points)
        l1_points = self.fp2(l1_xyz, l2_xyz, l1_points, l2_points)
        l0_points = self.fp1(l0_xyz, l1_xyz, l0_points, l1_points)
        x = F.relu(self.bn1(self.conv1(l0_points)))
        x = self.conv2(x)
        x = F.log_softmax(x, dim=1)
        return x.permute(0, 2, 1), l2_points


# --- DGCNN (WangYueFt/dgcnn pytorch/model.py) -----------------------------------------------------------------------
def knn(x, k):
    inner = -2 * torch.matmul(x.transpose(2, 1), x)
    xx = torch.sum(x ** 2, dim=1, keepdim=True)
    pairwise_distance = -xx - inner - xx.transpose(2, 1)
    idx = pairwise_distance.topk(k=k, dim=-1)[1]
    return idx


def get_graph_feature(x, k=8, idx=None):
    batch_size = x.size(0)
    num_points = x.size(2)
    x = x.view(batch_size, -1, num_points)
    if idx is None:
        idx = knn(x, k=k)
    device = x.device
    idx_base = torch.arange(0, batch_size, device=device).view(-1, 1, 1) * num_points
    idx = idx + idx_base
    idx = idx.view(-1)
    _, num_dims, _ = x.size()
    x = x.transpose(2, 1).contiguous()
    feature = x.view(batch_size * num_points, -1)[idx, :]
    feature = feature.view(batch_size, num_points, k, num_dims)
    x = x.view(batch_size, num_points, 1, num_dims).repeat(1, 1, k, 1)
    feature = torch.cat((feature - x, x), dim=3).permute(0, 3, 1, 2).contiguous()
    return feature


class DGCNN(nn.Module):
    def __init__(self, k=8, emb_dims=64, output_channels=5):
        super().__init__()
        self.k = k
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(16), nn.BatchNorm2d(16), nn.BatchNorm2d(32)
        self.bn5 = nn.BatchNorm1d(emb_dims)
        self.conv1 = nn.Sequential(nn.Conv2d(6, 16, kernel_size=1, bias=False), self.bn1, nn.LeakyReLU(negative_slope=0.2))
        self.conv2 = nn.Sequential(nn.Conv2d(16 * 2, 16, kernel_size=1, bias=False), self.bn2, nn.LeakyReLU(negative_slope=0.2))
        self.conv3 = nn.Sequential(nn.Conv2d(16 * 2, 32, kernel_size=1, bias=False), self.bn3, nn.LeakyReLU(negative_slope=0.2))
        self.conv5 = nn.Sequential(nn.Conv1d(64, emb_dims, kernel_size=1, bias=False), self.bn5, nn.LeakyReLU(negative_slope=0.2))
        self.linear1 = nn.Linear(emb_dims * 2, 32, bias=False)
        self.bn6 = nn.BatchNorm1d(32)
        self.dp1 = nn.Dropout(p=0.5)
        self.linear3 = nn.Linear(32, output_channels)

    def forward(self, x):
        batch_size = x.size(0)
        x = get_graph_feature(x, k=self.k)
        x = self.conv1(x)
        x1 = x.max(dim=-1, keepdim=False)[0]
        x = get_graph_feature(x1, k=self.k)
        x = self.conv2(x)
        x2 = x.max(dim=-1, keepdim=False)[0]
        x = get_graph_feature(x2, k=self.k)
        x = self.conv3(x)
        x3 = x.max(dim=-1, keepdim=False)[0]
        x = torch.cat((x1, x2, x3), dim=1)
        x = self.conv5(x)
        x1 = F.adaptive_max_pool1d(x, 1).view(batch_size, -1)
        x2 = F.adaptive_avg_pool1d(x, 1).view(batch_size, -1)
        x = torch.cat((x1, x2), 1)
        x = F.leaky_relu(self.bn6(self.linear1(x)), negative_slope=0.2)
        x = self.dp1(x)
        return self.linear3(x)


# --- Point Transformer (qq456cvb/Point-Transformers models/Hengshuang/transformer.py) -------------------------------
class TransformerBlock(nn.Module):
    def __init__(self, d_points, d_model, k) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_points, d_model)
        self.fc2 = nn.Linear(d_model, d_points)
        self.fc_delta = nn.Sequential(nn.Linear(3, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.fc_gamma = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.w_qs = nn.Linear(d_model, d_model, bias=False)
        self.w_ks = nn.Linear(d_model, d_model, bias=False)
        self.w_vs = nn.Linear(d_model, d_model, bias=False)
        self.k = k

    def forward(self, xyz, features):
        dists = square_distance(xyz, xyz)
        knn_idx = dists.argsort()[:, :, :self.k]  # b x n x k
        knn_xyz = index_points(xyz, knn_idx)
        pre = features
        x = self.fc1(features)
        q, k, v = self.w_qs(x), index_points(self.w_ks(x), knn_idx), index_points(self.w_vs(x), knn_idx)
        pos_enc = self.fc_delta(xyz[:, :, None] - knn_xyz)  # b x n x k x f
        attn = self.fc_gamma(q[:, :, None] - k + pos_enc)
        attn = F.softmax(attn / np.sqrt(k.size(-1)), dim=-2)  # b x n x k x f
        res = torch.einsum('bmnf,bmnf->bmf', attn, v + pos_enc)
        res = self.fc2(res) + pre
        return res, attn


class PointTransformerCls(nn.Module):
    def __init__(self, d_points=6, dim=32, k=8, classes=5):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(d_points, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.transformer1 = TransformerBlock(dim, dim, k)
        self.transformer2 = TransformerBlock(dim, dim, k)
        self.fc2 = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        xyz = x[..., :3]
        points = self.transformer1(xyz, self.fc1(x))[0]
        points = self.transformer2(xyz, points)[0]
        return self.fc2(points.mean(1))


# --- NeRF (yenchenlin/nerf-pytorch run_nerf_helpers.py, run_nerf.py raw2outputs) ------------------------------------
class Embedder:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.create_embedding_fn()

    def create_embedding_fn(self):
        embed_fns = []
        d = self.kwargs['input_dims']
        out_dim = 0
        if self.kwargs['include_input']:
            embed_fns.append(lambda x: x)
            out_dim += d
        max_freq = self.kwargs['max_freq_log2']
        N_freqs = self.kwargs['num_freqs']
        freq_bands = 2. ** torch.linspace(0., max_freq, steps=N_freqs)
        for freq in freq_bands:
            for p_fn in self.kwargs['periodic_fns']:
                embed_fns.append(lambda x, p_fn=p_fn, freq=freq: p_fn(x * freq))
                out_dim += d
        self.embed_fns = embed_fns
        self.out_dim = out_dim

    def embed(self, inputs):
        return torch.cat([fn(inputs) for fn in self.embed_fns], -1)


def get_embedder(multires):
    embed_kwargs = {'include_input': True, 'input_dims': 3, 'max_freq_log2': multires - 1, 'num_freqs': multires,
                    'log_sampling': True, 'periodic_fns': [torch.sin, torch.cos]}
    embedder_obj = Embedder(**embed_kwargs)
    return (lambda x, eo=embedder_obj: eo.embed(x)), embedder_obj.out_dim


class NeRFMLP(nn.Module):
    def __init__(self, D=6, W=64, input_ch=3, input_ch_views=3, output_ch=4, skips=(3,), use_viewdirs=True):
        super().__init__()
        self.D, self.W, self.input_ch, self.input_ch_views = D, W, input_ch, input_ch_views
        self.skips, self.use_viewdirs = list(skips), use_viewdirs
        self.pts_linears = nn.ModuleList([nn.Linear(input_ch, W)] + [
            nn.Linear(W, W) if i not in self.skips else nn.Linear(W + input_ch, W) for i in range(D - 1)])
        self.views_linears = nn.ModuleList([nn.Linear(input_ch_views + W, W // 2)])
        if use_viewdirs:
            self.feature_linear = nn.Linear(W, W)
            self.alpha_linear = nn.Linear(W, 1)
            self.rgb_linear = nn.Linear(W // 2, 3)
        else:
            self.output_linear = nn.Linear(W, output_ch)

    def forward(self, x):
        input_pts, input_views = torch.split(x, [self.input_ch, self.input_ch_views], dim=-1)
        h = input_pts
        for i, l in enumerate(self.pts_linears):  # noqa: E741, B007 - as nerf-pytorch writes it
            h = self.pts_linears[i](h)
            h = F.relu(h)
            if i in self.skips:
                h = torch.cat([input_pts, h], -1)
        alpha = self.alpha_linear(h)
        feature = self.feature_linear(h)
        h = torch.cat([feature, input_views], -1)
        for i, l in enumerate(self.views_linears):  # noqa: E741, B007
            h = self.views_linears[i](h)
            h = F.relu(h)
        rgb = self.rgb_linear(h)
        return torch.cat([rgb, alpha], -1)


class NeRFRenderer(nn.Module):
    def __init__(self, N_samples=16, near=2.0, far=6.0, multires=6, multires_views=3):
        super().__init__()
        self.embed_fn, input_ch = get_embedder(multires)
        self.embeddirs_fn, input_ch_views = get_embedder(multires_views)
        self.network = NeRFMLP(input_ch=input_ch, input_ch_views=input_ch_views)
        self.N_samples, self.near, self.far = N_samples, near, far

    def run_network(self, inputs, viewdirs):
        inputs_flat = torch.reshape(inputs, [-1, inputs.shape[-1]])
        embedded = self.embed_fn(inputs_flat)
        input_dirs = viewdirs[:, None].expand(inputs.shape)
        input_dirs_flat = torch.reshape(input_dirs, [-1, input_dirs.shape[-1]])
        embedded = torch.cat([embedded, self.embeddirs_fn(input_dirs_flat)], -1)
        outputs_flat = self.network(embedded)
        return torch.reshape(outputs_flat, list(inputs.shape[:-1]) + [outputs_flat.shape[-1]])

    def forward(self, rays_o, rays_d):
        viewdirs = rays_d / torch.norm(rays_d, dim=-1, keepdim=True)
        N_rays = rays_o.shape[0]
        near, far = self.near * torch.ones_like(rays_d[..., :1]), self.far * torch.ones_like(rays_d[..., :1])
        t_vals = torch.linspace(0., 1., steps=self.N_samples)
        z_vals = near * (1. - t_vals) + far * (t_vals)
        z_vals = z_vals.expand([N_rays, self.N_samples])
        pts = rays_o[..., None, :] + rays_d[..., None, :] * z_vals[..., :, None]
        raw = self.run_network(pts, viewdirs)
        # raw2outputs
        raw2alpha = lambda raw, dists, act_fn=F.relu: 1. - torch.exp(-act_fn(raw) * dists)  # noqa: E731
        dists = z_vals[..., 1:] - z_vals[..., :-1]
        dists = torch.cat([dists, torch.Tensor([1e10]).expand(dists[..., :1].shape)], -1)
        dists = dists * torch.norm(rays_d[..., None, :], dim=-1)
        rgb = torch.sigmoid(raw[..., :3])
        alpha = raw2alpha(raw[..., 3], dists)
        weights = alpha * torch.cumprod(torch.cat([torch.ones((alpha.shape[0], 1)), 1. - alpha + 1e-10], -1), -1)[:, :-1]
        rgb_map = torch.sum(weights[..., None] * rgb, -2)
        depth_map = torch.sum(weights * z_vals, -1)
        disp_map = 1. / torch.max(1e-10 * torch.ones_like(depth_map), depth_map / torch.sum(weights, -1))
        acc_map = torch.sum(weights, -1)
        return {'rgb_map': rgb_map, 'disp_map': disp_map, 'acc_map': acc_map, 'depth_map': depth_map}


def _rays(n: int, g: torch.Generator, rays: int = 8) -> tuple:
    o = torch.randn(n * rays, 3, generator=g) * 0.3
    d = torch.randn(n * rays, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 1.0])
    return o, d


# --- Instant-NGP hash encoding (yashbhalgat/HashNeRF-pytorch hash_encoding.py, utils.py) -----------------------------
BOX_OFFSETS = torch.tensor([[[i, j, k] for i in [0, 1] for j in [0, 1] for k in [0, 1]]])


def hash(coords, log2_hashmap_size):  # noqa: A001 - the repo's name
    primes = [1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737]
    xor_result = torch.zeros_like(coords)[..., 0]
    for i in range(coords.shape[-1]):
        xor_result ^= coords[..., i] * primes[i]
    return torch.tensor((1 << log2_hashmap_size) - 1).to(xor_result.device) & xor_result


def get_voxel_vertices(xyz, bounding_box, resolution, log2_hashmap_size):
    box_min, box_max = bounding_box
    keep_mask = xyz == torch.max(torch.min(xyz, box_max), box_min)
    if not torch.all(xyz <= box_max) or not torch.all(xyz >= box_min):
        xyz = torch.clamp(xyz, min=box_min, max=box_max)
    grid_size = (box_max - box_min) / resolution
    bottom_left_idx = torch.floor((xyz - box_min) / grid_size).long()
    voxel_min_vertex = bottom_left_idx * grid_size + box_min
    voxel_max_vertex = voxel_min_vertex + torch.tensor([1.0, 1.0, 1.0]) * grid_size
    voxel_indices = bottom_left_idx.unsqueeze(1) + BOX_OFFSETS
    hashed_voxel_indices = hash(voxel_indices, log2_hashmap_size)
    return voxel_min_vertex, voxel_max_vertex, hashed_voxel_indices, keep_mask


class HashEmbedder(nn.Module):
    def __init__(self, bounding_box, n_levels=6, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
                 finest_resolution=64):
        super().__init__()
        self.bounding_box = bounding_box
        self.n_levels, self.n_features_per_level = n_levels, n_features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = torch.tensor(base_resolution)
        self.finest_resolution = torch.tensor(finest_resolution)
        self.out_dim = self.n_levels * self.n_features_per_level
        self.b = torch.exp((torch.log(self.finest_resolution) - torch.log(self.base_resolution)) / (n_levels - 1))
        self.embeddings = nn.ModuleList([nn.Embedding(2 ** self.log2_hashmap_size, self.n_features_per_level)
                                         for i in range(n_levels)])
        for i in range(n_levels):
            nn.init.uniform_(self.embeddings[i].weight, a=-0.1, b=0.1)

    def trilinear_interp(self, x, voxel_min_vertex, voxel_max_vertex, voxel_embedds):
        weights = (x - voxel_min_vertex) / (voxel_max_vertex - voxel_min_vertex)  # B x 3
        c00 = voxel_embedds[:, 0] * (1 - weights[:, 0][:, None]) + voxel_embedds[:, 4] * weights[:, 0][:, None]
        c01 = voxel_embedds[:, 1] * (1 - weights[:, 0][:, None]) + voxel_embedds[:, 5] * weights[:, 0][:, None]
        c10 = voxel_embedds[:, 2] * (1 - weights[:, 0][:, None]) + voxel_embedds[:, 6] * weights[:, 0][:, None]
        c11 = voxel_embedds[:, 3] * (1 - weights[:, 0][:, None]) + voxel_embedds[:, 7] * weights[:, 0][:, None]
        c0 = c00 * (1 - weights[:, 1][:, None]) + c10 * weights[:, 1][:, None]
        c1 = c01 * (1 - weights[:, 1][:, None]) + c11 * weights[:, 1][:, None]
        c = c0 * (1 - weights[:, 2][:, None]) + c1 * weights[:, 2][:, None]
        return c

    def forward(self, x):
        x_embedded_all = []
        for i in range(self.n_levels):
            resolution = torch.floor(self.base_resolution * self.b ** i)
            voxel_min_vertex, voxel_max_vertex, hashed_voxel_indices, keep_mask = get_voxel_vertices(
                x, self.bounding_box, resolution, self.log2_hashmap_size)
            voxel_embedds = self.embeddings[i](hashed_voxel_indices)
            x_embedded = self.trilinear_interp(x, voxel_min_vertex, voxel_max_vertex, voxel_embedds)
            x_embedded_all.append(x_embedded)
        keep_mask = keep_mask.sum(dim=-1) == keep_mask.shape[-1]
        return torch.cat(x_embedded_all, dim=-1), keep_mask


class HashNeRFSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_fn = HashEmbedder((torch.tensor([-1.5, -1.5, -1.5]), torch.tensor([1.5, 1.5, 1.5])))
        self.sigma_net = nn.Sequential(nn.Linear(self.embed_fn.out_dim, 32), nn.ReLU(), nn.Linear(32, 16))
        self.color_net = nn.Sequential(nn.Linear(15 + 3, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x, d):
        h, keep_mask = self.embed_fn(x)
        h = self.sigma_net(h)
        sigma, geo_feat = h[..., 0], h[..., 1:]
        color = torch.sigmoid(self.color_net(torch.cat([d, geo_feat], -1)))
        sigma = F.relu(sigma) * keep_mask  # HashNeRF zeroes sigma outside the box
        return color, sigma


def _hash_points(n: int, g: torch.Generator, pts: int = 16) -> tuple:
    d = F.normalize(torch.randn(n * pts, 3, generator=g), dim=-1)
    return torch.rand(n * pts, 3, generator=g) * 2.6 - 1.3, d


# --- 3-D U-Net (wolny/pytorch-3dunet pytorch3dunet/unet3d/buildingblocks.py, model.py) -------------------------------
class SingleConv(nn.Sequential):
    def __init__(self, in_channels, out_channels, kernel_size=3):
        super().__init__()
        self.add_module('conv', nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False))
        self.add_module('instancenorm', nn.InstanceNorm3d(out_channels, affine=True))
        self.add_module('LeakyReLU', nn.LeakyReLU(negative_slope=0.1, inplace=True))


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels, out_channels, encoder):
        super().__init__()
        if encoder:
            c1_in, c1_out = in_channels, max(out_channels // 2, in_channels)
            c2_in, c2_out = c1_out, out_channels
        else:
            c1_in, c1_out = in_channels, out_channels
            c2_in, c2_out = out_channels, out_channels
        self.add_module('SingleConv1', SingleConv(c1_in, c1_out))
        self.add_module('SingleConv2', SingleConv(c2_in, c2_out))


class Encoder(nn.Module):
    def __init__(self, in_channels, out_channels, apply_pooling=True):
        super().__init__()
        self.pooling = nn.MaxPool3d(kernel_size=2) if apply_pooling else None
        self.basic_module = DoubleConv(in_channels, out_channels, encoder=True)

    def forward(self, x):
        if self.pooling is not None:
            x = self.pooling(x)
        return self.basic_module(x)


class Decoder(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.upsampling = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.basic_module = DoubleConv(in_channels, out_channels, encoder=False)

    def forward(self, encoder_features, x):
        x = self.upsampling(x, output_size=encoder_features.size()[2:])
        x = torch.cat((encoder_features, x), dim=1)
        return self.basic_module(x)


class UNet3D(nn.Module):
    def __init__(self, in_channels=1, out_channels=2, f_maps=(8, 16, 32)):
        super().__init__()
        self.encoders = nn.ModuleList([Encoder(in_channels if i == 0 else f_maps[i - 1], f, apply_pooling=i > 0)
                                       for i, f in enumerate(f_maps)])
        rev = list(reversed(f_maps))
        self.decoders = nn.ModuleList([Decoder(rev[i], rev[i + 1]) for i in range(len(rev) - 1)])
        self.final_conv = nn.Conv3d(f_maps[0], out_channels, 1)
        self.final_activation = nn.Softmax(dim=1)

    def forward(self, x):
        encoders_features = []
        for encoder in self.encoders:
            x = encoder(x)
            encoders_features.insert(0, x)
        encoders_features = encoders_features[1:]
        for decoder, encoder_features in zip(self.decoders, encoders_features):
            x = decoder(encoder_features, x)
        x = self.final_conv(x)
        if not self.training and self.final_activation is not None:
            x = self.final_activation(x)
        return x


# --- PointPillars (open-mmlab/OpenPCDet pcdet/models/backbones_3d/vfe/pillar_vfe.py, map_to_bev/pointpillar_scatter.py) --
class PFNLayer(nn.Module):
    def __init__(self, in_channels, out_channels, last_layer=False):
        super().__init__()
        self.last_vfe = last_layer
        if not self.last_vfe:
            out_channels = out_channels // 2
        self.linear = nn.Linear(in_channels, out_channels, bias=False)
        self.norm = nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01)

    def forward(self, inputs):
        x = self.linear(inputs)
        x = self.norm(x.permute(0, 2, 1)).permute(0, 2, 1)
        x = F.relu(x)
        x_max = torch.max(x, dim=1, keepdim=True)[0]
        if self.last_vfe:
            return x_max
        x_repeat = x_max.repeat(1, inputs.shape[1], 1)
        return torch.cat([x, x_repeat], dim=2)


def get_paddings_indicator(actual_num, max_num, axis=0):
    actual_num = torch.unsqueeze(actual_num, axis + 1)
    max_num_shape = [1] * len(actual_num.shape)
    max_num_shape[axis + 1] = -1
    max_num = torch.arange(max_num, dtype=torch.int, device=actual_num.device).view(max_num_shape)
    paddings_indicator = actual_num.int() > max_num
    return paddings_indicator


class PillarVFE(nn.Module):
    def __init__(self, num_filters=(16, 32), voxel_size=(0.5, 0.5, 4.0), pc_range=(0.0, -4.0, -3.0)):
        super().__init__()
        num_point_features = 4 + 3 + 3
        filters = [num_point_features, *num_filters]
        self.pfn_layers = nn.ModuleList([PFNLayer(filters[i], filters[i + 1], last_layer=i >= len(filters) - 2)
                                         for i in range(len(filters) - 1)])
        self.voxel_x, self.voxel_y, self.voxel_z = voxel_size
        self.x_offset = self.voxel_x / 2 + pc_range[0]
        self.y_offset = self.voxel_y / 2 + pc_range[1]
        self.z_offset = self.voxel_z / 2 + pc_range[2]

    def forward(self, voxel_features, voxel_num_points, coords):
        points_mean = voxel_features[:, :, :3].sum(dim=1, keepdim=True) / voxel_num_points.type_as(voxel_features).view(-1, 1, 1)
        f_cluster = voxel_features[:, :, :3] - points_mean
        f_center = torch.zeros_like(voxel_features[:, :, :3])
        f_center[:, :, 0] = voxel_features[:, :, 0] - (coords[:, 3].to(voxel_features.dtype).unsqueeze(1) * self.voxel_x + self.x_offset)
        f_center[:, :, 1] = voxel_features[:, :, 1] - (coords[:, 2].to(voxel_features.dtype).unsqueeze(1) * self.voxel_y + self.y_offset)
        f_center[:, :, 2] = voxel_features[:, :, 2] - (coords[:, 1].to(voxel_features.dtype).unsqueeze(1) * self.voxel_z + self.z_offset)
        features = torch.cat([voxel_features, f_cluster, f_center], dim=-1)
        voxel_count = features.shape[1]
        mask = get_paddings_indicator(voxel_num_points, voxel_count, axis=0)
        mask = torch.unsqueeze(mask, -1).type_as(voxel_features)
        features *= mask
        for pfn in self.pfn_layers:
            features = pfn(features)
        return features.squeeze()


class PointPillarScatter(nn.Module):
    def __init__(self, num_bev_features=32, grid_size=(16, 16, 1)):
        super().__init__()
        self.num_bev_features = num_bev_features
        self.nx, self.ny, self.nz = grid_size

    def forward(self, pillar_features, coords):
        batch_spatial_features = []
        batch_size = coords[:, 0].max().int().item() + 1
        for batch_idx in range(batch_size):
            spatial_feature = torch.zeros(self.num_bev_features, self.nz * self.nx * self.ny, dtype=pillar_features.dtype,
                                          device=pillar_features.device)
            batch_mask = coords[:, 0] == batch_idx
            this_coords = coords[batch_mask, :]
            indices = this_coords[:, 1] + this_coords[:, 2] * self.nx + this_coords[:, 3]
            indices = indices.type(torch.long)
            pillars = pillar_features[batch_mask, :]
            pillars = pillars.t()
            spatial_feature[:, indices] = pillars
            batch_spatial_features.append(spatial_feature)
        batch_spatial_features = torch.stack(batch_spatial_features, 0)
        return batch_spatial_features.view(batch_size, self.num_bev_features * self.nz, self.ny, self.nx)


class PointPillars(nn.Module):
    def __init__(self):
        super().__init__()
        self.vfe = PillarVFE()
        self.scatter = PointPillarScatter()
        self.backbone = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.conv_cls = nn.Conv2d(32, 2 * 3, 1)
        self.conv_box = nn.Conv2d(32, 2 * 7, 1)

    def forward(self, voxels, voxel_num_points, voxel_coords):
        pillar_features = self.vfe(voxels, voxel_num_points, voxel_coords)
        spatial_features = self.scatter(pillar_features, voxel_coords)
        x = self.backbone(spatial_features)
        return {'cls_preds': self.conv_cls(x).permute(0, 2, 3, 1).contiguous(),
                'box_preds': self.conv_box(x).permute(0, 2, 3, 1).contiguous()}


def _pillars(n: int, g: torch.Generator, per: int = 12, pts: int = 6, nx: int = 16, ny: int = 16) -> tuple:
    """OpenPCDet's flat voxel batch: (P, pts, 4) points, (P,) counts, (P, 4) int coords [b, z, y, x] (unique per sample)."""
    coords = []
    for b in range(n):
        cells = torch.randperm(nx * ny, generator=g)[:per]
        coords.append(torch.stack([torch.full((per,), b), torch.zeros(per, dtype=torch.long), cells // nx, cells % nx], 1))
    coords = torch.cat(coords).int()
    num = torch.randint(1, pts + 1, (n * per,), generator=g).int()
    base = torch.stack([coords[:, 3].float() * 0.5 + 0.25, coords[:, 2].float() * 0.5 - 3.75, torch.full((n * per,), -1.0)], 1)
    xyz = base[:, None] + torch.randn(n * per, pts, 3, generator=g) * 0.15
    vox = torch.cat([xyz, torch.rand(n * per, pts, 1, generator=g)], -1)
    vox = vox * (torch.arange(pts)[None, :, None] < num[:, None, None])
    return vox, num, coords


# --- VoxelNet-style batched BEV scatter ------------------------------------------------------------------------------
class BEVScatterNet(nn.Module):
    """Per-sample fixed pillar count: ``canvas.scatter_(2, (y * W + x) expanded over C, feats)``, then a conv head."""

    def __init__(self, C=16, H=16, W=16):
        super().__init__()
        self.C, self.H, self.W = C, H, W
        self.point_net = nn.Sequential(nn.Linear(4, C), nn.LayerNorm(C), nn.ReLU(), nn.Linear(C, C))
        self.head = nn.Sequential(nn.Conv2d(C, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 1))

    def forward(self, pillars, xy):
        B, P, _, _ = pillars.shape
        feats = self.point_net(pillars).max(dim=2)[0]  # (B, P, C)
        flat = (xy[..., 1] * self.W + xy[..., 0]).long()  # (B, P)
        canvas = pillars.new_zeros(B, self.C, self.H * self.W)
        canvas.scatter_(2, flat.unsqueeze(1).expand(-1, self.C, -1), feats.transpose(1, 2))
        occupancy = torch.zeros(B, self.H * self.W, device=pillars.device).scatter_(1, flat, 1.0)
        canvas = canvas.view(B, self.C, self.H, self.W)
        return self.head(canvas), occupancy.view(B, 1, self.H, self.W)


def _bev_pillars(n: int, g: torch.Generator, per: int = 20, pts: int = 5) -> tuple:
    cells = torch.stack([torch.randperm(256, generator=g)[:per] for _ in range(n)])
    xy = torch.stack([cells % 16, cells // 16], -1).int()
    return torch.randn(n, per, pts, 4, generator=g), xy


# --- monodepth2 (nianticlabs/monodepth2 layers.py) -------------------------------------------------------------------
def disp_to_depth(disp, min_depth, max_depth):
    min_disp = 1 / max_depth
    max_disp = 1 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * disp
    depth = 1 / scaled_disp
    return scaled_disp, depth


def rot_from_axisangle(vec):
    angle = torch.norm(vec, 2, 2, True)
    axis = vec / (angle + 1e-7)
    ca = torch.cos(angle)
    sa = torch.sin(angle)
    C = 1 - ca
    x, y, z = axis[..., 0].unsqueeze(1), axis[..., 1].unsqueeze(1), axis[..., 2].unsqueeze(1)
    xs, ys, zs = x * sa, y * sa, z * sa
    xC, yC, zC = x * C, y * C, z * C
    xyC, yzC, zxC = x * yC, y * zC, z * xC
    rot = torch.zeros((vec.shape[0], 4, 4)).to(device=vec.device)
    rot[:, 0, 0] = torch.squeeze(x * xC + ca)
    rot[:, 0, 1] = torch.squeeze(xyC - zs)
    rot[:, 0, 2] = torch.squeeze(zxC + ys)
    rot[:, 1, 0] = torch.squeeze(xyC + zs)
    rot[:, 1, 1] = torch.squeeze(y * yC + ca)
    rot[:, 1, 2] = torch.squeeze(yzC - xs)
    rot[:, 2, 0] = torch.squeeze(zxC - ys)
    rot[:, 2, 1] = torch.squeeze(yzC + xs)
    rot[:, 2, 2] = torch.squeeze(z * zC + ca)
    rot[:, 3, 3] = 1
    return rot


def get_translation_matrix(translation_vector):
    T = torch.zeros(translation_vector.shape[0], 4, 4).to(device=translation_vector.device)
    t = translation_vector.contiguous().view(-1, 3, 1)
    T[:, 0, 0] = 1
    T[:, 1, 1] = 1
    T[:, 2, 2] = 1
    T[:, 3, 3] = 1
    T[:, :3, 3, None] = t
    return T


def transformation_from_parameters(axisangle, translation, invert=False):
    R = rot_from_axisangle(axisangle)
    t = translation.clone()
    if invert:
        R = R.transpose(1, 2)
        t *= -1
    T = get_translation_matrix(t)
    if invert:
        M = torch.matmul(R, T)
    else:
        M = torch.matmul(T, R)
    return M


class BackprojectDepth(nn.Module):
    """As in monodepth2 but the pixel grid kept batch-free (the repo bakes ``batch_size`` into its parameters)."""

    def __init__(self, height, width):
        super().__init__()
        self.height, self.width = height, width
        meshgrid = np.meshgrid(range(self.width), range(self.height), indexing='xy')
        self.id_coords = np.stack(meshgrid, axis=0).astype(np.float32)
        self.id_coords = nn.Parameter(torch.from_numpy(self.id_coords), requires_grad=False)
        self.ones = nn.Parameter(torch.ones(1, 1, self.height * self.width), requires_grad=False)
        self.pix_coords = torch.unsqueeze(torch.stack([self.id_coords[0].view(-1), self.id_coords[1].view(-1)], 0), 0)
        self.pix_coords = nn.Parameter(torch.cat([self.pix_coords, self.ones], 1), requires_grad=False)

    def forward(self, depth, inv_K):
        batch_size = depth.shape[0]
        cam_points = torch.matmul(inv_K[:, :3, :3], self.pix_coords.expand(batch_size, -1, -1))
        cam_points = depth.view(batch_size, 1, -1) * cam_points
        cam_points = torch.cat([cam_points, self.ones.expand(batch_size, -1, -1)], 1)
        return cam_points


class Project3D(nn.Module):
    def __init__(self, height, width, eps=1e-7):
        super().__init__()
        self.height, self.width, self.eps = height, width, eps

    def forward(self, points, K, T):
        batch_size = points.shape[0]
        P = torch.matmul(K, T)[:, :3, :]
        cam_points = torch.matmul(P, points)
        pix_coords = cam_points[:, :2, :] / (cam_points[:, 2, :].unsqueeze(1) + self.eps)
        pix_coords = pix_coords.view(batch_size, 2, self.height, self.width)
        pix_coords = pix_coords.permute(0, 2, 3, 1)
        pix_coords[..., 0] /= self.width - 1
        pix_coords[..., 1] /= self.height - 1
        pix_coords = (pix_coords - 0.5) * 2
        return pix_coords


class MonoDepth2(nn.Module):
    def __init__(self, H=16, W=24):
        super().__init__()
        self.depth_enc = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.depth_dec = nn.Sequential(nn.Upsample(scale_factor=2, mode='nearest'), nn.Conv2d(32, 16, 3, 1, 1), nn.ELU(),
                                       nn.Upsample(scale_factor=2, mode='nearest'), nn.ReflectionPad2d(1), nn.Conv2d(16, 1, 3))
        self.pose_enc = nn.Sequential(nn.Conv2d(6, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.pose_conv = nn.Conv2d(32, 6, 1)
        self.backproject = BackprojectDepth(H, W)
        self.project = Project3D(H, W)

    def forward(self, target, source, K, inv_K):
        disp = torch.sigmoid(self.depth_dec(self.depth_enc(target)))
        _, depth = disp_to_depth(disp, 0.1, 100.0)
        out = self.pose_conv(self.pose_enc(torch.cat([source, target], 1)))
        out = out.mean(3).mean(2)
        out = 0.01 * out.view(-1, 1, 1, 6)
        axisangle, translation = out[..., :3], out[..., 3:]
        T = transformation_from_parameters(axisangle[:, 0], translation[:, 0], invert=True)
        cam_points = self.backproject(depth, inv_K)
        pix_coords = self.project(cam_points, K, T)
        warped = F.grid_sample(source, pix_coords, padding_mode="border", align_corners=True)
        reprojection = torch.abs(target - warped).mean(1, True)
        return {"disp": disp, "depth": depth, "warped": warped, "reprojection": reprojection}


def _intrinsics(n: int, H: int, W: int) -> tuple:
    K = torch.tensor([[0.58 * W, 0, 0.5 * W, 0], [0, 1.92 * H, 0.5 * H, 0], [0, 0, 1, 0], [0, 0, 0, 1]]).expand(n, 4, 4).clone()
    return K, torch.linalg.inv(K)


def _monodepth_inputs(n: int, g: torch.Generator) -> tuple:
    K, inv_K = _intrinsics(n, 16, 24)
    return torch.rand(n, 3, 16, 24, generator=g), torch.rand(n, 3, 16, 24, generator=g), K, inv_K


# --- PIFu-style pixel-aligned features (shunsukesaito/PIFu lib/geometry.py orthogonal/perspective + index) ------------
class PixelAligned(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_filter = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.GroupNorm(4, 16), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1))
        self.mlp = nn.Sequential(nn.Conv1d(16 + 1, 32, 1), nn.LeakyReLU(), nn.Conv1d(32, 1, 1), nn.Sigmoid())

    def forward(self, images, points, K, R, t):
        feat = self.image_filter(images)
        X = torch.bmm(R, points.transpose(1, 2)) + t.unsqueeze(-1)  # (B, 3, N): R @ X + t
        uvz = torch.bmm(K, X)
        z = uvz[:, 2:3].clamp(min=1e-5)
        uv = uvz[:, :2] / z
        H, W = images.shape[-2:]
        uv_n = torch.stack([uv[:, 0] / (W - 1) * 2 - 1, uv[:, 1] / (H - 1) * 2 - 1], -1)  # (B, N, 2)
        in_img = ((uv_n.abs() <= 1).all(-1) & (X[:, 2] > 0)).float()
        samples = F.grid_sample(feat, uv_n.unsqueeze(2), align_corners=True)[..., 0]  # (B, C, N)
        occ = self.mlp(torch.cat([samples, X[:, 2:3]], 1))[:, 0]
        return occ * in_img, uv


def _pifu_inputs(n: int, g: torch.Generator) -> tuple:
    K = torch.tensor([[20.0, 0, 11.5], [0, 20.0, 11.5], [0, 0, 1]]).expand(n, 3, 3).clone()
    ang = torch.rand(n, generator=g) * 0.4
    R = torch.zeros(n, 3, 3)
    R[:, 0, 0], R[:, 0, 2], R[:, 1, 1], R[:, 2, 0], R[:, 2, 2] = ang.cos(), ang.sin(), 1, -ang.sin(), ang.cos()
    t = torch.tensor([0.0, 0.0, 3.0]) + torch.randn(n, 3, generator=g) * 0.1
    return torch.rand(n, 3, 24, 24, generator=g), torch.randn(n, 32, 3, generator=g) * 0.5, K, R, t


# --- pytorch3d rotation conversions (facebookresearch/pytorch3d pytorch3d/transforms/rotation_conversions.py, so3.py) --
def quaternion_to_matrix(quaternions):
    r, i, j, k = torch.unbind(quaternions, -1)
    two_s = 2.0 / (quaternions * quaternions).sum(-1)
    o = torch.stack((
        1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
        two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
        two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
    ), -1)
    return o.reshape(quaternions.shape[:-1] + (3, 3))


def standardize_quaternion(quaternions):
    return torch.where(quaternions[..., 0:1] < 0, -quaternions, quaternions)


class QuaternionPoseNet(nn.Module):
    """PoseCNN/DenseFusion-style head: PointNet features, ``F.normalize`` quaternion, rotate the model points."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Sequential(nn.Conv1d(3, 32, 1), nn.ReLU(), nn.Conv1d(32, 64, 1), nn.ReLU())
        self.rot = nn.Linear(64, 4)
        self.trans = nn.Linear(64, 3)

    def forward(self, points):
        f = self.feat(points.transpose(1, 2)).max(-1)[0]
        q = standardize_quaternion(F.normalize(self.rot(f) + torch.tensor([1.0, 0, 0, 0]), dim=-1))
        R = quaternion_to_matrix(q)
        t = self.trans(f)
        pred = torch.einsum("bij,bnj->bni", R, points) + t[:, None, :]
        return pred, q, R


def hat(v):
    N, dim = v.shape
    h = torch.zeros((N, 3, 3), dtype=v.dtype, device=v.device)
    x, y, z = v.unbind(1)
    h[:, 0, 1] = -z
    h[:, 0, 2] = y
    h[:, 1, 0] = z
    h[:, 1, 2] = -x
    h[:, 2, 0] = -y
    h[:, 2, 1] = x
    return h


def _so3_exp_map(log_rot, eps=0.0001):
    _, dim = log_rot.shape
    nrms = (log_rot * log_rot).sum(1)
    rot_angles = torch.clamp(nrms, eps).sqrt()
    rot_angles_inv = 1.0 / rot_angles
    fac1 = rot_angles_inv * rot_angles.sin()
    fac2 = rot_angles_inv * rot_angles_inv * (1.0 - rot_angles.cos())
    skews = hat(log_rot)
    skews_square = torch.bmm(skews, skews)
    R = fac1[:, None, None] * skews + fac2[:, None, None] * skews_square + torch.eye(3, dtype=log_rot.dtype, device=log_rot.device)[None]
    return R, rot_angles, skews, skews_square


def se3_exp_map(log_transform, eps=0.0001):
    log_translation = log_transform[..., :3]
    log_rotation = log_transform[..., 3:]
    R, rotation_angles, log_rotation_hat, log_rotation_hat_square = _so3_exp_map(log_rotation, eps=eps)
    V = (torch.eye(3, dtype=log_transform.dtype)[None]
         + log_rotation_hat * ((1 - torch.cos(rotation_angles)) / (rotation_angles ** 2))[:, None, None]
         + log_rotation_hat_square * ((rotation_angles - torch.sin(rotation_angles)) / (rotation_angles ** 3))[:, None, None])
    T = torch.bmm(V, log_translation[:, :, None])[:, :, 0]
    transform = torch.zeros(log_transform.shape[0], 4, 4, dtype=log_transform.dtype, device=log_transform.device)
    transform[:, :3, :3] = R
    transform[:, :3, 3] = T
    transform[:, 3, 3] = 1.0
    return transform.permute(0, 2, 1)


class SE3Flow(nn.Module):
    """Scene-flow style rigid motion: a twist from a PointNet, ``se3_exp_map`` (pytorch3d's row-vector convention),
    points moved by homogeneous ``bmm``, and rigid-body velocities ``v + torch.cross(w, r)``."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Sequential(nn.Conv1d(3, 32, 1), nn.ReLU(), nn.Conv1d(32, 64, 1), nn.ReLU())
        self.twist = nn.Linear(64, 6)

    def forward(self, points):
        f = self.feat(points.transpose(1, 2)).max(-1)[0]
        xi = 0.5 * torch.tanh(self.twist(f))
        M = se3_exp_map(xi)
        homo = torch.cat([points, torch.ones_like(points[..., :1])], -1)
        moved = torch.bmm(homo, M)[..., :3]
        v, w = xi[:, None, :3], xi[:, None, 3:]
        centered = points - points.mean(1, keepdim=True)
        vel = v + torch.cross(w.expand_as(centered), centered, dim=-1)
        return moved, vel, M


def _points(n: int, g: torch.Generator, pts: int = 32) -> tuple:
    return (torch.randn(n, pts, 3, generator=g),)


# --- HMR / SPIN iterative regressor with the 6-D representation (nkolot/SPIN models/hmr.py, utils/geometry.py) -------
def rot6d_to_rotmat(x):
    x = x.view(-1, 3, 2)
    a1 = x[:, :, 0]
    a2 = x[:, :, 1]
    b1 = F.normalize(a1)
    b2 = F.normalize(a2 - torch.einsum('bi,bi->b', b1, a2).unsqueeze(-1) * b1)
    b3 = torch.cross(b1, b2, dim=1)
    return torch.stack((b1, b2, b3), dim=-1)


class HMRRegressor(nn.Module):
    def __init__(self, npose=6 * 8, feat=64):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, feat, 3, 2, 1),
                                     nn.BatchNorm2d(feat), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc1 = nn.Linear(feat + npose + 10 + 3, 64)
        self.drop1 = nn.Dropout()
        self.fc2 = nn.Linear(64, 64)
        self.drop2 = nn.Dropout()
        self.decpose = nn.Linear(64, npose)
        self.decshape = nn.Linear(64, 10)
        self.deccam = nn.Linear(64, 3)
        nn.init.xavier_uniform_(self.decpose.weight, gain=0.01)
        nn.init.xavier_uniform_(self.decshape.weight, gain=0.01)
        nn.init.xavier_uniform_(self.deccam.weight, gain=0.01)
        g = torch.Generator().manual_seed(3)
        self.register_buffer('init_pose', torch.tensor([1.0, 0, 0, 1, 0, 0] * (npose // 6)).unsqueeze(0)
                             + 0.1 * torch.randn(1, npose, generator=g))
        self.register_buffer('init_shape', 0.1 * torch.randn(1, 10, generator=g))
        self.register_buffer('init_cam', torch.tensor([[0.9, 0, 0]]))

    def forward(self, x, n_iter=3):
        batch_size = x.shape[0]
        init_pose = self.init_pose.expand(batch_size, -1)
        init_shape = self.init_shape.expand(batch_size, -1)
        init_cam = self.init_cam.expand(batch_size, -1)
        xf = self.encoder(x).view(x.size(0), -1)
        pred_pose, pred_shape, pred_cam = init_pose, init_shape, init_cam
        for i in range(n_iter):  # noqa: B007 - as SPIN writes it
            xc = torch.cat([xf, pred_pose, pred_shape, pred_cam], 1)
            xc = self.drop1(self.fc1(xc))
            xc = self.drop2(self.fc2(xc))
            pred_pose = self.decpose(xc) + pred_pose
            pred_shape = self.decshape(xc) + pred_shape
            pred_cam = self.deccam(xc) + pred_cam
        pred_rotmat = rot6d_to_rotmat(pred_pose).view(batch_size, 8, 3, 3)
        return pred_rotmat, pred_shape, pred_cam


# --- Pixel2Mesh-style graph convolution with Laplacian smoothing --------------------------------------------------------
def _icosahedron():
    t = (1.0 + 5 ** 0.5) / 2
    v = torch.tensor([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                      [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=torch.float32)
    f = torch.tensor([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                      [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11],
                      [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    return F.normalize(v, dim=-1), f


class GConv(nn.Module):
    def __init__(self, in_features, out_features, adj_mat):
        super().__init__()
        self.register_buffer("adj_mat", adj_mat)
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.loop_weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.xavier_uniform_(self.weight)
        nn.init.xavier_uniform_(self.loop_weight)

    def forward(self, inputs):
        support = torch.matmul(inputs, self.weight)
        support_loop = torch.matmul(inputs, self.loop_weight)
        output = torch.matmul(self.adj_mat, support) + support_loop  # dense adjacency as in Pixel2Mesh's dense fallback
        return output + self.bias


class MeshDeform(nn.Module):
    def __init__(self, hidden=32, feat=16):
        super().__init__()
        verts, faces = _icosahedron()
        self.register_buffer("verts", verts)
        self.register_buffer("edges", torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]))
        V = verts.shape[0]
        A = torch.zeros(V, V)
        A[self.edges[:, 0], self.edges[:, 1]] = 1
        A = ((A + A.t()) > 0).float()
        deg = A.sum(1, keepdim=True)
        self.img = nn.Sequential(nn.Conv2d(3, feat, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.g1 = GConv(3 + feat, hidden, A / deg)
        self.g2 = GConv(hidden, hidden, A / deg)
        self.g3 = GConv(hidden, 3, A / deg)

    def forward(self, image, lam: float = 0.3):
        B = image.shape[0]
        f = self.img(image)
        v = self.verts.unsqueeze(0).expand(B, -1, -1)
        x = torch.cat([v, f[:, None, :].expand(-1, v.shape[1], -1)], -1)
        x = F.relu(self.g1(x))
        x = F.relu(self.g2(x)) + x
        verts = v + 0.1 * torch.tanh(self.g3(x))
        V = verts.shape[1]
        A = torch.zeros(V, V, device=verts.device)
        A[self.edges[:, 0], self.edges[:, 1]] = 1.0
        A = A + A.t()
        A = (A > 0).to(verts.dtype)
        deg = A.sum(-1)
        L = A / deg[:, None] - torch.eye(V, device=verts.device)  # uniform Laplacian
        lap = torch.matmul(L, verts)
        smoothed = verts + lam * lap
        lap_loss = lap.norm(dim=-1).mean(-1)
        return smoothed, lap_loss


# --- Occupancy Networks decoder (autonomousvision/occupancy_networks im2mesh/layers.py, onet/models/decoder.py) -------
class CBatchNorm1d(nn.Module):
    def __init__(self, c_dim, f_dim, norm_method='batch_norm'):
        super().__init__()
        self.c_dim, self.f_dim = c_dim, f_dim
        self.conv_gamma = nn.Conv1d(c_dim, f_dim, 1)
        self.conv_beta = nn.Conv1d(c_dim, f_dim, 1)
        self.bn = nn.BatchNorm1d(f_dim, affine=False)
        nn.init.zeros_(self.conv_gamma.weight)
        nn.init.zeros_(self.conv_beta.weight)
        nn.init.ones_(self.conv_gamma.bias)
        nn.init.zeros_(self.conv_beta.bias)

    def forward(self, x, c):
        assert (x.size(0) == c.size(0))
        assert (c.size(1) == self.c_dim)
        if len(c.size()) == 2:
            c = c.unsqueeze(2)
        gamma = self.conv_gamma(c)
        beta = self.conv_beta(c)
        net = self.bn(x)
        out = gamma * net + beta
        return out


class CResnetBlockConv1d(nn.Module):
    def __init__(self, c_dim, size_in):
        super().__init__()
        self.bn_0 = CBatchNorm1d(c_dim, size_in)
        self.bn_1 = CBatchNorm1d(c_dim, size_in)
        self.fc_0 = nn.Conv1d(size_in, size_in, 1)
        self.fc_1 = nn.Conv1d(size_in, size_in, 1)
        self.actvn = nn.ReLU()

    def forward(self, x, c):
        net = self.fc_0(self.actvn(self.bn_0(x, c)))
        dx = self.fc_1(self.actvn(self.bn_1(net, c)))
        return x + dx


class DecoderCBatchNorm(nn.Module):
    def __init__(self, dim=3, c_dim=32, hidden_size=32):
        super().__init__()
        self.fc_p = nn.Conv1d(dim, hidden_size, 1)
        self.blocks = nn.ModuleList([CResnetBlockConv1d(c_dim, hidden_size) for _ in range(3)])
        self.bn = CBatchNorm1d(c_dim, hidden_size)
        self.fc_out = nn.Conv1d(hidden_size, 1, 1)
        self.actvn = F.relu

    def forward(self, p, c):
        p = p.transpose(1, 2)
        net = self.fc_p(p)
        for block in self.blocks:
            net = block(net, c)
        out = self.fc_out(self.actvn(self.bn(net, c)))
        return out.squeeze(1)


class OccupancyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 32))
        self.decoder = DecoderCBatchNorm()
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():  # trained conditioning layers (the init above makes them constant)
            for m in self.decoder.modules():
                if isinstance(m, CBatchNorm1d):
                    m.conv_gamma.weight.normal_(0, 0.1, generator=g)
                    m.conv_beta.weight.normal_(0, 0.1, generator=g)

    def forward(self, inputs, p):
        c = self.encoder(inputs)
        logits = self.decoder(p, c)
        return torch.distributions.Bernoulli(logits=logits).probs


# --- NeuS SDF network (Totoro97/NeuS models/fields.py SDFNetwork, embedder.py) --------------------------------------
class SDFNetwork(nn.Module):
    def __init__(self, d_in=3, d_out=17, d_hidden=64, n_layers=6, skip_in=(3,), multires=4, bias=0.5, scale=1,
                 geometric_init=True, weight_norm=True, inside_outside=False):
        super().__init__()
        dims = [d_in] + [d_hidden for _ in range(n_layers)] + [d_out]
        self.embed_fn_fine = None
        if multires > 0:
            embed_fn, input_ch = get_embedder(multires)
            self.embed_fn_fine = embed_fn
            dims[0] = input_ch
        self.num_layers = len(dims)
        self.skip_in = skip_in
        self.scale = scale
        for l in range(0, self.num_layers - 1):  # noqa: E741
            if l + 1 in self.skip_in:
                out_dim = dims[l + 1] - dims[0]
            else:
                out_dim = dims[l + 1]
            lin = nn.Linear(dims[l], out_dim)
            if geometric_init:
                if l == self.num_layers - 2:
                    if not inside_outside:
                        torch.nn.init.normal_(lin.weight, mean=np.sqrt(np.pi) / np.sqrt(dims[l]), std=0.0001)
                        torch.nn.init.constant_(lin.bias, -bias)
                elif multires > 0 and l == 0:
                    torch.nn.init.constant_(lin.bias, 0.0)
                    torch.nn.init.constant_(lin.weight[:, 3:], 0.0)
                    torch.nn.init.normal_(lin.weight[:, :3], 0.0, np.sqrt(2) / np.sqrt(out_dim))
                elif multires > 0 and l in self.skip_in:
                    torch.nn.init.constant_(lin.bias, 0.0)
                    torch.nn.init.normal_(lin.weight, 0.0, np.sqrt(2) / np.sqrt(out_dim))
                    torch.nn.init.constant_(lin.weight[:, -(dims[0] - 3):], 0.0)
                else:
                    torch.nn.init.constant_(lin.bias, 0.0)
                    torch.nn.init.normal_(lin.weight, 0.0, np.sqrt(2) / np.sqrt(out_dim))
            if weight_norm:
                lin = nn.utils.weight_norm(lin)
            setattr(self, "lin" + str(l), lin)
        self.activation = nn.Softplus(beta=100)

    def forward(self, inputs):
        inputs = inputs * self.scale
        if self.embed_fn_fine is not None:
            inputs = self.embed_fn_fine(inputs)
        x = inputs
        for l in range(0, self.num_layers - 1):  # noqa: E741
            lin = getattr(self, "lin" + str(l))
            if l in self.skip_in:
                x = torch.cat([x, inputs], 1) / np.sqrt(2)
            x = lin(x)
            if l < self.num_layers - 2:
                x = self.activation(x)
        return torch.cat([x[:, :1] / self.scale, x[:, 1:]], dim=-1)


class NeuSSDF(nn.Module):
    """SDF plus NeuS's single-variance ``s = exp(10 * variance)`` and the logistic density of the SDF."""

    def __init__(self):
        super().__init__()
        self.sdf_network = SDFNetwork()
        self.variance = nn.Parameter(torch.tensor(0.3))

    def forward(self, pts):
        out = self.sdf_network(pts)
        sdf, feature = out[:, :1], out[:, 1:]
        inv_s = torch.ones([1, 1]) * torch.exp(self.variance * 10.0)
        inv_s = inv_s.expand(pts.shape[0], 1)
        density = inv_s * torch.sigmoid(-sdf * inv_s) * (1 - torch.sigmoid(-sdf * inv_s))
        return sdf, feature, density


# --- FoldingNet decoder + chamfer distance (AnTao97/UnsupervisedPointCloudReconstruction-style) ------------------------
def chamfer_distance(x, y):
    d = torch.sum((x[:, :, None, :] - y[:, None, :, :]) ** 2, dim=-1)  # (B, N, M)
    dist1, idx1 = torch.min(d, dim=2)
    dist2, _ = torch.min(d, dim=1)
    return dist1.mean(1) + dist2.mean(1), idx1


class FoldingNet(nn.Module):
    def __init__(self, code=64, m=36):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(3, 32, 1), nn.BatchNorm1d(32), nn.ReLU(), nn.Conv1d(32, code, 1))
        side = int(math.sqrt(m))
        xx = np.linspace(-0.3, 0.3, side, dtype=np.float32)
        grid = np.array(list(__import__("itertools").product(xx, xx)))  # the repo's itertools.product grid
        self.register_buffer("plane", torch.from_numpy(grid.astype(np.float32)).t().contiguous())  # (2, m)
        self.m = m
        self.folding1 = nn.Sequential(nn.Conv1d(code + 2, 64, 1), nn.ReLU(), nn.Conv1d(64, 64, 1), nn.ReLU(), nn.Conv1d(64, 3, 1))
        self.folding2 = nn.Sequential(nn.Conv1d(code + 3, 64, 1), nn.ReLU(), nn.Conv1d(64, 64, 1), nn.ReLU(), nn.Conv1d(64, 3, 1))

    def forward(self, pts):
        x = self.encoder(pts.transpose(2, 1))
        codeword = torch.max(x, 2, keepdim=True)[0]
        x = codeword.repeat(1, 1, self.m)
        points = self.plane.unsqueeze(0).repeat(x.size(0), 1, 1)
        cat1 = torch.cat((x, points), dim=1)
        folding_result1 = self.folding1(cat1)
        cat2 = torch.cat((x, folding_result1), dim=1)
        folding_result2 = self.folding2(cat2)
        recon = folding_result2.transpose(1, 2)
        cd, nearest = chamfer_distance(recon, pts)
        return recon, cd, nearest


# --- 3-D spatial transformer with deformable offsets on volumes ------------------------------------------------------
class DeformSample3d(nn.Module):
    """A 3-D STN (``affine_grid`` on a 5-D size, identity-initialised ``(B, 3, 4)`` theta) followed by per-voxel predicted
    offsets added to the grid and ``grid_sample`` on the volume (VoxelMorph-style ``SpatialTransformer`` warping)."""

    def __init__(self, C=4):
        super().__init__()
        self.loc = nn.Sequential(nn.Conv3d(C, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 12))
        nn.init.zeros_(self.loc[-1].weight)
        self.loc[-1].bias.data.copy_(torch.tensor([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0], dtype=torch.float))
        self.offset = nn.Conv3d(C, 3, 3, padding=1)
        nn.init.normal_(self.offset.weight, 0, 1e-2)
        nn.init.zeros_(self.offset.bias)
        self.head = nn.Conv3d(C, 2, 1)

    def forward(self, vol):
        theta = self.loc(vol).view(-1, 3, 4)
        grid = F.affine_grid(theta, vol.size(), align_corners=False)
        x = F.grid_sample(vol, grid, align_corners=False)
        flow = self.offset(x)  # (B, 3, D, H, W) in normalised units
        new_locs = grid + flow.permute(0, 2, 3, 4, 1)
        warped = F.grid_sample(x, new_locs, mode="bilinear", padding_mode="zeros", align_corners=False)
        return self.head(warped), flow


# --- Range image by spherical projection (PRBonn/lidar-bonnetal laserscan.py do_range_projection, SqueezeSeg) --------
class RangeImageNet(nn.Module):
    def __init__(self, H=16, W=32, fov_up=3.0, fov_down=-25.0):
        super().__init__()
        self.H, self.W = H, W
        self.fov_up, self.fov_down = fov_up / 180.0 * np.pi, fov_down / 180.0 * np.pi
        self.net = nn.Sequential(nn.Conv2d(5, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 3, 1))

    def forward(self, points, remission):
        fov = abs(self.fov_down) + abs(self.fov_up)
        depth = torch.linalg.norm(points, 2, dim=-1)
        scan_x, scan_y, scan_z = points[..., 0], points[..., 1], points[..., 2]
        yaw = -torch.atan2(scan_y, scan_x)
        pitch = torch.asin(torch.clamp(scan_z / depth, -1, 1))
        proj_x = 0.5 * (yaw / np.pi + 1.0)
        proj_y = 1.0 - (pitch + abs(self.fov_down)) / fov
        proj_x = torch.clamp(torch.floor(proj_x * self.W), 0, self.W - 1).long()
        proj_y = torch.clamp(torch.floor(proj_y * self.H), 0, self.H - 1).long()
        flat = proj_y * self.W + proj_x  # (B, N)
        B = points.shape[0]
        img = []
        for value in (depth, scan_x, scan_y, scan_z, remission):
            canvas = torch.full((B, self.H * self.W), -1.0, device=points.device)
            img.append(canvas.scatter_reduce(1, flat, value, reduce="amax", include_self=True))
        range_img = torch.stack(img, 1).view(B, 5, self.H, self.W)
        logits = self.net(range_img)
        point_logits = logits.flatten(2).gather(2, flat.unsqueeze(1).expand(-1, 3, -1))  # back to the points (KNN-free)
        return logits, point_logits


def _scan(n: int, g: torch.Generator, pts: int = 128) -> tuple:
    r = torch.rand(n, pts, generator=g) * 8 + 2
    yaw = torch.rand(n, pts, generator=g) * 2 * np.pi - np.pi
    pitch = (torch.rand(n, pts, generator=g) * 26 - 24) / 180 * np.pi
    xyz = torch.stack([r * pitch.cos() * yaw.cos(), r * pitch.cos() * yaw.sin(), r * pitch.sin()], -1)
    return xyz, torch.rand(n, pts, generator=g)


def _hmr_images(n, g):
    return (torch.rand(n, 3, 32, 32, generator=g),)


CASES = {
    "pointnet_two_tnets": ("fxia22 PointNet cls: STN3d + STNkd(16) with numpy identity .repeat(batchsize, 1), bmm by the "
                           "predicted transforms, BatchNorm1d MLPs, max over points, (log_softmax, trans, trans_feat)",
                           lambda: (_trained_norms(PointNetCls()), _cloud)),
    "pointnet2_ballquery_fp": ("yanx27 PointNet++ seg: FPS loop (masked assign, torch.max index), query_ball_point "
                               "(group_idx[d > r^2] = N, sort, first-index fill), points[batch_indices, idx, :], three-NN "
                               "interpolation by sort", lambda: (_trained_norms(PointNet2Seg()), lambda n, g: (
                                   torch.randn(n, 3, 48, generator=g),))),
    "dgcnn_dynamic_graph": ("WangYue DGCNN: knn on -xx - inner - xx^T topk per layer (dynamic graph on features), "
                            "x.view(B*N, -1)[idx + idx_base], cat(f - x, x), Conv2d + max(-1), max+avg adaptive pools",
                            lambda: (_trained_norms(DGCNN()), lambda n, g: _cloud(n, g, 32))),
    "point_transformer_vector": ("Point Transformer layer: square_distance argsort()[:, :, :k], index_points, fc_delta "
                                 "on xyz_i - xyz_j, vector attention softmax(dim=-2), einsum('bmnf,bmnf->bmf')",
                                 lambda: (PointTransformerCls(), lambda n, g: (torch.randn(n, 32, 6, generator=g),))),
    "nerf_raw2outputs": ("nerf-pytorch: Embedder lambdas (2. ** linspace freqs), rays * linspace z_vals, skip cat, "
                         "viewdirs branch, raw2outputs (Tensor([1e10]) delta, 1 - exp(-relu(sigma) d), exclusive cumprod, "
                         "disp = 1 / max(1e-10, depth / acc)) dict", lambda: (NeRFRenderer(), _rays)),
    "hashnerf_hash_grid": ("HashNeRF multiresolution hash grid: floor().long() corners + BOX_OFFSETS, coords * primes xor, "
                           "& (2^T - 1), 6 nn.Embedding levels, trilinear c00..c1, torch.all guard, keep_mask output",
                           lambda: (HashNeRFSmall(), _hash_points)),
    "unet3d_instancenorm": ("pytorch-3dunet: Conv3d + InstanceNorm3d(affine) + LeakyReLU, MaxPool3d, "
                            "ConvTranspose3d(output_size=skip size), cat, softmax only when not training",
                            lambda: (UNet3D(), lambda n, g: (torch.randn(n, 1, 8, 12, 12, generator=g),))),
    "pointpillars_scatter": ("OpenPCDet PointPillars: padding indicator mask, PFN max, f_center slice assigns, "
                             "per-sample loop over coords[:, 0].max().item() + 1 with boolean masks, spatial_feature[:, idx] "
                             "= pillars.t(), BEV conv heads", lambda: (_trained_norms(PointPillars()), _pillars)),
    "bev_scatter_batched": ("VoxelNet-style batched BEV: per-pillar MLP max, (y * W + x).long(), canvas.scatter_(2, idx "
                            "expanded over C), occupancy scatter_ of 1.0, conv head", lambda: (BEVScatterNet(), _bev_pillars)),
    "monodepth2_warp": ("monodepth2: disp_to_depth, axis-angle rot = zeros(B, 4, 4) filled per entry, T[:, :3, 3, None] = t, "
                        "BackprojectDepth matmul(inv_K), Project3D divide by z + eps, in-place /= (W - 1), "
                        "grid_sample(border)", lambda: (MonoDepth2(), _monodepth_inputs)),
    "pifu_projection": ("PIFu-style: K @ (R @ X + t) by bmm, z.clamp(min=1e-5) divide, normalised uv, in-image mask, "
                        "grid_sample at points, Conv1d MLP", lambda: (PixelAligned(), _pifu_inputs)),
    "quaternion_pose": ("pytorch3d quaternion_to_matrix (unbind, two_s, stack, reshape(shape[:-1] + (3, 3))), "
                        "standardize_quaternion where, F.normalize, einsum rotate points", lambda: (QuaternionPoseNet(), _points)),
    "se3_exp_cross": ("pytorch3d se3_exp_map: hat() into zeros by index, fac1/fac2 Rodrigues, V @ t, transform[:, :3, :3] = R, "
                      "permute; homogeneous bmm, v + torch.cross(w, r)", lambda: (SE3Flow(), _points)),
    "hmr_rot6d": ("SPIN/HMR iterative regressor: init_pose/shape/cam buffers expanded, 3 loops of cat + residual updates, "
                  "rot6d_to_rotmat Gram-Schmidt (F.normalize, einsum dot, torch.cross)",
                  lambda: (_trained_norms(HMRRegressor()), _hmr_images)),
    "mesh_laplacian_gcn": ("Pixel2Mesh-style GConv with dense normalised adjacency buffer, icosahedron template, uniform "
                           "Laplacian built in forward (A[e0, e1] = 1, A + A.T, / deg - eye), smoothing + loss",
                           lambda: (MeshDeform(), _hmr_images)),
    "occnet_cbatchnorm": ("Occupancy Networks DecoderCBatchNorm: Conv1d gamma/beta of c.unsqueeze(2), BatchNorm1d(affine=False), "
                          "gamma * bn(x) + beta resnet blocks, Bernoulli(logits).probs", lambda: (
                              _trained_norms(OccupancyNet()), lambda n, g: (torch.rand(n, 3, 32, 32, generator=g),
                                                                            torch.rand(n, 64, 3, generator=g) - 0.5))),
    "neus_sdf_softplus": ("NeuS SDFNetwork: geometric init, old nn.utils.weight_norm, Softplus(beta=100), skip cat / sqrt(2), "
                          "x[:, :1] / scale, exp(10 * variance) logistic density", lambda: (
                              NeuSSDF(), lambda n, g: (torch.rand(n * 16, 3, generator=g) * 2 - 1,))),
    "foldingnet_chamfer": ("FoldingNet: itertools.product plane buffer repeated, codeword repeat + cat, two foldings, "
                           "chamfer distance head (pairwise squared distances, min both ways, argmin)",
                           lambda: (_trained_norms(FoldingNet()), lambda n, g: (torch.randn(n, 40, 3, generator=g) * 0.3,))),
    "deform_grid_sample3d": ("3-D STN: identity-initialised (B, 3, 4) theta, affine_grid on a 5-D size, grid_sample on the "
                             "volume, Conv3d offsets permuted and added to the grid, second grid_sample (VoxelMorph warp)",
                             lambda: (DeformSample3d(), lambda n, g: (torch.randn(n, 4, 6, 8, 8, generator=g),))),
    "range_image_spherical": ("lidar-bonnetal range projection: norm, -atan2(y, x), asin(clamp(z / r)), floor + clamp "
                              ".long() pixel ids, scatter_reduce(amax) canvases, conv head, gather back to points",
                              lambda: (_trained_norms(RangeImageNet()), _scan)),
}
