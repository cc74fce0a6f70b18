"""Third round of user-style models for ``usage_scan.py`` (2026-12-07): less common ops and layouts.
Spatial transformers (``affine_grid``/``grid_sample``), SegNet unpooling, DLRM-style embedding bags,
graph message passing on an edge list, STFT front ends, patches by ``F.unfold``, the less common
activations, style-transfer nets (InstanceNorm, bicubic upsampling), Siamese distances, DETR-style
learned queries over image features, integer (argmax) outputs, normalization buffers with
``padding='same'`` and circular padding, and an ``nn.LSTMCell`` unrolled in Python.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _images(n: int, g: torch.Generator, side: int = 16, channels: int = 3) -> torch.Tensor:
    return torch.randn(n, channels, side, side, generator=g)


class SpatialTransformer(nn.Module):
    """A localisation net predicts an affine warp of the input, which a classifier then reads."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 6))
        with torch.no_grad():  # start near the identity warp, as STN implementations do
            self.loc[-1].weight.mul_(0.1)
            self.loc[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        theta = self.loc(x).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return self.net(F.grid_sample(x, grid, align_corners=False))


class SegNet(nn.Module):
    """Max pooling that returns its indices, and unpooling with them in the decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.mid, self.dec = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        h, idx = F.max_pool2d(F.relu(self.enc(x)), 2, return_indices=True)
        h = F.max_unpool2d(F.relu(self.mid(h)), idx, 2, output_size=x.shape[-2:])
        return self.dec(h)


class DLRM(nn.Module):
    """Dense features through an MLP, sparse ids through embedding bags, pairwise dot interactions."""

    def __init__(self) -> None:
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.bags = nn.ModuleList([nn.EmbeddingBag(50, 8, mode="sum"), nn.EmbeddingBag(30, 8, mode="mean")])
        self.top = nn.Sequential(nn.Linear(8 + 3, 16), nn.ReLU(), nn.Linear(16, 1))
        self.register_buffer("pairs", torch.triu_indices(3, 3, offset=1), persistent=False)

    def forward(self, dense, ids_a, ids_b):
        d = self.bottom(dense)
        feats = torch.stack([d, self.bags[0](ids_a), self.bags[1](ids_b)], 1)  # [N, 3, 8]
        inter = torch.bmm(feats, feats.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]  # [N, 3]
        return self.top(torch.cat([d, inter], 1))


class MessagePassing(nn.Module):
    """A graph network on an edge list: node features gathered along edges and summed at targets
    (``index_add``). The inputs are one graph: node count and edge count are not a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.msg, self.upd, self.out = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, x, edge_index):
        h = F.relu(self.inp(x))
        src, dst = edge_index[0], edge_index[1]
        agg = torch.zeros_like(h).index_add(0, dst, self.msg(h)[src])
        h = F.relu(self.upd(torch.cat([h, agg], 1)))
        return self.out(h)


def _graph(n: int, g: torch.Generator):
    nodes = 4 * n
    return torch.randn(nodes, 6, generator=g), torch.randint(0, nodes, (2, 3 * nodes), generator=g)


class SpectrogramNet(nn.Module):
    """An STFT front end (complex spectrum → log magnitude) before 1-D convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(32))
        self.conv = nn.Conv1d(17, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, wave):
        spec = torch.stft(wave, n_fft=32, hop_length=8, window=self.window, return_complex=True)  # [N, 17, frames]
        feats = torch.log1p(spec.abs())
        return self.head(F.relu(self.conv(feats)).mean(-1))


class UnfoldPatches(nn.Module):
    """A hand-written patch embedding: ``F.unfold`` then a linear, then a tiny mixer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mix, self.head = nn.Linear(3 * 4 * 4, 16), nn.Linear(16, 16), nn.Linear(16, 5)

    def forward(self, x):
        patches = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # [N, patches, 48]
        h = self.embed(patches)
        h = h + F.gelu(self.mix(F.layer_norm(h, (16,))))
        return self.head(h.mean(1))


class Activations(nn.Module):
    """PReLU, Mish, ELU, SELU, Softplus, Hardtanh, LeakyReLU, Softsign between convs."""

    def __init__(self) -> None:
        super().__init__()
        acts = [nn.PReLU(8), nn.Mish(), nn.ELU(), nn.SELU(), nn.Softplus(), nn.Hardtanh(-2, 2), nn.LeakyReLU(0.2), nn.Softsign()]
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *[m for a in acts for m in (a, nn.Conv2d(8, 8, 3, padding=1))])
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class StyleTransfer(nn.Module):
    """Johnson-style: reflection padding, InstanceNorm with affine, a residual block, bicubic
    upsampling, a tanh image out."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.ReflectionPad2d(2), nn.Conv2d(3, 8, 5, stride=2), nn.InstanceNorm2d(8, affine=True), nn.ReLU())
        self.res = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(8, 8, 3), nn.InstanceNorm2d(8, affine=True), nn.ReLU(),
                                 nn.ReflectionPad2d(1), nn.Conv2d(8, 8, 3), nn.InstanceNorm2d(8, affine=True))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        h = self.down(x)
        return torch.tanh(self.up(h + self.res(h)))


class Siamese(nn.Module):
    """One encoder on two images; cosine similarity and pairwise distances between their embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 16))

    def forward(self, a, b):
        ea, eb = self.enc(a), self.enc(b)
        return F.cosine_similarity(ea, eb, dim=1), torch.cdist(ea.unsqueeze(0), eb.unsqueeze(0)).squeeze(0)


class LearnedQueries(nn.Module):
    """DETR-style: learned object queries attend over flattened conv features in an
    ``nn.TransformerDecoder``; class and box heads per query, returned as a dict."""

    def __init__(self, queries: int = 5, d: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, d, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(d, d, 3, stride=2, padding=1))
        self.pos = nn.Parameter(torch.randn(1, 16, d) * 0.1)
        self.queries = nn.Parameter(torch.randn(queries, d))
        layer = nn.TransformerDecoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, 2)
        self.cls, self.box = nn.Linear(d, 4), nn.Linear(d, 4)

    def forward(self, x):
        mem = self.backbone(x).flatten(2).transpose(1, 2) + self.pos  # [N, 16, d]
        tgt = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        h = self.decoder(tgt, mem)
        return {"logits": self.cls(h), "boxes": self.box(h).sigmoid()}


class GreedyDecode(nn.Module):
    """Frame classifier that also returns its argmax labels (an integer output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv1d(8, 16, 3, padding=1), nn.Linear(16, 6)

    def forward(self, x):  # x: [N, 8, frames]
        logits = self.out(F.relu(self.conv(x)).transpose(1, 2))
        return logits.log_softmax(-1), logits.argmax(-1)


class NormalizedInput(nn.Module):
    """Input normalization by buffers, ``padding='same'`` and a circular-padded conv."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.a = nn.Conv2d(3, 8, 4, padding="same")
        self.b = nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular")
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = F.relu(self.a((x - self.mean) / self.std))
        return self.head(F.relu(self.b(h)).amax((2, 3)))


class CellLoop(nn.Module):
    """An ``nn.LSTMCell`` stepped over time in Python (the loop is unrolled by tracing)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.cell, self.out = nn.Linear(4, 8), nn.LSTMCell(8, 8), nn.Linear(8, 3)

    def forward(self, x):  # [N, steps, 4]
        h = c = x.new_zeros(x.shape[0], 8)
        for t in range(x.shape[1]):
            h, c = self.cell(F.relu(self.inp(x[:, t])), (h, c))
        return self.out(h)


CASES = {
    "stn": ("spatial transformer: affine_grid, grid_sample", lambda: (SpatialTransformer(), lambda n, g: (_images(n, g),))),
    "segnet_unpool": ("max_pool2d(return_indices=True), max_unpool2d", lambda: (SegNet(), lambda n, g: (_images(n, g),))),
    "dlrm": ("EmbeddingBag (sum, mean), bmm interactions, triu index gather",
             lambda: (DLRM(), lambda n, g: (torch.randn(n, 4, generator=g), torch.randint(0, 50, (n, 3), generator=g),
                                            torch.randint(0, 30, (n, 2), generator=g)))),
    "message_passing": ("graph net: an edge list, index_add at targets (no batch dim)", lambda: (MessagePassing(), _graph)),
    "stft": ("torch.stft (complex) front end, log magnitude, Conv1d",
             lambda: (SpectrogramNet(), lambda n, g: (torch.randn(n, 256, generator=g),))),
    "unfold_patches": ("F.unfold patch embedding, functional layer_norm, GELU", lambda: (UnfoldPatches(), lambda n, g: (_images(n, g),))),
    "activations": ("PReLU, Mish, ELU, SELU, Softplus, Hardtanh, LeakyReLU, Softsign", lambda: (Activations(), lambda n, g: (_images(n, g),))),
    "style_transfer": ("reflection padding, InstanceNorm2d(affine), bicubic upsampling, tanh",
                       lambda: (StyleTransfer(), lambda n, g: (_images(n, g),))),
    "siamese": ("one encoder on two images, cosine_similarity, cdist", lambda: (Siamese(), lambda n, g: (_images(n, g), _images(n, g)))),
    "learned_queries": ("DETR-style learned queries, nn.TransformerDecoder cross-attention, dict out",
                        lambda: (LearnedQueries(), lambda n, g: (_images(n, g),))),
    "argmax_out": ("returns log_softmax and argmax labels (an integer output)",
                   lambda: (GreedyDecode(), lambda n, g: (torch.randn(n, 8, 12, generator=g),))),
    "normalized_input": ("mean/std buffers, padding='same', circular padding, amax",
                         lambda: (NormalizedInput(), lambda n, g: (_images(n, g),))),
    "lstm_cell_loop": ("nn.LSTMCell stepped in a Python loop", lambda: (CellLoop(), lambda n, g: (torch.randn(n, 5, 4, generator=g),))),
}
