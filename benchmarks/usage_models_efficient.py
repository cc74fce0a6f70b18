"""Nineteenth round of user-style models for ``usage_scan.py`` (2026-12-08): efficient and long-sequence models, written as
their reference repositories write them (safari, torchscale and Jamie Stirling's RetNet, performer-pytorch, reformer-pytorch,
Hugging Face Longformer / BigBird / Nystromformer, state-spaces s4d, fairseq MEGA, NX-AI xLSTM, linformer, Synthesizer,
lucidrains local-attention, flash-linear-attention). Long convolutions: Hyena's implicit filter (a positional-embedding MLP
with ``Sin`` activations and exponential-decay modulation, ``fftconv`` by ``rfft(n=2L)`` / ``irfft(norm='forward')``, a
short depthwise conv, order-3 gating), S4D's complex diagonal kernel (``view_as_complex`` C, ``exp(dtA[..., None] *
arange(L))``, ``einsum(...).real``) with a GLU output, H3's shift SSM (FFT cross-correlation of ``B`` and ``C``) times a
diagonal SSM with ``weight @ u.T + bias`` projections, and MEGA's bidirectional multi-dimensional damped EMA (time-first,
``flip`` + pads, ``tile``-built relative-position bias, ``addcmul`` gate). Retention and recurrent-parallel forms:
RetNet's multi-scale retention (``gamma ** (n - m)`` decay, ``D[D != D] = 0``, xPos, ``GroupNorm`` over heads), torchscale's
vectorised retention (``masked_fill(inf)`` + ``exp`` + ``nan_to_num`` decay mask, ``theta_shift``), xLSTM's mLSTM in its
stabilised parallel form (``logsigmoid`` cumsum, ``where(tril, ..., -inf)``, row max, matrix-memory normaliser), and
gated linear attention with a chunked recurrence in a Python loop over fixed chunks. Sparse and low-rank attention:
Performer's FAVOR+ (orthogonal random features by ``linalg.qr`` as a buffer, ``exp(x W - |x|^2 / 2 - amax)``, linear
attention by ``einsum``), Reformer's LSH (fixed random rotations, ``argmax(cat([R, -R]))``, ``sort`` / ``gather`` /
``look_one_back`` chunks / unsort, ``logsumexp`` over hash rounds), Longformer's sliding chunks (HF's ``onnx_export``
chunking loop, ``_pad_and_transpose_last_two_dims``, ``_mask_invalid_locations``, window padding), BigBird-style
block-sparse attention (a fixed random-block index buffer, advanced-index gathers of key blocks), Nystromformer (segment-mean
landmarks, iterative pseudo-inverse, depthwise conv skip), Linformer (``E`` / ``F`` sequence projections sliced to the
length, one shared kv head), the Synthesizer's dense + random attention mix, and neighbourhood attention by ``F.pad`` +
``unfold``.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM = 64, 32


def _ids(n, g, length=32, low=1):
    return (torch.randint(low, VOCAB, (n, length), generator=g),)


class TokenLM(nn.Module):
    """Embedding -> pre-norm residual blocks (mixer + MLP) -> tied-free LM head, the shell most of these repos train in."""

    def __init__(self, mixers, dim=DIM, vocab=VOCAB):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mixers = nn.ModuleList(mixers)
        self.norms1 = nn.ModuleList([nn.LayerNorm(dim) for _ in mixers])
        self.norms2 = nn.ModuleList([nn.LayerNorm(dim) for _ in mixers])
        self.mlps = nn.ModuleList([nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)) for _ in mixers])
        self.norm_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for mixer, n1, n2, mlp in zip(self.mixers, self.norms1, self.norms2, self.mlps):
            x = x + mixer(n1(x))
            x = x + mlp(n2(x))
        return self.lm_head(self.norm_f(x))


# --- safari: Hyena operator ----------------------------------------------------------------------------------------------
def fftconv(u, k, D):
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=fft_size)
    if len(u.shape) > 3:
        k_f = k_f.unsqueeze(1)
    y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :seqlen]
    out = y + u * D.unsqueeze(-1)
    return out.to(dtype=u.dtype)


class Sin(nn.Module):
    def __init__(self, dim, w=10, train_freq=True):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim)) if train_freq else w * torch.ones(1, dim)

    def forward(self, x):
        return torch.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    def __init__(self, emb_dim, seq_len):
        super().__init__()
        self.seq_len = seq_len
        t = torch.linspace(0, 1, self.seq_len)[None, :, None]  # 1, L, 1
        bands = (emb_dim - 1) // 2
        t_rescaled = torch.linspace(0, seq_len - 1, seq_len)[None, :, None]
        w = 2 * math.pi * t_rescaled / seq_len
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.exp(-1j * f * w)
        z = torch.cat([t, z.real, z.imag], dim=-1)
        self.z = nn.Parameter(z)  # safari registers z with lr=lr_pos_emb (a parameter) and t with lr=0 (a buffer)
        self.register_buffer("t", t)

    def forward(self, L):
        return self.z[:, :L], self.t[:, :L]


class ExponentialModulation(nn.Module):
    def __init__(self, d_model, fast_decay_pct=0.3, slow_decay_pct=1.5, target=1e-2, modulate=True, shift=0.0):
        super().__init__()
        self.modulate, self.shift = modulate, shift
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, d_model)[None, None])

    def forward(self, t, x):
        if self.modulate:
            decay = torch.exp(-t * self.deltas.abs())
            x = x * (decay + self.shift)
        return x


class HyenaFilter(nn.Module):
    def __init__(self, d_model, emb_dim=5, order=16, seq_len=64, w=1, num_inner_mlps=2):
        super().__init__()
        self.d_model = d_model
        self.bias = nn.Parameter(torch.randn(self.d_model))
        act = Sin(dim=order, w=w)
        self.pos_emb = PositionalEmbedding(emb_dim, seq_len)
        self.implicit_filter = nn.Sequential(nn.Linear(emb_dim, order), act)
        for _ in range(num_inner_mlps):
            self.implicit_filter.append(nn.Linear(order, order))
            self.implicit_filter.append(act)
        self.implicit_filter.append(nn.Linear(order, d_model, bias=False))
        self.modulation = ExponentialModulation(d_model)

    def filter(self, L):
        z, t = self.pos_emb(L)
        h = self.implicit_filter(z)
        return self.modulation(t, h)

    def forward(self, x, L, k=None, bias=None):
        if k is None:
            k = self.filter(L)
        k = k[0] if type(k) is tuple else k
        return fftconv(x, k, bias)


class HyenaOperator(nn.Module):
    def __init__(self, d_model=DIM, l_max=64, order=3, filter_order=16):
        super().__init__()
        self.d_model, self.l_max, self.order = d_model, l_max, order
        inner_width = d_model * (order + 1)
        self.in_proj = nn.Linear(d_model, inner_width)
        self.out_proj = nn.Linear(d_model, d_model)
        self.short_filter = nn.Conv1d(inner_width, inner_width, 3, padding=2, groups=inner_width)
        self.filter_fn = HyenaFilter(d_model * (order - 1), order=filter_order, seq_len=l_max)

    def forward(self, u):
        l = u.size(-2)  # noqa: E741 - the reference's name
        l_filter = min(l, self.l_max)
        u = self.in_proj(u)
        u = u.transpose(1, 2)  # rearrange(u, 'b l d -> b d l')
        uc = self.short_filter(u)[..., :l_filter]
        *x, v = uc.split(self.d_model, dim=1)
        k = self.filter_fn.filter(l_filter)[0]
        k = k.reshape(l_filter, self.order - 1, self.d_model).permute(1, 2, 0)  # rearrange(k, 'l (o d) -> o d l')
        bias = self.filter_fn.bias.reshape(self.order - 1, self.d_model)
        for o, x_i in enumerate(reversed(x[1:])):
            v = v * x_i
            v = self.filter_fn(v, l_filter, k=k[o], bias=bias[o])
        y = (v * x[0]).transpose(1, 2)
        return self.out_proj(y)


# --- Jamie Stirling's RetNet: SimpleRetention with xPos, MultiScaleRetention with GroupNorm -------------------------------
def fixed_pos_embedding(x):
    seq_len, dim = x.shape
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim) / dim))
    sinusoid_inp = torch.einsum("i , j -> i j", torch.arange(0, seq_len, dtype=torch.float), inv_freq).to(x)
    return torch.sin(sinusoid_inp), torch.cos(sinusoid_inp)


def rotate_every_two(x):
    x1 = x[:, :, ::2]
    x2 = x[:, :, 1::2]
    x = torch.stack((-x2, x1), dim=-1)
    return x.flatten(-2)


def duplicate_interleave(m):
    dim0 = m.shape[0]
    m = m.view(-1, 1)
    m = m.repeat(1, 2)
    return m.view(dim0, -1)


def apply_xpos(x, sin, cos, scale=1):
    sin, cos = map(lambda t: duplicate_interleave(t * scale), (sin, cos))
    return (x * cos) + (rotate_every_two(x) * sin)


class XPOS(nn.Module):
    def __init__(self, head_dim, scale_base=512):
        super().__init__()
        self.head_dim, self.scale_base = head_dim, scale_base
        self.register_buffer("scale", (torch.arange(0, head_dim, 2) + 0.4 * head_dim) / (1.4 * head_dim))

    def forward(self, x, offset=0, downscale=False):
        length = x.shape[1]
        min_pos = 0
        max_pos = length + offset + min_pos
        scale = self.scale ** torch.arange(min_pos, max_pos, 1).to(self.scale).div(self.scale_base)[:, None]
        sin, cos = fixed_pos_embedding(scale)
        if scale.shape[0] > length:
            scale = scale[-length:]
            sin = sin[-length:]
            cos = cos[-length:]
        if downscale:
            scale = 1 / scale
        return apply_xpos(x, sin, cos, scale)


class SimpleRetention(nn.Module):
    def __init__(self, hidden_size, gamma, head_size):
        super().__init__()
        self.gamma = gamma
        self.W_Q = nn.Parameter(torch.randn(hidden_size, head_size) / hidden_size)
        self.W_K = nn.Parameter(torch.randn(hidden_size, head_size) / hidden_size)
        self.W_V = nn.Parameter(torch.randn(hidden_size, head_size) / hidden_size)
        self.xpos = XPOS(head_size)

    def forward(self, X):
        sequence_length = X.shape[1]
        D = self._get_D(sequence_length).to(self.W_Q.device)
        Q = X @ self.W_Q
        K = X @ self.W_K
        Q = self.xpos(Q)
        K = self.xpos(K, downscale=True)
        V = X @ self.W_V
        ret = (Q @ K.permute(0, 2, 1)) * D.unsqueeze(0)
        return ret @ V

    def _get_D(self, sequence_length):
        n = torch.arange(sequence_length).unsqueeze(1)
        m = torch.arange(sequence_length).unsqueeze(0)
        D = (self.gamma ** (n - m)) * (n >= m).float()  # this ensures that the retention is causal
        D[D != D] = 0  # replace nan with 0
        return D


class MultiScaleRetention(nn.Module):
    def __init__(self, hidden_size=DIM, heads=4):
        super().__init__()
        self.hidden_size, self.heads = hidden_size, heads
        self.head_size = hidden_size // heads
        self.v_dim = hidden_size
        self.gammas = (1 - torch.exp(torch.linspace(math.log(1 / 32), math.log(1 / 512), heads))).detach().cpu().tolist()
        self.swish = lambda x: x * torch.sigmoid(x)
        self.W_G = nn.Parameter(torch.randn(hidden_size, self.v_dim) / hidden_size)
        self.W_O = nn.Parameter(torch.randn(self.v_dim, hidden_size) / hidden_size)
        self.group_norm = nn.GroupNorm(heads, self.v_dim)
        self.retentions = nn.ModuleList([SimpleRetention(hidden_size, gamma, self.head_size) for gamma in self.gammas])

    def forward(self, X):
        Y = []
        for i in range(self.heads):
            Y.append(self.retentions[i](X))
        Y = torch.cat(Y, dim=2)
        Y_shape = Y.shape
        Y = self.group_norm(Y.reshape(-1, self.v_dim)).reshape(Y_shape)
        return (self.swish(X @ self.W_G) * Y) @ self.W_O


# --- torchscale RetNet: RetNetRelPos decay mask + MultiScaleRetention.parallel_forward ------------------------------------
def theta_shift(x, sin, cos):
    return (x * cos) + (rotate_every_two_4d(x) * sin)


def rotate_every_two_4d(x):
    x1 = x[:, :, :, ::2]
    x2 = x[:, :, :, 1::2]
    x = torch.stack((-x2, x1), dim=-1)
    return x.flatten(-2)


class RetNetRelPos(nn.Module):
    def __init__(self, embed_dim=DIM, heads=4):
        super().__init__()
        angle = 1.0 / (10000 ** torch.linspace(0, 1, embed_dim // heads // 2))
        angle = angle.unsqueeze(-1).repeat(1, 2).flatten()
        decay = torch.log(1 - 2 ** (-5 - torch.arange(heads, dtype=torch.float)))
        self.register_buffer("angle", angle)
        self.register_buffer("decay", decay)

    def forward(self, slen):
        index = torch.arange(slen).to(self.decay)
        sin = torch.sin(index[:, None] * self.angle[None, :])
        cos = torch.cos(index[:, None] * self.angle[None, :])
        mask = torch.tril(torch.ones(slen, slen).to(self.decay))
        mask = torch.masked_fill(index[:, None] - index[None, :], ~mask.bool(), float("inf"))
        mask = torch.exp(mask * self.decay[:, None, None])
        mask = torch.nan_to_num(mask)
        mask = mask / mask.sum(dim=-1, keepdim=True).sqrt()
        return (sin, cos), mask


class RMSNormNoAffine(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class TorchscaleRetention(nn.Module):
    def __init__(self, embed_dim=DIM, value_dim=2 * DIM, num_heads=4):
        super().__init__()
        self.embed_dim, self.value_dim, self.num_heads = embed_dim, value_dim, num_heads
        self.head_dim = value_dim // num_heads
        self.key_dim = embed_dim // num_heads
        self.scaling = self.key_dim ** -0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, value_dim, bias=False)
        self.g_proj = nn.Linear(embed_dim, value_dim, bias=False)
        self.out_proj = nn.Linear(value_dim, embed_dim, bias=False)
        self.group_norm = RMSNormNoAffine(self.head_dim)
        self.rel_pos = RetNetRelPos(embed_dim, num_heads)

    def parallel_forward(self, qr, kr, v, mask):
        bsz, tgt_len, embed_dim = v.size()
        vr = v.view(bsz, tgt_len, self.num_heads, self.head_dim).transpose(1, 2)
        qk_mat = qr @ kr.transpose(-1, -2)  # bsz * m * tgt_len * tgt_len
        qk_mat = qk_mat * mask
        # invariant after normalization
        qk_mat = qk_mat / qk_mat.detach().abs().sum(dim=-1, keepdim=True).clamp(min=1, max=5e4)
        output = torch.matmul(qk_mat, vr)
        return output.transpose(1, 2)

    def forward(self, x):
        bsz, tgt_len, _ = x.size()
        (sin, cos), inner_mask = self.rel_pos(tgt_len)
        q = self.q_proj(x)
        k = self.k_proj(x)
        v = self.v_proj(x)
        g = self.g_proj(x)
        k = k * self.scaling
        q = q.view(bsz, tgt_len, self.num_heads, self.key_dim).transpose(1, 2)
        k = k.view(bsz, tgt_len, self.num_heads, self.key_dim).transpose(1, 2)
        qr = theta_shift(q, sin, cos)
        kr = theta_shift(k, sin, cos)
        output = self.parallel_forward(qr, kr, v, inner_mask)
        output = self.group_norm(output).reshape(bsz, tgt_len, self.head_dim * self.num_heads)
        output = F.silu(g) * output
        return self.out_proj(output)


# --- performer-pytorch: FAVOR+ ----------------------------------------------------------------------------------------------
def orthogonal_matrix_chunk(cols):
    unstructured_block = torch.randn((cols, cols))
    q, r = torch.linalg.qr(unstructured_block.cpu(), mode="reduced")
    return q.t()


def gaussian_orthogonal_random_matrix(nb_rows, nb_columns, scaling=0):
    nb_full_blocks = int(nb_rows / nb_columns)
    block_list = []
    for _ in range(nb_full_blocks):
        block_list.append(orthogonal_matrix_chunk(nb_columns))
    remaining_rows = nb_rows - nb_full_blocks * nb_columns
    if remaining_rows > 0:
        block_list.append(orthogonal_matrix_chunk(nb_columns)[:remaining_rows])
    final_matrix = torch.cat(block_list)
    if scaling == 0:
        multiplier = torch.randn((nb_rows, nb_columns)).norm(dim=1)
    else:
        multiplier = math.sqrt(float(nb_columns)) * torch.ones((nb_rows,))
    return torch.diag(multiplier) @ final_matrix


def softmax_kernel(data, *, projection_matrix, is_query, normalize_data=True, eps=1e-4):
    b, h, *_ = data.shape
    data_normalizer = (data.shape[-1] ** -0.25) if normalize_data else 1.0
    ratio = projection_matrix.shape[0] ** -0.5
    projection = projection_matrix[None, None].expand(b, h, -1, -1)  # repeat(projection_matrix, 'j d -> b h j d')
    projection = projection.type_as(data)
    data_dash = torch.einsum("...id,...jd->...ij", (data_normalizer * data), projection)
    diag_data = data ** 2
    diag_data = torch.sum(diag_data, dim=-1)
    diag_data = (diag_data / 2.0) * (data_normalizer ** 2)
    diag_data = diag_data.unsqueeze(dim=-1)
    if is_query:
        data_dash = ratio * (torch.exp(data_dash - diag_data - torch.amax(data_dash, dim=-1, keepdim=True).detach()) + eps)
    else:
        data_dash = ratio * (torch.exp(data_dash - diag_data - torch.amax(data_dash, dim=(-1, -2), keepdim=True).detach()) + eps)
    return data_dash.type_as(data)


def linear_attention(q, k, v):
    k_cumsum = k.sum(dim=-2)
    D_inv = 1.0 / torch.einsum("...nd,...d->...n", q, k_cumsum.type_as(q))
    context = torch.einsum("...nd,...ne->...de", k, v)
    return torch.einsum("...de,...nd,...n->...ne", context, q, D_inv)


class FastAttention(nn.Module):
    def __init__(self, dim_heads, nb_features=None, ortho_scaling=0):
        super().__init__()
        nb_features = nb_features or int(dim_heads * math.log(dim_heads))
        self.dim_heads, self.nb_features = dim_heads, nb_features
        projection_matrix = gaussian_orthogonal_random_matrix(nb_rows=nb_features, nb_columns=dim_heads, scaling=ortho_scaling)
        self.register_buffer("projection_matrix", projection_matrix)

    def forward(self, q, k, v):
        q = softmax_kernel(q, is_query=True, projection_matrix=self.projection_matrix)
        k = softmax_kernel(k, is_query=False, projection_matrix=self.projection_matrix)
        return linear_attention(q, k, v)


class PerformerSelfAttention(nn.Module):
    def __init__(self, dim=DIM, heads=4, dim_head=8, nb_features=16):
        super().__init__()
        self.heads = heads
        self.fast_attention = FastAttention(dim_head, nb_features)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_k = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_v = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # rearrange 'b n (h d) -> b h n d'
        out = self.fast_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


# --- reformer-pytorch: LSHAttention ----------------------------------------------------------------------------------------
TOKEN_SELF_ATTN_VALUE = -5e4


def sort_key_val(t1, t2, dim=-1):
    values, indices = t1.sort(dim=dim)
    t2 = t2.expand_as(t1)
    return values, t2.gather(dim, indices)


def batched_index_select(values, indices):
    last_dim = values.shape[-1]
    return values.gather(1, indices[:, :, None].expand(-1, -1, last_dim))


def look_one_back(x):
    x_extra = torch.cat([x[:, -1:, ...], x[:, :-1, ...]], dim=1)
    return torch.cat([x, x_extra], dim=2)


class LSHAttention(nn.Module):
    """reformer-pytorch's LSHAttention with the random rotations drawn once into a buffer (deterministic at eval, as HF's
    ``hash_seed``), one rotation set shared by the batch (``random_rotations_per_head=False``)."""

    def __init__(self, dim_head=8, bucket_size=4, n_hashes=2, max_buckets=8):
        super().__init__()
        self.bucket_size, self.n_hashes = bucket_size, n_hashes
        self.register_buffer("random_rotations", torch.randn(1, dim_head, n_hashes, max_buckets // 2))

    def hash_vectors(self, n_buckets, vecs):
        batch_size = vecs.shape[0]
        random_rotations = self.random_rotations[..., : n_buckets // 2].expand(batch_size, -1, -1, -1)
        rotated_vecs = torch.einsum("btf,bfhi->bhti", vecs, random_rotations)
        rotated_vecs = torch.cat([rotated_vecs, -rotated_vecs], dim=-1)
        buckets = torch.argmax(rotated_vecs, dim=-1)
        offsets = torch.arange(self.n_hashes, device=vecs.device)
        offsets = torch.reshape(offsets * n_buckets, (1, -1, 1))
        return torch.reshape(buckets + offsets, (batch_size, -1))

    def forward(self, qk, v):
        batch_size, seqlen, dim = qk.shape
        n_buckets = seqlen // self.bucket_size
        buckets = self.hash_vectors(n_buckets, qk)
        total_hashes = self.n_hashes
        ticker = torch.arange(total_hashes * seqlen, device=qk.device).unsqueeze(0).expand_as(buckets)
        buckets_and_t = seqlen * buckets + (ticker % seqlen)
        buckets_and_t = buckets_and_t.detach()
        sbuckets_and_t, sticker = sort_key_val(buckets_and_t, ticker, dim=-1)
        _, undo_sort = sticker.sort(dim=-1)
        del buckets_and_t
        st = sticker % seqlen
        sqk = batched_index_select(qk, st)
        sv = batched_index_select(v, st)
        chunk_size = total_hashes * n_buckets
        bq_t = bkv_t = torch.reshape(st, (batch_size, chunk_size, -1))
        bqk = torch.reshape(sqk, (batch_size, chunk_size, -1, dim))
        bv = torch.reshape(sv, (batch_size, chunk_size, -1, dim))
        bq = bqk
        bk = F.normalize(bqk, p=2, dim=-1).type_as(bq)
        bk = look_one_back(bk)
        bv = look_one_back(bv)
        bkv_t = look_one_back(bkv_t)
        dots = torch.einsum("bhie,bhje->bhij", bq, bk) * (dim ** -0.5)
        self_mask = bq_t[:, :, :, None] == bkv_t[:, :, None, :]
        dots.masked_fill_(self_mask, TOKEN_SELF_ATTN_VALUE)
        del self_mask
        dots_logsumexp = torch.logsumexp(dots, dim=-1, keepdim=True)
        dots = torch.exp(dots - dots_logsumexp).type_as(dots)
        bo = torch.einsum("buij,buje->buie", dots, bv)
        so = torch.reshape(bo, (batch_size, -1, dim))
        slogits = torch.reshape(dots_logsumexp, (batch_size, -1))
        o = batched_index_select(so, undo_sort)
        logits = slogits.gather(1, undo_sort)
        o = torch.reshape(o, (batch_size, total_hashes, seqlen, dim))
        logits = torch.reshape(logits, (batch_size, total_hashes, seqlen, 1))
        probs = torch.exp(logits - torch.logsumexp(logits, dim=1, keepdim=True))
        return torch.sum(o * probs, dim=1)


class LSHSelfAttention(nn.Module):
    def __init__(self, dim=DIM, heads=4, bucket_size=4, n_hashes=2):
        super().__init__()
        self.heads = heads
        self.toqk = nn.Linear(dim, dim, bias=False)
        self.tov = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.lsh_attn = LSHAttention(dim // heads, bucket_size, n_hashes)

    def forward(self, x):
        b, t, _, h = *x.shape, self.heads
        qk, v = self.toqk(x), self.tov(x)

        def merge_heads(v):
            return v.view(b, t, h, -1).transpose(1, 2).reshape(b * h, t, -1)

        def split_heads(v):
            return v.view(b, h, t, -1).transpose(1, 2).contiguous()

        out = self.lsh_attn(merge_heads(qk), merge_heads(v))
        return self.to_out(split_heads(out).view(b, t, -1))


# --- HF Longformer: sliding-chunks attention, the onnx_export (as_strided-free) chunking -----------------------------------
class LongformerSelfAttention(nn.Module):
    def __init__(self, dim=DIM, heads=4, attention_window=8):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.one_sided_attn_window_size = attention_window // 2
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    @staticmethod
    def _pad_and_transpose_last_two_dims(hidden_states_padded, padding):
        hidden_states_padded = F.pad(hidden_states_padded, padding)
        return hidden_states_padded.view(*hidden_states_padded.size()[:-2], hidden_states_padded.size(-1),
                                         hidden_states_padded.size(-2))

    @staticmethod
    def _pad_and_diagonalize(chunked_hidden_states):
        total_num_heads, num_chunks, window_overlap, hidden_dim = chunked_hidden_states.size()
        chunked_hidden_states = F.pad(chunked_hidden_states, (0, window_overlap + 1))
        chunked_hidden_states = chunked_hidden_states.view(total_num_heads, num_chunks, -1)
        chunked_hidden_states = chunked_hidden_states[:, :, :-window_overlap]
        chunked_hidden_states = chunked_hidden_states.view(total_num_heads, num_chunks, window_overlap, window_overlap + hidden_dim)
        return chunked_hidden_states[:, :, :, :-1]

    @staticmethod
    def _chunk(hidden_states, window_overlap):
        chunk_size = [hidden_states.size(0), torch.div(hidden_states.size(1), window_overlap, rounding_mode="trunc") - 1,
                      window_overlap * 2, hidden_states.size(2)]
        overlapping_chunks = torch.empty(chunk_size, device=hidden_states.device)
        for chunk in range(chunk_size[1]):
            overlapping_chunks[:, chunk, :, :] = hidden_states[:, chunk * window_overlap: chunk * window_overlap + 2 * window_overlap, :]
        return overlapping_chunks

    @staticmethod
    def _mask_invalid_locations(input_tensor, affected_seq_len):
        beginning_mask_2d = input_tensor.new_ones(affected_seq_len, affected_seq_len + 1).tril().flip(dims=[0])
        beginning_mask = beginning_mask_2d[None, :, None, :]
        ending_mask = beginning_mask.flip(dims=(1, 3))
        beginning_input = input_tensor[:, :affected_seq_len, :, : affected_seq_len + 1]
        beginning_mask = beginning_mask.expand(beginning_input.size())
        input_tensor[:, :affected_seq_len, :, : affected_seq_len + 1] = torch.full_like(
            beginning_input, -float("inf")).where(beginning_mask.bool(), beginning_input)
        ending_input = input_tensor[:, -affected_seq_len:, :, -(affected_seq_len + 1):]
        ending_mask = ending_mask.expand(ending_input.size())
        input_tensor[:, -affected_seq_len:, :, -(affected_seq_len + 1):] = torch.full_like(
            ending_input, -float("inf")).where(ending_mask.bool(), ending_input)

    def _sliding_chunks_query_key_matmul(self, query, key, window_overlap):
        batch_size, seq_len, num_heads, head_dim = query.size()
        chunks_count = torch.div(seq_len, window_overlap, rounding_mode="trunc") - 1
        query = query.transpose(1, 2).reshape(batch_size * num_heads, seq_len, head_dim)
        key = key.transpose(1, 2).reshape(batch_size * num_heads, seq_len, head_dim)
        query = self._chunk(query, window_overlap)
        key = self._chunk(key, window_overlap)
        diagonal_chunked_attention_scores = torch.einsum("bcxd,bcyd->bcxy", (query, key))
        diagonal_chunked_attention_scores = self._pad_and_transpose_last_two_dims(diagonal_chunked_attention_scores,
                                                                                  padding=(0, 0, 0, 1))
        diagonal_attention_scores = diagonal_chunked_attention_scores.new_zeros(
            (batch_size * num_heads, chunks_count + 1, window_overlap, window_overlap * 2 + 1))
        diagonal_attention_scores[:, :-1, :, window_overlap:] = diagonal_chunked_attention_scores[
            :, :, :window_overlap, : window_overlap + 1]
        diagonal_attention_scores[:, -1, :, window_overlap:] = diagonal_chunked_attention_scores[
            :, -1, window_overlap:, : window_overlap + 1]
        diagonal_attention_scores[:, 1:, :, :window_overlap] = diagonal_chunked_attention_scores[
            :, :, -(window_overlap + 1): -1, window_overlap + 1:]
        diagonal_attention_scores[:, 0, 1:window_overlap, 1:window_overlap] = diagonal_chunked_attention_scores[
            :, 0, : window_overlap - 1, 1 - window_overlap:]
        diagonal_attention_scores = diagonal_attention_scores.view(
            batch_size, num_heads, seq_len, 2 * window_overlap + 1).transpose(2, 1)
        self._mask_invalid_locations(diagonal_attention_scores, window_overlap)
        return diagonal_attention_scores

    def _sliding_chunks_matmul_attn_probs_value(self, attn_probs, value, window_overlap):
        batch_size, seq_len, num_heads, head_dim = value.size()
        chunked_attn_probs = attn_probs.transpose(1, 2).reshape(
            batch_size * num_heads, torch.div(seq_len, window_overlap, rounding_mode="trunc"), window_overlap, 2 * window_overlap + 1)
        value = value.transpose(1, 2).reshape(batch_size * num_heads, seq_len, head_dim)
        padded_value = F.pad(value, (0, 0, window_overlap, window_overlap), value=-1)
        # (B*H, chunks + 1, 3w, D) overlapping value chunks, by unfold rather than as_strided
        chunked_value = padded_value.unfold(1, 3 * window_overlap, window_overlap).transpose(-1, -2)
        chunked_attn_probs = self._pad_and_diagonalize(chunked_attn_probs)
        context = torch.einsum("bcwd,bcdh->bcwh", (chunked_attn_probs, chunked_value))
        return context.view(batch_size, num_heads, seq_len, head_dim).transpose(1, 2)

    def forward(self, hidden_states, attention_mask):
        """``attention_mask``: (B, L) with -10000 at padding, 0 elsewhere (HF's extended local mask)."""
        hidden_states = hidden_states.transpose(0, 1)  # HF works sequence-first here
        query_vectors = self.query(hidden_states) / math.sqrt(self.head_dim)
        key_vectors = self.key(hidden_states)
        value_vectors = self.value(hidden_states)
        seq_len, batch_size, embed_dim = hidden_states.size()
        query_vectors = query_vectors.view(seq_len, batch_size, self.num_heads, self.head_dim).transpose(0, 1)
        key_vectors = key_vectors.view(seq_len, batch_size, self.num_heads, self.head_dim).transpose(0, 1)
        attn_scores = self._sliding_chunks_query_key_matmul(query_vectors, key_vectors, self.one_sided_attn_window_size)
        remove_from_windowed_attention_mask = (attention_mask != 0)[:, :, None, None]
        float_mask = remove_from_windowed_attention_mask.type_as(query_vectors).masked_fill(
            remove_from_windowed_attention_mask, torch.finfo(query_vectors.dtype).min)
        diagonal_mask = self._sliding_chunks_query_key_matmul(float_mask.new_ones(size=float_mask.size()), float_mask,
                                                              self.one_sided_attn_window_size)
        attn_scores += diagonal_mask
        attn_probs = F.softmax(attn_scores, dim=-1, dtype=torch.float32)
        is_index_masked = attention_mask < 0
        attn_probs = torch.masked_fill(attn_probs, is_index_masked[:, :, None, None], 0.0)
        value_vectors = value_vectors.view(seq_len, batch_size, self.num_heads, self.head_dim).transpose(0, 1)
        attn_output = self._sliding_chunks_matmul_attn_probs_value(attn_probs, value_vectors, self.one_sided_attn_window_size)
        attn_output = attn_output.transpose(0, 1).reshape(seq_len, batch_size, embed_dim).contiguous()
        return self.out(attn_output.transpose(0, 1))


class LongformerEncoder(nn.Module):
    """HF ``LongformerModel._pad_to_window_size``: ids and mask padded to a multiple of the window, the extended mask
    ``(1 - mask) * -10000``, layers, then the padding cut off."""

    def __init__(self, dim=DIM, layers=2, attention_window=8, pad_token_id=1):
        super().__init__()
        self.attention_window, self.pad_token_id = attention_window, pad_token_id
        self.embeddings = nn.Embedding(VOCAB, dim, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(72, dim)
        self.ln = nn.LayerNorm(dim)
        self.attn = nn.ModuleList([LongformerSelfAttention(dim, attention_window=attention_window) for _ in range(layers)])
        self.ffn = nn.ModuleList([nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)) for _ in range(layers)])
        self.ln1 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.ln2 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.classifier = nn.Linear(dim, 3)

    def forward(self, input_ids, attention_mask):
        seq_len = input_ids.shape[1]
        padding_len = (self.attention_window - seq_len % self.attention_window) % self.attention_window
        if padding_len > 0:
            input_ids = F.pad(input_ids, (0, padding_len), value=self.pad_token_id)
            attention_mask = F.pad(attention_mask, (0, padding_len), value=0)
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        x = self.ln(self.embeddings(input_ids) + self.position_embeddings(position_ids))
        extended = (1.0 - attention_mask[:, :].to(x.dtype)) * -10000.0
        for attn, ffn, ln1, ln2 in zip(self.attn, self.ffn, self.ln1, self.ln2):
            x = ln1(x + attn(x, extended))
            x = ln2(x + ffn(x))
        x = x[:, :seq_len]  # unpad
        return self.classifier(x)


def _padded_ids(n, g, length=28, pad=1):
    ids = torch.randint(2, VOCAB, (n, length), generator=g)
    mask = (torch.arange(length)[None] < torch.randint(length // 2, length + 1, (n, 1), generator=g)).long()
    return ids * mask + pad * (1 - mask), mask


# --- BigBird-style block-sparse attention: global + sliding + random blocks, random blocks as a fixed index buffer --------
class BlockSparseAttention(nn.Module):
    def __init__(self, dim=DIM, heads=4, block_size=4, num_blocks=8, num_rand_blocks=2, seed=3):
        super().__init__()
        self.heads, self.head_dim, self.block_size = heads, dim // heads, block_size
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        nb = num_blocks
        gen = torch.Generator().manual_seed(seed)
        rows, valid = [], []
        for _h in range(heads):
            h_rows, h_valid = [], []
            for i in range(1, nb - 1):  # middle query blocks: globals, window, random
                window = [i - 1, i, i + 1]
                cand = [j for j in range(1, nb - 1) if j not in window]
                rand = [cand[int(t)] for t in torch.randperm(len(cand), generator=gen)[:num_rand_blocks]]
                idx = [0, nb - 1] + window + rand
                seen, ok = set(), []
                for j in idx:  # a block already attended (window touching a global one) is masked, not counted twice
                    ok.append(j not in seen)
                    seen.add(j)
                h_rows.append(idx)
                h_valid.append(ok)
            rows.append(h_rows)
            valid.append(h_valid)
        self.register_buffer("rand_attn", torch.tensor(rows))  # (heads, nb - 2, 5 + r) key-block indices
        self.register_buffer("valid", torch.tensor(valid))

    def forward(self, x, mask):
        b, n, _ = x.shape
        h, d, bs = self.heads, self.head_dim, self.block_size
        nb = n // bs
        q = self.query(x).view(b, n, h, d).transpose(1, 2) / math.sqrt(d)
        k = self.key(x).view(b, n, h, d).transpose(1, 2)
        v = self.value(x).view(b, n, h, d).transpose(1, 2)
        neg = torch.finfo(x.dtype).min
        key_pad = (1.0 - mask[:, None, None, :].to(x.dtype)) * neg  # (b, 1, 1, n)
        # global query blocks (first and last) attend to every key
        q_glob = torch.cat([q[:, :, :bs], q[:, :, -bs:]], dim=2)
        glob = torch.softmax(q_glob @ k.transpose(-1, -2) + key_pad, dim=-1) @ v  # (b, h, 2bs, d)
        # middle query blocks attend to the gathered key blocks
        kb = k.view(b, h, nb, bs, d)
        vb = v.view(b, h, nb, bs, d)
        mb = mask.view(b, nb, bs)
        head_idx = torch.arange(h, device=x.device)[:, None, None]
        k_g = kb[:, head_idx, self.rand_attn].flatten(3, 4)  # (b, h, nb - 2, n_att * bs, d)
        v_g = vb[:, head_idx, self.rand_attn].flatten(3, 4)
        m_g = mb[:, self.rand_attn] & self.valid[None, :, :, :, None]  # (b, h, nb - 2, n_att, bs)
        q_mid = q[:, :, bs:-bs].reshape(b, h, nb - 2, bs, d)
        scores = torch.einsum("bhnqd,bhnkd->bhnqk", q_mid, k_g)
        scores = scores.masked_fill(~m_g.flatten(3, 4)[:, :, :, None, :].bool(), neg)
        mid = torch.einsum("bhnqk,bhnkd->bhnqd", scores.softmax(-1), v_g).reshape(b, h, (nb - 2) * bs, d)
        out = torch.cat([glob[:, :, :bs], mid, glob[:, :, bs:]], dim=2)
        return self.out(out.transpose(1, 2).reshape(b, n, -1))


class BigBirdEncoder(nn.Module):
    def __init__(self, dim=DIM, layers=2, block_size=4, num_blocks=8):
        super().__init__()
        self.block_size = block_size
        self.embeddings = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.position_embeddings = nn.Embedding(block_size * num_blocks, dim)
        self.attn = nn.ModuleList([BlockSparseAttention(dim, block_size=block_size, num_blocks=num_blocks, seed=3 + i)
                                   for i in range(layers)])
        self.ln1 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.ln2 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.ffn = nn.ModuleList([nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)) for _ in range(layers)])
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask):
        # HF BigBirdModel._pad_to_block_size
        seq_len = input_ids.shape[1]
        padding_len = (self.block_size - seq_len % self.block_size) % self.block_size
        if padding_len > 0:
            input_ids = F.pad(input_ids, (0, padding_len), value=0)
            attention_mask = F.pad(attention_mask, (0, padding_len), value=False)
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embeddings(input_ids) + self.position_embeddings(pos)[None]
        for attn, ln1, ln2, ffn in zip(self.attn, self.ln1, self.ln2, self.ffn):
            x = ln1(x + attn(x, attention_mask))
            x = ln2(x + ffn(x))
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


# --- HF Nystromformer ----------------------------------------------------------------------------------------------------
class NystromformerSelfAttention(nn.Module):
    def __init__(self, dim=DIM, heads=4, num_landmarks=8, seq_len=32, conv_kernel_size=5, init_option="original"):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, dim // heads
        self.all_head_size = dim
        self.num_landmarks, self.seq_len, self.init_option = num_landmarks, seq_len, init_option
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.conv_kernel_size = conv_kernel_size
        self.conv = nn.Conv2d(heads, heads, kernel_size=(conv_kernel_size, 1), padding=(conv_kernel_size // 2, 0),
                              bias=False, groups=heads)

    def iterative_inv(self, mat, n_iter=6):
        identity = torch.eye(mat.size(-1), device=mat.device)
        key = mat
        if self.init_option == "original":  # this is the exact coefficient computation, 1 / ||K||_1, of initialization of Z_0
            value = 1 / torch.max(torch.sum(key, dim=-2)) * key.transpose(-1, -2)
        else:
            value = 1 / torch.max(torch.sum(key, dim=-2), dim=-1).values[:, :, None, None] * key.transpose(-1, -2)
        for _ in range(n_iter):
            key_value = torch.matmul(key, value)
            value = torch.matmul(0.25 * value, 13 * identity - torch.matmul(
                key_value, 15 * identity - torch.matmul(key_value, 7 * identity - key_value)))
        return value

    def transpose_for_scores(self, layer):
        new_layer_shape = layer.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        layer = layer.view(*new_layer_shape)
        return layer.permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask=None):
        mixed_query_layer = self.query(hidden_states)
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        query_layer = self.transpose_for_scores(mixed_query_layer)
        query_layer = query_layer / math.sqrt(math.sqrt(self.attention_head_size))
        key_layer = key_layer / math.sqrt(math.sqrt(self.attention_head_size))
        q_landmarks = query_layer.reshape(-1, self.num_attention_heads, self.num_landmarks,
                                          self.seq_len // self.num_landmarks, self.attention_head_size).mean(dim=-2)
        k_landmarks = key_layer.reshape(-1, self.num_attention_heads, self.num_landmarks,
                                        self.seq_len // self.num_landmarks, self.attention_head_size).mean(dim=-2)
        kernel_1 = F.softmax(torch.matmul(query_layer, k_landmarks.transpose(-1, -2)), dim=-1)
        kernel_2 = F.softmax(torch.matmul(q_landmarks, k_landmarks.transpose(-1, -2)), dim=-1)
        attention_scores = torch.matmul(q_landmarks, key_layer.transpose(-1, -2))
        if attention_mask is not None:
            attention_scores = attention_scores + attention_mask
        kernel_3 = F.softmax(attention_scores, dim=-1)
        attention_probs = torch.matmul(kernel_1, self.iterative_inv(kernel_2))
        new_value_layer = torch.matmul(kernel_3, value_layer)
        context_layer = torch.matmul(attention_probs, new_value_layer)
        if self.conv_kernel_size is not None:
            context_layer += self.conv(value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        return context_layer.view(*new_context_layer_shape)


class NystromEncoder(nn.Module):
    def __init__(self, dim=DIM, layers=2, seq_len=32):
        super().__init__()
        self.embeddings = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.position_embeddings = nn.Embedding(seq_len + 2, dim)
        self.register_buffer("position_ids", torch.arange(seq_len).expand((1, -1)) + 2)  # HF: arange(max_pos).expand((1, -1)) + 2
        self.attn = nn.ModuleList([NystromformerSelfAttention(dim, seq_len=seq_len) for _ in range(layers)])
        self.dense = nn.ModuleList([nn.Linear(dim, dim) for _ in range(layers)])
        self.ln1 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.ln2 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.ffn = nn.ModuleList([nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)) for _ in range(layers)])
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, input_ids, attention_mask):
        seq_length = input_ids.shape[1]
        x = self.embeddings(input_ids) + self.position_embeddings(self.position_ids[:, :seq_length])
        extended = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for attn, dense, ln1, ln2, ffn in zip(self.attn, self.dense, self.ln1, self.ln2, self.ffn):
            x = ln1(x + dense(attn(x, extended)))
            x = ln2(x + ffn(x))
        return self.head(x)


def _nystrom_inputs(n, g, length=32):
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    mask = (torch.arange(length)[None] < torch.randint(length // 2, length + 1, (n, 1), generator=g)).long()
    return ids * mask, mask


# --- state-spaces s4d.py: S4D kernel + FFT conv, the example.py S4Model -----------------------------------------------------
class S4DKernel(nn.Module):
    """Generate convolution kernel from diagonal SSM parameters."""

    def __init__(self, d_model, N=16, dt_min=0.001, dt_max=0.1):
        super().__init__()
        H = d_model
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        C = torch.randn(H, N // 2, dtype=torch.cfloat)
        self.C = nn.Parameter(torch.view_as_real(C))
        self.log_dt = nn.Parameter(log_dt)
        log_A_real = torch.log(0.5 * torch.ones(H, N // 2))
        A_imag = math.pi * torch.arange(N // 2).float().unsqueeze(0).repeat(H, 1)
        self.log_A_real = nn.Parameter(log_A_real)
        self.A_imag = nn.Parameter(A_imag)

    def forward(self, L):
        """returns: (..., c, L) where c is number of channels (default 1)"""
        dt = torch.exp(self.log_dt)  # (H)
        C = torch.view_as_complex(self.C)  # (H N)
        A = -torch.exp(self.log_A_real) + 1j * self.A_imag  # (H N)
        dtA = A * dt.unsqueeze(-1)  # (H N)
        K = dtA.unsqueeze(-1) * torch.arange(L, device=A.device)  # (H N L)
        C = C * (torch.exp(dtA) - 1.0) / A
        K = 2 * torch.einsum("hn, hnl -> hl", C, torch.exp(K)).real
        return K


class S4D(nn.Module):
    def __init__(self, d_model, d_state=16, transposed=True):
        super().__init__()
        self.h, self.n, self.transposed = d_model, d_state, transposed
        self.D = nn.Parameter(torch.randn(self.h))
        self.kernel = S4DKernel(self.h, N=self.n)
        self.activation = nn.GELU()
        self.output_linear = nn.Sequential(nn.Conv1d(self.h, 2 * self.h, kernel_size=1), nn.GLU(dim=-2))

    def forward(self, u):
        """Input and output shape (B, H, L)"""
        if not self.transposed:
            u = u.transpose(-1, -2)
        L = u.size(-1)
        k = self.kernel(L=L)  # (H L)
        k_f = torch.fft.rfft(k, n=2 * L)  # (H L)
        u_f = torch.fft.rfft(u, n=2 * L)  # (B H L)
        y = torch.fft.irfft(u_f * k_f, n=2 * L)[..., :L]  # (B H L)
        y = y + u * self.D.unsqueeze(-1)
        y = self.activation(y)
        y = self.output_linear(y)
        if not self.transposed:
            y = y.transpose(-1, -2)
        return y


class S4Model(nn.Module):
    def __init__(self, d_input=3, d_output=10, d_model=DIM, n_layers=2, prenorm=False):
        super().__init__()
        self.prenorm = prenorm
        self.encoder = nn.Linear(d_input, d_model)
        self.s4_layers = nn.ModuleList([S4D(d_model) for _ in range(n_layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(d_model) for _ in range(n_layers)])
        self.decoder = nn.Linear(d_model, d_output)

    def forward(self, x):
        """Input x is shape (B, L, d_input)"""
        x = self.encoder(x)  # (B, L, d_input) -> (B, L, d_model)
        x = x.transpose(-1, -2)  # (B, L, d_model) -> (B, d_model, L)
        for layer, norm in zip(self.s4_layers, self.norms):
            z = x
            if self.prenorm:
                z = norm(z.transpose(-1, -2)).transpose(-1, -2)
            z = layer(z)
            x = z + x
            if not self.prenorm:
                x = norm(x.transpose(-1, -2)).transpose(-1, -2)
        x = x.transpose(-1, -2)
        x = x.mean(dim=1)
        return self.decoder(x)


# --- safari H3: shift SSM on k, diagonal SSM on k * v, q gate ---------------------------------------------------------------
class ShiftKernel(nn.Module):
    """SSKernelShift: A the shift matrix, B = e_1, C learned; kernel by FFT cross-correlation of B and C."""

    def __init__(self, H, N=8):
        super().__init__()
        self.N = N
        B = torch.zeros(H, N)
        B[..., 0] = 1.0
        self.register_buffer("B", B)
        self.C = nn.Parameter(torch.randn(1, H, N))

    def forward(self, L):
        B_f = torch.fft.rfft(self.B, n=2 * self.N)
        C_f = torch.fft.rfft(self.C, n=2 * self.N)
        k = torch.fft.irfft(B_f.conj() * C_f, n=2 * self.N)[..., : min(self.N, L)]
        if L > self.N:
            k = F.pad(k, (0, L - self.N))
        return k  # (1, H, L)


class H3(nn.Module):
    def __init__(self, d_model=DIM, d_state=16):
        super().__init__()
        self.d_model = self.H = d_model
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.ssm_k_kernel = ShiftKernel(d_model, N=8)
        self.ssm_k_D = nn.Parameter(torch.randn(d_model))
        self.kernel = S4DKernel(d_model, N=d_state)
        self.D = nn.Parameter(torch.randn(d_model))
        self.output_linear = nn.Linear(d_model, d_model)

    def forward(self, u):
        L = u.size(-2)
        dtype = u.dtype
        b = u.shape[0]
        u = u.reshape(b * L, self.H)  # rearrange(u, 'b l h -> (b l) h')
        q = self.q_proj.weight @ u.T + self.q_proj.bias.to(dtype).unsqueeze(-1)
        k = self.k_proj.weight @ u.T + self.k_proj.bias.to(dtype).unsqueeze(-1)
        v = self.v_proj.weight @ u.T + self.v_proj.bias.to(dtype).unsqueeze(-1)
        q, k, v = (x.reshape(self.H, b, L).transpose(0, 1) for x in (q, k, v))  # rearrange('h (b l) -> b h l')
        ssm_kernel = self.kernel(L=L)  # (h l)
        fft_size = L + L
        ssm_k_kernel = self.ssm_k_kernel(L)[0]
        k_f = torch.fft.rfft(k.to(ssm_kernel.dtype), n=fft_size)
        ssm_k_kernel_f = torch.fft.rfft(ssm_k_kernel, n=fft_size)
        shift_k_out = torch.fft.irfft(k_f * ssm_k_kernel_f, n=fft_size)[..., :L]
        k = shift_k_out + self.ssm_k_D.unsqueeze(-1) * k
        kv = k * v
        kv_f = torch.fft.rfft(kv.to(dtype=ssm_kernel.dtype), n=fft_size) / fft_size
        ssm_kernel_f = torch.fft.rfft(ssm_kernel, n=fft_size)
        y = torch.fft.irfft(kv_f * ssm_kernel_f, n=fft_size, norm="forward")[..., :L]
        y = y + kv * self.D.unsqueeze(-1)
        y = q * y
        y = y.transpose(1, 2)  # rearrange(y, 'b h l -> b l h')
        return self.output_linear(y)


# --- fairseq MEGA: MultiHeadEMA (bidirectional) + MovingAverageGatedAttention, time-first --------------------------------
class MultiHeadEMA(nn.Module):
    def __init__(self, embed_dim, ndim=2, bidirectional=True):
        super().__init__()
        self.embed_dim, self.ndim, self.bidirectional = embed_dim, ndim, bidirectional
        self.scale = math.sqrt(1.0 / self.ndim)
        kernel_dim = 2 * embed_dim if self.bidirectional else embed_dim
        self.delta = nn.Parameter(torch.Tensor(kernel_dim, ndim, 1))
        self.alpha = nn.Parameter(torch.Tensor(kernel_dim, ndim, 1))
        self.beta = nn.Parameter(torch.Tensor(kernel_dim, ndim, 1))
        self.gamma = nn.Parameter(torch.Tensor(kernel_dim, ndim))
        self.omega = nn.Parameter(torch.Tensor(embed_dim))
        with torch.no_grad():
            nn.init.normal_(self.delta, mean=0.0, std=0.2)
            nn.init.normal_(self.alpha, mean=0.0, std=0.2)
            val = torch.ones(self.ndim, 1)
            if self.ndim > 1:
                idx = torch.tensor(list(range(1, self.ndim, 2)))
                val.index_fill_(0, idx, -1.0)
            self.beta.normal_(mean=0.0, std=0.02).add_(val)
            nn.init.normal_(self.gamma, mean=0.0, std=1.0)
            nn.init.normal_(self.omega, mean=0.0, std=1.0)

    def _calc_coeffs(self):
        p = torch.sigmoid(self.delta)
        alpha = torch.sigmoid(self.alpha)
        q = 1.0 - p * alpha
        return p, q

    def _compute_kernel(self, length):
        p, q = self._calc_coeffs()
        vander = torch.arange(length).to(p).view(1, 1, length) * torch.log(q)
        kernel = (p * self.beta) * torch.exp(vander)
        return torch.einsum("dnl,dn->dl", kernel, self.gamma * self.scale)

    def forward(self, x, padding_mask=None):
        seq_len, bsz, embed_dim = x.size()
        residual = x * self.omega
        x = x.permute(1, 2, 0)  # B x D x L
        if padding_mask is not None:
            x = x * (1.0 - padding_mask.unsqueeze(1).type_as(x))
        k = self._compute_kernel(seq_len)
        fft_len = seq_len
        s = 0
        kernel_size = k.size(1)
        if self.bidirectional:
            k1, k2 = torch.split(k, [self.embed_dim, self.embed_dim], dim=0)
            k = F.pad(k1, (kernel_size - 1, 0)) + F.pad(k2.flip(-1), (0, kernel_size - 1))
            x = F.pad(x, (kernel_size - 1, 0))
            fft_len = fft_len + kernel_size - 1
            s = 2 * kernel_size - 2
        k_f = torch.fft.rfft(k.float(), n=2 * fft_len)
        x_f = torch.fft.rfft(x.float(), n=2 * fft_len)
        out = torch.fft.irfft(x_f * k_f, n=2 * fft_len)[..., s:s + seq_len]
        out = out.type_as(x)
        return F.silu(out.permute(2, 0, 1) + residual)


class SimpleRelativePositionalBias(nn.Module):
    def __init__(self, max_positions):
        super().__init__()
        self.max_positions = max_positions
        self.rel_pos_bias = nn.Parameter(0.02 * torch.randn(2 * max_positions - 1))

    def forward(self, seq_len):
        b = self.rel_pos_bias[(self.max_positions - seq_len):(self.max_positions + seq_len - 1)]
        t = F.pad(b, (0, seq_len))  # 3 * seq_len - 2
        t = torch.tile(t, (seq_len,))
        t = t[:-seq_len]
        t = t.view(seq_len, 3 * seq_len - 2)
        r = (2 * seq_len - 1) // 2
        start = r
        end = t.size(1) - r
        return t[:, start:end]


class MovingAverageGatedAttention(nn.Module):
    def __init__(self, embed_dim=DIM, zdim=16, hdim=64, ndim=2, max_positions=64):
        super().__init__()
        self.embed_dim, self.zdim, self.hdim = embed_dim, zdim, hdim
        self.scaling = zdim ** -0.5
        self.norm = nn.LayerNorm(embed_dim)
        self.move = MultiHeadEMA(embed_dim, ndim=ndim, bidirectional=True)
        self.v_proj = nn.Linear(embed_dim, hdim)
        self.mx_proj = nn.Linear(embed_dim, zdim + hdim + 2 * embed_dim)
        self.h_proj = nn.Linear(hdim, embed_dim)
        self.gamma = nn.Parameter(0.1 * torch.randn(2, zdim) + 1.0)
        self.beta = nn.Parameter(torch.zeros(2, zdim))
        self.rel_pos_bias = SimpleRelativePositionalBias(max_positions)
        self.activation = F.silu

    def softmax_attention(self, q, k, padding_mask):
        slen = k.size(1)
        bias = self.rel_pos_bias(slen)
        q = q * self.scaling
        qk = torch.bmm(q, k.transpose(1, 2)) + bias
        if padding_mask is not None:
            qk = qk.masked_fill(padding_mask.unsqueeze(1).to(torch.bool), float("-inf"))
        return F.softmax(qk, dim=-1, dtype=torch.float32).type_as(qk)

    def forward(self, x, padding_mask=None):
        residual = x
        x = self.norm(x)  # prenorm
        v = self.activation(self.v_proj(x))  # L x B x E
        mx = self.move(x, padding_mask)
        base = self.mx_proj(mx)
        u, zr, hx = torch.split(base, [self.embed_dim, self.zdim + self.hdim, self.embed_dim], dim=-1)
        u = torch.sigmoid(u)
        z, r = torch.split(F.silu(zr), [self.zdim, self.hdim], dim=-1)
        z = z.unsqueeze(2) * self.gamma + self.beta  # L x B x 2 x S
        q, k = torch.unbind(z, dim=2)
        q = q.transpose(0, 1)
        k = k.transpose(0, 1)
        v = v.transpose(0, 1)
        attn_weights = self.softmax_attention(q, k, padding_mask)
        h = torch.bmm(attn_weights, v).transpose(0, 1)
        h = self.activation(hx + self.h_proj(h * r))
        return torch.addcmul(residual, u, h - residual)


class MegaEncoder(nn.Module):
    def __init__(self, dim=DIM, layers=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, dim, padding_idx=1)
        self.layers = nn.ModuleList([MovingAverageGatedAttention(dim) for _ in range(layers)])
        self.final_norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, 4)

    def forward(self, src_tokens):
        padding_mask = src_tokens.eq(1)
        x = self.embed_tokens(src_tokens) * math.sqrt(DIM)
        x = x * (1.0 - padding_mask.unsqueeze(-1).type_as(x))
        x = x.transpose(0, 1)  # B x T x C -> T x B x C
        for layer in self.layers:
            x = layer(x, padding_mask)
        x = self.final_norm(x).transpose(0, 1)
        # masked mean pool
        keep = (~padding_mask).unsqueeze(-1).type_as(x)
        return self.classifier((x * keep).sum(1) / keep.sum(1))


def _mega_inputs(n, g, length=32):
    ids = torch.randint(2, VOCAB, (n, length), generator=g)
    keep = torch.arange(length)[None] < torch.randint(length // 2, length + 1, (n, 1), generator=g)
    return (torch.where(keep, ids, torch.ones_like(ids)),)


# --- NX-AI xLSTM: mLSTM layer with the stabilised parallel cell ------------------------------------------------------------
def parallel_stabilized_simple(queries, keys, values, igate_preact, fgate_preact, lower_triangular_matrix=None,
                               stabilize_rowwise=True, eps=1e-6):
    B, NH, S, DH = queries.shape
    _dtype, _device = queries.dtype, queries.device
    log_fgates = F.logsigmoid(fgate_preact)  # (B, NH, S, 1)
    if lower_triangular_matrix is None or S < lower_triangular_matrix.size(-1):
        ltr = torch.tril(torch.ones((S, S), dtype=torch.bool, device=_device))
    else:
        ltr = lower_triangular_matrix
    log_fgates_cumsum = torch.cat([torch.zeros((B, NH, 1, 1), dtype=_dtype, device=_device),
                                   torch.cumsum(log_fgates, dim=-2)], dim=-2)  # (B, NH, S+1, 1)
    rep_log_fgates_cumsum = log_fgates_cumsum.repeat(1, 1, 1, S + 1)  # (B, NH, S+1, S+1)
    _log_fg_matrix = rep_log_fgates_cumsum - rep_log_fgates_cumsum.transpose(-2, -1)
    log_fg_matrix = torch.where(ltr, _log_fg_matrix[:, :, 1:, 1:], -float("inf"))  # (B, NH, S, S)
    log_D_matrix = log_fg_matrix + igate_preact.transpose(-2, -1)  # (B, NH, S, S)
    if stabilize_rowwise:
        max_log_D, _ = torch.max(log_D_matrix, dim=-1, keepdim=True)  # (B, NH, S, 1)
    else:
        max_log_D = torch.max(log_D_matrix.view(B, NH, -1), dim=-1, keepdim=True)[0].unsqueeze(-1)
    log_D_matrix_stabilized = log_D_matrix - max_log_D
    D_matrix = torch.exp(log_D_matrix_stabilized)
    keys_scaled = keys / math.sqrt(DH)
    qk_matrix = queries @ keys_scaled.transpose(-2, -1)  # (B, NH, S, S)
    C_matrix = qk_matrix * D_matrix
    normalizer = torch.maximum(C_matrix.sum(dim=-1, keepdim=True).abs(), torch.exp(-max_log_D))
    C_matrix_normalized = C_matrix / (normalizer + eps)
    return C_matrix_normalized @ values


class MultiHeadLayerNorm(nn.Module):
    def __init__(self, ndim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, input):
        B, NH, S, DH = input.shape
        gn_in_1 = input.transpose(1, 2)  # (B, S, NH, DH)
        gn_in_2 = gn_in_1.reshape(B * S, NH * DH)
        out = F.group_norm(gn_in_2, num_groups=NH, weight=self.weight, bias=None, eps=self.eps)
        return out.view(B, S, NH, DH).transpose(1, 2)


class CausalConv1d(nn.Module):
    def __init__(self, feature_dim, kernel_size=4):
        super().__init__()
        self.pad = kernel_size - 1
        self.conv = nn.Conv1d(feature_dim, feature_dim, kernel_size, padding=self.pad, groups=feature_dim)

    def forward(self, x):
        y = x.transpose(2, 1)  # (B, F, T)
        y = self.conv(y)
        y = y[:, :, : -self.pad]
        return y.transpose(2, 1)


class LinearHeadwiseExpand(nn.Module):
    def __init__(self, in_features, num_heads):
        super().__init__()
        self.num_heads = num_heads
        out_features_per_head = in_features // num_heads
        self.weight = nn.Parameter(torch.randn(num_heads, out_features_per_head, in_features // num_heads) * 0.2)

    def forward(self, x):
        shape = x.shape
        x = x.view(*shape[:-1], self.num_heads, -1)
        x = torch.einsum("...hd,hod->...ho", x, self.weight)
        return x.reshape(*shape[:-1], -1)


class mLSTMCell(nn.Module):
    def __init__(self, embedding_dim, num_heads, context_length):
        super().__init__()
        self.num_heads = num_heads
        self.igate = nn.Linear(3 * embedding_dim, num_heads)
        self.fgate = nn.Linear(3 * embedding_dim, num_heads)
        self.outnorm = MultiHeadLayerNorm(ndim=embedding_dim)
        self.register_buffer("causal_mask", torch.tril(torch.ones(context_length, context_length, dtype=torch.bool)),
                             persistent=False)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, num_heads))
            self.igate.bias.normal_(0.0, 0.1)

    def forward(self, q, k, v):
        B, S, _ = q.shape
        if_gate_input = torch.cat([q, k, v], dim=-1)
        q = q.view(B, S, self.num_heads, -1).transpose(1, 2)
        k = k.view(B, S, self.num_heads, -1).transpose(1, 2)
        v = v.view(B, S, self.num_heads, -1).transpose(1, 2)
        igate_preact = self.igate(if_gate_input).transpose(-1, -2).unsqueeze(-1)  # (B, NH, S, 1)
        fgate_preact = self.fgate(if_gate_input).transpose(-1, -2).unsqueeze(-1)
        h_state = parallel_stabilized_simple(q, k, v, igate_preact, fgate_preact,
                                             lower_triangular_matrix=self.causal_mask)  # (B, NH, S, DH)
        h_state_norm = self.outnorm(h_state)
        return h_state_norm.transpose(1, 2).reshape(B, S, -1)


class mLSTMLayer(nn.Module):
    def __init__(self, embedding_dim=DIM, num_heads=4, proj_factor=2, context_length=32, qkv_proj_blocksize=4):
        super().__init__()
        inner = proj_factor * embedding_dim
        self.inner = inner
        self.proj_up = nn.Linear(embedding_dim, 2 * inner, bias=False)
        heads = inner // qkv_proj_blocksize
        self.q_proj = LinearHeadwiseExpand(inner, heads)
        self.k_proj = LinearHeadwiseExpand(inner, heads)
        self.v_proj = LinearHeadwiseExpand(inner, heads)
        self.conv1d = CausalConv1d(inner)
        self.conv_act_fn = nn.SiLU()
        self.mlstm_cell = mLSTMCell(inner, num_heads, context_length)
        self.ogate_act_fn = nn.SiLU()
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, embedding_dim, bias=False)

    def forward(self, x):
        x_inner = self.proj_up(x)
        x_mlstm, z = torch.split(x_inner, split_size_or_sections=self.inner, dim=-1)
        x_mlstm_conv = self.conv1d(x_mlstm)
        x_mlstm_conv_act = self.conv_act_fn(x_mlstm_conv)
        q = self.q_proj(x_mlstm_conv_act)
        k = self.k_proj(x_mlstm_conv_act)
        v = self.v_proj(x_mlstm)
        h_tilde_state = self.mlstm_cell(q=q, k=k, v=v)
        h_tilde_state_skip = h_tilde_state + (self.learnable_skip * x_mlstm_conv_act)
        h_state = h_tilde_state_skip * self.ogate_act_fn(z)
        return self.proj_down(h_state)


# --- lucidrains linformer: sequence projections E / F -----------------------------------------------------------------------
def _init_(tensor):
    dim = tensor.shape[-1]
    std = 1 / math.sqrt(dim)
    tensor.uniform_(-std, std)
    return tensor


class LinformerSelfAttention(nn.Module):
    def __init__(self, dim=DIM, seq_len=32, k=8, heads=4, dim_head=None, one_kv_head=True, share_kv=False):
        super().__init__()
        self.seq_len, self.k, self.heads = seq_len, k, heads
        dim_head = dim_head if dim_head is not None else dim // heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        kv_dim = dim_head if one_kv_head else (dim_head * heads)
        self.to_k = nn.Linear(dim, kv_dim, bias=False)
        self.proj_k = nn.Parameter(_init_(torch.zeros(seq_len, k)))
        self.share_kv = share_kv
        if not share_kv:
            self.to_v = nn.Linear(dim, kv_dim, bias=False)
            self.proj_v = nn.Parameter(_init_(torch.zeros(seq_len, k)))
        self.to_out = nn.Linear(dim_head * heads, dim)

    def forward(self, x, context=None):
        b, n, _, d_h, h, k = *x.shape, self.dim_head, self.heads, self.k
        kv_len = n if context is None else context.shape[1]
        assert kv_len <= self.seq_len, f"the sequence length of the key / values must be {self.seq_len} - {kv_len} given"
        queries = self.to_q(x)

        def proj_seq_len(args):
            return torch.einsum("bnd,nk->bkd", *args)

        kv_input = x if context is None else context
        keys = self.to_k(kv_input)
        values = self.to_v(kv_input) if not self.share_kv else keys
        kv_projs = (self.proj_k, self.proj_v if not self.share_kv else self.proj_k)
        # allow for variable sequence lengths (less than maximum sequence length) by slicing projections
        if kv_len < self.seq_len:
            kv_projs = map(lambda t: t[:kv_len], kv_projs)
        keys, values = map(proj_seq_len, zip((keys, values), kv_projs))
        queries = queries.reshape(b, n, h, -1).transpose(1, 2)

        def merge_key_values(t):
            return t.reshape(b, k, -1, d_h).transpose(1, 2).expand(-1, h, -1, -1)

        keys, values = map(merge_key_values, (keys, values))
        dots = torch.einsum("bhnd,bhkd->bhnk", queries, keys) * (d_h ** -0.5)
        attn = dots.softmax(dim=-1)
        out = torch.einsum("bhnk,bhkd->bhnd", attn, values)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


# --- Synthesizer: dense + random synthetic attention, mixed by a learned softmax -------------------------------------------
class SynthesizerAttention(nn.Module):
    def __init__(self, dim=DIM, heads=4, max_len=32):
        super().__init__()
        self.heads, self.d_k, self.max_len = heads, dim // heads, max_len
        self.w_1 = nn.Linear(self.d_k, self.d_k)
        self.w_2 = nn.Linear(self.d_k, max_len)
        self.random_attn = nn.Parameter(torch.randn(heads, max_len, max_len))
        self.mix = nn.Parameter(torch.zeros(2))
        self.value = nn.Linear(dim, dim)
        self.x_head = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.temperature = self.d_k ** 0.5

    def forward(self, x, mask):
        b, len_q, _ = x.shape
        xh = self.x_head(x).view(b, len_q, self.heads, self.d_k).transpose(1, 2)
        v = self.value(x).view(b, len_q, self.heads, self.d_k).transpose(1, 2)
        dense_attn = self.w_2(F.relu(self.w_1(xh)))[:, :, :, :len_q]
        dense_attn = dense_attn / self.temperature
        random_attn = self.random_attn[:, :len_q, :len_q].unsqueeze(0).expand(b, -1, -1, -1)
        key_mask = mask[:, None, None, :] == 0
        dense_attn = dense_attn.masked_fill(key_mask, -1e9)
        random_attn = random_attn.masked_fill(key_mask, -1e9)
        w = torch.softmax(self.mix, dim=0)
        attn = w[0] * F.softmax(dense_attn, dim=-1) + w[1] * F.softmax(random_attn, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, len_q, -1)
        return self.out(out)


class SynthesizerEncoder(nn.Module):
    def __init__(self, dim=DIM, layers=2, max_len=32):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.pos = nn.Parameter(0.02 * torch.randn(1, max_len, dim))
        self.attn = nn.ModuleList([SynthesizerAttention(dim, max_len=max_len) for _ in range(layers)])
        self.ln1 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.ln2 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.ffn = nn.ModuleList([nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim)) for _ in range(layers)])
        self.classifier = nn.Linear(dim, 5)

    def forward(self, input_ids):
        mask = (input_ids != 0).long()
        x = self.embed(input_ids) + self.pos[:, : input_ids.shape[1]]
        for attn, ln1, ln2, ffn in zip(self.attn, self.ln1, self.ln2, self.ffn):
            x = ln1(x + attn(x, mask))
            x = ln2(x + ffn(x))
        m = mask.unsqueeze(-1).to(x.dtype)
        return self.classifier((x * m).sum(1) / m.sum(1).clamp(min=1))


def _synth_inputs(n, g, length=28):
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    keep = torch.arange(length)[None] < torch.randint(length // 2, length + 1, (n, 1), generator=g)
    return (ids * keep,)


# --- neighbourhood (sliding-window) attention by F.pad + unfold ------------------------------------------------------------
class NeighborhoodAttention1d(nn.Module):
    """Each query attends to the 2w + 1 keys around it: keys and values padded by w on the sequence, ``unfold`` into
    windows, a validity mask from a padded ones vector unfolded the same way, relative-position bias per offset."""

    def __init__(self, dim=DIM, heads=4, window=3):
        super().__init__()
        self.heads, self.head_dim, self.window = heads, dim // heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rpb = nn.Parameter(0.02 * torch.randn(heads, 2 * window + 1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, L, C = x.shape
        w = self.window
        qkv = self.qkv(x).reshape(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, L, D)
        q = q * self.head_dim ** -0.5
        k = F.pad(k, (0, 0, w, w)).unfold(2, 2 * w + 1, 1)  # (B, H, L, D, 2w+1)
        v = F.pad(v, (0, 0, w, w)).unfold(2, 2 * w + 1, 1)
        valid = F.pad(x.new_ones(1, 1, L), (w, w)).unfold(2, 2 * w + 1, 1)  # (1, 1, L, 2w+1)
        attn = torch.einsum("bhld,bhldw->bhlw", q, k) + self.rpb[None, :, None, :]
        attn = attn.masked_fill(valid == 0, float("-inf")).softmax(dim=-1)
        out = torch.einsum("bhlw,bhldw->bhld", attn, v)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


# --- flash-linear-attention: GatedLinearAttention with a chunkwise recurrence (torch reference) ----------------------------
def chunk_gla_ref(q, k, v, gk, chunk_size=8):
    """q, k, gk: (B, H, T, K), v: (B, H, T, V); gk the log forget gates. Inter-chunk state carried in a Python loop."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    q = q * K ** -0.5
    S = q.new_zeros(B, H, K, V)
    causal = torch.tril(torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device))
    o = []
    for i in range(0, T, chunk_size):
        q_i, k_i, v_i, g_i = (t[:, :, i:i + chunk_size] for t in (q, k, v, gk))
        b_g = g_i.cumsum(-2)  # (B, H, C, K)
        q_g = q_i * b_g.exp()
        k_g = k_i * (-b_g).exp()
        A = (q_g @ k_g.transpose(-1, -2)).masked_fill(~causal, 0)
        o_i = q_g @ S + A @ v_i
        g_last = b_g[:, :, -1]  # (B, H, K)
        S = S * g_last.exp()[..., None] + (k_i * (g_last[:, :, None] - b_g).exp()).transpose(-1, -2) @ v_i
        o.append(o_i)
    return torch.cat(o, dim=2)


class GatedLinearAttention(nn.Module):
    def __init__(self, hidden_size=DIM, expand_k=0.5, expand_v=1.0, num_heads=4, gate_low_rank_dim=16,
                 gate_logit_normalizer=16, chunk_size=8):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim, self.value_dim = int(hidden_size * expand_k), int(hidden_size * expand_v)
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.gate_logit_normalizer, self.chunk_size = gate_logit_normalizer, chunk_size
        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(hidden_size, gate_low_rank_dim, bias=False),
                                     nn.Linear(gate_low_rank_dim, self.key_dim, bias=True))
        self.g_norm_weight = nn.Parameter(torch.ones(self.head_v_dim))
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def forward(self, hidden_states):
        b, t, _ = hidden_states.shape
        q = self.q_proj(hidden_states)
        k = self.k_proj(hidden_states)
        v = self.v_proj(hidden_states)
        gk = self.gk_proj(hidden_states)
        gk = F.logsigmoid(gk) / self.gate_logit_normalizer
        pad = (self.chunk_size - t % self.chunk_size) % self.chunk_size
        q, k, v, gk = (F.pad(x, (0, 0, 0, pad)).view(b, t + pad, self.num_heads, -1).transpose(1, 2) for x in (q, k, v, gk))
        o = chunk_gla_ref(q, k, v, gk, self.chunk_size)[:, :, :t]
        o = o.transpose(1, 2)  # (b, t, h, dv)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * self.g_norm_weight  # FusedRMSNormSwishGate
        g = self.g_proj(hidden_states).view(b, t, self.num_heads, -1)
        o = (o * F.silu(g)).reshape(b, t, -1)
        return self.o_proj(o)


def _lm(*mixers):
    def build():
        torch.manual_seed(0)
        return TokenLM([m() for m in mixers])
    return build


def _seeded(cls, *args, **kwargs):
    torch.manual_seed(0)
    return cls(*args, **kwargs)


CASES = {
    "eff_hyena_operator": ("safari HyenaOperator x2 in an LM: implicit filter MLP on a complex-exp positional embedding with Sin "
                           "activations and ExponentialModulation, Conv1d(padding=2, groups) short filter sliced to L, "
                           "fftconv rfft(n=2L) / irfft(norm='forward'), order-3 gating loop",
                           lambda: (_lm(HyenaOperator, HyenaOperator)(), _ids)),
    "eff_retnet_xpos_groupnorm": ("RetNet (Jamie Stirling): per-head SimpleRetention with python-float gamma ** (n - m) * (n >= m) "
                                  "decay, D[D != D] = 0, xPos scale ** arange / scale_base with duplicate_interleave, "
                                  "GroupNorm(heads) over reshape(-1, v_dim), swish(X @ W_G) gate",
                                  lambda: (_lm(MultiScaleRetention, MultiScaleRetention)(), _ids)),
    "eff_retnet_torchscale": ("torchscale RetNetRelPos + parallel retention: masked_fill(inf) of index differences, "
                              "exp(mask * decay), nan_to_num, / sqrt(row sum), theta_shift rotate_every_two, "
                              "qk / abs().sum().clamp(1, 5e4), head RMSNorm, silu(g) gate",
                              lambda: (_lm(TorchscaleRetention, TorchscaleRetention)(), _ids)),
    "eff_performer_favor": ("performer-pytorch FAVOR+: gaussian orthogonal random features (linalg.qr blocks, diag(norms) @ Q) "
                            "buffer, softmax_kernel exp(x W - |x|^2/2 - amax) (+ amax over (-1, -2) for keys), "
                            "linear_attention by three einsums", lambda: (_lm(PerformerSelfAttention, PerformerSelfAttention)(), _ids)),
    "eff_reformer_lsh": ("reformer-pytorch LSHAttention: fixed random rotations einsum, argmax(cat([R, -R])) buckets + hash "
                         "offsets, sort + gather sticker, look_one_back chunks, self-mask -5e4, logsumexp, unsort by argsort, "
                         "hash-round softmax combine", lambda: (_lm(LSHSelfAttention, LSHSelfAttention)(), _ids)),
    "eff_longformer_sliding": ("HF Longformer sliding chunks (onnx_export path): _pad_to_window_size, chunk loop into "
                               "torch.empty, einsum, _pad_and_transpose_last_two_dims view trick, diagonal slice assignments, "
                               "_mask_invalid_locations -inf where, mask by the same matmul on ones, unfold value chunks, "
                               "_pad_and_diagonalize", lambda: (_seeded(LongformerEncoder), _padded_ids)),
    "eff_bigbird_block_sparse": ("BigBird-style block sparse: global first/last query blocks dense, middle blocks gather "
                                 "[globals, window, random] key blocks from a fixed (heads, nb-2, 7) index buffer by "
                                 "advanced indexing, duplicate-block validity buffer, _pad_to_block_size, tanh pooler",
                                 lambda: (_seeded(BigBirdEncoder), lambda n, g: _padded_ids(n, g, 30, pad=0))),
    "eff_nystromformer": ("HF Nystromformer: q, k / sqrt(sqrt(d)), segment-mean landmarks, three softmax kernels, iterative_inv "
                          "(batch-global max init, 6 Newton steps with eye), + depthwise Conv2d((5, 1)) skip on values, "
                          "padding mask on kernel_3", lambda: (_seeded(NystromEncoder), _nystrom_inputs)),
    "eff_s4d_fftconv": ("state-spaces S4D: view_as_complex C parameter, A = -exp(log_A_real) + 1j * A_imag, "
                        "exp(dtA[..., None] * arange(L)), einsum(...).real kernel, rfft/irfft(n=2L) conv, D skip, "
                        "Conv1d + GLU(dim=-2), post-norm by transposes, mean pool",
                        lambda: (_seeded(S4Model), lambda n, g: (torch.randn(n, 48, 3, generator=g),))),
    "eff_h3_shift_diag": ("safari H3: weight @ u.T + bias projections, shift-SSM kernel by FFT cross-correlation "
                          "(rfft(B).conj() * rfft(C)) + F.pad, diagonal S4D kernel, k * v then q * y gating, "
                          "irfft(norm='forward')", lambda: (_lm(H3, H3)(), _ids)),
    "eff_mega_ema": ("fairseq MEGA: time-first MovingAverageGatedAttention, bidirectional MultiHeadEMA (vander "
                     "arange * log(q), einsum, split + flip + F.pad kernels, rfft over 2 * (2L - 1)), tile-built relative "
                     "bias, padding masked_fill(-inf), addcmul gate, masked mean pool",
                     lambda: (_seeded(MegaEncoder), _mega_inputs)),
    "eff_xlstm_mlstm": ("xLSTM mLSTMLayer: proj_up split, causal depthwise conv, headwise einsum q/k/v, igate/fgate on cat, "
                        "parallel_stabilized_simple (logsigmoid cumsum, repeat - transpose, where(tril buffer, ., -inf), row "
                        "max, maximum(|C.sum|, exp(-max)) normaliser), group_norm heads, learnable skip, silu(z) gate",
                        lambda: (_lm(mLSTMLayer, mLSTMLayer)(), _ids)),
    "eff_linformer": ("lucidrains Linformer: proj_k / proj_v (seq_len=32, k=8) sliced to the 24-token length, "
                      "einsum('bnd,nk->bkd'), one kv head expanded over heads, einsum attention",
                      lambda: (_lm(LinformerSelfAttention, LinformerSelfAttention)(), lambda n, g: _ids(n, g, 24))),
    "eff_synthesizer_mix": ("Synthesizer: dense w_2(relu(w_1(x)))[..., :len] and random (heads, max, max)[:, :len, :len] "
                            "attention, padding masked_fill(-1e9), softmax-mixed, learned pos sliced, masked mean pool",
                            lambda: (_seeded(SynthesizerEncoder), _synth_inputs)),
    "eff_neighborhood_unfold": ("1-D neighbourhood attention: F.pad + unfold(2, 2w+1, 1) key/value windows, validity from "
                                "unfolded padded ones, per-offset relative bias, masked_fill(-inf) softmax, einsum",
                                lambda: (_lm(NeighborhoodAttention1d, NeighborhoodAttention1d)(), _ids)),
    "eff_gla_chunked": ("flash-linear-attention GatedLinearAttention: low-rank gk_proj, logsigmoid / 16, pad to chunk, "
                        "chunk_gla_ref Python loop over 8-token chunks (cumsum gates, exp-scaled q/k, tril-masked intra "
                        "chunk, state S decayed and updated), RMSNorm-swish gate", lambda: (_lm(GatedLinearAttention,
                                                                                               GatedLinearAttention)(),
                                                                                           lambda n, g: _ids(n, g, 30))),
}
