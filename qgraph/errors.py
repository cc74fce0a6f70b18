"""The qgraph exception hierarchy: every error a user can trigger derives from QGraphError."""

from __future__ import annotations


class QGraphError(Exception):
    """Base class of every error qgraph raises on purpose."""


class InputError(QGraphError):
    """The example inputs (or calibration batches) do not fit the model."""


class ShapeGuardError(InputError):
    """Inputs outside the shapes (or values) a ``torch.export`` capture was specialised to; ``guard``:
    the condition that failed (e.g. ``math.trunc(1.5 * s / 4.0) == 4``)."""

    def __init__(self, message: str, guard: str = "") -> None:
        super().__init__(message)
        self.guard = guard


class CaptureError(QGraphError):
    """No capture route (symbolic trace, leaves, torch.export) could turn the model into a graph."""


class RecipeError(QGraphError):
    """A recipe name, override or option is invalid."""


class UnsupportedOpError(QGraphError):
    """A recipe asks to quantize an op in a way qgraph cannot do."""


class CalibrationError(QGraphError):
    """A quantizer was used before it saw any data, or saw data it cannot quantize."""


class ExportError(QGraphError):
    """Exporting to ONNX failed."""


class ExportMismatchError(ExportError):
    """The exported ONNX model disagrees with the quantized PyTorch model beyond tolerance."""


class QPackError(QGraphError):
    """A qpack file (packed quantized weights) cannot be written or read: not a qpack, truncated,
    tampered with (checksum mismatch), or its manifest and tensors disagree. The message names the
    file, the tensor and the problem."""


def node_context(node, module_path: str | None = None) -> str:
    """A short description of an fx node for error messages: op, target, module path."""
    target = getattr(node.target, "__name__", None) or str(node.target)
    where = f" at {module_path}" if module_path else ""
    return f"node {node.name!r} ({node.op} {target}){where}"
