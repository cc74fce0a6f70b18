"""Sixteenth round of user-style models for ``usage_scan.py`` (2026-12-07): LLM inference idioms, written as the reference
repositories write them (Hugging Face transformers, Meta's llama reference, gpt-fast, nanoGPT, vLLM, lit-gpt). Caches: a
static KV cache updated by ``index_copy_`` at ``cache_position`` (HF ``StaticCache`` / gpt-fast), Mistral's rolling
buffer written by slice assignment at ``input_pos % window``, the Meta reference's ``self.cache_k[:bsz, start_pos:...] = xk``
buffer, a vLLM-style paged cache gathered through a block table, and StreamingLLM's sink + recent eviction. Attention
variants: HF ``repeat_kv`` by ``expand`` + ``reshape`` with ``rotate_half`` RoPE, Falcon's multi-query attention through
``scaled_dot_product_attention``, a prefix-LM mask from per-row prefix lengths, gpt-oss's learned attention sinks, Qwen3's
QK-norm, BLOOM's ALiBi (slopes by closest power of two, ``(attention_mask.cumsum(-1) - 1) * attention_mask`` positions,
``baddbmm``), Gemma-2's soft-capped attention and final logits with tied embeddings and ``(1 + w)`` RMSNorm, nanoGPT's
``tril`` buffer mask and ``x[:, [-1], :]`` head, HF left padding (``position_ids`` by ``cumsum``, a ``finfo.min`` 4-D mask).
RoPE scaling: llama3's wavelength-smoothed ``inv_freq`` and YaRN's ramp mask with ``mscale``, and HF's dynamic NTK whose
base grows with ``position_ids.max()``. Decoding: logits processors in ``forward`` (repetition penalty by
``gather``/``scatter``, temperature, top-k, top-p by ``sort`` + ``cumsum`` + ``scatter``), a greedy step returning
``(next_token, logits)``, one beam-search step (``log_softmax`` + ``topk`` over ``beams * vocab``, ``//`` and ``%``, cache
reordered by ``index_select``), a speculative-decoding verify step (``cumprod`` of matches, bonus token by ``gather``),
Medusa heads with per-head ``topk``. Adapters and MoE: peft's LoRA ``base_layer(x) + lora_B(lora_A(x)) * scaling`` beside
a merged-at-forward ``W + B @ A * scale``, gpt-fast's MoE (``topk`` + softmax, expert weights indexed by token,
``einsum('ti,taoi->tao')``) and Mixtral's sparse block (``one_hot`` expert mask, ``torch.where`` per expert,
``index_add_``).

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, HEADS, KV_HEADS, HEAD_DIM = 64, 32, 4, 2, 8


# --- shared pieces (HF modeling_llama.py) ------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(dim))

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)
        return self.weight * hidden_states.to(input_dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim=HEAD_DIM, base=10000.0, inv_freq=None, attention_scaling=1.0):
        super().__init__()
        if inv_freq is None:
            inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention_scaling = attention_scaling

    @torch.no_grad()
    def forward(self, x, position_ids):
        inv_freq_expanded = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
        position_ids_expanded = position_ids[:, None, :].float()
        freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class LlamaMLP(nn.Module):
    def __init__(self, dim=DIM, hidden=64):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GQAProj(nn.Module):
    def __init__(self, dim=DIM, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)

    def qkv(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        return q, k, v


def _ids(n, g, length=8):
    return torch.randint(0, VOCAB, (n, length), generator=g)


def _tokens(n, g, length=8):
    return (_ids(n, g, length),)


def _left_padded(n, g, length=10):
    lengths = torch.randint(4, length + 1, (n, 1), generator=g)
    mask = (torch.arange(length)[None] >= length - lengths).long()
    return torch.randint(1, VOCAB, (n, length), generator=g) * mask, mask


# --- HF StaticCache.update / gpt-fast KVCache: index_copy_ at cache_position ------------------------------------------
class StaticCacheDecode(nn.Module):
    """One decode step: the new token's k/v copied into caller-held static caches at ``cache_position``, attention over
    the whole cache under ``arange(max_len) <= cache_position``; returns logits and the updated caches."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, DIM)
        self.attn = GQAProj()
        self.rotary_emb = RotaryEmbedding()
        self.norm = RMSNorm(DIM)
        self.mlp = LlamaMLP()
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, input_ids, cache_position, key_cache, value_cache):
        h = self.embed_tokens(input_ids)
        b, t, _ = h.shape
        position_ids = cache_position.unsqueeze(0).expand(b, -1)
        q, k, v = self.attn.qkv(self.norm(h))
        cos, sin = self.rotary_emb(v, position_ids)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        key_cache.index_copy_(2, cache_position, k)
        value_cache.index_copy_(2, cache_position, v)
        keys = repeat_kv(key_cache, HEADS // KV_HEADS)
        values = repeat_kv(value_cache, HEADS // KV_HEADS)
        causal_mask = torch.arange(key_cache.shape[2], device=h.device)[None, :] <= cache_position[:, None]  # (t, max_len)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=causal_mask[None, None])
        h = h + self.attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        h = h + self.mlp(self.norm(h))
        return self.lm_head(self.norm(h)), key_cache, value_cache


def _static_cache_inputs(n, g, max_len=12, pos=6):
    return (_ids(n, g, 1), torch.tensor([pos]), torch.randn(n, KV_HEADS, max_len, HEAD_DIM, generator=g),
            torch.randn(n, KV_HEADS, max_len, HEAD_DIM, generator=g))


# --- Mistral rolling buffer cache: slice assignment at input_pos % window --------------------------------------------
class RollingCacheAttention(nn.Module):
    def __init__(self, window=6):
        super().__init__()
        self.window = window
        self.embed = nn.Embedding(VOCAB, DIM)
        self.attn = GQAProj()
        self.rotary_emb = RotaryEmbedding()
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, input_ids, input_pos, cache_k, cache_v, cache_pos):
        """``cache_pos`` holds the absolute position each ring slot was written at (-1 = empty)."""
        h = self.embed(input_ids)
        b, t, _ = h.shape
        q, k, v = self.attn.qkv(h)
        cos, sin = self.rotary_emb(v, input_pos[None].expand(b, -1))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        scatter_pos = input_pos % self.window
        cache_k = cache_k.clone()
        cache_v = cache_v.clone()
        cache_k[:, :, scatter_pos] = k
        cache_v[:, :, scatter_pos] = v
        slot_pos = cache_pos.clone()
        slot_pos[:, scatter_pos] = input_pos
        # sliding window: a slot is visible when written, not in the future, and within `window` of the query
        visible = (slot_pos[:, None, :] >= 0) & (slot_pos[:, None, :] <= input_pos[None, :, None]) \
            & (input_pos[None, :, None] - slot_pos[:, None, :] < self.window)
        scores = q @ repeat_kv(cache_k, HEADS // KV_HEADS).transpose(-1, -2) / math.sqrt(HEAD_DIM)
        scores = scores.masked_fill(~visible[:, None], torch.finfo(scores.dtype).min)
        out = scores.softmax(-1) @ repeat_kv(cache_v, HEADS // KV_HEADS)
        h = h + self.attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        return self.lm_head(h), cache_k, cache_v


def _rolling_inputs(n, g, window=6, step=9, t=2):
    slots = torch.arange(window)
    written = step - window + ((slots - step) % window)  # absolute position last written at each slot, before `step`
    return (_ids(n, g, t), torch.arange(step, step + t), torch.randn(n, KV_HEADS, window, HEAD_DIM, generator=g),
            torch.randn(n, KV_HEADS, window, HEAD_DIM, generator=g), written[None].expand(n, -1).clone())


# --- Meta llama reference (model.py): self.cache_k[:bsz, start_pos:start_pos + seqlen] = xk ---------------------------
class MetaLlamaAttention(nn.Module):
    def __init__(self, max_batch_size=4, max_seq_len=16, start_fill=2):
        super().__init__()
        self.n_rep = HEADS // KV_HEADS
        self.wq = nn.Linear(DIM, HEADS * HEAD_DIM, bias=False)
        self.wk = nn.Linear(DIM, KV_HEADS * HEAD_DIM, bias=False)
        self.wv = nn.Linear(DIM, KV_HEADS * HEAD_DIM, bias=False)
        self.wo = nn.Linear(HEADS * HEAD_DIM, DIM, bias=False)
        g = torch.Generator().manual_seed(3)  # positions < start_fill hold an earlier prompt and are never overwritten
        self.register_buffer("cache_k", torch.randn(max_batch_size, max_seq_len, KV_HEADS, HEAD_DIM, generator=g))
        self.register_buffer("cache_v", torch.randn(max_batch_size, max_seq_len, KV_HEADS, HEAD_DIM, generator=g))

    def forward(self, x, start_pos: int, freqs_cis, mask):
        bsz, seqlen, _ = x.shape
        xq, xk, xv = self.wq(x), self.wk(x), self.wv(x)
        xq = xq.view(bsz, seqlen, HEADS, HEAD_DIM)
        xk = xk.view(bsz, seqlen, KV_HEADS, HEAD_DIM)
        xv = xv.view(bsz, seqlen, KV_HEADS, HEAD_DIM)
        xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
        xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
        fc = freqs_cis.view(1, seqlen, 1, HEAD_DIM // 2)
        xq = torch.view_as_real(xq_ * fc).flatten(3).type_as(x)
        xk = torch.view_as_real(xk_ * fc).flatten(3).type_as(x)
        self.cache_k = self.cache_k.to(xq)
        self.cache_v = self.cache_v.to(xq)
        self.cache_k[:bsz, start_pos: start_pos + seqlen] = xk
        self.cache_v[:bsz, start_pos: start_pos + seqlen] = xv
        keys = self.cache_k[:bsz, : start_pos + seqlen]
        values = self.cache_v[:bsz, : start_pos + seqlen]
        keys = torch.repeat_interleave(keys, dim=2, repeats=self.n_rep)
        values = torch.repeat_interleave(values, dim=2, repeats=self.n_rep)
        xq, keys, values = xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2)
        scores = torch.matmul(xq, keys.transpose(2, 3)) / math.sqrt(HEAD_DIM)
        if mask is not None:
            scores = scores + mask
        scores = F.softmax(scores.float(), dim=-1).type_as(xq)
        output = torch.matmul(scores, values).transpose(1, 2).contiguous().view(bsz, seqlen, -1)
        return self.wo(output)


class MetaLlama(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.attention = MetaLlamaAttention()
        self.attention_norm = RMSNorm(DIM, eps=1e-5)
        self.norm = RMSNorm(DIM, eps=1e-5)
        self.output = nn.Linear(DIM, VOCAB, bias=False)
        freqs = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2)[: (HEAD_DIM // 2)].float() / HEAD_DIM))
        t = torch.arange(32).float()
        self.freqs_cis = torch.polar(torch.ones(32, HEAD_DIM // 2), torch.outer(t, freqs))  # a plain attribute, as in the repo

    def forward(self, tokens, start_pos: int):
        _bsz, seqlen = tokens.shape
        h = self.tok_embeddings(tokens)
        freqs_cis = self.freqs_cis[start_pos: start_pos + seqlen]
        mask = None
        if seqlen > 1:
            mask = torch.full((seqlen, seqlen), float("-inf"), device=tokens.device)
            mask = torch.triu(mask, diagonal=1)
            mask = torch.hstack([torch.zeros((seqlen, start_pos), device=tokens.device), mask]).type_as(h)
        h = h + self.attention(self.attention_norm(h), start_pos, freqs_cis, mask)
        return self.output(self.norm(h)).float()


# --- HF LlamaAttention prefill: repeat_kv + rotate_half, causal mask by triu -------------------------------------------
class LlamaPrefill(nn.Module):
    def __init__(self, layers=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, DIM)
        self.rotary_emb = RotaryEmbedding()
        self.layers = nn.ModuleList([nn.ModuleDict({"input_layernorm": RMSNorm(DIM), "self_attn": GQAProj(),
                                                    "post_attention_layernorm": RMSNorm(DIM), "mlp": LlamaMLP()})
                                     for _ in range(layers)])
        self.norm = RMSNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, input_ids):
        h = self.embed_tokens(input_ids)
        b, t, _ = h.shape
        position_ids = torch.arange(t, device=h.device).unsqueeze(0)
        cos, sin = self.rotary_emb(h, position_ids)
        causal_mask = torch.full((t, t), fill_value=torch.finfo(h.dtype).min, device=h.device)
        causal_mask = torch.triu(causal_mask, diagonal=1)[None, None]
        for layer in self.layers:
            attn = layer["self_attn"]
            q, k, v = attn.qkv(layer["input_layernorm"](h))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k, v = repeat_kv(k, HEADS // KV_HEADS), repeat_kv(v, HEADS // KV_HEADS)
            attn_weights = torch.matmul(q, k.transpose(2, 3)) * HEAD_DIM ** -0.5 + causal_mask
            attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(attn_weights, v).transpose(1, 2).contiguous().reshape(b, t, -1)
            h = h + attn.o_proj(out)
            h = h + layer["mlp"](layer["post_attention_layernorm"](h))
        return self.lm_head(self.norm(h))


# --- rope_scaling: llama3 and YaRN inv_freq (modeling_rope_utils.py) ---------------------------------------------------
def _llama3_inv_freq(dim=HEAD_DIM, base=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, old_context_len=16):
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def _yarn_inv_freq(dim=HEAD_DIM, base=10000.0, factor=4.0, original_max=16, beta_fast=32, beta_slow=1):
    def get_mscale(scale, mscale=1):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    def find_correction_dim(num_rotations):
        return (dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(find_correction_dim(beta_fast)), 0)
    high = min(math.ceil(find_correction_dim(beta_slow)), dim - 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (factor * pos_freqs)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    inv_freq_extrapolation_factor = 1 - ramp
    inv_freq = inv_freq_interpolation * (1 - inv_freq_extrapolation_factor) + inv_freq_extrapolation * inv_freq_extrapolation_factor
    return inv_freq, get_mscale(factor)


class RopeScaled(nn.Module):
    """Two heads of the same attention, one under llama3 scaling and one under YaRN (cos/sin times mscale)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.attn = GQAProj(kv_heads=HEADS)
        yarn, mscale = _yarn_inv_freq()
        self.rope_llama3 = RotaryEmbedding(inv_freq=_llama3_inv_freq())
        self.rope_yarn = RotaryEmbedding(inv_freq=yarn, attention_scaling=mscale)
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, input_ids, position_ids):
        h = self.embed(input_ids)
        b, t, _ = h.shape
        q, k, v = self.attn.qkv(h)
        c1, s1 = self.rope_llama3(v, position_ids)
        c2, s2 = self.rope_yarn(v, position_ids)
        q1, k1 = apply_rotary_pos_emb(q[:, :2], k[:, :2], c1, s1)
        q2, k2 = apply_rotary_pos_emb(q[:, 2:], k[:, 2:], c2, s2)
        q, k = torch.cat([q1, q2], 1), torch.cat([k1, k2], 1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(h + self.attn.o_proj(out.transpose(1, 2).reshape(b, t, -1)))


def _long_positions(n, g, t=8):
    start = torch.randint(0, 40, (n, 1), generator=g)
    return _ids(n, g, t), start + torch.arange(t)[None]


# --- HF dynamic NTK: base grows with position_ids.max() + 1 beyond the trained length ---------------------------------
class DynamicNTKRotary(nn.Module):
    def __init__(self, dim=HEAD_DIM, base=10000.0, max_position_embeddings=16, factor=2.0):
        super().__init__()
        self.dim, self.base, self.factor = dim, base, factor
        self.original_max_seq_len = self.max_seq_len_cached = max_position_embeddings
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.original_inv_freq = inv_freq

    def _dynamic_frequency_update(self, position_ids, device):
        seq_len = torch.max(position_ids) + 1
        if seq_len > self.max_seq_len_cached:  # growth
            base = self.base * ((self.factor * seq_len / self.original_max_seq_len) - (self.factor - 1)) ** (self.dim / (self.dim - 2))
            inv_freq = 1.0 / (base ** (torch.arange(0, self.dim, 2, device=device).float() / self.dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)
            self.max_seq_len_cached = seq_len
        if seq_len < self.original_max_seq_len and self.max_seq_len_cached > self.original_max_seq_len:  # reset
            self.register_buffer("inv_freq", self.original_inv_freq.to(device), persistent=False)
            self.max_seq_len_cached = self.original_max_seq_len

    @torch.no_grad()
    def forward(self, x, position_ids):
        self._dynamic_frequency_update(position_ids, device=x.device)
        freqs = (self.inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1) @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class DynamicNTKModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.attn = GQAProj()
        self.rotary_emb = DynamicNTKRotary()
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, input_ids, position_ids):
        h = self.embed(input_ids)
        b, t, _ = h.shape
        q, k, v = self.attn.qkv(h)
        cos, sin = self.rotary_emb(v, position_ids)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out = F.scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), is_causal=True)
        return self.head(h + self.attn.o_proj(out.transpose(1, 2).reshape(b, t, -1)))


# --- BLOOM ALiBi (modeling_bloom.py build_alibi_tensor) ---------------------------------------------------------------
def build_alibi_tensor(attention_mask, num_heads, dtype):
    batch_size, seq_length = attention_mask.shape
    closest_power_of_2 = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest_power_of_2) - 3))), device=attention_mask.device, dtype=torch.float32)
    powers = torch.arange(1, 1 + closest_power_of_2, device=attention_mask.device, dtype=torch.int32)
    slopes = torch.pow(base, powers)
    if closest_power_of_2 != num_heads:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest_power_of_2) - 3))), device=attention_mask.device,
                                  dtype=torch.float32)
        num_remaining_heads = min(closest_power_of_2, num_heads - closest_power_of_2)
        extra_powers = torch.arange(1, 1 + 2 * num_remaining_heads, 2, device=attention_mask.device, dtype=torch.int32)
        slopes = torch.cat([slopes, torch.pow(extra_base, extra_powers)], dim=0)
    arange_tensor = ((attention_mask.cumsum(dim=-1) - 1) * attention_mask)[:, None, :]
    alibi = slopes[..., None] * arange_tensor
    return alibi.reshape(batch_size * num_heads, 1, seq_length).to(dtype)


class BloomAttention(nn.Module):
    def __init__(self, heads=6, head_dim=6):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        hidden = heads * head_dim
        self.word_embeddings = nn.Embedding(VOCAB, hidden)
        self.word_embeddings_layernorm = nn.LayerNorm(hidden)
        self.query_key_value = nn.Linear(hidden, 3 * hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.ln_f = nn.LayerNorm(hidden)
        self.beta, self.inv_norm_factor = 1.0, 1.0 / math.sqrt(head_dim)

    def forward(self, input_ids, attention_mask):
        h = self.word_embeddings_layernorm(self.word_embeddings(input_ids))
        b, t, _ = h.shape
        alibi = build_alibi_tensor(attention_mask, self.heads, h.dtype)
        fused_qkv = self.query_key_value(h).view(b, t, self.heads, 3, self.head_dim)
        q = fused_qkv[..., 0, :].transpose(1, 2).reshape(b * self.heads, t, self.head_dim)
        k = fused_qkv[..., 1, :].permute(0, 2, 3, 1).reshape(b * self.heads, self.head_dim, t)
        v = fused_qkv[..., 2, :].transpose(1, 2).reshape(b * self.heads, t, self.head_dim)
        matmul_result = alibi.baddbmm(batch1=q, batch2=k, beta=self.beta, alpha=self.inv_norm_factor)
        attention_scores = matmul_result.view(b, self.heads, t, t)
        causal = torch.ones(t, t, dtype=torch.bool, device=h.device).triu(1)
        causal_mask = causal[None, None] | (attention_mask[:, None, None, :] == 0)
        attn_weights = torch.masked_fill(attention_scores, causal_mask, torch.finfo(attention_scores.dtype).min)
        attention_probs = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(h.dtype)
        context = torch.bmm(attention_probs.view(b * self.heads, t, t), v)
        context = context.view(b, self.heads, t, self.head_dim).permute(0, 2, 1, 3).reshape(b, t, -1)
        return self.ln_f(h + self.dense(context))


# --- logits processors in forward (HF generation/logits_process.py) ----------------------------------------------------
class ProcessedNextToken(nn.Module):
    def __init__(self, penalty=1.3, temperature=0.7, top_k=12, top_p=0.8):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.body = nn.Sequential(nn.Linear(DIM, 64), nn.GELU(), nn.Linear(64, DIM))
        self.lm_head = nn.Linear(DIM, VOCAB)
        self.penalty, self.temperature, self.top_k, self.top_p = penalty, temperature, top_k, top_p

    def forward(self, input_ids):
        h = self.embed(input_ids)
        scores = self.lm_head(h + self.body(h))[:, -1, :]
        # RepetitionPenaltyLogitsProcessor
        score = torch.gather(scores, 1, input_ids)
        score = torch.where(score < 0, score * self.penalty, score / self.penalty)
        scores = scores.scatter(1, input_ids, score)
        # TemperatureLogitsWarper
        scores = scores / self.temperature
        # TopKLogitsWarper
        top_k = min(self.top_k, scores.size(-1))
        indices_to_remove = scores < torch.topk(scores, top_k)[0][..., -1, None]
        scores = scores.masked_fill(indices_to_remove, -float("Inf"))
        # TopPLogitsWarper
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_indices_to_remove = cumulative_probs <= (1 - self.top_p)
        sorted_indices_to_remove[..., -1:] = 0
        indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
        scores = scores.masked_fill(indices_to_remove, -float("Inf"))
        probs = F.softmax(scores, dim=-1)
        return probs, torch.argmax(probs, dim=-1)


# --- nanoGPT: tril buffer mask, x[:, [-1], :] head, tied wte, one greedy step --------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd=DIM, n_head=HEADS, block_size=16):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.n_embd = n_head, n_embd
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class NanoGPTGreedy(nn.Module):
    def __init__(self, block_size=16, n_layer=2, temperature=0.8):
        super().__init__()
        self.block_size, self.temperature = block_size, temperature
        self.wte, self.wpe = nn.Embedding(VOCAB, DIM), nn.Embedding(block_size, DIM)
        self.h = nn.ModuleList([nn.ModuleDict({"ln_1": nn.LayerNorm(DIM), "attn": CausalSelfAttention(),
                                               "ln_2": nn.LayerNorm(DIM), "mlp": nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(),
                                                                                            nn.Linear(4 * DIM, DIM))})
                                for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.wte.weight = self.lm_head.weight

    def forward(self, idx):
        idx_cond = idx if idx.size(1) <= self.block_size else idx[:, -self.block_size:]
        b, t = idx_cond.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.wte(idx_cond) + self.wpe(pos)
        for block in self.h:
            x = x + block["attn"](block["ln_1"](x))
            x = x + block["mlp"](block["ln_2"](x))
        logits = self.lm_head(self.ln_f(x)[:, [-1], :])
        logits = logits[:, -1, :] / self.temperature
        idx_next = torch.argmax(logits, dim=-1, keepdim=True)
        return torch.cat((idx, idx_next), dim=1), logits


# --- one beam-search step (HF _beam_search: topk over beams * vocab, // and %, reorder cache) --------------------------
class BeamSearchStep(nn.Module):
    def __init__(self, num_beams=3):
        super().__init__()
        self.num_beams = num_beams
        self.embed = nn.Embedding(VOCAB, DIM)
        self.gru = nn.Linear(2 * DIM, DIM)
        self.lm_head = nn.Linear(DIM, VOCAB)

    def forward(self, input_ids, beam_scores, past_state):
        """``input_ids`` (B * beams, T), ``beam_scores`` (B, beams), ``past_state`` (B * beams, DIM)."""
        batch_beam_size, cur_len = input_ids.shape
        h = torch.tanh(self.gru(torch.cat([self.embed(input_ids[:, -1]), past_state], -1)))
        next_token_logits = self.lm_head(h)
        next_token_scores = F.log_softmax(next_token_logits, dim=-1)
        next_token_scores = next_token_scores + beam_scores.view(-1)[:, None].expand_as(next_token_scores)
        vocab_size = next_token_scores.shape[-1]
        next_token_scores = next_token_scores.view(-1, self.num_beams * vocab_size)
        next_token_scores, next_tokens = torch.topk(next_token_scores, self.num_beams, dim=1, largest=True, sorted=True)
        next_indices = torch.div(next_tokens, vocab_size, rounding_mode="floor")
        next_tokens = next_tokens % vocab_size
        batch_size = batch_beam_size // self.num_beams
        beam_idx = (next_indices + torch.arange(batch_size, device=h.device)[:, None] * self.num_beams).view(-1)
        input_ids = torch.cat([input_ids[beam_idx, :], next_tokens.view(-1, 1)], dim=-1)
        new_state = h.index_select(0, beam_idx)
        return input_ids, next_token_scores, new_state


def _beam_inputs(n, g, beams=3):
    return (_ids(n * beams, g, 5), -torch.rand(n, beams, generator=g) * 3, torch.randn(n * beams, DIM, generator=g))


# --- speculative decoding verify step (greedy acceptance) --------------------------------------------------------------
class SpeculativeVerify(nn.Module):
    def __init__(self):
        super().__init__()
        self.target = LlamaPrefill(layers=1)

    def forward(self, prefix_ids, draft_tokens):
        k = draft_tokens.shape[1]
        logits = self.target(torch.cat([prefix_ids, draft_tokens], dim=1))[:, -(k + 1):]  # predictions for draft + bonus
        target_tokens = logits.argmax(dim=-1)
        matches = (draft_tokens == target_tokens[:, :-1]).int()
        n_accepted = torch.cumprod(matches, dim=-1).sum(dim=-1)
        bonus = torch.gather(target_tokens, 1, n_accepted[:, None])
        keep = torch.arange(k, device=draft_tokens.device)[None] < n_accepted[:, None]
        accepted = torch.where(keep, draft_tokens, torch.full_like(draft_tokens, -1))
        return logits, n_accepted, accepted, bonus


def _speculative_inputs(n, g, k=4):
    return _ids(n, g, 6), torch.randint(0, VOCAB, (n, k), generator=g)


# --- vLLM paged attention (reference impl: gather key_cache by block_tables) ---------------------------------------------
class PagedDecodeAttention(nn.Module):
    def __init__(self, num_blocks=10, block_size=4):
        super().__init__()
        self.block_size = block_size
        self.qkv = nn.Linear(DIM, (HEADS + 2 * KV_HEADS) * HEAD_DIM)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, DIM)
        g = torch.Generator().manual_seed(4)
        self.register_buffer("key_cache", torch.randn(num_blocks, block_size, KV_HEADS, HEAD_DIM, generator=g))
        self.register_buffer("value_cache", torch.randn(num_blocks, block_size, KV_HEADS, HEAD_DIM, generator=g))

    def forward(self, hidden_states, block_tables, context_lens):
        """``hidden_states`` (B, DIM) one query token per sequence; ``block_tables`` (B, max_blocks); ``context_lens`` (B,)."""
        num_seqs = hidden_states.shape[0]
        q, _k, _v = self.qkv(hidden_states).split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
        q = q.view(num_seqs, HEADS, HEAD_DIM)
        keys = self.key_cache[block_tables].flatten(1, 2)  # (B, max_blocks * block_size, KV, D)
        values = self.value_cache[block_tables].flatten(1, 2)
        keys = keys.repeat_interleave(HEADS // KV_HEADS, dim=2)
        values = values.repeat_interleave(HEADS // KV_HEADS, dim=2)
        attn = torch.einsum("bhd,bshd->bhs", q, keys) * HEAD_DIM ** -0.5
        positions = torch.arange(keys.shape[1], device=q.device)
        attn = attn.masked_fill((positions[None, :] >= context_lens[:, None])[:, None], float("-inf"))
        attn = attn.softmax(dim=-1)
        out = torch.einsum("bhs,bshd->bhd", attn, values)
        return self.o_proj(out.reshape(num_seqs, -1))


def _paged_inputs(n, g, num_blocks=10, max_blocks=3, block_size=4):
    tables = torch.stack([torch.randperm(num_blocks, generator=g)[:max_blocks] for _ in range(n)])
    return torch.randn(n, DIM, generator=g), tables, torch.randint(1, max_blocks * block_size + 1, (n,), generator=g)


# --- Falcon multi-query attention (one k/v head, fused query_key_value, SDPA causal) -----------------------------------
class FalconMQA(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, DIM)
        self.input_layernorm = nn.LayerNorm(DIM)
        self.query_key_value = nn.Linear(DIM, DIM + 2 * HEAD_DIM, bias=False)
        self.dense = nn.Linear(DIM, DIM, bias=False)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM, bias=False), nn.GELU(), nn.Linear(4 * DIM, DIM, bias=False))
        self.rotary_emb = RotaryEmbedding()
        self.ln_f = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def _split_heads(self, fused_qkv):
        batch_size, seq_length, _three_times_hidden_size = fused_qkv.shape
        fused_qkv = fused_qkv.view(batch_size, seq_length, HEADS + 2, HEAD_DIM)
        return fused_qkv[..., :-2, :], fused_qkv[..., [-2], :], fused_qkv[..., [-1], :]

    def forward(self, input_ids):
        h = self.word_embeddings(input_ids)
        b, t, _ = h.shape
        x = self.input_layernorm(h)
        q, k, v = self._split_heads(self.query_key_value(x))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # k, v: (B, 1, T, D)
        cos, sin = self.rotary_emb(v, torch.arange(t, device=h.device)[None].expand(b, -1))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = k.expand(-1, HEADS, -1, -1), v.expand(-1, HEADS, -1, -1)
        attn = F.scaled_dot_product_attention(q, k, v, None, 0.0, is_causal=True)
        attn = attn.transpose(1, 2).reshape(b, t, -1)
        h = h + self.dense(attn) + self.mlp(x)  # parallel attention + MLP
        return self.lm_head(self.ln_f(h))


# --- prefix-LM mask (UniLM / PaLM / GLM): bidirectional over the prompt, causal after --------------------------------------
class PrefixLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.randn(16, DIM) * 0.02)
        self.layer = nn.TransformerEncoderLayer(DIM, HEADS, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.lm_head = nn.Linear(DIM, VOCAB)

    def forward(self, input_ids, prefix_lengths):
        b, t = input_ids.shape
        h = self.embed(input_ids) + self.pos[:t]
        i = torch.arange(t, device=input_ids.device)
        causal = i[None, :, None] >= i[None, None, :]  # (1, T, T): query i sees key j <= i
        in_prefix = i[None, None, :] < prefix_lengths[:, None, None]  # every query sees the whole prefix
        allowed = causal | in_prefix  # (B, T, T)
        mask = torch.zeros(b, t, t, device=h.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(HEADS, dim=0)  # (B * heads, T, T) as nn.MultiheadAttention takes it
        return self.lm_head(self.layer(h, src_mask=mask))


def _prefix_inputs(n, g, t=10):
    return _ids(n, g, t), torch.randint(1, t, (n,), generator=g)


# --- StreamingLLM: keep attention sinks + a recent window, positions re-assigned inside the cache ---------------------
class StreamingSinkAttention(nn.Module):
    def __init__(self, start_size=2, recent_size=6):
        super().__init__()
        self.start_size, self.recent_size = start_size, recent_size
        self.embed = nn.Embedding(VOCAB, DIM)
        self.attn = GQAProj()
        self.rotary_emb = RotaryEmbedding()
        self.lm_head = nn.Linear(DIM, VOCAB)

    def evict(self, k, v):  # StartRecentKVCache.__call__ (k_seq_dim = 2)
        seq_len = k.size(2)
        if seq_len <= self.start_size + self.recent_size:
            return k, v
        return (torch.cat([k[:, :, : self.start_size], k[:, :, seq_len - self.recent_size: seq_len]], dim=2),
                torch.cat([v[:, :, : self.start_size], v[:, :, seq_len - self.recent_size: seq_len]], dim=2))

    def forward(self, input_ids, past_key, past_value):
        """``past_key`` / ``past_value`` un-rotated (B, KV, S, D); the new token attends over the evicted cache with
        positions 0..len-1 inside the cache (StreamingLLM's positional shift)."""
        h = self.embed(input_ids)
        b, t, _ = h.shape
        q, k, v = self.attn.qkv(h)
        past_key, past_value = self.evict(past_key, past_value)
        keys = torch.cat([past_key, k], dim=2)
        values = torch.cat([past_value, v], dim=2)
        kv_len = keys.shape[2]
        pos_k = torch.arange(kv_len, device=h.device)[None].expand(b, -1)
        cos_k, sin_k = self.rotary_emb(v, pos_k)
        cos_q, sin_q = cos_k[:, -t:], sin_k[:, -t:]
        q = q * cos_q.unsqueeze(1) + rotate_half(q) * sin_q.unsqueeze(1)
        keys_rot = keys * cos_k.unsqueeze(1) + rotate_half(keys) * sin_k.unsqueeze(1)
        out = F.scaled_dot_product_attention(q, repeat_kv(keys_rot, 2), repeat_kv(values, 2))
        logits = self.lm_head(h + self.attn.o_proj(out.transpose(1, 2).reshape(b, t, -1)))
        return logits, keys, values


def _streaming_inputs(n, g, past=11):
    return (_ids(n, g, 1), torch.randn(n, KV_HEADS, past, HEAD_DIM, generator=g),
            torch.randn(n, KV_HEADS, past, HEAD_DIM, generator=g))


# --- gpt-oss learned attention sinks (eager_attention_forward in modeling_gpt_oss.py) -----------------------------------
class GptOssSinkAttention(nn.Module):
    def __init__(self, sliding_window=4):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.attn = GQAProj()
        self.sinks = nn.Parameter(torch.randn(HEADS))
        self.rotary_emb = RotaryEmbedding(base=150000.0)
        self.sliding_window = sliding_window
        self.lm_head = nn.Linear(DIM, VOCAB)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        b, t, _ = h.shape
        q, k, v = self.attn.qkv(h)
        cos, sin = self.rotary_emb(v, torch.arange(t)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        key_states, value_states = repeat_kv(k, 2), repeat_kv(v, 2)
        attn_weights = torch.matmul(q, key_states.transpose(2, 3)) * HEAD_DIM ** -0.5
        i = torch.arange(t)
        dist = i[:, None] - i[None, :]
        allowed = (dist >= 0) & (dist < self.sliding_window)
        attn_weights = attn_weights + torch.where(allowed, 0.0, torch.finfo(attn_weights.dtype).min)[None, None]
        sinks = self.sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)
        combined_logits = torch.cat([attn_weights, sinks], dim=-1)
        combined_logits = combined_logits - combined_logits.max(dim=-1, keepdim=True).values
        probs = F.softmax(combined_logits, dim=-1, dtype=combined_logits.dtype)
        scores = probs[..., :-1]
        out = torch.matmul(scores, value_states).transpose(1, 2).reshape(b, t, -1)
        return self.lm_head(h + self.attn.o_proj(out))


# --- Medusa heads (FasterDecoding/Medusa medusa_model.py) ------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        torch.nn.init.zeros_(self.linear.weight)
        with torch.no_grad():
            self.linear.weight.add_(torch.randn_like(self.linear.weight) * 0.05)
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.act(self.linear(x))


class MedusaModel(nn.Module):
    def __init__(self, medusa_num_heads=3, medusa_num_layers=1, topk=4):
        super().__init__()
        self.base = LlamaPrefill(layers=1)
        self.topk = topk
        self.medusa_head = nn.ModuleList([nn.Sequential(*([ResBlock(DIM)] * medusa_num_layers), nn.Linear(DIM, VOCAB, bias=False))
                                          for _ in range(medusa_num_heads)])

    def forward(self, input_ids):
        base = self.base
        h = base.embed_tokens(input_ids)
        t = h.shape[1]
        cos, sin = base.rotary_emb(h, torch.arange(t)[None])
        mask = torch.triu(torch.full((t, t), torch.finfo(h.dtype).min), diagonal=1)[None, None]
        for layer in base.layers:
            attn = layer["self_attn"]
            q, k, v = attn.qkv(layer["input_layernorm"](h))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            out = F.scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), attn_mask=mask)
            h = h + attn.o_proj(out.transpose(1, 2).flatten(2))
            h = h + layer["mlp"](layer["post_attention_layernorm"](h))
        hidden_states = base.norm(h)
        orig = base.lm_head(hidden_states)
        medusa_logits = torch.stack([head(hidden_states) for head in self.medusa_head], dim=0)
        candidates = torch.topk(medusa_logits[:, :, -1], self.topk, dim=-1).indices  # (heads, B, topk)
        return medusa_logits, orig, orig[:, -1].argmax(-1), candidates.transpose(0, 1)


# --- Gemma-2: soft-capping, tied embeddings, (1 + w) RMSNorm, sqrt(hidden) normalizer ---------------------------------------
class Gemma2RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.randn(dim) * 0.1)

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        output = self._norm(x.float())
        output = output * (1.0 + self.weight.float())
        return output.type_as(x)


class Gemma2Lite(nn.Module):
    def __init__(self, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=16):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, DIM)
        self.input_layernorm, self.post_attention_layernorm = Gemma2RMSNorm(DIM), Gemma2RMSNorm(DIM)
        self.pre_feedforward_layernorm, self.post_feedforward_layernorm = Gemma2RMSNorm(DIM), Gemma2RMSNorm(DIM)
        self.attn = GQAProj()
        self.mlp = LlamaMLP()
        self.norm = Gemma2RMSNorm(DIM)
        self.rotary_emb = RotaryEmbedding()
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.lm_head.weight = self.embed_tokens.weight
        self.attn_cap, self.final_cap, self.scaling = attn_logit_softcapping, final_logit_softcapping, query_pre_attn_scalar ** -0.5

    def forward(self, input_ids):
        hidden_states = self.embed_tokens(input_ids)
        normalizer = torch.tensor(DIM ** 0.5, dtype=hidden_states.dtype)
        hidden_states = hidden_states * normalizer
        b, t, _ = hidden_states.shape
        residual = hidden_states
        q, k, v = self.attn.qkv(self.input_layernorm(hidden_states))
        cos, sin = self.rotary_emb(v, torch.arange(t)[None].expand(b, -1))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        attn_weights = torch.matmul(q, repeat_kv(k, 2).transpose(2, 3)) * self.scaling
        attn_weights = attn_weights / self.attn_cap
        attn_weights = torch.tanh(attn_weights)
        attn_weights = attn_weights * self.attn_cap
        attn_weights = attn_weights + torch.triu(torch.full((t, t), torch.finfo(attn_weights.dtype).min), 1)
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(attn_weights, repeat_kv(v, 2)).transpose(1, 2).reshape(b, t, -1)
        hidden_states = residual + self.post_attention_layernorm(self.attn.o_proj(out))
        residual = hidden_states
        hidden_states = residual + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(hidden_states)))
        logits = self.lm_head(self.norm(hidden_states))
        logits = logits / self.final_cap
        logits = torch.tanh(logits)
        return logits * self.final_cap


# --- Qwen3 QK-norm (q_norm / k_norm on head_dim before RoPE) ------------------------------------------------------------------
class Qwen3Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.attn = GQAProj()
        self.q_norm, self.k_norm = RMSNorm(HEAD_DIM), RMSNorm(HEAD_DIM)
        self.rotary_emb = RotaryEmbedding(base=1000000.0)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)
        input_shape = h.shape[:-1]
        hidden_shape = (*input_shape, -1, HEAD_DIM)
        a = self.attn
        query_states = self.q_norm(a.q_proj(h).view(hidden_shape)).transpose(1, 2)
        key_states = self.k_norm(a.k_proj(h).view(hidden_shape)).transpose(1, 2)
        value_states = a.v_proj(h).view(hidden_shape).transpose(1, 2)
        t = input_shape[1]
        cos, sin = self.rotary_emb(value_states, torch.arange(t)[None])
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(query_states, key_states, value_states, attn_mask=mask, enable_gqa=True)
        return self.lm_head(h + a.o_proj(out.transpose(1, 2).reshape(*input_shape, -1)))


def _right_padded(n, g, length=10):
    lengths = torch.randint(3, length + 1, (n, 1), generator=g)
    mask = (torch.arange(length)[None] < lengths).long()
    return torch.randint(1, VOCAB, (n, length), generator=g) * mask, mask


# --- peft LoRA Linear beside a merged-at-forward W + B @ A * scale ----------------------------------------------------------
class LoraLinear(nn.Module):
    """peft's ``lora.Linear.forward``: ``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``."""

    def __init__(self, base_layer, r=4, lora_alpha=8):
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base_layer.in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, base_layer.out_features, bias=False)})
        nn.init.normal_(self.lora_B["default"].weight, std=0.05)
        self.lora_dropout = nn.ModuleDict({"default": nn.Dropout(0.05)})
        self.scaling = {"default": lora_alpha / r}
        self.active_adapters = ["default"]

    def forward(self, x):
        result = self.base_layer(x)
        torch_result_dtype = result.dtype
        for active_adapter in self.active_adapters:
            lora_A, lora_B = self.lora_A[active_adapter], self.lora_B[active_adapter]
            dropout, scaling = self.lora_dropout[active_adapter], self.scaling[active_adapter]
            x = x.to(lora_A.weight.dtype)
            result = result + lora_B(lora_A(dropout(x))) * scaling
        return result.to(torch_result_dtype)


class MergedLoraLinear(nn.Module):
    """loralib-style ``F.linear(x, W + (B @ A) * scaling, bias)`` recomputed in every forward (never merged in place)."""

    def __init__(self, in_features, out_features, r=4, lora_alpha=16):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * in_features ** -0.5)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.lora_A = nn.Parameter(torch.randn(r, in_features) * 0.1)
        self.lora_B = nn.Parameter(torch.randn(out_features, r) * 0.05)
        self.scaling = lora_alpha / r

    def forward(self, x):
        return F.linear(x, self.weight + (self.lora_B @ self.lora_A) * self.scaling, bias=self.bias)


class LoraLlamaBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.attn = GQAProj(kv_heads=HEADS)
        self.attn.q_proj = LoraLinear(self.attn.q_proj)
        self.attn.v_proj = LoraLinear(self.attn.v_proj)
        self.attn.o_proj = MergedLoraLinear(DIM, DIM)
        self.norm = RMSNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        b, t, _ = h.shape
        q, k, v = self.attn.qkv(self.norm(h))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        return self.lm_head(h + self.attn.o_proj(out))


# --- HF left padding: position_ids by cumsum, 4-D finfo.min causal + padding mask, last-token logits -----------------------
class LeftPaddedGenerateStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = LlamaPrefill(layers=1)

    def forward(self, input_ids, attention_mask):
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids.masked_fill_(attention_mask == 0, 1)
        m = self.model
        h = m.embed_tokens(input_ids)
        b, t, _ = h.shape
        dtype = h.dtype
        min_dtype = torch.finfo(dtype).min
        causal_mask = torch.full((t, t), fill_value=min_dtype, dtype=dtype)
        causal_mask = torch.triu(causal_mask, diagonal=1)
        causal_mask = causal_mask[None, None, :, :].expand(b, 1, -1, -1).clone()
        padding_mask = causal_mask + attention_mask[:, None, None, :].to(dtype)
        padding_mask = padding_mask == 0
        causal_mask = causal_mask.masked_fill(padding_mask, min_dtype)
        cos, sin = m.rotary_emb(h, position_ids)
        for layer in m.layers:
            attn = layer["self_attn"]
            q, k, v = attn.qkv(layer["input_layernorm"](h))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            out = F.scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), attn_mask=causal_mask)
            h = h + attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))
            h = h + layer["mlp"](layer["post_attention_layernorm"](h))
        next_token_logits = m.lm_head(m.norm(h[:, -1:, :]))[:, -1, :].float()
        return next_token_logits, position_ids


# --- gpt-fast MoE: expert weights indexed by token, einsum('ti,taoi->tao') ---------------------------------------------------
class GptFastMoE(nn.Module):
    def __init__(self, num_experts=4, num_activated=2, intermediate=24):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.gate = nn.Linear(DIM, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(num_experts, intermediate, DIM) * DIM ** -0.5)
        self.w2 = nn.Parameter(torch.randn(num_experts, DIM, intermediate) * intermediate ** -0.5)
        self.w3 = nn.Parameter(torch.randn(num_experts, intermediate, DIM) * DIM ** -0.5)
        self.num_activated_experts = num_activated
        self.lm_head = nn.Linear(DIM, VOCAB)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        x = h.view(-1, DIM)
        scores = self.gate(x)  # [T, E]
        expert_weights = F.softmax(scores, dim=-1)
        expert_weights, expert_indices = torch.topk(expert_weights, self.num_activated_experts, dim=-1)  # [T, A]
        expert_weights /= expert_weights.sum(dim=-1, keepdim=True)
        w1_weights = self.w1[expert_indices]  # [T, A, D, D]
        w3_weights = self.w3[expert_indices]
        w2_weights = self.w2[expert_indices]
        x1 = F.silu(torch.einsum("ti,taoi -> tao", x, w1_weights))
        x3 = torch.einsum("ti, taoi -> tao", x, w3_weights)
        expert_outs = torch.einsum("tao, taio -> tai", (x1 * x3), w2_weights)
        y = torch.einsum("tai,ta -> ti", expert_outs, expert_weights)
        return self.lm_head(h + y.view_as(h))


# --- Mixtral sparse MoE block (one_hot expert mask, torch.where per expert, index_add_) -----------------------------------
class MixtralSparseMoe(nn.Module):
    def __init__(self, num_experts=4, top_k=2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.num_experts, self.top_k = num_experts, top_k
        self.gate = nn.Linear(DIM, num_experts, bias=False)
        self.experts = nn.ModuleList([LlamaMLP(DIM, 24) for _ in range(num_experts)])
        self.lm_head = nn.Linear(DIM, VOCAB)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        batch_size, sequence_length, hidden_dim = h.shape
        hidden_states = h.view(-1, hidden_dim)
        router_logits = self.gate(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        final_hidden_states = torch.zeros((batch_size * sequence_length, hidden_dim), dtype=hidden_states.dtype)
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        for expert_idx in range(self.num_experts):
            expert_layer = self.experts[expert_idx]
            idx, top_x = torch.where(expert_mask[expert_idx])
            current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
            current_hidden_states = expert_layer(current_state) * routing_weights[top_x, idx, None]
            final_hidden_states.index_add_(0, top_x, current_hidden_states.to(hidden_states.dtype))
        final_hidden_states = final_hidden_states.reshape(batch_size, sequence_length, hidden_dim)
        return self.lm_head(h + final_hidden_states), router_logits


CASES = {
    "llm_static_cache_index_copy": ("HF StaticCache / gpt-fast decode step: caller-held (B, KV, max_len, D) caches updated by "
                                    "index_copy_(2, cache_position, k), repeat_kv, arange(max_len) <= cache_position bool mask "
                                    "to SDPA, returns (logits, k_cache, v_cache)", lambda: (StaticCacheDecode(), _static_cache_inputs)),
    "llm_rolling_cache_window": ("Mistral rolling buffer: cache[:, :, input_pos % window] = k slice assignment on cloned "
                                 "caches, slot positions tracked, sliding-window visibility mask, finfo.min masked_fill",
                                 lambda: (RollingCacheAttention(), _rolling_inputs)),
    "llm_meta_cache_buffer": ("Meta llama reference: self.cache_k[:bsz, start_pos:start_pos + seqlen] = xk into a max-batch "
                              "buffer, view_as_complex RoPE by a freqs_cis attribute, hstack'ed triu -inf mask, repeat_interleave "
                              "GQA, int start_pos argument", lambda: (MetaLlama(), lambda n, g: (_ids(n, g, 5), 2))),
    "llm_llama_prefill": ("HF LlamaAttention prefill x2: rotate_half RoPE from inv_freq @ position_ids, repeat_kv by expand + "
                          "reshape, triu(finfo.min) causal mask, softmax(dtype=float32), SwiGLU MLP, RMSNorm in float32",
                          lambda: (LlamaPrefill(), _tokens)),
    "llm_rope_llama3_yarn": ("rope_scaling: llama3 wavelength-smoothed inv_freq and YaRN ramp + mscale cos/sin on two head "
                             "groups, positions past the trained length (offset position_ids input), SDPA is_causal",
                             lambda: (RopeScaled(), _long_positions)),
    "llm_rope_dynamic_ntk": ("HF dynamic NTK RoPE: seq_len = torch.max(position_ids) + 1, if seq_len > cached: base grows and "
                             "inv_freq is re-registered in forward (data-dependent branch and buffer mutation)",
                             lambda: (DynamicNTKModel(), _long_positions)),
    "llm_bloom_alibi": ("BLOOM build_alibi_tensor: slopes by closest power of two (int32 pow), (mask.cumsum - 1) * mask "
                        "positions, alibi.baddbmm(q, k^T, beta, alpha), fused qkv view(b, t, h, 3, d), padding-or-triu mask",
                        lambda: (BloomAttention(), _left_padded)),
    "llm_logits_processors": ("HF logits processors in forward: repetition penalty gather/where/scatter on input_ids, "
                              "temperature, top-k (scores < topk[..., -1, None]) -> -inf, top-p sort + softmax.cumsum + "
                              "scatter back, softmax probs + argmax", lambda: (ProcessedNextToken(), _tokens)),
    "llm_nanogpt_greedy": ("nanoGPT generate step: tril 'bias' buffer masked_fill(-inf), tied wte/lm_head, x[:, [-1], :], "
                           "/ temperature, argmax, cat((idx, idx_next)) int output + logits", lambda: (NanoGPTGreedy(), _tokens)),
    "llm_beam_search_step": ("one beam-search step: log_softmax + beam_scores, view(B, beams * vocab), topk, // vocab and "
                             "% vocab, beam_idx + arange(B) * beams, input_ids[beam_idx] cat next tokens, state index_select "
                             "(batch dim B * beams on two inputs)", lambda: (BeamSearchStep(), _beam_inputs)),
    "llm_speculative_verify": ("speculative decoding verify: target logits on cat(prefix, draft), argmax, (draft == target) "
                               ".int().cumprod(-1).sum(-1) accepted count, bonus token by gather, where(arange < n, draft, -1)",
                               lambda: (SpeculativeVerify(), _speculative_inputs)),
    "llm_paged_kv_gather": ("vLLM paged attention reference: key_cache[block_tables] gather from (blocks, block_size, KV, D) "
                            "buffers, flatten, repeat_interleave GQA, einsum scores, positions >= context_lens -> -inf",
                            lambda: (PagedDecodeAttention(), _paged_inputs)),
    "llm_falcon_mqa": ("Falcon multi-query attention: fused query_key_value view(b, t, heads + 2, d), [..., [-2], :] single "
                       "k/v head expanded, RoPE, SDPA(is_causal=True), parallel attention + MLP", lambda: (FalconMQA(), _tokens)),
    "llm_prefix_lm_mask": ("prefix-LM: causal or (j < prefix_length[b]) bool mask per row, -inf float mask "
                           "repeat_interleave'd to (B * heads, T, T) for nn.TransformerEncoderLayer src_mask",
                           lambda: (PrefixLM(), _prefix_inputs)),
    "llm_streaming_sinks": ("StreamingLLM: StartRecentKVCache eviction cat(k[:, :, :start], k[:, :, -recent:]), RoPE "
                            "re-applied at positions inside the cache, cache returned (python branch on past length)",
                            lambda: (StreamingSinkAttention(), _streaming_inputs)),
    "llm_gptoss_sinks": ("gpt-oss learned sinks: per-head sink logit expanded and cat to scores, minus max, softmax, "
                         "probs[..., :-1], sliding-window where(finfo.min) mask", lambda: (GptOssSinkAttention(), _tokens)),
    "llm_medusa_heads": ("Medusa: shared ResBlock heads (x + SiLU(Linear(x))), stacked (heads, B, T, V) logits, per-head topk "
                         "candidates of the last position, base argmax", lambda: (MedusaModel(), _tokens)),
    "llm_gemma2_softcap": ("Gemma-2: sqrt(hidden) normalizer tensor, (1 + w) RMSNorm in float32, query_pre_attn_scalar, "
                           "tanh attention soft-cap, sandwich norms, tied embed/lm_head, tanh final-logit soft-cap",
                           lambda: (Gemma2Lite(), _tokens)),
    "llm_qwen3_qk_norm": ("Qwen3 QK-norm: q_norm/k_norm RMSNorm on head_dim before RoPE, bool causal & padding mask, "
                          "SDPA(enable_gqa=True) on 4 q / 2 kv heads", lambda: (Qwen3Attention(), _right_padded)),
    "llm_lora_adapters": ("peft lora.Linear (base_layer + lora_B(lora_A(dropout(x))) * scaling over ModuleDicts) on q/v, "
                          "loralib-style F.linear(x, W + B @ A * scaling) recomputed in forward on o_proj",
                          lambda: (LoraLlamaBlock(), _tokens)),
    "llm_left_pad_position_ids": ("HF generate left padding: position_ids = mask.cumsum(-1) - 1, masked_fill_(mask == 0, 1), "
                                  "finfo.min triu + padding 4-D mask by (causal + mask) == 0, last-token logits .float(), "
                                  "(logits, position_ids)", lambda: (LeftPaddedGenerateStep(), _left_padded)),
    "llm_gptfast_moe": ("gpt-fast MOEFeedForward: softmax + topk(2) renormalised, expert weights indexed by token "
                        "w1[expert_indices], einsum('ti,taoi->tao'), einsum('tai,ta->ti')", lambda: (GptFastMoE(), _tokens)),
    "llm_mixtral_sparse_moe": ("Mixtral sparse MoE: softmax(float) + topk, one_hot(selected).permute(2, 1, 0), torch.where per "
                               "expert (data-dependent token count), hidden[None, top_x], index_add_, (logits, router_logits)",
                               lambda: (MixtralSparseMoe(), _tokens)),
}
