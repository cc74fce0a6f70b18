"""Generation with a KV cache from a quantized causal LM (qgraph.generation), in PyTorch and ONNX Runtime."""

import onnx
import pytest
import torch
from torch import nn

import qgraph
from qgraph.errors import InputError
from qgraph.generation import Decode, Prefill, decode_loop

tf = pytest.importorskip("transformers")

VOCAB, NEW = 96, 8


def _llama(**kw):
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)
    return tf.LlamaForCausalLM(cfg).eval()


def _prompts(seed, rows=3, length=7, pad=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :pad], mask[0, :pad] = 0, 0  # left padding
    return {"input_ids": ids, "attention_mask": mask}


def _logits_along(prefill, decode, batch, forced):
    seen = []
    with torch.no_grad():
        decode_loop(prefill, decode, batch["input_ids"], batch["attention_mask"], forced.shape[1], on_step=seen.append, forced=forced)
    return torch.cat(seen, 1)


@pytest.fixture(scope="module")
def lm():
    model = _llama()
    return model, qgraph.quantize_for_generation(model, [_prompts(s) for s in range(1, 4)], "w8a8")


def test_float_steps_reproduce_generate():
    """The float model through the two cached graphs gives generate()'s logits at every step (left padding too)."""
    model, batch = _llama(), _prompts(0)
    with torch.no_grad():
        ref = model.generate(**batch, max_new_tokens=NEW, do_sample=False, output_logits=True, return_dict_in_generate=True)
    new = ref.sequences[:, batch["input_ids"].shape[1]:]
    ours = _logits_along(Prefill(model), Decode(model), batch, new)
    assert ours.shape == (3, new.shape[1], VOCAB)
    assert torch.allclose(ours, torch.stack(ref.logits, 1), atol=1e-5)


def test_quantized_generation_follows_float(lm):
    model, qlm = lm
    batch = _prompts(0)
    want = qgraph.float_generate(model, **batch, max_new_tokens=NEW)
    new = want[:, 7:]
    fl = _logits_along(Prefill(model), Decode(model), batch, new)
    with qlm.prefill.frozen(), qlm.decode.frozen():
        ql = _logits_along(qlm.prefill, qlm.decode, batch, new)
    assert float((fl.argmax(-1) == ql.argmax(-1)).float().mean()) >= 0.9
    assert qlm.decode.quantizers()  # the decode graph is quantized, not only the prefill one
    got = qlm.generate(**batch, max_new_tokens=NEW)
    assert got.shape == want.shape and torch.equal(got[:, :7], batch["input_ids"])


def test_onnx_runtime_generates_the_quantized_tokens(lm, tmp_path):
    _, qlm = lm
    results = qlm.export(str(tmp_path))
    assert set(results) == {"prefill", "decode", "weights"}
    assert results["weights"]["shared"] > 0 and results["weights"]["after"] < results["weights"]["before"]
    decode = onnx.load(str(tmp_path / "decode.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in decode.graph.input}
    assert dims["attention_mask"] == ["batch", "total_sequence"] and dims["past_keys_0"][2] == "past_sequence"
    onnx_lm = qgraph.OnnxLM(str(tmp_path))
    for batch in (_prompts(0), _prompts(5, rows=1, length=4, pad=0)):  # other batch size and prompt length than the example
        want = qlm.generate(**batch, max_new_tokens=NEW)
        assert torch.equal(onnx_lm.generate(**batch, max_new_tokens=NEW), want)
        new = want[:, batch["input_ids"].shape[1]:]
        with qlm.prefill.frozen(), qlm.decode.frozen():
            ql = _logits_along(qlm.prefill, qlm.decode, batch, new)
        assert (_logits_along(onnx_lm.prefill, onnx_lm.decode, batch, new) - ql).abs().max() < 1e-4
        sampled = qlm.generate(**batch, max_new_tokens=NEW, do_sample=True, top_k=20, top_p=0.9, seed=7)
        assert torch.equal(onnx_lm.generate(**batch, max_new_tokens=NEW, do_sample=True, top_k=20, top_p=0.9, seed=7), sampled)


def test_sampling(lm):
    model, qlm = lm
    batch = _prompts(0)
    greedy = qgraph.float_generate(model, **batch, max_new_tokens=NEW)
    assert torch.equal(qgraph.float_generate(model, **batch, max_new_tokens=NEW, do_sample=True, top_k=1, seed=0), greedy)
    assert torch.equal(qgraph.float_generate(model, **batch, max_new_tokens=NEW, do_sample=True, top_p=1e-6, seed=0), greedy)
    hot = [qlm.generate(**batch, max_new_tokens=NEW, do_sample=True, temperature=2.0, seed=s) for s in (0, 0, 1)]
    assert torch.equal(hot[0], hot[1]) and not torch.equal(hot[0], hot[2])  # a seed fixes the draws
    assert not torch.equal(hot[0], qlm.generate(**batch, max_new_tokens=NEW))
    for bad, match in (({"temperature": 0.0}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p")):
        with pytest.raises(InputError, match=match):
            qlm.generate(**batch, do_sample=True, **bad)


def test_the_callers_model_keeps_its_mode():
    model = _llama().train()
    qlm = qgraph.quantize_for_generation(model, _prompts(1))
    qgraph.float_generate(model, **_prompts(0), max_new_tokens=2)
    assert model.training and all(m.training for m in model.modules())
    assert not qlm.prefill.training and not qlm.decode.training


def test_eos_ends_a_row(lm):
    model, _ = lm
    batch = _prompts(0)
    free = qgraph.float_generate(model, **batch, max_new_tokens=NEW)
    eos = int(free[1, 8])  # row 1's second new token
    out = qgraph.float_generate(model, **batch, max_new_tokens=NEW, eos_token_id=eos)
    assert (out[1, 8:] == eos).all()


def test_bad_prompts_say_why(lm):
    model, qlm = lm
    right = {"input_ids": torch.tensor([[5, 6, 7], [5, 6, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    with pytest.raises(InputError, match="padding_side = 'left'"):
        qlm.generate(**right)
    with pytest.raises(InputError, match="no tokens"):
        qlm.generate(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(InputError, match="return_tensors='pt'"):
        qlm.generate([[5, 6, 7]])
    with pytest.raises(InputError, match="Hugging Face causal LM"):
        qgraph.quantize_for_generation(nn.Linear(2, 2), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(InputError, match="not found"):
        qgraph.OnnxLM("/nonexistent/dir")


def test_sliding_window_cache_is_refused():
    torch.manual_seed(0)
    cfg = tf.MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=2, sliding_window=4)
    with pytest.raises(InputError, match="DynamicSlidingWindowLayer"):
        qgraph.quantize_for_generation(tf.MistralForCausalLM(cfg).eval(), _prompts(0))


def test_a_one_token_prompt_generates_what_generate_does(lm):
    """It was refused ("prompts need at least 2 tokens"): it runs behind a masked pad token now, which
    changes no logit and is not returned."""
    model, qlm = lm
    ids = torch.tensor([[17], [23]])
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False)
    assert ref.shape == (2, 1 + NEW) and not (ref[:, 1:] == 2).any()  # no end-of-sequence: every position compares
    got = qgraph.float_generate(model, ids, max_new_tokens=NEW)
    assert torch.equal(got, ref)  # the same tokens, the prompt as given (no pad column)
    q = qlm.generate(ids, max_new_tokens=NEW)
    assert q.shape == ref.shape and torch.equal(q[:, :1], ids)
