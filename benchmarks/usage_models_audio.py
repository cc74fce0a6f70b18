"""Fourteenth round of user-style models for ``usage_scan.py`` (2026-12-07, ninth session): speech and audio code, written
as its reference repositories write it. HiFi-GAN's generator (``parametrizations.weight_norm`` on ConvTranspose1d and
Conv1d, multi-receptive-field residual blocks with dilations, ``leaky_relu(0.1)``, ``xs / num_kernels``), an EnCodec-style
SEANet encoder/decoder (old-style ``weight_norm`` removed for inference, reflect ``pad1d`` with extra padding for a full
last frame, a skip LSTM) around a residual vector quantizer (``x^2 - 2xe + e^2`` distances, ``argmax``, ``F.embedding``,
straight-through ``x + (q - x).detach()``), a mel front end (pre-emphasis by ``cat``, ``torch.stft`` with a Hann window
buffer, mel filterbank buffer, ``log(clamp(min=1e-5))``), a Whisper decoder step with the KV cache as a tuple of inputs
(positional embedding and causal mask sliced by the cache offset, tied output projection), Conv-TasNet (gLN as
``GroupNorm(1, C)``, dilated depthwise TCN with PReLU and skips, sigmoid masks, ConvTranspose1d decoder), facebookresearch
denoiser's Demucs (``std`` normalisation, GLU, ``valid_length`` padding, LSTM, Demucs's ``center_trim`` skips), ECAPA-TDNN
(Res2Net ``torch.split`` with cumulative adds, SE, attentive statistics pooling over a relative-length mask), Tacotron 2's
location-sensitive attention (``get_mask_from_lengths`` with ``.item()``, ``alignment.data.masked_fill_``, cumulative
weights, LSTMCell decoder loop), a streaming causal conv with its cached left context as input and output, training-only
SpecAugment with ``arange`` masks before ESPnet's ``Conv2dSubsampling`` with lengths, CTC greedy decoding by shift-compare
behind an energy VAD gate, SincNet's ``SincConv_fast`` (filters computed from learned cut-offs every forward, plain
tensor attributes, ``self.filters`` assigned in ``forward``), FastSpeech 2's length regulator (``repeat_interleave`` by
predicted durations and ``pad_sequence``: a data-dependent length), NeMo's QuartzNet masked time-channel separable convs,
torchcrepe-style weighted-argmax pitch decoding, DCCRN's complex convolutions with ``atan2`` phase masks, a learned
filterbank over ``Tensor.unfold`` frames with ``torch.hann_window`` made in ``forward`` and ``F.fold`` overlap-add, and a
hand-written bidirectional GRU by ``torch.flip`` with 1-D ``F.interpolate`` upsampling.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from benchmarks.usage_models_research import _trained_norms


def _wave(n: int, g: torch.Generator, length: int = 512, channels: int | None = 1) -> tuple:
    x = 0.3 * torch.randn(n, length, generator=g) + 0.5 * torch.sin(torch.linspace(0, 60, length))[None]
    return (x if channels is None else x.unsqueeze(1).repeat(1, channels, 1),)


# --- HiFi-GAN (jik876/hifi-gan models.py: Generator, ResBlock1) --------------------------------------------------
LRELU_SLOPE = 0.1


def get_padding(kernel_size, dilation=1):
    return int((kernel_size * dilation - dilation) / 2)


def init_weights(m, mean=0.0, std=0.01):
    if m.__class__.__name__.find("Conv") != -1:
        m.weight.data.normal_(mean, std)


class ResBlock1(nn.Module):
    def __init__(self, channels, kernel_size=3, dilation=(1, 3, 5)):
        super().__init__()
        self.convs1 = nn.ModuleList([parametrizations.weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d,
                                                                           padding=get_padding(kernel_size, d))) for d in dilation])
        self.convs2 = nn.ModuleList([parametrizations.weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=1,
                                                                           padding=get_padding(kernel_size, 1))) for _ in dilation])

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = F.leaky_relu(x, LRELU_SLOPE)
            xt = c1(xt)
            xt = F.leaky_relu(xt, LRELU_SLOPE)
            xt = c2(xt)
            x = xt + x
        return x


class HiFiGANGenerator(nn.Module):
    def __init__(self, n_mels=16, ch=32, upsample_rates=(4, 4), upsample_kernel_sizes=(8, 8), resblock_kernel_sizes=(3, 5),
                 resblock_dilation_sizes=((1, 3, 5), (1, 3, 5))):
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.conv_pre = parametrizations.weight_norm(nn.Conv1d(n_mels, ch, 7, 1, padding=3))
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            self.ups.append(parametrizations.weight_norm(nn.ConvTranspose1d(ch // (2 ** i), ch // (2 ** (i + 1)), k, u,
                                                                            padding=(k - u) // 2)))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            c = ch // (2 ** (i + 1))
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(c, k, d))
        self.conv_post = parametrizations.weight_norm(nn.Conv1d(c, 1, 7, 1, padding=3))
        with torch.no_grad():
            self.apply(lambda m: init_weights(m, std=0.1))  # a trained vocoder's scale: 0.01 leaves the output ~0

    def forward(self, x):
        x = self.conv_pre(x)
        for i in range(self.num_upsamples):
            x = F.leaky_relu(x, LRELU_SLOPE)
            x = self.ups[i](x)
            xs = None
            for j in range(self.num_kernels):
                if xs is None:
                    xs = self.resblocks[i * self.num_kernels + j](x)
                else:
                    xs += self.resblocks[i * self.num_kernels + j](x)
            x = xs / self.num_kernels
        x = F.leaky_relu(x)
        x = self.conv_post(x)
        return torch.tanh(x)


def _mels(n: int, g: torch.Generator, frames: int = 12, n_mels: int = 16) -> tuple:
    return (torch.randn(n, n_mels, frames, generator=g) - 2.0,)


# --- EnCodec / SoundStream (facebookresearch/encodec modules/conv.py, lstm.py, quantization/core_vq.py) --------
def get_extra_padding_for_conv1d(x, kernel_size, stride, padding_total=0):
    length = x.shape[-1]
    n_frames = (length - kernel_size + padding_total) / stride + 1
    ideal_length = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding_total)
    return ideal_length - length


def pad1d(x, paddings, mode="zero", value=0.0):
    length = x.shape[-1]
    padding_left, padding_right = paddings
    if mode == "reflect":
        max_pad = max(padding_left, padding_right)
        extra_pad = 0
        if length <= max_pad:
            extra_pad = max_pad - length + 1
            x = F.pad(x, (0, extra_pad))
        padded = F.pad(x, paddings, mode, value)
        end = padded.shape[-1] - extra_pad
        return padded[..., :end]
    return F.pad(x, paddings, mode, value)


def unpad1d(x, paddings):
    padding_left, padding_right = paddings
    end = x.shape[-1] - padding_right
    return x[..., padding_left:end]


class SConv1d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1, causal=False, pad_mode="reflect"):
        super().__init__()
        self.conv = nn.utils.weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation))
        self.causal, self.pad_mode = causal, pad_mode

    def forward(self, x):
        kernel_size = self.conv.kernel_size[0]
        stride = self.conv.stride[0]
        dilation = self.conv.dilation[0]
        kernel_size = (kernel_size - 1) * dilation + 1  # effective kernel size with dilations
        padding_total = kernel_size - stride
        extra_padding = get_extra_padding_for_conv1d(x, kernel_size, stride, padding_total)
        if self.causal:
            x = pad1d(x, (padding_total, extra_padding), mode=self.pad_mode)
        else:
            padding_right = padding_total // 2
            padding_left = padding_total - padding_right
            x = pad1d(x, (padding_left, padding_right + extra_padding), mode=self.pad_mode)
        return self.conv(x)


class SConvTranspose1d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, trim_right_ratio=1.0):
        super().__init__()
        self.convtr = nn.utils.weight_norm(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride))
        self.trim_right_ratio = trim_right_ratio

    def forward(self, x):
        kernel_size = self.convtr.kernel_size[0]
        stride = self.convtr.stride[0]
        padding_total = kernel_size - stride
        y = self.convtr(x)
        padding_right = padding_total // 2
        padding_left = padding_total - padding_right
        return unpad1d(y, (padding_left, padding_right))


class SEANetResnetBlock(nn.Module):
    def __init__(self, dim, kernel_sizes=(3, 1), dilations=(1, 1), compress=2):
        super().__init__()
        hidden = dim // compress
        block = []
        for i, (kernel_size, dilation) in enumerate(zip(kernel_sizes, dilations)):
            in_chs = dim if i == 0 else hidden
            out_chs = dim if i == len(kernel_sizes) - 1 else hidden
            block += [nn.ELU(alpha=1.0), SConv1d(in_chs, out_chs, kernel_size=kernel_size, dilation=dilation)]
        self.block = nn.Sequential(*block)
        self.shortcut = nn.Identity()

    def forward(self, x):
        return self.shortcut(x) + self.block(x)


class SLSTM(nn.Module):
    def __init__(self, dimension, num_layers=1, skip=True):
        super().__init__()
        self.skip = skip
        self.lstm = nn.LSTM(dimension, dimension, num_layers)

    def forward(self, x):
        x = x.permute(2, 0, 1)
        y, _ = self.lstm(x)
        if self.skip:
            y = y + x
        return y.permute(1, 2, 0)


class EuclideanCodebook(nn.Module):
    def __init__(self, dim, codebook_size):
        super().__init__()
        self.register_buffer("embed", torch.randn(codebook_size, dim))

    def quantize(self, x):
        embed = self.embed.t()
        dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed + embed.pow(2).sum(0, keepdim=True))
        return dist.max(dim=-1).indices

    def encode(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # "... d -> (...) d"
        embed_ind = self.quantize(x)
        return embed_ind.view(*shape[:-1])

    def decode(self, embed_ind):
        return F.embedding(embed_ind, self.embed)


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, dim, n_q=4, bins=32):
        super().__init__()
        self.layers = nn.ModuleList([EuclideanCodebook(dim, bins) for _ in range(n_q)])

    def forward(self, x):
        x = x.transpose(1, 2)  # "b d n -> b n d"
        quantized_out = 0.0
        residual = x
        all_indices = []
        for layer in self.layers:
            indices = layer.encode(residual)
            quantized = layer.decode(indices)
            quantized = residual + (quantized - residual).detach()  # straight-through
            residual = residual - quantized
            quantized_out = quantized_out + quantized
            all_indices.append(indices)
        return quantized_out.transpose(1, 2), torch.stack(all_indices)


class TinyEnCodec(nn.Module):
    def __init__(self, n_filters=8, dimension=16, ratios=(4, 2)):
        super().__init__()
        enc = [SConv1d(1, n_filters, 7)]
        mult = 1
        for ratio in reversed(ratios):
            enc += [SEANetResnetBlock(mult * n_filters, dilations=(1, 1)), nn.ELU(),
                    SConv1d(mult * n_filters, mult * n_filters * 2, kernel_size=ratio * 2, stride=ratio)]
            mult *= 2
        enc += [SLSTM(mult * n_filters), nn.ELU(), SConv1d(mult * n_filters, dimension, 7)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = ResidualVectorQuantizer(dimension)
        dec = [SConv1d(dimension, mult * n_filters, 7), SLSTM(mult * n_filters)]
        for ratio in ratios:
            dec += [nn.ELU(), SConvTranspose1d(mult * n_filters, mult * n_filters // 2, kernel_size=ratio * 2, stride=ratio),
                    SEANetResnetBlock(mult * n_filters // 2)]
            mult //= 2
        dec += [nn.ELU(), SConv1d(n_filters, 1, 7)]
        self.decoder = nn.Sequential(*dec)

    def remove_weight_norm(self):  # the inference path: fold weight_g / weight_v back into .weight
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) and hasattr(m, "weight_g"):
                nn.utils.remove_weight_norm(m)
        return self

    def forward(self, x):
        length = x.shape[-1]
        emb = self.encoder(x)
        q, codes = self.quantizer(emb)
        out = self.decoder(q)
        return out[..., :length], codes


def _encodec():
    m = TinyEnCodec()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # codebooks at a trained scale: residual norms shrink with each stage
        for i, layer in enumerate(m.quantizer.layers):
            layer.embed.copy_(torch.randn(layer.embed.shape, generator=g) * (0.3 / (i + 1)))
    return m.remove_weight_norm()


# --- mel front end (pre-emphasis, torch.stft, mel filterbank, log-clamp) ----------------------------------------
def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10 ** (m / 2595.0) - 1.0)


def mel_filterbank(sample_rate, n_fft, n_mels, f_min=0.0, f_max=None):
    f_max = f_max or sample_rate / 2
    all_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    f_pts = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.from_numpy(np.maximum(0.0, np.minimum(down, up))).float()  # (n_freqs, n_mels)


class LogMelCNN(nn.Module):
    def __init__(self, sample_rate=8000, n_fft=128, hop_length=32, n_mels=20, num_classes=6, preemph=0.97):
        super().__init__()
        self.n_fft, self.hop_length, self.preemph = n_fft, hop_length, preemph
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, wav):
        wav = torch.cat((wav[:, :1], wav[:, 1:] - self.preemph * wav[:, :-1]), dim=1)
        spec = torch.stft(wav, self.n_fft, hop_length=self.hop_length, window=self.window, center=True, return_complex=True)
        power = spec.abs().pow(2.0)  # (B, F, T)
        mel = torch.matmul(power.transpose(1, 2), self.mel_fb).transpose(1, 2)
        logmel = torch.log(torch.clamp(mel, min=1e-5))
        logmel = (logmel - logmel.mean(dim=-1, keepdim=True)) / (logmel.std(dim=-1, keepdim=True) + 1e-5)  # per-utterance CMVN
        return self.classifier(self.features(logmel.unsqueeze(1)).flatten(1))


# --- Whisper decoder step with a KV cache as inputs (openai/whisper model.py, written without hooks) --------------
def sinusoids(length, channels, max_timescale=10000):
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, np.newaxis] * inv_timescales[np.newaxis, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state, n_head):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def qkv_attention(self, q, k, v, mask=None):
        n_batch, n_ctx, n_state = q.shape
        scale = (n_state // self.n_head) ** -0.25
        q = q.view(*q.shape[:2], self.n_head, -1).permute(0, 2, 1, 3) * scale
        k = k.view(*k.shape[:2], self.n_head, -1).permute(0, 2, 3, 1) * scale
        v = v.view(*v.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
        qk = q @ k
        if mask is not None:
            qk = qk + mask
        qk = qk.float()
        w = F.softmax(qk, dim=-1).to(q.dtype)
        return (w @ v).permute(0, 2, 1, 3).flatten(start_dim=2)

    def forward(self, x, xa=None, mask=None, past=None):
        q = self.query(x)
        k = self.key(x if xa is None else xa)
        v = self.value(x if xa is None else xa)
        if past is not None:  # self-attention cache: earlier positions' keys/values, concatenated along time
            k = torch.cat([past[0], k], dim=1)
            v = torch.cat([past[1], v], dim=1)
        return self.out(self.qkv_attention(q, k, v, mask)), (k, v)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state, n_head, cross_attention=False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        n_mlp = n_state * 4
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x, xa=None, mask=None, past=None):
        y, present = self.attn(self.attn_ln(x), mask=mask, past=past)
        x = x + y
        if self.cross_attn:
            x = x + self.cross_attn(self.cross_attn_ln(x), xa)[0]
        x = x + self.mlp(self.mlp_ln(x))
        return x, present


class WhisperTiny(nn.Module):
    def __init__(self, n_mels=16, n_audio_ctx=8, n_vocab=64, n_text_ctx=16, n_state=32, n_head=4, n_layer=2):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding_audio", sinusoids(n_audio_ctx, n_state))
        self.enc_blocks = nn.ModuleList([ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer)])
        self.ln_post = nn.LayerNorm(n_state)
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.empty(n_text_ctx, n_state).normal_(0, 0.02))
        self.blocks = nn.ModuleList([ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer)])
        self.ln = nn.LayerNorm(n_state)
        mask = torch.empty(n_text_ctx, n_text_ctx).fill_(-np.inf).triu_(1)
        self.register_buffer("mask", mask, persistent=False)

    def embed_audio(self, mel):
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x))
        x = x.permute(0, 2, 1)
        x = (x + self.positional_embedding_audio[: x.shape[1]]).to(x.dtype)
        for block in self.enc_blocks:
            x = block(x)[0]
        return self.ln_post(x)

    def forward(self, mel, tokens, past_key_values):
        xa = self.embed_audio(mel)
        offset = past_key_values[0][0].shape[1]
        n = tokens.shape[-1]
        x = self.token_embedding(tokens) + self.positional_embedding[offset: offset + n]
        x = x.to(xa.dtype)
        mask = self.mask[offset: offset + n, : offset + n]
        presents = []
        for block, past in zip(self.blocks, past_key_values):
            x, present = block(x, xa, mask=mask, past=past)
            presents.append(present)
        x = self.ln(x)
        logits = (x @ torch.transpose(self.token_embedding.weight.to(x.dtype), 0, 1)).float()
        return logits, tuple(presents)


def _whisper_inputs(n: int, g: torch.Generator, past: int = 3, new: int = 2) -> tuple:
    kv = tuple((torch.randn(n, past, 32, generator=g), torch.randn(n, past, 32, generator=g)) for _ in range(2))
    return torch.randn(n, 16, 16, generator=g), torch.randint(0, 64, (n, new), generator=g), kv


# --- Conv-TasNet (naplab/Conv-TasNet, asteroid masknn/convolutional.py) ------------------------------------------
class GlobLN(nn.GroupNorm):  # gLN: one group over (C, T)
    def __init__(self, channels):
        super().__init__(1, channels, eps=1e-8)


class Conv1DBlock(nn.Module):
    def __init__(self, in_chan, hid_chan, skip_out_chan, kernel_size, dilation):
        super().__init__()
        padding = (kernel_size - 1) * dilation // 2
        self.shared_block = nn.Sequential(nn.Conv1d(in_chan, hid_chan, 1), nn.PReLU(), GlobLN(hid_chan),
                                          nn.Conv1d(hid_chan, hid_chan, kernel_size, padding=padding, dilation=dilation, groups=hid_chan),
                                          nn.PReLU(), GlobLN(hid_chan))
        self.res_conv = nn.Conv1d(hid_chan, in_chan, 1)
        self.skip_conv = nn.Conv1d(hid_chan, skip_out_chan, 1)

    def forward(self, x):
        shared_out = self.shared_block(x)
        return self.res_conv(shared_out), self.skip_conv(shared_out)


class ConvTasNet(nn.Module):
    def __init__(self, n_src=2, n_filters=32, kernel_size=16, bn_chan=16, hid_chan=32, skip_chan=16, n_blocks=4, n_repeats=1):
        super().__init__()
        self.n_src, self.stride = n_src, kernel_size // 2
        self.encoder = nn.Conv1d(1, n_filters, kernel_size, stride=self.stride, bias=False)
        self.bottleneck = nn.Sequential(GlobLN(n_filters), nn.Conv1d(n_filters, bn_chan, 1))
        self.TCN = nn.ModuleList([Conv1DBlock(bn_chan, hid_chan, skip_chan, 3, 2 ** x) for _ in range(n_repeats) for x in range(n_blocks)])
        self.mask_net = nn.Sequential(nn.PReLU(), nn.Conv1d(skip_chan, n_src * n_filters, 1))
        self.decoder = nn.ConvTranspose1d(n_filters, 1, kernel_size, stride=self.stride, bias=False)

    def forward(self, wav):  # (B, T)
        mixture_w = F.relu(self.encoder(wav.unsqueeze(1)))
        batch, n_filters, n_frames = mixture_w.size()
        output = self.bottleneck(mixture_w)
        skip_connection = torch.tensor([0.0], device=output.device)
        for layer in self.TCN:
            residual, skip = layer(output)
            output = output + residual
            skip_connection = skip_connection + skip
        score = self.mask_net(skip_connection).view(batch, self.n_src, n_filters, n_frames)
        est_masks = torch.sigmoid(score)
        masked_tf_rep = est_masks * mixture_w.unsqueeze(1)
        out = self.decoder(masked_tf_rep.view(batch * self.n_src, n_filters, n_frames))
        out = out.view(batch, self.n_src, -1)
        return F.pad(out, (0, wav.shape[-1] - out.shape[-1]))  # pad_x_to_y


# --- Demucs (facebookresearch/denoiser demucs.py, with Demucs's center_trim for the skips) -----------------------
def center_trim(tensor, reference):
    if hasattr(reference, "size"):
        reference = reference.size(-1)
    delta = tensor.size(-1) - reference
    if delta < 0:
        raise ValueError("tensor must be larger than reference. " f"Delta is {delta}.")
    if delta:
        tensor = tensor[..., delta // 2:-(delta - delta // 2)]
    return tensor


class BLSTM(nn.Module):
    def __init__(self, dim, layers=1, bi=True):
        super().__init__()
        self.lstm = nn.LSTM(bidirectional=bi, num_layers=layers, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim) if bi else None

    def forward(self, x, hidden=None):
        x, hidden = self.lstm(x, hidden)
        if self.linear:
            x = self.linear(x)
        return x, hidden


class Demucs(nn.Module):
    def __init__(self, chin=1, chout=1, hidden=8, depth=3, kernel_size=8, stride=4, growth=2, floor=1e-3, normalize=True):
        super().__init__()
        self.depth, self.kernel_size, self.stride, self.floor, self.normalize = depth, kernel_size, stride, floor, normalize
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        for index in range(depth):
            self.encoder.append(nn.Sequential(nn.Conv1d(chin, hidden, kernel_size, stride), nn.ReLU(),
                                              nn.Conv1d(hidden, hidden * 2, 1), nn.GLU(1)))
            decode = [nn.Conv1d(hidden, 2 * hidden, 1), nn.GLU(1), nn.ConvTranspose1d(hidden, chout, kernel_size, stride)]
            if index > 0:
                decode.append(nn.ReLU())
            self.decoder.insert(0, nn.Sequential(*decode))
            chout = hidden
            chin = hidden
            hidden = int(growth * hidden)
        self.lstm = BLSTM(chin, bi=True)

    def valid_length(self, length):
        for _ in range(self.depth):
            length = math.ceil((length - self.kernel_size) / self.stride) + 1
            length = max(length, 1)
        for _ in range(self.depth):
            length = (length - 1) * self.stride + self.kernel_size
        return int(length)

    def forward(self, mix):
        if mix.dim() == 2:
            mix = mix.unsqueeze(1)
        if self.normalize:
            mono = mix.mean(dim=1, keepdim=True)
            std = mono.std(dim=-1, keepdim=True)
            mix = mix / (self.floor + std)
        else:
            std = 1
        length = mix.shape[-1]
        x = F.pad(mix, (0, self.valid_length(length) - length))
        skips = []
        for encode in self.encoder:
            x = encode(x)
            skips.append(x)
        x = x.permute(2, 0, 1)
        x, _ = self.lstm(x)
        x = x.permute(1, 2, 0)
        for decode in self.decoder:
            skip = skips.pop(-1)
            x = x + center_trim(skip, x)
            x = decode(x)
        x = x[..., :length]
        return std * x


# --- ECAPA-TDNN (speechbrain lobes/models/ECAPA_TDNN.py, written shorter) ----------------------------------------
class TDNNBlock(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, dilation):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2)
        self.activation = nn.ReLU()
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, x):
        return self.norm(self.activation(self.conv(x)))


class Res2NetBlock(nn.Module):
    def __init__(self, in_channels, out_channels, scale=4, kernel_size=3, dilation=1):
        super().__init__()
        in_channel = in_channels // scale
        hidden_channel = out_channels // scale
        self.blocks = nn.ModuleList([TDNNBlock(in_channel, hidden_channel, kernel_size, dilation) for _ in range(scale - 1)])
        self.scale = scale

    def forward(self, x):
        y = []
        for i, x_i in enumerate(torch.chunk(x, self.scale, dim=1)):
            if i == 0:
                y_i = x_i
            elif i == 1:
                y_i = self.blocks[i - 1](x_i)
            else:
                y_i = self.blocks[i - 1](x_i + y_i)
            y.append(y_i)
        return torch.cat(y, dim=1)


def length_to_mask(length, max_len=None, dtype=None, device=None):
    if max_len is None:
        max_len = length.max().long().item()
    mask = torch.arange(max_len, device=length.device, dtype=length.dtype).expand(len(length), max_len) < length.unsqueeze(1)
    if dtype is None:
        dtype = length.dtype
    return torch.as_tensor(mask, dtype=dtype, device=device)


class SEBlock(nn.Module):
    def __init__(self, in_channels, se_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, se_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv1d(se_channels, out_channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x, lengths=None):
        L = x.shape[-1]
        if lengths is not None:
            mask = length_to_mask(lengths * L, max_len=L, device=x.device).unsqueeze(1)
            total = mask.sum(dim=2, keepdim=True)
            s = (x * mask).sum(dim=2, keepdim=True) / total
        else:
            s = x.mean(dim=2, keepdim=True)
        s = self.sigmoid(self.conv2(self.relu(self.conv1(s))))
        return s * x


class SERes2NetBlock(nn.Module):
    def __init__(self, channels, res2net_scale=4, se_channels=8, kernel_size=3, dilation=1):
        super().__init__()
        self.tdnn1 = TDNNBlock(channels, channels, 1, 1)
        self.res2net_block = Res2NetBlock(channels, channels, res2net_scale, kernel_size, dilation)
        self.tdnn2 = TDNNBlock(channels, channels, 1, 1)
        self.se_block = SEBlock(channels, se_channels, channels)

    def forward(self, x, lengths=None):
        residual = x
        x = self.tdnn2(self.res2net_block(self.tdnn1(x)))
        return self.se_block(x, lengths) + residual


class AttentiveStatisticsPooling(nn.Module):
    def __init__(self, channels, attention_channels=16):
        super().__init__()
        self.eps = 1e-12
        self.tdnn = TDNNBlock(channels * 3, attention_channels, 1, 1)
        self.tanh = nn.Tanh()
        self.conv = nn.Conv1d(attention_channels, channels, 1)

    def forward(self, x, lengths=None):
        L = x.shape[-1]

        def _compute_statistics(x, m, dim=2, eps=self.eps):
            mean = (m * x).sum(dim)
            std = torch.sqrt((m * (x - mean.unsqueeze(dim)).pow(2)).sum(dim).clamp(eps))
            return mean, std

        if lengths is None:
            lengths = torch.ones(x.shape[0], device=x.device)
        mask = length_to_mask(lengths * L, max_len=L, device=x.device).unsqueeze(1)
        total = mask.sum(dim=2, keepdim=True).float()
        mean, std = _compute_statistics(x, mask / total)
        mean = mean.unsqueeze(2).repeat(1, 1, L)
        std = std.unsqueeze(2).repeat(1, 1, L)
        attn = torch.cat([x, mean, std], dim=1)
        attn = self.conv(self.tanh(self.tdnn(attn)))
        attn = attn.masked_fill(mask == 0, float("-inf"))
        attn = F.softmax(attn, dim=2)
        mean, std = _compute_statistics(x, attn)
        return torch.cat((mean, std), dim=1).unsqueeze(2)


class ECAPATDNN(nn.Module):
    def __init__(self, input_size=20, channels=32, lin_neurons=16):
        super().__init__()
        self.blocks = nn.ModuleList([TDNNBlock(input_size, channels, 5, 1)] +
                                    [SERes2NetBlock(channels, kernel_size=3, dilation=d) for d in (2, 3)])
        self.mfa = TDNNBlock(channels * 2, channels * 2, 1, 1)
        self.asp = AttentiveStatisticsPooling(channels * 2)
        self.asp_bn = nn.BatchNorm1d(channels * 4)
        self.fc = nn.Conv1d(channels * 4, lin_neurons, 1)

    def forward(self, x, lengths=None):  # x: (batch, time, feats) as speechbrain passes it
        x = x.transpose(1, 2)
        xl = []
        for layer in self.blocks:
            try:
                x = layer(x, lengths=lengths)
            except TypeError:
                x = layer(x)
            xl.append(x)
        x = torch.cat(xl[1:], dim=1)
        x = self.mfa(x)
        x = self.asp(x, lengths=lengths)
        x = self.asp_bn(x)
        x = self.fc(x)
        return x.transpose(1, 2)


def _feats_rel_lengths(n: int, g: torch.Generator, frames: int = 24, feats: int = 20) -> tuple:
    rel = torch.randint(frames // 2, frames + 1, (n,), generator=g).float() / frames
    rel[0] = 1.0
    return torch.randn(n, frames, feats, generator=g), rel


# --- Tacotron 2 location-sensitive attention (NVIDIA/tacotron2 model.py, utils.py) --------------------------------
def get_mask_from_lengths(lengths):
    max_len = torch.max(lengths).item()
    ids = torch.arange(0, max_len, device=lengths.device)
    return (ids < lengths.unsqueeze(1)).bool()


class LinearNorm(nn.Module):
    def __init__(self, in_dim, out_dim, bias=True, w_init_gain="linear"):
        super().__init__()
        self.linear_layer = nn.Linear(in_dim, out_dim, bias=bias)
        nn.init.xavier_uniform_(self.linear_layer.weight, gain=nn.init.calculate_gain(w_init_gain))

    def forward(self, x):
        return self.linear_layer(x)


class LocationLayer(nn.Module):
    def __init__(self, attention_n_filters, attention_kernel_size, attention_dim):
        super().__init__()
        padding = int((attention_kernel_size - 1) / 2)
        self.location_conv = nn.Conv1d(2, attention_n_filters, kernel_size=attention_kernel_size, padding=padding, bias=False)
        self.location_dense = LinearNorm(attention_n_filters, attention_dim, bias=False, w_init_gain="tanh")

    def forward(self, attention_weights_cat):
        processed_attention = self.location_conv(attention_weights_cat)
        processed_attention = processed_attention.transpose(1, 2)
        return self.location_dense(processed_attention)


class Attention(nn.Module):
    def __init__(self, attention_rnn_dim, embedding_dim, attention_dim, attention_location_n_filters, attention_location_kernel_size):
        super().__init__()
        self.query_layer = LinearNorm(attention_rnn_dim, attention_dim, bias=False, w_init_gain="tanh")
        self.memory_layer = LinearNorm(embedding_dim, attention_dim, bias=False, w_init_gain="tanh")
        self.v = LinearNorm(attention_dim, 1, bias=False)
        self.location_layer = LocationLayer(attention_location_n_filters, attention_location_kernel_size, attention_dim)
        self.score_mask_value = -float("inf")

    def get_alignment_energies(self, query, processed_memory, attention_weights_cat):
        processed_query = self.query_layer(query.unsqueeze(1))
        processed_attention_weights = self.location_layer(attention_weights_cat)
        energies = self.v(torch.tanh(processed_query + processed_attention_weights + processed_memory))
        return energies.squeeze(-1)

    def forward(self, attention_hidden_state, memory, processed_memory, attention_weights_cat, mask):
        alignment = self.get_alignment_energies(attention_hidden_state, processed_memory, attention_weights_cat)
        if mask is not None:
            alignment.data.masked_fill_(mask, self.score_mask_value)
        attention_weights = F.softmax(alignment, dim=1)
        attention_context = torch.bmm(attention_weights.unsqueeze(1), memory)
        return attention_context.squeeze(1), attention_weights


class TacotronDecoderSteps(nn.Module):
    def __init__(self, n_mel=8, emb=24, rnn=32, attn=16, steps=4):
        super().__init__()
        self.n_mel, self.rnn_dim, self.emb, self.steps = n_mel, rnn, emb, steps
        self.prenet = nn.Sequential(LinearNorm(n_mel, 16, bias=False), nn.ReLU(), LinearNorm(16, 16, bias=False), nn.ReLU())
        self.attention_rnn = nn.LSTMCell(16 + emb, rnn)
        self.attention_layer = Attention(rnn, emb, attn, 8, 5)
        self.linear_projection = LinearNorm(rnn + emb, n_mel)
        self.gate_layer = LinearNorm(rnn + emb, 1, bias=True, w_init_gain="sigmoid")

    def forward(self, memory, memory_lengths):
        B, T, _ = memory.shape
        mask = ~get_mask_from_lengths(memory_lengths)
        processed_memory = self.attention_layer.memory_layer(memory)
        h = memory.new_zeros(B, self.rnn_dim)
        c = memory.new_zeros(B, self.rnn_dim)
        attention_weights = memory.new_zeros(B, T)
        attention_weights_cum = memory.new_zeros(B, T)
        attention_context = memory.new_zeros(B, self.emb)
        decoder_input = memory.new_zeros(B, self.n_mel)  # go frame
        mel_outputs, gate_outputs, alignments = [], [], []
        for _ in range(self.steps):
            cell_input = torch.cat((self.prenet(decoder_input), attention_context), -1)
            h, c = self.attention_rnn(cell_input, (h, c))
            attention_weights_cat = torch.cat((attention_weights.unsqueeze(1), attention_weights_cum.unsqueeze(1)), dim=1)
            attention_context, attention_weights = self.attention_layer(h, memory, processed_memory, attention_weights_cat, mask)
            attention_weights_cum = attention_weights_cum + attention_weights
            hidden_context = torch.cat((h, attention_context), dim=1)
            decoder_input = self.linear_projection(hidden_context)
            mel_outputs.append(decoder_input)
            gate_outputs.append(self.gate_layer(hidden_context).squeeze(1))
            alignments.append(attention_weights)
        return torch.stack(mel_outputs, 2), torch.stack(gate_outputs, 1), torch.stack(alignments, 1)


def _memory_lengths(n: int, g: torch.Generator, t: int = 10, dim: int = 24) -> tuple:
    lengths = torch.randint(4, t + 1, (n,), generator=g)
    lengths[0] = t  # padded to the longest in the batch, as the collate function does
    memory = torch.randn(n, t, dim, generator=g) * (torch.arange(t)[None, :, None] < lengths[:, None, None])
    return memory, lengths


# --- streaming causal conv with cached left context ---------------------------------------------------------------
class StreamingCausalConv(nn.Module):
    """One chunk of a streaming encoder: each causal conv takes its last ``k - 1`` input frames from the previous chunk
    as a state input and returns the new state; the first layer pads causally when no state is kept."""

    def __init__(self, cin=8, ch=16, k=3, layers=3):
        super().__init__()
        self.k = k
        self.pre = nn.Conv1d(cin, ch, k)
        self.convs = nn.ModuleList([nn.Conv1d(ch, ch, k, dilation=1) for _ in range(layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(ch) for _ in range(layers)])
        self.out = nn.Conv1d(ch, 4, 1)

    def forward(self, x, state):  # x: (B, cin, T) chunk, state: (layers, B, ch, k - 1)
        x = F.silu(self.pre(F.pad(x, (self.k - 1, 0))))
        new_state = []
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            xc = torch.cat([state[i], x], dim=-1)
            new_state.append(xc[..., -(self.k - 1):])
            y = conv(xc)
            x = x + F.gelu(norm(y.transpose(1, 2)).transpose(1, 2))
        return self.out(x), torch.stack(new_state)


def _chunk_state(n: int, g: torch.Generator) -> tuple:
    return torch.randn(n, 8, 10, generator=g), torch.randn(3, n, 16, 2, generator=g)


# --- SpecAugment (training only) + ESPnet Conv2dSubsampling with lengths ----------------------------------------
class SpecAugment(nn.Module):
    def __init__(self, freq_mask=4, time_mask=5, n_masks=2):
        super().__init__()
        self.freq_mask, self.time_mask, self.n_masks = freq_mask, time_mask, n_masks

    def forward(self, x):  # (B, T, F)
        if self.training:
            B, T, Fdim = x.shape
            for _ in range(self.n_masks):
                t0 = torch.randint(0, max(1, T - self.time_mask), (B, 1), device=x.device)
                t = torch.arange(T, device=x.device)[None]
                x = x.masked_fill(((t >= t0) & (t < t0 + self.time_mask)).unsqueeze(-1), 0.0)
                f0 = torch.randint(0, max(1, Fdim - self.freq_mask), (B, 1), device=x.device)
                f = torch.arange(Fdim, device=x.device)[None]
                x = x.masked_fill(((f >= f0) & (f < f0 + self.freq_mask)).unsqueeze(1), 0.0)
        return x


class Conv2dSubsampling(nn.Module):
    def __init__(self, idim, odim):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, odim, 3, 2), nn.ReLU(), nn.Conv2d(odim, odim, 3, 2), nn.ReLU())
        self.out = nn.Linear(odim * (((idim - 1) // 2 - 1) // 2), odim)

    def forward(self, x, x_mask):
        x = x.unsqueeze(1)  # (b, c, t, f)
        x = self.conv(x)
        b, c, t, f = x.size()
        x = self.out(x.transpose(1, 2).contiguous().view(b, t, c * f))
        if x_mask is None:
            return x, None
        return x, x_mask[:, :, :-2:2][:, :, :-2:2]


class SpecAugEncoder(nn.Module):
    def __init__(self, idim=20, odim=32, vocab=10):
        super().__init__()
        self.specaug = SpecAugment()
        self.embed = Conv2dSubsampling(idim, odim)
        self.layer = nn.TransformerEncoderLayer(odim, 4, 64, dropout=0.1, batch_first=True)
        self.ctc_lo = nn.Linear(odim, vocab)

    def forward(self, xs_pad, ilens):
        xs_pad = self.specaug(xs_pad)
        masks = (~(torch.arange(xs_pad.size(1), device=ilens.device)[None] >= ilens[:, None]))[:, None, :]  # make_non_pad_mask
        xs, masks = self.embed(xs_pad, masks)
        xs = self.layer(xs, src_key_padding_mask=~masks.squeeze(1))
        olens = masks.squeeze(1).sum(1)
        return self.ctc_lo(xs).log_softmax(dim=-1), olens


def _fbank_lengths(n: int, g: torch.Generator, t: int = 28, feats: int = 20) -> tuple:
    ilens = torch.randint(8, t + 1, (n,), generator=g)
    ilens[0] = t
    return torch.randn(n, t, feats, generator=g), ilens


# --- CTC greedy decoding behind an energy VAD gate ---------------------------------------------------------------
class GreedyCTCWithVAD(nn.Module):
    def __init__(self, feats=20, hidden=32, vocab=12, blank=0, energy_threshold=-1.0):
        super().__init__()
        self.blank, self.energy_threshold = blank, energy_threshold
        self.encoder = nn.Sequential(nn.Conv1d(feats, hidden, 5, padding=2), nn.BatchNorm1d(hidden), nn.Hardtanh(0, 20),
                                     nn.Conv1d(hidden, hidden, 3, padding=1), nn.BatchNorm1d(hidden), nn.Hardtanh(0, 20))
        self.fc = nn.Linear(hidden, vocab)

    def forward(self, feats):  # (B, F, T) log-mel
        energy = feats.exp().mean(dim=1).log()  # (B, T) frame energy
        speech = energy > self.energy_threshold
        log_probs = self.fc(self.encoder(feats).transpose(1, 2)).log_softmax(-1)
        silence = torch.full_like(log_probs, -1e4)
        silence[..., self.blank] = 0.0
        log_probs = torch.where(speech.unsqueeze(-1), log_probs, silence)
        best = log_probs.argmax(dim=-1)  # (B, T)
        prev = torch.cat([torch.full_like(best[:, :1], self.blank), best[:, :-1]], dim=1)
        keep = (best != prev) & (best != self.blank)
        tokens = torch.where(keep, best, torch.full_like(best, -1))
        return log_probs, tokens, keep.sum(dim=1)


# --- SincNet (mravanelli/SincNet dnn_models.py SincConv_fast) -------------------------------------------------------
class SincConv_fast(nn.Module):
    @staticmethod
    def to_mel(hz):
        return 2595 * np.log10(1 + hz / 700)

    @staticmethod
    def to_hz(mel):
        return 700 * (10 ** (mel / 2595) - 1)

    def __init__(self, out_channels, kernel_size, sample_rate=16000, in_channels=1, stride=1, padding=0, dilation=1,
                 min_low_hz=50, min_band_hz=50):
        super().__init__()
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        if kernel_size % 2 == 0:
            self.kernel_size = self.kernel_size + 1
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.sample_rate, self.min_low_hz, self.min_band_hz = sample_rate, min_low_hz, min_band_hz
        low_hz = 30
        high_hz = self.sample_rate / 2 - (self.min_low_hz + self.min_band_hz)
        mel = np.linspace(self.to_mel(low_hz), self.to_mel(high_hz), self.out_channels + 1)
        hz = self.to_hz(mel)
        self.low_hz_ = nn.Parameter(torch.Tensor(hz[:-1]).view(-1, 1))
        self.band_hz_ = nn.Parameter(torch.Tensor(np.diff(hz)).view(-1, 1))
        n_lin = torch.linspace(0, (self.kernel_size / 2) - 1, steps=int(self.kernel_size / 2))
        self.window_ = 0.54 - 0.46 * torch.cos(2 * math.pi * n_lin / self.kernel_size)  # a plain attribute, not a buffer
        n = (self.kernel_size - 1) / 2.0
        self.n_ = 2 * math.pi * torch.arange(-n, 0).view(1, -1) / self.sample_rate

    def forward(self, waveforms):
        self.n_ = self.n_.to(waveforms.device)
        self.window_ = self.window_.to(waveforms.device)
        low = self.min_low_hz + torch.abs(self.low_hz_)
        high = torch.clamp(low + self.min_band_hz + torch.abs(self.band_hz_), self.min_low_hz, self.sample_rate / 2)
        band = (high - low)[:, 0]
        f_times_t_low = torch.matmul(low, self.n_)
        f_times_t_high = torch.matmul(high, self.n_)
        band_pass_left = ((torch.sin(f_times_t_high) - torch.sin(f_times_t_low)) / (self.n_ / 2)) * self.window_
        band_pass_center = 2 * band.view(-1, 1)
        band_pass_right = torch.flip(band_pass_left, dims=[1])
        band_pass = torch.cat([band_pass_left, band_pass_center, band_pass_right], dim=1)
        band_pass = band_pass / (2 * band[:, None])
        self.filters = (band_pass).view(self.out_channels, 1, self.kernel_size)
        return F.conv1d(waveforms, self.filters, stride=self.stride, padding=self.padding, dilation=self.dilation, bias=None, groups=1)


class SincNet(nn.Module):
    def __init__(self, n_classes=5):
        super().__init__()
        self.ln0 = nn.LayerNorm(512)
        self.sinc = SincConv_fast(16, 31, sample_rate=8000)
        self.ln1 = nn.LayerNorm([16, 482 // 3])
        self.conv = nn.Conv1d(16, 16, 5)
        self.ln2 = nn.LayerNorm([16, (482 // 3 - 4) // 3])
        self.fc = nn.Linear(16 * ((482 // 3 - 4) // 3), 32)
        self.out = nn.Linear(32, n_classes)

    def forward(self, x):  # (B, 512) waveform chunk
        x = self.ln0(x).view(x.shape[0], 1, -1)
        x = F.leaky_relu(self.ln1(F.max_pool1d(torch.abs(self.sinc(x)), 3)), 0.2)
        x = F.leaky_relu(self.ln2(F.max_pool1d(self.conv(x), 3)), 0.2)
        return self.out(F.leaky_relu(self.fc(x.flatten(1)), 0.2)).log_softmax(-1)


# --- FastSpeech 2 variance adaptor length regulator (ming024/FastSpeech2 model/modules.py) -----------------------
def pad(input_ele, mel_max_length=None):
    if mel_max_length:
        max_len = mel_max_length
    else:
        max_len = max([input_ele[i].size(0) for i in range(len(input_ele))])
    out_list = []
    for batch in input_ele:
        one_batch_padded = F.pad(batch, (0, 0, 0, max_len - batch.size(0)), "constant", 0.0)
        out_list.append(one_batch_padded)
    return torch.stack(out_list)


class VariancePredictor(nn.Module):
    def __init__(self, d, k=3):
        super().__init__()
        self.conv1, self.ln1 = nn.Conv1d(d, d, k, padding=k // 2), nn.LayerNorm(d)
        self.conv2, self.ln2 = nn.Conv1d(d, d, k, padding=k // 2), nn.LayerNorm(d)
        self.linear_layer = nn.Linear(d, 1)

    def forward(self, x, mask):
        x = self.ln1(F.relu(self.conv1(x.transpose(1, 2))).transpose(1, 2))
        x = self.ln2(F.relu(self.conv2(x.transpose(1, 2))).transpose(1, 2))
        out = self.linear_layer(x).squeeze(-1)
        return out.masked_fill(mask, 0.0)


class LengthRegulatorTTS(nn.Module):
    def __init__(self, vocab=30, d=32, n_mel=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.encoder = nn.Sequential(nn.Conv1d(d, d, 3, padding=1), nn.ReLU())
        self.duration_predictor = VariancePredictor(d)
        self.decoder = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, n_mel))
        with torch.no_grad():
            self.duration_predictor.linear_layer.bias.fill_(1.0)  # log-durations of a trained model: ~2-3 frames a phoneme

    def length_regulate(self, x, duration):
        output = list()
        mel_len = list()
        for batch, expand_target in zip(x, duration):
            expanded = torch.repeat_interleave(batch, expand_target, dim=0)
            output.append(expanded)
            mel_len.append(expanded.shape[0])
        return pad(output), torch.LongTensor(mel_len).to(x.device)

    def forward(self, texts):
        src_masks = texts == 0
        x = self.encoder(self.embed(texts).transpose(1, 2)).transpose(1, 2)
        log_duration_prediction = self.duration_predictor(x, src_masks)
        duration_rounded = torch.clamp((torch.round(torch.exp(log_duration_prediction) - 1) * 1.0), min=0).long()
        x, mel_len = self.length_regulate(x, duration_rounded)
        return self.decoder(x), mel_len


def _phonemes(n: int, g: torch.Generator, length: int = 10) -> tuple:
    ids = torch.randint(1, 30, (n, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (n, 1), generator=g)
    return (ids * (torch.arange(length)[None] < lengths),)


# --- NeMo QuartzNet masked time-channel separable convs (nemo/collections/asr/parts/submodules/jasper.py) ---------
def get_same_padding(kernel_size, stride, dilation):
    return (dilation * (kernel_size - 1)) // 2


class MaskedConv1d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=False, use_mask=True):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, bias=bias)
        self.use_mask = use_mask

    def get_seq_len(self, lens):
        return (lens + 2 * self.conv.padding[0] - self.conv.dilation[0] * (self.conv.kernel_size[0] - 1) - 1) // self.conv.stride[0] + 1

    def forward(self, x, lens):
        if self.use_mask:
            max_len = x.size(2)
            mask = torch.arange(max_len, device=lens.device)[None, :] >= lens[:, None]
            x = x.masked_fill(mask.unsqueeze(1).to(device=x.device), 0)
            lens = self.get_seq_len(lens)
        return self.conv(x), lens


class JasperBlock(nn.Module):
    def __init__(self, inplanes, planes, kernel_size, repeat=2, stride=1, separable=True, residual=True):
        super().__init__()
        padding_val = get_same_padding(kernel_size, stride, 1)
        self.mconv = nn.ModuleList()
        for i in range(repeat):
            cin = inplanes if i == 0 else planes
            if separable:
                self.mconv.extend([MaskedConv1d(cin, cin, kernel_size, stride, padding_val, groups=cin),
                                   MaskedConv1d(cin, planes, 1)])
            else:
                self.mconv.append(MaskedConv1d(cin, planes, kernel_size, stride, padding_val))
            self.mconv.append(nn.BatchNorm1d(planes, eps=1e-3, momentum=0.1))
            if i < repeat - 1:
                self.mconv.extend([nn.ReLU(), nn.Dropout(0.2)])
        self.res = nn.ModuleList([MaskedConv1d(inplanes, planes, 1), nn.BatchNorm1d(planes, eps=1e-3)]) if residual else None
        self.mout = nn.Sequential(nn.ReLU(), nn.Dropout(0.2))

    def forward(self, input_):
        xs, lens_orig = input_
        out, lens = xs[-1], lens_orig
        for layer in self.mconv:
            if isinstance(layer, MaskedConv1d):
                out, lens = layer(out, lens)
            else:
                out = layer(out)
        if self.res is not None:
            res_out = xs[-1]
            for res_layer in self.res:
                if isinstance(res_layer, MaskedConv1d):
                    res_out, _ = res_layer(res_out, lens_orig)
                else:
                    res_out = res_layer(res_out)
            out = out + res_out
        return [self.mout(out)], lens


class QuartzNet(nn.Module):
    def __init__(self, feat_in=20, vocab=12):
        super().__init__()
        self.encoder = nn.Sequential(JasperBlock(feat_in, 32, 11, repeat=1, stride=2, residual=False), JasperBlock(32, 32, 7),
                                     JasperBlock(32, 32, 7), JasperBlock(32, 48, 1, repeat=1, separable=False, residual=False))
        self.decoder_layers = nn.Sequential(nn.Conv1d(48, vocab + 1, kernel_size=1, bias=True))

    def forward(self, audio_signal, length):
        s_input, length = self.encoder(([audio_signal], length))
        return F.log_softmax(self.decoder_layers(s_input[-1]).transpose(1, 2), dim=-1), length


def _feats_lengths(n: int, g: torch.Generator, t: int = 32, feats: int = 20) -> tuple:
    lens = torch.randint(t // 2, t + 1, (n,), generator=g)
    lens[0] = t
    return torch.randn(n, feats, t, generator=g), lens


# --- torchcrepe-style pitch estimation with weighted-argmax decoding ----------------------------------------------
class TinyCrepe(nn.Module):
    def __init__(self, pitch_bins=60, frame=256):
        super().__init__()
        self.pitch_bins = pitch_bins
        layers, cin = [], 1
        for cout, (k, s, p) in zip((16, 8, 8, 8), ((64, 4, (30, 30)), (8, 1, (3, 4)), (8, 1, (3, 4)), (8, 1, (3, 4)))):
            layers += [nn.ZeroPad2d((0, 0) + p), nn.Conv2d(cin, cout, (k, 1), (s, 1)), nn.ReLU(),
                       nn.BatchNorm2d(cout, eps=0.0010000000474974513, momentum=0.0), nn.MaxPool2d((2, 1), (2, 1))]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Linear(8 * 4, pitch_bins)
        cents = 20 * torch.arange(pitch_bins) + 1997.3794084376191 * 2  # bins_to_cents, coarser bins
        self.register_buffer("cents", cents.float())

    def forward(self, frames):  # (B, 256) frames
        frames = frames - frames.mean(dim=1, keepdim=True)
        frames = frames / torch.max(torch.tensor(1e-10, device=frames.device), frames.std(dim=1, keepdim=True))
        x = self.layers(frames[:, None, :, None])
        x = x.permute(0, 2, 1, 3).reshape(-1, 8 * x.shape[2])
        logits = self.classifier(x)  # (B, bins)
        bins = logits.argmax(dim=1)
        start = torch.max(torch.tensor(0, device=logits.device), bins - 4)
        end = torch.min(torch.tensor(logits.size(1), device=logits.device), bins + 5)
        idx = torch.arange(logits.size(1), device=logits.device)[None]
        logits = logits.masked_fill((idx < start[:, None]) | (idx >= end[:, None]), -float("inf"))
        probs = torch.sigmoid(logits)
        cents = (self.cents[None] * probs).sum(dim=1) / probs.sum(dim=1)
        frequency = 10 * 2 ** (cents / 1200)
        periodicity = probs.max(dim=1).values
        return frequency, periodicity


# --- DCCRN complex convolutions (huyanxin/DeepComplexCRN complexnn.py, dc_crn.py) ----------------------------------
class ComplexConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), causal=True, complex_axis=1):
        super().__init__()
        self.in_channels, self.out_channels = in_channels // 2, out_channels // 2
        self.padding, self.causal, self.complex_axis = padding, causal, complex_axis
        self.real_conv = nn.Conv2d(self.in_channels, self.out_channels, kernel_size, stride, padding=[self.padding[0], 0])
        self.imag_conv = nn.Conv2d(self.in_channels, self.out_channels, kernel_size, stride, padding=[self.padding[0], 0])

    def forward(self, inputs):
        if self.padding[1] != 0 and self.causal:
            inputs = F.pad(inputs, [self.padding[1], 0, 0, 0])
        else:
            inputs = F.pad(inputs, [self.padding[1], self.padding[1], 0, 0])
        real, imag = torch.chunk(inputs, 2, self.complex_axis)
        real2real = self.real_conv(real)
        imag2imag = self.imag_conv(imag)
        real2imag = self.imag_conv(real)
        imag2real = self.real_conv(imag)
        real = real2real - imag2imag
        imag = real2imag + imag2real
        return torch.cat([real, imag], self.complex_axis)


class ComplexConvTranspose2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, output_padding):
        super().__init__()
        self.real_conv = nn.ConvTranspose2d(in_channels // 2, out_channels // 2, kernel_size, stride, padding, output_padding)
        self.imag_conv = nn.ConvTranspose2d(in_channels // 2, out_channels // 2, kernel_size, stride, padding, output_padding)

    def forward(self, inputs):
        real, imag = torch.chunk(inputs, 2, 1)
        real2real, imag2imag = self.real_conv(real), self.imag_conv(imag)
        real2imag, imag2real = self.imag_conv(real), self.real_conv(imag)
        return torch.cat([real2real - imag2imag, real2imag + imag2real], 1)


class TinyDCCRN(nn.Module):
    def __init__(self, n_fft=64, hop=16):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft) ** 0.5)
        self.enc1 = nn.Sequential(ComplexConv2d(2, 16, (5, 2), (2, 1), (2, 1)), nn.BatchNorm2d(16), nn.PReLU())
        self.enc2 = nn.Sequential(ComplexConv2d(16, 32, (5, 2), (2, 1), (2, 1)), nn.BatchNorm2d(32), nn.PReLU())
        self.dec2 = nn.Sequential(ComplexConvTranspose2d(64, 16, (5, 2), (2, 1), (2, 0), (1, 0)), nn.BatchNorm2d(16), nn.PReLU())
        self.dec1 = ComplexConvTranspose2d(32, 2, (5, 2), (2, 1), (2, 0), (1, 0))

    def forward(self, wav):
        spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, return_complex=True)  # (B, F, T)
        real, imag = spec.real[:, 1:], spec.imag[:, 1:]  # drop DC, as DCCRN's ConvSTFT does
        spec_mags = torch.sqrt(real ** 2 + imag ** 2 + 1e-8)
        spec_phase = torch.atan2(imag, real)
        x = torch.stack([real, imag], 1)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(torch.cat([e2, e2], 1))[..., 1:]
        d1 = self.dec1(torch.cat([d2, e1], 1))[..., 1:]
        mask_real, mask_imag = d1[:, 0], d1[:, 1]
        mask_mags = (mask_real ** 2 + mask_imag ** 2) ** 0.5
        real_phase = mask_real / (mask_mags + 1e-8)
        imag_phase = mask_imag / (mask_mags + 1e-8)
        mask_phase = torch.atan2(imag_phase, real_phase)
        mask_mags = torch.tanh(mask_mags)
        est_mags = mask_mags * spec_mags
        est_phase = spec_phase + mask_phase
        return est_mags * torch.cos(est_phase), est_mags * torch.sin(est_phase)


# --- learned filterbank over unfolded frames, overlap-add by F.fold -----------------------------------------------
class FrameOverlapAdd(nn.Module):
    def __init__(self, win=32, hop=16, n_basis=24):
        super().__init__()
        self.win, self.hop = win, hop
        self.analysis = nn.Linear(win, n_basis, bias=False)
        self.mask = nn.Sequential(nn.Linear(n_basis, 32), nn.ReLU(), nn.Linear(32, n_basis), nn.Sigmoid())
        self.synthesis = nn.Linear(n_basis, win, bias=False)

    def forward(self, x):  # (B, T), T = hop * k + win
        window = torch.hann_window(self.win, periodic=True, device=x.device, dtype=x.dtype)
        frames = x.unfold(-1, self.win, self.hop) * window  # (B, n_frames, win)
        coeffs = F.relu(self.analysis(frames))
        frames = self.synthesis(coeffs * self.mask(coeffs)) * window
        length = x.shape[-1]
        out = F.fold(frames.transpose(1, 2), output_size=(1, length), kernel_size=(1, self.win), stride=(1, self.hop))
        norm = F.fold((window ** 2)[None, :, None].expand(1, self.win, frames.shape[1]), output_size=(1, length),
                      kernel_size=(1, self.win), stride=(1, self.hop))
        return (out / norm.clamp(min=1e-8)).view(x.shape[0], length)


# --- hand-written bidirectional GRU by torch.flip, 1-D interpolate upsampling -------------------------------------
class FlipBiGRUUpsampler(nn.Module):
    """An older speech repository's BiGRU: the backward direction is a second GRU over ``torch.flip(x, [1])``, flipped back;
    then frame-rate features are upsampled to the sample rate by ``F.interpolate`` (nearest and linear) before a conv."""

    def __init__(self, feats=16, hidden=16):
        super().__init__()
        self.fwd = nn.GRU(feats, hidden, batch_first=True)
        self.bwd = nn.GRU(feats, hidden, batch_first=True)
        self.proj = nn.Linear(2 * hidden, hidden)
        self.conv = nn.Sequential(nn.ReflectionPad1d(3), nn.Conv1d(2 * hidden, hidden, 7), nn.Tanh(), nn.Conv1d(hidden, 1, 1))

    def forward(self, x):  # (B, T, feats)
        h_f, _ = self.fwd(x)
        h_b, _ = self.bwd(torch.flip(x, [1]))
        h = torch.cat([h_f, torch.flip(h_b, [1])], dim=-1)
        h = torch.tanh(self.proj(h)).transpose(1, 2)  # (B, hidden, T)
        up_nearest = F.interpolate(h, scale_factor=4, mode="nearest")
        up_linear = F.interpolate(h, scale_factor=4, mode="linear", align_corners=False)
        return self.conv(torch.cat([up_nearest, up_linear], dim=1)).squeeze(1)


CASES = {
    "hifigan_mrf": ("HiFi-GAN generator: parametrizations.weight_norm ConvTranspose1d ups and dilated Conv1d MRF ResBlock1s, "
                    "leaky_relu(0.1), xs += resblock(x) then xs / num_kernels, tanh", lambda: (HiFiGANGenerator(), _mels)),
    "encodec_rvq": ("EnCodec-style SEANet: weight_norm removed for inference, reflect pad1d with extra padding, ELU resnet "
                    "blocks, skip LSTM, residual VQ (x^2 - 2xe + e^2, max().indices, F.embedding, straight-through) -> "
                    "(audio, codes)", lambda: (_encodec(), lambda n, g: _wave(n, g, 256))),
    "logmel_cnn": ("pre-emphasis by cat, torch.stft with a Hann window buffer, |.|^2 @ mel filterbank buffer, "
                   "log(clamp(min=1e-5)), per-utterance CMVN, 2-D CNN classifier", lambda: (
                       _trained_norms(LogMelCNN()), lambda n, g: _wave(n, g, 512, channels=None))),
    "whisper_kv_step": ("Whisper decoder step: KV cache as a tuple-of-pairs input, cat along time, positional embedding and "
                        "causal mask sliced by the cache offset, q/k scaled by d^-0.25, tied output (logits, presents)",
                        lambda: (WhisperTiny(), _whisper_inputs)),
    "conv_tasnet": ("Conv-TasNet: gLN as GroupNorm(1, C), dilated depthwise TCN with PReLU, residual + skip sums from "
                    "tensor([0.]), sigmoid masks view(b, n_src, N, K), ConvTranspose1d decoder, pad_x_to_y", lambda: (
                        ConvTasNet(), lambda n, g: _wave(n, g, 256, channels=None))),
    "demucs_denoiser": ("denoiser Demucs: std normalisation, valid_length F.pad, Conv1d+ReLU+1x1+GLU encoders, BLSTM on "
                        "permute(2, 0, 1), center_trim skips, ConvTranspose1d decoders, crop, std * x", lambda: (
                            Demucs(), lambda n, g: _wave(n, g, 300))),
    "ecapa_tdnn": ("ECAPA-TDNN: Res2Net chunk with cumulative adds, masked SE, attentive statistics pooling over a "
                   "relative-length mask (masked_fill -inf, softmax), multi-layer feature aggregation, try/except TypeError "
                   "layer calls", lambda: (_trained_norms(ECAPATDNN()), _feats_rel_lengths)),
    "tacotron2_attention": ("Tacotron 2 decoder steps: get_mask_from_lengths with max(lengths).item(), LSTMCell loop, "
                            "location conv over cat(weights, cumulative weights), alignment.data.masked_fill_(-inf), "
                            "softmax, bmm", lambda: (TacotronDecoderSteps(), _memory_lengths)),
    "streaming_conv_state": ("streaming chunk: causal F.pad(x, (k - 1, 0)), per-layer cached left context cat'd from a "
                             "state input, new state xc[..., -(k - 1):] stacked as an output", lambda: (
                                 StreamingCausalConv(), _chunk_state)),
    "specaug_subsampling": ("ESPnet-style: SpecAugment under `if self.training` (randint + arange masks), make_non_pad_mask, "
                            "Conv2dSubsampling with x_mask[:, :, :-2:2] twice, TransformerEncoderLayer with key padding, "
                            "(log-probs, olens)", lambda: (SpecAugEncoder(), _fbank_lengths)),
    "ctc_greedy_vad": ("energy VAD gate by torch.where onto a blank-only distribution, CTC greedy decoding: argmax, "
                       "shift-compare collapse, -1 fill; returns (log-probs, int tokens, counts)", lambda: (
                           _trained_norms(GreedyCTCWithVAD()), lambda n, g: (torch.randn(n, 20, 24, generator=g) - 0.5,))),
    "sincnet": ("SincNet SincConv_fast: band-pass filters from learned low/band cut-offs every forward (sin, flip, cat, "
                "plain tensor attributes reassigned in forward, self.filters set), F.conv1d with the computed weight",
                lambda: (SincNet(), lambda n, g: _wave(n, g, 512, channels=None))),
    "fastspeech_length_regulator": ("FastSpeech 2 length regulator: durations round(exp(log_d) - 1).long(), per-utterance "
                                    "repeat_interleave, pad to the longest and stack (a data-dependent length), mel lengths",
                                    lambda: (LengthRegulatorTTS(), _phonemes)),
    "quartznet_masked_conv": ("NeMo QuartzNet: MaskedConv1d (arange >= lens masked_fill, lens recomputed by the conv "
                              "formula), depthwise + pointwise separable blocks, ([xs], lens) tuples through nn.Sequential",
                              lambda: (_trained_norms(QuartzNet()), _feats_lengths)),
    "crepe_pitch": ("CREPE-style pitch: per-frame standardisation with max(tensor(1e-10), std), (k, 1) Conv2d tower, "
                    "weighted argmax decode (arange window around argmax, masked_fill -inf, sigmoid, cents -> Hz)",
                    lambda: (_trained_norms(TinyCrepe()), lambda n, g: _wave(n, g, 256, channels=None))),
    "dccrn_complex": ("DCCRN: torch.stft real/imag, atan2 phase, complex Conv2d / ConvTranspose2d as four real convs, "
                      "causal F.pad, tanh magnitude mask + phase mask, cos/sin out", lambda: (
                          _trained_norms(TinyDCCRN()), lambda n, g: _wave(n, g, 256, channels=None))),
    "frame_ola_fold": ("learned filterbank: Tensor.unfold framing, torch.hann_window made in forward, sigmoid mask, "
                       "F.fold overlap-add normalised by the folded squared window", lambda: (
                           FrameOverlapAdd(), lambda n, g: _wave(n, g, 272, channels=None))),
    "flip_bigru_upsample": ("hand-written BiGRU: second GRU over torch.flip(x, [1]) flipped back, cat, 1-D F.interpolate "
                            "nearest and linear x4, ReflectionPad1d conv", lambda: (
                                FlipBiGRUUpsampler(), lambda n, g: (torch.randn(n, 10, 16, generator=g),))),
}
