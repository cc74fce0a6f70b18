"""Export a (lowered) quantized graph to ONNX with QDQ at opset 21 and integer initializers."""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import onnx
import torch
from qgraph.backends.onnx_fold import fold_constant_quantization
from qgraph.backends.onnx_ops import translation_table

from qgraph.errors import ExportError

OPSET = 21
IR_VERSION = 10  # ONNX Runtime rejects onnx.helper's newer default


def export_onnx(gm: torch.nn.Module, args: tuple, path: str, opset: int = OPSET) -> onnx.ModelProto:
    """Export ``gm`` on ``args`` to ``path`` (one self-contained file) and return the model."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                gm,
                args,
                dynamo=True,
                opset_version=opset,
                external_data=False,
                custom_translation_table=translation_table(),
                verbose=False,
            )
    except Exception as e:
        raise ExportError(f"the ONNX exporter failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    model = program.model_proto
    fold_constant_quantization(model)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model
