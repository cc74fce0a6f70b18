"""Scan: more Hugging Face architectures through the zoo's w8a8 path, to find what breaks (no peers).

Each model is a small random config (no download), built here and run through ``zoo_worker.run_model``
(quantize with the zoo's calibration, judge on its 96 held-out inputs, export and verify in ONNX Runtime)
in a forked child with a timeout. The zoo itself (``zoo_models.HF``) keeps the architectures that found
bugs; this scan covers the breadth.

    PYTHONPATH=. .venv/bin/python benchmarks/hf_scan.py                 # all, about 7 min on two cores
    PYTHONPATH=. .venv/bin/python benchmarks/hf_scan.py gemma2,mamba    # some
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)

import benchmarks.zoo_models as zm  # noqa: E402
from benchmarks.scan_runner import cli  # noqa: E402

_V, _S = zm._V, zm._S
_ENC = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
_AUDIO = {"conv_dim": (32, 32, 32), "conv_stride": (5, 2, 2), "conv_kernel": (10, 3, 3), "num_conv_pos_embeddings": 16,
          "num_conv_pos_embedding_groups": 4}
_TOKENS = zm._tokens(128)


def _lm(cls, cfg, **kw):
    return lambda tf: (getattr(tf, cls)(getattr(tf, cfg)(**_V, use_cache=False, **kw)), "input_ids", _TOKENS)


def _text(cls, cfg, pool=False, **kw):
    extra = {"add_pooling_layer": False} if pool else {}
    return lambda tf: (getattr(tf, cls)(getattr(tf, cfg)(**_V, **kw), **extra), "input_ids", _TOKENS)


def _vision(cls, cfg, side=32, pool=False, **kw):
    extra = {"add_pooling_layer": False} if pool else {}
    return lambda tf: (getattr(tf, cls)(getattr(tf, cfg)(**kw), **extra), "pixel_values", zm._images(side))


def _encoder_of(cls, cfg, **kw):
    return lambda tf: (getattr(tf, cls)(getattr(tf, cfg)(**_V, d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                                                         decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                                         max_position_embeddings=32, **kw)).get_encoder(), "input_ids", _TOKENS)


def _audio(cls, cfg):
    return lambda tf: (getattr(tf, cls)(getattr(tf, cfg)(**_S, **_AUDIO)), "input_values", zm._audio)


MODELS = {  # name -> (task, builder)
    "qwen3": ("lm", _lm("Qwen3ForCausalLM", "Qwen3Config", **_S, num_key_value_heads=2, head_dim=16)),
    "starcoder2": ("lm", _lm("Starcoder2ForCausalLM", "Starcoder2Config", **_S, num_key_value_heads=2)),
    "gptj": ("lm", _lm("GPTJForCausalLM", "GPTJConfig", n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=32)),
    "gpt_neo": ("lm", _lm("GPTNeoForCausalLM", "GPTNeoConfig", hidden_size=64, num_layers=2, num_heads=4,
                          attention_types=[[["global", "local"], 1]], max_position_embeddings=32, window_size=8)),
    "codegen": ("lm", _lm("CodeGenForCausalLM", "CodeGenConfig", n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=32, n_ctx=32)),
    "xglm": ("lm", _lm("XGLMForCausalLM", "XGLMConfig", d_model=64, num_layers=2, attention_heads=4, ffn_dim=128, max_position_embeddings=32)),
    "mpt": ("lm", _lm("MptForCausalLM", "MptConfig", d_model=64, n_heads=4, n_layers=2, max_seq_len=32)),
    "stablelm": ("lm", _lm("StableLmForCausalLM", "StableLmConfig", **_S, num_key_value_heads=4)),
    "olmo": ("lm", _lm("OlmoForCausalLM", "OlmoConfig", **_S)),
    "cohere": ("lm", _lm("CohereForCausalLM", "CohereConfig", **_S, num_key_value_heads=2)),
    "granite": ("lm", _lm("GraniteForCausalLM", "GraniteConfig", **_S)),
    "gemma2": ("lm", _lm("Gemma2ForCausalLM", "Gemma2Config", **_S, num_key_value_heads=2, head_dim=16, sliding_window=8)),
    "mamba": ("lm", _lm("MambaForCausalLM", "MambaConfig", hidden_size=64, num_hidden_layers=2, state_size=8)),
    "xlm_roberta": ("features", _text("XLMRobertaModel", "XLMRobertaConfig", pool=True, **_ENC, pad_token_id=1, max_position_embeddings=40)),
    "mpnet": ("features", _text("MPNetModel", "MPNetConfig", pool=True, **_ENC, max_position_embeddings=40)),
    "funnel": ("features", _text("FunnelModel", "FunnelConfig", block_sizes=[1, 1], d_model=64, n_head=4, d_head=16, d_inner=128)),
    "squeezebert": ("features", _text("SqueezeBertModel", "SqueezeBertConfig", **_ENC, embedding_size=64, max_position_embeddings=32)),
    "convbert": ("features", _text("ConvBertModel", "ConvBertConfig", **_ENC, embedding_size=64, max_position_embeddings=32)),
    "longformer": ("features", _text("LongformerModel", "LongformerConfig", pool=True, **_ENC, attention_window=4,
                                     max_position_embeddings=40, pad_token_id=1)),
    "mt5_encoder": ("features", _text("MT5EncoderModel", "MT5Config", d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)),
    "pegasus_encoder": ("features", _encoder_of("PegasusModel", "PegasusConfig")),
    "marian_encoder": ("features", _encoder_of("MarianModel", "MarianConfig", pad_token_id=0, decoder_vocab_size=128)),
    "beit": ("features", _vision("BeitModel", "BeitConfig", pool=True, image_size=32, patch_size=8, **_ENC)),
    "dinov2": ("features", _vision("Dinov2Model", "Dinov2Config", image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, mlp_ratio=2)),
    "deit": ("features", _vision("DeiTModel", "DeiTConfig", pool=True, image_size=32, patch_size=8, **_ENC)),
    "yolos": ("features", _vision("YolosModel", "YolosConfig", pool=True, image_size=[32, 32], patch_size=8, **_ENC, num_detection_tokens=5)),
    "siglip_vision": ("features", _vision("SiglipVisionModel", "SiglipVisionConfig", image_size=32, patch_size=8, **_ENC)),
    "levit": ("features", _vision("LevitModel", "LevitConfig", side=64, image_size=64)),
    "mobilevit": ("features", _vision("MobileViTModel", "MobileViTConfig", side=64, image_size=64)),
    "poolformer": ("features", _vision("PoolFormerModel", "PoolFormerConfig", side=64, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])),
    "resnet": ("features", _vision("ResNetModel", "ResNetConfig", side=64, embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                   depths=[1, 1, 1, 1])),
    "regnet": ("features", _vision("RegNetModel", "RegNetConfig", side=64, embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                   depths=[1, 1, 1, 1], groups_width=8)),
    "bit": ("features", _vision("BitModel", "BitConfig", side=64, embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                                num_groups=8)),  # weight-standardized convs + GroupNorm
    "swinv2": ("features", _vision("Swinv2Model", "Swinv2Config", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                   window_size=4)),
    "convnextv2": ("features", _vision("ConvNextV2Model", "ConvNextV2Config", side=64, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])),
    "focalnet": ("features", _vision("FocalNetModel", "FocalNetConfig", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1])),
    "mobilenet_v2": ("features", _vision("MobileNetV2Model", "MobileNetV2Config", side=64, image_size=64, depth_multiplier=0.35)),
    "hubert": ("features", _audio("HubertModel", "HubertConfig")),
    "data2vec_audio": ("features", _audio("Data2VecAudioModel", "Data2VecAudioConfig")),
}


def _register(names: list[str]) -> None:
    """Make the scan's models visible to ``zoo_models.zoo()`` as ``hf/scan_<name>`` (the forked children inherit it)."""
    for k in names:
        zm._MORE_HF[f"scan_{k}"] = MODELS[k][1]
        zm.HF.append((f"scan_{k}", MODELS[k][0], False))


def main(argv=None) -> int:
    return cli(argv, __doc__.split("\n\n")[0], list(MODELS), _register, "hf/scan_", 400.0)


if __name__ == "__main__":
    sys.exit(main())
