"""The model zoo of ``benchmarks/zoo.py``: every model built in code with random weights (no download).

Families: all torchvision classification models; torchvision segmentation and video models and
detection backbones (with their FPN / SSD feature extras), none of which needs compiled torchvision
ops; small timm members (when timm is installed); Hugging Face transformers from small random
configs; and a few models written here that exercise what the others lack
(transposed / grouped / depthwise convs, concat, an ``nn.MultiheadAttention`` encoder, a block with
Python control flow on tensor values that no tracer can capture whole).

``zoo()`` returns :class:`Entry` objects by name; ``Entry.build()`` gives ``(model, make_input)``
where ``make_input(seed)`` makes one batch of ``BATCH`` random inputs (a tuple of tensors).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

BATCH = 8
SMALL = 64  # convnet input side; the smallest size that every torchvision convnet runs at (inception: 96)
# Classifier heads have 10 classes: with random weights a 1000-way head puts the top two logits of
# most inputs within a few percent of each other (median gap 0.1 of the logits' spread on a random
# ViT), so top-1 flips under any perturbation, even weight-only int8; with 10 classes the median
# gap is about one spread and top-1 agreement measures the quantization.
CLASSES = 10


def _ready(model: nn.Module) -> nn.Module:
    """Eval mode, and layers initialised to all zeros (torchvision's ViT head: its random-weight
    logits would be 0 for every input) re-initialised with PyTorch's default."""
    torch.manual_seed(1)
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, (nn.Linear, nn.Conv2d)) and isinstance(w, torch.Tensor) and not w.any():
            m.reset_parameters()
    return model.eval()


@dataclass
class Entry:
    name: str
    family: str  # torchvision, tv-seg, tv-det, tv-video, tv-flow, timm, hf, custom
    build: Callable[[], tuple[nn.Module, Callable[[int], tuple]]]
    task: str = "cls"  # cls: logits on the last dim; seg: classes on dim 1; lm: next-token logits; features
    input_desc: str = ""
    quick: bool = False  # in the --quick subset
    note: str = ""
    huge: bool = False  # over 250M parameters: only with --huge (memory, and a quarter of the run time)


def _images(side: int, channels: int = 3, frames: int | None = None, batch: int = BATCH) -> Callable[[int], tuple]:
    def make(seed: int) -> tuple:
        g = torch.Generator().manual_seed(seed)
        shape = (batch, channels, frames, side, side) if frames else (batch, channels, side, side)
        return (torch.randn(*shape, generator=g),)
    return make


def _image_pairs(side: int, batch: int) -> Callable[[int], tuple]:
    """Two images a sample (optical flow: frame t and frame t+1)."""
    def make(seed: int) -> tuple:
        g = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(batch, 3, side, side, generator=g) for _ in range(2))
    return make


def _tv_flow(name: str):
    def build():
        import torchvision

        torch.manual_seed(0)
        return _ready(getattr(torchvision.models.optical_flow, name)(weights=None)), _image_pairs(FLOW_SIDE, FLOW_BATCH)
    return build


def _tokens(vocab: int, length: int = 16) -> Callable[[int], tuple]:
    def make(seed: int) -> tuple:
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(0, vocab, (BATCH, length), generator=g),)
    return make


# ---------------------------------------------------------------------------------------------- torchvision
def _tv_side(name: str) -> int:
    if name.startswith("maxvit"):
        return 224  # window/grid partition needs every stage divisible by 7
    if name == "inception_v3":
        return 96  # its stem needs at least 75x75
    if name == "vit_h_14":
        return 56
    return SMALL


def _tv_classifier(name: str):
    import torchvision

    def build():
        torch.manual_seed(0)
        kw = {"image_size": _tv_side(name)} if name.startswith("vit_") else {}
        if name in ("googlenet", "inception_v3"):
            kw["init_weights"] = True
        return _ready(getattr(torchvision.models, name)(weights=None, num_classes=CLASSES, **kw)), _images(_tv_side(name))
    return build


def _tv_other(module: str, name: str, frames: int | None = None, side: int = SMALL, batch: int = BATCH):
    def build():
        import contextlib
        from unittest import mock

        import torchvision
        import torchvision.models.video.mvit as mvit

        torch.manual_seed(0)
        kw = {"weights_backbone": None, "num_classes": 21} if module == "segmentation" else {"num_classes": CLASSES}
        patch = contextlib.nullcontext()
        if name.startswith("mvit"):
            # the MViT builders fix 224x224 x 16 frames (the size of their position embeddings); the
            # model itself takes any size, so their shared constructor is called with the zoo's
            def small(**a):
                return _mvit(**{**a, "spatial_size": (side, side), "temporal_size": frames})
            _mvit = mvit._mvit
            patch = mock.patch.object(mvit, "_mvit", small)
        with patch:
            model = _ready(getattr(getattr(torchvision.models, module), name)(weights=None, **kw))
        return model, _images(side, frames=frames, batch=batch)
    return build


def trained_frozen_bn(model: nn.Module, seed: int = 1) -> int:
    """Give every ``FrozenBatchNorm2d`` random statistics and affine parameters of the size a trained
    one has (scale 0.5-1.5, shift 0.1·N(0, 1), mean 0.1·N(0, 1), variance 0.5-2): freshly built they
    are the identity, and a fold of them would be a no-op. Returns how many layers it changed.

    The statistics are not fitted to the data. Fitted (every layer's input normalised, as in a trained
    network), a random ResNet-50 is chaotic: 1% input noise comes out of the float model at 9 dB
    (mean only fitted) or 4 dB (mean and variance), so no quantized copy can be judged against it.
    Unfitted, the float model is stable (52 dB) and its features are mostly input-independent (the
    input-dependent part is 7% of the output), the regime of the zoo's other random convnets."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    g, count = torch.Generator().manual_seed(seed), 0
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.weight.numel()
            m.weight.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.copy_(0.1 * torch.randn(c, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
            count += 1
    return count


DET_SIDE = 128  # an FPN over a stride-32 ResNet: C5 is 4x4, RetinaNet's P7 1x1


def _tv_det(name: str):
    """The backbone (+ FPN or SSD extras) of a torchvision detector: a dict of feature maps. The
    detection heads and their post-processing (anchors, NMS: compiled torchvision ops, data-dependent
    shapes) are not part of it."""
    def build():
        import torchvision.models.detection as det
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

        torch.manual_seed(0)
        if name == "resnet50_fpn_frozenbn":  # what every pretrained torchvision R-CNN / RetinaNet / FCOS backbone is
            model = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=0).eval()
            trained_frozen_bn(model)
        else:
            model = getattr(det, name)(weights=None, weights_backbone=None).backbone
        return _ready(model), _images(DET_SIDE)
    return build


DET = [  # (name, in --quick, note)
    ("resnet50_fpn_frozenbn", True, "resnet_fpn_backbone: FrozenBatchNorm2d with trained-size statistics"),
    ("retinanet_resnet50_fpn", False, "backbone + FPN with P6/P7"),
    ("fasterrcnn_mobilenet_v3_large_fpn", False, "backbone + FPN"),
    ("ssdlite320_mobilenet_v3_large", False, "backbone + SSDLite extras"),
]

# RAFT's correlation pyramid needs feature maps of at least 16x16 (images of 128x128); it runs 12
# recurrent refinements and returns all 12 flow fields. Both images go through the shared encoder as
# one batch that is chunked apart again (torch.chunk along a dynamic batch in the ONNX file).
FLOW = [("raft_small", False, "12 flow updates, image pairs; data-dependent checks: captured by torch.export")]
FLOW_SIDE, FLOW_BATCH = 128, 2

HUGE = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf"}


VIDEO = [  # (name, in --quick, frames, side, batch, note): every torchvision video classifier
    ("r3d_18", True, 4, 32, BATCH, ""), ("r2plus1d_18", False, 4, 32, BATCH, ""), ("mc3_18", False, 4, 32, BATCH, ""),
    ("swin3d_t", False, 4, 32, BATCH, ""), ("swin3d_s", False, 4, 32, BATCH, ""), ("swin3d_b", False, 4, 32, BATCH, ""),
    ("mvit_v1_b", False, 4, 32, BATCH, "built for 4x32x32 clips (the builder's default is 16x224x224)"),
    ("mvit_v2_s", False, 4, 32, BATCH, "built for 4x32x32 clips (the builder's default is 16x224x224)"),
    # S3D ends in a fixed 2x7x7 average pool, so it needs 16 frames of 224x224: 2 clips a batch keep it
    # within a few minutes (top-1 on 24 clips)
    ("s3d", False, 16, 224, 2, "16x224x224 clips, 2 a batch (its final 2x7x7 pool fixes the input size)"),
]


def torchvision_entries() -> list[Entry]:
    import torchvision

    quick = {"resnet18", "mobilenet_v3_small", "efficientnet_b0", "vit_b_32", "swin_t", "convnext_tiny", "regnet_x_400mf",
             "shufflenet_v2_x0_5", "densenet121", "squeezenet1_1", "googlenet", "mnasnet0_5", "alexnet"}
    out = []
    for name in torchvision.models.list_models(module=torchvision.models):
        side = _tv_side(name)
        note = f"image_size={side}" if name.startswith("vit_") else ""
        out.append(Entry(name, "torchvision", _tv_classifier(name), "cls", f"{BATCH}x3x{side}x{side}", name in quick, note,
                         huge=name in HUGE))
    seg = [("fcn_resnet50", False), ("fcn_resnet101", False), ("deeplabv3_resnet50", False), ("deeplabv3_resnet101", False),
           ("deeplabv3_mobilenet_v3_large", True), ("lraspp_mobilenet_v3_large", False)]
    for name, q in seg:
        out.append(Entry(name, "tv-seg", _tv_other("segmentation", name), "seg", f"{BATCH}x3x{SMALL}x{SMALL}", q))
    for name, q, note in DET:
        out.append(Entry(f"det/{name}", "tv-det", _tv_det(name), "features", f"{BATCH}x3x{DET_SIDE}x{DET_SIDE}", q, note))
    for name, q, note in FLOW:
        out.append(Entry(name, "tv-flow", _tv_flow(name), "features", f"2 x {FLOW_BATCH}x3x{FLOW_SIDE}x{FLOW_SIDE}", q, note))
    for name, q, frames, side, batch, note in VIDEO:
        out.append(Entry(name, "tv-video", _tv_other("video", name, frames, side, batch), "cls", f"{batch}x3x{frames}x{side}x{side}",
                         q, note))
    return out


# ---------------------------------------------------------------------------------------------- timm
TIMM = [  # (name, input side, in --quick[, timm.create_model arguments])
    ("resnet18", SMALL, False), ("efficientnet_b0", SMALL, False), ("mobilenetv3_small_100", SMALL, True),
    ("convnext_atto", SMALL, False), ("regnetx_002", SMALL, False), ("vit_tiny_patch16_224", 224, True),
    ("deit_tiny_distilled_patch16_224", 224, False), ("swin_tiny_patch4_window7_224", 224, False), ("maxvit_pico_rw_256", 256, False),
    # added 2026-12-05: families that found bugs (weight standardization, 5-D attention, fixed-batch bias correction) and more
    ("nf_resnet26", SMALL, False), ("mobilevit_xxs", SMALL, False), ("mobilevitv2_050", SMALL, False), ("efficientvit_b0", SMALL, False),
    ("edgenext_xx_small", SMALL, False), ("poolformer_s12", SMALL, False), ("fastvit_t8", SMALL, False), ("ghostnet_050", SMALL, False),
    ("hrnet_w18_small", SMALL, False), ("repvgg_a0", SMALL, False), ("resnest14d", SMALL, False), ("dla34", SMALL, False),
    ("lcnet_050", SMALL, False), ("nest_tiny", 224, False), ("hiera_tiny_224", 224, False), ("tiny_vit_5m_224", 224, False),
    ("convit_tiny", 224, False), ("levit_128s", 224, False), ("deit3_small_patch16_224", 224, False),
    # added 2026-12-06 from benchmarks/timm_scan.py: resnext26ts (the export check's drift estimate), botnet26t
    # (relative position tables multiplied by queries: parameter matmuls; optional 4th item: timm arguments)
    ("resnext26ts", SMALL, False), ("botnet26t_256", 64, False, {"img_size": 64}),
]


def _timm(name: str, side: int, **kw):
    """``kw``: extra ``timm.create_model`` arguments (``img_size`` builds a fixed-size model smaller)."""
    def build():
        import timm

        torch.manual_seed(0)
        return _ready(timm.create_model(name, pretrained=False, num_classes=CLASSES, **kw)), _images(side)
    return build


def timm_entries() -> list[Entry]:
    if importlib.util.find_spec("timm") is None:
        return []
    return [Entry(f"timm/{n}", "timm", _timm(n, s, **(kw[0] if kw else {})), "cls", f"{BATCH}x3x{s}x{s}", q) for n, s, q, *kw in TIMM]


# ---------------------------------------------------------------------------------------------- Hugging Face
class _FirstOutput(nn.Module):
    """Positional-tensor forward for a Hugging Face model (``input_ids`` or ``pixel_values``...)."""

    def __init__(self, model: nn.Module, arg: str) -> None:
        super().__init__()
        self.model, self.arg = model, arg

    def forward(self, x):
        out = self.model(**{self.arg: x})
        return out[0] if isinstance(out, tuple) else out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def _hf(kind: str):
    def build():
        import transformers as tf

        torch.manual_seed(0)
        vocab, small = 128, {"vocab_size": 128}
        if kind == "bert":  # no pooler: the wrapper returns the hidden states only
            m = tf.BertModel(tf.BertConfig(**small, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                           max_position_embeddings=32), add_pooling_layer=False)
        elif kind == "roberta":
            m = tf.RobertaModel(tf.RobertaConfig(**small, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                                 max_position_embeddings=40, pad_token_id=1), add_pooling_layer=False)
        elif kind == "gpt2":
            m = tf.GPT2LMHeadModel(tf.GPT2Config(**small, n_embd=64, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0,
                                                 use_cache=False))
        elif kind in ("llama", "mistral", "qwen2"):
            cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
                   "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[kind]
            m = cls[1](cls[0](**small, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              intermediate_size=128, max_position_embeddings=32, use_cache=False))
        elif kind == "t5_encoder":
            m = tf.T5EncoderModel(tf.T5Config(**small, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4))
        elif kind == "vit":
            m = tf.ViTForImageClassification(tf.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                                          num_attention_heads=4, intermediate_size=128, num_labels=10))
            return _FirstOutput(m.eval(), "pixel_values").eval(), _images(32)
        elif kind == "whisper_encoder":
            cfg = tf.WhisperConfig(**small, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
                                   decoder_attention_heads=4, decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=16,
                                   pad_token_id=1, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)
            m = tf.WhisperModel(cfg).get_encoder()

            def mel(seed: int) -> tuple:
                return (torch.randn(BATCH, 16, 32, generator=torch.Generator().manual_seed(seed)),)
            return _FirstOutput(m.eval(), "input_features").eval(), mel
        elif kind in _MORE_HF:
            m, arg, make = _MORE_HF[kind](tf)
            return _FirstOutput(m.eval(), arg).eval(), make
        else:
            raise KeyError(kind)
        return _FirstOutput(m.eval(), "input_ids").eval(), _tokens(vocab)
    return build


_S = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 32}
_V = {"vocab_size": 128}


def _audio(seed: int) -> tuple:
    return (torch.randn(BATCH, 1600, generator=torch.Generator().manual_seed(seed)),)


_MORE_HF = {  # kind -> tf -> (model, keyword of its input, make_input); small random configs, no download
    "distilbert": lambda tf: (tf.DistilBertModel(tf.DistilBertConfig(**_V, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                                                     max_position_embeddings=32)), "input_ids", _tokens(128)),
    "albert": lambda tf: (tf.AlbertModel(tf.AlbertConfig(**_V, embedding_size=32, **_S), add_pooling_layer=False), "input_ids", _tokens(128)),
    "electra": lambda tf: (tf.ElectraModel(tf.ElectraConfig(**_V, embedding_size=32, **_S)), "input_ids", _tokens(128)),
    "deberta_v2": lambda tf: (tf.DebertaV2Model(tf.DebertaV2Config(**_V, **_S)), "input_ids", _tokens(128)),
    "mobilebert": lambda tf: (tf.MobileBertModel(tf.MobileBertConfig(**_V, hidden_size=64, embedding_size=32, intra_bottleneck_size=32,
                                                                     true_hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                                     intermediate_size=64, max_position_embeddings=32, num_feedforward_networks=2),
                                                 add_pooling_layer=False), "input_ids", _tokens(128)),
    "bart_encoder": lambda tf: (tf.BartModel(tf.BartConfig(**_V, d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                                                           decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                                           max_position_embeddings=32)).get_encoder(), "input_ids", _tokens(128)),
    "gemma": lambda tf: (tf.GemmaForCausalLM(tf.GemmaConfig(**_V, **_S, num_key_value_heads=2, head_dim=16, use_cache=False)), "input_ids", _tokens(128)),
    "phi": lambda tf: (tf.PhiForCausalLM(tf.PhiConfig(**_V, **_S, use_cache=False)), "input_ids", _tokens(128)),
    "phi3": lambda tf: (tf.Phi3ForCausalLM(tf.Phi3Config(**_V, **_S, use_cache=False, pad_token_id=0, eos_token_id=0, bos_token_id=0)),
                        "input_ids", _tokens(128)),
    "falcon": lambda tf: (tf.FalconForCausalLM(tf.FalconConfig(**_V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                               use_cache=False)), "input_ids", _tokens(128)),  # LM head tied to the embedding
    "gpt_neox": lambda tf: (tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**_V, **_S, use_cache=False)), "input_ids", _tokens(128)),
    "opt": lambda tf: (tf.OPTForCausalLM(tf.OPTConfig(**_V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                                                      max_position_embeddings=32, word_embed_proj_dim=64, use_cache=False)), "input_ids", _tokens(128)),
    "bloom": lambda tf: (tf.BloomForCausalLM(tf.BloomConfig(**_V, hidden_size=64, n_layer=2, n_head=4, use_cache=False)), "input_ids", _tokens(128)),
    "clip_vision": lambda tf: (tf.CLIPVisionModel(tf.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                                      num_attention_heads=4, image_size=32, patch_size=8)), "pixel_values", _images(32)),
    "swin": lambda tf: (tf.SwinModel(tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)),
                        "pixel_values", _images(32)),
    "convnext": lambda tf: (tf.ConvNextModel(tf.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])), "pixel_values", _images(SMALL)),
    "segformer": lambda tf: (tf.SegformerModel(tf.SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128],
                                                                  num_attention_heads=[1, 1, 2, 4], decoder_hidden_size=64)), "pixel_values", _images(SMALL)),
    # mixture of experts: 4 experts, top-2; the experts' [E, out, in] weights run through a grouped matmul under torch.export
    "mixtral": lambda tf: (tf.MixtralForCausalLM(tf.MixtralConfig(**_V, **_S, num_key_value_heads=2, num_local_experts=4,
                                                                  num_experts_per_tok=2, use_cache=False)), "input_ids", _tokens(128)),
    "qwen2_moe": lambda tf: (tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(**_V, **_S, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                                                                      moe_intermediate_size=64, shared_expert_intermediate_size=64,
                                                                      use_cache=False)), "input_ids", _tokens(128)),
    "wav2vec2": lambda tf: (tf.Wav2Vec2Model(tf.Wav2Vec2Config(**_S, conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                                                               num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)), "input_values", _audio),
}


HF = [  # (kind, task, in --quick)
    ("bert", "features", True), ("roberta", "features", False), ("gpt2", "lm", True), ("llama", "lm", True), ("mistral", "lm", False),
    ("qwen2", "lm", False), ("t5_encoder", "features", False), ("vit", "cls", False), ("whisper_encoder", "features", False),
    ("distilbert", "features", False), ("albert", "features", False), ("electra", "features", False), ("deberta_v2", "features", False),
    ("mobilebert", "features", False), ("bart_encoder", "features", False), ("gemma", "lm", False), ("phi", "lm", False),
    ("phi3", "lm", False), ("falcon", "lm", False), ("gpt_neox", "lm", False), ("opt", "lm", False), ("bloom", "lm", False),
    ("clip_vision", "features", False), ("swin", "features", False), ("convnext", "features", False), ("segformer", "features", False),
    ("wav2vec2", "features", False), ("mixtral", "lm", False), ("qwen2_moe", "lm", False),
]


def hf_entries() -> list[Entry]:
    if importlib.util.find_spec("transformers") is None:
        return []
    desc = {"vit": f"{BATCH}x3x32x32", "whisper_encoder": f"{BATCH}x16x32 mel", "clip_vision": f"{BATCH}x3x32x32", "swin": f"{BATCH}x3x32x32",
            "convnext": f"{BATCH}x3x{SMALL}x{SMALL}", "segformer": f"{BATCH}x3x{SMALL}x{SMALL}", "wav2vec2": f"{BATCH}x1600 waveform"}
    return [Entry(f"hf/{k}", "hf", _hf(k), t, desc.get(k, f"{BATCH}x16 token ids"), q) for k, t, q in HF]


# ---------------------------------------------------------------------------------------------- written here
class UNetish(nn.Module):
    """Encoder-decoder with depthwise, grouped and transposed convs, concat skips, avg/max pooling, SiLU/GELU."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.GELU())
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.fuse = nn.Conv2d(32, 16, 1)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        a = self.dw(self.stem(x))
        b = self.up(self.down(a))
        y = self.pool(torch.relu(self.fuse(torch.cat([a, b], dim=1))))
        return self.head(y.mean((2, 3)))


class MHAEncoder(nn.Module):
    """A pre-norm transformer encoder on ``nn.MultiheadAttention`` (need_weights left at its default)."""

    def __init__(self, dim: int = 64, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, stride=8)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "ln1": nn.LayerNorm(dim), "attn": nn.MultiheadAttention(dim, heads, batch_first=True),
            "ln2": nn.LayerNorm(dim), "mlp": nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)),
        }) for _ in range(2))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        for b in self.blocks:
            h = b["ln1"](x)
            x = x + b["attn"](h, h, h)[0]
            x = x + b["mlp"](b["ln2"](x))
        return self.head(x.mean(1))


class Gate(nn.Module):
    """Python control flow on a shape: fx cannot trace it (it stays a leaf); torch.export can."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.attn = nn.MultiheadAttention(dim // 4, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        if x.shape[-1] % 4 == 0:  # shape-dependent branch
            t = self.proj(x).unflatten(-1, (4, -1))
            return self.norm(x + self.attn(t, t, t)[0].flatten(1))
        return self.proj(x)


class ControlFlowNet(nn.Module):
    def __init__(self, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(3 * 8 * 8, dim)
        self.gate = Gate(dim)
        self.out = nn.Linear(dim, classes)

    def forward(self, x):
        return self.out(torch.relu(self.gate(torch.relu(self.inp(x.flatten(1))))))


def _custom(cls, side: int):
    def build():
        torch.manual_seed(0)
        return _ready(cls()), _images(side)
    return build


def custom_entries() -> list[Entry]:
    return [
        Entry("custom/unetish", "custom", _custom(UNetish, 32), "cls", f"{BATCH}x3x32x32", True, "depthwise/grouped/transposed conv, concat"),
        Entry("custom/mha_encoder", "custom", _custom(MHAEncoder, 32), "cls", f"{BATCH}x3x32x32", True, "nn.MultiheadAttention"),
        Entry("custom/control_flow", "custom", _custom(ControlFlowNet, 8), "cls", f"{BATCH}x3x8x8", True, "data-dependent branch -> leaf"),
    ]


WARMUP_BATCHES = 4  # batches of BATCH inputs that re-estimate the BatchNorm statistics (32 inputs)
WARMUP_SEED = 10_000  # seeds of the warm-up batches: the calibration distribution, none of its samples
WARMUP_MODES = ("mean", "full", "none")


def bn_warmup(model: nn.Module, make_input: Callable[[int], tuple], mode: str = "mean", batches: int = WARMUP_BATCHES) -> int:
    """Re-estimate BatchNorm running statistics on random inputs; returns how many layers it changed.

    A randomly initialised BatchNorm has running mean 0 and variance 1, so in eval mode it is the
    identity. Random ReLU/SiLU nets then accumulate an input-independent offset through depth: the
    logits of regnets, resnext50, vgg*_bn and densenet201 are nearly the same for every input
    (input-dependent part 5-16% of the output), a regime no trained network is in.

    ``benchmarks/zoo.py`` defaults to ``"none"`` (the regime of the documented full run); ``--bn-warmup mean``
    selects the harder, input-sensitive regime.

    ``mode="mean"``: centre every BatchNorm input on the data. The whole model stays in
    eval mode; a pre-hook on each BatchNorm sets its running mean to the cumulative average of its
    input's per-channel mean over ``batches`` forward passes (upstream layers are already centred
    when a layer sees its input); running variances stay 1. The input-dependent part of the logits
    rises to 20-65%, and the float network stays stable: 1% input noise (40 dB) comes out at 23-43 dB.

    ``mode="full"``: BatchNorm layers (only they) in train mode with ``momentum=None``, so both
    running mean and variance are the cumulative averages of the batch statistics and every channel
    leaves BatchNorm with unit variance. Random nets in that regime are chaotic: the same 1% input
    noise comes out at 9-28 dB and flips 12-50% of top-1 in the float model itself (regnet_x_400mf,
    resnext50, mobilenet_v2, densenet201), so top-1 agreement stops measuring quantization for any
    tool. Kept as an option for that comparison (docs/benchmarks.md).

    The warm-up inputs use seeds ``WARMUP_SEED + i``: the calibration distribution, none of the
    calibration or evaluation samples. Weights and BatchNorm's affine parameters are untouched
    (timm's zero-initialised last gamma of a residual block stays zero: that block is the identity
    either way). Models without BatchNorm (transformers, convnext, vgg without _bn) are unchanged.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    if mode not in WARMUP_MODES:
        raise ValueError(f"BatchNorm warm-up mode {mode!r}: expected one of {', '.join(WARMUP_MODES)}")
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns or mode == "none":
        return 0
    model.eval()
    if mode == "mean":
        seen: dict[nn.Module, int] = {}

        def centre(m, args):
            x = args[0]
            mu = x.mean([d for d in range(x.dim()) if d != 1])
            n = seen.get(m, 0)
            m.running_mean.mul_(n / (n + 1)).add_(mu / (n + 1))
            seen[m] = n + 1

        hooks = [m.register_forward_pre_hook(centre) for m in bns]
        try:
            with torch.no_grad():
                for i in range(batches):
                    model(*make_input(WARMUP_SEED + i))
        finally:
            for h in hooks:
                h.remove()
        return len(seen)
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            for i in range(batches):
                model(*make_input(WARMUP_SEED + i))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    return len(bns)


SCANNED: list[Entry] = []  # entries a scan (benchmarks/*_scan.py) adds for its run; the forked workers inherit them


def zoo() -> dict[str, Entry]:
    entries = torchvision_entries() + timm_entries() + hf_entries() + custom_entries() + SCANNED
    return {e.name: e for e in entries}


def weight_kinds(model: nn.Module) -> list[set[str]]:
    """The op kinds that read each distinct weight tensor of a quantizable layer (a tied weight, e.g. an
    embedding table reused by the LM head, is one entry with both kinds)."""
    from torch.nn.modules.conv import _ConvNd

    kinds: dict[int, set[str]] = {}

    def add(kind: str, w) -> None:
        if isinstance(w, torch.Tensor):
            kinds.setdefault(id(w), set()).add(kind)

    for m in model.modules():
        if isinstance(m, _ConvNd):
            add("conv_transpose" if m.transposed else "conv", m.weight)
        elif isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D":
            add("linear", m.weight)
        elif isinstance(m, nn.MultiheadAttention):
            for w in ((m.in_proj_weight,) if m._qkv_same_embed_dim else (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)):
                add("linear", w)
        elif isinstance(m, nn.Embedding):
            add("embedding", m.weight)
        elif type(m).__name__ == "PosEmbedRel":  # timm's relative position tables, multiplied by the queries
            add("linear", m.height_rel)
            add("linear", m.width_rel)
        elif type(m).__name__.endswith("Experts"):  # Hugging Face MoE layers: [E, out, in] expert weights
            for p in m.parameters(recurse=False):
                if p.dim() == 3:
                    add("experts", p)
    return list(kinds.values())
