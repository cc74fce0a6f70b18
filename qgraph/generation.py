"""Text generation (greedy or sampled) with a KV cache from a quantized Hugging Face causal LM, in PyTorch and ONNX Runtime.

A quantized causal LM captured as one graph returns logits only (the cache object is not a tensor),
so each new token would re-run the whole text. Here the model is captured as two graphs whose
inputs and outputs are plain tensors, the layout ONNX exports of decoders use:

* **prefill** ``(input_ids, attention_mask) -> (logits, keys, values)``: the prompt, any length ≥ 2;
* **decode** ``(input_ids, attention_mask, past_keys, past_values) -> (logits, keys, values)``: one new
  token per row, with the cache so far (``past_keys[i]``: layer ``i``'s ``[batch, kv_heads, past, head_dim]``).

``logits`` are the last position's, ``[batch, 1, vocab]``. Positions come from the attention mask
(``cumsum - 1``), so left-padded batches generate correctly. Both graphs are quantized with the same
recipe; the decode graph is calibrated on what the float model's own greedy decoding feeds it
after each calibration prompt.

    qlm = qgraph.quantize_for_generation(model, tokenizer(texts, return_tensors="pt", padding=True))
    ids = qlm.generate(**tokenizer(prompts, return_tensors="pt", padding=True), max_new_tokens=20)
    qlm.export("out/lm")                       # out/lm/prefill.onnx, decode.onnx, generation.json
    ids = qgraph.OnnxLM("out/lm").generate(**batch, max_new_tokens=20)   # ONNX Runtime
    ids = qlm.generate(**batch, do_sample=True, temperature=0.8, top_p=0.9, seed=0)   # sampled

Why two graphs: ``torch.export`` specialises sizes 0 and 1, so one graph cannot take both an empty
cache and a single new token (a guard ``sequence != 1`` comes from the matmul decomposition).
Caches whose layers are not plain full-attention layers (sliding windows, hybrid or static caches)
are refused with an :class:`~qgraph.errors.InputError`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qgraph.errors import InputError

CONFIG_FILE = "generation.json"
WEIGHTS_FILE = "weights.bin"
GRAPHS = ("prefill", "decode")
DECODE_CALIB_STEPS = 3  # greedy steps of the float model per calibration prompt that calibrate the decode graph


class _CachedLM(nn.Module):
    """A causal LM behind tensor-only inputs and outputs (see the module docstring)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self._last_only = "logits_to_keep" in inspect.signature(lm.forward).parameters

    def _run(self, input_ids, attention_mask, cache):
        steps = input_ids.shape[1]
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -steps:]
        extra = {"logits_to_keep": 1} if self._last_only else {}
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                      past_key_values=cache, use_cache=True, **extra)
        # zero the cache where the mask is 0: what the model computed there is never attended to, and
        # differs between backends (attention rows with every key masked), which would fail export checks
        keep = attention_mask[:, None, :, None].to(out.logits.dtype)
        layers = out.past_key_values.layers
        return out.logits[:, -1:], tuple(la.keys * keep for la in layers), tuple(la.values * keep for la in layers)


class Prefill(_CachedLM):
    def forward(self, input_ids, attention_mask):
        return self._run(input_ids, attention_mask, _cache(self.lm.config))


class Decode(_CachedLM):
    qgraph_dynamic_dims = {"attention_mask": {1: "total_sequence"},  # the past length + 1
                           "past_keys": {2: "past_sequence"}, "past_values": {2: "past_sequence"}}

    def forward(self, input_ids, attention_mask, past_keys, past_values):
        return self._run(input_ids, attention_mask, _cache(self.lm.config, list(zip(past_keys, past_values))))


def _cache(config, data=None):
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(ddp_cache_data=data, config=config)
    odd = sorted({type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer})
    if odd:
        raise InputError(f"{type(config).__name__}: cache layers {', '.join(odd)} are not supported for generation "
                         "(only full-attention DynamicLayer caches are)")
    return cache


def _as_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` from a mapping (a tokenizer's output) or a tensor of ids."""
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise InputError(f"a batch for generation needs 'input_ids'; got keys {sorted(batch)}")
        ids, mask = batch["input_ids"], batch.get("attention_mask")
    elif isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        ids, mask = batch[0], batch[1] if len(batch) == 2 else None
    else:
        ids, mask = batch, None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise InputError("input_ids must be a 2-D integer tensor [batch, sequence] (call the tokenizer with "
                         f"return_tensors='pt'); got {type(ids).__name__}{tuple(getattr(ids, 'shape', ()))}")
    mask = torch.ones_like(ids) if mask is None else mask
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise InputError("input_ids has no tokens")
    if ids.shape[1] == 1:  # torch.export fixes a dimension of size 1: one masked token in front, which changes nothing
        ids, mask = torch.cat([ids, ids], 1), torch.cat([torch.zeros_like(mask), mask], 1)
    return ids, mask.long()


def _generate(prefill: Step, decode: Step, input_ids, attention_mask, max_new_tokens: int, pick, eos_token_id) -> torch.Tensor:
    """The prompts followed by the new tokens, as the caller gave the prompts (a one-token prompt
    runs behind a masked pad token, which is not returned)."""
    ids, mask = _as_batch({"input_ids": input_ids, "attention_mask": attention_mask})
    out = decode_loop(prefill, decode, ids, mask, max_new_tokens, pick=pick, eos_token_id=eos_token_id)
    return out[:, ids.shape[1] - input_ids.shape[1]:]


Step = Callable[..., tuple]
Pick = Callable[[torch.Tensor], torch.Tensor]  # last-position logits [batch, vocab] -> token ids [batch]


def argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def sampler(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> Pick:
    """Sampling instead of the argmax: logits divided by ``temperature``, only the ``top_k`` most
    likely tokens and the smallest set whose probability reaches ``top_p`` kept, then one draw from
    a ``torch.Generator`` seeded with ``seed`` (the same seed gives the same tokens in PyTorch and
    ONNX Runtime, whose logits agree to about 1e-7)."""
    if not temperature > 0:
        raise InputError(f"temperature must be > 0 (use the default greedy decoding for 0); got {temperature}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1; got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1]; got {top_p}")
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else torch.seed())

    def pick(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, -1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1:
            probs, order = logits.softmax(-1).sort(-1, descending=True)
            drop = probs.cumsum(-1) - probs >= top_p  # the tokens after the set that reaches top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
    return pick


def decode_loop(prefill: Step, decode: Step, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                max_new_tokens: int, *, pick: Pick = argmax, eos_token_id: int | None = None, on_step=None,
                forced: torch.Tensor | None = None) -> torch.Tensor:
    """Decoding with a KV cache: ``prefill(ids, mask)`` then ``decode(ids, mask, keys, values)`` once
    per new token; returns the prompt followed by the new tokens (as ``model.generate``). ``pick``
    chooses each token from the last position's logits (greedy by default; :func:`sampler`). Rows
    that produced ``eos_token_id`` continue with it. ``on_step(logits)`` sees each step's logits.
    ``forced`` (``[batch, max_new_tokens]``): feed these tokens instead (teacher forcing, to compare
    two models' logits along one continuation)."""
    if bool((attention_mask[:, -1] == 0).any()):
        raise InputError("the prompts are padded on the right; generation appends after the last position, so pad on "
                         "the left (tokenizer.padding_side = 'left')")
    logits, keys, values = prefill(input_ids, attention_mask)
    out, mask = [input_ids], attention_mask
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    for step in range(max_new_tokens):
        if on_step is not None:
            on_step(logits)
        token = pick(logits[:, -1]) if forced is None else forced[:, step]
        if eos_token_id is not None:
            token = torch.where(done, torch.full_like(token, eos_token_id), token)
            done |= token == eos_token_id
        out.append(token[:, None].to(input_ids.dtype))
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        logits, keys, values = decode(out[-1], mask, tuple(keys), tuple(values))
    return torch.cat(out, 1)


def _pick(do_sample: bool, temperature: float, top_k: int | None, top_p: float | None, seed: int | None) -> Pick:
    return sampler(temperature, top_k, top_p, seed) if do_sample else argmax


@dataclass
class QuantizedLM:
    """A quantized causal LM for generation: two :class:`~qgraph.model.QModel` graphs, ``prefill``
    and ``decode`` (see the module docstring)."""

    prefill: object
    decode: object
    layers: int

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, max_new_tokens: int = 20,
                 eos_token_id: int | None = None, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> torch.Tensor:
        """The prompts (left-padded) followed by up to ``max_new_tokens`` new tokens: the argmax, or with
        ``do_sample`` a draw (:func:`sampler`: ``temperature``, ``top_k``, ``top_p``, ``seed``)."""
        pick = _pick(do_sample, temperature, top_k, top_p, seed)
        with self.prefill.frozen(), self.decode.frozen():
            return _generate(self.prefill, self.decode, input_ids, attention_mask, max_new_tokens, pick, eos_token_id)

    def export(self, directory: str, **kwargs) -> dict:
        """Write ``prefill.onnx`` and ``decode.onnx`` (each verified against its quantized graph in ONNX
        Runtime, :meth:`QModel.export`; ``kwargs`` go there), their weights once in ``weights.bin``
        (both graphs hold the same quantized weights; :mod:`qgraph.backends.shared_weights`) and
        ``generation.json``. Returns the :class:`ExportResult` of each graph by name, and the sizes
        under ``"weights"``."""
        from qgraph.backends.shared_weights import share_weights

        os.makedirs(directory, exist_ok=True)
        kwargs.setdefault("formats", ("onnx",))
        results = {name: getattr(self, name).export(os.path.join(directory, name), **kwargs) for name in GRAPHS}
        results["weights"] = share_weights([os.path.join(directory, f"{n}.onnx") for n in GRAPHS], WEIGHTS_FILE)
        with open(os.path.join(directory, CONFIG_FILE), "w") as f:
            json.dump({"format": "qgraph.generation/1", "layers": self.layers, "graphs": {n: f"{n}.onnx" for n in GRAPHS},
                       "weights": WEIGHTS_FILE}, f, indent=1)
        return results


def quantize_for_generation(model: nn.Module, calib_data, recipe="w8a8", **quantize_kwargs) -> QuantizedLM:
    """Quantize a Hugging Face causal LM (``model.generate`` works on it) for generation with a KV cache.

    ``calib_data``: a batch or an iterable of batches of prompts (a tokenizer's output with
    ``input_ids`` and ``attention_mask``, or a tensor of ids; a one-token prompt runs behind a masked
    pad token). The first
    batch is also the example the graphs are captured on. ``quantize_kwargs`` go to
    :func:`qgraph.quantize` for both graphs (``skip``, ``overrides``, ...).
    """
    from qgraph.api import quantize

    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise InputError(f"quantize_for_generation takes a Hugging Face causal LM (a module with a .config); got {type(model).__name__}")
    batches = [calib_data] if isinstance(calib_data, (Mapping, torch.Tensor)) else list(calib_data)
    if not batches:
        raise InputError("calib_data is empty")
    prompts = [_as_batch(b) for b in batches]
    prefill_f, decode_f = Prefill(model), Decode(model)
    steps = []
    with torch.no_grad(), _eval(model):
        for ids, mask in prompts:
            steps += _decode_inputs(prefill_f, decode_f, ids, mask)
    prefill = quantize(prefill_f, prompts[0], recipe, calib_data=prompts, **quantize_kwargs)
    decode = quantize(decode_f, steps[0], recipe, calib_data=steps, **quantize_kwargs)
    return QuantizedLM(prefill, decode, len(steps[0][2]))


def _decode_inputs(prefill: Step, decode: Step, ids, mask) -> list[tuple]:
    """The decode graph's inputs at each of the float model's first greedy steps after a prompt
    (right-padded prompts too: they calibrate, whatever the continuation)."""
    logits, keys, values = prefill(ids, mask)
    seen = []
    for _ in range(DECODE_CALIB_STEPS):
        token = logits[:, -1].argmax(-1, keepdim=True).to(ids.dtype)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        seen.append((token, mask, tuple(keys), tuple(values)))
        logits, keys, values = decode(token, mask, tuple(keys), tuple(values))
    return seen


class OnnxLM:
    """Greedy generation with ONNX Runtime from a directory :meth:`QuantizedLM.export` wrote."""

    def __init__(self, directory: str) -> None:
        from qgraph.backends import ort

        path = os.path.join(directory, CONFIG_FILE)
        try:
            with open(path) as f:
                config = json.load(f)
        except FileNotFoundError:
            raise InputError(f"{path} not found: write the directory with QuantizedLM.export") from None
        if config.get("format") != "qgraph.generation/1":
            raise InputError(f"{path}: unknown format {config.get('format')!r}")
        self.layers = int(config["layers"])
        self.sessions = {n: ort.session(os.path.join(directory, config["graphs"][n]), exact_int8=True) for n in GRAPHS}

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
        return self._run("prefill", input_ids, attention_mask)

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past_keys: tuple, past_values: tuple) -> tuple:
        return self._run("decode", input_ids, attention_mask, *past_keys, *past_values)

    def _run(self, name: str, *tensors) -> tuple:
        session = self.sessions[name]
        flat = [t.numpy() for t in tensors]
        feeds = {i.name: (a.astype(np.int64) if "int" in i.type else a) for i, a in zip(session.get_inputs(), flat)}
        out = [torch.from_numpy(o) for o in session.run(None, feeds)]
        n = self.layers
        return out[0], tuple(out[1:1 + n]), tuple(out[1 + n:1 + 2 * n])

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, max_new_tokens: int = 20,
                 eos_token_id: int | None = None, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> torch.Tensor:
        """As :meth:`QuantizedLM.generate`, on ONNX Runtime."""
        pick = _pick(do_sample, temperature, top_k, top_p, seed)
        return _generate(self.prefill, self.decode, input_ids, attention_mask, max_new_tokens, pick, eos_token_id)


def float_generate(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                   max_new_tokens: int = 20, eos_token_id: int | None = None, do_sample: bool = False, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> torch.Tensor:
    """The float model through the same two steps and loop: the reference for a quantized one."""
    pick = _pick(do_sample, temperature, top_k, top_p, seed)
    with torch.no_grad(), _eval(model):
        return _generate(Prefill(model), Decode(model), input_ids, attention_mask, max_new_tokens, pick, eos_token_id)


@contextlib.contextmanager
def _eval(model: nn.Module):
    """``model`` in eval mode for the block, then back in the mode it was in."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
