"""Fifteenth round of user-style models for ``usage_scan.py`` (2026-12-08): scientific ML and recommender models, written
as their reference repositories write them. Science: PyG's SchNet (``torch.cdist`` distances picked along an edge list,
``GaussianSmearing``, cosine cutoff, continuous-filter convolution by ``scatter_add_``, a readout over
``int(batch.max()) + 1`` molecules), a dense EGNN layer (``x_i + sum_j (x_i - x_j) phi(m_ij)`` under an all-pairs padding
mask), MeshGraphNets' processor (running-statistics normalizers, edge MLP over sender/receiver/edge features,
``torch.zeros(...).index_add_`` at receivers, LayerNorm MLPs, residuals), real spherical harmonics up to l = 2 from
``F.normalize``'d bond vectors in a power-spectrum descriptor, a periodic-box potential (``torch.remainder`` wrapping,
minimum image by ``torch.round``), a radius graph built inside ``forward`` by ``nonzero`` (data-dependent edge count),
DimeNet's Bessel basis with its polynomial envelope and learnable frequencies, a PDEArena-style 1-D U-Net with
``padding_mode="circular"``, a Burgers PINN whose ``autograd.grad`` residual runs only in training, and Uni-Mol's atom
transformer (Gaussian pair features of distances and edge types as an attention bias, ``-inf`` key padding). Recommenders:
DCN-v2's matrix cross network and its low-rank mixture (raw ``Parameter`` kernels through ``torch.matmul``), DIN's target
attention (``cat([q, k, q - k, q * k])``, Dice, ``-2 ** 32 + 1`` paddings by ``torch.where``, softmax), SASRec (causal
``nn.MultiheadAttention`` on ``(L, N, E)``, ``timeline_mask``, Conv1d feed-forward, ``(h * item_emb).sum(-1)`` scores),
a two-tower retriever (L2-normalised towers, ``q @ d.T / temperature`` in-batch logits, logQ correction), double hashing
into ``nn.EmbeddingBag(mode="sum")`` with flat values and offsets, DLRM's mixed-dimension and quotient-remainder
embedding bags with ``tril_indices`` dot interactions, MMoE with einsum expert kernels and ESMM's ``ctr * cvr``, wide &
deep on one-hot crossed features, and xDeepFM's CIN (``einsum("bhd,bmd->bhmd")``, Conv1d, ``split_half``).

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.usage_models_research import _trained_norms

PI = math.pi


def _molecules(n: int, g: torch.Generator, atoms: int = 5) -> tuple:
    """``n`` molecules of ``atoms`` atoms as one flat graph (PyG's Batch): ``z``, ``pos``, ``batch`` and every ordered pair
    within a molecule as ``edge_index``."""
    z = torch.randint(1, 10, (n * atoms,), generator=g)
    pos = torch.randn(n * atoms, 3, generator=g) * 1.2
    batch = torch.arange(n).repeat_interleave(atoms)
    i, j = torch.meshgrid(torch.arange(atoms), torch.arange(atoms), indexing="ij")
    keep = i != j
    pairs = torch.stack([i[keep], j[keep]])  # (2, atoms * (atoms - 1))
    edge_index = torch.cat([pairs + k * atoms for k in range(n)], 1)
    return z, pos, batch, edge_index


def _padded_atoms(n: int, g: torch.Generator, atoms: int = 6, types: int = 8) -> tuple:
    """Dense padded molecules: atom types (0 = padding), coordinates, and a boolean mask of real atoms."""
    lengths = torch.randint(3, atoms + 1, (n, 1), generator=g)
    mask = torch.arange(atoms)[None] < lengths
    z = torch.randint(1, types, (n, atoms), generator=g) * mask
    return z, torch.randn(n, atoms, 3, generator=g) * 1.3, mask


# --- SchNet (pyg-team/pytorch_geometric torch_geometric/nn/models/schnet.py) ------------------------------------
class GaussianSmearing(nn.Module):
    def __init__(self, start=0.0, stop=5.0, num_gaussians=16):
        super().__init__()
        offset = torch.linspace(start, stop, num_gaussians)
        self.coeff = -0.5 / (offset[1] - offset[0]).item() ** 2
        self.register_buffer("offset", offset)

    def forward(self, dist):
        dist = dist.view(-1, 1) - self.offset.view(1, -1)
        return torch.exp(self.coeff * torch.pow(dist, 2))


class ShiftedSoftplus(nn.Module):
    def __init__(self):
        super().__init__()
        self.shift = torch.log(torch.tensor(2.0)).item()

    def forward(self, x):
        return F.softplus(x) - self.shift


class CFConv(nn.Module):
    def __init__(self, in_channels, out_channels, num_filters, filter_net, cutoff):
        super().__init__()
        self.lin1 = nn.Linear(in_channels, num_filters, bias=False)
        self.lin2 = nn.Linear(num_filters, out_channels)
        self.nn = filter_net
        self.cutoff = cutoff

    def forward(self, x, edge_index, edge_weight, edge_attr):
        C = 0.5 * (torch.cos(edge_weight * PI / self.cutoff) + 1.0)
        C = C * (edge_weight < self.cutoff).float()
        W = self.nn(edge_attr) * C.view(-1, 1)
        x = self.lin1(x)
        x_j = x[edge_index[0]]  # source_to_target: messages flow j -> i
        msg = x_j * W
        index = edge_index[1].unsqueeze(-1).expand_as(msg)
        out = torch.zeros_like(x).scatter_add_(0, index, msg)
        return self.lin2(out)


class InteractionBlock(nn.Module):
    def __init__(self, hidden_channels, num_gaussians, num_filters, cutoff):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(num_gaussians, num_filters), ShiftedSoftplus(), nn.Linear(num_filters, num_filters))
        self.conv = CFConv(hidden_channels, hidden_channels, num_filters, self.mlp, cutoff)
        self.act = ShiftedSoftplus()
        self.lin = nn.Linear(hidden_channels, hidden_channels)

    def forward(self, x, edge_index, edge_weight, edge_attr):
        x = self.conv(x, edge_index, edge_weight, edge_attr)
        x = self.act(x)
        return self.lin(x)


class SchNet(nn.Module):
    def __init__(self, hidden_channels=32, num_filters=32, num_interactions=2, num_gaussians=16, cutoff=5.0):
        super().__init__()
        self.embedding = nn.Embedding(100, hidden_channels, padding_idx=0)
        self.distance_expansion = GaussianSmearing(0.0, cutoff, num_gaussians)
        self.interactions = nn.ModuleList([InteractionBlock(hidden_channels, num_gaussians, num_filters, cutoff)
                                           for _ in range(num_interactions)])
        self.lin1 = nn.Linear(hidden_channels, hidden_channels // 2)
        self.act = ShiftedSoftplus()
        self.lin2 = nn.Linear(hidden_channels // 2, 1)

    def forward(self, z, pos, batch, edge_index):
        h = self.embedding(z)
        row, col = edge_index
        dist = torch.cdist(pos, pos)
        edge_weight = dist[row, col]
        edge_attr = self.distance_expansion(edge_weight)
        for interaction in self.interactions:
            h = h + interaction(h, edge_index, edge_weight, edge_attr)
        h = self.lin1(h)
        h = self.act(h)
        h = self.lin2(h)
        num_graphs = int(batch.max()) + 1  # torch_scatter's scatter(..., dim_size=None)
        return h.new_zeros(num_graphs, h.size(-1)).index_add_(0, batch, h)


# --- EGNN (vgsatorras/egnn, lucidrains/egnn-pytorch dense form) ---------------------------------------------------
class EGNNLayer(nn.Module):
    def __init__(self, dim, m_dim=16):
        super().__init__()
        self.edge_mlp = nn.Sequential(nn.Linear(dim * 2 + 1, dim * 2), nn.SiLU(), nn.Linear(dim * 2, m_dim), nn.SiLU())
        self.coors_mlp = nn.Sequential(nn.Linear(m_dim, m_dim * 4), nn.SiLU(), nn.Linear(m_dim * 4, 1))
        self.node_mlp = nn.Sequential(nn.Linear(dim + m_dim, dim * 2), nn.SiLU(), nn.Linear(dim * 2, dim))

    def forward(self, feats, coors, mask):
        b, n, d = feats.shape
        rel_coors = coors.unsqueeze(2) - coors.unsqueeze(1)  # x_i - x_j
        rel_dist = (rel_coors ** 2).sum(dim=-1, keepdim=True)
        feats_i = feats.unsqueeze(2).expand(b, n, n, d)
        feats_j = feats.unsqueeze(1).expand(b, n, n, d)
        m_ij = self.edge_mlp(torch.cat((feats_i, feats_j, rel_dist), dim=-1))
        mask_ij = mask.unsqueeze(1) & mask.unsqueeze(2)
        mask_ij = mask_ij & ~torch.eye(n, dtype=torch.bool, device=feats.device)
        coor_weights = self.coors_mlp(m_ij).squeeze(-1)
        coor_weights = coor_weights.masked_fill(~mask_ij, 0.0)
        num_neighbours = mask_ij.sum(-1, keepdim=True).clamp(min=1)
        coors_out = coors + torch.einsum("bij,bijc->bic", coor_weights, rel_coors) / num_neighbours
        m_i = (m_ij * mask_ij.unsqueeze(-1)).sum(dim=-2)
        node_out = self.node_mlp(torch.cat((feats, m_i), dim=-1)) + feats
        return node_out, coors_out


class EGNN(nn.Module):
    def __init__(self, types=8, dim=32, depth=2):
        super().__init__()
        self.embed = nn.Embedding(types, dim)
        self.layers = nn.ModuleList([EGNNLayer(dim) for _ in range(depth)])
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, z, coors, mask):
        h = self.embed(z)
        for layer in self.layers:
            h, coors = layer(h, coors, mask)
        energy = (self.head(h).squeeze(-1) * mask).sum(-1)
        return energy, coors


# --- MeshGraphNets (google-deepmind/deepmind-research meshgraphnets, PyTorch ports) ------------------------------
class Normalizer(nn.Module):
    """Accumulated statistics as in ``normalization.py``: buffers of sums and counts, ``std`` floored at ``std_epsilon``."""

    def __init__(self, size, std_epsilon=1e-8):
        super().__init__()
        g = torch.Generator().manual_seed(size)
        self.register_buffer("_acc_count", torch.tensor(100.0))
        self.register_buffer("_acc_sum", torch.randn(size, generator=g) * 10)
        self.register_buffer("_acc_sum_squared", 100 * (torch.rand(size, generator=g) + 0.5) + self._acc_sum ** 2 / 100)
        self._std_epsilon = std_epsilon

    def _mean(self):
        return self._acc_sum / self._acc_count

    def _std_with_epsilon(self):
        std = torch.sqrt(self._acc_sum_squared / self._acc_count - self._mean() ** 2)
        return torch.maximum(std, torch.tensor(self._std_epsilon, device=std.device))

    def forward(self, batched_data):
        return (batched_data - self._mean()) / self._std_with_epsilon()

    def inverse(self, normalized_batch_data):
        return normalized_batch_data * self._std_with_epsilon() + self._mean()


def _mgn_mlp(in_size, latent, out_size, layer_norm=True):
    layers = [nn.Linear(in_size, latent), nn.ReLU(), nn.Linear(latent, latent), nn.ReLU(), nn.Linear(latent, out_size)]
    if layer_norm:
        layers.append(nn.LayerNorm(out_size))
    return nn.Sequential(*layers)


class GraphNetBlock(nn.Module):
    def __init__(self, latent):
        super().__init__()
        self.edge_mlp = _mgn_mlp(3 * latent, latent, latent)
        self.node_mlp = _mgn_mlp(2 * latent, latent, latent)

    def forward(self, node_features, edge_features, senders, receivers):
        sender_features = torch.index_select(node_features, 0, senders)
        receiver_features = torch.index_select(node_features, 0, receivers)
        new_edge_features = self.edge_mlp(torch.cat([sender_features, receiver_features, edge_features], dim=-1))
        num_nodes = node_features.shape[0]
        aggregated = torch.zeros(num_nodes, new_edge_features.shape[1], dtype=new_edge_features.dtype,
                                 device=new_edge_features.device).index_add_(0, receivers, new_edge_features)
        new_node_features = self.node_mlp(torch.cat([node_features, aggregated], dim=-1))
        return node_features + new_node_features, edge_features + new_edge_features


class MeshGraphNet(nn.Module):
    def __init__(self, node_types=4, latent=32, steps=2):
        super().__init__()
        self.node_types = node_types
        self._node_normalizer = Normalizer(2 + node_types)
        self._edge_normalizer = Normalizer(3)
        self._output_normalizer = Normalizer(2)
        self.node_encoder = _mgn_mlp(2 + node_types, latent, latent)
        self.edge_encoder = _mgn_mlp(3, latent, latent)
        self.processor = nn.ModuleList([GraphNetBlock(latent) for _ in range(steps)])
        self.decoder = _mgn_mlp(latent, latent, 2, layer_norm=False)

    def forward(self, node_type, velocity, mesh_pos, senders, receivers):
        node_features = torch.cat([velocity, F.one_hot(node_type, self.node_types).float()], dim=-1)
        relative_mesh_pos = mesh_pos[senders] - mesh_pos[receivers]
        edge_features = torch.cat([relative_mesh_pos, torch.norm(relative_mesh_pos, dim=-1, keepdim=True)], dim=-1)
        x = self.node_encoder(self._node_normalizer(node_features))
        e = self.edge_encoder(self._edge_normalizer(edge_features))
        for block in self.processor:
            x, e = block(x, e, senders, receivers)
        acceleration = self._output_normalizer.inverse(self.decoder(x))
        return velocity + acceleration  # one Euler step of the integrator


def _mesh(n: int, g: torch.Generator, nodes_per: int = 6) -> tuple:
    nodes = n * nodes_per
    src = torch.randint(0, nodes, (2 * nodes,), generator=g)
    dst = torch.randint(0, nodes, (2 * nodes,), generator=g)
    senders, receivers = torch.cat([src, dst]), torch.cat([dst, src])  # two-way mesh edges
    return (torch.randint(0, 4, (nodes,), generator=g), torch.randn(nodes, 2, generator=g) * 10 + 3,
            torch.rand(nodes, 2, generator=g), senders, receivers)


# --- spherical harmonics / power spectrum (e3nn's component normalisation, ACE/SOAP-style invariants) ---------------
def spherical_harmonics_l2(vec):
    x, y, z = F.normalize(vec, dim=-1).unbind(-1)
    sqrt3, sqrt5, sqrt15 = math.sqrt(3.0), math.sqrt(5.0), math.sqrt(15.0)
    sh_0 = torch.ones_like(x)
    sh_1 = sqrt3 * torch.stack([x, y, z], dim=-1)
    sh_2 = torch.stack([sqrt15 * x * z, sqrt15 * x * y, sqrt5 * (y ** 2 - 0.5 * (x ** 2 + z ** 2)), sqrt15 * y * z,
                        sqrt15 / 2 * (z ** 2 - x ** 2)], dim=-1)
    return torch.cat([sh_0.unsqueeze(-1), sh_1, sh_2], dim=-1)


class PowerSpectrumPotential(nn.Module):
    def __init__(self, types=8, channels=8, num_basis=12, cutoff=4.0):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num_basis))
        self.species = nn.Embedding(types, channels)
        self.radial = nn.Sequential(nn.Linear(num_basis, 16), nn.SiLU(), nn.Linear(16, channels))
        self.readout = nn.Sequential(nn.Linear(3 * channels + channels, 32), nn.SiLU(), nn.Linear(32, 1))

    def forward(self, z, pos, mask):
        b, n, _ = pos.shape
        vec = pos.unsqueeze(1) - pos.unsqueeze(2)  # r_ij = pos_j - pos_i
        d = vec.norm(dim=-1)
        pair = mask.unsqueeze(1) & mask.unsqueeze(2) & ~torch.eye(n, dtype=torch.bool, device=pos.device)
        fc = torch.where(d < self.cutoff, 0.5 * (torch.cos(PI * d / self.cutoff) + 1), torch.zeros_like(d)) * pair
        rbf = torch.exp(-((d.unsqueeze(-1) - self.centers) ** 2) / 0.5)
        R = self.radial(rbf) * fc.unsqueeze(-1) * self.species(z).unsqueeze(1)  # neighbour species weights the channel
        Y = spherical_harmonics_l2(vec)  # (b, i, j, 9)
        A = torch.einsum("bijc,bijm->bimc", R, Y)
        invariants = [A[:, :, 0:1].pow(2).sum(2), A[:, :, 1:4].pow(2).sum(2), A[:, :, 4:9].pow(2).sum(2)]
        atom_energy = self.readout(torch.cat(invariants + [self.species(z)], dim=-1)).squeeze(-1)
        return (atom_energy * mask).sum(-1)


# --- periodic boundary conditions (minimum image, jax-md / torch-md style space.periodic) -------------------------
class PeriodicPairPotential(nn.Module):
    def __init__(self, num_basis=16, cutoff=2.5, hidden=32):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.5, cutoff, num_basis))
        self.pair_mlp = nn.Sequential(nn.Linear(num_basis, hidden), nn.Softplus(), nn.Linear(hidden, 1))
        self.atom_mlp = nn.Sequential(nn.Linear(num_basis, hidden), nn.Softplus(), nn.Linear(hidden, 1))

    def forward(self, pos, box):
        b, n, _ = pos.shape
        cell = box.unsqueeze(1)  # (b, 1, 3) orthorhombic box lengths
        pos = torch.remainder(pos, cell)  # wrap into the box
        dr = pos.unsqueeze(2) - pos.unsqueeze(1)
        dr = dr - cell.unsqueeze(1) * torch.round(dr / cell.unsqueeze(1))  # minimum image
        d = torch.sqrt((dr ** 2).sum(-1) + 1e-12)
        valid = (d < self.cutoff) & ~torch.eye(n, dtype=torch.bool, device=pos.device)
        rbf = torch.exp(-4.0 * (d.unsqueeze(-1) - self.centers) ** 2) * valid.unsqueeze(-1)
        pair_energy = self.pair_mlp(rbf).squeeze(-1) * valid
        atom_energy = self.atom_mlp(rbf.sum(2)).squeeze(-1)
        return 0.5 * pair_energy.sum((1, 2)) + atom_energy.sum(1), atom_energy


def _periodic(n: int, g: torch.Generator, atoms: int = 8) -> tuple:
    box = 3.0 + torch.rand(n, 3, generator=g)
    return (torch.rand(n, atoms, 3, generator=g) * 1.6 - 0.3) * box.unsqueeze(1), box


# --- radius graph inside forward (torch_cluster.radius_graph by nonzero) ----------------------------------------------
class RadiusGraphNet(nn.Module):
    def __init__(self, in_features=5, hidden=32, r=1.5, num_basis=8):
        super().__init__()
        self.r = r
        self.register_buffer("centers", torch.linspace(0.0, r, num_basis))
        self.embed = nn.Linear(in_features, hidden)
        self.message = nn.Sequential(nn.Linear(2 * hidden + num_basis, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.update = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.out = nn.Linear(hidden, 3)

    def radius_graph(self, pos):
        b, n, _ = pos.shape
        dist = torch.cdist(pos, pos)
        adj = (dist < self.r) & ~torch.eye(n, dtype=torch.bool, device=pos.device)
        bi, i, j = adj.nonzero(as_tuple=True)
        return torch.stack([bi * n + j, bi * n + i]), dist[bi, i, j]  # (source, target), edge lengths

    def forward(self, pos, x):
        b, n, _ = pos.shape
        edge_index, edge_len = self.radius_graph(pos)
        src, dst = edge_index
        h = self.embed(x).reshape(b * n, -1)
        rbf = torch.exp(-10.0 * (edge_len.unsqueeze(-1) - self.centers) ** 2)
        msg = self.message(torch.cat([h[src], h[dst], rbf], dim=-1))
        agg = torch.zeros_like(h).index_add_(0, dst, msg)
        h = h + self.update(torch.cat([h, agg], dim=-1))
        return self.out(h).view(b, n, -1).sum(1)


# --- DimeNet's radial Bessel basis (torch_geometric/nn/models/dimenet.py) ----------------------------------------
class Envelope(nn.Module):
    def __init__(self, exponent):
        super().__init__()
        self.p = exponent + 1
        self.a = -(self.p + 1) * (self.p + 2) / 2
        self.b = self.p * (self.p + 2)
        self.c = -self.p * (self.p + 1) / 2

    def forward(self, x):
        p, a, b, c = self.p, self.a, self.b, self.c
        x_pow_p0 = x.pow(p - 1)
        x_pow_p1 = x_pow_p0 * x
        x_pow_p2 = x_pow_p1 * x
        return (1.0 / x + a * x_pow_p0 + b * x_pow_p1 + c * x_pow_p2) * (x < 1.0).to(x.dtype)


class BesselBasisLayer(nn.Module):
    def __init__(self, num_radial, cutoff=5.0, envelope_exponent=5):
        super().__init__()
        self.cutoff = cutoff
        self.envelope = Envelope(envelope_exponent)
        self.freq = nn.Parameter(torch.empty(num_radial))
        with torch.no_grad():
            torch.arange(1, self.freq.numel() + 1, out=self.freq).mul_(PI)

    def forward(self, dist):
        dist = dist.unsqueeze(-1) / self.cutoff
        return self.envelope(dist) * (self.freq * dist).sin()


class DimeNetLite(nn.Module):
    """DimeNet's embedding and output blocks on the Bessel basis (no triplets): edge embeddings from ``x[i], x[j], rbf``,
    ``lin_rbf(rbf) * x`` summed at target atoms, per-atom outputs."""

    def __init__(self, hidden=32, num_radial=6, cutoff=5.0):
        super().__init__()
        self.rbf = BesselBasisLayer(num_radial, cutoff)
        self.emb = nn.Embedding(95, hidden)
        self.emb_lin_rbf = nn.Linear(num_radial, hidden)
        self.emb_lin = nn.Linear(3 * hidden, hidden)
        self.out_lin_rbf = nn.Linear(num_radial, hidden, bias=False)
        self.out_lins = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(2)])
        self.out_lin = nn.Linear(hidden, 1, bias=False)
        self.act = nn.SiLU()

    def forward(self, z, pos, batch, edge_index):
        j, i = edge_index
        dist = (pos[i] - pos[j]).pow(2).sum(dim=-1).sqrt()
        rbf = self.rbf(dist)
        x = self.emb(z)
        rbf_e = self.act(self.emb_lin_rbf(rbf))
        m = self.act(self.emb_lin(torch.cat([x[i], x[j], rbf_e], dim=-1)))
        m = self.out_lin_rbf(rbf) * m
        h = m.new_zeros(pos.size(0), m.size(-1)).index_add_(0, i, m)
        for lin in self.out_lins:
            h = self.act(lin(h))
        return self.out_lin(h)


# --- PDEArena-style 1-D U-Net with circular padding -------------------------------------------------------------
class ResidualBlock1d(nn.Module):
    def __init__(self, in_channels, out_channels, groups=4):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1, padding_mode="circular")
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1, padding_mode="circular")
        self.activation = nn.GELU()
        self.shortcut = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x):
        h = self.conv1(self.activation(self.norm1(x)))
        h = self.conv2(self.activation(self.norm2(h)))
        return h + self.shortcut(x)


class UNet1d(nn.Module):
    def __init__(self, time_history=4, time_future=1, hidden=16):
        super().__init__()
        self.image_proj = nn.Conv1d(time_history + 1, hidden, 3, padding=1, padding_mode="circular")
        self.down1 = ResidualBlock1d(hidden, hidden)
        self.pool1 = nn.Conv1d(hidden, hidden, 3, stride=2, padding=1, padding_mode="circular")
        self.down2 = ResidualBlock1d(hidden, 2 * hidden)
        self.pool2 = nn.Conv1d(2 * hidden, 2 * hidden, 3, stride=2, padding=1, padding_mode="circular")
        self.middle = ResidualBlock1d(2 * hidden, 2 * hidden)
        self.up2 = nn.ConvTranspose1d(2 * hidden, 2 * hidden, 4, stride=2, padding=1)
        self.dec2 = ResidualBlock1d(4 * hidden, hidden)
        self.up1 = nn.ConvTranspose1d(hidden, hidden, 4, stride=2, padding=1)
        self.dec1 = ResidualBlock1d(2 * hidden, hidden)
        self.final = nn.Conv1d(hidden, time_future, 3, padding=1, padding_mode="circular")

    def forward(self, u):  # u: (batch, time_history, x)
        grid = torch.linspace(0, 1, u.shape[-1], device=u.device).expand(u.shape[0], 1, -1)
        h = self.image_proj(torch.cat([u, grid], dim=1))
        h1 = self.down1(h)
        h2 = self.down2(self.pool1(h1))
        h = self.middle(self.pool2(h2))
        h = self.dec2(torch.cat([self.up2(h), h2], dim=1))
        h = self.dec1(torch.cat([self.up1(h), h1], dim=1))
        return u[:, -1:] + self.final(h)  # predict the increment over the last known step


def _pde_history(n: int, g: torch.Generator, t: int = 4, x: int = 32) -> tuple:
    grid = torch.linspace(0, 2 * PI, x + 1)[:-1]
    k = torch.randint(1, 4, (n, 1, 1), generator=g)
    phase = torch.rand(n, 1, 1, generator=g) * 2 * PI
    decay = torch.exp(-0.1 * torch.arange(t).view(1, t, 1) * k)
    return (torch.sin(k * grid + phase) * decay + 0.05 * torch.randn(n, t, x, generator=g),)


# --- Burgers PINN (maziarraissi/PINNs, the PyTorch port): derivatives by autograd.grad only in training ---------------
class DNN(nn.Module):
    def __init__(self, layers):
        super().__init__()
        blocks = []
        for k in range(len(layers) - 2):
            blocks += [nn.Linear(layers[k], layers[k + 1]), nn.Tanh()]
        blocks.append(nn.Linear(layers[-2], layers[-1]))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layers(x)


class BurgersPINN(nn.Module):
    def __init__(self, nu=0.01 / PI):
        super().__init__()
        self.register_buffer("lb", torch.tensor([-1.0, 0.0]))
        self.register_buffer("ub", torch.tensor([1.0, 1.0]))
        self.nu = nu
        self.dnn = DNN([2, 32, 32, 32, 1])

    def net_u(self, x, t):
        X = torch.cat([x, t], dim=1)
        H = 2.0 * (X - self.lb) / (self.ub - self.lb) - 1.0
        return self.dnn(H)

    def net_f(self, x, t, u):
        u_t = torch.autograd.grad(u, t, grad_outputs=torch.ones_like(u), retain_graph=True, create_graph=True)[0]
        u_x = torch.autograd.grad(u, x, grad_outputs=torch.ones_like(u), retain_graph=True, create_graph=True)[0]
        u_xx = torch.autograd.grad(u_x, x, grad_outputs=torch.ones_like(u_x), retain_graph=True, create_graph=True)[0]
        return u_t + u * u_x - self.nu * u_xx

    def forward(self, x, t):
        if self.training:  # the residual loss needs d/dx and d/dt; inference only needs u
            x, t = x.requires_grad_(True), t.requires_grad_(True)
            u = self.net_u(x, t)
            return u, self.net_f(x, t, u)
        return self.net_u(x, t)


def _collocation(n: int, g: torch.Generator) -> tuple:
    return torch.rand(n, 1, generator=g) * 2 - 1, torch.rand(n, 1, generator=g)


# --- Uni-Mol atom transformer with a Gaussian distance bias (dptech-corp/Uni-Mol unimol/models/unimol.py) ------------
@torch.jit.script
def gaussian(x, mean, std):
    pi = 3.14159
    a = (2 * pi) ** 0.5
    return torch.exp(-0.5 * (((x - mean) / std) ** 2)) / (a * std)


class GaussianLayer(nn.Module):
    def __init__(self, K=16, edge_types=64):
        super().__init__()
        self.K = K
        self.means = nn.Embedding(1, K)
        self.stds = nn.Embedding(1, K)
        self.mul = nn.Embedding(edge_types, 1)
        self.bias = nn.Embedding(edge_types, 1)
        nn.init.uniform_(self.means.weight, 0, 3)
        nn.init.uniform_(self.stds.weight, 0, 3)
        nn.init.constant_(self.bias.weight, 0)
        nn.init.constant_(self.mul.weight, 1)

    def forward(self, x, edge_type):
        mul = self.mul(edge_type).type_as(x)
        bias = self.bias(edge_type).type_as(x)
        x = mul * x.unsqueeze(-1) + bias
        x = x.expand(-1, -1, -1, self.K)
        mean = self.means.weight.float().view(-1)
        std = self.stds.weight.float().view(-1).abs() + 1e-5
        return gaussian(x.float(), mean, std).type_as(self.means.weight)


class SelfMultiheadAttention(nn.Module):
    def __init__(self, embed_dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.in_proj = nn.Linear(embed_dim, embed_dim * 3)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, query, key_padding_mask, attn_bias):
        bsz, tgt_len, embed_dim = query.size()
        q, k, v = self.in_proj(query).chunk(3, dim=-1)
        q = q.view(bsz, tgt_len, self.num_heads, self.head_dim).transpose(1, 2).contiguous().view(bsz * self.num_heads, -1, self.head_dim) * self.scaling
        k = k.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2).contiguous().view(bsz * self.num_heads, -1, self.head_dim)
        v = v.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2).contiguous().view(bsz * self.num_heads, -1, self.head_dim)
        src_len = k.size(1)
        attn_weights = torch.bmm(q, k.transpose(1, 2)) + attn_bias
        attn_weights = attn_weights.view(bsz, self.num_heads, tgt_len, src_len)
        attn_weights = attn_weights.masked_fill(key_padding_mask.unsqueeze(1).unsqueeze(2).to(torch.bool), float("-inf"))
        attn_weights = attn_weights.view(bsz * self.num_heads, tgt_len, src_len)
        attn = torch.bmm(F.softmax(attn_weights, dim=-1), v)
        attn = attn.view(bsz, self.num_heads, tgt_len, self.head_dim).transpose(1, 2).contiguous().view(bsz, tgt_len, embed_dim)
        return self.out_proj(attn)


class UniMolLayer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.self_attn = SelfMultiheadAttention(dim, heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x, padding_mask, attn_bias):
        residual = x
        x = self.self_attn_layer_norm(x)
        x = residual + self.self_attn(x, padding_mask, attn_bias)
        residual = x
        x = self.final_layer_norm(x)
        return residual + self.fc2(F.gelu(self.fc1(x)))


class UniMol(nn.Module):
    def __init__(self, types=8, dim=32, heads=4, layers=2, K=16):
        super().__init__()
        self.padding_idx = 0
        self.num_types = types
        self.heads = heads
        self.embed_tokens = nn.Embedding(types, dim, padding_idx=self.padding_idx)
        self.gbf = GaussianLayer(K, types * types)
        self.gbf_proj = nn.Sequential(nn.Linear(K, K), nn.GELU(), nn.Linear(K, heads))
        self.layers = nn.ModuleList([UniMolLayer(dim, heads) for _ in range(layers)])
        self.head = nn.Linear(dim, 1)

    def forward(self, src_tokens, src_coord):
        padding_mask = src_tokens.eq(self.padding_idx)
        x = self.embed_tokens(src_tokens)
        n_node = src_tokens.size(-1)
        dist = (src_coord.unsqueeze(1) - src_coord.unsqueeze(2)).norm(dim=-1)
        edge_type = src_tokens.view(-1, n_node, 1) * self.num_types + src_tokens.view(-1, 1, n_node)
        gbf_result = self.gbf_proj(self.gbf(dist, edge_type))
        graph_attn_bias = gbf_result.permute(0, 3, 1, 2).contiguous().view(-1, n_node, n_node)
        x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        for layer in self.layers:
            x = layer(x, padding_mask, graph_attn_bias)
        return self.head(x[:, 0, :])  # the [CLS] atom


def _unimol_inputs(n: int, g: torch.Generator) -> tuple:
    z, pos, mask = _padded_atoms(n, g)
    z[:, 0] = 1  # the [CLS] token, never padding
    return z, pos


# --- DCN-v2 (DeepCTR-Torch layers/interaction.py CrossNet / CrossNetMix, torchrec crossnet) --------------------------
class CrossNet(nn.Module):
    def __init__(self, in_features, layer_num=2):
        super().__init__()
        self.layer_num = layer_num
        self.kernels = nn.Parameter(torch.empty(layer_num, in_features, in_features))
        self.bias = nn.Parameter(torch.zeros(layer_num, in_features, 1))
        for i in range(self.kernels.shape[0]):
            nn.init.xavier_normal_(self.kernels[i])

    def forward(self, inputs):
        x_0 = inputs.unsqueeze(2)
        x_l = x_0
        for i in range(self.layer_num):
            xl_w = torch.matmul(self.kernels[i], x_l)  # W x_l
            dot_ = xl_w + self.bias[i]
            x_l = x_0 * dot_ + x_l  # x_0 * (W x_l + b) + x_l
        return torch.squeeze(x_l, dim=2)


class CrossNetMix(nn.Module):
    def __init__(self, in_features, low_rank=4, num_experts=3, layer_num=2):
        super().__init__()
        self.layer_num, self.num_experts = layer_num, num_experts
        self.U_list = nn.Parameter(torch.empty(layer_num, num_experts, in_features, low_rank))
        self.V_list = nn.Parameter(torch.empty(layer_num, num_experts, in_features, low_rank))
        self.C_list = nn.Parameter(torch.empty(layer_num, num_experts, low_rank, low_rank))
        self.gating = nn.ModuleList([nn.Linear(in_features, 1, bias=False) for _ in range(num_experts)])
        self.bias = nn.Parameter(torch.zeros(layer_num, in_features, 1))
        for p in (self.U_list, self.V_list, self.C_list):
            for i in range(layer_num):
                for e in range(num_experts):
                    nn.init.xavier_normal_(p[i, e])

    def forward(self, inputs):
        x_0 = inputs.unsqueeze(2)
        x_l = x_0
        for i in range(self.layer_num):
            output_of_experts = []
            gating_score_of_experts = []
            for expert_id in range(self.num_experts):
                gating_score_of_experts.append(self.gating[expert_id](x_l.squeeze(2)))
                v_x = torch.matmul(self.V_list[i][expert_id].t(), x_l)
                v_x = torch.tanh(v_x)
                v_x = torch.matmul(self.C_list[i][expert_id], v_x)
                v_x = torch.tanh(v_x)
                uv_x = torch.matmul(self.U_list[i][expert_id], v_x)
                dot_ = uv_x + self.bias[i]
                dot_ = x_0 * dot_
                output_of_experts.append(dot_.squeeze(2))
            output_of_experts = torch.stack(output_of_experts, 2)  # (bs, in_features, num_experts)
            gating_score_of_experts = torch.stack(gating_score_of_experts, 1)  # (bs, num_experts, 1)
            moe_out = torch.matmul(output_of_experts, gating_score_of_experts.softmax(1))
            x_l = moe_out + x_l
        return x_l.squeeze()


class DCNv2(nn.Module):
    def __init__(self, vocab=(20, 30, 12, 40), dim=8, dense=4, mix=False, stacked=True):
        super().__init__()
        self.embedding_dict = nn.ModuleDict({f"C{k}": nn.Embedding(v, dim) for k, v in enumerate(vocab)})
        in_features = len(vocab) * dim + dense
        self.crossnet = CrossNetMix(in_features) if mix else CrossNet(in_features)
        self.stacked = stacked
        self.dnn = nn.Sequential(nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.dnn_linear = nn.Linear(16 if stacked else 16 + in_features, 1, bias=False)

    def forward(self, sparse, dense):
        sparse_embedding_list = [self.embedding_dict[f"C{k}"](sparse[:, k:k + 1]) for k in range(sparse.shape[1])]
        dnn_input = torch.cat([torch.flatten(torch.cat(sparse_embedding_list, dim=-1), start_dim=1), dense], dim=-1)
        if self.stacked:  # DCN-M stacked: cross then deep
            logit = self.dnn_linear(self.dnn(self.crossnet(dnn_input)))
        else:  # parallel: concat both towers
            logit = self.dnn_linear(torch.cat((self.crossnet(dnn_input), self.dnn(dnn_input)), dim=-1))
        return torch.sigmoid(logit)


def _ctr_fields(n: int, g: torch.Generator, vocab=(20, 30, 12, 40), dense: int = 4) -> tuple:
    sparse = torch.stack([torch.randint(0, v, (n,), generator=g) for v in vocab], 1)
    return sparse, torch.rand(n, dense, generator=g)


# --- DIN (DeepCTR-Torch models/din.py, layers/sequence.py AttentionSequencePoolingLayer) ---------------------------
class Dice(nn.Module):
    def __init__(self, emb_size, dim=2, epsilon=1e-8):
        super().__init__()
        self.bn = nn.BatchNorm1d(emb_size, eps=epsilon)
        self.sigmoid = nn.Sigmoid()
        self.dim = dim
        self.alpha = nn.Parameter(torch.zeros((emb_size,)) if dim == 2 else torch.zeros((emb_size, 1)))

    def forward(self, x):
        if self.dim == 2:
            x_p = self.sigmoid(self.bn(x))
            return self.alpha * (1 - x_p) * x + x_p * x
        x = torch.transpose(x, 1, 2)
        x_p = self.sigmoid(self.bn(x))
        out = self.alpha * (1 - x_p) * x + x_p * x
        return torch.transpose(out, 1, 2)


class LocalActivationUnit(nn.Module):
    def __init__(self, hidden_units=(32, 16), embedding_dim=8):
        super().__init__()
        self.dnn = nn.Sequential(nn.Linear(4 * embedding_dim, hidden_units[0]), Dice(hidden_units[0], dim=3),
                                 nn.Linear(hidden_units[0], hidden_units[1]), Dice(hidden_units[1], dim=3))
        self.dense = nn.Linear(hidden_units[-1], 1)

    def forward(self, query, user_behavior):
        user_behavior_len = user_behavior.size(1)
        queries = query.expand(-1, user_behavior_len, -1)
        attention_input = torch.cat([queries, user_behavior, queries - user_behavior, queries * user_behavior], dim=-1)
        attention_output = self.dnn(attention_input)
        return self.dense(attention_output)


class AttentionSequencePoolingLayer(nn.Module):
    def __init__(self, embedding_dim, weight_normalization=True):
        super().__init__()
        self.weight_normalization = weight_normalization
        self.local_att = LocalActivationUnit(embedding_dim=embedding_dim)

    def forward(self, query, keys, keys_length):
        batch_size, max_length, _ = keys.size()
        keys_masks = torch.arange(max_length, device=keys_length.device, dtype=keys_length.dtype).repeat(batch_size, 1)
        keys_masks = keys_masks < keys_length.view(-1, 1)
        keys_masks = keys_masks.unsqueeze(1)  # (B, 1, T)
        attention_score = self.local_att(query, keys)
        outputs = torch.transpose(attention_score, 1, 2)
        if self.weight_normalization:
            paddings = torch.ones_like(outputs) * (-2 ** 32 + 1)
        else:
            paddings = torch.zeros_like(outputs)
        outputs = torch.where(keys_masks, outputs, paddings)
        if self.weight_normalization:
            outputs = F.softmax(outputs, dim=-1)
        return torch.matmul(outputs, keys)  # (B, 1, E)


class DIN(nn.Module):
    def __init__(self, items=60, cates=10, users=30, dim=8):
        super().__init__()
        self.item_emb = nn.Embedding(items, dim, padding_idx=0)
        self.cate_emb = nn.Embedding(cates, dim, padding_idx=0)
        self.user_emb = nn.Embedding(users, dim)
        self.attention = AttentionSequencePoolingLayer(2 * dim)
        self.dnn = nn.Sequential(nn.Linear(5 * dim, 32), Dice(32), nn.Linear(32, 16), Dice(16))
        self.dnn_linear = nn.Linear(16, 1, bias=False)

    def forward(self, user, item, cate, hist_item, hist_cate):
        query_emb = torch.cat([self.item_emb(item), self.cate_emb(cate)], dim=-1).unsqueeze(1)  # (B, 1, 2E)
        keys_emb = torch.cat([self.item_emb(hist_item), self.cate_emb(hist_cate)], dim=-1)  # (B, T, 2E)
        keys_length = (hist_item != 0).sum(dim=-1, keepdim=True)
        hist = self.attention(query_emb, keys_emb, keys_length)
        deep_input = torch.cat([self.user_emb(user), query_emb.squeeze(1), hist.squeeze(1)], dim=-1)
        return torch.sigmoid(self.dnn_linear(self.dnn(deep_input)))


def _din_inputs(n: int, g: torch.Generator, t: int = 8) -> tuple:
    lengths = torch.randint(1, t + 1, (n, 1), generator=g)
    mask = torch.arange(t)[None] < lengths
    return (torch.randint(0, 30, (n,), generator=g), torch.randint(1, 60, (n,), generator=g), torch.randint(1, 10, (n,), generator=g),
            torch.randint(1, 60, (n, t), generator=g) * mask, torch.randint(1, 10, (n, t), generator=g) * mask)


# --- SASRec (pmixer/SASRec.pytorch model.py) -----------------------------------------------------------------------
class PointWiseFeedForward(nn.Module):
    def __init__(self, hidden_units, dropout_rate):
        super().__init__()
        self.conv1 = nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
        self.dropout1 = nn.Dropout(p=dropout_rate)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
        self.dropout2 = nn.Dropout(p=dropout_rate)

    def forward(self, inputs):
        outputs = self.dropout2(self.conv2(self.relu(self.dropout1(self.conv1(inputs.transpose(-1, -2))))))
        outputs = outputs.transpose(-1, -2)  # as Conv1D requires (N, C, Length)
        outputs += inputs
        return outputs


class SASRec(nn.Module):
    def __init__(self, item_num=60, maxlen=10, hidden_units=32, num_blocks=2, num_heads=2, dropout_rate=0.2):
        super().__init__()
        self.item_emb = nn.Embedding(item_num + 1, hidden_units, padding_idx=0)
        self.pos_emb = nn.Embedding(maxlen + 1, hidden_units, padding_idx=0)
        self.emb_dropout = nn.Dropout(p=dropout_rate)
        self.attention_layernorms = nn.ModuleList()
        self.attention_layers = nn.ModuleList()
        self.forward_layernorms = nn.ModuleList()
        self.forward_layers = nn.ModuleList()
        self.last_layernorm = nn.LayerNorm(hidden_units, eps=1e-8)
        for _ in range(num_blocks):
            self.attention_layernorms.append(nn.LayerNorm(hidden_units, eps=1e-8))
            self.attention_layers.append(nn.MultiheadAttention(hidden_units, num_heads, dropout_rate))
            self.forward_layernorms.append(nn.LayerNorm(hidden_units, eps=1e-8))
            self.forward_layers.append(PointWiseFeedForward(hidden_units, dropout_rate))

    def log2feats(self, log_seqs):
        seqs = self.item_emb(log_seqs)
        seqs *= self.item_emb.embedding_dim ** 0.5
        poss = torch.arange(1, log_seqs.shape[1] + 1, device=log_seqs.device).repeat(log_seqs.shape[0], 1)
        poss = poss * (log_seqs != 0)
        seqs += self.pos_emb(poss)
        seqs = self.emb_dropout(seqs)
        timeline_mask = log_seqs == 0
        seqs *= ~timeline_mask.unsqueeze(-1)  # broadcast in last dim
        tl = seqs.shape[1]  # time dim len for enforce causality
        attention_mask = ~torch.tril(torch.ones((tl, tl), dtype=torch.bool, device=log_seqs.device))
        for i in range(len(self.attention_layers)):
            seqs = torch.transpose(seqs, 0, 1)
            Q = self.attention_layernorms[i](seqs)
            mha_outputs, _ = self.attention_layers[i](Q, seqs, seqs, attn_mask=attention_mask)
            seqs = Q + mha_outputs
            seqs = torch.transpose(seqs, 0, 1)
            seqs = self.forward_layernorms[i](seqs)
            seqs = self.forward_layers[i](seqs)
            seqs *= ~timeline_mask.unsqueeze(-1)
        return self.last_layernorm(seqs)

    def forward(self, user_ids, log_seqs, pos_seqs, neg_seqs):  # for training
        log_feats = self.log2feats(log_seqs)
        pos_embs = self.item_emb(pos_seqs)
        neg_embs = self.item_emb(neg_seqs)
        pos_logits = (log_feats * pos_embs).sum(dim=-1)
        neg_logits = (log_feats * neg_embs).sum(dim=-1)
        return pos_logits, neg_logits


def _sasrec_inputs(n: int, g: torch.Generator, maxlen: int = 10) -> tuple:
    lengths = torch.randint(3, maxlen + 1, (n, 1), generator=g)
    left_pad = torch.arange(maxlen)[None] >= maxlen - lengths  # sequences are left-padded with 0
    seq = torch.randint(1, 61, (n, maxlen), generator=g) * left_pad
    pos = torch.roll(seq, -1, 1) * left_pad
    neg = torch.randint(1, 61, (n, maxlen), generator=g) * left_pad
    return torch.arange(n), seq, pos, neg


# --- two-tower retrieval with in-batch negatives (YouTube sampling-bias-corrected two tower) ------------------------
class QueryTower(nn.Module):
    def __init__(self, users=50, items=60, dim=16, out=16):
        super().__init__()
        self.user_emb = nn.Embedding(users, dim)
        self.history = nn.EmbeddingBag(items, dim, mode="mean", padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 32), nn.ReLU(), nn.Linear(32, out))

    def forward(self, user_id, history):
        return F.normalize(self.mlp(torch.cat([self.user_emb(user_id), self.history(history)], dim=-1)), p=2, dim=-1)


class ItemTower(nn.Module):
    def __init__(self, items=60, cates=10, dim=16, out=16):
        super().__init__()
        self.item_emb = nn.Embedding(items, dim)
        self.cate_emb = nn.Embedding(cates, dim // 2)
        self.mlp = nn.Sequential(nn.Linear(dim + dim // 2, 32), nn.ReLU(), nn.Linear(32, out))

    def forward(self, item_id, cate_id):
        return F.normalize(self.mlp(torch.cat([self.item_emb(item_id), self.cate_emb(cate_id)], dim=-1)), p=2, dim=-1)


class TwoTower(nn.Module):
    def __init__(self, temperature=0.05):
        super().__init__()
        self.query_tower, self.item_tower = QueryTower(), ItemTower()
        self.temperature = temperature

    def forward(self, user_id, history, item_id, cate_id, item_log_prob):
        q = self.query_tower(user_id, history)
        d = self.item_tower(item_id, cate_id)
        logits = q @ d.T / self.temperature
        return logits - item_log_prob.view(1, -1)  # logQ correction of the in-batch sampling bias


def _two_tower_inputs(n: int, g: torch.Generator, t: int = 6) -> tuple:
    mask = torch.arange(t)[None] < torch.randint(1, t + 1, (n, 1), generator=g)
    item = torch.randint(1, 60, (n,), generator=g)
    return (torch.randint(0, 50, (n,), generator=g), torch.randint(1, 60, (n, t), generator=g) * mask, item,
            item % 10, torch.log(torch.rand(n, generator=g) * 0.01 + 1e-4))


# --- hashing trick + multi-hot bags with offsets (TorchRec KeyedJaggedTensor style values/offsets) ------------------
class DoubleHashedBag(nn.Module):
    """Raw 64-bit ids hashed twice (``torch.remainder(ids * prime + salt, buckets)``) into two ``EmbeddingBag`` tables,
    the bags given as flat ``values`` and per-sample ``offsets``."""

    def __init__(self, buckets=97, dim=16, dense=4):
        super().__init__()
        self.num_buckets = buckets
        self.register_buffer("primes", torch.tensor([1_000_003, 998_244_353]))
        self.tables = nn.ModuleList([nn.EmbeddingBag(buckets, dim, mode="sum") for _ in range(2)])
        self.dense_arch = nn.Sequential(nn.Linear(dense, dim), nn.ReLU())
        self.over_arch = nn.Sequential(nn.Linear(2 * dim, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, values, offsets, dense):
        pooled = 0
        for k, table in enumerate(self.tables):
            idx = torch.remainder(values * self.primes[k] + k, self.num_buckets)
            pooled = pooled + table(idx, offsets)
        return self.over_arch(torch.cat([pooled, self.dense_arch(dense)], dim=1))


def _jagged(n: int, g: torch.Generator) -> tuple:
    lengths = torch.randint(1, 5, (n,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    values = torch.randint(0, 2 ** 40, (int(lengths.sum()),), generator=g)
    return values, offsets, torch.rand(n, 4, generator=g)


# --- DLRM mixed-dimension and quotient-remainder embeddings (facebookresearch/dlrm md_embedding_bag.py,
# qr_embedding_bag.py, dlrm_s_pytorch.py interact_features) ------------------------------------------------------
class PrEmbeddingBag(nn.Module):
    def __init__(self, num_embeddings, embedding_dim, base_dim):
        super().__init__()
        self.embs = nn.EmbeddingBag(num_embeddings, embedding_dim, mode="sum", sparse=True)
        nn.init.xavier_uniform_(self.embs.weight)
        if embedding_dim < base_dim:
            self.proj = nn.Linear(embedding_dim, base_dim, bias=False)
            nn.init.xavier_uniform_(self.proj.weight)
        elif embedding_dim == base_dim:
            self.proj = nn.Identity()
        else:
            raise ValueError("Embedding dim " + str(embedding_dim) + " > base dim " + str(base_dim))

    def forward(self, input, offsets=None, per_sample_weights=None):
        return self.proj(self.embs(input, offsets=offsets, per_sample_weights=per_sample_weights))


class QREmbeddingBag(nn.Module):
    def __init__(self, num_categories, embedding_dim, num_collisions, operation="mult", mode="sum"):
        super().__init__()
        self.num_collisions = num_collisions
        self.operation, self.mode = operation, mode
        self.num_embeddings = [int(math.ceil(num_categories / num_collisions)), num_collisions]
        self.weight_q = nn.Parameter(torch.empty(self.num_embeddings[0], embedding_dim))
        self.weight_r = nn.Parameter(torch.empty(self.num_embeddings[1], embedding_dim))
        nn.init.uniform_(self.weight_q, -math.sqrt(1 / num_categories), math.sqrt(1 / num_categories))
        nn.init.uniform_(self.weight_r, -math.sqrt(1 / num_categories), math.sqrt(1 / num_categories))

    def forward(self, input, offsets=None, per_sample_weights=None):
        input_q = (input / self.num_collisions).long()
        input_r = torch.remainder(input, self.num_collisions).long()
        embed_q = F.embedding_bag(input_q, self.weight_q, offsets, mode=self.mode, per_sample_weights=per_sample_weights)
        embed_r = F.embedding_bag(input_r, self.weight_r, offsets, mode=self.mode, per_sample_weights=per_sample_weights)
        if self.operation == "concat":
            return torch.cat((embed_q, embed_r), dim=1)
        if self.operation == "add":
            return embed_q + embed_r
        return embed_q * embed_r


class DLRMMixed(nn.Module):
    def __init__(self, ln_emb=(200, 40, 12, 1000), md_dims=(16, 8, 4), base_dim=16):
        super().__init__()
        self.bot_l = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, base_dim), nn.ReLU())
        self.emb_l = nn.ModuleList([PrEmbeddingBag(n, d, base_dim) for n, d in zip(ln_emb[:3], md_dims)])
        self.emb_l.append(QREmbeddingBag(ln_emb[3], base_dim, num_collisions=32))
        num_fea = len(ln_emb) + 1
        self.top_l = nn.Sequential(nn.Linear(num_fea * (num_fea - 1) // 2 + base_dim, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())

    def interact_features(self, x, ly):
        (batch_size, d) = x.shape
        T = torch.cat([x] + ly, dim=1).view((batch_size, -1, d))
        Z = torch.bmm(T, torch.transpose(T, 1, 2))
        _, ni, nj = Z.shape
        li, lj = torch.tril_indices(ni, nj, offset=-1)
        Zflat = Z[:, li, lj]
        return torch.cat([x] + [Zflat], dim=1)

    def forward(self, dense_x, lS_o, lS_i):
        x = self.bot_l(dense_x)
        ly = [self.emb_l[k](sparse_index_group_batch, lS_o[k]) for k, sparse_index_group_batch in enumerate(lS_i)]
        return self.top_l(self.interact_features(x, ly))


def _dlrm_inputs(n: int, g: torch.Generator, ln_emb=(200, 40, 12, 1000)) -> tuple:
    lS_o = torch.arange(n).repeat(len(ln_emb), 1)  # one index per bag, as dlrm's data generator with num_indices_per_lookup=1
    lS_i = [torch.randint(0, v, (n,), generator=g) for v in ln_emb]
    return torch.log1p(torch.rand(n, 4, generator=g) * 100), lS_o, lS_i


# --- MMoE (drawbridge/keras-mmoe expert kernels, as its PyTorch ports write them) + ESMM's ctcvr ----------------------
class MMoE(nn.Module):
    def __init__(self, vocab=(20, 30, 12), dim=8, dense=4, units=16, num_experts=4, num_tasks=2):
        super().__init__()
        self.embeddings = nn.ModuleList([nn.Embedding(v, dim) for v in vocab])
        input_dim = len(vocab) * dim + dense
        self.expert_kernels = nn.Parameter(torch.randn(input_dim, units, num_experts) * input_dim ** -0.5)
        self.expert_bias = nn.Parameter(torch.zeros(units, num_experts))
        self.gate_kernels = nn.ParameterList([nn.Parameter(torch.randn(input_dim, num_experts) * 0.1) for _ in range(num_tasks)])
        self.towers = nn.ModuleList([nn.Sequential(nn.Linear(units, 8), nn.ReLU(), nn.Linear(8, 1)) for _ in range(num_tasks)])

    def forward(self, sparse, dense):
        x = torch.cat([emb(sparse[:, k]) for k, emb in enumerate(self.embeddings)] + [dense], dim=1)
        expert_outputs = F.relu(torch.einsum("ab,bcd->acd", x, self.expert_kernels) + self.expert_bias)  # (B, units, E)
        outs = []
        for gate_kernel, tower in zip(self.gate_kernels, self.towers):
            gate = torch.softmax(torch.einsum("ab,bc->ac", x, gate_kernel), dim=-1)  # (B, E)
            weighted = torch.sum(expert_outputs * gate.unsqueeze(1).expand_as(expert_outputs), dim=2)
            outs.append(torch.sigmoid(tower(weighted)).squeeze(-1))
        ctr, cvr = outs
        return {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr}


# --- wide & deep (one-hot crossed features through a linear wide part) ---------------------------------------------
class WideDeep(nn.Module):
    def __init__(self, vocab=(7, 5, 9), crosses=((0, 1), (1, 2)), dim=8, cont=4):
        super().__init__()
        self.vocab, self.crosses = vocab, crosses
        wide_dim = sum(vocab) + sum(vocab[a] * vocab[b] for a, b in crosses)
        self.wide = nn.Linear(wide_dim, 1)
        self.embeds = nn.ModuleList([nn.Embedding(v, dim) for v in vocab])
        self.deep = nn.Sequential(nn.Linear(len(vocab) * dim + cont, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 16), nn.ReLU(),
                                  nn.Linear(16, 1))

    def forward(self, cat_feats, cont_feats):
        one_hots = [F.one_hot(cat_feats[:, k], v) for k, v in enumerate(self.vocab)]
        for a, b in self.crosses:  # cross-product transformation: one id per (a, b) pair
            one_hots.append(F.one_hot(cat_feats[:, a] * self.vocab[b] + cat_feats[:, b], self.vocab[a] * self.vocab[b]))
        wide_logit = self.wide(torch.cat(one_hots, dim=1).float())
        deep_in = torch.cat([emb(cat_feats[:, k]) for k, emb in enumerate(self.embeds)] + [cont_feats], dim=1)
        return torch.sigmoid(wide_logit + self.deep(deep_in))


def _wide_deep_inputs(n: int, g: torch.Generator, vocab=(7, 5, 9)) -> tuple:
    return torch.stack([torch.randint(0, v, (n,), generator=g) for v in vocab], 1), torch.randn(n, 4, generator=g)


# --- xDeepFM (DeepCTR-Torch layers/interaction.py CIN, models/xdeepfm.py) ---------------------------------------------
class CIN(nn.Module):
    def __init__(self, field_size, layer_size=(16, 16), split_half=True):
        super().__init__()
        self.layer_size = layer_size
        self.field_nums = [field_size]
        self.split_half = split_half
        self.activation = nn.ReLU()
        self.conv1ds = nn.ModuleList()
        for i, size in enumerate(self.layer_size):
            self.conv1ds.append(nn.Conv1d(self.field_nums[-1] * self.field_nums[0], size, 1))
            if self.split_half:
                if i != len(self.layer_size) - 1 and size % 2 > 0:
                    raise ValueError("layer_size must be even number except for the last layer when split_half=True")
                self.field_nums.append(size // 2)
            else:
                self.field_nums.append(size)

    def forward(self, inputs):
        batch_size = inputs.shape[0]
        dim = inputs.shape[-1]
        hidden_nn_layers = [inputs]
        final_result = []
        for i, size in enumerate(self.layer_size):
            x = torch.einsum("bhd,bmd->bhmd", hidden_nn_layers[-1], hidden_nn_layers[0])
            x = x.reshape(batch_size, hidden_nn_layers[-1].shape[1] * hidden_nn_layers[0].shape[1], dim)
            x = self.conv1ds[i](x)
            curr_out = self.activation(x)
            if self.split_half:
                if i != len(self.layer_size) - 1:
                    next_hidden, direct_connect = torch.split(curr_out, 2 * [size // 2], 1)
                else:
                    direct_connect = curr_out
                    next_hidden = 0
            else:
                direct_connect = curr_out
                next_hidden = curr_out
            final_result.append(direct_connect)
            hidden_nn_layers.append(next_hidden)
        result = torch.cat(final_result, dim=1)
        return torch.sum(result, -1)


class XDeepFM(nn.Module):
    def __init__(self, vocab=(20, 30, 12, 40, 8), dim=8):
        super().__init__()
        self.register_buffer("offsets", torch.tensor([0, *torch.tensor(vocab).cumsum(0)[:-1].tolist()]))
        self.linear_emb = nn.Embedding(sum(vocab), 1)
        self.embedding = nn.Embedding(sum(vocab), dim)
        self.cin = CIN(len(vocab))
        self.cin_linear = nn.Linear(16 // 2 + 16, 1, bias=False)
        self.dnn = nn.Sequential(nn.Linear(len(vocab) * dim, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.dnn_linear = nn.Linear(16, 1, bias=False)

    def forward(self, X):
        ids = X + self.offsets
        linear_logit = self.linear_emb(ids).sum(dim=1)
        sparse_embedding = self.embedding(ids)  # (B, fields, dim)
        cin_logit = self.cin_linear(self.cin(sparse_embedding))
        dnn_logit = self.dnn_linear(self.dnn(torch.flatten(sparse_embedding, start_dim=1)))
        return torch.sigmoid(linear_logit + cin_logit + dnn_logit)


CASES = {
    "schnet_cfconv": ("PyG SchNet: torch.cdist picked by dist[row, col], GaussianSmearing, cosine cutoff, CFConv x[j] * W "
                      "scatter_add_ at i, ShiftedSoftplus, readout index_add_ into int(batch.max()) + 1 graphs",
                      lambda: (SchNet(), _molecules)),
    "egnn_dense": ("EGNN: x_i - x_j all pairs, edge MLP on cat(h_i, h_j, |x_i - x_j|^2), mask_i & mask_j & ~eye, "
                   "einsum('bij,bijc->bic') coordinate update, (energy, coords)", lambda: (EGNN(), _padded_atoms)),
    "meshgraphnets": ("MeshGraphNets: accumulated-statistics normalizers, one_hot node types, index_select senders/receivers, "
                      "edge MLP + zeros(N, F).index_add_ at receivers, LayerNorm MLPs, residuals, inverse normalizer",
                      lambda: (MeshGraphNet(), _mesh)),
    "spherical_harmonics_ps": ("real spherical harmonics l <= 2 from F.normalize'd r_ij (unbind, stack, polynomials), "
                               "cosine cutoff by where, einsum density, per-l power spectrum by slices",
                               lambda: (PowerSpectrumPotential(), _padded_atoms)),
    "pbc_minimum_image": ("periodic box: torch.remainder(pos, box) wrap, dr - box * torch.round(dr / box), masked RBF pair "
                          "and atom MLPs, (total, per-atom) energy", lambda: (PeriodicPairPotential(), _periodic)),
    "radius_graph_nonzero": ("radius graph in forward: cdist < r & ~eye, .nonzero(as_tuple=True) (data-dependent edge count), "
                             "flat b * n + j indices, index_add_ messages", lambda: (
                                 RadiusGraphNet(), lambda n, g: (torch.rand(n, 8, 3, generator=g) * 2.5, torch.randn(n, 8, 5, generator=g)))),
    "dimenet_bessel": ("DimeNet BesselBasisLayer (learnable freq = arange * pi, sin(freq * d / c)) with the polynomial "
                       "envelope (1/x + a x^(p-1) ...) * (x < 1), embedding/output blocks, index_add_ to atoms",
                       lambda: (DimeNetLite(), _molecules)),
    "pde_unet1d_circular": ("PDEArena-style 1-D U-Net: Conv1d(padding_mode='circular'), GroupNorm + GELU residual blocks, "
                            "strided circular downsampling, ConvTranspose1d up, skip cat, linspace grid channel",
                            lambda: (UNet1d(), _pde_history)),
    "pinn_burgers": ("Burgers PINN: (X - lb) / (ub - lb) scaling, tanh MLP; autograd.grad u_t, u_x, u_xx only under "
                     "self.training (returns u in eval, (u, f) in training)", lambda: (BurgersPINN(), _collocation)),
    "unimol_dist_bias": ("Uni-Mol: edge_type = z_i * T + z_j, GaussianLayer (jit-scripted gaussian), per-head pair bias "
                         "added to bmm logits, masked_fill(-inf) key padding, x[:, 0] head", lambda: (UniMol(), _unimol_inputs)),
    "dcn_v2_cross": ("DCN-v2 stacked: ModuleDict embeddings, CrossNet x_0 * (matmul(kernels[i], x_l) + bias[i]) + x_l "
                     "with Parameter kernels, deep tower, sigmoid", lambda: (DCNv2(), _ctr_fields)),
    "dcn_mix_lowrank": ("DCN-Mix parallel: CrossNetMix low-rank experts (matmul V^T, C, U Parameter slices, tanh), "
                        "Linear gates stacked, softmax-weighted matmul, x_l.squeeze()", lambda: (DCNv2(mix=True, stacked=False), _ctr_fields)),
    "din_attention": ("DIN: cat([q, k, q - k, q * k]) local activation unit, Dice (BatchNorm over transposed (B, C, T)), "
                      "arange < keys_length mask, where(mask, s, -2 ** 32 + 1), softmax, matmul", lambda: (
                          _trained_norms(DIN()), _din_inputs)),
    "sasrec_causal": ("SASRec: emb * sqrt(d), positions * (seq != 0), timeline_mask in-place multiply, ~tril causal mask, "
                      "nn.MultiheadAttention on (L, N, E), Conv1d feed-forward, (h * item_emb).sum(-1) pos/neg logits",
                      lambda: (SASRec(), _sasrec_inputs)),
    "two_tower_inbatch": ("two-tower retrieval: EmbeddingBag(mean, padding_idx=0) history, F.normalize towers, "
                          "q @ d.T / temperature in-batch logits minus log sampling probability", lambda: (TwoTower(), _two_tower_inputs)),
    "hashed_bag_offsets": ("double hashing of raw 64-bit ids, torch.remainder(ids * prime + salt, buckets), "
                           "EmbeddingBag(mode='sum') on flat values + offsets (jagged bags, values longer than the batch)",
                           lambda: (DoubleHashedBag(), _jagged)),
    "dlrm_md_qr": ("DLRM mixed-dimension PrEmbeddingBag (per-table dim + Linear projection) and QREmbeddingBag "
                   "((ids / c).long(), remainder, F.embedding_bag, q * r), lS_o / list lS_i, tril_indices dot interaction",
                   lambda: (DLRMMixed(), _dlrm_inputs)),
    "mmoe_einsum": ("MMoE: einsum('ab,bcd->acd') expert Parameter kernels, einsum gates + softmax, weighted expert sum, "
                    "task towers, ESMM ctr * cvr dict output", lambda: (MMoE(), lambda n, g: _ctr_fields(n, g, vocab=(20, 30, 12)))),
    "wide_deep_onehot": ("wide & deep: F.one_hot of fields and crossed ids (a * |b| + b), cat(...).float() through Linear, "
                         "embedding MLP, sigmoid(wide + deep)", lambda: (WideDeep(), _wide_deep_inputs)),
    "xdeepfm_cin": ("xDeepFM: field offsets buffer, linear Embedding(., 1) sum, CIN einsum('bhd,bmd->bhmd') reshape + Conv1d, "
                    "split_half torch.split, DNN, sigmoid", lambda: (XDeepFM(), lambda n, g: (_ctr_fields(
                        n, g, vocab=(20, 30, 12, 40, 8), dense=0)[0],))),
}
