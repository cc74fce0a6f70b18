"""Scan: Hugging Face causal LMs quantized for generation with a KV cache (``qgraph.quantize_for_generation``).

Each model is a small random config (no download). Per model: the float model through qgraph's two
cached steps (prefill, decode) must give exactly ``model.generate``'s greedy tokens (a left-padded batch:
4 prompts of 10 tokens, one with 3 pads, 12 new tokens: the logits along generate()'s tokens); then w8a8 quantization (calibrated on 4 batches
of random prompts); the quantized model's top-1 agreement with the float one along the float
continuation (teacher forced, so one early difference does not count twice) and its own greedy tokens'
agreement; export of both graphs (each verified in ONNX Runtime) and ONNX Runtime's own greedy
generation, which must give the quantized PyTorch model's tokens, with the largest logit difference
along the way. Random weights: argmax margins are small, so agreement here is a lower bound of what a
trained model shows.

    PYTHONPATH=. .venv/bin/python benchmarks/generation_scan.py              # all, about 5 minutes on 2 cores (31 models)
    PYTHONPATH=. .venv/bin/python benchmarks/generation_scan.py llama gpt2   # some
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings

import torch

import qgraph
from qgraph.generation import Decode, Prefill, decode_loop

PROMPT, NEW, ROWS = 10, 12, 4
_S = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64}
_V = {"vocab_size": 128, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def _m(cls, cfg, **kw):
    def build():
        import transformers as tf

        return getattr(tf, cls)(getattr(tf, cfg)(**_V, **kw))
    return build


MODELS = {
    "llama": _m("LlamaForCausalLM", "LlamaConfig", **_S, num_key_value_heads=2),
    "mistral": _m("MistralForCausalLM", "MistralConfig", **_S, num_key_value_heads=2, sliding_window=None),
    "qwen2": _m("Qwen2ForCausalLM", "Qwen2Config", **_S, num_key_value_heads=2),
    "qwen3": _m("Qwen3ForCausalLM", "Qwen3Config", **_S, num_key_value_heads=2, head_dim=16),
    "gemma": _m("GemmaForCausalLM", "GemmaConfig", **_S, num_key_value_heads=2, head_dim=16),
    "gemma2": _m("Gemma2ForCausalLM", "Gemma2Config", **_S, num_key_value_heads=2, head_dim=16, sliding_window=8),
    "phi": _m("PhiForCausalLM", "PhiConfig", **_S),
    "phi3": _m("Phi3ForCausalLM", "Phi3Config", **_S),
    "olmo": _m("OlmoForCausalLM", "OlmoConfig", **_S),
    "granite": _m("GraniteForCausalLM", "GraniteConfig", **_S),
    "stablelm": _m("StableLmForCausalLM", "StableLmConfig", **_S, num_key_value_heads=4),
    "starcoder2": _m("Starcoder2ForCausalLM", "Starcoder2Config", **_S, num_key_value_heads=2),
    "cohere": _m("CohereForCausalLM", "CohereConfig", **_S, num_key_value_heads=2),
    "mixtral": _m("MixtralForCausalLM", "MixtralConfig", **_S, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "gpt2": _m("GPT2LMHeadModel", "GPT2Config", n_embd=64, n_layer=2, n_head=4, n_positions=64),
    "gpt_neox": _m("GPTNeoXForCausalLM", "GPTNeoXConfig", **_S),
    "gptj": _m("GPTJForCausalLM", "GPTJConfig", n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64),
    "opt": _m("OPTForCausalLM", "OPTConfig", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
              max_position_embeddings=64, word_embed_proj_dim=64),
    "falcon": _m("FalconForCausalLM", "FalconConfig", hidden_size=64, num_hidden_layers=2, num_attention_heads=4),
    "bloom": _m("BloomForCausalLM", "BloomConfig", hidden_size=64, n_layer=2, n_head=4),
    "gpt_neo": _m("GPTNeoForCausalLM", "GPTNeoConfig", hidden_size=64, num_layers=2, num_heads=4,
                  attention_types=[[["global", "global"], 1]], max_position_embeddings=64),
    "codegen": _m("CodeGenForCausalLM", "CodeGenConfig", n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, n_ctx=64),
    "xglm": _m("XGLMForCausalLM", "XGLMConfig", d_model=64, num_layers=2, attention_heads=4, ffn_dim=128, max_position_embeddings=64),
    "mpt": _m("MptForCausalLM", "MptConfig", d_model=64, n_heads=4, n_layers=2, max_seq_len=64),
    "qwen2_moe": _m("Qwen2MoeForCausalLM", "Qwen2MoeConfig", **_S, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=64, shared_expert_intermediate_size=64),
    "olmo2": _m("Olmo2ForCausalLM", "Olmo2Config", **_S),
    "glm": _m("GlmForCausalLM", "GlmConfig", **_S, num_key_value_heads=2, head_dim=16),
    "helium": _m("HeliumForCausalLM", "HeliumConfig", **_S, num_key_value_heads=2, head_dim=16),
    "smollm3": _m("SmolLM3ForCausalLM", "SmolLM3Config", **_S, num_key_value_heads=2),
    "deepseek_v3": _m("DeepseekV3ForCausalLM", "DeepseekV3Config", **_S, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=64, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
                      qk_nope_head_dim=8, v_head_dim=16, n_group=1, topk_group=1),
    "gemma3": _m("Gemma3ForCausalLM", "Gemma3TextConfig", **_S, num_key_value_heads=2, head_dim=16, sliding_window=8),
}


def prompts(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, _V["vocab_size"], (ROWS, PROMPT), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = _V["pad_token_id"], 0  # left padding
    return {"input_ids": ids, "attention_mask": mask}


def logits_along(prefill, decode, batch: dict, forced: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    with torch.no_grad():
        decode_loop(prefill, decode, batch["input_ids"], batch["attention_mask"], forced.shape[1], on_step=seen.append, forced=forced)
    return torch.cat(seen, 1)  # [rows, steps, vocab]


def run(name: str) -> dict:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    batch = prompts(0)
    row: dict = {"model": name}
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = model.generate(**batch, max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW, output_logits=True,
                             return_dict_in_generate=True)
    new = ref.sequences[:, PROMPT:]  # min_new_tokens may have vetoed an argmax (EOS): compare logits, not tokens
    fl = logits_along(Prefill(model), Decode(model), batch, new)
    err = float((fl - torch.stack(ref.logits, 1)).abs().max())
    row["float = generate()"] = "yes" if err <= 1e-4 else f"NO (logits differ by {err:.2g})"
    t1 = time.perf_counter()
    try:
        qlm = qgraph.quantize_for_generation(model, [prompts(s) for s in range(1, 5)], "w8a8")
    except Exception as e:  # noqa: BLE001 - one failure is one row
        row["quantize"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        return row
    row["quantize"] = f"{time.perf_counter() - t1:.1f} s"
    with qlm.prefill.frozen(), qlm.decode.frozen():
        ql = logits_along(qlm.prefill, qlm.decode, batch, new)
    row["top-1 (forced)"] = f"{float((fl.argmax(-1) == ql.argmax(-1)).float().mean()):.1%}"
    qtok = qlm.generate(**batch, max_new_tokens=NEW)
    ours = qgraph.float_generate(model, **batch, max_new_tokens=NEW)
    row["own tokens"] = f"{float((qtok[:, PROMPT:] == ours[:, PROMPT:]).float().mean()):.1%}"
    with tempfile.TemporaryDirectory() as d:
        try:
            qlm.export(d)
            onnx_lm = qgraph.OnnxLM(d)
            otok = onnx_lm.generate(**batch, max_new_tokens=NEW)
            ol = logits_along(onnx_lm.prefill, onnx_lm.decode, batch, qtok[:, PROMPT:])
            with qlm.prefill.frozen(), qlm.decode.frozen():
                ql2 = logits_along(qlm.prefill, qlm.decode, batch, qtok[:, PROMPT:])
            row["ORT tokens = torch"] = "yes" if torch.equal(otok, qtok) else f"NO ({int((otok != qtok).sum())} differ)"
            row["ORT max err"] = f"{float((ol - ql2).abs().max()):.1e}"
        except Exception as e:  # noqa: BLE001
            row["ORT tokens = torch"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    row["seconds"] = f"{time.perf_counter() - t0:.0f}"
    return row


COLUMNS = ["model", "float = generate()", "quantize", "top-1 (forced)", "own tokens", "ORT tokens = torch", "ORT max err", "seconds"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help=f"some of: {', '.join(MODELS)}")
    args = ap.parse_args(argv)
    names = args.models or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    print("| " + " | ".join(COLUMNS) + " |\n|" + " --- |" * len(COLUMNS), flush=True)
    passed, t0 = 0, time.perf_counter()
    for name in names:
        try:
            row = run(name)
        except Exception as e:  # noqa: BLE001
            row = {"model": name, "float = generate()": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
        passed += row.get("float = generate()") == "yes" and row.get("ORT tokens = torch") == "yes"
        print("| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |", flush=True)
    print(f"\n{passed}/{len(names)} models generate with a KV cache in PyTorch and ONNX Runtime, "
          f"float steps exact ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
