"""Twelfth round of user-style models for ``usage_scan.py`` (2026-12-07, eighth session): generative models and
numerics-heavy forwards, written as their reference repositories write them. A DiT with adaLN-Zero modulation
(``chunk(6)`` of a timestep + class embedding, sinusoidal features of a float timestep computed in ``forward``),
k-diffusion's classifier-free-guidance denoiser (``cat([x] * 2)``, a null class, ``chunk(2)``), EDM's
preconditioning (``c_skip``, ``c_out``, ``c_in``, ``c_noise = log(sigma) / 4`` from a per-sample sigma, ``x.ger``
Fourier features), the latent-diffusion encoder (GroupNorm, single-head ``bmm`` attention over H*W, the asymmetric
``F.pad`` downsample, a clamped log-variance) and Stable Diffusion's VAE decode to uint8 NHWC pixels, StyleGAN2's
mapping network and modulated/demodulated convolutions (per-sample weights through ``groups=batch``, noise buffers,
truncation), Real-ESRGAN's x2 RRDB net (``view``/``permute`` pixel unshuffle, nearest upsampling), Glow (ActNorm
with a data-initialised flag, an LU-decomposed invertible 1x1 conv, affine coupling, a Gaussian prior's log p),
PixelCNN's masked convolutions, a VQ-GAN quantizer (expanded distances, straight-through, commitment loss,
perplexity of a scattered one-hot), RoBERTa's position ids from ``cumsum`` of the non-padding mask, top-k/top-p
filtering with boolean-index assignment, logsumexp / quantile / median pooling, ``bucketize`` and
``searchsorted`` feature bins, SigLIP's sigmoid logits with a bias and its loss, LLM.int8-style outlier channels, a
conditional VAE and a DALL-E dVAE guarded by ``self.training``, mu-law companding around a WaveNet, a flow-matching
midpoint step with ``t[:, None, None, None]``, a DDIM step by ``gather`` from schedule buffers, a mixture density
network's ``logsumexp`` likelihood, and a piecewise-linear coupling flow (``floor``, ``gather``, ``cumsum``).

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.usage_models_research import _images, _trained_norms


# --- DiT (facebookresearch/DiT models.py) ------------------------------------------------------------------------
def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half).to(device=t.device)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def token_drop(self, labels, force_drop_ids=None):
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels, train, force_drop_ids=None):
        if (train and self.dropout_prob > 0) or (force_drop_ids is not None):
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class DiTBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = DiTAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_hidden_dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden_dim, hidden_size))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def get_2d_sincos_pos_embed(embed_dim, grid_size):
    grid_h = torch.arange(grid_size, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(grid_h, grid_h, indexing="xy"), 0).reshape(2, -1)

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], dim=1).float()


class DiT(nn.Module):
    """DiT with adaLN-Zero: latents patchified by a strided conv, fixed 2-D sincos positions, ``c = t_emb + y_emb``,
    blocks modulated by ``adaLN_modulation(c).chunk(6)``, ``learn_sigma`` doubling the output channels, and
    ``unpatchify`` by ``einsum('nhwpqc->nchpwq')``. Random (trained-like) weights in place of the zero init."""

    def __init__(self, input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, class_dropout_prob=0.1,
                 num_classes=10, learn_sigma=True):
        super().__init__()
        self.in_channels, self.patch_size = in_channels, patch_size
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = (input_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(get_2d_sincos_pos_embed(hidden_size, input_size // patch_size)[None], requires_grad=False)
        assert self.pos_embed.shape[1] == num_patches
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def unpatchify(self, x):
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        assert h * w == x.shape[1]
        x = x.reshape(shape=(x.shape[0], h, w, p, p, c))
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(shape=(x.shape[0], c, h * p, h * p))

    def forward(self, x, t, y):
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        t = self.t_embedder(t)
        y = self.y_embedder(y, self.training)
        c = t + y
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


def _latents_t_y(n: int, g: torch.Generator) -> tuple:
    return torch.randn(n, 4, 8, 8, generator=g), torch.rand(n, generator=g) * 999.0, torch.randint(0, 10, (n,), generator=g)


class CFGDenoiser(nn.Module):
    """k-diffusion's ``CFGDenoiser`` shape around a class-conditional DiT: both halves in one batch (the null class
    for the second), ``chunk(2)``, ``uncond + (cond - uncond) * cond_scale``."""

    def __init__(self, cond_scale: float = 4.0) -> None:
        super().__init__()
        self.inner_model = DiT(depth=1)
        self.null_class, self.cond_scale = self.inner_model.y_embedder.num_classes, cond_scale

    def forward(self, x, sigma, y):
        x_in = torch.cat([x] * 2)
        sigma_in = torch.cat([sigma] * 2)
        y_in = torch.cat([y, torch.full_like(y, self.null_class)])
        cond, uncond = self.inner_model(x_in, sigma_in, y_in).chunk(2)
        return uncond + (cond - uncond) * self.cond_scale


# --- EDM preconditioning (NVlabs/edm training/networks.py) -------------------------------------------------------
class PositionalEmbedding(nn.Module):
    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        freqs = torch.arange(start=0, end=self.num_channels // 2, dtype=torch.float32, device=x.device)
        freqs = freqs / (self.num_channels // 2 - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = x.ger(freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class EDMBlock(nn.Module):
    def __init__(self, cin, cout, emb):
        super().__init__()
        self.norm0, self.conv0 = nn.GroupNorm(8, cin, eps=1e-6), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, cout * 2)
        self.norm1, self.conv1 = nn.GroupNorm(8, cout, eps=1e-6), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb).unsqueeze(2).unsqueeze(3).chunk(chunks=2, dim=1)
        x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        x = self.conv1(x)
        x = x + (self.skip(orig) if self.skip is not None else orig)
        return x * (1 / math.sqrt(2))


class TinyEDMUNet(nn.Module):
    def __init__(self, ch=32, emb=64):
        super().__init__()
        self.map_noise = PositionalEmbedding(ch, endpoint=True)
        self.map_layer0, self.map_layer1 = nn.Linear(ch, emb), nn.Linear(emb, emb)
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.enc0, self.enc1 = EDMBlock(ch, ch, emb), EDMBlock(ch, ch, emb)
        self.dec1, self.dec0 = EDMBlock(ch * 2, ch, emb), EDMBlock(ch * 2, ch, emb)
        self.out_norm, self.out_conv = nn.GroupNorm(8, ch, eps=1e-6), nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, x, noise_labels, class_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # swap sin/cos
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        h0 = self.enc0(self.conv_in(x), emb)
        h1 = self.enc1(F.avg_pool2d(h0, 2), emb)
        d1 = self.dec1(torch.cat([h1, F.avg_pool2d(h0, 2)], 1), emb)
        d0 = self.dec0(torch.cat([F.interpolate(d1, scale_factor=2, mode="nearest"), h0], 1), emb)
        return self.out_conv(F.silu(self.out_norm(d0)))


class EDMPrecond(nn.Module):
    """EDM's ``EDMPrecond.forward`` verbatim (fp16 off on CPU) around a small U-Net."""

    def __init__(self, sigma_data=0.5, use_fp16=False):
        super().__init__()
        self.sigma_data, self.use_fp16 = sigma_data, use_fp16
        self.model = TinyEDMUNet()

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else torch.float32
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels)
        assert F_x.dtype == dtype
        return c_skip * x + c_out * F_x.to(torch.float32)


def _noisy_sigma(n: int, g: torch.Generator) -> tuple:
    sigma = (torch.randn(n, generator=g) * 1.2 - 1.2).exp()
    y = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
    return y + sigma[:, None, None, None] * torch.randn(n, 3, 16, 16, generator=g), sigma


# --- latent diffusion autoencoder (CompVis/latent-diffusion ldm/modules/diffusionmodules/model.py) ----------------
def Normalize(in_channels, num_groups=8):
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=1e-6, affine=True)


def nonlinearity(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, *, in_channels, out_channels=None, dropout=0.0):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.norm1, self.conv1 = Normalize(in_channels), nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2, self.dropout = Normalize(out_channels), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.norm = Normalize(in_channels)
        self.q, self.k = nn.Conv2d(in_channels, in_channels, 1), nn.Conv2d(in_channels, in_channels, 1)
        self.v, self.proj_out = nn.Conv2d(in_channels, in_channels, 1), nn.Conv2d(in_channels, in_channels, 1)

    def forward(self, x):
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w)
        q = q.permute(0, 2, 1)  # b,hw,c
        k = k.reshape(b, c, h * w)  # b,c,hw
        w_ = torch.bmm(q, k)  # b,hw,hw    w[b,i,j]=sum_c q[b,i,c]k[b,c,j]
        w_ = w_ * (int(c) ** (-0.5))
        w_ = torch.nn.functional.softmax(w_, dim=2)
        v = v.reshape(b, c, h * w)
        w_ = w_.permute(0, 2, 1)  # b,hw,hw (first hw of k, second of q)
        h_ = torch.bmm(v, w_)  # b, c,hw (hw of q) h_[b,c,j] = sum_i v[b,c,i] w_[b,i,j]
        h_ = h_.reshape(b, c, h, w)
        return x + self.proj_out(h_)


class Downsample(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x):
        pad = (0, 1, 0, 1)
        x = torch.nn.functional.pad(x, pad, mode="constant", value=0)
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        x = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class LDMEncoder(nn.Module):
    """``Encoder(double_z=True)`` then ``DiagonalGaussianDistribution``: mean and ``std = exp(0.5 * clamp(logvar, -30, 20))``."""

    def __init__(self, ch=32, z_channels=4):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        self.down_block, self.down = ResnetBlock(in_channels=ch), Downsample(ch)
        self.mid_block_1, self.mid_attn_1 = ResnetBlock(in_channels=ch), AttnBlock(ch)
        self.mid_block_2 = ResnetBlock(in_channels=ch)
        self.norm_out, self.conv_out = Normalize(ch), nn.Conv2d(ch, 2 * z_channels, 3, 1, 1)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * z_channels, 1)

    def forward(self, x):
        h = self.down(self.down_block(self.conv_in(x)))
        h = self.mid_block_2(self.mid_attn_1(self.mid_block_1(h)))
        moments = self.quant_conv(self.conv_out(nonlinearity(self.norm_out(h))))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        logvar = torch.clamp(logvar, -30.0, 20.0)
        std = torch.exp(0.5 * logvar)
        return mean, std


class SDVAEDecode(nn.Module):
    """diffusers' ``decode_latents``: ``latents / 0.18215``, the VAE decoder (mid attention, nearest-upsample convs),
    ``(image / 2 + 0.5).clamp(0, 1)``, NHWC, and ``numpy_to_pil``'s ``(images * 255).round()`` as uint8."""

    def __init__(self, ch=32, z_channels=4):
        super().__init__()
        self.scaling_factor = 0.18215
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)
        self.conv_in = nn.Conv2d(z_channels, ch, 3, 1, 1)
        self.mid_block_1, self.mid_attn_1 = ResnetBlock(in_channels=ch), AttnBlock(ch)
        self.up_block, self.upsample = ResnetBlock(in_channels=ch, out_channels=ch // 2), Upsample(ch // 2)
        self.norm_out, self.conv_out = Normalize(ch // 2), nn.Conv2d(ch // 2, 3, 3, 1, 1)

    def forward(self, latents):
        latents = 1 / self.scaling_factor * latents
        h = self.conv_in(self.post_quant_conv(latents))
        h = self.upsample(self.up_block(self.mid_attn_1(self.mid_block_1(h))))
        image = self.conv_out(nonlinearity(self.norm_out(h)))
        image = (image / 2 + 0.5).clamp(0, 1)
        image = image.permute(0, 2, 3, 1)
        return (image * 255).round().to(torch.uint8)


# --- StyleGAN2 (rosinality/stylegan2-pytorch model.py, with native ops in place of the CUDA kernels) ----------------
class PixelNorm(nn.Module):
    def forward(self, input):
        return input * torch.rsqrt(torch.mean(input ** 2, dim=1, keepdim=True) + 1e-8)


def fused_leaky_relu(input, bias, negative_slope=0.2, scale=2 ** 0.5):
    rest_dim = [1] * (input.ndim - bias.ndim - 1)
    return F.leaky_relu(input + bias.view(1, bias.shape[0], *rest_dim), negative_slope=negative_slope) * scale


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim, bias=True, bias_init=0, lr_mul=1, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation, self.scale, self.lr_mul = activation, (1 / math.sqrt(in_dim)) * lr_mul, lr_mul

    def forward(self, input):
        if self.activation:
            out = F.linear(input, self.weight * self.scale)
            out = fused_leaky_relu(out, self.bias * self.lr_mul)
        else:
            out = F.linear(input, self.weight * self.scale, bias=self.bias * self.lr_mul)
        return out


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True, upsample=False):
        super().__init__()
        self.kernel_size, self.in_channel, self.out_channel = kernel_size, in_channel, out_channel
        self.upsample, self.demodulate = upsample, demodulate
        fan_in = in_channel * kernel_size ** 2
        self.scale, self.padding = 1 / math.sqrt(fan_in), kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def forward(self, input, style):
        batch, in_channel, height, width = input.shape
        style = self.modulation(style).view(batch, 1, in_channel, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        weight = weight.view(batch * self.out_channel, in_channel, self.kernel_size, self.kernel_size)
        if self.upsample:
            input = F.interpolate(input, scale_factor=2, mode="bilinear", align_corners=False)
            height, width = height * 2, width * 2
        input = input.view(1, batch * in_channel, height, width)
        out = F.conv2d(input, weight, padding=self.padding, groups=batch)
        _, _, height, width = out.shape
        return out.view(batch, self.out_channel, height, width)


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,), 0.1))

    def forward(self, image, noise=None):
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class StyledConv(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.bias = nn.Parameter(torch.zeros(out_channel))

    def forward(self, input, style, noise=None):
        out = self.noise(self.conv(input, style), noise=noise)
        return fused_leaky_relu(out, self.bias)


class ToRGB(nn.Module):
    def __init__(self, in_channel, style_dim):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, input, style, skip=None):
        out = self.conv(input, style) + self.bias
        if skip is not None:
            out = out + F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        return out


class StyleGAN2Generator(nn.Module):
    """Mapping network (PixelNorm, EqualLinear with lr_mul=0.01), a learned constant repeated over the batch,
    modulated convs demodulated per sample and run as one grouped conv (``groups=batch``), noise from registered
    buffers (``randomize_noise=False``), truncation towards a mean-latent buffer, skip ToRGBs."""

    def __init__(self, size=16, style_dim=32, n_mlp=4, channel=32, lr_mlp=0.01):
        super().__init__()
        self.style_dim = style_dim
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu")
                                                  for _ in range(n_mlp)])
        self.input = nn.Parameter(torch.randn(1, channel, 4, 4))
        self.conv1, self.to_rgb1 = StyledConv(channel, channel, 3, style_dim), ToRGB(channel, style_dim)
        self.log_size = int(math.log(size, 2))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = (layer_idx + 5) // 2
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, 2 ** res, 2 ** res))
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        for _ in range(3, self.log_size + 1):
            self.convs.append(StyledConv(channel, channel, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(channel, channel, 3, style_dim))
            self.to_rgbs.append(ToRGB(channel, style_dim))
        self.register_buffer("mean_latent", torch.randn(1, style_dim) * 0.1)

    def forward(self, z, truncation=0.7, randomize_noise=False):
        style = self.style(z)
        if truncation < 1:
            style = self.mean_latent + truncation * (style - self.mean_latent)
        noise = [None] * self.num_layers if randomize_noise else [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        out = self.input.repeat(style.shape[0], 1, 1, 1)
        out = self.conv1(out, style, noise=noise[0])
        skip = self.to_rgb1(out, style)
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs):
            out = conv1(out, style, noise=noise1)
            out = conv2(out, style, noise=noise2)
            skip = to_rgb(out, style, skip)
            i += 2
        return skip


# --- Real-ESRGAN x2 (basicsr/archs/rrdbnet_arch.py) --------------------------------------------------------------
def pixel_unshuffle(x, scale):
    b, c, hh, hw = x.size()
    out_channel = c * (scale ** 2)
    assert hh % scale == 0 and hw % scale == 0
    h, w = hh // scale, hw // scale
    x_view = x.view(b, c, h, scale, w, scale)
    return x_view.permute(0, 1, 3, 5, 2, 4).reshape(b, out_channel, h, w)


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat=16, num_grow_ch=8):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat, num_grow_ch=8):
        super().__init__()
        self.rdb1, self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch), ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        return self.rdb2(self.rdb1(x)) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, num_in_ch=3, num_out_ch=3, scale=2, num_feat=16, num_block=1, num_grow_ch=8):
        super().__init__()
        self.scale = scale
        if scale == 2:
            num_in_ch = num_in_ch * 4
        elif scale == 1:
            num_in_ch = num_in_ch * 16
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1, self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr, self.conv_last = nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        if self.scale == 2:
            feat = pixel_unshuffle(x, scale=2)
        elif self.scale == 1:
            feat = pixel_unshuffle(x, scale=4)
        else:
            feat = x
        feat = self.conv_first(feat)
        body_feat = self.conv_body(self.body(feat))
        feat = feat + body_feat
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


# --- Glow (openai/glow ActNorm with log-scales; rosinality/glow-pytorch LU 1x1 conv and coupling) -------------------
logabs = lambda x: torch.log(torch.abs(x))  # noqa: E731 - as the repository writes it


class ActNorm(nn.Module):
    def __init__(self, in_channel):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, in_channel, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, in_channel, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    def initialize(self, input):
        with torch.no_grad():
            flatten = input.permute(1, 0, 2, 3).contiguous().view(input.shape[1], -1)
            mean = flatten.mean(1).unsqueeze(1).unsqueeze(2).unsqueeze(3).permute(1, 0, 2, 3)
            std = flatten.std(1).unsqueeze(1).unsqueeze(2).unsqueeze(3).permute(1, 0, 2, 3)
            self.loc.data.copy_(-mean)
            self.logs.data.copy_(torch.log(1 / (std + 1e-6)))

    def forward(self, input):
        _, _, height, width = input.shape
        if self.initialized.item() == 0:
            self.initialize(input)
            self.initialized.fill_(1)
        logdet = height * width * torch.sum(self.logs)
        return (input + self.loc) * torch.exp(self.logs), logdet


class InvConv2dLU(nn.Module):
    def __init__(self, in_channel):
        super().__init__()
        weight = torch.randn(in_channel, in_channel)
        q, _ = torch.linalg.qr(weight)
        w_p, w_l, w_u = torch.linalg.lu(q)
        w_s = torch.diag(w_u)
        u_mask = torch.triu(torch.ones_like(w_u), 1)
        l_mask = u_mask.T
        self.register_buffer("w_p", w_p)
        self.register_buffer("u_mask", u_mask)
        self.register_buffer("l_mask", l_mask)
        self.register_buffer("s_sign", torch.sign(w_s))
        self.register_buffer("l_eye", torch.eye(l_mask.shape[0]))
        self.w_l = nn.Parameter(w_l)
        self.w_s = nn.Parameter(logabs(w_s))
        self.w_u = nn.Parameter(w_u)

    def forward(self, input):
        _, _, height, width = input.shape
        weight = self.calc_weight()
        out = F.conv2d(input, weight)
        logdet = height * width * torch.sum(self.w_s)
        return out, logdet

    def calc_weight(self):
        weight = self.w_p @ (self.w_l * self.l_mask + self.l_eye) @ ((self.w_u * self.u_mask) + torch.diag(self.s_sign * torch.exp(self.w_s)))
        return weight.unsqueeze(2).unsqueeze(3)


class ZeroConv2d(nn.Module):
    def __init__(self, in_channel, out_channel):
        super().__init__()
        self.conv = nn.Conv2d(in_channel, out_channel, 3, padding=0)
        self.scale = nn.Parameter(torch.zeros(1, out_channel, 1, 1))  # the conv keeps its random (trained-like) init

    def forward(self, input):
        out = F.pad(input, [1, 1, 1, 1], value=1)
        out = self.conv(out)
        return out * torch.exp(self.scale * 3)


class AffineCoupling(nn.Module):
    def __init__(self, in_channel, filter_size=32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channel // 2, filter_size, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(filter_size, filter_size, 1), nn.ReLU(inplace=True), ZeroConv2d(filter_size, in_channel))

    def forward(self, input):
        in_a, in_b = input.chunk(2, 1)
        log_s, t = self.net(in_a).chunk(2, 1)
        s = torch.sigmoid(log_s + 2)
        out_b = (in_b + t) * s
        logdet = torch.sum(torch.log(s).view(input.shape[0], -1), 1)
        return torch.cat([in_a, out_b], 1), logdet


def gaussian_log_p(x, mean, log_sd):
    return -0.5 * math.log(2 * math.pi) - log_sd - 0.5 * (x - mean) ** 2 / torch.exp(2 * log_sd)


class GlowBlock(nn.Module):
    """Squeeze by view/permute, two flows (ActNorm, InvConv2dLU, AffineCoupling), split with a learned prior;
    returns ``(out, logdet, log_p)``. ActNorm's data-dependent init ran on a first batch, as training does."""

    def __init__(self, in_channel=3, n_flow=2):
        super().__init__()
        squeeze_dim = in_channel * 4
        self.flows = nn.ModuleList()
        for _ in range(n_flow):
            self.flows.append(nn.ModuleList([ActNorm(squeeze_dim), InvConv2dLU(squeeze_dim), AffineCoupling(squeeze_dim)]))
        self.prior = ZeroConv2d(in_channel * 2, in_channel * 4)

    def forward(self, input):
        b_size, n_channel, height, width = input.shape
        squeezed = input.view(b_size, n_channel, height // 2, 2, width // 2, 2)
        squeezed = squeezed.permute(0, 1, 3, 5, 2, 4)
        out = squeezed.contiguous().view(b_size, n_channel * 4, height // 2, width // 2)
        logdet = 0
        for actnorm, invconv, coupling in self.flows:
            out, det1 = actnorm(out)
            out, det2 = invconv(out)
            out, det3 = coupling(out)
            logdet = logdet + det1 + det2 + det3
        out, z_new = out.chunk(2, 1)
        mean, log_sd = self.prior(out).chunk(2, 1)
        log_p = gaussian_log_p(z_new, mean, log_sd)
        log_p = log_p.view(b_size, -1).sum(1)
        return out, logdet, log_p


def _glow():
    m = GlowBlock()
    with torch.no_grad():  # the first training batch initialises every ActNorm
        m(torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(3)) - 0.5)
    return m


# --- PixelCNN (masked convolutions) ------------------------------------------------------------------------------
class MaskedConv2d(nn.Conv2d):
    def __init__(self, mask_type, *args, **kwargs):
        super().__init__(*args, **kwargs)
        assert mask_type in {"A", "B"}
        self.register_buffer("mask", self.weight.data.clone())
        _, _, kH, kW = self.weight.size()
        self.mask.fill_(1)
        self.mask[:, :, kH // 2, kW // 2 + (mask_type == "B"):] = 0
        self.mask[:, :, kH // 2 + 1:] = 0

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PixelCNN(nn.Module):
    def __init__(self, fm=32, levels=16):
        super().__init__()
        layers = [MaskedConv2d("A", 1, fm, 7, 1, 3, bias=False), nn.BatchNorm2d(fm), nn.ReLU(True)]
        for _ in range(3):
            layers += [MaskedConv2d("B", fm, fm, 3, 1, 1, bias=False), nn.BatchNorm2d(fm), nn.ReLU(True)]
        layers.append(nn.Conv2d(fm, levels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return F.log_softmax(self.net(x), dim=1)


# --- VQ-GAN quantizer (CompVis/taming-transformers quantize.py VectorQuantizer) ------------------------------------
class VectorQuantizer(nn.Module):
    def __init__(self, n_e, e_dim, beta):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.embedding = nn.Embedding(self.n_e, self.e_dim)  # N(0, 1): a trained codebook at the encoder's scale

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        z_flattened = z.view(-1, self.e_dim)
        d = torch.sum(z_flattened ** 2, dim=1, keepdim=True) + torch.sum(self.embedding.weight ** 2, dim=1) - 2 * torch.matmul(
            z_flattened, self.embedding.weight.t())
        min_encoding_indices = torch.argmin(d, dim=1).unsqueeze(1)
        min_encodings = torch.zeros(min_encoding_indices.shape[0], self.n_e).to(z)
        min_encodings.scatter_(1, min_encoding_indices, 1)
        z_q = torch.matmul(min_encodings, self.embedding.weight).view(z.shape)
        loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        e_mean = torch.mean(min_encodings, dim=0)
        perplexity = torch.exp(-torch.sum(e_mean * torch.log(e_mean + 1e-10)))
        z_q = z_q.permute(0, 3, 1, 2).contiguous()
        return z_q, loss, (perplexity, min_encodings, min_encoding_indices)


class VQModel(nn.Module):
    def __init__(self, ch=32, embed_dim=8, n_embed=32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, ch, 4, 2, 1), nn.SiLU(), nn.Conv2d(ch, ch, 3, 1, 1), nn.SiLU())
        self.quant_conv = nn.Conv2d(ch, embed_dim, 1)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.post_quant_conv = nn.Conv2d(embed_dim, ch, 1)
        self.decoder = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), nn.SiLU(), nn.ConvTranspose2d(ch, 3, 4, 2, 1))

    def forward(self, input):
        quant, emb_loss, (perplexity, _, _) = self.quantize(self.quant_conv(self.encoder(input)))
        dec = self.decoder(self.post_quant_conv(quant))
        return dec, emb_loss, perplexity


# --- RoBERTa position ids (transformers modeling_roberta.py) ------------------------------------------------------
def create_position_ids_from_input_ids(input_ids, padding_idx, past_key_values_length=0):
    mask = input_ids.ne(padding_idx).int()
    incremental_indices = (torch.cumsum(mask, dim=1).type_as(mask) + past_key_values_length) * mask
    return incremental_indices.long() + padding_idx


class RobertaLike(nn.Module):
    """RobertaEmbeddings (positions from the non-padding mask's cumsum, offset by padding_idx; token types from a
    zero buffer sliced and expanded), one encoder layer with a key-padding mask, RobertaClassificationHead on <s>."""

    def __init__(self, vocab=64, hidden=32, max_positions=34, padding_idx=1, labels=3):
        super().__init__()
        self.padding_idx = padding_idx
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=padding_idx)
        self.position_embeddings = nn.Embedding(max_positions, hidden, padding_idx=padding_idx)
        self.token_type_embeddings = nn.Embedding(1, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-5)
        self.register_buffer("token_type_ids", torch.zeros((1, max_positions), dtype=torch.long), persistent=False)
        self.layer = nn.TransformerEncoderLayer(hidden, 4, hidden * 2, dropout=0.1, batch_first=True, activation="gelu")
        self.dense, self.out_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, labels)

    def forward(self, input_ids):
        position_ids = create_position_ids_from_input_ids(input_ids, self.padding_idx)
        seq_length = input_ids.shape[1]
        token_type_ids = self.token_type_ids[:, :seq_length].expand(input_ids.shape[0], seq_length)
        emb = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        h = self.layer(self.LayerNorm(emb), src_key_padding_mask=input_ids.eq(self.padding_idx))
        return self.out_proj(torch.tanh(self.dense(h[:, 0, :])))


def _roberta_ids(n: int, g: torch.Generator, length: int = 12) -> tuple:
    ids = torch.randint(3, 64, (n, length), generator=g)
    ids[:, 0] = 0  # <s>
    keep = torch.arange(length)[None] < torch.randint(4, length + 1, (n, 1), generator=g)
    return (ids.masked_fill(~keep, 1),)


# --- top-k / top-p filtering (the transformers < 4.26 helper, in-place boolean indexing) ---------------------------
def top_k_top_p_filtering(logits, top_k=0, top_p=1.0, filter_value=-float("Inf"), min_tokens_to_keep=1):
    if top_k > 0:
        top_k = min(max(top_k, min_tokens_to_keep), logits.size(-1))
        indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
        logits[indices_to_remove] = filter_value
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        sorted_indices_to_remove = cumulative_probs > top_p
        if min_tokens_to_keep > 1:
            sorted_indices_to_remove[..., :min_tokens_to_keep] = 0
        sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
        sorted_indices_to_remove[..., 0] = 0
        indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
        logits[indices_to_remove] = filter_value
    return logits


class NucleusNextToken(nn.Module):
    """A tiny causal LM whose forward returns the next-token distribution after temperature, top-k and top-p."""

    def __init__(self, vocab=64, d=32, temperature=0.8, top_k=20, top_p=0.9):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.randn(1, 16, d) * 0.1)
        self.layer = nn.TransformerEncoderLayer(d, 4, d * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.lm_head = nn.Linear(d, vocab)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def forward(self, input_ids):
        T = input_ids.shape[1]
        h = self.embed(input_ids) + self.pos[:, :T]
        h = self.layer(h, src_mask=nn.Transformer.generate_square_subsequent_mask(T), is_causal=True)
        next_token_logits = self.lm_head(h)[:, -1, :] / self.temperature
        filtered = top_k_top_p_filtering(next_token_logits, top_k=self.top_k, top_p=self.top_p)
        return F.softmax(filtered, dim=-1)


# --- robust pooling statistics -----------------------------------------------------------------------------------
class RobustStatPool(nn.Module):
    """Frame features pooled over time by a smooth max (``logsumexp(h / tau) * tau``), ``torch.quantile`` at a
    buffer of levels, ``median(dim=-1).values`` and the mean, concatenated into a classifier."""

    def __init__(self, cin=8, c=16, classes=5, tau=0.5):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(cin, c, 5, padding=2), nn.ReLU(), nn.Conv1d(c, c, 3, padding=1))
        self.register_buffer("q", torch.tensor([0.1, 0.5, 0.9]))
        self.tau = tau
        self.head = nn.Linear(c * 6, classes)

    def forward(self, x):
        h = self.conv(x)
        smooth_max = torch.logsumexp(h / self.tau, dim=-1) * self.tau
        qs = torch.quantile(h, self.q, dim=-1).permute(1, 0, 2).flatten(1)
        med = h.median(dim=-1).values
        return self.head(torch.cat([smooth_max, qs, med, h.mean(-1)], dim=1))


class BucketizedFeatures(nn.Module):
    """Feature-column style binning: ``torch.bucketize`` against a shared boundaries buffer for some numeric columns,
    ``torch.searchsorted`` against per-column edges for the others, ids offset per column into one embedding table,
    beside the clamped raw values."""

    def __init__(self, n_shared=4, n_own=3, bins=8, d=8):
        super().__init__()
        self.n_shared = n_shared
        self.register_buffer("boundaries", torch.linspace(-1.5, 1.5, bins - 1))
        self.register_buffer("edges", torch.sort(torch.randn(n_own, bins - 1), dim=1).values)
        self.register_buffer("offsets", torch.arange(n_shared + n_own) * bins)
        self.emb = nn.Embedding((n_shared + n_own) * bins, d)
        self.mlp = nn.Sequential(nn.Linear((n_shared + n_own) * (d + 1), 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x):
        shared = torch.bucketize(x[:, : self.n_shared], self.boundaries)
        own = torch.searchsorted(self.edges, x[:, self.n_shared:].t().contiguous(), right=True).t()
        ids = torch.cat([shared, own], dim=1) + self.offsets
        feats = torch.cat([self.emb(ids).flatten(1), x.clamp(-3, 3)], dim=1)
        return self.mlp(feats)


# --- SigLIP logits and loss (transformers modeling_siglip.py) -------------------------------------------------------
class SigLIPLike(nn.Module):
    """Patch-conv image tower with a multihead-attention-pooling (MAP) head, a text tower pooled on the last token,
    L2-normalised embeddings, ``text @ image.t() * logit_scale.exp() + logit_bias`` and the pairwise sigmoid loss
    built from ``eye(batch)``; returns ``(logits_per_image, loss)``."""

    def __init__(self, d=32, vocab=64):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.vision_pos = nn.Parameter(torch.randn(1, 16, d) * 0.02)
        self.vision_layer = nn.TransformerEncoderLayer(d, 4, d * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.probe = nn.Parameter(torch.randn(1, 1, d))
        self.map_attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.map_ln = nn.LayerNorm(d)
        self.token_embedding, self.text_pos = nn.Embedding(vocab, d), nn.Parameter(torch.randn(1, 12, d) * 0.02)
        self.text_layer = nn.TransformerEncoderLayer(d, 4, d * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.text_head = nn.Linear(d, d)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, pixel_values, input_ids):
        v = self.vision_layer(self.patch(pixel_values).flatten(2).transpose(1, 2) + self.vision_pos)
        probe = self.probe.repeat(v.shape[0], 1, 1)
        image_embeds = self.map_attn(probe, v, v)[0]
        image_embeds = (image_embeds + self.map_ln(image_embeds))[:, 0]
        t = self.text_layer(self.token_embedding(input_ids) + self.text_pos[:, : input_ids.shape[1]])
        text_embeds = self.text_head(t[:, -1, :])
        image_embeds = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(p=2, dim=-1, keepdim=True)
        logits_per_text = torch.matmul(text_embeds, image_embeds.t().to(text_embeds.device)) * self.logit_scale.exp() + self.logit_bias
        logits_per_image = logits_per_text.t()
        eye = torch.eye(logits_per_text.size(0), device=logits_per_text.device)
        m1_diag1 = -torch.ones_like(logits_per_text) + 2 * eye
        loglik = torch.nn.functional.logsigmoid(m1_diag1 * logits_per_text)
        nll = -torch.sum(loglik, dim=-1)
        return logits_per_image, nll.mean()


def _image_text(n: int, g: torch.Generator) -> tuple:
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 64, (n, 12), generator=g)


# --- LLM.int8()-style outlier features -----------------------------------------------------------------------------
class OutlierMLPBlocks(nn.Module):
    """Two pre-norm-free transformer MLP blocks on a residual stream where two hidden channels carry ~60x the others
    (emergent outlier features, imitated by a fixed buffer multiply after the input projection)."""

    def __init__(self, din=16, d=64, outliers=(5, 37), factor=60.0):
        super().__init__()
        self.proj_in = nn.Linear(din, d)
        scale = torch.ones(d)
        scale[list(outliers)] = factor
        self.register_buffer("channel_scale", scale)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) for _ in range(2)])
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        h = self.proj_in(x) * self.channel_scale
        for mlp in self.blocks:
            h = h + mlp(h)
        return self.head(self.ln_f(h))


# --- training-guarded sampling -----------------------------------------------------------------------------------
class CVAE(nn.Module):
    """Conditional VAE (pytorch/examples VAE with a one-hot label): reparameterisation only in training, the
    per-sample KL returned beside the reconstruction."""

    def __init__(self, x_dim=64, classes=10, h=64, z=8):
        super().__init__()
        self.classes = classes
        self.fc1, self.fc21, self.fc22 = nn.Linear(x_dim + classes, h), nn.Linear(h, z), nn.Linear(h, z)
        self.fc3, self.fc4 = nn.Linear(z + classes, h), nn.Linear(h, x_dim)

    def encode(self, x, c):
        h1 = F.relu(self.fc1(torch.cat([x, c], 1)))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        if self.training:
            std = torch.exp(0.5 * logvar)
            eps = torch.randn_like(std)
            return mu + eps * std
        return mu

    def decode(self, z, c):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(torch.cat([z, c], 1)))))

    def forward(self, x, y):
        c = F.one_hot(y, self.classes).float()
        mu, logvar = self.encode(x.view(-1, 64), c)
        z = self.reparameterize(mu, logvar)
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        return self.decode(z, c).view(-1, 1, 8, 8), kld


class DiscreteVAE(nn.Module):
    """DALL-E-style dVAE: hard Gumbel-softmax over code logits in training; in eval the same hard one-hot from
    ``argmax`` + ``scatter_``; codes to vectors by ``einsum('b n h w, n d -> b d h w')``; KL to the uniform prior."""

    def __init__(self, num_tokens=32, codebook_dim=16, hidden=32, temperature=0.9):
        super().__init__()
        self.num_tokens, self.temperature = num_tokens, temperature
        self.encoder = nn.Sequential(nn.Conv2d(3, hidden, 4, 2, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, 1, 1), nn.ReLU(),
                                     nn.Conv2d(hidden, num_tokens, 1))
        self.codebook = nn.Embedding(num_tokens, codebook_dim)
        self.decoder = nn.Sequential(nn.Conv2d(codebook_dim, hidden, 3, 1, 1), nn.ReLU(), nn.ConvTranspose2d(hidden, 3, 4, 2, 1))

    def forward(self, img):
        logits = self.encoder(img)
        if self.training:
            one_hot = F.gumbel_softmax(logits, tau=self.temperature, dim=1, hard=True)
        else:
            index = logits.argmax(dim=1, keepdim=True)
            one_hot = torch.zeros_like(logits).scatter_(1, index, 1.0)
        sampled = torch.einsum("b n h w, n d -> b d h w", one_hot, self.codebook.weight)
        out = self.decoder(sampled)
        logits = logits.permute(0, 2, 3, 1).flatten(0, 2)
        log_qy = F.log_softmax(logits, dim=-1)
        log_uniform = torch.log(torch.tensor([1.0 / self.num_tokens], device=img.device))
        kl_div = F.kl_div(log_uniform, log_qy, None, None, "batchmean", log_target=True)
        return out, kl_div


# --- mu-law companding around a WaveNet ----------------------------------------------------------------------------
class MuLawWaveNet(nn.Module):
    """``sign(x) * log1p(mu * |x|) / log1p(mu)`` on the waveform, dilated causal gated convs with residual and
    skip paths, a tanh output expanded back by ``sign(y) * ((1 + mu) ** |y| - 1) / mu``."""

    def __init__(self, c=16, dilations=(1, 2, 4, 8), mu=255):
        super().__init__()
        self.mu = mu
        self.start = nn.Conv1d(1, c, 1)
        self.dilations = dilations
        self.filters = nn.ModuleList([nn.Conv1d(c, 2 * c, 2, dilation=d) for d in dilations])
        self.res = nn.ModuleList([nn.Conv1d(c, c, 1) for _ in dilations])
        self.skip = nn.ModuleList([nn.Conv1d(c, c, 1) for _ in dilations])
        self.end = nn.Sequential(nn.ReLU(), nn.Conv1d(c, c, 1), nn.ReLU(), nn.Conv1d(c, 1, 1))

    def forward(self, audio):
        x = torch.sign(audio) * torch.log1p(self.mu * torch.abs(audio)) / math.log1p(self.mu)
        h = self.start(x)
        skips = 0
        for d, conv, res, skip in zip(self.dilations, self.filters, self.res, self.skip):
            f, g = conv(F.pad(h, (d, 0))).chunk(2, dim=1)
            z = torch.tanh(f) * torch.sigmoid(g)
            skips = skips + skip(z)
            h = h + res(z)
        y = torch.tanh(self.end(skips))
        return torch.sign(y) * ((1 + self.mu) ** torch.abs(y) - 1) / self.mu


# --- flow matching: a midpoint ODE step with a per-sample float time ------------------------------------------------
class VelocityNet(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Linear(1, c), nn.SiLU(), nn.Linear(c, c))
        self.conv_in = nn.Conv2d(3 + 1, c, 3, padding=1)  # t also enters as a constant channel
        self.body = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU())
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x, t):
        t_map = t[:, None, None, None].expand(-1, 1, x.shape[2], x.shape[3])
        h = self.conv_in(torch.cat([x, t_map], dim=1)) + self.time_mlp(t[:, None])[:, :, None, None]
        return self.conv_out(self.body(h))


class FlowMatchingStep(nn.Module):
    """One midpoint step of the probability-flow ODE from ``t`` towards 1 (h = (1 - t) / 2 per sample):
    ``x_mid = x + h/2 * v(x, t)``, ``x_next = x + h * v(x_mid, t + h/2)``, all broadcast by ``[:, None, None, None]``."""

    def __init__(self):
        super().__init__()
        self.v = VelocityNet()

    def forward(self, x, t):
        h = (1 - t) / 2
        x_mid = x + (h / 2)[:, None, None, None] * self.v(x, t)
        return x + h[:, None, None, None] * self.v(x_mid, t + h / 2)


def _x_and_t(n: int, g: torch.Generator) -> tuple:
    return torch.randn(n, 3, 16, 16, generator=g), torch.rand(n, generator=g)


# --- DDIM step (lucidrains/denoising-diffusion-pytorch) --------------------------------------------------------------
def extract(a, t, x_shape):
    b, *_ = t.shape
    out = a.gather(-1, t)
    return out.reshape(b, *((1,) * (len(x_shape) - 1)))


def cosine_beta_schedule(timesteps, s=0.008):
    steps = timesteps + 1
    t = torch.linspace(0, timesteps, steps, dtype=torch.float64) / timesteps
    alphas_cumprod = torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0, 0.999)


class EpsUNet(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.c = c
        self.time_mlp = nn.Sequential(nn.Linear(c, c * 2), nn.GELU(), nn.Linear(c * 2, c))
        self.conv_in = nn.Conv2d(3, c, 3, padding=1)
        self.block1, self.block2 = ResnetBlock(in_channels=c), ResnetBlock(in_channels=c)
        self.down, self.up = Downsample(c), Upsample(c)
        self.conv_out = nn.Conv2d(2 * c, 3, 3, padding=1)

    def forward(self, x, time):
        emb = self.time_mlp(timestep_embedding(time, self.c))
        h = self.conv_in(x) + emb[:, :, None, None]
        h1 = self.block1(h)
        h2 = self.up(self.block2(self.down(h1)))
        return self.conv_out(torch.cat([h1, h2], dim=1))


class DDIMStep(nn.Module):
    """``predict_start_from_noise`` with schedule buffers ``extract``-ed by ``gather`` at an integer timestep, the x0
    clamp, and the eta=0 DDIM update to ``t - stride`` (clamped at 0); returns ``(x_prev, x_start)``."""

    def __init__(self, timesteps=1000, sampling_timesteps=50):
        super().__init__()
        self.model, self.stride = EpsUNet(), timesteps // sampling_timesteps
        betas = cosine_beta_schedule(timesteps)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

        def register_buffer(name, val):
            return self.register_buffer(name, val.to(torch.float32))

        register_buffer("alphas_cumprod", alphas_cumprod)
        register_buffer("sqrt_recip_alphas_cumprod", torch.sqrt(1.0 / alphas_cumprod))
        register_buffer("sqrt_recipm1_alphas_cumprod", torch.sqrt(1.0 / alphas_cumprod - 1))

    def forward(self, x, t):
        pred_noise = self.model(x, t)
        x_start = extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x - extract(self.sqrt_recipm1_alphas_cumprod, t, x.shape) * pred_noise
        x_start = torch.clamp(x_start, min=-1.0, max=1.0)
        t_prev = (t - self.stride).clamp(min=0)
        alpha_next = extract(self.alphas_cumprod, t_prev, x.shape)
        c = (1 - alpha_next).sqrt()
        return x_start * alpha_next.sqrt() + c * pred_noise, x_start


def _x_and_step(n: int, g: torch.Generator) -> tuple:
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 1000, (n,), generator=g)


# --- mixture density network ---------------------------------------------------------------------------------------
class MDN(nn.Module):
    """Mixture density network: log-softmax mixture weights, means, clamped log-sigmas; the target's negative
    log-likelihood by ``logsumexp`` over components, returned with the mixture parameters."""

    def __init__(self, din=8, dout=2, k=5, h=32):
        super().__init__()
        self.k, self.dout = k, dout
        self.body = nn.Sequential(nn.Linear(din, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())
        self.pi, self.mu, self.sigma = nn.Linear(h, k), nn.Linear(h, k * dout), nn.Linear(h, k * dout)

    def forward(self, x, y):
        h = self.body(x)
        log_pi = F.log_softmax(self.pi(h), dim=-1)
        mu = self.mu(h).view(-1, self.k, self.dout)
        log_sigma = self.sigma(h).view(-1, self.k, self.dout).clamp(-7.0, 7.0)
        z = (y.unsqueeze(1) - mu) * torch.exp(-log_sigma)
        log_prob = -0.5 * z.pow(2).sum(-1) - log_sigma.sum(-1) - 0.5 * self.dout * math.log(2 * math.pi)
        nll = -torch.logsumexp(log_pi + log_prob, dim=-1)
        return nll, log_pi.exp(), mu, log_sigma.exp()


# --- piecewise-linear coupling flow (bayesiains/nflows transforms/splines/linear.py) -------------------------------------
def piecewise_linear_transform(inputs, unnormalized_pdf):
    num_bins = unnormalized_pdf.size(-1)
    pdf = F.softmax(unnormalized_pdf, dim=-1)
    bin_pos = inputs * num_bins
    bin_idx = torch.floor(bin_pos).long()
    bin_idx[bin_idx >= num_bins] = num_bins - 1
    alpha = bin_pos - bin_idx.float()
    bin_pdf = pdf.gather(-1, bin_idx[..., None])[..., 0]
    cdf = torch.cumsum(pdf, dim=-1)
    cdf[..., -1] = 1.0
    cdf = F.pad(cdf, pad=(1, 0), mode="constant", value=0.0)
    outputs = cdf.gather(-1, bin_idx[..., None])[..., 0]
    outputs += alpha * bin_pdf
    logabsdet = torch.log(bin_pdf) + math.log(num_bins)
    return outputs, logabsdet


class PiecewiseLinearCoupling(nn.Module):
    """Two couplings on inputs in [0, 1): the identity half conditions per-dimension bin densities of the other half;
    returns ``(z, sum of log|det|)``."""

    def __init__(self, dim=8, bins=10, h=32):
        super().__init__()
        self.half, self.bins = dim // 2, bins
        self.nets = nn.ModuleList([nn.Sequential(nn.Linear(self.half, h), nn.ReLU(), nn.Linear(h, self.half * bins)) for _ in range(2)])

    def forward(self, x):
        logdet = x.new_zeros(x.shape[0])
        for i, net in enumerate(self.nets):
            a, b = (x[:, : self.half], x[:, self.half:]) if i % 2 == 0 else (x[:, self.half:], x[:, : self.half])
            pdf = net(a).view(-1, self.half, self.bins)
            b, lad = piecewise_linear_transform(b, pdf)
            logdet = logdet + lad.sum(-1)
            x = torch.cat([a, b], dim=1) if i % 2 == 0 else torch.cat([b, a], dim=1)
        return x, logdet


CASES = {
    "dit_adaln": ("DiT: adaLN-Zero chunk(6) of t_emb + y_emb, sinusoidal features of a float t in forward, fused qkv SDPA, "
                  "einsum unpatchify, learn_sigma", lambda: (DiT(), _latents_t_y)),
    "cfg_denoiser": ("classifier-free guidance: cat([x] * 2), cat([y, full_like(y, null)]), one DiT call, chunk(2), "
                     "uncond + (cond - uncond) * scale", lambda: (CFGDenoiser(), _latents_t_y)),
    "edm_precond": ("EDM preconditioning: c_skip / c_out / c_in by sqrt, c_noise = log(sigma) / 4 of a per-sample sigma, "
                    "x.ger Fourier features, GroupNorm U-Net with addcmul", lambda: (EDMPrecond(), _noisy_sigma)),
    "ldm_encoder_attn": ("latent-diffusion encoder: GroupNorm(8), single-head attention by reshape/permute/bmm over H*W, "
                         "asymmetric F.pad downsample, (mean, exp(0.5 * clamp(logvar)))", lambda: (LDMEncoder(), _images)),
    "sd_vae_decode": ("Stable Diffusion decode: latents / 0.18215, mid attention, nearest-upsample conv, "
                      "(x / 2 + 0.5).clamp(0, 1), NHWC, (x * 255).round().to(uint8)", lambda: (
                          SDVAEDecode(), lambda n, g: (torch.randn(n, 4, 8, 8, generator=g) * 0.8,))),
    "stylegan2_modconv": ("StyleGAN2: PixelNorm + EqualLinear(lr_mul) mapping, truncation, modulated/demodulated "
                          "per-sample weights via conv2d(groups=batch), noise buffers, skip ToRGB", lambda: (
                              StyleGAN2Generator(), lambda n, g: (torch.randn(n, 32, generator=g),))),
    "realesrgan_x2": ("Real-ESRGAN x2 RRDBNet: view/permute pixel_unshuffle, dense blocks (cat, * 0.2 residuals), "
                      "nearest upsample + conv twice", lambda: (RRDBNet(), _images)),
    "glow_lu": ("Glow: squeeze, ActNorm (log-scales, initialized.item() flag), LU 1x1 conv weight built in forward, "
                "affine coupling, Gaussian prior; (out, logdet, log_p)", lambda: (
                    _glow(), lambda n, g: (torch.rand(n, 3, 16, 16, generator=g) - 0.5,))),
    "pixelcnn_masked": ("PixelCNN: F.conv2d(x, weight * mask buffer) mask A / B, BatchNorm, log_softmax over 16 levels",
                        lambda: (_trained_norms(PixelCNN()), lambda n, g: (
                            torch.randint(0, 16, (n, 1, 16, 16), generator=g).float() / 15,))),
    "vqgan_perplexity": ("VQ-GAN quantizer: expanded distances, argmin, scatter_ one-hot @ codebook, commitment loss, "
                         "z + (zq - z).detach(), perplexity; (dec, loss, perplexity)", lambda: (VQModel(), _images)),
    "roberta_positions": ("RoBERTa: position ids = cumsum(ne(pad)) * mask + padding_idx, token types from a sliced buffer, "
                          "key-padding mask, <s> head", lambda: (RobertaLike(), _roberta_ids)),
    "nucleus_sampling": ("next-token probs: logits / T, top-k and top-p filtering (sort, cumsum of softmax, shifted "
                         "mask scattered back, logits[mask] = -inf), softmax", lambda: (
                             NucleusNextToken(), lambda n, g: (torch.randint(0, 64, (n, 10), generator=g),))),
    "robust_stat_pool": ("temporal pooling: logsumexp(h / tau) * tau, torch.quantile at a buffer of levels, "
                         "median(dim).values, mean", lambda: (RobustStatPool(), lambda n, g: (torch.randn(n, 8, 24, generator=g),))),
    "bucketize_features": ("feature bins: torch.bucketize against a boundaries buffer, searchsorted(right=True) on "
                           "per-column edges, offset ids into one Embedding", lambda: (
                               BucketizedFeatures(), lambda n, g: (torch.randn(n, 7, generator=g),))),
    "siglip_sigmoid": ("SigLIP: MAP attention-pool head, normalised embeddings, logits * logit_scale.exp() + logit_bias, "
                       "sigmoid loss from eye(batch); (logits_per_image, loss)", lambda: (SigLIPLike(), _image_text)),
    "llm_int8_outliers": ("LLM.int8-style outliers: two residual channels scaled 60x by a buffer, GELU MLP blocks, "
                          "LayerNorm head", lambda: (OutlierMLPBlocks(), lambda n, g: (torch.randn(n, 8, 16, generator=g),))),
    "cvae_reparam": ("conditional VAE: F.one_hot(y) conditioning, randn_like reparameterisation only if self.training, "
                     "per-sample KL output", lambda: (CVAE(), lambda n, g: (
                         torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)))),
    "dvae_gumbel_hard": ("DALL-E dVAE: gumbel_softmax(hard=True) if training else argmax + scatter_ one-hot, "
                         "einsum with the codebook, KL to uniform (kl_div log_target)", lambda: (DiscreteVAE(), _images)),
    "mulaw_wavenet": ("mu-law: sign * log1p(mu |x|) / log1p(mu), gated dilated causal Conv1d, tanh, "
                      "expansion sign * ((1 + mu) ** |y| - 1) / mu", lambda: (
                          MuLawWaveNet(), lambda n, g: (torch.tanh(torch.randn(n, 1, 48, generator=g) * 0.3),))),
    "flow_matching_midpoint": ("flow matching: midpoint step with h = (1 - t) / 2, t[:, None, None, None] broadcasts, "
                               "t as an expanded input channel and an MLP embedding", lambda: (FlowMatchingStep(), _x_and_t)),
    "ddim_step": ("DDIM step: schedule buffers extract-ed by gather at an int timestep, x0 clamp, (t - stride).clamp(min=0)",
                  lambda: (DDIMStep(), _x_and_step)),
    "mdn_logsumexp": ("mixture density network: log_softmax weights, clamped log-sigma, -logsumexp NLL of a target input",
                      lambda: (MDN(), lambda n, g: (torch.randn(n, 8, generator=g), torch.randn(n, 2, generator=g)))),
    "piecewise_linear_flow": ("nflows piecewise-linear coupling: floor().long() bins, bin_idx[...] = n - 1, gather of "
                              "pdf and padded cumsum cdf, cdf[..., -1] = 1", lambda: (
                                  PiecewiseLinearCoupling(), lambda n, g: (torch.rand(n, 8, generator=g),))),
}
