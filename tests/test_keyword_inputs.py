"""Example inputs given by name (a dict, a tokenizer's BatchEncoding): capture, calibrate, call, export, load."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from qgraph.backends.ort import session
from torch import nn

import qgraph
from qgraph.errors import InputError
from qgraph.summary import sqnr_db


class TokenNet(nn.Module):
    """A Hugging Face-like forward: every argument optional, flags, and a ``**kwargs`` catch-all."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, input_ids=None, token_type_ids=None, attention_mask=None, return_dict=True, **kwargs):
        h = self.emb(input_ids)
        if token_type_ids is not None:
            h = h + token_type_ids.unsqueeze(-1).float()
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1).float()
        logits = self.head(torch.relu(self.mix(h))).mean(1)
        return {"logits": logits} if return_dict else logits


class ShapeGatedTokenNet(TokenNet):
    """Control flow on a shape: symbolic tracing fails, torch.export captures it."""

    def forward(self, input_ids=None, token_type_ids=None, attention_mask=None, return_dict=True, **kwargs):
        if input_ids.shape[1] > 4:
            input_ids = input_ids.flip(1)
        return super().forward(input_ids, token_type_ids, attention_mask, return_dict)


def _batch(n: int, seed: int = 0, length: int = 7) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 5:] = 0
    # deliberately not in forward's order: the graph takes forward's order
    return {"attention_mask": mask, "input_ids": torch.randint(0, 50, (n, length), generator=g)}


@pytest.mark.parametrize("cls, route", [(TokenNet, "symbolic_trace"), (ShapeGatedTokenNet, "torch.export")])
def test_dict_inputs_quantize_call_and_export_by_name(cls, route, tmp_path):
    torch.manual_seed(0)
    model = cls().eval()
    example = _batch(4)
    # batches padded to their own lengths, as a tokenizer pads them: the sequence length stays dynamic
    qm = qgraph.quantize(model, example, calib_data=[_batch(8, s, length=7 + 2 * s) for s in range(3)])
    cap = qm.qgraph.capture
    assert cap.route == route
    assert cap.keywords == ("input_ids", "attention_mask")  # forward's order, the flag and **kwargs left out
    placeholders = [n.target for n in qm.qgraph.graph.nodes if n.op == "placeholder"]
    assert placeholders == ["input_ids", "attention_mask"]

    new = _batch(3, seed=9, length=6)  # another batch size and length, called by name and positionally
    by_name = qm(**new)["logits"]
    assert torch.equal(by_name, qm(new["input_ids"], new["attention_mask"])["logits"])
    with torch.no_grad():
        ref = model(**new)["logits"]
    assert sqnr_db(ref, by_name) > 25

    result = qm.export(str(tmp_path / "m.onnx"))
    assert result.max_abs_error <= result.tolerance
    proto = onnx.load(result.onnx_path)
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask"]
    assert all([d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "sequence"] for i in proto.graph.input)
    out = session(result.onnx_path, exact_int8=True).run(None, {k: v.numpy() for k, v in new.items()})[0]
    with torch.no_grad():
        want = qm(**new)["logits"].numpy()
    assert np.abs(out - want).max() <= result.tolerance


def test_single_mapping_calibration_batch_and_report():
    torch.manual_seed(0)
    model = TokenNet().eval()
    one = _batch(16, seed=3)
    qm = qgraph.quantize(model, _batch(2), calib_data=one)  # one batch by name, not {task: batches}
    listed = qgraph.quantize(model, _batch(2), calib_data=[one])
    default = qgraph.quantize(model, _batch(2))  # calibrated on the example alone: other activation scales
    scales = {n: q.scale for n, q in qm.quantizers().items()}
    assert all(torch.equal(scales[n], q.scale) for n, q in listed.quantizers().items())
    assert any(not torch.equal(scales[n], q.scale) for n, q in default.quantizers().items())
    rows = qm.summary_rows(one)
    assert rows and all(r["sqnr_db"] is None or r["sqnr_db"] > 15 for r in rows)
    assert qm.report(one).ranking


def test_hugging_face_model_called_with_a_batch_encoding(tmp_path):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=16, num_labels=3)
    model = tf.BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (4, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    enc = tf.BatchEncoding({"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask})
    qm = qgraph.quantize(model, enc, calib_data=enc)
    assert qm.qgraph.capture.keywords == ("input_ids", "attention_mask", "token_type_ids")  # BertForSequenceClassification's order
    # symbolic tracing refuses the decorated forward; the note says so instead of fx's "co_varnames is too small"
    assert "fx cannot trace BertForSequenceClassification.forward: a decorator wraps it" in qm.qgraph.capture.describe()
    with torch.no_grad():
        ref = model(**enc).logits
    assert sqnr_db(ref, qm(**enc).logits) > 20
    result = qm.export(str(tmp_path / "bert.onnx"))
    assert result.max_abs_error <= result.tolerance
    assert [i.name for i in onnx.load(result.onnx_path).graph.input] == list(qm.qgraph.capture.keywords)

    fp = qgraph.export_onnx(model, enc, str(tmp_path / "bert_fp.onnx"))  # the float baseline, by name too
    assert [i.name for i in fp.graph.input] == list(qm.qgraph.capture.keywords)
    out = session(str(tmp_path / "bert_fp.onnx")).run(None, {k: v.numpy() for k, v in enc.items()})[0]
    assert np.abs(out - ref.numpy()).max() < 1e-4


def test_qpack_of_a_dict_input_model_loads_without_example_inputs(tmp_path):
    torch.manual_seed(0)
    model = TokenNet().eval()
    qm = qgraph.quantize(model, _batch(4), calib_data=[_batch(8)])
    result = qm.export(str(tmp_path / "m.onnx"), verify=False)
    fresh = TokenNet()  # other weights: load replaces them
    back = qgraph.load(result.qpack_path, fresh)
    assert back.qgraph.capture.keywords == ("input_ids", "attention_mask")
    new = _batch(3, seed=5)
    with torch.no_grad():
        assert torch.equal(back(**new)["logits"], qm(**new)["logits"])


def test_unknown_name_in_example_inputs_is_named():
    class Strict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, scale=1.0):
            return self.fc(x) * scale

    with pytest.raises(InputError, match=r"no parameter named 'inputs'; it takes x, scale"):
        qgraph.quantize(Strict(), {"inputs": torch.randn(2, 4)})
    with pytest.raises(InputError, match=r"lack 'x', which the model's forward\(\) requires"):
        qgraph.quantize(Strict(), {"scale": torch.tensor(2.0)})
    with pytest.raises(InputError, match=r"example input 'input_ids' is a list, not a tensor: call the tokenizer with return_tensors='pt'"):
        qgraph.quantize(TokenNet(), {"input_ids": [[1, 2, 3], [4, 5, 6]]})  # a tokenizer called without return_tensors
    with pytest.raises(InputError, match=r"batch 0 does not fit.*batch input 'attention_mask' is a NumPy array, not a tensor"):
        qgraph.quantize(TokenNet(), _batch(2), calib_data=[{k: v.numpy() for k, v in _batch(2).items()}])


def test_batches_must_match_the_captured_names():
    torch.manual_seed(0)
    qm = qgraph.quantize(TokenNet().eval(), _batch(2))
    bad = _batch(2)
    bad["labels"] = torch.zeros(2, dtype=torch.long)
    with pytest.raises(InputError, match=r"not captured labels \(pass \{k: v for k, v in batch.items\(\) if k in \('input_ids', 'attention_mask'\)\}"):
        qm.summary_rows(bad)
    with pytest.raises(InputError, match="missing attention_mask"):
        qgraph.quantize(TokenNet().eval(), _batch(2), calib_data=[{"input_ids": torch.zeros(2, 7, dtype=torch.long)}])

    positional = qgraph.quantize(nn.Sequential(nn.Linear(4, 4)).eval(), torch.randn(2, 4))
    with pytest.raises(InputError, match="captured from positional example inputs"):
        positional.summary_rows({"x": torch.randn(2, 4)})


class PositionalTokens(nn.Module):
    """Token inputs passed positionally (a wrapper around a Hugging Face-like model)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ShapeGatedTokenNet()

    def forward(self, input_ids, attention_mask):
        return self.net(input_ids, attention_mask=attention_mask)["logits"]


def test_positional_token_inputs_keep_a_dynamic_sequence_length(tmp_path):
    torch.manual_seed(0)
    batches = [_batch(8, s, length=7 + 2 * s) for s in range(3)]
    qm = qgraph.quantize(PositionalTokens().eval(), (batches[0]["input_ids"], batches[0]["attention_mask"]),
                         calib_data=[(b["input_ids"], b["attention_mask"]) for b in batches])
    assert qm.qgraph.capture.route == "torch.export" and not qm.qgraph.capture.static_sequence
    new = _batch(3, seed=9, length=12)
    out = qm(new["input_ids"], new["attention_mask"])
    result = qm.export(str(tmp_path / "p.onnx"))
    got = session(result.onnx_path, exact_int8=True).run(None, {"input_ids": new["input_ids"].numpy(),
                                                "attention_mask": new["attention_mask"].numpy()})[0]
    assert np.abs(got - out.detach().numpy()).max() <= result.tolerance


class EncoderDecoderTokens(nn.Module):
    """Two token inputs whose lengths are independent (an encoder's and a decoder's)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.out = nn.Linear(16, 8)

    def forward(self, input_ids, decoder_input_ids):
        context = self.emb(input_ids).mean(1, keepdim=True)
        return self.out(torch.relu(self.emb(decoder_input_ids) + context))


def test_independent_sequence_lengths_get_their_own_names_in_the_onnx_file(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = {"input_ids": torch.randint(0, 50, (4, 12), generator=g), "decoder_input_ids": torch.randint(0, 50, (4, 8), generator=g)}
    qm = qgraph.quantize(EncoderDecoderTokens().eval(), ids)
    result = qm.export(str(tmp_path / "ed.onnx"))
    proto = onnx.load(result.onnx_path)
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims == {"input_ids": ["batch", "sequence"], "decoder_input_ids": ["batch", "decoder_input_ids_sequence"]}
    new = {"input_ids": torch.randint(0, 50, (2, 5), generator=g), "decoder_input_ids": torch.randint(0, 50, (2, 9), generator=g)}
    got = session(result.onnx_path, exact_int8=True).run(None, {k: v.numpy() for k, v in new.items()})[0]
    with torch.no_grad():
        want = qm(**new).numpy()
    assert got.shape == (2, 9, 8) and np.abs(got - want).max() <= result.tolerance


def test_qat_trains_on_batches_by_name_of_varying_length(tmp_path):
    torch.manual_seed(0)
    model = TokenNet().eval()
    batches = [_batch(8, s, length=5 + s) for s in range(4)]
    qm = qgraph.quantize(model, batches[0], "w8a8", calib_data=batches, qat=True)
    scales = {n: q.scale.detach().clone() for n, q in qm.quantizers().items() if q.scale.requires_grad}
    assert scales
    opt = torch.optim.SGD(qm.parameters(), lr=0.05)
    target = torch.arange(8) % 5
    for b in batches * 3:
        loss = torch.nn.functional.cross_entropy(qm(**b)["logits"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = [n for n, q in qm.quantizers().items() if n in scales and not torch.equal(q.scale.detach(), scales[n])]
    assert moved  # the learnable scales took gradient steps through batches by name
    result = qm.eval().export(str(tmp_path / "qat.onnx"))
    new = _batch(2, seed=5, length=10)
    got = session(result.onnx_path, exact_int8=True).run(None, {k: v.numpy() for k, v in new.items()})[0]
    with torch.no_grad():
        assert np.abs(got - qm(**new)["logits"].numpy()).max() <= result.tolerance


class FixedLengthTokenNet(ShapeGatedTokenNet):
    """A head over the flattened sequence: only the example's length fits (torch.export route)."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Linear(7 * 16, 5)

    def forward(self, input_ids=None, attention_mask=None):
        if input_ids.shape[1] > 4:
            input_ids = input_ids.flip(1)
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1).float()
        return self.flat(h.flatten(1))


def test_a_fixed_sequence_length_is_said_and_kept_in_the_onnx_file(tmp_path):
    torch.manual_seed(0)
    qm = qgraph.quantize(FixedLengthTokenNet().eval(), _batch(4), calib_data=[_batch(8, s) for s in range(2)])
    cap = qm.qgraph.capture
    assert cap.route == "torch.export" and cap.static_sequence and not cap.static_batch
    assert "fixed the token inputs' sequence length (7)" in cap.describe()
    result = qm.export(str(tmp_path / "fixed.onnx"))
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx.load(result.onnx_path).graph.input]
    assert dims == [["batch", 7], ["batch", 7]]
    with pytest.raises(InputError, match="sequence length|input shapes"):
        qm(**_batch(2, length=9))


def test_a_list_of_numbers_by_name_is_fine_where_forward_takes_one():
    class Picks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x, columns=(0, 1)):
            return self.fc(x)[:, list(columns)]

    model = Picks().eval()
    qm = qgraph.quantize(model, {"x": torch.randn(4, 6), "columns": [2, 0]}, calib_data=[{"x": torch.randn(256, 6), "columns": [2, 0]}])
    x = torch.randn(2, 6)
    with torch.no_grad():
        want = model(x, [2, 0])
    assert sqnr_db(want, qm(x, [2, 0])) > 30 and torch.equal(qm(x, [2, 0]), qm(x=x, columns=[2, 0]))
    with pytest.raises(InputError, match=r"columns\[0\] == 2 does not hold"):  # torch.export fixed the numbers: refused, not ignored
        qm(x, [1, 2])


def test_a_forward_that_takes_one_dict_gets_it_wrapped_in_a_tuple():
    class DictIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, batch):
            return self.fc(batch["image"])

    inputs = {"image": torch.randn(3, 4)}
    with pytest.raises(InputError, match=r"no parameter named 'image'; it takes batch \(to pass the mapping itself as 'batch', "
                                          r"wrap it in a tuple"):
        qgraph.quantize(DictIn(), inputs)
    qm = qgraph.quantize(DictIn(), (inputs,))
    assert qm(inputs).shape == (3, 2)


def test_a_mask_of_ones_at_capture_still_masks_padding_later():
    """Captured from an unpadded batch (mask all ones), the graph must not have dropped the mask:
    a left-padded batch changes a causal LM's outputs, in the quantized model as in the float one."""
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               num_key_value_heads=1, intermediate_size=64, use_cache=False)).eval()
    ids = torch.randint(1, 100, (4, 10), generator=torch.Generator().manual_seed(0))
    ones = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    qm = qgraph.quantize(model, ones, "w8a8")
    padded = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    padded["attention_mask"][:, :4] = 0
    with torch.no_grad():
        f, q = model(**padded).logits[:, 4:], qm(**padded).logits[:, 4:]
        moved = (f - model(**ones).logits[:, 4:]).abs().max()
    assert moved > 0.05  # the padding matters to this model
    assert sqnr_db(f, q) > 25  # and the quantized graph follows it


class _TaskHeads(nn.Module):
    """A multi-task model whose head is picked by a string argument (``model(x=..., task="seg")``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.heads = nn.ModuleDict({"cls": nn.Linear(16, 3), "seg": nn.Linear(16, 5)})

    def forward(self, x, task: str = "cls"):
        return self.heads[task](torch.relu(self.body(x)))


def test_a_string_input_is_recorded_in_the_qpack_and_its_value_is_named(tmp_path):
    """A string among the inputs by name could not be recorded in the qpack ("got str"); and calling the
    model with another value spoke of input shapes. The value is recorded now, and the error says that
    the string is part of the graph."""
    torch.manual_seed(0)
    model = _TaskHeads().eval()
    g = torch.Generator().manual_seed(1)
    batches = [{"x": torch.randn(4, 8, generator=g), "task": "seg"} for _ in range(3)]
    qm = qgraph.quantize(model, batches[0], "w8a8", batches[1:])
    res = qm.export(str(tmp_path / "tasks"))
    back = qgraph.load(res.qpack_path, model)
    with torch.no_grad(), qm.frozen(), back.frozen():
        assert torch.equal(back(**batches[1]), qm(**batches[1])) and qm(**batches[1]).shape == (4, 5)
        with pytest.raises(qgraph.ShapeGuardError, match="fixed the value of its non-tensor inputs: .*'cls'.*quantize once per value"):
            qm(x=batches[1]["x"], task="cls")
