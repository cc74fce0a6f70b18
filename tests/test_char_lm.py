"""A character-level Llama trained on text that ships with scikit-learn keeps its held-out accuracy when
quantized for generation, in PyTorch and in ONNX Runtime (examples/char_lm.py)."""

import pytest

pytest.importorskip("transformers")

from examples import char_lm  # noqa: E402

STEPS = 150  # the example trains 500; this is enough to be far above the 21% of always guessing the commonest character


def test_quantized_generation_keeps_accuracy(tmp_path):
    r = char_lm.run(str(tmp_path), "w8a8", steps=STEPS)
    fp32, fake_quant, onnx_runtime = r["accuracy"].values()
    assert fp32 > 0.30
    assert fake_quant >= fp32 - 0.02
    assert abs(onnx_runtime - fake_quant) <= 2 / r["scored"]  # the same argmax but for near-ties
    # int8 weights written once for both graphs (a quarter of the float bytes), plus two small graphs (~50 KB each)
    assert r["onnx_bytes"] < r["float_bytes"] * 0.55
    assert r["samples"]["FP32"].startswith("The data set contains ")
