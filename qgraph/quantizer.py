"""FakeQuantize: the quantizer module qgraph inserts into graphs.

It is a plain ``nn.Module`` called from the graph with ``call_module``, so ``state_dict``,
optimizers, ``.to(device)`` and DDP work unchanged. Modes:

* ``observe``: pass values through unchanged and feed the observer (calibration);
* ``quantize``: fake-quantize with the stored scale / zero point (inference, QAT);
* ``off``: pass values through unchanged.

Weight quantizers with a fixed (non-learnable) scale follow their weight: in training mode they
compute min-max qparams from the current weight on every call, so QAT can move weights freely, and
use them without storing them (a training step writes no quantizer state: nothing for
``torch.compile`` to treat as a side effect, nothing to synchronise across DDP ranks); the first call
after ``eval()`` stores them. Learnable quantizers hold the scale as an LSQ parameter.

Inside :func:`frozen_weights`, a weight quantizer fake-quantizes its weight once and reuses the
result while nothing it depends on changed: a model evaluated on many batches then costs what the
float model costs plus its activation quantizers (vgg16 at 64x64: 1.9 s a batch without, see
``tests/test_frozen_weights.py`` for what counts as a change).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from qgraph.errors import CalibrationError
from qgraph.observers import Observer
from qgraph.primitives import MIN_SCALE, fake_quantize_affine
from qgraph.qspec import QSpec

MODES = ("observe", "quantize", "off")
_FP16_TINY = 2.0**-24  # the smallest positive float16 (subnormal)


def round_scale(scale: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """Scales as the grid uses them: float16-representable values (kept in float32) for
    ``scale_dtype="float16"``; the cast passes gradients straight through."""
    if scale_dtype == "float16":
        return scale.clamp(_FP16_TINY, 65504.0).to(torch.float16).to(torch.float32)
    return scale


def scale_gradients_flow() -> bool:
    """Whether a learnable scale can get a gradient here. The LSQ factor ``1/sqrt(N * Qp)`` only scales
    that gradient, and computing it reads the input's shape: where no gradient flows (an export, eval
    under no_grad) quantizers pass 1 instead, or ``torch.export`` would guard on the shape (a token
    input's length pinned to the example's in the exported file)."""
    return torch.is_grad_enabled() and not torch.compiler.is_exporting()


class FakeQuantize(nn.Module):
    """Fake-quantizes a tensor on the affine grid of ``spec``; ``role`` is "weight" or "activation"."""

    def __init__(self, spec: QSpec, role: str = "activation", where: str = "") -> None:
        super().__init__()
        if role not in ("weight", "activation"):
            raise ValueError(f"role must be 'weight' or 'activation', got {role!r}")
        self.spec = spec
        self.role = role
        self.where = where  # module path / node name, for messages and reports
        self.mode = "observe"
        self._refresh = False  # a fixed-scale weight quantizer re-reads its weight after training
        self.observer: Observer | None = Observer(spec)
        self.register_buffer("zero_point", torch.zeros(0))
        if spec.learnable:
            self.scale = nn.Parameter(torch.zeros(0))
        else:
            self.register_buffer("scale", torch.zeros(0))

    # ----------------------------------------------------------------- state
    @property
    def initialized(self) -> bool:
        return self.scale.numel() > 0

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "observe" and self.observer is None:
            self.observer = Observer(self.spec)
        self.mode = mode

    @torch.no_grad()
    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        scale = round_scale(scale.detach().to(torch.float32), self.spec.scale_dtype)
        if isinstance(self.scale, nn.Parameter):
            self.scale.data = scale.clone()
        else:
            self.scale = scale.clone()
        self.zero_point = zero_point.detach().to(torch.float32).clone()

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Turn what the observer saw into qparams and switch to ``quantize`` mode."""
        if self.observer is None or self.observer.min_val is None:
            if not self.initialized:
                raise CalibrationError(
                    f"{self.role} quantizer at {self.where or '?'} saw no data during calibration: "
                    "the calibration batches never reached this part of the model"
                )
        else:
            self.set_qparams(*self._zero_rows_unit(*self.observer.compute()))
        self.observer = None
        self.mode = "quantize"

    def _zero_rows_unit(self, scale: torch.Tensor, zero_point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A weight channel of zeros only (pruned, or a spatial transformer's zero-initialised head) gets
        scale 1 instead of the smallest scale: its codes are 0 either way, and ONNX Runtime's int32 bias
        ``b / (s_x · s_w)`` of such a channel overflowed unless the input's scale was raised to ~1e20,
        which wiped out every other layer reading that input."""
        if self.role == "weight":
            scale = torch.where(scale <= MIN_SCALE, torch.ones_like(scale), scale)
        return scale, zero_point

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """Calibrate from one tensor (weights are calibrated from themselves)."""
        obs = Observer(self.spec)
        obs.update(x)
        self.set_qparams(*self._zero_rows_unit(*obs.compute()))
        self.mode = "quantize"
        self.observer = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # qparams are created lazily at calibration; adopt the stored shapes when loading
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict and getattr(self, name).shape != state_dict[key].shape:
                current = getattr(self, name)
                if isinstance(current, nn.Parameter):
                    current.data = torch.empty_like(state_dict[key], dtype=torch.float32)
                else:
                    setattr(self, name, torch.empty_like(state_dict[key], dtype=torch.float32))
        if prefix + "scale" in state_dict:
            self.mode = "quantize"
            self.observer = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True):
        if not mode and self.training and self.role == "weight" and not self.spec.learnable and self.initialized:
            self._refresh = True  # the weight moved since the last training step
        return super().train(mode)

    # ----------------------------------------------------------------- forward
    def grad_factor(self, x: torch.Tensor) -> float:
        """LSQ gradient scale ``1 / sqrt(N * Qp)``, N = elements sharing one scale."""
        n = x.numel() if self.role == "weight" else x.numel() // max(1, x.shape[0] if x.dim() else 1)
        n_per_scale = max(1, n // max(1, self.scale.numel()))
        return 1.0 / math.sqrt(n_per_scale * max(1, self.spec.qmax))

    label: str | None = None  # how messages name this kind of quantizer (default: its role)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mode dispatch every quantizer kind shares; kinds override ``_observe`` / ``_quantize``."""
        if self.mode == "off":
            return x
        if self.mode == "observe":
            self._observe(x)
            return x
        if not self.initialized:
            raise CalibrationError(f"{self.label or self.role} quantizer at {self.where or '?'} used before calibration")
        if _FROZEN_BLOCKS and self in _MEMO:  # a plain int first: what torch.compile guards on outside the blocks
            return _memoised(self, x)
        return self._quantize(x)

    def _observe(self, x: torch.Tensor) -> None:
        if self.observer is None:
            self.observer = Observer(self.spec)
        self.observer.update(x)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if self.role == "weight" and not spec.learnable:
            if self.training:  # follow the moving weight without writing state: nothing to sync, traceable
                scale, zero_point = self.weight_qparams(x)
                return fake_quantize_affine(x, scale, zero_point, spec.qmin, spec.qmax, spec.granularity)
            if self._refresh:
                self.set_qparams(*self.weight_qparams(x))
                self._refresh = False
        factor = self.grad_factor(x) if spec.learnable and scale_gradients_flow() else 1.0
        return fake_quantize_affine(x, self.effective_scale(), self.zero_point, spec.qmin, spec.qmax, spec.granularity, factor)

    def weight_qparams(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Min-max qparams of a weight, as a fixed-scale weight quantizer stores them."""
        with torch.no_grad():
            obs = Observer(self.spec)
            obs.update(w)
            scale, zero_point = obs.compute()
        return round_scale(scale.to(torch.float32), self.spec.scale_dtype), zero_point.to(torch.float32)

    def effective_scale(self) -> torch.Tensor:
        """The scale the grid uses: learnable scales are kept positive by ``abs`` and a floor."""
        if self.spec.learnable:
            return round_scale(self.scale.abs().clamp_min(MIN_SCALE), self.spec.scale_dtype)
        return self.scale

    def extra_repr(self) -> str:
        return f"{self.role} {self.spec.describe()}, mode={self.mode}"

    def scale_range(self) -> tuple[float, float] | None:
        if not self.initialized:
            return None
        s = self.scale.detach().abs()
        return float(s.min()), float(s.max())


# ----------------------------------------------------------------- frozen weights
# quantizer -> [depth of nested frozen_weights blocks, key of the stored result, stored result, storages held]
_MEMO: weakref.WeakKeyDictionary[FakeQuantize, list] = weakref.WeakKeyDictionary()
_FROZEN_BLOCKS = 0  # frozen_weights blocks open


def _memoisable(m: nn.Module) -> bool:
    """Plain weight quantizers: their result depends only on (weight, scale, zero point, spec, mode,
    training). Subclasses carry more state (bit width, task, gains, statistics) and are never memoised."""
    return type(m) is FakeQuantize and m.role == "weight"


def _key(q: FakeQuantize, x: torch.Tensor) -> tuple:
    """Each input tensor's identity, in-place write count, storage address and shape; the spec and state."""
    parts: list = []
    for t in (x, q.scale, q.zero_point):
        parts += [id(t), t._version, t.data_ptr(), tuple(t.shape), t.dtype]
    return (*parts, q.spec, q.training, q._refresh)


def _memoised(q: FakeQuantize, x: torch.Tensor) -> torch.Tensor:
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or q.scale.requires_grad)
    if (needs_grad or type(x) not in (torch.Tensor, nn.Parameter) or torch.compiler.is_compiling()
            or torch.compiler.is_exporting() or x.is_inference() or q.scale.is_inference()):  # no version counter
        return q._quantize(x)
    slot = _MEMO[q]
    if slot[1] is not None and slot[1] == _key(q, x):
        return slot[2]
    out = q._quantize(x)
    # the key after the call (a refresh stores new qparams); the tensors and their storages stay
    # referenced while the key exists, so neither an id nor an address in it can be reused
    slot[1], slot[2] = _key(q, x), out
    slot[3] = [(t, t.detach()) for t in (x, q.scale, q.zero_point)]
    return out


@contextlib.contextmanager
def frozen_weights(module: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``module`` many times at fixed weights: inside the block each weight quantizer
    fake-quantizes its weight once and reuses the result.

    The result is recomputed whenever the weight, the scale or the zero point is another tensor, has
    been written in place (optimizer steps, ``load_state_dict``, ``set_qparams``, ``.to()``), or the
    module switched between train and eval. Writes through ``.data`` (``w.data.copy_(...)``) are
    invisible to PyTorch's version counters: don't change weights that way inside the block. A call
    that needs a gradient (grad mode on and the weight or its scale requiring one), and calls under
    ``torch.compile`` or ``torch.export``, compute as usual. Blocks nest; leaving the outermost one
    frees the stored results.
    """
    global _FROZEN_BLOCKS
    qs = [m for m in module.modules() if _memoisable(m)]
    _FROZEN_BLOCKS += 1
    for q in qs:
        slot = _MEMO.setdefault(q, [0, None, None, None])
        slot[0] += 1
    try:
        yield module
    finally:
        _FROZEN_BLOCKS -= 1
        for q in qs:
            slot = _MEMO.get(q)
            if slot is not None:
                slot[0] -= 1
                if slot[0] <= 0:
                    del _MEMO[q]
