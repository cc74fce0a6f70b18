"""A character-level Hugging Face Llama trained on scikit-learn's dataset descriptions, quantized for generation.

The corpus is the ``.rst`` descriptions that ship inside scikit-learn (``sklearn/datasets/descr``,
about 43 KB of English with tables and citations), one token per character. The last tenth is held
out. A 2-layer ``LlamaForCausalLM`` (hidden 64) trains for a few hundred steps on random windows,
about 20 seconds on two CPU cores, offline (no download). Then
``qgraph.quantize_for_generation`` makes the W8A8 prefill and decode graphs, and the held-out
next-character accuracy is measured three ways along the same text: the float model, the quantized
model in PyTorch and the exported ONNX files in ONNX Runtime (both through the KV cache: prefill
on a prompt, then one decode step per character). Needs ``transformers``.

    .venv/bin/python -m examples.char_lm
"""

from __future__ import annotations

import functools
import glob
import os

import torch

CONTEXT = 64  # training window
PROMPT = 16  # characters before the first scored one
SCORED = 48  # characters scored per held-out window (teacher forced through the cache)
STEPS, LR = 500, 3e-3


@functools.lru_cache(maxsize=1)
def corpus() -> str:
    import sklearn.datasets

    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "descr")
    texts = [open(p, encoding="utf-8").read() for p in sorted(glob.glob(os.path.join(folder, "*.rst")))]
    if not texts:
        raise FileNotFoundError(f"no .rst descriptions under {folder}")
    return "\n".join(texts)


def vocabulary() -> list[str]:
    return sorted(set(corpus()))


def encode(text: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(vocabulary())}
    return torch.tensor([index[c] for c in text], dtype=torch.long)


def decode(ids) -> str:
    chars = vocabulary()
    return "".join(chars[int(i)] for i in ids)


def split() -> tuple[torch.Tensor, torch.Tensor]:
    ids = encode(corpus())
    cut = int(len(ids) * 0.9)
    return ids[:cut], ids[cut:]


def build():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=len(vocabulary()), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=None, bos_token_id=None, eos_token_id=None)
    return tf.LlamaForCausalLM(cfg)


def windows(ids: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(ids) - length, (n,), generator=generator)
    return torch.stack([ids[s:s + length] for s in starts.tolist()])


@functools.lru_cache(maxsize=1)
def trained(steps: int = STEPS):
    """The model trained on the first nine tenths of the corpus (cached per process)."""
    train, _ = split()
    model = build()
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        batch = windows(train, 32, CONTEXT, g)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def held_out_windows(count: int = 16) -> torch.Tensor:
    """``count`` evenly spaced held-out windows of ``PROMPT + SCORED`` characters."""
    _, test = split()
    length = PROMPT + SCORED
    starts = torch.linspace(0, len(test) - length - 1, count).long().tolist()
    return torch.stack([test[s:s + length] for s in starts])


def calibration_prompts(batches: int = 4, rows: int = 8) -> list[dict]:
    train, _ = split()
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(batches):
        ids = windows(train, rows, PROMPT, g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def next_char_accuracy(prefill, decode_step, text: torch.Tensor) -> float:
    """Top-1 accuracy on the ``SCORED`` characters after each window's prompt, through the KV cache."""
    from qgraph.generation import decode_loop

    seen: list[torch.Tensor] = []
    prompt, target = text[:, :PROMPT], text[:, PROMPT:]
    with torch.no_grad():
        decode_loop(prefill, decode_step, prompt, torch.ones_like(prompt), SCORED, on_step=seen.append, forced=target)
    return float((torch.cat(seen, 1).argmax(-1) == target).float().mean())


def run(out_dir: str = "out/char_lm", recipe: str = "w8a8", steps: int = STEPS) -> dict:
    """Train (cached), quantize for generation, export; the held-out accuracies, file sizes and two samples."""
    from qgraph.backends.ort import int8_saturates

    import qgraph
    from qgraph.generation import Decode, Prefill

    model = trained(steps)
    text = held_out_windows()
    qlm = qgraph.quantize_for_generation(model, calibration_prompts(), recipe)
    with qlm.prefill.frozen(), qlm.decode.frozen():
        quant_acc = next_char_accuracy(qlm.prefill, qlm.decode, text)
    qlm.export(out_dir, uint8_weights=int8_saturates())  # exact under any session options on this CPU (examples/quickstart.py)
    onnx_lm = qgraph.OnnxLM(out_dir)
    prompt = encode("The data set contains ")[None]
    return {
        "accuracy": {"FP32 (PyTorch)": next_char_accuracy(Prefill(model), Decode(model), text),
                     f"{recipe.upper()} fake-quant (PyTorch)": quant_acc,
                     f"{recipe.upper()} (ONNX Runtime)": next_char_accuracy(onnx_lm.prefill, onnx_lm.decode, text)},
        "onnx_bytes": sum(os.path.getsize(os.path.join(out_dir, f)) for f in ("prefill.onnx", "decode.onnx", "weights.bin")),
        "float_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        "samples": {"FP32": decode(qgraph.float_generate(model, prompt, max_new_tokens=40)[0]),
                    f"{recipe.upper()} ORT": decode(onnx_lm.generate(prompt, max_new_tokens=40)[0])},
        "scored": text.shape[0] * SCORED,
    }


def main() -> None:
    r = run()
    print(f"held-out next-character accuracy ({r['scored']} characters, through the KV cache):")
    for k, v in r["accuracy"].items():
        print(f"  {k:28s} {v:.2%}")
    for k, v in r["samples"].items():
        print(f"  {k:9s} {v!r}")


if __name__ == "__main__":
    main()
