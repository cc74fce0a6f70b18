"""Zoo models: torchvision CNNs and tiny Hugging Face transformers quantize W8A8 and export verified ONNX."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

import qgraph

MIN_SQNR_DB = 20.0  # quantized vs float model output, W8A8


def _torchvision(name: str):
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    return model, torch.randn(1, 3, 64, 64)


def _hf(name: str):
    import transformers as tf

    torch.manual_seed(0)
    if name == "bert":
        cfg = tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=16)
        model = tf.BertModel(cfg)
    elif name == "gpt2":
        cfg = tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0)
        model = tf.GPT2Model(cfg)
    else:
        cfg = tf.LlamaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128, max_position_embeddings=16)
        model = tf.LlamaModel(cfg)
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(1))
    return model.eval(), ids


def _weighted_layers(model: nn.Module) -> int:
    """Conv / Linear layers (and GPT-2's Conv1D, a transposed linear), and embedding tables (w8a8
    quantizes them weight-only, per row)."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)) or type(m).__name__ == "Conv1D" for m in model.modules())


def _first_tensor(out) -> torch.Tensor:
    return next(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))


def _sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    noise = (ref - got).pow(2).sum().item()
    return float("inf") if noise == 0 else 10 * torch.log10(ref.pow(2).sum() / noise).item()


MODELS = {
    "resnet18": (lambda: _torchvision("resnet18"), "symbolic_trace"),
    "mobilenet_v3_small": (lambda: _torchvision("mobilenet_v3_small"), "symbolic_trace"),
    "bert": (lambda: _hf("bert"), "torch.export"),
    "gpt2": (lambda: _hf("gpt2"), "torch.export"),
    "llama": (lambda: _hf("llama"), "torch.export"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_zoo_model_quantizes_and_exports(name, tmp_path):
    build, route = MODELS[name]
    model, x = build()
    with torch.no_grad():
        ref = _first_tensor(model(x))
    qm = qgraph.quantize(model, x, "w8a8")
    assert qm.qgraph.capture.route == route
    weight_q = [q for q in qm.quantizers().values() if q.role == "weight"]
    assert len(weight_q) == _weighted_layers(model), "every conv / linear / embedding layer gets a weight quantizer"
    assert all(q.initialized and q.spec.bits == 8 for q in qm.quantizers().values())
    assert any(q.role == "activation" for q in qm.quantizers().values())
    with torch.no_grad():
        got = _first_tensor(qm(x))
    assert got.shape == ref.shape
    sqnr = _sqnr_db(ref, got)
    assert MIN_SQNR_DB < sqnr < 80, f"{name}: output SQNR {sqnr:.1f} dB"
    result = qm.export(str(tmp_path / name))
    assert result.max_abs_error <= result.tolerance
    assert result.onnx_bytes > 0
