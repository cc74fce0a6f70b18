"""Eleventh round of user-style models for ``usage_scan.py`` (2026-12-07, seventh session): idioms of framework
and training code that stay in the forward of deployed models. Blocks run through
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` and ``checkpoint_sequential`` (left in at
inference), a ``torch.autocast("cpu", dtype=torch.bfloat16)`` island closed by ``.float()``, ``torch.cond`` on a
data-dependent predicate, heads picked from an ``nn.ModuleDict`` by a string held on the module or given as a
keyword (also by name, ``task="seg"``), a ``@dataclass`` output and a dict of per-level lists, in-place updates
of views (``x[:, :2] += y``, ``narrow(...).mul_``, ``index_put_(accumulate=True)``), LLaVA's ``masked_scatter``
of image features into token embeddings, ``pad_sequence`` over a list built in a ``forward(*segments)``, dtype
juggling (``new_zeros``, ``type_as``, ``.to(x.dtype)``, ``arange(device=x.device)`` positions), SDPA with
``enable_gqa=True`` and a boolean mask, ``F.multi_head_attention_forward`` called with a module's weights,
Mamba2's chunked SSD (``segsum`` by cumsum of log-decays and ``exp``), minGRU's log-space parallel scan
(``logcumsumexp``), timm's ``Block`` (``Mlp(act_layer=...)``, ``LayerScale``, ``DropPath``), Hugging Face's
``ACT2FN`` activations, uint8 NHWC images normalised and resized (bicubic, antialias) in the model, a
``register_forward_pre_hook(with_kwargs=True)`` on the root and on a block, a Lightning-style wrapper returning
``softmax(...).topk``, test-time augmentation by ``flip``/``roll`` around an ``F.unfold``/``F.fold`` patch mixer,
tracing guards (``torch._assert``, ``torch.jit.is_scripting``, ``torch.onnx.is_in_onnx_export``,
``torch.compiler.is_compiling``) and LoRA deltas merged into ``torch.func.functional_call``'s parameters.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from benchmarks.usage_models_research import _images, _tokens, _trained_norms


def _seq(n: int, g: torch.Generator, length: int = 8, d: int = 16) -> tuple:
    return (torch.randn(n, length, d, generator=g),)


# --- activation checkpointing left in the forward ----------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class CheckpointedNet(nn.Module):
    """timm's ``grad_checkpointing`` flag set for fine-tuning and never cleared: each block runs through
    ``checkpoint(block, x, use_reentrant=False)``, the tail through ``checkpoint_sequential``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.ModuleList([ResBlock(16) for _ in range(2)])
        self.tail = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), ResBlock(32), ResBlock(32))
        self.head = nn.Linear(32, 10)
        self.grad_checkpointing = True

    def forward(self, x):
        x = self.stem(x)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        x = checkpoint_sequential(self.tail, 2, x, use_reentrant=False)
        return self.head(x.mean((2, 3)))


# --- autocast island ---------------------------------------------------------------------------------------------
class AutocastIsland(nn.Module):
    """A float32 embedding and head around a ``torch.autocast("cpu", dtype=torch.bfloat16)`` region (the
    mixed-precision code path of a training script, kept in ``forward``), closed by ``.float()``."""

    def __init__(self, d: int = 16, h: int = 48) -> None:
        super().__init__()
        self.inp = nn.Linear(d, h)
        self.mid = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h))
        self.norm = nn.LayerNorm(h)
        self.head = nn.Linear(h, 6)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a = self.mid(h)
            s = torch.matmul(a, a.transpose(1, 2)) / math.sqrt(a.shape[-1])
            a = torch.matmul(s.softmax(-1), a)
        h = self.norm(h + a.float())
        return self.head(h.mean(1))


# --- torch.cond --------------------------------------------------------------------------------------------------
class CondBranch(nn.Module):
    """``torch.cond(x.mean() > 0, ...)``: the batch's mean input value picks one of two heads run on the encoded
    features (a data-dependent predicate: the branch taken differs between calibration batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(12, 32), nn.Tanh())
        self.pos = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        self.neg = nn.Sequential(nn.Linear(32, 16), nn.Sigmoid(), nn.Linear(16, 4))

    def forward(self, x):
        h = self.enc(x)

        def true_fn(h):
            return self.pos(h)

        def false_fn(h):
            return self.neg(h) * 2.0

        return torch.cond(x.mean() > 0, true_fn, false_fn, (h,))


def _cond_inputs(n: int, g: torch.Generator) -> tuple:
    shift = 0.6 * torch.randn(1, generator=g).sign()  # some batches take one branch, some the other
    return (torch.randn(n, 12, generator=g) + shift,)


# --- heads chosen by a string ------------------------------------------------------------------------------------
class MultiTaskNet(nn.Module):
    """A shared backbone and an ``nn.ModuleDict`` of task heads; ``forward(x, task=None)`` runs the head
    named by ``task``, or by ``self.task`` (set once after loading), plus ``self.aux_task``'s head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.heads = nn.ModuleDict({
            "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)),
            "reg": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)),
            "seg": nn.Conv2d(16, 3, 1),
        })
        self.task, self.aux_task = "cls", "reg"

    def forward(self, x, task: str | None = None):
        f = self.backbone(x)
        key = task if task is not None else self.task
        return {key: self.heads[key](f), self.aux_task: self.heads[self.aux_task](f)}


# --- structured outputs ------------------------------------------------------------------------------------------
@dataclass
class DetectorOutput:
    logits: torch.Tensor
    boxes: torch.Tensor
    loss: torch.Tensor | None = None


class DataclassOutput(nn.Module):
    """A detection head returning a ``@dataclass`` (``loss`` left None at inference)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.cls, self.box = nn.Conv2d(16, 4, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x) -> DetectorOutput:
        f = self.body(x)
        return DetectorOutput(logits=self.cls(f).flatten(2).transpose(1, 2), boxes=self.box(f).sigmoid().flatten(2).transpose(1, 2))


class PerLevelLists(nn.Module):
    """An FPN-style head: ``{"scores": [per level], "boxes": [per level]}``, a dict of lists of tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.score, self.box = nn.Conv2d(16, 3, 3, padding=1), nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        feats, out = [], {"scores": [], "boxes": []}
        for layer in (self.c1, self.c2, self.c3):
            x = layer(x)
            feats.append(x)
        for f in feats:
            out["scores"].append(self.score(f).sigmoid().flatten(2))
            out["boxes"].append(self.box(f).flatten(2).transpose(1, 2))
        return out


# --- in-place updates of views -----------------------------------------------------------------------------------
class InplaceViews(nn.Module):
    """``h[:, :, :2] += y``, ``h.narrow(-1, 2, 2).mul_(0.5)``, token features summed into buckets by
    ``index_put_(..., accumulate=True)`` with indices from ``arange``, a slice assigned from a projection."""

    def __init__(self, d: int = 16, buckets: int = 3) -> None:
        super().__init__()
        self.fc, self.side, self.buckets = nn.Linear(d, 8), nn.Linear(d, 2), buckets
        self.head = nn.Linear(buckets * 8, 5)

    def forward(self, x):
        B, T, _ = x.shape
        h = self.fc(x)
        h[:, :, :2] += self.side(x)
        h.narrow(-1, 2, 2).mul_(0.5)
        h[:, 0] = torch.tanh(h[:, 0])
        pooled = h.new_zeros(B, self.buckets, h.shape[-1])
        rows = torch.arange(B, device=x.device)[:, None].expand(B, T)
        cols = (torch.arange(T, device=x.device) % self.buckets)[None].expand(B, T)
        pooled.index_put_((rows, cols), h, accumulate=True)
        return self.head(pooled.flatten(1))


# --- LLaVA's masked_scatter --------------------------------------------------------------------------------------
class LlavaMerge(nn.Module):
    """LLaVA's ``get_placeholder_mask`` + ``masked_scatter``: the image-token ids in ``input_ids`` are
    replaced by projected patch features (4 per image) before a small decoder layer."""

    image_token_id = 1

    def __init__(self, vocab: int = 50, d: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.vision = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.GELU())  # 16x16 -> 2x2 patches
        self.projector = nn.Sequential(nn.Linear(16, d), nn.GELU(), nn.Linear(d, d))
        self.layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, input_ids, pixel_values):
        inputs_embeds = self.embed(input_ids)
        image_features = self.projector(self.vision(pixel_values).flatten(2).transpose(1, 2)).reshape(-1, inputs_embeds.shape[-1])
        special_image_mask = (input_ids == self.image_token_id).unsqueeze(-1).expand_as(inputs_embeds)
        inputs_embeds = inputs_embeds.masked_scatter(special_image_mask, image_features.to(inputs_embeds.dtype))
        return self.lm_head(self.layer(inputs_embeds))


def _llava_inputs(n: int, g: torch.Generator) -> tuple:
    ids = torch.randint(2, 50, (n, 10), generator=g)
    ids[:, 1:5] = LlavaMerge.image_token_id  # <bos> <image>x4 text...
    return ids, torch.randn(n, 3, 16, 16, generator=g)


# --- pad_sequence over a list built in forward(*args) ------------------------------------------------------------
class SegmentPool(nn.Module):
    """``forward(*segments)``: streams of different lengths, each encoded, padded together by
    ``pad_sequence`` (time first), masked by their lengths and mean-pooled, then fused."""

    def __init__(self, d: int = 8, h: int = 24) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, h))
        self.head = nn.Linear(h, 4)

    def forward(self, *segments):
        encoded = [self.enc(s).transpose(0, 1) for s in segments]  # (T_i, B, h)
        lengths = torch.tensor([e.shape[0] for e in encoded])
        padded = pad_sequence(encoded, batch_first=False)  # (T_max, S, B, h)
        mask = (torch.arange(padded.shape[0])[:, None] < lengths[None]).to(padded.dtype)  # (T_max, S)
        pooled = (padded * mask[:, :, None, None]).sum(0) / lengths[:, None, None].to(padded.dtype)  # (S, B, h)
        return self.head(pooled.max(0).values + pooled.mean(0))


def _segments(n: int, g: torch.Generator) -> tuple:
    return tuple(torch.randn(n, t, 8, generator=g) for t in (5, 9, 3))


# --- dtype juggling ----------------------------------------------------------------------------------------------
class DtypeJuggling(nn.Module):
    """Positions from ``torch.arange(T, device=x.device)``, an embedding ``.type_as(x)``, a bool mask
    ``.to(h.dtype)``, ``h.new_zeros``, ``x.new_tensor``, ``torch.full_like``, a count ``.clamp(min=1)``."""

    def __init__(self, d: int = 16, h: int = 32, max_len: int = 16) -> None:
        super().__init__()
        self.proj, self.pos = nn.Linear(d, h), nn.Embedding(max_len, h)
        self.out = nn.Linear(2 * h, 5)

    def forward(self, x):
        B, T, _ = x.shape
        positions = torch.arange(T, device=x.device).unsqueeze(0).expand(B, -1)
        h = self.proj(x) + self.pos(positions).type_as(x)
        valid = x.abs().sum(-1) > 0
        h = h * valid.unsqueeze(-1).to(h.dtype)
        count = valid.sum(1, keepdim=True).clamp(min=1).to(h.dtype)
        mean = h.sum(1) / count
        peak = h.new_zeros(B, h.shape[-1])
        peak = torch.maximum(peak, h.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(1))
        scale = x.new_tensor(1.0 / math.sqrt(h.shape[-1]))
        bias = torch.full_like(mean, 0.05)
        return self.out(torch.cat([mean * scale + bias, peak], -1))


def _padded_rows(n: int, g: torch.Generator) -> tuple:
    x = torch.randn(n, 10, 16, generator=g)
    keep = torch.arange(10)[None] < torch.randint(3, 11, (n, 1), generator=g)
    return (x * keep[..., None],)


# --- SDPA with GQA and a boolean mask ----------------------------------------------------------------------------
class GQABoolMask(nn.Module):
    """Llama-style attention: 4 query heads on 2 key/value heads by ``enable_gqa=True``; a boolean
    ``attn_mask`` (True = attend) from a causal ``tril`` and the input key-padding mask."""

    def __init__(self, d: int = 32, heads: int = 4, kv_heads: int = 2, vocab: int = 50) -> None:
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, d // heads
        self.emb = nn.Embedding(vocab, d)
        self.q = nn.Linear(d, d, bias=False)
        self.k, self.v = nn.Linear(d, kv_heads * self.hd, bias=False), nn.Linear(d, kv_heads * self.hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids)
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, D))
        return self.head(self.norm(x))


def _ids_bool_mask(n: int, g: torch.Generator) -> tuple:
    ids = torch.randint(0, 50, (n, 10), generator=g)
    mask = torch.arange(10)[None] < torch.randint(4, 11, (n, 1), generator=g)  # right padding, bool
    return ids, mask


# --- F.multi_head_attention_forward with a module's weights ------------------------------------------------------
class FunctionalMHA(nn.Module):
    """``F.multi_head_attention_forward`` called directly (sequence first) with an ``nn.MultiheadAttention``'s
    packed ``in_proj_weight``, its ``out_proj``, a float relative-position ``attn_mask`` buffer."""

    def __init__(self, d: int = 16, heads: int = 4, T: int = 8) -> None:
        super().__init__()
        self.attn, self.d, self.heads = nn.MultiheadAttention(d, heads), d, heads
        idx = torch.arange(T)
        self.register_buffer("rel_bias", -0.3 * (idx[:, None] - idx[None]).abs().float())
        self.ff = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, d))
        self.head = nn.Linear(d, 3)

    def forward(self, x):  # (B, T, d)
        q = x.transpose(0, 1)
        a, _ = F.multi_head_attention_forward(
            q, q, q, self.d, self.heads, self.attn.in_proj_weight, self.attn.in_proj_bias, None, None, False, 0.0,
            self.attn.out_proj.weight, self.attn.out_proj.bias, training=self.training, need_weights=False,
            attn_mask=self.rel_bias)
        h = x + a.transpose(0, 1)
        return self.head((h + self.ff(h)).mean(1))


# --- Mamba2's chunked SSD ----------------------------------------------------------------------------------------
def segsum(x: torch.Tensor) -> torch.Tensor:
    """mamba_ssm's stable ``segsum``: ``exp(segsum(A))`` is the 1-semiseparable decay matrix."""
    T = x.size(-1)
    x = x[..., None].repeat(*([1] * x.dim()), T)  # einops: repeat(x, "... d -> ... d e", e=T)
    mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), diagonal=-1)
    x = x.masked_fill(~mask, 0)
    x_segsum = torch.cumsum(x, dim=-2)
    mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), diagonal=0)
    return x_segsum.masked_fill(~mask, -torch.inf)


def ssd_minimal_discrete(X, A, B, C, block_len):
    """``mamba_ssm/modules/ssd_minimal.py`` with its ``rearrange`` calls written out.
    X: (b, l, h, p), A: (b, l, h), B, C: (b, l, h, n)."""
    b, length, h, p = X.shape
    c = length // block_len
    X, B, C = (t.reshape(b, c, block_len, *t.shape[2:]) for t in (X, B, C))
    A = A.reshape(b, c, block_len, h).permute(0, 3, 1, 2)  # b h c l
    A_cumsum = torch.cumsum(A, dim=-1)
    L = torch.exp(segsum(A))
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, X)
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunk = torch.exp(segsum(F.pad(A_cumsum[:, :, :, -1], (1, 0))))
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states = new_states[:, :-1]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, torch.exp(A_cumsum))
    return (Y_diag + Y_off).reshape(b, length, h, p)


class Mamba2Mixer(nn.Module):
    """A Mamba2 block: ``in_proj`` split into z, xBC, dt; a depthwise causal Conv1d; ``dt = softplus(dt + dt_bias)``,
    ``A = -exp(A_log)``; chunked SSD (chunk 4); ``D`` skip; gated RMSNorm; ``out_proj``."""

    def __init__(self, d: int = 16, heads: int = 2, headdim: int = 8, state: int = 8, chunk: int = 4) -> None:
        super().__init__()
        self.h, self.p, self.n, self.chunk = heads, headdim, state, chunk
        inner = heads * headdim
        self.conv_dim = inner + 2 * state
        self.in_proj = nn.Linear(d, 2 * inner + 2 * state + heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, 4, groups=self.conv_dim, padding=3)
        self.dt_bias = nn.Parameter(torch.linspace(-2.0, -0.5, heads))
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 4.0, heads)))
        self.D = nn.Parameter(torch.ones(heads))
        self.norm = nn.RMSNorm(inner, eps=1e-5)
        self.out_proj = nn.Linear(inner, d, bias=False)

    def forward(self, u):
        Bsz, L, _ = u.shape
        inner = self.h * self.p
        z, xBC, dt = torch.split(self.in_proj(u), [inner, self.conv_dim, self.h], dim=-1)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2))
        x, B, C = torch.split(xBC, [inner, self.n, self.n], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (b, l, h)
        A = -torch.exp(self.A_log.float())
        x = x.reshape(Bsz, L, self.h, self.p)
        B = B[:, :, None].expand(Bsz, L, self.h, self.n)
        C = C[:, :, None].expand(Bsz, L, self.h, self.n)
        y = ssd_minimal_discrete(x * dt[..., None], A * dt, B, C, self.chunk)
        y = y + x * self.D[:, None]
        y = self.norm(y.reshape(Bsz, L, inner) * F.silu(z))
        return self.out_proj(y)


class Mamba2LM(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Mamba2Mixer(d) for _ in range(2)])
        self.norms = nn.ModuleList([nn.RMSNorm(d) for _ in range(2)])
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.emb(ids)
        for norm, layer in zip(self.norms, self.layers):
            x = x + layer(norm(x))
        return self.head(x)


# --- minGRU's log-space parallel scan ----------------------------------------------------------------------------
def parallel_scan_log(log_coeffs, log_values):
    """Heinsen's scan as minGRU writes it: ``a_star = cumsum(log a)``, ``logcumsumexp(log b - a_star)``."""
    a_star = F.pad(torch.cumsum(log_coeffs, dim=1), (0, 0, 1, 0))
    log_h0_plus_b_star = torch.logcumsumexp(log_values - a_star, dim=1)
    log_h = a_star + log_h0_plus_b_star
    return torch.exp(log_h)[:, 1:]


def log_g(x):
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


class MinGRU(nn.Module):
    """minGRU (Feng et al., "Were RNNs All We Needed?") in its parallel mode with ``h_0 = 0.5``."""

    def __init__(self, d: int = 16, h: int = 32) -> None:
        super().__init__()
        self.to_hidden_and_gate = nn.Linear(d, 2 * h, bias=False)
        self.to_out = nn.Linear(h, d, bias=False)

    def forward(self, x):
        hidden, gate = self.to_hidden_and_gate(x).chunk(2, dim=-1)
        log_coeffs = -F.softplus(gate)
        log_z = -F.softplus(-gate)
        log_tilde_h = log_g(hidden)
        h0 = torch.full_like(hidden[:, :1], math.log(0.5))
        out = parallel_scan_log(log_coeffs, torch.cat([h0, log_z + log_tilde_h], dim=1))
        return self.to_out(out)


class MinGRUNet(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(6, d)
        self.rnns = nn.ModuleList([MinGRU(d) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(2)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        x = self.inp(x)
        for norm, rnn in zip(self.norms, self.rnns):
            x = x + rnn(norm(x))
        return self.head(x[:, -1])


# --- timm Block ------------------------------------------------------------------------------------------------
def drop_path(x, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)


class Mlp(nn.Module):
    """timm.layers.Mlp: ``act_layer`` passed as a class (or a ``partial``), ``use_conv`` picks 1x1 convs."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, norm_layer=None,
                 bias=True, drop=0.0, use_conv=False) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        linear_layer = partial(nn.Conv2d, kernel_size=1) if use_conv else nn.Linear
        self.fc1 = linear_layer(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = linear_layer(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


class Attention(nn.Module):
    """timm's ``Attention``: fused qkv, ``reshape/permute/unbind``, optional q/k norm, fused SDPA."""

    def __init__(self, dim, num_heads=4, qkv_bias=False, qk_norm=False, norm_layer=nn.LayerNorm) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj, self.proj_drop = nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=2.0, qk_norm=False, init_values=None, drop_path=0.0, act_layer=nn.GELU,
                 norm_layer=nn.LayerNorm, inplace_ls=False) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm, norm_layer=norm_layer)
        self.ls1 = LayerScale(dim, init_values, inplace_ls) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.ls2 = LayerScale(dim, init_values, inplace_ls) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class TimmViT(nn.Module):
    """Two timm blocks (``partial(nn.LayerNorm, eps=1e-6)``, LayerScale 0.5, DropPath 0.1, in-place
    LayerScale and qk-norm in the second, ``act_layer`` GELU-tanh by ``partial`` and SiLU) on 4x4 patches, a
    conv ``Mlp(use_conv=True)`` stem refiner, a class token."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.refine = Mlp(d, 2 * d, act_layer=nn.Hardswish, use_conv=True)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 17, d) * 0.02)
        self.blocks = nn.Sequential(
            Block(d, 4, init_values=0.5, drop_path=0.1, act_layer=partial(nn.GELU, approximate="tanh"), norm_layer=norm),
            Block(d, 4, init_values=0.5, drop_path=0.1, act_layer=nn.SiLU, norm_layer=norm, qk_norm=True, inplace_ls=True))
        self.norm = norm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = self.patch(x)
        x = (x + self.refine(x)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


# --- Hugging Face ACT2FN -----------------------------------------------------------------------------------------
class HFGatedMLPStack(nn.Module):
    """Gated MLPs as Llama/Gemma/Phi write them, ``self.act_fn = ACT2FN[config.hidden_act]``, one per
    activation name: silu, gelu_pytorch_tanh, gelu_new, quick_gelu, relu2."""

    acts = ("silu", "gelu_pytorch_tanh", "gelu_new", "quick_gelu", "relu2")

    def __init__(self, d: int = 24, h: int = 48) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.layers = nn.ModuleList()
        for name in self.acts:
            self.layers.append(nn.ModuleDict(dict(norm=nn.LayerNorm(d), gate_proj=nn.Linear(d, h, bias=False),
                                                  up_proj=nn.Linear(d, h, bias=False), down_proj=nn.Linear(h, d, bias=False),
                                                  act_fn=ACT2FN[name])))
        self.inp, self.head = nn.Linear(16, d), nn.Linear(d, 4)

    def forward(self, x):
        x = self.inp(x)
        for m in self.layers:
            y = m["norm"](x)
            x = x + m["down_proj"](m["act_fn"](m["gate_proj"](y)) * m["up_proj"](y))
        return self.head(x.mean(1))


# --- uint8 NHWC images, normalised and resized in the model ------------------------------------------------------
class Uint8Resize(nn.Module):
    """A camera frame as uint8 NHWC: ``permute``, ``x.float().div(255).sub(mean).div(std)`` with buffers,
    ``F.interpolate(size=(16, 16), mode="bicubic", antialias=True)`` down from 24x24, then a small CNN."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 6))

    def forward(self, frames):
        x = frames.permute(0, 3, 1, 2).float().div(255).sub(self.mean).div(self.std)
        x = F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
        return self.net(x)


def _uint8_frames(n: int, g: torch.Generator) -> tuple:
    return (torch.randint(0, 256, (n, 24, 24, 3), generator=g, dtype=torch.uint8),)


# --- forward pre-hooks with kwargs -------------------------------------------------------------------------------
class TemperatureBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x, temperature: float = 1.0):
        return x + torch.tanh(self.fc(x) / temperature)


class PreHooked(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(10, d)
        self.block = TemperatureBlock(d)
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.inp(x))))


def _root_hook(module, args, kwargs):
    """Rewrites the model's input: standardise each row (a preprocessing step bolted on by hook)."""
    (x,) = args
    return ((x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5),), kwargs


def _block_hook(module, args, kwargs):
    """Injects a keyword the caller never passes, and halves the input."""
    return (args[0] * 0.5,), {**kwargs, "temperature": 2.0}


def _pre_hooked():
    m = PreHooked()
    m.register_forward_pre_hook(_root_hook, with_kwargs=True)
    m.block.register_forward_pre_hook(_block_hook, with_kwargs=True)
    return m, lambda n, g: (torch.randn(n, 10, generator=g) * 3 + 1,)


# --- a Lightning-style wrapper -----------------------------------------------------------------------------------
class LitClassifier(nn.Module):
    """The ``LightningModule`` shape: ``self.model`` and ``self.hparams``; ``forward`` post-processes with a
    temperature softmax and returns ``topk``'s (values, indices)."""

    def __init__(self, model: nn.Module, k: int = 3, temperature: float = 1.5) -> None:
        super().__init__()
        self.model = model
        self.hparams = {"k": k, "temperature": temperature}

    def forward(self, x):
        logits = self.model(x)
        probs = F.softmax(logits / self.hparams["temperature"], dim=-1)
        return torch.topk(probs, k=self.hparams["k"], dim=-1)


def _lit():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    with torch.no_grad():  # spread the logits so the top 3 are not near-ties
        net[-1].weight.mul_(4.0)
    return _trained_norms(LitClassifier(net)), _images


# --- test-time augmentation around an unfold/fold patch mixer ----------------------------------------------------
class PatchMixer(nn.Module):
    """Non-overlapping 4x4 patches by ``F.unfold``, a token-mixing and a channel-mixing MLP, back by ``F.fold``."""

    def __init__(self, c: int = 3, side: int = 16, p: int = 4) -> None:
        super().__init__()
        self.p, self.side = p, side
        n, dim = (side // p) ** 2, c * p * p
        self.token_mix = nn.Sequential(nn.Linear(n, 2 * n), nn.GELU(), nn.Linear(2 * n, n))
        self.channel_mix = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))

    def forward(self, x):
        cols = F.unfold(x, kernel_size=self.p, stride=self.p)  # (B, C*p*p, L)
        cols = cols + self.token_mix(cols)
        t = cols.transpose(1, 2)
        t = t + self.channel_mix(t)
        return F.fold(t.transpose(1, 2), output_size=(self.side, self.side), kernel_size=self.p, stride=self.p)


class TTA(nn.Module):
    """Test-time augmentation: the prediction on x, on ``torch.flip(x, dims=[-1])`` flipped back, and on
    ``torch.roll(x, (2, 2))`` rolled back, averaged (a denoiser's ``forward`` at test time)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = PatchMixer()

    def forward(self, x):
        y = self.model(x)
        y = y + torch.flip(self.model(torch.flip(x, dims=[-1])), dims=[-1])
        y = y + torch.roll(self.model(torch.roll(x, shifts=(2, 2), dims=(-2, -1))), shifts=(-2, -2), dims=(-2, -1))
        return y / 3


# --- tracing guards ----------------------------------------------------------------------------------------------
class TracingGuards(nn.Module):
    """Guards export code meets in deployed models: ``torch._assert`` on the input's shape (torchvision's
    ViT), a ``torch.jit.is_scripting()`` branch, YOLOv5's ``torch.onnx.is_in_onnx_export()`` hardswish
    written out, and a ``torch.compiler.is_compiling()`` path; every branch computes the same values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 5)
        self.image_size = 16

    def forward(self, x):
        n, c, h, w = x.shape
        torch._assert(h == self.image_size, f"Wrong image height! Expected {self.image_size} but got {h}!")
        torch._assert(c == 3, "expected RGB input")
        y = self.conv1(x)
        if torch.onnx.is_in_onnx_export():
            y = y * F.relu6(y + 3.0) / 6.0
        else:
            y = F.hardswish(y)
        y = self.conv2(y)
        if not torch.jit.is_scripting() and torch.compiler.is_compiling():
            y = torch.clamp(y, min=0.0)
        else:
            y = F.relu(y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


# --- LoRA merged through torch.func.functional_call --------------------------------------------------------------
class LoRAFunctionalCall(nn.Module):
    """PEFT-like LoRA without module surgery: ``forward`` builds ``{name: W + (B @ A) * alpha / r}`` for the
    targeted weights and calls ``torch.func.functional_call(self.base, params, (x,))``."""

    def __init__(self, r: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.base = nn.Sequential(nn.Linear(16, 48), nn.GELU(), nn.Linear(48, 48), nn.GELU(), nn.Linear(48, 6))
        self.targets = ("0.weight", "2.weight")
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        g = torch.Generator().manual_seed(3)
        for name in self.targets:
            out_f, in_f = self.base.get_parameter(name).shape
            self.lora_A.append(nn.Parameter(torch.randn(r, in_f, generator=g) / math.sqrt(in_f)))
            self.lora_B.append(nn.Parameter(torch.randn(out_f, r, generator=g) * 0.1))  # "trained": not the zero init
        self.scaling = alpha / r

    def forward(self, x):
        params = dict(self.base.named_parameters())
        for name, a, b in zip(self.targets, self.lora_A, self.lora_B):
            params[name] = params[name] + (b @ a) * self.scaling
        return torch.func.functional_call(self.base, params, (x,))


CASES = {
    "checkpoint_blocks": ("torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) per block and "
                          "checkpoint_sequential(tail, 2, x) left in at inference", lambda: (
                              _trained_norms(CheckpointedNet()), _images)),
    "autocast_island": ("with torch.autocast('cpu', dtype=torch.bfloat16): linears, GELU, matmul attention; .float() after",
                        lambda: (AutocastIsland(), _seq)),
    "torch_cond": ("torch.cond(x.mean() > 0, true_fn, false_fn, (h,)): two heads, batches taking either branch",
                   lambda: (CondBranch(), _cond_inputs)),
    "task_heads": ("nn.ModuleDict heads by string: self.heads[task or self.task] and self.heads[self.aux_task], "
                   "forward(x, task=None) called with its default, dict keyed by the task names",
                   lambda: (_trained_norms(MultiTaskNet()), _images)),
    "task_by_name": ("the same multi-task model called by name with a string keyword: {'x': images, 'task': 'seg'}",
                     lambda: (_trained_norms(MultiTaskNet()), lambda n, g: {"x": _images(n, g)[0], "task": "seg"})),
    "dataclass_output": ("forward returns a @dataclass(logits, boxes, loss=None)", lambda: (DataclassOutput(), _images)),
    "dict_of_lists": ("forward returns {'scores': [3 levels], 'boxes': [3 levels]}, lists appended in a loop",
                      lambda: (PerLevelLists(), lambda n, g: _images(n, g, 32))),
    "inplace_views": ("h[:, :, :2] += y, h.narrow(-1, 2, 2).mul_(0.5), h[:, 0] = tanh(h[:, 0]), new_zeros + "
                      "index_put_((rows, cols), h, accumulate=True)", lambda: (InplaceViews(), _seq)),
    "llava_masked_scatter": ("LLaVA: (input_ids == image_token_id) mask expand_as embeds, masked_scatter of projected "
                             "patch features, TransformerEncoderLayer", lambda: (LlavaMerge(), _llava_inputs)),
    "pad_sequence_args": ("forward(*segments) of lengths 5/9/3: pad_sequence over a list built in forward, length "
                          "mask from torch.tensor(lengths), masked mean, max over segments", lambda: (SegmentPool(), _segments)),
    "dtype_juggling": ("arange(T, device=x.device) positions, emb.type_as(x), bool mask .to(h.dtype), new_zeros, "
                       "new_tensor, full_like, clamp(min=1) counts, masked amax", lambda: (DtypeJuggling(), _padded_rows)),
    "sdpa_gqa_bool_mask": ("sdpa(enable_gqa=True) 4 on 2 heads, boolean attn_mask = tril & bool key-padding input, RMSNorm",
                           lambda: (GQABoolMask(), _ids_bool_mask)),
    "mha_functional": ("F.multi_head_attention_forward called with nn.MultiheadAttention's in_proj/out_proj weights, "
                       "sequence first, float attn_mask buffer", lambda: (FunctionalMHA(), _seq)),
    "mamba2_ssd": ("Mamba2 chunked SSD: segsum (repeat, tril masks, cumsum, -inf), exp, 4-operand einsums, "
                   "F.pad of chunk decays, depthwise causal conv, gated RMSNorm", lambda: (
                       Mamba2LM(), lambda n, g: _tokens(n, g, 12))),
    "min_gru_scan": ("minGRU parallel mode: -softplus log gates, where(x >= 0, log(relu+0.5), -softplus(-x)), "
                     "cumsum + logcumsumexp + exp (Heinsen scan)", lambda: (
                         MinGRUNet(), lambda n, g: (torch.randn(n, 10, 6, generator=g),))),
    "timm_block": ("timm Block: Mlp(act_layer=partial(GELU, 'tanh') / SiLU / Hardswish, use_conv), LayerScale "
                   "(x * gamma and x.mul_(gamma)), DropPath (eval), qk_norm, partial(LayerNorm, eps)",
                   lambda: (TimmViT(), _images)),
    "hf_act2fn": ("Hugging Face ACT2FN['silu' / 'gelu_pytorch_tanh' / 'gelu_new' / 'quick_gelu' / 'relu2'] in gated MLPs",
                  lambda: (HFGatedMLPStack(), _seq)),
    "uint8_nhwc_resize": ("uint8 NHWC frames: permute, .float().div(255).sub(mean).div(std), "
                          "interpolate(size=16, bicubic, antialias=True) from 24x24", lambda: (
                              _trained_norms(Uint8Resize()), _uint8_frames)),
    "pre_hook_kwargs": ("register_forward_pre_hook(with_kwargs=True) on the root (standardises the input) and on a "
                        "block (halves x, injects temperature=2.0)", _pre_hooked),
    "lightning_topk": ("Lightning-style wrapper: self.model, self.hparams dict, softmax(logits / T).topk(3) "
                       "(values, indices)", _lit),
    "tta_unfold_fold": ("TTA: mean of model(x), flip(model(flip(x))), roll back of model(roll(x)); the model "
                        "F.unfold 4x4 patches, token/channel MLPs, F.fold", lambda: (TTA(), _images)),
    "tracing_guards": ("torch._assert on shape, torch.onnx.is_in_onnx_export() branch, jit.is_scripting / "
                       "compiler.is_compiling branch (same values either way)", lambda: (TracingGuards(), _images)),
    "lora_functional_call": ("LoRA deltas W + B @ A * alpha / r merged in forward, torch.func.functional_call(base, params)",
                             lambda: (LoRAFunctionalCall(), lambda n, g: (torch.randn(n, 16, generator=g),))),
}
