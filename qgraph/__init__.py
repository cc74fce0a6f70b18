"""qgraph: a quantization compiler for PyTorch models.

    import qgraph
    qm = qgraph.quantize(model, example_inputs, recipe="w8a8", calib_data=batches)
    qm.summary()
    qm.export("out/net")                  # out/net.onnx, out/net.qpack, out/net.report.json
    qm2 = qgraph.load("out/net.qpack", model)
"""

__version__ = "0.1.0"

import os as _os


def _checkout_path() -> list[str]:
    """In a source checkout, ``passes/`` and ``backends/`` sit beside ``qgraph/`` and are installed as
    ``qgraph.passes`` / ``qgraph.backends`` (setup.cfg's package_dir). When the checkout itself is
    first on ``sys.path`` (running from the repository root), let those imports resolve there too."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    root = _os.path.dirname(here)
    if _os.path.isdir(_os.path.join(here, "passes")):
        return []  # an installed copy: the subpackages are inside
    if all(_os.path.isfile(_os.path.join(root, d, "__init__.py")) for d in ("passes", "backends")) and _os.path.isfile(
        _os.path.join(root, "setup.cfg")
    ):
        return [root]
    return []


__path__ = [*__path__, *_checkout_path()]

from qgraph import group_scales, task_scales  # noqa: E402,F401  (register the tasks(...) and qslaw recipes)
from qgraph.api import export_onnx, prepare, quantize
from qgraph.bitswitch import BitSwitchRecipe
from qgraph.capture import trace
from qgraph.errors import (
    CalibrationError,
    CaptureError,
    ExportError,
    ExportMismatchError,
    InputError,
    QGraphError,
    QPackError,
    RecipeError,
    ShapeGuardError,
    UnsupportedOpError,
)
from qgraph.generation import OnnxLM, QuantizedLM, float_generate, quantize_for_generation
from qgraph.granularity import PerChannel, PerGroup, PerTensor
from qgraph.graph import QGraph
from qgraph.graph_diff import GraphDiff, diff
from qgraph.model import ExportResult, QModel
from qgraph.packing import load
from qgraph.parts import QuantizedParts, quantize_parts
from qgraph.qspec import QSpec
from qgraph.recipes import Override, Recipe, get_recipe, list_recipes, register_recipe
from qgraph.report import Report
from qgraph.slld import SLLD, ssim
from qgraph.sparsity import SparsitySpec  # (importing it registers the nm and sparse recipes)

__all__ = [
    "quantize", "quantize_parts", "QuantizedParts", "prepare", "trace", "export_onnx", "load", "QGraph", "QModel", "ExportResult", "QSpec", "Recipe", "Override",
    "get_recipe", "list_recipes", "register_recipe", "SLLD", "ssim", "diff", "GraphDiff", "Report", "SparsitySpec",
    "PerTensor", "PerChannel", "PerGroup",
    "QGraphError", "InputError", "ShapeGuardError", "CaptureError", "RecipeError", "UnsupportedOpError",
    "CalibrationError", "ExportError", "ExportMismatchError", "QPackError", "__version__",
    "BitSwitchRecipe", "quantize_for_generation", "QuantizedLM", "OnnxLM", "float_generate",
]

from qgraph import ofq as _ofq  # noqa: E402,F401  (registers the ofq(...) recipe)
from qgraph import subset as _subset  # noqa: E402,F401  (registers the subset(...) recipe)
