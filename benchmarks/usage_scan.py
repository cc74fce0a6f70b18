"""How users call ``quantize`` on their own models, beyond the zoo's one-tensor classifiers.

Each case is a small random-weight model written the way user code is: inputs that are lists or pairs,
``torch.chunk`` along the batch, optional arguments, dict outputs, recurrent and TorchScript
submodules, weight-normalised and 1-D convolutions, half-precision weights, a single-sample example,
Hugging Face encoder-decoders and two-tower models, Hugging Face models called with a tokenizer's
``BatchEncoding``; and the second round's cases in ``usage_models.py`` (einsum and masked attention,
U-Nets, tied weights, functional layers, torch's Transformer modules, parametrizations, ...) and the
third's in ``usage_models_ops.py`` (grid_sample, unpooling, embedding bags, an edge list, STFT, ...) and
``usage_models_seq.py`` (WaveNet, einsum layers, FFT mixing, packed LSTMs, a hand-written MoE, ...), and
the seventh's in ``usage_models_user.py`` (pruned and hook-normed weights, forward hooks, complex rotary
embeddings, float64 and uint8 inputs, odd adaptive pooling, ...), and the eighth's in ``usage_models_research.py``
(research-code idioms: capsule routing, RealNVP couplings, an RK4 neural ODE, MAE masking, DGCNN kNN
features, ``torch.distributions`` heads, forces by ``autograd.grad``, a ``vmap`` ensemble, ...), and the ninth's
in ``usage_models_repos.py`` (layers from popular model repositories: ConvNeXt-V2's GRN, MobileViT, CBAM, Ghost and
RepVGG blocks, HRNet fusion, YOLO's Focus/SPPF and FPN+PAN neck, PointNet++ sampling, Swin windows, a Switch MoE,
FiLM, a TCN, DETR's head, ...), and the tenth's in ``usage_models_deploy.py`` (layers of recent architectures: RWKV
time mixing, PatchTST with RevIN, N-BEATS, DeepFM, ToMe token merging, CondConv, BiT's StdConv2d, ShuffleNetV2,
DeepLabV3's ASPP, SAM's Fourier PE and two-way attention, DINO's interpolate_pos_encoding, an RNN-T joiner,
AdaptiveLogSoftmaxWithLoss, BiFPN fusion, FNO spectral convs, Informer's ProbSparse attention, involution, ECA), and the
eleventh's in ``usage_models_framework.py`` (framework and training idioms left in ``forward``: activation checkpointing,
an autocast island, ``torch.cond``, ModuleDict heads picked by a string, dataclass and dict-of-list outputs, in-place
view updates, LLaVA's ``masked_scatter``, ``pad_sequence`` over ``*args``, GQA with a boolean mask,
``F.multi_head_attention_forward``, Mamba2's chunked SSD, minGRU's log-space scan, timm's Block, ``ACT2FN``, uint8
NHWC resizing, pre-hooks with kwargs, a Lightning-style top-k wrapper, flip/roll TTA, tracing guards, LoRA through
``functional_call``), and the twelfth's in ``usage_models_generative.py`` (generative models and numerics-heavy forwards:
DiT's adaLN-Zero, classifier-free guidance, EDM preconditioning, latent-diffusion attention and uint8 decoding, StyleGAN2's
demodulated ``groups=batch`` convs, Real-ESRGAN, Glow's LU 1x1 conv, PixelCNN masks, VQ-GAN perplexity, RoBERTa positions,
top-p filtering, quantile/bucketize features, SigLIP logits, LLM.int8-style outliers, training-guarded sampling, mu-law
companding, flow-matching and DDIM steps, an MDN, a piecewise-linear flow), and the thirteenth's in ``usage_models_video.py``
(video models and torchvision.ops building blocks: TSM's slice-assigned temporal shift, R(2+1)D, X3D, SlowFast laterals,
Conv3dNormActivation / SqueezeExcitation / FrozenBatchNorm2d / StochasticDepth, FPN with MultiScaleRoIAlign, roi_align,
PSRoIAlign, DETR box costs, batched_nms post-processing, MViT pooling attention, Video Swin 3-D shifted windows,
TimeSformer divided attention, CLIP4Clip masked mean pooling), and the fourteenth's in ``usage_models_audio.py`` (speech and
audio code: HiFi-GAN, EnCodec's residual VQ, a log-mel front end, a Whisper KV-cache step, Conv-TasNet, Demucs, ECAPA-TDNN,
Tacotron 2 attention, streaming state, SpecAugment, CTC greedy decoding, SincNet, a length regulator, QuartzNet, CREPE,
DCCRN), and the fifteenth's in ``usage_models_science.py`` (scientific ML and recommenders: SchNet, EGNN, MeshGraphNets, spherical harmonics, periodic
minimum images, a nonzero radius graph, DimeNet's Bessel basis, a circular 1-D U-Net, a PINN, Uni-Mol, DCN-v2, DIN, SASRec,
two towers, hashed bags with offsets, DLRM's mixed-dimension and QR embeddings, MMoE, wide & deep, xDeepFM's CIN), and the
sixteenth's in ``usage_models_llm.py`` (LLM inference idioms: static, rolling, paged and sink KV caches, repeat_kv, RoPE
scaling, ALiBi, logits processors, greedy, beam-search and speculative-decoding steps, Medusa heads, Gemma-2 soft-capping,
QK-norm, LoRA adapters, left-padding position_ids, gpt-fast and Mixtral MoE), and the seventeenth's in
``usage_models_geometry.py`` (3-D vision, point clouds, NeRF and geometry: PointNet's T-Nets, PointNet++ ball query and
feature propagation, DGCNN's dynamic graph, Point Transformer, NeRF's raw2outputs, a HashNeRF hash grid, pytorch-3dunet,
PointPillars and batched BEV scatters, monodepth2 warping, PIFu projection, quaternion, SE(3) and 6-D rotations, a
Laplacian-smoothed mesh GCN, Occupancy Networks' CBN, NeuS's SDF, FoldingNet's chamfer head, 3-D grid_sample, range images),
the eighteenth's in ``usage_models_backbones.py`` (recent vision backbones: FasterNet's partial conv, DINOv2 registers and
SwiGLU, EVA-02 2-D RoPE, Hiera mask units, RepViT and MobileOne branches, UniRepLKNet dilated kernels, EdgeNeXt XCA,
VanillaNet, MaxViT and CoAtNet relative biases, InceptionNeXt, CAFormer StarReLU, GhostNetV2 DFC, SAM windowed rel-pos)
and the nineteenth's in ``usage_models_efficient.py`` (efficient and long-sequence models: Hyena, RetNet, Performer,
Reformer LSH, Longformer, BigBird, Nystromformer, S4D, H3, MEGA, xLSTM, Linformer, Synthesizer, local attention, GLA).
Every case goes through the default path:
``quantize(model, example, "w8a8", calib)``, ``export`` with its default dynamic batch (ONNX Runtime
verification included), then, where the batch stayed dynamic, the ONNX file is run at batch 3 (and,
where the file's token inputs have a dynamic sequence length, 3 tokens shorter) and compared with the
quantized model. One Markdown row per case: capture route, weight and activation quantizers,
export, SQNR against the float model on held-out inputs, the batch-3 check, and the capture notes
that say what stayed float.

    PYTHONPATH=. .venv/bin/python benchmarks/usage_scan.py            # every case, about 2 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/usage_scan.py chunk lstm # some of them
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import torch
from qgraph.backends import ort as ort_backend
from torch import nn
from torch.utils import _pytree as pytree

import qgraph
from benchmarks.usage_models import CASES as MORE_CASES
from benchmarks.usage_models_apps import CASES as APP_CASES
from benchmarks.usage_models_audio import CASES as AUDIO_CASES
from benchmarks.usage_models_backbones import CASES as BACKBONE_CASES
from benchmarks.usage_models_deploy import CASES as DEPLOY_CASES
from benchmarks.usage_models_efficient import CASES as EFFICIENT_CASES
from benchmarks.usage_models_examples import CASES as EXAMPLE_CASES
from benchmarks.usage_models_framework import CASES as FRAMEWORK_CASES
from benchmarks.usage_models_generative import CASES as GENERATIVE_CASES
from benchmarks.usage_models_geometry import CASES as GEOMETRY_CASES
from benchmarks.usage_models_llm import CASES as LLM_CASES
from benchmarks.usage_models_more import CASES as BLOCK_CASES
from benchmarks.usage_models_ops import CASES as OPS_CASES
from benchmarks.usage_models_repos import CASES as REPO_CASES
from benchmarks.usage_models_research import CASES as RESEARCH_CASES
from benchmarks.usage_models_science import CASES as SCIENCE_CASES
from benchmarks.usage_models_seq import CASES as SEQ_CASES
from benchmarks.usage_models_user import CASES as USER_CASES
from benchmarks.usage_models_video import CASES as VIDEO_CASES
from qgraph.capture import batch_inputs
from qgraph.export_tolerance import export_tolerance
from qgraph.packed_sequences import packing_note
from qgraph.precision import float32_inputs
from qgraph.summary import sqnr_db
from qgraph.weight_hooks import copy_with_plain_weights


class _Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def enc(self, x):
        return torch.relu(self.conv(x))

    def head(self, f):
        return self.fc(f.mean((2, 3)))


class Chunk(_Base):  # both images through one encoder as a batch, split apart again (RAFT, Siamese nets)
    def forward(self, a, b):
        fa, fb = self.enc(torch.cat([a, b])).chunk(2)
        return self.head(fa - fb)


class ListInput(_Base):
    def forward(self, views):
        return self.head(self.enc(views[0]) + self.enc(views[1]))


class OptionalArgs(_Base):
    def forward(self, x, mask=None, scale: float = 1.0):
        y = self.head(self.enc(x)) * scale
        return y if mask is None else y * mask


class DictOutput(_Base):
    def forward(self, x):
        f = self.enc(x)
        return {"features": f, "logits": self.head(f)}


class CountOutput(_Base):  # returns the logits and a Python int (the batch size)
    def forward(self, x):
        return self.head(self.enc(x)), x.shape[0]


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.proj, self.rnn, self.head = nn.Linear(8, 16), cell(16, 16, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        h, _ = self.rnn(torch.relu(self.proj(x)))
        return self.head(h[:, -1])


class Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = torch.jit.script(nn.Sequential(nn.Linear(8, 16), nn.ReLU())), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.body(x))


class Audio1d(nn.Module):  # weight norm, a strided transposed conv and a grouped conv, in 1-D
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 16, 5, padding=2))
        self.up = nn.ConvTranspose1d(16, 16, 4, stride=2, padding=1)
        self.grouped = nn.Conv1d(16, 8, 3, padding=1, groups=4)

    def forward(self, x):
        return self.grouped(torch.relu(self.up(torch.relu(self.pre(x)))))


def _images(n: int, g: torch.Generator, side: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=g)


def _small_cnn(dtype: torch.dtype | None = None):
    import torchvision

    m = torchvision.models.resnet18(num_classes=4)
    return m.to(dtype) if dtype is not None else m


def _hf(kind: str, use_cache: bool = False):
    import transformers as tf

    small = {"vocab_size": 128, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
             "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128}
    if kind == "t5":
        return tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                                         decoder_start_token_id=0))
    if kind == "bart":
        return tf.BartForConditionalGeneration(tf.BartConfig(**small, max_position_embeddings=32))
    if kind == "clip":
        text = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "max_position_embeddings": 16}
        vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32,
                  "patch_size": 8}
        return tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                  intermediate_size=128, num_key_value_heads=2, use_cache=use_cache))
    raise KeyError(kind)


class _Kw(nn.Module):
    """Positional tensors to a Hugging Face model's keyword arguments; returns one output field."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], field: str) -> None:
        super().__init__()
        self.model, self.names, self.field = model, names, field

    def forward(self, *args):
        return getattr(self.model(**dict(zip(self.names, args))), self.field)


def _by_name(n: int, g: torch.Generator, *names: str) -> dict:
    """A tokenizer-like batch (a ``BatchEncoding``) of padded ``input_ids`` and ``attention_mask``, plus
    zero ``token_type_ids`` / short ``decoder_input_ids`` when named."""
    import transformers as tf

    ids, mask = _padded(n, g)
    batch = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        batch["token_type_ids"] = torch.zeros_like(ids)
    if "decoder_input_ids" in names:
        batch["decoder_input_ids"] = _tokens(n, g, 8)
    return tf.BatchEncoding(batch)


def _tokens(n: int, g: torch.Generator, length: int = 12) -> torch.Tensor:
    return torch.randint(2, 128, (n, length), generator=g)


def _padded(n: int, g: torch.Generator, length: int = 16) -> tuple:
    ids = torch.randint(2, 128, (n, length), generator=g)
    mask = (torch.arange(length)[None] < torch.randint(4, length + 1, (n, 1), generator=g)).long()
    return ids * mask, mask


# name -> (what it exercises, builder returning (model, make(batch, generator) -> input tuple or mapping by name))
Case = tuple[str, Callable[[], tuple[nn.Module, Callable[[int, torch.Generator], tuple]]]]
CASES: dict[str, Case] = {
    "chunk": ("torch.chunk along the batch (two inputs)", lambda: (Chunk(), lambda n, g: (_images(n, g), _images(n, g)))),
    "list_input": ("forward(self, views: list[Tensor])", lambda: (ListInput(), lambda n, g: ([_images(n, g), _images(n, g)],))),
    "optional_args": ("example inputs (x, None, 2.0)", lambda: (OptionalArgs(), lambda n, g: (_images(n, g), None, 2.0))),
    "dict_output": ("returns {'features', 'logits'}", lambda: (DictOutput(), lambda n, g: (_images(n, g),))),
    "int_output": ("returns (logits, x.shape[0])", lambda: (CountOutput(), lambda n, g: (_images(n, g),))),
    "lstm": ("nn.LSTM between linears", lambda: (Recurrent(nn.LSTM), lambda n, g: (torch.randn(n, 6, 8, generator=g),))),
    "gru": ("nn.GRU between linears", lambda: (Recurrent(nn.GRU), lambda n, g: (torch.randn(n, 6, 8, generator=g),))),
    "torchscript": ("a torch.jit.script submodule", lambda: (Scripted(), lambda n, g: (torch.randn(n, 8, generator=g),))),
    "audio_1d": ("weight_norm, ConvTranspose1d, grouped Conv1d", lambda: (Audio1d(), lambda n, g: (torch.randn(n, 4, 32, generator=g),))),
    "torch_compile": ("a torch.compile'd model, skip=['fc']", lambda: (torch.compile(_small_cnn()),
                                                                      lambda n, g: (_images(n, g, 32),))),
    "resnet18_bf16": ("a bfloat16 model and inputs", lambda: (_small_cnn(torch.bfloat16),
                                                             lambda n, g: (_images(n, g, 32).to(torch.bfloat16),))),
    "resnet18_fp16": ("a float16 model and inputs", lambda: (_small_cnn(torch.float16),
                                                            lambda n, g: (_images(n, g, 32).to(torch.float16),))),
    "llama_bf16": ("a bfloat16 Llama", lambda: (_Kw(_hf("llama").to(torch.bfloat16), ("input_ids",), "logits"),
                                                lambda n, g: (_tokens(n, g),))),
    "bert_padded": ("BERT with a padding attention mask", lambda: (_bert(), lambda n, g: _padded(n, g))),
    "t5": ("T5 encoder-decoder (input_ids, decoder_input_ids)", lambda: (_Kw(_hf("t5"), ("input_ids", "decoder_input_ids"), "logits"),
                                                                         lambda n, g: (_tokens(n, g), _tokens(n, g, 8)))),
    "bart": ("BART encoder-decoder", lambda: (_Kw(_hf("bart"), ("input_ids", "decoder_input_ids"), "logits"),
                                              lambda n, g: (_tokens(n, g), _tokens(n, g, 8)))),
    "clip": ("CLIP text and image towers", lambda: (_Kw(_hf("clip"), ("input_ids", "pixel_values"), "logits_per_image"),
                                                    lambda n, g: (_tokens(n, g), _images(n, g, 32)))),
    # the Hugging Face model itself, called with a tokenizer's BatchEncoding (no positional wrapper)
    "bert_by_name": ("BertModel(**batch_encoding), ModelOutput", lambda: (_bert().model,
                                                                          lambda n, g: _by_name(n, g, "token_type_ids"))),
    "llama_by_name": ("LlamaForCausalLM(**batch_encoding), with a KV cache", lambda: (_hf("llama", use_cache=True),
                                                                                     lambda n, g: _by_name(n, g))),
    "t5_by_name": ("T5ForConditionalGeneration(**batch_encoding)", lambda: (_hf("t5"),
                                                                             lambda n, g: _by_name(n, g, "decoder_input_ids"))),
}
CASES.update(MORE_CASES)  # the second round (benchmarks/usage_models.py)
CASES.update(OPS_CASES)  # the third (benchmarks/usage_models_ops.py)
CASES.update(SEQ_CASES)  # and its sequence-model idioms (benchmarks/usage_models_seq.py)
CASES.update(APP_CASES)  # the fourth: small applications (benchmarks/usage_models_apps.py)
CASES.update(EXAMPLE_CASES)  # the fifth: pytorch/examples and tutorials (benchmarks/usage_models_examples.py)
CASES.update(BLOCK_CASES)  # the sixth: building blocks of recent papers (benchmarks/usage_models_more.py)
CASES.update(USER_CASES)  # the seventh: pruned, hooked, complex-valued, ... (benchmarks/usage_models_user.py)
CASES.update(RESEARCH_CASES)  # the eighth: research-code idioms (benchmarks/usage_models_research.py)
CASES.update(REPO_CASES)  # the ninth: layers from popular model repositories (benchmarks/usage_models_repos.py)
CASES.update(DEPLOY_CASES)  # the tenth: layers of recent architectures (benchmarks/usage_models_deploy.py)
CASES.update(FRAMEWORK_CASES)  # the eleventh: framework and training idioms in forward (benchmarks/usage_models_framework.py)
CASES.update(GENERATIVE_CASES)  # the twelfth: generative models and numerics-heavy forwards (benchmarks/usage_models_generative.py)
CASES.update(VIDEO_CASES)  # the thirteenth: video models and torchvision.ops blocks (benchmarks/usage_models_video.py)
CASES.update(AUDIO_CASES)  # the fourteenth: speech and audio models (benchmarks/usage_models_audio.py)
CASES.update(SCIENCE_CASES)  # the fifteenth: scientific ML and recommenders (benchmarks/usage_models_science.py)
CASES.update(LLM_CASES)  # the sixteenth: LLM inference idioms (benchmarks/usage_models_llm.py)
CASES.update(GEOMETRY_CASES)  # the seventeenth: 3-D vision, point clouds, NeRF and geometry (benchmarks/usage_models_geometry.py)
CASES.update(BACKBONE_CASES)  # the eighteenth: recent vision backbones (benchmarks/usage_models_backbones.py)
CASES.update(EFFICIENT_CASES)  # the nineteenth: efficient sequence models (benchmarks/usage_models_efficient.py)
SINGLE_SAMPLE = {"llama_bf16", "t5"}
SKIP = {"torch_compile": ["fc"]}  # module paths as in the model itself, not behind the wrapper's _orig_mod.  # their example is one sample; calibration uses batches of 4


def _bert():
    import transformers as tf

    cfg = tf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=32)
    return _Kw(tf.BertModel(cfg, add_pooling_layer=False), ("input_ids", "attention_mask"), "last_hidden_state")


def _tensors(out) -> list[torch.Tensor]:
    """Every output as a float tensor, Python numbers included (the ONNX file returns them too)."""
    return [t.float() if isinstance(t, torch.Tensor) else torch.tensor(float(t))
            for t in pytree.tree_leaves(out) if isinstance(t, (torch.Tensor, bool, int, float))]


def _float_model(model: nn.Module) -> nn.Module:
    """The reference: the user's model in float32 (half and double models are compared at float32); a
    copy, which needs hook-computed weights (pruning, weight_norm) as parameters, as qgraph's copy has."""
    return copy_with_plain_weights(model)[0].float().eval()


def _call(model, inputs):
    return model(**inputs) if isinstance(inputs, Mapping) else model(*inputs)


def build_case(name: str) -> tuple:
    """A case's model in eval mode and its inputs, seeded: ``(what, model, make, generator, example,
    3 calibration batches, a held-out batch)``; ``make(n, generator)`` gives more batches."""
    what, build = CASES[name]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model, make = build()
    model.eval()
    example = make(1 if name in SINGLE_SAMPLE else 4, g)
    calib = [make(4, g) for _ in range(3)]
    return what, model, make, g, example, calib, make(4, g)


def run_case(name: str, out_dir: str) -> dict:
    what, model, make, g, example, calib, held_out = build_case(name)
    row: dict = {"case": name, "what": what}
    t0 = time.perf_counter()
    try:
        qm = qgraph.quantize(model, example, "w8a8", calib, skip=SKIP.get(name))
    except Exception as e:  # noqa: BLE001 - the row says what failed
        return {**row, "error": f"quantize: {type(e).__name__}: {str(e).splitlines()[0][:200]}", "s": time.perf_counter() - t0}
    cap = qm.qgraph.capture
    roles = [q.role for q in qm.quantizers().values()]
    row.update(route=cap.route, weights=roles.count("weight"), activations=roles.count("activation"),
               notes=[n for n in cap.notes if not n.startswith(("captured with torch.export", "fell back"))])
    reference = _float_model(model)
    with torch.no_grad(), qm.frozen():
        f = _tensors(_call(reference, pytree.tree_map(lambda a: a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a,
                                                      held_out)))
        q = _tensors(_call(qm, held_out))
    row["sqnr_db"] = sqnr_db(torch.cat([t.flatten() for t in f]), torch.cat([t.flatten() for t in q]))
    try:
        res = qm.export(f"{out_dir}/{name}", formats=("onnx",))
        row.update(export=f"ok ({res.max_abs_error:.2g} <= {res.tolerance:.2g})", dynamic=res.dynamic_batch)
        if res.dynamic_batch:  # the file at another batch size, judged by the same default rule on those inputs
            sess = ort_backend.session(res.onnx_path, matmulnbits_accuracy_level=0, exact_int8=True)
            x3 = float32_inputs(batch_inputs(qm.qgraph, make(3, g)))  # float32, as the file takes (half models are quantized as float32)
            cut = _sequence_dims(res.onnx_path, res.batch_dims)
            if any(d is not None for d in cut):  # and the inputs the file gives a dynamic sequence 3 steps shorter
                dims = iter(cut)
                longer = packing_note(qm.qgraph) is not None  # padded packed rows may fill the length: 3 steps longer
                x3 = pytree.tree_map(lambda a: _resized(a, next(dims), longer) if isinstance(a, torch.Tensor) else a, x3)
                row["shorter"] = "longer" if longer else "shorter"
            got = ort_backend.run(sess, x3)
            copies = lambda: pytree.tree_map(lambda a: a.clone() if isinstance(a, torch.Tensor) else a, x3)  # noqa: E731
            with torch.no_grad(), qm.frozen():  # on copies: a model may write into its inputs (a static KV cache)
                want = qm(*copies())
            tol = export_tolerance(qm, copies(), want).value
            err = max(float(np.abs(np.asarray(o, dtype=np.float32) - w.numpy()).max()) for o, w in zip(got, _tensors(want)))
            row["batch3"] = f"{'ok' if err <= tol else 'MISMATCH'} ({err:.2g} <= {tol:.2g})"
    except Exception as e:  # noqa: BLE001
        row["export"] = f"FAIL: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    row["s"] = time.perf_counter() - t0
    return row


def _resized(a: torch.Tensor, dim: int | None, longer: bool) -> torch.Tensor:
    if dim is None:
        return a
    if longer:
        return torch.cat([a, torch.zeros_like(a.narrow(dim, 0, 3))], dim)
    return a.narrow(dim, 0, max(2, a.shape[dim] - 3))


def _sequence_dims(path: str, batch_dims: list[int | None] | None) -> list[int | None]:
    """Per file input: its dynamic sequence dim (the one after, or before, its batch dim), else None."""
    import onnx

    found = []
    for k, i in enumerate(onnx.load(path).graph.input):
        b = (batch_dims[k] if batch_dims else 0) or 0
        dims = [d.dim_param for d in i.type.tensor_type.shape.dim]
        found.append(1 - b if len(dims) in (2, 3) and dims[1 - b].endswith("sequence") else None)
    return found


def line(r: dict) -> str:
    if "error" in r:
        return f"| {r['case']} | {r['what']} | - | - | - | - | FAIL: {r['error']} | {r['s']:.0f} |"
    notes = "; ".join(r["notes"]) or "-"
    batch = r.get("batch3", "static batch" if "dynamic" in r else "-") + (f", sequence 3 {r['shorter']}" if r.get("shorter") else "")
    return (f"| {r['case']} | {r['what']} | {r['route']} | {r['weights']} / {r['activations']} | {r['sqnr_db']:.1f} | {r['export']}, batch 3: {batch} | "
            f"{notes} | {r['s']:.0f} |")


def chosen_cases(argv: list[str] | None, doc: str) -> list[str]:
    """The case names given on the command line (all of them when none is), unknown names refused."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("cases", nargs="*", help=f"some of: {', '.join(CASES)}")
    args = ap.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        ap.error(f"unknown case(s) {sorted(unknown)}; known: {', '.join(CASES)}")
    return args.cases or list(CASES)


def main(argv: list[str] | None = None) -> int:
    cases = chosen_cases(argv, __doc__)
    warnings.simplefilter("ignore")
    out_dir = tempfile.mkdtemp(prefix="qgraph_usage_")
    print("| case | what | capture | weight / activation quantizers | SQNR dB | export (ORT error <= tolerance) | notes | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    failed = 0
    for name in cases:
        r = run_case(name, out_dir)
        failed += "error" in r or not r.get("export", "").startswith("ok") or "MISMATCH" in r.get("batch3", "")
        print(line(r), flush=True)
    total = len(cases)
    print(f"\n{total - failed}/{total} cases quantize, export, verify (and run at batch 3 where the batch is dynamic)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
