"""QSpec: the typed description of one quantizer (bits, grid, granularity, observer, gradients)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from qgraph.errors import RecipeError
from qgraph.granularity import Granularity, PerTensor, granularity_from_json, granularity_to_json
from qgraph.primitives import integer_range

OBSERVERS = ("minmax", "percentile", "mse")
SCALE_DTYPES = ("float32", "float16")  # float16: scales are kept float16-representable (smaller qpacks)


@dataclass(frozen=True)
class QSpec:
    """How one tensor is quantized.

    ``signed`` picks the integer grid (int vs uint); activations default to asymmetric uint8, the
    layout ONNX Runtime's integer kernels prefer, weights to symmetric int8 per channel.
    ``learnable`` turns the scale into an LSQ parameter for quantization-aware training.
    ``scale_dtype="float16"`` keeps scales float16-representable, so packed files store them in
    two bytes without changing a single result.
    """

    bits: int = 8
    symmetric: bool = True
    signed: bool = True
    granularity: Granularity = field(default_factory=PerTensor)
    observer: str = "minmax"
    percentile: float = 99.99
    learnable: bool = False
    scale_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.scale_dtype not in SCALE_DTYPES:
            raise RecipeError(f"scale_dtype must be one of {', '.join(SCALE_DTYPES)}, got {self.scale_dtype!r}")
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise RecipeError(f"bits must be an integer in 2..8, got {self.bits!r}")
        if self.observer not in OBSERVERS:
            raise RecipeError(f"unknown observer {self.observer!r}; known: {', '.join(OBSERVERS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise RecipeError(f"percentile must be in (50, 100], got {self.percentile}")

    @property
    def qmin(self) -> int:
        return integer_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return integer_range(self.bits, self.signed)[1]

    def with_(self, **changes) -> QSpec:
        return replace(self, **changes)

    def describe(self) -> str:
        kind = ("int" if self.signed else "uint") + str(self.bits)
        sym = "sym" if self.symmetric else "asym"
        lsq = " lsq" if self.learnable else ""
        half = " fp16-scale" if self.scale_dtype == "float16" else ""
        return f"{kind} {sym} {self.granularity}{half}{lsq}"

    def to_json(self) -> dict:
        return {
            "bits": self.bits,
            "symmetric": self.symmetric,
            "signed": self.signed,
            "granularity": granularity_to_json(self.granularity),
            "observer": self.observer,
            "percentile": self.percentile,
            "learnable": self.learnable,
            "scale_dtype": self.scale_dtype,
        }

    @classmethod
    def from_json(cls, d: dict) -> QSpec:
        d = dict(d)
        d["granularity"] = granularity_from_json(d.get("granularity", {"kind": "per_tensor"}))
        return cls(**d)
