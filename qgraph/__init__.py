"""qgraph: a quantization compiler for PyTorch models.

    import qgraph
    qm = qgraph.quantize(model, example_inputs, recipe="w8a8", calib_data=batches)
    qm.summary()
    qm.export("out/net")
"""

__version__ = "0.1.0"

from qgraph.api import export_onnx, quantize
from qgraph.capture import trace
from qgraph.errors import (
    CalibrationError,
    CaptureError,
    ExportError,
    ExportMismatchError,
    InputError,
    QGraphError,
    RecipeError,
    UnsupportedOpError,
)
from qgraph.granularity import PerChannel, PerGroup, PerTensor
from qgraph.graph import QGraph
from qgraph.model import ExportResult, QModel
from qgraph.qspec import QSpec
from qgraph.recipes import Override, Recipe, get_recipe, list_recipes, register_recipe

__all__ = [
    "quantize", "trace", "export_onnx", "QGraph", "QModel", "ExportResult", "QSpec", "Recipe", "Override",
    "get_recipe", "list_recipes", "register_recipe", "PerTensor", "PerChannel", "PerGroup",
    "QGraphError", "InputError", "CaptureError", "RecipeError", "UnsupportedOpError",
    "CalibrationError", "ExportError", "ExportMismatchError", "__version__",
]
