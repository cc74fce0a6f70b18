"""A Hugging Face BERT classifier trained on scikit-learn's digits, fed like a tokenizer feeds it.

Each 8x8 image becomes a "sentence": a ``[CLS]`` token, then one token per inked pixel (its position,
64 pixel tokens; 17 to 44 of them per image), right-padded to the batch's longest sentence. :func:`tokenize` returns a ``transformers.BatchEncoding`` with ``input_ids`` and an
``attention_mask`` that is 0 on the padding, the way ``tokenizer(texts, padding=True,
return_tensors="pt")`` would, so the model is called ``model(**batch)`` and qgraph is given the
batch as it is: ``qgraph.quantize(model, batch, calib_data=[batch, ...])``.

Everything runs offline (the data ships with scikit-learn; the model is built from a small config,
no download) and trains in about six seconds on a CPU (84% test accuracy). Needs ``transformers``.

CLI factory: ``qgraph quantize examples.digits_bert:digits_bert``.
"""

from __future__ import annotations

import copy
import functools

import torch

from examples.models import load_digits_data

PAD, CLS, FIRST_PIXEL = 0, 1, 2
VOCAB = FIRST_PIXEL + 64
MAX_LEN = 1 + 64
INK = 0.5  # a pixel above this intensity is a token


def tokenize(images: torch.Tensor):
    """``[N, 1, 8, 8]`` images in ``[0, 1]`` as a padded ``BatchEncoding`` (see the module docstring)."""
    import transformers as tf

    ink = images.reshape(len(images), 64) > INK
    sentences = [torch.cat([torch.tensor([CLS]), FIRST_PIXEL + row.nonzero().flatten()]) for row in ink]
    length = max(len(s) for s in sentences)
    ids = torch.full((len(sentences), length), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sentences):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return tf.BatchEncoding({"input_ids": ids, "attention_mask": mask})


def batches(images: torch.Tensor, batch_size: int = 32) -> list:
    """``images`` as tokenized batches of ``batch_size``."""
    return [tokenize(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]


def build(seed: int = 0):
    """An untrained ``BertForSequenceClassification``: 2 layers, hidden size 32, 10 labels."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=MAX_LEN, num_labels=10, pad_token_id=PAD,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return tf.BertForSequenceClassification(cfg)


def train_digits_bert(epochs: int = 20, seed: int = 0):
    """Train :func:`build` on the digits training split (AdamW, one-cycle learning rate)."""
    x_tr, y_tr, _, _ = load_digits_data(seed)
    model = build(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    size = 32
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * -(-len(x_tr) // size))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x_tr), generator=g)
        for i in range(0, len(perm), size):
            idx = perm[i:i + size]
            loss = torch.nn.functional.cross_entropy(model(**tokenize(x_tr[idx])).logits, y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> float:
    """Top-1 accuracy of ``model(**batch).logits`` (a ``dict`` output with ``"logits"`` also works)."""
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out = model(**tokenize(images[i:i + batch_size]))
            logits = out["logits"] if isinstance(out, dict) or hasattr(out, "keys") else out.logits
            correct += int((logits.argmax(-1) == labels[i:i + batch_size]).sum())
    return correct / max(len(images), 1)


@functools.lru_cache(maxsize=2)
def _trained(epochs: int, seed: int):
    return train_digits_bert(epochs, seed)


def digits_bert(epochs: int = 20, seed: int = 0):
    """CLI factory: ``(trained BERT, a tokenized test batch of 32, 8 tokenized training batches of 32)``.

    The trained model is cached per process; each call returns an independent copy.
    """
    x_tr, _, x_te, _ = load_digits_data(seed)
    return copy.deepcopy(_trained(epochs, seed)), tokenize(x_te[:32]), batches(x_tr[:256])
