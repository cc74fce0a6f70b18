"""A Hugging Face BERT trained on scikit-learn's digits, quantized from a tokenizer-style BatchEncoding
(examples/digits_bert.py): accuracy on the real test split, in PyTorch and in ONNX Runtime, with
batches padded to their own lengths; and the CLI factory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import qgraph

tf = pytest.importorskip("transformers")

from qgraph.backends.ort import session  # noqa: E402

from examples.digits_bert import accuracy, digits_bert, tokenize  # noqa: E402
from examples.models import load_digits_data  # noqa: E402
from qgraph.cli import app  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    model, example, calib = digits_bert()
    _, _, x_te, y_te = load_digits_data(0)
    return model, example, calib, x_te, y_te


def test_w8a8_bert_keeps_its_digits_accuracy_in_pytorch_and_onnx(trained, tmp_path):
    model, example, calib, x_te, y_te = trained
    float_acc = accuracy(model, x_te, y_te)
    assert float_acc > 0.75  # it learned the task (84% at the shipped settings)
    assert len({b["input_ids"].shape[1] for b in calib}) > 1  # padded per batch, as a tokenizer pads
    qm = qgraph.quantize(model, example, "w8a8", calib_data=calib)
    assert qm.qgraph.capture.keywords == ("input_ids", "attention_mask")
    q_acc = accuracy(qm, x_te, y_te)
    assert abs(q_acc - float_acc) <= 0.02

    result = qm.export(str(tmp_path / "bert"))
    assert result.dynamic_batch and result.max_abs_error <= result.tolerance
    sess = session(result.onnx_path, exact_int8=True)
    correct = 0
    for i in range(0, len(x_te), 100):  # other batch sizes and sequence lengths than the example's
        enc = tokenize(x_te[i:i + 100])
        got = sess.run(None, {k: v.numpy() for k, v in enc.items()})[0]
        with torch.no_grad():
            want = qm(**enc).logits.numpy()
        assert np.abs(got - want).max() <= result.tolerance
        correct += int((got.argmax(1) == y_te[i:i + 100].numpy()).sum())
    assert correct / len(x_te) == pytest.approx(q_acc, abs=1 / len(x_te))


def test_cli_quantizes_the_factory(tmp_path):
    res = CliRunner().invoke(app, ["quantize", "examples.digits_bert:digits_bert", "--out", str(tmp_path), "--no-summary"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "digits_bert.onnx").exists()
    assert "batch           dynamic" in res.output
    assert "input           input_ids [batch, sequence] int64" in res.output
    assert "input           attention_mask [batch, sequence] int64" in res.output


def test_cli_factory_may_return_one_batch_by_name_as_calib_batches():
    from qgraph import cli

    model, example, calib = digits_bert()
    _, _, got_calib = cli.call_factory("m:f", lambda: (model, example, calib[0]))
    assert isinstance(got_calib, list) and len(got_calib) == 1 and got_calib[0] is calib[0]  # not its keys
    _, _, listed = cli.call_factory("m:f", lambda: (model, example, calib))
    assert listed is calib
